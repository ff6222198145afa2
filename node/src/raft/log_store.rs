//! The Raft log store: entries, vote, committed and last purged log id in the `log` and `meta`
//! column families.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, RaftLogReader, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{NodeId, StorageResult, TypeConfig, blocking, storage_err};
use crate::store::{Cf, Store, StoreError, codec, decode_log_key, log_key, meta_key};

/// Bytes of log entries this process appended to its log store (encoded), for `/metrics`.
pub static LOG_BYTES_APPENDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The most bytes (encoded entries) one AppendEntries carries by default, whatever openraft's
/// entry count allows: see [`LogStore::limited_get_log_entries`].
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// The durable Raft log. Cheap to clone (it shares the database); a clone is also its reader.
#[derive(Debug, Clone)]
pub struct LogStore {
    pub(super) store: Arc<Store>,
    /// Bytes of entries one replication payload may carry (at least one entry is always sent).
    append_bytes: usize,
}

impl LogStore {
    pub(super) fn new(store: Arc<Store>) -> Self {
        Self { store, append_bytes: MAX_APPEND_BYTES }
    }

    /// The same log, whose replication payloads carry at most `bytes` of entries (at least one).
    pub fn with_append_limit(self, bytes: usize) -> Self {
        Self { append_bytes: bytes.max(1), ..self }
    }

    /// Read the entries with index in `[start, end)`, checking that each is stored under its
    /// own index; with `max_bytes`, stop before the entry that would pass that many encoded bytes
    /// (the first entry is always read).
    fn read_range(
        store: &Store,
        start: u64,
        end: Bound<u64>,
        max_bytes: Option<usize>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let cf = store.cf(Cf::Log)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let from = log_key(start);
        for item in store.db().iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) = item?;
            let index = decode_log_key(&key)?;
            let in_range = match end {
                Bound::Included(e) => index <= e,
                Bound::Excluded(e) => index < e,
                Bound::Unbounded => true,
            };
            if !in_range {
                break;
            }
            bytes = bytes.saturating_add(value.len());
            if let Some(max) = max_bytes
                && bytes > max
                && !out.is_empty()
            {
                break;
            }
            let entry = decode_entry(&key, &value)?;
            if entry.log_id.index != index {
                return Err(StoreError::corrupt(
                    Cf::Log,
                    &key,
                    format!("entry {} stored under index {index}", entry.log_id),
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn first_entry_index(store: &Store) -> Result<Option<u64>, StoreError> {
        let cf = store.cf(Cf::Log)?;
        match store.db().iterator_cf(cf, IteratorMode::Start).next() {
            None => Ok(None),
            Some(item) => Ok(Some(decode_log_key(&item?.0)?)),
        }
    }

    fn last_entry_id(store: &Store) -> Result<Option<LogId<NodeId>>, StoreError> {
        let cf = store.cf(Cf::Log)?;
        match store.db().iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item?;
                Ok(Some(decode_entry(&key, &value)?.log_id))
            }
        }
    }

    /// Delete the entries up to `log_id.index` and record `log_id` as last purged, unless the
    /// log is purged as far already, in one synced batch.
    ///
    /// Called by `purge`, and by the state machine right after it installs a snapshot: openraft
    /// purges a follower's log up to an installed snapshot only later, and entries that arrive
    /// meanwhile are appended after the snapshot's index. A node stopped in between had a log
    /// starting past its last purged id, with nothing in the gap, and openraft could not start
    /// on it (`LogIndexNotFound { want: 0, .. }`).
    pub(super) fn purge_through(store: &Store, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        let purged: Option<LogId<NodeId>> = store.get(Cf::Meta, meta_key::LAST_PURGED)?;
        if purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        let bytes = codec::encode(&log_id).map_err(|e| StoreError::encode("last purged log id", e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(store.cf(Cf::Meta)?, meta_key::LAST_PURGED, bytes);
        let cf = store.cf(Cf::Log)?;
        batch.delete_range_cf(cf, log_key(0), log_key(log_id.index.saturating_add(1)));
        if log_id.index == u64::MAX {
            batch.delete_cf(cf, log_key(u64::MAX));
        }
        store.write(batch, true)
    }

    /// At open: a log whose first entry lies past its last purged id, with the gap covered by
    /// the current snapshot (`snapshot`, its last log id), is the state a stop between a
    /// snapshot install and its purge left before [`LogStore::purge_through`] ran at install;
    /// purge it through the snapshot. Returns whether it did. A gap the snapshot does not cover
    /// is left for `get_log_state` to report.
    pub(super) fn close_gap(store: &Store, snapshot: Option<LogId<NodeId>>) -> Result<bool, StoreError> {
        let Some(snapshot) = snapshot else { return Ok(false) };
        let purged: Option<LogId<NodeId>> = store.get(Cf::Meta, meta_key::LAST_PURGED)?;
        let next = purged.map_or(0, |p| p.index.saturating_add(1));
        let Some(first) = Self::first_entry_index(store)? else { return Ok(false) };
        if first <= next || first > snapshot.index.saturating_add(1) || snapshot.index < next {
            return Ok(false);
        }
        tracing::warn!(
            first_entry = first,
            last_purged = ?purged,
            snapshot = %snapshot,
            "the log starts past its last purged id; purging it through the installed snapshot"
        );
        Self::purge_through(store, snapshot)?;
        Ok(true)
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static [u8],
        what: &'static str,
        value: &T,
        sync: bool,
    ) -> Result<(), StoreError> {
        let bytes = codec::encode(value).map_err(|e| StoreError::encode(what, e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.store.cf(Cf::Meta)?, key, bytes);
        self.store.write(batch, sync)
    }
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    codec::decode(value).map_err(|reason| StoreError::corrupt(Cf::Log, key, reason))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = range.end_bound().cloned();
        let store = self.store.clone();
        blocking(move || Self::read_range(&store, start, end, None))
            .await
            .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    /// What one AppendEntries carries: the entries of `[start, end)` up to `append_bytes`
    /// encoded bytes (never none). openraft 0.9 bounds a payload only by entry count
    /// (`max_payload_entries`, 300) and gives the whole RPC `heartbeat_interval` (100 ms) to
    /// complete; entries holding a sealed chunk are ~0.5 MB, so a follower that fell behind was
    /// sent hundreds of megabytes it could never take in time, timed out on every retry, and
    /// stayed behind (calling elections) while the cluster wrote. Bounded by bytes, each append of
    /// a catch-up is small enough to land.
    ///
    /// The entries start at `start` or there are none: when `start` was purged between
    /// openraft's choice to send entries and this read (the eraser purges on its own schedule),
    /// later entries must not go out as if they followed `prev_log_id`. openraft 0.9 checks that
    /// only in a `debug_assert`; a fresh follower (`prev_log_id` None) appended entries from
    /// 15,779 with nothing before them and its Raft core quit (the half-hour containers run,
    /// seed 21). None is openraft's documented fallback: a heartbeat, after which the leader
    /// plans again from the follower's matching index and sends a snapshot.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let (store, max) = (self.store.clone(), self.append_bytes);
        let entries = blocking(move || Self::read_range(&store, start, Bound::Excluded(end), Some(max)))
            .await
            .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        match entries.first() {
            Some(first) if first.log_id.index != start => {
                tracing::warn!(
                    start,
                    first = first.log_id.index,
                    "entries to replicate were purged meanwhile; none sent"
                );
                Ok(Vec::new())
            }
            _ => Ok(entries),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let store = self.store.clone();
        let (last_purged, last) = blocking(move || {
            let last_purged: Option<LogId<NodeId>> = store.get(Cf::Meta, meta_key::LAST_PURGED)?;
            // A log with a hole after its last purged entry is corrupt: openraft would not
            // notice (it reads the ends of the log) and would serve or apply around the hole.
            // (A log never purged starts where openraft began it; openraft checks that one.)
            if let Some(p) = last_purged
                && let Some(first) = Self::first_entry_index(&store)?
                && first > p.index.saturating_add(1)
            {
                let next = p.index.saturating_add(1);
                return Err(StoreError::corrupt(
                    Cf::Log,
                    &log_key(first),
                    format!("the log starts at index {first} but its last purged entry is {p}: entries {next}..{first} are missing"),
                ));
            }
            Ok((last_purged, Self::last_entry_id(&store)?))
        })
        .await
        .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let this = self.clone();
        let vote = *vote;
        blocking(move || this.put_meta(meta_key::VOTE, "vote", &vote, true))
            .await
            .map_err(|e| storage_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        let store = self.store.clone();
        blocking(move || store.get(Cf::Meta, meta_key::VOTE))
            .await
            .map_err(|e| storage_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    /// Not synced: the committed log id is a start-up hint (re-apply up to here); losing the last
    /// few updates only means re-applying less at start-up, and openraft learns the real commit
    /// index from the leader.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let this = self.clone();
        blocking(move || this.put_meta(meta_key::COMMITTED, "committed log id", &committed, false))
            .await
            .map_err(|e| storage_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let store = self.store.clone();
        blocking(move || Ok(store.get::<Option<LogId<NodeId>>>(Cf::Meta, meta_key::COMMITTED)?.flatten()))
            .await
            .map_err(|e| storage_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    /// One batch, one synced write, then the callback: openraft learns the entries are flushed
    /// only once they are on disk. On error the callback is dropped unsignalled and the error
    /// returned, which stops the node.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let store = self.store.clone();
        blocking(move || {
            let cf = store.cf(Cf::Log)?;
            let mut batch = WriteBatch::default();
            for entry in &entries {
                let bytes = codec::encode(entry).map_err(|e| StoreError::encode("log entry", e))?;
                LOG_BYTES_APPENDED.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                batch.put_cf(cf, log_key(entry.log_id.index), bytes);
            }
            store.write(batch, true)
        })
        .await
        .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    /// Delete entries `[log_id.index, ∞)`, synced.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let store = self.store.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            let cf = store.cf(Cf::Log)?;
            batch.delete_range_cf(cf, log_key(log_id.index), log_key(u64::MAX));
            // `delete_range` excludes its end; an entry at u64::MAX is unreachable in practice,
            // but delete it too so the contract holds exactly.
            batch.delete_cf(cf, log_key(u64::MAX));
            store.write(batch, true)
        })
        .await
        .map_err(|e| storage_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }

    /// Delete entries `(-∞, log_id.index]` and record `log_id` as last purged, in one synced
    /// batch. openraft calls this only up to the last log id of a snapshot the state machine has
    /// reported, and the state machine reports only durable snapshots (see the module doc of
    /// [`crate::raft`]). The last purged id never moves back: an installed snapshot may have
    /// purged further already ([`LogStore::purge_through`]).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let store = self.store.clone();
        blocking(move || Self::purge_through(&store, log_id))
            .await
            .map_err(|e| storage_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }
}

//! The replicated state machine on RocksDB (`sm_data`, `sm_meta`, `dedup`), and its snapshots.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use rocksdb::{IteratorMode, WriteBatch};
use tokio::io::AsyncWriteExt;

use super::snapshot::{self, Meta, SnapshotDir};
use super::{Command, NodeAddr, NodeId, Outcome, Request, Response, StorageResult, TypeConfig, blocking, storage_err};
use crate::store::{Cf, Kv, Store, StoreError, Tx, codec, dedup_key, sm_meta_key};

/// How many bytes of records an install puts into one write batch.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

type Membership = StoredMembership<NodeId, NodeAddr>;

/// The state machine. Cheap to clone: clones share the database and the snapshot directory.
#[derive(Clone)]
pub struct StateMachine {
    pub(super) store: Arc<Store>,
    snaps: Arc<SnapshotDir>,
    /// State hashes taken right after applying a [`Command::HashCheck`] entry, by log index
    /// (the last few): what the divergence check compares between nodes.
    checkpoints: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, String>>>,
    /// The last [`Self::state_hash`]: (applied index, hash, when computed). Its lock is held
    /// while one is computed.
    hash_cache: Arc<tokio::sync::Mutex<Option<(u64, String, std::time::Instant)>>>,
    /// How many times [`StateMachine::state_hash`] scanned the state (not served from the cache).
    hash_scans: Arc<std::sync::atomic::AtomicU64>,
    /// This node's HSM, which MACs the audit records it applies ([`crate::audit::NodeMac`]);
    /// `None` on a node without one (its records carry no MAC and verify says so).
    node_audit: Option<Arc<dyn quill_hsm::Hsm>>,
    /// The last audit record this node's MACs cover.
    mac_covered: Arc<std::sync::atomic::AtomicU64>,
    /// The log index of the last applied command that erased data (a job purged, a key
    /// destroyed): [`crate::runtime::eraser`] then removes the erased bytes from this node's log,
    /// snapshot and database files.
    erased_at: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("store", &self.store)
            .field("node_audit", &self.node_audit.is_some())
            .finish()
    }
}

/// How long apply retries a failing audit MAC (another slot of the pool may take it) before it
/// gives up and stops the node rather than write a record it cannot vouch for.
const AUDIT_MAC_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// At most this many old dedup records are pruned per entry (a steady trickle, never a long
/// apply).
pub(super) const DEDUP_PRUNE_PER_ENTRY: usize = 256;

/// How many hash checkpoints a node keeps.
const CHECKPOINTS_KEPT: usize = 16;

/// How long a state hash given by Status is given again while the state moves on (see
/// [`StateMachine::state_hash`]).
pub const STATE_HASH_REUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// A hex SHA-256 over `sm_data` in key order (each key and value length-prefixed).
fn hash_sm_data(store: &Store) -> Result<String, StoreError> {
    hash_items(store.db().iterator_cf(store.cf(Cf::SmData)?, IteratorMode::Start))
}

/// [`hash_sm_data`] over whatever iterator of `sm_data` (a snapshot view's, say).
fn hash_items<I>(items: I) -> Result<String, StoreError>
where
    I: Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
{
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for item in items {
        let (key, value) = item?;
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(&key);
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(&value);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Builds a snapshot from a consistent view of the state machine, in its own task.
#[derive(Debug)]
pub struct SnapshotBuilder {
    sm: StateMachine,
}

impl StateMachine {
    /// Open on `store` with snapshot files in `snap_dir`. If a snapshot install was interrupted
    /// (the install marker is present), redo it from the current snapshot file, or reset to
    /// empty if the interrupted install was the first one.
    /// The last log id of the current snapshot, if there is one.
    pub(super) fn current_snapshot_log_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        Ok(self.snaps.open_current()?.and_then(|(meta, _)| meta.last_log_id))
    }

    pub(super) fn open(store: Arc<Store>, snap_dir: &Path) -> Result<Self, StoreError> {
        let sm = Self {
            store,
            snaps: Arc::new(SnapshotDir::open(snap_dir)?),
            checkpoints: Default::default(),
            hash_cache: Default::default(),
            hash_scans: Default::default(),
            node_audit: None,
            mac_covered: Default::default(),
            erased_at: Default::default(),
        };
        if sm.store.get_raw(Cf::SmMeta, sm_meta_key::INSTALLING)?.is_some() {
            sm.load_current()?;
        }
        let covered = match sm.store.db().iterator_cf(sm.store.cf(Cf::AuditMac)?, IteratorMode::End).next() {
            Some(item) => crate::store::decode_log_key(&item?.0)?,
            None => 0,
        };
        sm.mac_covered.store(covered, std::sync::atomic::Ordering::SeqCst);
        Ok(sm)
    }

    /// MAC the audit records this node applies with `hsm`'s node audit key from now on. Set before
    /// Raft starts (before any entry applies).
    ///
    /// Records already in the chain beyond this node's last MAC (its MACs were removed on disk, or
    /// it ran without an HSM before) are never MACed after the fact: the next MAC starts after the
    /// current head, so `quill audit verify` on this node names them as unMACed for good. A node
    /// only vouches for records it applied itself, or that a snapshot install brought.
    pub fn with_node_audit(mut self, hsm: Arc<dyn quill_hsm::Hsm>) -> Result<Self, StoreError> {
        let mut scratch = WriteBatch::default();
        let head = crate::audit::head(&Tx::new(&self.store, &mut scratch)?)?;
        let covered = self.mac_covered.load(std::sync::atomic::Ordering::SeqCst);
        if head.seq > covered {
            tracing::error!(
                first = covered + 1,
                last = head.seq,
                "audit records in this node's chain carry no MAC of its own; they stay unMACed (audit verify reports them)"
            );
            self.mac_covered.store(head.seq, std::sync::atomic::Ordering::SeqCst);
        }
        self.node_audit = Some(hsm);
        Ok(self)
    }

    /// The log index of the last applied command that erased data (0: none since start-up).
    pub fn erased_at(&self) -> u64 {
        self.erased_at.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Flush every column family (so the write-ahead log holding erased values can go) and compact
    /// the log, the replicated state and the dedup table, so values deleted from them leave the
    /// database files.
    pub async fn compact_files(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        blocking(move || {
            for cf in Cf::ALL {
                store.db().flush_cf(store.cf(cf)?)?;
            }
            store.sync_wal()?;
            for cf in [Cf::Log, Cf::SmData, Cf::Dedup] {
                store.db().compact_range_cf(store.cf(cf)?, None::<&[u8]>, None::<&[u8]>);
            }
            Ok(())
        })
        .await
    }

    /// Whether this node MACs its audit records (it has an HSM).
    pub fn has_node_audit(&self) -> bool {
        self.node_audit.is_some()
    }

    /// This node's MACs over the audit chain, in order.
    pub async fn node_macs(&self) -> Result<Vec<crate::audit::NodeMac>, StoreError> {
        let store = self.store.clone();
        blocking(move || {
            store
                .pairs(Cf::AuditMac)?
                .into_iter()
                .map(|(k, v)| codec::decode(&v).map_err(|reason| StoreError::corrupt(Cf::AuditMac, &k, reason)))
                .collect()
        })
        .await
    }

    /// The node MAC of the records after the last one covered up to the chain head in `tx`, into
    /// `tx` (nothing when no record was appended, and nothing on a node without an HSM); the last
    /// record it covers. Retries a failing HSM for [`AUDIT_MAC_RETRY`], then fails: the entry is
    /// not applied (the node stops) rather than written without a MAC.
    fn mac_records(&self, tx: &mut Tx<'_>, from_snapshot: bool) -> Result<Option<u64>, StoreError> {
        let Some(hsm) = &self.node_audit else { return Ok(None) };
        let head = crate::audit::head(&*tx)?;
        let first = self.mac_covered.load(std::sync::atomic::Ordering::SeqCst) + 1;
        if head.seq < first {
            return Ok(None);
        }
        let input = crate::audit::node_mac_input(first, head.seq, &head.hash);
        let deadline = std::time::Instant::now() + AUDIT_MAC_RETRY;
        let (key_kcv, mac) = loop {
            match hsm.node_audit_mac(&input) {
                Ok(m) => break m,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, first, last = head.seq, "cannot MAC audit records; retrying before stopping");
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                Err(e) => return Err(StoreError::AuditMac { first, last: head.seq, reason: e.to_string() }),
            }
        };
        let m = crate::audit::NodeMac { first, last: head.seq, key_kcv, mac, from_snapshot };
        let bytes = codec::encode(&m).map_err(|e| StoreError::encode("node audit MAC", e))?;
        tx.put_cf(Cf::AuditMac, &crate::store::log_key(head.seq), &bytes)?;
        Ok(Some(head.seq))
    }

    /// After an entry that pruned audit records: this node's MACs over archived records only go
    /// with them (the archive's MACed trailer vouches for those records now).
    fn drop_archived_macs(&self, tx: &mut Tx<'_>) -> Result<(), StoreError> {
        if let Some(b) = crate::audit::base(&*tx)? {
            let upto = crate::store::log_key(b.trailer.last.saturating_add(1));
            tx.delete_range_cf(Cf::AuditMac, &crate::store::log_key(0), &upto)?;
        }
        Ok(())
    }

    fn read_applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), StoreError> {
        let last_applied = self.store.get(Cf::SmMeta, sm_meta_key::LAST_APPLIED)?;
        let membership = self.store.get(Cf::SmMeta, sm_meta_key::MEMBERSHIP)?.unwrap_or_default();
        Ok((last_applied, membership))
    }

    /// Apply one entry: its effects, its dedup record and the last applied log id in one batch.
    fn apply_entry(&self, entry: Entry<TypeConfig>) -> Result<Response, StoreError> {
        let log_id = entry.log_id;
        let hash_check = matches!(&entry.payload, EntryPayload::Normal(r) if matches!(r.cmd, Command::HashCheck));
        let mut batch = WriteBatch::default();
        let mut covered_to = None;
        let request_time = match &entry.payload {
            EntryPayload::Normal(r) => Some(r.time_ms),
            _ => None,
        };
        let response = match entry.payload {
            EntryPayload::Blank => Response { log_index: log_id.index, duplicate: false, outcome: Outcome::Blank },
            EntryPayload::Membership(m) => {
                let stored = Membership::new(Some(log_id), m);
                let bytes = codec::encode(&stored).map_err(|e| StoreError::encode("membership", e))?;
                batch.put_cf(self.store.cf(Cf::SmMeta)?, sm_meta_key::MEMBERSHIP, bytes);
                Response { log_index: log_id.index, duplicate: false, outcome: Outcome::Membership }
            }
            EntryPayload::Normal(req) => {
                let prunes = match &req.cmd {
                    Command::AuditPrune { .. } => true,
                    Command::Batch(reqs) => reqs.iter().any(|r| matches!(r.cmd, Command::AuditPrune { .. })),
                    _ => false,
                };
                // One view for the whole entry: the requests of a batch see each other's writes.
                let mut tx = Tx::new(&self.store, &mut batch)?;
                let mut seen = std::collections::HashMap::new();
                let response = self.apply_request(&mut tx, log_id.index, req, &mut seen, true)?;
                covered_to = self.mac_records(&mut tx, false)?;
                if prunes {
                    self.drop_archived_macs(&mut tx)?;
                }
                response
            }
        };
        if let Some(now) = request_time {
            self.prune_dedup(&mut batch, now)?;
        }
        let applied = codec::encode(&log_id).map_err(|e| StoreError::encode("last applied log id", e))?;
        batch.put_cf(self.store.cf(Cf::SmMeta)?, sm_meta_key::LAST_APPLIED, applied);
        // Not synced: see the module doc of `crate::raft` (the log is the durable record, and a
        // snapshot build syncs the WAL before it reports).
        self.store.write(batch, false)?;
        if let Some(seq) = covered_to {
            self.mac_covered.store(seq, std::sync::atomic::Ordering::SeqCst);
        }
        if hash_check {
            let hash = hash_sm_data(&self.store)?;
            let mut c = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
            c.insert(log_id.index, hash);
            while c.len() > CHECKPOINTS_KEPT {
                c.pop_first();
            }
        }
        Ok(response)
    }

    /// The state hash this node took right after applying the hash check at `index`.
    pub fn checkpoint(&self, index: u64) -> Option<String> {
        self.checkpoints.lock().unwrap_or_else(|p| p.into_inner()).get(&index).cloned()
    }

    /// Apply a client request into `batch`, or return the stored response of its first
    /// application. Deterministic: depends only on the request and the stored state. Every
    /// command but `Noop` appends an audit record in the same batch.
    ///
    /// A [`Command::Batch`] (several clients' requests the leader packed into one entry) applies
    /// each request in order, each with its own dedup and audit record, and answers with all
    /// their responses; `seen` catches a request repeated inside one entry.
    fn apply_request(
        &self,
        tx: &mut Tx<'_>,
        log_index: u64,
        req: Request,
        seen: &mut std::collections::HashMap<Vec<u8>, Response>,
        top: bool,
    ) -> Result<Response, StoreError> {
        let dkey = dedup_key(&req.actor.to_string(), &req.client_id, req.serial);
        if let Some(first) = seen.get(&dkey) {
            return Ok(Response { duplicate: true, ..first.clone() });
        }
        if let Some(first) = self.store.get::<Response>(Cf::Dedup, &dkey)? {
            return Ok(Response { duplicate: true, ..first });
        }
        if let Command::Batch(reqs) = req.cmd {
            let mut responses = Vec::with_capacity(reqs.len());
            for sub in reqs {
                let r = if !top || matches!(sub.cmd, Command::Batch(_)) {
                    Response {
                        log_index,
                        duplicate: false,
                        outcome: Outcome::Rejected { reason: "nested batch".into() },
                    }
                } else {
                    self.apply_request(tx, log_index, sub, seen, false)?
                };
                responses.push(r);
            }
            // The batch envelope itself is not deduplicated or audited: its requests are.
            return Ok(Response { log_index, duplicate: false, outcome: Outcome::Batch(responses) });
        }
        let erases = crate::state::erases(&req.cmd);
        let time_ms = req.time_ms;
        let outcome = if req.client_id.is_empty() {
            Outcome::Rejected { reason: "client id is empty".into() }
        } else {
            crate::state::apply(tx, log_index, req)?
        };
        if erases && matches!(outcome, Outcome::Done { .. }) {
            self.erased_at.fetch_max(log_index, std::sync::atomic::Ordering::SeqCst);
        }
        self.finish(tx, seen, (dkey, time_ms), Response { log_index, duplicate: false, outcome })
    }

    /// Delete (into `batch`) the dedup records of requests older than
    /// [`crate::store::DEDUP_RETENTION_MS`] before `now` (this entry's leader time), oldest first,
    /// at most [`DEDUP_PRUNE_PER_ENTRY`] per entry. Reads the stored state only, so every node
    /// prunes the same records at the same entry.
    fn prune_dedup(&self, batch: &mut WriteBatch, now: u64) -> Result<(), StoreError> {
        let cutoff = now.saturating_sub(crate::store::DEDUP_RETENTION_MS);
        let (age, dedup) = (self.store.cf(Cf::DedupAge)?, self.store.cf(Cf::Dedup)?);
        for item in self.store.db().iterator_cf(age, IteratorMode::Start).take(DEDUP_PRUNE_PER_ENTRY) {
            let (k, _) = item?;
            let Some((t, dkey)) = k.split_first_chunk::<8>() else {
                return Err(StoreError::corrupt(Cf::DedupAge, &k, "key shorter than its 8-byte time"));
            };
            if u64::from_be_bytes(*t) >= cutoff {
                break;
            }
            batch.delete_cf(dedup, dkey);
            batch.delete_cf(age, &k);
        }
        Ok(())
    }

    /// Store the dedup record of a first application (and its age index) and return its response.
    fn finish(
        &self,
        tx: &mut Tx<'_>,
        seen: &mut std::collections::HashMap<Vec<u8>, Response>,
        (dkey, time_ms): (Vec<u8>, u64),
        response: Response,
    ) -> Result<Response, StoreError> {
        let bytes = codec::encode(&response).map_err(|e| StoreError::encode("response", e))?;
        tx.put_cf(Cf::Dedup, &dkey, &bytes)?;
        tx.put_cf(Cf::DedupAge, &crate::store::dedup_age_key(time_ms, &dkey), &[])?;
        seen.insert(dkey, response.clone());
        Ok(response)
    }

    /// Run `f` over a read view of the application state (this node's applied state).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Kv) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        blocking(move || {
            let mut scratch = WriteBatch::default();
            let tx = Tx::new(&store, &mut scratch)?;
            f(&tx)
        })
        .await
    }

    /// Read a value of the replicated key space (local read: as current as this node's apply).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let store = self.store.clone();
        let key = key.as_bytes().to_vec();
        blocking(move || store.get_raw(Cf::SmData, &key)).await
    }

    /// A hex SHA-256 over the replicated key space (`sm_data`, in key order: each key and value
    /// length-prefixed), with the applied index it is the state of, for convergence checks
    /// between nodes. Both are read through one RocksDB snapshot view, so they agree.
    ///
    /// Hashing reads the whole state (jobs' sealed input and output included: gigabytes on a
    /// bureau's node), so Status, which monitors and every CLI's leader search call, does not
    /// pay for it each time: one computation runs at a time (callers queue behind it rather
    /// than each scanning), and a hash younger than [`STATE_HASH_REUSE`] is given again even if
    /// the state has moved since (with its own index, which says so).
    pub async fn state_hash(&self) -> Result<(u64, String), StoreError> {
        let mut cache = self.hash_cache.lock().await;
        let applied: Option<LogId<NodeId>> = self.store.get(Cf::SmMeta, sm_meta_key::LAST_APPLIED)?;
        let applied = applied.map_or(0, |l| l.index);
        if let Some((index, hash, at)) = cache.as_ref()
            && (*index == applied || at.elapsed() < STATE_HASH_REUSE)
        {
            return Ok((*index, hash.clone()));
        }
        let store = self.store.clone();
        self.hash_scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (index, hash) = blocking(move || {
            let view = store.db().snapshot();
            let last: Option<LogId<NodeId>> =
                decode_opt(sm_meta_key::LAST_APPLIED, view.get_cf(store.cf(Cf::SmMeta)?, sm_meta_key::LAST_APPLIED)?)?;
            let hash = hash_items(view.iterator_cf(store.cf(Cf::SmData)?, IteratorMode::Start))?;
            Ok((last.map_or(0, |l| l.index), hash))
        })
        .await?;
        *cache = Some((index, hash.clone(), std::time::Instant::now()));
        Ok((index, hash))
    }

    /// How many times [`StateMachine::state_hash`] has scanned the state since the node started.
    pub fn state_hash_scans(&self) -> u64 {
        self.hash_scans.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Build a snapshot: dump the snapshot column families through one RocksDB snapshot view
    /// into a file, make it durable, and make it current.
    fn build(&self) -> Result<(Meta, File), StoreError> {
        let db = self.store.db();
        let view = db.snapshot();
        let sm_meta = self.store.cf(Cf::SmMeta)?;
        let last_applied: Option<LogId<NodeId>> =
            decode_opt(sm_meta_key::LAST_APPLIED, view.get_cf(sm_meta, sm_meta_key::LAST_APPLIED)?)?;
        let membership: Membership =
            decode_opt(sm_meta_key::MEMBERSHIP, view.get_cf(sm_meta, sm_meta_key::MEMBERSHIP)?)?.unwrap_or_default();
        // The applied state this snapshot captures must be durable before openraft may purge the
        // log up to it.
        self.store.sync_wal()?;
        let snapshot_id = match &last_applied {
            Some(id) => id.to_string(),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        let tmp = self.snaps.work_path("build-", ".tmp");
        let mut writer = snapshot::Writer::create(&tmp, &meta)?;
        for cf in Cf::SNAPSHOT {
            for item in view.iterator_cf(self.store.cf(cf)?, IteratorMode::Start) {
                let (key, value) = item?;
                writer.record(cf, &key, &value)?;
            }
        }
        writer.finish()?;
        self.snaps.promote(&tmp, &meta, false)
    }

    /// Install a received snapshot (blocking part). Crash-safe:
    /// 1. copy the received data to `install.tmp`, fsync, and verify it end to end;
    /// 2. write the install marker (synced);
    /// 3. make the file current (rename, fsync the directory);
    /// 4. replace the state-machine families from it ([`Self::load_current`]), clearing the
    ///    marker in the last, synced batch.
    ///
    /// A crash after 2 and before 4 finishes leaves the marker; [`Self::open`] then redoes 4 from
    /// whatever file is current, so the state machine is never seen half-installed.
    fn install(&self, meta: &Meta, mut received: File) -> Result<(), StoreError> {
        let tmp = self.snaps.install_tmp_path();
        let io = |e| StoreError::SnapshotIo { path: tmp.clone(), source: e };
        received.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut copy = File::create(&tmp).map_err(io)?;
        std::io::copy(&mut received, &mut copy).map_err(io)?;
        copy.sync_all().map_err(io)?;
        drop(copy);
        let file_meta = snapshot::verify(&tmp)?;
        if file_meta.last_log_id != meta.last_log_id || file_meta.last_membership != meta.last_membership {
            return Err(StoreError::SnapshotFormat {
                path: tmp,
                reason: format!(
                    "file holds snapshot {:?}, openraft is installing {:?}",
                    file_meta.last_log_id, meta.last_log_id
                ),
            });
        }
        let mut marker = WriteBatch::default();
        let id = codec::encode(&meta.snapshot_id).map_err(|e| StoreError::encode("snapshot id", e))?;
        marker.put_cf(self.store.cf(Cf::SmMeta)?, sm_meta_key::INSTALLING, id);
        self.store.write(marker, true)?;
        self.snaps.promote(&tmp, meta, true)?;
        self.load_current()?;
        // The log up to the snapshot is now covered by it: purge it now, durably, rather than
        // wait for openraft's later purge (see `LogStore::purge_through`).
        if let Some(last) = meta.last_log_id {
            super::LogStore::purge_through(&self.store, last)?;
        }
        self.mac_installed()?;
        self.snaps.remove_incoming()
    }

    /// After a snapshot install: MAC the records it brought (beyond those this node's MACs
    /// already cover), if they link up into the chain head; otherwise leave them unMACed, which
    /// `quill audit verify` reports, and log why.
    fn mac_installed(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let mut tx = Tx::new(&self.store, &mut batch)?;
        let head = crate::audit::head(&tx)?;
        if let Some((seq, reason)) = crate::audit::verify_links(&tx)?.broken {
            tracing::error!(seq, %reason, "the installed snapshot's audit chain is broken; its records stay unMACed");
            // The next entry's MAC starts after them, so they stay a visible gap.
            self.mac_covered.fetch_max(head.seq, std::sync::atomic::Ordering::SeqCst);
            return Ok(());
        }
        if head.seq < self.mac_covered.load(std::sync::atomic::Ordering::SeqCst) {
            // The snapshot's chain is shorter than what this node MACed (an interrupted first
            // install reset it): its old MACs vouch for nothing here any more.
            drop(tx);
            self.clear_cf(&mut batch, Cf::AuditMac)?;
            self.mac_covered.store(0, std::sync::atomic::Ordering::SeqCst);
            tx = Tx::new(&self.store, &mut batch)?;
        }
        let covered = self.mac_records(&mut tx, true)?;
        self.store.write(batch, true)?;
        if let Some(seq) = covered {
            self.mac_covered.store(seq, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// Replace the state-machine families with the current snapshot (or with nothing, if there
    /// is none), then clear the install marker. The final batch is synced.
    fn load_current(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for cf in Cf::SNAPSHOT {
            self.clear_cf(&mut batch, cf)?;
        }
        let sm_meta = self.store.cf(Cf::SmMeta)?;
        batch.delete_cf(sm_meta, sm_meta_key::LAST_APPLIED);
        batch.delete_cf(sm_meta, sm_meta_key::MEMBERSHIP);
        let mut meta = None;
        if let Some((_, file)) = self.snaps.open_current()? {
            let (file_meta, mut reader) = snapshot::Reader::from_file(file, &self.snaps.current_path())?;
            let mut batch_bytes = 0;
            while let Some(snapshot::Record { cf, key, value }) = reader.next_record()? {
                batch_bytes += key.len() + value.len();
                batch.put_cf(self.store.cf(cf)?, key, value);
                if batch_bytes >= INSTALL_BATCH_BYTES {
                    self.store.write(std::mem::take(&mut batch), false)?;
                    batch_bytes = 0;
                }
            }
            meta = Some(file_meta);
        }
        if let Some(meta) = meta {
            if let Some(last) = meta.last_log_id {
                let applied = codec::encode(&last).map_err(|e| StoreError::encode("last applied", e))?;
                batch.put_cf(sm_meta, sm_meta_key::LAST_APPLIED, applied);
            }
            let membership = codec::encode(&meta.last_membership).map_err(|e| StoreError::encode("membership", e))?;
            batch.put_cf(sm_meta, sm_meta_key::MEMBERSHIP, membership);
        }
        batch.delete_cf(sm_meta, sm_meta_key::INSTALLING);
        self.store.write(batch, true)
    }

    /// Delete every key of `cf` in `batch`: a range delete from the first key up to the last,
    /// plus the last key itself (range deletes exclude their end).
    fn clear_cf(&self, batch: &mut WriteBatch, cf: Cf) -> Result<(), StoreError> {
        let handle = self.store.cf(cf)?;
        if let Some(item) = self.store.db().iterator_cf(handle, IteratorMode::End).next() {
            let (last, _) = item?;
            batch.delete_range_cf(handle, [].as_slice(), &last);
            batch.delete_cf(handle, &last);
        }
        Ok(())
    }

    fn snapshot_from(meta: Meta, file: File) -> Snapshot<TypeConfig> {
        Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }
    }
}

/// Decode an optional `sm_meta` value read through a snapshot view.
fn decode_opt<T: serde::de::DeserializeOwned>(key: &[u8], bytes: Option<Vec<u8>>) -> Result<Option<T>, StoreError> {
    match bytes {
        None => Ok(None),
        Some(b) => codec::decode(&b).map(Some).map_err(|reason| StoreError::corrupt(Cf::SmMeta, key, reason)),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let sm = self.sm.clone();
        let (meta, file) = blocking(move || sm.build())
            .await
            .map_err(|e| storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        Ok(StateMachine::snapshot_from(meta, file))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let sm = self.clone();
        blocking(move || sm.read_applied())
            .await
            .map_err(|e| storage_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let sm = self.clone();
        blocking(move || entries.into_iter().map(|entry| sm.apply_entry(entry)).collect())
            .await
            .map_err(|e| storage_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { sm: self.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.snaps.work_path("incoming-", "");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| {
            storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, StoreError::SnapshotIo { path, source: e })
        })?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<tokio::fs::File>) -> StorageResult<()> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let mut received = *snapshot;
        // Finish the writes openraft issued through the async file before reading it back.
        received.flush().await.map_err(|e| {
            let path = "(received snapshot)".into();
            storage_err(subject.clone(), ErrorVerb::Write, StoreError::SnapshotIo { path, source: e })
        })?;
        let received = received.into_std().await;
        let sm = self.clone();
        let meta = meta.clone();
        blocking(move || sm.install(&meta, received)).await.map_err(|e| storage_err(subject, ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let snaps = self.snaps.clone();
        let current = blocking(move || snaps.open_current())
            .await
            .map_err(|e| storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(current.map(|(meta, file)| StateMachine::snapshot_from(meta, file)))
    }
}

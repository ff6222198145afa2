//! RocksDB: the column families a node keeps, their key layouts and the value codec.
//!
//! One database per node holds both halves of the Raft storage, each in its own column families:
//!
//! | column family | key | value | written by |
//! |---|---|---|---|
//! | `log` | log index, u64 big-endian (so iteration order is index order) | [`codec`] of the entry | log store |
//! | `meta` | [`meta_key`] names | [`codec`] of vote / committed / last purged log id | log store |
//! | `sm_data` | application key (UTF-8) | the value bytes, raw | state machine |
//! | `sm_meta` | [`sm_meta_key`] names | [`codec`] of last applied / membership / install marker | state machine |
//! | `dedup` | [`dedup_key`] (identity, client id, serial) | [`codec`] of the stored response | state machine |
//! | `dedup_age` | request time (ms, u64 big-endian) ‖ [`dedup_key`] | empty | state machine |
//! | `audit_mac` | last audit sequence covered, u64 big-endian | [`codec`] of a [`crate::audit::NodeMac`] | state machine |
//!
//! `audit_mac` is this node's own: each node MACs the audit records it applies with its own HSM key,
//! so it is in no snapshot and in no state hash.
//!
//! The state-machine families (`sm_data`, `sm_meta`, `dedup`, `dedup_age`) are what a snapshot
//! captures; the log
//! families never enter a snapshot. Keeping both halves in one database means one write-ahead log:
//! a synced write from the log store also makes every earlier state-machine write durable.
//!
//! Everything read back is checked: a value that does not decode, a key of the wrong length, a log
//! entry stored under the wrong index are [`StoreError::Corrupt`], never "nothing stored".

pub mod codec;
mod error;

use std::path::Path;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, WriteOptions};

pub use self::error::StoreError;
pub use rocksdb::WriteBatch;

/// A column family of the node database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// Raft log entries by index.
    Log,
    /// Log-store metadata: vote, committed log id, last purged log id.
    Meta,
    /// Application state (the replicated key space).
    SmData,
    /// State-machine metadata: last applied log id, membership, snapshot-install marker.
    SmMeta,
    /// Client request deduplication: (client id, serial) -> the response first returned.
    Dedup,
    /// The dedup records by age (request time ‖ dedup key), so apply can prune those past
    /// [`DEDUP_RETENTION_MS`] in order.
    DedupAge,
    /// This node's MACs over the audit chain ([`crate::audit::NodeMac`]), never replicated.
    AuditMac,
}

impl Cf {
    /// Every column family, in creation order.
    pub const ALL: [Cf; 7] = [Cf::Log, Cf::Meta, Cf::SmData, Cf::SmMeta, Cf::Dedup, Cf::DedupAge, Cf::AuditMac];

    /// The families a snapshot carries and an install replaces (`sm_meta` is rebuilt from the
    /// snapshot's own metadata instead).
    pub const SNAPSHOT: [Cf; 3] = [Cf::SmData, Cf::Dedup, Cf::DedupAge];

    /// The column family's name on disk.
    pub const fn name(self) -> &'static str {
        match self {
            Cf::Log => "log",
            Cf::Meta => "meta",
            Cf::SmData => "sm_data",
            Cf::SmMeta => "sm_meta",
            Cf::Dedup => "dedup",
            Cf::DedupAge => "dedup_age",
            Cf::AuditMac => "audit_mac",
        }
    }
}

/// Keys of the `meta` column family.
pub mod meta_key {
    /// The last saved vote.
    pub const VOTE: &[u8] = b"vote";
    /// The last saved committed log id (a hint for re-applying on start-up).
    pub const COMMITTED: &[u8] = b"committed";
    /// The id of the last purged log entry; written in the same batch as the purge itself.
    pub const LAST_PURGED: &[u8] = b"last_purged";
}

/// Keys of the `sm_meta` column family.
pub mod sm_meta_key {
    /// The id of the last applied log entry.
    pub const LAST_APPLIED: &[u8] = b"last_applied";
    /// The last applied membership config.
    pub const MEMBERSHIP: &[u8] = b"membership";
    /// Present while a snapshot install is rewriting the state-machine families; on open, its
    /// presence means the install must be redone from the current snapshot file.
    pub const INSTALLING: &[u8] = b"installing";
}

/// The `log` key of a log index: 8 bytes big-endian, so keys sort in index order.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Decode a `log` key; any length but 8 is corruption.
pub fn decode_log_key(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::corrupt(Cf::Log, key, format!("log key is {} bytes, expected 8", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// How long the answer to a request is kept for a retry with the same client id and serial: a
/// day, far beyond any client's retry window (`quill` retries for seconds, and a client that
/// gave up after a timeout learns the outcome by retrying within minutes). A request older than
/// this, sent again, is applied anew. Pruned in apply, in request-time order, by leader time, so
/// every node prunes the same records at the same entry.
pub const DEDUP_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// The `dedup_age` key of a dedup record: request time (ms, big-endian) then the dedup key.
pub fn dedup_age_key(time_ms: u64, dedup_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + dedup_key.len());
    k.extend_from_slice(&time_ms.to_be_bytes());
    k.extend_from_slice(dedup_key);
    k
}

/// The `dedup` key of a request: the caller's identity and the client id, each preceded by its
/// length (u32 big-endian), then the serial (u64 big-endian). The length prefixes keep
/// `("a", …)` and `("ab", …)` apart. Keyed by the identity too, so a caller who learns another
/// client's id cannot pre-empt its next serial and have the victim answered with its outcome.
pub fn dedup_key(identity: &str, client_id: &str, serial: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + identity.len() + client_id.len() + 8);
    for part in [identity.as_bytes(), client_id.as_bytes()] {
        // A field longer than u32::MAX bytes cannot come through a Raft entry; saturating keeps
        // this total anyway.
        key.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        key.extend_from_slice(part);
    }
    key.extend_from_slice(&serial.to_be_bytes());
    key
}

/// The node database: one RocksDB with the column families in [`Cf`].
pub struct Store {
    db: rocksdb::DB,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

impl Store {
    /// Open (or create) the database at `path` with every column family.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        let cfs = || {
            Cf::ALL.iter().map(|cf| {
                let mut cf_opts = Options::default();
                cf_opts.set_compression_type(DBCompressionType::Lz4);
                ColumnFamilyDescriptor::new(cf.name(), cf_opts)
            })
        };
        // A node restarted right after it was killed can find the database LOCK still held while
        // the kernel tears the old process down: retry that for a few seconds, nothing else.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match rocksdb::DB::open_cf_descriptors(&opts, path, cfs()) {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Self { db })
    }

    /// The handle of a column family. Every family is created at open, so a missing one means the
    /// database was opened by something else.
    pub fn cf(&self, cf: Cf) -> Result<&ColumnFamily, StoreError> {
        self.db.cf_handle(cf.name()).ok_or(StoreError::MissingCf(cf.name()))
    }

    /// The raw RocksDB handle, for iteration and snapshots.
    pub fn db(&self) -> &rocksdb::DB {
        &self.db
    }

    /// Read a raw value.
    pub fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    /// Read and decode a value; a value that does not decode is [`StoreError::Corrupt`].
    pub fn get<T: serde::de::DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get_raw(cf, key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(|reason| StoreError::corrupt(cf, key, reason)),
        }
    }

    /// Write a batch. `sync` makes the write durable (the WAL is fsynced) before this returns.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    /// Every (key, value) of a column family, in key order: for offline inspection and the tests
    /// that search a stopped node's database for what must not be there.
    pub fn pairs(&self, cf: Cf) -> Result<Pairs, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf)?, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Fsync the write-ahead log: every write made so far is durable when this returns.
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        Ok(self.db.flush_wal(true)?)
    }
}

/// Key-value pairs, as a scan returns them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Key-value access to the application data (`sm_data`) while a log entry applies: what the
/// domain modules (keys, audit, later jobs) read and write. Writes are collected, not applied at
/// once, so an entry's effects land in one batch.
pub trait Kv {
    /// The value of `key`, including this entry's earlier writes.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every (key, value) whose key starts with `prefix`, in key order, including this entry's
    /// earlier writes.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError>;
    /// Set `key`.
    fn put(&mut self, key: &[u8], value: Vec<u8>);
    /// Delete `key`.
    fn delete(&mut self, key: &[u8]);
}

/// Read and decode a value through a [`Kv`]; undecodable bytes are [`StoreError::Corrupt`].
pub fn get_typed<T: serde::de::DeserializeOwned>(kv: &dyn Kv, key: &[u8]) -> Result<Option<T>, StoreError> {
    match kv.get(key)? {
        None => Ok(None),
        Some(bytes) => codec::decode(&bytes).map(Some).map_err(|reason| StoreError::corrupt(Cf::SmData, key, reason)),
    }
}

/// Read and decode every value under `prefix`, in key order.
pub fn scan_typed<T: serde::de::DeserializeOwned>(kv: &dyn Kv, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
    kv.scan_prefix(prefix)?
        .into_iter()
        .map(|(k, v)| codec::decode(&v).map_err(|reason| StoreError::corrupt(Cf::SmData, &k, reason)))
        .collect()
}

/// Encode and write a value through a [`Kv`].
pub fn put_typed<T: serde::Serialize>(kv: &mut dyn Kv, key: &[u8], value: &T) -> Result<(), StoreError> {
    let bytes = codec::encode(value).map_err(|e| StoreError::encode("state value", e))?;
    kv.put(key, bytes);
    Ok(())
}

/// A [`Kv`] over the node database for one entry: reads see RocksDB plus the entry's own writes;
/// writes go into the entry's batch.
pub struct Tx<'a> {
    store: &'a Store,
    cf: &'a ColumnFamily,
    batch: &'a mut WriteBatch,
    overlay: Overlay,
}

impl<'a> Tx<'a> {
    /// Start collecting into `batch`.
    pub fn new(store: &'a Store, batch: &'a mut WriteBatch) -> Result<Self, StoreError> {
        Ok(Tx { store, cf: store.cf(Cf::SmData)?, batch, overlay: Default::default() })
    }
}

impl Tx<'_> {
    /// Write into another column family (dedup records) in the same batch.
    pub fn put_cf(&mut self, cf: Cf, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.batch.put_cf(self.store.cf(cf)?, key, value);
        Ok(())
    }

    /// Delete keys `from..to` of another column family in the same batch.
    pub fn delete_range_cf(&mut self, cf: Cf, from: &[u8], to: &[u8]) -> Result<(), StoreError> {
        self.batch.delete_range_cf(self.store.cf(cf)?, from, to);
        Ok(())
    }
}

impl Kv for Tx<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.get_raw(Cf::SmData, key),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.store.db.iterator_cf(self.cf, mode) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.insert(k.to_vec(), v.to_vec());
        }
        Ok(with_overlay(out, &self.overlay, prefix))
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.batch.put_cf(self.cf, key, &value);
        self.overlay.insert(key.to_vec(), Some(value));
    }

    fn delete(&mut self, key: &[u8]) {
        self.batch.delete_cf(self.cf, key);
        self.overlay.insert(key.to_vec(), None);
    }
}

/// Pending writes over a store: `Some` a value, `None` a deletion.
pub type Overlay = std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// `base` (the stored pairs under `prefix`) as the pending writes of `overlay` leave it.
pub fn with_overlay(mut base: std::collections::BTreeMap<Vec<u8>, Vec<u8>>, overlay: &Overlay, prefix: &[u8]) -> Pairs {
    for (k, v) in overlay.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
        match v {
            Some(v) => base.insert(k.clone(), v.clone()),
            None => base.remove(k),
        };
    }
    base.into_iter().collect()
}

/// An in-memory [`Kv`] for unit tests of the domain modules.
#[derive(Debug, Default, Clone)]
pub struct MemKv(pub std::collections::BTreeMap<Vec<u8>, Vec<u8>>);

impl Kv for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        Ok(self
            .0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.0.insert(key.to_vec(), value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.0.remove(key);
    }
}

use std::path::PathBuf;

use super::Cf;

/// What went wrong in the storage layer, by whose fault.
///
/// Every variant is a reason to stop trusting this node's disk state for the operation at hand;
/// the Raft layer maps them to openraft's `StorageError`, which stops the node rather than letting
/// it serve from damaged state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB itself failed (I/O error, corruption it detected, bad options).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),

    /// A stored key or value is not what this build wrote: the data is damaged or was written by
    /// an incompatible version. Never treated as "absent".
    #[error("corrupt data in column family `{cf}` at key {key}: {reason}")]
    Corrupt {
        /// The column family name.
        cf: &'static str,
        /// The key, hex-encoded.
        key: String,
        /// What failed to decode.
        reason: String,
    },

    /// A column family that [`super::Store::open`] creates is missing: the database was opened by
    /// something else.
    #[error("column family `{0}` missing from the database")]
    MissingCf(&'static str),

    /// A value could not be encoded (a bug, not a disk fault).
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The codec's error.
        source: postcard::Error,
    },

    /// A snapshot file could not be read or written.
    #[error("snapshot file {path}: {source}")]
    SnapshotIo {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// A snapshot's contents are malformed (truncated, bad magic, bad record).
    #[error("malformed snapshot {path}: {reason}")]
    SnapshotFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// This node could not MAC the audit records an entry appends (its HSM failed): the entry is
    /// not applied, because a node never writes a record it cannot vouch for (fail closed).
    #[error("cannot MAC audit records {first}..={last} with this node's audit key: {reason}; not applying the entry")]
    AuditMac {
        /// First record of the entry.
        first: u64,
        /// Last record of the entry.
        last: u64,
        /// The HSM's error.
        reason: String,
    },

    /// A blocking storage task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// A [`StoreError::Corrupt`] for `key` in `cf`.
    pub fn corrupt(cf: Cf, key: &[u8], reason: impl Into<String>) -> Self {
        StoreError::Corrupt { cf: cf.name(), key: hex(key), reason: reason.into() }
    }

    /// A [`StoreError::Encode`].
    pub fn encode(what: &'static str, source: postcard::Error) -> Self {
        StoreError::Encode { what, source }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

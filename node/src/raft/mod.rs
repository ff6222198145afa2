//! Raft: the openraft type configuration, the replicated command set, and the durable storage that
//! openraft drives (a log store and a state machine, both on the node's RocksDB).
//!
//! The storage contract, on top of openraft's (`openraft::storage::RaftLogStorage`,
//! `openraft::storage::RaftStateMachine`):
//!
//! - **The log store syncs before it reports.** `append` writes all entries in one batch with a
//!   synced write and only then calls openraft's flush callback; `save_vote`, `truncate` and
//!   `purge` return after a synced write. (openraft's RocksDB example acknowledges appends
//!   without syncing; this store does not.)
//! - **Apply is one batch per entry.** An entry's effects, its dedup record, the last applied log
//!   id and (for a membership entry) the membership go into one `WriteBatch`. The batch is not
//!   synced: after a crash the applied index may step back, and openraft re-applies from the
//!   synced log. Apply is deterministic: it reads no clock and no randomness (the leader puts the
//!   time into [`Request::time_ms`]).
//! - **A retried request is applied once.** The state machine keys each response by
//!   ([`Request::client_id`], [`Request::serial`]); a second entry with the same pair changes
//!   nothing and returns the stored response with [`Response::duplicate`] set.
//! - **Purging never outruns a durable snapshot.** openraft purges the log only up to the last log
//!   id of the snapshot the state machine last reported (`calc_purge_upto` in openraft's engine
//!   reads `snapshot_meta.last_log_id`). So the state machine reports a snapshot only once it is
//!   durable: `build_snapshot` fsyncs the WAL (so the applied state it captured is on disk too),
//!   writes the snapshot file, fsyncs it, renames it into place and fsyncs the directory before
//!   it returns; `install_snapshot` does the same, and syncs the installed state, before it
//!   returns; and `get_current_snapshot` (what openraft reads at start-up) only returns such a
//!   file. The log store cannot check this itself (openraft's suite purges with no snapshot).

pub mod log_store;
mod snapshot;
mod state_machine;
#[cfg(test)]
mod test;

use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};

pub use self::log_store::LogStore;
pub use self::state_machine::{SnapshotBuilder, StateMachine};
use crate::audit::AuditMac;
use crate::identity::Actor;
use crate::keys::KeyCommand;
use crate::store::{Store, StoreError};

pub use crate::identity::NodeId;

openraft::declare_raft_types!(
    /// The openraft type configuration of a Quill cluster.
    ///
    /// `SnapshotData` is a `tokio::fs::File`, not an in-memory `Cursor<Vec<u8>>`: snapshots carry
    /// batch outputs and grow to hundreds of MB, so they are built into a file, sent from it in
    /// chunks (openraft seeks and reads the file), received into a file, and installed by
    /// streaming that file into RocksDB. No snapshot is ever held whole in memory.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Where to reach a node: the address peers send Raft RPCs to, and the client API address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// `host:port` of the node's Raft RPC endpoint.
    pub raft_addr: String,
    /// `host:port` of the node's client API endpoint.
    pub api_addr: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// A client write, as replicated in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The writing client's id. Together with `serial` it identifies the request across retries.
    pub client_id: String,
    /// The client's serial for this request; a retry reuses it.
    pub serial: u64,
    /// Milliseconds since the Unix epoch, assigned by the leader when it accepted the request.
    /// Apply uses this, never the local clock.
    pub time_ms: u64,
    /// Who asked (identity and role), as the API established it from the caller's certificate.
    pub actor: Actor,
    /// The certificate the caller presented (`None` for a node's own proposals): apply refuses
    /// a request whose certificate serial is revoked at that point of the log.
    pub cert: Option<crate::identity::CertRef>,
    /// The leader's audit MAC over the request digest (`None` before the audit key exists, or
    /// when the leader's HSM could not make it; the next seal covers the record then).
    pub audit_mac: Option<AuditMac>,
    /// What to do.
    pub cmd: Command,
}

/// The replicated commands. Later issues add job commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value` in the replicated key space.
    Put {
        /// The key; must not be empty.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Do nothing (used to commit a barrier, and by tests and benchmarks). Not audited.
    Noop,
    /// Key management (enrolment, ceremonies, inventory, approvals, audit keys).
    Keys(KeyCommand),
    /// Batch jobs: submission, chunk claims with fencing, results, delivery.
    Jobs(crate::jobs::JobCommand),
    /// Several clients' requests packed by the leader into one entry (applied in order, each
    /// with its own dedup record, audit record and response). Never nested.
    Batch(Vec<Request>),
    /// Mark this log index for the divergence check: every node hashes its state right after
    /// applying it, and the leader compares the hashes (the leader's own; not audited).
    HashCheck,
    /// Seal the audit chain up to record `seq`, whose hash is `hash`, with the audit key.
    AuditSeal {
        /// The sealed record.
        seq: u64,
        /// Its hash.
        hash: crate::audit::Hash,
        /// HMAC over `audit::seal_input(seq, hash)`.
        mac: AuditMac,
    },
    /// Prune the audit records an approved archive holds (`quill audit prune`, an auditor).
    AuditPrune {
        /// The approval (action `AuditPrune`) two custodians granted.
        approval: String,
    },
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The log index at which the request was first applied.
    pub log_index: u64,
    /// `true` if this entry repeated an already-applied (client id, serial): nothing changed and
    /// `outcome` is the original one.
    pub duplicate: bool,
    /// What applying did.
    pub outcome: Outcome,
}

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A blank entry (a new leader's first entry).
    Blank,
    /// A membership change entry.
    Membership,
    /// [`Command::Noop`] applied.
    Noop,
    /// [`Command::Put`] applied; `replaced` tells whether the key held a value before.
    Put {
        /// The key existed before this put.
        replaced: bool,
    },
    /// A key-management command or an audit seal applied: what changed, and how (no secrets).
    Done {
        /// The object, e.g. `key:imk-ac.v1`.
        object: String,
        /// A short description.
        detail: String,
    },
    /// The responses of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
    /// The command was refused deterministically (the same on every node) and changed nothing but
    /// its dedup record and its audit record, so a retry gets the same refusal.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// A command or outcome that does not decode from its wire bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct WireError {
    /// What was being decoded ("command", "outcome").
    pub what: &'static str,
    /// Why it does not decode.
    pub reason: String,
}

/// Encode a [`Command`] for the wire (`WriteRequest.command`): plain postcard, shared by the node
/// and its clients so both sides use one codec.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    encode_wire(cmd)
}

/// Decode a [`Command`] from `WriteRequest.command`. Strict: bytes left over are an error.
pub fn decode_command(bytes: &[u8]) -> Result<Command, WireError> {
    decode_wire("command", bytes)
}

/// Encode an [`Outcome`] for the wire (`WriteResponse.outcome`).
pub fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    encode_wire(outcome)
}

/// Decode an [`Outcome`] from `WriteResponse.outcome`. Strict: bytes left over are an error.
pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, WireError> {
    decode_wire("outcome", bytes)
}

fn encode_wire<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard serialises these plain enums of strings, bytes and integers into a Vec without
    // any failure path (its errors are for unsupported serde features and full buffers).
    postcard::to_stdvec(value).expect("postcard encodes plain enums into a Vec infallibly")
}

fn decode_wire<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, WireError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| WireError { what, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(WireError { what, reason: format!("{} trailing bytes", rest.len()) });
    }
    Ok(value)
}

/// An openraft `StorageError` for this cluster's node id type.
pub type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// Open (or create) the Raft storage under `dir`: the RocksDB in `dir/db`, snapshot files in
/// `dir/snapshots`. Finishes an interrupted snapshot install, and a purge a stop right after an
/// install left undone ([`LogStore::close_gap`]), before returning.
pub async fn open(dir: &Path) -> Result<(LogStore, StateMachine), StoreError> {
    let dir = dir.to_path_buf();
    blocking(move || {
        let store = Arc::new(Store::open(&dir.join("db"))?);
        let sm = StateMachine::open(store.clone(), &dir.join("snapshots"))?;
        LogStore::close_gap(&store, sm.current_snapshot_log_id()?)?;
        Ok((LogStore::new(store), sm))
    })
    .await
}

/// Run blocking RocksDB / file work off the async worker threads. The caller awaits it, so the
/// order of storage operations is the order of calls, as openraft requires.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Task(e.to_string()))?
}

/// Map a store error to openraft's, naming the subject and the verb.
fn storage_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: StoreError) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

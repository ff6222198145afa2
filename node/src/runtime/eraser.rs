//! Erasing purged data from this node's files.
//!
//! A purge in the state machine (a job acknowledged, cancelled or expired; a key destroyed)
//! deletes the sealed input and output and removes the wrapped data key (or the wrapped key) from
//! the replicated state. The bytes still sit in older places until they are compacted away: the
//! Raft log entries that carried them (the job's submission with its wrapped data key, the sealed
//! chunks), the current snapshot file, and RocksDB's write-ahead log and table files. After such a
//! command applies, the eraser on every node:
//!
//! 1. builds a snapshot (it no longer holds the purged values; the old snapshot file is replaced);
//! 2. purges the Raft log up to the purging entry (openraft may wait a few seconds while a
//!    replication to a follower still reads those entries);
//! 3. flushes every column family and compacts the log and the state, so the deleted values leave
//!    the table files and the write-ahead log that held them is released.
//!
//! Until it finishes (seconds on a running node; a node that is down does it when it has caught up
//! after restarting), the log still holds the sealed chunks and the data key wrapped under the SMK.
//! Afterwards no file of the node holds the data key in any form, so the sealed bytes that may
//! remain in freed disk blocks open under no key: not even with the SMK.

use std::time::Duration;

use tracing::{info, warn};

use crate::network::Raft;
use crate::raft::StateMachine;

/// How often the eraser looks for new purges.
const EVERY: Duration = Duration::from_secs(1);
/// How long one step (snapshot, log purge) may take before the round is retried.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an erase round did not finish (retried on the next round).
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// Raft stopped (a fatal error on this node).
    #[error("raft stopped: {0}")]
    Raft(String),
    /// A step did not finish in time.
    #[error("{0} did not finish within {STEP_TIMEOUT:?}")]
    Timeout(&'static str),
    /// The store failed to flush or compact.
    #[error("compacting the database: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Erase after every purge until `stop` resolves.
pub async fn run(raft: Raft, sm: StateMachine, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut done = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let upto = sm.erased_at();
        if upto <= done {
            continue;
        }
        match erase(&raft, &sm, upto).await {
            Ok(()) => {
                info!("purged data erased from this node's log, snapshot and database files up to log index {upto}");
                done = upto;
            }
            Err(e) => warn!(upto, error = %e, "erasing purged data from disk failed; retrying"),
        }
    }
}

/// Wait until `f` holds on this node's Raft metrics.
async fn wait_metrics(
    raft: &Raft,
    what: &'static str,
    f: impl Fn(&openraft::RaftMetrics<u64, crate::raft::NodeAddr>) -> bool,
) -> Result<(), EraseError> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let mut rx = raft.metrics();
    loop {
        if f(&rx.borrow()) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(EraseError::Raft("metrics closed".into())),
            Err(_) => return Err(EraseError::Timeout(what)),
        }
    }
}

/// One erase: snapshot, log purge and compaction up to log index `upto`.
async fn erase(raft: &Raft, sm: &StateMachine, upto: u64) -> Result<(), EraseError> {
    raft.trigger().snapshot().await.map_err(|e| EraseError::Raft(e.to_string()))?;
    wait_metrics(raft, "the snapshot", |m| m.snapshot.is_some_and(|s| s.index >= upto)).await?;
    raft.trigger().purge_log(upto).await.map_err(|e| EraseError::Raft(e.to_string()))?;
    wait_metrics(raft, "the log purge", |m| m.purged.is_some_and(|p| p.index >= upto)).await?;
    sm.compact_files().await?;
    Ok(())
}

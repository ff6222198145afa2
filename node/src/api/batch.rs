//! Packing concurrent client writes into Raft entries.
//!
//! Every write goes through one queue. A task takes what is queued (up to [`MAX_BATCH`]) and
//! proposes it: one request as itself, several as one [`Command::Batch`] entry, which the state
//! machine applies request by request (each with its own dedup record, audit record and
//! response). At most [`MAX_IN_FLIGHT`] proposals are outstanding; while they are, new writes
//! wait in the queue and leave together in the next entry. So a lone client pays nothing, and
//! under load one entry (one append, one fsync per node, one apply batch) carries many commands.
//! A follower's proposal fails with `ForwardToLeader` for every request in it, and each is then
//! forwarded on its own, as before.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::keys::model::Actor;
use crate::network::Raft;
use crate::raft::{Command, NodeAddr, NodeId, Outcome, Request, Response};

/// Most requests in one entry.
pub const MAX_BATCH: usize = 256;
/// Most proposals outstanding at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// Queue length (writes waiting to be proposed).
const QUEUE: usize = 4096;

/// Why a queued write failed.
#[derive(Debug, Clone)]
pub enum WriteFail {
    /// Raft refused the proposal (not leader, fatal).
    Raft(RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>),
    /// The batch came back without a response for this write (a bug).
    Internal(String),
}

/// A write waiting to be proposed, and where its response goes.
pub struct Pending {
    /// The request.
    pub req: Request,
    /// Its response (the [`Response`] of this request, not of the batch).
    pub done: oneshot::Sender<Result<Response, WriteFail>>,
}

/// Start the batcher of node `id`; returns its queue.
pub fn spawn(id: NodeId, raft: Raft) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(id, raft, rx));
    tx
}

async fn run(id: NodeId, raft: Raft, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let client_id = format!("node-{id}-batch-{}", super::now_ms());
    let mut serial = 0u64;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut items = vec![first];
        while items.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => items.push(p),
                Err(_) => break,
            }
        }
        serial += 1;
        let raft = raft.clone();
        let client_id = client_id.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if items.len() == 1 {
                for p in items {
                    let r = raft.client_write(p.req).await.map(|resp| resp.data).map_err(WriteFail::Raft);
                    let _ = p.done.send(r);
                }
                return;
            }
            let (reqs, dones): (Vec<Request>, Vec<_>) = items.into_iter().map(|p| (p.req, p.done)).unzip();
            let n = reqs.len();
            let time_ms = reqs.iter().map(|r| r.time_ms).max().unwrap_or(0);
            let envelope = Request {
                client_id,
                serial,
                time_ms,
                actor: Actor::node(id),
                audit_mac: None,
                cert: None,
                cmd: Command::Batch(reqs),
            };
            match raft.client_write(envelope).await {
                Ok(resp) => match resp.data.outcome {
                    Outcome::Batch(responses) if responses.len() == n => {
                        for (done, r) in dones.into_iter().zip(responses) {
                            let _ = done.send(Ok(r));
                        }
                    }
                    other => {
                        let why = format!("a batch of {n} came back as {other:?}");
                        for done in dones {
                            let _ = done.send(Err(WriteFail::Internal(why.clone())));
                        }
                    }
                },
                Err(e) => {
                    for done in dones {
                        let _ = done.send(Err(WriteFail::Raft(e.clone())));
                    }
                }
            }
        });
    }
}

//! The job workers of one node: claim a chunk through Raft, prepare it with this node's HSMs,
//! commit the sealed result with the claim's fencing token.
//!
//! A node runs as many workers as its HSM pool has healthy slots (at least one). Each worker:
//!
//! 1. looks in the local state for a running job's chunk that is pending, or claimed with a lease
//!    that ended (by this node's clock; the leader decides), starting at a different chunk per
//!    node and worker so that nodes spread over the job;
//! 2. proposes `Claim`; the entry's log index is the claim's token;
//! 3. waits until its own state shows the claim, opens the chunk's input with the job's data key
//!    inside the HSM, builds (once per job) the prep engine from the profile and the key
//!    inventory, and prepares the cards on the HSM's sessions, renewing the lease meanwhile; a
//!    renewal that is refused means the claim is lost, and the work is dropped;
//! 4. seals the chunk's output lines with the data key and proposes `Complete` with the token; a
//!    result whose claim was taken over meanwhile is refused by the state machine (fencing).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quill_hsm::{Hsm, HsmError};
use quill_prep::emv::cert::{CertError, IssuerCertificate};
use quill_prep::engine::{CardOutput, Engine, EngineSettings, IssuerKey, KeySet, PoolSettings, SetupError};
use quill_prep::input::CardRecord;
use quill_prep::profile::{Profile, ProfileErrors};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::api::ClusterService;
use crate::jobs::{CHUNK, ChunkRecord, ChunkState, INPUT, JobCommand, JobRecord, JobState, chunk_key, jobs};
use crate::keys::apply::issuers::{self, IssuerCertRecord, IssuerKeyRecord};
use crate::keys::apply::{key, scan};
use crate::keys::model::{Actor, KeyRecord, KeyState};
use crate::raft::{Command, NodeId, Outcome, StateMachine};
use crate::runtime::agent::ProposeError;
use crate::store::StoreError;

/// How long a claim lasts without renewal.
pub const LEASE_MS: u64 = 10_000;
/// How often a worker renews its claim.
const RENEW_EVERY: Duration = Duration::from_millis(3_000);
/// How often an idle worker looks for work.
const IDLE: Duration = Duration::from_millis(300);

/// One chunk's output lines, sealed under the job's data key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkOutput {
    /// `cards` stream lines (JSON), in input order.
    pub cards: Vec<String>,
    /// `pin-mailers` stream lines.
    pub mailers: Vec<String>,
    /// `carriers` stream lines.
    pub carriers: Vec<String>,
}

pub use crate::jobs::intake::{input_aad, output_aad};

/// Why a worker's round failed (logged; the worker tries again after a pause), by whose fault.
/// A claim lost to fencing is not a failure: the work is dropped and the round ends well.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// This node's state could not be read.
    #[error("reading the state: {0}")]
    Store(#[from] StoreError),
    /// A claim, renewal or expiry got no outcome, or this node did not apply its claim in time.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The chunk's result could not be committed before the retries ran out; its claim lapses
    /// and another worker prepares the chunk again.
    #[error("chunk {n}: result not committed: {source}")]
    NotCommitted {
        /// The chunk.
        n: u32,
        /// The last proposal error.
        #[source]
        source: ProposeError,
    },
    /// This node's HSM failed a step of the chunk's work (open the input, seal the output).
    #[error("{step}: {source}")]
    Hsm {
        /// The step.
        step: &'static str,
        /// The HSM's error (names the operation and the slot, never key material).
        #[source]
        source: HsmError,
    },
    /// A blocking task did not finish (it panicked or the runtime is shutting down).
    #[error("worker task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The job's profile does not parse (it did at intake: a different build?).
    #[error("job {job}: {source}")]
    Profile {
        /// The job.
        job: String,
        /// The profile's problems.
        #[source]
        source: ProfileErrors,
    },
    /// The prep engine cannot start with the job's profile and the key inventory (a key the
    /// profile names is missing or of the wrong kind).
    #[error("job {job}: {source}")]
    Engine {
        /// The job.
        job: String,
        /// Why.
        #[source]
        source: SetupError,
    },
    /// An issuer certificate in the state does not recover with its CA key.
    #[error("issuer certificate {id}: {source}")]
    IssuerCertificate {
        /// The certificate's id.
        id: String,
        /// Why.
        #[source]
        source: CertError,
    },
    /// An issuer certificate in the state names a RID that is not 5 bytes of hex.
    #[error("issuer certificate {id}: bad RID in the state")]
    BadRid {
        /// The certificate's id.
        id: String,
    },
    /// An issuer key pair does not match its certificate.
    #[error("issuer key {label}: {reason}")]
    IssuerKey {
        /// The key pair's label.
        label: String,
        /// Why.
        reason: String,
    },
    /// A key's block at rest belongs to another tenant than its record (the record was altered).
    #[error("{0}")]
    ForeignBlock(String),
    /// The claimed chunk is not in this node's state although the claim applied.
    #[error("the chunk vanished")]
    ChunkVanished,
    /// The claimed chunk's input is no longer in the state.
    #[error("the chunk's input is gone (job cancelled?)")]
    InputGone,
    /// The chunk's input, opened, does not decode as card records.
    #[error("the chunk input does not decode: {0}")]
    InputDecode(#[source] postcard::Error),
    /// A chunk's output does not encode (a bug).
    #[error("the chunk output does not encode: {0}")]
    OutputEncode(String),
    /// The claim was lost while the cards were being prepared (fenced): the work is dropped.
    #[error("claim lost")]
    ClaimLost,
}

/// The key set the engine takes for a job of `tenant`, from the inventory: the newest active
/// version of every label of that tenant with the TR-31 usage its record has (the engine refuses
/// a key for a step its usage is not for), and every issuer key pair of that tenant bound to a
/// verified certificate. Another tenant's keys are not in the set at all: a profile naming one
/// finds no such key.
pub fn inventory_keys(kv: &dyn crate::store::Kv, tenant: &str) -> Result<KeySet, WorkerError> {
    let mut set = KeySet::new();
    let mut keys: Vec<KeyRecord> = scan(kv, key::KEY)?;
    keys.sort_by_key(|k| (k.label.clone(), k.version));
    for k in keys.iter().filter(|k| k.state == KeyState::Active && k.tenant == tenant) {
        if let Some(w) = k.block().map_err(WorkerError::ForeignBlock)? {
            set.insert(k.label.clone(), w.clone(), k.usage.tr31());
        }
    }
    let cas = issuers::ca_store(kv)?;
    let pairs: Vec<IssuerKeyRecord> = scan(kv, issuers::ISSUER)?;
    for p in pairs.into_iter().filter(|p| p.tenant == tenant) {
        let Some(cert_id) = &p.certificate else { continue };
        let Some(c) = crate::keys::apply::read::<IssuerCertRecord>(kv, &format!("{}{cert_id}", issuers::ISSUER_CERT))?
        else {
            continue;
        };
        if crate::keys::apply::ca::cert_revoked(kv, &c)? {
            let reason = format!(
                "its certificate {cert_id} is revoked by CA {}/{:02X} (serial {}): no card is signed with it",
                c.rid, c.ca_index, c.serial
            );
            set.refuse_issuer(p.label.clone(), reason);
            continue;
        }
        let rid: [u8; 5] = hex::decode(&c.rid)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| WorkerError::BadRid { id: cert_id.clone() })?;
        let h = |s: &str| hex::decode(s).unwrap_or_default();
        let cert = IssuerCertificate::recover(&cas, rid, c.ca_index, &h(&c.cert), &h(&c.remainder), &h(&c.exponent))
            .map_err(|source| WorkerError::IssuerCertificate { id: cert_id.clone(), source })?;
        let block = p.block().map_err(WorkerError::ForeignBlock)?.clone();
        let pair =
            IssuerKey::new(block, cert).map_err(|reason| WorkerError::IssuerKey { label: p.label.clone(), reason })?;
        set.insert_issuer(p.label.clone(), pair);
    }
    Ok(set)
}

/// The workers of one node.
pub struct Workers {
    id: NodeId,
    hsm: Arc<dyn Hsm>,
    sm: StateMachine,
    cluster: ClusterService,
    engines: Mutex<HashMap<String, Arc<Engine>>>,
    threads: usize,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Workers {
    /// The workers of node `id`.
    pub fn new(id: NodeId, hsm: Arc<dyn Hsm>, sm: StateMachine, cluster: ClusterService, threads: usize) -> Arc<Self> {
        Arc::new(Workers { id, hsm, sm, cluster, engines: Mutex::new(HashMap::new()), threads: threads.max(1) })
    }

    /// Run `count` workers until `stop` is set.
    pub async fn run(self: Arc<Self>, count: usize, stop: Arc<AtomicBool>) {
        let mut handles = Vec::new();
        for w in 0..count.max(1) {
            let me = self.clone();
            let stop = stop.clone();
            handles.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match me.round(w).await {
                        Ok(true) => {}
                        Ok(false) => tokio::time::sleep(IDLE).await,
                        Err(e) => {
                            warn!(worker = w, error = %e, "job worker round failed");
                            tokio::time::sleep(IDLE * 3).await;
                        }
                    }
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    }

    async fn submit(&self, cmd: JobCommand) -> Result<(u64, Outcome), WorkerError> {
        let serial = self.cluster.next_agent_serial();
        let client = self.cluster.agent_client_id("jobs");
        let resp = self
            .cluster
            .submit(&client, serial, Actor::node(self.id), Command::Jobs(cmd))
            .await
            .map_err(ProposeError::from)?;
        Ok((resp.log_index, resp.outcome))
    }

    /// One round: find a chunk, claim it, prepare it. `Ok(false)`: nothing to do.
    async fn round(&self, worker: usize) -> Result<bool, WorkerError> {
        let view = self
            .sm
            .read(|kv| {
                let mut out = Vec::new();
                for j in jobs(kv)?.into_iter().filter(|j| j.state == JobState::Running) {
                    let cs = crate::jobs::chunks(kv, &j.id)?;
                    out.push((j, cs));
                }
                Ok(out)
            })
            .await?;
        let now = now_ms();
        if worker == 0 {
            self.expire(now).await?;
        }
        for (job, chunks) in view {
            let n = chunks.len();
            if n == 0 {
                continue;
            }
            let start = (self.id as usize * 7919 + worker * 104_729) % n;
            let pick = (0..n)
                .map(|i| &chunks[(start + i) % n])
                .find(|c| c.state == ChunkState::Pending || (c.state == ChunkState::Claimed && c.lease_until_ms < now));
            let Some(c) = pick else { continue };
            let (token, outcome) = self
                .submit(JobCommand::Claim { id: job.id.clone(), n: c.n, node: self.id, lease_ms: LEASE_MS })
                .await?;
            if let Outcome::Rejected { .. } = outcome {
                return Ok(true);
            }
            info!(job = %job.id, chunk = c.n, token, "claimed a chunk");
            self.prepare(&job, c.n, token).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Propose the expiry of jobs whose retention ran out unacknowledged (the state machine
    /// checks the time again with the leader's clock).
    async fn expire(&self, now: u64) -> Result<(), WorkerError> {
        let due = self
            .sm
            .read(move |kv| {
                Ok(jobs(kv)?
                    .into_iter()
                    .filter(|j| matches!(j.state, JobState::Uploading | JobState::Running | JobState::Done))
                    .filter(|j| {
                        (j.retention_ms > 0 && now >= j.created_ms.saturating_add(j.retention_ms))
                            || (j.state == JobState::Uploading && crate::jobs::upload_abandoned(j, now))
                    })
                    .map(|j| j.id)
                    .collect::<Vec<_>>())
            })
            .await?;
        for id in due {
            if let (_, Outcome::Done { detail, .. }) = self.submit(JobCommand::Expire { id: id.clone() }).await? {
                info!(job = %id, %detail, "job expired");
            }
        }
        Ok(())
    }

    fn engine(&self, job: &JobRecord, keys: KeySet) -> Result<Arc<Engine>, WorkerError> {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = engines.get(&job.id) {
            return Ok(e.clone());
        }
        let profile = Profile::parse(&job.profile, &job.product)
            .map_err(|source| WorkerError::Profile { job: job.id.clone(), source })?;
        let settings = EngineSettings { pool: PoolSettings { capacity: 0, refill_threads: 0 } };
        let e = Arc::new(
            Engine::new(profile, keys, self.hsm.clone(), settings)
                .map_err(|source| WorkerError::Engine { job: job.id.clone(), source })?,
        );
        engines.retain(|id, _| id == &job.id);
        engines.insert(job.id.clone(), e.clone());
        Ok(e)
    }

    async fn prepare(&self, job: &JobRecord, n: u32, token: u64) -> Result<(), WorkerError> {
        // Our own state must show the claim before we read the input.
        self.cluster.wait_applied(token, Duration::from_secs(10)).await.map_err(ProposeError::from)?;
        let (id, tenant) = (job.id.clone(), job.tenant.clone());
        let (sealed, chunk, keys) = self
            .sm
            .read(move |kv| {
                let sealed = kv.get(chunk_key(INPUT, &id, n).as_bytes())?;
                let chunk: Option<ChunkRecord> = crate::store::get_typed(kv, chunk_key(CHUNK, &id, n).as_bytes())?;
                Ok((sealed, chunk, inventory_keys(kv, &tenant)))
            })
            .await?;
        let chunk = chunk.ok_or(WorkerError::ChunkVanished)?;
        if chunk.token != token || chunk.node != Some(self.id) {
            info!(job = %job.id, chunk = n, token, current = chunk.token, "claim superseded before the work began (fenced); nothing to do");
            return Ok(());
        }
        let sealed = sealed.ok_or(WorkerError::InputGone)?;
        let engine = self.engine(job, keys?)?;

        let lost = Arc::new(AtomicBool::new(false));
        let renew = {
            let lost = lost.clone();
            let me_id = job.id.clone();
            let this = self.cluster.clone();
            let node = self.id;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    let serial = this.next_agent_serial();
                    let cmd = JobCommand::Renew { id: me_id.clone(), n, node, token, lease_ms: LEASE_MS };
                    match this
                        .submit(&this.agent_client_id("jobs"), serial, Actor::node(node), Command::Jobs(cmd))
                        .await
                    {
                        Ok(r) => {
                            if let Outcome::Rejected { reason } = r.outcome {
                                warn!(job = %me_id, chunk = n, %reason, "claim lost");
                                lost.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                        Err(e) => warn!(job = %me_id, chunk = n, error = %e, "lease renewal failed; retrying"),
                    }
                }
            })
        };
        let hsm = self.hsm.clone();
        let data_key = job.data_key().map_err(WorkerError::ForeignBlock)?.clone();
        let threads = self.threads;
        let (aad_in, aad_out) = (input_aad(&job.id, n), output_aad(&job.id, n));
        let lost2 = lost.clone();
        let result =
            tokio::task::spawn_blocking(move || -> Result<(ChunkOutput, u32, Vec<String>, Vec<u8>), WorkerError> {
                let clear = hsm
                    .open(&data_key, &aad_in, &sealed)
                    .map_err(|source| WorkerError::Hsm { step: "open the chunk input", source })?;
                let records: Vec<CardRecord> = postcard::from_bytes(&clear).map_err(WorkerError::InputDecode)?;
                let results = prepare_all(&engine, &records, threads, &lost2);
                let mut out = ChunkOutput::default();
                let mut failures = Vec::new();
                let mut prepared = 0u32;
                for r in results {
                    match r {
                        Some(Ok(card)) => {
                            prepared += 1;
                            push_card(&mut out, &card)?;
                        }
                        Some(Err(e)) => failures.push(e.to_string()),
                        None => return Err(WorkerError::ClaimLost),
                    }
                }
                let bytes = postcard::to_allocvec(&out).map_err(|e| WorkerError::OutputEncode(e.to_string()))?;
                let sealed = hsm
                    .seal(&data_key, &aad_out, &bytes)
                    .map_err(|source| WorkerError::Hsm { step: "seal the chunk output", source })?;
                Ok((out, prepared, failures, sealed))
            })
            .await?;
        renew.abort();
        let (_, prepared, failures, sealed) = match result {
            Ok(r) => r,
            Err(e) if lost.load(Ordering::SeqCst) => {
                info!(job = %job.id, chunk = n, "claim lost (fenced): dropped the chunk's work: {e}");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // Commit the result, retrying with the same serial (applied at most once) while the
        // cluster cannot be reached: after a partition heals the result still arrives, and the
        // state machine decides by the token whether it counts.
        let cmd = JobCommand::Complete { id: job.id.clone(), n, node: self.id, token, prepared, failures, sealed };
        let serial = self.cluster.next_agent_serial();
        let client = self.cluster.agent_client_id("jobs");
        let give_up = std::time::Instant::now() + Duration::from_millis(6 * LEASE_MS);
        let resp = loop {
            match self.cluster.submit(&client, serial, Actor::node(self.id), Command::Jobs(cmd.clone())).await {
                Ok(r) => break r,
                Err(e) if std::time::Instant::now() < give_up => {
                    warn!(job = %job.id, chunk = n, error = %e, "cannot commit the chunk yet; retrying");
                    tokio::time::sleep(Duration::from_millis(1_000)).await;
                }
                Err(e) => return Err(WorkerError::NotCommitted { n, source: e.into() }),
            }
        };
        match resp.outcome {
            Outcome::Rejected { reason } => warn!(job = %job.id, chunk = n, %reason, "chunk result refused"),
            _ => info!(job = %job.id, chunk = n, token, prepared, "chunk prepared"),
        }
        Ok(())
    }
}

fn json<T: Serialize>(v: &T) -> Result<String, WorkerError> {
    serde_json::to_string(v).map_err(|e| WorkerError::OutputEncode(e.to_string()))
}

fn push_card(out: &mut ChunkOutput, card: &CardOutput) -> Result<(), WorkerError> {
    out.cards.push(json(card)?);
    if let Some(m) = &card.mailer {
        out.mailers.push(json(m)?);
    }
    out.carriers.push(json(&card.carrier)?);
    Ok(())
}

/// Prepare `records` on `threads` threads in input order; `None` for the cards left when `lost`.
fn prepare_all(
    engine: &Engine,
    records: &[CardRecord],
    threads: usize,
    lost: &AtomicBool,
) -> Vec<Option<Result<CardOutput, quill_prep::engine::CardError>>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<CardOutput, quill_prep::engine::CardError>>>> =
        records.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if lost.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(rec) = records.get(i) else { return };
                    let mut r = engine.prepare(rec);
                    // A device error may pass on another slot of the pool: one more try.
                    if matches!(&r, Err(e) if e.device) {
                        r = engine.prepare(rec);
                    }
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    slots.into_iter().map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner())).collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

//! Batch jobs across the cluster (DESIGN.md §8): the replicated model and how its commands apply.
//!
//! A job is a validated batch file split into chunks. Its input and its output live in the
//! replicated state only encrypted (AES-256-GCM under the job's data key, a key generated in an
//! HSM and kept wrapped under the SMK). Workers on every node claim chunks through Raft: a claim
//! carries a lease and a **fencing token** (the log index of the claim entry). A chunk's result is
//! accepted only with the token of the chunk's current claim, so a worker that lost its lease (a
//! partition, a pause) cannot commit a chunk another worker redid. Acknowledgement purges the
//! input and the output; the job record keeps digests and counts, and the audit chain the rest.
//!
//! Apply is deterministic: it reads the command, the entry's context and the state; the time is
//! the leader's time in the request.

pub mod intake;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::keys::apply::key as keys_key;
use crate::keys::model::{Actor, Role, SmkInfo};
use crate::store::{Kv, StoreError};
use quill_hsm::{Kcv, WrappedKey};

/// `jobs/job/<id>` → [`JobRecord`].
pub const JOB: &str = "jobs/job/";
/// `jobs/chunk/<id>/<n, 8 digits>` → [`ChunkRecord`].
pub const CHUNK: &str = "jobs/chunk/";
/// `jobs/in/<id>/<n>` → sealed input of a chunk.
pub const INPUT: &str = "jobs/in/";
/// `jobs/out/<id>/<n>` → sealed output of a chunk.
pub const OUTPUT: &str = "jobs/out/";
/// `jobs/digest/<sha256 hex>` → the job id holding that input.
pub const DIGEST: &str = "jobs/digest/";

/// A chunk's key suffix.
pub fn chunk_key(prefix: &str, job: &str, n: u32) -> String {
    format!("{prefix}{job}/{n:08}")
}

/// The life of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Input chunks are arriving.
    Uploading,
    /// Chunks are being prepared.
    Running,
    /// Every chunk is prepared; output waits to be fetched and acknowledged.
    Done,
    /// Delivery acknowledged; input and output purged.
    Acked,
    /// Stopped by an operator; input and output purged.
    Cancelled,
    /// Not acknowledged within the job's retention; input and output purged.
    Expired,
}

impl JobState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Uploading => "uploading",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Acked => "acked",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }
}

/// One job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// The tenant it belongs to: its profile names only that tenant's keys, and only callers
    /// acting for it see the job.
    #[serde(default = "crate::identity::default_tenant")]
    pub tenant: String,
    /// Card product (profile name and version).
    pub product: String,
    /// The profile's TOML text (workers parse it; it holds labels, never keys).
    pub profile: String,
    /// Input file name as submitted.
    pub file: String,
    /// SHA-256 of the input file, hex.
    pub digest: String,
    /// Valid records (cards) in the job.
    pub records: u64,
    /// Records the input validation skipped (profile policy `skip_and_report`), with reasons.
    pub skipped: Vec<String>,
    /// Cards per chunk.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u32,
    /// Chunks whose input arrived.
    pub uploaded: u32,
    /// Chunks prepared.
    pub chunks_done: u32,
    /// Cards prepared.
    pub cards_done: u64,
    /// Cards that failed (with input line and reason), in chunk order.
    pub failures: Vec<String>,
    /// The data key (AES-256) input and output are sealed under, wrapped under the SMK.
    pub data_key: WrappedKey,
    /// Label of the output MAC key.
    pub mac_key: String,
    /// State.
    pub state: JobState,
    /// Who submitted it.
    pub created_by: Actor,
    /// When (leader time, ms).
    pub created_ms: u64,
    /// When the last chunk was prepared.
    pub done_ms: u64,
    /// Who acknowledged or cancelled it, and when.
    pub closed_by: Option<Actor>,
    /// When.
    pub closed_ms: u64,
    /// SHA-256 of each output stream as fetched, recorded at acknowledgement (hex, by stream).
    pub delivered: Vec<(String, String)>,
    /// Unacknowledged input and output are purged this long after submission (0: kept until
    /// acknowledged or cancelled).
    pub retention_ms: u64,
}

impl JobRecord {
    /// The job's data key, if its block at rest binds it to the job's tenant (see
    /// `KeyRecord::block`): a record moved to another tenant on disk opens nothing.
    pub fn data_key(&self) -> Result<&WrappedKey, String> {
        crate::keys::model::bound_to(&self.data_key, &self.tenant, &format!("job {}: its data key", self.id))
    }

    /// The record as clients see it: without the profile text and the wrapped data key.
    pub fn public(self) -> JobRecord {
        JobRecord { profile: String::new(), data_key: WrappedKey { blob: Vec::new(), ..self.data_key.clone() }, ..self }
    }
}

/// Where a chunk is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkState {
    /// Waiting for a worker.
    Pending,
    /// Claimed by a worker.
    Claimed,
    /// Prepared.
    Done,
}

/// One chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Chunk number (0-based).
    pub n: u32,
    /// Cards in the chunk.
    pub cards: u32,
    /// State.
    pub state: ChunkState,
    /// The node holding (or that held) the claim.
    pub node: Option<NodeId>,
    /// Fencing token of the current claim: the log index of the claim entry.
    pub token: u64,
    /// The claim's lease ends at this leader time (ms).
    pub lease_until_ms: u64,
    /// Claims made on the chunk (1 when nobody had to redo it).
    pub claims: u32,
    /// Cards prepared / failed, once done.
    pub prepared: u32,
    /// SHA-256 of the sealed output, hex, once done.
    pub output_digest: String,
    /// When it was done (leader time, ms).
    pub done_ms: u64,
}

/// A job command, as replicated in the log.
// `Create` is the large one (a job's whole description); it is built once per job and moved, never
// held in bulk, so boxing it would only add an allocation and an indirection to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobCommand {
    /// Create a job (actor: operator or admin); input chunks follow.
    Create {
        /// Job id.
        id: String,
        /// Profile name and version.
        product: String,
        /// Profile text.
        profile: String,
        /// Input file name.
        file: String,
        /// SHA-256 of the file, hex.
        digest: String,
        /// Valid records.
        records: u64,
        /// Skipped records and why.
        skipped: Vec<String>,
        /// Cards per chunk.
        chunk_size: u32,
        /// Chunk count.
        chunks: u32,
        /// Data key wrapped under the SMK.
        data_key: WrappedKey,
        /// Output MAC key label.
        mac_key: String,
        /// Accept a file whose digest an earlier job already has (open or delivered), or cards
        /// another open job holds.
        force: bool,
        /// Why, when forced (required then): sealed under the audit encryption key, kept in the
        /// job's audit record.
        reason: Option<Box<crate::audit::AuditNote>>,
        /// Purge unacknowledged data this long after submission (0: never).
        retention_ms: u64,
        /// The tenant it belongs to (the caller must act for it).
        #[serde(default = "crate::identity::default_tenant")]
        tenant: String,
    },
    /// One chunk's sealed input (actor: the submitter).
    Input {
        /// Job id.
        id: String,
        /// Chunk number.
        n: u32,
        /// Cards in it.
        cards: u32,
        /// Sealed records.
        sealed: Vec<u8>,
    },
    /// Every chunk arrived: start (actor: the submitter).
    Start {
        /// Job id.
        id: String,
    },
    /// Drop a job whose upload failed (actor: the submitter); nothing of it remains.
    Abort {
        /// Job id.
        id: String,
    },
    /// A worker claims a chunk (actor: that node): allowed when the chunk is pending or its lease
    /// ended. The claim's token is this entry's log index.
    Claim {
        /// Job id.
        id: String,
        /// Chunk.
        n: u32,
        /// The claiming node.
        node: NodeId,
        /// Lease length (ms).
        lease_ms: u64,
    },
    /// Extend a claim's lease (actor: the holder), only with the current token.
    Renew {
        /// Job id.
        id: String,
        /// Chunk.
        n: u32,
        /// The holder.
        node: NodeId,
        /// The claim's token.
        token: u64,
        /// New lease length from now (ms).
        lease_ms: u64,
    },
    /// A chunk's sealed output (actor: the holder): accepted only with the current claim's token.
    Complete {
        /// Job id.
        id: String,
        /// Chunk.
        n: u32,
        /// The holder.
        node: NodeId,
        /// The claim's token.
        token: u64,
        /// Cards prepared.
        prepared: u32,
        /// Cards that failed: input line and reason (never a PAN).
        failures: Vec<String>,
        /// Sealed output.
        sealed: Vec<u8>,
    },
    /// Delivery acknowledged (actor: operator or admin): purge input and output.
    Ack {
        /// Job id.
        id: String,
        /// SHA-256 of each stream as fetched.
        delivered: Vec<(String, String)>,
    },
    /// Stop a job (actor: operator or admin): purge input and output.
    Cancel {
        /// Job id.
        id: String,
    },
    /// A job's retention ran out before it was acknowledged (actor: a node): purge input and
    /// output. Refused before the retention ends.
    Expire {
        /// Job id.
        id: String,
    },
    /// During an SMK rotation, before the switch: open jobs' data keys re-protected under the
    /// next SMK, formed on every node (actor: a node; the leader's key agent). Each must be the
    /// same key (algorithm, KCV) as the job's, which must still be under the current SMK.
    DataKeysMoved {
        /// The next SMK's KCV.
        smk: Kcv,
        /// Job id and its data key under the next SMK.
        keys: Vec<(String, WrappedKey)>,
    },
}

/// What applying a job command did (the one outcome type of every domain).
pub use crate::domain::Applied as JobApplied;

impl JobCommand {
    /// The audit action name.
    pub fn action(&self) -> &'static str {
        match self {
            JobCommand::Create { .. } => "job.create",
            JobCommand::Input { .. } => "job.input",
            JobCommand::Start { .. } => "job.start",
            JobCommand::Abort { .. } => "job.abort",
            JobCommand::Claim { .. } => "job.claim",
            JobCommand::Renew { .. } => "job.renew",
            JobCommand::Complete { .. } => "job.complete",
            JobCommand::Ack { .. } => "job.ack",
            JobCommand::Cancel { .. } => "job.cancel",
            JobCommand::Expire { .. } => "job.expire",
            JobCommand::DataKeysMoved { .. } => "job.data_keys_moved",
        }
    }

    /// The object, for refusals.
    pub fn object(&self) -> String {
        match self {
            JobCommand::Create { id, .. }
            | JobCommand::Start { id }
            | JobCommand::Abort { id }
            | JobCommand::Ack { id, .. }
            | JobCommand::Cancel { id }
            | JobCommand::Expire { id } => format!("job:{id}"),
            JobCommand::Input { id, n, .. }
            | JobCommand::Claim { id, n, .. }
            | JobCommand::Renew { id, n, .. }
            | JobCommand::Complete { id, n, .. } => format!("job:{id}/chunk:{n}"),
            JobCommand::DataKeysMoved { smk, .. } => format!("smk:{smk}"),
        }
    }
}

pub use crate::domain::Ctx;
use crate::domain::{Fail, Step};

fn get<T: serde::de::DeserializeOwned>(kv: &dyn Kv, key: &str) -> Result<Option<T>, StoreError> {
    crate::store::get_typed(kv, key.as_bytes())
}

fn put<T: Serialize>(kv: &mut dyn Kv, key: &str, v: &T) -> Result<(), StoreError> {
    crate::store::put_typed(kv, key.as_bytes(), v)
}

/// Every job, in id order.
pub fn jobs(kv: &dyn Kv) -> Result<Vec<JobRecord>, StoreError> {
    crate::store::scan_typed(kv, JOB.as_bytes())
}

/// A job.
pub fn job(kv: &dyn Kv, id: &str) -> Result<Option<JobRecord>, StoreError> {
    get(kv, &format!("{JOB}{id}"))
}

/// The job made from the file with this SHA-256 whose cards are still to be made or were
/// delivered: not cancelled or expired. An acknowledged job counts: preparing the same file
/// again makes new cards with new PINs for the same PANs, which only `--force` may ask for.
/// Files are told apart per tenant: another tenant's jobs are neither refused for nor named.
pub fn open_job_with_digest(kv: &dyn Kv, tenant: &str, digest: &str) -> Result<Option<(String, JobState)>, StoreError> {
    let Some(other) = get::<String>(kv, &digest_key(tenant, digest))? else { return Ok(None) };
    Ok(job(kv, &other)?
        .filter(|j| !matches!(j.state, JobState::Cancelled | JobState::Expired))
        .map(|j| (other, j.state)))
}

/// An earlier job of the same file that stops this submission, or `None`: no open job of it, or
/// only an upload of it by the same submitter that never finished (its node died, or its
/// connection broke before the abort got through), which the new submission replaces
/// ([`upload_to_replace`]). The refusal names the job.
pub fn same_file_refusal(kv: &dyn Kv, tenant: &str, digest: &str, actor: &Actor) -> Result<Option<String>, StoreError> {
    Ok(match open_job_with_digest(kv, tenant, digest)? {
        None => None,
        Some(other) if upload_to_replace(kv, &other.0, actor)?.is_some() => None,
        Some(other) => Some(same_file(digest, &other)),
    })
}

/// Job `id` if it is an unfinished upload by `actor`.
fn upload_to_replace(kv: &dyn Kv, id: &str, actor: &Actor) -> Result<Option<JobRecord>, StoreError> {
    Ok(job(kv, id)?.filter(|j| j.state == JobState::Uploading && j.created_by == *actor))
}

/// Remove an upload and everything it stored (its abort, or its replacement by a new upload of
/// the same file).
fn drop_upload(kv: &mut dyn Kv, j: &JobRecord) -> Result<(), StoreError> {
    purge(kv, &j.id)?;
    let chunk_keys: Vec<Vec<u8>> =
        kv.scan_prefix(format!("{CHUNK}{}/", j.id).as_bytes())?.into_iter().map(|(k, _)| k).collect();
    for k in chunk_keys {
        kv.delete(&k);
    }
    kv.delete(format!("{JOB}{}", j.id).as_bytes());
    let dkey = digest_key(&j.tenant, &j.digest);
    if get::<String>(kv, &dkey)?.as_deref() == Some(j.id.as_str()) {
        kv.delete(dkey.as_bytes());
    }
    Ok(())
}

/// Where the job made from a file (by SHA-256) of a tenant is noted.
fn digest_key(tenant: &str, digest: &str) -> String {
    format!("{DIGEST}{tenant}/{digest}")
}

/// The refusal of a file that is already a job (open, or acknowledged: delivered).
pub fn same_file(digest: &str, (other, state): &(String, JobState)) -> String {
    let short = digest.get(..16).unwrap_or(digest);
    if *state == JobState::Acked {
        format!(
            "this file (SHA-256 {short}…) was job {other}, prepared and acknowledged: preparing it again makes \
             new cards and new PINs for the same PANs; submit with --force if that is what the issuer asked"
        )
    } else {
        format!("this file (SHA-256 {short}…) is already job {other}; submit with --force to prepare it again")
    }
}

/// A job's chunks, in order.
pub fn chunks(kv: &dyn Kv, id: &str) -> Result<Vec<ChunkRecord>, StoreError> {
    crate::store::scan_typed(kv, format!("{CHUNK}{id}/").as_bytes())
}

/// A sealed chunk input or output.
pub fn sealed(kv: &dyn Kv, prefix: &str, id: &str, n: u32) -> Result<Option<Vec<u8>>, StoreError> {
    kv.get(chunk_key(prefix, id, n).as_bytes())
}

/// An upload not finished this long after it began is abandoned (its node died, its client went
/// away): the nodes expire it, so its sealed input does not stay in the state.
pub const UPLOAD_ABANDONED_MS: u64 = 30 * 60_000;

/// Whether upload `j` is abandoned at `now_ms`.
pub fn upload_abandoned(j: &JobRecord, now_ms: u64) -> bool {
    now_ms >= j.created_ms.saturating_add(UPLOAD_ABANDONED_MS)
}

fn check_id(id: &str) -> Step<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return crate::domain::refuse(format!("job id {id:?}: 1-64 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

/// Delete a job's sealed input and output and drop its wrapped data key from the record (its KCV
/// stays, for the audit trail): with the key gone from the state (and, once this node's eraser
/// has run, from its log and files), what sealed bytes remain anywhere open under no key.
fn shred(j: &mut JobRecord) {
    j.data_key.blob.clear();
}

fn purge(kv: &mut dyn Kv, id: &str) -> Result<(), StoreError> {
    for prefix in [INPUT, OUTPUT] {
        let keys: Vec<Vec<u8>> =
            kv.scan_prefix(format!("{prefix}{id}/").as_bytes())?.into_iter().map(|(k, _)| k).collect();
        for k in keys {
            kv.delete(&k);
        }
    }
    Ok(())
}

/// Apply `cmd` to the state in `kv`. Refusals change nothing.
pub fn apply(kv: &mut dyn Kv, ctx: &Ctx<'_>, cmd: JobCommand) -> Result<JobApplied, StoreError> {
    let object = cmd.object();
    crate::domain::outcome(object, apply_inner(kv, ctx, cmd))
}

/// The job, or a refusal naming it.
fn job_or_refuse(kv: &dyn Kv, id: &str) -> Step<JobRecord> {
    job(kv, id)?.ok_or_else(|| Fail::Refused(format!("no job {id}")))
}

/// Only the identity that submitted a job may fetch, acknowledge or cancel it.
pub fn owner(ctx: &Ctx<'_>, j: &JobRecord) -> Step<()> {
    if !ctx.tenants().covers(&j.tenant) {
        return Err(Fail::Refused(format!("no job {}", j.id)));
    }
    owned_by(ctx.actor, j).map_err(Fail::Refused)
}

/// Refuse unless `actor` submitted `j`: the reason, which the API also gives a caller that
/// fetches another's output (as `PermissionDenied`).
pub fn owned_by(actor: &Actor, j: &JobRecord) -> Result<(), String> {
    if *actor == j.created_by {
        Ok(())
    } else {
        Err(format!("job {} belongs to {}; {actor} may not touch it", j.id, j.created_by))
    }
}

fn role(ctx: &Ctx<'_>, allowed: &[Role]) -> Step<()> {
    crate::domain::require_role(ctx.actor, allowed).map_err(Fail::Refused)
}

fn node_actor(ctx: &Ctx<'_>, node: NodeId) -> Step<()> {
    crate::domain::require_node(ctx.actor, node).map_err(Fail::Refused)
}

/// Validation first (no write before every check passed), then the writes.
#[allow(clippy::too_many_lines)]
fn apply_inner(kv: &mut dyn Kv, ctx: &Ctx<'_>, cmd: JobCommand) -> Step<String> {
    let submitter = [Role::Operator, Role::Admin];
    match cmd {
        JobCommand::Create {
            id,
            product,
            profile,
            file,
            digest,
            records,
            skipped,
            chunk_size,
            chunks,
            data_key,
            mac_key,
            force,
            reason,
            retention_ms,
            tenant,
        } => {
            role(ctx, &submitter)?;
            check_id(&id)?;
            crate::identity::check_tenant(&tenant).and_then(|()| ctx.require_tenant(&tenant)).map_err(Fail::Refused)?;
            if force {
                let Some(note) = &reason else {
                    return Err(Fail::Refused(
                        "--force needs --reason: why the issuer asked for it (kept, encrypted, in the audit chain)"
                            .into(),
                    ));
                };
                let keys = get::<crate::keys::model::AuditKeys>(kv, keys_key::AUDIT_KEYS)?;
                if keys.as_ref().map(|k| &k.enc.kcv) != Some(&note.key_kcv) {
                    return Err(Fail::Refused(
                        "the --force reason is not sealed under the cluster's audit encryption key".into(),
                    ));
                }
            }
            crate::domain::sha256_hex("digest", &digest).map_err(Fail::Refused)?;
            if job(kv, &id)?.is_some() {
                return Err(Fail::Refused(format!("job {id} already exists")));
            }
            if chunk_size == 0 || chunks == 0 || u64::from(chunks) != records.div_ceil(u64::from(chunk_size)) {
                return Err(Fail::Refused(format!(
                    "{records} records in chunks of {chunk_size} are not {chunks} chunks"
                )));
            }
            let Some(smk) = get::<SmkInfo>(kv, keys_key::SMK)? else { return Err(Fail::Refused("no SMK yet".into())) };
            if data_key.smk_kcv != smk.kcv {
                return Err(Fail::Refused("the data key is not wrapped under the cluster's SMK".into()));
            }
            if let Some(owner) = data_key.owner().filter(|o| *o != tenant) {
                return Err(Fail::Refused(format!("the data key's block belongs to tenant {owner:?}, not {tenant:?}")));
            }
            let dkey = digest_key(&tenant, &digest);
            let mut replaced = None;
            if !force && let Some(other) = open_job_with_digest(kv, &tenant, &digest)? {
                match upload_to_replace(kv, &other.0, ctx.actor)? {
                    Some(j) => replaced = Some(j),
                    None => return Err(Fail::Refused(same_file(&digest, &other))),
                }
            }
            let rec = JobRecord {
                id: id.clone(),
                tenant,
                product,
                profile,
                file,
                digest,
                records,
                skipped,
                chunk_size,
                chunks,
                uploaded: 0,
                chunks_done: 0,
                cards_done: 0,
                failures: Vec::new(),
                data_key,
                mac_key,
                state: JobState::Uploading,
                created_by: ctx.actor.clone(),
                created_ms: ctx.time_ms,
                done_ms: 0,
                closed_by: None,
                closed_ms: 0,
                delivered: Vec::new(),
                retention_ms,
            };
            let replaces = match &replaced {
                Some(old) => {
                    drop_upload(kv, old)?;
                    format!("; replaces job {}, an upload of the same file that did not finish", old.id)
                }
                None => String::new(),
            };
            put(kv, &format!("{JOB}{id}"), &rec)?;
            put(kv, &dkey, &id)?;
            let forced = if force { "; forced (the reason is sealed in this record)" } else { "" };
            Ok(format!("{} records in {} chunks of {}{forced}{replaces}", rec.records, rec.chunks, rec.chunk_size))
        }
        JobCommand::Input { id, n, cards, sealed } => {
            let mut j = job_or_refuse(kv, &id)?;
            role(ctx, &submitter)?;
            owner(ctx, &j)?;
            if j.state != JobState::Uploading {
                return Err(Fail::Refused(format!("job {id} is {}, not uploading", j.state.as_str())));
            }
            let last = j.records - u64::from(j.chunk_size) * u64::from(j.chunks - 1);
            let want = if n + 1 == j.chunks { last } else { u64::from(j.chunk_size) };
            if n >= j.chunks || u64::from(cards) != want {
                return Err(Fail::Refused(format!("chunk {n} with {cards} cards does not fit job {id}")));
            }
            let ck = chunk_key(CHUNK, &id, n);
            if get::<ChunkRecord>(kv, &ck)?.is_some() {
                return Ok(format!("chunk {n} already uploaded"));
            }
            let c = ChunkRecord {
                n,
                cards,
                state: ChunkState::Pending,
                node: None,
                token: 0,
                lease_until_ms: 0,
                claims: 0,
                prepared: 0,
                output_digest: String::new(),
                done_ms: 0,
            };
            put(kv, &ck, &c)?;
            kv.put(chunk_key(INPUT, &id, n).as_bytes(), sealed);
            j.uploaded += 1;
            put(kv, &format!("{JOB}{id}"), &j)?;
            Ok(format!("chunk {n}: {cards} cards ({}/{})", j.uploaded, j.chunks))
        }
        JobCommand::Start { id } => {
            let mut j = job_or_refuse(kv, &id)?;
            role(ctx, &submitter)?;
            owner(ctx, &j)?;
            if j.state != JobState::Uploading {
                return Err(Fail::Refused(format!("job {id} is {}, not uploading", j.state.as_str())));
            }
            if j.uploaded != j.chunks {
                return Err(Fail::Refused(format!("job {id}: {} of {} chunks uploaded", j.uploaded, j.chunks)));
            }
            j.state = JobState::Running;
            put(kv, &format!("{JOB}{id}"), &j)?;
            Ok(format!("running: {} chunks", j.chunks))
        }
        JobCommand::Abort { id } => {
            let j = job_or_refuse(kv, &id)?;
            role(ctx, &submitter)?;
            owner(ctx, &j)?;
            if j.state != JobState::Uploading {
                return Err(Fail::Refused(format!(
                    "job {id} is {}: only an upload can be aborted (cancel it)",
                    j.state.as_str()
                )));
            }
            drop_upload(kv, &j)?;
            Ok("upload aborted; nothing of the job remains".into())
        }
        JobCommand::Claim { id, n, node, lease_ms } => {
            node_actor(ctx, node)?;
            let j = job_or_refuse(kv, &id)?;
            if j.state != JobState::Running {
                return Err(Fail::Refused(format!("job {id} is {}", j.state.as_str())));
            }
            let ck = chunk_key(CHUNK, &id, n);
            let Some(mut c) = get::<ChunkRecord>(kv, &ck)? else { return Err(Fail::Refused(format!("no chunk {n}"))) };
            match c.state {
                ChunkState::Done => return Err(Fail::Refused(format!("chunk {n} is done"))),
                ChunkState::Claimed if c.lease_until_ms > ctx.time_ms => {
                    return Err(Fail::Refused(format!(
                        "chunk {n} is claimed by node {} for {} ms more",
                        c.node.unwrap_or_default(),
                        c.lease_until_ms - ctx.time_ms
                    )));
                }
                _ => {}
            }
            let previous = c.node.filter(|_| c.state == ChunkState::Claimed);
            c.state = ChunkState::Claimed;
            c.node = Some(node);
            c.token = ctx.log_index;
            c.lease_until_ms = ctx.time_ms + lease_ms;
            c.claims += 1;
            put(kv, &ck, &c)?;
            Ok(match previous {
                Some(p) => format!("node {node} token {} (node {p}'s lease expired)", c.token),
                None => format!("node {node} token {}", c.token),
            })
        }
        JobCommand::Renew { id, n, node, token, lease_ms } => {
            node_actor(ctx, node)?;
            let ck = chunk_key(CHUNK, &id, n);
            let Some(mut c) = get::<ChunkRecord>(kv, &ck)? else {
                return Err(Fail::Refused(format!("no chunk {n} in job {id}")));
            };
            if c.state != ChunkState::Claimed || c.token != token || c.node != Some(node) {
                return Err(Fail::Refused(format!("stale claim: chunk {n} token {} is not {token}", c.token)));
            }
            c.lease_until_ms = ctx.time_ms + lease_ms;
            put(kv, &ck, &c)?;
            Ok(format!("lease renewed, token {token}"))
        }
        JobCommand::Complete { id, n, node, token, prepared, failures, sealed } => {
            node_actor(ctx, node)?;
            let mut j = job_or_refuse(kv, &id)?;
            let ck = chunk_key(CHUNK, &id, n);
            let Some(mut c) = get::<ChunkRecord>(kv, &ck)? else { return Err(Fail::Refused(format!("no chunk {n}"))) };
            // Fencing: only the current claim's holder and token.
            if c.state != ChunkState::Claimed || c.token != token || c.node != Some(node) {
                return Err(Fail::Refused(format!(
                    "fenced: chunk {n} is {:?} with token {} (node {:?}); this result has token {token} from node {node}",
                    c.state, c.token, c.node
                )));
            }
            if j.state != JobState::Running {
                return Err(Fail::Refused(format!("job {id} is {}", j.state.as_str())));
            }
            if u64::from(prepared) + failures.len() as u64 != u64::from(c.cards) {
                return Err(Fail::Refused(format!(
                    "chunk {n} has {} cards; the result accounts for {} prepared and {} failed",
                    c.cards,
                    prepared,
                    failures.len()
                )));
            }
            use sha2::Digest as _;
            c.output_digest = hex::encode_upper(sha2::Sha256::digest(&sealed));
            c.state = ChunkState::Done;
            c.prepared = prepared;
            c.done_ms = ctx.time_ms;
            kv.put(chunk_key(OUTPUT, &id, n).as_bytes(), sealed);
            put(kv, &ck, &c)?;
            j.chunks_done += 1;
            j.cards_done += u64::from(prepared);
            j.failures.extend(failures);
            if j.chunks_done == j.chunks {
                j.state = JobState::Done;
                j.done_ms = ctx.time_ms;
            }
            put(kv, &format!("{JOB}{id}"), &j)?;
            Ok(format!("node {node} token {token}: {prepared} cards ({}/{} chunks)", j.chunks_done, j.chunks))
        }
        JobCommand::Ack { id, delivered } => {
            role(ctx, &submitter)?;
            let mut j = job_or_refuse(kv, &id)?;
            owner(ctx, &j)?;
            if j.state != JobState::Done {
                return Err(Fail::Refused(format!(
                    "job {id} is {}; only a done job can be acknowledged",
                    j.state.as_str()
                )));
            }
            purge(kv, &id)?;
            shred(&mut j);
            j.state = JobState::Acked;
            j.closed_by = Some(ctx.actor.clone());
            j.closed_ms = ctx.time_ms;
            j.delivered = delivered;
            put(kv, &format!("{JOB}{id}"), &j)?;
            Ok(format!("delivered {} cards; input and output purged", j.cards_done))
        }
        JobCommand::Cancel { id } => {
            role(ctx, &submitter)?;
            let mut j = job_or_refuse(kv, &id)?;
            owner(ctx, &j)?;
            if matches!(j.state, JobState::Acked | JobState::Cancelled | JobState::Expired) {
                return Err(Fail::Refused(format!("job {id} is already {}", j.state.as_str())));
            }
            purge(kv, &id)?;
            shred(&mut j);
            j.state = JobState::Cancelled;
            j.closed_by = Some(ctx.actor.clone());
            j.closed_ms = ctx.time_ms;
            put(kv, &format!("{JOB}{id}"), &j)?;
            Ok("cancelled; input and output purged".into())
        }
        JobCommand::Expire { id } => {
            let mut j = job_or_refuse(kv, &id)?;
            role(ctx, &[Role::Node])?;
            if !matches!(j.state, JobState::Uploading | JobState::Running | JobState::Done) {
                return Err(Fail::Refused(format!("job {id} is {}", j.state.as_str())));
            }
            let abandoned = j.state == JobState::Uploading && upload_abandoned(&j, ctx.time_ms);
            if !abandoned && (j.retention_ms == 0 || ctx.time_ms < j.created_ms.saturating_add(j.retention_ms)) {
                return Err(Fail::Refused(format!("job {id} is within its retention")));
            }
            purge(kv, &id)?;
            shred(&mut j);
            j.state = JobState::Expired;
            j.closed_by = Some(ctx.actor.clone());
            j.closed_ms = ctx.time_ms;
            put(kv, &format!("{JOB}{id}"), &j)?;
            if abandoned {
                return Ok(format!(
                    "upload abandoned: not finished {} min after it began; its input purged",
                    UPLOAD_ABANDONED_MS / 60_000
                ));
            }
            Ok(format!("retention of {} s ran out unacknowledged; input and output purged", j.retention_ms / 1000))
        }
        JobCommand::DataKeysMoved { smk, keys } => {
            role(ctx, &[Role::Node])?;
            let Some(info) = get::<SmkInfo>(kv, keys_key::SMK)? else { return Err(Fail::Refused("no SMK yet".into())) };
            if info.next.as_ref().map(|n| &n.kcv) != Some(&smk) {
                return Err(Fail::Refused(format!("SMK {smk} is not the next SMK formed on every node")));
            }
            let mut moved = Vec::with_capacity(keys.len());
            for (id, w) in keys {
                let mut j = job_or_refuse(kv, &id)?;
                let was = &j.data_key;
                if was.blob.is_empty() || was.smk_kcv != info.kcv {
                    return Err(Fail::Refused(format!(
                        "job {id}'s data key is not under the current SMK {}",
                        info.kcv
                    )));
                }
                if w.smk_kcv != smk || w.alg != was.alg || w.kcv != was.kcv || w.blob.is_empty() {
                    return Err(Fail::Refused(format!(
                        "job {id}: the key offered is not its data key (KCV {}) under SMK {smk}",
                        was.kcv
                    )));
                }
                if moved.iter().any(|m: &JobRecord| m.id == id) {
                    return Err(Fail::Refused(format!("job {id} is offered twice")));
                }
                j.data_key = w;
                moved.push(j);
            }
            let n = moved.len();
            for j in moved {
                put(kv, &format!("{JOB}{}", j.id), &j)?;
            }
            Ok(format!("{n} data keys re-protected under the next SMK {smk}"))
        }
    }
}

/// Open jobs' data keys under SMK `smk` (an SMK rotation moves them before the switch).
pub fn data_keys_under(kv: &dyn Kv, smk: &Kcv) -> Result<Vec<(String, WrappedKey)>, StoreError> {
    Ok(jobs(kv)?
        .into_iter()
        .filter(|j| !j.data_key.blob.is_empty() && j.data_key.smk_kcv == *smk)
        .map(|j| (j.id, j.data_key))
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::model::Kcv;
    use crate::store::MemKv;

    fn op() -> Actor {
        Actor { name: "otto".into(), role: Role::Operator }
    }

    fn run(kv: &mut MemKv, actor: &Actor, index: u64, time: u64, cmd: JobCommand) -> JobApplied {
        apply(kv, &Ctx { log_index: index, time_ms: time, actor, cert: None }, cmd).unwrap()
    }

    fn ok(a: JobApplied) -> String {
        match a {
            JobApplied::Done { detail, .. } => detail,
            JobApplied::Rejected { reason, .. } => panic!("refused: {reason}"),
        }
    }

    fn refused(a: JobApplied) -> String {
        match a {
            JobApplied::Rejected { reason, .. } => reason,
            JobApplied::Done { detail, .. } => panic!("accepted: {detail}"),
        }
    }

    fn key() -> WrappedKey {
        WrappedKey {
            alg: quill_hsm::KeyAlg::Aes256,
            blob: vec![1; 40],
            kcv: Kcv("K".into()),
            smk_kcv: Kcv("SMK".into()),
        }
    }

    /// A running job `J` of 3 chunks (2 + 2 + 1 cards).
    /// A state with the SMK's facts only.
    fn with_smk() -> MemKv {
        let mut kv = MemKv::default();
        let smk =
            SmkInfo { kcv: Kcv("SMK".into()), ceremony: "smk-1".into(), formed_ms: 0, next: None, retired: Vec::new() };
        crate::store::put_typed(&mut kv, keys_key::SMK.as_bytes(), &smk).unwrap();
        kv
    }

    /// An upload of 3 records in 2 chunks, of the file whose digest is `digest` repeated.
    fn upload(id: &str, digest: char) -> JobCommand {
        JobCommand::Create {
            id: id.into(),
            product: "p".into(),
            profile: String::new(),
            file: "f".into(),
            digest: digest.to_string().repeat(64),
            records: 3,
            skipped: vec![],
            chunk_size: 2,
            chunks: 2,
            data_key: key(),
            mac_key: "MAC".into(),
            force: false,
            reason: None,
            retention_ms: 0,
            tenant: "default".into(),
        }
    }

    fn running() -> MemKv {
        let mut kv = with_smk();
        let create = |force| JobCommand::Create {
            id: "J".into(),
            product: "p v1".into(),
            profile: String::new(),
            file: "f.csv".into(),
            digest: "ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789".into(),
            records: 5,
            skipped: vec![],
            chunk_size: 2,
            chunks: 3,
            data_key: key(),
            mac_key: "MAC".into(),
            force,
            reason: None,
            retention_ms: 60_000,
            tenant: "default".into(),
        };
        ok(run(&mut kv, &op(), 1, 0, create(false)));
        for (n, cards) in [(0, 2), (1, 2), (2, 1)] {
            ok(run(&mut kv, &op(), 2, 0, JobCommand::Input { id: "J".into(), n, cards, sealed: vec![n as u8] }));
        }
        ok(run(&mut kv, &op(), 3, 0, JobCommand::Start { id: "J".into() }));
        kv
    }

    fn node(n: u64) -> Actor {
        Actor::node(n)
    }

    fn claim(n: u32, node_id: u64) -> JobCommand {
        JobCommand::Claim { id: "J".into(), n, node: node_id, lease_ms: 1000 }
    }

    fn complete(n: u32, node_id: u64, token: u64, cards: u32) -> JobCommand {
        JobCommand::Complete {
            id: "J".into(),
            n,
            node: node_id,
            token,
            prepared: cards,
            failures: vec![],
            sealed: vec![9, node_id as u8],
        }
    }

    /// An SMK rotation moves a job's data key only to the next SMK formed on every node, as
    /// the same key, by a node; anything else changes nothing.
    #[test]
    fn data_keys_move_only_to_the_next_smk_as_the_same_key() {
        let mut kv = running();
        let node = Actor::node(1);
        let moved = |kcv: &str, smk: &str| WrappedKey {
            kcv: Kcv(kcv.into()),
            smk_kcv: Kcv(smk.into()),
            blob: vec![2; 40],
            ..key()
        };
        let cmd = |keys: Vec<(String, WrappedKey)>| JobCommand::DataKeysMoved { smk: Kcv("NEXT".into()), keys };
        let r = refused(run(&mut kv, &node, 20, 20, cmd(vec![("J".into(), moved("K", "NEXT"))])));
        assert!(r.contains("not the next SMK"), "{r}");
        let mut smk: SmkInfo = get(&kv, keys_key::SMK).unwrap().unwrap();
        smk.next = Some(crate::keys::model::NextSmk { kcv: Kcv("NEXT".into()), ceremony: "smk-2".into() });
        crate::store::put_typed(&mut kv, keys_key::SMK.as_bytes(), &smk).unwrap();
        assert_eq!(data_keys_under(&kv, &Kcv("SMK".into())).unwrap().len(), 1);
        let r = refused(run(&mut kv, &op(), 21, 21, cmd(vec![("J".into(), moved("K", "NEXT"))])));
        assert!(r.contains("needs role node"), "{r}");
        let r = refused(run(&mut kv, &node, 22, 22, cmd(vec![("J".into(), moved("OTHER", "NEXT"))])));
        assert!(r.contains("not its data key"), "another key in the job's place: {r}");
        let r = refused(run(&mut kv, &node, 23, 23, cmd(vec![("J".into(), moved("K", "SMK"))])));
        assert!(r.contains("not its data key"), "{r}");
        let r = refused(run(&mut kv, &node, 24, 24, cmd(vec![("NOPE".into(), moved("K", "NEXT"))])));
        assert!(r.contains("no job NOPE"), "{r}");
        ok(run(&mut kv, &node, 25, 25, cmd(vec![("J".into(), moved("K", "NEXT"))])));
        assert!(data_keys_under(&kv, &Kcv("SMK".into())).unwrap().is_empty());
        assert_eq!(job(&kv, "J").unwrap().unwrap().data_key.smk_kcv, Kcv("NEXT".into()));
        let r = refused(run(&mut kv, &node, 26, 26, cmd(vec![("J".into(), moved("K", "NEXT"))])));
        assert!(r.contains("not under the current SMK"), "moved twice: {r}");
    }
    #[test]
    fn a_late_result_is_fenced_by_the_token_of_the_current_claim() {
        let mut kv = running();
        // Node 2 claims chunk 0 at index 10; node 3 cannot while the lease runs.
        ok(run(&mut kv, &node(2), 10, 1_000, claim(0, 2)));
        assert!(refused(run(&mut kv, &node(3), 11, 1_500, claim(0, 3))).contains("claimed by node 2"));
        // The lease ends; node 3 takes over with token 12 and finishes.
        ok(run(&mut kv, &node(3), 12, 2_500, claim(0, 3)));
        // Node 2 comes back: its renewal and its result are refused.
        let r = refused(run(
            &mut kv,
            &node(2),
            13,
            2_600,
            JobCommand::Renew { id: "J".into(), n: 0, node: 2, token: 10, lease_ms: 1000 },
        ));
        assert!(r.contains("stale claim"), "{r}");
        ok(run(&mut kv, &node(3), 14, 2_700, complete(0, 3, 12, 2)));
        let r = refused(run(&mut kv, &node(2), 15, 2_800, complete(0, 2, 10, 2)));
        assert!(r.contains("fenced"), "{r}");
        // The output is node 3's, and the chunk is done once.
        assert_eq!(sealed(&kv, OUTPUT, "J", 0).unwrap(), Some(vec![9, 3]));
        let cs = super::chunks(&kv, "J").unwrap();
        assert_eq!((cs[0].state.clone(), cs[0].node, cs[0].claims), (ChunkState::Done, Some(3), 2));
        assert_eq!(job(&kv, "J").unwrap().unwrap().cards_done, 2);
        // A node cannot act for another, and a done chunk cannot be claimed.
        assert!(refused(run(&mut kv, &node(2), 16, 9_000, claim(1, 3))).contains("cannot act for node 3"));
        assert!(refused(run(&mut kv, &node(2), 17, 9_000, claim(0, 2))).contains("done"));
    }

    #[test]
    fn results_must_account_for_every_card_and_the_job_completes_once() {
        let mut kv = running();
        for (i, (n, cards)) in [(0u32, 2u32), (1, 2), (2, 1)].into_iter().enumerate() {
            let idx = 20 + i as u64 * 2;
            ok(run(&mut kv, &node(1), idx, 0, claim(n, 1)));
            assert!(
                refused(run(&mut kv, &node(1), idx + 100, 0, complete(n, 1, idx, cards + 1))).contains("accounts for")
            );
            ok(run(&mut kv, &node(1), idx + 1, 0, complete(n, 1, idx, cards)));
        }
        let j = job(&kv, "J").unwrap().unwrap();
        assert_eq!((j.state, j.cards_done, j.chunks_done), (JobState::Done, 5, 3));
    }

    #[test]
    fn ack_and_cancel_purge_input_and_output_and_keep_the_record() {
        let mut kv = running();
        for (n, cards) in [(0u32, 2u32), (1, 2), (2, 1)] {
            ok(run(&mut kv, &node(1), 30 + u64::from(n), 0, claim(n, 1)));
            ok(run(&mut kv, &node(1), 40, 0, complete(n, 1, 30 + u64::from(n), cards)));
        }
        assert!(
            refused(run(&mut kv, &node(1), 50, 0, JobCommand::Ack { id: "J".into(), delivered: vec![] }))
                .contains("needs role")
        );
        ok(run(
            &mut kv,
            &op(),
            51,
            0,
            JobCommand::Ack { id: "J".into(), delivered: vec![("cards.jsonl".into(), "AA".into())] },
        ));
        for n in 0..3 {
            assert_eq!(sealed(&kv, INPUT, "J", n).unwrap(), None);
            assert_eq!(sealed(&kv, OUTPUT, "J", n).unwrap(), None);
        }
        let j = job(&kv, "J").unwrap().unwrap();
        assert_eq!(j.state, JobState::Acked);
        assert_eq!(j.closed_by, Some(op()));
        assert!(j.data_key.blob.is_empty(), "the wrapped data key is gone from the record");
        assert_eq!(j.data_key.kcv, key().kcv, "its KCV stays for the audit trail");
        // The same file needs --force before the ack, and after it too (it was delivered: new
        // PINs for the same PANs), with the reason.
        let mut kv2 = running();
        let again = JobCommand::Create {
            id: "J2".into(),
            product: "p v1".into(),
            profile: String::new(),
            file: "f.csv".into(),
            digest: "ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789".into(),
            records: 1,
            skipped: vec![],
            chunk_size: 1,
            chunks: 1,
            data_key: key(),
            mac_key: "MAC".into(),
            force: false,
            reason: None,
            retention_ms: 0,
            tenant: "default".into(),
        };
        assert!(refused(run(&mut kv2, &op(), 60, 0, again.clone())).contains("--force"));
        let after_ack = refused(run(&mut kv, &op(), 61, 0, again.clone()));
        assert!(after_ack.contains("acknowledged") && after_ack.contains("--force"), "{after_ack}");
        let mut forced = again.clone();
        if let JobCommand::Create { id, force, .. } = &mut forced {
            (*id, *force) = ("J3".into(), true);
        }
        // --force without a reason, or with one sealed under another key, is refused.
        assert!(refused(run(&mut kv, &op(), 62, 0, forced.clone())).contains("--force needs --reason"));
        let enc = WrappedKey { kcv: Kcv("AUDITENC".into()), ..key() };
        let keys = crate::keys::model::AuditKeys { mac: key(), enc, node: 1 };
        let note = |kcv: &str| crate::audit::AuditNote { key_kcv: Kcv(kcv.into()), sealed: vec![9; 40] };
        if let JobCommand::Create { reason, .. } = &mut forced {
            *reason = Some(Box::new(note("OTHER")));
        }
        assert!(refused(run(&mut kv, &op(), 62, 0, forced.clone())).contains("audit encryption key"));
        crate::store::put_typed(&mut kv, keys_key::AUDIT_KEYS.as_bytes(), &keys).unwrap();
        assert!(refused(run(&mut kv, &op(), 62, 0, forced.clone())).contains("audit encryption key"));
        if let JobCommand::Create { reason, .. } = &mut forced {
            *reason = Some(Box::new(note("AUDITENC")));
        }
        assert!(ok(run(&mut kv, &op(), 62, 0, forced)).contains("forced"));
        // Cancel purges a running job.
        ok(run(&mut kv2, &op(), 62, 0, JobCommand::Cancel { id: "J".into() }));
        assert_eq!(sealed(&kv2, INPUT, "J", 0).unwrap(), None);
        let j = job(&kv2, "J").unwrap().unwrap();
        assert_eq!((j.state, j.data_key.blob.is_empty()), (JobState::Cancelled, true));
    }

    #[test]
    fn unacknowledged_data_expires_only_after_the_retention() {
        let mut kv = running(); // retention 60 s, created at 0
        let e = || JobCommand::Expire { id: "J".into() };
        assert!(refused(run(&mut kv, &node(1), 70, 59_999, e())).contains("within its retention"));
        assert!(refused(run(&mut kv, &op(), 71, 60_000, e())).contains("needs role node"));
        assert_eq!(sealed(&kv, INPUT, "J", 0).unwrap(), Some(vec![0]));
        ok(run(&mut kv, &node(1), 72, 60_000, e()));
        assert_eq!(sealed(&kv, INPUT, "J", 0).unwrap(), None);
        assert_eq!(job(&kv, "J").unwrap().unwrap().state, JobState::Expired);
        assert!(refused(run(&mut kv, &node(1), 73, 90_000, claim(0, 1))).contains("expired"));
    }

    #[test]
    fn an_aborted_upload_leaves_nothing() {
        let mut kv = with_smk();
        let before = kv.scan_prefix(b"jobs/").unwrap().len();
        ok(run(&mut kv, &op(), 1, 0, upload("J", 'D')));
        ok(run(&mut kv, &op(), 2, 0, JobCommand::Input { id: "J".into(), n: 0, cards: 2, sealed: vec![1] }));
        assert!(refused(run(&mut kv, &op(), 3, 0, JobCommand::Start { id: "J".into() })).contains("1 of 2"));
        ok(run(&mut kv, &op(), 4, 0, JobCommand::Abort { id: "J".into() }));
        assert_eq!(kv.scan_prefix(b"jobs/").unwrap().len(), before);
    }

    #[test]
    fn an_unfinished_upload_is_replaced_by_its_submitter_and_expires_when_abandoned() {
        let mut kv = with_smk();
        let create = |id: &str| upload(id, 'E');
        // Its node died after the first chunk: the upload is left half done.
        ok(run(&mut kv, &op(), 1, 0, create("J1")));
        ok(run(&mut kv, &op(), 2, 0, JobCommand::Input { id: "J1".into(), n: 0, cards: 2, sealed: vec![1] }));
        // Another operator sending the same file is told about it, not let in.
        let other = Actor { role: Role::Operator, name: "olga".into() };
        assert_eq!(
            same_file_refusal(&kv, "default", &"E".repeat(64), &other).unwrap().map(|r| r.contains("J1")),
            Some(true)
        );
        let r = refused(run(&mut kv, &other, 3, 0, create("J9")));
        assert!(r.contains("already job J1"), "{r}");
        // The same operator sending it again replaces it: nothing of J1 remains.
        assert_eq!(same_file_refusal(&kv, "default", &"E".repeat(64), &op()).unwrap(), None);
        let d = ok(run(&mut kv, &op(), 4, 0, create("J2")));
        assert!(d.contains("replaces job J1"), "{d}");
        assert!(job(&kv, "J1").unwrap().is_none());
        assert_eq!(sealed(&kv, INPUT, "J1", 0).unwrap(), None);
        assert!(kv.scan_prefix(format!("{CHUNK}J1/").as_bytes()).unwrap().is_empty());
        // J2 is the file's job now; once uploading and running, the same file is refused again.
        ok(run(&mut kv, &op(), 5, 0, JobCommand::Input { id: "J2".into(), n: 0, cards: 2, sealed: vec![1] }));
        // Left unfinished, it expires after UPLOAD_ABANDONED_MS (by the leader's time), by a node.
        let e = || JobCommand::Expire { id: "J2".into() };
        assert!(refused(run(&mut kv, &node(1), 6, UPLOAD_ABANDONED_MS - 1, e())).contains("within its retention"));
        let d = ok(run(&mut kv, &node(1), 7, UPLOAD_ABANDONED_MS, e()));
        assert!(d.contains("upload abandoned"), "{d}");
        assert_eq!(sealed(&kv, INPUT, "J2", 0).unwrap(), None);
        assert_eq!(job(&kv, "J2").unwrap().unwrap().state, JobState::Expired);
        assert_eq!(same_file_refusal(&kv, "default", &"E".repeat(64), &other).unwrap(), None);
    }
}

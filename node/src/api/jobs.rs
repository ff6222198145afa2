//! The `quill.v1.Jobs` service: submit a batch (validated against its profile, chunked, sealed
//! under a fresh data key made in this node's HSM, proposed chunk by chunk; an upload that fails
//! half-way is aborted so nothing of it remains), fetch an output stream (opened chunk by chunk
//! with the job's data key, framed as docs/output-format.md says and MACed in this node's HSM),
//! and the MAC a client checks a fetched file with (ideally on another node).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use quill_hsm::Hsm;
use quill_prep::engine::KeyRef;
use quill_prep::engine::output::{FORMAT, Header, OutputError, Stream, VERSION};
use quill_proto::v1::jobs_server::{self, JobsServer};
use quill_proto::v1::{
    AckRequest, CancelRequest, FetchPart, FetchRequest, GetJobRequest, GetJobResponse, ListChunksRequest,
    ListChunksResponse, ListJobsRequest, ListJobsResponse, MacRequest, MacResponse, SubmitPart, SubmitResponse,
    WriteResult,
};
use tonic::{Request, Response, Status, Streaming};

use super::{ApiError, ClusterService, views};
use crate::identity::Principal;
use crate::jobs::intake::{self, IntakeError, output_aad};
use crate::jobs::{self, JobCommand, JobRecord, JobState, OUTPUT, chunk_key};
use crate::keys::apply::key;
use crate::keys::model::{AuditKeys, KeyRecord, Role};
use crate::raft::{Command, Outcome, StateMachine};
use crate::runtime::agent::KeyAgent;
use crate::runtime::worker::ChunkOutput;

type ApiResult<T> = Result<T, ApiError>;

pub use crate::jobs::intake::{DEFAULT_CHUNK, MAX_INPUT_BYTES};

/// An intake failure as an API error: the submission's fault, or the HSM's (with its class).
fn intake_error(e: IntakeError) -> ApiError {
    match e {
        IntakeError::Invalid(reason) => ApiError::BadRequest(reason),
        IntakeError::Hsm(e) => ApiError::Hsm(e),
        e @ (IntakeError::Encode { .. } | IntakeError::Decode { .. }) => ApiError::Internal(e.to_string()),
    }
}

/// An output stream that could not be assembled: the HSM's failure keeps its class (a device
/// error is `unavailable`); anything else is the stored output's state.
fn output_error(e: OutputError) -> ApiError {
    match e {
        OutputError::Hsm { source, .. } => ApiError::Hsm(source),
        other => ApiError::Precondition(format!("assembling the output: {other}")),
    }
}

/// The `quill.v1.Jobs` service of one node.
#[derive(Clone)]
pub struct JobsService {
    cluster: ClusterService,
    sm: StateMachine,
    agent: Option<Arc<KeyAgent>>,
    /// Uploads in progress, by caller.
    uploads: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// How many uploads one caller may have open.
    uploads_per_caller: usize,
}

/// One upload slot of a caller, given back when dropped.
struct UploadSlot {
    uploads: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    who: String,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut u = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = u.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                u.remove(&self.who);
            }
        }
    }
}

/// The sealed inputs of every job still open (uploading, running, done and not acknowledged).
/// Jobs of other submitters are not named to the caller (no probing of who has which card).
fn open_inputs(
    kv: &dyn crate::store::Kv,
    caller: &crate::identity::Actor,
    tenant: &str,
    digest: &str,
) -> Result<Vec<intake::OpenInput>, crate::store::StoreError> {
    let mut out = Vec::new();
    for j in jobs::jobs(kv)? {
        // The caller's unfinished upload of this same file is replaced by this one, not compared.
        if j.state == JobState::Uploading && j.created_by == *caller && j.digest == digest {
            continue;
        }
        // Cards belong to an issuer: a tenant's jobs are compared with its own only.
        if j.tenant != tenant || !matches!(j.state, JobState::Uploading | JobState::Running | JobState::Done) {
            continue;
        }
        for n in 0..j.chunks {
            if let Some(sealed) = jobs::sealed(kv, jobs::INPUT, &j.id, n)? {
                let job =
                    if j.created_by == *caller { format!("job {}", j.id) } else { "another submitter's job".into() };
                // A record whose data key is another tenant's was altered: nothing of it opens.
                let Ok(data_key) = j.data_key().cloned() else { continue };
                out.push(intake::OpenInput { id: j.id.clone(), job, data_key, n, sealed });
            }
        }
    }
    Ok(out)
}

impl JobsService {
    /// Serve jobs over `cluster`, reading `sm`, with this node's HSM (through its agent).
    /// Each caller may have `uploads_per_caller` uploads open at once.
    pub fn new(
        cluster: ClusterService,
        sm: StateMachine,
        agent: Option<Arc<KeyAgent>>,
        uploads_per_caller: usize,
    ) -> Self {
        Self { cluster, sm, agent, uploads: Default::default(), uploads_per_caller }
    }

    /// The tonic server; one request message (one upload part) is at most `max_request_bytes`.
    pub fn into_server(self, max_request_bytes: usize) -> JobsServer<Self> {
        JobsServer::new(self).max_decoding_message_size(max_request_bytes).max_encoding_message_size(64 << 20)
    }

    /// An upload slot for `who`, or a refusal when it has as many open as allowed.
    fn upload_slot(&self, who: &Principal) -> ApiResult<UploadSlot> {
        let key = who.actor.to_string();
        let mut u = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let n = u.entry(key.clone()).or_insert(0);
        if *n >= self.uploads_per_caller {
            return Err(ApiError::ResourceExhausted(format!(
                "{} already has {n} uploads open (at most {} at once); wait for one to finish",
                who.actor, self.uploads_per_caller
            )));
        }
        *n += 1;
        Ok(UploadSlot { uploads: self.uploads.clone(), who: key })
    }

    fn hsm(&self) -> ApiResult<Arc<dyn Hsm>> {
        self.agent
            .as_ref()
            .map(|a| a.hsm().clone())
            .ok_or_else(|| ApiError::Precondition("this node has no HSM configured".into()))
    }

    async fn state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn crate::store::Kv) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> ApiResult<T> {
        self.sm.read(f).await.map_err(|e| ApiError::Internal(e.to_string()))
    }

    async fn propose(&self, client: &str, serial: &mut u64, who: &Principal, cmd: JobCommand) -> ApiResult<String> {
        *serial += 1;
        let resp = self.cluster.submit_as(client, *serial, who, Command::Jobs(cmd)).await?;
        match resp.outcome {
            Outcome::Done { detail, .. } => Ok(detail),
            Outcome::Rejected { reason } => Err(ApiError::Precondition(reason)),
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn submit(&self, who: Principal, mut parts: Streaming<SubmitPart>) -> ApiResult<SubmitResponse> {
        let _slot = self.upload_slot(&who)?;
        let broke = |s: Status| ApiError::BadRequest(format!("the upload broke off: {}", s.message()));
        let first =
            parts.message().await.map_err(broke)?.ok_or_else(|| ApiError::BadRequest("empty submission".into()))?;
        let caller = super::client_caller(first.caller.clone())?;
        self.cluster.require(&who, &[Role::Operator, Role::Admin], "Jobs.Submit").await?;
        let tenant = self.cluster.tenant(&who, &first.tenant, "Jobs.Submit").await?;
        let mut data = first.data.clone();
        while let Some(p) = parts.message().await.map_err(broke)? {
            data.extend_from_slice(&p.data);
            if data.len() > MAX_INPUT_BYTES {
                return Err(ApiError::BadRequest(format!("input larger than {MAX_INPUT_BYTES} bytes")));
            }
        }
        let file = first.file_name.clone();
        // `force` takes what would be refused (the same file again, cards another job holds):
        // only with the operator's reason, which goes sealed into the audit chain.
        let reason = match first.force {
            false => None,
            true => {
                let text = first.reason.trim().to_string();
                if text.is_empty() {
                    return Err(ApiError::BadRequest(
                        "--force needs --reason: why the issuer asked for it (kept, encrypted, in the audit chain)"
                            .into(),
                    ));
                }
                crate::domain::text("reason", &text, 500).map_err(ApiError::BadRequest)?;
                Some(zeroize::Zeroizing::new(text))
            }
        };
        let mut checked = intake::check(&intake::Submission {
            file: &file,
            data: &data,
            total_bytes: first.total_bytes,
            digest: &first.digest,
            profile_name: &first.profile_name,
            profile_toml: &first.profile_toml,
            chunk_size: first.chunk_size,
        })
        .map_err(intake_error)?;
        drop(data);
        let mac_key = if first.mac_key.is_empty() { "MAC-OUTPUT".to_string() } else { first.mac_key.clone() };
        // The keys the job names, checked against the inventory as the workers' engine will check
        // them (labels, TR-31 usage per step, algorithms, issuer keys; the output MAC key is M7):
        // a job no worker could prepare, or one naming a key outside its use, is refused here,
        // before anything is stored.
        let (label, profile, t) = (mac_key.clone(), checked.profile.clone(), tenant.clone());
        self.state(move |kv| intake::check_keys(kv, &t, &profile, &label)).await?.map_err(ApiError::Precondition)?;

        // The data key, made in this node's HSM, and the sealed chunks.
        let hsm = self.hsm()?;
        // The same card in another open job (profile `duplicates`): their inputs, opened in
        // this node's HSM and compared by fingerprint. `force` (audited with the job) takes them.
        // The same file again says so first (apply checks it too, for writes that race).
        if !first.force {
            let (digest, t, actor) = (checked.digest.clone(), tenant.clone(), who.actor.clone());
            if let Some(refusal) = self.state(move |kv| jobs::same_file_refusal(kv, &t, &digest, &actor)).await? {
                return Err(ApiError::Precondition(refusal));
            }
        }
        if checked.profile.input.duplicates != quill_prep::profile::DuplicatePolicy::Allow && !first.force {
            let (caller, t, digest) = (who.actor.clone(), tenant.clone(), checked.digest.clone());
            let others = self.state(move |kv| open_inputs(kv, &caller, &t, &digest)).await?;
            let h = hsm.clone();
            checked = tokio::task::spawn_blocking(move || intake::drop_repeats(&*h, &others, checked))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(intake_error)?;
        }
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let id = format!("J{ms:x}{:03x}", std::process::id() & 0xfff);
        let reason = match reason {
            None => None,
            Some(text) => {
                let keys = self
                    .state(|kv| crate::store::get_typed::<AuditKeys>(kv, key::AUDIT_KEYS.as_bytes()))
                    .await?
                    .ok_or_else(|| {
                        ApiError::Precondition("no audit encryption key yet to seal the --force reason".into())
                    })?;
                let (h, aad) = (hsm.clone(), crate::audit::note_aad(&format!("job:{id}")));
                let key_kcv = keys.enc.kcv.clone();
                let sealed = tokio::task::spawn_blocking(move || h.seal(&keys.enc, &aad, text.as_bytes()))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .map_err(|e| ApiError::Unavailable(format!("sealing the --force reason: {e}")))?;
                Some(Box::new(crate::audit::AuditNote { key_kcv, sealed }))
            }
        };
        let (id2, t) = (id.clone(), tenant.clone());
        let (checked, (data_key, sealed)) = tokio::task::spawn_blocking(move || {
            let sealed = intake::seal(&*hsm, &id2, &t, &checked);
            sealed.map(|s| (checked, s))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(intake_error)?;
        let (profile, digest, skipped, chunk_size, chunks, transliterated) = (
            checked.profile,
            checked.digest,
            checked.skipped,
            checked.chunk_size,
            checked.chunks,
            checked.transliterated,
        );

        let client = format!("{}-submit-{id}", caller.client_id);
        let mut serial = 0;
        let records_n: u64 = sealed.iter().map(|(_, c, _)| u64::from(*c)).sum();
        let create = JobCommand::Create {
            id: id.clone(),
            product: format!("{} v{}", profile.product.name, profile.product.version),
            profile: first.profile_toml.clone(),
            file: file.clone(),
            digest,
            records: records_n,
            skipped: skipped.clone(),
            chunk_size,
            chunks,
            data_key,
            mac_key,
            force: first.force,
            reason,
            retention_ms: u64::from(first.retention_hours) * 3_600_000,
            tenant,
        };
        self.propose(&client, &mut serial, &who, create).await?;
        let upload = async {
            for (n, cards, s) in sealed {
                self.propose(&client, &mut serial, &who, JobCommand::Input { id: id.clone(), n, cards, sealed: s })
                    .await?;
            }
            self.propose(&client, &mut serial, &who, JobCommand::Start { id: id.clone() }).await
        };
        if let Err(e) = upload.await {
            // Leave nothing behind.
            let _ = self.propose(&client, &mut serial, &who, JobCommand::Abort { id: id.clone() }).await;
            return Err(e);
        }
        Ok(SubmitResponse { job: id, records: records_n, chunks, skipped, transliterated })
    }

    /// Job `id`, if `who` may act for its tenant (to anyone else it does not exist) and
    /// submitted it.
    async fn job(&self, who: &Principal, id: &str) -> ApiResult<JobRecord> {
        let id2 = id.to_string();
        let j = self
            .state(move |kv| jobs::job(kv, &id2))
            .await?
            .filter(|j| who.cert.tenants.covers(&j.tenant))
            .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
        jobs::owned_by(&who.actor, &j).map_err(ApiError::PermissionDenied)?;
        Ok(j)
    }

    /// The output MAC key of job `j` (its tenant's key of that label).
    async fn mac_key(&self, j: &JobRecord) -> ApiResult<KeyRecord> {
        let (t, l) = (j.tenant.clone(), j.mac_key.clone());
        self.state(move |kv| intake::output_mac_key(kv, &t, &l)).await?.map_err(ApiError::Precondition)
    }

    /// One output stream of a done job, framed and MACed.
    async fn fetch(&self, who: &Principal, req: FetchRequest) -> ApiResult<Vec<u8>> {
        let stream = match req.stream.as_str() {
            "cards" => Stream::Cards,
            "pin-mailers" => Stream::PinMailers,
            "carriers" => Stream::Carriers,
            other => {
                return Err(ApiError::BadRequest(format!("unknown stream {other:?} (cards, pin-mailers, carriers)")));
            }
        };
        let j = self.job(who, &req.job).await?;
        if j.state != JobState::Done {
            return Err(ApiError::Precondition(format!("job {} is {}, not done", j.id, j.state.as_str())));
        }
        let mac = self.mac_key(&j).await?;
        let mac_wrapped =
            mac.wrapped.clone().ok_or_else(|| ApiError::Precondition("the MAC key is destroyed".into()))?;
        let id = j.id.clone();
        let n = j.chunks;
        let sealed: Vec<Option<Vec<u8>>> =
            self.state(move |kv| (0..n).map(|i| kv.get(chunk_key(OUTPUT, &id, i).as_bytes())).collect()).await?;
        let hsm = self.hsm()?;
        let (name, version) = j
            .product
            .rsplit_once(" v")
            .map_or((j.product.clone(), 1), |(a, b)| (a.to_string(), b.parse().unwrap_or(1)));
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            stream,
            product: name,
            product_version: version,
            batch: j.id.clone(),
            mac_key: KeyRef::new(&mac.label, &mac.kcv),
            test_keys: mac.label.contains("TEST"),
        };
        j.data_key().map_err(ApiError::Precondition)?;
        let job = j.clone();
        let assembling = |reason: String| ApiError::Precondition(format!("assembling the output: {reason}"));
        tokio::task::spawn_blocking(move || -> ApiResult<Vec<u8>> {
            let mut w = quill_prep::engine::output::StreamWriter::new(Vec::new(), &header).map_err(output_error)?;
            for (i, s) in sealed.into_iter().enumerate() {
                let s = s.ok_or_else(|| assembling(format!("chunk {i}'s output is missing")))?;
                let clear = hsm.open(&job.data_key, &output_aad(&job.id, i as u32), &s)?;
                let out: ChunkOutput = postcard::from_bytes(&clear).map_err(|e| assembling(e.to_string()))?;
                let lines = match stream {
                    Stream::Cards => out.cards,
                    Stream::PinMailers => out.mailers,
                    Stream::Carriers => out.carriers,
                };
                for l in lines {
                    w.push_raw(&l).map_err(output_error)?;
                }
            }
            w.finish(&*hsm, &mac_wrapped).map_err(output_error)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    async fn mac(&self, who: &Principal, req: MacRequest) -> ApiResult<MacResponse> {
        let j = self.job(who, &req.job).await?;
        let mac = self.mac_key(&j).await?;
        let digest: [u8; 32] =
            req.sha256.as_slice().try_into().map_err(|_| ApiError::BadRequest("sha256 must be 32 bytes".into()))?;
        let wrapped = mac.wrapped.ok_or_else(|| ApiError::Precondition("the MAC key is destroyed".into()))?;
        let hsm = self.hsm()?;
        let m = tokio::task::spawn_blocking(move || hsm.hmac_sha256(&wrapped, &digest))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
        // Compared without an early exit: the answer says only yes or no.
        let valid = m.len() == req.mac.len() && m.iter().zip(&req.mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        Ok(MacResponse { valid, key_label: mac.label, key_kcv: mac.kcv.to_string() })
    }
}

#[tonic::async_trait]
impl jobs_server::Jobs for JobsService {
    async fn list_jobs(&self, request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (jobs, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Jobs.ListJobs", req.linearizable, views::read_jobs).await?;
        Ok(Response::new(ListJobsResponse { jobs, applied_index }))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let id = req.id.clone();
        let (job, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Jobs.GetJob", req.linearizable, move |kv, t| {
                views::read_job(kv, t, &id)
            })
            .await?;
        Ok(Response::new(GetJobResponse { job: Some(views::found(job, "job", &req.id)?), applied_index }))
    }

    async fn list_chunks(&self, request: Request<ListChunksRequest>) -> Result<Response<ListChunksResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let id = req.id.clone();
        let (chunks, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Jobs.ListChunks", req.linearizable, move |kv, t| {
                views::read_chunks(kv, t, &id)
            })
            .await?;
        Ok(Response::new(ListChunksResponse { chunks, applied_index }))
    }

    async fn submit(&self, request: Request<Streaming<SubmitPart>>) -> Result<Response<SubmitResponse>, Status> {
        let (who, parts) = super::principal(request)?;
        Ok(Response::new(self.submit(who, parts).await?))
    }

    type FetchStream = tokio_stream::Iter<std::vec::IntoIter<Result<FetchPart, Status>>>;

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        // Output holds cardholder data: operators (and admins) only, and only the job's submitter.
        let (who, req) = super::principal(request)?;
        self.cluster.require(&who, &[Role::Operator, Role::Admin], "Jobs.Fetch").await?;
        let bytes = self.fetch(&who, req).await?;
        let parts: Vec<Result<FetchPart, Status>> =
            bytes.chunks(1 << 20).map(|c| Ok(FetchPart { data: c.to_vec() })).collect();
        Ok(Response::new(tokio_stream::iter(parts)))
    }

    async fn mac(&self, request: Request<MacRequest>) -> Result<Response<MacResponse>, Status> {
        let (who, req) = super::principal(request)?;
        self.cluster.require(&who, &[Role::Operator, Role::Admin], "Jobs.Mac").await?;
        Ok(Response::new(self.mac(&who, req).await?))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        let delivered = r.delivered.into_iter().map(|d| (d.stream, d.sha256)).collect();
        let cmd = Command::Jobs(JobCommand::Ack { id: r.job, delivered });
        Ok(Response::new(self.cluster.write_for(who, r.caller, cmd).await?))
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        let cmd = Command::Jobs(JobCommand::Cancel { id: r.job });
        Ok(Response::new(self.cluster.write_for(who, r.caller, cmd).await?))
    }
}

#[cfg(test)]
mod tests {
    use quill_hsm::HsmError;
    use quill_prep::engine::output::OutputError;
    use tonic::Code;

    use super::{intake_error, output_error};
    use crate::jobs::intake::IntakeError;

    use crate::api::error::tests::at;

    #[test]
    fn an_unavailable_hsm_at_intake_is_unavailable_not_a_precondition() {
        let gone = HsmError::Unavailable { operation: "generate_key", reason: "slot removed".into(), at: at() };
        assert_eq!(intake_error(IntakeError::Hsm(gone)).into_status().code(), Code::Unavailable);
        let none = HsmError::NoHealthySlot { operation: "seal", last: None };
        assert_eq!(intake_error(IntakeError::Hsm(none)).into_status().code(), Code::Unavailable);
        let altered = HsmError::AuthenticationFailed { operation: "open", at: at() };
        assert_eq!(intake_error(IntakeError::Hsm(altered)).into_status().code(), Code::FailedPrecondition);
        let bad = IntakeError::Invalid("batch.csv:3: pan: not a PAN".into());
        assert_eq!(intake_error(bad).into_status().code(), Code::InvalidArgument);
        let bug = IntakeError::Encode { n: 0, reason: "chunk size".into() };
        assert_eq!(intake_error(bug).into_status().code(), Code::Internal);
    }

    #[test]
    fn an_unavailable_hsm_while_assembling_the_output_is_unavailable() {
        let late = HsmError::Timeout { operation: "hmac_sha256", after: std::time::Duration::from_secs(5), at: at() };
        let e = OutputError::Hsm { stream: "cards.jsonl", source: late };
        assert_eq!(output_error(e).into_status().code(), Code::Unavailable);
        let wrong = HsmError::NoSmk { operation: "hmac_sha256", at: at() };
        let e = OutputError::Hsm { stream: "cards.jsonl", source: wrong };
        assert_eq!(output_error(e).into_status().code(), Code::FailedPrecondition);
    }
}

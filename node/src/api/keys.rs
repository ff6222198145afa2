//! The `quill.v1.Keys` service: queries of the key-management state, the operations that need
//! this node's HSM (generate, TR-31 import and export), and the audit chain (tail, verify).
//!
//! An HSM operation runs here, on the node that received the call; its result (a key wrapped
//! under the SMK) is proposed through [`ClusterService::submit`], which forwards to the leader.

use std::sync::Arc;
use std::time::Duration;

use quill_proto::v1::keys_server::{self, KeysServer};
use quill_proto::v1::{
    ApprovalAskRequest, ApprovalDecideRequest, AuditArchiveRequest, AuditArchiveResponse, AuditPruneRequest,
    AuditTailRequest, AuditTailResponse, AuditVerifyRequest, AuditVerifyResponse, CaImportRequest, Caller,
    CeremonyCancelRequest, CeremonyStartRequest, CeremonySubmitRequest, ExportTr31Request, ExportTr31Response,
    GenerateKeyRequest, GetApprovalRequest, GetApprovalResponse, GetAuditKeysRequest, GetAuditKeysResponse,
    GetCeremonyRequest, GetCeremonyResponse, GetIssuerKeyRequest, GetIssuerKeyResponse, GetKeyRequest, GetKeyResponse,
    GetSmkRequest, GetSmkResponse, ImportTr31Request, IssuerCertImportRequest, KeyResponse, KeyStateRequest,
    ListApprovalsRequest, ListApprovalsResponse, ListCaKeysRequest, ListCaKeysResponse, ListCeremoniesRequest,
    ListCeremoniesResponse, ListIssuerCertsRequest, ListIssuerCertsResponse, ListIssuerKeysRequest,
    ListIssuerKeysResponse, ListKeysRequest, ListKeysResponse, ListNodesRequest, ListNodesResponse,
    ListRevokedCertsRequest, ListRevokedCertsResponse, QueryRequest, QueryResponse, RevokeCertRequest, WriteResult,
};
use quill_proto::v1::{
    CaCertifyAskRequest, CaCertifyRequest, CaCertifyResponse, CaKeyCreateRequest, CaKeyCreateResponse,
    CaKeyRevokeRequest, CaRevokeRequest, IssuerRequestRequest, IssuerRequestResponse, KeyDeliveredRequest,
    ListCaRevocationsRequest, ListCaRevocationsResponse, ListOwnCaKeysRequest, ListOwnCaKeysResponse,
    ListPartnersRequest, ListPartnersResponse, ListTargetsRequest, ListTargetsResponse, NamedFile, PartnerSetRequest,
    PartnerShareRequest, TargetSetRequest,
};
use quill_proto::v1::{
    KdhKeyRequest, KdhKeyResponse, TargetConfirmRequest, TargetTransportRequest, TargetTransportResponse,
};
use tonic::{Request, Response, Status};

mod transport;

use super::{ApiError, ClusterService, views};
use crate::audit;
use crate::identity::Principal;
use crate::keys::KeyCommand;
use crate::keys::apply::issuers;
use crate::keys::apply::{key, read};
use crate::keys::model::*;
use crate::raft::{Command, Outcome, StateMachine};
use crate::runtime::agent::KeyAgent;
use quill_hsm::KeyUse;

type ApiResult<T> = Result<T, ApiError>;

/// How long a created key may take to appear in this node's applied state.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// The `quill.v1.Keys` service of one node.
#[derive(Clone)]
pub struct KeysService {
    cluster: ClusterService,
    sm: StateMachine,
    agent: Option<Arc<KeyAgent>>,
}

impl KeysService {
    /// Serve key management over `cluster` (for writes), reading `sm`, with this node's agent
    /// (`None`: the node has no HSM configured, so HSM operations are refused).
    pub fn new(cluster: ClusterService, sm: StateMachine, agent: Option<Arc<KeyAgent>>) -> Self {
        Self { cluster, sm, agent }
    }

    /// The tonic server of this service.
    pub fn into_server(self, max_request_bytes: usize) -> KeysServer<Self> {
        KeysServer::new(self).max_decoding_message_size(max_request_bytes).max_encoding_message_size(64 << 20)
    }

    pub(super) fn agent(&self) -> ApiResult<&Arc<KeyAgent>> {
        self.agent
            .as_ref()
            .ok_or_else(|| ApiError::Precondition("this node has no HSM configured ([[hsm]] in its config)".into()))
    }

    /// Read this node's applied state.
    pub(super) async fn state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn crate::store::Kv) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> ApiResult<T> {
        self.sm.read(f).await.map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// The superseded `Keys.Query`: the JSON of the views the typed queries answer.
    async fn query(&self, who: &Principal, req: QueryRequest) -> ApiResult<QueryResponse> {
        if req.linearizable {
            self.cluster.linearize().await?;
        }
        let (what, id) = (req.what.clone(), req.id.clone());
        let tenants = who.cert.tenants.clone();
        let json = self.state(move |kv| views::query_json(kv, &tenants, &what, &id)).await?;
        let Some(json) = json else {
            return Err(ApiError::BadRequest(format!("unknown query {:?} ({})", req.what, views::QUERIES)));
        };
        if json.is_null() && matches!(req.what.as_str(), "ceremony" | "key" | "approval" | "issuer" | "job") {
            return Err(ApiError::NotFound(format!("no {} {:?}", req.what, req.id)));
        }
        let applied_index = self.cluster.applied_index();
        Ok(QueryResponse { json: json.to_string(), applied_index })
    }

    /// Propose a key command as `caller`, wait until this node applied it, and return the
    /// created key's record.
    async fn create(&self, caller: Caller, who: &Principal, cmd: KeyCommand) -> ApiResult<KeyResponse> {
        let resp = self.cluster.submit_as(&caller.client_id, caller.serial, who, Command::Keys(cmd)).await?;
        let object = match resp.outcome {
            Outcome::Done { object, .. } => object,
            Outcome::Rejected { reason } => return Err(ApiError::Precondition(reason)),
            other => return Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        };
        self.cluster.wait_applied(resp.log_index, APPLY_WAIT).await?;
        let id = object.trim_start_matches("key:").to_string();
        let tenants = who.cert.tenants.clone();
        let view = self
            .state(move |kv| views::read_key(kv, &tenants, &id))
            .await?
            .ok_or_else(|| ApiError::Internal(format!("{object} is not in the state after it was created")))?;
        let json = serde_json::to_string(&view).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(KeyResponse { json, log_index: resp.log_index, key: Some(view), issuer_key: None })
    }

    /// Run `f` on this node's HSM off the async threads.
    pub(super) async fn hsm<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn quill_hsm::Hsm) -> Result<T, quill_hsm::HsmError> + Send + 'static,
    ) -> ApiResult<T> {
        let agent = self.agent()?.clone();
        tokio::task::spawn_blocking(move || f(&**agent.hsm()))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(hsm_error)
    }

    pub(super) async fn smk_ready(&self) -> ApiResult<()> {
        let smk = self.state(|kv| read::<SmkInfo>(kv, key::SMK)).await?;
        let Some(smk) = smk else {
            return Err(ApiError::Precondition(
                "no SMK yet: run the SMK ceremony first (quill ceremony start --key smk)".into(),
            ));
        };
        let local = self.hsm(|h| h.smk_kcv()).await?;
        if local.as_ref() != Some(&smk.kcv) {
            return Err(ApiError::Unavailable(format!(
                "this node's HSM does not hold the cluster SMK (KCV {}) yet; try another node",
                smk.kcv
            )));
        }
        Ok(())
    }

    async fn generate(&self, who: Principal, req: GenerateKeyRequest) -> ApiResult<KeyResponse> {
        self.cluster.require(&who, &[Role::Admin], "Keys.Generate").await?;
        let caller = super::client_caller(req.caller.clone())?;
        let usage: Usage = req.usage.parse().map_err(ApiError::BadRequest)?;
        if usage == Usage::S0 || req.alg.eq_ignore_ascii_case("rsa") {
            return self.generate_issuer(caller, &who, req).await;
        }
        let alg: KeyAlg = req.alg.parse().map_err(ApiError::BadRequest)?;
        usage.check_alg(alg).map_err(ApiError::BadRequest)?;
        let tenant = self.cluster.tenant(&who, &req.tenant, "Keys.Generate").await?;
        self.smk_ready().await?;
        let key_use = KeyUse::new(usage.tr31(), req.exportable).owned_by(&tenant);
        let wrapped = self.hsm(move |h| h.generate_key(alg, key_use)).await?;
        let origin = Origin::Generated { node: self.cluster.node_id() };
        let cmd = KeyCommand::KeyCreate {
            label: req.label,
            usage,
            exportable: req.exportable,
            origin,
            wrapped,
            active: req.active,
            tenant,
        };
        self.create(caller, &who, cmd).await
    }

    /// An issuer RSA key pair (usage S0, alg `rsa`, `rsa_bits`, `rsa_exponent`) generated in this
    /// node's HSM; the private key is proposed only as a block at rest bound to the tenant.
    async fn generate_issuer(
        &self,
        caller: Caller,
        who: &Principal,
        req: GenerateKeyRequest,
    ) -> ApiResult<KeyResponse> {
        if !req.alg.eq_ignore_ascii_case("rsa") || req.usage != "S0" {
            return Err(ApiError::BadRequest("an issuer key pair is usage S0 with alg rsa".into()));
        }
        let tenant = self.cluster.tenant(who, &req.tenant, "Keys.Generate").await?;
        let (bits, exponent) = (req.rsa_bits, if req.rsa_exponent == 0 { 3 } else { req.rsa_exponent });
        if !(512..=1984).contains(&bits) || !bits.is_multiple_of(8) {
            return Err(ApiError::BadRequest(format!(
                "an issuer key has 512 to 1984 bits in steps of 8 (EMV), not {bits}"
            )));
        }
        self.smk_ready().await?;
        let owner = tenant.clone();
        let key = self.hsm(move |h| h.generate_rsa_key_pair(bits, exponent, Some(&owner))).await?;
        let label = req.label.clone();
        let cmd = KeyCommand::IssuerKeyCreate {
            label: req.label,
            key,
            origin: Origin::Generated { node: self.cluster.node_id() },
            tenant,
        };
        let resp = self.cluster.submit_as(&caller.client_id, caller.serial, who, Command::Keys(cmd)).await?;
        if let Outcome::Rejected { reason } = resp.outcome {
            return Err(ApiError::Precondition(reason));
        }
        self.cluster.wait_applied(resp.log_index, APPLY_WAIT).await?;
        let tenants = who.cert.tenants.clone();
        let view = self
            .state(move |kv| views::read_issuer_key(kv, &tenants, &label))
            .await?
            .ok_or_else(|| ApiError::Internal("the issuer key is not in the state after it was created".into()))?;
        let json = serde_json::to_string(&view).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(KeyResponse { json, log_index: resp.log_index, key: None, issuer_key: Some(view) })
    }

    async fn import_tr31(&self, who: Principal, req: ImportTr31Request) -> ApiResult<KeyResponse> {
        let caller = super::client_caller(req.caller)?;
        self.cluster.require(&who, &[Role::Admin], "Keys.ImportTr31").await?;
        // The usage the inventory records comes from the block's header, never from the request
        // (which has no usage field): checked here before the HSM is asked, and again on the
        // header the HSM authenticated (its MAC covers the header) below.
        let header = quill_crypto::tr31::parse_key_block_header(req.block.as_bytes())
            .map_err(|e| ApiError::BadRequest(format!("TR-31 block: {e}")))?;
        let usage = block_usage(&header)?;
        self.smk_ready().await?;
        let kbpk_id = req.kbpk.clone();
        let kbpk = self
            .state(move |kv| read::<KeyRecord>(kv, &format!("{}{kbpk_id}", key::KEY)))
            .await?
            .filter(|k| who.cert.tenants.covers(&k.tenant))
            .ok_or_else(|| ApiError::NotFound(format!("no key {}", req.kbpk)))?;
        // The imported key belongs to the KBPK's tenant: a block under one tenant's KBPK never
        // becomes another tenant's key.
        let tenant = if req.tenant.is_empty() {
            kbpk.tenant.clone()
        } else {
            self.cluster.tenant(&who, &req.tenant, "Keys.ImportTr31").await?
        };
        if tenant != kbpk.tenant {
            return Err(ApiError::BadRequest(format!(
                "{} belongs to tenant {:?}: a block under it imports into that tenant, not {tenant:?}",
                kbpk.id, kbpk.tenant
            )));
        }
        if !matches!(kbpk.usage, Usage::K0 | Usage::K1) || kbpk.state != KeyState::Active {
            return Err(ApiError::BadRequest(format!(
                "{} is a {} key in state {}: a TR-31 block needs an active K0/K1 key-block protection key",
                kbpk.id,
                kbpk.usage,
                kbpk.state.as_str()
            )));
        }
        let wrapped_kbpk = kbpk
            .block()
            .map_err(ApiError::Precondition)?
            .cloned()
            .ok_or_else(|| ApiError::Precondition(format!("{} is destroyed", kbpk.id)))?;
        let block = req.block.clone();
        let (opened, wrapped) = self.hsm(move |h| h.tr31_import(&wrapped_kbpk, &block)).await?;
        if block_usage(&opened)? != usage {
            return Err(ApiError::BadRequest(format!(
                "TR-31 block: the authenticated header has usage {}, not {usage}: refused",
                String::from_utf8_lossy(&opened.key_usage.code())
            )));
        }
        usage.check_alg(wrapped.alg).map_err(|e| ApiError::BadRequest(format!("TR-31 block: {e}")))?;
        let cmd = KeyCommand::KeyCreate {
            label: req.label,
            usage,
            exportable: req.exportable,
            origin: Origin::Tr31 { kbpk: kbpk.id },
            wrapped,
            active: req.active,
            tenant,
        };
        self.create(caller, &who, cmd).await
    }

    async fn export_tr31(&self, who: Principal, req: ExportTr31Request) -> ApiResult<ExportTr31Response> {
        // Checked before the HSM builds a block (apply checks it again when the export is recorded).
        self.cluster.require(&who, &[Role::Admin, Role::Operator], "Keys.ExportTr31").await?;
        let caller = super::client_caller(req.caller)?;
        let approval_id = req.approval.clone();
        let (approval, keys) = self
            .state(move |kv| {
                let a = read::<Approval>(kv, &format!("{}{approval_id}", key::APPROVAL))?;
                let keys = match a.as_ref().map(|a| &a.action) {
                    Some(ApprovalAction::Export { key: k, kbpk }) => Some((
                        read::<KeyRecord>(kv, &format!("{}{k}", key::KEY))?,
                        read::<KeyRecord>(kv, &format!("{}{kbpk}", key::KEY))?,
                    )),
                    _ => None,
                };
                Ok((a, keys))
            })
            .await?;
        let approval = approval.ok_or_else(|| ApiError::NotFound(format!("no approval {}", req.approval)))?;
        if approval.state != ApprovalState::Approved {
            return Err(ApiError::Precondition(format!(
                "approval {} is {:?}: an export needs {APPROVALS_NEEDED} custodians' grants",
                approval.id, approval.state
            )));
        }
        let Some((Some(k), Some(z))) = keys else {
            return Err(ApiError::Precondition(format!("approval {} is not an export of existing keys", approval.id)));
        };
        if !who.cert.tenants.covers(&k.tenant) || z.tenant != k.tenant {
            return Err(ApiError::NotFound(format!("no approval {}", req.approval)));
        }
        let (Some(kw), Some(zw)) =
            (k.block().map_err(ApiError::Precondition)?.cloned(), z.block().map_err(ApiError::Precondition)?.cloned())
        else {
            return Err(ApiError::Precondition("the key or the KBPK is destroyed".into()));
        };
        self.smk_ready().await?;
        // The block's usage is the key's inventory usage: no request field chooses it (the
        // request names only the approval), and the block the HSM made is checked before it is
        // released.
        let usage = k.usage.code().to_string();
        let exportable = k.exportable;
        let block = self.hsm(move |h| h.tr31_export(&zw, &kw, &usage, exportable)).await?;
        let made = quill_crypto::tr31::parse_key_block_header(block.as_bytes())
            .map_err(|e| ApiError::Internal(format!("the exported TR-31 block does not parse: {e}")))?;
        if made.key_usage != k.usage.tr31() {
            return Err(ApiError::Internal(format!(
                "the exported TR-31 block has usage {}, key {} has {}: not released",
                String::from_utf8_lossy(&made.key_usage.code()),
                k.id,
                k.usage
            )));
        }
        let resp = self
            .cluster
            .submit_as(
                &caller.client_id,
                caller.serial,
                &who,
                Command::Keys(KeyCommand::ExportDone { approval: approval.id }),
            )
            .await?;
        match resp.outcome {
            Outcome::Rejected { reason } => Err(ApiError::Precondition(reason)),
            _ => Ok(ExportTr31Response { block, kcv: k.kcv.0 }),
        }
    }

    async fn audit_tail(&self, who: &Principal, req: AuditTailRequest) -> ApiResult<AuditTailResponse> {
        let limit = u64::from(req.limit.clamp(1, 10_000));
        let (from, records, head) = self
            .state(move |kv| {
                let head = audit::head(kv)?;
                // Records before the base were archived and pruned: the live chain starts after it.
                let first = audit::base(kv)?.map_or(1, |b| b.trailer.last + 1);
                let from = if req.from == 0 { head.seq.saturating_sub(limit - 1) } else { req.from }.max(first);
                let mut records = Vec::new();
                let mut seq = from;
                while seq <= head.seq && (records.len() as u64) < limit {
                    if let Some(r) = audit::record(kv, seq)? {
                        records.push(r);
                    }
                    seq += 1;
                }
                Ok((from, records, head))
            })
            .await?;
        let notes: Vec<(u64, String, audit::AuditNote)> =
            records.iter().filter_map(|r| r.note.clone().map(|n| (r.seq, r.object.clone(), n))).collect();
        let mut opened = std::collections::BTreeMap::new();
        if req.decrypt && !notes.is_empty() {
            // Only an auditor reads notes in clear, and the reading is recorded first: no record,
            // no clear text.
            if who.actor.role != Role::Auditor {
                return Err(ApiError::PermissionDenied(format!(
                    "{} may not open sealed audit notes (needs role auditor)",
                    who.actor
                )));
            }
            let caller = super::client_caller(req.caller)?;
            let to = records.last().map_or(from, |r| r.seq);
            let cmd = KeyCommand::AuditDecrypt { from, to };
            let write = self.cluster.submit_as(&caller.client_id, caller.serial, who, Command::Keys(cmd)).await?;
            // A replayed client id and serial would be answered with the first reading's record
            // (maybe for other records): every reading needs its own.
            if write.duplicate {
                return Err(ApiError::Precondition(format!(
                    "client id {} serial {} was used before: opening audit notes needs a fresh serial, so the reading is recorded",
                    caller.client_id, caller.serial
                )));
            }
            if let Outcome::Rejected { reason } = write.outcome {
                return Err(ApiError::Precondition(reason));
            }
            let keys = self
                .state(|kv| read::<AuditKeys>(kv, key::AUDIT_KEYS))
                .await?
                .ok_or_else(|| ApiError::Precondition("no audit encryption key in the state".into()))?;
            let hsm = self.agent()?.hsm().clone();
            opened = tokio::task::spawn_blocking(move || {
                let mut out = std::collections::BTreeMap::new();
                for (seq, object, n) in notes {
                    let text = match hsm.open(&keys.enc, &audit::note_aad(&object), &n.sealed) {
                        Ok(clear) => String::from_utf8_lossy(&clear).into_owned(),
                        Err(e) => format!("(cannot open: {e})"),
                    };
                    out.insert(seq, text);
                }
                out
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        let lines: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                let mut j = audit::to_json(r);
                if let Some(text) = opened.get(&r.seq) {
                    j["note_text"] = serde_json::Value::String(text.clone());
                }
                j
            })
            .collect();
        let views = lines.iter().map(views::audit_record).collect();
        let records = lines.iter().map(ToString::to_string).collect();
        Ok(AuditTailResponse { records, head_seq: head.seq, head_hash: hex::encode(head.hash), views })
    }

    /// Check an archive trailer's MAC with the cluster's audit key, in this node's HSM.
    async fn check_trailer(&self, t: &audit::ArchiveTrailer) -> ApiResult<()> {
        let agent = self.agent()?.clone();
        let keys = self
            .state(|kv| read::<AuditKeys>(kv, key::AUDIT_KEYS))
            .await?
            .ok_or_else(|| ApiError::Precondition("no audit key yet: nothing can be archived".into()))?;
        let (mac, input) = (t.mac(), t.input());
        let ok = tokio::task::spawn_blocking(move || agent.check_audit_mac(&keys, &mac, &input))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(hsm_error)?;
        if !ok {
            return Err(ApiError::Precondition(format!(
                "the archive of records {}..={} does not carry the cluster audit key's MAC: not an archive of this cluster, or altered",
                t.first, t.last
            )));
        }
        Ok(())
    }

    /// [`keys_server::Keys::audit_archive`]: the oldest live records and their MACed trailer.
    async fn audit_archive(&self, req: AuditArchiveRequest) -> ApiResult<AuditArchiveResponse> {
        let agent = self.agent()?.clone();
        let asked = req.upto;
        let made = self
            .state(move |kv| {
                let first = audit::base(kv)?.map_or(1, |b| b.trailer.last + 1);
                let sealed = audit::sealed_upto(kv)?;
                let upto = match asked {
                    0 if sealed < first => {
                        return Ok(Err(format!(
                            "no live record is sealed yet (the live chain starts at record {first}): wait for a seal"
                        )));
                    }
                    0 => sealed.min(first + audit::ARCHIVE_MAX_RECORDS - 1),
                    n if n >= first && n - first >= audit::ARCHIVE_MAX_RECORDS => {
                        return Ok(Err(format!(
                            "records {first}..={n}: an archive holds at most {} records",
                            audit::ARCHIVE_MAX_RECORDS
                        )));
                    }
                    n if n > sealed => {
                        return Ok(Err(format!(
                            "record {n} is not covered by a seal yet (seals cover up to {sealed}): archive up to a sealed record"
                        )));
                    }
                    n => n,
                };
                audit::archive_lines(kv, upto)
            })
            .await?;
        let (lines, mut trailer) = made.map_err(ApiError::Precondition)?;
        let mac = agent.audit_mac(trailer.input()).await.ok_or_else(|| {
            ApiError::Precondition("this node's HSM could not MAC the archive with the audit key".into())
        })?;
        trailer.key_kcv = mac.key_kcv.to_string();
        trailer.mac = hex::encode(mac.mac);
        let trailer = serde_json::to_string(&trailer).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(AuditArchiveResponse { lines, trailer })
    }

    async fn audit_verify(&self, req: AuditVerifyRequest) -> ApiResult<AuditVerifyResponse> {
        if req.anchors.len() > 100_000 {
            return Err(ApiError::BadRequest(format!("{} anchors: at most 100,000 per request", req.anchors.len())));
        }
        let anchors = req
            .anchors
            .iter()
            .map(|l| audit::Anchor::parse(&l.source, &l.json).map(|a| (l.source.clone(), a)))
            .collect::<Result<Vec<_>, String>>()
            .map_err(ApiError::BadRequest)?;
        if req.archives.len() > 1_000 {
            return Err(ApiError::BadRequest(format!("{} archives: at most 1,000 per request", req.archives.len())));
        }
        let mut archives = req
            .archives
            .iter()
            .map(|l| audit::ArchiveTrailer::parse(&l.source, &l.json).map(|t| (l.source.clone(), t)))
            .collect::<Result<Vec<_>, String>>()
            .map_err(ApiError::BadRequest)?;
        archives.sort_by_key(|(_, t)| t.first);
        let agent = self.agent.clone();
        let node_macs = match self.sm.has_node_audit() {
            true => Some(self.sm.node_macs().await.map_err(|e| ApiError::Internal(e.to_string()))?),
            false => None,
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let (report, anchor) = self
            .state(move |kv| {
                let keys = read::<AuditKeys>(kv, key::AUDIT_KEYS)?;
                let mut check_mac = |mac: &audit::AuditMac, input: &[u8]| match (&agent, &keys) {
                    (Some(agent), Some(keys)) => agent.check_audit_mac(keys, mac, input).map_err(|e| e.to_string()),
                    (None, _) => Err("this node has no HSM to check MACs with".to_string()),
                    (_, None) => Err("a MACed record but no audit key in the state".to_string()),
                };
                let mut check_node_mac = |m: &audit::NodeMac, input: &[u8]| match &agent {
                    Some(agent) => agent.hsm().node_audit_verify(&m.key_kcv, input, &m.mac).map_err(|e| e.to_string()),
                    None => Err("this node has no HSM to check MACs with".to_string()),
                };
                let mut report = audit::verify(
                    kv,
                    audit::Checks {
                        node_macs: match &node_macs {
                            Some(m) => audit::NodeMacs::Checked(m),
                            None => audit::NodeMacs::NoHsm,
                        },
                        check_node_mac: &mut check_node_mac,
                        check_mac: &mut check_mac,
                        seals_required: keys.is_some(),
                        now_ms,
                        anchors: &anchors,
                    },
                )?;
                if report.broken.is_none() && !archives.is_empty() {
                    let base = audit::base(kv)?;
                    report.broken = audit::check_archives(&mut report, &archives, base.as_ref(), &mut check_mac);
                }
                let anchor = match report.broken {
                    None => audit::latest_anchor(kv)?,
                    Some(_) => None,
                };
                Ok((report, anchor))
            })
            .await?;
        let ok = report.broken.is_none();
        let json = serde_json::to_string(&report).map_err(|e| ApiError::Internal(e.to_string()))?;
        let anchor = match anchor {
            Some(a) => serde_json::to_string(&a).map_err(|e| ApiError::Internal(e.to_string()))?,
            None => String::new(),
        };
        Ok(AuditVerifyResponse { json, ok, anchor, report: Some(views::verify_report(&report)) })
    }
}

/// The inventory usage of a TR-31 block's header (a usage Quill does not manage is refused).
pub(super) fn block_usage(header: &quill_crypto::tr31::Tr31Header) -> Result<Usage, ApiError> {
    String::from_utf8_lossy(&header.key_usage.code())
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("TR-31 block: key usage: {e}")))
}

pub(super) fn hsm_error(e: quill_hsm::HsmError) -> ApiError {
    ApiError::Hsm(e)
}

#[tonic::async_trait]
impl keys_server::Keys for KeysService {
    async fn query(&self, request: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        // The people who run the cluster may read the inventory's public records (no key value
        // is in them); partner systems, CA officers and branches may not.
        let (who, req) = super::principal(request)?;
        self.cluster.require(&who, &super::STAFF, "Keys.Query").await?;
        Ok(Response::new(self.query(&who, req).await?))
    }

    async fn get_smk(&self, request: Request<GetSmkRequest>) -> Result<Response<GetSmkResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (smk, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.GetSmk", req.linearizable, |kv, _| views::read_smk(kv))
                .await?;
        let smk = smk.ok_or_else(|| ApiError::NotFound("no SMK yet: the SMK ceremony has not formed one".into()))?;
        Ok(Response::new(GetSmkResponse { smk: Some(smk), applied_index }))
    }

    async fn list_nodes(&self, request: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (nodes, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.ListNodes", req.linearizable, |kv, _| {
                views::read_nodes(kv)
            })
            .await?;
        Ok(Response::new(ListNodesResponse { nodes, applied_index }))
    }

    async fn list_ceremonies(
        &self,
        request: Request<ListCeremoniesRequest>,
    ) -> Result<Response<ListCeremoniesResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (ceremonies, applied_index) = views::serve(
            &self.cluster,
            &self.sm,
            &who,
            "Keys.ListCeremonies",
            req.linearizable,
            views::read_ceremonies,
        )
        .await?;
        Ok(Response::new(ListCeremoniesResponse { ceremonies, applied_index }))
    }

    async fn get_ceremony(
        &self,
        request: Request<GetCeremonyRequest>,
    ) -> Result<Response<GetCeremonyResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let id = req.id.clone();
        let (c, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.GetCeremony", req.linearizable, move |kv, t| {
                views::read_ceremony(kv, t, &id)
            })
            .await?;
        Ok(Response::new(GetCeremonyResponse { ceremony: Some(views::found(c, "ceremony", &req.id)?), applied_index }))
    }

    async fn list_keys(&self, request: Request<ListKeysRequest>) -> Result<Response<ListKeysResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (keys, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.ListKeys", req.linearizable, views::read_keys).await?;
        Ok(Response::new(ListKeysResponse { keys, applied_index }))
    }

    async fn get_key(&self, request: Request<GetKeyRequest>) -> Result<Response<GetKeyResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let id = req.id.clone();
        let (k, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.GetKey", req.linearizable, move |kv, t| {
                views::read_key(kv, t, &id)
            })
            .await?;
        Ok(Response::new(GetKeyResponse { key: Some(views::found(k, "key", &req.id)?), applied_index }))
    }

    async fn list_approvals(
        &self,
        request: Request<ListApprovalsRequest>,
    ) -> Result<Response<ListApprovalsResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (approvals, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.ListApprovals", req.linearizable, views::read_approvals)
                .await?;
        Ok(Response::new(ListApprovalsResponse { approvals, applied_index }))
    }

    async fn get_approval(
        &self,
        request: Request<GetApprovalRequest>,
    ) -> Result<Response<GetApprovalResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let id = req.id.clone();
        let (a, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.GetApproval", req.linearizable, move |kv, t| {
                views::read_approval(kv, t, &id)
            })
            .await?;
        Ok(Response::new(GetApprovalResponse { approval: Some(views::found(a, "approval", &req.id)?), applied_index }))
    }

    async fn list_ca_keys(&self, request: Request<ListCaKeysRequest>) -> Result<Response<ListCaKeysResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (ca_keys, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.ListCaKeys", req.linearizable, |kv, _| {
                views::read_ca_keys(kv)
            })
            .await?;
        Ok(Response::new(ListCaKeysResponse { ca_keys, applied_index }))
    }

    async fn list_revoked_certs(
        &self,
        request: Request<ListRevokedCertsRequest>,
    ) -> Result<Response<ListRevokedCertsResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (revoked, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.ListRevokedCerts", req.linearizable, |kv, _| {
                views::read_revoked(kv)
            })
            .await?;
        Ok(Response::new(ListRevokedCertsResponse { revoked, applied_index }))
    }

    async fn list_issuer_keys(
        &self,
        request: Request<ListIssuerKeysRequest>,
    ) -> Result<Response<ListIssuerKeysResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (issuer_keys, applied_index) = views::serve(
            &self.cluster,
            &self.sm,
            &who,
            "Keys.ListIssuerKeys",
            req.linearizable,
            views::read_issuer_keys,
        )
        .await?;
        Ok(Response::new(ListIssuerKeysResponse { issuer_keys, applied_index }))
    }

    async fn get_issuer_key(
        &self,
        request: Request<GetIssuerKeyRequest>,
    ) -> Result<Response<GetIssuerKeyResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let id = req.id.clone();
        let (k, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.GetIssuerKey", req.linearizable, move |kv, t| {
                views::read_issuer_key(kv, t, &id)
            })
            .await?;
        Ok(Response::new(GetIssuerKeyResponse {
            issuer_key: Some(views::found(k, "issuer key", &req.id)?),
            applied_index,
        }))
    }

    async fn list_issuer_certs(
        &self,
        request: Request<ListIssuerCertsRequest>,
    ) -> Result<Response<ListIssuerCertsResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (issuer_certs, applied_index) = views::serve(
            &self.cluster,
            &self.sm,
            &who,
            "Keys.ListIssuerCerts",
            req.linearizable,
            views::read_issuer_certs,
        )
        .await?;
        Ok(Response::new(ListIssuerCertsResponse { issuer_certs, applied_index }))
    }

    async fn get_audit_keys(
        &self,
        request: Request<GetAuditKeysRequest>,
    ) -> Result<Response<GetAuditKeysResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (k, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.GetAuditKeys", req.linearizable, |kv, _| {
                views::read_audit_keys(kv)
            })
            .await?;
        let k = k.ok_or_else(|| ApiError::NotFound("no audit keys yet: they are formed with the cluster".into()))?;
        Ok(Response::new(GetAuditKeysResponse { audit_keys: Some(k), applied_index }))
    }

    async fn generate(&self, request: Request<GenerateKeyRequest>) -> Result<Response<KeyResponse>, Status> {
        let (who, req) = super::principal(request)?;
        Ok(Response::new(self.generate(who, req).await?))
    }

    async fn import_tr31(&self, request: Request<ImportTr31Request>) -> Result<Response<KeyResponse>, Status> {
        let (who, req) = super::principal(request)?;
        Ok(Response::new(self.import_tr31(who, req).await?))
    }

    async fn export_tr31(&self, request: Request<ExportTr31Request>) -> Result<Response<ExportTr31Response>, Status> {
        let (who, req) = super::principal(request)?;
        Ok(Response::new(self.export_tr31(who, req).await?))
    }

    async fn audit_tail(&self, request: Request<AuditTailRequest>) -> Result<Response<AuditTailResponse>, Status> {
        let (who, req) = super::principal(request)?;
        self.cluster.require(&who, &[Role::Auditor, Role::Admin], "Keys.AuditTail").await?;
        self.cluster.require_bureau(&who, "Keys.AuditTail").await?;
        Ok(Response::new(self.audit_tail(&who, req).await?))
    }

    async fn audit_archive(
        &self,
        request: Request<AuditArchiveRequest>,
    ) -> Result<Response<AuditArchiveResponse>, Status> {
        let (who, req) = super::principal(request)?;
        self.cluster.require(&who, &[Role::Auditor], "Keys.AuditArchive").await?;
        self.cluster.require_bureau(&who, "Keys.AuditArchive").await?;
        Ok(Response::new(self.audit_archive(req).await?))
    }

    async fn audit_prune(&self, request: Request<AuditPruneRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        self.cluster.require(&who, &[Role::Auditor], "Keys.AuditPrune").await?;
        self.cluster.require_bureau(&who, "Keys.AuditPrune").await?;
        let cmd = Command::AuditPrune { approval: r.approval };
        Ok(Response::new(self.cluster.write_for(who, r.caller, cmd).await?))
    }

    async fn audit_verify(
        &self,
        request: Request<AuditVerifyRequest>,
    ) -> Result<Response<AuditVerifyResponse>, Status> {
        let (who, req) = super::principal(request)?;
        self.cluster.require(&who, &[Role::Auditor, Role::Admin], "Keys.AuditVerify").await?;
        self.cluster.require_bureau(&who, "Keys.AuditVerify").await?;
        Ok(Response::new(self.audit_verify(req).await?))
    }

    async fn ceremony_start(&self, request: Request<CeremonyStartRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        let target = if r.smk && r.smk_next {
            return Err(bad("smk and smk_next: a ceremony forms one key".into()));
        } else if r.smk {
            CeremonyTarget::Smk
        } else if r.smk_next {
            CeremonyTarget::SmkNext
        } else {
            CeremonyTarget::Key {
                label: r.label,
                usage: parse_field("usage", &r.usage)?,
                alg: parse_field("alg", &r.alg)?,
                exportable: r.exportable,
                tenant: self.cluster.tenant(&who, &r.tenant, "Keys.CeremonyStart").await?,
            }
        };
        let components =
            u8::try_from(r.components).map_err(|_| bad(format!("components {} is not 2-9", r.components)))?;
        self.write(who, r.caller, KeyCommand::CeremonyStart { id: r.id, target, components }).await
    }

    async fn ceremony_submit(&self, request: Request<CeremonySubmitRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        let sealed = r.sealed.into_iter().map(|c| (c.node, SealedComponent(c.sealed))).collect();
        self.write(who, r.caller, KeyCommand::CeremonySubmit { id: r.id, kcv: Kcv(r.kcv), sealed }).await
    }

    async fn ceremony_cancel(&self, request: Request<CeremonyCancelRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        self.write(who, r.caller, KeyCommand::CeremonyCancel { id: r.id }).await
    }

    async fn set_key_state(&self, request: Request<KeyStateRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        self.write(who, r.caller, KeyCommand::KeySetState { id: r.key, state: parse_field("state", &r.state)? }).await
    }

    async fn approval_ask(&self, request: Request<ApprovalAskRequest>) -> Result<Response<WriteResult>, Status> {
        use quill_proto::v1::approval_ask_request::Action;
        let (who, r) = super::principal(request)?;
        let action = match r.action.ok_or_else(|| bad("action is missing".into()))? {
            Action::SmkToNode(node) => ApprovalAction::SmkToNode { node },
            Action::Export(e) => ApprovalAction::Export { key: e.key, kbpk: e.kbpk },
            Action::Destroy(key) => ApprovalAction::Destroy { key },
            Action::AuditPrune(line) => {
                let archive = audit::ArchiveTrailer::parse("audit_prune", &line).map_err(bad)?;
                // A trailer this cluster's audit key did not MAC never reaches an approval.
                self.check_trailer(&archive).await?;
                ApprovalAction::AuditPrune { archive }
            }
        };
        let ttl_ms =
            if r.ttl_seconds > 0 { u64::from(r.ttl_seconds) * 1000 } else { u64::from(r.ttl_hours) * 3_600_000 };
        self.write(who, r.caller, KeyCommand::ApprovalRequest { id: r.id, action, ttl_ms }).await
    }

    async fn approval_decide(&self, request: Request<ApprovalDecideRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        self.write(who, r.caller, KeyCommand::ApprovalDecide { id: r.id, grant: r.grant }).await
    }

    async fn revoke_cert(&self, request: Request<RevokeCertRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        self.write(who, r.caller, KeyCommand::RevokeCert { serial: r.serial, reason: r.reason }).await
    }

    async fn ca_import(&self, request: Request<CaImportRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        let index = u8::try_from(r.index).map_err(|_| bad(format!("index {} is not one byte", r.index)))?;
        let cmd = KeyCommand::CaKeyImport {
            rid: r.rid,
            index,
            modulus: r.modulus,
            exponent: r.exponent,
            checksum: r.checksum,
        };
        self.write(who, r.caller, cmd).await
    }

    async fn ca_key_create(
        &self,
        request: Request<CaKeyCreateRequest>,
    ) -> Result<Response<CaKeyCreateResponse>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(self.ca_key_create_call(who, r).await?))
    }

    async fn list_own_ca_keys(
        &self,
        request: Request<ListOwnCaKeysRequest>,
    ) -> Result<Response<ListOwnCaKeysResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let now = super::now_ms();
        let roles = [Role::Admin, Role::Custodian, Role::Operator, Role::Auditor, Role::CaOfficer];
        let (keys, applied_index) = views::serve_to(
            &self.cluster,
            &self.sm,
            &who,
            &roles,
            "Keys.ListOwnCaKeys",
            req.linearizable,
            move |kv, _| views::read_own_ca_keys(kv, now),
        )
        .await?;
        Ok(Response::new(ListOwnCaKeysResponse { keys, applied_index }))
    }

    async fn issuer_request(
        &self,
        request: Request<IssuerRequestRequest>,
    ) -> Result<Response<IssuerRequestResponse>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(self.issuer_request_call(who, r).await?))
    }

    async fn ca_certify_ask(&self, request: Request<CaCertifyAskRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(self.ca_certify_ask_call(who, r).await?))
    }

    async fn ca_certify(&self, request: Request<CaCertifyRequest>) -> Result<Response<CaCertifyResponse>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(self.ca_certify_call(who, r).await?))
    }

    async fn ca_key_revoke(&self, request: Request<CaKeyRevokeRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        self.cluster.require(&who, &[Role::CaOfficer], "Keys.CaKeyRevoke").await?;
        let index =
            u8::try_from(r.index).map_err(|_| ApiError::BadRequest(format!("index {} is not one byte", r.index)))?;
        let cmd = KeyCommand::CaKeyRevoke { rid: r.rid.to_ascii_uppercase(), index, reason: r.reason };
        Ok(Response::new(self.cluster.write_for(who, r.caller, Command::Keys(cmd)).await?))
    }

    async fn ca_revoke(&self, request: Request<CaRevokeRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(self.ca_revoke_call(who, r).await?))
    }

    async fn list_ca_revocations(
        &self,
        request: Request<ListCaRevocationsRequest>,
    ) -> Result<Response<ListCaRevocationsResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let roles = [Role::Admin, Role::Custodian, Role::Operator, Role::Auditor, Role::CaOfficer];
        let (revocations, applied_index) = views::serve_to(
            &self.cluster,
            &self.sm,
            &who,
            &roles,
            "Keys.ListCaRevocations",
            req.linearizable,
            |kv, _| views::read_ca_revocations(kv),
        )
        .await?;
        Ok(Response::new(ListCaRevocationsResponse { revocations, applied_index }))
    }

    async fn partner_set(&self, request: Request<PartnerSetRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        if r.kdh_pem.is_empty() {
            return self.write(who, r.caller, KeyCommand::PartnerSet { name: r.name, zmk: r.zmk }).await;
        }
        // A signing key, pinned only if it is the one the partner read out.
        if !r.zmk.is_empty() {
            return Err(bad("give a zone master key or a signing key, not both".into()));
        }
        let kdh = crate::keys::transport::public_from_pem(&r.kdh_pem).map_err(|e| bad(format!("kdh_pem: {e}")))?;
        if !kdh.fingerprint().eq_ignore_ascii_case(r.kdh_fingerprint.trim()) {
            return Err(ApiError::Precondition(format!(
                "the signing key's SHA-256 is {}, not {:?} as read out: not pinned",
                kdh.fingerprint(),
                crate::domain::clip(&r.kdh_fingerprint)
            ))
            .into_status());
        }
        self.write(who, r.caller, KeyCommand::PartnerKdhSet { name: r.name, kdh }).await
    }

    async fn kdh_key(&self, request: Request<KdhKeyRequest>) -> Result<Response<KdhKeyResponse>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(self.kdh_key_call(who, r).await?))
    }

    async fn target_transport(
        &self,
        request: Request<TargetTransportRequest>,
    ) -> Result<Response<TargetTransportResponse>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(self.target_transport_call(who, r).await?))
    }

    async fn target_confirm(&self, request: Request<TargetConfirmRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        let cmd = KeyCommand::TargetConfirmed { target: r.target, kcv: r.kcv, remote_key: r.remote_key };
        self.write(who, r.caller, cmd).await
    }

    async fn partner_share(&self, request: Request<PartnerShareRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        self.write(who, r.caller, KeyCommand::PartnerShare { name: r.name, key: r.key, share: r.share }).await
    }

    async fn target_set(&self, request: Request<TargetSetRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        let cmd = KeyCommand::TargetSet { name: r.name, endpoint: r.endpoint, ca_sha256: r.ca_sha256, kbpk: r.kbpk };
        self.write(who, r.caller, cmd).await
    }

    async fn key_delivered(&self, request: Request<KeyDeliveredRequest>) -> Result<Response<WriteResult>, Status> {
        let (who, r) = super::principal(request)?;
        let cmd =
            KeyCommand::KeyDelivered { target: r.target, approval: r.approval, kcv: r.kcv, remote_key: r.remote_key };
        self.write(who, r.caller, cmd).await
    }

    async fn list_targets(
        &self,
        request: Request<ListTargetsRequest>,
    ) -> Result<Response<ListTargetsResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (targets, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.ListTargets", req.linearizable, |kv, _| {
                views::read_targets(kv)
            })
            .await?;
        Ok(Response::new(ListTargetsResponse { targets, applied_index }))
    }

    async fn list_partners(
        &self,
        request: Request<ListPartnersRequest>,
    ) -> Result<Response<ListPartnersResponse>, Status> {
        let (who, req) = super::principal(request)?;
        let (partners, applied_index) =
            views::serve(&self.cluster, &self.sm, &who, "Keys.ListPartners", req.linearizable, |kv, _| {
                views::read_partners(kv)
            })
            .await?;
        Ok(Response::new(ListPartnersResponse { partners, applied_index }))
    }

    async fn issuer_cert_import(
        &self,
        request: Request<IssuerCertImportRequest>,
    ) -> Result<Response<WriteResult>, Status> {
        use quill_proto::v1::issuer_cert_import_request::Source;
        let (who, r) = super::principal(request)?;
        let source = match r.source.ok_or_else(|| bad("source is missing".into()))? {
            Source::File(f) => issuers::CertSource::File {
                layout: f.layout,
                bytes: f.bytes,
                rid: (!f.rid.is_empty()).then(|| f.rid.to_ascii_uppercase()),
            },
            Source::Tags(t) => issuers::CertSource::Tags {
                rid: t.rid,
                ca_index: u8::try_from(t.ca_index)
                    .map_err(|_| bad(format!("ca_index {} is not one byte", t.ca_index)))?,
                cert: t.cert,
                remainder: t.remainder,
                exponent: t.exponent,
            },
        };
        let key = (!r.key.is_empty()).then_some(r.key);
        self.write(who, r.caller, KeyCommand::IssuerCertImport { source, key }).await
    }
}

/// The EMV CA's calls (and the issuer's certification request).
impl KeysService {
    async fn ca_key_create_call(&self, who: Principal, r: CaKeyCreateRequest) -> ApiResult<CaKeyCreateResponse> {
        self.cluster.require(&who, &[Role::CaOfficer], "Keys.CaKeyCreate").await?;
        let index =
            u8::try_from(r.index).map_err(|_| ApiError::BadRequest(format!("index {} is not one byte", r.index)))?;
        if !(512..=1984).contains(&r.bits) || !r.bits.is_multiple_of(8) {
            return Err(ApiError::BadRequest(format!(
                "a CA key has 512 to 1984 bits in steps of 8 (EMV), not {}",
                r.bits
            )));
        }
        if r.exponent != 3 && r.exponent != 65537 {
            return Err(ApiError::BadRequest(format!("exponent {}: EMV allows 3 or 65537", r.exponent)));
        }
        self.smk_ready().await?;
        let (bits, exponent) = (r.bits, r.exponent);
        let key =
            self.hsm(move |h| h.generate_rsa_key_pair(bits, exponent, Some(crate::keys::apply::ca::CA_OWNER))).await?;
        let cmd = KeyCommand::CaKeyCreate {
            rid: r.rid.to_ascii_uppercase(),
            index,
            expiry: r.expiry,
            ranges: r.issuer_ranges,
            key,
            origin: Origin::Generated { node: self.cluster.node_id() },
        };
        let result = self.cluster.write_for(who, r.caller, Command::Keys(cmd)).await?;
        self.cluster.wait_applied(result.log_index, APPLY_WAIT).await?;
        let rid = r.rid.to_ascii_uppercase();
        let now = super::now_ms();
        let keys = self.state(move |kv| views::read_own_ca_keys(kv, now)).await?;
        let key = keys.into_iter().find(|k| k.rid == rid && k.index == u32::from(index));
        Ok(CaKeyCreateResponse { result: Some(result), key })
    }

    async fn issuer_request_call(&self, who: Principal, r: IssuerRequestRequest) -> ApiResult<IssuerRequestResponse> {
        use quill_prep::emv::ca::{IssuerRequest, RequestFormat};
        use quill_prep::emv::cert::{CertExpiry, IssuerId, RsaPublicKey};
        self.cluster.require(&who, &[Role::Admin], "Keys.IssuerRequest").await?;
        let bad = |m: String| ApiError::BadRequest(m);
        let format = RequestFormat::from_name(&r.format)
            .ok_or_else(|| bad(format!("format {:?}: visa or mastercard", r.format)))?;
        let issuer_id = IssuerId::from_digits(&r.issuer_id)
            .ok_or_else(|| bad(format!("issuer id {:?}: 3 to 8 digits", r.issuer_id)))?;
        let key_index: [u8; 3] = hex::decode(&r.key_index)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(format!("key index {:?}: 6 hex digits", r.key_index)))?;
        let expiry = hex::decode(&r.expiry)
            .ok()
            .filter(|_| r.expiry.len() == 4 && r.expiry.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|b| CertExpiry::from_mmyy(b.try_into().ok()?))
            .ok_or_else(|| bad(format!("expiry {:?}: MMYY", r.expiry)))?;
        let label = r.key.clone();
        let tenants = who.cert.tenants.clone();
        let rec = self
            .state(move |kv| views::read_issuer_key_record(kv, &tenants, &label))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no issuer key {}", r.key)))?;
        let block = rec.block().map_err(ApiError::Precondition)?.clone();
        let key = RsaPublicKey::new(&block.public.modulus, &block.public.exponent)
            .map_err(|e| ApiError::Precondition(format!("issuer key {}: {e}", r.key)))?;
        let req = IssuerRequest { format, issuer_id, key_index, expiry, key };
        self.smk_ready().await?;
        // In the audit chain before the private key is used.
        let what = format!("{format} request for issuer {}, key index {}, expiry {expiry}", r.issuer_id, r.key_index);
        let cmd = KeyCommand::IssuerRequestSigned { label: r.key.clone(), what };
        let result = self.cluster.write_for(who, r.caller, Command::Keys(cmd)).await?;
        let agent = self.agent()?.clone();
        let req2 = req.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let signer = quill_prep::engine::HsmSigner { hsm: &**agent.hsm(), key: &block };
            req2.build(&signer).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Precondition)?;
        let hash_file = if format == RequestFormat::Mastercard { req.hash_file() } else { Vec::new() };
        Ok(IssuerRequestResponse { request: bytes, hash_file, result: Some(result) })
    }

    async fn ca_certify_ask_call(&self, who: Principal, r: CaCertifyAskRequest) -> ApiResult<WriteResult> {
        use quill_prep::emv::ca::{IssuerRequest, RequestFormat};
        self.cluster.require(&who, &[Role::CaOfficer], "Keys.CaCertifyAsk").await?;
        let index =
            u8::try_from(r.index).map_err(|_| ApiError::BadRequest(format!("index {} is not one byte", r.index)))?;
        let format = RequestFormat::from_name(&r.format)
            .ok_or_else(|| ApiError::BadRequest(format!("format {:?}: visa or mastercard", r.format)))?;
        // The summary the custodians read; apply checks it is what the request says.
        let req = IssuerRequest::parse(format, &r.request).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let action = ApprovalAction::Certify {
            ca: crate::keys::apply::ca::ca_id(&r.rid, index),
            format: r.format,
            request: r.request,
            hash_file: r.hash_file,
            issuer_id: req.issuer_id.digits(),
            expiry: req.expiry.to_string(),
            key_fingerprint: RsaPublic::new(req.key.modulus(), req.key.exponent()).fingerprint(),
        };
        let cmd = KeyCommand::ApprovalRequest { id: r.id, action, ttl_ms: u64::from(r.ttl_hours) * 3_600_000 };
        self.cluster.write_for(who, r.caller, Command::Keys(cmd)).await
    }

    async fn ca_certify_call(&self, who: Principal, r: CaCertifyRequest) -> ApiResult<CaCertifyResponse> {
        use crate::keys::apply::ca::{OWN_CA, OwnCaKey, ca_id};
        use quill_prep::emv::ca::{IssuerRequest, RequestFormat, certificate_files};
        use quill_prep::emv::cert::CaPublicKey;
        self.cluster.require(&who, &[Role::CaOfficer], "Keys.CaCertify").await?;
        self.smk_ready().await?;
        let approval = r.approval.clone();
        let result = self
            .cluster
            .write_for(who, r.caller, Command::Keys(KeyCommand::CaCertified { approval: approval.clone() }))
            .await?;
        self.cluster.wait_applied(result.log_index, APPLY_WAIT).await?;
        // What was recorded: the CA key and the issue this approval made.
        let a = approval.clone();
        let (rec, issued) = self
            .state(move |kv| {
                let Some(ap) = read::<Approval>(kv, &format!("{}{a}", key::APPROVAL))? else { return Ok((None, None)) };
                let ApprovalAction::Certify { ca, .. } = ap.action else { return Ok((None, None)) };
                let rec = read::<OwnCaKey>(kv, &format!("{OWN_CA}{ca}"))?;
                let issued = rec.as_ref().and_then(|k| k.issued.iter().find(|c| c.approval == a).cloned());
                Ok((rec, issued))
            })
            .await?;
        let (Some(rec), Some(issued)) = (rec, issued) else {
            return Err(ApiError::Internal(format!(
                "approval {approval}: no certificate recorded after it was applied"
            )));
        };
        let rid: [u8; 5] = hex::decode(&rec.rid)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| ApiError::Internal(format!("CA key {}: bad RID", ca_id(&rec.rid, rec.index))))?;
        let ca = CaPublicKey::new(rid, rec.index, &rec.key.public.modulus, &rec.key.public.exponent)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let format = RequestFormat::from_name(&issued.format)
            .ok_or_else(|| ApiError::Internal(format!("recorded request format {:?}", issued.format)))?;
        let req = IssuerRequest::parse(format, &issued.request).map_err(|e| ApiError::Internal(e.to_string()))?;
        let serial: [u8; 3] = hex::decode(&issued.serial)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| ApiError::Internal(format!("recorded serial {:?}", issued.serial)))?;
        let agent = self.agent()?.clone();
        let block = rec.block().map_err(ApiError::Precondition)?.clone();
        let files = tokio::task::spawn_blocking(move || {
            let signer = quill_prep::engine::HsmSigner { hsm: &**agent.hsm(), key: &block };
            certificate_files(&signer, &ca, &req, serial).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Internal)?
        .1;
        let files = files
            .into_iter()
            .map(|f| NamedFile { layout: f.layout.name().into(), name: f.name, bytes: f.bytes })
            .collect();
        Ok(CaCertifyResponse { serial: issued.serial, files, result: Some(result) })
    }

    async fn ca_revoke_call(&self, who: Principal, r: CaRevokeRequest) -> ApiResult<WriteResult> {
        let entries = if r.list.is_empty() {
            let index = u8::try_from(r.index)
                .map_err(|_| ApiError::BadRequest(format!("index {} is not one byte", r.index)))?;
            vec![(r.rid.to_ascii_uppercase(), index, r.serial.to_ascii_uppercase())]
        } else {
            quill_prep::emv::ca::Revocation::parse_list(&r.list)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?
                .into_iter()
                .map(|e| (hex::encode_upper(e.rid), e.ca_index, hex::encode_upper(e.serial)))
                .collect()
        };
        let cmd = KeyCommand::CaRevoke { entries, reason: r.reason };
        self.cluster.write_for(who, r.caller, Command::Keys(cmd)).await
    }
}

impl KeysService {
    /// A typed key-management write: the caller checked, the command validated and proposed.
    async fn write(
        &self,
        who: Principal,
        caller: Option<Caller>,
        cmd: KeyCommand,
    ) -> Result<Response<WriteResult>, Status> {
        Ok(Response::new(self.cluster.write_for(who, caller, Command::Keys(cmd)).await?))
    }
}

fn bad(message: String) -> Status {
    ApiError::BadRequest(message).into_status()
}

/// Parse a request field with the model's `FromStr`, naming the field on failure.
fn parse_field<T: std::str::FromStr<Err = String>>(field: &str, value: &str) -> Result<T, Status> {
    value.parse().map_err(|e| bad(format!("{field}: {e}")))
}

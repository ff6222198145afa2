//! The `quill.v1.Exchange` service: partner key exchange (role partner). A partner imports and
//! exports working keys as TR-31 blocks under its zone master key (`keys::apply::partners`): it
//! sees only keys shared with it and the keys it imported; an imported key's usage and
//! exportability are those of the block's authenticated header; every exchange is proposed first
//! (import) or recorded before the block is released (export), with the key's KCV, in the audit
//! chain.

use std::time::Duration;

use quill_proto::v1::exchange_server::{self, ExchangeServer};
use quill_proto::v1::{
    ExchangeExportRequest, ExchangeExportResponse, ExchangeImportRequest, ExchangeImportResponse, ExchangeListRequest,
    ExchangeListResponse, ExchangeReceiveKbpkRequest, ExchangeReceiveKbpkResponse,
};
use tonic::{Request, Response, Status};

use super::keys::{KeysService, block_usage};
use super::{ApiError, ClusterService, views};
use crate::identity::Principal;
use crate::keys::KeyCommand;
use crate::keys::apply::partners::{PARTNER, PartnerRecord};
use crate::keys::apply::{key, read};
use crate::keys::model::*;
use crate::raft::Command;

type ApiResult<T> = Result<T, ApiError>;

/// How long an imported key may take to appear in this node's applied state.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// The `quill.v1.Exchange` service of one node: the Keys service's state and HSM, behind the
/// partner's own door.
#[derive(Clone)]
pub struct ExchangeService {
    cluster: ClusterService,
    keys: KeysService,
}

impl ExchangeService {
    pub fn new(cluster: ClusterService, keys: KeysService) -> Self {
        Self { cluster, keys }
    }

    pub fn into_server(self, max_request_bytes: usize) -> ExchangeServer<Self> {
        ExchangeServer::new(self).max_decoding_message_size(max_request_bytes)
    }

    /// The caller's partner record and its zone master key (active): the partner is who its
    /// certificate says, never a request field.
    async fn partner(&self, who: &Principal, call: &str) -> ApiResult<(PartnerRecord, KeyRecord)> {
        self.cluster.require(who, &[Role::Partner], call).await?;
        let name = who.actor.name.clone();
        let (p, z) = self
            .keys
            .state(move |kv| {
                let p = read::<PartnerRecord>(kv, &format!("{PARTNER}{name}"))?;
                let z = match &p {
                    Some(p) => read::<KeyRecord>(kv, &format!("{}{}", key::KEY, p.zmk))?,
                    None => None,
                };
                Ok((p, z))
            })
            .await?;
        let p = p.ok_or_else(|| {
            ApiError::Precondition(format!("{} is not a partner of this bureau yet (quill exchange zmk)", who.actor))
        })?;
        if p.zmk.is_empty() {
            return Err(ApiError::Precondition(format!(
                "partner {} has no zone master key yet (Exchange.ReceiveKbpk, or quill exchange zmk)",
                p.name
            )));
        }
        let z = z.filter(|z| z.state == KeyState::Active).ok_or_else(|| {
            ApiError::Precondition(format!("partner {}'s zone master key {} is not active", p.name, p.zmk))
        })?;
        Ok((p, z))
    }

    async fn import(&self, who: Principal, r: ExchangeImportRequest) -> ApiResult<ExchangeImportResponse> {
        let (p, z) = self.partner(&who, "Exchange.Import").await?;
        // The label first: no HSM work for a message that cannot be filed.
        crate::state::validate::id("label", &r.label).map_err(ApiError::BadRequest)?;
        match self.open(&p, &z, &r.block).await {
            Ok((usage, exportable, wrapped)) => {
                let cmd = KeyCommand::PartnerImported { label: r.label, usage, exportable, wrapped };
                let result = self.cluster.write_for(who.clone(), r.caller, Command::Keys(cmd)).await?;
                self.cluster.wait_applied(result.log_index, APPLY_WAIT).await?;
                let id = result.object.trim_start_matches("key:").to_string();
                let name = p.name.clone();
                let key = self
                    .keys
                    .state(move |kv| views::read_partner_keys(kv, &name))
                    .await?
                    .into_iter()
                    .find(|k| k.id == id);
                Ok(ExchangeImportResponse { key, result: Some(result) })
            }
            Err(e) => {
                // A block that does not open is an attempt worth keeping: in the chain with why.
                self.cluster.audit_refused(&who, "Exchange.Import", &format!("block refused: {e}")).await;
                Err(e)
            }
        }
    }

    /// The partner's block opened under its ZMK in this node's HSM: usage and exportability from
    /// the authenticated header, the key wrapped under the SMK.
    async fn open(&self, p: &PartnerRecord, z: &KeyRecord, block: &str) -> ApiResult<(Usage, bool, WrappedKey)> {
        let header = quill_crypto::tr31::parse_key_block_header(block.as_bytes())
            .map_err(|e| ApiError::BadRequest(format!("TR-31 block: {e}")))?;
        let usage = block_usage(&header)?;
        let zw = z.block().map_err(ApiError::Precondition)?.cloned().ok_or_else(|| {
            ApiError::Precondition(format!("partner {}'s zone master key {} is destroyed", p.name, p.zmk))
        })?;
        let block = block.to_string();
        let (opened, wrapped) = self.keys.hsm(move |h| h.tr31_import(&zw, &block)).await?;
        // From the header the HSM authenticated, never from the request.
        if block_usage(&opened)? != usage {
            return Err(ApiError::BadRequest("TR-31 block: the authenticated header's usage differs".into()));
        }
        usage.check_alg(wrapped.alg).map_err(|e| ApiError::BadRequest(format!("TR-31 block: {e}")))?;
        let exportable = opened.exportability != quill_hsm::tr31::Exportability::NonExportable;
        Ok((usage, exportable, wrapped))
    }

    async fn export(&self, who: Principal, r: ExchangeExportRequest) -> ApiResult<ExchangeExportResponse> {
        let (p, z) = self.partner(&who, "Exchange.Export").await?;
        if !p.sees(&r.key) {
            return Err(ApiError::NotFound(format!("no key {}", r.key)));
        }
        let id = r.key.clone();
        let k = self
            .keys
            .state(move |kv| read::<KeyRecord>(kv, &format!("{}{id}", key::KEY)))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no key {}", r.key)))?;
        if !k.exportable || k.state != KeyState::Active {
            return Err(ApiError::Precondition(format!(
                "{} is {} and {}exportable: it does not leave",
                k.id,
                k.state.as_str(),
                if k.exportable { "" } else { "not " }
            )));
        }
        let (Some(kw), Some(zw)) =
            (k.block().map_err(ApiError::Precondition)?.cloned(), z.block().map_err(ApiError::Precondition)?.cloned())
        else {
            return Err(ApiError::Precondition("the key or the zone master key is destroyed".into()));
        };
        // This node's HSM must hold the SMK the blocks are under before anything is recorded.
        self.keys.smk_ready().await?;
        // In the audit chain (and checked again in apply) before the block is made.
        let cmd = KeyCommand::PartnerExported { key: k.id.clone() };
        let result = self.cluster.write_for(who, r.caller, Command::Keys(cmd)).await?;
        let usage = k.usage.code().to_string();
        let block = self.keys.hsm(move |h| h.tr31_export(&zw, &kw, &usage, true)).await?;
        let made = quill_crypto::tr31::parse_key_block_header(block.as_bytes())
            .map_err(|e| ApiError::Internal(format!("the exported TR-31 block does not parse: {e}")))?;
        if made.key_usage != k.usage.tr31() {
            return Err(ApiError::Internal("the exported block's usage is not the key's: not released".into()));
        }
        Ok(ExchangeExportResponse { block, kcv: k.kcv.to_string(), result: Some(result) })
    }

    /// A KBPK the partner sends by TR-34-style transport (`crate::keys::transport`): the
    /// envelope's signature by the partner's pinned signing key, its address (this node's
    /// transport key), time and nonce are checked before the HSM opens the key; the KCV of what
    /// opened must be the envelope's. The key becomes the partner's zone master key. Every
    /// refusal is in the audit chain with its reason.
    async fn receive_kbpk(
        &self,
        who: Principal,
        r: ExchangeReceiveKbpkRequest,
    ) -> ApiResult<ExchangeReceiveKbpkResponse> {
        self.cluster.require(&who, &[Role::Partner], "Exchange.ReceiveKbpk").await?;
        match self.check_and_open(&who, &r).await {
            Ok((wrapped, kdh, nonce)) => {
                let kcv = wrapped.kcv.to_string();
                let cmd = KeyCommand::PartnerKbpkReceived { wrapped, kdh, nonce };
                let result = self.cluster.write_for(who, r.caller, Command::Keys(cmd)).await?;
                let key = result.object.trim_start_matches("key:").to_string();
                Ok(ExchangeReceiveKbpkResponse { key, kcv, result: Some(result) })
            }
            Err(e) => {
                self.cluster.audit_refused(&who, "Exchange.ReceiveKbpk", &format!("envelope refused: {e}")).await;
                Err(e)
            }
        }
    }

    async fn check_and_open(
        &self,
        who: &Principal,
        r: &ExchangeReceiveKbpkRequest,
    ) -> ApiResult<(WrappedKey, String, String)> {
        use crate::keys::transport::{self as tr34, Envelope};
        let bad = |e: tr34::TransportError| ApiError::BadRequest(e.to_string());
        let name = who.actor.name.clone();
        let p = self
            .keys
            .state(move |kv| read::<PartnerRecord>(kv, &format!("{PARTNER}{name}")))
            .await?
            .ok_or_else(|| ApiError::Precondition(format!("{} is not a partner of this bureau", who.actor)))?;
        let kdh = p.kdh.clone().ok_or_else(|| {
            ApiError::Precondition(format!("partner {} has no pinned signing key (quill exchange kdh)", p.name))
        })?;
        if r.signature.len() > tr34::MAX_BYTES {
            return Err(ApiError::BadRequest(format!("the signature: {} bytes", r.signature.len())));
        }
        // The signature first: nothing of an unsigned envelope is looked at further.
        tr34::verify(&kdh, &r.envelope, &r.signature).map_err(bad)?;
        let e = Envelope::parse(&r.envelope).map_err(bad)?;
        if !e.kdh.eq_ignore_ascii_case(&kdh.fingerprint()) {
            return Err(ApiError::BadRequest(format!(
                "the envelope names signing key {}, partner {}'s pinned key is {}",
                e.kdh,
                p.name,
                kdh.fingerprint()
            )));
        }
        e.check_time(super::now_ms()).map_err(bad)?;
        let ours = self.keys.hsm(|h| h.transport_public_key()).await?;
        if !e.krd.eq_ignore_ascii_case(&ours.fingerprint()) {
            return Err(ApiError::Precondition(format!(
                "the envelope is addressed to transport key {}…, this node ({}) holds {}…: send it to the node its certificate names",
                &e.krd[..16],
                self.cluster.node_id(),
                &ours.fingerprint()[..16]
            )));
        }
        if p.nonces.iter().any(|n| n.eq_ignore_ascii_case(&e.nonce)) {
            return Err(ApiError::Precondition(format!("envelope {} was taken before: a replay", e.nonce)));
        }
        self.keys.smk_ready().await?;
        let sealed =
            hex::decode(&e.sealed).map_err(|_| ApiError::BadRequest("the envelope: field sealed: not hex".into()))?;
        let key_use = quill_hsm::KeyUse::new(Usage::K1.tr31(), false).owned_by(&crate::identity::default_tenant());
        let alg = e.alg;
        let wrapped = self.keys.hsm(move |h| h.receive_transported(alg, key_use, &sealed)).await?;
        if !wrapped.kcv.0.eq_ignore_ascii_case(&e.kcv) {
            return Err(ApiError::BadRequest(format!(
                "the key that arrived has KCV {}, the envelope says {}: not taken",
                wrapped.kcv, e.kcv
            )));
        }
        Ok((wrapped, e.kdh.to_ascii_uppercase(), e.nonce))
    }

    async fn list(&self, who: Principal, r: ExchangeListRequest) -> ApiResult<ExchangeListResponse> {
        let (p, z) = self.partner(&who, "Exchange.List").await?;
        if r.linearizable {
            self.cluster.linearize().await?;
        }
        let name = p.name.clone();
        let keys = self.keys.state(move |kv| views::read_partner_keys(kv, &name)).await?;
        Ok(ExchangeListResponse {
            zmk: p.zmk,
            zmk_kcv: z.kcv.to_string(),
            keys,
            applied_index: self.cluster.applied_index(),
        })
    }
}

#[tonic::async_trait]
impl exchange_server::Exchange for ExchangeService {
    async fn import(
        &self,
        request: Request<ExchangeImportRequest>,
    ) -> Result<Response<ExchangeImportResponse>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(ExchangeService::import(self, who, r).await?))
    }

    async fn export(
        &self,
        request: Request<ExchangeExportRequest>,
    ) -> Result<Response<ExchangeExportResponse>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(ExchangeService::export(self, who, r).await?))
    }

    async fn list(&self, request: Request<ExchangeListRequest>) -> Result<Response<ExchangeListResponse>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(ExchangeService::list(self, who, r).await?))
    }

    async fn receive_kbpk(
        &self,
        request: Request<ExchangeReceiveKbpkRequest>,
    ) -> Result<Response<ExchangeReceiveKbpkResponse>, Status> {
        let (who, r) = super::principal(request)?;
        Ok(Response::new(ExchangeService::receive_kbpk(self, who, r).await?))
    }
}

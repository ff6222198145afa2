//! The key site's side of TR-34-style KBPK transport (`crate::keys::transport`): its signing key
//! (`Keys.KdhKey`), a KBPK generated for a target node's certified transport key and signed
//! (`Keys.TargetTransport`), and the target's answer (`Keys.TargetConfirm`).

use quill_proto::v1::{KdhKeyRequest, KdhKeyResponse, TargetTransportRequest, TargetTransportResponse};
use sha2::{Digest, Sha256};

use super::*;
use crate::keys::apply::targets::{KDH, KdhRecord, TARGET, TargetRecord};
use crate::keys::transport::{self as tr34, Envelope};

impl KeysService {
    /// This site's signing key, made in the HSM (and recorded) on first use.
    pub(super) async fn kdh_key_call(&self, who: Principal, r: KdhKeyRequest) -> ApiResult<KdhKeyResponse> {
        self.cluster.require(&who, &[Role::Admin], "Keys.KdhKey").await?;
        let mut result = None;
        let existing = self.state(|kv| read::<KdhRecord>(kv, KDH)).await?;
        let public = match existing {
            Some(k) => k.key.public,
            None => {
                self.smk_ready().await?;
                let key = self
                    .hsm(|h| h.generate_rsa_key_pair(2048, 65537, Some(crate::keys::apply::targets::KDH_OWNER)))
                    .await?;
                let public = key.public.clone();
                let w = self.cluster.write_for(who, r.caller, Command::Keys(KeyCommand::KdhKeySet { key })).await?;
                self.cluster.wait_applied(w.log_index, APPLY_WAIT).await?;
                // A concurrent call may have set another first: answer the recorded one.
                let recorded = self.state(|kv| read::<KdhRecord>(kv, KDH)).await?;
                result = Some(w);
                recorded.map_or(public, |k| k.key.public)
            }
        };
        let public_pem = tr34::public_to_pem(&public).map_err(ApiError::Internal)?;
        Ok(KdhKeyResponse { public_pem, fingerprint: public.fingerprint(), result })
    }

    /// A KBPK for `r.target`, generated in this node's HSM and wrapped there under the target
    /// node's transport key, whose certificate must chain to the target's registered CA; the
    /// envelope signed with this site's signing key. Recorded before it is released.
    pub(super) async fn target_transport_call(
        &self,
        who: Principal,
        r: TargetTransportRequest,
    ) -> ApiResult<TargetTransportResponse> {
        self.cluster.require(&who, &[Role::Admin], "Keys.TargetTransport").await?;
        let name = r.target.clone();
        crate::domain::id("target", &name).map_err(ApiError::BadRequest)?;
        let (target, kdh) = self
            .state(move |kv| Ok((read::<TargetRecord>(kv, &format!("{TARGET}{name}"))?, read::<KdhRecord>(kv, KDH)?)))
            .await?;
        let target = target.ok_or_else(|| ApiError::NotFound(format!("no target {}", r.target)))?;
        let kdh = kdh
            .ok_or_else(|| ApiError::Precondition("no signing key for KBPK transport yet (quill target kdh)".into()))?;
        // The signing key's block, if bound to its use: checked before anything is generated.
        let signing = kdh.block().map_err(ApiError::Precondition)?.clone();
        // The CA given is the target's registered one, and the transport key is certified by it.
        let ca = openssl::x509::X509::from_pem(r.ca_pem.as_bytes())
            .and_then(|c| c.to_der())
            .map_err(|_| ApiError::BadRequest("ca_pem: not a PEM certificate".into()))?;
        let ca_sha = hex::encode_upper(Sha256::digest(&ca));
        if !ca_sha.eq_ignore_ascii_case(&target.ca_sha256) {
            return Err(ApiError::Precondition(format!(
                "the CA given (SHA-256 {ca_sha}) is not target {}'s (SHA-256 {}): nothing generated",
                target.name, target.ca_sha256
            )));
        }
        let now = super::super::now_ms();
        let krd = tr34::check_krd_certificate(&r.krd_pem, &r.ca_pem, (now / 1000) as i64)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.smk_ready().await?;
        let key_use = KeyUse::new(Usage::K1.tr31(), false).owned_by(&crate::identity::default_tenant());
        let peer = krd.key.clone();
        let (wrapped, sealed) =
            self.hsm(move |h| h.generate_for_transport(quill_hsm::KeyAlg::Aes256, key_use, &peer)).await?;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
        let envelope = Envelope {
            format: tr34::FORMAT.into(),
            target: target.name.clone(),
            krd: krd.key.fingerprint(),
            kdh: kdh.fingerprint.clone(),
            alg: wrapped.alg,
            usage: "K1".into(),
            kcv: wrapped.kcv.to_string(),
            sealed: hex::encode_upper(&sealed),
            nonce: hex::encode_upper(nonce),
            issued_ms: now,
        };
        let bytes = envelope.to_bytes();
        let k = kdh.key.public.bits().div_ceil(8);
        let block = tr34::pkcs1_sha256_block(&bytes, k).map_err(|e| ApiError::Internal(e.to_string()))?;
        let signature = self.hsm(move |h| h.rsa_sign_raw(&signing, &block)).await?;
        // Checked before it leaves: a signature that does not verify is never sent.
        tr34::verify(&kdh.key.public, &bytes, &signature).map_err(|e| ApiError::Internal(e.to_string()))?;
        let kcv = wrapped.kcv.to_string();
        let cmd = KeyCommand::TargetTransported {
            target: target.name.clone(),
            wrapped,
            krd: envelope.krd.clone(),
            node: krd.node,
        };
        let result = self.cluster.write_for(who, r.caller, Command::Keys(cmd)).await?;
        if result.duplicate {
            // A retried call: the KBPK generated now is not the one recorded (and goes nowhere);
            // the recorded one left with the first answer.
            return Err(ApiError::Precondition(format!(
                "this request was carried out before ({}); ask again with a new serial for a new KBPK",
                result.object
            )));
        }
        let key = result.object.trim_start_matches("key:").to_string();
        Ok(TargetTransportResponse { envelope: bytes, signature, key, kcv, node: krd.node, result: Some(result) })
    }
}

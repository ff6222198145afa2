//! The typed queries (`Keys.List…`/`Get…`, `Jobs.ListJobs`/`GetJob`/`ListChunks`): every read is
//! linearizable and rides out an election ([`Session::call_keys`]); answers are the views of
//! `proto/quill/v1/views.proto`, never the node's own records.

use anyhow::Result;
use quill_proto::v1::{
    ApprovalView, CaKeyView, CeremonyView, ChunkView, GetCeremonyRequest, GetJobRequest, GetKeyRequest, IssuerCertView,
    IssuerKeyView, JobView, KeyView, ListApprovalsRequest, ListCaKeysRequest, ListCeremoniesRequest, ListChunksRequest,
    ListIssuerCertsRequest, ListIssuerKeysRequest, ListJobsRequest, ListKeysRequest, ListNodesRequest,
    ListRevokedCertsRequest, NodeView, RevokedCertView,
};
// Only the TEST CA's `issuer certify-test` reads one issuer key by label.
#[cfg(feature = "test-keys")]
use quill_proto::v1::GetIssuerKeyRequest;

use super::Session;

/// An RSA public key as a view lists it (hex), for `whose` in errors.
pub(crate) fn rsa_public(view: Option<&quill_proto::v1::RsaPublicView>, whose: &str) -> Result<quill_hsm::RsaPublic> {
    let v = view.ok_or_else(|| anyhow::anyhow!("{whose} is listed without its public key"))?;
    let bytes =
        |what: &str, h: &str| hex::decode(h).map_err(|_| anyhow::anyhow!("{whose}: public key {what} is not hex"));
    Ok(quill_hsm::RsaPublic::new(&bytes("modulus", &v.modulus)?, &bytes("exponent", &v.exponent)?))
}

/// A list query of the Keys service: `fn name(&self) -> Result<Vec<View>>`.
macro_rules! list {
    ($(#[$doc:meta])* $name:ident, $call:ident, $rpc:ident, $req:ident, $field:ident, $view:ty) => {
        $(#[$doc])*
        pub(crate) fn $name(&self) -> Result<Vec<$view>> {
            Ok(self.$call(|mut c| async move { c.$rpc($req { linearizable: true }).await })?.$field)
        }
    };
}

/// A get query: `fn name(&self, id) -> Result<View>` (NOT_FOUND is an error naming the id).
macro_rules! get {
    ($(#[$doc:meta])* $name:ident, $call:ident, $rpc:ident, $req:ident, $field:ident, $view:ty) => {
        $(#[$doc])*
        pub(crate) fn $name(&self, id: &str) -> Result<$view> {
            let r = self.$call(|mut c| {
                let req = $req { linearizable: true, id: id.to_string() };
                async move { c.$rpc(req).await }
            })?;
            r.$field.ok_or_else(|| anyhow::anyhow!("the node answered {} without the record", stringify!($rpc)))
        }
    };
}

impl Session {
    list!(
        /// Enrolled nodes.
        nodes, call_keys, list_nodes, ListNodesRequest, nodes, NodeView
    );
    list!(
        /// Every ceremony.
        ceremonies, call_keys, list_ceremonies, ListCeremoniesRequest, ceremonies, CeremonyView
    );
    get!(
        /// One ceremony.
        ceremony, call_keys, get_ceremony, GetCeremonyRequest, ceremony, CeremonyView
    );
    list!(
        /// The key inventory.
        keys_list, call_keys, list_keys, ListKeysRequest, keys, KeyView
    );
    get!(
        /// One key.
        key, call_keys, get_key, GetKeyRequest, key, KeyView
    );
    list!(
        /// Every approval.
        approvals, call_keys, list_approvals, ListApprovalsRequest, approvals, ApprovalView
    );
    list!(
        /// Scheme CA public keys.
        ca_keys, call_keys, list_ca_keys, ListCaKeysRequest, ca_keys, CaKeyView
    );
    list!(
        /// Revoked certificates.
        revoked, call_keys, list_revoked_certs, ListRevokedCertsRequest, revoked, RevokedCertView
    );
    list!(
        /// Issuer key pairs.
        issuer_keys, call_keys, list_issuer_keys, ListIssuerKeysRequest, issuer_keys, IssuerKeyView
    );
    get!(
        /// One issuer key pair, by label (the TEST CA's `issuer certify-test`).
        #[cfg(feature = "test-keys")]
        issuer_key, call_keys, get_issuer_key, GetIssuerKeyRequest, issuer_key, IssuerKeyView
    );
    list!(
        /// Issuer certificates.
        issuer_certs, call_keys, list_issuer_certs, ListIssuerCertsRequest, issuer_certs, IssuerCertView
    );
    list!(
        /// Jobs not yet erased.
        jobs, call_jobs, list_jobs, ListJobsRequest, jobs, JobView
    );
    get!(
        /// One job.
        job, call_jobs, get_job, GetJobRequest, job, JobView
    );

    /// A job's chunks, in order.
    pub(crate) fn chunks(&self, job: &str) -> Result<Vec<ChunkView>> {
        let r = self.call_jobs(|mut c| {
            let req = ListChunksRequest { linearizable: true, id: job.to_string() };
            async move { c.list_chunks(req).await }
        })?;
        Ok(r.chunks)
    }
}

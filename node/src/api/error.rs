//! The API layer's errors, and their mapping to gRPC status codes in one exhaustive `match`
//! ([`ApiError::into_status`]): a new variant cannot ship without a code.

use std::time::Duration;

use crate::raft::NodeId;
use crate::runtime::agent::ProposeError;

/// Metadata key of a `NotLeader` status: the leader's API address, when known.
pub const LEADER_METADATA: &str = "x-quill-leader";

/// Most times a request is forwarded between nodes before it is refused.
pub const MAX_HOPS: u32 = 3;

/// Why a Cluster API call failed, named by whose fault it is and carrying what the caller needs
/// to act.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The caller sent something malformed (bad command bytes, empty client id, missing field).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// This node is not the leader and could not (or was not asked to) forward; retry at the
    /// leader.
    #[error("not the leader; leader is {}", leader_text(*.leader_id, .leader_api.as_deref()))]
    NotLeader {
        /// The leader's id, when one is known.
        leader_id: Option<NodeId>,
        /// The leader's API address, when known.
        leader_api: Option<String>,
    },
    /// The request was forwarded more than [`MAX_HOPS`] times (leadership is moving); retry later.
    #[error("request forwarded {0} times without reaching a leader; leadership is changing, retry")]
    TooManyHops(u32),
    /// The write did not finish in time. It may still be applied: the outcome is unknown.
    #[error(
        "write not confirmed within {0:?}: outcome INDETERMINATE (it may still be applied; retry with the same \
         client id and serial to learn the result)"
    )]
    Indeterminate(Duration),
    /// A membership change named a node that is not a member/learner of the cluster.
    #[error("unknown node {0}: add it as a learner first")]
    UnknownNode(NodeId),
    /// The caller's view is stale (expected membership index differs) or the cluster is in a
    /// state that refuses the request (already initialised differently, change in progress).
    #[error("precondition failed: {0}")]
    Precondition(String),
    /// The leader cannot reach a quorum, or a peer could not be reached while forwarding.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The leader answered a forwarded request with this status; passed through unchanged.
    #[error("{}", .0.message())]
    Forwarded(tonic::Status),
    /// The thing asked for does not exist (a key, a ceremony, an approval).
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller's role may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request names no caller: nobody is anonymous.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller has too much in flight (uploads); retry once one finished.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The node's HSM refused or failed the operation (the message names the operation and the
    /// module, never key material).
    #[error("HSM: {0}")]
    Hsm(#[from] quill_hsm::HsmError),
    /// This node's Raft or storage failed; the node needs attention.
    #[error("node failure: {0}")]
    Internal(String),
}

fn leader_text(id: Option<NodeId>, api: Option<&str>) -> String {
    match (id, api) {
        (Some(id), Some(api)) => format!("node {id} at {api}"),
        (Some(id), None) => format!("node {id} (address unknown)"),
        (None, _) => "unknown (election in progress)".into(),
    }
}

impl ApiError {
    /// The gRPC status of this error.
    pub fn into_status(self) -> tonic::Status {
        let message = self.to_string();
        match self {
            ApiError::BadRequest(_) => tonic::Status::invalid_argument(message),
            ApiError::NotLeader { leader_api, .. } => {
                let mut status = tonic::Status::unavailable(message);
                if let Some(value) = leader_api.and_then(|a| a.parse().ok()) {
                    status.metadata_mut().insert(LEADER_METADATA, value);
                }
                status
            }
            ApiError::TooManyHops(_) => tonic::Status::unavailable(message),
            ApiError::Indeterminate(_) => tonic::Status::deadline_exceeded(message),
            ApiError::UnknownNode(_) => tonic::Status::not_found(message),
            ApiError::Precondition(_) => tonic::Status::failed_precondition(message),
            ApiError::Unavailable(_) => tonic::Status::unavailable(message),
            ApiError::Forwarded(status) => status,
            ApiError::NotFound(_) => tonic::Status::not_found(message),
            ApiError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            ApiError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            ApiError::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            // The device (module gone, slot dead, timeout, no healthy slot): try another node.
            ApiError::Hsm(e) if e.is_device_error() => tonic::Status::unavailable(message),
            // The request (wrong key, KCV mismatch, a TR-31 block that does not verify).
            ApiError::Hsm(_) => tonic::Status::failed_precondition(message),
            ApiError::Internal(_) => tonic::Status::internal(message),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.into_status()
    }
}

/// A node's own proposal (the key agent's, a worker's) that got no outcome, classed by the gRPC
/// code the same error gives a client (so both read it alike), its text unchanged.
impl From<ApiError> for ProposeError {
    fn from(e: ApiError) -> Self {
        let status = e.into_status();
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::Unavailable => ProposeError::Unavailable(message),
            tonic::Code::DeadlineExceeded => ProposeError::Indeterminate(message),
            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => ProposeError::Internal(message),
            _ => ProposeError::Refused(message),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use quill_hsm::{HsmError, SlotRef};

    use super::ApiError;
    use crate::runtime::agent::ProposeError;

    /// A slot for HSM errors in tests (shared by the API's test modules).
    pub(crate) fn at() -> Arc<SlotRef> {
        Arc::new(SlotRef { module: "libquill_hsm_sim.so".into(), slot: 0, token: "TEST".into() })
    }

    #[test]
    fn an_unavailable_hsm_is_unavailable_and_a_refused_request_is_a_precondition() {
        let gone = HsmError::Unavailable { operation: "generate_key", reason: "slot removed".into(), at: at() };
        assert_eq!(ApiError::from(gone).into_status().code(), tonic::Code::Unavailable);
        let late = HsmError::Timeout { operation: "sign", after: std::time::Duration::from_secs(5), at: at() };
        assert_eq!(ApiError::from(late).into_status().code(), tonic::Code::Unavailable);
        let none = HsmError::NoHealthySlot { operation: "sign", last: None };
        assert_eq!(ApiError::from(none).into_status().code(), tonic::Code::Unavailable);
        let smk = HsmError::NoSmk { operation: "unwrap", at: at() };
        assert_eq!(ApiError::from(smk).into_status().code(), tonic::Code::FailedPrecondition);
        let altered = HsmError::AuthenticationFailed { operation: "open", at: at() };
        assert_eq!(ApiError::from(altered).into_status().code(), tonic::Code::FailedPrecondition);
        let block = HsmError::Tr31 { operation: "tr31_import", reason: "MAC does not verify".into(), at: at() };
        assert_eq!(ApiError::from(block).into_status().code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn the_status_names_the_hsm_operation_and_slot() {
        let gone = HsmError::Unavailable { operation: "seal", reason: "slot removed".into(), at: at() };
        let status = ApiError::from(gone).into_status();
        assert_eq!(status.message(), "HSM: seal: slot removed (libquill_hsm_sim.so slot 0 (token TEST))");
    }

    #[test]
    fn a_proposal_error_keeps_its_class_and_its_text() {
        let cases = [
            (ApiError::NotLeader { leader_id: None, leader_api: None }, "unavailable"),
            (ApiError::TooManyHops(3), "unavailable"),
            (ApiError::Unavailable("no quorum".into()), "unavailable"),
            (ApiError::Forwarded(tonic::Status::unavailable("leader gone")), "unavailable"),
            (ApiError::Indeterminate(std::time::Duration::from_secs(5)), "indeterminate"),
            (ApiError::Internal("raft stopped".into()), "internal"),
            (ApiError::Forwarded(tonic::Status::internal("disk")), "internal"),
            (ApiError::BadRequest("bad command".into()), "refused"),
            (ApiError::PermissionDenied("node-2 may not".into()), "refused"),
        ];
        for (e, class) in cases {
            let text = e.to_string();
            let p = ProposeError::from(e);
            let got = match &p {
                ProposeError::Unavailable(_) => "unavailable",
                ProposeError::Indeterminate(_) => "indeterminate",
                ProposeError::Refused(_) => "refused",
                ProposeError::Internal(_) => "internal",
            };
            assert_eq!(got, class, "{text}");
            assert_eq!(p.to_string(), text);
        }
    }
}

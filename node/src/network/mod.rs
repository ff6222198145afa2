//! The Raft transport: openraft's `RaftNetworkFactory`/`RaftNetwork` over tonic channels to each
//! peer's `raft_addr`, and the `quill.v1.Raft` gRPC service that hands received RPCs to the local
//! `Raft`.
//!
//! Only members speak on this port: every connection is mutual TLS with a node certificate from
//! the node CA (`crate::tls`), each RPC's sender is the node its certificate names, that node must
//! be a member (voter or learner) of this node's current membership (a node that has none yet,
//! being added, accepts any node certificate), must not be revoked, and an AppendEntries, Vote or
//! InstallSnapshot must come from the leader or candidate it names. Messages are bounded by
//! `limits.raft_message_bytes`.
//!
//! openraft's messages travel as postcard bytes inside the `RaftPayload`/`SnapshotChunk`
//! envelopes; a response carries the whole `Result` so a remote Raft error arrives as
//! `RPCError::RemoteError`. The contract with openraft (`network/factory.rs`, `network/network.rs`):
//!
//! - `new_client` does not connect: the channel connects lazily on the first RPC and reconnects
//!   by itself after a failure.
//! - Every RPC has a deadline: `rpc_timeout_ms` for AppendEntries and Vote, and
//!   `install_snapshot_timeout_ms` for each InstallSnapshot chunk (openraft cuts snapshots into
//!   `snapshot_chunk_bytes` chunks and sends them one call at a time). A deadline that passes is
//!   `RPCError::Timeout`; a peer that cannot be reached (refused, reset, unresolvable) is
//!   `RPCError::Unreachable`, which tells openraft to back off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use quill_proto::v1::raft_client::RaftClient;
use quill_proto::v1::raft_server;
use quill_proto::v1::{RaftPayload, SnapshotChunk};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::raft::{NodeAddr, NodeId, TypeConfig};
use crate::tls::{Identity, Links, PeerCert, Revocations};

/// The Raft instance of a Quill node.
pub type Raft = openraft::Raft<TypeConfig>;

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>;

/// Makes one [`PeerClient`] per replication target.
#[derive(Debug, Clone)]
pub struct Network {
    /// This node's id (named in timeout errors).
    pub id: NodeId,
    /// Deadline of AppendEntries and Vote, and of connecting.
    pub rpc_timeout: Duration,
    /// Deadline of one InstallSnapshot chunk.
    pub snapshot_timeout: Duration,
    /// Peers dialled at another address than the one in the membership (config `[dial]`).
    pub dial: BTreeMap<NodeId, String>,
    /// This node's TLS client configuration (its node certificate; trusts the node CA).
    pub tls: Arc<rustls::ClientConfig>,
    /// What each outgoing link negotiated.
    pub links: Links,
    /// Largest message sent or accepted.
    pub max_message_bytes: usize,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            node: node.clone(),
            channel: crate::tls::channel(
                self.dial.get(&target).unwrap_or(&node.raft_addr),
                self.tls.clone(),
                self.rpc_timeout,
                None,
                Some(target),
                self.links.clone(),
            ),
            max_message_bytes: self.max_message_bytes,
            rpc_timeout: self.rpc_timeout,
            snapshot_timeout: self.snapshot_timeout,
        }
    }
}

/// The RPC client of one peer.
#[derive(Debug)]
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    node: NodeAddr,
    channel: Result<Channel, String>,
    max_message_bytes: usize,
    rpc_timeout: Duration,
    snapshot_timeout: Duration,
}

/// A transport-level failure, as an `std::error::Error` for openraft's error wrappers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, action: RPCTypes, req: &Req, timeout: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self.channel.clone().map_err(|e| RPCError::Unreachable(Unreachable::new(&TransportError(e))))?;
        let data = postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let call = async {
            match action {
                RPCTypes::InstallSnapshot => client.install_snapshot(SnapshotChunk { data }).await,
                RPCTypes::Vote => client.vote(RaftPayload { data }).await,
                _ => client.append_entries(RaftPayload { data }).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(RPCError::Timeout(Timeout { action, id: self.id, target: self.target, timeout })),
            Ok(Err(status)) => return Err(self.status_error(action, timeout, status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }

    fn status_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        timeout: Duration,
        status: tonic::Status,
    ) -> RPCError<NodeId, NodeAddr, RaftError<NodeId, E>> {
        match status.code() {
            tonic::Code::DeadlineExceeded => {
                RPCError::Timeout(Timeout { action, id: self.id, target: self.target, timeout })
            }
            // Connection refused/reset, DNS failure, peer shutting down: back off.
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let timeout = self.rpc_timeout;
        self.call(RPCTypes::AppendEntries, &rpc, timeout).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let timeout = self.snapshot_timeout;
        self.call(RPCTypes::InstallSnapshot, &rpc, timeout).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, _option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let timeout = self.rpc_timeout;
        self.call(RPCTypes::Vote, &rpc, timeout).await
    }
}

/// The `quill.v1.Raft` service: decodes a peer's RPC, hands it to the local Raft, and returns the
/// encoded `Result`.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    forward: Arc<dyn ForwardHandler>,
    revoked: Revocations,
    max_message_bytes: usize,
}

/// Who serves the writes that followers forward to this node when it leads (the client API's
/// write path; defined here so the transport does not depend on the API layer).
#[tonic::async_trait]
pub trait ForwardHandler: Send + Sync + 'static {
    /// Answer a call node `from` sent (postcard in, postcard out).
    async fn forward(&self, from: NodeId, data: &[u8]) -> Result<Vec<u8>, tonic::Status>;
}

impl RaftService {
    /// Serve RPCs into `raft`, and forwarded calls into `forward`; refuse senders whose
    /// certificate serial is in `revoked`, and messages over `max_message_bytes`.
    pub fn new(raft: Raft, forward: Arc<dyn ForwardHandler>, revoked: Revocations, max_message_bytes: usize) -> Self {
        Self { raft, forward, revoked, max_message_bytes }
    }

    /// The tonic server of this service.
    pub fn into_server(self) -> raft_server::RaftServer<Self> {
        let max = self.max_message_bytes;
        raft_server::RaftServer::new(self).max_decoding_message_size(max).max_encoding_message_size(max)
    }

    /// The member node that sent `request`: a node certificate, not revoked, a member of the
    /// current membership (or any node while this one has no membership yet).
    fn sender<T>(&self, request: &tonic::Request<T>) -> Result<NodeId, tonic::Status> {
        let cert = PeerCert::of_request(request)?;
        let id = match cert.identity {
            Identity::Node(id) => id,
            other => {
                return Err(tonic::Status::permission_denied(format!(
                    "{other} is not a node: the Raft port is for members"
                )));
            }
        };
        if self.revoked.contains(&cert.serial) {
            return Err(tonic::Status::unauthenticated(format!("node {id}'s certificate {} is revoked", cert.serial)));
        }
        let member = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let mut members = membership.nodes().map(|(n, _)| *n).peekable();
            members.peek().is_none() || members.any(|n| n == id)
        };
        if !member {
            return Err(tonic::Status::permission_denied(format!("node {id} is not a member of this cluster")));
        }
        Ok(id)
    }

    /// Refuse a Raft message whose leader or candidate is not its sender.
    fn same(sender: NodeId, named: Option<NodeId>, what: &str) -> Result<(), tonic::Status> {
        if named == Some(sender) {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "node {sender} sent a {what} in the name of {named:?}; a node speaks only for itself"
            )))
        }
    }
}

fn decode<T: DeserializeOwned>(what: &str, data: &[u8]) -> Result<T, tonic::Status> {
    postcard::from_bytes(data).map_err(|e| tonic::Status::invalid_argument(format!("malformed {what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    let data = postcard::to_stdvec(value).map_err(|e| tonic::Status::internal(format!("encoding reply: {e}")))?;
    Ok(tonic::Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let sender = self.sender(&request)?;
        let req: AppendEntriesRequest<TypeConfig> = decode("AppendEntries", &request.get_ref().data)?;
        Self::same(sender, req.vote.leader_id().voted_for(), "AppendEntries")?;
        encode(&self.raft.append_entries(req).await)
    }

    async fn vote(&self, request: tonic::Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let sender = self.sender(&request)?;
        let req: VoteRequest<NodeId> = decode("Vote", &request.get_ref().data)?;
        Self::same(sender, req.vote.leader_id().voted_for(), "Vote")?;
        encode(&self.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<SnapshotChunk>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let sender = self.sender(&request)?;
        let req: InstallSnapshotRequest<TypeConfig> = decode("InstallSnapshot", &request.get_ref().data)?;
        Self::same(sender, req.vote.leader_id().voted_for(), "InstallSnapshot")?;
        encode(&self.raft.install_snapshot(req).await)
    }

    async fn forward(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let sender = self.sender(&request)?;
        let data = self.forward.forward(sender, &request.get_ref().data).await?;
        Ok(tonic::Response::new(RaftPayload { data }))
    }
}

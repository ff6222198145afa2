//! The client API: the `quill.v1.Cluster` gRPC service ([`ClusterService`]) and the HTTP
//! endpoint for health and metrics ([`http`]).
//!
//! Writes are served by the leader: a follower forwards them to the leader's Raft port (mutual TLS
//! between nodes; at most [`MAX_HOPS`] times, so a request cannot circle while leadership moves),
//! carrying the caller its own API port authenticated. A linearizable read on a follower asks the
//! leader for a read index over the same port, waits until it applied that index, and reads
//! locally (no read is forwarded under another identity).
//!
//! Every call's caller is the identity its client certificate names ([`authenticator`]); no
//! request field can claim one. Membership calls are not forwarded: a follower answers `NotLeader` with the leader's
//! address in the message and in the `x-quill-leader` metadata. Every error leaves through
//! [`ApiError::into_status`].

mod batch;
mod error;
pub mod exchange;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{ServerState, StoredMembership};
use quill_proto::v1::cluster_server::{self, ClusterServer};
use quill_proto::v1::raft_client::RaftClient;
use quill_proto::v1::{
    AddLearnerRequest, BenchGetRequest, BenchGetResponse, BenchPutRequest, BenchPutResponse, Caller,
    ChangeMembershipRequest, InitRequest, InitResponse, MembershipResponse, NodeInfo, NodeStatus, RaftPayload,
    StatusRequest, StatusResponse, TlsLink, WriteResult,
};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub use self::error::{ApiError, LEADER_METADATA, MAX_HOPS};
use crate::identity::{Actor, CertRef, Principal, Role};
use crate::network::{ForwardHandler, Raft};
use crate::raft::{Command, NodeAddr, NodeId, Outcome, StateMachine, encode_command};
use crate::runtime::agent::KeyAgent;
use crate::tls::{Identity, PeerCert, Revocations};

type ApiResult<T> = Result<T, ApiError>;

/// The `quill.v1.Cluster` service of one node.
#[derive(Clone)]
pub struct ClusterService {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    sm: StateMachine,
    /// This node's key agent (its HSM), for the audit MAC of the requests it proposes as leader.
    agent: Option<Arc<KeyAgent>>,
    write_timeout: Duration,
    connect_timeout: Duration,
    /// Where writes queue to be packed into Raft entries ([`batch`]).
    batcher: tokio::sync::mpsc::Sender<batch::Pending>,
    /// Start time: the agent's client id, so serials never repeat across restarts.
    boot_ms: u64,
    /// The agent's next serial.
    agent_serial: std::sync::atomic::AtomicU64,
    /// Channels to other nodes' Raft ports, for forwarding writes and asking read indexes.
    peers: Mutex<HashMap<(NodeId, String), Channel>>,
    /// How this node dials its peers (mutual TLS with its node certificate).
    dialer: crate::tls::Dialer,
    /// The last divergence this node (as leader) found, for Status.
    divergence: Mutex<String>,
}

impl ClusterService {
    /// Serve the cluster API of node `id` over `raft`, reading from `sm`.
    pub fn new(
        id: NodeId,
        raft: Raft,
        sm: StateMachine,
        agent: Option<Arc<KeyAgent>>,
        write_timeout: Duration,
        connect_timeout: Duration,
        dialer: crate::tls::Dialer,
    ) -> Self {
        let batcher = batch::spawn(id, raft.clone());
        let inner = Inner {
            id,
            batcher,
            raft,
            sm,
            agent,
            write_timeout,
            connect_timeout,
            boot_ms: now_ms(),
            agent_serial: std::sync::atomic::AtomicU64::new(1),
            peers: Mutex::new(HashMap::new()),
            dialer,
            divergence: Mutex::new(String::new()),
        };
        Self { inner: Arc::new(inner) }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// This node's applied index.
    pub fn applied_index(&self) -> u64 {
        self.inner.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// Propose `cmd` as `actor` with (`client_id`, `serial`), through the leader (a follower
    /// forwards it over the Raft port). The caller built `cmd` on this node.
    pub async fn submit(
        &self,
        client_id: &str,
        serial: u64,
        actor: Actor,
        cmd: Command,
    ) -> ApiResult<crate::raft::Response> {
        // A node's own proposal carries its node certificate; another actor's (a caller's refusal
        // record) is built by `require`.
        let cert = (actor == Actor::node(self.inner.id)).then(|| self.inner.dialer.cert.clone());
        let w = Forwarded { client_id: client_id.to_string(), serial, actor, cert, cmd, hops: 0 };
        self.inner.write(w, false).await
    }

    /// Propose `cmd` as the authenticated caller `who` with (`client_id`, `serial`), through the
    /// leader. The caller built `cmd` on this node.
    pub async fn submit_as(
        &self,
        client_id: &str,
        serial: u64,
        who: &Principal,
        cmd: Command,
    ) -> ApiResult<crate::raft::Response> {
        self.inner.write(Forwarded::of(who, client_id.to_string(), serial, cmd), false).await
    }

    /// Propose a client's typed write as `who` (from its certificate) with the (client id,
    /// serial) of `caller`. A state-machine refusal becomes an error status ([`refusal`]).
    pub async fn write_for(&self, who: Principal, caller: Option<Caller>, cmd: Command) -> ApiResult<WriteResult> {
        let caller = client_caller(caller)?;
        crate::state::validate::client_command(&cmd).map_err(ApiError::BadRequest)?;
        let r = self.inner.write(Forwarded::of(&who, caller.client_id, caller.serial, cmd), false).await?;
        match r.outcome {
            Outcome::Done { object, detail } => {
                Ok(WriteResult { log_index: r.log_index, duplicate: r.duplicate, object, detail })
            }
            Outcome::Rejected { reason } => Err(refusal(reason)),
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Make a local read linearizable: on the leader, confirm leadership; on a follower, ask the
    /// leader (over the Raft port) for its read index and wait until this node applied it.
    pub async fn linearize(&self) -> ApiResult<()> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                let mut client = self.inner.forward_target(&f, 0)?;
                let data = postcard::to_stdvec(&PeerCall::ReadIndex).map_err(|e| ApiError::Internal(e.to_string()))?;
                let reply = client.forward(RaftPayload { data }).await.map_err(forwarded_error)?.into_inner();
                let index: u64 = postcard::from_bytes(&reply.data)
                    .map_err(|e| ApiError::Internal(format!("the leader's read index does not decode: {e}")))?;
                self.wait_applied(index, self.inner.write_timeout).await
            }
            Err(e) => Err(leader_check_error(e)),
        }
    }

    /// Wait until this node applied `index` (so a local read sees that write).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> ApiResult<()> {
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "a write to be applied locally")
            .await
            .map(|_| ())
            .map_err(|e| ApiError::Unavailable(format!("log index {index} not applied here yet: {e}")))
    }

    /// The tonic server of this service.
    pub fn into_server(self, max_request_bytes: usize) -> ClusterServer<Self> {
        ClusterServer::new(self).max_decoding_message_size(max_request_bytes).max_encoding_message_size(64 << 20)
    }
}

impl Inner {
    /// One lazy mutual-TLS channel per peer Raft port; the peer must present node `id`'s
    /// certificate.
    fn peer_channel(&self, id: NodeId, raft_addr: &str) -> ApiResult<Channel> {
        let mut peers = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let k = (id, raft_addr.to_string());
        if let Some(channel) = peers.get(&k) {
            return Ok(channel.clone());
        }
        let channel = self.dialer.channel(raft_addr, self.connect_timeout, id).map_err(ApiError::Unavailable)?;
        peers.insert(k, channel.clone());
        Ok(channel)
    }

    /// The leader's Raft port, for forwarding a write, given openraft's `ForwardToLeader`;
    /// `NotLeader` if there is no leader to forward to, or `hops` is used up.
    fn forward_target(&self, f: &ForwardToLeader<NodeId, NodeAddr>, hops: u32) -> ApiResult<RaftClient<Channel>> {
        if hops >= MAX_HOPS {
            return Err(ApiError::TooManyHops(hops + 1));
        }
        match (&f.leader_id, &f.leader_node) {
            (Some(id), Some(node)) if *id != self.id => self
                .peer_channel(*id, &node.raft_addr)
                .map(|c| RaftClient::new(c).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)),
            _ => Err(not_leader(f)),
        }
    }

    /// A write: MACed for the audit chain if this node leads, queued for the batcher, and
    /// forwarded to the leader's Raft port if this node does not lead. `from_peer`: it arrived
    /// from another node (forwarded), so it is checked as a client's command again.
    async fn write(&self, w: Forwarded, from_peer: bool) -> ApiResult<crate::raft::Response> {
        if w.hops > MAX_HOPS {
            return Err(ApiError::TooManyHops(w.hops));
        }
        if w.client_id.is_empty() {
            return Err(ApiError::BadRequest("client_id is empty".into()));
        }
        if from_peer {
            crate::state::validate::client_command(&w.cmd).map_err(ApiError::BadRequest)?;
        }
        // The leader MACs the request digest with the audit key before proposing it.
        let audit_mac = if self.raft.metrics().borrow().state == ServerState::Leader
            && !matches!(w.cmd, Command::Noop | Command::HashCheck | Command::AuditSeal { .. })
        {
            match &self.agent {
                Some(agent) => {
                    let digest =
                        crate::audit::request_digest(&w.client_id, w.serial, &w.actor, &encode_command(&w.cmd));
                    agent.audit_mac(crate::audit::mac_input(&digest)).await
                }
                None => None,
            }
        } else {
            None
        };
        let request = crate::raft::Request {
            client_id: w.client_id.clone(),
            serial: w.serial,
            time_ms: now_ms(),
            actor: w.actor.clone(),
            cert: w.cert.clone(),
            audit_mac,
            cmd: w.cmd.clone(),
        };
        let (done, result) = tokio::sync::oneshot::channel();
        self.batcher
            .send(batch::Pending { req: request, done })
            .await
            .map_err(|_| ApiError::Internal("the write batcher stopped".into()))?;
        let written = tokio::time::timeout(self.write_timeout, result).await;
        match written {
            Err(_) => Err(ApiError::Indeterminate(self.write_timeout)),
            Ok(Err(_)) => Err(ApiError::Internal("the write batcher dropped a write".into())),
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(batch::WriteFail::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))))) => {
                let mut client = self.forward_target(&f, w.hops)?;
                let forwarded = PeerCall::Write(Box::new(Forwarded { hops: w.hops + 1, ..w }));
                let data = postcard::to_stdvec(&forwarded).map_err(|e| ApiError::Internal(e.to_string()))?;
                let reply = client.forward(RaftPayload { data }).await.map_err(forwarded_error)?.into_inner();
                postcard::from_bytes(&reply.data)
                    .map_err(|e| ApiError::Internal(format!("the leader's answer does not decode: {e}")))
            }
            Ok(Ok(Err(batch::WriteFail::Raft(e)))) => Err(write_error(e)),
            Ok(Ok(Err(batch::WriteFail::Internal(m)))) => Err(ApiError::Internal(m)),
        }
    }

    async fn bench_get(&self, req: BenchGetRequest) -> ApiResult<BenchGetResponse> {
        // The raw read serves the benchmark's key space only; the domains answer typed queries.
        crate::state::validate::bench_key(&req.key).map_err(ApiError::PermissionDenied)?;
        let applied_index = self.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
        let value = self.sm.get(&req.key).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(BenchGetResponse { found: value.is_some(), value: value.unwrap_or_default(), applied_index })
    }

    async fn bench_put(&self, who: Principal, req: BenchPutRequest) -> ApiResult<BenchPutResponse> {
        let caller = client_caller(Some(Caller { client_id: req.client_id, serial: req.serial }))?;
        let cmd = Command::Put { key: req.key, value: req.value };
        crate::state::validate::client_command(&cmd).map_err(ApiError::BadRequest)?;
        let r = self.write(Forwarded::of(&who, caller.client_id, caller.serial, cmd), false).await?;
        match r.outcome {
            Outcome::Put { replaced } => {
                Ok(BenchPutResponse { log_index: r.log_index, duplicate: r.duplicate, replaced })
            }
            Outcome::Rejected { reason } => Err(refusal(reason)),
            other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn status(&self) -> ApiResult<NodeStatus> {
        let m = self.raft.metrics().borrow().clone();
        let committed = self
            .raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let (state_hash_index, state_hash) =
            self.sm.state_hash().await.map_err(|e| ApiError::Internal(e.to_string()))?;
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut voters = Vec::new();
        let mut learners = Vec::new();
        for (id, node) in membership.nodes() {
            let info = node_info(*id, node);
            if voter_ids.contains(id) { voters.push(info) } else { learners.push(info) }
        }
        let me = membership.get_node(&self.id).cloned().unwrap_or_default();
        Ok(NodeStatus {
            id: self.id,
            raft_addr: me.raft_addr,
            api_addr: me.api_addr,
            role: role_name(m.state).into(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            committed_index: committed.unwrap_or(0),
            leader: m.current_leader,
            voters,
            learners,
            state_hash,
            state_hash_index,
            time_ms: now_ms(),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            membership_index: membership_index(&m.membership_config),
            hsm: self.agent.as_ref().map(|a| a.status_json().to_string()).unwrap_or_default(),
            tls_links: self
                .dialer
                .links
                .snapshot()
                .into_iter()
                .map(|(peer, l)| TlsLink { peer, protocol: l.protocol, suite: l.suite, group: l.group })
                .collect(),
            divergence: self.divergence.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }

    async fn init(&self, req: InitRequest) -> ApiResult<()> {
        if req.members.is_empty() {
            return Err(ApiError::BadRequest("members is empty".into()));
        }
        let mut members = BTreeMap::new();
        for m in &req.members {
            check_addr(m.id, "raft_addr", &m.raft_addr)?;
            check_addr(m.id, "api_addr", &m.api_addr)?;
            members.insert(m.id, NodeAddr { raft_addr: m.raft_addr.clone(), api_addr: m.api_addr.clone() });
        }
        match self.raft.initialize(members.clone()).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                // Already initialised: fine if with this same membership (a retried init).
                let current = self.raft.metrics().borrow().membership_config.clone();
                let same_nodes: BTreeMap<NodeId, NodeAddr> =
                    current.membership().nodes().map(|(id, n)| (*id, n.clone())).collect();
                let voters: BTreeSet<NodeId> = current.membership().voter_ids().collect();
                if same_nodes == members && voters == members.keys().copied().collect() {
                    Ok(())
                } else {
                    Err(ApiError::Precondition(format!(
                        "cluster already initialised with a different membership (voters {voters:?})"
                    )))
                }
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => Err(ApiError::BadRequest(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ApiError::Internal(e.to_string())),
        }
    }

    async fn add_learner(&self, req: AddLearnerRequest) -> ApiResult<MembershipResponse> {
        let node = req.node.ok_or_else(|| ApiError::BadRequest("node is missing".into()))?;
        check_addr(node.id, "raft_addr", &node.raft_addr)?;
        check_addr(node.id, "api_addr", &node.api_addr)?;
        let current = self.raft.metrics().borrow().membership_config.clone();
        if let Some(existing) = current.membership().get_node(&node.id)
            && (existing.raft_addr != node.raft_addr || existing.api_addr != node.api_addr)
        {
            return Err(ApiError::Precondition(format!(
                "node {} is already a member at {existing}; remove it before adding it with other addresses",
                node.id
            )));
        }
        let addr = NodeAddr { raft_addr: node.raft_addr, api_addr: node.api_addr };
        let resp = self.raft.add_learner(node.id, addr, true).await.map_err(write_error)?;
        Ok(MembershipResponse { log_index: resp.log_id.index })
    }

    async fn change_membership(&self, req: ChangeMembershipRequest) -> ApiResult<MembershipResponse> {
        if req.voters.is_empty() {
            return Err(ApiError::BadRequest("voters is empty".into()));
        }
        let current = membership_index(&self.raft.metrics().borrow().membership_config);
        if current != req.expected_membership_index {
            return Err(ApiError::Precondition(format!(
                "membership changed: expected membership index {}, current is {current}; re-read the status and retry",
                req.expected_membership_index
            )));
        }
        let voters: BTreeSet<NodeId> = req.voters.into_iter().collect();
        let resp = self.raft.change_membership(voters, false).await.map_err(write_error)?;
        Ok(MembershipResponse { log_index: resp.log_id.index })
    }
}

/// A member address must be `host:port` with a non-zero port (a name or an IP address).
fn check_addr(id: NodeId, field: &str, addr: &str) -> ApiResult<()> {
    crate::config::check_host_port(addr)
        .map_err(|why| ApiError::BadRequest(format!("node {id}: {field} {addr:?} {why}; expected host:port")))
}

/// The log index of a stored membership (0 for none).
fn membership_index(m: &StoredMembership<NodeId, NodeAddr>) -> u64 {
    m.log_id().map(|l| l.index).unwrap_or(0)
}

fn node_info(id: NodeId, node: &NodeAddr) -> NodeInfo {
    NodeInfo { id, raft_addr: node.raft_addr.clone(), api_addr: node.api_addr.clone() }
}

/// The role names of `NodeStatus.role`.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn now_ms() -> u64 {
    // A clock before 1970 is a broken host; 0 keeps apply deterministic anyway.
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn not_leader(f: &ForwardToLeader<NodeId, NodeAddr>) -> ApiError {
    ApiError::NotLeader { leader_id: f.leader_id, leader_api: f.leader_node.as_ref().map(|n| n.api_addr.clone()) }
}

/// A forwarded call's failure: the leader's own status passes through; a transport failure to
/// the leader is `Unavailable`.
fn forwarded_error(status: Status) -> ApiError {
    ApiError::Forwarded(status)
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(p) => ApiError::Precondition(p.to_string()),
            ChangeMembershipError::EmptyMembership(m) => ApiError::BadRequest(m.to_string()),
            ChangeMembershipError::LearnerNotFound(l) => ApiError::UnknownNode(l.node_id),
        },
        RaftError::Fatal(f) => ApiError::Internal(f.to_string()),
    }
}

fn leader_check_error(e: RaftError<NodeId, CheckIsLeaderError<NodeId, NodeAddr>>) -> ApiError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => ApiError::Unavailable(q.to_string()),
        RaftError::Fatal(f) => ApiError::Internal(f.to_string()),
    }
}

impl ClusterService {
    /// The next serial of this node's own proposals (agent, workers).
    pub fn next_agent_serial(&self) -> u64 {
        self.inner.agent_serial.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// The client id of this node's own proposals: one per boot, so serials never repeat.
    pub fn agent_client_id(&self, _what: &str) -> String {
        format!("node-{}-agent-{}", self.inner.id, self.inner.boot_ms)
    }
}

#[tonic::async_trait]
impl crate::runtime::agent::Proposer for ClusterService {
    async fn propose(
        &self,
        actor: Actor,
        cmd: Command,
    ) -> Result<crate::raft::Outcome, crate::runtime::agent::ProposeError> {
        let client_id = format!("node-{}-agent-{}", self.inner.id, self.inner.boot_ms);
        let serial = self.inner.agent_serial.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let resp = self.submit(&client_id, serial, actor, cmd).await?;
        Ok(resp.outcome)
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn bench_put(&self, request: Request<BenchPutRequest>) -> Result<Response<BenchPutResponse>, Status> {
        let (who, req) = principal(request)?;
        Ok(Response::new(self.inner.bench_put(who, req).await?))
    }

    async fn bench_get(&self, request: Request<BenchGetRequest>) -> Result<Response<BenchGetResponse>, Status> {
        let (_, req) = principal(request)?;
        if req.linearizable {
            self.linearize().await?;
        }
        Ok(Response::new(self.inner.bench_get(req).await?))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        principal(request)?;
        Ok(Response::new(StatusResponse { node: Some(self.inner.status().await?) }))
    }

    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        let req = self.admin(request, "Cluster.Init").await?;
        self.inner.init(req).await?;
        Ok(Response::new(InitResponse {}))
    }

    async fn add_learner(&self, request: Request<AddLearnerRequest>) -> Result<Response<MembershipResponse>, Status> {
        let req = self.admin(request, "Cluster.AddLearner").await?;
        Ok(Response::new(self.inner.add_learner(req).await?))
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let req = self.admin(request, "Cluster.ChangeMembership").await?;
        Ok(Response::new(self.inner.change_membership(req).await?))
    }
}

/// How many state divergences this node found (the `/metrics` alarm).
pub static DIVERGENCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ClusterService {
    /// The divergence check (etcd's corruption check), every `every` while this node leads:
    /// propose a hash-check entry; every node hashes its state right after applying it; ask each
    /// member for its hash at that index and compare with this node's. A mismatch raises the
    /// alarm: in Status, in `/metrics` (`quill_state_divergences_total`) and in the audit chain.
    pub async fn check_divergence(self, every: Duration, stop: crate::server::Shutdown) {
        let stopped = stop.wait();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.divergence_round().await {
                tracing::debug!(error = %e, "divergence check skipped");
            }
        }
    }

    /// One round of [`Self::check_divergence`]; the nodes that differ.
    pub async fn divergence_round(&self) -> ApiResult<Vec<NodeId>> {
        let m = self.inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Ok(Vec::new());
        }
        let serial = self.next_agent_serial();
        let client_id = self.agent_client_id("hash");
        let r = self.submit(&client_id, serial, Actor::node(self.inner.id), Command::HashCheck).await?;
        let index = r.log_index;
        self.wait_applied(index, self.inner.write_timeout).await?;
        let mine = self.inner.sm.checkpoint(index).ok_or_else(|| ApiError::Internal("no own checkpoint".into()))?;
        let mut differ = Vec::new();
        for (id, node) in m.membership_config.membership().nodes() {
            if *id == self.inner.id {
                continue;
            }
            let Ok(mut client) = self
                .inner
                .peer_channel(*id, &node.raft_addr)
                .map(|c| RaftClient::new(c).max_decoding_message_size(1 << 20))
            else {
                continue;
            };
            let data = postcard::to_stdvec(&PeerCall::HashAt(index)).map_err(|e| ApiError::Internal(e.to_string()))?;
            let Ok(Ok(reply)) =
                tokio::time::timeout(Duration::from_secs(8), client.forward(RaftPayload { data })).await
            else {
                continue;
            };
            let theirs: Option<String> = postcard::from_bytes(&reply.into_inner().data).unwrap_or(None);
            if let Some(h) = theirs
                && h != mine
            {
                differ.push(*id);
                let what = format!(
                    "node {id}'s state differs from the leader's (node {}) at applied index {index}: hash {}… vs {}…",
                    self.inner.id,
                    &h[..12.min(h.len())],
                    &mine[..12.min(mine.len())]
                );
                tracing::error!(%what, "STATE DIVERGENCE");
                DIVERGENCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *self.inner.divergence.lock().unwrap_or_else(|p| p.into_inner()) = what.clone();
                let serial = self.next_agent_serial();
                let alarm = Command::Keys(crate::keys::KeyCommand::Alarm { node: self.inner.id, what });
                let _ = self.submit(&client_id, serial, Actor::node(self.inner.id), alarm).await;
            }
        }
        Ok(differ)
    }
}

/// The roles of the people who run the cluster (everything but partner systems, CA officers and
/// branch printers, whose endpoints are their own).
pub const STAFF: [Role; 4] = [Role::Admin, Role::Custodian, Role::Operator, Role::Auditor];

impl ClusterService {
    /// A membership call's request, if its caller is an admin (a refusal is audited).
    async fn admin<T>(&self, request: Request<T>, call: &str) -> Result<T, Status> {
        let (who, req) = principal(request)?;
        self.require(&who, &[Role::Admin], call).await?;
        Ok(req)
    }

    /// Refuse `who` unless its role is one of `roles`. A refusal is audited with the caller's
    /// identity: proposed in its name as a `KeyCommand::Denied`, which apply records and rejects
    /// (the call is refused whether or not the record could be written in time).
    pub async fn require(&self, who: &Principal, roles: &[Role], call: &str) -> Result<(), ApiError> {
        let Err(reason) = crate::domain::require_role(&who.actor, roles) else { return Ok(()) };
        Err(self.deny(who, call, reason).await)
    }

    /// The tenant `who` acts in for `call`: the one it asked for, else its certificate's one
    /// tenant (or the default tenant for a certificate acting for every tenant). A tenant its
    /// certificate does not name is refused and audited like a role refusal.
    pub async fn tenant(&self, who: &Principal, asked: &str, call: &str) -> Result<String, ApiError> {
        match who.cert.tenants.resolve(asked) {
            Ok(t) => Ok(t),
            Err(reason) => Err(self.deny(who, call, format!("{}: {reason}", who.actor)).await),
        }
    }

    /// Refuse `who` for `call` unless its certificate is the bureau's ([`crate::identity::Tenants::is_bureau`]:
    /// it names no tenant, or every tenant). The audit chain holds every tenant's records (key
    /// ids, job ids, identities); a certificate bound to named tenants does not read it.
    pub async fn require_bureau(&self, who: &Principal, call: &str) -> Result<(), ApiError> {
        if who.cert.tenants.is_bureau() {
            return Ok(());
        }
        let reason = format!(
            "{} acts for {} only; the audit chain holds every tenant's records: reading it needs a bureau \
             certificate (one naming no tenant, or quill:tenant/*)",
            who.actor, who.cert.tenants
        );
        Err(self.deny(who, call, reason).await)
    }

    /// Audit a refusal of `call` for `who` that is not about its role (e.g. a partner's block the
    /// HSM would not open): the attempt is in the chain with the reason.
    pub async fn audit_refused(&self, who: &Principal, call: &str, reason: &str) {
        let _ = self.deny(who, call, reason.to_string()).await;
    }

    /// Audit a refusal of `call` for `who` and return it as `PermissionDenied`.
    async fn deny(&self, who: &Principal, call: &str, reason: String) -> ApiError {
        let denied = Command::Keys(crate::keys::KeyCommand::Denied { call: call.to_string(), reason: reason.clone() });
        let w =
            Forwarded::of(who, format!("denied-{}", self.agent_client_id("denied")), self.next_agent_serial(), denied);
        if tokio::time::timeout(Duration::from_secs(2), self.inner.write(w, false)).await.is_err() {
            tracing::warn!(%call, caller = %who.actor, "a refusal could not be audited in time");
        }
        ApiError::PermissionDenied(reason)
    }
}

/// What one node asks another over the Raft port (postcard in `RaftPayload`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerCall {
    /// A write for the leader to propose.
    Write(Box<Forwarded>),
    /// The leader's read index (answered as a postcard `u64` once the leader confirmed it leads
    /// and applied it).
    ReadIndex,
    /// The state hash this node took at a hash-check entry (answered as a postcard
    /// `Option<String>` once this node applied it, or `None`).
    HashAt(u64),
}

/// A write forwarded from a follower to the leader over the Raft port (postcard in
/// `RaftPayload`): a command the follower built (its own, or from a client's typed request) with
/// the caller it established.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    /// The caller's client id.
    pub client_id: String,
    /// The caller's serial.
    pub serial: u64,
    /// Who asked.
    pub actor: Actor,
    /// The certificate the caller presented to the first node.
    pub cert: Option<CertRef>,
    /// What to do.
    pub cmd: Command,
    /// How many times it was forwarded already.
    pub hops: u32,
}

impl Forwarded {
    /// `cmd` in the name of the authenticated caller `who`, with (`client_id`, `serial`), not yet
    /// forwarded.
    pub fn of(who: &Principal, client_id: String, serial: u64, cmd: Command) -> Self {
        Forwarded { client_id, serial, actor: who.actor.clone(), cert: Some(who.cert.clone()), cmd, hops: 0 }
    }
}

#[tonic::async_trait]
impl ForwardHandler for ClusterService {
    async fn forward(&self, from: NodeId, data: &[u8]) -> Result<Vec<u8>, Status> {
        let call: PeerCall = match postcard::take_from_bytes(data) {
            Ok((c, [])) => c,
            Ok((_, rest)) => {
                return Err(Status::invalid_argument(format!("malformed peer call: {} trailing bytes", rest.len())));
            }
            Err(e) => return Err(Status::invalid_argument(format!("malformed peer call: {e}"))),
        };
        let encoded = match call {
            PeerCall::Write(w) => {
                if w.actor.role == Role::Node && w.actor != Actor::node(from) {
                    return Err(Status::permission_denied(format!(
                        "node {from} forwarded a write as {}; a node acts only as itself",
                        w.actor
                    )));
                }
                postcard::to_stdvec(&self.inner.write(*w, true).await?)
            }
            PeerCall::HashAt(index) => {
                let applied = self.wait_applied(index, Duration::from_secs(5)).await.is_ok();
                postcard::to_stdvec(&applied.then(|| self.inner.sm.checkpoint(index)).flatten())
            }
            PeerCall::ReadIndex => {
                let index = match self.inner.raft.ensure_linearizable().await {
                    Ok(log_id) => log_id.map(|l| l.index).unwrap_or(0),
                    Err(e) => return Err(leader_check_error(e).into_status()),
                };
                postcard::to_stdvec(&index)
            }
        };
        encoded.map_err(|e| Status::internal(format!("encoding the answer: {e}")))
    }
}

/// The interceptor in front of every client service: the caller is the identity its verified
/// client certificate names, which must be a role (never a node), unexpired and not revoked.
/// The [`Principal`] goes into the request's extensions.
pub fn authenticator(
    revoked: Revocations,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |mut req: Request<()>| {
        let cert = PeerCert::of_request(&req)?;
        let actor = match cert.identity {
            Identity::Client(actor) => actor,
            Identity::Node(id) => {
                return Err(Status::permission_denied(format!(
                    "node {id}'s certificate is not a client identity (the API port serves people and services)"
                )));
            }
        };
        if revoked.contains(&cert.serial) {
            return Err(Status::unauthenticated(format!("certificate {} of {actor} is revoked", cert.serial)));
        }
        let principal =
            Principal { actor, cert: CertRef { serial: cert.serial, key_fp: cert.key_fp, tenants: cert.tenants } };
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The authenticated caller and the request's message.
pub fn principal<T>(req: Request<T>) -> Result<(Principal, T), Status> {
    let who = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("no caller identity: the authentication layer is missing".into()))?;
    Ok((who, req.into_inner()))
}

/// The (client id, serial) of a client's write: present, with a client id.
pub fn client_caller(c: Option<Caller>) -> ApiResult<Caller> {
    let c = c.ok_or_else(|| ApiError::BadRequest("the request has no caller (client id and serial)".into()))?;
    if c.client_id.is_empty() {
        return Err(ApiError::BadRequest("caller.client_id is empty".into()));
    }
    Ok(c)
}

/// A state-machine refusal as an API error: a role refusal is `PermissionDenied`, anything else
/// `FailedPrecondition`.
pub fn refusal(reason: String) -> ApiError {
    if reason.contains(crate::domain::ROLE_REFUSAL) {
        ApiError::PermissionDenied(reason)
    } else {
        ApiError::Precondition(format!("refused: {reason}"))
    }
}

//! Reaching a cluster: which endpoints to talk to (flag, environment, a dev cluster's `D/env`),
//! gRPC channels to them, and the calls every cluster command shares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use quill_proto::v1::cluster_client::ClusterClient;
use quill_proto::v1::{NodeStatus, StatusRequest};
use tonic::transport::{Channel, Endpoint};

use crate::exit_codes::CliError;

mod session;
pub(crate) use session::{Session, Who};

/// How long one Status call may take before the node counts as unreachable.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the cluster commands find the cluster, in the order they are tried: `--endpoint` (or
/// `QUILL_ENDPOINT`), then `QUILL_ENDPOINTS`, then the `env` file of the dev cluster in `--dir`
/// (or `QUILL_DEV_DIR`, or `.quill/dev`).
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// A node's client API address (`http://host:port` or `host:port`).
    #[arg(long, env = "QUILL_ENDPOINT", help_heading = "Cluster")]
    pub endpoint: Option<String>,
    /// Every node's API address, comma-separated (a dev cluster's `D/env` sets it).
    #[arg(long, env = "QUILL_ENDPOINTS", value_delimiter = ',', help_heading = "Cluster")]
    pub endpoints: Vec<String>,
    /// A dev cluster's directory, whose `env` file names the endpoints.
    #[arg(long = "dev-dir", env = "QUILL_DEV_DIR", help_heading = "Cluster")]
    pub dev_dir: Option<PathBuf>,
}

impl Target {
    /// Every endpoint known, normalised to `http://host:port`, first the one `--endpoint` names.
    pub fn endpoints(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if let Some(e) = &self.endpoint {
            out.push(normalize(e));
        }
        out.extend(self.endpoints.iter().filter(|e| !e.trim().is_empty()).map(|e| normalize(e)));
        if out.is_empty() {
            let dir = self.dev_dir.clone().unwrap_or_else(|| PathBuf::from(crate::lab::dev::DEFAULT_DIR));
            let env = read_env_file(&dir.join("env")).context(
                "no cluster endpoint: pass --endpoint, set QUILL_ENDPOINT, or start a dev cluster (quill dev up)",
            )?;
            if let Some(list) = env.get("QUILL_ENDPOINTS") {
                out.extend(list.split(',').filter(|e| !e.trim().is_empty()).map(normalize));
            }
            if let Some(e) = env.get("QUILL_ENDPOINT") {
                out.push(normalize(e));
            }
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|e| seen.insert(e.clone()));
        if out.is_empty() {
            return Err(anyhow!(
                "no cluster endpoint: pass --endpoint, set QUILL_ENDPOINT, or source a dev cluster's env file"
            ));
        }
        Ok(out)
    }
}

/// `host:port` → `http://host:port`; a URL is kept as it is.
pub fn normalize(addr: &str) -> String {
    let a = addr.trim();
    if a.starts_with("http://") || a.starts_with("https://") { a.to_string() } else { format!("http://{a}") }
}

/// Parse a shell-sourceable `KEY=value` file (comments and blank lines skipped, quotes removed).
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_string(), v.trim().trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    Ok(out)
}

/// A lazily connecting client for `endpoint` (`http://host:port`); `timeout` bounds every call.
pub fn client(endpoint: &str, timeout: Duration) -> Result<ClusterClient<Channel>> {
    let ep = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("bad endpoint {endpoint:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true);
    Ok(ClusterClient::new(ep.connect_lazy()).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// One node's Status, or the one-line reason it could not be had.
pub async fn status(endpoint: &str) -> Result<NodeStatus> {
    let mut c = client(endpoint, STATUS_TIMEOUT)?;
    let resp = c.status(StatusRequest {}).await.map_err(|s| anyhow!("{endpoint}: {}", grpc_reason(&s)))?;
    resp.into_inner().node.ok_or_else(|| anyhow!("{endpoint}: Status answered without a node"))
}

/// The leader's API endpoint, found by asking the given endpoints in turn.
pub async fn find_leader(endpoints: &[String]) -> Result<(String, NodeStatus)> {
    let mut last = anyhow!("no endpoint to ask");
    for ep in endpoints {
        match status(ep).await {
            Ok(st) => {
                let Some(leader) = st.leader else {
                    last = anyhow!("{ep}: node {} knows no leader (role {})", st.id, st.role);
                    continue;
                };
                if leader == st.id {
                    return Ok((ep.clone(), st));
                }
                let Some(info) = st.voters.iter().chain(st.learners.iter()).find(|n| n.id == leader) else {
                    last = anyhow!("{ep}: leader {leader} is not in node {}'s membership", st.id);
                    continue;
                };
                let lep = normalize(&info.api_addr);
                match status(&lep).await {
                    Ok(lst) if lst.role == "leader" => return Ok((lep, lst)),
                    Ok(lst) => last = anyhow!("{lep}: node {} says it is {}, not leader", lst.id, lst.role),
                    Err(e) => last = e,
                }
            }
            Err(e) => last = e,
        }
    }
    Err(anyhow::Error::from(CliError::Unreachable(format!("no leader found: {last:#}"))))
}

/// A gRPC status as one line: code and message.
pub fn grpc_reason(s: &tonic::Status) -> String {
    let msg = s.message().lines().next().unwrap_or("");
    if msg.is_empty() { format!("{:?}", s.code()) } else { format!("{:?}: {msg}", s.code()) }
}

/// The metadata that names the caller of every Keys and Jobs call (until client certificates do).
pub const ACTOR_METADATA: &str = "x-quill-actor";

/// Names the caller on every call it carries ([`ACTOR_METADATA`]).
#[derive(Debug, Clone)]
pub struct Identify(pub tonic::metadata::AsciiMetadataValue);

impl tonic::service::Interceptor for Identify {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(ACTOR_METADATA, self.0.clone());
        Ok(req)
    }
}

/// A channel whose calls name their caller.
pub type Chan = tonic::service::interceptor::InterceptedService<Channel, Identify>;

/// A lazily connecting channel to `endpoint` whose calls name `who` and time out after `timeout`.
pub fn identified(endpoint: &str, who: &Identify, timeout: Duration) -> Result<Chan> {
    let ep = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("bad endpoint {endpoint:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true);
    Ok(tonic::service::interceptor::InterceptedService::new(ep.connect_lazy(), who.clone()))
}

/// How long a command keeps trying the cluster's endpoints (an election takes a second or two; a
/// paused or dead node is passed over after its connect or call deadline).
pub const RETRY_BUDGET: Duration = Duration::from_secs(20);

/// Worth trying again, here or on another endpoint: the node could not be reached, or could not
/// answer for now (no leader, election, forwarding failed).
pub fn retryable(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
}

/// A failure that happened before the request could have reached a node (the connection was
/// refused or never made), so a write cannot have been applied.
pub fn not_sent(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.message().to_ascii_lowercase().contains("connect")
}

/// The last failure of each endpoint tried, as one line: `ep: reason; ep: reason`.
#[derive(Debug, Default)]
pub struct Failures(Vec<(String, String)>);

impl Failures {
    /// Remember `reason` as `endpoint`'s latest failure.
    pub fn record(&mut self, endpoint: &str, reason: String) {
        match self.0.iter_mut().find(|(e, _)| e == endpoint) {
            Some(slot) => slot.1 = reason,
            None => self.0.push((endpoint.to_string(), reason)),
        }
    }
}

impl std::fmt::Display for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no endpoint to try");
        }
        let parts: Vec<String> = self.0.iter().map(|(e, r)| format!("{e}: {r}")).collect();
        f.write_str(&parts.join("; "))
    }
}

/// Call `f` on each endpoint in turn until one answers, going round again with backoff while
/// the failures are retryable and [`RETRY_BUDGET`] lasts. An answer that is an error (refused,
/// not found, bad request) ends it at once as [`CliError::Refused`]; running out of endpoints
/// and time is [`CliError::Unreachable`] naming each endpoint and its last failure.
pub async fn read_retrying<T, F, Fut>(endpoints: &[String], mut f: F) -> Result<T, CliError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let start = std::time::Instant::now();
    let mut failures = Failures::default();
    for round in 0u32.. {
        for ep in endpoints {
            match f(ep.clone()).await {
                Ok(v) => return Ok(v),
                Err(s) if retryable(&s) => failures.record(ep, grpc_reason(&s)),
                Err(s) => return Err(CliError::Refused(format!("{ep}: {}", grpc_reason(&s)))),
            }
        }
        if start.elapsed() >= RETRY_BUDGET {
            break;
        }
        tokio::time::sleep(backoff(round)).await;
    }
    Err(CliError::Unreachable(format!("no node answered within {} s ({failures})", RETRY_BUDGET.as_secs())))
}

/// Like [`read_retrying`] for a write that carries its caller's (client id, serial): retried with
/// the same pair, so it applies at most once. Out of time, it is [`CliError::Unreachable`] if no
/// attempt can have reached a node, and [`CliError::Indeterminate`] (with the pair) otherwise.
pub async fn write_retrying<T, F, Fut>(
    endpoints: &[String],
    client_id: &str,
    serial: u64,
    mut f: F,
) -> Result<T, CliError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let start = std::time::Instant::now();
    let mut failures = Failures::default();
    let mut maybe_sent = false;
    for round in 0u32.. {
        for ep in endpoints {
            match f(ep.clone()).await {
                Ok(v) => return Ok(v),
                Err(s) if retryable(&s) => {
                    maybe_sent |= !not_sent(&s);
                    failures.record(ep, grpc_reason(&s));
                }
                Err(s) => return Err(CliError::Refused(format!("{ep}: {}", grpc_reason(&s)))),
            }
        }
        if start.elapsed() >= RETRY_BUDGET {
            break;
        }
        tokio::time::sleep(backoff(round)).await;
    }
    let reason = format!("no node confirmed the write within {} s ({failures})", RETRY_BUDGET.as_secs());
    if maybe_sent {
        Err(CliError::Indeterminate { reason, client_id: client_id.to_string(), serial })
    } else {
        Err(CliError::Unreachable(reason))
    }
}

/// A failed call as an error of its class: unreachable when the node could not be reached,
/// refused when it answered with an error.
pub fn call_error(endpoint: &str, s: &tonic::Status) -> anyhow::Error {
    let reason = format!("{endpoint}: {}", grpc_reason(s));
    if not_sent(s) { CliError::Unreachable(reason).into() } else { CliError::Refused(reason).into() }
}

/// 200 ms, doubling, at most 2 s.
fn backoff(round: u32) -> Duration {
    Duration::from_millis((200u64 << round.min(4)).min(2_000))
}

//! Reaching a cluster: which endpoints to talk to (flag, environment, a dev cluster's `D/env`),
//! gRPC channels to them, and the calls every cluster command shares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use quill_proto::v1::cluster_client::ClusterClient;
use quill_proto::v1::{NodeStatus, StatusRequest};
use tonic::transport::{Channel, Endpoint};

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
            let dir = self.dev_dir.clone().unwrap_or_else(|| PathBuf::from(crate::dev::DEFAULT_DIR));
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
    Err(last.context("no leader found"))
}

/// A gRPC status as one line: code and message.
pub fn grpc_reason(s: &tonic::Status) -> String {
    let msg = s.message().lines().next().unwrap_or("");
    if msg.is_empty() { format!("{:?}", s.code()) } else { format!("{:?}: {msg}", s.code()) }
}

/// A `Put` command, encoded as the node decodes it.
pub fn encode_put(key: String, value: Vec<u8>) -> Vec<u8> {
    quill_node::raft::encode_command(&quill_node::raft::Command::Put { key, value })
}

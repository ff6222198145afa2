//! Reaching a cluster: which endpoints to talk to (flag, environment, a dev cluster's `D/env`),
//! as whom (the client certificate of `--identity DIR`, or `--as role:name` on a dev cluster),
//! mutual-TLS gRPC channels to them, and the calls every cluster command shares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use quill_proto::v1::cluster_client::ClusterClient;
use quill_proto::v1::{NodeStatus, StatusRequest};
use quill_trust::identity::{Actor, Tenants};
use quill_trust::tls::{Identity, Links, PkiDir, TlsFiles};
use tonic::transport::Channel;

use crate::exit_codes::CliError;

mod session;
mod views;
pub(crate) use session::{CALL_TIMEOUT, Session, Who};
pub(crate) use views::rsa_public;

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
    /// Your identity: a directory holding `cert.pem` (your client certificate, which names your
    /// role and name), `key.pem` and `ca.pem` (the node CA).
    #[arg(long, env = "QUILL_IDENTITY", value_name = "DIR", help_heading = "Identity")]
    pub identity: Option<PathBuf>,
    /// Dev clusters only: act as `role:name` with that dev identity (issued from the dev
    /// cluster's own CA on first use). Wins over `--identity`.
    #[arg(long = "as", env = "QUILL_ACTOR", value_name = "ROLE:NAME", help_heading = "Identity")]
    pub actor: Option<String>,
}

/// A client identity, ready to dial: its TLS configuration and the actor its certificate names.
#[derive(Clone)]
pub struct Tls {
    /// The rustls client configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// Who the certificate names.
    pub actor: Actor,
    /// Where it came from.
    pub dir: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.actor, self.dir.display())
    }
}

/// What this process's links negotiated.
pub fn links() -> &'static Links {
    static LINKS: std::sync::OnceLock<Links> = std::sync::OnceLock::new();
    LINKS.get_or_init(Links::default)
}

/// The identity directory of `actor` in dev cluster `dev_dir`, issued from the dev PKI on first
/// use. Dev identities act for every tenant (a tenant-bound identity: `quill pki issue --tenant`).
pub fn dev_identity(dev_dir: &Path, actor: &Actor) -> Result<PathBuf> {
    let dir = dev_dir.join("identities").join(format!("{}-{}", actor.role, actor.name));
    if dir.join("cert.pem").exists() {
        return Ok(dir);
    }
    let pki = PkiDir::open(&dev_dir.join("pki")).map_err(|e| {
        CliError::Usage(format!(
            "--as {actor}: no dev identity in {} and no dev PKI to issue one ({e}); --as works on dev clusters, \
             elsewhere use --identity DIR",
            dir.display()
        ))
    })?;
    pki.issue_once(&Identity::Client(actor.clone()), &Tenants::All, &dir)
        .with_context(|| format!("issuing the dev identity {actor}"))?;
    Ok(dir)
}

impl Target {
    /// The dev cluster directory this target refers to.
    pub fn dev_dir(&self) -> PathBuf {
        self.dev_dir.clone().unwrap_or_else(|| PathBuf::from(crate::lab::dev::DEFAULT_DIR))
    }

    /// The caller's identity directory: `--as` (dev), else `--identity`, else the dev env file's.
    pub fn identity_dir(&self) -> Result<PathBuf> {
        if let Some(a) = &self.actor {
            let actor = Actor::parse(a).map_err(|e| CliError::Usage(format!("--as: {e}")))?;
            return dev_identity(&self.dev_dir(), &actor);
        }
        if let Some(d) = &self.identity {
            return Ok(d.clone());
        }
        if let Ok(env) = read_env_file(&self.dev_dir().join("env"))
            && let Some(d) = env.get("QUILL_IDENTITY")
        {
            return Ok(PathBuf::from(d));
        }
        Err(CliError::Usage(
            "say who you are: --identity DIR (or QUILL_IDENTITY), or --as role:name on a dev cluster".into(),
        )
        .into())
    }

    /// The caller's TLS identity.
    pub fn tls(&self) -> Result<Tls> {
        let dir = self.identity_dir()?;
        let files = TlsFiles::in_dir(&dir);
        let named = files.identity().map_err(|e| CliError::Usage(format!("identity {}: {e}", dir.display())))?;
        let Identity::Client(actor) = named.identity else {
            return Err(CliError::Usage(format!(
                "identity {}: a node certificate is not a client identity",
                dir.display()
            ))
            .into());
        };
        let config = quill_trust::tls::client_config(&files)
            .map_err(|e| CliError::Usage(format!("identity {}: {e}", dir.display())))?;
        Ok(Tls { config, actor, dir })
    }

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

/// `host:port` (or `http://host:port`) → `https://host:port`: every link is TLS.
pub fn normalize(addr: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    let hostport = a.trim_start_matches("https://").trim_start_matches("http://");
    format!("https://{hostport}")
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

/// A lazily connecting mutual-TLS channel to `endpoint` as `tls`; `timeout` bounds every call.
pub fn channel(tls: &Tls, endpoint: &str, timeout: Duration) -> Result<Channel> {
    quill_trust::tls::channel(endpoint, tls.config.clone(), CONNECT_TIMEOUT, Some(timeout), None, links().clone())
        .map_err(|e| anyhow!("{e}"))
}

/// A lazily connecting client for `endpoint`; `timeout` bounds every call.
pub fn client(tls: &Tls, endpoint: &str, timeout: Duration) -> Result<ClusterClient<Channel>> {
    Ok(ClusterClient::new(channel(tls, endpoint, timeout)?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// One node's Status, or the one-line reason it could not be had.
pub async fn status(tls: &Tls, endpoint: &str) -> Result<NodeStatus> {
    let mut c = client(tls, endpoint, STATUS_TIMEOUT)?;
    let resp = c.status(StatusRequest {}).await.map_err(|s| anyhow!("{endpoint}: {}", grpc_reason(&s)))?;
    resp.into_inner().node.ok_or_else(|| anyhow!("{endpoint}: Status answered without a node"))
}

/// The leader's API endpoint, found by asking the given endpoints in turn.
pub async fn find_leader(tls: &Tls, endpoints: &[String]) -> Result<(String, NodeStatus)> {
    let mut last = anyhow!("no endpoint to ask");
    for ep in endpoints {
        match status(tls, ep).await {
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
                match status(tls, &lep).await {
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

/// A channel of a session (mutual TLS; the caller is the certificate's identity).
pub type Chan = Channel;

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

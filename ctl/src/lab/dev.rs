//! `quill dev up|down`: a local cluster of `quilld` processes on loopback.
//!
//! Layout of the directory `D` (the operators' contract, DESIGN.md §11):
//!
//! ```text
//! D/env                    QUILL_ENDPOINT, QUILL_ENDPOINTS, QUILL_DEV_DIR, QUILL_IDENTITY (shell-sourceable)
//! D/pki/                   the dev PKI: node CA and client CA (keys 0600; `quill pki`)
//! D/identities/<role>-<n>/ client identities (`cert.pem`, `key.pem`, `ca.pem`); `admin-dev` is the
//!                          env file's default, `--as role:name` picks (and first issues) another
//! D/node-<id>/node.toml    the node's config (quilld's command line names it)
//! D/node-<id>/tls/         its node certificate (quill:node/<id>), key, node CA and client CA
//! D/node-<id>/data/        its data dir
//! D/node-<id>/quilld.log   its stdout and stderr
//! D/node-<id>/pid          its process id while it runs
//! ```
//!
//! `dev up` on a directory that already holds a cluster restarts the nodes that are not running,
//! with the same configs, and does not initialise again: the membership is in the data dirs.

use std::collections::BTreeMap;
use std::fs;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use quill_proto::v1::{InitRequest, NodeInfo};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client;
use quill_trust::tls::{Identity, PkiDir};

/// Where `dev up` puts the cluster unless told otherwise.
pub const DEFAULT_DIR: &str = ".quill/dev";
/// How long each node gets to answer `/health` after it starts.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the cluster gets to elect a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `dev down` waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `quill dev up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Number of nodes, all voters [default: 5]. A directory that already holds a cluster keeps
    /// its own.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=9))]
    nodes: Option<u64>,
    /// The cluster's directory.
    #[arg(long, default_value = DEFAULT_DIR, value_name = "D")]
    dir: PathBuf,
    /// Node i listens on P+i (raft), P+100+i (API) and P+200+i (HTTP) [default: free ports].
    #[arg(long, value_name = "P")]
    base_port: Option<u16>,
    /// The quilld binary [default: `quilld` next to the `quill` executable].
    #[arg(long, env = "QUILL_QUILLD", value_name = "PATH")]
    quilld: Option<PathBuf>,
    /// Each node's HSM: `sim` (its own hsm-sim token in D/node-<id>/hsm), `softhsm` (its own
    /// SoftHSM 2 token in D/node-<id>/softhsm, with the audited host path allowed for what
    /// SoftHSM cannot do inside), or `none` (the node replicates but does no key work). TEST
    /// PINs. Kept from the first `up` of a directory.
    #[arg(long, default_value = "sim", value_parser = ["sim", "softhsm", "none"])]
    hsm: String,
}

/// The TEST user PIN of a dev cluster's hsm-sim tokens (written into each node's config).
const DEV_PIN: &str = "1234-TEST";
/// The TEST SO PIN of a dev cluster's hsm-sim tokens.
const DEV_SO_PIN: &str = "87654321-TEST";

/// Options of `quill dev down`.
#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// The cluster's directory.
    #[arg(long, default_value = DEFAULT_DIR, value_name = "D")]
    dir: PathBuf,
    /// Remove the directory (configs, data, logs) once the nodes have stopped.
    #[arg(long)]
    wipe: bool,
}

/// The part of a node's config this command writes and reads back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeConfig {
    node_id: u64,
    raft_addr: String,
    api_addr: String,
    http_addr: String,
    data_dir: PathBuf,
    log_format: String,
    tls: TlsSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hsm: Option<HsmSection>,
}

/// The `[tls]` table of a dev node.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TlsSection {
    cert: PathBuf,
    key: PathBuf,
    peer_ca: PathBuf,
    client_ca: PathBuf,
}

/// The identity the env file names (`--as` picks others).
pub const DEV_ADMIN: &str = "admin:dev";

/// The `[hsm]` table of a dev node: one hsm-sim slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HsmSection {
    slots: Vec<DevSlot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DevSlot {
    module: PathBuf,
    token_label: String,
    pin: String,
    label_prefix: String,
    #[serde(default)]
    allow_host_key_material: bool,
}

/// Where Debian installs SoftHSM 2's module.
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Initialise node `i`'s SoftHSM 2 token in `node_dir/softhsm` (its own `softhsm2.conf`, which
/// `quilld` is started with), and return the `[hsm]` table that uses it.
fn init_softhsm_token(node_dir: &Path, i: u64) -> Result<HsmSection> {
    if !Path::new(SOFTHSM_MODULE).is_file() {
        bail!("SoftHSM 2 is not installed ({SOFTHSM_MODULE}); run scripts/setup.sh or use --hsm sim");
    }
    let dir = node_dir.join("softhsm");
    fs::create_dir_all(dir.join("tokens")).with_context(|| format!("cannot create {}", dir.display()))?;
    let conf = dir.join("softhsm2.conf");
    let text = format!("directories.tokendir = {}\nobjectstore.backend = file\n", dir.join("tokens").display());
    fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;
    let label = format!("TEST-dev-node-{i}");
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", &label, "--so-pin", DEV_SO_PIN, "--pin", DEV_PIN])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .context("cannot run softhsm2-util")?;
    if !out.status.success() {
        bail!("softhsm2-util --init-token for node {i}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(HsmSection {
        slots: vec![DevSlot {
            module: SOFTHSM_MODULE.into(),
            token_label: label,
            pin: DEV_PIN.into(),
            label_prefix: "TEST-quill".into(),
            allow_host_key_material: true,
        }],
    })
}

/// One node of the dev cluster on disk.
#[derive(Debug, Clone)]
struct DevNode {
    dir: PathBuf,
    config_path: PathBuf,
    config: NodeConfig,
}

impl DevNode {
    fn pid_path(&self) -> PathBuf {
        self.dir.join("pid")
    }
    fn log_path(&self) -> PathBuf {
        self.dir.join("quilld.log")
    }
    fn endpoint(&self) -> String {
        client::normalize(&self.config.api_addr)
    }
    fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.config.node_id,
            raft_addr: self.config.raft_addr.clone(),
            api_addr: self.config.api_addr.clone(),
        }
    }
    /// The pid of this node's quilld if one runs (the pid file names a live process whose command
    /// line names this node's config).
    fn running_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_path()).ok()?.trim().parse().ok()?;
        process_is(pid, &self.config_path).then_some(pid)
    }
}

/// `quill dev up`.
pub fn up(args: &UpArgs, json: bool) -> Result<u8> {
    let rt = runtime()?;
    let quilld = quilld_path(args.quilld.as_deref())?;
    fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = fs::canonicalize(&args.dir).with_context(|| format!("cannot resolve {}", args.dir.display()))?;

    let existing = load_nodes(&dir)?;
    let fresh = existing.is_empty();
    let pki = match PkiDir::open(&dir.join("pki")) {
        Ok(p) => p,
        Err(_) => PkiDir::init(&dir.join("pki")).context("creating the dev PKI")?,
    };
    let admin = quill_trust::identity::Actor::parse(DEV_ADMIN).map_err(|e| anyhow!(e))?;
    let admin_dir = client::dev_identity(&dir, &admin)?;
    let target = client::Target {
        endpoint: None,
        endpoints: Vec::new(),
        dev_dir: Some(dir.clone()),
        identity: Some(admin_dir.clone()),
        actor: None,
    };
    let tls = target.tls()?;
    let nodes = if fresh {
        write_configs(&dir, &pki, args.nodes.unwrap_or(5), args.base_port, &args.hsm)?
    } else {
        if let Some(n) = args.nodes
            && existing.len() as u64 != n
        {
            eprintln!(
                "quill: {} already holds a {}-node cluster; restarting it as it is",
                dir.display(),
                existing.len()
            );
        }
        existing
    };

    for n in &nodes {
        if let Some(pid) = n.running_pid() {
            say(json, &format!("node {}: already running (pid {pid})", n.config.node_id));
            continue;
        }
        let pid = spawn(&quilld, n)?;
        say(json, &format!("node {}: started quilld (pid {pid}), log {}", n.config.node_id, n.log_path().display()));
    }
    for n in &nodes {
        wait_health(n)?;
    }
    say(json, "all nodes answer /health");

    // A fresh cluster needs Init; so does one whose first `dev up` stopped before Init (its
    // first node knows no voters).
    let first = &nodes[0];
    let needs_init = fresh || rt.block_on(client::status(&tls, &first.endpoint()))?.voters.is_empty();
    if needs_init {
        let members: Vec<NodeInfo> = nodes.iter().map(DevNode::info).collect();
        rt.block_on(async {
            let mut c = client::client(&tls, &first.endpoint(), Duration::from_secs(10))?;
            c.init(InitRequest { members })
                .await
                .map_err(|s| anyhow!("Init on node {} failed: {}", first.config.node_id, client::grpc_reason(&s)))
        })?;
        say(json, &format!("initialised the cluster on node {} with {} voters", first.config.node_id, nodes.len()));
    }

    let endpoints: Vec<String> = nodes.iter().map(DevNode::endpoint).collect();
    let leader = rt.block_on(wait_leader(&tls, &endpoints, LEADER_TIMEOUT))?;

    let env_path = dir.join("env");
    let env = format!(
        "QUILL_ENDPOINT={}\nQUILL_ENDPOINTS={}\nQUILL_DEV_DIR={}\nQUILL_IDENTITY={}\n",
        endpoints[0],
        endpoints.join(","),
        dir.display(),
        admin_dir.display()
    );
    write_atomic(&env_path, env.as_bytes())?;

    if json {
        let nodes_json: Vec<_> = nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.config.node_id,
                    "pid": n.running_pid(),
                    "raft_addr": n.config.raft_addr,
                    "api_addr": n.config.api_addr,
                    "http_addr": n.config.http_addr,
                    "config": n.config_path,
                    "log": n.log_path(),
                })
            })
            .collect();
        let doc = json!({
            "dir": dir, "env": env_path, "initialised": needs_init, "leader": leader,
            "endpoint": endpoints[0], "endpoints": endpoints, "nodes": nodes_json,
        });
        println!("{doc}");
    } else {
        println!("cluster of {} nodes up in {}; leader is node {leader}", nodes.len(), dir.display());
        println!();
        println!("Use it from this shell:");
        println!("  set -a; . {}; set +a", env_path.display());
        println!("  quill cluster status");
        println!("  quill bench raft");
        println!("Stop it:");
        println!("  quill dev down --dir {}", dir.display());
    }
    Ok(crate::exit_codes::OK)
}

/// `quill dev down`.
pub fn down(args: &DownArgs, json: bool) -> Result<u8> {
    if !args.dir.exists() {
        bail!("{} does not exist: no dev cluster there", args.dir.display());
    }
    let dir = fs::canonicalize(&args.dir).with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let nodes = load_nodes(&dir)?;
    let mut stopped = Vec::new();
    let mut running = Vec::new();
    for n in &nodes {
        if let Some(pid) = n.running_pid() {
            signal(pid, "TERM")?;
            running.push((n, pid));
        } else {
            let _ = fs::remove_file(n.pid_path());
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for (n, pid) in running {
        let mut how = "SIGTERM";
        while process_is(pid, &n.config_path) {
            if Instant::now() >= deadline {
                signal(pid, "KILL")?;
                how = "SIGKILL";
                let kill_deadline = Instant::now() + Duration::from_secs(5);
                while process_is(pid, &n.config_path) {
                    if Instant::now() >= kill_deadline {
                        bail!("node {} (pid {pid}) survived SIGKILL", n.config.node_id);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = fs::remove_file(n.pid_path());
        say(json, &format!("node {}: stopped (pid {pid}, {how})", n.config.node_id));
        stopped.push(json!({"id": n.config.node_id, "pid": pid, "signal": how}));
    }
    if args.wipe {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        say(json, &format!("removed {}", dir.display()));
    }
    if json {
        println!("{}", json!({"dir": dir, "stopped": stopped, "wiped": args.wipe}));
    } else if stopped.is_empty() {
        println!("no node of {} was running", dir.display());
    }
    Ok(crate::exit_codes::OK)
}

/// Progress lines go to stderr with `--json` (stdout holds the one document), else to stdout.
fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// `quilld`: the given path, or the one next to this executable.
fn quilld_path(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("cannot find the quill executable")?;
    let p = exe.with_file_name("quilld");
    if !p.is_file() {
        bail!("no quilld next to {} (set QUILL_QUILLD or pass --quilld)", exe.display());
    }
    Ok(p)
}

/// The nodes already configured under `dir`, by id.
fn load_nodes(dir: &Path) -> Result<Vec<DevNode>> {
    let mut nodes = BTreeMap::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|s| s.strip_prefix("node-")).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let config_path = entry.path().join("node.toml");
        if !config_path.is_file() {
            continue;
        }
        let text =
            fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: NodeConfig =
            toml::from_str(&text).with_context(|| format!("cannot parse {}", config_path.display()))?;
        if config.node_id != id {
            bail!("{} says node_id = {}, its directory says {id}", config_path.display(), config.node_id);
        }
        nodes.insert(id, DevNode { dir: entry.path(), config_path, config });
    }
    Ok(nodes.into_values().collect())
}

/// Write node-1..node-n with fresh ports and node certificates; returns the nodes.
fn write_configs(dir: &Path, pki: &PkiDir, n: u64, base_port: Option<u16>, hsm: &str) -> Result<Vec<DevNode>> {
    let addrs: Vec<[String; 3]> = match base_port {
        Some(p) => (1..=n)
            .map(|i| {
                let port = |off: u64| -> Result<String> {
                    let v = u64::from(p) + off + i;
                    let v = u16::try_from(v).map_err(|_| anyhow!("--base-port {p} leaves the port range"))?;
                    Ok(format!("127.0.0.1:{v}"))
                };
                Ok([port(0)?, port(100)?, port(200)?])
            })
            .collect::<Result<_>>()?,
        None => {
            let ports = free_ports(3 * n as usize)?;
            ports.chunks(3).map(|c| [c[0].to_string(), c[1].to_string(), c[2].to_string()]).collect()
        }
    };
    let mut nodes = Vec::new();
    for (i, [raft, api, http]) in (1..=n).zip(addrs) {
        let node_dir = dir.join(format!("node-{i}"));
        let data_dir = node_dir.join("data");
        fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
        let hsm = match hsm {
            "sim" => Some(init_sim_token(&node_dir, i)?),
            "softhsm" => Some(init_softhsm_token(&node_dir, i)?),
            _ => None,
        };
        let tls_dir = node_dir.join("tls");
        pki.issue(&Identity::Node(i), &["127.0.0.1".into(), "localhost".into()], Default::default(), &tls_dir)
            .with_context(|| format!("issuing node {i}'s certificate"))?;
        let tls = TlsSection {
            cert: tls_dir.join("cert.pem"),
            key: tls_dir.join("key.pem"),
            peer_ca: tls_dir.join("ca.pem"),
            client_ca: tls_dir.join("client-ca.pem"),
        };
        let config = NodeConfig {
            node_id: i,
            tls,
            raft_addr: raft,
            api_addr: api,
            http_addr: http,
            data_dir,
            log_format: "text".to_string(),
            hsm,
        };
        let config_path = node_dir.join("node.toml");
        let text = toml::to_string(&config).context("encode node config")?;
        write_atomic(&config_path, format!("# written by `quill dev up`\n{text}").as_bytes())?;
        nodes.push(DevNode { dir: node_dir, config_path, config });
    }
    Ok(nodes)
}

/// Initialise node `i`'s hsm-sim token in `node_dir/hsm` with `quill-hsm init-token` (next to
/// this executable), and return the `[hsm]` table that uses it.
fn init_sim_token(node_dir: &Path, i: u64) -> Result<HsmSection> {
    let exe = std::env::current_exe().context("cannot find the quill executable")?;
    let bin = exe.parent().ok_or_else(|| anyhow!("the quill executable has no directory"))?;
    let module = bin.join("libquill_hsm_sim.so");
    let tool = bin.join("quill-hsm");
    if !module.is_file() || !tool.is_file() {
        bail!("no hsm-sim next to {} (build the workspace, or use --hsm none)", exe.display());
    }
    let hsm_dir = node_dir.join("hsm");
    fs::create_dir_all(&hsm_dir).with_context(|| format!("cannot create {}", hsm_dir.display()))?;
    let label = format!("TEST-dev-node-{i}");
    let out = Command::new(&tool)
        .args(["init-token", "--slot", "0", "--label", &label, "--so-pin", DEV_SO_PIN, "--pin", DEV_PIN])
        .env("QUILL_HSM_DIR", &hsm_dir)
        .env_remove("QUILL_HSM_CONF")
        .output()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if !out.status.success() {
        bail!("quill-hsm init-token for node {i}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(HsmSection {
        slots: vec![DevSlot {
            module,
            token_label: label,
            pin: DEV_PIN.into(),
            label_prefix: "TEST-quill".into(),
            allow_host_key_material: false,
        }],
    })
}

/// `count` distinct free loopback ports, below the ephemeral range
/// ([`quill_trust::loopback::free_loopback_addrs`]).
fn free_ports(count: usize) -> Result<Vec<SocketAddr>> {
    quill_trust::loopback::free_loopback_addrs(count).context("pick free loopback ports")
}

/// Write a file the node's secrets may be in (its token PIN) readable by its owner only (0600 from
/// creation), atomically.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    quill_trust::tls::pki::write_file(path, data, 0o600).with_context(|| format!("cannot write {}", path.display()))
}

/// Start quilld for `n` in its own process group (so a Ctrl-C in this terminal leaves it running).
fn spawn(quilld: &Path, n: &DevNode) -> Result<u32> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(n.log_path())
        .with_context(|| format!("cannot open {}", n.log_path().display()))?;
    let child = Command::new(quilld)
        .arg("--config")
        .arg(&n.config_path)
        .env("QUILL_HSM_DIR", n.dir.join("hsm"))
        .env("SOFTHSM2_CONF", n.dir.join("softhsm").join("softhsm2.conf"))
        .env_remove("QUILL_HSM_CONF")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", quilld.display()))?;
    let pid = child.id();
    fs::write(n.pid_path(), format!("{pid}\n")).with_context(|| format!("cannot write {}", n.pid_path().display()))?;
    Ok(pid)
}

/// Wait until the node's `/health` answers 200, or fail with the end of its log.
fn wait_health(n: &DevNode) -> Result<()> {
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    loop {
        let last = match http_get(&n.config.http_addr, "/health") {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => format!("HTTP {code}: {}", body.lines().next().unwrap_or("")),
            Err(e) => format!("{e:#}"),
        };
        // Not `running_pid`: between fork and exec the child's command line is still `quill`'s,
        // which once made a node that was starting look dead.
        let started: Option<u32> = fs::read_to_string(n.pid_path()).ok().and_then(|p| p.trim().parse().ok());
        if !started.is_some_and(alive) {
            bail!(
                "node {} exited during start-up; last log line: {}",
                n.config.node_id,
                last_line(&n.log_path()).unwrap_or_default()
            );
        }
        if Instant::now() >= deadline {
            bail!("node {} did not answer /health within {HEALTH_TIMEOUT:?} ({last})", n.config.node_id);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Poll Status on every endpoint until one node is leader and a majority agrees on it.
async fn wait_leader(tls: &client::Tls, endpoints: &[String], timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no status yet");
    loop {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        let mut leader_says = None;
        for ep in endpoints {
            match client::status(tls, ep).await {
                Ok(st) => {
                    if let Some(l) = st.leader {
                        *votes.entry(l).or_default() += 1;
                    }
                    if st.role == "leader" {
                        leader_says = Some(st.id);
                    }
                    last = format!("node {}: role {}, term {}, leader {:?}", st.id, st.role, st.term, st.leader);
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        if let Some(l) = leader_says
            && votes.get(&l).copied().unwrap_or(0) * 2 > endpoints.len()
        {
            return Ok(l);
        }
        if Instant::now() >= deadline {
            bail!("no leader within {timeout:?} (last seen: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP GET of a node's `/health` or `/metrics` (hyper's client, 2 s at most): (status code,
/// body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use http_body_util::BodyExt as _;
    let uri: hyper::Uri = format!("http://{addr}{path}").parse().with_context(|| format!("bad address {addr:?}"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("async runtime")?;
    rt.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let get = async {
            let resp = client.get(uri).await.with_context(|| format!("GET http://{addr}{path}"))?;
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await.with_context(|| format!("reading http://{addr}{path}"))?;
            anyhow::Ok((code, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(2), get)
            .await
            .map_err(|_| anyhow!("GET http://{addr}{path}: no answer within 2 s"))?
    })
}

fn last_line(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string)
}

/// Is `pid` a live (not zombie) process?
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z")
}

/// Is `pid` a live (not zombie) process whose command line names `config`?
fn process_is(pid: u32, config: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the parenthesised command name.
    if stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z") {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let cfg = config.to_string_lossy();
    cmdline.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg) == cfg)
}

/// Send a signal by name (`TERM`, `KILL`) with kill(1).
fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context("cannot run kill")?;
    if !st.success() && fs::metadata(format!("/proc/{pid}")).is_ok() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

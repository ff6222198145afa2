//! End-to-end tests that start real multi-node Quill clusters: `quilld` processes on loopback, each
//! with its own data dir, config and log file in a per-test temporary directory.
//!
//! The fixture is [`Cluster`]: it writes each node's `node.toml` on free loopback ports, starts the
//! `quilld` that Cargo built next to the test executable (`target/release/quilld`), waits for
//! `/health`, initialises the cluster and waits for a leader. It offers client helpers (write,
//! read, status), fault knobs (SIGKILL, SIGTERM, SIGSTOP/SIGCONT, restart) and waiters that poll
//! Status with a timeout and a reason, never a bare sleep. Every process is killed when the
//! fixture drops. Set `QUILL_TEST_KEEP=1` to keep the directory (configs, data, logs) after a run.
//!
//! With [`ClusterOptions::containers`] the same fixture runs each node as a container on the
//! machine's Docker engine instead ([`containers`]): its own address on a per-cluster network,
//! and the faults a process cannot have (network disconnect, partitions by blackhole routes).
//!
//! Tests live in `tests/tests/tNN_<what>.rs` (t10 basic replication, t20 faults, t30 life cycle,
//! t40 bad input, t50 snapshots, t70 the `quill` CLI) and log `--- step` lines.

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use std::sync::Arc;

use quill_node::raft::Outcome;
use quill_node::tls::{Identity, PkiDir, TlsFiles};
use quill_proto::v1::cluster_client::ClusterClient;
use quill_proto::v1::{
    BenchGetRequest, BenchPutRequest, BenchPutResponse, InitRequest, NodeInfo, NodeStatus, StatusRequest,
};
use tonic::transport::Channel;

pub use quill_node::raft::Command as QuillCommand;

pub mod containers;
mod proxy;
pub mod secrets;
pub use proxy::FaultProxy;

/// Log one step of a test story.
pub fn step(msg: &str) {
    eprintln!("--- {msg}");
}

/// The directory of the binaries Cargo built with this test or tool (`target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the executable's path");
    // A test: target/release/deps/<test>-<hash>; a tool (quill-chaos): target/release/<tool>.
    let dir = exe.parent().expect("the executable sits in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().unwrap_or(dir) } else { dir }.to_path_buf()
}

/// A binary built by `cargo build --release --workspace`, or a panic that says so.
pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.is_file(), "{} not found: build the workspace first (cargo build --release --workspace)", p.display());
    p
}

/// `count` distinct free loopback ports, below the ephemeral range
/// ([`quill_node::config::free_loopback_addrs`]).
pub fn free_addrs(count: usize) -> Vec<SocketAddr> {
    quill_node::config::free_loopback_addrs(count).expect("free loopback ports")
}

/// The `[raft]` table of every node's config.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_logs_since_last: u64,
    pub max_in_snapshot_log_to_keep: u64,
    pub rpc_timeout_ms: u64,
    pub write_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            rpc_timeout_ms: 2000,
            write_timeout_ms: 10_000,
        }
    }
}

/// How to build a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes, ids 1..=nodes, all voters.
    pub nodes: u64,
    pub raft: RaftSettings,
    /// Route every node-to-node Raft link through its own [`FaultProxy`] (for partitions).
    pub proxies: bool,
    /// Give every node its own hsm-sim token (initialised with `quill-hsm init-token` in
    /// `node-<id>/hsm`, PIN [`TEST_PIN`]) and an `[hsm]` section, so it enrols and does key work.
    pub hsm: bool,
    /// With `hsm`: these nodes get a SoftHSM 2 token instead (in `node-<id>/softhsm`, the slot
    /// allowing the audited host path), so one cluster mixes modules.
    pub softhsm_nodes: Vec<u64>,
    /// With `hsm` (hsm-sim nodes): tokens per node, one per hsm-sim slot (0 or 1: one; at most 2,
    /// hsm-sim's default slots). Faults are injected per node through `node-<id>/hsm/faults.toml`.
    pub hsm_slots: u32,
    /// With `hsm` (hsm-sim nodes): the slots offer `CKM_QUILL_TR31_TRANSLATE` (`kbpk_translate`
    /// in `node-<id>/hsm/quill-hsm.toml`, the module's `QUILL_HSM_CONF`), as for an SMK rotation.
    pub hsm_translate: bool,
    /// How often the leader runs the divergence check, ms (by default an hour: tests that compare
    /// applied indexes do not want its entries; t92 sets it short).
    pub divergence_check_ms: u64,
    /// Run each node as a container of the node image on a network of the cluster's own (hsm-sim
    /// nodes only; the engine must answer: check with [`containers::Engine::or_skip`] first).
    pub containers: bool,
    /// Run each `quilld` under libfaketime (Debian's `libfaketime`, preloaded; in containers from
    /// the node image, which carries the host's copy), its wall clock offset by what
    /// `node-<id>/faketime.rc` holds (`+0` at the start; see [`Cluster::skew_clock`]). The
    /// monotonic clock, which Raft's timers use, is left alone.
    pub clock_skew: bool,
}

/// libfaketime's preload library, where Debian's `libfaketime` installs it.
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that runs a `quilld` under libfaketime with the offset in `node_dir/faketime.rc`
/// (written `+0` when missing): re-read at most every second; real-time clocks only.
fn faketime_env(node_dir: &Path) -> [(&'static str, String); 4] {
    let rc = node_dir.join("faketime.rc");
    if !rc.exists() {
        fs::write(&rc, "+0\n").unwrap_or_else(|e| panic!("{}: {e}", rc.display()));
    }
    [
        ("LD_PRELOAD", FAKETIME_LIB.to_owned()),
        ("FAKETIME_TIMESTAMP_FILE", rc.display().to_string()),
        ("FAKETIME_CACHE_DURATION", "1".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}

/// Point `cmd` at hsm-sim's configuration in `hsm_dir` when the cluster wrote one
/// ([`ClusterOptions::hsm_translate`]); otherwise the defaults for `QUILL_HSM_DIR`.
fn hsm_conf(cmd: &mut Command, hsm_dir: &Path) {
    let conf = hsm_dir.join("quill-hsm.toml");
    if conf.exists() {
        cmd.env("QUILL_HSM_CONF", conf);
    } else {
        cmd.env_remove("QUILL_HSM_CONF");
    }
}

/// SoftHSM 2's module, where Debian installs it.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Whether SoftHSM 2 is installed; if not, a test that needs it skips (printing why) unless
/// `QUILL_REQUIRE_SOFTHSM=1` (set by `make test`), where it fails.
pub fn softhsm_available() -> bool {
    let present = Path::new(SOFTHSM_MODULE).is_file()
        && Command::new("softhsm2-util").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !present {
        assert!(
            std::env::var("QUILL_REQUIRE_SOFTHSM").as_deref() != Ok("1"),
            "SoftHSM 2 is required (QUILL_REQUIRE_SOFTHSM=1) but {SOFTHSM_MODULE} or softhsm2-util is missing"
        );
        eprintln!("SKIP: SoftHSM 2 is not installed ({SOFTHSM_MODULE}); run scripts/setup.sh");
    }
    present
}

/// The user PIN of the test clusters' hsm-sim tokens (TEST tokens only).
pub const TEST_PIN: &str = "1234-TEST";
/// Their SO PIN.
pub const TEST_SO_PIN: &str = "87654321-TEST";

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 5,
            raft: RaftSettings::default(),
            proxies: false,
            hsm: false,
            softhsm_nodes: Vec::new(),
            hsm_slots: 1,
            hsm_translate: false,
            divergence_check_ms: 3_600_000,
            containers: false,
            clock_skew: false,
        }
    }
}

/// One `quilld` of the cluster.
#[derive(Debug)]
pub struct Node {
    pub id: u64,
    pub raft_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    child: Option<Child>,
    /// In a containerised cluster: how its container is made.
    pub container: Option<containers::NodeSpec>,
    /// Cached clients (as [`ADMIN`]; channels reconnect by themselves after a restart): calls,
    /// status.
    api: ClusterClient<Channel>,
    status_api: ClusterClient<Channel>,
}

impl Node {
    /// `https://` URL of the client API.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.api_addr)
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("quilld.log")
    }
    /// The running process's id, if started and not reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    fn info(&self) -> NodeInfo {
        NodeInfo { id: self.id, raft_addr: self.raft_addr.to_string(), api_addr: self.api_addr.to_string() }
    }
}

/// A cluster of real `quilld` processes in a temporary directory; killed on drop.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub nodes: BTreeMap<u64, Node>,
    pub opts: ClusterOptions,
    /// With `opts.proxies`: the link from node `.0` to node `.1`'s Raft service.
    pub links: BTreeMap<(u64, u64), FaultProxy>,
    quilld: PathBuf,
    /// The cluster's PKI (`root/pki`): node CA, client CA.
    pub pki: PkiDir,
    /// With `opts.containers`: the engine, the node image and the cluster's network.
    pub docker: Option<Docker>,
}

/// A containerised cluster's engine, image and network.
#[derive(Debug)]
pub struct Docker {
    pub engine: containers::Engine,
    pub image: String,
    pub net: containers::Net,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("root", &self.root).field("nodes", &self.nodes.keys()).finish()
    }
}

impl Cluster {
    /// Write configs, start every node, wait for `/health`, Init on node 1 with all as voters, and
    /// wait for a leader.
    pub async fn start(name: &str, opts: ClusterOptions) -> Cluster {
        let all: Vec<u64> = (1..=opts.nodes).collect();
        Cluster::start_with_members(name, opts, &all).await
    }

    /// Like [`Cluster::start`], but only `members` form the cluster; the other nodes run and wait
    /// to be added (`quill cluster add`).
    pub async fn start_with_members(name: &str, opts: ClusterOptions, members: &[u64]) -> Cluster {
        let mut c = Cluster::configure(name, opts);
        let how = if c.docker.is_some() { "containers" } else { "processes" };
        step(&format!("start {} quilld {how} in {}", c.opts.nodes, c.root.display()));
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in &ids {
            c.spawn(*id);
        }
        for id in &ids {
            c.wait_health(*id).await;
        }
        step(&format!("init the cluster on node {} with nodes {members:?} as voters", members[0]));
        let infos: Vec<NodeInfo> = c.nodes.values().filter(|n| members.contains(&n.id)).map(Node::info).collect();
        let mut cl = c.client(members[0]);
        cl.init(InitRequest { members: infos }).await.expect("Init");
        let leader = c.wait_leader(members, Duration::from_secs(20), "a leader after init").await;
        step(&format!("leader is node {leader}"));
        c
    }

    /// Write every node's config and make its directories; start nothing. Needs a tokio runtime
    /// (the clients' channels are made here).
    pub fn configure(name: &str, opts: ClusterOptions) -> Cluster {
        let quilld = binary("quilld");
        let dir = tempfile::Builder::new().prefix(&format!("quill-{name}-")).tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let docker = opts.containers.then(|| {
            assert!(opts.softhsm_nodes.is_empty() && !opts.proxies, "containers: hsm-sim nodes, no proxies");
            assert!(
                !opts.clock_skew || Path::new(FAKETIME_LIB).exists(),
                "containers with clock skew: the node image takes libfaketime from the host ({FAKETIME_LIB}: \
                 Debian's libfaketime, which scripts/setup.sh installs)"
            );
            let engine = containers::Engine::connect().expect("a Docker engine (check with Engine::or_skip)");
            let image = engine.node_image(&bin_dir()).expect("the node image");
            let net = engine.create_network(&format!("quill-{name}")).expect("the cluster's network");
            let [a, b, c] = net.prefix;
            step(&format!("containers: image {image}, network {} ({a}.{b}.{c}.0/24)", net.name));
            Docker { engine, image, net }
        });
        let addrs = match &docker {
            Some(d) => (1..=opts.nodes)
                .flat_map(|i| [7100, 7101, 7102].map(|port| SocketAddr::new(d.net.ip(i).into(), port)))
                .collect(),
            None => free_addrs(3 * opts.nodes as usize),
        };
        let sim_module = if docker.is_some() {
            PathBuf::from(containers::SIM_MODULE)
        } else {
            bin_dir().join("libquill_hsm_sim.so")
        };
        let pki = PkiDir::init(&root.join("pki")).expect("the cluster's PKI");
        let admin = identity_in(&pki, &root, ADMIN);
        let mut links = BTreeMap::new();
        if opts.proxies {
            for (i, from) in (1..=opts.nodes).enumerate() {
                for (j, to) in (1..=opts.nodes).enumerate() {
                    if i != j {
                        links.insert((from, to), FaultProxy::start(addrs[3 * j]));
                    }
                }
            }
        }
        let mut nodes = BTreeMap::new();
        for (i, a) in (1..=opts.nodes).zip(addrs.chunks(3)) {
            let node_dir = root.join(format!("node-{i}"));
            fs::create_dir_all(node_dir.join("data")).expect("node dir");
            let r = &opts.raft;
            let config = format!(
                "node_id = {i}\nraft_addr = \"{}\"\napi_addr = \"{}\"\nhttp_addr = \"{}\"\ndata_dir = \"{}\"\n\
                 log_format = \"text\"\n\n[raft]\nheartbeat_interval_ms = {}\nelection_timeout_min_ms = {}\n\
                 election_timeout_max_ms = {}\nsnapshot_logs_since_last = {}\nmax_in_snapshot_log_to_keep = {}\n\
                 rpc_timeout_ms = {}\nwrite_timeout_ms = {}\n\n[limits]\ndivergence_check_ms = {}\n",
                a[0],
                a[1],
                a[2],
                node_dir.join("data").display(),
                r.heartbeat_interval_ms,
                r.election_timeout_min_ms,
                r.election_timeout_max_ms,
                r.snapshot_logs_since_last,
                r.max_in_snapshot_log_to_keep,
                r.rpc_timeout_ms,
                r.write_timeout_ms,
                opts.divergence_check_ms,
            );
            let mut config = config;
            if opts.proxies {
                config.push_str("\n[dial]\n");
                for ((from, to), proxy) in &links {
                    if *from == i {
                        config.push_str(&format!("{to} = \"{}\"\n", proxy.addr));
                    }
                }
            }
            if opts.hsm && opts.softhsm_nodes.contains(&i) {
                let dir = node_dir.join("softhsm");
                fs::create_dir_all(dir.join("tokens")).expect("softhsm dir");
                let conf = dir.join("softhsm2.conf");
                fs::write(
                    &conf,
                    format!("directories.tokendir = {}\nobjectstore.backend = file\n", dir.join("tokens").display()),
                )
                .expect("write softhsm2.conf");
                let out = Command::new("softhsm2-util")
                    .args(["--init-token", "--free", "--label", &format!("TEST-node-{i}")])
                    .args(["--so-pin", TEST_SO_PIN, "--pin", TEST_PIN])
                    .env("SOFTHSM2_CONF", &conf)
                    .output()
                    .expect("run softhsm2-util");
                assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
                config.push_str(&format!(
                    "\n[hsm]\n[[hsm.slots]]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"TEST-node-{i}\"\npin = \"{TEST_PIN}\"\nlabel_prefix = \"TEST-quill\"\nallow_host_key_material = true\n"
                ));
            } else if opts.hsm {
                let hsm_dir = node_dir.join("hsm");
                fs::create_dir_all(&hsm_dir).expect("hsm dir");
                if opts.hsm_translate {
                    let mut conf = format!(
                        "token_dir = {:?}\nfault_file = {:?}\n",
                        hsm_dir.display().to_string(),
                        hsm_dir.join("faults.toml").display().to_string()
                    );
                    for id in 0..2 {
                        conf.push_str(&format!("\n[[slot]]\nid = {id}\nkbpk_translate = true\n"));
                    }
                    fs::write(hsm_dir.join("quill-hsm.toml"), conf).expect("write quill-hsm.toml");
                }
                config.push_str("\n[hsm]\n");
                for slot in 0..opts.hsm_slots.clamp(1, 2) {
                    let label = if slot == 0 { format!("TEST-node-{i}") } else { format!("TEST-node-{i}-s{slot}") };
                    let mut init = Command::new(binary("quill-hsm"));
                    init.args(["init-token", "--slot", &slot.to_string(), "--label", &label])
                        .args(["--so-pin", TEST_SO_PIN, "--pin", TEST_PIN])
                        .env("QUILL_HSM_DIR", &hsm_dir);
                    hsm_conf(&mut init, &hsm_dir);
                    let out = init.output().expect("run quill-hsm init-token");
                    assert!(out.status.success(), "quill-hsm init-token: {}", String::from_utf8_lossy(&out.stderr));
                    config.push_str(&format!(
                        "[[hsm.slots]]\nmodule = \"{}\"\ntoken_label = \"{label}\"\npin = \"{TEST_PIN}\"\nlabel_prefix = \"TEST-quill\"\n",
                        sim_module.display()
                    ));
                }
            }
            let tls = node_dir.join("tls");
            pki.issue(&Identity::Node(i), &["127.0.0.1".into()], Default::default(), &tls).expect("node certificate");
            config.push_str(&format!(
                "\n[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\npeer_ca = \"{0}/ca.pem\"\nclient_ca = \"{0}/client-ca.pem\"\n",
                tls.display()
            ));
            let config_path = node_dir.join("node.toml");
            fs::write(&config_path, config).expect("write node.toml");
            let container = docker.as_ref().map(|d| {
                let hsm_dir = node_dir.join("hsm");
                let mut env = vec![format!("QUILL_HSM_DIR={}", hsm_dir.display())];
                if hsm_dir.join("quill-hsm.toml").exists() {
                    env.push(format!("QUILL_HSM_CONF={}", hsm_dir.join("quill-hsm.toml").display()));
                }
                if opts.clock_skew {
                    env.extend(faketime_env(&node_dir).into_iter().map(|(k, v)| format!("{k}={v}")));
                }
                containers::NodeSpec {
                    name: format!("{}-n{i}", d.net.name),
                    ip: d.net.ip(i),
                    args: vec!["--config".into(), config_path.display().to_string()],
                    env,
                    dirs: vec![node_dir.clone()],
                }
            });
            nodes.insert(
                i,
                Node {
                    id: i,
                    raft_addr: a[0],
                    api_addr: a[1],
                    http_addr: a[2],
                    dir: node_dir,
                    config_path,
                    child: None,
                    container,
                    api: client_for(&admin, &a[1].to_string(), Duration::from_secs(5)),
                    status_api: client_for(&admin, &a[1].to_string(), Duration::from_secs(2)),
                },
            );
        }
        Cluster { dir: Some(dir), root, nodes, opts, links, quilld, pki, docker }
    }

    /// The TLS client configuration of `actor` (`role:name`), issued from the cluster's client CA
    /// on first use (the same files `quill --as` uses).
    pub fn identity(&self, actor: &str) -> Arc<rustls::ClientConfig> {
        identity_in(&self.pki, &self.root, actor)
    }

    /// A channel from node `from` (with its own node certificate, as a member or an insider who
    /// stole it would) to node `to`'s Raft port.
    pub fn peer_channel(&self, from: u64, to: u64) -> Channel {
        let files = TlsFiles::in_dir(&self.node(from).dir.join("tls"));
        let cfg = quill_node::tls::client_config(&files).expect("node TLS config");
        quill_node::tls::channel(
            &self.node(to).raft_addr.to_string(),
            cfg,
            Duration::from_secs(1),
            Some(Duration::from_secs(10)),
            Some(to),
            Default::default(),
        )
        .expect("a valid address")
    }

    /// A TLS channel to `addr` that trusts the node CA but presents no client certificate.
    pub fn channel_without_cert(&self, addr: std::net::SocketAddr) -> Channel {
        let mut roots = rustls::RootCertStore::empty();
        for c in quill_node::tls::load_certs(&self.pki.ca_pem("node-ca")).expect("node CA") {
            roots.add(c).expect("root");
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(quill_node::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        tls_channel(&Arc::new(cfg), &addr.to_string(), Duration::from_secs(5))
    }

    /// A channel to node `id`'s API as `actor`.
    pub fn channel_as(&self, id: u64, actor: &str) -> Channel {
        tls_channel(&self.identity(actor), &self.node(id).api_addr.to_string(), Duration::from_secs(5))
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.get(&id).unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Start node `id`'s quilld (stdout and stderr appended to its log).
    pub fn spawn(&mut self, id: u64) {
        if let Some(d) = &self.docker {
            let spec = self.node(id).container.clone().expect("a container spec");
            d.engine.start_node(&d.image, &d.net, &spec, &d.net.name).expect("start the node's container");
            return;
        }
        let quilld = self.quilld.clone();
        let node = self.nodes.get_mut(&id).unwrap_or_else(|| panic!("no node {id}"));
        assert!(node.child.is_none(), "node {id} already runs");
        let log = fs::OpenOptions::new().create(true).append(true).open(node.log_path()).expect("open log");
        let mut cmd = Command::new(&quilld);
        cmd.arg("--config")
            .arg(&node.config_path)
            .env("QUILL_HSM_DIR", node.dir.join("hsm"))
            .env("SOFTHSM2_CONF", node.dir.join("softhsm").join("softhsm2.conf"));
        hsm_conf(&mut cmd, &node.dir.join("hsm"));
        if self.opts.clock_skew {
            cmd.envs(faketime_env(&node.dir));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn quilld");
        node.child = Some(child);
    }

    /// Wait until node `id` answers `/health` with 200.
    pub async fn wait_health(&mut self, id: u64) {
        let http = self.node(id).http_addr;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(http, "/health") {
                return;
            }
            if let Some((d, spec)) = self.docker.as_ref().zip(self.node(id).container.as_ref()) {
                let running = d.engine.running(&spec.name).unwrap_or(false);
                assert!(running, "node {id}'s container stopped during start-up; log:\n{}", self.log_tail(id));
                assert!(Instant::now() < deadline, "node {id} did not answer /health in 30 s:\n{}", self.log_tail(id));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let node = self.nodes.get_mut(&id).expect("node");
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(st)) = child.try_wait()
            {
                panic!("node {id} exited during start-up ({st}); log:\n{}", tail(&node.log_path(), 30));
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not answer /health in 30 s:\n{}",
                tail(&node.log_path(), 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(name) = self.container_name(id) {
            let e = &self.docker.as_ref().expect("engine").engine;
            let _ = e.kill(&name, "SIGKILL");
            e.wait_stopped(&name, Duration::from_secs(10)).expect("the container stops");
            return;
        }
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL node `id` through a shared fixture; the process is reaped when the fixture drops
    /// (or by [`Cluster::kill`]).
    pub fn sigkill(&self, id: u64) {
        if let Some(name) = self.container_name(id) {
            self.docker.as_ref().expect("engine").engine.kill(&name, "SIGKILL").expect("SIGKILL");
            return;
        }
        signal(self.node(id).pid().expect("node runs"), "KILL");
    }

    /// SIGTERM node `id` and wait for it to exit (SIGKILL after 10 s).
    pub fn terminate(&mut self, id: u64) {
        if let Some(name) = self.container_name(id) {
            self.docker.as_ref().expect("engine").engine.stop(&name, Duration::from_secs(10)).expect("stop");
            return;
        }
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(mut child) = node.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                if Instant::now() >= deadline {
                    eprintln!("node {id} ignored SIGTERM for 10 s; SIGKILL");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGSTOP node `id` (it keeps its sockets but answers nothing).
    pub fn pause(&self, id: u64) {
        if let Some(name) = self.container_name(id) {
            // The cgroup freezer can fail under load ("unable to freeze"): try again, then stop
            // the node's process (PID 1) with SIGSTOP instead; `resume` undoes either.
            let e = &self.docker.as_ref().expect("engine").engine;
            let mut last = String::new();
            for _ in 0..3 {
                match e.pause(&name) {
                    Ok(()) => return,
                    Err(why) => last = why,
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!("pause {name}: {last}; SIGSTOP instead");
            e.kill(&name, "SIGSTOP").expect("SIGSTOP");
            return;
        }
        signal(self.node(id).pid().expect("node runs"), "STOP");
    }

    /// SIGCONT node `id`.
    pub fn resume(&self, id: u64) {
        if let Some(name) = self.container_name(id) {
            let e = &self.docker.as_ref().expect("engine").engine;
            if e.unpause(&name).is_err() {
                // Not frozen: `pause` fell back to SIGSTOP.
                e.kill(&name, "SIGCONT").expect("SIGCONT");
            }
            return;
        }
        signal(self.node(id).pid().expect("node runs"), "CONT");
    }

    /// The container of node `id`, in a containerised cluster.
    pub fn container_name(&self, id: u64) -> Option<String> {
        self.node(id).container.as_ref().map(|c| c.name.clone())
    }

    /// Take node `id`'s container off the cluster's network (containers only): it runs on, alone.
    pub fn disconnect(&self, id: u64) {
        let d = self.docker.as_ref().expect("a containerised cluster");
        d.engine.disconnect(&d.net, &self.container_name(id).expect("container")).expect("disconnect");
    }

    /// Put it back at its address.
    pub fn reconnect(&self, id: u64) {
        let d = self.docker.as_ref().expect("a containerised cluster");
        d.engine.reconnect(&d.net, &self.container_name(id).expect("container"), d.net.ip(id)).expect("connect");
    }

    /// Drop every packet from node `from` to node `to` (containers only: a blackhole route in
    /// `from`'s network namespace), or stop dropping them. One way: TCP between them stalls both
    /// ways, as a one-way cut does to a connection-oriented protocol.
    pub fn cut(&self, from: u64, to: u64, on: bool) {
        let d = self.docker.as_ref().expect("a containerised cluster");
        d.engine.blackhole(&self.container_name(from).expect("container"), d.net.ip(to), on).expect("blackhole");
    }

    /// Drop every packet from node `from` to node `to`, or stop dropping them: the proxy of the
    /// link (processes) or a blackhole route (containers). One way, as [`Cluster::cut`] explains.
    pub fn cut_link(&self, from: u64, to: u64, on: bool) {
        if self.docker.is_some() {
            return self.cut(from, to, on);
        }
        let link = self.links.get(&(from, to)).unwrap_or_else(|| panic!("no proxied link {from}->{to} (proxies)"));
        if on { link.cut() } else { link.heal() }
    }

    /// Set node `id`'s hsm-sim faults (`node-<id>/hsm/faults.toml`, the module re-reads it within
    /// 100 ms; the format is hsm-sim's `fault.rs`), or clear them with `""`.
    pub fn hsm_faults(&self, id: u64, toml: &str) {
        let path = self.node(id).dir.join("hsm").join("faults.toml");
        fs::write(&path, toml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Offset node `id`'s wall clock by `seconds` (needs [`ClusterOptions::clock_skew`];
    /// libfaketime reads the file again within a second).
    pub fn skew_clock(&self, id: u64, seconds: i64) {
        assert!(self.opts.clock_skew, "skew_clock needs ClusterOptions::clock_skew");
        let path = self.node(id).dir.join("faketime.rc");
        fs::write(&path, format!("{seconds:+}\n")).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// How far node `id`'s wall clock is from the host's, in whole seconds: its Status answer's
    /// time against the host's at the middle of the call.
    pub async fn clock_offset(&self, id: u64) -> Result<i64, String> {
        let ms = || SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let sent = ms();
        let status = self.status(id).await?;
        let middle = (sent + ms()) / 2;
        Ok(((status.time_ms as i64 - middle) as f64 / 1000.0).round() as i64)
    }

    /// Erase a stopped node's Raft log, state and snapshots (`node-<id>/data`), keeping its
    /// config, certificate and HSM tokens: the node starts again as a fresh one.
    pub fn wipe_data(&self, id: u64) {
        let data = self.node(id).dir.join("data");
        fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
        fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    }

    /// Start a stopped node again with the same config and data, and wait for `/health`.
    pub async fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.wait_health(id).await;
    }

    /// Cut every Raft link between `side` and the other nodes, both ways (needs `opts.proxies`).
    pub fn partition(&self, side: &[u64]) {
        if self.docker.is_some() {
            for a in self.ids().into_iter().filter(|a| side.contains(a)) {
                for b in self.ids().into_iter().filter(|b| !side.contains(b)) {
                    self.cut(a, b, true);
                    self.cut(b, a, true);
                }
            }
            return;
        }
        assert!(self.opts.proxies, "partition needs ClusterOptions::proxies");
        for ((from, to), link) in &self.links {
            if side.contains(from) != side.contains(to) {
                link.cut();
            }
        }
    }

    /// Heal every cut link.
    pub fn heal(&self) {
        if let Some(d) = &self.docker {
            for a in self.ids() {
                for b in self.ids().into_iter().filter(|b| *b != a) {
                    // A node that is not running has no routes to remove.
                    let _ = d.engine.blackhole(&self.container_name(a).expect("container"), d.net.ip(b), false);
                }
            }
            return;
        }
        for link in self.links.values() {
            link.heal();
        }
    }

    /// Run the `quill` CLI against node `id` (`QUILL_ENDPOINT` set to it): (exit code, stdout,
    /// stderr). `env` adds variables (e.g. `QUILL_ACTOR`); every call names its caller, so the
    /// auditor [`READER`] reads when a test names nobody.
    pub fn quill(&self, id: u64, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        self.run_quill(id, args, |cmd| {
            cmd.env("QUILL_ACTOR", READER).env("QUILL_DEV_DIR", &self.root).env_remove("QUILL_IDENTITY");
            for (k, v) in env {
                cmd.env(k, v);
            }
        })
    }

    /// Like [`Cluster::quill`], as the identity in directory `identity` (`QUILL_IDENTITY`, e.g.
    /// from [`Cluster::as_tenant`]) instead of a dev identity.
    pub fn quill_as(&self, id: u64, identity: &Path, args: &[&str]) -> (i32, String, String) {
        self.run_quill(id, args, |cmd| {
            cmd.env("QUILL_IDENTITY", identity).env_remove("QUILL_ACTOR").env_remove("QUILL_DEV_DIR");
        })
    }

    fn run_quill(&self, id: u64, args: &[&str], caller: impl FnOnce(&mut Command)) -> (i32, String, String) {
        self.runner().run_with(id, args, caller)
    }

    /// What running `quill` against the nodes needs, detached from the fixture (for tasks that
    /// run beside faults injected through `&mut Cluster`).
    pub fn runner(&self) -> QuillRunner {
        QuillRunner {
            dev_dir: self.root.clone(),
            endpoints: self.nodes.values().map(|n| (n.id, n.endpoint())).collect(),
        }
    }

    /// Like [`Cluster::quill`], panicking with the output unless it exits 0; returns stdout.
    pub fn quill_ok(&self, id: u64, args: &[&str], env: &[(&str, &str)]) -> String {
        let (code, out, err) = self.quill(id, args, env);
        assert_eq!(code, 0, "quill {args:?} via node {id} exited {code}\nstdout: {out}\nstderr: {err}");
        out
    }

    /// A Keys-service query (JSON) on node `id`, linearizable.
    pub async fn query(&self, id: u64, what: &str, key_id: &str) -> Result<serde_json::Value, String> {
        let mut c = quill_proto::v1::keys_client::KeysClient::new(self.channel_as(id, READER));
        let req = quill_proto::v1::QueryRequest { what: what.into(), id: key_id.into(), linearizable: true, hops: 0 };
        let r = c.query(req).await.map_err(|s| format!("node {id}: {:?} {}", s.code(), s.message()))?;
        serde_json::from_str(&r.into_inner().json).map_err(|e| e.to_string())
    }

    /// A channel to node `node` as `actor`, with a certificate naming exactly `tenants` (none:
    /// the default tenant only); the identity directory, for the CLI.
    pub fn as_tenant(&self, node: u64, actor: &str, tenants: &[&str]) -> (Channel, PathBuf) {
        let a = quill_node::identity::Actor::parse(actor).expect("role:name");
        let dir = self.root.join("identities").join(format!("tenant-{}-{}", a.role, a.name));
        let t = quill_node::identity::Tenants::parse(tenants.iter().copied()).expect("tenant names");
        self.pki.issue_for_tenants(&Identity::Client(a), &t, Default::default(), &dir).expect("a tenant certificate");
        let cfg = quill_node::tls::client_config(&TlsFiles::in_dir(&dir)).expect("its TLS configuration");
        (tls_channel(&cfg, &self.node(node).api_addr.to_string(), Duration::from_secs(30)), dir)
    }

    /// A client for node `id` with a 5 s call timeout.
    pub fn client(&self, id: u64) -> ClusterClient<Channel> {
        self.node(id).api.clone()
    }

    /// Node `id`'s Status, or why not.
    pub async fn status(&self, id: u64) -> Result<NodeStatus, String> {
        let mut c = self.node(id).status_api.clone();
        match c.status(StatusRequest {}).await {
            Ok(r) => r.into_inner().node.ok_or_else(|| "Status without node".to_string()),
            Err(s) => Err(format!("node {id}: {:?} {}", s.code(), s.message())),
        }
    }

    /// Wait until one of `among` says it is leader and a majority of `among` name it leader.
    pub async fn wait_leader(&self, among: &[u64], timeout: Duration, reason: &str) -> u64 {
        self.wait_leader_after(among, 0, timeout, reason).await.0
    }

    /// Like [`Cluster::wait_leader`], for a leader of a term above `min_term`: (leader, term).
    pub async fn wait_leader_after(&self, among: &[u64], min_term: u64, timeout: Duration, reason: &str) -> (u64, u64) {
        wait_until(timeout, reason, || async {
            let mut leader = None;
            let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
            let mut seen = Vec::new();
            for id in among {
                match self.status(*id).await {
                    Ok(st) => {
                        if st.role == "leader" && st.term > min_term {
                            leader = Some((st.id, st.term));
                        }
                        if let Some(l) = st.leader {
                            *votes.entry(l).or_default() += 1;
                        }
                        seen.push(format!("{}:{}@{}", st.id, st.role, st.term));
                    }
                    Err(e) => seen.push(e),
                }
            }
            match leader {
                Some((l, t)) if votes.get(&l).copied().unwrap_or(0) * 2 > among.len() => Ok((l, t)),
                _ => Err(seen.join(", ")),
            }
        })
        .await
    }

    /// Wait until every node in `ids` reports the same applied index (at least `min_applied`) and
    /// the same state hash; returns (applied index, state hash).
    pub async fn wait_converged(&self, ids: &[u64], min_applied: u64, timeout: Duration) -> (u64, String) {
        wait_until(timeout, "every node at the same applied index and state hash", || async {
            let mut seen = Vec::new();
            for id in ids {
                seen.push(self.status(*id).await?);
            }
            let first = &seen[0];
            // Hashes of the same applied index (a node gives its last hash for a while: see
            // NodeStatus.state_hash_index).
            let same = seen.iter().all(|s| {
                s.applied_index == first.applied_index
                    && s.state_hash_index == s.applied_index
                    && s.state_hash == first.state_hash
            });
            if same && first.applied_index >= min_applied {
                Ok((first.applied_index, first.state_hash.clone()))
            } else {
                Err(seen
                    .iter()
                    .map(|s| {
                        let h = short(&s.state_hash);
                        format!("node {} applied {} hash {h} (of {})", s.id, s.applied_index, s.state_hash_index)
                    })
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        })
        .await
    }

    /// Put `bench/<key>` = `value` through node `id` as (`client_id`, `serial`), as [`ADMIN`]
    /// (plain writes are confined to the benchmark's key space).
    pub async fn put(
        &self,
        id: u64,
        client_id: &str,
        serial: u64,
        key: &str,
        value: &[u8],
    ) -> Result<(BenchPutResponse, Outcome), tonic::Status> {
        let mut c = self.client(id);
        let req =
            BenchPutRequest { client_id: client_id.to_string(), serial, key: bench_key(key), value: value.to_vec() };
        let r = c.bench_put(req).await?.into_inner();
        let outcome = Outcome::Put { replaced: r.replaced };
        Ok((r, outcome))
    }

    /// Read `bench/<key>` on node `id`.
    pub async fn read(&self, id: u64, key: &str, linearizable: bool) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut c = self.client(id);
        let r = c.bench_get(BenchGetRequest { key: bench_key(key), linearizable, hops: 0 }).await?.into_inner();
        Ok(r.found.then_some(r.value))
    }

    /// A value from node `id`'s Prometheus `/metrics` (e.g. `quill_raft_membership_index`).
    pub fn metric(&self, id: u64, name: &str) -> Result<u64, String> {
        let (code, body) = http_get(self.node(id).http_addr, "/metrics").map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("node {id} /metrics: HTTP {code}"));
        }
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k.split('{').next() == Some(name)).then(|| v.trim().parse::<f64>().ok().map(|v| v as u64)).flatten()
            })
            .ok_or_else(|| format!("node {id} /metrics has no {name}"))
    }

    /// Stop node `id`, flip one byte in the middle of its audit record `seq` on disk, and start it
    /// again (an attacker with the disk, or a corruption): `quill audit verify` must name `seq`.
    pub async fn tamper_audit_record(&mut self, id: u64, seq: u64) {
        self.terminate(id);
        {
            let store = quill_node::store::Store::open(&self.node(id).dir.join("data").join("db")).expect("open store");
            let key = format!("audit/rec/{seq:020}");
            let cf = quill_node::store::Cf::SmData;
            let mut value = store.get_raw(cf, key.as_bytes()).expect("read").expect("the audit record");
            let at = value.len() / 2;
            value[at] ^= 0x01;
            let mut batch = quill_node::store::WriteBatch::default();
            batch.put_cf(store.cf(cf).expect("cf"), key.as_bytes(), &value);
            store.write(batch, true).expect("write");
        }
        self.restart(id).await;
    }

    /// The end of node `id`'s log, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        if let Some((d, name)) = self.docker.as_ref().zip(self.container_name(id)) {
            return d.engine.logs(&name, 40);
        }
        tail(&self.node(id).log_path(), 40)
    }
}

/// Who reads when a test names nobody: every Keys and Jobs call names its caller.
pub const READER: &str = "auditor:test";
/// Who the fixture's own clients are (membership, plain writes).
pub const ADMIN: &str = "admin:fixture";

/// The benchmark key space every plain write and read is confined to.
fn bench_key(key: &str) -> String {
    format!("bench/{key}")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(d) = &self.docker {
            // Each container's output goes to its node's log file first, as a process writes it.
            for node in self.nodes.values() {
                if let Some(c) = &node.container {
                    let _ = fs::write(node.log_path(), d.engine.logs(&c.name, 100_000));
                    d.engine.remove(&c.name);
                }
            }
            d.engine.remove_network(&d.net.name);
        }
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                // A SIGSTOPped process dies of SIGKILL too.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if (std::env::var_os("QUILL_TEST_KEEP").is_some() || std::thread::panicking())
            && let Some(d) = self.dir.take()
        {
            let kept = d.keep();
            eprintln!("kept the cluster directory {}", kept.display());
        }
    }
}

/// The identity of `actor` (`role:name`) in the cluster directory `root` (`root/identities/
/// <role>-<name>`, as `quill --as` finds it), issued from `pki` on first use.
pub fn identity_in(pki: &PkiDir, root: &Path, actor: &str) -> Arc<rustls::ClientConfig> {
    let a = quill_node::identity::Actor::parse(actor).expect("role:name");
    let dir = root.join("identities").join(format!("{}-{}", a.role, a.name));
    pki.issue_once(&Identity::Client(a), &quill_node::identity::Tenants::All, &dir).expect("issue an identity");
    quill_node::tls::client_config(&TlsFiles::in_dir(&dir)).expect("client TLS config")
}

/// A lazily connecting mutual-TLS channel to `addr` (`host:port`) whose calls time out after
/// `timeout`.
pub fn tls_channel(tls: &Arc<rustls::ClientConfig>, addr: &str, timeout: Duration) -> Channel {
    quill_node::tls::channel(addr, tls.clone(), Duration::from_secs(1), Some(timeout), None, Default::default())
        .expect("a valid address")
}

/// A lazily connecting client for `addr` (`host:port`) as `tls`, whose calls time out after
/// `timeout`.
pub fn client_for(tls: &Arc<rustls::ClientConfig>, addr: &str, timeout: Duration) -> ClusterClient<Channel> {
    ClusterClient::new(tls_channel(tls, addr, timeout))
}

/// Poll `f` every 50 ms until it returns `Ok`, or panic after `timeout` naming `reason` and the
/// The repository root (for profiles and samples).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python of the venv holding the third-party references (pyemv, psec, python-pkcs11) that
/// `scripts/setup.sh` makes: `$QUILL_VENV` or `~/.cache/quill/venv`; `None` when absent.
pub fn reference_python() -> Option<PathBuf> {
    let venv = match std::env::var_os("QUILL_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/quill/venv"),
    };
    let python = venv.join("bin/python");
    python.is_file().then_some(python)
}

/// Every card of the prepared output `out` (of `input`, under `profile`) checked against the
/// third-party references (`tests/python/test_prep_output.py`: pyemv and psec) with the checker's
/// `extra` options (`--ca-public`, `--issuer`). `Ok(Some(n))`: n checks passed; `Ok(None)`: no
/// venv, refused when `QUILL_REQUIRE_SOFTHSM` says the references must run; why a check failed.
pub fn reference_check(profile: &Path, input: &Path, out: &Path, extra: &[&str]) -> Result<Option<u64>, String> {
    let Some(python) = reference_python() else {
        if std::env::var_os("QUILL_REQUIRE_SOFTHSM").is_some() {
            return Err("no Python venv with pyemv/psec (scripts/setup.sh makes it)".into());
        }
        return Ok(None);
    };
    let r = Command::new(python)
        .arg(repo_root().join("tests/python/test_prep_output.py"))
        .arg("--profile")
        .arg(profile)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .map_err(|e| format!("running the pyemv checker: {e}"))?;
    let stdout = String::from_utf8_lossy(&r.stdout);
    let passed = stdout.lines().rev().find_map(|l| l.strip_suffix(" checks passed")?.parse::<u64>().ok());
    match passed {
        Some(n) if r.status.success() => Ok(Some(n)),
        _ => {
            let failed: Vec<&str> = stdout.lines().filter(|l| !l.ends_with("checks passed")).take(5).collect();
            Err(format!(
                "the pyemv/psec checker failed ({}): {} {}",
                r.status,
                failed.join(" | "),
                String::from_utf8_lossy(&r.stderr).lines().last().unwrap_or_default()
            ))
        }
    }
}

/// The XOR of equal-length hex components (a key from its custodians' parts).
pub fn xor_hex(parts: &[&str]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = parts.iter().map(|p| hex::decode(p).expect("hex component")).collect();
    let mut out = vec![0u8; bytes.first().map_or(0, Vec::len)];
    for b in &bytes {
        for (o, x) in out.iter_mut().zip(b) {
            *o ^= x;
        }
    }
    out
}

/// The TDES KCV (3 bytes, hex) of a double- or triple-length key, computed with OpenSSL (a
/// reference we did not write).
pub fn openssl_tdes_kcv(key: &[u8]) -> String {
    use openssl::symm::{Cipher, Crypter, Mode};
    let k3: Vec<u8> = if key.len() == 16 { [key, &key[..8]].concat() } else { key.to_vec() };
    let mut c = Crypter::new(Cipher::des_ede3(), Mode::Encrypt, &k3, None).expect("3DES");
    c.pad(false);
    let mut out = vec![0u8; 16];
    let n = c.update(&[0u8; 8], &mut out).expect("encrypt");
    hex::encode_upper(&out[..n.min(3)])
}

/// A `visa-dda-credit` batch of `n` cards: PANs `476173` ‖ 9-digit number from `first` ‖ Luhn
/// digit, varied PSN and expiry, one record per input line from line 2.
pub fn write_dda_batch(path: &Path, n: usize, first: usize) {
    let mut f = fs::File::create(path).expect("create batch file");
    writeln!(f, "PAN,PSN,EXPIRY,EFFECTIVE,SERVICE_CODE,TRACK_NAME,EMBOSS_NAME,COUNTRY").expect("write batch");
    for i in 0..n {
        let pan = dda_batch_pan(first + i);
        writeln!(f, "{pan},{:02},2{}12,2512,201,TEST/CARD {i},CARD {i} TEST,840", i % 100, 7 + i % 3)
            .expect("write batch");
    }
}

/// The PAN of card number `k` of [`write_dda_batch`].
pub fn dda_batch_pan(k: usize) -> String {
    let body = format!("476173{k:09}");
    format!("{body}{}", quill_prep::input::luhn_check_digit(&body))
}

impl Cluster {
    /// Wait until every node enrolled, form the SMK (2 custodians), and load the TEST key set
    /// (`quill dev load-test-keys`): what the batch tests start from.
    pub async fn keys_ready(&self) {
        wait_until(Duration::from_secs(60), "all nodes enrolled", || async {
            let n = self.query(1, "nodes", "").await?.as_array().map(Vec::len).unwrap_or(0);
            if n == self.ids().len() { Ok(()) } else { Err(format!("{n} enrolled")) }
        })
        .await;
        let admin = [("QUILL_ACTOR", "admin:ada")];
        self.quill_ok(1, &["ceremony", "start", "--key", "smk", "--components", "2", "--id", "smk-1"], &admin);
        for (i, c) in [(1, "custodian:alice"), (2, "custodian:bob")] {
            self.quill_ok(i, &["ceremony", "submit", "--id", "smk-1", "--generate"], &[("QUILL_ACTOR", c)]);
        }
        wait_until(Duration::from_secs(60), "the SMK on every node", || async {
            let c = self.query(1, "ceremony", "smk-1").await?;
            let formed = c["formed_on"].as_array().map(Vec::len).unwrap_or(0);
            if formed == self.ids().len() { Ok(()) } else { Err(format!("formed on {formed}")) }
        })
        .await;
        self.quill_ok(1, &["dev", "load-test-keys"], &admin);
    }

    /// A working key `label.v1` formed on this cluster by a ceremony (`id`, started by an admin
    /// through node 1): custodians alice and bob submit `parts` through nodes 2 and 3. Its KCV,
    /// once formed.
    pub async fn form_working_key(
        &self,
        id: &str,
        label: &str,
        usage: &str,
        alg: &str,
        parts: [&str; 2],
        exportable: bool,
    ) -> String {
        let mut args = vec![
            "ceremony",
            "start",
            "--key",
            "working",
            "--components",
            "2",
            "--id",
            id,
            "--label",
            label,
            "--usage",
            usage,
            "--alg",
            alg,
        ];
        if exportable {
            args.push("--exportable");
        }
        self.quill_ok(1, &args, &[("QUILL_ACTOR", "admin:ada")]);
        for (node, (c, part)) in [(2, ("custodian:alice", parts[0])), (3, ("custodian:bob", parts[1]))] {
            self.quill_ok(node, &["ceremony", "submit", "--id", id, "--component", part], &[("QUILL_ACTOR", c)]);
        }
        let key = format!("{label}.v1");
        wait_until(Duration::from_secs(30), &format!("{key} formed"), || async {
            let k = self.query(1, "key", &key).await?;
            Ok::<_, String>(k["kcv"].as_str().unwrap_or_default().to_string())
        })
        .await
    }

    /// The fetched output of `job` (made from the `visa-dda-credit` batch `input` of `cards`
    /// cards) checked card by card: every input line exactly once and in order, the three
    /// streams' digests and MACs (`quill prep check`), and, where the Python references are
    /// installed, every card against pyemv/psec (`tests/python/test_prep_output.py`: ICC master
    /// keys and their KCVs, ARQCs, tracks, PIN blocks, the certificate chain recovered from the
    /// TEST CA key down to the ICC key). `Ok(Some(n))`: n reference checks passed; `Ok(None)`:
    /// no venv (refused when `QUILL_REQUIRE_SOFTHSM` says the references must run); why not.
    pub fn check_output(
        &self,
        node: u64,
        job: &str,
        input: &Path,
        dir: &Path,
        cards: usize,
    ) -> Result<Option<u64>, String> {
        let out = dir.join(format!("out-{job}"));
        let out_s = out.to_str().ok_or("output path is not UTF-8")?;
        let operator = [("QUILL_ACTOR", "operator:otto")];
        let (code, _, err) = self.quill(node, &["job", "fetch", job, "-o", out_s], &operator);
        if code != 0 {
            return Err(format!("quill job fetch {job} exited {code}: {}", err.trim()));
        }
        let text = std::fs::read_to_string(out.join("cards.jsonl")).map_err(|e| format!("cards.jsonl: {e}"))?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cards.jsonl: {e}"))?;
        if lines.len() != cards + 2 {
            return Err(format!("{} output lines for {cards} cards (+ header and trailer)", lines.len()));
        }
        for (i, c) in lines[1..=cards].iter().enumerate() {
            if c["line"].as_u64() != Some(i as u64 + 2) {
                return Err(format!("output card {i} is input line {}, not {}", c["line"], i + 2));
            }
        }
        let (code, stdout, err) = self.quill(node, &["prep", "check", out_s], &[]);
        if code != 0 || stdout.matches("MAC verified").count() != 3 {
            return Err(format!("quill prep check {job} exited {code}: {} {}", stdout.trim(), err.trim()));
        }
        let profile = repo_root().join("prep/profiles/visa-dda-credit.toml");
        reference_check(&profile, input, &out, &[]).map_err(|e| format!("job {job}: {e}"))
    }

    /// Wait (up to 10 minutes) until job `job` is done, as node `node` sees it; its record.
    pub async fn wait_job_done(&self, node: u64, job: &str) -> serde_json::Value {
        wait_until(Duration::from_secs(600), "job done", || async {
            let j = self.query(node, "job", job).await?;
            if j["state"] == "done" {
                Ok(j)
            } else {
                Err(format!("{} {}/{}", j["state"], j["cards_done"], j["records"]))
            }
        })
        .await
    }

    /// `quill job submit` of `input` with the `visa-dda-credit` profile and the TEST MAC key, as
    /// an operator, through node `node`; the job id.
    pub fn submit_dda_job(&self, node: u64, input: &Path, chunk: &str) -> String {
        self.runner().submit_dda_job(node, input, chunk).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// last error.
pub async fn wait_until<T, F, Fut>(timeout: Duration, reason: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() >= timeout {
                    panic!("timed out after {timeout:?} waiting for {reason}; last: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send a signal by name (`STOP`, `CONT`, `TERM`) with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// A small deterministic PRNG (xorshift64*) for picking nodes; seeded per test.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next_u64() % from.len() as u64) as usize]
    }
}

/// Runs `quill` against a cluster's nodes as the fixture does ([`Cluster::runner`]); `Send`, so
/// a task can use it while the fixture is borrowed elsewhere.
#[derive(Debug, Clone)]
pub struct QuillRunner {
    dev_dir: PathBuf,
    endpoints: BTreeMap<u64, String>,
}

impl QuillRunner {
    fn run_with(&self, id: u64, args: &[&str], caller: impl FnOnce(&mut Command)) -> (i32, String, String) {
        let endpoint = self.endpoints.get(&id).unwrap_or_else(|| panic!("no node {id}"));
        let mut cmd = Command::new(binary("quill"));
        cmd.args(args).env("QUILL_ENDPOINT", endpoint).env_remove("QUILL_ENDPOINTS");
        // Custodians pin new nodes' transport keys without a prompt (t92 tests the pins).
        cmd.env_remove("QUILL_COMPONENT").env("QUILL_PIN_NEW", "true");
        caller(&mut cmd);
        let out = cmd.output().expect("run quill");
        let code = out.status.code().unwrap_or(-1);
        (code, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `quill ARGS` against node `id` as `actor` (`role:name`, its identity in the cluster's
    /// directory): (exit code, stdout, stderr).
    pub fn run(&self, id: u64, actor: &str, args: &[&str]) -> (i32, String, String) {
        self.run_with(id, args, |cmd| {
            cmd.env("QUILL_ACTOR", actor).env("QUILL_DEV_DIR", &self.dev_dir).env_remove("QUILL_IDENTITY");
        })
    }

    /// Submit a DDA batch (`visa-dda-credit` profile, the TEST output MAC key) through node
    /// `node` as an operator: the job's id, or why not.
    pub fn submit_dda_job(&self, node: u64, input: &Path, chunk: &str) -> Result<String, String> {
        let profile = repo_root().join("prep/profiles/visa-dda-credit.toml");
        let profile = profile.to_str().ok_or("profile path is not UTF-8")?;
        let input = input.to_str().ok_or("input path is not UTF-8")?;
        let args = [
            "job",
            "submit",
            "--json",
            "--profile",
            profile,
            "--input",
            input,
            "--chunk-size",
            chunk,
            "--mac-key",
            "MAC-OUTPUT-TEST",
        ];
        let (code, out, err) = self.run(node, "operator:otto", &args);
        if code != 0 {
            return Err(format!("quill job submit through node {node} exited {code}: {}", err.trim()));
        }
        let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
        v["job"].as_str().map(str::to_string).ok_or_else(|| format!("no job id in {out}"))
    }
}

//! One real `quilld` process on loopback: it initialises as a one-voter cluster, takes writes,
//! serves linearizable reads, deduplicates a retried write, refuses malformed input with
//! INVALID_ARGUMENT, answers on its HTTP endpoint, stops cleanly on SIGTERM and keeps its data
//! across a restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use quill_proto::v1::cluster_client::ClusterClient;
use quill_proto::v1::{BenchGetRequest, BenchPutRequest, InitRequest, NodeInfo, StatusRequest};
use tonic::transport::Channel;

struct Node {
    /// The admin identity's directory (from the node's own test PKI).
    admin: PathBuf,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    api: String,
    raft: String,
    http: String,
}

impl Node {
    fn configure(dir: &Path) -> Self {
        let ports: Vec<u16> =
            quill_node::config::free_loopback_addrs(3).expect("free ports").iter().map(|a| a.port()).collect();
        let (raft, api, http) = (ports[0], ports[1], ports[2]);
        let config = dir.join("node1.toml");
        let pki = quill_node::tls::PkiDir::init(&dir.join("pki")).expect("PKI");
        let tls = dir.join("tls");
        pki.issue(&quill_node::tls::Identity::Node(1), &[], Default::default(), &tls).expect("node certificate");
        let admin = dir.join("admin");
        let who = quill_node::identity::Actor::parse("admin:t1").expect("actor");
        pki.issue(&quill_node::tls::Identity::Client(who), &[], Default::default(), &admin).expect("admin certificate");
        let text = format!(
            "node_id = 1\nraft_addr = \"127.0.0.1:{raft}\"\napi_addr = \"127.0.0.1:{api}\"\nhttp_addr = \"127.0.0.1:{http}\"\n\
             data_dir = \"{}\"\nlog_format = \"text\"\n[raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\n\
             election_timeout_max_ms = 600\n[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\npeer_ca = \"tls/ca.pem\"\n\
             client_ca = \"tls/client-ca.pem\"\n",
            dir.join("data").display()
        );
        std::fs::write(&config, text).expect("write config");
        Node {
            admin,
            child: None,
            config,
            log: dir.join("node1.log"),
            api: format!("127.0.0.1:{api}"),
            raft: format!("127.0.0.1:{raft}"),
            http: format!("127.0.0.1:{http}"),
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        self.child = Some(
            Process::new(env!("CARGO_BIN_EXE_quilld"))
                .arg("--config")
                .arg(&self.config)
                .stdout(Stdio::from(log.try_clone().expect("clone log")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn quilld"),
        );
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let killed = Process::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "quilld did not exit within 10 s of SIGTERM; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client as the admin identity, over mutual TLS, once the node answers.
    async fn client(&self) -> ClusterClient<Channel> {
        let tls = quill_node::tls::client_config(&quill_node::tls::TlsFiles::in_dir(&self.admin)).expect("TLS");
        let channel = quill_node::tls::channel(
            &self.api,
            tls,
            Duration::from_secs(1),
            Some(Duration::from_secs(5)),
            None,
            Default::default(),
        )
        .expect("channel");
        let mut c = ClusterClient::new(channel);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.status(StatusRequest {}).await {
                Ok(_) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot reach {}: {e}; log:\n{}", self.api, self.log_text()),
            }
        }
    }

    async fn wait_leader(&self, client: &mut ClusterClient<Channel>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = client.status(StatusRequest {}).await
                && s.get_ref().node.as_ref().is_some_and(|n| n.role == "leader")
            {
                return;
            }
            assert!(Instant::now() < deadline, "no leader within 10 s; log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn http_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.http).expect("http connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.http).expect("send");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read");
        let code = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status code");
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn put(client_id: &str, serial: u64, key: &str, value: &[u8]) -> BenchPutRequest {
    BenchPutRequest { client_id: client_id.into(), serial, key: key.into(), value: value.to_vec() }
}

fn get(key: &str) -> BenchGetRequest {
    BenchGetRequest { key: key.into(), linearizable: true, hops: 0 }
}

#[tokio::test(flavor = "multi_thread")]
async fn single_node_writes_reads_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::configure(dir.path());

    eprintln!("--- step: start quilld and initialise a one-node cluster");
    node.start();
    let mut client = node.client().await;
    let me = NodeInfo { id: 1, raft_addr: node.raft.clone(), api_addr: node.api.clone() };
    client.init(InitRequest { members: vec![me.clone()] }).await.expect("init");
    client.init(InitRequest { members: vec![me.clone()] }).await.expect("init again with the same membership is OK");
    node.wait_leader(&mut client).await;

    eprintln!("--- step: write 100 puts");
    for i in 0..100u64 {
        let req = put("t1", i, &format!("bench/k{i}"), format!("v{i}").as_bytes());
        let r = client.bench_put(req).await.expect("write").into_inner();
        assert!(!r.duplicate);
        assert!(!r.replaced);
    }

    eprintln!("--- step: read them back linearizably");
    for i in 0..100u64 {
        let r = client.bench_get(get(&format!("bench/k{i}"))).await.expect("read").into_inner();
        assert!(r.found, "bench/k{i} not found");
        assert_eq!(r.value, format!("v{i}").into_bytes());
    }

    eprintln!("--- step: a retried write is applied once");
    let r = client.bench_put(put("t1", 7, "bench/k7", b"changed")).await.expect("retry").into_inner();
    assert!(r.duplicate, "same caller + client id + serial must be a duplicate");
    let v = client.bench_get(get("bench/k7")).await.expect("read");
    assert_eq!(v.into_inner().value, b"v7".to_vec());

    eprintln!("--- step: malformed input is INVALID_ARGUMENT, not a crash");
    let e = client.bench_put(put("t1", 1000, "", b"y")).await.expect_err("empty key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = client.bench_put(put("", 1, "bench/x", b"y")).await.expect_err("empty client id");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    eprintln!("--- step: HTTP health and metrics");
    let (code, body) = node.http_get("/health");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = node.http_get("/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("quill_raft_applied_index"), "{body}");
    let (code, _) = node.http_get("/raft");
    assert_eq!(code, 200);

    eprintln!("--- step: SIGTERM stops it with exit 0");
    let status = node.stop();
    assert!(status.success(), "exit {status:?}; log:\n{}", node.log_text());

    eprintln!("--- step: restart; the data is still there");
    node.start();
    let mut client = node.client().await;
    node.wait_leader(&mut client).await;
    let r = client.bench_get(get("bench/k99")).await.expect("read");
    let r = r.into_inner();
    assert!(r.found && r.value == b"v99".to_vec(), "k99 lost across restart");
    let status = node.stop();
    assert!(status.success(), "exit {status:?}; log:\n{}", node.log_text());
}

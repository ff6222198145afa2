//! Issue 12, trust at every door: each attack the outsider and the insider tried, reproduced with
//! hand-built clients and valid-looking but wrong credentials, and shown refused (and audited
//! where it reached the API). A 3-node cluster with hsm-sim tokens, the SMK and the TEST keys.
//!
//! - the transport: no certificate, a certificate from another CA, an expired one, TLS 1.2, a
//!   ChaCha20 suite (probed with `openssl s_client`, with a positive control), a client
//!   certificate on the Raft port, a node certificate on the API port;
//! - identities: a client certificate naming a node, a node certificate of a non-member, a member
//!   speaking in another node's name, membership calls by a non-admin, exactly-once records keyed
//!   by identity;
//! - oversized messages on the API and the Raft port;
//! - dual control: one key under two custodian names (ceremony component, approval); an expired
//!   approval;
//! - jobs: another operator's fetch, cancel and acknowledgement; the MAC check answers yes or no
//!   and a forged MAC gets no;
//! - revocation: a revoked operator is refused on every node, reads and writes, and the
//!   revocation is in the audit chain;
//! - pins: a custodian refuses to seal to a node whose transport key changed or is not pinned;
//! - divergence: a node whose state was edited on disk raises the alarm (status, /metrics, audit).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use quill_node::api::{Forwarded, PeerCall};
use quill_node::identity::Actor;
use quill_node::raft::Command as QuillCommand;
use quill_node::tls::pki::Validity;
use quill_node::tls::{Identity, PkiDir, TlsFiles};
use quill_proto::v1::approval_ask_request::Action;
use quill_proto::v1::cluster_client::ClusterClient;
use quill_proto::v1::jobs_client::JobsClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::raft_client::RaftClient;
use quill_proto::v1::{
    AddLearnerRequest, ApprovalAskRequest, BenchPutRequest, Caller, CancelRequest, CeremonyStartRequest, FetchRequest,
    MacRequest, NodeInfo, QueryRequest, RaftPayload, StatusRequest,
};
use quill_tests::{Cluster, ClusterOptions, step, tls_channel, wait_until, write_dda_batch};
use tonic::Code;

fn query() -> QueryRequest {
    QueryRequest { what: "keys".into(), id: String::new(), linearizable: false, hops: 0 }
}

fn tls_config(dir: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    quill_node::tls::client_config(&TlsFiles::in_dir(dir)).unwrap()
}

/// `openssl s_client` against `addr` with `args`; its stdout and stderr together.
fn s_client(addr: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "quill-node.internal"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    Some(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_door_refuses_the_wrong_credentials() {
    let opts = ClusterOptions { nodes: 3, hsm: true, divergence_check_ms: 2000, ..ClusterOptions::default() };
    let cluster = Cluster::start("t92", opts).await;
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, Duration::from_secs(10), "a leader").await;
    let follower = ids.iter().copied().find(|i| *i != leader).unwrap();
    let api = cluster.node(leader).api_addr.to_string();
    let raft_addr = cluster.node(leader).raft_addr.to_string();
    let scratch = tempfile::tempdir().unwrap();

    step("no client certificate: every call refused (status, reads, writes)");
    let anon = cluster.channel_without_cert(cluster.node(leader).api_addr);
    ClusterClient::new(anon.clone()).status(StatusRequest {}).await.expect_err("status without a certificate");
    KeysClient::new(anon.clone()).query(query()).await.expect_err("a read without a certificate");
    JobsClient::new(anon)
        .fetch(FetchRequest { job: "J".into(), stream: "cards".into() })
        .await
        .expect_err("a fetch without a certificate");

    step("a certificate from another CA (a PKI of the attacker's own): refused at the handshake");
    let rogue = PkiDir::init(&scratch.path().join("rogue-pki")).unwrap();
    let rogue_admin = scratch.path().join("rogue-admin");
    rogue
        .issue(&Identity::Client(Actor::parse("admin:mallory").unwrap()), &[], Validity::default(), &rogue_admin)
        .unwrap();
    // It trusts our node CA (to get as far as our server's certificate) but is signed by its own.
    std::fs::copy(cluster.pki.ca_pem("node-ca"), rogue_admin.join("ca.pem")).unwrap();
    let mut c = ClusterClient::new(tls_channel(&tls_config(&rogue_admin), &api, Duration::from_secs(5)));
    c.status(StatusRequest {}).await.expect_err("a foreign CA's admin got in");

    step("an expired certificate: refused at the handshake");
    let expired = scratch.path().join("expired");
    cluster
        .pki
        .issue(
            &Identity::Client(Actor::parse("admin:old").unwrap()),
            &[],
            Validity { from_days: -30, days: 10 },
            &expired,
        )
        .unwrap();
    let mut c = ClusterClient::new(tls_channel(&tls_config(&expired), &api, Duration::from_secs(5)));
    c.status(StatusRequest {}).await.expect_err("an expired certificate got in");

    step("a client certificate naming a node (signed by the client CA): PERMISSION_DENIED on the API");
    let evil_pki_dir = scratch.path().join("evil-pki");
    std::fs::create_dir_all(&evil_pki_dir).unwrap();
    for (from, to) in [("client-ca", "node-ca"), ("client-ca", "client-ca")] {
        for ext in ["pem", "key"] {
            std::fs::copy(cluster.pki.dir().join(format!("{from}.{ext}")), evil_pki_dir.join(format!("{to}.{ext}")))
                .unwrap();
        }
    }
    let evil_pki = PkiDir::open(&evil_pki_dir).unwrap();
    let fake_node = scratch.path().join("fake-node-2");
    evil_pki.issue(&Identity::Node(2), &["127.0.0.1".into()], Validity::default(), &fake_node).unwrap();
    std::fs::copy(cluster.pki.ca_pem("node-ca"), fake_node.join("ca.pem")).unwrap();
    let mut c = ClusterClient::new(tls_channel(&tls_config(&fake_node), &api, Duration::from_secs(5)));
    let e = c.status(StatusRequest {}).await.expect_err("a client certificate acted as a node");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    step("... and on the Raft port it is not even a node CA certificate: refused at the handshake");
    let mut r = RaftClient::new(tls_channel(&tls_config(&fake_node), &raft_addr, Duration::from_secs(5)));
    r.vote(RaftPayload { data: vec![0; 8] }).await.expect_err("a client-CA certificate spoke Raft");

    step("no certificate on the Raft port: refused");
    let mut r = RaftClient::new(cluster.channel_without_cert(cluster.node(leader).raft_addr));
    r.vote(RaftPayload { data: vec![0; 8] }).await.expect_err("an anonymous Raft vote");

    step("a client certificate on the Raft port, a node certificate on the API port: refused");
    let mut r = RaftClient::new(tls_channel(&cluster.identity("admin:fixture"), &raft_addr, Duration::from_secs(5)));
    r.append_entries(RaftPayload { data: vec![0; 8] }).await.expect_err("a client spoke Raft");
    let node_files = TlsFiles::in_dir(&cluster.node(follower).dir.join("tls"));
    let node_as_client = quill_node::tls::client_config(&node_files).unwrap();
    let mut c = ClusterClient::new(tls_channel(&node_as_client, &api, Duration::from_secs(5)));
    c.status(StatusRequest {}).await.expect_err("a node certificate was taken as a client");

    step("a node certificate of a non-member (node 9, properly issued by the node CA): every Raft call refused");
    let node9 = scratch.path().join("node-9");
    cluster.pki.issue(&Identity::Node(9), &["127.0.0.1".into()], Validity::default(), &node9).unwrap();
    let n9 = quill_node::tls::client_config(&TlsFiles::in_dir(&node9)).unwrap();
    let mut r = RaftClient::new(tls_channel(&n9, &raft_addr, Duration::from_secs(5)));
    let e = r.vote(RaftPayload { data: vec![0; 8] }).await.expect_err("a non-member voted");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = r.append_entries(RaftPayload { data: vec![0; 8] }).await.expect_err("a non-member appended");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let data = write_as(Actor::node(9));
    let e = r.forward(RaftPayload { data }).await.expect_err("a non-member forwarded a write");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    step("a member writing in another node's name (node 2 forwards a write as node 1): refused");
    let (a, b) = (ids[0], ids[1]);
    let mut r = RaftClient::new(cluster.peer_channel(b, a));
    let data = write_as(Actor::node(a));
    let e = r.forward(RaftPayload { data }).await.expect_err("a node wrote in another's name");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    step("an oversized Raft message from a member (65 MiB): refused");
    let e = r.append_entries(RaftPayload { data: vec![0; 65 << 20] }).await.expect_err("65 MiB accepted");
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted | Code::Internal), "{e:?}");

    step("an oversized API request (5 MiB): refused");
    let mut k = KeysClient::new(cluster.channel_as(leader, "admin:ada"));
    let big = CeremonyStartRequest {
        caller: Some(Caller { client_id: "big".into(), serial: 1 }),
        id: "x".repeat(5 << 20),
        ..Default::default()
    };
    let e = k.ceremony_start(big).await.expect_err("5 MiB accepted");
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted | Code::Internal), "{e:?}");

    step("membership calls by a non-admin: PERMISSION_DENIED");
    let mut c = ClusterClient::new(cluster.channel_as(leader, "operator:otto"));
    let node = NodeInfo { id: 9, raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() };
    let e = c.add_learner(AddLearnerRequest { node: Some(node) }).await.expect_err("an operator added a learner");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    step("exactly-once is per identity: another identity's (client id, serial) is not a duplicate");
    let put = BenchPutRequest { client_id: "shared".into(), serial: 1, key: "bench/t92".into(), value: b"a".to_vec() };
    let first = ClusterClient::new(cluster.channel_as(leader, "operator:victim")).bench_put(put.clone()).await.unwrap();
    let second = ClusterClient::new(cluster.channel_as(leader, "operator:eve")).bench_put(put).await.unwrap();
    assert!(!first.get_ref().duplicate && !second.get_ref().duplicate, "{first:?} {second:?}");

    let cert = p(&cluster, "admin-fixture/cert.pem");
    let key = p(&cluster, "admin-fixture/key.pem");
    let with_cert = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-cert", cert.as_str(), "-key", key.as_str()]);
        s_client(&api, &all)
    };
    if let (Some(bad12), Some(bad_chacha), Some(good)) = (
        with_cert(&["-tls1_2"]),
        with_cert(&["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]),
        with_cert(&["-tls1_3"]),
    ) {
        step("openssl s_client: TLS 1.2 and ChaCha20 refused, TLS 1.3 AES-GCM with a certificate accepted");
        assert!(good.contains("TLSv1.3") && good.contains("AES"), "positive control failed: {good}");
        assert!(
            !bad12.contains("Cipher is ECDHE") && !bad12.contains("TLSv1.2, Cipher"),
            "TLS 1.2 negotiated: {bad12}"
        );
        assert!(
            !bad_chacha.contains("CHACHA20_POLY1305_SHA256\n") || bad_chacha.contains("Cipher is (NONE)"),
            "{bad_chacha}"
        );
        assert!(bad_chacha.contains("(NONE)") || bad_chacha.contains("alert"), "ChaCha20 negotiated: {bad_chacha}");
    } else {
        eprintln!("SKIP: openssl s_client probes (no openssl binary)");
    }

    step("the SMK and the TEST keys, by ceremonies");
    cluster.keys_ready().await;

    step("one key under two custodian names: the second component and the second grant are refused");
    let eve1 = cluster.root.join("identities").join("custodian-eve-1");
    cluster.identity("custodian:eve-1");
    let eve2 = cluster.root.join("identities").join("custodian-eve-2");
    cluster
        .pki
        .issue_for_key(
            &Identity::Client(Actor::parse("custodian:eve-2").unwrap()),
            &eve1.join("key.pem"),
            Validity::default(),
            &eve2,
        )
        .unwrap();
    let admin = [("QUILL_ACTOR", "admin:ada")];
    cluster.quill_ok(
        leader,
        &[
            "ceremony",
            "start",
            "--key",
            "working",
            "--label",
            "t92-k",
            "--usage",
            "E0",
            "--alg",
            "des2",
            "--components",
            "2",
            "--id",
            "t92-c",
        ],
        &admin,
    );
    let comp1 = "0123456789ABCDEFFEDCBA9876543210";
    let comp2 = "00112233445566778899AABBCCDDEEFF";
    cluster.quill_ok(
        leader,
        &["ceremony", "submit", "--id", "t92-c", "--component", comp1],
        &[("QUILL_ACTOR", "custodian:eve-1")],
    );
    let (code, _, err) = cluster.quill(
        leader,
        &["ceremony", "submit", "--id", "t92-c", "--component", comp2],
        &[("QUILL_ACTOR", "custodian:eve-2")],
    );
    assert_eq!(code, 1, "the same key submitted twice: {err}");
    assert!(err.contains("same key"), "{err}");
    let keys = cluster.query(leader, "keys", "").await.unwrap();
    let victim_key = keys
        .as_array()
        .unwrap()
        .iter()
        .find_map(|k| k["id"].as_str().filter(|id| id.starts_with("CVK")).map(str::to_string));
    let victim_key = victim_key.unwrap_or_else(|| keys[0]["id"].as_str().unwrap().to_string());
    let out = cluster.quill_ok(leader, &["key", "destroy", &victim_key, "--json"], &admin);
    let approval: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let approval = approval["approval"].as_str().unwrap_or_else(|| panic!("no approval id: {out}")).to_string();
    cluster.quill_ok(leader, &["approve", "grant", &approval], &[("QUILL_ACTOR", "custodian:eve-1")]);
    let (code, _, err) = cluster.quill(leader, &["approve", "grant", &approval], &[("QUILL_ACTOR", "custodian:eve-2")]);
    assert_eq!(code, 1, "one key granted twice: {err}");
    assert!(err.contains("same key"), "{err}");
    let a = cluster.query(leader, "approval", &approval).await.unwrap();
    assert_eq!(a["state"], "pending", "{a}");

    step("an expired approval can be neither granted nor used");
    let mut k = KeysClient::new(cluster.channel_as(leader, "admin:ada"));
    k.approval_ask(ApprovalAskRequest {
        caller: Some(Caller { client_id: "t92-ttl".into(), serial: 1 }),
        id: "t92-short".into(),
        action: Some(Action::Destroy(victim_key.clone())),
        ttl_hours: 0,
        ttl_seconds: 1,
    })
    .await
    .expect("a one-second approval");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, _, err) =
        cluster.quill(leader, &["approve", "grant", "t92-short"], &[("QUILL_ACTOR", "custodian:alice")]);
    assert_eq!(code, 1, "an expired approval was granted: {err}");
    assert!(err.contains("expired"), "{err}");

    step("a job of operator otto: another operator may not fetch, cancel or acknowledge it");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("batch.csv");
    write_dda_batch(&input, 20, 0);
    let job = cluster.submit_dda_job(leader, &input, "10");
    wait_until(Duration::from_secs(120), "the job done", || async {
        let j = cluster.query(leader, "job", &job).await?;
        if j["state"] == "done" { Ok(()) } else { Err(format!("{}", j["state"])) }
    })
    .await;
    let mut mallory = JobsClient::new(cluster.channel_as(leader, "operator:mallory"));
    let e = mallory.fetch(FetchRequest { job: job.clone(), stream: "cards".into() }).await.expect_err("fetched");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = mallory
        .cancel(CancelRequest { caller: Some(Caller { client_id: "m".into(), serial: 1 }), job: job.clone() })
        .await
        .expect_err("cancelled another operator's job");
    assert!(e.message().contains("belongs to"), "{e:?}");
    let mac = MacRequest { job: job.clone(), sha256: vec![7; 32], mac: vec![9; 32] };
    let e = mallory.mac(mac.clone()).await.expect_err("another operator used the MAC check");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    step("the MAC check answers yes or no, never a MAC: a forged MAC is 'no'");
    let mut otto = JobsClient::new(cluster.channel_as(leader, "operator:otto"));
    let r = otto.mac(mac).await.unwrap().into_inner();
    assert!(!r.valid, "a forged MAC verified");
    let out = dir.path().join("out");
    cluster.quill_ok(leader, &["job", "fetch", &job, "-o", out.to_str().unwrap()], &[("QUILL_ACTOR", "operator:otto")]);
    let (code, _, err) = cluster.quill(
        leader,
        &["job", "ack", &job, "--fetched", out.to_str().unwrap()],
        &[("QUILL_ACTOR", "operator:mallory")],
    );
    assert_eq!(code, 1, "another operator acknowledged: {err}");

    step("revocation: operator rita reads, is revoked by an admin, and is refused on every node");
    let mut rita = KeysClient::new(cluster.channel_as(follower, "operator:rita"));
    rita.query(query()).await.expect("rita reads before");
    let rita_cert = cluster.root.join("identities").join("operator-rita").join("cert.pem");
    let out = cluster.quill_ok(
        leader,
        &["identity", "revoke", "--cert", rita_cert.to_str().unwrap(), "--reason", "left the bureau"],
        &admin,
    );
    assert!(out.contains("revoked"), "{out}");
    for id in &ids {
        let k = KeysClient::new(cluster.channel_as(*id, "operator:rita"));
        wait_until(Duration::from_secs(10), "rita refused", || {
            let mut k = k.clone();
            async move {
                match k.query(query()).await {
                    Err(e) if e.code() == Code::Unauthenticated => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }
    let mut c = ClusterClient::new(cluster.channel_as(leader, "operator:rita"));
    let put = BenchPutRequest { client_id: "rita".into(), serial: 1, key: "bench/rita".into(), value: b"x".to_vec() };
    let e = c.bench_put(put).await.expect_err("a revoked certificate wrote");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let list = cluster.quill_ok(leader, &["identity", "list", "--json"], &[]);
    assert!(list.contains("left the bureau"), "{list}");
    let audit = cluster.quill_ok(leader, &["audit", "tail", "--limit", "200"], &[]);
    assert!(audit.contains("identity.revoke"), "{audit}");

    step("pins: a changed transport key and an unpinned node are refused before anything is sealed");
    cluster.quill_ok(
        leader,
        &[
            "ceremony",
            "start",
            "--key",
            "working",
            "--label",
            "t92-p",
            "--usage",
            "E0",
            "--alg",
            "des2",
            "--components",
            "2",
            "--id",
            "t92-p",
        ],
        &admin,
    );
    let pins = cluster.root.join("identities").join("custodian-alice").join("pins.json");
    let text = std::fs::read_to_string(&pins).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = v["nodes"].as_object().unwrap().keys().next().unwrap().clone();
    v["nodes"][&first] = serde_json::Value::String("00".repeat(32));
    std::fs::write(&pins, v.to_string()).unwrap();
    let (code, _, err) = cluster.quill(
        leader,
        &["ceremony", "submit", "--id", "t92-p", "--component", comp1],
        &[("QUILL_ACTOR", "custodian:alice")],
    );
    assert_eq!(code, 3, "sealed to a changed key: {err}");
    assert!(err.contains("pinned"), "{err}");
    let (code, _, err) = cluster.quill(
        leader,
        &["ceremony", "submit", "--id", "t92-p", "--component", comp1],
        &[("QUILL_ACTOR", "custodian:carol"), ("QUILL_PIN_NEW", "false")],
    );
    assert_eq!(code, 1, "sealed to unpinned keys: {err}");
    assert!(err.contains("not pinned"), "{err}");
    let c = cluster.query(leader, "ceremony", "t92-p").await.unwrap();
    assert_eq!(c["submissions"].as_array().map(Vec::len), Some(0), "{c}");

    step("divergence: a follower's state edited on disk raises the alarm on the leader");
    let mut cluster = cluster;
    let victim = ids.iter().copied().find(|i| *i != leader).unwrap();
    cluster.tamper_audit_record(victim, 3).await;
    let leader = cluster.wait_leader(&ids, Duration::from_secs(20), "a leader after the restart").await;
    let st = wait_until(Duration::from_secs(60), "the divergence alarm", || async {
        let st = cluster.status(leader).await?;
        if st.divergence.contains(&format!("node {victim}")) {
            Ok(st)
        } else {
            Err(format!("no alarm: {:?}", st.divergence))
        }
    })
    .await;
    eprintln!("alarm: {}", st.divergence);
    assert!(cluster.metric(leader, "quill_state_divergences_total").unwrap() >= 1);
    let audit = cluster.quill_ok(leader, &["audit", "tail", "--limit", "50"], &[]);
    assert!(audit.contains("cluster.alarm"), "{audit}");
}

/// A forwarded write (a no-op) in `actor`'s name, as a node sends it on the Raft port.
fn write_as(actor: Actor) -> Vec<u8> {
    let w = Forwarded { client_id: "x".into(), serial: 1, actor, cert: None, cmd: QuillCommand::Noop, hops: 0 };
    postcard::to_stdvec(&PeerCall::Write(Box::new(w))).unwrap()
}

fn p(cluster: &Cluster, rel: &str) -> String {
    cluster.root.join("identities").join(rel).display().to_string()
}

//! Issue 11, the hole: with a hand-built gRPC client (a valid client certificate of some role, or
//! none at all), no request can change `keys/…`, `jobs/…` or `audit/…` except through that
//! domain's typed requests, read them raw, act anonymously, send what only the cluster builds (a
//! batch of other callers' requests, an audit seal: tried on the Raft port with a member's stolen
//! node certificate), or stop the cluster with a command whose apply would panic (a job digest
//! with a multi-byte character at byte 16 once aborted every node, on every restart).
//!
//! Every attack is refused: the only entries it leaves are the audit chain's records of the
//! refusals made at the API (each `api.denied`, rejected, in the caller's name); every node
//! converges to the same state, and the cluster still commits.

use std::time::Duration;

use quill_node::api::{Forwarded, PeerCall};
use quill_node::identity::{Actor, Role};
use quill_node::jobs::JobCommand;
use quill_node::keys::model::{Kcv, KeyAlg, WrappedKey};
use quill_node::raft::{Command, Request};
use quill_proto::v1::cluster_client::ClusterClient;
use quill_proto::v1::jobs_client::JobsClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::raft_client::RaftClient;
use quill_proto::v1::{
    AuditTailRequest, BenchGetRequest, BenchPutRequest, Caller, CeremonyStartRequest, FetchRequest, MacRequest,
    QueryRequest, RaftPayload,
};
use quill_tests::{Cluster, ClusterOptions, step};
use tonic::Code;

fn bench_put(key: &str, serial: u64) -> BenchPutRequest {
    BenchPutRequest { client_id: "t91-eve".into(), serial, key: key.into(), value: b"forged".to_vec() }
}

fn forwarded(cmd: Command, actor: Actor, serial: u64) -> RaftPayload {
    let w = Forwarded { client_id: "t91-eve".into(), serial, actor, cert: None, cmd, hops: 1 };
    RaftPayload { data: postcard::to_stdvec(&PeerCall::Write(Box::new(w))).expect("encode") }
}

/// A refusal of the node's own checks, or (for the seal forged in node 1's name by another
/// member) of the sender check before them.
fn refused(e: &tonic::Status) -> bool {
    matches!(e.code(), Code::InvalidArgument | Code::PermissionDenied)
}

fn data_key() -> WrappedKey {
    WrappedKey {
        alg: KeyAlg::Aes256,
        blob: vec![0; 40],
        kcv: Kcv("0000000000".into()),
        smk_kcv: Kcv("0000000000".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raw_writes_and_reads_of_the_domains_are_refused() {
    let cluster = Cluster::start("t91", ClusterOptions { nodes: 3, ..ClusterOptions::default() }).await;
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, Duration::from_secs(10), "a leader").await;
    let follower = ids.iter().copied().find(|id| *id != leader).expect("a follower");

    step("an honest benchmark write, so the audit chain has a head");
    let (r, _) = cluster.put(leader, "t91-honest", 1, "t91/before", b"x").await.expect("honest put");
    let (applied, hash) = cluster.wait_converged(&ids, r.log_index, Duration::from_secs(20)).await;
    let before = cluster.quill_ok(leader, &["audit", "export"], &[]);

    let eve = Actor { name: "eve".into(), role: Role::Admin };
    let mut serial = 100;
    for node in [leader, follower] {
        let mut c = cluster.client(node);
        let anon = cluster.channel_without_cert(cluster.node(node).api_addr);
        let mut keys = KeysClient::new(anon.clone());
        let mut jobs = JobsClient::new(anon.clone());
        let mut anon_cluster = ClusterClient::new(anon);
        let other = if node == leader { follower } else { leader };
        let mut raft = RaftClient::new(cluster.peer_channel(other, node));

        step(&format!("node {node}: calls without a client certificate are refused, reads included"));
        serial += 1;
        anon_cluster.bench_put(bench_put("bench/anon", serial)).await.expect_err("anonymous write accepted");
        let start = CeremonyStartRequest { id: "eve".into(), components: 2, smk: true, ..Default::default() };
        keys.ceremony_start(start.clone()).await.expect_err("a ceremony without a caller");
        let query = QueryRequest { what: "keys".into(), id: String::new(), linearizable: false, hops: 0 };
        keys.query(query.clone()).await.expect_err("an anonymous read of the key inventory");
        keys.audit_tail(AuditTailRequest { from: 1, limit: 10, ..Default::default() })
            .await
            .expect_err("anonymous audit read");
        let fetch = FetchRequest { job: "J".into(), stream: "cards".into() };
        jobs.fetch(fetch.clone()).await.expect_err("anonymous fetch of card data");
        let mac = MacRequest { job: "J".into(), sha256: vec![0; 32], mac: vec![0; 32] };
        jobs.mac(mac.clone()).await.expect_err("anonymous MAC");

        step(&format!("node {node}: a write without (client id, serial) → INVALID_ARGUMENT"));
        let mut admin_keys = KeysClient::new(cluster.channel_as(node, "admin:eve"));
        let e = admin_keys.ceremony_start(start.clone()).await.expect_err("a ceremony without a caller");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let nobody = Caller { client_id: String::new(), serial: 1 };
        let e = admin_keys
            .ceremony_start(CeremonyStartRequest { caller: Some(nobody), ..start })
            .await
            .expect_err("a ceremony with no client id");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        step(&format!("node {node}: card output is for operators: an auditor's fetch → PERMISSION_DENIED"));
        let mut auditor_jobs = JobsClient::new(cluster.channel_as(node, "auditor:eve"));
        let e = auditor_jobs.fetch(fetch).await.expect_err("an auditor fetched card data");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let mut custodian_jobs = JobsClient::new(cluster.channel_as(node, "custodian:eve"));
        let e = custodian_jobs.mac(mac).await.expect_err("a custodian used the MAC");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        for key in ["audit/head", "audit/rec/00000000000000000001", "keys/smk", "keys/key/imk.v1", "jobs/job/J", "x"] {
            step(&format!("node {node}: a plain write to {key} → INVALID_ARGUMENT"));
            for actor in ["operator:eve", "admin:eve"] {
                serial += 1;
                let mut c = ClusterClient::new(cluster.channel_as(node, actor));
                let e = c.bench_put(bench_put(key, serial)).await.expect_err("raw domain write accepted");
                assert_eq!(e.code(), Code::InvalidArgument, "{key} as {actor}: {e:?}");
            }
        }

        step(&format!("node {node}: raw reads of the domains → PERMISSION_DENIED"));
        for key in ["audit/head", "keys/smk", "keys/audit-keys", "jobs/job/J", "keys/"] {
            for linearizable in [false, true] {
                let e = c
                    .bench_get(BenchGetRequest { key: key.into(), linearizable, hops: 0 })
                    .await
                    .expect_err("raw domain read answered");
                assert_eq!(e.code(), Code::PermissionDenied, "{key}: {e:?}");
            }
        }

        step(&format!(
            "node {node}: on the Raft port, a batch of forged requests (a node's name, year 2100) → refused"
        ));
        let inner = Request {
            client_id: "victim".into(),
            serial: 1,
            time_ms: 4_102_444_800_000,
            actor: Actor::node(1),
            audit_mac: None,
            cert: None,
            cmd: Command::Put { key: "audit/head".into(), value: vec![0; 40] },
        };
        serial += 1;
        let e = raft.forward(forwarded(Command::Batch(vec![inner]), eve.clone(), serial)).await.expect_err("batch");
        assert!(refused(&e), "{e:?}");

        step(&format!("node {node}: on the Raft port, an audit seal and a raw audit write → refused"));
        let seal = Command::AuditSeal {
            seq: 1,
            hash: [0; 32],
            mac: quill_node::audit::AuditMac { key_kcv: Kcv("0000000000".into()), mac: [0; 32] },
        };
        serial += 1;
        let e = raft.forward(forwarded(seal, Actor::node(1), serial)).await.expect_err("client seal accepted");
        assert!(refused(&e), "{e:?}");
        serial += 1;
        let put = Command::Put { key: "audit/head".into(), value: vec![0; 40] };
        let e = raft.forward(forwarded(put, eve.clone(), serial)).await.expect_err("raw audit write accepted");
        assert!(refused(&e), "{e:?}");

        step(&format!("node {node}: a job whose digest has 'é' at byte 16 → refused, the nodes stay up"));
        let create = Command::Jobs(JobCommand::Create {
            id: "J-eve".into(),
            product: "p".into(),
            profile: String::new(),
            file: "f.csv".into(),
            digest: format!("{}é{}", "0".repeat(15), "0".repeat(47)),
            records: 1,
            skipped: vec![],
            chunk_size: 1,
            chunks: 1,
            data_key: data_key(),
            mac_key: "MAC-OUTPUT".into(),
            force: false,
            reason: None,
            retention_ms: 0,
            tenant: "default".into(),
        });
        serial += 1;
        let otto = Actor { name: "otto".into(), role: Role::Operator };
        let e = raft.forward(forwarded(create, otto, serial)).await.expect_err("malformed digest accepted");
        assert!(refused(&e), "{e:?}");
    }

    step("nothing changed but the audit chain's records of the refusals, on every node alike");
    let after = cluster.quill_ok(leader, &["audit", "export"], &[]);
    let new: Vec<&str> = after.lines().skip(before.lines().count()).collect();
    assert!(!new.is_empty(), "the refusals at the API were not audited");
    for line in &new {
        assert!(line.contains("rejected") && line.contains("api.denied"), "not a refusal record: {line}");
    }
    let st = cluster.status(leader).await.expect("leader status");
    for id in &ids {
        cluster.status(*id).await.unwrap_or_else(|e| panic!("node {id} down: {e}\n{}", cluster.log_tail(*id)));
    }
    let (now, now_hash) = cluster.wait_converged(&ids, st.applied_index, Duration::from_secs(20)).await;
    assert!(now > applied && now_hash != hash, "the refusals' audit records changed the state");

    step("the cluster still commits");
    let (r, _) = cluster.put(follower, "t91-honest", 2, "t91/after", b"y").await.expect("put after the attacks");
    cluster.wait_converged(&ids, r.log_index, Duration::from_secs(20)).await;
    assert_eq!(cluster.read(leader, "t91/after", true).await.expect("read"), Some(b"y".to_vec()));
}

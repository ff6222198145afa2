//! Issue 11, the hole: as an outsider with a hand-built gRPC client, no request can change
//! `keys/…`, `jobs/…` or `audit/…` except through that domain's typed requests, read them raw,
//! act anonymously or as a node, send what only the cluster builds (a batch of other callers'
//! requests, an audit seal), or stop the cluster with a command whose apply would panic (a job
//! digest with a multi-byte character at byte 16 once aborted every node, on every restart).
//!
//! Every attack is refused before it reaches the log: afterwards every node has the same state
//! hash as before the attacks, at the same applied index, and the cluster still commits.

use std::time::Duration;

use quill_node::api::Forwarded;
use quill_node::identity::{Actor, Role};
use quill_node::jobs::JobCommand;
use quill_node::keys::model::{Kcv, KeyAlg, WrappedKey};
use quill_node::raft::{Command, Request};
use quill_proto::v1::jobs_client::JobsClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::raft_client::RaftClient;
use quill_proto::v1::{
    AuditTailRequest, BenchGetRequest, BenchPutRequest, Caller, CeremonyStartRequest, FetchRequest, MacRequest,
    QueryRequest, RaftPayload,
};
use quill_tests::{ACTOR_METADATA, Cluster, ClusterOptions, step};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

fn bench_put(key: &str, actor: &str, serial: u64) -> BenchPutRequest {
    BenchPutRequest {
        client_id: "t91-eve".into(),
        serial,
        key: key.into(),
        value: b"forged".to_vec(),
        actor: actor.into(),
    }
}

/// `msg` from `who`, named in the request's metadata as quill does.
fn as_who<T>(who: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(ACTOR_METADATA, who.parse().expect("metadata"));
    req
}

fn channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").timeout(Duration::from_secs(10)).connect_lazy()
}

fn forwarded(cmd: Command, actor: Actor, serial: u64) -> RaftPayload {
    let w = Forwarded { client_id: "t91-eve".into(), serial, actor, cmd, hops: 1 };
    RaftPayload { data: postcard::to_stdvec(&w).expect("encode") }
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

    let eve = Actor { name: "eve".into(), role: Role::Admin };
    let mut serial = 100;
    for node in [leader, follower] {
        let mut c = cluster.client(node);
        let mut keys = KeysClient::new(channel(cluster.node(node).api_addr));
        let mut jobs = JobsClient::new(channel(cluster.node(node).api_addr));
        let mut raft = RaftClient::new(channel(cluster.node(node).raft_addr));

        step(&format!("node {node}: calls without a caller → UNAUTHENTICATED, reads included"));
        serial += 1;
        let e = c.bench_put(bench_put("bench/anon", "", serial)).await.expect_err("anonymous write accepted");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let start = CeremonyStartRequest { id: "eve".into(), components: 2, smk: true, ..Default::default() };
        let e = keys.ceremony_start(start.clone()).await.expect_err("a ceremony without a caller");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let anonymous = Caller { client_id: "t91-eve".into(), serial: 1, actor: String::new() };
        let e = keys
            .ceremony_start(as_who("admin:eve", CeremonyStartRequest { caller: Some(anonymous), ..start.clone() }))
            .await
            .expect_err("a ceremony by nobody");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let query = QueryRequest { what: "keys".into(), id: String::new(), linearizable: false, hops: 0 };
        let e = keys.query(query.clone()).await.expect_err("an anonymous read of the key inventory");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = keys.audit_tail(AuditTailRequest { from: 1, limit: 10 }).await.expect_err("anonymous audit read");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let fetch = FetchRequest { job: "J".into(), stream: "cards".into() };
        let e = jobs.fetch(fetch.clone()).await.expect_err("anonymous fetch of card data");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let mac = MacRequest { job: "J".into(), sha256: vec![0; 32] };
        let e = jobs.mac(mac.clone()).await.expect_err("anonymous MAC");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

        step(&format!("node {node}: card output is for operators: an auditor's fetch → PERMISSION_DENIED"));
        let e = jobs.fetch(as_who("auditor:eve", fetch)).await.expect_err("an auditor fetched card data");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = jobs.mac(as_who("custodian:eve", mac)).await.expect_err("a custodian used the MAC");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        step(&format!("node {node}: a client claiming the node role → PERMISSION_DENIED"));
        let e = keys.query(as_who("node:node-1", query)).await.expect_err("a client reading as a node");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let as_node = Caller { client_id: "t91-eve".into(), serial: 2, actor: "node:node-1".into() };
        let e = keys
            .ceremony_start(as_who("admin:eve", CeremonyStartRequest { caller: Some(as_node), ..start }))
            .await
            .expect_err("a client acting as a node");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        serial += 1;
        let e = c.bench_put(bench_put("bench/x", "node:node-1", serial)).await.expect_err("client as node");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        for key in ["audit/head", "audit/rec/00000000000000000001", "keys/smk", "keys/key/imk.v1", "jobs/job/J", "x"] {
            step(&format!("node {node}: a plain write to {key} → INVALID_ARGUMENT"));
            for actor in ["operator:eve", "admin:eve"] {
                serial += 1;
                let e = c.bench_put(bench_put(key, actor, serial)).await.expect_err("raw domain write accepted");
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
            cmd: Command::Put { key: "audit/head".into(), value: vec![0; 40] },
        };
        serial += 1;
        let e = raft.forward(forwarded(Command::Batch(vec![inner]), eve.clone(), serial)).await.expect_err("batch");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        step(&format!("node {node}: on the Raft port, an audit seal and a raw audit write → refused"));
        let seal = Command::AuditSeal {
            seq: 1,
            hash: [0; 32],
            mac: quill_node::audit::AuditMac { key_kcv: Kcv("0000000000".into()), mac: [0; 32] },
        };
        serial += 1;
        let e = raft.forward(forwarded(seal, Actor::node(1), serial)).await.expect_err("client seal accepted");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        serial += 1;
        let put = Command::Put { key: "audit/head".into(), value: vec![0; 40] };
        let e = raft.forward(forwarded(put, eve.clone(), serial)).await.expect_err("raw audit write accepted");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

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
            retention_ms: 0,
        });
        serial += 1;
        let otto = Actor { name: "otto".into(), role: Role::Operator };
        let e = raft.forward(forwarded(create, otto, serial)).await.expect_err("malformed digest accepted");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }

    step("nothing changed: same applied index and state hash on every node");
    for id in &ids {
        let st = cluster.status(*id).await.unwrap_or_else(|e| panic!("node {id} down: {e}\n{}", cluster.log_tail(*id)));
        assert_eq!((st.applied_index, st.state_hash.as_str()), (applied, hash.as_str()), "node {id}");
    }

    step("the cluster still commits");
    let (r, _) = cluster.put(follower, "t91-honest", 2, "t91/after", b"y").await.expect("put after the attacks");
    cluster.wait_converged(&ids, r.log_index, Duration::from_secs(20)).await;
    assert_eq!(cluster.read(leader, "t91/after", true).await.expect("read"), Some(b"y".to_vec()));
}

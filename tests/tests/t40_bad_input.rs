//! Bad input gets an error, not a crash: malformed forwarded-write bytes, an empty client id, a
//! membership change naming an unknown node, a learner without its addresses, garbage on the
//! Raft and API ports. After each, every node still answers Status and the cluster still commits.

use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;

use quill_node::api::Forwarded;
use quill_node::identity::{Actor, Role};
use quill_node::raft::Command;
use quill_proto::v1::raft_client::RaftClient;
use quill_proto::v1::{
    AddLearnerRequest, BenchPutRequest, ChangeMembershipRequest, NodeInfo, RaftPayload, SnapshotChunk,
};
use quill_tests::{Cluster, ClusterOptions, step};
use tonic::Code;
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_nodes_stay_up() {
    let cluster = Cluster::start("t40", ClusterOptions { nodes: 3, ..ClusterOptions::default() }).await;
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, Duration::from_secs(10), "a leader").await;
    let follower = ids.iter().copied().find(|id| *id != leader).expect("a follower");

    for node in [leader, follower] {
        step(&format!("node {node}: malformed forwarded-write bytes on the Raft port → InvalidArgument"));
        let mut raft = raft_client(&cluster, node);
        let err = raft
            .forward(RaftPayload { data: vec![0xff, 0xff, 0xff, 0xff] })
            .await
            .expect_err("malformed forwarded write accepted");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

        step(&format!("node {node}: trailing bytes after a valid forwarded write → InvalidArgument"));
        let mut data = valid_forwarded();
        data.extend_from_slice(b"junk");
        let err = raft.forward(RaftPayload { data }).await.expect_err("trailing bytes accepted");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

        step(&format!("node {node}: empty client id → InvalidArgument"));
        let mut c = cluster.client(node);
        let req = BenchPutRequest { client_id: String::new(), serial: 3, key: "bench/k".into(), value: b"v".to_vec() };
        let err = c.bench_put(req).await.expect_err("empty client id accepted");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }

    let membership_index = cluster.metric(leader, "quill_raft_membership_index").expect("membership index");
    step(&format!("ChangeMembership naming unknown node 99 (at membership index {membership_index}) → NotFound"));
    let mut c = cluster.client(leader);
    let mut voters = ids.clone();
    voters.push(99);
    let err = c
        .change_membership(ChangeMembershipRequest {
            voters: voters.clone(),
            expected_membership_index: membership_index,
        })
        .await
        .expect_err("unknown node accepted as voter");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    step("ChangeMembership from a stale view of the membership → FailedPrecondition");
    let err = c
        .change_membership(ChangeMembershipRequest {
            voters: ids.clone(),
            expected_membership_index: membership_index + 7,
        })
        .await
        .expect_err("stale membership index accepted");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    step("ChangeMembership with no voters → an error");
    let err = c
        .change_membership(ChangeMembershipRequest { voters: vec![], expected_membership_index: 0 })
        .await
        .expect_err("empty voter set accepted");
    assert_ne!(err.code(), Code::Ok);

    step("AddLearner without a node, and with empty addresses → InvalidArgument");
    let err = c.add_learner(AddLearnerRequest { node: None }).await.expect_err("missing node accepted");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let bad = NodeInfo { id: 7, raft_addr: String::new(), api_addr: String::new() };
    let err = c.add_learner(AddLearnerRequest { node: Some(bad) }).await.expect_err("empty addresses accepted");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    step("garbage Raft payloads → errors");
    let mut raft = raft_client(&cluster, follower);
    let garbage = vec![0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    raft.append_entries(RaftPayload { data: garbage.clone() }).await.expect_err("garbage AppendEntries accepted");
    raft.vote(RaftPayload { data: garbage.clone() }).await.expect_err("garbage Vote accepted");
    raft.install_snapshot(SnapshotChunk { data: garbage }).await.expect_err("garbage snapshot chunk accepted");

    step("raw non-HTTP/2 bytes on every gRPC port");
    for id in &ids {
        let n = cluster.node(*id);
        for addr in [n.raft_addr, n.api_addr, n.http_addr] {
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x00, 0x13, 0x37]);
                let _ = s.write_all(&[0u8; 4096]);
            }
        }
    }

    step("every node still answers Status and the cluster still commits");
    for id in &ids {
        let st = cluster
            .status(*id)
            .await
            .unwrap_or_else(|e| panic!("node {id} down after bad input: {e}\n{}", cluster.log_tail(*id)));
        assert!(!st.role.is_empty());
    }
    let (r, _) = cluster.put(follower, "t40-ok", 1, "t40/ok", b"ok").await.expect("a good write after bad input");
    cluster.wait_converged(&ids, r.log_index, Duration::from_secs(20)).await;
}

/// A member's channel to `node`'s Raft port (another node's own certificate).
fn raft_client(cluster: &Cluster, node: u64) -> RaftClient<Channel> {
    let from = cluster.ids().into_iter().find(|id| *id != node).expect("another node");
    RaftClient::new(cluster.peer_channel(from, node))
}

/// A well-formed forwarded benchmark write, as a follower sends it to the leader.
fn valid_forwarded() -> Vec<u8> {
    let w = Forwarded {
        client_id: "t40".into(),
        serial: 2,
        actor: Actor { name: "test".into(), role: Role::Operator },
        cert: None,
        cmd: Command::Put { key: "bench/k".into(), value: b"v".to_vec() },
        hops: 1,
    };
    postcard::to_stdvec(&quill_node::api::PeerCall::Write(Box::new(w))).expect("encode")
}

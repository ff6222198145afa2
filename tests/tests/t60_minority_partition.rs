//! A minority partition cannot commit, and everyone converges after healing. Every node-to-node
//! Raft link runs through an in-process TCP fault proxy (`quill_tests::FaultProxy`); the test cuts
//! the links between {leader, one follower} and the other three, in both directions.
//!
//! - A write sent to the isolated old leader is not acknowledged (it times out, reported as
//!   indeterminate), and the minority's commit index does not move.
//! - The majority elects a new leader in a higher term and keeps committing.
//! - After healing, all five reach the same applied index and state hash; the minority's write
//!   was never applied anywhere, and the majority's writes are on every node.

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, RaftSettings, step, wait_until};

const MAJORITY_WRITES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minority_cannot_commit_and_all_converge_after_healing() {
    let raft = RaftSettings { write_timeout_ms: 3000, ..RaftSettings::default() };
    let cluster =
        Cluster::start("t60", ClusterOptions { nodes: 5, raft, proxies: true, ..ClusterOptions::default() }).await;
    let ids = cluster.ids();

    step("20 writes before the partition");
    let leader = cluster.wait_leader(&ids, Duration::from_secs(10), "a leader").await;
    for serial in 1..=20 {
        let key = format!("t60/before/{serial}");
        cluster.put(leader, "t60-before", serial, &key, b"v").await.unwrap_or_else(|s| panic!("{key}: {s}"));
    }
    cluster.wait_converged(&ids, 0, Duration::from_secs(20)).await;

    let old = cluster.status(leader).await.expect("leader status");
    let buddy = ids.iter().copied().find(|id| *id != leader).expect("a follower");
    let minority = [leader, buddy];
    let majority: Vec<u64> = ids.iter().copied().filter(|id| !minority.contains(id)).collect();
    step(&format!("partition {{{leader} (leader, term {}), {buddy}}} from {majority:?}", old.term));
    cluster.partition(&minority);

    step("a write to the isolated leader is not acknowledged");
    let refused = cluster.put(leader, "t60-minority", 1, "t60/minority", b"lost").await;
    let status = refused.expect_err("the minority acknowledged a write");
    step(&format!("minority write answered {:?}: {}", status.code(), status.message()));
    assert!(
        matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Unavailable | tonic::Code::Cancelled),
        "unexpected answer to the minority write: {status:?}"
    );

    step("the majority elects a leader in a higher term");
    let (new_leader, new_term) =
        cluster.wait_leader_after(&majority, old.term, Duration::from_secs(20), "a leader among the majority").await;
    step(&format!("node {new_leader} leads term {new_term}"));

    step(&format!("{MAJORITY_WRITES} writes through the majority"));
    let mut last = 0;
    for serial in 1..=MAJORITY_WRITES {
        let node = majority[(serial as usize) % majority.len()];
        let key = format!("t60/majority/{serial}");
        let (r, _) = cluster
            .put(node, "t60-majority", serial, &key, key.as_bytes())
            .await
            .unwrap_or_else(|s| panic!("{key}: {s}"));
        last = last.max(r.log_index);
    }

    step("the minority committed nothing while cut off");
    for id in minority {
        let st = cluster.status(id).await.expect("minority status");
        assert!(
            st.committed_index <= old.committed_index,
            "node {id} committed up to {} while partitioned (before: {}, majority at {last})",
            st.committed_index,
            old.committed_index
        );
    }
    let cut_used: u64 = cluster.links.values().map(|l| l.dropped()).sum();
    assert!(cut_used > 0, "no connection was refused: the partition was not exercised");

    step("heal; all five converge");
    cluster.heal();
    let (applied, hash) = cluster.wait_converged(&ids, last, Duration::from_secs(30)).await;
    step(&format!("converged at {applied}, state hash {}", &hash[..12.min(hash.len())]));

    step("the minority's write was never applied; the majority's writes are everywhere");
    let leader_now = cluster.wait_leader(&ids, Duration::from_secs(10), "a leader after healing").await;
    assert_eq!(cluster.read(leader_now, "t60/minority", true).await.expect("read"), None);
    for id in &ids {
        assert_eq!(cluster.read(*id, "t60/minority", false).await.expect("read"), None, "node {id}");
        for serial in [1, MAJORITY_WRITES] {
            let key = format!("t60/majority/{serial}");
            let v = cluster.read(*id, &key, false).await.expect("read");
            assert_eq!(v.as_deref(), Some(key.as_bytes()), "node {id}: {key}");
        }
    }
    wait_until(Duration::from_secs(5), "the old leader to follow", || async {
        let st = cluster.status(leader).await?;
        if st.role == "follower" { Ok(()) } else { Err(st.role) }
    })
    .await;
}

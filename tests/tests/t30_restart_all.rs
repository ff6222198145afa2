//! Restart all five nodes: the replicated state (same state hash, every value) and the
//! membership (the same five voters) survive, a leader is elected again and writes go on.

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, step};

const WRITES: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_and_membership_survive_a_full_restart() {
    let mut cluster = Cluster::start("t30", ClusterOptions::default()).await;
    let ids = cluster.ids();

    step(&format!("write {WRITES} keys"));
    let mut max_index = 0;
    for serial in 1..=WRITES {
        let node = ids[(serial % ids.len() as u64) as usize];
        let key = format!("t30/{serial}");
        let (r, _) =
            cluster.put(node, "t30", serial, &key, key.as_bytes()).await.unwrap_or_else(|s| panic!("{key}: {s}"));
        max_index = max_index.max(r.log_index);
    }
    let (applied, hash) = cluster.wait_converged(&ids, max_index, Duration::from_secs(30)).await;
    let leader = cluster.wait_leader(&ids, Duration::from_secs(5), "the leader before the restart").await;
    let before = cluster.status(leader).await.expect("status");
    let mut voters_before: Vec<u64> = before.voters.iter().map(|n| n.id).collect();
    voters_before.sort_unstable();
    step(&format!("converged at {applied} (hash {hash}); voters {voters_before:?}"));

    step("stop all five nodes (SIGTERM)");
    for id in &ids {
        cluster.terminate(*id);
    }

    step("start all five again with the same configs and data");
    for id in &ids {
        cluster.spawn(*id);
    }
    for id in &ids {
        cluster.wait_health(*id).await;
    }
    let leader = cluster.wait_leader(&ids, Duration::from_secs(30), "a leader after the restart").await;
    step(&format!("node {leader} leads after the restart"));

    step("every node is back at (at least) the same applied index with the same state hash");
    let (applied_after, hash_after) = cluster.wait_converged(&ids, applied, Duration::from_secs(30)).await;
    // A new leader commits a blank entry, which changes the applied index but not the data.
    assert!(applied_after >= applied);
    assert_eq!(hash_after, hash, "state hash changed across the restart");

    step("the membership is the same five voters");
    for id in &ids {
        let st = cluster.status(*id).await.expect("status");
        let mut voters: Vec<u64> = st.voters.iter().map(|n| n.id).collect();
        voters.sort_unstable();
        assert_eq!(voters, voters_before, "node {id}'s voters");
        assert!(st.learners.is_empty(), "node {id} has learners {:?}", st.learners);
    }

    step("every value reads back on every node");
    for id in &ids {
        for serial in 1..=WRITES {
            let key = format!("t30/{serial}");
            let v = cluster.read(*id, &key, false).await.unwrap_or_else(|s| panic!("read {key} on {id}: {s}"));
            assert_eq!(v.as_deref(), Some(key.as_bytes()), "node {id}, {key}");
        }
    }

    step("a retried write from before the restart is still recognised as a duplicate");
    let (r, _) = cluster.put(leader, "t30", 1, "t30/1", b"t30/1").await.expect("retry");
    assert!(r.duplicate, "the dedup record of (t30, 1) did not survive the restart");

    step("new writes are accepted");
    cluster.put(leader, "t30", WRITES + 1, "t30/after", b"after").await.expect("write after restart");
}

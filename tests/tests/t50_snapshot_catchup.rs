//! A follower stopped (SIGSTOP) for long enough that the leader snapshots and purges the log it
//! would need catches up by snapshot after SIGCONT: it converges to the same applied index and
//! state hash, and it holds the values written while it was stopped.

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, RaftSettings, step, wait_until};

const WRITES: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_follower_catches_up_by_snapshot() {
    let raft =
        RaftSettings { snapshot_logs_since_last: 100, max_in_snapshot_log_to_keep: 10, ..RaftSettings::default() };
    let cluster = Cluster::start("t50", ClusterOptions { nodes: 5, raft, ..ClusterOptions::default() }).await;
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, Duration::from_secs(10), "a leader").await;
    let follower = ids.iter().copied().rfind(|id| *id != leader).expect("a follower");

    let before = cluster.status(follower).await.expect("follower status");
    step(&format!("SIGSTOP follower {follower} at applied index {}", before.applied_index));
    cluster.pause(follower);

    step(&format!("write {WRITES} keys through the leader, node {leader}"));
    let mut last = 0;
    for serial in 1..=WRITES {
        let key = format!("t50/{serial}");
        let (r, _) =
            cluster.put(leader, "t50", serial, &key, key.as_bytes()).await.unwrap_or_else(|s| panic!("{key}: {s}"));
        last = r.log_index;
    }

    step("wait until the leader has purged the log past what the follower has");
    let purged = wait_until(Duration::from_secs(30), "the leader to purge past the stopped follower", || async {
        let st = cluster.status(leader).await?;
        if st.purged_index > before.last_log_index + 1 {
            Ok(st.purged_index)
        } else {
            Err(format!("leader snapshot {} purged {}", st.snapshot_index, st.purged_index))
        }
    })
    .await;
    step(&format!("leader purged up to {purged}; SIGCONT follower {follower}"));
    cluster.resume(follower);

    step("all five converge");
    let (applied, _) = cluster.wait_converged(&ids, last, Duration::from_secs(60)).await;
    let st = cluster.status(follower).await.expect("follower status");
    step(&format!("follower at {applied}, snapshot index {}", st.snapshot_index));
    assert!(st.snapshot_index >= purged.min(last), "the follower did not install a snapshot: {st:?}");

    step("the follower holds what was written while it was stopped");
    for serial in [1, WRITES / 2, WRITES] {
        let key = format!("t50/{serial}");
        let v = cluster.read(follower, &key, false).await.expect("read");
        assert_eq!(v.as_deref(), Some(key.as_bytes()), "{key}");
    }
}

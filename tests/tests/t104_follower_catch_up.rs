//! Issue 15, "followers that fall behind never catch up": a follower that was down while a batch
//! wrote tens of megabytes of sealed chunks into the log comes back while a second batch is
//! writing, catches up with the leader by log replication before that batch ends, and disturbs
//! nobody on the way (no election, the same leader and term).
//!
//! Before appends were bounded by bytes, openraft sent a lagging follower up to 300 entries (each
//! ~0.5 MB with a sealed chunk) in one AppendEntries that had `heartbeat_interval` (100 ms) to
//! complete: it timed out on every retry and the follower stayed behind.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, step, wait_until, write_dda_batch};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_back_from_the_dead_catches_up_without_an_election() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let mut cluster = Cluster::start("t104", opts).await;
    cluster.keys_ready().await;
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(30), "a leader").await;
    let behind = cluster.ids().into_iter().find(|id| *id != leader).unwrap();

    step(&format!("node {behind} down; a 3,000-card batch in chunks of 100 runs on the other two"));
    cluster.kill(behind);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cards.csv");
    write_dda_batch(&input, 3000, 3_000_000);
    let job = cluster.submit_dda_job(leader, &input, "100");
    cluster.wait_job_done(leader, &job).await;
    let before = cluster.status(leader).await.unwrap();
    assert_eq!(before.role, "leader");
    let missed = before.applied_index;

    step(&format!("a second batch is writing; node {behind} comes back and catches up to index {missed} meanwhile"));
    let input_b = dir.path().join("more.csv");
    write_dda_batch(&input_b, 2000, 4_000_000);
    let second = cluster.submit_dda_job(leader, &input_b, "100");
    cluster.spawn(behind);
    cluster.wait_health(behind).await;
    let started = std::time::Instant::now();
    wait_until(Duration::from_secs(300), "the follower caught up", || async {
        let s = cluster.status(behind).await?;
        if s.applied_index >= missed { Ok(()) } else { Err(format!("applied {} of {missed}", s.applied_index)) }
    })
    .await;
    let caught_up = started.elapsed();
    let b = cluster.query(leader, "job", &second).await.unwrap();
    eprintln!("caught up in {caught_up:?}; the second batch then at {}/{} cards", b["cards_done"], b["records"]);
    assert_ne!(b["state"], "done", "the follower caught up only once the cluster stopped writing");
    cluster.wait_job_done(leader, &second).await;
    let after = cluster.status(leader).await.unwrap();
    assert_eq!(
        (after.role.as_str(), after.term),
        ("leader", before.term),
        "the returning follower caused an election (term {} -> {})",
        before.term,
        after.term
    );
    let s = cluster.status(behind).await.unwrap();
    assert_eq!(s.leader, Some(leader));
    assert_eq!(s.snapshot_index, 0, "it caught up from the log, not from a snapshot");
    let ids = cluster.ids();
    cluster.wait_converged(&ids, after.applied_index, Duration::from_secs(30)).await;
}

//! Batches across the cluster, continued (3 nodes, hsm-sim):
//! - the whole cluster restarts mid-batch: the batch resumes and completes, every card once;
//! - a node holding a claim is frozen (SIGSTOP) until its lease expires, another node redoes the
//!   chunk, the frozen node resumes: its late renewal or result is refused by the fencing token,
//!   the chunk's output is the other node's, and every card is delivered once.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, step, wait_until, write_dda_batch};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_restart_mid_batch_resumes_and_completes() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let mut cluster = Cluster::start("t96r", opts).await;
    cluster.keys_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("restart.csv");
    write_dda_batch(&input, 1000, 1_000_000);
    let job = cluster.submit_dda_job(1, &input, "50");

    step("wait for some chunks, then restart every node");
    wait_until(Duration::from_secs(120), "a few chunks done", || async {
        let j = cluster.query(1, "job", &job).await?;
        let done = j["chunks_done"].as_u64().unwrap_or(0);
        if done >= 3 { Ok(()) } else { Err(format!("{done} chunks done")) }
    })
    .await;
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.spawn(id);
    }
    for id in cluster.ids() {
        cluster.wait_health(id).await;
    }
    cluster.wait_leader(&cluster.ids(), Duration::from_secs(30), "after the restart").await;

    step("the batch resumes and completes");
    let j = cluster.wait_job_done(2, &job).await;
    assert_eq!(j["cards_done"], 1000);
    cluster.check_output(3, &job, &input, dir.path(), 1000).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_claim_holder_is_fenced_when_it_comes_back() {
    fenced_after(Cut::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_claim_holder_is_fenced_when_the_partition_heals() {
    fenced_after(Cut::Partition).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// SIGSTOP / SIGCONT.
    Freeze,
    /// Cut every Raft link of the node, then heal.
    Partition,
}

async fn fenced_after(cut: Cut) {
    let opts = ClusterOptions { nodes: 3, hsm: true, proxies: cut == Cut::Partition, ..ClusterOptions::default() };
    let name = if cut == Cut::Freeze { "t96f" } else { "t96p" };
    let cluster = Cluster::start(name, opts).await;
    cluster.keys_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("fence.csv");
    write_dda_batch(&input, 1200, 2_000_000);
    let job = cluster.submit_dda_job(1, &input, "200");
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10), "leader").await;

    step("freeze a node (not the leader) right after it claims a chunk");
    let (frozen, chunk) = wait_until(Duration::from_secs(60), "a claim by a follower", || async {
        let chunks = cluster.query(leader, "chunks", &job).await?;
        for c in chunks.as_array().unwrap() {
            let node = c["node"].as_u64().unwrap_or(0);
            if c["state"] == "claimed" && node != leader {
                return Ok((node, c["n"].as_u64().unwrap()));
            }
        }
        Err("no follower claim yet".into())
    })
    .await;
    if cut == Cut::Partition {
        // The claimant must have applied its own claim before the cut, or it never works on the
        // chunk (it waits for the entry, gives up) and has nothing stale to send after the heal.
        let claimed_at = cluster.status(leader).await.unwrap().applied_index;
        wait_until(Duration::from_secs(10), "the claimant applied its claim", || async {
            let applied = cluster.status(frozen).await?.applied_index;
            if applied >= claimed_at { Ok(()) } else { Err(format!("node {frozen} at {applied} < {claimed_at}")) }
        })
        .await;
    }
    match cut {
        Cut::Freeze => cluster.pause(frozen),
        Cut::Partition => cluster.partition(&[frozen]),
    }

    step("its lease expires and another node prepares the chunk");
    let redone = wait_until(Duration::from_secs(120), "the chunk redone elsewhere", || async {
        let chunks = cluster.query(leader, "chunks", &job).await?;
        let c = chunks.as_array().unwrap().iter().find(|c| c["n"].as_u64() == Some(chunk)).cloned().unwrap();
        if c["state"] == "done" && c["node"].as_u64() != Some(frozen) {
            Ok(c)
        } else {
            Err(format!("chunk {chunk}: {} by {}", c["state"], c["node"]))
        }
    })
    .await;
    assert!(redone["claims"].as_u64().unwrap() >= 2);

    step("the frozen node resumes: its stale claim is refused, the output stays the other node's");
    match cut {
        Cut::Freeze => cluster.resume(frozen),
        Cut::Partition => cluster.heal(),
    }
    let j = cluster.wait_job_done(leader, &job).await;
    assert_eq!(j["cards_done"], 1200, "{j}");
    // Give the resumed node's renewal or late result time to arrive.
    // Fencing shows one of two ways: the node's stale renewal or late result is refused by the
    // state machine (in the audit chain), or the node sees the newer claim in its own state and
    // drops the work (in its log). Either way it never commits.
    // A frozen process may also come back with its HSM slot taken out by the pool (its operation
    // timers fired during the freeze) and fail the chunk on its own; the partition variant always
    // gets as far as the refusal.
    let timeout = if cut == Cut::Partition { 60 } else { 15 };
    let refused = wait_until_opt(Duration::from_secs(timeout), || async {
        let out = cluster.quill(leader, &["audit", "export"], &[]).1;
        let hit = out.lines().find(|l| {
            l.contains(&format!("job:{job}/chunk:{chunk}"))
                && l.contains(&format!("node-{frozen}"))
                && (l.contains("job.complete") || l.contains("job.renew"))
                && l.contains("rejected")
        });
        if let Some(h) = hit {
            return Ok(format!("refused in the audit chain: {h}"));
        }
        let log = std::fs::read_to_string(cluster.node(frozen).log_path()).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("fenced") && l.contains(&job) && l.contains(&format!("chunk={chunk}")))
            .map(|l| format!("dropped by the node itself: {l}"))
            .ok_or_else(|| "no fencing yet".to_string())
    })
    .await;
    match (&refused, cut) {
        (Some(r), _) => println!("fenced: {r}"),
        (None, Cut::Freeze) => println!("the resumed node gave up the chunk without trying to commit it"),
        (None, Cut::Partition) => panic!("the partitioned node's stale claim was never refused"),
    }
    let out = cluster.quill(leader, &["audit", "export"], &[]).1;
    assert!(
        !out.lines().any(|l| l.contains(&format!("job:{job}/chunk:{chunk}"))
            && l.contains(&format!("node-{frozen}"))
            && l.contains("job.complete")
            && l.contains("\"outcome\":\"ok")),
        "the fenced node committed chunk {chunk}"
    );
    // (The resumed node may have started an election: reads wait for a leader.)
    let after = wait_until(Duration::from_secs(30), "chunks readable", || cluster.query(leader, "chunks", &job)).await;
    let c = after.as_array().unwrap().iter().find(|c| c["n"].as_u64() == Some(chunk)).unwrap();
    assert_eq!(c["output_digest"], redone["output_digest"], "the chunk's output changed");
    assert_eq!(c["node"], redone["node"]);
    cluster.check_output(leader, &job, &input, dir.path(), 1200).unwrap();
}

/// Like `wait_until`, but `None` on timeout instead of a panic.
async fn wait_until_opt<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

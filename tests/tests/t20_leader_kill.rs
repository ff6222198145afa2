//! SIGKILL the leader under a write load: a new leader is elected within ten election timeouts
//! (split votes cost rounds; the time is reported, not asserted), writes resume, every
//! acknowledged write is present (read back from the new leader, linearizably), and no write is
//! applied twice: each key is written by one request, so a retry that was applied again would
//! report `replaced: true`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quill_node::raft::Outcome;
use quill_tests::{Cluster, ClusterOptions, Rng, step, wait_until};

const WRITERS: u64 = 8;

/// What the writers share with the test: which nodes to use and what was acknowledged.
struct Load {
    live: Mutex<Vec<u64>>,
    stop: AtomicBool,
    acked: AtomicU64,
    /// key → outcome of every acknowledged write.
    results: Mutex<BTreeMap<String, Outcome>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_under_load_loses_and_duplicates_nothing() {
    let opts = ClusterOptions::default();
    let election_max = Duration::from_millis(opts.raft.election_timeout_max_ms);
    let cluster = Arc::new(Cluster::start("t20", opts).await);
    let ids = cluster.ids();
    let load = Arc::new(Load {
        live: Mutex::new(ids.clone()),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        results: Mutex::new(BTreeMap::new()),
    });

    step(&format!("start {WRITERS} writers through random nodes (a failed write is retried with its serial)"));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let cluster = cluster.clone();
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x20 + w * 104_729);
            let client_id = format!("t20-writer-{w}");
            let mut serial = 0;
            while !load.stop.load(Ordering::SeqCst) {
                serial += 1;
                let key = format!("t20/{w}/{serial}");
                // Retry the same (client id, serial) until acknowledged or the load stops.
                loop {
                    let node = {
                        let live = load.live.lock().expect("live lock");
                        rng.pick(&live)
                    };
                    match cluster.put(node, &client_id, serial, &key, key.as_bytes()).await {
                        Ok((_, outcome)) => {
                            load.results.lock().expect("results lock").insert(key.clone(), outcome);
                            load.acked.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(_) if load.stop.load(Ordering::SeqCst) => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        }));
    }

    step("let the load run until 200 writes are acknowledged");
    wait_until(Duration::from_secs(20), "200 acknowledged writes", || async {
        let n = load.acked.load(Ordering::SeqCst);
        if n >= 200 { Ok(()) } else { Err(format!("{n} acknowledged")) }
    })
    .await;

    let leader = cluster.wait_leader(&ids, Duration::from_secs(5), "the current leader").await;
    let old_term = cluster.status(leader).await.expect("leader status").term;
    step(&format!("SIGKILL the leader, node {leader} (term {old_term})"));
    load.live.lock().expect("live lock").retain(|id| *id != leader);
    let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    let killed_at = Instant::now();
    cluster.sigkill(leader);

    // Bounded by the wait (ten election timeouts: split votes cost rounds, and five nodes share a
    // busy 2-core machine); the time itself is reported, not asserted.
    let (new_leader, new_term) =
        cluster.wait_leader_after(&survivors, old_term, 10 * election_max, "a new leader among the survivors").await;
    let elected_in = killed_at.elapsed();
    step(&format!("node {new_leader} leads term {new_term} after {elected_in:?}"));

    step("writes resume: 200 more acknowledged");
    let before = load.acked.load(Ordering::SeqCst);
    wait_until(Duration::from_secs(20), "200 more acknowledged writes after the failover", || async {
        let n = load.acked.load(Ordering::SeqCst) - before;
        if n >= 200 { Ok(()) } else { Err(format!("{n} acknowledged since the kill")) }
    })
    .await;

    step("stop the load");
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("writer task");
    }
    let results = std::mem::take(&mut *load.results.lock().expect("results lock"));
    step(&format!("{} writes acknowledged", results.len()));

    step("no acknowledged write was applied twice");
    for (key, outcome) in &results {
        assert_eq!(*outcome, Outcome::Put { replaced: false }, "{key}: applied more than once");
    }

    step("every acknowledged write reads back from the new leader (linearizable)");
    for key in results.keys() {
        let v = cluster.read(new_leader, key, true).await.unwrap_or_else(|s| panic!("read {key}: {s}"));
        assert_eq!(v.as_deref(), Some(key.as_bytes()), "acknowledged write {key} lost");
    }

    step("the survivors converge");
    cluster.wait_converged(&survivors, 0, Duration::from_secs(30)).await;
}

//! Five nodes: 1,000 writes sent through randomly chosen nodes (followers forward to the leader)
//! are applied identically everywhere: every node reaches the same applied index and state hash,
//! and every node's own state holds every value written.

use std::sync::Arc;
use std::time::Duration;

use quill_node::raft::Outcome;
use quill_tests::{Cluster, ClusterOptions, Rng, step};

const WRITERS: u64 = 10;
const PER_WRITER: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_random_nodes_are_applied_everywhere() {
    let cluster = Arc::new(Cluster::start("t10", ClusterOptions::default()).await);
    let ids = cluster.ids();

    step(&format!("{} writers × {PER_WRITER} puts, each through a random node", WRITERS));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let cluster = cluster.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x5eed ^ ((w + 1) * 7919));
            let mut max_index = 0;
            for serial in 1..=PER_WRITER {
                let node = rng.pick(&ids);
                let key = format!("t10/{w}/{serial}");
                let (resp, outcome) = cluster
                    .put(node, &format!("t10-writer-{w}"), serial, &key, key.as_bytes())
                    .await
                    .unwrap_or_else(|s| panic!("put {key} through node {node}: {s}"));
                assert!(!resp.duplicate, "{key}: a first write came back as a duplicate");
                assert_eq!(outcome, Outcome::Put { replaced: false }, "{key}");
                max_index = max_index.max(resp.log_index);
            }
            max_index
        }));
    }
    let mut max_index = 0;
    for t in tasks {
        max_index = max_index.max(t.await.expect("writer task"));
    }

    step(&format!("wait until all nodes applied index ≥ {max_index} with one state hash"));
    let (applied, hash) = cluster.wait_converged(&ids, max_index, Duration::from_secs(30)).await;
    step(&format!("converged at applied index {applied}, state hash {hash}"));

    step("every node's local state holds every value");
    for id in &ids {
        for w in 0..WRITERS {
            for serial in 1..=PER_WRITER {
                let key = format!("t10/{w}/{serial}");
                let v = cluster.read(*id, &key, false).await.unwrap_or_else(|s| panic!("read {key} on node {id}: {s}"));
                assert_eq!(v.as_deref(), Some(key.as_bytes()), "node {id}, key {key}");
            }
        }
    }
}

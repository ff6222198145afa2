//! An HSM slot that starts failing mid-batch (hsm-sim fault injection, 3 nodes with two slots
//! each): the pool takes the slot out, its work moves to the node's other slot, the batch
//! completes with no card failed and every card once, and the node keeps preparing chunks.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, step, wait_until, write_dda_batch};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_moves_off_a_failing_slot() {
    let opts = ClusterOptions { nodes: 3, hsm: true, hsm_slots: 2, ..ClusterOptions::default() };
    let cluster = Cluster::start("t98", opts).await;
    cluster.keys_ready().await;

    step("submit 1,200 cards; slot 0 of node 2 starts failing after the first chunks");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("slots.csv");
    write_dda_batch(&input, 1200, 3_000_000);
    let job = cluster.submit_dda_job(1, &input, "60");
    wait_until(Duration::from_secs(120), "a few chunks done", || async {
        let j = cluster.query(1, "job", &job).await?;
        if j["chunks_done"].as_u64().unwrap_or(0) >= 2 { Ok(()) } else { Err(format!("{}", j["chunks_done"])) }
    })
    .await;
    let faults = cluster.node(2).dir.join("hsm/faults.toml");
    std::fs::write(&faults, "failing_slots = [0]\n").unwrap();
    let fault_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;

    step("the batch completes, nothing failed, node 2 kept working on its other slot");
    let j = cluster.wait_job_done(1, &job).await;
    assert_eq!(j["cards_done"], 1200);
    assert_eq!(j["failures"].as_array().unwrap().len(), 0, "{}", j["failures"]);
    let chunks = cluster.query(1, "chunks", &job).await.unwrap();
    let after: Vec<&Value> = chunks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["node"].as_u64() == Some(2) && c["done_ms"].as_u64().unwrap_or(0) > fault_ms + 1000)
        .collect();
    assert!(!after.is_empty(), "node 2 prepared nothing after its slot 0 failed");
    let status = cluster.quill_ok(2, &["cluster", "status", "--json"], &[]);
    let v: Value = serde_json::from_str(status.trim()).unwrap();
    let n2 = v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 2).unwrap().clone();
    let slots = n2["hsm"]["slots"].as_array().cloned().unwrap_or_default();
    assert_eq!(slots.len(), 2, "{n2}");
    assert!(slots.iter().any(|s| s["state"] != "healthy"), "slot 0 still healthy: {slots:?}");
    println!("node 2 prepared {} chunk(s) after the fault; slots {slots:?}", after.len());

    step("healed: the slot is re-admitted");
    std::fs::write(&faults, "").unwrap();
    wait_until(Duration::from_secs(60), "slot 0 of node 2 healthy again", || async {
        let status = cluster.quill(2, &["cluster", "status", "--json"], &[]).1;
        let v: Value = serde_json::from_str(status.trim()).map_err(|e| e.to_string())?;
        let n2 = v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 2).cloned().unwrap_or_default();
        let ok = n2["hsm"]["slots"].as_array().is_some_and(|s| s.iter().all(|s| s["state"] == "healthy"));
        if ok { Ok(()) } else { Err(format!("{}", n2["hsm"]["slots"])) }
    })
    .await;
}

//! Purge that erases (issue 13); key destruction erases the same way: after `quill job ack` said "input and output purged", the job's
//! data key was still in its record and, with the sealed chunks, in the Raft log, so with the SMK
//! the "purged" PANs came back. Now the record drops the wrapped key and every node's eraser
//! compacts its log, snapshot and database files: with every file of every node (and the SMK, which
//! opens nothing without the data key), the wrapped data key is nowhere.
//!
//! The check looks for the wrapped data key as it sat in the job record in every value of every
//! column family of each node's database (RocksDB compresses its table files, so a byte search of
//! them would prove little) and, byte for byte, in every other file of the node (the snapshot
//! file, the write-ahead log, the HSM's token files). Control: before the ack the same search finds
//! the key.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use quill_node::jobs::JobRecord;
use quill_node::keys::model::KeyRecord;
use quill_node::store::{Cf, Store};
use quill_tests::secrets;
use quill_tests::{Cluster, ClusterOptions, step, wait_until, write_dda_batch};

const OPERATOR: [(&str, &str); 1] = [("QUILL_ACTOR", "operator:otto")];

/// Where a stopped node's database holds the key, in any live value.
fn values_holding(db: &Path, blob: &[u8]) -> Vec<String> {
    secrets::values_holding(db, &secrets::forms(blob))
}

/// Files under `dir` holding the key, RocksDB's compressed table files aside.
fn files_holding(dir: &Path, blob: &[u8]) -> Vec<String> {
    secrets::files_holding(dir, &secrets::forms(blob), true)
}

/// Wait until node `id`'s eraser reports a pass beyond log index `after`.
async fn wait_erased(cluster: &Cluster, id: u64, after: u64) {
    let log = cluster.node(id).log_path();
    wait_until(Duration::from_secs(120), "the eraser to finish", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let done = text.lines().filter(|l| l.contains("purged data erased")).any(|l| {
            l.split("up to log index ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                > Some(after)
        });
        if done { Ok(()) } else { Err(format!("node {id} has not erased beyond index {after} yet")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledged_job_leaves_no_data_key_on_any_node() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let mut cluster = Cluster::start("t94", opts).await;
    cluster.keys_ready().await;
    let ids = cluster.ids();

    step("a batch of 40 cards, prepared and fetched");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("purge.csv");
    write_dda_batch(&input, 40, 4_000_000);
    let job = cluster.submit_dda_job(1, &input, "20");
    wait_until(Duration::from_secs(300), "job done", || async {
        let j = cluster.query(1, "job", &job).await?;
        if j["state"] == "done" { Ok(()) } else { Err(format!("{}", j["state"])) }
    })
    .await;
    let out = dir.path().join("out");
    cluster.quill_ok(1, &["job", "fetch", &job, "-o", out.to_str().unwrap()], &OPERATOR);

    step("control: node 3's files hold the wrapped data key (and the CVK's) before the ack");
    let keys = cluster.query(1, "keys", "").await.unwrap();
    let cvk = keys
        .as_array()
        .unwrap()
        .iter()
        .find_map(|k| k["id"].as_str().filter(|id| id.starts_with("CVK")).map(str::to_string))
        .expect("a TEST CVK in the inventory");
    let applied = cluster.status(1).await.unwrap().applied_index;
    cluster.wait_converged(&ids, applied, Duration::from_secs(30)).await;
    cluster.terminate(3);
    let (blob, cvk_blob) = {
        let store = Store::open(&cluster.node(3).dir.join("data").join("db")).unwrap();
        let j: JobRecord = store.get(Cf::SmData, format!("jobs/job/{job}").as_bytes()).unwrap().unwrap();
        let k: KeyRecord = store.get(Cf::SmData, format!("keys/key/{cvk}").as_bytes()).unwrap().unwrap();
        (j.data_key.blob, k.wrapped.expect("an active key is wrapped").blob)
    };
    assert!(!values_holding(&cluster.node(3).dir.join("data").join("db"), &cvk_blob).is_empty());
    assert!(blob.len() >= 32, "a wrapped AES-256 key");
    let before = values_holding(&cluster.node(3).dir.join("data").join("db"), &blob);
    assert!(!before.is_empty(), "the search finds the wrapped key where it is");
    eprintln!("before the ack, node 3 holds the wrapped data key at {before:?}");
    cluster.restart(3).await;

    step("acknowledge; every node's eraser runs");
    let before_ack = cluster.status(1).await.unwrap().applied_index;
    cluster.quill_ok(1, &["job", "ack", &job, "--fetched", out.to_str().unwrap()], &OPERATOR);
    for id in &ids {
        wait_erased(&cluster, *id, before_ack).await;
    }
    let j = cluster.query(1, "job", &job).await.unwrap();
    assert_eq!(j["state"], "acked");

    step(&format!("destroy {cvk} under dual control; every node's eraser runs again"));
    let admin = [("QUILL_ACTOR", "admin:ada")];
    let out = cluster.quill_ok(1, &["key", "destroy", &cvk, "--json"], &admin);
    let approval: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let approval = approval["approval"].as_str().unwrap().to_string();
    for c in ["custodian:alice", "custodian:bob"] {
        cluster.quill_ok(1, &["approve", "grant", &approval], &[("QUILL_ACTOR", c)]);
    }
    // The first grant erases too (any granted approval may): wait for an erase that covers the
    // entry of the second grant, the one that destroyed the key (its audit record's log index).
    let audit = cluster.quill_ok(1, &["audit", "export"], &[("QUILL_ACTOR", "auditor:audrey")]);
    let destroyed_at = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["object"] == format!("approval:{approval}"))
        .filter_map(|r| r["log_index"].as_u64())
        .max()
        .expect("the grants are in the audit chain");
    for id in &ids {
        wait_erased(&cluster, *id, destroyed_at - 1).await;
    }

    step("with every file of every node: the wrapped data key and the destroyed key are nowhere");
    for id in &ids {
        cluster.terminate(*id);
    }
    for id in &ids {
        let dir = cluster.node(*id).dir.clone();
        let found = files_holding(&dir, &blob);
        assert!(found.is_empty(), "node {id} still holds the job's wrapped data key in {found:?}");
        let found = values_holding(&dir.join("data").join("db"), &blob);
        assert!(found.is_empty(), "node {id}'s database still holds the job's wrapped data key at {found:?}");
        let found = [files_holding(&dir, &cvk_blob), values_holding(&dir.join("data").join("db"), &cvk_blob)].concat();
        assert!(found.is_empty(), "node {id} still holds the destroyed key's wrapped value in {found:?}");
        let store = Store::open(&dir.join("data").join("db")).unwrap();
        let j: JobRecord = store.get(Cf::SmData, format!("jobs/job/{job}").as_bytes()).unwrap().unwrap();
        assert!(j.data_key.blob.is_empty(), "node {id}: the record keeps only the key's KCV");
    }
}

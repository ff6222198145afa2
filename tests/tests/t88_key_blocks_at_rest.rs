//! Keys bound to their use at rest (issue 13), as an attacker with the disks of every node of a
//! 3-node cluster (hsm-sim) would try: stop every node and, in each one's replicated state, put
//! the IMK-AC's key block into the record of the transport key (TK-DEK-TEST, D0), KCV included,
//! so that the unchanged sample profile would encrypt every card's derived keys under the issuer
//! master key. The inventory still says D0; the block's authenticated header says E0. Restarted,
//! the cluster refuses the job at submission, naming the key and the usage its block has, and
//! prepares nothing; put back, the same job runs.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quill_node::keys::apply::key;
use quill_node::keys::model::KeyRecord;
use quill_node::store::{Cf, Store, WriteBatch, codec};
use quill_tests::{Cluster, ClusterOptions, repo_root, step, write_dda_batch};

fn store_of(cluster: &Cluster, id: u64) -> Store {
    Store::open(&cluster.node(id).dir.join("data").join("db")).expect("open the node's store")
}

fn record(store: &Store, id: &str) -> KeyRecord {
    store.get(Cf::SmData, format!("{}{id}", key::KEY).as_bytes()).expect("read").expect("the key record")
}

fn put(store: &Store, r: &KeyRecord) {
    let mut batch = WriteBatch::default();
    batch.put_cf(store.cf(Cf::SmData).unwrap(), format!("{}{}", key::KEY, r.id).as_bytes(), codec::encode(r).unwrap());
    store.write(batch, true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_imk_block_swapped_into_the_transport_key_record_is_refused() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let mut cluster = Cluster::start("t88", opts).await;
    step("SMK ceremony, TEST keys by ceremony");
    cluster.keys_ready().await;
    let ids = cluster.ids();
    cluster.wait_converged(&ids, 0, Duration::from_secs(30)).await;

    step("offline, on every node: the IMK-AC's block (and KCV) in the transport key's record");
    let mut originals = Vec::new();
    for id in ids.clone() {
        cluster.terminate(id);
        let store = store_of(&cluster, id);
        let imk = record(&store, "IMK-AC-VISA-TEST.v1");
        let dek = record(&store, "TK-DEK-TEST.v1");
        assert_eq!(imk.wrapped.as_ref().unwrap().usage().map(|u| u.code()), Some(*b"E0"), "the IMK's block says E0");
        assert_eq!(dek.usage.code(), "D0");
        let forged = KeyRecord { wrapped: imk.wrapped.clone(), kcv: imk.kcv.clone(), ..dek.clone() };
        put(&store, &forged);
        originals.push((id, dek));
    }
    for id in ids.clone() {
        cluster.restart(id).await;
    }
    cluster.wait_leader(&ids, Duration::from_secs(30), "after the restart").await;
    let keys = cluster.query(1, "keys", "").await.unwrap();
    let dek = keys.as_array().unwrap().iter().find(|k| k["label"] == "TK-DEK-TEST").unwrap().clone();
    assert_eq!(dek["usage"], "D0", "the inventory still says D0: {dek}");

    step("the job is refused at submission: the block says E0");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cards.csv");
    write_dda_batch(&input, 10, 0);
    let profile = repo_root().join("prep/profiles/visa-dda-credit.toml");
    let args = [
        "job",
        "submit",
        "--json",
        "--profile",
        profile.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--chunk-size",
        "5",
        "--mac-key",
        "MAC-OUTPUT-TEST",
    ];
    let operator = [("QUILL_ACTOR", "operator:otto")];
    let (code, out, err) = cluster.quill(1, &args, &operator);
    assert_ne!(code, 0, "the job was taken: {out}");
    eprintln!("refused: {}", err.trim());
    assert!(
        err.contains("TK-DEK-TEST") && err.contains("usage E0") && err.contains("transport_key"),
        "the refusal names the key, the usage its block has and the step: {err}"
    );
    let jobs = cluster.query(1, "jobs", "").await.unwrap();
    assert!(jobs.as_array().is_none_or(Vec::is_empty), "nothing was stored: {jobs}");

    step("put back on every node, the same job runs");
    for (id, dek) in originals {
        cluster.terminate(id);
        put(&store_of(&cluster, id), &dek);
        cluster.restart(id).await;
    }
    cluster.wait_leader(&ids, Duration::from_secs(30), "after putting it back").await;
    let job = cluster.submit_dda_job(1, &input, "5");
    assert!(!job.is_empty());
}

/// Keys bound to their tenant at rest: with the disks of every node, an attacker moves every key
/// of the `default` tenant to `bank-b` in the inventory (the record's tenant is just a field), so
/// that bank-b's staff would prepare cards with the default issuer's keys. Each key's block binds
/// the tenant it was made for in its authenticated header (`0T` block): bank-b's job is refused at
/// submission, naming the key whose block belongs to `default`, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_moved_to_another_tenant_on_disk_are_refused_by_their_blocks() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let mut cluster = Cluster::start("t88-tenant", opts).await;
    step("SMK ceremony, TEST keys by ceremony (tenant default)");
    cluster.keys_ready().await;
    let ids = cluster.ids();
    cluster.wait_converged(&ids, 0, Duration::from_secs(30)).await;
    let keys = cluster.query(1, "keys", "").await.unwrap();
    let key_ids: Vec<String> = keys.as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_owned()).collect();
    assert!(key_ids.len() >= 8, "{key_ids:?}");

    step("offline, on every node: every key's record moved to tenant bank-b");
    for id in ids.clone() {
        cluster.terminate(id);
        let store = store_of(&cluster, id);
        for k in &key_ids {
            let r = record(&store, k);
            assert_eq!(r.wrapped.as_ref().unwrap().owner().as_deref(), Some("default"), "{k}'s block names its tenant");
            put(&store, &KeyRecord { tenant: "bank-b".into(), ..r });
        }
    }
    for id in ids.clone() {
        cluster.restart(id).await;
    }
    cluster.wait_leader(&ids, Duration::from_secs(30), "after the restart").await;

    step("bank-b's operator sees the keys in its inventory, but its job is refused: the blocks say default");
    let (bank_b, dir_b) = cluster.as_tenant(1, "operator:bea", &["bank-b"]);
    let mut k = quill_proto::v1::keys_client::KeysClient::new(bank_b);
    let listed = k.list_keys(quill_proto::v1::ListKeysRequest { linearizable: true }).await.unwrap().into_inner().keys;
    assert_eq!(listed.len(), key_ids.len(), "the records say bank-b");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cards.csv");
    write_dda_batch(&input, 10, 0);
    let profile = repo_root().join("prep/profiles/visa-dda-credit.toml");
    let submit = ["job", "submit", "--profile", profile.to_str().unwrap(), "--input", input.to_str().unwrap()];
    let (code, _, err) = cluster.quill_as(1, &dir_b, &[&submit[..], &["--mac-key", "MAC-OUTPUT-TEST"]].concat());
    assert_ne!(code, 0, "bank-b's job with default's keys was taken: {err}");
    eprintln!("refused: {}", err.trim());
    assert!(
        err.contains("MAC-OUTPUT-TEST") && err.contains("belongs to tenant \"default\"") && err.contains("\"bank-b\""),
        "the refusal names the key and both tenants: {err}"
    );
    let jobs = cluster.query(1, "jobs", "").await.unwrap();
    assert!(jobs.as_array().is_none_or(Vec::is_empty), "nothing was stored: {jobs}");
}

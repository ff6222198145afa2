//! A node that joins after the SMK ceremony receives the SMK only after two custodians approve:
//! it enrols its HSM transport key as soon as it is a learner, an approval is requested, one
//! grant is not enough, the second makes a node holding the SMK wrap it to the newcomer's
//! transport key, and the newcomer installs it (same KCV) and can then use inventory keys.

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, step, wait_until};
use serde_json::Value;

const PARTS: [&str; 2] = [
    "A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5",
    "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF",
];

fn node_smk(nodes: &Value, id: u64) -> String {
    nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["id"].as_u64() == Some(id)))
        .map(|n| n["smk"].to_string())
        .unwrap_or_else(|| "not enrolled".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_node_gets_the_smk_after_two_approvals() {
    let opts = ClusterOptions { nodes: 4, hsm: true, ..ClusterOptions::default() };
    let cluster = Cluster::start_with_members("t85", opts, &[1, 2, 3]).await;
    let admin = [("QUILL_ACTOR", "admin:ada")];

    step("three members enrol; SMK ceremony with 2 components");
    wait_until(Duration::from_secs(60), "three enrolled nodes", || async {
        let n = cluster.query(1, "nodes", "").await?.as_array().map(Vec::len).unwrap_or(0);
        if n == 3 { Ok(()) } else { Err(format!("{n} enrolled")) }
    })
    .await;
    cluster.quill_ok(1, &["ceremony", "start", "--key", "smk", "--components", "2", "--id", "smk-1"], &admin);
    cluster.quill_ok(
        1,
        &["ceremony", "submit", "--id", "smk-1", "--component", PARTS[0]],
        &[("QUILL_ACTOR", "custodian:alice")],
    );
    cluster.quill_ok(
        2,
        &["ceremony", "submit", "--id", "smk-1", "--component", PARTS[1]],
        &[("QUILL_ACTOR", "custodian:bob")],
    );
    wait_until(Duration::from_secs(60), "the SMK on nodes 1-3", || async {
        let c = cluster.query(1, "ceremony", "smk-1").await?;
        if c["state"] == "formed" { Ok(()) } else { Err(format!("{}", c["formed_on"])) }
    })
    .await;
    let smk = cluster.query(1, "smk", "").await.expect("smk")["kcv"].as_str().expect("kcv").to_string();

    step("node 4 joins as a learner and enrols, without the SMK");
    let n4 = cluster.node(4);
    cluster.quill_ok(
        1,
        &[
            "cluster",
            "add",
            "--id",
            "4",
            "--raft-addr",
            &n4.raft_addr.to_string(),
            "--api-addr",
            &n4.api_addr.to_string(),
        ],
        &admin,
    );
    wait_until(Duration::from_secs(60), "node 4 enrolled", || async {
        let nodes = cluster.query(1, "nodes", "").await?;
        let s = node_smk(&nodes, 4);
        if s == "\"missing\"" { Ok(()) } else { Err(s) }
    })
    .await;
    let (code, _, err) =
        cluster.quill(4, &["key", "generate", "--label", "k", "--usage", "E0", "--alg", "des2"], &admin);
    assert_ne!(code, 0, "node 4 has no SMK yet");
    assert!(err.contains("does not hold the cluster SMK"), "{err}");

    step("an approval for node 4: one grant is not enough");
    let out = cluster.quill_ok(1, &["--json", "key", "smk-grant", "--node", "4"], &admin);
    let approval =
        serde_json::from_str::<Value>(out.trim()).expect("json")["approval"].as_str().expect("id").to_string();
    cluster.quill_ok(2, &["approve", "grant", &approval], &[("QUILL_ACTOR", "custodian:alice")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nodes = cluster.query(1, "nodes", "").await.expect("nodes");
    assert_eq!(node_smk(&nodes, 4), "\"missing\"", "one grant must not move the SMK");

    step("the second grant: node 4 receives and installs the SMK");
    cluster.quill_ok(3, &["approve", "grant", &approval], &[("QUILL_ACTOR", "custodian:bob")]);
    wait_until(Duration::from_secs(60), "node 4 holds the SMK", || async {
        let nodes = cluster.query(1, "nodes", "").await?;
        let s = node_smk(&nodes, 4);
        if s == "\"present\"" { Ok(()) } else { Err(s) }
    })
    .await;
    let a = cluster.query(1, "approval", &approval).await.expect("approval");
    assert_eq!(a["state"], "done", "{a}");

    step(&format!("node 4 now works with inventory keys under SMK {smk}"));
    let out =
        cluster.quill_ok(4, &["--json", "key", "generate", "--label", "imk", "--usage", "E0", "--alg", "des2"], &admin);
    let k: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(k["smk_kcv"].as_str(), Some(smk.as_str()), "{k}");
}

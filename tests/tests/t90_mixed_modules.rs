//! One cluster, two PKCS#11 modules: nodes 1 and 2 run hsm-sim, node 3 runs SoftHSM 2, whose slot
//! allows the host path. The SMK ceremony forms the same key on all three; on SoftHSM the XOR of
//! the components cannot happen inside the module, so the adapter does it in host memory (as its
//! config allows) and the audit chain records that use (`hsm.host_path` by node 3). Keys
//! generated on one module are usable on the other (node 3 exports what node 1 generated, node 1
//! verifies the audit chain that node 3's MACs are part of).

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, softhsm_available, step, wait_until};
use serde_json::Value;

const PARTS: [&str; 2] = [
    "C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3C3",
    "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hsm_sim_and_softhsm_share_one_smk_and_the_host_path_is_audited() {
    if !softhsm_available() {
        return;
    }
    let opts = ClusterOptions { nodes: 3, hsm: true, softhsm_nodes: vec![3], ..ClusterOptions::default() };
    let cluster = Cluster::start("t90", opts).await;
    let ids = cluster.ids();
    let admin = [("QUILL_ACTOR", "admin:ada")];

    step("three nodes enrol (node 3 on SoftHSM)");
    wait_until(Duration::from_secs(60), "three enrolled nodes", || async {
        let n = cluster.query(1, "nodes", "").await?.as_array().map(Vec::len).unwrap_or(0);
        if n == 3 { Ok(()) } else { Err(format!("{n} enrolled")) }
    })
    .await;
    let nodes = cluster.query(1, "nodes", "").await.expect("nodes");
    let n3 = nodes.as_array().and_then(|a| a.iter().find(|n| n["id"] == 3)).expect("node 3").clone();
    assert!(n3["hsm"].as_str().unwrap_or("").to_lowercase().contains("softhsm"), "node 3's HSM: {}", n3["hsm"]);

    step("SMK ceremony: the same KCV on both modules");
    cluster.quill_ok(1, &["ceremony", "start", "--key", "smk", "--components", "2", "--id", "smk-1"], &admin);
    cluster.quill_ok(
        2,
        &["ceremony", "submit", "--id", "smk-1", "--component", PARTS[0]],
        &[("QUILL_ACTOR", "custodian:alice")],
    );
    cluster.quill_ok(
        3,
        &["ceremony", "submit", "--id", "smk-1", "--component", PARTS[1]],
        &[("QUILL_ACTOR", "custodian:bob")],
    );
    wait_until(Duration::from_secs(60), "the SMK formed on all three", || async {
        let c = cluster.query(1, "ceremony", "smk-1").await?;
        if c["state"] == "formed" { Ok(()) } else { Err(format!("formed on {}", c["formed_on"])) }
    })
    .await;
    let nodes = cluster.query(1, "nodes", "").await.expect("nodes");
    for n in nodes.as_array().expect("array") {
        assert_eq!(n["smk"], "present", "node {}: {}", n["id"], n["smk"]);
    }

    step("the leader generates the audit keys");
    wait_until(Duration::from_secs(30), "audit keys", || async {
        let k = cluster.query(1, "audit-keys", "").await?;
        if k.is_null() { Err("none yet".into()) } else { Ok(()) }
    })
    .await;

    step("node 3's host-path use is in the audit chain");
    let audit = wait_until(Duration::from_secs(30), "an hsm.host_path record", || async {
        let (code, out, err) = cluster.quill(1, &["audit", "export"], &[]);
        if code != 0 {
            return Err(err);
        }
        if out.lines().any(|l| l.contains("hsm.host_path") && l.contains("node:3")) {
            Ok(out)
        } else {
            Err("none yet".into())
        }
    })
    .await;
    let rec: Value = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["action"] == "hsm.host_path")
        .expect("record");
    assert_eq!(rec["actor"], "node:node-3");
    assert!(rec["outcome"].as_str().unwrap_or("").contains("softhsm"), "{rec}");
    assert!(
        !audit.lines().any(|l| l.contains("hsm.host_path") && !l.contains("node:3")),
        "only SoftHSM needs the host path"
    );

    step("a key generated on hsm-sim (node 1) is used on SoftHSM (node 3) and back");
    let out =
        cluster.quill_ok(1, &["--json", "key", "generate", "--label", "zmk", "--usage", "K0", "--alg", "des3"], &admin);
    let zmk: Value = serde_json::from_str(out.trim()).expect("json");
    let out = cluster.quill_ok(
        3,
        &["--json", "key", "generate", "--label", "cvk", "--usage", "C0", "--alg", "des2", "--exportable"],
        &admin,
    );
    let cvk: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(zmk["smk_kcv"], cvk["smk_kcv"]);

    step("audit verify on every node (node 3 checks MACs made by hsm-sim and vice versa)");
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.wait_converged(&ids, 0, Duration::from_secs(30)).await;
    for id in &ids {
        let out = cluster.quill_ok(*id, &["--json", "audit", "verify"], &[]);
        let report: Value = serde_json::from_str(out.trim()).expect("json");
        assert!(report["broken"].is_null() && report["macs"].as_u64().unwrap_or(0) > 0, "node {id}: {report}");
    }
}

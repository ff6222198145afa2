//! SMK rotation on a running 3-node cluster (issue 13), two nodes on hsm-sim (blocks
//! re-protected inside the module, `CKM_QUILL_TR31_TRANSLATE`) and one on SoftHSM 2 (the audited
//! host path): `quill key rotate-smk` and two custodians form the next SMK on every node, the
//! cluster switches every key block (working keys, audit keys, a job's data key, an issuer RSA
//! key) to it in one entry, and every node destroys the old SMK. Checked from outside: every key
//! keeps its KCV and names the new SMK; output prepared before the rotation fetches byte for byte
//! the same after it; a new batch prepares; the audit chain records each step and verifies; with
//! every node stopped, `pkcs11-tool` (OpenSC) finds exactly one SMK object on each token, none left
//! over; restarted, the cluster prepares again. A tenant-bound admin cannot rotate.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::{Caller, CeremonyStartRequest, GetSmkRequest, SmkView};
use quill_tests::{
    Cluster, ClusterOptions, SOFTHSM_MODULE, TEST_PIN, bin_dir, softhsm_available, step, wait_until, write_dda_batch,
};
use serde_json::Value;

const ADMIN: [(&str, &str); 1] = [("QUILL_ACTOR", "admin:ada")];
const OPERATOR: [(&str, &str); 1] = [("QUILL_ACTOR", "operator:otto")];

async fn smk(cluster: &Cluster, id: u64) -> SmkView {
    let mut k = KeysClient::new(cluster.channel_as(id, "auditor:aude"));
    k.get_smk(GetSmkRequest { linearizable: true }).await.unwrap().into_inner().smk.unwrap()
}

/// Every key of the inventory: id → (KCV, KCV of the SMK its block is under).
async fn keys(cluster: &Cluster) -> BTreeMap<String, (String, String)> {
    let keys = cluster.query(1, "keys", "").await.unwrap();
    keys.as_array()
        .unwrap()
        .iter()
        .filter(|k| k["state"] != "destroyed")
        .map(|k| {
            let id = k["id"].as_str().unwrap().to_owned();
            let smk = k["smk_kcv"].as_str().unwrap_or_default().to_owned();
            (id, (k["kcv"].as_str().unwrap().to_owned(), smk))
        })
        .collect()
}

/// The labels of the secret-key objects on a token, as `pkcs11-tool --list-objects` prints them.
fn token_secret_labels(module: &Path, token: &str, env: &[(&str, &Path)]) -> Vec<String> {
    let mut cmd = Command::new("pkcs11-tool");
    cmd.args(["--module", module.to_str().unwrap(), "--token-label", token, "--login", "--pin", TEST_PIN]).args([
        "--list-objects",
        "--type",
        "secrkey",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run pkcs11-tool (OpenSC; scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pkcs11-tool: {text}{}", String::from_utf8_lossy(&out.stderr));
    text.lines().filter_map(|l| l.trim().strip_prefix("label:")).map(|l| l.trim().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_smk_rotates_under_a_running_cluster() {
    let softhsm = softhsm_available();
    let opts = ClusterOptions {
        nodes: 3,
        hsm: true,
        hsm_translate: true,
        softhsm_nodes: if softhsm { vec![3] } else { Vec::new() },
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start("t105", opts).await;
    step("SMK ceremony, TEST keys by ceremony, an issuer key pair");
    cluster.keys_ready().await;
    cluster.quill_ok(1, &["issuer", "generate", "ISS-T105", "--bits", "1024"], &ADMIN);
    let before = smk(&cluster, 1).await;
    let keys_before = keys(&cluster).await;
    assert!(keys_before.len() >= 8, "{keys_before:?}");
    assert!(keys_before.values().all(|(_, s)| *s == before.kcv), "{keys_before:?}");

    step("a batch prepared (and fetched) before the rotation");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("before.txt");
    write_dda_batch(&input, 200, 0);
    let job = cluster.submit_dda_job(1, &input, "50");
    cluster.wait_job_done(1, &job).await;
    let out_before = dir.path().join("out-before");
    cluster.quill_ok(2, &["job", "fetch", &job, "-o", out_before.to_str().unwrap()], &OPERATOR);

    step("a tenant-bound admin cannot rotate the SMK: the SMK protects every tenant's keys");
    let (bank_admin, _) = cluster.as_tenant(1, "admin:bert", &["bank-b"]);
    let start = CeremonyStartRequest {
        caller: Some(Caller { client_id: "t105-bert".into(), serial: 1 }),
        id: "smk-bank".into(),
        components: 2,
        smk_next: true,
        ..Default::default()
    };
    let e = KeysClient::new(bank_admin).ceremony_start(start).await.unwrap_err();
    assert!(e.message().contains("only the bureau rotates the SMK"), "{e:?}");
    // A request no client of ours sends: both the SMK and the next SMK in one ceremony.
    let both = CeremonyStartRequest {
        caller: Some(Caller { client_id: "t105-ada".into(), serial: 1 }),
        id: "smk-both".into(),
        components: 2,
        smk: true,
        smk_next: true,
        ..Default::default()
    };
    let e = KeysClient::new(cluster.channel_as(1, "admin:ada")).ceremony_start(both).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    step("quill key rotate-smk: two custodians");
    cluster.quill_ok(1, &["key", "rotate-smk", "--components", "2", "--id", "smk-2"], &ADMIN);
    for (i, c) in [(1, "custodian:alice"), (2, "custodian:bob")] {
        cluster.quill_ok(i, &["ceremony", "submit", "--id", "smk-2", "--generate"], &[("QUILL_ACTOR", c)]);
    }
    let after = wait_until(Duration::from_secs(120), "the cluster on the new SMK, the old one destroyed", || async {
        let s = smk(&cluster, 1).await;
        let nodes = cluster.query(1, "nodes", "").await?;
        let pending: Vec<&Value> = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["smk"] != "present" || n["retiring_smk_kcv"] != "" || n["next_smk_kcv"] != "")
            .collect();
        if s.kcv != before.kcv && s.ceremony == "smk-2" && pending.is_empty() {
            Ok(s)
        } else {
            Err(format!("SMK {} ({}), nodes not done: {pending:?}", s.kcv, s.ceremony))
        }
    })
    .await;
    assert_eq!(after.retired.len(), 1);
    assert_eq!((after.retired[0].kcv.as_str(), after.retired[0].ceremony.as_str()), (before.kcv.as_str(), "smk-1"));
    assert!(after.next_kcv.is_empty());
    for id in cluster.ids() {
        let st = cluster.status(id).await.unwrap();
        let hsm: Value = serde_json::from_str(&st.hsm).unwrap();
        assert_eq!(hsm["smk_kcv"], after.kcv.as_str(), "node {id}'s HSM: {hsm}");
    }

    step("every key: the same KCV, its block under the new SMK");
    let keys_after = keys(&cluster).await;
    assert_eq!(keys_after.keys().collect::<Vec<_>>(), keys_before.keys().collect::<Vec<_>>());
    for (id, (kcv, s)) in &keys_after {
        assert_eq!((kcv, s), (&keys_before[id].0, &after.kcv), "{id}");
    }

    step("output prepared before the rotation fetches the same after it (the job's data key moved)");
    let out_after = dir.path().join("out-after");
    cluster.quill_ok(3, &["job", "fetch", &job, "-o", out_after.to_str().unwrap()], &OPERATOR);
    for f in ["cards.jsonl", "pin-mailers.jsonl", "carriers.jsonl"] {
        assert_eq!(std::fs::read(out_before.join(f)).unwrap(), std::fs::read(out_after.join(f)).unwrap(), "{f}");
    }

    step("the audit chain records the rotation and verifies");
    let export = cluster.quill_ok(1, &["audit", "export"], &[("QUILL_ACTOR", "auditor:aude")]);
    let records: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let done = |action: &str| {
        records
            .iter()
            .filter(|r| r["action"] == action && r["outcome"].as_str().is_some_and(|o| o.starts_with("ok")))
            .count()
    };
    assert_eq!(done("smk.next_formed"), 3, "{export}");
    assert_eq!(done("smk.switch"), 1, "{export}");
    assert_eq!(done("smk.old_destroyed"), 3, "{export}");
    cluster.quill_ok(1, &["audit", "verify"], &[("QUILL_ACTOR", "auditor:aude")]);

    step("every node stopped: one SMK object on each token, nothing left of the old one (pkcs11-tool)");
    let ids = cluster.ids();
    for id in ids.clone() {
        cluster.terminate(id);
    }
    for id in ids.clone() {
        let node_dir = cluster.node(id).dir.clone();
        let token = format!("TEST-node-{id}");
        let labels = if softhsm && id == 3 {
            let conf = node_dir.join("softhsm").join("softhsm2.conf");
            token_secret_labels(Path::new(SOFTHSM_MODULE), &token, &[("SOFTHSM2_CONF", &conf)])
        } else {
            let conf = node_dir.join("hsm").join("quill-hsm.toml");
            token_secret_labels(&bin_dir().join("libquill_hsm_sim.so"), &token, &[("QUILL_HSM_CONF", &conf)])
        };
        let smks: Vec<&String> = labels.iter().filter(|l| l.contains("smk")).collect();
        assert_eq!(smks, vec!["TEST-quill-smk"], "node {id}'s token: {labels:?}");
    }

    step("restarted: the new SMK persists and a new batch prepares");
    for id in ids.clone() {
        cluster.restart(id).await;
    }
    cluster.wait_leader(&ids, Duration::from_secs(30), "after the restart").await;
    let input2 = dir.path().join("after.txt");
    write_dda_batch(&input2, 100, 1_000);
    let job2 = cluster.submit_dda_job(2, &input2, "50");
    let j = cluster.wait_job_done(2, &job2).await;
    assert_eq!(j["cards_done"], 100, "{j}");
    assert!(j["failures"].as_array().unwrap().is_empty(), "{j}");
}

/// A node that is down when the rotation starts holds it up: the others form the next SMK, but
/// the cluster does not switch (a switch would leave that node unable to open anything); once it
/// returns it forms the next SMK from the components sealed to it, the cluster switches and every
/// node destroys the old SMK.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_down_holds_the_rotation_until_it_returns() {
    let opts = ClusterOptions { nodes: 3, hsm: true, hsm_translate: true, ..ClusterOptions::default() };
    let mut cluster = Cluster::start("t105-down", opts).await;
    cluster.keys_ready().await;
    let before = smk(&cluster, 1).await;

    step("node 3 killed; rotation ceremony through nodes 1 and 2");
    cluster.kill(3);
    cluster.quill_ok(1, &["key", "rotate-smk", "--components", "2", "--id", "smk-2"], &ADMIN);
    for (i, c) in [(1, "custodian:alice"), (2, "custodian:bob")] {
        cluster.quill_ok(i, &["ceremony", "submit", "--id", "smk-2", "--generate"], &[("QUILL_ACTOR", c)]);
    }
    wait_until(Duration::from_secs(60), "the next SMK formed on nodes 1 and 2", || async {
        let c = cluster.query(1, "ceremony", "smk-2").await?;
        let formed: Vec<u64> = c["formed_on"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
        if formed.len() == 2 { Ok(()) } else { Err(format!("formed on {formed:?}")) }
    })
    .await;
    // Several agent rounds later: still the old SMK, no switch, nothing retired.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = smk(&cluster, 1).await;
    assert_eq!((waiting.kcv.as_str(), waiting.next_kcv.as_str()), (before.kcv.as_str(), ""), "{waiting:?}");
    let unmoved = keys(&cluster).await;
    assert!(unmoved.values().all(|(_, s)| *s == before.kcv), "no block moved while node 3 is down: {unmoved:?}");

    step("node 3 back: it forms the next SMK, the cluster switches, every node retires the old one");
    cluster.restart(3).await;
    wait_until(Duration::from_secs(120), "the rotation done on every node", || async {
        let s = smk(&cluster, 1).await;
        let nodes = cluster.query(1, "nodes", "").await?;
        let done = nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["smk"] == "present" && n["retiring_smk_kcv"] == "" && n["next_smk_kcv"] == "");
        if s.kcv != before.kcv && done { Ok(()) } else { Err(format!("SMK {} next {:?}", s.kcv, s.next_kcv)) }
    })
    .await;
    let after = smk(&cluster, 3).await;
    assert!(keys(&cluster).await.values().all(|(_, s)| *s == after.kcv));
    for id in cluster.ids() {
        let hsm: Value = serde_json::from_str(&cluster.status(id).await.unwrap().hsm).unwrap();
        assert_eq!(hsm["smk_kcv"], after.kcv.as_str(), "node {id}");
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("after.txt");
    write_dda_batch(&input, 40, 0);
    let job = cluster.submit_dda_job(3, &input, "20");
    let j = cluster.wait_job_done(3, &job).await;
    assert_eq!(j["cards_done"], 40, "{j}");
}

//! Issue 13, the audit chain bounded: archival to signed files and pruning under dual control, on
//! a 3-node cluster (hsm-sim), driven through `quill` as an auditor, custodians and an operator.
//! - `quill audit archive` writes the oldest live records up to a sealed one, with a trailer the
//!   cluster's audit key MACed, and asks the approval that prunes them; nothing is pruned yet;
//! - pruning is refused before two custodians granted it, and to anyone but an auditor;
//! - an archive file edited by one character fails `verify --archive` (exit 3);
//! - once pruned, every node's chain verifies from the base (also after a restart that replays
//!   the log), `verify --archive` holds the archive to the live chain, and the next archive
//!   continues where the first ended; an archive whose records were already pruned is refused.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, step, wait_until};
use serde_json::Value;

const AUDITOR: [(&str, &str); 1] = [("QUILL_ACTOR", "auditor:audrey")];

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim().lines().last().unwrap_or("")).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_records_are_archived_to_signed_files_and_pruned_under_dual_control() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let mut cluster = Cluster::start("t102", opts).await;
    step("SMK ceremony and TEST keys; wait for a seal");
    cluster.keys_ready().await;
    let ids = cluster.ids();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("audit-1.jsonl");
    let first_arg = first.to_str().unwrap().to_string();

    step("archive the sealed records as an auditor (an operator may not)");
    let (code, _, err) =
        cluster.quill(1, &["audit", "archive", "--out", &first_arg], &[("QUILL_ACTOR", "operator:otto")]);
    assert_eq!(code, 1, "an operator archived: {err}");
    assert!(!first.exists(), "a refused archive wrote a file");
    let out = wait_until(Duration::from_secs(30), "a sealed record to archive", || {
        let (code, out, err) = cluster.quill(1, &["--json", "audit", "archive", "--out", &first_arg], &AUDITOR);
        async move { if code == 0 { Ok(out) } else { Err(err) } }
    })
    .await;
    let archived = json(&out);
    let approval = archived["approval"].as_str().unwrap().to_string();
    let last = archived["last"].as_u64().unwrap();
    assert!(last > 5, "{archived}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&first).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600, "the archive file is {mode:o}");
    let text = std::fs::read_to_string(&first).unwrap();
    assert_eq!(text.lines().count() as u64, last + 1, "records 1..={last} and the trailer");
    let (code, _, err) = cluster.quill(1, &["audit", "archive", "--out", &first_arg], &AUDITOR);
    assert_ne!(code, 0, "an existing archive file was overwritten");
    assert!(err.contains("never overwritten"), "{err}");

    step("an archive file edited by one character fails verification");
    let edited = dir.path().join("edited.jsonl");
    std::fs::write(&edited, text.replacen("\"action\":\"", "\"action\":\"x", 1)).unwrap();
    let (code, _, err) = cluster.quill(1, &["audit", "verify", "--archive", edited.to_str().unwrap()], &AUDITOR);
    assert_eq!(code, 3, "an edited archive verified: {err}");
    let forged = dir.path().join("forged.jsonl");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut trailer: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    trailer["mac"] = Value::String("00".repeat(32));
    *lines.last_mut().unwrap() = trailer.to_string();
    std::fs::write(&forged, lines.join("\n") + "\n").unwrap();
    let (code, out, err) = cluster.quill(1, &["audit", "verify", "--archive", forged.to_str().unwrap()], &AUDITOR);
    assert_eq!(code, 3, "a trailer without the audit key's MAC verified: {out} {err}");
    let (code, _, err) = cluster.quill(1, &["audit", "archive", "--ask", forged.to_str().unwrap()], &AUDITOR);
    assert_eq!(code, 1, "a prune approval was asked with a forged trailer: {err}");
    assert!(err.contains("does not carry the cluster audit key's MAC"), "{err}");

    step("prune is refused before two custodians grant it, and to an operator");
    let (code, _, err) = cluster.quill(1, &["audit", "prune", "--approval", &approval], &AUDITOR);
    assert_eq!(code, 1, "pruned without approval: {err}");
    assert!(err.contains("not approved"), "{err}");
    cluster.quill_ok(2, &["approve", "grant", &approval], &[("QUILL_ACTOR", "custodian:alice")]);
    let (code, _, _) = cluster.quill(1, &["audit", "prune", "--approval", &approval], &AUDITOR);
    assert_eq!(code, 1, "pruned with one grant");
    cluster.quill_ok(3, &["approve", "grant", &approval], &[("QUILL_ACTOR", "custodian:bob")]);
    let (code, _, err) =
        cluster.quill(1, &["audit", "prune", "--approval", &approval], &[("QUILL_ACTOR", "operator:otto")]);
    assert_eq!(code, 1, "an operator pruned: {err}");

    step("pruned by the auditor: every node verifies from the base, the archive leads up to it");
    cluster.quill_ok(1, &["audit", "prune", "--approval", &approval], &AUDITOR);
    let (code, _, _) = cluster.quill(1, &["audit", "prune", "--approval", &approval], &AUDITOR);
    assert_eq!(code, 1, "one approval pruned twice");
    cluster.wait_converged(&ids, 0, Duration::from_secs(30)).await;
    for id in &ids {
        let out = cluster.quill_ok(*id, &["--json", "audit", "verify", "--archive", &first_arg], &AUDITOR);
        let report = json(&out);
        assert!(report["broken"].is_null(), "node {id}: {report}");
        assert_eq!(report["archived"].as_u64(), Some(last), "node {id}: {report}");
        assert_eq!(report["archives"].as_u64(), Some(1), "node {id}: {report}");
    }
    let export = cluster.quill_ok(1, &["audit", "export"], &AUDITOR);
    let first_live = json(export.lines().next().unwrap())["seq"].as_u64();
    assert_eq!(first_live, Some(last + 1), "the export starts after the base");
    assert!(export.contains("audit.prune"), "the prune is in the chain");

    step("after a restart (the log replayed), node 2 still verifies");
    cluster.terminate(2);
    cluster.restart(2).await;
    cluster.wait_converged(&ids, 0, Duration::from_secs(30)).await;
    let report = json(&cluster.quill_ok(2, &["--json", "audit", "verify", "--archive", &first_arg], &AUDITOR));
    assert!(report["broken"].is_null() && report["archived"].as_u64() == Some(last), "{report}");

    step("a prune approval for the archive is refused now: its records are no longer the live chain's first");
    let (code, _, err) = cluster.quill(1, &["audit", "archive", "--ask", &first_arg], &AUDITOR);
    assert_eq!(code, 1, "an approval was asked for records already pruned: {err}");
    assert!(err.contains("the live chain at"), "{err}");

    step("the next archive continues from the base; the first one no longer fits");
    let second = dir.path().join("audit-2.jsonl");
    let out = wait_until(Duration::from_secs(30), "a newer seal", || {
        let (code, out, err) =
            cluster.quill(1, &["--json", "audit", "archive", "--out", second.to_str().unwrap()], &AUDITOR);
        async move { if code == 0 { Ok(out) } else { Err(err) } }
    })
    .await;
    assert_eq!(json(&out)["first"].as_u64(), Some(last + 1), "{out}");
    let (code, _, err) = cluster.quill(
        1,
        &["audit", "verify", "--archive", &first_arg, "--archive", second.to_str().unwrap()],
        &AUDITOR,
    );
    assert_eq!(code, 3, "the second archive is not pruned yet, so the archives overshoot the base: {err}");
}

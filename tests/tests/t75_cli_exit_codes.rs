//! `quill` exits with its documented codes (ctl/src/exit_codes.rs), each shown on a real
//! cluster: 0 ok, 1 refused by the cluster, 2 usage, 3 check failed (a tampered audit chain),
//! 4 unreachable (nothing listening; the whole cluster stopped), 5 indeterminate (a write sent to
//! a frozen node: it may or may not apply, and the message names the serial to retry with).

use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, free_addrs, step};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_exit_code_on_a_real_cluster() {
    let mut cluster = Cluster::start("t75", ClusterOptions { nodes: 3, ..ClusterOptions::default() }).await;
    let ids = cluster.ids();
    cluster.wait_leader(&ids, Duration::from_secs(10), "a leader").await;

    step("0: a command that does its work");
    let (code, out, err) = cluster.quill(1, &["cluster", "status"], &[]);
    assert_eq!(code, 0, "{out}{err}");

    step("2: a command line that is wrong");
    let (code, out, err) = cluster.quill(1, &["cluster", "status", "--no-such-flag"], &[]);
    assert_eq!(code, 2, "{out}{err}");

    step("1: refused by the cluster (an operator may not start a ceremony)");
    let (code, out, err) =
        cluster.quill(1, &["ceremony", "start", "--key", "smk", "--components", "2", "--as", "operator:otto"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("refused") || err.contains("PermissionDenied"), "{err}");

    step("2: a command without an identity is refused before anything is sent");
    let (code, out, err) = cluster.quill(1, &["key", "list"], &[("QUILL_ACTOR", "")]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--as"), "{err}");

    step("1: refused by the cluster (an auditor may not cancel a ceremony)");
    let (code, out, err) = cluster.quill(1, &["ceremony", "cancel", "--id", "x", "--as", "auditor:ann"], &[]);
    assert_eq!(code, 1, "{out}{err}");

    step("4: nothing listening at the endpoint; the message names it");
    let nowhere = format!("http://{}", free_addrs(1)[0]);
    let (code, out, err) = cluster.quill(1, &["key", "list", "--endpoint", &nowhere], &[("QUILL_ENDPOINT", "")]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains(nowhere.trim_start_matches("http://")), "the failed endpoint is named: {err}");

    step("3: audit verify on a node whose chain was edited on disk");
    for serial in 1..=5 {
        cluster.put(1, "t75", serial, &format!("t75/{serial}"), b"v").await.expect("put");
    }
    let (_, applied) = (0, cluster.status(1).await.expect("status").applied_index);
    cluster.wait_converged(&ids, applied, Duration::from_secs(20)).await;
    cluster.tamper_audit_record(3, 2).await;
    let (code, out, err) = cluster.quill(3, &["audit", "verify"], &[]);
    assert_eq!(code, 3, "{out}{err}");

    step("5: a write to a frozen node: indeterminate, with the serial to retry with");
    cluster.pause(2);
    let (code, out, err) = cluster.quill(2, &["ceremony", "cancel", "--id", "x", "--as", "admin:ada"], &[]);
    cluster.resume(2);
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains("serial"), "{err}");

    step("4: the whole cluster stopped");
    for id in &ids {
        cluster.terminate(*id);
    }
    let (code, out, err) = cluster.quill(1, &["cluster", "status"], &[]);
    assert_eq!(code, 4, "{out}{err}");
    let (code, out, err) = cluster.quill(1, &["approve", "grant", "a1", "--as", "custodian:carol"], &[]);
    assert_eq!(code, 4, "a write that never left: unreachable, not indeterminate: {out}{err}");
}

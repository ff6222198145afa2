//! The short seeded chaos scenarios of `make test`, through the `quill-chaos` binary as an
//! operator runs it: on processes (3 nodes, every fault kind), and on containers (5 nodes) where
//! a Docker engine answers. Each JSON summary must hold no violation, every fault of the schedule
//! injected, and every check run (both batches done, nodes converged, histories recorded).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;

/// Run `quill-chaos run ARGS --json`; the summary must be clean. Returns it.
fn clean_run(args: &[&str]) -> Value {
    let bin = quill_tests::binary("quill-chaos");
    let out = Command::new(bin).arg("run").args(args).arg("--json").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}); stderr:\n{stderr}"));
    assert_eq!(summary["violations"], serde_json::json!([]), "{stderr}");
    assert_eq!(out.status.code(), Some(0));
    let schedule = summary["schedule"].as_array().unwrap();
    assert!(schedule.len() >= 3, "{schedule:?}");
    let faults = summary["faults"].as_array().unwrap();
    assert_eq!(faults.len(), schedule.len(), "every scheduled fault injected");
    for (f, s) in faults.iter().zip(schedule) {
        assert_eq!(f["kind"], s["kind"], "injected in schedule order");
        assert!(!f["nodes"].as_array().unwrap().is_empty(), "{f}");
    }
    assert!(summary["converge_ms"].as_u64().is_some());
    let batches = summary["batches"].as_array().unwrap();
    assert!(!batches.is_empty() && summary["cards_per_s"].as_f64().unwrap() > 0.0, "batches under faults");
    assert!(summary["calm_cards_per_s"].as_f64().unwrap() > 0.0, "the batch before the faults ran");
    let writes = summary["ops"]["write"]["ok"].as_u64().unwrap();
    let reads = summary["ops"]["read"]["ok"].as_u64().unwrap();
    assert!(writes > 100 && reads > 100, "a workload ran: {writes} writes, {reads} reads");
    // The key clerk took keys all the way round under the faults, and its reads were checked.
    let trips = summary["key_round_trips"].as_u64().unwrap();
    let key_reads = summary["ops"]["key-read"]["ok"].as_u64().unwrap();
    assert!(trips >= 1 && key_reads > 10, "key clerk: {trips} round trips, {key_reads} reads");
    assert!(summary["ops"]["ceremony"]["ok"].as_u64().unwrap() >= 3, "a ceremony ran");
    // Every card checked against the references where they are installed.
    if std::env::var_os("QUILL_REQUIRE_SOFTHSM").is_some() {
        assert!(summary["reference_checks"].as_u64().unwrap() > 0, "cards checked with pyemv/psec");
    }
    summary
}

fn kinds(summary: &Value) -> Vec<String> {
    summary["faults"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap().to_string()).collect()
}

#[test]
fn seeded_processes_scenario_has_no_violation() {
    let summary =
        clean_run(&["--target", "processes", "--nodes", "3", "--duration", "60", "--seed", "3", "--cards", "2000"]);
    eprintln!("faults: {:?}", kinds(&summary));
}

/// The faults added for issue 15's second round, each at least once on processes: a bridge, a
/// one-way cut, a slow, a failing and a dead HSM slot, a skewed clock, a node removed and added
/// back, a node replaced by a fresh one (its log and state erased) that catches up.
#[test]
fn seeded_processes_scenario_of_the_newer_faults_has_no_violation() {
    let nemesis = "bridge,one-way,hsm-slow,hsm-fail,hsm-dead,clock-skew,membership,replace";
    let summary = clean_run(&[
        "--target",
        "processes",
        "--nodes",
        "3",
        "--duration",
        "90",
        "--seed",
        "5",
        "--cards",
        "2000",
        "--nemesis",
        nemesis,
    ]);
    let seen = kinds(&summary);
    eprintln!("faults: {seen:?}");
    for k in nemesis.split(',') {
        assert!(seen.iter().any(|s| s == k), "{k} was not injected: {seen:?}");
    }
    // Each skewed clock was seen from outside (the node's time in its Status answer).
    for f in summary["faults"].as_array().unwrap().iter().filter(|f| f["kind"] == "clock-skew") {
        assert!(f["note"].as_str().unwrap().contains("(its Status: "), "{f}");
    }
    // The replaced node came back and caught up.
    let replaced = summary["faults"].as_array().unwrap().iter().find(|f| f["kind"] == "replace").unwrap();
    assert!(replaced["note"].as_str().unwrap().contains("back at index"), "{replaced}");
}

#[test]
fn seeded_containers_scenario_has_no_violation() {
    if quill_tests::containers::Engine::or_skip("containers chaos scenario").is_none() {
        return;
    }
    let summary =
        clean_run(&["--target", "containers", "--nodes", "5", "--duration", "50", "--seed", "11", "--cards", "2000"]);
    eprintln!("faults: {:?}", kinds(&summary));
    // A skewed clock in a container (libfaketime from the node image) is seen from outside.
    for f in summary["faults"].as_array().unwrap().iter().filter(|f| f["kind"] == "clock-skew") {
        assert!(f["note"].as_str().unwrap().contains("(its Status: "), "{f}");
    }
}

/// Bad arguments exit 2 with the reason (the schedule itself is unit-tested in `nemesis.rs`).
#[test]
fn the_schedule_is_printed_and_bad_arguments_exit_2() {
    let bin = quill_tests::binary("quill-chaos");
    let out = Command::new(&bin).args(["run", "--nemesis", "kill,melt"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fault \"melt\""));
    let out = Command::new(&bin).args(["run", "--nodes", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(&bin).args(["run", "--target", "vms"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vms"), "{}", String::from_utf8_lossy(&out.stderr));
}

//! The short seeded chaos scenario of `make test`: `quill-chaos run` on 3 processes for 40 s
//! (seed 3, every fault kind), a 2,000-card batch and 4 register clients, through the binary as
//! an operator runs it. Its JSON summary must hold no violation, every fault of the schedule injected, and
//! every check run (batch done, nodes converged, histories recorded).
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn seeded_processes_scenario_has_no_violation() {
    let bin = quill_tests::binary("quill-chaos");
    let out = Command::new(bin)
        .args(["run", "--target", "processes", "--nodes", "3", "--duration", "40", "--seed", "3", "--cards", "2000"])
        .args(["--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["violations"], serde_json::json!([]), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    let schedule = summary["schedule"].as_array().unwrap();
    assert!(schedule.len() >= 3, "{schedule:?}");
    assert_eq!(summary["faults"].as_array().unwrap().len(), schedule.len(), "every scheduled fault injected");
    assert!(summary["batch_ms"].as_u64().is_some() && summary["converge_ms"].as_u64().is_some());
    let writes = summary["ops"]["write"]["ok"].as_u64().unwrap();
    let reads = summary["ops"]["read"]["ok"].as_u64().unwrap();
    assert!(writes > 100 && reads > 100, "a workload ran: {writes} writes, {reads} reads");
}

/// The same seed gives the same schedule, printed before the run.
#[test]
fn the_schedule_is_printed_and_bad_arguments_exit_2() {
    let bin = quill_tests::binary("quill-chaos");
    let out = Command::new(&bin).args(["run", "--nemesis", "kill,melt"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fault \"melt\""));
    let out = Command::new(&bin).args(["run", "--nodes", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

//! The `quill` CLI against a dev cluster it starts itself: `dev up` writes `D/env` and a config
//! per node, `cluster status --json` names the leader, `bench raft --json` measures it, a second
//! `dev up` restarts the same cluster without initialising it again, and `dev down --wipe` stops
//! every node and removes the directory.

use std::path::Path;
use std::process::{Command, Output};

use quill_tests::{binary, step};
use serde_json::Value;

/// Stops the dev cluster if the test fails half-way.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = Command::new(binary("quill")).args(["dev", "down", "--dir"]).arg(self.0).output();
        }
    }
}

fn quill(args: &[&str], dir: &Path) -> Output {
    let out = Command::new(binary("quill"))
        .args(args)
        .env_remove("QUILL_ENDPOINT")
        .env_remove("QUILL_ENDPOINTS")
        .env("QUILL_DEV_DIR", dir)
        .output()
        .expect("run quill");
    eprintln!(
        "$ quill {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "quill failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON document on stdout")
}

#[test]
fn dev_up_status_bench_restart_down() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("dev");
    let dir_s = dir.to_str().expect("utf-8 path");
    let _down = Down(&dir);

    step("quill dev up --nodes 3");
    let up = json_of(&quill(&["dev", "up", "--nodes", "3", "--dir", dir_s, "--json"], &dir));
    assert_eq!(up["initialised"], true);
    assert_eq!(up["nodes"].as_array().map(Vec::len), Some(3));
    let env = std::fs::read_to_string(dir.join("env")).expect("D/env");
    assert!(env.contains("QUILL_ENDPOINT=https://127.0.0.1:"), "{env}");
    assert!(env.contains("QUILL_IDENTITY="), "{env}");
    assert!(env.contains("QUILL_ENDPOINTS="), "{env}");
    for i in 1..=3 {
        assert!(dir.join(format!("node-{i}/node.toml")).is_file());
        // The config holds the token PIN, the key the node's certificate: owner only.
        for f in ["node.toml", "tls/key.pem"] {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join(format!("node-{i}/{f}"))).expect("file").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "node-{i}/{f} is {mode:o}");
        }
        assert!(dir.join(format!("node-{i}/pid")).is_file());
    }

    step("pgrep -f \"quilld.*D\" finds exactly the three nodes");
    let pg = Command::new("pgrep").arg("-f").arg(format!("quilld.*{dir_s}")).output().expect("pgrep");
    assert_eq!(String::from_utf8_lossy(&pg.stdout).lines().count(), 3, "pgrep output: {:?}", pg);

    step("quill cluster status --json names the leader");
    let st = json_of(&quill(&["cluster", "status", "--json"], &dir));
    let leader = st["leader"].as_u64().expect("a leader id");
    let nodes = st["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["reachable"] == true), "{st}");
    assert!(nodes.iter().any(|n| n["id"] == leader && n["role"] == "leader"), "{st}");

    step("every link is TLS 1.3 with the hybrid post-quantum key exchange (client and Raft links)");
    let pq = |l: &Value| l["protocol"] == "TLSv1_3" && l["group"] == "X25519MLKEM768";
    let client = st["client_tls"].as_array().expect("client_tls");
    assert!(!client.is_empty() && client.iter().all(pq), "{st}");
    let leader_links = nodes.iter().find(|n| n["id"] == leader).expect("leader row")["tls_links"].clone();
    let leader_links = leader_links.as_array().expect("tls_links");
    assert_eq!(leader_links.len(), 2, "the leader dials both followers: {st}");
    assert!(leader_links.iter().all(pq), "{st}");

    step("quill bench raft --clients 1,4 --seconds 1 --json");
    let b = json_of(&quill(&["bench", "raft", "--clients", "1,4", "--seconds", "1", "--json"], &dir));
    let results = b["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(r["commands"].as_u64().unwrap_or(0) > 0, "{r}");
    }

    step("quill dev up again restarts the same cluster after a node died");
    let pid1: u32 = std::fs::read_to_string(dir.join("node-1/pid")).expect("pid").trim().parse().expect("pid");
    quill_tests::signal(pid1, "KILL");
    let up2 = json_of(&quill(&["dev", "up", "--dir", dir_s, "--json"], &dir));
    assert_eq!(up2["initialised"], false);
    let st = json_of(&quill(&["cluster", "status", "--json"], &dir));
    assert!(st["leader"].as_u64().is_some(), "{st}");
    assert!(st["nodes"].as_array().expect("nodes").iter().all(|n| n["reachable"] == true), "{st}");

    step("quill dev down --wipe");
    let down = json_of(&quill(&["dev", "down", "--dir", dir_s, "--wipe", "--json"], &dir));
    assert_eq!(down["stopped"].as_array().map(Vec::len), Some(3));
    assert!(!dir.exists());

    step("a cluster command with no cluster fails with one line and a non-zero code");
    let out = quill(&["cluster", "status"], &dir);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);
}

//! `quill job hot-folder` (3 nodes, hsm-sim): a complete file dropped into the folder is
//! submitted, prepared and delivered atomically to the output folder, its input moved aside; a
//! partial upload (`*.part`) is left alone until it is renamed; a bad file is rejected with its
//! reason; a restarted hot folder does not submit anything twice.
#![allow(clippy::unwrap_used)]

use quill_tests::{Cluster, ClusterOptions, repo_root, step};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_folder_delivers_each_complete_file_once() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let cluster = Cluster::start("t97", opts).await;
    cluster.keys_ready().await;

    let dir = tempfile::tempdir().unwrap();
    let (inbox, outbox) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&inbox).unwrap();
    let sample = std::fs::read(repo_root().join("prep/samples/multi-app.csv")).unwrap();
    std::fs::write(inbox.join("bank-a.csv"), &sample).unwrap();
    std::fs::write(inbox.join("bank-b.csv.part"), &sample[..sample.len() / 2]).unwrap();
    std::fs::write(inbox.join("broken.csv"), "4970100000000014;00;2810\n").unwrap();
    let profile = repo_root().join("prep/profiles/multi-app.toml");
    let args = |once: bool| {
        let mut v = vec![
            "job".to_string(),
            "hot-folder".into(),
            "--in".into(),
            inbox.display().to_string(),
            "--out".into(),
            outbox.display().to_string(),
            "--profile".into(),
            profile.display().to_string(),
            "--mac-key".into(),
            "MAC-OUTPUT-TEST".into(),
            "--poll-ms".into(),
            "300".into(),
        ];
        if once {
            v.push("--once".into());
        }
        v
    };

    step("a complete file is delivered, a partial one left alone, a bad one rejected");
    let a = args(true);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = cluster.quill_ok(1, &refs, &[("QUILL_ACTOR", "operator:otto")]);
    assert!(out.contains("bank-a.csv: submitted as job") && out.contains("delivered"), "{out}");
    assert!(out.contains("broken.csv: rejected"), "{out}");
    for f in ["cards.jsonl", "pin-mailers.jsonl", "carriers.jsonl"] {
        assert!(outbox.join("bank-a.csv").join(f).is_file(), "{f} missing");
    }
    assert!(!outbox.join("bank-a.csv.tmp").exists());
    assert!(inbox.join("processed/bank-a.csv").is_file());
    assert!(inbox.join("rejected/broken.csv").is_file());
    let reason = std::fs::read_to_string(inbox.join("rejected/broken.error.txt")).unwrap();
    assert!(reason.contains("broken.csv:1"), "{reason}");
    assert!(inbox.join("bank-b.csv.part").is_file(), "the partial upload was touched");
    let check = cluster.quill_ok(1, &["prep", "check", outbox.join("bank-a.csv").to_str().unwrap()], &[]);
    assert_eq!(check.matches("MAC verified").count(), 3, "{check}");

    step("restart: the same file dropped again is not submitted twice; the finished upload is");
    std::fs::write(inbox.join("bank-a.csv"), &sample).unwrap();
    std::fs::rename(inbox.join("bank-b.csv.part"), inbox.join("bank-b.csv")).unwrap();
    let out = cluster.quill_ok(1, &refs, &[("QUILL_ACTOR", "operator:otto")]);
    assert!(out.contains("bank-a.csv: already delivered"), "{out}");
    // bank-b is half of the sample: its last line is cut, so the profile's policy rejects it.
    assert!(out.contains("bank-b.csv: rejected") || out.contains("bank-b.csv: submitted"), "{out}");
    let jobs = cluster.query(1, "jobs", "").await.unwrap();
    let a_jobs = jobs.as_array().unwrap().iter().filter(|j| j["file"] == "bank-a.csv").count();
    assert_eq!(a_jobs, 1, "bank-a.csv submitted {a_jobs} times");
}

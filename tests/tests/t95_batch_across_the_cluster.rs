//! Batches across the cluster (5 nodes, hsm-sim): a 5,000-card DDA batch is prepared by several
//! nodes; the node holding the most claims is SIGKILLed mid-batch; the batch still completes with
//! every input record exactly once, in input order, its streams' MACs verify, and the cards pass
//! the third-party checks (pyemv/psec, when the venv is there). Then delivery is acknowledged and
//! the cluster purges input and output. Malformed submissions leave no job behind.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use quill_proto::v1::jobs_client::JobsClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::{AuditTailRequest, Caller, SubmitPart};
use quill_tests::{Cluster, ClusterOptions, dda_batch_pan, repo_root, step, wait_until, write_dda_batch};
use serde_json::Value;

const OPERATOR: [(&str, &str); 1] = [("QUILL_ACTOR", "operator:otto")];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_survives_a_killed_node_and_is_delivered_exactly_once() {
    let opts = ClusterOptions { nodes: 5, hsm: true, ..ClusterOptions::default() };
    let cluster = Cluster::start("t95", opts).await;
    step("SMK ceremony, TEST keys by ceremony, TEST issuers");
    cluster.keys_ready().await;

    step("submit 5,000 cards in chunks of 100");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("batch-5000.csv");
    write_dda_batch(&input, 5000, 0);
    let job = cluster.submit_dda_job(2, &input, "100");
    // The same file again is refused while the job is not acknowledged.
    let profile = repo_root().join("prep/profiles/visa-dda-credit.toml");
    let (code, _, err) = cluster.quill(
        3,
        &[
            "job",
            "submit",
            "--profile",
            profile.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--mac-key",
            "MAC-OUTPUT-TEST",
        ],
        &OPERATOR,
    );
    assert_ne!(code, 0);
    assert!(err.contains("already job") && err.contains("--force"), "{err}");

    step("kill the node holding the most claims mid-batch");
    let victim = wait_until(Duration::from_secs(120), "claims spread over the nodes", || async {
        let chunks = cluster.query(1, "chunks", &job).await?;
        let mut claims = std::collections::BTreeMap::<u64, usize>::new();
        let mut done = 0;
        for c in chunks.as_array().unwrap() {
            match c["state"].as_str() {
                Some("claimed") => *claims.entry(c["node"].as_u64().unwrap()).or_default() += 1,
                Some("done") => done += 1,
                _ => {}
            }
        }
        match claims.iter().max_by_key(|(_, n)| **n) {
            Some((node, _)) if done >= 3 && *node != 1 => Ok(*node),
            _ => Err(format!("{done} done, claims {claims:?}")),
        }
    })
    .await;
    cluster.sigkill(victim);

    step("the batch completes without the killed node");
    let status = cluster.wait_job_done(1, &job).await;
    assert_eq!(status["cards_done"], 5000);
    assert_eq!(status["failures"].as_array().unwrap().len(), 0);
    let chunks = cluster.query(1, "chunks", &job).await.unwrap();
    let nodes: std::collections::BTreeSet<u64> =
        chunks.as_array().unwrap().iter().map(|c| c["node"].as_u64().unwrap()).collect();
    assert!(nodes.len() >= 3, "chunks prepared on {nodes:?}");
    let redone = chunks.as_array().unwrap().iter().filter(|c| c["claims"].as_u64().unwrap() > 1).count();
    println!("chunks prepared on nodes {nodes:?}; {redone} chunk(s) claimed more than once");

    step("fetch: every record once, in input order, MACs verified on arrival");
    let out = dir.path().join("out");
    let alive = if victim == 1 { 2 } else { 1 };
    cluster.quill_ok(alive, &["job", "fetch", &job, "-o", out.to_str().unwrap()], &OPERATOR);
    for f in ["cards.jsonl", "pin-mailers.jsonl", "carriers.jsonl"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} holds card data and is {mode:o}");
    }
    let cards = std::fs::read_to_string(out.join("cards.jsonl")).unwrap();
    let lines: Vec<Value> = cards.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5002, "header + 5,000 cards + trailer");
    for (i, c) in lines[1..5001].iter().enumerate() {
        assert_eq!(c["line"].as_u64(), Some(i as u64 + 2), "card {i} out of order");
        assert_eq!(c["pan"].as_str().unwrap(), dda_batch_pan(i));
    }
    let check = cluster.quill_ok(alive, &["prep", "check", out.to_str().unwrap()], &[]);
    assert_eq!(check.matches("MAC verified").count(), 3, "{check}");

    step("pyemv/psec checks of the cluster's output");
    let passed = quill_tests::reference_check(&profile, &input, &out, &[]).unwrap();
    println!("reference checks: {passed:?}");

    step("acknowledge: input and output purged, the record kept");
    cluster.quill_ok(alive, &["job", "ack", &job, "--fetched", out.to_str().unwrap()], &OPERATOR);
    let j = cluster.query(alive, "job", &job).await.unwrap();
    assert_eq!(j["state"], "acked");
    assert_eq!(j["delivered"].as_array().unwrap().len(), 3);
    let (code, _, err) = cluster.quill(alive, &["job", "fetch", &job, "-o", out.to_str().unwrap()], &OPERATOR);
    assert_ne!(code, 0);
    assert!(err.contains("acked"), "{err}");
    // The delivered file again would make new PINs for the same PANs: refused, with the reason.
    let resubmit = ["job", "submit", "--profile", profile.to_str().unwrap(), "--input", input.to_str().unwrap()];
    let (code, _, err) = cluster.quill(alive, &[&resubmit[..], &["--mac-key", "MAC-OUTPUT-TEST"]].concat(), &OPERATOR);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("was job {job}")) && err.contains("acknowledged") && err.contains("--force"),
        "{err}"
    );
    let audit = cluster.quill_ok(alive, &["audit", "export"], &[]);
    assert!(audit.contains("job.ack") && audit.contains("job.complete"), "audit lacks job records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_submissions_leave_no_job_behind() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let cluster = Cluster::start("t95m", opts).await;
    cluster.keys_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let profile = repo_root().join("prep/profiles/visa-dda-credit.toml");
    let try_submit = |input: &Path, profile: &Path| {
        cluster.quill(
            1,
            &[
                "job",
                "submit",
                "--profile",
                profile.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--mac-key",
                "MAC-OUTPUT-TEST",
            ],
            &OPERATOR,
        )
    };

    step("a bad record fails the batch (profile policy), naming line and field");
    let bad = dir.path().join("bad.csv");
    write_dda_batch(&bad, 20, 0);
    let mut text = std::fs::read_to_string(&bad).unwrap();
    text = text.replacen("4761730000000052", "4761730000000053", 1);
    std::fs::write(&bad, &text).unwrap();
    let (code, _, err) = try_submit(&bad, &profile);
    assert_ne!(code, 0);
    assert!(err.contains("bad.csv:7") && err.contains("pan") && err.contains("nothing was submitted"), "{err}");
    assert!(!err.contains("4761730000000053"), "PAN in the error: {err}");

    step("wrong encoding, a truncated file, a broken CSV, an unknown profile");
    let latin = dir.path().join("latin.csv");
    let mut bytes = std::fs::read(repo_root().join("prep/samples/visa-dda-credit.csv")).unwrap();
    bytes.extend_from_slice(b"4761739001010036,,2906,2606,201,M\xdcLLER/ANNA,ANNA M\xdcLLER,840\n");
    std::fs::write(&latin, &bytes).unwrap();
    let (code, _, err) = try_submit(&latin, &profile);
    assert_ne!(code, 0, "{err}");
    let cut = dir.path().join("cut.csv");
    let sample = std::fs::read_to_string(repo_root().join("prep/samples/visa-dda-credit.csv")).unwrap();
    std::fs::write(&cut, &sample[..sample.len() - 20]).unwrap();
    let (code, _, err) = try_submit(&cut, &profile);
    assert_ne!(code, 0, "{err}");
    let broken = dir.path().join("broken.csv");
    std::fs::write(&broken, "PAN;PSN\n1;2\n").unwrap();
    let (code, _, err) = try_submit(&broken, &profile);
    assert_ne!(code, 0, "{err}");
    let (code, _, err) = try_submit(&bad, &dir.path().join("no-such-profile.toml"));
    assert_ne!(code, 0);
    assert!(err.contains("no-such-profile.toml"), "{err}");

    step("hand-built: force without a reason, with a reason holding a control character, or an oversized one");
    let mut jobs_api = JobsClient::new(cluster.channel_as(1, "operator:otto"));
    for (n, reason) in [(1, String::new()), (2, "line\nbreak".to_string()), (3, "r".repeat(501))] {
        let part = SubmitPart {
            caller: Some(Caller { client_id: "t95-force".into(), serial: n }),
            file_name: "f.csv".into(),
            force: true,
            reason,
            data: sample.as_bytes().to_vec(),
            ..Default::default()
        };
        let e = jobs_api
            .submit(tokio_stream::iter(vec![part]))
            .await
            .expect_err("a forced submission without a fit reason");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("reason"), "{e:?}");
    }

    let jobs = cluster.query(1, "jobs", "").await.unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 0, "a job was left behind: {jobs}");

    step("the same cards in a job not yet acknowledged: refused, skipped or forced (issue 16)");
    let first = dir.path().join("first.csv");
    write_dda_batch(&first, 20, 0);
    let first_job = cluster.submit_dda_job(1, &first, "10");
    let lines: Vec<String> = std::fs::read_to_string(&first).unwrap().lines().map(str::to_owned).collect();
    let fresh = dir.path().join("fresh.csv");
    write_dda_batch(&fresh, 5, 500);
    let fresh_lines: Vec<String> =
        std::fs::read_to_string(&fresh).unwrap().lines().skip(1).map(str::to_owned).collect();
    let again = dir.path().join("again.csv");
    // Header, 5 new cards, then 3 cards (PAN and PSN) of the first job.
    let text = [vec![lines[0].clone()], fresh_lines, lines[16..19].to_vec()].concat().join("\n") + "\n";
    std::fs::write(&again, text).unwrap();
    let (code, _, err) = try_submit(&again, &profile);
    assert_ne!(code, 0, "the fail_batch profile refuses the repeat: {err}");
    assert!(err.contains(&format!("already in job {first_job}")) && err.contains("again.csv:7"), "{err}");
    assert!(!err.contains(&dda_batch_pan(15)), "PAN in the error: {err}");
    // A profile that skips bad records skips the repeats and reports them.
    let skipping = dir.path().join("skipping.toml");
    let toml = std::fs::read_to_string(&profile).unwrap();
    assert!(toml.contains("on_bad_record = \"fail_batch\""));
    std::fs::write(&skipping, toml.replace("on_bad_record = \"fail_batch\"", "on_bad_record = \"skip_and_report\""))
        .unwrap();
    let (code, out, err) = try_submit(&again, &skipping);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("5 card(s)") && out.contains("3 record(s) skipped"), "{out}");
    assert_eq!(err.matches(&format!("already in job {first_job}")).count(), 3, "{err}");
    // Another operator learns that the cards are taken, not whose job holds them.
    let olga = dir.path().join("olga.csv");
    let one_new = [lines[0].clone(), "4761730000009004,00,2812,2512,201,TEST/OLGA,OLGA TEST,840".into()];
    std::fs::write(&olga, [one_new.to_vec(), lines[16..19].to_vec()].concat().join("\n") + "\n").unwrap();
    let mut args: Vec<&str> = vec!["job", "submit", "--profile", skipping.to_str().unwrap()];
    args.extend(["--input", olga.to_str().unwrap(), "--mac-key", "MAC-OUTPUT-TEST"]);
    let (code, out, err) = cluster.quill(1, &args, &[("QUILL_ACTOR", "operator:olga")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 card(s)") && out.contains("3 record(s) skipped"), "{out}");
    assert_eq!(err.matches("already in another submitter's job").count(), 3, "{err}");
    assert!(!err.contains(&first_job), "another submitter's job named: {err}");
    // --force takes them, with the operator's reason; the job's audit record keeps who and why
    // (sealed: only an auditor's export --decrypt shows it).
    let mut args: Vec<&str> = vec!["job", "submit", "--force", "--profile", skipping.to_str().unwrap()];
    let (code, _, err) = cluster.quill(1, &[&args[..], &["--input", again.to_str().unwrap()]].concat(), &OPERATOR);
    assert_eq!(code, 2, "--force without --reason is a usage error: {err}");
    assert!(err.contains("--reason"), "{err}");
    args.extend(["--reason", "TEST issuer ticket 4711: reissue after a lost parcel"]);
    args.extend(["--input", again.to_str().unwrap(), "--mac-key", "MAC-OUTPUT-TEST"]);
    let out = cluster.quill_ok(1, &args, &[("QUILL_ACTOR", "operator:otto")]);
    assert!(out.contains("8 card(s)") && !out.contains("skipped"), "{out}");
    let export = cluster.quill_ok(1, &["audit", "export"], &[]);
    let forced = export.lines().find(|l| l.contains("forced (the reason is sealed")).expect("the forced job's record");
    assert!(forced.contains("\"note\"") && !export.contains("ticket 4711"), "the reason is sealed: {forced}");
    let (code, _, err) = cluster.quill(1, &["audit", "export", "--decrypt"], &[("QUILL_ACTOR", "admin:ada")]);
    assert_ne!(code, 0, "only an auditor opens notes: {err}");
    let opened = cluster.quill_ok(1, &["audit", "export", "--decrypt"], &[("QUILL_ACTOR", "auditor:ann")]);
    assert!(opened.contains("\"note_text\":\"TEST issuer ticket 4711: reissue after a lost parcel\""), "{opened}");
    let after = cluster.quill_ok(1, &["audit", "export"], &[]);
    assert!(
        after.lines().any(|l| l.contains("audit.decrypt") && l.contains("auditor:ann")),
        "the reading is itself audited"
    );
    // Hand-built: a decrypt with no caller, and a replayed client id and serial (for another
    // range), are refused; a fresh serial works.
    let mut k = KeysClient::new(cluster.channel_as(1, "auditor:ann"));
    let tail = |from, caller: Option<Caller>| AuditTailRequest { from, limit: 10_000, decrypt: true, caller };
    let e = k.audit_tail(tail(1, None)).await.expect_err("a decrypt without a caller");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let caller = || Some(Caller { client_id: "t95-decrypt".into(), serial: 1 });
    let r = k.audit_tail(tail(1, caller())).await.expect("a fresh serial").into_inner();
    assert!(r.records.iter().any(|l| l.contains("note_text")));
    let e = k.audit_tail(tail(2, caller())).await.expect_err("a replayed serial");
    assert!(e.message().contains("was used before"), "{e:?}");
}

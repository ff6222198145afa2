//! The audit chain against someone with the nodes' disks (issue 13), on a 3-node cluster with
//! hsm-sim:
//!
//! 1. fail closed: a node whose HSM cannot MAC stops applying (its `/health` says why) rather than
//!    write a record it cannot vouch for; restarted with a working HSM, it catches up and verifies;
//! 2. anchors: `quill audit anchor` writes the newest seal outside the cluster; the same
//!    truncation of the chain on every node (records and their MACs removed) passes every node's
//!    own checks, and `quill audit verify --anchors` catches it;
//! 3. the finding's offline rewrite: on one stopped node, a record's actor, action and outcome
//!    rewritten, every seal stripped, the chain renumbered and re-linked: `quill audit verify` on
//!    that node fails, and on a healthy node the comparison with the members names it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quill_node::audit::{AuditHead, AuditRecord, NodeMac, key, record_hash};
use quill_node::identity::Actor;
use quill_node::store::{Cf, Store, WriteBatch, codec};
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::{AuditAnchorLine, AuditVerifyRequest};
use quill_tests::{Cluster, ClusterOptions, http_get, step, wait_until};

fn store_of(cluster: &Cluster, id: u64) -> Store {
    Store::open(&cluster.node(id).dir.join("data").join("db")).expect("open the node's store")
}

fn head_of(store: &Store) -> AuditHead {
    store.get(Cf::SmData, key::HEAD.as_bytes()).expect("read head").unwrap_or_default()
}

fn chain_of(store: &Store) -> Vec<AuditRecord> {
    let head = head_of(store);
    (1..=head.seq).map(|s| store.get(Cf::SmData, key::record(s).as_bytes()).expect("read").expect("record")).collect()
}

/// This node's MACs, keyed by the last record each covers.
fn macs_of(store: &Store, upto: u64) -> Vec<NodeMac> {
    (1..=upto).filter_map(|s| store.get::<NodeMac>(Cf::AuditMac, &s.to_be_bytes()).expect("read MAC")).collect()
}

/// Replace the chain (records `1..=old_len`) with `recs`, renumbered from 1 and re-linked, and
/// move the head: what an attacker with the disk can do without any key.
fn write_chain(store: &Store, old_len: u64, mut recs: Vec<AuditRecord>) {
    let sm = store.cf(Cf::SmData).unwrap();
    let mut batch = WriteBatch::default();
    for s in 1..=old_len {
        batch.delete_cf(sm, key::record(s).as_bytes());
    }
    let mut prev = [0u8; 32];
    for (i, r) in recs.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
        r.prev = prev;
        prev = record_hash(r);
        batch.put_cf(sm, key::record(r.seq).as_bytes(), codec::encode(&*r).unwrap());
    }
    let head = AuditHead { seq: recs.len() as u64, hash: prev };
    batch.put_cf(sm, key::HEAD.as_bytes(), codec::encode(&head).unwrap());
    store.write(batch, true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_chain_fails_closed_and_holds_to_its_anchors() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let mut cluster = Cluster::start("t99", opts).await;
    cluster.keys_ready().await;
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, Duration::from_secs(20), "a leader").await;
    let follower = *ids.iter().find(|i| **i != leader).unwrap();
    let other = *ids.iter().find(|i| **i != leader && **i != follower).unwrap();

    step("a seal exists and the chain verifies on every node, each with its own MACs over every record");
    wait_until(Duration::from_secs(30), "a verified, sealed chain on every node", || async {
        for id in &ids {
            let (code, out, err) = cluster.quill(*id, &["--json", "audit", "verify"], &[]);
            let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}{err}"))?;
            if code != 0 || v["seals"].as_u64().unwrap_or(0) == 0 {
                return Err(format!("node {id}: exit {code} {out}{err}"));
            }
            if v["node_macs"].as_u64().unwrap_or(0) == 0 {
                return Err(format!("node {id}: no node MACs: {v}"));
            }
        }
        Ok(())
    })
    .await;

    step(&format!("1. node {follower}'s HSM fails: it stops applying rather than write an unMACed record"));
    let faults = cluster.node(follower).dir.join("hsm/faults.toml");
    std::fs::write(&faults, "failing_slots = [0]\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cluster.status(follower).await.unwrap().applied_index;
    cluster.put(leader, "t99", 1, "fail-closed", b"v").await.expect("a write the majority applies");
    let http = cluster.node(follower).http_addr;
    let why = wait_until(Duration::from_secs(60), "the failing node to stop applying", || async {
        match http_get(http, "/health") {
            Ok((200, _)) => Err("still healthy".to_string()),
            Ok((_, body)) => Ok(body),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert!(why.contains("cannot MAC audit records"), "the reason is given: {why}");
    let applied = cluster.status(leader).await.unwrap().applied_index;
    assert!(applied > before, "the others went on");
    std::fs::remove_file(&faults).unwrap();
    cluster.terminate(follower);
    cluster.restart(follower).await;
    cluster.wait_converged(&ids, applied, Duration::from_secs(60)).await;
    let out = cluster.quill_ok(follower, &["--json", "audit", "verify"], &[]);
    assert!(out.contains("\"broken\":null"), "node {follower} verifies after it caught up: {out}");

    step("2. anchor the chain outside the cluster");
    let dir = tempfile::tempdir().unwrap();
    let anchors = dir.path().join("anchors.jsonl");
    let anchors_arg = anchors.to_str().unwrap();
    cluster.quill_ok(leader, &["audit", "anchor", "--out", anchors_arg], &[]);
    let line_json: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&anchors).unwrap().lines().next().unwrap()).unwrap();
    let anchored = line_json["seq"].as_u64().unwrap();
    let out = cluster.quill_ok(leader, &["audit", "verify", "--anchors", anchors_arg], &[]);
    assert!(out.contains("1 of 1 anchors hold"), "{out}");
    // Hand-built anchors: a line that is not an anchor is refused naming it; a forged anchor
    // (the right record and hash, a MAC nobody with the audit key made) breaks verification.
    let mut k = KeysClient::new(cluster.channel_as(leader, "auditor:ann"));
    let line = |json: String| AuditAnchorLine { source: "forged.jsonl:1".into(), json };
    let e = k
        .audit_verify(AuditVerifyRequest {
            anchors: vec![line("{\"anchor\":1,\"seq\":\"x\"}".into())],
            archives: vec![],
        })
        .await
        .expect_err("a malformed anchor");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("forged.jsonl:1"), "{e:?}");
    let mut forged = line_json.clone();
    forged["mac"] = serde_json::Value::String("00".repeat(32));
    let r = k
        .audit_verify(AuditVerifyRequest { anchors: vec![line(forged.to_string())], archives: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.ok && r.json.contains("seal MAC does not verify"), "{}", r.json);

    step("2. the same truncation on every node: records and their MACs removed, head moved back");
    for id in &ids {
        cluster.terminate(*id);
    }
    let mut cut = None;
    for id in &ids {
        let store = store_of(&cluster, *id);
        let bounds: Vec<u64> = macs_of(&store, head_of(&store).seq).iter().map(|m| m.last).collect();
        let best = bounds.iter().copied().filter(|b| *b + 2 < anchored).max().unwrap();
        cut = Some(cut.map_or(best, |c: u64| c.min(best)));
    }
    let cut = cut.unwrap();
    for id in &ids {
        let store = store_of(&cluster, *id);
        let head = head_of(&store);
        let macs = macs_of(&store, head.seq);
        assert!(macs.iter().any(|m| m.last == cut), "node {id} has a MAC ending at record {cut}");
        let chain = chain_of(&store);
        write_chain(&store, head.seq, chain.into_iter().take(cut as usize).collect());
        let mut batch = WriteBatch::default();
        for m in macs.iter().filter(|m| m.last > cut) {
            batch.delete_cf(store.cf(Cf::AuditMac).unwrap(), m.last.to_be_bytes());
        }
        store.write(batch, true).unwrap();
    }
    for id in &ids {
        cluster.restart(*id).await;
    }
    cluster.wait_leader(&ids, Duration::from_secs(30), "a leader after the restart").await;
    for id in &ids {
        let out = wait_until(Duration::from_secs(30), "the truncated chain passes the node's own checks", || async {
            let (code, out, err) = cluster.quill(*id, &["audit", "verify"], &[]);
            if code == 0 { Ok(out) } else { Err(format!("{out}{err}")) }
        })
        .await;
        assert!(out.contains("audit chain OK"), "{out}");
    }
    let (code, out, err) = cluster.quill(leader, &["audit", "verify", "--anchors", anchors_arg], &[]);
    assert_eq!(code, 3, "the anchors catch it: {out}{err}");
    assert!(out.contains("anchors.jsonl:1") && out.contains(&format!("record {anchored}")), "{out}");

    step(&format!("3. on node {other}: a record rewritten, every seal stripped, the chain renumbered and re-linked"));
    wait_until(Duration::from_secs(30), "a seal after the restart", || async {
        let (_, out, _) = cluster.quill(other, &["audit", "tail", "-n", "50"], &[]);
        if out.contains("audit.seal") { Ok(()) } else { Err(out) }
    })
    .await;
    cluster.terminate(other);
    let rewritten;
    {
        let store = store_of(&cluster, other);
        let head = head_of(&store);
        let mut chain = chain_of(&store);
        let target = chain.iter().position(|r| r.action == "ceremony.start").expect("the SMK ceremony's record");
        rewritten = chain[target].seq;
        let r = &mut chain[target];
        r.actor = Actor { name: "ada".into(), role: r.actor.role };
        r.action = "audit.check".into();
        r.object = "audit:routine".into();
        r.outcome = "ok: routine check".into();
        let seals = chain.iter().filter(|r| r.seal.is_some()).count();
        assert!(seals > 0, "there are seals to strip");
        chain.retain(|r| r.seal.is_none());
        write_chain(&store, head.seq, chain);
        // The attacker's best move with the node's MACs: delete those from the rewritten record
        // on, hoping the node MACs the rewritten chain afresh when it applies the next entry.
        let mut batch = WriteBatch::default();
        for m in macs_of(&store, head.seq).iter().filter(|m| m.last >= rewritten) {
            batch.delete_cf(store.cf(Cf::AuditMac).unwrap(), m.last.to_be_bytes());
        }
        store.write(batch, true).unwrap();
    }
    cluster.restart(other).await;
    cluster.put(leader, "t99", 2, "after-rewrite", b"v").await.expect("a write node {other} applies");
    wait_until(Duration::from_secs(30), "a new seal on the rewritten node", || async {
        let (_, out, _) = cluster.quill(other, &["audit", "tail", "-n", "5"], &[]);
        if out.contains("audit.seal") { Ok(()) } else { Err(out) }
    })
    .await;
    let (code, out, err) = cluster.quill(other, &["audit", "verify", "--no-compare"], &[]);
    assert_eq!(code, 3, "the rewritten node fails: {out}{err}");
    assert!(out.contains("BROKEN at record"), "{out}");
    let at: u64 = out.split("BROKEN at record ").nth(1).unwrap().split(':').next().unwrap().trim().parse().unwrap();
    assert!(at <= rewritten, "blamed record {at} is at or before the rewritten record {rewritten}: {out}");
    let out = cluster.quill_ok(leader, &["audit", "verify", "--no-compare"], &[]);
    assert!(out.contains("audit chain OK"), "{out}");
    let (code, out, err) = cluster.quill(leader, &["audit", "verify"], &[]);
    assert_eq!(code, 3, "the comparison with the members finds the rewritten node: {out}{err}");
    assert!(out.contains(&format!("node {other} holds another record")), "{out}");
}

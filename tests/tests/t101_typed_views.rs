//! Issue 11, queries answer views: every typed query of the Keys and Jobs services, and the
//! superseded `Keys.Query` for every `what` it knows, called by hand as an auditor on a 3-node
//! cluster (hsm-sim) that holds an SMK, the TEST keys (key blocks at rest) and a finished job. Read
//! as someone collecting everything a reader can get:
//! - no answer carries a key block at rest (neither as text nor hex), a sealed component, a job's
//!   wrapped data key or profile text: the view names each key block's header, nothing after it;
//! - the superseded JSON query answers the same views as the typed ones;
//! - a `Get…` of an unknown id is NOT_FOUND, naming it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quill_proto::v1::jobs_client::JobsClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::{AuditTailRequest, AuditVerifyRequest};
use quill_proto::v1::{
    GetAuditKeysRequest, GetCeremonyRequest, GetJobRequest, GetKeyRequest, GetSmkRequest, KeyView,
    ListApprovalsRequest, ListCaKeysRequest, ListCeremoniesRequest, ListChunksRequest, ListIssuerCertsRequest,
    ListIssuerKeysRequest, ListJobsRequest, ListKeysRequest, ListNodesRequest, ListRevokedCertsRequest, QueryRequest,
};
use quill_tests::{Cluster, ClusterOptions, step, wait_until, write_dda_batch};
use tonic::Code;

const QUERIES: [&str; 17] = [
    "smk",
    "nodes",
    "ceremonies",
    "ceremony",
    "keys",
    "key",
    "approvals",
    "approval",
    "cas",
    "revoked",
    "issuers",
    "issuer",
    "issuer-certs",
    "audit-keys",
    "jobs",
    "job",
    "chunks",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_answer_views_without_key_material() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let cluster = Cluster::start("t101", opts).await;
    step("SMK ceremony, TEST keys by ceremony, one job prepared");
    cluster.keys_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cards.csv");
    write_dda_batch(&input, 6, 0);
    let job = cluster.submit_dda_job(1, &input, "3");
    let ids = cluster.ids();
    cluster.wait_converged(&ids, 0, Duration::from_secs(30)).await;

    let ch = cluster.channel_as(2, "auditor:t101-audrey");
    let mut k = KeysClient::new(ch.clone());
    let mut j = JobsClient::new(ch);

    step("every typed query, as an auditor on a follower");
    let keys = k.list_keys(ListKeysRequest { linearizable: true }).await.unwrap().into_inner().keys;
    assert!(keys.len() >= 5, "the TEST keys: {keys:?}");
    let ceremonies =
        k.list_ceremonies(ListCeremoniesRequest { linearizable: true }).await.unwrap().into_inner().ceremonies;
    let mut answers = vec![
        serde_json::to_string(&keys).unwrap(),
        serde_json::to_string(&ceremonies).unwrap(),
        serde_json::to_string(&k.get_smk(GetSmkRequest { linearizable: true }).await.unwrap().into_inner().smk)
            .unwrap(),
        serde_json::to_string(&k.list_nodes(ListNodesRequest { linearizable: true }).await.unwrap().into_inner().nodes)
            .unwrap(),
        serde_json::to_string(
            &k.list_approvals(ListApprovalsRequest { linearizable: true }).await.unwrap().into_inner().approvals,
        )
        .unwrap(),
        serde_json::to_string(
            &k.list_ca_keys(ListCaKeysRequest { linearizable: true }).await.unwrap().into_inner().ca_keys,
        )
        .unwrap(),
        serde_json::to_string(
            &k.list_revoked_certs(ListRevokedCertsRequest { linearizable: true }).await.unwrap().into_inner().revoked,
        )
        .unwrap(),
        serde_json::to_string(
            &k.list_issuer_keys(ListIssuerKeysRequest { linearizable: true }).await.unwrap().into_inner().issuer_keys,
        )
        .unwrap(),
        serde_json::to_string(
            &k.list_issuer_certs(ListIssuerCertsRequest { linearizable: true })
                .await
                .unwrap()
                .into_inner()
                .issuer_certs,
        )
        .unwrap(),
        serde_json::to_string(
            &k.get_audit_keys(GetAuditKeysRequest { linearizable: true }).await.unwrap().into_inner().audit_keys,
        )
        .unwrap(),
        serde_json::to_string(&j.list_jobs(ListJobsRequest { linearizable: true }).await.unwrap().into_inner().jobs)
            .unwrap(),
        serde_json::to_string(
            &j.get_job(GetJobRequest { linearizable: true, id: job.clone() }).await.unwrap().into_inner().job,
        )
        .unwrap(),
        serde_json::to_string(
            &j.list_chunks(ListChunksRequest { linearizable: true, id: job.clone() })
                .await
                .unwrap()
                .into_inner()
                .chunks,
        )
        .unwrap(),
    ];
    for c in &ceremonies {
        assert!(c.state != "formed" || c.sealed_for.is_empty(), "formed, yet sealed copies are kept: {c:?}");
        answers.push(
            serde_json::to_string(
                &k.get_ceremony(GetCeremonyRequest { linearizable: true, id: c.id.clone() })
                    .await
                    .unwrap()
                    .into_inner()
                    .ceremony,
            )
            .unwrap(),
        );
    }
    for key in &keys {
        let got = k.get_key(GetKeyRequest { linearizable: true, id: key.id.clone() }).await.unwrap().into_inner();
        assert_eq!(got.key.as_ref(), Some(key), "GetKey and ListKeys disagree on {}", key.id);
    }

    step("the superseded Keys.Query: every `what`, the same views");
    let ids_for = |what: &str| -> String {
        match what {
            "ceremony" => ceremonies.first().map(|c| c.id.clone()).unwrap_or_default(),
            "key" => keys[0].id.clone(),
            "job" | "chunks" => job.clone(),
            _ => String::new(),
        }
    };
    for what in QUERIES {
        let req = QueryRequest { what: what.into(), id: ids_for(what), linearizable: true, hops: 0 };
        match k.query(req).await {
            Ok(r) => answers.push(r.into_inner().json),
            // "approval", "issuer": none exists in this cluster.
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{what}: {e:?}"),
        }
    }
    let legacy = k
        .query(QueryRequest { what: "keys".into(), id: String::new(), linearizable: true, hops: 0 })
        .await
        .unwrap()
        .into_inner()
        .json;
    let legacy: Vec<KeyView> = serde_json::from_str(&legacy).unwrap();
    assert_eq!(legacy, keys, "Keys.Query(\"keys\") answers the views ListKeys answers");

    step("no answer holds a key block, a sealed component, a data key or a profile");
    let all = answers.join("\n");
    for field in ["\"wrapped\"", "\"blob\"", "\"sealed\"", "\"data_key\"", "\"profile\""] {
        assert!(!all.contains(field), "an answer has a {field} field");
    }
    let mut headers = 0;
    for key in &keys {
        let h = &key.block_header;
        if h.is_empty() {
            continue;
        }
        headers += 1;
        assert!(h.starts_with('D') && h.len() >= 16, "{}: block header {h:?}", key.id);
        for (at, _) in all.match_indices(h.as_str()) {
            let next = all[at + h.len()..].chars().next();
            assert_eq!(next, Some('"'), "{}: something follows its block header in an answer", key.id);
        }
        for hexed in [hex::encode(h), hex::encode_upper(h)] {
            assert!(!all.contains(&hexed), "{}: its block appears hex-encoded", key.id);
        }
    }
    assert!(headers >= 5, "every TEST key rests as a key block with a header");

    step("the audit tail answers typed records beside its export lines; verify a typed report");
    // The leader seals every 3 s while the chain moves: wait for the first seal.
    let tail = wait_until(Duration::from_secs(30), "a seal in the chain", || {
        let mut k = k.clone();
        async move {
            let t = k
                .audit_tail(AuditTailRequest { from: 1, limit: 10_000, ..Default::default() })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if t.views.iter().any(|v| v.seal.is_some()) { Ok(t) } else { Err("no seal yet".into()) }
        }
    })
    .await;
    assert!(!tail.views.is_empty() && tail.views.len() == tail.records.len(), "{} views", tail.views.len());
    for (v, line) in tail.views.iter().zip(&tail.records) {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!((j["seq"].as_u64(), j["hash"].as_str()), (Some(v.seq), Some(v.hash.as_str())), "{line}");
        assert_eq!((j["actor"].as_str(), j["action"].as_str()), (Some(v.actor.as_str()), Some(v.action.as_str())));
        assert_eq!(j["mac"].is_null(), v.mac.is_none(), "{line}");
    }
    let (macs, seals) =
        (tail.views.iter().filter(|v| v.mac.is_some()).count(), tail.views.iter().filter(|v| v.seal.is_some()).count());
    assert!(
        macs > 0 && seals > 0,
        "{} records, {macs} MACed, {seals} seals; last: {:?}",
        tail.views.len(),
        tail.records.last()
    );
    let verified = k.audit_verify(AuditVerifyRequest::default()).await.unwrap().into_inner();
    let report = verified.report.expect("a typed report");
    assert!(verified.ok && report.broken_seq == 0 && report.broken_reason.is_empty(), "{report:?}");
    assert!(report.head_seq >= tail.head_seq && report.macs > 0 && report.seals > 0, "{report:?}");

    step("a Get of an unknown id is NOT_FOUND, naming it");
    let e = k.get_key(GetKeyRequest { linearizable: true, id: "nope.v9".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope.v9"), "{}", e.message());
    let e = j.get_job(GetJobRequest { linearizable: false, id: "job-nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

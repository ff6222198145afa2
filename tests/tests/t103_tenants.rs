//! Issue 13, tenants: a bureau prepares cards for many issuers, and nothing of one tenant is
//! visible to or usable by another. On a 3-node cluster (hsm-sim) holding the TEST keys and a
//! finished job in the `default` tenant, a second tenant's staff (certificates naming
//! `quill:tenant/bank-b` only) try, with hand-built requests, everything a curious or hostile
//! tenant would:
//! - list and get the other tenant's keys, jobs and chunks (typed queries and the superseded
//!   JSON query): absent, as if they did not exist (`NOT_FOUND` for a `Get…`);
//! - fetch, MAC-check, acknowledge or cancel the other tenant's job; change, export or destroy its
//!   keys: refused, naming nothing of it;
//! - create keys, ceremonies or jobs in the other tenant by naming it in the request: refused
//!   (the certificate decides, not a request field) and audited;
//! - prepare a job whose profile names the other tenant's keys: refused at submission, naming the
//!   key its tenant lacks;
//! - read the audit chain, which names every tenant's keys and jobs: refused to a certificate bound
//!   to named tenants.
//!
//! A certificate naming no tenant acts for `default` only: it does not see bank-b's key.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quill_proto::v1::approval_ask_request::Action;
use quill_proto::v1::jobs_client::JobsClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::{
    AckRequest, ApprovalAskRequest, AuditTailRequest, Caller, CancelRequest, CeremonyStartRequest, FetchRequest,
    GenerateKeyRequest, GetJobRequest, GetKeyRequest, KeyStateRequest, ListChunksRequest, ListJobsRequest,
    ListKeysRequest, MacRequest, QueryRequest, SubmitPart,
};
use quill_tests::{Cluster, ClusterOptions, repo_root, step, write_dda_batch};
use tonic::Code;
use tonic::transport::Channel;

/// The ids of the keys a caller on `ch` sees.
async fn key_ids(ch: Channel) -> Vec<String> {
    let keys = KeysClient::new(ch).list_keys(ListKeysRequest { linearizable: true }).await.unwrap().into_inner().keys;
    keys.into_iter().map(|k| k.id).collect()
}

fn caller(id: &str, serial: u64) -> Option<Caller> {
    Some(Caller { client_id: id.into(), serial })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tenant_sees_and_uses_nothing_of_another() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let cluster = Cluster::start("t103", opts).await;
    step("SMK, TEST keys and one prepared job, all in the default tenant");
    cluster.keys_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cards.csv");
    write_dda_batch(&input, 4, 0);
    let job = cluster.submit_dda_job(1, &input, "2");
    let ids = cluster.ids();
    cluster.wait_converged(&ids, 0, Duration::from_secs(30)).await;
    let theirs = key_ids(cluster.channel_as(1, "auditor:t103-audrey")).await;
    assert!(theirs.iter().any(|k| k == "MAC-OUTPUT-TEST.v1"), "{theirs:?}");

    step("bank-b's admin makes bank-b's own output MAC key; naming another tenant is refused and audited");
    let (b_admin, _) = cluster.as_tenant(2, "admin:bert", &["bank-b"]);
    let mut ka = KeysClient::new(b_admin.clone());
    let generate = |tenant: &str, serial| GenerateKeyRequest {
        caller: caller("t103-bert", serial),
        label: "MAC-OUTPUT-TEST".into(),
        usage: "M7".into(),
        alg: "hmac-sha256".into(),
        exportable: false,
        active: true,
        tenant: tenant.into(),
        ..Default::default()
    };
    let made = ka.generate(generate("", 1)).await.unwrap().into_inner().key.unwrap();
    assert_eq!(made.tenant, "bank-b");
    assert_eq!(made.id, "MAC-OUTPUT-TEST.v2", "a label's versions count across the cluster");
    let e = ka.generate(generate("default", 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("may not act for tenant \"default\""), "{}", e.message());
    let e = ka
        .ceremony_start(CeremonyStartRequest {
            caller: caller("t103-bert", 3),
            id: "b-into-default".into(),
            components: 2,
            label: "X".into(),
            usage: "E0".into(),
            alg: "des2".into(),
            tenant: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    step("what bank-b's operator reads: its own key only; the default tenant's keys and job do not exist");
    let (b_op, b_dir) = cluster.as_tenant(3, "operator:bea", &["bank-b"]);
    let (mut k, mut j) = (KeysClient::new(b_op.clone()), JobsClient::new(b_op.clone()));
    let mine = key_ids(b_op.clone()).await;
    assert_eq!(mine, vec!["MAC-OUTPUT-TEST.v2".to_string()]);
    for id in &theirs {
        let e = k.get_key(GetKeyRequest { id: id.clone(), linearizable: true }).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{id}: {e:?}");
        let q = QueryRequest { what: "key".into(), id: id.clone(), linearizable: true, hops: 0 };
        assert_eq!(k.query(q).await.unwrap_err().code(), Code::NotFound, "{id} through the JSON query");
    }
    let q = QueryRequest { what: "keys".into(), id: String::new(), linearizable: true, hops: 0 };
    let json = k.query(q).await.unwrap().into_inner().json;
    for id in &theirs {
        assert!(!json.contains(&format!("\"{id}\"")), "the JSON query shows {id}: {json}");
    }
    assert!(j.list_jobs(ListJobsRequest { linearizable: true }).await.unwrap().into_inner().jobs.is_empty());
    let e = j.get_job(GetJobRequest { id: job.clone(), linearizable: true }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let chunks = j.list_chunks(ListChunksRequest { id: job.clone(), linearizable: true }).await.unwrap();
    assert!(chunks.into_inner().chunks.is_empty(), "another tenant's chunks were listed");
    for what in ["jobs", "chunks"] {
        let q = QueryRequest { what: what.into(), id: job.clone(), linearizable: true, hops: 0 };
        let json = k.query(q).await.unwrap().into_inner().json;
        assert_eq!(json, "[]", "{what} through the JSON query");
    }

    step("what bank-b's operator does to the default tenant's job and keys: refused, naming nothing");
    let fetch = j.fetch(FetchRequest { job: job.clone(), stream: "cards".into() }).await;
    assert_eq!(fetch.map(|_| ()).unwrap_err().code(), Code::NotFound);
    let e = j.mac(MacRequest { job: job.clone(), sha256: vec![0; 32], mac: vec![0; 32] }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = j.ack(AckRequest { caller: caller("t103-bea", 1), job: job.clone(), delivered: vec![] }).await.unwrap_err();
    assert!(e.message().contains(&format!("no job {job}")), "{e:?}");
    let e = j.cancel(CancelRequest { caller: caller("t103-bea", 2), job: job.clone() }).await.unwrap_err();
    assert!(e.message().contains(&format!("no job {job}")), "{e:?}");
    let e = ka
        .set_key_state(KeyStateRequest {
            caller: caller("t103-bert", 4),
            key: "MAC-OUTPUT-TEST.v1".into(),
            state: "suspended".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("no key MAC-OUTPUT-TEST.v1"), "{e:?}");
    let e = ka
        .approval_ask(ApprovalAskRequest {
            caller: caller("t103-bert", 5),
            id: "b-destroys-theirs".into(),
            action: Some(Action::Destroy("MAC-OUTPUT-TEST.v1".into())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("no key MAC-OUTPUT-TEST.v1"), "{e:?}");

    step("a bank-b job whose profile names the default tenant's keys is refused at submission");
    let profile = repo_root().join("prep/profiles/visa-dda-credit.toml");
    let submit = ["job", "submit", "--profile", profile.to_str().unwrap(), "--input", input.to_str().unwrap()];
    let (code, _, err) = cluster.quill_as(3, &b_dir, &[&submit[..], &["--mac-key", "MAC-OUTPUT-TEST"]].concat());
    assert_eq!(code, 1, "a job with another tenant's keys was accepted: {err}");
    assert!(err.contains("is not in the key inventory"), "the refusal names the key bank-b lacks: {err}");
    assert!(
        JobsClient::new(b_op.clone())
            .list_jobs(ListJobsRequest { linearizable: true })
            .await
            .unwrap()
            .into_inner()
            .jobs
            .is_empty()
    );
    // The same by hand, asking for the default tenant in the request: the certificate decides.
    let toml = std::fs::read_to_string(&profile).unwrap();
    let data = std::fs::read(&input).unwrap();
    let part = SubmitPart {
        caller: caller("t103-bea", 3),
        profile_name: "visa".into(),
        profile_toml: toml,
        file_name: "cards.csv".into(),
        total_bytes: data.len() as u64,
        mac_key: "MAC-OUTPUT-TEST".into(),
        data,
        tenant: "default".into(),
        ..Default::default()
    };
    let e = j.submit(tokio_stream::iter(vec![part])).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    step("bank-b's admin reads no audit chain: it holds every tenant's records");
    let e = ka.audit_tail(AuditTailRequest { limit: 10, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("bureau certificate"), "{}", e.message());
    let e = ka.audit_verify(quill_proto::v1::AuditVerifyRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    step("the refusals are in the audit chain under bank-b's identities");
    let mut aud = KeysClient::new(cluster.channel_as(1, "auditor:t103-audrey"));
    let tail = aud.audit_tail(AuditTailRequest { limit: 200, ..Default::default() }).await.unwrap().into_inner();
    let denied: Vec<_> = tail
        .views
        .iter()
        .filter(|r| r.action == "api.denied" && (r.actor == "admin:bert" || r.actor == "operator:bea"))
        .collect();
    assert!(denied.len() >= 5, "{} audited tenant refusals: {:?}", denied.len(), tail.views.len());

    step("a certificate naming no tenant acts for the default tenant only");
    let (plain, _) = cluster.as_tenant(1, "operator:dora", &[]);
    let ids = key_ids(plain).await;
    assert!(
        ids.contains(&"MAC-OUTPUT-TEST.v1".to_string()) && !ids.contains(&"MAC-OUTPUT-TEST.v2".to_string()),
        "{ids:?}"
    );
}

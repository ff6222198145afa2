//! Issue 12, the role × call matrix: every client role (admin, custodian, operator, auditor, and
//! the partner, CA-officer and branch roles whose endpoints come later) calls every RPC of the
//! client API with a hand-built request through its own certificate; each role is refused
//! (`PERMISSION_DENIED`) every call outside its role, and never refused for its role on a call
//! inside it (those may still fail for other reasons: an unknown id, no SMK yet). Every refusal is
//! in the audit chain with the caller's identity.

use std::time::Duration;

use quill_proto::v1::approval_ask_request::Action;
use quill_proto::v1::cluster_client::ClusterClient;
use quill_proto::v1::issuer_cert_import_request::Source;
use quill_proto::v1::jobs_client::JobsClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::{
    AckRequest, AddLearnerRequest, ApprovalAskRequest, ApprovalDecideRequest, AuditTailRequest, AuditVerifyRequest,
    BenchGetRequest, BenchPutRequest, CaImportRequest, Caller, CancelRequest, CeremonyCancelRequest,
    CeremonyStartRequest, CeremonySubmitRequest, CertTags, ChangeMembershipRequest, ExportTr31Request, FetchRequest,
    GenerateKeyRequest, ImportTr31Request, InitRequest, IssuerCertImportRequest, KeyStateRequest, MacRequest, NodeInfo,
    QueryRequest, RevokeCertRequest, StatusRequest, SubmitPart,
};
use quill_proto::v1::{
    AuditArchiveRequest, AuditPruneRequest, GetApprovalRequest, GetAuditKeysRequest, GetCeremonyRequest,
    GetIssuerKeyRequest, GetJobRequest, GetKeyRequest, GetSmkRequest, ListApprovalsRequest, ListCaKeysRequest,
    ListCeremoniesRequest, ListChunksRequest, ListIssuerCertsRequest, ListIssuerKeysRequest, ListJobsRequest,
    ListKeysRequest, ListNodesRequest, ListRevokedCertsRequest,
};
use quill_proto::v1::{
    CaCertifyAskRequest, CaCertifyRequest, CaKeyCreateRequest, CaKeyRevokeRequest, CaRevokeRequest,
    IssuerRequestRequest, KeyDeliveredRequest, ListCaRevocationsRequest, ListOwnCaKeysRequest, ListTargetsRequest,
    TargetSetRequest,
};
use quill_tests::{Cluster, ClusterOptions, step};
use tonic::Code;
use tonic::transport::Channel;

const ROLES: [&str; 7] = ["admin", "custodian", "operator", "auditor", "partner", "ca-officer", "branch"];
const EVERYONE: &[&str] = &ROLES;
const STAFF: &[&str] = &["admin", "custodian", "operator", "auditor"];
/// The EMV CA's views: the staff and CA officers.
const STAFF_AND_CA: &[&str] = &["admin", "custodian", "operator", "auditor", "ca-officer"];

/// Every call of the client API and the roles it admits.
const CALLS: &[(&str, &[&str])] = &[
    ("Cluster.Status", EVERYONE),
    ("Cluster.BenchPut", &["admin", "operator"]),
    ("Cluster.BenchGet", EVERYONE),
    ("Cluster.Init", &["admin"]),
    ("Cluster.AddLearner", &["admin"]),
    ("Cluster.ChangeMembership", &["admin"]),
    ("Keys.Query", STAFF),
    ("Keys.GetSmk", STAFF),
    ("Keys.ListNodes", STAFF),
    ("Keys.ListCeremonies", STAFF),
    ("Keys.GetCeremony", STAFF),
    ("Keys.ListKeys", STAFF),
    ("Keys.GetKey", STAFF),
    ("Keys.ListApprovals", STAFF),
    ("Keys.GetApproval", STAFF),
    ("Keys.ListCaKeys", STAFF),
    ("Keys.ListRevokedCerts", STAFF),
    ("Keys.ListIssuerKeys", STAFF),
    ("Keys.GetIssuerKey", STAFF),
    ("Keys.ListIssuerCerts", STAFF),
    ("Keys.GetAuditKeys", STAFF),
    ("Jobs.ListJobs", STAFF),
    ("Jobs.GetJob", STAFF),
    ("Jobs.ListChunks", STAFF),
    ("Keys.CeremonyStart", &["admin"]),
    ("Keys.CeremonySubmit", &["custodian"]),
    ("Keys.CeremonyCancel", &["admin"]),
    ("Keys.SetKeyState", &["admin"]),
    ("Keys.ApprovalAsk", &["admin", "operator"]),
    ("Keys.ApprovalDecide", &["custodian"]),
    ("Keys.CaImport", &["admin"]),
    ("Keys.IssuerCertImport", &["admin"]),
    ("Keys.Generate", &["admin"]),
    ("Keys.ImportTr31", &["admin"]),
    ("Keys.ExportTr31", &["admin", "operator"]),
    ("Keys.AuditTail", &["admin", "auditor"]),
    ("Keys.AuditVerify", &["admin", "auditor"]),
    ("Keys.AuditArchive", &["auditor"]),
    ("Keys.AuditPrune", &["auditor"]),
    ("Keys.RevokeCert", &["admin"]),
    ("Keys.CaKeyCreate", &["ca-officer"]),
    ("Keys.ListOwnCaKeys", STAFF_AND_CA),
    ("Keys.IssuerRequest", &["admin"]),
    ("Keys.CaCertifyAsk", &["ca-officer"]),
    ("Keys.CaCertify", &["ca-officer"]),
    ("Keys.CaRevoke", &["ca-officer", "admin"]),
    ("Keys.CaKeyRevoke", &["ca-officer"]),
    ("Keys.TargetSet", &["admin"]),
    ("Keys.KeyDelivered", &["admin"]),
    ("Keys.ListTargets", STAFF),
    ("Keys.ListCaRevocations", STAFF_AND_CA),
    ("Keys.PartnerSet", &["admin"]),
    ("Keys.PartnerShare", &["admin"]),
    ("Keys.ListPartners", STAFF),
    ("Exchange.Import", &["partner"]),
    ("Exchange.Export", &["partner"]),
    ("Exchange.List", &["partner"]),
    ("Exchange.ReceiveKbpk", &["partner"]),
    ("Keys.KdhKey", &["admin"]),
    ("Keys.TargetTransport", &["admin"]),
    ("Keys.TargetConfirm", &["admin"]),
    ("Jobs.Submit", &["admin", "operator"]),
    ("Jobs.Fetch", &["admin", "operator"]),
    ("Jobs.Mac", &["admin", "operator"]),
    ("Jobs.Ack", &["admin", "operator"]),
    ("Jobs.Cancel", &["admin", "operator"]),
];

/// `name` called once through `ch` as `role`; `Ok` or the status.
async fn call(name: &str, role: &str, ch: Channel, serial: u64) -> Result<(), tonic::Status> {
    let caller = Some(Caller { client_id: format!("t93-{role}"), serial });
    let mut c = ClusterClient::new(ch.clone());
    let mut k = KeysClient::new(ch.clone());
    let mut x = quill_proto::v1::exchange_client::ExchangeClient::new(ch.clone());
    let mut j = JobsClient::new(ch);
    let id = format!("t93-{role}-{serial}");
    match name {
        "Cluster.Status" => c.status(StatusRequest {}).await.map(drop),
        "Cluster.BenchPut" => c
            .bench_put(BenchPutRequest {
                client_id: format!("t93-{role}"),
                serial,
                key: "bench/t93".into(),
                value: vec![1],
            })
            .await
            .map(drop),
        "Cluster.BenchGet" => {
            c.bench_get(BenchGetRequest { key: "bench/t93".into(), linearizable: true, hops: 0 }).await.map(drop)
        }
        "Cluster.Init" => {
            let members = vec![NodeInfo { id: 77, raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() }];
            c.init(InitRequest { members }).await.map(drop)
        }
        "Cluster.AddLearner" => {
            let node = NodeInfo { id: 77, raft_addr: "nowhere".into(), api_addr: "nowhere".into() };
            c.add_learner(AddLearnerRequest { node: Some(node) }).await.map(drop)
        }
        "Cluster.ChangeMembership" => c
            .change_membership(ChangeMembershipRequest { voters: vec![1], expected_membership_index: 999_999 })
            .await
            .map(drop),
        "Keys.Query" => k
            .query(QueryRequest { what: "keys".into(), id: String::new(), linearizable: true, hops: 0 })
            .await
            .map(drop),
        "Keys.CeremonyStart" => k
            .ceremony_start(CeremonyStartRequest {
                caller,
                id,
                components: 2,
                smk: false,
                label: "t93".into(),
                usage: "E0".into(),
                alg: "des2".into(),
                exportable: false,
                tenant: String::new(),
                smk_next: false,
            })
            .await
            .map(drop),
        "Keys.CeremonySubmit" => k
            .ceremony_submit(CeremonySubmitRequest { caller, id: "nope".into(), kcv: "ABCDEF".into(), sealed: vec![] })
            .await
            .map(drop),
        "Keys.CeremonyCancel" => k.ceremony_cancel(CeremonyCancelRequest { caller, id: "nope".into() }).await.map(drop),
        "Keys.SetKeyState" => k
            .set_key_state(KeyStateRequest { caller, key: "nope.v1".into(), state: "suspended".into() })
            .await
            .map(drop),
        "Keys.ApprovalAsk" => k
            .approval_ask(ApprovalAskRequest {
                caller,
                id,
                action: Some(Action::Destroy("nope.v1".into())),
                ttl_hours: 1,
                ttl_seconds: 0,
            })
            .await
            .map(drop),
        "Keys.ApprovalDecide" => {
            k.approval_decide(ApprovalDecideRequest { caller, id: "nope".into(), grant: true }).await.map(drop)
        }
        "Keys.CaImport" => k
            .ca_import(CaImportRequest {
                caller,
                rid: "A000000999".into(),
                index: (serial % 200) as u32,
                modulus: vec![0xC5; 128],
                exponent: vec![3],
                checksum: None,
            })
            .await
            .map(drop),
        "Keys.IssuerCertImport" => k
            .issuer_cert_import(IssuerCertImportRequest {
                caller,
                key: String::new(),
                source: Some(Source::Tags(CertTags {
                    rid: "A000000003".into(),
                    ca_index: 0x92,
                    cert: vec![0; 176],
                    remainder: vec![],
                    exponent: vec![3],
                })),
            })
            .await
            .map(drop),
        "Keys.CaKeyCreate" => k
            .ca_key_create(CaKeyCreateRequest {
                caller,
                rid: "A000000999".into(),
                index: 0xE1,
                bits: 1024,
                exponent: 3,
                expiry: "1230".into(),
                issuer_ranges: vec!["4761".into()],
            })
            .await
            .map(drop),
        "Keys.ListOwnCaKeys" => k.list_own_ca_keys(ListOwnCaKeysRequest { linearizable: true }).await.map(drop),
        "Keys.IssuerRequest" => k
            .issuer_request(IssuerRequestRequest {
                caller,
                key: "nope".into(),
                issuer_id: "476173".into(),
                key_index: "000001".into(),
                expiry: "1230".into(),
                format: "visa".into(),
            })
            .await
            .map(drop),
        "Keys.CaCertifyAsk" => k
            .ca_certify_ask(CaCertifyAskRequest {
                caller,
                id,
                rid: "A000000999".into(),
                index: 0xE1,
                format: "visa".into(),
                request: vec![0x22; 40],
                hash_file: None,
                ttl_hours: 0,
            })
            .await
            .map(drop),
        "Keys.CaCertify" => k.ca_certify(CaCertifyRequest { caller, approval: "nope".into() }).await.map(drop),
        "Keys.CaRevoke" => k
            .ca_revoke(CaRevokeRequest {
                caller,
                rid: "A000000999".into(),
                index: 0xE1,
                serial: "000001".into(),
                reason: "t93".into(),
                list: vec![],
            })
            .await
            .map(drop),
        "Keys.CaKeyRevoke" => k
            .ca_key_revoke(CaKeyRevokeRequest { caller, rid: "A000000999".into(), index: 0xE1, reason: "t93".into() })
            .await
            .map(drop),
        "Keys.TargetSet" => k
            .target_set(TargetSetRequest {
                caller,
                name: "t93".into(),
                endpoint: "localhost:1".into(),
                ca_sha256: "0".repeat(64),
                kbpk: "nope.v1".into(),
            })
            .await
            .map(drop),
        "Keys.KeyDelivered" => k
            .key_delivered(KeyDeliveredRequest {
                caller,
                target: "t93".into(),
                approval: "nope".into(),
                kcv: "000000".into(),
                remote_key: "x.v1".into(),
            })
            .await
            .map(drop),
        "Keys.ListTargets" => k.list_targets(ListTargetsRequest { linearizable: true }).await.map(drop),
        "Keys.ListCaRevocations" => {
            k.list_ca_revocations(ListCaRevocationsRequest { linearizable: true }).await.map(drop)
        }
        "Keys.PartnerSet" => k
            .partner_set(quill_proto::v1::PartnerSetRequest {
                caller,
                name: "t93".into(),
                zmk: "nope.v1".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "Keys.PartnerShare" => k
            .partner_share(quill_proto::v1::PartnerShareRequest {
                caller,
                name: "t93".into(),
                key: "nope.v1".into(),
                share: true,
            })
            .await
            .map(drop),
        "Keys.ListPartners" => {
            k.list_partners(quill_proto::v1::ListPartnersRequest { linearizable: true }).await.map(drop)
        }
        "Exchange.Import" => x
            .import(quill_proto::v1::ExchangeImportRequest { caller, label: id, block: "B0096E0TX00E0000".into() })
            .await
            .map(drop),
        "Exchange.Export" => {
            x.export(quill_proto::v1::ExchangeExportRequest { caller, key: "nope.v1".into() }).await.map(drop)
        }
        "Exchange.List" => x.list(quill_proto::v1::ExchangeListRequest { linearizable: true }).await.map(drop),
        "Exchange.ReceiveKbpk" => x
            .receive_kbpk(quill_proto::v1::ExchangeReceiveKbpkRequest {
                caller,
                envelope: b"{}".to_vec(),
                signature: vec![0; 256],
            })
            .await
            .map(drop),
        "Keys.KdhKey" => k.kdh_key(quill_proto::v1::KdhKeyRequest { caller }).await.map(drop),
        "Keys.TargetTransport" => k
            .target_transport(quill_proto::v1::TargetTransportRequest {
                caller,
                target: "t93".into(),
                ca_pem: String::new(),
                krd_pem: String::new(),
            })
            .await
            .map(drop),
        "Keys.TargetConfirm" => k
            .target_confirm(quill_proto::v1::TargetConfirmRequest {
                caller,
                target: "t93".into(),
                kcv: "000000".into(),
                remote_key: "x.v1".into(),
            })
            .await
            .map(drop),
        "Keys.Generate" => k
            .generate(GenerateKeyRequest {
                caller,
                label: id,
                usage: "E0".into(),
                alg: "des2".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "Keys.ImportTr31" => k
            .import_tr31(ImportTr31Request {
                caller,
                label: id,
                kbpk: "nope.v1".into(),
                block: "B0096E0TX00E0000".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "Keys.ExportTr31" => k.export_tr31(ExportTr31Request { caller, approval: "nope".into() }).await.map(drop),
        "Keys.AuditTail" => k.audit_tail(AuditTailRequest { from: 0, limit: 5, ..Default::default() }).await.map(drop),
        "Keys.AuditVerify" => k.audit_verify(AuditVerifyRequest::default()).await.map(drop),
        "Keys.RevokeCert" => k
            .revoke_cert(RevokeCertRequest { caller, serial: format!("7e93{serial:04x}"), reason: "t93".into() })
            .await
            .map(drop),
        "Jobs.Submit" => {
            let part = SubmitPart { caller, file_name: "x.csv".into(), data: b"x".to_vec(), ..Default::default() };
            j.submit(tokio_stream::iter(vec![part])).await.map(drop)
        }
        "Jobs.Fetch" => j.fetch(FetchRequest { job: "nope".into(), stream: "cards".into() }).await.map(drop),
        "Jobs.Mac" => j.mac(MacRequest { job: "nope".into(), sha256: vec![0; 32], mac: vec![0; 32] }).await.map(drop),
        "Jobs.Ack" => j.ack(AckRequest { caller, job: "nope".into(), delivered: vec![] }).await.map(drop),
        "Jobs.Cancel" => j.cancel(CancelRequest { caller, job: "nope".into() }).await.map(drop),
        "Keys.GetSmk" => k.get_smk(GetSmkRequest { linearizable: true }).await.map(drop),
        "Keys.ListNodes" => k.list_nodes(ListNodesRequest { linearizable: true }).await.map(drop),
        "Keys.ListCeremonies" => k.list_ceremonies(ListCeremoniesRequest { linearizable: true }).await.map(drop),
        "Keys.GetCeremony" => k.get_ceremony(GetCeremonyRequest { linearizable: true, id }).await.map(drop),
        "Keys.ListKeys" => k.list_keys(ListKeysRequest { linearizable: true }).await.map(drop),
        "Keys.GetKey" => k.get_key(GetKeyRequest { linearizable: true, id }).await.map(drop),
        "Keys.ListApprovals" => k.list_approvals(ListApprovalsRequest { linearizable: true }).await.map(drop),
        "Keys.GetApproval" => k.get_approval(GetApprovalRequest { linearizable: true, id }).await.map(drop),
        "Keys.ListCaKeys" => k.list_ca_keys(ListCaKeysRequest { linearizable: true }).await.map(drop),
        "Keys.ListRevokedCerts" => k.list_revoked_certs(ListRevokedCertsRequest { linearizable: true }).await.map(drop),
        "Keys.ListIssuerKeys" => k.list_issuer_keys(ListIssuerKeysRequest { linearizable: true }).await.map(drop),
        "Keys.GetIssuerKey" => k.get_issuer_key(GetIssuerKeyRequest { linearizable: true, id }).await.map(drop),
        "Keys.ListIssuerCerts" => k.list_issuer_certs(ListIssuerCertsRequest { linearizable: true }).await.map(drop),
        "Keys.GetAuditKeys" => k.get_audit_keys(GetAuditKeysRequest { linearizable: true }).await.map(drop),
        "Jobs.ListJobs" => j.list_jobs(ListJobsRequest { linearizable: true }).await.map(drop),
        "Jobs.GetJob" => j.get_job(GetJobRequest { linearizable: true, id }).await.map(drop),
        "Jobs.ListChunks" => j.list_chunks(ListChunksRequest { linearizable: true, id }).await.map(drop),
        "Keys.AuditArchive" => k.audit_archive(AuditArchiveRequest { upto: 0 }).await.map(drop),
        "Keys.AuditPrune" => k.audit_prune(AuditPruneRequest { caller, approval: "nope".into() }).await.map(drop),
        other => panic!("no call {other}"),
    }
}

/// The matrix covers every method of the client API as compiled: a method added to `proto/` without
/// a line here (and so without a decision on who may call it) fails this test.
#[test]
fn the_matrix_covers_every_client_method() {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(quill_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut missing = Vec::new();
    for file in &set.file {
        for service in file.service.iter().filter(|s| s.name() != "Raft") {
            for m in &service.method {
                let name = format!("{}.{}", service.name(), m.name());
                if !CALLS.iter().any(|(c, _)| *c == name) {
                    missing.push(name);
                }
            }
        }
    }
    assert!(missing.is_empty(), "client methods without a role decision in CALLS: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_is_refused_every_call_outside_its_role() {
    let cluster = Cluster::start("t93", ClusterOptions { nodes: 3, ..ClusterOptions::default() }).await;
    let ids = cluster.ids();
    let leader = cluster.wait_leader(&ids, Duration::from_secs(10), "a leader").await;
    let follower = ids.iter().copied().find(|i| *i != leader).expect("a follower");
    let mut serial = 0;
    let mut refused = 0;
    let mut admitted = 0;
    let mut refused_of = std::collections::BTreeMap::<&str, usize>::new();
    for node in [leader, follower] {
        for role in ROLES {
            step(&format!("node {node}: every call as {role}"));
            let ch = cluster.channel_as(node, &format!("{role}:t93-{role}"));
            for (name, allowed) in CALLS {
                serial += 1;
                let r = call(name, role, ch.clone(), serial).await;
                if allowed.contains(&role) {
                    if let Err(e) = &r {
                        assert_ne!(
                            e.code(),
                            Code::PermissionDenied,
                            "{role} was refused {name}, a call of its role: {e:?}"
                        );
                    }
                    admitted += 1;
                } else {
                    let e = r.expect_err(&format!("{role} was allowed {name}"));
                    assert_eq!(e.code(), Code::PermissionDenied, "{role} calling {name} on node {node}: {e:?}");
                    refused += 1;
                    *refused_of.entry(role).or_default() += 1;
                }
            }
        }
    }
    step(&format!("{refused} calls refused, {admitted} admitted (not refused for their role)"));
    assert!(refused > 0 && admitted > 0);
    step("every refusal is in the audit chain, with the caller's identity");
    let audit = cluster.quill_ok(leader, &["audit", "export"], &[]);
    for (role, n) in refused_of {
        let me = format!("{role}:t93-{role}");
        let rejected = audit.lines().filter(|l| l.contains(&me) && l.contains("rejected")).count();
        assert!(rejected >= n, "{role}: {n} refusals, {rejected} audited rejections");
    }
}

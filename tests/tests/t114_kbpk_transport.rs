//! Issue 17, the TR-34-style way to establish the KBPK between two sites (no component ceremony,
//! no custodian travels): production's PKI certifies node 1's HSM transport key
//! (`quill pki transport-cert`, the fingerprint read out by the node's operator compared); the key
//! site makes its signing key in its HSM (`quill target kdh`), production pins it
//! (`quill exchange kdh`, fingerprint compared); `quill target transport` generates the KBPK in
//! the key site's HSM, wraps it there under the certified transport key, signs the envelope in
//! the HSM, pushes it to production, which checks and opens it in its HSM and answers the KCV;
//! the key site then distributes a TEST IMK under that KBPK and production holds it with its known
//! KCV. Attacks, each refused with its reason and nothing filed: a transport certificate from
//! another CA, a wrong fingerprint read out, the envelope sent to another node, one changed byte,
//! an envelope signed with an unpinned key, a partner with no pinned key, a replay, a confirmation
//! with a wrong KCV.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use quill_node::keys::apply::issuers::{ISSUER, IssuerKeyRecord};
use quill_node::keys::apply::targets::{KDH, KdhRecord};
use quill_node::store::{Cf, Store, WriteBatch, codec};
use quill_proto::v1::exchange_client::ExchangeClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::{Caller, ExchangeReceiveKbpkRequest, TargetConfirmRequest, TargetTransportRequest};
use quill_tests::{Cluster, ClusterOptions, step};
use serde_json::Value;

const ADMIN: [(&str, &str); 1] = [("QUILL_ACTOR", "admin:ada")];

/// The Visa TEST IMK-AC's components (prep/test-keys/test-keys.toml) and its KCV there.
const IMK_PARTS: [&str; 2] = ["85D6F15783589EF17A0289D352CD73F4", "028386671A1967706BD3ADE01A5B4392"];

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn caller(serial: u64) -> Option<Caller> {
    Some(Caller { client_id: "t114-hand".into(), serial })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kbpk_sent_by_transport_carries_keys_between_sites() {
    let opts = || ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let mut site = Cluster::start("t114-site", opts()).await;
    let prod = Cluster::start("t114-prod", opts()).await;
    site.keys_ready().await;
    prod.keys_ready().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    step("production: node 1's transport key certified by its node CA, the fingerprint compared");
    let nodes = json(&prod.quill_ok(1, &["--json", "cluster", "nodes"], &ADMIN));
    let fp1 = nodes["nodes"].as_array().unwrap().iter().find(|n| n["id"] == 1).unwrap()["transport_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let krd = d.join("krd-node1.pem");
    let pki = prod.pki.dir().to_path_buf();
    let certify = |fp: &str, out: &Path| {
        prod.quill(
            1,
            &["pki", "transport-cert", "--dir", s(&pki), "--node", "1", "--fingerprint", fp, "--out", s(out)],
            &ADMIN,
        )
    };
    let (code, _, err) = certify(&"0".repeat(64), &krd);
    assert_eq!(code, 3, "a fingerprint read out wrong: {err}");
    assert!(err.contains("not certified") && !krd.exists(), "{err}");
    let (code, out, err) = certify(&fp1, &krd);
    assert_eq!(code, 0, "{out}{err}");
    let (_, push_identity) = prod.as_tenant(1, "partner:keysite", &[]);
    let prod_ca = push_identity.join("ca.pem");

    step("key site: its signing key made in the HSM; production pins it, the fingerprint compared");
    let kdh_pem = d.join("keysite-kdh.pem");
    let kdh = json(&site.quill_ok(1, &["--json", "target", "kdh", "--out", s(&kdh_pem)], &ADMIN));
    let kdh_fp = kdh["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(kdh["created"], true);
    let again = json(&site.quill_ok(2, &["--json", "target", "kdh"], &ADMIN));
    assert_eq!((again["fingerprint"].as_str(), again["created"].as_bool()), (Some(kdh_fp.as_str()), Some(false)));
    let pin = |fp: &str| {
        prod.quill(
            1,
            &["exchange", "kdh", "--partner", "keysite", "--public", s(&kdh_pem), "--fingerprint", fp],
            &ADMIN,
        )
    };
    let (code, _, err) = pin(&"AB".repeat(32));
    assert_ne!(code, 0);
    assert!(err.contains("not pinned"), "{err}");
    let (code, out, err) = pin(&kdh_fp);
    assert_eq!(code, 0, "{out}{err}");

    step("key site: production registered without a KBPK; a certificate from another CA is refused");
    let endpoint = prod.node(1).api_addr.to_string();
    site.quill_ok(1, &["target", "add", "--name", "prod", "--target-endpoint", &endpoint, "--ca", s(&prod_ca)], &ADMIN);
    // The key site's own CA certifying production's key: not the target's CA.
    let forged = d.join("krd-forged.pem");
    let listed = KeysClient::new(prod.channel_as(1, "admin:ada"))
        .list_nodes(quill_proto::v1::ListNodesRequest { linearizable: true })
        .await
        .unwrap()
        .into_inner();
    let t1 = listed.nodes.iter().find(|n| n.id == 1).unwrap().transport.clone().unwrap();
    let prod_key = quill_node::keys::model::RsaPublic::new(
        &hex::decode(&t1.modulus).unwrap(),
        &hex::decode(&t1.exponent).unwrap(),
    );
    assert_eq!(prod_key.fingerprint(), fp1);
    let forged_pem = site.pki.certify_transport_key(1, &prod_key.to_spki_der(), Default::default()).unwrap();
    std::fs::write(&forged, forged_pem).unwrap();
    let transport = |krd: &Path| {
        site.quill(
            2,
            &[
                "--json",
                "target",
                "transport",
                "--target",
                "prod",
                "--ca",
                s(&prod_ca),
                "--krd",
                s(krd),
                "--target-identity",
                s(&push_identity),
            ],
            &ADMIN,
        )
    };
    let keys_before = json(&site.quill_ok(1, &["--json", "key", "list"], &ADMIN)).to_string();
    let (code, _, err) = transport(&forged);
    assert_ne!(code, 0);
    assert!(err.contains("not signed by the target's CA"), "{err}");
    let keys_after = json(&site.quill_ok(1, &["--json", "key", "list"], &ADMIN)).to_string();
    assert_eq!(keys_before, keys_after, "nothing generated for a forged certificate");

    step("the KBPK sent by transport: production answers its KCV, both sides hold it");
    let (code, out, err) = transport(&krd);
    assert_eq!(code, 0, "{out}{err}");
    let r = json(&out);
    assert_eq!(
        (r["key"].as_str(), r["remote_key"].as_str(), r["node"].as_u64()),
        (Some("kbpk-prod.v1"), Some("keysite.kbpk.v1"), Some(1))
    );
    let kcv = r["kcv"].as_str().unwrap().to_string();
    let remote = prod.query(1, "key", "keysite.kbpk.v1").await.unwrap();
    assert_eq!(remote["kcv"], kcv.as_str(), "production's HSM opened the same key: {remote}");
    assert_eq!(remote["usage"], "K1");
    assert_eq!(remote["exportable"], false);
    let targets = json(&site.quill_ok(3, &["--json", "target", "list"], &ADMIN));
    let t = &targets["targets"][0];
    assert_eq!((t["kbpk"].as_str(), t["kbpk_kcv"].as_str()), (Some("kbpk-prod.v1"), Some(kcv.as_str())), "{t}");
    assert_eq!(t["transported"]["confirmed"], true, "{t}");
    let partners = json(&prod.quill_ok(2, &["--json", "exchange", "partners"], &ADMIN));
    assert_eq!(partners["partners"][0]["zmk"], "keysite.kbpk.v1", "{partners}");

    step("hand-built envelopes: another node, one changed byte, an unpinned signer, no pinned key, a replay");
    let mut site_keys = KeysClient::new(site.channel_as(1, "admin:ada"));
    let krd_pem = std::fs::read_to_string(&krd).unwrap();
    let ca_pem = std::fs::read_to_string(&prod_ca).unwrap();
    let sent = site_keys
        .target_transport(TargetTransportRequest {
            caller: caller(1),
            target: "prod".into(),
            ca_pem: ca_pem.clone(),
            krd_pem,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.key, "kbpk-prod.v2");
    // Not pushed yet: production holds v1, and confirming v2 is refused with what it holds.
    let (code, out, err) =
        site.quill(1, &["target", "confirm", "--target", "prod", "--target-identity", s(&push_identity)], &ADMIN);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("keysite.kbpk.v1") && err.contains("did not arrive"), "{err}");
    let push = |node: u64, actor: &str| ExchangeClient::new(prod.as_tenant(node, actor, &[]).0);
    let receive = |envelope: Vec<u8>, signature: Vec<u8>, serial: u64| ExchangeReceiveKbpkRequest {
        caller: caller(100 + serial),
        envelope,
        signature,
    };
    let refused = |r: Result<tonic::Response<quill_proto::v1::ExchangeReceiveKbpkResponse>, tonic::Status>| {
        r.expect_err("refused").message().to_string()
    };
    let e = refused(
        push(2, "partner:keysite").receive_kbpk(receive(sent.envelope.clone(), sent.signature.clone(), 1)).await,
    );
    assert!(e.contains("addressed to transport key"), "{e}");
    let mut bent = sent.envelope.clone();
    let at = bent.windows(7).position(|w| w == b"\"kcv\":\"").unwrap() + 7;
    bent[at] = if bent[at] == b'0' { b'1' } else { b'0' };
    let e = refused(push(1, "partner:keysite").receive_kbpk(receive(bent, sent.signature.clone(), 2)).await);
    assert!(e.contains("signature"), "{e}");
    // Signed with a key production never pinned (made here, in software: a TEST key).
    let stranger = quill_crypto::rsa::generate(2048, 65537).unwrap();
    let engine = quill_crypto::rsa::RsaEngine::new(&stranger).unwrap();
    let block = quill_node::keys::transport::pkcs1_sha256_block(&sent.envelope, 256).unwrap();
    let forged_sig = engine.raw_private(&block).unwrap();
    let e = refused(push(1, "partner:keysite").receive_kbpk(receive(sent.envelope.clone(), forged_sig, 3)).await);
    assert!(e.contains("does not verify"), "{e}");
    // A signature far larger than any RSA key's, and one a byte short: refused before any RSA.
    let e = refused(
        push(1, "partner:keysite").receive_kbpk(receive(sent.envelope.clone(), vec![0x5A; 64 << 10], 10)).await,
    );
    assert!(e.contains("the signature: 65536 bytes"), "{e}");
    let short = sent.signature[..sent.signature.len() - 1].to_vec();
    let e = refused(push(1, "partner:keysite").receive_kbpk(receive(sent.envelope.clone(), short, 11)).await);
    assert!(e.contains("signature"), "{e}");
    let e = refused(
        push(1, "partner:stranger").receive_kbpk(receive(sent.envelope.clone(), sent.signature.clone(), 4)).await,
    );
    assert!(e.contains("not a partner") || e.contains("no pinned signing key"), "{e}");
    let ok = push(1, "partner:keysite")
        .receive_kbpk(receive(sent.envelope.clone(), sent.signature.clone(), 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ok.key.as_str(), ok.kcv.as_str()), ("keysite.kbpk.v2", sent.kcv.as_str()));
    let e = refused(
        push(1, "partner:keysite").receive_kbpk(receive(sent.envelope.clone(), sent.signature.clone(), 6)).await,
    );
    assert!(e.contains("replay"), "{e}");
    let confirm = |serial: u64, kcv: &str| TargetConfirmRequest {
        caller: caller(serial),
        target: "prod".into(),
        kcv: kcv.into(),
        remote_key: ok.key.clone(),
    };
    let e = site_keys.target_confirm(confirm(7, "000000")).await.expect_err("a KCV that is not the key's");
    assert!(e.message().contains("not its KBPK"), "{e:?}");
    // The answer to this push was never recorded here (as if the key site's link had dropped):
    // `quill target confirm` asks production which KBPK it holds for this site and records it.
    let r = json(&site.quill_ok(
        1,
        &["--json", "target", "confirm", "--target", "prod", "--target-identity", s(&push_identity)],
        &ADMIN,
    ));
    assert_eq!((r["key"].as_str(), r["remote_key"].as_str()), (Some("kbpk-prod.v2"), Some("keysite.kbpk.v2")), "{r}");
    let again = json(&site.quill_ok(
        2,
        &["--json", "target", "confirm", "--target", "prod", "--target-identity", s(&push_identity)],
        &ADMIN,
    ));
    assert_eq!(again["result"], "confirmed", "run again, it says so: {again}");
    let e = site_keys.target_confirm(confirm(9, &sent.kcv)).await.expect_err("confirmed twice");
    assert!(e.message().contains("already confirmed"), "{e:?}");

    step("a TEST IMK distributed under the transported KBPK: production holds it with its known KCV");
    site.form_working_key("imk", "IMK-AC-TR34-TEST", "E0", "des2", IMK_PARTS, true).await;
    let asked = json(&site.quill_ok(
        1,
        &["--json", "key", "distribute", "--key", "IMK-AC-TR34-TEST.v1", "--target", "prod"],
        &ADMIN,
    ));
    let approval = asked["approval"].as_str().unwrap().to_string();
    for c in ["custodian:alice", "custodian:bob"] {
        site.quill_ok(3, &["approve", "grant", &approval], &[("QUILL_ACTOR", c)]);
    }
    let out = site.quill_ok(
        2,
        &[
            "--json",
            "key",
            "distribute",
            "--approval",
            &approval,
            "--target",
            "prod",
            "--target-identity",
            s(&push_identity),
        ],
        &ADMIN,
    );
    let r = json(&out);
    assert_eq!(r["remote_key"], "keysite.IMK-AC-TR34-TEST.v1", "{r}");
    let want = prod.query(1, "key", "IMK-AC-VISA-TEST.v1").await.unwrap()["kcv"].as_str().unwrap().to_string();
    assert_eq!(r["kcv"], want.as_str(), "the Visa TEST IMK-AC's KCV: {r}");

    step("both audit chains hold the transport, production's also every refusal");
    let auditor = [("QUILL_ACTOR", "auditor:audrey")];
    let site_audit = site.quill_ok(1, &["audit", "export"], &auditor);
    for a in ["target.kdh_key", "target.kbpk_sent", "target.kbpk_confirmed", "key.distribute"] {
        assert!(site_audit.contains(a), "key site's chain lacks {a}");
    }
    let prod_audit = prod.quill_ok(1, &["audit", "export"], &auditor);
    for a in ["partner.kdh", "exchange.kbpk_received", "envelope refused", "replay", "does not verify"] {
        assert!(prod_audit.contains(a), "production's chain lacks {a}");
    }
    assert!(!prod_audit.contains(&hex::encode_upper(&sent.envelope)), "no envelope bytes in the chain");

    step("offline, on every key-site node: a TEST issuer key's pair put in the signing key's record");
    let ids = site.ids();
    for &id in &ids {
        site.terminate(id);
        let store = Store::open(&site.node(id).dir.join("data").join("db")).expect("open the node's store");
        let issuer: IssuerKeyRecord = store
            .pairs(Cf::SmData)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.starts_with(ISSUER.as_bytes()))
            .map(|(_, v)| codec::decode(&v).unwrap())
            .expect("a TEST issuer key");
        let mut rec: KdhRecord = store.get(Cf::SmData, KDH.as_bytes()).unwrap().expect("the signing key's record");
        rec.fingerprint = issuer.fingerprint.clone();
        rec.key = issuer.key.clone();
        let mut batch = WriteBatch::default();
        batch.put_cf(store.cf(Cf::SmData).unwrap(), KDH.as_bytes(), codec::encode(&rec).unwrap());
        store.write(batch, true).unwrap();
    }
    for &id in &ids {
        site.restart(id).await;
    }
    site.wait_leader(&ids, std::time::Duration::from_secs(30), "after the edit").await;
    let mut site_keys = KeysClient::new(site.channel_as(1, "admin:ada"));
    let e = site_keys
        .target_transport(TargetTransportRequest {
            caller: caller(20),
            target: "prod".into(),
            ca_pem,
            krd_pem: std::fs::read_to_string(&krd).unwrap(),
        })
        .await
        .expect_err("an issuer key never signs an envelope");
    assert!(
        e.message().contains("belongs to tenant \"default\"") && e.message().contains("altered"),
        "the refusal names the block's owner: {e:?}"
    );
    let targets = json(&site.quill_ok(1, &["--json", "target", "list"], &ADMIN));
    assert_eq!(targets["targets"][0]["transported"]["key"], "kbpk-prod.v2", "nothing new filed: {targets}");
}

//! Issue 17, the EMV CA: a CA cluster and an issuer's cluster side by side, each with its own
//! HSMs, driven with `quill` as a CA officer, custodians and the issuer's admin would:
//! CA key made in an HSM and exported; the issuer's key generated and its Mastercard-style
//! request self-signed in the issuer's HSM; certified under dual control; the certificate files
//! imported on the issuer's cluster in all three layouts; DDA cards prepared there whose chain
//! recovers from the exported CA public key down (pyemv/psec checker, given that key); then the
//! certificate revoked, the list carried over, and the issuer's cluster refusing both the
//! certificate and a new batch. Tampered requests are refused with the reason, through the CLI
//! and as hand-built gRPC requests.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use quill_node::keys::apply::ca::{OWN_CA, OwnCaKey};
use quill_node::keys::apply::issuers::{ISSUER, IssuerKeyRecord};
use quill_node::store::{Cf, Store, WriteBatch, codec};
use quill_proto::v1::CaCertifyAskRequest;
use quill_proto::v1::keys_client::KeysClient;
use quill_tests::{Cluster, ClusterOptions, repo_root, step, write_dda_batch};
use serde_json::Value;

const OFFICER: [(&str, &str); 1] = [("QUILL_ACTOR", "ca-officer:carla")];
const ADMIN: [(&str, &str); 1] = [("QUILL_ACTOR", "admin:ada")];
const OPERATOR: [(&str, &str); 1] = [("QUILL_ACTOR", "operator:otto")];

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_certify_import_prepare_and_revoke_across_two_clusters() {
    let opts = || ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let ca = Cluster::start("t111-ca", opts()).await;
    let bank = Cluster::start("t111-bank", opts()).await;
    ca.keys_ready().await;
    bank.keys_ready().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    step("CA: two CA keys made in HSMs (one ahead of the other's expiry), the first exported");
    let out = ca.quill_ok(
        1,
        &[
            "--json",
            "ca",
            "key",
            "create",
            "--rid",
            "A000000003",
            "--index",
            "E1",
            "--bits",
            "1408",
            "--expiry",
            "1231",
            "--issuer-range",
            "476100-476199",
            "--issuer-range",
            "4000",
        ],
        &OFFICER,
    );
    assert_eq!(json(&out)["checksum"].as_str().map(str::len), Some(40), "{out}");
    ca.quill_ok(
        2,
        &[
            "ca",
            "key",
            "create",
            "--rid",
            "A000000003",
            "--index",
            "E2",
            "--bits",
            "1984",
            "--exponent",
            "65537",
            "--expiry",
            "1235",
            "--issuer-range",
            "4761",
        ],
        &OFFICER,
    );
    // An admin is not a CA officer.
    let (code, _, err) = ca.quill(
        1,
        &[
            "ca",
            "key",
            "create",
            "--rid",
            "A000000003",
            "--index",
            "E3",
            "--bits",
            "1024",
            "--expiry",
            "1231",
            "--issuer-range",
            "4761",
        ],
        &ADMIN,
    );
    assert_ne!(code, 0);
    assert!(err.contains("ca-officer"), "{err}");
    let listed = json(&ca.quill_ok(3, &["--json", "ca", "key", "list"], &OFFICER));
    let keys = listed["ca_keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "{listed}");
    assert!(keys.iter().all(|k| k["state"] == "active"), "{listed}");
    let ca_dir = d.join("ca");
    ca.quill_ok(1, &["ca", "key", "export", "--rid", "A000000003", "--index", "E1", "-o", s(&ca_dir)], &OFFICER);
    let exported: Value =
        serde_json::from_slice(&std::fs::read(ca_dir.join("A000000003-E1.json")).expect("json")).expect("json");
    for f in ["A000000003-E1.visa", "A000000003-E1.mc.key", "A000000003-E1.mc.hash"] {
        assert!(ca_dir.join(f).is_file(), "{f}");
    }

    step("issuer: a key pair in its HSM, a Mastercard-style request self-signed there");
    bank.quill_ok(1, &["issuer", "generate", "ISS-T111", "--bits", "1152"], &ADMIN);
    let req_dir = d.join("req");
    let request = |issuer_id: &str, expiry: &str, format: &str| {
        bank.quill_ok(
            2,
            &[
                "issuer",
                "request",
                "--key",
                "ISS-T111",
                "--issuer-id",
                issuer_id,
                "--key-index",
                "000001",
                "--expiry",
                expiry,
                "--format",
                format,
                "-o",
                s(&req_dir),
            ],
            &ADMIN,
        );
        req_dir.join(format!("{issuer_id}-000001.{format}"))
    };
    let good = request("476173", "1230", "mastercard");
    let (req, hash) = (good.with_extension("mastercard.req"), good.with_extension("mastercard.hash"));
    assert_eq!(std::fs::read(&hash).expect("hash file").len(), 27);

    step("CA: tampered requests are refused with the reason");
    let ask = |args: &[&str]| {
        ca.quill(1, &[&["ca", "certify"], args, &["--rid", "A000000003", "--index", "E1"]].concat(), &OFFICER)
    };
    let mut bytes = std::fs::read(&req).expect("request");
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    let forged = d.join("forged.req");
    std::fs::write(&forged, &bytes).expect("write");
    let (code, _, err) = ask(&[s(&forged), "--hash-file", s(&hash)]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("self-signature"), "{err}");
    let mut h = std::fs::read(&hash).expect("hash");
    h[20] ^= 0x01;
    let wrong_hash = d.join("wrong.hash");
    std::fs::write(&wrong_hash, &h).expect("write");
    let (code, _, err) = ask(&[s(&req), "--hash-file", s(&wrong_hash)]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("the request was changed"), "{err}");
    let outside = request("512345", "1230", "visa");
    let (code, _, err) = ask(&[s(&outside.with_extension("visa.req"))]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("outside CA key A000000003/E1's ranges"), "{err}");
    let late = request("476173", "0132", "visa");
    let (code, _, err) = ask(&[s(&late.with_extension("visa.req"))]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("never outlives its CA key"), "{err}");
    // The same forgeries as hand-built requests, past the CLI's own checks: the cluster refuses them.
    let mut k = KeysClient::new(ca.channel_as(2, "ca-officer:carla"));
    let hand = |id: &str, request: Vec<u8>, hash_file: Option<Vec<u8>>| CaCertifyAskRequest {
        caller: Some(quill_proto::v1::Caller { client_id: "t111-hand".into(), serial: id.len() as u64 + 100 }),
        id: id.into(),
        rid: "A000000003".into(),
        index: 0xE1,
        format: "mastercard".into(),
        request,
        hash_file,
        ttl_hours: 0,
    };
    let e = k.ca_certify_ask(hand("h1", bytes.clone(), Some(std::fs::read(&hash).unwrap()))).await.expect_err("forged");
    assert!(e.message().contains("self-signature"), "{e:?}");
    let e = k.ca_certify_ask(hand("h22", std::fs::read(&req).unwrap(), Some(h.clone()))).await.expect_err("hash");
    assert!(e.message().contains("hash"), "{e:?}");
    let e = k.ca_certify_ask(hand("h333", std::fs::read(&req).unwrap(), None)).await.expect_err("no hash file");
    assert!(e.message().contains("only with its hash file"), "{e:?}");
    // A request padded far past any EMV request (a valid one with 64 KiB after it).
    let padded = [std::fs::read(&req).unwrap(), vec![0x5A; 64 << 10]].concat();
    let e = k.ca_certify_ask(hand("h4444", padded, Some(std::fs::read(&hash).unwrap()))).await.expect_err("oversized");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let approvals = ca.query(1, "approvals", "").await.expect("approvals");
    let certify = approvals.as_array().unwrap().iter().filter(|a| a["action"]["kind"] == "certify").count();
    assert_eq!(certify, 0, "nothing refused left an approval: {approvals}");

    step("CA: asked, granted by two custodians (not the officer), made: serial 000001 in three layouts");
    let asked = json(&ca.quill_ok(
        1,
        &["--json", "ca", "certify", s(&req), "--hash-file", s(&hash), "--rid", "A000000003", "--index", "E1"],
        &OFFICER,
    ));
    let approval = asked["approval"].as_str().expect("approval").to_string();
    let cert_dir = d.join("certs");
    let (code, _, err) = ca.quill(2, &["ca", "certify", "--approval", &approval, "-o", s(&cert_dir)], &OFFICER);
    assert_ne!(code, 0, "made before the grants");
    assert!(err.contains("two custodians"), "{err}");
    let (code, _, err) = ca.quill(2, &["approve", "grant", &approval], &OFFICER);
    assert_ne!(code, 0, "an officer grants nothing: {err}");
    for c in ["custodian:alice", "custodian:bob"] {
        ca.quill_ok(3, &["approve", "grant", &approval], &[("QUILL_ACTOR", c)]);
    }
    let made =
        json(&ca.quill_ok(2, &["--json", "ca", "certify", "--approval", &approval, "-o", s(&cert_dir)], &OFFICER));
    assert_eq!(made["serial"], "000001", "{made}");
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v = Vec::new();
        for layout in ["visa", "mastercard", "unionpay"] {
            for e in std::fs::read_dir(dir.join(layout)).expect("layout dir") {
                let p = e.expect("entry").path();
                v.push((format!("{layout}/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(&p).unwrap()));
            }
        }
        v
    };
    let first = files(&cert_dir);
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["visa/000001.IE1", "mastercard/476173-000001.cE1", "unionpay/000001.IE1"]);
    // Again for the same approval: the same serial, byte-identical files.
    let again_dir = d.join("again");
    let again =
        json(&ca.quill_ok(1, &["--json", "ca", "certify", "--approval", &approval, "-o", s(&again_dir)], &OFFICER));
    assert_eq!(again["serial"], "000001");
    assert_eq!(files(&again_dir), first);

    step("issuer: the CA key imported (check value), the certificate in each layout verified and bound");
    bank.quill_ok(1, &["ca", "import", "--file", s(&ca_dir.join("A000000003-E1.json"))], &ADMIN);
    for (name, _) in &first {
        let layout = name.split('/').next().unwrap();
        let out = bank.quill_ok(
            2,
            &[
                "issuer",
                "import",
                s(&cert_dir.join(name)),
                "--layout",
                layout,
                "--rid",
                "A000000003",
                "--key",
                "ISS-T111",
            ],
            &ADMIN,
        );
        assert!(out.contains("A000000003/E1") || out.contains("already imported"), "{layout}: {out}");
    }
    let certs = bank.query(1, "issuer-certs", "").await.expect("certs");
    let ours: Vec<&Value> = certs.as_array().unwrap().iter().filter(|c| c["ca_index"] == 0xE1).collect();
    assert_eq!(ours.len(), 1, "{certs}");
    assert_eq!(ours[0]["serial"], "000001");
    assert_eq!(ours[0]["key"], "ISS-T111");

    step("issuer: DDA cards whose chain recovers from the exported CA key down (pyemv/psec checker)");
    let profile_text = std::fs::read_to_string(repo_root().join("prep/profiles/visa-dda-credit.toml")).unwrap();
    assert!(profile_text.contains("issuer_key = \"ISS-VISA-TEST-1408\"") && profile_text.contains("ca_index = \"FE\""));
    let profile_text = profile_text
        .replace("issuer_key = \"ISS-VISA-TEST-1408\"", "issuer_key = \"ISS-T111\"")
        .replace("ca_index = \"FE\"", "ca_index = \"E1\"");
    let profile = d.join("visa-dda-t111.toml");
    std::fs::write(&profile, profile_text).unwrap();
    let input = d.join("cards.csv");
    write_dda_batch(&input, 200, 7_000_000);
    let submit = |input: &Path| {
        bank.quill(
            3,
            &["job", "submit", "--json", "--profile", s(&profile), "--input", s(input), "--mac-key", "MAC-OUTPUT-TEST"],
            &OPERATOR,
        )
    };
    let (code, out, err) = submit(&input);
    assert_eq!(code, 0, "{out}{err}");
    let job = json(&out)["job"].as_str().expect("job").to_string();
    bank.wait_job_done(1, &job).await;
    let out_dir = d.join("out");
    bank.quill_ok(2, &["job", "fetch", &job, "-o", s(&out_dir)], &OPERATOR);
    let check = bank.quill_ok(2, &["prep", "check", s(&out_dir)], &[]);
    assert_eq!(check.matches("MAC verified").count(), 3, "{check}");
    let ca_public = format!("{}:{}", exported["modulus"].as_str().unwrap(), exported["exponent"].as_str().unwrap());
    let issuer = ["--issuer", "ISS-T111:A000000003:E1:1152:3:476173:1230"];
    let passed =
        quill_tests::reference_check(&profile, &input, &out_dir, &[&["--ca-public", &ca_public][..], &issuer].concat())
            .unwrap();
    println!("reference checks: {passed:?}");

    step("CA: the certificate revoked; the list (9-byte entries) carried to the issuer's cluster");
    let (code, _, err) = ca.quill(
        1,
        &["ca", "revoke", "--rid", "A000000003", "--index", "E1", "--serial", "0000AA", "--reason", "x"],
        &OFFICER,
    );
    assert_ne!(code, 0);
    assert!(err.contains("issued no certificate 0000AA"), "{err}");
    ca.quill_ok(
        2,
        &["ca", "revoke", "--rid", "A000000003", "--index", "E1", "--serial", "000001", "--reason", "key compromise"],
        &OFFICER,
    );
    let crl = d.join("ca.crl");
    ca.quill_ok(3, &["ca", "revoked", "--ca", "A000000003/E1", "-o", s(&crl)], &OFFICER);
    assert_eq!(hex::encode_upper(std::fs::read(&crl).unwrap()), "A000000003E1000001");
    let (code, _, err) = ca.quill(1, &["ca", "certify", "--approval", &approval, "-o", s(&d.join("x"))], &OFFICER);
    assert_ne!(code, 0);
    assert!(err.contains("revoked"), "a revoked certificate is not signed again: {err}");
    // The same replay as a hand-built call with a fresh caller: refused by the cluster itself.
    let replay = quill_proto::v1::CaCertifyRequest {
        caller: Some(quill_proto::v1::Caller { client_id: "t111-replay".into(), serial: 1 }),
        approval: approval.clone(),
    };
    let e = k.ca_certify(replay).await.expect_err("replayed after the revocation");
    assert!(e.message().contains("revoked"), "{e:?}");
    bank.quill_ok(1, &["ca", "revoked", "--import", s(&crl)], &ADMIN);

    step("issuer: the revoked certificate is refused at import and by data preparation");
    let (code, _, err) = bank.quill(
        2,
        &[
            "issuer",
            "import",
            s(&cert_dir.join("visa/000001.IE1")),
            "--layout",
            "visa",
            "--rid",
            "A000000003",
            "--key",
            "ISS-T111",
        ],
        &ADMIN,
    );
    assert_ne!(code, 0);
    assert!(err.contains("revoked"), "{err}");
    let input2 = d.join("cards2.csv");
    write_dda_batch(&input2, 20, 7_100_000);
    let (code, out, err) = submit(&input2);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("revoked") && err.contains("ISS-T111"), "{err}");

    step("the audit chain verifies on both clusters and records the CA's acts");
    for (c, id) in [(&ca, 1), (&bank, 1)] {
        c.quill_ok(id, &["audit", "verify"], &[]);
    }
    let tail = ca.quill_ok(1, &["audit", "export"], &[("QUILL_ACTOR", "auditor:audrey")]);
    for action in ["ca.key_create", "approval.request", "ca.certify", "ca.revoke"] {
        assert!(tail.contains(action), "{action} not in the CA's audit chain");
    }
    let tail = bank.quill_ok(1, &["audit", "export"], &[("QUILL_ACTOR", "auditor:audrey")]);
    assert!(tail.contains("issuer.request"), "the issuer key's use is in the issuer's audit chain");

    step("CA, offline on every node: an issuer key's block put into CA key E2's record; E2 signs nothing");
    let mut ca = ca;
    ca.quill_ok(1, &["issuer", "generate", "ISS-DECOY", "--bits", "1024"], &ADMIN);
    let asked = json(&ca.quill_ok(
        2,
        &["--json", "ca", "certify", s(&req), "--hash-file", s(&hash), "--rid", "A000000003", "--index", "E2"],
        &OFFICER,
    ));
    let approval2 = asked["approval"].as_str().expect("approval").to_string();
    for c in ["custodian:alice", "custodian:bob"] {
        ca.quill_ok(3, &["approve", "grant", &approval2], &[("QUILL_ACTOR", c)]);
    }
    let ids = ca.ids();
    ca.wait_converged(&ids, 0, std::time::Duration::from_secs(30)).await;
    for id in ids.clone() {
        ca.terminate(id);
        let store = Store::open(&ca.node(id).dir.join("data").join("db")).expect("the node's store");
        let e2_key = format!("{OWN_CA}A000000003/E2");
        let mut e2: OwnCaKey = store.get(Cf::SmData, e2_key.as_bytes()).unwrap().expect("CA key E2");
        let decoy: IssuerKeyRecord =
            store.get(Cf::SmData, format!("{ISSUER}ISS-DECOY").as_bytes()).unwrap().expect("the decoy issuer key");
        // Public part kept, so nothing but the block's bound owner gives it away.
        e2.key.blob = decoy.key.blob.clone();
        let mut batch = WriteBatch::default();
        batch.put_cf(store.cf(Cf::SmData).unwrap(), e2_key.as_bytes(), codec::encode(&e2).unwrap());
        store.write(batch, true).unwrap();
    }
    for id in ids.clone() {
        ca.restart(id).await;
    }
    ca.wait_leader(&ids, std::time::Duration::from_secs(30), "after the restart").await;
    let (code, _, err) = ca.quill(1, &["ca", "certify", "--approval", &approval2, "-o", s(&d.join("e2"))], &OFFICER);
    assert_ne!(code, 0, "a CA key record holding another owner's block signed");
    assert!(err.contains("CA key A000000003/E2") && err.contains("block"), "{err}");
    assert!(!d.join("e2").exists(), "no certificate file written");

    step("CA: key E1 retired for good; it certifies nothing more");
    let (code, _, err) =
        ca.quill(1, &["ca", "key", "revoke", "--rid", "A000000003", "--index", "E1", "--reason", "t111"], &ADMIN);
    assert_ne!(code, 0, "an admin retires no CA key: {err}");
    ca.quill_ok(
        2,
        &["ca", "key", "revoke", "--rid", "A000000003", "--index", "E1", "--reason", "end of life"],
        &OFFICER,
    );
    let listed = json(&ca.quill_ok(3, &["--json", "ca", "key", "list"], &OFFICER));
    let e1 = listed["ca_keys"].as_array().unwrap().iter().find(|k| k["index"] == "E1").cloned();
    assert_eq!(e1.as_ref().map(|k| k["state"].clone()), Some(Value::from("revoked")), "{listed}");
    let (code, _, err) = ca.quill(
        1,
        &["ca", "certify", s(&req), "--hash-file", s(&hash), "--rid", "A000000003", "--index", "E1"],
        &OFFICER,
    );
    assert_ne!(code, 0);
    assert!(err.contains("revoked"), "{err}");
}

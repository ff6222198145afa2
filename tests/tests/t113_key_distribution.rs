//! Issue 17, key distribution between sites: a "key site" cluster and a "production" cluster,
//! each with its own HSMs and CA. The KBPK between them is formed on both sides by a component
//! ceremony (KCVs compared); production names the key site a partner with that KBPK and issues it
//! a `partner:keysite` certificate. At the key site the three Visa TEST issuer master keys are
//! formed (exportable), registered production as a target, and each key is distributed under
//! dual control: exported as a TR-31 `D` block, pushed to production's `Exchange` service with
//! the identity production issued, its KCV answered and recorded in the key site's inventory and
//! audit chain. Production then prepares DDA cards with the distributed keys only (its own TEST
//! IMKs suspended), every card checked by the pyemv/psec references. Refused on the way: a push
//! with an identity whose CA is not the target's, a KCV that is not the key's, a second record of
//! one delivery, a target whose KBPK was generated rather than formed from components.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use quill_proto::v1::exchange_client::ExchangeClient;
use quill_proto::v1::keys_client::KeysClient;
use quill_proto::v1::{Caller, ExchangeImportRequest, ExportTr31Request, KeyDeliveredRequest};
use quill_tests::{Cluster, ClusterOptions, repo_root, step, write_dda_batch};
use serde_json::Value;

const ADMIN: [(&str, &str); 1] = [("QUILL_ACTOR", "admin:ada")];
const OPERATOR: [(&str, &str); 1] = [("QUILL_ACTOR", "operator:otto")];

/// The KBPK's two components (AES-256), held by the custodians of both sites. TEST.
const KBPK_PARTS: [&str; 2] = [
    "5E1F0A3C2B4D6E7F8091A2B3C4D5E6F70123456789ABCDEF0F1E2D3C4B5A6978",
    "A1B2C3D4E5F60718293A4B5C6D7E8F90FEDCBA98765432100011223344556677",
];

/// The Visa TEST IMKs (prep/test-keys/test-keys.toml): label there, label here, usage, components.
const IMKS: [(&str, &str, &str, [&str; 2]); 3] = [
    (
        "IMK-AC-VISA-TEST",
        "IMK-AC-DIST-TEST",
        "E0",
        ["85D6F15783589EF17A0289D352CD73F4", "028386671A1967706BD3ADE01A5B4392"],
    ),
    (
        "IMK-SMI-VISA-TEST",
        "IMK-SMI-DIST-TEST",
        "E2",
        ["0BDA25380723D3FDABCEF15D32B68FF1", "EF92435BF786D362385815765D10573B"],
    ),
    (
        "IMK-SMC-VISA-TEST",
        "IMK-SMC-DIST-TEST",
        "E1",
        ["7C64B3D92A58D03EA49862ABCE7992CB", "D519C77F1554A4347C6E07B69D025123"],
    ),
];

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_go_from_the_key_site_to_production_which_prepares_cards_with_them() {
    let opts = || ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let site = Cluster::start("t113-site", opts()).await;
    let prod = Cluster::start("t113-prod", opts()).await;
    site.keys_ready().await;
    prod.keys_ready().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    step("the KBPK formed on both sides from the same components: the KCVs agree");
    let site_kcv = site.form_working_key("kbpk-p", "kbpk-prod", "K0", "aes256", KBPK_PARTS, false).await;
    let prod_kcv = prod.form_working_key("kbpk-k", "kbpk-keysite", "K0", "aes256", KBPK_PARTS, false).await;
    assert_eq!(site_kcv, prod_kcv, "both sites hold the same KBPK");
    prod.quill_ok(1, &["exchange", "zmk", "--partner", "keysite", "--key", "kbpk-keysite.v1"], &ADMIN);
    // Production issues the key site its identity there (partner:keysite, production's CA).
    let (_, push_identity) = prod.as_tenant(1, "partner:keysite", &[]);

    step("key site: the three IMKs formed exportable; production registered as a target");
    for (i, (_, label, usage, parts)) in IMKS.iter().enumerate() {
        site.form_working_key(&format!("imk-{i}"), label, usage, "des2", *parts, true).await;
    }
    let endpoint = prod.node(1).api_addr.to_string();
    let ca = push_identity.join("ca.pem");
    // A KBPK generated in one HSM is no KBPK between two sites: the other has no components of it.
    site.quill_ok(1, &["key", "generate", "--label", "k0-gen", "--usage", "K0", "--alg", "aes256"], &ADMIN);
    let add = |kbpk: &str| {
        site.quill(
            2,
            &["target", "add", "--name", "prod", "--target-endpoint", &endpoint, "--ca", s(&ca), "--kbpk", kbpk],
            &ADMIN,
        )
    };
    let (code, _, err) = add("k0-gen.v1");
    assert_ne!(code, 0);
    assert!(err.contains("not formed from components"), "{err}");
    let (code, out, err) = add("kbpk-prod.v1");
    assert_eq!(code, 0, "{out}{err}");

    step("each IMK distributed under dual control; production answers its KCV");
    let mut delivered = Vec::new();
    for (fixture, label, usage, _) in IMKS {
        let key = format!("{label}.v1");
        let asked =
            json(&site.quill_ok(1, &["--json", "key", "distribute", "--key", &key, "--target", "prod"], &ADMIN));
        let approval = asked["approval"].as_str().unwrap().to_string();
        let run = |identity: &Path| {
            site.quill(
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
                    s(identity),
                ],
                &ADMIN,
            )
        };
        let (code, _, err) = run(&push_identity);
        assert_ne!(code, 0, "pushed before two custodians granted it");
        assert!(err.contains("custodians' grants"), "{err}");
        for c in ["custodian:alice", "custodian:bob"] {
            site.quill_ok(3, &["approve", "grant", &approval], &[("QUILL_ACTOR", c)]);
        }
        if delivered.is_empty() {
            // An identity of another cluster (the key site's own CA): nothing is sent.
            let (_, own) = site.as_tenant(1, "partner:keysite", &[]);
            let (code, _, err) = run(&own);
            assert_eq!(code, 3, "{err}");
            assert!(err.contains("is not target prod's"), "{err}");
        }
        let (code, out, err) = if delivered.len() == 2 {
            // The last one's answer is lost (the key site's link dropped after the push): exported
            // and pushed by hand, nothing recorded here; `quill target confirm --approval` asks
            // production which keys it holds from this site and records the delivery.
            let confirm = ["--json", "target", "confirm", "--target", "prod", "--approval", &approval];
            let confirm = [&confirm[..], &["--target-identity", s(&push_identity)]].concat();
            // Nothing sent yet: production holds no key with that KCV from this site.
            let (code, out, err) = site.quill(3, &confirm, &ADMIN);
            assert_eq!(code, 3, "{out}{err}");
            assert!(err.contains("did not arrive"), "{err}");
            let caller = |serial: u64| Some(Caller { client_id: "t113-lost".into(), serial });
            let mut k = KeysClient::new(site.channel_as(1, "admin:ada"));
            let req = ExportTr31Request { caller: caller(1), approval: approval.clone() };
            let block = k.export_tr31(req).await.unwrap().into_inner().block;
            let mut x = ExchangeClient::new(prod.as_tenant(1, "partner:keysite", &[]).0);
            let req = ExchangeImportRequest { caller: caller(2), label: label.to_string(), block };
            x.import(req).await.unwrap();
            site.quill(3, &confirm, &ADMIN)
        } else {
            run(&push_identity)
        };
        assert_eq!(code, 0, "{out}{err}");
        let r = json(&out);
        let remote = format!("keysite.{label}.v1");
        assert_eq!(r["remote_key"], remote.as_str(), "{r}");
        assert_eq!(r["usage"], usage, "usage from the block's header: {r}");
        let want = prod.query(1, "key", &format!("{fixture}.v1")).await.unwrap()["kcv"].as_str().unwrap().to_string();
        assert_eq!(r["kcv"], want.as_str(), "the TEST key's KCV: {r}");
        delivered.push((key, approval, remote));
    }

    let last = &delivered[2].1;
    let again = json(&site.quill_ok(
        1,
        &[
            "--json",
            "target",
            "confirm",
            "--target",
            "prod",
            "--approval",
            last,
            "--target-identity",
            s(&push_identity),
        ],
        &ADMIN,
    ));
    assert!(again["detail"].as_str().unwrap_or_default().contains("recorded already"), "{again}");

    step("the deliveries are in the key site's inventory; a lying or repeated confirmation is refused");
    let listed = json(&site.quill_ok(3, &["--json", "target", "list"], &ADMIN));
    let prod_target = &listed["targets"][0];
    assert_eq!(prod_target["kbpk_kcv"], site_kcv.as_str());
    let deliveries = prod_target["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 3, "{listed}");
    let mut k = KeysClient::new(site.channel_as(1, "admin:ada"));
    let (key, approval, remote) = &delivered[0];
    let confirm = |serial: u64, kcv: &str| KeyDeliveredRequest {
        caller: Some(Caller { client_id: "t113-hand".into(), serial }),
        target: "prod".into(),
        approval: approval.clone(),
        kcv: kcv.into(),
        remote_key: remote.clone(),
    };
    let e = k.key_delivered(confirm(1, "000000")).await.expect_err("a KCV that is not the key's");
    assert!(e.message().contains("answered KCV 000000") && e.message().contains("not recorded"), "{e:?}");
    let kcv = deliveries[0]["kcv"].as_str().unwrap();
    let e = k.key_delivered(confirm(2, kcv)).await.expect_err("recorded twice");
    assert!(e.message().contains("already recorded"), "{e:?}");
    let tail = site.quill_ok(1, &["audit", "export"], &[("QUILL_ACTOR", "auditor:audrey")]);
    assert!(tail.contains("key.distribute") && tail.contains(key.as_str()), "the delivery is in the audit chain");

    step("production prepares DDA cards with the distributed IMKs only (its own suspended)");
    for (fixture, _, _, _) in IMKS {
        prod.quill_ok(1, &["key", "suspend", &format!("{fixture}.v1")], &ADMIN);
    }
    let mut profile_text = std::fs::read_to_string(repo_root().join("prep/profiles/visa-dda-credit.toml")).unwrap();
    let mut keys_text = std::fs::read_to_string(repo_root().join("prep/test-keys/test-keys.toml")).unwrap();
    for (fixture, label, _, _) in IMKS {
        let quoted = format!("\"{fixture}\"");
        assert!(profile_text.contains(&quoted), "the sample profile names {fixture}");
        profile_text = profile_text.replace(&quoted, &format!("\"keysite.{label}\""));
        // The references know the distributed keys under their new names (same values).
        let start = keys_text.find(&format!("label = {quoted}")).unwrap();
        let end = keys_text[start..].find("[[key]]").map_or(keys_text.len(), |e| start + e);
        let block = keys_text[start..end].replace(&quoted, &format!("\"keysite.{label}\""));
        keys_text.push_str(&format!("\n[[key]]\n{block}"));
    }
    let profile = d.join("visa-dda-prod.toml");
    std::fs::write(&profile, profile_text).unwrap();
    let keys_file = d.join("test-keys-prod.toml");
    std::fs::write(&keys_file, keys_text).unwrap();
    let input = d.join("cards.csv");
    write_dda_batch(&input, 200, 7_300_000);
    let out = prod.quill_ok(
        2,
        &["job", "submit", "--json", "--profile", s(&profile), "--input", s(&input), "--mac-key", "MAC-OUTPUT-TEST"],
        &OPERATOR,
    );
    let job = json(&out)["job"].as_str().unwrap().to_string();
    prod.wait_job_done(1, &job).await;
    let out_dir = d.join("out");
    prod.quill_ok(3, &["job", "fetch", &job, "-o", s(&out_dir)], &OPERATOR);
    let check = prod.quill_ok(3, &["prep", "check", s(&out_dir)], &[]);
    assert_eq!(check.matches("MAC verified").count(), 3, "{check}");
    let passed = quill_tests::reference_check(&profile, &input, &out_dir, &["--keys", s(&keys_file)]).unwrap();
    println!("reference checks: {passed:?}");
    let tail = prod.quill_ok(1, &["audit", "export"], &[("QUILL_ACTOR", "auditor:audrey")]);
    assert!(tail.contains("exchange.import"), "production's audit chain has the imports");
}

//! Keys bound to their use (issue 13, PCI PIN 18-3), on a 3-node cluster with hsm-sim and the
//! TEST key set loaded by ceremony: a job whose profile names a key of another TR-31 usage (the
//! IMK-AC as the transport key, the CVK as the PIN-mailer key, the CVK as the output MAC key) is
//! refused at submission, naming the field, the label, the usage the key has and the usage the
//! step needs, and nothing of it is stored; the same profile with the right keys is taken. A key
//! ceremony for a usage that does not fit its algorithm is refused at its start.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use quill_tests::{Cluster, ClusterOptions, repo_root, step, write_dda_batch};

const OPERATOR: [(&str, &str); 1] = [("QUILL_ACTOR", "operator:otto")];
const ADMIN: [(&str, &str); 1] = [("QUILL_ACTOR", "admin:ada")];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_named_outside_its_use_is_refused_at_submission() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let cluster = Cluster::start("t89", opts).await;
    step("SMK ceremony, TEST keys by ceremony (each with its usage), TEST issuers");
    cluster.keys_ready().await;
    let keys = cluster.query(1, "keys", "").await.unwrap();
    let usage_of = |label: &str| {
        keys.as_array().unwrap().iter().find(|k| k["label"] == label).map(|k| k["usage"].clone()).unwrap()
    };
    assert_eq!(usage_of("IMK-AC-VISA-TEST"), "E0");
    assert_eq!(usage_of("TK-DEK-TEST"), "D0");
    assert_eq!(usage_of("CVK-VISA-TEST"), "C0");
    assert_eq!(usage_of("ZPK-MAILER-TEST"), "P0");
    assert_eq!(usage_of("MAC-OUTPUT-TEST"), "M7");

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cards.csv");
    write_dda_batch(&input, 10, 0);
    let text = std::fs::read_to_string(repo_root().join("prep/profiles/visa-dda-credit.toml")).unwrap();
    let with = |name: &str, from: &str, to: &str| {
        assert!(text.contains(from), "the sample profile has no {from}");
        let path = dir.path().join(name);
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        path
    };
    let submit = |node: u64, profile: &Path, mac_key: &str| {
        cluster.quill(
            node,
            &[
                "job",
                "submit",
                "--profile",
                profile.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--mac-key",
                mac_key,
            ],
            &OPERATOR,
        )
    };

    step("the IMK-AC as the transport key of the secret DGIs: refused");
    let imk_tk = with("imk-tk.toml", "transport_key = \"TK-DEK-TEST\"", "transport_key = \"IMK-AC-VISA-TEST\"");
    let (code, _, err) = submit(1, &imk_tk, "MAC-OUTPUT-TEST");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(
            "applications.visa-credit.secret.transport_key: key \"IMK-AC-VISA-TEST\" has usage E0 (EMV IMK, \
             application cryptograms); this step needs D0 (data encryption) or K0 (key encryption)"
        ),
        "{err}"
    );

    step("the CVK as the PIN-mailer key: refused, through another node");
    let cvk_mailer = with("cvk-mailer.toml", "key = \"ZPK-MAILER-TEST\"", "key = \"CVK-VISA-TEST\"");
    let (code, _, err) = submit(2, &cvk_mailer, "MAC-OUTPUT-TEST");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(
            "pin.mailer.key: key \"CVK-VISA-TEST\" has usage C0 (card verification key); this step needs P0 (PIN \
             encryption)"
        ),
        "{err}"
    );

    step("the PIN-mailer key as the CVK, the PVK as the PIN-mailer key: refused");
    let zpk_cvk = with("zpk-cvk.toml", "cvk = \"CVK-VISA-TEST\"", "cvk = \"ZPK-MAILER-TEST\"");
    let (code, _, err) = submit(3, &zpk_cvk, "MAC-OUTPUT-TEST");
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("mag_stripe.cvk: key \"ZPK-MAILER-TEST\" has usage P0"), "{err}");
    assert!(err.contains("this step needs C0 (card verification key)"), "{err}");
    let pvk_mailer = with("pvk-mailer.toml", "key = \"ZPK-MAILER-TEST\"", "key = \"PVK-VISA-TEST\"");
    let (code, _, err) = submit(1, &pvk_mailer, "MAC-OUTPUT-TEST");
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("pin.mailer.key: key \"PVK-VISA-TEST\" has usage V2"), "{err}");

    step("the CVK as the output MAC key: refused");
    let profile = repo_root().join("prep/profiles/visa-dda-credit.toml");
    let (code, _, err) = submit(1, &profile, "CVK-VISA-TEST");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(
            "--mac-key: key \"CVK-VISA-TEST\" has usage C0 (card verification key); this step needs M7 (HMAC)"
        ),
        "{err}"
    );

    step("nothing of the refused submissions is stored");
    let jobs = cluster.query(1, "jobs", "").await.unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 0, "a refused job was stored: {jobs}");

    step("the profile with the keys of the right use is taken");
    let job = cluster.submit_dda_job(2, &input, "10");
    let jobs = cluster.query(1, "jobs", "").await.unwrap();
    assert!(jobs.as_array().unwrap().iter().any(|j| j["id"] == job.as_str()), "{jobs}");

    step("a key ceremony for a usage that does not fit its algorithm is refused at its start");
    let ceremony = |id: &str, usage: &str, alg: &str| {
        cluster.quill(
            1,
            &[
                "ceremony",
                "start",
                "--key",
                "working",
                "--components",
                "2",
                "--id",
                id,
                "--label",
                id,
                "--usage",
                usage,
                "--alg",
                alg,
            ],
            &ADMIN,
        )
    };
    let (code, _, err) = ceremony("imk-hmac", "E0", "hmac-sha256");
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("usage E0 (EMV IMK, application cryptograms) does not allow a HMAC_SHA256 key"), "{err}");
    let (code, _, err) = ceremony("mac-tdes", "M7", "des2");
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("usage M7 (HMAC) does not allow a DES2 key: it is for HMAC-SHA-256 keys"), "{err}");
    for id in ["imk-hmac", "mac-tdes"] {
        assert!(cluster.query(1, "ceremony", id).await.is_err(), "ceremony {id} was stored");
    }
}

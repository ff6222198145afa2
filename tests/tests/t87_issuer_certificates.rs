//! EMV issuer certificates in the cluster inventory (3 nodes, hsm-sim):
//! - the scheme TEST issuer-certificate files import and verify as their README says (Visa file
//!   with detached signature against Visa TEST CA 94, Mastercard file against Mastercard TEST CA
//!   EF); the third, signed by a CA key the cluster does not hold, is refused with the reason and
//!   changes nothing;
//! - an issuer key pair generated in a node's HSM (private key only wrapped under the SMK),
//!   certified by the Quill TEST CA once its public key is imported, is bound to its certificate;
//!   a certificate of another key is refused for it; the state is the same on every node.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use quill_tests::{Cluster, ClusterOptions, step, wait_until};

const PARTS: [&str; 2] = [
    "A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5A5",
    "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF",
];

/// The UnionPay TEST CA public key, index 04, e = 3 (fixtures/scheme-test-certs/README.md).
const UNIONPAY_TEST_CA_04: &str = "BC853E6B5365E89E7EE9317C94B02D0ABB0DBD91C05A224A2554AA29ED9FCB9D86EB9CCBB322A57811F86188AAC7351C72BD9EF196C5A01ACEF7A4EB0D2AD63D9E6AC2E7836547CB1595C68BCBAFD0F6728760F3A7CA7B97301B7E0220184EFC4F653008D93CE098C0D93B45201096D1ADFF4CF1F9FC02AF759DA27CD6DFD6D789B099F16F378B6100334E63F3D35F3251A5EC78693731F5233519CDB380F5AB8C0F02728E91D469ABD0EAE0D93B1CC66CE127B29C7D77441A49D09FCA5D6D9762FC74C31BB506C8BAE3C79AD6C2578775B95956B5370D1D0519E37906B384736233251E8F09AD79DFBE2C6ABFADAC8E4D8624318C27DAF1";

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/scheme-test-certs").join(name);
    assert!(p.is_file(), "fixture {} missing", p.display());
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuer_certificates_verify_before_they_are_accepted() {
    let opts = ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() };
    let cluster = Cluster::start("t87", opts).await;
    let admin = [("QUILL_ACTOR", "admin:ada")];

    step("SMK ceremony");
    wait_until(Duration::from_secs(60), "three enrolled nodes", || async {
        let n = cluster.query(1, "nodes", "").await?.as_array().map(Vec::len).unwrap_or(0);
        if n == 3 { Ok(()) } else { Err(format!("{n} enrolled")) }
    })
    .await;
    cluster.quill_ok(1, &["ceremony", "start", "--key", "smk", "--components", "2", "--id", "smk-1"], &admin);
    cluster.quill_ok(
        1,
        &["ceremony", "submit", "--id", "smk-1", "--component", PARTS[0]],
        &[("QUILL_ACTOR", "custodian:alice")],
    );
    cluster.quill_ok(
        2,
        &["ceremony", "submit", "--id", "smk-1", "--component", PARTS[1]],
        &[("QUILL_ACTOR", "custodian:bob")],
    );
    wait_until(Duration::from_secs(60), "the SMK formed", || async {
        let c = cluster.query(1, "ceremony", "smk-1").await?;
        if c["state"] == "formed" { Ok(()) } else { Err(format!("{}", c["state"])) }
    })
    .await;

    step("the scheme TEST files import and verify");
    let out = cluster.quill_ok(2, &["issuer", "import", &fixture("960097.I94"), "--layout", "visa"], &admin);
    assert!(out.contains("A000000003/94") && out.contains("issuer 42158493") && out.contains("expiry 1232"), "{out}");
    let out =
        cluster.quill_ok(3, &["issuer", "import", &fixture("522230-000001.cEF"), "--layout", "mastercard"], &admin);
    assert!(out.contains("A000000004/EF") && out.contains("issuer 522230"), "{out}");
    let certs = cluster.query(1, "issuer-certs", "").await.unwrap();
    let ids: Vec<&str> = certs.as_array().unwrap().iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["A000000003-94-42158493-03FE66", "A000000004-EF-522230-073459"], "{certs}");

    step("a file signed by a CA key the cluster does not hold is refused");
    let (code, _, err) = cluster.quill(1, &["issuer", "import", &fixture("016510.I04"), "--layout", "visa"], &admin);
    assert_ne!(code, 0);
    assert!(err.contains("refused") && err.contains("A000000003") && err.contains("04"), "{err}");
    // A wrong layout is refused too, and an operator may not import.
    let (code, _, err) =
        cluster.quill(1, &["issuer", "import", &fixture("960097.I94"), "--layout", "mastercard"], &admin);
    assert_ne!(code, 0, "{err}");
    let (code, _, err) = cluster.quill(
        1,
        &["issuer", "import", &fixture("960097.I94"), "--layout", "visa"],
        &[("QUILL_ACTOR", "operator:otto")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("needs role admin"), "{err}");
    assert_eq!(cluster.query(1, "issuer-certs", "").await.unwrap().as_array().unwrap().len(), 2);

    step("UnionPay: refused until its TEST CA key is imported, then verified with UnionPay's padding");
    let up = fixture("016510.I04");
    let (code, _, err) = cluster.quill(1, &["issuer", "import", &up, "--layout", "unionpay"], &admin);
    assert_ne!(code, 0);
    assert!(err.contains("A000000333/04"), "{err}");
    cluster.quill_ok(
        2,
        &["ca", "import", "--rid", "A000000333", "--index", "04", "--modulus", UNIONPAY_TEST_CA_04, "--exponent", "03"],
        &admin,
    );
    let out = cluster.quill_ok(3, &["issuer", "import", &up, "--layout", "unionpay"], &admin);
    assert!(out.contains("A000000333/04") && out.contains("issuer 62441902") && out.contains("expiry 1231"), "{out}");
    let certs = cluster.query(1, "issuer-certs", "").await.unwrap();
    let up_cert = certs.as_array().unwrap().iter().find(|c| c["rid"] == "A000000333").expect("the UnionPay cert");
    assert_eq!(up_cert["layout"], "unionpay");
    assert_eq!(up_cert["serial"], "016510");
    assert_eq!(certs.as_array().unwrap().len(), 3);

    step("an issuer key pair generated in an HSM, certified by the TEST CA");
    let out = cluster.quill_ok(2, &["issuer", "generate", "ISS-T87-TEST", "--bits", "1152"], &admin);
    assert!(out.contains("RSA-1152"), "{out}");
    let (code, _, err) = cluster.quill(
        1,
        &["issuer", "certify-test", "ISS-T87-TEST", "--issuer-id", "476173", "--rid", "A000000003"],
        &admin,
    );
    assert_ne!(code, 0, "the TEST CA is not held yet");
    assert!(err.contains("A000000003") && err.contains("FE"), "{err}");
    cluster.quill_ok(1, &["ca", "import", "--rid", "A000000003", "--test-ca"], &admin);
    let out = cluster.quill_ok(
        3,
        &["issuer", "certify-test", "ISS-T87-TEST", "--issuer-id", "476173", "--rid", "A000000003"],
        &admin,
    );
    assert!(out.contains("bound to issuer key ISS-T87-TEST"), "{out}");
    // The Visa scheme file certifies another key: refused for this one.
    let (code, _, err) = cluster.quill(
        1,
        &["issuer", "import", &fixture("960097.I94"), "--layout", "visa", "--key", "ISS-T87-TEST"],
        &admin,
    );
    assert_ne!(code, 0);
    assert!(err.contains("certifies public key"), "{err}");

    step("the same inventory on every node, no private key in it");
    let mut seen = Vec::new();
    for id in 1..=3 {
        let issuers = cluster.query(id, "issuers", "").await.unwrap();
        let k = &issuers.as_array().unwrap()[0];
        assert_eq!(k["label"], "ISS-T87-TEST");
        assert_eq!(k["certificate"], "A000000003-FE-476173-000001");
        assert_eq!(k["bits"], 1152);
        seen.push((issuers.to_string(), cluster.query(id, "issuer-certs", "").await.unwrap().to_string()));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]));
    let list = cluster.quill_ok(1, &["issuer", "list"], &[]);
    assert!(list.contains("ISS-T87-TEST") && list.contains("A000000003-FE-476173-000001"), "{list}");
    let cas = cluster.quill_ok(1, &["ca", "list"], &[]);
    assert!(cas.contains("built in (scheme TEST)") && cas.contains("imported by admin:ada"), "{cas}");
}

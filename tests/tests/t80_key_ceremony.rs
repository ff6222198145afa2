//! Key management on a 5-node cluster, each node with its own hsm-sim token, through the `quill`
//! CLI as custodians, admins and auditors use it:
//!
//! - every node enrols its HSM transport key;
//! - an SMK ceremony with 3 components submitted by 3 custodians through 3 different nodes, one
//!   node SIGKILLed after the second component: the SMK forms on the others, with the KCV an
//!   independent computation (OpenSSL CMAC over the XOR of the TEST components) gives, and on the
//!   killed node once it is back;
//! - bad input is refused with a clear reason and changes nothing: a mistyped component (KCV
//!   check), a component of the wrong length, the same custodian twice, a usage that does not fit
//!   the algorithm, an unknown key, a malformed TR-31 block;
//! - a working key from components (a TEST ZMK with a known value), a generated key, a TR-31 import
//!   under the ZMK (KCV checked), and an export under dual control that unwraps to the same key;
//! - no clear key or component, in bytes or in hex, in any file under any node's directory;
//! - the audit chain verifies on every node and every node has the same head; a byte flipped in
//!   one stored record makes `quill audit verify` fail naming that record.

use std::path::Path;
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::sign::Signer;
use openssl::symm::Cipher;
use quill_crypto::tr31;
use quill_tests::{Cluster, ClusterOptions, openssl_tdes_kcv, secrets, step, wait_until, xor_hex};
use serde_json::Value;

/// TEST components of the SMK (AES-256): never used outside tests.
const SMK_PARTS: [&str; 3] = [
    "1111111111111111111111111111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222222222222222222222222201",
    "0F1E2D3C4B5A69788796A5B4C3D2E1F00112233445566778899AABBCCDDEEFF0",
];
/// TEST components of a double-length ZMK; their XOR is [`ZMK`].
const ZMK_PARTS: [&str; 2] =
    ["0123456789ABCDEFFEDCBA98765432100123456789ABCDEF", "A1B2C3D4E5F60718293A4B5C6D7E8F90F1E2D3C4B5A69788"];
/// A TEST IMK to import as TR-31 under the ZMK.
const IMK: &str = "9E15204313F7318ACB79B90BD986AD29";

/// AES-CMAC KCV (5 bytes) with OpenSSL.
fn cmac_kcv(key: &[u8]) -> String {
    let cipher = match key.len() {
        16 => Cipher::aes_128_cbc(),
        24 => Cipher::aes_192_cbc(),
        _ => Cipher::aes_256_cbc(),
    };
    let pkey = PKey::cmac(&cipher, key).expect("cmac key");
    let mut signer = Signer::new_without_digest(&pkey).expect("signer");
    signer.update(&[0u8; 16]).expect("update");
    hex::encode_upper(&signer.sign_to_vec().expect("sign")[..5])
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    secrets::files_holding(dir, &[needle.to_vec()], false)
}

fn as_(who: &str) -> [(&'static str, String); 1] {
    [("QUILL_ACTOR", who.to_string())]
}

fn env<'a>(e: &'a [(&'static str, String); 1]) -> Vec<(&'static str, &'a str)> {
    e.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ceremony_inventory_tr31_and_audit_on_five_nodes() {
    let mut cluster = Cluster::start("t80", ClusterOptions { hsm: true, ..ClusterOptions::default() }).await;
    let ids = cluster.ids();
    let admin = as_("admin:ada");

    step("every node enrols its HSM transport key");
    wait_until(Duration::from_secs(60), "five enrolled nodes", || async {
        let nodes = cluster.query(1, "nodes", "").await?;
        let n = nodes.as_array().map(Vec::len).unwrap_or(0);
        if n == 5 { Ok(()) } else { Err(format!("{n} enrolled")) }
    })
    .await;

    step("admin starts an SMK ceremony with 3 components");
    cluster.quill_ok(1, &["ceremony", "start", "--key", "smk", "--components", "3", "--id", "smk-1"], &env(&admin));

    step("a mistyped component is caught by its KCV before anything is sent");
    let (code, _, err) = cluster.quill(
        2,
        &["ceremony", "submit", "--id", "smk-1", "--component", SMK_PARTS[0], "--expect-kcv", "000000"],
        &env(&as_("custodian:alice")),
    );
    assert_ne!(code, 0);
    assert!(err.contains("KCV") && err.contains("nothing was submitted"), "{err}");
    let (code, _, err) = cluster.quill(
        2,
        &["ceremony", "submit", "--id", "smk-1", "--component", "00112233"],
        &env(&as_("custodian:alice")),
    );
    assert_ne!(code, 0);
    assert!(err.contains("4 bytes") && err.contains("32 bytes"), "wrong-length component: {err}");

    let want = [cmac_kcv(&hex::decode(SMK_PARTS[0]).expect("hex")), cmac_kcv(&hex::decode(SMK_PARTS[1]).expect("hex"))];
    step("custodian alice submits through node 2, bob through node 3");
    let out = cluster.quill_ok(
        2,
        &["ceremony", "submit", "--id", "smk-1", "--component", SMK_PARTS[0], "--expect-kcv", &want[0]],
        &env(&as_("custodian:alice")),
    );
    assert!(out.contains(&want[0]), "alice's KCV shown: {out}");
    let out = cluster.quill_ok(
        3,
        &["ceremony", "submit", "--id", "smk-1", "--component", SMK_PARTS[1]],
        &env(&as_("custodian:bob")),
    );
    assert!(out.contains(&want[1]), "bob's KCV shown: {out}");

    step("alice cannot submit a second component");
    let (code, _, err) = cluster.quill(
        4,
        &["ceremony", "submit", "--id", "smk-1", "--component", SMK_PARTS[2]],
        &env(&as_("custodian:alice")),
    );
    assert_ne!(code, 0);
    assert!(err.contains("already submitted"), "{err}");

    step("SIGKILL node 5 mid-ceremony; carol submits the last component through node 4");
    cluster.kill(5);
    cluster.quill_ok(
        4,
        &["ceremony", "submit", "--id", "smk-1", "--component", SMK_PARTS[2]],
        &env(&as_("custodian:carol")),
    );
    let smk_kcv = cmac_kcv(&xor_hex(&SMK_PARTS));
    step(&format!("the SMK forms on nodes 1-4 with the independent KCV {smk_kcv}"));
    let alive = [1u64, 2, 3, 4];
    wait_until(Duration::from_secs(60), "the SMK formed on the four live nodes", || async {
        let c = cluster.query(1, "ceremony", "smk-1").await?;
        let formed: Vec<u64> =
            c["formed_on"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
        if alive.iter().all(|n| formed.contains(n)) { Ok(()) } else { Err(format!("formed on {formed:?}")) }
    })
    .await;
    let smk = cluster.query(1, "smk", "").await.expect("smk");
    assert_eq!(smk["kcv"].as_str(), Some(smk_kcv.as_str()), "SMK KCV vs OpenSSL over the XOR of the components");

    step("node 5 comes back and forms the SMK from the replicated sealed components");
    cluster.restart(5).await;
    wait_until(Duration::from_secs(60), "the SMK formed on node 5 too", || async {
        let c = cluster.query(1, "ceremony", "smk-1").await?;
        if c["state"] == "formed" && c["sealed_for"].as_array().map(|o| o.is_empty()).unwrap_or(false) {
            Ok(())
        } else {
            Err(format!("state {} formed on {}", c["state"], c["formed_on"]))
        }
    })
    .await;

    step("the leader generates the audit keys");
    wait_until(Duration::from_secs(30), "audit keys", || async {
        let k = cluster.query(1, "audit-keys", "").await?;
        if k.is_null() { Err("none yet".into()) } else { Ok(()) }
    })
    .await;

    step("a TEST ZMK from two components in a working-key ceremony");
    let (code, _, err) = cluster.quill(
        1,
        &["ceremony", "start", "--key", "working", "--components", "2", "--id", "zmk-1", "--label", "zmk-test"],
        &env(&admin),
    );
    assert_ne!(code, 0, "a working-key ceremony without usage/alg must be refused: {err}");
    cluster.quill_ok(
        1,
        &[
            "ceremony",
            "start",
            "--key",
            "working",
            "--components",
            "2",
            "--id",
            "zmk-1",
            "--label",
            "zmk-test",
            "--usage",
            "K0",
            "--alg",
            "des3",
            "--exportable",
        ],
        &env(&admin),
    );
    cluster.quill_ok(
        2,
        &["ceremony", "submit", "--id", "zmk-1", "--component", ZMK_PARTS[0]],
        &env(&as_("custodian:alice")),
    );
    cluster.quill_ok(
        3,
        &["ceremony", "submit", "--id", "zmk-1", "--component", ZMK_PARTS[1]],
        &env(&as_("custodian:bob")),
    );
    let zmk = xor_hex(&ZMK_PARTS);
    let zmk_kcv = openssl_tdes_kcv(&zmk);
    let zmk_rec = wait_until(Duration::from_secs(30), "the ZMK in the inventory", || async {
        cluster.query(1, "key", "zmk-test.v1").await
    })
    .await;
    assert_eq!(zmk_rec["kcv"].as_str(), Some(zmk_kcv.as_str()), "ZMK KCV vs OpenSSL");
    assert_eq!(zmk_rec["state"], "active");

    step("bad input: wrong usage for the algorithm, unknown key, malformed TR-31 — inventory unchanged");
    let before = cluster.query(1, "keys", "").await.expect("keys");
    let (code, _, err) =
        cluster.quill(1, &["key", "generate", "--label", "x", "--usage", "C0", "--alg", "aes128"], &env(&admin));
    assert_ne!(code, 0);
    assert!(err.contains("usage C0"), "{err}");
    let (code, _, err) = cluster.quill(1, &["key", "show", "nope.v1"], &env(&admin));
    assert_ne!(code, 0);
    assert!(err.contains("nope.v1"), "{err}");
    let (code, _, err) = cluster.quill(
        1,
        &["key", "import", "--label", "bad", "--kbpk", "zmk-test.v1", "--tr31", "B0096E0TX00E0000DEADBEEF"],
        &env(&admin),
    );
    assert_ne!(code, 0);
    assert!(err.contains("TR-31"), "{err}");
    assert_eq!(cluster.query(1, "keys", "").await.expect("keys"), before, "the inventory changed");

    step("generate an IMK in an HSM");
    let out = cluster.quill_ok(
        2,
        &["--json", "key", "generate", "--label", "imk-ac", "--usage", "E0", "--alg", "des2"],
        &env(&admin),
    );
    let generated: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(generated["id"], "imk-ac.v1");

    step("import a TEST IMK as a TR-31 block under the ZMK; its KCV matches");
    let imk = hex::decode(IMK).expect("hex");
    let header = tr31::Tr31Header::new(
        tr31::Version::B,
        tr31::KeyUsage::from_code(*b"E0").expect("E0"),
        tr31::Algorithm::Tdes,
        tr31::ModeOfUse::DeriveKeys,
        tr31::Exportability::Trusted,
    );
    let block =
        tr31::wrap(tr31::Kbpk::Tdes(&zmk), &header, &imk, None, &mut |b: &mut [u8]| b.fill(0x5A)).expect("wrap");
    let out = cluster.quill_ok(
        3,
        &["--json", "key", "import", "--label", "imk-test", "--kbpk", "zmk-test.v1", "--tr31", &block, "--exportable"],
        &env(&admin),
    );
    let imported: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(imported["kcv"].as_str(), Some(openssl_tdes_kcv(&imk).as_str()), "imported IMK KCV");
    assert_eq!(imported["usage"], "E0");

    step("export it under dual control: the requester cannot approve, two custodians can");
    let out = cluster.quill_ok(
        1,
        &["--json", "key", "export", "--key", "imk-test.v1", "--kbpk", "zmk-test.v1"],
        &env(&admin),
    );
    let approval =
        serde_json::from_str::<Value>(out.trim()).expect("json")["approval"].as_str().expect("id").to_string();
    let (code, _, err) = cluster.quill(1, &["key", "export", "--approval", &approval], &env(&admin));
    assert_ne!(code, 0, "export before approval must be refused: {err}");
    cluster.quill_ok(2, &["approve", "grant", &approval], &env(&as_("custodian:alice")));
    let (code, _, err) = cluster.quill(3, &["approve", "grant", &approval], &env(&as_("custodian:alice")));
    assert_ne!(code, 0);
    assert!(err.contains("already granted"), "{err}");
    cluster.quill_ok(3, &["approve", "grant", &approval], &env(&as_("custodian:bob")));
    let out = cluster.quill_ok(4, &["--json", "key", "export", "--approval", &approval], &env(&admin));
    let exported: Value = serde_json::from_str(out.trim()).expect("json");
    let (h, key) = tr31::unwrap(tr31::Kbpk::Tdes(&zmk), exported["block"].as_str().expect("block").as_bytes())
        .expect("the exported block unwraps under the ZMK");
    assert_eq!(&key[..], &imk[..], "exported key");
    assert_eq!(&h.key_usage.code(), b"E0");

    step("no clear key or component in any file under any node's directory");
    let mut secrets: Vec<Vec<u8>> = vec![imk.clone(), zmk.clone(), xor_hex(&SMK_PARTS)];
    secrets.extend(SMK_PARTS.iter().map(|p| hex::decode(p).expect("hex")));
    secrets.extend(ZMK_PARTS.iter().map(|p| hex::decode(p).expect("hex")));
    for s in secrets.clone() {
        secrets.push(hex::encode_upper(&s).into_bytes());
        secrets.push(hex::encode(&s).into_bytes());
    }
    for id in &ids {
        let dir = &cluster.node(*id).dir;
        // The scan does find what is there: labels and KCVs are stored in the clear.
        assert!(!files_containing(dir, b"zmk-test").is_empty(), "node {id}: the scan finds nothing at all");
        for s in &secrets {
            let hits = files_containing(dir, s);
            assert!(hits.is_empty(), "a clear TEST secret ({} bytes) is in {hits:?}", s.len());
        }
    }

    step("the audit chain verifies on every node, with the same head everywhere");
    tokio::time::sleep(Duration::from_secs(4)).await; // let a seal land
    cluster.wait_converged(&ids, 0, Duration::from_secs(30)).await;
    let mut heads = Vec::new();
    for id in &ids {
        let out = cluster.quill_ok(*id, &["--json", "audit", "verify"], &[]);
        let report: Value = serde_json::from_str(out.trim()).expect("json");
        assert!(report["broken"].is_null(), "node {id}: {report}");
        assert!(
            report["macs"].as_u64().unwrap_or(0) > 0 && report["seals"].as_u64().unwrap_or(0) > 0,
            "node {id}: {report}"
        );
        heads.push(report["head_hash"].as_str().unwrap_or("").to_string());
    }
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "heads differ: {heads:?}");
    let tail = cluster.quill_ok(1, &["audit", "export"], &[]);
    assert!(tail.lines().count() >= 20, "audit export: {tail}");
    assert!(tail.contains("ceremony.submit") && tail.contains("key.export") && tail.contains("approval.grant"));

    step("flip one byte of audit record 5 on node 3: verify fails and names record 5");
    cluster.tamper_audit_record(3, 5).await;
    let (code, out, err) = cluster.quill(3, &["audit", "verify"], &[]);
    assert_eq!(code, 3, "verify on the tampered node: {out} {err}");
    assert!(out.contains("record 5"), "verify names the record: {out}");
    let (code, _, _) = cluster.quill(1, &["audit", "verify"], &[]);
    assert_eq!(code, 0, "untampered node 1 still verifies");

    step("stopped, every live value of every node's database (decompressed): no clear secret");
    let needles: Vec<Vec<u8>> = secrets.clone();
    for id in ids.clone() {
        cluster.terminate(id);
        let db = cluster.node(id).dir.join("data").join("db");
        // The search does find what is there.
        assert!(!secrets::values_holding(&db, &[b"zmk-test".to_vec()]).is_empty(), "node {id}: nothing found at all");
        let hits = secrets::values_holding(&db, &needles);
        assert!(hits.is_empty(), "node {id}: a clear TEST secret is in the database at {hits:?}");
    }
}

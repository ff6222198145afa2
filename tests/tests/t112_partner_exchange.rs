//! Issue 17, partner key exchange (GIE-CB style): a bureau cluster and two partner systems, each
//! with a zone master key formed by a component ceremony whose components the partner holds too
//! (one TDES: TR-31 version B blocks; one AES-256: version D). The partners are played here by
//! hand-built gRPC clients with their own `partner:<name>` certificates that make and read their
//! blocks with psec (tests/python/partner_tr31.py), a TR-31 implementation we did not write.
//! Checked: a partner sees and exports only what was shared with it or it imported; the bureau's
//! blocks unwrap with psec to keys with the inventory's KCVs; an imported key takes usage and
//! exportability from the block's header (an `N` block is refused with the reason); a tampered block, a
//! ZMK not formed from components and a non-exportable key to share are refused; every exchange
//! is in the audit chain with the KCV.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use quill_proto::v1::exchange_client::ExchangeClient;
use quill_proto::v1::{Caller, ExchangeExportRequest, ExchangeImportRequest, ExchangeListRequest};
use quill_tests::{Cluster, ClusterOptions, openssl_tdes_kcv, repo_root, step, xor_hex};
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

const ADMIN: [(&str, &str); 1] = [("QUILL_ACTOR", "admin:ada")];

/// TDES components of GIE's ZMK, and AES-256 ones of CB's (TEST).
const GIE_PARTS: [&str; 2] =
    ["0123456789ABCDEFFEDCBA987654321089ABCDEF01234567", "1F2E3D4C5B6A79880F1E2D3C4B5A69782A3B4C5D6E7F8091"];
const CB_PARTS: [&str; 2] = [
    "00112233445566778899AABBCCDDEEFF0123456789ABCDEFFEDCBA9876543210",
    "0F1E2D3C4B5A69788796A5B4C3D2E1F00112233445566778899AABBCCDDEEF01",
];

/// What the fuzzed messages' changed bytes are drawn from: header letters, digits, a NUL, a
/// non-ASCII byte, a space.
const ALPHABET: &[u8] = b"0123456789ABCDEFKNSTXBDE\x00\xff ";

fn python() -> Option<std::path::PathBuf> {
    let p = quill_tests::reference_python();
    if p.is_none() {
        assert!(std::env::var_os("QUILL_REQUIRE_SOFTHSM").is_none(), "no venv with psec");
    }
    p
}

/// psec, as the partner: `wrap` or `unwrap`.
fn psec(args: &[&str]) -> String {
    let py = python().expect("psec");
    let out = Command::new(py).arg(repo_root().join("tests/python/partner_tr31.py")).args(args).output().unwrap();
    assert!(out.status.success(), "psec {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One partner system: its certificate's channel to a node, and its ZMK.
struct Partner {
    name: &'static str,
    zmk: Vec<u8>,
    x: ExchangeClient<Channel>,
    serial: u64,
}

impl Partner {
    fn caller(&mut self) -> Option<Caller> {
        self.serial += 1;
        Some(Caller { client_id: format!("partner-{}", self.name), serial: self.serial })
    }
    async fn list(&mut self) -> Vec<Value> {
        let r = self.x.list(ExchangeListRequest { linearizable: true }).await.unwrap().into_inner();
        r.keys.iter().map(|k| serde_json::to_value(k).unwrap()).collect()
    }
    async fn export(&mut self, key: &str) -> Result<(String, String), tonic::Status> {
        let caller = self.caller();
        let r = self.x.export(ExchangeExportRequest { caller, key: key.into() }).await?.into_inner();
        Ok((r.block, r.kcv))
    }
    async fn import(&mut self, label: &str, block: &str) -> Result<Value, tonic::Status> {
        let caller = self.caller();
        let r = self.x.import(ExchangeImportRequest { caller, label: label.into(), block: block.into() }).await?;
        Ok(serde_json::to_value(r.into_inner().key.unwrap()).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partners_exchange_keys_under_their_zone_master_keys() {
    let cluster = Cluster::start("t112", ClusterOptions { nodes: 3, hsm: true, ..ClusterOptions::default() }).await;
    cluster.keys_ready().await;

    step("each partner's ZMK from two components (the partner holds them too), named by the admin");
    let gie_kcv = cluster.form_working_key("zg", "zmk-gie", "K0", "des3", GIE_PARTS, false).await;
    cluster.form_working_key("zc", "zmk-cb", "K0", "aes256", CB_PARTS, false).await;
    assert_eq!(gie_kcv, openssl_tdes_kcv(&xor_hex(&GIE_PARTS)), "GIE's ZMK is the components' XOR");
    // A K0 key generated in an HSM is no zone master key: the partner has no components of it.
    cluster.quill_ok(1, &["key", "generate", "--label", "k0-gen", "--usage", "K0", "--alg", "des3"], &ADMIN);
    let (code, _, err) = cluster.quill(1, &["exchange", "zmk", "--partner", "gie", "--key", "k0-gen.v1"], &ADMIN);
    assert_ne!(code, 0);
    assert!(err.contains("not formed from components"), "{err}");
    cluster.quill_ok(2, &["exchange", "zmk", "--partner", "gie", "--key", "zmk-gie.v1"], &ADMIN);
    cluster.quill_ok(3, &["exchange", "zmk", "--partner", "cb", "--key", "zmk-cb.v1"], &ADMIN);

    step("the admin shares an exportable key with GIE; a non-exportable one is refused");
    cluster.quill_ok(
        1,
        &["key", "generate", "--label", "zpk-out", "--usage", "P0", "--alg", "des2", "--exportable"],
        &ADMIN,
    );
    cluster.quill_ok(1, &["key", "generate", "--label", "cvk-kept", "--usage", "C0", "--alg", "des2"], &ADMIN);
    cluster.quill_ok(2, &["exchange", "share", "--partner", "gie", "--key", "zpk-out.v1"], &ADMIN);
    let (code, _, err) = cluster.quill(2, &["exchange", "share", "--partner", "gie", "--key", "cvk-kept.v1"], &ADMIN);
    assert_ne!(code, 0);
    assert!(err.contains("not exportable"), "{err}");
    let zpk_kcv = cluster.query(1, "key", "zpk-out.v1").await.unwrap()["kcv"].as_str().unwrap().to_string();

    let mut gie = Partner {
        name: "gie",
        zmk: xor_hex(&GIE_PARTS),
        x: ExchangeClient::new(cluster.channel_as(1, "partner:gie")),
        serial: 0,
    };
    let mut cb = Partner {
        name: "cb",
        zmk: xor_hex(&CB_PARTS),
        x: ExchangeClient::new(cluster.channel_as(2, "partner:cb")),
        serial: 0,
    };
    let mut stranger = ExchangeClient::new(cluster.channel_as(3, "partner:eve"));

    step("GIE sees the shared key, exports it (version B), psec unwraps it to the inventory's KCV");
    let seen = gie.list().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0]["id"].as_str(), seen[0]["kcv"].as_str()), (Some("zpk-out.v1"), Some(zpk_kcv.as_str())));
    let (block, kcv) = gie.export("zpk-out.v1").await.unwrap();
    assert_eq!(kcv, zpk_kcv);
    assert!(block.starts_with('B'), "{block}");
    let opened: Value = serde_json::from_str(&psec(&["unwrap", &hex::encode(&gie.zmk), &block])).unwrap();
    assert_eq!(opened["usage"], "P0");
    assert_eq!(
        openssl_tdes_kcv(&hex::decode(opened["key"].as_str().unwrap()).unwrap()),
        zpk_kcv,
        "psec's key has the KCV"
    );
    // Not shared: not seen, not exported; CB sees nothing of GIE's; a stranger is no partner.
    let e = gie.export("cvk-kept.v1").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(cb.list().await.is_empty());
    assert_eq!(cb.export("zpk-out.v1").await.unwrap_err().code(), Code::NotFound);
    let e = stranger.list(ExchangeListRequest { linearizable: true }).await.unwrap_err();
    assert!(e.message().contains("not a partner"), "{e:?}");
    // Staff are not partners.
    let mut admin_x = ExchangeClient::new(cluster.channel_as(1, "admin:ada"));
    let e = admin_x.list(ExchangeListRequest { linearizable: true }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    step("GIE imports with psec-made blocks: usage and exportability from the header");
    let key_e = "89ABCDEF0123456776543210FEDCBA98";
    let key_n = "1032547698BADCFE0123456789ABCDEF";
    let block_e = psec(&["wrap", &hex::encode(&gie.zmk), "B0000E0TX00E0000", key_e]);
    let block_n = psec(&["wrap", &hex::encode(&gie.zmk), "B0000E0TX00N0000", key_n]);
    let imported_e = gie.import("imk-e", &block_e).await.unwrap();
    assert_eq!(imported_e["id"], "gie.imk-e.v1");
    assert_eq!(imported_e["usage"], "E0");
    assert_eq!(imported_e["exportable"], true);
    assert_eq!(imported_e["kcv"].as_str().unwrap(), openssl_tdes_kcv(&hex::decode(key_e).unwrap()));
    // An `N` block is refused with the reason: every key rests wrapped under the SMK, which a
    // module refuses for a key it holds non-exportable (the partner is asked for E or S).
    let e = gie.import("imk-n", &block_n).await.unwrap_err();
    assert!(e.message().contains("cannot be imported") && e.message().contains("E or S"), "{e:?}");
    let (again, _) = gie.export("gie.imk-e.v1").await.unwrap();
    let reopened: Value = serde_json::from_str(&psec(&["unwrap", &hex::encode(&gie.zmk), &again])).unwrap();
    assert_eq!(reopened["key"], key_e, "the E key round-trips to the same value");
    assert_eq!(reopened["exportability"], "E");

    step("a tampered block and a block under another ZMK are refused; nothing is filed");
    let before = cluster.query(1, "keys", "").await.unwrap().as_array().unwrap().len();
    let mut bad = block_e.clone().into_bytes();
    let n = bad.len();
    bad[n - 1] = if bad[n - 1] == b'0' { b'1' } else { b'0' };
    assert!(gie.import("tampered", std::str::from_utf8(&bad).unwrap()).await.is_err());
    let foreign = psec(&["wrap", &hex::encode(&cb.zmk[..24]), "B0000E0TX00E0000", key_e]);
    assert!(gie.import("foreign", &foreign).await.is_err());
    assert_eq!(cluster.query(1, "keys", "").await.unwrap().as_array().unwrap().len(), before);

    step("CB's AES zone master key: version D blocks both ways");
    cluster.quill_ok(2, &["exchange", "share", "--partner", "cb", "--key", "zpk-out.v1"], &ADMIN);
    let (block_d, kcv) = cb.export("zpk-out.v1").await.unwrap();
    assert!(block_d.starts_with('D'), "{block_d}");
    let opened: Value = serde_json::from_str(&psec(&["unwrap", &hex::encode(&cb.zmk), &block_d])).unwrap();
    assert_eq!(openssl_tdes_kcv(&hex::decode(opened["key"].as_str().unwrap()).unwrap()), kcv);
    let d_in = psec(&["wrap", &hex::encode(&cb.zmk), "D0000K0TB00E0000", "0123456789ABCDEFFEDCBA9876543210"]);
    let k = cb.import("kek", &d_in).await.unwrap();
    assert_eq!((k["id"].as_str(), k["usage"].as_str()), (Some("cb.kek.v1"), Some("K0")));

    step("every exchange in the audit chain with the KCV; the chain verifies");
    let audit = cluster.quill_ok(1, &["audit", "export"], &[("QUILL_ACTOR", "auditor:audrey")]);
    let exports: Vec<&str> = audit.lines().filter(|l| l.contains("exchange.export")).collect();
    assert!(exports.len() >= 3, "{exports:?}");
    assert!(exports.iter().any(|l| l.contains(&zpk_kcv)), "the KCV is in the audit record");
    assert_eq!(audit.lines().filter(|l| l.contains("exchange.import")).count(), 2, "two imports");
    let refused: Vec<&str> =
        audit.lines().filter(|l| l.contains("Exchange.Import") && l.contains("block refused")).collect();
    assert_eq!(refused.len(), 3, "the N, the tampered and the foreign block, each with why: {refused:?}");
    cluster.quill_ok(2, &["audit", "verify"], &[]);
    let partners = cluster.quill_ok(1, &["--json", "exchange", "partners"], &ADMIN);
    assert!(partners.contains("gie.imk-e.v1") && partners.contains("zmk-cb.v1"), "{partners}");

    step("fuzz: 300 mutated, truncated, padded and malformed partner messages; each refused, none filed");
    let before = cluster.query(1, "keys", "").await.unwrap().as_array().unwrap().len();
    let mut rng = quill_tests::Rng::new(112);
    let good = block_e.as_bytes();
    let mut refused_codes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..300u32 {
        let mut b = good.to_vec();
        let (label, block) = match i % 6 {
            // One to four bytes changed anywhere (header fields, length, key, MAC).
            0 | 1 => {
                for _ in 0..=(rng.next_u64() % 4) {
                    let at = (rng.next_u64() as usize) % b.len();
                    b[at] = ALPHABET[(rng.next_u64() as usize) % ALPHABET.len()];
                }
                ("fuzz".to_string(), String::from_utf8_lossy(&b).into_owned())
            }
            // Cut short.
            2 => ("fuzz".to_string(), String::from_utf8_lossy(&b[..(rng.next_u64() as usize) % b.len()]).into_owned()),
            // Far too long: a valid block with 64 KiB after it.
            3 => ("fuzz".to_string(), format!("{block_e}{}", "0".repeat(64 << 10))),
            // Out-of-range header fields: another version, usage, algorithm, exportability.
            4 => {
                let at = 5 + (rng.next_u64() as usize) % 11;
                b[at] = b"Z9*~"[(rng.next_u64() % 4) as usize];
                ("fuzz".to_string(), String::from_utf8_lossy(&b).into_owned())
            }
            // The good block under a label no inventory takes.
            _ => (
                ["", "a b", "x".repeat(65).as_str(), "tab\tlabel", "ü"][(i / 6 % 5) as usize].to_string(),
                block_e.clone(),
            ),
        };
        if label == "fuzz" && block == block_e {
            continue;
        }
        let e = gie.import(&label, &block).await.expect_err("a malformed message was taken");
        assert!(
            matches!(e.code(), Code::InvalidArgument | Code::FailedPrecondition),
            "message {i}: {:?} {}",
            e.code(),
            e.message()
        );
        *refused_codes.entry(format!("{:?}", e.code())).or_default() += 1;
    }
    eprintln!("refused: {refused_codes:?}");
    assert_eq!(cluster.query(1, "keys", "").await.unwrap().as_array().unwrap().len(), before, "nothing filed");
    assert_eq!(gie.list().await.len(), 2, "GIE sees what it saw before");
    cluster.quill_ok(3, &["audit", "verify"], &[]);
}

//! TR-31 import and export, run against hsm-sim (inside the HSM, `CKM_QUILL_TR31_UNWRAP`/`WRAP`)
//! and SoftHSM 2 (the host path), checked with `quill_crypto::tr31` in software and with
//! KBPKs and keys of known clear TEST values put on the token as key components.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::reference::{self as r, h};
use common::{Backend, Recorder, token_host_path};
use quill_hsm::tr31::{self, Algorithm, BlockId, Exportability, Kbpk, KeyUsage, ModeOfUse, Tr31Header, Version};
use quill_hsm::{
    Hsm, HsmError, HsmPool, Kcv, KeyAlg, LogHostPath, Pkcs11Hsm, PoolConfig, SealedComponent, SlotConfig, Support,
    WrappedKey,
};
use std::sync::Arc;

per_backend!(
    import_blocks_made_in_software,
    export_opens_in_software_with_the_known_kbpk,
    tampered_or_malformed_blocks_are_named,
    kbpk_must_fit_the_version,
    host_path_policy_for_tr31,
);

/// TEST KBPKs: TDES (TR-31:2018 A.7.2.2's KBPK) and AES-256 (A.7.4's).
const KBPK_TDES: &str = "DD7515F2BFC17F85CE48F3CA25CB21F6";
const KBPK_AES: &str = "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6";

/// TEST keys of every algorithm (TDES with odd parity, as the component XOR sets it).
fn known_key(alg: KeyAlg) -> Vec<u8> {
    match alg {
        KeyAlg::Des2 => r::odd_parity(h("3F419E1CB7079442AA37474C2EFBF8B8")),
        KeyAlg::Des3 => r::odd_parity(h("E8BC63E5479455E26577F715D587FE68 0123456789ABCDEF")),
        KeyAlg::Aes128 => h("000102030405060708090A0B0C0D0E0F"),
        KeyAlg::Aes192 => h("8C326037F8910BBFDBC267E5101DFBF9480433028D5E67B3"),
        KeyAlg::Aes256 => h("8C326037F8910BBFDBC267E5101DFBF9480433028D5E67B34673440F8ACEC972"),
        KeyAlg::HmacSha256 => (0x40..0x60).collect(),
    }
}

struct Fixture {
    config: SlotConfig,
    hsm: Pkcs11Hsm,
    rec: Arc<Recorder>,
    tdes_kbpk: WrappedKey,
    aes_kbpk: WrappedKey,
}

impl Fixture {
    /// A token with an SMK and the two KBPKs, all formed from components sealed with
    /// `RsaPublic::seal` and announced with `Kcv::of_clear` (host path allowed: SoftHSM needs it to
    /// XOR components).
    fn new(b: Backend, name: &str) -> Option<Fixture> {
        let config = token_host_path(b, name)?;
        let rec = Recorder::new();
        let hsm = Pkcs11Hsm::open(&config, rec.clone()).unwrap();
        let smk = r::random(32);
        let (comps, kcvs) = components(&hsm, KeyAlg::Aes256, &smk);
        assert_eq!(hsm.form_smk(&comps, &kcvs).unwrap(), Kcv::of_clear(KeyAlg::Aes256, &smk).unwrap());
        let tdes_kbpk = import(&hsm, KeyAlg::Des2, "K1", &h(KBPK_TDES));
        let aes_kbpk = import(&hsm, KeyAlg::Aes256, "K1", &h(KBPK_AES));
        Some(Fixture { config, hsm, rec, tdes_kbpk, aes_kbpk })
    }

    /// Host-path uses of `operation` so far.
    fn uses(&self, operation: &str) -> usize {
        self.rec.uses().iter().filter(|u| u.operation == operation).count()
    }
}

fn components(hsm: &dyn Hsm, alg: KeyAlg, key: &[u8]) -> (Vec<SealedComponent>, Vec<Kcv>) {
    let pk = hsm.transport_public_key().unwrap();
    let parts = r::split(alg, key, 2);
    (
        parts.iter().map(|p| SealedComponent(pk.seal(p).unwrap())).collect(),
        parts.iter().map(|p| Kcv::of_clear(alg, p).unwrap()).collect(),
    )
}

/// A key of known clear value on the token, through components.
fn import(hsm: &dyn Hsm, alg: KeyAlg, usage: &str, key: &[u8]) -> WrappedKey {
    let (comps, kcvs) = components(hsm, alg, key);
    let w = hsm.import_components(alg, common::key_use(usage), &comps, &kcvs).unwrap();
    assert_eq!(w.kcv, Kcv::of_clear(alg, key).unwrap(), "{alg}");
    w
}

fn kbpk_of<'a>(version: Version, value: &'a [u8]) -> Kbpk<'a> {
    match version {
        Version::B => Kbpk::Tdes(value),
        Version::D => Kbpk::Aes(value),
    }
}

/// A key block made in software.
fn wrap_sw(template: &str, kbpk: &[u8], key: &[u8], masked: Option<usize>) -> String {
    let header = Tr31Header::parse_template(template.as_bytes()).unwrap();
    tr31::wrap(kbpk_of(header.version, kbpk), &header, key, masked, &mut |b: &mut [u8]| {
        b.copy_from_slice(&r::random(b.len()))
    })
    .unwrap()
}

/// `e` is a TR-31 error (not a device error) whose message contains `needle`, and no key bytes.
fn assert_tr31(e: &HsmError, needle: &str) {
    assert!(matches!(e, HsmError::Tr31 { .. }), "expected HsmError::Tr31, got {e:?}");
    assert!(!e.is_device_error(), "{e}");
    let text = e.to_string();
    assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    for secret in [KBPK_TDES, KBPK_AES] {
        assert!(!text.contains(secret), "{text}");
    }
    for alg in KeyAlg::ALL {
        assert!(!text.contains(&hex::encode_upper(known_key(alg))), "{text}");
    }
}

fn import_blocks_made_in_software(b: Backend) {
    let Some(f) = Fixture::new(b, "tr31-import") else { return };
    let (tdes, aes) = (h(KBPK_TDES), h(KBPK_AES));
    let cases = [
        (&f.tdes_kbpk, &tdes, "B0000P0TE00E0000", KeyAlg::Des2, None),
        (&f.tdes_kbpk, &tdes, "B0000V2TC00S0000", KeyAlg::Des2, Some(24)),
        (&f.aes_kbpk, &aes, "D0000E0TX00E0000", KeyAlg::Des3, Some(24)),
        (&f.aes_kbpk, &aes, "D0000D0AB00E0100KS1800604B120F9292800000", KeyAlg::Aes128, Some(32)),
        (&f.aes_kbpk, &aes, "D0000K0AD00E0000", KeyAlg::Aes192, None),
        (&f.aes_kbpk, &aes, "D0000D0AN00S0000", KeyAlg::Aes256, None),
        (&f.aes_kbpk, &aes, "D0000M7HC00E0100HM0621", KeyAlg::HmacSha256, None),
    ];
    let before = f.uses("tr31_import");
    for (i, (kbpk, kbpk_value, template, alg, masked)) in cases.into_iter().enumerate() {
        let key = known_key(alg);
        let block = wrap_sw(template, kbpk_value, &key, masked);
        let (header, w) = f.hsm.tr31_import(kbpk, &block).unwrap_or_else(|e| panic!("{template}: {e}"));
        assert_eq!(header, tr31::parse_key_block_header(block.as_bytes()).unwrap(), "{template}");
        assert_eq!(w.alg, alg, "{template}");
        assert_eq!(w.kcv, Kcv::of_clear(alg, &key).unwrap(), "{template}: KCV of the imported key");
        assert_eq!(f.hsm.kcv(&w).unwrap(), w.kcv, "{template}: the blob unwraps under the SMK");
        assert_eq!(w.smk_kcv, f.hsm.smk_kcv().unwrap().unwrap());
        // The block at rest keeps the imported usage, mode of use and exportability.
        let at_rest = w.header().unwrap();
        assert_eq!(
            (at_rest.key_usage, at_rest.mode_of_use, at_rest.exportability),
            (header.key_usage, header.mode_of_use, header.exportability),
            "{template}"
        );
        // The key inside is the known one, where its use allows a check.
        match (alg, header.key_usage) {
            (KeyAlg::HmacSha256, _) => {
                assert_eq!(f.hsm.hmac_sha256(&w, b"d").unwrap().to_vec(), r::hmac_sha256(&key, b"d"))
            }
            (a, KeyUsage::DataEncryption) if a.is_aes() => {
                let sealed = f.hsm.seal(&w, b"a", b"p").unwrap();
                assert_eq!(r::gcm_open(&key, b"a", &sealed).unwrap(), b"p", "{template}");
            }
            _ => {}
        }
        // On SoftHSM: the import itself, the KBPK's block at rest opened and the new block made.
        let expected_uses = if b == Backend::SoftHsm { 3 * (i + 1) } else { 0 };
        assert_eq!(f.uses("tr31_import") - before, expected_uses, "{:?}", f.rec.uses());
    }
    if b == Backend::SoftHsm {
        let u =
            f.rec.uses().into_iter().rfind(|u| u.operation == "tr31_import" && u.what.starts_with("TR-31")).unwrap();
        assert_eq!(u.alg, KeyAlg::Aes256.to_string(), "the KBPK's algorithm");
        assert!(
            u.what.contains("TR-31 import in host memory (version D key block, usage M7, algorithm H)"),
            "{}",
            u.what
        );
        assert!(u.what.contains("CKM_QUILL_TR31_UNWRAP"), "{}", u.what);
    }
}

fn export_opens_in_software_with_the_known_kbpk(b: Backend) {
    let Some(f) = Fixture::new(b, "tr31-export") else { return };
    // Each key is held for the use it is exported with (a key never changes use on the way out).
    let keys: Vec<(KeyAlg, &str, WrappedKey)> = [
        (KeyAlg::Des2, "E0"),
        (KeyAlg::Des2, "P0"),
        (KeyAlg::Des3, "K0"),
        (KeyAlg::Des2, "C0"),
        (KeyAlg::Aes128, "M6"),
        (KeyAlg::Aes192, "B0"),
        (KeyAlg::Aes256, "D0"),
        (KeyAlg::HmacSha256, "M7"),
        (KeyAlg::Aes128, "D0"),
    ]
    .into_iter()
    .map(|(a, u)| (a, u, import(&f.hsm, a, u, &known_key(a))))
    .collect();
    let key_for = |alg: KeyAlg, usage: &str| &keys.iter().find(|(a, u, _)| *a == alg && *u == usage).unwrap().2;
    let key = |alg: KeyAlg| &keys.iter().find(|(a, _, _)| *a == alg).unwrap().2;
    let before = f.uses("tr31_export");
    let cases = [
        (&f.tdes_kbpk, KeyAlg::Des2, "E0", true, KeyUsage::EmvAc, ModeOfUse::DeriveKeys),
        (&f.tdes_kbpk, KeyAlg::Des2, "P0", false, KeyUsage::PinEncryption, ModeOfUse::EncryptDecrypt),
        (&f.aes_kbpk, KeyAlg::Des3, "K0", true, KeyUsage::KeyEncryption, ModeOfUse::EncryptDecrypt),
        (&f.aes_kbpk, KeyAlg::Des2, "C0", true, KeyUsage::Cvk, ModeOfUse::GenerateVerify),
        (&f.aes_kbpk, KeyAlg::Aes128, "M6", true, KeyUsage::Cmac, ModeOfUse::GenerateVerify),
        (&f.aes_kbpk, KeyAlg::Aes192, "B0", true, KeyUsage::Bdk, ModeOfUse::DeriveKeys),
        (&f.aes_kbpk, KeyAlg::Aes256, "D0", false, KeyUsage::DataEncryption, ModeOfUse::EncryptDecrypt),
        (&f.aes_kbpk, KeyAlg::HmacSha256, "M7", true, KeyUsage::Hmac, ModeOfUse::GenerateVerify),
    ];
    for (n, (kbpk, alg, usage, exportable, want_usage, want_mode)) in cases.into_iter().enumerate() {
        let block = f
            .hsm
            .tr31_export(kbpk, key_for(alg, usage), usage, exportable)
            .unwrap_or_else(|e| panic!("{alg} {usage}: {e}"));
        let version = if kbpk.alg.is_tdes() { Version::B } else { Version::D };
        let kbpk_value = h(if version == Version::B { KBPK_TDES } else { KBPK_AES });
        let (header, clear) = tr31::unwrap(kbpk_of(version, &kbpk_value), block.as_bytes()).unwrap();
        assert_eq!(*clear, known_key(alg), "{alg} {usage}: the key comes back");
        assert_eq!(header.version, version);
        assert_eq!(header.key_usage, want_usage);
        let want_alg = match alg {
            a if a.is_tdes() => Algorithm::Tdes,
            a if a.is_aes() => Algorithm::Aes,
            _ => Algorithm::Hmac,
        };
        assert_eq!(header.algorithm, want_alg, "{block}");
        assert_eq!(header.mode_of_use, want_mode, "{block}");
        assert_eq!(
            header.exportability,
            if exportable { Exportability::Trusted } else { Exportability::NonExportable },
            "{block}"
        );
        assert_eq!(header.optional_block(BlockId::Hm), (alg == KeyAlg::HmacSha256).then_some("21"), "{block}");
        assert_eq!(header.block_length, block.len());
        assert_eq!(quill_hsm::tr31_mode_of_use(want_usage), Some(want_mode));
        // The key length is hidden and the padding random.
        let other = f.hsm.tr31_export(kbpk, key_for(alg, usage), usage, exportable).unwrap();
        assert_eq!(other.len(), block.len());
        assert_ne!(other, block, "random padding");
        if alg.is_tdes() {
            assert_eq!(block.len(), 16 + 2 * 32 + 2 * version.mac_len(), "padded as a 24-byte key: {block}");
        }
        // An exportable block imports back to the same key.
        if exportable {
            let (h2, w) = f.hsm.tr31_import(kbpk, &block).unwrap();
            assert_eq!((h2, w.kcv.clone(), w.alg), (header, key_for(alg, usage).kcv.clone(), alg));
        }
        // On SoftHSM, each of the two exports: the wrap, and the KBPK's and the key's blocks at rest.
        let expected = if b == Backend::SoftHsm { 6 * (n + 1) } else { 0 };
        assert_eq!(f.uses("tr31_export") - before, expected);
    }
    // Requests that cannot be met, refused before any key is touched.
    let cases: [(&WrappedKey, &WrappedKey, &str, &str); 7] = [
        (&f.tdes_kbpk, key(KeyAlg::Aes128), "D0", "stronger than the 16-byte TDES KBPK"),
        (&f.tdes_kbpk, key(KeyAlg::Des3), "D0", "stronger than the 16-byte TDES KBPK"),
        (key(KeyAlg::Aes128), key(KeyAlg::Aes256), "D0", "stronger than the 16-byte AES KBPK"),
        (key(KeyAlg::HmacSha256), key(KeyAlg::Aes128), "D0", "cannot be a KBPK"),
        (&f.aes_kbpk, key(KeyAlg::Des2), "M7", "algorithm at position 7"),
        (&f.aes_kbpk, key(KeyAlg::Aes128), "S0", "asymmetric"),
        (&f.aes_kbpk, key(KeyAlg::Aes128), "XX", "not a key usage"),
    ];
    let uses = f.rec.uses().len();
    for (kbpk, k, usage, needle) in cases {
        let e = f.hsm.tr31_export(kbpk, k, usage, true).unwrap_err();
        assert_tr31(&e, needle);
        assert_eq!(e.operation(), "tr31_export");
    }
    assert_eq!(f.rec.uses().len(), uses, "nothing reached host memory");
}

fn tampered_or_malformed_blocks_are_named(b: Backend) {
    let Some(f) = Fixture::new(b, "tr31-tamper") else { return };
    let key = known_key(KeyAlg::Des2);
    let block = wrap_sw("B0000P0TE00E0000", &h(KBPK_TDES), &key, None);
    assert_eq!(f.hsm.tr31_import(&f.tdes_kbpk, &block).unwrap().1.kcv, Kcv::of_clear(KeyAlg::Des2, &key).unwrap());
    let flip = |pos: usize| {
        let mut v = block.clone().into_bytes();
        v[pos] = match (pos, v[pos]) {
            (11, _) => b'S',
            (_, b'0') => b'1',
            _ => b'0',
        };
        String::from_utf8(v).unwrap()
    };
    // A flipped byte in the encrypted key data, in the MAC, or in the header (exportability E -> S
    // keeps the header valid): the MAC does not verify.
    for pos in [11, 20, block.len() / 2, block.len() - 1] {
        let e = f.hsm.tr31_import(&f.tdes_kbpk, &flip(pos)).unwrap_err();
        assert_tr31(&e, "MAC verification failed");
        assert_eq!(e.operation(), "tr31_import");
    }
    // Under another KBPK of the right family: the MAC does not verify either.
    let other = f.hsm.generate_key(KeyAlg::Des2, common::key_use("K1")).unwrap();
    assert_tr31(&f.hsm.tr31_import(&other, &block).unwrap_err(), "MAC verification failed");
    // Malformed blocks: the problem and its position.
    let mut lower = block.clone();
    lower.replace_range(30..31, "a");
    let malformed = [
        (block[..block.len() - 2].to_owned(), "block length at position 1 says 80 but the block has 78 characters"),
        (lower, "position 30"),
        (block.replacen("P0T", "ZZT", 1), "key usage at position 5"),
        (block.replacen('B', "A", 1), "version id at position 0"),
        ("B0016P0TE00E0000".to_owned(), "encrypted key data at position 16"),
        ("B00".to_owned(), "16"),
    ];
    for (bad, needle) in malformed {
        assert_tr31(&f.hsm.tr31_import(&f.tdes_kbpk, &bad).unwrap_err(), needle);
    }
    // The slot is fine afterwards.
    assert_eq!(f.hsm.tr31_import(&f.tdes_kbpk, &block).unwrap().0.key_usage, KeyUsage::PinEncryption);
}

fn kbpk_must_fit_the_version(b: Backend) {
    let Some(f) = Fixture::new(b, "tr31-version") else { return };
    let mac_key = import(&f.hsm, KeyAlg::HmacSha256, "M7", &known_key(KeyAlg::HmacSha256));
    let uses = f.rec.uses().len();
    let d = wrap_sw("D0000P0TE00E0000", &h(KBPK_AES), &known_key(KeyAlg::Des2), None);
    assert_tr31(
        &f.hsm.tr31_import(&f.tdes_kbpk, &d).unwrap_err(),
        "a version D key block needs a KBPK of AES, not TDES",
    );
    let bb = wrap_sw("B0000P0TE00E0000", &h(KBPK_TDES), &known_key(KeyAlg::Des2), None);
    assert_tr31(
        &f.hsm.tr31_import(&f.aes_kbpk, &bb).unwrap_err(),
        "a version B key block needs a KBPK of TDES, not AES",
    );
    assert_tr31(&f.hsm.tr31_import(&mac_key, &bb).unwrap_err(), "HMAC_SHA256 key cannot be a KBPK");
    // Keys Quill cannot hold.
    let single_des = wrap_sw("B0000D0DB00E0000", &h(KBPK_TDES), &h("0123456789ABCDEF"), None);
    assert_tr31(&f.hsm.tr31_import(&f.tdes_kbpk, &single_des).unwrap_err(), "single DES");
    let non_exportable = wrap_sw("B0000P0TE00N0000", &h(KBPK_TDES), &known_key(KeyAlg::Des2), None);
    assert_tr31(&f.hsm.tr31_import(&f.tdes_kbpk, &non_exportable).unwrap_err(), "non-exportable");
    let sha1 = wrap_sw("D0000M7HC00E0100HM0610", &h(KBPK_AES), &known_key(KeyAlg::HmacSha256), None);
    assert_tr31(&f.hsm.tr31_import(&f.aes_kbpk, &sha1).unwrap_err(), "not SHA-256");
    let short_hmac = wrap_sw("D0000M7HC00E0100HM0621", &h(KBPK_AES), &[7u8; 20], None);
    assert_tr31(&f.hsm.tr31_import(&f.aes_kbpk, &short_hmac).unwrap_err(), "20-byte algorithm H key");
    // Only the last one got as far as the key (host path on SoftHSM: the import, and the KBPK's
    // block at rest opened).
    let expected = if b == Backend::SoftHsm { 2 } else { 0 };
    assert_eq!(f.rec.uses().len() - uses, expected, "{:?}", f.rec.uses());
}

fn host_path_policy_for_tr31(b: Backend) {
    let Some(f) = Fixture::new(b, "tr31-policy") else { return };
    let block = wrap_sw("D0000P0AE00E0000", &h(KBPK_AES), &known_key(KeyAlg::Aes128), None);
    let key = import(&f.hsm, KeyAlg::Aes128, "P0", &known_key(KeyAlg::Aes128));
    // The same token without allow_host_key_material.
    let mut strict = f.config.clone();
    strict.allow_host_key_material = false;
    let rec = Recorder::new();
    let hsm = Pkcs11Hsm::open(&strict, rec.clone()).unwrap();
    let info = hsm.describe().slots.remove(0);
    let cap = |name: &str| info.capabilities.iter().find(|c| c.name == name).unwrap().clone();
    match b {
        Backend::Sim => {
            assert_eq!(cap("tr31-import").support, Support::Native);
            assert_eq!(cap("tr31-import").via, "CKM_QUILL_TR31_UNWRAP");
            assert_eq!(cap("tr31-export").via, "CKM_QUILL_TR31_WRAP");
            assert_eq!(hsm.tr31_import(&f.aes_kbpk, &block).unwrap().1.kcv, key.kcv);
            let out = hsm.tr31_export(&f.aes_kbpk, &key, "P0", true).unwrap();
            assert_eq!(*tr31::unwrap(Kbpk::Aes(&h(KBPK_AES)), out.as_bytes()).unwrap().1, known_key(KeyAlg::Aes128));
            assert!(rec.uses().is_empty());
        }
        Backend::SoftHsm => {
            assert_eq!(cap("tr31-import").support, Support::HostPath);
            assert_eq!(cap("tr31-export").support, Support::HostPath);
            let e = hsm.tr31_import(&f.aes_kbpk, &block).unwrap_err();
            assert!(
                matches!(&e, HsmError::HostPathRefused { operation: "tr31_import", missing, .. } if missing.contains("CKM_QUILL_TR31_UNWRAP")),
                "{e}"
            );
            assert!(e.to_string().contains("allow_host_key_material"), "{e}");
            let e = hsm.tr31_export(&f.aes_kbpk, &key, "P0", true).unwrap_err();
            assert!(
                matches!(&e, HsmError::HostPathRefused { operation: "tr31_export", missing, .. } if missing.contains("CKM_QUILL_TR31_WRAP")),
                "{e}"
            );
            assert!(rec.uses().is_empty(), "a refusal reports nothing");
            // A bad block is still named as such (the checks that need no key come first).
            assert_tr31(&hsm.tr31_import(&f.aes_kbpk, &block[..40]).unwrap_err(), "block length");
            // With the flag, the use is reported first.
            let n = f.rec.uses().len();
            f.hsm.tr31_export(&f.aes_kbpk, &key, "P0", true).unwrap();
            let uses = f.rec.uses();
            assert_eq!(uses.len(), n + 3, "the export, then the KBPK's and the key's blocks at rest opened");
            assert!(
                uses[n + 1..].iter().all(|u| u.what.contains("key block at rest opened in host memory")),
                "{uses:?}"
            );
            let u = &uses[n];
            assert_eq!((u.operation, u.alg.as_str()), ("tr31_export", KeyAlg::Aes128.name()));
            assert!(u.what.contains("the AES128 key and the AES256 KBPK are read into host memory"), "{}", u.what);
            assert_eq!(u.token_label, "TEST-tr31-policy");
        }
    }
}

/// Through the pool: forwarded to a member holding the SMK; a bad MAC is returned at once and
/// takes no member out.
#[test]
fn pool_forwards_tr31() {
    let Some(a) = common::token(Backend::Sim, "tr31-pool-a") else { return };
    let Some(b) = common::token(Backend::Sim, "tr31-pool-b") else { return };
    let mut cfg = PoolConfig::new(vec![a, b]);
    cfg.probe_interval_ms = 100;
    let pool = HsmPool::open(&cfg, Arc::new(LogHostPath)).unwrap();
    let (comps, kcvs) = components(&pool, KeyAlg::Aes256, &r::random(32));
    pool.form_smk(&comps, &kcvs).unwrap();
    let kbpk = import(&pool, KeyAlg::Aes256, "K1", &h(KBPK_AES));
    let key = known_key(KeyAlg::Aes256);
    let block = wrap_sw("D0000D0AB00E0000", &h(KBPK_AES), &key, None);
    for _ in 0..4 {
        let (header, w) = pool.tr31_import(&kbpk, &block).unwrap();
        assert_eq!(header.key_usage, KeyUsage::DataEncryption);
        assert_eq!(w.kcv, Kcv::of_clear(KeyAlg::Aes256, &key).unwrap());
        let out = pool.tr31_export(&kbpk, &w, "D0", false).unwrap();
        assert_eq!(*tr31::unwrap(Kbpk::Aes(&h(KBPK_AES)), out.as_bytes()).unwrap().1, key);
    }
    let mut bad = block.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
    let e = pool.tr31_import(&kbpk, std::str::from_utf8(&bad).unwrap()).unwrap_err();
    assert_tr31(&e, "MAC verification failed");
    assert!(pool.status().iter().all(|s| s.state == quill_hsm::SlotState::Healthy), "{:?}", pool.status());
}

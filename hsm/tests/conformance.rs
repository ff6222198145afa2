//! The `Hsm` contract, run against hsm-sim and SoftHSM 2 (`sim::*`, `softhsm::*`), checked with
//! OpenSSL computations rather than with the adapter itself.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::reference::{self as r, h};
use common::{Backend, Recorder, token, token_host_path};
use quill_hsm::tr31::KeyUsage;
use quill_hsm::{
    Hsm, HsmError, Kcv, KeyAlg, KeyUse, LogHostPath, Pkcs11Hsm, SealedComponent, SlotConfig, Support, WrappedKey,
};
use std::sync::Arc;

per_backend!(
    transport_key_persists_across_reopen,
    smk_from_components_matches_openssl,
    wrong_component_kcv_is_refused_naming_the_component,
    component_sealed_to_another_key_is_refused,
    smk_moves_to_a_second_token,
    generated_keys_check_on_another_token_with_the_same_smk,
    hmac_matches_openssl,
    node_audit_key_is_persistent_and_the_tokens_own,
    seal_open_round_trip_and_tamper_refused,
    keys_under_another_smk_are_refused,
    host_path_policy,
    misuse_is_reported,
    key_cache_evicts_and_reunwraps,
    operator_tools_seal_and_kcv_match_the_hsm,
    keys_at_rest_are_key_blocks_under_the_smk,
    keys_at_rest_serve_only_their_use,
    keys_at_rest_bind_their_tenant,
);

fn open(c: &SlotConfig) -> Pkcs11Hsm {
    Pkcs11Hsm::open(c, Arc::new(LogHostPath)).unwrap()
}

/// A token with an SMK formed from three known components (host path allowed on SoftHSM, which
/// needs it), and the SMK's clear value (test only).
fn token_with_smk(b: Backend, name: &str) -> Option<(Pkcs11Hsm, Vec<u8>)> {
    let c = token_host_path(b, name)?;
    let hsm = open(&c);
    let smk = r::random(32);
    let (comps, kcvs) = r::sealed_components(KeyAlg::Aes256, &smk, 3, &hsm.transport_public_key().unwrap());
    let kcv = hsm.form_smk(&comps, &kcvs).unwrap();
    assert_eq!(kcv, r::kcv(KeyAlg::Aes256, &smk));
    Some((hsm, smk))
}

/// Import a known clear key through sealed components.
fn import(hsm: &Pkcs11Hsm, alg: KeyAlg, key: &[u8]) -> WrappedKey {
    let (comps, kcvs) = r::sealed_components(alg, key, 3, &hsm.transport_public_key().unwrap());
    let w = hsm.import_components(alg, common::default_use(alg), &comps, &kcvs).unwrap();
    assert_eq!(w.kcv, r::kcv(alg, key), "{alg} imported key KCV");
    w
}

fn transport_key_persists_across_reopen(b: Backend) {
    let Some(c) = token(b, "transport") else { return };
    let first = {
        let hsm = open(&c);
        let k = hsm.transport_public_key().unwrap();
        assert_eq!(hsm.transport_public_key().unwrap(), k, "same key on the second call");
        k
    };
    // Every session of the first handle is closed now, so only a token object can be found.
    let hsm = open(&c);
    assert_eq!(hsm.transport_public_key().unwrap(), first, "the transport key is a persistent token object");
    assert_eq!(first.bits(), 2048);
    assert_eq!(first.exponent, vec![0x01, 0x00, 0x01]);
    assert_eq!(first.fingerprint(), r::spki_sha256(&first), "fingerprint = SHA-256 of OpenSSL's DER");
}

fn smk_from_components_matches_openssl(b: Backend) {
    let Some(c) = token_host_path(b, "smk-form") else { return };
    let rec = Recorder::new();
    let hsm = Pkcs11Hsm::open(&c, rec.clone()).unwrap();
    assert_eq!(hsm.smk_kcv().unwrap(), None);
    let pk = hsm.transport_public_key().unwrap();
    let parts = r::split(KeyAlg::Aes256, &r::random(32), 3);
    let sealed: Vec<_> = parts.iter().map(|p| r::seal(&pk, p)).collect();
    let kcvs: Vec<_> = parts.iter().map(|p| r::kcv(KeyAlg::Aes256, p)).collect();
    let kcv = hsm.form_smk(&sealed, &kcvs).unwrap();
    let independent = r::kcv(KeyAlg::Aes256, &r::xor(&parts));
    assert_eq!(kcv, independent, "SMK KCV = first 5 bytes of AES-CMAC(XOR of components, 0^16)");
    assert_eq!(kcv.as_str().len(), 10);
    assert_eq!(hsm.smk_kcv().unwrap(), Some(kcv.clone()));
    // Host path: used (and reported) only where the module cannot XOR inside.
    let native = b == Backend::Sim;
    assert_eq!(rec.uses().is_empty(), native, "host path uses: {:?}", rec.uses());
    // Idempotent with the same components, persistent across re-open.
    assert_eq!(hsm.form_smk(&sealed, &kcvs).unwrap(), kcv);
    drop(hsm);
    let hsm = open(&c);
    assert_eq!(hsm.smk_kcv().unwrap(), Some(kcv.clone()));
    // A different SMK is never accepted.
    let other = r::split(KeyAlg::Aes256, &r::random(32), 2);
    let e = hsm
        .form_smk(
            &other.iter().map(|p| r::seal(&pk, p)).collect::<Vec<_>>(),
            &other.iter().map(|p| r::kcv(KeyAlg::Aes256, p)).collect::<Vec<_>>(),
        )
        .unwrap_err();
    assert!(matches!(&e, HsmError::SmkConflict { present, .. } if *present == kcv), "{e}");
    assert_eq!(hsm.smk_kcv().unwrap(), Some(kcv));
}

fn wrong_component_kcv_is_refused_naming_the_component(b: Backend) {
    let Some(c) = token_host_path(b, "smk-badkcv") else { return };
    let hsm = open(&c);
    let pk = hsm.transport_public_key().unwrap();
    let (comps, mut kcvs) = r::sealed_components(KeyAlg::Aes256, &r::random(32), 3, &pk);
    kcvs[1] = Kcv("0102030405".into());
    let e = hsm.form_smk(&comps, &kcvs).unwrap_err();
    match &e {
        HsmError::ComponentKcv { index, expected, .. } => {
            assert_eq!(*index, 1);
            assert_eq!(expected.as_str(), "0102030405");
        }
        other => panic!("expected ComponentKcv, got {other}"),
    }
    assert!(e.to_string().contains("component 1"), "{e}");
    assert!(!e.is_device_error());
    assert_eq!(hsm.smk_kcv().unwrap(), None, "nothing stored");
    // Counts must match, and one component is not a ceremony.
    assert!(matches!(hsm.form_smk(&comps, &kcvs[..2]), Err(HsmError::Misuse { .. })));
    assert!(matches!(hsm.form_smk(&comps[..1], &kcvs[..1]), Err(HsmError::Misuse { .. })));
    // A TDES component offered for an AES-256 key.
    let des = r::random_key(KeyAlg::Des2);
    let mut comps2 = comps.clone();
    comps2[2] = r::seal(&pk, &des);
    let e = hsm.form_smk(&comps2, &[kcvs[0].clone(), kcvs[0].clone(), kcvs[0].clone()]).unwrap_err();
    assert!(!e.is_device_error(), "{e}");
}

fn component_sealed_to_another_key_is_refused(b: Backend) {
    let Some(c) = token_host_path(b, "smk-otherkey") else { return };
    let Some(c2) = token(b, "smk-otherkey2") else { return };
    let hsm = open(&c);
    let other = open(&c2).transport_public_key().unwrap();
    let (mut comps, kcvs) =
        r::sealed_components(KeyAlg::Aes256, &r::random(32), 3, &hsm.transport_public_key().unwrap());
    comps[2] = r::seal(&other, &r::random(32));
    let e = hsm.form_smk(&comps, &kcvs).unwrap_err();
    assert!(matches!(&e, HsmError::CannotOpen { what, .. } if what == "component 2"), "{e}");
    assert!(!e.is_device_error());
    assert!(e.to_string().contains("C_UnwrapKey returned CKR_"), "{e}");
}

fn smk_moves_to_a_second_token(b: Backend) {
    let Some((a, _)) = token_with_smk(b, "smk-move-a") else { return };
    let Some(cb) = token(b, "smk-move-b") else { return };
    let bb = open(&cb);
    let smk = a.smk_kcv().unwrap().unwrap();
    let sealed = a.wrap_smk_for(&bb.transport_public_key().unwrap()).unwrap();
    // A wrong expected KCV is refused and nothing is stored.
    let e = bb.install_smk(&sealed, &Kcv("0000000000".into())).unwrap_err();
    assert!(matches!(e, HsmError::KcvMismatch { .. }), "{e}");
    assert_eq!(bb.smk_kcv().unwrap(), None);
    bb.install_smk(&sealed, &smk).unwrap();
    assert_eq!(bb.smk_kcv().unwrap(), Some(smk.clone()));
    bb.install_smk(&sealed, &smk).unwrap(); // idempotent
    drop(bb);
    assert_eq!(open(&cb).smk_kcv().unwrap(), Some(smk), "installed as a token object");
    // Sealed to B, A cannot open it.
    let e = a.install_smk(&sealed, &a.smk_kcv().unwrap().unwrap()).unwrap_err();
    assert!(matches!(e, HsmError::CannotOpen { .. }), "{e}");
    // A weak peer key is refused.
    let weak = quill_hsm::RsaPublic::new(&r::random(128), &[3]);
    assert!(matches!(a.wrap_smk_for(&weak), Err(HsmError::Misuse { .. })));
}

fn generated_keys_check_on_another_token_with_the_same_smk(b: Backend) {
    let Some((a, _)) = token_with_smk(b, "gen-a") else { return };
    let Some(cb) = token_host_path(b, "gen-b") else { return };
    let bb = open(&cb);
    let smk = a.smk_kcv().unwrap().unwrap();
    bb.install_smk(&a.wrap_smk_for(&bb.transport_public_key().unwrap()).unwrap(), &smk).unwrap();
    for alg in [KeyAlg::Des2, KeyAlg::Des3, KeyAlg::Aes128, KeyAlg::Aes192, KeyAlg::Aes256, KeyAlg::HmacSha256] {
        let w = a.generate_key(alg, common::default_use(alg)).unwrap();
        assert_eq!(w.alg, alg);
        assert_eq!(w.smk_kcv, smk);
        assert_eq!(w.kcv.as_str().len(), 2 * alg.kcv_len());
        assert_eq!(a.kcv(&w).unwrap(), w.kcv, "{alg} on the generating token");
        assert_eq!(bb.kcv(&w).unwrap(), w.kcv, "{alg} on the other token");
        assert_ne!(a.generate_key(alg, common::default_use(alg)).unwrap().kcv, w.kcv, "{alg}: keys are random");
    }
}

fn hmac_matches_openssl(b: Backend) {
    let Some((hsm, _)) = token_with_smk(b, "hmac") else { return };
    let key = r::random(32);
    let w = import(&hsm, KeyAlg::HmacSha256, &key);
    for data in [&b""[..], b"audit record 1", &[0x5A; 1000][..]] {
        assert_eq!(hsm.hmac_sha256(&w, data).unwrap().to_vec(), r::hmac_sha256(&key, data));
    }
    // Known components, KCV as documented.
    assert_eq!(hsm.kcv(&w).unwrap(), r::kcv(KeyAlg::HmacSha256, &key));
    // Generated HMAC keys work too (the same key twice gives the same MAC).
    let g = hsm.generate_key(KeyAlg::HmacSha256, common::default_use(KeyAlg::HmacSha256)).unwrap();
    assert_eq!(hsm.hmac_sha256(&g, b"x").unwrap(), hsm.hmac_sha256(&g, b"x").unwrap());
    // And TDES keys import with their X9.24 KCV.
    let des = r::odd_parity(h("0123456789ABCDEFFEDCBA9876543210"));
    assert_eq!(import(&hsm, KeyAlg::Des2, &des).kcv, r::kcv(KeyAlg::Des2, &des));
}

/// The node audit key: made on first use before any SMK exists, the same after a reopen (a token
/// object), checks its own MACs, refuses a changed MAC or changed data, and is another key on
/// another token (whose MACs it does not claim to check).
fn node_audit_key_is_persistent_and_the_tokens_own(b: Backend) {
    let Some(c) = token(b, "node-audit") else { return };
    let data = b"quill-audit-node-mac-v1 records 1..=7";
    let (kcv, mac) = {
        let hsm = open(&c);
        assert_eq!(hsm.smk_kcv().unwrap(), None, "no SMK needed");
        let (kcv, mac) = hsm.node_audit_mac(data).unwrap();
        assert_eq!(hsm.node_audit_verify(&kcv, data, &mac).unwrap(), Some(true));
        let mut bad = mac;
        bad[0] ^= 1;
        assert_eq!(hsm.node_audit_verify(&kcv, data, &bad).unwrap(), Some(false), "a changed MAC");
        assert_eq!(hsm.node_audit_verify(&kcv, b"other data", &mac).unwrap(), Some(false), "changed data");
        assert_ne!(hsm.node_audit_mac(b"other data").unwrap().1, mac);
        (kcv, mac)
    };
    let hsm = open(&c);
    assert_eq!(hsm.node_audit_mac(data).unwrap(), (kcv.clone(), mac), "the same key after a reopen");
    let Some(c2) = token(b, "node-audit-2") else { return };
    let other = open(&c2);
    let (kcv2, mac2) = other.node_audit_mac(data).unwrap();
    assert_ne!((&kcv2, mac2), (&kcv, mac), "each token has its own audit key");
    assert_eq!(other.node_audit_verify(&kcv, data, &mac).unwrap(), None, "another token's key is not here");
}

fn seal_open_round_trip_and_tamper_refused(b: Backend) {
    let Some((hsm, _)) = token_with_smk(b, "aead") else { return };
    let key = r::random(32);
    let w = import(&hsm, KeyAlg::Aes256, &key);
    let aad = b"chunk 7 of job 42";
    let pt = b"4111111111111111 JOHN SMITH 2912".to_vec();
    let sealed = hsm.seal(&w, aad, &pt).unwrap();
    assert_eq!(sealed.len(), 12 + pt.len() + 16);
    assert_eq!(r::gcm_open(&key, aad, &sealed).unwrap(), pt, "OpenSSL opens what the HSM sealed");
    assert_eq!(*hsm.open(&w, aad, &sealed).unwrap(), pt);
    assert_ne!(hsm.seal(&w, aad, &pt).unwrap()[..12], sealed[..12], "fresh IV each time");
    for i in [0, 12, sealed.len() - 1] {
        let mut t = sealed.clone();
        t[i] ^= 0x01;
        let e = hsm.open(&w, aad, &t).unwrap_err();
        assert!(matches!(e, HsmError::AuthenticationFailed { .. }), "byte {i}: {e}");
        assert!(!e.is_device_error());
    }
    assert!(matches!(hsm.open(&w, b"other aad", &sealed), Err(HsmError::AuthenticationFailed { .. })));
    assert!(matches!(hsm.open(&w, aad, &sealed[..20]), Err(HsmError::AuthenticationFailed { .. })));
    let other = hsm.generate_key(KeyAlg::Aes128, common::default_use(KeyAlg::Aes128)).unwrap();
    assert!(matches!(hsm.open(&other, aad, &sealed), Err(HsmError::AuthenticationFailed { .. })));
    let s2 = hsm.seal(&other, b"", b"").unwrap();
    assert!(hsm.open(&other, b"", &s2).unwrap().is_empty());
}

fn keys_under_another_smk_are_refused(b: Backend) {
    let Some((a, _)) = token_with_smk(b, "othersmk-a") else { return };
    let Some((c, _)) = token_with_smk(b, "othersmk-c") else { return };
    let w = a.generate_key(KeyAlg::Aes256, common::default_use(KeyAlg::Aes256)).unwrap();
    let e = c.kcv(&w).unwrap_err();
    assert!(matches!(e, HsmError::WrongSmk { .. }), "{e}");
    // A block that claims C's SMK but is not made under it does not open, as a key error (on
    // hsm-sim C_UnwrapKey fails the MAC; on SoftHSM the host path does).
    let forged = WrappedKey { smk_kcv: c.smk_kcv().unwrap().unwrap(), ..w.clone() };
    let e = c.kcv(&forged).unwrap_err();
    assert!(matches!(&e, HsmError::KeyBlock { reason, .. } if reason.contains("does not open")), "{e}");
    assert!(!e.is_device_error(), "{e}");
    // Its usage edited from D0 to E0: the MAC fails.
    let mut bad = w.clone();
    bad.blob[5] ^= 1;
    assert_eq!(&bad.blob[5..7], b"E0");
    let e = a.kcv(&bad).unwrap_err();
    assert!(matches!(e, HsmError::KeyBlock { .. }), "{e}");
    assert_eq!(a.kcv(&w).unwrap(), w.kcv, "the slot still works");
    // No SMK at all.
    let Some(cn) = token(b, "othersmk-none") else { return };
    assert!(matches!(
        open(&cn).generate_key(KeyAlg::Aes256, common::default_use(KeyAlg::Aes256)),
        Err(HsmError::NoSmk { .. })
    ));
}

fn host_path_policy(b: Backend) {
    let Some(c) = token(b, "hostpath") else { return };
    let rec = Recorder::new();
    let hsm = Pkcs11Hsm::open(&c, rec.clone()).unwrap();
    let info = hsm.describe().slots.remove(0);
    assert!(!info.host_path_allowed);
    let xor = info.capabilities.iter().find(|c| c.name == "key-components-xor").unwrap();
    let pk = hsm.transport_public_key().unwrap();
    let smk = r::random(32);
    let (comps, kcvs) = r::sealed_components(KeyAlg::Aes256, &smk, 2, &pk);
    match b {
        Backend::Sim => {
            assert_eq!(xor.support, Support::Native, "{info:?}");
            assert!(info.vendor_mechanisms.iter().any(|m| m == "CKM_QUILL_KEY_COMPONENTS_XOR"), "{info:?}");
            hsm.form_smk(&comps, &kcvs).unwrap();
            assert!(rec.uses().is_empty());
        }
        Backend::SoftHsm => {
            assert_eq!(xor.support, Support::HostPath, "{info:?}");
            let e = hsm.form_smk(&comps, &kcvs).unwrap_err();
            match &e {
                HsmError::HostPathRefused { operation, module, .. } => {
                    assert_eq!(*operation, "form_smk");
                    assert!(module.contains("softhsm"), "{module}");
                }
                other => panic!("expected HostPathRefused, got {other}"),
            }
            assert!(e.to_string().contains("allow_host_key_material"), "{e}");
            assert!(rec.uses().is_empty());
            assert_eq!(hsm.smk_kcv().unwrap(), None);
            drop(hsm);
            // Allowed: done, and reported before the key material reaches host memory.
            let mut allowed = c.clone();
            allowed.allow_host_key_material = true;
            let hsm = Pkcs11Hsm::open(&allowed, rec.clone()).unwrap();
            assert_eq!(hsm.form_smk(&comps, &kcvs).unwrap(), r::kcv(KeyAlg::Aes256, &smk));
            let uses = rec.uses();
            assert_eq!(uses.len(), 1, "{uses:?}");
            assert_eq!(uses[0].operation, "form_smk");
            assert_eq!(uses[0].alg, KeyAlg::Aes256.to_string());
            assert!(uses[0].what.contains("XOR of 2 key components"), "{}", uses[0].what);
            assert_eq!(uses[0].token_label, "TEST-hostpath");
            let key = r::random_key(KeyAlg::Des3);
            import(&hsm, KeyAlg::Des3, &key);
            // The XOR, then the key block at rest (SoftHSM has no TR-31 wrap inside).
            let uses = rec.uses();
            assert_eq!(uses.len(), 3, "{uses:?}");
            assert!(uses[1..].iter().all(|u| u.operation == "import_components"), "{uses:?}");
            assert!(uses[2].what.contains("key block at rest made in host memory (usage D0)"), "{}", uses[2].what);
            // A generated key is made inside the HSM; its block at rest takes the host path.
            hsm.generate_key(KeyAlg::Des2, common::default_use(KeyAlg::Des2)).unwrap();
            let uses = rec.uses();
            assert_eq!(uses.len(), 4, "{uses:?}");
            assert_eq!(uses[3].operation, "generate_key");
            // And without the flag, importing is refused as well.
            drop(hsm);
            let hsm = Pkcs11Hsm::open(&c, rec.clone()).unwrap();
            let (comps, kcvs) = r::sealed_components(KeyAlg::Des3, &key, 2, &pk);
            assert!(matches!(
                hsm.import_components(KeyAlg::Des3, common::default_use(KeyAlg::Des3), &comps, &kcvs),
                Err(HsmError::HostPathRefused { .. })
            ));
        }
    }
}

fn misuse_is_reported(b: Backend) {
    let Some((hsm, _)) = token_with_smk(b, "misuse") else { return };
    let aes = hsm.generate_key(KeyAlg::Aes256, common::default_use(KeyAlg::Aes256)).unwrap();
    let mac = hsm.generate_key(KeyAlg::HmacSha256, common::default_use(KeyAlg::HmacSha256)).unwrap();
    assert!(matches!(hsm.hmac_sha256(&aes, b"x"), Err(HsmError::Misuse { .. })));
    assert!(matches!(hsm.seal(&mac, b"", b"x"), Err(HsmError::Misuse { .. })));
    let e = hsm.open(&mac, b"", &[0; 40]).unwrap_err();
    assert!(matches!(e, HsmError::Misuse { .. }), "{e}");
    assert!(!e.to_string().contains(&hex::encode_upper(&mac.blob)), "errors carry no key material");
}

/// SMK formed on hsm-sim, sent to SoftHSM; keys generated on either work on the other (the key
/// block at rest, TR-31 version D under a KBPK both derive from the SMK, is the module-independent
/// part; SoftHSM makes and opens it on the host path).
#[test]
fn smk_and_keys_cross_modules() {
    let Some((sim, _)) = token_with_smk(Backend::Sim, "cross-sim") else { return };
    let Some(cs) = token_host_path(Backend::SoftHsm, "cross-soft") else { return };
    let soft = open(&cs);
    let smk = sim.smk_kcv().unwrap().unwrap();
    soft.install_smk(&sim.wrap_smk_for(&soft.transport_public_key().unwrap()).unwrap(), &smk).unwrap();
    assert_eq!(soft.smk_kcv().unwrap(), Some(smk));
    for alg in [KeyAlg::Des2, KeyAlg::Aes256, KeyAlg::HmacSha256] {
        let w = sim.generate_key(alg, common::default_use(alg)).unwrap();
        assert_eq!(soft.kcv(&w).unwrap(), w.kcv, "{alg} generated on hsm-sim");
        let w = soft.generate_key(alg, common::default_use(alg)).unwrap();
        assert_eq!(sim.kcv(&w).unwrap(), w.kcv, "{alg} generated on SoftHSM");
    }
    let k = soft.generate_key(KeyAlg::Aes256, common::default_use(KeyAlg::Aes256)).unwrap();
    let sealed = soft.seal(&k, b"a", b"hello").unwrap();
    assert_eq!(*sim.open(&k, b"a", &sealed).unwrap(), b"hello");
    let m = sim.generate_key(KeyAlg::HmacSha256, common::default_use(KeyAlg::HmacSha256)).unwrap();
    assert_eq!(sim.hmac_sha256(&m, b"d").unwrap(), soft.hmac_sha256(&m, b"d").unwrap());
}

#[test]
fn many_threads_share_the_sessions_and_cache() {
    let Some((hsm, _)) = token_with_smk(Backend::Sim, "threads") else { return };
    let hsm = Arc::new(hsm);
    let key = r::random(32);
    let w = import(&hsm, KeyAlg::HmacSha256, &key);
    let want = r::hmac_sha256(&key, b"t");
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (hsm, w, want) = (hsm.clone(), w.clone(), want.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(hsm.hmac_sha256(&w, b"t").unwrap().to_vec(), want);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn key_cache_evicts_and_reunwraps(b: Backend) {
    let Some(mut c) = token_host_path(b, "cache") else { return };
    c.sessions = 1;
    c.key_cache = 2;
    let hsm = open(&c);
    let (comps, kcvs) = r::sealed_components(KeyAlg::Aes256, &r::random(32), 2, &hsm.transport_public_key().unwrap());
    hsm.form_smk(&comps, &kcvs).unwrap();
    let keys: Vec<WrappedKey> =
        (0..5).map(|_| hsm.generate_key(KeyAlg::Aes128, common::default_use(KeyAlg::Aes128)).unwrap()).collect();
    for _ in 0..3 {
        for k in &keys {
            assert_eq!(hsm.kcv(k).unwrap(), k.kcv);
            let s = hsm.seal(k, b"", b"p").unwrap();
            assert_eq!(*hsm.open(k, b"", &s).unwrap(), b"p");
        }
    }
}

/// The operators' software helpers: components sealed with `RsaPublic::seal` and announced with
/// `Kcv::of_clear` form an SMK and import keys of every algorithm, and the HSM computes the same
/// KCVs as `Kcv::of_clear` (and as OpenSSL).
fn operator_tools_seal_and_kcv_match_the_hsm(b: Backend) {
    let Some(c) = token_host_path(b, "operator-tools") else { return };
    let hsm = open(&c);
    let pk = hsm.transport_public_key().unwrap();
    let seal = |alg: KeyAlg, parts: &[Vec<u8>]| -> (Vec<SealedComponent>, Vec<Kcv>) {
        (
            parts.iter().map(|p| SealedComponent(pk.seal(p).unwrap())).collect(),
            parts.iter().map(|p| Kcv::of_clear(alg, p).unwrap()).collect(),
        )
    };
    let parts = r::split(KeyAlg::Aes256, &r::random(32), 3);
    let (comps, kcvs) = seal(KeyAlg::Aes256, &parts);
    assert_eq!(kcvs, parts.iter().map(|p| r::kcv(KeyAlg::Aes256, p)).collect::<Vec<_>>(), "of_clear = OpenSSL");
    let kcv = hsm.form_smk(&comps, &kcvs).unwrap();
    assert_eq!(kcv, Kcv::of_clear(KeyAlg::Aes256, &r::xor(&parts)).unwrap());
    assert!(kcv.is_well_formed());
    for alg in KeyAlg::ALL {
        let key = r::random_key(alg);
        let (comps, kcvs) = seal(alg, &r::split(alg, &key, 2));
        let w = hsm.import_components(alg, common::default_use(alg), &comps, &kcvs).unwrap();
        let want = Kcv::of_clear(alg, &key).unwrap();
        assert_eq!(w.kcv, want, "{alg}: HSM KCV = Kcv::of_clear");
        assert_eq!(hsm.kcv(&w).unwrap(), want, "{alg}");
        assert_eq!(want, r::kcv(alg, &key), "{alg}: Kcv::of_clear = OpenSSL");
        assert!(want.is_well_formed(), "{want}");
    }
    // A KCV of the wrong component is still caught by the HSM.
    let (comps, mut kcvs) = seal(KeyAlg::Des2, &r::split(KeyAlg::Des2, &r::random_key(KeyAlg::Des2), 2));
    kcvs.swap(0, 1);
    assert!(matches!(
        hsm.import_components(KeyAlg::Des2, common::default_use(KeyAlg::Des2), &comps, &kcvs),
        Err(HsmError::ComponentKcv { index: 0, .. })
    ));
}

/// Keys at rest are TR-31 version D key blocks (key context 1: storage) under a KBPK derived from
/// the SMK: with the SMK's clear value (test only) the KBPK is AES-CBC(SMK, IV 0, the fixed
/// label), and the block opens with an implementation of X9.143 written on OpenSSL, giving the
/// key back; the header carries the usage, mode of use, exportability and the KCV.
fn keys_at_rest_are_key_blocks_under_the_smk(b: Backend) {
    let Some((hsm, smk)) = token_with_smk(b, "atrest-format") else { return };
    let kbpk = r::aes_cbc_encrypt(&smk, &[0u8; 16], b"QUILL KEY BLOCKS AT REST KBPK v1");
    for (alg, usage, exportable, head) in [
        (KeyAlg::Des2, KeyUsage::Cvk, false, "C0TC00N"),
        (KeyAlg::Des3, KeyUsage::EmvAc, true, "E0TX00E"),
        (KeyAlg::Aes128, KeyUsage::PinEncryption, false, "P0AB00N"),
        (KeyAlg::Aes256, KeyUsage::DataEncryption, false, "D0AB00N"),
        (KeyAlg::HmacSha256, KeyUsage::Hmac, true, "M7HC00E"),
    ] {
        let key = if alg.is_tdes() { r::odd_parity(r::random(alg.key_len())) } else { r::random(alg.key_len()) };
        let (comps, kcvs) = r::sealed_components(alg, &key, 2, &hsm.transport_public_key().unwrap());
        let w = hsm.import_components(alg, KeyUse::new(usage, exportable), &comps, &kcvs).unwrap();
        let text = std::str::from_utf8(&w.blob).unwrap();
        assert_eq!(&text[..1], "D", "{text}");
        assert_eq!(&text[5..12], head, "{alg}: usage, algorithm, mode, version, exportability: {text}");
        assert_eq!(&text[14..15], "1", "key context: storage only: {text}");
        if !alg.is_tdes() && !alg.is_aes() {
            assert!(text.contains("HM0621"), "{text}");
        } else {
            let kc = format!("{}{}", if alg.is_tdes() { "00" } else { "01" }, r::kcv(alg, &key));
            assert!(text.contains(&kc), "the KC block holds the KCV {kc}: {text}");
        }
        assert_eq!(r::tr31_d_unwrap_aes256(&kbpk, text).as_deref(), Some(&key[..]), "{alg}: {text}");
        assert_eq!(hsm.kcv(&w).unwrap(), r::kcv(alg, &key), "{alg}");
        // The key never appears in the block.
        assert!(!text.contains(&hex::encode_upper(&key)));
    }
}

/// Every operation names the usages it takes and refuses any other block before opening it; a
/// block whose header was edited (to give a CVK an IMK's usage) does not open; a non-exportable
/// key never leaves, and no key leaves under another usage.
fn keys_at_rest_serve_only_their_use(b: Backend) {
    let Some((hsm, _)) = token_with_smk(b, "atrest-use") else { return };
    let import = |alg: KeyAlg, usage: KeyUsage, exportable: bool, key: &[u8]| {
        let (comps, kcvs) = r::sealed_components(alg, key, 2, &hsm.transport_public_key().unwrap());
        hsm.import_components(alg, KeyUse::new(usage, exportable), &comps, &kcvs).unwrap()
    };
    let des = |v: &str| r::odd_parity(h(v));
    let cvk = import(KeyAlg::Des2, KeyUsage::Cvk, false, &des("0123456789ABCDEFFEDCBA9876543210"));
    let imk = import(KeyAlg::Des2, KeyUsage::EmvAc, true, &des("0123456789ABCDEF0123456789ABCDEF"));
    let dek = import(KeyAlg::Des2, KeyUsage::DataEncryption, true, &des("FEDCBA98765432100123456789ABCDEF"));
    let pin = import(KeyAlg::Aes128, KeyUsage::PinEncryption, true, &r::random(16));
    let kbpk = import(KeyAlg::Aes256, KeyUsage::Kbpk, false, &r::random(32));
    let is_block = |e: &HsmError, needle: &str| {
        assert!(matches!(e, HsmError::KeyBlock { .. }), "{e:?}");
        assert!(e.to_string().contains(needle), "{e}");
        assert!(!e.is_device_error(), "{e}");
    };
    // The right keys work.
    let cvv = hsm.cvv(&cvk, "4123456789012345", "8701", "101").unwrap();
    hsm.derive_icc_master_key(&imk, "4123456789012345", "00", &dek).unwrap();
    // Each key in another key's place is refused, naming what it is and what was needed.
    is_block(&hsm.cvv(&imk, "4123456789012345", "8701", "101").unwrap_err(), "usage E0");
    is_block(&hsm.derive_icc_master_key(&cvk, "4123456789012345", "00", &dek).unwrap_err(), "usage C0");
    is_block(&hsm.derive_icc_master_key(&imk, "4123456789012345", "00", &cvk).unwrap_err(), "transport key");
    is_block(&hsm.seal(&pin, b"", b"x").unwrap_err(), "a data encryption key (D0)");
    is_block(&hsm.tr31_export(&dek, &imk, "E0", true).unwrap_err(), "key-block protection key");
    // A CVK re-labelled as an IMK in its header: the MAC no longer verifies.
    let mut relabelled = cvk.clone();
    relabelled.blob[5..9].copy_from_slice(b"E0TX");
    assert_eq!(relabelled.usage(), Some(KeyUsage::EmvAc));
    is_block(&hsm.derive_icc_master_key(&relabelled, "4123456789012345", "00", &dek).unwrap_err(), "does not open");
    // Any flipped character of the body or MAC, too.
    let mut flipped = cvk.clone();
    let last = flipped.blob.len() - 1;
    flipped.blob[last] = if flipped.blob[last] == b'0' { b'1' } else { b'0' };
    is_block(&hsm.cvv(&flipped, "4123456789012345", "8701", "101").unwrap_err(), "does not open");
    // A record that lies about the algorithm.
    let lying = WrappedKey { alg: KeyAlg::Aes128, ..cvk.clone() };
    is_block(&hsm.kcv(&lying).unwrap_err(), "the record says AES128");
    // Exports: never a non-exportable key, never under another usage.
    let e = hsm.tr31_export(&kbpk, &cvk, "C0", true).unwrap_err();
    assert!(matches!(e, HsmError::Tr31 { .. }) && e.to_string().contains("not exportable"), "{e}");
    let e = hsm.tr31_export(&kbpk, &imk, "C0", true).unwrap_err();
    assert!(matches!(e, HsmError::Tr31 { .. }) && e.to_string().contains("says usage E0"), "{e}");
    let block = hsm.tr31_export(&kbpk, &imk, "E0", true).unwrap();
    let (header, back) = hsm.tr31_import(&kbpk, &block).unwrap();
    assert_eq!(
        (header.key_usage, back.kcv.clone(), back.usage()),
        (KeyUsage::EmvAc, imk.kcv.clone(), Some(KeyUsage::EmvAc))
    );
    // The originals still work.
    assert_eq!(hsm.cvv(&cvk, "4123456789012345", "8701", "101").unwrap(), cvv);
}

/// A key's tenant is bound in its block's authenticated header (`0T`): read back as written, a
/// block whose tenant was edited opens for nothing, and a key imported under a tenant's KBPK
/// belongs to that tenant.
fn keys_at_rest_bind_their_tenant(b: Backend) {
    let Some((hsm, _)) = token_with_smk(b, "atrest-tenant") else { return };
    let bank = |usage: KeyUsage, exportable| KeyUse::new(usage, exportable).owned_by("bank-b");
    let key = hsm.generate_key(KeyAlg::Des2, bank(KeyUsage::Cvk, true)).unwrap();
    assert_eq!(key.owner().as_deref(), Some("bank-b"));
    let text = std::str::from_utf8(&key.blob).unwrap().to_owned();
    assert!(text.contains("0T0Abank-b"), "{text}");
    let bureau = hsm.generate_key(KeyAlg::Des2, KeyUse::new(KeyUsage::Cvk, true)).unwrap();
    assert_eq!(bureau.owner(), None);
    // The tenant edited in the block (same length): the MAC fails, whatever the record says.
    let mut moved = key.clone();
    moved.blob = text.replace("bank-b", "bank-c").into_bytes();
    assert_eq!(moved.owner().as_deref(), Some("bank-c"));
    let e = hsm.kcv(&moved).unwrap_err();
    assert!(matches!(e, HsmError::KeyBlock { .. }), "{e}");
    assert!(hsm.cvv(&moved, "4123456789012345", "8701", "101").is_err());
    // Imported under bank-b's KBPK: bank-b's key, whoever's key was exported.
    let kbpk = hsm.generate_key(KeyAlg::Des3, bank(KeyUsage::Kbpk, false)).unwrap();
    let block = hsm.tr31_export(&kbpk, &bureau, "C0", true).unwrap();
    let (_, imported) = hsm.tr31_import(&kbpk, &block).unwrap();
    assert_eq!((imported.owner().as_deref(), imported.kcv.clone()), (Some("bank-b"), bureau.kcv.clone()));
    // A tenant name outside the rules is refused before anything is made.
    assert!(hsm.generate_key(KeyAlg::Des2, KeyUse::new(KeyUsage::Cvk, false).owned_by("Bank B")).is_err());
}

//! SMK rotation on one token and on a pool (`Hsm::form_next_smk`, `translate_to_next`,
//! `rewrap_rsa_to_next`, `promote_next_smk`), on hsm-sim (inside the module, with
//! `CKM_QUILL_TR31_TRANSLATE`) and SoftHSM 2 (the audited host path). The translated blocks are
//! opened with OpenSSL under the KBPK the test derives from the clear next SMK it made, not by the
//! adapter.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::reference::{self as r, h};
use common::{Backend, Recorder, token, token_host_path, token_translating};
use quill_hsm::tr31::KeyUsage;
use quill_hsm::{
    Hsm, HsmError, HsmPool, Kcv, KeyAlg, KeyUse, LogHostPath, Pkcs11Hsm, PoolConfig, SlotConfig, WrappedKey,
};
use std::sync::Arc;

per_backend!(rotation_moves_every_key_and_retires_the_old_smk, rotation_refuses_what_is_not_a_rotation);

const KBPK_LABEL: &[u8] = b"QUILL KEY BLOCKS AT REST KBPK v1";

/// A token that can rotate: on hsm-sim a slot offering the translation mechanism, on SoftHSM a
/// slot allowing the host path.
fn rotating_token(b: Backend, name: &str) -> Option<SlotConfig> {
    match b {
        Backend::Sim => Some(token_translating(name)),
        Backend::SoftHsm => token_host_path(b, name),
    }
}

/// Form an SMK (or the next SMK) from known clear bytes; its KCV.
fn form(hsm: &dyn Hsm, key: &[u8], next: bool) -> Result<Kcv, HsmError> {
    let (comps, kcvs) = r::sealed_components(KeyAlg::Aes256, key, 3, &hsm.transport_public_key().unwrap());
    if next { hsm.form_next_smk(&comps, &kcvs) } else { hsm.form_smk(&comps, &kcvs) }
}

fn import(hsm: &dyn Hsm, alg: KeyAlg, usage: KeyUsage, exportable: bool, key: &[u8]) -> WrappedKey {
    let (comps, kcvs) = r::sealed_components(alg, key, 2, &hsm.transport_public_key().unwrap());
    hsm.import_components(alg, KeyUse::new(usage, exportable), &comps, &kcvs).unwrap()
}

/// An exportable key of tenant `bank-b`.
fn import_owned(hsm: &dyn Hsm, alg: KeyAlg, usage: KeyUsage, key: &[u8]) -> WrappedKey {
    let (comps, kcvs) = r::sealed_components(alg, key, 2, &hsm.transport_public_key().unwrap());
    hsm.import_components(alg, KeyUse::new(usage, true).owned_by("bank-b"), &comps, &kcvs).unwrap()
}

fn rotation_moves_every_key_and_retires_the_old_smk(b: Backend) {
    let Some(cfg) = rotating_token(b, "rotate") else { return };
    let rec = Recorder::new();
    let hsm = Pkcs11Hsm::open(&cfg, rec.clone()).unwrap();
    let (smk, next) = (r::random(32), r::random(32));
    let old_kcv = form(&hsm, &smk, false).unwrap();
    assert_eq!(hsm.next_smk_kcv().unwrap(), None);

    // A non-exportable CVK, an exportable IMK, a data key, an HMAC key, and an RSA issuer key.
    let cvk_clear = r::odd_parity(h("0123456789ABCDEFFEDCBA9876543210"));
    let imk_clear = r::odd_parity(r::random(16));
    let data_clear = r::random(32);
    let mac_clear = r::random(32);
    let keys = [
        (import(&hsm, KeyAlg::Des2, KeyUsage::Cvk, false, &cvk_clear), cvk_clear.clone()),
        (import_owned(&hsm, KeyAlg::Des2, KeyUsage::EmvAc, &imk_clear), imk_clear),
        (import(&hsm, KeyAlg::Aes256, KeyUsage::DataEncryption, false, &data_clear), data_clear),
        (import(&hsm, KeyAlg::HmacSha256, KeyUsage::Hmac, false, &mac_clear), mac_clear.clone()),
    ];
    let rsa = hsm.generate_rsa_key_pair(1024, 3, Some("bank-a")).unwrap();
    let mut block = vec![0u8; 128];
    block[1..].copy_from_slice(&r::random(127));
    let signed_before = hsm.rsa_sign_raw(&rsa, &block).unwrap();
    let sealed_before = hsm.seal(&keys[2].0, b"aad", b"card data").unwrap();

    let next_kcv = form(&hsm, &next, true).unwrap();
    assert_eq!(next_kcv, r::kcv(KeyAlg::Aes256, &next));
    assert_eq!(form(&hsm, &next, true).unwrap(), next_kcv, "forming the same next SMK again is a no-op");
    assert_eq!(hsm.next_smk_kcv().unwrap(), Some(next_kcv.clone()));
    assert_eq!(hsm.smk_kcv().unwrap(), Some(old_kcv.clone()), "the SMK stays until the promotion");

    let next_kbpk = r::aes_cbc_encrypt(&next, &[0u8; 16], KBPK_LABEL);
    let mut moved = Vec::new();
    for (old, clear) in &keys {
        let new = hsm.translate_to_next(old).unwrap();
        let (o, n) = (std::str::from_utf8(&old.blob).unwrap(), std::str::from_utf8(&new.blob).unwrap());
        assert_eq!((new.smk_kcv.clone(), new.kcv.clone(), new.alg), (next_kcv.clone(), old.kcv.clone(), old.alg));
        assert_eq!(o.len(), n.len(), "same block length: {o} / {n}");
        assert_eq!(&o[..16], &n[..16], "same header: usage, algorithm, mode, version, exportability, context");
        assert_ne!(o, n);
        assert_eq!(
            r::tr31_d_unwrap_aes256(&next_kbpk, n).as_deref(),
            Some(&clear[..]),
            "opens under the next SMK: {n}"
        );
        assert_eq!(hsm.translate_to_next(&new).unwrap(), new, "a block already moved comes back as it is");
        assert_eq!(new.owner(), old.owner(), "the tenant stays bound");
        // Before the promotion both open here.
        assert_eq!(hsm.kcv(old).unwrap(), old.kcv);
        assert_eq!(hsm.kcv(&new).unwrap(), old.kcv);
        moved.push(new);
    }
    let rsa_new = hsm.rewrap_rsa_to_next(&rsa).unwrap();
    assert_eq!((rsa_new.public.clone(), rsa_new.smk_kcv.clone()), (rsa.public.clone(), next_kcv.clone()));
    assert_ne!(rsa_new.blob, rsa.blob);
    let (o, n) = (std::str::from_utf8(&rsa.blob).unwrap(), std::str::from_utf8(&rsa_new.blob).unwrap());
    assert_eq!(rsa_new.header_text(), rsa.header_text(), "the same header, owner and public key bound: {n}");
    assert_eq!((o.len(), rsa_new.owner().as_deref()), (n.len(), Some("bank-a")));
    let der = r::tr31_d_unwrap_aes256(&next_kbpk, n).expect("the RSA block opens under the next SMK");
    let moved_rsa = openssl::pkey::PKey::private_key_from_pkcs8(&der).unwrap().rsa().unwrap();
    assert_eq!(moved_rsa.n().to_vec(), rsa.public.modulus, "the same key pair");
    assert_eq!(hsm.rsa_sign_raw(&rsa_new, &block).unwrap(), signed_before, "the same private key");

    hsm.promote_next_smk(&next_kcv).unwrap();
    assert_eq!(hsm.smk_kcv().unwrap(), Some(next_kcv.clone()));
    assert_eq!(hsm.next_smk_kcv().unwrap(), None);
    hsm.promote_next_smk(&next_kcv).unwrap();

    // The old SMK is gone: nothing under it opens, on this handle or after reopening the token.
    let reopened = Pkcs11Hsm::open(&cfg, Arc::new(LogHostPath)).unwrap();
    for h in [&hsm, &reopened] {
        assert_eq!(h.smk_kcv().unwrap(), Some(next_kcv.clone()));
        for (old, _) in &keys {
            assert!(matches!(h.kcv(old), Err(HsmError::WrongSmk { .. })), "an old block still opens");
        }
        assert!(matches!(h.rsa_sign_raw(&rsa, &block), Err(HsmError::WrongSmk { .. })));
        for new in &moved {
            assert_eq!(h.kcv(new).unwrap(), new.kcv);
        }
        assert_eq!(h.rsa_sign_raw(&rsa_new, &block).unwrap(), signed_before);
        assert_eq!(&*h.open(&moved[2], b"aad", &sealed_before).unwrap(), b"card data", "sealed data opens as before");
        assert_eq!(h.hmac_sha256(&moved[3], b"x").unwrap().to_vec(), r::hmac_sha256(&mac_clear, b"x"));
        assert_eq!(h.cvv(&moved[0], "4123456789012345", "8701", "101").unwrap(), "561");
        // The header still binds the use: the IMK is no CVK.
        let e = h.cvv(&moved[1], "4123456789012345", "8701", "101").unwrap_err();
        assert!(matches!(e, HsmError::KeyBlock { .. }), "{e}");
        // New keys are made under the new SMK.
        assert_eq!(
            h.generate_key(KeyAlg::Aes128, KeyUse::new(KeyUsage::DataEncryption, false)).unwrap().smk_kcv,
            next_kcv
        );
    }
    let uses = rec.uses();
    match b {
        Backend::Sim => assert!(uses.is_empty(), "hsm-sim rotates inside the module: {uses:?}"),
        Backend::SoftHsm => assert!(uses.iter().any(|u| u.operation == "translate_to_next"), "{uses:?}"),
    }
}

fn rotation_refuses_what_is_not_a_rotation(b: Backend) {
    let Some(cfg) = rotating_token(b, "rotate-refusals") else { return };
    let hsm = Pkcs11Hsm::open(&cfg, Arc::new(LogHostPath)).unwrap();
    let smk = r::random(32);
    // No SMK to rotate.
    assert!(matches!(form(&hsm, &r::random(32), true), Err(HsmError::NoSmk { .. })));
    let kcv = form(&hsm, &smk, false).unwrap();
    let key = hsm.generate_key(KeyAlg::Aes256, KeyUse::new(KeyUsage::DataEncryption, false)).unwrap();
    // No next SMK yet: nothing to translate to, nothing to promote.
    assert!(matches!(hsm.translate_to_next(&key), Err(HsmError::TokenState { .. })));
    assert!(matches!(hsm.promote_next_smk(&kcv), Ok(())), "the SMK already is {kcv}: nothing to do");
    assert!(matches!(hsm.promote_next_smk(&r::kcv(KeyAlg::Aes256, &r::random(32))), Err(HsmError::TokenState { .. })));
    // Components that form the current SMK are no rotation.
    let e = form(&hsm, &smk, true).unwrap_err();
    assert!(matches!(&e, HsmError::Misuse { reason, .. } if reason.contains("current SMK")), "{e}");
    assert_eq!(hsm.next_smk_kcv().unwrap(), None);
    // A next SMK of an abandoned rotation is replaced by the next rotation's.
    let first = form(&hsm, &r::random(32), true).unwrap();
    let second = form(&hsm, &r::random(32), true).unwrap();
    assert_ne!(first, second);
    assert_eq!(hsm.next_smk_kcv().unwrap(), Some(second.clone()));
    // Promoting anything but the next SMK is refused and changes nothing.
    assert!(matches!(hsm.promote_next_smk(&first), Err(HsmError::TokenState { .. })));
    assert_eq!(hsm.smk_kcv().unwrap(), Some(kcv));
    // A block of another token's SMK is not translated.
    let Some(other_cfg) = token_host_path(b, "rotate-other") else { return };
    let other = Pkcs11Hsm::open(&other_cfg, Arc::new(LogHostPath)).unwrap();
    form(&other, &r::random(32), false).unwrap();
    let foreign = other.generate_key(KeyAlg::Aes256, KeyUse::new(KeyUsage::DataEncryption, false)).unwrap();
    assert!(matches!(hsm.translate_to_next(&foreign), Err(HsmError::WrongSmk { .. })));
    // An edited block is not translated (its MAC fails under the current SMK).
    let mut bad = key.clone();
    bad.blob[5] ^= 1;
    let e = hsm.translate_to_next(&bad).unwrap_err();
    assert!(!e.is_device_error(), "{e}");
}

/// hsm-sim makes key blocks inside the module; a slot that leaves the translation mechanism off
/// cannot re-protect them, and says which setting turns it on.
#[test]
fn hsm_sim_without_translation_says_which_setting_rotates() {
    let cfg = token(Backend::Sim, "rotate-off").unwrap();
    let hsm = Pkcs11Hsm::open(&cfg, Arc::new(LogHostPath)).unwrap();
    form(&hsm, &r::random(32), false).unwrap();
    let key = hsm.generate_key(KeyAlg::Aes256, KeyUse::new(KeyUsage::DataEncryption, false)).unwrap();
    form(&hsm, &r::random(32), true).unwrap();
    let e = hsm.translate_to_next(&key).unwrap_err();
    assert!(matches!(&e, HsmError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("kbpk_translate"), "{e}");
}

/// On a pool, the next SMK reaches every member (wrapped to each member's transport key) and the
/// promotion happens on all of them.
#[test]
fn a_pool_rotates_on_every_member() {
    let (a, b) = (token_translating("rotate-pool-a"), token_translating("rotate-pool-b"));
    let mut cfg = PoolConfig::new(vec![a.clone(), b.clone()]);
    cfg.probe_interval_ms = 100;
    let pool = HsmPool::open(&cfg, Arc::new(LogHostPath)).unwrap();
    let old = form(&pool, &r::random(32), false).unwrap();
    let key = pool.generate_key(KeyAlg::Des2, KeyUse::new(KeyUsage::Cvk, false)).unwrap();
    let next = r::random(32);
    let next_kcv = form(&pool, &next, true).unwrap();
    assert_eq!(pool.next_smk_kcv().unwrap(), Some(next_kcv.clone()));
    for c in [&a, &b] {
        assert_eq!(Pkcs11Hsm::open(c, Arc::new(LogHostPath)).unwrap().next_smk_kcv().unwrap(), Some(next_kcv.clone()));
    }
    let moved = pool.translate_to_next(&key).unwrap();
    pool.promote_next_smk(&next_kcv).unwrap();
    assert_eq!(pool.smk_kcv().unwrap(), Some(next_kcv.clone()));
    for s in pool.status() {
        assert_eq!(s.smk_kcv.as_ref(), Some(&next_kcv), "{s:?}");
    }
    for c in [&a, &b] {
        let m = Pkcs11Hsm::open(c, Arc::new(LogHostPath)).unwrap();
        assert_eq!((m.smk_kcv().unwrap(), m.next_smk_kcv().unwrap()), (Some(next_kcv.clone()), None));
        assert_eq!(m.kcv(&moved).unwrap(), key.kcv);
        assert!(matches!(m.kcv(&key), Err(HsmError::WrongSmk { .. })), "old SMK {old} still on a member");
    }
    for _ in 0..10 {
        assert_eq!(pool.kcv(&moved).unwrap(), key.kcv);
    }
}

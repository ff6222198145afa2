//! `HsmPool` without faults: SMK on every member, routing, members with another SMK kept out.
#![allow(clippy::unwrap_used)]

mod common;

use common::reference as r;
use common::{Backend, token, token_host_path};
use quill_hsm::{Hsm, HsmError, HsmPool, KeyAlg, LogHostPath, Pkcs11Hsm, PoolConfig, SlotConfig, SlotState};
use std::sync::Arc;

fn pool(slots: Vec<SlotConfig>) -> HsmPool {
    let mut cfg = PoolConfig::new(slots);
    cfg.probe_interval_ms = 100;
    HsmPool::open(&cfg, Arc::new(LogHostPath)).unwrap()
}

fn form(hsm: &dyn Hsm) -> quill_hsm::Kcv {
    let (comps, kcvs) = r::sealed_components(KeyAlg::Aes256, &r::random(32), 3, &hsm.transport_public_key().unwrap());
    hsm.form_smk(&comps, &kcvs).unwrap()
}

#[test]
fn form_smk_reaches_every_member() {
    let a = token(Backend::Sim, "pool-form-a").unwrap();
    let b = token(Backend::Sim, "pool-form-b").unwrap();
    let c = token(Backend::Sim, "pool-form-c").unwrap();
    let p = pool(vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(p.describe().slots.len(), 3);
    assert_eq!(p.smk_kcv().unwrap(), None);
    // The pool's transport key is the first member's.
    let first = Pkcs11Hsm::open(&a, Arc::new(LogHostPath)).unwrap();
    assert_eq!(p.transport_public_key().unwrap(), first.transport_public_key().unwrap());
    let kcv = form(&p);
    for s in p.status() {
        assert_eq!(s.state, SlotState::Healthy, "{s:?}");
        assert_eq!(s.smk_kcv.as_ref(), Some(&kcv), "{s:?}");
    }
    for cfg in [&a, &b, &c] {
        assert_eq!(Pkcs11Hsm::open(cfg, Arc::new(LogHostPath)).unwrap().smk_kcv().unwrap(), Some(kcv.clone()));
    }
    // Work spreads over the members.
    let w = p.generate_key(KeyAlg::Aes256, common::default_use(KeyAlg::Aes256)).unwrap();
    for _ in 0..30 {
        let s = p.seal(&w, b"", b"x").unwrap();
        assert_eq!(*p.open(&w, b"", &s).unwrap(), b"x");
    }
    let used = p.status().iter().filter(|s| s.ops > 5).count();
    assert!(used >= 2, "{:#?}", p.status());
    // Idempotent on the pool too.
    assert_eq!(p.smk_kcv().unwrap(), Some(kcv));
}

#[test]
fn components_sealed_to_a_later_member_are_opened_there() {
    let a = token(Backend::Sim, "pool-later-a").unwrap();
    let b = token(Backend::Sim, "pool-later-b").unwrap();
    let p = pool(vec![a, b.clone()]);
    let second = Pkcs11Hsm::open(&b, Arc::new(LogHostPath)).unwrap();
    let (comps, kcvs) =
        r::sealed_components(KeyAlg::Aes256, &r::random(32), 2, &second.transport_public_key().unwrap());
    let kcv = p.form_smk(&comps, &kcvs).unwrap();
    assert!(p.status().iter().all(|s| s.smk_kcv.as_ref() == Some(&kcv)), "{:#?}", p.status());
    // Sealed to nobody in the pool: refused as a key error.
    let stranger = token(Backend::Sim, "pool-later-x").unwrap();
    let pk = Pkcs11Hsm::open(&stranger, Arc::new(LogHostPath)).unwrap().transport_public_key().unwrap();
    let (comps, kcvs) = r::sealed_components(KeyAlg::Des2, &r::random_key(KeyAlg::Des2), 2, &pk);
    let e = p.import_components(KeyAlg::Des2, common::default_use(KeyAlg::Des2), &comps, &kcvs).unwrap_err();
    assert!(matches!(e, HsmError::CannotOpen { .. }), "{e}");
    assert!(p.status().iter().all(|s| s.state == SlotState::Healthy));
}

#[test]
fn members_get_the_smk_at_open_and_another_smk_is_kept_out() {
    let a = token(Backend::Sim, "pool-sync-a").unwrap();
    let b = token(Backend::Sim, "pool-sync-b").unwrap();
    let kcv = form(&Pkcs11Hsm::open(&a, Arc::new(LogHostPath)).unwrap());
    // B has no SMK: the pool installs it (wrapped to B's own transport key).
    let p = pool(vec![b.clone(), a.clone()]);
    assert!(p.status().iter().all(|s| s.smk_kcv.as_ref() == Some(&kcv) && s.state == SlotState::Healthy));
    assert_eq!(Pkcs11Hsm::open(&b, Arc::new(LogHostPath)).unwrap().smk_kcv().unwrap(), Some(kcv.clone()));
    drop(p);
    // C holds another SMK: out, with the reason.
    let c = token(Backend::Sim, "pool-sync-c").unwrap();
    let other = form(&Pkcs11Hsm::open(&c, Arc::new(LogHostPath)).unwrap());
    let p = pool(vec![a, c]);
    let st = p.status();
    assert_eq!(st[0].state, SlotState::Healthy);
    assert_eq!(st[1].state, SlotState::Out, "{st:#?}");
    assert!(st[1].last_error.as_deref().unwrap().contains(&format!("holds SMK {other}")), "{st:#?}");
    // Keys go only to members with their SMK; a key under C's SMK finds no one.
    let w = p.generate_key(KeyAlg::Des2, common::default_use(KeyAlg::Des2)).unwrap();
    assert_eq!(w.smk_kcv, kcv);
    assert_eq!(p.kcv(&w).unwrap(), w.kcv);
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(p.status()[1].state, SlotState::Out, "probing does not re-admit a member with another SMK");
}

#[test]
fn a_pool_can_mix_modules() {
    let a = token(Backend::Sim, "pool-mix-sim").unwrap();
    let Some(b) = token_host_path(Backend::SoftHsm, "pool-mix-soft") else { return };
    let p = pool(vec![a, b]);
    let kcv = form(&p);
    let st = p.status();
    assert!(st.iter().all(|s| s.smk_kcv.as_ref() == Some(&kcv)), "{st:#?}");
    assert!(st[1].module.to_string_lossy().contains("softhsm"));
    let key = r::random(32);
    let (comps, kcvs) = r::sealed_components(KeyAlg::HmacSha256, &key, 2, &p.transport_public_key().unwrap());
    let w = p.import_components(KeyAlg::HmacSha256, common::default_use(KeyAlg::HmacSha256), &comps, &kcvs).unwrap();
    for _ in 0..10 {
        assert_eq!(p.hmac_sha256(&w, b"m").unwrap().to_vec(), r::hmac_sha256(&key, b"m"));
    }
    assert!(p.status().iter().all(|s| s.ops > 2), "{:#?}", p.status());
}

//! An SMK rotation on a pool while one member is out (hsm-sim fault injection): the next SMK
//! reaches both members, member A fails and is taken out, the pool promotes the next SMK on B
//! alone; when A answers again it holds the old SMK with the pool's SMK as its next one, is
//! promoted and re-admitted, and the keys moved to the new SMK open on it. One test per binary:
//! the fault file belongs to the binary's hsm-sim instance.
#![allow(clippy::unwrap_used)]

mod common;

use common::reference as r;
use common::{sim_dir, token_translating};
use quill_hsm::tr31::KeyUsage;
use quill_hsm::{Hsm, HsmError, HsmPool, KeyAlg, KeyUse, LogHostPath, Pkcs11Hsm, PoolConfig, SlotState};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn faults(text: &str) {
    std::fs::write(sim_dir().join("faults.toml"), text).unwrap();
    // hsm-sim re-reads the file within 100 ms of a change.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_member_out_during_the_promotion_is_promoted_when_it_returns() {
    let (a, b) = (token_translating("rotate-late-a"), token_translating("rotate-late-b"));
    let slot_a = Pkcs11Hsm::open(&a, Arc::new(LogHostPath)).unwrap().slot_ref().slot;
    let mut cfg = PoolConfig::new(vec![a.clone(), b]);
    cfg.op_timeout_ms = 1_000;
    cfg.probe_interval_ms = 100;
    let pool = HsmPool::open(&cfg, Arc::new(LogHostPath)).unwrap();
    let form = |next: bool| {
        let (comps, kcvs) =
            r::sealed_components(KeyAlg::Aes256, &r::random(32), 3, &pool.transport_public_key().unwrap());
        if next { pool.form_next_smk(&comps, &kcvs).unwrap() } else { pool.form_smk(&comps, &kcvs).unwrap() }
    };
    let old = form(false);
    let key = pool.generate_key(KeyAlg::Des2, KeyUse::new(KeyUsage::Cvk, false)).unwrap();
    let next = form(true);
    assert_eq!(pool.next_smk_kcv().unwrap(), Some(next.clone()), "on both members");
    let moved = pool.translate_to_next(&key).unwrap();

    // A fails: taken out by the work that meets it.
    faults(&format!("failing_slots = [{slot_a}]\n"));
    for _ in 0..10 {
        assert_eq!(pool.kcv(&key).unwrap(), key.kcv);
    }
    assert_eq!(pool.status()[0].state, SlotState::Out, "{:#?}", pool.status());
    pool.promote_next_smk(&next).unwrap();
    assert_eq!(pool.smk_kcv().unwrap(), Some(next.clone()));

    // A answers again: promoted, re-admitted, and serving the moved key.
    faults("");
    let start = Instant::now();
    while pool.status()[0].state != SlotState::Healthy {
        assert!(start.elapsed() < Duration::from_secs(20), "A not re-admitted: {:#?}", pool.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pool.status().iter().all(|s| s.smk_kcv.as_ref() == Some(&next)), "{:#?}", pool.status());
    let member_a = Pkcs11Hsm::open(&a, Arc::new(LogHostPath)).unwrap();
    assert_eq!((member_a.smk_kcv().unwrap(), member_a.next_smk_kcv().unwrap()), (Some(next.clone()), None));
    assert_eq!(member_a.kcv(&moved).unwrap(), key.kcv);
    assert!(matches!(member_a.kcv(&key), Err(HsmError::WrongSmk { .. })), "old SMK {old} still on A");
    for _ in 0..10 {
        assert_eq!(pool.kcv(&moved).unwrap(), key.kcv);
    }
}

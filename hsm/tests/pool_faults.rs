//! `HsmPool` under hsm-sim fault injection (hsm-sim/README.md, "Fault injection"): a failing
//! slot and a dead slot are taken out, work continues on the other slot, and each is re-admitted
//! after it revives. One test per binary: the fault file belongs to the binary's hsm-sim instance.
#![allow(clippy::unwrap_used)]

mod common;

use common::reference as r;
use common::{Backend, sim_dir, token};
use quill_hsm::{Hsm, HsmError, HsmPool, KeyAlg, LogHostPath, PoolConfig, SlotState, SlotStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn faults(text: &str) {
    let path = sim_dir().join("faults.toml");
    std::fs::write(&path, text).unwrap();
    // hsm-sim re-reads the file within 100 ms of a change.
    std::thread::sleep(Duration::from_millis(300));
}

#[track_caller]
fn wait_for(p: &HsmPool, what: &str, ok: impl Fn(&[SlotStatus]) -> bool) {
    let start = Instant::now();
    loop {
        let st = p.status();
        if ok(&st) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting until {what}: {st:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failing_and_dead_slots_are_taken_out_and_readmitted() {
    let a = token(Backend::Sim, "faults-a").unwrap();
    let b = token(Backend::Sim, "faults-b").unwrap();
    let (slot_a, slot_b) = {
        let hsm_a = quill_hsm::Pkcs11Hsm::open(&a, Arc::new(LogHostPath)).unwrap();
        let hsm_b = quill_hsm::Pkcs11Hsm::open(&b, Arc::new(LogHostPath)).unwrap();
        (hsm_a.slot_ref().slot, hsm_b.slot_ref().slot)
    };
    let mut cfg = PoolConfig::new(vec![a, b]);
    cfg.op_timeout_ms = 1_000;
    cfg.probe_interval_ms = 100;
    let p = HsmPool::open(&cfg, Arc::new(LogHostPath)).unwrap();
    let (comps, kcvs) = r::sealed_components(KeyAlg::Aes256, &r::random(32), 3, &p.transport_public_key().unwrap());
    let smk = p.form_smk(&comps, &kcvs).unwrap();
    let key = r::random(32);
    let (comps, kcvs) = r::sealed_components(KeyAlg::HmacSha256, &key, 2, &p.transport_public_key().unwrap());
    let w = p.import_components(KeyAlg::HmacSha256, common::default_use(KeyAlg::HmacSha256), &comps, &kcvs).unwrap();
    let want = r::hmac_sha256(&key, b"audit");
    let work = |n: usize| {
        for _ in 0..n {
            assert_eq!(p.hmac_sha256(&w, b"audit").unwrap().to_vec(), want);
        }
    };
    work(10);
    assert!(p.status().iter().all(|s| s.state == SlotState::Healthy && s.smk_kcv.as_ref() == Some(&smk)));

    // --- slot A fails every operation with CKR_DEVICE_ERROR: taken out, work goes on on B.
    faults(&format!("failing_slots = [{slot_a}]\n"));
    let b_ops = p.status()[1].ops;
    work(20);
    let st = p.status();
    assert_eq!(st[0].state, SlotState::Out, "{st:#?}");
    assert!(st[0].last_error.as_deref().unwrap().contains("CKR_DEVICE_ERROR"), "{st:#?}");
    assert!(st[0].errors >= 1);
    assert_eq!(st[1].state, SlotState::Healthy);
    assert!(st[1].ops >= b_ops + 20, "{st:#?}");
    // Keys generated now come from B and are usable on A later (same SMK).
    let g = p.generate_key(KeyAlg::Aes128, common::default_use(KeyAlg::Aes128)).unwrap();

    // --- A revives: the health checker re-admits it.
    faults("");
    wait_for(&p, "A is re-admitted", |s| s[0].state == SlotState::Healthy);
    work(10);
    assert_eq!(p.kcv(&g).unwrap(), g.kcv);

    // --- slot B stops answering: the first operation sent there times out after 1 s and is
    // retried on A; B stays out while dead.
    faults(&format!("dead_slots = [{slot_b}]\n"));
    let start = Instant::now();
    work(10);
    assert!(start.elapsed() < Duration::from_secs(8), "one timeout at most: {:?}", start.elapsed());
    let st = p.status();
    assert_eq!(st[1].state, SlotState::Out, "{st:#?}");
    assert!(st[1].last_error.as_deref().unwrap().contains("no answer within 1000 ms"), "{st:#?}");
    assert_eq!(st[0].state, SlotState::Healthy);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.status()[1].state, SlotState::Out, "not re-admitted while dead");

    // --- both out: operations fail fast with NoHealthySlot (a device-level error).
    faults(&format!("dead_slots = [{slot_b}]\nfailing_slots = [{slot_a}]\n"));
    let e = (0..3).find_map(|_| p.hmac_sha256(&w, b"audit").err()).unwrap();
    assert!(matches!(e, HsmError::NoHealthySlot { .. }), "{e}");
    assert!(e.is_device_error());

    // --- everything revives: both re-admitted, work spreads again.
    faults("");
    wait_for(&p, "both are re-admitted", |s| s.iter().all(|x| x.state == SlotState::Healthy));
    let before: Vec<u64> = p.status().iter().map(|s| s.ops).collect();
    work(20);
    let after: Vec<u64> = p.status().iter().map(|s| s.ops).collect();
    assert!(after[0] > before[0] && after[1] > before[1], "{before:?} -> {after:?}");
}

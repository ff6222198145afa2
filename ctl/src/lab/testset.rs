//! `quill dev load-test-keys`: put the published TEST key set (docs/test-keys.md) into a running
//! cluster the way production keys get there, for the demo, the tests and lab runs:
//!
//! - every symmetric TEST key through a working-key ceremony with two components, submitted by
//!   two TEST custodians (each component sealed to every node's HSM transport key; the nodes form
//!   the key inside their HSMs and check its KCV);
//! - the Quill TEST CA public key under each TEST issuer's RID;
//! - every TEST issuer key pair generated in a node's HSM and certified by the TEST CA.
//!
//! Keys that are already in the inventory are left alone, so running it twice is harmless.
#![cfg_attr(not(feature = "test-keys"), allow(dead_code, unused_imports, unused_variables))]

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use quill_hsm::{KeyAlg, Usage};
#[cfg(feature = "test-keys")]
use quill_prep::testkeys::TestKeys;
use quill_proto::v1::{CaImportRequest, CeremonyStartRequest, CeremonySubmitRequest, SealedCopy};
use serde_json::json;
use zeroize::Zeroizing;

use crate::client::{Session, Who};
use crate::output::print;

/// `quill dev load-test-keys`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    #[command(flatten)]
    who: Who,
}

fn with_actor(who: &Who, actor: &str) -> Who {
    let mut target = who.target.clone();
    target.actor = Some(actor.to_string());
    Who { target }
}

/// `quill dev load-test-keys`.
/// `quill dev load-test-keys` (a build without the TEST keys refuses it).
#[cfg(not(feature = "test-keys"))]
pub fn load(_: &LoadArgs, _: bool) -> Result<u8> {
    Err(crate::lab::no_test_keys("quill dev load-test-keys"))
}

#[cfg(feature = "test-keys")]
pub fn load(a: &LoadArgs, json: bool) -> Result<u8> {
    let admin_who = if a.who.target.actor.is_some() { a.who.clone() } else { with_actor(&a.who, "admin:TEST-loader") };
    let mut admin = Session::new(&admin_who)?;
    let mut alice = Session::new(&with_actor(&a.who, "custodian:TEST-alice"))?;
    let mut bob = Session::new(&with_actor(&a.who, "custodian:TEST-bob"))?;
    let set = TestKeys::builtin();
    let held = admin.keys_list()?;
    let nodes = admin.nodes()?;
    if nodes.is_empty() {
        bail!("no node is enrolled yet");
    }
    let mut started = Vec::new();
    for k in set.keys.iter().filter(|k| k.label != "SMK-TEST") {
        if held.iter().any(|h| h.label == k.label) {
            continue;
        }
        let alg: KeyAlg = k.alg.parse().map_err(|e: String| anyhow!("{}: {e}", k.label))?;
        // The usage the fixture gives the key: the one the prep engine needs of its step.
        let usage: Usage = k.usage.parse().map_err(|e: String| anyhow!("{}: {e}", k.label))?;
        let id = format!("test-{}", k.label.to_ascii_lowercase());
        let req = CeremonyStartRequest {
            caller: None,
            id: id.clone(),
            components: 2,
            smk: false,
            label: k.label.clone(),
            usage: usage.to_string(),
            alg: alg.to_string(),
            exportable: false,
            tenant: String::new(),
            smk_next: false,
        };
        admin.ceremony_start(req).with_context(|| k.label.clone())?;
        let c = admin.ceremony(&id)?;
        for (s, comp, kcv) in
            [(&mut alice, &k.components[0], &k.component_kcvs[0]), (&mut bob, &k.components[1], &k.component_kcvs[1])]
        {
            let clear = Zeroizing::new(hex::decode(comp).map_err(|_| anyhow!("{}: component is not hex", k.label))?);
            let mut sealed = Vec::new();
            for nid in &c.recipients {
                let n = nodes.iter().find(|n| n.id == *nid).ok_or_else(|| anyhow!("node {nid} is not enrolled"))?;
                let transport = crate::ops::keys::transport_key(n)?;
                sealed.push(SealedCopy { node: *nid, sealed: transport.seal(&clear).map_err(|e| anyhow!("{e}"))? });
            }
            s.ceremony_submit(CeremonySubmitRequest { caller: None, id: id.clone(), kcv: kcv.clone(), sealed })
                .with_context(|| format!("{}: component", k.label))?;
        }
        started.push((id, k.label.clone(), k.kcv.clone()));
    }
    // Wait until every key formed (a node holding the SMK does it).
    let deadline = Instant::now() + Duration::from_secs(120);
    for (id, label, kcv) in &started {
        loop {
            let c = admin.ceremony(id)?;
            if c.state == "formed" {
                let got = c.kcv;
                if &got != kcv {
                    bail!("{label}: formed with KCV {got}, the TEST set says {kcv}");
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("{label}: ceremony {id} did not form within 120 s (state {})", c.state);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Issuers: the TEST CA, key pairs generated in an HSM, certified.
    let issuers = admin.issuer_keys()?;
    let mut rids = Vec::new();
    for i in &set.issuers {
        if !rids.contains(&i.rid) {
            rids.push(i.rid.clone());
        }
    }
    let cas = admin.ca_keys()?;
    for rid in &rids {
        let already = cas.iter().any(|c| c.rid == *rid && c.index == 0xFE);
        if already {
            continue;
        }
        let rid_bytes: [u8; 5] =
            hex::decode(rid).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| anyhow!("bad RID {rid}"))?;
        let k = quill_prep::test_ca::public(rid_bytes).map_err(|e| anyhow!(e))?;
        admin.ca_import(CaImportRequest {
            caller: None,
            rid: rid.clone(),
            index: u32::from(quill_prep::test_ca::TEST_CA_INDEX),
            modulus: k.public_key().modulus().to_vec(),
            exponent: k.public_key().exponent().to_vec(),
            checksum: None,
        })?;
    }
    let mut certified = 0;
    for i in &set.issuers {
        if issuers.iter().any(|h| h.label == i.label && !h.certificate.is_empty()) {
            continue;
        }
        if !issuers.iter().any(|h| h.label == i.label) {
            crate::ops::issuers::generate_request(&mut admin, &i.label, (i.bits, i.exponent), "")?;
        }
        crate::ops::issuers::certify_test(&mut admin, &i.label, &i.issuer_id, &i.rid, &i.expiry)?;
        certified += 1;
    }
    print(
        json,
        json!({"keys": started.len(), "issuers": certified, "test_keys": true}),
        format!(
            "TEST key set loaded: {} key(s) formed from components by ceremony, {} issuer key(s) generated and certified by the TEST CA (TEST keys: never for real cards)",
            started.len(),
            certified
        ),
    );
    Ok(crate::exit_codes::OK)
}

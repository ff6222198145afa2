//! Key distribution between sites: `quill target add|list` and `quill key distribute`.
//!
//! The key site registers each production site (another Quill cluster) with its endpoint, its CA
//! certificate (by SHA-256) and the KBPK the two formed from the same components. A key goes out
//! in two steps, as every export: `quill key distribute --key K --target T` asks for the
//! dual-control approval to export K under T's KBPK; once two custodians granted it,
//! `quill key distribute --approval A --target T --target-identity DIR` exports the TR-31 block,
//! pushes it to T's `Exchange` service with the identity T issued this site (`partner:<site>`,
//! checked to chain to T's registered CA), and records the delivery here with the KCV T
//! answered; a KCV that is not the key's is refused (and that refusal is in the audit chain).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use quill_proto::v1::approval_ask_request::Action;
use quill_proto::v1::{
    ApprovalAskRequest, ExchangeImportRequest, ExchangeListRequest, ExchangeReceiveKbpkRequest, ExportAction,
    ExportTr31Request, KdhKeyRequest, KeyDeliveredRequest, ListTargetsRequest, PartnerKeyView, TargetConfirmRequest,
    TargetSetRequest, TargetTransportRequest, TargetView,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::client::{Session, Target, Who};
use crate::exit_codes::CliError;
use crate::output::print;

/// `quill target add`.
#[derive(clap::Args, Debug)]
pub struct TargetAddArgs {
    /// The site's name here.
    #[arg(long)]
    name: String,
    /// Its API endpoint, `host:port`.
    #[arg(long = "target-endpoint", value_name = "HOST:PORT")]
    target_endpoint: String,
    /// Its CA certificate (PEM): a push reaches only a cluster whose certificates chain to it.
    #[arg(long)]
    ca: PathBuf,
    /// The KBPK between the two sites: an active K0/K1 formed from components (inventory id).
    /// Without it, the KBPK is established by transport (quill target transport).
    #[arg(long)]
    kbpk: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// SHA-256 (hex) of the first certificate (DER) of a PEM file.
fn ca_sha256(path: &Path) -> Result<String> {
    let certs = quill_trust::tls::load_certs(path).map_err(|e| CliError::Usage(e.to_string()))?;
    let first = certs.first().ok_or_else(|| CliError::Usage(format!("{}: no certificate", path.display())))?;
    Ok(hex::encode_upper(Sha256::digest(first.as_ref())))
}

/// `quill target add`.
pub fn target_add(a: &TargetAddArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req = TargetSetRequest {
        caller: None,
        name: a.name.clone(),
        endpoint: a.target_endpoint.clone(),
        ca_sha256: ca_sha256(&a.ca)?,
        kbpk: a.kbpk.clone().unwrap_or_default(),
    };
    let detail = s.keys_write(|mut c, caller| {
        let req = TargetSetRequest { caller: Some(caller), ..req.clone() };
        async move { c.target_set(req).await }
    })?;
    print(json, json!({"result": "set", "target": a.name, "detail": detail}), format!("target {}: {detail}", a.name));
    Ok(crate::exit_codes::OK)
}

/// `quill target list`.
#[derive(clap::Args, Debug)]
pub struct TargetListArgs {
    #[command(flatten)]
    who: Who,
}

fn targets(s: &Session) -> Result<Vec<TargetView>> {
    Ok(s.call_keys(|mut c| async move { c.list_targets(ListTargetsRequest { linearizable: true }).await })?.targets)
}

/// The target registered as `name`.
fn target_named(s: &Session, name: &str) -> Result<TargetView> {
    Ok(targets(s)?
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| CliError::Usage(format!("no target {name} (quill target add)")))?)
}

/// `quill target list`.
pub fn target_list(a: &TargetListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let ts = targets(&s)?;
    if json {
        let v: Vec<_> = ts
            .iter()
            .map(|t| {
                json!({"name": t.name, "endpoint": t.endpoint, "ca_sha256": t.ca_sha256, "kbpk": t.kbpk,
                       "kbpk_kcv": t.kbpk_kcv,
                       "transported": (!t.transported_key.is_empty()).then(|| json!({"key": t.transported_key,
                           "node": t.transported_node, "krd": t.transported_krd, "confirmed": t.transported_confirmed})),
                       "deliveries": t.deliveries.iter().map(|d| json!({"key": d.key, "kcv": d.kcv,
                           "remote_key": d.remote_key, "approval": d.approval, "time_ms": d.time_ms}))
                           .collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", json!({"targets": v}));
    } else {
        for t in &ts {
            println!(
                "{}  {}  KBPK {} (KCV {})  CA {}…",
                t.name,
                t.endpoint,
                t.kbpk,
                t.kbpk_kcv,
                &t.ca_sha256[..16.min(t.ca_sha256.len())]
            );
            if !t.transported_key.is_empty() {
                println!(
                    "  KBPK {} sent by transport to node {} (transport key {}…), {}",
                    t.transported_key,
                    t.transported_node,
                    &t.transported_krd[..16.min(t.transported_krd.len())],
                    if t.transported_confirmed { "confirmed" } else { "not confirmed" }
                );
            }
            for d in &t.deliveries {
                println!("  {} → {} (KCV {}, approval {})", d.key, d.remote_key, d.kcv, d.approval);
            }
        }
    }
    Ok(crate::exit_codes::OK)
}

/// `quill key distribute`.
#[derive(clap::Args, Debug)]
pub struct DistributeArgs {
    /// The key to distribute (asks for the export approval).
    #[arg(long, conflicts_with = "approval")]
    key: Option<String>,
    /// The target site.
    #[arg(long)]
    target: String,
    /// Run an approved distribution.
    #[arg(long, requires = "target_identity")]
    approval: Option<String>,
    /// The identity the target issued this site (`partner:<site>`: cert.pem, key.pem, and the
    /// target's CA as ca.pem).
    #[arg(long = "target-identity", value_name = "DIR")]
    target_identity: Option<PathBuf>,
    /// The label the target files the key under (as `<site>.<label>`) [default: the key's].
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill key distribute`.
pub fn distribute(a: &DistributeArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let target = target_named(&s, &a.target)?;
    if let Some(key) = &a.key {
        let id = crate::ops::keys::new_id("dist");
        let action = Action::Export(ExportAction { key: key.clone(), kbpk: target.kbpk.clone() });
        let detail = s.keys_write(|mut c, caller| {
            let req = ApprovalAskRequest {
                caller: Some(caller),
                id: id.clone(),
                action: Some(action.clone()),
                ttl_hours: 0,
                ttl_seconds: 0,
            };
            async move { c.approval_ask(req).await }
        })?;
        print(
            json,
            json!({"result": "approval requested", "approval": id, "target": target.name, "detail": detail}),
            format!(
                "approval {id} requested ({detail}); two custodians must run: quill approve grant {id}; then: quill key distribute --approval {id} --target {} --target-identity DIR",
                target.name
            ),
        );
        return Ok(crate::exit_codes::OK);
    }
    let approval = a.approval.clone().ok_or_else(|| CliError::Usage("give --key, or --approval".into()))?;
    let dir = a.target_identity.clone().ok_or_else(|| CliError::Usage("--approval needs --target-identity".into()))?;
    let mut there = connect_target(&target, &dir)?;

    let req = ExportTr31Request { caller: Some(s.caller()), approval: approval.clone() };
    let exported = s.call_keys(|mut c| {
        let req = req.clone();
        async move { c.export_tr31(req).await }
    })?;
    let label = match &a.label {
        Some(l) => l.clone(),
        None => key_label(&s, &approval)?,
    };
    let req = ExchangeImportRequest { caller: Some(there.caller()), label, block: exported.block.clone() };
    let imported = there
        .call_exchange(|mut c| {
            let req = req.clone();
            async move { c.import(req).await }
        })
        .with_context(|| format!("target {} did not take the block", target.name))?;
    let k = imported.key.ok_or_else(|| anyhow!("target {} answered without the key it imported", target.name))?;
    record_delivery(&mut s, &target, &approval, &k, json)
}

/// Records that the key exported under `approval` is `target`'s key `k` (the KCV it answered is
/// checked against the key's when applied), and prints it.
fn record_delivery(s: &mut Session, target: &TargetView, approval: &str, k: &PartnerKeyView, json: bool) -> Result<u8> {
    let detail = s.keys_write(|mut c, caller| {
        let req = KeyDeliveredRequest {
            caller: Some(caller),
            target: target.name.clone(),
            approval: approval.to_string(),
            kcv: k.kcv.clone(),
            remote_key: k.id.clone(),
        };
        async move { c.key_delivered(req).await }
    })?;
    print(
        json,
        json!({"result": "delivered", "target": target.name, "approval": approval, "remote_key": k.id, "kcv": k.kcv,
               "usage": k.usage, "exportable": k.exportable, "detail": detail}),
        detail,
    );
    Ok(crate::exit_codes::OK)
}

/// A session with `target`'s API as the identity in `dir` (the `partner:<site>` identity the
/// target issued), once `dir/ca.pem` is the CA registered for the target: a push reaches only
/// the registered cluster.
fn connect_target(target: &TargetView, dir: &Path) -> Result<Session> {
    let ca = ca_sha256(&dir.join("ca.pem"))?;
    if !ca.eq_ignore_ascii_case(&target.ca_sha256) {
        return Err(CliError::CheckFailed(format!(
            "{}: its CA (SHA-256 {ca}) is not target {}'s (SHA-256 {}): nothing sent",
            dir.display(),
            target.name,
            target.ca_sha256
        ))
        .into());
    }
    Session::new(&Who {
        target: Target {
            endpoint: Some(target.endpoint.clone()),
            endpoints: Vec::new(),
            dev_dir: None,
            identity: Some(dir.to_path_buf()),
            actor: None,
        },
    })
    .with_context(|| format!("connecting to target {}", target.name))
}

/// `quill target kdh`.
#[derive(clap::Args, Debug)]
pub struct KdhArgs {
    /// Write the public key (PEM) here, for the receiving sites to pin.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    who: Who,
}

/// `quill target kdh`: this site's signing key for KBPK transport (made in the HSM on first use).
pub fn kdh(a: &KdhArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let caller = s.caller();
    let r = s.call_keys(|mut c| {
        let req = KdhKeyRequest { caller: Some(caller.clone()) };
        async move { c.kdh_key(req).await }
    })?;
    if let Some(out) = &a.out {
        quill_trust::tls::pki::write_file(out, r.public_pem.as_bytes(), 0o644)
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    print(
        json,
        json!({"fingerprint": r.fingerprint, "public_pem": r.public_pem, "created": r.result.is_some()}),
        format!(
            "signing key for KBPK transport: SHA-256 {}{}\nread the SHA-256 out to each receiving site (quill exchange kdh --fingerprint)",
            r.fingerprint,
            if r.result.is_some() { " (made now)" } else { "" }
        ),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill target transport`.
#[derive(clap::Args, Debug)]
pub struct TransportArgs {
    /// The target site.
    #[arg(long)]
    target: String,
    /// Its CA certificate (PEM): the one registered with the target.
    #[arg(long)]
    ca: PathBuf,
    /// The target node's transport key certificate (PEM), from the target's PKI
    /// (quill pki transport-cert).
    #[arg(long, value_name = "FILE")]
    krd: PathBuf,
    /// The identity the target issued this site (`partner:<site>`: cert.pem, key.pem, ca.pem).
    #[arg(long = "target-identity", value_name = "DIR")]
    target_identity: PathBuf,
    #[command(flatten)]
    who: Who,
}

/// `quill target transport`: a KBPK generated here for the target node's certified transport
/// key, signed, pushed to that node (`Exchange.ReceiveKbpk`), and made the target's KBPK here
/// once the target answers its KCV.
pub fn transport(a: &TransportArgs, json: bool) -> Result<u8> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| CliError::Usage(format!("{}: {e}", p.display())));
    let (ca_pem, krd_pem) = (read(&a.ca)?, read(&a.krd)?);
    let mut s = Session::new(&a.who)?;
    let target = target_named(&s, &a.target)?;
    // Connect first: nothing is generated for a target this identity cannot reach.
    let mut there = connect_target(&target, &a.target_identity)?;
    let caller = s.caller();
    let sent = s.call_keys(|mut c| {
        let req = TargetTransportRequest {
            caller: Some(caller.clone()),
            target: target.name.clone(),
            ca_pem: ca_pem.clone(),
            krd_pem: krd_pem.clone(),
        };
        async move { c.target_transport(req).await }
    })?;
    let req = ExchangeReceiveKbpkRequest {
        caller: Some(there.caller()),
        envelope: sent.envelope.clone(),
        signature: sent.signature.clone(),
    };
    let got = there
        .call_exchange(|mut c| {
            let req = req.clone();
            async move { c.receive_kbpk(req).await }
        })
        .with_context(|| format!("target {} did not take the KBPK {}", target.name, sent.key))?;
    let detail = s.keys_write(|mut c, caller| {
        let req = TargetConfirmRequest {
            caller: Some(caller),
            target: target.name.clone(),
            kcv: got.kcv.clone(),
            remote_key: got.key.clone(),
        };
        async move { c.target_confirm(req).await }
    })?;
    print(
        json,
        json!({"result": "established", "target": target.name, "key": sent.key, "kcv": sent.kcv, "node": sent.node,
               "remote_key": got.key, "detail": detail}),
        detail,
    );
    Ok(crate::exit_codes::OK)
}

/// `quill target confirm`.
#[derive(clap::Args, Debug)]
pub struct ConfirmArgs {
    /// The target site.
    #[arg(long)]
    target: String,
    /// The identity the target issued this site (`partner:<site>`: cert.pem, key.pem, ca.pem).
    #[arg(long = "target-identity", value_name = "DIR")]
    target_identity: PathBuf,
    /// Confirm the delivery of the key exported under this approval (`quill key distribute`)
    /// rather than a transported KBPK.
    #[arg(long)]
    approval: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill target confirm`: finish a transport whose answer was lost (the target took the KBPK,
/// this site never heard its KCV): asks the target which zone master key it holds for this site
/// (`Exchange.List`) and records the confirmation if that key's KCV is the KBPK's sent. With
/// `--approval`, the same for a key delivery. Safe to run again: a confirmation already recorded
/// is reported as such.
pub fn confirm(a: &ConfirmArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let target = target_named(&s, &a.target)?;
    if let Some(approval) = &a.approval {
        return confirm_delivery(&mut s, &target, approval, &a.target_identity, json);
    }
    if target.transported_key.is_empty() {
        return Err(
            CliError::Usage(format!("no KBPK was sent to target {} (quill target transport)", target.name)).into()
        );
    }
    let sent = s.key(&target.transported_key)?;
    if target.transported_confirmed {
        let detail = format!("target {} confirmed {} (KCV {}) already", target.name, sent.id, sent.kcv);
        print(json, json!({"result": "confirmed", "target": target.name, "key": sent.id, "kcv": sent.kcv}), detail);
        return Ok(crate::exit_codes::OK);
    }
    let there = connect_target(&target, &a.target_identity)?;
    let held = there
        .call_exchange(|mut c| async move { c.list(ExchangeListRequest { linearizable: true }).await })
        .with_context(|| format!("asking target {} which KBPK it holds", target.name))?;
    if !held.zmk_kcv.eq_ignore_ascii_case(&sent.kcv) {
        return Err(CliError::CheckFailed(format!(
            "target {} holds {:?} (KCV {}) for this site, not {} (KCV {}): the KBPK did not arrive; send a new one \
             (quill target transport)",
            target.name, held.zmk, held.zmk_kcv, sent.id, sent.kcv
        ))
        .into());
    }
    let detail = s.keys_write(|mut c, caller| {
        let req = TargetConfirmRequest {
            caller: Some(caller),
            target: target.name.clone(),
            kcv: held.zmk_kcv.clone(),
            remote_key: held.zmk.clone(),
        };
        async move { c.target_confirm(req).await }
    })?;
    print(
        json,
        json!({"result": "confirmed", "target": target.name, "key": sent.id, "kcv": sent.kcv, "remote_key": held.zmk,
               "detail": detail}),
        detail,
    );
    Ok(crate::exit_codes::OK)
}

/// `quill target confirm --approval A`: a key pushed under export approval `A` whose answer was
/// lost is looked for among the keys the target holds from this site (`Exchange.List`, direction
/// `in`) by its KCV, and its delivery recorded.
fn confirm_delivery(s: &mut Session, target: &TargetView, approval: &str, dir: &Path, json: bool) -> Result<u8> {
    if let Some(d) = target.deliveries.iter().find(|d| d.approval == approval) {
        let detail = format!(
            "the delivery of approval {approval} to {} is recorded already: {} as {} (KCV {})",
            target.name, d.key, d.remote_key, d.kcv
        );
        print(
            json,
            json!({"result": "delivered", "target": target.name, "key": d.key, "remote_key": d.remote_key,
                   "kcv": d.kcv, "detail": detail}),
            detail,
        );
        return Ok(crate::exit_codes::OK);
    }
    let kid = approval_key(s, approval)?;
    let sent = s.key(&kid)?;
    let there = connect_target(target, dir)?;
    let held = there
        .call_exchange(|mut c| async move { c.list(ExchangeListRequest { linearizable: true }).await })
        .with_context(|| format!("asking target {} which keys it holds from this site", target.name))?;
    let Some(k) = held.keys.iter().rev().find(|k| k.direction == "in" && k.kcv.eq_ignore_ascii_case(&sent.kcv)) else {
        return Err(CliError::CheckFailed(format!(
            "target {} holds no key from this site with KCV {} ({kid}): the block did not arrive; run the \
             distribution again",
            target.name, sent.kcv
        ))
        .into());
    };
    record_delivery(s, target, approval, k, json)
}

/// The label of the key an export approval names.
fn key_label(s: &Session, approval: &str) -> Result<String> {
    Ok(s.key(&approval_key(s, approval)?)?.label)
}

/// The key an export approval names.
fn approval_key(s: &Session, approval: &str) -> Result<String> {
    let a = s
        .approvals()?
        .into_iter()
        .find(|x| x.id == approval)
        .ok_or_else(|| CliError::Usage(format!("no approval {approval}")))?;
    Ok(a.action.map(|x| x.key).unwrap_or_default())
}

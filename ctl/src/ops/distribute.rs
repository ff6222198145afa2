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
    ApprovalAskRequest, ExchangeImportRequest, ExportAction, ExportTr31Request, KeyDeliveredRequest,
    ListTargetsRequest, TargetSetRequest, TargetView,
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
    #[arg(long)]
    kbpk: String,
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
        kbpk: a.kbpk.clone(),
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
    let target = targets(&s)?
        .into_iter()
        .find(|t| t.name == a.target)
        .ok_or_else(|| CliError::Usage(format!("no target {} (quill target add)", a.target)))?;
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
    // The push reaches only the registered cluster: the identity's CA is the one registered.
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
    let mut there = Session::new(&Who {
        target: Target {
            endpoint: Some(target.endpoint.clone()),
            endpoints: Vec::new(),
            dev_dir: None,
            identity: Some(dir.clone()),
            actor: None,
        },
    })
    .with_context(|| format!("connecting to target {}", target.name))?;

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
    let detail = s.keys_write(|mut c, caller| {
        let req = KeyDeliveredRequest {
            caller: Some(caller),
            target: target.name.clone(),
            approval: approval.clone(),
            kcv: k.kcv.clone(),
            remote_key: k.id.clone(),
        };
        async move { c.key_delivered(req).await }
    })?;
    print(
        json,
        json!({"result": "delivered", "target": target.name, "remote_key": k.id, "kcv": k.kcv, "usage": k.usage,
               "exportable": k.exportable, "detail": detail}),
        detail,
    );
    Ok(crate::exit_codes::OK)
}

/// The label of the key an export approval names.
fn key_label(s: &Session, approval: &str) -> Result<String> {
    let a = s
        .approvals()?
        .into_iter()
        .find(|x| x.id == approval)
        .ok_or_else(|| CliError::Usage(format!("no approval {approval}")))?;
    let key = a.action.map(|x| x.key).unwrap_or_default();
    Ok(s.key(&key)?.label)
}

//! `quill exchange`: partner key exchange (GIE-CB style).
//!
//! The bureau's side (admin): `quill exchange zmk --partner P --key ZMK` names a partner and its
//! zone master key (an active K0 key formed by a component ceremony both sides hold the
//! components of); `quill exchange share --partner P --key K [--stop]`; `quill exchange partners`.
//! The partner's side (its `partner:<name>` certificate): `quill exchange import --label L --tr31
//! BLOCK`, `quill exchange export --key K`, `quill exchange list` (the keys it sees, with KCVs).

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use quill_proto::v1::{
    ExchangeExportRequest, ExchangeImportRequest, ExchangeListRequest, ListPartnersRequest, PartnerSetRequest,
    PartnerShareRequest,
};
use serde_json::json;

use crate::client::{Session, Who};
use crate::output::print;

/// `quill exchange zmk`.
#[derive(clap::Args, Debug)]
pub struct ZmkArgs {
    /// The partner's name, as its `partner:<name>` certificate carries it.
    #[arg(long)]
    partner: String,
    /// Its zone master key: an active K0 key formed from components (e.g. zmk-gie.v1).
    #[arg(long)]
    key: String,
    #[command(flatten)]
    who: Who,
}

/// `quill exchange zmk`.
pub fn zmk(a: &ZmkArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req = PartnerSetRequest { caller: None, name: a.partner.clone(), zmk: a.key.clone(), ..Default::default() };
    let detail = s.keys_write(|mut c, caller| {
        let req = PartnerSetRequest { caller: Some(caller), ..req.clone() };
        async move { c.partner_set(req).await }
    })?;
    print(
        json,
        json!({"result": "set", "partner": a.partner, "detail": detail}),
        format!("partner {}: {detail}", a.partner),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill exchange kdh`.
#[derive(clap::Args, Debug)]
pub struct KdhArgs {
    /// The partner's name, as its `partner:<name>` certificate carries it.
    #[arg(long)]
    partner: String,
    /// Its signing key for KBPK transport (PEM public key, from `quill target kdh` there).
    #[arg(long, value_name = "FILE")]
    public: PathBuf,
    /// Its SHA-256 as the partner read it out: pinned only if it matches.
    #[arg(long, value_name = "HEX")]
    fingerprint: String,
    #[command(flatten)]
    who: Who,
}

/// `quill exchange kdh`: pin a partner's signing key; the partner then sends its zone master key
/// by transport (`quill target transport` on its side).
pub fn kdh(a: &KdhArgs, json: bool) -> Result<u8> {
    let pem = std::fs::read_to_string(&a.public)
        .map_err(|e| crate::exit_codes::CliError::Usage(format!("{}: {e}", a.public.display())))?;
    let mut s = Session::new(&a.who)?;
    let req = PartnerSetRequest {
        caller: None,
        name: a.partner.clone(),
        zmk: String::new(),
        kdh_pem: pem,
        kdh_fingerprint: a.fingerprint.clone(),
    };
    let detail = s.keys_write(|mut c, caller| {
        let req = PartnerSetRequest { caller: Some(caller), ..req.clone() };
        async move { c.partner_set(req).await }
    })?;
    print(
        json,
        json!({"result": "pinned", "partner": a.partner, "detail": detail}),
        format!("partner {}: {detail}", a.partner),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill exchange share`.
#[derive(clap::Args, Debug)]
pub struct ShareArgs {
    #[arg(long)]
    partner: String,
    /// The key (inventory id) to share; it must be exportable.
    #[arg(long)]
    key: String,
    /// Stop sharing it.
    #[arg(long)]
    stop: bool,
    #[command(flatten)]
    who: Who,
}

/// `quill exchange share`.
pub fn share(a: &ShareArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req = PartnerShareRequest { caller: None, name: a.partner.clone(), key: a.key.clone(), share: !a.stop };
    let detail = s.keys_write(|mut c, caller| {
        let req = PartnerShareRequest { caller: Some(caller), ..req.clone() };
        async move { c.partner_share(req).await }
    })?;
    print(json, json!({"result": if a.stop { "unshared" } else { "shared" }, "detail": detail}), detail);
    Ok(crate::exit_codes::OK)
}

/// `quill exchange partners|list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    who: Who,
}

/// `quill exchange partners`.
pub fn partners(a: &ListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let ps =
        s.call_keys(|mut c| async move { c.list_partners(ListPartnersRequest { linearizable: true }).await })?.partners;
    if json {
        let v: Vec<_> = ps
            .iter()
            .map(|p| json!({"name": p.name, "zmk": p.zmk, "shared": p.shared, "imported": p.imported, "kdh_fingerprint": p.kdh_fingerprint}))
            .collect();
        println!("{}", json!({"partners": v}));
        return Ok(crate::exit_codes::OK);
    }
    let mut rows = vec![["PARTNER", "ZMK", "SHARED", "IMPORTED"].map(String::from).to_vec()];
    for p in &ps {
        rows.push(vec![p.name.clone(), p.zmk.clone(), p.shared.join(","), p.imported.join(",")]);
    }
    print!("{}", crate::output::render_table(&rows));
    Ok(crate::exit_codes::OK)
}

/// `quill exchange import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Filed as `<partner>.<label>`.
    #[arg(long)]
    label: String,
    /// The TR-31 block under the zone master key.
    #[arg(long)]
    tr31: String,
    #[command(flatten)]
    who: Who,
}

/// `quill exchange import` (as the partner).
pub fn import(a: &ImportArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req =
        ExchangeImportRequest { caller: Some(s.caller()), label: a.label.clone(), block: a.tr31.trim().to_string() };
    let r = s.call_exchange(|mut c| {
        let req = req.clone();
        async move { c.import(req).await }
    })?;
    let k = r.key.ok_or_else(|| anyhow!("the node answered without the key it imported"))?;
    print(
        json,
        json!({"id": k.id, "usage": k.usage, "alg": k.alg, "kcv": k.kcv, "exportable": k.exportable}),
        format!("{}: {} {} KCV {}{}", k.id, k.usage, k.alg, k.kcv, if k.exportable { "" } else { " (not exportable)" }),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill exchange export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The key (inventory id) shared with the partner.
    #[arg(long)]
    key: String,
    #[command(flatten)]
    who: Who,
}

/// `quill exchange export` (as the partner).
pub fn export(a: &ExportArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req = ExchangeExportRequest { caller: Some(s.caller()), key: a.key.clone() };
    let r = s.call_exchange(|mut c| {
        let req = req.clone();
        async move { c.export(req).await }
    })?;
    print(json, json!({"key": a.key, "block": r.block, "kcv": r.kcv}), format!("{}\n(KCV {})", r.block, r.kcv));
    Ok(crate::exit_codes::OK)
}

/// `quill exchange list` (as the partner).
pub fn list(a: &ListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let r = s.call_exchange(|mut c| async move { c.list(ExchangeListRequest { linearizable: true }).await })?;
    if json {
        let v: Vec<_> = r
            .keys
            .iter()
            .map(|k| {
                json!({"id": k.id, "usage": k.usage, "alg": k.alg, "kcv": k.kcv, "direction": k.direction,
                            "exportable": k.exportable, "state": k.state})
            })
            .collect();
        println!("{}", json!({"zmk": r.zmk, "zmk_kcv": r.zmk_kcv, "keys": v}));
        return Ok(crate::exit_codes::OK);
    }
    println!("zone master key {} (KCV {})", r.zmk, r.zmk_kcv);
    let mut rows = vec![["KEY", "USAGE", "ALG", "KCV", "DIRECTION", "STATE"].map(String::from).to_vec()];
    for k in &r.keys {
        rows.push(vec![
            k.id.clone(),
            k.usage.clone(),
            k.alg.clone(),
            k.kcv.clone(),
            k.direction.clone(),
            k.state.clone(),
        ]);
    }
    print!("{}", crate::output::render_table(&rows));
    Ok(crate::exit_codes::OK)
}

//! The EMV CA (`quill ca key|certify|revoke|revoked`, role ca-officer) and the issuer's side of
//! certification (`quill issuer request`, admin). Layouts: `docs/emv-ca.md`.
//!
//! - `quill ca key create --rid R --index I --bits B --exponent 3|65537 --expiry MMYY
//!   --issuer-range LOW-HIGH…`: a CA key pair generated in a node's HSM.
//! - `quill ca key list`, `quill ca key export --rid R --index I -o DIR`: the public key with its
//!   check value as JSON, a Visa-style CA key file and a Mastercard-style key + hash file pair.
//! - `quill issuer request --key K --issuer-id BIN --key-index IIIIII --expiry MMYY --format
//!   visa|mastercard -o DIR`: the self-signed request (and the Mastercard-style hash file).
//! - `quill ca certify REQUEST --rid R --index I [--hash-file F] [--format F]`: asks the
//!   dual-control approval; `quill ca certify --approval A -o DIR` makes the certificate and writes
//!   it in the Visa, Mastercard and UnionPay layouts.
//! - `quill ca revoke --rid R --index I --serial S --reason TEXT`; `quill ca revoked [-o FILE]`
//!   (9-byte entries RID ‖ index ‖ serial); `quill ca revoked --import FILE` (admin).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use quill_prep::emv::ca::{self, RequestFormat, Revocation};
use quill_prep::emv::cert::{CaPublicKey, CertExpiry};
use quill_proto::v1::{
    CaCertifyAskRequest, CaCertifyRequest, CaKeyCreateRequest, CaKeyRevokeRequest, CaRevokeRequest,
    IssuerRequestRequest, ListCaRevocationsRequest, ListOwnCaKeysRequest, OwnCaKeyView,
};
use serde_json::json;

use crate::client::{Session, Who};
use crate::exit_codes::CliError;
use crate::output::print;

fn rid_arg(s: &str) -> Result<String> {
    let b = hex::decode(s)
        .ok()
        .filter(|v| v.len() == 5)
        .ok_or_else(|| CliError::Usage(format!("--rid: {s:?} is not 5 bytes of hex")))?;
    Ok(hex::encode_upper(b))
}

fn index_arg(s: &str) -> Result<u32> {
    u8::from_str_radix(s, 16)
        .map(u32::from)
        .map_err(|_| CliError::Usage(format!("--index: {s:?} is not one byte of hex")).into())
}

/// Write `bytes` to `dir/name` (0644: public files), creating `dir`.
fn write_public(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let p = dir.join(name);
    std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// quill ca key create|list|export
// ---------------------------------------------------------------------------------------------

/// `quill ca key create`.
#[derive(clap::Args, Debug)]
pub struct CaKeyCreateArgs {
    /// RID (5 bytes hex) the key signs for.
    #[arg(long)]
    rid: String,
    /// CA public key index (one byte hex, tag 8F).
    #[arg(long)]
    index: String,
    /// Modulus bits (512 to 1984, a multiple of 8).
    #[arg(long)]
    bits: u32,
    /// Public exponent: 3 or 65537.
    #[arg(long, default_value_t = 3)]
    exponent: u32,
    /// Expiry MMYY: the key signs nothing after the end of that month.
    #[arg(long)]
    expiry: String,
    /// Issuer identifiers it may certify: LOW-HIGH (digits, same length) or a prefix; repeat.
    #[arg(long = "issuer-range", required = true)]
    ranges: Vec<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill ca key create`.
pub fn key_create(a: &CaKeyCreateArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req = CaKeyCreateRequest {
        caller: Some(s.caller()),
        rid: rid_arg(&a.rid)?,
        index: index_arg(&a.index)?,
        bits: a.bits,
        exponent: a.exponent,
        expiry: a.expiry.clone(),
        issuer_ranges: a.ranges.clone(),
    };
    let r = s.call_keys(|mut c| {
        let req = req.clone();
        async move { c.ca_key_create(req).await }
    })?;
    let detail = r.result.map(|w| w.detail).unwrap_or_default();
    let k = r.key.ok_or_else(|| anyhow!("the node answered without the CA key it made"))?;
    print(
        json,
        json!({"result": "created", "rid": k.rid, "index": format!("{:02X}", k.index), "bits": k.bits,
               "checksum": k.checksum, "expiry": k.expiry, "detail": detail}),
        format!("CA key {}/{:02X} created in an HSM: {detail}", k.rid, k.index),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill ca key list|export`: which key.
#[derive(clap::Args, Debug)]
pub struct CaKeyListArgs {
    #[command(flatten)]
    who: Who,
}

fn own_keys(s: &Session) -> Result<Vec<OwnCaKeyView>> {
    Ok(s.call_keys(|mut c| async move { c.list_own_ca_keys(ListOwnCaKeysRequest { linearizable: true }).await })?.keys)
}

/// `quill ca key list`.
pub fn key_list(a: &CaKeyListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let keys = own_keys(&s)?;
    if json {
        let v: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({"rid": k.rid, "index": format!("{:02X}", k.index), "bits": k.bits, "exponent": k.exponent,
                       "checksum": k.checksum, "expiry": k.expiry, "state": k.state, "issuer_ranges": k.issuer_ranges,
                       "next_serial": k.next_serial,
                       "issued": k.issued.iter().map(|c| json!({"serial": c.serial, "issuer_id": c.issuer_id,
                           "expiry": c.expiry, "key_index": c.key_index, "revoked": c.revoked})).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", json!({"ca_keys": v}));
        return Ok(crate::exit_codes::OK);
    }
    let mut rows =
        vec![["CA KEY", "BITS", "EXPIRY", "STATE", "RANGES", "ISSUED", "CHECK VALUE"].map(String::from).to_vec()];
    for k in &keys {
        rows.push(vec![
            format!("{}/{:02X}", k.rid, k.index),
            k.bits.to_string(),
            k.expiry.clone(),
            k.state.clone(),
            k.issuer_ranges.join(","),
            k.issued.len().to_string(),
            k.checksum.clone(),
        ]);
    }
    print!("{}", crate::output::render_table(&rows));
    Ok(crate::exit_codes::OK)
}

/// `quill ca key export`.
#[derive(clap::Args, Debug)]
pub struct CaKeyExportArgs {
    #[arg(long)]
    rid: String,
    #[arg(long)]
    index: String,
    /// Directory for `<RID>-<II>.json`, `.visa`, `.mc.key` and `.mc.hash`.
    #[arg(short = 'o', long)]
    out: PathBuf,
    #[command(flatten)]
    who: Who,
}

/// `quill ca key export`.
pub fn key_export(a: &CaKeyExportArgs, json: bool) -> Result<u8> {
    let (rid, index) = (rid_arg(&a.rid)?, index_arg(&a.index)?);
    let s = Session::new(&a.who)?;
    let k = own_keys(&s)?
        .into_iter()
        .find(|k| k.rid == rid && k.index == index)
        .ok_or_else(|| CliError::Refused(format!("no CA key {rid}/{index:02X} of this CA")))?;
    let rid_b: [u8; 5] = hex::decode(&k.rid)?.try_into().map_err(|_| anyhow!("RID"))?;
    let (m, e, c) = (hex::decode(&k.modulus)?, hex::decode(&k.exponent)?, hex::decode(&k.checksum)?);
    let c: [u8; 20] = c.try_into().map_err(|_| anyhow!("the cluster's check value is not 20 bytes"))?;
    // The check value is computed again here: what leaves is what the cluster holds.
    let key = CaPublicKey::with_checksum(rid_b, k.index as u8, &m, &e, &c).map_err(|e| anyhow!("CA key: {e}"))?;
    let expiry = hex::decode(&k.expiry)
        .ok()
        .and_then(|b| CertExpiry::from_mmyy(b.try_into().ok()?))
        .ok_or_else(|| anyhow!("expiry {:?}", k.expiry))?;
    let stem = format!("{}-{:02X}", k.rid, k.index);
    let doc = json!({"rid": k.rid, "index": format!("{:02X}", k.index), "modulus": k.modulus, "exponent": k.exponent,
                     "checksum": k.checksum, "expiry": k.expiry, "bits": k.bits});
    let mut written = vec![write_public(&a.out, &format!("{stem}.json"), format!("{doc:#}\n").as_bytes())?];
    for (name, bytes) in ca::ca_key_files(&key, expiry) {
        written.push(write_public(&a.out, &name, &bytes)?);
    }
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    print(
        json,
        json!({"result": "exported", "files": names, "checksum": k.checksum}),
        format!("CA key {stem} (check value {}) -> {}", k.checksum, names.join(", ")),
    );
    Ok(crate::exit_codes::OK)
}

// ---------------------------------------------------------------------------------------------
// quill issuer request
// ---------------------------------------------------------------------------------------------

/// `quill issuer request`.
#[derive(clap::Args, Debug)]
pub struct IssuerRequestArgs {
    /// The issuer key pair (generated with `quill issuer generate`).
    #[arg(long)]
    key: String,
    /// Issuer identifier: the BIN, 3 to 8 digits.
    #[arg(long)]
    issuer_id: String,
    /// The index this key has among the issuer's keys, 6 hex digits.
    #[arg(long, default_value = "000001")]
    key_index: String,
    /// The expiry asked for, MMYY.
    #[arg(long)]
    expiry: String,
    /// Layout: visa (header 22) or mastercard (with a hash file).
    #[arg(long, value_parser = ["visa", "mastercard"])]
    format: String,
    /// Directory for the request (`<BIN>-<index>.<format>.req`) and the hash file.
    #[arg(short = 'o', long)]
    out: PathBuf,
    #[command(flatten)]
    who: Who,
}

/// `quill issuer request`.
pub fn issuer_request(a: &IssuerRequestArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req = IssuerRequestRequest {
        caller: Some(s.caller()),
        key: a.key.clone(),
        issuer_id: a.issuer_id.clone(),
        key_index: a.key_index.to_ascii_uppercase(),
        expiry: a.expiry.clone(),
        format: a.format.clone(),
    };
    let r = s.call_keys(|mut c| {
        let req = req.clone();
        async move { c.issuer_request(req).await }
    })?;
    let stem = format!("{}-{}.{}", a.issuer_id, a.key_index.to_ascii_uppercase(), a.format);
    let mut files = vec![write_public(&a.out, &format!("{stem}.req"), &r.request)?];
    if !r.hash_file.is_empty() {
        files.push(write_public(&a.out, &format!("{stem}.hash"), &r.hash_file)?);
    }
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let hash = (!r.hash_file.is_empty()).then(|| hex::encode_upper(&r.hash_file[7..]));
    print(
        json,
        json!({"result": "written", "files": names, "hash": hash}),
        match &hash {
            Some(h) => format!("{}\nread the hash to the CA out of band: {h}", names.join(", ")),
            None => names.join(", "),
        },
    );
    Ok(crate::exit_codes::OK)
}

// ---------------------------------------------------------------------------------------------
// quill ca certify
// ---------------------------------------------------------------------------------------------

/// `quill ca certify`.
#[derive(clap::Args, Debug)]
pub struct CertifyArgs {
    /// The issuer's request file (asks the approval).
    #[arg(required_unless_present = "approval", conflicts_with = "approval")]
    request: Option<PathBuf>,
    /// The CA key that certifies: RID and index.
    #[arg(long, required_unless_present = "approval")]
    rid: Option<String>,
    #[arg(long, required_unless_present = "approval")]
    index: Option<String>,
    /// A Mastercard-style request's hash file (received out of band).
    #[arg(long)]
    hash_file: Option<PathBuf>,
    /// The request's layout [default: mastercard with --hash-file, else visa].
    #[arg(long, value_parser = ["visa", "mastercard"])]
    format: Option<String>,
    /// Make the certificate an approval allows, and write it.
    #[arg(long)]
    approval: Option<String>,
    /// Directory for the certificate files (with --approval).
    #[arg(short = 'o', long, requires = "approval")]
    out: Option<PathBuf>,
    #[command(flatten)]
    who: Who,
}

/// `quill ca certify`.
pub fn certify(a: &CertifyArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    if let Some(approval) = &a.approval {
        let out = a.out.clone().ok_or_else(|| CliError::Usage("--approval needs -o DIR".into()))?;
        let req = CaCertifyRequest { caller: Some(s.caller()), approval: approval.clone() };
        let r = s.call_keys(|mut c| {
            let req = req.clone();
            async move { c.ca_certify(req).await }
        })?;
        let mut files = Vec::new();
        for f in &r.files {
            files.push(write_public(&out.join(&f.layout), &f.name, &f.bytes)?.display().to_string());
        }
        print(
            json,
            json!({"result": "certified", "serial": r.serial, "files": files}),
            format!("certificate serial {} -> {}", r.serial, files.join(", ")),
        );
        return Ok(crate::exit_codes::OK);
    }
    let path = a.request.clone().ok_or_else(|| CliError::Usage("give the request file, or --approval".into()))?;
    let request = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let hash_file = match &a.hash_file {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let format = a.format.clone().unwrap_or_else(|| if hash_file.is_some() { "mastercard" } else { "visa" }.into());
    // Read here first, so a wrong file is named before anything is asked.
    let fmt = RequestFormat::from_name(&format).ok_or_else(|| CliError::Usage(format!("--format {format:?}")))?;
    let parsed = ca::IssuerRequest::parse(fmt, &request)
        .map_err(|e| CliError::CheckFailed(format!("{}: {e}", path.display())))?;
    if let Some(h) = &hash_file {
        parsed.check_hash_file(h).map_err(|e| CliError::CheckFailed(e.to_string()))?;
    }
    let id = crate::ops::keys::new_id("cert");
    let req = CaCertifyAskRequest {
        caller: None,
        id: id.clone(),
        rid: rid_arg(a.rid.as_deref().unwrap_or_default())?,
        index: index_arg(a.index.as_deref().unwrap_or_default())?,
        format,
        request,
        hash_file,
        ttl_hours: 0,
    };
    let detail = s.keys_write(|mut c, caller| {
        let req = CaCertifyAskRequest { caller: Some(caller), ..req.clone() };
        async move { c.ca_certify_ask(req).await }
    })?;
    print(
        json,
        json!({"result": "approval requested", "approval": id, "issuer_id": parsed.issuer_id.digits(),
               "expiry": parsed.expiry.to_string(), "detail": detail}),
        format!(
            "approval {id} requested ({detail}); two custodians must run: quill approve grant {id}; then: quill ca certify --approval {id} -o DIR"
        ),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill ca key revoke`.
#[derive(clap::Args, Debug)]
pub struct CaKeyRevokeArgs {
    #[arg(long)]
    rid: String,
    #[arg(long)]
    index: String,
    /// Why (kept in the audit chain).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    who: Who,
}

/// `quill ca key revoke`.
pub fn key_revoke(a: &CaKeyRevokeArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req = CaKeyRevokeRequest {
        caller: None,
        rid: rid_arg(&a.rid)?,
        index: index_arg(&a.index)?,
        reason: a.reason.clone(),
    };
    let detail = s.keys_write(|mut c, caller| {
        let req = CaKeyRevokeRequest { caller: Some(caller), ..req.clone() };
        async move { c.ca_key_revoke(req).await }
    })?;
    print(json, json!({"result": "revoked", "detail": detail}), detail);
    Ok(crate::exit_codes::OK)
}

// ---------------------------------------------------------------------------------------------
// quill ca revoke / revoked
// ---------------------------------------------------------------------------------------------

/// `quill ca revoke`.
#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    #[arg(long)]
    rid: String,
    #[arg(long)]
    index: String,
    /// The certificate serial, 6 hex digits.
    #[arg(long)]
    serial: String,
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    who: Who,
}

/// `quill ca revoke`.
pub fn revoke(a: &RevokeArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req = CaRevokeRequest {
        caller: None,
        rid: rid_arg(&a.rid)?,
        index: index_arg(&a.index)?,
        serial: a.serial.to_ascii_uppercase(),
        reason: a.reason.clone(),
        list: Vec::new(),
    };
    let detail = s.keys_write(|mut c, caller| {
        let req = CaRevokeRequest { caller: Some(caller), ..req.clone() };
        async move { c.ca_revoke(req).await }
    })?;
    print(json, json!({"result": "revoked", "detail": detail}), detail);
    Ok(crate::exit_codes::OK)
}

/// `quill ca revoked`.
#[derive(clap::Args, Debug)]
pub struct RevokedArgs {
    /// Write the list as 9-byte entries RID ‖ CA index ‖ serial to this file.
    #[arg(short = 'o', long, conflicts_with = "import")]
    out: Option<PathBuf>,
    /// Only this CA key's (RID/II).
    #[arg(long)]
    ca: Option<String>,
    /// Import another CA's revocation list (9-byte entries; admin).
    #[arg(long)]
    import: Option<PathBuf>,
    #[command(flatten)]
    who: Who,
}

/// `quill ca revoked`.
pub fn revoked(a: &RevokedArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    if let Some(p) = &a.import {
        let list = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        let n =
            Revocation::parse_list(&list).map_err(|e| CliError::CheckFailed(format!("{}: {e}", p.display())))?.len();
        let req = CaRevokeRequest { list, reason: format!("revocation list {}", p.display()), ..Default::default() };
        let detail = s.keys_write(|mut c, caller| {
            let req = CaRevokeRequest { caller: Some(caller), ..req.clone() };
            async move { c.ca_revoke(req).await }
        })?;
        print(json, json!({"result": "imported", "entries": n, "detail": detail}), detail);
        return Ok(crate::exit_codes::OK);
    }
    let all = s
        .call_keys(|mut c| async move { c.list_ca_revocations(ListCaRevocationsRequest { linearizable: true }).await })?
        .revocations;
    let want = a.ca.as_deref().map(str::to_ascii_uppercase);
    let list: Vec<_> =
        all.iter().filter(|r| want.as_deref().is_none_or(|w| *w == format!("{}/{:02X}", r.rid, r.index))).collect();
    let mut entries = Vec::new();
    for r in &list {
        entries.push(Revocation {
            rid: hex::decode(&r.rid)?.try_into().map_err(|_| anyhow!("RID {}", r.rid))?,
            ca_index: r.index as u8,
            serial: hex::decode(&r.serial)?.try_into().map_err(|_| anyhow!("serial {}", r.serial))?,
        });
    }
    if let Some(out) = &a.out {
        std::fs::write(out, Revocation::format_list(&entries))
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let v: Vec<_> = list
        .iter()
        .map(|r| {
            json!({"rid": r.rid, "index": format!("{:02X}", r.index), "serial": r.serial, "reason": r.reason,
                        "source": r.source, "by": crate::output::actor(r.by.as_ref())})
        })
        .collect();
    if json {
        println!("{}", json!({"revoked": v}));
    } else {
        let mut rows = vec![["CA KEY", "SERIAL", "SOURCE", "REASON"].map(String::from).to_vec()];
        for r in &list {
            rows.push(vec![format!("{}/{:02X}", r.rid, r.index), r.serial.clone(), r.source.clone(), r.reason.clone()]);
        }
        print!("{}", crate::output::render_table(&rows));
    }
    Ok(crate::exit_codes::OK)
}

//! `quill ca` and `quill issuer`: the EMV offline-data-authentication keys of the inventory.
//!
//! - `quill ca list|import`: the CA public keys the cluster verifies issuer certificates with
//!   (the scheme TEST keys are built in; `--test-ca` imports the Quill TEST CA's public key).
//! - `quill issuer generate LABEL --bits N`: an issuer key pair generated in a node's HSM.
//! - `quill issuer import FILE --layout visa|mastercard|unionpay [--key LABEL] [--rid R]`: a scheme's
//!   issuer-certificate file, verified by the cluster before it is accepted.
//! - `quill issuer certify-test LABEL --issuer-id BIN --rid RID`: certify an issuer key with the
//!   Quill TEST CA (demo and lab only) and import the result bound to the key.
//! - `quill issuer list`.
#![cfg_attr(not(feature = "test-keys"), allow(unused_imports, unused_variables))]

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use quill_prep::emv::cert::{self, CertExpiry, IssuerCertificateRequest, IssuerId, RsaPublicKey};
use quill_prep::test_ca::TEST_CA_INDEX;
#[cfg(feature = "test-keys")]
use quill_prep::testkeys::TestCa;
use quill_proto::v1::issuer_cert_import_request::Source;
use quill_proto::v1::{CaImportRequest, CertFile, CertTags, IssuerCertImportRequest};
use quill_proto::v1::{GenerateKeyRequest, IssuerKeyView};
use serde_json::json;

use crate::client::{Session, Who};
use crate::output::print;

fn rid_bytes(s: &str) -> Result<[u8; 5]> {
    hex::decode(s).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| anyhow!("--rid: {s:?} is not 5 bytes of hex"))
}

fn hex_arg(what: &str, s: &str) -> Result<Vec<u8>> {
    hex::decode(s.trim()).map_err(|_| anyhow!("{what}: not hex"))
}

/// `quill ca list`.
#[derive(clap::Args, Debug)]
pub struct CaListArgs {
    #[command(flatten)]
    who: Who,
}

/// `quill ca list`: the imported CA keys and the built-in scheme TEST keys.
pub fn ca_list(a: &CaListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let cas = s.ca_keys()?;
    let builtin: Vec<_> = cert::SCHEME_TEST_CA_KEYS
        .iter()
        .map(|k| json!({"rid": hex::encode_upper(k.rid), "index": format!("{:02X}", k.index), "checksum": k.checksum}))
        .collect();
    if json {
        println!("{}", json!({"imported": cas, "built_in": builtin}));
        return Ok(crate::exit_codes::OK);
    }
    let mut rows = vec![["RID", "INDEX", "BITS", "CHECK VALUE", "SOURCE"].map(String::from).to_vec()];
    for k in cert::SCHEME_TEST_CA_KEYS {
        rows.push(vec![
            hex::encode_upper(k.rid),
            format!("{:02X}", k.index),
            (k.modulus.len() * 4).to_string(),
            k.checksum.into(),
            "built in (scheme TEST)".into(),
        ]);
    }
    for c in &cas {
        rows.push(vec![
            c.rid.clone(),
            format!("{:02X}", c.index),
            (c.modulus.len() * 4).to_string(),
            c.checksum.clone(),
            format!("imported by {}", crate::output::actor(c.imported_by.as_ref())),
        ]);
    }
    print!("{}", crate::output::render_table(&rows));
    Ok(crate::exit_codes::OK)
}

/// `quill ca import`.
#[derive(clap::Args, Debug)]
pub struct CaImportArgs {
    /// RID (5 bytes hex), e.g. A000000003.
    #[arg(long, required_unless_present = "file")]
    rid: Option<String>,
    /// CA public key index (1 byte hex). With --test-ca: FE.
    #[arg(long)]
    index: Option<String>,
    /// Modulus, hex.
    #[arg(long, required_unless_present_any = ["test_ca", "file"])]
    modulus: Option<String>,
    /// Public exponent, hex (03 or 010001).
    #[arg(long, default_value = "03")]
    exponent: String,
    /// The scheme's SHA-1 check value (RID ‖ index ‖ modulus ‖ exponent), hex; checked.
    #[arg(long)]
    checksum: Option<String>,
    /// Import the Quill TEST CA's public key (prep/test-keys) under --rid, index FE. TEST only.
    #[arg(long, conflicts_with_all = ["modulus", "checksum"])]
    test_ca: bool,
    /// A CA public key file as `quill ca key export` writes it: the JSON, or the Visa-style file
    /// (the check value inside is checked).
    #[arg(long, conflicts_with_all = ["modulus", "checksum", "test_ca", "index"])]
    file: Option<PathBuf>,
    #[command(flatten)]
    who: Who,
}

/// `quill ca import`.
pub fn ca_import(a: &CaImportArgs, json: bool) -> Result<u8> {
    if let Some(path) = &a.file {
        return ca_import_file(a, path, json);
    }
    let rid = rid_bytes(a.rid.as_deref().unwrap_or_default())?;
    let (index, modulus, exponent) = if a.test_ca {
        let k = quill_prep::test_ca::public(rid).map_err(|e| anyhow!(e))?;
        (TEST_CA_INDEX, k.public_key().modulus().to_vec(), k.public_key().exponent().to_vec())
    } else {
        let idx = a.index.as_deref().ok_or_else(|| anyhow!("--index is required"))?;
        let index = u8::from_str_radix(idx, 16).map_err(|_| anyhow!("--index: {idx:?} is not one byte of hex"))?;
        (index, hex_arg("--modulus", a.modulus.as_deref().unwrap_or_default())?, hex_arg("--exponent", &a.exponent)?)
    };
    let checksum = a.checksum.as_deref().map(|c| hex_arg("--checksum", c)).transpose()?;
    let mut s = Session::new(&a.who)?;
    let detail = s.ca_import(CaImportRequest {
        caller: None,
        rid: hex::encode_upper(rid),
        index: u32::from(index),
        modulus,
        exponent,
        checksum,
    })?;
    let rid = hex::encode_upper(rid);
    print(
        json,
        json!({"result": "imported", "rid": rid, "index": format!("{index:02X}"), "detail": detail}),
        format!("CA key {rid}/{index:02X} imported: {detail}"),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill ca import --file`: our JSON (`quill ca key export`) or a Visa-style CA key file; the
/// check value is checked here and again by the cluster.
fn ca_import_file(a: &CaImportArgs, path: &std::path::Path, json: bool) -> Result<u8> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = if bytes.first() == Some(&quill_prep::emv::ca::VISA_CA_KEY_HEADER) {
        quill_prep::emv::ca::parse_ca_key_file(&bytes, None).map_err(|e| anyhow!("{}: {e}", path.display()))?.0
    } else {
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: neither JSON nor a CA key file", path.display()))?;
        let field = |f: &str| -> Result<Vec<u8>> {
            let s = v[f].as_str().ok_or_else(|| anyhow!("{}: no {f:?}", path.display()))?;
            hex::decode(s).map_err(|_| anyhow!("{}: {f}: not hex", path.display()))
        };
        let rid: [u8; 5] = field("rid")?.try_into().map_err(|_| anyhow!("{}: rid is not 5 bytes", path.display()))?;
        let index = match field("index")?.as_slice() {
            [i] => *i,
            _ => return Err(anyhow!("{}: index is not one byte", path.display())),
        };
        let checksum: [u8; 20] =
            field("checksum")?.try_into().map_err(|_| anyhow!("{}: checksum is not 20 bytes", path.display()))?;
        cert::CaPublicKey::with_checksum(rid, index, &field("modulus")?, &field("exponent")?, &checksum)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?
    };
    if let Some(r) = &a.rid
        && rid_bytes(r)? != key.rid()
    {
        return Err(anyhow!("{}: the file's RID is {}, not {r}", path.display(), hex::encode_upper(key.rid())));
    }
    let mut s = Session::new(&a.who)?;
    let rid = hex::encode_upper(key.rid());
    let detail = s.ca_import(CaImportRequest {
        caller: None,
        rid: rid.clone(),
        index: u32::from(key.index()),
        modulus: key.public_key().modulus().to_vec(),
        exponent: key.public_key().exponent().to_vec(),
        checksum: Some(key.checksum().to_vec()),
    })?;
    print(
        json,
        json!({"result": "imported", "rid": rid, "index": format!("{:02X}", key.index()), "detail": detail}),
        format!("CA key {rid}/{:02X} imported from {}: {detail}", key.index(), path.display()),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill issuer generate`.
#[derive(clap::Args, Debug)]
pub struct IssuerGenerateArgs {
    /// Label of the issuer key pair.
    label: String,
    /// Modulus bits (EMV: up to 1984, a multiple of 8).
    #[arg(long)]
    bits: u32,
    /// Public exponent (3 or 65537).
    #[arg(long, default_value_t = 3)]
    exponent: u32,
    /// The tenant the key pair belongs to [default: the identity's one tenant, or `default`].
    #[arg(long, value_name = "T")]
    tenant: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// Generate an issuer key pair in a node's HSM; its record.
pub fn generate_request(
    s: &mut Session,
    label: &str,
    (bits, exponent): (u32, u32),
    tenant: &str,
) -> Result<IssuerKeyView> {
    let req = GenerateKeyRequest {
        caller: Some(s.caller()),
        label: label.to_string(),
        usage: "S0".into(),
        alg: "rsa".into(),
        exportable: false,
        active: true,
        rsa_bits: bits,
        rsa_exponent: exponent,
        tenant: tenant.to_string(),
    };
    let r = s.call_keys(|mut c| {
        let req = req.clone();
        async move { c.generate(req).await }
    })?;
    r.issuer_key.ok_or_else(|| anyhow!("the node answered without the issuer key it generated"))
}

/// An issuer key pair's public key (modulus, exponent), as the cluster lists it.
pub(crate) fn issuer_public(k: &IssuerKeyView) -> Result<(Vec<u8>, Vec<u8>)> {
    let p = crate::client::rsa_public(k.public.as_ref(), &format!("issuer key {}", k.label))?;
    Ok((p.modulus, p.exponent))
}

/// `quill issuer generate`.
pub fn issuer_generate(a: &IssuerGenerateArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let rec = generate_request(&mut s, &a.label, (a.bits, a.exponent), a.tenant.as_deref().unwrap_or_default())?;
    let (modulus, exponent) = issuer_public(&rec)?;
    print(
        json,
        json!({"label": rec.label, "bits": rec.bits, "fingerprint": rec.fingerprint,
               "modulus": hex::encode_upper(&modulus), "exponent": hex::encode_upper(&exponent)}),
        format!(
            "issuer key {} generated: RSA-{} e={}, public key {}\nmodulus {}\n(send the public key to the scheme CA; import the certificate with `quill issuer import`)",
            rec.label,
            rec.bits,
            hex::encode_upper(&exponent),
            rec.fingerprint,
            hex::encode_upper(&modulus)
        ),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill issuer import`.
#[derive(clap::Args, Debug)]
pub struct IssuerImportArgs {
    /// The issuer-certificate file as the scheme delivered it.
    file: PathBuf,
    /// Its layout.
    #[arg(long, value_parser = ["visa", "mastercard", "unionpay"])]
    layout: String,
    /// The issuer key pair it certifies (its public key must be the certified one).
    #[arg(long)]
    key: Option<String>,
    /// The CA's RID when it is not the layout's scheme's (a domestic scheme's or a Quill CA).
    #[arg(long)]
    rid: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill issuer import`.
pub fn issuer_import(a: &IssuerImportArgs, json: bool) -> Result<u8> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let mut s = Session::new(&a.who)?;
    let detail = s
        .issuer_cert_import(IssuerCertImportRequest {
            caller: None,
            key: a.key.clone().unwrap_or_default(),
            source: Some(Source::File(CertFile {
                layout: a.layout.clone(),
                bytes,
                rid: a.rid.as_deref().map(rid_bytes).transpose()?.map(hex::encode_upper).unwrap_or_default(),
            })),
        })
        .with_context(|| format!("{} ({} layout)", a.file.display(), a.layout))?;
    print(
        json,
        json!({"result": "imported", "file": a.file.display().to_string(), "detail": detail}),
        format!("{}: {detail}", a.file.display()),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill issuer certify-test`.
#[derive(clap::Args, Debug)]
pub struct IssuerCertifyTestArgs {
    /// Label of the issuer key pair.
    label: String,
    /// Issuer identifier (the BIN, 3–8 digits).
    #[arg(long)]
    issuer_id: String,
    /// RID of the scheme (5 bytes hex).
    #[arg(long)]
    rid: String,
    /// Certificate expiry, MMYY.
    #[arg(long, default_value = "1235")]
    expiry: String,
    #[command(flatten)]
    who: Who,
}

/// Certify issuer key `label` with the Quill TEST CA (signed here) and import the certificate
/// bound to it; the cluster verifies it like any other. Returns the outcome detail.
/// the TEST CA signing (a build without the TEST keys refuses it).
#[cfg(not(feature = "test-keys"))]
pub fn certify_test(_: &mut Session, _: &str, _: &str, _: &str, _: &str) -> Result<String> {
    Err(crate::lab::no_test_keys("issuer certify-test"))
}

#[cfg(feature = "test-keys")]
pub fn certify_test(s: &mut Session, label: &str, issuer_id: &str, rid: &str, expiry: &str) -> Result<String> {
    let rid = rid_bytes(rid)?;
    let (modulus, exponent) = issuer_public(&s.issuer_key(label)?)?;
    let public = RsaPublicKey::new(&modulus, &exponent).map_err(|e| anyhow!("{e}"))?;
    let mmyy = hex::decode(expiry).ok().and_then(|v| <[u8; 2]>::try_from(v).ok());
    let expiry = mmyy.and_then(CertExpiry::from_mmyy).ok_or_else(|| anyhow!("--expiry: {expiry:?} is not MMYY"))?;
    let issuer_id =
        IssuerId::from_digits(issuer_id).ok_or_else(|| anyhow!("--issuer-id: {issuer_id:?} is not 3-8 digits"))?;
    let ca = TestCa::builtin();
    let req = IssuerCertificateRequest { issuer_id, expiry, serial: [0, 0, 1], issuer_key: &public };
    let c = cert::build_issuer_certificate(&ca, &ca.public(rid), &req).map_err(|e| anyhow!("{e}"))?;
    s.issuer_cert_import(IssuerCertImportRequest {
        caller: None,
        key: label.to_string(),
        source: Some(Source::Tags(CertTags {
            rid: hex::encode_upper(rid),
            ca_index: u32::from(c.ca_index()),
            cert: c.cert().to_vec(),
            remainder: c.remainder().to_vec(),
            exponent: c.exponent().to_vec(),
        })),
    })
}

/// `quill issuer certify-test`: the Quill TEST CA (whose private key is public) signs the issuer
/// key's certificate here; the cluster verifies it like any other and binds it to the key.
pub fn issuer_certify_test(a: &IssuerCertifyTestArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let detail = certify_test(&mut s, &a.label, &a.issuer_id, &a.rid, &a.expiry)?;
    print(
        json,
        json!({"result": "certified", "label": a.label, "detail": detail}),
        format!("issuer key {} certified by the Quill TEST CA: {detail}", a.label),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill issuer list`.
#[derive(clap::Args, Debug)]
pub struct IssuerListArgs {
    #[command(flatten)]
    who: Who,
}

/// `quill issuer list`: issuer key pairs and imported certificates.
pub fn issuer_list(a: &IssuerListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let keys = s.issuer_keys()?;
    let certs = s.issuer_certs()?;
    if json {
        let keys: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({"label": k.label, "bits": k.bits, "fingerprint": k.fingerprint,
                       "certificate": (!k.certificate.is_empty()).then_some(&k.certificate),
                       "created_by": crate::output::actor(k.created_by.as_ref())})
            })
            .collect();
        println!("{}", json!({"issuer_keys": keys, "certificates": certs}));
        return Ok(crate::exit_codes::OK);
    }
    let mut rows = vec![["ISSUER KEY", "BITS", "PUBLIC KEY", "CERTIFICATE"].map(String::from).to_vec()];
    for k in &keys {
        rows.push(vec![
            k.label.clone(),
            k.bits.to_string(),
            k.fingerprint.get(..16).unwrap_or(&k.fingerprint).to_string(),
            if k.certificate.is_empty() { "-".into() } else { k.certificate.clone() },
        ]);
    }
    print!("{}", crate::output::render_table(&rows));
    let mut rows =
        vec![["CERTIFICATE", "CA", "ISSUER", "EXPIRY", "LAYOUT", "KEY", "BOUND TO"].map(String::from).to_vec()];
    for c in &certs {
        rows.push(vec![
            c.id.clone(),
            format!("{}/{:02X}", c.rid, c.ca_index),
            c.issuer_id.clone(),
            c.expiry.clone(),
            c.layout.clone(),
            c.key_fingerprint.get(..16).unwrap_or(&c.key_fingerprint).to_string(),
            if c.key.is_empty() { "-".into() } else { c.key.clone() },
        ]);
    }
    print!("{}", crate::output::render_table(&rows));
    Ok(crate::exit_codes::OK)
}

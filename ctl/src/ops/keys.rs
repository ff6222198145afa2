//! `quill ceremony|key|approve|audit`: key management for admins, custodians and auditors.
//!
//! Every command is one typed request of the `Keys` service; those that need an HSM (generate,
//! TR-31 import/export, audit verification) run on the node that receives them, which proposes
//! the result. Every write carries the caller (`--as role:name`,
//! or `QUILL_ACTOR`) and a (client id, serial) pair; a write that failed in transit is retried
//! with the same serial, so it applies at most once.
//!
//! A custodian's component never leaves this process in clear: `ceremony submit` computes its KCV
//! here, shows it, seals it with RSA-OAEP to every recipient node's transport key (from the
//! cluster state) and sends only the sealed copies.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use quill_hsm::{Kcv, KeyAlg, RsaPublic, Usage};
use quill_proto::v1::approval_ask_request::Action;
use quill_proto::v1::{
    ApprovalAskRequest, ApprovalDecideRequest, CeremonyCancelRequest, CeremonyStartRequest, CeremonySubmitRequest,
    CeremonyView, ExportAction, ExportTr31Request, GenerateKeyRequest, ImportTr31Request, KeyStateRequest, NodeView,
    SealedCopy,
};
use serde_json::json;
use zeroize::Zeroizing;

use crate::client::{Session, Who};
use crate::exit_codes::CliError;
use crate::output::print;

pub(crate) fn new_id(prefix: &str) -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{prefix}-{ms:x}{:04x}", std::process::id() & 0xffff)
}

// ---------------------------------------------------------------------------------------------
// ceremony

/// `quill ceremony start`.
#[derive(clap::Args, Debug)]
pub struct CeremonyStartArgs {
    /// What to form: `smk` (the cluster storage master key), `smk-next` (the next SMK of a
    /// rotation, as `quill key rotate-smk`) or `working` (a working key).
    #[arg(long, value_parser = ["smk", "smk-next", "working"])]
    key: String,
    /// Number of components (2-9), each from a different custodian.
    #[arg(long)]
    components: u8,
    /// Ceremony id [default: generated].
    #[arg(long)]
    id: Option<String>,
    /// Working key: inventory label.
    #[arg(long, required_if_eq("key", "working"))]
    label: Option<String>,
    /// Working key: TR-31 usage (E0, C0, V2, P0, K0, D0, ...).
    #[arg(long, required_if_eq("key", "working"))]
    usage: Option<String>,
    /// Working key: des2, des3, aes128, aes192, aes256.
    #[arg(long, required_if_eq("key", "working"))]
    alg: Option<String>,
    /// Working key: may be exported as TR-31 (under dual control).
    #[arg(long)]
    exportable: bool,
    /// The tenant the working key belongs to [default: the identity's one tenant, or `default`].
    #[arg(long, value_name = "T")]
    tenant: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill ceremony start`.
pub fn ceremony_start(a: &CeremonyStartArgs, json: bool) -> Result<u8> {
    let smk = a.key == "smk";
    let smk_next = a.key == "smk-next";
    let (label, usage, alg) = if smk || smk_next {
        (String::new(), String::new(), String::new())
    } else {
        let usage = parse_usage(a.usage.as_deref())?.to_string();
        let alg = parse_alg(a.alg.as_deref())?.to_string();
        (a.label.clone().unwrap_or_default(), usage, alg)
    };
    let id = a.id.clone().unwrap_or_else(|| new_id(if smk || smk_next { "smk" } else { "key" }));
    let req = CeremonyStartRequest {
        caller: None,
        id: id.clone(),
        components: u32::from(a.components),
        smk,
        label,
        usage,
        alg,
        exportable: a.exportable,
        tenant: a.tenant.clone().unwrap_or_default(),
        smk_next,
    };
    start(&a.who, req, json)
}

/// Send a ceremony start and tell the custodians what to do.
fn start(who: &Who, req: CeremonyStartRequest, json: bool) -> Result<u8> {
    let id = req.id.clone();
    let mut s = Session::new(who)?;
    let detail = s.ceremony_start(req)?;
    print(
        json,
        json!({"result": "started", "ceremony": id, "detail": detail}),
        format!(
            "ceremony {id} started: {detail}\neach custodian now runs: quill ceremony submit --id {id} --as custodian:<name> (--component HEX | --generate)"
        ),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill ceremony submit`.
#[derive(clap::Args, Debug)]
pub struct CeremonySubmitArgs {
    /// Ceremony id.
    #[arg(long)]
    id: String,
    /// The component, hex (environment QUILL_COMPONENT keeps it out of the shell history).
    #[arg(long, env = "QUILL_COMPONENT", hide_env_values = true, conflicts_with = "generate")]
    component: Option<String>,
    /// Generate a random component here and show it once (write it down: it is not kept).
    #[arg(long)]
    generate: bool,
    /// Refuse to submit unless the component's KCV is this (catches a mistyped component).
    #[arg(long, value_name = "KCV")]
    expect_kcv: Option<String>,
    /// Trust (and pin) the transport keys of recipient nodes seen for the first time, without
    /// asking. Compare their fingerprints (`quill cluster nodes`) over a channel you trust first.
    /// A pinned key that changed is refused whatever this says.
    #[arg(long, env = "QUILL_PIN_NEW")]
    pin_new: bool,
    #[command(flatten)]
    who: Who,
}

/// The transport-key fingerprints a custodian has pinned, per node (`pins.json` in the identity
/// directory): a component is sealed only to a node whose key is pinned and unchanged.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Pins {
    nodes: std::collections::BTreeMap<u64, String>,
}

/// Check every recipient's transport key against the pins: a changed key is refused (exit 3), a
/// new one is pinned after the custodian agrees (a terminal prompt, or `--pin-new`).
fn check_pins(dir: &std::path::Path, recipients: &[(u64, RsaPublic)], pin_new: bool) -> Result<()> {
    use std::io::IsTerminal as _;
    let path = dir.join("pins.json");
    let mut pins: Pins = match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: not a pins file", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pins::default(),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", path.display())),
    };
    let mut changed = false;
    for (id, transport) in recipients {
        let fp = transport.fingerprint();
        match pins.nodes.get(id) {
            Some(p) if *p == fp => {}
            Some(p) => {
                return Err(CliError::CheckFailed(format!(
                    "node {}'s transport key is {fp}, but you pinned {p}: refusing to seal a component to it \
                     (if the node was legitimately re-enrolled, remove its line from {} after checking)",
                    id,
                    path.display()
                ))
                .into());
            }
            None => {
                let yes = if pin_new {
                    true
                } else if std::io::stdin().is_terminal() {
                    eprint!("node {} presents transport key {fp} for the first time; trust it? [y/N] ", id);
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).context("reading the answer")?;
                    line.trim().eq_ignore_ascii_case("y") || line.trim().eq_ignore_ascii_case("yes")
                } else {
                    false
                };
                if !yes {
                    return Err(CliError::Refused(format!(
                        "node {}'s transport key {fp} is not pinned: compare it with `quill cluster nodes` over a \
                         channel you trust, then run again with --pin-new (nothing was sealed)",
                        id
                    ))
                    .into());
                }
                pins.nodes.insert(*id, fp);
                changed = true;
            }
        }
    }
    if changed {
        let text = serde_json::to_string_pretty(&pins).context("encode pins")?;
        quill_trust::tls::pki::write_file(&path, text.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// The algorithm a ceremony's components have (the SMK is AES-256).
fn ceremony_alg(c: &CeremonyView) -> Result<KeyAlg> {
    match &c.target {
        Some(t) if !t.smk && !t.smk_next => t.alg.parse::<KeyAlg>().map_err(|e| anyhow!("ceremony {}: {e}", c.id)),
        _ => Ok(KeyAlg::Aes256),
    }
}

/// A node's HSM transport key, as the cluster lists it (the custodian pins its fingerprint,
/// computed here).
pub(crate) fn transport_key(n: &NodeView) -> Result<RsaPublic> {
    crate::client::rsa_public(n.transport.as_ref(), &format!("node {}'s transport key", n.id))
}

/// `quill ceremony submit`.
pub fn ceremony_submit(a: &CeremonySubmitArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let c = s.ceremony(&a.id)?;
    let alg = ceremony_alg(&c)?;
    let component: Zeroizing<Vec<u8>> = match (&a.component, a.generate) {
        (Some(hexs), false) => {
            let bytes = Zeroizing::new(
                hex::decode(hexs.trim()).map_err(|_| anyhow!("--component: not hex (0-9 A-F, no spaces)"))?,
            );
            if bytes.len() != alg.key_len() {
                bail!(
                    "--component: {} bytes, a {alg} component has {} bytes ({} hex digits)",
                    bytes.len(),
                    alg.key_len(),
                    2 * alg.key_len()
                );
            }
            bytes
        }
        (None, true) => {
            let mut bytes = Zeroizing::new(vec![0u8; alg.key_len()]);
            getrandom::fill(&mut bytes).map_err(|e| anyhow!("no randomness: {e}"))?;
            if !json {
                println!("generated component (write it down now; it is shown once): {}", hex::encode_upper(&*bytes));
            }
            bytes
        }
        _ => {
            return Err(CliError::Usage(
                "give the component with --component HEX (or QUILL_COMPONENT), or --generate".into(),
            )
            .into());
        }
    };
    let kcv = Kcv::of_clear(alg, &component).map_err(|e| anyhow!("component: {e}"))?;
    if let Some(want) = &a.expect_kcv
        && !want.trim().eq_ignore_ascii_case(&kcv.0)
    {
        bail!("the component's KCV is {kcv}, not {want}: check the component (nothing was submitted)");
    }
    let nodes = s.nodes()?;
    let recipients: Vec<(u64, RsaPublic)> = c
        .recipients
        .iter()
        .map(|id| {
            let node = nodes
                .iter()
                .find(|n| n.id == *id)
                .ok_or_else(|| anyhow!("recipient node {id} of ceremony {} is not enrolled", c.id))?;
            Ok((*id, transport_key(node)?))
        })
        .collect::<Result<_>>()?;
    check_pins(&s.tls().dir, &recipients, a.pin_new)?;
    let mut sealed = Vec::new();
    for (node, transport) in &recipients {
        let ct = transport.seal(&component).map_err(|e| anyhow!("sealing to node {node}: {e}"))?;
        sealed.push(SealedCopy { node: *node, sealed: ct });
    }
    let req = CeremonySubmitRequest { caller: None, id: a.id.clone(), kcv: kcv.0.clone(), sealed };
    let detail = s.ceremony_submit(req)?;
    let generated = a.generate.then(|| hex::encode_upper(&*component));
    print(
        json,
        json!({"result": "submitted", "ceremony": a.id, "kcv": kcv.0, "generated_component": generated, "detail": detail}),
        format!("component accepted for ceremony {}: KCV {kcv} ({detail}); sealed to nodes {:?}", a.id, c.recipients),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill ceremony status|cancel`.
#[derive(clap::Args, Debug)]
pub struct CeremonyIdArgs {
    /// Ceremony id (status: all ceremonies when omitted).
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill ceremony status`.
pub fn ceremony_status(a: &CeremonyIdArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let list: Vec<CeremonyView> = match &a.id {
        Some(id) => vec![s.ceremony(id)?],
        None => s.ceremonies()?,
    };
    if json {
        println!("{}", serde_json::to_value(&list)?);
        return Ok(crate::exit_codes::OK);
    }
    if list.is_empty() {
        println!("no ceremonies");
    }
    for c in &list {
        let what = match &c.target {
            Some(t) if t.smk_next => "the next SMK (rotation)".to_string(),
            Some(t) if !t.smk => format!("key {} ({} {})", t.label, t.usage, t.alg),
            _ => "SMK".to_string(),
        };
        println!(
            "ceremony {}: {what}, {}, {}/{} components, started by {}",
            c.id,
            c.state,
            c.submissions.len(),
            c.components,
            crate::output::actor(c.started_by.as_ref())
        );
        for (i, sub) in c.submissions.iter().enumerate() {
            println!("  component {}: custodian {} KCV {}", i + 1, sub.custodian, sub.kcv);
        }
        println!(
            "  recipients {:?}, formed on {:?}, KCV {}",
            c.recipients,
            c.formed_on,
            if c.kcv.is_empty() { "-" } else { &c.kcv }
        );
    }
    Ok(crate::exit_codes::OK)
}

/// `quill ceremony cancel`.
pub fn ceremony_cancel(a: &CeremonyIdArgs, json: bool) -> Result<u8> {
    let id = a.id.clone().ok_or_else(|| CliError::Usage("--id is required".into()))?;
    let mut s = Session::new(&a.who)?;
    let detail = s.keys_write(|mut c, caller| {
        let req = CeremonyCancelRequest { caller: Some(caller), id: id.clone() };
        async move { c.ceremony_cancel(req).await }
    })?;
    print(json, json!({"result": "cancelled", "ceremony": id}), format!("ceremony {id}: {detail}"));
    Ok(crate::exit_codes::OK)
}

// ---------------------------------------------------------------------------------------------
// key

fn parse_usage(s: Option<&str>) -> Result<Usage> {
    let s = s.ok_or_else(|| CliError::Usage("--usage is required".into()))?;
    s.parse::<Usage>().map_err(|e| CliError::Usage(format!("--usage: {e}")).into())
}

fn parse_alg(s: Option<&str>) -> Result<KeyAlg> {
    let s = s.ok_or_else(|| CliError::Usage("--alg is required".into()))?;
    s.parse::<KeyAlg>().map_err(|e| CliError::Usage(format!("--alg: {e}")).into())
}

/// `quill key list`.
#[derive(clap::Args, Debug)]
pub struct KeyListArgs {
    #[command(flatten)]
    who: Who,
}

/// `quill key list`.
pub fn key_list(a: &KeyListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let keys = s.keys_list()?;
    if json {
        println!("{}", serde_json::to_value(&keys)?);
        return Ok(crate::exit_codes::OK);
    }
    let mut rows =
        vec![["ID", "TENANT", "USAGE", "ALG", "KCV", "STATE", "EXPORTABLE", "CREATED BY"].map(String::from).to_vec()];
    for k in &keys {
        rows.push(vec![
            k.id.clone(),
            k.tenant.clone(),
            k.usage.clone(),
            k.alg.clone(),
            k.kcv.clone(),
            k.state.clone(),
            k.exportable.to_string(),
            crate::output::actor(k.created_by.as_ref()),
        ]);
    }
    print!("{}", crate::output::render_table(&rows));
    Ok(crate::exit_codes::OK)
}

/// `quill key show|activate|suspend|retire|compromised|destroy`.
#[derive(clap::Args, Debug)]
pub struct KeyIdArgs {
    /// Key id (`label.vN`).
    id: String,
    #[command(flatten)]
    who: Who,
}

/// `quill key show`.
pub fn key_show(a: &KeyIdArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let k = s.key(&a.id)?;
    if json {
        println!("{}", serde_json::to_value(&k)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&k)?);
    }
    Ok(crate::exit_codes::OK)
}

/// `quill key activate|suspend|retire|compromised`.
pub fn key_set_state(a: &KeyIdArgs, state: &str, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let detail = s.keys_write(|mut c, caller| {
        let req = KeyStateRequest { caller: Some(caller), key: a.id.clone(), state: state.into() };
        async move { c.set_key_state(req).await }
    })?;
    print(json, json!({"result": state, "key": a.id, "detail": detail}), format!("key {}: {detail}", a.id));
    Ok(crate::exit_codes::OK)
}

/// `quill key destroy`: asks for the dual-control approval that destroys the key once granted.
pub fn key_destroy(a: &KeyIdArgs, json: bool) -> Result<u8> {
    request_approval(&a.who, Action::Destroy(a.id.clone()), json)
}

/// Ask for a dual-control approval; it lasts `QUILL_APPROVAL_TTL_HOURS` (default 24, at most 168).
fn request_approval(who: &Who, action: Action, json: bool) -> Result<u8> {
    let ttl_hours = match std::env::var("QUILL_APPROVAL_TTL_HOURS") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u32>()
            .map_err(|_| CliError::Usage(format!("QUILL_APPROVAL_TTL_HOURS {v:?} is not a number of hours")))?,
        _ => 0,
    };
    let mut s = Session::new(who)?;
    let id = new_id("appr");
    let detail = s.keys_write(|mut c, caller| {
        let req = ApprovalAskRequest {
            caller: Some(caller),
            id: id.clone(),
            action: Some(action.clone()),
            ttl_hours,
            ttl_seconds: 0,
        };
        async move { c.approval_ask(req).await }
    })?;
    print(
        json,
        json!({"result": "approval requested", "approval": id, "detail": detail}),
        format!(
            "approval {id} requested ({detail}); two custodians must run: quill approve grant {id} --as custodian:<name>"
        ),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill key generate`.
#[derive(clap::Args, Debug)]
pub struct KeyGenerateArgs {
    /// Inventory label (a new version if it exists).
    #[arg(long)]
    label: String,
    /// TR-31 usage (E0, E1, E2, C0, V1, V2, P0, K0, D0, M3, ...).
    #[arg(long)]
    usage: String,
    /// des2, des3, aes128, aes192, aes256, hmac-sha256.
    #[arg(long)]
    alg: String,
    /// May be exported as TR-31 (under dual control).
    #[arg(long)]
    exportable: bool,
    /// Create it pending (activate it later) instead of active.
    #[arg(long)]
    pending: bool,
    /// The tenant the key belongs to [default: the identity's one tenant, or `default`].
    #[arg(long, value_name = "T")]
    tenant: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill key generate`.
pub fn key_generate(a: &KeyGenerateArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    parse_usage(Some(&a.usage))?;
    parse_alg(Some(&a.alg))?;
    let req = GenerateKeyRequest {
        caller: Some(s.caller()),
        label: a.label.clone(),
        usage: a.usage.clone(),
        alg: a.alg.clone(),
        exportable: a.exportable,
        active: !a.pending,
        rsa_bits: 0,
        rsa_exponent: 0,
        tenant: a.tenant.clone().unwrap_or_default(),
    };
    let r = s.call_keys(|mut c| {
        let req = req.clone();
        async move { c.generate(req).await }
    })?;
    print_key_response(&r, json)
}

fn print_key_response(r: &quill_proto::v1::KeyResponse, json: bool) -> Result<u8> {
    let k = r.key.as_ref().ok_or_else(|| anyhow!("the node answered without the key it created"))?;
    if json {
        println!("{}", serde_json::to_value(k)?);
    } else {
        println!("key {} created: {} {} KCV {} ({})", k.id, k.usage, k.alg, k.kcv, k.state);
    }
    Ok(crate::exit_codes::OK)
}

/// `quill key import`.
#[derive(clap::Args, Debug)]
pub struct KeyImportArgs {
    /// Inventory label.
    #[arg(long)]
    label: String,
    /// The TR-31 key block (versions B and D).
    #[arg(long)]
    tr31: String,
    /// The key-block protection key's id (an active K0/K1 key, e.g. zmk.v1).
    #[arg(long)]
    kbpk: String,
    /// May be exported again as TR-31 (under dual control).
    #[arg(long)]
    exportable: bool,
    /// Create it pending instead of active.
    #[arg(long)]
    pending: bool,
    /// The tenant the key belongs to [default: the KBPK's] (it must be the KBPK's).
    #[arg(long, value_name = "T")]
    tenant: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill key import`.
pub fn key_import(a: &KeyImportArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let req = ImportTr31Request {
        caller: Some(s.caller()),
        label: a.label.clone(),
        kbpk: a.kbpk.clone(),
        block: a.tr31.trim().to_string(),
        exportable: a.exportable,
        active: !a.pending,
        tenant: a.tenant.clone().unwrap_or_default(),
    };
    let r = s.call_keys(|mut c| {
        let req = req.clone();
        async move { c.import_tr31(req).await }
    })?;
    print_key_response(&r, json)
}

/// `quill key export`.
#[derive(clap::Args, Debug)]
pub struct KeyExportArgs {
    /// The key to export (asks for an approval).
    #[arg(long, requires = "kbpk", conflicts_with = "approval")]
    key: Option<String>,
    /// The key-block protection key to export under.
    #[arg(long)]
    kbpk: Option<String>,
    /// Run an approved export and print the TR-31 block.
    #[arg(long)]
    approval: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill key export`: `--key K --kbpk Z` asks for approval; `--approval A` runs it.
pub fn key_export(a: &KeyExportArgs, json: bool) -> Result<u8> {
    if let (Some(key), Some(kbpk)) = (&a.key, &a.kbpk) {
        return request_approval(&a.who, Action::Export(ExportAction { key: key.clone(), kbpk: kbpk.clone() }), json);
    }
    let approval = a.approval.clone().ok_or_else(|| CliError::Usage("give --key and --kbpk, or --approval".into()))?;
    let mut s = Session::new(&a.who)?;
    let req = ExportTr31Request { caller: Some(s.caller()), approval: approval.clone() };
    let r = s.call_keys(|mut c| {
        let req = req.clone();
        async move { c.export_tr31(req).await }
    })?;
    print(json, json!({"approval": approval, "block": r.block, "kcv": r.kcv}), format!("{}\n(KCV {})", r.block, r.kcv));
    Ok(crate::exit_codes::OK)
}

/// `quill key rotate-smk`.
#[derive(clap::Args, Debug)]
pub struct RotateSmkArgs {
    /// Number of components (2-9), each from a different custodian.
    #[arg(long)]
    components: u8,
    /// Ceremony id [default: generated].
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// `quill key rotate-smk`: open the ceremony of the next SMK. Once its components are in, every
/// node holding the SMK forms the next one beside it, the cluster switches every key block to it
/// in one step and each node destroys the old SMK (`quill key smk` follows it).
pub fn rotate_smk(a: &RotateSmkArgs, json: bool) -> Result<u8> {
    let req = CeremonyStartRequest {
        id: a.id.clone().unwrap_or_else(|| new_id("smk")),
        components: u32::from(a.components),
        smk_next: true,
        ..Default::default()
    };
    start(&a.who, req, json)
}

/// `quill key smk`.
#[derive(clap::Args, Debug)]
pub struct SmkShowArgs {
    #[command(flatten)]
    who: Who,
}

/// `quill key smk`: the SMK's KCV and ceremony, a rotation under way, the SMKs it replaced, and
/// where each node stands.
pub fn smk_show(a: &SmkShowArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let smk = s
        .call_keys(|mut c| async move { c.get_smk(quill_proto::v1::GetSmkRequest { linearizable: true }).await })?
        .smk
        .ok_or_else(|| anyhow!("the node answered GetSmk without the SMK"))?;
    let nodes = s.nodes()?;
    if json {
        println!(
            "{}",
            json!({"smk": smk, "nodes": nodes.iter().map(|n| json!({
            "id": n.id, "smk": n.smk, "next_smk_kcv": n.next_smk_kcv, "retiring_smk_kcv": n.retiring_smk_kcv,
        })).collect::<Vec<_>>()})
        );
        return Ok(crate::exit_codes::OK);
    }
    println!("SMK {} (ceremony {})", smk.kcv, smk.ceremony);
    if !smk.next_kcv.is_empty() {
        println!(
            "rotation: next SMK {} (ceremony {}) formed on every node; switching",
            smk.next_kcv, smk.next_ceremony
        );
    }
    for r in &smk.retired {
        println!("replaced: SMK {} (ceremony {})", r.kcv, r.ceremony);
    }
    for n in &nodes {
        println!("node {}: {}", n.id, node_smk(n));
    }
    Ok(crate::exit_codes::OK)
}

/// Where a node stands with the SMK, in words (`cluster nodes`, `key smk`).
pub(crate) fn node_smk(n: &NodeView) -> String {
    let mut text = if n.smk == "mismatch" { format!("mismatch ({})", n.smk_mismatch_kcv) } else { n.smk.clone() };
    if !n.next_smk_kcv.is_empty() {
        text.push_str(&format!(", next {} formed", n.next_smk_kcv));
    }
    if !n.retiring_smk_kcv.is_empty() {
        text.push_str(&format!(", old {} not yet destroyed", n.retiring_smk_kcv));
    }
    text
}

/// `quill key smk-grant`.
#[derive(clap::Args, Debug)]
pub struct SmkGrantArgs {
    /// The node that enrolled after the SMK ceremony.
    #[arg(long)]
    node: u64,
    #[command(flatten)]
    who: Who,
}

/// `quill key smk-grant`: ask for the approval that lets a node holding the SMK wrap it to a node
/// that enrolled later (to that node's HSM transport key).
pub fn smk_grant(a: &SmkGrantArgs, json: bool) -> Result<u8> {
    request_approval(&a.who, Action::SmkToNode(a.node), json)
}

// ---------------------------------------------------------------------------------------------
// approve

/// `quill approve list`.
#[derive(clap::Args, Debug)]
pub struct ApproveListArgs {
    #[command(flatten)]
    who: Who,
}

/// `quill approve list`.
pub fn approve_list(a: &ApproveListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let items = s.approvals()?;
    if json {
        println!("{}", serde_json::to_value(&items)?);
        return Ok(crate::exit_codes::OK);
    }
    if items.is_empty() {
        println!("no approvals");
    }
    for ap in &items {
        println!(
            "{} {} requested by {} granted by [{}]: {}",
            ap.id,
            ap.state,
            crate::output::actor(ap.requested_by.as_ref()),
            ap.granted_by.join(", "),
            ap.action.as_ref().map_or("?", |a| a.text.as_str())
        );
    }
    Ok(crate::exit_codes::OK)
}

/// `quill approve grant|deny`.
#[derive(clap::Args, Debug)]
pub struct ApproveIdArgs {
    /// Approval id.
    id: String,
    #[command(flatten)]
    who: Who,
}

/// `quill approve grant|deny`.
pub fn approve_decide(a: &ApproveIdArgs, grant: bool, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let detail = s.keys_write(|mut c, caller| {
        let req = ApprovalDecideRequest { caller: Some(caller), id: a.id.clone(), grant };
        async move { c.approval_decide(req).await }
    })?;
    print(json, json!({"approval": a.id, "detail": detail}), format!("approval {}: {detail}", a.id));
    Ok(crate::exit_codes::OK)
}

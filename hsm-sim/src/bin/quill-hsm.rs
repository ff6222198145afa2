//! `quill-hsm`: the token tool for hsm-sim, usable with any PKCS#11 module.
//!
//! It initialises tokens and lists tokens, mechanisms and objects (never key values).

use anyhow::{Result, anyhow};
use clap::{Parser, Subcommand};
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use quill_hsm::raw::RawModule;
use quill_hsm::tools::{self, Ck};
use quill_hsm::{ck_text, known_mechanism_name};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

/// Token tool for the Quill HSM simulator (works with any PKCS#11 module).
#[derive(Parser, Debug)]
#[command(name = "quill-hsm", version, about, long_about = None)]
struct Cli {
    /// PKCS#11 module to load [default: libquill_hsm_sim.so next to this executable].
    /// hsm-sim itself reads QUILL_HSM_CONF or QUILL_HSM_DIR (see hsm-sim/README.md).
    #[arg(long, global = true, env = "QUILL_HSM_MODULE", value_name = "PATH")]
    module: Option<PathBuf>,
    /// Print one JSON document on stdout instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Initialise the token in a slot (C_InitToken), then set its user PIN as the SO (C_InitPIN).
    ///
    /// Erases whatever the token held.
    InitToken {
        /// Slot id (see list-tokens).
        #[arg(long)]
        slot: u64,
        /// Token label (at most 32 bytes).
        #[arg(long)]
        label: String,
        /// Security officer PIN.
        #[arg(long, env = "QUILL_HSM_SO_PIN", hide_env_values = true)]
        so_pin: String,
        /// User PIN.
        #[arg(long, env = "QUILL_HSM_PIN", hide_env_values = true)]
        pin: String,
    },
    /// List slots and their tokens: label, serial, flags (initialised, PIN locked, ...).
    ListTokens,
    /// List the mechanisms of a slot, with their key sizes and functions.
    ListMechanisms {
        /// Slot id.
        #[arg(long)]
        slot: u64,
    },
    /// List the objects of a token: handle, class, key type, label, id, KCV, flags.
    ///
    /// Public objects only without a PIN; with --pin (or QUILL_HSM_PIN) private ones too.
    /// Never prints a key value.
    ListObjects {
        /// Slot id.
        #[arg(long)]
        slot: u64,
        /// User PIN.
        #[arg(long, env = "QUILL_HSM_PIN", hide_env_values = true)]
        pin: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quill-hsm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    let path = match &cli.module {
        Some(p) => p.clone(),
        None => tools::sim_next_to_exe()?,
    };
    let ctx = tools::load(&path)?;
    let out = match &cli.cmd {
        Cmd::InitToken { slot, label, so_pin, pin } => init_token(&ctx, *slot, label, so_pin, pin)?,
        Cmd::ListTokens => list_tokens(&ctx)?,
        Cmd::ListMechanisms { slot } => list_mechanisms(&ctx, &path, *slot)?,
        Cmd::ListObjects { slot, pin } => list_objects(&ctx, *slot, pin.as_deref())?,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&out.json)?);
    } else {
        print!("{}", out.text);
    }
    ctx.finalize().ck(|| "C_Finalize")?;
    Ok(())
}

/// What a command prints: a human text and a JSON document.
struct Output {
    text: String,
    json: Value,
}

fn init_token(ctx: &Pkcs11, slot_id: u64, label: &str, so_pin: &str, pin: &str) -> Result<Output> {
    if label.len() > 32 {
        return Err(anyhow!("label '{label}' is longer than 32 bytes"));
    }
    let slot = tools::slot(ctx, slot_id)?;
    let so_pin = AuthPin::from(so_pin);
    ctx.init_token(slot, &so_pin, label).ck(|| format!("cannot initialise the token in slot {slot_id}"))?;
    // Some modules (SoftHSM) move an initialised token to a new slot id: find it by label.
    let slot = find_token(ctx, slot_id, label)?;
    let session = ctx.open_rw_session(slot).ck(|| format!("cannot open a session on slot {}", slot.id()))?;
    session.login(UserType::So, Some(&so_pin)).ck(|| "SO login failed")?;
    session.init_pin(&AuthPin::from(pin)).ck(|| "cannot set the user PIN")?;
    session.logout().ck(|| "SO logout failed")?;
    let info = ctx.get_token_info(slot).ck(|| "cannot read token info")?;
    let serial = info.serial_number().trim().to_owned();
    Ok(Output {
        text: format!("initialised token '{label}' in slot {} (serial {serial}); user PIN set\n", slot.id()),
        json: json!({ "slot": slot.id(), "label": label, "serial": serial, "initialized": true }),
    })
}

fn find_token(ctx: &Pkcs11, slot_id: u64, label: &str) -> Result<cryptoki::slot::Slot> {
    let slots = ctx.get_slots_with_token().ck(|| "cannot list slots")?;
    if let Some(s) = slots.iter().find(|s| s.id() == slot_id)
        && ctx.get_token_info(*s).is_ok_and(|i| i.label().trim_end() == label)
    {
        return Ok(*s);
    }
    slots
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.token_initialized() && i.label().trim_end() == label))
        .ok_or_else(|| anyhow!("token '{label}' not found after C_InitToken"))
}

fn list_tokens(ctx: &Pkcs11) -> Result<Output> {
    let mut rows = vec![vec!["SLOT".into(), "LABEL".into(), "SERIAL".into(), "FLAGS".into()]];
    let mut items = Vec::new();
    for slot in ctx.get_all_slots().ck(|| "cannot list slots")? {
        let si = ctx.get_slot_info(slot).ck(|| format!("cannot read slot {} info", slot.id()))?;
        if !si.token_present() {
            rows.push(vec![slot.id().to_string(), "(no token)".into(), String::new(), String::new()]);
            items.push(json!({ "slot": slot.id(), "description": si.slot_description().trim(), "token": null }));
            continue;
        }
        let t = ctx.get_token_info(slot).ck(|| format!("cannot read the token info of slot {}", slot.id()))?;
        let flags: Vec<&str> = [
            (t.token_initialized(), "initialized"),
            (!t.token_initialized(), "uninitialized"),
            (t.user_pin_initialized(), "user-pin-set"),
            (t.login_required(), "login-required"),
            (t.user_pin_locked(), "user-pin-locked"),
            (t.user_pin_final_try(), "user-pin-final-try"),
            (t.user_pin_count_low(), "user-pin-count-low"),
            (t.so_pin_locked(), "so-pin-locked"),
            (t.so_pin_final_try(), "so-pin-final-try"),
            (t.so_pin_count_low(), "so-pin-count-low"),
            (t.write_protected(), "write-protected"),
            (t.rng(), "rng"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let label = t.label().trim_end().to_owned();
        let serial = t.serial_number().trim().to_owned();
        rows.push(vec![slot.id().to_string(), label.clone(), serial.clone(), flags.join(",")]);
        items.push(json!({
            "slot": slot.id(),
            "description": si.slot_description().trim(),
            "token": {
                "label": label,
                "serial": serial,
                "manufacturer": t.manufacturer_id().trim(),
                "model": t.model().trim(),
                "initialized": t.token_initialized(),
                "user_pin_initialized": t.user_pin_initialized(),
                "user_pin_locked": t.user_pin_locked(),
                "so_pin_locked": t.so_pin_locked(),
                "flags": flags,
            }
        }));
    }
    Ok(Output { text: table(&rows), json: json!({ "slots": items }) })
}

fn list_mechanisms(ctx: &Pkcs11, path: &std::path::Path, slot_id: u64) -> Result<Output> {
    let slot = tools::slot(ctx, slot_id)?;
    // cryptoki's get_mechanism_list drops every value it cannot name (all vendor mechanisms,
    // CKM_DES3_ECB_ENCRYPT_DATA, ...): read the full list through the raw function list.
    let raw = RawModule::load(path, ctx).map_err(anyhow::Error::msg)?;
    let list =
        raw.mechanism_list(slot.id()).map_err(|e| anyhow!("cannot list the mechanisms of slot {slot_id}: {e}"))?;
    let mut rows = vec![vec!["MECHANISM".into(), "VALUE".into(), "KEY SIZES".into(), "FUNCTIONS".into()]];
    let mut items = Vec::new();
    for v in list {
        let name = known_mechanism_name(v);
        let (min, max, flags) = match MechanismType::try_from(v) {
            Ok(t) => {
                let i = ctx.get_mechanism_info(slot, t).ck(|| format!("cannot read mechanism 0x{v:08X} info"))?;
                let f: Vec<&str> = [
                    (i.encrypt(), "encrypt"),
                    (i.decrypt(), "decrypt"),
                    (i.digest(), "digest"),
                    (i.sign(), "sign"),
                    (i.verify(), "verify"),
                    (i.sign_recover(), "sign-recover"),
                    (i.verify_recover(), "verify-recover"),
                    (i.generate(), "generate"),
                    (i.generate_key_pair(), "generate-key-pair"),
                    (i.wrap(), "wrap"),
                    (i.unwrap(), "unwrap"),
                    (i.derive(), "derive"),
                ]
                .into_iter()
                .filter_map(|(on, n)| on.then_some(n))
                .collect();
                (i.min_key_size() as u64, i.max_key_size() as u64, f)
            }
            Err(_) => {
                let i = raw.mechanism_info(slot.id(), v).map_err(|e| anyhow!("mechanism 0x{v:08X}: {e}"))?;
                (i.ulMinKeySize, i.ulMaxKeySize, raw_flags(i.flags))
            }
        };
        let sizes = if min == 0 && max == 0 { String::new() } else { format!("{min}..{max}") };
        rows.push(vec![
            name.clone().unwrap_or_else(|| "(unknown)".into()),
            format!("0x{v:08X}"),
            sizes,
            flags.join(","),
        ]);
        items.push(json!({
            "name": name, "value": format!("0x{v:08X}"),
            "min_key_size": min, "max_key_size": max, "functions": flags,
        }));
    }
    Ok(Output { text: table(&rows), json: json!({ "slot": slot_id, "mechanisms": items }) })
}

fn raw_flags(f: cryptoki_sys::CK_FLAGS) -> Vec<&'static str> {
    use cryptoki_sys::*;
    [
        (CKF_ENCRYPT, "encrypt"),
        (CKF_DECRYPT, "decrypt"),
        (CKF_DIGEST, "digest"),
        (CKF_SIGN, "sign"),
        (CKF_VERIFY, "verify"),
        (CKF_SIGN_RECOVER, "sign-recover"),
        (CKF_VERIFY_RECOVER, "verify-recover"),
        (CKF_GENERATE, "generate"),
        (CKF_GENERATE_KEY_PAIR, "generate-key-pair"),
        (CKF_WRAP, "wrap"),
        (CKF_UNWRAP, "unwrap"),
        (CKF_DERIVE, "derive"),
    ]
    .into_iter()
    .filter_map(|(b, n)| (f & b != 0).then_some(n))
    .collect()
}

/// The attributes list-objects reads. `CKA_VALUE` and private-key parts are never asked for.
const OBJECT_ATTRS: &[AttributeType] = &[
    AttributeType::Class,
    AttributeType::KeyType,
    AttributeType::Label,
    AttributeType::Id,
    AttributeType::CheckValue,
    AttributeType::ModulusBits,
    AttributeType::ValueLen,
    AttributeType::Token,
    AttributeType::Private,
    AttributeType::Sensitive,
    AttributeType::Extractable,
];

fn list_objects(ctx: &Pkcs11, slot_id: u64, pin: Option<&str>) -> Result<Output> {
    let slot = tools::slot(ctx, slot_id)?;
    let session = ctx.open_ro_session(slot).ck(|| format!("cannot open a session on slot {slot_id}"))?;
    if let Some(pin) = pin {
        match session.login(UserType::User, Some(&AuthPin::from(pin))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(anyhow!("user login on slot {slot_id} failed: {}", ck_text(&e))),
        }
    }
    let handles = session.find_objects(&[]).ck(|| "cannot search objects")?;
    let mut rows =
        vec![["HANDLE", "CLASS", "KEY TYPE", "SIZE", "LABEL", "ID", "KCV", "FLAGS"].map(String::from).to_vec()];
    let mut items = Vec::new();
    for h in handles {
        let o = describe(&session, h)?;
        rows.push(vec![
            h.handle().to_string(),
            o.class.clone(),
            o.key_type.clone().unwrap_or_default(),
            o.size.map(|s| s.to_string()).unwrap_or_default(),
            o.label.clone(),
            o.id.clone(),
            o.kcv.clone().unwrap_or_default(),
            o.flags.join(","),
        ]);
        items.push(json!({
            "handle": h.handle(), "class": o.class, "key_type": o.key_type, "size_bits": o.size,
            "label": o.label, "id": o.id, "kcv": o.kcv, "flags": o.flags,
        }));
    }
    Ok(Output { text: table(&rows), json: json!({ "slot": slot_id, "objects": items }) })
}

struct ObjectRow {
    class: String,
    key_type: Option<String>,
    size: Option<u64>,
    label: String,
    id: String,
    kcv: Option<String>,
    flags: Vec<&'static str>,
}

/// Read an object's public description; attributes the module refuses are left out.
fn describe(session: &Session, h: ObjectHandle) -> Result<ObjectRow> {
    let attrs = match session.get_attributes(h, OBJECT_ATTRS) {
        Ok(a) => a,
        // One attribute the crate cannot parse fails the whole call: read them one by one.
        Err(_) => OBJECT_ATTRS
            .iter()
            .filter_map(|t| session.get_attributes(h, std::slice::from_ref(t)).ok())
            .flatten()
            .collect(),
    };
    let mut o = ObjectRow {
        class: "?".into(),
        key_type: None,
        size: None,
        label: String::new(),
        id: String::new(),
        kcv: None,
        flags: Vec::new(),
    };
    for a in attrs {
        match a {
            Attribute::Class(c) => o.class = c.to_string(),
            Attribute::KeyType(k) => o.key_type = Some(k.to_string()),
            Attribute::Label(l) => o.label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Id(i) => o.id = hex::encode_upper(&i),
            Attribute::CheckValue(v) if !v.is_empty() => o.kcv = Some(hex::encode_upper(&v)),
            Attribute::ModulusBits(b) => o.size = Some(u64::from(b)),
            Attribute::ValueLen(l) if o.size.is_none() => o.size = Some(u64::from(l) * 8),
            Attribute::Token(true) => o.flags.push("token"),
            Attribute::Private(true) => o.flags.push("private"),
            Attribute::Sensitive(true) => o.flags.push("sensitive"),
            Attribute::Extractable(true) => o.flags.push("extractable"),
            _ => {}
        }
    }
    Ok(o)
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

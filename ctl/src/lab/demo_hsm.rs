//! `quill demo-hsm`: a step-by-step demonstration of the bundled HSM simulator.
//!
//! It talks to the module only through `cryptoki` (standard calls plus hsm-sim's vendor
//! mechanisms), so every secret stays inside the HSM: keys appear as KCVs, PINs as encrypted
//! PIN blocks, ICC private keys as encrypted CRT parts.
//!
//! hsm-sim reads its configuration from the environment when it is loaded, so the command
//! prepares the directory, then re-runs itself with `QUILL_HSM_CONF` pointing into it.

use crate::exit_codes;
use crate::lab::pkcs11::{self, Ck};
use anyhow::{Context as _, Result, anyhow, bail};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Options of `quill demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Number of sample cards.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    cards: u32,
    /// Directory of the demo token; wiped and made anew on every run.
    #[arg(long, default_value = ".quill/demo", visible_alias = "out", value_name = "DIR")]
    dir: PathBuf,
    /// PKCS#11 module [default: libquill_hsm_sim.so next to the `quill` executable].
    #[arg(long, env = "QUILL_HSM_MODULE", value_name = "PATH")]
    module: Option<PathBuf>,
    /// Internal: the directory is ready and QUILL_HSM_CONF points into it.
    #[arg(long, hide = true)]
    prepared: bool,
}

/// Marks a directory as made by `quill demo`, so a re-run may wipe it.
const MARKER: &str = ".quill-demo";
const TOKEN_LABEL: &str = "quill-demo";
/// Demo PINs: this token only ever holds public TEST keys.
const SO_PIN: &str = "demo-so-pin";
const USER_PIN: &str = "demo-user-pin";
/// CKA_ID of every key the demo makes: they are TEST keys.
const TEST_ID: &[u8] = b"TEST";

/// The TEST key value of shared/reference/emv.md §6 (#1 IMK, #8 CVK-A‖CVK-B, #10 PVK).
const TEST_KEY: &str = "0123456789ABCDEFFEDCBA9876543210";
/// Its KCV (3DES-ECB of eight zero bytes, first three bytes), computed with OpenSSL.
const TEST_KEY_KCV: &str = "08D7B4";

const EXPIRY: &str = "2812"; // YYMM
const SERVICE_CODE: &str = "201";
const PVKI: u8 = 1;
const DECIMALISATION: &[u8; 16] = b"0123456789012345";

pub fn run(args: &DemoArgs, json: bool) -> Result<u8> {
    if args.prepared { demo(args, json) } else { prepare_and_rerun(args, json) }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir().context("cannot read the current directory")?.join(p))
    }
}

fn prepare_and_rerun(args: &DemoArgs, json: bool) -> Result<u8> {
    let dir = absolute(&args.dir)?;
    let module = absolute(&match &args.module {
        Some(m) => m.clone(),
        None => pkcs11::sim_next_to_exe()?,
    })?;
    if !module.exists() {
        bail!(
            "PKCS#11 module {} does not exist (build it with `cargo build --release -p quill-hsm-sim`, or set --module)",
            module.display()
        );
    }
    if dir.exists() {
        if dir.join(MARKER).exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot wipe the previous demo in {}", dir.display()))?;
        } else if std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?.next().is_some() {
            bail!("{} exists and was not made by `quill demo`: choose another --dir or empty it", dir.display());
        }
    }
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).with_context(|| format!("cannot create {}", tokens.display()))?;
    std::fs::write(dir.join(MARKER), "made by `quill demo`; the next run wipes this directory\n")
        .with_context(|| format!("cannot write {}", dir.join(MARKER).display()))?;
    let conf = dir.join("hsm.toml");
    let text = format!(
        "# Written by `quill demo`: a throwaway hsm-sim token holding TEST keys only.\n\
         token_dir = {}\n\n[[slot]]\nid = 0\ndescription = \"quill demo\"\n",
        toml_string(&tokens)
    );
    std::fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;

    let exe = std::env::current_exe().context("cannot locate the `quill` executable")?;
    let mut cmd = Command::new(&exe);
    if json {
        cmd.arg("--json");
    }
    cmd.arg("demo-hsm")
        .arg("--cards")
        .arg(args.cards.to_string())
        .arg("--dir")
        .arg(&dir)
        .arg("--module")
        .arg(&module)
        .arg("--prepared")
        .env("QUILL_HSM_CONF", &conf)
        .env_remove("QUILL_HSM_DIR");
    let status = cmd.status().with_context(|| format!("cannot run {}", exe.display()))?;
    Ok(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(exit_codes::REFUSED))
}

fn toml_string(p: &Path) -> String {
    format!("\"{}\"", p.display().to_string().replace('\\', "\\\\").replace('"', "\\\""))
}

/// Prints the human story (nothing in JSON mode) and keeps the known-answer results.
struct Story {
    json: bool,
    checks: Vec<Value>,
    failed: usize,
}

impl Story {
    fn say(&self, line: impl AsRef<str>) {
        if !self.json {
            println!("{}", line.as_ref());
        }
    }

    fn check(&mut self, what: &str, source: &str, expected: &str, got: &str) {
        let ok = expected.eq_ignore_ascii_case(got);
        if !ok {
            self.failed += 1;
        }
        self.say(format!(
            "  {}  {what}: {got}{}   [{source}]",
            if ok { "ok  " } else { "FAIL" },
            if ok { String::new() } else { format!(" (expected {expected})") }
        ));
        self.checks.push(json!({ "check": what, "source": source, "expected": expected, "got": got, "ok": ok }));
    }
}

fn demo(args: &DemoArgs, json: bool) -> Result<u8> {
    let t0 = Instant::now();
    let dir = absolute(&args.dir)?;
    let module = match &args.module {
        Some(m) => m.clone(),
        None => pkcs11::sim_next_to_exe()?,
    };
    let mut st = Story { json, checks: Vec::new(), failed: 0 };
    let ctx = pkcs11::load(&module)?;
    let info = ctx.get_library_info().ck(|| "C_GetInfo")?;
    let lib = format!(
        "{} {}.{}",
        info.library_description().trim(),
        info.library_version().major(),
        info.library_version().minor()
    );
    st.say("quill demo: the Quill HSM simulator, step by step (TEST keys only; no secret leaves the HSM)");
    st.say(format!("  module  {} ({lib})", module.display()));
    st.say(format!("  token   {} (config {})", dir.join("tokens").display(), dir.join("hsm.toml").display()));

    // 1. Token.
    let slot = ctx
        .get_slots_with_token()
        .ck(|| "cannot list slots")?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the module shows no token"))?;
    ctx.init_token(slot, &AuthPin::from(SO_PIN), TOKEN_LABEL)
        .ck(|| format!("cannot initialise the token in slot {}", slot.id()))?;
    let session = ctx.open_rw_session(slot).ck(|| "cannot open a session")?;
    session.login(UserType::So, Some(&AuthPin::from(SO_PIN))).ck(|| "SO login failed")?;
    session.init_pin(&AuthPin::from(USER_PIN)).ck(|| "cannot set the user PIN")?;
    session.logout().ck(|| "SO logout failed")?;
    session.login(UserType::User, Some(&AuthPin::from(USER_PIN))).ck(|| "user login failed")?;
    let serial = ctx.get_token_info(slot).ck(|| "C_GetTokenInfo")?.serial_number().trim().to_owned();
    st.say(format!(
        "\n1. token '{TOKEN_LABEL}' initialised in slot {} (serial {serial}); demo PINs: SO '{SO_PIN}', user '{USER_PIN}'; logged in as user",
        slot.id()
    ));

    // 2. TEST keys.
    st.say("\n2. TEST keys imported (public values from shared/reference/emv.md §6; never for real cards):");
    let value = hex::decode(TEST_KEY)?;
    let imk = import_test_key(&session, "TEST-IMK-AC", &value, &[Attribute::Derive(true)])?;
    let cvk = import_test_key(&session, "TEST-CVK", &value, &[Attribute::Sign(true), Attribute::Verify(true)])?;
    let pvk = import_test_key(&session, "TEST-PVK", &value, &[Attribute::Sign(true)])?;
    let mut keys = Vec::new();
    for (label, h, usage, src) in [
        ("TEST-IMK-AC", imk, "derive (ICC master keys)", "§6 #1"),
        ("TEST-CVK", cvk, "sign (CVV, CVK-A‖CVK-B)", "§6 #8"),
        ("TEST-PVK", pvk, "sign (Visa PVV)", "§6 #10"),
    ] {
        let kcv = kcv(&session, h)?;
        st.say(format!("     {label:<16} DES2  KCV {kcv}  {usage}  [{src}]"));
        keys.push(json!({ "label": label, "type": "DES2", "kcv": kcv, "test": true, "origin": "imported" }));
    }

    // 3. Keys generated inside the HSM.
    st.say("\n3. keys generated inside the HSM:");
    let mailer = generate_test_key(&session, "TEST-PIN-MAILER", &[Attribute::Encrypt(true)])?;
    let dek = generate_test_key(&session, "TEST-DEK", &[Attribute::Wrap(true)])?;
    for (label, h, usage) in [
        ("TEST-PIN-MAILER", mailer, "encrypts PIN blocks for the PIN-mailer stream"),
        ("TEST-DEK", dek, "encrypts ICC private-key CRT parts"),
    ] {
        let kcv = kcv(&session, h)?;
        st.say(format!("     {label:<16} DES2  KCV {kcv}  {usage}"));
        keys.push(json!({ "label": label, "type": "DES2", "kcv": kcv, "test": true, "origin": "generated" }));
    }

    // 4. Known answers.
    st.say("\n4. known answers (the HSM against published values):");
    for (label, h) in [("TEST-IMK-AC", imk), ("TEST-CVK", cvk), ("TEST-PVK", pvk)] {
        let got = kcv(&session, h)?;
        st.check(&format!("{label} KCV"), "OpenSSL 3DES of zeros", TEST_KEY_KCV, &got);
    }
    let got = icc_mk_kcv(&session, imk, "12345678901234567", "01", Opt::A)?;
    st.check("ICC MK Option A, PAN 12345678901234567 PSN 01, KCV", "emv.md §6 #1", "C64DC2", &got);
    let got = icc_mk_kcv(&session, imk, "12345678901234567", "01", Opt::B)?;
    st.check("ICC MK Option B, PAN 12345678901234567 PSN 01, KCV", "emv.md §6 #3", "2CB087", &got);
    let got = cvv(&session, cvk, "4123456789012345", "8701", "101")?;
    st.check("CVV, PAN 4123456789012345 8701 101", "emv.md §6 #8", "561", &got);
    let got = cvv(&session, cvk, "1234567890123456", "9912", "220")?;
    st.check("CVV, PAN 1234567890123456 9912 220", "emv.md §6 #9", "170", &got);
    let got = pvv_known_answer(&session, pvk)?;
    st.check("Visa PVV, PIN 4524 PVKI 3 PAN 1122334455667788", "emv.md §6 #10", "4021", &got);

    // 5. Cards.
    st.say(format!(
        "\n5. {} sample card(s): expiry {EXPIRY}, service code {SERVICE_CODE}; PIN blocks ISO 9564 format 0 under TEST-PIN-MAILER; CRT parts 3DES-ECB under TEST-DEK, ISO 9797-1 method 2 padding",
        args.cards
    ));
    let mut cards = Vec::new();
    for i in 0..args.cards {
        let c = card(&mut st, &session, &Card::sample(i, args.cards), imk, cvk, pvk, mailer, dek)?;
        cards.push(c);
    }

    let secs = t0.elapsed().as_secs_f64();
    let ok = st.failed == 0;
    st.say(format!(
        "\n{} in {secs:.1} s: {} known answer(s) checked, {} wrong; the token stays in {} (TEST keys persisted; card keys were session objects)",
        if ok { "done" } else { "FAILED" },
        st.checks.len(),
        st.failed,
        dir.join("tokens").display()
    ));
    st.say(format!(
        "  look inside: QUILL_HSM_CONF={} quill-hsm list-objects --slot {} --pin {USER_PIN}",
        dir.join("hsm.toml").display(),
        slot.id()
    ));
    drop(session);
    ctx.finalize().ck(|| "C_Finalize")?;
    if json {
        let doc = json!({
            "ok": ok,
            "dir": dir.display().to_string(),
            "token_dir": dir.join("tokens").display().to_string(),
            "module": module.display().to_string(),
            "library": lib,
            "token": { "slot": slot.id(), "label": TOKEN_LABEL, "serial": serial },
            "keys": keys,
            "checks": st.checks,
            "cards": cards,
            "elapsed_s": secs,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    if !ok {
        eprintln!("quill: error: {} known answer(s) wrong", st.failed);
        return Ok(exit_codes::CHECK_FAILED);
    }
    Ok(exit_codes::OK)
}

fn test_key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::DES2),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(TEST_ID.to_vec()),
    ]
}

fn import_test_key(s: &Session, label: &str, value: &[u8], usage: &[Attribute]) -> Result<ObjectHandle> {
    let mut t = test_key_template(label);
    t.push(Attribute::Value(value.to_vec()));
    t.extend_from_slice(usage);
    s.create_object(&t).ck(|| format!("cannot import {label}"))
}

fn generate_test_key(s: &Session, label: &str, usage: &[Attribute]) -> Result<ObjectHandle> {
    let mut t = test_key_template(label);
    t.retain(|a| !matches!(a, Attribute::Class(_) | Attribute::KeyType(_)));
    t.extend_from_slice(usage);
    s.generate_key(&Mechanism::Des2KeyGen, &t).ck(|| format!("cannot generate {label}"))
}

/// The key's CKA_CHECK_VALUE, hex.
fn kcv(s: &Session, h: ObjectHandle) -> Result<String> {
    let attrs = s.get_attributes(h, &[AttributeType::CheckValue]).ck(|| "cannot read CKA_CHECK_VALUE")?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::CheckValue(v) if !v.is_empty() => Some(hex::encode_upper(v)),
            _ => None,
        })
        .ok_or_else(|| anyhow!("the module gives no CKA_CHECK_VALUE"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Opt {
    A,
    B,
}

/// Derive the ICC master key inside the HSM (a session object), read its KCV, destroy it.
fn icc_mk_kcv(s: &Session, imk: ObjectHandle, pan: &str, psn: &str, opt: Opt) -> Result<String> {
    let mut p = pkcs11::digits(pan)?;
    p.extend_from_slice(psn.as_bytes());
    let mech = if opt == Opt::A { pkcs11::CKM_QUILL_EMV_MK_OPTION_A } else { pkcs11::CKM_QUILL_EMV_MK_OPTION_B };
    let tmpl = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::DES2),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Label(b"ICC-MK-AC".to_vec()),
    ];
    let mk = pkcs11::with_vendor_mechanism(mech, &p, |m| s.derive_key(m, imk, &tmpl))?
        .ck(|| format!("ICC master key derivation for PAN {pan}"))?;
    let k = kcv(s, mk);
    s.destroy_object(mk).ck(|| "cannot destroy the ICC master key")?;
    k
}

/// CVV (or iCVV with 999, CVV2 with 000) computed inside the HSM.
fn cvv(s: &Session, cvk: ObjectHandle, pan: &str, yymm: &str, sc: &str) -> Result<String> {
    let data = format!("{pan}{yymm}{sc}");
    let out = pkcs11::with_vendor_mechanism(pkcs11::CKM_QUILL_CVV, &[], |m| s.sign(m, cvk, data.as_bytes()))?
        .ck(|| format!("CVV for PAN {pan} service code {sc}"))?;
    String::from_utf8(out).map_err(|_| anyhow!("CVV for PAN {pan}: the module returned non-ASCII"))
}

/// emv.md §6 #10 through the HSM: the published clear PIN block (ISO 0, PIN 4524) is encrypted
/// under a throwaway session key, then the HSM computes the PVV from the encrypted block.
fn pvv_known_answer(s: &Session, pvk: ObjectHandle) -> Result<String> {
    let pan = "1122334455667788";
    let key = s
        .generate_key(
            &Mechanism::Des2KeyGen,
            &[Attribute::Token(false), Attribute::Encrypt(true), Attribute::Decrypt(true), Attribute::Sensitive(true)],
        )
        .ck(|| "cannot generate a session PIN key")?;
    let r = (|| {
        let block = iso0_pin_block("4524", pan)?;
        let enc = s.encrypt(&Mechanism::Des3Ecb, key, &block).ck(|| "cannot encrypt the test PIN block")?;
        pvv(s, pvk, key, 3, pan, &enc)
    })();
    s.destroy_object(key).ck(|| "cannot destroy the session PIN key")?;
    r
}

/// Visa PVV from an encrypted ISO 0 PIN block, inside the HSM.
fn pvv(s: &Session, pvk: ObjectHandle, pin_key: ObjectHandle, pvki: u8, pan: &str, block: &[u8]) -> Result<String> {
    let mut p = pkcs11::ulong(pin_key.handle());
    p.push(0); // ISO 9564 format 0
    p.push(pvki);
    p.extend(pkcs11::digits(pan)?);
    let out = pkcs11::with_vendor_mechanism(pkcs11::CKM_QUILL_VISA_PVV, &p, |m| s.sign(m, pvk, block))?
        .ck(|| format!("PVV for PAN {pan}"))?;
    String::from_utf8(out).map_err(|_| anyhow!("PVV for PAN {pan}: the module returned non-ASCII"))
}

/// ISO 9564 format 0 PIN block (only for the published test PIN of the known answer).
fn iso0_pin_block(pin: &str, pan: &str) -> Result<Vec<u8>> {
    let pin_field = format!("{:F<16}", format!("0{:X}{pin}", pin.len()));
    let body = &pan[..pan.len() - 1];
    let pan_field = format!("0000{}", &body[body.len() - 12..]);
    let a = hex::decode(pin_field)?;
    let b = hex::decode(pan_field)?;
    Ok(a.iter().zip(&b).map(|(x, y)| x ^ y).collect())
}

/// A sample card.
struct Card {
    number: u32,
    pan: String,
    psn: &'static str,
}

impl Card {
    /// Card `i` of `n`: Luhn-valid 16-digit PANs on a test BIN, and one 17-digit PAN (every
    /// fifth card, or the last one when there are fewer than five) to show Option B.
    fn sample(i: u32, n: u32) -> Self {
        let long = i % 5 == 4 || (n < 5 && i + 1 == n);
        let body = if long { format!("4761739{:09}", 1001 + i) } else { format!("476173{:09}", 100_001 + i) };
        let pan = format!("{body}{}", quill_prep::input::luhn_check_digit(&body));
        Card { number: i + 1, pan, psn: if long { "01" } else { "00" } }
    }
}

#[allow(clippy::too_many_arguments)]
fn card(
    st: &mut Story,
    s: &Session,
    c: &Card,
    imk: ObjectHandle,
    cvk: ObjectHandle,
    pvk: ObjectHandle,
    mailer: ObjectHandle,
    dek: ObjectHandle,
) -> Result<Value> {
    let pan = c.pan.as_str();
    let opt = if pan.len() > 16 { Opt::B } else { Opt::A };
    let opt_name = if opt == Opt::A { "A" } else { "B" };
    let mk = icc_mk_kcv(s, imk, pan, c.psn, opt)?;
    let cvv1 = cvv(s, cvk, pan, EXPIRY, SERVICE_CODE)?;
    let icvv = cvv(s, cvk, pan, EXPIRY, "999")?;
    let cvv2 = cvv(s, cvk, pan, EXPIRY, "000")?;

    // Random PIN inside the HSM: encrypted PIN block + PVV; the PIN itself never leaves.
    let mut p = pkcs11::ulong(pvk.handle());
    p.extend_from_slice(&[1, 0, 4, 1, PVKI]); // method Visa PVV, ISO format 0, 4 digits, no weak PINs, PVKI
    p.extend_from_slice(DECIMALISATION);
    p.extend_from_slice(&[0, 12, 0x0F]); // IBM 3624 fields (unused by the PVV method)
    p.extend(pkcs11::digits(pan)?);
    let out = pkcs11::with_vendor_mechanism(pkcs11::CKM_QUILL_PIN_GENERATE, &p, |m| s.encrypt(m, mailer, &[]))?
        .ck(|| format!("PIN generation for PAN {pan}"))?;
    if out.len() != 12 {
        bail!("PIN generation for PAN {pan}: {} bytes returned, expected 8 (PIN block) + 4 (PVV)", out.len());
    }
    let (block, pvv_bytes) = out.split_at(8);
    let pvv_gen = String::from_utf8(pvv_bytes.to_vec()).map_err(|_| anyhow!("PVV for PAN {pan} is not ASCII"))?;

    // ICC RSA key pair, 1024 bits, e=3; its CRT parts leave the HSM encrypted under the DEK.
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ModulusBits(1024.into()),
                Attribute::PublicExponent(vec![3]),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Sign(true),
            ],
        )
        .ck(|| format!("ICC RSA key generation for PAN {pan}"))?;
    let r = (|| -> Result<(usize, Vec<(&'static str, usize)>)> {
        let attrs = s.get_attributes(public, &[AttributeType::Modulus]).ck(|| "cannot read the ICC modulus")?;
        let n_len = attrs
            .into_iter()
            .find_map(|a| if let Attribute::Modulus(m) = a { Some(m.len()) } else { None })
            .ok_or_else(|| anyhow!("the ICC public key has no modulus"))?;
        let mut parts = Vec::new();
        for (comp, name) in [(1u8, "p"), (2, "q"), (3, "dp"), (4, "dq"), (5, "qinv")] {
            let w = pkcs11::with_vendor_mechanism(pkcs11::CKM_QUILL_RSA_CRT_COMPONENT_WRAP, &[comp, 1, 0], |m| {
                s.wrap_key(m, dek, private)
            })?
            .ck(|| format!("CRT part {name} export for PAN {pan}"))?;
            parts.push((name, w.len()));
        }
        Ok((n_len, parts))
    })();
    s.destroy_object(private).ck(|| "cannot destroy the ICC private key")?;
    s.destroy_object(public).ck(|| "cannot destroy the ICC public key")?;
    let (n_len, parts) = r?;

    st.say(format!("   card {}  PAN {pan} ({} digits)  PSN {}", c.number, pan.len(), c.psn));
    st.say(format!("     ICC MK-AC   Option {opt_name}, derived inside the HSM, KCV {mk}"));
    st.say(format!("     CVV {cvv1}  iCVV {icvv}  CVV2 {cvv2}"));
    st.say(format!("     PIN         encrypted block {}  PVV {pvv_gen} (PVKI {PVKI})", hex::encode_upper(block)));
    let sizes: Vec<String> = parts.iter().map(|(n, l)| format!("{n} {l}")).collect();
    st.say(format!(
        "     ICC RSA     {} bits, e=3; CRT parts exported encrypted: {} bytes",
        n_len * 8,
        sizes.join(", ")
    ));
    Ok(json!({
        "pan": pan,
        "psn": c.psn,
        "icc_mk_ac": { "option": opt_name, "kcv": mk },
        "expiry": EXPIRY,
        "service_code": SERVICE_CODE,
        "cvv": cvv1,
        "icvv": icvv,
        "cvv2": cvv2,
        "pin": { "format": 0, "encrypted_block": hex::encode_upper(block), "pvki": PVKI, "pvv": pvv_gen, "key": "TEST-PIN-MAILER" },
        "icc_rsa": {
            "bits": n_len * 8,
            "exponent": 3,
            "crt_parts_encrypted": parts.iter().map(|(n, l)| json!({ "part": n, "bytes": l })).collect::<Vec<_>>(),
            "key": "TEST-DEK",
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert_eq!(quill_prep::input::luhn_check_digit("7992739871"), 3);
        assert_eq!(quill_prep::input::luhn_check_digit("476173900101001"), 0);
    }

    #[test]
    fn samples_are_valid_and_one_is_long() {
        let cards: Vec<Card> = (0..5).map(|i| Card::sample(i, 5)).collect();
        for c in &cards {
            let (body, check) = c.pan.split_at(c.pan.len() - 1);
            assert_eq!(check, quill_prep::input::luhn_check_digit(body).to_string());
        }
        assert_eq!(cards.iter().filter(|c| c.pan.len() == 17).count(), 1);
        assert_eq!(Card::sample(0, 1).pan.len(), 17);
    }

    #[test]
    fn iso0_block_of_the_psec_vector() {
        // emv.md §6 #12: PIN 1234, PAN 5544332211009966 -> 041277CDDEEFF669.
        let b = iso0_pin_block("1234", "5544332211009966").expect("block");
        assert_eq!(hex::encode_upper(b), "041277CDDEEFF669");
    }
}

//! Local data preparation with the TEST keys: `quill prep run|check|gp` and `quill bench prep`.
//!
//! These run the prep engine in this process against one PKCS#11 token (hsm-sim by default, a
//! fresh TEST token in a temporary directory) loaded with the documented TEST key set
//! (prep/test-keys, docs/test-keys.md). They are for trying a profile, for lab cards, for the
//! third-party checks and for measuring; production batches go through the cluster.
//!
//! hsm-sim reads its token directory from the environment when it initialises, so the command
//! makes the token with `quill-hsm init-token` and then runs itself again with
//! `QUILL_HSM_DIR` pointing at it (no environment is changed inside a running process).
#![cfg_attr(not(feature = "test-keys"), allow(dead_code, unused_imports, unused_variables))]

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use quill_hsm::{CrtPadding, Hsm, HsmPool, LogHostPath, PoolConfig, SlotConfig};
use quill_prep::engine::output::{self, Header, Stream, StreamWriter};
use quill_prep::engine::{CardError, CardOutput, Engine, EngineSettings, KeyRef, KeyStep, PoolSettings};
use quill_prep::input::{self, CardRecord, Pan};
use quill_prep::profile::Profile;
#[cfg(feature = "test-keys")]
use quill_prep::testkeys::{self, TestKeys};
use serde_json::json;

const LOCAL_TOKEN: &str = "TEST-quill-prep";
const LOCAL_PIN: &str = "1234-TEST";
const LOCAL_SO_PIN: &str = "87654321-TEST";
/// Set in the re-executed child: the token directory is ready.
const READY_ENV: &str = "QUILL_PREP_LOCAL_TOKEN";

/// Where the engine runs.
#[derive(clap::Args, Debug, Clone)]
pub struct HsmArgs {
    /// PKCS#11 module (default: hsm-sim next to this executable, a fresh TEST token).
    #[arg(long)]
    module: Option<PathBuf>,
    /// Token label on `--module` (a module other than hsm-sim needs a TEST token made beforehand).
    #[arg(long, default_value = LOCAL_TOKEN)]
    token: String,
    /// User PIN of the token.
    #[arg(long, default_value = LOCAL_PIN)]
    pin: String,
    /// Threads preparing cards (and HSM sessions).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Options of `quill prep run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Card-product profile (TOML).
    #[arg(long)]
    profile: PathBuf,
    /// Batch file in the profile's input layout.
    #[arg(long)]
    input: PathBuf,
    /// Output directory (cards.jsonl, pin-mailers.jsonl, carriers.jsonl).
    #[arg(short, long)]
    out: PathBuf,
    /// Pre-generated ICC key pairs kept ready per DDA key size (0: none).
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// Size of the TEST issuer key pairs in bits (1024–1984, a multiple of 8; default: the
    /// TEST set's, 1152 or 1408). Lab cards of every size the profile model allows.
    #[arg(long)]
    issuer_bits: Option<u32>,
    /// Public exponent of the TEST issuer key pairs (3 or 65537; default 3).
    #[arg(long)]
    issuer_exponent: Option<u32>,
    #[command(flatten)]
    hsm: HsmArgs,
}

/// Options of `quill prep check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Output directory of `quill prep run`.
    dir: PathBuf,
}

/// Options of `quill prep gp`.
#[derive(clap::Args, Debug)]
pub struct GpArgs {
    /// cards.jsonl of a run.
    cards: PathBuf,
    /// Input line of the card.
    #[arg(long)]
    line: u64,
}

/// Options of `quill bench prep`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Card-product profile (TOML) with a DDA application.
    #[arg(long)]
    profile: PathBuf,
    /// Batch file the card records are modelled on (default: prep/samples/<product>.csv|txt).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Cards per measured run.
    #[arg(long, default_value_t = 300)]
    cards: usize,
    /// Seconds of raw key generation measured.
    #[arg(long, default_value_t = 5.0)]
    keygen_seconds: f64,
    #[command(flatten)]
    hsm: HsmArgs,
}

// ---------------------------------------------------------------------------------------------
// The local token
// ---------------------------------------------------------------------------------------------

/// In the parent: make a TEST token and run this command again with the environment pointing at
/// it; returns the child's exit code. In the child (or with `--module`): `None`, go on.
fn reexec_with_token(h: &HsmArgs) -> Result<Option<u8>> {
    if h.module.is_some() || std::env::var_os(READY_ENV).is_some() {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("cannot find the quill executable")?;
    let bin = exe.parent().ok_or_else(|| anyhow!("the quill executable has no directory"))?;
    let tool = bin.join("quill-hsm");
    if !tool.is_file() {
        bail!("no quill-hsm next to {} (build the workspace, or pass --module)", exe.display());
    }
    let dir = std::env::temp_dir().join(format!("quill-prep-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = Command::new(&tool)
        .args(["init-token", "--slot", "0", "--label", LOCAL_TOKEN, "--so-pin", LOCAL_SO_PIN, "--pin", LOCAL_PIN])
        .env("QUILL_HSM_DIR", &dir)
        .env_remove("QUILL_HSM_CONF")
        .output()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&dir);
        bail!("quill-hsm init-token: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let status = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env("QUILL_HSM_DIR", &dir)
        .env_remove("QUILL_HSM_CONF")
        .env(READY_ENV, "1")
        .status()
        .with_context(|| format!("cannot run {}", exe.display()));
    let _ = fs::remove_dir_all(&dir);
    let code = status?.code().unwrap_or(crate::exit_codes::REFUSED as i32);
    Ok(Some(u8::try_from(code).unwrap_or(crate::exit_codes::REFUSED)))
}

fn open_hsm(h: &HsmArgs) -> Result<Arc<HsmPool>> {
    let module = match &h.module {
        Some(m) => m.clone(),
        None => crate::lab::pkcs11::sim_next_to_exe()?,
    };
    let mut slot = SlotConfig::new(module, h.token.clone(), h.pin.clone());
    slot.sessions = h.threads.max(1) + 1;
    slot.label_prefix = "TEST-quill".into();
    let mut pc = PoolConfig::new(vec![slot]);
    pc.keygen_timeout_ms = 120_000;
    pc.op_timeout_ms = 30_000;
    Ok(Arc::new(HsmPool::open(&pc, Arc::new(LogHostPath)).context("open the HSM")?))
}

fn load_profile(path: &Path) -> Result<Profile> {
    let name = path.display().to_string();
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    Profile::parse(&text, &name).map_err(|e| anyhow!("{e}"))
}

/// Prepare `records` on `threads` threads; results in input order.
fn prepare_all(engine: &Engine, records: &[CardRecord], threads: usize) -> Vec<Result<CardOutput, CardError>> {
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<CardOutput, CardError>>> = (0..records.len()).map(|_| None).collect();
    let cells: Vec<std::sync::Mutex<&mut Option<Result<CardOutput, CardError>>>> =
        slots.iter_mut().map(std::sync::Mutex::new).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(rec) = records.get(i) else { break };
                    let r = engine.prepare(rec);
                    **cells[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
                }
            });
        }
    });
    drop(cells);
    slots.into_iter().map(|r| r.unwrap_or_else(|| unreachable!("every index is taken once"))).collect()
}

// ---------------------------------------------------------------------------------------------
// quill prep run
// ---------------------------------------------------------------------------------------------

/// `quill prep run`.
/// `quill prep run` (a build without the TEST keys refuses it).
#[cfg(not(feature = "test-keys"))]
pub fn run(_: &RunArgs, _: bool) -> Result<u8> {
    Err(crate::lab::no_test_keys("quill prep run"))
}

#[cfg(feature = "test-keys")]
pub fn run(a: &RunArgs, json: bool) -> Result<u8> {
    let issuers = testkeys::IssuerParams { bits: a.issuer_bits, exponent: a.issuer_exponent };
    if let Err(e) = issuers.check() {
        eprintln!("quill prep run: {e}");
        return Ok(crate::exit_codes::USAGE);
    }
    if let Some(code) = reexec_with_token(&a.hsm)? {
        return Ok(code);
    }
    let profile = load_profile(&a.profile)?;
    let file = a.input.display().to_string();
    let open = || -> Result<BufReader<fs::File>> {
        Ok(BufReader::new(fs::File::open(&a.input).with_context(|| format!("cannot open {file}"))?))
    };
    // Validate the whole file first: with `fail_batch` nothing is produced from a bad file.
    let summary = input::scan(&profile.input, &file, open()?);
    for e in &summary.errors {
        eprintln!("{e}");
    }
    if summary.refuses_batch(&profile.input) {
        eprintln!(
            "{file}: {} bad record(s) ({} repeated card(s)); the profile fails the batch: nothing was produced",
            summary.bad.max(1),
            summary.duplicates
        );
        return Ok(crate::exit_codes::CHECK_FAILED);
    }
    let records: Vec<CardRecord> = input::Batch::new(&profile.input, &file, open()?).collect();

    let hsm = open_hsm(&a.hsm)?;
    let started = Instant::now();
    let keys = testkeys::load_with(&*hsm, issuers).map_err(|e| anyhow!("loading the TEST keys: {e}"))?;
    let mac_key = keys.get("MAC-OUTPUT-TEST").cloned().ok_or_else(|| anyhow!("no MAC-OUTPUT-TEST key"))?;
    let usage = keys.usage("MAC-OUTPUT-TEST").ok_or_else(|| anyhow!("no MAC-OUTPUT-TEST key"))?;
    KeyStep::OutputMac.check("output MAC key", "MAC-OUTPUT-TEST", usage).map_err(|e| anyhow!("{e}"))?;
    let settings = EngineSettings { pool: PoolSettings { capacity: a.pool, refill_threads: 1 } };
    let engine = Engine::new(profile.clone(), keys, hsm.clone(), settings).map_err(|e| anyhow!("{e}"))?;
    let results = prepare_all(&engine, &records, a.hsm.threads);

    let mut cards = Vec::with_capacity(results.len());
    let mut failed = 0;
    for r in results {
        match r {
            Ok(c) => cards.push(c),
            Err(e) => {
                eprintln!("{file}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("{file}: {failed} card(s) could not be prepared; nothing was written");
        return Ok(crate::exit_codes::CHECK_FAILED);
    }
    fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let batch = a.input.file_name().map_or_else(|| "batch".into(), |n| n.to_string_lossy().into_owned());
    let header = |stream| Header {
        format: output::FORMAT.into(),
        version: output::VERSION,
        stream,
        product: profile.product.name.clone(),
        product_version: profile.product.version,
        batch: batch.clone(),
        mac_key: KeyRef::of("MAC-OUTPUT-TEST", &mac_key),
        test_keys: true,
    };
    for stream in Stream::ALL {
        let path = a.out.join(stream.file_name());
        let tmp = path.with_extension("jsonl.tmp");
        let f = fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = StreamWriter::new(std::io::BufWriter::new(f), &header(stream))?;
        for c in &cards {
            match stream {
                Stream::Cards => w.push(c)?,
                Stream::PinMailers => {
                    if let Some(m) = &c.mailer {
                        w.push(m)?;
                    }
                }
                Stream::Carriers => w.push(&c.carrier)?,
            }
        }
        let f = w.finish(&*hsm, &mac_key)?;
        f.into_inner().map_err(|e| anyhow!("{}: {}", tmp.display(), e.error()))?.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            json!({"product": profile.product.name, "cards": cards.len(), "skipped": summary.bad,
                   "transliterated": summary.transliterated, "out": a.out.display().to_string(), "seconds": secs, "test_keys": true})
        );
    } else {
        println!(
            "{}: {} card(s) prepared with the TEST keys in {:.2} s ({} bad record(s) skipped, {} name(s) \
             transliterated) -> {}",
            profile.product.name,
            cards.len(),
            secs,
            summary.bad,
            summary.transliterated,
            a.out.display()
        );
    }
    Ok(crate::exit_codes::OK)
}

// ---------------------------------------------------------------------------------------------
// quill prep check / gp
// ---------------------------------------------------------------------------------------------

/// HMAC-SHA-256 in clear with a TEST key of the fixture (the header must name one).
#[cfg(feature = "test-keys")]
fn test_mac(r: &KeyRef, d: &[u8; 32]) -> Result<[u8; 32], String> {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::sign::Signer;
    let set = TestKeys::builtin();
    let k = set.key(&r.label).ok_or_else(|| format!("{} is not a TEST key; check it with the cluster", r.label))?;
    if k.kcv != r.kcv {
        return Err(format!("{} KCV {} is not the TEST key's ({})", r.label, r.kcv, k.kcv));
    }
    let key = hex::decode(&k.value).map_err(|e| e.to_string())?;
    let pkey = PKey::hmac(&key).map_err(|e| e.to_string())?;
    let mut s = Signer::new(MessageDigest::sha256(), &pkey).map_err(|e| e.to_string())?;
    s.update(d).map_err(|e| e.to_string())?;
    let mac = s.sign_to_vec().map_err(|e| e.to_string())?;
    mac.try_into().map_err(|_| "HMAC length".to_owned())
}

/// `quill prep check`: the three streams' structure, digests and MACs (TEST MAC key).
/// `quill prep check` (a build without the TEST keys refuses it).
#[cfg(not(feature = "test-keys"))]
pub fn check(_: &CheckArgs, _: bool) -> Result<u8> {
    Err(crate::lab::no_test_keys("quill prep check"))
}

#[cfg(feature = "test-keys")]
pub fn check(a: &CheckArgs, json: bool) -> Result<u8> {
    let mut report = Vec::new();
    let mut bad = false;
    for stream in Stream::ALL {
        let path = a.dir.join(stream.file_name());
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        match output::check_stream(stream.file_name(), &bytes, test_mac) {
            Ok(c) => report.push(json!({"stream": stream.file_name(), "ok": true, "records": c.records.len()})),
            Err(e) => {
                bad = true;
                report.push(json!({"stream": stream.file_name(), "ok": false, "error": e.to_string()}));
            }
        }
    }
    if json {
        println!("{}", json!({"dir": a.dir.display().to_string(), "streams": report}));
    } else {
        for r in &report {
            match r["ok"].as_bool() {
                Some(true) => {
                    println!("{}: OK, {} record(s), MAC verified", r["stream"].as_str().unwrap_or(""), r["records"])
                }
                _ => println!("{}: {}", r["stream"].as_str().unwrap_or(""), r["error"].as_str().unwrap_or("")),
            }
        }
    }
    Ok(if bad { crate::exit_codes::CHECK_FAILED } else { crate::exit_codes::OK })
}

/// `quill prep gp` (a build without the TEST keys refuses it: it checks the TEST MAC first).
#[cfg(not(feature = "test-keys"))]
pub fn gp(_: &GpArgs, _: bool) -> Result<u8> {
    Err(crate::lab::no_test_keys("quill prep gp"))
}

/// `quill prep gp`: one card as GlobalPlatformPro `DGIxxxx=hex` lines.
#[cfg(feature = "test-keys")]
pub fn gp(a: &GpArgs, _json: bool) -> Result<u8> {
    let bytes = fs::read(&a.cards).with_context(|| format!("cannot read {}", a.cards.display()))?;
    let name = a.cards.display().to_string();
    let checked = output::check_stream(&name, &bytes, test_mac)?;
    for line in &checked.records {
        let card: CardOutput = serde_json::from_str(line).with_context(|| format!("{name}: not a card record"))?;
        if card.line == a.line {
            print!("{}", output::gppro_dgis(&card));
            return Ok(crate::exit_codes::OK);
        }
    }
    bail!("{name}: no card from input line {}", a.line)
}

// ---------------------------------------------------------------------------------------------
// quill bench prep
// ---------------------------------------------------------------------------------------------

/// `n` records modelled on `base`: same fields, the PAN's account digits numbered, valid Luhn.
fn synthetic(base: &CardRecord, n: usize) -> Result<Vec<CardRecord>> {
    let digits = base.pan.digits();
    let keep = 6.min(digits.len());
    let body_len = digits.len() - keep - 1;
    (0..n)
        .map(|i| {
            let body = format!("{}{:0width$}", &digits[..keep], i, width = body_len);
            let check = input::luhn_check_digit(&body);
            let mut r = base.clone();
            r.line = i as u64 + 1;
            r.pan = Pan::parse(&format!("{body}{check}")).map_err(|e| anyhow!("synthetic PAN: {e}"))?;
            Ok(r)
        })
        .collect()
}

fn default_sample(profile_path: &Path, product: &str) -> Option<PathBuf> {
    let dir = profile_path.parent()?.parent()?.join("samples");
    ["csv", "txt"].iter().map(|e| dir.join(format!("{product}.{e}"))).find(|p| p.is_file())
}

/// `quill bench prep`.
/// `quill bench prep` (a build without the TEST keys refuses it).
#[cfg(not(feature = "test-keys"))]
pub fn bench(_: &BenchArgs, _: bool) -> Result<u8> {
    Err(crate::lab::no_test_keys("quill bench prep"))
}

#[cfg(feature = "test-keys")]
pub fn bench(a: &BenchArgs, json: bool) -> Result<u8> {
    if let Some(code) = reexec_with_token(&a.hsm)? {
        return Ok(code);
    }
    let profile = load_profile(&a.profile)?;
    let spec = profile
        .applications
        .iter()
        .find_map(|app| match app {
            quill_prep::profile::Application::Emv(e) if e.oda == quill_prep::profile::Oda::Dda => {
                e.icc_key.zip(e.secret.as_ref().map(|s| s.transport_key.clone()))
            }
            _ => None,
        })
        .ok_or_else(|| {
            anyhow!("{}: no DDA application (the benchmark compares with ICC key generation)", a.profile.display())
        })?;
    let input = match &a.input {
        Some(p) => p.clone(),
        None => default_sample(&a.profile, &profile.product.name)
            .ok_or_else(|| anyhow!("no sample input for {}; pass --input", profile.product.name))?,
    };
    let file = input.display().to_string();
    let reader = BufReader::new(fs::File::open(&input).with_context(|| format!("cannot open {file}"))?);
    let base = input::Batch::new(&profile.input, &file, reader)
        .next()
        .ok_or_else(|| anyhow!("{file}: no valid record to model the cards on"))?;
    let records = synthetic(&base, a.cards)?;

    let hsm = open_hsm(&a.hsm)?;
    let keys = testkeys::load(&*hsm).map_err(|e| anyhow!("loading the TEST keys: {e}"))?;
    let (icc, tk_label) = spec;
    let tk = keys.get(&tk_label).cloned().ok_or_else(|| anyhow!("no transport key {tk_label}"))?;
    let threads = a.hsm.threads.max(1);
    let module = hsm
        .describe()
        .slots
        .first()
        .and_then(|s| s.module.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_default();

    // 1. Raw key generation on the same module and threads.
    let deadline = Instant::now() + Duration::from_secs_f64(a.keygen_seconds);
    let made = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while Instant::now() < deadline {
                    if hsm.generate_icc_rsa_key(icc.bits, icc.exponent, &tk, CrtPadding::Iso9797Method2).is_ok() {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let keygens = made.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();

    // 2. Cards with the pool off.
    let run = |capacity: usize| -> Result<(f64, Engine)> {
        let settings = EngineSettings { pool: PoolSettings { capacity, refill_threads: threads } };
        let engine = Engine::new(profile.clone(), keys.clone(), hsm.clone(), settings).map_err(|e| anyhow!("{e}"))?;
        if capacity > 0 {
            for (_, p) in engine.pools() {
                p.wait_ready(capacity, Duration::from_secs(600));
            }
        }
        let t = Instant::now();
        let results = prepare_all(&engine, &records, threads);
        let secs = t.elapsed().as_secs_f64();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            bail!("{e}");
        }
        Ok((records.len() as f64 / secs, engine))
    };
    let (cold, _) = run(0)?;
    // 3. Cards with a pool warm enough for the whole run (its refill threads are idle during it).
    let (warm, engine) = run(records.len())?;
    let stats: Vec<_> = engine.pools().map(|(_, p)| p.stats()).collect();
    let misses: u64 = stats.iter().map(|s| s.misses).sum();
    drop(engine);

    let ratio = cold / keygens;
    if json {
        println!(
            "{}",
            json!({"product": profile.product.name, "module": module, "threads": threads, "cards": records.len(),
                   "icc_key_bits": icc.bits, "icc_key_exponent": icc.exponent,
                   "keygens_per_s": keygens, "cards_per_s_pool_off": cold, "ratio_pool_off": ratio,
                   "cards_per_s_warm_pool": warm, "warm_pool_misses": misses,
                   "warm_over_keygen": warm / keygens})
        );
    } else {
        println!(
            "quill bench prep: {} on {} ({threads} thread(s)), {} cards per run",
            profile.product.name,
            module,
            records.len()
        );
        println!("  ICC key generation alone   {:>9.1} keys/s  (RSA-{} e={})", keygens, icc.bits, icc.exponent);
        println!("  cards, pool off            {:>9.1} cards/s  ratio to keygen {:.3} (goal >= 0.9)", cold, ratio);
        println!(
            "  cards, warm pool           {:>9.1} cards/s  {:.1}x the keygen limit ({} pool misses)",
            warm,
            warm / keygens,
            misses
        );
    }
    Ok(crate::exit_codes::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_digits() {
        assert_eq!(input::luhn_check_digit("476173900101001"), 0);
        assert!(input::luhn_ok("4761739001010010"));
        for body in ["497010000000001", "541333008901043", "123456789012345678"] {
            let full = format!("{body}{}", input::luhn_check_digit(body));
            assert!(input::luhn_ok(&full), "{full}");
        }
    }
}

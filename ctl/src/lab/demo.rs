//! `quill demo`: the whole story on a local 5-node cluster, with TEST keys only.
//!
//! 1. `quill dev up --nodes 5 --hsm sim`: five `quilld` processes, each with its own hsm-sim token.
//! 2. The storage master key from three custodians' components (a ceremony).
//! 3. The published TEST key set loaded by ceremonies, the TEST CA, certified TEST issuer keys.
//! 4. A batch of the multi-application sample profile (domestic + international EMV + e-purse)
//!    submitted, prepared by the nodes in chunks, watched to the end.
//! 5. The output fetched (every stream's MAC checked by the cluster on arrival), checked again
//!    with the TEST MAC key, one card shown as GlobalPlatformPro DGIs; delivery acknowledged and
//!    the job's data purged; the audit chain verified.
//!
//! Every step is a `quill` command run as a child process (shown as it runs), so the demo is also
//! a script to copy. The cluster keeps running afterwards (`quill dev down --dir D` stops it).
#![cfg_attr(not(feature = "test-keys"), allow(dead_code, unused_imports, unused_variables))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

/// Options of `quill demo`.
#[derive(clap::Args, Debug)]
pub struct StoryArgs {
    /// Directory of the demo cluster; wiped and made anew on every run.
    #[arg(long, default_value = ".quill/demo-cluster", value_name = "DIR")]
    dir: PathBuf,
    /// Cards in the batch (generated like the sample file's records).
    #[arg(long, default_value_t = 2000)]
    cards: usize,
    /// Nodes.
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Stop the cluster at the end.
    #[arg(long)]
    down: bool,
}

const MARKER: &str = ".quill-demo-cluster";

/// Who reads in the story when no one else is named (status, audit, lists).
pub(crate) const DEMO_READER: &str = "auditor:demo-auditor";
/// The operator who submits, watches, fetches and acknowledges the batch.
pub(crate) const DEMO_OPERATOR: &str = "operator:demo-operator";

pub(crate) struct Runner {
    pub(crate) exe: PathBuf,
    pub(crate) dir: PathBuf,
    step: usize,
    /// `--json`: the story goes to stderr, stdout carries one JSON summary.
    json: bool,
}

/// One line of the story: on stdout, or on stderr when stdout is for JSON.
macro_rules! tell {
    ($r:expr, $($arg:tt)*) => {
        if $r.json { eprintln!($($arg)*) } else { println!($($arg)*) }
    };
}

impl Runner {
    pub(crate) fn new(exe: PathBuf, dir: PathBuf) -> Self {
        Runner { exe, dir, step: 0, json: false }
    }

    pub(crate) fn say(&mut self, what: &str) {
        self.step += 1;
        tell!(self, "\n== {}. {what}", self.step);
    }

    /// Run `quill args…` against the demo cluster; its stdout.
    pub(crate) fn quill(&self, args: &[&str], actor: Option<&str>) -> Result<String> {
        let shown: Vec<String> =
            args.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { (*a).to_string() }).collect();
        match actor {
            Some(a) => tell!(self, "$ quill {} --as {a}", shown.join(" ")),
            None => tell!(self, "$ quill {}", shown.join(" ")),
        }
        self.quill_quiet(args, actor)
    }

    /// `quill args…` aimed at the demo cluster, its caller not yet named.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args).env("QUILL_DEV_DIR", &self.dir).env_remove("QUILL_ENDPOINT").env_remove("QUILL_ENDPOINTS");
        cmd
    }

    /// Like [`Runner::quill`], without showing the command (for polling).
    pub(crate) fn quill_quiet(&self, args: &[&str], actor: Option<&str>) -> Result<String> {
        let mut cmd = self.command(args);
        // Every call names its caller; what the story does not attribute is read by its auditor.
        cmd.env("QUILL_ACTOR", actor.unwrap_or(DEMO_READER)).env_remove("QUILL_IDENTITY");
        // The demo's custodians see every node for the first time: pin their transport keys.
        cmd.env("QUILL_PIN_NEW", "true");
        let out = cmd.output().with_context(|| format!("cannot run {}", self.exe.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("quill {} failed: {}{}", args.join(" "), stdout, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(stdout)
    }

    /// Run `quill args…` with the identity in `identity` (not a dev `--as` one); its stdout, or
    /// its one-line refusal when `refused` (a refusal expected and not seen fails the story).
    pub(crate) fn quill_identity(&self, args: &[&str], identity: &Path, refused: bool) -> Result<String> {
        tell!(self, "$ quill {} --identity {}", args.join(" "), identity.display());
        let mut cmd = self.command(args);
        cmd.env("QUILL_IDENTITY", identity).env_remove("QUILL_ACTOR");
        let out = cmd.output().with_context(|| format!("cannot run {}", self.exe.display()))?;
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        match (out.status.success(), refused) {
            (true, false) => Ok(stdout),
            (false, true) => Ok(stderr.trim().to_string()),
            (true, true) => bail!("quill {} was expected to be refused and was not: {stdout}", args.join(" ")),
            (false, false) => bail!("quill {} failed: {stdout}{}", args.join(" "), stderr.trim()),
        }
    }

    pub(crate) fn show(&self, text: &str, lines: usize) {
        for l in text.lines().take(lines) {
            tell!(self, "  {l}");
        }
    }
}

/// A multi-application batch like prep/samples/multi-app.csv: semicolon-separated, no header.
fn write_batch(path: &Path, n: usize) -> Result<()> {
    let mut s = String::new();
    let names = [("MARTIN", "CLAIRE"), ("LEROY", "PAUL"), ("DURAND", "ANNE"), ("PETIT", "LUC"), ("ROUX", "EMMA")];
    for i in 0..n {
        let body = format!("4970100{:08}", 10 + i);
        let pan = format!("{body}{}", quill_prep::input::luhn_check_digit(&body));
        let (last, first) = names[i % names.len()];
        s.push_str(&format!(
            "{pan};{:02};{}{:02};201;{last}/{first};{first} {last};{:05}\n",
            i % 10,
            28 + i % 4,
            1 + i % 12,
            75001 + i % 20
        ));
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

/// `quill demo`.
/// `quill demo` (a build without the TEST keys refuses it).
#[cfg(not(feature = "test-keys"))]
pub fn run(_: &StoryArgs, _: bool) -> Result<u8> {
    Err(crate::lab::no_test_keys("quill demo"))
}

#[cfg(feature = "test-keys")]
pub fn run(a: &StoryArgs, json: bool) -> Result<u8> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("cannot locate the quill executable")?;
    let dir = if a.dir.is_absolute() { a.dir.clone() } else { std::env::current_dir()?.join(&a.dir) };
    fresh_dir(&exe, &dir)?;
    let profile = dir.join("multi-app.toml");
    std::fs::write(&profile, quill_prep::samples::MULTI_APP)?;
    let mut r = Runner::new(exe, dir.clone());
    r.json = json;
    tell!(r, "quill demo: a {}-node Quill cluster prepares a multi-application card batch (TEST keys only)", a.nodes);

    setup(&mut r, a.nodes)?;

    r.say(&format!(
        "submit a batch of {} multi-application cards (domestic SDA + international DDA + e-purse)",
        a.cards
    ));
    let input = dir.join("batch-multi-app.csv");
    write_batch(&input, a.cards)?;
    let out = r.quill(
        &[
            "job",
            "submit",
            "--profile",
            profile.to_str().unwrap_or_default(),
            "--input",
            input.to_str().unwrap_or_default(),
            "--chunk-size",
            "100",
            "--mac-key",
            "MAC-OUTPUT-TEST",
            "--json",
        ],
        Some("operator:demo-operator"),
    )?;
    let v: Value = serde_json::from_str(out.trim()).map_err(|e| anyhow!("job submit answered {out}: {e}"))?;
    let job = v["job"].as_str().ok_or_else(|| anyhow!("no job id in {out}"))?.to_string();
    tell!(r, "  job {job}");

    r.say("the nodes claim chunks through Raft and prepare them with their own HSMs");
    tell!(r, "$ quill job watch {job}");
    let mut watch = Command::new(&r.exe);
    watch.args(["job", "watch", &job]).env("QUILL_DEV_DIR", &dir).env("QUILL_ACTOR", DEMO_OPERATOR);
    if json {
        watch.stdout(std::io::stderr());
    }
    let status = watch.status().context("quill job watch")?;
    if !status.success() {
        bail!("quill job watch failed");
    }
    let out = r.quill(&["job", "status", &job], None)?;
    r.show(&out, 3);

    r.say("fetch the output (each stream's MAC recomputed by the cluster on arrival) and check it");
    let out_dir = dir.join("output");
    let out = r.quill(&["job", "fetch", &job, "-o", out_dir.to_str().unwrap_or_default()], Some(DEMO_OPERATOR))?;
    r.show(&out, 4);
    let out = r.quill(&["prep", "check", out_dir.to_str().unwrap_or_default()], None)?;
    r.show(&out, 3);
    let cards = out_dir.join("cards.jsonl");
    let out = r.quill(&["prep", "gp", cards.to_str().unwrap_or_default(), "--line", "1"], None)?;
    tell!(r, "  first card, as GlobalPlatformPro DGIs (secret DGIs encrypted under TK-DEK-TEST):");
    for l in out.lines().take(8) {
        let clipped: String = l.chars().take(90).collect();
        tell!(r, "    {clipped}{}", if clipped.len() < l.len() { "…" } else { "" });
    }

    r.say("acknowledge delivery: the cluster purges the job's input and output, the audit chain keeps the record");
    let out = r.quill(
        &["job", "ack", &job, "--fetched", out_dir.to_str().unwrap_or_default()],
        Some("operator:demo-operator"),
    )?;
    r.show(&out, 1);
    let out = r.quill(&["audit", "verify"], None)?;
    r.show(&out, 2);

    second_tenant(&mut r, &profile, &input)?;

    if json {
        let doc = serde_json::json!({
            "result": "done",
            "seconds": started.elapsed().as_secs_f64(),
            "nodes": a.nodes,
            "cards": a.cards,
            "job": job,
            "output": out_dir.display().to_string(),
            "cluster": dir.display().to_string(),
        });
        println!("{doc}");
    }
    tell!(
        r,
        "\nquill demo: done in {:.0} s. Output (TEST keys; decrypt and check it with docs/test-keys.md):\n  {}\nThe cluster keeps running: QUILL_DEV_DIR={} quill cluster status; stop it with quill dev down --dir {}",
        started.elapsed().as_secs_f64(),
        out_dir.display(),
        dir.display(),
        dir.display()
    );
    if a.down {
        r.quill(&["dev", "down", "--dir", dir.to_str().unwrap_or_default()], None)?;
    }
    Ok(crate::exit_codes::OK)
}

/// A bureau prepares cards for many issuers: a second tenant, `bank-b`, whose operator's
/// certificate names that tenant only. It sees none of the first tenant's keys or jobs, and the
/// first tenant's keys cannot prepare its cards.
#[cfg(feature = "test-keys")]
fn second_tenant(r: &mut Runner, profile: &Path, input: &Path) -> Result<()> {
    const TENANT: &str = "bank-b";
    let dir = r.dir.clone();
    r.say("a second tenant: bank-b's operator holds a certificate for tenant bank-b only");
    let id_dir = dir.join("identities").join("operator-bank-b-ops");
    let (pki, id) = (dir.join("pki"), id_dir.to_str().unwrap_or_default().to_string());
    let out = r.quill(
        &[
            "pki",
            "issue",
            "--dir",
            pki.to_str().unwrap_or_default(),
            "--client",
            "operator:bank-b-ops",
            "--tenant",
            TENANT,
            "--out",
            &id,
        ],
        None,
    )?;
    r.show(&out, 1);
    let out = r.quill(
        &["key", "generate", "--label", "MAC-OUTPUT-TEST", "--usage", "M7", "--alg", "hmac-sha256", "--tenant", TENANT],
        Some("admin:demo-admin"),
    )?;
    r.show(&out, 1);
    tell!(r, "  bank-b's operator sees bank-b's one key, none of the first tenant's, and none of its jobs:");
    let out = r.quill_identity(&["key", "list"], &id_dir, false)?;
    r.show(&out, 4);
    let out = r.quill_identity(&["job", "list"], &id_dir, false)?;
    r.show(&out, 2);
    tell!(r, "  the first tenant's profile names keys bank-b does not have: refused before anything is stored");
    let (p, i) = (profile.to_str().unwrap_or_default(), input.to_str().unwrap_or_default());
    let args = ["job", "submit", "--profile", p, "--input", i, "--mac-key", "MAC-OUTPUT-TEST"];
    let out = r.quill_identity(&args, &id_dir, true)?;
    r.show(&out, 1);
    Ok(())
}

/// Steps 1–3 of the story: a dev cluster of `nodes` in `r.dir`, the SMK ceremony, the TEST keys.
pub(crate) fn setup(r: &mut Runner, nodes: u64) -> Result<()> {
    let dir = r.dir.clone();
    r.say("start the cluster: one quilld per node, each with its own hsm-sim token");
    let out = r.quill(
        &["dev", "up", "--nodes", &nodes.to_string(), "--hsm", "sim", "--dir", dir.to_str().unwrap_or(".")],
        None,
    )?;
    r.show(&out, 3);
    // Wait until every node enrolled its HSM transport key.
    let who = crate::client::Who {
        target: crate::client::Target {
            endpoint: None,
            endpoints: Vec::new(),
            dev_dir: Some(dir.clone()),
            identity: None,
            actor: Some(DEMO_READER.into()),
        },
    };
    let session = crate::client::Session::new(&who)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = session.nodes().map(|n| n.len()).unwrap_or(0);
        if n as u64 >= nodes {
            tell!(r, "  {n} nodes up, each enrolled with its HSM transport key");
            break;
        }
        if Instant::now() > deadline {
            bail!("only {n} of {} nodes enrolled after 90 s", nodes);
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    r.say("the storage master key, from three custodians' components (each sealed to every node's HSM)");
    r.quill(&["ceremony", "start", "--key", "smk", "--components", "3", "--id", "demo-smk"], Some("admin:demo-admin"))?;
    for c in ["custodian:TEST-alice", "custodian:TEST-bob", "custodian:TEST-carol"] {
        let out = r.quill(&["ceremony", "submit", "--id", "demo-smk", "--generate"], Some(c))?;
        r.show(out.lines().last().unwrap_or_default(), 1);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = r.quill(&["ceremony", "status", "--id", "demo-smk", "--json"], None)?;
        let v: Value = serde_json::from_str(s.trim()).unwrap_or(Value::Null);
        let c = if v.is_array() { v[0].clone() } else { v };
        if c["formed_on"].as_array().map_or(0, Vec::len) as u64 >= nodes {
            tell!(r, "  formed inside every node's HSM, KCV {}", c["kcv"].as_str().unwrap_or("?"));
            break;
        }
        if Instant::now() > deadline {
            bail!("the SMK did not form on every node: {c}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    r.say("load the published TEST keys by ceremonies; TEST CA; issuer keys generated in HSMs and certified");
    let out = r.quill(&["dev", "load-test-keys"], Some("admin:demo-admin"))?;
    r.show(&out, 2);
    let out = r.quill(&["issuer", "list"], None)?;
    r.show(&out, 5);

    Ok(())
}

/// Make `dir` a fresh demo/bench directory (stopping a cluster a previous run left there).
pub(crate) fn fresh_dir(exe: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.join(MARKER).exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!("{} exists and was not made by quill: choose another --dir", dir.display());
        }
        let _ = Command::new(exe).args(["dev", "down", "--wipe", "--dir"]).arg(dir).output();
        let _ = std::fs::remove_dir_all(dir);
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MARKER), "made by `quill demo` / `quill bench cluster`; the next run wipes it\n")?;
    Ok(())
}

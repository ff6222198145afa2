//! `quill bench cluster`: end-to-end cards/s of a local dev cluster, from submit to fetched
//! output, with the Raft bytes per card, against the same profile's single-node `quill bench
//! prep` figure measured in the same run (pool off: the cluster's workers run without an ICC key
//! pool). On one machine the nodes share its cores, so the ratio shows what replication and
//! coordination cost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::lab::demo::{Runner, fresh_dir, setup};

/// The operator who submits and fetches the benchmark's batch (only a job's submitter may fetch it).
const BENCH_OPERATOR: &str = "operator:bench";

/// Options of `quill bench cluster`.
#[derive(clap::Args, Debug)]
pub struct ClusterBenchArgs {
    /// Nodes.
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Cards in the batch.
    #[arg(long, default_value_t = 5000)]
    cards: usize,
    /// Cards per chunk.
    #[arg(long, default_value_t = 250)]
    chunk_size: u32,
    /// Directory of the benchmark cluster (wiped first, stopped at the end).
    #[arg(long, default_value = ".quill/bench-cluster", value_name = "DIR")]
    dir: PathBuf,
}

/// A visa-dda-credit batch of `n` cards.
fn write_batch(path: &Path, n: usize) -> Result<()> {
    let mut s = String::from("PAN,PSN,EXPIRY,EFFECTIVE,SERVICE_CODE,TRACK_NAME,EMBOSS_NAME,COUNTRY\n");
    for i in 0..n {
        let body = format!("476173{i:09}");
        s.push_str(&format!(
            "{body}{},{:02},2{}12,2512,201,TEST/CARD {i},CARD {i} TEST,840\n",
            quill_prep::input::luhn_check_digit(&body),
            i % 100,
            7 + i % 3
        ));
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

/// The largest `quill_raft_log_bytes_appended_total` over the nodes (the leader appends every
/// entry; followers append what they replicate).
fn log_bytes(dir: &Path, nodes: u64) -> u64 {
    (1..=nodes)
        .filter_map(|i| {
            let conf = std::fs::read_to_string(dir.join(format!("node-{i}/node.toml"))).ok()?;
            let v: toml::Value = toml::from_str(&conf).ok()?;
            let addr = v.get("http_addr")?.as_str()?.to_string();
            let (_, body) = crate::lab::dev::http_get(&addr, "/metrics").ok()?;
            body.lines()
                .find(|l| l.starts_with("quill_raft_log_bytes_appended_total{"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        })
        .max()
        .unwrap_or(0)
}

/// `quill bench cluster`.
pub fn run(a: &ClusterBenchArgs, json_out: bool) -> Result<u8> {
    let exe = std::env::current_exe().context("cannot locate the quill executable")?;
    let dir = if a.dir.is_absolute() { a.dir.clone() } else { std::env::current_dir()?.join(&a.dir) };
    fresh_dir(&exe, &dir)?;
    let profile = dir.join("visa-dda-credit.toml");
    std::fs::write(&profile, quill_prep::samples::VISA_DDA_CREDIT)?;
    let input = dir.join("batch.csv");
    write_batch(&input, a.cards)?;
    let mut r = Runner::new(exe.clone(), dir.clone());
    setup(&mut r, a.nodes)?;

    r.say(&format!("{} cards through the cluster: submit, prepare, fetch", a.cards));
    let bytes0 = log_bytes(&dir, a.nodes);
    let t0 = Instant::now();
    let out = r.quill(
        &[
            "job",
            "submit",
            "--json",
            "--profile",
            profile.to_str().unwrap_or_default(),
            "--input",
            input.to_str().unwrap_or_default(),
            "--chunk-size",
            &a.chunk_size.to_string(),
            "--mac-key",
            "MAC-OUTPUT-TEST",
        ],
        Some(BENCH_OPERATOR),
    )?;
    let v: Value = serde_json::from_str(out.trim()).map_err(|e| anyhow!("{e}: {out}"))?;
    let job = v["job"].as_str().ok_or_else(|| anyhow!("no job id"))?.to_string();
    let deadline = Instant::now() + Duration::from_secs(3600);
    let status = loop {
        let s = r.quill_quiet(&["job", "status", &job, "--json"], Some(BENCH_OPERATOR))?;
        let st: Value = serde_json::from_str(s.trim()).unwrap_or(Value::Null);
        if st["state"] == "done" {
            break st;
        }
        if Instant::now() > deadline {
            bail!("job {job} not done after an hour: {s}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let out_dir = dir.join("output");
    r.quill(&["job", "fetch", &job, "-o", out_dir.to_str().unwrap_or_default()], Some(BENCH_OPERATOR))?;
    let secs = t0.elapsed().as_secs_f64();
    let bytes = log_bytes(&dir, a.nodes).saturating_sub(bytes0);
    let cards = status["cards_done"].as_u64().unwrap_or(0);
    let per_node = status["per_node"].clone();
    r.quill(&["dev", "down", "--dir", dir.to_str().unwrap_or_default()], None)?;

    r.say("the same profile on one node (quill bench prep, pool off), on the same machine");
    let bench = Command::new(&exe)
        .args(["bench", "prep", "--json", "--profile"])
        .arg(&profile)
        .arg("--input")
        .arg(&input)
        .args(["--cards", &(a.cards / 5).max(100).to_string(), "--keygen-seconds", "3"])
        .output()
        .context("quill bench prep")?;
    let single: Value = serde_json::from_str(String::from_utf8_lossy(&bench.stdout).trim())
        .map_err(|e| anyhow!("bench prep: {e}: {}", String::from_utf8_lossy(&bench.stderr)))?;
    let single_rate = single["cards_per_s_pool_off"].as_f64().unwrap_or(0.0);
    let _ = std::fs::remove_dir_all(&dir);
    let rate = cards as f64 / secs;
    let ratio = if single_rate > 0.0 { rate / single_rate } else { 0.0 };
    let per_card = if cards > 0 { bytes as f64 / cards as f64 } else { 0.0 };
    if json_out {
        println!(
            "{}",
            json!({"nodes": a.nodes, "cards": cards, "seconds": secs, "cards_per_s": rate, "raft_bytes": bytes,
                   "raft_bytes_per_card": per_card, "single_node_cards_per_s": single_rate, "ratio": ratio,
                   "per_node": per_node})
        );
    } else {
        println!(
            "\nquill bench cluster: {} nodes, {cards} cards of visa-dda-credit (RSA-1152 DDA), chunks of {}",
            a.nodes, a.chunk_size
        );
        println!("  end to end (submit → all chunks prepared → fetched, MACs checked): {secs:.1} s, {rate:.1} cards/s");
        println!("  Raft log bytes appended (leader): {bytes} B, {per_card:.0} B per card");
        println!("  single node, same profile, pool off: {single_rate:.1} cards/s");
        println!(
            "  ratio cluster / single node: {ratio:.3} ({:+.1} %; {} nodes share this machine's cores)",
            (ratio - 1.0) * 100.0,
            a.nodes
        );
    }
    Ok(crate::exit_codes::OK)
}

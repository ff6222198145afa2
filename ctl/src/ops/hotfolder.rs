//! `quill job hot-folder`: Quill as a black box in a bureau's production line.
//!
//! Watches `--in`: every complete file that appears there (not hidden, not `*.part`/`*.tmp`, and
//! unchanged in size and time over one poll) is submitted as a job with `--profile`. When its job
//! is done the three output streams are fetched (each MAC checked by the cluster on arrival) into
//! `--out/<file>.tmp/` and renamed to `--out/<file>/` in one step, delivery is acknowledged, and
//! the input is moved to `--in/processed/`. A file the cluster refuses (bad records, wrong
//! encoding…) moves to `--in/rejected/` with the reason in `<file>.error.txt`.
//!
//! What it did is kept in `--in/.quill-hot-folder.json` (file digest → job): after a restart it
//! picks up its jobs where it left them and never submits a file twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::{Session, Who};

/// Options of `quill job hot-folder`.
#[derive(clap::Args, Debug)]
pub struct HotFolderArgs {
    /// Directory to watch for batch files.
    #[arg(long = "in")]
    input: PathBuf,
    /// Directory the outputs are written to (one sub-directory per input file).
    #[arg(long)]
    out: PathBuf,
    /// Card-product profile for every file of this folder.
    #[arg(long)]
    profile: PathBuf,
    /// Cards per chunk.
    #[arg(long, default_value_t = 250)]
    chunk_size: u32,
    /// Label of the output MAC key.
    #[arg(long, default_value = "MAC-OUTPUT")]
    mac_key: String,
    /// Poll interval.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// Stop once every file seen has been delivered (or rejected) and nothing new appeared.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    who: Who,
}

const STATE: &str = ".quill-hot-folder.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// SHA-256 of a file → what happened to it.
    files: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    file: String,
    job: Option<String>,
    /// `submitted`, `delivered` or `rejected`.
    status: String,
}

fn load_state(dir: &Path) -> Result<State> {
    match std::fs::read(dir.join(STATE)) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{}: not a hot-folder state file", dir.join(STATE).display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.join(STATE).display())),
    }
}

fn save_state(dir: &Path, st: &State) -> Result<()> {
    let tmp = dir.join(format!("{STATE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)?;
    std::fs::rename(&tmp, dir.join(STATE)).context("cannot save the hot-folder state")
}

fn candidate(p: &Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    p.is_file() && !name.starts_with('.') && !name.ends_with(".part") && !name.ends_with(".tmp")
}

fn fingerprint(p: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn move_to(p: &Path, sub: &str) -> Result<PathBuf> {
    let dir = p.parent().unwrap_or(Path::new(".")).join(sub);
    std::fs::create_dir_all(&dir)?;
    let to = dir.join(p.file_name().unwrap_or_default());
    std::fs::rename(p, &to).with_context(|| format!("cannot move {} to {}", p.display(), to.display()))?;
    Ok(to)
}

/// `quill job hot-folder`.
pub fn run(a: &HotFolderArgs, json: bool) -> Result<u8> {
    let event = |doc: serde_json::Value, text: String| {
        if json { println!("{doc}") } else { println!("{text}") }
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut s = Session::new(&a.who)?;
    let mut st = load_state(&a.input)?;
    let mut seen: BTreeMap<PathBuf, (u64, std::time::SystemTime)> = BTreeMap::new();
    loop {
        let mut pending_files = false;
        // 1. New complete files.
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(&a.input)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| candidate(p)).collect();
        entries.sort();
        for p in entries {
            let now = fingerprint(&p);
            let stable = now.is_some() && seen.get(&p) == now.as_ref();
            if let Some(f) = now {
                seen.insert(p.clone(), f);
            }
            if !stable {
                pending_files = true;
                continue;
            }
            let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let digest = hex::encode_upper(Sha256::digest(&bytes));
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if let Some(e) = st.files.get(&digest) {
                // Already handled (a restart, or the same file dropped again): never twice.
                if e.status != "submitted" {
                    event(
                        serde_json::json!({"file": name, "event": "duplicate", "status": e.status, "job": e.job}),
                        format!("{name}: already {} as job {}; moved aside", e.status, e.job.as_deref().unwrap_or("-")),
                    );
                    move_to(&p, "processed")?;
                }
                continue;
            }
            let opts =
                crate::ops::jobs::SubmitOptions { chunk_size: a.chunk_size, mac_key: &a.mac_key, ..Default::default() };
            match crate::ops::jobs::submit_file(&mut s, &a.profile, &p, &opts) {
                Ok(r) => {
                    let (job, records, skipped) = (r.job, r.records, r.skipped.len());
                    event(
                        serde_json::json!({"file": name, "event": "submitted", "job": job, "records": records,
                                           "skipped": skipped, "transliterated": r.transliterated}),
                        format!("{name}: submitted as job {job} ({records} cards, {skipped} skipped)"),
                    );
                    st.files.insert(digest, Entry { file: name, job: Some(job), status: "submitted".into() });
                }
                Err(e) => {
                    event(
                        serde_json::json!({"file": name, "event": "rejected", "reason": format!("{e:#}")}),
                        format!("{name}: rejected: {e:#}"),
                    );
                    let to = move_to(&p, "rejected")?;
                    std::fs::write(to.with_extension("error.txt"), format!("{e:#}\n"))?;
                    st.files.insert(digest, Entry { file: name, job: None, status: "rejected".into() });
                }
            }
            save_state(&a.input, &st)?;
            seen.remove(&p);
        }
        // 2. Jobs done: fetch, deliver atomically, acknowledge, move the input aside.
        let mut waiting = false;
        for (digest, e) in st.files.clone() {
            let (Some(job), "submitted") = (e.job.clone(), e.status.as_str()) else { continue };
            let j = s.job(&job)?;
            match j.state.as_str() {
                "done" => {
                    let stem = e.file.clone();
                    let tmp = a.out.join(format!("{stem}.tmp"));
                    let fin = a.out.join(&stem);
                    let _ = std::fs::remove_dir_all(&tmp);
                    let got = crate::ops::jobs::fetch_to(&s, &job, &tmp)?;
                    if fin.exists() {
                        std::fs::remove_dir_all(&fin)?;
                    }
                    std::fs::rename(&tmp, &fin).with_context(|| format!("cannot move {} into place", fin.display()))?;
                    let delivered: Vec<(String, String)> =
                        got.iter().map(|(n, d, _)| (format!("{n}.jsonl"), d.clone())).collect();
                    s.job_ack(&job, delivered)?;
                    let src = a.input.join(&e.file);
                    if src.exists() {
                        move_to(&src, "processed")?;
                    }
                    event(
                        serde_json::json!({"file": e.file, "event": "delivered", "job": job, "output": fin.display().to_string()}),
                        format!("{}: job {job} delivered to {}", e.file, fin.display()),
                    );
                    st.files.insert(digest, Entry { status: "delivered".into(), ..e });
                    save_state(&a.input, &st)?;
                }
                "cancelled" | "acked" | "expired" => {
                    st.files.insert(digest, Entry { status: j.state.clone(), ..e });
                    save_state(&a.input, &st)?;
                }
                _ => waiting = true,
            }
        }
        if a.once && !waiting && !pending_files {
            return Ok(crate::exit_codes::OK);
        }
        std::thread::sleep(Duration::from_millis(a.poll_ms));
    }
}

//! `quill job submit|list|status|watch|fetch|ack|cancel`: batches across the cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use quill_prep::engine::output::{self, Stream};
use quill_prep::profile::Profile;
use quill_proto::v1::jobs_client::JobsClient;
use quill_proto::v1::{ChunkView, JobView};
use quill_proto::v1::{FetchRequest, MacRequest, SubmitPart};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::client;
use crate::client::{Session, Who};
use crate::exit_codes::CliError;
use crate::output::print;

const PART: usize = 1 << 20;

fn jobs_client(s: &Session, endpoint: &str, timeout: Duration) -> Result<JobsClient<client::Chan>> {
    Ok(JobsClient::new(s.chan(endpoint, timeout)?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// `quill job submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// Card-product profile (TOML).
    #[arg(long)]
    profile: PathBuf,
    /// Batch file.
    #[arg(long)]
    input: PathBuf,
    /// Cards per chunk.
    #[arg(long, default_value_t = 250)]
    chunk_size: u32,
    /// Submit even if the same file (same SHA-256) was submitted before (open or delivered:
    /// new cards and PINs for the same PANs), or cards of it (same PAN and PSN) are in a job not
    /// yet acknowledged. Needs --reason.
    #[arg(long, requires = "reason")]
    force: bool,
    /// Why --force (1-500 characters, e.g. the issuer's reissue request): sealed under the
    /// cluster's audit encryption key into the job's audit record; only an auditor's
    /// `quill audit export --decrypt` shows it.
    #[arg(long, requires = "force", value_name = "TEXT")]
    reason: Option<String>,
    /// Label of the output MAC key.
    #[arg(long, default_value = "MAC-OUTPUT")]
    mac_key: String,
    /// Purge the job's data this many hours after submission unless acknowledged before
    /// (default: kept until acknowledged or cancelled).
    #[arg(long, default_value_t = 0)]
    retention_hours: u32,
    /// The tenant the job belongs to [default: the identity's one tenant, or `default`]; its
    /// profile may name only that tenant's keys.
    #[arg(long, value_name = "T")]
    tenant: Option<String>,
    #[command(flatten)]
    who: Who,
}

/// How a file is submitted, besides its profile and input.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions<'a> {
    /// Cards per chunk.
    pub chunk_size: u32,
    /// `--force` with its reason.
    pub force: Option<&'a str>,
    /// Output MAC key label.
    pub mac_key: &'a str,
    /// Purge after this many hours unless acknowledged (0: never).
    pub retention_hours: u32,
    /// The job's tenant ("": the identity's one tenant, or `default`).
    pub tenant: &'a str,
}

/// Submit a file; returns the job id.
pub fn submit_file(
    s: &mut Session,
    profile: &Path,
    input: &Path,
    o: &SubmitOptions<'_>,
) -> Result<quill_proto::v1::SubmitResponse> {
    let SubmitOptions { chunk_size, force, mac_key, retention_hours, tenant } = o.clone();
    let name = profile.display().to_string();
    let toml = std::fs::read_to_string(profile).with_context(|| format!("cannot read {name}"))?;
    let p = Profile::parse(&toml, &name).map_err(|e| anyhow!("{e}"))?;
    let data = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let digest = hex::encode_upper(Sha256::digest(&data));
    let file_name = input.file_name().map_or_else(|| "input".into(), |n| n.to_string_lossy().into_owned());
    let caller = s.caller();
    let (client_id, serial) = (caller.client_id.clone(), caller.serial);
    let first = SubmitPart {
        caller: Some(caller),
        profile_name: format!("{} ({name})", p.product.name),
        profile_toml: toml,
        file_name,
        total_bytes: data.len() as u64,
        digest,
        chunk_size,
        force: force.is_some(),
        reason: force.unwrap_or_default().to_string(),
        mac_key: mac_key.to_string(),
        data: Vec::new(),
        retention_hours,
        tenant: tenant.to_string(),
    };
    let mut parts = vec![first];
    parts.extend(data.chunks(PART).map(|c| SubmitPart { data: c.to_vec(), ..Default::default() }));
    let endpoints = s.endpoints().to_vec();
    let r = s.rt().block_on(client::write_retrying(&endpoints, &client_id, serial, |ep| {
        let c = jobs_client(s, &ep, Duration::from_secs(600));
        let parts = parts.clone();
        async move {
            let mut c = c.map_err(|e| tonic::Status::invalid_argument(format!("{e:#}")))?;
            c.submit(tokio_stream::iter(parts)).await
        }
    }))?;
    Ok(r.into_inner())
}

/// `quill job submit`.
pub fn submit(a: &SubmitArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let force = if a.force { a.reason.as_deref() } else { None };
    let opts = SubmitOptions {
        chunk_size: a.chunk_size,
        force,
        mac_key: &a.mac_key,
        retention_hours: a.retention_hours,
        tenant: a.tenant.as_deref().unwrap_or_default(),
    };
    let r = submit_file(&mut s, &a.profile, &a.input, &opts)?;
    for k in &r.skipped {
        eprintln!("skipped: {k}");
    }
    let (job, records, skipped, transliterated) = (&r.job, r.records, r.skipped.len(), r.transliterated);
    print(
        json,
        json!({"job": job, "records": records, "skipped": skipped, "transliterated": transliterated}),
        format!(
            "job {job} submitted: {records} card(s){}{}",
            if skipped == 0 { String::new() } else { format!(", {skipped} record(s) skipped") },
            if transliterated == 0 { String::new() } else { format!(", {transliterated} name(s) transliterated") }
        ),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill job list|status|watch|fetch|ack|cancel`.
#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// Job id.
    job: String,
    #[command(flatten)]
    who: Who,
}

/// `quill job list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    who: Who,
}

fn progress(j: &JobView, chunks: &[ChunkView]) -> (String, serde_json::Value) {
    let mut per_node: std::collections::BTreeMap<u64, (u32, u64)> = Default::default();
    for c in chunks.iter().filter(|c| c.state == "done") {
        let e = per_node.entry(c.node.unwrap_or_default()).or_default();
        e.0 += 1;
        e.1 += u64::from(c.prepared);
    }
    let end = if j.done_ms > 0 { j.done_ms } else { now_ms() };
    let elapsed = end.saturating_sub(j.created_ms).max(1);
    let rate = j.cards_done as f64 * 1000.0 / elapsed as f64;
    let left = j.records.saturating_sub(j.cards_done + j.failures.len() as u64);
    let eta = if rate > 0.0 && j.state == "running" { format!("{:.0} s", left as f64 / rate) } else { "-".into() };
    let nodes: Vec<String> =
        per_node.iter().map(|(n, (c, k))| format!("node {n}: {c} chunk(s), {k} card(s)")).collect();
    let text = format!(
        "job {} [{}] {}: {}/{} cards, {}/{} chunks, {} failed, {:.1} cards/s, ETA {}\n  {}",
        j.id,
        j.state,
        j.product,
        j.cards_done,
        j.records,
        j.chunks_done,
        j.chunks,
        j.failures.len(),
        rate,
        eta,
        nodes.join("; ")
    );
    let doc = json!({"id": j.id, "tenant": j.tenant, "state": j.state, "product": j.product, "file": j.file, "records": j.records,
        "cards_done": j.cards_done, "chunks": j.chunks, "chunks_done": j.chunks_done, "failures": j.failures,
        "skipped": j.skipped, "cards_per_s": rate, "per_node": per_node.iter().map(|(n, (c, k))| json!({"node": n, "chunks": c, "cards": k})).collect::<Vec<_>>(),
        "chunk_nodes": chunks.iter().map(|c| json!({"chunk": c.n, "state": c.state, "node": c.node, "claims": c.claims})).collect::<Vec<_>>()});
    (text, doc)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `quill job list`.
pub fn list(a: &ListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let jobs = s.jobs()?;
    if json {
        let v: Vec<_> = jobs.iter().map(|j| json!({"id": j.id, "state": j.state, "product": j.product, "records": j.records, "cards_done": j.cards_done, "file": j.file})).collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(crate::exit_codes::OK);
    }
    let mut rows =
        vec![["JOB", "TENANT", "STATE", "PRODUCT", "FILE", "CARDS", "DONE", "FAILED"].map(String::from).to_vec()];
    for j in &jobs {
        rows.push(vec![
            j.id.clone(),
            j.tenant.clone(),
            j.state.clone(),
            j.product.clone(),
            j.file.clone(),
            j.records.to_string(),
            j.cards_done.to_string(),
            j.failures.len().to_string(),
        ]);
    }
    print!("{}", crate::output::render_table(&rows));
    Ok(crate::exit_codes::OK)
}

fn load(s: &Session, id: &str) -> Result<(JobView, Vec<ChunkView>)> {
    Ok((s.job(id)?, s.chunks(id)?))
}

/// `quill job status`.
pub fn status(a: &JobArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let (j, chunks) = load(&s, &a.job)?;
    let (text, doc) = progress(&j, &chunks);
    print(json, doc, text);
    for f in j.failures.iter().take(20) {
        if !json {
            println!("  failed: {f}");
        }
    }
    Ok(crate::exit_codes::OK)
}

/// How `job watch` shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchMode {
    /// A progress bar on stderr (a person at a terminal).
    Bar,
    /// One line on stdout per change (a log, CI, a pipe).
    Lines,
    /// One JSON document per poll on stdout, the last one when the job ended.
    Json,
}

/// `--json` wins; otherwise a bar only when stderr is a terminal outside CI (CI may fake one).
fn watch_mode(json: bool, stderr_terminal: bool, ci: bool) -> WatchMode {
    match (json, stderr_terminal && !ci) {
        (true, _) => WatchMode::Json,
        (false, true) => WatchMode::Bar,
        (false, false) => WatchMode::Lines,
    }
}

/// `quill job watch`: a progress bar until the job is done. Rides out elections and a node's
/// death: every poll tries the known endpoints within the retry budget.
pub fn watch(a: &JobArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    let mode = watch_mode(json, std::io::IsTerminal::is_terminal(&std::io::stderr()), ci);
    let mut last: Option<String> = None;
    let mut bar: Option<indicatif::ProgressBar> = None;
    loop {
        let (j, chunks) = load(&s, &a.job)?;
        let (text, doc) = progress(&j, &chunks);
        let first = text.lines().next().unwrap_or_default().to_string();
        match mode {
            WatchMode::Json => println!("{doc}"),
            WatchMode::Lines => {
                if last.as_deref() != Some(first.as_str()) {
                    println!("{first}");
                    last = Some(first);
                }
            }
            WatchMode::Bar => {
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(j.records.max(1));
                    if let Ok(style) = indicatif::ProgressStyle::with_template("[{bar:40}] {msg}") {
                        b.set_style(style.progress_chars("#>."));
                    }
                    b
                });
                b.set_length(j.records.max(1));
                b.set_position(j.cards_done);
                b.set_message(first);
            }
        }
        if j.state != "running" && j.state != "uploading" {
            if let Some(b) = bar.take() {
                b.finish();
            }
            if mode != WatchMode::Json {
                println!("{}", text.lines().nth(1).unwrap_or_default());
            }
            return Ok(crate::exit_codes::OK);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::{WatchMode, watch_mode};

    #[test]
    fn the_bar_shows_only_on_a_terminal_outside_ci_and_json_wins() {
        assert_eq!(watch_mode(false, true, false), WatchMode::Bar);
        assert_eq!(watch_mode(false, true, true), WatchMode::Lines);
        assert_eq!(watch_mode(false, false, false), WatchMode::Lines);
        assert_eq!(watch_mode(true, true, false), WatchMode::Json);
        assert_eq!(watch_mode(true, false, true), WatchMode::Json);
    }
}

/// Fetch the three streams of a done job into `dir` (each checked: digest, count, and its MAC
/// recomputed by the cluster); returns (stream, sha256 hex, records).
pub fn fetch_to(s: &Session, job: &str, dir: &Path) -> Result<Vec<(String, String, usize)>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let endpoints = s.endpoints().to_vec();
    let mut out = Vec::new();
    for stream in Stream::ALL {
        let name = stream.file_name().trim_end_matches(".jsonl").to_string();
        let bytes: Vec<u8> = s.rt().block_on(client::read_retrying(&endpoints, |ep| {
            let c = jobs_client(s, &ep, Duration::from_secs(600));
            let req = FetchRequest { job: job.into(), stream: name.clone() };
            async move {
                let mut c = c.map_err(|e| tonic::Status::invalid_argument(format!("{e:#}")))?;
                let mut st = c.fetch(req).await?.into_inner();
                let mut buf = Vec::new();
                while let Some(p) = st.message().await? {
                    buf.extend_from_slice(&p.data);
                }
                Ok(buf)
            }
        }))?;
        // Check on arrival: structure, digest, count, and the MAC recomputed by the cluster (the
        // last endpoint first, so another node than the one that served it when there are several).
        let mac_eps: Vec<String> = endpoints.iter().rev().cloned().collect();
        let checked = output::check_stream_with(stream.file_name(), &bytes, |_, d, claimed| {
            s.rt().block_on(async {
                let mut last = "no endpoint".to_string();
                for ep in &mac_eps {
                    let mut c = jobs_client(s, ep, Duration::from_secs(30)).map_err(|e| e.to_string())?;
                    let req = MacRequest { job: job.into(), sha256: d.to_vec(), mac: claimed.to_vec() };
                    match c.mac(req).await {
                        Ok(r) => return Ok(r.into_inner().valid),
                        Err(e) => last = client::grpc_reason(&e),
                    }
                }
                Err(last)
            })
        })
        .map_err(|e| CliError::CheckFailed(format!("{} of job {job}: {e}", stream.file_name())))?;
        let path = dir.join(stream.file_name());
        let tmp = path.with_extension("jsonl.part");
        // Card data: readable by the operator only (0600 from creation).
        quill_trust::tls::pki::write_file(&tmp, &bytes, 0o600)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        out.push((name, hex::encode_upper(Sha256::digest(&bytes)), checked.records.len()));
    }
    Ok(out)
}

/// `quill job fetch`.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Job id.
    job: String,
    /// Output directory.
    #[arg(short, long)]
    out: PathBuf,
    #[command(flatten)]
    who: Who,
}

/// `quill job fetch`.
pub fn fetch(a: &FetchArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let got = fetch_to(&s, &a.job, &a.out)?;
    let text: Vec<String> =
        got.iter().map(|(n, d, r)| format!("{n}: {r} record(s), MAC verified, SHA-256 {}", &d[..16])).collect();
    print(
        json,
        json!({"job": a.job, "dir": a.out.display().to_string(), "streams": got.iter().map(|(n, d, r)| json!({"stream": n, "sha256": d, "records": r})).collect::<Vec<_>>()}),
        format!("{} -> {}\n  {}", a.job, a.out.display(), text.join("\n  ")),
    );
    Ok(crate::exit_codes::OK)
}

/// `quill job ack`: record delivery (the digests of the fetched files in DIR) and purge.
#[derive(clap::Args, Debug)]
pub struct AckArgs {
    /// Job id.
    job: String,
    /// The directory the job was fetched to (its files' digests are recorded).
    #[arg(long)]
    fetched: Option<PathBuf>,
    #[command(flatten)]
    who: Who,
}

/// `quill job ack`.
pub fn ack(a: &AckArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let mut delivered = Vec::new();
    if let Some(dir) = &a.fetched {
        for stream in Stream::ALL {
            let p = dir.join(stream.file_name());
            let b = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            delivered.push((stream.file_name().to_string(), hex::encode_upper(Sha256::digest(&b))));
        }
    }
    let detail = s.job_ack(&a.job, delivered)?;
    print(json, json!({"job": a.job, "result": "acknowledged", "detail": detail}), format!("job {}: {detail}", a.job));
    Ok(crate::exit_codes::OK)
}

/// `quill job cancel`.
pub fn cancel(a: &JobArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let detail = s.job_cancel(&a.job)?;
    print(json, json!({"job": a.job, "result": "cancelled", "detail": detail}), format!("job {}: {detail}", a.job));
    Ok(crate::exit_codes::OK)
}

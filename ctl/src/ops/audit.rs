//! `quill audit verify|anchor|tail|export`: the audit chain, for auditors.
//!
//! `verify` asks one node to recompute its chain and check every MAC with its HSM (its own MACs
//! over every record, the seals, the cluster audit key's MACs), then compares that node's chain
//! with every other member's at the same record, so a node whose disk was rewritten stands out
//! even when it checks itself clean. `anchor` appends the newest seal of a verified chain to a file
//! kept outside the cluster; `verify --anchors FILE` holds the chain to every line of it, which
//! catches a history rewritten or truncated the same way on every node.
//!
//! `archive` bounds the live chain: it writes the oldest live records (up to a sealed one) to a
//! file whose last line, the trailer, carries the cluster audit key's MAC over the records' range,
//! links and SHA-256, and asks the approval that prunes them; once two custodians granted it,
//! `prune` removes them from the cluster, whose chain then starts from the archive's last hash.
//! `verify --archive FILE` checks archive files (contents against the trailer here, the trailer's
//! MAC on the node) and that they lead up to where the live chain starts.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use quill_proto::v1::approval_ask_request::Action;
use quill_proto::v1::{
    ApprovalAskRequest, AuditAnchorLine, AuditArchiveRequest, AuditPruneRequest, AuditTailRequest, AuditVerifyRequest,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::client::{Session, Who};
use crate::exit_codes::{CHECK_FAILED, CliError, OK};

/// `quill audit verify`.
#[derive(clap::Args, Debug)]
pub struct AuditVerifyArgs {
    /// Hold the chain to the anchors in FILE (lines written by `quill audit anchor`): every
    /// anchored record must still be in the chain with its anchored hash.
    #[arg(long, value_name = "FILE")]
    anchors: Option<PathBuf>,
    /// Also check archive files (`quill audit archive`; repeat for each, oldest first or not):
    /// every record line against its trailer, the trailer's MAC, and that together they lead from
    /// record 1 to where the live chain starts.
    #[arg(long, value_name = "FILE")]
    archive: Vec<PathBuf>,
    /// Only verify on the endpoint node; do not compare its chain with the other members'.
    #[arg(long)]
    no_compare: bool,
    #[command(flatten)]
    who: Who,
}

/// `quill audit archive`.
#[derive(clap::Args, Debug)]
pub struct AuditArchiveArgs {
    /// The archive file to write (created 0600; an existing file is never overwritten). Keep it
    /// outside the cluster, like anchors.
    #[arg(long, value_name = "FILE", required_unless_present = "ask", conflicts_with = "ask")]
    out: Option<PathBuf>,
    /// Ask the prune approval again for an archive already written (its approval expired, was
    /// denied, or the request failed): the file is checked first, nothing is archived anew.
    #[arg(long, value_name = "FILE", conflicts_with = "upto")]
    ask: Option<PathBuf>,
    /// The last record to archive (default: the last record a seal covers; at most 100,000
    /// records per archive).
    #[arg(long)]
    upto: Option<u64>,
    #[command(flatten)]
    who: Who,
}

/// `quill audit prune`.
#[derive(clap::Args, Debug)]
pub struct AuditPruneArgs {
    /// The approval `quill audit archive` asked for, granted by two custodians.
    #[arg(long)]
    approval: String,
    #[command(flatten)]
    who: Who,
}

/// An archive file checked line by line against its trailer: the trailer line, and the records.
fn check_archive_file(path: &PathBuf) -> Result<(String, u64)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read the archive {}: {e}", path.display())))?;
    let what = path.display();
    let broken = |line: usize, why: String| -> anyhow::Error {
        CliError::CheckFailed(format!("{what}:{line}: {why}: the archive was altered or is incomplete")).into()
    };
    let lines: Vec<&str> = text.lines().collect();
    let Some((trailer, records)) = lines.split_last() else { return Err(broken(1, "empty".into())) };
    let t: Value = serde_json::from_str(trailer).map_err(|e| broken(lines.len(), format!("no trailer ({e})")))?;
    let (first, last) = (t["first"].as_u64().unwrap_or(0), t["last"].as_u64().unwrap_or(0));
    if t["archive"] != 1 || first == 0 || last < first || records.len() as u64 != last - first + 1 {
        return Err(broken(
            lines.len(),
            format!("the trailer announces records {first}..={last}, the file holds {}", records.len()),
        ));
    }
    let mut digest = Sha256::new();
    let mut prev = t["prev"].as_str().unwrap_or("").to_string();
    for (i, line) in records.iter().enumerate() {
        let v: Value = serde_json::from_str(line).map_err(|e| broken(i + 1, format!("not a record ({e})")))?;
        let seq = first + i as u64;
        if v["seq"].as_u64() != Some(seq) {
            return Err(broken(i + 1, format!("record {seq} expected, found {}", v["seq"])));
        }
        if v["prev"].as_str() != Some(prev.as_str()) {
            return Err(broken(i + 1, format!("record {seq} does not link to the record before it")));
        }
        prev = v["hash"].as_str().unwrap_or("").to_string();
        digest.update(line.as_bytes());
        digest.update(b"\n");
    }
    if t["last_hash"].as_str() != Some(prev.as_str()) {
        return Err(broken(lines.len(), "the trailer's last hash is not the last record's".into()));
    }
    if t["sha256"].as_str() != Some(hex::encode(digest.finalize()).as_str()) {
        return Err(broken(lines.len(), "the records' SHA-256 is not the trailer's".into()));
    }
    Ok((trailer.to_string(), last))
}

/// `quill audit archive --out FILE`: the oldest live records up to a sealed one, written with
/// their MACed trailer, checked as written, then the approval that prunes them asked for.
/// `--ask FILE` asks that approval again for an archive already written.
pub fn audit_archive(a: &AuditArchiveArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let out = match (&a.out, &a.ask) {
        (_, Some(existing)) => return ask_prune(&mut s, existing, json),
        (Some(out), None) => out,
        (None, None) => return Err(CliError::Usage("give --out FILE (or --ask FILE)".into()).into()),
    };
    let upto = a.upto.unwrap_or(0);
    let r = s.call_keys(|mut c| async move { c.audit_archive(AuditArchiveRequest { upto }).await })?;
    let mut body = String::new();
    for l in &r.lines {
        body.push_str(l);
        body.push('\n');
    }
    body.push_str(&r.trailer);
    body.push('\n');
    let mut f = std::fs::OpenOptions::new();
    f.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
    let mut file = f.open(out).map_err(|e| {
        CliError::Usage(format!("cannot create the archive {} (never overwritten): {e}", out.display()))
    })?;
    file.write_all(body.as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
    file.sync_all().with_context(|| format!("cannot sync {}", out.display()))?;
    ask_prune(&mut s, out, json)
}

/// Check the archive at `path` and ask the approval that prunes its records.
fn ask_prune(s: &mut Session, path: &PathBuf, json: bool) -> Result<u8> {
    let (trailer, last) = check_archive_file(path)?;
    let t: Value = serde_json::from_str(&trailer).unwrap_or(Value::Null);
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let id = format!("audit-prune-{ms:x}");
    let detail = s.keys_write(|mut c, caller| {
        let req = ApprovalAskRequest {
            caller: Some(caller),
            id: id.clone(),
            action: Some(Action::AuditPrune(trailer.clone())),
            ttl_hours: 0,
            ttl_seconds: 0,
        };
        async move { c.approval_ask(req).await }
    })?;
    crate::output::print(
        json,
        serde_json::json!({"archive": path, "first": t["first"], "last": last, "sha256": t["sha256"],
                           "approval": id, "detail": detail}),
        format!(
            "archived records {}..={last} to {} (sha256 {}); approval {id} asked: two custodians grant it (quill approve grant {id}), then `quill audit prune --approval {id}` prunes them",
            t["first"],
            path.display(),
            t["sha256"].as_str().unwrap_or("")
        ),
    );
    Ok(OK)
}

/// `quill audit prune --approval ID`.
pub fn audit_prune(a: &AuditPruneArgs, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let detail = s.keys_write(|mut c, caller| {
        let req = AuditPruneRequest { caller: Some(caller), approval: a.approval.clone() };
        async move { c.audit_prune(req).await }
    })?;
    crate::output::print(
        json,
        serde_json::json!({"result": "pruned", "approval": a.approval, "detail": detail}),
        format!("approval {}: {detail}", a.approval),
    );
    Ok(OK)
}

/// `quill audit anchor`.
#[derive(clap::Args, Debug)]
pub struct AuditAnchorArgs {
    /// The anchors file to append to (created 0600 if missing); keep it outside the cluster.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    who: Who,
}

/// The lines of an anchors file, each named `FILE:LINE`; blank lines skipped.
fn read_anchors(path: &PathBuf) -> Result<Vec<AuditAnchorLine>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read the anchors file {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| AuditAnchorLine { source: format!("{}:{}", path.display(), i + 1), json: l.trim().to_string() })
        .collect())
}

/// Verify on the endpoint node; the report and the node's newest seal as an anchor line.
fn verify_on_node(
    s: &Session,
    anchors: Vec<AuditAnchorLine>,
    archives: Vec<AuditAnchorLine>,
) -> Result<(bool, Value, String)> {
    let r = s.call_keys(|mut c| {
        let (anchors, archives) = (anchors.clone(), archives.clone());
        async move { c.audit_verify(AuditVerifyRequest { anchors, archives }).await }
    })?;
    let report: Value = serde_json::from_str(&r.json).context("invalid JSON from the node")?;
    Ok((r.ok, report, r.anchor))
}

/// The hash of record `seq` as the node at `endpoint` has it, and its head sequence.
fn record_hash_at(s: &Session, endpoint: &str, seq: u64) -> Result<(u64, Option<String>)> {
    let _rt = s.rt().enter();
    let mut c = quill_proto::v1::keys_client::KeysClient::new(s.chan(endpoint, crate::client::CALL_TIMEOUT)?);
    let r = s
        .rt()
        .block_on(c.audit_tail(AuditTailRequest { from: seq.max(1), limit: 1, ..Default::default() }))
        .map_err(|st| anyhow::anyhow!("{endpoint}: {}", st.message()))?
        .into_inner();
    let hash = r.views.first().filter(|v| v.seq == seq).map(|v| v.hash.clone());
    Ok((r.head_seq, hash))
}

/// Compare the verified node's chain with every other member's at the last record both hold.
/// Returns the disagreements, and notes on members that could not be asked.
fn compare_with_members(s: &Session, head_seq: u64) -> Result<(Vec<String>, Vec<String>)> {
    let me = s.endpoints().first().cloned().unwrap_or_default();
    let status = s.rt().block_on(crate::client::status(s.tls(), &me))?;
    let mut broken = Vec::new();
    let mut notes = Vec::new();
    for n in status.voters.iter().chain(status.learners.iter()).filter(|n| n.id != status.id) {
        let ep = crate::client::normalize(&n.api_addr);
        let theirs = match record_hash_at(s, &ep, 1) {
            Ok((head, _)) => head,
            Err(e) => {
                notes.push(format!("node {} not compared: {e:#}", n.id));
                continue;
            }
        };
        let at = theirs.min(head_seq);
        if at == 0 {
            continue;
        }
        let (_, mine) = record_hash_at(s, &me, at)?;
        let (_, other) = record_hash_at(s, &ep, at)?;
        if mine != other || mine.is_none() {
            broken.push(format!(
                "node {} holds another record {at} than node {} (hash {} against {}): one of the two chains was rewritten; verify on each",
                n.id,
                status.id,
                other.as_deref().unwrap_or("none"),
                mine.as_deref().unwrap_or("none")
            ));
        }
    }
    Ok((broken, notes))
}

/// `quill audit verify`: exit 0 when the chain verifies (and agrees with every member's), 3 and
/// the first broken record when not.
pub fn audit_verify(a: &AuditVerifyArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let anchors = match &a.anchors {
        Some(p) => read_anchors(p)?,
        None => Vec::new(),
    };
    let n_anchors = anchors.len();
    let mut archives = Vec::new();
    for path in &a.archive {
        let (trailer, _) = check_archive_file(path)?;
        archives.push(AuditAnchorLine { source: path.display().to_string(), json: trailer });
    }
    let (mut ok, mut report, _) = verify_on_node(&s, anchors, archives)?;
    let mut notes = Vec::new();
    if ok && !a.no_compare {
        let head = report["head_seq"].as_u64().unwrap_or(0);
        let (broken, n) = compare_with_members(&s, head)?;
        notes = n;
        if let Some(first) = broken.first() {
            ok = false;
            report["broken"] = serde_json::json!([head, first]);
        }
        report["compared_with_members"] = serde_json::json!(broken.is_empty());
    }
    if json {
        println!("{report}");
    } else if ok {
        println!(
            "audit chain OK: {} records (head {} {}); this node's MACs ({}) cover every record; {} seals verified (sealed up to {}); {} request MACs; {} of {n_anchors} anchors hold",
            report["records"],
            report["head_seq"],
            report["head_hash"].as_str().unwrap_or(""),
            report["node_macs"],
            report["seals"],
            report["sealed_upto"],
            report["macs"],
            report["anchors"],
        );
        if report["archived"].as_u64().unwrap_or(0) > 0 {
            println!(
                "records 1..={} were archived and pruned; {} archive file(s) checked",
                report["archived"], report["archives"]
            );
        }
    } else {
        println!(
            "audit chain BROKEN at record {}: {}",
            report["broken"][0],
            report["broken"][1].as_str().unwrap_or("?")
        );
    }
    for n in notes {
        eprintln!("note: {n}");
    }
    Ok(if ok { OK } else { CHECK_FAILED })
}

/// `quill audit anchor --out FILE`: verify the chain on the endpoint node, then append its newest
/// seal as one JSON line to FILE. Refuses (exit 3) when the chain does not verify or has no seal.
pub fn audit_anchor(a: &AuditAnchorArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let (ok, report, anchor) = verify_on_node(&s, Vec::new(), Vec::new())?;
    if !ok {
        return Err(CliError::CheckFailed(format!(
            "not anchoring a chain that does not verify: record {}: {}",
            report["broken"][0],
            report["broken"][1].as_str().unwrap_or("?")
        ))
        .into());
    }
    if anchor.is_empty() {
        return Err(
            CliError::CheckFailed("the chain has no seal yet (seals begin once the audit key exists)".into()).into()
        );
    }
    let mut f = std::fs::OpenOptions::new();
    f.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
    let mut file = f.open(&a.out).with_context(|| format!("cannot open {}", a.out.display()))?;
    writeln!(file, "{anchor}").with_context(|| format!("cannot append to {}", a.out.display()))?;
    file.sync_all().with_context(|| format!("cannot sync {}", a.out.display()))?;
    if json {
        println!("{anchor}");
    } else {
        let v: Value = serde_json::from_str(&anchor).unwrap_or(Value::Null);
        println!("anchored record {} (hash {}) in {}", v["seq"], v["hash"].as_str().unwrap_or(""), a.out.display());
    }
    Ok(OK)
}

/// `quill audit tail|export`.
#[derive(clap::Args, Debug)]
pub struct AuditTailArgs {
    /// First record to show (export: default 1).
    #[arg(long)]
    from: Option<u64>,
    /// How many records (tail: default 20).
    #[arg(short = 'n', long)]
    limit: Option<u32>,
    /// Open the records' sealed notes (an operator's reason for `--force`) and show them as
    /// `note_text`: auditors only, and the reading is itself recorded in the chain first.
    #[arg(long)]
    decrypt: bool,
    #[command(flatten)]
    who: Who,
}

/// `quill audit tail` (human lines) and `quill audit export` (JSON lines, everything from --from).
pub fn audit_tail(a: &AuditTailArgs, export: bool, json: bool) -> Result<u8> {
    let mut s = Session::new(&a.who)?;
    let mut from = a.from.unwrap_or(if export { 1 } else { 0 });
    let limit = a.limit.unwrap_or(if export { 1000 } else { 20 });
    loop {
        let caller = a.decrypt.then(|| s.caller());
        let req = AuditTailRequest { from, limit, decrypt: a.decrypt, caller };
        let r = s.call_keys(|mut c| {
            let req = req.clone();
            async move { c.audit_tail(req).await }
        })?;
        if export || json {
            // The export lines: the form archives and auditors' tools read.
            for line in &r.records {
                println!("{line}");
            }
        } else {
            for v in &r.views {
                let note = match (&v.note_text, &v.note) {
                    (Some(t), _) => format!(" [note: {t}]"),
                    (None, Some(_)) => " [sealed note]".to_string(),
                    (None, None) => String::new(),
                };
                println!(
                    "{:>6} {} {:<16} {:<18} {:<28} {}{note}",
                    v.seq, v.time_ms, v.actor, v.action, v.object, v.outcome
                );
            }
        }
        let last = r.views.last().map(|v| v.seq);
        match last {
            Some(seq) if export && seq < r.head_seq && a.limit.is_none() => from = seq + 1,
            _ => break,
        }
    }
    Ok(OK)
}

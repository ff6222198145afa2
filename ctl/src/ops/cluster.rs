//! `quill cluster status|add|promote|remove`: membership, roles and indexes of a running cluster.
//!
//! Membership changes go to the leader (found through Status) and are staged: `add` joins a node
//! as a learner, `promote` makes it a voter, `remove` takes it out of the voters. `promote` and
//! `remove` send the full voter set they want together with the membership they saw, so two
//! operators changing membership at once cannot overwrite each other.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use quill_proto::v1::{AddLearnerRequest, ChangeMembershipRequest, NodeInfo, NodeStatus};
use serde_json::{Value, json};

use crate::client::{self, Target};

/// A membership change may wait for a learner to catch up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `quill cluster add`.
#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The new node's id.
    #[arg(long)]
    id: u64,
    /// The new node's Raft address (`host:port`).
    #[arg(long)]
    raft_addr: String,
    /// The new node's client API address (`host:port`).
    #[arg(long)]
    api_addr: String,
    #[command(flatten)]
    target: Target,
}

/// Options of `quill cluster promote` and `quill cluster remove`.
#[derive(clap::Args, Debug)]
pub struct IdArgs {
    /// The node's id.
    #[arg(long)]
    id: u64,
    /// The log index of the membership this change is based on; the leader refuses the change
    /// if the membership changed since (the `quill_raft_membership_index` metric).
    #[arg(long, value_name = "INDEX")]
    expected_membership_index: Option<u64>,
    #[command(flatten)]
    target: Target,
}

/// Options of `quill cluster status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    target: Target,
}

/// One row of `cluster status`: a member (or a given endpoint) and what it answered.
struct Row {
    id: Option<u64>,
    endpoint: String,
    answer: Result<NodeStatus, String>,
    /// The node's wall clock minus this client's at the middle of the call, ms (None: no answer,
    /// or a node too old to say its time).
    clock_offset_ms: Option<i64>,
}

/// A node clock further than this from the client's is called out in the table's notes.
const CLOCK_NOTE_MS: i64 = 2_000;

/// Ask one node for its status, timing the call to read its clock against this client's.
async fn ask(tls: &client::Tls, id: Option<u64>, endpoint: String) -> Row {
    let ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let sent = ms();
    let answer = client::status(tls, &endpoint).await.map_err(|e| format!("{e:#}"));
    let middle = (sent + ms()) / 2;
    let clock_offset_ms = answer.as_ref().ok().filter(|s| s.time_ms > 0).map(|s| s.time_ms as i64 - middle);
    Row { id: answer.as_ref().ok().map(|s| s.id).or(id), endpoint, answer, clock_offset_ms }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// `quill cluster status`.
pub fn status(args: &StatusArgs, json: bool) -> Result<u8> {
    let seeds = args.target.endpoints()?;
    let tls = args.target.tls()?;
    let rows = runtime()?.block_on(collect(&tls, &seeds));
    if rows.iter().all(|r| r.answer.is_err()) {
        let why: Vec<String> =
            rows.iter().filter_map(|r| r.answer.as_ref().err().map(|e| format!("{}: {e}", r.endpoint))).collect();
        return Err(crate::exit_codes::CliError::Unreachable(format!("no node answered ({})", why.join("; "))).into());
    }
    // The leader, as the node that says it leads (highest term wins if there are several).
    let leader = rows
        .iter()
        .filter_map(|r| r.answer.as_ref().ok())
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term)
        .map(|s| s.id);

    if json {
        let nodes: Vec<Value> = rows.iter().map(row_json).collect();
        let membership = rows.iter().filter_map(|r| r.answer.as_ref().ok()).find(|s| Some(s.id) == leader);
        let client_links: Vec<Value> = client::links()
            .snapshot()
            .into_iter()
            .map(|(peer, l)| json!({"peer": peer, "protocol": l.protocol, "suite": l.suite, "group": l.group}))
            .collect();
        let doc = json!({
            "leader": leader,
            "client_tls": client_links,
            "voters": membership.map(|s| s.voters.iter().map(|n| n.id).collect::<Vec<_>>()),
            "learners": membership.map(|s| s.learners.iter().map(|n| n.id).collect::<Vec<_>>()),
            "nodes": nodes,
        });
        println!("{doc}");
    } else {
        print_table(&rows, leader);
    }
    Ok(crate::exit_codes::OK)
}

/// Ask the seeds, learn the membership from the answers, then ask every member.
async fn collect(tls: &client::Tls, seeds: &[String]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut members: BTreeMap<u64, String> = BTreeMap::new();
    for ep in seeds {
        let row = ask(tls, None, ep.clone()).await;
        if let Ok(st) = &row.answer {
            for n in st.voters.iter().chain(st.learners.iter()) {
                members.entry(n.id).or_insert_with(|| client::normalize(&n.api_addr));
            }
        }
        rows.push(row);
    }
    for (id, ep) in members {
        if rows.iter().any(|r| r.id == Some(id) || r.endpoint == ep) {
            continue;
        }
        rows.push(ask(tls, Some(id), ep).await);
    }
    // A seed that did not answer but is a known member keeps its id from the membership.
    rows.sort_by_key(|r| (r.id.is_none(), r.id));
    rows
}

fn row_json(r: &Row) -> Value {
    match &r.answer {
        Ok(s) => json!({
            "id": s.id, "endpoint": r.endpoint, "reachable": true, "role": s.role, "term": s.term,
            "leader": s.leader, "last_log_index": s.last_log_index, "committed_index": s.committed_index,
            "applied_index": s.applied_index, "snapshot_index": s.snapshot_index,
            "purged_index": s.purged_index, "membership_index": s.membership_index, "state_hash": s.state_hash, "state_hash_index": s.state_hash_index,
            "time_ms": s.time_ms, "clock_offset_ms": r.clock_offset_ms,
            "hsm": serde_json::from_str::<Value>(&s.hsm).unwrap_or(Value::Null),
            "raft_addr": s.raft_addr, "api_addr": s.api_addr,
            "tls_links": s.tls_links.iter().map(|l| json!({"peer": l.peer, "protocol": l.protocol, "suite": l.suite, "group": l.group})).collect::<Vec<_>>(),
            "divergence": (!s.divergence.is_empty()).then_some(&s.divergence),
        }),
        Err(e) => json!({"id": r.id, "endpoint": r.endpoint, "reachable": false, "error": e}),
    }
}

/// The HSM column: healthy slots / slots, and the SMK's KCV (or "no SMK").
fn hsm_cell(json: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(json) else { return "none".into() };
    let slots = v["slots"].as_array().map(Vec::len).unwrap_or(0);
    let smk = v["smk_kcv"].as_str().map_or_else(|| "no SMK".to_string(), |k| format!("SMK {k}"));
    let err = if v["agent_error"].is_null() { "" } else { " (agent error)" };
    format!("{}/{slots} ok, {smk}{err}", v["healthy"])
}

fn print_table(rows: &[Row], leader: Option<u64>) {
    let header = ["ID", "ROLE", "TERM", "LEADER", "LAST LOG", "COMMITTED", "APPLIED", "REACHABLE", "HSM", "ENDPOINT"];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for r in rows {
        table.push(match &r.answer {
            Ok(s) => vec![
                s.id.to_string(),
                s.role.clone(),
                s.term.to_string(),
                opt(s.leader),
                s.last_log_index.to_string(),
                s.committed_index.to_string(),
                s.applied_index.to_string(),
                "yes".into(),
                hsm_cell(&s.hsm),
                r.endpoint.clone(),
            ],
            Err(_) => vec![
                opt(r.id),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "no".into(),
                "-".into(),
                r.endpoint.clone(),
            ],
        });
    }
    print!("{}", crate::output::render_table(&table));
    println!("TLS links (negotiated):");
    for (peer, l) in client::links().snapshot() {
        println!("  this client -> {peer}: {l}");
    }
    for r in rows {
        if let Ok(s) = &r.answer {
            for l in &s.tls_links {
                println!("  node {} -> {}: {} {} {}", s.id, l.peer, l.protocol, l.suite, l.group);
            }
            if !s.divergence.is_empty() {
                println!("ALARM: node {}: {}", s.id, s.divergence);
            }
            if let Some(off) = r.clock_offset_ms.filter(|o| o.abs() >= CLOCK_NOTE_MS) {
                println!(
                    "CLOCK: node {}'s clock is {:+.1} s from this client's (audit times, approval windows and certificate checks read it)",
                    s.id,
                    off as f64 / 1000.0
                );
            }
        }
    }
    match leader {
        Some(l) => println!("leader: node {l}"),
        None => println!("leader: none"),
    }
    for r in rows {
        if let Err(e) = &r.answer {
            println!("unreachable: {e}");
        }
    }
}

/// `quill cluster add`: join a node as a learner.
pub fn add(args: &AddArgs, json: bool) -> Result<u8> {
    let seeds = args.target.endpoints()?;
    let tls = args.target.tls()?;
    runtime()?.block_on(async {
        let (leader_ep, st) = client::find_leader(&tls, &seeds).await?;
        if st.voters.iter().chain(st.learners.iter()).any(|n| n.id == args.id) {
            bail!("node {} is already a member", args.id);
        }
        let mut c = client::client(&tls, &leader_ep, CHANGE_TIMEOUT)?;
        let node = NodeInfo { id: args.id, raft_addr: args.raft_addr.clone(), api_addr: args.api_addr.clone() };
        let r = c
            .add_learner(AddLearnerRequest { node: Some(node) })
            .await
            .map_err(|s| client::call_error(&leader_ep, &s).context(format!("AddLearner {}", args.id)))?
            .into_inner();
        report(json, "added", args.id, r.log_index, &format!("node {} added as a learner", args.id));
        Ok(crate::exit_codes::OK)
    })
}

/// `quill cluster promote`: make a learner a voter.
pub fn promote(args: &IdArgs, json: bool) -> Result<u8> {
    change(args, json, true)
}

/// `quill cluster remove`: take a node out of the voters.
pub fn remove(args: &IdArgs, json: bool) -> Result<u8> {
    change(args, json, false)
}

fn change(args: &IdArgs, json: bool, promote: bool) -> Result<u8> {
    let seeds = args.target.endpoints()?;
    let tls = args.target.tls()?;
    runtime()?.block_on(async {
        let (leader_ep, st) = client::find_leader(&tls, &seeds).await?;
        let mut voters: Vec<u64> = st.voters.iter().map(|n| n.id).collect();
        let is_voter = voters.contains(&args.id);
        let is_learner = st.learners.iter().any(|n| n.id == args.id);
        if promote {
            if is_voter {
                bail!("node {} is already a voter", args.id);
            }
            if !is_learner {
                bail!("node {} is not a learner: run `quill cluster add` first", args.id);
            }
            voters.push(args.id);
        } else {
            if !is_voter && !is_learner {
                bail!("node {} is not a member", args.id);
            }
            voters.retain(|v| *v != args.id);
            if voters.is_empty() {
                bail!("refusing to remove the last voter");
            }
        }
        voters.sort_unstable();
        let mut c = client::client(&tls, &leader_ep, CHANGE_TIMEOUT)?;
        let req = ChangeMembershipRequest {
            voters,
            expected_membership_index: args.expected_membership_index.unwrap_or_else(|| expected_membership_index(&st)),
        };
        let r = c
            .change_membership(req)
            .await
            .map_err(|s| client::call_error(&leader_ep, &s).context(format!("ChangeMembership for node {}", args.id)))?
            .into_inner();
        let (verb, text) = if promote {
            ("promoted", format!("node {} is now a voter", args.id))
        } else {
            ("removed", format!("node {} removed from the cluster", args.id))
        };
        report(json, verb, args.id, r.log_index, &text);
        Ok(crate::exit_codes::OK)
    })
}

/// The membership version the change is based on, as the leader reported it.
fn expected_membership_index(st: &NodeStatus) -> u64 {
    st.membership_index
}

fn report(json: bool, verb: &str, id: u64, log_index: u64, text: &str) {
    if json {
        println!("{}", json!({"result": verb, "id": id, "log_index": log_index}));
    } else {
        println!("{text} (log index {log_index})");
    }
}

/// Options of `quill cluster nodes`.
#[derive(clap::Args, Debug)]
pub struct NodesArgs {
    #[command(flatten)]
    who: crate::client::Who,
}

/// `quill cluster nodes`: every enrolled node's HSM transport-key fingerprint (what custodians
/// compare before they pin it), its HSM and whether it holds the SMK.
pub fn nodes(a: &NodesArgs, json: bool) -> Result<u8> {
    let s = crate::client::Session::new(&a.who)?;
    let nodes = s.nodes()?;
    // The fingerprint is computed here from the transport key the cluster lists (what
    // `ceremony submit` pins), not taken from the node's own claim.
    let fingerprints: Vec<String> =
        nodes.iter().map(|n| crate::ops::keys::transport_key(n).map(|t| t.fingerprint())).collect::<Result<_>>()?;
    if json {
        let list: Vec<Value> = nodes
            .iter()
            .zip(&fingerprints)
            .map(|(n, fp)| {
                json!({"id": n.id, "transport_fingerprint": fp, "hsm": n.hsm, "smk": n.smk,
                       "next_smk_kcv": n.next_smk_kcv, "retiring_smk_kcv": n.retiring_smk_kcv,
                       "certificate_serial": n.cert.as_ref().map(|c| c.serial.clone())})
            })
            .collect();
        println!("{}", json!({"nodes": list}));
    } else {
        let mut rows = vec![vec![
            "NODE".into(),
            "TRANSPORT KEY (SHA-256 of SPKI)".into(),
            "SMK".into(),
            "NODE CERTIFICATE".into(),
            "HSM".into(),
        ]];
        for (n, fp) in nodes.iter().zip(&fingerprints) {
            rows.push(vec![
                n.id.to_string(),
                fp.clone(),
                crate::ops::keys::node_smk(n),
                n.cert.as_ref().map_or_else(|| "-".to_string(), |c| c.serial.clone()),
                n.hsm.chars().take(60).collect(),
            ]);
        }
        print!("{}", crate::output::render_table(&rows));
    }
    Ok(crate::exit_codes::OK)
}

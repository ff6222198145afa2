//! One chaos run: a cluster (processes or containers, hsm-sim tokens), a workload of a card batch
//! and register clients, the nemesis's schedule, then the checks.
//!
//! Workload: after the SMK ceremony and the TEST keys, a first DDA batch of `calm_cards` before any
//! fault (cards/s without faults), then batches of `cards` cards in chunks of 50 one after another
//! while the faults run, and throughout, `clients` register clients that write unique values to and read (linearizable reads)
//! `keys` keys of the benchmark key space through random nodes, each call bounded by 3 s. Every
//! operation is recorded with its invocation and completion times; a write the client did not
//! hear back about is indeterminate, a read that failed is dropped.
//!
//! Checks, after the faults stopped and the workload ended: every node runs and converges (same
//! applied index and state hash) within 60 s; the batch completes within 10 minutes with every
//! card exactly once, in order; each key's history is linearizable; `quill audit verify` passes
//! on every node; and, every node stopped, no clear TEST key value and no PAN of the batch is in
//! any file of any node, nor in any live value of its database.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quill_proto::v1::{BenchGetRequest, BenchPutRequest, StatusRequest};
use quill_tests::{Cluster, ClusterOptions, dda_batch_pan, secrets, write_dda_batch};
use serde::Serialize;

use crate::linearizable::{self, Call, MonotoneRead, Op, Verdict};
use crate::nemesis::{self, Fault, Kind, Rng};

/// Where the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `quilld` processes on loopback; partitions through per-link proxies.
    Processes,
    /// Containers on the Docker engine; partitions by blackhole routes.
    Containers,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    pub nodes: u64,
    pub duration_s: u64,
    pub seed: u64,
    pub kinds: Vec<Kind>,
    pub cards: usize,
    pub clients: u32,
    pub keys: u64,
    /// Cards of a first batch prepared before any fault (0: none), for cards/s without faults.
    pub calm_cards: usize,
    /// Run the key clerk ([`crate::clerk`]) alongside.
    pub key_ops: bool,
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub at_ms: u64,
    pub kind: Kind,
    /// How long it lasted (until undone), ms.
    pub len_ms: u64,
    /// The nodes it hit.
    pub nodes: Vec<u64>,
    /// After a leader kill or a leader partition: ms until another node led.
    pub new_leader_ms: Option<u64>,
    /// What else the fault showed (a replaced node's catch-up, a skew's size, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Operations by kind and outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub ok: u64,
    /// Attempts answered with an error (a read: dropped; a write: tried again).
    pub refused: u64,
    /// Attempts not answered within 3 s (a read: dropped; a write: tried again with its serial).
    pub indeterminate: u64,
    /// Writes never acknowledged by the end (they may or may not have happened).
    #[serde(default)]
    pub unacknowledged: u64,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub target: Target,
    pub nodes: u64,
    pub duration_s: u64,
    pub schedule: Vec<Fault>,
    pub faults: Vec<Injected>,
    pub ops: BTreeMap<String, Counts>,
    pub cards: usize,
    /// Checks of the cards against pyemv/psec over every batch (None: no venv).
    pub reference_checks: Option<u64>,
    /// The key clerk's rounds, and those that took a key all the way round (generated,
    /// suspended, active again, exported under dual control, imported with the same KCV).
    pub key_rounds: u64,
    pub key_round_trips: u64,
    /// The batches prepared while the faults ran, one after another.
    pub batches: Vec<BatchDone>,
    /// Their time from submission to done, summed, ms.
    pub batch_ms: Option<u64>,
    /// Cards per second over those batches (with faults).
    pub cards_per_s: Option<f64>,
    /// The first batch, prepared before any fault with the same clients running: its cards and
    /// cards per second.
    pub calm_cards: usize,
    pub calm_cards_per_s: Option<f64>,
    /// Time from the end of the workload until every node converged, ms.
    pub converge_ms: Option<u64>,
    /// Once the faults stopped (the workload still running): ms until every node had applied the
    /// leader's applied index of that moment (goal: 10 s).
    pub catch_up_ms: Option<u64>,
    /// Longest time the batch's card count stood still while a quorum was up, ms (goal: 30 s).
    pub longest_stall_ms: u64,
    /// Time the nemesis had a majority down (restart-all), not counted in a stall, ms.
    pub no_quorum_ms: u64,
    /// Leader changes seen during the workload.
    pub leader_changes: usize,
    /// Those outside every fault's window (the fault and 5 s after): a healthy leader displaced.
    pub unprovoked_leader_changes: Vec<String>,
    /// Keys whose history the checker could not decide within its budget.
    pub undecided: Vec<String>,
    /// Every broken promise; must be empty.
    pub violations: Vec<String>,
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Poll `f` every 100 ms until it gives `Some`, at most `timeout`.
async fn poll<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader the nodes of `among` agree on, if a majority of them name the same one in `among`.
async fn leader_among(cluster: &Cluster, among: &[u64]) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for id in among {
        if let Ok(s) = tokio::time::timeout(Duration::from_secs(1), cluster.status(*id)).await
            && let Ok(s) = s
            && let Some(l) = s.leader
        {
            *votes.entry(l).or_default() += 1;
        }
    }
    votes.into_iter().find(|(l, n)| among.contains(l) && *n > among.len() / 2).map(|(l, _)| l)
}

/// The register clients' shared record.
#[derive(Default)]
struct Record {
    ops: Vec<(u64, Op)>,
    counts: BTreeMap<String, Counts>,
}

/// One register client until `stop`.
async fn client(
    n: u32,
    seed: u64,
    keys: u64,
    nodes: Vec<quill_proto::v1::cluster_client::ClusterClient<tonic::transport::Channel>>,
    start: Instant,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
) {
    let mut rng = Rng::new(seed ^ (u64::from(n) << 40));
    let mut serial = 0u64;
    let micros = |t: Instant| u64::try_from(t.duration_since(start).as_micros()).unwrap_or(u64::MAX);
    while !stop.load(Ordering::Relaxed) {
        let key = rng.next_u64() % keys;
        let mut node = nodes[(rng.next_u64() % nodes.len() as u64) as usize].clone();
        let invoke = Instant::now();
        if rng.next_u64().is_multiple_of(2) {
            // A write is retried with the same serial (the cluster applies a serial once) until
            // it is acknowledged, for up to 20 s: only then, or at the end of the run, does it
            // stay indeterminate (applied or not, the client cannot tell).
            serial += 1;
            let value = (u64::from(n) << 32) | serial;
            let req = BenchPutRequest {
                client_id: format!("chaos-{n}"),
                serial,
                key: format!("bench/chaos/{key}"),
                value: value.to_be_bytes().to_vec(),
            };
            let mut complete = None;
            let (mut refused, mut timed_out) = (0, 0);
            while complete.is_none() && invoke.elapsed() < Duration::from_secs(20) {
                match tokio::time::timeout(Duration::from_secs(3), node.bench_put(req.clone())).await {
                    Ok(Ok(_)) => complete = Some(micros(Instant::now())),
                    Ok(Err(_)) => refused += 1,
                    Err(_) => timed_out += 1,
                }
                if complete.is_none() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    node = nodes[(rng.next_u64() % nodes.len() as u64) as usize].clone();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let mut rec = record.lock().expect("record");
            let c = rec.counts.entry("write".into()).or_default();
            c.refused += refused;
            c.indeterminate += timed_out;
            if complete.is_some() {
                c.ok += 1;
            } else {
                c.unacknowledged += 1;
            }
            rec.ops.push((key, Op { client: n, call: Call::Write(value), invoke: micros(invoke), complete }));
        } else {
            let req = BenchGetRequest { key: format!("bench/chaos/{key}"), linearizable: true, hops: 0 };
            let r = tokio::time::timeout(Duration::from_secs(3), node.bench_get(req)).await;
            let mut rec = record.lock().expect("record");
            let c = rec.counts.entry("read".into()).or_default();
            match r {
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    let value = resp.found.then(|| {
                        <[u8; 8]>::try_from(resp.value.as_slice()).map(u64::from_be_bytes).unwrap_or(u64::MAX)
                    });
                    c.ok += 1;
                    let complete = Some(micros(Instant::now()));
                    rec.ops.push((key, Op { client: n, call: Call::Read(value), invoke: micros(invoke), complete }));
                }
                Ok(Err(_)) => c.refused += 1,
                Err(_) => c.indeterminate += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(5 + rng.next_u64() % 20)).await;
    }
}

/// A batch done.
#[derive(Debug, Clone, Serialize)]
pub struct BatchDone {
    pub job: String,
    pub cards: usize,
    /// From submission to done, ms.
    pub ms: u64,
    /// Its input file.
    #[serde(skip)]
    pub input: std::path::PathBuf,
}

/// What the batch feeder needs.
struct Feed {
    runner: quill_tests::QuillRunner,
    keys: Vec<quill_proto::v1::keys_client::KeysClient<tonic::transport::Channel>>,
    ids: Vec<u64>,
    dir: std::path::PathBuf,
    /// Input files are `<name>-<k>.csv`.
    name: &'static str,
    cards: usize,
    first_pan: usize,
    start: Instant,
    until: Arc<AtomicBool>,
    /// When the nemesis had a majority down: not counted as a stall.
    no_quorum: NoQuorum,
}

/// The windows in which the nemesis had a majority of the nodes down (restart-all), when the
/// cluster cannot make progress by design; the stall goal holds while a quorum is up.
#[derive(Debug, Clone, Default)]
struct NoQuorum(Arc<std::sync::Mutex<Vec<Window>>>);

/// From, and until (`None`: still open).
type Window = (Instant, Option<Instant>);

impl NoQuorum {
    fn begin(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((Instant::now(), None));
    }

    fn end(&self) {
        let mut w = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(last) = w.last_mut() {
            last.1.get_or_insert_with(Instant::now);
        }
    }

    /// How much of `[from, to]` fell in a window (one still open ends at `to`).
    fn within(&self, from: Instant, to: Instant) -> Duration {
        let w = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        w.iter()
            .map(|(a, b)| {
                let (a, b) = ((*a).max(from), b.unwrap_or(to).min(to));
                b.saturating_duration_since(a)
            })
            .sum()
    }

    /// All windows, ms.
    fn total_ms(&self, now: Instant) -> u64 {
        let w = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        w.iter().map(|(a, b)| b.unwrap_or(now).saturating_duration_since(*a).as_millis() as u64).sum()
    }
}

/// What it saw.
#[derive(Debug, Default)]
struct Fed {
    done: Vec<BatchDone>,
    longest_stall_ms: u64,
    problems: Vec<String>,
    /// Per job, its linearizable reads: cards done, twice, plus one once done.
    job_reads: BTreeMap<String, Vec<MonotoneRead>>,
}

/// Batches of `cards` cards, one after another, each submitted through the next node that takes
/// it (a submission refused or timed out goes to the next node), until `until` is set and the
/// batch then running is done. The job is polled through whichever node answers (linearizable
/// reads); a batch whose card count stands still while a quorum is up is a stall (time between
/// batches, and time with a majority down, is not).
async fn feed_batches(f: Feed) -> Fed {
    let mut fed = Fed::default();
    let mut turn = 0usize;
    for k in 0.. {
        if k > 0 && f.until.load(Ordering::Relaxed) {
            break;
        }
        let input = f.dir.join(format!("{}-{k}.csv", f.name));
        write_dda_batch(&input, f.cards, f.first_pan + k * f.cards);
        let submitted = Instant::now();
        let job = loop {
            let node = f.ids[turn % f.ids.len()];
            turn += 1;
            let (runner, input) = (f.runner.clone(), input.clone());
            let r = tokio::task::spawn_blocking(move || runner.submit_dda_job(node, &input, "50")).await;
            match r {
                Ok(Ok(job)) => break Some(job),
                // An earlier try went through without its answer reaching us: the cluster
                // refuses the same file again and names the job it made.
                Ok(Err(e)) if already_submitted(&e).is_some() => break already_submitted(&e),
                Ok(Err(e)) if submitted.elapsed() > Duration::from_secs(120) => {
                    fed.problems.push(format!("batch {k} could not be submitted in 120 s: {e}"));
                    break None;
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        let Some(job) = job else { return fed };
        eprintln!("chaos: +{:.1}s batch {job} of {} cards submitted", ms(f.start) as f64 / 1000.0, f.cards);
        let (mut last_count, mut last_change) = (0u64, Instant::now());
        loop {
            let mut c = f.keys[turn % f.keys.len()].clone();
            turn += 1;
            let req =
                quill_proto::v1::QueryRequest { what: "job".into(), id: job.clone(), linearizable: true, hops: 0 };
            let invoke = micros(f.start);
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), c.query(req)).await
                && let Ok(j) = serde_json::from_str::<serde_json::Value>(&r.into_inner().json)
            {
                let count = j["cards_done"].as_u64().unwrap_or(0);
                let value = 2 * count + u64::from(j["state"] == "done");
                let read = MonotoneRead { invoke, complete: micros(f.start), value };
                fed.job_reads.entry(job.clone()).or_default().push(read);
                if count > last_count {
                    (last_count, last_change) = (count, Instant::now());
                }
                if j["state"] == "done" {
                    fed.done.push(BatchDone { job, cards: f.cards, ms: ms(submitted), input });
                    break;
                }
            }
            let now = Instant::now();
            let stalled = now.duration_since(last_change).saturating_sub(f.no_quorum.within(last_change, now));
            fed.longest_stall_ms = fed.longest_stall_ms.max(stalled.as_millis() as u64);
            if submitted.elapsed() > Duration::from_secs(900) {
                fed.problems.push(format!("batch {job} not done 15 minutes after its submission"));
                return fed;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    fed
}

/// The job a refused re-submission names (`… this file (SHA-256 …) is already job J…; …`).
fn already_submitted(err: &str) -> Option<String> {
    let rest = &err[err.find("is already job ")? + "is already job ".len()..];
    let id: String = rest.chars().take_while(char::is_ascii_alphanumeric).collect();
    (!id.is_empty()).then_some(id)
}

/// A membership change through the CLI as the admin, as an operator makes it, against node
/// `via`; one that fails (e.g. an election in the middle) is tried again for 30 s.
fn membership_cli(cluster: &Cluster, via: u64, args: &[&str]) -> Result<(), String> {
    let admin = [("QUILL_ACTOR", quill_tests::ADMIN)];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = tokio::task::block_in_place(|| cluster.quill(via, args, &admin));
        // A retried change whose first try went through: already done.
        if code == 0 || err.contains("is not a member") || err.contains("is already a") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("quill {}: exit {code}: {} {}", args.join(" "), out.trim(), err.trim()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Apply `f` and return the nodes it hit; undo it after `len`.
async fn inject(cluster: &mut Cluster, f: &Fault, report: &mut Report, start: Instant, no_quorum: &NoQuorum) {
    let ids = cluster.ids();
    let n = ids.len() as u64;
    let leader = leader_among(cluster, &ids).await;
    let at_ms = ms(start);
    let t_fault = Instant::now();
    let len = Duration::from_secs(f.len_s);
    let pick = ids[(f.pick % n) as usize];
    let mut injected =
        Injected { at_ms, kind: f.kind, len_ms: 0, nodes: Vec::new(), new_leader_ms: None, note: String::new() };
    // A node other than the leader, from the pick.
    let follower = {
        let others: Vec<u64> = ids.iter().copied().filter(|i| Some(*i) != leader).collect();
        others[(f.pick % others.len() as u64) as usize]
    };
    match f.kind {
        Kind::LeaderKill | Kind::Kill => {
            let victim = if f.kind == Kind::LeaderKill { leader.unwrap_or(pick) } else { pick };
            injected.nodes = vec![victim];
            let t = Instant::now();
            cluster.kill(victim);
            if f.kind == Kind::LeaderKill {
                let others: Vec<u64> = ids.iter().copied().filter(|i| *i != victim).collect();
                injected.new_leader_ms = poll(len, || leader_among(cluster, &others)).await.map(|_| ms(t));
            }
            tokio::time::sleep(len.saturating_sub(t.elapsed())).await;
            cluster.restart(victim).await;
        }
        Kind::Pause => {
            injected.nodes = vec![pick];
            cluster.pause(pick);
            tokio::time::sleep(len).await;
            cluster.resume(pick);
        }
        Kind::PartitionLeader | Kind::PartitionMinority => {
            let side: Vec<u64> = if f.kind == Kind::PartitionLeader {
                vec![leader.unwrap_or(pick)]
            } else {
                // A minority of (n-1)/2 nodes from `pick` on.
                let size = ((n - 1) / 2).max(1) as usize;
                let from = (f.pick % n) as usize;
                (0..size).map(|k| ids[(from + k) % ids.len()]).collect()
            };
            injected.nodes = side.clone();
            let t = Instant::now();
            cluster.partition(&side);
            if f.kind == Kind::PartitionLeader {
                let rest: Vec<u64> = ids.iter().copied().filter(|i| !side.contains(i)).collect();
                injected.new_leader_ms = poll(len, || leader_among(cluster, &rest)).await.map(|_| ms(t));
            }
            tokio::time::sleep(len.saturating_sub(t.elapsed())).await;
            cluster.heal();
        }
        Kind::Bridge => {
            // The bridge is `pick`; the rest split in two halves by position.
            let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != pick).collect();
            let (a, b) = rest.split_at(rest.len() / 2);
            injected.nodes = vec![pick];
            injected.note = format!("{a:?} | {pick} | {b:?}");
            for x in a {
                for y in b {
                    cluster.cut_link(*x, *y, true);
                    cluster.cut_link(*y, *x, true);
                }
            }
            tokio::time::sleep(len).await;
            cluster.heal();
        }
        Kind::OneWay => {
            let from = if f.pick.is_multiple_of(2) { leader.unwrap_or(pick) } else { pick };
            injected.nodes = vec![from];
            injected.note = format!("{from} -> others cut{}", if Some(from) == leader { " (the leader)" } else { "" });
            for to in ids.iter().filter(|i| **i != from) {
                cluster.cut_link(from, *to, true);
            }
            tokio::time::sleep(len).await;
            cluster.heal();
        }
        Kind::HsmSlow | Kind::HsmFail | Kind::HsmDead => {
            let faults = match f.kind {
                Kind::HsmSlow => format!("latency_ms = {}\n", 50 + f.pick % 151),
                Kind::HsmFail => "failing_slots = [0, 1]\n".to_string(),
                _ => "dead_slots = [0, 1]\n".to_string(),
            };
            injected.nodes = vec![pick];
            injected.note = faults.trim().to_string();
            cluster.hsm_faults(pick, &faults);
            tokio::time::sleep(len).await;
            cluster.hsm_faults(pick, "");
        }
        Kind::ClockSkew => {
            let by = 30 + (f.pick % 91) as i64;
            let by = if (f.pick / 91).is_multiple_of(2) { by } else { -by };
            injected.nodes = vec![pick];
            cluster.skew_clock(pick, by);
            // libfaketime re-reads the offset at most every second: look from outside after 2 s
            // (the node's time in its Status answer), so a skew that did not take is seen.
            let settle = Duration::from_secs(2).min(len);
            tokio::time::sleep(settle).await;
            injected.note = match cluster.clock_offset(pick).await {
                Ok(seen) if (seen - by).abs() <= 1 => format!("{by:+} s (its Status: {seen:+} s)"),
                Ok(seen) => format!("{by:+} s NOT TAKEN: its Status says {seen:+} s"),
                Err(e) => format!("{by:+} s (its Status unread: {e})"),
            };
            tokio::time::sleep(len.saturating_sub(settle)).await;
            cluster.skew_clock(pick, 0);
        }
        Kind::Membership | Kind::Replace => {
            let victim = follower;
            let via = ids.iter().copied().find(|i| *i != victim).unwrap_or(victim);
            injected.nodes = vec![victim];
            let mut notes = Vec::new();
            let id = victim.to_string();
            if let Err(e) = membership_cli(cluster, via, &["cluster", "remove", "--id", &id]) {
                notes.push(e);
            }
            if f.kind == Kind::Replace {
                cluster.terminate(victim);
                cluster.wipe_data(victim);
                cluster.spawn(victim);
                cluster.wait_health(victim).await;
            }
            tokio::time::sleep(len).await;
            let n = cluster.node(victim);
            let (raft, api) = (n.raft_addr.to_string(), n.api_addr.to_string());
            let added = Instant::now();
            let add = ["cluster", "add", "--id", &id, "--raft-addr", &raft, "--api-addr", &api];
            let promote = ["cluster", "promote", "--id", &id];
            for step in [&add[..], &promote[..]] {
                if let Err(e) = membership_cli(cluster, via, step) {
                    notes.push(e);
                }
            }
            // Back as a voter: how long until it has applied what the leader had when it was added
            // (read from a leader the others agree on: with none, there is nothing to compare to,
            // and a cluster with a majority up and no leader for 30 s is itself a failure).
            let leader_index = poll(Duration::from_secs(30), || async {
                let l = leader_among(cluster, &ids).await?;
                cluster.status(l).await.ok().map(|s| s.applied_index)
            })
            .await;
            let caught = match leader_index {
                Some(target) => poll(Duration::from_secs(60), || async {
                    let s = cluster.status(victim).await.ok()?;
                    (s.applied_index >= target).then_some((target, s.snapshot_index))
                })
                .await
                .ok_or(target),
                None => {
                    let v = format!("no leader agreed on within 30 s of adding node {victim} back");
                    notes.push(v.clone());
                    report.violations.push(v);
                    Err(0)
                }
            };
            match caught {
                Ok((target, snap)) => notes.push(format!(
                    "back at index {target} after {} ms{}",
                    ms(added),
                    if f.kind == Kind::Replace { format!(" (snapshot index {snap})") } else { String::new() }
                )),
                Err(0) => {}
                Err(target) => {
                    let v = format!("node {victim} did not reach index {target} within 60 s of being added back");
                    notes.push(v.clone());
                    report.violations.push(v);
                }
            }
            injected.note = notes.join("; ");
        }
        Kind::RestartAll => {
            injected.nodes = ids.clone();
            // No quorum from the stop that leaves fewer than a majority running until a majority
            // answers its health check again.
            let majority = ids.len() / 2 + 1;
            for (k, id) in ids.iter().enumerate() {
                cluster.terminate(*id);
                if ids.len() - (k + 1) < majority && ids.len() - k >= majority {
                    no_quorum.begin();
                }
            }
            tokio::time::sleep(len).await;
            for id in &ids {
                cluster.spawn(*id);
            }
            for (k, id) in ids.iter().enumerate() {
                cluster.wait_health(*id).await;
                if k + 1 == majority {
                    no_quorum.end();
                }
            }
            injected.note = format!("no quorum for {} ms", no_quorum.within(t_fault, Instant::now()).as_millis());
        }
    }
    injected.len_ms = ms(start).saturating_sub(at_ms);
    eprintln!(
        "chaos: +{:.1}s {} on {:?}{}{}",
        at_ms as f64 / 1000.0,
        f.kind.name(),
        injected.nodes,
        injected.new_leader_ms.map(|m| format!(" (new leader after {m} ms)")).unwrap_or_default(),
        if injected.note.is_empty() { String::new() } else { format!(": {}", injected.note) }
    );
    report.faults.push(injected);
}

/// The clear values of the published TEST key set (`prep/test-keys/test-keys.toml`, `[[key]]`
/// tables' `value`), read from the repository rather than linked: this tool must not turn the
/// `test-keys` feature on for the workspace's production build.
fn test_key_values() -> Vec<Vec<u8>> {
    let path = quill_tests::repo_root().join("prep/test-keys/test-keys.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let keys = doc.get("key").and_then(toml::Value::as_array).cloned().unwrap_or_default();
    let values: Vec<Vec<u8>> =
        keys.iter().filter_map(|k| k.get("value")?.as_str()).filter_map(|v| hex::decode(v).ok()).collect();
    assert!(values.len() >= 5, "{}: only {} key values", path.display(), values.len());
    values
}

/// Run `opts`: start the cluster, the workload and the nemesis, then check.
pub async fn run(opts: &Options) -> Report {
    let faults_until = opts.duration_s * 3 / 4;
    let schedule = nemesis::schedule(opts.seed, &opts.kinds, faults_until);
    let mut report = Report {
        seed: opts.seed,
        target: opts.target,
        nodes: opts.nodes,
        duration_s: opts.duration_s,
        schedule: schedule.clone(),
        faults: Vec::new(),
        ops: BTreeMap::new(),
        cards: opts.cards,
        reference_checks: None,
        key_rounds: 0,
        key_round_trips: 0,
        batches: Vec::new(),
        batch_ms: None,
        cards_per_s: None,
        calm_cards: opts.calm_cards,
        calm_cards_per_s: None,
        converge_ms: None,
        catch_up_ms: None,
        longest_stall_ms: 0,
        no_quorum_ms: 0,
        leader_changes: 0,
        unprovoked_leader_changes: Vec::new(),
        undecided: Vec::new(),
        violations: Vec::new(),
    };
    eprintln!("chaos: seed {}, schedule:", opts.seed);
    for f in &schedule {
        eprintln!("chaos:   +{}s {} for {}s (pick {})", f.at_s, f.kind.name(), f.len_s, f.pick % opts.nodes);
    }
    let containers = opts.target == Target::Containers;
    // Snapshots every 1,000 entries (keeping 200): a replaced node catches up by snapshot, and
    // snapshots are built and sent under faults.
    let raft = quill_tests::RaftSettings {
        snapshot_logs_since_last: 1000,
        max_in_snapshot_log_to_keep: 200,
        ..quill_tests::RaftSettings::default()
    };
    let cluster_opts = ClusterOptions {
        nodes: opts.nodes,
        hsm: true,
        proxies: !containers,
        containers,
        clock_skew: opts.kinds.contains(&Kind::ClockSkew),
        raft,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(&format!("chaos-{}", opts.seed), cluster_opts).await;
    cluster.keys_ready().await;
    let ids = cluster.ids();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    // Who leads, as the nodes say, every 250 ms: leader changes the nemesis did not cause.
    let leaders: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let observer = {
        let nodes: Vec<_> = ids.iter().map(|id| cluster.client(*id)).collect();
        let (leaders, stop) = (leaders.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for mut c in nodes.clone() {
                    let r = tokio::time::timeout(Duration::from_millis(500), c.status(StatusRequest {})).await;
                    if let Ok(Ok(s)) = r
                        && let Some(l) = s.into_inner().node.and_then(|n| n.leader)
                    {
                        let mut v = leaders.lock().expect("leaders");
                        if v.last().map(|(_, prev)| *prev) != Some(l) {
                            v.push((ms(start), l));
                        }
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let channels: Vec<_> = ids.iter().map(|id| cluster.client(*id)).collect();
    let tasks: Vec<_> = (0..opts.clients)
        .map(|n| tokio::spawn(client(n, opts.seed, opts.keys, channels.clone(), start, stop.clone(), record.clone())))
        .collect();
    let clerk = opts.key_ops.then(|| {
        let clerk = crate::clerk::Clerk {
            runner: cluster.runner(),
            ids: ids.clone(),
            keys: ids
                .iter()
                .map(|id| quill_proto::v1::keys_client::KeysClient::new(cluster.channel_as(*id, quill_tests::READER)))
                .collect(),
            seed: opts.seed,
            start,
            stop: stop.clone(),
        };
        tokio::spawn(clerk.run())
    });

    // Without faults first (the clients running): a batch of `calm_cards`, for cards/s without
    // faults measured in the same run.
    // The same feeder as under faults, told to stop after its first batch.
    let no_quorum = NoQuorum::default();
    let feed = |name: &'static str, cards: usize, first_pan: usize, until: Arc<AtomicBool>| Feed {
        runner: cluster.runner(),
        keys: ids
            .iter()
            .map(|id| quill_proto::v1::keys_client::KeysClient::new(cluster.channel_as(*id, quill_tests::READER)))
            .collect(),
        ids: ids.clone(),
        dir: dir.path().to_path_buf(),
        name,
        cards,
        first_pan,
        start,
        until,
        no_quorum: no_quorum.clone(),
    };
    if opts.calm_cards > 0 {
        let calm = feed_batches(feed("calm", opts.calm_cards, 0, Arc::new(AtomicBool::new(true)))).await;
        report.violations.extend(calm.problems.iter().map(|p| format!("before the faults: {p}")));
        if let Some(b) = calm.done.first() {
            report.calm_cards_per_s = Some(b.cards as f64 * 1000.0 / b.ms.max(1) as f64);
            match cluster.check_output(ids[0], &b.job, &b.input, dir.path(), b.cards) {
                Ok(n) => report.reference_checks = n,
                Err(e) => report.violations.push(format!("batch {} (before the faults): {e}", b.job)),
            }
        }
    }

    // The faults, from `faults_start` on, with batches under test one after another until the
    // faults stop (the last one then runs to its end).
    let faults_start = Instant::now();
    let faults_over_flag = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn(feed_batches(feed("batch", opts.cards, opts.calm_cards, faults_over_flag.clone())));
    for f in &schedule {
        tokio::time::sleep(Duration::from_secs(f.at_s).saturating_sub(faults_start.elapsed())).await;
        inject(&mut cluster, f, &mut report, start, &no_quorum).await;
    }
    // Faults over, workload still running: how long until every node has applied what the
    // leader had applied at this moment.
    let faults_over = Instant::now();
    faults_over_flag.store(true, Ordering::Relaxed);
    let target = match leader_among(&cluster, &ids).await {
        Some(l) => cluster.status(l).await.map(|s| s.applied_index).unwrap_or(0),
        None => 0,
    };
    let caught_up = poll(Duration::from_secs(60), || async {
        for id in &ids {
            if cluster.status(*id).await.ok()?.applied_index < target {
                return None;
            }
        }
        Some(())
    })
    .await;
    report.catch_up_ms = caught_up.map(|()| ms(faults_over));
    match report.catch_up_ms {
        Some(c) if c <= 10_000 => {}
        Some(c) => report.violations.push(format!(
            "a node took {c} ms after the faults to reach the leader's applied index {target} (goal: 10 s)"
        )),
        None => report
            .violations
            .push(format!("a node had not reached the leader's applied index {target} 60 s after the faults")),
    }
    tokio::time::sleep(Duration::from_secs(opts.duration_s).saturating_sub(faults_start.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let clerked = match clerk {
        Some(c) => c.await.unwrap_or_default(),
        None => crate::clerk::Clerked::default(),
    };
    let _ = observer.await;
    // Leader changes outside every fault window that could move the leadership (the fault and
    // 5 s after it).
    let changes = leaders.lock().expect("leaders").clone();
    report.leader_changes = changes.len().saturating_sub(1);
    for (at, l) in changes.iter().skip(1) {
        let explained = report.faults.iter().any(|f| *at + 500 >= f.at_ms && *at <= f.at_ms + f.len_ms + 5_000);
        if !explained {
            report.unprovoked_leader_changes.push(format!("+{:.1} s: node {l}", *at as f64 / 1000.0));
        }
    }
    let workload_over = Instant::now();

    // Every node converges.
    let converged = poll(Duration::from_secs(60), || async {
        let mut seen = Vec::new();
        for id in &ids {
            seen.push(cluster.status(*id).await.ok()?);
        }
        let same = seen.iter().all(|s| {
            s.applied_index == seen[0].applied_index
                && s.state_hash_index == s.applied_index
                && s.state_hash == seen[0].state_hash
        });
        same.then_some(())
    })
    .await;
    match converged {
        Some(()) => report.converge_ms = Some(ms(workload_over)),
        None => report.violations.push("the nodes did not converge within 60 s of the end of the workload".into()),
    }

    // The batches: done, every card once and in order.
    let batches = match tokio::time::timeout(Duration::from_secs(600), feeder).await {
        Ok(Ok(b)) => b,
        _ => {
            report.violations.push("the batches under faults were not done within 10 minutes of the end".into());
            Fed::default()
        }
    };
    report.violations.extend(batches.problems.iter().cloned());
    report.longest_stall_ms = batches.longest_stall_ms;
    report.no_quorum_ms = no_quorum.total_ms(Instant::now());
    if report.longest_stall_ms > 30_000 {
        report.violations.push(format!(
            "a batch made no progress for {} ms (goal: 30 s while a quorum is up)",
            report.longest_stall_ms
        ));
    }
    let (mut cards, mut busy_ms) = (0, 0);
    for b in &batches.done {
        cards += b.cards;
        busy_ms += b.ms;
        match cluster.check_output(ids[ids.len() - 1], &b.job, &b.input, dir.path(), b.cards) {
            Ok(n) => report.reference_checks = n.map(|n| n + report.reference_checks.unwrap_or(0)),
            Err(e) => report.violations.push(format!("batch {}: {e}", b.job)),
        }
    }
    if busy_ms > 0 {
        report.cards_per_s = Some(cards as f64 * 1000.0 / busy_ms as f64);
    }
    report.batch_ms = Some(busy_ms);
    report.batches = batches.done;
    for (job, reads) in &batches.job_reads {
        if let Err((a, b)) = linearizable::check_monotone(reads) {
            report.violations.push(format!(
                "job {job}: a read invoked at {} µs saw {} cards{}, after a read completed at {} µs saw {}{}",
                b.invoke,
                b.value / 2,
                if b.value % 2 == 1 { " (done)" } else { "" },
                a.complete,
                a.value / 2,
                if a.value % 2 == 1 { " (done)" } else { "" },
            ));
        }
    }

    // Histories.
    let rec = std::mem::take(&mut *record.lock().expect("record"));
    report.ops = rec.counts;
    report.ops.extend(clerked.counts);
    report.key_rounds = clerked.rounds;
    report.key_round_trips = clerked.round_trips;
    report.violations.extend(clerked.problems.iter().map(|p| format!("key clerk: {p}")));
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for (k, op) in rec.ops {
        by_key.entry(format!("register chaos/{k}")).or_default().push(op);
    }
    for (k, history) in clerked.histories {
        by_key.insert(format!("key {k}"), history);
    }
    for (k, history) in &by_key {
        match linearizable::check_within(history, 2_000_000) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable(v) => {
                report.violations.push(format!("{k} ({} operations) is not linearizable: {v}", history.len()))
            }
            Verdict::Undecided(states) => {
                report.undecided.push(format!("{k}: {} operations, {states} states", history.len()));
            }
        }
    }

    // The audit chain on every node.
    for id in &ids {
        let (code, out, err) = cluster.quill(*id, &["audit", "verify"], &[]);
        if code != 0 {
            report.violations.push(format!(
                "quill audit verify on node {id} exited {code}: {} {}",
                out.trim(),
                err.trim()
            ));
        }
    }

    // No clear TEST key value or PAN on any disk.
    let mut needles: Vec<Vec<u8>> = Vec::new();
    for v in test_key_values() {
        needles.extend(secrets::forms(&v));
    }
    // The first PANs of the batch before the faults and of the first batch under faults.
    for i in (0..opts.calm_cards.min(50)).chain(opts.calm_cards..opts.calm_cards + opts.cards.min(50)) {
        needles.push(dda_batch_pan(i).into_bytes());
    }
    for id in &ids {
        cluster.terminate(*id);
        let node_dir = cluster.node(*id).dir.clone();
        let mut hits = secrets::files_holding(&node_dir, &needles, true);
        hits.extend(secrets::values_holding(&node_dir.join("data").join("db"), &needles));
        if !hits.is_empty() {
            report.violations.push(format!("node {id}: a clear TEST key or PAN in {hits:?}"));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::already_submitted;

    #[test]
    fn a_lost_submission_answer_is_recovered_from_the_refusal() {
        let e = "quill job submit through node 5 exited 1: quill: error: refused: https://127.0.0.1:11829: \
                 FailedPrecondition: precondition failed: this file (SHA-256 2A6A165FD78BCFB8…) is already job \
                 J1a24f5a097b484; submit with --force to prepare it again";
        assert_eq!(already_submitted(e).as_deref(), Some("J1a24f5a097b484"));
        assert_eq!(already_submitted("quill job submit through node 1 exited 4: unavailable"), None);
        assert_eq!(already_submitted("is already job ; x"), None);
    }
}

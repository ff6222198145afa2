//! The key clerk: key management under faults, through `quill` as the roles do it.
//!
//! Round after round until told to stop, against random nodes:
//! - every fifth round (the first included) a working-key ceremony forms a new zone master key
//!   (`chaos-zmk-R`, K0, TDES) from two components the two custodians submit; the key that forms
//!   must have the KCV of the components' XOR, computed here;
//! - the admin generates a TDES IMK (`chaos-k-R`, E0, exportable) in an HSM, suspends and
//!   re-activates it;
//! - it is exported under the newest ZMK under dual control (the admin asks, custodians alice and
//!   bob grant, the admin runs the export): the TR-31 block must unwrap under the ZMK, computed
//!   here from the components, to a key whose KCV is the generated key's;
//! - the block is imported again (`chaos-i-R`): the cluster must answer the same KCV.
//!
//! Every key the clerk creates is a register whose value is its life-cycle state; each state
//! change is a write (acknowledged, or indeterminate when the command failed: a failed command may
//! still have been applied), each linearizable `Query key` a read (not found: absent). A key made
//! by a ceremony is a write with no completion (it forms some time after the last component).
//! [`crate::linearizable`] checks each key's history. Commands that only move a step on (a
//! ceremony start, a component, an approval grant, an approved export) are retried through other
//! nodes for up to a minute; a refusal saying the step was already done counts as done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quill_crypto::tr31;
use quill_proto::v1::keys_client::KeysClient;
use serde_json::Value;
use tonic::transport::Channel;

use crate::linearizable::{Call, Op};
use crate::nemesis::Rng;
use crate::run::Counts;

const ADMIN: &str = "admin:ada";
const CUSTODIANS: [&str; 2] = ["custodian:alice", "custodian:bob"];

/// A key's life-cycle state as a register value.
fn state_value(state: &str) -> u64 {
    match state {
        "active" => 1,
        "suspended" => 2,
        "pending" => 3,
        "retired" => 4,
        "compromised" => 5,
        "destroyed" => 6,
        _ => 99,
    }
}

/// What the clerk needs.
pub struct Clerk {
    pub runner: quill_tests::QuillRunner,
    pub ids: Vec<u64>,
    /// A reader's Keys client per node, for linearizable reads.
    pub keys: Vec<KeysClient<Channel>>,
    pub seed: u64,
    /// Times in histories are µs since this instant (the register clients' clock).
    pub start: Instant,
    pub stop: Arc<AtomicBool>,
}

/// What it did and saw.
#[derive(Debug, Default)]
pub struct Clerked {
    /// Per key id, its history.
    pub histories: BTreeMap<String, Vec<Op>>,
    /// Operations by kind.
    pub counts: BTreeMap<String, Counts>,
    /// Broken promises (wrong KCVs, a block that does not unwrap, …).
    pub problems: Vec<String>,
    pub rounds: u64,
    /// Ceremonies whose key had not formed when last looked at: (ceremony, key id, KCV expected).
    pub unformed: Vec<(String, String, String)>,
    /// Keys moved through a whole round (generated, suspended, active again, exported, imported).
    pub round_trips: u64,
}

/// A zone master key the clerk formed, with its clear value (TEST: random, this run only).
struct Zmk {
    id: String,
    value: Vec<u8>,
}

impl Clerk {
    fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// `quill --json ARGS` as `actor` through a random node: its JSON answer, or why not.
    async fn cli(&self, rng: &mut Rng, actor: &str, args: &[&str]) -> Result<Value, String> {
        let node = self.ids[(rng.next_u64() % self.ids.len() as u64) as usize];
        let runner = self.runner.clone();
        let actor = actor.to_string();
        let args: Vec<String> =
            std::iter::once("--json".to_string()).chain(args.iter().map(|a| a.to_string())).collect();
        let r = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            runner.run(node, &actor, &args)
        })
        .await
        .map_err(|e| format!("quill: {e}"))?;
        let (code, out, err) = r;
        if code != 0 {
            return Err(format!("exit {code} via node {node}: {}", err.trim()));
        }
        serde_json::from_str(out.trim()).map_err(|e| format!("via node {node}: {e}: {}", out.trim()))
    }

    /// A step that may be retried: through other nodes for up to 60 s; a refusal holding one of
    /// `done` means an earlier try went through, one holding one of `final_` that it can never
    /// succeed (e.g. an approved export that ran without its answer reaching the clerk).
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        out: &mut Clerked,
        rng: &mut Rng,
        kind: &str,
        actor: &str,
        args: &[&str],
        done: &[&str],
        final_: &[&str],
    ) -> Option<Value> {
        let t = Instant::now();
        loop {
            let r = self.cli(rng, actor, args).await;
            let c = out.counts.entry(kind.into()).or_default();
            match r {
                Ok(v) => {
                    c.ok += 1;
                    return Some(v);
                }
                Err(e) if done.iter().any(|d| e.contains(d)) => {
                    c.ok += 1;
                    return Some(Value::Null);
                }
                Err(e) => {
                    c.refused += 1;
                    let hopeless = final_.iter().any(|f| e.contains(f));
                    if hopeless || t.elapsed() > Duration::from_secs(60) || self.stop.load(Ordering::Relaxed) {
                        c.unacknowledged += 1;
                        eprintln!("chaos: clerk: {kind} given up: {e}");
                        return None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A state change of `key` tried once: recorded as a write, indeterminate if it failed.
    async fn change(
        &self,
        out: &mut Clerked,
        rng: &mut Rng,
        kind: &str,
        key: &str,
        args: &[&str],
        value: u64,
    ) -> Option<Value> {
        let invoke = Instant::now();
        let r = self.cli(rng, ADMIN, args).await;
        let complete = r.is_ok().then(|| self.micros(Instant::now()));
        let c = out.counts.entry(kind.into()).or_default();
        if r.is_ok() {
            c.ok += 1;
        } else {
            c.indeterminate += 1;
        }
        let op = Op { client: 1000, call: Call::Write(value), invoke: self.micros(invoke), complete };
        out.histories.entry(key.to_string()).or_default().push(op);
        r.ok()
    }

    /// A linearizable read of `key` through a random node, recorded; its record if found.
    async fn read(&self, out: &mut Clerked, rng: &mut Rng, key: &str) -> Option<Value> {
        let mut c = self.keys[(rng.next_u64() % self.keys.len() as u64) as usize].clone();
        let invoke = Instant::now();
        let req = quill_proto::v1::QueryRequest { what: "key".into(), id: key.into(), linearizable: true, hops: 0 };
        let r = tokio::time::timeout(Duration::from_secs(3), c.query(req)).await;
        let counts = out.counts.entry("key-read".into()).or_default();
        let (value, record) = match r {
            Ok(Ok(resp)) => match serde_json::from_str::<Value>(&resp.into_inner().json) {
                Ok(j) => (Some(state_value(j["state"].as_str().unwrap_or(""))), Some(j)),
                Err(_) => {
                    counts.refused += 1;
                    return None;
                }
            },
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => (None, None),
            Ok(Err(_)) => {
                counts.refused += 1;
                return None;
            }
            Err(_) => {
                counts.indeterminate += 1;
                return None;
            }
        };
        counts.ok += 1;
        let op = Op {
            client: 1001,
            call: Call::Read(value),
            invoke: self.micros(invoke),
            complete: Some(self.micros(Instant::now())),
        };
        out.histories.entry(key.to_string()).or_default().push(op);
        record
    }

    /// A working-key ceremony forming a TDES ZMK from two random components.
    async fn ceremony(&self, out: &mut Clerked, rng: &mut Rng, round: u64) -> Option<Zmk> {
        let (id, label) = (format!("cz-{}-{round}", self.seed), format!("chaos-zmk-{round}"));
        let key = format!("{label}.v1");
        let parts: Vec<Vec<u8>> = (0..2).map(|_| (0..3).flat_map(|_| rng.next_u64().to_be_bytes()).collect()).collect();
        let value: Vec<u8> = parts[0].iter().zip(&parts[1]).map(|(a, b)| a ^ b).collect();
        let kcv = hex::encode_upper(quill_crypto::sym::kcv_des(&value).ok()?);
        let start = ["ceremony", "start", "--key", "working", "--components", "2", "--id", &id, "--label", &label];
        let start = [&start[..], &["--usage", "K0", "--alg", "des3"]].concat();
        self.step(out, rng, "ceremony", ADMIN, &start, &["already exists"], &[]).await?;
        let mut invoke = None;
        for (custodian, part) in CUSTODIANS.iter().zip(&parts) {
            let part = hex::encode_upper(part);
            invoke = Some(Instant::now());
            let submit = ["ceremony", "submit", "--id", &id, "--component", &part];
            self.step(out, rng, "ceremony", custodian, &submit, &["already submitted", "not open"], &[]).await?;
        }
        // The key forms some time after the last component: a write with no completion.
        let invoke = self.micros(invoke.unwrap_or_else(Instant::now));
        out.histories.entry(key.clone()).or_default().push(Op {
            client: 1002,
            call: Call::Write(1),
            invoke,
            complete: None,
        });
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(90) && !self.stop.load(Ordering::Relaxed) {
            if let Some(rec) = self.read(out, rng, &key).await {
                if rec["kcv"].as_str() != Some(kcv.as_str()) {
                    out.problems
                        .push(format!("ceremony {id} formed {key} with KCV {}, the components' is {kcv}", rec["kcv"]));
                    return None;
                }
                return Some(Zmk { id: key, value });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        out.unformed.push((id, key, kcv));
        None
    }

    /// One round (see the module documentation).
    async fn round(&self, out: &mut Clerked, rng: &mut Rng, round: u64, zmk: &mut Option<Zmk>) {
        if round.is_multiple_of(5)
            && let Some(z) = self.ceremony(out, rng, round).await
        {
            *zmk = Some(z);
        }
        let label = format!("chaos-k-{round}");
        let generate = ["key", "generate", "--label", &label, "--usage", "E0", "--alg", "des2", "--exportable"];
        // A new label each round: a retried generate would make a second version.
        let Some(made) = self.change(out, rng, "key-generate", &format!("{label}.v1"), &generate, 1).await else {
            self.read(out, rng, &format!("{label}.v1")).await;
            return;
        };
        let (Some(key), Some(kcv)) =
            (made["id"].as_str().map(str::to_string), made["kcv"].as_str().map(str::to_string))
        else {
            out.problems.push(format!("key generate answered without an id or KCV: {made}"));
            return;
        };
        if key != format!("{label}.v1") {
            out.problems.push(format!("key generate of the new label {label} made {key}"));
        }
        self.read(out, rng, &key).await;
        if self.change(out, rng, "key-state", &key, &["key", "suspend", &key], 2).await.is_none() {
            return;
        }
        self.read(out, rng, &key).await;
        if self.change(out, rng, "key-state", &key, &["key", "activate", &key], 1).await.is_none() {
            return;
        }
        self.read(out, rng, &key).await;
        let Some(z) = zmk.as_ref() else { return };

        // Export under dual control.
        let ask = self.cli(rng, ADMIN, &["key", "export", "--key", &key, "--kbpk", &z.id]).await;
        let c = out.counts.entry("approval".into()).or_default();
        let approval = match ask.as_ref().map(|v| v["approval"].as_str()) {
            Ok(Some(a)) => {
                c.ok += 1;
                a.to_string()
            }
            _ => {
                c.indeterminate += 1;
                return;
            }
        };
        for custodian in CUSTODIANS {
            let done = ["already granted", "is approved, not pending"];
            self.step(out, rng, "approval", custodian, &["approve", "grant", &approval], &done, &[]).await;
        }
        let export = ["key", "export", "--approval", &approval];
        let Some(exported) = self.step(out, rng, "key-export", ADMIN, &export, &[], &["is Done"]).await else {
            return;
        };
        let Some(block) = exported["block"].as_str() else {
            out.problems.push(format!("export {approval} answered without a block: {exported}"));
            return;
        };
        match tr31::unwrap(tr31::Kbpk::Tdes(&z.value), block.as_bytes()) {
            Ok((h, clear)) => {
                let got = quill_crypto::sym::kcv_des(&clear).map(hex::encode_upper).unwrap_or_default();
                if got != kcv || &h.key_usage.code() != b"E0" {
                    out.problems.push(format!(
                        "{key} exported under {}: the block holds a {} key with KCV {got}, the inventory says {kcv}",
                        z.id,
                        String::from_utf8_lossy(&h.key_usage.code())
                    ));
                    return;
                }
            }
            Err(e) => {
                out.problems.push(format!("{key} exported under {}: the block does not unwrap: {e}", z.id));
                return;
            }
        }

        // And in again.
        let label = format!("chaos-i-{round}");
        let import = ["key", "import", "--label", &label, "--kbpk", &z.id, "--tr31", block];
        let Some(imported) = self.change(out, rng, "key-import", &format!("{label}.v1"), &import, 1).await else {
            return;
        };
        if imported["kcv"].as_str() != Some(kcv.as_str()) {
            out.problems.push(format!("{key} imported again as {label}: KCV {}, not {kcv}", imported["kcv"]));
            return;
        }
        self.read(out, rng, &format!("{label}.v1")).await;
        out.round_trips += 1;
    }

    /// Rounds until `stop` (set once the faults are over), then [`Clerk::settle`].
    pub async fn run(self) -> Clerked {
        let mut out = Clerked::default();
        let mut rng = Rng::new(self.seed ^ 0xC1E4);
        let mut zmk = None;
        while !self.stop.load(Ordering::Relaxed) {
            let round = out.rounds;
            self.round(&mut out, &mut rng, round, &mut zmk).await;
            out.rounds += 1;
            tokio::time::sleep(Duration::from_millis(200 + rng.next_u64() % 800)).await;
        }
        self.settle(&mut out, &mut rng).await;
        out
    }

    /// After the faults: every ceremony the clerk completed formed its key, with the right KCV
    /// (60 s for those still forming).
    async fn settle(&self, out: &mut Clerked, rng: &mut Rng) {
        for (id, key, kcv) in std::mem::take(&mut out.unformed) {
            let t = Instant::now();
            let mut formed = None;
            while formed.is_none() && t.elapsed() < Duration::from_secs(60) {
                formed = self.read(out, rng, &key).await;
                if formed.is_none() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            match formed {
                Some(rec) if rec["kcv"].as_str() == Some(kcv.as_str()) => {}
                Some(rec) => out
                    .problems
                    .push(format!("ceremony {id} formed {key} with KCV {}, the components' is {kcv}", rec["kcv"])),
                None => {
                    out.problems.push(format!("ceremony {id} had both components but no key {key} after the faults"))
                }
            }
        }
    }
}

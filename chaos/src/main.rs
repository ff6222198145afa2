//! `quill-chaos run --target processes|containers --nodes N --duration S --seed N
//! [--nemesis LIST] [--cards N] [--calm-cards N] [--clients N] [--keys N] [--no-key-ops] [--json]`: one seeded chaos run (see the
//! crate documentation); prints the schedule, each fault as it happens and a report, `--json` a
//! summary object whose `violations` must be empty. Exit code 0: no violation; 1: violations;
//! 2: bad arguments.

use clap::{Parser, Subcommand};
use quill_chaos::nemesis::Kind;
use quill_chaos::run::{Options, Report, Target, run};

#[derive(Parser)]
#[command(name = "quill-chaos", version, about = "Faults under load against a Quill cluster, and the checks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One seeded run.
    Run {
        #[arg(long, value_enum, default_value = "processes")]
        target: Target,
        #[arg(long, default_value_t = 5)]
        nodes: u64,
        /// Seconds of workload; faults stop after three quarters of it.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Comma-separated faults (leader-kill, kill, pause, partition-leader,
        /// partition-minority, restart-all, bridge, one-way, hsm-slow, hsm-fail, hsm-dead,
        /// clock-skew, membership, replace) or `all`.
        #[arg(long, default_value = "all")]
        nemesis: String,
        /// Cards in the batch prepared under faults.
        #[arg(long, default_value_t = 5000)]
        cards: usize,
        /// Cards in a first batch prepared before any fault (cards/s without faults; 0: none).
        #[arg(long, default_value_t = 500)]
        calm_cards: usize,
        /// Register clients.
        #[arg(long, default_value_t = 4)]
        clients: u32,
        /// Keys they share.
        #[arg(long, default_value_t = 4)]
        keys: u64,
        /// No key clerk (ceremonies, key generation and life cycle, TR-31 export under dual
        /// control and import) alongside the batches and the register clients.
        #[arg(long)]
        no_key_ops: bool,
        /// End with the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn print(r: &Report) {
    println!("seed {}  target {:?}  nodes {}  duration {} s", r.seed, r.target, r.nodes, r.duration_s);
    println!("faults injected: {}", r.faults.len());
    for f in &r.faults {
        let leader = f.new_leader_ms.map(|m| format!(", new leader after {m} ms")).unwrap_or_default();
        let note = if f.note.is_empty() { String::new() } else { format!(": {}", f.note) };
        println!("  +{:>6.1} s  {:<18} on {:?}{leader}{note}", f.at_ms as f64 / 1000.0, f.kind.name(), f.nodes);
    }
    println!("operations:");
    for (kind, c) in &r.ops {
        println!(
            "  {kind:<13} ok {:>6}  attempts refused {:>5}  timed out {:>5}  never acknowledged {:>3}",
            c.ok, c.refused, c.indeterminate, c.unacknowledged
        );
    }
    if r.key_rounds > 0 {
        println!(
            "key clerk: {} rounds, {} keys generated, cycled, exported under dual control and imported with their KCV",
            r.key_rounds, r.key_round_trips
        );
    }
    match r.reference_checks {
        Some(n) => println!("cards checked against pyemv/psec: {n} checks passed"),
        None => println!("cards not checked against pyemv/psec (no venv: scripts/setup.sh makes it)"),
    }
    if let Some(cps) = r.calm_cards_per_s {
        println!("batch before the faults: {} cards ({cps:.1} cards/s)", r.calm_cards);
    }
    match (r.batch_ms, r.cards_per_s) {
        (Some(ms), Some(cps)) => {
            let cards: usize = r.batches.iter().map(|b| b.cards).sum();
            println!(
                "batches under faults: {} ({cards} cards) in {:.1} s ({cps:.1} cards/s)",
                r.batches.len(),
                ms as f64 / 1000.0
            )
        }
        _ => println!("batches under faults: none done"),
    }
    if let Some(c) = r.catch_up_ms {
        println!(
            "every node at the leader's applied index {:.1} s after the faults (batch running)",
            c as f64 / 1000.0
        );
    }
    println!(
        "longest time without batch progress while a quorum was up: {:.1} s (a majority down for {:.1} s)",
        r.longest_stall_ms as f64 / 1000.0,
        r.no_quorum_ms as f64 / 1000.0
    );
    println!("leader changes: {}; outside every fault window: {}", r.leader_changes, r.unprovoked_leader_changes.len());
    for u in &r.unprovoked_leader_changes {
        println!("  {u}");
    }
    if let Some(c) = r.converge_ms {
        println!("converged {:.1} s after the workload stopped", c as f64 / 1000.0);
    }
    for u in &r.undecided {
        println!("undecided (linearizability search budget): {u}");
    }
    println!("violations: {}", r.violations.len());
    for v in &r.violations {
        println!("  - {v}");
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Cmd::Run { target, nodes, duration, seed, nemesis, cards, calm_cards, clients, keys, no_key_ops, json } =
        cli.command;
    let mut kinds = match Kind::parse_list(&nemesis) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("quill-chaos: {e}");
            std::process::exit(2);
        }
    };
    if !(3..=9).contains(&nodes) || duration < 10 || clients == 0 || keys == 0 {
        eprintln!("quill-chaos: --nodes 3..=9, --duration at least 10, --clients and --keys at least 1");
        std::process::exit(2);
    }
    if kinds.contains(&Kind::ClockSkew) && !std::path::Path::new(quill_tests::FAKETIME_LIB).exists() {
        // Skew moves a node's wall clock in its process (libfaketime, preloaded; the node image
        // takes the host's copy), so it needs Debian's libfaketime (scripts/setup.sh installs it).
        let why = format!("no clock-skew: {} is missing (apt-get install libfaketime)", quill_tests::FAKETIME_LIB);
        if nemesis.trim() != "all" {
            eprintln!("quill-chaos: {why}");
            std::process::exit(2);
        }
        kinds.retain(|k| *k != Kind::ClockSkew);
        eprintln!("quill-chaos: {why}");
    }
    let opts = Options {
        target,
        nodes,
        duration_s: duration,
        seed,
        kinds,
        cards,
        clients,
        keys,
        calm_cards,
        key_ops: !no_key_ops,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
    let report = rt.block_on(run(&opts));
    print(&report);
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    std::process::exit(if report.violations.is_empty() { 0 } else { 1 });
}

//! `quill`: the command line of Quill, in noun-verb form (`quill <noun> <verb>`).
//!
//! `quill demo` demonstrates the bundled HSM simulator; `quill dev` runs a local cluster of
//! `quilld` processes, `quill cluster` shows and changes its membership, and `quill bench raft`
//! measures it (DESIGN.md §11).

mod bench;
mod client;
mod cluster;
mod demo;
mod dev;
mod exit_codes;
mod pkcs11;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Quill: EMV card data preparation and key management.
#[derive(Parser, Debug)]
#[command(name = "quill", version, about, long_about = None)]
struct Cli {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Demonstrate the HSM simulator: TEST keys, card keys, CVVs, PINs, ICC key pairs.
    ///
    /// Initialises a fresh simulator token in --dir, loads the public TEST keys of
    /// shared/reference/emv.md §6 (labels TEST-…), and prepares the secrets of a few sample
    /// cards inside the HSM: the ICC master key (Option A, or Option B for a 17-digit PAN),
    /// CVV/iCVV/CVV2, a random PIN as an encrypted PIN block with its PVV, and an RSA ICC key
    /// pair whose CRT parts leave the HSM encrypted. It checks published known answers and
    /// exits with code 3 if one is wrong.
    Demo(demo::DemoArgs),
    /// Run a local cluster of quilld processes on loopback.
    #[command(subcommand)]
    Dev(DevCmd),
    /// Show and change a cluster's membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The published benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand, Debug)]
enum DevCmd {
    /// Start a local cluster (or restart the one already in --dir).
    ///
    /// Writes D/node-<id>/node.toml and a data dir per node, starts one `quilld --config
    /// D/node-<id>/node.toml` per node (log in D/node-<id>/quilld.log, pid in D/node-<id>/pid),
    /// waits until each answers /health, initialises the cluster with every node as a voter,
    /// waits for a leader and writes D/env. On a directory that already holds a cluster it starts
    /// the nodes that are not running, with the same configs, and does not initialise again.
    Up(dev::UpArgs),
    /// Stop the local cluster: SIGTERM, then SIGKILL after 10 s; data kept unless --wipe.
    Down(dev::DownArgs),
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Every member's role, term, leader, log, committed and applied index, and reachability.
    ///
    /// Asks the endpoints given (or those of D/env), learns the membership from their answers
    /// and asks every member. With --json: one document with `leader` (the leader's id) and
    /// `nodes`.
    Status(cluster::StatusArgs),
    /// Join a node as a learner (it replicates but does not vote; `promote` it next).
    Add(cluster::AddArgs),
    /// Make a learner a voter.
    Promote(cluster::IdArgs),
    /// Take a node out of the cluster. Its data must not be reused without adding it again.
    Remove(cluster::IdArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Committed commands/s and p50/p99 commit latency of 64-byte commands on a running cluster.
    Raft(bench::RaftArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let r = match &cli.cmd {
        Cmd::Demo(args) => demo::run(args, json),
        Cmd::Dev(DevCmd::Up(args)) => dev::up(args, json),
        Cmd::Dev(DevCmd::Down(args)) => dev::down(args, json),
        Cmd::Cluster(ClusterCmd::Status(args)) => cluster::status(args, json),
        Cmd::Cluster(ClusterCmd::Add(args)) => cluster::add(args, json),
        Cmd::Cluster(ClusterCmd::Promote(args)) => cluster::promote(args, json),
        Cmd::Cluster(ClusterCmd::Remove(args)) => cluster::remove(args, json),
        Cmd::Bench(BenchCmd::Raft(args)) => bench::raft(args, json),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the headline and its causes, joined.
            eprintln!("quill: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(exit_codes::ERROR)
        }
    }
}

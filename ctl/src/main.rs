//! `quill`: the command line of Quill, in noun-verb form (`quill <noun> <verb>`).
//!
//! `quill demo` demonstrates the bundled HSM simulator. The cluster commands of DESIGN.md §11
//! (`quill dev`, `quill cluster`, `quill bench raft`, …) arrive with the cluster issues.

mod demo;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let r = match &cli.cmd {
        Cmd::Demo(args) => demo::run(args, json),
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

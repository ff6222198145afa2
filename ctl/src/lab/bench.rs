//! `quill bench raft`: committed commands per second and commit latency of a running cluster.
//!
//! For each concurrency level, that many clients (tokio tasks, each with its own client id and
//! serials) send 64-byte `Put` commands to the leader back to back for the given time. A command
//! counts when the leader answered it (it is committed and applied); its latency is the time of
//! that call.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use quill_proto::v1::BenchPutRequest;
use serde_json::json;

use crate::client::{self, Target};

/// Bytes of each command's value.
const VALUE_BYTES: usize = 64;
/// One write may take this long before it counts as an error.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `quill bench raft`.
#[derive(clap::Args, Debug)]
pub struct RaftArgs {
    /// Concurrency levels to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Seconds to run each level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[command(flatten)]
    target: Target,
}

/// The figures of one concurrency level.
struct Level {
    clients: usize,
    commands: usize,
    errors: usize,
    first_error: Option<String>,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `quill bench raft`.
pub fn raft(args: &RaftArgs, json: bool) -> Result<u8> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs positive numbers");
    }
    let seeds = args.target.endpoints()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start async runtime")?;
    let tls = args.target.tls()?;
    let (leader_ep, st) = rt.block_on(client::find_leader(&tls, &seeds))?;
    if !json {
        println!(
            "quill bench raft: {}-byte Put commands to the leader (node {}, {leader_ep}), {} s per level",
            VALUE_BYTES, st.id, args.seconds
        );
    }
    let run_id = format!("{}-{}", std::process::id(), unix_ms());
    let mut levels = Vec::new();
    for &c in &args.clients {
        let level = rt.block_on(run_level(&tls, &leader_ep, &run_id, c, Duration::from_secs(args.seconds)))?;
        if !json {
            eprintln!("  {c} clients: {} commands", level.commands);
        }
        levels.push(level);
    }
    if json {
        let results: Vec<_> = levels
            .iter()
            .map(|l| {
                json!({
                    "clients": l.clients, "commands": l.commands, "errors": l.errors,
                    "seconds": l.secs, "commands_per_sec": l.commands as f64 / l.secs,
                    "p50_ms": l.p50_ms, "p99_ms": l.p99_ms, "first_error": l.first_error,
                })
            })
            .collect();
        let doc = json!({
            "bench": "raft", "endpoint": leader_ep, "leader": st.id, "value_bytes": VALUE_BYTES,
            "seconds": args.seconds, "results": results,
        });
        println!("{doc}");
    } else {
        let mut rows =
            vec![["clients", "commands/s", "p50 ms", "p99 ms", "commands", "errors"].map(String::from).to_vec()];
        for l in &levels {
            rows.push(vec![
                l.clients.to_string(),
                format!("{:.0}", l.commands as f64 / l.secs),
                format!("{:.2}", l.p50_ms),
                format!("{:.2}", l.p99_ms),
                l.commands.to_string(),
                l.errors.to_string(),
            ]);
        }
        print!("{}", crate::output::render_table(&rows));
        for l in levels.iter().filter(|l| l.errors > 0) {
            println!("{} clients: first error: {}", l.clients, l.first_error.as_deref().unwrap_or("?"));
        }
    }
    Ok(crate::exit_codes::OK)
}

async fn run_level(tls: &client::Tls, endpoint: &str, run_id: &str, clients: usize, dur: Duration) -> Result<Level> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut c = client::client(tls, endpoint, WRITE_TIMEOUT)?;
        let client_id = format!("bench-{run_id}-c{clients}-{i}");
        tasks.push(tokio::spawn(async move {
            let mut lat_us: Vec<u32> = Vec::new();
            let mut errors = 0usize;
            let mut first_error = None;
            let mut serial = 0u64;
            while Instant::now() < deadline {
                serial += 1;
                let key = format!("bench/{i}/{}", serial % 1024);
                let mut value = vec![0u8; VALUE_BYTES];
                value[..8].copy_from_slice(&serial.to_le_bytes());
                let req = BenchPutRequest { client_id: client_id.clone(), serial, key, value };
                let t = Instant::now();
                match c.bench_put(req).await {
                    Ok(_) => lat_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Err(s) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| client::grpc_reason(&s));
                    }
                }
            }
            anyhow::Ok((lat_us, errors, first_error))
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (l, e, f) = t.await.map_err(|e| anyhow!("bench client task failed: {e}"))??;
        lat.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok(Level {
        clients,
        commands: lat.len(),
        errors,
        first_error,
        secs,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
    })
}

/// The `q` quantile (nearest rank) of sorted microsecond latencies, in milliseconds.
fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7000], 0.99), 7.0);
    }
}

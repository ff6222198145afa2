//! `quilld`: the Quill node daemon. `quilld --config node.toml` runs one node until SIGINT or
//! SIGTERM. Exit codes: 0 after a clean shutdown, 1 when the node fails to boot or stops with an
//! error, 2 for a bad command line or configuration (one line naming the field).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use quill_node::config::{Config, LogFormat};
use quill_node::server;

/// The Quill node daemon.
#[derive(Debug, Parser)]
#[command(name = "quilld", version, about)]
struct Args {
    /// The node's configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Exit code of a bad configuration or command line.
const EXIT_CONFIG: u8 = 2;
/// Exit code of a boot or runtime failure.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    install_panic_hook();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("quilld: bad config: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quilld: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let shutdown = server::shutdown_on_signals().map_err(|e| format!("installing signal handlers: {e}"))?;
        server::run(config, shutdown).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "quilld failed");
            eprintln!("quilld: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("QUILL_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,cryptoki::mechanism=off"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A panic ends the process: a panicked task would otherwise leave the node running in an unknown
/// state, and a restart puts it back into a known one (Raft recovers from the durable log).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        eprintln!(
            "quilld {} panicked: {info}\n{backtrace}\nThis is a bug: please report it with the log above. Aborting.",
            env!("CARGO_PKG_VERSION")
        );
        std::process::abort();
    }));
}

//! `quilld`'s configuration file (TOML). Every field is documented, unknown keys are refused, and
//! a bad or missing field is reported on one line that names it ([`ConfigError`]).
//!
//! ```toml
//! node_id = 1
//! raft_addr = "127.0.0.1:7101"   # Raft gRPC service: listen + advertised to peers
//! api_addr = "127.0.0.1:7201"    # Cluster gRPC service (clients, forwarded writes)
//! http_addr = "127.0.0.1:7301"   # GET /health, /metrics, /raft
//! data_dir = "/abs/path/data"
//! log_format = "text"            # or "json"
//! [tls]                          # required: every listener is mutual TLS (node/src/tls)
//! cert = "tls/cert.pem"          # this node's certificate (SAN quill:node/<node_id>)
//! key = "tls/key.pem"            # its private key (0600)
//! peer_ca = "tls/ca.pem"         # the node CA: other nodes on the Raft port
//! client_ca = "tls/client-ca.pem" # the client CA: callers on the API port
//! [raft]                         # optional; every field has a default
//! heartbeat_interval_ms = 100
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::raft::NodeId;

/// The whole configuration of one node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's Raft id; unique in the cluster and never reused for another node.
    pub node_id: NodeId,
    /// `host:port` the Raft gRPC service listens on; peers are told this same address.
    pub raft_addr: SocketAddr,
    /// `host:port` of the Cluster gRPC service (client API).
    pub api_addr: SocketAddr,
    /// `host:port` of the HTTP endpoint (`/health`, `/metrics`, `/raft`).
    pub http_addr: SocketAddr,
    /// Directory of the node's RocksDB and snapshot files; created if missing.
    pub data_dir: PathBuf,
    /// Log line format on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Raft timing, snapshot and transport settings.
    #[serde(default)]
    pub raft: RaftConfig,
    /// Mutual TLS: this node's certificate and the CAs it trusts (relative paths are relative to
    /// the configuration file).
    pub tls: TlsConfig,
    /// Size limits of requests on every service.
    #[serde(default)]
    pub limits: Limits,
    /// Optional: reach some peers' Raft service at another address than the one they advertise
    /// (a relay, NAT, or a fault-injecting proxy in tests). Keys are node ids, values `host:port`:
    /// `[dial]` then `2 = "10.0.0.7:7101"`.
    #[serde(default)]
    pub dial: BTreeMap<String, String>,
    /// The node's HSM slots (`[hsm]` with `[[hsm.slots]]`: module, token_label or slot, pin /
    /// pin_env / pin_file, allow_host_key_material, ...; see hsm/README.md). Without it the node
    /// replicates but does no key work (no enrolment, no ceremonies, no HSM operations).
    #[serde(default)]
    pub hsm: Option<quill_hsm::PoolConfig>,
}

/// The `[tls]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate (PEM), naming `quill:node/<node_id>`.
    pub cert: PathBuf,
    /// Its private key (PEM; mode 0600).
    pub key: PathBuf,
    /// The node CA: the only issuer accepted on the Raft port and from the nodes this one dials.
    pub peer_ca: PathBuf,
    /// The client CA: the only issuer accepted from callers on the API port.
    pub client_ca: PathBuf,
}

impl TlsConfig {
    fn resolve(&mut self, base: &Path) {
        for p in [&mut self.cert, &mut self.key, &mut self.peer_ca, &mut self.client_ca] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The files of the Raft port and of dialling peers.
    pub fn peer_files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles { cert: self.cert.clone(), key: self.key.clone(), ca: self.peer_ca.clone() }
    }

    /// The files of the API port.
    pub fn api_files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles { cert: self.cert.clone(), key: self.key.clone(), ca: self.client_ca.clone() }
    }
}

/// The `[limits]` table: how large a message each service accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest Raft message (an AppendEntries batch, a snapshot chunk, a forwarded write), bytes.
    pub raft_message_bytes: usize,
    /// Largest client request message (one upload part, one typed call), bytes.
    pub request_bytes: usize,
    /// Uploads (`Jobs.Submit` streams) one caller may have open at once.
    pub uploads_per_caller: usize,
    /// How often the leader compares the nodes' state hashes (divergence check), ms.
    pub divergence_check_ms: u64,
}

impl Limits {
    /// The divergence check's period.
    pub fn divergence_check(&self) -> Duration {
        Duration::from_millis(self.divergence_check_ms.max(1000))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            raft_message_bytes: 64 << 20,
            request_bytes: 4 << 20,
            uploads_per_caller: 2,
            divergence_check_ms: 30_000,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[raft]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// A follower that hears no leader for a random time in `[min, max)` starts an election.
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind the last snapshot (so a briefly lagging follower needs no snapshot).
    pub max_in_snapshot_log_to_keep: u64,
    /// Bytes per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: u64,
    /// Timeout of one InstallSnapshot chunk RPC (sized for large snapshots).
    pub install_snapshot_timeout_ms: u64,
    /// Timeout of an AppendEntries or Vote RPC, and of connecting to a peer.
    pub rpc_timeout_ms: u64,
    /// How long a client write waits to be applied before it is reported as indeterminate.
    pub write_timeout_ms: u64,
    /// Bytes of log entries one AppendEntries carries at most (at least one entry is always
    /// sent): a follower catching up receives the log in pieces that arrive within the RPC's
    /// time (openraft gives each AppendEntries `heartbeat_interval_ms`).
    pub max_append_bytes: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            snapshot_chunk_bytes: 4 << 20,
            install_snapshot_timeout_ms: 120_000,
            rpc_timeout_ms: 2000,
            write_timeout_ms: 10_000,
            max_append_bytes: crate::raft::log_store::MAX_APPEND_BYTES,
        }
    }
}

impl RaftConfig {
    /// Timeout of AppendEntries / Vote.
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    /// Timeout of one InstallSnapshot chunk.
    pub fn install_snapshot_timeout(&self) -> Duration {
        Duration::from_millis(self.install_snapshot_timeout_ms)
    }

    /// How long a client write may take before it is indeterminate.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// The openraft configuration, validated by openraft.
    pub fn to_openraft(&self) -> Result<openraft::Config, ConfigError> {
        let cfg = openraft::Config {
            cluster_name: "quill".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            ..Default::default()
        };
        cfg.validate().map_err(|e| ConfigError::Invalid { field: "raft", reason: e.to_string() })
    }
}

/// Check a `host:port` address as peers and clients will dial it: a host name or IP address
/// (IPv6 in brackets) and a non-zero port. The error says what is wrong.
pub fn check_host_port(addr: &str) -> Result<(), &'static str> {
    let Some((host, port)) = addr.rsplit_once(':') else { return Err("has no port") };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err("has no valid port"),
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name_ok =
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if name_ok { Ok(()) } else { Err("has no valid host") }
}

/// Why a configuration file was refused. Each variant prints as one line naming the file and,
/// where there is one, the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a field is missing, unknown or of the wrong type.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// The parser's message, which names the field.
        message: String,
    },
    /// A field parsed but its value is not acceptable.
    #[error("field `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl Config {
    /// Read, parse and check a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { line, message, .. } => ConfigError::Parse { path: path.into(), line, message },
            other => other,
        })?;
        config.tls.resolve(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Parse and check configuration text (the path in errors is empty).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let start = e.span().map(|s| s.start.min(text.len()));
            let line = start.map(|s| text[..s].matches('\n').count() + 1).unwrap_or(0);
            let mut message = e.message().replace('\n', " ");
            // A bad value's message ("invalid socket address syntax") does not name its key:
            // quote the line it is on, which does.
            if !message.contains('`')
                && let Some(source) = text.lines().nth(line.saturating_sub(1)).filter(|_| line > 0)
            {
                message = format!("{message} (in `{}`)", source.trim());
            }
            ConfigError::Parse { path: PathBuf::new(), line, message }
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.into() });
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if self.raft_addr.port() == 0 || self.api_addr.port() == 0 || self.http_addr.port() == 0 {
            return invalid("raft_addr/api_addr/http_addr", "port 0 cannot be advertised to peers");
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.heartbeat_interval_ms >= r.election_timeout_min_ms {
            return invalid("raft.heartbeat_interval_ms", "must be > 0 and below raft.election_timeout_min_ms");
        }
        if r.election_timeout_min_ms >= r.election_timeout_max_ms {
            return invalid("raft.election_timeout_min_ms", "must be below raft.election_timeout_max_ms");
        }
        if r.snapshot_chunk_bytes == 0 {
            return invalid("raft.snapshot_chunk_bytes", "must be > 0");
        }
        if r.rpc_timeout_ms == 0 || r.install_snapshot_timeout_ms == 0 || r.write_timeout_ms == 0 {
            return invalid("raft.*_timeout_ms", "timeouts must be > 0");
        }
        self.dial_overrides()?;
        let l = &self.limits;
        if l.raft_message_bytes < (r.snapshot_chunk_bytes as usize) + (64 << 10) {
            return invalid("limits.raft_message_bytes", "must exceed raft.snapshot_chunk_bytes by at least 64 KiB");
        }
        if l.request_bytes < 64 << 10 || l.uploads_per_caller == 0 {
            return invalid("limits", "request_bytes must be at least 65536 and uploads_per_caller at least 1");
        }
        if let Some(h) = &self.hsm
            && h.slots.is_empty()
        {
            return invalid("hsm.slots", "an [hsm] table needs at least one [[hsm.slots]] entry");
        }
        self.raft.to_openraft().map(|_| ())
    }

    /// The `[dial]` table as node id → `host:port`.
    pub fn dial_overrides(&self) -> Result<BTreeMap<NodeId, String>, ConfigError> {
        let mut out = BTreeMap::new();
        for (id, addr) in &self.dial {
            let invalid = |reason: String| ConfigError::Invalid { field: "dial", reason };
            let id: NodeId = id.parse().map_err(|_| invalid(format!("key {id:?} is not a node id")))?;
            check_host_port(addr).map_err(|why| invalid(format!("node {id}: {addr:?} {why}; expected host:port")))?;
            out.insert(id, addr.clone());
        }
        Ok(out)
    }
}

pub use quill_trust::loopback::free_loopback_addrs;

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
node_id = 1
raft_addr = "127.0.0.1:7101"
api_addr = "127.0.0.1:7201"
http_addr = "127.0.0.1:7301"
data_dir = "/tmp/q"
[tls]
cert = "c.pem"
key = "k.pem"
peer_ca = "p.pem"
client_ca = "cl.pem"
"#;

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::parse(MIN).expect("parses");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.raft.rpc_timeout_ms, 2000);
        assert_eq!(c.raft.snapshot_chunk_bytes, 4 << 20);
    }

    #[test]
    fn errors_name_the_field() {
        let missing = Config::parse(&MIN.replace("node_id = 1\n", "")).expect_err("missing");
        assert!(missing.to_string().contains("node_id"), "{missing}");
        let unknown = Config::parse(&format!("{MIN}peers = 3\n")).expect_err("unknown");
        assert!(unknown.to_string().contains("peers"), "{unknown}");
        let bad = Config::parse(&MIN.replace("127.0.0.1:7201", "nowhere")).expect_err("bad addr");
        assert!(bad.to_string().contains("api_addr"), "{bad}");
        assert!(!bad.to_string().contains('\n'));
        let nested = Config::parse(&format!("{MIN}[raft]\nheartbeat_ms = 5\n")).expect_err("nested");
        assert!(nested.to_string().contains("heartbeat_ms"), "{nested}");
        let dial = Config::parse(&format!("{MIN}[dial]\n2 = \"nowhere\"\n")).expect_err("dial");
        assert!(dial.to_string().contains("dial") && dial.to_string().contains("node 2"), "{dial}");
        let ok = Config::parse(&format!("{MIN}[dial]\n2 = \"127.0.0.1:9\"\n")).expect("dial parses");
        assert_eq!(ok.dial_overrides().expect("valid").get(&2).map(String::as_str), Some("127.0.0.1:9"));
        let timing = Config::parse(&format!("{MIN}[raft]\nheartbeat_interval_ms = 900\n")).expect_err("timing");
        assert!(timing.to_string().contains("raft.heartbeat_interval_ms"), "{timing}");
    }
}

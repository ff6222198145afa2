//! Boot and shutdown of a node, as a checklist: config → RocksDB → Raft → gRPC servers → HTTP,
//! one log line per stage. One shutdown channel (fed by SIGINT/SIGTERM) is handed to every
//! server; on shutdown the servers are awaited by name, then Raft is stopped, then the storage
//! is dropped (last reference), in that order.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::api::jobs::JobsService;
use crate::api::keys::KeysService;
use crate::api::{ClusterService, http};
use crate::config::Config;
use crate::network::{Network, Raft, RaftService};
use crate::runtime::agent::{HostPathQueue, KeyAgent, Proposer};
use crate::runtime::worker::Workers;
use crate::store::StoreError;
use quill_hsm::Hsm as _;

/// Why a node failed to boot or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration was refused by openraft.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory or its database could not be opened.
    #[error("opening storage in {dir}: {source}")]
    Storage {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Why.
        source: StoreError,
    },
    /// Raft did not start.
    #[error("starting raft: {0}")]
    Raft(String),
    /// The TLS files could not be loaded, or the certificate is not this node's.
    #[error("TLS: {0}")]
    Tls(String),
    /// The HSM pool could not be opened.
    #[error("opening the HSM pool: {0}")]
    Hsm(String),
    /// A listen address could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A server failed while running.
    #[error("{what} server failed: {reason}")]
    Serve {
        /// Which server.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// A shutdown signal receiver: resolves once shutdown is requested.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Wait until shutdown is requested (or its sender is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// A channel that turns the first SIGINT or SIGTERM into a shutdown request.
pub fn shutdown_on_signals() -> Result<Shutdown, std::io::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        info!(signal = name, "shutdown requested");
        let _ = tx.send(true);
    });
    Ok(Shutdown(rx))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { what, addr, source })
}

/// How long one connection lives: a revoked or expired certificate's open connection ends within
/// this time (every call on it is refused meanwhile).
pub const CONNECTION_AGE: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a stopping node lets calls in flight finish before it closes their connections. A
/// write waits for its commit up to the write timeout (10 s): with the quorum gone (a cluster
/// stopped node by node) every later node held its stop that long, and the whole stop took half
/// a minute. A call cut off this way is indeterminate to its client, as any lost connection is;
/// a retry with the same serial is applied once.
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Keep `revoked` equal to the replicated list: re-read it whenever the applied index moves.
async fn refresh_revocations(raft: Raft, sm: crate::raft::StateMachine, revoked: crate::tls::Revocations) {
    let mut metrics = raft.metrics();
    let mut seen = None;
    loop {
        let applied = metrics.borrow().last_applied.map(|l| l.index);
        if applied != seen {
            seen = applied;
            match sm.read(crate::keys::revoked_serials).await {
                Ok(list) => revoked.set(list),
                Err(e) => warn!(error = %e, "reading the revocation list failed"),
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Run the node until `shutdown` resolves, then tear down in order.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ServerError> {
    info!(node_id = config.node_id, raft = %config.raft_addr, api = %config.api_addr, http = %config.http_addr, "[1/5] config loaded");
    let raft_config = Arc::new(config.raft.to_openraft()?);
    let peer_files = config.tls.peer_files();
    let named = peer_files.identity().map_err(|e| ServerError::Tls(e.to_string()))?;
    if named.identity != crate::tls::Identity::Node(config.node_id) {
        return Err(ServerError::Tls(format!(
            "{} names {}, but this is node {}",
            peer_files.cert.display(),
            named.identity,
            config.node_id
        )));
    }
    let tls_err = |e: crate::tls::TlsError| ServerError::Tls(e.to_string());
    let raft_tls = crate::tls::server_config(&peer_files).map_err(tls_err)?;
    let api_tls = crate::tls::server_config(&config.tls.api_files()).map_err(tls_err)?;
    let peer_tls = crate::tls::client_config(&peer_files).map_err(tls_err)?;
    let links = crate::tls::Links::default();
    let revoked = crate::tls::Revocations::default();
    info!(serial = %named.serial, "TLS identity loaded (TLS 1.3, AES-GCM, X25519MLKEM768 preferred)");

    let dir = config.data_dir.clone();
    let (log_store, sm) =
        crate::raft::open(&dir).await.map_err(|source| ServerError::Storage { dir: dir.clone(), source })?;
    let log_store = log_store.with_append_limit(config.raft.max_append_bytes);
    info!(dir = %dir.display(), "[2/5] RocksDB opened");

    // The HSM pool opens before Raft starts: applying an entry MACs its audit records with this
    // node's audit key, from the first entry replayed on.
    let (pool, queue) = match config.hsm.clone() {
        None => {
            info!("no [hsm] configured: this node does no key work, and its audit records carry no MAC of its own");
            (None, None)
        }
        Some(pool_config) => {
            let queue = Arc::new(HostPathQueue::default());
            let observer: Arc<dyn quill_hsm::HostPathObserver> = queue.clone();
            let pool = tokio::task::spawn_blocking(move || quill_hsm::HsmPool::open(&pool_config, observer))
                .await
                .map_err(|e| ServerError::Hsm(e.to_string()))?
                .map_err(|e| ServerError::Hsm(e.to_string()))?;
            info!(slots = pool.describe().slots.len(), "HSM pool open");
            (Some(Arc::new(pool)), Some(queue))
        }
    };
    let sm = match &pool {
        Some(p) => sm.with_node_audit(p.clone()).map_err(|source| ServerError::Storage { dir: dir.clone(), source })?,
        None => sm,
    };

    let network = Network {
        id: config.node_id,
        rpc_timeout: config.raft.rpc_timeout(),
        snapshot_timeout: config.raft.install_snapshot_timeout(),
        dial: config.dial_overrides()?,
        tls: peer_tls.clone(),
        links: links.clone(),
        max_message_bytes: config.limits.raft_message_bytes,
    };
    let raft = Raft::new(config.node_id, raft_config, network, log_store, sm.clone())
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    info!("[3/5] raft started");

    let agent = match (pool, queue) {
        (Some(pool), Some(queue)) => Some(KeyAgent::with_pool(config.node_id, pool, raft.clone(), sm.clone(), queue)),
        _ => None,
    };

    let raft_listener = bind("raft gRPC", config.raft_addr).await?;
    let api_listener = bind("api gRPC", config.api_addr).await?;
    let http_listener = bind("http", config.http_addr).await?;
    let mut servers: Vec<(&'static str, JoinHandle<Result<(), String>>)> = Vec::new();
    let cluster_svc = ClusterService::new(
        config.node_id,
        raft.clone(),
        sm.clone(),
        agent.clone(),
        config.raft.write_timeout(),
        config.raft.rpc_timeout(),
        crate::tls::Dialer {
            config: peer_tls,
            links: links.clone(),
            cert: crate::identity::CertRef {
                serial: named.serial.clone(),
                key_fp: named.key_fp.clone(),
                tenants: Default::default(),
            },
        },
    );
    tokio::spawn(refresh_revocations(raft.clone(), sm.clone(), revoked.clone()));
    let raft_svc = RaftService::new(
        raft.clone(),
        Arc::new(cluster_svc.clone()),
        revoked.clone(),
        config.limits.raft_message_bytes,
    )
    .into_server();
    let stop = shutdown.clone();
    let raft_incoming = crate::tls::incoming(raft_listener, raft_tls, "raft");
    servers.push((
        "raft gRPC",
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .max_connection_age(CONNECTION_AGE)
                .add_service(raft_svc)
                .serve_with_incoming_shutdown(raft_incoming, stop.wait())
                .await
                .map_err(|e| e.to_string())
        }),
    ));
    // Every client call's caller is its certificate's identity (crate::api::authenticator).
    let limit = config.limits.request_bytes;
    let keys = KeysService::new(cluster_svc.clone(), sm.clone(), agent.clone());
    let keys_svc = tonic::service::interceptor::InterceptedService::new(
        keys.clone().into_server(limit),
        crate::api::authenticator(revoked.clone()),
    );
    let jobs_svc = tonic::service::interceptor::InterceptedService::new(
        JobsService::new(cluster_svc.clone(), sm.clone(), agent.clone(), config.limits.uploads_per_caller)
            .into_server(limit),
        crate::api::authenticator(revoked.clone()),
    );
    let exchange_svc = tonic::service::interceptor::InterceptedService::new(
        crate::api::exchange::ExchangeService::new(cluster_svc.clone(), keys).into_server(limit),
        crate::api::authenticator(revoked.clone()),
    );
    if let Some(agent) = agent.clone() {
        let proposer: Arc<dyn Proposer> = Arc::new(cluster_svc.clone());
        let stop = shutdown.clone();
        tokio::spawn(agent.clone().run(proposer, stop.wait()));
        // Job workers: one per HSM slot, each preparing its chunk on two HSM sessions.
        let slots = agent.hsm().describe().slots.len().max(1);
        let workers = Workers::new(config.node_id, agent.hsm().clone(), sm.clone(), cluster_svc.clone(), 2);
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, f) = (shutdown.clone(), flag.clone());
        tokio::spawn(async move {
            stop.wait().await;
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        tokio::spawn(workers.run(slots, flag));
        info!(workers = slots, "job workers started");
    }
    tokio::spawn(cluster_svc.clone().check_divergence(config.limits.divergence_check(), shutdown.clone()));
    tokio::spawn(crate::runtime::eraser::run(raft.clone(), sm.clone(), shutdown.clone().wait()));
    let api_svc = tonic::service::interceptor::InterceptedService::new(
        cluster_svc.into_server(limit),
        crate::api::authenticator(revoked.clone()),
    );
    let stop = shutdown.clone();
    let api_incoming = crate::tls::incoming(api_listener, api_tls, "api");
    servers.push((
        "api gRPC",
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .max_connection_age(CONNECTION_AGE)
                .add_service(api_svc)
                .add_service(keys_svc)
                .add_service(jobs_svc)
                .add_service(exchange_svc)
                .serve_with_incoming_shutdown(api_incoming, stop.wait())
                .await
                .map_err(|e| e.to_string())
        }),
    ));
    info!(raft = %config.raft_addr, api = %config.api_addr, "[4/5] gRPC servers listening");

    let router = http::router(raft.clone());
    let stop = shutdown.clone();
    servers.push((
        "http",
        tokio::spawn(async move {
            axum::serve(http_listener, router).with_graceful_shutdown(stop.wait()).await.map_err(|e| e.to_string())
        }),
    ));
    info!(http = %config.http_addr, "[5/5] HTTP listening; node running");

    shutdown.wait().await;

    // Teardown: servers first (no new requests), then Raft, then the storage (dropped last).
    let mut failure = None;
    let drained_by = tokio::time::Instant::now() + DRAIN;
    for (what, mut handle) in servers.into_iter().rev() {
        let Ok(joined) = tokio::time::timeout_at(drained_by, &mut handle).await else {
            warn!(server = what, drain_s = DRAIN.as_secs(), "calls still in flight; closing their connections");
            handle.abort();
            continue;
        };
        match joined {
            Ok(Ok(())) => info!(server = what, "stopped"),
            Ok(Err(reason)) => {
                error!(server = what, %reason, "stopped with an error");
                failure.get_or_insert(ServerError::Serve { what, reason });
            }
            Err(e) => {
                error!(server = what, error = %e, "task failed");
                failure.get_or_insert(ServerError::Serve { what, reason: e.to_string() });
            }
        }
    }
    if let Err(e) = raft.shutdown().await {
        error!(error = %e, "raft shutdown failed");
    } else {
        info!("raft stopped");
    }
    drop(raft);
    drop(sm);
    info!("storage closed; bye");
    failure.map_or(Ok(()), Err)
}

//! Mutual TLS on every listener and every dial, and identities from certificates.
//!
//! - Every listener (the client API, the Raft port) is TLS 1.3 only, AES-GCM suites only, with a
//!   client certificate required; the key exchange prefers the hybrid post-quantum group
//!   X25519MLKEM768 (aws-lc-rs; X25519 and P-256 remain for third-party clients such as
//!   `openssl s_client`, which cannot downgrade our own links: TLS 1.3 signs the transcript).
//!   Our own listener and accept loop ([`incoming`]) rather than tonic's `ServerTlsConfig`, which
//!   cannot restrict versions or suites (`../shared/reference/trust.md` §1, Path A).
//! - Two CAs: the **node CA** issues node certificates (serve both ports, dial peers), the
//!   **client CA** issues people's and services' certificates. The Raft port trusts only the node
//!   CA; the API port trusts only the client CA for callers (clients trust the node CA to know they
//!   reach a node).
//! - Identity comes from the verified leaf and nothing else ([`PeerCert`]): exactly one SAN URI
//!   `quill:node/<id>` or `quill:role/<role>/<name>`. One role per certificate: a person who is
//!   both custodian and auditor holds two certificates. A client certificate may also name the
//!   tenants it acts for (`quill:tenant/<name>`, or `quill:tenant/*`; none: the default tenant).
//! - Every node certificate carries the DNS name [`NODE_NAME`]; our clients verify that name
//!   whatever address they dial, and a Raft dial also checks that the peer is the node it meant
//!   to reach ([`channel`] with `expect`).

pub mod pki;

pub use pki::PkiDir;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, warn};

use crate::identity::{Actor, NodeId, Role, TENANT_URI, Tenants};

/// The DNS name in every node certificate, which our clients verify.
pub const NODE_NAME: &str = "quill-node.internal";
/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The URI scheme of identities in certificates.
pub const URI_PREFIX: &str = "quill:";

/// Why TLS material could not be loaded or a certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A certificate does not name an acceptable identity.
    #[error("certificate: {0}")]
    Identity(String),
    /// Issuing certificates failed.
    #[error("issuing certificates: {0}")]
    Issue(String),
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

/// The one crypto provider of every link: aws-lc-rs, TLS 1.3 AES-GCM suites, hybrid
/// post-quantum key exchange first.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.cipher_suites =
        vec![aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384, aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    p.kx_groups =
        vec![aws_lc_rs::kx_group::X25519MLKEM768, aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1];
    Arc::new(p)
}

/// The files of one TLS identity: its certificate, its private key, and the CA it trusts on the
/// other end. A directory holding `cert.pem`, `key.pem` and `ca.pem` is one ([`Self::in_dir`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TlsFiles {
    /// The certificate (PEM; the leaf first, then any intermediates).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8; must not be readable by group or others).
    pub key: PathBuf,
    /// The CA certificate(s) the other end must chain to (PEM).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// `DIR/cert.pem`, `DIR/key.pem`, `DIR/ca.pem`.
    pub fn in_dir(dir: &Path) -> Self {
        TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem"), ca: dir.join("ca.pem") }
    }

    /// The identity this certificate names.
    pub fn identity(&self) -> Result<PeerCert, TlsError> {
        let certs = load_certs(&self.cert)?;
        let leaf = certs.first().ok_or_else(|| file_err(&self.cert, "no certificate"))?;
        PeerCert::from_der(leaf.as_ref()).map_err(|e| file_err(&self.cert, e))
    }
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// A private key from a PEM file that only its owner can read.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(file_err(
            path,
            format!("private key is readable by others (mode {:o}); chmod 600 it", meta.permissions().mode() & 0o777),
        ));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(path)? {
        roots.add(ca).map_err(|e| file_err(path, e))?;
    }
    Ok(roots)
}

/// A listener's configuration: present `own`, require a client certificate chaining to
/// `own.ca`, TLS 1.3 and `h2` only.
pub fn server_config(own: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&own.ca)?), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&own.cert)?, load_key(&own.key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", own.cert.display())))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A dialler's configuration: present `own`, trust only servers chaining to `own.ca`.
pub fn client_config(own: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&own.ca)?)
        .with_client_auth_cert(load_certs(&own.cert)?, load_key(&own.key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", own.cert.display())))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// What one link negotiated (for `quill cluster status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkInfo {
    /// `TLSv1_3`.
    pub protocol: String,
    /// E.g. `TLS13_AES_256_GCM_SHA384`.
    pub suite: String,
    /// The key exchange group, e.g. `X25519MLKEM768`.
    pub group: String,
}

impl LinkInfo {
    fn of(conn: &rustls::CommonState) -> Self {
        let name = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        LinkInfo {
            protocol: name(conn.protocol_version().map(|v| format!("{v:?}"))),
            suite: name(conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()))),
            group: name(conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name()))),
        }
    }
}

impl std::fmt::Display for LinkInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.protocol, self.suite, self.group)
    }
}

/// The last negotiated parameters of each outgoing link, by peer label.
#[derive(Debug, Clone, Default)]
pub struct Links(Arc<Mutex<BTreeMap<String, LinkInfo>>>);

impl Links {
    fn record(&self, peer: &str, info: LinkInfo) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.to_string(), info);
    }

    /// Every link seen, by peer.
    pub fn snapshot(&self) -> BTreeMap<String, LinkInfo> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a node dials its peers with: its node certificate's client configuration and the record
/// of what each link negotiated.
#[derive(Debug, Clone)]
pub struct Dialer {
    /// The client configuration (the node certificate; trusts the node CA).
    pub config: Arc<ClientConfig>,
    /// What each link negotiated.
    pub links: Links,
    /// This node's own certificate: the node's own proposals carry it (enrolment binds the HSM
    /// transport key to it; a revoked node certificate stops the node's writes too).
    pub cert: crate::identity::CertRef,
}

impl Dialer {
    /// A lazy channel to node `id` at `addr` ([`channel`]).
    pub fn channel(&self, addr: &str, connect_timeout: Duration, id: NodeId) -> Result<Channel, String> {
        channel(addr, self.config.clone(), connect_timeout, None, Some(id), self.links.clone())
    }
}

/// The stream of finished handshakes on `listener`, for `serve_with_incoming`: each handshake
/// runs in its own task (a slow one stalls no other) and is bounded by [`HANDSHAKE_TIMEOUT`].
/// Refusals are logged with the peer address and rustls' reason.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    what: &'static str,
) -> ReceiverStream<Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        debug!(listener = what, %peer, link = %LinkInfo::of(tls.get_ref().1), "TLS link up");
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => warn!(listener = what, %peer, reason = %e, "TLS handshake refused"),
                    Err(_) => warn!(listener = what, %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A lazily connecting channel to `addr` (`host:port`, or a URL whose scheme is ignored) over
/// mutual TLS with `config`; `call_timeout` bounds each call. The server must present a node certificate for [`NODE_NAME`]; with
/// `expect`, it must be that node's. Each handshake's parameters are recorded in `links`.
pub fn channel(
    addr: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
    call_timeout: Option<Duration>,
    expect: Option<NodeId>,
    links: Links,
) -> Result<Channel, String> {
    let hostport = addr.trim().trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
    let mut endpoint = Endpoint::from_shared(format!("http://{hostport}"))
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .connect_timeout(connect_timeout);
    if let Some(t) = call_timeout {
        endpoint = endpoint.timeout(t);
    }
    let label = hostport.to_string();
    let connector = tower::service_fn(move |uri: Uri| {
        let (config, links, label) = (config.clone(), links.clone(), label.clone());
        async move {
            let host = uri.host().unwrap_or("127.0.0.1").trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(NODE_NAME).map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            let conn = tls.get_ref().1;
            if let Some(want) = expect {
                let leaf = conn.peer_certificates().and_then(|c| c.first()).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, "peer presented no certificate")
                })?;
                let got = PeerCert::from_der(leaf.as_ref())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
                if got.identity != Identity::Node(want) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("{label} presented {} where node {want} was expected", got.identity),
                    ));
                }
            }
            links.record(&label, LinkInfo::of(conn));
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Identity {
    /// A cluster node (`quill:node/<id>`).
    Node(NodeId),
    /// A person or service in one role (`quill:role/<role>/<name>`).
    Client(Actor),
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Client(a) => write!(f, "{a}"),
        }
    }
}

impl Identity {
    /// The SAN URI that names this identity.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{URI_PREFIX}node/{id}"),
            Identity::Client(a) => format!("{URI_PREFIX}role/{}/{}", a.role, a.name),
        }
    }

    /// Parse a SAN URI.
    pub fn from_uri(uri: &str) -> Result<Self, String> {
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(|| format!("{uri:?} is not a {URI_PREFIX} URI"))?;
        if let Some(id) = rest.strip_prefix("node/") {
            let id: NodeId = id.parse().map_err(|_| format!("{uri:?}: node id is not a number"))?;
            return Ok(Identity::Node(id));
        }
        if let Some(rn) = rest.strip_prefix("role/") {
            let (role, name) = rn.split_once('/').ok_or_else(|| format!("{uri:?}: expected role/<role>/<name>"))?;
            let actor = Actor::parse(&format!("{role}:{name}")).map_err(|e| format!("{uri:?}: {e}"))?;
            if actor.role == Role::Node {
                return Err(format!("{uri:?}: role node is named quill:node/<id>"));
            }
            return Ok(Identity::Client(actor));
        }
        Err(format!("{uri:?}: expected {URI_PREFIX}node/<id> or {URI_PREFIX}role/<role>/<name>"))
    }
}

/// What the cluster knows of a verified peer certificate: who it names, its serial (for
/// revocation), its public key's fingerprint (two certificates of one key are one person) and
/// when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The identity the SAN URI names.
    pub identity: Identity,
    /// The tenants its `quill:tenant/…` URIs name (a node's: the default, unused).
    pub tenants: Tenants,
    /// The serial number, lower-case hex without leading zero bytes.
    pub serial: String,
    /// SHA-256 of the SubjectPublicKeyInfo, hex (first 16 bytes).
    pub key_fp: String,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
}

/// A serial number's bytes as the cluster writes it.
pub fn serial_hex(raw: &[u8]) -> String {
    let trimmed: &[u8] = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => &[0],
    };
    hex::encode(trimmed)
}

impl PeerCert {
    /// Parse a (verified) leaf certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName: {e}"))?
            .ok_or("the certificate has no subjectAltName naming a quill: identity")?;
        let all: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.starts_with(URI_PREFIX) => Some(*u),
                _ => None,
            })
            .collect();
        let (tenant_uris, uris): (Vec<&str>, Vec<&str>) = all.into_iter().partition(|u| u.starts_with(TENANT_URI));
        let tenants = Tenants::parse(tenant_uris.iter().map(|u| &u[TENANT_URI.len()..]))?;
        let uri = match uris.as_slice() {
            [one] => *one,
            [] => return Err("the certificate names no quill: URI".into()),
            _ => return Err(format!("the certificate names {} quill: URIs; exactly one is allowed", uris.len())),
        };
        let identity = Identity::from_uri(uri)?;
        if matches!(identity, Identity::Node(_)) && !tenant_uris.is_empty() {
            return Err(format!("{uri:?}: a node certificate names no tenant"));
        }
        let spki = Sha256::digest(cert.public_key().raw);
        Ok(PeerCert {
            identity,
            tenants,
            serial: serial_hex(cert.raw_serial()),
            key_fp: hex::encode(&spki[..16]),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// [`Self::from_der`] through a cache of certificates already parsed, keyed by their DER (a
    /// connection's every call presents the same leaf; parsing X.509 per call showed in the
    /// Raft benchmark).
    pub fn from_der_cached(der: &[u8]) -> Result<Self, String> {
        type Cache = Mutex<std::collections::HashMap<Vec<u8>, PeerCert>>;
        static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(der) {
            return Ok(c.clone());
        }
        let parsed = PeerCert::from_der(der)?;
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= 4096 {
            c.clear();
        }
        c.insert(der.to_vec(), parsed.clone());
        Ok(parsed)
    }

    /// The verified leaf of a tonic request's TLS connection (unexpired).
    pub fn of_request<T>(req: &tonic::Request<T>) -> Result<Self, tonic::Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| tonic::Status::unauthenticated("no client certificate on this connection"))?;
        let leaf = certs.first().ok_or_else(|| tonic::Status::unauthenticated("empty certificate chain"))?;
        let cert = PeerCert::from_der_cached(leaf.as_ref()).map_err(tonic::Status::unauthenticated)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(i64::MAX);
        if cert.not_after < now {
            return Err(tonic::Status::unauthenticated(format!(
                "certificate {} of {} expired",
                cert.serial, cert.identity
            )));
        }
        Ok(cert)
    }
}

/// The replicated list of revoked certificate serials, as this node last read it from its state
/// (refreshed whenever the applied index moves: [`Revocations::refresh_from`]). Checked on every
/// client call and every Raft RPC; writes are checked again in apply, at their log position.
#[derive(Debug, Clone, Default)]
pub struct Revocations(Arc<std::sync::RwLock<std::collections::BTreeSet<String>>>);

impl Revocations {
    /// Is `serial` revoked?
    pub fn contains(&self, serial: &str) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(serial)
    }

    /// Replace the list.
    pub fn set(&self, serials: std::collections::BTreeSet<String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = serials;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn identities_are_parsed_strictly() {
        assert_eq!(Identity::from_uri("quill:node/3"), Ok(Identity::Node(3)));
        let alice = Identity::from_uri("quill:role/custodian/alice").expect("a custodian");
        assert_eq!(alice.uri(), "quill:role/custodian/alice");
        for bad in [
            "quill:role/node/node-1",
            "quill:role/king/alice",
            "quill:role/custodian/al ice",
            "quill:role/custodian",
            "quill:node/x",
            "quill:admin",
            "https://quill/role/admin/eve",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad} accepted");
        }
        assert!(PeerCert::from_der(b"not a certificate").is_err());
    }

    #[test]
    fn an_issued_identity_round_trips_and_a_key_edited_to_world_readable_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = PkiDir::init(&dir.path().join("pki")).expect("PKI");
        assert!(PkiDir::init(&dir.path().join("pki")).is_err(), "a second init overwrote the CAs");
        let out = dir.path().join("alice");
        let who = Identity::Client(Actor::parse("custodian:alice").expect("actor"));
        let issued = pki.issue(&who, &[], pki::Validity::default(), &out).expect("issue");
        let files = TlsFiles::in_dir(&out);
        assert_eq!(files.identity().expect("identity"), issued);
        assert_eq!(std::fs::metadata(&files.key).expect("key").permissions().mode() & 0o777, 0o600);
        client_config(&files).expect("a usable identity");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = client_config(&files).expect_err("a world-readable key was used");
        assert!(e.to_string().contains("readable by others"), "{e}");
    }
}

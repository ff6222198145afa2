//! Identities: `quill pki init|issue|list` (a small PKI for operators who do not bring their own:
//! a node CA and a client CA, `node_tls::pki`), and `quill identity revoke|list|whoami` (the
//! cluster's replicated list of revoked certificate serials, refused on every listener and in
//! apply).

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use quill_proto::v1::RevokeCertRequest;
use quill_trust::identity::{Actor, Tenants};
use quill_trust::tls::pki::Validity;
use quill_trust::tls::{Identity, PkiDir, TlsFiles};
use serde_json::json;

use crate::client::{Session, Who};
use crate::output::render_table;

/// Options of `quill pki init`.
#[derive(clap::Args, Debug)]
pub struct PkiInitArgs {
    /// The PKI directory (CA certificates and their keys, 0600).
    #[arg(long, value_name = "P")]
    dir: PathBuf,
}

/// What `quill pki issue` issues.
#[derive(clap::Args, Debug)]
pub struct PkiIssueArgs {
    /// The PKI directory.
    #[arg(long, value_name = "P")]
    dir: PathBuf,
    /// A node certificate for this node id (`quill:node/<id>`).
    #[arg(long, conflicts_with = "client")]
    node: Option<u64>,
    /// A client certificate for `role:name` (`quill:role/<role>/<name>`); one role per
    /// certificate.
    #[arg(long, value_name = "ROLE:NAME")]
    client: Option<String>,
    /// A node's addresses or DNS names (repeatable; `quill-node.internal` is always included).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// A tenant the client acts for (repeatable; `*` for every tenant). None: the default
    /// tenant only.
    #[arg(long = "tenant", value_name = "T", conflicts_with = "node")]
    tenants: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = quill_trust::tls::pki::LEAF_DAYS)]
    days: i64,
    /// Where to write `cert.pem`, `key.pem` (0600), `ca.pem` (and `client-ca.pem` for a node).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Options of `quill pki list`.
#[derive(clap::Args, Debug)]
pub struct PkiListArgs {
    /// The PKI directory.
    #[arg(long, value_name = "P")]
    dir: PathBuf,
}

/// Options of `quill pki transport-cert`.
#[derive(clap::Args, Debug)]
pub struct PkiTransportArgs {
    /// The PKI directory.
    #[arg(long, value_name = "P")]
    dir: PathBuf,
    /// The node whose HSM transport key to certify (read from the cluster's enrolment).
    #[arg(long)]
    node: u64,
    /// Its SHA-256 as the node's operator read it out (`quill cluster nodes`): certified only if
    /// the key read from the cluster has it.
    #[arg(long, value_name = "HEX")]
    fingerprint: String,
    /// Validity in days.
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Where to write the certificate (PEM).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    who: Who,
}

/// `quill pki transport-cert`: certify a node's HSM transport key with the node CA, for a key
/// site to send this cluster a KBPK by transport (`quill target transport` there).
pub fn pki_transport_cert(a: &PkiTransportArgs, json: bool) -> Result<u8> {
    use crate::exit_codes::CliError;
    if a.days < 1 {
        return Err(CliError::Usage("--days must be at least 1".into()).into());
    }
    let pki = PkiDir::open(&a.dir)?;
    let s = Session::new(&a.who)?;
    let node = s
        .nodes()?
        .into_iter()
        .find(|n| n.id == a.node)
        .ok_or_else(|| CliError::Usage(format!("no node {} is enrolled", a.node)))?;
    let key = crate::ops::keys::transport_key(&node)?;
    if !key.fingerprint().eq_ignore_ascii_case(a.fingerprint.trim()) {
        return Err(CliError::CheckFailed(format!(
            "node {}'s transport key has SHA-256 {}, not {}: not certified",
            a.node,
            key.fingerprint(),
            a.fingerprint
        ))
        .into());
    }
    let pem = pki.certify_transport_key(a.node, &key.to_spki_der(), Validity { from_days: 0, days: a.days })?;
    quill_trust::tls::pki::write_file(&a.out, pem.as_bytes(), 0o644)?;
    if json {
        println!("{}", json!({"node": a.node, "fingerprint": key.fingerprint(), "out": a.out, "days": a.days}));
    } else {
        println!(
            "node {}'s transport key (SHA-256 {}) certified by the node CA for {} days: {}",
            a.node,
            key.fingerprint(),
            a.days,
            a.out.display()
        );
    }
    Ok(crate::exit_codes::OK)
}

/// `quill pki init`.
pub fn pki_init(a: &PkiInitArgs, json: bool) -> Result<u8> {
    let pki = PkiDir::init(&a.dir)?;
    if json {
        println!(
            "{}",
            json!({"dir": pki.dir(), "node_ca": pki.ca_pem("node-ca"), "client_ca": pki.ca_pem("client-ca")})
        );
    } else {
        println!(
            "PKI created in {}: node-ca.pem (nodes), client-ca.pem (people and services); keys 0600",
            a.dir.display()
        );
    }
    Ok(crate::exit_codes::OK)
}

/// `quill pki issue`.
pub fn pki_issue(a: &PkiIssueArgs, json: bool) -> Result<u8> {
    let identity = match (&a.node, &a.client) {
        (Some(id), None) => Identity::Node(*id),
        (None, Some(c)) => Identity::Client(Actor::parse(c).map_err(crate::exit_codes::CliError::Usage)?),
        _ => {
            return Err(crate::exit_codes::CliError::Usage(
                "say what to issue: --node ID or --client ROLE:NAME".into(),
            )
            .into());
        }
    };
    if a.days < 1 {
        return Err(crate::exit_codes::CliError::Usage("--days must be at least 1".into()).into());
    }
    let tenants = Tenants::parse(a.tenants.iter().map(String::as_str))
        .map_err(|e| crate::exit_codes::CliError::Usage(format!("--tenant: {e}")))?;
    let pki = PkiDir::open(&a.dir)?;
    let validity = Validity { from_days: 0, days: a.days };
    let cert = if a.tenants.is_empty() {
        pki.issue(&identity, &a.hosts, validity, &a.out)?
    } else {
        pki.issue_for_tenants(&identity, &tenants, validity, &a.out)?
    };
    if json {
        println!(
            "{}",
            json!({"identity": identity.uri(), "tenants": cert.tenants, "serial": cert.serial, "key_fp": cert.key_fp, "not_after": cert.not_after, "dir": a.out})
        );
    } else {
        let acts = if matches!(identity, Identity::Client(_)) {
            format!(", acts for {}", cert.tenants)
        } else {
            String::new()
        };
        println!("{} issued: serial {}{acts}, in {}", identity.uri(), cert.serial, a.out.display());
    }
    Ok(crate::exit_codes::OK)
}

/// `quill pki list`.
pub fn pki_list(a: &PkiListArgs, json: bool) -> Result<u8> {
    let list = PkiDir::open(&a.dir)?.list()?;
    if json {
        println!("{}", serde_json::to_value(&list).context("encode")?);
    } else {
        let mut rows = vec![vec!["SERIAL".into(), "IDENTITY".into(), "NOT AFTER (unix)".into(), "DIR".into()]];
        rows.extend(
            list.iter().map(|r| {
                vec![r.serial.clone(), r.identity.clone(), r.not_after.to_string(), r.dir.display().to_string()]
            }),
        );
        print!("{}", render_table(&rows));
    }
    Ok(crate::exit_codes::OK)
}

/// Options of `quill identity revoke`.
#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    /// The certificate's serial (hex) ...
    #[arg(long, required_unless_present = "cert", conflicts_with = "cert")]
    serial: Option<String>,
    /// ... or the certificate file itself (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Why (recorded in the audit chain).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    who: Who,
}

/// Options of `quill identity list` and `whoami`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    who: Who,
}

/// `quill identity revoke` (admin).
pub fn revoke(a: &RevokeArgs, json: bool) -> Result<u8> {
    let serial = match (&a.serial, &a.cert) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => {
            let files = TlsFiles { cert: path.clone(), key: PathBuf::new(), ca: PathBuf::new() };
            files.identity()?.serial
        }
        (None, None) => return Err(anyhow!("--serial or --cert")),
    };
    let mut s = Session::new(&a.who)?;
    let detail = s.keys_write(|mut c, caller| {
        let req = RevokeCertRequest { caller: Some(caller), serial: serial.clone(), reason: a.reason.clone() };
        async move { c.revoke_cert(req).await }
    })?;
    if json {
        println!("{}", json!({"revoked": serial, "detail": detail}));
    } else {
        println!("{detail}");
    }
    Ok(crate::exit_codes::OK)
}

/// `quill identity list`: the revoked certificates.
pub fn list(a: &ListArgs, json: bool) -> Result<u8> {
    let s = Session::new(&a.who)?;
    let revoked = s.revoked()?;
    if json {
        println!("{}", json!({"revoked": revoked}));
    } else {
        let mut rows = vec![vec!["SERIAL".into(), "BY".into(), "REASON".into()]];
        for r in &revoked {
            rows.push(vec![r.serial.clone(), crate::output::actor(r.by.as_ref()), r.reason.clone()]);
        }
        print!("{}", render_table(&rows));
    }
    Ok(crate::exit_codes::OK)
}

/// `quill identity whoami`: the identity this command line would act as.
pub fn whoami(a: &ListArgs, json: bool) -> Result<u8> {
    let dir = a.who.target.identity_dir()?;
    let cert = TlsFiles::in_dir(&dir).identity()?;
    if json {
        println!(
            "{}",
            json!({"identity": cert.identity.uri(), "tenants": cert.tenants, "serial": cert.serial, "key_fp": cert.key_fp, "dir": dir})
        );
    } else {
        println!("{} acting for {} (serial {}, {})", cert.identity, cert.tenants, cert.serial, dir.display());
    }
    Ok(crate::exit_codes::OK)
}

//! A small PKI for operators who do not bring their own (and for dev clusters): two CAs (nodes,
//! clients) and the certificates they issue, in one directory.
//!
//! ```text
//! P/node-ca.pem   P/node-ca.key     issues node certificates (quill:node/<id>, DNS quill-node.internal)
//! P/client-ca.pem P/client-ca.key   issues client certificates (quill:role/<role>/<name>)
//! P/issued.jsonl                    one line per certificate issued (serial, identity, expiry)
//! ```
//! Private keys are written 0600 from the first byte (the mode is set when the file is created).
//! An identity directory (`quill --identity DIR`) holds `cert.pem`, `key.pem` and `ca.pem` (the node
//! CA, to know it reaches a node); a node's directory also holds `client-ca.pem`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Identity, NODE_NAME, PeerCert, TlsError, TlsFiles};
use crate::identity::Tenants;

/// The node CA's files in a PKI directory.
pub const NODE_CA: &str = "node-ca";
/// The client CA's files in a PKI directory.
pub const CLIENT_CA: &str = "client-ca";
/// Default validity of a CA, days.
pub const CA_DAYS: i64 = 3650;
/// Default validity of a node or client certificate, days.
pub const LEAF_DAYS: i64 = 365;

fn issue_err(e: impl ToString) -> TlsError {
    TlsError::Issue(e.to_string())
}

fn io_err(path: &Path, e: impl ToString) -> TlsError {
    TlsError::File { path: path.to_path_buf(), reason: e.to_string() }
}

/// Write `data` to `path` with `mode`, atomically (a temporary file renamed over it), the mode
/// set at creation.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// One line of `issued.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// Serial, hex.
    pub serial: String,
    /// The SAN URI.
    pub identity: String,
    /// Public key fingerprint.
    pub key_fp: String,
    /// The tenants it may act for (records written before tenants: the default tenant).
    #[serde(default)]
    pub tenants: Tenants,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
    /// Where the files were written.
    pub dir: PathBuf,
}

/// A PKI directory.
#[derive(Debug, Clone)]
pub struct PkiDir {
    dir: PathBuf,
}

fn ca_params(cn: &str, days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, "Quill");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
    p.serial_number = Some(random_serial());
    p
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    // A CSPRNG failure is not recoverable here; fall back to time so issuing still differs.
    if getrandom::fill(&mut b).is_err() {
        let t = OffsetDateTime::now_utc().unix_timestamp_nanos().to_be_bytes();
        b.copy_from_slice(&t);
    }
    b[0] = (b[0] & 0x7f) | 0x10; // positive, and no leading zero byte
    SerialNumber::from_slice(&b)
}

/// Validity of a leaf: from `from` (relative to now, may be negative) for `days`.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start, days relative to now.
    pub from_days: i64,
    /// Length in days.
    pub days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Validity { from_days: 0, days: LEAF_DAYS }
    }
}

impl PkiDir {
    /// Create a new PKI in `dir` (refused if one is there).
    pub fn init(dir: &Path) -> Result<Self, TlsError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let pki = PkiDir { dir: dir.to_path_buf() };
        for (name, cn) in [(NODE_CA, "Quill node CA"), (CLIENT_CA, "Quill client CA")] {
            let pem = pki.dir.join(format!("{name}.pem"));
            if pem.exists() {
                return Err(io_err(&pem, "a PKI already exists here; refusing to overwrite its CA"));
            }
            let key = KeyPair::generate().map_err(issue_err)?;
            let cert = ca_params(cn, CA_DAYS).self_signed(&key).map_err(issue_err)?;
            write_file(&pki.dir.join(format!("{name}.key")), key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&pem, cert.pem().as_bytes(), 0o644)?;
        }
        Ok(pki)
    }

    /// An existing PKI directory.
    pub fn open(dir: &Path) -> Result<Self, TlsError> {
        for name in [NODE_CA, CLIENT_CA] {
            let p = dir.join(format!("{name}.pem"));
            if !p.exists() {
                return Err(io_err(&p, "not found: not a PKI directory (quill pki init)"));
            }
        }
        Ok(PkiDir { dir: dir.to_path_buf() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A CA certificate's path.
    pub fn ca_pem(&self, which: &str) -> PathBuf {
        self.dir.join(format!("{which}.pem"))
    }

    fn issuer(&self, which: &str) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let pem_path = self.ca_pem(which);
        let key_path = self.dir.join(format!("{which}.key"));
        let pem = std::fs::read_to_string(&pem_path).map_err(|e| io_err(&pem_path, e))?;
        let key_pem = zeroize::Zeroizing::new(std::fs::read_to_string(&key_path).map_err(|e| io_err(&key_path, e))?);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| io_err(&key_path, e))?;
        Issuer::from_ca_cert_pem(&pem, key).map_err(|e| io_err(&pem_path, e))
    }

    /// Issue a certificate for `identity` into `out` (`cert.pem`, `key.pem`, `ca.pem`; for a
    /// node also `client-ca.pem`). `hosts`: extra IP addresses or DNS names of a node.
    pub fn issue(
        &self,
        identity: &Identity,
        hosts: &[String],
        validity: Validity,
        out: &Path,
    ) -> Result<PeerCert, TlsError> {
        self.issue_inner(identity, &Tenants::default(), hosts, validity, out, None)
    }

    /// Like [`Self::issue`] for a client acting for `tenants` (`quill:tenant/…` URIs).
    pub fn issue_for_tenants(
        &self,
        identity: &Identity,
        tenants: &Tenants,
        validity: Validity,
        out: &Path,
    ) -> Result<PeerCert, TlsError> {
        if matches!(identity, Identity::Node(_)) && *tenants != Tenants::default() {
            return Err(TlsError::Identity("a node certificate names no tenant".into()));
        }
        self.issue_inner(identity, tenants, &[], validity, out, None)
    }

    /// Like [`Self::issue`] for the key pair already in `key` (PEM): renewing a certificate
    /// without changing its key. The cluster treats certificates of one key as one person.
    pub fn issue_for_key(
        &self,
        identity: &Identity,
        key: &Path,
        validity: Validity,
        out: &Path,
    ) -> Result<PeerCert, TlsError> {
        let pem = zeroize::Zeroizing::new(std::fs::read_to_string(key).map_err(|e| io_err(key, e))?);
        let pair = KeyPair::from_pem(&pem).map_err(|e| io_err(key, e))?;
        self.issue_inner(identity, &Tenants::default(), &[], validity, out, Some(pair))
    }

    fn issue_inner(
        &self,
        identity: &Identity,
        tenants: &Tenants,
        hosts: &[String],
        validity: Validity,
        out: &Path,
        key: Option<KeyPair>,
    ) -> Result<PeerCert, TlsError> {
        let (which, is_node) = match identity {
            Identity::Node(_) => (NODE_CA, true),
            Identity::Client(_) => (CLIENT_CA, false),
        };
        let issuer = self.issuer(which)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "Quill");
        p.distinguished_name.push(DnType::CommonName, identity.uri());
        p.serial_number = Some(random_serial());
        let uri = identity.uri().try_into().map_err(issue_err)?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        for t in tenants.uris() {
            p.subject_alt_names.push(SanType::URI(t.try_into().map_err(issue_err)?));
        }
        if is_node {
            p.subject_alt_names.push(SanType::DnsName(NODE_NAME.try_into().map_err(issue_err)?));
            for h in hosts {
                match h.parse::<std::net::IpAddr>() {
                    Ok(ip) => p.subject_alt_names.push(SanType::IpAddress(ip)),
                    Err(_) => p.subject_alt_names.push(SanType::DnsName(h.clone().try_into().map_err(issue_err)?)),
                }
            }
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(validity.from_days) - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(validity.from_days + validity.days);
        let key = match key {
            Some(k) => k,
            None => KeyPair::generate().map_err(issue_err)?,
        };
        let cert = p.signed_by(&key, &issuer).map_err(issue_err)?;

        std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
        let files = TlsFiles::in_dir(out);
        write_file(&files.key, zeroize::Zeroizing::new(key.serialize_pem()).as_bytes(), 0o600)?;
        write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
        let node_ca = std::fs::read(self.ca_pem(NODE_CA)).map_err(|e| io_err(&self.ca_pem(NODE_CA), e))?;
        write_file(&files.ca, &node_ca, 0o644)?;
        if is_node {
            let client_ca = std::fs::read(self.ca_pem(CLIENT_CA)).map_err(|e| io_err(&self.ca_pem(CLIENT_CA), e))?;
            write_file(&out.join("client-ca.pem"), &client_ca, 0o644)?;
        }
        let issued = PeerCert::from_der(cert.der().as_ref()).map_err(TlsError::Identity)?;
        let rec = IssuedRecord {
            serial: issued.serial.clone(),
            identity: identity.uri(),
            key_fp: issued.key_fp.clone(),
            tenants: issued.tenants.clone(),
            not_after: issued.not_after,
            dir: out.to_path_buf(),
        };
        let line = serde_json::to_string(&rec).map_err(issue_err)? + "\n";
        let log = self.dir.join("issued.jsonl");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| io_err(&log, e))?;
        Ok(issued)
    }

    /// Certify node `node`'s HSM transport key (DER SubjectPublicKeyInfo `spki`) with the node CA,
    /// for TR-34-style key transport: key encipherment only, no extended key usage (it is no TLS
    /// identity; its private half never leaves the HSM and cannot sign), naming the node
    /// (`quill:node/<id>`). Returns the PEM certificate.
    pub fn certify_transport_key(&self, node: u64, spki: &[u8], validity: Validity) -> Result<String, TlsError> {
        let issuer = self.issuer(NODE_CA)?;
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| TlsError::Identity(format!("the transport key: {e}")))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "Quill");
        p.distinguished_name.push(DnType::CommonName, format!("quill:node/{node} HSM transport key"));
        p.serial_number = Some(random_serial());
        let uri = Identity::Node(node).uri().try_into().map_err(issue_err)?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(validity.from_days) - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(validity.from_days + validity.days);
        let cert = p.signed_by(&public, &issuer).map_err(issue_err)?;
        Ok(cert.pem())
    }

    /// Issue a certificate for `identity` into `out` unless one is there already. Issued into a
    /// private directory and renamed into place, so two processes issuing the same identity at
    /// once never mix one's certificate with the other's key.
    pub fn issue_once(&self, identity: &Identity, tenants: &Tenants, out: &Path) -> Result<(), TlsError> {
        if out.join("cert.pem").exists() {
            return Ok(());
        }
        let tmp = out.with_extension(format!("tmp-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&tmp);
        self.issue_for_tenants(identity, tenants, Validity::default(), &tmp)?;
        if std::fs::rename(&tmp, out).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            if !out.join("cert.pem").exists() {
                return Err(io_err(out, "cannot place the issued identity here"));
            }
        }
        Ok(())
    }

    /// Every certificate issued from this directory.
    pub fn list(&self) -> Result<Vec<IssuedRecord>, TlsError> {
        let log = self.dir.join("issued.jsonl");
        let text = match std::fs::read_to_string(&log) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&log, e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| io_err(&log, format!("line {}: {e}", i + 1))))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::identity::Actor;

    /// A leaf signed by the client CA with exactly the SAN URIs given (what an attacker holding
    /// a CA-signed certificate with odd names would present).
    fn forged(pki: &PkiDir, uris: &[&str]) -> Result<PeerCert, String> {
        let issuer = pki.issuer(CLIENT_CA).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        PeerCert::from_der(cert.der().as_ref())
    }

    #[test]
    fn tenants_travel_in_the_certificate_and_odd_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::init(&dir.path().join("pki")).unwrap();
        let who = Identity::Client(Actor::parse("operator:ann").unwrap());
        let t = Tenants::parse(["bank-a", "bank-b"]).unwrap();
        let issued = pki.issue_for_tenants(&who, &t, Validity::default(), &dir.path().join("ann")).unwrap();
        assert_eq!(issued.tenants, t);
        assert_eq!(TlsFiles::in_dir(&dir.path().join("ann")).identity().unwrap().tenants, t);
        assert_eq!(pki.list().unwrap()[0].tenants, t);
        let plain = pki.issue(&who, &[], Validity::default(), &dir.path().join("ann2")).unwrap();
        assert_eq!(plain.tenants, Tenants::default());
        let node = Identity::Node(1);
        assert!(pki.issue_for_tenants(&node, &t, Validity::default(), &dir.path().join("n1")).is_err());

        let all = forged(&pki, &["quill:role/operator/eve", "quill:tenant/bank-a", "quill:tenant/*"]).unwrap();
        assert_eq!(all.tenants, Tenants::All);
        for (uris, why) in [
            (&["quill:role/operator/eve", "quill:tenant/Bank A"][..], "tenant \"Bank A\""),
            (&["quill:role/operator/eve", "quill:tenant/"][..], "tenant \"\""),
            (&["quill:node/3", "quill:tenant/bank-a"][..], "a node certificate names no tenant"),
            (&["quill:tenant/bank-a"][..], "names no quill: URI"),
        ] {
            let e = forged(&pki, uris).expect_err("an odd certificate was accepted");
            assert!(e.contains(why), "{uris:?}: {e}");
        }
    }
}

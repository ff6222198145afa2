//! The keys a profile names, resolved: wrapped working keys by label and issuer key pairs with
//! their certificates. The engine checks every label and every key's algorithm once, when it is
//! built, so a card never fails half-way because of a missing or unfit key.

use std::collections::BTreeMap;

use quill_hsm::{Kcv, KeyAlg, WrappedKey, WrappedRsaKey};

use crate::emv::cert::{IssuerCertificate, RsaPublicKey};

/// An issuer key pair (private half wrapped under the SMK) and its verified certificate.
#[derive(Debug, Clone)]
pub struct IssuerKey {
    /// The key pair.
    pub key: WrappedRsaKey,
    /// The Issuer Public Key Certificate the CA made for its public half.
    pub certificate: IssuerCertificate,
}

impl IssuerKey {
    /// Pair a key with its certificate, refusing a certificate of another key.
    pub fn new(key: WrappedRsaKey, certificate: IssuerCertificate) -> Result<Self, String> {
        let cert_key = certificate.issuer_key();
        if strip(cert_key.modulus()) != strip(&key.public.modulus)
            || strip(cert_key.exponent()) != strip(&key.public.exponent)
        {
            return Err(format!(
                "the certificate (issuer id {}, serial {}) certifies another public key than the key pair's",
                certificate.issuer_id().digits(),
                hex::encode_upper(certificate.serial())
            ));
        }
        Ok(Self { key, certificate })
    }

    /// The public key as the certificate code wants it.
    pub fn public(&self) -> &RsaPublicKey {
        self.certificate.issuer_key()
    }
}

fn strip(v: &[u8]) -> &[u8] {
    let i = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    &v[i..]
}

/// Wrapped keys by label, as the key inventory holds them.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    symmetric: BTreeMap<String, WrappedKey>,
    issuers: BTreeMap<String, IssuerKey>,
}

impl KeySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a working key.
    pub fn insert(&mut self, label: impl Into<String>, key: WrappedKey) {
        self.symmetric.insert(label.into(), key);
    }

    /// Take a working key out of the set.
    pub fn remove(&mut self, label: &str) -> Option<WrappedKey> {
        self.symmetric.remove(label)
    }

    /// Add (or replace) an issuer key pair.
    pub fn insert_issuer(&mut self, label: impl Into<String>, key: IssuerKey) {
        self.issuers.insert(label.into(), key);
    }

    /// The working key with this label.
    pub fn get(&self, label: &str) -> Option<&WrappedKey> {
        self.symmetric.get(label)
    }

    /// The issuer key pair with this label.
    pub fn issuer(&self, label: &str) -> Option<&IssuerKey> {
        self.issuers.get(label)
    }

    /// Labels of the working keys.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.symmetric.keys().map(String::as_str)
    }
}

/// A key the output names as protecting a DGI or a stream: label and KCV, never the key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRef {
    /// Inventory label.
    pub label: String,
    /// Key check value (hex).
    pub kcv: String,
}

impl KeyRef {
    /// The reference for a wrapped key.
    pub fn of(label: &str, key: &WrappedKey) -> Self {
        Self { label: label.to_owned(), kcv: key.kcv.to_string() }
    }

    /// The reference from a label and a KCV.
    pub fn new(label: &str, kcv: &Kcv) -> Self {
        Self { label: label.to_owned(), kcv: kcv.to_string() }
    }
}

/// What a key is used for, and so which algorithms fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// TDES (an IMK, a purse master key, a PVK, a DEK, a TDES PIN key).
    Tdes,
    /// Double-length TDES (a CVK pair).
    Des2,
    /// AES (a format 4 PIN key).
    Aes,
}

impl Need {
    pub(crate) fn fits(self, alg: KeyAlg) -> bool {
        match self {
            Need::Tdes => alg.is_tdes(),
            Need::Des2 => alg == KeyAlg::Des2,
            Need::Aes => alg.is_aes(),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Need::Tdes => "a TDES (DES2/DES3) key",
            Need::Des2 => "a double-length TDES (DES2) key",
            Need::Aes => "an AES key",
        }
    }
}

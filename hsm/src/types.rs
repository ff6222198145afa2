//! The values the adapter hands out and takes back: algorithms, check values, public keys,
//! wrapped keys and sealed components. None of them holds a key in clear.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::path::PathBuf;

/// Algorithm (and length) of a symmetric key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyAlg {
    /// Double-length TDES (16 bytes, keying option 2).
    Des2,
    /// Triple-length TDES (24 bytes, keying option 1).
    Des3,
    /// AES-128.
    Aes128,
    /// AES-192.
    Aes192,
    /// AES-256.
    Aes256,
    /// A 32-byte generic secret for HMAC-SHA-256.
    HmacSha256,
}

impl KeyAlg {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            KeyAlg::Des2 | KeyAlg::Aes128 => 16,
            KeyAlg::Des3 | KeyAlg::Aes192 => 24,
            KeyAlg::Aes256 | KeyAlg::HmacSha256 => 32,
        }
    }

    /// TDES (DES2 or DES3).
    pub fn is_tdes(self) -> bool {
        matches!(self, KeyAlg::Des2 | KeyAlg::Des3)
    }

    /// AES of any length.
    pub fn is_aes(self) -> bool {
        matches!(self, KeyAlg::Aes128 | KeyAlg::Aes192 | KeyAlg::Aes256)
    }

    /// Length of this algorithm's KCV in bytes (see [`Kcv`]).
    pub fn kcv_len(self) -> usize {
        if self.is_aes() { 5 } else { 3 }
    }

    /// Short upper-case name, as in error messages and the key inventory.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::Des2 => "DES2",
            KeyAlg::Des3 => "DES3",
            KeyAlg::Aes128 => "AES128",
            KeyAlg::Aes192 => "AES192",
            KeyAlg::Aes256 => "AES256",
            KeyAlg::HmacSha256 => "HMAC_SHA256",
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Key check value, upper-case hex. Always computed inside the HSM:
///
/// - TDES: the first 3 bytes of 3DES-ECB(key, 0⁸) (ANSI X9.24-1, the classic KCV);
/// - AES: the first 5 bytes of AES-CMAC(key, 0¹⁶) (ANSI X9.24-1:2017, the "CMAC KCV"), not the
///   legacy AES-ECB(0¹⁶) value, which leaks one known-plaintext block;
/// - HMAC-SHA-256 keys: the first 3 bytes of HMAC-SHA-256(key, 0³²). There is no standard for
///   generic secrets; this follows the TDES convention (a MAC of zeros, truncated to 3 bytes) and
///   is what `quill` shows for audit keys.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Kcv(pub String);

impl Kcv {
    /// KCV from its bytes.
    pub fn from_bytes(b: &[u8]) -> Kcv {
        Kcv(hex::encode_upper(b))
    }

    /// Parse hex (any case, spaces allowed) into the canonical upper-case form; `None` when it is
    /// not 2–16 bytes of hex.
    pub fn parse(s: &str) -> Option<Kcv> {
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = hex::decode(&compact).ok()?;
        (2..=16).contains(&bytes.len()).then(|| Kcv::from_bytes(&bytes))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kcv({})", self.0)
    }
}

/// An RSA public key (big-endian unsigned integers, no leading zero bytes).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsaPublic {
    /// Modulus n.
    #[serde(with = "hex_bytes")]
    pub modulus: Vec<u8>,
    /// Public exponent e.
    #[serde(with = "hex_bytes")]
    pub exponent: Vec<u8>,
}

impl RsaPublic {
    /// A public key from big-endian integers (leading zero bytes are dropped).
    pub fn new(modulus: &[u8], exponent: &[u8]) -> RsaPublic {
        RsaPublic { modulus: strip_zeros(modulus).to_vec(), exponent: strip_zeros(exponent).to_vec() }
    }

    /// Modulus length in bits.
    pub fn bits(&self) -> usize {
        let m = strip_zeros(&self.modulus);
        match m.first() {
            None => 0,
            Some(b) => m.len() * 8 - b.leading_zeros() as usize,
        }
    }

    /// DER `SubjectPublicKeyInfo` (RFC 5280, rsaEncryption with NULL parameters): the same bytes
    /// as `openssl rsa -pubin -outform DER`.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let rsa_key = der_seq(&[der_uint(&self.modulus), der_uint(&self.exponent)].concat());
        // rsaEncryption 1.2.840.113549.1.1.1, NULL
        let alg =
            der_seq(&[&[0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01][..], &[0x05, 0x00]].concat());
        let mut bits = vec![0u8];
        bits.extend_from_slice(&rsa_key);
        der_seq(&[alg, der_tlv(0x03, &bits)].concat())
    }

    /// Fingerprint: upper-case hex SHA-256 of [`RsaPublic::to_spki_der`], i.e.
    /// `openssl rsa -pubin -outform DER | sha256sum`.
    pub fn fingerprint(&self) -> String {
        hex::encode_upper(Sha256::digest(self.to_spki_der()))
    }
}

impl fmt::Debug for RsaPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaPublic({} bits, {})", self.bits(), self.fingerprint())
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n..]
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        // n < 0x80 fits a byte.
        return vec![n as u8];
    }
    let be = n.to_be_bytes();
    let b = strip_zeros(&be);
    let mut v = vec![0x80 | b.len() as u8];
    v.extend_from_slice(b);
    v
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(der_len(content.len()));
    v.extend_from_slice(content);
    v
}

fn der_seq(content: &[u8]) -> Vec<u8> {
    der_tlv(0x30, content)
}

fn der_uint(b: &[u8]) -> Vec<u8> {
    let b = strip_zeros(b);
    let mut c = Vec::with_capacity(b.len() + 1);
    if b.first().is_none_or(|&x| x & 0x80 != 0) {
        c.push(0);
    }
    c.extend_from_slice(b);
    der_tlv(0x02, &c)
}

/// A symmetric key wrapped under the storage master key (SMK) with AES key wrap with padding
/// (RFC 5649, `CKM_AES_KEY_WRAP_PAD`), with its KCV and the KCV of the SMK it is wrapped under.
/// This is what the key inventory stores; it is useless without an HSM holding that SMK.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Algorithm of the wrapped key.
    pub alg: KeyAlg,
    /// RFC 5649 ciphertext of the key value under the SMK.
    #[serde(with = "hex_bytes")]
    pub blob: Vec<u8>,
    /// KCV of the wrapped key.
    pub kcv: Kcv,
    /// KCV of the SMK that wraps it.
    pub smk_kcv: Kcv,
}

impl WrappedKey {
    /// SHA-256 of the blob: the key of the per-session handle cache.
    pub(crate) fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.blob).into()
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} KCV {} under SMK {}, {} bytes)", self.alg, self.kcv, self.smk_kcv, self.blob.len())
    }
}

/// One clear key component, encrypted with RSA-OAEP (SHA-1, MGF1-SHA-1, no label) to a node's
/// transport public key. SHA-1 because SoftHSM 2.6 has no OAEP with SHA-256; OAEP's security
/// does not rest on SHA-1's collision resistance.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedComponent(#[serde(with = "hex_bytes")] pub Vec<u8>);

impl fmt::Debug for SealedComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedComponent({} bytes)", self.0.len())
    }
}

/// How a module provides a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Support {
    /// Inside the HSM (a vendor mechanism or a composition of standard ones).
    Native,
    /// Only by bringing key material into host memory; allowed per module by configuration.
    HostPath,
    /// Not at all.
    Missing,
}

/// One function and how this module provides it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Function name (`key-components-xor`, `emv-mk-derivation`, …).
    pub name: String,
    /// How.
    pub support: Support,
    /// The mechanism(s) used, by name.
    pub via: String,
}

/// Description of one slot of one module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Library manufacturer, description and version (`C_GetInfo`).
    pub library: String,
    /// Slot id.
    pub slot: u64,
    /// Token label.
    pub token_label: String,
    /// Token manufacturer, model and serial number.
    pub token: String,
    /// Whether the configuration allows key material in host memory for this module.
    pub host_path_allowed: bool,
    /// The functions the adapter needs and how this module provides each.
    pub capabilities: Vec<Capability>,
    /// Vendor-defined mechanisms the slot lists (name, or hex value when unknown).
    pub vendor_mechanisms: Vec<String>,
}

/// What [`crate::Hsm::describe`] returns: one entry per slot behind the handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HsmInfo {
    /// The slots.
    pub slots: Vec<SlotInfo>,
}

/// Serde for byte strings as hex text (readable in TOML/JSON, compact enough in postcard).
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode_upper(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kcv_parse_normalises() {
        assert_eq!(Kcv::parse("ab cd ef").unwrap(), Kcv("ABCDEF".into()));
        assert!(Kcv::parse("zz").is_none());
        assert!(Kcv::parse("ab").is_none());
    }

    #[test]
    fn spki_der_small_key() {
        // n = 0x00C1 (leading zero stripped, high bit set -> 0x00 pad), e = 3.
        let k = RsaPublic::new(&[0x00, 0xC1], &[0x03]);
        assert_eq!(k.bits(), 8);
        assert_eq!(
            hex::encode_upper(k.to_spki_der()),
            "301B300D06092A864886F70D0101010500030A0030070202 00C1020103".replace(' ', "")
        );
    }

    #[test]
    fn wrapped_key_round_trips_through_serde() {
        let w = WrappedKey {
            alg: KeyAlg::Des2,
            blob: vec![1, 2, 3],
            kcv: Kcv("ABCDEF".into()),
            smk_kcv: Kcv("0123456789".into()),
        };
        let t = toml::to_string(&w).unwrap();
        assert!(t.contains("alg = \"DES2\""), "{t}");
        assert!(t.contains("blob = \"010203\""), "{t}");
        assert_eq!(toml::from_str::<WrappedKey>(&t).unwrap(), w);
    }
}

//! The values the adapter hands out and takes back: algorithms, check values, public keys,
//! wrapped keys and sealed components. None of them holds a key in clear.
//!
//! A few software helpers for the operators' tools live here too ([`Kcv::of_clear`],
//! [`RsaPublic::seal`]): they run where a custodian types a clear component anyway, never in a
//! node.

use openssl::bn::BigNum;
use openssl::rsa::{Padding, Rsa};
use quill_crypto::digest::{self, HashAlg};
use quill_crypto::sym;
use quill_crypto::tr31::{self, KeyUsage, Tr31Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use zeroize::Zeroizing;

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
    /// Every algorithm.
    pub const ALL: [KeyAlg; 6] =
        [KeyAlg::Des2, KeyAlg::Des3, KeyAlg::Aes128, KeyAlg::Aes192, KeyAlg::Aes256, KeyAlg::HmacSha256];

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

/// Parses `des2`, `des3`, `aes128`, `aes192`, `aes256`, `hmac-sha256`, in any case, and the
/// [`KeyAlg::name`] forms (`HMAC_SHA256`).
impl FromStr for KeyAlg {
    type Err = String;

    fn from_str(s: &str) -> Result<KeyAlg, String> {
        let wanted = s.trim().replace('-', "_");
        KeyAlg::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(&wanted)).ok_or_else(|| {
            format!(
                "unknown key algorithm {s:?}; accepted (any case): des2, des3, aes128, aes192, aes256, hmac-sha256 (or hmac_sha256)"
            )
        })
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

    /// Whether this is a KCV as the adapter writes them: 2 to 16 bytes of upper-case hex (no
    /// spaces). [`Kcv::parse`] turns typed input into this form.
    pub fn is_well_formed(&self) -> bool {
        let b = self.0.as_bytes();
        b.len().is_multiple_of(2)
            && (4..=32).contains(&b.len())
            && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F'))
    }

    /// The KCV of a clear key, computed in software with the algorithms the HSM uses (see
    /// [`Kcv`]): for the operators' tools, where a custodian types the clear component anyway.
    /// A node never has a clear key; it asks the HSM ([`crate::Hsm::kcv`]).
    pub fn of_clear(alg: KeyAlg, key: &[u8]) -> Result<Kcv, String> {
        if key.len() != alg.key_len() {
            return Err(format!("{alg} keys have {} bytes, not {}", alg.key_len(), key.len()));
        }
        let n = alg.kcv_len();
        let full: Zeroizing<Vec<u8>> = Zeroizing::new(match alg {
            KeyAlg::Des2 | KeyAlg::Des3 => sym::kcv_des(key).map_err(|e| format!("{alg} KCV: {e}"))?.to_vec(),
            KeyAlg::Aes128 | KeyAlg::Aes192 | KeyAlg::Aes256 => {
                sym::kcv_aes_cmac(key).map_err(|e| format!("{alg} KCV: {e}"))?.to_vec()
            }
            KeyAlg::HmacSha256 => digest::hmac(HashAlg::Sha256, key, &[0u8; 32]),
        });
        match full.get(..n) {
            Some(kcv) => Ok(Kcv::from_bytes(kcv)),
            None => Err(format!("{alg} KCV: {} bytes computed, {n} needed", full.len())),
        }
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

    /// RSA-OAEP encryption of `data` to this key in software (OpenSSL): SHA-1, MGF1 with SHA-1,
    /// no label, exactly what [`crate::Hsm::form_smk`] and [`crate::Hsm::import_components`] unwrap
    /// (wrap the result in a [`SealedComponent`]). For the operators' tools, which seal a typed
    /// component to a node's transport key. Keys under 2048 bits are refused, as by
    /// [`crate::Hsm::wrap_smk_for`].
    pub fn seal(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        if self.bits() < 2048 {
            return Err(format!("the RSA key has {} bits; at least 2048 needed", self.bits()));
        }
        let err = |e: openssl::error::ErrorStack| format!("RSA-OAEP: {e}");
        let rsa = Rsa::from_public_components(
            BigNum::from_slice(&self.modulus).map_err(err)?,
            BigNum::from_slice(&self.exponent).map_err(err)?,
        )
        .map_err(err)?;
        let mut out = vec![0u8; usize::try_from(rsa.size()).map_err(|_| "RSA-OAEP: key size".to_owned())?];
        let n = rsa.public_encrypt(data, &mut out, Padding::PKCS1_OAEP).map_err(err)?;
        out.truncate(n);
        Ok(out)
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

/// What a key is for, as the key block that holds it at rest binds it: its TR-31 key usage
/// (ANSI X9.143 table 6: `E0` for an IMK-AC, `C0` for a CVK, `D0` for a data key …) and whether it
/// may ever leave the cluster in a TR-31 export, and the tenant it belongs to. The mode of use
/// follows from the usage ([`crate::tr31_mode_of_use`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    /// TR-31 key usage.
    pub usage: KeyUsage,
    /// Exportable (`E`) or not (`N`).
    pub exportable: bool,
    /// The tenant the key belongs to, bound in the block's authenticated header (proprietary
    /// optional block `0T`, [`WrappedKey::owner`]); `None` for the bureau's own keys (the audit
    /// keys) and keys that never enter the inventory.
    pub owner: Option<String>,
}

impl KeyUse {
    /// A use.
    pub fn new(usage: KeyUsage, exportable: bool) -> Self {
        Self { usage, exportable, owner: None }
    }

    /// The same use, for a key of `tenant`.
    pub fn owned_by(mut self, tenant: &str) -> Self {
        self.owner = Some(tenant.to_owned());
        self
    }

    /// A use from a two-character usage code (`"E0"`).
    pub fn from_code(code: &str, exportable: bool) -> Result<Self, String> {
        let c: [u8; 2] = code
            .as_bytes()
            .try_into()
            .map_err(|_| format!("TR-31 key usage {code:?} must be two characters (for example \"E0\")"))?;
        let usage = KeyUsage::from_code(c).ok_or_else(|| format!("{code:?} is not a TR-31 key usage"))?;
        Ok(Self { usage, exportable, owner: None })
    }

    /// The usage code (`"E0"`).
    pub fn code(&self) -> String {
        String::from_utf8_lossy(&self.usage.code()).into_owned()
    }
}

/// A symmetric key at rest: a TR-31 key block, version D (ANSI X9.143 AES key block), under a
/// key-block protection key that every HSM derives from the storage master key (SMK) inside
/// itself, with its KCV and the KCV of that SMK. The block's authenticated header binds the key's
/// algorithm, usage, mode of use, exportability and version, with key context `1` (storage
/// only) and the KCV in a `KC` block; the HSM adapter opens a block only for an operation its
/// header allows (hsm-sim checks the MAC and the mode of use inside the module, with
/// `CKM_QUILL_TR31_UNWRAP`). This is what the key inventory stores; it is useless without an HSM
/// holding that SMK, and editing its header breaks its MAC.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Algorithm of the wrapped key.
    pub alg: KeyAlg,
    /// The key block (ASCII).
    #[serde(with = "hex_bytes")]
    pub blob: Vec<u8>,
    /// KCV of the wrapped key.
    pub kcv: Kcv,
    /// KCV of the SMK whose key-block protection key protects it.
    pub smk_kcv: Kcv,
}

/// A key at rest, a block whose header may bind it to a tenant ([`WrappedKey`],
/// [`WrappedRsaKey`]): for code that checks either kind alike.
pub trait AtRest {
    /// The tenant the block's header binds the key to (its `0T` block), if any.
    fn owner(&self) -> Option<String>;
}

/// Inherent `header`, `header_text` and `owner` of a key-at-rest type whose block is `blob`.
macro_rules! at_rest_block {
    ($t:ty) => {
        impl $t {
            /// The key block's header, as written (authenticated only when the block is opened in
            /// an HSM: read it to decide, never to trust).
            pub fn header(&self) -> Result<Tr31Header, String> {
                tr31::parse_key_block_header(&self.blob).map_err(|e| format!("the key block at rest: {e}"))
            }

            /// The block's header as written (`D0144E0TB00E0200KC...`): no key material, what an
            /// auditor reads.
            pub fn header_text(&self) -> Option<String> {
                tr31::key_block_header_text(&self.blob).ok().map(str::to_string)
            }

            /// The tenant the block's header binds the key to (its `0T` block), if any. As
            /// written: the HSM checks the header's MAC when it opens the block, so a record whose
            /// block was given another tenant opens for nothing.
            pub fn owner(&self) -> Option<String> {
                self.header().ok().as_ref().and_then(crate::keyblock::at_rest_owner)
            }
        }

        impl AtRest for $t {
            fn owner(&self) -> Option<String> {
                <$t>::owner(self)
            }
        }
    };
}

at_rest_block!(WrappedKey);
at_rest_block!(WrappedRsaKey);

impl WrappedRsaKey {
    /// SHA-256 of the blob and the public key: the key of the per-session handle cache (a block
    /// opened for one public key is never served for another).
    pub(crate) fn digest(&self) -> [u8; 32] {
        let mut d = Sha256::new();
        for part in [&self.blob, &self.public.modulus, &self.public.exponent] {
            d.update((part.len() as u64).to_be_bytes());
            d.update(part);
        }
        d.finalize().into()
    }
}

impl WrappedKey {
    /// SHA-256 of the blob: the key of the per-session handle cache.
    pub(crate) fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.blob).into()
    }

    /// The TR-31 usage the block's header names.
    pub fn usage(&self) -> Option<KeyUsage> {
        self.header().ok().map(|h| h.key_usage)
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} KCV {} under SMK {}, {} bytes)", self.alg, self.kcv, self.smk_kcv, self.blob.len())
    }
}

/// An RSA private key (an issuer key) at rest, and its public half: a TR-31 key block, version D,
/// under the same at-rest KBPK as [`WrappedKey`] (derived from the SMK inside the HSM), whose key
/// data is the DER PKCS#8 `PrivateKeyInfo` (ANSI X9.143 for asymmetric keys). Its authenticated
/// header says algorithm `R`, usage `S0` (digital signature), mode of use `S` (sign only),
/// exportability `N`, key context `1` (storage), the public key's fingerprint (proprietary block
/// `0P`) and the tenant (`0T`). Only an HSM holding the same SMK opens it
/// ([`crate::Hsm::rsa_sign_raw`]), and only to sign.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedRsaKey {
    /// The public key.
    pub public: RsaPublic,
    /// The key block (ASCII).
    #[serde(with = "hex_bytes")]
    pub blob: Vec<u8>,
    /// KCV of the SMK that wraps it.
    pub smk_kcv: Kcv,
}

impl fmt::Debug for WrappedRsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WrappedRsaKey(RSA-{} {} under SMK {}, {} bytes)",
            self.public.bits(),
            &self.public.fingerprint()[..16],
            self.smk_kcv,
            self.blob.len()
        )
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
    fn key_alg_from_str() {
        for a in KeyAlg::ALL {
            assert_eq!(a.name().parse::<KeyAlg>().unwrap(), a);
            assert_eq!(a.name().to_ascii_lowercase().parse::<KeyAlg>().unwrap(), a);
        }
        assert_eq!("hmac-sha256".parse::<KeyAlg>().unwrap(), KeyAlg::HmacSha256);
        assert_eq!("HMAC-SHA256".parse::<KeyAlg>().unwrap(), KeyAlg::HmacSha256);
        assert_eq!(" Aes128 ".parse::<KeyAlg>().unwrap(), KeyAlg::Aes128);
        let e = "aes512".parse::<KeyAlg>().unwrap_err();
        assert!(e.contains("\"aes512\"") && e.contains("des2, des3, aes128, aes192, aes256, hmac-sha256"), "{e}");
        assert!("".parse::<KeyAlg>().is_err());
    }

    #[test]
    fn kcv_of_clear_known_answers() {
        // The classic X9.24 test key.
        let des2 = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
        assert_eq!(Kcv::of_clear(KeyAlg::Des2, &des2).unwrap().as_str(), "08D7B4");
        let des3 = [&des2[..], &des2[..8]].concat();
        assert_eq!(Kcv::of_clear(KeyAlg::Des3, &des3).unwrap().as_str(), "08D7B4", "K1 K2 K1 is DES2");
        // AES-CMAC and HMAC-SHA-256 of zeros, against OpenSSL.
        for alg in [KeyAlg::Aes128, KeyAlg::Aes192, KeyAlg::Aes256] {
            let key: Vec<u8> = (0..alg.key_len() as u8).collect();
            let cipher = match alg.key_len() {
                16 => openssl::symm::Cipher::aes_128_cbc(),
                24 => openssl::symm::Cipher::aes_192_cbc(),
                _ => openssl::symm::Cipher::aes_256_cbc(),
            };
            let pkey = openssl::pkey::PKey::cmac(&cipher, &key).unwrap();
            let mut s = openssl::sign::Signer::new_without_digest(&pkey).unwrap();
            s.update(&[0u8; 16]).unwrap();
            let want = Kcv::from_bytes(&s.sign_to_vec().unwrap()[..5]);
            assert_eq!(Kcv::of_clear(alg, &key).unwrap(), want, "{alg}");
        }
        let key = [0x5Au8; 32];
        let pkey = openssl::pkey::PKey::hmac(&key).unwrap();
        let mut s = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).unwrap();
        s.update(&[0u8; 32]).unwrap();
        let want = Kcv::from_bytes(&s.sign_to_vec().unwrap()[..3]);
        assert_eq!(Kcv::of_clear(KeyAlg::HmacSha256, &key).unwrap(), want);
        // Lengths are checked against the algorithm.
        let e = Kcv::of_clear(KeyAlg::Aes256, &[0u8; 16]).unwrap_err();
        assert_eq!(e, "AES256 keys have 32 bytes, not 16");
        assert!(Kcv::of_clear(KeyAlg::Des3, &des2).is_err());
    }

    #[test]
    fn kcv_well_formed() {
        for ok in ["08D7B4", "0123456789", "ABCD", &"AB".repeat(16)] {
            assert!(Kcv(ok.to_owned()).is_well_formed(), "{ok}");
        }
        for bad in ["", "AB", "08d7b4", "08D7B", "08 D7 B4", "GG0000", &"AB".repeat(17)] {
            assert!(!Kcv(bad.to_owned()).is_well_formed(), "{bad}");
        }
        assert!(Kcv::parse("08 d7 b4").unwrap().is_well_formed());
    }

    #[test]
    fn rsa_seal_is_oaep_sha1() {
        let private = Rsa::generate(2048).unwrap();
        let pk = RsaPublic::new(&private.n().to_vec(), &private.e().to_vec());
        let sealed = pk.seal(b"component").unwrap();
        assert_eq!(sealed.len(), 256);
        let mut out = vec![0u8; 256];
        let n = private.private_decrypt(&sealed, &mut out, Padding::PKCS1_OAEP).unwrap();
        assert_eq!(&out[..n], b"component");
        assert_ne!(pk.seal(b"component").unwrap(), sealed, "randomised");
        let weak = Rsa::generate(1024).unwrap();
        let e = RsaPublic::new(&weak.n().to_vec(), &weak.e().to_vec()).seal(b"x").unwrap_err();
        assert!(e.contains("1024 bits"), "{e}");
        assert!(pk.seal(&[0u8; 300]).is_err(), "too long for OAEP");
    }

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

//! EMV Book 2 offline data authentication: certificates and signed static data.
//!
//! Layouts follow `shared/reference/emv.md` §1 (EMV 4.3 Book 2, RSA, SHA-1):
//!
//! * Issuer Public Key Certificate (`90`, format `02`), signed by a scheme CA: recovered with a
//!   [`CaPublicKey`] and checked into an [`IssuerCertificate`]. Scheme files (Visa-style and
//!   Mastercard-style, §1.8) are imported with [`import_issuer_file`]; a test CA can also build one
//!   ([`build_issuer_certificate`]).
//! * ICC Public Key Certificate (`9F46`, format `04`, with `9F47`/`9F48`), signed by the issuer
//!   key: [`build_icc_certificate`] / [`recover_icc_certificate`].
//! * Signed Static Application Data (`93`, format `03`): [`build_signed_static_data`] /
//!   [`recover_signed_static_data`].
//!
//! Signing is a raw RSA private operation on a formatted block, done by the caller's
//! [`RawRsaSigner`] (the HSM in the node); recovery is the raw public operation, done here. Every
//! builder recovers what it signed with the public key the caller says belongs to the signer, so a
//! signer holding the wrong key is caught before anything is written to a card.
//!
//! The static data to be authenticated (the ODA records the AFL selects, plus the AIP when `9F4A`
//! asks for it, §1.7) is assembled by the caller and passed in as bytes.

use std::collections::BTreeMap;
use std::fmt;

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use sha1::{Digest, Sha1};

/// Registered Application Provider Identifier: the first 5 bytes of an AID, naming the scheme.
pub type Rid = [u8; 5];
/// Visa's RID.
pub const RID_VISA: Rid = [0xA0, 0x00, 0x00, 0x00, 0x03];
/// Mastercard's RID.
pub const RID_MASTERCARD: Rid = [0xA0, 0x00, 0x00, 0x00, 0x04];
/// UnionPay's RID.
pub const RID_UNIONPAY: Rid = [0xA0, 0x00, 0x00, 0x03, 0x33];

/// Recovered Data Header.
const HEADER: u8 = 0x6A;
/// Recovered Data Trailer.
const TRAILER: u8 = 0xBC;
/// Padding byte for short moduli and the SDA pad pattern.
const PAD: u8 = 0xBB;
/// Certificate Format of an Issuer Public Key Certificate.
pub const FORMAT_ISSUER: u8 = 0x02;
/// Signed Data Format of Signed Static Application Data.
pub const FORMAT_SDA: u8 = 0x03;
/// Certificate Format of an ICC Public Key Certificate.
pub const FORMAT_ICC: u8 = 0x04;
/// Hash Algorithm Indicator: SHA-1.
const HASH_SHA1: u8 = 0x01;
/// Public Key Algorithm Indicator: RSA.
const PK_RSA: u8 = 0x01;
const SHA1_LEN: usize = 20;
/// Largest RSA modulus EMV (RSA, up to 4.3) allows: 1984 bits.
pub const MAX_MODULUS_LEN: usize = 248;
/// Smallest modulus accepted here (512 bits); real keys are 1024 bits and up.
pub const MIN_MODULUS_LEN: usize = 64;
/// SHA-1 DigestInfo prefix of a PKCS#1 v1.5 signature (RFC 8017 §9.2 note 1).
const SHA1_DIGEST_INFO: [u8; 15] =
    [0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2B, 0x0E, 0x03, 0x02, 0x1A, 0x05, 0x00, 0x04, 0x14];

/// Bytes before the key field of a public-key certificate whose subject identifier is `id_len`
/// bytes: header, format, identifier, expiry (2), serial (3), hash alg, PK alg, PK length, exp length.
const fn pk_cert_head_len(id_len: usize) -> usize {
    2 + id_len + 2 + 3 + 4
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A public key (CA, issuer or ICC) that cannot be used for EMV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{key}: modulus is {len} bytes; EMV allows {MIN_MODULUS_LEN}..={MAX_MODULUS_LEN}")]
    ModulusLength { key: &'static str, len: usize },
    #[error("{key}: modulus is not a whole number of bytes (top bit clear) or is even")]
    ModulusShape { key: &'static str },
    #[error("{key}: exponent {exponent} is not one EMV allows (03 or 010001)")]
    Exponent { key: &'static str, exponent: String },
    #[error("CA key {rid}/{index:02X}: check value is {computed}, expected {expected}")]
    CaChecksum { rid: String, index: u8, computed: String, expected: String },
    #[error("{key}: {reason}")]
    Encoding { key: &'static str, reason: &'static str },
    #[error("CA key {rid}/{index:02X} is already held with a different modulus or exponent")]
    CaConflict { rid: String, index: u8 },
}

/// Certificate or certificate-file content that does not verify: the data's fault, not the
/// caller's. Every variant names the data element (tag or file field) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("{field}: {len} bytes, expected {expected} (the length of the key that signed it)")]
    Length { field: &'static str, len: usize, expected: usize },
    #[error("{field}: value is not less than the signer's modulus, so it cannot be a signature")]
    NotBelowModulus { field: &'static str },
    #[error("{field}: recovered data header is {found:02X}, expected 6A (wrong key or not a certificate)")]
    Header { field: &'static str, found: u8 },
    #[error("{field}: recovered data trailer is {found:02X}, expected BC")]
    Trailer { field: &'static str, found: u8 },
    #[error("{field}: format is {found:02X}, expected {expected:02X}")]
    Format { field: &'static str, found: u8, expected: u8 },
    #[error("{field}: hash algorithm indicator {found:02X} is not 01 (SHA-1)")]
    HashAlgorithm { field: &'static str, found: u8 },
    #[error("{field}: public key algorithm indicator {found:02X} is not 01 (RSA)")]
    PkAlgorithm { field: &'static str, found: u8 },
    #[error("{field}: hash does not match the recovered data (wrong remainder, exponent or static data?)")]
    Hash { field: &'static str },
    #[error("{field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("{field}: certified key: {source}")]
    Key { field: &'static str, source: KeyError },
    #[error("no CA public key {rid}/{index:02X} is held: import it before importing certificates it signed")]
    UnknownCaKey { rid: String, index: u8 },
    #[error("issuer file ({layout}): {field}: {reason}")]
    File { layout: IssuerFileLayout, field: &'static str, reason: String },
    #[error("issuer file ({layout}): {field} is {file} in the file but {cert} in the certificate")]
    FileMismatch { layout: IssuerFileLayout, field: &'static str, file: String, cert: String },
}

/// Building a certificate or signed data failed: the caller's inputs or the signer.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{field}: {reason}")]
    Input { field: &'static str, reason: String },
    #[error("{field}: certified key: {source}")]
    Key { field: &'static str, source: KeyError },
    #[error("{field}: the signer's modulus is {signer} bytes but its public key is {public} bytes")]
    SignerLength { field: &'static str, signer: usize, public: usize },
    #[error("{field}: signer failed")]
    Signer {
        field: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{field}: signer returned {len} bytes, expected {expected}")]
    SignatureLength { field: &'static str, len: usize, expected: usize },
    /// The signature does not recover with the public key given for the signer: the signer holds
    /// a different key (wrong label?) or the module computed a faulty signature.
    #[error("{field}: signature does not verify with the signer's public key: {source}")]
    SelfCheck {
        field: &'static str,
        #[source]
        source: CertError,
    },
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// An RSA public key as EMV uses it: modulus of 64..=248 bytes with its top bit set, exponent 3 or
/// 65537. Both are stored big-endian without leading zeros.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    modulus: Vec<u8>,
    exponent: Vec<u8>,
}

impl fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RsaPublicKey({} bits, e={}, n={}..)",
            self.modulus.len() * 8,
            hex::encode_upper(&self.exponent),
            hex::encode_upper(&self.modulus[..8])
        )
    }
}

fn strip_zeros(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    &v[start..]
}

impl RsaPublicKey {
    /// A key from its big-endian modulus and exponent (leading zero bytes are ignored).
    pub fn new(modulus: &[u8], exponent: &[u8]) -> Result<Self, KeyError> {
        Self::named("public key", modulus, exponent)
    }

    fn named(key: &'static str, modulus: &[u8], exponent: &[u8]) -> Result<Self, KeyError> {
        let modulus = strip_zeros(modulus);
        let exponent = strip_zeros(exponent);
        if !(MIN_MODULUS_LEN..=MAX_MODULUS_LEN).contains(&modulus.len()) {
            return Err(KeyError::ModulusLength { key, len: modulus.len() });
        }
        if modulus[0] & 0x80 == 0 || modulus[modulus.len() - 1] & 1 == 0 {
            return Err(KeyError::ModulusShape { key });
        }
        if exponent != [3] && exponent != [1, 0, 1] {
            return Err(KeyError::Exponent { key, exponent: hex::encode_upper(exponent) });
        }
        Ok(Self { modulus: modulus.to_vec(), exponent: exponent.to_vec() })
    }

    /// The modulus, big-endian, `len()` bytes.
    pub fn modulus(&self) -> &[u8] {
        &self.modulus
    }

    /// The exponent as EMV encodes it (`9F32`/`9F47`): `03` or `01 00 01`.
    pub fn exponent(&self) -> &[u8] {
        &self.exponent
    }

    /// Modulus length in bytes (N_CA, N_I or N_IC).
    #[allow(clippy::len_without_is_empty, reason = "a key is never empty")]
    pub fn len(&self) -> usize {
        self.modulus.len()
    }

    /// The raw RSA public operation `input^e mod n`, as `len()` bytes. `field` names the data
    /// element being recovered, for the error.
    pub fn recover(&self, field: &'static str, input: &[u8]) -> Result<Vec<u8>, CertError> {
        let n_len = self.modulus.len();
        if input.len() != n_len {
            return Err(CertError::Length { field, len: input.len(), expected: n_len });
        }
        let n = BoxedUint::from_be_slice_vartime(&self.modulus);
        let precision = n.bits_precision();
        let Ok(x) = BoxedUint::from_be_slice(input, precision) else {
            return Err(CertError::NotBelowModulus { field });
        };
        if x >= n {
            return Err(CertError::NotBelowModulus { field });
        }
        // The constructor checked the modulus is odd.
        let Some(n) = Odd::new(n).into_option() else {
            return Err(CertError::NotBelowModulus { field });
        };
        let params = BoxedMontyParams::new_vartime(n);
        let e = BoxedUint::from_be_slice_vartime(&self.exponent);
        let y = BoxedMontyForm::new(x, &params).pow(&e).retrieve();
        let bytes = y.to_be_bytes();
        Ok(bytes[bytes.len() - n_len..].to_vec())
    }
}

/// A scheme Certification Authority public key, identified by RID and CA Public Key Index (`8F`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CaPublicKey {
    rid: Rid,
    index: u8,
    key: RsaPublicKey,
}

impl CaPublicKey {
    /// A CA key without a check value (e.g. from a trusted configuration).
    pub fn new(rid: Rid, index: u8, modulus: &[u8], exponent: &[u8]) -> Result<Self, KeyError> {
        Ok(Self { rid, index, key: RsaPublicKey::named("CA public key", modulus, exponent)? })
    }

    /// A CA key as schemes publish it, with its check value SHA-1(RID ‖ index ‖ modulus ‖
    /// exponent), which must match.
    pub fn with_checksum(
        rid: Rid,
        index: u8,
        modulus: &[u8],
        exponent: &[u8],
        checksum: &[u8; 20],
    ) -> Result<Self, KeyError> {
        let key = Self::new(rid, index, modulus, exponent)?;
        let computed = key.checksum();
        if &computed != checksum {
            return Err(KeyError::CaChecksum {
                rid: hex::encode_upper(rid),
                index,
                computed: hex::encode_upper(computed),
                expected: hex::encode_upper(checksum),
            });
        }
        Ok(key)
    }

    /// SHA-1(RID ‖ index ‖ modulus ‖ exponent), the check value terminals and schemes publish.
    pub fn checksum(&self) -> [u8; 20] {
        let mut h = Sha1::new();
        h.update(self.rid);
        h.update([self.index]);
        h.update(&self.key.modulus);
        h.update(&self.key.exponent);
        h.finalize().into()
    }

    pub fn rid(&self) -> Rid {
        self.rid
    }

    /// CA Public Key Index (`8F`).
    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn public_key(&self) -> &RsaPublicKey {
        &self.key
    }
}

/// A published scheme TEST CA public key (exponent 3), as listed in `shared/reference/emv.md` §6.
#[derive(Debug, Clone, Copy)]
pub struct TestCaKey {
    pub rid: Rid,
    pub index: u8,
    /// Modulus, hex.
    pub modulus: &'static str,
    /// SHA-1 check value, hex.
    pub checksum: &'static str,
}

/// The scheme TEST CA public keys built in (Visa 95/92/94, Mastercard EF). Test keys only: a card
/// whose certificates chain to these works only on test terminals.
pub const SCHEME_TEST_CA_KEYS: &[TestCaKey] = &[
    TestCaKey {
        rid: RID_VISA,
        index: 0x95,
        modulus: "BE9E1FA5E9A803852999C4AB432DB28600DCD9DAB76DFAAA47355A0FE37B1508AC6BF38860D3C6C2E5B12A3CAAF2A7005A7241EBAA7771112C74CF9A0634652FBCA0E5980C54A64761EA101A114E0F0B5572ADD57D010B7C9C887E104CA4EE1272DA66D997B9A90B5A6D624AB6C57E73C8F919000EB5F684898EF8C3DBEFB330C62660BED88EA78E909AFF05F6DA627B",
        checksum: "EE1511CEC71020A9B90443B37B1D5F6E703030F6",
    },
    TestCaKey {
        rid: RID_VISA,
        index: 0x92,
        modulus: "996AF56F569187D09293C14810450ED8EE3357397B18A2458EFAA92DA3B6DF6514EC060195318FD43BE9B8F0CC669E3F844057CBDDF8BDA191BB64473BC8DC9A730DB8F6B4EDE3924186FFD9B8C7735789C23A36BA0B8AF65372EB57EA5D89E7D14E9C7B6B557460F10885DA16AC923F15AF3758F0F03EBD3C5C2C949CBA306DB44E6A2C076C5F67E281D7EF56785DC4D75945E491F01918800A9E2DC66F60080566CE0DAF8D17EAD46AD8E30A247C9F",
        checksum: "429C954A3859CEF91295F663C963E582ED6EB253",
    },
    TestCaKey {
        rid: RID_VISA,
        index: 0x94,
        modulus: "ACD2B12302EE644F3F835ABD1FC7A6F62CCE48FFEC622AA8EF062BEF6FB8BA8BC68BBF6AB5870EED579BC3973E121303D34841A796D6DCBC41DBF9E52C4609795C0CCF7EE86FA1D5CB041071ED2C51D2202F63F1156C58A92D38BC60BDF424E1776E2BC9648078A03B36FB554375FC53D57C73F5160EA59F3AFC5398EC7B67758D65C9BFF7828B6B82D4BE124A416AB7301914311EA462C19F771F31B3B57336000DFF732D3B83DE07052D730354D297BEC72871DCCF0E193F171ABA27EE464C6A97690943D59BDABB2A27EB71CEEBDAFA1176046478FD62FEC452D5CA393296530AA3F41927ADFE434A2DF2AE3054F8840657A26E0FC617",
        checksum: "C4A3C43CCF87327D136B804160E47D43B60E6E0F",
    },
    TestCaKey {
        rid: RID_MASTERCARD,
        index: 0xEF,
        modulus: "A191CB87473F29349B5D60A88B3EAEE0973AA6F1A082F358D849FDDFF9C091F899EDA9792CAF09EF28F5D22404B88A2293EEBBC1949C43BEA4D60CFD879A1539544E09E0F09F60F065B2BF2A13ECC705F3D468B9D33AE77AD9D3F19CA40F23DCF5EB7C04DC8F69EBA565B1EBCB4686CD274785530FF6F6E9EE43AA43FDB02CE00DAEC15C7B8FD6A9B394BABA419D3F6DC85E16569BE8E76989688EFEA2DF22FF7D35C043338DEAA982A02B866DE5328519EBBCD6F03CDD686673847F84DB651AB86C28CF1462562C577B853564A290C8556D818531268D25CC98A4CC6A0BDFFFDA2DCCA3A94C998559E307FDDF915006D9A987B07DDAEB3B",
        checksum: "21766EBB0EE122AFB65D7845B73DB46BAB65427A",
    },
];

impl TestCaKey {
    /// The key, with its check value verified.
    pub fn load(&self) -> Result<CaPublicKey, KeyError> {
        let key = "built-in test CA key";
        let modulus =
            hex::decode(self.modulus).map_err(|_| KeyError::Encoding { key, reason: "modulus is not hex" })?;
        let checksum: [u8; 20] = hex::decode(self.checksum)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(KeyError::Encoding { key, reason: "check value is not 20 hex bytes" })?;
        CaPublicKey::with_checksum(self.rid, self.index, &modulus, &[3], &checksum)
    }
}

/// The CA public keys the cluster holds, by (RID, index).
#[derive(Debug, Clone, Default)]
pub struct CaKeyStore {
    keys: BTreeMap<(Rid, u8), CaPublicKey>,
}

impl CaKeyStore {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in scheme TEST CA keys ([`SCHEME_TEST_CA_KEYS`]), each checked against its
    /// published check value.
    pub fn with_scheme_test_keys() -> Result<Self, KeyError> {
        let mut store = Self::new();
        for k in SCHEME_TEST_CA_KEYS {
            store.insert(k.load()?)?;
        }
        Ok(store)
    }

    /// Adds a key. Adding the same key again is a no-op; a different key under a (RID, index)
    /// already held is refused.
    pub fn insert(&mut self, key: CaPublicKey) -> Result<(), KeyError> {
        match self.keys.get(&(key.rid, key.index)) {
            Some(held) if *held == key => Ok(()),
            Some(_) => Err(KeyError::CaConflict { rid: hex::encode_upper(key.rid), index: key.index }),
            None => {
                self.keys.insert((key.rid, key.index), key);
                Ok(())
            }
        }
    }

    pub fn get(&self, rid: Rid, index: u8) -> Option<&CaPublicKey> {
        self.keys.get(&(rid, index))
    }

    /// The key, or [`CertError::UnknownCaKey`] naming the RID and index.
    pub fn require(&self, rid: Rid, index: u8) -> Result<&CaPublicKey, CertError> {
        self.get(rid, index).ok_or_else(|| CertError::UnknownCaKey { rid: hex::encode_upper(rid), index })
    }

    pub fn iter(&self) -> impl Iterator<Item = &CaPublicKey> {
        self.keys.values()
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate fields
// ---------------------------------------------------------------------------------------------

/// A certificate expiration date, MMYY (n4, two BCD bytes). Ordered by year, then month; the
/// two-digit year is taken as 20YY.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertExpiry {
    year: u8,
    month: u8,
}

impl CertExpiry {
    /// `month` 1..=12, `year` 0..=99 (20YY).
    pub fn new(month: u8, year: u8) -> Option<Self> {
        ((1..=12).contains(&month) && year <= 99).then_some(Self { year, month })
    }

    /// From the two BCD bytes MM YY.
    pub fn from_mmyy(bytes: [u8; 2]) -> Option<Self> {
        Self::new(bcd_byte(bytes[0])?, bcd_byte(bytes[1])?)
    }

    /// The two BCD bytes MM YY.
    pub fn to_mmyy(self) -> [u8; 2] {
        [to_bcd(self.month), to_bcd(self.year)]
    }

    pub fn month(self) -> u8 {
        self.month
    }

    /// Two-digit year.
    pub fn year(self) -> u8 {
        self.year
    }

    /// Whether the certificate is expired in the given month (it is valid through its expiry
    /// month). This crate has no clock: the caller says what month it is.
    pub fn is_expired_at(self, now: CertExpiry) -> bool {
        now > self
    }
}

impl fmt::Display for CertExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}{:02}", self.month, self.year)
    }
}

impl fmt::Debug for CertExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertExpiry({self})")
    }
}

fn bcd_byte(b: u8) -> Option<u8> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// Decimal digits of a compressed-numeric (cn) field: digits, then only `F` nibbles.
fn cn_digits(bytes: &[u8]) -> Option<String> {
    let mut out = String::new();
    let mut padding = false;
    for nibble in bytes.iter().flat_map(|b| [b >> 4, b & 0x0F]) {
        match nibble {
            0..=9 if !padding => out.push(char::from(b'0' + nibble)),
            0x0F => padding = true,
            _ => return None,
        }
    }
    Some(out)
}

/// Packs decimal digits into `len` bytes of cn, right-padded with `F`.
fn to_cn(digits: &str, len: usize) -> Option<Vec<u8>> {
    if digits.len() > 2 * len || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut nibbles: Vec<u8> = digits.bytes().map(|c| c - b'0').collect();
    nibbles.resize(2 * len, 0x0F);
    Some(nibbles.chunks(2).map(|p| (p[0] << 4) | p[1]).collect())
}

/// The Issuer Identifier of an issuer certificate: the leftmost 3–8 PAN digits (the BIN),
/// right-padded with `F` to 4 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IssuerId([u8; 4]);

impl IssuerId {
    /// From 3–8 decimal digits.
    pub fn from_digits(digits: &str) -> Option<Self> {
        if !(3..=8).contains(&digits.len()) {
            return None;
        }
        to_cn(digits, 4).and_then(|v| v.try_into().ok()).map(Self)
    }

    /// From the 4 bytes of a certificate or file; `None` unless 3–8 digits then `F` padding.
    pub fn from_bytes(bytes: [u8; 4]) -> Option<Self> {
        let digits = cn_digits(&bytes)?;
        (digits.len() >= 3).then_some(Self(bytes))
    }

    pub fn bytes(self) -> [u8; 4] {
        self.0
    }

    /// The digits, without padding.
    pub fn digits(self) -> String {
        cn_digits(&self.0).unwrap_or_default()
    }

    /// Whether a PAN (decimal digits) starts with this identifier.
    pub fn matches_pan(self, pan: &str) -> bool {
        pan.starts_with(&self.digits())
    }
}

impl fmt::Display for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(self.0))
    }
}

impl fmt::Debug for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerId({self})")
    }
}

// ---------------------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------------------

/// A private RSA key that can do the raw operation `block^d mod n` (no padding), as PKCS#11's
/// `CKM_RSA_X_509`. The key itself never enters this crate.
pub trait RawRsaSigner {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The raw private operation on a block of exactly `modulus_len()` bytes whose value is below
    /// the modulus; the result is `modulus_len()` bytes, left-padded with zeros.
    fn sign_raw(&self, block: &[u8]) -> Result<Vec<u8>, Self::Error>;

    /// Modulus length in bytes.
    fn modulus_len(&self) -> usize;
}

/// Signs `block` and checks the signature recovers to it with `public` (the signer's public key).
pub(super) fn sign_checked<S: RawRsaSigner + ?Sized>(
    field: &'static str,
    signer: &S,
    public: &RsaPublicKey,
    block: &[u8],
) -> Result<Vec<u8>, BuildError> {
    if signer.modulus_len() != public.len() {
        return Err(BuildError::SignerLength { field, signer: signer.modulus_len(), public: public.len() });
    }
    let sig = signer.sign_raw(block).map_err(|e| BuildError::Signer { field, source: Box::new(e) })?;
    if sig.len() != public.len() {
        return Err(BuildError::SignatureLength { field, len: sig.len(), expected: public.len() });
    }
    let back = public.recover(field, &sig).map_err(|source| BuildError::SelfCheck { field, source })?;
    if back != block {
        return Err(BuildError::SelfCheck {
            field,
            source: CertError::Field { field, reason: "recovers to a different block than was signed".into() },
        });
    }
    Ok(sig)
}

// ---------------------------------------------------------------------------------------------
// Public-key certificates (formats 02 and 04), shared layout
// ---------------------------------------------------------------------------------------------

/// What a format-02 or format-04 certificate says, before the subject identifier is interpreted.
pub(super) struct PkCertBody {
    pub(super) subject_id: Vec<u8>,
    pub(super) expiry: CertExpiry,
    pub(super) serial: [u8; 3],
    pub(super) key: RsaPublicKey,
}

pub(super) struct PkCertKind {
    /// Tag and name, for errors.
    pub(super) field: &'static str,
    pub(super) format: u8,
    pub(super) id_len: usize,
    pub(super) remainder_field: &'static str,
    pub(super) exponent_field: &'static str,
}

const ISSUER_CERT: PkCertKind = PkCertKind {
    field: "Issuer Public Key Certificate (90)",
    format: FORMAT_ISSUER,
    id_len: 4,
    remainder_field: "Issuer Public Key Remainder (92)",
    exponent_field: "Issuer Public Key Exponent (9F32)",
};

const ICC_CERT: PkCertKind = PkCertKind {
    field: "ICC Public Key Certificate (9F46)",
    format: FORMAT_ICC,
    id_len: 10,
    remainder_field: "ICC Public Key Remainder (9F48)",
    exponent_field: "ICC Public Key Exponent (9F47)",
};

/// Formats the block to sign (length `n`) and the remainder for `body`; the hash covers the block's
/// bytes 1..n-22, the remainder, the exponent and `extra` (the static data, for format 04).
pub(super) fn format_pk_cert(
    kind: &PkCertKind,
    n: usize,
    body: &PkCertBody,
    extra: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), BuildError> {
    let head = pk_cert_head_len(kind.id_len);
    let space = n.checked_sub(head + SHA1_LEN + 1).ok_or(BuildError::Input {
        field: kind.field,
        reason: format!("the signer's modulus ({n} bytes) is too short for this certificate"),
    })?;
    if body.key.len() > n {
        return Err(BuildError::Input {
            field: kind.field,
            reason: format!("certified key ({} bytes) is longer than the signer's ({n} bytes)", body.key.len()),
        });
    }
    let modulus = body.key.modulus();
    let (left, remainder) = modulus.split_at(modulus.len().min(space));
    let mut block = Vec::with_capacity(n);
    block.extend_from_slice(&[HEADER, kind.format]);
    block.extend_from_slice(&body.subject_id);
    block.extend_from_slice(&body.expiry.to_mmyy());
    block.extend_from_slice(&body.serial);
    // Lengths fit a byte: the key is at most 248 bytes and its exponent 1 or 3.
    block.extend_from_slice(&[HASH_SHA1, PK_RSA, body.key.len() as u8, body.key.exponent().len() as u8]);
    block.extend_from_slice(left);
    block.resize(head + space, PAD);
    let mut h = Sha1::new();
    h.update(&block[1..]);
    h.update(remainder);
    h.update(body.key.exponent());
    h.update(extra);
    block.extend_from_slice(&h.finalize());
    block.push(TRAILER);
    Ok((block, remainder.to_vec()))
}

/// Checks a recovered format-02/04 block and rebuilds the certified key.
pub(super) fn parse_pk_cert(
    kind: &PkCertKind,
    m: &[u8],
    remainder: &[u8],
    exponent: &[u8],
    extra: &[u8],
) -> Result<PkCertBody, CertError> {
    let field = kind.field;
    let n = m.len();
    let head = pk_cert_head_len(kind.id_len);
    check_frame(field, m, kind.format)?;
    if n < head + SHA1_LEN + 1 {
        return Err(CertError::Field { field, reason: format!("{n} bytes is too short for this certificate") });
    }
    let space = n - head - SHA1_LEN - 1;
    let id_end = 2 + kind.id_len;
    let subject_id = m[2..id_end].to_vec();
    let expiry = CertExpiry::from_mmyy([m[id_end], m[id_end + 1]]).ok_or_else(|| CertError::Field {
        field,
        reason: format!("expiration date {} is not MMYY", hex::encode_upper(&m[id_end..id_end + 2])),
    })?;
    let serial = [m[id_end + 2], m[id_end + 3], m[id_end + 4]];
    let (hash_alg, pk_alg, key_len, exp_len) = (m[id_end + 5], m[id_end + 6], m[id_end + 7] as usize, m[id_end + 8]);
    if hash_alg != HASH_SHA1 {
        return Err(CertError::HashAlgorithm { field, found: hash_alg });
    }
    if pk_alg != PK_RSA {
        return Err(CertError::PkAlgorithm { field, found: pk_alg });
    }
    check_hash(field, m, &[remainder, exponent, extra])?;
    if key_len > n {
        return Err(CertError::Field {
            field,
            reason: format!("certified key length {key_len} is longer than the signer's key ({n} bytes)"),
        });
    }
    if exp_len as usize != exponent.len() {
        return Err(CertError::Field {
            field: kind.exponent_field,
            reason: format!("{} bytes but the certificate says {exp_len}", exponent.len()),
        });
    }
    let key_field = &m[head..head + space];
    let modulus = if key_len <= space {
        if !remainder.is_empty() {
            return Err(CertError::Field {
                field: kind.remainder_field,
                reason: format!("present ({} bytes) but the {key_len}-byte key fits the certificate", remainder.len()),
            });
        }
        if key_field[key_len..].iter().any(|&b| b != PAD) {
            return Err(CertError::Field { field, reason: "padding after the key is not all BB".into() });
        }
        key_field[..key_len].to_vec()
    } else {
        if remainder.len() != key_len - space {
            return Err(CertError::Field {
                field: kind.remainder_field,
                reason: format!("{} bytes, expected {} for a {key_len}-byte key", remainder.len(), key_len - space),
            });
        }
        [key_field, remainder].concat()
    };
    if modulus.first() == Some(&0) {
        return Err(CertError::Field { field, reason: "certified modulus has a leading zero byte".into() });
    }
    let key =
        RsaPublicKey::named("certified key", &modulus, exponent).map_err(|source| CertError::Key { field, source })?;
    Ok(PkCertBody { subject_id, expiry, serial, key })
}

/// Header, format and trailer of a recovered block.
fn check_frame(field: &'static str, m: &[u8], format: u8) -> Result<(), CertError> {
    if m[0] != HEADER {
        return Err(CertError::Header { field, found: m[0] });
    }
    if m[m.len() - 1] != TRAILER {
        return Err(CertError::Trailer { field, found: m[m.len() - 1] });
    }
    if m[1] != format {
        return Err(CertError::Format { field, found: m[1], expected: format });
    }
    Ok(())
}

/// SHA-1 over bytes 1..n-22 of the block and `tail`, against bytes n-21..n-1.
fn check_hash(field: &'static str, m: &[u8], tail: &[&[u8]]) -> Result<(), CertError> {
    let n = m.len();
    let mut h = Sha1::new();
    h.update(&m[1..n - SHA1_LEN - 1]);
    for t in tail {
        h.update(t);
    }
    if h.finalize().as_slice() != &m[n - SHA1_LEN - 1..n - 1] {
        return Err(CertError::Hash { field });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Issuer Public Key Certificate (90)
// ---------------------------------------------------------------------------------------------

/// A verified Issuer Public Key Certificate with the data elements a card carries for it. Only
/// recovery ([`IssuerCertificate::recover`], [`import_issuer_file`]) or
/// [`build_issuer_certificate`] makes one, so holding one means it verified with its CA key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IssuerCertificate {
    rid: Rid,
    ca_index: u8,
    cert: Vec<u8>,
    remainder: Vec<u8>,
    issuer_id: IssuerId,
    expiry: CertExpiry,
    serial: [u8; 3],
    issuer_key: RsaPublicKey,
}

impl IssuerCertificate {
    /// Recovers `cert` (`90`) with the CA key (RID, `8F`) from `cas` and checks header, format 02,
    /// trailer, algorithms, hash over the block ‖ `remainder` (`92`) ‖ `exponent` (`9F32`),
    /// expiry and issuer identifier format, padding or remainder, and that the issuer key is not
    /// longer than the CA key.
    pub fn recover(
        cas: &CaKeyStore,
        rid: Rid,
        ca_index: u8,
        cert: &[u8],
        remainder: &[u8],
        exponent: &[u8],
    ) -> Result<Self, CertError> {
        let ca = cas.require(rid, ca_index)?;
        let m = ca.public_key().recover(ISSUER_CERT.field, cert)?;
        let body = parse_pk_cert(&ISSUER_CERT, &m, remainder, exponent, &[])?;
        let id: [u8; 4] = body.subject_id.as_slice().try_into().map_err(|_| CertError::Field {
            field: ISSUER_CERT.field,
            reason: "issuer identifier is not 4 bytes".into(),
        })?;
        let issuer_id = IssuerId::from_bytes(id).ok_or_else(|| CertError::Field {
            field: ISSUER_CERT.field,
            reason: format!("issuer identifier {} is not 3-8 digits padded with F", hex::encode_upper(id)),
        })?;
        Ok(Self {
            rid,
            ca_index,
            cert: cert.to_vec(),
            remainder: remainder.to_vec(),
            issuer_id,
            expiry: body.expiry,
            serial: body.serial,
            issuer_key: body.key,
        })
    }

    pub fn rid(&self) -> Rid {
        self.rid
    }

    /// CA Public Key Index (`8F`).
    pub fn ca_index(&self) -> u8 {
        self.ca_index
    }

    /// Issuer Public Key Certificate (`90`).
    pub fn cert(&self) -> &[u8] {
        &self.cert
    }

    /// Issuer Public Key Remainder (`92`); empty when the card carries no `92`.
    pub fn remainder(&self) -> &[u8] {
        &self.remainder
    }

    /// Issuer Public Key Exponent (`9F32`).
    pub fn exponent(&self) -> &[u8] {
        self.issuer_key.exponent()
    }

    /// The issuer public key the certificate certifies (modulus and exponent).
    pub fn issuer_key(&self) -> &RsaPublicKey {
        &self.issuer_key
    }

    pub fn issuer_modulus(&self) -> &[u8] {
        self.issuer_key.modulus()
    }

    pub fn issuer_id(&self) -> IssuerId {
        self.issuer_id
    }

    pub fn expiry(&self) -> CertExpiry {
        self.expiry
    }

    /// Certificate Serial Number, assigned by the CA.
    pub fn serial(&self) -> [u8; 3] {
        self.serial
    }

    /// Checks a PAN belongs to this issuer (starts with the issuer identifier).
    pub fn check_pan(&self, pan: &str) -> Result<(), CertError> {
        if self.issuer_id.matches_pan(pan) {
            Ok(())
        } else {
            Err(CertError::Field {
                field: "Application PAN (5A)",
                reason: format!(
                    "does not start with the issuer identifier {} of the issuer certificate",
                    self.issuer_id
                ),
            })
        }
    }
}

/// The fields of an issuer certificate a (test) CA signs.
#[derive(Debug, Clone)]
pub struct IssuerCertificateRequest<'a> {
    pub issuer_id: IssuerId,
    pub expiry: CertExpiry,
    pub serial: [u8; 3],
    pub issuer_key: &'a RsaPublicKey,
}

/// Builds an Issuer Public Key Certificate with a CA private key (a test CA: real ones are the
/// scheme's). `ca` is the signer's public key, which the result is checked against.
pub fn build_issuer_certificate<S: RawRsaSigner + ?Sized>(
    ca_signer: &S,
    ca: &CaPublicKey,
    req: &IssuerCertificateRequest<'_>,
) -> Result<IssuerCertificate, BuildError> {
    let field = ISSUER_CERT.field;
    let n = ca.public_key().len();
    let body = PkCertBody {
        subject_id: req.issuer_id.bytes().to_vec(),
        expiry: req.expiry,
        serial: req.serial,
        key: req.issuer_key.clone(),
    };
    let (block, remainder) = format_pk_cert(&ISSUER_CERT, n, &body, &[])?;
    let cert = sign_checked(field, ca_signer, ca.public_key(), &block)?;
    Ok(IssuerCertificate {
        rid: ca.rid(),
        ca_index: ca.index(),
        cert,
        remainder,
        issuer_id: req.issuer_id,
        expiry: req.expiry,
        serial: req.serial,
        issuer_key: req.issuer_key.clone(),
    })
}

// ---------------------------------------------------------------------------------------------
// Scheme issuer-certificate files
// ---------------------------------------------------------------------------------------------

/// The layout of an issuer-certificate file as a scheme delivers it (emv.md §1.8). The file does
/// not say which layout it is (a Mastercard file starts with the BIN, which may well be `24…`, the
/// Visa header byte), so the caller names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IssuerFileLayout {
    /// `24` | service id (4) | issuer id (4) | serial (3) | expiry MMYY (2) | remainder length (1) |
    /// remainder | exponent length (1) | exponent | CA index (1) | certificate (N_CA) |
    /// detached signature (N_CA). RID `A000000003`.
    Visa,
    /// issuer id (4) | serial (3) | CA index (1) | remainder | exponent | certificate (N_CA).
    /// RID `A000000004`.
    Mastercard,
    /// The Visa layout (header `24`, service id `01010000`), RID `A000000333`; its detached
    /// signature recovers to `00 01 FF… 00 01` ‖ SHA-1, without a DigestInfo.
    UnionPay,
}

impl IssuerFileLayout {
    pub const ALL: [IssuerFileLayout; 3] = [Self::Visa, Self::Mastercard, Self::UnionPay];

    pub fn rid(self) -> Rid {
        match self {
            Self::Visa => RID_VISA,
            Self::Mastercard => RID_MASTERCARD,
            Self::UnionPay => RID_UNIONPAY,
        }
    }

    /// Its name on the command line and in records: `visa`, `mastercard`, `unionpay`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Visa => "visa",
            Self::Mastercard => "mastercard",
            Self::UnionPay => "unionpay",
        }
    }

    /// The layout named `name` ([`IssuerFileLayout::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The block a detached signature over `digest` recovers to with an `n`-byte CA key, in this
    /// scheme's padding (Visa: PKCS#1 v1.5 with the SHA-1 DigestInfo; UnionPay: `00 01 FF… 00`,
    /// the byte `01`, the hash). Mastercard files carry no detached signature.
    pub(super) fn detached_block(self, n: usize, digest: &[u8]) -> Option<Vec<u8>> {
        let tail: Vec<u8> = match self {
            Self::Visa => [&SHA1_DIGEST_INFO[..], digest].concat(),
            Self::UnionPay => [&[0x01][..], digest].concat(),
            Self::Mastercard => return None,
        };
        let mut block = vec![0x00, 0x01];
        block.resize(n.checked_sub(tail.len() + 1)?, 0xFF);
        block.push(0x00);
        block.extend_from_slice(&tail);
        Some(block)
    }
}

impl fmt::Display for IssuerFileLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Visa => "Visa layout",
            Self::Mastercard => "Mastercard layout",
            Self::UnionPay => "UnionPay layout",
        })
    }
}

/// An imported issuer-certificate file: the verified certificate and what the file said besides.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IssuerFile {
    pub layout: IssuerFileLayout,
    pub certificate: IssuerCertificate,
    /// Visa: the service identifier of the header (e.g. `10100000`).
    pub service_id: Option<[u8; 4]>,
    /// The 3-byte serial field of the file header. Visa: the certificate serial (checked equal).
    /// Mastercard: the file's own sequence number (in the test file `000001`, while the
    /// certificate's serial is `073459`), not compared.
    pub file_serial: [u8; 3],
    /// Visa: whether the detached signature was checked (always true on success).
    pub detached_signature_verified: bool,
}

struct Reader<'a> {
    layout: IssuerFileLayout,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], CertError> {
        let have = self.data.len() - self.pos;
        if len > have {
            return Err(CertError::File {
                layout: self.layout,
                field,
                reason: format!("file ends: {len} bytes needed at offset {}, {have} left", self.pos),
            });
        }
        let out = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, CertError> {
        Ok(self.take(field, 1)?[0])
    }

    fn array<const L: usize>(&mut self, field: &'static str) -> Result<[u8; L], CertError> {
        let s = self.take(field, L)?;
        let mut out = [0; L];
        out.copy_from_slice(s);
        Ok(out)
    }
}

/// Parses a scheme issuer-certificate file, recovers its certificate with the CA key it names
/// (from `cas`; an unknown one is refused with [`CertError::UnknownCaKey`]), verifies it, checks
/// the file's own fields agree with the certificate and, for Visa and UnionPay files, verifies the detached
/// signature (PKCS#1 v1.5 SHA-1 over the file header ‖ the recovered certificate).
pub fn import_issuer_file(layout: IssuerFileLayout, bytes: &[u8], cas: &CaKeyStore) -> Result<IssuerFile, CertError> {
    import_issuer_file_as(layout, layout.rid(), bytes, cas)
}

/// [`import_issuer_file`] of a file in `layout` from a CA under another RID than the layout's
/// scheme (a domestic scheme's CA, or a Quill CA, writing the schemes' layouts).
pub fn import_issuer_file_as(
    layout: IssuerFileLayout,
    rid: Rid,
    bytes: &[u8],
    cas: &CaKeyStore,
) -> Result<IssuerFile, CertError> {
    match layout {
        IssuerFileLayout::Visa | IssuerFileLayout::UnionPay => import_detached(layout, rid, bytes, cas),
        IssuerFileLayout::Mastercard => import_mastercard(rid, bytes, cas),
    }
}

fn mismatch(layout: IssuerFileLayout, field: &'static str, file: &[u8], cert: &[u8]) -> CertError {
    CertError::FileMismatch { layout, field, file: hex::encode_upper(file), cert: hex::encode_upper(cert) }
}

fn file_issuer_id(layout: IssuerFileLayout, id: [u8; 4]) -> Result<IssuerId, CertError> {
    IssuerId::from_bytes(id).ok_or_else(|| CertError::File {
        layout,
        field: "issuer identifier",
        reason: format!("{} is not 3-8 digits padded with F", hex::encode_upper(id)),
    })
}

/// The Visa and UnionPay layouts: a clear header, the certificate, a detached signature.
fn import_detached(
    layout: IssuerFileLayout,
    rid: Rid,
    bytes: &[u8],
    cas: &CaKeyStore,
) -> Result<IssuerFile, CertError> {
    let mut r = Reader { layout, data: bytes, pos: 0 };
    let header = r.byte("header")?;
    if header != 0x24 {
        return Err(CertError::File { layout, field: "header", reason: format!("{header:02X}, expected 24") });
    }
    let service_id: [u8; 4] = r.array("service identifier")?;
    let issuer_id = file_issuer_id(layout, r.array("issuer identifier")?)?;
    let serial: [u8; 3] = r.array("certificate serial number")?;
    let expiry_bytes: [u8; 2] = r.array("certificate expiration date")?;
    let rem_len = r.byte("remainder length")? as usize;
    let remainder = r.take("issuer public key remainder", rem_len)?;
    let exp_len = r.byte("exponent length")? as usize;
    let exponent = r.take("issuer public key exponent", exp_len)?;
    let ca_index = r.byte("CA public key index")?;
    let head_end = r.pos;
    let ca = cas.require(rid, ca_index)?;
    let n_ca = ca.public_key().len();
    let rest = bytes.len() - head_end;
    if rest != 2 * n_ca {
        return Err(CertError::File {
            layout,
            field: "certificate and detached signature",
            reason: format!("{rest} bytes after the header, expected 2 x {n_ca} for CA key {ca_index:02X}"),
        });
    }
    let cert = r.take("issuer public key certificate", n_ca)?;
    let signature = r.take("detached signature", n_ca)?;
    let certificate = IssuerCertificate::recover(cas, rid, ca_index, cert, remainder, exponent)?;
    if certificate.issuer_id != issuer_id {
        return Err(mismatch(layout, "issuer identifier", &issuer_id.bytes(), &certificate.issuer_id.bytes()));
    }
    if certificate.serial != serial {
        return Err(mismatch(layout, "certificate serial number", &serial, &certificate.serial));
    }
    if certificate.expiry.to_mmyy() != expiry_bytes {
        return Err(mismatch(layout, "certificate expiration date", &expiry_bytes, &certificate.expiry.to_mmyy()));
    }
    // Detached signature: SHA-1 over the header and the recovered certificate, in the scheme's
    // own padding (and no other).
    let field = "detached signature";
    let sig_block = ca.public_key().recover(field, signature)?;
    let recovered_cert = ca.public_key().recover(ISSUER_CERT.field, cert)?;
    let digest = detached_digest(&bytes[..head_end], &recovered_cert);
    let expected = layout.detached_block(n_ca, &digest).ok_or_else(|| CertError::File {
        layout,
        field,
        reason: format!("a {n_ca}-byte CA key is too short for a detached signature"),
    })?;
    if sig_block != expected {
        let reason = if sig_block[..expected.len() - SHA1_LEN] == expected[..expected.len() - SHA1_LEN] {
            "SHA-1 over the file header and the recovered certificate does not match".to_string()
        } else {
            format!("does not recover to the {layout}'s signature block with the CA key")
        };
        return Err(CertError::File { layout, field, reason });
    }
    Ok(IssuerFile {
        layout,
        certificate,
        service_id: Some(service_id),
        file_serial: serial,
        detached_signature_verified: true,
    })
}

/// SHA-1 over a detached-signature file's clear header and the recovered certificate.
pub(super) fn detached_digest(header: &[u8], recovered_cert: &[u8]) -> [u8; SHA1_LEN] {
    let mut h = Sha1::new();
    h.update(header);
    h.update(recovered_cert);
    h.finalize().into()
}

fn import_mastercard(rid: Rid, bytes: &[u8], cas: &CaKeyStore) -> Result<IssuerFile, CertError> {
    let layout = IssuerFileLayout::Mastercard;
    let mut r = Reader { layout, data: bytes, pos: 0 };
    let issuer_id = file_issuer_id(layout, r.array("issuer identifier")?)?;
    let file_serial: [u8; 3] = r.array("serial number")?;
    let ca_index = r.byte("CA public key index")?;
    let ca = cas.require(rid, ca_index)?;
    let n_ca = ca.public_key().len();
    // Remainder and exponent sit between the header and the certificate; their split follows
    // from the issuer key and exponent lengths in the recovered certificate.
    let middle_len = bytes.len().checked_sub(r.pos + n_ca).ok_or_else(|| CertError::File {
        layout,
        field: "issuer public key certificate",
        reason: format!("file is {} bytes, too short for a {n_ca}-byte certificate", bytes.len()),
    })?;
    let middle = r.take("issuer public key remainder and exponent", middle_len)?;
    let cert = r.take("issuer public key certificate", n_ca)?;
    let m = ca.public_key().recover(ISSUER_CERT.field, cert)?;
    check_frame(ISSUER_CERT.field, &m, FORMAT_ISSUER)?;
    let key_len = m[13] as usize;
    let exp_len = m[14] as usize;
    let rem_len = key_len.saturating_sub(n_ca - 36);
    if middle.len() != rem_len + exp_len {
        return Err(CertError::File {
            layout,
            field: "issuer public key remainder and exponent",
            reason: format!(
                "{} bytes, expected {rem_len} + {exp_len} for a {key_len}-byte key with a {exp_len}-byte exponent",
                middle.len()
            ),
        });
    }
    let (remainder, exponent) = middle.split_at(rem_len);
    let certificate = IssuerCertificate::recover(cas, rid, ca_index, cert, remainder, exponent)?;
    if certificate.issuer_id != issuer_id {
        return Err(mismatch(layout, "issuer identifier", &issuer_id.bytes(), &certificate.issuer_id.bytes()));
    }
    Ok(IssuerFile { layout, certificate, service_id: None, file_serial, detached_signature_verified: false })
}

// ---------------------------------------------------------------------------------------------
// ICC Public Key Certificate (9F46)
// ---------------------------------------------------------------------------------------------

/// The fields of an ICC Public Key Certificate the issuer signs.
#[derive(Debug, Clone)]
pub struct IccCertificateRequest<'a> {
    /// Application PAN (`5A`), 12–19 digits.
    pub pan: &'a str,
    pub expiry: CertExpiry,
    pub serial: [u8; 3],
    pub icc_key: &'a RsaPublicKey,
    /// Static Data to be Authenticated (emv.md §1.7), final.
    pub static_data: &'a [u8],
}

/// The data elements of an ICC Public Key Certificate as the card carries them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IccCertificate {
    /// ICC Public Key Certificate (`9F46`), N_I bytes.
    pub cert: Vec<u8>,
    /// ICC Public Key Remainder (`9F48`); empty when the card carries no `9F48`.
    pub remainder: Vec<u8>,
    /// ICC Public Key Exponent (`9F47`).
    pub exponent: Vec<u8>,
}

/// What a verified ICC Public Key Certificate certifies.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecoveredIccCertificate {
    /// Application PAN digits.
    pub pan: String,
    pub expiry: CertExpiry,
    pub serial: [u8; 3],
    pub icc_key: RsaPublicKey,
}

fn check_pan(field: &'static str, pan: &str) -> Result<(), BuildError> {
    if !(12..=19).contains(&pan.len()) || !pan.bytes().all(|c| c.is_ascii_digit()) {
        return Err(BuildError::Input {
            field,
            reason: format!("PAN must be 12-19 digits, got {} characters", pan.len()),
        });
    }
    Ok(())
}

/// Builds an ICC Public Key Certificate (format 04) signed by the issuer key. `issuer_key` is the
/// signer's public key (usually [`IssuerCertificate::issuer_key`]); the signature is checked
/// against it. The ICC key must not be longer than the issuer key.
pub fn build_icc_certificate<S: RawRsaSigner + ?Sized>(
    issuer_signer: &S,
    issuer_key: &RsaPublicKey,
    req: &IccCertificateRequest<'_>,
) -> Result<IccCertificate, BuildError> {
    let field = ICC_CERT.field;
    check_pan("Application PAN (5A)", req.pan)?;
    let subject_id = to_cn(req.pan, 10).ok_or(BuildError::Input { field, reason: "PAN does not fit".into() })?;
    let body = PkCertBody { subject_id, expiry: req.expiry, serial: req.serial, key: req.icc_key.clone() };
    let (block, remainder) = format_pk_cert(&ICC_CERT, issuer_key.len(), &body, req.static_data)?;
    let cert = sign_checked(field, issuer_signer, issuer_key, &block)?;
    Ok(IccCertificate { cert, remainder, exponent: req.icc_key.exponent().to_vec() })
}

/// Recovers an ICC Public Key Certificate with the issuer public key and checks header, format 04,
/// trailer, algorithms, hash over the block ‖ `9F48` ‖ `9F47` ‖ static data, padding or
/// remainder, the PAN format and the expiry format. Comparing the PAN with `5A` and the expiry
/// with today is the caller's.
pub fn recover_icc_certificate(
    issuer_key: &RsaPublicKey,
    cert: &IccCertificate,
    static_data: &[u8],
) -> Result<RecoveredIccCertificate, CertError> {
    let field = ICC_CERT.field;
    let m = issuer_key.recover(field, &cert.cert)?;
    let body = parse_pk_cert(&ICC_CERT, &m, &cert.remainder, &cert.exponent, static_data)?;
    let pan = cn_digits(&body.subject_id).filter(|p| (12..=19).contains(&p.len())).ok_or_else(|| CertError::Field {
        field,
        reason: format!("application PAN {} is not 12-19 digits padded with F", hex::encode_upper(&body.subject_id)),
    })?;
    Ok(RecoveredIccCertificate { pan, expiry: body.expiry, serial: body.serial, icc_key: body.key })
}

// ---------------------------------------------------------------------------------------------
// Signed Static Application Data (93)
// ---------------------------------------------------------------------------------------------

const SDA_FIELD: &str = "Signed Static Application Data (93)";
/// Bytes before the pad pattern: header, format, hash algorithm, DAC (2).
const SDA_HEAD: usize = 5;

/// Builds Signed Static Application Data (format 03) with the issuer key: `6A 03 01 DAC BB.. hash
/// BC`, hash over bytes 1..n-22 ‖ static data. `dac` is the Data Authentication Code (`9F45`).
pub fn build_signed_static_data<S: RawRsaSigner + ?Sized>(
    issuer_signer: &S,
    issuer_key: &RsaPublicKey,
    dac: [u8; 2],
    static_data: &[u8],
) -> Result<Vec<u8>, BuildError> {
    let n = issuer_key.len();
    let mut block = vec![HEADER, FORMAT_SDA, HASH_SHA1, dac[0], dac[1]];
    block.resize(n - SHA1_LEN - 1, PAD);
    let mut h = Sha1::new();
    h.update(&block[1..]);
    h.update(static_data);
    block.extend_from_slice(&h.finalize());
    block.push(TRAILER);
    sign_checked(SDA_FIELD, issuer_signer, issuer_key, &block)
}

/// Recovers Signed Static Application Data with the issuer public key, checks header, format 03,
/// trailer, hash algorithm, the `BB` pad pattern and the hash over the static data; returns the
/// Data Authentication Code.
pub fn recover_signed_static_data(
    issuer_key: &RsaPublicKey,
    ssad: &[u8],
    static_data: &[u8],
) -> Result<[u8; 2], CertError> {
    let field = SDA_FIELD;
    let m = issuer_key.recover(field, ssad)?;
    check_frame(field, &m, FORMAT_SDA)?;
    if m[2] != HASH_SHA1 {
        return Err(CertError::HashAlgorithm { field, found: m[2] });
    }
    if m[SDA_HEAD..m.len() - SHA1_LEN - 1].iter().any(|&b| b != PAD) {
        return Err(CertError::Field { field, reason: "pad pattern is not all BB".into() });
    }
    check_hash(field, &m, &[static_data])?;
    Ok([m[3], m[4]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_test_ca_keys_match_their_check_values() {
        let store = CaKeyStore::with_scheme_test_keys().expect("test CA keys load");
        let bits: Vec<_> =
            store.iter().map(|k| (hex::encode_upper(k.rid()), k.index(), k.public_key().len() * 8)).collect();
        assert_eq!(
            bits,
            [
                ("A000000003".to_string(), 0x92, 1408),
                ("A000000003".to_string(), 0x94, 1984),
                ("A000000003".to_string(), 0x95, 1152),
                ("A000000004".to_string(), 0xEF, 1984),
            ]
        );
    }

    #[test]
    fn a_wrong_check_value_is_refused_naming_the_key() {
        let k = SCHEME_TEST_CA_KEYS[0];
        let modulus = hex::decode(k.modulus).expect("hex");
        let err = CaPublicKey::with_checksum(k.rid, k.index, &modulus, &[3], &[0; 20]).expect_err("bad checksum");
        assert!(err.to_string().starts_with("CA key A000000003/95: check value is EE1511CE"), "{err}");
    }

    #[test]
    fn a_conflicting_ca_key_is_refused() {
        let mut store = CaKeyStore::with_scheme_test_keys().expect("load");
        let other = store.require(RID_VISA, 0x92).expect("held").public_key().clone();
        store.insert(store.require(RID_VISA, 0x94).expect("held").clone()).expect("same key again is fine");
        let err =
            store.insert(CaPublicKey::new(RID_VISA, 0x94, other.modulus(), &[3]).expect("key")).expect_err("conflict");
        assert_eq!(err.to_string(), "CA key A000000003/94 is already held with a different modulus or exponent");
    }

    #[test]
    fn field_codings() {
        assert_eq!(CertExpiry::from_mmyy([0x12, 0x32]).map(|e| e.to_string()), Some("1232".into()));
        assert_eq!(CertExpiry::from_mmyy([0x13, 0x32]), None);
        assert_eq!(CertExpiry::from_mmyy([0x1A, 0x32]), None);
        let e = CertExpiry::new(12, 32).expect("valid");
        assert!(!e.is_expired_at(CertExpiry::new(12, 32).expect("valid")));
        assert!(e.is_expired_at(CertExpiry::new(1, 33).expect("valid")));
        let id = IssuerId::from_digits("522230").expect("valid");
        assert_eq!(id.bytes(), [0x52, 0x22, 0x30, 0xFF]);
        assert!(id.matches_pan("5222301234567890"));
        assert!(!id.matches_pan("5222311234567890"));
        assert_eq!(IssuerId::from_bytes([0x52, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(IssuerId::from_bytes([0x52, 0xF2, 0x30, 0xFF]), None);
        assert_eq!(to_cn("4761730000304750", 10).map(hex::encode_upper), Some("4761730000304750FFFF".into()));
        assert_eq!(cn_digits(&[0x47, 0x61, 0x7F, 0xFF]), Some("47617".into()));
    }

    #[test]
    fn key_shape_is_checked() {
        let mut n = vec![0xC5; 128];
        assert!(RsaPublicKey::new(&n, &[3]).is_ok());
        assert!(RsaPublicKey::new(&n, &[0, 0, 3]).is_ok());
        assert!(matches!(RsaPublicKey::new(&n, &[5]), Err(KeyError::Exponent { .. })));
        assert!(matches!(RsaPublicKey::new(&n[..40], &[3]), Err(KeyError::ModulusLength { len: 40, .. })));
        n[0] = 0x45;
        assert!(matches!(RsaPublicKey::new(&n, &[3]), Err(KeyError::ModulusShape { .. })));
    }
}

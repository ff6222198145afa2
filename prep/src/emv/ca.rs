//! The EMV CA's side of issuer certification, and the files it exchanges (`docs/emv-ca.md` has
//! every layout byte by byte).
//!
//! * An issuer asks for a certificate with an [`IssuerRequest`]: its public key, issuer
//!   identifier, the index it gives the key and the expiry it asks for, **self-signed** with the
//!   issuer private key (proof of possession): a format-`23` block laid out as an Issuer Public Key
//!   Certificate (emv.md §1.4) of the key's own length, signed with the raw RSA private operation.
//!   Visa-style requests start with header `22` and a service identifier; Mastercard-style ones
//!   carry no header and travel with a separate hash file (issuer id ‖ key index ‖ SHA-1 of the
//!   request) the CA checks out of band.
//! * The CA answers with the certificate in the schemes' file layouts ([`certificate_files`]):
//!   Visa (`24` header, detached PKCS#1 signature), Mastercard (`BBBBBB-IIIIII.cXX`) and UnionPay
//!   (Visa layout, its own detached-signature padding), which [`super::cert::import_issuer_file`]
//!   reads back.
//! * The CA's public key leaves as JSON and as CA key files ([`ca_key_files`]); revoked
//!   certificates as 9-byte terminal entries RID ‖ CA index ‖ serial ([`Revocation`]).
//!
//! Parsers take untrusted bytes: every length is checked before it is used and every error names
//! the file and the field.

use std::fmt;

use sha1::{Digest, Sha1};

use super::cert::{
    self, BuildError, CaPublicKey, CertExpiry, IssuerCertificate, IssuerCertificateRequest, IssuerFileLayout, IssuerId,
    PkCertBody, PkCertKind, RawRsaSigner, Rid, RsaPublicKey,
};

/// Header byte of a Visa-style certification request.
pub const VISA_REQUEST_HEADER: u8 = 0x22;
/// Header byte of a Visa-style CA public-key file.
pub const VISA_CA_KEY_HEADER: u8 = 0x20;
/// Header byte of a Visa-style issuer-certificate file.
pub const VISA_CERT_HEADER: u8 = 0x24;
/// Service identifier of Visa-style files.
pub const VISA_SERVICE_ID: [u8; 4] = [0x10, 0x10, 0x00, 0x00];
/// Service identifier of UnionPay-style files.
pub const UNIONPAY_SERVICE_ID: [u8; 4] = [0x01, 0x01, 0x00, 0x00];
/// Certificate format of the self-signed block of a request.
pub const FORMAT_REQUEST: u8 = 0x23;
/// Length of a Mastercard-style hash file: issuer id (4) ‖ key index (3) ‖ SHA-1 (20).
pub const HASH_FILE_LEN: usize = 27;

const REQUEST_BLOCK: PkCertKind = PkCertKind {
    field: "self-signed block",
    format: FORMAT_REQUEST,
    id_len: 4,
    remainder_field: "issuer public key modulus",
    exponent_field: "issuer public key exponent",
};

/// A file the CA reads or writes that is not what it should be: which file, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct CaFileError {
    pub file: &'static str,
    pub field: &'static str,
    pub reason: String,
}

fn bad(file: &'static str, field: &'static str, reason: impl Into<String>) -> CaFileError {
    CaFileError { file, field, reason: reason.into() }
}

/// Bounds-checked reading of an untrusted file.
struct Reader<'a> {
    file: &'static str,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], CaFileError> {
        let have = self.data.len() - self.pos;
        if len > have {
            return Err(bad(
                self.file,
                field,
                format!("file ends: {len} bytes needed at offset {}, {have} left", self.pos),
            ));
        }
        let out = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, CaFileError> {
        Ok(self.take(field, 1)?[0])
    }

    fn array<const L: usize>(&mut self, field: &'static str) -> Result<[u8; L], CaFileError> {
        let mut out = [0; L];
        out.copy_from_slice(self.take(field, L)?);
        Ok(out)
    }

    fn end(&self) -> Result<(), CaFileError> {
        if self.pos != self.data.len() {
            return Err(bad(
                self.file,
                "end of file",
                format!("{} bytes after the last field", self.data.len() - self.pos),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Certification requests
// ---------------------------------------------------------------------------------------------

/// How a request is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFormat {
    /// `22` | service id (4) | the request fields | self-signature.
    Visa,
    /// The request fields | self-signature; with a separate hash file.
    Mastercard,
}

impl RequestFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Visa => "visa",
            Self::Mastercard => "mastercard",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Visa, Self::Mastercard].into_iter().find(|f| f.name() == name)
    }

    fn file(self) -> &'static str {
        match self {
            Self::Visa => "certification request (Visa layout)",
            Self::Mastercard => "certification request (Mastercard layout)",
        }
    }
}

impl fmt::Display for RequestFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an issuer asks the CA to certify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRequest {
    pub format: RequestFormat,
    pub issuer_id: IssuerId,
    /// The index the issuer gives this key (Mastercard: in the certificate file's name and header).
    pub key_index: [u8; 3],
    /// The expiry the issuer asks for.
    pub expiry: CertExpiry,
    pub key: RsaPublicKey,
}

impl IssuerRequest {
    /// The request's bytes before the self-signature.
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        if self.format == RequestFormat::Visa {
            b.push(VISA_REQUEST_HEADER);
            b.extend_from_slice(&VISA_SERVICE_ID);
        }
        b.extend_from_slice(&self.issuer_id.bytes());
        b.extend_from_slice(&self.key_index);
        b.extend_from_slice(&self.expiry.to_mmyy());
        // Lengths fit a byte: the key is at most 248 bytes and its exponent 1 or 3.
        b.extend_from_slice(&[0x01, 0x01, self.key.len() as u8, self.key.exponent().len() as u8]);
        b.extend_from_slice(self.key.modulus());
        b.extend_from_slice(self.key.exponent());
        b
    }

    fn pk_body(&self) -> PkCertBody {
        PkCertBody {
            subject_id: self.issuer_id.bytes().to_vec(),
            expiry: self.expiry,
            serial: self.key_index,
            key: self.key.clone(),
        }
    }

    /// The request, self-signed by `signer` (the issuer private key; checked against the key).
    pub fn build<S: RawRsaSigner + ?Sized>(&self, signer: &S) -> Result<Vec<u8>, BuildError> {
        let (block, _) = cert::format_pk_cert(&REQUEST_BLOCK, self.key.len(), &self.pk_body(), &[])?;
        let sig = cert::sign_checked(REQUEST_BLOCK.field, signer, &self.key, &block)?;
        Ok([self.body(), sig].concat())
    }

    /// Parses a request and verifies its self-signature with the key it carries.
    pub fn parse(format: RequestFormat, bytes: &[u8]) -> Result<Self, CaFileError> {
        let file = format.file();
        let mut r = Reader { file, data: bytes, pos: 0 };
        if format == RequestFormat::Visa {
            let h = r.byte("header")?;
            if h != VISA_REQUEST_HEADER {
                return Err(bad(file, "header", format!("{h:02X}, expected {VISA_REQUEST_HEADER:02X}")));
            }
            let service: [u8; 4] = r.array("service identifier")?;
            if service != VISA_SERVICE_ID {
                return Err(bad(
                    file,
                    "service identifier",
                    format!("{}, expected 10100000", hex::encode_upper(service)),
                ));
            }
        }
        let id: [u8; 4] = r.array("issuer identifier")?;
        let issuer_id = IssuerId::from_bytes(id).ok_or_else(|| {
            bad(file, "issuer identifier", format!("{} is not 3-8 digits padded with F", hex::encode_upper(id)))
        })?;
        let key_index: [u8; 3] = r.array("issuer key index")?;
        let exp: [u8; 2] = r.array("expiry")?;
        let expiry = CertExpiry::from_mmyy(exp)
            .ok_or_else(|| bad(file, "expiry", format!("{} is not MMYY", hex::encode_upper(exp))))?;
        let (hash_alg, pk_alg) = (r.byte("hash algorithm")?, r.byte("public key algorithm")?);
        if hash_alg != 0x01 {
            return Err(bad(file, "hash algorithm", format!("{hash_alg:02X}, only 01 (SHA-1)")));
        }
        if pk_alg != 0x01 {
            return Err(bad(file, "public key algorithm", format!("{pk_alg:02X}, only 01 (RSA)")));
        }
        let n = r.byte("modulus length")? as usize;
        let e = r.byte("exponent length")? as usize;
        if e != 1 && e != 3 {
            return Err(bad(file, "exponent length", format!("{e}, expected 1 or 3")));
        }
        let modulus = r.take("issuer public key modulus", n)?;
        let exponent = r.take("issuer public key exponent", e)?;
        let key = RsaPublicKey::new(modulus, exponent).map_err(|e| bad(file, "issuer public key", e.to_string()))?;
        if key.len() != n {
            return Err(bad(file, "issuer public key modulus", format!("{n} bytes with a leading zero")));
        }
        let sig = r.take("self-signature", n)?;
        r.end()?;
        let m = key.recover(REQUEST_BLOCK.field, sig).map_err(|e| bad(file, "self-signature", e.to_string()))?;
        let body = cert::parse_pk_cert(&REQUEST_BLOCK, &m, remainder_of(&m, modulus), exponent, &[])
            .map_err(|e| bad(file, "self-signature", e.to_string()))?;
        let req = IssuerRequest { format, issuer_id, key_index, expiry, key };
        if body.subject_id != id || body.serial != key_index || body.expiry != expiry || body.key != req.key {
            return Err(bad(file, "self-signature", "signs other fields than the request states"));
        }
        Ok(req)
    }

    /// The Mastercard-style hash file of this request's `bytes`: issuer id ‖ key index ‖ SHA-1
    /// of the request before its self-signature.
    pub fn hash_file(&self) -> Vec<u8> {
        let digest = Sha1::digest(self.body());
        [&self.issuer_id.bytes()[..], &self.key_index, &digest].concat()
    }

    /// Checks a hash file received out of band against this request.
    pub fn check_hash_file(&self, hash_file: &[u8]) -> Result<(), CaFileError> {
        let file = "hash file";
        if hash_file.len() != HASH_FILE_LEN {
            return Err(bad(file, "length", format!("{} bytes, expected {HASH_FILE_LEN}", hash_file.len())));
        }
        let want = self.hash_file();
        if hash_file[..4] != want[..4] {
            return Err(bad(
                file,
                "issuer identifier",
                format!("{} but the request says {}", hex::encode_upper(&hash_file[..4]), self.issuer_id),
            ));
        }
        if hash_file[4..7] != want[4..7] {
            return Err(bad(
                file,
                "issuer key index",
                format!(
                    "{} but the request says {}",
                    hex::encode_upper(&hash_file[4..7]),
                    hex::encode_upper(self.key_index)
                ),
            ));
        }
        if hash_file[7..] != want[7..] {
            return Err(bad(
                file,
                "hash",
                "the SHA-1 of the request is not the one in the hash file: the request was changed",
            ));
        }
        Ok(())
    }
}

/// The modulus bytes that do not fit a self-signed block of the key's own length (the "remainder").
fn remainder_of<'a>(block: &[u8], modulus: &'a [u8]) -> &'a [u8] {
    // Header (15 bytes for a 4-byte identifier) and hash + trailer (21) leave n - 36 bytes.
    let room = block.len().saturating_sub(36);
    &modulus[room.min(modulus.len())..]
}

// ---------------------------------------------------------------------------------------------
// Certificates the CA issues, as files
// ---------------------------------------------------------------------------------------------

/// One issued certificate as a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFile {
    pub layout: IssuerFileLayout,
    /// Its conventional name (`<serial>.I<CA index>`, `<BIN>-<key index>.c<CA index>`).
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Signs an Issuer Public Key Certificate (format 02) for `req` with serial `serial` and writes
/// it in the Visa, Mastercard and UnionPay layouts. The CA's raw signer makes the certificate and
/// the detached signatures; everything is recovered again with `ca` before it is returned.
pub fn certificate_files<S: RawRsaSigner + ?Sized>(
    ca_signer: &S,
    ca: &CaPublicKey,
    req: &IssuerRequest,
    serial: [u8; 3],
) -> Result<(IssuerCertificate, Vec<CertFile>), BuildError> {
    let c = cert::build_issuer_certificate(
        ca_signer,
        ca,
        &IssuerCertificateRequest { issuer_id: req.issuer_id, expiry: req.expiry, serial, issuer_key: &req.key },
    )?;
    let recovered = ca
        .public_key()
        .recover("issuer public key certificate", c.cert())
        .map_err(|source| BuildError::SelfCheck { field: "issuer public key certificate", source })?;
    let (serial_hex, index) = (hex::encode_upper(serial), ca.index());
    let mut files = Vec::new();
    for (layout, service) in
        [(IssuerFileLayout::Visa, VISA_SERVICE_ID), (IssuerFileLayout::UnionPay, UNIONPAY_SERVICE_ID)]
    {
        let mut head = vec![VISA_CERT_HEADER];
        head.extend_from_slice(&service);
        head.extend_from_slice(&c.issuer_id().bytes());
        head.extend_from_slice(&serial);
        head.extend_from_slice(&c.expiry().to_mmyy());
        head.push(c.remainder().len() as u8);
        head.extend_from_slice(c.remainder());
        head.push(c.exponent().len() as u8);
        head.extend_from_slice(c.exponent());
        head.push(index);
        let digest = cert::detached_digest(&head, &recovered);
        let field = "detached signature";
        let block = layout.detached_block(ca.public_key().len(), &digest).ok_or(BuildError::Input {
            field,
            reason: format!("a {}-byte CA key is too short for a detached signature", ca.public_key().len()),
        })?;
        let sig = cert::sign_checked(field, ca_signer, ca.public_key(), &block)?;
        let bytes = [head, c.cert().to_vec(), sig].concat();
        files.push(CertFile { layout, name: format!("{serial_hex}.I{index:02X}"), bytes });
    }
    let mut mc = c.issuer_id().bytes().to_vec();
    mc.extend_from_slice(&req.key_index);
    mc.push(index);
    mc.extend_from_slice(c.remainder());
    mc.extend_from_slice(c.exponent());
    mc.extend_from_slice(c.cert());
    let bin: String = c.issuer_id().digits().chars().chain(std::iter::repeat('0')).take(6).collect();
    let name = format!("{bin}-{}.c{index:02X}", hex::encode_upper(req.key_index));
    files.push(CertFile { layout: IssuerFileLayout::Mastercard, name, bytes: mc });
    Ok((c, files))
}

// ---------------------------------------------------------------------------------------------
// The CA's public key, as files
// ---------------------------------------------------------------------------------------------

/// The CA public key files an issuer or acquirer is handed: a Visa-style file (`20` header,
/// with the check value) and a Mastercard-style pair (the key, and a hash file holding the check
/// value to compare out of band). Names and bytes.
pub fn ca_key_files(ca: &CaPublicKey, expiry: CertExpiry) -> Vec<(String, Vec<u8>)> {
    let k = ca.public_key();
    let (rid, index) = (ca.rid(), ca.index());
    let stem = format!("{}-{index:02X}", hex::encode_upper(rid));
    let mut key = Vec::new();
    key.extend_from_slice(&rid);
    key.push(index);
    key.extend_from_slice(&expiry.to_mmyy());
    key.extend_from_slice(&[0x01, 0x01, k.len() as u8]);
    key.extend_from_slice(k.modulus());
    key.push(k.exponent().len() as u8);
    key.extend_from_slice(k.exponent());
    let visa = [&[VISA_CA_KEY_HEADER][..], &VISA_SERVICE_ID, &key, &ca.checksum()].concat();
    let hash = [&rid[..], &[index], &ca.checksum()].concat();
    vec![(format!("{stem}.visa"), visa), (format!("{stem}.mc.key"), key), (format!("{stem}.mc.hash"), hash)]
}

/// Reads a CA key file ([`ca_key_files`]: the Visa-style file, or the Mastercard-style key file
/// with its hash file) and checks the check value.
pub fn parse_ca_key_file(bytes: &[u8], hash_file: Option<&[u8]>) -> Result<(CaPublicKey, CertExpiry), CaFileError> {
    let visa = bytes.first() == Some(&VISA_CA_KEY_HEADER) && hash_file.is_none();
    let file = if visa { "CA key file (Visa layout)" } else { "CA key file (Mastercard layout)" };
    let mut r = Reader { file, data: bytes, pos: 0 };
    if visa {
        r.byte("header")?;
        let service: [u8; 4] = r.array("service identifier")?;
        if service != VISA_SERVICE_ID {
            return Err(bad(file, "service identifier", format!("{}, expected 10100000", hex::encode_upper(service))));
        }
    }
    let rid: Rid = r.array("RID")?;
    let index = r.byte("CA public key index")?;
    let exp: [u8; 2] = r.array("expiry")?;
    let expiry = CertExpiry::from_mmyy(exp)
        .ok_or_else(|| bad(file, "expiry", format!("{} is not MMYY", hex::encode_upper(exp))))?;
    let (h, a) = (r.byte("hash algorithm")?, r.byte("public key algorithm")?);
    if (h, a) != (1, 1) {
        return Err(bad(file, "algorithms", format!("{h:02X} {a:02X}, expected 01 01 (SHA-1, RSA)")));
    }
    let n = r.byte("modulus length")? as usize;
    let modulus = r.take("modulus", n)?;
    let e = r.byte("exponent length")? as usize;
    let exponent = r.take("exponent", e)?;
    let checksum: [u8; 20] = match hash_file {
        None => r.array("check value")?,
        Some(h) => {
            let mut hr = Reader { file: "CA key hash file", data: h, pos: 0 };
            let (hrid, hidx): (Rid, u8) = (hr.array("RID")?, hr.byte("CA public key index")?);
            if hrid != rid || hidx != index {
                return Err(bad("CA key hash file", "RID and index", "name another key than the key file"));
            }
            let c = hr.array("check value")?;
            hr.end()?;
            c
        }
    };
    r.end()?;
    let key = CaPublicKey::with_checksum(rid, index, modulus, exponent, &checksum)
        .map_err(|e| bad(file, "check value", e.to_string()))?;
    Ok((key, expiry))
}

// ---------------------------------------------------------------------------------------------
// Revocation lists
// ---------------------------------------------------------------------------------------------

/// A revoked issuer certificate, as a terminal's revocation list holds it: RID ‖ CA index ‖
/// certificate serial (9 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revocation {
    pub rid: Rid,
    pub ca_index: u8,
    pub serial: [u8; 3],
}

impl Revocation {
    pub const LEN: usize = 9;

    pub fn bytes(&self) -> [u8; 9] {
        let mut b = [0; 9];
        b[..5].copy_from_slice(&self.rid);
        b[5] = self.ca_index;
        b[6..].copy_from_slice(&self.serial);
        b
    }

    /// A list of 9-byte entries (no header); duplicates are refused, naming the entry.
    pub fn parse_list(bytes: &[u8]) -> Result<Vec<Revocation>, CaFileError> {
        let file = "revocation list";
        if !bytes.len().is_multiple_of(Self::LEN) {
            return Err(bad(file, "length", format!("{} bytes is not a whole number of 9-byte entries", bytes.len())));
        }
        let mut out: Vec<Revocation> = Vec::with_capacity(bytes.len() / Self::LEN);
        // Linear: a hostile list of a few megabytes is not a quadratic stall.
        let mut seen = std::collections::HashSet::with_capacity(bytes.len() / Self::LEN);
        for (i, e) in bytes.chunks_exact(Self::LEN).enumerate() {
            let r = Revocation {
                rid: e[..5].try_into().unwrap_or_default(),
                ca_index: e[5],
                serial: e[6..].try_into().unwrap_or_default(),
            };
            if !seen.insert(r) {
                return Err(bad(file, "entry", format!("entry {} ({}) is listed twice", i + 1, hex::encode_upper(e))));
            }
            out.push(r);
        }
        Ok(out)
    }

    pub fn format_list(list: &[Revocation]) -> Vec<u8> {
        list.iter().flat_map(|r| r.bytes()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Issuer identifier ranges a CA key certifies
// ---------------------------------------------------------------------------------------------

/// A range of issuer identifiers: `LOW-HIGH` (digit strings of one length) or one prefix. An
/// issuer identifier is inside when its first digits (as many as the range's) are within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRange {
    pub low: String,
    pub high: String,
}

impl IssuerRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (low, high) = s.split_once('-').unwrap_or((s, s));
        let ok = |d: &str| (3..=8).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit());
        if !ok(low) || !ok(high) || low.len() != high.len() || low > high {
            return Err(format!(
                "issuer range {s:?}: LOW-HIGH of 3-8 digits each, same length, LOW <= HIGH (or one prefix)"
            ));
        }
        Ok(Self { low: low.into(), high: high.into() })
    }

    pub fn contains(&self, id: IssuerId) -> bool {
        let d = id.digits();
        d.len() >= self.low.len() && (self.low.as_str()..=self.high.as_str()).contains(&&d[..self.low.len()])
    }
}

impl fmt::Display for IssuerRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high { f.write_str(&self.low) } else { write!(f, "{}-{}", self.low, self.high) }
    }
}

//! Cryptographic operations: mechanism + key → state machine for the multi-part API, and the
//! one-shot key operations (generate, wrap, unwrap, derive). Pure: no sessions, no storage.

use crate::attr::{Attribute, decode_bool, template_to_map};
use crate::error::{Error, Result};
use crate::mechanism::*;
use crate::object::{Material, Object, fixed_key_len};
use cryptoki_sys::*;
use quill_crypto::digest::{HashAlg, Hasher, HmacState};
use quill_crypto::payment::{self, Ibm3624Params, PinBlockFormat};
use quill_crypto::sym;
use quill_crypto::tr31::{self, Exportability, Kbpk, ModeOfUse, Tr31Error, Tr31Header};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The function an operation serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// C_Encrypt*.
    Encrypt,
    /// C_Decrypt*.
    Decrypt,
    /// C_Digest*.
    Digest,
    /// C_Sign*.
    Sign,
    /// C_Verify*.
    Verify,
    /// C_SignRecover.
    SignRecover,
    /// C_VerifyRecover.
    VerifyRecover,
}

impl Kind {
    fn usage(self) -> CK_ATTRIBUTE_TYPE {
        match self {
            Kind::Encrypt => CKA_ENCRYPT,
            Kind::Decrypt => CKA_DECRYPT,
            Kind::Sign => CKA_SIGN,
            Kind::Verify => CKA_VERIFY,
            Kind::SignRecover => CKA_SIGN_RECOVER,
            Kind::VerifyRecover => CKA_VERIFY_RECOVER,
            Kind::Digest => 0,
        }
    }
    fn flag(self) -> CK_FLAGS {
        match self {
            Kind::Encrypt => CKF_ENCRYPT,
            Kind::Decrypt => CKF_DECRYPT,
            Kind::Sign => CKF_SIGN,
            Kind::Verify => CKF_VERIFY,
            Kind::SignRecover => CKF_SIGN_RECOVER,
            Kind::VerifyRecover => CKF_VERIFY_RECOVER,
            Kind::Digest => CKF_DIGEST,
        }
    }
}

/// Looks up another object by handle (for vendor mechanisms naming a second key).
pub type Resolver<'a> = &'a dyn Fn(CK_OBJECT_HANDLE) -> Result<Arc<Object>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockAlg {
    Des3,
    Aes,
}

impl BlockAlg {
    fn size(self) -> usize {
        match self {
            BlockAlg::Des3 => 8,
            BlockAlg::Aes => 16,
        }
    }
}

struct BlockStream {
    alg: BlockAlg,
    key: Arc<Zeroizing<Vec<u8>>>,
    iv: Option<Vec<u8>>,
    encrypt: bool,
    pad: bool,
    buf: Zeroizing<Vec<u8>>,
}

impl BlockStream {
    fn process(&mut self, chunk: &[u8]) -> Result<Vec<u8>> {
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        let k = self.key.as_slice();
        let out = match (&self.iv, self.alg, self.encrypt) {
            (None, BlockAlg::Des3, true) => sym::des3_ecb_encrypt(k, chunk)?,
            (None, BlockAlg::Des3, false) => sym::des3_ecb_decrypt(k, chunk)?,
            (None, BlockAlg::Aes, true) => sym::aes_ecb_encrypt(k, chunk)?,
            (None, BlockAlg::Aes, false) => sym::aes_ecb_decrypt(k, chunk)?,
            (Some(iv), BlockAlg::Des3, true) => sym::des3_cbc_encrypt(k, iv, chunk)?,
            (Some(iv), BlockAlg::Des3, false) => sym::des3_cbc_decrypt(k, iv, chunk)?,
            (Some(iv), BlockAlg::Aes, true) => sym::aes_cbc_encrypt(k, iv, chunk)?,
            (Some(iv), BlockAlg::Aes, false) => sym::aes_cbc_decrypt(k, iv, chunk)?,
        };
        if self.iv.is_some() {
            let bs = self.alg.size();
            let last = if self.encrypt { &out[out.len() - bs..] } else { &chunk[chunk.len() - bs..] };
            self.iv = Some(last.to_vec());
        }
        Ok(out)
    }

    fn update(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        self.buf.extend_from_slice(data);
        let bs = self.alg.size();
        let mut n = self.buf.len() / bs * bs;
        if !self.encrypt && self.pad && n == self.buf.len() && n > 0 {
            n -= bs; // keep the last block: it carries the padding
        }
        let chunk: Zeroizing<Vec<u8>> = Zeroizing::new(self.buf.drain(..n).collect());
        self.process(&chunk)
    }

    fn finish(&mut self) -> Result<Vec<u8>> {
        let bs = self.alg.size();
        let rest = Zeroizing::new(std::mem::take(&mut *self.buf));
        if self.encrypt {
            if self.pad {
                let padded = Zeroizing::new(sym::pkcs7_pad(&rest, bs));
                self.process(&padded)
            } else if rest.is_empty() {
                Ok(Vec::new())
            } else {
                Err(Error::new(CKR_DATA_LEN_RANGE, format!("data is not a multiple of {bs} bytes")))
            }
        } else if self.pad {
            if rest.len() != bs {
                return Err(Error::new(
                    CKR_ENCRYPTED_DATA_LEN_RANGE,
                    format!("ciphertext is not a multiple of {bs} bytes"),
                ));
            }
            let pt = Zeroizing::new(self.process(&rest)?);
            sym::pkcs7_unpad(&pt, bs).map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID, "bad padding"))
        } else if rest.is_empty() {
            Ok(Vec::new())
        } else {
            Err(Error::new(CKR_ENCRYPTED_DATA_LEN_RANGE, format!("ciphertext is not a multiple of {bs} bytes")))
        }
    }
}

enum Vendor {
    Pvv {
        pin_key: Arc<Object>,
        fmt: PinBlockFormat,
        pvki: u8,
        pan: String,
    },
    Ibm {
        pin_key: Arc<Object>,
        fmt: PinBlockFormat,
        params: Ibm3624Params,
        pan: String,
    },
    PinGenerate {
        pvk: Option<Arc<Object>>,
        method: u8,
        fmt: PinBlockFormat,
        len: usize,
        exclude_weak: bool,
        pvki: u8,
        params: Ibm3624Params,
        pan: String,
    },
    PinTranslate {
        src_key: Arc<Object>,
        src_fmt: PinBlockFormat,
        dst_fmt: PinBlockFormat,
        pan: String,
    },
}

enum State {
    Stream(BlockStream),
    Hash(Hasher),
    HashSign(Hasher, HashAlg),
    Hmac(HmacState),
    Buffer(Zeroizing<Vec<u8>>),
}

/// An active multi-part operation.
pub struct Operation {
    /// Function.
    pub kind: Kind,
    mech: Mechanism,
    key: Option<Arc<Object>>,
    state: State,
    vendor: Option<Vendor>,
    /// Output computed for a length query or short buffer, returned by the next call.
    pub pending: Option<Vec<u8>>,
}

fn hash_of(mech: CK_MECHANISM_TYPE) -> Result<HashAlg> {
    Ok(match mech {
        CKM_SHA_1 | CKM_SHA1_RSA_PKCS | CKM_SHA_1_HMAC => HashAlg::Sha1,
        CKM_SHA224 | CKM_SHA224_RSA_PKCS | CKM_SHA224_HMAC => HashAlg::Sha224,
        CKM_SHA256 | CKM_SHA256_RSA_PKCS | CKM_SHA256_HMAC => HashAlg::Sha256,
        CKM_SHA384 | CKM_SHA384_RSA_PKCS | CKM_SHA384_HMAC => HashAlg::Sha384,
        CKM_SHA512 | CKM_SHA512_RSA_PKCS | CKM_SHA512_HMAC => HashAlg::Sha512,
        _ => return Err(Error::param(format!("no hash for mechanism 0x{mech:X}"))),
    })
}

fn mgf_hash(mgf: CK_RSA_PKCS_MGF_TYPE) -> Result<HashAlg> {
    Ok(match mgf {
        CKG_MGF1_SHA1 => HashAlg::Sha1,
        CKG_MGF1_SHA224 => HashAlg::Sha224,
        CKG_MGF1_SHA256 => HashAlg::Sha256,
        CKG_MGF1_SHA384 => HashAlg::Sha384,
        CKG_MGF1_SHA512 => HashAlg::Sha512,
        _ => return Err(Error::param(format!("MGF 0x{mgf:X} not supported"))),
    })
}

fn pin_format(b: u8) -> Result<PinBlockFormat> {
    Ok(match b {
        0 => PinBlockFormat::Iso0,
        1 => PinBlockFormat::Iso1,
        2 => PinBlockFormat::Iso2,
        3 => PinBlockFormat::Iso3,
        4 => PinBlockFormat::Iso4,
        _ => return Err(Error::param(format!("PIN block format {b} not supported (0..4)"))),
    })
}

/// Require a secret key of one of the given types.
pub fn secret_of(key: &Object, types: &[CK_KEY_TYPE]) -> Result<Arc<Zeroizing<Vec<u8>>>> {
    if key.class() != CKO_SECRET_KEY || !key.key_type().is_some_and(|t| types.contains(&t)) {
        return Err(Error::new(
            CKR_KEY_TYPE_INCONSISTENT,
            format!("key {} has the wrong type for this mechanism", key.handle),
        ));
    }
    match &key.material {
        Material::Secret(v) => Ok(v.clone()),
        _ => Err(Error::new(CKR_USER_NOT_LOGGED_IN, format!("key {} is not available: log in first", key.handle))),
    }
}

const TDES: &[CK_KEY_TYPE] = &[CKK_DES2, CKK_DES3];
const AES: &[CK_KEY_TYPE] = &[CKK_AES];

fn require_rsa(key: &Object, private: bool) -> Result<()> {
    let want = if private { CKO_PRIVATE_KEY } else { CKO_PUBLIC_KEY };
    if key.key_type() != Some(CKK_RSA) || key.class() != want {
        return Err(Error::new(
            CKR_KEY_TYPE_INCONSISTENT,
            format!("key {} must be an RSA {} key", key.handle, if private { "private" } else { "public" }),
        ));
    }
    if matches!(key.material, Material::None) {
        return Err(Error::new(CKR_USER_NOT_LOGGED_IN, format!("key {} is not available: log in first", key.handle)));
    }
    Ok(())
}

fn pin_key_types(fmt: PinBlockFormat) -> &'static [CK_KEY_TYPE] {
    if fmt == PinBlockFormat::Iso4 { AES } else { TDES }
}

fn ibm_params(r: &mut ParamReader<'_>) -> Result<Ibm3624Params> {
    let table = r.bytes(16, "decimalisation table")?;
    if !table.iter().all(u8::is_ascii_digit) {
        return Err(Error::param("decimalisation table must be 16 ASCII digits"));
    }
    let mut decimalisation = [0u8; 16];
    decimalisation.copy_from_slice(table);
    let start = r.u8("validation start")? as usize;
    let length = r.u8("validation length")? as usize;
    let pad = r.u8("pad")?;
    if pad > 15 || length == 0 || length > 16 {
        return Err(Error::param("IBM 3624: pad must be 0..15 and length 1..16"));
    }
    Ok(Ibm3624Params { decimalisation, start, length, pad })
}

fn check_pvki(pvki: u8) -> Result<u8> {
    if pvki > 9 {
        return Err(Error::param(format!("PVKI must be a digit 0..9, got {pvki}")));
    }
    Ok(pvki)
}

fn check_validation_range(p: &Ibm3624Params, pan: &str) -> Result<()> {
    if p.start + p.length > pan.len() {
        return Err(Error::param(format!(
            "IBM 3624 validation data {}..{} runs past the {}-digit PAN",
            p.start,
            p.start + p.length,
            pan.len()
        )));
    }
    Ok(())
}

impl Operation {
    /// Start an operation; checks mechanism, key type, key usage and parameters.
    pub fn init(kind: Kind, mech: &Mechanism, key: Option<Arc<Object>>, resolve: Resolver<'_>) -> Result<Self> {
        require(mech.mech, kind.flag())?;
        if let Some(k) = &key
            && kind != Kind::Digest
        {
            k.require(kind.usage())?;
        }
        let keyref = || key.as_deref().ok_or_else(|| Error::new(CKR_KEY_HANDLE_INVALID, "no key"));
        let enc = matches!(kind, Kind::Encrypt);
        let mut vendor = None;
        let state = match mech.mech {
            CKM_SHA_1 | CKM_SHA224 | CKM_SHA256 | CKM_SHA384 | CKM_SHA512 => {
                State::Hash(Hasher::new(hash_of(mech.mech)?))
            }
            CKM_DES3_ECB | CKM_DES3_CBC | CKM_DES3_CBC_PAD | CKM_AES_ECB | CKM_AES_CBC | CKM_AES_CBC_PAD => {
                let aes = matches!(mech.mech, CKM_AES_ECB | CKM_AES_CBC | CKM_AES_CBC_PAD);
                let alg = if aes { BlockAlg::Aes } else { BlockAlg::Des3 };
                let k = secret_of(keyref()?, if aes { AES } else { TDES })?;
                let iv = if matches!(mech.mech, CKM_DES3_ECB | CKM_AES_ECB) {
                    None
                } else {
                    let iv = mech.param.raw();
                    if iv.len() != alg.size() {
                        return Err(Error::param(format!("IV must be {} bytes", alg.size())));
                    }
                    Some(iv.to_vec())
                };
                State::Stream(BlockStream {
                    alg,
                    key: k,
                    iv,
                    encrypt: enc,
                    pad: matches!(mech.mech, CKM_DES3_CBC_PAD | CKM_AES_CBC_PAD),
                    buf: Zeroizing::new(Vec::new()),
                })
            }
            CKM_SHA1_RSA_PKCS | CKM_SHA224_RSA_PKCS | CKM_SHA256_RSA_PKCS | CKM_SHA384_RSA_PKCS
            | CKM_SHA512_RSA_PKCS => {
                require_rsa(keyref()?, kind == Kind::Sign)?;
                let h = hash_of(mech.mech)?;
                State::HashSign(Hasher::new(h), h)
            }
            CKM_SHA_1_HMAC | CKM_SHA256_HMAC | CKM_SHA384_HMAC | CKM_SHA512_HMAC => {
                let k = secret_of(
                    keyref()?,
                    &[CKK_GENERIC_SECRET, CKK_SHA_1_HMAC, CKK_SHA256_HMAC, CKK_SHA384_HMAC, CKK_SHA512_HMAC, CKK_AES],
                )?;
                let h = hash_of(mech.mech)?;
                State::Hmac(HmacState::new(h, &k)?)
            }
            CKM_RSA_PKCS | CKM_RSA_X_509 | CKM_RSA_PKCS_OAEP => {
                let private = matches!(kind, Kind::Decrypt | Kind::Sign | Kind::SignRecover);
                require_rsa(keyref()?, private)?;
                if let MechParam::Oaep { hash, mgf, .. } = &mech.param {
                    hash_of(*hash)?;
                    mgf_hash(*mgf)?;
                } else if mech.mech == CKM_RSA_PKCS_OAEP {
                    return Err(Error::param("CKM_RSA_PKCS_OAEP needs CK_RSA_PKCS_OAEP_PARAMS"));
                }
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_AES_GCM => {
                secret_of(keyref()?, AES)?;
                let MechParam::Gcm { iv, tag_bits, .. } = &mech.param else {
                    return Err(Error::param("CKM_AES_GCM needs CK_GCM_PARAMS"));
                };
                if iv.is_empty() || *tag_bits % 8 != 0 || !(96..=128).contains(tag_bits) {
                    return Err(Error::param("GCM: IV must be non-empty and the tag 96..128 bits"));
                }
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP | CKM_AES_CMAC | CKM_AES_CMAC_GENERAL => {
                secret_of(keyref()?, AES)?;
                if mech.mech == CKM_AES_CMAC_GENERAL {
                    cmac_general_len(&mech.param, 16)?;
                }
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_DES3_MAC | CKM_DES3_CMAC => {
                secret_of(keyref()?, TDES)?;
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_QUILL_CVV | CKM_QUILL_DES3_RETAIL_MAC => {
                secret_of(keyref()?, &[CKK_DES2])?;
                if mech.mech == CKM_QUILL_DES3_RETAIL_MAC && !matches!(mech.param.raw(), [] | [1] | [2]) {
                    return Err(Error::param(
                        "retail MAC parameter: empty, or one byte 1 or 2 (ISO 9797-1 padding method)",
                    ));
                }
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_QUILL_VISA_PVV | CKM_QUILL_IBM3624_OFFSET => {
                secret_of(keyref()?, TDES)?;
                let what =
                    if mech.mech == CKM_QUILL_VISA_PVV { "CK_QUILL_PVV_PARAMS" } else { "CK_QUILL_IBM3624_PARAMS" };
                let mut r = ParamReader::new(mech.param.raw(), what);
                let pin_key = resolve(r.ulong("hPinKey")?)?;
                let fmt = pin_format(r.u8("format")?)?;
                secret_of(&pin_key, pin_key_types(fmt))?;
                pin_key.require(CKA_DECRYPT)?;
                vendor = Some(if mech.mech == CKM_QUILL_VISA_PVV {
                    let pvki = check_pvki(r.u8("pvki")?)?;
                    let pan = r.digits("pan", 12, 19)?;
                    r.end()?;
                    Vendor::Pvv { pin_key, fmt, pvki, pan }
                } else {
                    let params = ibm_params(&mut r)?;
                    let pan = r.digits("pan", 12, 19)?;
                    r.end()?;
                    check_validation_range(&params, &pan)?;
                    Vendor::Ibm { pin_key, fmt, params, pan }
                });
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_QUILL_PIN_GENERATE => {
                let mut r = ParamReader::new(mech.param.raw(), "CK_QUILL_PIN_GENERATE_PARAMS");
                let hpvk = r.ulong("hPvk")?;
                let method = r.u8("method")?;
                let fmt = pin_format(r.u8("format")?)?;
                secret_of(keyref()?, pin_key_types(fmt))?;
                let len = r.u8("pinLength")? as usize;
                let exclude_weak = r.u8("excludeWeak")? != 0;
                let pvki = r.u8("pvki")?;
                let params = ibm_params(&mut r)?;
                let pan = r.digits("pan", 12, 19)?;
                r.end()?;
                match method {
                    1 => {
                        check_pvki(pvki)?;
                    }
                    2 => check_validation_range(&params, &pan)?,
                    _ => {}
                }
                if !(4..=12).contains(&len) {
                    return Err(Error::param("PIN length must be 4..12"));
                }
                let pvk = match method {
                    0 => None,
                    1 | 2 => {
                        let k = resolve(hpvk)?;
                        secret_of(&k, TDES)?;
                        k.require(CKA_SIGN)?;
                        Some(k)
                    }
                    _ => return Err(Error::param("method must be 0 (none), 1 (Visa PVV) or 2 (IBM 3624 offset)")),
                };
                vendor = Some(Vendor::PinGenerate { pvk, method, fmt, len, exclude_weak, pvki, params, pan });
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_QUILL_PIN_TRANSLATE => {
                let mut r = ParamReader::new(mech.param.raw(), "CK_QUILL_PIN_TRANSLATE_PARAMS");
                let src_key = resolve(r.ulong("hSourceKey")?)?;
                let src_fmt = pin_format(r.u8("sourceFormat")?)?;
                let dst_fmt = pin_format(r.u8("destinationFormat")?)?;
                let pan = r.digits("pan", 12, 19)?;
                r.end()?;
                secret_of(&src_key, pin_key_types(src_fmt))?;
                src_key.require(CKA_DECRYPT)?;
                secret_of(keyref()?, pin_key_types(dst_fmt))?;
                vendor = Some(Vendor::PinTranslate { src_key, src_fmt, dst_fmt, pan });
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            m => {
                return Err(Error::new(
                    CKR_MECHANISM_INVALID,
                    format!("mechanism 0x{m:X} cannot be used for this function"),
                ));
            }
        };
        Ok(Operation { kind, mech: mech.clone(), key, state, vendor, pending: None })
    }

    /// Feed data; returns output produced now (stream ciphers only).
    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        match &mut self.state {
            State::Stream(s) => s.update(data),
            State::Hash(h) | State::HashSign(h, _) => {
                h.update(data);
                Ok(Vec::new())
            }
            State::Hmac(h) => {
                h.update(data);
                Ok(Vec::new())
            }
            State::Buffer(b) => {
                if matches!(self.kind, Kind::Encrypt | Kind::Decrypt) && !matches!(self.mech.mech, CKM_AES_GCM) {
                    return Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only"));
                }
                b.extend_from_slice(data);
                Ok(Vec::new())
            }
        }
    }

    fn key(&self) -> Result<&Object> {
        self.key.as_deref().ok_or_else(|| Error::new(CKR_KEY_HANDLE_INVALID, "no key"))
    }

    /// Finish: the output (ciphertext, plaintext, digest, signature, MAC, vendor value).
    pub fn finish(&mut self) -> Result<Vec<u8>> {
        let state = std::mem::replace(&mut self.state, State::Buffer(Zeroizing::new(Vec::new())));
        match state {
            State::Stream(mut s) => s.finish(),
            State::Hash(h) => Ok(h.finalize()),
            State::Hmac(h) => Ok(h.finalize()),
            State::HashSign(h, alg) => {
                let mut di = alg.digest_info_prefix().to_vec();
                di.extend_from_slice(&h.finalize());
                Ok(self.key()?.rsa_engine()?.pkcs1_sign(&di)?)
            }
            State::Buffer(data) => self.finish_buffer(&data),
        }
    }

    fn finish_buffer(&self, data: &[u8]) -> Result<Vec<u8>> {
        let key = self.key()?;
        let m = self.mech.mech;
        match (self.kind, m) {
            (Kind::Encrypt, CKM_RSA_PKCS) => Ok(key.rsa_engine()?.pkcs1_encrypt(data)?),
            (Kind::Decrypt, CKM_RSA_PKCS) => Ok(key
                .rsa_engine()?
                .pkcs1_decrypt(data)
                .map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID, "decryption failed"))?
                .to_vec()),
            (Kind::Encrypt | Kind::VerifyRecover, CKM_RSA_X_509) => {
                let e = key.rsa_engine()?;
                if self.kind == Kind::VerifyRecover && data.len() != e.modulus_len() {
                    return Err(Error::new(CKR_SIGNATURE_LEN_RANGE, "signature length differs from the modulus"));
                }
                Ok(e.raw_public(data)?)
            }
            (Kind::Decrypt | Kind::Sign | Kind::SignRecover, CKM_RSA_X_509) => {
                let e = key.rsa_engine()?;
                if data.len() > e.modulus_len() {
                    return Err(Error::new(CKR_DATA_LEN_RANGE, "input longer than the modulus"));
                }
                e.raw_private(data).map_err(|_| Error::new(CKR_DATA_INVALID, "input is not smaller than the modulus"))
            }
            (Kind::Sign | Kind::SignRecover, CKM_RSA_PKCS) => {
                let e = key.rsa_engine()?;
                if data.len() + 11 > e.modulus_len() {
                    return Err(Error::new(CKR_DATA_LEN_RANGE, "input too long for PKCS#1 v1.5"));
                }
                Ok(e.pkcs1_sign(data)?)
            }
            (Kind::VerifyRecover, CKM_RSA_PKCS) => {
                let e = key.rsa_engine()?;
                if data.len() != e.modulus_len() {
                    return Err(Error::new(CKR_SIGNATURE_LEN_RANGE, "signature length differs from the modulus"));
                }
                let em = e.raw_public(data)?;
                // EMSA-PKCS1-v1_5: 00 01 FF.. 00 M
                match (em.first(), em.get(1)) {
                    (Some(0), Some(1)) => {}
                    _ => return Err(Error::new(CKR_SIGNATURE_INVALID, "not a PKCS#1 v1.5 signature")),
                }
                let sep = em.iter().skip(2).position(|b| *b != 0xFF).map(|i| i + 2);
                match sep {
                    Some(i) if em[i] == 0 && i >= 10 => Ok(em[i + 1..].to_vec()),
                    _ => Err(Error::new(CKR_SIGNATURE_INVALID, "not a PKCS#1 v1.5 signature")),
                }
            }
            (Kind::Encrypt | Kind::Decrypt, CKM_RSA_PKCS_OAEP) => {
                let MechParam::Oaep { hash, mgf, label } = &self.mech.param else {
                    return Err(Error::param("OAEP params"));
                };
                let (h, g) = (hash_of(*hash)?, mgf_hash(*mgf)?);
                let e = key.rsa_engine()?;
                if self.kind == Kind::Encrypt {
                    Ok(e.oaep_encrypt(h, g, label, data)?)
                } else {
                    Ok(e.oaep_decrypt(h, g, label, data)
                        .map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID, "decryption failed"))?
                        .to_vec())
                }
            }
            (Kind::Encrypt | Kind::Decrypt, CKM_AES_GCM) => {
                let MechParam::Gcm { iv, aad, tag_bits } = &self.mech.param else {
                    return Err(Error::param("GCM params"));
                };
                let k = secret_of(key, AES)?;
                let tl = (*tag_bits / 8) as usize;
                if self.kind == Kind::Encrypt {
                    Ok(sym::aes_gcm_encrypt(&k, iv, aad, data, tl)?)
                } else {
                    Ok(sym::aes_gcm_decrypt(&k, iv, aad, data, tl)
                        .map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID, "GCM authentication failed"))?
                        .to_vec())
                }
            }
            (Kind::Encrypt, CKM_AES_KEY_WRAP) => Ok(sym::aes_key_wrap(&secret_of(key, AES)?, data)?),
            (Kind::Decrypt, CKM_AES_KEY_WRAP) => {
                Ok(sym::aes_key_unwrap(&secret_of(key, AES)?, data).map_err(unwrap_err)?.to_vec())
            }
            (Kind::Encrypt, CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP) => {
                Ok(sym::aes_key_wrap_pad(&secret_of(key, AES)?, data)?)
            }
            (Kind::Decrypt, CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP) => {
                Ok(sym::aes_key_unwrap_pad(&secret_of(key, AES)?, data).map_err(unwrap_err)?.to_vec())
            }
            (Kind::Sign | Kind::Verify, CKM_AES_CMAC) => Ok(sym::aes_cmac(&secret_of(key, AES)?, data)?.to_vec()),
            (Kind::Sign | Kind::Verify, CKM_AES_CMAC_GENERAL) => {
                let l = cmac_general_len(&self.mech.param, 16)?;
                Ok(sym::aes_cmac(&secret_of(key, AES)?, data)?[..l].to_vec())
            }
            (Kind::Sign | Kind::Verify, CKM_DES3_CMAC) => Ok(sym::des3_cmac(&secret_of(key, TDES)?, data)?.to_vec()),
            (Kind::Sign | Kind::Verify, CKM_DES3_MAC) => {
                let mut d = data.to_vec();
                while d.is_empty() || !d.len().is_multiple_of(8) {
                    d.push(0);
                }
                Ok(sym::des3_cbc_mac(&secret_of(key, TDES)?, &d)?[..4].to_vec())
            }
            (Kind::Sign | Kind::Verify, CKM_QUILL_DES3_RETAIL_MAC) => {
                let pad =
                    if self.mech.param.raw() == [1] { sym::MacPadding::Method1 } else { sym::MacPadding::Method2 };
                Ok(sym::retail_mac(&secret_of(key, &[CKK_DES2])?, data, pad)?.to_vec())
            }
            (Kind::Sign, CKM_QUILL_CVV) => {
                let s = std::str::from_utf8(data)
                    .map_err(|_| Error::new(CKR_DATA_INVALID, "CVV input must be ASCII digits"))?;
                if s.len() < 19 || s.len() > 26 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::new(
                        CKR_DATA_INVALID,
                        "CVV input must be PAN(12..19) ‖ YYMM ‖ service code, ASCII digits",
                    ));
                }
                let (pan, rest) = s.split_at(s.len() - 7);
                Ok(payment::cvv(&secret_of(key, &[CKK_DES2])?, pan, &rest[..4], &rest[4..])?.into_bytes())
            }
            (Kind::Sign, CKM_QUILL_VISA_PVV) => {
                let Some(Vendor::Pvv { pin_key, fmt, pvki, pan }) = &self.vendor else {
                    return Err(Error::general("PVV state"));
                };
                let pin = payment::decrypt_pin_block(*fmt, &secret_of(pin_key, pin_key_types(*fmt))?, data, pan)
                    .map_err(|_| Error::new(CKR_DATA_INVALID, "PIN block does not decrypt to a valid PIN"))?;
                Ok(payment::visa_pvv(&secret_of(key, TDES)?, pan, *pvki, &pin[..4.min(pin.len())])?.into_bytes())
            }
            (Kind::Sign, CKM_QUILL_IBM3624_OFFSET) => {
                let Some(Vendor::Ibm { pin_key, fmt, params, pan }) = &self.vendor else {
                    return Err(Error::general("IBM state"));
                };
                let pin = payment::decrypt_pin_block(*fmt, &secret_of(pin_key, pin_key_types(*fmt))?, data, pan)
                    .map_err(|_| Error::new(CKR_DATA_INVALID, "PIN block does not decrypt to a valid PIN"))?;
                Ok(payment::ibm3624_offset(&secret_of(key, TDES)?, pan, params, &pin)?.into_bytes())
            }
            (Kind::Encrypt, CKM_QUILL_PIN_GENERATE) => {
                let Some(Vendor::PinGenerate { pvk, method, fmt, len, exclude_weak, pvki, params, pan }) = &self.vendor
                else {
                    return Err(Error::general("PIN generate state"));
                };
                if !data.is_empty() {
                    return Err(Error::new(CKR_DATA_LEN_RANGE, "PIN generation takes no input data"));
                }
                let pin = payment::random_pin(*len, *exclude_weak)?;
                let mut out = payment::encrypt_pin_block(*fmt, &secret_of(key, pin_key_types(*fmt))?, &pin, pan)?;
                match (method, pvk) {
                    (1, Some(k)) => out
                        .extend_from_slice(payment::visa_pvv(&secret_of(k, TDES)?, pan, *pvki, &pin[..4])?.as_bytes()),
                    (2, Some(k)) => out.extend_from_slice(
                        payment::ibm3624_offset(&secret_of(k, TDES)?, pan, params, &pin)?.as_bytes(),
                    ),
                    _ => {}
                }
                Ok(out)
            }
            (Kind::Encrypt, CKM_QUILL_PIN_TRANSLATE) => {
                let Some(Vendor::PinTranslate { src_key, src_fmt, dst_fmt, pan }) = &self.vendor else {
                    return Err(Error::general("PIN translate state"));
                };
                let pin =
                    payment::decrypt_pin_block(*src_fmt, &secret_of(src_key, pin_key_types(*src_fmt))?, data, pan)
                        .map_err(|_| Error::new(CKR_DATA_INVALID, "PIN block does not decrypt to a valid PIN"))?;
                Ok(payment::encrypt_pin_block(*dst_fmt, &secret_of(key, pin_key_types(*dst_fmt))?, &pin, pan)?)
            }
            _ => Err(Error::new(CKR_MECHANISM_INVALID, format!("mechanism 0x{m:X} cannot be used for this function"))),
        }
    }

    /// Single-part call: all the data at once, then finish.
    pub fn run(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        if let State::Buffer(b) = &mut self.state {
            b.extend_from_slice(data);
            return self.finish();
        }
        let mut out = self.update(data)?;
        out.extend(self.finish()?);
        Ok(out)
    }

    /// Single-part verification.
    pub fn verify_run(&mut self, data: &[u8], sig: &[u8]) -> Result<()> {
        match &mut self.state {
            State::Buffer(b) => b.extend_from_slice(data),
            _ => {
                self.update(data)?;
            }
        }
        self.verify(sig)
    }

    /// Finish a verification against `sig`.
    pub fn verify(&mut self, sig: &[u8]) -> Result<()> {
        let m = self.mech.mech;
        let is_rsa_sig = matches!(&self.state, State::HashSign(..)) || matches!(m, CKM_RSA_PKCS | CKM_RSA_X_509);
        if is_rsa_sig {
            let key = self.key.clone().ok_or_else(|| Error::new(CKR_KEY_HANDLE_INVALID, "no key"))?;
            let e = key.rsa_engine()?;
            if sig.len() != e.modulus_len() {
                return Err(Error::new(CKR_SIGNATURE_LEN_RANGE, "signature length differs from the modulus"));
            }
            let state = std::mem::replace(&mut self.state, State::Buffer(Zeroizing::new(Vec::new())));
            let ok = match state {
                State::HashSign(h, alg) => {
                    let mut di = alg.digest_info_prefix().to_vec();
                    di.extend_from_slice(&h.finalize());
                    e.pkcs1_verify(&di, sig)?
                }
                State::Buffer(data) if m == CKM_RSA_PKCS => e.pkcs1_verify(&data, sig)?,
                State::Buffer(data) => {
                    let rec = e.raw_public(sig)?;
                    let mut want = vec![0u8; rec.len().saturating_sub(data.len())];
                    want.extend_from_slice(&data);
                    constant_eq(&rec, &want)
                }
                _ => false,
            };
            return if ok { Ok(()) } else { Err(Error::new(CKR_SIGNATURE_INVALID, "signature invalid")) };
        }
        let mac = self.finish()?;
        if sig.len() != mac.len() {
            return Err(Error::new(CKR_SIGNATURE_LEN_RANGE, "signature length differs"));
        }
        if constant_eq(&mac, sig) { Ok(()) } else { Err(Error::new(CKR_SIGNATURE_INVALID, "signature invalid")) }
    }
}

fn unwrap_err(_: quill_crypto::CryptoError) -> Error {
    Error::new(CKR_ENCRYPTED_DATA_INVALID, "key unwrap integrity check failed")
}

fn cmac_general_len(p: &MechParam, max: usize) -> Result<usize> {
    let raw = p.raw();
    let arr: [u8; std::mem::size_of::<CK_ULONG>()] =
        raw.try_into().map_err(|_| Error::param("CK_MAC_GENERAL_PARAMS expected"))?;
    let l = CK_ULONG::from_ne_bytes(arr) as usize;
    if l == 0 || l > max {
        return Err(Error::param("MAC length out of range"));
    }
    Ok(l)
}

/// Constant-time comparison.
pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random bytes.
pub fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    getrandom::fill(&mut v).map_err(|e| Error::general(format!("getrandom: {e}")))?;
    Ok(v)
}

/// A fresh secret key value for a key type (DES keys with odd parity and distinct parts).
pub fn generate_secret(kt: CK_KEY_TYPE, len: Option<usize>) -> Result<Zeroizing<Vec<u8>>> {
    let n = match (fixed_key_len(kt), len) {
        (Some(f), _) => f,
        (None, Some(l)) => l,
        (None, None) => return Err(Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE_LEN missing")),
    };
    loop {
        let mut v = random_bytes(n)?;
        if matches!(kt, CKK_DES | CKK_DES2 | CKK_DES3) {
            sym::set_odd_parity(&mut v);
            if v.len() >= 16 && v[..8] == v[8..16] {
                continue;
            }
        }
        return Ok(v);
    }
}

/// The value for `C_WrapKey` of `key` under `wrapping` with `mech`.
pub fn wrap(mech: &Mechanism, wrapping: &Object, key: &Object) -> Result<Vec<u8>> {
    wrapping.require(CKA_WRAP)?;
    if !key.flag(CKA_EXTRACTABLE) {
        return Err(Error::new(CKR_KEY_UNEXTRACTABLE, "key is not extractable"));
    }
    if key.flag(CKA_WRAP_WITH_TRUSTED) && !wrapping.flag(CKA_TRUSTED) {
        return Err(Error::new(CKR_KEY_NOT_WRAPPABLE, "key may only be wrapped by a trusted key"));
    }
    require(mech.mech, CKF_WRAP)?;
    if mech.mech == CKM_QUILL_RSA_CRT_COMPONENT_WRAP {
        return wrap_crt_component(mech, wrapping, key);
    }
    let value = match (&key.material, key.class()) {
        (Material::Secret(v), CKO_SECRET_KEY) => v.clone(),
        (Material::None, _) => return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "key is not available: log in first")),
        // An RSA private key wraps as its PKCS#8 PrivateKeyInfo under an AES key-wrap mechanism
        // (as SoftHSM does), so that a key pair generated here can be kept wrapped elsewhere.
        (Material::RsaPrivate(k, _), CKO_PRIVATE_KEY) if is_aes_key_wrap(mech.mech) => {
            Arc::new(quill_crypto::rsa::to_pkcs8(k).map_err(|e| Error::general(format!("PKCS#8 encoding: {e}")))?)
        }
        _ => {
            return Err(Error::new(
                CKR_KEY_NOT_WRAPPABLE,
                "secret keys wrap with this mechanism; RSA private keys only with CKM_AES_KEY_WRAP(_PAD/_KWP) (CRT parts: CKM_QUILL_RSA_CRT_COMPONENT_WRAP)",
            ));
        }
    };
    if mech.mech == CKM_QUILL_TR31_WRAP {
        return wrap_tr31(mech, wrapping, key, &value);
    }
    match mech.mech {
        CKM_RSA_PKCS | CKM_RSA_PKCS_OAEP if wrapping.class() != CKO_PUBLIC_KEY => {
            return Err(Error::new(CKR_WRAPPING_KEY_TYPE_INCONSISTENT, "RSA wrapping needs a public key"));
        }
        _ => {}
    }
    Operation::init_unchecked(Kind::Encrypt, mech, wrapping)?.run(&value)
}

impl Operation {
    /// Start an operation for wrapping/unwrapping (usage checked by the caller).
    fn init_unchecked(kind: Kind, mech: &Mechanism, key: &Object) -> Result<Self> {
        let no_resolve = |_h| Err(Error::new(CKR_MECHANISM_PARAM_INVALID, "no second key here"));
        let mut k = key.clone();
        k.attrs.set_flag(kind.usage(), true);
        Operation::init(kind, mech, Some(Arc::new(k)), &no_resolve)
    }
}

fn wrap_crt_component(mech: &Mechanism, wrapping: &Object, key: &Object) -> Result<Vec<u8>> {
    let Material::RsaPrivate(k, _) = &key.material else {
        return Err(Error::new(CKR_KEY_NOT_WRAPPABLE, "CRT component export needs an RSA private key"));
    };
    let mut r = ParamReader::new(mech.param.raw(), "CK_QUILL_CRT_WRAP_PARAMS");
    let comp = r.u8("component")?;
    let pad = r.u8("padding")?;
    let mode = r.u8("mode")?;
    r.end()?;
    let half = k.n.iter().skip_while(|b| **b == 0).count().div_ceil(2);
    let raw: &[u8] = match comp {
        1 => &k.p,
        2 => &k.q,
        3 => &k.dp,
        4 => &k.dq,
        5 => &k.qinv,
        _ => return Err(Error::param("component must be 1 (p), 2 (q), 3 (dp), 4 (dq) or 5 (qinv)")),
    };
    let raw = crate::object::strip(raw);
    if raw.len() > half {
        return Err(Error::general("CRT component longer than half the modulus"));
    }
    let mut v = Zeroizing::new(vec![0u8; half - raw.len()]);
    v.extend_from_slice(&raw);
    let (alg, bs) = match wrapping.key_type() {
        Some(CKK_DES2 | CKK_DES3) => (BlockAlg::Des3, 8),
        Some(CKK_AES) => (BlockAlg::Aes, 16),
        _ => return Err(Error::new(CKR_WRAPPING_KEY_TYPE_INCONSISTENT, "wrapping key must be DES2, DES3 or AES")),
    };
    let data = Zeroizing::new(match pad {
        0 => {
            if !v.len().is_multiple_of(bs) {
                return Err(Error::param("component is not a multiple of the block size: choose padding 1 or 2"));
            }
            v.to_vec()
        }
        1 => sym::iso9797_m2_pad(&v, bs),
        2 => {
            let mut d = v.to_vec();
            while !d.len().is_multiple_of(bs) {
                d.push(0);
            }
            d
        }
        _ => return Err(Error::param("padding must be 0 (none), 1 (ISO 9797-1 method 2) or 2 (zeros)")),
    });
    let key_bytes = secret_of(wrapping, if alg == BlockAlg::Aes { AES } else { TDES })?;
    let iv = match mode {
        0 => None,
        1 => Some(vec![0u8; bs]),
        _ => return Err(Error::param("mode must be 0 (ECB) or 1 (CBC, zero IV)")),
    };
    let mut s = BlockStream { alg, key: key_bytes, iv, encrypt: true, pad: false, buf: Zeroizing::new(Vec::new()) };
    s.process(&data)
}

/// The AES key-wrap mechanisms (RFC 3394 / 5649), the ones private keys wrap with.
pub fn is_aes_key_wrap(mech: CK_MECHANISM_TYPE) -> bool {
    matches!(mech, CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP)
}

/// Decrypt a wrapped key value for `C_UnwrapKey`.
pub fn unwrap(mech: &Mechanism, unwrapping: &Object, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    unwrapping.require(CKA_UNWRAP)?;
    require(mech.mech, CKF_UNWRAP)?;
    let out = Operation::init_unchecked(Kind::Decrypt, mech, unwrapping)?.run(wrapped)?;
    Ok(Zeroizing::new(out))
}

/// The KBPK of a TR-31 mechanism and whether it is AES (version D) rather than TDES (version B).
fn tr31_kbpk(key: &Object, type_error: CK_RV) -> Result<(Arc<Zeroizing<Vec<u8>>>, bool)> {
    let aes = match key.key_type() {
        Some(CKK_DES2 | CKK_DES3) if key.class() == CKO_SECRET_KEY => false,
        Some(CKK_AES) if key.class() == CKO_SECRET_KEY => true,
        _ => {
            return Err(Error::new(type_error, "a TR-31 KBPK must be a DES2, DES3 (version B) or AES (version D) key"));
        }
    };
    Ok((secret_of(key, if aes { AES } else { TDES })?, aes))
}

fn kbpk_for(value: &[u8], aes: bool) -> Kbpk<'_> {
    if aes { Kbpk::Aes(value) } else { Kbpk::Tdes(value) }
}

/// The TR-31 version a KBPK of this family protects.
fn version_of(aes: bool) -> char {
    if aes { 'D' } else { 'B' }
}

/// The KBPK family the other version needs, for messages.
fn other_family(aes: bool) -> &'static str {
    if aes { "a DES2/DES3" } else { "an AES" }
}

/// Does a TR-31 algorithm describe a PKCS#11 key type?
fn tr31_algorithm_fits(algorithm: tr31::Algorithm, kt: CK_KEY_TYPE) -> bool {
    use tr31::Algorithm as A;
    matches!(
        (algorithm, kt),
        (A::Tdes, CKK_DES2 | CKK_DES3)
            | (A::Aes, CKK_AES)
            | (A::Des, CKK_DES)
            | (A::Hmac, CKK_GENERIC_SECRET | CKK_SHA_1_HMAC | CKK_SHA256_HMAC | CKK_SHA384_HMAC | CKK_SHA512_HMAC)
    )
}

/// `C_WrapKey` with `CKM_QUILL_TR31_WRAP`: the secret `value` of `key` as a TR-31 key block under
/// `wrapping` (the KBPK), with the header template of the mechanism parameter. The key length is
/// hidden (padding as for the longest key of the algorithm); the padding is random.
fn wrap_tr31(mech: &Mechanism, wrapping: &Object, key: &Object, value: &[u8]) -> Result<Vec<u8>> {
    let template = Tr31Header::parse_template(mech.param.raw())
        .map_err(|e| Error::param(format!("CKM_QUILL_TR31_WRAP header template: {e}")))?;
    let (kbpk, aes) = tr31_kbpk(wrapping, CKR_WRAPPING_KEY_TYPE_INCONSISTENT)?;
    if version_of(aes) != template.version.id() {
        return Err(Error::new(
            CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
            format!("a version {} key block needs {} KBPK", template.version.id(), other_family(aes)),
        ));
    }
    let kt = key.key_type().unwrap_or(CK_UNAVAILABLE_INFORMATION);
    if !tr31_algorithm_fits(template.algorithm, kt) {
        return Err(Error::param(format!(
            "CKM_QUILL_TR31_WRAP header template: algorithm {} does not describe key {} (key type 0x{kt:X})",
            template.algorithm.code(),
            key.handle
        )));
    }
    let mut rng_failure = None;
    let mut fill = |buf: &mut [u8]| {
        if let Err(e) = getrandom::fill(buf) {
            rng_failure = Some(e.to_string());
        }
    };
    let masked = template.algorithm.max_key_len();
    let block = tr31::wrap(kbpk_for(&kbpk, aes), &template, value, masked, &mut fill).map_err(tr31_wrap_err)?;
    if let Some(e) = rng_failure {
        return Err(Error::general(format!("getrandom: {e}")));
    }
    Ok(block.into_bytes())
}

fn tr31_wrap_err(e: Tr31Error) -> Error {
    let rv = match &e {
        Tr31Error::KbpkType { .. } => CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
        Tr31Error::KbpkLength { .. } | Tr31Error::KbpkWeaker { .. } => CKR_WRAPPING_KEY_SIZE_RANGE,
        Tr31Error::KeyLength { .. } => CKR_KEY_SIZE_RANGE,
        Tr31Error::Crypto(_) => CKR_FUNCTION_FAILED,
        Tr31Error::Field { .. }
        | Tr31Error::TooShort { .. }
        | Tr31Error::NotAscii { .. }
        | Tr31Error::OptionalBlock { .. }
        | Tr31Error::BlockLength { .. }
        | Tr31Error::BodyLength { .. }
        | Tr31Error::NotHex { .. }
        | Tr31Error::Mac
        | Tr31Error::KeyLengthField { .. }
        | Tr31Error::TooLong { .. } => CKR_MECHANISM_PARAM_INVALID,
    };
    Error::new(rv, format!("CKM_QUILL_TR31_WRAP: {e}"))
}

fn tr31_unwrap_err(e: Tr31Error) -> Error {
    let rv = match &e {
        Tr31Error::TooShort { .. } | Tr31Error::BlockLength { .. } | Tr31Error::BodyLength { .. } => {
            CKR_WRAPPED_KEY_LEN_RANGE
        }
        Tr31Error::KbpkType { .. } => CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
        Tr31Error::KbpkLength { .. } => CKR_UNWRAPPING_KEY_SIZE_RANGE,
        Tr31Error::Crypto(_) => CKR_FUNCTION_FAILED,
        Tr31Error::Field { .. }
        | Tr31Error::NotAscii { .. }
        | Tr31Error::OptionalBlock { .. }
        | Tr31Error::NotHex { .. }
        | Tr31Error::Mac
        | Tr31Error::KeyLengthField { .. }
        | Tr31Error::KeyLength { .. }
        | Tr31Error::KbpkWeaker { .. }
        | Tr31Error::TooLong { .. } => CKR_WRAPPED_KEY_INVALID,
    };
    Error::new(rv, format!("CKM_QUILL_TR31_UNWRAP: {e}"))
}

/// The usage attributes a TR-31 mode of use allows.
fn tr31_usages(mode: ModeOfUse) -> &'static [CK_ATTRIBUTE_TYPE] {
    match mode {
        ModeOfUse::EncryptDecrypt => &[CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP],
        ModeOfUse::GenerateVerify => &[CKA_SIGN, CKA_VERIFY],
        ModeOfUse::DecryptOnly => &[CKA_DECRYPT, CKA_UNWRAP],
        ModeOfUse::EncryptOnly => &[CKA_ENCRYPT, CKA_WRAP],
        ModeOfUse::GenerateOnly | ModeOfUse::SignatureOnly => &[CKA_SIGN],
        ModeOfUse::SignDecrypt => &[CKA_SIGN, CKA_DECRYPT, CKA_UNWRAP],
        ModeOfUse::VerifyOnly => &[CKA_VERIFY],
        ModeOfUse::DeriveKeys | ModeOfUse::KeyVariants => &[CKA_DERIVE],
        ModeOfUse::NoRestrictions => TR31_USAGE_ATTRS,
    }
}

/// The usage attributes a TR-31 header decides.
const TR31_USAGE_ATTRS: &[CK_ATTRIBUTE_TYPE] =
    &[CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP, CKA_DERIVE];

/// The unwrap template completed from a TR-31 header: class, key type and length must agree with
/// the block; a usage the mode of use forbids, or CKA_EXTRACTABLE on a non-exportable key, is
/// inconsistent; usages the template leaves out follow the mode of use.
fn tr31_template(header: &Tr31Header, kt: CK_KEY_TYPE, len: usize, tmpl: &[Attribute]) -> Result<Vec<Attribute>> {
    let t = template_to_map(tmpl)?;
    let mode = header.mode_of_use.code();
    if let Some(c) = t.ulong(CKA_CLASS)
        && c != CKO_SECRET_KEY
    {
        return Err(Error::template(format!(
            "the TR-31 block holds a secret key; the template asks for class 0x{c:X}"
        )));
    }
    if let Some(k) = t.ulong(CKA_KEY_TYPE)
        && k != kt
    {
        return Err(Error::template(format!(
            "the TR-31 block holds a {len}-byte algorithm {} key (key type 0x{kt:X}); the template asks for key type 0x{k:X}",
            header.algorithm.code()
        )));
    }
    if let Some(l) = t.ulong(CKA_VALUE_LEN)
        && l as usize != len
    {
        return Err(Error::template(format!(
            "the TR-31 block holds a {len}-byte key; the template says CKA_VALUE_LEN {l}"
        )));
    }
    let allowed = tr31_usages(header.mode_of_use);
    let mut out = tmpl.to_vec();
    for &usage in TR31_USAGE_ATTRS {
        let ok = allowed.contains(&usage);
        match t.get(usage) {
            Some(v) if decode_bool(usage, v)? && !ok => {
                return Err(Error::template(format!(
                    "attribute 0x{usage:X} is not allowed by the TR-31 mode of use {mode}"
                )));
            }
            Some(_) => {}
            None => out.push(Attribute::bool(usage, ok)),
        }
    }
    if header.exportability == Exportability::NonExportable {
        match t.get(CKA_EXTRACTABLE) {
            Some(v) if decode_bool(CKA_EXTRACTABLE, v)? => {
                return Err(Error::template(
                    "the TR-31 block says the key is not exportable (N): CKA_EXTRACTABLE must be false",
                ));
            }
            Some(_) => {}
            None => out.push(Attribute::bool(CKA_EXTRACTABLE, false)),
        }
    }
    Ok(out)
}

/// `C_UnwrapKey` with `CKM_QUILL_TR31_UNWRAP`: verifies and decrypts the key block under the
/// KBPK `unwrapping`. Returns the key type and value the block carries and the caller's template
/// completed from the header (see [`tr31_template`]).
pub fn unwrap_tr31(
    mech: &Mechanism,
    unwrapping: &Object,
    wrapped: &[u8],
    tmpl: &[Attribute],
) -> Result<(CK_KEY_TYPE, Zeroizing<Vec<u8>>, Vec<Attribute>)> {
    unwrapping.require(CKA_UNWRAP)?;
    require(mech.mech, CKF_UNWRAP)?;
    if mech.param != MechParam::None {
        return Err(Error::param("CKM_QUILL_TR31_UNWRAP takes no parameter"));
    }
    let (kbpk, aes) = tr31_kbpk(unwrapping, CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)?;
    // The version decides the KBPK type: check it before any cryptography.
    let peek = tr31::parse_key_block_header(wrapped).map_err(tr31_unwrap_err)?;
    if peek.version.id() != version_of(aes) {
        return Err(Error::new(
            CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
            format!("a version {} key block needs {} KBPK", peek.version.id(), other_family(aes)),
        ));
    }
    let (header, key) = tr31::unwrap(kbpk_for(&kbpk, aes), wrapped).map_err(tr31_unwrap_err)?;
    let kt = match (header.algorithm, key.len()) {
        (tr31::Algorithm::Tdes, 16) => CKK_DES2,
        (tr31::Algorithm::Tdes, 24) => CKK_DES3,
        (tr31::Algorithm::Aes, _) => CKK_AES,
        (tr31::Algorithm::Des, _) => CKK_DES,
        (tr31::Algorithm::Hmac, _) => CKK_GENERIC_SECRET,
        (a, _) => {
            return Err(Error::new(
                CKR_WRAPPED_KEY_INVALID,
                format!(
                    "the TR-31 block holds an algorithm {} key; hsm-sim imports only secret keys (T, A, D, H)",
                    a.code()
                ),
            ));
        }
    };
    let tmpl = tr31_template(&header, kt, key.len(), tmpl)?;
    Ok((kt, key, tmpl))
}

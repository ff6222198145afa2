//! Key derivation by the standard mechanisms that make a secret from secrets:
//! `CKM_CONCATENATE_BASE_AND_KEY`, `CKM_CONCATENATE_BASE_AND_DATA`,
//! `CKM_CONCATENATE_DATA_AND_BASE`, `CKM_XOR_BASE_AND_DATA`, `CKM_EXTRACT_KEY_FROM_KEY`
//! (PKCS#11 3.0 §2.43), the ANSI X9.63 KDF of `CKM_ECDH1_DERIVE`, and NIST SP 800-108 in
//! counter and feedback modes (`CKM_SP800_108_COUNTER_KDF`, `CKM_SP800_108_FEEDBACK_KDF`,
//! PKCS#11 3.0 §2.42). Pure functions over key values; the module builds the objects.

use crate::attr::Attribute;
use crate::error::{Error, Result};
use cryptoki_sys::*;
use quill_crypto::digest::{self, HashAlg};
use quill_crypto::sym;
use zeroize::Zeroizing;

/// `CK_SP800_108_KDF_PARAMS` / `CK_SP800_108_FEEDBACK_KDF_PARAMS`, copied out of C memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Sp800108 {
    /// PRF mechanism (`CKM_SHA256_HMAC`, `CKM_AES_CMAC`, …).
    pub prf: CK_MECHANISM_TYPE,
    /// The PRF input layout.
    pub data: Vec<PrfData>,
    /// Feedback mode: the IV (`None` in counter mode).
    pub iv: Option<Vec<u8>>,
    /// Templates of the additional keys (`CK_DERIVED_KEY`), in order.
    pub additional: Vec<Vec<Attribute>>,
}

/// One `CK_PRF_DATA_PARAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrfData {
    /// `CK_SP800_108_ITERATION_VARIABLE`: the counter (counter mode, with its format) or the
    /// previous PRF output (feedback mode, no format).
    Iteration(Option<CounterFormat>),
    /// `CK_SP800_108_OPTIONAL_COUNTER` (feedback mode).
    Counter(CounterFormat),
    /// `CK_SP800_108_DKM_LENGTH`.
    DkmLength(DkmFormat),
    /// `CK_SP800_108_BYTE_ARRAY`.
    Bytes(Vec<u8>),
}

/// `CK_SP800_108_COUNTER_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterFormat {
    /// `bLittleEndian`.
    pub little_endian: bool,
    /// `ulWidthInBits`.
    pub bits: CK_ULONG,
}

/// `CK_SP800_108_DKM_LENGTH_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DkmFormat {
    /// `CK_SP800_108_DKM_LENGTH_SUM_OF_KEYS` or `_SUM_OF_SEGMENTS`.
    pub method: CK_ULONG,
    /// `bLittleEndian`.
    pub little_endian: bool,
    /// `ulWidthInBits`.
    pub bits: CK_ULONG,
}

/// The PRFs SP 800-108 runs on here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prf {
    /// HMAC with a SHA-1/SHA-2 hash.
    Hmac(HashAlg),
    /// AES-CMAC.
    AesCmac,
    /// TDES-CMAC.
    Des3Cmac,
}

impl Prf {
    /// The PRF of a `prfType`; anything else is `CKR_MECHANISM_PARAM_INVALID`.
    pub fn from_mech(m: CK_MECHANISM_TYPE) -> Result<Prf> {
        Ok(match m {
            CKM_SHA_1_HMAC => Prf::Hmac(HashAlg::Sha1),
            CKM_SHA224_HMAC => Prf::Hmac(HashAlg::Sha224),
            CKM_SHA256_HMAC => Prf::Hmac(HashAlg::Sha256),
            CKM_SHA384_HMAC => Prf::Hmac(HashAlg::Sha384),
            CKM_SHA512_HMAC => Prf::Hmac(HashAlg::Sha512),
            CKM_AES_CMAC => Prf::AesCmac,
            CKM_DES3_CMAC => Prf::Des3Cmac,
            _ => return Err(Error::param(format!("SP 800-108: PRF 0x{m:X} not supported"))),
        })
    }

    /// Output bytes per PRF call.
    pub fn out_len(self) -> usize {
        match self {
            Prf::Hmac(h) => h.output_len(),
            Prf::AesCmac => 16,
            Prf::Des3Cmac => 8,
        }
    }

    /// Key types the base key may have.
    pub fn key_types(self) -> &'static [CK_KEY_TYPE] {
        match self {
            Prf::Hmac(_) => &[
                CKK_GENERIC_SECRET,
                CKK_SHA_1_HMAC,
                CKK_SHA224_HMAC,
                CKK_SHA256_HMAC,
                CKK_SHA384_HMAC,
                CKK_SHA512_HMAC,
            ],
            Prf::AesCmac => &[CKK_AES],
            Prf::Des3Cmac => &[CKK_DES2, CKK_DES3],
        }
    }

    fn run(self, key: &[u8], data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        Ok(Zeroizing::new(match self {
            Prf::Hmac(h) => digest::hmac(h, key, data),
            Prf::AesCmac => sym::aes_cmac(key, data)?.to_vec(),
            Prf::Des3Cmac => sym::des3_cmac(key, data)?.to_vec(),
        }))
    }
}

fn encode(v: u64, bits: CK_ULONG, little: bool) -> Vec<u8> {
    let n = (bits / 8) as usize;
    let be = v.to_be_bytes();
    let mut out = be[8 - n..].to_vec();
    if little {
        out.reverse();
    }
    out
}

/// Check the parameter structure; `Ok` means every later failure is about lengths.
fn check(p: &Sp800108, feedback: bool) -> Result<()> {
    let bad = |why: &str| Err(Error::param(format!("SP 800-108: {why}")));
    if p.data.is_empty() {
        return bad("no PRF data parameters");
    }
    let iters = p.data.iter().filter(|d| matches!(d, PrfData::Iteration(_))).count();
    if iters != 1 {
        return bad("exactly one CK_SP800_108_ITERATION_VARIABLE is required");
    }
    if p.data.iter().filter(|d| matches!(d, PrfData::DkmLength(_))).count() > 1 {
        return bad("at most one CK_SP800_108_DKM_LENGTH");
    }
    if p.data.iter().filter(|d| matches!(d, PrfData::Counter(_))).count() > 1 {
        return bad("at most one CK_SP800_108_OPTIONAL_COUNTER");
    }
    for d in &p.data {
        match d {
            PrfData::Iteration(Some(_)) if feedback => {
                return bad("in feedback mode the iteration variable has no format (it is the chaining value)");
            }
            PrfData::Iteration(None) if !feedback => {
                return bad("in counter mode the iteration variable needs a CK_SP800_108_COUNTER_FORMAT");
            }
            PrfData::Counter(_) if !feedback => {
                return bad("CK_SP800_108_OPTIONAL_COUNTER is for feedback mode only");
            }
            PrfData::Iteration(Some(f)) | PrfData::Counter(f) if !matches!(f.bits, 8 | 16 | 24 | 32) => {
                return bad("counter width must be 8, 16, 24 or 32 bits");
            }
            PrfData::DkmLength(f)
                if !matches!(
                    f.method,
                    CK_SP800_108_DKM_LENGTH_SUM_OF_KEYS | CK_SP800_108_DKM_LENGTH_SUM_OF_SEGMENTS
                ) =>
            {
                return bad("unknown DKM length method");
            }
            PrfData::DkmLength(f) if f.bits == 0 || f.bits > 64 || f.bits % 8 != 0 => {
                return bad("DKM length width must be 8..64 bits in whole bytes");
            }
            PrfData::Bytes(b) if b.is_empty() => return bad("empty byte array"),
            _ => {}
        }
    }
    match (&p.iv, feedback) {
        (Some(_), false) => bad("counter mode has no IV"),
        _ => Ok(()),
    }
}

/// SP 800-108 KBKDF: the keying material for keys of `lens` bytes (primary key first, then the
/// additional keys), from a base key value. Counter mode if `p.iv` is `None`, feedback otherwise.
pub fn sp800_108(p: &Sp800108, base: &[u8], lens: &[usize]) -> Result<Vec<Zeroizing<Vec<u8>>>> {
    let feedback = p.iv.is_some();
    let prf = Prf::from_mech(p.prf)?;
    check(p, feedback)?;
    let total: usize = lens.iter().sum();
    if total == 0 || lens.contains(&0) {
        return Err(Error::new(CKR_TEMPLATE_INCONSISTENT, "SP 800-108: every derived key needs a length"));
    }
    let h = prf.out_len();
    let blocks = total.div_ceil(h);
    for d in &p.data {
        if let PrfData::Iteration(Some(f)) | PrfData::Counter(f) = d
            && (blocks as u64) > (1u64 << f.bits) - 1
        {
            return Err(Error::param("SP 800-108: the counter is too narrow for the requested length"));
        }
    }
    let dkm = |f: &DkmFormat| -> Result<Vec<u8>> {
        let bits = if f.method == CK_SP800_108_DKM_LENGTH_SUM_OF_KEYS { total * 8 } else { blocks * h * 8 } as u64;
        if f.bits < 64 && bits >= (1u64 << f.bits) {
            return Err(Error::param("SP 800-108: the DKM length does not fit its width"));
        }
        Ok(encode(bits, f.bits, f.little_endian))
    };
    let mut out = Zeroizing::new(Vec::with_capacity(blocks * h));
    let mut prev: Zeroizing<Vec<u8>> = Zeroizing::new(p.iv.clone().unwrap_or_default());
    for i in 1..=blocks as u64 {
        let mut input = Zeroizing::new(Vec::new());
        for d in &p.data {
            match d {
                PrfData::Iteration(Some(f)) | PrfData::Counter(f) => input.extend(encode(i, f.bits, f.little_endian)),
                PrfData::Iteration(None) => input.extend_from_slice(&prev),
                PrfData::DkmLength(f) => input.extend(dkm(f)?),
                PrfData::Bytes(b) => input.extend_from_slice(b),
            }
        }
        let k = prf.run(base, &input)?;
        out.extend_from_slice(&k);
        prev = k;
    }
    let mut keys = Vec::with_capacity(lens.len());
    let mut at = 0;
    for l in lens {
        keys.push(Zeroizing::new(out[at..at + l].to_vec()));
        at += l;
    }
    Ok(keys)
}

/// ANSI X9.63 KDF (the `CKD_SHA*_KDF` of `CK_ECDH1_DERIVE_PARAMS`): `len` bytes of
/// H(Z ‖ counter ‖ SharedInfo), counter a 32-bit big-endian integer from 1.
pub fn x963(h: HashAlg, z: &[u8], shared: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + h.output_len()));
    let mut i: u32 = 1;
    while out.len() < len {
        let mut input = Zeroizing::new(z.to_vec());
        input.extend(i.to_be_bytes());
        input.extend_from_slice(shared);
        out.extend(digest::digest(h, &input));
        i = i.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// The hash of a `CKD_*` KDF (`None` for `CKD_NULL`).
pub fn ecdh_kdf_hash(kdf: CK_EC_KDF_TYPE) -> Result<Option<HashAlg>> {
    Ok(match kdf {
        CKD_NULL => None,
        CKD_SHA1_KDF => Some(HashAlg::Sha1),
        CKD_SHA224_KDF => Some(HashAlg::Sha224),
        CKD_SHA256_KDF => Some(HashAlg::Sha256),
        CKD_SHA384_KDF => Some(HashAlg::Sha384),
        CKD_SHA512_KDF => Some(HashAlg::Sha512),
        _ => return Err(Error::param(format!("CK_ECDH1_DERIVE_PARAMS: KDF 0x{kdf:X} not supported"))),
    })
}

/// `CKM_EXTRACT_KEY_FROM_KEY`: `len` bytes taken from `base` starting at bit `index`
/// (bit 0 = the most significant bit of the first byte), wrapping around its end.
pub fn extract(base: &[u8], index: usize, len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let nbits = base.len() * 8;
    if index >= nbits {
        return Err(Error::param("CK_EXTRACT_PARAMS: bit index beyond the base key"));
    }
    if len > base.len() {
        return Err(Error::new(CKR_TEMPLATE_INCONSISTENT, "the derived key is longer than the base key"));
    }
    let bit = |k: usize| {
        let k = k % nbits;
        (base[k / 8] >> (7 - k % 8)) & 1
    };
    let mut out = Zeroizing::new(vec![0u8; len]);
    for (j, byte) in out.iter_mut().enumerate() {
        for b in 0..8 {
            *byte = (*byte << 1) | bit(index + j * 8 + b);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn extract_matches_the_standard_example() {
        // PKCS#11 3.0 §2.43.7: 0x329F84A9, bit 21, 2 bytes -> 0x9526.
        assert_eq!(extract(&[0x32, 0x9F, 0x84, 0xA9], 21, 2).unwrap().as_slice(), &[0x95, 0x26]);
        assert_eq!(extract(&[0x32, 0x9F, 0x84, 0xA9], 32, 2).unwrap_err().rv, CKR_MECHANISM_PARAM_INVALID);
    }

    #[test]
    fn counter_encodings() {
        assert_eq!(encode(1, 32, false), [0, 0, 0, 1]);
        assert_eq!(encode(0x0102, 16, true), [2, 1]);
        assert_eq!(encode(256, 24, false), [0, 1, 0]);
    }
}

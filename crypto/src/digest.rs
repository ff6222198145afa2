//! SHA-1 and SHA-2 digests and HMAC, one-shot and incremental, plus the DER `DigestInfo`
//! prefixes that PKCS#1 v1.5 signatures need.

use hmac::{Hmac, KeyInit, Mac};
use sha1::{Digest, Sha1};
use sha2::{Sha224, Sha256, Sha384, Sha512};

use crate::error::{CryptoError, Result};

/// A hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-224 (28 bytes).
    Sha224,
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-384 (48 bytes).
    Sha384,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl HashAlg {
    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// DER prefix of the PKCS#1 v1.5 `DigestInfo` (RFC 8017 §9.2 note 1); append the digest.
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Self::Sha1 => &[0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14],
            Self::Sha224 => &[
                0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00,
                0x04, 0x1c,
            ],
            Self::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
                0x04, 0x20,
            ],
            Self::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00,
                0x04, 0x30,
            ],
            Self::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00,
                0x04, 0x40,
            ],
        }
    }

    /// The matching OpenSSL message digest (for OAEP).
    pub(crate) fn openssl_md(self) -> openssl::hash::MessageDigest {
        use openssl::hash::MessageDigest;
        match self {
            Self::Sha1 => MessageDigest::sha1(),
            Self::Sha224 => MessageDigest::sha224(),
            Self::Sha256 => MessageDigest::sha256(),
            Self::Sha384 => MessageDigest::sha384(),
            Self::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// One-shot digest of `data`.
pub fn digest(alg: HashAlg, data: &[u8]) -> Vec<u8> {
    let mut h = Hasher::new(alg);
    h.update(data);
    h.finalize()
}

/// Incremental hash computation.
#[derive(Clone)]
pub struct Hasher(HasherInner);

#[derive(Clone)]
enum HasherInner {
    Sha1(Sha1),
    Sha224(Sha224),
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hasher").field(&self.alg()).finish()
    }
}

impl Hasher {
    /// A fresh hash state.
    pub fn new(alg: HashAlg) -> Self {
        Self(match alg {
            HashAlg::Sha1 => HasherInner::Sha1(Sha1::new()),
            HashAlg::Sha224 => HasherInner::Sha224(Sha224::new()),
            HashAlg::Sha256 => HasherInner::Sha256(Sha256::new()),
            HashAlg::Sha384 => HasherInner::Sha384(Sha384::new()),
            HashAlg::Sha512 => HasherInner::Sha512(Sha512::new()),
        })
    }

    /// The algorithm of this state.
    pub fn alg(&self) -> HashAlg {
        match &self.0 {
            HasherInner::Sha1(_) => HashAlg::Sha1,
            HasherInner::Sha224(_) => HashAlg::Sha224,
            HasherInner::Sha256(_) => HashAlg::Sha256,
            HasherInner::Sha384(_) => HashAlg::Sha384,
            HasherInner::Sha512(_) => HashAlg::Sha512,
        }
    }

    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherInner::Sha1(h) => h.update(data),
            HasherInner::Sha224(h) => h.update(data),
            HasherInner::Sha256(h) => h.update(data),
            HasherInner::Sha384(h) => h.update(data),
            HasherInner::Sha512(h) => h.update(data),
        }
    }

    /// Returns the digest.
    pub fn finalize(self) -> Vec<u8> {
        match self.0 {
            HasherInner::Sha1(h) => h.finalize().to_vec(),
            HasherInner::Sha224(h) => h.finalize().to_vec(),
            HasherInner::Sha256(h) => h.finalize().to_vec(),
            HasherInner::Sha384(h) => h.finalize().to_vec(),
            HasherInner::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// One-shot HMAC (any key length).
pub fn hmac(alg: HashAlg, key: &[u8], data: &[u8]) -> Vec<u8> {
    match HmacState::new(alg, key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize()
        }
        // HMAC accepts keys of any length, so `new` cannot fail; an empty tag would never verify.
        Err(_) => Vec::new(),
    }
}

/// Incremental HMAC computation.
#[derive(Clone)]
pub struct HmacState(HmacInner);

#[derive(Clone)]
enum HmacInner {
    Sha1(Hmac<Sha1>),
    Sha224(Hmac<Sha224>),
    Sha256(Hmac<Sha256>),
    Sha384(Hmac<Sha384>),
    Sha512(Hmac<Sha512>),
}

impl std::fmt::Debug for HmacState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacState(..)")
    }
}

fn hmac_init<M: KeyInit>(key: &[u8]) -> Result<M> {
    M::new_from_slice(key).map_err(|_| CryptoError::KeyLength { what: "HMAC", got: key.len() })
}

impl HmacState {
    /// A fresh HMAC state keyed with `key` (any length).
    pub fn new(alg: HashAlg, key: &[u8]) -> Result<Self> {
        Ok(Self(match alg {
            HashAlg::Sha1 => HmacInner::Sha1(hmac_init(key)?),
            HashAlg::Sha224 => HmacInner::Sha224(hmac_init(key)?),
            HashAlg::Sha256 => HmacInner::Sha256(hmac_init(key)?),
            HashAlg::Sha384 => HmacInner::Sha384(hmac_init(key)?),
            HashAlg::Sha512 => HmacInner::Sha512(hmac_init(key)?),
        }))
    }

    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HmacInner::Sha1(m) => m.update(data),
            HmacInner::Sha224(m) => m.update(data),
            HmacInner::Sha256(m) => m.update(data),
            HmacInner::Sha384(m) => m.update(data),
            HmacInner::Sha512(m) => m.update(data),
        }
    }

    /// Returns the full-length tag.
    pub fn finalize(self) -> Vec<u8> {
        match self.0 {
            HmacInner::Sha1(m) => m.finalize().into_bytes().to_vec(),
            HmacInner::Sha224(m) => m.finalize().into_bytes().to_vec(),
            HmacInner::Sha256(m) => m.finalize().into_bytes().to_vec(),
            HmacInner::Sha384(m) => m.finalize().into_bytes().to_vec(),
            HmacInner::Sha512(m) => m.finalize().into_bytes().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ALL: [HashAlg; 5] = [HashAlg::Sha1, HashAlg::Sha224, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512];

    #[test]
    fn digests_abc() {
        let expect = [
            "a9993e364706816aba3e25717850c26c9cd0d89d",
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        ];
        for (alg, e) in ALL.into_iter().zip(expect) {
            let d = digest(alg, b"abc");
            assert_eq!(hex::encode(&d), e);
            assert_eq!(d.len(), alg.output_len());
            // Incremental equals one-shot.
            let mut h = Hasher::new(alg);
            h.update(b"a");
            h.update(b"bc");
            assert_eq!(h.alg(), alg);
            assert_eq!(h.finalize(), d);
            // The DigestInfo prefix announces the digest length in its last byte.
            let p = alg.digest_info_prefix();
            assert_eq!(usize::from(*p.last().unwrap()), alg.output_len());
            assert_eq!(usize::from(p[1]) + 2, p.len() + alg.output_len());
        }
    }

    #[test]
    fn hmac_rfc4231_case2() {
        let key = b"Jefe";
        let data = b"what do ya want for nothing?";
        assert_eq!(
            hex::encode(hmac(HashAlg::Sha256, key, data)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac(HashAlg::Sha512, key, data)),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
        // RFC 2202 case 2.
        assert_eq!(hex::encode(hmac(HashAlg::Sha1, key, data)), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        for alg in ALL {
            let mut m = HmacState::new(alg, &[0xAB; 200]).unwrap();
            m.update(b"what do ya ");
            m.update(b"want for nothing?");
            assert_eq!(m.finalize(), hmac(alg, &[0xAB; 200], data));
        }
    }
}

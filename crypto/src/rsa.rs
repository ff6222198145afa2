//! RSA: key-pair generation (crypto-primes sieve, OpenSSL bignums for the rest), import from
//! components, and [`RsaEngine`], an OpenSSL `Rsa` handle for raw, PKCS#1 v1.5 and OAEP operations.
//!
//! Generated keys use fixed-width components: `n` and `d` are k bytes (k = modulus bytes);
//! `p`, `q`, `dp`, `dq`, `qinv` are ⌈bits/16⌉ bytes (left-padded with zeros), as CPS DGIs want
//! them. `e` is minimal. Consumers must not rely on this for imported keys.

use std::cmp::Ordering;
use std::ops::{Deref, DerefMut};

use crypto_bigint::{BoxedUint, Limb, NonZero};
use crypto_primes::hazmat::{SetBits, SmallFactorsSieveFactory};
use crypto_primes::{Flavor, is_prime, sieve_and_find};
use openssl::bn::{BigNum, BigNumContext, BigNumRef};
use openssl::encrypt::{Decrypter, Encrypter};
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::{Padding, Rsa};
use zeroize::{Zeroize, Zeroizing};

use crate::digest::HashAlg;
use crate::error::{CryptoError, Result, Secret, data_len};

/// Smallest modulus accepted, in bits.
pub const MIN_BITS: u32 = 512;
/// Largest modulus accepted, in bits.
pub const MAX_BITS: u32 = 16384;

/// Private key; all components big-endian unsigned, no leading zeros needed. Zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPrivateKey {
    /// Modulus.
    pub n: Vec<u8>,
    /// Public exponent.
    pub e: Vec<u8>,
    /// Private exponent.
    pub d: Vec<u8>,
    /// First prime (the larger one for keys made here).
    pub p: Vec<u8>,
    /// Second prime.
    pub q: Vec<u8>,
    /// d mod (p − 1).
    pub dp: Vec<u8>,
    /// d mod (q − 1).
    pub dq: Vec<u8>,
    /// q⁻¹ mod p.
    pub qinv: Vec<u8>,
}

impl Drop for RsaPrivateKey {
    fn drop(&mut self) {
        for v in [
            &mut self.n,
            &mut self.e,
            &mut self.d,
            &mut self.p,
            &mut self.q,
            &mut self.dp,
            &mut self.dq,
            &mut self.qinv,
        ] {
            v.zeroize();
        }
    }
}

impl std::fmt::Debug for RsaPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaPrivateKey")
            .field("n", &hex_prefix(&self.n))
            .field("e", &hex_prefix(&self.e))
            .finish_non_exhaustive()
    }
}

fn hex_prefix(v: &[u8]) -> String {
    let s: String = v.iter().take(8).map(|b| format!("{b:02X}")).collect();
    if v.len() > 8 { format!("{s}…({} bytes)", v.len()) } else { s }
}

impl RsaPrivateKey {
    /// The public half (n, e).
    pub fn public_key(&self) -> RsaPublicKey {
        RsaPublicKey { n: self.n.clone(), e: self.e.clone() }
    }
}

/// Public key; big-endian unsigned components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsaPublicKey {
    /// Modulus.
    pub n: Vec<u8>,
    /// Public exponent.
    pub e: Vec<u8>,
}

fn bn_err(_: ErrorStack) -> CryptoError {
    CryptoError::Rsa("bignum operation failed".into())
}

/// A bignum that is cleared when dropped (OpenSSL's `BN_free` does not clear).
struct SecretBn(BigNum);

impl Drop for SecretBn {
    fn drop(&mut self) {
        self.0.clear();
    }
}

impl Deref for SecretBn {
    type Target = BigNumRef;
    fn deref(&self) -> &BigNumRef {
        &self.0
    }
}

impl DerefMut for SecretBn {
    fn deref_mut(&mut self) -> &mut BigNumRef {
        &mut self.0
    }
}

impl SecretBn {
    fn new() -> Result<Self> {
        let mut b = BigNum::new_secure().map_err(bn_err)?;
        b.set_const_time();
        Ok(Self(b))
    }

    fn from_slice(bytes: &[u8]) -> Result<Self> {
        let mut b = BigNum::from_slice(bytes).map_err(bn_err)?;
        b.set_const_time();
        Ok(Self(b))
    }

    fn dup(&self) -> Result<Self> {
        Ok(Self(self.0.to_owned().map_err(bn_err)?))
    }

    /// Big-endian bytes left-padded to `len` (error if it does not fit).
    fn padded(&self, len: usize) -> Result<Vec<u8>> {
        let len = i32::try_from(len).map_err(|_| CryptoError::Rsa("length overflow".into()))?;
        self.0.to_vec_padded(len).map_err(bn_err)
    }
}

fn gcd_u64(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A random prime of exactly `bits` bits with its top two bits set and gcd(e, p − 1) = 1.
/// The cheap residue test runs before the primality test, so e = 3 costs no more than 65537.
fn gen_prime(bits: u32, e: u32) -> Result<Zeroizing<Vec<u8>>> {
    let factory = SmallFactorsSieveFactory::<BoxedUint>::new(Flavor::Any, bits, SetBits::TwoMsb)
        .map_err(|_| CryptoError::Rsa("prime sieve setup failed".into()))?;
    let e_nz: NonZero<Limb> = Option::from(NonZero::new(Limb::from(e)))
        .ok_or_else(|| CryptoError::Invalid("RSA public exponent must be non-zero".into()))?;
    let e64 = u64::from(e);
    let mut rng = rand::rng();
    let found = sieve_and_find(&mut rng, factory, |_rng, c: &BoxedUint| {
        // gcd(e, p - 1) == gcd(e, (p mod e) - 1 mod e); for prime e this is `p mod e != 1`.
        // `Word` is u32 on 32-bit targets, so the conversion is not useless everywhere.
        #[allow(clippy::useless_conversion)]
        let r = u64::from(c.rem_limb(e_nz).0) % e64;
        gcd_u64(e64, (r + e64 - 1) % e64) == 1 && is_prime(Flavor::Any, c)
    })
    .map_err(|_| CryptoError::Rsa("prime search failed".into()))?;
    let Some(mut p) = found else {
        return Err(CryptoError::Rsa("prime search exhausted".into()));
    };
    let mut bytes = p.to_be_bytes();
    let out = Zeroizing::new(bytes.to_vec());
    bytes.zeroize();
    p.zeroize();
    Ok(out)
}

/// Generates a key pair.
///
/// bits: 512..=16384 (any multiple of 8); e: 3 or 65537 (any odd e >= 3 allowed).
/// Primes from crypto-primes' sieve with a cheap `p mod e != 1` filter applied *before* the
/// primality test (so e=3 costs no more than e=65537); p and q with their top two bits set
/// so n has exactly `bits` bits; p > q; d = e^-1 mod lcm(p-1, q-1).
pub fn generate(bits: u32, e: u32) -> Result<RsaPrivateKey> {
    if !(MIN_BITS..=MAX_BITS).contains(&bits) || !bits.is_multiple_of(8) {
        return Err(CryptoError::Invalid(format!(
            "RSA modulus size {bits} bits: must be a multiple of 8 in {MIN_BITS}..={MAX_BITS}"
        )));
    }
    if e < 3 || e.is_multiple_of(2) {
        return Err(CryptoError::Invalid(format!("RSA public exponent {e}: must be odd and >= 3")));
    }
    let half = bits / 2;
    // Retries only if p and q come out too close (probability ~2^-100) or equal.
    for _ in 0..16 {
        let p = gen_prime(half, e)?;
        let q = gen_prime(half, e)?;
        let e_bytes = e.to_be_bytes();
        match complete(&[], &e_bytes, &[], &p, &q, Some(bits)) {
            Ok(key) => return Ok(key),
            Err(CryptoError::Rsa(_)) => continue,
            Err(other) => return Err(other),
        }
    }
    Err(CryptoError::Rsa("key generation failed repeatedly".into()))
}

/// Build/validate from components (e.g. imported): checks n == p*q, computes missing CRT parts.
///
/// `d` may be empty (then d = e⁻¹ mod lcm(p−1, q−1)); otherwise e·d ≡ 1 mod lcm(p−1, q−1) is
/// checked. p and q are swapped if needed so that p > q.
pub fn from_components(n: &[u8], e: &[u8], d: &[u8], p: &[u8], q: &[u8]) -> Result<RsaPrivateKey> {
    if n.is_empty() || e.is_empty() || p.is_empty() || q.is_empty() {
        return Err(CryptoError::Rsa("missing key component".into()));
    }
    complete(n, e, d, p, q, None)
}

/// Shared by `generate` (n empty, `gen_bits` set) and `from_components`.
fn complete(n_in: &[u8], e: &[u8], d_in: &[u8], p: &[u8], q: &[u8], gen_bits: Option<u32>) -> Result<RsaPrivateKey> {
    let bad = |msg: &str| CryptoError::Rsa(msg.to_string());
    let mut ctx = BigNumContext::new_secure().map_err(bn_err)?;
    let e = BigNum::from_slice(e).map_err(bn_err)?;
    let mut p = SecretBn::from_slice(p)?;
    let mut q = SecretBn::from_slice(q)?;
    match p.ucmp(&q) {
        Ordering::Less => std::mem::swap(&mut p, &mut q),
        Ordering::Equal => return Err(bad("p equals q")),
        Ordering::Greater => {}
    }
    let one = BigNum::from_u32(1).map_err(bn_err)?;
    if q.ucmp(&one) != Ordering::Greater || !p.is_odd() || !q.is_odd() {
        return Err(bad("invalid prime factor"));
    }
    if !e.is_odd() || e.num_bits() < 2 || e.num_bits() > 256 {
        return Err(CryptoError::Invalid("RSA public exponent must be odd, >= 3 and at most 256 bits".into()));
    }

    let mut n = BigNum::new().map_err(bn_err)?;
    n.checked_mul(&p, &q, &mut ctx).map_err(bn_err)?;
    let bits = u32::try_from(n.num_bits()).map_err(|_| bad("modulus size"))?;
    if let Some(want) = gen_bits {
        if bits != want {
            return Err(bad("modulus has the wrong size"));
        }
        // FIPS 186-4 B.3.3: |p - q| > 2^(nlen/2 - 100).
        let mut diff = SecretBn::new()?;
        diff.checked_sub(&p, &q).map_err(bn_err)?;
        if diff.num_bits() <= i32::try_from(want / 2).unwrap_or(i32::MAX) - 100 {
            return Err(bad("p and q too close"));
        }
    } else {
        let given = BigNum::from_slice(n_in).map_err(bn_err)?;
        if given.ucmp(&n) != Ordering::Equal {
            return Err(bad("n != p*q"));
        }
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(CryptoError::Invalid(format!(
                "RSA modulus size {bits} bits: must be in {MIN_BITS}..={MAX_BITS}"
            )));
        }
    }
    if e.ucmp(&n) != Ordering::Less {
        return Err(CryptoError::Invalid("RSA public exponent must be smaller than n".into()));
    }

    let mut p1 = p.dup()?;
    p1.sub_word(1).map_err(bn_err)?;
    let mut q1 = q.dup()?;
    q1.sub_word(1).map_err(bn_err)?;
    let mut g = SecretBn::new()?;
    g.gcd(&p1, &q1, &mut ctx).map_err(bn_err)?;
    let mut phi = SecretBn::new()?;
    phi.checked_mul(&p1, &q1, &mut ctx).map_err(bn_err)?;
    let mut lcm = SecretBn::new()?;
    lcm.checked_div(&phi, &g, &mut ctx).map_err(bn_err)?;

    let mut d = SecretBn::new()?;
    if d_in.is_empty() {
        d.mod_inverse(&e, &lcm, &mut ctx).map_err(|_| bad("e is not invertible modulo lcm(p-1, q-1)"))?;
    } else {
        d = SecretBn::from_slice(d_in)?;
        let mut ed = SecretBn::new()?;
        ed.mod_mul(&e, &d, &lcm, &mut ctx).map_err(bn_err)?;
        if ed.ucmp(&one) != Ordering::Equal || d.ucmp(&n) != Ordering::Less {
            return Err(bad("d does not match e, p and q"));
        }
    }
    let mut dp = SecretBn::new()?;
    dp.nnmod(&d, &p1, &mut ctx).map_err(bn_err)?;
    let mut dq = SecretBn::new()?;
    dq.nnmod(&d, &q1, &mut ctx).map_err(bn_err)?;
    let mut qinv = SecretBn::new()?;
    qinv.mod_inverse(&q, &p, &mut ctx).map_err(|_| bad("q is not invertible modulo p"))?;

    let k = usize::try_from(n.num_bytes()).map_err(|_| bad("modulus size"))?;
    let h = usize::try_from(p.num_bytes().max(q.num_bytes())).map_err(|_| bad("prime size"))?;
    let n_bytes = n.to_vec();
    Ok(RsaPrivateKey {
        n: n_bytes,
        e: e.to_vec(),
        d: d.padded(k)?,
        p: p.padded(h)?,
        q: q.padded(h)?,
        dp: dp.padded(h)?,
        dq: dq.padded(h)?,
        qinv: qinv.padded(h)?,
    })
}

/// The key as a DER PKCS#8 `PrivateKeyInfo` (what `C_WrapKey` of a private key wraps, as in
/// SoftHSM), in zeroized memory.
pub fn to_pkcs8(key: &RsaPrivateKey) -> Result<Zeroizing<Vec<u8>>> {
    let bn = |v: &[u8]| BigNum::from_slice(v).map_err(bn_err);
    let rsa = Rsa::from_private_components(
        bn(&key.n)?,
        bn(&key.e)?,
        bn(&key.d)?,
        bn(&key.p)?,
        bn(&key.q)?,
        bn(&key.dp)?,
        bn(&key.dq)?,
        bn(&key.qinv)?,
    )
    .map_err(ossl("RSA key construction"))?;
    let pkey = PKey::from_rsa(rsa).map_err(ossl("RSA key construction"))?;
    Ok(Zeroizing::new(pkey.private_key_to_pkcs8().map_err(ossl("PKCS#8 encoding"))?))
}

/// Inverse of [`to_pkcs8`]: an RSA `PrivateKeyInfo`, its components checked as by
/// [`from_components`].
pub fn from_pkcs8(der: &[u8]) -> Result<RsaPrivateKey> {
    let pkey = PKey::private_key_from_pkcs8(der).map_err(|_| CryptoError::Rsa("not a PKCS#8 private key".into()))?;
    let rsa = pkey.rsa().map_err(|_| CryptoError::Rsa("the PKCS#8 key is not an RSA key".into()))?;
    let (p, q) = match (rsa.p(), rsa.q()) {
        (Some(p), Some(q)) => (Zeroizing::new(p.to_vec()), Zeroizing::new(q.to_vec())),
        _ => return Err(CryptoError::Rsa("the PKCS#8 key lacks its prime factors".into())),
    };
    let d = Zeroizing::new(rsa.d().to_vec());
    from_components(&rsa.n().to_vec(), &rsa.e().to_vec(), &d, &p, &q)
}

enum Inner {
    Private(Rsa<Private>, PKey<Private>),
    Public(Rsa<Public>, PKey<Public>),
}

/// An engine handle for fast repeated operations (wraps an OpenSSL `Rsa<Private>` built once).
///
/// PKCS#1 v1.5 decryption follows the linked OpenSSL: 3.0/3.1 report [`CryptoError::BadPadding`],
/// 3.2+ may return a pseudo-random message instead (implicit rejection).
pub struct RsaEngine {
    inner: Inner,
    k: usize,
    n: Vec<u8>,
}

impl std::fmt::Debug for RsaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            Inner::Private(..) => "private",
            Inner::Public(..) => "public",
        };
        f.debug_struct("RsaEngine").field("kind", &kind).field("modulus_len", &self.k).finish()
    }
}

fn ossl(what: &'static str) -> impl Fn(ErrorStack) -> CryptoError {
    move |_| CryptoError::Rsa(format!("{what} failed"))
}

fn strip_zeros(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    v.get(start..).unwrap_or_default()
}

fn check_public_parts(n: &[u8], e: &[u8]) -> Result<Vec<u8>> {
    let n = strip_zeros(n);
    // n has no leading zero byte, so its first byte (if any) is non-zero.
    let bits = n.first().map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
    if !(MIN_BITS as usize..=MAX_BITS as usize).contains(&bits) || n.last().is_none_or(|b| b % 2 == 0) {
        return Err(CryptoError::Rsa(format!(
            "modulus must be odd and {MIN_BITS}..={MAX_BITS} bits (got {bits} bits)"
        )));
    }
    let e = strip_zeros(e);
    if e.is_empty() || e.len() > 32 || e.last().is_none_or(|b| b % 2 == 0) || e == [1] {
        return Err(CryptoError::Rsa("public exponent must be odd, >= 3 and at most 256 bits".into()));
    }
    Ok(n.to_vec())
}

impl RsaEngine {
    /// A private-key engine (checks n == p·q, nothing more expensive).
    pub fn new(key: &RsaPrivateKey) -> Result<Self> {
        let n = check_public_parts(&key.n, &key.e)?;
        let bn = |v: &[u8]| BigNum::from_slice(v).map_err(bn_err);
        let parts = [&key.d, &key.p, &key.q, &key.dp, &key.dq, &key.qinv];
        if parts.iter().any(|v| strip_zeros(v).is_empty()) {
            return Err(CryptoError::Rsa("missing private key component".into()));
        }
        {
            let mut ctx = BigNumContext::new().map_err(bn_err)?;
            let mut pq = BigNum::new().map_err(bn_err)?;
            pq.checked_mul(&*SecretBn::from_slice(&key.p)?, &*SecretBn::from_slice(&key.q)?, &mut ctx)
                .map_err(bn_err)?;
            if pq.ucmp(&*bn(&n)?) != Ordering::Equal {
                return Err(CryptoError::Rsa("inconsistent key components (n != p*q)".into()));
            }
        }
        let rsa = Rsa::from_private_components(
            bn(&n)?,
            bn(&key.e)?,
            bn(&key.d)?,
            bn(&key.p)?,
            bn(&key.q)?,
            bn(&key.dp)?,
            bn(&key.dq)?,
            bn(&key.qinv)?,
        )
        .map_err(ossl("RSA key construction"))?;
        let pkey = PKey::from_rsa(rsa.clone()).map_err(ossl("RSA key construction"))?;
        let k = usize::try_from(rsa.size()).map_err(|_| CryptoError::Rsa("modulus size".into()))?;
        Ok(Self { inner: Inner::Private(rsa, pkey), k, n: left_pad(&n, k)? })
    }

    /// A public-only engine.
    pub fn public(pk: &RsaPublicKey) -> Result<Self> {
        let n = check_public_parts(&pk.n, &pk.e)?;
        let rsa = Rsa::from_public_components(
            BigNum::from_slice(&n).map_err(bn_err)?,
            BigNum::from_slice(&pk.e).map_err(bn_err)?,
        )
        .map_err(ossl("RSA public key construction"))?;
        let pkey = PKey::from_rsa(rsa.clone()).map_err(ossl("RSA public key construction"))?;
        let k = usize::try_from(rsa.size()).map_err(|_| CryptoError::Rsa("modulus size".into()))?;
        Ok(Self { inner: Inner::Public(rsa, pkey), k, n: left_pad(&n, k)? })
    }

    /// Modulus length k in bytes.
    pub fn modulus_len(&self) -> usize {
        self.k
    }

    /// True if this engine holds a private key.
    pub fn has_private(&self) -> bool {
        matches!(self.inner, Inner::Private(..))
    }

    fn private(&self) -> Result<&Rsa<Private>> {
        match &self.inner {
            Inner::Private(rsa, _) => Ok(rsa),
            Inner::Public(..) => Err(CryptoError::Rsa("no private key in a public-key engine".into())),
        }
    }

    /// `input` as a k-byte integer, checked to be < n.
    fn as_k_bytes(&self, input: &[u8], what: &'static str) -> Result<Zeroizing<Vec<u8>>> {
        if input.len() > self.k {
            return Err(data_len(what, input.len(), "longer than the modulus"));
        }
        let padded = Zeroizing::new(left_pad(input, self.k)?);
        // Same length, big-endian: lexicographic order is numeric order.
        if padded.as_slice() >= self.n.as_slice() {
            return Err(data_len(what, input.len(), "integer must be less than the modulus"));
        }
        Ok(padded)
    }

    /// Raw RSA private operation: input as integer < n (any length <= k), output k bytes.
    pub fn raw_private(&self, input: &[u8]) -> Result<Vec<u8>> {
        let rsa = self.private()?;
        let x = self.as_k_bytes(input, "RSA raw private input")?;
        let mut out = vec![0u8; self.k];
        let n = rsa.private_encrypt(&x, &mut out, Padding::NONE).map_err(ossl("RSA private operation"))?;
        out.truncate(n);
        left_pad(&out, self.k)
    }

    /// Raw RSA public operation: input as integer < n (any length <= k), output k bytes.
    pub fn raw_public(&self, input: &[u8]) -> Result<Vec<u8>> {
        let x = self.as_k_bytes(input, "RSA raw public input")?;
        let mut out = vec![0u8; self.k];
        let n = match &self.inner {
            Inner::Private(rsa, _) => rsa.public_encrypt(&x, &mut out, Padding::NONE),
            Inner::Public(rsa, _) => rsa.public_encrypt(&x, &mut out, Padding::NONE),
        }
        .map_err(ossl("RSA public operation"))?;
        out.truncate(n);
        left_pad(&out, self.k)
    }

    /// EMSA-PKCS1-v1_5 signature (block type 1) over `data` as given (caller adds DigestInfo).
    pub fn pkcs1_sign(&self, data: &[u8]) -> Result<Vec<u8>> {
        let rsa = self.private()?;
        if data.len() + 11 > self.k {
            return Err(data_len("RSA PKCS#1 sign", data.len(), "must be at most k - 11 bytes"));
        }
        let mut out = vec![0u8; self.k];
        let n = rsa.private_encrypt(data, &mut out, Padding::PKCS1).map_err(ossl("RSA PKCS#1 signature"))?;
        out.truncate(n);
        left_pad(&out, self.k)
    }

    /// Verifies a PKCS#1 v1.5 signature over `data` as given; `Ok(false)` if it does not verify,
    /// [`CryptoError::DataLength`] if `sig` is not k bytes.
    pub fn pkcs1_verify(&self, data: &[u8], sig: &[u8]) -> Result<bool> {
        if sig.len() != self.k {
            return Err(data_len("RSA PKCS#1 signature", sig.len(), "must be exactly k bytes"));
        }
        if sig >= self.n.as_slice() {
            return Ok(false);
        }
        let mut out = vec![0u8; self.k];
        let r = match &self.inner {
            Inner::Private(rsa, _) => rsa.public_decrypt(sig, &mut out, Padding::PKCS1),
            Inner::Public(rsa, _) => rsa.public_decrypt(sig, &mut out, Padding::PKCS1),
        };
        Ok(matches!(r, Ok(n) if out.get(..n) == Some(data)))
    }

    /// PKCS#1 v1.5 encryption (block type 2, random padding); data at most k − 11 bytes.
    pub fn pkcs1_encrypt(&self, data: &[u8]) -> Result<Vec<u8>> {
        if data.len() + 11 > self.k {
            return Err(data_len("RSA PKCS#1 encrypt", data.len(), "must be at most k - 11 bytes"));
        }
        let mut out = vec![0u8; self.k];
        let n = match &self.inner {
            Inner::Private(rsa, _) => rsa.public_encrypt(data, &mut out, Padding::PKCS1),
            Inner::Public(rsa, _) => rsa.public_encrypt(data, &mut out, Padding::PKCS1),
        }
        .map_err(ossl("RSA PKCS#1 encryption"))?;
        out.truncate(n);
        left_pad(&out, self.k)
    }

    /// PKCS#1 v1.5 decryption; `ct` must be k bytes; [`CryptoError::BadPadding`] on bad padding.
    pub fn pkcs1_decrypt(&self, ct: &[u8]) -> Result<Secret> {
        let rsa = self.private()?;
        if ct.len() != self.k {
            return Err(data_len("RSA PKCS#1 ciphertext", ct.len(), "must be exactly k bytes"));
        }
        if ct >= self.n.as_slice() {
            return Err(data_len("RSA PKCS#1 ciphertext", ct.len(), "integer must be less than the modulus"));
        }
        let mut out = Zeroizing::new(vec![0u8; self.k]);
        let n = rsa.private_decrypt(ct, &mut out, Padding::PKCS1).map_err(|_| CryptoError::BadPadding)?;
        out.truncate(n);
        Ok(out)
    }

    fn oaep_max(&self, hash: HashAlg) -> usize {
        self.k.saturating_sub(2 * hash.output_len() + 2)
    }

    /// RSAES-OAEP encryption with the given hash, MGF1 hash and label.
    pub fn oaep_encrypt(&self, hash: HashAlg, mgf_hash: HashAlg, label: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        if self.k < 2 * hash.output_len() + 2 || data.len() > self.oaep_max(hash) {
            return Err(data_len("RSA OAEP encrypt", data.len(), "must be at most k - 2*hLen - 2 bytes"));
        }
        let err = ossl("RSA OAEP encryption");
        let mut enc = match &self.inner {
            Inner::Private(_, pkey) => Encrypter::new(pkey),
            Inner::Public(_, pkey) => Encrypter::new(pkey),
        }
        .map_err(&err)?;
        enc.set_rsa_padding(Padding::PKCS1_OAEP).map_err(&err)?;
        enc.set_rsa_oaep_md(hash.openssl_md()).map_err(&err)?;
        enc.set_rsa_mgf1_md(mgf_hash.openssl_md()).map_err(&err)?;
        if !label.is_empty() {
            enc.set_rsa_oaep_label(label).map_err(&err)?;
        }
        let len = enc.encrypt_len(data).map_err(&err)?;
        let mut out = vec![0u8; len.max(self.k)];
        let n = enc.encrypt(data, &mut out).map_err(&err)?;
        out.truncate(n);
        left_pad(&out, self.k)
    }

    /// RSAES-OAEP decryption; `ct` must be k bytes; [`CryptoError::BadPadding`] if it does not
    /// decode (wrong key, label or hash).
    pub fn oaep_decrypt(&self, hash: HashAlg, mgf_hash: HashAlg, label: &[u8], ct: &[u8]) -> Result<Secret> {
        let Inner::Private(_, pkey) = &self.inner else {
            return Err(CryptoError::Rsa("no private key in a public-key engine".into()));
        };
        if ct.len() != self.k {
            return Err(data_len("RSA OAEP ciphertext", ct.len(), "must be exactly k bytes"));
        }
        if self.k < 2 * hash.output_len() + 2 {
            return Err(data_len("RSA OAEP", self.k, "modulus too short for this hash"));
        }
        let err = ossl("RSA OAEP decryption");
        let mut dec = Decrypter::new(pkey).map_err(&err)?;
        dec.set_rsa_padding(Padding::PKCS1_OAEP).map_err(&err)?;
        dec.set_rsa_oaep_md(hash.openssl_md()).map_err(&err)?;
        dec.set_rsa_mgf1_md(mgf_hash.openssl_md()).map_err(&err)?;
        if !label.is_empty() {
            dec.set_rsa_oaep_label(label).map_err(&err)?;
        }
        let len = dec.decrypt_len(ct).map_err(&err)?;
        let mut out = Zeroizing::new(vec![0u8; len.max(self.k)]);
        let n = dec.decrypt(ct, &mut out).map_err(|_| CryptoError::BadPadding)?;
        out.truncate(n);
        Ok(out)
    }
}

/// Left-pads `v` with zeros to `len` bytes (error if longer).
fn left_pad(v: &[u8], len: usize) -> Result<Vec<u8>> {
    let Some(pad) = len.checked_sub(v.len()) else {
        return Err(CryptoError::Rsa("value longer than the modulus".into()));
    };
    let mut out = vec![0u8; pad];
    out.extend_from_slice(v);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bn(v: &[u8]) -> BigNum {
        BigNum::from_slice(v).unwrap()
    }

    /// Checks every structural property of a generated key and exercises the engine.
    fn check_key(key: &RsaPrivateKey, bits: u32, e: u32) {
        let mut ctx = BigNumContext::new().unwrap();
        let (n, p, q, d) = (bn(&key.n), bn(&key.p), bn(&key.q), bn(&key.d));
        assert_eq!(n.num_bits(), bits as i32);
        assert_eq!(key.n.len(), bits as usize / 8);
        assert_eq!(key.p.len(), (bits as usize / 2).div_ceil(8));
        assert_eq!(bn(&key.e), BigNum::from_u32(e).unwrap());
        assert!(p.ucmp(&q) == Ordering::Greater);
        // Top two bits of p and q set.
        let half = bits as i32 / 2;
        for x in [&p, &q] {
            assert_eq!(x.num_bits(), half);
            assert!(x.is_bit_set(half - 2));
            assert!(x.is_prime(20, &mut ctx).unwrap());
        }
        let mut pq = BigNum::new().unwrap();
        pq.checked_mul(&p, &q, &mut ctx).unwrap();
        assert_eq!(pq, n);
        // e*d == 1 mod lcm(p-1, q-1)
        let mut p1 = p.to_owned().unwrap();
        p1.sub_word(1).unwrap();
        let mut q1 = q.to_owned().unwrap();
        q1.sub_word(1).unwrap();
        let (mut g, mut phi, mut lcm, mut ed) =
            (BigNum::new().unwrap(), BigNum::new().unwrap(), BigNum::new().unwrap(), BigNum::new().unwrap());
        g.gcd(&p1, &q1, &mut ctx).unwrap();
        phi.checked_mul(&p1, &q1, &mut ctx).unwrap();
        lcm.checked_div(&phi, &g, &mut ctx).unwrap();
        ed.mod_mul(&BigNum::from_u32(e).unwrap(), &d, &lcm, &mut ctx).unwrap();
        assert_eq!(ed, BigNum::from_u32(1).unwrap());
        // d < lcm (reduced modulo lcm, not phi).
        assert!(d.ucmp(&lcm) == Ordering::Less);
        // CRT parts.
        let mut t = BigNum::new().unwrap();
        t.nnmod(&d, &p1, &mut ctx).unwrap();
        assert_eq!(t, bn(&key.dp));
        t.nnmod(&d, &q1, &mut ctx).unwrap();
        assert_eq!(t, bn(&key.dq));
        t.mod_mul(&bn(&key.qinv), &q, &p, &mut ctx).unwrap();
        assert_eq!(t, BigNum::from_u32(1).unwrap());

        let eng = RsaEngine::new(key).unwrap();
        let k = eng.modulus_len();
        assert_eq!(k, key.n.len());
        let pubeng = RsaEngine::public(&key.public_key()).unwrap();
        assert!(eng.has_private() && !pubeng.has_private());

        // Raw private == m^d mod n computed independently; raw round trip.
        let m: Vec<u8> = (0..k - 1).map(|i| (i * 7 + 3) as u8).collect();
        let s = eng.raw_private(&m).unwrap();
        assert_eq!(s.len(), k);
        let mut expect = BigNum::new().unwrap();
        expect.mod_exp(&bn(&m), &d, &n, &mut ctx).unwrap();
        assert_eq!(s, expect.to_vec_padded(k as i32).unwrap());
        assert_eq!(strip_zeros(&pubeng.raw_public(&s).unwrap()), strip_zeros(&m));
        assert_eq!(eng.raw_public(&s).unwrap(), pubeng.raw_public(&s).unwrap());

        // PKCS#1 v1.5 signature and encryption round trips.
        let mut di = HashAlg::Sha256.digest_info_prefix().to_vec();
        di.extend(crate::digest::digest(HashAlg::Sha256, b"card data"));
        let sig = eng.pkcs1_sign(&di).unwrap();
        assert!(pubeng.pkcs1_verify(&di, &sig).unwrap());
        assert!(eng.pkcs1_verify(&di, &sig).unwrap());
        let mut bad = sig.clone();
        bad[k / 2] ^= 1;
        assert!(!pubeng.pkcs1_verify(&di, &bad).unwrap());
        assert!(!pubeng.pkcs1_verify(b"other", &sig).unwrap());
        let ct = pubeng.pkcs1_encrypt(b"secret key bytes").unwrap();
        assert_eq!(ct.len(), k);
        assert_eq!(&eng.pkcs1_decrypt(&ct).unwrap()[..], b"secret key bytes");

        // OAEP SHA-256 with a label (needs k >= 2*32 + 2 + payload).
        if k < 128 {
            return;
        }
        let ct = pubeng.oaep_encrypt(HashAlg::Sha256, HashAlg::Sha256, b"quill-transport", b"KEK share").unwrap();
        assert_eq!(ct.len(), k);
        let pt = eng.oaep_decrypt(HashAlg::Sha256, HashAlg::Sha256, b"quill-transport", &ct).unwrap();
        assert_eq!(&pt[..], b"KEK share");
        assert_eq!(eng.oaep_decrypt(HashAlg::Sha256, HashAlg::Sha256, b"other", &ct), Err(CryptoError::BadPadding));
        assert_eq!(
            eng.oaep_decrypt(HashAlg::Sha256, HashAlg::Sha1, b"quill-transport", &ct),
            Err(CryptoError::BadPadding)
        );
        // Maximum OAEP payload, empty label, SHA-1.
        let max = vec![0x5A; k - 42];
        let ct = eng.oaep_encrypt(HashAlg::Sha1, HashAlg::Sha1, b"", &max).unwrap();
        assert_eq!(*eng.oaep_decrypt(HashAlg::Sha1, HashAlg::Sha1, b"", &ct).unwrap(), max);
        assert!(matches!(
            eng.oaep_encrypt(HashAlg::Sha1, HashAlg::Sha1, b"", &[0; 1000]),
            Err(CryptoError::DataLength { .. })
        ));
    }

    #[test]
    fn generate_1024_e3() {
        let key = generate(1024, 3).unwrap();
        check_key(&key, 1024, 3);
    }

    #[test]
    fn generate_1152_e3() {
        let key = generate(1152, 3).unwrap();
        check_key(&key, 1152, 3);
    }

    #[test]
    fn generate_1984_e65537() {
        let key = generate(1984, 65537).unwrap();
        check_key(&key, 1984, 65537);
    }

    #[test]
    fn generate_odd_sizes_and_exponents() {
        // 520 bits: 260-bit primes, not a whole number of bytes.
        check_key(&generate(520, 3).unwrap(), 520, 3);
        // Composite exponent 15: gcd(15, p-1) must be 1, not just p mod 15 != 1.
        let key = generate(768, 15).unwrap();
        check_key(&key, 768, 15);
        assert!(matches!(generate(1000 + 4, 3), Err(CryptoError::Invalid(_))));
        assert!(matches!(generate(256, 3), Err(CryptoError::Invalid(_))));
        assert!(matches!(generate(16392, 3), Err(CryptoError::Invalid(_))));
        assert!(matches!(generate(1024, 4), Err(CryptoError::Invalid(_))));
        assert!(matches!(generate(1024, 1), Err(CryptoError::Invalid(_))));
    }

    #[test]
    fn import_from_components() {
        let key = generate(1024, 65537).unwrap();
        let again = from_components(&key.n, &key.e, &key.d, &key.p, &key.q).unwrap();
        assert_eq!(again, key);
        // q, p order and a missing d.
        let again = from_components(&key.n, &key.e, &[], &key.q, &key.p).unwrap();
        assert_eq!(again, key);
        // d reduced modulo phi instead of lcm is also valid.
        let mut ctx = BigNumContext::new().unwrap();
        let (mut p1, mut q1) = (bn(&key.p), bn(&key.q));
        p1.sub_word(1).unwrap();
        q1.sub_word(1).unwrap();
        let mut phi = BigNum::new().unwrap();
        phi.checked_mul(&p1, &q1, &mut ctx).unwrap();
        let mut dphi = BigNum::new().unwrap();
        dphi.mod_inverse(&bn(&key.e), &phi, &mut ctx).unwrap();
        let k2 = from_components(&key.n, &key.e, &dphi.to_vec(), &key.p, &key.q).unwrap();
        let eng = RsaEngine::new(&k2).unwrap();
        let s = eng.raw_private(&[0x42; 100]).unwrap();
        assert_eq!(strip_zeros(&eng.raw_public(&s).unwrap()), &[0x42; 100][..]);
        // Inconsistent inputs.
        let mut bad_n = key.n.clone();
        bad_n[10] ^= 1;
        assert!(matches!(from_components(&bad_n, &key.e, &key.d, &key.p, &key.q), Err(CryptoError::Rsa(_))));
        let mut bad_d = key.d.clone();
        bad_d[100] ^= 1;
        assert!(matches!(from_components(&key.n, &key.e, &bad_d, &key.p, &key.q), Err(CryptoError::Rsa(_))));
        assert!(from_components(&key.n, &key.e, &key.d, &key.p, &key.p).is_err());
        assert!(from_components(&key.n, &[], &key.d, &key.p, &key.q).is_err());
        assert!(from_components(&key.n, &[2], &[], &key.p, &key.q).is_err());
        // Engine rejects a struct whose n does not match p*q.
        let mut broken = key.clone();
        broken.n = bad_n;
        assert!(matches!(RsaEngine::new(&broken), Err(CryptoError::Rsa(_))));
    }

    #[test]
    fn pkcs8_round_trip_keeps_every_component() {
        let key = generate(1024, 3).unwrap();
        let der = to_pkcs8(&key).unwrap();
        let back = from_pkcs8(&der).unwrap();
        assert_eq!(strip_zeros(&back.n), strip_zeros(&key.n));
        assert_eq!(strip_zeros(&back.d), strip_zeros(&key.d));
        for (a, b) in [(&back.p, &key.p), (&back.q, &key.q), (&back.dp, &key.dp), (&back.qinv, &key.qinv)] {
            assert_eq!(strip_zeros(a), strip_zeros(b));
        }
        // OpenSSL reads it as the same key.
        let o = PKey::private_key_from_pkcs8(&der).unwrap().rsa().unwrap();
        assert_eq!(o.n().to_vec(), strip_zeros(&key.n));
        let mut bad = der.to_vec();
        bad.truncate(bad.len() - 3);
        assert!(from_pkcs8(&bad).is_err());
        assert!(from_pkcs8(b"not der").is_err());
    }

    #[test]
    fn engine_input_checks() {
        let key = generate(1024, 3).unwrap();
        let eng = RsaEngine::new(&key).unwrap();
        let pubeng = RsaEngine::public(&key.public_key()).unwrap();
        let k = eng.modulus_len();
        // >= n and longer than k are rejected; shorter inputs are integers.
        assert!(matches!(eng.raw_private(&key.n), Err(CryptoError::DataLength { .. })));
        assert!(matches!(eng.raw_private(&[0xFF; 128]), Err(CryptoError::DataLength { .. })));
        assert!(matches!(eng.raw_private(&vec![0; k + 1]), Err(CryptoError::DataLength { .. })));
        let mut n_minus_1 = key.n.clone();
        *n_minus_1.last_mut().unwrap() -= 1;
        let s = eng.raw_private(&n_minus_1).unwrap();
        assert_eq!(pubeng.raw_public(&s).unwrap(), n_minus_1);
        assert_eq!(eng.raw_private(&[]).unwrap(), vec![0; k]);
        assert_eq!(eng.raw_private(&[1]).unwrap(), left_pad(&[1], k).unwrap());
        // Public engines refuse private operations.
        assert!(matches!(pubeng.raw_private(&[1]), Err(CryptoError::Rsa(_))));
        assert!(matches!(pubeng.pkcs1_sign(&[1]), Err(CryptoError::Rsa(_))));
        assert!(matches!(pubeng.pkcs1_decrypt(&vec![1; k]), Err(CryptoError::Rsa(_))));
        assert!(matches!(
            pubeng.oaep_decrypt(HashAlg::Sha256, HashAlg::Sha256, b"", &vec![1; k]),
            Err(CryptoError::Rsa(_))
        ));
        // Length rules.
        assert!(matches!(eng.pkcs1_sign(&vec![0; k - 10]), Err(CryptoError::DataLength { .. })));
        assert!(eng.pkcs1_sign(&vec![0; k - 11]).is_ok());
        assert!(matches!(eng.pkcs1_verify(b"x", &[0; 3]), Err(CryptoError::DataLength { .. })));
        assert!(!eng.pkcs1_verify(b"x", &[0xFF; 128]).unwrap());
        assert!(!eng.pkcs1_verify(b"x", &[0; 128]).unwrap());
        assert!(matches!(eng.pkcs1_encrypt(&vec![0; k - 10]), Err(CryptoError::DataLength { .. })));
        assert!(matches!(eng.pkcs1_decrypt(&[1; 5]), Err(CryptoError::DataLength { .. })));
        // OpenSSL >= 3.2 uses implicit rejection (a pseudo-random result instead of an error).
        let r = eng.pkcs1_decrypt(&vec![1; k]);
        assert!(r == Err(CryptoError::BadPadding) || openssl::version::number() >= 0x3020_0000);
        assert_eq!(eng.oaep_decrypt(HashAlg::Sha256, HashAlg::Sha256, b"", &vec![1; k]), Err(CryptoError::BadPadding));
        // SHA-512 OAEP needs k >= 130.
        assert!(matches!(
            eng.oaep_encrypt(HashAlg::Sha512, HashAlg::Sha512, b"", b"x"),
            Err(CryptoError::DataLength { .. })
        ));
        // Bad public keys.
        assert!(RsaEngine::public(&RsaPublicKey { n: vec![0xFF; 32], e: vec![3] }).is_err());
        assert!(RsaEngine::public(&RsaPublicKey { n: key.n.clone(), e: vec![4] }).is_err());
        assert!(RsaEngine::public(&RsaPublicKey { n: key.n.clone(), e: vec![] }).is_err());
        assert!(RsaEngine::public(&RsaPublicKey { n: vec![], e: vec![3] }).is_err());
        // Leading zeros in a public modulus are accepted.
        let mut n0 = vec![0, 0];
        n0.extend(&key.n);
        assert_eq!(RsaEngine::public(&RsaPublicKey { n: n0, e: vec![0, 3] }).unwrap().modulus_len(), k);
        // Debug output does not show private parts.
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(&hex_prefix(&key.d)));
    }

    /// Average time of `generate(1984, 3)`; run with
    /// `cargo test --release -p quill-crypto -- --ignored --nocapture bench_generate`.
    #[test]
    #[ignore]
    fn bench_generate_1984_e3() {
        let runs = 10;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            let key = generate(1984, 3).unwrap();
            assert_eq!(key.n.len(), 248);
        }
        let avg = start.elapsed() / runs;
        println!("generate(1984, 3): {avg:?} average over {runs} runs");
    }
}

//! Cryptographic operations: mechanism + key → state machine for the multi-part API, and the
//! one-shot key operations (generate, wrap, unwrap, derive). Pure: no sessions, no storage.
//!
//! - this file: what every part shares ([`Kind`], key checks, random values);
//! - `operation`: [`Operation`], the multi-part state machine (standard mechanisms);
//! - `block`: block-cipher streaming for it;
//! - `payment`: the payment vendor mechanisms (CVV, MACs, PINs, CRT component export);
//! - `wrap`: `C_WrapKey`/`C_UnwrapKey` values;
//! - `tr31`: the TR-31 key block mechanisms;
//! - [`ec`]: EC (P-256/384/521) and Ed25519 keys, ECDSA, ECDH, EdDSA;
//! - [`kdf`]: concatenate/XOR/extract derivations, the X9.63 KDF of ECDH, SP 800-108.

mod block;
pub mod ec;
pub mod kdf;
mod operation;
mod payment;
mod tr31;
mod wrap;

pub use operation::Operation;
pub use tr31::{Unwrapped, unwrap_tr31};
pub use wrap::{is_aes_key_wrap, unwrap, wrap};

use crate::error::{Error, Result};
use crate::object::{Material, Object, fixed_key_len};
use cryptoki_sys::*;
use quill_crypto::sym;
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
    pub(crate) fn usage(self) -> CK_ATTRIBUTE_TYPE {
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
    pub(crate) fn flag(self) -> CK_FLAGS {
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

pub(crate) const TDES: &[CK_KEY_TYPE] = &[CKK_DES2, CKK_DES3];
pub(crate) const AES: &[CK_KEY_TYPE] = &[CKK_AES];

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

//! The one-shot key wrapping functions: `C_WrapKey` and `C_UnwrapKey` values.

use super::{Kind, Operation, payment, tr31};
use crate::error::{Error, Result};
use crate::mechanism::*;
use crate::object::{Material, Object};
use cryptoki_sys::*;
use std::sync::Arc;
use zeroize::Zeroizing;

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
        return payment::wrap_crt_component(mech, wrapping, key);
    }
    let value = match (&key.material, key.class()) {
        (Material::Secret(v), CKO_SECRET_KEY) => v.clone(),
        (Material::None, _) => return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "key is not available: log in first")),
        // An RSA private key wraps as its PKCS#8 PrivateKeyInfo under an AES key-wrap mechanism
        // (as SoftHSM does), so that a key pair generated here can be kept wrapped elsewhere.
        // Inside a TR-31 block (CKM_QUILL_TR31_WRAP, algorithm R) it is the same DER structure.
        (Material::RsaPrivate(k, _), CKO_PRIVATE_KEY)
            if is_aes_key_wrap(mech.mech) || mech.mech == CKM_QUILL_TR31_WRAP =>
        {
            Arc::new(quill_crypto::rsa::to_pkcs8(k).map_err(|e| Error::general(format!("PKCS#8 encoding: {e}")))?)
        }
        _ => {
            return Err(Error::new(
                CKR_KEY_NOT_WRAPPABLE,
                "secret keys wrap with this mechanism; RSA private keys only with CKM_AES_KEY_WRAP(_PAD/_KWP) or CKM_QUILL_TR31_WRAP (CRT parts: CKM_QUILL_RSA_CRT_COMPONENT_WRAP)",
            ));
        }
    };
    if mech.mech == CKM_QUILL_TR31_WRAP {
        return tr31::wrap_tr31(mech, wrapping, key, &value);
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

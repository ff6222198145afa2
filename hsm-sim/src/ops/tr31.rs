//! TR-31 glue: `CKM_QUILL_TR31_WRAP`, `CKM_QUILL_TR31_UNWRAP` and `CKM_QUILL_TR31_TRANSLATE` over
//! [`quill_crypto::tr31`], mapping key types, modes of use and exportability to PKCS#11
//! attributes and errors to return codes.

use super::{AES, Resolver, TDES, secret_of};
use crate::attr::{Attribute, decode_bool, template_to_map};
use crate::error::{Error, Result};
use crate::mechanism::*;
use crate::object::Object;
use cryptoki_sys::*;
use quill_crypto::tr31::{self, Exportability, Kbpk, KeyFunction, ModeOfUse, Tr31Error, Tr31Header};
use std::sync::Arc;
use zeroize::Zeroizing;

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
            | (A::Rsa, CKK_RSA)
    )
}

/// `C_WrapKey` with `CKM_QUILL_TR31_WRAP`: the secret `value` of `key` as a TR-31 key block under
/// `wrapping` (the KBPK), with the header template of the mechanism parameter. The key length is
/// hidden (padding as for the longest key of the algorithm); the padding is random. An RSA private
/// key (algorithm `R`) travels as its DER PKCS#8 `PrivateKeyInfo` (ANSI X9.143: asymmetric keys
/// in the key data field are DER-encoded), whose length follows from the public modulus anyway.
pub(super) fn wrap_tr31(mech: &Mechanism, wrapping: &Object, key: &Object, value: &[u8]) -> Result<Vec<u8>> {
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
    let masked = template.algorithm.max_key_len();
    let block = wrap_random(kbpk_for(&kbpk, aes), &template, value, masked, tr31_wrap_err)?;
    Ok(block.into_bytes())
}

/// [`tr31::wrap`] with random padding from the operating system (`map` turns its errors into
/// return codes).
fn wrap_random(
    kbpk: Kbpk<'_>,
    header: &Tr31Header,
    key: &[u8],
    masked: Option<usize>,
    map: impl FnOnce(Tr31Error) -> Error,
) -> Result<String> {
    let mut rng_failure = None;
    let mut fill = |buf: &mut [u8]| {
        if let Err(e) = getrandom::fill(buf) {
            rng_failure = Some(e.to_string());
        }
    };
    let block = tr31::wrap(kbpk, header, key, masked, &mut fill).map_err(map)?;
    if let Some(e) = rng_failure {
        return Err(Error::general(format!("getrandom: {e}")));
    }
    Ok(block)
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
fn tr31_usages(mode: ModeOfUse) -> Vec<CK_ATTRIBUTE_TYPE> {
    TR31_USAGE_ATTRS.iter().copied().filter(|&a| function_of(a).is_some_and(|f| mode.allows(f))).collect()
}

/// The function a usage attribute grants.
fn function_of(attr: CK_ATTRIBUTE_TYPE) -> Option<KeyFunction> {
    Some(match attr {
        CKA_ENCRYPT => KeyFunction::Encrypt,
        CKA_DECRYPT => KeyFunction::Decrypt,
        CKA_WRAP => KeyFunction::Wrap,
        CKA_UNWRAP => KeyFunction::Unwrap,
        CKA_SIGN => KeyFunction::Sign,
        CKA_VERIFY => KeyFunction::Verify,
        CKA_DERIVE => KeyFunction::Derive,
        _ => return None,
    })
}

/// The usage attributes a TR-31 header decides.
const TR31_USAGE_ATTRS: &[CK_ATTRIBUTE_TYPE] =
    &[CKA_ENCRYPT, CKA_DECRYPT, CKA_SIGN, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP, CKA_DERIVE];

/// The unwrap template completed from a TR-31 header: class, key type and length must agree with
/// the block; a usage the mode of use forbids, or CKA_EXTRACTABLE on a non-exportable key, is
/// inconsistent; usages the template leaves out follow the mode of use.
fn tr31_template(
    header: &Tr31Header,
    class: CK_OBJECT_CLASS,
    kt: CK_KEY_TYPE,
    len: usize,
    tmpl: &[Attribute],
) -> Result<Vec<Attribute>> {
    let t = template_to_map(tmpl)?;
    let mode = header.mode_of_use.code();
    let kind = if class == CKO_PRIVATE_KEY { "an RSA private key" } else { "a secret key" };
    if let Some(c) = t.ulong(CKA_CLASS)
        && c != class
    {
        return Err(Error::template(format!("the TR-31 block holds {kind}; the template asks for class 0x{c:X}")));
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
        && (class != CKO_SECRET_KEY || l as usize != len)
    {
        return Err(Error::template(format!(
            "the TR-31 block holds a {len}-byte key; the template says CKA_VALUE_LEN {l}"
        )));
    }
    let allowed = tr31_usages(header.mode_of_use);
    let mut out = tmpl.to_vec();
    // Usages the template leaves out follow the mode of use, but never give one key both a
    // key-encryption role (wrap/unwrap) and a data role (encrypt/decrypt) (README "Key hygiene"):
    // the side the template names wins; when it names neither, a key-encryption key (usage K*)
    // keeps wrap/unwrap and every other key encrypt/decrypt.
    let given = |tys: &[CK_ATTRIBUTE_TYPE]| -> Result<bool> {
        for ty in tys {
            if let Some(v) = t.get(*ty)
                && decode_bool(*ty, v)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let (kek_side, data_side) = ([CKA_WRAP, CKA_UNWRAP], [CKA_ENCRYPT, CKA_DECRYPT]);
    let keep_kek = if given(&kek_side)? {
        true
    } else if given(&data_side)? {
        false
    } else {
        header.key_usage.code()[0] == b'K'
    };
    // A private key has no encrypt, verify or wrap attribute (its public half does those).
    let applies =
        |usage: CK_ATTRIBUTE_TYPE| class != CKO_PRIVATE_KEY || !matches!(usage, CKA_ENCRYPT | CKA_VERIFY | CKA_WRAP);
    for &usage in TR31_USAGE_ATTRS.iter().filter(|u| applies(**u)) {
        let ok = allowed.contains(&usage);
        match t.get(usage) {
            Some(v) if decode_bool(usage, v)? && !ok => {
                return Err(Error::template(format!(
                    "attribute 0x{usage:X} is not allowed by the TR-31 mode of use {mode}"
                )));
            }
            Some(_) => {}
            None => {
                let other_side = if keep_kek { data_side.contains(&usage) } else { kek_side.contains(&usage) };
                out.push(Attribute::bool(usage, ok && !other_side));
            }
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

/// What a key block opened by `CKM_QUILL_TR31_UNWRAP` holds.
pub enum Unwrapped {
    /// A secret key: its PKCS#11 key type and value.
    Secret(CK_KEY_TYPE, Zeroizing<Vec<u8>>),
    /// An RSA private key (algorithm `R`), parsed from its DER PKCS#8 `PrivateKeyInfo`.
    RsaPrivate(quill_crypto::rsa::RsaPrivateKey),
}

/// `C_UnwrapKey` with `CKM_QUILL_TR31_UNWRAP`: verifies and decrypts the key block under the
/// KBPK `unwrapping`. Returns the key the block carries and the caller's template completed from
/// the header (see [`tr31_template`]).
pub fn unwrap_tr31(
    mech: &Mechanism,
    unwrapping: &Object,
    wrapped: &[u8],
    tmpl: &[Attribute],
) -> Result<(Unwrapped, Vec<Attribute>)> {
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
    let (class, kt) = block_key_type(&header, key.len(), CKR_WRAPPED_KEY_INVALID)?;
    let tmpl = tr31_template(&header, class, kt, key.len(), tmpl)?;
    let key = if class == CKO_PRIVATE_KEY {
        Unwrapped::RsaPrivate(rsa_private(&key, CKR_WRAPPED_KEY_INVALID)?)
    } else {
        Unwrapped::Secret(kt, key)
    };
    Ok((key, tmpl))
}

/// The RSA private key of a block's key data (DER PKCS#8); not one: `rv`.
fn rsa_private(der: &[u8], rv: CK_RV) -> Result<quill_crypto::rsa::RsaPrivateKey> {
    quill_crypto::rsa::from_pkcs8(der)
        .map_err(|e| Error::new(rv, format!("the TR-31 block's RSA key data is not a PKCS#8 RSA private key: {e}")))
}

/// The PKCS#11 class and key type of the key a block holds (`len` bytes); a block of another
/// algorithm than the ones hsm-sim imports (secret keys T, A, D, H; RSA private keys R) fails
/// with `rv`.
fn block_key_type(header: &Tr31Header, len: usize, rv: CK_RV) -> Result<(CK_OBJECT_CLASS, CK_KEY_TYPE)> {
    Ok(match (header.algorithm, len) {
        (tr31::Algorithm::Tdes, 16) => (CKO_SECRET_KEY, CKK_DES2),
        (tr31::Algorithm::Tdes, 24) => (CKO_SECRET_KEY, CKK_DES3),
        (tr31::Algorithm::Aes, _) => (CKO_SECRET_KEY, CKK_AES),
        (tr31::Algorithm::Des, _) => (CKO_SECRET_KEY, CKK_DES),
        (tr31::Algorithm::Hmac, _) => (CKO_SECRET_KEY, CKK_GENERIC_SECRET),
        (tr31::Algorithm::Rsa, _) => (CKO_PRIVATE_KEY, CKK_RSA),
        (a, _) => {
            return Err(Error::new(
                rv,
                format!(
                    "the TR-31 block holds an algorithm {} key; hsm-sim imports secret keys (T, A, D, H) and RSA private keys (R)",
                    a.code()
                ),
            ));
        }
    })
}

/// What a `CKM_QUILL_TR31_TRANSLATE` operation keeps from `C_EncryptInit`: the source KBPK.
pub(super) struct Translate {
    source: Arc<Object>,
}

/// `C_EncryptInit` with `CKM_QUILL_TR31_TRANSLATE`: the parameter is exactly one `CK_ULONG`, the
/// handle of the source KBPK (unknown or invisible handle, other length:
/// `CKR_MECHANISM_PARAM_INVALID`). The source needs `CKA_UNWRAP` (the caller has checked
/// `CKA_WRAP` on the destination `dest`); both must be KBPKs of one family, since translation
/// never changes the version (`CKR_KEY_TYPE_INCONSISTENT`).
pub(super) fn translate_init(mech: &Mechanism, dest: &Object, resolve: Resolver<'_>) -> Result<Translate> {
    let mut r = ParamReader::new(mech.param.raw(), "CKM_QUILL_TR31_TRANSLATE parameter (CK_OBJECT_HANDLE hSourceKbpk)");
    let handle = r.ulong("hSourceKbpk")?;
    r.end()?;
    let source = resolve(handle)?;
    source.require(CKA_UNWRAP)?;
    let (_, dest_aes) = tr31_kbpk(dest, CKR_KEY_TYPE_INCONSISTENT)?;
    let (_, source_aes) = tr31_kbpk(&source, CKR_KEY_TYPE_INCONSISTENT)?;
    if dest_aes != source_aes {
        return Err(Error::new(
            CKR_KEY_TYPE_INCONSISTENT,
            format!(
                "CKM_QUILL_TR31_TRANSLATE keeps the version: the source KBPK {} protects version {} blocks, the destination KBPK {} version {}",
                source.handle,
                version_of(source_aes),
                dest.handle,
                version_of(dest_aes)
            ),
        ));
    }
    Ok(Translate { source })
}

fn tr31_translate_err(what: &str, e: Tr31Error) -> Error {
    let rv = match &e {
        Tr31Error::TooShort { .. } | Tr31Error::BlockLength { .. } | Tr31Error::BodyLength { .. } => CKR_DATA_LEN_RANGE,
        Tr31Error::KbpkType { .. } => CKR_KEY_TYPE_INCONSISTENT,
        Tr31Error::KbpkLength { .. } | Tr31Error::KbpkWeaker { .. } => CKR_KEY_SIZE_RANGE,
        Tr31Error::Crypto(_) => CKR_FUNCTION_FAILED,
        Tr31Error::Field { .. }
        | Tr31Error::NotAscii { .. }
        | Tr31Error::OptionalBlock { .. }
        | Tr31Error::NotHex { .. }
        | Tr31Error::Mac
        | Tr31Error::KeyLengthField { .. }
        | Tr31Error::KeyLength { .. }
        | Tr31Error::TooLong { .. } => CKR_DATA_INVALID,
    };
    Error::new(rv, format!("CKM_QUILL_TR31_TRANSLATE: {what}: {e}"))
}

/// `C_Encrypt` with `CKM_QUILL_TR31_TRANSLATE`: the key block `block` under the source KBPK of
/// `t`, verified and opened as `CKM_QUILL_TR31_UNWRAP` opens it, then the same key under the same
/// header (every field and optional block as written; the length stays, as the key data keeps
/// its length) protected under `dest`, with fresh random padding. The clear key stays in zeroized
/// memory and never becomes an object.
pub(super) fn translate(t: &Translate, dest: &Object, block: &[u8]) -> Result<Vec<u8>> {
    let source_err = |e| tr31_translate_err("the source key block", e);
    let (source_kbpk, source_aes) = tr31_kbpk(&t.source, CKR_KEY_TYPE_INCONSISTENT)?;
    let (dest_kbpk, dest_aes) = tr31_kbpk(dest, CKR_KEY_TYPE_INCONSISTENT)?;
    // The version decides the KBPK type: check it before any cryptography.
    let peek = tr31::parse_key_block_header(block).map_err(source_err)?;
    for (role, handle, aes) in [("source", t.source.handle, source_aes), ("destination", dest.handle, dest_aes)] {
        if peek.version.id() != version_of(aes) {
            return Err(Error::new(
                CKR_KEY_TYPE_INCONSISTENT,
                format!(
                    "CKM_QUILL_TR31_TRANSLATE: a version {} key block needs {} KBPK; the {role} KBPK {handle} protects version {} (translation keeps the version)",
                    peek.version.id(),
                    other_family(aes),
                    version_of(aes)
                ),
            ));
        }
    }
    let header_text = tr31::key_block_header_text(block).map_err(source_err)?;
    let (header, key) = tr31::unwrap(kbpk_for(&source_kbpk, source_aes), block).map_err(source_err)?;
    if block_key_type(&header, key.len(), CKR_DATA_INVALID)?.0 == CKO_PRIVATE_KEY {
        rsa_private(&key, CKR_DATA_INVALID)?;
    }
    // What C_UnwrapKey gives a block marked N (a key that never leaves the module) its translation
    // keeps: the destination KBPK must not be extractable itself.
    if header.exportability == Exportability::NonExportable && dest.flag(CKA_EXTRACTABLE) {
        return Err(Error::new(
            CKR_KEY_FUNCTION_NOT_PERMITTED,
            format!(
                "CKM_QUILL_TR31_TRANSLATE: the key block is not exportable (N); the destination KBPK {} is extractable",
                dest.handle
            ),
        ));
    }
    // tr31::wrap writes the header afresh: a header it would write differently (an extended
    // length form where the short form fits) is refused rather than changed.
    let mut rewritten = header.clone();
    rewritten.block_length = block.len();
    if rewritten.encode().ok().as_deref() != Some(header_text) {
        return Err(Error::new(
            CKR_DATA_INVALID,
            "CKM_QUILL_TR31_TRANSLATE: the header's optional blocks use a length encoding hsm-sim does not write (the extended form where the short one fits); the translated header would differ",
        ));
    }
    // Keep the length of the key data (and so of the block): padding as long as the source's.
    let mac_chars = 2 * header.version.mac_len();
    let data_len = block.len().saturating_sub(header_text.len() + mac_chars) / 2;
    let masked = data_len.checked_sub(2);
    rewritten.block_length = 0;
    let out = wrap_random(kbpk_for(&dest_kbpk, dest_aes), &rewritten, &key, masked, |e| {
        tr31_translate_err("protecting the key under the destination KBPK", e)
    })?;
    if out.len() != block.len() || !out.starts_with(header_text) {
        return Err(Error::general(
            "CKM_QUILL_TR31_TRANSLATE: the translated block's header differs from the source's",
        ));
    }
    Ok(out.into_bytes())
}

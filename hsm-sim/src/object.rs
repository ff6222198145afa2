//! Objects: attributes, key material, template defaults and rules.

use crate::attr::{AttrMap, Attribute, check_known, decode_bool, is_known_attr, is_secret_attr, template_to_map};
use crate::error::{Error, Result};
use crate::ops::ec;
use cryptoki_sys::*;
use quill_crypto::rsa::{RsaEngine, RsaPrivateKey};
use quill_crypto::sym;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Key material held by an object (never leaves the module unless the object allows it).
#[derive(Clone)]
pub enum Material {
    /// Data objects, certificates.
    None,
    /// Secret key bytes.
    Secret(Arc<Zeroizing<Vec<u8>>>),
    /// RSA private key with a prepared engine.
    RsaPrivate(Arc<RsaPrivateKey>, Arc<RsaEngine>),
    /// RSA public key with a prepared engine.
    RsaPublic(Arc<RsaEngine>),
    /// EC or Ed25519 key (private or public).
    Ec(Arc<crate::ops::ec::EcKeyMaterial>),
}

/// One object.
#[derive(Clone)]
pub struct Object {
    /// Handle the caller uses.
    pub handle: CK_OBJECT_HANDLE,
    /// Stable uid of token objects (file name); `None` for session objects.
    pub uid: Option<String>,
    /// Session that created a session object.
    pub owner: Option<CK_SESSION_HANDLE>,
    /// Non-secret attributes (public key values included).
    pub attrs: AttrMap,
    /// Key material.
    pub material: Material,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("handle", &self.handle)
            .field("uid", &self.uid)
            .field("attrs", &self.attrs)
            .finish()
    }
}

/// How an object came to be (drives LOCAL, ALWAYS_SENSITIVE, NEVER_EXTRACTABLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `C_CreateObject` (value supplied from outside).
    Created,
    /// `C_GenerateKey[Pair]` inside the token.
    Generated(CK_MECHANISM_TYPE),
    /// `C_DeriveKey` from a base key with these flags.
    Derived { always_sensitive: bool, never_extractable: bool },
    /// `C_UnwrapKey`.
    Unwrapped,
}

impl Object {
    /// Object class.
    pub fn class(&self) -> CK_OBJECT_CLASS {
        self.attrs.ulong(CKA_CLASS).unwrap_or(CK_UNAVAILABLE_INFORMATION)
    }
    /// Key type (keys only).
    pub fn key_type(&self) -> Option<CK_KEY_TYPE> {
        self.attrs.ulong(CKA_KEY_TYPE)
    }
    /// A boolean attribute.
    pub fn flag(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        self.attrs.flag(ty)
    }
    /// Is it a token object?
    pub fn is_token(&self) -> bool {
        self.flag(CKA_TOKEN)
    }
    /// Is it a private object (visible only after user login)?
    pub fn is_private(&self) -> bool {
        self.flag(CKA_PRIVATE)
    }
    /// Secret key bytes, or a `CKR_KEY_TYPE_INCONSISTENT` error.
    pub fn secret(&self) -> Result<&Zeroizing<Vec<u8>>> {
        match &self.material {
            Material::Secret(k) => Ok(k),
            _ => Err(Error::new(CKR_KEY_TYPE_INCONSISTENT, "not a secret key")),
        }
    }
    /// RSA engine (private or public).
    pub fn rsa_engine(&self) -> Result<&RsaEngine> {
        match &self.material {
            Material::RsaPrivate(_, e) | Material::RsaPublic(e) => Ok(e),
            _ => Err(Error::new(CKR_KEY_TYPE_INCONSISTENT, "not an RSA key")),
        }
    }
    /// Require a usage flag (`CKA_ENCRYPT`, …) on this key.
    pub fn require(&self, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        if self.flag(usage) {
            Ok(())
        } else {
            Err(Error::new(CKR_KEY_FUNCTION_NOT_PERMITTED, format!("key {} lacks usage 0x{usage:X}", self.handle)))
        }
    }

    /// The secret attributes (for sealing at rest).
    pub fn secret_attrs(&self) -> AttrMap {
        let mut m = AttrMap::default();
        match &self.material {
            Material::Secret(k) => m.set(CKA_VALUE, k.to_vec()),
            Material::RsaPrivate(k, _) => {
                m.set(CKA_PRIVATE_EXPONENT, k.d.clone());
                m.set(CKA_PRIME_1, k.p.clone());
                m.set(CKA_PRIME_2, k.q.clone());
                m.set(CKA_EXPONENT_1, k.dp.clone());
                m.set(CKA_EXPONENT_2, k.dq.clone());
                m.set(CKA_COEFFICIENT, k.qinv.clone());
            }
            Material::Ec(k) if k.has_private() => {
                if let Ok(v) = k.private_value() {
                    m.set(CKA_VALUE, v.to_vec());
                }
            }
            _ => {}
        }
        m
    }

    /// Value of one attribute for `C_GetAttributeValue`.
    pub fn read_attr(&self, ty: CK_ATTRIBUTE_TYPE) -> AttrRead {
        if is_secret_attr(ty) && !matches!(self.material, Material::None) && self.class() != CKO_PUBLIC_KEY {
            if self.flag(CKA_SENSITIVE) || !self.flag(CKA_EXTRACTABLE) {
                return AttrRead::Sensitive;
            }
            return match self.secret_attrs().get(ty) {
                Some(v) => AttrRead::Value(v.to_vec()),
                None => AttrRead::Invalid,
            };
        }
        match self.attrs.get(ty) {
            Some(v) => AttrRead::Value(v.to_vec()),
            None => AttrRead::Invalid,
        }
    }

    /// Approximate size for `C_GetObjectSize`.
    pub fn size(&self) -> usize {
        self.attrs.0.values().map(|v| v.len() + 16).sum::<usize>()
            + self.secret_attrs().0.values().map(Vec::len).sum::<usize>()
    }
}

/// Outcome of reading one attribute.
#[derive(Debug)]
pub enum AttrRead {
    /// The value.
    Value(Vec<u8>),
    /// `CKR_ATTRIBUTE_SENSITIVE`.
    Sensitive,
    /// `CKR_ATTRIBUTE_TYPE_INVALID`.
    Invalid,
}

/// Attributes a caller may never set.
fn read_only_on_create(ty: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(ty, CKA_LOCAL | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE | CKA_KEY_GEN_MECHANISM | CKA_UNIQUE_ID)
}

/// Does a key hold both a key-encryption role (`CKA_WRAP`/`CKA_UNWRAP`) and a data role
/// (`CKA_ENCRYPT`/`CKA_DECRYPT`)? The key-separation policy (README "Key hygiene") forbids it for
/// secret and private keys: with both, `C_WrapKey` then `C_Decrypt` under the same key gives any
/// extractable key in clear, and `C_Encrypt` of a chosen value then `C_UnwrapKey` plants a key
/// whose value the caller knows. A public key is exempt: whatever it wraps or encrypts, only its
/// private half opens, and that half is held to the rule.
pub fn mixes_roles(attrs: &AttrMap) -> bool {
    matches!(attrs.ulong(CKA_CLASS), Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY))
        && (attrs.flag(CKA_WRAP) || attrs.flag(CKA_UNWRAP))
        && (attrs.flag(CKA_ENCRYPT) || attrs.flag(CKA_DECRYPT))
}

/// Default usage flags of a new key: the flags of `data` (encrypt/decrypt side) and `kek`
/// (wrap/unwrap side) the template leaves out. A template that names a key-encryption role
/// (`CKA_WRAP` or `CKA_UNWRAP` true) gets the data roles off by default and the other way round, so
/// that defaults never mix the two roles (README "Key hygiene"); `others` default on.
fn default_usages(
    t: &mut AttrMap,
    data: &[CK_ATTRIBUTE_TYPE],
    kek: &[CK_ATTRIBUTE_TYPE],
    others: &[CK_ATTRIBUTE_TYPE],
) {
    let wants_kek = kek.iter().any(|f| t.flag(*f));
    for f in data {
        t.default_flag(*f, !wants_kek);
    }
    for f in kek {
        t.default_flag(*f, false);
    }
    for f in others {
        t.default_flag(*f, true);
    }
}

/// Fixed key length of a secret key type (`None`: variable).
pub fn fixed_key_len(kt: CK_KEY_TYPE) -> Option<usize> {
    match kt {
        CKK_DES => Some(8),
        CKK_DES2 => Some(16),
        CKK_DES3 => Some(24),
        _ => None,
    }
}

/// Check a secret key length for its type. Both failures are `CKR_ATTRIBUTE_VALUE_INVALID`: the
/// key type or the length (`CKA_VALUE`, `CKA_VALUE_LEN`) came from the caller's template, and
/// `C_CreateObject`, `C_GenerateKey` and `C_DeriveKey` list no other code for a bad value (PKCS#11
/// 3.0 §5.7.1, §5.14.1, §5.14.5). `C_UnwrapKey` turns a wrong length into
/// `CKR_WRAPPED_KEY_LEN_RANGE` (the length came from the wrapped key).
pub fn check_secret_len(kt: CK_KEY_TYPE, len: usize) -> Result<()> {
    let ok = match kt {
        CKK_DES => len == 8,
        CKK_DES2 => len == 16,
        CKK_DES3 => len == 24,
        CKK_AES => matches!(len, 16 | 24 | 32),
        CKK_GENERIC_SECRET => (1..=512).contains(&len),
        CKK_SHA_1_HMAC | CKK_SHA224_HMAC | CKK_SHA256_HMAC | CKK_SHA384_HMAC | CKK_SHA512_HMAC => {
            (1..=512).contains(&len)
        }
        _ => return Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID, format!("unsupported secret key type 0x{kt:X}"))),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID, format!("{len}-byte value for key type 0x{kt:X}")))
    }
}

/// `CKA_CHECK_VALUE` of a secret key.
pub fn check_value(kt: CK_KEY_TYPE, value: &[u8]) -> Result<Vec<u8>> {
    Ok(match kt {
        CKK_DES | CKK_DES2 | CKK_DES3 => sym::kcv_des(value)?.to_vec(),
        CKK_AES => sym::kcv_aes(value)?.to_vec(),
        _ => quill_crypto::digest::digest(quill_crypto::digest::HashAlg::Sha1, value)[..3].to_vec(),
    })
}

/// Build a new object's attributes and material from a caller template, applying the standard
/// defaults and checks. `class` and `key_type` may come from the mechanism when the template
/// lacks them; `value` is the key material when the module produced it (generate, derive, unwrap).
pub struct NewObject<'a> {
    /// Caller template.
    pub template: &'a [Attribute],
    /// Class when the template does not say.
    pub class: Option<CK_OBJECT_CLASS>,
    /// Key type when the template does not say.
    pub key_type: Option<CK_KEY_TYPE>,
    /// How the object came to be.
    pub origin: Origin,
    /// Material produced by the module (None: from the template).
    pub material: Option<Material>,
    /// Public attributes produced by the module (RSA modulus etc.).
    pub extra: AttrMap,
    /// Is the SO logged in (may set CKA_TRUSTED)?
    pub so: bool,
}

/// Result: attributes and material, handle not yet assigned.
pub fn build(n: NewObject<'_>) -> Result<(AttrMap, Material)> {
    let mut t = template_to_map(n.template)?;
    for ty in t.0.keys() {
        if read_only_on_create(*ty) {
            return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, format!("attribute 0x{ty:X} is set by the token")));
        }
    }
    let class = match (t.ulong(CKA_CLASS), n.class) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::template(format!("class 0x{a:X} does not fit this operation")));
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => return Err(Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_CLASS missing")),
    };
    check_known(class, &t)?;
    t.set_ulong(CKA_CLASS, class);
    if t.flag(CKA_TRUSTED) && !n.so {
        return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, "only the security officer may set CKA_TRUSTED"));
    }
    // Common storage defaults.
    t.default_flag(CKA_TOKEN, false);
    t.default_flag(CKA_MODIFIABLE, true);
    t.default_flag(CKA_COPYABLE, true);
    t.default_flag(CKA_DESTROYABLE, true);
    t.default_bytes(CKA_LABEL, b"");
    let mut material = n.material.unwrap_or(Material::None);
    match class {
        CKO_DATA => {
            t.default_flag(CKA_PRIVATE, false);
            t.default_bytes(CKA_APPLICATION, b"");
            t.default_bytes(CKA_VALUE, b"");
        }
        CKO_CERTIFICATE => {
            t.default_flag(CKA_PRIVATE, false);
            t.default_flag(CKA_TRUSTED, false);
            t.default_bytes(CKA_VALUE, b"");
            t.default_bytes(CKA_ID, b"");
            t.default_bytes(CKA_SUBJECT, b"");
        }
        CKO_SECRET_KEY | CKO_PRIVATE_KEY | CKO_PUBLIC_KEY => {
            let kt = match (t.ulong(CKA_KEY_TYPE), n.key_type) {
                (Some(a), Some(b))
                    if a != b && !(n.origin == Origin::Unwrapped || matches!(n.origin, Origin::Derived { .. })) =>
                {
                    return Err(Error::template(format!("key type 0x{a:X} does not fit this mechanism")));
                }
                (Some(a), _) => a,
                (None, Some(b)) => b,
                (None, None) => return Err(Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_KEY_TYPE missing")),
            };
            t.set_ulong(CKA_KEY_TYPE, kt);
            t.default_bytes(CKA_ID, b"");
            t.default_bytes(CKA_START_DATE, b"");
            t.default_bytes(CKA_END_DATE, b"");
            t.default_flag(CKA_DERIVE, false);
            let local = matches!(n.origin, Origin::Generated(_));
            t.set_flag(CKA_LOCAL, local);
            t.set_ulong(
                CKA_KEY_GEN_MECHANISM,
                match n.origin {
                    Origin::Generated(m) => m,
                    _ => CK_UNAVAILABLE_INFORMATION,
                },
            );
            match class {
                CKO_SECRET_KEY => build_secret(&mut t, kt, &n.origin, &mut material)?,
                CKO_PRIVATE_KEY => build_private(&mut t, kt, &n.origin, &mut material, &n.extra)?,
                _ => build_public(&mut t, kt, &mut material, &n.extra)?,
            }
        }
        _ => return Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID, format!("unsupported object class 0x{class:X}"))),
    }
    Ok((t, material))
}

fn sensitivity_flags(t: &mut AttrMap, origin: &Origin) {
    let (always, never) = match origin {
        Origin::Generated(_) => (t.flag(CKA_SENSITIVE), !t.flag(CKA_EXTRACTABLE)),
        Origin::Derived { always_sensitive, never_extractable } => {
            (*always_sensitive && t.flag(CKA_SENSITIVE), *never_extractable && !t.flag(CKA_EXTRACTABLE))
        }
        Origin::Created | Origin::Unwrapped => (false, false),
    };
    t.set_flag(CKA_ALWAYS_SENSITIVE, always);
    t.set_flag(CKA_NEVER_EXTRACTABLE, never);
}

fn build_secret(t: &mut AttrMap, kt: CK_KEY_TYPE, origin: &Origin, material: &mut Material) -> Result<()> {
    t.default_flag(CKA_PRIVATE, true);
    t.default_flag(CKA_SENSITIVE, false);
    // Like SoftHSM: a key leaves the token only when its template says so.
    t.default_flag(CKA_EXTRACTABLE, false);
    default_usages(t, &[CKA_ENCRYPT, CKA_DECRYPT], &[CKA_WRAP, CKA_UNWRAP], &[CKA_SIGN, CKA_VERIFY]);
    t.default_flag(CKA_WRAP_WITH_TRUSTED, false);
    t.default_flag(CKA_TRUSTED, false);
    if let Material::None = material {
        let v = t.0.remove(&CKA_VALUE).ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE missing"))?;
        *material = Material::Secret(Arc::new(Zeroizing::new(v)));
    } else if t.0.contains_key(&CKA_VALUE) {
        return Err(Error::template("CKA_VALUE is produced by the token for this operation"));
    }
    let Material::Secret(v) = &*material else { return Err(Error::template("secret key without a value")) };
    check_secret_len(kt, v.len()).map_err(|e| match origin {
        Origin::Unwrapped if e.rv == CKR_ATTRIBUTE_VALUE_INVALID && fixed_or_known(kt) => {
            Error::new(CKR_WRAPPED_KEY_LEN_RANGE, e.reason)
        }
        _ => e,
    })?;
    if let Some(l) = t.ulong(CKA_VALUE_LEN)
        && l as usize != v.len()
    {
        return Err(Error::new(
            CKR_ATTRIBUTE_VALUE_INVALID,
            format!("CKA_VALUE_LEN {l} but the value has {} bytes", v.len()),
        ));
    }
    t.set_ulong(CKA_VALUE_LEN, v.len() as CK_ULONG);
    let kcv = check_value(kt, v)?;
    if let Some(given) = t.get(CKA_CHECK_VALUE)
        && !given.is_empty()
        && given != kcv.as_slice()
    {
        return Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_CHECK_VALUE does not match the key value"));
    }
    t.set(CKA_CHECK_VALUE, kcv);
    sensitivity_flags(t, origin);
    Ok(())
}

/// A secret key type the module supports (a length error on it is about the length).
fn fixed_or_known(kt: CK_KEY_TYPE) -> bool {
    matches!(kt, CKK_DES | CKK_DES2 | CKK_DES3 | CKK_AES | CKK_GENERIC_SECRET)
}

fn build_private(
    t: &mut AttrMap,
    kt: CK_KEY_TYPE,
    origin: &Origin,
    material: &mut Material,
    extra: &AttrMap,
) -> Result<()> {
    if kt != CKK_RSA && !ec::is_ec_key_type(kt) {
        return Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID, format!("private key type 0x{kt:X} not supported")));
    }
    t.default_flag(CKA_PRIVATE, true);
    t.default_flag(CKA_SENSITIVE, true);
    t.default_flag(CKA_EXTRACTABLE, false);
    default_usages(t, &[CKA_DECRYPT], &[CKA_UNWRAP], &[CKA_SIGN, CKA_SIGN_RECOVER]);
    t.default_flag(CKA_WRAP_WITH_TRUSTED, false);
    t.default_flag(CKA_ALWAYS_AUTHENTICATE, false);
    t.default_bytes(CKA_SUBJECT, b"");
    for (k, v) in &extra.0 {
        t.set(*k, v.clone());
    }
    if ec::is_ec_key_type(kt) {
        ec::build_private(t, kt, material)?;
        sensitivity_flags(t, origin);
        return Ok(());
    }
    if let Material::None = material {
        let take = |t: &mut AttrMap, ty| {
            t.0.remove(&ty).ok_or_else(|| {
                Error::new(CKR_TEMPLATE_INCOMPLETE, format!("RSA private key attribute 0x{ty:X} missing"))
            })
        };
        let n = t
            .get(CKA_MODULUS)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_MODULUS missing"))?;
        let e = t
            .get(CKA_PUBLIC_EXPONENT)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_PUBLIC_EXPONENT missing"))?;
        let d = Zeroizing::new(take(t, CKA_PRIVATE_EXPONENT)?);
        let p = Zeroizing::new(take(t, CKA_PRIME_1)?);
        let q = Zeroizing::new(take(t, CKA_PRIME_2)?);
        for ty in [CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT] {
            if let Some(mut v) = t.0.remove(&ty) {
                zeroize::Zeroize::zeroize(&mut v);
            }
        }
        let key = quill_crypto::rsa::from_components(&n, &e, &d, &p, &q)
            .map_err(|e| Error::new(CKR_ATTRIBUTE_VALUE_INVALID, format!("RSA private key: {e}")))?;
        let engine = RsaEngine::new(&key)?;
        *material = Material::RsaPrivate(Arc::new(key), Arc::new(engine));
    }
    let Material::RsaPrivate(k, _) = &*material else { return Err(Error::template("private key without material")) };
    t.set(CKA_MODULUS, strip(&k.n));
    t.set(CKA_PUBLIC_EXPONENT, strip(&k.e));
    for ty in [CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT] {
        t.0.remove(&ty);
    }
    sensitivity_flags(t, origin);
    Ok(())
}

fn build_public(t: &mut AttrMap, kt: CK_KEY_TYPE, material: &mut Material, extra: &AttrMap) -> Result<()> {
    if kt != CKK_RSA && !ec::is_ec_key_type(kt) {
        return Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID, format!("public key type 0x{kt:X} not supported")));
    }
    t.default_flag(CKA_PRIVATE, false);
    // Public keys keep every usage on by default (they are exempt from key separation).
    for f in [CKA_ENCRYPT, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_WRAP] {
        t.default_flag(f, true);
    }
    t.default_flag(CKA_TRUSTED, false);
    t.default_bytes(CKA_SUBJECT, b"");
    for (k, v) in &extra.0 {
        t.set(*k, v.clone());
    }
    if ec::is_ec_key_type(kt) {
        return ec::build_public(t, kt, material);
    }
    let n = t.get(CKA_MODULUS).map(strip).ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_MODULUS missing"))?;
    let e = t
        .get(CKA_PUBLIC_EXPONENT)
        .map(strip)
        .ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_PUBLIC_EXPONENT missing"))?;
    if let Material::None = material {
        let engine = RsaEngine::public(&quill_crypto::rsa::RsaPublicKey { n: n.clone(), e: e.clone() })
            .map_err(|e| Error::new(CKR_ATTRIBUTE_VALUE_INVALID, format!("RSA public key: {e}")))?;
        *material = Material::RsaPublic(Arc::new(engine));
    }
    t.set_ulong(CKA_MODULUS_BITS, bit_len(&n));
    t.set(CKA_MODULUS, n);
    t.set(CKA_PUBLIC_EXPONENT, e);
    Ok(())
}

/// Strip leading zero bytes of a big-endian integer.
pub fn strip(v: &[u8]) -> Vec<u8> {
    let i = v.iter().position(|b| *b != 0).unwrap_or(v.len().saturating_sub(1));
    v[i.min(v.len())..].to_vec()
}

/// Bit length of a big-endian integer.
pub fn bit_len(v: &[u8]) -> CK_ULONG {
    let v = strip(v);
    match v.first() {
        Some(b) if *b != 0 => ((v.len() - 1) * 8 + (8 - b.leading_zeros() as usize)) as CK_ULONG,
        _ => 0,
    }
}

/// Apply `C_SetAttributeValue` (or the template of `C_CopyObject`) to existing attributes.
pub fn modify(obj: &Object, tmpl: &[Attribute], so: bool, copying: bool) -> Result<AttrMap> {
    if !copying && !obj.flag(CKA_MODIFIABLE) {
        return Err(Error::new(CKR_ACTION_PROHIBITED, "object is not modifiable"));
    }
    let t = template_to_map(tmpl)?;
    let mut out = obj.attrs.clone();
    if t.get(CKA_UNIQUE_ID).is_some() {
        return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, "CKA_UNIQUE_ID is set by the token"));
    }
    if let Some(ty) = t.0.keys().find(|ty| !is_known_attr(obj.class(), **ty)) {
        return Err(Error::new(
            CKR_ATTRIBUTE_TYPE_INVALID,
            format!("attribute 0x{ty:X} is not defined for this object"),
        ));
    }
    for (ty, v) in &t.0 {
        let cur = obj.attrs.get(*ty);
        if cur == Some(v.as_slice()) {
            continue;
        }
        let newb = || decode_bool(*ty, v);
        match *ty {
            CKA_LABEL | CKA_ID | CKA_START_DATE | CKA_END_DATE | CKA_SUBJECT | CKA_APPLICATION => {}
            CKA_ENCRYPT | CKA_DECRYPT | CKA_SIGN | CKA_VERIFY | CKA_WRAP | CKA_UNWRAP | CKA_DERIVE
            | CKA_SIGN_RECOVER | CKA_VERIFY_RECOVER => {
                newb()?;
            }
            CKA_SENSITIVE => {
                if !newb()? {
                    return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, "CKA_SENSITIVE cannot be turned off"));
                }
            }
            CKA_EXTRACTABLE => {
                if newb()? {
                    return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, "CKA_EXTRACTABLE cannot be turned on"));
                }
            }
            CKA_WRAP_WITH_TRUSTED => {
                if !newb()? {
                    return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, "CKA_WRAP_WITH_TRUSTED cannot be turned off"));
                }
            }
            CKA_TRUSTED => {
                if !so {
                    return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, "only the security officer may set CKA_TRUSTED"));
                }
                newb()?;
            }
            CKA_TOKEN | CKA_PRIVATE if copying => {
                newb()?;
            }
            CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE if copying => {
                if newb()? && !obj.flag(*ty) {
                    return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, format!("attribute 0x{ty:X} cannot be turned on")));
                }
            }
            CKA_DESTROYABLE | CKA_COPYABLE => {
                if newb()? {
                    return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, format!("attribute 0x{ty:X} cannot be turned on")));
                }
            }
            _ => return Err(Error::new(CKR_ATTRIBUTE_READ_ONLY, format!("attribute 0x{ty:X} cannot be changed"))),
        }
        out.set(*ty, v.clone());
    }
    Ok(out)
}

/// Rebuild an object's material from stored (plain + secret) attributes at load time.
pub fn material_from_stored(attrs: &AttrMap, secret: &AttrMap) -> Result<Material> {
    if let Some(m) = ec::material_from_stored(attrs, secret)? {
        return Ok(m);
    }
    match attrs.ulong(CKA_CLASS) {
        Some(CKO_SECRET_KEY) => {
            let v = secret.get(CKA_VALUE).ok_or_else(|| Error::device("stored secret key has no value"))?;
            Ok(Material::Secret(Arc::new(Zeroizing::new(v.to_vec()))))
        }
        Some(CKO_PRIVATE_KEY) => {
            let g = |m: &AttrMap, ty| {
                m.get(ty).map(<[u8]>::to_vec).ok_or_else(|| Error::device(format!("stored RSA key lacks 0x{ty:X}")))
            };
            let key = quill_crypto::rsa::from_components(
                &g(attrs, CKA_MODULUS)?,
                &g(attrs, CKA_PUBLIC_EXPONENT)?,
                &Zeroizing::new(g(secret, CKA_PRIVATE_EXPONENT)?),
                &Zeroizing::new(g(secret, CKA_PRIME_1)?),
                &Zeroizing::new(g(secret, CKA_PRIME_2)?),
            )
            .map_err(|e| Error::device(format!("stored RSA key: {e}")))?;
            let engine = RsaEngine::new(&key)?;
            Ok(Material::RsaPrivate(Arc::new(key), Arc::new(engine)))
        }
        Some(CKO_PUBLIC_KEY) => {
            let n = attrs.get(CKA_MODULUS).ok_or_else(|| Error::device("stored public key lacks modulus"))?;
            let e = attrs.get(CKA_PUBLIC_EXPONENT).ok_or_else(|| Error::device("stored public key lacks exponent"))?;
            let engine = RsaEngine::public(&quill_crypto::rsa::RsaPublicKey { n: n.to_vec(), e: e.to_vec() })?;
            Ok(Material::RsaPublic(Arc::new(engine)))
        }
        _ => Ok(Material::None),
    }
}

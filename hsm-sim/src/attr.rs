//! Attributes as owned Rust values: what the C boundary hands in, and how objects store them.

use crate::error::{Error, Result};
use cryptoki_sys::*;
use std::collections::BTreeMap;

/// One attribute from a caller's template: type and value bytes (already copied out of C memory).
#[derive(Clone, PartialEq, Eq)]
pub struct Attribute {
    /// `CKA_*` type.
    pub ty: CK_ATTRIBUTE_TYPE,
    /// Raw value as the C caller laid it out (`CK_BBOOL` = 1 byte, `CK_ULONG` = native 8 bytes).
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Attribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be secret (CKA_VALUE of a key): never print them.
        write!(f, "Attribute(0x{:X}, {} bytes)", self.ty, self.value.len())
    }
}

impl Drop for Attribute {
    fn drop(&mut self) {
        // Templates carry CKA_VALUE of keys being imported: wipe every copy.
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

impl Attribute {
    /// A boolean attribute.
    pub fn bool(ty: CK_ATTRIBUTE_TYPE, v: bool) -> Self {
        Self { ty, value: vec![u8::from(v)] }
    }
    /// A `CK_ULONG` attribute.
    pub fn ulong(ty: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Self {
        Self { ty, value: v.to_ne_bytes().to_vec() }
    }
    /// A byte-string attribute.
    pub fn bytes(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> Self {
        Self { ty, value: v.to_vec() }
    }
}

/// Decode a `CK_BBOOL` value.
pub fn decode_bool(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> Result<bool> {
    match v {
        [b] => Ok(*b != 0),
        _ => Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID, format!("attribute 0x{ty:X}: CK_BBOOL must be 1 byte"))),
    }
}

/// Decode a `CK_ULONG` value.
pub fn decode_ulong(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> Result<CK_ULONG> {
    let arr: [u8; std::mem::size_of::<CK_ULONG>()] = v.try_into().map_err(|_| {
        Error::new(
            CKR_ATTRIBUTE_VALUE_INVALID,
            format!("attribute 0x{ty:X}: CK_ULONG must be {} bytes", std::mem::size_of::<CK_ULONG>()),
        )
    })?;
    Ok(CK_ULONG::from_ne_bytes(arr))
}

/// Is this attribute a boolean one (for validation of caller values)?
pub fn is_bool_attr(ty: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(
        ty,
        CKA_TOKEN
            | CKA_PRIVATE
            | CKA_MODIFIABLE
            | CKA_COPYABLE
            | CKA_DESTROYABLE
            | CKA_TRUSTED
            | CKA_SENSITIVE
            | CKA_ENCRYPT
            | CKA_DECRYPT
            | CKA_WRAP
            | CKA_UNWRAP
            | CKA_SIGN
            | CKA_SIGN_RECOVER
            | CKA_VERIFY
            | CKA_VERIFY_RECOVER
            | CKA_DERIVE
            | CKA_EXTRACTABLE
            | CKA_LOCAL
            | CKA_NEVER_EXTRACTABLE
            | CKA_ALWAYS_SENSITIVE
            | CKA_WRAP_WITH_TRUSTED
            | CKA_ALWAYS_AUTHENTICATE
    )
}

/// Is this attribute a `CK_ULONG` one?
pub fn is_ulong_attr(ty: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(
        ty,
        CKA_CLASS
            | CKA_KEY_TYPE
            | CKA_VALUE_LEN
            | CKA_MODULUS_BITS
            | CKA_CERTIFICATE_TYPE
            | CKA_KEY_GEN_MECHANISM
            | CKA_CERTIFICATE_CATEGORY
    )
}

/// Attributes that hold secret key material: stored sealed, never returned when sensitive.
pub fn is_secret_attr(ty: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(
        ty,
        CKA_VALUE
            | CKA_PRIVATE_EXPONENT
            | CKA_PRIME_1
            | CKA_PRIME_2
            | CKA_EXPONENT_1
            | CKA_EXPONENT_2
            | CKA_COEFFICIENT
    )
}

/// An attribute map, ordered so stored files and comparisons are deterministic.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AttrMap(pub BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>);

impl std::fmt::Debug for AttrMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys().map(|k| format!("0x{k:X}"))).finish()
    }
}

impl AttrMap {
    /// Raw value of an attribute.
    pub fn get(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.0.get(&ty).map(Vec::as_slice)
    }
    /// Boolean value (false when absent or malformed).
    pub fn flag(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        matches!(self.get(ty), Some([b]) if *b != 0)
    }
    /// `CK_ULONG` value.
    pub fn ulong(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        self.get(ty).and_then(|v| decode_ulong(ty, v).ok())
    }
    /// Set a raw value.
    pub fn set(&mut self, ty: CK_ATTRIBUTE_TYPE, v: Vec<u8>) {
        self.0.insert(ty, v);
    }
    /// Set a boolean.
    pub fn set_flag(&mut self, ty: CK_ATTRIBUTE_TYPE, v: bool) {
        self.0.insert(ty, vec![u8::from(v)]);
    }
    /// Set a `CK_ULONG`.
    pub fn set_ulong(&mut self, ty: CK_ATTRIBUTE_TYPE, v: CK_ULONG) {
        self.0.insert(ty, v.to_ne_bytes().to_vec());
    }
    /// Set only if absent.
    pub fn default_flag(&mut self, ty: CK_ATTRIBUTE_TYPE, v: bool) {
        self.0.entry(ty).or_insert_with(|| vec![u8::from(v)]);
    }
    /// Set only if absent.
    pub fn default_bytes(&mut self, ty: CK_ATTRIBUTE_TYPE, v: &[u8]) {
        self.0.entry(ty).or_insert_with(|| v.to_vec());
    }
    /// Does every attribute of `tmpl` match exactly?
    pub fn matches(&self, tmpl: &[Attribute]) -> bool {
        tmpl.iter().all(|a| self.0.get(&a.ty).is_some_and(|v| *v == a.value))
    }
}

/// Check a caller template for malformed values and duplicates; returns it as a map.
pub fn template_to_map(tmpl: &[Attribute]) -> Result<AttrMap> {
    let mut m = AttrMap::default();
    for a in tmpl {
        if is_bool_attr(a.ty) {
            decode_bool(a.ty, &a.value)?;
        } else if is_ulong_attr(a.ty) {
            decode_ulong(a.ty, &a.value)?;
        }
        if let Some(prev) = m.0.get(&a.ty)
            && *prev != a.value
        {
            return Err(Error::template(format!("attribute 0x{:X} given twice with different values", a.ty)));
        }
        m.0.insert(a.ty, a.value.clone());
    }
    Ok(m)
}

/// Attributes every object has (PKCS#11 3.0 §4.2, §4.4).
const COMMON_ATTRS: &[CK_ATTRIBUTE_TYPE] =
    &[CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE, CKA_LABEL, CKA_UNIQUE_ID];

/// Attributes every key has (§4.7).
const KEY_ATTRS: &[CK_ATTRIBUTE_TYPE] =
    &[CKA_KEY_TYPE, CKA_ID, CKA_START_DATE, CKA_END_DATE, CKA_DERIVE, CKA_LOCAL, CKA_KEY_GEN_MECHANISM];

/// Attributes of one class beyond the common ones. What is not listed here the module does not
/// define, and a template naming it gets `CKR_ATTRIBUTE_TYPE_INVALID`: among them
/// `CKA_ALLOWED_MECHANISMS`, `CKA_WRAP_TEMPLATE` and `CKA_UNWRAP_TEMPLATE`, which the module does
/// not enforce and so must not accept silently.
fn class_attrs(class: CK_OBJECT_CLASS) -> &'static [CK_ATTRIBUTE_TYPE] {
    match class {
        CKO_DATA => &[CKA_APPLICATION, CKA_OBJECT_ID, CKA_VALUE],
        CKO_CERTIFICATE => &[
            CKA_CERTIFICATE_TYPE,
            CKA_TRUSTED,
            CKA_CERTIFICATE_CATEGORY,
            CKA_CHECK_VALUE,
            CKA_START_DATE,
            CKA_END_DATE,
            CKA_PUBLIC_KEY_INFO,
            CKA_SUBJECT,
            CKA_ID,
            CKA_ISSUER,
            CKA_SERIAL_NUMBER,
            CKA_VALUE,
            CKA_URL,
            CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
            CKA_HASH_OF_ISSUER_PUBLIC_KEY,
            CKA_JAVA_MIDP_SECURITY_DOMAIN,
            CKA_NAME_HASH_ALGORITHM,
        ],
        CKO_PUBLIC_KEY => &[
            CKA_SUBJECT,
            CKA_ENCRYPT,
            CKA_VERIFY,
            CKA_VERIFY_RECOVER,
            CKA_WRAP,
            CKA_TRUSTED,
            CKA_PUBLIC_KEY_INFO,
            CKA_MODULUS,
            CKA_MODULUS_BITS,
            CKA_PUBLIC_EXPONENT,
            CKA_EC_PARAMS,
            CKA_EC_POINT,
        ],
        CKO_PRIVATE_KEY => &[
            CKA_SUBJECT,
            CKA_SENSITIVE,
            CKA_DECRYPT,
            CKA_SIGN,
            CKA_SIGN_RECOVER,
            CKA_UNWRAP,
            CKA_EXTRACTABLE,
            CKA_ALWAYS_SENSITIVE,
            CKA_NEVER_EXTRACTABLE,
            CKA_WRAP_WITH_TRUSTED,
            CKA_ALWAYS_AUTHENTICATE,
            CKA_PUBLIC_KEY_INFO,
            CKA_MODULUS,
            CKA_PUBLIC_EXPONENT,
            CKA_PRIVATE_EXPONENT,
            CKA_PRIME_1,
            CKA_PRIME_2,
            CKA_EXPONENT_1,
            CKA_EXPONENT_2,
            CKA_COEFFICIENT,
            CKA_EC_PARAMS,
            CKA_VALUE,
        ],
        CKO_SECRET_KEY => &[
            CKA_SENSITIVE,
            CKA_ENCRYPT,
            CKA_DECRYPT,
            CKA_SIGN,
            CKA_VERIFY,
            CKA_WRAP,
            CKA_UNWRAP,
            CKA_EXTRACTABLE,
            CKA_ALWAYS_SENSITIVE,
            CKA_NEVER_EXTRACTABLE,
            CKA_CHECK_VALUE,
            CKA_WRAP_WITH_TRUSTED,
            CKA_TRUSTED,
            CKA_VALUE,
            CKA_VALUE_LEN,
        ],
        _ => &[],
    }
}

/// Does the module define attribute `ty` for objects of `class`?
pub fn is_known_attr(class: CK_OBJECT_CLASS, ty: CK_ATTRIBUTE_TYPE) -> bool {
    let key = matches!(class, CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY);
    COMMON_ATTRS.contains(&ty) || (key && KEY_ATTRS.contains(&ty)) || class_attrs(class).contains(&ty)
}

/// Refuse a template naming an attribute the module does not define for `class`
/// (`CKR_ATTRIBUTE_TYPE_INVALID`, PKCS#11 3.0 §5.1 "an invalid attribute type was specified").
pub fn check_known(class: CK_OBJECT_CLASS, tmpl: &AttrMap) -> Result<()> {
    match tmpl.0.keys().find(|ty| !is_known_attr(class, **ty)) {
        Some(ty) => Err(Error::new(
            CKR_ATTRIBUTE_TYPE_INVALID,
            format!("attribute 0x{ty:X} is not defined for objects of class 0x{class:X}"),
        )),
        None => Ok(()),
    }
}

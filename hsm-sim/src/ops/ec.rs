//! Elliptic-curve keys: NIST P-256, P-384, P-521 (`CKK_EC`: ECDSA, ECDH) and edwards25519
//! (`CKK_EC_EDWARDS`: Ed25519), on OpenSSL's libcrypto (the engine the RSA operations already
//! use, and SoftHSM 2's).
//!
//! Encodings follow PKCS#11 3.0 §2.3 and SoftHSM 2:
//! - `CKA_EC_PARAMS`: the DER of the curve's named-curve OID (`06 08 2A8648CE3D030107` for
//!   P-256, …); edwards25519 also accepts the PrintableString `"edwards25519"` (PKCS#11 3.0
//!   §2.3.5); the value the caller gave is kept as given;
//! - `CKA_EC_POINT`: a DER OCTET STRING holding the uncompressed point `04 ‖ X ‖ Y` (Ed25519:
//!   the 32-byte RFC 8032 encoding). On import the raw point is accepted too;
//! - `CKA_VALUE` of a private key: the scalar, big-endian, as long as the field (32, 48, 66
//!   bytes); Ed25519: the 32-byte RFC 8032 private key (seed);
//! - ECDSA signatures: `r ‖ s`, each as long as the group order (PKCS#11 §2.3.1).

use super::Kind;
use crate::attr::AttrMap;
use crate::error::{Error, Result};
use crate::mechanism::{MechParam, Mechanism};
use crate::object::{Material, Object};
use cryptoki_sys::*;
use openssl::bn::{BigNum, BigNumContext};
use openssl::derive::Deriver;
use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::sign::{Signer, Verifier};
use quill_crypto::digest::{HashAlg, Hasher};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The curves the module supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256 (secp256r1, prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// edwards25519 (Ed25519, RFC 8032).
    Ed25519,
}

const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];
const NAME_ED25519: &[u8] = b"\x13\x0cedwards25519";

impl Curve {
    /// The curve named by a `CKA_EC_PARAMS` value.
    ///
    /// Malformed DER is `CKR_ATTRIBUTE_VALUE_INVALID`; a well-formed name of a curve the module
    /// lacks is `CKR_CURVE_NOT_SUPPORTED`.
    pub fn from_params(der: &[u8]) -> Result<Curve> {
        match der {
            OID_P256 => return Ok(Curve::P256),
            OID_P384 => return Ok(Curve::P384),
            OID_P521 => return Ok(Curve::P521),
            OID_ED25519 | NAME_ED25519 => return Ok(Curve::Ed25519),
            _ => {}
        }
        // Well-formed OID or PrintableString (tag, one short length byte, content)?
        match der {
            [0x06 | 0x13, len, rest @ ..] if usize::from(*len) == rest.len() && !rest.is_empty() && *len < 0x80 => {
                Err(Error::new(CKR_CURVE_NOT_SUPPORTED, "CKA_EC_PARAMS names a curve this module does not support"))
            }
            _ => Err(Error::new(
                CKR_ATTRIBUTE_VALUE_INVALID,
                "CKA_EC_PARAMS must be the DER of a named-curve OID (or \"edwards25519\")",
            )),
        }
    }

    /// `CKA_EC_PARAMS` the module writes for a key it makes without being told (never: key
    /// pair generation needs the parameters), and what the tests compare with.
    pub fn params_der(self) -> &'static [u8] {
        match self {
            Curve::P256 => OID_P256,
            Curve::P384 => OID_P384,
            Curve::P521 => OID_P521,
            Curve::Ed25519 => OID_ED25519,
        }
    }

    /// `CKK_EC` or `CKK_EC_EDWARDS`.
    pub fn key_type(self) -> CK_KEY_TYPE {
        match self {
            Curve::Ed25519 => CKK_EC_EDWARDS,
            _ => CKK_EC,
        }
    }

    /// Bytes of a field element / scalar (and of each half of an ECDSA signature).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Ed25519 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// Length of the raw public point: `04 ‖ X ‖ Y`, or 32 bytes for Ed25519.
    fn point_len(self) -> usize {
        match self {
            Curve::Ed25519 => 32,
            c => 1 + 2 * c.field_len(),
        }
    }

    /// The OpenSSL curve of a Weierstrass curve (Ed25519 goes through `PKey` and has none).
    fn nid(self) -> Nid {
        match self {
            Curve::P256 => Nid::X9_62_PRIME256V1,
            Curve::P384 => Nid::SECP384R1,
            Curve::P521 | Curve::Ed25519 => Nid::SECP521R1,
        }
    }

    fn group(self) -> Result<EcGroup> {
        if self == Curve::Ed25519 {
            return Err(Error::general("edwards25519 has no EC group here"));
        }
        EcGroup::from_curve_name(self.nid()).map_err(|_| Error::general("EC group construction failed"))
    }
}

/// Is this a key type of this file?
pub fn is_ec_key_type(kt: CK_KEY_TYPE) -> bool {
    matches!(kt, CKK_EC | CKK_EC_EDWARDS)
}

/// An EC key held by an object: the curve, the public point and (private keys) the private
/// key inside OpenSSL (freed with `BN_clear_free`).
pub struct EcKeyMaterial {
    /// Curve.
    pub curve: Curve,
    private: Option<PKey<Private>>,
    public: PKey<Public>,
    /// Raw public point (`04 ‖ X ‖ Y`, or the 32-byte Ed25519 encoding).
    pub point: Vec<u8>,
}

impl std::fmt::Debug for EcKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcKeyMaterial").field("curve", &self.curve).field("private", &self.private.is_some()).finish()
    }
}

fn ossl(what: &'static str) -> impl Fn(openssl::error::ErrorStack) -> Error {
    move |_| Error::new(CKR_FUNCTION_FAILED, format!("{what} failed"))
}

impl EcKeyMaterial {
    /// A fresh key pair.
    pub fn generate(curve: Curve) -> Result<Self> {
        if curve == Curve::Ed25519 {
            let k = PKey::generate_ed25519().map_err(ossl("Ed25519 key generation"))?;
            return Self::from_pkey(curve, k);
        }
        let group = curve.group()?;
        let ec = EcKey::generate(&group).map_err(ossl("EC key generation"))?;
        Self::from_pkey(curve, PKey::from_ec_key(ec).map_err(ossl("EC key generation"))?)
    }

    fn from_pkey(curve: Curve, private: PKey<Private>) -> Result<Self> {
        let (point, public) = if curve == Curve::Ed25519 {
            let raw = private.raw_public_key().map_err(ossl("Ed25519 public key"))?;
            let public = PKey::public_key_from_raw_bytes(&raw, Id::ED25519).map_err(ossl("Ed25519 public key"))?;
            (raw, public)
        } else {
            let ec = private.ec_key().map_err(ossl("EC key"))?;
            let mut ctx = BigNumContext::new().map_err(ossl("EC point"))?;
            let point = ec
                .public_key()
                .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)
                .map_err(ossl("EC point encoding"))?;
            let pubkey = EcKey::from_public_key(ec.group(), ec.public_key()).map_err(ossl("EC public key"))?;
            (point, PKey::from_ec_key(pubkey).map_err(ossl("EC public key"))?)
        };
        Ok(Self { curve, private: Some(private), public, point })
    }

    /// A private key from its `CKA_VALUE` (scalar or Ed25519 seed); the public point follows.
    pub fn from_private_value(curve: Curve, value: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::new(CKR_ATTRIBUTE_VALUE_INVALID, format!("EC private key: {why}"));
        if curve == Curve::Ed25519 {
            if value.len() != 32 {
                return Err(bad("an Ed25519 private key is 32 bytes"));
            }
            let k = PKey::private_key_from_raw_bytes(value, Id::ED25519).map_err(|_| bad("not a valid key"))?;
            return Self::from_pkey(curve, k);
        }
        if value.is_empty() || value.len() > curve.field_len() {
            return Err(bad("the scalar is longer than the curve's order"));
        }
        let group = curve.group()?;
        let mut ctx = BigNumContext::new().map_err(ossl("EC key"))?;
        let d = BigNum::from_slice(value).map_err(ossl("EC key"))?;
        let mut order = BigNum::new().map_err(ossl("EC key"))?;
        group.order(&mut order, &mut ctx).map_err(ossl("EC key"))?;
        if d.num_bits() == 0 || d >= order {
            return Err(bad("the scalar must be in 1..n-1"));
        }
        let mut q = EcPoint::new(&group).map_err(ossl("EC key"))?;
        q.mul_generator2(&group, &d, &mut ctx).map_err(ossl("EC key"))?;
        let ec = EcKey::from_private_components(&group, &d, &q).map_err(|_| bad("not a valid key"))?;
        Self::from_pkey(curve, PKey::from_ec_key(ec).map_err(ossl("EC key"))?)
    }

    /// A public key from a raw point (uncompressed or compressed; Ed25519: 32 bytes), checked
    /// to be on the curve.
    pub fn from_public_point(curve: Curve, raw: &[u8]) -> Result<Self> {
        let bad = || Error::new(CKR_ATTRIBUTE_VALUE_INVALID, "CKA_EC_POINT is not a point of the curve");
        if curve == Curve::Ed25519 {
            if raw.len() != 32 {
                return Err(bad());
            }
            let public = PKey::public_key_from_raw_bytes(raw, Id::ED25519).map_err(|_| bad())?;
            return Ok(Self { curve, private: None, public, point: raw.to_vec() });
        }
        let (public, point) = ec_public(curve, raw).map_err(|_| bad())?;
        Ok(Self { curve, private: None, public, point })
    }

    /// The public half of a key pair (no re-parsing: the point is the key's own).
    pub fn public_only(&self) -> Self {
        Self { curve: self.curve, private: None, public: self.public.clone(), point: self.point.clone() }
    }

    /// Does it hold the private key?
    pub fn has_private(&self) -> bool {
        self.private.is_some()
    }

    /// `CKA_EC_POINT`: the point as a DER OCTET STRING.
    pub fn ec_point_der(&self) -> Vec<u8> {
        der_octet_string(&self.point)
    }

    /// The private value (`CKA_VALUE`) for sealing at rest.
    pub fn private_value(&self) -> Result<Zeroizing<Vec<u8>>> {
        let k = self.private.as_ref().ok_or_else(|| Error::general("no private key"))?;
        if self.curve == Curve::Ed25519 {
            return Ok(Zeroizing::new(k.raw_private_key().map_err(ossl("Ed25519 private key"))?));
        }
        let ec = k.ec_key().map_err(ossl("EC private key"))?;
        let n = i32::try_from(self.curve.field_len()).map_err(|_| Error::general("field length"))?;
        Ok(Zeroizing::new(ec.private_key().to_vec_padded(n).map_err(ossl("EC private key"))?))
    }

    fn private(&self) -> Result<&PKey<Private>> {
        self.private
            .as_ref()
            .ok_or_else(|| Error::new(CKR_KEY_TYPE_INCONSISTENT, "this operation needs the private key"))
    }

    /// ECDSA over an already hashed value (or Ed25519 over the message): the signature.
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>> {
        let k = self.private()?;
        if self.curve == Curve::Ed25519 {
            let mut s = Signer::new_without_digest(k).map_err(ossl("Ed25519 signature"))?;
            return s.sign_oneshot_to_vec(data).map_err(ossl("Ed25519 signature"));
        }
        let ec = k.ec_key().map_err(ossl("ECDSA signature"))?;
        let sig = EcdsaSig::sign(data, &ec).map_err(ossl("ECDSA signature"))?;
        let n = i32::try_from(self.curve.field_len()).map_err(|_| Error::general("field length"))?;
        let mut out = sig.r().to_vec_padded(n).map_err(ossl("ECDSA signature"))?;
        out.extend(sig.s().to_vec_padded(n).map_err(ossl("ECDSA signature"))?);
        Ok(out)
    }

    /// Verify a signature made by [`EcKeyMaterial::sign`]; a signature of the wrong length is
    /// `CKR_SIGNATURE_LEN_RANGE`, a wrong one `CKR_SIGNATURE_INVALID`.
    pub fn verify(&self, data: &[u8], sig: &[u8]) -> Result<()> {
        let n = if self.curve == Curve::Ed25519 { 64 } else { 2 * self.curve.field_len() };
        if sig.len() != n {
            return Err(Error::new(CKR_SIGNATURE_LEN_RANGE, format!("signature must be {n} bytes")));
        }
        let ok = if self.curve == Curve::Ed25519 {
            let mut v = Verifier::new_without_digest(&self.public).map_err(ossl("Ed25519 verification"))?;
            v.verify_oneshot(sig, data).unwrap_or(false)
        } else {
            let (r, s) = sig.split_at(n / 2);
            let sig = EcdsaSig::from_private_components(
                BigNum::from_slice(r).map_err(ossl("ECDSA verification"))?,
                BigNum::from_slice(s).map_err(ossl("ECDSA verification"))?,
            )
            .map_err(ossl("ECDSA verification"))?;
            let ec = self.public.ec_key().map_err(ossl("ECDSA verification"))?;
            sig.verify(data, &ec).unwrap_or(false)
        };
        if ok { Ok(()) } else { Err(Error::new(CKR_SIGNATURE_INVALID, "signature invalid")) }
    }

    /// ECDH (PKCS#11 `CKM_ECDH1_DERIVE` without cofactor): the x-coordinate of d·Q, as long as
    /// the field. A peer point that is not on the curve is `CKR_MECHANISM_PARAM_INVALID` (it
    /// arrives in the mechanism parameter).
    pub fn ecdh(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if self.curve == Curve::Ed25519 {
            return Err(Error::new(CKR_KEY_TYPE_INCONSISTENT, "ECDH needs a CKK_EC key"));
        }
        let raw = decode_point(self.curve, peer);
        let (peer, _) = ec_public(self.curve, raw)
            .map_err(|_| Error::param("CK_ECDH1_DERIVE_PARAMS: the public data is not a point of the key's curve"))?;
        let mut d = Deriver::new(self.private()?).map_err(ossl("ECDH"))?;
        d.set_peer(&peer).map_err(|_| Error::param("CK_ECDH1_DERIVE_PARAMS: unusable public data"))?;
        let z = Zeroizing::new(d.derive_to_vec().map_err(ossl("ECDH"))?);
        if z.len() != self.curve.field_len() {
            return Err(Error::general("ECDH produced a value of unexpected length"));
        }
        Ok(z)
    }
}

/// An EC public key from a raw point, and the point re-encoded uncompressed.
fn ec_public(curve: Curve, raw: &[u8]) -> std::result::Result<(PKey<Public>, Vec<u8>), openssl::error::ErrorStack> {
    if curve == Curve::Ed25519 {
        return Err(openssl::error::ErrorStack::get());
    }
    let group = EcGroup::from_curve_name(curve.nid())?;
    let mut ctx = BigNumContext::new()?;
    // oct2point refuses a point off the curve; the three curves have cofactor 1, so a point on
    // the curve other than infinity is in the group (no n·Q check needed).
    let p = EcPoint::from_bytes(&group, raw, &mut ctx)?;
    if p.is_infinity(&group) {
        return Err(openssl::error::ErrorStack::get());
    }
    let k = EcKey::from_public_key(&group, &p)?;
    let point = p.to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)?;
    Ok((PKey::from_ec_key(k)?, point))
}

/// DER OCTET STRING of `v`.
pub fn der_octet_string(v: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    let n = v.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(v);
    out
}

/// The raw point inside a `CKA_EC_POINT` or ECDH public data value: a DER OCTET STRING whose
/// content has the curve's point length (uncompressed or compressed), or else the bytes as
/// given (a raw point; the lengths never collide).
pub fn decode_point(curve: Curve, v: &[u8]) -> &[u8] {
    let inner = match v {
        [0x04, n, rest @ ..] if *n < 0x80 && usize::from(*n) == rest.len() => Some(rest),
        [0x04, 0x81, n, rest @ ..] if *n >= 0x80 && usize::from(*n) == rest.len() => Some(rest),
        _ => None,
    };
    let compressed = if curve == Curve::Ed25519 { 32 } else { 1 + curve.field_len() };
    match inner {
        Some(p) if p.len() == curve.point_len() || p.len() == compressed => p,
        _ => v,
    }
}

// ---- objects -----------------------------------------------------------------------------------

/// Finish a new EC private key object: the curve from `CKA_EC_PARAMS`, the material from
/// `CKA_VALUE` (import) or as generated. A private key has no `CKA_EC_POINT` (PKCS#11 §2.3.4;
/// SoftHSM does the same): a template giving one is `CKR_ATTRIBUTE_TYPE_INVALID`.
pub(crate) fn build_private(t: &mut AttrMap, kt: CK_KEY_TYPE, material: &mut Material) -> Result<()> {
    let params = t
        .get(CKA_EC_PARAMS)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_EC_PARAMS missing"))?;
    let curve = Curve::from_params(&params)?;
    if curve.key_type() != kt {
        return Err(Error::template("CKA_EC_PARAMS names a curve of another key type"));
    }
    if let Material::None = material {
        let v = Zeroizing::new(
            t.0.remove(&CKA_VALUE).ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_VALUE missing"))?,
        );
        *material = Material::Ec(Arc::new(EcKeyMaterial::from_private_value(curve, &v)?));
    } else if t.0.contains_key(&CKA_VALUE) {
        return Err(Error::template("CKA_VALUE is produced by the token for this operation"));
    }
    match &*material {
        Material::Ec(k) if k.has_private() && k.curve == curve => {}
        _ => return Err(Error::template("private key without matching material")),
    }
    if t.0.contains_key(&CKA_EC_POINT) {
        return Err(Error::new(CKR_ATTRIBUTE_TYPE_INVALID, "an EC private key has no CKA_EC_POINT"));
    }
    t.0.remove(&CKA_VALUE);
    Ok(())
}

/// Finish a new EC public key object: `CKA_EC_PARAMS` and `CKA_EC_POINT` (from the template on
/// import, from the material when generated).
pub(crate) fn build_public(t: &mut AttrMap, kt: CK_KEY_TYPE, material: &mut Material) -> Result<()> {
    let params = t
        .get(CKA_EC_PARAMS)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_EC_PARAMS missing"))?;
    let curve = Curve::from_params(&params)?;
    if curve.key_type() != kt {
        return Err(Error::template("CKA_EC_PARAMS names a curve of another key type"));
    }
    if let Material::None = material {
        let p = t.get(CKA_EC_POINT).ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_EC_POINT missing"))?;
        let k = EcKeyMaterial::from_public_point(curve, decode_point(curve, p))?;
        *material = Material::Ec(Arc::new(k));
    } else if t.0.contains_key(&CKA_EC_POINT) {
        return Err(Error::template("CKA_EC_POINT is produced by the token for this operation"));
    }
    let Material::Ec(k) = &*material else { return Err(Error::template("public key without EC material")) };
    if k.curve != curve {
        return Err(Error::template("public key material of another curve"));
    }
    t.set(CKA_EC_POINT, k.ec_point_der());
    Ok(())
}

/// Rebuild EC material from stored attributes (`None`: not an EC key).
pub(crate) fn material_from_stored(attrs: &AttrMap, secret: &AttrMap) -> Result<Option<Material>> {
    let Some(kt) = attrs.ulong(CKA_KEY_TYPE) else { return Ok(None) };
    if !is_ec_key_type(kt) {
        return Ok(None);
    }
    let params = attrs.get(CKA_EC_PARAMS).ok_or_else(|| Error::device("stored EC key lacks CKA_EC_PARAMS"))?;
    let curve = Curve::from_params(params).map_err(|e| Error::device(format!("stored EC key: {}", e.reason)))?;
    let k = match attrs.ulong(CKA_CLASS) {
        Some(CKO_PRIVATE_KEY) => {
            let v = secret.get(CKA_VALUE).ok_or_else(|| Error::device("stored EC private key has no value"))?;
            EcKeyMaterial::from_private_value(curve, v)
        }
        Some(CKO_PUBLIC_KEY) => {
            let p = attrs.get(CKA_EC_POINT).ok_or_else(|| Error::device("stored EC public key has no point"))?;
            EcKeyMaterial::from_public_point(curve, decode_point(curve, p))
        }
        _ => return Ok(None),
    }
    .map_err(|e| Error::device(format!("stored EC key: {}", e.reason)))?;
    Ok(Some(Material::Ec(Arc::new(k))))
}

// ---- operations --------------------------------------------------------------------------------

/// Is this a signature mechanism of this file?
pub fn is_ec_sign(mech: CK_MECHANISM_TYPE) -> bool {
    matches!(
        mech,
        CKM_ECDSA
            | CKM_ECDSA_SHA1
            | CKM_ECDSA_SHA224
            | CKM_ECDSA_SHA256
            | CKM_ECDSA_SHA384
            | CKM_ECDSA_SHA512
            | CKM_EDDSA
    )
}

/// A signature or verification in progress (`C_SignUpdate` hashes as it goes for the
/// `CKM_ECDSA_SHA*` mechanisms; raw ECDSA and EdDSA collect the message).
pub struct EcSign {
    key: Arc<EcKeyMaterial>,
    hash: Option<Hasher>,
    buf: Zeroizing<Vec<u8>>,
}

impl EcSign {
    /// Start: checks the key's class and type against the mechanism and the parameter.
    pub fn init(kind: Kind, mech: &Mechanism, key: &Object) -> Result<Self> {
        let private = matches!(kind, Kind::Sign);
        let want_class = if private { CKO_PRIVATE_KEY } else { CKO_PUBLIC_KEY };
        let want_type = if mech.mech == CKM_EDDSA { CKK_EC_EDWARDS } else { CKK_EC };
        if !matches!(kind, Kind::Sign | Kind::Verify) {
            return Err(Error::new(CKR_MECHANISM_INVALID, "EC mechanisms only sign and verify"));
        }
        if key.class() != want_class || key.key_type() != Some(want_type) {
            return Err(Error::new(
                CKR_KEY_TYPE_INCONSISTENT,
                format!("key {} does not fit mechanism 0x{:X}", key.handle, mech.mech),
            ));
        }
        let k = match &key.material {
            Material::Ec(k) if k.has_private() || !private => k.clone(),
            Material::None => {
                return Err(Error::new(
                    CKR_USER_NOT_LOGGED_IN,
                    format!("key {} is not available: log in first", key.handle),
                ));
            }
            _ => return Err(Error::new(CKR_KEY_TYPE_INCONSISTENT, "not an EC key")),
        };
        if mech.mech == CKM_EDDSA {
            check_eddsa_param(&mech.param)?;
        } else if !matches!(mech.param, MechParam::None) {
            return Err(Error::param("ECDSA takes no parameter"));
        }
        let hash = match mech.mech {
            CKM_ECDSA_SHA1 => Some(HashAlg::Sha1),
            CKM_ECDSA_SHA224 => Some(HashAlg::Sha224),
            CKM_ECDSA_SHA256 => Some(HashAlg::Sha256),
            CKM_ECDSA_SHA384 => Some(HashAlg::Sha384),
            CKM_ECDSA_SHA512 => Some(HashAlg::Sha512),
            _ => None,
        };
        Ok(Self { key: k, hash: hash.map(Hasher::new), buf: Zeroizing::new(Vec::new()) })
    }

    /// More message.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.hash {
            Some(h) => h.update(data),
            None => self.buf.extend_from_slice(data),
        }
    }

    fn message(&mut self) -> Zeroizing<Vec<u8>> {
        match self.hash.take() {
            Some(h) => Zeroizing::new(h.finalize()),
            None => std::mem::take(&mut self.buf),
        }
    }

    /// The signature.
    pub fn sign(&mut self) -> Result<Vec<u8>> {
        let m = self.message();
        self.key.sign(&m)
    }

    /// Check a signature.
    pub fn verify(&mut self, sig: &[u8]) -> Result<()> {
        let m = self.message();
        self.key.verify(&m, sig)
    }
}

/// `CK_EDDSA_PARAMS` as parsed at the boundary: absent, or `phFlag = false` with no context,
/// is pure Ed25519. Ed25519ph and Ed25519ctx are not supported (`CKR_MECHANISM_PARAM_INVALID`).
fn check_eddsa_param(p: &MechParam) -> Result<()> {
    match p {
        MechParam::None => Ok(()),
        MechParam::Eddsa { ph: false, context } if context.is_empty() => Ok(()),
        MechParam::Eddsa { .. } => Err(Error::param("Ed25519ph and Ed25519ctx are not supported: pure Ed25519 only")),
        _ => Err(Error::param("CKM_EDDSA takes CK_EDDSA_PARAMS or no parameter")),
    }
}

/// The EC material of a private key usable for ECDH.
pub fn ecdh_key(key: &Object) -> Result<Arc<EcKeyMaterial>> {
    if key.class() != CKO_PRIVATE_KEY || key.key_type() != Some(CKK_EC) {
        return Err(Error::new(CKR_KEY_TYPE_INCONSISTENT, "CKM_ECDH1_DERIVE needs a CKK_EC private key"));
    }
    match &key.material {
        Material::Ec(k) if k.has_private() => Ok(k.clone()),
        Material::None => Err(Error::new(CKR_USER_NOT_LOGGED_IN, "key is not available: log in first")),
        _ => Err(Error::new(CKR_KEY_TYPE_INCONSISTENT, "not an EC private key")),
    }
}

/// The curve a key pair generation asks for (public template's `CKA_EC_PARAMS`).
pub fn keygen_curve(mech: CK_MECHANISM_TYPE, pub_tmpl: &AttrMap) -> Result<Curve> {
    let p = pub_tmpl
        .get(CKA_EC_PARAMS)
        .ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_EC_PARAMS missing from the public key template"))?;
    let c = Curve::from_params(p)?;
    let edwards = mech == CKM_EC_EDWARDS_KEY_PAIR_GEN;
    if (c == Curve::Ed25519) != edwards {
        return Err(Error::template("CKA_EC_PARAMS names a curve this mechanism does not generate"));
    }
    Ok(c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn params_and_points() {
        assert_eq!(Curve::from_params(OID_P256).unwrap(), Curve::P256);
        assert_eq!(Curve::from_params(b"\x13\x0cedwards25519").unwrap(), Curve::Ed25519);
        // secp256k1: well-formed, not supported.
        assert_eq!(
            Curve::from_params(&[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A]).unwrap_err().rv,
            CKR_CURVE_NOT_SUPPORTED
        );
        assert_eq!(Curve::from_params(&[0x06, 0x09, 0x2B]).unwrap_err().rv, CKR_ATTRIBUTE_VALUE_INVALID);
        let k = EcKeyMaterial::generate(Curve::P521).unwrap();
        let der = k.ec_point_der();
        assert_eq!(&der[..3], &[0x04, 0x81, 0x85]);
        assert_eq!(decode_point(Curve::P521, &der), k.point.as_slice());
        assert_eq!(decode_point(Curve::P521, &k.point), k.point.as_slice());
        let v = k.private_value().unwrap();
        assert_eq!(v.len(), 66);
        let again = EcKeyMaterial::from_private_value(Curve::P521, &v).unwrap();
        assert_eq!(again.point, k.point);
    }
}

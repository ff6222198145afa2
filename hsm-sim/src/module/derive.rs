//! The functions issue 14 added to [`Module`]: EC and Ed25519 key pair generation, and
//! `C_DeriveKey` for ECDH, the key-from-key mechanisms and SP 800-108 (which may derive several
//! keys at once). The computations live in `ops::ec` and `ops::kdf`.

use super::Module;
use crate::attr::{AttrMap, Attribute, template_to_map};
use crate::error::{Error, Result};
use crate::mechanism::{self, MechParam, Mechanism};
use crate::object::{self, Material, NewObject, Origin};
use crate::ops::ec::{self, Curve, EcKeyMaterial};
use crate::ops::kdf::{self, Prf};
use crate::ops::secret_of;
use cryptoki_sys::*;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Is this a mechanism [`Module::derive_keys`] handles here (rather than `derive_key`)?
fn is_new_derive(m: CK_MECHANISM_TYPE) -> bool {
    matches!(
        m,
        CKM_ECDH1_DERIVE
            | CKM_CONCATENATE_BASE_AND_KEY
            | CKM_CONCATENATE_BASE_AND_DATA
            | CKM_CONCATENATE_DATA_AND_BASE
            | CKM_XOR_BASE_AND_DATA
            | CKM_EXTRACT_KEY_FROM_KEY
            | CKM_SP800_108_COUNTER_KDF
            | CKM_SP800_108_FEEDBACK_KDF
    )
}

/// All key types a secret-from-secret mechanism accepts as input.
const ANY_SECRET: &[CK_KEY_TYPE] = &[
    CKK_GENERIC_SECRET,
    CKK_DES,
    CKK_DES2,
    CKK_DES3,
    CKK_AES,
    CKK_SHA_1_HMAC,
    CKK_SHA224_HMAC,
    CKK_SHA256_HMAC,
    CKK_SHA384_HMAC,
    CKK_SHA512_HMAC,
];

/// One key to make: template, key type, value.
struct NewKey {
    template: Vec<Attribute>,
    kt: CK_KEY_TYPE,
    value: Zeroizing<Vec<u8>>,
}

/// Key type and length a derivation template asks for (length `None`: not said).
fn wanted(t: &AttrMap) -> (CK_KEY_TYPE, Option<usize>) {
    let kt = t.ulong(CKA_KEY_TYPE).unwrap_or(CKK_GENERIC_SECRET);
    (kt, object::fixed_key_len(kt).or(t.ulong(CKA_VALUE_LEN).map(|l| l as usize)))
}

/// Cut `value` to the length the template wants (all of it when it says none).
fn cut(mut value: Zeroizing<Vec<u8>>, want: Option<usize>) -> Result<Zeroizing<Vec<u8>>> {
    let n = want.unwrap_or(value.len());
    if n == 0 || n > value.len() {
        return Err(Error::new(
            CKR_TEMPLATE_INCONSISTENT,
            format!("derivation gives {} bytes; the key needs {n}", value.len()),
        ));
    }
    value.truncate(n);
    Ok(value)
}

/// PKCS#11 §2.43: a key derived from a sensitive (non-extractable) key is sensitive
/// (non-extractable) too; a template asking otherwise is inconsistent.
fn inherit(tmpl: &[Attribute], sensitive: bool, unextractable: bool) -> Result<Vec<Attribute>> {
    let t = template_to_map(tmpl)?;
    let mut out = tmpl.to_vec();
    if sensitive {
        match t.get(CKA_SENSITIVE) {
            Some([0]) => return Err(Error::template("a key derived from a sensitive key must be sensitive")),
            Some(_) => {}
            None => out.push(Attribute::bool(CKA_SENSITIVE, true)),
        }
    }
    if unextractable {
        match t.get(CKA_EXTRACTABLE) {
            Some([b]) if *b != 0 => {
                return Err(Error::template("a key derived from a non-extractable key cannot be extractable"));
            }
            Some(_) => {}
            None => out.push(Attribute::bool(CKA_EXTRACTABLE, false)),
        }
    }
    Ok(out)
}

impl Module {
    /// `C_GenerateKeyPair` with `CKM_EC_KEY_PAIR_GEN` or `CKM_EC_EDWARDS_KEY_PAIR_GEN`.
    pub(super) fn generate_ec_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        pub_tmpl: &[Attribute],
        priv_tmpl: &[Attribute],
        slot: CK_SLOT_ID,
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let pt = template_to_map(pub_tmpl)?;
        let curve = ec::keygen_curve(mech.mech, &pt)?;
        let params = pt.get(CKA_EC_PARAMS).map(<[u8]>::to_vec).unwrap_or_else(|| curve.params_der().to_vec());
        let st = template_to_map(priv_tmpl)?;
        if let Some(p) = st.get(CKA_EC_PARAMS)
            && Curve::from_params(p)? != curve
        {
            return Err(Error::template("the two templates name different curves"));
        }
        let key = EcKeyMaterial::generate(curve)?;
        let public = key.public_only();
        let mut extra = AttrMap::default();
        extra.set(CKA_EC_PARAMS, params);
        let so = self.is_so(slot);
        let (pattrs, pmat) = object::build(NewObject {
            template: pub_tmpl,
            class: Some(CKO_PUBLIC_KEY),
            key_type: Some(curve.key_type()),
            origin: Origin::Generated(mech.mech),
            material: Some(Material::Ec(Arc::new(public))),
            extra: extra.clone(),
            so,
        })?;
        let (sattrs, smat) = object::build(NewObject {
            template: priv_tmpl,
            class: Some(CKO_PRIVATE_KEY),
            key_type: Some(curve.key_type()),
            origin: Origin::Generated(mech.mech),
            material: Some(Material::Ec(Arc::new(key))),
            extra,
            so,
        })?;
        self.insert_pair(h, (pattrs, pmat), (sattrs, smat))
    }

    /// `C_DeriveKey`: the handles of the derived keys, the one `phKey` receives first (SP
    /// 800-108 adds one per `CK_DERIVED_KEY`, in order).
    pub fn derive_keys(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        base: CK_OBJECT_HANDLE,
        tmpl: &[Attribute],
    ) -> Result<Vec<CK_OBJECT_HANDLE>> {
        if !is_new_derive(mech.mech) {
            return Ok(vec![self.derive_key(h, mech, base, tmpl)?]);
        }
        let (slot, _) = self.slot_of(h)?;
        self.faults.apply(slot)?;
        mechanism::require(mech.mech, CKF_DERIVE)?;
        let b = self.object(h, base).map_err(|e| Error::new(CKR_KEY_HANDLE_INVALID, e.reason))?;
        b.require(CKA_DERIVE)?;
        let t = template_to_map(tmpl)?;
        let (kt, want) = wanted(&t);
        // A length the key type cannot have is refused before anything is computed (the KDFs
        // would otherwise make as many bytes as the template asks for).
        if let Some(n) = want {
            object::check_secret_len(kt, n)?;
        }
        let mut always_sensitive = b.flag(CKA_ALWAYS_SENSITIVE);
        let mut never_extractable = b.flag(CKA_NEVER_EXTRACTABLE);
        let keys: Vec<NewKey> = match (mech.mech, &mech.param) {
            (CKM_ECDH1_DERIVE, MechParam::Ecdh1 { kdf, shared, public }) => {
                let z = ec::ecdh_key(&b)?.ecdh(public)?;
                let value = match kdf::ecdh_kdf_hash(*kdf)? {
                    None if !shared.is_empty() => {
                        return Err(Error::param("CK_ECDH1_DERIVE_PARAMS: CKD_NULL takes no shared data"));
                    }
                    None => cut(z, want)?,
                    Some(hash) => kdf::x963(hash, &z, shared, want.unwrap_or(z.len())),
                };
                vec![NewKey { template: tmpl.to_vec(), kt, value }]
            }
            (CKM_CONCATENATE_BASE_AND_KEY, p) => {
                let oh = one_ulong(p, "CK_OBJECT_HANDLE")?;
                let o = self.object(h, oh).map_err(|e| Error::new(CKR_KEY_HANDLE_INVALID, e.reason))?;
                o.require(CKA_DERIVE)?;
                let mut v = Zeroizing::new(secret_of(&b, ANY_SECRET)?.to_vec());
                v.extend_from_slice(&secret_of(&o, ANY_SECRET)?);
                always_sensitive &= o.flag(CKA_ALWAYS_SENSITIVE);
                never_extractable &= o.flag(CKA_NEVER_EXTRACTABLE);
                let sensitive = b.flag(CKA_SENSITIVE) || o.flag(CKA_SENSITIVE);
                let unextractable = !b.flag(CKA_EXTRACTABLE) || !o.flag(CKA_EXTRACTABLE);
                vec![NewKey { template: inherit(tmpl, sensitive, unextractable)?, kt, value: cut(v, want)? }]
            }
            (
                CKM_CONCATENATE_BASE_AND_DATA | CKM_CONCATENATE_DATA_AND_BASE | CKM_XOR_BASE_AND_DATA,
                MechParam::DeriveData(d),
            ) => {
                let k = secret_of(&b, ANY_SECRET)?;
                let v = match mech.mech {
                    CKM_CONCATENATE_BASE_AND_DATA => Zeroizing::new([k.as_slice(), d].concat()),
                    CKM_CONCATENATE_DATA_AND_BASE => Zeroizing::new([d.as_slice(), k.as_slice()].concat()),
                    _ => Zeroizing::new(k.iter().zip(d.iter()).map(|(a, x)| a ^ x).collect()),
                };
                let template = inherit(tmpl, b.flag(CKA_SENSITIVE), !b.flag(CKA_EXTRACTABLE))?;
                vec![NewKey { template, kt, value: cut(v, want)? }]
            }
            (CKM_EXTRACT_KEY_FROM_KEY, p) => {
                let index = one_ulong(p, "CK_EXTRACT_PARAMS")? as usize;
                let k = secret_of(&b, ANY_SECRET)?;
                let n = want.ok_or_else(|| {
                    Error::new(
                        CKR_TEMPLATE_INCOMPLETE,
                        "CKM_EXTRACT_KEY_FROM_KEY needs CKA_VALUE_LEN or a fixed-length key type",
                    )
                })?;
                let template = inherit(tmpl, b.flag(CKA_SENSITIVE), !b.flag(CKA_EXTRACTABLE))?;
                vec![NewKey { template, kt, value: kdf::extract(&k, index, n)? }]
            }
            (CKM_SP800_108_COUNTER_KDF | CKM_SP800_108_FEEDBACK_KDF, MechParam::Sp800108(p)) => {
                let prf = Prf::from_mech(p.prf)?;
                let k = secret_of(&b, prf.key_types())?;
                let mut specs = vec![(tmpl.to_vec(), kt, want)];
                for a in &p.additional {
                    let (akt, aw) = wanted(&template_to_map(a)?);
                    if let Some(n) = aw {
                        object::check_secret_len(akt, n)?;
                    }
                    specs.push((a.clone(), akt, aw));
                }
                let mut lens = Vec::with_capacity(specs.len());
                for (_, _, w) in &specs {
                    lens.push(w.ok_or_else(|| {
                        Error::new(
                            CKR_TEMPLATE_INCOMPLETE,
                            "SP 800-108: every key needs CKA_VALUE_LEN or a fixed-length type",
                        )
                    })?);
                }
                let values = kdf::sp800_108(p, &k, &lens)?;
                specs.into_iter().zip(values).map(|((template, kt, _), value)| NewKey { template, kt, value }).collect()
            }
            _ => {
                return Err(Error::param(format!(
                    "mechanism 0x{:X}: parameter missing or of the wrong type",
                    mech.mech
                )));
            }
        };
        let so = self.is_so(slot);
        let mut built = Vec::with_capacity(keys.len());
        for k in keys {
            built.push(object::build(NewObject {
                template: &k.template,
                class: Some(CKO_SECRET_KEY),
                key_type: Some(k.kt),
                origin: Origin::Derived { always_sensitive, never_extractable },
                material: Some(Material::Secret(Arc::new(k.value))),
                extra: AttrMap::default(),
                so,
            })?);
        }
        let mut handles = Vec::with_capacity(built.len());
        for (attrs, material) in built {
            match self.insert_object(h, attrs, material) {
                Ok(oh) => handles.push(oh),
                Err(e) => {
                    for oh in handles {
                        let _ = self.destroy_object(h, oh);
                    }
                    return Err(e);
                }
            }
        }
        Ok(handles)
    }
}

/// A parameter that is one `CK_ULONG` (`CK_OBJECT_HANDLE`, `CK_EXTRACT_PARAMS`).
fn one_ulong(p: &MechParam, what: &str) -> Result<CK_ULONG> {
    let raw = p.raw();
    let arr: [u8; std::mem::size_of::<CK_ULONG>()] =
        raw.try_into().map_err(|_| Error::param(format!("{what} expected as the mechanism parameter")))?;
    Ok(CK_ULONG::from_ne_bytes(arr))
}

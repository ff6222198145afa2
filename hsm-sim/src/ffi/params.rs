//! Mechanism parameters with nested pointers (issue 14): `CK_ECDH1_DERIVE_PARAMS`,
//! `CK_EDDSA_PARAMS`, `CK_SP800_108_KDF_PARAMS`, `CK_SP800_108_FEEDBACK_KDF_PARAMS`. Each is
//! copied into owned Rust values here, at the boundary; any malformed structure (wrong size,
//! null pointer with a length, unknown data type, wrong-sized nested structure) is
//! `CKR_MECHANISM_PARAM_INVALID`.

use super::{bytes, param_struct, template};
use crate::error::{Error, Result};
use crate::mechanism::MechParam;
use crate::ops::kdf::{CounterFormat, DkmFormat, PrfData, Sp800108};
use cryptoki_sys::*;

/// Bytes of a parameter field: like [`bytes`], but a bad pointer is the parameter's fault.
///
/// # Safety
/// As [`bytes`].
unsafe fn pbytes(p: *const CK_BYTE, len: CK_ULONG, what: &str) -> Result<Vec<u8>> {
    // SAFETY: forwarded contract.
    unsafe { bytes(p, len) }
        .map(<[u8]>::to_vec)
        .map_err(|_| Error::param(format!("{what}: null pointer with a length")))
}

/// A nested structure of exactly `size_of::<T>()` bytes.
///
/// # Safety
/// `p` must point to `len` readable bytes when non-null.
unsafe fn nested<T: Copy>(p: *const std::ffi::c_void, len: CK_ULONG, what: &str) -> Result<T> {
    if p.is_null() || len as usize != std::mem::size_of::<T>() {
        return Err(Error::param(format!("{what} expected")));
    }
    // SAFETY: non-null, exactly size_of::<T>() bytes; read_unaligned tolerates any alignment.
    Ok(unsafe { std::ptr::read_unaligned(p as *const T) })
}

/// `CK_ECDH1_DERIVE_PARAMS`.
///
/// # Safety
/// `m` follows the PKCS#11 calling convention.
pub(super) unsafe fn ecdh1(m: &CK_MECHANISM) -> Result<MechParam> {
    // SAFETY: checked size; inner pointers follow the convention.
    let p: CK_ECDH1_DERIVE_PARAMS = unsafe { param_struct(m, "CK_ECDH1_DERIVE_PARAMS") }?;
    let shared = unsafe { pbytes(p.pSharedData, p.ulSharedDataLen, "CK_ECDH1_DERIVE_PARAMS shared data") }?;
    let public = unsafe { pbytes(p.pPublicData, p.ulPublicDataLen, "CK_ECDH1_DERIVE_PARAMS public data") }?;
    Ok(MechParam::Ecdh1 { kdf: p.kdf, shared, public })
}

/// `CK_EDDSA_PARAMS`, or no parameter at all.
///
/// # Safety
/// `m` follows the PKCS#11 calling convention.
pub(super) unsafe fn eddsa(m: &CK_MECHANISM) -> Result<MechParam> {
    if m.pParameter.is_null() && m.ulParameterLen == 0 {
        return Ok(MechParam::None);
    }
    // SAFETY: checked size; the context pointer follows the convention.
    let p: CK_EDDSA_PARAMS = unsafe { param_struct(m, "CK_EDDSA_PARAMS") }?;
    let context = unsafe { pbytes(p.pContextData, p.ulContextDataLen, "CK_EDDSA_PARAMS context") }?;
    Ok(MechParam::Eddsa { ph: p.phFlag != 0, context })
}

/// The data parameters of an SP 800-108 structure.
///
/// # Safety
/// `p` points to `n` `CK_PRF_DATA_PARAM`s when non-null.
unsafe fn prf_data(p: *const CK_PRF_DATA_PARAM, n: CK_ULONG) -> Result<Vec<PrfData>> {
    if p.is_null() || n == 0 {
        return Err(Error::param("SP 800-108: no PRF data parameters"));
    }
    let n = usize::try_from(n).map_err(|_| Error::param("SP 800-108: count too large"))?;
    // SAFETY: non-null, `n` elements per the convention.
    let items = unsafe { std::slice::from_raw_parts(p, n) };
    items
        .iter()
        .map(|d| {
            let counter = |what| -> Result<CounterFormat> {
                // SAFETY: pValue points to ulValueLen bytes.
                let f: CK_SP800_108_COUNTER_FORMAT = unsafe { nested(d.pValue, d.ulValueLen, what) }?;
                Ok(CounterFormat { little_endian: f.bLittleEndian != 0, bits: f.ulWidthInBits })
            };
            Ok(match d.type_ {
                CK_SP800_108_ITERATION_VARIABLE if d.pValue.is_null() && d.ulValueLen == 0 => PrfData::Iteration(None),
                CK_SP800_108_ITERATION_VARIABLE => PrfData::Iteration(Some(counter("CK_SP800_108_COUNTER_FORMAT")?)),
                CK_SP800_108_OPTIONAL_COUNTER => PrfData::Counter(counter("CK_SP800_108_COUNTER_FORMAT")?),
                CK_SP800_108_DKM_LENGTH => {
                    // SAFETY: pValue points to ulValueLen bytes.
                    let f: CK_SP800_108_DKM_LENGTH_FORMAT =
                        unsafe { nested(d.pValue, d.ulValueLen, "CK_SP800_108_DKM_LENGTH_FORMAT") }?;
                    PrfData::DkmLength(DkmFormat {
                        method: f.dkmLengthMethod,
                        little_endian: f.bLittleEndian != 0,
                        bits: f.ulWidthInBits,
                    })
                }
                CK_SP800_108_BYTE_ARRAY => {
                    // SAFETY: pValue points to ulValueLen bytes.
                    PrfData::Bytes(unsafe { pbytes(d.pValue as *const u8, d.ulValueLen, "SP 800-108 byte array") }?)
                }
                t => return Err(Error::param(format!("SP 800-108: data parameter type 0x{t:X} not supported"))),
            })
        })
        .collect()
}

/// The `CK_DERIVED_KEY` array: templates (owned) and the output handle pointers.
///
/// # Safety
/// `p` points to `n` `CK_DERIVED_KEY`s when non-null; their templates follow the convention.
unsafe fn derived_keys(
    p: *const CK_DERIVED_KEY,
    n: CK_ULONG,
) -> Result<Vec<(Vec<crate::attr::Attribute>, *mut CK_OBJECT_HANDLE)>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(Error::param("SP 800-108: null additional derived keys with a count"));
    }
    let n = usize::try_from(n).map_err(|_| Error::param("SP 800-108: count too large"))?;
    // SAFETY: non-null, `n` elements per the convention.
    let items = unsafe { std::slice::from_raw_parts(p, n) };
    items
        .iter()
        .map(|k| {
            if k.phKey.is_null() {
                return Err(Error::param("SP 800-108: an additional derived key has a null phKey"));
            }
            // SAFETY: template pointer and count per the convention.
            let t = unsafe { template(k.pTemplate, k.ulAttributeCount) }
                .map_err(|_| Error::param("SP 800-108: malformed additional key template"))?;
            Ok((t, k.phKey))
        })
        .collect()
}

/// `CK_SP800_108_KDF_PARAMS` (counter mode) or `CK_SP800_108_FEEDBACK_KDF_PARAMS`.
///
/// # Safety
/// `m` follows the PKCS#11 calling convention.
pub(super) unsafe fn sp800_108(m: &CK_MECHANISM, feedback: bool) -> Result<MechParam> {
    let (p, _) = unsafe { sp800_108_with_outputs(m, feedback) }?;
    Ok(MechParam::Sp800108(Box::new(p)))
}

/// As [`sp800_108`], plus the `phKey` pointers of the additional keys (for `C_DeriveKey`).
///
/// # Safety
/// `m` follows the PKCS#11 calling convention.
pub(super) unsafe fn sp800_108_with_outputs(
    m: &CK_MECHANISM,
    feedback: bool,
) -> Result<(Sp800108, Vec<*mut CK_OBJECT_HANDLE>)> {
    let (prf, data, iv, keys) = if feedback {
        // SAFETY: checked size; nested pointers follow the convention.
        let p: CK_SP800_108_FEEDBACK_KDF_PARAMS = unsafe { param_struct(m, "CK_SP800_108_FEEDBACK_KDF_PARAMS") }?;
        let data = unsafe { prf_data(p.pDataParams, p.ulNumberOfDataParams) }?;
        let iv = unsafe { pbytes(p.pIV, p.ulIVLen, "SP 800-108 IV") }?;
        let keys = unsafe { derived_keys(p.pAdditionalDerivedKeys, p.ulAdditionalDerivedKeys) }?;
        (p.prfType, data, Some(iv), keys)
    } else {
        // SAFETY: as above.
        let p: CK_SP800_108_KDF_PARAMS = unsafe { param_struct(m, "CK_SP800_108_KDF_PARAMS") }?;
        let data = unsafe { prf_data(p.pDataParams, p.ulNumberOfDataParams) }?;
        let keys = unsafe { derived_keys(p.pAdditionalDerivedKeys, p.ulAdditionalDerivedKeys) }?;
        (p.prfType, data, None, keys)
    };
    let (additional, outs): (Vec<_>, Vec<_>) = keys.into_iter().unzip();
    Ok((Sp800108 { prf, data, iv, additional }, outs))
}

/// The additional-key output pointers of an SP 800-108 mechanism (empty for any other).
///
/// # Safety
/// `p` must be null or point to a `CK_MECHANISM` whose parameter follows the convention.
pub(super) unsafe fn additional_outputs(p: *const CK_MECHANISM) -> Vec<*mut CK_OBJECT_HANDLE> {
    if p.is_null() {
        return Vec::new();
    }
    // SAFETY: non-null CK_MECHANISM.
    let m = unsafe { std::ptr::read_unaligned(p) };
    let feedback = match m.mechanism {
        CKM_SP800_108_COUNTER_KDF => false,
        CKM_SP800_108_FEEDBACK_KDF => true,
        _ => return Vec::new(),
    };
    // SAFETY: as above.
    unsafe { sp800_108_with_outputs(&m, feedback) }.map(|(_, o)| o).unwrap_or_default()
}

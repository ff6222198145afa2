//! The C ABI: the only `unsafe` code of the module.
//!
//! Every entry point is an outer `extern "C"` function that calls [`guard`] with an inner closure
//! returning a Rust `Result`. The closure first copies all inputs out of C memory through the
//! helpers below (null checks, lengths), calls one safe method of [`Module`], and writes outputs
//! last. [`guard`] turns errors into their `CK_RV` and catches panics so that none ever unwinds
//! into the host process (it gets `CKR_GENERAL_ERROR`).
//!
//! Invariant relied on by every `unsafe` block here: the caller follows the PKCS#11 calling
//! convention — a non-null pointer with a length points to at least that many readable (or, for
//! outputs, writable) bytes for the duration of the call. Null pointers are checked, never
//! dereferenced.

mod entry;
mod info;
mod params;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
mod v3;

use crate::attr::Attribute;
use crate::error::{Error, Result};
use crate::mechanism::{MechParam, Mechanism, ParamShape, param_shape};
use crate::module::{Module, Out};
use cryptoki_sys::*;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, RwLock};

pub use entry::*;
pub use v3::*;

static MODULE: RwLock<Option<Arc<Module>>> = RwLock::new(None);

fn debug_enabled() -> bool {
    std::env::var_os("QUILL_HSM_DEBUG").is_some()
}

/// Run an entry point body: errors become their `CK_RV`, panics become `CKR_GENERAL_ERROR`.
fn guard(name: &str, f: impl FnOnce() -> Result<()>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(e)) => {
            if debug_enabled() {
                eprintln!("quill-hsm-sim: {name}: {e}");
            }
            e.rv
        }
        Err(_) => {
            eprintln!(
                "quill-hsm-sim: {name}: internal panic caught at the C boundary (returned CKR_GENERAL_ERROR); please report"
            );
            CKR_GENERAL_ERROR
        }
    }
}

/// The initialised module.
fn module() -> Result<Arc<Module>> {
    MODULE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .ok_or_else(|| Error::new(CKR_CRYPTOKI_NOT_INITIALIZED, "C_Initialize has not been called"))
}

/// Borrow `(p, len)` as a byte slice; null is allowed only with length 0.
///
/// # Safety
/// `p` must point to `len` readable bytes when non-null (PKCS#11 calling convention).
unsafe fn bytes<'a>(p: *const CK_BYTE, len: CK_ULONG) -> Result<&'a [u8]> {
    if p.is_null() {
        return if len == 0 { Ok(&[]) } else { Err(Error::args("null data pointer with a non-zero length")) };
    }
    let len = usize::try_from(len).map_err(|_| Error::args("length too large"))?;
    // SAFETY: non-null, and the caller guarantees `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Copy a template out of C memory.
///
/// # Safety
/// `p` must point to `n` `CK_ATTRIBUTE`s whose non-null `pValue` point to `ulValueLen` bytes.
unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Vec<Attribute>> {
    if p.is_null() {
        return if n == 0 { Ok(Vec::new()) } else { Err(Error::args("null template with a non-zero count")) };
    }
    let n = usize::try_from(n).map_err(|_| Error::args("count too large"))?;
    // SAFETY: non-null, `n` elements per the calling convention.
    let attrs = unsafe { std::slice::from_raw_parts(p, n) };
    attrs
        .iter()
        .map(|a| {
            // SAFETY: pValue points to ulValueLen bytes (or is null with length 0).
            let v = unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }?;
            Ok(Attribute { ty: a.type_, value: v.to_vec() })
        })
        .collect()
}

/// Read a `CK_ULONG`-sized struct from a mechanism parameter.
///
/// # Safety
/// `m.pParameter` must point to `m.ulParameterLen` readable bytes.
unsafe fn param_struct<T: Copy>(m: &CK_MECHANISM, what: &str) -> Result<T> {
    if m.pParameter.is_null() || m.ulParameterLen as usize != std::mem::size_of::<T>() {
        return Err(Error::param(format!("{what} expected as the mechanism parameter")));
    }
    // SAFETY: non-null and exactly size_of::<T>() bytes; read_unaligned tolerates any alignment.
    Ok(unsafe { std::ptr::read_unaligned(m.pParameter as *const T) })
}

/// Copy a mechanism and its parameter into owned values.
///
/// # Safety
/// `p` must be null or point to a `CK_MECHANISM` whose parameter follows the convention.
unsafe fn mechanism(p: *const CK_MECHANISM) -> Result<Mechanism> {
    if p.is_null() {
        return Err(Error::args("null mechanism"));
    }
    // SAFETY: non-null CK_MECHANISM.
    let m = unsafe { std::ptr::read_unaligned(p) };
    let param = match param_shape(m.mechanism) {
        ParamShape::Raw => {
            // SAFETY: parameter bytes per the convention.
            let b = unsafe { bytes(m.pParameter as *const u8, m.ulParameterLen) }?;
            if b.is_empty() { MechParam::None } else { MechParam::Raw(b.to_vec()) }
        }
        ParamShape::Oaep => {
            // SAFETY: checked size; the label pointer follows the convention.
            let o: CK_RSA_PKCS_OAEP_PARAMS = unsafe { param_struct(&m, "CK_RSA_PKCS_OAEP_PARAMS") }?;
            let label = if o.source == CKZ_DATA_SPECIFIED || o.source == 0 {
                unsafe { bytes(o.pSourceData as *const u8, o.ulSourceDataLen) }?.to_vec()
            } else {
                return Err(Error::param("OAEP source must be CKZ_DATA_SPECIFIED"));
            };
            MechParam::Oaep { hash: o.hashAlg, mgf: o.mgf, label }
        }
        ParamShape::Gcm => {
            // SAFETY: checked size; IV and AAD pointers follow the convention.
            let g: CK_GCM_PARAMS = unsafe { param_struct(&m, "CK_GCM_PARAMS") }?;
            let iv = unsafe { bytes(g.pIv, g.ulIvLen) }?.to_vec();
            let aad = unsafe { bytes(g.pAAD, g.ulAADLen) }?.to_vec();
            MechParam::Gcm { iv, aad, tag_bits: g.ulTagBits as u64 }
        }
        ParamShape::DeriveData => {
            // SAFETY: checked size; data pointer follows the convention.
            let d: CK_KEY_DERIVATION_STRING_DATA = unsafe { param_struct(&m, "CK_KEY_DERIVATION_STRING_DATA") }?;
            MechParam::DeriveData(unsafe { bytes(d.pData, d.ulLen) }?.to_vec())
        }
        ParamShape::DesCbcDeriveData => {
            // SAFETY: as above.
            let d: CK_DES_CBC_ENCRYPT_DATA_PARAMS = unsafe { param_struct(&m, "CK_DES_CBC_ENCRYPT_DATA_PARAMS") }?;
            MechParam::CbcDeriveData { iv: d.iv.to_vec(), data: unsafe { bytes(d.pData, d.length) }?.to_vec() }
        }
        ParamShape::AesCbcDeriveData => {
            // SAFETY: as above.
            let d: CK_AES_CBC_ENCRYPT_DATA_PARAMS = unsafe { param_struct(&m, "CK_AES_CBC_ENCRYPT_DATA_PARAMS") }?;
            MechParam::CbcDeriveData { iv: d.iv.to_vec(), data: unsafe { bytes(d.pData, d.length) }?.to_vec() }
        }
        // SAFETY (these four): `m` follows the convention; the parsers check sizes and nulls.
        ParamShape::Ecdh1 => unsafe { params::ecdh1(&m) }?,
        ParamShape::Eddsa => unsafe { params::eddsa(&m) }?,
        ParamShape::Sp800108Counter => unsafe { params::sp800_108(&m, false) }?,
        ParamShape::Sp800108Feedback => unsafe { params::sp800_108(&m, true) }?,
    };
    Ok(Mechanism { mech: m.mechanism, param })
}

/// The output capacity of `(p, plen)`: `None` for a length query (null `p`).
///
/// # Safety
/// `plen` must be null or point to a readable `CK_ULONG`.
unsafe fn out_cap(p: *const CK_BYTE, plen: *const CK_ULONG) -> Result<Option<usize>> {
    if plen.is_null() {
        return Err(Error::args("null output length pointer"));
    }
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null.
    Ok(Some(unsafe { *plen } as usize))
}

/// Write an [`Out`] following the two-call convention.
///
/// # Safety
/// `plen` non-null and writable; `p`, when non-null, has `*plen` writable bytes (checked by the
/// module against the capacity it was given).
unsafe fn write_out(out: Out, p: *mut CK_BYTE, plen: *mut CK_ULONG) -> Result<()> {
    match out {
        Out::Len(n) => {
            // SAFETY: plen checked non-null by out_cap.
            unsafe { *plen = n as CK_ULONG };
            Ok(())
        }
        Out::TooSmall(n) => {
            unsafe { *plen = n as CK_ULONG };
            Err(Error::new(CKR_BUFFER_TOO_SMALL, format!("output needs {n} bytes")))
        }
        Out::Data(d) => {
            // SAFETY: p has at least d.len() bytes (capacity was checked).
            unsafe {
                std::ptr::copy_nonoverlapping(d.as_ptr(), p, d.len());
                *plen = d.len() as CK_ULONG;
            }
            Ok(())
        }
    }
}

/// Write a value through a non-null out pointer.
///
/// # Safety
/// `p` must be null or writable.
unsafe fn put<T>(p: *mut T, v: T) -> Result<()> {
    if p.is_null() {
        return Err(Error::args("null output pointer"));
    }
    // SAFETY: non-null and writable per the convention.
    unsafe { std::ptr::write_unaligned(p, v) };
    Ok(())
}

/// Blank-padded fixed-size text field.
fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let b = s.as_bytes();
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

//! The raw PKCS#11 function list: Quill's one escape hatch for the calls `cryptoki` 0.12 cannot
//! make (see shared/reference/pkcs11.md, "Escape hatch that keeps keys inside the HSM"), used by
//! the adapter and by the tools (`quill-hsm`, `quill-hsm-bench`); the crate's only `unsafe` code:
//!
//! - `C_GetMechanismList` unfiltered: `Pkcs11::get_mechanism_list` silently drops every vendor
//!   mechanism and every standard one its `TryFrom` lacks (`CKM_DES3_ECB_ENCRYPT_DATA`), so
//!   capability detection would see neither hsm-sim's payment functions nor SoftHSM's derivation;
//!   `C_GetMechanismInfo` for those values, which `cryptoki` cannot name;
//! - `C_DeriveKey` with `CKM_DES3_ECB_ENCRYPT_DATA` (0x1102): `cryptoki` has no variant for it and
//!   cannot carry it as a vendor mechanism (values below `CKM_VENDOR_DEFINED` are rejected). It
//!   derives an EMV ICC master key (Option A: ECB over `Y ‖ Y⊕FF…`) without the key leaving the HSM;
//! - `C_DeriveKey` with a vendor mechanism whose parameter is a packed byte string of run-time
//!   length (hsm-sim's `CKM_QUILL_KEY_COMPONENTS_XOR`): `VendorDefinedMechanism::new::<T>` takes
//!   the parameter length from `size_of::<T>()`;
//! - `C_WrapKey` with such a mechanism (hsm-sim's `CKM_QUILL_TR31_WRAP`, whose parameter is the
//!   ASCII header template);
//! - single-part `C_Encrypt`/`C_Sign` with such a mechanism (hsm-sim's `CKM_QUILL_VISA_PVV`,
//!   `CKM_QUILL_PIN_GENERATE`, `CKM_QUILL_PIN_TRANSLATE`).
//!
//! hsm-sim's integration tests keep their own raw harness (`hsm-sim/tests/common/raw.rs`): it
//! calls modules with deliberately invalid handles, short buffers and arguments to check return
//! codes, which is no part of an escape hatch.
//!
//! Invariants every `unsafe` block below relies on (each block names the one it uses):
//!
//! - **(L) live table.** A [`RawModule`] is only made by [`RawModule::load`], whose `dlopen`
//!   reference (`_lib`) keeps the library mapped for the `RawModule`'s whole life, so the copied
//!   function pointers stay valid as long as it exists. The path is one that a live, initialised
//!   `cryptoki::context::Pkcs11` has already loaded (the caller passes that context as proof): a
//!   second `dlopen` of the same path returns the already loaded instance (same global state,
//!   same sessions) and runs no initialiser again. Were a caller to break that contract, a
//!   conforming module would answer `CKR_CRYPTOKI_NOT_INITIALIZED`; no pointer would dangle.
//! - **(H) handles.** Session and object handles passed in come from `cryptoki` objects of that
//!   same module instance ([`Session::handle`], [`ObjectHandle::handle`]); an invalid one only
//!   makes the module return `CKR_*_HANDLE_INVALID`.
//! - **(B) buffers.** Every pointer handed to the module points into a local or a borrowed slice
//!   that outlives the call, with the length the module is told; output buffers are `Vec`s of
//!   exactly the length reported to the module. PKCS#11 requires modules to copy mechanism
//!   parameters and templates, so nothing needs to outlive its call; input buffers typed `*mut`
//!   by the C API are never written by the module.
#![allow(unsafe_code)]

use crate::error::{rv_error, rv_name};
use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_FUNCTION_LIST, CK_KEY_DERIVATION_STRING_DATA, CK_MECHANISM, CK_MECHANISM_INFO, CK_MECHANISM_TYPE,
    CK_OBJECT_HANDLE, CK_RV, CK_SLOT_ID, CK_ULONG, CKM_DES3_ECB_ENCRYPT_DATA,
};
use std::ffi::c_void;
use std::path::Path;
use std::ptr;

/// A failed raw call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawError {
    /// The module returned this code.
    Rv(&'static str, RvError),
    /// The module's function list has no such function (NULL pointer).
    Missing(&'static str),
    /// A length does not fit a `CK_ULONG` (never on 64-bit Linux).
    Length(&'static str),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Rv(function, rv) => write!(f, "{function} returned {}", rv_name(*rv)),
            RawError::Missing(function) => write!(f, "{function} is NULL in the module's function list"),
            RawError::Length(function) => write!(f, "{function}: a length does not fit a CK_ULONG"),
        }
    }
}

impl std::error::Error for RawError {}

/// A mechanism parameter for a raw call.
#[derive(Debug, Clone, Copy)]
pub enum RawParam<'a> {
    /// The bytes as they are (packed vendor structures).
    Bytes(&'a [u8]),
    /// A `CK_KEY_DERIVATION_STRING_DATA` pointing at these bytes (`CKM_*_ECB_ENCRYPT_DATA`).
    DeriveData(&'a [u8]),
}

/// The module's `CK_FUNCTION_LIST`, copied, plus the library reference that keeps it valid.
pub struct RawModule {
    list: CK_FUNCTION_LIST,
    _lib: cryptoki_sys::Pkcs11,
}

impl std::fmt::Debug for RawModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawModule")
    }
}

fn check(function: &'static str, rv: CK_RV) -> Result<(), RawError> {
    match rv_error(rv) {
        None => Ok(()),
        Some(e) => Err(RawError::Rv(function, e)),
    }
}

fn ulong(function: &'static str, n: usize) -> Result<CK_ULONG, RawError> {
    CK_ULONG::try_from(n).map_err(|_| RawError::Length(function))
}

/// Build the `CK_MECHANISM` for `mech`/`param` and run `f` with it; the mechanism and the
/// structure its parameter points to live on this function's stack for the duration of `f`.
fn with_mechanism<R>(
    function: &'static str,
    mech: CK_MECHANISM_TYPE,
    param: RawParam<'_>,
    f: impl FnOnce(&mut CK_MECHANISM) -> Result<R, RawError>,
) -> Result<R, RawError> {
    let mut derive = CK_KEY_DERIVATION_STRING_DATA { pData: ptr::null_mut(), ulLen: 0 };
    let (p, len): (*mut c_void, usize) = match param {
        RawParam::Bytes(b) => (b.as_ptr().cast_mut().cast(), b.len()),
        RawParam::DeriveData(d) => {
            derive.pData = d.as_ptr().cast_mut();
            derive.ulLen = ulong(function, d.len())?;
            ((&raw mut derive).cast(), size_of::<CK_KEY_DERIVATION_STRING_DATA>())
        }
    };
    let mut m = CK_MECHANISM { mechanism: mech, pParameter: p, ulParameterLen: ulong(function, len)? };
    f(&mut m)
}

impl RawModule {
    /// Reach the function list of `path`, which `_ctx` has loaded and initialised (invariant L).
    /// The error names the path and what failed.
    pub fn load(path: &Path, _ctx: &Pkcs11) -> Result<RawModule, String> {
        // SAFETY (L): loading a library runs its initialisers; `path` is already loaded by `_ctx`,
        // so this only takes another reference to the same instance.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(path) }.map_err(|e| format!("dlopen {}: {e}", path.display()))?;
        if lib.C_GetFunctionList.is_err() {
            return Err(format!("{}: no C_GetFunctionList symbol", path.display()));
        }
        let mut p: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY (B): `p` is a valid out-pointer; the symbol exists (checked above).
        let rv = unsafe { lib.C_GetFunctionList(&mut p) };
        check("C_GetFunctionList", rv).map_err(|e| format!("{e:?}"))?;
        if p.is_null() {
            return Err("C_GetFunctionList returned a NULL list".to_owned());
        }
        // SAFETY (L): a non-NULL list returned by the module points to its `CK_FUNCTION_LIST`,
        // which lives as long as the library is loaded; we copy it while `lib` holds it loaded.
        let list = unsafe { *p };
        Ok(RawModule { list, _lib: lib })
    }

    /// Every mechanism value the slot lists, unfiltered (vendor values included).
    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>, RawError> {
        const F: &str = "C_GetMechanismList";
        let f = self.list.C_GetMechanismList.ok_or(RawError::Missing(F))?;
        let mut n: CK_ULONG = 0;
        // SAFETY (L, B): a NULL list with a valid count pointer is the size query of the
        // two-call convention.
        check(F, unsafe { f(slot, ptr::null_mut(), &mut n) })?;
        let mut v: Vec<CK_MECHANISM_TYPE> = vec![0; usize::try_from(n).map_err(|_| RawError::Length(F))?];
        // SAFETY (L, B): `v` holds `n` elements and `n` tells the module so.
        check(F, unsafe { f(slot, v.as_mut_ptr(), &mut n) })?;
        v.truncate(usize::try_from(n).map_err(|_| RawError::Length(F))?);
        Ok(v)
    }

    /// `C_GetMechanismInfo` for any value (vendor values included).
    pub fn mechanism_info(&self, slot: CK_SLOT_ID, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO, RawError> {
        const F: &str = "C_GetMechanismInfo";
        let f = self.list.C_GetMechanismInfo.ok_or(RawError::Missing(F))?;
        let mut info = CK_MECHANISM_INFO::default();
        // SAFETY (L, B): `info` is a valid out-pointer of the type the module writes.
        check(F, unsafe { f(slot, mech, &mut info) })?;
        Ok(info)
    }

    /// `C_DeriveKey` with any mechanism and a byte-string or derivation-data parameter; the new
    /// key stays in the module.
    pub fn derive_key(
        &self,
        session: &Session,
        mech: CK_MECHANISM_TYPE,
        param: RawParam<'_>,
        base: ObjectHandle,
        template: &[Attribute],
    ) -> Result<ObjectHandle, RawError> {
        const F: &str = "C_DeriveKey";
        let f = self.list.C_DeriveKey.ok_or(RawError::Missing(F))?;
        let mut tmpl: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        let count = ulong(F, tmpl.len())?;
        let mut out: CK_OBJECT_HANDLE = 0;
        with_mechanism(F, mech, param, |m| {
            // SAFETY (L, H, B): `m` and the parameter it points to live for this closure, `tmpl`
            // (whose value pointers point into `template`) and `out` outlive the call, `count` is
            // `tmpl`'s length; the session and base handles come from this module's `cryptoki`
            // objects.
            check(F, unsafe { f(session.handle(), m, base.handle(), tmpl.as_mut_ptr(), count, &mut out) })
        })?;
        // SAFETY (H): `out` is the handle C_DeriveKey just created in `session`'s module;
        // `ObjectHandle` is a plain integer wrapper.
        Ok(unsafe { ObjectHandle::new_from_raw(out) })
    }

    /// `C_WrapKey` with any mechanism and a byte-string parameter: `key` wrapped under `wrapping`
    /// (two-call convention: the length first, then the data).
    pub fn wrap_key(
        &self,
        session: &Session,
        mech: CK_MECHANISM_TYPE,
        param: RawParam<'_>,
        wrapping: ObjectHandle,
        key: ObjectHandle,
    ) -> Result<Vec<u8>, RawError> {
        const F: &str = "C_WrapKey";
        let f = self.list.C_WrapKey.ok_or(RawError::Missing(F))?;
        with_mechanism(F, mech, param, |m| {
            let mut n: CK_ULONG = 0;
            // SAFETY (L, H, B): a NULL output buffer with a valid length pointer is the size query
            // of the two-call convention; `m` and its parameter live for this closure; the handles
            // come from this module's `cryptoki` objects.
            check(F, unsafe { f(session.handle(), m, wrapping.handle(), key.handle(), ptr::null_mut(), &mut n) })?;
            let mut out = vec![0u8; usize::try_from(n).map_err(|_| RawError::Length(F))?];
            // SAFETY (L, H, B): `out` holds `n` bytes and `n` tells the module so.
            check(F, unsafe { f(session.handle(), m, wrapping.handle(), key.handle(), out.as_mut_ptr(), &mut n) })?;
            out.truncate(usize::try_from(n).map_err(|_| RawError::Length(F))?);
            Ok(out)
        })
    }

    /// Single-part `C_EncryptInit` + `C_Encrypt` (`sign = false`) or `C_SignInit` + `C_Sign`
    /// (`sign = true`) with any mechanism and a byte-string parameter (hsm-sim's PIN and PVV
    /// mechanisms, whose parameters are packed structures of run-time length). Two-call convention
    /// for the output; the module keeps the result of the size query for the second call.
    pub fn single_part(
        &self,
        session: &Session,
        sign: bool,
        mech: CK_MECHANISM_TYPE,
        param: RawParam<'_>,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Vec<u8>, RawError> {
        let (fi, fo): (&'static str, &'static str) =
            if sign { ("C_SignInit", "C_Sign") } else { ("C_EncryptInit", "C_Encrypt") };
        let (init, run) = if sign {
            (self.list.C_SignInit.ok_or(RawError::Missing(fi))?, self.list.C_Sign.ok_or(RawError::Missing(fo))?)
        } else {
            (self.list.C_EncryptInit.ok_or(RawError::Missing(fi))?, self.list.C_Encrypt.ok_or(RawError::Missing(fo))?)
        };
        let data_len = ulong(fo, data.len())?;
        with_mechanism(fi, mech, param, |m| {
            // SAFETY (L, H, B): `m` and its parameter live for this closure; the session and key
            // handles come from this module's `cryptoki` objects.
            check(fi, unsafe { init(session.handle(), m, key.handle()) })?;
            let mut n: CK_ULONG = 0;
            // SAFETY (L, H, B): `data` outlives the call with the length given (never written by
            // the module); a NULL output buffer with a valid length pointer is the size query.
            check(fo, unsafe { run(session.handle(), data.as_ptr().cast_mut(), data_len, ptr::null_mut(), &mut n) })?;
            let mut out = vec![0u8; usize::try_from(n).map_err(|_| RawError::Length(fo))?];
            // SAFETY (L, H, B): `out` holds `n` bytes and `n` tells the module so.
            check(fo, unsafe { run(session.handle(), data.as_ptr().cast_mut(), data_len, out.as_mut_ptr(), &mut n) })?;
            out.truncate(usize::try_from(n).map_err(|_| RawError::Length(fo))?);
            Ok(out)
        })
    }

    /// `C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA, data)` from a DES2/DES3 `base`: the new key is the
    /// 3DES-ECB encryption of `data` (a multiple of 8 bytes) under `base`, computed inside the
    /// module.
    pub fn des3_ecb_encrypt_data(
        &self,
        session: &Session,
        base: ObjectHandle,
        data: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle, RawError> {
        self.derive_key(session, CKM_DES3_ECB_ENCRYPT_DATA, RawParam::DeriveData(data), base, template)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The calls themselves are exercised against hsm-sim and SoftHSM in `tests/raw.rs`; here,
    //! the parameter structures the module reads.
    use super::*;

    #[test]
    fn derive_data_parameter_points_at_the_data() {
        let data = [0x11u8; 16];
        with_mechanism("t", CKM_DES3_ECB_ENCRYPT_DATA, RawParam::DeriveData(&data), |m| {
            assert_eq!(m.mechanism, CKM_DES3_ECB_ENCRYPT_DATA);
            assert_eq!(m.ulParameterLen as usize, size_of::<CK_KEY_DERIVATION_STRING_DATA>());
            // SAFETY: `with_mechanism` points `pParameter` at a live `CK_KEY_DERIVATION_STRING_DATA`.
            let p = unsafe { &*(m.pParameter as *const CK_KEY_DERIVATION_STRING_DATA) };
            assert_eq!(p.pData.cast_const(), data.as_ptr());
            assert_eq!(p.ulLen, 16);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn byte_parameter_is_passed_as_is() {
        let b = [1u8, 2, 3];
        with_mechanism("t", 0x8000_0001, RawParam::Bytes(&b), |m| {
            assert_eq!(m.pParameter.cast_const().cast::<u8>(), b.as_ptr());
            assert_eq!(m.ulParameterLen, 3);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn errors_read_as_one_line() {
        assert_eq!(
            RawError::Rv("C_DeriveKey", RvError::MechanismInvalid).to_string(),
            "C_DeriveKey returned CKR_MECHANISM_INVALID"
        );
        assert_eq!(RawError::Missing("C_WrapKey").to_string(), "C_WrapKey is NULL in the module's function list");
    }

    #[test]
    fn return_codes_map_to_errors() {
        assert_eq!(check("C_X", cryptoki_sys::CKR_OK), Ok(()));
        assert_eq!(check("C_X", cryptoki_sys::CKR_DEVICE_ERROR), Err(RawError::Rv("C_X", RvError::DeviceError)));
    }
}

//! The raw PKCS#11 function list, for the few calls the `cryptoki` 0.12 API cannot make:
//!
//! - `C_GetMechanismList` / `C_GetMechanismInfo` for values `cryptoki` drops or cannot name
//!   (`Pkcs11::get_mechanism_list` silently filters out every vendor mechanism and every standard
//!   one missing from its `TryFrom`, e.g. `CKM_DES3_ECB_ENCRYPT_DATA`);
//! - `C_DeriveKey` with `CKM_DES3_ECB_ENCRYPT_DATA` (0x1102), which `cryptoki` has no variant for
//!   and cannot carry as a vendor mechanism (values below `CKM_VENDOR_DEFINED` are rejected).
//!
//! See shared/reference/pkcs11.md ("Escape hatch that keeps keys inside the HSM").
//!
//! Invariant every `unsafe` block here relies on: a [`RawModule`] is only made from a path that
//! a live, initialised [`cryptoki::context::Pkcs11`] has already loaded. A second `dlopen` of
//! the same path returns the already loaded instance (same global state, same sessions), and
//! the [`RawModule`] keeps its own `dlopen` reference, so the copied function pointers stay
//! valid for its whole life. Session and object handles passed in come from that same
//! `cryptoki` context; every pointer handed to the module points into locals or borrowed
//! slices that outlive the call, and lengths are the lengths of those buffers.
#![allow(unsafe_code)]

use anyhow::{Result, anyhow, bail};
use cryptoki::context::Pkcs11;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_FUNCTION_LIST, CK_KEY_DERIVATION_STRING_DATA, CK_MECHANISM, CK_MECHANISM_INFO, CK_MECHANISM_TYPE,
    CK_OBJECT_HANDLE, CK_RV, CK_SLOT_ID, CK_ULONG, CKM_DES3_ECB_ENCRYPT_DATA, CKR_OK,
};
use std::path::Path;

/// The module's `CK_FUNCTION_LIST`, copied, plus the library reference that keeps it valid.
pub struct RawModule {
    list: CK_FUNCTION_LIST,
    _lib: cryptoki_sys::Pkcs11,
}

fn rv(what: &str, rv: CK_RV) -> Result<()> {
    if rv == CKR_OK { Ok(()) } else { Err(anyhow!("{what} returned {}", super::ckr_name(rv))) }
}

impl RawModule {
    /// Reach the function list of `path`, which `_ctx` has loaded and initialised.
    pub fn open(path: &Path, _ctx: &Pkcs11) -> Result<Self> {
        // SAFETY: loading a library runs its initialisers; `path` is already loaded by `_ctx`
        // (see the module invariant), so this only takes another reference to it.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(path) }.map_err(|e| anyhow!("dlopen {}: {e}", path.display()))?;
        if lib.C_GetFunctionList.is_err() {
            bail!("{}: no C_GetFunctionList symbol", path.display());
        }
        let mut ptr: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `ptr` is a valid out-pointer; the symbol exists (checked above).
        rv("C_GetFunctionList", unsafe { lib.C_GetFunctionList(&mut ptr) })?;
        if ptr.is_null() {
            bail!("C_GetFunctionList returned a NULL list");
        }
        // SAFETY: a non-NULL list returned by the module points to a `CK_FUNCTION_LIST` that
        // lives as long as the library is loaded; we copy it while `lib` holds it loaded.
        let list = unsafe { *ptr };
        Ok(Self { list, _lib: lib })
    }

    /// Every mechanism value the slot lists, unfiltered.
    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>> {
        let f = self.list.C_GetMechanismList.ok_or_else(|| anyhow!("C_GetMechanismList is NULL"))?;
        let mut n: CK_ULONG = 0;
        // SAFETY: NULL list + valid count pointer is the size query of the two-call convention.
        rv("C_GetMechanismList", unsafe { f(slot, std::ptr::null_mut(), &mut n) })?;
        let mut v: Vec<CK_MECHANISM_TYPE> = vec![0; usize::try_from(n)?];
        // SAFETY: `v` holds `n` elements and `n` tells the module so.
        rv("C_GetMechanismList", unsafe { f(slot, v.as_mut_ptr(), &mut n) })?;
        v.truncate(usize::try_from(n)?);
        Ok(v)
    }

    /// `C_GetMechanismInfo` for any value.
    pub fn mechanism_info(&self, slot: CK_SLOT_ID, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO> {
        let f = self.list.C_GetMechanismInfo.ok_or_else(|| anyhow!("C_GetMechanismInfo is NULL"))?;
        let mut info = CK_MECHANISM_INFO::default();
        // SAFETY: `info` is a valid out-pointer of the right type.
        rv("C_GetMechanismInfo", unsafe { f(slot, mech, &mut info) })?;
        Ok(info)
    }

    /// `C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA, data)` from `base`: the new key is the 3DES-ECB
    /// encryption of `data` under `base`, computed inside the module (EMV Option A with
    /// `data = Y ‖ Y⊕FF…`).
    pub fn des3_ecb_encrypt_data(
        &self,
        session: &Session,
        base: ObjectHandle,
        data: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle> {
        let f = self.list.C_DeriveKey.ok_or_else(|| anyhow!("C_DeriveKey is NULL"))?;
        let mut params =
            CK_KEY_DERIVATION_STRING_DATA { pData: data.as_ptr().cast_mut(), ulLen: CK_ULONG::try_from(data.len())? };
        let mut mech = CK_MECHANISM {
            mechanism: CKM_DES3_ECB_ENCRYPT_DATA,
            pParameter: (&raw mut params).cast(),
            ulParameterLen: CK_ULONG::try_from(size_of::<CK_KEY_DERIVATION_STRING_DATA>())?,
        };
        let mut tmpl: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        let mut out: CK_OBJECT_HANDLE = 0;
        // SAFETY: `mech`, `params`, `data`, `tmpl` (whose pointers point into `template`) and
        // `out` all outlive the call; the module reads `data` only (it is never written).
        rv("C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA)", unsafe {
            f(session.handle(), &mut mech, base.handle(), tmpl.as_mut_ptr(), CK_ULONG::try_from(tmpl.len())?, &mut out)
        })?;
        // SAFETY: `out` is the handle C_DeriveKey just created in `session`'s module.
        Ok(unsafe { ObjectHandle::new_from_raw(out) })
    }
}

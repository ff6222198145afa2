//! The raw PKCS#11 escape hatch: calls `cryptoki` 0.12 cannot make.
//!
//! `cryptoki` cannot build a `MechanismType` for a standard value it lacks
//! (`CKM_DES3_ECB_ENCRYPT_DATA`, `CKM_AES_ECB_ENCRYPT_DATA`, `CKM_DES3_CMAC`, `CKM_DES3_MAC`,
//! `CKM_AES_KEY_WRAP_KWP`, `CKM_AES_CMAC_GENERAL`), it hides the two-call
//! `CKR_BUFFER_TOO_SMALL` convention, and it cannot name a bogus session handle. As
//! `shared/reference/pkcs11.md` describes, a second `dlopen` of the same module path returns the
//! instance `cryptoki` already loaded and initialised; its `C_GetFunctionList` gives the same
//! function table, which this file calls directly with the raw session handle
//! (`Session::handle()`) and raw object handles (`ObjectHandle::handle()`).
//!
//! This is the only file of the integration tests that contains `unsafe` code. The invariant every
//! call below relies on:
//!
//! * the function table comes from a module that `cryptoki` has loaded *and initialised*, and
//!   [`RawModule`] keeps its own reference to the library, so the table's function pointers stay
//!   valid for as long as a `RawModule` exists;
//! * every pointer passed to the module points into a Rust value (a slice, a `Vec`, a local
//!   struct, an `Attribute` template) that outlives the call, with the length the module is told;
//!   output buffers are `Vec`s of exactly the capacity reported to the module;
//! * the module never keeps a pointer past the call that received it (PKCS#11 requires modules to
//!   copy mechanism parameters and templates), so nothing here needs to outlive its call.
#![allow(unsafe_code)]

use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;
use std::path::Path;
use std::ptr;

/// A mechanism parameter for a raw call.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// No parameter (`pParameter = NULL`).
    None,
    /// The bytes as they are (IVs, packed vendor structures).
    Bytes(&'a [u8]),
    /// A `CK_KEY_DERIVATION_STRING_DATA` pointing at these bytes (`*_ECB_ENCRYPT_DATA`).
    DeriveData(&'a [u8]),
    /// A single `CK_ULONG` (`CK_MAC_GENERAL_PARAMS`).
    Ulong(CK_ULONG),
    /// A `CK_DES_CBC_ENCRYPT_DATA_PARAMS` (`CKM_DES3_CBC_ENCRYPT_DATA`): IV and data.
    DesCbcDerive([u8; 8], &'a [u8]),
}

/// The function table of an initialised module.
pub struct RawModule {
    // Keeps the shared object mapped while `list` is in use.
    _lib: cryptoki_sys::Pkcs11,
    list: CK_FUNCTION_LIST,
}

impl std::fmt::Debug for RawModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawModule")
    }
}

/// Set an environment variable the module reads at `C_Initialize`.
///
/// `std::env::set_var` is `unsafe` because another thread might read the environment at the same
/// time. Callers use it only inside the `OnceLock` initialiser that loads the module, which every
/// test in a binary goes through before doing anything else, and in child processes before the
/// module is loaded; no test thread reads the environment concurrently.
pub fn set_env(key: &str, value: &std::ffi::OsStr) {
    // SAFETY: see the function documentation (no concurrent environment access).
    unsafe { std::env::set_var(key, value) }
}

/// Turn a raw handle into a `cryptoki` handle (for handles the raw calls return, and for
/// deliberately invalid handles in error-code tests).
pub fn object_handle(raw: CK_OBJECT_HANDLE) -> ObjectHandle {
    // SAFETY: `ObjectHandle` is a plain integer; an invalid value only makes the module return
    // CKR_OBJECT_HANDLE_INVALID / CKR_KEY_HANDLE_INVALID, which is what the tests check.
    unsafe { ObjectHandle::new_from_raw(raw) }
}

fn template(tmpl: &[Attribute]) -> Vec<CK_ATTRIBUTE> {
    tmpl.iter().map(CK_ATTRIBUTE::from).collect()
}

fn ulong(n: usize) -> CK_ULONG {
    CK_ULONG::try_from(n).unwrap_or(CK_ULONG::MAX)
}

/// Run `f` with a `CK_MECHANISM` for `mech`/`param`; the mechanism and the structure it points
/// to live on this function's stack for the duration of `f`.
fn with_mech<R>(mech: CK_MECHANISM_TYPE, param: Param<'_>, f: impl FnOnce(*mut CK_MECHANISM) -> R) -> R {
    let mut derive = CK_KEY_DERIVATION_STRING_DATA { pData: ptr::null_mut(), ulLen: 0 };
    let mut des_cbc = CK_DES_CBC_ENCRYPT_DATA_PARAMS { iv: [0; 8], pData: ptr::null_mut(), length: 0 };
    let mut ul: CK_ULONG = if let Param::Ulong(v) = param { v } else { 0 };
    let (p, len): (*mut std::ffi::c_void, usize) = match param {
        Param::None => (ptr::null_mut(), 0),
        Param::Bytes(b) => (b.as_ptr() as *mut std::ffi::c_void, b.len()),
        Param::DeriveData(d) => {
            derive.pData = d.as_ptr() as *mut CK_BYTE;
            derive.ulLen = ulong(d.len());
            (
                &mut derive as *mut CK_KEY_DERIVATION_STRING_DATA as *mut std::ffi::c_void,
                size_of::<CK_KEY_DERIVATION_STRING_DATA>(),
            )
        }
        Param::DesCbcDerive(iv, d) => {
            des_cbc.iv = iv;
            des_cbc.pData = d.as_ptr() as *mut CK_BYTE;
            des_cbc.length = ulong(d.len());
            (
                &mut des_cbc as *mut CK_DES_CBC_ENCRYPT_DATA_PARAMS as *mut std::ffi::c_void,
                size_of::<CK_DES_CBC_ENCRYPT_DATA_PARAMS>(),
            )
        }
        Param::Ulong(_) => (&mut ul as *mut CK_ULONG as *mut std::ffi::c_void, size_of::<CK_ULONG>()),
    };
    let mut m = CK_MECHANISM { mechanism: mech, pParameter: p, ulParameterLen: ulong(len) };
    f(&mut m)
}

macro_rules! func {
    ($self:expr, $name:ident) => {
        $self.list.$name.expect(concat!("module has no ", stringify!($name)))
    };
}

impl RawModule {
    /// Load the function table of the module at `path`, which `cryptoki` must already have
    /// loaded and initialised in this process.
    pub fn load(path: &Path) -> RawModule {
        // SAFETY: loading runs the library's initialisers; it is the module this process already
        // loaded through `cryptoki`, so `dlopen` only takes another reference to it.
        let lib =
            unsafe { cryptoki_sys::Pkcs11::new(path) }.unwrap_or_else(|e| panic!("dlopen {}: {e}", path.display()));
        let mut p: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer.
        let rv = unsafe { lib.C_GetFunctionList(&mut p) };
        assert_eq!(rv, CKR_OK, "C_GetFunctionList");
        assert!(!p.is_null(), "C_GetFunctionList returned NULL");
        // SAFETY: a module returns a pointer to its static, fully initialised function table.
        let list = unsafe { *p };
        RawModule { _lib: lib, list }
    }

    /// `C_DeriveKey` with any mechanism.
    pub fn derive(
        &self,
        s: &Session,
        mech: CK_MECHANISM_TYPE,
        param: Param<'_>,
        base: ObjectHandle,
        tmpl: &[Attribute],
    ) -> Result<ObjectHandle, CK_RV> {
        let mut t = template(tmpl);
        let mut h: CK_OBJECT_HANDLE = 0;
        let rv = with_mech(mech, param, |m| {
            // SAFETY: see the file documentation; `t` and `h` outlive the call.
            unsafe { func!(self, C_DeriveKey)(s.handle(), m, base.handle(), t.as_mut_ptr(), ulong(t.len()), &mut h) }
        });
        if rv == CKR_OK { Ok(object_handle(h)) } else { Err(rv) }
    }

    /// `C_SignInit` + `C_Sign` (length query, then the signature).
    pub fn sign(
        &self,
        s: &Session,
        mech: CK_MECHANISM_TYPE,
        param: Param<'_>,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Vec<u8>, CK_RV> {
        self.init_and_call(func!(self, C_SignInit), func!(self, C_Sign), s, mech, param, key, data)
    }

    /// `C_VerifyInit` + `C_Verify`; the return value of the last call made.
    pub fn verify(
        &self,
        s: &Session,
        mech: CK_MECHANISM_TYPE,
        param: Param<'_>,
        key: ObjectHandle,
        data: &[u8],
        sig: &[u8],
    ) -> CK_RV {
        let rv = with_mech(mech, param, |m| {
            // SAFETY: see the file documentation.
            unsafe { func!(self, C_VerifyInit)(s.handle(), m, key.handle()) }
        });
        if rv != CKR_OK {
            return rv;
        }
        // SAFETY: `data` and `sig` outlive the call.
        unsafe {
            func!(self, C_Verify)(
                s.handle(),
                data.as_ptr() as *mut u8,
                ulong(data.len()),
                sig.as_ptr() as *mut u8,
                ulong(sig.len()),
            )
        }
    }

    /// `C_EncryptInit` only (for state tests); returns its `CK_RV`.
    pub fn encrypt_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        param: Param<'_>,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        with_mech(mech, param, |m| {
            // SAFETY: see the file documentation; invalid handles are the module's to reject.
            unsafe { func!(self, C_EncryptInit)(session, m, key) }
        })
    }

    /// One `C_Encrypt` call with an output buffer of `cap` bytes (`None` = NULL buffer, a
    /// length query). Returns the `CK_RV`, the length the module reported and the buffer.
    pub fn encrypt_call(&self, s: &Session, data: &[u8], cap: Option<usize>) -> (CK_RV, CK_ULONG, Vec<u8>) {
        let mut out = vec![0u8; cap.unwrap_or(0)];
        let mut len: CK_ULONG = ulong(out.len());
        let p = if cap.is_some() { out.as_mut_ptr() } else { ptr::null_mut() };
        // SAFETY: `p` is NULL or points at `out`, whose length is `len`.
        let rv =
            unsafe { func!(self, C_Encrypt)(s.handle(), data.as_ptr() as *mut u8, ulong(data.len()), p, &mut len) };
        (rv, len, out)
    }

    /// One `C_Sign` call with an output buffer of `cap` bytes (see [`Self::encrypt_call`]).
    pub fn sign_call(&self, s: &Session, data: &[u8], cap: Option<usize>) -> (CK_RV, CK_ULONG, Vec<u8>) {
        let mut out = vec![0u8; cap.unwrap_or(0)];
        let mut len: CK_ULONG = ulong(out.len());
        let p = if cap.is_some() { out.as_mut_ptr() } else { ptr::null_mut() };
        // SAFETY: `p` is NULL or points at `out`, whose length is `len`.
        let rv = unsafe { func!(self, C_Sign)(s.handle(), data.as_ptr() as *mut u8, ulong(data.len()), p, &mut len) };
        (rv, len, out)
    }

    /// `C_SignInit` only; returns its `CK_RV`.
    pub fn sign_init(&self, s: &Session, mech: CK_MECHANISM_TYPE, param: Param<'_>, key: ObjectHandle) -> CK_RV {
        with_mech(mech, param, |m| {
            // SAFETY: see the file documentation.
            unsafe { func!(self, C_SignInit)(s.handle(), m, key.handle()) }
        })
    }

    /// `C_EncryptInit` + `C_Encrypt` (length query, then the data).
    pub fn encrypt(
        &self,
        s: &Session,
        mech: CK_MECHANISM_TYPE,
        param: Param<'_>,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Vec<u8>, CK_RV> {
        let rv = self.encrypt_init(s.handle(), mech, param, key.handle());
        if rv != CKR_OK {
            return Err(rv);
        }
        let (rv, len, _) = self.encrypt_call(s, data, None);
        if rv != CKR_OK {
            return Err(rv);
        }
        let (rv, len, mut out) = self.encrypt_call(s, data, Some(usize::try_from(len).map_err(|_| CKR_GENERAL_ERROR)?));
        if rv != CKR_OK {
            return Err(rv);
        }
        out.truncate(usize::try_from(len).map_err(|_| CKR_GENERAL_ERROR)?);
        Ok(out)
    }

    /// `C_DecryptInit` + `C_Decrypt` (length query, then the data).
    pub fn decrypt(
        &self,
        s: &Session,
        mech: CK_MECHANISM_TYPE,
        param: Param<'_>,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Vec<u8>, CK_RV> {
        self.init_and_call(func!(self, C_DecryptInit), func!(self, C_Decrypt), s, mech, param, key, data)
    }

    /// `<Op>Init` then `<Op>` with the two-call convention (length query, then the data):
    /// shared by `C_Sign` and `C_Decrypt`, whose C signatures are the same.
    #[allow(clippy::too_many_arguments)]
    fn init_and_call(
        &self,
        init: unsafe extern "C" fn(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> CK_RV,
        call: unsafe extern "C" fn(CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG) -> CK_RV,
        s: &Session,
        mech: CK_MECHANISM_TYPE,
        param: Param<'_>,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Vec<u8>, CK_RV> {
        // SAFETY: see the file documentation.
        let rv = with_mech(mech, param, |m| unsafe { init(s.handle(), m, key.handle()) });
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut len: CK_ULONG = 0;
        // SAFETY: NULL output = length query; `data` outlives the call.
        let rv = unsafe { call(s.handle(), data.as_ptr() as *mut u8, ulong(data.len()), ptr::null_mut(), &mut len) };
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut out = vec![0u8; usize::try_from(len).map_err(|_| CKR_GENERAL_ERROR)?];
        // SAFETY: `out` has exactly `len` bytes.
        let rv = unsafe { call(s.handle(), data.as_ptr() as *mut u8, ulong(data.len()), out.as_mut_ptr(), &mut len) };
        if rv != CKR_OK {
            return Err(rv);
        }
        out.truncate(usize::try_from(len).map_err(|_| CKR_GENERAL_ERROR)?);
        Ok(out)
    }

    /// `C_WrapKey` (length query, then the wrapped key).
    pub fn wrap(
        &self,
        s: &Session,
        mech: CK_MECHANISM_TYPE,
        param: Param<'_>,
        wrapping: ObjectHandle,
        key: ObjectHandle,
    ) -> Result<Vec<u8>, CK_RV> {
        let mut len: CK_ULONG = 0;
        let rv = with_mech(mech, param, |m| {
            // SAFETY: NULL output = length query.
            unsafe { func!(self, C_WrapKey)(s.handle(), m, wrapping.handle(), key.handle(), ptr::null_mut(), &mut len) }
        });
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut out = vec![0u8; usize::try_from(len).map_err(|_| CKR_GENERAL_ERROR)?];
        let rv = with_mech(mech, param, |m| {
            // SAFETY: `out` has exactly `len` bytes.
            unsafe {
                func!(self, C_WrapKey)(s.handle(), m, wrapping.handle(), key.handle(), out.as_mut_ptr(), &mut len)
            }
        });
        if rv != CKR_OK {
            return Err(rv);
        }
        out.truncate(usize::try_from(len).map_err(|_| CKR_GENERAL_ERROR)?);
        Ok(out)
    }

    /// `C_UnwrapKey`.
    pub fn unwrap(
        &self,
        s: &Session,
        mech: CK_MECHANISM_TYPE,
        param: Param<'_>,
        unwrapping: ObjectHandle,
        wrapped: &[u8],
        tmpl: &[Attribute],
    ) -> Result<ObjectHandle, CK_RV> {
        let mut t = template(tmpl);
        let mut h: CK_OBJECT_HANDLE = 0;
        let rv = with_mech(mech, param, |m| {
            // SAFETY: see the file documentation.
            unsafe {
                func!(self, C_UnwrapKey)(
                    s.handle(),
                    m,
                    unwrapping.handle(),
                    wrapped.as_ptr() as *mut u8,
                    ulong(wrapped.len()),
                    t.as_mut_ptr(),
                    ulong(t.len()),
                    &mut h,
                )
            }
        });
        if rv == CKR_OK { Ok(object_handle(h)) } else { Err(rv) }
    }

    /// `C_GetAttributeValue` for one attribute with a NULL buffer (a length query): the `CK_RV`
    /// and the length the module reported (`CK_UNAVAILABLE_INFORMATION` for a sensitive value).
    pub fn attribute_len(&self, s: &Session, obj: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> (CK_RV, CK_ULONG) {
        let mut a = CK_ATTRIBUTE { type_: ty, pValue: ptr::null_mut(), ulValueLen: 0 };
        // SAFETY: one template entry with a NULL value pointer (length query).
        let rv = unsafe { func!(self, C_GetAttributeValue)(s.handle(), obj.handle(), &mut a, 1) };
        (rv, a.ulValueLen)
    }

    /// `C_GetAttributeValue` for one attribute into a buffer of `cap` bytes.
    pub fn attribute_into(
        &self,
        s: &Session,
        obj: ObjectHandle,
        ty: CK_ATTRIBUTE_TYPE,
        cap: usize,
    ) -> (CK_RV, CK_ULONG, Vec<u8>) {
        let mut buf = vec![0u8; cap];
        let mut a =
            CK_ATTRIBUTE { type_: ty, pValue: buf.as_mut_ptr() as *mut std::ffi::c_void, ulValueLen: ulong(cap) };
        // SAFETY: the value pointer covers `cap` bytes.
        let rv = unsafe { func!(self, C_GetAttributeValue)(s.handle(), obj.handle(), &mut a, 1) };
        (rv, a.ulValueLen, buf)
    }

    /// `C_GetSessionInfo` on an arbitrary (possibly invalid) session handle.
    pub fn session_info_rv(&self, session: CK_SESSION_HANDLE) -> CK_RV {
        let mut info = CK_SESSION_INFO { slotID: 0, state: 0, flags: 0, ulDeviceError: 0 };
        // SAFETY: `info` is a valid out-pointer.
        unsafe { func!(self, C_GetSessionInfo)(session, &mut info) }
    }

    /// `C_GetMechanismList` (all values, including those `cryptoki` does not know).
    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> Vec<CK_MECHANISM_TYPE> {
        let f = func!(self, C_GetMechanismList);
        let mut n: CK_ULONG = 0;
        // SAFETY: NULL list = count query.
        let rv = unsafe { f(slot, ptr::null_mut(), &mut n) };
        assert_eq!(rv, CKR_OK, "C_GetMechanismList (count)");
        let mut v: Vec<CK_MECHANISM_TYPE> = vec![0; usize::try_from(n).unwrap_or(0)];
        // SAFETY: `v` holds `n` entries.
        let rv = unsafe { f(slot, v.as_mut_ptr(), &mut n) };
        assert_eq!(rv, CKR_OK, "C_GetMechanismList");
        v.truncate(usize::try_from(n).unwrap_or(0));
        v
    }

    /// `C_Initialize` again on the already initialised module, with NULL arguments or with
    /// arguments whose `pReserved` is not NULL; returns its `CK_RV` (the module must not crash).
    pub fn initialize_again(&self, reserved: bool) -> CK_RV {
        let mut dummy = 0u8;
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: if reserved { &mut dummy as *mut u8 as *mut std::ffi::c_void } else { ptr::null_mut() },
        };
        let p =
            if reserved { &mut args as *mut CK_C_INITIALIZE_ARGS as *mut std::ffi::c_void } else { ptr::null_mut() };
        // SAFETY: `p` is NULL or points at `args`, which outlives the call.
        unsafe { func!(self, C_Initialize)(p) }
    }
}

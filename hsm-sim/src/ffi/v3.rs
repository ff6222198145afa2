//! The functions PKCS#11 3.0 adds to the function list (PKCS#11 Base 3.0 §5.4–§5.21).
//!
//! `C_SessionCancel` is implemented; the rest return `CKR_FUNCTION_NOT_SUPPORTED` without
//! touching their arguments (listed in `hsm-sim/README.md`): `C_LoginUser` (the token has no user
//! names) and the message-based functions of §5.10–§5.13 (`C_MessageEncryptInit` …
//! `C_MessageVerifyFinal`).

#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::*;
use std::ffi::c_void;

/// `C_SessionCancel` (3.0 §5.6.5): end the operations whose `CKF_*` function flags are given.
pub unsafe extern "C" fn C_SessionCancel(hSession: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    guard("C_SessionCancel", || module()?.session_cancel(hSession, flags))
}

/// `C_LoginUser` (3.0 §5.6.9): not supported (the token has no user names; use `C_Login`).
pub unsafe extern "C" fn C_LoginUser(
    _h: CK_SESSION_HANDLE,
    _user: CK_USER_TYPE,
    _pin: *mut CK_UTF8CHAR,
    _pin_len: CK_ULONG,
    _name: *mut CK_UTF8CHAR,
    _name_len: CK_ULONG,
) -> CK_RV {
    CKR_FUNCTION_NOT_SUPPORTED
}

/// `C_Message*Init` (3.0 §5.10.1, §5.11.1, §5.12.1, §5.13.1): not supported.
macro_rules! not_supported_init {
    ($($name:ident),*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported (message-based functions).")]
        pub unsafe extern "C" fn $name(_h: CK_SESSION_HANDLE, _m: *mut CK_MECHANISM, _k: CK_OBJECT_HANDLE) -> CK_RV {
            CKR_FUNCTION_NOT_SUPPORTED
        }
    )*};
}
not_supported_init!(C_MessageEncryptInit, C_MessageDecryptInit, C_MessageSignInit, C_MessageVerifyInit);

/// `C_Message*Final`: not supported.
macro_rules! not_supported_final {
    ($($name:ident),*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported (message-based functions).")]
        pub unsafe extern "C" fn $name(_h: CK_SESSION_HANDLE) -> CK_RV {
            CKR_FUNCTION_NOT_SUPPORTED
        }
    )*};
}
not_supported_final!(C_MessageEncryptFinal, C_MessageDecryptFinal, C_MessageSignFinal, C_MessageVerifyFinal);

/// `C_EncryptMessage` / `C_DecryptMessage`: not supported.
macro_rules! not_supported_crypt_message {
    ($($name:ident),*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported (message-based functions).")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name(
            _h: CK_SESSION_HANDLE,
            _p: *mut c_void,
            _pl: CK_ULONG,
            _a: *mut CK_BYTE,
            _al: CK_ULONG,
            _i: *mut CK_BYTE,
            _il: CK_ULONG,
            _o: *mut CK_BYTE,
            _ol: *mut CK_ULONG,
        ) -> CK_RV {
            CKR_FUNCTION_NOT_SUPPORTED
        }
    )*};
}
not_supported_crypt_message!(C_EncryptMessage, C_DecryptMessage);

/// `C_EncryptMessageBegin` / `C_DecryptMessageBegin`: not supported.
macro_rules! not_supported_crypt_begin {
    ($($name:ident),*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported (message-based functions).")]
        pub unsafe extern "C" fn $name(
            _h: CK_SESSION_HANDLE,
            _p: *mut c_void,
            _pl: CK_ULONG,
            _a: *mut CK_BYTE,
            _al: CK_ULONG,
        ) -> CK_RV {
            CKR_FUNCTION_NOT_SUPPORTED
        }
    )*};
}
not_supported_crypt_begin!(C_EncryptMessageBegin, C_DecryptMessageBegin);

/// `C_EncryptMessageNext` / `C_DecryptMessageNext`: not supported.
macro_rules! not_supported_crypt_next {
    ($($name:ident),*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported (message-based functions).")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "C" fn $name(
            _h: CK_SESSION_HANDLE,
            _p: *mut c_void,
            _pl: CK_ULONG,
            _i: *mut CK_BYTE,
            _il: CK_ULONG,
            _o: *mut CK_BYTE,
            _ol: *mut CK_ULONG,
            _f: CK_FLAGS,
        ) -> CK_RV {
            CKR_FUNCTION_NOT_SUPPORTED
        }
    )*};
}
not_supported_crypt_next!(C_EncryptMessageNext, C_DecryptMessageNext);

/// `C_SignMessage`: not supported.
pub unsafe extern "C" fn C_SignMessage(
    _h: CK_SESSION_HANDLE,
    _p: *mut c_void,
    _pl: CK_ULONG,
    _d: *mut CK_BYTE,
    _dl: CK_ULONG,
    _s: *mut CK_BYTE,
    _sl: *mut CK_ULONG,
) -> CK_RV {
    CKR_FUNCTION_NOT_SUPPORTED
}

/// `C_SignMessageNext`: not supported.
pub unsafe extern "C" fn C_SignMessageNext(
    _h: CK_SESSION_HANDLE,
    _p: *mut c_void,
    _pl: CK_ULONG,
    _d: *mut CK_BYTE,
    _dl: CK_ULONG,
    _s: *mut CK_BYTE,
    _sl: *mut CK_ULONG,
) -> CK_RV {
    CKR_FUNCTION_NOT_SUPPORTED
}

/// `C_VerifyMessage` / `C_VerifyMessageNext`: not supported.
macro_rules! not_supported_verify_message {
    ($($name:ident),*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported (message-based functions).")]
        pub unsafe extern "C" fn $name(
            _h: CK_SESSION_HANDLE,
            _p: *mut c_void,
            _pl: CK_ULONG,
            _d: *mut CK_BYTE,
            _dl: CK_ULONG,
            _s: *mut CK_BYTE,
            _sl: CK_ULONG,
        ) -> CK_RV {
            CKR_FUNCTION_NOT_SUPPORTED
        }
    )*};
}
not_supported_verify_message!(C_VerifyMessage, C_VerifyMessageNext);

/// `C_SignMessageBegin` / `C_VerifyMessageBegin`: not supported.
macro_rules! not_supported_sign_begin {
    ($($name:ident),*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported (message-based functions).")]
        pub unsafe extern "C" fn $name(_h: CK_SESSION_HANDLE, _p: *mut c_void, _pl: CK_ULONG) -> CK_RV {
            CKR_FUNCTION_NOT_SUPPORTED
        }
    )*};
}
not_supported_sign_begin!(C_SignMessageBegin, C_VerifyMessageBegin);

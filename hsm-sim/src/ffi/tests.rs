//! Tests of the C boundary itself: null pointers, lengths, the two-call convention and the
//! initialisation state, driven through the exported function list as a C caller would.
//!
//! All checks run in one test because the module state behind the C ABI is process-global.

use super::*;
use std::ptr::null_mut;

fn fl() -> &'static CK_FUNCTION_LIST {
    let mut p: CK_FUNCTION_LIST_PTR = null_mut();
    assert_eq!(unsafe { C_GetFunctionList(&mut p) }, CKR_OK);
    // SAFETY: the list is a static.
    unsafe { &*p }
}

macro_rules! call {
    ($f:ident $(, $a:expr)*) => {
        unsafe { (fl().$f.expect(stringify!($f)))($($a),*) }
    };
}

#[test]
fn c_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("hsm.toml");
    std::fs::write(
        &conf,
        format!("token_dir = {:?}\npin_kdf_iterations = 10\nmax_pin_tries = 3\n", dir.path().join("tokens")),
    )
    .unwrap();

    // --- before C_Initialize
    let mut n: CK_ULONG = 0;
    assert_eq!(call!(C_GetSlotList, 0, null_mut(), &mut n), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(unsafe { C_GetFunctionList(null_mut()) }, CKR_ARGUMENTS_BAD);

    // --- no configuration: a clear error, not a crash
    // SAFETY (test): no other thread of this test binary reads these variables.
    unsafe {
        std::env::remove_var("QUILL_HSM_CONF");
        std::env::remove_var("QUILL_HSM_DIR");
    }
    assert_eq!(call!(C_Initialize, null_mut()), CKR_GENERAL_ERROR);

    unsafe { std::env::set_var("QUILL_HSM_CONF", &conf) };
    // pReserved must be NULL; mutex functions without OS locking are refused.
    // A non-null pointer the module must refuse without reading it.
    let mut reserved = 0u8;
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: &mut reserved as *mut u8 as *mut _,
    };
    assert_eq!(call!(C_Initialize, &mut args as *mut _ as *mut _), CKR_ARGUMENTS_BAD);
    args.pReserved = null_mut();
    assert_eq!(call!(C_Initialize, &mut args as *mut _ as *mut _), CKR_OK);
    assert_eq!(call!(C_Initialize, null_mut()), CKR_CRYPTOKI_ALREADY_INITIALIZED);

    // --- slot list: length query, short buffer, null count
    assert_eq!(call!(C_GetSlotList, 0, null_mut(), null_mut()), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(C_GetSlotList, 0, null_mut(), &mut n), CKR_OK);
    assert_eq!(n, 2);
    let mut slots = [0 as CK_SLOT_ID; 2];
    let mut one: CK_ULONG = 1;
    assert_eq!(call!(C_GetSlotList, 0, slots.as_mut_ptr(), &mut one), CKR_BUFFER_TOO_SMALL);
    assert_eq!(one, 2, "BUFFER_TOO_SMALL reports the needed count");
    assert_eq!(call!(C_GetSlotList, 0, slots.as_mut_ptr(), &mut n), CKR_OK);
    assert_eq!(call!(C_GetTokenInfo, 99, null_mut()), CKR_SLOT_ID_INVALID);
    assert_eq!(call!(C_GetTokenInfo, 0, null_mut()), CKR_ARGUMENTS_BAD);

    // --- token and sessions
    let mut label = [b' '; 32];
    label[..4].copy_from_slice(b"ffi!");
    let mut h: CK_SESSION_HANDLE = 0;
    assert_eq!(call!(C_OpenSession, 0, CKF_SERIAL_SESSION, null_mut(), None, &mut h), CKR_TOKEN_NOT_RECOGNIZED);
    let so = b"12345678".to_vec();
    assert_eq!(call!(C_InitToken, 0, so.as_ptr() as *mut _, 8, null_mut()), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(C_InitToken, 0, so.as_ptr() as *mut _, 8, label.as_mut_ptr()), CKR_OK);
    assert_eq!(call!(C_OpenSession, 0, 0, null_mut(), None, &mut h), CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    assert_eq!(
        call!(C_OpenSession, 0, CKF_SERIAL_SESSION | CKF_RW_SESSION, null_mut(), None, null_mut()),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(call!(C_OpenSession, 0, CKF_SERIAL_SESSION | CKF_RW_SESSION, null_mut(), None, &mut h), CKR_OK);
    assert_eq!(call!(C_Login, h, CKU_SO, null_mut(), 8), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(C_Login, h, CKU_SO, so.as_ptr() as *mut _, 8), CKR_OK);
    let pin = b"1234".to_vec();
    assert_eq!(call!(C_InitPIN, h, pin.as_ptr() as *mut _, 4), CKR_OK);
    assert_eq!(call!(C_Logout, h), CKR_OK);
    assert_eq!(call!(C_Login, h, CKU_USER, pin.as_ptr() as *mut _, 4), CKR_OK);
    assert_eq!(call!(C_CloseSession, 12345), CKR_SESSION_HANDLE_INVALID);

    // --- templates: null with a count, then a DES2 key with a known value
    let mut key: CK_OBJECT_HANDLE = 0;
    assert_eq!(call!(C_CreateObject, h, null_mut(), 3, &mut key), CKR_ARGUMENTS_BAD);
    let class = CKO_SECRET_KEY.to_ne_bytes();
    let kt = CKK_DES2.to_ne_bytes();
    let value = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
    let tru = [1u8];
    let mut tmpl = [
        CK_ATTRIBUTE { type_: CKA_CLASS, pValue: class.as_ptr() as *mut _, ulValueLen: 8 },
        CK_ATTRIBUTE { type_: CKA_KEY_TYPE, pValue: kt.as_ptr() as *mut _, ulValueLen: 8 },
        CK_ATTRIBUTE { type_: CKA_VALUE, pValue: value.as_ptr() as *mut _, ulValueLen: 16 },
        CK_ATTRIBUTE { type_: CKA_SENSITIVE, pValue: tru.as_ptr() as *mut _, ulValueLen: 1 },
    ];
    assert_eq!(call!(C_CreateObject, h, tmpl.as_mut_ptr(), 4, null_mut()), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(C_CreateObject, h, tmpl.as_mut_ptr(), 4, &mut key), CKR_OK);

    // --- C_GetAttributeValue: length query, short buffer, sensitive, invalid type
    let mut kcv = [0u8; 3];
    let mut q = [
        CK_ATTRIBUTE { type_: CKA_CHECK_VALUE, pValue: null_mut(), ulValueLen: 0 },
        CK_ATTRIBUTE { type_: CKA_VALUE, pValue: null_mut(), ulValueLen: 0 },
        CK_ATTRIBUTE { type_: 0x7777_0000, pValue: null_mut(), ulValueLen: 0 },
    ];
    let rv = call!(C_GetAttributeValue, h, key, q.as_mut_ptr(), 3);
    assert!(rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID, "rv {rv:#x}");
    assert_eq!(q[0].ulValueLen, 3);
    assert_eq!(q[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    assert_eq!(q[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    let mut short = [CK_ATTRIBUTE { type_: CKA_CHECK_VALUE, pValue: kcv.as_mut_ptr() as *mut _, ulValueLen: 2 }];
    assert_eq!(call!(C_GetAttributeValue, h, key, short.as_mut_ptr(), 1), CKR_BUFFER_TOO_SMALL);
    short[0].ulValueLen = 3;
    assert_eq!(call!(C_GetAttributeValue, h, key, short.as_mut_ptr(), 1), CKR_OK);
    assert_eq!(hex::encode_upper(kcv), "08D7B4", "KCV of the EMV reference IMK");
    assert_eq!(call!(C_GetAttributeValue, h, 999_999, short.as_mut_ptr(), 1), CKR_OBJECT_HANDLE_INVALID);

    // --- the two-call convention on C_Encrypt, and operation state
    let mut mech = CK_MECHANISM { mechanism: CKM_DES3_ECB, pParameter: null_mut(), ulParameterLen: 0 };
    let data = [0u8; 16];
    let mut out = [0u8; 16];
    let mut outl: CK_ULONG = 0;
    assert_eq!(call!(C_Encrypt, h, data.as_ptr() as *mut _, 16, null_mut(), &mut outl), CKR_OPERATION_NOT_INITIALIZED);
    assert_eq!(call!(C_EncryptInit, h, null_mut(), key), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(C_EncryptInit, h, &mut mech, 424_242), CKR_KEY_HANDLE_INVALID);
    assert_eq!(call!(C_EncryptInit, h, &mut mech, key), CKR_OK, "a failed Init leaves nothing active");
    assert_eq!(call!(C_EncryptInit, h, &mut mech, key), CKR_OPERATION_ACTIVE);
    assert_eq!(call!(C_Encrypt, h, data.as_ptr() as *mut _, 16, null_mut(), null_mut()), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(C_EncryptInit, h, &mut mech, key), CKR_OK, "the failed C_Encrypt ended the operation");
    assert_eq!(call!(C_Encrypt, h, data.as_ptr() as *mut _, 16, null_mut(), &mut outl), CKR_OK);
    assert_eq!(outl, 16, "length query");
    outl = 8;
    assert_eq!(call!(C_Encrypt, h, data.as_ptr() as *mut _, 16, out.as_mut_ptr(), &mut outl), CKR_BUFFER_TOO_SMALL);
    assert_eq!(outl, 16);
    assert_eq!(call!(C_Encrypt, h, data.as_ptr() as *mut _, 16, out.as_mut_ptr(), &mut outl), CKR_OK);
    assert_eq!(&out[..3], &kcv, "first block of E(0) is the KCV");
    assert_eq!(
        call!(C_Encrypt, h, data.as_ptr() as *mut _, 16, out.as_mut_ptr(), &mut outl),
        CKR_OPERATION_NOT_INITIALIZED
    );
    // A failing operation ends the operation.
    assert_eq!(call!(C_EncryptInit, h, &mut mech, key), CKR_OK);
    outl = 16;
    assert_eq!(call!(C_Encrypt, h, data.as_ptr() as *mut _, 5, out.as_mut_ptr(), &mut outl), CKR_DATA_LEN_RANGE);
    assert_eq!(call!(C_EncryptInit, h, &mut mech, key), CKR_OK);
    assert_eq!(call!(C_EncryptFinal, h, out.as_mut_ptr(), &mut outl), CKR_OK);

    // --- interfaces
    let mut pif: CK_INTERFACE_PTR = null_mut();
    assert_eq!(unsafe { C_GetInterface(null_mut(), null_mut(), &mut pif, 0) }, CKR_OK);
    let iface = unsafe { &*pif };
    // The default interface is the 3.0 one; 2.40 is the list C_GetFunctionList gives.
    let v3 = unsafe { &*(iface.pFunctionList as *const CK_FUNCTION_LIST_3_0) };
    assert_eq!((v3.version.major, v3.version.minor), (3, 0));
    let mut v = CK_VERSION { major: 2, minor: 40 };
    assert_eq!(unsafe { C_GetInterface(null_mut(), &mut v, &mut pif, 0) }, CKR_OK);
    assert_eq!(unsafe { &*pif }.pFunctionList as *const CK_FUNCTION_LIST, fl() as *const _);
    let mut v = CK_VERSION { major: 3, minor: 1 };
    assert_eq!(unsafe { C_GetInterface(null_mut(), &mut v, &mut pif, 0) }, CKR_ARGUMENTS_BAD);
    let mut cnt: CK_ULONG = 0;
    assert_eq!(unsafe { C_GetInterfaceList(null_mut(), &mut cnt) }, CKR_OK);
    assert_eq!(cnt, 2);

    // --- unsupported functions say so
    assert_eq!(call!(C_GetOperationState, h, null_mut(), &mut outl), CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(call!(C_GetFunctionStatus, h), CKR_FUNCTION_NOT_PARALLEL);

    assert_eq!(call!(C_Finalize, &mut reserved as *mut u8 as *mut _), CKR_ARGUMENTS_BAD);
    assert_eq!(call!(C_Finalize, null_mut()), CKR_OK);
    assert_eq!(call!(C_Finalize, null_mut()), CKR_CRYPTOKI_NOT_INITIALIZED);
}

//! The PKCS#11 2.40 entry points, grouped by chapter of the specification
//! (PKCS#11 Base 2.40 §5.4 general … §5.15 random). Each one: copy inputs, call the module,
//! write outputs.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use super::*;
use crate::config::Config;
use crate::object::AttrRead;
use crate::ops::Kind;

// ---- §5.4 General-purpose functions -------------------------------------------------------

/// `C_Initialize` (§5.4.1).
pub unsafe extern "C" fn C_Initialize(pInitArgs: CK_VOID_PTR) -> CK_RV {
    guard("C_Initialize", || {
        if !pInitArgs.is_null() {
            // SAFETY: non-null CK_C_INITIALIZE_ARGS per the convention.
            let a = unsafe { std::ptr::read_unaligned(pInitArgs as *const CK_C_INITIALIZE_ARGS) };
            if !a.pReserved.is_null() {
                return Err(Error::args("pReserved must be NULL"));
            }
            let fns =
                [a.CreateMutex.is_some(), a.DestroyMutex.is_some(), a.LockMutex.is_some(), a.UnlockMutex.is_some()];
            let n = fns.iter().filter(|x| **x).count();
            if n != 0 && n != 4 {
                return Err(Error::args("mutex functions must be all given or all NULL"));
            }
            if n == 4 && a.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(Error::new(CKR_CANT_LOCK, "only OS locking is supported (set CKF_OS_LOCKING_OK)"));
            }
        }
        let mut g = MODULE.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.is_some() {
            return Err(Error::new(CKR_CRYPTOKI_ALREADY_INITIALIZED, "already initialised"));
        }
        let cfg = Config::from_env().inspect_err(|e| eprintln!("quill-hsm-sim: C_Initialize: {}", e.reason))?;
        let m = Module::new(cfg).inspect_err(|e| eprintln!("quill-hsm-sim: C_Initialize: {}", e.reason))?;
        *g = Some(Arc::new(m));
        Ok(())
    })
}

/// `C_Finalize` (§5.4.2).
pub unsafe extern "C" fn C_Finalize(pReserved: CK_VOID_PTR) -> CK_RV {
    guard("C_Finalize", || {
        if !pReserved.is_null() {
            return Err(Error::args("pReserved must be NULL"));
        }
        let m = MODULE
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| Error::new(CKR_CRYPTOKI_NOT_INITIALIZED, "not initialised"))?;
        m.finalize();
        Ok(())
    })
}

/// `C_GetInfo` (§5.4.3).
pub unsafe extern "C" fn C_GetInfo(pInfo: CK_INFO_PTR) -> CK_RV {
    guard("C_GetInfo", || {
        module()?;
        let info = CK_INFO {
            cryptokiVersion: CK_VERSION { major: 3, minor: 0 },
            manufacturerID: padded(crate::module::MANUFACTURER),
            flags: 0,
            libraryDescription: padded(crate::module::LIBRARY_DESCRIPTION),
            libraryVersion: CK_VERSION { major: 0, minor: 1 },
        };
        unsafe { put(pInfo, info) }
    })
}

/// `C_GetFunctionList` (§5.4.4).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(ppFunctionList: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    guard("C_GetFunctionList", || unsafe { put(ppFunctionList, info::function_list()) })
}

// ---- §5.5 Slot and token management --------------------------------------------------------

/// `C_GetSlotList` (§5.5.1).
pub unsafe extern "C" fn C_GetSlotList(
    _tokenPresent: CK_BBOOL,
    pSlotList: CK_SLOT_ID_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetSlotList", || {
        let slots = module()?.slot_list();
        if pulCount.is_null() {
            return Err(Error::args("null pulCount"));
        }
        if pSlotList.is_null() {
            unsafe { *pulCount = slots.len() as CK_ULONG };
            return Ok(());
        }
        let cap = unsafe { *pulCount } as usize;
        unsafe { *pulCount = slots.len() as CK_ULONG };
        if cap < slots.len() {
            return Err(Error::new(CKR_BUFFER_TOO_SMALL, "slot list buffer too small"));
        }
        // SAFETY: pSlotList has room for `cap` >= len ids.
        unsafe { std::ptr::copy_nonoverlapping(slots.as_ptr(), pSlotList, slots.len()) };
        Ok(())
    })
}

/// `C_GetSlotInfo` (§5.5.2).
pub unsafe extern "C" fn C_GetSlotInfo(slotID: CK_SLOT_ID, pInfo: CK_SLOT_INFO_PTR) -> CK_RV {
    guard("C_GetSlotInfo", || {
        let d = module()?.slot_description(slotID)?;
        let info = CK_SLOT_INFO {
            slotDescription: padded(&d),
            manufacturerID: padded(crate::module::MANUFACTURER),
            flags: CKF_TOKEN_PRESENT,
            hardwareVersion: CK_VERSION { major: 0, minor: 1 },
            firmwareVersion: CK_VERSION { major: 0, minor: 1 },
        };
        unsafe { put(pInfo, info) }
    })
}

/// `C_GetTokenInfo` (§5.5.3).
pub unsafe extern "C" fn C_GetTokenInfo(slotID: CK_SLOT_ID, pInfo: CK_TOKEN_INFO_PTR) -> CK_RV {
    guard("C_GetTokenInfo", || {
        let t = module()?.token_info(slotID)?;
        let info = CK_TOKEN_INFO {
            label: padded(&t.label),
            manufacturerID: padded(crate::module::MANUFACTURER),
            model: padded(crate::module::MODEL),
            serialNumber: padded(&t.serial),
            flags: t.flags,
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: t.sessions as CK_ULONG,
            ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
            ulRwSessionCount: t.rw_sessions as CK_ULONG,
            ulMaxPinLen: 255,
            ulMinPinLen: 4,
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: CK_VERSION { major: 0, minor: 1 },
            firmwareVersion: CK_VERSION { major: 0, minor: 1 },
            utcTime: [b' '; 16],
        };
        unsafe { put(pInfo, info) }
    })
}

/// `C_WaitForSlotEvent` (§5.5.4). Slots and tokens never come or go, so there is never an
/// event: with `CKF_DONT_BLOCK` the answer is `CKR_NO_EVENT`; without it the call blocks until
/// `C_Finalize`, and then returns `CKR_CRYPTOKI_NOT_INITIALIZED` as the standard says.
pub unsafe extern "C" fn C_WaitForSlotEvent(flags: CK_FLAGS, pSlot: CK_SLOT_ID_PTR, pReserved: CK_VOID_PTR) -> CK_RV {
    guard("C_WaitForSlotEvent", || {
        let m = module()?;
        if pSlot.is_null() || !pReserved.is_null() {
            return Err(Error::args("pSlot must be given and pReserved NULL"));
        }
        if flags & CKF_DONT_BLOCK != 0 {
            return Err(Error::new(CKR_NO_EVENT, "no slot event"));
        }
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            match module() {
                Ok(now) if Arc::ptr_eq(&now, &m) => {}
                _ => return Err(Error::new(CKR_CRYPTOKI_NOT_INITIALIZED, "C_Finalize was called")),
            }
        }
    })
}

/// `C_GetMechanismList` (§5.5.5).
pub unsafe extern "C" fn C_GetMechanismList(
    slotID: CK_SLOT_ID,
    pMechanismList: CK_MECHANISM_TYPE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetMechanismList", || {
        let l = module()?.mechanism_list(slotID)?;
        if pulCount.is_null() {
            return Err(Error::args("null pulCount"));
        }
        if pMechanismList.is_null() {
            unsafe { *pulCount = l.len() as CK_ULONG };
            return Ok(());
        }
        let cap = unsafe { *pulCount } as usize;
        unsafe { *pulCount = l.len() as CK_ULONG };
        if cap < l.len() {
            return Err(Error::new(CKR_BUFFER_TOO_SMALL, "mechanism list buffer too small"));
        }
        // SAFETY: room for cap >= len entries.
        unsafe { std::ptr::copy_nonoverlapping(l.as_ptr(), pMechanismList, l.len()) };
        Ok(())
    })
}

/// `C_GetMechanismInfo` (§5.5.6).
pub unsafe extern "C" fn C_GetMechanismInfo(
    slotID: CK_SLOT_ID,
    type_: CK_MECHANISM_TYPE,
    pInfo: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    guard("C_GetMechanismInfo", || {
        let i = module()?.mechanism_info(slotID, type_)?;
        unsafe { put(pInfo, CK_MECHANISM_INFO { ulMinKeySize: i.min, ulMaxKeySize: i.max, flags: i.flags }) }
    })
}

/// `C_InitToken` (§5.5.7).
pub unsafe extern "C" fn C_InitToken(
    slotID: CK_SLOT_ID,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
    pLabel: CK_UTF8CHAR_PTR,
) -> CK_RV {
    guard("C_InitToken", || {
        let m = module()?;
        let pin = unsafe { bytes(pPin, ulPinLen) }?;
        if pLabel.is_null() {
            return Err(Error::args("null label"));
        }
        let label = unsafe { bytes(pLabel, 32) }?;
        let label = String::from_utf8_lossy(label).trim_end().to_string();
        m.init_token(slotID, pin, &label)
    })
}

/// `C_InitPIN` (§5.5.8).
pub unsafe extern "C" fn C_InitPIN(hSession: CK_SESSION_HANDLE, pPin: CK_UTF8CHAR_PTR, ulPinLen: CK_ULONG) -> CK_RV {
    guard("C_InitPIN", || {
        let m = module()?;
        m.init_pin(hSession, unsafe { bytes(pPin, ulPinLen) }?)
    })
}

/// `C_SetPIN` (§5.5.9).
pub unsafe extern "C" fn C_SetPIN(
    hSession: CK_SESSION_HANDLE,
    pOldPin: CK_UTF8CHAR_PTR,
    ulOldLen: CK_ULONG,
    pNewPin: CK_UTF8CHAR_PTR,
    ulNewLen: CK_ULONG,
) -> CK_RV {
    guard("C_SetPIN", || {
        let m = module()?;
        m.set_pin(hSession, unsafe { bytes(pOldPin, ulOldLen) }?, unsafe { bytes(pNewPin, ulNewLen) }?)
    })
}

// ---- §5.6 Session management ---------------------------------------------------------------

/// `C_OpenSession` (§5.6.1).
pub unsafe extern "C" fn C_OpenSession(
    slotID: CK_SLOT_ID,
    flags: CK_FLAGS,
    _pApplication: CK_VOID_PTR,
    _Notify: CK_NOTIFY,
    phSession: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    guard("C_OpenSession", || {
        let m = module()?;
        if phSession.is_null() {
            return Err(Error::args("null phSession"));
        }
        let h = m.open_session(slotID, flags)?;
        unsafe { put(phSession, h) }
    })
}

/// `C_CloseSession` (§5.6.2).
pub unsafe extern "C" fn C_CloseSession(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_CloseSession", || module()?.close_session(hSession))
}

/// `C_CloseAllSessions` (§5.6.3).
pub unsafe extern "C" fn C_CloseAllSessions(slotID: CK_SLOT_ID) -> CK_RV {
    guard("C_CloseAllSessions", || module()?.close_all_sessions(slotID))
}

/// `C_GetSessionInfo` (§5.6.4).
pub unsafe extern "C" fn C_GetSessionInfo(hSession: CK_SESSION_HANDLE, pInfo: CK_SESSION_INFO_PTR) -> CK_RV {
    guard("C_GetSessionInfo", || {
        let (slotID, state, flags) = module()?.session_info(hSession)?;
        unsafe { put(pInfo, CK_SESSION_INFO { slotID, state, flags, ulDeviceError: 0 }) }
    })
}

/// `C_GetOperationState` (§5.6.5): not supported.
pub unsafe extern "C" fn C_GetOperationState(hSession: CK_SESSION_HANDLE, _p: CK_BYTE_PTR, _l: CK_ULONG_PTR) -> CK_RV {
    guard("C_GetOperationState", || {
        module()?.session_info(hSession)?;
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED, "operation state cannot be saved"))
    })
}

/// `C_SetOperationState` (§5.6.6): not supported.
pub unsafe extern "C" fn C_SetOperationState(
    hSession: CK_SESSION_HANDLE,
    _p: CK_BYTE_PTR,
    _l: CK_ULONG,
    _e: CK_OBJECT_HANDLE,
    _a: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_SetOperationState", || {
        module()?.session_info(hSession)?;
        Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED, "operation state cannot be restored"))
    })
}

/// `C_Login` (§5.6.7).
pub unsafe extern "C" fn C_Login(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    guard("C_Login", || {
        let m = module()?;
        m.login(hSession, userType, unsafe { bytes(pPin, ulPinLen) }?)
    })
}

/// `C_Logout` (§5.6.8).
pub unsafe extern "C" fn C_Logout(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_Logout", || module()?.logout(hSession))
}

// ---- §5.7 Object management ----------------------------------------------------------------

/// `C_CreateObject` (§5.7.1).
pub unsafe extern "C" fn C_CreateObject(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_CreateObject", || {
        let m = module()?;
        let t = unsafe { template(pTemplate, ulCount) }?;
        if phObject.is_null() {
            return Err(Error::args("null phObject"));
        }
        let h = m.create_object(hSession, &t)?;
        unsafe { put(phObject, h) }
    })
}

/// `C_CopyObject` (§5.7.2).
pub unsafe extern "C" fn C_CopyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phNewObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_CopyObject", || {
        let m = module()?;
        let t = unsafe { template(pTemplate, ulCount) }?;
        if phNewObject.is_null() {
            return Err(Error::args("null phNewObject"));
        }
        let h = m.copy_object(hSession, hObject, &t)?;
        unsafe { put(phNewObject, h) }
    })
}

/// `C_DestroyObject` (§5.7.3).
pub unsafe extern "C" fn C_DestroyObject(hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE) -> CK_RV {
    guard("C_DestroyObject", || module()?.destroy_object(hSession, hObject))
}

/// `C_GetObjectSize` (§5.7.4).
pub unsafe extern "C" fn C_GetObjectSize(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pulSize: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetObjectSize", || {
        let n = module()?.object_size(hSession, hObject)?;
        unsafe { put(pulSize, n as CK_ULONG) }
    })
}

/// `C_GetAttributeValue` (§5.7.5).
pub unsafe extern "C" fn C_GetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_GetAttributeValue", || {
        let m = module()?;
        if pTemplate.is_null() && ulCount != 0 {
            return Err(Error::args("null template"));
        }
        let n = ulCount as usize;
        let attrs: &mut [CK_ATTRIBUTE] = if n == 0 {
            &mut []
        } else {
            // SAFETY: non-null, `n` writable CK_ATTRIBUTEs per the convention.
            unsafe { std::slice::from_raw_parts_mut(pTemplate, n) }
        };
        let types: Vec<CK_ATTRIBUTE_TYPE> = attrs.iter().map(|a| a.type_).collect();
        let results = m.get_attributes(hSession, hObject, &types)?;
        let mut rv = CKR_OK;
        for (a, r) in attrs.iter_mut().zip(results) {
            match r {
                AttrRead::Value(v) => {
                    if a.pValue.is_null() {
                        a.ulValueLen = v.len() as CK_ULONG;
                    } else if (a.ulValueLen as usize) < v.len() {
                        a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                        rv = CKR_BUFFER_TOO_SMALL;
                    } else {
                        // SAFETY: pValue has ulValueLen >= v.len() writable bytes.
                        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len()) };
                        a.ulValueLen = v.len() as CK_ULONG;
                    }
                }
                AttrRead::Sensitive => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    rv = CKR_ATTRIBUTE_SENSITIVE;
                }
                AttrRead::Invalid => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    rv = CKR_ATTRIBUTE_TYPE_INVALID;
                }
            }
        }
        if rv == CKR_OK { Ok(()) } else { Err(Error::new(rv, "some attributes could not be returned")) }
    })
}

/// `C_SetAttributeValue` (§5.7.6).
pub unsafe extern "C" fn C_SetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_SetAttributeValue", || {
        let m = module()?;
        let t = unsafe { template(pTemplate, ulCount) }?;
        m.set_attributes(hSession, hObject, &t)
    })
}

/// `C_FindObjectsInit` (§5.7.7).
pub unsafe extern "C" fn C_FindObjectsInit(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guard("C_FindObjectsInit", || {
        let m = module()?;
        let t = unsafe { template(pTemplate, ulCount) }?;
        m.find_init(hSession, &t)
    })
}

/// `C_FindObjects` (§5.7.8).
pub unsafe extern "C" fn C_FindObjects(
    hSession: CK_SESSION_HANDLE,
    phObject: CK_OBJECT_HANDLE_PTR,
    ulMaxObjectCount: CK_ULONG,
    pulObjectCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_FindObjects", || {
        let m = module()?;
        if (phObject.is_null() && ulMaxObjectCount > 0) || pulObjectCount.is_null() {
            return Err(Error::args("null output pointer"));
        }
        let found = m.find_next(hSession, ulMaxObjectCount as usize)?;
        // SAFETY: room for ulMaxObjectCount >= found.len() handles.
        unsafe {
            std::ptr::copy_nonoverlapping(found.as_ptr(), phObject, found.len());
            *pulObjectCount = found.len() as CK_ULONG;
        }
        Ok(())
    })
}

/// `C_FindObjectsFinal` (§5.7.9).
pub unsafe extern "C" fn C_FindObjectsFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_FindObjectsFinal", || module()?.find_final(hSession))
}

// ---- §5.8–5.13 Encryption, decryption, digests, signatures ----------------------------------

fn init(
    name: &str,
    h: CK_SESSION_HANDLE,
    kind: Kind,
    pMechanism: CK_MECHANISM_PTR,
    key: Option<CK_OBJECT_HANDLE>,
) -> CK_RV {
    guard(name, || {
        let m = module()?;
        // SAFETY: mechanism pointer per the convention.
        let mech = unsafe { mechanism(pMechanism) }?;
        m.op_init(h, kind, &mech, key)
    })
}

/// Does a failed one-shot or final call end the active operation? Every error does (PKCS#11
/// §5.8–§5.12: "a call … which results in an error other than CKR_BUFFER_TOO_SMALL terminates the
/// current operation"), except those that say the call never reached an operation: no module, no
/// session, no operation of this kind, or a one-shot call refused because a multi-part operation
/// is active (that operation goes on).
fn ends_operation(rv: CK_RV) -> bool {
    !matches!(
        rv,
        CKR_BUFFER_TOO_SMALL
            | CKR_OPERATION_ACTIVE
            | CKR_OPERATION_NOT_INITIALIZED
            | CKR_SESSION_HANDLE_INVALID
            | CKR_SESSION_CLOSED
            | CKR_CRYPTOKI_NOT_INITIALIZED
    )
}

/// [`guard`] for a one-shot or final call of `kind`: a failure ends the operation.
fn guard_op(name: &str, h: CK_SESSION_HANDLE, kind: Kind, f: impl FnOnce(&Module) -> Result<()>) -> CK_RV {
    guard(name, || {
        let m = module()?;
        let r = f(&m);
        if let Err(e) = &r
            && ends_operation(e.rv)
        {
            m.op_abort(h, kind);
        }
        r
    })
}

fn single(
    name: &str,
    h: CK_SESSION_HANDLE,
    kind: Kind,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    out: CK_BYTE_PTR,
    outl: CK_ULONG_PTR,
) -> CK_RV {
    guard_op(name, h, kind, |m| {
        // SAFETY: buffers per the convention.
        let data = unsafe { bytes(p, l) }?;
        let cap = unsafe { out_cap(out, outl) }?;
        let o = m.op_single(h, kind, data, cap)?;
        unsafe { write_out(o, out, outl) }
    })
}

fn update(
    name: &str,
    h: CK_SESSION_HANDLE,
    kind: Kind,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    out: CK_BYTE_PTR,
    outl: CK_ULONG_PTR,
) -> CK_RV {
    guard(name, || {
        let m = module()?;
        // SAFETY: buffers per the convention.
        if outl.is_null() {
            if matches!(kind, Kind::Encrypt | Kind::Decrypt) {
                // Checked before anything else: the operation is left exactly as it was.
                return Err(Error::args("null output length pointer"));
            }
            let data = unsafe { bytes(p, l) }?;
            // Digest/sign/verify updates produce no output.
            return m.op_update(h, kind, data, Some(0)).map(|_| ());
        }
        let data = unsafe { bytes(p, l) }?;
        let cap = unsafe { out_cap(out, outl) }?;
        let o = m.op_update(h, kind, data, cap)?;
        unsafe { write_out(o, out, outl) }
    })
}

fn final_(name: &str, h: CK_SESSION_HANDLE, kind: Kind, out: CK_BYTE_PTR, outl: CK_ULONG_PTR) -> CK_RV {
    guard_op(name, h, kind, |m| {
        // SAFETY: buffers per the convention.
        let cap = unsafe { out_cap(out, outl) }?;
        let o = m.op_final(h, kind, cap)?;
        unsafe { write_out(o, out, outl) }
    })
}

/// `C_EncryptInit` (§5.8.1).
pub unsafe extern "C" fn C_EncryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    init("C_EncryptInit", hSession, Kind::Encrypt, pMechanism, Some(hKey))
}
/// `C_Encrypt` (§5.8.2).
pub unsafe extern "C" fn C_Encrypt(
    h: CK_SESSION_HANDLE,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    single("C_Encrypt", h, Kind::Encrypt, p, l, o, ol)
}
/// `C_EncryptUpdate` (§5.8.3).
pub unsafe extern "C" fn C_EncryptUpdate(
    h: CK_SESSION_HANDLE,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    update("C_EncryptUpdate", h, Kind::Encrypt, p, l, o, ol)
}
/// `C_EncryptFinal` (§5.8.4).
pub unsafe extern "C" fn C_EncryptFinal(h: CK_SESSION_HANDLE, o: CK_BYTE_PTR, ol: CK_ULONG_PTR) -> CK_RV {
    final_("C_EncryptFinal", h, Kind::Encrypt, o, ol)
}
/// `C_DecryptInit` (§5.9.1).
pub unsafe extern "C" fn C_DecryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    init("C_DecryptInit", hSession, Kind::Decrypt, pMechanism, Some(hKey))
}
/// `C_Decrypt` (§5.9.2).
pub unsafe extern "C" fn C_Decrypt(
    h: CK_SESSION_HANDLE,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    single("C_Decrypt", h, Kind::Decrypt, p, l, o, ol)
}
/// `C_DecryptUpdate` (§5.9.3).
pub unsafe extern "C" fn C_DecryptUpdate(
    h: CK_SESSION_HANDLE,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    update("C_DecryptUpdate", h, Kind::Decrypt, p, l, o, ol)
}
/// `C_DecryptFinal` (§5.9.4).
pub unsafe extern "C" fn C_DecryptFinal(h: CK_SESSION_HANDLE, o: CK_BYTE_PTR, ol: CK_ULONG_PTR) -> CK_RV {
    final_("C_DecryptFinal", h, Kind::Decrypt, o, ol)
}
/// `C_DigestInit` (§5.10.1).
pub unsafe extern "C" fn C_DigestInit(hSession: CK_SESSION_HANDLE, pMechanism: CK_MECHANISM_PTR) -> CK_RV {
    init("C_DigestInit", hSession, Kind::Digest, pMechanism, None)
}
/// `C_Digest` (§5.10.2).
pub unsafe extern "C" fn C_Digest(
    h: CK_SESSION_HANDLE,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    single("C_Digest", h, Kind::Digest, p, l, o, ol)
}
/// `C_DigestUpdate` (§5.10.3).
pub unsafe extern "C" fn C_DigestUpdate(h: CK_SESSION_HANDLE, p: CK_BYTE_PTR, l: CK_ULONG) -> CK_RV {
    update("C_DigestUpdate", h, Kind::Digest, p, l, std::ptr::null_mut(), std::ptr::null_mut())
}
/// `C_DigestKey` (§5.10.4).
pub unsafe extern "C" fn C_DigestKey(h: CK_SESSION_HANDLE, hKey: CK_OBJECT_HANDLE) -> CK_RV {
    guard("C_DigestKey", || module()?.digest_key(h, hKey))
}
/// `C_DigestFinal` (§5.10.5).
pub unsafe extern "C" fn C_DigestFinal(h: CK_SESSION_HANDLE, o: CK_BYTE_PTR, ol: CK_ULONG_PTR) -> CK_RV {
    final_("C_DigestFinal", h, Kind::Digest, o, ol)
}
/// `C_SignInit` (§5.11.1).
pub unsafe extern "C" fn C_SignInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    init("C_SignInit", hSession, Kind::Sign, pMechanism, Some(hKey))
}
/// `C_Sign` (§5.11.2).
pub unsafe extern "C" fn C_Sign(
    h: CK_SESSION_HANDLE,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    single("C_Sign", h, Kind::Sign, p, l, o, ol)
}
/// `C_SignUpdate` (§5.11.3).
pub unsafe extern "C" fn C_SignUpdate(h: CK_SESSION_HANDLE, p: CK_BYTE_PTR, l: CK_ULONG) -> CK_RV {
    update("C_SignUpdate", h, Kind::Sign, p, l, std::ptr::null_mut(), std::ptr::null_mut())
}
/// `C_SignFinal` (§5.11.4).
pub unsafe extern "C" fn C_SignFinal(h: CK_SESSION_HANDLE, o: CK_BYTE_PTR, ol: CK_ULONG_PTR) -> CK_RV {
    final_("C_SignFinal", h, Kind::Sign, o, ol)
}
/// `C_SignRecoverInit` (§5.11.5).
pub unsafe extern "C" fn C_SignRecoverInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    init("C_SignRecoverInit", hSession, Kind::SignRecover, pMechanism, Some(hKey))
}
/// `C_SignRecover` (§5.11.6).
pub unsafe extern "C" fn C_SignRecover(
    h: CK_SESSION_HANDLE,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    single("C_SignRecover", h, Kind::SignRecover, p, l, o, ol)
}
/// `C_VerifyInit` (§5.12.1).
pub unsafe extern "C" fn C_VerifyInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    init("C_VerifyInit", hSession, Kind::Verify, pMechanism, Some(hKey))
}
/// `C_Verify` (§5.12.2).
pub unsafe extern "C" fn C_Verify(
    h: CK_SESSION_HANDLE,
    p: CK_BYTE_PTR,
    l: CK_ULONG,
    s: CK_BYTE_PTR,
    sl: CK_ULONG,
) -> CK_RV {
    guard_op("C_Verify", h, Kind::Verify, |m| {
        // SAFETY: buffers per the convention.
        let data = unsafe { bytes(p, l) }?;
        let sig = unsafe { bytes(s, sl) }?;
        m.verify(h, Some(data), sig)
    })
}
/// `C_VerifyUpdate` (§5.12.3).
pub unsafe extern "C" fn C_VerifyUpdate(h: CK_SESSION_HANDLE, p: CK_BYTE_PTR, l: CK_ULONG) -> CK_RV {
    update("C_VerifyUpdate", h, Kind::Verify, p, l, std::ptr::null_mut(), std::ptr::null_mut())
}
/// `C_VerifyFinal` (§5.12.4).
pub unsafe extern "C" fn C_VerifyFinal(h: CK_SESSION_HANDLE, s: CK_BYTE_PTR, sl: CK_ULONG) -> CK_RV {
    guard_op("C_VerifyFinal", h, Kind::Verify, |m| {
        // SAFETY: buffer per the convention.
        let sig = unsafe { bytes(s, sl) }?;
        m.verify(h, None, sig)
    })
}
/// `C_VerifyRecoverInit` (§5.12.5).
pub unsafe extern "C" fn C_VerifyRecoverInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    init("C_VerifyRecoverInit", hSession, Kind::VerifyRecover, pMechanism, Some(hKey))
}
/// `C_VerifyRecover` (§5.12.6).
pub unsafe extern "C" fn C_VerifyRecover(
    h: CK_SESSION_HANDLE,
    s: CK_BYTE_PTR,
    sl: CK_ULONG,
    o: CK_BYTE_PTR,
    ol: CK_ULONG_PTR,
) -> CK_RV {
    single("C_VerifyRecover", h, Kind::VerifyRecover, s, sl, o, ol)
}

/// Dual-function updates (§5.13): not supported.
macro_rules! not_supported_dual {
    ($($name:ident),*) => {$(
        #[doc = concat!("`", stringify!($name), "` (§5.13): not supported.")]
        pub unsafe extern "C" fn $name(h: CK_SESSION_HANDLE, _p: CK_BYTE_PTR, _l: CK_ULONG, _o: CK_BYTE_PTR, _ol: CK_ULONG_PTR) -> CK_RV {
            guard(stringify!($name), || {
                module()?.session_info(h)?;
                Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED, "dual-function operations are not supported"))
            })
        }
    )*};
}
not_supported_dual!(C_DigestEncryptUpdate, C_DecryptDigestUpdate, C_SignEncryptUpdate, C_DecryptVerifyUpdate);

// ---- §5.14 Key management ---------------------------------------------------------------------

/// `C_GenerateKey` (§5.14.1).
pub unsafe extern "C" fn C_GenerateKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_GenerateKey", || {
        let m = module()?;
        let mech = unsafe { mechanism(pMechanism) }?;
        let t = unsafe { template(pTemplate, ulCount) }?;
        if phKey.is_null() {
            return Err(Error::args("null phKey"));
        }
        let k = m.generate_key(hSession, &mech, &t)?;
        unsafe { put(phKey, k) }
    })
}

/// `C_GenerateKeyPair` (§5.14.2).
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn C_GenerateKeyPair(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    pPublicKeyTemplate: CK_ATTRIBUTE_PTR,
    ulPublicKeyAttributeCount: CK_ULONG,
    pPrivateKeyTemplate: CK_ATTRIBUTE_PTR,
    ulPrivateKeyAttributeCount: CK_ULONG,
    phPublicKey: CK_OBJECT_HANDLE_PTR,
    phPrivateKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_GenerateKeyPair", || {
        let m = module()?;
        let mech = unsafe { mechanism(pMechanism) }?;
        let pt = unsafe { template(pPublicKeyTemplate, ulPublicKeyAttributeCount) }?;
        let st = unsafe { template(pPrivateKeyTemplate, ulPrivateKeyAttributeCount) }?;
        if phPublicKey.is_null() || phPrivateKey.is_null() {
            return Err(Error::args("null key handle pointer"));
        }
        let (a, b) = m.generate_key_pair(hSession, &mech, &pt, &st)?;
        unsafe {
            put(phPublicKey, a)?;
            put(phPrivateKey, b)
        }
    })
}

/// `C_WrapKey` (§5.14.3).
pub unsafe extern "C" fn C_WrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hWrappingKey: CK_OBJECT_HANDLE,
    hKey: CK_OBJECT_HANDLE,
    pWrappedKey: CK_BYTE_PTR,
    pulWrappedKeyLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_WrapKey", || {
        let m = module()?;
        let mech = unsafe { mechanism(pMechanism) }?;
        let cap = unsafe { out_cap(pWrappedKey, pulWrappedKeyLen) }?;
        let o = m.wrap_key(hSession, &mech, hWrappingKey, hKey, cap)?;
        unsafe { write_out(o, pWrappedKey, pulWrappedKeyLen) }
    })
}

/// `C_UnwrapKey` (§5.14.4).
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn C_UnwrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hUnwrappingKey: CK_OBJECT_HANDLE,
    pWrappedKey: CK_BYTE_PTR,
    ulWrappedKeyLen: CK_ULONG,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_UnwrapKey", || {
        let m = module()?;
        let mech = unsafe { mechanism(pMechanism) }?;
        let w = unsafe { bytes(pWrappedKey, ulWrappedKeyLen) }?;
        let t = unsafe { template(pTemplate, ulAttributeCount) }?;
        if phKey.is_null() {
            return Err(Error::args("null phKey"));
        }
        let k = m.unwrap_key(hSession, &mech, hUnwrappingKey, w, &t)?;
        unsafe { put(phKey, k) }
    })
}

/// `C_DeriveKey` (§5.14.5).
pub unsafe extern "C" fn C_DeriveKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hBaseKey: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guard("C_DeriveKey", || {
        let m = module()?;
        let mech = unsafe { mechanism(pMechanism) }?;
        let t = unsafe { template(pTemplate, ulAttributeCount) }?;
        if phKey.is_null() {
            return Err(Error::args("null phKey"));
        }
        // SP 800-108 additional keys: their handles go to the phKey of each CK_DERIVED_KEY.
        // SAFETY: pMechanism was read above; the pointers were checked non-null there.
        let extra = unsafe { params::additional_outputs(pMechanism) };
        match m.derive_keys(hSession, &mech, hBaseKey, &t) {
            Ok(keys) => {
                for (p, k) in extra.iter().zip(keys.iter().skip(1)) {
                    unsafe { put(*p, *k) }?;
                }
                unsafe { put(phKey, keys.first().copied().unwrap_or(CK_INVALID_HANDLE)) }
            }
            Err(e) => {
                for p in &extra {
                    unsafe { put(*p, CK_INVALID_HANDLE) }?;
                }
                Err(e)
            }
        }
    })
}

// ---- §5.15 Random numbers, §5.16 parallel functions -------------------------------------------

/// `C_SeedRandom` (§5.15.1).
pub unsafe extern "C" fn C_SeedRandom(hSession: CK_SESSION_HANDLE, pSeed: CK_BYTE_PTR, ulSeedLen: CK_ULONG) -> CK_RV {
    guard("C_SeedRandom", || {
        let m = module()?;
        unsafe { bytes(pSeed, ulSeedLen) }?;
        m.seed_random(hSession)
    })
}

/// `C_GenerateRandom` (§5.15.2).
pub unsafe extern "C" fn C_GenerateRandom(
    hSession: CK_SESSION_HANDLE,
    RandomData: CK_BYTE_PTR,
    ulRandomLen: CK_ULONG,
) -> CK_RV {
    guard("C_GenerateRandom", || {
        let m = module()?;
        if RandomData.is_null() && ulRandomLen > 0 {
            return Err(Error::args("null output"));
        }
        let r = m.generate_random(hSession, ulRandomLen as usize)?;
        // SAFETY: RandomData has ulRandomLen writable bytes.
        unsafe { std::ptr::copy_nonoverlapping(r.as_ptr(), RandomData, r.len()) };
        Ok(())
    })
}

/// `C_GetFunctionStatus` (§5.16.1): legacy, always `CKR_FUNCTION_NOT_PARALLEL`.
pub unsafe extern "C" fn C_GetFunctionStatus(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_GetFunctionStatus", || {
        module()?.session_info(hSession)?;
        Err(Error::new(CKR_FUNCTION_NOT_PARALLEL, "legacy function"))
    })
}

/// `C_CancelFunction` (§5.16.2): legacy, always `CKR_FUNCTION_NOT_PARALLEL`.
pub unsafe extern "C" fn C_CancelFunction(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_CancelFunction", || {
        module()?.session_info(hSession)?;
        Err(Error::new(CKR_FUNCTION_NOT_PARALLEL, "legacy function"))
    })
}

// ---- PKCS#11 3.0 interface discovery (§5.2 of 3.0) -------------------------------------------

/// `C_GetInterfaceList` (3.0 §5.4.5): "PKCS 11" 3.0 (the default) and "PKCS 11" 2.40.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterfaceList(pInterfacesList: CK_INTERFACE_PTR, pulCount: CK_ULONG_PTR) -> CK_RV {
    guard("C_GetInterfaceList", || {
        if pulCount.is_null() {
            return Err(Error::args("null pulCount"));
        }
        let list = info::interfaces();
        if pInterfacesList.is_null() {
            unsafe { *pulCount = list.len() as CK_ULONG };
            return Ok(());
        }
        let cap = unsafe { *pulCount };
        unsafe { *pulCount = list.len() as CK_ULONG };
        if (cap as usize) < list.len() {
            return Err(Error::new(CKR_BUFFER_TOO_SMALL, "two interfaces"));
        }
        // SAFETY: room for cap >= 2 interfaces.
        unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), pInterfacesList, list.len()) };
        Ok(())
    })
}

/// `C_GetInterface` (3.0 §5.4.6): name NULL or "PKCS 11"; version NULL (the default, 3.0), 3.0
/// or 2.40; no flags (the module offers none). Anything else matches no interface:
/// `CKR_ARGUMENTS_BAD`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterface(
    pInterfaceName: CK_UTF8CHAR_PTR,
    pVersion: CK_VERSION_PTR,
    ppInterface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_GetInterface", || {
        if ppInterface.is_null() {
            return Err(Error::args("null ppInterface"));
        }
        if !pInterfaceName.is_null() {
            // SAFETY: a NUL-terminated string per the convention.
            let name = unsafe { std::ffi::CStr::from_ptr(pInterfaceName as *const std::ffi::c_char) };
            if name.to_bytes() != b"PKCS 11" {
                return Err(Error::args("unknown interface name"));
            }
        }
        if flags != 0 {
            return Err(Error::args("no interface offers these flags"));
        }
        let i = if pVersion.is_null() {
            0
        } else {
            // SAFETY: non-null CK_VERSION.
            let v = unsafe { std::ptr::read_unaligned(pVersion) };
            match (v.major, v.minor) {
                (3, 0) => 0,
                (2, 40) => 1,
                _ => return Err(Error::args("versions 3.0 and 2.40 are offered")),
            }
        };
        unsafe { *ppInterface = info::interface_ptr(i) };
        Ok(())
    })
}

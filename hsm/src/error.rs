//! [`HsmError`]: every failure names the operation, the module and slot, and (when a module
//! refused) the PKCS#11 function and return code. Never a key byte, never a PIN.

use crate::types::Kcv;
use cryptoki::error::{Error as CkError, Rv, RvError};
use cryptoki_sys::CK_RV;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Where an error happened: module path, slot id and token label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRef {
    /// Module path, as configured.
    pub module: String,
    /// Slot id.
    pub slot: u64,
    /// Token label (empty before the token was found).
    pub token: String,
}

impl fmt::Display for SlotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.token.is_empty() {
            write!(f, "{} slot {}", self.module, self.slot)
        } else {
            write!(f, "{} slot {} (token {})", self.module, self.slot, self.token)
        }
    }
}

/// Errors of the HSM adapter, grouped by whose fault they are:
///
/// - the device or the module ([`HsmError::Module`] with a device-type return code,
///   [`HsmError::Unavailable`], [`HsmError::Timeout`], [`HsmError::NoHealthySlot`]): take the slot
///   out and try another ([`HsmError::is_device_error`]);
/// - the key material offered ([`HsmError::ComponentKcv`], [`HsmError::CannotOpen`],
///   [`HsmError::BadWrappedKey`], [`HsmError::KcvMismatch`], [`HsmError::WrongSmk`],
///   [`HsmError::AuthenticationFailed`], [`HsmError::Tr31`], [`HsmError::KeyBlock`], and [`HsmError::Module`] with any
///   other return code): retrying elsewhere gives the same answer;
/// - policy and state ([`HsmError::HostPathRefused`], [`HsmError::SmkConflict`],
///   [`HsmError::NoSmk`], [`HsmError::Unsupported`]);
/// - the caller ([`HsmError::Misuse`], [`HsmError::Config`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HsmError {
    /// The module returned an error code.
    #[error("{operation}: {function} returned {} on {at}", rv_name(*.rv))]
    Module {
        /// Adapter operation (`form_smk`, `seal`, …).
        operation: &'static str,
        /// PKCS#11 function (`C_UnwrapKey`).
        function: String,
        /// Return code.
        rv: RvError,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// The module could not be reached at all (library not loadable, function missing, slot gone).
    #[error("{operation}: {reason} ({at})")]
    Unavailable {
        /// Adapter operation.
        operation: &'static str,
        /// What went wrong.
        reason: String,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// The slot did not answer in time (pool only); the call may still complete in the module.
    #[error("{operation}: no answer within {} ms from {at}", after.as_millis())]
    Timeout {
        /// Adapter operation.
        operation: &'static str,
        /// The timeout.
        after: Duration,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// No slot of the pool can do this now.
    #[error("{operation}: no healthy HSM slot can do it{}", last.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    NoHealthySlot {
        /// Adapter operation.
        operation: &'static str,
        /// The last slot-level error seen while trying.
        last: Option<Box<HsmError>>,
    },
    /// The operation needs key material in host memory and the module's configuration does not
    /// allow it.
    #[error(
        "{operation} needs key material in host memory on {module}, which lacks {missing}; set allow_host_key_material = true for this module to permit it (every use is audited)"
    )]
    HostPathRefused {
        /// Adapter operation.
        operation: &'static str,
        /// Module path.
        module: String,
        /// The function the module lacks.
        missing: &'static str,
    },
    /// A key component's KCV is not the one announced.
    #[error("{operation}: component {index} has KCV {actual}, expected {expected} ({at})")]
    ComponentKcv {
        /// Adapter operation.
        operation: &'static str,
        /// Index of the component (0-based, in submission order).
        index: usize,
        /// The announced KCV.
        expected: Kcv,
        /// The KCV computed in the HSM.
        actual: Kcv,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// Something sealed to this node's transport key (a key component, an SMK) cannot be opened
    /// with it: sealed to another key, or corrupt.
    #[error("{operation}: {what} cannot be opened with this node's transport key: {function} returned {} on {at}", rv_name(*.rv))]
    CannotOpen {
        /// Adapter operation.
        operation: &'static str,
        /// What (`component 2`, `the sealed SMK`).
        what: String,
        /// PKCS#11 function.
        function: String,
        /// Return code.
        rv: RvError,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// A wrapped key does not unwrap under this HSM's SMK although its SMK KCV matches: the blob
    /// is corrupt or forged.
    #[error("{operation}: the wrapped key does not unwrap under this HSM's SMK (corrupt or forged blob): {function} returned {} on {at}", rv_name(*.rv))]
    BadWrappedKey {
        /// Adapter operation.
        operation: &'static str,
        /// PKCS#11 function.
        function: String,
        /// Return code.
        rv: RvError,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// A key's KCV is not the expected one.
    #[error("{operation}: the key has KCV {actual}, expected {expected} ({at})")]
    KcvMismatch {
        /// Adapter operation.
        operation: &'static str,
        /// Expected KCV.
        expected: Kcv,
        /// KCV computed in the HSM.
        actual: Kcv,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// The token already holds a different storage master key; it is never replaced.
    #[error("{operation}: {at} already holds SMK {present}; refusing to replace it with SMK {offered}")]
    SmkConflict {
        /// Adapter operation.
        operation: &'static str,
        /// KCV of the SMK on the token.
        present: Kcv,
        /// KCV of the SMK offered.
        offered: Kcv,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// The token holds no storage master key yet.
    #[error("{operation}: {at} holds no storage master key (form it or install it first)")]
    NoSmk {
        /// Adapter operation.
        operation: &'static str,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// A wrapped key belongs to another storage master key.
    #[error("{operation}: key is wrapped under SMK {key_smk}, but {at} holds SMK {hsm_smk}")]
    WrongSmk {
        /// Adapter operation.
        operation: &'static str,
        /// SMK KCV recorded in the wrapped key.
        key_smk: Kcv,
        /// SMK KCV of this token.
        hsm_smk: Kcv,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// AEAD open failed: wrong key, wrong AAD, or the ciphertext was altered.
    #[error("{operation}: authentication failed (wrong key or AAD, or altered data) on {at}")]
    AuthenticationFailed {
        /// Adapter operation.
        operation: &'static str,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// A TR-31 key block is malformed or fails its MAC, or a TR-31 request cannot be met: a KBPK
    /// of the wrong family for the block's version, a key algorithm or exportability Quill cannot
    /// hold, a usage that does not fit the key. `reason` is the TR-31 library's message (positions
    /// are 0-based character offsets into the block); it never contains key bytes.
    #[error("{operation}: {reason} ({at})")]
    Tr31 {
        /// Adapter operation.
        operation: &'static str,
        /// What is wrong.
        reason: String,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// A key block at rest is refused before or while it is opened: a header that is not an
    /// at-rest header, a usage the operation does not allow, a block that does not open under
    /// this HSM's SMK (altered or forged), a use its mode of use forbids. Never retried elsewhere.
    #[error("{operation}: {reason} ({at})")]
    KeyBlock {
        /// Adapter operation.
        operation: &'static str,
        /// What is wrong.
        reason: String,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// The module cannot do this at all.
    #[error("{operation}: {at} does not support {what}")]
    Unsupported {
        /// Adapter operation.
        operation: &'static str,
        /// What is missing.
        what: String,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// The token's state is not what the adapter expects (e.g. two transport key pairs).
    #[error("{operation}: {reason} on {at}")]
    TokenState {
        /// Adapter operation.
        operation: &'static str,
        /// What is wrong.
        reason: String,
        /// Where.
        at: Arc<SlotRef>,
    },
    /// The caller passed something that can never work (wrong algorithm, bad lengths).
    #[error("{operation}: {reason}")]
    Misuse {
        /// Adapter operation.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// Configuration error (bad slot selection, PIN source, unknown module path).
    #[error("HSM configuration: {reason}")]
    Config {
        /// Why.
        reason: String,
    },
}

impl HsmError {
    /// Whether the error is about the device rather than the request: the pool takes the slot out
    /// and retries the operation on another slot.
    pub fn is_device_error(&self) -> bool {
        match self {
            HsmError::Module { rv, .. } => is_device_rv(*rv),
            HsmError::Unavailable { .. } | HsmError::Timeout { .. } | HsmError::NoHealthySlot { .. } => true,
            _ => false,
        }
    }

    /// The PKCS#11 return code, when the module returned one.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            HsmError::Module { rv, .. } | HsmError::CannotOpen { rv, .. } | HsmError::BadWrappedKey { rv, .. } => {
                Some(*rv)
            }
            _ => None,
        }
    }

    /// The adapter operation that failed (`"config"` for configuration errors).
    pub fn operation(&self) -> &'static str {
        match self {
            HsmError::Module { operation, .. }
            | HsmError::Unavailable { operation, .. }
            | HsmError::Timeout { operation, .. }
            | HsmError::NoHealthySlot { operation, .. }
            | HsmError::HostPathRefused { operation, .. }
            | HsmError::ComponentKcv { operation, .. }
            | HsmError::CannotOpen { operation, .. }
            | HsmError::BadWrappedKey { operation, .. }
            | HsmError::KcvMismatch { operation, .. }
            | HsmError::SmkConflict { operation, .. }
            | HsmError::NoSmk { operation, .. }
            | HsmError::WrongSmk { operation, .. }
            | HsmError::AuthenticationFailed { operation, .. }
            | HsmError::Tr31 { operation, .. }
            | HsmError::KeyBlock { operation, .. }
            | HsmError::Unsupported { operation, .. }
            | HsmError::TokenState { operation, .. }
            | HsmError::Misuse { operation, .. } => operation,
            HsmError::Config { .. } => "config",
        }
    }
}

/// Return codes that mean "this device, session or module is in trouble", not "this request is
/// wrong": the pool takes the slot out on these.
pub fn is_device_rv(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::DeviceMemory
            | RvError::HostMemory
            | RvError::GeneralError
            | RvError::FunctionFailed
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::SessionCount
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
            | RvError::SlotIdInvalid
    )
}

/// Return codes after which a session (and the handles it cached) must not be reused.
pub(crate) fn is_session_rv(rv: RvError) -> bool {
    is_device_rv(rv) || matches!(rv, RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid)
}

/// `RvError::PinIncorrect` -> `CKR_PIN_INCORRECT`.
pub fn rv_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    if camel.contains('(') {
        // VendorDefined(x) / UnknownErrorCode(x)
        return format!("CKR_{camel}");
    }
    screaming(&camel)
}

/// Name of a raw return value: `CKR_OK`, `CKR_PIN_INCORRECT`, or `CKR 0x…` for a vendor or
/// unknown code.
pub fn ckr_name(rv: CK_RV) -> String {
    match rv_error(rv) {
        None => "CKR_OK".to_owned(),
        Some(e) if format!("{e:?}").contains('(') => format!("CKR 0x{rv:08X}"),
        Some(e) => rv_name(e),
    }
}

/// One-line text of a `cryptoki` error, `C_Login returned CKR_PIN_INCORRECT`, rather than the
/// crate's paragraph-long descriptions.
pub fn ck_text(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => {
            let camel = format!("{rv:?}");
            let name = if camel.contains('(') { camel } else { screaming(&camel) };
            format!("C_{f:?} returned {name}")
        }
        other => other.to_string(),
    }
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`.
fn screaming(camel: &str) -> String {
    let mut s = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
    }
    s
}

/// A raw return code as an [`RvError`] (`None` for `CKR_OK`).
pub(crate) fn rv_error(rv: CK_RV) -> Option<RvError> {
    match Rv::from(rv) {
        Rv::Ok => None,
        Rv::Error(e) => Some(e),
    }
}

/// Turns `cryptoki` errors into [`HsmError`]s for one operation on one slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op<'a> {
    pub name: &'static str,
    pub at: &'a Arc<SlotRef>,
}

impl Op<'_> {
    pub fn err(&self, e: CkError) -> HsmError {
        match e {
            CkError::Pkcs11(rv, f) => {
                HsmError::Module { operation: self.name, function: format!("C_{f:?}"), rv, at: self.at.clone() }
            }
            other => HsmError::Unavailable { operation: self.name, reason: other.to_string(), at: self.at.clone() },
        }
    }

    pub fn ck<T>(&self, r: Result<T, CkError>) -> Result<T, HsmError> {
        r.map_err(|e| self.err(e))
    }

    pub fn misuse(&self, reason: impl Into<String>) -> HsmError {
        HsmError::Misuse { operation: self.name, reason: reason.into() }
    }

    pub fn state(&self, reason: impl Into<String>) -> HsmError {
        HsmError::TokenState { operation: self.name, reason: reason.into(), at: self.at.clone() }
    }

    pub fn unsupported(&self, what: impl Into<String>) -> HsmError {
        HsmError::Unsupported { operation: self.name, what: what.into(), at: self.at.clone() }
    }

    pub fn tr31(&self, reason: impl Into<String>) -> HsmError {
        HsmError::Tr31 { operation: self.name, reason: reason.into(), at: self.at.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rv_names() {
        assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(rv_name(RvError::DeviceError), "CKR_DEVICE_ERROR");
        assert_eq!(ckr_name(cryptoki_sys::CKR_OK), "CKR_OK");
        assert_eq!(ckr_name(cryptoki_sys::CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(0x8000_0001), "CKR 0x80000001");
        let e = CkError::Pkcs11(RvError::PinIncorrect, cryptoki::context::Function::Login);
        assert_eq!(ck_text(&e), "C_Login returned CKR_PIN_INCORRECT");
    }

    #[test]
    fn device_errors_are_classified() {
        let at = Arc::new(SlotRef { module: "m.so".into(), slot: 1, token: "t".into() });
        let dev = HsmError::Module { operation: "seal", function: "C_Encrypt".into(), rv: RvError::DeviceError, at };
        assert!(dev.is_device_error());
        assert_eq!(dev.to_string(), "seal: C_Encrypt returned CKR_DEVICE_ERROR on m.so slot 1 (token t)");
        let key = HsmError::ComponentKcv {
            operation: "form_smk",
            index: 2,
            expected: Kcv("AAAAAA".into()),
            actual: Kcv("BBBBBB".into()),
            at: Arc::new(SlotRef { module: "m.so".into(), slot: 1, token: "t".into() }),
        };
        assert!(!key.is_device_error());
        assert_eq!(key.to_string(), "form_smk: component 2 has KCV BBBBBB, expected AAAAAA (m.so slot 1 (token t))");
    }
}

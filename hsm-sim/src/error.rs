//! The one error type of the module: every failure carries the `CK_RV` the C caller receives.

use cryptoki_sys::*;
use std::fmt;

/// A failed PKCS#11 call: the return value for the caller plus a short reason for the log.
///
/// The reason never contains key material, PINs or data values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The `CK_RV` returned to the caller.
    pub rv: CK_RV,
    /// What went wrong, for logs and tests.
    pub reason: String,
}

/// Result of a module call.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with a return value and a reason.
    pub fn new(rv: CK_RV, reason: impl Into<String>) -> Self {
        Self { rv, reason: reason.into() }
    }
    /// `CKR_ARGUMENTS_BAD`.
    pub fn args(reason: impl Into<String>) -> Self {
        Self::new(CKR_ARGUMENTS_BAD, reason)
    }
    /// `CKR_MECHANISM_PARAM_INVALID`.
    pub fn param(reason: impl Into<String>) -> Self {
        Self::new(CKR_MECHANISM_PARAM_INVALID, reason)
    }
    /// `CKR_TEMPLATE_INCONSISTENT`.
    pub fn template(reason: impl Into<String>) -> Self {
        Self::new(CKR_TEMPLATE_INCONSISTENT, reason)
    }
    /// `CKR_GENERAL_ERROR` (a bug or an I/O failure).
    pub fn general(reason: impl Into<String>) -> Self {
        Self::new(CKR_GENERAL_ERROR, reason)
    }
    /// `CKR_DEVICE_ERROR` (storage failure or injected fault).
    pub fn device(reason: impl Into<String>) -> Self {
        Self::new(CKR_DEVICE_ERROR, reason)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (CK_RV 0x{:08X})", self.reason, self.rv)
    }
}

impl std::error::Error for Error {}

impl From<quill_crypto::CryptoError> for Error {
    fn from(e: quill_crypto::CryptoError) -> Self {
        use quill_crypto::CryptoError as C;
        let rv = match &e {
            C::KeyLength { .. } => CKR_KEY_SIZE_RANGE,
            C::DataLength { .. } => CKR_DATA_LEN_RANGE,
            C::Invalid(_) => CKR_DATA_INVALID,
            C::BadPadding => CKR_ENCRYPTED_DATA_INVALID,
            C::Integrity => CKR_ENCRYPTED_DATA_INVALID,
            C::Rsa(_) => CKR_FUNCTION_FAILED,
        };
        Self::new(rv, e.to_string())
    }
}

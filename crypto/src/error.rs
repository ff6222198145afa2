//! The one error type of this crate. Messages never contain key material or other secrets.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// A key of the wrong length for the algorithm.
    #[error("invalid key length {got} for {what}")]
    KeyLength {
        /// The algorithm or function.
        what: &'static str,
        /// The length received, in bytes.
        got: usize,
    },
    /// Input data of a length the function does not accept.
    #[error("invalid data length {got} for {what}: {rule}")]
    DataLength {
        /// The algorithm or function.
        what: &'static str,
        /// The length received (bytes, or characters for digit strings).
        got: usize,
        /// The rule that was broken.
        rule: &'static str,
    },
    /// Any other invalid input; the message never contains secret values.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Padding check failed on decryption.
    #[error("bad padding")]
    BadPadding,
    /// Authentication failed: GCM tag mismatch or key-unwrap integrity check value.
    #[error("integrity check failed")]
    Integrity,
    /// An RSA failure (bad key components, engine error).
    #[error("RSA: {0}")]
    Rsa(String),
}

/// Result with [`CryptoError`].
pub type Result<T> = std::result::Result<T, CryptoError>;

/// Secret bytes, zeroized when dropped.
pub type Secret = zeroize::Zeroizing<Vec<u8>>;

/// Shorthand for a [`CryptoError::KeyLength`].
pub(crate) fn key_len(what: &'static str, got: usize) -> CryptoError {
    CryptoError::KeyLength { what, got }
}

/// Shorthand for a [`CryptoError::DataLength`].
pub(crate) fn data_len(what: &'static str, got: usize, rule: &'static str) -> CryptoError {
    CryptoError::DataLength { what, got, rule }
}

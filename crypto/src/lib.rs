//! Software cryptography shared by Quill's simulated HSM (`hsm-sim`), the HSM adapter
//! (`quill-hsm`) and the node, and the one definition of hsm-sim's vendor mechanism numbers and
//! names ([`mechanism`]).
//!
//! Everything here is pure computation on byte slices: no I/O, no global state, no PKCS#11.
//! The PKCS#11 layer in `quill-hsm-sim` parses mechanism parameters into Rust values and calls
//! these functions with key material it holds inside the (simulated) token.
//!
//! Modules: [`sym`] (block ciphers, modes, MACs, key wrap, KCVs), [`digest`] (SHA-1/2, HMAC),
//! [`rsa`] (key generation, raw and padded operations over OpenSSL), [`payment`] (EMV master-key
//! derivation, CVV, PVV, IBM 3624, ISO 9564 PIN blocks). Errors never carry secret values;
//! secret outputs are [`Secret`] (zeroized on drop). No function panics on any input.

pub mod digest;
pub mod error;
pub mod mechanism;
pub mod payment;
pub mod rsa;
pub mod sym;
pub mod tr31;

pub use error::{CryptoError, Result, Secret};

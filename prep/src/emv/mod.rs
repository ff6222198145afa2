//! EMV-specific data preparation.
//!
//! * [`cert`]: offline data authentication (EMV Book 2): CA public keys, issuer-certificate
//!   import and verification, building and recovering ICC Public Key Certificates and Signed
//!   Static Application Data.

pub mod cert;

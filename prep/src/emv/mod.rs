//! EMV-specific data preparation.
//!
//! * [`cert`]: offline data authentication (EMV Book 2): CA public keys, issuer-certificate
//!   import and verification, building and recovering ICC Public Key Certificates and Signed
//!   Static Application Data.
//! * [`ca`]: the EMV CA's side: issuers' certification requests (self-signed), the certificate
//!   files it writes in the schemes' layouts, its public-key files, revocation lists.

pub mod ca;
pub mod cert;

//! Quill data preparation, the pure part.
//!
//! This crate turns card data into personalization data and does no I/O: no files, no sockets, no
//! clock, no HSM session. Where a private key is needed (the issuer key signing an ICC certificate
//! or Signed Static Application Data) the caller passes an implementation of
//! [`emv::cert::RawRsaSigner`]; the node implements it over the HSM's raw RSA mechanism
//! (`CKM_RSA_X_509`), tests implement it with OpenSSL. Public-key operations (recovering and
//! checking certificates) are done here, in pure Rust.
//!
//! What exists so far: [`emv::cert`], EMV Book 2 offline-data-authentication certificates (scheme
//! CA keys, issuer-certificate files, ICC certificates, SDA). The rest of DESIGN.md §7 (profiles,
//! records, DGIs, mag stripe, PINs) is still to come.

pub mod emv;

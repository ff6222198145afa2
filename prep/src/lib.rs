//! Quill data preparation, the pure part.
//!
//! This crate turns card data into personalization data and does no I/O: no files, no sockets, no
//! clock, no HSM session. Where a private key is needed (the issuer key signing an ICC certificate
//! or Signed Static Application Data) the caller passes an implementation of
//! [`emv::cert::RawRsaSigner`]; the node implements it over the HSM's raw RSA mechanism
//! (`CKM_RSA_X_509`), tests implement it with OpenSSL. Public-key operations (recovering and
//! checking certificates) are done here, in pure Rust.
//!
//! What exists so far: [`profile`] (card-product profiles in TOML, every problem reported with
//! file, line, field path and reason), [`input`] (streaming, validating batch-file reader: Luhn,
//! dates, service codes, name charsets; errors never show a PAN in clear), [`emv::cert`] (EMV
//! Book 2 offline-data-authentication certificates: scheme CA keys, issuer-certificate files, ICC
//! certificates, SDA), [`tlv`] (BER-TLV), [`cps`] (DGIs, record templates, padding) and
//! [`magstripe`] (tracks 1 and 2, track 2 equivalent data, discretionary layouts). Still to come
//! (DESIGN.md §7): the per-card engine that ties them to the HSM, PIN mailers, e-purse and CAP
//! data, the output writer.

pub mod cps;
pub mod emv;
pub mod input;
pub mod magstripe;
pub mod profile;
pub mod tlv;

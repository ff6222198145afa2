//! Quill data preparation.
//!
//! This crate turns card data into personalization data and does no I/O of its own: no files, no
//! sockets, and no clock but the current month for the expiry check ([`input::Yymm::now`], which
//! readers let the caller override). Every key operation goes through the [`quill_hsm::Hsm`] handle the caller
//! passes to the [`engine`]; where a private key signs (the issuer key signing an ICC certificate
//! or Signed Static Application Data) the certificate code takes an implementation of
//! [`emv::cert::RawRsaSigner`]: the engine's runs `CKM_RSA_X_509` in the HSM with the wrapped
//! issuer key, tests use OpenSSL. Public-key operations (recovering and
//! checking certificates) are done here, in pure Rust.
//!
//! What exists so far: [`profile`] (card-product profiles in TOML, every problem reported with
//! file, line, field path and reason), [`input`] (streaming, validating batch-file reader: Luhn,
//! dates, service codes, name charsets; errors never show a PAN in clear), [`emv::cert`] (EMV
//! Book 2 offline-data-authentication certificates: scheme CA keys, issuer-certificate files, ICC
//! certificates, SDA), [`tlv`] (BER-TLV), [`cps`] (DGIs, record templates, padding) and
//! [`magstripe`] (tracks 1 and 2, track 2 equivalent data, discretionary layouts), and
//! [`engine`]: the per-card engine that ties them to an [`quill_hsm::Hsm`] handle (every key
//! operation inside the HSM), the ICC key-pair pool, and the output streams with their MACs.

pub mod cps;
pub mod emv;
pub mod engine;
pub mod input;
pub mod magstripe;
pub mod profile;
pub mod profile_schema;
pub mod test_ca;
#[cfg(feature = "test-keys")]
pub mod testkeys;
pub mod tlv;

/// The sample card-product profiles shipped in `prep/profiles/` (TEST key labels), built in so
/// that the demo and the benchmarks run from anywhere.
pub mod samples {
    /// `prep/profiles/visa-dda-credit.toml`.
    pub const VISA_DDA_CREDIT: &str = include_str!("../profiles/visa-dda-credit.toml");
    /// `prep/profiles/mc-cap.toml`.
    pub const MC_CAP: &str = include_str!("../profiles/mc-cap.toml");
    /// `prep/profiles/multi-app.toml`.
    pub const MULTI_APP: &str = include_str!("../profiles/multi-app.toml");
}

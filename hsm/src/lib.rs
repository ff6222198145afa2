//! Quill's HSM adapter.
//!
//! [`Hsm`] speaks in key-management operations (transport key, storage master key, working keys,
//! KCVs, audit MAC and encryption, TR-31 key block import and export) and the payment operations
//! of data preparation (EMV ICC master keys, CVV, PINs with PVV/offset, PIN translation, ICC RSA
//! key pairs). Keys never appear in clear in
//! host memory: working keys travel as [`WrappedKey`]s (wrapped under the storage master key,
//! SMK), key components as [`SealedComponent`]s (RSA-OAEP to the node's transport key), and
//! everything is unwrapped, combined and used inside the HSM. The one exception is the *host path*
//! (see [`HostPathObserver`]): a function the module cannot do inside (SoftHSM cannot XOR key
//! components or open TR-31 key blocks) is refused with [`HsmError::HostPathRefused`] unless the slot's configuration
//! allows it, and every allowed use is reported so the node can audit it.
//!
//! Implementations:
//!
//! - [`Pkcs11Hsm`]: one slot of any PKCS#11 module through the `cryptoki` crate. It uses a
//!   module's vendor mechanisms where the slot lists them (hsm-sim) and composes standard
//!   mechanisms otherwise (SoftHSM 2.6). Long-lived logged-in sessions, cached key handles.
//! - [`HsmPool`]: several slots (of one or several modules) behind one [`Hsm`]; a slot that fails
//!   with a device error or does not answer in time is taken out, the operation retried on
//!   another, and the slot re-admitted when it answers again.
//!
//! The API is blocking, as PKCS#11 is; async callers use `spawn_blocking`.
//!
//! `unsafe` code lives in one module, [`raw`]: Quill's one raw PKCS#11 escape hatch, for the calls
//! `cryptoki` cannot make, used by the adapter and by the tools. With the `tools` feature,
//! [`tools`] holds the helpers the command-line tools share (loading a module, one-line errors,
//! vendor mechanisms with byte-string parameters).

mod config;
mod error;
mod keyblock;
mod mechanism_names;
mod mechanisms;
mod module;
mod observer;
mod payment;
mod pkcs11;
mod pool;
pub mod raw;
#[cfg(feature = "tools")]
pub mod tools;
mod types;
mod usage;

pub use config::{PoolConfig, SlotConfig};
pub use error::{HsmError, SlotRef, ck_text, ckr_name, is_device_rv, rv_name};
pub use keyblock::{tr31_mode_of_use, tr31_usage_allows, tr31_usage_name};
pub use mechanisms::{known_mechanism_name, mechanism_name, vendor};
pub use observer::{HostPathObserver, HostPathUse, LogHostPath};
pub use payment::{CrtPadding, DerivedKey, GeneratedPin, IccKeyPair, PinRequest, PinVerification};
pub use pkcs11::Pkcs11Hsm;
pub use pool::{HsmPool, SlotState, SlotStatus};
/// TR-31 key blocks (`quill_crypto::tr31`): the header type [`Hsm::tr31_import`] returns.
pub use quill_crypto::tr31;
pub use types::{
    AtRest, Capability, HsmInfo, Kcv, KeyAlg, KeyUse, RsaPublic, SealedComponent, SlotInfo, Support, WrappedKey,
    WrappedRsaKey,
};
pub use usage::Usage;
pub use zeroize::Zeroizing;

/// Key-management operations of a node's HSM(s).
///
/// Contract every implementation keeps:
///
/// - No key leaves the HSM in clear, except on the host path where the configuration allows it,
///   and then each use is reported to the [`HostPathObserver`] first.
/// - The transport key pair (RSA-2048, e=65537) and the SMK (AES-256) are persistent token
///   objects, found by fixed labels. The transport private key is sensitive and never
///   extractable; the SMK is sensitive and extractable only so that [`Hsm::wrap_smk_for`] can
///   send it to another node's transport key.
/// - An SMK is never replaced: forming or installing one where a different one exists fails
///   with [`HsmError::SmkConflict`]; doing it again with the same key is a no-op.
/// - Every [`WrappedKey`] is a TR-31 key block (version D, key context 1: storage) under a KBPK
///   each HSM derives from its SMK inside itself, and carries the KCV of that SMK; an HSM holding
///   another SMK refuses it ([`HsmError::WrongSmk`]) before trying to unwrap. The block's header
///   binds the key's usage, mode of use and exportability: every operation names the usages it
///   accepts and refuses any other block before opening it ([`HsmError::KeyBlock`]); a block whose
///   header was edited does not open. Issuer RSA private keys ([`WrappedRsaKey`]) are blocks of
///   the same kind (algorithm `R`, usage `S0`, sign only, never exportable).
/// - Component operations check each component's KCV inside the HSM and name the failing
///   component by index; they need at least two components.
/// - KCVs are computed inside the HSM (see [`Kcv`] for the algorithms).
/// - TR-31 key blocks are made and opened inside the HSM where the module can (hsm-sim's
///   `CKM_QUILL_TR31_WRAP`/`CKM_QUILL_TR31_UNWRAP`); otherwise on the host path. A bad block, a
///   failed MAC or a request that cannot be met is [`HsmError::Tr31`], with the same message from
///   every module.
/// - Errors never contain key bytes or PINs. [`HsmError::is_device_error`] tells the caller whether
///   another slot might succeed.
///
/// Payment operations check their inputs before touching any key ([`HsmError::Misuse`], the same
/// on every module) and run inside the HSM with vendor mechanisms where listed; on other modules
/// what cannot be composed from standard mechanisms takes the host path (see hsm/README.md).
pub trait Hsm: Send + Sync {
    /// The slots behind this handle: module, slot, token, capabilities, host-path policy.
    fn describe(&self) -> HsmInfo;

    /// The node's RSA transport public key (2048 bits, e = 65537). The pair is generated inside
    /// the token on first call (persistent token objects, fixed label) and found again afterwards.
    fn transport_public_key(&self) -> Result<RsaPublic, HsmError>;

    /// Form the storage master key (AES-256) from key components sealed to
    /// [`Hsm::transport_public_key`]: each is unwrapped inside the HSM with the transport private
    /// key, its KCV checked against `expected[i]`, and the components XORed (inside the HSM where
    /// the module can; otherwise on the host path). The SMK is stored as a persistent token key.
    /// Returns its KCV. Idempotent for the same SMK; refuses to replace a different one.
    fn form_smk(&self, components: &[SealedComponent], expected: &[Kcv]) -> Result<Kcv, HsmError>;

    /// KCV of the SMK on the token, `None` when there is none yet.
    fn smk_kcv(&self) -> Result<Option<Kcv>, HsmError>;

    /// The SMK wrapped with RSA-OAEP (SHA-1) to another node's transport public key.
    fn wrap_smk_for(&self, peer: &RsaPublic) -> Result<Vec<u8>, HsmError>;

    /// Receive an SMK from [`Hsm::wrap_smk_for`] of another node: unwrapped with this node's
    /// transport key, checked against `expected`, stored. Idempotent for the same SMK.
    fn install_smk(&self, sealed: &[u8], expected: &Kcv) -> Result<(), HsmError>;

    // ---- SMK rotation (`pkcs11/rotation.rs`) ----------------------------------------------------

    /// KCV of the next SMK (formed by a rotation ceremony, not yet this HSM's SMK), `None` when
    /// there is none.
    fn next_smk_kcv(&self) -> Result<Option<Kcv>, HsmError>;

    /// Form the next SMK from components sealed to [`Hsm::transport_public_key`] (the same checks
    /// as [`Hsm::form_smk`]) and keep it beside the current SMK as a persistent token key. Needs
    /// an SMK; refuses components that form the current one ([`HsmError::Misuse`]). Idempotent for
    /// the same key; a different next SMK (of an abandoned rotation) is replaced. Returns its KCV.
    fn form_next_smk(&self, components: &[SealedComponent], expected: &[Kcv]) -> Result<Kcv, HsmError>;

    /// A key block at rest under the current SMK re-protected under the at-rest KBPK of the next
    /// SMK: the same header and key, fresh padding, the same KCV; a block already under the next
    /// SMK comes back as it is. Inside the HSM where the module offers a translation mechanism
    /// (hsm-sim's `CKM_QUILL_TR31_TRANSLATE`, which also moves blocks marked non-exportable); on a
    /// module that makes blocks on the host path (SoftHSM), on the host path too (allowed and
    /// audited as every host-path use); a module that makes blocks inside but offers no
    /// translation is [`HsmError::Unsupported`], naming the setting.
    fn translate_to_next(&self, key: &WrappedKey) -> Result<WrappedKey, HsmError>;

    /// An RSA private key's block at rest under the current SMK, re-protected under the next
    /// SMK as [`Hsm::translate_to_next`] does (a key already under the next SMK comes back as it
    /// is).
    fn rewrap_rsa_to_next(&self, key: &WrappedRsaKey) -> Result<WrappedRsaKey, HsmError>;

    /// Make the next SMK, whose KCV must be `expected`, this HSM's SMK: the old SMK is destroyed
    /// in the token and the next one takes its place. Idempotent (once done, the SMK is
    /// `expected` and there is no next one); anything else is [`HsmError::TokenState`]. Until
    /// then, blocks under the next SMK already open (every operation picks the SMK a block names).
    fn promote_next_smk(&self, expected: &Kcv) -> Result<(), HsmError>;

    /// A new random working key generated inside the HSM, returned as a key block at rest
    /// ([`WrappedKey`]) whose header binds `key_use`.
    fn generate_key(&self, alg: KeyAlg, key_use: KeyUse) -> Result<WrappedKey, HsmError>;

    /// A working key formed from sealed components (same checks as [`Hsm::form_smk`]), returned
    /// as a key block at rest whose header binds `key_use`.
    fn import_components(
        &self,
        alg: KeyAlg,
        key_use: KeyUse,
        components: &[SealedComponent],
        expected: &[Kcv],
    ) -> Result<WrappedKey, HsmError>;

    /// TR-34-style key transport, the sending side (the key distribution host): a new random key
    /// generated inside the HSM, returned as a key block at rest binding `key_use` and, from the
    /// same HSM object, wrapped under `peer`'s RSA public key (RSA-OAEP, as the transport keys
    /// carry the SMK and components) for the receiving device. The key is never outside an HSM in
    /// clear; `peer` must have at least 2048 bits.
    fn generate_for_transport(
        &self,
        alg: KeyAlg,
        key_use: KeyUse,
        peer: &RsaPublic,
    ) -> Result<(WrappedKey, Vec<u8>), HsmError>;

    /// TR-34-style key transport, the receiving side: `sealed` (from
    /// [`Hsm::generate_for_transport`] against this HSM's [`Hsm::transport_public_key`]) opened
    /// with the transport private key inside the HSM and returned as a key block at rest binding
    /// `key_use`. A blob that does not open is [`HsmError::CannotOpen`].
    fn receive_transported(&self, alg: KeyAlg, key_use: KeyUse, sealed: &[u8]) -> Result<WrappedKey, HsmError>;

    /// Recompute a wrapped key's KCV inside the HSM (which also proves the blob unwraps under this
    /// HSM's SMK).
    fn kcv(&self, key: &WrappedKey) -> Result<Kcv, HsmError>;

    /// HMAC-SHA-256 of `data` with a wrapped [`KeyAlg::HmacSha256`] key (audit chain MAC).
    fn hmac_sha256(&self, key: &WrappedKey, data: &[u8]) -> Result<[u8; 32], HsmError>;

    /// HMAC-SHA-256 of `data` with this HSM's own node audit key, and that key's KCV. The key is a
    /// persistent token object (256 bits, sensitive, never extractable, sign/verify only) found
    /// by a fixed label and generated on first use, so it exists before the node joins a cluster
    /// or any SMK does: the audit chain MACs every record with it from the first one on. Every
    /// slot has its own; the KCV names the one that made a MAC.
    fn node_audit_mac(&self, data: &[u8]) -> Result<(Kcv, [u8; 32]), HsmError>;

    /// Check a [`Hsm::node_audit_mac`] MAC with the node audit key whose KCV is `kcv`:
    /// `Some(true|false)`, or `None` when no slot here holds that key.
    fn node_audit_verify(&self, kcv: &Kcv, data: &[u8], mac: &[u8; 32]) -> Result<Option<bool>, HsmError>;

    /// AES-GCM encryption with a wrapped AES key: `IV (12 random bytes from the HSM) ‖ ciphertext
    /// ‖ tag (16 bytes)`, with `aad` authenticated.
    fn seal(&self, key: &WrappedKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError>;

    /// Inverse of [`Hsm::seal`]; [`HsmError::AuthenticationFailed`] when the key, the AAD or the
    /// data do not match.
    fn open(&self, key: &WrappedKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, HsmError>;

    /// Import a TR-31 key block (versions B and D) under a wrapped key-block protection key; the
    /// imported key comes back wrapped under the SMK. The block's header (usage, algorithm, mode of
    /// use, exportability) is returned too.
    ///
    /// The KBPK's algorithm must fit the version: TDES for B, AES for D. The block's algorithm
    /// must be one Quill holds (`T` 16 or 24 bytes, `A` 16/24/32, `H` 32 bytes for HMAC-SHA-256, with
    /// an `HM` block, if any, of `21`), and its exportability `E` or `S`: a non-exportable (`N`)
    /// key could not be wrapped under the SMK. The header, the block's structure and these rules
    /// are checked before any key is touched; the MAC is verified before the key is read. Every
    /// failure about the block is [`HsmError::Tr31`] naming the problem (`MAC verification
    /// failed`, a field and its position); none is retried on another slot.
    fn tr31_import(&self, kbpk: &WrappedKey, block: &str) -> Result<(tr31::Tr31Header, WrappedKey), HsmError>;

    /// Export a wrapped key as a TR-31 key block under a wrapped KBPK. Version B for a TDES KBPK,
    /// D for AES; usage code given (e.g. "E0"), algorithm from the key (`T`, `A`, or `H` with an
    /// `HM` block `21` for SHA-256), mode of use derived from the usage ([`tr31_mode_of_use`]: `X`
    /// for B0–B2 and E0–E6, `C` for C0, M0–M8 and V0–V4, `B` for D0, D2, K0, K1 and P0, `N` for I0
    /// and proprietary usages), exportability "E" if `exportable` else "N"; key version `00`, key
    /// context `0`. The key length is hidden (padding as for the algorithm's longest key) and the
    /// padding is random. A key stronger than the KBPK (AES under TDES, DES3 under DES2, AES-256
    /// under AES-128), a usage that is unknown, asymmetric or does not allow the key's algorithm
    /// is refused with [`HsmError::Tr31`].
    fn tr31_export(
        &self,
        kbpk: &WrappedKey,
        key: &WrappedKey,
        usage: &str,
        exportable: bool,
    ) -> Result<String, HsmError>;

    // ---- payment operations (data preparation) --------------------------------------------------

    /// The EMV ICC master key for `pan` and `psn` (EMV Book 2 A1.4: Option A for PANs of up to 16
    /// digits, Option B for longer ones), derived inside the HSM from the wrapped TDES `imk`, and
    /// returned as 3DES-ECB of the key (16 bytes, odd parity) under the wrapped TDES `transport`
    /// key (CPS DGI 8000 content), with its KCV. The PAN must be 12–19 digits and the PSN 2 digits
    /// (`"00"` when the card has none). hsm-sim derives with `CKM_QUILL_EMV_MK_OPTION_A/B` and
    /// wraps with `C_WrapKey(CKM_DES3_ECB)`; SoftHSM derives with `CKM_DES3_ECB_ENCRYPT_DATA`
    /// but cannot wrap under a TDES key, so the derived key takes the host path to be encrypted.
    fn derive_icc_master_key(
        &self,
        imk: &WrappedKey,
        pan: &str,
        psn: &str,
        transport: &WrappedKey,
    ) -> Result<DerivedKey, HsmError>;

    /// CVV/CVC with a wrapped DES2 CVK (CVK-A ‖ CVK-B): the service code as on the stripe for
    /// CVV1, `999` for iCVV, `000` for CVV2. `expiry_yymm` is YYMM. Three digits.
    fn cvv(&self, cvk: &WrappedKey, pan: &str, expiry_yymm: &str, service_code: &str) -> Result<String, HsmError>;

    /// A random PIN drawn inside the HSM (weak PINs excluded when asked), returned only as an ISO
    /// 9564-1 PIN block (format 0–4) encrypted under the request's PIN key, with its Visa PVV or
    /// IBM 3624 offset.
    fn generate_pin(&self, request: &PinRequest) -> Result<GeneratedPin, HsmError>;

    /// Translate an encrypted PIN block from one key and format to another (e.g. a format 0
    /// mailer block into a format 2 chip offline PIN under the DEK). A block that does not
    /// decrypt to a valid block of `from_format` is [`HsmError::Misuse`] on every module.
    fn translate_pin_block(
        &self,
        from_key: &WrappedKey,
        from_format: u8,
        to_key: &WrappedKey,
        to_format: u8,
        pan: &str,
        block: &[u8],
    ) -> Result<Vec<u8>, HsmError>;

    /// An ICC RSA key pair generated inside the HSM (`bits` 512–4096 in steps of 8, odd
    /// `exponent` ≥ 3, typically 3): the public key, and the private key's CRT components (`p`,
    /// `q`, `dp`, `dq`, `qinv`), each left-padded to half the modulus, padded as asked and
    /// encrypted with 3DES-ECB under the wrapped TDES `transport` key (CPS DGIs 8201–8205). The
    /// private key is destroyed in the HSM. hsm-sim exports with
    /// `CKM_QUILL_RSA_CRT_COMPONENT_WRAP`; other modules take the host path.
    fn generate_icc_rsa_key(
        &self,
        bits: u32,
        exponent: u32,
        transport: &WrappedKey,
        padding: CrtPadding,
    ) -> Result<IccKeyPair, HsmError>;

    /// An RSA key pair for signing (an issuer key: `bits` 1024–1984 in steps of 8 for EMV, any
    /// 512–4096 here; odd `exponent` ≥ 3) generated inside the HSM. The private key leaves only
    /// as a block at rest (TR-31 version D under the SMK's at-rest KBPK; algorithm `R`, usage
    /// `S0`, sign only, never exportable), bound to its public key and to tenant `owner`.
    fn generate_rsa_key_pair(&self, bits: u32, exponent: u32, owner: Option<&str>) -> Result<WrappedRsaKey, HsmError>;

    /// The raw RSA private operation (`CKM_RSA_X_509`: `block^d mod n`, no padding) with a
    /// wrapped private key: EMV certificates and Signed Static Application Data are formatted by
    /// the caller and signed this way. `block` must be exactly the modulus length and below the
    /// modulus; the result is the modulus length.
    fn rsa_sign_raw(&self, key: &WrappedRsaKey, block: &[u8]) -> Result<Vec<u8>, HsmError>;
}

//! Quill's HSM adapter.
//!
//! [`Hsm`] speaks in key-management operations (transport key, storage master key, working keys,
//! KCVs, audit MAC and encryption); payment operations (EMV ICC master keys, CVV, PVV, PINs, ICC
//! RSA key pairs, TR-31) will join it. Keys never appear in clear in host memory: working keys
//! travel as [`WrappedKey`]s (wrapped under the storage master key, SMK), key components as
//! [`SealedComponent`]s (RSA-OAEP to the node's transport key), and everything is unwrapped,
//! combined and used inside the HSM. The one exception is the *host path* (see
//! [`HostPathObserver`]): a function the module cannot do inside (SoftHSM cannot XOR key
//! components) is refused with [`HsmError::HostPathRefused`] unless the slot's configuration
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
//! `unsafe` code lives in one private module (`raw`), for the calls `cryptoki` cannot make.

mod config;
mod error;
mod mechanisms;
mod module;
mod observer;
mod pkcs11;
mod pool;
mod raw;
mod types;

pub use config::{PoolConfig, SlotConfig};
pub use error::{HsmError, SlotRef, is_device_rv, rv_name};
pub use mechanisms::{mechanism_name, vendor};
pub use observer::{HostPathObserver, HostPathUse, LogHostPath};
pub use pkcs11::Pkcs11Hsm;
pub use pool::{HsmPool, SlotState, SlotStatus};
pub use types::{Capability, HsmInfo, Kcv, KeyAlg, RsaPublic, SealedComponent, SlotInfo, Support, WrappedKey};
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
/// - Every [`WrappedKey`] carries the KCV of the SMK it is wrapped under; an HSM holding another
///   SMK refuses it ([`HsmError::WrongSmk`]) before trying to unwrap.
/// - Component operations check each component's KCV inside the HSM and name the failing
///   component by index; they need at least two components.
/// - KCVs are computed inside the HSM (see [`Kcv`] for the algorithms).
/// - Errors never contain key bytes or PINs. [`HsmError::is_device_error`] tells the caller whether
///   another slot might succeed.
///
/// Payment operations (EMV ICC master-key derivation Option A/B, CVV/PVV, PIN generation, ICC
/// RSA key pairs, TR-31 import/export) will be added here as further methods; [`Pkcs11Hsm`] keeps
/// the building blocks (capability detection in [`HsmInfo`], the raw `CKM_DES3_ECB_ENCRYPT_DATA`
/// derivation in [`Pkcs11Hsm::derive_des3_ecb_encrypt_data`], vendor mechanism values in
/// [`vendor`]).
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

    /// A new random working key generated inside the HSM, returned wrapped under the SMK.
    fn generate_key(&self, alg: KeyAlg) -> Result<WrappedKey, HsmError>;

    /// A working key formed from sealed components (same checks as [`Hsm::form_smk`]), returned
    /// wrapped under the SMK.
    fn import_components(
        &self,
        alg: KeyAlg,
        components: &[SealedComponent],
        expected: &[Kcv],
    ) -> Result<WrappedKey, HsmError>;

    /// Recompute a wrapped key's KCV inside the HSM (which also proves the blob unwraps under this
    /// HSM's SMK).
    fn kcv(&self, key: &WrappedKey) -> Result<Kcv, HsmError>;

    /// HMAC-SHA-256 of `data` with a wrapped [`KeyAlg::HmacSha256`] key (audit chain MAC).
    fn hmac_sha256(&self, key: &WrappedKey, data: &[u8]) -> Result<[u8; 32], HsmError>;

    /// AES-GCM encryption with a wrapped AES key: `IV (12 random bytes from the HSM) ‖ ciphertext
    /// ‖ tag (16 bytes)`, with `aad` authenticated.
    fn seal(&self, key: &WrappedKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError>;

    /// Inverse of [`Hsm::seal`]; [`HsmError::AuthenticationFailed`] when the key, the AAD or the
    /// data do not match.
    fn open(&self, key: &WrappedKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, HsmError>;
}

//! Attribute templates and mechanisms. One place decides which usages each kind of object gets:
//! a working key unwrapped for one purpose gets only that purpose (an IMK unwrapped to derive
//! cannot encrypt, which would give ICC master keys in clear), and the KCV is computed on a handle
//! unwrapped for that alone.

use crate::types::{KeyAlg, RsaPublic};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::types::Ulong;

/// What an unwrapped working-key handle may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Usage {
    /// Compute the KCV only (TDES: encrypt; AES: CMAC sign; HMAC: sign).
    Check,
    /// HMAC sign/verify.
    Mac,
    /// AES-GCM encrypt/decrypt.
    Aead,
    /// Derive (EMV ICC master keys).
    Derive,
    /// Wrap and unwrap: a TR-31 key block protection key on a module that does TR-31 inside.
    Kbpk,
    /// Sign only: a CVK, or a PVK for hsm-sim's PIN mechanisms.
    Sign,
    /// Encrypt only: a PIN key a block comes out under, a transport key used with `C_Encrypt`.
    Encrypt,
    /// Decrypt only: a PIN key a block comes in under.
    Decrypt,
    /// Wrap only: a transport key used with `C_WrapKey` (hsm-sim).
    Wrap,
}

/// Fixed `CKA_ID` of the transport key pair.
pub(crate) const TRANSPORT_ID: &[u8] = b"quill-transport";
/// Transport key size.
pub(crate) const TRANSPORT_BITS: u64 = 2048;

pub(crate) fn key_type(alg: KeyAlg) -> KeyType {
    match alg {
        KeyAlg::Des2 => KeyType::DES2,
        KeyAlg::Des3 => KeyType::DES3,
        KeyAlg::Aes128 | KeyAlg::Aes192 | KeyAlg::Aes256 => KeyType::AES,
        KeyAlg::HmacSha256 => KeyType::GENERIC_SECRET,
    }
}

fn usage_attrs(alg: KeyAlg, usage: Usage) -> Vec<Attribute> {
    match usage {
        Usage::Check if alg.is_tdes() => vec![Attribute::Encrypt(true)],
        Usage::Check => vec![Attribute::Sign(true)],
        Usage::Mac => vec![Attribute::Sign(true), Attribute::Verify(true)],
        Usage::Aead => vec![Attribute::Encrypt(true), Attribute::Decrypt(true)],
        Usage::Derive => vec![Attribute::Derive(true)],
        Usage::Kbpk => vec![Attribute::Wrap(true), Attribute::Unwrap(true)],
        Usage::Sign => vec![Attribute::Sign(true)],
        Usage::Encrypt => vec![Attribute::Encrypt(true)],
        Usage::Decrypt => vec![Attribute::Decrypt(true)],
        Usage::Wrap => vec![Attribute::Wrap(true)],
    }
}

/// Every usage attribute set to false.
fn no_usage() -> [Attribute; 7] {
    [
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]
}

fn secret(alg: KeyAlg) -> Vec<Attribute> {
    vec![Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(key_type(alg))]
}

/// A private session secret key of `alg`, sensitive and extractable as said (usages to add).
fn session_secret(alg: KeyAlg, sensitive: bool, extractable: bool) -> Vec<Attribute> {
    let mut t = secret(alg);
    t.extend([
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(sensitive),
        Attribute::Extractable(extractable),
    ]);
    t
}

/// A working key unwrapped from its blob for one usage: session object, sensitive, never
/// extractable.
pub(crate) fn working_key(alg: KeyAlg, usage: Usage) -> Vec<Attribute> {
    let mut t = session_secret(alg, true, false);
    t.extend(usage_attrs(alg, usage));
    t
}

/// A new key on its way to being wrapped under the SMK: session object, sensitive, extractable
/// (for `C_WrapKey`), KCV usage only. Destroyed right after wrapping.
pub(crate) fn transient(alg: KeyAlg) -> Vec<Attribute> {
    let mut t = session_secret(alg, true, true);
    t.extend(usage_attrs(alg, Usage::Check));
    t
}

/// A working key unwrapped only to be exported in a TR-31 key block inside the HSM: session
/// object, sensitive, extractable, no usage. Destroyed right after the export.
pub(crate) fn exportable(alg: KeyAlg) -> Vec<Attribute> {
    let mut t = session_secret(alg, true, true);
    t.extend(no_usage());
    t
}

/// A working key (or KBPK) unwrapped so that the host path can read its value: session object,
/// non-sensitive, extractable, no usage. Destroyed as soon as the value is read.
pub(crate) fn readable(alg: KeyAlg) -> Vec<Attribute> {
    let mut t = session_secret(alg, false, true);
    t.extend(no_usage());
    t
}

/// The one-time AES-256 key that moves a private key between the module and host memory on the
/// host path (its value came from the host): session object, wrap/unwrap only. Destroyed at once.
pub(crate) fn one_time_kek() -> Vec<Attribute> {
    let mut t = session_secret(KeyAlg::Aes256, true, false);
    t.extend(no_usage().into_iter().filter(|a| !matches!(a, Attribute::Wrap(_) | Attribute::Unwrap(_))));
    t.extend([Attribute::Wrap(true), Attribute::Unwrap(true)]);
    t
}

/// A key derived inside the HSM whose value the host path reads (SoftHSM's ICC master key):
/// session object, non-sensitive, extractable, encrypt only (for its KCV). Destroyed as soon as
/// its value and KCV are read.
pub(crate) fn readable_derived(alg: KeyAlg) -> Vec<Attribute> {
    let mut t = readable(alg);
    t.retain(|a| !matches!(a, Attribute::Encrypt(_)));
    t.push(Attribute::Encrypt(true));
    t
}

/// An ICC RSA key pair: session objects. The private half is extractable (its CRT components
/// leave encrypted under a transport key) and, on the host path only, non-sensitive so that the
/// adapter can read them.
pub(crate) fn icc_pair(bits: u32, exponent: &[u8], host_path: bool) -> (Vec<Attribute>, Vec<Attribute>) {
    let public = vec![
        Attribute::Token(false),
        Attribute::ModulusBits(Ulong::from(u64::from(bits))),
        Attribute::PublicExponent(exponent.to_vec()),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
    ];
    let private = vec![
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(!host_path),
        Attribute::Extractable(true),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
    ];
    (public, private)
}

/// A signing (issuer) key pair: session objects; the private half sensitive and extractable only
/// so that it can be wrapped under the SMK.
pub(crate) fn signing_pair(bits: u32, exponent: &[u8]) -> (Vec<Attribute>, Vec<Attribute>) {
    let public = vec![
        Attribute::Token(false),
        Attribute::ModulusBits(Ulong::from(u64::from(bits))),
        Attribute::PublicExponent(exponent.to_vec()),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
    ];
    let private = vec![
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
    ];
    (public, private)
}

/// A signing private key unwrapped from its blob: session object, sensitive, never extractable,
/// sign only.
pub(crate) fn signing_private() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
    ]
}

/// The key a TR-31 key block holds, unwrapped inside the HSM on its way to being wrapped under the
/// SMK: session object, sensitive, extractable (for `C_WrapKey`). Class, key type and length
/// come from the block, usages from its mode of use (hsm-sim's rules).
pub(crate) fn tr31_unwrapped() -> Vec<Attribute> {
    vec![Attribute::Token(false), Attribute::Private(true), Attribute::Sensitive(true), Attribute::Extractable(true)]
}

/// `C_GenerateKey` mechanism and template for a transient key of `alg`.
pub(crate) fn generate(alg: KeyAlg) -> (Mechanism<'static>, Vec<Attribute>) {
    let mut t = transient(alg);
    let mech = match alg {
        KeyAlg::Des2 => Mechanism::Des2KeyGen,
        KeyAlg::Des3 => Mechanism::Des3KeyGen,
        KeyAlg::Aes128 | KeyAlg::Aes192 | KeyAlg::Aes256 => Mechanism::AesKeyGen,
        KeyAlg::HmacSha256 => Mechanism::GenericSecretKeyGen,
    };
    if !alg.is_tdes() {
        t.push(Attribute::ValueLen(Ulong::from(alg.key_len() as u64)));
    }
    (mech, t)
}

/// One key component unwrapped with the transport key: session object, KCV usage, and either
/// derive (inside-HSM XOR) or readable (host path: non-sensitive, extractable).
pub(crate) fn component(alg: KeyAlg, host_path: bool) -> Vec<Attribute> {
    let mut t = secret(alg);
    t.extend([Attribute::Token(false), Attribute::Private(true)]);
    if host_path {
        t.extend([Attribute::Sensitive(false), Attribute::Extractable(true)]);
    } else {
        t.extend([Attribute::Sensitive(true), Attribute::Extractable(false), Attribute::Derive(true)]);
    }
    t.extend(usage_attrs(alg, Usage::Check));
    t
}

/// The storage master key: AES-256, sensitive, extractable only to be wrapped to another node's
/// transport key, wrap/unwrap for working keys, sign for its own CMAC KCV. A token object, or a
/// session object when it is only formed to compare with the SMK already there.
pub(crate) fn smk(label: &str, token: bool) -> Vec<Attribute> {
    let mut t = secret(KeyAlg::Aes256);
    t.extend([
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Sign(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        // The at-rest key-block protection key is derived from it (`atrest.rs`).
        Attribute::Derive(true),
    ]);
    t
}

/// The at-rest KBPK derived from the SMK on a module that makes and opens key blocks inside:
/// session object, AES-256, sensitive, never extractable, wrap and unwrap only.
pub(crate) fn at_rest_kbpk() -> Vec<Attribute> {
    let mut t = session_secret(KeyAlg::Aes256, true, false);
    t.extend([
        Attribute::ValueLen(Ulong::from(32u64)),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Derive(false),
    ]);
    t
}

/// The at-rest KBPK derived from the SMK for the host path (a module without TR-31 inside):
/// session object, AES-256, readable, no usage.
pub(crate) fn readable_at_rest_kbpk() -> Vec<Attribute> {
    let mut t = readable(KeyAlg::Aes256);
    t.push(Attribute::ValueLen(Ulong::from(32u64)));
    t
}

/// A key opened from its block only to prove the block is genuine: session object, sensitive,
/// never extractable, no usage.
pub(crate) fn no_use(alg: KeyAlg) -> Vec<Attribute> {
    let mut t = session_secret(alg, true, false);
    t.extend(no_usage());
    t
}

/// Search template for the SMK.
pub(crate) fn find_smk(label: &str) -> Vec<Attribute> {
    vec![Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Token(true), Attribute::Label(label.as_bytes().to_vec())]
}

/// Search template for the node audit key.
pub(crate) fn find_node_audit_key(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// The node audit key: a persistent HMAC-SHA-256 key (256 bits), sensitive and never extractable,
/// sign and verify only.
pub(crate) fn node_audit_key(label: &str) -> Vec<Attribute> {
    let mut t = find_node_audit_key(label);
    t.extend([Attribute::Private(true), Attribute::Sensitive(true), Attribute::Extractable(false)]);
    t.extend(no_usage().into_iter().filter(|a| !matches!(a, Attribute::Sign(_) | Attribute::Verify(_))));
    t.extend([Attribute::Sign(true), Attribute::Verify(true), Attribute::ValueLen(Ulong::from(32u64))]);
    t
}

/// Search template for one half of the transport key pair.
pub(crate) fn find_transport(label: &str, class: ObjectClass) -> Vec<Attribute> {
    vec![
        Attribute::Class(class),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Public and private templates of the transport key pair: persistent, the private half
/// sensitive, never extractable, and usable only to unwrap.
pub(crate) fn transport_pair(label: &str) -> (Vec<Attribute>, Vec<Attribute>) {
    let public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(TRANSPORT_ID.to_vec()),
        Attribute::ModulusBits(Ulong::from(TRANSPORT_BITS)),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        Attribute::Encrypt(true),
        Attribute::Wrap(true),
        Attribute::Verify(false),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(TRANSPORT_ID.to_vec()),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
    ];
    (public, private)
}

/// Another node's transport public key, as a session object to wrap the SMK with.
pub(crate) fn peer_public(peer: &RsaPublic) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Modulus(peer.modulus.clone()),
        Attribute::PublicExponent(peer.exponent.clone()),
        Attribute::Wrap(true),
        Attribute::Encrypt(true),
        Attribute::Verify(false),
    ]
}

/// RSA-OAEP with SHA-1 and MGF1-SHA-1, no label (SoftHSM 2.6 has no other).
pub(crate) fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1, PkcsOaepSource::empty()))
}

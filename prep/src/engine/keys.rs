//! The keys a profile names, resolved: wrapped working keys by label, each with the TR-31 usage
//! the key inventory records for it, and issuer key pairs with their certificates. The engine
//! checks every label, every key's usage for its step ([`KeyStep`]) and every key's algorithm once,
//! when it is built, so a card never fails half-way because of a missing or unfit key, and no key
//! serves a step it is not for.

use std::collections::BTreeMap;

use quill_hsm::tr31::KeyUsage;
use quill_hsm::{Kcv, KeyAlg, WrappedKey, WrappedRsaKey, tr31_usage_name};

use crate::emv::cert::{IssuerCertificate, RsaPublicKey};

/// An issuer key pair (private half wrapped under the SMK) and its verified certificate.
#[derive(Debug, Clone)]
pub struct IssuerKey {
    /// The key pair.
    pub key: WrappedRsaKey,
    /// The Issuer Public Key Certificate the CA made for its public half.
    pub certificate: IssuerCertificate,
}

impl IssuerKey {
    /// Pair a key with its certificate, refusing a certificate of another key.
    pub fn new(key: WrappedRsaKey, certificate: IssuerCertificate) -> Result<Self, String> {
        let cert_key = certificate.issuer_key();
        if strip(cert_key.modulus()) != strip(&key.public.modulus)
            || strip(cert_key.exponent()) != strip(&key.public.exponent)
        {
            return Err(format!(
                "the certificate (issuer id {}, serial {}) certifies another public key than the key pair's",
                certificate.issuer_id().digits(),
                hex::encode_upper(certificate.serial())
            ));
        }
        Ok(Self { key, certificate })
    }

    /// The public key as the certificate code wants it.
    pub fn public(&self) -> &RsaPublicKey {
        self.certificate.issuer_key()
    }
}

fn strip(v: &[u8]) -> &[u8] {
    let i = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    &v[i..]
}

/// A working key and the TR-31 usage the key inventory records for it.
#[derive(Debug, Clone)]
struct Working {
    key: WrappedKey,
    usage: KeyUsage,
}

/// Wrapped keys by label, as the key inventory holds them: each working key with its TR-31 usage.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    symmetric: BTreeMap<String, Working>,
    issuers: BTreeMap<String, IssuerKey>,
    /// Issuer key pairs the inventory holds but data preparation may not use, and why (their
    /// certificate is revoked).
    refused_issuers: BTreeMap<String, String>,
}

impl KeySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a working key with the TR-31 usage the inventory records for it.
    pub fn insert(&mut self, label: impl Into<String>, key: WrappedKey, usage: KeyUsage) {
        self.symmetric.insert(label.into(), Working { key, usage });
    }

    /// Take a working key out of the set.
    pub fn remove(&mut self, label: &str) -> Option<WrappedKey> {
        self.symmetric.remove(label).map(|w| w.key)
    }

    /// Add (or replace) an issuer key pair.
    pub fn insert_issuer(&mut self, label: impl Into<String>, key: IssuerKey) {
        self.issuers.insert(label.into(), key);
    }

    /// An issuer key pair that must not be used, with the reason a job naming it is refused.
    pub fn refuse_issuer(&mut self, label: impl Into<String>, reason: impl Into<String>) {
        self.refused_issuers.insert(label.into(), reason.into());
    }

    /// Why the issuer key pair `label` may not be used, if it may not.
    pub fn issuer_refusal(&self, label: &str) -> Option<&str> {
        self.refused_issuers.get(label).map(String::as_str)
    }

    /// The working key with this label.
    pub fn get(&self, label: &str) -> Option<&WrappedKey> {
        self.symmetric.get(label).map(|w| &w.key)
    }

    /// The TR-31 usage of the working key with this label: the one its key block's header names
    /// (which the HSM holds the key to), else the one recorded beside it.
    pub fn usage(&self, label: &str) -> Option<KeyUsage> {
        self.symmetric.get(label).map(|w| w.key.usage().unwrap_or(w.usage))
    }

    /// The issuer key pair with this label.
    pub fn issuer(&self, label: &str) -> Option<&IssuerKey> {
        self.issuers.get(label)
    }

    /// Labels of the working keys.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.symmetric.keys().map(String::as_str)
    }
}

/// A key the output names as protecting a DGI or a stream: label and KCV, never the key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRef {
    /// Inventory label.
    pub label: String,
    /// Key check value (hex).
    pub kcv: String,
}

impl KeyRef {
    /// The reference for a wrapped key.
    pub fn of(label: &str, key: &WrappedKey) -> Self {
        Self { label: label.to_owned(), kcv: key.kcv.to_string() }
    }

    /// The reference from a label and a KCV.
    pub fn new(label: &str, kcv: &Kcv) -> Self {
        Self { label: label.to_owned(), kcv: kcv.to_string() }
    }
}

/// What a key is used for, and so which algorithms fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// TDES (an IMK, a purse master key, a PVK, a DEK, a TDES PIN key).
    Tdes,
    /// Double-length TDES (a CVK pair).
    Des2,
    /// AES (a format 4 PIN key).
    Aes,
}

impl Need {
    pub(crate) fn fits(self, alg: KeyAlg) -> bool {
        match self {
            Need::Tdes => alg.is_tdes(),
            Need::Des2 => alg == KeyAlg::Des2,
            Need::Aes => alg.is_aes(),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Need::Tdes => "a TDES (DES2/DES3) key",
            Need::Des2 => "a double-length TDES (DES2) key",
            Need::Aes => "an AES key",
        }
    }
}

/// A step of the engine (or of the output) that uses a working key, and the TR-31 key usages
/// (ANSI X9.143-2022 / ASC X9 TR-31:2018 table 6) a key must have to serve it. PCI PIN security
/// requirement 18-3 wants every key bound to one use: a key the inventory records for one purpose
/// is refused for any other, whatever its algorithm, so that (for example) an issuer master key
/// cannot become the transport key its derived keys are encrypted under, nor a CVK the key of the
/// PIN mailers.
///
/// | profile field | step | TR-31 usage | why |
/// |---|---|---|---|
/// | `applications.*.keys.ac` | ICC master key for application cryptograms (DGI 8000) | `E0` | EMV Book 2 A1.4: MK-AC is derived from the IMK-AC |
/// | `applications.*.keys.smi` | ICC master key for secure messaging integrity | `E2` | the IMK-SMI, X9.143 "secure messaging for integrity" |
/// | `applications.*.keys.smc` | ICC master key for secure messaging confidentiality | `E1` | the IMK-SMC, X9.143 "secure messaging for confidentiality" |
/// | `applications.*.keys.extra.dac` | ICC master key for data authentication codes | `E3` | X9.143 "data authentication code" |
/// | `applications.*.keys.extra.dn`, `.idn` | ICC master key for ICC dynamic numbers | `E4` | X9.143 "dynamic numbers" |
/// | `applications.*.keys.extra.*` (others, e.g. `cvc3`) | another ICC master key | `E6` | X9.143 "other" EMV IMK (Mastercard's IMK-CVC3 is one) |
/// | `applications.*.cap.imk` | the CAP application's MK-AC | `E0` | an EMV-CAP token is an application cryptogram |
/// | `applications.*.master_keys.*` (e-purse) | per-card purse keys (DGI 8001) | `E6` | issuer master keys derived per card by Option A, for none of E0–E5's uses |
/// | `applications.*.secret.transport_key` | encrypts the secret DGIs (8000, 8001, 8010, 8201–8205) | `D0` or `K0` | the EMV CPS / GlobalPlatform DEK is a data encryption key; what it encrypts is mostly keys (ICC master keys, the ICC private key), so a KEK fits as well |
/// | `pin.mailer.key` | encrypts the mailer PIN blocks; source of the offline PIN translation | `P0` | ISO 9564 PIN encryption key; a KEK (`K0`) is refused: a key that wraps keys and also encrypts PIN blocks lets a PIN block be imported as a key, or a key be exported as a "PIN block" |
/// | `mag_stripe.cvk` | CVV, iCVV, CVV2 | `C0` | X9.143 card verification key |
/// | `pin.pvv.pvk` | Visa PVV | `V2` | X9.143 "PIN verification, Visa PVV" |
/// | `pin.ibm3624.pvk` | IBM 3624 PIN offset | `V1` | X9.143 "PIN verification, IBM 3624" |
/// | output MAC key (`quill job submit --mac-key`) | HMAC-SHA-256 of each output stream | `M7` | X9.143 "HMAC": the output MAC is HMAC-SHA-256 |
///
/// Not a step of the engine: the GlobalPlatform card master key (KMC, `E5` "card personalisation"
/// in the inventory) would derive the card's secure channel keys when a personalization device
/// loads a card; the engine does not use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStep {
    /// IMK-AC (`keys.ac`).
    ImkAc,
    /// IMK-SMI (`keys.smi`).
    ImkSmi,
    /// IMK-SMC (`keys.smc`).
    ImkSmc,
    /// An extra IMK for data authentication codes (`keys.extra.dac`).
    ImkDac,
    /// An extra IMK for ICC dynamic numbers (`keys.extra.dn`, `keys.extra.idn`).
    ImkDn,
    /// Any other extra IMK (`keys.extra.<name>`, e.g. `cvc3`).
    ImkOther,
    /// The CAP application's IMK-AC (`cap.imk`).
    CapImk,
    /// An e-purse master key (`master_keys.<name>`).
    PurseMaster,
    /// The transport key of the secret DGIs (`secret.transport_key`).
    Transport,
    /// The PIN-mailer key (`pin.mailer.key`).
    PinMailer,
    /// The CVK pair (`mag_stripe.cvk`).
    Cvk,
    /// The PVK of the Visa PVV (`pin.pvv.pvk`).
    PvkVisa,
    /// The PVK of the IBM 3624 offset (`pin.ibm3624.pvk`).
    PvkIbm3624,
    /// The key that MACs the output streams.
    OutputMac,
}

impl KeyStep {
    /// Every step, in the order of the table above.
    pub const ALL: [KeyStep; 14] = [
        KeyStep::ImkAc,
        KeyStep::ImkSmi,
        KeyStep::ImkSmc,
        KeyStep::ImkDac,
        KeyStep::ImkDn,
        KeyStep::ImkOther,
        KeyStep::CapImk,
        KeyStep::PurseMaster,
        KeyStep::Transport,
        KeyStep::PinMailer,
        KeyStep::Cvk,
        KeyStep::PvkVisa,
        KeyStep::PvkIbm3624,
        KeyStep::OutputMac,
    ];

    /// The step of the extra IMK `keys.extra.<name>`.
    pub fn extra(name: &str) -> KeyStep {
        match name.to_ascii_lowercase().as_str() {
            "dac" => KeyStep::ImkDac,
            "dn" | "idn" => KeyStep::ImkDn,
            _ => KeyStep::ImkOther,
        }
    }

    /// The usages a key must have (any one of them) to serve this step.
    pub fn needs(self) -> &'static [KeyUsage] {
        use KeyUsage as U;
        match self {
            KeyStep::ImkAc | KeyStep::CapImk => &[U::EmvAc],
            KeyStep::ImkSmi => &[U::EmvSmi],
            KeyStep::ImkSmc => &[U::EmvSmc],
            KeyStep::ImkDac => &[U::EmvDac],
            KeyStep::ImkDn => &[U::EmvDn],
            KeyStep::ImkOther | KeyStep::PurseMaster => &[U::EmvOther],
            KeyStep::Transport => &[U::DataEncryption, U::KeyEncryption],
            KeyStep::PinMailer => &[U::PinEncryption],
            KeyStep::Cvk => &[U::Cvk],
            KeyStep::PvkVisa => &[U::PinVerificationVisaPvv],
            KeyStep::PvkIbm3624 => &[U::PinVerificationIbm3624],
            KeyStep::OutputMac => &[U::Hmac],
        }
    }

    /// The profile fields (patterns, `, `-separated) naming the key of this step; the output MAC
    /// key is named where a job is submitted.
    pub fn field(self) -> &'static str {
        match self {
            KeyStep::ImkAc => "applications.*.keys.ac",
            KeyStep::ImkSmi => "applications.*.keys.smi",
            KeyStep::ImkSmc => "applications.*.keys.smc",
            KeyStep::ImkDac => "applications.*.keys.extra.dac",
            KeyStep::ImkDn => "applications.*.keys.extra.dn, applications.*.keys.extra.idn",
            KeyStep::ImkOther => "applications.*.keys.extra.*",
            KeyStep::CapImk => "applications.*.cap.imk",
            KeyStep::PurseMaster => "applications.*.master_keys.*",
            KeyStep::Transport => "applications.*.secret.transport_key",
            KeyStep::PinMailer => "pin.mailer.key",
            KeyStep::Cvk => "mag_stripe.cvk",
            KeyStep::PvkVisa => "pin.pvv.pvk",
            KeyStep::PvkIbm3624 => "pin.ibm3624.pvk",
            KeyStep::OutputMac => "quill job submit --mac-key",
        }
    }

    /// Why the step needs these usages, in one line.
    pub fn why(self) -> &'static str {
        match self {
            KeyStep::ImkAc => "derives the ICC master key for application cryptograms (EMV Book 2 A1.4)",
            KeyStep::ImkSmi => "derives the ICC master key for secure messaging integrity",
            KeyStep::ImkSmc => "derives the ICC master key for secure messaging confidentiality",
            KeyStep::ImkDac => "derives the ICC master key for data authentication codes",
            KeyStep::ImkDn => "derives the ICC master key for ICC dynamic numbers",
            KeyStep::ImkOther => {
                "any other extra name (e.g. `cvc3`): derives another ICC master key (Mastercard's CVC3 key is one)"
            }
            KeyStep::CapImk => "derives the CAP application's MK-AC: a CAP token is an application cryptogram",
            KeyStep::PurseMaster => "e-purse: derives the per-card purse keys (Option A), for none of E0–E5's uses",
            KeyStep::Transport => {
                "encrypts the secret DGIs (master keys, the ICC private key, the offline PIN): the EMV CPS \
                 data encryption key, or a key encryption key since what it protects is mostly keys"
            }
            KeyStep::PinMailer => {
                "encrypts the mailer PIN blocks (ISO 9564) and is the source of the offline PIN \
                 translation; a KEK is refused, since a key that both wraps keys and encrypts PINs lets \
                 one pass for the other"
            }
            KeyStep::Cvk => "computes the CVV, iCVV and CVV2",
            KeyStep::PvkVisa => "computes the Visa PIN verification value",
            KeyStep::PvkIbm3624 => "computes the IBM 3624 PIN offset",
            KeyStep::OutputMac => "MACs each output stream with HMAC-SHA-256",
        }
    }

    /// Refuse a key whose usage `has` is not one this step needs, naming the profile field, the
    /// label, the usage the key has and the usages the step needs.
    pub fn check(self, field: impl Into<String>, label: &str, has: KeyUsage) -> Result<(), super::SetupError> {
        if self.needs().contains(&has) {
            return Ok(());
        }
        Err(super::SetupError::WrongUsage { field: field.into(), label: label.to_owned(), has, needs: self.needs() })
    }
}

/// A usage as messages name it: `E0 (EMV IMK, application cryptograms)`.
pub fn usage_text(usage: &KeyUsage) -> String {
    format!("{} ({})", String::from_utf8_lossy(&usage.code()), tr31_usage_name(*usage))
}

/// Usages as messages name them: `D0 (data encryption) or K0 (key encryption)`.
pub fn usages_text(usages: &[KeyUsage]) -> String {
    usages.iter().map(usage_text).collect::<Vec<_>>().join(" or ")
}

//! The replicated key-management model: who acts, enrolled nodes and their transport keys, the
//! storage master key, ceremonies, the key inventory and dual-control approvals.
//!
//! Every type here is stored in the state machine (postcard through [`crate::store::codec`]) and
//! shown to operators as JSON. None holds clear key material: keys appear only wrapped under the
//! SMK ([`WrappedKey`]) or sealed to a node's transport key ([`SealedComponent`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use quill_hsm::tr31::KeyUsage;
pub use quill_hsm::{Kcv, KeyAlg, RsaPublic, SealedComponent, WrappedKey};

pub use crate::identity::{Actor, NodeId, Role};

/// A TR-31 key usage (ANSI X9.143 two-character code) that Quill manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Usage {
    /// `B0` base derivation key.
    B0,
    /// `C0` card verification key (CVK).
    C0,
    /// `D0` data encryption key (DEK: secret DGIs).
    D0,
    /// `E0` EMV issuer master key: application cryptograms (IMK-AC).
    E0,
    /// `E1` EMV issuer master key: secure messaging for confidentiality (IMK-SMC).
    E1,
    /// `E2` EMV issuer master key: secure messaging for integrity (IMK-SMI).
    E2,
    /// `E3` EMV issuer master key: data authentication code.
    E3,
    /// `E4` EMV issuer master key: dynamic numbers.
    E4,
    /// `E5` EMV issuer master key: card personalization (KMC).
    E5,
    /// `E6` EMV issuer master key: other.
    E6,
    /// `K0` key encryption or wrapping key (KEK / ZMK).
    K0,
    /// `K1` TR-31 key block protection key.
    K1,
    /// `M0` ISO 16609 MAC key.
    M0,
    /// `M1` ISO 9797-1 MAC algorithm 1.
    M1,
    /// `M3` ISO 9797-1 MAC algorithm 3 (retail MAC).
    M3,
    /// `M6` ISO 9797-1:2011 MAC algorithm 5 (CMAC).
    M6,
    /// `M7` HMAC key (Quill's audit MAC key).
    M7,
    /// `P0` PIN encryption key.
    P0,
    /// `S0` asymmetric key for digital signature (issuer RSA).
    S0,
    /// `V1` PIN verification key, IBM 3624.
    V1,
    /// `V2` PIN verification key, Visa PVV.
    V2,
}

impl Usage {
    /// Every usage, in code order.
    pub const ALL: [Usage; 21] = [
        Usage::B0,
        Usage::C0,
        Usage::D0,
        Usage::E0,
        Usage::E1,
        Usage::E2,
        Usage::E3,
        Usage::E4,
        Usage::E5,
        Usage::E6,
        Usage::K0,
        Usage::K1,
        Usage::M0,
        Usage::M1,
        Usage::M3,
        Usage::M6,
        Usage::M7,
        Usage::P0,
        Usage::S0,
        Usage::V1,
        Usage::V2,
    ];

    /// The two-character code.
    pub fn code(self) -> &'static str {
        match self {
            Usage::B0 => "B0",
            Usage::C0 => "C0",
            Usage::D0 => "D0",
            Usage::E0 => "E0",
            Usage::E1 => "E1",
            Usage::E2 => "E2",
            Usage::E3 => "E3",
            Usage::E4 => "E4",
            Usage::E5 => "E5",
            Usage::E6 => "E6",
            Usage::K0 => "K0",
            Usage::K1 => "K1",
            Usage::M0 => "M0",
            Usage::M1 => "M1",
            Usage::M3 => "M3",
            Usage::M6 => "M6",
            Usage::M7 => "M7",
            Usage::P0 => "P0",
            Usage::S0 => "S0",
            Usage::V1 => "V1",
            Usage::V2 => "V2",
        }
    }

    /// The same usage as `quill_hsm::tr31` names it: what the prep engine checks a key's step
    /// against ([`quill_prep::engine::KeyStep`]).
    pub fn tr31(self) -> KeyUsage {
        match self {
            Usage::B0 => KeyUsage::Bdk,
            Usage::C0 => KeyUsage::Cvk,
            Usage::D0 => KeyUsage::DataEncryption,
            Usage::E0 => KeyUsage::EmvAc,
            Usage::E1 => KeyUsage::EmvSmc,
            Usage::E2 => KeyUsage::EmvSmi,
            Usage::E3 => KeyUsage::EmvDac,
            Usage::E4 => KeyUsage::EmvDn,
            Usage::E5 => KeyUsage::EmvPersonalisation,
            Usage::E6 => KeyUsage::EmvOther,
            Usage::K0 => KeyUsage::KeyEncryption,
            Usage::K1 => KeyUsage::Kbpk,
            Usage::M0 => KeyUsage::Iso16609Mac,
            Usage::M1 => KeyUsage::Iso9797Mac1,
            Usage::M3 => KeyUsage::Iso9797Mac3,
            Usage::M6 => KeyUsage::Cmac,
            Usage::M7 => KeyUsage::Hmac,
            Usage::P0 => KeyUsage::PinEncryption,
            Usage::S0 => KeyUsage::AsymmetricSignature,
            Usage::V1 => KeyUsage::PinVerificationIbm3624,
            Usage::V2 => KeyUsage::PinVerificationVisaPvv,
        }
    }

    /// What the usage is for, in a few words (`EMV IMK, application cryptograms`).
    pub fn name(self) -> &'static str {
        quill_hsm::tr31_usage_name(self.tr31())
    }

    /// The key algorithms [`Usage::allows`], in words.
    pub fn algorithms(self) -> &'static str {
        match self {
            Usage::M7 => "HMAC-SHA-256 keys",
            Usage::S0 => "RSA issuer key pairs (quill key generate --alg rsa)",
            Usage::M0 | Usage::M1 | Usage::M3 | Usage::V1 | Usage::V2 | Usage::C0 => "TDES (DES2, DES3) keys",
            _ => "TDES (DES2, DES3) or AES keys",
        }
    }

    /// Refuse a key of `alg` for this usage (a key ceremony, a generation, an import), saying what
    /// the usage is for and which algorithms it takes: `usage E0 (EMV IMK, application
    /// cryptograms) does not allow a HMAC_SHA256 key: it is for TDES (DES2, DES3) or AES keys`.
    pub fn check_alg(self, alg: KeyAlg) -> Result<(), String> {
        if self.allows(alg) {
            return Ok(());
        }
        Err(format!("usage {self} ({}) does not allow a {alg} key: it is for {}", self.name(), self.algorithms()))
    }

    /// Whether a symmetric key of `alg` can serve this usage.
    pub fn allows(self, alg: KeyAlg) -> bool {
        let tdes = matches!(alg, KeyAlg::Des2 | KeyAlg::Des3);
        let aes = matches!(alg, KeyAlg::Aes128 | KeyAlg::Aes192 | KeyAlg::Aes256);
        match self {
            Usage::M7 => matches!(alg, KeyAlg::HmacSha256),
            Usage::S0 => false,
            Usage::M0 | Usage::M1 | Usage::M3 | Usage::V1 | Usage::V2 | Usage::C0 => tdes,
            _ => tdes || aes,
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Usage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Usage::ALL.into_iter().find(|u| u.code().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let all: Vec<&str> = Usage::ALL.iter().map(|u| u.code()).collect();
            format!("unknown key usage {s:?} (one of {})", all.join(" "))
        })
    }
}

impl Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The life-cycle state of an inventory key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Created, not yet usable (waits for activation).
    Pending,
    /// In use.
    Active,
    /// Temporarily not usable.
    Suspended,
    /// No longer used for new work; kept for what it protected.
    Retired,
    /// Key material deleted from the inventory (the record stays for the audit trail).
    Destroyed,
    /// Known or suspected to be compromised: never used again.
    Compromised,
}

impl KeyState {
    /// Whether `self → to` is an allowed transition. Destruction goes through dual control and
    /// is not a plain transition.
    pub fn can_become(self, to: KeyState) -> bool {
        use KeyState::*;
        match (self, to) {
            (Destroyed, _) => false,
            (_, Destroyed) => false,
            (_, Compromised) => self != Compromised,
            (Pending, Active) | (Active, Suspended) | (Suspended, Active) => true,
            (Pending | Active | Suspended, Retired) => true,
            _ => false,
        }
    }

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Suspended => "suspended",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
            KeyState::Compromised => "compromised",
        }
    }
}

impl FromStr for KeyState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use KeyState::*;
        [Pending, Active, Suspended, Retired, Destroyed, Compromised]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown key state {s:?}"))
    }
}

/// Where a key came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Generated inside the HSM of a node.
    Generated {
        /// The node whose HSM generated it.
        node: NodeId,
    },
    /// Formed from custodian components in a ceremony.
    Components {
        /// The ceremony.
        ceremony: String,
        /// The custodians, in submission order.
        custodians: Vec<String>,
    },
    /// Imported from a TR-31 key block under a zone master key.
    Tr31 {
        /// The inventory id of the key-block protection key.
        kbpk: String,
    },
}

/// One key of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// `label.vN`: unique, never reused.
    pub id: String,
    /// The operator's name for the key (several versions share it).
    pub label: String,
    /// 1 for the first key of a label, then +1 for each new one.
    pub version: u32,
    /// TR-31 usage.
    pub usage: Usage,
    /// Algorithm and length.
    pub alg: KeyAlg,
    /// Key check value (ANSI X9.24 for TDES, CMAC for AES).
    pub kcv: Kcv,
    /// Life-cycle state.
    pub state: KeyState,
    /// Whether it may be exported (as a TR-31 block, under dual control).
    pub exportable: bool,
    /// How it was made.
    pub origin: Origin,
    /// The key wrapped under the SMK; `None` once destroyed.
    pub wrapped: Option<WrappedKey>,
    /// Who created it.
    pub created_by: Actor,
    /// When (leader time, ms since the epoch).
    pub created_ms: u64,
    /// Custodians who approved something on this key (export, destruction), in order.
    pub approvers: Vec<String>,
    /// The last state change: who and when.
    pub changed_by: Option<Actor>,
    /// When the state last changed.
    pub changed_ms: u64,
}

/// The storage master key's cluster-wide facts (never the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmkInfo {
    /// The KCV every node's SMK must have.
    pub kcv: Kcv,
    /// The ceremony that formed it.
    pub ceremony: String,
    /// When the first node reported it formed.
    pub formed_ms: u64,
}

/// Where a node stands with the SMK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeSmk {
    /// Not in this node's HSM yet.
    Missing,
    /// In this node's HSM, with the cluster's KCV.
    Present,
    /// The node formed a key with another KCV: it must not wrap or unwrap anything.
    Mismatch {
        /// The KCV it reported.
        kcv: Kcv,
    },
}

/// An enrolled node: its HSM transport public key and SMK status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id.
    pub id: NodeId,
    /// The RSA transport public key generated inside the node's HSM.
    pub transport: RsaPublic,
    /// SHA-256 fingerprint of the transport key (hex), shown to custodians.
    pub fingerprint: String,
    /// The node's HSM (module and token), as it described itself.
    pub hsm: String,
    /// When it enrolled.
    pub enrolled_ms: u64,
    /// SMK status.
    pub smk: NodeSmk,
    /// The node certificate it enrolled with (its transport key is bound to it).
    #[serde(default)]
    pub cert: Option<crate::identity::CertRef>,
}

/// What a ceremony forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CeremonyTarget {
    /// The cluster storage master key (AES-256).
    Smk,
    /// A working key imported from components.
    Key {
        /// Inventory label.
        label: String,
        /// TR-31 usage.
        usage: Usage,
        /// Algorithm and length (each component has this length).
        alg: KeyAlg,
        /// Exportable as TR-31 later.
        exportable: bool,
    },
}

impl CeremonyTarget {
    /// The algorithm of each component.
    pub fn alg(&self) -> KeyAlg {
        match self {
            CeremonyTarget::Smk => KeyAlg::Aes256,
            CeremonyTarget::Key { alg, .. } => *alg,
        }
    }
}

/// A ceremony's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CeremonyState {
    /// Waiting for components.
    Open,
    /// Every component is in; the nodes form the key.
    Complete,
    /// The key formed (SMK: on every recipient node; working key: in the inventory).
    Formed,
    /// Cancelled before completion; its sealed components were deleted.
    Cancelled,
}

/// One custodian's submission (its KCV; the component itself is only in `sealed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The custodian.
    pub custodian: String,
    /// KCV of the component, as computed on the custodian's terminal.
    pub kcv: Kcv,
    /// When it arrived.
    pub at_ms: u64,
    /// The fingerprint of the key of the certificate it came with (two components under one key
    /// are one person's, whatever names the certificates carry).
    #[serde(default)]
    pub key_fp: Option<String>,
}

/// A key ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ceremony {
    /// Ceremony id (chosen by the starter).
    pub id: String,
    /// What it forms.
    pub target: CeremonyTarget,
    /// How many components (2-9).
    pub components: u8,
    /// Progress.
    pub state: CeremonyState,
    /// Who started it.
    pub started_by: Actor,
    /// When.
    pub started_ms: u64,
    /// The nodes the components are sealed to (the enrolled nodes at the start).
    pub recipients: Vec<NodeId>,
    /// Submissions so far.
    pub submissions: Vec<Submission>,
    /// Sealed components per recipient node, in submission order; deleted once every recipient
    /// formed the key (or the ceremony is cancelled).
    pub sealed: BTreeMap<NodeId, Vec<SealedComponent>>,
    /// Recipients that reported the formed key.
    pub formed_on: Vec<NodeId>,
    /// The KCV of the formed key.
    pub kcv: Option<Kcv>,
}

/// What a dual-control approval is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalAction {
    /// Wrap the SMK to a node that enrolled after the ceremony.
    SmkToNode {
        /// The node.
        node: NodeId,
    },
    /// Export a key as a TR-31 block under a key-block protection key.
    Export {
        /// The key to export.
        key: String,
        /// The KBPK (ZMK) it goes under.
        kbpk: String,
    },
    /// Destroy a key.
    Destroy {
        /// The key.
        key: String,
    },
}

impl fmt::Display for ApprovalAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApprovalAction::SmkToNode { node } => write!(f, "wrap the SMK to node {node}"),
            ApprovalAction::Export { key, kbpk } => write!(f, "export {key} under {kbpk}"),
            ApprovalAction::Destroy { key } => write!(f, "destroy {key}"),
        }
    }
}

/// An approval's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for grants.
    Pending,
    /// Two distinct custodians granted it; the action may run once.
    Approved,
    /// A custodian denied it.
    Denied,
    /// The action ran.
    Done,
}

/// Custodians needed to approve a dual-control action.
pub const APPROVALS_NEEDED: usize = 2;

/// A dual-control approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Approval id.
    pub id: String,
    /// What it allows.
    pub action: ApprovalAction,
    /// Who asked.
    pub requested_by: Actor,
    /// When.
    pub requested_ms: u64,
    /// From then on it can be neither granted nor used (leader time, ms).
    pub expires_ms: u64,
    /// Custodians who granted it, in order.
    pub granted_by: Vec<String>,
    /// The certificate key fingerprints of the requester and of each grant (one person with
    /// two certificates of one key is refused the second time).
    #[serde(default)]
    pub keys: Vec<String>,
    /// The custodian who denied it.
    pub denied_by: Option<String>,
    /// State.
    pub state: ApprovalState,
}

/// The audit keys, wrapped under the SMK (generated by the first node that had the SMK).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditKeys {
    /// HMAC-SHA-256 key that MACs audit records and seals.
    pub mac: WrappedKey,
    /// AES-256 key that encrypts sensitive audit fields.
    pub enc: WrappedKey,
    /// The node that generated them.
    pub node: NodeId,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every usage maps to the TR-31 usage of its code, and allows only algorithms TR-31 allows it.
    #[test]
    fn usages_are_their_tr31_codes() {
        for u in Usage::ALL {
            assert_eq!(u.tr31().code(), *<&[u8; 2]>::try_from(u.code().as_bytes()).expect("two characters"), "{u}");
            for alg in KeyAlg::ALL {
                if u.allows(alg) {
                    assert!(quill_hsm::tr31_usage_allows(u.tr31(), alg), "{u} allows {alg}, TR-31 does not");
                }
            }
        }
    }

    /// A usage that does not fit the algorithm is refused with what the usage is for.
    #[test]
    fn a_usage_that_does_not_fit_the_algorithm_says_why() {
        let e = Usage::E0.check_alg(KeyAlg::HmacSha256).expect_err("E0 with HMAC");
        assert_eq!(
            e,
            "usage E0 (EMV IMK, application cryptograms) does not allow a HMAC_SHA256 key: it is for TDES (DES2, DES3) or AES keys"
        );
        let e = Usage::M7.check_alg(KeyAlg::Des2).expect_err("M7 with TDES");
        assert_eq!(e, "usage M7 (HMAC) does not allow a DES2 key: it is for HMAC-SHA-256 keys");
        assert!(Usage::C0.check_alg(KeyAlg::Aes128).is_err());
        assert!(Usage::P0.check_alg(KeyAlg::Aes128).is_ok());
        assert!(Usage::D0.check_alg(KeyAlg::Des2).is_ok());
    }
}

//! The replicated key-management model: who acts, enrolled nodes and their transport keys, the
//! storage master key, ceremonies, the key inventory and dual-control approvals.
//!
//! Every type here is stored in the state machine (postcard through [`crate::store::codec`]) and
//! shown to operators as JSON. None holds clear key material: keys appear only wrapped under the
//! SMK ([`WrappedKey`]) or sealed to a node's transport key ([`SealedComponent`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use quill_hsm::AtRest;
use serde::{Deserialize, Serialize};

pub use quill_hsm::tr31::KeyUsage;
pub use quill_hsm::{Kcv, KeyAlg, RsaPublic, SealedComponent, Usage, WrappedKey};

pub use crate::identity::{Actor, NodeId, Role};

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
    /// Generated here for a target's HSM transport key (TR-34-style, sent).
    TransportSent {
        /// The target.
        target: String,
        /// SHA-256 of the target node's transport key.
        krd: String,
    },
    /// Received from a partner by TR-34-style transport, signed with its pinned key.
    TransportReceived {
        /// The partner.
        partner: String,
        /// SHA-256 of the signing key.
        kdh: String,
    },
}

/// One key of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// `label.vN`: unique, never reused.
    pub id: String,
    /// The tenant it belongs to: only callers acting for it see or use it, and only its jobs.
    #[serde(default = "crate::identity::default_tenant")]
    pub tenant: String,
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

impl KeyRecord {
    /// The key's block at rest, if its header binds it to this record's tenant (the `0T` block;
    /// the HSM checks the header's MAC when it opens the block). A record whose tenant was edited
    /// on disk, or a block of another tenant's key put in it, is refused here, naming both.
    /// `Ok(None)`: destroyed.
    pub fn block(&self) -> Result<Option<&WrappedKey>, String> {
        let Some(w) = &self.wrapped else { return Ok(None) };
        bound_to(w, &self.tenant, &format!("key {}: its block at rest", self.id)).map(Some)
    }
}

/// `w`, if its block's header binds it to `tenant` (see [`KeyRecord::block`]); otherwise why,
/// `what` naming the block ("key X: its block at rest").
pub fn bound_to<'a, W: AtRest>(w: &'a W, tenant: &str, what: &str) -> Result<&'a W, String> {
    match w.owner() {
        Some(owner) if owner == tenant => Ok(w),
        owner => Err(format!(
            "{what} belongs to tenant {}, its record says {tenant:?}: the record was altered, the key is not used",
            owner.map_or_else(|| "(none)".to_owned(), |o| format!("{o:?}")),
        )),
    }
}

/// The storage master key's cluster-wide facts (never the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmkInfo {
    /// The KCV every node's SMK must have.
    pub kcv: Kcv,
    /// The ceremony that formed it.
    pub ceremony: String,
    /// When the first node reported it formed (after a rotation: when the cluster switched to it).
    pub formed_ms: u64,
    /// A rotation's next SMK, once every recipient node formed it and until the cluster switches
    /// every key block to it.
    #[serde(default)]
    pub next: Option<NextSmk>,
    /// The SMKs this one replaced, oldest first (the KCV and when it was retired).
    #[serde(default)]
    pub retired: Vec<RetiredSmk>,
}

/// A rotation's next SMK (see [`SmkInfo::next`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextSmk {
    /// Its KCV.
    pub kcv: Kcv,
    /// The rotation ceremony that formed it.
    pub ceremony: String,
}

/// An SMK a rotation replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredSmk {
    /// Its KCV.
    pub kcv: Kcv,
    /// The ceremony that had formed it.
    pub ceremony: String,
    /// When the cluster switched away from it (leader time, ms).
    pub retired_ms: u64,
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
    /// During a rotation: the next SMK this node formed in its HSM (KCV).
    #[serde(default)]
    pub next_smk: Option<Kcv>,
    /// After a rotation: the old SMK, still in this node's HSM until it reports it destroyed.
    #[serde(default)]
    pub retiring: Option<Kcv>,
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
    /// The next storage master key of a rotation (`quill key rotate-smk`): formed beside the
    /// current one on every node holding it; the cluster then switches every key block to it
    /// and every node destroys the old one.
    SmkNext,
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
        /// The tenant the key will belong to.
        #[serde(default = "crate::identity::default_tenant")]
        tenant: String,
    },
}

impl CeremonyTarget {
    /// The algorithm of each component.
    pub fn alg(&self) -> KeyAlg {
        match self {
            CeremonyTarget::Smk | CeremonyTarget::SmkNext => KeyAlg::Aes256,
            CeremonyTarget::Key { alg, .. } => *alg,
        }
    }

    /// The tenant of the key it forms (`None`: the SMK, the bureau's).
    pub fn tenant(&self) -> Option<&str> {
        match self {
            CeremonyTarget::Smk | CeremonyTarget::SmkNext => None,
            CeremonyTarget::Key { tenant, .. } => Some(tenant),
        }
    }

    /// Whether a caller acting for `tenants` may see and take part in it.
    pub fn visible_to(&self, tenants: &crate::identity::Tenants) -> bool {
        self.tenant().is_none_or(|t| tenants.covers(t))
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
    /// Prune the audit records an archive holds (`quill audit archive`), once two custodians
    /// granted it; its trailer names the records, their hashes and the archive's digest, MACed
    /// with the cluster's audit key.
    AuditPrune {
        /// The archive's trailer.
        archive: crate::audit::ArchiveTrailer,
    },
    /// Certify an issuer public key with a CA key of this cluster's EMV CA (asked by a CA
    /// officer; the request is checked when asked and again when the certificate is made).
    Certify {
        /// The CA key, `RID/II`.
        ca: String,
        /// The request's layout: `visa` or `mastercard`.
        format: String,
        /// The certification request as received.
        request: Vec<u8>,
        /// A Mastercard-style request's hash file.
        hash_file: Option<Vec<u8>>,
        /// What it asks, for the custodians: issuer identifier, expiry (MMYY), the certified
        /// key's fingerprint.
        issuer_id: String,
        expiry: String,
        key_fingerprint: String,
    },
}

impl fmt::Display for ApprovalAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApprovalAction::SmkToNode { node } => write!(f, "wrap the SMK to node {node}"),
            ApprovalAction::Export { key, kbpk } => write!(f, "export {key} under {kbpk}"),
            ApprovalAction::Destroy { key } => write!(f, "destroy {key}"),
            ApprovalAction::Certify { ca, issuer_id, expiry, key_fingerprint, .. } => write!(
                f,
                "certify issuer {issuer_id}'s key {} until {expiry} with CA key {ca}",
                key_fingerprint.get(..16).unwrap_or(key_fingerprint)
            ),
            ApprovalAction::AuditPrune { archive: a } => write!(
                f,
                "prune audit records {}..={} (archived, sha256 {})",
                a.first,
                a.last,
                a.sha256.get(..16).unwrap_or(&a.sha256)
            ),
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

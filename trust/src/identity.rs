//! Who acts: node ids, roles and actors. A leaf module every layer may import; it imports
//! nothing of the node.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Raft node ids are small integers chosen when a node joins.
pub type NodeId = u64;

/// What a caller may do: the role its client certificate names (`quill:role/<role>/<name>`), one
/// per certificate. The state machine checks it per command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Starts ceremonies, manages keys and membership.
    Admin,
    /// Holds a key component; grants or denies dual-control approvals.
    Custodian,
    /// Runs batches; may use keys, not change them.
    Operator,
    /// Reads the audit chain.
    Auditor,
    /// A partner system exchanging keys (the key-exchange endpoints; nothing else).
    Partner,
    /// Runs the EMV CA (the CA endpoints; nothing else).
    CaOfficer,
    /// A branch printer asking for one card (instant issuance; nothing else).
    Branch,
    /// A cluster node acting on its own (enrolment, SMK formation, audit seals).
    Node,
}

impl Role {
    /// Every role, for help texts.
    pub const ALL: [Role; 8] = [
        Role::Admin,
        Role::Custodian,
        Role::Operator,
        Role::Auditor,
        Role::Partner,
        Role::CaOfficer,
        Role::Branch,
        Role::Node,
    ];

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Custodian => "custodian",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Partner => "partner",
            Role::CaOfficer => "ca-officer",
            Role::Branch => "branch",
            Role::Node => "node",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            format!(
                "unknown role {s:?} (one of admin, custodian, operator, auditor, partner, ca-officer, branch, node)"
            )
        })
    }
}

/// Who did something: an identity and its role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Actor {
    /// The identity (a person's or a node's name).
    pub name: String,
    /// The role it acted in.
    pub role: Role,
}

impl Actor {
    /// A node acting for itself.
    pub fn node(id: NodeId) -> Self {
        Actor { name: format!("node-{id}"), role: Role::Node }
    }

    /// Parse `role:name` (the CLI's `--as` dev shortcut; certificates name `quill:role/<role>/<name>`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (role, name) = s.split_once(':').ok_or_else(|| format!("actor {s:?} is not role:name"))?;
        let role: Role = role.parse()?;
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(format!("actor name {name:?}: 1-64 characters of A-Z a-z 0-9 - _ . @"));
        }
        Ok(Actor { name: name.to_string(), role })
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

/// The certificate a caller presented, as the cluster records it: its serial (revocation is by
/// serial) and its public key's fingerprint (two certificates of one key are one person, for
/// dual control).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CertRef {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// SHA-256 of the SubjectPublicKeyInfo (first 16 bytes), hex.
    pub key_fp: String,
}

/// An authenticated caller: the identity its certificate names and the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who, in which role.
    pub actor: Actor,
    /// The certificate it presented.
    pub cert: CertRef,
}

//! Who acts: node ids, roles and actors. A leaf module every layer may import; it imports
//! nothing of the node.

use std::collections::BTreeSet;
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

/// The tenant of everything made before tenants existed, and the one tenant of a certificate that
/// names none.
pub const DEFAULT_TENANT: &str = "default";

/// [`DEFAULT_TENANT`] as a `String` (serde's default for records made before tenants).
pub fn default_tenant() -> String {
    DEFAULT_TENANT.to_string()
}

/// The tenants (the issuers a bureau prepares cards for) a certificate may act for. A client
/// certificate names them as SAN URIs `quill:tenant/<name>` beside its identity, or
/// `quill:tenant/*` for every tenant (bureau staff: custodians, auditors); a certificate naming
/// none acts for [`DEFAULT_TENANT`] only. Keys, issuer keys and jobs belong to one tenant, and
/// a caller sees and uses only those of the tenants its certificate names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tenants {
    /// Every tenant.
    All,
    /// These tenants only (never empty).
    Only(BTreeSet<String>),
}

impl Default for Tenants {
    /// [`DEFAULT_TENANT`] only: what a certificate naming no tenant may act for.
    fn default() -> Self {
        Tenants::Only(BTreeSet::from([DEFAULT_TENANT.to_string()]))
    }
}

impl Tenants {
    /// The tenants named, `*` standing for all; none named is [`Tenants::default`].
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        for n in names {
            if n == "*" {
                return Ok(Tenants::All);
            }
            check_tenant(n)?;
            set.insert(n.to_string());
        }
        Ok(if set.is_empty() { Tenants::default() } else { Tenants::Only(set) })
    }

    /// Whether these are the bureau's own: every tenant, or none named (the bureau's `default`).
    /// A certificate bound to named tenants is a client issuer's staff.
    pub fn is_bureau(&self) -> bool {
        matches!(self, Tenants::All) || *self == Tenants::default()
    }

    /// Whether `tenant` is one of them.
    pub fn covers(&self, tenant: &str) -> bool {
        match self {
            Tenants::All => true,
            Tenants::Only(set) => set.contains(tenant),
        }
    }

    /// The tenant a request acts in: `asked` when given (and covered), else the one tenant named,
    /// else [`DEFAULT_TENANT`] when covered. Refused naming the tenants that may be asked.
    pub fn resolve(&self, asked: &str) -> Result<String, String> {
        if !asked.is_empty() {
            check_tenant(asked)?;
            return if self.covers(asked) {
                Ok(asked.to_string())
            } else {
                Err(format!("this certificate may not act for tenant {asked:?} (it names {self})"))
            };
        }
        match self {
            Tenants::Only(set) if set.len() == 1 => Ok(set.iter().next().cloned().unwrap_or_default()),
            t if t.covers(DEFAULT_TENANT) => Ok(DEFAULT_TENANT.to_string()),
            t => Err(format!("name the tenant (--tenant): this certificate acts for {t}")),
        }
    }

    /// The SAN URIs naming them (none for [`Tenants::default`]).
    pub fn uris(&self) -> Vec<String> {
        match self {
            Tenants::All => vec![format!("{TENANT_URI}*")],
            t if *t == Tenants::default() => Vec::new(),
            Tenants::Only(set) => set.iter().map(|n| format!("{TENANT_URI}{n}")).collect(),
        }
    }
}

impl fmt::Display for Tenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tenants::All => f.write_str("every tenant"),
            Tenants::Only(set) => {
                let names: Vec<&str> = set.iter().map(String::as_str).collect();
                write!(f, "tenant {}", names.join(", "))
            }
        }
    }
}

/// The SAN URI prefix of a tenant a certificate may act for.
pub const TENANT_URI: &str = "quill:tenant/";

/// A tenant's name: 1-32 characters of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn check_tenant(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!("tenant {name:?}: 1-32 characters of a-z 0-9 - _ . (first a letter or digit)"))
    }
}

/// The certificate a caller presented, as the cluster records it: its serial (revocation is by
/// serial), its public key's fingerprint (two certificates of one key are one person, for
/// dual control) and the tenants it may act for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CertRef {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// SHA-256 of the SubjectPublicKeyInfo (first 16 bytes), hex.
    pub key_fp: String,
    /// The tenants it may act for (entries written before tenants existed: the default tenant).
    #[serde(default)]
    pub tenants: Tenants,
}

/// An authenticated caller: the identity its certificate names and the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who, in which role.
    pub actor: Actor,
    /// The certificate it presented.
    pub cert: CertRef,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tenants_resolve_to_what_the_certificate_names() {
        let none = Tenants::parse([]).expect("none");
        assert_eq!(none, Tenants::default());
        assert_eq!(none.resolve(""), Ok(DEFAULT_TENANT.into()));
        assert!(none.resolve("bank-b").is_err());
        assert!(none.uris().is_empty());
        assert!(none.is_bureau());
        let one = Tenants::parse(["bank-a"]).expect("one");
        assert!(!one.is_bureau());
        assert_eq!(one.resolve(""), Ok("bank-a".into()));
        assert!(one.resolve(DEFAULT_TENANT).unwrap_err().contains("may not act for tenant \"default\""));
        let two = Tenants::parse(["bank-a", "bank-b"]).expect("two");
        assert!(two.resolve("").unwrap_err().contains("name the tenant"));
        assert_eq!(two.resolve("bank-b"), Ok("bank-b".into()));
        let all = Tenants::parse(["bank-a", "*"]).expect("all");
        assert_eq!(all, Tenants::All);
        assert!(all.is_bureau());
        assert_eq!(all.resolve(""), Ok(DEFAULT_TENANT.into()));
        assert_eq!(all.uris(), vec!["quill:tenant/*".to_string()]);
        for bad in ["", "Bank", "-a", "a/b", "a b", &"x".repeat(33)] {
            assert!(Tenants::parse([bad]).is_err(), "{bad:?} accepted");
            assert!(all.resolve(bad).is_err() || bad.is_empty(), "{bad:?} resolved");
        }
    }

    #[test]
    fn an_entry_written_before_tenants_reads_as_the_default_tenant() {
        let c: CertRef = serde_json::from_str(r#"{"serial":"01","key_fp":"ab"}"#).expect("old entry");
        assert_eq!(c.tenants, Tenants::default());
    }
}

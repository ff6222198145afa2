//! What every domain of the state machine (keys, jobs, CA/issuers, audit) shares: the context of
//! the entry being applied ([`Ctx`]), the one applied-or-refused outcome ([`Applied`]) and the one
//! role check ([`require_role`]). A leaf below the domains, so that `state` (which dispatches to
//! them) and the domains never import each other in a circle.

use serde::{Deserialize, Serialize};

use crate::identity::{Actor, CertRef, NodeId, Role, Tenants};
use crate::store::StoreError;

/// The context of the entry being applied: all a domain may know besides the command and the
/// stored state. Apply reads no clock and no randomness; the leader stamped `time_ms`.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    /// Log index of the entry (a claim's fencing token).
    pub log_index: u64,
    /// Leader time of the request (ms since the epoch).
    pub time_ms: u64,
    /// Who asked, as the API established it.
    pub actor: &'a Actor,
    /// The certificate it presented (`None` for a node's own proposals).
    pub cert: Option<&'a CertRef>,
}

impl Ctx<'_> {
    /// The tenants the caller may act for: its certificate's; every tenant for a node's own
    /// proposal (which names no certificate).
    pub fn tenants(&self) -> &Tenants {
        static ALL: Tenants = Tenants::All;
        self.cert.map_or(&ALL, |c| &c.tenants)
    }

    /// Refuse unless the caller may act for `tenant`.
    pub fn require_tenant(&self, tenant: &str) -> Result<(), String> {
        if self.tenants().covers(tenant) {
            return Ok(());
        }
        Err(format!("{} may not act for tenant {tenant:?} (its certificate names {})", self.actor, self.tenants()))
    }
}

/// What applying a domain command did, for the response and the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Done. `object` names what changed (for the audit record), `detail` says how.
    Done {
        /// The object changed, e.g. `key:imk-ac.v1`.
        object: String,
        /// A short description without secrets.
        detail: String,
    },
    /// Refused; nothing changed (the same refusal on every node).
    Rejected {
        /// The object concerned.
        object: String,
        /// Why.
        reason: String,
    },
}

impl Applied {
    /// A `Done` outcome.
    pub fn done(object: impl Into<String>, detail: impl Into<String>) -> Self {
        Applied::Done { object: object.into(), detail: detail.into() }
    }
}

/// Why a domain command did not apply: refused (deterministically, the same on every node;
/// nothing changes but its audit record), or the store failed (the node stops applying). Every
/// domain step returns [`Step`], so `?` carries both.
#[derive(Debug)]
pub enum Fail {
    /// Refused, with the reason.
    Refused(String),
    /// The node's store failed.
    Store(StoreError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

/// A step of a domain command.
pub type Step<T> = Result<T, Fail>;

/// Refuse with `reason`.
pub fn refuse<T>(reason: impl Into<String>) -> Step<T> {
    Err(Fail::Refused(reason.into()))
}

/// A domain command's result as its outcome: done with a detail about `object`, or refused.
pub fn outcome(object: String, step: Step<String>) -> Result<Applied, StoreError> {
    match step {
        Ok(detail) => Ok(Applied::Done { object, detail }),
        Err(Fail::Refused(reason)) => Ok(Applied::Rejected { object, reason }),
        Err(Fail::Store(e)) => Err(e),
    }
}

/// What every role refusal says (the API maps refusals holding it to `PermissionDenied`).
pub const ROLE_REFUSAL: &str = "may not do this (needs role";

/// Refuse unless the actor acts in one of the `allowed` roles.
pub fn require_role(actor: &Actor, allowed: &[Role]) -> Result<(), String> {
    if allowed.contains(&actor.role) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    Err(format!("{actor} {ROLE_REFUSAL} {})", names.join(" or ")))
}

/// Refuse unless the actor is node `node` itself.
pub fn require_node(actor: &Actor, node: NodeId) -> Result<(), String> {
    require_role(actor, &[Role::Node])?;
    if actor.name != Actor::node(node).name {
        return Err(format!("{actor} cannot act for node {node}"));
    }
    Ok(())
}

/// A SHA-256 in hex (64 characters).
pub fn sha256_hex(field: &str, value: &str) -> Result<(), String> {
    if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{field} {:?} is not a SHA-256 in hex (64 hex digits)", clip(value)));
    }
    Ok(())
}

/// Free text: at most `max` bytes, no control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{field} is {} bytes, over {max}", value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} {:?} holds a control character", clip(value)));
    }
    Ok(())
}

/// An id or label: 1-64 of `A-Z a-z 0-9 - _ .`.
pub fn id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!("{field} {:?}: 1-64 characters of A-Z a-z 0-9 - _ .", clip(value)));
    }
    Ok(())
}

/// At most 40 characters of `s` (cut on a character boundary), for error messages.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

//! Revoked certificates: a replicated list of serials, kept by admins. Every node refuses a
//! revoked certificate on its listeners (re-read whenever the applied index moves), and apply
//! refuses any request made with one at the point in the log where it lands.

use std::collections::BTreeSet;

use super::*;

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Serial, lower-case hex without leading zero bytes.
    pub serial: String,
    /// Why (key compromise, left the company, ...).
    pub reason: String,
    /// Who revoked it.
    pub by: Actor,
    /// When (leader time, ms).
    pub time_ms: u64,
}

/// Every revoked serial (what each node's listeners refuse).
pub fn revoked_serials(kv: &dyn Kv) -> Result<BTreeSet<String>, StoreError> {
    Ok(revocations(kv)?.into_iter().map(|r| r.serial).collect())
}

/// Every revocation, in serial order.
pub fn revocations(kv: &dyn Kv) -> Result<Vec<Revoked>, StoreError> {
    scan(kv, key::REVOKED)
}

/// Is `serial` revoked? One point read: apply asks it for every request made with a certificate.
pub fn is_revoked(kv: &dyn Kv, serial: &str) -> Result<bool, StoreError> {
    Ok(kv.get(format!("{}{serial}", key::REVOKED).as_bytes())?.is_some())
}

/// A serial as the cluster writes it: hex (`:` separators and a `0x` prefix allowed), lower case,
/// without leading zero bytes.
pub fn normalize_serial(serial: &str) -> Option<String> {
    let hexed: String = serial.trim().trim_start_matches("0x").chars().filter(|c| *c != ':').collect();
    if hexed.is_empty() || hexed.len() > 64 || !hexed.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if hexed.len() % 2 == 1 { format!("0{hexed}") } else { hexed };
    let bytes = hex::decode(padded).ok()?;
    Some(crate::tls::serial_hex(&bytes))
}

impl State<'_> {
    pub(super) fn revoke(
        &mut self,
        ctx: &Ctx<'_>,
        serial: String,
        reason: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        let Some(serial) = normalize_serial(&serial) else {
            return Ok(refuse(format!("serial {serial:?} is not a hex certificate serial")));
        };
        if reason.trim().is_empty() || reason.len() > 200 {
            return Ok(refuse("a revocation needs a reason of 1-200 characters"));
        }
        if ctx.cert.is_some_and(|c| c.serial == serial) {
            return Ok(refuse("an admin cannot revoke the certificate it is using"));
        }
        if is_revoked(self.kv, &serial)? {
            return Ok(refuse(format!("certificate {serial} is already revoked")));
        }
        let detail = format!("certificate {serial} revoked: {reason}");
        let rec = Revoked { serial: serial.clone(), reason, by: ctx.actor.clone(), time_ms: ctx.time_ms };
        self.put(format!("{}{serial}", key::REVOKED), &rec)?;
        Ok(Ok(Applied::done(format!("cert:{serial}"), detail)))
    }
}

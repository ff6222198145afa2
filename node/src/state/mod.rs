//! The state machine's logic, apart from its storage: how one request changes the replicated data.
//!
//! `raft/` stores entries and calls [`apply`] for each request (deduplication and the leader's
//! packed batches stay there). Here a request's command goes to its domain ([`Domain`]: keys,
//! jobs, the Raft benchmark's key space) through a [`Scoped`] view, so a domain's writes are
//! staged, land only if the command is done, and can never leave the domain's own key prefix; then
//! the request's audit record is appended, in the same batch. Every refusal is an
//! [`Outcome::Rejected`], the same on every node, and audited like a success.
//!
//! Apply is total: it returns an outcome for any command a log entry can hold (the property test
//! in `tests.rs` throws mutated commands of every domain at it). What a client may send at all is
//! checked before proposing, by [`validate::client_command`].

mod scoped;
#[cfg(test)]
mod tests;
pub mod validate;

pub use self::scoped::{Scoped, Writes};
pub use crate::domain::{Applied, Ctx};
use crate::identity::Role;
use crate::jobs::JobCommand;
use crate::keys::KeyCommand;
use crate::raft::{Command, Outcome, Request, encode_command};
use crate::store::{Kv, StoreError};
use crate::{audit, jobs, keys};

/// The key space of the Raft benchmark's `Put` (shared with no domain).
pub const BENCH_PREFIX: &str = "bench/";

/// A part of the replicated state with its own commands and its own key prefix.
pub trait Domain {
    /// The domain's commands.
    type Command;
    /// Every key the domain writes starts with this.
    const PREFIX: &'static str;
    /// The audit action name of a command.
    fn action(cmd: &Self::Command) -> &'static str;
    /// The object a command is about (named in a refusal).
    fn object(cmd: &Self::Command) -> String;
    /// Apply `cmd`: deterministic, never panics, refusals through [`Applied::Rejected`].
    fn apply(kv: &mut dyn Kv, ctx: &Ctx<'_>, cmd: Self::Command) -> Result<Applied, StoreError>;
}

/// Key management: enrolment, ceremonies, SMK, inventory, approvals, audit keys, CA and issuers.
pub struct Keys;
/// Batch jobs.
pub struct Jobs;
/// The Raft benchmark's plain key-value writes, confined to [`BENCH_PREFIX`].
pub struct Bench;

impl Domain for Keys {
    type Command = KeyCommand;
    const PREFIX: &'static str = "keys/";
    fn action(cmd: &KeyCommand) -> &'static str {
        cmd.action()
    }
    fn object(cmd: &KeyCommand) -> String {
        cmd.object()
    }
    fn apply(kv: &mut dyn Kv, ctx: &Ctx<'_>, cmd: KeyCommand) -> Result<Applied, StoreError> {
        keys::apply::apply(kv, ctx, cmd)
    }
}

impl Domain for Jobs {
    type Command = JobCommand;
    const PREFIX: &'static str = "jobs/";
    fn action(cmd: &JobCommand) -> &'static str {
        cmd.action()
    }
    fn object(cmd: &JobCommand) -> String {
        cmd.object()
    }
    fn apply(kv: &mut dyn Kv, ctx: &Ctx<'_>, cmd: JobCommand) -> Result<Applied, StoreError> {
        jobs::apply(kv, ctx, cmd)
    }
}

/// A benchmark write: `(key, value)`.
pub type BenchPut = (String, Vec<u8>);

impl Domain for Bench {
    type Command = BenchPut;
    const PREFIX: &'static str = BENCH_PREFIX;
    fn action(_: &BenchPut) -> &'static str {
        "bench.put"
    }
    fn object(cmd: &BenchPut) -> String {
        format!("kv:{}", cmd.0)
    }
    fn apply(kv: &mut dyn Kv, ctx: &Ctx<'_>, (key, value): BenchPut) -> Result<Applied, StoreError> {
        let object = format!("kv:{key}");
        if let Err(reason) = crate::domain::require_role(ctx.actor, &[Role::Operator, Role::Admin])
            .and_then(|()| validate::bench_key(&key))
        {
            return Ok(Applied::Rejected { object, reason });
        }
        let replaced = kv.get(key.as_bytes())?.is_some();
        kv.put(key.as_bytes(), value);
        Ok(Applied::done(object, format!("replaced={replaced}")))
    }
}

/// Apply `cmd` of domain `D` through a [`Scoped`] view: the writes land in `kv` only if the
/// command is done and stayed inside `D::PREFIX`.
pub fn apply_domain<D: Domain>(kv: &mut dyn Kv, ctx: &Ctx<'_>, cmd: D::Command) -> Result<Applied, StoreError> {
    let object = D::object(&cmd);
    let mut view = Scoped::new(&*kv, D::PREFIX);
    let applied = D::apply(&mut view, ctx, cmd)?;
    if let Applied::Rejected { .. } = applied {
        return Ok(applied);
    }
    match view.finish() {
        Ok(writes) => {
            writes.land(kv);
            Ok(applied)
        }
        Err(reason) => Ok(Applied::Rejected { object, reason }),
    }
}

/// [`apply_domain`], unless the caller's certificate is `revoked` (then refused with that reason).
fn guarded<D: Domain>(
    kv: &mut dyn Kv,
    ctx: &Ctx<'_>,
    cmd: D::Command,
    revoked: Option<String>,
) -> Result<Applied, StoreError> {
    match revoked {
        Some(reason) => Ok(Applied::Rejected { object: D::object(&cmd), reason }),
        None => apply_domain::<D>(kv, ctx, cmd),
    }
}

/// `quill audit prune`: an auditor prunes the records of an archive that two custodians approved
/// (the approval names the archive's trailer); the approval is then done. Refused unless the
/// archive still describes the live chain's first records ([`audit::check_archive`]).
fn audit_prune(kv: &mut dyn Kv, ctx: &Ctx<'_>, approval: &str, revoked: Option<String>) -> Result<Applied, StoreError> {
    use crate::keys::apply::{key, read};
    use crate::keys::model::{Approval, ApprovalAction, ApprovalState};
    let object = format!("approval:{approval}");
    let refuse = |reason: String| Ok(Applied::Rejected { object: object.clone(), reason });
    if let Some(reason) = revoked {
        return refuse(reason);
    }
    if let Err(reason) = crate::domain::require_role(ctx.actor, &[Role::Auditor]) {
        return refuse(reason);
    }
    let at = format!("{}{approval}", key::APPROVAL);
    let Some(mut a) = read::<Approval>(&*kv, &at)? else { return refuse(format!("no approval {approval}")) };
    let ApprovalAction::AuditPrune { archive } = a.action.clone() else {
        return refuse(format!("approval {approval} is not a prune of archived audit records ({})", a.action));
    };
    if a.state != ApprovalState::Approved {
        return refuse(format!("approval {approval} is {:?}, not approved", a.state).to_lowercase());
    }
    if ctx.time_ms >= a.expires_ms {
        return refuse(format!("approval {approval} expired"));
    }
    match audit::prune(kv, &archive, approval, ctx.time_ms)? {
        Err(reason) => refuse(reason),
        Ok(detail) => {
            a.state = ApprovalState::Done;
            crate::store::put_typed(kv, at.as_bytes(), &a)?;
            Ok(Applied::done(format!("audit:{}..={}", archive.first, archive.last), detail))
        }
    }
}

/// Whether `cmd`, if done, may erase data: a job's purge (acknowledged, cancelled, expired) or a
/// key destroyed by a granted approval. The node then erases the bytes from its files
/// ([`crate::runtime::eraser`]).
pub fn erases(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Jobs(JobCommand::Ack { .. } | JobCommand::Cancel { .. } | JobCommand::Expire { .. })
            | Command::Keys(KeyCommand::ApprovalDecide { grant: true, .. })
    )
}

/// Apply one request (not a batch: `raft/` unpacks those) to `kv` at `log_index`, with its audit
/// record. Deterministic: depends only on the request and the stored state.
pub fn apply(kv: &mut dyn Kv, log_index: u64, req: Request) -> Result<Outcome, StoreError> {
    let digest = audit::request_digest(&req.client_id, req.serial, &req.actor, &encode_command(&req.cmd));
    let ctx = Ctx { log_index, time_ms: req.time_ms, actor: &req.actor, cert: req.cert.as_ref() };
    // A request made with a certificate revoked before this point of the log is refused (and
    // audited), whatever it asks.
    let revoked = match (&req.cert, &req.cmd) {
        (_, Command::Noop | Command::HashCheck) | (None, _) => None,
        (Some(c), _) => crate::keys::apply::is_revoked(&*kv, &c.serial)?
            .then(|| format!("certificate {} of {} is revoked", c.serial, req.actor)),
    };
    let mut put_replaced = None;
    // An operator's reason for `--force`, sealed under the audit encryption key, goes into the
    // record as it came.
    let note = match &req.cmd {
        Command::Jobs(JobCommand::Create { force: true, reason, .. }) => reason.as_deref().cloned(),
        _ => None,
    };
    let (action, applied) = match req.cmd {
        Command::Noop => return Ok(Outcome::Noop),
        // The state machine hashes its state after this entry (`raft::state_machine`); nothing to
        // apply. A node's own command: a client cannot send one (`validate`).
        Command::HashCheck => return Ok(Outcome::Noop),
        Command::Batch(_) => ("batch", Applied::Rejected { object: String::new(), reason: "nested batch".into() }),
        Command::Put { key, value } => {
            let cmd = (key, value);
            if revoked.is_none() {
                put_replaced = Some(kv.get(cmd.0.as_bytes())?.is_some());
            }
            (Bench::action(&cmd), guarded::<Bench>(kv, &ctx, cmd, revoked)?)
        }
        Command::Keys(cmd) => (Keys::action(&cmd), guarded::<Keys>(kv, &ctx, cmd, revoked)?),
        Command::Jobs(cmd) => (Jobs::action(&cmd), guarded::<Jobs>(kv, &ctx, cmd, revoked)?),
        Command::AuditSeal { seq, hash, mac } => {
            let object = format!("audit:{seq}");
            let refused = crate::domain::require_role(ctx.actor, &[Role::Node])
                .err()
                .map_or_else(|| audit::check_seal(&*kv, seq, &hash), |reason| Ok(Err(reason)))?;
            match refused {
                Err(reason) => ("audit.seal", Applied::Rejected { object, reason }),
                Ok(()) => {
                    let detail = format!("sealed records 1..={seq}");
                    let rec = audit::NewRecord {
                        log_index,
                        time_ms: req.time_ms,
                        actor: &req.actor,
                        action: "audit.seal",
                        object: &object,
                        outcome: format!("ok: {detail}"),
                        request: digest,
                        mac: None,
                        seal: Some(audit::Seal { seq, hash, mac }),
                        note: None,
                    };
                    audit::append(kv, rec)?;
                    return Ok(Outcome::Done { object, detail });
                }
            }
        }
        Command::AuditPrune { approval } => ("audit.prune", audit_prune(kv, &ctx, &approval, revoked)?),
    };
    let (object, text, outcome) = match applied {
        Applied::Done { object, detail } => {
            let text = format!("ok: {detail}");
            match put_replaced {
                Some(replaced) => (object, text, Outcome::Put { replaced }),
                None => (object.clone(), text, Outcome::Done { object, detail }),
            }
        }
        Applied::Rejected { object, reason } => (object, format!("rejected: {reason}"), Outcome::Rejected { reason }),
    };
    let rec = audit::NewRecord {
        log_index,
        time_ms: req.time_ms,
        actor: &req.actor,
        action,
        object: &object,
        outcome: text,
        request: digest,
        mac: req.audit_mac,
        seal: None,
        note,
    };
    audit::append(kv, rec)?;
    Ok(outcome)
}

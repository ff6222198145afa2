//! What a client may send: checked by the API before a command is proposed, so that a malformed
//! or cluster-only command never reaches the log. Apply checks again where its outcome depends on
//! it (it must be total on any input), but a refusal here costs no log entry.

use super::BENCH_PREFIX;
pub use crate::domain::{clip, id, sha256_hex, text};
use crate::jobs::JobCommand;
use crate::keys::KeyCommand;
use crate::raft::Command;

/// Longest benchmark key and value.
pub const MAX_BENCH_KEY: usize = 256;
/// Longest benchmark value.
pub const MAX_BENCH_VALUE: usize = 1 << 20;

/// Check a command that arrived from outside the node (a client, or a peer forwarding a client's
/// request). Refused: what only the cluster builds (a batch of requests, an audit seal), a
/// benchmark write outside `bench/`, malformed fields.
pub fn client_command(cmd: &Command) -> Result<(), String> {
    match cmd {
        Command::Noop => Ok(()),
        Command::HashCheck => Err("a hash check is proposed by the leader; a client cannot send one".into()),
        Command::Batch(_) => Err("a batch of requests is built by the leader; a client cannot send one".into()),
        Command::AuditSeal { .. } => {
            Err("audit seals are made by the cluster's nodes; a client cannot send one".into())
        }
        Command::AuditPrune { approval } => id("approval id", approval),
        Command::Put { key, value } => {
            bench_key(key)?;
            if value.len() > MAX_BENCH_VALUE {
                return Err(format!("value of {} bytes is over {MAX_BENCH_VALUE}", value.len()));
            }
            Ok(())
        }
        Command::Keys(k) => key_command(k),
        Command::Jobs(j) => job_command(j),
    }
}

/// A benchmark key: under `bench/`, at most [`MAX_BENCH_KEY`] bytes, no control characters.
pub fn bench_key(key: &str) -> Result<(), String> {
    if !key.starts_with(BENCH_PREFIX) || key.len() == BENCH_PREFIX.len() {
        return Err(format!("key {:?}: plain writes and reads are confined to {BENCH_PREFIX}…", clip(key)));
    }
    text("key", key, MAX_BENCH_KEY)
}

fn key_command(cmd: &KeyCommand) -> Result<(), String> {
    match cmd {
        KeyCommand::CeremonyStart { id: c, .. } | KeyCommand::CeremonyCancel { id: c } => id("ceremony id", c),
        KeyCommand::CeremonySubmit { id: c, sealed, .. } => {
            id("ceremony id", c)?;
            if sealed.len() > 64 {
                return Err(format!("{} sealed copies: more than any cluster's nodes", sealed.len()));
            }
            Ok(())
        }
        KeyCommand::KeySetState { id: k, .. } => text("key id", k, 80),
        KeyCommand::ApprovalRequest {
            id: a,
            action: crate::keys::model::ApprovalAction::Certify { request, hash_file, .. },
            ..
        } => {
            id("approval id", a)?;
            // A request is at most 5 + 4 + 3 + 2 + 4 + 248 + 3 + 248 bytes.
            if request.len() > 1024 || hash_file.as_ref().is_some_and(|h| h.len() > 64) {
                return Err("a certification request over 1 KiB or a hash file over 64 bytes".into());
            }
            Ok(())
        }
        KeyCommand::ApprovalRequest { id: a, .. } | KeyCommand::ApprovalDecide { id: a, .. } => id("approval id", a),
        KeyCommand::ExportDone { approval } => id("approval id", approval),
        KeyCommand::KeyCreate { label, tenant, .. } | KeyCommand::IssuerKeyCreate { label, tenant, .. } => {
            id("label", label)?;
            crate::identity::check_tenant(tenant)
        }
        KeyCommand::CaKeyImport { rid, modulus, exponent, .. } => {
            if rid.len() != 10 || !rid.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("RID {:?} is not 5 bytes in hex", clip(rid)));
            }
            if modulus.len() > 256 || exponent.len() > 3 {
                return Err("CA key: modulus over 2048 bits or exponent over 3 bytes".into());
            }
            Ok(())
        }
        KeyCommand::HostPathUsed { operation, what, module, .. } => {
            text("operation", operation, 128)?;
            text("what", what, 1024)?;
            text("module", module, 1024)
        }
        KeyCommand::EnrollNode { hsm, .. } => text("hsm", hsm, 8192),
        KeyCommand::SmkFormed { ceremony, .. } | KeyCommand::SmkNextFormed { ceremony, .. } => {
            id("ceremony id", ceremony)
        }
        KeyCommand::SmkSwitch { ceremony, blocks, rsa, .. } => {
            id("ceremony id", ceremony)?;
            // A block at rest is a few hundred bytes, an RSA key under 4 KiB.
            if blocks.iter().any(|(_, w)| w.blob.len() > 1024) || rsa.iter().any(|(_, k)| k.blob.len() > 4096) {
                return Err("a key block over 1 KiB or an RSA key over 4 KiB in an SMK switch".into());
            }
            Ok(())
        }
        KeyCommand::OldSmkDestroyed { .. } => Ok(()),
        KeyCommand::SmkGranted { approval, .. } => id("approval id", approval),
        KeyCommand::IssuerCertImport { key, .. } => key.as_deref().map_or(Ok(()), |k| id("issuer key", k)),
        KeyCommand::SmkInstalled { .. } | KeyCommand::AuditKeysSet { .. } => Ok(()),
        KeyCommand::AuditDecrypt { from, to } => {
            if *from == 0 || from > to {
                return Err(format!("records {from}..={to} are not a range"));
            }
            Ok(())
        }
        KeyCommand::Alarm { what, .. } => text("what", what, 1024),
        KeyCommand::Denied { call, reason } => {
            text("call", call, 128)?;
            text("reason", reason, 1024)
        }
        KeyCommand::CaKeyCreate { rid, expiry, ranges, key, .. } => {
            if rid.len() != 10 || !rid.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("RID {:?} is not 5 bytes in hex", clip(rid)));
            }
            text("expiry", expiry, 4)?;
            if ranges.len() > 64 {
                return Err(format!("{} issuer ranges: at most 64", ranges.len()));
            }
            for r in ranges {
                text("issuer range", r, 17)?;
            }
            if key.blob.len() > 4096 {
                return Err("an RSA key block over 4 KiB".into());
            }
            Ok(())
        }
        KeyCommand::CaCertified { approval } => id("approval id", approval),
        KeyCommand::CaRevoke { entries, reason } => {
            if entries.is_empty() || entries.len() > 10_000 {
                return Err(format!("{} revocations: 1 to 10,000 at a time", entries.len()));
            }
            for (rid, _, serial) in entries {
                text("RID", rid, 10)?;
                text("serial", serial, 6)?;
            }
            text("reason", reason, 200)
        }
        KeyCommand::TargetSet { name, endpoint, ca_sha256, kbpk } => {
            id("target", name)?;
            crate::keys::apply::targets::check_endpoint(endpoint)?;
            text("CA SHA-256", ca_sha256, 64)?;
            text("key id", kbpk, 80)
        }
        KeyCommand::KeyDelivered { target, approval, kcv, remote_key } => {
            id("target", target)?;
            id("approval id", approval)?;
            text("KCV", kcv, 10)?;
            text("the target's key id", remote_key, 80)
        }
        KeyCommand::CaKeyRevoke { rid, reason, .. } => {
            text("RID", rid, 10)?;
            if reason.trim().is_empty() {
                return Err("a CA key is revoked with a reason".into());
            }
            text("reason", reason, 200)
        }
        KeyCommand::PartnerSet { name, zmk } => {
            id("partner", name)?;
            text("key id", zmk, 80)
        }
        KeyCommand::PartnerShare { name, key, .. } => {
            id("partner", name)?;
            text("key id", key, 80)
        }
        KeyCommand::PartnerImported { label, .. } => id("label", label),
        KeyCommand::PartnerExported { key } => text("key id", key, 80),
        KeyCommand::IssuerRequestSigned { label, what } => {
            id("issuer key", label)?;
            text("what", what, 256)
        }
        KeyCommand::KdhKeySet { key } => {
            if key.blob.len() > 4096 {
                return Err("an RSA key block over 4 KiB".into());
            }
            Ok(())
        }
        KeyCommand::TargetTransported { target, krd, .. } => {
            id("target", target)?;
            sha256_hex("transport key SHA-256", krd)
        }
        KeyCommand::TargetConfirmed { target, kcv, remote_key } => {
            id("target", target)?;
            text("KCV", kcv, 10)?;
            text("the target's key id", remote_key, 80)
        }
        KeyCommand::PartnerKdhSet { name, kdh } => {
            id("partner", name)?;
            if kdh.modulus.len() > 512 || kdh.exponent.len() > 32 {
                return Err("a signing key over 4096 bits".into());
            }
            Ok(())
        }
        KeyCommand::PartnerKbpkReceived { kdh, nonce, .. } => {
            sha256_hex("signing key SHA-256", kdh)?;
            text("nonce", nonce, 32)
        }
        KeyCommand::RevokeCert { serial, reason } => {
            crate::keys::apply::normalize_serial(serial)
                .ok_or_else(|| format!("serial {:?} is not a hex certificate serial", clip(serial)))?;
            text("reason", reason, 200)
        }
    }
}

fn job_command(cmd: &JobCommand) -> Result<(), String> {
    match cmd {
        JobCommand::Create { id: j, product, file, digest, skipped, mac_key, reason, tenant, .. } => {
            id("job id", j)?;
            crate::identity::check_tenant(tenant)?;
            if reason.as_ref().is_some_and(|n| n.sealed.len() > 2048) {
                return Err("the sealed --force reason is over 2048 bytes".into());
            }
            text("product", product, 1024)?;
            text("file name", file, 1024)?;
            sha256_hex("digest", digest)?;
            id("MAC key label", mac_key)?;
            for s in skipped {
                text("skipped record", s, 4096)?;
            }
            Ok(())
        }
        JobCommand::Ack { id: j, delivered } => {
            id("job id", j)?;
            if delivered.len() > 16 {
                return Err(format!("{} delivered streams: a job has three", delivered.len()));
            }
            for (stream, digest) in delivered {
                id("stream", stream)?;
                sha256_hex("delivered digest", digest)?;
            }
            Ok(())
        }
        JobCommand::Complete { id: j, failures, .. } => {
            id("job id", j)?;
            for f in failures {
                text("failure", f, 4096)?;
            }
            Ok(())
        }
        JobCommand::Input { id: j, .. }
        | JobCommand::Start { id: j }
        | JobCommand::Abort { id: j }
        | JobCommand::Claim { id: j, .. }
        | JobCommand::Renew { id: j, .. }
        | JobCommand::Cancel { id: j }
        | JobCommand::Expire { id: j } => id("job id", j),
        JobCommand::DataKeysMoved { keys, .. } => {
            for (j, w) in keys {
                id("job id", j)?;
                if w.blob.len() > 1024 {
                    return Err(format!("job {j}: a data key block over 1 KiB"));
                }
            }
            Ok(())
        }
    }
}

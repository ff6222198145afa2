//! The audit chain: one record per state-changing command, appended by the state machine in the
//! same write batch as the change itself, so the two cannot diverge.
//!
//! Each [`AuditRecord`] holds the hash of its predecessor (`prev`), and the chain head
//! ([`AuditHead`]) holds the hash of the last record, so changing, removing or reordering any
//! record breaks the chain at that record. Records are also MACed with the audit key, which lives
//! only inside the HSMs (wrapped under the SMK in the state):
//!
//! - the node that proposes a command (the leader) MACs its [`request digest`](request_digest)
//!   (client id, serial, actor, command bytes) before proposing it; apply stores that MAC in the
//!   record. Apply itself never calls an HSM, and stays deterministic.
//! - periodically, a node seals the head: an `audit.seal` record carries an HMAC over
//!   (sequence, hash) of the record it seals. A seal covers every record before it, including
//!   the unkeyed records written before the audit key existed (the key ceremony's own records).
//!
//! [`verify`] recomputes the chain and checks every MAC through a caller-supplied function (the
//! node's HSM), and names the first record that does not check. No record holds a secret or
//! cardholder data: objects are ids and labels, details are KCVs and counts.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::model::{Actor, Kcv};
use crate::store::{Kv, StoreError, get_typed, put_typed};

/// State-machine keys of the audit chain.
pub mod key {
    /// The chain head ([`super::AuditHead`]).
    pub const HEAD: &str = "audit/head";
    /// `audit/rec/<seq, 20 digits>` → [`super::AuditRecord`].
    pub const RECORD: &str = "audit/rec/";

    /// The key of record `seq`.
    pub fn record(seq: u64) -> String {
        format!("{RECORD}{seq:020}")
    }
}

/// A 32-byte hash or MAC, shown as hex.
pub type Hash = [u8; 32];

/// The MAC of a record or seal, and which key made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditMac {
    /// KCV of the audit MAC key.
    pub key_kcv: Kcv,
    /// HMAC-SHA-256 over [`mac_input`] (records) or [`seal_input`] (seals).
    pub mac: Hash,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// The Raft log index of the entry that wrote it.
    pub log_index: u64,
    /// Leader time of the request (ms since the epoch).
    pub time_ms: u64,
    /// Who acted.
    pub actor: Actor,
    /// What they did (`ceremony.submit`, `key.create`, …).
    pub action: String,
    /// What it was done to (`ceremony:smk-2026`, `key:imk-ac.v1`, …).
    pub object: String,
    /// `ok: <detail>` or `rejected: <reason>`.
    pub outcome: String,
    /// SHA-256 of the request ([`request_digest`]).
    pub request: Hash,
    /// The proposer's MAC over the request digest; `None` before the audit key existed.
    pub mac: Option<AuditMac>,
    /// For an `audit.seal` record: the sealed record's sequence and hash, MACed.
    pub seal: Option<Seal>,
    /// Hash of the previous record (zeros for the first).
    pub prev: Hash,
}

/// A seal over the chain up to one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The sealed record.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
    /// HMAC over [`seal_input`].
    pub mac: AuditMac,
}

/// The chain head.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Sequence of the last record (0: empty chain).
    pub seq: u64,
    /// Its hash (zeros: empty chain).
    pub hash: Hash,
}

/// What apply needs to write a record.
#[derive(Debug, Clone)]
pub struct NewRecord<'a> {
    /// Log index of the entry.
    pub log_index: u64,
    /// Leader time.
    pub time_ms: u64,
    /// Who.
    pub actor: &'a Actor,
    /// Action name.
    pub action: &'a str,
    /// Object.
    pub object: &'a str,
    /// Outcome text.
    pub outcome: String,
    /// Request digest.
    pub request: Hash,
    /// Proposer's MAC.
    pub mac: Option<AuditMac>,
    /// Seal, for seal records.
    pub seal: Option<Seal>,
}

/// The hash of a record: SHA-256 over a domain tag and the record's canonical (postcard) bytes.
pub fn record_hash(rec: &AuditRecord) -> Hash {
    let mut h = Sha256::new();
    h.update(b"quill-audit-record-v1\0");
    // postcard encodes these plain structs infallibly into a Vec.
    h.update(postcard::to_stdvec(rec).unwrap_or_default());
    h.finalize().into()
}

/// The digest of a request that the proposer MACs: domain tag, client id, serial, actor and the
/// command's wire bytes, each length-prefixed.
pub fn request_digest(client_id: &str, serial: u64, actor: &Actor, command: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(b"quill-audit-request-v1\0");
    for part in [client_id.as_bytes(), actor.name.as_bytes(), actor.role.as_str().as_bytes(), command] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(serial.to_be_bytes());
    h.finalize().into()
}

/// What the audit key MACs for a record.
pub fn mac_input(request: &Hash) -> Vec<u8> {
    let mut v = b"quill-audit-mac-v1\0".to_vec();
    v.extend_from_slice(request);
    v
}

/// What the audit key MACs for a seal.
pub fn seal_input(seq: u64, hash: &Hash) -> Vec<u8> {
    let mut v = b"quill-audit-seal-v1\0".to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(hash);
    v
}

/// The current head.
pub fn head(kv: &dyn Kv) -> Result<AuditHead, StoreError> {
    Ok(get_typed(kv, key::HEAD.as_bytes())?.unwrap_or_default())
}

/// Record `seq`, if present.
pub fn record(kv: &dyn Kv, seq: u64) -> Result<Option<AuditRecord>, StoreError> {
    get_typed(kv, key::record(seq).as_bytes())
}

/// Append a record after the current head and move the head. Returns the record.
pub fn append(kv: &mut dyn Kv, new: NewRecord<'_>) -> Result<AuditRecord, StoreError> {
    let head = head(kv)?;
    let rec = AuditRecord {
        seq: head.seq + 1,
        log_index: new.log_index,
        time_ms: new.time_ms,
        actor: new.actor.clone(),
        action: new.action.to_string(),
        object: new.object.to_string(),
        outcome: new.outcome,
        request: new.request,
        mac: new.mac,
        seal: new.seal,
        prev: head.hash,
    };
    put_typed(kv, key::record(rec.seq).as_bytes(), &rec)?;
    put_typed(kv, key::HEAD.as_bytes(), &AuditHead { seq: rec.seq, hash: record_hash(&rec) })?;
    Ok(rec)
}

/// Whether a seal may be applied: the sealed record exists and has that hash.
pub fn check_seal(kv: &dyn Kv, seq: u64, hash: &Hash) -> Result<Result<(), String>, StoreError> {
    Ok(match record(kv, seq)? {
        None => Err(format!("no audit record {seq} to seal")),
        Some(r) if record_hash(&r) != *hash => Err(format!("audit record {seq} does not have the sealed hash")),
        Some(_) => Ok(()),
    })
}

/// The result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Record MACs checked.
    pub macs: u64,
    /// Records without a MAC (written before the audit key existed).
    pub unkeyed: u64,
    /// Seals checked.
    pub seals: u64,
    /// The last record covered by a checked seal.
    pub sealed_upto: u64,
    /// Head sequence.
    pub head_seq: u64,
    /// Head hash (hex).
    pub head_hash: String,
    /// The first problem: (record sequence, reason). `None`: the chain verifies.
    pub broken: Option<(u64, String)>,
}

/// Recompute the chain from the records under [`key::RECORD`] and check it against the head;
/// `check_mac(mac, input)` checks one MAC with the audit key (`Ok(false)`: wrong MAC, `Err`:
/// could not check). Stops at the first broken record.
pub fn verify(
    kv: &dyn Kv,
    mut check_mac: impl FnMut(&AuditMac, &[u8]) -> Result<bool, String>,
) -> Result<VerifyReport, StoreError> {
    let head = head(kv)?;
    let mut report = VerifyReport { head_seq: head.seq, head_hash: hex::encode(head.hash), ..VerifyReport::default() };
    // Pass 1: decode every record, in key order, checking that keys and sequences agree.
    let mut records: Vec<AuditRecord> = Vec::new();
    for (k, v) in kv.scan_prefix(key::RECORD.as_bytes())? {
        let key_seq: u64 = String::from_utf8_lossy(&k).trim_start_matches(key::RECORD).parse().unwrap_or(0);
        let expect = records.len() as u64 + 1;
        let rec: AuditRecord = match crate::store::codec::decode(&v) {
            Ok(r) => r,
            Err(e) => {
                report.broken = Some((key_seq, format!("record {key_seq} does not decode: {e}")));
                return Ok(report);
            }
        };
        if key_seq != expect {
            report.broken = Some((expect, format!("record {expect} is missing (next stored record is {key_seq})")));
            return Ok(report);
        }
        if rec.seq != key_seq {
            report.broken = Some((key_seq, format!("record {key_seq} was altered: it holds sequence {}", rec.seq)));
            return Ok(report);
        }
        records.push(rec);
    }
    report.records = records.len() as u64;
    let hashes: Vec<Hash> = records.iter().map(record_hash).collect();
    // The hash each record should have, as its successor (or the head) remembers it.
    let remembered = |i: usize| -> Option<Hash> {
        match records.get(i + 1) {
            Some(next) => Some(next.prev),
            None => (head.seq == records.len() as u64).then_some(head.hash),
        }
    };
    // Pass 2: the chain links, then each record's MAC and seal, in order.
    for (i, rec) in records.iter().enumerate() {
        let prev = if i == 0 { [0; 32] } else { hashes[i - 1] };
        if rec.prev != prev {
            // Either this record's `prev` was changed, or the previous record was: if this
            // record still hashes to what its successor remembers, it is intact.
            let culprit = if remembered(i) == Some(hashes[i]) { rec.seq - 1 } else { rec.seq };
            report.broken = Some((
                culprit,
                format!(
                    "record {culprit} was altered: the chain link between records {} and {} is broken",
                    rec.seq - 1,
                    rec.seq
                ),
            ));
            return Ok(report);
        }
        let fail = |reason: String| Some((rec.seq, reason));
        match &rec.mac {
            None => report.unkeyed += 1,
            Some(m) => match check_mac(m, &mac_input(&rec.request)) {
                Ok(true) => report.macs += 1,
                Ok(false) => {
                    report.broken = fail(format!("record {}: the MAC does not verify", rec.seq));
                    return Ok(report);
                }
                Err(e) => {
                    report.broken = fail(format!("record {}: cannot check the MAC: {e}", rec.seq));
                    return Ok(report);
                }
            },
        }
        if let Some(seal) = &rec.seal {
            let sealed = (seal.seq as usize).checked_sub(1).filter(|s| *s < i).map(|s| hashes[s]);
            if sealed != Some(seal.hash) {
                report.broken =
                    fail(format!("record {}: seals record {} with a hash the chain does not have", rec.seq, seal.seq));
                return Ok(report);
            }
            match check_mac(&seal.mac, &seal_input(seal.seq, &seal.hash)) {
                Ok(true) => {
                    report.seals += 1;
                    report.sealed_upto = report.sealed_upto.max(seal.seq);
                }
                Ok(false) => {
                    report.broken = fail(format!("record {}: the seal MAC does not verify", rec.seq));
                    return Ok(report);
                }
                Err(e) => {
                    report.broken = fail(format!("record {}: cannot check the seal MAC: {e}", rec.seq));
                    return Ok(report);
                }
            }
        }
    }
    let n = records.len() as u64;
    if n != head.seq {
        report.broken = Some((n.min(head.seq) + 1, format!("the head says {} records, the chain has {n}", head.seq)));
    } else if n > 0 && hashes[hashes.len() - 1] != head.hash {
        report.broken = Some((n, format!("record {n} was altered: its hash does not match the chain head")));
    }
    Ok(report)
}

/// A record as JSON for `quill audit tail|export` (hashes and MACs in hex).
pub fn to_json(rec: &AuditRecord) -> serde_json::Value {
    serde_json::json!({
        "seq": rec.seq,
        "log_index": rec.log_index,
        "time_ms": rec.time_ms,
        "actor": rec.actor.to_string(),
        "action": rec.action,
        "object": rec.object,
        "outcome": rec.outcome,
        "request": hex::encode(rec.request),
        "mac": rec.mac.as_ref().map(|m| serde_json::json!({"key_kcv": m.key_kcv.to_string(), "mac": hex::encode(m.mac)})),
        "seal": rec.seal.as_ref().map(|s| serde_json::json!({"seq": s.seq, "hash": hex::encode(s.hash), "mac": hex::encode(s.mac.mac)})),
        "prev": hex::encode(rec.prev),
        "hash": hex::encode(record_hash(rec)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::model::Role;
    use crate::store::MemKv;

    fn actor() -> Actor {
        Actor { name: "alice".into(), role: Role::Admin }
    }

    fn add(kv: &mut MemKv, i: u64, mac: bool) -> AuditRecord {
        let a = actor();
        let request = request_digest("c", i, &a, b"cmd");
        let mac = mac.then(|| AuditMac { key_kcv: Kcv("ABCDEF".into()), mac: fake_mac(&mac_input(&request)) });
        append(
            kv,
            NewRecord {
                log_index: 10 + i,
                time_ms: 1000 + i,
                actor: &a,
                action: "key.create",
                object: "key:k.v1",
                outcome: "ok".into(),
                request,
                mac,
                seal: None,
            },
        )
        .expect("append")
    }

    /// A stand-in MAC for unit tests (the real one is HMAC inside an HSM).
    fn fake_mac(input: &[u8]) -> Hash {
        Sha256::digest([b"k".as_slice(), input].concat()).into()
    }

    fn checker(m: &AuditMac, input: &[u8]) -> Result<bool, String> {
        Ok(m.mac == fake_mac(input))
    }

    #[test]
    fn a_clean_chain_verifies() {
        let mut kv = MemKv::default();
        add(&mut kv, 1, false);
        for i in 2..=5 {
            add(&mut kv, i, true);
        }
        let r = verify(&kv, checker).expect("verify");
        assert_eq!((r.records, r.macs, r.unkeyed, r.broken.clone()), (5, 4, 1, None), "{r:?}");
        assert_eq!(r.head_seq, 5);
    }

    #[test]
    fn every_single_byte_flip_is_detected_and_names_its_record() {
        let mut kv = MemKv::default();
        for i in 1..=4 {
            add(&mut kv, i, i > 1);
        }
        let clean = kv.clone();
        for seq in 1..=4u64 {
            let k = key::record(seq).into_bytes();
            let len = clean.0[&k].len();
            for pos in 1..len {
                let mut bad = clean.clone();
                if let Some(v) = bad.0.get_mut(&k) {
                    v[pos] ^= 0x01;
                }
                let r = verify(&bad, checker).expect("verify");
                let (at, why) = r.broken.unwrap_or_else(|| panic!("flip at record {seq} byte {pos} not detected"));
                assert_eq!(at, seq, "flip in record {seq} byte {pos} blamed on {at}: {why}");
            }
        }
    }

    #[test]
    fn a_removed_last_record_is_detected() {
        let mut kv = MemKv::default();
        for i in 1..=3 {
            add(&mut kv, i, true);
        }
        kv.0.remove(key::record(3).as_bytes());
        let r = verify(&kv, checker).expect("verify");
        assert_eq!(r.broken.map(|b| b.0), Some(3));
    }

    #[test]
    fn seals_check_against_the_chain() {
        let mut kv = MemKv::default();
        for i in 1..=3 {
            add(&mut kv, i, false);
        }
        let h2 = record_hash(&record(&kv, 2).expect("read").expect("record 2"));
        assert!(check_seal(&kv, 2, &h2).expect("check").is_ok());
        assert!(check_seal(&kv, 2, &[0; 32]).expect("check").is_err());
        let a = actor();
        let seal = Seal {
            seq: 2,
            hash: h2,
            mac: AuditMac { key_kcv: Kcv("ABCDEF".into()), mac: fake_mac(&seal_input(2, &h2)) },
        };
        append(
            &mut kv,
            NewRecord {
                log_index: 99,
                time_ms: 5,
                actor: &a,
                action: "audit.seal",
                object: "audit:2",
                outcome: "ok".into(),
                request: [1; 32],
                mac: None,
                seal: Some(seal),
            },
        )
        .expect("append");
        let r = verify(&kv, checker).expect("verify");
        assert_eq!((r.seals, r.sealed_upto, r.broken), (1, 2, None));
    }
}

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
//! - every node MACs the whole chain as it applies it: the entry that appends records `a..=b`
//!   also writes, in the same batch, a [`NodeMac`] over `(a, b, hash of record b)` with the
//!   node's own audit key (a persistent HMAC key its HSM generated before the node joined
//!   anything). The record hash covers every field (sequence, time, identity, action, object,
//!   outcome, request digest, previous hash), so one MAC vouches for the whole chain up to `b`,
//!   from the first record on. The MACs stay on the node (`audit_mac` column family: in no
//!   snapshot, in no state hash); a node whose HSM cannot MAC does not apply the entry at all.
//!
//! [`verify`] recomputes the chain, checks every MAC through caller-supplied functions (the node's
//! HSM), requires the node's MACs to cover every record without a gap, requires seals (once the
//! cluster's audit key exists, no record older than [`SEAL_GRACE_MS`] may be unsealed), checks
//! [`Anchor`]s kept outside the cluster, and names the first record that does not check. No
//! record holds a secret or cardholder data: objects are ids and labels, details are KCVs and
//! counts.

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
    /// A sealed note (an operator's reason), if the command carried one.
    pub note: Option<AuditNote>,
    /// Hash of the previous record (zeros for the first).
    pub prev: Hash,
}

/// A field that would reveal more than an id or a count (an operator's reason for `--force`),
/// sealed with AES-GCM under the cluster's audit encryption key by the node that proposed the
/// command; only `quill audit export --decrypt` (an auditor, itself audited) opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditNote {
    /// KCV of the audit encryption key.
    pub key_kcv: Kcv,
    /// IV ‖ ciphertext ‖ tag, with [`note_aad`] of the record's object authenticated.
    pub sealed: Vec<u8>,
}

/// The additional data a note is sealed with: it binds the note to the record's object.
pub fn note_aad(object: &str) -> Vec<u8> {
    let mut v = b"quill-audit-note-v1\0".to_vec();
    v.extend_from_slice(object.as_bytes());
    v
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

/// A node's MAC over the chain up to record `last`, written when it applied the entry that
/// appended records `first..=last` (or, after a snapshot install, over the records the snapshot
/// brought). Kept by that node alone ([`crate::store::Cf::AuditMac`], keyed by `last`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMac {
    /// First record the entry appended.
    pub first: u64,
    /// Last record the entry appended: the MAC covers the chain up to here.
    pub last: u64,
    /// KCV of the node audit key (one per HSM slot).
    pub key_kcv: Kcv,
    /// HMAC-SHA-256 over [`node_mac_input`].
    pub mac: Hash,
    /// Made while applying (`false`) or after installing a snapshot that held the records (`true`).
    pub from_snapshot: bool,
}

/// What a node's audit key MACs for records `first..=last`: the range and the hash of record
/// `last` (which commits to every record before it).
pub fn node_mac_input(first: u64, last: u64, last_hash: &Hash) -> Vec<u8> {
    let mut v = b"quill-audit-node-mac-v1\0".to_vec();
    v.extend_from_slice(&first.to_be_bytes());
    v.extend_from_slice(&last.to_be_bytes());
    v.extend_from_slice(last_hash);
    v
}

/// How old (ms, by record time against the verifier's clock) a record may get before a seal must
/// cover it. The leader seals every few seconds while the chain moves ([`SEAL_EVERY_RECORDS`] or
/// 3 s), so a record a minute old without a seal means a seal was stripped or sealing has failed.
pub const SEAL_GRACE_MS: u64 = 60_000;

/// The leader seals at the latest after this many records, however fast they come.
pub const SEAL_EVERY_RECORDS: u64 = 1_000;

/// A sealed head written outside the cluster (`quill audit anchor`, one JSON line per anchor):
/// whoever holds it can later prove the chain up to `seq` is the one that was anchored, even
/// against someone who rewrote or truncated every node's disk consistently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Format version (1).
    pub anchor: u32,
    /// The sealed record.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
    /// The seal record that carries the MAC.
    pub seal_record: u64,
    /// The seal record's time (ms since the epoch).
    pub time_ms: u64,
    /// KCV of the cluster's audit MAC key.
    pub key_kcv: String,
    /// The seal's HMAC over [`seal_input`] (hex).
    pub mac: String,
}

impl Anchor {
    /// The anchor of seal record `rec`, if it is one.
    pub fn of(rec: &AuditRecord) -> Option<Anchor> {
        let seal = rec.seal.as_ref()?;
        Some(Anchor {
            anchor: 1,
            seq: seal.seq,
            hash: hex::encode(seal.hash),
            seal_record: rec.seq,
            time_ms: rec.time_ms,
            key_kcv: seal.mac.key_kcv.to_string(),
            mac: hex::encode(seal.mac.mac),
        })
    }

    /// Parse one line of an anchors file (`what` names it in errors, e.g. `anchors.jsonl:3`).
    pub fn parse(what: &str, line: &str) -> Result<Anchor, String> {
        let a: Anchor = serde_json::from_str(line).map_err(|e| format!("{what}: not an audit anchor: {e}"))?;
        if a.anchor != 1 {
            return Err(format!("{what}: anchor format {} is not known (1 is)", a.anchor));
        }
        let hex32 = |field: &str, v: &str| -> Result<Hash, String> {
            let b = hex::decode(v).map_err(|_| format!("{what}: {field} is not hex"))?;
            b.try_into().map_err(|_| format!("{what}: {field} is not 32 bytes"))
        };
        hex32("hash", &a.hash)?;
        hex32("mac", &a.mac)?;
        Ok(a)
    }

    fn hash_bytes(&self) -> Hash {
        hex::decode(&self.hash).ok().and_then(|b| b.try_into().ok()).unwrap_or([0; 32])
    }

    fn mac(&self) -> AuditMac {
        let mac = hex::decode(&self.mac).ok().and_then(|b| b.try_into().ok()).unwrap_or([0; 32]);
        AuditMac { key_kcv: Kcv(self.key_kcv.clone()), mac }
    }
}

/// The newest seal of the chain as an [`Anchor`] (walking back from the head), if any.
pub fn latest_anchor(kv: &dyn Kv) -> Result<Option<Anchor>, StoreError> {
    let head = head(kv)?;
    let mut seq = head.seq;
    while seq > 0 && head.seq - seq <= 4 * SEAL_EVERY_RECORDS {
        if let Some(a) = record(kv, seq)?.as_ref().and_then(Anchor::of) {
            return Ok(Some(a));
        }
        seq -= 1;
    }
    Ok(None)
}

/// A check of a request or seal MAC with the cluster's audit key: `Ok(false)` for a wrong MAC.
pub type MacCheck<'a> = &'a mut dyn FnMut(&AuditMac, &[u8]) -> Result<bool, String>;

/// What a node's MAC check answers: `Some(valid)`, or `None` when none of its HSM slots holds the
/// key with that KCV.
pub type NodeMacCheck<'a> = &'a mut dyn FnMut(&NodeMac, &[u8]) -> Result<Option<bool>, String>;

/// Which node MACs [`verify`] holds the chain to.
#[derive(Debug, Clone, Copy)]
pub enum NodeMacs<'a> {
    /// This node's MACs, ordered by `last`: they must cover every record.
    Checked(&'a [NodeMac]),
    /// This node has no HSM, so nothing vouches for its records: a chain with records fails.
    NoHsm,
    /// Not checked (unit tests of the chain alone).
    Skip,
}

/// What [`verify`] checks besides the links of the chain.
pub struct Checks<'a> {
    /// This node's MACs over the chain.
    pub node_macs: NodeMacs<'a>,
    /// Check a node MAC with the node's HSM.
    pub check_node_mac: NodeMacCheck<'a>,
    /// Check a request or seal MAC with the cluster's audit key (`Ok(false)`: wrong MAC).
    pub check_mac: MacCheck<'a>,
    /// Seals are required: the cluster's audit key exists.
    pub seals_required: bool,
    /// The verifier's time (ms since the epoch), for [`SEAL_GRACE_MS`].
    pub now_ms: u64,
    /// Anchors to hold the chain to, each with a name for messages (`FILE:LINE`).
    pub anchors: &'a [(String, Anchor)],
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
    /// Sealed note.
    pub note: Option<AuditNote>,
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
        note: new.note,
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
    /// Records whose request carries no MAC of the cluster's audit key (written before it
    /// existed, or by a node's own agent); this node's MACs cover them all the same.
    pub unkeyed: u64,
    /// This node's MACs checked (each covers the chain up to its last record).
    pub node_macs: u64,
    /// Anchors checked.
    pub anchors: u64,
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

/// Recompute the chain from the records under [`key::RECORD`] and check it against the head, then
/// what `checks` asks: request and seal MACs with the cluster's audit key, this node's MACs
/// covering every record, seals, anchors. Stops at the first problem and names its record.
pub fn verify(kv: &dyn Kv, checks: Checks<'_>) -> Result<VerifyReport, StoreError> {
    let check_mac = checks.check_mac;
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
        return Ok(report);
    } else if n > 0 && hashes[hashes.len() - 1] != head.hash {
        report.broken = Some((n, format!("record {n} was altered: its hash does not match the chain head")));
        return Ok(report);
    }
    report.broken = check_node_macs(&mut report, &hashes, checks.node_macs, checks.check_node_mac)
        .or_else(|| check_sealed(&records, report.sealed_upto, checks.seals_required, checks.now_ms))
        .or_else(|| check_anchors(&mut report, &hashes, checks.anchors, check_mac));
    Ok(report)
}

/// This node's MACs must cover records `1..=n` in consecutive ranges, each verifying.
fn check_node_macs(
    report: &mut VerifyReport,
    hashes: &[Hash],
    macs: NodeMacs<'_>,
    check: NodeMacCheck<'_>,
) -> Option<(u64, String)> {
    let n = hashes.len() as u64;
    let macs = match macs {
        NodeMacs::Checked(macs) => macs,
        NodeMacs::Skip => return None,
        NodeMacs::NoHsm => {
            return (n > 0).then(|| {
                (
                    1,
                    "this node has no HSM, so no MAC of its own vouches for its records: verify on a node with an HSM"
                        .into(),
                )
            });
        }
    };
    let mut next = 1;
    for m in macs {
        if m.first != next || m.last < m.first {
            let upto = if m.first > next { m.first - 1 } else { m.last };
            return Some((
                next,
                format!(
                    "records {next}..={upto} carry no MAC of this node (unMACed records: written without this node's audit key, or its MACs removed)"
                ),
            ));
        }
        if m.last > n {
            return Some((
                n + 1,
                format!(
                    "this node MACed records up to {}, but the chain ends at {n}: records were removed (history truncated)",
                    m.last
                ),
            ));
        }
        let input = node_mac_input(m.first, m.last, &hashes[(m.last - 1) as usize]);
        let range =
            if m.first == m.last { format!("record {}", m.first) } else { format!("records {}..={}", m.first, m.last) };
        match check(m, &input) {
            Ok(Some(true)) => report.node_macs += 1,
            Ok(Some(false)) => {
                return Some((
                    m.first,
                    format!(
                        "{range}: this node's MAC does not verify: the record was altered after this node wrote it"
                    ),
                ));
            }
            Ok(None) => {
                return Some((
                    m.first,
                    format!(
                        "{range}: MACed with node audit key KCV {}, which no HSM slot of this node holds",
                        m.key_kcv
                    ),
                ));
            }
            Err(e) => return Some((m.first, format!("{range}: cannot check this node's MAC: {e}"))),
        }
        next = m.last + 1;
    }
    (next <= n).then(|| {
        (
            next,
            format!(
                "records {next}..={n} carry no MAC of this node (unMACed records: written without this node's audit key, or its MACs removed)"
            ),
        )
    })
}

/// Once seals are required, no record (other than a seal) older than [`SEAL_GRACE_MS`] may lie
/// beyond the last verified seal.
fn check_sealed(records: &[AuditRecord], sealed_upto: u64, required: bool, now_ms: u64) -> Option<(u64, String)> {
    if !required {
        return None;
    }
    let stale = records
        .iter()
        .skip(sealed_upto as usize)
        .find(|r| r.seal.is_none() && r.time_ms.saturating_add(SEAL_GRACE_MS) < now_ms)?;
    Some((
        stale.seq,
        format!(
            "record {} is {} s old and no seal covers it (the last seal covers up to record {sealed_upto}): a seal was stripped, or the leader cannot seal",
            stale.seq,
            now_ms.saturating_sub(stale.time_ms) / 1000
        ),
    ))
}

/// Each anchor's seal MAC must verify with the cluster's audit key, and the chain must still hold
/// the anchored record with the anchored hash.
fn check_anchors(
    report: &mut VerifyReport,
    hashes: &[Hash],
    anchors: &[(String, Anchor)],
    check_mac: MacCheck<'_>,
) -> Option<(u64, String)> {
    for (what, a) in anchors {
        let hash = a.hash_bytes();
        match check_mac(&a.mac(), &seal_input(a.seq, &hash)) {
            Ok(true) => {}
            Ok(false) => {
                return Some((
                    a.seq,
                    format!(
                        "{what}: the anchor's seal MAC does not verify with the cluster's audit key: not an anchor of this chain"
                    ),
                ));
            }
            Err(e) => return Some((a.seq, format!("{what}: cannot check the anchor's seal MAC: {e}"))),
        }
        match a.seq.checked_sub(1).and_then(|i| hashes.get(i as usize)) {
            None => {
                return Some((
                    a.seq,
                    format!(
                        "{what}: record {} was anchored, but the chain now ends at record {}: history was truncated after it was anchored",
                        a.seq,
                        hashes.len()
                    ),
                ));
            }
            Some(h) if *h != hash => {
                return Some((
                    a.seq,
                    format!(
                        "{what}: record {} no longer has the anchored hash: history up to it was rewritten after it was anchored",
                        a.seq
                    ),
                ));
            }
            Some(_) => report.anchors += 1,
        }
    }
    None
}

/// [`verify`] of the chain's links, sequence and seal positions alone, every MAC taken as valid and
/// no node MACs asked for: what a node checks before it MACs records it did not apply itself (a
/// snapshot's), and what the state machine's tests check, where there is no HSM.
pub fn verify_links(kv: &dyn Kv) -> Result<VerifyReport, StoreError> {
    verify(
        kv,
        Checks {
            node_macs: NodeMacs::Skip,
            check_node_mac: &mut |_, _| Ok(Some(true)),
            check_mac: &mut |_, _| Ok(true),
            seals_required: false,
            now_ms: 0,
            anchors: &[],
        },
    )
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
        "note": rec.note.as_ref().map(|n| serde_json::json!({"key_kcv": n.key_kcv.to_string(), "sealed": hex::encode(&n.sealed)})),
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
        add_at(kv, i, mac, 1000 + i)
    }

    fn add_at(kv: &mut MemKv, i: u64, mac: bool, time_ms: u64) -> AuditRecord {
        let a = actor();
        let request = request_digest("c", i, &a, b"cmd");
        let mac = mac.then(|| AuditMac { key_kcv: Kcv("ABCDEF".into()), mac: fake_mac(&mac_input(&request)) });
        append(
            kv,
            NewRecord {
                log_index: 10 + i,
                time_ms,
                actor: &a,
                action: "key.create",
                object: "key:k.v1",
                outcome: "ok".into(),
                request,
                mac,
                seal: None,
                note: None,
            },
        )
        .expect("append")
    }

    /// A stand-in MAC for unit tests (the real one is HMAC inside an HSM).
    fn fake_mac(input: &[u8]) -> Hash {
        Sha256::digest([b"k".as_slice(), input].concat()).into()
    }

    /// A stand-in node MAC (another key than the cluster's).
    fn fake_node_mac(input: &[u8]) -> Hash {
        Sha256::digest([b"node".as_slice(), input].concat()).into()
    }

    /// What a node writes after applying records `first..=` the head.
    fn node_mac(kv: &MemKv, first: u64) -> NodeMac {
        let h = head(kv).expect("head");
        let mac = fake_node_mac(&node_mac_input(first, h.seq, &h.hash));
        NodeMac { first, last: h.seq, key_kcv: Kcv("NODE01".into()), mac, from_snapshot: false }
    }

    fn checker(m: &AuditMac, input: &[u8]) -> Result<bool, String> {
        Ok(m.mac == fake_mac(input))
    }

    fn run(
        kv: &MemKv,
        macs: NodeMacs<'_>,
        seals_required: bool,
        now_ms: u64,
        anchors: &[(String, Anchor)],
    ) -> VerifyReport {
        verify(
            kv,
            Checks {
                node_macs: macs,
                check_node_mac: &mut |m, input| Ok((m.key_kcv.0 == "NODE01").then(|| m.mac == fake_node_mac(input))),
                check_mac: &mut checker,
                seals_required,
                now_ms,
                anchors,
            },
        )
        .expect("verify")
    }

    /// A chain of `n` records, one node MAC per record (one record per entry), request MACs from
    /// record 2 on.
    fn chain(n: u64) -> (MemKv, Vec<NodeMac>) {
        let mut kv = MemKv::default();
        let mut macs = Vec::new();
        for i in 1..=n {
            add(&mut kv, i, i > 1);
            macs.push(node_mac(&kv, i));
        }
        (kv, macs)
    }

    fn seal_now(kv: &mut MemKv, time_ms: u64) -> AuditRecord {
        let h = head(kv).expect("head");
        let seal = Seal {
            seq: h.seq,
            hash: h.hash,
            mac: AuditMac { key_kcv: Kcv("ABCDEF".into()), mac: fake_mac(&seal_input(h.seq, &h.hash)) },
        };
        let a = Actor { name: "node-1".into(), role: Role::Node };
        append(
            kv,
            NewRecord {
                log_index: 99,
                time_ms,
                actor: &a,
                action: "audit.seal",
                object: &format!("audit:{}", h.seq),
                outcome: "ok".into(),
                request: [1; 32],
                mac: None,
                seal: Some(seal),
                note: None,
            },
        )
        .expect("append")
    }

    #[test]
    fn a_clean_chain_verifies() {
        let (kv, macs) = chain(5);
        let r = run(&kv, NodeMacs::Checked(&macs), false, 0, &[]);
        assert_eq!((r.records, r.macs, r.unkeyed, r.node_macs, r.broken.clone()), (5, 4, 1, 5, None), "{r:?}");
        assert_eq!(r.head_seq, 5);
    }

    #[test]
    fn every_single_byte_flip_is_detected_and_names_its_record() {
        let (clean, macs) = chain(4);
        for seq in 1..=4u64 {
            let k = key::record(seq).into_bytes();
            let len = clean.0[&k].len();
            for pos in 1..len {
                let mut bad = clean.clone();
                if let Some(v) = bad.0.get_mut(&k) {
                    v[pos] ^= 0x01;
                }
                let r = run(&bad, NodeMacs::Checked(&macs), false, 0, &[]);
                let (at, why) = r.broken.unwrap_or_else(|| panic!("flip at record {seq} byte {pos} not detected"));
                assert_eq!(at, seq, "flip in record {seq} byte {pos} blamed on {at}: {why}");
            }
        }
    }

    /// The offline rewrite of the finding: one record's actor, action and outcome changed, every
    /// later record re-chained and the head moved, so the chain links up again. This node's MAC of
    /// the rewritten record no longer verifies.
    #[test]
    fn a_rewritten_and_rechained_record_fails_the_node_mac() {
        let (mut kv, macs) = chain(6);
        let mut rec = record(&kv, 3).expect("read").expect("record 3");
        rec.actor = Actor { name: "ada".into(), role: Role::Admin };
        rec.action = "audit.check".into();
        rec.outcome = "ok: routine check".into();
        put_typed(&mut kv, key::record(3).as_bytes(), &rec).expect("put");
        let mut prev = record_hash(&rec);
        for seq in 4..=6 {
            let mut r = record(&kv, seq).expect("read").expect("record");
            r.prev = prev;
            prev = record_hash(&r);
            put_typed(&mut kv, key::record(seq).as_bytes(), &r).expect("put");
        }
        put_typed(&mut kv, key::HEAD.as_bytes(), &AuditHead { seq: 6, hash: prev }).expect("put");
        assert_eq!(run(&kv, NodeMacs::Skip, false, 0, &[]).broken, None, "the re-chained chain links up");
        let r = run(&kv, NodeMacs::Checked(&macs), false, 0, &[]);
        let (at, why) = r.broken.expect("the rewrite is caught");
        assert_eq!(at, 3, "{why}");
        assert!(why.contains("MAC does not verify"), "{why}");
    }

    #[test]
    fn records_without_a_node_mac_fail_and_are_named() {
        let (kv, macs) = chain(5);
        let mut gap = macs.clone();
        gap.remove(2);
        let r = run(&kv, NodeMacs::Checked(&gap), false, 0, &[]);
        assert_eq!(r.broken.as_ref().map(|b| b.0), Some(3), "{r:?}");
        assert!(r.broken.as_ref().is_some_and(|b| b.1.contains("no MAC of this node")), "{r:?}");
        let r = run(&kv, NodeMacs::Checked(&macs[..4]), false, 0, &[]);
        assert_eq!(r.broken.map(|b| b.0), Some(5), "the unMACed last record");
        let r = run(&kv, NodeMacs::NoHsm, false, 0, &[]);
        assert!(r.broken.is_some_and(|b| b.1.contains("no HSM")));
        let mut foreign = macs.clone();
        foreign[1].key_kcv = Kcv("OTHER1".into());
        let r = run(&kv, NodeMacs::Checked(&foreign), false, 0, &[]);
        assert!(r.broken.is_some_and(|b| b.0 == 2 && b.1.contains("no HSM slot of this node holds")));
    }

    #[test]
    fn a_node_mac_over_several_records_covers_them_all() {
        let mut kv = MemKv::default();
        for i in 1..=3 {
            add(&mut kv, i, true);
        }
        let first = node_mac(&kv, 1);
        for i in 4..=5 {
            add(&mut kv, i, true);
        }
        let macs = vec![first, node_mac(&kv, 4)];
        let r = run(&kv, NodeMacs::Checked(&macs), false, 0, &[]);
        assert_eq!((r.node_macs, r.broken), (2, None));
    }

    #[test]
    fn a_removed_last_record_is_detected() {
        let (mut kv, macs) = chain(3);
        kv.0.remove(key::record(3).as_bytes());
        let r = run(&kv, NodeMacs::Checked(&macs), false, 0, &[]);
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
        seal_now(&mut kv, 5);
        let r = run(&kv, NodeMacs::Skip, false, 0, &[]);
        assert_eq!((r.seals, r.sealed_upto, r.broken), (1, 3, None));
    }

    /// Seals are mandatory once the audit key exists: a record a minute old that no seal covers
    /// breaks the chain (a stripped seal, or a leader that cannot seal); a young one does not.
    #[test]
    fn unsealed_old_records_fail_once_seals_are_required() {
        let mut kv = MemKv::default();
        for i in 1..=3 {
            add_at(&mut kv, i, true, 1_000);
        }
        let now = 1_000 + SEAL_GRACE_MS + 1;
        assert_eq!(run(&kv, NodeMacs::Skip, false, now, &[]).broken, None, "no audit key yet: nothing to seal with");
        let r = run(&kv, NodeMacs::Skip, true, now, &[]);
        assert!(r.broken.as_ref().is_some_and(|b| b.0 == 1 && b.1.contains("no seal covers it")), "{r:?}");
        assert_eq!(run(&kv, NodeMacs::Skip, true, 2_000, &[]).broken, None, "young records may wait for the next seal");
        seal_now(&mut kv, 1_500);
        add_at(&mut kv, 5, true, now - 10);
        assert_eq!(run(&kv, NodeMacs::Skip, true, now, &[]).broken, None, "sealed up to 3; record 5 is young");
    }

    /// What anchors catch that the node's own MACs cannot: the same truncation on every node
    /// (records and their MACs removed, the head moved back) verifies without anchors.
    #[test]
    fn anchors_catch_a_truncated_or_rewritten_history() {
        let (mut kv, mut macs) = chain(4);
        let seal = seal_now(&mut kv, 2_000);
        macs.push(node_mac(&kv, 5));
        let anchor = Anchor::of(&seal).expect("a seal record");
        let line = serde_json::to_string(&anchor).expect("json");
        let parsed = Anchor::parse("anchors:1", &line).expect("parse");
        assert_eq!(parsed, anchor);
        let anchors = vec![("anchors:1".to_string(), parsed)];
        let r = run(&kv, NodeMacs::Checked(&macs), true, 3_000, &anchors);
        assert_eq!((r.anchors, r.broken), (1, None));

        let mut cut = kv.clone();
        for seq in 3..=5 {
            cut.0.remove(key::record(seq).as_bytes());
        }
        let h2 = record_hash(&record(&cut, 2).expect("read").expect("record 2"));
        put_typed(&mut cut, key::HEAD.as_bytes(), &AuditHead { seq: 2, hash: h2 }).expect("put");
        let r = run(&cut, NodeMacs::Checked(&macs[..2]), false, 3_000, &[]);
        assert_eq!(r.broken, None, "a consistent truncation passes the node's own checks");
        let r = run(&cut, NodeMacs::Checked(&macs[..2]), false, 3_000, &anchors);
        assert!(r.broken.as_ref().is_some_and(|b| b.1.contains("truncated")), "{r:?}");

        let mut other = anchors.clone();
        other[0].1.hash = hex::encode([7u8; 32]);
        let r = run(&kv, NodeMacs::Checked(&macs), true, 3_000, &other);
        assert!(r.broken.as_ref().is_some_and(|b| b.1.contains("seal MAC does not verify")), "{r:?}");
        assert!(Anchor::parse("f:2", "{\"anchor\":1}").is_err());
        assert!(Anchor::parse("f:3", "not json").expect_err("not json").starts_with("f:3:"));
    }
}

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
    /// Where the live chain starts once records were archived and pruned ([`super::AuditBase`]).
    pub const BASE: &str = "audit/base";

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

/// The last line of an archive file (`quill audit archive`): which records the file holds, how they
/// link to what came before, the SHA-256 of the record lines, and the cluster audit key's HMAC
/// over all of it ([`archive_input`]). Whoever holds the file can check it against the cluster
/// (the MAC) and the cluster's chain continues from `last_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveTrailer {
    /// Format version (1).
    pub archive: u32,
    /// First record in the file.
    pub first: u64,
    /// Last record in the file: the live chain continues after it.
    pub last: u64,
    /// The hash record `first` links to (hex; zeros for record 1).
    pub prev: String,
    /// Record `last`'s hash (hex).
    pub last_hash: String,
    /// SHA-256 of the file's record lines, each with its newline (hex).
    pub sha256: String,
    /// KCV of the cluster's audit MAC key.
    pub key_kcv: String,
    /// HMAC over [`archive_input`] (hex).
    pub mac: String,
}

impl ArchiveTrailer {
    /// Parse an archive file's last line (`what` names it in errors).
    pub fn parse(what: &str, line: &str) -> Result<ArchiveTrailer, String> {
        let t: ArchiveTrailer =
            serde_json::from_str(line).map_err(|e| format!("{what}: not an audit archive trailer: {e}"))?;
        t.check(what)?;
        Ok(t)
    }

    /// Its format, range and hex fields well formed (`what` names it in errors).
    pub fn check(&self, what: &str) -> Result<(), String> {
        let t = self;
        if t.archive != 1 {
            return Err(format!("{what}: archive format {} is not known (1 is)", t.archive));
        }
        if t.first == 0 || t.last < t.first {
            return Err(format!("{what}: records {}..={} is not a range of records", t.first, t.last));
        }
        for (field, v) in [("prev", &t.prev), ("last_hash", &t.last_hash), ("sha256", &t.sha256), ("mac", &t.mac)] {
            let ok = hex::decode(v).map(|b| b.len() == 32).unwrap_or(false);
            if !ok {
                return Err(format!("{what}: {field} is not 32 bytes of hex"));
            }
        }
        Ok(())
    }

    fn bytes(v: &str) -> Hash {
        hex::decode(v).ok().and_then(|b| b.try_into().ok()).unwrap_or([0; 32])
    }

    /// `prev` as bytes.
    pub fn prev_hash(&self) -> Hash {
        Self::bytes(&self.prev)
    }

    /// `last_hash` as bytes.
    pub fn last_hash(&self) -> Hash {
        Self::bytes(&self.last_hash)
    }

    /// The MAC as the audit key's.
    pub fn mac(&self) -> AuditMac {
        AuditMac { key_kcv: Kcv(self.key_kcv.clone()), mac: Self::bytes(&self.mac) }
    }

    /// What the MAC covers.
    pub fn input(&self) -> Vec<u8> {
        archive_input(self.first, self.last, &self.prev_hash(), &self.last_hash(), &Self::bytes(&self.sha256))
    }
}

/// What the audit key MACs for an archive: its range, its links and the digest of its lines.
pub fn archive_input(first: u64, last: u64, prev: &Hash, last_hash: &Hash, sha256: &Hash) -> Vec<u8> {
    let mut v = b"quill-audit-archive-v1\0".to_vec();
    v.extend_from_slice(&first.to_be_bytes());
    v.extend_from_slice(&last.to_be_bytes());
    v.extend_from_slice(prev);
    v.extend_from_slice(last_hash);
    v.extend_from_slice(sha256);
    v
}

/// Where the live chain starts: records `1..=trailer.last` were archived (the last archive's
/// trailer, MACed) and pruned after two custodians approved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBase {
    /// The trailer of the archive that ends at the base.
    pub trailer: ArchiveTrailer,
    /// The approval it was pruned under.
    pub approval: String,
    /// When (leader time).
    pub pruned_ms: u64,
}

/// The base of the live chain, if records were pruned.
pub fn base(kv: &dyn Kv) -> Result<Option<AuditBase>, StoreError> {
    get_typed(kv, key::BASE.as_bytes())
}

/// Records `from..=upto` as archive lines (`to_json`, one per line) and the trailer's fields but
/// its MAC: `(lines, trailer without key_kcv and mac)`. `from` is the first live record.
pub fn archive_lines(kv: &dyn Kv, upto: u64) -> Result<Result<(Vec<String>, ArchiveTrailer), String>, StoreError> {
    let base = base(kv)?;
    let (first, prev) = match &base {
        Some(b) => (b.trailer.last + 1, b.trailer.last_hash()),
        None => (1, [0; 32]),
    };
    let head = head(kv)?;
    if upto < first || upto > head.seq {
        return Ok(Err(format!("records {first}..={upto}: the live chain holds records {first}..={}", head.seq)));
    }
    let mut lines = Vec::new();
    let mut digest = Sha256::new();
    let mut last_hash = prev;
    for seq in first..=upto {
        let Some(rec) = record(kv, seq)? else { return Ok(Err(format!("record {seq} is missing"))) };
        let line = to_json(&rec).to_string();
        digest.update(line.as_bytes());
        digest.update(b"\n");
        last_hash = record_hash(&rec);
        lines.push(line);
    }
    let sha256: Hash = digest.finalize().into();
    Ok(Ok((
        lines,
        ArchiveTrailer {
            archive: 1,
            first,
            last: upto,
            prev: hex::encode(prev),
            last_hash: hex::encode(last_hash),
            sha256: hex::encode(sha256),
            key_kcv: String::new(),
            mac: String::new(),
        },
    )))
}

/// The highest record a seal in the live chain covers (0: none): the newest seal's, found walking
/// back from the head (seals come at least every [`SEAL_EVERY_RECORDS`], so the walk is short and
/// apply never scans the chain; a chain whose last seals are further back archives nothing).
pub fn sealed_upto(kv: &dyn Kv) -> Result<u64, StoreError> {
    Ok(latest_anchor(kv)?.map_or(0, |a| a.seq))
}

/// At most this many records go into one archive (and one prune): an archive is one answer.
pub const ARCHIVE_MAX_RECORDS: u64 = 100_000;

/// Whether the archive `t` describes may be pruned now: the live chain's first records, linked
/// and hashed as the trailer says, covered by a seal, the trailer well formed. (Its MAC is checked
/// where an HSM is: by the node that takes the request, and by every `verify` after.)
pub fn check_archive(kv: &dyn Kv, t: &ArchiveTrailer) -> Result<Result<(), String>, StoreError> {
    if let Err(r) = t.check("the archive trailer") {
        return Ok(Err(r));
    }
    let first = base(kv)?.map_or(1, |b| b.trailer.last + 1);
    if t.first != first {
        return Ok(Err(format!("the archive starts at record {}, the live chain at {first}", t.first)));
    }
    if t.last - t.first >= ARCHIVE_MAX_RECORDS {
        return Ok(Err(format!("an archive holds at most {ARCHIVE_MAX_RECORDS} records")));
    }
    let sealed = sealed_upto(kv)?;
    if t.last > sealed {
        return Ok(Err(format!(
            "record {} is not covered by a seal yet (seals cover up to {sealed}): archive up to a sealed record",
            t.last
        )));
    }
    let Some(first_rec) = record(kv, t.first)? else { return Ok(Err(format!("record {} is missing", t.first))) };
    if first_rec.prev != t.prev_hash() {
        return Ok(Err(format!("record {} does not link to the archive's prev hash", t.first)));
    }
    let Some(last_rec) = record(kv, t.last)? else { return Ok(Err(format!("record {} is missing", t.last))) };
    if record_hash(&last_rec) != t.last_hash() {
        return Ok(Err(format!("record {} does not have the archived hash: the archive is not of this chain", t.last)));
    }
    Ok(Ok(()))
}

/// Prune records up to `t.last` (the approved archive, [`check_archive`]) and write the new base.
pub fn prune(
    kv: &mut dyn Kv,
    t: &ArchiveTrailer,
    approval: &str,
    time_ms: u64,
) -> Result<Result<String, String>, StoreError> {
    if let Err(r) = check_archive(&*kv, t)? {
        return Ok(Err(r));
    }
    for seq in t.first..=t.last {
        kv.delete(key::record(seq).as_bytes());
    }
    let b = AuditBase { trailer: t.clone(), approval: approval.to_string(), pruned_ms: time_ms };
    put_typed(kv, key::BASE.as_bytes(), &b)?;
    Ok(Ok(format!("records {}..={} archived (sha256 {}) and pruned", t.first, t.last, t.sha256)))
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
    /// Records `1..=archived` were archived and pruned (0: none): the live chain starts after.
    pub archived: u64,
    /// Anchors of archived records: their seal MACs verified (the archive holds the records).
    pub anchors_archived: u64,
    /// Archive trailers checked (their MACs, and that they link up to the live chain).
    pub archives: u64,
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
    // Records 1..=base were archived and pruned: the live chain links to the base's hash, and the
    // base itself must carry the audit key's MAC (an archive made by this cluster).
    let (base, base_hash) = match self::base(kv)? {
        None => (0, [0; 32]),
        Some(b) => {
            let t = &b.trailer;
            let fail = |reason: String| Some((t.last, reason));
            match check_mac(&t.mac(), &t.input()) {
                Ok(true) => {}
                Ok(false) => {
                    report.broken = fail(format!(
                        "the archive base (records {}..={} pruned under approval {}) does not carry the audit key's MAC: it was forged or altered",
                        t.first, t.last, b.approval
                    ));
                    return Ok(report);
                }
                Err(e) => {
                    report.broken = fail(format!("cannot check the archive base's MAC: {e}"));
                    return Ok(report);
                }
            }
            (t.last, t.last_hash())
        }
    };
    report.archived = base;
    report.sealed_upto = base;
    // Pass 1: decode every record, in key order, checking that keys and sequences agree.
    let mut records: Vec<AuditRecord> = Vec::new();
    for (k, v) in kv.scan_prefix(key::RECORD.as_bytes())? {
        let key_seq: u64 = String::from_utf8_lossy(&k).trim_start_matches(key::RECORD).parse().unwrap_or(0);
        let expect = base + records.len() as u64 + 1;
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
            None => (head.seq == base + records.len() as u64).then_some(head.hash),
        }
    };
    // Pass 2: the chain links, then each record's MAC and seal, in order.
    for (i, rec) in records.iter().enumerate() {
        let prev = if i == 0 { base_hash } else { hashes[i - 1] };
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
            // A seal of an archived record is checked by its MAC alone (the archive holds the
            // record); of the base, against the base's hash.
            let sealed = match seal.seq.checked_sub(base) {
                None => Some(seal.hash),
                Some(0) if base > 0 => Some(base_hash),
                Some(d) => (d as usize).checked_sub(1).filter(|s| *s < i).map(|s| hashes[s]),
            };
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
    let n = base + records.len() as u64;
    if n != head.seq {
        report.broken = Some((n.min(head.seq) + 1, format!("the head says {} records, the chain has {n}", head.seq)));
        return Ok(report);
    } else if n > 0 && hashes.last().copied().unwrap_or(base_hash) != head.hash {
        report.broken = Some((n, format!("record {n} was altered: its hash does not match the chain head")));
        return Ok(report);
    }
    let live = Live { base, base_hash, hashes: &hashes };
    report.broken = check_node_macs(&mut report, &live, checks.node_macs, checks.check_node_mac)
        .or_else(|| check_sealed(&records, report.sealed_upto, checks.seals_required, checks.now_ms))
        .or_else(|| check_anchors(&mut report, &live, checks.anchors, check_mac));
    Ok(report)
}

/// This node's MACs must cover records `1..=n` in consecutive ranges, each verifying.
/// The live chain: the base (0: nothing pruned) and the hashes of records `base+1..`.
struct Live<'a> {
    base: u64,
    base_hash: Hash,
    hashes: &'a [Hash],
}

impl Live<'_> {
    /// The last record.
    fn end(&self) -> u64 {
        self.base + self.hashes.len() as u64
    }

    /// The hash of record `seq` if the live chain knows it (the base's, or a live record's).
    fn hash(&self, seq: u64) -> Option<Hash> {
        match seq.checked_sub(self.base)? {
            0 => (self.base > 0).then_some(self.base_hash),
            d => self.hashes.get((d - 1) as usize).copied(),
        }
    }
}

fn check_node_macs(
    report: &mut VerifyReport,
    live: &Live<'_>,
    macs: NodeMacs<'_>,
    check: NodeMacCheck<'_>,
) -> Option<(u64, String)> {
    let n = live.end();
    let macs = match macs {
        NodeMacs::Checked(macs) => macs,
        NodeMacs::Skip => return None,
        NodeMacs::NoHsm => {
            return (n > live.base).then(|| {
                (
                    live.base + 1,
                    "this node has no HSM, so no MAC of its own vouches for its records: verify on a node with an HSM"
                        .into(),
                )
            });
        }
    };
    let mut next = live.base + 1;
    for m in macs {
        // A MAC over archived records only: the archive vouches for them now. The first MAC
        // over live records may start before the base (its input is the hash of its last record).
        if m.last <= live.base {
            continue;
        }
        let starts_right = if next == live.base + 1 { m.first <= next } else { m.first == next };
        if !starts_right || m.last < m.first {
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
        let input = node_mac_input(m.first, m.last, &live.hash(m.last).unwrap_or([0; 32]));
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
        .filter(|r| r.seq > sealed_upto)
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
    live: &Live<'_>,
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
        if a.seq < live.base {
            // Archived: its seal MAC verified; the archive file holds the record.
            report.anchors_archived += 1;
            continue;
        }
        match live.hash(a.seq) {
            None => {
                return Some((
                    a.seq,
                    format!(
                        "{what}: record {} was anchored, but the chain now ends at record {}: history was truncated after it was anchored",
                        a.seq,
                        live.end()
                    ),
                ));
            }
            Some(h) if h != hash => {
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

/// Archive trailers (`quill audit verify --archive FILE`, sorted by `first`): each carries the
/// audit key's MAC, they link from record 1 on without a gap, and the newest ends where the live
/// chain starts (the base), with the base's hash.
pub fn check_archives(
    report: &mut VerifyReport,
    archives: &[(String, ArchiveTrailer)],
    base: Option<&AuditBase>,
    check_mac: MacCheck<'_>,
) -> Option<(u64, String)> {
    let mut next = 1;
    let mut prev = [0u8; 32];
    for (what, t) in archives {
        match check_mac(&t.mac(), &t.input()) {
            Ok(true) => {}
            Ok(false) => {
                return Some((
                    t.first,
                    format!("{what}: the archive trailer's MAC does not verify with the cluster's audit key"),
                ));
            }
            Err(e) => return Some((t.first, format!("{what}: cannot check the archive trailer's MAC: {e}"))),
        }
        if t.first != next || t.prev_hash() != prev {
            return Some((
                next,
                format!(
                    "{what}: holds records {}..={}, but the archives before it end at record {}",
                    t.first,
                    t.last,
                    next - 1
                ),
            ));
        }
        next = t.last + 1;
        prev = t.last_hash();
        report.archives += 1;
    }
    let (base_seq, base_hash) = base.map_or((0, [0; 32]), |b| (b.trailer.last, b.trailer.last_hash()));
    if next - 1 != base_seq || prev != base_hash {
        return Some((
            next,
            format!(
                "the archives end at record {}, but the live chain starts after record {base_seq}{}",
                next - 1,
                if next - 1 == base_seq { " with another hash" } else { "" }
            ),
        ));
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

    /// An archive of the live chain up to `upto`, its trailer MACed with the stand-in audit key.
    fn archive(kv: &MemKv, upto: u64) -> (Vec<String>, ArchiveTrailer) {
        let (lines, mut t) = archive_lines(kv, upto).expect("read").expect("archive");
        t.key_kcv = "ABCDEF".into();
        t.mac = hex::encode(fake_mac(&t.input()));
        (lines, t)
    }

    /// 6 records, a seal of record 6 (record 7), 2 more records; node MACs per record.
    fn sealed_chain() -> (MemKv, Vec<NodeMac>) {
        let (mut kv, mut macs) = chain(6);
        seal_now(&mut kv, 1100);
        macs.push(node_mac(&kv, 7));
        for i in 8..=9 {
            add(&mut kv, i, true);
            macs.push(node_mac(&kv, i));
        }
        (kv, macs)
    }

    #[test]
    fn an_archived_and_pruned_chain_still_verifies_from_its_base() {
        let (mut kv, macs) = sealed_chain();
        let (lines, t) = archive(&kv, 6);
        assert_eq!((lines.len(), t.first, t.last), (6, 1, 6));
        assert_eq!(t.prev, hex::encode([0u8; 32]));
        let detail = prune(&mut kv, &t, "appr-1", 2000).expect("store").expect("pruned");
        assert!(detail.contains("records 1..=6"), "{detail}");
        assert!(record(&kv, 6).expect("read").is_none() && record(&kv, 7).expect("read").is_some());
        let r = run(&kv, NodeMacs::Checked(&macs), true, 1500, &[]);
        assert_eq!((r.broken.clone(), r.archived, r.records, r.head_seq), (None, 6, 3, 9), "{r:?}");
        // The next archive starts after the base and links to it.
        let (more, t2) = archive_lines(&kv, 7).expect("read").expect("archive");
        assert_eq!((more.len(), t2.first, t2.prev.clone()), (1, 7, t.last_hash.clone()));
        // The archives, given together, lead to the base; without the first they do not.
        let mut report = VerifyReport::default();
        let base = base(&kv).expect("read").expect("base");
        assert_eq!(check_archives(&mut report, &[("a".into(), t.clone())], Some(&base), &mut checker), None);
        let mut forged = t.clone();
        forged.sha256 = hex::encode([7u8; 32]);
        let e = check_archives(&mut report, &[("a".into(), forged)], Some(&base), &mut checker).expect("refused");
        assert!(e.1.contains("MAC does not verify"), "{e:?}");
        let e = check_archives(&mut report, &[], Some(&base), &mut checker).expect("refused");
        assert!(e.1.contains("end at record 0"), "{e:?}");
    }

    #[test]
    fn a_prune_that_does_not_fit_the_chain_is_refused_and_changes_nothing() {
        let (kv, _) = sealed_chain();
        let refused = |t: &ArchiveTrailer, why: &str| {
            let mut k = MemKv(kv.0.clone());
            let e = prune(&mut k, t, "appr", 2000).expect("store").expect_err("refused");
            assert!(e.contains(why), "{e}");
            assert_eq!(k.0, kv.0, "a refused prune wrote something");
        };
        // Past the last seal (record 6 is the last sealed one).
        let (_, t) = archive(&kv, 8);
        refused(&t, "not covered by a seal");
        // Another chain's record 6.
        let (_, mut t) = archive(&kv, 6);
        t.last_hash = hex::encode([9u8; 32]);
        refused(&t, "does not have the archived hash");
        // Not the live chain's first records.
        let (_, mut t) = archive(&kv, 6);
        t.first = 2;
        refused(&t, "the live chain at 1");
        // A malformed trailer.
        let (_, mut t) = archive(&kv, 6);
        t.mac = "zz".into();
        refused(&t, "not 32 bytes of hex");
    }

    #[test]
    fn a_base_or_live_records_edited_after_a_prune_are_caught() {
        let (mut kv, macs) = sealed_chain();
        let (_, t) = archive(&kv, 6);
        prune(&mut kv, &t, "appr-1", 2000).expect("store").expect("pruned");
        // A base whose trailer was changed (to hide a longer prune) no longer carries the MAC.
        let mut forged = base(&kv).expect("read").expect("base");
        forged.trailer.last = 7;
        let mut k = MemKv(kv.0.clone());
        put_typed(&mut k, key::BASE.as_bytes(), &forged).expect("put");
        let r = run(&k, NodeMacs::Checked(&macs), true, 1500, &[]);
        assert!(r.broken.as_ref().is_some_and(|b| b.1.contains("does not carry the audit key's MAC")), "{r:?}");
        // Record 7 removed as well, behind the base's back.
        let mut k = MemKv(kv.0.clone());
        k.delete(key::record(7).as_bytes());
        let r = run(&k, NodeMacs::Checked(&macs), true, 1500, &[]);
        assert_eq!(r.broken.as_ref().map(|b| b.0), Some(7), "{r:?}");
        // The base removed: the chain no longer starts at record 1.
        let mut k = MemKv(kv.0.clone());
        k.delete(key::BASE.as_bytes());
        let r = run(&k, NodeMacs::Checked(&macs), true, 1500, &[]);
        assert!(r.broken.is_some(), "{r:?}");
    }
}

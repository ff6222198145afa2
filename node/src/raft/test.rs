//! The store proves itself against openraft's conformance suite, then against the properties the
//! suite does not cover: dedup, corruption surfacing as errors, restart, snapshot contents.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, Vote};
use rocksdb::WriteBatch;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::state_machine::DEDUP_PRUNE_PER_ENTRY;
use super::*;
use crate::store::{Cf, codec, log_key, meta_key, sm_meta_key};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> StorageResult<(TempDir, LogStore, StateMachine)> {
        let dir = TempDir::new().unwrap();
        let (log, sm) = open(dir.path()).await.unwrap();
        Ok((dir, log, sm))
    }
}

/// openraft's conformance suite, the way `stores/rocksstore-v2/src/test.rs` runs it.
#[test]
fn openraft_suite() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn put(index: u64, client: &str, serial: u64, key: &str, value: &[u8]) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(Request {
            client_id: client.into(),
            serial,
            time_ms: 1_700_000_000_000 + index,
            actor: crate::keys::model::Actor { name: "test".into(), role: crate::keys::model::Role::Operator },
            audit_mac: None,
            cert: None,
            cmd: Command::Put { key: bench(key), value: value.to_vec() },
        }),
    }
}

/// The benchmark key space plain writes are confined to (an empty key stays empty: refused).
fn bench(key: &str) -> String {
    if key.is_empty() { String::new() } else { format!("bench/{key}") }
}

fn blank(index: u64) -> Entry<TypeConfig> {
    Entry { log_id: log_id(1, index), payload: EntryPayload::Blank }
}

fn membership(index: u64) -> Entry<TypeConfig> {
    let nodes = [(1u64, NodeAddr { raft_addr: "127.0.0.1:7001".into(), api_addr: "127.0.0.1:8001".into() })];
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(vec![[1u64].into()], BTreeMap::from(nodes))),
    }
}

/// A retried request (same client id and serial) is applied once: the retry changes nothing and
/// returns the first response, marked duplicate.
#[tokio::test]
async fn retried_request_is_applied_once() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path()).await.unwrap();

    let first = sm.apply([put(1, "c1", 7, "k", b"one")]).await.unwrap();
    assert_eq!(first, vec![Response { log_index: 1, duplicate: false, outcome: Outcome::Put { replaced: false } }]);

    // --- the retry carries a different value: it must not be applied
    let retry = sm.apply([put(2, "c1", 7, "k", b"two")]).await.unwrap();
    assert_eq!(retry, vec![Response { log_index: 1, duplicate: true, outcome: Outcome::Put { replaced: false } }]);
    assert_eq!(sm.get("bench/k").await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 2)), "the retry's entry is still applied");

    // --- the same serial from another client, and the next serial, are new requests
    let other = sm.apply([put(3, "c2", 7, "k", b"three"), put(4, "c1", 8, "k", b"four")]).await.unwrap();
    assert!(other.iter().all(|r| !r.duplicate));
    assert_eq!(other[1].outcome, Outcome::Put { replaced: true });
    assert_eq!(sm.get("bench/k").await.unwrap().as_deref(), Some(&b"four"[..]));

    // --- a deterministic refusal is remembered too
    let bad = sm.apply([put(5, "c1", 9, "", b"x"), put(6, "c1", 9, "", b"x")]).await.unwrap();
    assert!(matches!(bad[0].outcome, Outcome::Rejected { .. }) && !bad[0].duplicate);
    assert!(bad[1].duplicate && bad[1].outcome == bad[0].outcome);
}

/// Dedup records have a retention: within a day a retry is answered from the record; a request
/// older than that is pruned (with its age index) as later entries apply, in time order, and the
/// same client id and serial sent again is applied anew. The table stays bounded.
#[tokio::test]
async fn dedup_records_are_pruned_past_their_retention() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path()).await.unwrap();
    let at = |mut e: Entry<TypeConfig>, t: u64| {
        if let EntryPayload::Normal(r) = &mut e.payload {
            r.time_ms = t;
        }
        e
    };
    let t0 = 1_700_000_000_000;
    let day = crate::store::DEDUP_RETENTION_MS;
    for i in 0..300 {
        sm.apply([at(put(1 + i, "old", i, "k", b"v"), t0 + i)]).await.unwrap();
    }
    let count = |sm: &StateMachine, cf| sm.store.pairs(cf).unwrap().len();
    assert_eq!((count(&sm, Cf::Dedup), count(&sm, Cf::DedupAge)), (300, 300));
    let r = sm.apply([at(put(400, "old", 5, "k", b"again"), t0 + day - 1)]).await.unwrap();
    assert!(r[0].duplicate, "within the retention a retry is answered from the record");
    // A day later: each entry prunes up to its per-entry limit, oldest first.
    sm.apply([at(put(401, "new", 1, "k", b"v"), t0 + day + 1_000)]).await.unwrap();
    assert_eq!(count(&sm, Cf::Dedup), 300 - DEDUP_PRUNE_PER_ENTRY + 1, "the oldest pruned first, at most the limit");
    sm.apply([at(put(402, "new", 2, "k", b"v"), t0 + day + 1_001)]).await.unwrap();
    assert_eq!((count(&sm, Cf::Dedup), count(&sm, Cf::DedupAge)), (2, 2), "only the day's records stay");
    let r = sm.apply([at(put(403, "old", 5, "k", b"again"), t0 + day + 1_002)]).await.unwrap();
    assert!(!r[0].duplicate, "past the retention the same serial is a new request");
}

/// A batch entry applies its requests in order, each deduplicated and audited on its own, and
/// each sees the writes of the ones before it; the audit chain stays gap-free and verifiable.
#[tokio::test]
async fn a_batch_entry_applies_each_request_once_in_order() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path()).await.unwrap();
    sm.apply([put(1, "c1", 1, "k", b"zero")]).await.unwrap();
    let req = |client: &str, serial: u64, key: &str, v: &[u8]| match put(0, client, serial, key, v).payload {
        EntryPayload::Normal(r) => r,
        _ => unreachable!("put builds a normal entry"),
    };
    let subs = vec![
        req("c2", 1, "k", b"one"),
        req("c3", 1, "k", b"two"),
        req("c1", 1, "k", b"retry of an applied request"),
        req("c3", 1, "k", b"repeated inside the batch"),
        req("c4", 1, "", b"refused"),
    ];
    let envelope = Request {
        client_id: "node-1-batch".into(),
        serial: 1,
        time_ms: 1,
        actor: crate::keys::model::Actor::node(1),
        audit_mac: None,
        cert: None,
        cmd: Command::Batch(subs),
    };
    let out = sm.apply([Entry { log_id: log_id(1, 2), payload: EntryPayload::Normal(envelope) }]).await.unwrap();
    let Outcome::Batch(rs) = &out[0].outcome else { panic!("not a batch outcome: {out:?}") };
    assert_eq!(rs.len(), 5);
    assert_eq!((rs[0].duplicate, &rs[0].outcome), (false, &Outcome::Put { replaced: true }));
    assert_eq!((rs[1].duplicate, &rs[1].outcome), (false, &Outcome::Put { replaced: true }));
    assert!(rs[2].duplicate && rs[2].log_index == 1, "an earlier request is not applied again");
    assert!(rs[3].duplicate && rs[3].log_index == 2, "a request repeated in the batch is applied once");
    assert!(matches!(rs[4].outcome, Outcome::Rejected { .. }));
    assert_eq!(sm.get("bench/k").await.unwrap().as_deref(), Some(&b"two"[..]));
    // records: 1 (first put), then c2, c3 and the refused one — no gap, chain intact
    let report = sm.read(|kv| crate::audit::verify_links(kv)).await.unwrap();
    assert_eq!((report.records, report.broken), (4, None));
}

/// A damaged value in the log or meta column family is an error, never "nothing stored".
#[tokio::test]
async fn corrupt_values_are_errors() {
    let dir = TempDir::new().unwrap();
    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    log.blocking_append([blank(1), blank(2), blank(3)]).await.unwrap();
    log.save_vote(&Vote::new(3, 1)).await.unwrap();

    let store = log.store.clone();
    let mut batch = WriteBatch::default();
    batch.put_cf(store.cf(Cf::Log).unwrap(), log_key(2), b"\x01\xff\xff\xff");
    batch.put_cf(store.cf(Cf::Meta).unwrap(), meta_key::VOTE, b"garbage");
    batch.put_cf(store.cf(Cf::SmMeta).unwrap(), sm_meta_key::LAST_APPLIED, b"");
    store.write(batch, false).unwrap();

    let err = log.try_get_log_entries(1..4).await.unwrap_err();
    assert!(err.to_string().contains("corrupt data in column family `log`"), "{err}");
    assert!(log.try_get_log_entries(1..2).await.is_ok(), "entries before the damage still read");
    assert!(log.read_vote().await.is_err(), "a damaged vote is not 'no vote'");
    assert!(sm.applied_state().await.is_err(), "a damaged applied id is not 'nothing applied'");

    // --- an entry stored under the wrong index is corruption too
    let moved = codec::encode(&blank(3)).unwrap();
    let mut batch = WriteBatch::default();
    batch.put_cf(store.cf(Cf::Log).unwrap(), log_key(2), moved);
    store.write(batch, false).unwrap();
    let err = log.try_get_log_entries(2..3).await.unwrap_err();
    assert!(err.to_string().contains("stored under index 2"), "{err}");
}

/// Vote, log, committed id and applied state survive closing and reopening the store.
#[tokio::test]
async fn reopen_keeps_state() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, mut sm) = open(dir.path()).await.unwrap();
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
        log.blocking_append([membership(1), put(2, "c", 1, "a", b"A"), put(3, "c", 2, "b", b"B")]).await.unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        log.purge(log_id(1, 1)).await.unwrap();
        sm.apply([membership(1)]).await.unwrap();
        sm.apply(log.try_get_log_entries(2..4).await.unwrap()).await.unwrap();
    }
    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
    assert_eq!(log.try_get_log_entries(0..10).await.unwrap().len(), 2);
    let (applied, mem) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 1)));
    assert_eq!(sm.get("bench/b").await.unwrap().as_deref(), Some(&b"B"[..]));
    // --- dedup state survived too
    assert!(sm.apply([put(4, "c", 2, "b", b"again")]).await.unwrap()[0].duplicate);
}

/// A snapshot carries the data and the dedup table; it installs through the same path openraft
/// uses (bytes written into the file from `begin_receiving_snapshot`), and survives a restart.
#[tokio::test]
async fn snapshot_round_trip() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let (_l_log, mut leader) = open(leader_dir.path()).await.unwrap();
    let (f_log, mut follower) = open(follower_dir.path()).await.unwrap();
    follower.apply([put(1, "f", 1, "stale", b"gone after install")]).await.unwrap();

    let big = vec![0xA5u8; 64 * 1024];
    let mut entries = vec![membership(1)];
    entries.extend((2..200).map(|i| put(i, "c", i, &format!("key-{i:03}"), &big[..(i as usize * 97) % big.len()])));
    leader.apply(entries).await.unwrap();
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 199)));

    // --- stream it the way openraft's chunked transport does: read chunks, write at offsets
    let mut src = *snap.snapshot;
    let mut dst = follower.begin_receiving_snapshot().await.unwrap();
    let mut buf = vec![0u8; 10_000];
    let mut offset = 0u64;
    loop {
        let n = src.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        dst.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
        dst.write_all(&buf[..n]).await.unwrap();
        offset += n as u64;
    }
    follower.install_snapshot(&snap.meta, dst).await.unwrap();

    assert_eq!(follower.applied_state().await.unwrap(), leader.applied_state().await.unwrap());
    assert_eq!(follower.get("bench/stale").await.unwrap(), None, "install replaces, it does not merge");
    assert_eq!(follower.get("bench/key-150").await.unwrap(), leader.get("bench/key-150").await.unwrap());
    assert!(follower.apply([put(200, "c", 150, "x", b"x")]).await.unwrap()[0].duplicate, "dedup table travels");
    drop((f_log, follower));

    // --- the installed state and the current snapshot survive a restart
    let (_f_log, mut follower) = open(follower_dir.path()).await.unwrap();
    assert_eq!(follower.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);
    assert_eq!(follower.get("bench/key-150").await.unwrap(), leader.get("bench/key-150").await.unwrap());
}

/// A truncated transfer never installs, and leaves the state machine as it was.
#[tokio::test]
async fn truncated_snapshot_is_rejected() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let (_l, mut leader) = open(leader_dir.path()).await.unwrap();
    let (_f, mut follower) = open(follower_dir.path()).await.unwrap();
    leader.apply([membership(1), put(2, "c", 1, "k", b"v")]).await.unwrap();
    follower.apply([put(1, "f", 1, "mine", b"kept")]).await.unwrap();
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let mut bytes = Vec::new();
    let mut src = *snap.snapshot;
    src.read_to_end(&mut bytes).await.unwrap();
    let mut dst = follower.begin_receiving_snapshot().await.unwrap();
    dst.write_all(&bytes[..bytes.len() - 3]).await.unwrap();
    let err = follower.install_snapshot(&snap.meta, dst).await.unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(follower.get("bench/mine").await.unwrap().as_deref(), Some(&b"kept"[..]));
    assert!(follower.get_current_snapshot().await.unwrap().is_none());
}

/// A crash in the middle of an install (marker written, families half rewritten) is finished at
/// the next open from the current snapshot file.
#[tokio::test]
async fn interrupted_install_is_redone_at_open() {
    let dir = TempDir::new().unwrap();
    {
        let (_log, mut sm) = open(dir.path()).await.unwrap();
        sm.apply([membership(1), put(2, "c", 1, "k", b"v")]).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply([put(3, "c", 2, "later", b"after the snapshot")]).await.unwrap();
        // --- simulate the crash: marker present, half the data gone
        let mut batch = WriteBatch::default();
        batch.put_cf(sm.store.cf(Cf::SmMeta).unwrap(), sm_meta_key::INSTALLING, b"x");
        batch.delete_cf(sm.store.cf(Cf::SmData).unwrap(), b"k");
        sm.store.write(batch, true).unwrap();
    }
    let (_log, mut sm) = open(dir.path()).await.unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 2)), "back at the snapshot");
    assert_eq!(sm.get("bench/k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(sm.get("bench/later").await.unwrap(), None, "re-applied from the log later, not kept half-way");
    assert!(sm.store.get_raw(Cf::SmMeta, sm_meta_key::INSTALLING).unwrap().is_none());
}

/// A replication payload is bounded by bytes, not only by openraft's entry count: a follower that
/// fell behind gets the log in pieces that can arrive within an AppendEntries' time. The first
/// entry always goes, however large; `try_get_log_entries` (apply, snapshots) is not limited.
#[tokio::test]
async fn replication_payloads_are_bounded_by_bytes() {
    let dir = TempDir::new().unwrap();
    let (log, _sm) = open(dir.path()).await.unwrap();
    let mut log = log.with_append_limit(250_000);
    let big = vec![7u8; 100_000];
    let entries: Vec<_> = (1..=10).map(|i| put(i, "c", i, "k", &big)).collect();
    log.blocking_append(entries).await.unwrap();
    let first = log.limited_get_log_entries(1, 11).await.unwrap();
    assert_eq!(first.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![1, 2], "two 100 kB entries fit 250 kB");
    let next = log.limited_get_log_entries(3, 11).await.unwrap();
    assert_eq!(next.first().map(|e| e.log_id.index), Some(3));
    let mut tiny = log.clone().with_append_limit(10);
    assert_eq!(tiny.limited_get_log_entries(5, 11).await.unwrap().len(), 1, "one entry always goes");
    assert_eq!(log.try_get_log_entries(1..11).await.unwrap().len(), 10, "reads outside replication are whole");
    let mut default = log.clone().with_append_limit(log_store::MAX_APPEND_BYTES);
    assert_eq!(default.limited_get_log_entries(1, 11).await.unwrap().len(), 10, "1 MiB holds ten 100 kB entries");
}

/// Entries purged between openraft's choice to replicate them and the read are not replaced by
/// later ones: a follower given entries 6.. after `prev_log_id` None (or 2) would hold a log with
/// a hole, which its Raft core cannot start on (found by the half-hour containers run).
#[tokio::test]
async fn a_replication_read_of_purged_entries_sends_none() {
    let dir = TempDir::new().unwrap();
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    let entries: Vec<_> = (1..=10).map(|i| put(i, "c", i, "k", b"v")).collect();
    log.blocking_append(entries).await.unwrap();
    log.purge(log_id(1, 5)).await.unwrap();
    for start in [1, 3, 5] {
        assert!(log.limited_get_log_entries(start, 11).await.unwrap().is_empty(), "from {start}: purged");
    }
    let from6 = log.limited_get_log_entries(6, 11).await.unwrap();
    assert_eq!(from6.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![6, 7, 8, 9, 10]);
}

/// Install `snap` into `follower` the way openraft's transport does (the bytes into the file from
/// `begin_receiving_snapshot`).
async fn install(follower: &mut StateMachine, snap: openraft::storage::Snapshot<TypeConfig>) {
    let mut bytes = Vec::new();
    let mut src = *snap.snapshot;
    src.read_to_end(&mut bytes).await.unwrap();
    let mut dst = follower.begin_receiving_snapshot().await.unwrap();
    dst.write_all(&bytes).await.unwrap();
    follower.install_snapshot(&snap.meta, dst).await.unwrap();
}

/// A node that installs a snapshot, appends what follows it and stops before openraft's own purge
/// comes back on a log openraft can start on. (A replaced node, given a snapshot at 25228 and
/// entries from 25229, was stopped before openraft purged: its log started at 25229 with no last
/// purged id, and at the next start openraft's core quit with `LogIndexNotFound { want: 0, got:
/// Some(25229) }`.) The install purges through the snapshot itself, a later purge with a lower id
/// (openraft keeps some entries below a snapshot) does not move the last purged id back, and a
/// log left in that state by an earlier version is purged through the snapshot at open. A log
/// with a hole the snapshot does not cover is reported as corrupt, not served.
#[tokio::test]
async fn an_installed_snapshot_purges_the_log_it_covers() {
    let leader_dir = TempDir::new().unwrap();
    let (_l_log, mut leader) = open(leader_dir.path()).await.unwrap();
    let mut entries = vec![membership(1)];
    entries.extend((2..=10).map(|i| put(i, "c", i, &format!("k{i}"), b"v")));
    leader.apply(entries).await.unwrap();
    let after: Vec<Entry<TypeConfig>> = (11..=13).map(|i| put(i, "c", i, &format!("k{i}"), b"v")).collect();

    // --- a fresh node: the snapshot at 10, then entries 11..=13, then stopped
    let dir = TempDir::new().unwrap();
    {
        let (mut log, mut sm) = open(dir.path()).await.unwrap();
        install(&mut sm, leader.get_snapshot_builder().await.build_snapshot().await.unwrap()).await;
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 10)), "the install purged through the snapshot");
        log.blocking_append(after.clone()).await.unwrap();
        // openraft's own purge, later and lower: the last purged id stays
        log.purge(log_id(1, 7)).await.unwrap();
    }
    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 10)), Some(log_id(1, 13))));
    let initial = openraft::StorageHelper::new(&mut log, &mut sm).get_initial_state().await;
    initial.unwrap_or_else(|e| panic!("openraft cannot start on this log: {e}"));
    drop((log, sm));

    // --- the same state as an earlier version left it: no last purged id, entries from 11
    let old = TempDir::new().unwrap();
    {
        let (mut log, mut sm) = open(old.path()).await.unwrap();
        install(&mut sm, leader.get_snapshot_builder().await.build_snapshot().await.unwrap()).await;
        log.blocking_append(after.clone()).await.unwrap();
        let mut batch = WriteBatch::default();
        batch.delete_cf(log.store.cf(Cf::Meta).unwrap(), meta_key::LAST_PURGED);
        log.store.write(batch, true).unwrap();
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, None);
        let err = openraft::StorageHelper::new(&mut log, &mut sm).get_initial_state().await.unwrap_err();
        assert!(err.to_string().contains("LogIndex(0)"), "the state the bug left: {err}");
    }
    let (mut log, mut sm) = open(old.path()).await.unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(log_id(1, 10)), "repaired at open");
    openraft::StorageHelper::new(&mut log, &mut sm).get_initial_state().await.unwrap();
    drop((log, sm));

    // --- a gap the snapshot does not cover is not papered over: the log state reports it
    let hole = TempDir::new().unwrap();
    {
        let (mut log, mut sm) = open(hole.path()).await.unwrap();
        install(&mut sm, leader.get_snapshot_builder().await.build_snapshot().await.unwrap()).await;
        log.blocking_append(after[2..].to_vec()).await.unwrap();
    }
    let (mut log, mut sm) = open(hole.path()).await.unwrap();
    let err = log.get_log_state().await.unwrap_err().to_string();
    assert!(err.contains("entries 11..13 are missing"), "{err}");
    assert!(openraft::StorageHelper::new(&mut log, &mut sm).get_initial_state().await.is_err());
}

/// Status callers share the state hash: calls that arrive while one computation runs wait for it
/// instead of each scanning the state; a hash of the applied index is given again; once the state
/// moves, a hash younger than STATE_HASH_REUSE is still given, with its own (older) index, and
/// after that the next call scans again.
#[tokio::test]
async fn concurrent_state_hash_calls_share_one_scan() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path()).await.unwrap();
    let entries: Vec<_> = (1..=2000).map(|i| put(i, "c1", i, &format!("k{i}"), &[7u8; 512])).collect();
    sm.apply(entries).await.unwrap();

    let calls: Vec<_> = (0..16)
        .map(|_| {
            let sm = sm.clone();
            tokio::spawn(async move { sm.state_hash().await.unwrap() })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 2000, "the hash of the applied state");
    assert_eq!(sm.state_hash_scans(), 1, "16 concurrent callers, one scan");
    assert_eq!(sm.state_hash().await.unwrap(), answers[0]);
    assert_eq!(sm.state_hash_scans(), 1, "the applied index has not moved: reused");

    sm.apply([put(2001, "c1", 2001, "k2001", b"moved")]).await.unwrap();
    assert_eq!(sm.state_hash().await.unwrap(), answers[0], "within the reuse window: the older hash, its own index");
    assert_eq!(sm.state_hash_scans(), 1);
    tokio::time::sleep(super::state_machine::STATE_HASH_REUSE).await;
    let (index, hash) = sm.state_hash().await.unwrap();
    assert_eq!((index, sm.state_hash_scans()), (2001, 2));
    assert_ne!(hash, answers[0].1, "the state moved");
}

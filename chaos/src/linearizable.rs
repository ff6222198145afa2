//! A linearizability checker for read/write registers (Wing & Gong's search with Lowe's
//! memoisation, as Knossos and Porcupine do it), per key: a history of a key-value store is
//! linearizable iff each key's history is (P-compositionality), so each key is checked alone.
//!
//! An operation has an invocation time and, if the client heard back, a completion time. One it
//! never heard back about (a timeout, a dropped connection) is *indeterminate*: it may have taken
//! effect at any point after its invocation, or never; it is given an infinite completion time,
//! which lets the search place it anywhere after its invocation, including after everything else
//! (where it changes nothing). A read that failed carries no information and is left out by the
//! caller; a read is only recorded with the value it returned.
//!
//! The search linearizes, one at a time, operations that no pending operation completed before
//! (the "minimal" ones), applying each to the register's state, and backtracks when a read's
//! value is not the state's. A (set of linearized operations, state) pair already seen is not
//! explored again, so each key costs at most 2^n·values steps in theory and little in practice
//! for histories whose concurrency is a handful of clients.

use std::collections::HashSet;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    /// Write a value.
    Write(u64),
    /// Read; `None`: the key was absent.
    Read(Option<u64>),
}

/// One client operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Which client (for reports).
    pub client: u32,
    /// What it did.
    pub call: Call,
    /// When it was invoked (any monotonic unit, e.g. µs since the run started).
    pub invoke: u64,
    /// When it completed; `None`: indeterminate (see the module documentation).
    pub complete: Option<u64>,
}

/// Why a key's history is not linearizable: the longest prefix the search could linearize and
/// the operations none of which could come next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The state after the longest linearizable prefix.
    pub state: Option<u64>,
    /// That prefix, as indexes into the history.
    pub prefix: Vec<usize>,
    /// The operations that could not come next (minimal, not linearizable there).
    pub stuck: Vec<Op>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "after {} operations the register holds {:?}; none of [", self.prefix.len(), self.state)?;
        for (i, op) in self.stuck.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "client {} {:?} invoked {} completed {:?}", op.client, op.call, op.invoke, op.complete)?;
        }
        f.write_str("] can come next")
    }
}

/// What the search concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable(Violation),
    /// The search gave up after this many states without an answer (a history with too many
    /// concurrent or indeterminate operations); neither proved nor refuted.
    Undecided(usize),
}

/// Check one key's history (the register starts absent), without a bound on the search.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    match check_within(history, usize::MAX) {
        Verdict::NotLinearizable(v) => Err(v),
        _ => Ok(()),
    }
}

/// Check one key's history, exploring at most `budget` states.
pub fn check_within(history: &[Op], budget: usize) -> Verdict {
    let n = history.len();
    let ret: Vec<u64> = history.iter().map(|o| o.complete.unwrap_or(u64::MAX)).collect();
    let words = n.div_ceil(64).max(1);
    let mut done = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut best: (usize, Option<u64>, Vec<usize>) = (0, None, Vec::new());
    let mut path = Vec::new();
    let mut s = Search { history, ret: &ret, seen: &mut seen, best: &mut best, budget };
    match s.search(&mut done, None, &mut path) {
        Some(true) => return Verdict::Linearizable,
        None => return Verdict::Undecided(seen.len()),
        Some(false) => {}
    }
    let (_, state, prefix) = best;
    let mut done = vec![0u64; words];
    for &i in &prefix {
        done[i / 64] |= 1 << (i % 64);
    }
    let stuck = minimal(history, &ret, &done).into_iter().map(|i| history[i].clone()).collect();
    Verdict::NotLinearizable(Violation { state, prefix, stuck })
}

fn is_done(done: &[u64], i: usize) -> bool {
    done[i / 64] & (1 << (i % 64)) != 0
}

/// The pending operations invoked before every pending one completed: the candidates to come next.
fn minimal(history: &[Op], ret: &[u64], done: &[u64]) -> Vec<usize> {
    let earliest_return = (0..history.len()).filter(|i| !is_done(done, *i)).map(|i| ret[i]).min();
    let Some(bound) = earliest_return else { return Vec::new() };
    (0..history.len()).filter(|i| !is_done(done, *i) && history[*i].invoke <= bound).collect()
}

/// The search's fixed parts.
struct Search<'a> {
    history: &'a [Op],
    ret: &'a [u64],
    seen: &'a mut HashSet<(Vec<u64>, Option<u64>)>,
    best: &'a mut (usize, Option<u64>, Vec<usize>),
    budget: usize,
}

impl Search<'_> {
    /// `Some(true)`: the rest linearizes from here; `Some(false)`: it does not; `None`: the
    /// budget ran out.
    fn search(&mut self, done: &mut Vec<u64>, state: Option<u64>, path: &mut Vec<usize>) -> Option<bool> {
        let history = self.history;
        if path.len() == history.len() {
            return Some(true);
        }
        // Only indeterminate operations left: each may never have happened.
        if (0..history.len()).all(|i| is_done(done, i) || history[i].complete.is_none()) {
            return Some(true);
        }
        if self.seen.len() >= self.budget {
            return None;
        }
        if !self.seen.insert((done.clone(), state)) {
            return Some(false);
        }
        if path.len() > self.best.0 {
            *self.best = (path.len(), state, path.clone());
        }
        for i in minimal(history, self.ret, done) {
            let next = match &history[i].call {
                Call::Write(v) => Some(*v),
                Call::Read(r) if *r == state => state,
                Call::Read(_) => continue,
            };
            done[i / 64] |= 1 << (i % 64);
            path.push(i);
            match self.search(done, next, path) {
                Some(false) => {}
                other => return other,
            }
            path.pop();
            done[i / 64] &= !(1 << (i % 64));
        }
        Some(false)
    }
}

/// One linearizable read of an object that only ever grows (a job's cards done): its value with
/// its invocation and completion times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonotoneRead {
    pub invoke: u64,
    pub complete: u64,
    pub value: u64,
}

/// Reads of a value that the system only ever increases (its writes are not observed) are
/// linearizable iff no read returns less than a read that completed before it was invoked: each
/// read can then be placed at a point where the value was what it returned. The first pair that
/// breaks it, if any.
pub fn check_monotone(reads: &[MonotoneRead]) -> Result<(), (MonotoneRead, MonotoneRead)> {
    let mut by_complete: Vec<&MonotoneRead> = reads.iter().collect();
    by_complete.sort_by_key(|r| r.complete);
    let mut by_invoke: Vec<&MonotoneRead> = reads.iter().collect();
    by_invoke.sort_by_key(|r| r.invoke);
    // Sweep the reads in invocation order, folding in every read completed before: the largest
    // value already returned.
    let (mut k, mut max): (usize, Option<&MonotoneRead>) = (0, None);
    for b in by_invoke {
        while k < by_complete.len() && by_complete[k].complete < b.invoke {
            if max.is_none_or(|m| by_complete[k].value > m.value) {
                max = Some(by_complete[k]);
            }
            k += 1;
        }
        if let Some(a) = max
            && b.value < a.value
        {
            return Err((*a, *b));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn w(client: u32, v: u64, invoke: u64, complete: Option<u64>) -> Op {
        Op { client, call: Call::Write(v), invoke, complete }
    }
    fn r(client: u32, v: Option<u64>, invoke: u64, complete: u64) -> Op {
        Op { client, call: Call::Read(v), invoke, complete: Some(complete) }
    }

    #[test]
    fn sequential_histories() {
        assert!(check(&[]).is_ok());
        assert!(check(&[r(1, None, 0, 1), w(1, 5, 2, Some(3)), r(2, Some(5), 4, 5)]).is_ok());
        // A read of a value never written.
        let v = check(&[w(1, 5, 0, Some(1)), r(2, Some(6), 2, 3)]).unwrap_err();
        assert_eq!((v.state, v.prefix.len()), (Some(5), 1));
        assert!(v.to_string().contains("Read(Some(6))"), "{v}");
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        // w(1) completes, then w(2) completes, then a read returns 1: stale.
        let h = [w(1, 1, 0, Some(10)), w(1, 2, 20, Some(30)), r(2, Some(1), 40, 50)];
        assert!(check(&h).is_err());
        // The same read overlapping the second write may see either value.
        let h = [w(1, 1, 0, Some(10)), w(1, 2, 20, Some(45)), r(2, Some(1), 40, 50)];
        assert!(check(&h).is_ok());
        let h = [w(1, 1, 0, Some(10)), w(1, 2, 20, Some(45)), r(2, Some(2), 40, 50)];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn reads_must_agree_on_the_order_of_concurrent_writes() {
        // Two concurrent writes; one reader sees 1 then 2, another 2 then 1, all after both
        // writes completed: no single order explains both.
        let h = [
            w(1, 1, 0, Some(10)),
            w(2, 2, 0, Some(10)),
            r(3, Some(1), 20, 30),
            r(4, Some(2), 20, 30),
            r(3, Some(2), 40, 50),
            r(4, Some(1), 40, 50),
        ];
        assert!(check(&h).is_err());
        // One order for everybody is fine: 2 is written after 1 was read.
        let h = [
            w(1, 1, 0, Some(10)),
            w(2, 2, 0, Some(35)),
            r(3, Some(1), 11, 12),
            r(4, Some(2), 20, 30),
            r(3, Some(2), 40, 50),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn indeterminate_writes_may_or_may_not_have_happened() {
        // A write that timed out, then a read of it: it happened.
        assert!(check(&[w(1, 7, 0, None), r(2, Some(7), 100, 110)]).is_ok());
        // ... or a read of the absent key: it had not (or never) happened.
        assert!(check(&[w(1, 7, 0, None), r(2, None, 100, 110)]).is_ok());
        // Once seen it cannot be undone by nothing: absent after 7 was read is a violation.
        assert!(check(&[w(1, 7, 0, None), r(2, Some(7), 100, 110), r(2, None, 120, 130)]).is_err());
        // It cannot have happened before it was invoked.
        assert!(check(&[r(2, Some(7), 0, 10), w(1, 7, 20, None)]).is_err());
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        // w(1) acknowledged, w(2) acknowledged after it, later reads show 1: the second write
        // was lost.
        let h = [w(1, 1, 0, Some(5)), w(2, 2, 6, Some(8)), r(3, Some(2), 9, 10), r(3, Some(1), 11, 12)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn many_concurrent_clients_stay_tractable() {
        // 8 clients, 40 rounds: each round every client writes its own value concurrently,
        // then all read the last writer's value.
        let mut h = Vec::new();
        for round in 0..40u64 {
            let t = round * 100;
            for c in 0..8u32 {
                h.push(w(c, round * 10 + u64::from(c), t, Some(t + 50)));
            }
            for c in 0..8u32 {
                h.push(r(c, Some(round * 10 + 7), t + 60, t + 70));
            }
        }
        assert!(check(&h).is_ok());
        h.push(r(0, Some(3), 10_000, 10_001));
        assert!(check(&h).is_err());
        // A budget too small to decide says so rather than guess.
        assert!(matches!(check_within(&h, 10), Verdict::Undecided(_)));
    }

    #[test]
    fn monotone_reads_that_go_back_in_real_time_are_caught() {
        let r = |invoke, complete, value| MonotoneRead { invoke, complete, value };
        // Overlapping reads may see the value in either order.
        assert!(check_monotone(&[r(0, 10, 5), r(5, 15, 3), r(12, 20, 5)]).is_ok());
        // A read invoked after another completed may not return less.
        let bad = [r(0, 10, 5), r(11, 20, 4)];
        assert_eq!(check_monotone(&bad), Err((bad[0], bad[1])));
        // Whatever the order of the history.
        let bad = [r(30, 40, 1), r(0, 10, 2), r(15, 20, 2)];
        assert_eq!(check_monotone(&bad), Err((bad[1], bad[0])));
        assert!(check_monotone(&[]).is_ok());
    }
}

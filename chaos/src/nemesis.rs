//! The nemesis: a schedule of faults drawn from a seed (the same seed gives the same schedule),
//! one fault at a time, each undone before the next; nodes are named in the schedule by index or
//! as "the leader", which is resolved when the fault starts.

use serde::Serialize;

/// The faults the nemesis knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// SIGKILL the leader, start it again after the fault's length.
    LeaderKill,
    /// SIGKILL a node (any), start it again.
    Kill,
    /// Freeze a node (SIGSTOP / cgroup freezer), thaw it.
    Pause,
    /// Cut the leader off from every other node (the leader in the minority), heal.
    PartitionLeader,
    /// Cut a random minority off from the rest (the leader may be in the majority), heal.
    PartitionMinority,
    /// Stop every node (SIGTERM), start them all again.
    RestartAll,
    /// Split the others into two halves that cannot reach each other; one node (the bridge)
    /// reaches both.
    Bridge,
    /// Cut every link from one node (the leader for an even pick) to the others, one way only:
    /// it hears them, they do not hear it.
    OneWay,
    /// Slow one node's HSM (hsm-sim fault file: 50-200 ms on every operation).
    HsmSlow,
    /// Fail one node's HSM slot (every operation `CKR_DEVICE_ERROR`).
    HsmFail,
    /// One node's HSM slot stops answering (calls block until it is revived).
    HsmDead,
    /// Move one node's wall clock 30-120 s ahead or behind (libfaketime in its process).
    ClockSkew,
    /// Remove a follower from the voters (it keeps running), add it back afterwards.
    Membership,
    /// Remove a follower, erase its log and state, start it fresh and add it back: it must catch
    /// up (by snapshot once the leader has purged its log).
    Replace,
}

impl Kind {
    /// Every fault, in the order of `--nemesis` names.
    pub const ALL: [Kind; 14] = [
        Kind::LeaderKill,
        Kind::Kill,
        Kind::Pause,
        Kind::PartitionLeader,
        Kind::PartitionMinority,
        Kind::RestartAll,
        Kind::Bridge,
        Kind::OneWay,
        Kind::HsmSlow,
        Kind::HsmFail,
        Kind::HsmDead,
        Kind::ClockSkew,
        Kind::Membership,
        Kind::Replace,
    ];

    /// The `--nemesis` name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::LeaderKill => "leader-kill",
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::PartitionLeader => "partition-leader",
            Kind::PartitionMinority => "partition-minority",
            Kind::RestartAll => "restart-all",
            Kind::Bridge => "bridge",
            Kind::OneWay => "one-way",
            Kind::HsmSlow => "hsm-slow",
            Kind::HsmFail => "hsm-fail",
            Kind::HsmDead => "hsm-dead",
            Kind::ClockSkew => "clock-skew",
            Kind::Membership => "membership",
            Kind::Replace => "replace",
        }
    }

    /// Parse a comma-separated `--nemesis` list (`all`: every fault).
    pub fn parse_list(s: &str) -> Result<Vec<Kind>, String> {
        if s.trim() == "all" {
            return Ok(Kind::ALL.to_vec());
        }
        s.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                Kind::ALL.into_iter().find(|k| k.name() == n).ok_or_else(|| {
                    let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                    format!("--nemesis: unknown fault {n:?} (known: {}, or all)", known.join(", "))
                })
            })
            .collect()
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// Seconds after the workload started.
    pub at_s: u64,
    pub kind: Kind,
    /// How long it lasts, seconds.
    pub len_s: u64,
    /// For faults on a chosen node or minority: a seed-drawn number the runner maps onto the
    /// nodes (`pick % nodes`).
    pub pick: u64,
}

pub use quill_tests::Rng;

/// In `lo..=hi`.
fn between(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.next_u64() % (hi - lo + 1)
}

/// The schedule for `seed`: faults of `kinds` from second 3 until `faults_until_s`, each lasting
/// 2-5 s, with 1-4 s of calm after each. The kinds are dealt like cards from a shuffled deck,
/// shuffled again when it runs out, so a run long enough for `kinds.len()` faults has each once.
pub fn schedule(seed: u64, kinds: &[Kind], faults_until_s: u64) -> Vec<Fault> {
    // Mixed first: neighbouring seeds give unrelated schedules.
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Vec::new();
    let mut t = 3;
    let mut deck: Vec<Kind> = Vec::new();
    while !kinds.is_empty() {
        if deck.is_empty() {
            deck = kinds.to_vec();
            // Fisher-Yates; dealt from the end.
            for i in (1..deck.len()).rev() {
                deck.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
        }
        let Some(kind) = deck.pop() else { break };
        let len_s = between(&mut rng, 2, 5);
        if t + len_s > faults_until_s {
            break;
        }
        out.push(Fault { at_s: t, kind, len_s, pick: rng.next_u64() });
        t += len_s + between(&mut rng, 1, 4);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = schedule(7, &Kind::ALL, 60);
        assert_eq!(a, schedule(7, &Kind::ALL, 60));
        assert_ne!(a, schedule(8, &Kind::ALL, 60));
        assert!(a.len() >= 5, "{a:?}");
        assert!(a.windows(2).all(|w| w[0].at_s + w[0].len_s < w[1].at_s), "one fault at a time: {a:?}");
        assert!(a.iter().all(|f| f.at_s + f.len_s <= 60));
        assert!(schedule(7, &[], 60).is_empty());
        // Dealt from a deck: the first |kinds| faults are every kind once.
        let long = schedule(7, &Kind::ALL, 1000);
        let mut first: Vec<&str> = long[..Kind::ALL.len()].iter().map(|f| f.kind.name()).collect();
        first.sort_unstable();
        let mut all: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        all.sort_unstable();
        assert_eq!(first, all);
    }

    #[test]
    fn nemesis_names_parse() {
        assert_eq!(Kind::parse_list("kill, pause").unwrap(), vec![Kind::Kill, Kind::Pause]);
        assert_eq!(Kind::parse_list("all").unwrap(), Kind::ALL.to_vec());
        assert_eq!(
            Kind::parse_list("bridge,one-way,replace").unwrap(),
            vec![Kind::Bridge, Kind::OneWay, Kind::Replace]
        );
        for k in Kind::ALL {
            assert_eq!(Kind::parse_list(k.name()).unwrap(), vec![k], "{}", k.name());
        }
        assert!(Kind::parse_list("kill,melt").unwrap_err().contains("melt"));
    }
}

//! `quill-chaos`: a workload (card batches, register clients, key management: [`clerk`]) against a live cluster of
//! processes or containers while a seeded nemesis injects faults (leader and node kills, pauses,
//! partitions with the leader in the minority or the majority, full restarts), then the checks
//! of the project's promises: every card exactly once, every acknowledged write kept (each key's
//! history linearizable, [`linearizable`]), every node converged, the audit chain intact on every
//! node, no clear TEST key or PAN on any disk ([`run`]).

pub mod clerk;
pub mod linearizable;
pub mod nemesis;
pub mod run;

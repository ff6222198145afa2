//! `quill-chaos`: fault injection (killed nodes, cut links, slow or failing HSM slots through the
//! simulator's fault file), a card-batch workload, and the invariant checks run against a live
//! cluster (no card lost or issued twice, the audit chain intact).
//!
//! The crate is empty until the cluster issues fill it.

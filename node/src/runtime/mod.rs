//! The per-node runtime: what acts on the decisions the replicated state records (openraft's
//! engine/runtime split). The state says what should happen; these actors do the HSM work and
//! propose the results through a [`agent::Proposer`] (the API's write path), never calling into
//! the gRPC layer themselves.
//!
//! - [`agent`]: the key agent: enrolment, forming the SMK and ceremony keys inside this node's HSM,
//!   SMK grants, the audit keys and seals, and the audit MAC of the requests this node proposes;
//! - [`worker`]: the job workers: one per HSM slot, claiming chunks, preparing them, committing
//!   sealed results with the claim's fencing token, and expiring jobs past their retention;
//! - [`eraser`]: after a purge or a key destruction, removes the erased bytes from this node's
//!   Raft log, snapshot and database files.
//!
//! Each has its own error ([`agent::AgentError`], [`worker::WorkerError`]) that keeps the class of
//! its cause: the HSM's [`quill_hsm::HsmError`], the store's, or a proposal's
//! [`agent::ProposeError`] (no leader now, outcome unknown, refused before Raft, node failure).
//! A round that fails is logged and retried; none of them carries key material, a PIN or a PAN.

pub mod agent;
pub mod eraser;
pub mod worker;

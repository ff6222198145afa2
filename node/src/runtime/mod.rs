//! The per-node runtime: what acts on the decisions the replicated state records (openraft's
//! engine/runtime split). The state says what should happen; these actors do the HSM work and
//! propose the results through a [`agent::Proposer`] (the API's write path), never calling into
//! the gRPC layer themselves.
//!
//! - [`agent`]: the key agent: enrolment, forming the SMK and ceremony keys inside this node's HSM,
//!   SMK grants, the audit keys and seals, and the audit MAC of the requests this node proposes;
//! - [`worker`]: the job workers: one per HSM slot, claiming chunks, preparing them, committing
//!   sealed results with the claim's fencing token, and expiring jobs past their retention.

pub mod agent;
pub mod worker;

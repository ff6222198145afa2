//! Key management: the replicated model ([`model`]) and the commands and how they apply
//! ([`apply`]). The per-node agent that does the HSM work the state asks for is
//! [`crate::runtime::agent`].
//!
//! Keys live only inside HSMs. The cluster state holds them wrapped under the storage master key
//! (SMK), or sealed to a node's HSM transport key while a ceremony is under way; apply never sees
//! a clear key, and neither does any log line or error message.

pub mod apply;
pub mod model;
pub mod transport;

pub use apply::{Applied, Ctx, KeyCommand, revoked_serials};

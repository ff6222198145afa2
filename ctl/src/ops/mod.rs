//! Operator commands: they talk to a production cluster through `quill.v1` (membership, key
//! ceremonies and the inventory, approvals, the audit chain, CA and issuer keys, batches).

pub mod audit;
pub mod cluster;
pub mod distribute;
pub mod emv_ca;
pub mod exchange;
pub mod hotfolder;
pub mod identity;
pub mod issuers;
pub mod jobs;
pub mod keys;
pub mod profile;

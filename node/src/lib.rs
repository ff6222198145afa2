//! The Quill node: the library behind the `quilld` daemon. One module per concern, data flowing top
//! to bottom: `api` (gRPC services), `jobs` (batch lifecycle), `prep` (the pure data-preparation
//! engine), `keys`, `audit`, `hsm` (the PKCS#11 adapter), `raft` and `store` (RocksDB).
//!
//! So far: [`api`] (the Cluster gRPC service and the HTTP health/metrics endpoint), [`network`]
//! (the Raft transport over gRPC), [`raft`] (the openraft type configuration, the replicated
//! commands, and the durable log store and state machine) on [`store`] (RocksDB column families
//! and codecs); [`config`] and [`server`] (boot and shutdown) for the `quilld` binary. A lower
//! layer never calls up: `store` knows nothing of Raft.

pub mod api;
pub mod audit;
pub mod config;
pub mod jobs;
pub mod keys;
pub mod network;
pub mod raft;
pub mod server;
pub mod store;

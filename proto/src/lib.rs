//! Quill's wire contract: the `.proto` files for the Cluster, Keys, Ceremony, Jobs, Audit, Ca and
//! Exchange services, and the tonic/prost code generated from them at build time (with a vendored
//! `protoc`, so no system compiler is needed).
//!
//! So far: `quill.v1.Raft` (the transport between nodes: opaque postcard payloads in an envelope)
//! and `quill.v1.Cluster` (the client API: writes, reads, status, membership), both in [`v1`]
//! with clients and servers.

/// The `quill.v1` package: messages, `raft_client`/`raft_server`, `cluster_client`/`cluster_server`.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("quill.v1");
}

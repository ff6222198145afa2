//! Quill's wire contract: the `.proto` files of the `quill.v1` package and the tonic/prost code
//! generated from them at build time (with a vendored `protoc`, so no system compiler is needed).
//!
//! - `quill.v1.Cluster`: status, membership, and the Raft benchmark's own key space;
//! - `quill.v1.Keys`: key management, one typed request per operation, and the audit chain;
//! - `quill.v1.Jobs`: batches (submit, fetch, MAC, acknowledge, cancel);
//! - `quill.v1.Exchange`: partner key exchange (TR-31 under a zone master key);
//! - `quill.v1.Raft`: the transport between nodes (openraft's messages and forwarded writes as
//!   opaque postcard payloads in an envelope), on the nodes' internal port.
//!
//! The wire only grows: `wire.lock` beside this crate lists every service, method, message and
//! field with its number and type, and `tests/wire_compat.rs` fails when one of them is removed,
//! renumbered or retyped (see `README.md` here for the rule and how to record an addition).

/// The `quill.v1` package: messages, clients and servers.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("quill.v1");
}

/// The encoded `FileDescriptorSet` of `quill.v1`, as compiled into this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/quill_v1_descriptor.bin"));

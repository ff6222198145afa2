//! The Quill node: the library behind the `quilld` daemon.
//!
//! The module graph, top to bottom; a module imports only modules below it (DESIGN.md §2):
//!
//! ```text
//! server, api        gRPC services, boot and shutdown (api maps requests to commands)
//! runtime            the per-node actors: the key agent (HSM work), the job workers
//! raft, network      openraft storage (calls state::apply) and the Raft transport
//! state              one request applied: dispatch to a domain through a prefix-scoped view,
//!                    the audit record; what a client may send (state::validate)
//! keys, jobs, audit  the domains: pure apply over a key-value view (keys/, jobs/, audit/)
//! domain             what domains share: Ctx, Applied, the role check, field checks
//! store, tls         RocksDB column families and codecs; mutual TLS, certificate identities, PKI
//! identity           NodeId, Actor, Role, CertRef (a leaf)
//!                    (identity and tls are the quill-trust crate, which the client shares)
//! ```
//!
//! `jobs::intake` (check, chunk, seal a submitted file with a data key from this node's HSM) is the
//! one domain part that calls an HSM; the API runs it before it proposes the job.

pub mod api;
pub mod audit;
pub mod config;
pub mod domain;
pub mod jobs;
pub mod keys;
pub mod network;
pub mod raft;
pub mod runtime;
pub mod server;
pub mod state;
pub mod store;

/// `NodeId`, `Role`, `Actor`, `CertRef`: the `quill-trust` crate's leaf, shared with the client.
pub use quill_trust::identity;
/// Mutual TLS, certificate identities and the PKI: the `quill-trust` crate, shared with the client.
pub use quill_trust::tls;

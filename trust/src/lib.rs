//! Who is who in a Quill cluster and how they prove it, shared by the node (`quill-node`) and the
//! `quill` client so that the client never depends on the node:
//!
//! - [`identity`]: `NodeId`, `Role`, `Actor`, `CertRef` (a leaf);
//! - [`tls`]: mutual TLS 1.3 for every listener and channel, certificate identities
//!   (`quill:role/<role>/<name>`), revocation, and [`tls::pki`], the cluster's CAs and leaves;
//! - [`loopback`]: free loopback ports for dev clusters and tests.

pub mod identity;
pub mod loopback;
pub mod tls;

//! Quill's wire contract: the `.proto` files for the Cluster, Keys, Ceremony, Jobs, Audit, Ca and
//! Exchange services, and the tonic/prost code generated from them at build time (with a vendored
//! `protoc`, so no system compiler is needed).
//!
//! The crate is empty until the cluster issues define the services and fill it.

//! The Quill node: the library behind the `quilld` daemon. One module per concern, data flowing top
//! to bottom: `api` (gRPC services), `jobs` (batch lifecycle), `prep` (the pure data-preparation
//! engine), `keys`, `audit`, `hsm` (the PKCS#11 adapter), `raft` and `store` (RocksDB).
//!
//! The crate is empty until the cluster issues fill it.

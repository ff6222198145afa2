//! End-to-end tests that start real multi-node Quill clusters: `quilld` processes on loopback, and
//! containers where Docker exists, each node with its own simulated HSM tokens. Shared fixtures live
//! in this library; the tests themselves go under `tests/tests/`.
//!
//! The crate is empty until the cluster issues fill it.

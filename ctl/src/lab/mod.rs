//! Lab commands: local dev clusters, the demo, data preparation in one process with the TEST
//! keys, the TEST key set, the benchmarks, and the raw PKCS#11 calls of the HSM walk-through.

pub mod bench;
pub mod bench_cluster;
pub mod demo;
pub mod demo_hsm;
pub mod dev;
pub mod pkcs11;
pub mod prep;
pub mod testset;

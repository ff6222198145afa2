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

/// What a command that needs the TEST keys says in a build without them.
#[cfg(not(feature = "test-keys"))]
pub fn no_test_keys(what: &str) -> anyhow::Error {
    crate::exit_codes::CliError::Usage(format!(
        "{what} needs the TEST keys, and this quill was built without them (the `test-keys` feature is off: a \
         production build). Use a default build for demos and labs."
    ))
    .into()
}

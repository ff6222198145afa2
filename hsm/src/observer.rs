//! Reporting uses of the host path (key material in host memory) so the node can audit them.

use std::path::PathBuf;

/// One use of the host path: an operation the module could not do inside the HSM, done with key
/// material in (zeroized) host memory because the slot's configuration allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathUse {
    /// Adapter operation (`form_smk`, `import_components`, `tr31_import`, `tr31_export`).
    pub operation: &'static str,
    /// What was done in host memory and why (`XOR of 3 key components: the module lacks
    /// CKM_QUILL_KEY_COMPONENTS_XOR`).
    pub what: String,
    /// Algorithm of the key material (`AES-256`, `RSA-1024`).
    pub alg: String,
    /// Module path.
    pub module: PathBuf,
    /// Slot id.
    pub slot: u64,
    /// Token label.
    pub token_label: String,
}

/// Told about every host-path use, before the key material reaches host memory (so the report
/// exists even if the process dies half-way). The node appends it to the audit chain.
pub trait HostPathObserver: Send + Sync {
    /// Called once per use.
    fn host_path_used(&self, used: &HostPathUse);
}

impl<F: Fn(&HostPathUse) + Send + Sync> HostPathObserver for F {
    fn host_path_used(&self, used: &HostPathUse) {
        self(used);
    }
}

/// An observer that only logs (a `tracing` warning). For tools and tests; a node passes one that
/// writes to the audit chain.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogHostPath;

impl HostPathObserver for LogHostPath {
    fn host_path_used(&self, used: &HostPathUse) {
        tracing::warn!(
            operation = used.operation,
            what = %used.what,
            alg = %used.alg,
            module = %used.module.display(),
            slot = used.slot,
            token = %used.token_label,
            "HSM host path: key material in host memory"
        );
    }
}

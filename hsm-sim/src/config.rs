//! Module configuration: `QUILL_HSM_CONF` (a TOML file) or `QUILL_HSM_DIR` (defaults).
//!
//! ```toml
//! token_dir = "/var/lib/quill-hsm"   # one sub-directory per slot
//! pin_kdf_iterations = 200000         # PBKDF2-HMAC-SHA256 rounds protecting the token key
//! max_pin_tries = 5                   # wrong PINs before the PIN locks
//! fault_file = "/var/lib/quill-hsm/faults.toml"  # optional; watched at run time (see fault.rs)
//!
//! [[slot]]
//! id = 0
//! description = "quill sim slot 0"
//! key_separation = true               # the payment-HSM key policy (default on; README "Key hygiene")
//! kbpk_translate = false              # CKM_QUILL_TR31_TRANSLATE (default off; README "TR-31 translation")
//! ```

use crate::error::{Error, Result};
use cryptoki_sys::*;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default PBKDF2 rounds for the PIN → key-encryption-key step.
pub const DEFAULT_KDF_ITERATIONS: u32 = 100_000;
/// Default number of wrong PINs before the PIN locks.
pub const DEFAULT_MAX_PIN_TRIES: u32 = 10;

/// One slot of the module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// Slot id as the caller sees it.
    pub id: CK_SLOT_ID,
    /// Free text for `CK_SLOT_INFO.slotDescription`.
    #[serde(default)]
    pub description: Option<String>,
    /// The key-separation policy of this token (README "Key hygiene"): a secret or private key
    /// may not be both a key-encryption key (`CKA_WRAP`/`CKA_UNWRAP`) and a data key
    /// (`CKA_ENCRYPT`/`CKA_DECRYPT`). On unless the configuration turns it off.
    #[serde(default = "default_true")]
    pub key_separation: bool,
    /// Whether `CKM_QUILL_TR31_TRANSLATE` is available on this token (README "TR-31
    /// translation"): off unless the configuration turns it on, because a logged-in user who
    /// creates a KBPK from bytes they know can translate a non-exportable block to it and open it
    /// outside the module. Turn it on only for the window of a storage-master-key rotation.
    #[serde(default)]
    pub kbpk_translate: bool,
}

fn default_true() -> bool {
    true
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding one sub-directory per slot (`slot-<id>`).
    pub token_dir: PathBuf,
    /// PBKDF2 rounds for new PIN records.
    #[serde(default = "default_iterations")]
    pub pin_kdf_iterations: u32,
    /// Wrong PINs before `CKR_PIN_LOCKED`.
    #[serde(default = "default_tries")]
    pub max_pin_tries: u32,
    /// The fault-injection control file (watched while the module runs).
    #[serde(default)]
    pub fault_file: Option<PathBuf>,
    /// Slots; two (ids 0 and 1) when absent.
    #[serde(default, rename = "slot")]
    pub slots: Vec<SlotConfig>,
}

fn default_iterations() -> u32 {
    DEFAULT_KDF_ITERATIONS
}
fn default_tries() -> u32 {
    DEFAULT_MAX_PIN_TRIES
}

impl Config {
    /// Configuration with defaults for a token directory: two slots, default KDF and tries,
    /// fault file `<dir>/faults.toml`.
    pub fn for_dir(dir: &Path) -> Self {
        Config {
            token_dir: dir.to_path_buf(),
            pin_kdf_iterations: DEFAULT_KDF_ITERATIONS,
            max_pin_tries: DEFAULT_MAX_PIN_TRIES,
            fault_file: Some(dir.join("faults.toml")),
            slots: Vec::new(),
        }
        .with_default_slots()
    }

    fn with_default_slots(mut self) -> Self {
        if self.slots.is_empty() {
            self.slots = (0..2)
                .map(|id| SlotConfig { id, description: None, key_separation: true, kbpk_translate: false })
                .collect();
        }
        self
    }

    /// Parse a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::general(format!("QUILL_HSM_CONF {}: cannot read: {e}", path.display())))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| {
            Error::general(format!("QUILL_HSM_CONF {}: {}", path.display(), e.to_string().replace('\n', " ")))
        })?;
        if cfg.pin_kdf_iterations == 0 || cfg.max_pin_tries == 0 {
            return Err(Error::general(format!(
                "QUILL_HSM_CONF {}: pin_kdf_iterations and max_pin_tries must be > 0",
                path.display()
            )));
        }
        let cfg = cfg.with_default_slots();
        let mut ids: Vec<_> = cfg.slots.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != cfg.slots.len() {
            return Err(Error::general(format!("QUILL_HSM_CONF {}: slot ids must be unique", path.display())));
        }
        Ok(cfg)
    }

    /// Read the configuration the environment names: `QUILL_HSM_CONF`, else `QUILL_HSM_DIR`.
    pub fn from_env() -> Result<Self> {
        if let Some(p) = std::env::var_os("QUILL_HSM_CONF") {
            return Self::from_file(Path::new(&p));
        }
        if let Some(d) = std::env::var_os("QUILL_HSM_DIR") {
            return Ok(Self::for_dir(Path::new(&d)));
        }
        Err(Error::general("quill-hsm-sim: set QUILL_HSM_CONF (a TOML file) or QUILL_HSM_DIR (a token directory)"))
    }
}

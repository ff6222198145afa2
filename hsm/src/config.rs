//! Configuration of one slot ([`SlotConfig`]) and of a pool of slots ([`PoolConfig`]), as they
//! appear in the node's TOML:
//!
//! ```toml
//! [hsm]
//! op_timeout_ms = 10000
//! [[hsm.slots]]
//! module = "/usr/lib/quill/libquill_hsm_sim.so"
//! token_label = "node1-a"
//! pin_file = "/etc/quill/hsm-pin"        # or pin_env = "QUILL_HSM_PIN", or pin = "..."
//! [[hsm.slots]]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! slot = 1234
//! pin_env = "SOFTHSM_PIN"
//! allow_host_key_material = true         # SoftHSM cannot XOR key components inside
//! ```

use crate::error::HsmError;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// One slot of one PKCS#11 module.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Slot id. Exactly one of `slot` and `token_label` must be set.
    #[serde(default)]
    pub slot: Option<u64>,
    /// Token label (trailing blanks ignored). Exactly one of `slot` and `token_label`.
    #[serde(default)]
    pub token_label: Option<String>,
    /// The user PIN, inline. Exactly one of `pin`, `pin_env` and `pin_file`; prefer the other two.
    #[serde(default)]
    pub pin: Option<String>,
    /// Name of an environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// File holding the user PIN (trailing newline ignored). Refused when group or others can
    /// read it.
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Allow operations this module cannot do inside the HSM to bring key material into host
    /// memory (zeroized buffers, each use reported to the [`crate::HostPathObserver`]).
    #[serde(default)]
    pub allow_host_key_material: bool,
    /// Logged-in sessions kept open on the slot (each used by one thread at a time).
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Unwrapped working-key handles cached per session.
    #[serde(default = "default_key_cache")]
    pub key_cache: usize,
    /// Prefix of the labels of the adapter's token objects (`<prefix>-transport`,
    /// `<prefix>-smk`). Tests use `TEST-quill`.
    #[serde(default = "default_label_prefix")]
    pub label_prefix: String,
}

fn default_sessions() -> usize {
    2
}

fn default_key_cache() -> usize {
    256
}

fn default_label_prefix() -> String {
    "quill".to_owned()
}

impl SlotConfig {
    /// A configuration with defaults: `module`, slot chosen by token label, inline PIN.
    pub fn new(module: impl Into<PathBuf>, token_label: impl Into<String>, pin: impl Into<String>) -> SlotConfig {
        SlotConfig {
            module: module.into(),
            slot: None,
            token_label: Some(token_label.into()),
            pin: Some(pin.into()),
            pin_env: None,
            pin_file: None,
            allow_host_key_material: false,
            sessions: default_sessions(),
            key_cache: default_key_cache(),
            label_prefix: default_label_prefix(),
        }
    }

    /// The user PIN from whichever source is configured.
    pub(crate) fn resolve_pin(&self) -> Result<Zeroizing<String>, HsmError> {
        let cfg = |reason: String| HsmError::Config { reason };
        match (&self.pin, &self.pin_env, &self.pin_file) {
            (Some(p), None, None) => Ok(Zeroizing::new(p.clone())),
            (None, Some(var), None) => std::env::var(var)
                .map(Zeroizing::new)
                .map_err(|_| cfg(format!("pin_env: environment variable {var} is not set (or not UTF-8)"))),
            (None, None, Some(path)) => read_pin_file(path),
            _ => Err(cfg(format!("slot on {}: set exactly one of pin, pin_env and pin_file", self.module.display()))),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), HsmError> {
        let cfg = |reason: String| Err(HsmError::Config { reason });
        match (&self.slot, &self.token_label) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return cfg(format!("slot on {}: set exactly one of slot and token_label", self.module.display())),
        }
        if self.sessions == 0 || self.sessions > 64 {
            return cfg(format!("sessions = {}: must be 1..=64", self.sessions));
        }
        if self.key_cache == 0 {
            return cfg("key_cache must be at least 1".to_owned());
        }
        if self.label_prefix.is_empty() {
            return cfg("label_prefix must not be empty".to_owned());
        }
        Ok(())
    }
}

fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, HsmError> {
    use std::os::unix::fs::PermissionsExt as _;
    let cfg = |reason: String| HsmError::Config { reason };
    let meta = std::fs::metadata(path).map_err(|e| cfg(format!("pin_file {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(cfg(format!(
            "pin_file {} can be read by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| cfg(format!("pin_file {}: {e}", path.display())))?);
    Ok(Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned()))
}

impl fmt::Debug for SlotConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotConfig")
            .field("module", &self.module)
            .field("slot", &self.slot)
            .field("token_label", &self.token_label)
            .field("pin", &self.pin.as_ref().map(|_| "<redacted>"))
            .field("pin_env", &self.pin_env)
            .field("pin_file", &self.pin_file)
            .field("allow_host_key_material", &self.allow_host_key_material)
            .field("sessions", &self.sessions)
            .field("key_cache", &self.key_cache)
            .field("label_prefix", &self.label_prefix)
            .finish()
    }
}

/// A pool of slots ([`crate::HsmPool`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The slots, in order of preference for the transport key (see [`crate::HsmPool`]).
    pub slots: Vec<SlotConfig>,
    /// How long an operation may take before its slot is taken out and the operation retried
    /// elsewhere.
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
    /// The same for RSA key generation (transport key), which takes seconds on a busy machine.
    #[serde(default = "default_keygen_timeout_ms")]
    pub keygen_timeout_ms: u64,
    /// How often slots that are out are probed (`C_GenerateRandom`).
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// Install the SMK on members that lack it (wrapped to each member's own transport key) when
    /// the pool opens, after `form_smk`/`install_smk`, and when a member is re-admitted.
    #[serde(default = "default_true")]
    pub sync_smk: bool,
}

fn default_op_timeout_ms() -> u64 {
    10_000
}

fn default_keygen_timeout_ms() -> u64 {
    120_000
}

fn default_probe_interval_ms() -> u64 {
    1_000
}

fn default_true() -> bool {
    true
}

impl PoolConfig {
    /// A pool over `slots` with default timings.
    pub fn new(slots: Vec<SlotConfig>) -> PoolConfig {
        PoolConfig {
            slots,
            op_timeout_ms: default_op_timeout_ms(),
            keygen_timeout_ms: default_keygen_timeout_ms(),
            probe_interval_ms: default_probe_interval_ms(),
            sync_smk: true,
        }
    }

    pub(crate) fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }

    pub(crate) fn keygen_timeout(&self) -> Duration {
        Duration::from_millis(self.keygen_timeout_ms)
    }

    pub(crate) fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_toml_and_redacts_pin() {
        let c: PoolConfig = toml::from_str(
            r#"
            op_timeout_ms = 500
            [[slots]]
            module = "/m.so"
            token_label = "a"
            pin = "1234"
            [[slots]]
            module = "/s.so"
            slot = 7
            pin_env = "X"
            allow_host_key_material = true
            sessions = 4
            "#,
        )
        .unwrap();
        assert_eq!(c.op_timeout_ms, 500);
        assert_eq!(c.keygen_timeout_ms, 120_000);
        assert_eq!(c.slots[0].sessions, 2);
        assert!(!c.slots[0].allow_host_key_material);
        assert!(c.slots[1].allow_host_key_material);
        assert_eq!(c.slots[1].slot, Some(7));
        assert!(!format!("{c:?}").contains("1234"));
        assert_eq!(c.slots[0].resolve_pin().unwrap().as_str(), "1234");
        c.slots[0].validate().unwrap();
    }

    #[test]
    fn rejects_ambiguous_settings() {
        let mut s = SlotConfig::new("/m.so", "a", "1");
        s.slot = Some(1);
        assert!(s.validate().is_err());
        let mut s = SlotConfig::new("/m.so", "a", "1");
        s.pin_env = Some("X".into());
        assert!(s.resolve_pin().is_err());
        assert!(toml::from_str::<SlotConfig>("module = \"/m\"\nslot = 1\npin = \"1\"\nbogus = 1\n").is_err());
    }

    #[test]
    fn pin_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "9876\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut s = SlotConfig::new("/m.so", "a", "1");
        s.pin = None;
        s.pin_file = Some(p.clone());
        let e = s.resolve_pin().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(s.resolve_pin().unwrap().as_str(), "9876");
    }
}

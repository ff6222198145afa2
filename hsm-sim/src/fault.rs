//! Fault injection for chaos tests, switchable while the host process runs.
//!
//! The module watches a control file (`fault_file` in the config; `<QUILL_HSM_DIR>/faults.toml`
//! by default). It is re-read at most every [`RECHECK`] when its modification time changes; a
//! missing or empty file means no faults. Format:
//!
//! ```toml
//! latency_ms = 5          # added to every operation on every slot
//! error_rate = 0.01       # fraction of operations that fail with CKR_DEVICE_ERROR
//! failing_slots = [1]     # every operation on these slots fails with CKR_DEVICE_ERROR
//! dead_slots = [0]        # these slots stop answering: calls block until the slot is revived
//! ```
//!
//! A malformed file is reported once on stderr and treated as "no faults", so a typo never takes
//! every slot down.

use crate::error::{Error, Result};
use cryptoki_sys::CK_SLOT_ID;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How often the control file's modification time is checked.
pub const RECHECK: Duration = Duration::from_millis(100);

/// The faults in force.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Added latency per operation, milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Probability (0..=1) that an operation fails with `CKR_DEVICE_ERROR`.
    #[serde(default)]
    pub error_rate: f64,
    /// Slots whose operations all fail.
    #[serde(default)]
    pub failing_slots: Vec<CK_SLOT_ID>,
    /// Slots that stop answering.
    #[serde(default)]
    pub dead_slots: Vec<CK_SLOT_ID>,
}

impl Faults {
    fn is_none(&self) -> bool {
        self.latency_ms == 0 && self.error_rate <= 0.0 && self.failing_slots.is_empty() && self.dead_slots.is_empty()
    }
}

struct Watch {
    checked: Instant,
    mtime: Option<SystemTime>,
    faults: Faults,
}

/// Watches the control file and applies faults to operations.
pub struct FaultInjector {
    path: Option<PathBuf>,
    watch: Mutex<Watch>,
    active: AtomicBool,
    stopping: AtomicBool,
}

impl FaultInjector {
    /// An injector for a control file (or none).
    pub fn new(path: Option<PathBuf>) -> Self {
        let inj = FaultInjector {
            path,
            watch: Mutex::new(Watch { checked: Instant::now() - RECHECK * 2, mtime: None, faults: Faults::default() }),
            active: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        };
        inj.current();
        inj
    }

    /// Tell blocked callers to return (module finalising).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The faults in force now (re-reading the file if due).
    pub fn current(&self) -> Faults {
        let Some(path) = &self.path else { return Faults::default() };
        let mut w = match self.watch.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        if w.checked.elapsed() >= RECHECK {
            w.checked = Instant::now();
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if mtime != w.mtime {
                w.mtime = mtime;
                w.faults = match std::fs::read_to_string(path) {
                    Ok(text) => match toml::from_str::<Faults>(&text) {
                        Ok(f) => f,
                        Err(e) => {
                            eprintln!(
                                "quill-hsm-sim: ignoring fault file {}: {}",
                                path.display(),
                                e.to_string().replace('\n', " ")
                            );
                            Faults::default()
                        }
                    },
                    Err(_) => Faults::default(),
                };
                self.active.store(!w.faults.is_none(), Ordering::SeqCst);
            }
        }
        w.faults.clone()
    }

    /// Apply the faults to one operation on `slot`: may sleep, block, or fail.
    pub fn apply(&self, slot: CK_SLOT_ID) -> Result<()> {
        if self.path.is_none() {
            return Ok(());
        }
        let mut f = self.current();
        if !self.active.load(Ordering::SeqCst) {
            return Ok(());
        }
        while f.dead_slots.contains(&slot) {
            if self.stopping.load(Ordering::SeqCst) {
                return Err(Error::device(format!("slot {slot} is not answering (fault injection)")));
            }
            std::thread::sleep(RECHECK);
            f = self.current();
        }
        if f.latency_ms > 0 {
            std::thread::sleep(Duration::from_millis(f.latency_ms));
        }
        if f.failing_slots.contains(&slot) {
            return Err(Error::device(format!("slot {slot} failing (fault injection)")));
        }
        if f.error_rate > 0.0 {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|e| Error::general(format!("getrandom: {e}")))?;
            let x = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
            if x < f.error_rate {
                return Err(Error::device(format!("slot {slot}: injected device error")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_switches_faults_at_run_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults.toml");
        let inj = FaultInjector::new(Some(path.clone()));
        assert!(inj.apply(0).is_ok());
        std::fs::write(&path, "failing_slots = [1]\n").unwrap();
        std::thread::sleep(RECHECK * 2);
        assert!(inj.apply(0).is_ok());
        assert_eq!(inj.apply(1).unwrap_err().rv, cryptoki_sys::CKR_DEVICE_ERROR);
        std::fs::write(&path, "this is = not toml [").unwrap();
        std::thread::sleep(RECHECK * 2);
        assert!(inj.apply(1).is_ok(), "a malformed file means no faults");
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(RECHECK * 2);
        assert!(inj.apply(1).is_ok());
    }

    #[test]
    fn dead_slot_blocks_until_revived() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults.toml");
        std::fs::write(&path, "dead_slots = [0]\n").unwrap();
        let inj = std::sync::Arc::new(FaultInjector::new(Some(path.clone())));
        let i2 = inj.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            i2.apply(0).unwrap();
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(400));
        std::fs::write(&path, "").unwrap();
        let blocked = t.join().unwrap();
        assert!(blocked >= Duration::from_millis(300), "call returned while the slot was dead");
    }
}

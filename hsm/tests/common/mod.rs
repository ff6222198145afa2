//! Test support: the two modules every test runs against, throwaway tokens, and independent
//! reference computations with OpenSSL.
//!
//! A PKCS#11 module reads its configuration at `C_Initialize` and a process initialises it once,
//! so each test binary gets one hsm-sim instance (a temporary `QUILL_HSM_CONF` with
//! [`SIM_SLOTS`] slots, fault file `<dir>/faults.toml`) and one SoftHSM instance (a temporary
//! `SOFTHSM2_CONF`); every test takes fresh tokens of its own. SoftHSM being absent skips the
//! SoftHSM tests with a printed reason, unless `QUILL_REQUIRE_SOFTHSM=1`.
//!
//! This file sets environment variables (`unsafe` since Rust 2024) once, inside the `OnceLock`
//! initialiser every test goes through before loading any module, so no module reads the
//! environment concurrently.
#![allow(dead_code, unsafe_code, clippy::unwrap_used)]

pub mod reference;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use quill_hsm::{HostPathObserver, HostPathUse, KeyAlg, KeyUse, SlotConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// SO PIN of every test token.
pub const SO_PIN: &str = "so-pin-0000";
/// User PIN of every test token.
pub const USER_PIN: &str = "user-pin-1111";
/// Slots of the per-binary hsm-sim instance.
pub const SIM_SLOTS: usize = 24;
/// Further hsm-sim slots, after those, that offer `CKM_QUILL_TR31_TRANSLATE` (`kbpk_translate`,
/// as a token would for an SMK rotation's window): [`token_translating`].
pub const SIM_TRANSLATE_SLOTS: usize = 4;
/// SoftHSM as Debian installs it.
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Label prefix of the adapter's token objects in tests.
pub const TEST_PREFIX: &str = "TEST-quill";

/// Which module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The bundled simulator (vendor mechanisms: inside-HSM component XOR).
    Sim,
    /// SoftHSM 2 (standard mechanisms only: component XOR takes the host path).
    SoftHsm,
}

/// Path of the built simulator: `$QUILL_HSM_MODULE`, else `libquill_hsm_sim.so` in the target
/// directory of this test executable (`target/<profile>/`), else in `deps/`, whichever is newer.
pub fn sim_module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("QUILL_HSM_MODULE") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let candidates = [deps.parent().unwrap().join("libquill_hsm_sim.so"), deps.join("libquill_hsm_sim.so")];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "libquill_hsm_sim.so not found next to {} (build it: cargo build --release -p quill-hsm-sim, or set QUILL_HSM_MODULE)",
                deps.display()
            )
        })
}

struct Env {
    sim_dir: PathBuf,
    soft_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Create the configuration of both modules and point the environment at them (once).
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        // The directory lives in a `static` and is never dropped: remove leftovers of earlier runs
        // (older than an hour).
        for e in std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")).into_iter().flatten().flatten() {
            let stale = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            if e.file_name().to_string_lossy().starts_with("quill-hsm-test-")
                && stale.is_some_and(|a| a.as_secs() > 3600)
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = tempfile::Builder::new().prefix("quill-hsm-test-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let sim_dir = tmp.path().join("sim");
        std::fs::create_dir_all(sim_dir.join("tokens")).unwrap();
        std::fs::write(sim_dir.join("faults.toml"), "").unwrap();
        let mut conf = format!(
            "token_dir = {:?}\npin_kdf_iterations = 1000\nmax_pin_tries = 10\nfault_file = {:?}\n",
            sim_dir.join("tokens").display().to_string(),
            sim_dir.join("faults.toml").display().to_string()
        );
        for id in 0..SIM_SLOTS {
            conf.push_str(&format!("\n[[slot]]\nid = {id}\ndescription = \"TEST slot {id}\"\n"));
        }
        for id in SIM_SLOTS..SIM_SLOTS + SIM_TRANSLATE_SLOTS {
            conf.push_str(&format!("\n[[slot]]\nid = {id}\ndescription = \"TEST slot {id}\"\nkbpk_translate = true\n"));
        }
        std::fs::write(sim_dir.join("quill-hsm.toml"), conf).unwrap();
        let soft_dir = tmp.path().join("softhsm");
        std::fs::create_dir_all(soft_dir.join("tokens")).unwrap();
        std::fs::write(
            soft_dir.join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                soft_dir.join("tokens").display()
            ),
        )
        .unwrap();
        // SAFETY: see the file documentation (set once, before any module reads it).
        unsafe {
            std::env::set_var("QUILL_HSM_CONF", sim_dir.join("quill-hsm.toml"));
            std::env::set_var("SOFTHSM2_CONF", soft_dir.join("softhsm2.conf"));
        }
        Env { sim_dir, soft_dir, _tmp: tmp }
    })
}

/// One module instance of this test binary, loaded through `cryptoki` to initialise tokens (the
/// adapter finds it already initialised and shares it).
pub struct Module {
    pub path: PathBuf,
    pkcs11: Pkcs11,
    init: Mutex<()>,
    next_sim_slot: AtomicUsize,
    next_translate_slot: AtomicUsize,
}

fn load(path: &Path) -> Module {
    let pkcs11 = Pkcs11::new(path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize {}: {e}", path.display()),
    }
    Module {
        path: path.to_path_buf(),
        pkcs11,
        init: Mutex::new(()),
        next_sim_slot: AtomicUsize::new(0),
        next_translate_slot: AtomicUsize::new(0),
    }
}

/// The hsm-sim instance.
pub fn sim() -> &'static Module {
    static SIM: OnceLock<Module> = OnceLock::new();
    env();
    SIM.get_or_init(|| load(&sim_module_path()))
}

/// The SoftHSM instance, or `None` (with the reason printed) when SoftHSM is not installed.
pub fn softhsm() -> Option<&'static Module> {
    static SOFT: OnceLock<Option<Module>> = OnceLock::new();
    env();
    SOFT.get_or_init(|| {
        if !Path::new(SOFTHSM).exists() {
            if std::env::var("QUILL_REQUIRE_SOFTHSM").as_deref() == Ok("1") {
                panic!("QUILL_REQUIRE_SOFTHSM=1 but {SOFTHSM} is missing (apt-get install softhsm2)");
            }
            return None;
        }
        Some(load(Path::new(SOFTHSM)))
    })
    .as_ref()
    .or_else(|| {
        eprintln!(
            "SKIPPED: SoftHSM 2 is not installed ({SOFTHSM} missing); set QUILL_REQUIRE_SOFTHSM=1 to fail instead"
        );
        None
    })
}

/// Directory of the hsm-sim instance (its fault file is `faults.toml` there).
pub fn sim_dir() -> PathBuf {
    env().sim_dir.clone()
}

fn pin(p: &str) -> AuthPin {
    AuthPin::new(p.into())
}

impl Module {
    /// Initialise a fresh token labelled `label` (SO PIN, user PIN) and return its slot.
    fn new_token(&self, backend: Backend, label: &str, translate: bool) -> Slot {
        let _serial = self.init.lock().unwrap();
        let slot = match backend {
            Backend::Sim => {
                let mut slots = self.pkcs11.get_all_slots().unwrap();
                slots.sort_by_key(Slot::id);
                let i = if translate {
                    let j = self.next_translate_slot.fetch_add(1, Ordering::SeqCst);
                    assert!(j < SIM_TRANSLATE_SLOTS, "out of translating hsm-sim slots: raise SIM_TRANSLATE_SLOTS");
                    SIM_SLOTS + j
                } else {
                    self.next_sim_slot.fetch_add(1, Ordering::SeqCst)
                };
                assert!(translate || i < SIM_SLOTS, "out of hsm-sim slots: raise SIM_SLOTS above {SIM_SLOTS}");
                *slots.get(i).unwrap_or_else(|| panic!("hsm-sim shows no slot {i}"))
            }
            // SoftHSM always shows one slot with an uninitialised token, and a new one after each
            // C_InitToken.
            Backend::SoftHsm => *self
                .pkcs11
                .get_slots_with_token()
                .unwrap()
                .iter()
                .find(|s| !self.pkcs11.get_token_info(**s).unwrap().token_initialized())
                .expect("SoftHSM shows no free slot"),
        };
        self.pkcs11.init_token(slot, &pin(SO_PIN), label).unwrap();
        let s = self.pkcs11.open_rw_session(slot).unwrap();
        s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
        s.init_pin(&pin(USER_PIN)).unwrap();
        s.logout().unwrap();
        slot
    }
}

/// The module of `backend`, or `None` when the test should be skipped.
pub fn module(backend: Backend) -> Option<&'static Module> {
    match backend {
        Backend::Sim => Some(sim()),
        Backend::SoftHsm => softhsm(),
    }
}

/// A fresh token `TEST-<name>` on `backend` and the adapter configuration for it (host path off),
/// or `None` when the backend is unavailable (the test returns early: skipped).
pub fn token(backend: Backend, name: &str) -> Option<SlotConfig> {
    new_token(backend, name, false)
}

/// A fresh hsm-sim token `TEST-<name>` whose slot offers `CKM_QUILL_TR31_TRANSLATE`.
pub fn token_translating(name: &str) -> SlotConfig {
    new_token(Backend::Sim, name, true).expect("hsm-sim is always there")
}

fn new_token(backend: Backend, name: &str, translate: bool) -> Option<SlotConfig> {
    let m = module(backend)?;
    let label = format!("TEST-{name}");
    assert!(label.len() <= 32, "token label {label} longer than 32 bytes");
    m.new_token(backend, &label, translate);
    let mut c = SlotConfig::new(&m.path, label, USER_PIN);
    c.label_prefix = TEST_PREFIX.to_owned();
    Some(c)
}

/// Like [`token`], with the host path allowed.
pub fn token_host_path(backend: Backend, name: &str) -> Option<SlotConfig> {
    let mut c = token(backend, name)?;
    c.allow_host_key_material = true;
    Some(c)
}

/// An observer that records every host-path use.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<HostPathUse>>);

impl HostPathObserver for Recorder {
    fn host_path_used(&self, used: &HostPathUse) {
        self.0.lock().unwrap().push(used.clone());
    }
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    pub fn uses(&self) -> Vec<HostPathUse> {
        self.0.lock().unwrap().clone()
    }
}

/// Instantiate `fn name(Backend)` tests once per backend, in modules `sim` and `softhsm`
/// (`#[macro_use] mod common;`).
#[allow(unused_macros)]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod sim {
            $( #[test] fn $name() { super::$name($crate::common::Backend::Sim) } )*
        }
        mod softhsm {
            $( #[test] fn $name() { super::$name($crate::common::Backend::SoftHsm) } )*
        }
    };
}

/// An exportable use from a TR-31 usage code (`"E0"`).
pub fn key_use(code: &str) -> KeyUse {
    KeyUse::from_code(code, true).unwrap()
}

/// The use a test gives a key it only checks, MACs or seals with: `D0` for TDES and AES keys (a
/// data key: seal/open, a transport key), `M7` for HMAC keys.
pub fn default_use(alg: KeyAlg) -> KeyUse {
    key_use(if alg == KeyAlg::HmacSha256 { "M7" } else { "D0" })
}

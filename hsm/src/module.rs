//! The process-wide registry of loaded PKCS#11 modules.
//!
//! A module reads its configuration and sets up its global state in `C_Initialize`, and
//! `C_Finalize` ends every session of every user of the module in the process. So each module
//! path is loaded and initialised once per process and never finalised; every [`crate::Pkcs11Hsm`]
//! on that module shares the one [`Module`]. A module that some other code in the process has
//! already initialised (`CKR_CRYPTOKI_ALREADY_INITIALIZED`) is used as it is.

use crate::error::{HsmError, SlotRef};
use crate::raw::RawModule;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// One loaded, initialised module.
#[derive(Debug)]
pub(crate) struct Module {
    /// The `cryptoki` context.
    pub pkcs11: Pkcs11,
    /// The raw function list of the same instance.
    pub raw: RawModule,
    /// Manufacturer, description and version.
    pub library: String,
}

static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();

/// The module at `path`, loading and initialising it on first use.
pub(crate) fn load(path: &Path) -> Result<Arc<Module>, HsmError> {
    let at = Arc::new(SlotRef { module: path.display().to_string(), slot: 0, token: String::new() });
    let unavailable = |reason: String| HsmError::Unavailable { operation: "open", reason, at: at.clone() };
    let key = std::fs::canonicalize(path)
        .map_err(|e| HsmError::Config { reason: format!("PKCS#11 module {}: {e}", path.display()) })?;
    let registry = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    // Loading is rare and quick: hold the lock across it so two threads cannot initialise twice.
    let mut map = registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(m) = map.get(&key) {
        return Ok(m.clone());
    }
    let pkcs11 = Pkcs11::new(&key).map_err(|e| unavailable(format!("cannot load the module: {e}")))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(unavailable(format!("C_Initialize failed: {e}"))),
    }
    let raw = RawModule::load(&key, &pkcs11).map_err(unavailable)?;
    let library = match pkcs11.get_library_info() {
        Ok(i) => format!(
            "{} {} {}.{}",
            i.manufacturer_id().trim(),
            i.library_description().trim(),
            i.library_version().major(),
            i.library_version().minor()
        ),
        Err(e) => format!("(C_GetInfo failed: {e})"),
    };
    tracing::info!(module = %path.display(), %library, "PKCS#11 module loaded");
    let m = Arc::new(Module { pkcs11, raw, library });
    map.insert(key, m.clone());
    Ok(m)
}

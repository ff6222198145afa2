//! Code shared by `quill-hsm` and `quill-hsm-bench`. Both talk to modules only through the
//! `cryptoki` crate (plus the small raw escape hatch in [`raw`]), never through hsm-sim
//! internals, so they work with any PKCS#11 module.
// Each binary compiles this module and uses a different part of it.
#![allow(dead_code)]

mod mech_names;
pub mod raw;

use anyhow::{Context as _, Result, anyhow, bail};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, Rv};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::slot::Slot;
use cryptoki_sys::{CK_MECHANISM_TYPE, CK_RV, CKM_VENDOR_DEFINED};
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// File name of the bundled simulator.
pub const SIM_FILE: &str = "libquill_hsm_sim.so";
/// Where Debian's `softhsm2` package puts SoftHSM 2.
pub const SOFTHSM_PATH: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// hsm-sim's vendor mechanisms (defined once, in `quill_crypto::mechanism`). Each binary that
/// includes this module uses some of them.
#[allow(unused_imports)]
pub use quill_crypto::mechanism::{
    CKM_QUILL_CVV, CKM_QUILL_DES3_RETAIL_MAC, CKM_QUILL_EMV_MK_OPTION_A, CKM_QUILL_EMV_MK_OPTION_B,
    CKM_QUILL_IBM3624_OFFSET, CKM_QUILL_KEY_COMPONENTS_XOR, CKM_QUILL_PIN_GENERATE, CKM_QUILL_PIN_TRANSLATE,
    CKM_QUILL_RSA_CRT_COMPONENT_WRAP, CKM_QUILL_TR31_UNWRAP, CKM_QUILL_TR31_WRAP, CKM_QUILL_VISA_PVV,
};

/// Name of a mechanism value: `cryptoki`'s own name where it has one, then the standard names
/// it lacks, then Quill's vendor names; `None` when unknown.
pub fn mechanism_name(v: CK_MECHANISM_TYPE) -> Option<String> {
    if v >= CKM_VENDOR_DEFINED {
        return quill_crypto::mechanism::vendor_name(v).map(str::to_owned);
    }
    if let Ok(t) = MechanismType::try_from(v) {
        let s = t.to_string();
        if !s.starts_with("unknown") {
            return Some(s);
        }
    }
    mech_names::STANDARD_NAMES.iter().find(|(m, _)| *m == v).map(|(_, n)| (*n).to_owned())
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`.
fn screaming(camel: &str) -> String {
    let mut s = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
    }
    s
}

/// Name of a return value, e.g. `CKR_PIN_INCORRECT`.
pub fn ckr_name(rv: CK_RV) -> String {
    match Rv::from(rv) {
        Rv::Ok => "CKR_OK".to_owned(),
        Rv::Error(e) => {
            let camel = format!("{e:?}");
            if camel.contains('(') { format!("CKR 0x{rv:08X}") } else { screaming(&camel) }
        }
    }
}

/// One-line text of a `cryptoki` error: `C_Login returned CKR_PIN_INCORRECT` rather than the
/// crate's paragraph-long descriptions.
pub fn ck_text(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => {
            let camel = format!("{rv:?}");
            let name = if camel.contains('(') { camel } else { screaming(&camel) };
            format!("C_{f:?} returned {name}")
        }
        other => other.to_string(),
    }
}

/// `anyhow` context for `cryptoki` results, one line: "what: C_Fn returned CKR_…".
pub trait Ck<T> {
    fn ck<S: Display>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Ck<T> for std::result::Result<T, CkError> {
    fn ck<S: Display>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| anyhow!("{}: {}", what(), ck_text(&e)))
    }
}

/// The simulator next to the running executable (`target/release/` holds both).
pub fn sim_next_to_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let dir = exe.parent().ok_or_else(|| anyhow!("executable {} has no directory", exe.display()))?;
    Ok(dir.join(SIM_FILE))
}

/// Load and initialise a module.
pub fn load(path: &Path) -> Result<Pkcs11> {
    if !path.exists() {
        bail!("PKCS#11 module {} does not exist (set --module or QUILL_HSM_MODULE)", path.display());
    }
    let ctx = Pkcs11::new(path).ck(|| format!("cannot load PKCS#11 module {}", path.display()))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .ck(|| format!("cannot initialise PKCS#11 module {}", path.display()))?;
    Ok(ctx)
}

/// The slot with id `id`.
pub fn slot(ctx: &Pkcs11, id: u64) -> Result<Slot> {
    let slots = ctx.get_all_slots().ck(|| "cannot list slots")?;
    slots.into_iter().find(|s| s.id() == id).ok_or_else(|| anyhow!("slot {id} does not exist (see list-tokens)"))
}

/// Call `f` with a vendor mechanism carrying `param` as its parameter bytes.
///
/// `cryptoki` 0.12's `VendorDefinedMechanism::new` takes a `&T` and passes `size_of::<T>()` as
/// the parameter length, so a variable-length byte string has to travel as a `[u8; N]`: this
/// picks `N = param.len()` (up to 64 bytes).
pub fn with_vendor_mechanism<R>(
    value: CK_MECHANISM_TYPE,
    param: &[u8],
    f: impl FnOnce(&Mechanism<'_>) -> R,
) -> Result<R> {
    let mt = MechanismType::new_vendor_defined(value)
        .map_err(|_| anyhow!("0x{value:08X} is not a vendor-defined mechanism"))?;
    if param.is_empty() {
        return Ok(f(&Mechanism::VendorDefined(VendorDefinedMechanism::new::<u8>(mt, None))));
    }
    macro_rules! by_len {
        ($($n:literal)*) => {
            match param.len() {
                $($n => {
                    let arr: [u8; $n] = param.try_into()?;
                    Ok(f(&Mechanism::VendorDefined(VendorDefinedMechanism::new(mt, Some(&arr)))))
                })*
                n => bail!("vendor mechanism parameter of {n} bytes: at most 64 supported"),
            }
        };
    }
    by_len!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32
            33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64)
}

/// Hex, upper case.
pub fn hex_upper(b: &[u8]) -> String {
    hex::encode_upper(b)
}

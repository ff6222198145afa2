//! The few PKCS#11 helpers `quill` needs, over the `cryptoki` crate only (no `unsafe`):
//! loading a module, one-line errors, and vendor mechanisms with byte-string parameters.

use anyhow::{Result, anyhow, bail};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use std::fmt::Display;
use std::os::raw::c_ulong;
use std::path::{Path, PathBuf};

/// hsm-sim's vendor mechanisms the walk-through calls (defined once, in `quill_crypto::mechanism`).
pub use quill_hsm::vendor::{
    CKM_QUILL_CVV, CKM_QUILL_EMV_MK_OPTION_A, CKM_QUILL_EMV_MK_OPTION_B, CKM_QUILL_PIN_GENERATE,
    CKM_QUILL_RSA_CRT_COMPONENT_WRAP, CKM_QUILL_VISA_PVV,
};

/// File name of the bundled simulator.
pub const SIM_FILE: &str = "libquill_hsm_sim.so";

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

/// One-line text of a `cryptoki` error (`C_Login returned CKR_PIN_INCORRECT`).
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

/// `libquill_hsm_sim.so` next to the running executable.
pub fn sim_next_to_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| anyhow!("cannot locate the running executable: {e}"))?;
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

/// Call `f` with a vendor mechanism carrying `param` as its parameter bytes.
///
/// `cryptoki` 0.12's `VendorDefinedMechanism::new` takes a `&T` and passes `size_of::<T>()` as
/// the parameter length, so a variable-length byte string has to travel as a `[u8; N]`: this
/// picks `N = param.len()` (up to 64 bytes).
pub fn with_vendor_mechanism<R>(value: c_ulong, param: &[u8], f: impl FnOnce(&Mechanism<'_>) -> R) -> Result<R> {
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

/// hsm-sim's `digits(n)`: one length byte, then the ASCII digits.
pub fn digits(s: &str) -> Result<Vec<u8>> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        bail!("'{s}' is not decimal digits");
    }
    let mut v = vec![u8::try_from(s.len()).map_err(|_| anyhow!("'{s}' is too long"))?];
    v.extend_from_slice(s.as_bytes());
    Ok(v)
}

/// A `CK_ULONG` (C `unsigned long`) in host byte order, as hsm-sim's packed parameters carry it.
pub fn ulong(v: c_ulong) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

//! Helpers of the command-line tools that talk to PKCS#11 modules directly (`quill-hsm`,
//! `quill-hsm-bench`, the lab commands of `quill`), over the `cryptoki` crate plus the escape
//! hatch in [`crate::raw`]; no `unsafe` here. Behind the `tools` feature, which brings `anyhow`
//! in: the adapter ([`crate::Pkcs11Hsm`]) does not use this module.

use crate::error::ck_text;
use anyhow::{Context as _, Result, anyhow, bail};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::slot::Slot;
use cryptoki_sys::{CK_MECHANISM_TYPE, CK_ULONG};
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// File name of the bundled simulator.
pub const SIM_FILE: &str = "libquill_hsm_sim.so";
/// Where Debian's `softhsm2` package puts SoftHSM 2.
pub const SOFTHSM_PATH: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// `anyhow` context for `cryptoki` results, one line: "what: C_Fn returned CKR_…".
pub trait Ck<T> {
    /// The error as `what: C_Fn returned CKR_…` ([`ck_text`]).
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
/// picks `N = param.len()` (up to 64 bytes). Longer parameters go through
/// [`crate::raw::RawModule`].
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

/// hsm-sim's `digits(n)` parameter field: one length byte, then the ASCII digits.
pub fn digits(s: &str) -> Result<Vec<u8>> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        bail!("'{s}' is not decimal digits");
    }
    let mut v = vec![u8::try_from(s.len()).map_err(|_| anyhow!("'{s}' is too long"))?];
    v.extend_from_slice(s.as_bytes());
    Ok(v)
}

/// A `CK_ULONG` (C `unsigned long`) in host byte order, as hsm-sim's packed parameters carry it.
pub fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::vendor::CKM_QUILL_CVV;

    #[test]
    fn digits_carry_their_length() {
        assert_eq!(digits("0123").unwrap(), b"\x040123");
        assert!(digits("12a4").is_err());
        assert!(digits(&"1".repeat(256)).is_err());
        assert_eq!(ulong(7).len(), size_of::<CK_ULONG>());
    }

    #[test]
    fn vendor_mechanism_parameters_keep_their_length() {
        let len = |p: &[u8]| {
            with_vendor_mechanism(CKM_QUILL_CVV, p, |m| {
                let raw = cryptoki_sys::CK_MECHANISM::from(m);
                (raw.mechanism, raw.ulParameterLen)
            })
        };
        assert_eq!(len(&[]).unwrap(), (CKM_QUILL_CVV, 0));
        assert_eq!(len(&[1, 2, 3]).unwrap(), (CKM_QUILL_CVV, 3));
        assert_eq!(len(&[0; 64]).unwrap(), (CKM_QUILL_CVV, 64));
        assert!(len(&[0; 65]).is_err());
        assert!(with_vendor_mechanism(0x1102, &[], |_| ()).is_err(), "not a vendor value");
    }

    #[test]
    fn missing_modules_are_named() {
        let e = load(Path::new("/nonexistent/libnone.so")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/libnone.so does not exist"), "{e}");
    }
}

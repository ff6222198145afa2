//! The raw escape hatch (`src/raw.rs`), through the safe API built on it: unfiltered mechanism
//! lists (capability detection) and `C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA)` (EMV Option A); and
//! directly, as the tools use it: mechanism information for values `cryptoki` cannot name.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::reference::{self as r, h};
use common::{Backend, token_host_path};
use cryptoki::error::RvError;
use cryptoki::mechanism::MechanismType;
use cryptoki_sys::CKM_DES3_ECB_ENCRYPT_DATA;
use quill_hsm::raw::{RawError, RawModule};
use quill_hsm::{Hsm, HsmError, KeyAlg, LogHostPath, Pkcs11Hsm, Support, known_mechanism_name, vendor};
use std::sync::Arc;

per_backend!(
    mechanism_list_is_unfiltered,
    option_a_derivation_matches_the_published_vector,
    mechanism_info_of_values_cryptoki_cannot_name
);

fn mechanism_list_is_unfiltered(b: Backend) {
    let Some(c) = token_host_path(b, "raw-mechs") else { return };
    let hsm = Pkcs11Hsm::open(&c, Arc::new(LogHostPath)).unwrap();
    let info = hsm.describe().slots.remove(0);
    let derive = info.capabilities.iter().find(|c| c.name == "emv-mk-derivation").unwrap();
    // What `cryptoki` alone would have seen: no vendor values, no CKM_DES3_ECB_ENCRYPT_DATA.
    let m = common::module(b).unwrap();
    let pkcs11 = cryptoki::context::Pkcs11::new(&m.path).unwrap();
    let slot = pkcs11.get_all_slots().unwrap().into_iter().find(|s| s.id() == info.slot).unwrap();
    let filtered = pkcs11.get_mechanism_list(slot).unwrap();
    assert!(!filtered.iter().any(|t| u64::from(*t) == cryptoki_sys::CKM_DES3_ECB_ENCRYPT_DATA));
    assert!(!filtered.iter().any(|t| u64::from(*t) >= cryptoki_sys::CKM_VENDOR_DEFINED));
    assert!(filtered.contains(&MechanismType::AES_KEY_WRAP_PAD));
    match b {
        Backend::Sim => {
            assert_eq!(derive.support, Support::Native, "{info:?}");
            assert!(derive.via.starts_with("CKM_QUILL_EMV_MK_OPTION_A"), "{}", derive.via);
            for name in ["CKM_QUILL_EMV_MK_OPTION_A", "CKM_QUILL_KEY_COMPONENTS_XOR", "CKM_QUILL_CVV"] {
                assert!(info.vendor_mechanisms.iter().any(|m| m == name), "{name} in {:?}", info.vendor_mechanisms);
            }
        }
        Backend::SoftHsm => {
            // Derived inside; the derived key takes the host path to be encrypted under the
            // transport key (SoftHSM cannot wrap with a TDES key).
            assert_eq!(derive.support, Support::HostPath, "{info:?}");
            assert!(derive.via.starts_with("C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA)"), "{}", derive.via);
            assert!(info.vendor_mechanisms.is_empty(), "{:?}", info.vendor_mechanisms);
        }
    }
}

/// shared/reference/emv.md §6 #1 (PYEMV): IMK `0123456789ABCDEFFEDCBA9876543210`, PAN
/// `12345678901234567`, PSN `01` → ICC MK `73AD54688CEF2934B0979857E3C719F1`.
fn option_a_derivation_matches_the_published_vector(b: Backend) {
    let Some(c) = token_host_path(b, "raw-derive") else { return };
    let hsm = Pkcs11Hsm::open(&c, Arc::new(LogHostPath)).unwrap();
    let pk = hsm.transport_public_key().unwrap();
    let (comps, kcvs) = r::sealed_components(KeyAlg::Aes256, &r::random(32), 2, &pk);
    hsm.form_smk(&comps, &kcvs).unwrap();
    let imk_clear = h("0123456789ABCDEFFEDCBA9876543210");
    let (comps, kcvs) = r::sealed_components(KeyAlg::Des2, &imk_clear, 3, &pk);
    let imk = hsm.import_components(KeyAlg::Des2, common::key_use("E0"), &comps, &kcvs).unwrap();
    // Y = rightmost 16 digits of PAN ‖ PSN; data = Y ‖ (Y ⊕ FF…FF).
    let y = h("4567890123456701");
    let data: Vec<u8> = y.iter().copied().chain(y.iter().map(|b| b ^ 0xFF)).collect();
    let mk = hsm.derive_des3_ecb_encrypt_data(&imk, &data, KeyAlg::Des2, common::key_use("E6")).unwrap();
    let expected = h("73AD54688CEF2934B0979857E3C719F1");
    assert_eq!(mk.kcv, r::kcv(KeyAlg::Des2, &expected), "KCV of the published ICC MK");
    assert_eq!(hsm.kcv(&mk).unwrap(), mk.kcv);
    // Independent of the vector: OpenSSL's 3DES-ECB of the same data under the same IMK.
    assert_eq!(mk.kcv, r::kcv(KeyAlg::Des2, &r::tdes_ecb(&imk_clear, &data)));
    // Misuse: wrong data length, non-TDES base.
    assert!(matches!(
        hsm.derive_des3_ecb_encrypt_data(&imk, &data[..8], KeyAlg::Des2, common::key_use("E6")),
        Err(HsmError::Misuse { .. })
    ));
    let aes = hsm.generate_key(KeyAlg::Aes128, common::default_use(KeyAlg::Aes128)).unwrap();
    assert!(matches!(
        hsm.derive_des3_ecb_encrypt_data(&aes, &data, KeyAlg::Des2, common::key_use("E6")),
        Err(HsmError::Misuse { .. })
    ));
}

/// `RawModule::load` next to a live context, then `C_GetMechanismInfo` for a standard value
/// `cryptoki` lacks, a vendor value, and a value no module lists.
fn mechanism_info_of_values_cryptoki_cannot_name(b: Backend) {
    let Some(c) = token_host_path(b, "raw-info") else { return };
    let hsm = Pkcs11Hsm::open(&c, Arc::new(LogHostPath)).unwrap();
    let slot = hsm.describe().slots.remove(0).slot;
    let m = common::module(b).unwrap();
    let pkcs11 = cryptoki::context::Pkcs11::new(&m.path).unwrap();
    let raw = RawModule::load(&m.path, &pkcs11).unwrap();
    let list = raw.mechanism_list(slot).unwrap();
    assert!(list.contains(&CKM_DES3_ECB_ENCRYPT_DATA));
    let info = raw.mechanism_info(slot, CKM_DES3_ECB_ENCRYPT_DATA).unwrap();
    assert_ne!(info.flags & cryptoki_sys::CKF_DERIVE, 0, "{:#x}", info.flags);
    if b == Backend::Sim {
        assert!(list.contains(&vendor::CKM_QUILL_CVV));
        let info = raw.mechanism_info(slot, vendor::CKM_QUILL_CVV).unwrap();
        assert_ne!(info.flags & cryptoki_sys::CKF_SIGN, 0, "{:#x}", info.flags);
        assert_eq!(known_mechanism_name(vendor::CKM_QUILL_CVV).as_deref(), Some("CKM_QUILL_CVV"));
    }
    let unlisted = cryptoki_sys::CKM_VENDOR_DEFINED | 0x7777;
    let e = raw.mechanism_info(slot, unlisted).unwrap_err();
    assert_eq!(e, RawError::Rv("C_GetMechanismInfo", RvError::MechanismInvalid));
    assert_eq!(e.to_string(), "C_GetMechanismInfo returned CKR_MECHANISM_INVALID");
}

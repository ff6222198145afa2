//! hsm-sim's vendor mechanisms: their numbers and names, defined here once (hsm-sim/README.md
//! documents each one). The simulator implements them, the adapter (`quill-hsm`) uses them when a
//! module lists them, and the tools name them. Values are PKCS#11 `CK_MECHANISM_TYPE`s
//! (`CK_ULONG`, a C `unsigned long`) in the vendor range: `CKM_VENDOR_DEFINED | 0x5155_0000 | n`.

use std::ffi::c_ulong;

/// `CKM_VENDOR_DEFINED` (PKCS#11 v2.40 §2.1).
pub const CKM_VENDOR_DEFINED: c_ulong = 0x8000_0000;
/// The base of Quill's vendor mechanisms ("QU").
pub const CKM_QUILL_BASE: c_ulong = CKM_VENDOR_DEFINED | 0x5155_0000;
/// EMV ICC master key, Option A (`C_DeriveKey`, base = IMK).
pub const CKM_QUILL_EMV_MK_OPTION_A: c_ulong = CKM_QUILL_BASE | 0x01;
/// EMV ICC master key, Option B.
pub const CKM_QUILL_EMV_MK_OPTION_B: c_ulong = CKM_QUILL_BASE | 0x02;
/// CVV / iCVV / CVV2 (`C_Sign`).
pub const CKM_QUILL_CVV: c_ulong = CKM_QUILL_BASE | 0x10;
/// Visa PVV (`C_Sign`).
pub const CKM_QUILL_VISA_PVV: c_ulong = CKM_QUILL_BASE | 0x11;
/// IBM 3624 offset (`C_Sign`).
pub const CKM_QUILL_IBM3624_OFFSET: c_ulong = CKM_QUILL_BASE | 0x12;
/// Random PIN → encrypted PIN block + PVV/offset (`C_Encrypt`).
pub const CKM_QUILL_PIN_GENERATE: c_ulong = CKM_QUILL_BASE | 0x20;
/// PIN block translation (`C_Encrypt`).
pub const CKM_QUILL_PIN_TRANSLATE: c_ulong = CKM_QUILL_BASE | 0x21;
/// One RSA CRT component, encrypted (`C_WrapKey`).
pub const CKM_QUILL_RSA_CRT_COMPONENT_WRAP: c_ulong = CKM_QUILL_BASE | 0x30;
/// XOR of key components (`C_DeriveKey`, base = first component).
pub const CKM_QUILL_KEY_COMPONENTS_XOR: c_ulong = CKM_QUILL_BASE | 0x40;
/// ISO 9797-1 MAC algorithm 3 (`C_Sign`).
pub const CKM_QUILL_DES3_RETAIL_MAC: c_ulong = CKM_QUILL_BASE | 0x50;
/// TR-31 key block export (`C_WrapKey` under a KBPK; parameter = ASCII header template).
pub const CKM_QUILL_TR31_WRAP: c_ulong = CKM_QUILL_BASE | 0x60;
/// TR-31 key block import (`C_UnwrapKey` with a KBPK; no parameter).
pub const CKM_QUILL_TR31_UNWRAP: c_ulong = CKM_QUILL_BASE | 0x61;
/// TR-31 key block translation from one KBPK to another (`C_Encrypt` under the destination KBPK;
/// parameter = the source KBPK's handle).
pub const CKM_QUILL_TR31_TRANSLATE: c_ulong = CKM_QUILL_BASE | 0x62;

/// (value, name) of every vendor mechanism above.
pub const NAMES: &[(c_ulong, &str)] = &[
    (CKM_QUILL_EMV_MK_OPTION_A, "CKM_QUILL_EMV_MK_OPTION_A"),
    (CKM_QUILL_EMV_MK_OPTION_B, "CKM_QUILL_EMV_MK_OPTION_B"),
    (CKM_QUILL_CVV, "CKM_QUILL_CVV"),
    (CKM_QUILL_VISA_PVV, "CKM_QUILL_VISA_PVV"),
    (CKM_QUILL_IBM3624_OFFSET, "CKM_QUILL_IBM3624_OFFSET"),
    (CKM_QUILL_PIN_GENERATE, "CKM_QUILL_PIN_GENERATE"),
    (CKM_QUILL_PIN_TRANSLATE, "CKM_QUILL_PIN_TRANSLATE"),
    (CKM_QUILL_RSA_CRT_COMPONENT_WRAP, "CKM_QUILL_RSA_CRT_COMPONENT_WRAP"),
    (CKM_QUILL_KEY_COMPONENTS_XOR, "CKM_QUILL_KEY_COMPONENTS_XOR"),
    (CKM_QUILL_DES3_RETAIL_MAC, "CKM_QUILL_DES3_RETAIL_MAC"),
    (CKM_QUILL_TR31_WRAP, "CKM_QUILL_TR31_WRAP"),
    (CKM_QUILL_TR31_UNWRAP, "CKM_QUILL_TR31_UNWRAP"),
    (CKM_QUILL_TR31_TRANSLATE, "CKM_QUILL_TR31_TRANSLATE"),
];

/// The name of one of Quill's vendor mechanisms.
pub fn vendor_name(v: c_ulong) -> Option<&'static str> {
    NAMES.iter().find(|(m, _)| *m == v).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_values() {
        // hsm-sim/README.md's table, written out: a changed base or offset fails here.
        assert_eq!(CKM_QUILL_EMV_MK_OPTION_A, 0xD155_0001);
        assert_eq!(CKM_QUILL_TR31_UNWRAP, 0xD155_0061);
        assert_eq!(CKM_QUILL_TR31_TRANSLATE, 0xD155_0062);
        assert_eq!(NAMES.len(), 13);
        let mut values: Vec<c_ulong> = NAMES.iter().map(|(v, _)| *v).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), 13, "no value twice");
        assert_eq!(vendor_name(0xD155_0010), Some("CKM_QUILL_CVV"));
        assert_eq!(vendor_name(0xD155_0062), Some("CKM_QUILL_TR31_TRANSLATE"));
        assert_eq!(vendor_name(0xD155_00FF), None);
    }
}

//! Mechanism values the adapter knows, and capability detection from a slot's unfiltered
//! mechanism list (read through [`crate::raw`], because `cryptoki` drops vendor values).

use crate::mechanism_names::STANDARD_NAMES;
use crate::types::{Capability, Support};
use cryptoki::mechanism::MechanismType;
use cryptoki_sys::{
    CK_MECHANISM_TYPE, CKM_AES_CMAC, CKM_AES_GCM, CKM_AES_KEY_GEN, CKM_AES_KEY_WRAP_PAD, CKM_DES2_KEY_GEN,
    CKM_DES3_ECB, CKM_DES3_ECB_ENCRYPT_DATA, CKM_DES3_KEY_GEN, CKM_GENERIC_SECRET_KEY_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN,
    CKM_RSA_PKCS_OAEP, CKM_SHA256_HMAC, CKM_VENDOR_DEFINED,
};
use std::collections::BTreeSet;

/// hsm-sim's vendor mechanisms (`CKM_VENDOR_DEFINED | 0x5155_0000 | n`; hsm-sim/README.md),
/// defined once in [`quill_crypto::mechanism`].
pub mod vendor {
    pub use quill_crypto::mechanism::*;
}

/// Name of a mechanism value when it has one: Quill's vendor names for vendor values, then
/// `cryptoki`'s names, then the standard names `cryptoki` lacks (`CKM_DES3_ECB_ENCRYPT_DATA`, …).
pub fn known_mechanism_name(v: CK_MECHANISM_TYPE) -> Option<String> {
    if v >= CKM_VENDOR_DEFINED {
        return vendor::vendor_name(v).map(str::to_owned);
    }
    if let Ok(t) = MechanismType::try_from(v) {
        let s = t.to_string();
        if !s.starts_with("unknown") {
            return Some(s);
        }
    }
    STANDARD_NAMES.iter().find(|(m, _)| *m == v).map(|(_, n)| (*n).to_owned())
}

/// Name of a mechanism value: [`known_mechanism_name`], else `CKM_VENDOR_DEFINED+0x…` for a
/// vendor value and the hex value for any other.
pub fn mechanism_name(v: CK_MECHANISM_TYPE) -> String {
    known_mechanism_name(v).unwrap_or_else(|| {
        if v >= CKM_VENDOR_DEFINED {
            format!("CKM_VENDOR_DEFINED+0x{:X}", v - CKM_VENDOR_DEFINED)
        } else {
            format!("0x{v:08X}")
        }
    })
}

/// Mechanisms without which the adapter cannot work at all.
const REQUIRED: &[CK_MECHANISM_TYPE] =
    &[CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS_OAEP, CKM_AES_KEY_GEN, CKM_AES_KEY_WRAP_PAD, CKM_AES_CMAC];

/// What a slot can do, from its unfiltered mechanism list.
#[derive(Debug, Clone)]
pub(crate) struct Capabilities {
    listed: BTreeSet<CK_MECHANISM_TYPE>,
}

impl Capabilities {
    pub fn new(list: &[CK_MECHANISM_TYPE]) -> Capabilities {
        Capabilities { listed: list.iter().copied().collect() }
    }

    /// Whether the slot lists `m`.
    pub fn has(&self, m: CK_MECHANISM_TYPE) -> bool {
        self.listed.contains(&m)
    }

    /// Required mechanisms the slot does not list, by name.
    pub fn missing_required(&self) -> Vec<String> {
        REQUIRED.iter().filter(|m| !self.has(**m)).map(|m| mechanism_name(*m)).collect()
    }

    /// Vendor mechanisms listed, by name.
    pub fn vendor_mechanisms(&self) -> Vec<String> {
        self.listed.iter().filter(|m| **m >= CKM_VENDOR_DEFINED).map(|m| mechanism_name(*m)).collect()
    }

    /// XOR of key components inside the HSM.
    pub fn native_components_xor(&self) -> bool {
        self.has(vendor::CKM_QUILL_KEY_COMPONENTS_XOR)
    }

    /// TR-31 import inside the HSM (`CKM_QUILL_TR31_UNWRAP`).
    pub fn native_tr31_unwrap(&self) -> bool {
        self.has(vendor::CKM_QUILL_TR31_UNWRAP)
    }

    /// TR-31 export inside the HSM (`CKM_QUILL_TR31_WRAP`).
    pub fn native_tr31_wrap(&self) -> bool {
        self.has(vendor::CKM_QUILL_TR31_WRAP)
    }

    /// Key blocks re-protected under another KBPK inside the HSM (`CKM_QUILL_TR31_TRANSLATE`,
    /// offered by hsm-sim only on a slot that turns it on for a rotation).
    pub fn native_tr31_translate(&self) -> bool {
        self.has(vendor::CKM_QUILL_TR31_TRANSLATE)
    }

    /// The capability table for [`crate::Hsm::describe`].
    pub fn describe(&self) -> Vec<Capability> {
        let std = |name: &str, mechs: &[CK_MECHANISM_TYPE]| {
            let ok = mechs.iter().all(|m| self.has(*m));
            Capability {
                name: name.to_owned(),
                support: if ok { Support::Native } else { Support::Missing },
                via: mechs.iter().map(|m| mechanism_name(*m)).collect::<Vec<_>>().join(" + "),
            }
        };
        let mut v = vec![
            std("transport-key", &[CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS_OAEP]),
            std("key-wrap-under-smk", &[CKM_AES_KEY_WRAP_PAD]),
            std("kcv-tdes", &[CKM_DES3_ECB]),
            std("kcv-aes", &[CKM_AES_CMAC]),
            std("generate-tdes", &[CKM_DES2_KEY_GEN, CKM_DES3_KEY_GEN]),
            std("generate-hmac", &[CKM_GENERIC_SECRET_KEY_GEN]),
            std("hmac-sha256", &[CKM_SHA256_HMAC]),
            std("aes-gcm", &[CKM_AES_GCM]),
        ];
        v.push(if self.native_components_xor() {
            Capability {
                name: "key-components-xor".to_owned(),
                support: Support::Native,
                via: mechanism_name(vendor::CKM_QUILL_KEY_COMPONENTS_XOR),
            }
        } else {
            Capability {
                name: "key-components-xor".to_owned(),
                support: Support::HostPath,
                via: "C_UnwrapKey(CKM_RSA_PKCS_OAEP) + host XOR + C_CreateObject".to_owned(),
            }
        });
        for (name, native, mech, host) in [
            (
                "tr31-import",
                self.native_tr31_unwrap(),
                vendor::CKM_QUILL_TR31_UNWRAP,
                "C_UnwrapKey(CKM_AES_KEY_WRAP_PAD) of the KBPK as a readable key + host TR-31 unwrap + C_CreateObject",
            ),
            (
                "tr31-export",
                self.native_tr31_wrap(),
                vendor::CKM_QUILL_TR31_WRAP,
                "C_UnwrapKey(CKM_AES_KEY_WRAP_PAD) of the KBPK and the key as readable keys + host TR-31 wrap",
            ),
        ] {
            v.push(Capability {
                name: name.to_owned(),
                support: if native { Support::Native } else { Support::HostPath },
                via: if native { mechanism_name(mech) } else { host.to_owned() },
            });
        }
        // EMV ICC master-key derivation: hsm-sim inside; elsewhere derived inside with
        // CKM_DES3_ECB_ENCRYPT_DATA but encrypted under the transport key on the host path.
        v.push(if self.has(vendor::CKM_QUILL_EMV_MK_OPTION_A) && self.has(vendor::CKM_QUILL_EMV_MK_OPTION_B) {
            Capability {
                name: "emv-mk-derivation".to_owned(),
                support: Support::Native,
                via: format!(
                    "{} / {} + C_WrapKey(CKM_DES3_ECB)",
                    mechanism_name(vendor::CKM_QUILL_EMV_MK_OPTION_A),
                    mechanism_name(vendor::CKM_QUILL_EMV_MK_OPTION_B)
                ),
            }
        } else if self.has(CKM_DES3_ECB_ENCRYPT_DATA) {
            Capability {
                name: "emv-mk-derivation".to_owned(),
                support: Support::HostPath,
                via: "C_DeriveKey(CKM_DES3_ECB_ENCRYPT_DATA) as a readable key + C_Encrypt(CKM_DES3_ECB) under the transport key".to_owned(),
            }
        } else {
            std("emv-mk-derivation", &[CKM_DES3_ECB_ENCRYPT_DATA])
        });
        for (name, mech, host) in [
            ("cvv", vendor::CKM_QUILL_CVV, "CVK read into host memory + CVV in software"),
            (
                "pin-generate",
                vendor::CKM_QUILL_PIN_GENERATE,
                "PIN key and PVK read into host memory + PIN, block and PVV/offset in software",
            ),
            (
                "pin-translate",
                vendor::CKM_QUILL_PIN_TRANSLATE,
                "both PIN keys read into host memory + translation in software",
            ),
            (
                "icc-rsa-crt-export",
                vendor::CKM_QUILL_RSA_CRT_COMPONENT_WRAP,
                "C_GenerateKeyPair with a readable private key + C_Encrypt(CKM_DES3_ECB) of each CRT component",
            ),
        ] {
            let native = self.has(mech);
            v.push(Capability {
                name: name.to_owned(),
                support: if native { Support::Native } else { Support::HostPath },
                via: if native { mechanism_name(mech) } else { host.to_owned() },
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(mechanism_name(vendor::CKM_QUILL_KEY_COMPONENTS_XOR), "CKM_QUILL_KEY_COMPONENTS_XOR");
        assert_eq!(mechanism_name(CKM_DES3_ECB_ENCRYPT_DATA), "CKM_DES3_ECB_ENCRYPT_DATA");
        assert_eq!(mechanism_name(0x8000_0007), "CKM_VENDOR_DEFINED+0x7");
        assert!(mechanism_name(CKM_AES_GCM).contains("AES_GCM"), "{}", mechanism_name(CKM_AES_GCM));
        assert_eq!(mechanism_name(0x0000_7FFF), "0x00007FFF");
        assert_eq!(known_mechanism_name(0x0000_7FFF), None);
        assert_eq!(known_mechanism_name(0x8000_0007), None);
        assert_eq!(known_mechanism_name(CKM_DES3_ECB_ENCRYPT_DATA).as_deref(), Some("CKM_DES3_ECB_ENCRYPT_DATA"));
    }

    #[test]
    fn standard_names_are_sorted_and_unique() {
        assert!(STANDARD_NAMES.windows(2).all(|w| w[0].0 < w[1].0), "sorted by value, no value twice");
        assert!(STANDARD_NAMES.iter().all(|(v, n)| *v < CKM_VENDOR_DEFINED && n.starts_with("CKM_")));
    }

    #[test]
    fn xor_is_host_path_without_the_vendor_mechanism() {
        let c = Capabilities::new(&[CKM_AES_KEY_WRAP_PAD, CKM_DES3_ECB_ENCRYPT_DATA]);
        let xor = c.describe().into_iter().find(|c| c.name == "key-components-xor");
        assert_eq!(xor.map(|c| c.support), Some(Support::HostPath));
        let tr31 = c.describe().into_iter().find(|c| c.name == "tr31-import");
        assert_eq!(tr31.map(|c| c.support), Some(Support::HostPath));
        let c = Capabilities::new(&[vendor::CKM_QUILL_TR31_WRAP, vendor::CKM_QUILL_TR31_UNWRAP]);
        let tr31 = c.describe().into_iter().find(|c| c.name == "tr31-export").expect("listed");
        assert_eq!((tr31.support, tr31.via.as_str()), (Support::Native, "CKM_QUILL_TR31_WRAP"));
        assert!(c.missing_required().iter().any(|m| m.contains("OAEP")));
    }
}

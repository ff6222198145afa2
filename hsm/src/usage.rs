//! The TR-31 key usages Quill manages: what a key is for, which algorithms each usage takes, and
//! the same usage as `tr31` names it (the header of a key block at rest). Shared by the node's
//! inventory, the HSM adapter and the `quill` client.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::KeyAlg;
use crate::tr31::KeyUsage;

/// A TR-31 key usage (ANSI X9.143 two-character code) that Quill manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Usage {
    /// `B0` base derivation key.
    B0,
    /// `C0` card verification key (CVK).
    C0,
    /// `D0` data encryption key (DEK: secret DGIs).
    D0,
    /// `E0` EMV issuer master key: application cryptograms (IMK-AC).
    E0,
    /// `E1` EMV issuer master key: secure messaging for confidentiality (IMK-SMC).
    E1,
    /// `E2` EMV issuer master key: secure messaging for integrity (IMK-SMI).
    E2,
    /// `E3` EMV issuer master key: data authentication code.
    E3,
    /// `E4` EMV issuer master key: dynamic numbers.
    E4,
    /// `E5` EMV issuer master key: card personalization (KMC).
    E5,
    /// `E6` EMV issuer master key: other.
    E6,
    /// `K0` key encryption or wrapping key (KEK / ZMK).
    K0,
    /// `K1` TR-31 key block protection key.
    K1,
    /// `M0` ISO 16609 MAC key.
    M0,
    /// `M1` ISO 9797-1 MAC algorithm 1.
    M1,
    /// `M3` ISO 9797-1 MAC algorithm 3 (retail MAC).
    M3,
    /// `M6` ISO 9797-1:2011 MAC algorithm 5 (CMAC).
    M6,
    /// `M7` HMAC key (Quill's audit MAC key).
    M7,
    /// `P0` PIN encryption key.
    P0,
    /// `S0` asymmetric key for digital signature (issuer RSA).
    S0,
    /// `V1` PIN verification key, IBM 3624.
    V1,
    /// `V2` PIN verification key, Visa PVV.
    V2,
}

impl Usage {
    /// Every usage, in code order.
    pub const ALL: [Usage; 21] = [
        Usage::B0,
        Usage::C0,
        Usage::D0,
        Usage::E0,
        Usage::E1,
        Usage::E2,
        Usage::E3,
        Usage::E4,
        Usage::E5,
        Usage::E6,
        Usage::K0,
        Usage::K1,
        Usage::M0,
        Usage::M1,
        Usage::M3,
        Usage::M6,
        Usage::M7,
        Usage::P0,
        Usage::S0,
        Usage::V1,
        Usage::V2,
    ];

    /// The two-character code.
    pub fn code(self) -> &'static str {
        match self {
            Usage::B0 => "B0",
            Usage::C0 => "C0",
            Usage::D0 => "D0",
            Usage::E0 => "E0",
            Usage::E1 => "E1",
            Usage::E2 => "E2",
            Usage::E3 => "E3",
            Usage::E4 => "E4",
            Usage::E5 => "E5",
            Usage::E6 => "E6",
            Usage::K0 => "K0",
            Usage::K1 => "K1",
            Usage::M0 => "M0",
            Usage::M1 => "M1",
            Usage::M3 => "M3",
            Usage::M6 => "M6",
            Usage::M7 => "M7",
            Usage::P0 => "P0",
            Usage::S0 => "S0",
            Usage::V1 => "V1",
            Usage::V2 => "V2",
        }
    }

    /// The same usage as `quill_hsm::tr31` names it: what the prep engine checks a key's step
    /// against (`quill_prep::engine::KeyStep`).
    pub fn tr31(self) -> KeyUsage {
        match self {
            Usage::B0 => KeyUsage::Bdk,
            Usage::C0 => KeyUsage::Cvk,
            Usage::D0 => KeyUsage::DataEncryption,
            Usage::E0 => KeyUsage::EmvAc,
            Usage::E1 => KeyUsage::EmvSmc,
            Usage::E2 => KeyUsage::EmvSmi,
            Usage::E3 => KeyUsage::EmvDac,
            Usage::E4 => KeyUsage::EmvDn,
            Usage::E5 => KeyUsage::EmvPersonalisation,
            Usage::E6 => KeyUsage::EmvOther,
            Usage::K0 => KeyUsage::KeyEncryption,
            Usage::K1 => KeyUsage::Kbpk,
            Usage::M0 => KeyUsage::Iso16609Mac,
            Usage::M1 => KeyUsage::Iso9797Mac1,
            Usage::M3 => KeyUsage::Iso9797Mac3,
            Usage::M6 => KeyUsage::Cmac,
            Usage::M7 => KeyUsage::Hmac,
            Usage::P0 => KeyUsage::PinEncryption,
            Usage::S0 => KeyUsage::AsymmetricSignature,
            Usage::V1 => KeyUsage::PinVerificationIbm3624,
            Usage::V2 => KeyUsage::PinVerificationVisaPvv,
        }
    }

    /// What the usage is for, in a few words (`EMV IMK, application cryptograms`).
    pub fn name(self) -> &'static str {
        crate::tr31_usage_name(self.tr31())
    }

    /// The key algorithms [`Usage::allows`], in words.
    pub fn algorithms(self) -> &'static str {
        match self {
            Usage::M7 => "HMAC-SHA-256 keys",
            Usage::S0 => "RSA issuer key pairs (quill key generate --alg rsa)",
            Usage::M0 | Usage::M1 | Usage::M3 | Usage::V1 | Usage::V2 | Usage::C0 => "TDES (DES2, DES3) keys",
            _ => "TDES (DES2, DES3) or AES keys",
        }
    }

    /// Refuse a key of `alg` for this usage (a key ceremony, a generation, an import), saying what
    /// the usage is for and which algorithms it takes: `usage E0 (EMV IMK, application
    /// cryptograms) does not allow a HMAC_SHA256 key: it is for TDES (DES2, DES3) or AES keys`.
    pub fn check_alg(self, alg: KeyAlg) -> Result<(), String> {
        if self.allows(alg) {
            return Ok(());
        }
        Err(format!("usage {self} ({}) does not allow a {alg} key: it is for {}", self.name(), self.algorithms()))
    }

    /// Whether a symmetric key of `alg` can serve this usage.
    pub fn allows(self, alg: KeyAlg) -> bool {
        let tdes = matches!(alg, KeyAlg::Des2 | KeyAlg::Des3);
        let aes = matches!(alg, KeyAlg::Aes128 | KeyAlg::Aes192 | KeyAlg::Aes256);
        match self {
            Usage::M7 => matches!(alg, KeyAlg::HmacSha256),
            Usage::S0 => false,
            Usage::M0 | Usage::M1 | Usage::M3 | Usage::V1 | Usage::V2 | Usage::C0 => tdes,
            _ => tdes || aes,
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Usage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Usage::ALL.into_iter().find(|u| u.code().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let all: Vec<&str> = Usage::ALL.iter().map(|u| u.code()).collect();
            format!("unknown key usage {s:?} (one of {})", all.join(" "))
        })
    }
}

impl Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every usage maps to the TR-31 usage of its code, and allows only algorithms TR-31 allows it.
    #[test]
    fn usages_are_their_tr31_codes() {
        for u in Usage::ALL {
            assert_eq!(u.tr31().code(), *<&[u8; 2]>::try_from(u.code().as_bytes()).expect("two characters"), "{u}");
            for alg in KeyAlg::ALL {
                if u.allows(alg) {
                    assert!(crate::tr31_usage_allows(u.tr31(), alg), "{u} allows {alg}, TR-31 does not");
                }
            }
        }
    }

    /// A usage that does not fit the algorithm is refused with what the usage is for.
    #[test]
    fn a_usage_that_does_not_fit_the_algorithm_says_why() {
        let e = Usage::E0.check_alg(KeyAlg::HmacSha256).expect_err("E0 with HMAC");
        assert_eq!(
            e,
            "usage E0 (EMV IMK, application cryptograms) does not allow a HMAC_SHA256 key: it is for TDES (DES2, DES3) or AES keys"
        );
        let e = Usage::M7.check_alg(KeyAlg::Des2).expect_err("M7 with TDES");
        assert_eq!(e, "usage M7 (HMAC) does not allow a DES2 key: it is for HMAC-SHA-256 keys");
        assert!(Usage::C0.check_alg(KeyAlg::Aes128).is_err());
        assert!(Usage::P0.check_alg(KeyAlg::Aes128).is_ok());
        assert!(Usage::D0.check_alg(KeyAlg::Des2).is_ok());
    }
}

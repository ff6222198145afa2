//! Mechanisms: the table the module advertises, owned parameters, and the vendor payment
//! mechanisms (values in the `CKM_VENDOR_DEFINED` range; layouts in hsm-sim/README.md).

use crate::error::{Error, Result};
use cryptoki_sys::*;

/// Quill's vendor mechanisms (numbers and names defined once, in `quill_crypto::mechanism`).
pub use quill_crypto::mechanism::{
    CKM_QUILL_BASE, CKM_QUILL_CVV, CKM_QUILL_DES3_RETAIL_MAC, CKM_QUILL_EMV_MK_OPTION_A, CKM_QUILL_EMV_MK_OPTION_B,
    CKM_QUILL_IBM3624_OFFSET, CKM_QUILL_KEY_COMPONENTS_XOR, CKM_QUILL_PIN_GENERATE, CKM_QUILL_PIN_TRANSLATE,
    CKM_QUILL_RSA_CRT_COMPONENT_WRAP, CKM_QUILL_TR31_TRANSLATE, CKM_QUILL_TR31_UNWRAP, CKM_QUILL_TR31_WRAP,
    CKM_QUILL_VISA_PVV,
};

/// A mechanism with owned parameters (copied out of C memory at the boundary).
#[derive(Clone, PartialEq, Eq)]
pub struct Mechanism {
    /// `CKM_*` value.
    pub mech: CK_MECHANISM_TYPE,
    /// Its parameter.
    pub param: MechParam,
}

impl std::fmt::Debug for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mechanism(0x{:X})", self.mech)
    }
}

/// Owned mechanism parameters.
#[derive(Clone, PartialEq, Eq)]
pub enum MechParam {
    /// No parameter.
    None,
    /// Raw parameter bytes (IVs, vendor structures, `CK_MAC_GENERAL_PARAMS`).
    Raw(Vec<u8>),
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    Oaep {
        /// Hash mechanism.
        hash: CK_MECHANISM_TYPE,
        /// MGF (`CKG_MGF1_*`).
        mgf: CK_RSA_PKCS_MGF_TYPE,
        /// Label (`CKZ_DATA_SPECIFIED` source data).
        label: Vec<u8>,
    },
    /// `CK_GCM_PARAMS`.
    Gcm {
        /// IV.
        iv: Vec<u8>,
        /// Additional authenticated data.
        aad: Vec<u8>,
        /// Tag length in bits.
        tag_bits: u64,
    },
    /// `CK_KEY_DERIVATION_STRING_DATA` (ECB_ENCRYPT_DATA).
    DeriveData(Vec<u8>),
    /// `CK_DES_CBC_ENCRYPT_DATA_PARAMS` / `CK_AES_CBC_ENCRYPT_DATA_PARAMS`.
    CbcDeriveData {
        /// IV (8 or 16 bytes).
        iv: Vec<u8>,
        /// Data to encrypt.
        data: Vec<u8>,
    },
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh1 {
        /// `CKD_*` key derivation function.
        kdf: CK_EC_KDF_TYPE,
        /// Shared data (X9.63 SharedInfo).
        shared: Vec<u8>,
        /// The other party's public point.
        public: Vec<u8>,
    },
    /// `CK_EDDSA_PARAMS`.
    Eddsa {
        /// `phFlag` (Ed25519ph).
        ph: bool,
        /// Context data (Ed25519ctx).
        context: Vec<u8>,
    },
    /// `CK_SP800_108_KDF_PARAMS` / `CK_SP800_108_FEEDBACK_KDF_PARAMS`.
    Sp800108(Box<crate::ops::kdf::Sp800108>),
}

/// Which parameter shape a mechanism takes (the C boundary uses this to copy parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamShape {
    /// Copy the bytes as they are.
    Raw,
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    Oaep,
    /// `CK_GCM_PARAMS`.
    Gcm,
    /// `CK_KEY_DERIVATION_STRING_DATA`.
    DeriveData,
    /// `CK_DES_CBC_ENCRYPT_DATA_PARAMS`.
    DesCbcDeriveData,
    /// `CK_AES_CBC_ENCRYPT_DATA_PARAMS`.
    AesCbcDeriveData,
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh1,
    /// `CK_EDDSA_PARAMS` (or none).
    Eddsa,
    /// `CK_SP800_108_KDF_PARAMS`.
    Sp800108Counter,
    /// `CK_SP800_108_FEEDBACK_KDF_PARAMS`.
    Sp800108Feedback,
}

/// Parameter shape of a mechanism.
pub fn param_shape(mech: CK_MECHANISM_TYPE) -> ParamShape {
    match mech {
        CKM_RSA_PKCS_OAEP => ParamShape::Oaep,
        CKM_AES_GCM => ParamShape::Gcm,
        CKM_DES3_ECB_ENCRYPT_DATA | CKM_AES_ECB_ENCRYPT_DATA | CKM_DES_ECB_ENCRYPT_DATA => ParamShape::DeriveData,
        CKM_CONCATENATE_BASE_AND_DATA | CKM_CONCATENATE_DATA_AND_BASE | CKM_XOR_BASE_AND_DATA => ParamShape::DeriveData,
        CKM_ECDH1_DERIVE => ParamShape::Ecdh1,
        CKM_EDDSA => ParamShape::Eddsa,
        CKM_SP800_108_COUNTER_KDF => ParamShape::Sp800108Counter,
        CKM_SP800_108_FEEDBACK_KDF => ParamShape::Sp800108Feedback,
        CKM_DES3_CBC_ENCRYPT_DATA | CKM_DES_CBC_ENCRYPT_DATA => ParamShape::DesCbcDeriveData,
        CKM_AES_CBC_ENCRYPT_DATA => ParamShape::AesCbcDeriveData,
        _ => ParamShape::Raw,
    }
}

impl MechParam {
    /// Raw bytes (empty when none).
    pub fn raw(&self) -> &[u8] {
        match self {
            MechParam::Raw(v) => v,
            _ => &[],
        }
    }
}

/// One row of the mechanism table.
#[derive(Debug, Clone, Copy)]
pub struct MechInfo {
    /// Mechanism.
    pub mech: CK_MECHANISM_TYPE,
    /// Minimum key size (bits for RSA, bytes for symmetric keys).
    pub min: CK_ULONG,
    /// Maximum key size.
    pub max: CK_ULONG,
    /// `CKF_*` flags.
    pub flags: CK_FLAGS,
}

const ED: CK_FLAGS = CKF_ENCRYPT | CKF_DECRYPT;
const SV: CK_FLAGS = CKF_SIGN | CKF_VERIFY;
const WU: CK_FLAGS = CKF_WRAP | CKF_UNWRAP;
/// Prime-field curves, named by OID, uncompressed points (as SoftHSM 2 says).
const ECF: CK_FLAGS = CKF_EC_F_P | CKF_EC_OID | CKF_EC_UNCOMPRESS;

/// The mechanisms every slot offers.
pub const MECHANISMS: &[MechInfo] = &[
    MechInfo { mech: CKM_RSA_PKCS_KEY_PAIR_GEN, min: 512, max: 4096, flags: CKF_GENERATE_KEY_PAIR },
    MechInfo { mech: CKM_RSA_PKCS, min: 512, max: 4096, flags: ED | SV | WU | CKF_SIGN_RECOVER | CKF_VERIFY_RECOVER },
    MechInfo { mech: CKM_RSA_X_509, min: 512, max: 4096, flags: ED | SV | CKF_SIGN_RECOVER | CKF_VERIFY_RECOVER },
    MechInfo { mech: CKM_RSA_PKCS_OAEP, min: 512, max: 4096, flags: ED | WU },
    MechInfo { mech: CKM_SHA1_RSA_PKCS, min: 512, max: 4096, flags: SV },
    MechInfo { mech: CKM_SHA224_RSA_PKCS, min: 512, max: 4096, flags: SV },
    MechInfo { mech: CKM_SHA256_RSA_PKCS, min: 512, max: 4096, flags: SV },
    MechInfo { mech: CKM_SHA384_RSA_PKCS, min: 512, max: 4096, flags: SV },
    MechInfo { mech: CKM_SHA512_RSA_PKCS, min: 512, max: 4096, flags: SV },
    MechInfo { mech: CKM_DES2_KEY_GEN, min: 16, max: 16, flags: CKF_GENERATE },
    MechInfo { mech: CKM_DES3_KEY_GEN, min: 24, max: 24, flags: CKF_GENERATE },
    MechInfo { mech: CKM_DES3_ECB, min: 16, max: 24, flags: ED | WU },
    MechInfo { mech: CKM_DES3_CBC, min: 16, max: 24, flags: ED | WU },
    MechInfo { mech: CKM_DES3_CBC_PAD, min: 16, max: 24, flags: ED | WU },
    MechInfo { mech: CKM_DES3_MAC, min: 16, max: 24, flags: SV },
    MechInfo { mech: CKM_DES3_CMAC, min: 16, max: 24, flags: SV },
    MechInfo { mech: CKM_DES3_ECB_ENCRYPT_DATA, min: 16, max: 24, flags: CKF_DERIVE },
    MechInfo { mech: CKM_DES3_CBC_ENCRYPT_DATA, min: 16, max: 24, flags: CKF_DERIVE },
    MechInfo { mech: CKM_AES_KEY_GEN, min: 16, max: 32, flags: CKF_GENERATE },
    MechInfo { mech: CKM_AES_ECB, min: 16, max: 32, flags: ED | WU },
    MechInfo { mech: CKM_AES_CBC, min: 16, max: 32, flags: ED | WU },
    MechInfo { mech: CKM_AES_CBC_PAD, min: 16, max: 32, flags: ED | WU },
    MechInfo { mech: CKM_AES_GCM, min: 16, max: 32, flags: ED },
    MechInfo { mech: CKM_AES_CMAC, min: 16, max: 32, flags: SV },
    MechInfo { mech: CKM_AES_CMAC_GENERAL, min: 16, max: 32, flags: SV },
    MechInfo { mech: CKM_AES_KEY_WRAP, min: 16, max: 32, flags: ED | WU },
    MechInfo { mech: CKM_AES_KEY_WRAP_PAD, min: 16, max: 32, flags: ED | WU },
    MechInfo { mech: CKM_AES_KEY_WRAP_KWP, min: 16, max: 32, flags: ED | WU },
    MechInfo { mech: CKM_AES_ECB_ENCRYPT_DATA, min: 16, max: 32, flags: CKF_DERIVE },
    MechInfo { mech: CKM_AES_CBC_ENCRYPT_DATA, min: 16, max: 32, flags: CKF_DERIVE },
    MechInfo { mech: CKM_SHA_1, min: 0, max: 0, flags: CKF_DIGEST },
    MechInfo { mech: CKM_SHA224, min: 0, max: 0, flags: CKF_DIGEST },
    MechInfo { mech: CKM_SHA256, min: 0, max: 0, flags: CKF_DIGEST },
    MechInfo { mech: CKM_SHA384, min: 0, max: 0, flags: CKF_DIGEST },
    MechInfo { mech: CKM_SHA512, min: 0, max: 0, flags: CKF_DIGEST },
    MechInfo { mech: CKM_SHA_1_HMAC, min: 1, max: 512, flags: SV },
    MechInfo { mech: CKM_SHA256_HMAC, min: 1, max: 512, flags: SV },
    MechInfo { mech: CKM_SHA384_HMAC, min: 1, max: 512, flags: SV },
    MechInfo { mech: CKM_SHA512_HMAC, min: 1, max: 512, flags: SV },
    MechInfo { mech: CKM_GENERIC_SECRET_KEY_GEN, min: 1, max: 512, flags: CKF_GENERATE },
    // Issue 14: EC (sizes in bits of the curve's order), Ed25519, SHA-224 HMAC, the 3.0 HMAC
    // key generators (sizes in bytes), the key-from-key mechanisms and SP 800-108.
    MechInfo { mech: CKM_EC_KEY_PAIR_GEN, min: 256, max: 521, flags: CKF_GENERATE_KEY_PAIR | ECF },
    MechInfo { mech: CKM_ECDSA, min: 256, max: 521, flags: SV | ECF },
    MechInfo { mech: CKM_ECDSA_SHA1, min: 256, max: 521, flags: SV | ECF },
    MechInfo { mech: CKM_ECDSA_SHA224, min: 256, max: 521, flags: SV | ECF },
    MechInfo { mech: CKM_ECDSA_SHA256, min: 256, max: 521, flags: SV | ECF },
    MechInfo { mech: CKM_ECDSA_SHA384, min: 256, max: 521, flags: SV | ECF },
    MechInfo { mech: CKM_ECDSA_SHA512, min: 256, max: 521, flags: SV | ECF },
    MechInfo { mech: CKM_ECDH1_DERIVE, min: 256, max: 521, flags: CKF_DERIVE | ECF },
    MechInfo {
        mech: CKM_EC_EDWARDS_KEY_PAIR_GEN,
        min: 256,
        max: 256,
        flags: CKF_GENERATE_KEY_PAIR | CKF_EC_OID | CKF_EC_CURVENAME,
    },
    MechInfo { mech: CKM_EDDSA, min: 256, max: 256, flags: SV | CKF_EC_OID | CKF_EC_CURVENAME },
    MechInfo { mech: CKM_SHA224_HMAC, min: 1, max: 512, flags: SV },
    MechInfo { mech: CKM_SHA_1_KEY_GEN, min: 1, max: 512, flags: CKF_GENERATE },
    MechInfo { mech: CKM_SHA224_KEY_GEN, min: 1, max: 512, flags: CKF_GENERATE },
    MechInfo { mech: CKM_SHA256_KEY_GEN, min: 1, max: 512, flags: CKF_GENERATE },
    MechInfo { mech: CKM_SHA384_KEY_GEN, min: 1, max: 512, flags: CKF_GENERATE },
    MechInfo { mech: CKM_SHA512_KEY_GEN, min: 1, max: 512, flags: CKF_GENERATE },
    MechInfo { mech: CKM_CONCATENATE_BASE_AND_KEY, min: 1, max: 512, flags: CKF_DERIVE },
    MechInfo { mech: CKM_CONCATENATE_BASE_AND_DATA, min: 1, max: 512, flags: CKF_DERIVE },
    MechInfo { mech: CKM_CONCATENATE_DATA_AND_BASE, min: 1, max: 512, flags: CKF_DERIVE },
    MechInfo { mech: CKM_XOR_BASE_AND_DATA, min: 1, max: 512, flags: CKF_DERIVE },
    MechInfo { mech: CKM_EXTRACT_KEY_FROM_KEY, min: 1, max: 512, flags: CKF_DERIVE },
    MechInfo { mech: CKM_SP800_108_COUNTER_KDF, min: 1, max: 512, flags: CKF_DERIVE },
    MechInfo { mech: CKM_SP800_108_FEEDBACK_KDF, min: 1, max: 512, flags: CKF_DERIVE },
    MechInfo { mech: CKM_QUILL_EMV_MK_OPTION_A, min: 16, max: 24, flags: CKF_DERIVE },
    MechInfo { mech: CKM_QUILL_EMV_MK_OPTION_B, min: 16, max: 24, flags: CKF_DERIVE },
    MechInfo { mech: CKM_QUILL_CVV, min: 16, max: 16, flags: CKF_SIGN },
    MechInfo { mech: CKM_QUILL_VISA_PVV, min: 16, max: 24, flags: CKF_SIGN },
    MechInfo { mech: CKM_QUILL_IBM3624_OFFSET, min: 16, max: 24, flags: CKF_SIGN },
    MechInfo { mech: CKM_QUILL_PIN_GENERATE, min: 16, max: 32, flags: CKF_ENCRYPT },
    MechInfo { mech: CKM_QUILL_PIN_TRANSLATE, min: 16, max: 32, flags: CKF_ENCRYPT },
    MechInfo { mech: CKM_QUILL_RSA_CRT_COMPONENT_WRAP, min: 16, max: 32, flags: CKF_WRAP },
    MechInfo { mech: CKM_QUILL_KEY_COMPONENTS_XOR, min: 8, max: 32, flags: CKF_DERIVE },
    MechInfo { mech: CKM_QUILL_DES3_RETAIL_MAC, min: 16, max: 16, flags: SV },
    MechInfo { mech: CKM_QUILL_TR31_WRAP, min: 16, max: 32, flags: CKF_WRAP },
    MechInfo { mech: CKM_QUILL_TR31_UNWRAP, min: 16, max: 32, flags: CKF_UNWRAP },
    MechInfo { mech: CKM_QUILL_TR31_TRANSLATE, min: 16, max: 32, flags: CKF_ENCRYPT },
];

/// Look a mechanism up.
pub fn info(mech: CK_MECHANISM_TYPE) -> Result<&'static MechInfo> {
    MECHANISMS
        .iter()
        .find(|m| m.mech == mech)
        .ok_or_else(|| Error::new(CKR_MECHANISM_INVALID, format!("mechanism 0x{mech:X} not supported")))
}

/// Check that a mechanism supports a function (`CKF_ENCRYPT`, …).
pub fn require(mech: CK_MECHANISM_TYPE, flag: CK_FLAGS) -> Result<&'static MechInfo> {
    let i = info(mech)?;
    if i.flags & flag == 0 {
        return Err(Error::new(
            CKR_MECHANISM_INVALID,
            format!("mechanism 0x{mech:X} cannot be used for this function"),
        ));
    }
    Ok(i)
}

/// A reader over a packed vendor parameter structure (all integers `CK_ULONG`, host order).
pub struct ParamReader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> ParamReader<'a> {
    /// Start reading `buf` (named `what` in errors).
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    /// Next `n` bytes.
    pub fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::param(format!("{}: parameter too short at field {field}", self.what)));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    /// Next byte.
    pub fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.bytes(1, field)?[0])
    }
    /// Next `CK_ULONG`.
    pub fn ulong(&mut self, field: &str) -> Result<CK_ULONG> {
        let b = self.bytes(std::mem::size_of::<CK_ULONG>(), field)?;
        let arr = b.try_into().map_err(|_| Error::param("ulong"))?;
        Ok(CK_ULONG::from_ne_bytes(arr))
    }
    /// A length byte then that many ASCII digits.
    pub fn digits(&mut self, field: &str, min: usize, max: usize) -> Result<String> {
        let n = self.u8(field)? as usize;
        if n < min || n > max {
            return Err(Error::param(format!("{}: {field} length {n} outside {min}..={max}", self.what)));
        }
        let b = self.bytes(n, field)?;
        if !b.iter().all(u8::is_ascii_digit) {
            return Err(Error::param(format!("{}: {field} must be decimal digits", self.what)));
        }
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    /// Fail if bytes remain.
    pub fn end(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::param(format!("{}: {} unexpected trailing parameter bytes", self.what, self.buf.len())))
        }
    }
}

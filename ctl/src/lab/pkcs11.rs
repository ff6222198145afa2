//! The PKCS#11 helpers the lab commands use (`quill demo hsm`, `quill prep`): the tools' shared
//! helpers of [`quill_hsm::tools`] (loading a module, one-line errors, vendor mechanisms with
//! byte-string parameters), over the `cryptoki` crate only; no `unsafe` here.

pub use quill_hsm::tools::{Ck, digits, load, sim_next_to_exe, ulong, with_vendor_mechanism};

/// hsm-sim's vendor mechanisms the walk-through calls (defined once, in `quill_crypto::mechanism`).
pub use quill_hsm::vendor::{
    CKM_QUILL_CVV, CKM_QUILL_EMV_MK_OPTION_A, CKM_QUILL_EMV_MK_OPTION_B, CKM_QUILL_PIN_GENERATE,
    CKM_QUILL_RSA_CRT_COMPONENT_WRAP, CKM_QUILL_VISA_PVV,
};

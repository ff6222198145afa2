//! `quill-hsm-sim`: a PKCS#11 v2.40 module that simulates a payment HSM.
//!
//! The shared library `libquill_hsm_sim.so` exports the standard entry points
//! (`C_GetFunctionList`, `C_GetInterfaceList`, `C_GetInterface`); any PKCS#11 consumer can load it
//! (pkcs11-tool, python-pkcs11, the `cryptoki` crate). Layout:
//!
//! - [`ffi`]: the only `unsafe` code — C entry points that copy arguments into Rust values, call
//!   [`module::Module`], copy results back, and turn panics into `CKR_GENERAL_ERROR`;
//! - [`module`]: slots, sessions, objects, and every function as a safe method;
//! - [`token`], [`store`]: token state, PINs and the encrypted at-rest format;
//! - [`object`], [`attr`]: attributes, templates, defaults and rules;
//! - [`mechanism`], [`ops`]: the mechanism table, owned parameters, the operations, and the
//!   vendor payment mechanisms (see `hsm-sim/README.md`);
//! - [`fault`]: run-time fault injection for chaos tests;
//! - [`config`]: `QUILL_HSM_CONF` / `QUILL_HSM_DIR`.

pub mod attr;
pub mod config;
pub mod error;
pub mod fault;
#[allow(unsafe_code)]
pub mod ffi;
pub mod mechanism;
pub mod module;
pub mod object;
pub mod ops;
pub mod store;
pub mod token;

//! TR-31 import and export on one slot: inside the HSM where the slot lists hsm-sim's
//! `CKM_QUILL_TR31_UNWRAP`/`CKM_QUILL_TR31_WRAP`, otherwise on the host path (SoftHSM), refused
//! unless the configuration allows it.
//!
//! The checks that need no key ([`crate::keyblock`]) run first on both paths, so a malformed block,
//! a KBPK of the wrong family or a key Quill cannot hold gets the same [`HsmError::Tr31`] from
//! every module, before any key is unwrapped or the host path is reported.

use super::session::SlotSession;
use super::templates::{self, Usage};
use super::{Pkcs11Hsm, Smk, Temporaries};
use crate::error::{HsmError, Op, rv_name};
use crate::keyblock::{self, Role};
use crate::mechanisms::{mechanism_name, vendor};
use crate::observer::HostPathUse;
use crate::raw::{RawError, RawParam};
use crate::types::{KeyAlg, WrappedKey};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectHandle};
use cryptoki::session::Session;
use quill_crypto::tr31::{self, Algorithm, Tr31Error, Tr31Header};

impl Pkcs11Hsm {
    /// [`crate::Hsm::tr31_import`] on session `s`.
    pub(super) fn tr31_import_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        kbpk: &WrappedKey,
        block: &str,
    ) -> Result<(Tr31Header, WrappedKey), HsmError> {
        let header = keyblock::check_import(kbpk.alg, block).map_err(|r| op.tr31(r))?;
        let smk = self.require_smk(&s.session, op)?;
        self.check_smk(op, &smk, kbpk)?;
        if self.caps.native_tr31_unwrap() {
            self.tr31_import_native(s, op, &smk, kbpk, header, block)
        } else {
            self.tr31_import_host(s, op, &smk, kbpk, &header, block)
        }
    }

    /// [`crate::Hsm::tr31_export`] on session `s`.
    pub(super) fn tr31_export_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        kbpk: &WrappedKey,
        key: &WrappedKey,
        usage: &str,
        exportable: bool,
    ) -> Result<String, HsmError> {
        let header = keyblock::export_header(kbpk.alg, key.alg, usage, exportable).map_err(|r| op.tr31(r))?;
        let smk = self.require_smk(&s.session, op)?;
        self.check_smk(op, &smk, kbpk)?;
        self.check_smk(op, &smk, key)?;
        self.check_exportable(op, key, usage)?;
        if self.caps.native_tr31_wrap() {
            self.tr31_export_native(s, op, &smk, kbpk, key, &header)
        } else {
            self.tr31_export_host(s, op, &smk, kbpk, key, &header)
        }
    }

    // ---- inside the HSM (hsm-sim) -------------------------------------------------------------

    /// The KBPK unwrapped for wrap/unwrap (cached), `C_UnwrapKey(CKM_QUILL_TR31_UNWRAP)` to a
    /// session key, its KCV computed in the HSM (through a copy wrapped under the SMK and unwrapped
    /// for the KCV only: the block's mode of use may forbid the KCV operation on the key as
    /// unwrapped), then the key wrapped as a block at rest with the imported usage, mode of use,
    /// exportability and version.
    fn tr31_import_native(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        kbpk: &WrappedKey,
        header: Tr31Header,
        block: &str,
    ) -> Result<(Tr31Header, WrappedKey), HsmError> {
        let hkbpk = self.unwrap_working(s, op, smk, kbpk, Role::Kbpk, Usage::Kbpk)?;
        let mech = vendor_mechanism(op, vendor::CKM_QUILL_TR31_UNWRAP)?;
        let h = s
            .session
            .unwrap_key(&mech, hkbpk, block.as_bytes(), &templates::tr31_unwrapped())
            .map_err(|e| self.tr31_refused(op, e))?;
        let r = (|| {
            let alg = self.imported_alg(&s.session, op, h, header.algorithm)?;
            let kcv = {
                let session = &s.session;
                let mut tmp = Temporaries::new(session);
                let blob = op.ck(session.wrap_key(&Mechanism::AesKeyWrapPad, smk.handle, h))?;
                let hk = tmp.add(op.ck(session.unwrap_key(
                    &Mechanism::AesKeyWrapPad,
                    smk.handle,
                    &blob,
                    &templates::transient(alg),
                ))?);
                self.kcv_of(session, op, hk, alg)?
            };
            let at_rest = keyblock::at_rest_from_import(&header, alg, &kcv, kbpk.owner()).map_err(|r| op.tr31(r))?;
            self.make_block(s, op, smk, h, None, alg, &at_rest, kcv)
        })();
        let _ = s.session.destroy_object(h);
        Ok((header, r?))
    }

    /// The KBPK unwrapped for wrap/unwrap (cached), the key unwrapped as an extractable session
    /// key, and `C_WrapKey(CKM_QUILL_TR31_WRAP)` with the header template as parameter.
    fn tr31_export_native(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        kbpk: &WrappedKey,
        key: &WrappedKey,
        header: &Tr31Header,
    ) -> Result<String, HsmError> {
        let hkbpk = self.unwrap_working(s, op, smk, kbpk, Role::Kbpk, Usage::Kbpk)?;
        let template = header.encode().map_err(|e| op.tr31(e.to_string()))?;
        let hkey = self.open_block(s, op, smk, key, None, &templates::exportable(key.alg))?;
        let session = &s.session;
        let mut tmp = Temporaries::new(session);
        tmp.add(hkey);
        let block = self
            .module
            .raw
            .wrap_key(session, vendor::CKM_QUILL_TR31_WRAP, RawParam::Bytes(template.as_bytes()), hkbpk, hkey)
            .map_err(|e| match e {
                RawError::Rv(
                    f,
                    rv @ (RvError::WrappingKeySizeRange
                    | RvError::WrappingKeyTypeInconsistent
                    | RvError::MechanismParamInvalid
                    | RvError::KeySizeRange),
                ) => op.tr31(format!(
                    "the module refused to make the key block (header template {template:?}): {f}({}) returned {}",
                    mechanism_name(vendor::CKM_QUILL_TR31_WRAP),
                    rv_name(rv)
                )),
                other => op.raw(other),
            })?;
        String::from_utf8(block).map_err(|_| op.state("CKM_QUILL_TR31_WRAP returned a key block that is not ASCII"))
    }

    /// The [`KeyAlg`] of a key unwrapped from a TR-31 block, from its key type and length.
    fn imported_alg(&self, s: &Session, op: Op<'_>, h: ObjectHandle, algorithm: Algorithm) -> Result<KeyAlg, HsmError> {
        let attrs = op.ck(s.get_attributes(h, &[AttributeType::KeyType, AttributeType::ValueLen]))?;
        let key_type = attrs.iter().find_map(|a| match a {
            Attribute::KeyType(t) => Some(*t),
            _ => None,
        });
        let value_len = attrs.iter().find_map(|a| match a {
            Attribute::ValueLen(l) => usize::try_from(u64::from(*l)).ok(),
            _ => None,
        });
        let len = match key_type {
            Some(KeyType::DES2) => 16,
            Some(KeyType::DES3) => 24,
            _ => value_len.unwrap_or(0),
        };
        keyblock::key_alg_of(algorithm, len).map_err(|r| op.tr31(r))
    }

    /// A module's refusal of a key block, as [`HsmError::Tr31`] where it is about the block.
    fn tr31_refused(&self, op: Op<'_>, e: CkError) -> HsmError {
        match e {
            // The structure was checked on the host with the same code the module runs
            // (`keyblock::check_import`); what is left to fail is the MAC (or, in a block whose
            // MAC verifies, an impossible key length field, which only its maker can produce).
            CkError::Pkcs11(RvError::WrappedKeyInvalid, f) => op.tr31(format!(
                "{} (C_{f:?}({}) returned CKR_WRAPPED_KEY_INVALID)",
                Tr31Error::Mac,
                mechanism_name(vendor::CKM_QUILL_TR31_UNWRAP)
            )),
            CkError::Pkcs11(
                rv @ (RvError::WrappedKeyLenRange
                | RvError::UnwrappingKeyTypeInconsistent
                | RvError::UnwrappingKeySizeRange
                | RvError::TemplateInconsistent),
                f,
            ) => op.tr31(format!(
                "the module refused the key block: C_{f:?}({}) returned {}",
                mechanism_name(vendor::CKM_QUILL_TR31_UNWRAP),
                rv_name(rv)
            )),
            other => op.err(other),
        }
    }

    // ---- host path (SoftHSM) ------------------------------------------------------------------

    pub(super) fn host_path(
        &self,
        op: Op<'_>,
        missing: &'static str,
        alg: impl std::fmt::Display,
        what: String,
    ) -> Result<(), HsmError> {
        if !self.allow_host {
            return Err(HsmError::HostPathRefused { operation: op.name, module: self.at.module.clone(), missing });
        }
        self.observer.host_path_used(&HostPathUse {
            operation: op.name,
            what,
            alg: alg.to_string(),
            module: self.info.module.clone(),
            slot: self.info.slot,
            token_label: self.info.token_label.clone(),
        });
        Ok(())
    }

    /// The KBPK's value read from a readable session copy, `tr31::unwrap` in host memory, the key
    /// created with `C_CreateObject` and wrapped under the SMK (KCV computed in the HSM).
    fn tr31_import_host(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        kbpk: &WrappedKey,
        header: &Tr31Header,
        block: &str,
    ) -> Result<(Tr31Header, WrappedKey), HsmError> {
        self.host_path(
            op,
            "a TR-31 unwrap mechanism (CKM_QUILL_TR31_UNWRAP)",
            kbpk.alg,
            format!(
                "TR-31 import in host memory (version {} key block, usage {}, algorithm {}): the {} KBPK and the imported key are read into host memory; the module lacks {}",
                header.version.id(),
                String::from_utf8_lossy(&header.key_usage.code()),
                header.algorithm.code(),
                kbpk.alg,
                mechanism_name(vendor::CKM_QUILL_TR31_UNWRAP)
            ),
        )?;
        let (header, key) = {
            let kbpk_value = self.block_value(s, op, smk, kbpk, Some(Role::Kbpk))?;
            tr31::unwrap(keyblock::kbpk(kbpk.alg, &kbpk_value), block.as_bytes()).map_err(|e| op.tr31(e.to_string()))?
        };
        let alg = keyblock::key_alg_of(header.algorithm, key.len()).map_err(|r| op.tr31(r))?;
        let h = self.create_secret(&s.session, op, &templates::transient(alg), &key)?;
        let r = (|| {
            let kcv = self.kcv_of(&s.session, op, h, alg)?;
            let at_rest = keyblock::at_rest_from_import(&header, alg, &kcv, kbpk.owner()).map_err(|r| op.tr31(r))?;
            self.make_block(s, op, smk, h, Some(&key), alg, &at_rest, kcv)
        })();
        let _ = s.session.destroy_object(h);
        Ok((header, r?))
    }

    /// The KBPK's and the key's values read from readable session copies, `tr31::wrap` in host
    /// memory with random padding from `C_GenerateRandom`.
    fn tr31_export_host(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        kbpk: &WrappedKey,
        key: &WrappedKey,
        header: &Tr31Header,
    ) -> Result<String, HsmError> {
        self.host_path(
            op,
            "a TR-31 wrap mechanism (CKM_QUILL_TR31_WRAP)",
            key.alg,
            format!(
                "TR-31 export in host memory (version {} key block, usage {}): the {} key and the {} KBPK are read into host memory; the module lacks {}",
                header.version.id(),
                String::from_utf8_lossy(&header.key_usage.code()),
                key.alg,
                kbpk.alg,
                mechanism_name(vendor::CKM_QUILL_TR31_WRAP)
            ),
        )?;
        let kbpk_value = self.block_value(s, op, smk, kbpk, Some(Role::Kbpk))?;
        let key_value = self.block_value(s, op, smk, key, None)?;
        let s = &s.session;
        if key_value.len() != key.alg.key_len() {
            return Err(op.state(format!("the {} key has {} bytes", key.alg, key_value.len())));
        }
        let mut rng = None;
        let mut fill = |buf: &mut [u8]| {
            if let Err(e) = s.generate_random_slice(buf) {
                rng = Some(e);
            }
        };
        let block = tr31::wrap(
            keyblock::kbpk(kbpk.alg, &kbpk_value),
            header,
            &key_value,
            header.algorithm.max_key_len(),
            &mut fill,
        )
        .map_err(|e| op.tr31(e.to_string()))?;
        match rng {
            Some(e) => Err(op.err(e)),
            None => Ok(block),
        }
    }
}

/// A vendor mechanism without parameter.
pub(super) fn vendor_mechanism(op: Op<'_>, m: cryptoki_sys::CK_MECHANISM_TYPE) -> Result<Mechanism<'static>, HsmError> {
    let t = MechanismType::new_vendor_defined(m).map_err(|e| op.misuse(format!("{}: {e}", mechanism_name(m))))?;
    Ok(Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(t, None)))
}

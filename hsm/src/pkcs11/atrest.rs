//! Keys at rest as TR-31 key blocks (version D, the AES key block of ANSI X9.143) under a
//! key-block protection key (KBPK) derived from the SMK inside the HSM.
//!
//! The KBPK is `CKM_AES_CBC_ENCRYPT_DATA` of a fixed 32-byte label under the SMK (IV zero), made
//! once per session as a session object and kept in the session's cache: every HSM holding the
//! same SMK derives the same KBPK, and a rotated SMK derives another. On a module with hsm-sim's
//! `CKM_QUILL_TR31_WRAP`/`CKM_QUILL_TR31_UNWRAP` the KBPK is sensitive, never extractable, for
//! wrap/unwrap only, and the block's MAC and mode of use are checked inside the module: a key
//! opened from a block gets only the usage attributes its mode allows, and none at all the
//! adapter did not ask for. Elsewhere (SoftHSM) the KBPK is derived readable and blocks are made
//! and opened on the host path ([`Pkcs11Hsm::host_path`]: refused unless the slot allows key
//! material in host memory, every use audited), where the adapter applies the same rules.
//!
//! Before any block is opened, [`keyblock::at_rest_check`] reads its header: version D, key
//! context `1` (storage), the record's algorithm and a usage that the operation's [`Role`]
//! allows. The MAC then proves that header is the one an HSM of this SMK wrote.

use super::session::SlotSession;
use super::templates::{self, Usage};
use super::tr31_ops::vendor_mechanism;
use super::{Pkcs11Hsm, Smk, Temporaries};
use crate::Zeroizing;
use crate::error::{HsmError, Op};
use crate::keyblock::{self, Role};
use crate::mechanisms::vendor;
use crate::raw::RawParam;
use crate::types::{Kcv, KeyAlg, KeyUse, RsaPublic, WrappedKey, WrappedRsaKey};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use quill_crypto::tr31::{self, Exportability, Kbpk, KeyFunction, Tr31Header};
use sha2::{Digest as _, Sha256};

/// The data the SMK encrypts (AES-CBC, IV zero) into the at-rest KBPK: 32 bytes, so the KBPK is
/// AES-256.
const KBPK_LABEL: &[u8; 32] = b"QUILL KEY BLOCKS AT REST KBPK v1";

impl Pkcs11Hsm {
    /// Whether blocks are made and opened inside the module.
    pub(super) fn native_blocks(&self) -> bool {
        self.caps.native_tr31_wrap() && self.caps.native_tr31_unwrap()
    }

    /// The at-rest KBPK of `smk` on this session, derived on first use and cached.
    pub(super) fn at_rest_kbpk(&self, s: &mut SlotSession, op: Op<'_>, smk: &Smk) -> Result<ObjectHandle, HsmError> {
        let mut d = Sha256::new();
        d.update(b"quill at-rest kbpk\0");
        d.update(smk.kcv.as_str().as_bytes());
        let digest: [u8; 32] = d.finalize().into();
        let native = self.native_blocks();
        let usage = if native { Usage::Kbpk } else { Usage::Check };
        if let Some(h) = s.cache.get(&digest, usage) {
            return Ok(h);
        }
        let template = if native { templates::at_rest_kbpk() } else { templates::readable_at_rest_kbpk() };
        let params = AesCbcDeriveParams::new([0u8; 16], KBPK_LABEL);
        let h = op.ck(s.session.derive_key(&Mechanism::AesCbcEncryptData(params), smk.handle, &template))?;
        s.cache.insert(&s.session, digest, usage, h);
        Ok(h)
    }

    /// [`HsmError::KeyBlock`] on this slot.
    pub(super) fn block_refused(&self, op: Op<'_>, reason: impl Into<String>) -> HsmError {
        HsmError::KeyBlock { operation: op.name, reason: reason.into(), at: self.at.clone() }
    }

    /// The key behind `h` (a session key of `alg`, extractable, with its KCV usage) as a block
    /// at rest for `key_use`: its KCV computed in the HSM, then wrapped.
    pub(super) fn finish_block(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        h: ObjectHandle,
        alg: KeyAlg,
        key_use: KeyUse,
    ) -> Result<WrappedKey, HsmError> {
        let kcv = self.kcv_of(&s.session, op, h, alg)?;
        let header = keyblock::at_rest_header(alg, key_use, &kcv).map_err(|r| op.tr31(r))?;
        self.make_block(s, op, smk, h, None, alg, &header, kcv)
    }

    /// The key behind `h` (extractable) wrapped as a block at rest with `header`. On the host
    /// path `value` is its value when the caller already holds it in host memory.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn make_block(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        h: ObjectHandle,
        value: Option<&[u8]>,
        alg: KeyAlg,
        header: &Tr31Header,
        kcv: Kcv,
    ) -> Result<WrappedKey, HsmError> {
        let template = header.encode().map_err(|e| op.tr31(e.to_string()))?;
        let blob = if self.native_blocks() {
            let hkbpk = self.at_rest_kbpk(s, op, smk)?;
            self.module
                .raw
                .wrap_key(&s.session, vendor::CKM_QUILL_TR31_WRAP, RawParam::Bytes(template.as_bytes()), hkbpk, h)
                .map_err(|e| op.raw(e))?
        } else {
            self.host_path(
                op,
                "a TR-31 wrap mechanism (CKM_QUILL_TR31_WRAP)",
                alg,
                format!(
                    "key block at rest made in host memory (usage {}): the {alg} key and the at-rest KBPK are read into host memory",
                    String::from_utf8_lossy(&header.key_usage.code())
                ),
            )?;
            let owned;
            let value = match value {
                Some(v) => v,
                None => {
                    owned = self.value_of(&s.session, op, smk, h, alg)?;
                    owned.as_slice()
                }
            };
            self.wrap_on_host(s, op, smk, header, value)?
        };
        Ok(WrappedKey { alg, blob, kcv, smk_kcv: smk.kcv.clone() })
    }

    /// `tr31::wrap` of `value` with `header` in host memory under the readable at-rest KBPK of
    /// `smk` (host path only: the caller has reported the use), padded as for the algorithm's
    /// longest key with random bytes from the HSM.
    pub(super) fn wrap_on_host(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        header: &Tr31Header,
        value: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let hkbpk = self.at_rest_kbpk(s, op, smk)?;
        let session = &s.session;
        let kbpk_value = self.read_value(session, op, hkbpk, "the at-rest KBPK")?;
        let mut rng = None;
        let mut fill = |buf: &mut [u8]| {
            if let Err(e) = session.generate_random_slice(buf) {
                rng = Some(e);
            }
        };
        let block = tr31::wrap(Kbpk::Aes(&kbpk_value), header, value, header.algorithm.max_key_len(), &mut fill)
            .map_err(|e| op.tr31(e.to_string()))?;
        if let Some(e) = rng {
            return Err(op.err(e));
        }
        Ok(block.into_bytes())
    }

    /// The value of session key `h` in host memory (host path only): wrapped under the SMK and
    /// unwrapped as a readable session copy that is destroyed at once.
    fn value_of(
        &self,
        s: &Session,
        op: Op<'_>,
        smk: &Smk,
        h: ObjectHandle,
        alg: KeyAlg,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let blob = op.ck(s.wrap_key(&Mechanism::AesKeyWrapPad, smk.handle, h))?;
        let mut tmp = Temporaries::new(s);
        let copy =
            tmp.add(op.ck(s.unwrap_key(&Mechanism::AesKeyWrapPad, smk.handle, &blob, &templates::readable(alg)))?);
        self.read_value(s, op, copy, "the key")
    }

    /// Open the block at rest `key` as a session key with `template` (the caller owns the
    /// handle). The header must pass [`keyblock::at_rest_check`] for `role`; the MAC and the mode
    /// of use are checked in the module (or on the host path, by the same rules).
    pub(super) fn open_block(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        key: &WrappedKey,
        role: Option<Role>,
        template: &[Attribute],
    ) -> Result<ObjectHandle, HsmError> {
        let smk = &self.smk_of(op, smk, &key.smk_kcv)?;
        let header = keyblock::at_rest_check(key, role).map_err(|r| self.block_refused(op, r))?;
        if self.native_blocks() {
            return self.unwrap_native(s, op, smk, &key.blob, template);
        }
        let (opened, value) = self.open_on_host(s, op, smk, key, &header)?;
        check_template(&opened, template).map_err(|r| self.block_refused(op, r))?;
        self.create_secret(&s.session, op, template, &value)
    }

    /// The value of the block at rest `key` in host memory (host path only, audited), after the
    /// header passed [`keyblock::at_rest_check`] for `role`.
    pub(super) fn block_value(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        key: &WrappedKey,
        role: Option<Role>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let smk = &self.smk_of(op, smk, &key.smk_kcv)?;
        let header = keyblock::at_rest_check(key, role).map_err(|r| self.block_refused(op, r))?;
        Ok(self.open_on_host(s, op, smk, key, &header)?.1)
    }

    /// `tr31::unwrap` of a block at rest in host memory under the readable at-rest KBPK.
    pub(super) fn open_on_host(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        key: &WrappedKey,
        header: &Tr31Header,
    ) -> Result<(Tr31Header, Zeroizing<Vec<u8>>), HsmError> {
        let (opened, value) = self.unwrap_on_host(s, op, smk, &key.blob, header, key.alg)?;
        self.check_len(op, key, &value)?;
        Ok((opened, value))
    }

    /// A symmetric key opened from `key`'s block must have its algorithm's length.
    pub(super) fn check_len(&self, op: Op<'_>, key: &WrappedKey, value: &[u8]) -> Result<(), HsmError> {
        if value.len() != key.alg.key_len() {
            return Err(self.block_refused(
                op,
                format!(
                    "the key block at rest holds {} bytes; a {} key has {}",
                    value.len(),
                    key.alg,
                    key.alg.key_len()
                ),
            ));
        }
        Ok(())
    }

    /// `tr31::unwrap` in host memory of the block at rest `blob` (whose header is `header`) under
    /// the readable at-rest KBPK of `smk`: a host-path use, reported first, of a key of `alg`.
    pub(super) fn unwrap_on_host(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        blob: &[u8],
        header: &Tr31Header,
        alg: impl std::fmt::Display,
    ) -> Result<(Tr31Header, Zeroizing<Vec<u8>>), HsmError> {
        self.host_path(
            op,
            "a TR-31 unwrap mechanism (CKM_QUILL_TR31_UNWRAP)",
            &alg,
            format!(
                "key block at rest opened in host memory (usage {}): the at-rest KBPK and the {alg} key are read into host memory",
                String::from_utf8_lossy(&header.key_usage.code()),
            ),
        )?;
        self.host_unwrap(s, op, smk, blob)
    }

    /// [`Self::unwrap_on_host`] for a caller that has reported the host-path use itself.
    pub(super) fn host_unwrap(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        blob: &[u8],
    ) -> Result<(Tr31Header, Zeroizing<Vec<u8>>), HsmError> {
        let hkbpk = self.at_rest_kbpk(s, op, smk)?;
        let kbpk_value = self.read_value(&s.session, op, hkbpk, "the at-rest KBPK")?;
        let (opened, value) = tr31::unwrap(Kbpk::Aes(&kbpk_value), blob).map_err(|e| {
            self.block_refused(op, format!("the key block at rest does not open under this HSM's SMK {}: {e}", smk.kcv))
        })?;
        Ok((opened, Zeroizing::new(value.to_vec())))
    }

    /// `C_UnwrapKey(CKM_QUILL_TR31_UNWRAP)` of the block at rest `blob` under the at-rest KBPK of
    /// `smk` with `template`: the MAC and the mode of use checked inside the module.
    fn unwrap_native(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        blob: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle, HsmError> {
        let hkbpk = self.at_rest_kbpk(s, op, smk)?;
        let mech = vendor_mechanism(op, vendor::CKM_QUILL_TR31_UNWRAP)?;
        s.session.unwrap_key(&mech, hkbpk, blob, template).map_err(|e| match e {
            CkError::Pkcs11(rv, f) if self.is_data_error(&s.session, &e) => self.block_refused(
                op,
                format!(
                    "the key block at rest does not open under this HSM's SMK {} (altered, forged, or asked for a use its header forbids): C_{f:?}(CKM_QUILL_TR31_UNWRAP) returned {}",
                    smk.kcv,
                    crate::error::rv_name(rv)
                ),
            ),
            other => op.err(other),
        })
    }

    /// The RSA private key behind `hpriv` (extractable) as a block at rest
    /// ([`keyblock::rsa_at_rest_header`]: bound to `public` and to `owner`); its key data is the
    /// key's DER PKCS#8.
    pub(super) fn make_rsa_block(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        hpriv: ObjectHandle,
        public: &RsaPublic,
        owner: Option<&str>,
    ) -> Result<Vec<u8>, HsmError> {
        let header = keyblock::rsa_at_rest_header(public, owner).map_err(|r| op.tr31(r))?;
        if self.native_blocks() {
            let template = header.encode().map_err(|e| op.tr31(e.to_string()))?;
            let hkbpk = self.at_rest_kbpk(s, op, smk)?;
            return self
                .module
                .raw
                .wrap_key(&s.session, vendor::CKM_QUILL_TR31_WRAP, RawParam::Bytes(template.as_bytes()), hkbpk, hpriv)
                .map_err(|e| op.raw(e));
        }
        let alg = rsa_name(public);
        self.host_path(
            op,
            "a TR-31 wrap mechanism (CKM_QUILL_TR31_WRAP)",
            &alg,
            format!(
                "key block at rest made in host memory (usage S0): the {alg} private key (PKCS#8) and the at-rest KBPK are read into host memory"
            ),
        )?;
        let der = self.private_der(&s.session, op, hpriv)?;
        self.wrap_on_host(s, op, smk, &header, &der)
    }

    /// Open the RSA block at rest of `key` as a session private key with `template` (the caller
    /// owns the handle): refused unless the header passes [`keyblock::rsa_at_rest_check`], its MAC
    /// holds (in the module, or on the host path) and the key it holds has the record's modulus.
    pub(super) fn open_rsa_block(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        key: &WrappedRsaKey,
        template: &[Attribute],
    ) -> Result<ObjectHandle, HsmError> {
        let smk = &self.smk_of(op, smk, &key.smk_kcv)?;
        let header = keyblock::rsa_at_rest_check(key).map_err(|r| self.block_refused(op, r))?;
        let h = if self.native_blocks() {
            self.unwrap_native(s, op, smk, &key.blob, template)?
        } else {
            let (opened, der) = self.unwrap_on_host(s, op, smk, &key.blob, &header, rsa_name(&key.public))?;
            check_template(&opened, template).map_err(|r| self.block_refused(op, r))?;
            self.private_from_der(&s.session, op, &der, template)?
        };
        let modulus = op.ck(s.session.get_attributes(h, &[AttributeType::Modulus])).map(|attrs| {
            attrs.into_iter().find_map(|a| match a {
                Attribute::Modulus(m) => Some(m),
                _ => None,
            })
        });
        let same = matches!(&modulus, Ok(Some(m)) if RsaPublic::new(m, &[1]).modulus == key.public.modulus);
        if !same {
            let _ = s.session.destroy_object(h);
            modulus?;
            return Err(self.block_refused(
                op,
                "the RSA key block at rest holds another key than the record's public key".to_owned(),
            ));
        }
        Ok(h)
    }

    /// The DER PKCS#8 of the extractable private key `h` in host memory (host path only): wrapped
    /// (`CKM_AES_KEY_WRAP_PAD`) under a one-time session AES key made of host random bytes, which
    /// the host then unwraps.
    fn private_der(&self, s: &Session, op: Op<'_>, h: ObjectHandle) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let kek = self.one_time_kek(s, op)?;
        let mut tmp = Temporaries::new(s);
        let hk = tmp.add(self.create_secret(s, op, &templates::one_time_kek(), &kek[..])?);
        let wrapped = op.ck(s.wrap_key(&Mechanism::AesKeyWrapPad, hk, h))?;
        quill_crypto::sym::aes_key_unwrap_pad(&kek[..], &wrapped)
            .map_err(|e| op.state(format!("the private key wrapped for the host path does not unwrap: {e}")))
    }

    /// The private key of DER PKCS#8 `der` (host memory, host path only) as a session object
    /// with `template`: wrapped on the host under a one-time session AES key and unwrapped in the
    /// module with `CKM_AES_KEY_WRAP_PAD`.
    fn private_from_der(
        &self,
        s: &Session,
        op: Op<'_>,
        der: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle, HsmError> {
        let kek = self.one_time_kek(s, op)?;
        let wrapped = quill_crypto::sym::aes_key_wrap_pad(&kek[..], der)
            .map_err(|e| op.state(format!("wrapping the private key for the module: {e}")))?;
        let mut tmp = Temporaries::new(s);
        let hk = tmp.add(self.create_secret(s, op, &templates::one_time_kek(), &kek[..])?);
        op.ck(s.unwrap_key(&Mechanism::AesKeyWrapPad, hk, &wrapped, template))
    }

    /// 32 random bytes from the HSM: a one-time AES key for moving a private key between the
    /// module and host memory on the host path.
    fn one_time_kek(&self, s: &Session, op: Op<'_>) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        let mut kek = Zeroizing::new([0u8; 32]);
        op.ck(s.generate_random_slice(&mut kek[..]))?;
        Ok(kek)
    }

    /// A handle for the block at rest `key` usable for `usage`, from the session's cache or
    /// opened now: refused unless its header names a usage `role` allows.
    pub(super) fn unwrap_working(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &Smk,
        key: &WrappedKey,
        role: Role,
        usage: Usage,
    ) -> Result<ObjectHandle, HsmError> {
        self.check_smk(op, smk, key)?;
        keyblock::at_rest_check(key, Some(role)).map_err(|r| self.block_refused(op, r))?;
        let digest = key.digest();
        if let Some(h) = s.cache.get(&digest, usage) {
            return Ok(h);
        }
        let h = self.open_block(s, op, smk, key, Some(role), &templates::working_key(key.alg, usage))?;
        s.cache.insert(&s.session, digest, usage, h);
        Ok(h)
    }

    /// [`crate::Hsm::kcv`]: the block opened in this HSM (which proves it is genuine), then the
    /// KCV its authenticated `KC` block carries, or (HMAC keys, which have none) computed.
    pub(super) fn kcv_in(&self, s: &mut SlotSession, op: Op<'_>, key: &WrappedKey) -> Result<Kcv, HsmError> {
        let smk = self.require_smk(&s.session, op)?;
        let header = keyblock::at_rest_check(key, None).map_err(|r| self.block_refused(op, r))?;
        match keyblock::at_rest_kcv(&header) {
            Some(kcv) => {
                let h = self.open_block(s, op, &smk, key, None, &templates::no_use(key.alg))?;
                let _ = s.session.destroy_object(h);
                Ok(kcv)
            }
            None => {
                let h = self.open_block(s, op, &smk, key, None, &templates::working_key(key.alg, Usage::Check))?;
                let kcv = self.kcv_of(&s.session, op, h, key.alg);
                let _ = s.session.destroy_object(h);
                kcv
            }
        }
    }

    /// Refuse a TR-31 export of `key` with `usage` unless its block at rest allows it: the same
    /// usage (a key never changes use on the way out) and exportability `E` or `S`.
    pub(super) fn check_exportable(&self, op: Op<'_>, key: &WrappedKey, usage: &str) -> Result<(), HsmError> {
        let header = keyblock::at_rest_check(key, None).map_err(|r| self.block_refused(op, r))?;
        let at_rest = String::from_utf8_lossy(&header.key_usage.code()).into_owned();
        if at_rest != usage {
            return Err(
                op.tr31(format!("the key's block at rest says usage {at_rest}; it cannot be exported as {usage}"))
            );
        }
        if header.exportability == Exportability::NonExportable {
            return Err(op.tr31(format!(
                "the key's block at rest says it is not exportable (N, usage {at_rest}); it never leaves the HSMs"
            )));
        }
        Ok(())
    }
}

/// hsm-sim's rule on the host path (the same table, [`tr31::ModeOfUse::allows`]): a key opened
/// from a block gets no usage attribute its mode of use forbids, and is not extractable when the
/// block says `N`.
fn check_template(header: &Tr31Header, template: &[Attribute]) -> Result<(), String> {
    for a in template {
        let want = match a {
            Attribute::Encrypt(true) => KeyFunction::Encrypt,
            Attribute::Decrypt(true) => KeyFunction::Decrypt,
            Attribute::Wrap(true) => KeyFunction::Wrap,
            Attribute::Unwrap(true) => KeyFunction::Unwrap,
            Attribute::Sign(true) => KeyFunction::Sign,
            Attribute::Verify(true) => KeyFunction::Verify,
            Attribute::Derive(true) => KeyFunction::Derive,
            Attribute::Extractable(true) if header.exportability == Exportability::NonExportable => {
                return Err("the key block at rest says the key is not exportable (N)".to_owned());
            }
            _ => continue,
        };
        if !header.mode_of_use.allows(want) {
            return Err(format!(
                "the key block at rest has mode of use {}, which does not allow {want:?}",
                header.mode_of_use.code()
            ));
        }
    }
    Ok(())
}

/// `RSA-1024`: an RSA key's name in host-path reports and messages.
pub(super) fn rsa_name(public: &RsaPublic) -> String {
    format!("RSA-{}", public.bits())
}

//! Rotating the storage master key on one token (`quill key rotate-smk`).
//!
//! A rotation ceremony's components form the *next* SMK beside the current one: a second
//! persistent token key, labelled `<prefix>-smk-next`, with the SMK's attributes. Every key block
//! at rest is then re-protected under the at-rest KBPK of the next SMK
//! ([`crate::Hsm::translate_to_next`]): inside the module with hsm-sim's
//! `CKM_QUILL_TR31_TRANSLATE` (the clear key never becomes an object, blocks marked `N`
//! included), on the audited host path where the module makes no blocks inside (SoftHSM); issuer
//! RSA private keys are blocks of the same kind and move the same way. Once the cluster has switched
//! every record to the next SMK, the token promotes it ([`crate::Hsm::promote_next_smk`]): the old
//! SMK is destroyed and the next one takes the SMK's label, so nothing sealed under the old one
//! (old log entries, snapshots, backups) opens here again.
//!
//! From the moment the next SMK exists, blocks under it open ([`Pkcs11Hsm::smk_of`]): a node
//! serves keys the cluster has switched before it has promoted its own token. New keys are made
//! under the current SMK until the promotion.

use super::atrest::rsa_name;
use super::session::SlotSession;
use super::{Pkcs11Hsm, Smk, Temporaries, lock, templates};
use crate::error::{HsmError, Op};
use crate::keyblock;
use crate::mechanisms::vendor;
use crate::raw::RawParam;
use crate::types::{Kcv, KeyAlg, RsaPublic, SealedComponent, WrappedKey, WrappedRsaKey};
use cryptoki::error::Error as CkError;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::CK_ULONG;
use quill_crypto::tr31::Tr31Header;

impl Pkcs11Hsm {
    /// The next SMK of a rotation, if the token holds one (found once, then cached).
    pub(super) fn next_smk(&self, s: &Session, op: Op<'_>) -> Result<Option<Smk>, HsmError> {
        if let Some(k) = lock(&self.token).next.clone() {
            return Ok(k);
        }
        let next = match self.find_one(s, op, &templates::find_smk(&self.next_label), "next SMK")? {
            Some(handle) => Some(Smk { handle, kcv: self.kcv_of(s, op, handle, KeyAlg::Aes256)? }),
            None => None,
        };
        lock(&self.token).next = Some(next.clone());
        Ok(next)
    }

    fn require_next(&self, s: &Session, op: Op<'_>) -> Result<Smk, HsmError> {
        self.next_smk(s, op)?
            .ok_or_else(|| op.state("this token holds no next SMK: a rotation ceremony forms it first"))
    }

    /// The current and the next SMK, to move a key under `key_smk` from one to the other; `None`
    /// when it is under the next one already, [`HsmError::WrongSmk`] when under neither.
    fn move_pair(&self, s: &Session, op: Op<'_>, key_smk: &Kcv) -> Result<Option<(Smk, Smk)>, HsmError> {
        let smk = self.require_smk(s, op)?;
        let next = self.require_next(s, op)?;
        if *key_smk == next.kcv {
            return Ok(None);
        }
        self.check_smk_kcv(op, &smk, key_smk)?;
        Ok(Some((smk, next)))
    }

    /// [`crate::Hsm::form_next_smk`] on this token.
    pub(super) fn form_next_smk_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        components: &[SealedComponent],
        expected: &[Kcv],
    ) -> Result<Kcv, HsmError> {
        let _ceremony = lock(&self.ceremony);
        let smk = self.require_smk(&s.session, op)?;
        // Formed as a session key first, to compare before the token changes.
        let h = self.combine(
            &s.session,
            op,
            KeyAlg::Aes256,
            components,
            expected,
            &templates::smk(&self.next_label, false),
        )?;
        let kcv = self.kcv_of(&s.session, op, h, KeyAlg::Aes256);
        let _ = s.session.destroy_object(h);
        let kcv = kcv?;
        if kcv == smk.kcv {
            return Err(op.misuse(format!("the components form the current SMK (KCV {kcv}), not a new one")));
        }
        if !self.replace_next(s, op, &kcv)? {
            return Ok(kcv);
        }
        let h = self.combine(
            &s.session,
            op,
            KeyAlg::Aes256,
            components,
            expected,
            &templates::smk(&self.next_label, true),
        )?;
        self.keep_next(&s.session, op, h, &kcv)
    }

    /// Before storing next SMK `kcv`: `false` when the token already holds it; otherwise a next
    /// SMK of an abandoned rotation is destroyed (nothing is under it until the cluster switches,
    /// and the cluster switches only to the next SMK every node formed) and `true`.
    fn replace_next(&self, s: &mut SlotSession, op: Op<'_>, kcv: &Kcv) -> Result<bool, HsmError> {
        match self.next_smk(&s.session, op)? {
            Some(n) if n.kcv == *kcv => Ok(false),
            Some(n) => {
                op.ck(s.session.destroy_object(n.handle))?;
                lock(&self.token).next = Some(None);
                tracing::warn!(slot = %self.at, replaced = %n.kcv, "next SMK of an earlier rotation destroyed");
                Ok(true)
            }
            None => Ok(true),
        }
    }

    /// Keep token key `h` as the next SMK after checking its KCV is `kcv`.
    fn keep_next(&self, s: &Session, op: Op<'_>, h: ObjectHandle, kcv: &Kcv) -> Result<Kcv, HsmError> {
        let mut tmp = Temporaries::new(s);
        tmp.add(h);
        let actual = self.kcv_of(s, op, h, KeyAlg::Aes256)?;
        if actual != *kcv {
            return Err(HsmError::KcvMismatch {
                operation: op.name,
                expected: kcv.clone(),
                actual,
                at: self.at.clone(),
            });
        }
        tmp.keep(h);
        lock(&self.token).next = Some(Some(Smk { handle: h, kcv: actual.clone() }));
        tracing::info!(slot = %self.at, next_smk_kcv = %actual, "next storage master key stored");
        Ok(actual)
    }

    /// The next SMK wrapped with RSA-OAEP to `peer` (another member of this node's pool).
    pub(super) fn wrap_next_for(&self, s: &mut SlotSession, op: Op<'_>, peer: &RsaPublic) -> Result<Vec<u8>, HsmError> {
        let next = self.require_next(&s.session, op)?;
        self.wrap_for(&s.session, op, peer, next.handle)
    }

    /// Receive the next SMK from [`Pkcs11Hsm::wrap_next_for`] of another member.
    pub(super) fn install_next_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        sealed: &[u8],
        expected: &Kcv,
    ) -> Result<(), HsmError> {
        let _ceremony = lock(&self.ceremony);
        let smk = self.require_smk(&s.session, op)?;
        if *expected == smk.kcv {
            return Err(op.misuse(format!("SMK {expected} is this token's SMK, not a next one")));
        }
        if !self.replace_next(s, op, expected)? {
            return Ok(());
        }
        let transport = self.transport(&s.session, op)?;
        let template = templates::smk(&self.next_label, true);
        let h =
            s.session.unwrap_key(&templates::oaep(), transport.private, sealed, &template).map_err(|e| match e {
                CkError::Pkcs11(rv, f) if self.is_data_error(&s.session, &e) => {
                    self.cannot_open(op, "the sealed next SMK".to_owned(), rv, f)
                }
                other => op.err(other),
            })?;
        self.keep_next(&s.session, op, h, expected).map(drop)
    }

    /// [`crate::Hsm::translate_to_next`] on this token.
    pub(super) fn translate_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        key: &WrappedKey,
    ) -> Result<WrappedKey, HsmError> {
        let Some((smk, next)) = self.move_pair(&s.session, op, &key.smk_kcv)? else { return Ok(key.clone()) };
        let header = keyblock::at_rest_check(key, None).map_err(|r| self.block_refused(op, r))?;
        let blob = self.translate_block(s, op, (&smk, &next), &key.blob, &header, key.alg, |value| {
            self.check_len(op, key, value)
        })?;
        Ok(WrappedKey { alg: key.alg, blob, kcv: key.kcv.clone(), smk_kcv: next.kcv })
    }

    /// [`crate::Hsm::rewrap_rsa_to_next`] on this token: the RSA block re-protected under the next
    /// SMK's at-rest KBPK, as [`Self::translate_in`] does for symmetric keys.
    pub(super) fn rewrap_rsa_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        key: &WrappedRsaKey,
    ) -> Result<WrappedRsaKey, HsmError> {
        let Some((smk, next)) = self.move_pair(&s.session, op, &key.smk_kcv)? else { return Ok(key.clone()) };
        let header = keyblock::rsa_at_rest_check(key).map_err(|r| self.block_refused(op, r))?;
        let blob = self.translate_block(s, op, (&smk, &next), &key.blob, &header, rsa_name(&key.public), |_| Ok(()))?;
        Ok(WrappedRsaKey { public: key.public.clone(), blob, smk_kcv: next.kcv })
    }

    /// The block at rest `blob` (header `header`, a key of `alg`) under the at-rest KBPK of the
    /// next SMK instead of the current one: `CKM_QUILL_TR31_TRANSLATE` inside the module, or on
    /// the host path (`check` judges the opened key data first).
    #[allow(clippy::too_many_arguments)]
    fn translate_block(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        (smk, next): (&Smk, &Smk),
        blob: &[u8],
        header: &Tr31Header,
        alg: impl std::fmt::Display,
        check: impl FnOnce(&[u8]) -> Result<(), HsmError>,
    ) -> Result<Vec<u8>, HsmError> {
        if self.native_blocks() {
            if !self.caps.native_tr31_translate() {
                return Err(op.unsupported(
                    "re-protecting key blocks at rest under the next SMK: this slot makes key blocks inside the module \
                     but does not offer CKM_QUILL_TR31_TRANSLATE (hsm-sim: `kbpk_translate = true` under the slot, for \
                     the rotation's window)",
                ));
            }
            let from = self.at_rest_kbpk(s, op, smk)?;
            let to = self.at_rest_kbpk(s, op, next)?;
            let source: CK_ULONG = from.handle();
            return self
                .module
                .raw
                .single_part(
                    &s.session,
                    false,
                    vendor::CKM_QUILL_TR31_TRANSLATE,
                    RawParam::Bytes(&source.to_ne_bytes()),
                    to,
                    blob,
                )
                .map_err(|e| op.raw(e));
        }
        self.host_path(
            op,
            "a TR-31 translate mechanism (CKM_QUILL_TR31_TRANSLATE)",
            &alg,
            format!(
                "key block at rest re-protected under the next SMK in host memory (usage {}): both at-rest KBPKs and the {alg} key are read into host memory",
                String::from_utf8_lossy(&header.key_usage.code()),
            ),
        )?;
        let (opened, value) = self.host_unwrap(s, op, smk, blob)?;
        check(&value)?;
        self.wrap_on_host(s, op, next, &opened, &value)
    }

    /// [`crate::Hsm::promote_next_smk`] on this token.
    pub(super) fn promote_in(&self, s: &mut SlotSession, op: Op<'_>, expected: &Kcv) -> Result<(), HsmError> {
        let _ceremony = lock(&self.ceremony);
        let current = self.smk(&s.session, op)?;
        let next = self.next_smk(&s.session, op)?;
        match (current, next) {
            (Some(c), None) if c.kcv == *expected => Ok(()),
            (current, Some(n)) if n.kcv == *expected => {
                // Destroyed first: a crash before the relabelling leaves only the next SMK, which
                // the next call promotes.
                if let Some(c) = current {
                    op.ck(s.session.destroy_object(c.handle))?;
                    lock(&self.token).smk = None;
                    tracing::info!(slot = %self.at, retired = %c.kcv, "old storage master key destroyed");
                }
                op.ck(s.session.update_attributes(n.handle, &[Attribute::Label(self.smk_label.as_bytes().to_vec())]))?;
                let mut t = lock(&self.token);
                t.smk = Some(n);
                t.next = Some(None);
                tracing::info!(slot = %self.at, smk_kcv = %expected, "next storage master key promoted");
                Ok(())
            }
            (current, next) => Err(op.state(format!(
                "cannot make SMK {expected} this token's SMK: it holds SMK {} and next SMK {}",
                current.map_or("none".to_owned(), |c| c.kcv.to_string()),
                next.map_or("none".to_owned(), |n| n.kcv.to_string()),
            ))),
        }
    }
}

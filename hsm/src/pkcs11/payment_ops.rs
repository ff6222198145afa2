//! Payment operations on one slot: inside the HSM with hsm-sim's vendor mechanisms where the slot
//! lists them; otherwise standard mechanisms where they keep the keys inside, and the host path
//! (refused unless allowed, each use reported) for the rest.
//!
//! The inputs are checked first ([`crate::payment`]), so bad input gets the same
//! [`HsmError::Misuse`] from every module, before any key is unwrapped or the host path reported.

use super::session::SlotSession;
use super::templates::{self, Usage};
use super::tr31_ops::vendor_mechanism;
use super::{Pkcs11Hsm, Temporaries, set_odd_parity};
use crate::Zeroizing;
use crate::error::{HsmError, Op};
use crate::keyblock::Role;
use crate::mechanisms::{mechanism_name, vendor};
use crate::payment::{
    self, CrtPadding, DerivedKey, GeneratedPin, IccKeyPair, PinRequest, PinVerification, check_digits, check_format,
    check_pan, check_psn,
};
use crate::raw::{RawError, RawParam};
use crate::types::{KeyAlg, WrappedKey};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki_sys::{CK_ULONG, CKM_DES3_ECB_ENCRYPT_DATA};
use quill_crypto::payment::{self as pay, Ibm3624Params, PinBlockFormat};

/// hsm-sim's `digits(n)`: one length byte, then the ASCII digits (the PAN is checked: ≤ 19).
fn digits(v: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(v.len() + 1);
    p.push(u8::try_from(v.len()).unwrap_or(u8::MAX));
    p.extend_from_slice(v.as_bytes());
    p
}

fn ulong(h: ObjectHandle) -> [u8; size_of::<CK_ULONG>()] {
    h.handle().to_ne_bytes()
}

fn pin_format(format: u8) -> PinBlockFormat {
    match format {
        0 => PinBlockFormat::Iso0,
        1 => PinBlockFormat::Iso1,
        2 => PinBlockFormat::Iso2,
        3 => PinBlockFormat::Iso3,
        _ => PinBlockFormat::Iso4,
    }
}

fn block_len(format: u8) -> usize {
    if format == 4 { 16 } else { 8 }
}

/// The key a PIN block of `format` is encrypted under: AES for format 4, TDES otherwise.
fn check_pin_key(key: &WrappedKey, format: u8, what: &str) -> Result<(), String> {
    let ok = if format == 4 { key.alg.is_aes() } else { key.alg.is_tdes() };
    if ok {
        return Ok(());
    }
    let want = if format == 4 { "an AES key" } else { "a TDES key (DES2 or DES3)" };
    Err(format!("the {what} must be {want} for PIN block format {format}, got a {} key", key.alg))
}

fn check_tdes(key: &WrappedKey, what: &str) -> Result<(), String> {
    if key.alg.is_tdes() {
        Ok(())
    } else {
        Err(format!("the {what} must be a TDES key (DES2 or DES3), got a {} key", key.alg))
    }
}

/// IBM 3624 parameters checked against the PAN.
fn ibm_params(decimalisation: &str, start: u8, length: u8, pad: u8, pan: &str) -> Result<Ibm3624Params, String> {
    let table: [u8; 16] = decimalisation
        .as_bytes()
        .try_into()
        .ok()
        .filter(|t: &[u8; 16]| t.iter().all(u8::is_ascii_digit))
        .ok_or_else(|| "the IBM 3624 decimalisation table must be 16 decimal digits".to_owned())?;
    if !(1..=16).contains(&length) || pad > 15 {
        return Err(format!("IBM 3624: the validation length must be 1 to 16 ({length}) and the pad 0 to 15 ({pad})"));
    }
    if usize::from(start) + usize::from(length) > pan.len() {
        return Err(format!(
            "IBM 3624: validation data at {start}..{} runs past the {}-digit PAN",
            usize::from(start) + usize::from(length),
            pan.len()
        ));
    }
    Ok(Ibm3624Params { decimalisation: table, start: usize::from(start), length: usize::from(length), pad })
}

/// Every check of a PIN request that needs no key; the IBM 3624 parameters when asked.
fn check_pin_request(req: &PinRequest) -> Result<Option<Ibm3624Params>, String> {
    check_pan(&req.pan)?;
    check_format(req.format)?;
    check_pin_key(&req.pin_key, req.format, "PIN key")?;
    if !(4..=12).contains(&req.pin_length) {
        return Err(format!("the PIN length must be 4 to 12 digits, got {}", req.pin_length));
    }
    match &req.verification {
        PinVerification::None => Ok(None),
        PinVerification::VisaPvv { pvk, pvki } => {
            check_tdes(pvk, "PVK")?;
            if *pvki > 9 {
                return Err(format!("the PVKI must be a digit 0 to 9, got {pvki}"));
            }
            Ok(None)
        }
        PinVerification::Ibm3624 { pvk, decimalisation, start, length, pad } => {
            check_tdes(pvk, "PVK")?;
            ibm_params(decimalisation, *start, *length, *pad, &req.pan).map(Some)
        }
    }
}

impl Pkcs11Hsm {
    fn native(&self, mechs: &[cryptoki_sys::CK_MECHANISM_TYPE]) -> bool {
        mechs.iter().all(|m| self.caps.has(*m))
    }

    /// A module's refusal of a PIN block (hsm-sim: `CKR_DATA_INVALID`) as the same error the host
    /// path gives.
    fn pin_refused(&self, op: Op<'_>, e: RawError) -> HsmError {
        match e {
            RawError::Rv(_, RvError::DataInvalid | RvError::EncryptedDataInvalid) => op.misuse(
                "the PIN block does not decrypt to a valid PIN block of the given format under the given key and PAN",
            ),
            other => op.raw(other),
        }
    }

    // ---- EMV ICC master key -------------------------------------------------------------------

    pub(super) fn derive_icc_mk_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        imk: &WrappedKey,
        pan: &str,
        psn: &str,
        transport: &WrappedKey,
    ) -> Result<DerivedKey, HsmError> {
        check_pan(pan).and_then(|()| check_psn(psn)).map_err(|r| op.misuse(r))?;
        check_tdes(imk, "IMK").and_then(|()| check_tdes(transport, "transport key")).map_err(|r| op.misuse(r))?;
        let smk = self.require_smk(&s.session, op)?;
        self.check_smk(op, &smk, imk)?;
        self.check_smk(op, &smk, transport)?;
        let native = self.native(&[vendor::CKM_QUILL_EMV_MK_OPTION_A, vendor::CKM_QUILL_EMV_MK_OPTION_B]);
        if native {
            let himk = self.unwrap_working(s, op, &smk, imk, Role::Imk, Usage::Derive)?;
            let htr = self.unwrap_working(s, op, &smk, transport, Role::Transport, Usage::Wrap)?;
            let mech =
                if pan.len() <= 16 { vendor::CKM_QUILL_EMV_MK_OPTION_A } else { vendor::CKM_QUILL_EMV_MK_OPTION_B };
            let mut param = digits(pan);
            param.extend_from_slice(psn.as_bytes());
            let session = &s.session;
            let mut tmp = Temporaries::new(session);
            let h = self
                .module
                .raw
                .derive_key(session, mech, RawParam::Bytes(&param), himk, &templates::transient(KeyAlg::Des2))
                .map_err(|e| op.raw(e))?;
            tmp.add(h);
            let kcv = self.kcv_of(session, op, h, KeyAlg::Des2)?;
            let encrypted = op.ck(session.wrap_key(&Mechanism::Des3Ecb, htr, h))?;
            return Ok(DerivedKey { encrypted, kcv });
        }
        if !self.caps.has(CKM_DES3_ECB_ENCRYPT_DATA) {
            return Err(op.unsupported("EMV ICC master-key derivation (CKM_DES3_ECB_ENCRYPT_DATA)"));
        }
        self.host_path(
            op,
            "a way to encrypt a derived key under a TDES transport key inside the HSM (C_WrapKey with CKM_DES3_ECB, or CKM_QUILL_EMV_MK_OPTION_A/B)",
            KeyAlg::Des2,
            format!(
                "EMV ICC master key (Option {}) derived inside the HSM with CKM_DES3_ECB_ENCRYPT_DATA, then read into host memory to be encrypted under the transport key with C_Encrypt: the module cannot wrap with a TDES key and lacks {}",
                if pan.len() <= 16 { "A" } else { "B" },
                mechanism_name(vendor::CKM_QUILL_EMV_MK_OPTION_A)
            ),
        )?;
        let himk = self.unwrap_working(s, op, &smk, imk, Role::Imk, Usage::Derive)?;
        let htr = self.unwrap_working(s, op, &smk, transport, Role::Transport, Usage::Encrypt)?;
        let y = payment::emv_y(pan, psn);
        let mut data = y.to_vec();
        data.extend(y.iter().map(|b| b ^ 0xFF));
        let session = &s.session;
        let mut tmp = Temporaries::new(session);
        let h = self
            .module
            .raw
            .des3_ecb_encrypt_data(session, himk, &data, &templates::readable_derived(KeyAlg::Des2))
            .map_err(|e| op.raw(e))?;
        tmp.add(h);
        let kcv = self.kcv_of(session, op, h, KeyAlg::Des2)?;
        let mut value = self.read_value(session, op, h, "the derived ICC master key")?;
        drop(tmp);
        if value.len() != 16 {
            return Err(op.state(format!("the derived ICC master key has {} bytes", value.len())));
        }
        set_odd_parity(&mut value);
        let encrypted = op.ck(session.encrypt(&Mechanism::Des3Ecb, htr, &value))?;
        Ok(DerivedKey { encrypted, kcv })
    }

    // ---- CVV ----------------------------------------------------------------------------------

    pub(super) fn cvv_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        cvk: &WrappedKey,
        pan: &str,
        expiry_yymm: &str,
        service_code: &str,
    ) -> Result<String, HsmError> {
        check_pan(pan)
            .and_then(|()| check_digits(expiry_yymm, 4, "expiry date (YYMM)"))
            .and_then(|()| check_digits(service_code, 3, "service code"))
            .map_err(|r| op.misuse(r))?;
        if cvk.alg != KeyAlg::Des2 {
            return Err(op.misuse(format!("the CVK must be a DES2 key (CVK-A ‖ CVK-B), got a {} key", cvk.alg)));
        }
        let smk = self.require_smk(&s.session, op)?;
        self.check_smk(op, &smk, cvk)?;
        let data = format!("{pan}{expiry_yymm}{service_code}");
        let out = if self.caps.has(vendor::CKM_QUILL_CVV) {
            let h = self.unwrap_working(s, op, &smk, cvk, Role::Cvk, Usage::Sign)?;
            op.ck(s.session.sign(&vendor_mechanism(op, vendor::CKM_QUILL_CVV)?, h, data.as_bytes()))?
        } else {
            self.host_path(
                op,
                "a CVV mechanism (CKM_QUILL_CVV)",
                cvk.alg,
                format!(
                    "CVV computed in host memory: the CVK is read into host memory (single-DES steps under CVK-A alone cannot be composed from standard mechanisms); the module lacks {}",
                    mechanism_name(vendor::CKM_QUILL_CVV)
                ),
            )?;
            let value = self.read_key(s, op, &smk, cvk, Role::Cvk, "the CVK")?;
            return pay::cvv(&value, pan, expiry_yymm, service_code).map_err(|e| op.misuse(format!("CVV: {e}")));
        };
        String::from_utf8(out)
            .ok()
            .filter(|v| v.len() == 3 && v.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| op.state("CKM_QUILL_CVV returned something other than 3 digits"))
    }

    // ---- PINs ---------------------------------------------------------------------------------

    pub(super) fn generate_pin_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        req: &PinRequest,
    ) -> Result<GeneratedPin, HsmError> {
        let ibm = check_pin_request(req).map_err(|r| op.misuse(r))?;
        let smk = self.require_smk(&s.session, op)?;
        self.check_smk(op, &smk, &req.pin_key)?;
        let pvk = match &req.verification {
            PinVerification::None => None,
            PinVerification::VisaPvv { pvk, .. } | PinVerification::Ibm3624 { pvk, .. } => Some(pvk),
        };
        if let Some(pvk) = pvk {
            self.check_smk(op, &smk, pvk)?;
        }
        if self.caps.has(vendor::CKM_QUILL_PIN_GENERATE) {
            let hpin = self.unwrap_working(s, op, &smk, &req.pin_key, Role::PinKey, Usage::Encrypt)?;
            let hpvk = match pvk {
                Some(k) => Some(self.unwrap_working(s, op, &smk, k, Role::Pvk, Usage::Sign)?),
                None => None,
            };
            let (method, pvki) = match &req.verification {
                PinVerification::None => (0u8, 0u8),
                PinVerification::VisaPvv { pvki, .. } => (1, *pvki),
                PinVerification::Ibm3624 { .. } => (2, 0),
            };
            let mut p = Vec::with_capacity(64);
            p.extend_from_slice(&hpvk.map_or(0, |h| h.handle()).to_ne_bytes());
            p.extend_from_slice(&[method, req.format, req.pin_length, u8::from(req.exclude_weak), pvki]);
            match &ibm {
                Some(i) => {
                    p.extend_from_slice(&i.decimalisation);
                    // start + length ≤ 19 (checked against the PAN).
                    p.extend_from_slice(&[i.start as u8, i.length as u8, i.pad]);
                }
                None => {
                    p.extend_from_slice(b"0123456789012345");
                    p.extend_from_slice(&[0, 12, 0x0F]);
                }
            }
            p.extend(digits(&req.pan));
            let out = self
                .module
                .raw
                .single_part(&s.session, false, vendor::CKM_QUILL_PIN_GENERATE, RawParam::Bytes(&p), hpin, &[])
                .map_err(|e| op.raw(e))?;
            let n = block_len(req.format);
            let want = n + match method {
                0 => 0,
                1 => 4,
                _ => usize::from(req.pin_length),
            };
            if out.len() != want {
                return Err(op.state(format!("CKM_QUILL_PIN_GENERATE returned {} bytes, expected {want}", out.len())));
            }
            let (block, vv) = out.split_at(n);
            let pvv_or_offset =
                String::from_utf8(vv.to_vec())
                    .ok()
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| op.state("CKM_QUILL_PIN_GENERATE returned a PVV/offset that is not digits"))?;
            return Ok(GeneratedPin { encrypted_block: block.to_vec(), pvv_or_offset });
        }
        self.host_path(
            op,
            "a PIN generation mechanism (CKM_QUILL_PIN_GENERATE)",
            req.pin_key.alg,
            format!(
                "random PIN drawn in host memory, its format {} block encrypted there{}: the PIN key{} read into host memory; the module lacks {}",
                req.format,
                match &req.verification {
                    PinVerification::None => "",
                    PinVerification::VisaPvv { .. } => " and its PVV computed",
                    PinVerification::Ibm3624 { .. } => " and its IBM 3624 offset computed",
                },
                if pvk.is_some() { " and the PVK are" } else { " is" },
                mechanism_name(vendor::CKM_QUILL_PIN_GENERATE)
            ),
        )?;
        let key = self.read_key(s, op, &smk, &req.pin_key, Role::PinKey, "the PIN key")?;
        let pin = pay::random_pin(usize::from(req.pin_length), req.exclude_weak)
            .map_err(|e| op.misuse(format!("PIN generation: {e}")))?;
        let encrypted_block = pay::encrypt_pin_block(pin_format(req.format), &key, &pin, &req.pan)
            .map_err(|e| op.misuse(format!("PIN block: {e}")))?;
        drop(key);
        let pvv_or_offset = match (&req.verification, &ibm) {
            (PinVerification::VisaPvv { pvk, pvki }, _) => {
                let v = self.read_key(s, op, &smk, pvk, Role::Pvk, "the PVK")?;
                pay::visa_pvv(&v, &req.pan, *pvki, &pin[..4]).map_err(|e| op.misuse(format!("PVV: {e}")))?
            }
            (PinVerification::Ibm3624 { pvk, .. }, Some(params)) => {
                let v = self.read_key(s, op, &smk, pvk, Role::Pvk, "the PVK")?;
                pay::ibm3624_offset(&v, &req.pan, params, &pin)
                    .map_err(|e| op.misuse(format!("IBM 3624 offset: {e}")))?
            }
            _ => String::new(),
        };
        Ok(GeneratedPin { encrypted_block, pvv_or_offset })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn translate_pin_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        from_key: &WrappedKey,
        from_format: u8,
        to_key: &WrappedKey,
        to_format: u8,
        pan: &str,
        block: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        check_pan(pan)
            .and_then(|()| check_format(from_format))
            .and_then(|()| check_format(to_format))
            .and_then(|()| check_pin_key(from_key, from_format, "source PIN key"))
            .and_then(|()| check_pin_key(to_key, to_format, "destination PIN key"))
            .map_err(|r| op.misuse(r))?;
        if block.len() != block_len(from_format) {
            return Err(op.misuse(format!(
                "a format {from_format} PIN block has {} bytes, got {}",
                block_len(from_format),
                block.len()
            )));
        }
        let smk = self.require_smk(&s.session, op)?;
        self.check_smk(op, &smk, from_key)?;
        self.check_smk(op, &smk, to_key)?;
        if self.caps.has(vendor::CKM_QUILL_PIN_TRANSLATE) {
            let hfrom = self.unwrap_working(s, op, &smk, from_key, Role::PinKey, Usage::Decrypt)?;
            let hto = self.unwrap_working(s, op, &smk, to_key, Role::PinTarget, Usage::Encrypt)?;
            let mut p = ulong(hfrom).to_vec();
            p.extend_from_slice(&[from_format, to_format]);
            p.extend(digits(pan));
            return self
                .module
                .raw
                .single_part(&s.session, false, vendor::CKM_QUILL_PIN_TRANSLATE, RawParam::Bytes(&p), hto, block)
                .map_err(|e| self.pin_refused(op, e));
        }
        self.host_path(
            op,
            "a PIN translation mechanism (CKM_QUILL_PIN_TRANSLATE)",
            to_key.alg,
            format!(
                "PIN block translated in host memory (format {from_format} to {to_format}): both PIN keys are read into host memory and the PIN is in clear there; the module lacks {}",
                mechanism_name(vendor::CKM_QUILL_PIN_TRANSLATE)
            ),
        )?;
        let from = self.read_key(s, op, &smk, from_key, Role::PinKey, "the source PIN key")?;
        let pin = pay::decrypt_pin_block(pin_format(from_format), &from, block, pan).map_err(|_| {
            op.misuse(
                "the PIN block does not decrypt to a valid PIN block of the given format under the given key and PAN",
            )
        })?;
        drop(from);
        let to = self.read_key(s, op, &smk, to_key, Role::PinTarget, "the destination PIN key")?;
        pay::encrypt_pin_block(pin_format(to_format), &to, &pin, pan).map_err(|e| op.misuse(format!("PIN block: {e}")))
    }

    // ---- ICC RSA key pairs --------------------------------------------------------------------

    pub(super) fn icc_rsa_in(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        bits: u32,
        exponent: u32,
        transport: &WrappedKey,
        padding: CrtPadding,
    ) -> Result<IccKeyPair, HsmError> {
        if !(512..=4096).contains(&bits) || !bits.is_multiple_of(8) {
            return Err(op.misuse(format!("ICC RSA keys have 512 to 4096 bits in steps of 8, not {bits}")));
        }
        if exponent < 3 || exponent.is_multiple_of(2) {
            return Err(op.misuse(format!("the public exponent must be odd and at least 3, not {exponent}")));
        }
        check_tdes(transport, "transport key").map_err(|r| op.misuse(r))?;
        let half = (bits as usize / 8).div_ceil(2);
        if padding == CrtPadding::None && !half.is_multiple_of(8) {
            return Err(op.misuse(format!(
                "CRT components of a {bits}-bit key are {half} bytes, not a multiple of 8: choose a padding"
            )));
        }
        let smk = self.require_smk(&s.session, op)?;
        self.check_smk(op, &smk, transport)?;
        let e: Vec<u8> = exponent.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        let native = self.caps.has(vendor::CKM_QUILL_RSA_CRT_COMPONENT_WRAP);
        if !native {
            self.host_path(
                op,
                "an RSA CRT component export mechanism (CKM_QUILL_RSA_CRT_COMPONENT_WRAP)",
                transport.alg,
                format!(
                    "ICC RSA key ({bits} bits) generated inside the HSM as a readable key; its CRT components are read into host memory and encrypted under the transport key with C_Encrypt: the module lacks {}",
                    mechanism_name(vendor::CKM_QUILL_RSA_CRT_COMPONENT_WRAP)
                ),
            )?;
        }
        let htr = self.unwrap_working(
            s,
            op,
            &smk,
            transport,
            Role::Transport,
            if native { Usage::Wrap } else { Usage::Encrypt },
        )?;
        let session = &s.session;
        let mut tmp = Temporaries::new(session);
        let (pub_t, priv_t) = templates::icc_pair(bits, &e, !native);
        let (hpub, hpriv) = op.ck(session.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &pub_t, &priv_t))?;
        tmp.add(hpub);
        tmp.add(hpriv);
        let public = self.read_public(session, op, hpub)?;
        let mut crt: [Vec<u8>; 5] = Default::default();
        if native {
            for (i, c) in crt.iter_mut().enumerate() {
                // i < 5: the component number 1..=5.
                let param = [i as u8 + 1, padding.code(), 0];
                *c = self
                    .module
                    .raw
                    .wrap_key(session, vendor::CKM_QUILL_RSA_CRT_COMPONENT_WRAP, RawParam::Bytes(&param), htr, hpriv)
                    .map_err(|e| op.raw(e))?;
            }
        } else {
            let types = [
                AttributeType::Prime1,
                AttributeType::Prime2,
                AttributeType::Exponent1,
                AttributeType::Exponent2,
                AttributeType::Coefficient,
            ];
            let attrs = op.ck(session.get_attributes(hpriv, &types))?;
            let half = public.modulus.iter().skip_while(|b| **b == 0).count().div_ceil(2);
            for (c, t) in crt.iter_mut().zip(types) {
                let raw = attrs
                    .iter()
                    .find_map(|a| match (a, t) {
                        (Attribute::Prime1(v), AttributeType::Prime1)
                        | (Attribute::Prime2(v), AttributeType::Prime2)
                        | (Attribute::Exponent1(v), AttributeType::Exponent1)
                        | (Attribute::Exponent2(v), AttributeType::Exponent2)
                        | (Attribute::Coefficient(v), AttributeType::Coefficient) => Some(Zeroizing::new(v.clone())),
                        _ => None,
                    })
                    .ok_or_else(|| op.state(format!("the ICC private key's {t:?} is not readable")))?;
                let stripped: Vec<u8> = raw.iter().copied().skip_while(|b| *b == 0).collect();
                let stripped = Zeroizing::new(stripped);
                if stripped.len() > half {
                    return Err(op.state("a CRT component is longer than half the modulus"));
                }
                let mut v = Zeroizing::new(vec![0u8; half - stripped.len()]);
                v.extend_from_slice(&stripped);
                let data = Zeroizing::new(
                    padding
                        .apply(&v, 8)
                        .ok_or_else(|| op.misuse("CRT components are not a multiple of 8 bytes: choose a padding"))?,
                );
                *c = op.ck(session.encrypt(&Mechanism::Des3Ecb, htr, &data))?;
            }
            for mut a in attrs {
                if let Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Exponent1(v)
                | Attribute::Exponent2(v)
                | Attribute::Coefficient(v) = &mut a
                {
                    zeroize::Zeroize::zeroize(v);
                }
            }
        }
        Ok(IccKeyPair { public, crt })
    }

    // ---- host path ----------------------------------------------------------------------------

    /// The value of a key at rest in host memory (the block opened on the host path), for
    /// `role`.
    fn read_key(
        &self,
        s: &mut SlotSession,
        op: Op<'_>,
        smk: &super::Smk,
        key: &WrappedKey,
        role: Role,
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let v = self.block_value(s, op, smk, key, Some(role))?;
        if v.len() != key.alg.key_len() {
            return Err(op.state(format!("{what}: {} bytes for a {} key", v.len(), key.alg)));
        }
        Ok(v)
    }
}

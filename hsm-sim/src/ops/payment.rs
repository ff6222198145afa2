//! The payment vendor mechanisms (hsm-sim/README.md): CVV, retail MAC, Visa PVV and IBM 3624
//! offsets, PIN generation and translation, and the export of RSA CRT components.

use super::block::{BlockAlg, BlockStream};
use super::{AES, Kind, Resolver, TDES, secret_of};
use crate::error::{Error, Result};
use crate::mechanism::*;
use crate::object::{Material, Object};
use cryptoki_sys::*;
use quill_crypto::payment::{self, Ibm3624Params, PinBlockFormat};
use quill_crypto::sym;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Is `m` a payment mechanism of the multi-part API (handled by [`init`] and [`finish`])?
pub(super) fn is_payment(m: CK_MECHANISM_TYPE) -> bool {
    matches!(
        m,
        CKM_QUILL_CVV
            | CKM_QUILL_DES3_RETAIL_MAC
            | CKM_QUILL_VISA_PVV
            | CKM_QUILL_IBM3624_OFFSET
            | CKM_QUILL_PIN_GENERATE
            | CKM_QUILL_PIN_TRANSLATE
    )
}

/// What a payment operation keeps from its parameter between init and finish.
pub(super) enum Vendor {
    Pvv {
        pin_key: Arc<Object>,
        fmt: PinBlockFormat,
        pvki: u8,
        pan: String,
    },
    Ibm {
        pin_key: Arc<Object>,
        fmt: PinBlockFormat,
        params: Ibm3624Params,
        pan: String,
    },
    PinGenerate {
        pvk: Option<Arc<Object>>,
        method: u8,
        fmt: PinBlockFormat,
        len: usize,
        exclude_weak: bool,
        pvki: u8,
        params: Ibm3624Params,
        pan: String,
    },
    PinTranslate {
        src_key: Arc<Object>,
        src_fmt: PinBlockFormat,
        dst_fmt: PinBlockFormat,
        pan: String,
    },
}

fn pin_format(b: u8) -> Result<PinBlockFormat> {
    Ok(match b {
        0 => PinBlockFormat::Iso0,
        1 => PinBlockFormat::Iso1,
        2 => PinBlockFormat::Iso2,
        3 => PinBlockFormat::Iso3,
        4 => PinBlockFormat::Iso4,
        _ => return Err(Error::param(format!("PIN block format {b} not supported (0..4)"))),
    })
}

fn pin_key_types(fmt: PinBlockFormat) -> &'static [CK_KEY_TYPE] {
    if fmt == PinBlockFormat::Iso4 { AES } else { TDES }
}

fn ibm_params(r: &mut ParamReader<'_>) -> Result<Ibm3624Params> {
    let table = r.bytes(16, "decimalisation table")?;
    if !table.iter().all(u8::is_ascii_digit) {
        return Err(Error::param("decimalisation table must be 16 ASCII digits"));
    }
    let mut decimalisation = [0u8; 16];
    decimalisation.copy_from_slice(table);
    let start = r.u8("validation start")? as usize;
    let length = r.u8("validation length")? as usize;
    let pad = r.u8("pad")?;
    if pad > 15 || length == 0 || length > 16 {
        return Err(Error::param("IBM 3624: pad must be 0..15 and length 1..16"));
    }
    Ok(Ibm3624Params { decimalisation, start, length, pad })
}

fn check_pvki(pvki: u8) -> Result<u8> {
    if pvki > 9 {
        return Err(Error::param(format!("PVKI must be a digit 0..9, got {pvki}")));
    }
    Ok(pvki)
}

fn check_validation_range(p: &Ibm3624Params, pan: &str) -> Result<()> {
    if p.start + p.length > pan.len() {
        return Err(Error::param(format!(
            "IBM 3624 validation data {}..{} runs past the {}-digit PAN",
            p.start,
            p.start + p.length,
            pan.len()
        )));
    }
    Ok(())
}

/// Check the key and parameter of a payment mechanism at `C_*Init` (the caller has checked the
/// mechanism and the key's usage); the state the operation keeps, if any. `keyref` is the
/// operation's key.
pub(super) fn init<'a>(
    mech: &Mechanism,
    keyref: impl Fn() -> Result<&'a Object>,
    resolve: Resolver<'_>,
) -> Result<Option<Vendor>> {
    match mech.mech {
        CKM_QUILL_CVV | CKM_QUILL_DES3_RETAIL_MAC => {
            secret_of(keyref()?, &[CKK_DES2])?;
            if mech.mech == CKM_QUILL_DES3_RETAIL_MAC && !matches!(mech.param.raw(), [] | [1] | [2]) {
                return Err(Error::param(
                    "retail MAC parameter: empty, or one byte 1 or 2 (ISO 9797-1 padding method)",
                ));
            }
            Ok(None)
        }
        CKM_QUILL_VISA_PVV | CKM_QUILL_IBM3624_OFFSET => {
            secret_of(keyref()?, TDES)?;
            let what = if mech.mech == CKM_QUILL_VISA_PVV { "CK_QUILL_PVV_PARAMS" } else { "CK_QUILL_IBM3624_PARAMS" };
            let mut r = ParamReader::new(mech.param.raw(), what);
            let pin_key = resolve(r.ulong("hPinKey")?)?;
            let fmt = pin_format(r.u8("format")?)?;
            secret_of(&pin_key, pin_key_types(fmt))?;
            pin_key.require(CKA_DECRYPT)?;
            Ok(Some(if mech.mech == CKM_QUILL_VISA_PVV {
                let pvki = check_pvki(r.u8("pvki")?)?;
                let pan = r.digits("pan", 12, 19)?;
                r.end()?;
                Vendor::Pvv { pin_key, fmt, pvki, pan }
            } else {
                let params = ibm_params(&mut r)?;
                let pan = r.digits("pan", 12, 19)?;
                r.end()?;
                check_validation_range(&params, &pan)?;
                Vendor::Ibm { pin_key, fmt, params, pan }
            }))
        }
        CKM_QUILL_PIN_GENERATE => {
            let mut r = ParamReader::new(mech.param.raw(), "CK_QUILL_PIN_GENERATE_PARAMS");
            let hpvk = r.ulong("hPvk")?;
            let method = r.u8("method")?;
            let fmt = pin_format(r.u8("format")?)?;
            secret_of(keyref()?, pin_key_types(fmt))?;
            let len = r.u8("pinLength")? as usize;
            let exclude_weak = r.u8("excludeWeak")? != 0;
            let pvki = r.u8("pvki")?;
            let params = ibm_params(&mut r)?;
            let pan = r.digits("pan", 12, 19)?;
            r.end()?;
            match method {
                1 => {
                    check_pvki(pvki)?;
                }
                2 => check_validation_range(&params, &pan)?,
                _ => {}
            }
            if !(4..=12).contains(&len) {
                return Err(Error::param("PIN length must be 4..12"));
            }
            let pvk = match method {
                0 => None,
                1 | 2 => {
                    let k = resolve(hpvk)?;
                    secret_of(&k, TDES)?;
                    k.require(CKA_SIGN)?;
                    Some(k)
                }
                _ => return Err(Error::param("method must be 0 (none), 1 (Visa PVV) or 2 (IBM 3624 offset)")),
            };
            Ok(Some(Vendor::PinGenerate { pvk, method, fmt, len, exclude_weak, pvki, params, pan }))
        }
        CKM_QUILL_PIN_TRANSLATE => {
            let mut r = ParamReader::new(mech.param.raw(), "CK_QUILL_PIN_TRANSLATE_PARAMS");
            let src_key = resolve(r.ulong("hSourceKey")?)?;
            let src_fmt = pin_format(r.u8("sourceFormat")?)?;
            let dst_fmt = pin_format(r.u8("destinationFormat")?)?;
            let pan = r.digits("pan", 12, 19)?;
            r.end()?;
            secret_of(&src_key, pin_key_types(src_fmt))?;
            src_key.require(CKA_DECRYPT)?;
            secret_of(keyref()?, pin_key_types(dst_fmt))?;
            Ok(Some(Vendor::PinTranslate { src_key, src_fmt, dst_fmt, pan }))
        }
        m => Err(Error::new(CKR_MECHANISM_INVALID, format!("mechanism 0x{m:X} cannot be used for this function"))),
    }
}

/// The output of a payment operation over all its `data`, with the operation's `key`.
pub(super) fn finish(
    kind: Kind,
    mech: &Mechanism,
    vendor: Option<&Vendor>,
    key: &Object,
    data: &[u8],
) -> Result<Vec<u8>> {
    let m = mech.mech;
    match (kind, m) {
        (Kind::Sign | Kind::Verify, CKM_QUILL_DES3_RETAIL_MAC) => {
            let pad = if mech.param.raw() == [1] { sym::MacPadding::Method1 } else { sym::MacPadding::Method2 };
            Ok(sym::retail_mac(&secret_of(key, &[CKK_DES2])?, data, pad)?.to_vec())
        }
        (Kind::Sign, CKM_QUILL_CVV) => {
            let s = std::str::from_utf8(data)
                .map_err(|_| Error::new(CKR_DATA_INVALID, "CVV input must be ASCII digits"))?;
            if s.len() < 19 || s.len() > 26 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::new(
                    CKR_DATA_INVALID,
                    "CVV input must be PAN(12..19) ‖ YYMM ‖ service code, ASCII digits",
                ));
            }
            let (pan, rest) = s.split_at(s.len() - 7);
            Ok(payment::cvv(&secret_of(key, &[CKK_DES2])?, pan, &rest[..4], &rest[4..])?.into_bytes())
        }
        (Kind::Sign, CKM_QUILL_VISA_PVV) => {
            let Some(Vendor::Pvv { pin_key, fmt, pvki, pan }) = vendor else {
                return Err(Error::general("PVV state"));
            };
            let pin = payment::decrypt_pin_block(*fmt, &secret_of(pin_key, pin_key_types(*fmt))?, data, pan)
                .map_err(|_| Error::new(CKR_DATA_INVALID, "PIN block does not decrypt to a valid PIN"))?;
            Ok(payment::visa_pvv(&secret_of(key, TDES)?, pan, *pvki, &pin[..4.min(pin.len())])?.into_bytes())
        }
        (Kind::Sign, CKM_QUILL_IBM3624_OFFSET) => {
            let Some(Vendor::Ibm { pin_key, fmt, params, pan }) = vendor else {
                return Err(Error::general("IBM state"));
            };
            let pin = payment::decrypt_pin_block(*fmt, &secret_of(pin_key, pin_key_types(*fmt))?, data, pan)
                .map_err(|_| Error::new(CKR_DATA_INVALID, "PIN block does not decrypt to a valid PIN"))?;
            Ok(payment::ibm3624_offset(&secret_of(key, TDES)?, pan, params, &pin)?.into_bytes())
        }
        (Kind::Encrypt, CKM_QUILL_PIN_GENERATE) => {
            let Some(Vendor::PinGenerate { pvk, method, fmt, len, exclude_weak, pvki, params, pan }) = vendor else {
                return Err(Error::general("PIN generate state"));
            };
            if !data.is_empty() {
                return Err(Error::new(CKR_DATA_LEN_RANGE, "PIN generation takes no input data"));
            }
            let pin = payment::random_pin(*len, *exclude_weak)?;
            let mut out = payment::encrypt_pin_block(*fmt, &secret_of(key, pin_key_types(*fmt))?, &pin, pan)?;
            match (method, pvk) {
                (1, Some(k)) => {
                    out.extend_from_slice(payment::visa_pvv(&secret_of(k, TDES)?, pan, *pvki, &pin[..4])?.as_bytes())
                }
                (2, Some(k)) => {
                    out.extend_from_slice(payment::ibm3624_offset(&secret_of(k, TDES)?, pan, params, &pin)?.as_bytes())
                }
                _ => {}
            }
            Ok(out)
        }
        (Kind::Encrypt, CKM_QUILL_PIN_TRANSLATE) => {
            let Some(Vendor::PinTranslate { src_key, src_fmt, dst_fmt, pan }) = vendor else {
                return Err(Error::general("PIN translate state"));
            };
            let pin = payment::decrypt_pin_block(*src_fmt, &secret_of(src_key, pin_key_types(*src_fmt))?, data, pan)
                .map_err(|_| Error::new(CKR_DATA_INVALID, "PIN block does not decrypt to a valid PIN"))?;
            Ok(payment::encrypt_pin_block(*dst_fmt, &secret_of(key, pin_key_types(*dst_fmt))?, &pin, pan)?)
        }
        _ => Err(Error::new(CKR_MECHANISM_INVALID, format!("mechanism 0x{m:X} cannot be used for this function"))),
    }
}

/// `C_WrapKey` with `CKM_QUILL_RSA_CRT_COMPONENT_WRAP`: one CRT component of the RSA private
/// `key`, left-padded to half the modulus, padded as asked and encrypted under `wrapping`.
pub(super) fn wrap_crt_component(mech: &Mechanism, wrapping: &Object, key: &Object) -> Result<Vec<u8>> {
    let Material::RsaPrivate(k, _) = &key.material else {
        return Err(Error::new(CKR_KEY_NOT_WRAPPABLE, "CRT component export needs an RSA private key"));
    };
    let mut r = ParamReader::new(mech.param.raw(), "CK_QUILL_CRT_WRAP_PARAMS");
    let comp = r.u8("component")?;
    let pad = r.u8("padding")?;
    let mode = r.u8("mode")?;
    r.end()?;
    let half = k.n.iter().skip_while(|b| **b == 0).count().div_ceil(2);
    let raw: &[u8] = match comp {
        1 => &k.p,
        2 => &k.q,
        3 => &k.dp,
        4 => &k.dq,
        5 => &k.qinv,
        _ => return Err(Error::param("component must be 1 (p), 2 (q), 3 (dp), 4 (dq) or 5 (qinv)")),
    };
    let raw = crate::object::strip(raw);
    if raw.len() > half {
        return Err(Error::general("CRT component longer than half the modulus"));
    }
    let mut v = Zeroizing::new(vec![0u8; half - raw.len()]);
    v.extend_from_slice(&raw);
    let (alg, bs) = match wrapping.key_type() {
        Some(CKK_DES2 | CKK_DES3) => (BlockAlg::Des3, 8),
        Some(CKK_AES) => (BlockAlg::Aes, 16),
        _ => return Err(Error::new(CKR_WRAPPING_KEY_TYPE_INCONSISTENT, "wrapping key must be DES2, DES3 or AES")),
    };
    let data = Zeroizing::new(match pad {
        0 => {
            if !v.len().is_multiple_of(bs) {
                return Err(Error::param("component is not a multiple of the block size: choose padding 1 or 2"));
            }
            v.to_vec()
        }
        1 => sym::iso9797_m2_pad(&v, bs),
        2 => {
            let mut d = v.to_vec();
            while !d.len().is_multiple_of(bs) {
                d.push(0);
            }
            d
        }
        _ => return Err(Error::param("padding must be 0 (none), 1 (ISO 9797-1 method 2) or 2 (zeros)")),
    });
    let key_bytes = secret_of(wrapping, if alg == BlockAlg::Aes { AES } else { TDES })?;
    let iv = match mode {
        0 => None,
        1 => Some(vec![0u8; bs]),
        _ => return Err(Error::param("mode must be 0 (ECB) or 1 (CBC, zero IV)")),
    };
    let mut s = BlockStream { alg, key: key_bytes, iv, encrypt: true, pad: false, buf: Zeroizing::new(Vec::new()) };
    s.process(&data)
}

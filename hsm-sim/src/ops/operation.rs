//! [`Operation`]: mechanism + key → the state machine of the multi-part API (encrypt, decrypt,
//! digest, sign, verify, and their recover variants).

use super::block::{BlockAlg, BlockStream};
use super::payment::{self, Vendor};
use super::tr31::{self, Translate};
use super::{AES, Kind, Resolver, TDES, constant_eq, secret_of};
use crate::error::{Error, Result};
use crate::mechanism::*;
use crate::object::{Material, Object};
use cryptoki_sys::*;
use quill_crypto::digest::{HashAlg, Hasher, HmacState};
use quill_crypto::sym;
use std::sync::Arc;
use zeroize::Zeroizing;

enum State {
    Stream(BlockStream),
    Hash(Hasher),
    HashSign(Hasher, HashAlg),
    Hmac(HmacState),
    Buffer(Zeroizing<Vec<u8>>),
    Ec(super::ec::EcSign),
}

/// An active multi-part operation.
pub struct Operation {
    /// Function.
    pub kind: Kind,
    mech: Mechanism,
    key: Option<Arc<Object>>,
    state: State,
    vendor: Option<Vendor>,
    translate: Option<Translate>,
}

fn hash_of(mech: CK_MECHANISM_TYPE) -> Result<HashAlg> {
    Ok(match mech {
        CKM_SHA_1 | CKM_SHA1_RSA_PKCS | CKM_SHA_1_HMAC => HashAlg::Sha1,
        CKM_SHA224 | CKM_SHA224_RSA_PKCS | CKM_SHA224_HMAC => HashAlg::Sha224,
        CKM_SHA256 | CKM_SHA256_RSA_PKCS | CKM_SHA256_HMAC => HashAlg::Sha256,
        CKM_SHA384 | CKM_SHA384_RSA_PKCS | CKM_SHA384_HMAC => HashAlg::Sha384,
        CKM_SHA512 | CKM_SHA512_RSA_PKCS | CKM_SHA512_HMAC => HashAlg::Sha512,
        _ => return Err(Error::param(format!("no hash for mechanism 0x{mech:X}"))),
    })
}

fn mgf_hash(mgf: CK_RSA_PKCS_MGF_TYPE) -> Result<HashAlg> {
    Ok(match mgf {
        CKG_MGF1_SHA1 => HashAlg::Sha1,
        CKG_MGF1_SHA224 => HashAlg::Sha224,
        CKG_MGF1_SHA256 => HashAlg::Sha256,
        CKG_MGF1_SHA384 => HashAlg::Sha384,
        CKG_MGF1_SHA512 => HashAlg::Sha512,
        _ => return Err(Error::param(format!("MGF 0x{mgf:X} not supported"))),
    })
}

fn require_rsa(key: &Object, private: bool) -> Result<()> {
    let want = if private { CKO_PRIVATE_KEY } else { CKO_PUBLIC_KEY };
    if key.key_type() != Some(CKK_RSA) || key.class() != want {
        return Err(Error::new(
            CKR_KEY_TYPE_INCONSISTENT,
            format!("key {} must be an RSA {} key", key.handle, if private { "private" } else { "public" }),
        ));
    }
    if matches!(key.material, Material::None) {
        return Err(Error::new(CKR_USER_NOT_LOGGED_IN, format!("key {} is not available: log in first", key.handle)));
    }
    Ok(())
}

impl Operation {
    /// Start an operation; checks mechanism, key type, key usage and parameters.
    pub fn init(kind: Kind, mech: &Mechanism, key: Option<Arc<Object>>, resolve: Resolver<'_>) -> Result<Self> {
        require(mech.mech, kind.flag())?;
        if let Some(k) = &key
            && kind != Kind::Digest
        {
            // TR-31 translation runs through C_Encrypt but puts a key under the destination KBPK:
            // a wrap, and the KBPK a key-encryption key.
            k.require(if mech.mech == CKM_QUILL_TR31_TRANSLATE { CKA_WRAP } else { kind.usage() })?;
        }
        let keyref = || key.as_deref().ok_or_else(|| Error::new(CKR_KEY_HANDLE_INVALID, "no key"));
        let enc = matches!(kind, Kind::Encrypt);
        let mut vendor = None;
        let mut translate = None;
        let state = match mech.mech {
            CKM_SHA_1 | CKM_SHA224 | CKM_SHA256 | CKM_SHA384 | CKM_SHA512 => {
                State::Hash(Hasher::new(hash_of(mech.mech)?))
            }
            CKM_DES3_ECB | CKM_DES3_CBC | CKM_DES3_CBC_PAD | CKM_AES_ECB | CKM_AES_CBC | CKM_AES_CBC_PAD => {
                let aes = matches!(mech.mech, CKM_AES_ECB | CKM_AES_CBC | CKM_AES_CBC_PAD);
                let alg = if aes { BlockAlg::Aes } else { BlockAlg::Des3 };
                let k = secret_of(keyref()?, if aes { AES } else { TDES })?;
                let iv = if matches!(mech.mech, CKM_DES3_ECB | CKM_AES_ECB) {
                    None
                } else {
                    let iv = mech.param.raw();
                    if iv.len() != alg.size() {
                        return Err(Error::param(format!("IV must be {} bytes", alg.size())));
                    }
                    Some(iv.to_vec())
                };
                State::Stream(BlockStream {
                    alg,
                    key: k,
                    iv,
                    encrypt: enc,
                    pad: matches!(mech.mech, CKM_DES3_CBC_PAD | CKM_AES_CBC_PAD),
                    buf: Zeroizing::new(Vec::new()),
                })
            }
            CKM_SHA1_RSA_PKCS | CKM_SHA224_RSA_PKCS | CKM_SHA256_RSA_PKCS | CKM_SHA384_RSA_PKCS
            | CKM_SHA512_RSA_PKCS => {
                require_rsa(keyref()?, kind == Kind::Sign)?;
                let h = hash_of(mech.mech)?;
                State::HashSign(Hasher::new(h), h)
            }
            m if super::ec::is_ec_sign(m) => State::Ec(super::ec::EcSign::init(kind, mech, keyref()?)?),
            CKM_SHA_1_HMAC | CKM_SHA224_HMAC | CKM_SHA256_HMAC | CKM_SHA384_HMAC | CKM_SHA512_HMAC => {
                let k = secret_of(
                    keyref()?,
                    &[
                        CKK_GENERIC_SECRET,
                        CKK_SHA_1_HMAC,
                        CKK_SHA224_HMAC,
                        CKK_SHA256_HMAC,
                        CKK_SHA384_HMAC,
                        CKK_SHA512_HMAC,
                        CKK_AES,
                    ],
                )?;
                let h = hash_of(mech.mech)?;
                State::Hmac(HmacState::new(h, &k)?)
            }
            CKM_RSA_PKCS | CKM_RSA_X_509 | CKM_RSA_PKCS_OAEP => {
                let private = matches!(kind, Kind::Decrypt | Kind::Sign | Kind::SignRecover);
                require_rsa(keyref()?, private)?;
                if let MechParam::Oaep { hash, mgf, .. } = &mech.param {
                    hash_of(*hash)?;
                    mgf_hash(*mgf)?;
                } else if mech.mech == CKM_RSA_PKCS_OAEP {
                    return Err(Error::param("CKM_RSA_PKCS_OAEP needs CK_RSA_PKCS_OAEP_PARAMS"));
                }
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_AES_GCM => {
                secret_of(keyref()?, AES)?;
                let MechParam::Gcm { iv, tag_bits, .. } = &mech.param else {
                    return Err(Error::param("CKM_AES_GCM needs CK_GCM_PARAMS"));
                };
                if iv.is_empty() || *tag_bits % 8 != 0 || !(96..=128).contains(tag_bits) {
                    return Err(Error::param("GCM: IV must be non-empty and the tag 96..128 bits"));
                }
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP | CKM_AES_CMAC | CKM_AES_CMAC_GENERAL => {
                secret_of(keyref()?, AES)?;
                if mech.mech == CKM_AES_CMAC_GENERAL {
                    cmac_general_len(&mech.param, 16)?;
                }
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_DES3_MAC | CKM_DES3_CMAC => {
                secret_of(keyref()?, TDES)?;
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            m if payment::is_payment(m) => {
                vendor = payment::init(mech, keyref, resolve)?;
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            CKM_QUILL_TR31_TRANSLATE => {
                translate = Some(tr31::translate_init(mech, keyref()?, resolve)?);
                State::Buffer(Zeroizing::new(Vec::new()))
            }
            m => {
                return Err(Error::new(
                    CKR_MECHANISM_INVALID,
                    format!("mechanism 0x{m:X} cannot be used for this function"),
                ));
            }
        };
        Ok(Operation { kind, mech: mech.clone(), key, state, vendor, translate })
    }

    /// The same operation started afresh (same function, mechanism and key): a one-shot call
    /// whose input differs from the one a length query computed for starts over from here.
    pub fn restart(&self, resolve: Resolver<'_>) -> Result<Self> {
        Operation::init(self.kind, &self.mech, self.key.clone(), resolve)
    }

    /// Bytes [`Operation::update`] would return for `data`, without consuming it (a length query
    /// or a short buffer must leave the operation as it was). Only block streams output anything
    /// before the final part.
    pub fn update_len(&self, data: &[u8]) -> usize {
        match &self.state {
            State::Stream(s) => s.update_len(data),
            _ => 0,
        }
    }

    /// Feed data; returns output produced now (stream ciphers only).
    pub fn update(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        match &mut self.state {
            State::Stream(s) => s.update(data),
            State::Hash(h) | State::HashSign(h, _) => {
                h.update(data);
                Ok(Vec::new())
            }
            State::Hmac(h) => {
                h.update(data);
                Ok(Vec::new())
            }
            State::Ec(e) => {
                e.update(data);
                Ok(Vec::new())
            }
            State::Buffer(b) => {
                if matches!(self.kind, Kind::Encrypt | Kind::Decrypt) && !matches!(self.mech.mech, CKM_AES_GCM) {
                    return Err(Error::new(CKR_FUNCTION_NOT_SUPPORTED, "this mechanism is single-part only"));
                }
                b.extend_from_slice(data);
                Ok(Vec::new())
            }
        }
    }

    fn key(&self) -> Result<&Object> {
        self.key.as_deref().ok_or_else(|| Error::new(CKR_KEY_HANDLE_INVALID, "no key"))
    }

    /// Finish: the output (ciphertext, plaintext, digest, signature, MAC, vendor value).
    pub fn finish(&mut self) -> Result<Vec<u8>> {
        let state = std::mem::replace(&mut self.state, State::Buffer(Zeroizing::new(Vec::new())));
        match state {
            State::Stream(mut s) => s.finish(),
            State::Hash(h) => Ok(h.finalize()),
            State::Hmac(h) => Ok(h.finalize()),
            State::HashSign(h, alg) => {
                let mut di = alg.digest_info_prefix().to_vec();
                di.extend_from_slice(&h.finalize());
                Ok(self.key()?.rsa_engine()?.pkcs1_sign(&di)?)
            }
            State::Buffer(data) => self.finish_buffer(&data),
            State::Ec(mut e) => e.sign(),
        }
    }

    fn finish_buffer(&self, data: &[u8]) -> Result<Vec<u8>> {
        let key = self.key()?;
        let m = self.mech.mech;
        match (self.kind, m) {
            (Kind::Encrypt, CKM_RSA_PKCS) => Ok(key.rsa_engine()?.pkcs1_encrypt(data)?),
            (Kind::Decrypt, CKM_RSA_PKCS) => Ok(key
                .rsa_engine()?
                .pkcs1_decrypt(data)
                .map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID, "decryption failed"))?
                .to_vec()),
            (Kind::Encrypt | Kind::VerifyRecover, CKM_RSA_X_509) => {
                let e = key.rsa_engine()?;
                if self.kind == Kind::VerifyRecover && data.len() != e.modulus_len() {
                    return Err(Error::new(CKR_SIGNATURE_LEN_RANGE, "signature length differs from the modulus"));
                }
                Ok(e.raw_public(data)?)
            }
            (Kind::Decrypt | Kind::Sign | Kind::SignRecover, CKM_RSA_X_509) => {
                let e = key.rsa_engine()?;
                if data.len() > e.modulus_len() {
                    return Err(Error::new(CKR_DATA_LEN_RANGE, "input longer than the modulus"));
                }
                e.raw_private(data).map_err(|_| Error::new(CKR_DATA_INVALID, "input is not smaller than the modulus"))
            }
            (Kind::Sign | Kind::SignRecover, CKM_RSA_PKCS) => {
                let e = key.rsa_engine()?;
                if data.len() + 11 > e.modulus_len() {
                    return Err(Error::new(CKR_DATA_LEN_RANGE, "input too long for PKCS#1 v1.5"));
                }
                Ok(e.pkcs1_sign(data)?)
            }
            (Kind::VerifyRecover, CKM_RSA_PKCS) => {
                let e = key.rsa_engine()?;
                if data.len() != e.modulus_len() {
                    return Err(Error::new(CKR_SIGNATURE_LEN_RANGE, "signature length differs from the modulus"));
                }
                let em = e.raw_public(data)?;
                // EMSA-PKCS1-v1_5: 00 01 FF.. 00 M
                match (em.first(), em.get(1)) {
                    (Some(0), Some(1)) => {}
                    _ => return Err(Error::new(CKR_SIGNATURE_INVALID, "not a PKCS#1 v1.5 signature")),
                }
                let sep = em.iter().skip(2).position(|b| *b != 0xFF).map(|i| i + 2);
                match sep {
                    Some(i) if em[i] == 0 && i >= 10 => Ok(em[i + 1..].to_vec()),
                    _ => Err(Error::new(CKR_SIGNATURE_INVALID, "not a PKCS#1 v1.5 signature")),
                }
            }
            (Kind::Encrypt | Kind::Decrypt, CKM_RSA_PKCS_OAEP) => {
                let MechParam::Oaep { hash, mgf, label } = &self.mech.param else {
                    return Err(Error::param("OAEP params"));
                };
                let (h, g) = (hash_of(*hash)?, mgf_hash(*mgf)?);
                let e = key.rsa_engine()?;
                if self.kind == Kind::Encrypt {
                    Ok(e.oaep_encrypt(h, g, label, data)?)
                } else {
                    Ok(e.oaep_decrypt(h, g, label, data)
                        .map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID, "decryption failed"))?
                        .to_vec())
                }
            }
            (Kind::Encrypt | Kind::Decrypt, CKM_AES_GCM) => {
                let MechParam::Gcm { iv, aad, tag_bits } = &self.mech.param else {
                    return Err(Error::param("GCM params"));
                };
                let k = secret_of(key, AES)?;
                let tl = (*tag_bits / 8) as usize;
                if self.kind == Kind::Encrypt {
                    Ok(sym::aes_gcm_encrypt(&k, iv, aad, data, tl)?)
                } else {
                    Ok(sym::aes_gcm_decrypt(&k, iv, aad, data, tl)
                        .map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID, "GCM authentication failed"))?
                        .to_vec())
                }
            }
            (Kind::Encrypt, CKM_AES_KEY_WRAP) => Ok(sym::aes_key_wrap(&secret_of(key, AES)?, data)?),
            (Kind::Decrypt, CKM_AES_KEY_WRAP) => {
                Ok(sym::aes_key_unwrap(&secret_of(key, AES)?, data).map_err(unwrap_err)?.to_vec())
            }
            (Kind::Encrypt, CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP) => {
                Ok(sym::aes_key_wrap_pad(&secret_of(key, AES)?, data)?)
            }
            (Kind::Decrypt, CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP) => {
                Ok(sym::aes_key_unwrap_pad(&secret_of(key, AES)?, data).map_err(unwrap_err)?.to_vec())
            }
            (Kind::Sign | Kind::Verify, CKM_AES_CMAC) => Ok(sym::aes_cmac(&secret_of(key, AES)?, data)?.to_vec()),
            (Kind::Sign | Kind::Verify, CKM_AES_CMAC_GENERAL) => {
                let l = cmac_general_len(&self.mech.param, 16)?;
                Ok(sym::aes_cmac(&secret_of(key, AES)?, data)?[..l].to_vec())
            }
            (Kind::Sign | Kind::Verify, CKM_DES3_CMAC) => Ok(sym::des3_cmac(&secret_of(key, TDES)?, data)?.to_vec()),
            (Kind::Sign | Kind::Verify, CKM_DES3_MAC) => {
                let mut d = data.to_vec();
                while d.is_empty() || !d.len().is_multiple_of(8) {
                    d.push(0);
                }
                Ok(sym::des3_cbc_mac(&secret_of(key, TDES)?, &d)?[..4].to_vec())
            }
            (kind, m) if payment::is_payment(m) => payment::finish(kind, &self.mech, self.vendor.as_ref(), key, data),
            (Kind::Encrypt, CKM_QUILL_TR31_TRANSLATE) => {
                let t = self.translate.as_ref().ok_or_else(|| Error::general("TR-31 translate state"))?;
                tr31::translate(t, key, data)
            }
            _ => Err(Error::new(CKR_MECHANISM_INVALID, format!("mechanism 0x{m:X} cannot be used for this function"))),
        }
    }

    /// Single-part call: all the data at once, then finish.
    pub fn run(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        if let State::Buffer(b) = &mut self.state {
            b.extend_from_slice(data);
            return self.finish();
        }
        let mut out = self.update(data)?;
        out.extend(self.finish()?);
        Ok(out)
    }

    /// Single-part verification.
    pub fn verify_run(&mut self, data: &[u8], sig: &[u8]) -> Result<()> {
        match &mut self.state {
            State::Buffer(b) => b.extend_from_slice(data),
            _ => {
                self.update(data)?;
            }
        }
        self.verify(sig)
    }

    /// Finish a verification against `sig`.
    pub fn verify(&mut self, sig: &[u8]) -> Result<()> {
        if let State::Ec(e) = &mut self.state {
            return e.verify(sig);
        }
        let m = self.mech.mech;
        let is_rsa_sig = matches!(&self.state, State::HashSign(..)) || matches!(m, CKM_RSA_PKCS | CKM_RSA_X_509);
        if is_rsa_sig {
            let key = self.key.clone().ok_or_else(|| Error::new(CKR_KEY_HANDLE_INVALID, "no key"))?;
            let e = key.rsa_engine()?;
            if sig.len() != e.modulus_len() {
                return Err(Error::new(CKR_SIGNATURE_LEN_RANGE, "signature length differs from the modulus"));
            }
            let state = std::mem::replace(&mut self.state, State::Buffer(Zeroizing::new(Vec::new())));
            let ok = match state {
                State::HashSign(h, alg) => {
                    let mut di = alg.digest_info_prefix().to_vec();
                    di.extend_from_slice(&h.finalize());
                    e.pkcs1_verify(&di, sig)?
                }
                State::Buffer(data) if m == CKM_RSA_PKCS => e.pkcs1_verify(&data, sig)?,
                State::Buffer(data) => {
                    let rec = e.raw_public(sig)?;
                    let mut want = vec![0u8; rec.len().saturating_sub(data.len())];
                    want.extend_from_slice(&data);
                    constant_eq(&rec, &want)
                }
                _ => false,
            };
            return if ok { Ok(()) } else { Err(Error::new(CKR_SIGNATURE_INVALID, "signature invalid")) };
        }
        let mac = self.finish()?;
        if sig.len() != mac.len() {
            return Err(Error::new(CKR_SIGNATURE_LEN_RANGE, "signature length differs"));
        }
        if constant_eq(&mac, sig) { Ok(()) } else { Err(Error::new(CKR_SIGNATURE_INVALID, "signature invalid")) }
    }
}

fn unwrap_err(_: quill_crypto::CryptoError) -> Error {
    Error::new(CKR_ENCRYPTED_DATA_INVALID, "key unwrap integrity check failed")
}

fn cmac_general_len(p: &MechParam, max: usize) -> Result<usize> {
    let raw = p.raw();
    let arr: [u8; std::mem::size_of::<CK_ULONG>()] =
        raw.try_into().map_err(|_| Error::param("CK_MAC_GENERAL_PARAMS expected"))?;
    let l = CK_ULONG::from_ne_bytes(arr) as usize;
    if l == 0 || l > max {
        return Err(Error::param("MAC length out of range"));
    }
    Ok(l)
}

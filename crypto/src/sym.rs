//! Symmetric primitives: DES/3DES/AES in ECB and CBC, paddings, AES-GCM, AES key wrap
//! (RFC 3394/5649), CMAC, CBC-MAC, ISO 9797-1 retail MAC, key check values and DES parity.
//!
//! Key lengths: single DES 8 bytes; 3DES 16 (K1‖K2, used as K1K2K1) or 24 bytes; AES 16/24/32.
//! DES parity bits are ignored by the ciphers (as in every HSM).

use aes::{Aes128, Aes192, Aes256};
use aes_kw::{AesKw, AesKwp};
use cipher::{Block, BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit, consts::U16};
use cmac::{Cmac, Mac, block_api::CmacCipher};
use des::{Des, TdesEde2, TdesEde3};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{CryptoError, Result, Secret, data_len, key_len};

/// Largest input accepted by the OpenSSL-backed GCM (OpenSSL takes `int` lengths).
const GCM_MAX_DATA: usize = (i32::MAX as usize) - 64;

/// A keyed block cipher of any of the supported kinds (internal).
pub(crate) enum Bc {
    Des(Des),
    Ede2(TdesEde2),
    Ede3(TdesEde3),
    Aes128(Aes128),
    Aes192(Aes192),
    Aes256(Aes256),
}

fn init<C: KeyInit>(key: &[u8], what: &'static str) -> Result<C> {
    C::new_from_slice(key).map_err(|_| key_len(what, key.len()))
}

fn enc_with<C: BlockCipherEncrypt>(c: &C, block: &mut [u8]) {
    // Callers pass exactly one block (chunks_exact of the cipher's block size).
    debug_assert_eq!(block.len(), C::block_size());
    if let Ok(b) = <&mut Block<C>>::try_from(block) {
        c.encrypt_block(b);
    }
}

fn dec_with<C: BlockCipherDecrypt + BlockSizeUser>(c: &C, block: &mut [u8]) {
    // Callers pass exactly one block (chunks_exact of the cipher's block size).
    debug_assert_eq!(block.len(), C::block_size());
    if let Ok(b) = <&mut Block<C>>::try_from(block) {
        c.decrypt_block(b);
    }
}

impl Bc {
    /// Single DES, 8-byte key.
    pub(crate) fn des(key: &[u8]) -> Result<Self> {
        match key.len() {
            8 => Ok(Self::Des(init(key, "DES")?)),
            n => Err(key_len("DES", n)),
        }
    }

    /// Triple DES, 16- or 24-byte key.
    pub(crate) fn des3(key: &[u8]) -> Result<Self> {
        match key.len() {
            16 => Ok(Self::Ede2(init(key, "3DES")?)),
            24 => Ok(Self::Ede3(init(key, "3DES")?)),
            n => Err(key_len("3DES", n)),
        }
    }

    /// DES or 3DES by key length: 8, 16 or 24 bytes.
    pub(crate) fn des_any(key: &[u8]) -> Result<Self> {
        match key.len() {
            8 => Self::des(key),
            16 | 24 => Self::des3(key),
            n => Err(key_len("DES/3DES", n)),
        }
    }

    /// AES, 16/24/32-byte key.
    pub(crate) fn aes(key: &[u8]) -> Result<Self> {
        match key.len() {
            16 => Ok(Self::Aes128(init(key, "AES")?)),
            24 => Ok(Self::Aes192(init(key, "AES")?)),
            32 => Ok(Self::Aes256(init(key, "AES")?)),
            n => Err(key_len("AES", n)),
        }
    }

    /// Block size in bytes (8 or 16).
    pub(crate) fn block_size(&self) -> usize {
        match self {
            Self::Des(_) | Self::Ede2(_) | Self::Ede3(_) => 8,
            _ => 16,
        }
    }

    /// Encrypts one block in place; `block.len()` must equal [`Self::block_size`].
    pub(crate) fn encrypt_block(&self, block: &mut [u8]) {
        match self {
            Self::Des(c) => enc_with(c, block),
            Self::Ede2(c) => enc_with(c, block),
            Self::Ede3(c) => enc_with(c, block),
            Self::Aes128(c) => enc_with(c, block),
            Self::Aes192(c) => enc_with(c, block),
            Self::Aes256(c) => enc_with(c, block),
        }
    }

    /// Decrypts one block in place; `block.len()` must equal [`Self::block_size`].
    pub(crate) fn decrypt_block(&self, block: &mut [u8]) {
        match self {
            Self::Des(c) => dec_with(c, block),
            Self::Ede2(c) => dec_with(c, block),
            Self::Ede3(c) => dec_with(c, block),
            Self::Aes128(c) => dec_with(c, block),
            Self::Aes192(c) => dec_with(c, block),
            Self::Aes256(c) => dec_with(c, block),
        }
    }

    /// Encrypts a fixed-size block and returns the result.
    pub(crate) fn encrypt_array<const N: usize>(&self, mut block: [u8; N]) -> [u8; N] {
        self.encrypt_block(&mut block);
        block
    }

    /// Decrypts a fixed-size block and returns the result.
    pub(crate) fn decrypt_array<const N: usize>(&self, mut block: [u8; N]) -> [u8; N] {
        self.decrypt_block(&mut block);
        block
    }

    fn ecb(&self, data: &[u8], encrypt: bool, what: &'static str) -> Result<Vec<u8>> {
        let bs = self.block_size();
        if !data.len().is_multiple_of(bs) {
            return Err(data_len(what, data.len(), multiple_rule(bs)));
        }
        let mut out = data.to_vec();
        for block in out.chunks_exact_mut(bs) {
            if encrypt {
                self.encrypt_block(block);
            } else {
                self.decrypt_block(block);
            }
        }
        Ok(out)
    }

    fn cbc_encrypt(&self, iv: &[u8], data: &[u8], what: &'static str) -> Result<Vec<u8>> {
        let bs = self.block_size();
        if iv.len() != bs {
            return Err(data_len(what, iv.len(), iv_rule(bs)));
        }
        if !data.len().is_multiple_of(bs) {
            return Err(data_len(what, data.len(), multiple_rule(bs)));
        }
        let mut out = data.to_vec();
        let mut prev = iv.to_vec();
        for block in out.chunks_exact_mut(bs) {
            xor_in_place(block, &prev);
            self.encrypt_block(block);
            prev.copy_from_slice(block);
        }
        Ok(out)
    }

    fn cbc_decrypt(&self, iv: &[u8], data: &[u8], what: &'static str) -> Result<Vec<u8>> {
        let bs = self.block_size();
        if iv.len() != bs {
            return Err(data_len(what, iv.len(), iv_rule(bs)));
        }
        if !data.len().is_multiple_of(bs) {
            return Err(data_len(what, data.len(), multiple_rule(bs)));
        }
        let mut out = data.to_vec();
        let mut prev = iv.to_vec();
        for (block, ct) in out.chunks_exact_mut(bs).zip(data.chunks_exact(bs)) {
            self.decrypt_block(block);
            xor_in_place(block, &prev);
            prev.copy_from_slice(ct);
        }
        Ok(out)
    }

    /// CBC-MAC with a zero IV over `data` (a non-empty multiple of the block size).
    fn cbc_mac(&self, data: &[u8], what: &'static str) -> Result<Vec<u8>> {
        let bs = self.block_size();
        if data.is_empty() || !data.len().is_multiple_of(bs) {
            return Err(data_len(what, data.len(), "must be a non-empty multiple of the block size"));
        }
        let mut state = vec![0u8; bs];
        for block in data.chunks_exact(bs) {
            xor_in_place(&mut state, block);
            self.encrypt_block(&mut state);
        }
        Ok(state)
    }
}

fn multiple_rule(bs: usize) -> &'static str {
    if bs == 8 { "must be a multiple of 8" } else { "must be a multiple of 16" }
}

fn iv_rule(bs: usize) -> &'static str {
    if bs == 8 { "IV must be 8 bytes" } else { "IV must be 16 bytes" }
}

/// `a ^= b` over the common length.
pub(crate) fn xor_in_place(a: &mut [u8], b: &[u8]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= *y;
    }
}

/// Copies the first `N` bytes of `src` (zero-filled if shorter).
fn first<const N: usize>(src: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, s) in out.iter_mut().zip(src) {
        *o = *s;
    }
    out
}

/// Single-DES ECB encryption (8-byte key, data a multiple of 8).
pub fn des_ecb_encrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    Bc::des(key)?.ecb(data, true, "DES-ECB")
}

/// 3DES-ECB encryption (data a multiple of 8).
pub fn des3_ecb_encrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    Bc::des3(key)?.ecb(data, true, "3DES-ECB")
}

/// 3DES-ECB decryption (data a multiple of 8).
pub fn des3_ecb_decrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    Bc::des3(key)?.ecb(data, false, "3DES-ECB")
}

/// 3DES-CBC encryption, no padding (8-byte IV, data a multiple of 8).
pub fn des3_cbc_encrypt(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    Bc::des3(key)?.cbc_encrypt(iv, data, "3DES-CBC")
}

/// 3DES-CBC decryption, no padding (8-byte IV, data a multiple of 8).
pub fn des3_cbc_decrypt(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    Bc::des3(key)?.cbc_decrypt(iv, data, "3DES-CBC")
}

/// AES-ECB encryption (data a multiple of 16).
pub fn aes_ecb_encrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    Bc::aes(key)?.ecb(data, true, "AES-ECB")
}

/// AES-ECB decryption (data a multiple of 16).
pub fn aes_ecb_decrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    Bc::aes(key)?.ecb(data, false, "AES-ECB")
}

/// AES-CBC encryption, no padding (16-byte IV, data a multiple of 16).
pub fn aes_cbc_encrypt(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    Bc::aes(key)?.cbc_encrypt(iv, data, "AES-CBC")
}

/// AES-CBC decryption, no padding (16-byte IV, data a multiple of 16).
pub fn aes_cbc_decrypt(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    Bc::aes(key)?.cbc_decrypt(iv, data, "AES-CBC")
}

/// PKCS#7 padding to `block` bytes (1..=255; other values are clamped into that range).
pub fn pkcs7_pad(data: &[u8], block: usize) -> Vec<u8> {
    let block = block.clamp(1, 255);
    let n = block - data.len() % block;
    let mut out = Vec::with_capacity(data.len() + n);
    out.extend_from_slice(data);
    // n is in 1..=255 because block <= 255.
    out.resize(data.len() + n, n as u8);
    out
}

/// Removes PKCS#7 padding; [`CryptoError::BadPadding`] if it is malformed.
pub fn pkcs7_unpad(data: &[u8], block: usize) -> Result<Vec<u8>> {
    if !(1..=255).contains(&block) {
        return Err(CryptoError::Invalid(format!("PKCS#7 block size {block} out of range 1..=255")));
    }
    if data.is_empty() || !data.len().is_multiple_of(block) {
        return Err(CryptoError::BadPadding);
    }
    let Some(&last) = data.last() else {
        return Err(CryptoError::BadPadding);
    };
    let n = usize::from(last);
    if n == 0 || n > block || n > data.len() {
        return Err(CryptoError::BadPadding);
    }
    let (body, pad) = data.split_at(data.len() - n);
    // Accumulate without early exit.
    let bad = pad.iter().fold(0u8, |acc, &b| acc | (b ^ last));
    if bad != 0 {
        return Err(CryptoError::BadPadding);
    }
    Ok(body.to_vec())
}

/// ISO/IEC 9797-1 padding method 2: `80` then `00`s to a multiple of `block`; always added
/// (a `block` of 0 is treated as 1).
pub fn iso9797_m2_pad(data: &[u8], block: usize) -> Vec<u8> {
    let block = block.max(1);
    let total = (data.len() / block + 1) * block;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(data);
    out.push(0x80);
    out.resize(total, 0);
    out
}

/// ISO/IEC 9797-1 padding method 1: `00`s to a multiple of `block`, one zero block for empty data.
fn iso9797_m1_pad(data: &[u8], block: usize) -> Vec<u8> {
    let mut out = data.to_vec();
    let rem = data.len() % block;
    if rem != 0 || data.is_empty() {
        out.resize(data.len() + block - rem, 0);
    }
    out
}

fn gcm_cipher(key: &[u8]) -> Result<openssl::symm::Cipher> {
    use openssl::symm::Cipher;
    match key.len() {
        16 => Ok(Cipher::aes_128_gcm()),
        24 => Ok(Cipher::aes_192_gcm()),
        32 => Ok(Cipher::aes_256_gcm()),
        n => Err(key_len("AES-GCM", n)),
    }
}

fn gcm_check(iv: &[u8], aad: &[u8], data_len_: usize, tag_len: usize) -> Result<()> {
    if !(1..=128).contains(&iv.len()) {
        return Err(data_len("AES-GCM IV", iv.len(), "must be 1..=128 bytes"));
    }
    if !(12..=16).contains(&tag_len) {
        return Err(data_len("AES-GCM tag", tag_len, "must be 12..=16 bytes"));
    }
    if aad.len() > GCM_MAX_DATA {
        return Err(data_len("AES-GCM AAD", aad.len(), "too long"));
    }
    if data_len_ > GCM_MAX_DATA {
        return Err(data_len("AES-GCM data", data_len_, "too long"));
    }
    Ok(())
}

fn gcm_err(_: openssl::error::ErrorStack) -> CryptoError {
    CryptoError::Invalid("AES-GCM operation failed".into())
}

/// AES-GCM encryption; returns ciphertext ‖ tag (`tag_len` 12..=16, IV 1..=128 bytes).
pub fn aes_gcm_encrypt(key: &[u8], iv: &[u8], aad: &[u8], data: &[u8], tag_len: usize) -> Result<Vec<u8>> {
    use openssl::symm::{Crypter, Mode};
    let cipher = gcm_cipher(key)?;
    gcm_check(iv, aad, data.len(), tag_len)?;
    let mut c = Crypter::new(cipher, Mode::Encrypt, key, Some(iv)).map_err(gcm_err)?;
    c.pad(false);
    c.aad_update(aad).map_err(gcm_err)?;
    let mut out = vec![0u8; data.len() + cipher.block_size() + tag_len];
    let mut n = c.update(data, &mut out).map_err(gcm_err)?;
    let tail = out.get_mut(n..).ok_or_else(|| gcm_err(openssl::error::ErrorStack::get()))?;
    n += c.finalize(tail).map_err(gcm_err)?;
    out.truncate(n);
    let mut tag = vec![0u8; tag_len];
    c.get_tag(&mut tag).map_err(gcm_err)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// AES-GCM decryption of ciphertext ‖ tag; [`CryptoError::Integrity`] if the tag does not match.
pub fn aes_gcm_decrypt(key: &[u8], iv: &[u8], aad: &[u8], ct_and_tag: &[u8], tag_len: usize) -> Result<Secret> {
    use openssl::symm::{Crypter, Mode};
    let cipher = gcm_cipher(key)?;
    gcm_check(iv, aad, ct_and_tag.len(), tag_len)?;
    if ct_and_tag.len() < tag_len {
        return Err(data_len("AES-GCM", ct_and_tag.len(), "shorter than the tag"));
    }
    let (ct, tag) = ct_and_tag.split_at(ct_and_tag.len() - tag_len);
    let mut c = Crypter::new(cipher, Mode::Decrypt, key, Some(iv)).map_err(gcm_err)?;
    c.pad(false);
    c.aad_update(aad).map_err(gcm_err)?;
    let mut out = Zeroizing::new(vec![0u8; ct.len() + cipher.block_size()]);
    let mut n = c.update(ct, &mut out).map_err(gcm_err)?;
    c.set_tag(tag).map_err(gcm_err)?;
    let tail = out.get_mut(n..).ok_or(CryptoError::Integrity)?;
    n += c.finalize(tail).map_err(|_| CryptoError::Integrity)?;
    out.truncate(n);
    Ok(out)
}

fn kw_err(e: aes_kw::Error) -> CryptoError {
    match e {
        aes_kw::Error::IntegrityCheckFailed => CryptoError::Integrity,
        _ => CryptoError::Invalid("AES key wrap: invalid length".into()),
    }
}

fn kw_wrap<C: BlockCipherEncrypt<BlockSize = U16> + KeyInit>(kek: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let kw: AesKw<C> = init(kek, "AES-KW")?;
    let mut out = vec![0u8; data.len() + 8];
    let n = kw.wrap_key(data, &mut out).map_err(kw_err)?.len();
    out.truncate(n);
    Ok(out)
}

fn kw_unwrap<C: BlockCipherDecrypt<BlockSize = U16> + KeyInit>(kek: &[u8], data: &[u8]) -> Result<Secret> {
    let kw: AesKw<C> = init(kek, "AES-KW")?;
    let mut out = Zeroizing::new(vec![0u8; data.len().saturating_sub(8)]);
    let n = kw.unwrap_key(data, &mut out).map_err(kw_err)?.len();
    out.truncate(n);
    Ok(out)
}

fn kwp_wrap<C: BlockCipherEncrypt<BlockSize = U16> + KeyInit>(kek: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let kw: AesKwp<C> = init(kek, "AES-KWP")?;
    let mut out = vec![0u8; data.len().div_ceil(8) * 8 + 8];
    let n = kw.wrap_key(data, &mut out).map_err(kw_err)?.len();
    out.truncate(n);
    Ok(out)
}

fn kwp_unwrap<C: BlockCipherDecrypt<BlockSize = U16> + KeyInit>(kek: &[u8], data: &[u8]) -> Result<Secret> {
    let kw: AesKwp<C> = init(kek, "AES-KWP")?;
    let mut out = Zeroizing::new(vec![0u8; data.len().saturating_sub(8)]);
    let n = kw.unwrap_key(data, &mut out).map_err(kw_err)?.len();
    // The unwrapped key is a prefix of `out`; zeroize the padding tail before truncating.
    if let Some(tail) = out.get_mut(n..) {
        tail.zeroize();
    }
    out.truncate(n);
    Ok(out)
}

/// Largest input to AES key wrap (RFC 5649 limits the length field to 32 bits).
const KW_MAX: usize = u32::MAX as usize - 16;

/// AES key wrap, RFC 3394 (data a multiple of 8, at least 16 bytes); output is 8 bytes longer.
pub fn aes_key_wrap(kek: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    if data.len() < 16 || !data.len().is_multiple_of(8) || data.len() > KW_MAX {
        return Err(data_len("AES-KW", data.len(), "must be a multiple of 8, at least 16"));
    }
    match kek.len() {
        16 => kw_wrap::<Aes128>(kek, data),
        24 => kw_wrap::<Aes192>(kek, data),
        32 => kw_wrap::<Aes256>(kek, data),
        n => Err(key_len("AES-KW", n)),
    }
}

/// AES key unwrap, RFC 3394 (input a multiple of 8, at least 24 bytes); checks the ICV.
pub fn aes_key_unwrap(kek: &[u8], data: &[u8]) -> Result<Secret> {
    if data.len() < 24 || !data.len().is_multiple_of(8) || data.len() > KW_MAX {
        return Err(data_len("AES-KW unwrap", data.len(), "must be a multiple of 8, at least 24"));
    }
    match kek.len() {
        16 => kw_unwrap::<Aes128>(kek, data),
        24 => kw_unwrap::<Aes192>(kek, data),
        32 => kw_unwrap::<Aes256>(kek, data),
        n => Err(key_len("AES-KW", n)),
    }
}

/// AES key wrap with padding, RFC 5649 (any non-empty data).
pub fn aes_key_wrap_pad(kek: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    if data.is_empty() || data.len() > KW_MAX {
        return Err(data_len("AES-KWP", data.len(), "must be non-empty"));
    }
    match kek.len() {
        16 => kwp_wrap::<Aes128>(kek, data),
        24 => kwp_wrap::<Aes192>(kek, data),
        32 => kwp_wrap::<Aes256>(kek, data),
        n => Err(key_len("AES-KWP", n)),
    }
}

/// AES key unwrap with padding, RFC 5649 (input a multiple of 8, at least 16 bytes).
pub fn aes_key_unwrap_pad(kek: &[u8], data: &[u8]) -> Result<Secret> {
    if data.len() < 16 || !data.len().is_multiple_of(8) || data.len() > KW_MAX {
        return Err(data_len("AES-KWP unwrap", data.len(), "must be a multiple of 8, at least 16"));
    }
    match kek.len() {
        16 => kwp_unwrap::<Aes128>(kek, data),
        24 => kwp_unwrap::<Aes192>(kek, data),
        32 => kwp_unwrap::<Aes256>(kek, data),
        n => Err(key_len("AES-KWP", n)),
    }
}

fn cmac_with<C: CmacCipher + KeyInit>(key: &[u8], data: &[u8], what: &'static str) -> Result<Vec<u8>> {
    let mut mac: Cmac<C> = init(key, what)?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// AES-CMAC (NIST SP 800-38B, RFC 4493), full 16-byte tag.
pub fn aes_cmac(key: &[u8], data: &[u8]) -> Result<[u8; 16]> {
    let tag = match key.len() {
        16 => cmac_with::<Aes128>(key, data, "AES-CMAC")?,
        24 => cmac_with::<Aes192>(key, data, "AES-CMAC")?,
        32 => cmac_with::<Aes256>(key, data, "AES-CMAC")?,
        n => return Err(key_len("AES-CMAC", n)),
    };
    Ok(first(&tag))
}

/// 3DES-CMAC (NIST SP 800-38B), full 8-byte tag.
pub fn des3_cmac(key: &[u8], data: &[u8]) -> Result<[u8; 8]> {
    let tag = match key.len() {
        16 => cmac_with::<TdesEde2>(key, data, "3DES-CMAC")?,
        24 => cmac_with::<TdesEde3>(key, data, "3DES-CMAC")?,
        n => return Err(key_len("3DES-CMAC", n)),
    };
    Ok(first(&tag))
}

/// 3DES CBC-MAC with a zero IV (ISO 9797-1 algorithm 1); data a non-empty multiple of 8,
/// padded by the caller.
pub fn des3_cbc_mac(key: &[u8], data: &[u8]) -> Result<[u8; 8]> {
    Ok(first(&Bc::des3(key)?.cbc_mac(data, "3DES CBC-MAC")?))
}

/// ISO/IEC 9797-1 padding method for [`retail_mac`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacPadding {
    /// Method 1: `00`s to a multiple of 8 (one zero block for empty data).
    Method1,
    /// Method 2: `80` then `00`s, always added.
    Method2,
}

/// ISO/IEC 9797-1 MAC algorithm 3 ("retail MAC"): single-DES CBC under K1, final block
/// D(K2) then E(K1); key 16 bytes (K1‖K2).
pub fn retail_mac(key: &[u8], data: &[u8], pad: MacPadding) -> Result<[u8; 8]> {
    let (k1, k2) = match key.len() {
        16 => key.split_at(8),
        n => return Err(key_len("retail MAC", n)),
    };
    let d1 = Bc::des(k1)?;
    let d2 = Bc::des(k2)?;
    let padded = match pad {
        MacPadding::Method1 => iso9797_m1_pad(data, 8),
        MacPadding::Method2 => iso9797_m2_pad(data, 8),
    };
    let mut h: [u8; 8] = first(&d1.cbc_mac(&padded, "retail MAC")?);
    h = d2.decrypt_array(h);
    Ok(d1.encrypt_array(h))
}

/// DES/3DES key check value: first 3 bytes of E(key, 0⁸) (ANSI X9.24); 8-byte keys use single DES.
pub fn kcv_des(key: &[u8]) -> Result<[u8; 3]> {
    Ok(first(&Bc::des_any(key)?.encrypt_array([0u8; 8])))
}

/// AES key check value as PKCS#11 `CKA_CHECK_VALUE`: first 3 bytes of AES-ECB(key, 0¹⁶).
pub fn kcv_aes(key: &[u8]) -> Result<[u8; 3]> {
    Ok(first(&Bc::aes(key)?.encrypt_array([0u8; 16])))
}

/// AES key check value per ANSI X9.24-1:2017: first 5 bytes of AES-CMAC(key, 0¹⁶).
pub fn kcv_aes_cmac(key: &[u8]) -> Result<[u8; 5]> {
    Ok(first(&aes_cmac(key, &[0u8; 16])?))
}

/// Sets every byte to odd parity (flips the least significant bit where needed).
pub fn set_odd_parity(key: &mut [u8]) {
    for b in key.iter_mut() {
        if b.count_ones() % 2 == 0 {
            *b ^= 1;
        }
    }
}

/// True if every byte has odd parity.
pub fn has_odd_parity(key: &[u8]) -> bool {
    key.iter().all(|b| b.count_ones() % 2 == 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    const K: &str = "0123456789ABCDEFFEDCBA9876543210";

    #[test]
    fn des_known_answers() {
        // Classic single-DES example ("Now is t").
        assert_eq!(des_ecb_encrypt(&h("0123456789ABCDEF"), b"Now is t").unwrap(), h("3FA40E8A984D4815"));
        // 3DES with the usual test key: KCV 08D7B4.
        assert_eq!(kcv_des(&h(K)).unwrap(), [0x08, 0xD7, 0xB4]);
        // ARPC method 1 (EMV reference §6 #7): 3DES(SK)[ARQC xor (ARC || 00*6)].
        let sk = h("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB");
        // ARC is 0000, so the XOR leaves the ARQC unchanged.
        let x = h("1234567890ABCDEF");
        assert_eq!(des3_ecb_encrypt(&sk, &x).unwrap(), h("F5E6F44147E2F1B0"));
        // Common session key (EMV reference §6 #4), parity-adjusted.
        let mut r = h("001C000000000000");
        r[2] = 0xF0;
        let mut sk = des3_ecb_encrypt(&h(K), &r).unwrap();
        r[2] = 0x0F;
        sk.extend(des3_ecb_encrypt(&h(K), &r).unwrap());
        set_odd_parity(&mut sk);
        assert_eq!(sk, h("E9FB384AF807B940FEDCEA613461B0C4"));
        assert!(has_odd_parity(&sk));
        // 24-byte K1K2K1 equals the 16-byte key; decrypt inverts.
        let k24 = h(&format!("{K}0123456789ABCDEF"));
        let data = h("00112233445566778899AABBCCDDEEFF");
        let ct = des3_ecb_encrypt(&h(K), &data).unwrap();
        assert_eq!(des3_ecb_encrypt(&k24, &data).unwrap(), ct);
        assert_eq!(des3_ecb_decrypt(&k24, &ct).unwrap(), data);
    }

    #[test]
    fn dgi_9000_kcvs() {
        // EMV reference §6 #18.
        let mut all = Vec::new();
        for k in
            ["11223344006677881122334455007788", "8B4F854F0831FBF2635A212E4DDDB92A", "11220044556677881122330055667788"]
        {
            all.extend(kcv_des(&h(k)).unwrap());
        }
        assert_eq!(all, h("97DCB0CE4E2CB37DF3"));
    }

    #[test]
    fn cbc_round_trips_and_chaining() {
        let key = h(K);
        let iv = h("0001020304050607");
        let data: Vec<u8> = (0u8..48).collect();
        let ct = des3_cbc_encrypt(&key, &iv, &data).unwrap();
        assert_eq!(des3_cbc_decrypt(&key, &iv, &ct).unwrap(), data);
        // First block of CBC == ECB of (P1 xor IV).
        let mut p1 = data[..8].to_vec();
        xor_in_place(&mut p1, &iv);
        assert_eq!(des3_ecb_encrypt(&key, &p1).unwrap(), ct[..8]);
        // CBC-MAC == last CBC block with zero IV.
        let ct0 = des3_cbc_encrypt(&key, &[0; 8], &data).unwrap();
        assert_eq!(des3_cbc_mac(&key, &data).unwrap()[..], ct0[40..]);

        // AES-CBC: NIST SP 800-38A F.2.1.
        let k = h("2b7e151628aed2a6abf7158809cf4f3c");
        let iv = h("000102030405060708090a0b0c0d0e0f");
        let p = h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
        let c = aes_cbc_encrypt(&k, &iv, &p).unwrap();
        assert_eq!(c, h("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2"));
        assert_eq!(aes_cbc_decrypt(&k, &iv, &c).unwrap(), p);
        // AES-ECB: SP 800-38A F.1.1 and FIPS-197 C.3 (AES-256).
        assert_eq!(aes_ecb_encrypt(&k, &p[..16]).unwrap(), h("3ad77bb40d7a3660a89ecaf32466ef97"));
        let k256 = h("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
        let c = aes_ecb_encrypt(&k256, &h("00112233445566778899aabbccddeeff")).unwrap();
        assert_eq!(c, h("8ea2b7ca516745bfeafc49904b496089"));
        assert_eq!(aes_ecb_decrypt(&k256, &c).unwrap(), h("00112233445566778899aabbccddeeff"));
    }

    #[test]
    fn length_errors() {
        assert!(matches!(des3_ecb_encrypt(&[0; 8], &[0; 8]), Err(CryptoError::KeyLength { .. })));
        assert!(matches!(des_ecb_encrypt(&[0; 16], &[0; 8]), Err(CryptoError::KeyLength { .. })));
        assert!(matches!(des3_ecb_encrypt(&[0; 16], &[0; 7]), Err(CryptoError::DataLength { .. })));
        assert!(matches!(aes_cbc_encrypt(&[0; 16], &[0; 8], &[0; 16]), Err(CryptoError::DataLength { .. })));
        assert!(matches!(aes_ecb_encrypt(&[0; 20], &[0; 16]), Err(CryptoError::KeyLength { .. })));
        assert!(matches!(des3_cbc_mac(&[0; 16], &[]), Err(CryptoError::DataLength { .. })));
        assert!(matches!(retail_mac(&[0; 24], &[], MacPadding::Method1), Err(CryptoError::KeyLength { .. })));
        assert!(matches!(aes_key_wrap(&[0; 16], &[0; 8]), Err(CryptoError::DataLength { .. })));
        assert!(matches!(aes_key_unwrap(&[0; 16], &[0; 16]), Err(CryptoError::DataLength { .. })));
        assert!(matches!(aes_key_unwrap_pad(&[0; 16], &[0; 8]), Err(CryptoError::DataLength { .. })));
        assert!(matches!(aes_key_wrap_pad(&[0; 16], &[]), Err(CryptoError::DataLength { .. })));
        assert!(matches!(aes_gcm_encrypt(&[0; 16], &[], &[], &[], 16), Err(CryptoError::DataLength { .. })));
        assert!(matches!(aes_gcm_encrypt(&[0; 16], &[0; 12], &[], &[], 8), Err(CryptoError::DataLength { .. })));
        assert!(matches!(aes_gcm_decrypt(&[0; 16], &[0; 12], &[], &[0; 5], 12), Err(CryptoError::DataLength { .. })));
        assert!(ecb_empty_ok());
    }

    fn ecb_empty_ok() -> bool {
        des3_ecb_encrypt(&[1; 16], &[]).unwrap().is_empty() && aes_ecb_decrypt(&[1; 32], &[]).unwrap().is_empty()
    }

    #[test]
    fn paddings() {
        assert_eq!(pkcs7_pad(b"abc", 8), b"abc\x05\x05\x05\x05\x05");
        assert_eq!(pkcs7_pad(&[0; 16], 16).len(), 32);
        assert_eq!(pkcs7_unpad(&pkcs7_pad(b"hello world", 16), 16).unwrap(), b"hello world");
        assert_eq!(pkcs7_unpad(&pkcs7_pad(b"", 8), 8).unwrap(), b"");
        assert_eq!(pkcs7_unpad(b"abc\x05\x05\x05\x04\x05", 8), Err(CryptoError::BadPadding));
        assert_eq!(pkcs7_unpad(b"abcdefg\x00", 8), Err(CryptoError::BadPadding));
        assert_eq!(pkcs7_unpad(b"abcdefg\x09", 8), Err(CryptoError::BadPadding));
        assert_eq!(pkcs7_unpad(b"abc", 8), Err(CryptoError::BadPadding));
        assert_eq!(pkcs7_unpad(b"", 8), Err(CryptoError::BadPadding));
        assert!(pkcs7_unpad(b"a", 0).is_err());
        assert_eq!(iso9797_m2_pad(b"", 8), h("8000000000000000"));
        assert_eq!(iso9797_m2_pad(&[1; 8], 8), h("0101010101010101 8000000000000000"));
        assert_eq!(iso9797_m2_pad(&[1; 7], 8), h("0101010101010180"));
        assert_eq!(iso9797_m1_pad(b"", 8), vec![0; 8]);
        assert_eq!(iso9797_m1_pad(&[1; 8], 8), vec![1; 8]);
        assert_eq!(iso9797_m1_pad(&[1; 9], 8).len(), 16);
    }

    #[test]
    fn retail_mac_emv_ac() {
        // EMV reference §6 #6 (pyemv generic AC, padding method 2).
        let sk = h("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB");
        let data = h("000000002000 000000000000 0124 0000008000 0124 110309 00 3804823E 5800 0001");
        assert_eq!(retail_mac(&sk, &data, MacPadding::Method2).unwrap().to_vec(), h("3B76CF10FECD8789"));
        // With K1 == K2 the retail MAC degenerates to single-DES CBC-MAC.
        let k = h("0123456789ABCDEF0123456789ABCDEF");
        let m = retail_mac(&k, &[7; 16], MacPadding::Method1).unwrap();
        let ct = des_ecb_encrypt(&k[..8], &[7; 8]).unwrap();
        let mut b2 = [7u8; 8];
        xor_in_place(&mut b2, &ct);
        assert_eq!(m.to_vec(), des_ecb_encrypt(&k[..8], &b2).unwrap());
    }

    #[test]
    fn cmac_vectors() {
        // RFC 4493 §4.
        let k = h("2b7e151628aed2a6abf7158809cf4f3c");
        let m = h(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        );
        assert_eq!(aes_cmac(&k, &[]).unwrap().to_vec(), h("bb1d6929e95937287fa37d129b756746"));
        assert_eq!(aes_cmac(&k, &m[..16]).unwrap().to_vec(), h("070a16b46b4d4144f79bdd9dd04a287c"));
        assert_eq!(aes_cmac(&k, &m[..40]).unwrap().to_vec(), h("dfa66747de9ae63030ca32611497c827"));
        assert_eq!(aes_cmac(&k, &m).unwrap().to_vec(), h("51f0bebf7e3b9d92fc49741779363cfe"));
        // NIST SP 800-38B D.4 (three-key TDEA) and D.5 (two-key TDEA).
        let k3 = h("8aa83bf8cbda1062 0bc1bf19fbb6cd58 bc313d4a371ca8b5");
        assert_eq!(des3_cmac(&k3, &[]).unwrap().to_vec(), h("b7a688e122ffaf95"));
        assert_eq!(des3_cmac(&k3, &m[..8]).unwrap().to_vec(), h("8e8f293136283797"));
        // 16-byte messages: values checked with OpenSSL (pyca/cryptography).
        assert_eq!(des3_cmac(&k3, &m[..16]).unwrap().to_vec(), h("286d394673448197"));
        assert_eq!(des3_cmac(&k3, &m[..20]).unwrap().to_vec(), h("743ddbe0ce2dc2ed"));
        assert_eq!(des3_cmac(&k3, &m[..32]).unwrap().to_vec(), h("33e6b1092400eae5"));
        let k2 = h("4cf15134a2850dd5 8a3d10ba80570d38");
        assert_eq!(des3_cmac(&k2, &[]).unwrap().to_vec(), h("bd2ebf9a3ba00361"));
        assert_eq!(des3_cmac(&k2, &m[..8]).unwrap().to_vec(), h("4ff2ab813c53ce83"));
        assert_eq!(des3_cmac(&k2, &m[..16]).unwrap().to_vec(), h("743da9f41b91ec83"));
        assert_eq!(des3_cmac(&k2, &m[..20]).unwrap().to_vec(), h("62dd1b471902bd4e"));
        assert_eq!(des3_cmac(&k2, &m[..32]).unwrap().to_vec(), h("31b1e431dabc4eb8"));
        // X9.24-1:2017 style AES KCV is a CMAC prefix.
        assert_eq!(kcv_aes_cmac(&k).unwrap().to_vec(), aes_cmac(&k, &[0; 16]).unwrap()[..5]);
        assert_eq!(kcv_aes(&k).unwrap().to_vec(), aes_ecb_encrypt(&k, &[0; 16]).unwrap()[..3]);
    }

    #[test]
    fn key_wrap_rfc3394() {
        let kek128 = h("000102030405060708090A0B0C0D0E0F");
        let kek192 = h("000102030405060708090A0B0C0D0E0F1011121314151617");
        let kek256 = h("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
        let k16 = h("00112233445566778899AABBCCDDEEFF");
        let k24 = h("00112233445566778899AABBCCDDEEFF0001020304050607");
        let k32 = h("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
        let cases = [
            (&kek128, &k16, "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"),
            (&kek192, &k16, "96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D"),
            (&kek256, &k16, "64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7"),
            (&kek192, &k24, "031D33264E15D33268F24EC260743EDCE1C6C7DDEE725A936BA814915C6762D2"),
            (&kek256, &k24, "A8F9BC1612C68B3FF6E6F4FBE30E71E4769C8B80A32CB8958CD5D17D6B254DA1"),
            (&kek256, &k32, "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"),
        ];
        for (kek, key, wrapped) in cases {
            assert_eq!(aes_key_wrap(kek, key).unwrap(), h(wrapped));
            assert_eq!(*aes_key_unwrap(kek, &h(wrapped)).unwrap(), *key);
        }
        let mut bad = h(cases[0].2);
        bad[5] ^= 1;
        assert_eq!(aes_key_unwrap(&kek128, &bad), Err(CryptoError::Integrity));
    }

    #[test]
    fn key_wrap_pad_rfc5649() {
        let kek = h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        let k20 = h("c37b7e6492584340bed12207808941155068f738");
        let w20 = h("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a");
        assert_eq!(aes_key_wrap_pad(&kek, &k20).unwrap(), w20);
        assert_eq!(*aes_key_unwrap_pad(&kek, &w20).unwrap(), k20);
        let k7 = h("466f7250617369");
        let w7 = h("afbeb0f07dfbf5419200f2ccb50bb24f");
        assert_eq!(aes_key_wrap_pad(&kek, &k7).unwrap(), w7);
        assert_eq!(*aes_key_unwrap_pad(&kek, &w7).unwrap(), k7);
        let mut bad = w20.clone();
        bad[20] ^= 0x80;
        assert_eq!(aes_key_unwrap_pad(&kek, &bad), Err(CryptoError::Integrity));
        for n in 1..=40usize {
            let key: Vec<u8> = (0..n as u8).collect();
            let w = aes_key_wrap_pad(&kek[..16], &key).unwrap();
            assert_eq!(w.len(), n.div_ceil(8) * 8 + 8);
            assert_eq!(*aes_key_unwrap_pad(&kek[..16], &w).unwrap(), key);
        }
    }

    #[test]
    fn gcm_vectors() {
        // McGrew & Viega GCM spec, test case 2 (AES-128, zero key/IV, 16 zero bytes).
        let out = aes_gcm_encrypt(&[0; 16], &[0; 12], &[], &[0; 16], 16).unwrap();
        assert_eq!(out, h("0388dace60b6a392f328c2b971b2fe78 ab6e47d42cec13bdf53a67b21257bddf"));
        // Test cases 4 (96-bit IV), 5 (64-bit IV) and 6 (480-bit IV) with AAD.
        let k = h("feffe9928665731c6d6a8f9467308308");
        let p = h(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let a = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let cases = [
            (
                "cafebabefacedbaddecaf888",
                "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
                "5bc94fbc3221a5db94fae95ae7121a47",
            ),
            (
                "cafebabefacedbad",
                "61353b4c2806934a777ff51fa22a4755699b2a714fcdc6f83766e5f97b6c742373806900e49f24b22b097544d4896b424989b5e1ebac0f07c23f4598",
                "3612d2e79e3b0785561be14aaca2fccb",
            ),
            (
                "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b",
                "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca701e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5",
                "619cc5aefffe0bfa462af43c1699d050",
            ),
        ];
        for (iv, c, t) in cases {
            let iv = h(iv);
            let expected = [h(c), h(t)].concat();
            assert_eq!(aes_gcm_encrypt(&k, &iv, &a, &p, 16).unwrap(), expected);
            assert_eq!(*aes_gcm_decrypt(&k, &iv, &a, &expected, 16).unwrap(), p);
            // Truncated tags.
            let short = aes_gcm_encrypt(&k, &iv, &a, &p, 12).unwrap();
            assert_eq!(short, expected[..expected.len() - 4]);
            assert_eq!(*aes_gcm_decrypt(&k, &iv, &a, &short, 12).unwrap(), p);
            let mut bad = expected.clone();
            bad[3] ^= 1;
            assert_eq!(aes_gcm_decrypt(&k, &iv, &a, &bad, 16), Err(CryptoError::Integrity));
            assert_eq!(aes_gcm_decrypt(&k, &iv, &a[1..], &expected, 16), Err(CryptoError::Integrity));
        }
        // Empty plaintext, AES-256.
        let tag = aes_gcm_encrypt(&[3; 32], &[9; 12], b"hdr", &[], 14).unwrap();
        assert_eq!(tag.len(), 14);
        assert!(aes_gcm_decrypt(&[3; 32], &[9; 12], b"hdr", &tag, 14).unwrap().is_empty());
    }

    #[test]
    fn parity() {
        let mut k = vec![0u8, 1, 2, 3, 0xFE, 0xFF];
        assert!(!has_odd_parity(&k));
        set_odd_parity(&mut k);
        assert_eq!(k, vec![1, 1, 2, 2, 0xFE, 0xFE]);
        assert!(has_odd_parity(&k));
    }
}

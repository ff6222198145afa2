//! Block-cipher streaming (DES3/AES, ECB/CBC, with or without PKCS#7 padding) for the
//! multi-part encrypt and decrypt functions.

use crate::error::{Error, Result};
use cryptoki_sys::*;
use quill_crypto::sym;
use std::sync::Arc;
use zeroize::Zeroizing;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BlockAlg {
    Des3,
    Aes,
}

impl BlockAlg {
    pub(super) fn size(self) -> usize {
        match self {
            BlockAlg::Des3 => 8,
            BlockAlg::Aes => 16,
        }
    }
}

pub(super) struct BlockStream {
    pub(super) alg: BlockAlg,
    pub(super) key: Arc<Zeroizing<Vec<u8>>>,
    pub(super) iv: Option<Vec<u8>>,
    pub(super) encrypt: bool,
    pub(super) pad: bool,
    pub(super) buf: Zeroizing<Vec<u8>>,
}

impl BlockStream {
    pub(super) fn process(&mut self, chunk: &[u8]) -> Result<Vec<u8>> {
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        let k = self.key.as_slice();
        let out = match (&self.iv, self.alg, self.encrypt) {
            (None, BlockAlg::Des3, true) => sym::des3_ecb_encrypt(k, chunk)?,
            (None, BlockAlg::Des3, false) => sym::des3_ecb_decrypt(k, chunk)?,
            (None, BlockAlg::Aes, true) => sym::aes_ecb_encrypt(k, chunk)?,
            (None, BlockAlg::Aes, false) => sym::aes_ecb_decrypt(k, chunk)?,
            (Some(iv), BlockAlg::Des3, true) => sym::des3_cbc_encrypt(k, iv, chunk)?,
            (Some(iv), BlockAlg::Des3, false) => sym::des3_cbc_decrypt(k, iv, chunk)?,
            (Some(iv), BlockAlg::Aes, true) => sym::aes_cbc_encrypt(k, iv, chunk)?,
            (Some(iv), BlockAlg::Aes, false) => sym::aes_cbc_decrypt(k, iv, chunk)?,
        };
        if self.iv.is_some() {
            let bs = self.alg.size();
            let last = if self.encrypt { &out[out.len() - bs..] } else { &chunk[chunk.len() - bs..] };
            self.iv = Some(last.to_vec());
        }
        Ok(out)
    }

    /// Bytes [`BlockStream::update`] would return for `data`, without consuming it.
    pub(super) fn update_len(&self, data: &[u8]) -> usize {
        let bs = self.alg.size();
        let total = self.buf.len() + data.len();
        let mut n = total / bs * bs;
        if !self.encrypt && self.pad && n == total && n > 0 {
            n -= bs;
        }
        n
    }

    pub(super) fn update(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        self.buf.extend_from_slice(data);
        let bs = self.alg.size();
        let mut n = self.buf.len() / bs * bs;
        if !self.encrypt && self.pad && n == self.buf.len() && n > 0 {
            n -= bs; // keep the last block: it carries the padding
        }
        let chunk: Zeroizing<Vec<u8>> = Zeroizing::new(self.buf.drain(..n).collect());
        self.process(&chunk)
    }

    pub(super) fn finish(&mut self) -> Result<Vec<u8>> {
        let bs = self.alg.size();
        let rest = Zeroizing::new(std::mem::take(&mut *self.buf));
        if self.encrypt {
            if self.pad {
                let padded = Zeroizing::new(sym::pkcs7_pad(&rest, bs));
                self.process(&padded)
            } else if rest.is_empty() {
                Ok(Vec::new())
            } else {
                Err(Error::new(CKR_DATA_LEN_RANGE, format!("data is not a multiple of {bs} bytes")))
            }
        } else if self.pad {
            if rest.len() != bs {
                return Err(Error::new(
                    CKR_ENCRYPTED_DATA_LEN_RANGE,
                    format!("ciphertext is not a multiple of {bs} bytes"),
                ));
            }
            let pt = Zeroizing::new(self.process(&rest)?);
            sym::pkcs7_unpad(&pt, bs).map_err(|_| Error::new(CKR_ENCRYPTED_DATA_INVALID, "bad padding"))
        } else if rest.is_empty() {
            Ok(Vec::new())
        } else {
            Err(Error::new(CKR_ENCRYPTED_DATA_LEN_RANGE, format!("ciphertext is not a multiple of {bs} bytes")))
        }
    }
}

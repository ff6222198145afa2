//! Independent computations with OpenSSL (the `openssl` crate): sealing components to a transport
//! key, KCVs, HMAC, AES-GCM. None of this goes through PKCS#11.

use openssl::bn::BigNum;
use openssl::pkey::PKey;
use openssl::rsa::{Padding, Rsa};
use openssl::sign::Signer;
use openssl::symm::{Cipher, Crypter, Mode};
use quill_hsm::{Kcv, KeyAlg, RsaPublic, SealedComponent};
use sha2::{Digest as _, Sha256};

/// Decode hex (spaces allowed).
pub fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

/// Random bytes.
pub fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b).unwrap();
    b
}

/// Odd parity on every byte.
pub fn odd_parity(mut k: Vec<u8>) -> Vec<u8> {
    for b in &mut k {
        let ones = (*b & 0xFE).count_ones();
        *b = (*b & 0xFE) | u8::from(ones % 2 == 0);
    }
    k
}

/// A random clear key for `alg` (odd parity for TDES).
pub fn random_key(alg: KeyAlg) -> Vec<u8> {
    let k = random(alg.key_len());
    if alg.is_tdes() { odd_parity(k) } else { k }
}

/// `n` random components whose XOR is `key` (each with odd parity when `key` is TDES and `n` is
/// odd, as real components are).
pub fn split(alg: KeyAlg, key: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = (0..n - 1).map(|_| random_key(alg)).collect();
    let mut last = key.to_vec();
    for p in &parts {
        for (l, x) in last.iter_mut().zip(p) {
            *l ^= x;
        }
    }
    parts.push(last);
    parts
}

/// XOR of components.
pub fn xor(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut acc = vec![0u8; parts[0].len()];
    for p in parts {
        for (a, x) in acc.iter_mut().zip(p) {
            *a ^= x;
        }
    }
    acc
}

fn rsa(pk: &RsaPublic) -> Rsa<openssl::pkey::Public> {
    Rsa::from_public_components(BigNum::from_slice(&pk.modulus).unwrap(), BigNum::from_slice(&pk.exponent).unwrap())
        .unwrap()
}

/// RSA-OAEP (SHA-1, MGF1-SHA-1, no label: OpenSSL's `PKCS1_OAEP` padding) of `clear` to `pk`.
pub fn seal(pk: &RsaPublic, clear: &[u8]) -> SealedComponent {
    let r = rsa(pk);
    let mut out = vec![0u8; r.size() as usize];
    let n = r.public_encrypt(clear, &mut out, Padding::PKCS1_OAEP).unwrap();
    out.truncate(n);
    SealedComponent(out)
}

/// SHA-256 of OpenSSL's DER SubjectPublicKeyInfo of `pk`, upper-case hex.
pub fn spki_sha256(pk: &RsaPublic) -> String {
    let der = PKey::from_rsa(rsa(pk)).unwrap().public_key_to_der().unwrap();
    hex::encode_upper(Sha256::digest(der))
}

fn ecb(cipher: Cipher, key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut c = Crypter::new(cipher, Mode::Encrypt, key, None).unwrap();
    c.pad(false);
    let mut out = vec![0u8; data.len() + cipher.block_size()];
    let mut n = c.update(data, &mut out).unwrap();
    n += c.finalize(&mut out[n..]).unwrap();
    out.truncate(n);
    out
}

/// 3DES-ECB encryption (DES2 keys expanded to K1 K2 K1).
pub fn tdes_ecb(key: &[u8], data: &[u8]) -> Vec<u8> {
    let k3: Vec<u8> = if key.len() == 16 { [key, &key[..8]].concat() } else { key.to_vec() };
    ecb(Cipher::des_ede3(), &k3, data)
}

/// AES-CMAC.
pub fn aes_cmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let cipher = match key.len() {
        16 => Cipher::aes_128_cbc(),
        24 => Cipher::aes_192_cbc(),
        _ => Cipher::aes_256_cbc(),
    };
    let pkey = PKey::cmac(&cipher, key).unwrap();
    let mut s = Signer::new_without_digest(&pkey).unwrap();
    s.update(data).unwrap();
    s.sign_to_vec().unwrap()
}

/// AES-CBC encryption without padding (`data` a multiple of 16 bytes).
pub fn aes_cbc_encrypt(key: &[u8], iv: &[u8; 16], data: &[u8]) -> Vec<u8> {
    aes_cbc(key, iv, data, openssl::symm::Mode::Encrypt)
}

fn aes_cbc(key: &[u8], iv: &[u8], data: &[u8], mode: openssl::symm::Mode) -> Vec<u8> {
    let cipher = match key.len() {
        16 => Cipher::aes_128_cbc(),
        24 => Cipher::aes_192_cbc(),
        _ => Cipher::aes_256_cbc(),
    };
    let mut c = openssl::symm::Crypter::new(cipher, mode, key, Some(iv)).unwrap();
    c.pad(false);
    let mut out = vec![0u8; data.len() + 16];
    let mut n = c.update(data, &mut out).unwrap();
    n += c.finalize(&mut out[n..]).unwrap();
    out.truncate(n);
    out
}

/// Open a TR-31 version D key block (ANSI X9.143 AES key block) under an AES-256 KBPK, written
/// from the standard with OpenSSL, independently of `quill_crypto::tr31`: KBEK and KBAK by the
/// CMAC counter-mode KDF (derivation data: counter, usage 0000 encryption / 0001 MAC, separator
/// 00, algorithm 0004 AES-256, length 0100), the key data AES-CBC-decrypted with the MAC as IV,
/// the MAC CMAC(KBAK, header ‖ clear key data). Returns the key, or `None` when the MAC fails.
pub fn tr31_d_unwrap_aes256(kbpk: &[u8], block: &str) -> Option<Vec<u8>> {
    let derive = |usage: u8| -> Vec<u8> {
        let mut k = Vec::new();
        for counter in 1u8..=2 {
            k.extend(aes_cmac(kbpk, &[counter, 0x00, usage, 0x00, 0x00, 0x04, 0x01, 0x00]));
        }
        k
    };
    let (kbek, kbak) = (derive(0), derive(1));
    let header_len = {
        // The fixed header is 16 characters; then the optional blocks (count at 12..14), each
        // with a two-character id and a two-hex-digit length (short form) that counts itself.
        let count: usize = block[12..14].parse().unwrap();
        let mut pos = 16;
        for _ in 0..count {
            let len = usize::from_str_radix(&block[pos + 2..pos + 4], 16).unwrap();
            assert_ne!(len, 0, "long-form lengths are not used at rest");
            pos += len;
        }
        pos
    };
    let (header, body) = block.split_at(header_len);
    let (enc_hex, mac_hex) = body.split_at(body.len() - 32);
    let enc = hex::decode(enc_hex).unwrap();
    let mac: [u8; 16] = hex::decode(mac_hex).unwrap().try_into().unwrap();
    let clear = aes_cbc(&kbek, &mac, &enc, openssl::symm::Mode::Decrypt);
    let mut macced = header.as_bytes().to_vec();
    macced.extend_from_slice(&clear);
    if aes_cmac(&kbak, &macced) != mac {
        return None;
    }
    let bits = usize::from(u16::from_be_bytes([clear[0], clear[1]]));
    Some(clear[2..2 + bits / 8].to_vec())
}

/// HMAC-SHA-256.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let pkey = PKey::hmac(key).unwrap();
    let mut s = Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).unwrap();
    s.update(data).unwrap();
    s.sign_to_vec().unwrap()
}

/// The KCV of a clear key, as [`Kcv`] documents it.
pub fn kcv(alg: KeyAlg, key: &[u8]) -> Kcv {
    match alg {
        KeyAlg::Des2 | KeyAlg::Des3 => Kcv::from_bytes(&tdes_ecb(key, &[0u8; 8])[..3]),
        KeyAlg::Aes128 | KeyAlg::Aes192 | KeyAlg::Aes256 => Kcv::from_bytes(&aes_cmac(key, &[0u8; 16])[..5]),
        KeyAlg::HmacSha256 => Kcv::from_bytes(&hmac_sha256(key, &[0u8; 32])[..3]),
    }
}

/// Open `IV(12) ‖ ciphertext ‖ tag(16)` with AES-GCM.
pub fn gcm_open(key: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let cipher = match key.len() {
        16 => Cipher::aes_128_gcm(),
        24 => Cipher::aes_192_gcm(),
        _ => Cipher::aes_256_gcm(),
    };
    let (iv, rest) = sealed.split_at(12);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    openssl::symm::decrypt_aead(cipher, key, Some(iv), aad, ct, tag)
}

/// Seal `n` components of `key` to `pk`, with their KCVs.
pub fn sealed_components(alg: KeyAlg, key: &[u8], n: usize, pk: &RsaPublic) -> (Vec<SealedComponent>, Vec<Kcv>) {
    let parts = split(alg, key, n);
    assert_eq!(xor(&parts), key);
    (parts.iter().map(|p| seal(pk, p)).collect(), parts.iter().map(|p| kcv(alg, p)).collect())
}

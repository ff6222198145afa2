//! Reference cryptography for expected values, built only on the `openssl` crate (OpenSSL 3),
//! never on hsm-sim's own code.

use openssl::bn::{BigNum, BigNumContext};
use openssl::pkey::PKey;
use openssl::sign::Signer;
use openssl::symm::{Cipher, Crypter, Mode};

/// A 16-byte DES2 key as the 24-byte K1‖K2‖K1 form OpenSSL's DES-EDE3 takes.
pub fn tdes24(key: &[u8]) -> Vec<u8> {
    match key.len() {
        16 => [key, &key[..8]].concat(),
        24 => key.to_vec(),
        8 => [key, key, key].concat(),
        n => panic!("TDES key of {n} bytes"),
    }
}

fn run(cipher: Cipher, key: &[u8], iv: Option<&[u8]>, data: &[u8], encrypt: bool, pad: bool) -> Vec<u8> {
    let mode = if encrypt { Mode::Encrypt } else { Mode::Decrypt };
    let mut c = Crypter::new(cipher, mode, key, iv).unwrap();
    c.pad(pad);
    let mut out = vec![0u8; data.len() + cipher.block_size() * 2];
    let mut n = c.update(data, &mut out).unwrap();
    n += c.finalize(&mut out[n..]).unwrap();
    out.truncate(n);
    out
}

/// 3DES-ECB without padding (key 8, 16 or 24 bytes).
pub fn tdes_ecb(key: &[u8], data: &[u8], encrypt: bool) -> Vec<u8> {
    run(Cipher::des_ede3_ecb(), &tdes24(key), None, data, encrypt, false)
}

/// 3DES-CBC without padding.
pub fn tdes_cbc(key: &[u8], iv: &[u8], data: &[u8], encrypt: bool) -> Vec<u8> {
    run(Cipher::des_ede3_cbc(), &tdes24(key), Some(iv), data, encrypt, false)
}

/// 3DES-CBC with PKCS#7 padding.
pub fn tdes_cbc_pad(key: &[u8], iv: &[u8], data: &[u8], encrypt: bool) -> Vec<u8> {
    run(Cipher::des_ede3_cbc(), &tdes24(key), Some(iv), data, encrypt, true)
}

fn aes_cipher(key: &[u8], cbc: bool) -> Cipher {
    match (key.len(), cbc) {
        (16, false) => Cipher::aes_128_ecb(),
        (24, false) => Cipher::aes_192_ecb(),
        (32, false) => Cipher::aes_256_ecb(),
        (16, true) => Cipher::aes_128_cbc(),
        (24, true) => Cipher::aes_192_cbc(),
        (32, true) => Cipher::aes_256_cbc(),
        (n, _) => panic!("AES key of {n} bytes"),
    }
}

/// AES-ECB without padding.
pub fn aes_ecb(key: &[u8], data: &[u8], encrypt: bool) -> Vec<u8> {
    run(aes_cipher(key, false), key, None, data, encrypt, false)
}

/// AES-CBC without padding.
pub fn aes_cbc(key: &[u8], iv: &[u8], data: &[u8], encrypt: bool) -> Vec<u8> {
    run(aes_cipher(key, true), key, Some(iv), data, encrypt, false)
}

/// AES-CBC with PKCS#7 padding.
pub fn aes_cbc_pad(key: &[u8], iv: &[u8], data: &[u8], encrypt: bool) -> Vec<u8> {
    run(aes_cipher(key, true), key, Some(iv), data, encrypt, true)
}

/// AES-GCM: ciphertext ‖ 16-byte tag.
pub fn aes_gcm(key: &[u8], iv: &[u8], aad: &[u8], data: &[u8]) -> Vec<u8> {
    let cipher = match key.len() {
        16 => Cipher::aes_128_gcm(),
        24 => Cipher::aes_192_gcm(),
        _ => Cipher::aes_256_gcm(),
    };
    let mut tag = [0u8; 16];
    let mut ct = openssl::symm::encrypt_aead(cipher, key, Some(iv), aad, data, &mut tag).unwrap();
    ct.extend_from_slice(&tag);
    ct
}

/// X9.24 check value of a DES/TDES key: 3DES-ECB(key, 0⁸), first 3 bytes.
pub fn kcv_des(key: &[u8]) -> Vec<u8> {
    tdes_ecb(key, &[0u8; 8], true)[..3].to_vec()
}

/// PKCS#11 check value of an AES key: AES-ECB(key, 0¹⁶), first 3 bytes.
pub fn kcv_aes(key: &[u8]) -> Vec<u8> {
    aes_ecb(key, &[0u8; 16], true)[..3].to_vec()
}

/// CMAC with the given CBC cipher (`des_ede3_cbc` or an AES CBC cipher).
pub fn cmac(cipher: Cipher, key: &[u8], data: &[u8]) -> Vec<u8> {
    let pkey = PKey::cmac(&cipher, key).unwrap();
    let mut s = Signer::new_without_digest(&pkey).unwrap();
    s.sign_oneshot_to_vec(data).unwrap()
}

/// 3DES CMAC (NIST SP 800-38B) with a 16- or 24-byte key.
pub fn tdes_cmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    cmac(Cipher::des_ede3_cbc(), &tdes24(key), data)
}

/// AES CMAC (RFC 4493).
pub fn aes_cmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    cmac(aes_cipher(key, true), key, data)
}

/// ISO 9797-1 padding method 1 (zeros to a block boundary; at least one block) or method 2
/// (`80` then zeros, always added).
pub fn iso9797_pad(data: &[u8], method: u8) -> Vec<u8> {
    let mut d = data.to_vec();
    match method {
        1 => {
            if d.is_empty() {
                d.resize(8, 0);
            }
            while !d.len().is_multiple_of(8) {
                d.push(0);
            }
        }
        2 => {
            d.push(0x80);
            while !d.len().is_multiple_of(8) {
                d.push(0);
            }
        }
        m => panic!("padding method {m}"),
    }
    d
}

/// ISO 9797-1 MAC algorithm 3 ("retail MAC") with a 16-byte key: single-DES CBC under K1 over
/// all blocks, then D(K2), E(K1) on the last. Single DES is run as DES-EDE3 with K‖K‖K because
/// OpenSSL 3 keeps plain DES in its legacy provider.
pub fn retail_mac(key: &[u8], data: &[u8], method: u8) -> Vec<u8> {
    assert_eq!(key.len(), 16);
    let (k1, k2) = key.split_at(8);
    let padded = iso9797_pad(data, method);
    let mut chain = [0u8; 8];
    for block in padded.chunks(8) {
        let x: Vec<u8> = block.iter().zip(chain.iter()).map(|(a, b)| a ^ b).collect();
        chain.copy_from_slice(&tdes_ecb(k1, &x, true));
    }
    let d = tdes_ecb(k2, &chain, false);
    tdes_ecb(k1, &d, true)
}

/// Set each byte to odd parity (DES key convention).
pub fn odd_parity(key: &[u8]) -> Vec<u8> {
    key.iter().map(|b| if (b & 0xFE).count_ones() % 2 == 0 { (b & 0xFE) | 1 } else { b & 0xFE }).collect()
}

/// Byte-wise XOR.
pub fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// `base^exp mod m` on big-endian byte strings, left-padded to `len` bytes.
pub fn mod_exp(base: &[u8], exp: &[u8], m: &[u8], len: usize) -> Vec<u8> {
    let mut ctx = BigNumContext::new().unwrap();
    let mut r = BigNum::new().unwrap();
    r.mod_exp(&bn(base), &bn(exp), &bn(m), &mut ctx).unwrap();
    r.to_vec_padded(i32::try_from(len).unwrap()).unwrap()
}

/// A `BigNum` from big-endian bytes.
pub fn bn(b: &[u8]) -> BigNum {
    BigNum::from_slice(b).unwrap()
}

/// Decimalise 16 hex digits the CVV/PVV way: the decimal digits left to right, then the
/// letters A–F mapped to 0–5 left to right; the first `n` digits.
pub fn decimalise(block: &[u8], n: usize) -> String {
    let hexs = hex::encode_upper(block);
    let mut out: String = hexs.chars().filter(char::is_ascii_digit).collect();
    out.extend(hexs.chars().filter(|c| c.is_ascii_alphabetic()).map(|c| char::from(b'0' + (c as u8 - b'A'))));
    out.truncate(n);
    out
}

/// BCD-pack a string of hex digits (even length).
pub fn bcd(digits: &str) -> Vec<u8> {
    hex::decode(digits).unwrap()
}

/// Visa PVV (emv.md §4.3): TSP = 11 rightmost PAN digits excluding the check digit ‖ PVKI ‖
/// 4 leftmost PIN digits; 3DES under the PVK; decimalise; 4 digits.
pub fn visa_pvv(pvk: &[u8], pan: &str, pvki: u8, pin: &str) -> String {
    let body = &pan[..pan.len() - 1];
    let tsp = format!("{}{}{}", &body[body.len() - 11..], pvki, &pin[..4]);
    decimalise(&tdes_ecb(pvk, &bcd(&tsp), true), 4)
}

/// IBM 3624 natural PIN and offset (emv.md §4.4).
pub fn ibm3624_offset(pvk: &[u8], pan: &str, table: &str, start: usize, length: usize, pad: u8, pin: &str) -> String {
    let mut v: String = pan[start..start + length].to_string();
    while v.len() < 16 {
        v.push(char::from_digit(u32::from(pad), 16).unwrap().to_ascii_uppercase());
    }
    let r = hex::encode_upper(tdes_ecb(pvk, &bcd(&v), true));
    let table = table.as_bytes();
    let natural: Vec<u8> = r.chars().map(|c| table[c.to_digit(16).unwrap() as usize] - b'0').collect();
    pin.bytes().zip(natural).map(|(p, n)| char::from(b'0' + (p - b'0' + 10 - n) % 10)).collect()
}

/// ISO 9564 format-0 PAN field: `0000` ‖ 12 rightmost PAN digits excluding the check digit.
pub fn iso0_pan_field(pan: &str) -> Vec<u8> {
    let body = &pan[..pan.len() - 1];
    bcd(&format!("0000{}", &body[body.len() - 12..]))
}

/// Clear ISO 9564 format-0 PIN block.
pub fn iso0_block(pin: &str, pan: &str) -> Vec<u8> {
    let mut f = format!("0{:X}{pin}", pin.len());
    while f.len() < 16 {
        f.push('F');
    }
    xor(&bcd(&f), &iso0_pan_field(pan))
}

/// Decode a clear format-0/3 block (after XOR with the PAN field) or format-1/2 block: returns
/// (format nibble, PIN, fill nibbles).
pub fn decode_pin_field(field: &[u8]) -> (u8, String, String) {
    let s = hex::encode_upper(field);
    let fmt = s.as_bytes()[0] - b'0';
    let n = usize::from_str_radix(&s[1..2], 16).unwrap();
    (fmt, s[2..2 + n].to_string(), s[2 + n..].to_string())
}

/// ISO 9564 format-4 PAN field (emv.md §4.5).
pub fn iso4_pan_field(pan: &str) -> Vec<u8> {
    let m = pan.len().saturating_sub(12);
    let mut s = format!("{m}{pan:0>12}");
    while s.len() < 32 {
        s.push('0');
    }
    bcd(&s)
}

/// Decrypt a format-4 block to its 16-byte PIN field: D(K, D(K, block) ⊕ PAN field).
pub fn iso4_pin_field(key: &[u8], block: &[u8], pan: &str) -> Vec<u8> {
    let inner = xor(&aes_ecb(key, block, false), &iso4_pan_field(pan));
    aes_ecb(key, &inner, false)
}

/// Encrypt a format-4 block for `pin` (fixed "random" half for reproducibility).
pub fn iso4_block(key: &[u8], pin: &str, pan: &str) -> Vec<u8> {
    let mut f = format!("4{:X}{pin}", pin.len());
    while f.len() < 16 {
        f.push('A');
    }
    f.push_str("0123456789ABCDEF");
    let pin_field = bcd(&f);
    let inner = xor(&aes_ecb(key, &pin_field, true), &iso4_pan_field(pan));
    aes_ecb(key, &inner, true)
}

//! Payment operations (EMV ICC master keys, CVV, PINs, ICC RSA keys) against hsm-sim (vendor
//! mechanisms inside the HSM) and SoftHSM 2 (standard mechanisms and the host path), with keys of
//! known clear TEST values put on the token as key components, and every result checked with
//! OpenSSL: encrypted outputs are decrypted under the known TEST keys, and PVVs, offsets and CVVs
//! recomputed here from the clear values (emv.md §6 known answers).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::reference::{self as r, h};
use common::{Backend, Recorder, token_host_path};
use openssl::bn::{BigNum, BigNumContext};
use openssl::symm::{Cipher, Crypter, Mode};
use quill_hsm::{
    CrtPadding, Hsm, HsmError, HsmPool, Kcv, KeyAlg, LogHostPath, PinRequest, PinVerification, Pkcs11Hsm, PoolConfig,
    SealedComponent, SlotConfig, WrappedKey, WrappedRsaKey,
};
use std::sync::Arc;

per_backend!(
    icc_master_keys_equal_the_known_answers,
    cvv_known_answers,
    generated_pins_translate_and_verify,
    icc_rsa_crt_components_decrypt,
    issuer_keys_rest_as_rsa_key_blocks_and_sign_raw,
    bad_input_is_named,
    host_path_policy_for_payment,
);

/// TEST keys (emv.md §6).
const IMK: &str = "0123456789ABCDEFFEDCBA9876543210";
const CVK: &str = "0123456789ABCDEFFEDCBA9876543210";
const PVK: &str = "0123456789ABCDEFFEDCBA9876543210";
/// TEST transport key (DEK) and PIN mailer key, odd parity.
const DEK: &str = "4A6D9EB52C0B31F7D5E9A4C1807F1F2F";
const MAILER: &str = "E3F7A4C4B0FD7CB51FA8EC1C6157469D";
const PIN_AES: &str = "00112233445566778899AABBCCDDEEFF";

struct Fixture {
    /// The clear SMK (TEST): the reference opens blocks at rest with it.
    smk: Vec<u8>,
    config: SlotConfig,
    hsm: Pkcs11Hsm,
    rec: Arc<Recorder>,
    imk: WrappedKey,
    cvk: WrappedKey,
    pvk: WrappedKey,
    dek: WrappedKey,
    mailer: WrappedKey,
    pin_aes: WrappedKey,
}

impl Fixture {
    fn new(b: Backend, name: &str) -> Option<Fixture> {
        let config = token_host_path(b, name)?;
        let rec = Recorder::new();
        let hsm = Pkcs11Hsm::open(&config, rec.clone()).unwrap();
        let smk = r::random(32);
        let (comps, kcvs) = components(&hsm, KeyAlg::Aes256, &smk);
        hsm.form_smk(&comps, &kcvs).unwrap();
        let des2 = |u: &str, v: &str| import(&hsm, KeyAlg::Des2, u, &r::odd_parity(h(v)));
        let (imk, cvk, pvk, dek, mailer) =
            (des2("E0", IMK), des2("C0", CVK), des2("V2", PVK), des2("D0", DEK), des2("P0", MAILER));
        let pin_aes = import(&hsm, KeyAlg::Aes128, "P0", &h(PIN_AES));
        Some(Fixture { smk, config, hsm, rec, imk, cvk, pvk, dek, mailer, pin_aes })
    }

    fn uses(&self, operation: &str) -> usize {
        self.rec.uses().iter().filter(|u| u.operation == operation).count()
    }
}

fn components(hsm: &dyn Hsm, alg: KeyAlg, key: &[u8]) -> (Vec<SealedComponent>, Vec<Kcv>) {
    let pk = hsm.transport_public_key().unwrap();
    let parts = r::split(alg, key, 2);
    (
        parts.iter().map(|p| SealedComponent(pk.seal(p).unwrap())).collect(),
        parts.iter().map(|p| Kcv::of_clear(alg, p).unwrap()).collect(),
    )
}

fn import(hsm: &dyn Hsm, alg: KeyAlg, usage: &str, key: &[u8]) -> WrappedKey {
    let (comps, kcvs) = components(hsm, alg, key);
    let w = hsm.import_components(alg, common::key_use(usage), &comps, &kcvs).unwrap();
    assert_eq!(w.kcv, Kcv::of_clear(alg, key).unwrap(), "{alg}");
    w
}

// ---- reference computations (OpenSSL only) -------------------------------------------------------

fn crypt(cipher: Cipher, mode: Mode, key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut c = Crypter::new(cipher, mode, key, None).unwrap();
    c.pad(false);
    let mut out = vec![0u8; data.len() + cipher.block_size()];
    let mut n = c.update(data, &mut out).unwrap();
    n += c.finalize(&mut out[n..]).unwrap();
    out.truncate(n);
    out
}

fn k3(key: &[u8]) -> Vec<u8> {
    if key.len() == 16 { [key, &key[..8]].concat() } else { key.to_vec() }
}

fn tdes_dec(key: &[u8], data: &[u8]) -> Vec<u8> {
    crypt(Cipher::des_ede3(), Mode::Decrypt, &k3(key), data)
}

/// Single DES as 3DES with K1 = K2 = K3 (OpenSSL 3 keeps single DES in the legacy provider).
fn des(key8: &[u8], data: &[u8], mode: Mode) -> Vec<u8> {
    crypt(Cipher::des_ede3(), mode, &[key8, key8, key8].concat(), data)
}

fn aes_dec(key: &[u8], data: &[u8]) -> Vec<u8> {
    crypt(Cipher::aes_128_ecb(), Mode::Decrypt, key, data)
}

fn bcd(digits: &str) -> Vec<u8> {
    h(digits)
}

fn decimalise(r: &[u8], n: usize) -> String {
    let hex = hex::encode_upper(r);
    let first = hex.chars().filter(char::is_ascii_digit);
    let second = hex.chars().filter(|c| !c.is_ascii_digit()).map(|c| char::from(b'0' + (c as u8 - b'A')));
    first.chain(second).take(n).collect()
}

/// CVV (emv.md §4.2) with OpenSSL DES.
fn cvv_ref(cvk: &[u8], pan: &str, yymm: &str, sc: &str) -> String {
    let d = format!("{:0<32}", format!("{pan}{yymm}{sc}"));
    let (a, b) = (&cvk[..8], &cvk[8..16]);
    let mut x = des(a, &bcd(&d[..16]), Mode::Encrypt);
    for (v, w) in x.iter_mut().zip(bcd(&d[16..])) {
        *v ^= w;
    }
    let x = des(a, &des(b, &des(a, &x, Mode::Encrypt), Mode::Decrypt), Mode::Encrypt);
    decimalise(&x, 3)
}

/// Visa PVV (emv.md §4.3).
fn pvv_ref(pvk: &[u8], pan: &str, pvki: u8, pin: &str) -> String {
    let body = &pan[..pan.len() - 1];
    let tsp = format!("{}{pvki}{}", &body[body.len() - 11..], &pin[..4]);
    decimalise(&r::tdes_ecb(pvk, &bcd(&tsp)), 4)
}

/// IBM 3624 natural PIN (emv.md §4.4).
fn ibm_natural(pvk: &[u8], pan: &str, table: &str, start: usize, len: usize, pad: char, n: usize) -> String {
    let mut vd = pan[start..start + len].to_owned();
    while vd.len() < 16 {
        vd.push(pad);
    }
    let r = hex::encode_upper(r::tdes_ecb(pvk, &h(&vd)));
    r.chars().take(n).map(|c| table.as_bytes()[c.to_digit(16).unwrap() as usize] as char).collect()
}

fn ibm_offset(pin: &str, natural: &str) -> String {
    pin.bytes().zip(natural.bytes()).map(|(p, n)| char::from(b'0' + (p - b'0' + 10 - (n - b'0')) % 10)).collect()
}

/// The PIN in a clear ISO 9564 PIN block (formats 0–3), checking code and fill.
fn pin_of_block(format: u8, clear: &[u8], pan: &str) -> String {
    let mut b = clear.to_vec();
    if format == 0 || format == 3 {
        let body = &pan[..pan.len() - 1];
        for (v, w) in b.iter_mut().zip(h(&format!("0000{}", &body[body.len() - 12..]))) {
            *v ^= w;
        }
    }
    let s = hex::encode_upper(&b);
    assert_eq!(s.as_bytes()[0], b'0' + format, "format code of {s}");
    let n = usize::from_str_radix(&s[1..2], 16).unwrap();
    let (pin, fill) = s[2..].split_at(n);
    assert!(pin.bytes().all(|c| c.is_ascii_digit()), "{s}");
    match format {
        0 | 2 => assert!(fill.bytes().all(|c| c == b'F'), "{s}"),
        3 => assert!(fill.bytes().all(|c| (b'A'..=b'F').contains(&c)), "{s}"),
        _ => {}
    }
    pin.to_owned()
}

/// The PIN in an ISO 9564 format 4 block under a clear AES key.
fn pin_of_iso4(key: &[u8], block: &[u8], pan: &str) -> String {
    let m = pan.len().saturating_sub(12);
    let pan_field = h(&format!("{:0<32}", format!("{m}{:0>12}", pan)));
    let mut x = aes_dec(key, block);
    for (v, w) in x.iter_mut().zip(pan_field) {
        *v ^= w;
    }
    let field = hex::encode_upper(aes_dec(key, &x));
    assert_eq!(&field[..1], "4", "{field}");
    let n = usize::from_str_radix(&field[1..2], 16).unwrap();
    assert!(field[2 + n..16].bytes().all(|c| c == b'A'), "{field}");
    field[2..2 + n].to_owned()
}

#[test]
fn references_reproduce_the_published_answers() {
    let k = h(CVK);
    assert_eq!(cvv_ref(&k, "4123456789012345", "8701", "101"), "561");
    assert_eq!(cvv_ref(&k, "1234567890123456", "9912", "220"), "170");
    assert_eq!(pvv_ref(&h(PVK), "1122334455667788", 3, "4524"), "4021");
    let natural = ibm_natural(&h(PVK), "1122334455667788", "1234567890123456", 0, 16, 'F', 4);
    assert_eq!(natural, "4524");
    assert_eq!(ibm_offset("4524", &natural), "0000");
    assert_eq!(pin_of_block(0, &h("041277CDDEEFF669"), "5544332211009966"), "1234");
    assert_eq!(pin_of_iso4(&h(PIN_AES), &h("E4BE5B623AF7E006AC319E5B93544564"), "1234567890123456"), "1234");
}

// ---- tests ---------------------------------------------------------------------------------------

fn icc_master_keys_equal_the_known_answers(b: Backend) {
    let Some(f) = Fixture::new(b, "pay-derive") else { return };
    let dek = r::odd_parity(h(DEK));
    // emv.md §6 #1 and #2 are Option A on 17-digit PANs: Y is the rightmost 16 digits of PAN ‖ PSN,
    // which 14-digit PANs give as well (Option A applies to them). #3 is Option B.
    let cases = [
        ("45678901234567", "01", "73AD54688CEF2934B0979857E3C719F1"),
        ("12345678901234", "45", "67F8292358083E5EA7AB7FDA58D53B6B"),
        ("12345678901234567", "01", "AD406D7F6D7570916D75E5DCAB8CF737"),
    ];
    for (pan, psn, want) in cases {
        let d = f.hsm.derive_icc_master_key(&f.imk, pan, psn, &f.dek).unwrap();
        let want = r::odd_parity(h(want));
        assert_eq!(d.encrypted.len(), 16);
        assert_eq!(tdes_dec(&dek, &d.encrypted), want, "PAN {pan}: the key under the DEK");
        assert_eq!(d.kcv, r::kcv(KeyAlg::Des2, &want), "PAN {pan}");
    }
    // Option A on a 16-digit PAN, recomputed with OpenSSL.
    let (pan, psn) = ("4761739001010010", "00");
    let y = h("6173900101001000");
    let yy: Vec<u8> = y.iter().chain(y.iter().map(|b| b ^ 0xFF).collect::<Vec<_>>().iter()).copied().collect();
    let want = r::odd_parity(r::tdes_ecb(&h(IMK), &yy));
    let d = f.hsm.derive_icc_master_key(&f.imk, pan, psn, &f.dek).unwrap();
    assert_eq!(tdes_dec(&dek, &d.encrypted), want);
    // On SoftHSM: each of the four derivations, and the IMK's and DEK's blocks at rest opened once
    // (then cached in the session).
    let expect_host = usize::from(b == Backend::SoftHsm) * (4 + 2);
    assert_eq!(f.uses("derive_icc_master_key"), expect_host);
}

fn cvv_known_answers(b: Backend) {
    let Some(f) = Fixture::new(b, "pay-cvv") else { return };
    assert_eq!(f.hsm.cvv(&f.cvk, "4123456789012345", "8701", "101").unwrap(), "561");
    assert_eq!(f.hsm.cvv(&f.cvk, "1234567890123456", "9912", "220").unwrap(), "170");
    let k = h(CVK);
    for (pan, sc) in [("4761739001010010", "999"), ("4761739001010010", "000"), ("4761739001010010123", "201")] {
        assert_eq!(f.hsm.cvv(&f.cvk, pan, "2812", sc).unwrap(), cvv_ref(&k, pan, "2812", sc), "{pan} {sc}");
    }
}

fn generated_pins_translate_and_verify(b: Backend) {
    let Some(f) = Fixture::new(b, "pay-pin") else { return };
    let (dek, mailer, pvk) = (r::odd_parity(h(DEK)), r::odd_parity(h(MAILER)), h(PVK));
    let pan = "4761739001010010";

    // Visa PVV, format 0 under the mailer key; translated to format 2 under the DEK (chip PIN).
    for _ in 0..3 {
        let req = PinRequest {
            pin_key: f.mailer.clone(),
            format: 0,
            pin_length: 4,
            exclude_weak: true,
            pan: pan.to_owned(),
            verification: PinVerification::VisaPvv { pvk: f.pvk.clone(), pvki: 1 },
        };
        let g = f.hsm.generate_pin(&req).unwrap();
        assert_eq!(g.encrypted_block.len(), 8);
        let pin = pin_of_block(0, &tdes_dec(&mailer, &g.encrypted_block), pan);
        assert_eq!(pin.len(), 4);
        assert_eq!(g.pvv_or_offset, pvv_ref(&pvk, pan, 1, &pin), "PVV of the generated PIN");
        let chip = f.hsm.translate_pin_block(&f.mailer, 0, &f.dek, 2, pan, &g.encrypted_block).unwrap();
        assert_eq!(pin_of_block(2, &tdes_dec(&dek, &chip), pan), pin, "format 2 under the DEK");
    }

    // IBM 3624 offset, 6 digits, format 3; translated to format 0 under the DEK.
    let table = "0123456789012345";
    let req = PinRequest {
        pin_key: f.mailer.clone(),
        format: 3,
        pin_length: 6,
        exclude_weak: true,
        pan: pan.to_owned(),
        verification: PinVerification::Ibm3624 {
            pvk: f.pvk.clone(),
            decimalisation: table.to_owned(),
            start: 3,
            length: 12,
            pad: 0xF,
        },
    };
    let g = f.hsm.generate_pin(&req).unwrap();
    let pin = pin_of_block(3, &tdes_dec(&mailer, &g.encrypted_block), pan);
    assert_eq!(pin.len(), 6);
    let natural = ibm_natural(&pvk, pan, table, 3, 12, 'F', 6);
    assert_eq!(g.pvv_or_offset, ibm_offset(&pin, &natural), "IBM 3624 offset of the generated PIN");
    let zpk = f.hsm.translate_pin_block(&f.mailer, 3, &f.dek, 0, pan, &g.encrypted_block).unwrap();
    assert_eq!(pin_of_block(0, &tdes_dec(&dek, &zpk), pan), pin);

    // Format 4 under an AES key, no verification value; translated to format 1 under the mailer key.
    let long_pan = "4761739001010010123";
    let req = PinRequest {
        pin_key: f.pin_aes.clone(),
        format: 4,
        pin_length: 5,
        exclude_weak: false,
        pan: long_pan.to_owned(),
        verification: PinVerification::None,
    };
    let g = f.hsm.generate_pin(&req).unwrap();
    assert_eq!((g.encrypted_block.len(), g.pvv_or_offset.as_str()), (16, ""));
    let pin = pin_of_iso4(&h(PIN_AES), &g.encrypted_block, long_pan);
    let one = f.hsm.translate_pin_block(&f.pin_aes, 4, &f.mailer, 1, long_pan, &g.encrypted_block).unwrap();
    assert_eq!(pin_of_block(1, &tdes_dec(&mailer, &one), long_pan), pin);
}

fn icc_rsa_crt_components_decrypt(b: Backend) {
    let Some(f) = Fixture::new(b, "pay-rsa") else { return };
    let dek = r::odd_parity(h(DEK));
    for (bits, padding) in [(1024u32, CrtPadding::Iso9797Method2), (1152, CrtPadding::None)] {
        let pair = f.hsm.generate_icc_rsa_key(bits, 3, &f.dek, padding).unwrap();
        assert_eq!(pair.public.bits(), bits as usize);
        assert_eq!(pair.public.exponent, vec![3]);
        let half = bits as usize / 16;
        let parts: Vec<BigNum> = pair
            .crt
            .iter()
            .map(|c| {
                let mut clear = tdes_dec(&dek, c);
                if padding == CrtPadding::Iso9797Method2 {
                    assert_eq!(clear.len(), half + 8);
                    assert_eq!(&clear[half..], &[0x80, 0, 0, 0, 0, 0, 0, 0]);
                }
                clear.truncate(half);
                BigNum::from_slice(&clear).unwrap()
            })
            .collect();
        let [p, q, dp, dq, qinv] = &parts[..] else { unreachable!() };
        let mut ctx = BigNumContext::new().unwrap();
        let mut n = BigNum::new().unwrap();
        n.checked_mul(p, q, &mut ctx).unwrap();
        assert_eq!(n.to_vec(), pair.public.modulus, "p·q = n");
        let one = BigNum::from_u32(1).unwrap();
        let e = BigNum::from_u32(3).unwrap();
        for (d, prime) in [(dp, p), (dq, q)] {
            let mut pm1 = BigNum::new().unwrap();
            pm1.checked_sub(prime, &one).unwrap();
            let mut x = BigNum::new().unwrap();
            x.mod_mul(&e, d, &pm1, &mut ctx).unwrap();
            assert_eq!(x, one, "e·d ≡ 1 mod (prime − 1)");
        }
        let mut x = BigNum::new().unwrap();
        x.mod_mul(qinv, q, p, &mut ctx).unwrap();
        assert_eq!(x, one, "qinv·q ≡ 1 mod p");
    }
}

/// An issuer key pair generated inside the HSM leaves only as a TR-31 version D block at rest
/// (algorithm R, usage S0, mode S, exportability N, key context 1, bound to its public key and
/// tenant), which an independent reference (OpenSSL, from the standard) opens under the KBPK of
/// the TEST SMK into a PKCS#8 key that OpenSSL parses as the same key pair. It signs raw blocks
/// that OpenSSL recovers with its public key; a block altered anywhere, a record given another
/// public key, a symmetric block in its place, or a token with another SMK are refused.
fn issuer_keys_rest_as_rsa_key_blocks_and_sign_raw(b: Backend) {
    let Some(f) = Fixture::new(b, "pay-issuer") else { return };
    let key = f.hsm.generate_rsa_key_pair(1152, 3, Some("bank-a")).unwrap();
    assert_eq!(key.public.bits(), 1152);
    assert_eq!(key.public.exponent, vec![3]);
    let text = std::str::from_utf8(&key.blob).unwrap().to_owned();
    let header = key.header().unwrap();
    assert_eq!(&text[..1], "D", "{text}");
    assert_eq!(&text[5..12], "S0RS00N", "usage S0, algorithm R, mode S, version 00, not exportable: {text}");
    assert_eq!(&text[14..16], "10", "key context 1 (storage): {text}");
    assert_eq!(key.owner().as_deref(), Some("bank-a"));
    assert_eq!(header.optional_block(quill_hsm::tr31::BlockId::Other(*b"0P")), Some(key.public.fingerprint().as_str()));
    // The reference opens it: the key data is a DER PKCS#8 RSA key whose public half is the record's.
    let kbpk = r::aes_cbc_encrypt(&f.smk, &[0u8; 16], b"QUILL KEY BLOCKS AT REST KBPK v1");
    let der = r::tr31_d_unwrap_aes256(&kbpk, &text).expect("the block opens under the TEST SMK's KBPK");
    let pkey = openssl::pkey::PKey::private_key_from_pkcs8(&der).expect("PKCS#8");
    let rsa = pkey.rsa().unwrap();
    assert!(rsa.check_key().unwrap());
    assert_eq!((rsa.n().to_vec(), rsa.e().to_vec()), (key.public.modulus.clone(), vec![3]));
    // The clear key shows nowhere in the block.
    let d = rsa.d().to_vec();
    assert!(!key.blob.windows(16).any(|w| d.windows(16).any(|m| m == w)));
    assert!(!text.contains(&hex::encode_upper(&d[..16])));

    let n = BigNum::from_slice(&key.public.modulus).unwrap();
    let e = BigNum::from_u32(3).unwrap();
    let mut ctx = BigNumContext::new().unwrap();
    let mut block = vec![0x6Au8; 144];
    block[1] = 0x04;
    block[143] = 0xBC;
    for i in 0..3u8 {
        block[10] = i;
        let sig = f.hsm.rsa_sign_raw(&key, &block).unwrap();
        assert_eq!(sig.len(), 144);
        let mut m = BigNum::new().unwrap();
        m.mod_exp(&BigNum::from_slice(&sig).unwrap(), &e, &n, &mut ctx).unwrap();
        assert_eq!(m.to_vec_padded(144).unwrap(), block, "sig^e mod n = block");
    }
    assert_misuse(f.hsm.rsa_sign_raw(&key, &block[..100]).unwrap_err(), "must be 144 bytes");
    assert_misuse(f.hsm.rsa_sign_raw(&key, &[0xFF; 144]).unwrap_err(), "below the modulus");
    assert_misuse(f.hsm.generate_rsa_key_pair(1004, 3, None).unwrap_err(), "steps of 8");

    // Attacks on the record, each refused as a key block (never a device error), none signing.
    let other = f.hsm.generate_rsa_key_pair(1152, 3, Some("bank-a")).unwrap();
    let refused = |k: &WrappedRsaKey, needle: &str| {
        let err = f.hsm.rsa_sign_raw(k, &block).unwrap_err();
        assert!(matches!(err, HsmError::KeyBlock { .. }), "{needle}: {err:?}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    };
    // One bit of the encrypted key data, or of the MAC.
    for at in [text.len() / 2, text.len() - 3] {
        let mut bad = key.clone();
        bad.blob[at] = if bad.blob[at] == b'0' { b'1' } else { b'0' };
        refused(&bad, "does not open");
    }
    // The header made exportable, or for another use: refused before opening; another key
    // version: its MAC no longer holds.
    for (at, to, needle) in [
        (11, b'E', "must be version D"),
        (6, b'1', "must be version D"),
        (8, b'N', "must be version D"),
        (10, b'1', "does not open"),
    ] {
        let mut bad = key.clone();
        bad.blob[at] = to;
        refused(&bad, needle);
    }
    // The tenant renamed in the header: the checks pass, the MAC does not.
    let mut renamed = key.clone();
    renamed.blob = text.replace("0T0Abank-a", "0T0Abank-b").into_bytes();
    assert_ne!(renamed.blob, key.blob);
    refused(&renamed, "does not open");
    // Another key's public half in the record, or another key's block under this public key.
    refused(&WrappedRsaKey { public: other.public.clone(), ..key.clone() }, "bound to public key");
    refused(&WrappedRsaKey { blob: other.blob.clone(), ..key.clone() }, "bound to public key");
    // A symmetric key's block in its place.
    refused(
        &WrappedRsaKey { blob: f.dek.blob.clone(), ..key.clone() },
        "must be version D, key context 1, algorithm R",
    );
    // And the RSA block as a symmetric key's.
    let err = f.hsm.kcv(&WrappedKey { blob: key.blob.clone(), ..f.dek.clone() }).unwrap_err();
    assert!(matches!(err, HsmError::KeyBlock { .. }), "{err:?}");
    assert!(f.hsm.rsa_sign_raw(&other, &block).is_ok(), "the other key still signs");
    // Another token with another SMK refuses it before unwrapping.
    let Some(second) = Fixture::new(b, "pay-issuer-2") else { return };
    let err = second.hsm.rsa_sign_raw(&key, &block).unwrap_err();
    assert!(matches!(err, HsmError::WrongSmk { .. }), "{err:?}");
}

fn assert_misuse(e: HsmError, needle: &str) {
    assert!(matches!(e, HsmError::Misuse { .. }), "expected Misuse, got {e:?}");
    assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
    assert!(!e.is_device_error());
}

fn bad_input_is_named(b: Backend) {
    let Some(f) = Fixture::new(b, "pay-bad") else { return };
    let before = f.rec.uses().len();
    let hsm = &f.hsm;
    assert_misuse(hsm.derive_icc_master_key(&f.imk, "41234567890A2345", "00", &f.dek).unwrap_err(), "PAN");
    assert_misuse(hsm.derive_icc_master_key(&f.imk, "4123456789012345", "1", &f.dek).unwrap_err(), "sequence");
    assert_misuse(hsm.derive_icc_master_key(&f.imk, "4123456789012345", "0A", &f.dek).unwrap_err(), "sequence");
    assert_misuse(hsm.derive_icc_master_key(&f.pin_aes, "4123456789012345", "00", &f.dek).unwrap_err(), "IMK");
    assert_misuse(hsm.derive_icc_master_key(&f.imk, "4123456789012345", "00", &f.pin_aes).unwrap_err(), "transport");
    assert_misuse(hsm.cvv(&f.pin_aes, "4123456789012345", "8701", "101").unwrap_err(), "CVK");
    assert_misuse(hsm.cvv(&f.cvk, "4123456789012345", "87011", "101").unwrap_err(), "expiry");
    assert_misuse(hsm.cvv(&f.cvk, "4123456789012345", "8701", "1O1").unwrap_err(), "service code");
    let mut req = PinRequest {
        pin_key: f.mailer.clone(),
        format: 5,
        pin_length: 4,
        exclude_weak: true,
        pan: "4123456789012345".to_owned(),
        verification: PinVerification::None,
    };
    assert_misuse(hsm.generate_pin(&req).unwrap_err(), "format 5");
    req.format = 4;
    assert_misuse(hsm.generate_pin(&req).unwrap_err(), "AES");
    req.format = 0;
    req.pin_length = 13;
    assert_misuse(hsm.generate_pin(&req).unwrap_err(), "PIN length");
    req.pin_length = 4;
    req.verification = PinVerification::VisaPvv { pvk: f.pvk.clone(), pvki: 10 };
    assert_misuse(hsm.generate_pin(&req).unwrap_err(), "PVKI");
    req.verification = PinVerification::Ibm3624 {
        pvk: f.pvk.clone(),
        decimalisation: "0123456789012345".to_owned(),
        start: 10,
        length: 12,
        pad: 15,
    };
    assert_misuse(hsm.generate_pin(&req).unwrap_err(), "runs past");
    let pan = "4123456789012345";
    assert_misuse(hsm.translate_pin_block(&f.mailer, 0, &f.dek, 2, pan, &[0u8; 7]).unwrap_err(), "8 bytes");
    assert_misuse(hsm.generate_icc_rsa_key(1004, 3, &f.dek, CrtPadding::Zeros).unwrap_err(), "steps of 8");
    assert_misuse(hsm.generate_icc_rsa_key(1024, 4, &f.dek, CrtPadding::Zeros).unwrap_err(), "odd");
    assert_misuse(hsm.generate_icc_rsa_key(1032, 3, &f.dek, CrtPadding::None).unwrap_err(), "padding");
    assert_eq!(f.rec.uses().len(), before, "bad input is refused before the host path");
    // A block that is not a PIN block under that key: the same error from every module.
    let g = hsm
        .generate_pin(&PinRequest {
            pin_key: f.mailer.clone(),
            format: 0,
            pin_length: 4,
            exclude_weak: true,
            pan: pan.to_owned(),
            verification: PinVerification::None,
        })
        .unwrap();
    // Under another PIN key the block does not decrypt to a valid one; the DEK is no PIN key at
    // all, and its block at rest says so before anything is decrypted.
    let other = import(&f.hsm, KeyAlg::Des2, "P0", &r::odd_parity(h("0123456789ABCDEFFEDCBA9876543210")));
    assert_misuse(
        hsm.translate_pin_block(&other, 0, &f.mailer, 2, pan, &g.encrypted_block).unwrap_err(),
        "does not decrypt to a valid PIN block",
    );
    let e = hsm.translate_pin_block(&f.dek, 0, &f.mailer, 2, pan, &g.encrypted_block).unwrap_err();
    assert!(matches!(&e, HsmError::KeyBlock { reason, .. } if reason.contains("usage D0")), "{e:?}");
}

fn host_path_policy_for_payment(b: Backend) {
    let Some(f) = Fixture::new(b, "pay-policy") else { return };
    let mut strict = f.config.clone();
    strict.allow_host_key_material = false;
    let rec = Recorder::new();
    let hsm = Pkcs11Hsm::open(&strict, rec.clone()).unwrap();
    let pan = "4123456789012345";
    let req = PinRequest {
        pin_key: f.mailer.clone(),
        format: 0,
        pin_length: 4,
        exclude_weak: true,
        pan: pan.to_owned(),
        verification: PinVerification::VisaPvv { pvk: f.pvk.clone(), pvki: 1 },
    };
    let results: Vec<(&str, Result<(), HsmError>)> = vec![
        ("derive_icc_master_key", hsm.derive_icc_master_key(&f.imk, pan, "00", &f.dek).map(drop)),
        ("cvv", hsm.cvv(&f.cvk, pan, "8701", "101").map(drop)),
        ("generate_pin", hsm.generate_pin(&req).map(drop)),
        ("translate_pin_block", hsm.translate_pin_block(&f.mailer, 0, &f.dek, 2, pan, &[0u8; 8]).map(drop)),
        ("generate_icc_rsa_key", hsm.generate_icc_rsa_key(1024, 3, &f.dek, CrtPadding::Zeros).map(drop)),
    ];
    for (op, r) in results {
        match b {
            Backend::SoftHsm => {
                let e = r.unwrap_err();
                assert!(matches!(e, HsmError::HostPathRefused { .. }), "{op}: {e:?}");
                assert_eq!(e.operation(), op);
            }
            Backend::Sim if op == "translate_pin_block" => {
                // Native; the all-zero block is no PIN block under the mailer key.
                assert_misuse(r.unwrap_err(), "does not decrypt");
            }
            Backend::Sim => r.unwrap_or_else(|e| panic!("{op}: {e}")),
        }
    }
    assert!(rec.uses().is_empty(), "nothing reported: {:?}", rec.uses());
    if b == Backend::Sim {
        assert!(f.rec.uses().is_empty(), "hsm-sim never takes the host path: {:?}", f.rec.uses());
    }
}

#[test]
fn pool_forwards_payment_operations() {
    let Some(a) = common::token(Backend::Sim, "pay-pool-a") else { return };
    let Some(b) = common::token(Backend::Sim, "pay-pool-b") else { return };
    let mut cfg = PoolConfig::new(vec![a, b]);
    cfg.probe_interval_ms = 100;
    let pool = HsmPool::open(&cfg, Arc::new(LogHostPath)).unwrap();
    let (comps, kcvs) = components(&pool, KeyAlg::Aes256, &r::random(32));
    pool.form_smk(&comps, &kcvs).unwrap();
    let imk = import(&pool, KeyAlg::Des2, "E0", &h(IMK));
    let dek = import(&pool, KeyAlg::Des2, "D0", &r::odd_parity(h(DEK)));
    let cvk = import(&pool, KeyAlg::Des2, "C0", &h(CVK));
    for _ in 0..4 {
        let d = pool.derive_icc_master_key(&imk, "12345678901234567", "01", &dek).unwrap();
        assert_eq!(
            tdes_dec(&r::odd_parity(h(DEK)), &d.encrypted),
            r::odd_parity(h("AD406D7F6D7570916D75E5DCAB8CF737"))
        );
        assert_eq!(pool.cvv(&cvk, "4123456789012345", "8701", "101").unwrap(), "561");
        let e = pool.cvv(&cvk, "4123456789O12345", "8701", "101").unwrap_err();
        assert!(matches!(e, HsmError::Misuse { .. }), "{e:?}");
    }
    let pair = pool.generate_icc_rsa_key(1024, 3, &dek, CrtPadding::Iso9797Method2).unwrap();
    assert_eq!(pair.public.bits(), 1024);
    assert!(pool.status().iter().all(|s| s.state == quill_hsm::SlotState::Healthy), "{:?}", pool.status());
}

//! The vendor payment mechanisms (hsm-sim/README.md) through `cryptoki`'s
//! `VendorDefinedMechanism`, against the known answers of emv.md §6 (`testdata/emv_kat.toml`)
//! and reference computations with the `openssl` crate.
#![allow(clippy::unwrap_used)]

mod common;

use common::reference as r;
use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use openssl::bn::{BigNum, BigNumContext};

const OPTION_A: u64 = 0xD155_0001;
const OPTION_B: u64 = 0xD155_0002;
const CVV: u64 = 0xD155_0010;
const VISA_PVV: u64 = 0xD155_0011;
const IBM3624_OFFSET: u64 = 0xD155_0012;
const PIN_GENERATE: u64 = 0xD155_0020;
const PIN_TRANSLATE: u64 = 0xD155_0021;
const CRT_COMPONENT_WRAP: u64 = 0xD155_0030;
const KEY_COMPONENTS_XOR: u64 = 0xD155_0040;

/// The PIN encryption key of these tests (known, so the test can build and read PIN blocks).
const PEK: &str = "0E0D0C0B0A090807 1011121314151617";
/// A second PIN key (translation destination).
const PEK2: &str = "7A6B5C4D3E2F1001 2233445566778899";

fn kat() -> toml::Table {
    testdata("emv_kat.toml")
}

fn clear_des2() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::DES2),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Encrypt(true),
    ]
}

fn handle(o: ObjectHandle) -> Vec<u8> {
    ulong(o.handle())
}

fn check_mk(s: &Session, mech: u64, t: &toml::Table, name: &str) {
    let imk_v = thex(t, name, "imk");
    let (pan, psn) = (tstr(t, name, "pan"), tstr(t, name, "psn"));
    let want = thex(t, name, "mk");
    let imk = des_key(s, &imk_v, &[]);
    let param = [digits(&pan), psn.as_bytes().to_vec()].concat();
    // Sensitive result: compare by KCV.
    let mk = s
        .derive_key(
            &vendor(mech, &param),
            imk,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::DES2),
                Attribute::Token(false),
                Attribute::Sensitive(true),
            ],
        )
        .unwrap();
    assert_eq!(hex::encode_upper(kcv(s, mk)), hex::encode_upper(r::kcv_des(&want)), "{name}: ICC MK check value");
    // Extractable, non-sensitive result: compare the value after odd-parity normalisation.
    let mk = s.derive_key(&vendor(mech, &param), imk, &clear_des2()).unwrap();
    let v = bytes(s, mk, AttributeType::Value);
    assert_eq!(hex::encode_upper(r::odd_parity(&v)), hex::encode_upper(r::odd_parity(&want)), "{name}: ICC MK value");
    assert_eq!(v, r::odd_parity(&v), "{name}: README promises odd parity");
}

#[test]
fn emv_option_a_kats_1_2() {
    let t = kat();
    let s = hsm().session();
    check_mk(&s, OPTION_A, &t, "option_a_1");
    check_mk(&s, OPTION_A, &t, "option_a_2");
}

#[test]
fn emv_option_b_kat_3() {
    let t = kat();
    let s = hsm().session();
    check_mk(&s, OPTION_B, &t, "option_b_3");
    // For a PAN of 16 digits or fewer Option B equals Option A.
    let imk = des_key(&s, &thex(&t, "option_b_3", "imk"), &[]);
    let param = [digits("5413330089012345"), b"02".to_vec()].concat();
    let a = s.derive_key(&vendor(OPTION_A, &param), imk, &clear_des2()).unwrap();
    let b = s.derive_key(&vendor(OPTION_B, &param), imk, &clear_des2()).unwrap();
    assert_eq!(bytes(&s, a, AttributeType::Value), bytes(&s, b, AttributeType::Value));
    // Option A equals the published construction (ECB over Y ‖ Y⊕FF) computed with OpenSSL.
    let x = "541333008901234502"; // PAN ‖ PSN; Y = its rightmost 16 digits
    let y = r::bcd(&x[x.len() - 16..]);
    let z =
        r::tdes_ecb(&thex(&t, "option_b_3", "imk"), &[y.clone(), y.iter().map(|b| b ^ 0xFF).collect()].concat(), true);
    assert_eq!(bytes(&s, a, AttributeType::Value), r::odd_parity(&z));
}

#[test]
fn cvv_kats_8_9() {
    let t = kat();
    let s = hsm().session();
    for name in ["cvv_8", "cvv_9"] {
        let cvk = des_key(&s, &thex(&t, name, "cvk"), &[]);
        let data = format!("{}{}{}", tstr(&t, name, "pan"), tstr(&t, name, "expiry"), tstr(&t, name, "service_code"));
        let out = s.sign(&vendor(CVV, &[]), cvk, data.as_bytes()).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), tstr(&t, name, "cvv"), "{name}");
    }
}

/// The encrypted format-0 block of `pin` under `pek` (made with C_Encrypt in the module).
fn encrypted_iso0(s: &Session, pek: ObjectHandle, pek_v: &[u8], pin: &str, pan: &str) -> Vec<u8> {
    let block = r::iso0_block(pin, pan);
    let enc = s.encrypt(&Mechanism::Des3Ecb, pek, &block).unwrap();
    assert_eq!(enc, r::tdes_ecb(pek_v, &block, true));
    enc
}

#[test]
fn iso0_block_builder_matches_kat_12() {
    let t = kat();
    assert_eq!(
        hex::encode_upper(r::iso0_block(&tstr(&t, "iso0_12", "pin"), &tstr(&t, "iso0_12", "pan"))),
        tstr(&t, "iso0_12", "block")
    );
}

#[test]
fn visa_pvv_kat_10() {
    let t = kat();
    let s = hsm().session();
    let (pvk_v, pan, pin) = (thex(&t, "pvv_10", "pvk"), tstr(&t, "pvv_10", "pan"), tstr(&t, "pvv_10", "pin"));
    let pvki = tint(&t, "pvv_10", "pvki") as u8;
    let want = tstr(&t, "pvv_10", "pvv");
    assert_eq!(r::visa_pvv(&pvk_v, &pan, pvki, &pin), want, "the test's reference PVV agrees with the KAT");
    let pvk = des_key(&s, &pvk_v, &[]);
    let pek_v = h(PEK);
    let pek = des_key(&s, &pek_v, &[]);
    let enc = encrypted_iso0(&s, pek, &pek_v, &pin, &pan);
    let param = [handle(pek), vec![0, pvki], digits(&pan)].concat();
    let out = s.sign(&vendor(VISA_PVV, &param), pvk, &enc).unwrap();
    assert_eq!(String::from_utf8_lossy(&out), want, "CKM_QUILL_VISA_PVV");
}

fn ibm_param(pek: ObjectHandle, format: u8, table: &str, start: u8, length: u8, pad: u8, pan: &str) -> Vec<u8> {
    [handle(pek), vec![format], table.as_bytes().to_vec(), vec![start, length, pad], digits(pan)].concat()
}

#[test]
fn ibm3624_offset_kat_11() {
    let t = kat();
    let s = hsm().session();
    let n = "ibm3624_11";
    let (pvk_v, pan, pin, table) = (thex(&t, n, "pvk"), tstr(&t, n, "pan"), tstr(&t, n, "pin"), tstr(&t, n, "table"));
    let (start, length, pad) = (tint(&t, n, "start") as u8, tint(&t, n, "length") as u8, tint(&t, n, "pad") as u8);
    let want = tstr(&t, n, "offset");
    assert_eq!(
        r::ibm3624_offset(&pvk_v, &pan, &table, start.into(), length.into(), pad, &pin),
        want,
        "reference agrees with the KAT"
    );
    let pvk = des_key(&s, &pvk_v, &[]);
    let pek_v = h(PEK);
    let pek = des_key(&s, &pek_v, &[]);
    let enc = encrypted_iso0(&s, pek, &pek_v, &pin, &pan);
    let out = s.sign(&vendor(IBM3624_OFFSET, &ibm_param(pek, 0, &table, start, length, pad, &pan)), pvk, &enc).unwrap();
    assert_eq!(String::from_utf8_lossy(&out), want, "CKM_QUILL_IBM3624_OFFSET");
    // Another PIN, 6 digits, 12 PAN digits from position 3: agrees with the reference.
    let pin6 = "739105";
    let enc = encrypted_iso0(&s, pek, &pek_v, pin6, &pan);
    let out = s.sign(&vendor(IBM3624_OFFSET, &ibm_param(pek, 0, &table, 3, 12, 15, &pan)), pvk, &enc).unwrap();
    assert_eq!(String::from_utf8_lossy(&out), r::ibm3624_offset(&pvk_v, &pan, &table, 3, 12, 15, pin6));
}

fn translate_param(src: ObjectHandle, from: u8, to: u8, pan: &str) -> Vec<u8> {
    [handle(src), vec![from, to], digits(pan)].concat()
}

#[test]
fn pin_translate_iso0_kat_12_and_other_formats() {
    let t = kat();
    let s = hsm().session();
    let (pin, pan, want) = (tstr(&t, "iso0_12", "pin"), tstr(&t, "iso0_12", "pan"), tstr(&t, "iso0_12", "block"));
    let (src_v, dst_v) = (h(PEK), h(PEK2));
    let src = des_key(&s, &src_v, &[]);
    let dst = des_key(&s, &dst_v, &[]);
    let enc = encrypted_iso0(&s, src, &src_v, &pin, &pan);
    // 0 → 0 under another key.
    let out = s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(src, 0, 0, &pan)), dst, &enc).unwrap();
    assert_eq!(out.len(), 8);
    let clear = s.decrypt(&Mechanism::Des3Ecb, dst, &out).unwrap();
    assert_eq!(hex::encode_upper(&clear), want, "format 0 → format 0");
    // 0 → 1: `1 N PIN` + fill, no PAN.
    let out = s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(src, 0, 1, &pan)), dst, &enc).unwrap();
    let (f, p, _) = r::decode_pin_field(&r::tdes_ecb(&dst_v, &out, false));
    assert_eq!((f, p.as_str()), (1, pin.as_str()), "format 0 → format 1");
    // 0 → 2: `2 N PIN F…F`.
    let out = s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(src, 0, 2, &pan)), dst, &enc).unwrap();
    assert_eq!(hex::encode_upper(r::tdes_ecb(&dst_v, &out, false)), "241234FFFFFFFFFF", "format 0 → format 2");
    // 0 → 3: `3 N PIN` + A–F fill, XOR the PAN field.
    let out = s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(src, 0, 3, &pan)), dst, &enc).unwrap();
    let field = r::xor(&r::tdes_ecb(&dst_v, &out, false), &r::iso0_pan_field(&pan));
    let (f, p, fill) = r::decode_pin_field(&field);
    assert_eq!((f, p.as_str()), (3, pin.as_str()), "format 0 → format 3");
    assert!(fill.chars().all(|c| ('A'..='F').contains(&c)), "format 3 fill must be A–F, got {fill}");
    // And back from 3 to 0.
    let back = s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(dst, 3, 0, &pan)), src, &out).unwrap();
    assert_eq!(hex::encode_upper(r::tdes_ecb(&src_v, &back, false)), want, "format 3 → format 0");
    // A wrong PAN makes the source block invalid (the PIN field no longer decodes) or yields a
    // different block; it must never reproduce the right one.
    if let Ok(o) = s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(src, 0, 0, "5544332211009974")), dst, &enc) {
        assert_ne!(hex::encode_upper(r::tdes_ecb(&dst_v, &o, false)), want);
    }
}

#[test]
fn iso4_kat_13_round_trip_via_translate() {
    let t = kat();
    let s = hsm().session();
    let (aes_v, pan, block, pin) = (
        thex(&t, "iso4_13", "key"),
        tstr(&t, "iso4_13", "pan"),
        thex(&t, "iso4_13", "block"),
        tstr(&t, "iso4_13", "pin"),
    );
    // The test's own format-4 decoding agrees with the KAT.
    let (f, p, fill) = r::decode_pin_field(&r::iso4_pin_field(&aes_v, &block, &pan)[..8]);
    assert_eq!((f, p.as_str(), fill.as_str()), (4, pin.as_str(), "AAAAAAAAAA"));
    let aes = aes_key(&s, &aes_v, &[]);
    let des_v = h(PEK);
    let des = des_key(&s, &des_v, &[]);
    // 4 (AES) → 0 (DES2).
    let out = s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(aes, 4, 0, &pan)), des, &block).unwrap();
    assert_eq!(
        hex::encode_upper(r::tdes_ecb(&des_v, &out, false)),
        hex::encode_upper(r::iso0_block(&pin, &pan)),
        "format 4 → 0"
    );
    // 0 (DES2) → 4 (AES): decodes to the same PIN.
    let out4 = s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(des, 0, 4, &pan)), aes, &out).unwrap();
    assert_eq!(out4.len(), 16);
    let (f, p, fill) = r::decode_pin_field(&r::iso4_pin_field(&aes_v, &out4, &pan)[..8]);
    assert_eq!((f, p.as_str(), fill.as_str()), (4, pin.as_str(), "AAAAAAAAAA"), "format 0 → 4");
    // And a block the test made itself (other random half) translates back.
    let mine = r::iso4_block(&aes_v, "98765", &pan);
    let out = s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(aes, 4, 0, &pan)), des, &mine).unwrap();
    assert_eq!(r::tdes_ecb(&des_v, &out, false), r::iso0_block("98765", &pan));
}

#[allow(clippy::too_many_arguments)]
fn generate_param(
    pvk: Option<ObjectHandle>,
    method: u8,
    format: u8,
    len: u8,
    weak: u8,
    pvki: u8,
    table: &str,
    start: u8,
    vlen: u8,
    pad: u8,
    pan: &str,
) -> Vec<u8> {
    [
        ulong(pvk.map_or(0, |k| k.handle())),
        vec![method, format, len, weak, pvki],
        table.as_bytes().to_vec(),
        vec![start, vlen, pad],
        digits(pan),
    ]
    .concat()
}

fn is_weak(pin: &str) -> bool {
    let d: Vec<i32> = pin.bytes().map(|b| i32::from(b - b'0')).collect();
    let same = d.iter().all(|x| *x == d[0]);
    let up = d.windows(2).all(|w| (w[1] - w[0]).rem_euclid(10) == 1);
    let down = d.windows(2).all(|w| (w[0] - w[1]).rem_euclid(10) == 1);
    same || up || down
}

#[test]
fn pin_generate_methods_are_consistent() {
    let s = hsm().session();
    let pvk_v = h("0123456789ABCDEFFEDCBA9876543210");
    let pvk = des_key(&s, &pvk_v, &[]);
    let pek_v = h(PEK);
    let pek = des_key(&s, &pek_v, &[]);
    let pan = "4000001234567899";
    let table = "0123456789012345";
    let mut pins = Vec::new();
    // Method 1: Visa PVV.
    for _ in 0..3 {
        let out = s
            .encrypt(&vendor(PIN_GENERATE, &generate_param(Some(pvk), 1, 0, 4, 1, 1, table, 3, 12, 15, pan)), pek, &[])
            .unwrap();
        assert_eq!(out.len(), 8 + 4, "block ‖ PVV");
        let (block, pvv) = (&out[..8], String::from_utf8(out[8..].to_vec()).unwrap());
        let field = r::xor(&s.decrypt(&Mechanism::Des3Ecb, pek, block).unwrap(), &r::iso0_pan_field(pan));
        let (f, pin, fill) = r::decode_pin_field(&field);
        assert_eq!(f, 0, "format 0 block");
        assert_eq!(pin.len(), 4);
        assert!(pin.bytes().all(|b| b.is_ascii_digit()), "PIN {pin}");
        assert!(fill.chars().all(|c| c == 'F'), "format 0 fill: {fill}");
        assert!(!is_weak(&pin), "excludeWeak=1 produced weak PIN {pin}");
        assert_eq!(pvv, r::visa_pvv(&pvk_v, pan, 1, &pin), "PVV of the generated PIN");
        let again = s.sign(&vendor(VISA_PVV, &[handle(pek), vec![0, 1], digits(pan)].concat()), pvk, block).unwrap();
        assert_eq!(String::from_utf8(again).unwrap(), pvv, "CKM_QUILL_VISA_PVV on the generated block");
        pins.push(pin);
    }
    // Method 2: IBM 3624 offset, PIN lengths 4 and 6.
    for len in [4u8, 6] {
        let out = s
            .encrypt(
                &vendor(PIN_GENERATE, &generate_param(Some(pvk), 2, 0, len, 1, 0, table, 3, 12, 15, pan)),
                pek,
                &[],
            )
            .unwrap();
        assert_eq!(out.len(), 8 + usize::from(len), "block ‖ offset");
        let (block, offset) = (&out[..8], String::from_utf8(out[8..].to_vec()).unwrap());
        let field = r::xor(&s.decrypt(&Mechanism::Des3Ecb, pek, block).unwrap(), &r::iso0_pan_field(pan));
        let (f, pin, _) = r::decode_pin_field(&field);
        assert_eq!((f, pin.len()), (0, usize::from(len)));
        assert_eq!(offset, r::ibm3624_offset(&pvk_v, pan, table, 3, 12, 15, &pin), "offset of the generated PIN");
        let again = s.sign(&vendor(IBM3624_OFFSET, &ibm_param(pek, 0, table, 3, 12, 15, pan)), pvk, block).unwrap();
        assert_eq!(String::from_utf8(again).unwrap(), offset, "CKM_QUILL_IBM3624_OFFSET on the generated block");
        pins.push(pin);
    }
    // Method 0 with format 4 under an AES key: 16-byte block only.
    let aes_v = h("00112233445566778899AABBCCDDEEFF");
    let aes = aes_key(&s, &aes_v, &[]);
    let out = s
        .encrypt(&vendor(PIN_GENERATE, &generate_param(None, 0, 4, 5, 1, 0, table, 0, 12, 15, pan)), aes, &[])
        .unwrap();
    assert_eq!(out.len(), 16);
    let (f, pin, fill) = r::decode_pin_field(&r::iso4_pin_field(&aes_v, &out, pan)[..8]);
    assert_eq!((f, pin.len()), (4, 5));
    assert!(fill.chars().all(|c| c == 'A'));
    pins.push(pin);
    eprintln!("generated PINs (test keys only): {}", pins.len());
}

#[test]
fn dgi_9000_kcvs_kat_18() {
    let t = kat();
    let s = hsm().session();
    let mut all = Vec::new();
    for k in thex_list(&t, "dgi9000_18", "keys") {
        let o = des_key(&s, &k, &[]);
        all.extend(kcv(&s, o));
    }
    assert_eq!(hex::encode_upper(all), tstr(&t, "dgi9000_18", "kcvs"));
}

#[test]
fn rsa_crt_component_export_1152() {
    let s = hsm().session();
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ModulusBits(1152u64.into()),
                Attribute::PublicExponent(vec![3]),
                Attribute::Verify(true),
            ],
            &[Attribute::Token(false), Attribute::Sensitive(true), Attribute::Extractable(true), Attribute::Sign(true)],
        )
        .unwrap();
    let n = bytes(&s, public, AttributeType::Modulus);
    assert_eq!(n.len(), 144);
    let kek_v = h("C1C2C4C7C8CBCDCE 0123456789ABCDEF 89ABCDEF01234567");
    let kek = des_key(&s, &kek_v, &[Attribute::Wrap(true)]);
    let mut comps = Vec::new();
    for c in 1u8..=5 {
        let wrapped = s.wrap_key(&vendor(CRT_COMPONENT_WRAP, &[c, 0, 0]), kek, private).unwrap();
        assert_eq!(wrapped.len(), 72, "component {c}: half the modulus, no padding");
        comps.push(r::tdes_ecb(&kek_v, &wrapped, false));
    }
    let (p, q, dp, dq, qinv) =
        (r::bn(&comps[0]), r::bn(&comps[1]), r::bn(&comps[2]), r::bn(&comps[3]), r::bn(&comps[4]));
    let mut ctx = BigNumContext::new().unwrap();
    let mut pq = BigNum::new().unwrap();
    pq.checked_mul(&p, &q, &mut ctx).unwrap();
    assert_eq!(pq, r::bn(&n), "p·q must equal CKA_MODULUS");
    let one = BigNum::from_u32(1).unwrap();
    let e = BigNum::from_u32(3).unwrap();
    for (d, prime, name) in [(&dp, &p, "dp"), (&dq, &q, "dq")] {
        let mut pm1 = BigNum::new().unwrap();
        pm1.checked_sub(prime, &one).unwrap();
        let mut ed = BigNum::new().unwrap();
        ed.mod_mul(&e, d, &pm1, &mut ctx).unwrap();
        assert_eq!(ed, one, "e·{name} ≡ 1 mod (prime−1)");
    }
    let mut t = BigNum::new().unwrap();
    t.mod_mul(&qinv, &q, &p, &mut ctx).unwrap();
    assert_eq!(t, one, "qinv·q ≡ 1 mod p");
    // A CRT signature from the exported parts equals the module's raw signature.
    let m = [vec![0x6Au8], vec![0x42; 142], vec![0xBC]].concat();
    let sig = s.sign(&Mechanism::RsaX509, private, &m).unwrap();
    let mb = r::bn(&m);
    let (mut m1, mut m2) = (BigNum::new().unwrap(), BigNum::new().unwrap());
    m1.mod_exp(&mb, &dp, &p, &mut ctx).unwrap();
    m2.mod_exp(&mb, &dq, &q, &mut ctx).unwrap();
    let mut diff = BigNum::new().unwrap();
    diff.mod_sub(&m1, &m2, &p, &mut ctx).unwrap();
    let mut hh = BigNum::new().unwrap();
    hh.mod_mul(&qinv, &diff, &p, &mut ctx).unwrap();
    let mut hq = BigNum::new().unwrap();
    hq.checked_mul(&hh, &q, &mut ctx).unwrap();
    let mut crt = BigNum::new().unwrap();
    crt.checked_add(&m2, &hq).unwrap();
    assert_eq!(crt.to_vec_padded(144).unwrap(), sig, "CRT recombination equals C_Sign(RSA_X_509)");
    // ISO 9797-1 method 2 padding with CBC (zero IV): same component, `80 00..` block added.
    let wrapped = s.wrap_key(&vendor(CRT_COMPONENT_WRAP, &[1, 1, 1]), kek, private).unwrap();
    assert_eq!(wrapped.len(), 80);
    let clear = r::tdes_cbc(&kek_v, &[0u8; 8], &wrapped, false);
    assert_eq!(clear[..72], comps[0][..], "p, CBC");
    assert_eq!(clear[72..], h("8000000000000000")[..]);
    // Under an AES key with zero padding: 72 bytes → 80.
    let aes_v = h("000102030405060708090A0B0C0D0E0F");
    let aes = aes_key(&s, &aes_v, &[]);
    let wrapped = s.wrap_key(&vendor(CRT_COMPONENT_WRAP, &[5, 2, 0]), aes, private).unwrap();
    assert_eq!(wrapped.len(), 80);
    let clear = r::aes_ecb(&aes_v, &wrapped, false);
    assert_eq!(clear[..72], comps[4][..], "qinv under AES");
    assert!(clear[72..].iter().all(|b| *b == 0));
    // A non-extractable private key cannot be exported.
    let (_, locked) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::Token(false), Attribute::ModulusBits(1024u64.into()), Attribute::PublicExponent(vec![3])],
            &[
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
            ],
        )
        .unwrap();
    expect_rv(
        s.wrap_key(&vendor(CRT_COMPONENT_WRAP, &[1, 0, 0]), kek, locked),
        cryptoki::error::RvError::KeyUnextractable,
    );
}

#[test]
fn key_components_xor() {
    let s = hsm().session();
    let c = [
        h("0123456789ABCDEF FEDCBA9876543210"),
        h("1111111111111111 2222222222222222"),
        h("4C4C4C4C4C4C4C4C 7F7F7F7F7F7F7F7F"),
    ];
    let hs: Vec<ObjectHandle> = c.iter().map(|v| des_key(&s, v, &[Attribute::Derive(true)])).collect();
    let want = r::xor(&r::xor(&c[0], &c[1]), &c[2]);
    let param = [ulong(2), handle(hs[1]), handle(hs[2])].concat();
    let k = s.derive_key(&vendor(KEY_COMPONENTS_XOR, &param), hs[0], &clear_des2()).unwrap();
    assert_eq!(kcv(&s, k), r::kcv_des(&want), "KCV of the combined key");
    assert_eq!(bytes(&s, k, AttributeType::Value), r::odd_parity(&want), "value of the combined key (odd parity)");
    // Sensitive result, compared by KCV; the order of components does not matter.
    let param = [ulong(2), handle(hs[0]), handle(hs[1])].concat();
    let k = s
        .derive_key(
            &vendor(KEY_COMPONENTS_XOR, &param),
            hs[2],
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::DES2),
                Attribute::Token(false),
                Attribute::Encrypt(true),
            ],
        )
        .unwrap();
    assert_eq!(kcv(&s, k), r::kcv_des(&want));
    // The combined key works for encryption.
    assert_eq!(s.encrypt(&Mechanism::Des3Ecb, k, &[0u8; 8]).unwrap(), r::tdes_ecb(&want, &[0u8; 8], true));
}

#[test]
fn vendor_parameters_and_key_usage_are_checked() {
    use cryptoki::error::RvError::{KeyFunctionNotPermitted, MechanismParamInvalid};
    let s = hsm().session();
    let imk = des_key(&s, &h("0123456789ABCDEFFEDCBA9876543210"), &[]);
    let tmpl = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::DES2), Attribute::Token(false)];
    for (what, param) in [
        ("PAN of 11 digits", [digits("12345678901"), b"01".to_vec()].concat()),
        ("PAN of 20 digits", [digits("12345678901234567890"), b"01".to_vec()].concat()),
        ("PAN with a letter", [digits("1234567890123A56"), b"01".to_vec()].concat()),
        ("PSN not digits", [digits("1234567890123456"), b"0A".to_vec()].concat()),
        ("PSN missing", digits("1234567890123456")),
        ("trailing byte", [digits("1234567890123456"), b"01".to_vec(), vec![0]].concat()),
        ("length byte past the end", vec![19, b'1', b'2']),
    ] {
        match s.derive_key(&vendor(OPTION_A, &param), imk, &tmpl) {
            Err(e) => assert_eq!(rv(e), MechanismParamInvalid, "{what}"),
            Ok(_) => panic!("Option A accepted a parameter with {what}"),
        }
    }
    expect_rv(s.derive_key(&vendor(OPTION_A, &[]), imk, &tmpl), MechanismParamInvalid);
    // Key usage: CVV needs CKA_SIGN on the CVK; PVV needs CKA_DECRYPT on the PIN key.
    let cvk = des_key(&s, &h("0123456789ABCDEFFEDCBA9876543210"), &[Attribute::Sign(false)]);
    expect_rv(s.sign(&vendor(CVV, &[]), cvk, b"41234567890123458701101"), KeyFunctionNotPermitted);
    let pan = "1122334455667788";
    let pvk = des_key(&s, &h("0123456789ABCDEFFEDCBA9876543210"), &[]);
    let pek_v = h(PEK);
    let pek = des_key(&s, &pek_v, &[]);
    let enc = encrypted_iso0(&s, pek, &pek_v, "4524", pan);
    let no_decrypt = des_key(&s, &pek_v, &[Attribute::Decrypt(false)]);
    expect_rv(
        s.sign(&vendor(VISA_PVV, &[handle(no_decrypt), vec![0, 3], digits(pan)].concat()), pvk, &enc),
        KeyFunctionNotPermitted,
    );
    // A block that is not a valid PIN block under the named key yields no PVV.
    let other = des_key(&s, &h(PEK2), &[]);
    assert!(
        s.sign(&vendor(VISA_PVV, &[handle(other), vec![0, 3], digits(pan)].concat()), pvk, &enc).is_err(),
        "PVV from a garbage PIN block"
    );
    assert!(
        s.sign(&vendor(VISA_PVV, &[ulong(0xFFFF_FF00), vec![0, 3], digits(pan)].concat()), pvk, &enc).is_err(),
        "PVV with a bogus PIN key handle"
    );
    // PIN generation: length 4..12 only.
    for len in [3u8, 13] {
        expect_rv(
            s.encrypt(
                &vendor(PIN_GENERATE, &generate_param(Some(pvk), 1, 0, len, 1, 0, "0123456789012345", 0, 12, 15, pan)),
                pek,
                &[],
            ),
            MechanismParamInvalid,
        );
    }
    expect_rv(s.encrypt(&vendor(PIN_TRANSLATE, &translate_param(pek, 0, 5, pan)), other, &enc), MechanismParamInvalid);
    expect_rv(s.sign(&vendor(0xD155_0050, &[3]), pvk, b"data"), MechanismParamInvalid);
    let c2 = des_key(&s, &h(PEK2), &[]);
    expect_rv(s.derive_key(&vendor(KEY_COMPONENTS_XOR, &ulong(0)), imk, &tmpl), MechanismParamInvalid);
    expect_rv(
        s.derive_key(&vendor(KEY_COMPONENTS_XOR, &[ulong(2), handle(c2)].concat()), imk, &tmpl),
        MechanismParamInvalid,
    );
}

#[test]
fn out_of_range_parameter_fields_fail_at_init() {
    use cryptoki::error::RvError::MechanismParamInvalid;
    let hsm = hsm();
    let s = hsm.session();
    let pan = "1122334455667788";
    let pvk = des_key(&s, &h("0123456789ABCDEFFEDCBA9876543210"), &[]);
    let pek = des_key(&s, &h(PEK), &[]);
    let cases = [
        // README: pvki[1] is 0–9.
        ("CKM_QUILL_VISA_PVV with pvki 10", VISA_PVV, [handle(pek), vec![0, 10], digits(pan)].concat()),
        // Validation digits past the end of the PAN (start 8 + length 12 > 16 digits).
        (
            "CKM_QUILL_IBM3624_OFFSET with start 8, length 12, 16-digit PAN",
            IBM3624_OFFSET,
            ibm_param(pek, 0, "0123456789012345", 8, 12, 15, pan),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, mech, param) in cases {
        // A session per case: a wrongly accepted Init leaves its operation active.
        let s = hsm.session();
        let r = s.sign_init(&vendor(mech, &param), pvk);
        if !matches!(&r, Err(cryptoki::error::Error::Pkcs11(MechanismParamInvalid, _))) {
            wrong.push(format!("{what}: C_SignInit gave {r:?}, want CKR_MECHANISM_PARAM_INVALID"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

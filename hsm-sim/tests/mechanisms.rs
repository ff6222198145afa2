//! Every standard mechanism of hsm-sim/README.md through `cryptoki` (or the raw function list
//! where `cryptoki` 0.12 lacks the mechanism), checked against published vectors
//! (`testdata/vectors.toml`) and the `openssl` crate.
#![allow(clippy::unwrap_used)]

mod common;

use common::raw::Param;
use common::reference as r;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::rsa::{Padding, Rsa};
use std::sync::OnceLock;

fn vectors() -> toml::Table {
    testdata("vectors.toml")
}

/// An RSA key pair as session objects of the keeper session (alive for the whole run).
fn rsa_pair(s: &Session, bits: u64, e: &[u8]) -> (ObjectHandle, ObjectHandle) {
    let public = [
        Attribute::Token(false),
        Attribute::ModulusBits(bits.into()),
        Attribute::PublicExponent(e.to_vec()),
        Attribute::Verify(true),
        Attribute::Encrypt(true),
    ];
    let private = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
        Attribute::Decrypt(true),
    ];
    s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
        .unwrap_or_else(|e2| panic!("RSA {bits}/{} key generation: {e2}", hex::encode(e)))
}

/// One shared RSA-2048/65537 pair.
fn rsa2048() -> (ObjectHandle, ObjectHandle) {
    static K: OnceLock<(ObjectHandle, ObjectHandle)> = OnceLock::new();
    *K.get_or_init(|| hsm().shared().with_keeper(|s| rsa_pair(s, 2048, &[1, 0, 1])))
}

fn openssl_public(s: &Session, public: ObjectHandle) -> PKey<Public> {
    let n = bytes(s, public, AttributeType::Modulus);
    let e = bytes(s, public, AttributeType::PublicExponent);
    PKey::from_rsa(
        Rsa::from_public_components(BigNum::from_slice(&n).unwrap(), BigNum::from_slice(&e).unwrap()).unwrap(),
    )
    .unwrap()
}

/// A value below the modulus: 6A ‖ pseudo-random ‖ BC (an EMV recovered-data shape).
fn raw_block(k: usize, seed: u8) -> Vec<u8> {
    let mut m: Vec<u8> = (0..k).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    m[0] = 0x6A;
    m[k - 1] = 0xBC;
    m
}

#[test]
fn readme_mechanisms_are_advertised() {
    let hsm = hsm();
    let list = hsm.raw.mechanism_list(hsm.shared().slot.id());
    let want = [
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        CKM_RSA_PKCS,
        CKM_RSA_X_509,
        CKM_RSA_PKCS_OAEP,
        CKM_SHA1_RSA_PKCS,
        CKM_SHA224_RSA_PKCS,
        CKM_SHA256_RSA_PKCS,
        CKM_SHA384_RSA_PKCS,
        CKM_SHA512_RSA_PKCS,
        CKM_DES2_KEY_GEN,
        CKM_DES3_KEY_GEN,
        CKM_DES3_ECB,
        CKM_DES3_CBC,
        CKM_DES3_CBC_PAD,
        CKM_DES3_MAC,
        CKM_DES3_CMAC,
        CKM_DES3_ECB_ENCRYPT_DATA,
        CKM_DES3_CBC_ENCRYPT_DATA,
        CKM_AES_KEY_GEN,
        CKM_AES_ECB,
        CKM_AES_CBC,
        CKM_AES_CBC_PAD,
        CKM_AES_GCM,
        CKM_AES_CMAC,
        CKM_AES_CMAC_GENERAL,
        CKM_AES_KEY_WRAP,
        CKM_AES_KEY_WRAP_PAD,
        CKM_AES_KEY_WRAP_KWP,
        CKM_AES_ECB_ENCRYPT_DATA,
        CKM_AES_CBC_ENCRYPT_DATA,
        CKM_SHA_1,
        CKM_SHA224,
        CKM_SHA256,
        CKM_SHA384,
        CKM_SHA512,
        CKM_SHA_1_HMAC,
        CKM_SHA256_HMAC,
        CKM_SHA384_HMAC,
        CKM_SHA512_HMAC,
        CKM_GENERIC_SECRET_KEY_GEN,
        0xD155_0001,
        0xD155_0002,
        0xD155_0010,
        0xD155_0011,
        0xD155_0012,
        0xD155_0020,
        0xD155_0021,
        0xD155_0030,
        0xD155_0040,
        0xD155_0050,
    ];
    let missing: Vec<String> = want.iter().filter(|m| !list.contains(m)).map(|m| format!("0x{m:X}")).collect();
    assert!(missing.is_empty(), "C_GetMechanismList lacks {missing:?}");
}

#[test]
fn rsa_keygen_sizes_and_exponents() {
    let hsm = hsm();
    let s = hsm.session();
    for (bits, e) in [
        (1024u64, vec![3u8]),
        (1152, vec![3]),
        (1984, vec![3]),
        (2048, vec![1, 0, 1]),
        (1032, vec![3]),
        (1976, vec![1, 0, 1]),
    ] {
        let t = std::time::Instant::now();
        let (public, private) = rsa_pair(&s, bits, &e);
        eprintln!("RSA {bits}/{} generated in {:?}", hex::encode(&e), t.elapsed());
        let n = bytes(&s, public, AttributeType::Modulus);
        let got_e = bytes(&s, public, AttributeType::PublicExponent);
        assert_eq!(BigNum::from_slice(&n).unwrap().num_bits() as u64, bits, "CKA_MODULUS bit length");
        assert_eq!(BigNum::from_slice(&got_e).unwrap(), BigNum::from_slice(&e).unwrap(), "CKA_PUBLIC_EXPONENT");
        assert_eq!(bytes(&s, private, AttributeType::Modulus), n, "private key CKA_MODULUS");
        // The key works: raw private op, then the public op by OpenSSL's BigNum recovers it.
        let k = n.len();
        let m = raw_block(k, bits as u8);
        let sig = s.sign(&Mechanism::RsaX509, private, &m).unwrap();
        assert_eq!(sig.len(), k);
        assert_eq!(r::mod_exp(&sig, &got_e, &n, k), m, "s^e mod n for RSA {bits}");
    }
}

#[test]
fn rsa_x509_sign_recovers_with_public_op() {
    let hsm = hsm();
    let s = hsm.session();
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ModulusBits(1152u64.into()),
                Attribute::PublicExponent(vec![3]),
                Attribute::Verify(true),
            ],
            &[Attribute::Token(false), Attribute::Sensitive(true), Attribute::Sign(true)],
        )
        .unwrap();
    let n = bytes(&s, public, AttributeType::Modulus);
    let k = n.len();
    assert_eq!(k, 144);
    for seed in 0..4u8 {
        let m = raw_block(k, seed);
        let sig = s.sign(&Mechanism::RsaX509, private, &m).unwrap();
        assert_ne!(sig, m);
        assert_eq!(r::mod_exp(&sig, &[3], &n, k), m, "raw public op must recover the block");
        s.verify(&Mechanism::RsaX509, public, &m, &sig).unwrap();
    }
    // A short input is a number too: the result is its k-byte signature.
    let short = [0x01u8, 0x02, 0x03];
    let sig = s.sign(&Mechanism::RsaX509, private, &short).unwrap();
    assert_eq!(r::mod_exp(&sig, &[3], &n, k), [vec![0u8; k - 3], short.to_vec()].concat());
}

#[test]
fn rsa_pkcs_sign_verify() {
    let hsm = hsm();
    let s = hsm.session();
    let (public, private) = rsa2048();
    let digest = openssl::sha::sha256(b"quill");
    let data = [h("3031300d060960864801650304020105000420"), digest.to_vec()].concat();
    let sig = s.sign(&Mechanism::RsaPkcs, private, &data).unwrap();
    assert_eq!(sig.len(), 256);
    s.verify(&Mechanism::RsaPkcs, public, &data, &sig).unwrap();
    // OpenSSL recovers the same DigestInfo with the public key.
    let pk = openssl_public(&s, public);
    let mut out = vec![0u8; 256];
    let n = pk.rsa().unwrap().public_decrypt(&sig, &mut out, Padding::PKCS1).unwrap();
    assert_eq!(&out[..n], &data[..]);
    let mut bad = data.clone();
    bad[5] ^= 1;
    expect_rv(s.verify(&Mechanism::RsaPkcs, public, &bad, &sig), RvError::SignatureInvalid);
    // PKCS#1 v1.5 encryption round trip.
    let ct = s.encrypt(&Mechanism::RsaPkcs, public, b"pkcs1 secret").unwrap();
    assert_eq!(s.decrypt(&Mechanism::RsaPkcs, private, &ct).unwrap(), b"pkcs1 secret");
}

#[test]
fn sha256_rsa_pkcs_sign_verify_and_flipped_byte() {
    let hsm = hsm();
    let s = hsm.session();
    let (public, private) = rsa2048();
    let msg = b"The quick brown fox jumps over the lazy dog";
    let sig = s.sign(&Mechanism::Sha256RsaPkcs, private, msg).unwrap();
    s.verify(&Mechanism::Sha256RsaPkcs, public, msg, &sig).unwrap();
    let pk = openssl_public(&s, public);
    let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &pk).unwrap();
    assert!(v.verify_oneshot(&sig, msg).unwrap(), "OpenSSL must accept the SHA256_RSA_PKCS signature");
    let mut bad_sig = sig.clone();
    bad_sig[200] ^= 0x01;
    expect_rv(s.verify(&Mechanism::Sha256RsaPkcs, public, msg, &bad_sig), RvError::SignatureInvalid);
    let mut bad_msg = msg.to_vec();
    bad_msg[0] ^= 0x01;
    expect_rv(s.verify(&Mechanism::Sha256RsaPkcs, public, &bad_msg, &sig), RvError::SignatureInvalid);
    // The other hash variants verify with OpenSSL too.
    for (mech, md) in [
        (Mechanism::Sha1RsaPkcs, MessageDigest::sha1()),
        (Mechanism::Sha224RsaPkcs, MessageDigest::sha224()),
        (Mechanism::Sha384RsaPkcs, MessageDigest::sha384()),
        (Mechanism::Sha512RsaPkcs, MessageDigest::sha512()),
    ] {
        let sig = s.sign(&mech, private, msg).unwrap();
        let mut v = openssl::sign::Verifier::new(md, &pk).unwrap();
        assert!(v.verify_oneshot(&sig, msg).unwrap(), "{mech:?}");
        s.verify(&mech, public, msg, &sig).unwrap();
    }
}

#[test]
fn rsa_oaep_sha1_and_sha256_with_label() {
    let hsm = hsm();
    let s = hsm.session();
    let (public, private) = rsa2048();
    let pk = openssl_public(&s, public);
    let label = b"quill oaep label";
    let secret = b"0123456789abcdef0123456789abcdef";
    for (hash, mgf, md) in [
        (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1, MessageDigest::sha1()),
        (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, MessageDigest::sha256()),
    ] {
        let mech = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::data_specified(label)));
        let ct = s.encrypt(&mech, public, secret).unwrap();
        assert_eq!(ct.len(), 256);
        assert_eq!(s.decrypt(&mech, private, &ct).unwrap(), secret, "OAEP {hash} round trip");
        // OpenSSL-made ciphertext with the same hash, MGF and label decrypts in the module.
        let mut enc = openssl::encrypt::Encrypter::new(&pk).unwrap();
        enc.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
        enc.set_rsa_oaep_md(md).unwrap();
        enc.set_rsa_mgf1_md(md).unwrap();
        enc.set_rsa_oaep_label(label).unwrap();
        let mut ct2 = vec![0u8; enc.encrypt_len(secret).unwrap()];
        let n = enc.encrypt(secret, &mut ct2).unwrap();
        ct2.truncate(n);
        assert_eq!(s.decrypt(&mech, private, &ct2).unwrap(), secret, "OpenSSL OAEP {hash} ciphertext");
        // A different label must not decrypt.
        let other = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::data_specified(b"other")));
        assert!(s.decrypt(&other, private, &ct).is_err(), "OAEP {hash} with the wrong label decrypted");
    }
}

#[test]
fn des2_des3_keygen() {
    let hsm = hsm();
    let s = hsm.session();
    for (mech, kt, len) in [(Mechanism::Des2KeyGen, KeyType::DES2, 16usize), (Mechanism::Des3KeyGen, KeyType::DES3, 24)]
    {
        let tmpl = [
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ];
        let k = s.generate_key(&mech, &tmpl).unwrap();
        assert_eq!(attr(&s, k, AttributeType::KeyType), Some(Attribute::KeyType(kt)));
        assert_eq!(attr(&s, k, AttributeType::Class), Some(Attribute::Class(ObjectClass::SECRET_KEY)));
        let v = bytes(&s, k, AttributeType::Value);
        assert_eq!(v.len(), len);
        assert_eq!(r::odd_parity(&v), v, "generated DES keys have odd parity");
        assert_eq!(kcv(&s, k), r::kcv_des(&v));
        assert!(flag(&s, k, AttributeType::Local));
        let ct = s.encrypt(&Mechanism::Des3Ecb, k, &[0x11u8; 16]).unwrap();
        assert_eq!(ct, r::tdes_ecb(&v, &[0x11u8; 16], true));
        // Two generations differ.
        let k2 = s.generate_key(&mech, &tmpl).unwrap();
        assert_ne!(bytes(&s, k2, AttributeType::Value), v);
    }
}

#[test]
fn des3_ecb_cbc_cbc_pad_known_answers() {
    let hsm = hsm();
    let s = hsm.session();
    let iv = h("0001020304050607");
    let data: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(7).wrapping_add(3)).collect();
    let odd = &data[..29];
    for value in [h("0123456789ABCDEFFEDCBA9876543210"), h("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123")] {
        let k = des_key(&s, &value, &[]);
        let ecb = s.encrypt(&Mechanism::Des3Ecb, k, &data).unwrap();
        assert_eq!(ecb, r::tdes_ecb(&value, &data, true), "DES3_ECB ({} bytes key)", value.len());
        assert_eq!(s.decrypt(&Mechanism::Des3Ecb, k, &ecb).unwrap(), data);
        let iv8: [u8; 8] = iv.clone().try_into().unwrap();
        let cbc = s.encrypt(&Mechanism::Des3Cbc(iv8), k, &data).unwrap();
        assert_eq!(cbc, r::tdes_cbc(&value, &iv, &data, true), "DES3_CBC");
        assert_eq!(s.decrypt(&Mechanism::Des3Cbc(iv8), k, &cbc).unwrap(), data);
        let pad = s.encrypt(&Mechanism::Des3CbcPad(iv8), k, odd).unwrap();
        assert_eq!(pad, r::tdes_cbc_pad(&value, &iv, odd, true), "DES3_CBC_PAD");
        assert_eq!(pad.len(), 32);
        assert_eq!(s.decrypt(&Mechanism::Des3CbcPad(iv8), k, &pad).unwrap(), odd);
        // Multi-part gives the same bytes.
        s.encrypt_init(&Mechanism::Des3CbcPad(iv8), k).unwrap();
        let mut parts = s.encrypt_update(&odd[..5]).unwrap();
        parts.extend(s.encrypt_update(&odd[5..20]).unwrap());
        parts.extend(s.encrypt_update(&odd[20..]).unwrap());
        parts.extend(s.encrypt_final().unwrap());
        assert_eq!(parts, pad, "multi-part DES3_CBC_PAD");
        // ECB on a length that is not a block multiple is refused.
        expect_rv(s.encrypt(&Mechanism::Des3Ecb, k, odd), RvError::DataLenRange);
    }
}

#[test]
fn des3_wrap_unwrap_des2_and_aes_keys() {
    let hsm = hsm();
    let s = hsm.session();
    let kek_value = h("89ABCDEF0123456776543210FEDCBA98C1C2C4C7C8CBCDCE");
    let kek = des_key(&s, &kek_value, &[]);
    let clear = [Attribute::Sensitive(false), Attribute::Extractable(true)];
    // DES2 key under DES3_ECB.
    let des2_value = h("0123456789ABCDEFFEDCBA9876543210");
    let des2 = des_key(&s, &des2_value, &[]);
    let wrapped = s.wrap_key(&Mechanism::Des3Ecb, kek, des2).unwrap();
    assert_eq!(wrapped, r::tdes_ecb(&kek_value, &des2_value, true), "DES3_ECB wrap of a DES2 key");
    let tmpl = |kt: KeyType| {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(kt),
            Attribute::Token(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ]
    };
    let back = s.unwrap_key(&Mechanism::Des3Ecb, kek, &wrapped, &tmpl(KeyType::DES2)).unwrap();
    assert_eq!(kcv(&s, back), h("08D7B4"));
    assert_eq!(bytes(&s, back, AttributeType::Value), des2_value);
    // AES-128 key under DES3_CBC.
    let iv = h("A1A2A3A4A5A6A7A8");
    let iv8: [u8; 8] = iv.clone().try_into().unwrap();
    let aes_value = h("000102030405060708090A0B0C0D0E0F");
    let aes = aes_key(&s, &aes_value, &clear);
    let wrapped = s.wrap_key(&Mechanism::Des3Cbc(iv8), kek, aes).unwrap();
    assert_eq!(wrapped, r::tdes_cbc(&kek_value, &iv, &aes_value, true), "DES3_CBC wrap of an AES key");
    let back = s.unwrap_key(&Mechanism::Des3Cbc(iv8), kek, &wrapped, &tmpl(KeyType::AES)).unwrap();
    assert_eq!(kcv(&s, back), r::kcv_aes(&aes_value));
    assert_eq!(bytes(&s, back, AttributeType::Value), aes_value);
    // AES-256 key under DES3_CBC_PAD.
    let aes256_value: Vec<u8> = (0u8..32).map(|i| i ^ 0x5A).collect();
    let aes256 = aes_key(&s, &aes256_value, &[]);
    let wrapped = s.wrap_key(&Mechanism::Des3CbcPad(iv8), kek, aes256).unwrap();
    assert_eq!(wrapped, r::tdes_cbc_pad(&kek_value, &iv, &aes256_value, true), "DES3_CBC_PAD wrap of an AES-256 key");
    let back = s.unwrap_key(&Mechanism::Des3CbcPad(iv8), kek, &wrapped, &tmpl(KeyType::AES)).unwrap();
    assert_eq!(kcv(&s, back), r::kcv_aes(&aes256_value));
    // A DES2 key under a DES2 KEK (DES3_ECB with K1K2K1).
    let kek2_value = h("FEDCBA98765432100123456789ABCDEF");
    let kek2 = des_key(&s, &kek2_value, &[]);
    let wrapped = s.wrap_key(&Mechanism::Des3Ecb, kek2, des2).unwrap();
    assert_eq!(wrapped, r::tdes_ecb(&kek2_value, &des2_value, true));
}

#[test]
fn aes_ecb_cbc_cbc_pad_known_answers() {
    let hsm = hsm();
    let s = hsm.session();
    let iv = h("F0E1D2C3B4A5968778695A4B3C2D1E0F");
    let iv16: [u8; 16] = iv.clone().try_into().unwrap();
    let data: Vec<u8> = (0u8..48).map(|i| i.wrapping_mul(13).wrapping_add(1)).collect();
    let odd = &data[..37];
    for len in [16usize, 24, 32] {
        let value: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(3).wrapping_add(0x20)).collect();
        let k = aes_key(&s, &value, &[]);
        let ecb = s.encrypt(&Mechanism::AesEcb, k, &data).unwrap();
        assert_eq!(ecb, r::aes_ecb(&value, &data, true), "AES-{} ECB", len * 8);
        assert_eq!(s.decrypt(&Mechanism::AesEcb, k, &ecb).unwrap(), data);
        let cbc = s.encrypt(&Mechanism::AesCbc(iv16), k, &data).unwrap();
        assert_eq!(cbc, r::aes_cbc(&value, &iv, &data, true), "AES-{} CBC", len * 8);
        assert_eq!(s.decrypt(&Mechanism::AesCbc(iv16), k, &cbc).unwrap(), data);
        let pad = s.encrypt(&Mechanism::AesCbcPad(iv16), k, odd).unwrap();
        assert_eq!(pad, r::aes_cbc_pad(&value, &iv, odd, true), "AES-{} CBC_PAD", len * 8);
        assert_eq!(s.decrypt(&Mechanism::AesCbcPad(iv16), k, &pad).unwrap(), odd);
        // A full extra block of padding when the input is a block multiple.
        let pad_full = s.encrypt(&Mechanism::AesCbcPad(iv16), k, &data[..32]).unwrap();
        assert_eq!(pad_full.len(), 48);
        assert_eq!(pad_full, r::aes_cbc_pad(&value, &iv, &data[..32], true));
    }
}

#[test]
fn aes_gcm_nist_vector() {
    let v = vectors();
    let hsm = hsm();
    let s = hsm.session();
    let key = thex(&v, "aes_gcm", "key");
    let aad = thex(&v, "aes_gcm", "aad");
    let pt = thex(&v, "aes_gcm", "plaintext");
    let expect = [thex(&v, "aes_gcm", "ciphertext"), thex(&v, "aes_gcm", "tag")].concat();
    assert_eq!(r::aes_gcm(&key, &thex(&v, "aes_gcm", "iv"), &aad, &pt), expect, "OpenSSL agrees with the vector");
    let k = aes_key(&s, &key, &[]);
    let mut iv = thex(&v, "aes_gcm", "iv");
    let ct = s.encrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv, &aad, 128u64.into()).unwrap()), k, &pt).unwrap();
    assert_eq!(hex::encode(&ct), hex::encode(&expect), "AES-GCM test case 4");
    let mut iv = thex(&v, "aes_gcm", "iv");
    let back = s.decrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv, &aad, 128u64.into()).unwrap()), k, &ct).unwrap();
    assert_eq!(back, pt);
    let mut tampered = ct.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let mut iv = thex(&v, "aes_gcm", "iv");
    assert!(
        s.decrypt(&Mechanism::AesGcm(GcmParams::new(&mut iv, &aad, 128u64.into()).unwrap()), k, &tampered).is_err(),
        "a tampered GCM tag must not decrypt"
    );
}

#[test]
fn aes_cmac_rfc4493() {
    let v = vectors();
    let hsm = hsm();
    let s = hsm.session();
    let key = thex(&v, "aes_cmac", "key");
    let k = aes_key(&s, &key, &[]);
    for (m, mac) in thex_list(&v, "aes_cmac", "messages").iter().zip(thex_list(&v, "aes_cmac", "macs")) {
        assert_eq!(r::aes_cmac(&key, m), mac, "OpenSSL agrees with RFC 4493");
        let got = s.sign(&Mechanism::AesCMac, k, m).unwrap();
        assert_eq!(hex::encode(&got), hex::encode(&mac), "AES_CMAC of {} bytes", m.len());
        s.verify(&Mechanism::AesCMac, k, m, &mac).unwrap();
        // CMAC_GENERAL with an 8-byte output is the truncation.
        let g = hsm.raw.sign(&s, CKM_AES_CMAC_GENERAL, Param::Ulong(8), k, m).unwrap();
        assert_eq!(g, mac[..8], "AES_CMAC_GENERAL(8)");
    }
    let mut bad = thex_list(&v, "aes_cmac", "macs")[1].clone();
    bad[0] ^= 1;
    expect_rv(
        s.verify(&Mechanism::AesCMac, k, &thex_list(&v, "aes_cmac", "messages")[1], &bad),
        RvError::SignatureInvalid,
    );
}

#[test]
fn aes_key_wrap_rfc3394() {
    let v = vectors();
    let hsm = hsm();
    let s = hsm.session();
    for t in ["aes_kw_128", "aes_kw_256"] {
        let (kek_v, key_v, wrapped_v) = (thex(&v, t, "kek"), thex(&v, t, "key"), thex(&v, t, "wrapped"));
        let kek = aes_key(&s, &kek_v, &[]);
        // As an encryption of the key bytes.
        assert_eq!(s.encrypt(&Mechanism::AesKeyWrap, kek, &key_v).unwrap(), wrapped_v, "{t}: C_Encrypt");
        assert_eq!(s.decrypt(&Mechanism::AesKeyWrap, kek, &wrapped_v).unwrap(), key_v, "{t}: C_Decrypt");
        // As a key wrap.
        let key = aes_key(&s, &key_v, &[]);
        assert_eq!(s.wrap_key(&Mechanism::AesKeyWrap, kek, key).unwrap(), wrapped_v, "{t}: C_WrapKey");
        let back = s
            .unwrap_key(
                &Mechanism::AesKeyWrap,
                kek,
                &wrapped_v,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Encrypt(true),
                ],
            )
            .unwrap();
        assert_eq!(kcv(&s, back), r::kcv_aes(&key_v), "{t}: unwrapped key");
        let mut bad = wrapped_v.clone();
        bad[3] ^= 1;
        assert!(
            s.unwrap_key(
                &Mechanism::AesKeyWrap,
                kek,
                &bad,
                &[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES)]
            )
            .is_err(),
            "{t}: a corrupted wrap must fail the integrity check"
        );
    }
}

#[test]
fn aes_key_wrap_pad_and_kwp_rfc5649() {
    let v = vectors();
    let hsm = hsm();
    let s = hsm.session();
    for t in ["aes_kwp_20", "aes_kwp_7"] {
        let (kek_v, key_v, wrapped_v) = (thex(&v, t, "kek"), thex(&v, t, "key"), thex(&v, t, "wrapped"));
        let kek = aes_key(&s, &kek_v, &[]);
        let key = generic_key(&s, &key_v, &[]);
        let tmpl = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        // 0x210A through cryptoki.
        assert_eq!(
            hex::encode(s.encrypt(&Mechanism::AesKeyWrapPad, kek, &key_v).unwrap()),
            hex::encode(&wrapped_v),
            "{t}: 0x210A C_Encrypt"
        );
        assert_eq!(s.decrypt(&Mechanism::AesKeyWrapPad, kek, &wrapped_v).unwrap(), key_v, "{t}: 0x210A C_Decrypt");
        assert_eq!(s.wrap_key(&Mechanism::AesKeyWrapPad, kek, key).unwrap(), wrapped_v, "{t}: 0x210A C_WrapKey");
        let back = s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped_v, &tmpl).unwrap();
        assert_eq!(bytes(&s, back, AttributeType::Value), key_v, "{t}: 0x210A C_UnwrapKey");
        // 0x210B (KWP) through the raw function list.
        let raw = &hsm.raw;
        assert_eq!(
            raw.encrypt(&s, CKM_AES_KEY_WRAP_KWP, Param::None, kek, &key_v).unwrap(),
            wrapped_v,
            "{t}: KWP C_Encrypt"
        );
        assert_eq!(
            raw.decrypt(&s, CKM_AES_KEY_WRAP_KWP, Param::None, kek, &wrapped_v).unwrap(),
            key_v,
            "{t}: KWP C_Decrypt"
        );
        assert_eq!(raw.wrap(&s, CKM_AES_KEY_WRAP_KWP, Param::None, kek, key).unwrap(), wrapped_v, "{t}: KWP C_WrapKey");
        let back = raw.unwrap(&s, CKM_AES_KEY_WRAP_KWP, Param::None, kek, &wrapped_v, &tmpl).unwrap();
        assert_eq!(bytes(&s, back, AttributeType::Value), key_v, "{t}: KWP C_UnwrapKey");
    }
}

#[test]
fn des3_and_aes_ecb_encrypt_data_derivation() {
    let hsm = hsm();
    let s = hsm.session();
    let base_v = h("0123456789ABCDEFFEDCBA9876543210");
    let base = des_key(&s, &base_v, &[]);
    // Option A style: Y ‖ Y⊕FF.. gives a DES2 key.
    let y = h("1234567890123456");
    let data = [y.clone(), y.iter().map(|b| b ^ 0xFF).collect()].concat();
    let tmpl = |kt: KeyType| {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(kt),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Encrypt(true),
        ]
    };
    let d =
        hsm.raw.derive(&s, CKM_DES3_ECB_ENCRYPT_DATA, Param::DeriveData(&data), base, &tmpl(KeyType::DES2)).unwrap();
    let expect = r::tdes_ecb(&base_v, &data, true);
    assert_eq!(kcv(&s, d), r::kcv_des(&expect), "DES3_ECB_ENCRYPT_DATA → DES2 (KCV)");
    assert_eq!(
        r::odd_parity(&bytes(&s, d, AttributeType::Value)),
        r::odd_parity(&expect),
        "DES3_ECB_ENCRYPT_DATA → DES2 (value)"
    );
    // 24 bytes of data give a DES3 key.
    let data24: Vec<u8> = (0u8..24).collect();
    let d3 =
        hsm.raw.derive(&s, CKM_DES3_ECB_ENCRYPT_DATA, Param::DeriveData(&data24), base, &tmpl(KeyType::DES3)).unwrap();
    assert_eq!(
        r::odd_parity(&bytes(&s, d3, AttributeType::Value)),
        r::odd_parity(&r::tdes_ecb(&base_v, &data24, true))
    );
    // The derived key works as a key.
    let ct = s.encrypt(&Mechanism::Des3Ecb, d, &[0u8; 8]).unwrap();
    assert_eq!(ct[..3], r::kcv_des(&expect)[..]);
    // AES_ECB_ENCRYPT_DATA: 16 and 32 bytes of data → AES-128 / AES-256.
    let abase_v = h("2B7E151628AED2A6ABF7158809CF4F3C");
    let abase = aes_key(&s, &abase_v, &[]);
    for n in [16usize, 32] {
        let data: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(11)).collect();
        let d =
            hsm.raw.derive(&s, CKM_AES_ECB_ENCRYPT_DATA, Param::DeriveData(&data), abase, &tmpl(KeyType::AES)).unwrap();
        let expect = r::aes_ecb(&abase_v, &data, true);
        assert_eq!(bytes(&s, d, AttributeType::Value), expect, "AES_ECB_ENCRYPT_DATA ({n} bytes)");
        assert_eq!(kcv(&s, d), r::kcv_aes(&expect));
    }
    // Data that is not a block multiple is refused.
    let bad = hsm.raw.derive(&s, CKM_DES3_ECB_ENCRYPT_DATA, Param::DeriveData(&[1, 2, 3]), base, &tmpl(KeyType::DES2));
    assert!(bad.is_err(), "DES3_ECB_ENCRYPT_DATA with 3 bytes of data must fail");
}

#[test]
fn des3_cmac_sp800_38b_and_des3_mac() {
    let v = vectors();
    let hsm = hsm();
    let s = hsm.session();
    for t in ["tdes_cmac_3key", "tdes_cmac_2key"] {
        let key = thex(&v, t, "key");
        let k = des_key(&s, &key, &[]);
        for (m, mac) in thex_list(&v, t, "messages").iter().zip(thex_list(&v, t, "macs")) {
            assert_eq!(r::tdes_cmac(&key, m), mac, "OpenSSL agrees with SP 800-38B");
            let got = hsm.raw.sign(&s, CKM_DES3_CMAC, Param::None, k, m).unwrap();
            assert_eq!(hex::encode(&got), hex::encode(&mac), "{t}: DES3_CMAC of {} bytes", m.len());
            assert_eq!(hsm.raw.verify(&s, CKM_DES3_CMAC, Param::None, k, m, &mac), CKR_OK);
        }
    }
    // DES3_MAC (PKCS#11: CBC-MAC, zero IV, output half a block = 4 bytes).
    let key = h("0123456789ABCDEFFEDCBA9876543210");
    let k = des_key(&s, &key, &[]);
    let data: Vec<u8> = (0u8..16).collect();
    let cbc = r::tdes_cbc(&key, &[0u8; 8], &data, true);
    let got = hsm.raw.sign(&s, CKM_DES3_MAC, Param::None, k, &data).unwrap();
    assert_eq!(hex::encode(&got), hex::encode(&cbc[8..12]), "DES3_MAC = first 4 bytes of the last CBC block");
}

#[test]
fn retail_mac_vendor_mechanism() {
    let hsm = hsm();
    let s = hsm.session();
    let key = h("0123456789ABCDEFFEDCBA9876543210");
    let k = des_key(&s, &key, &[]);
    let messages: [&[u8]; 4] = [b"", b"1234567", b"12345678", b"Quill retail MAC over three-ish blocks"];
    for m in messages {
        // Default (no parameter) = padding method 2.
        let got = s.sign(&vendor(0xD155_0050, &[]), k, m).unwrap();
        assert_eq!(hex::encode(&got), hex::encode(r::retail_mac(&key, m, 2)), "retail MAC default, {} bytes", m.len());
        for method in [1u8, 2] {
            if method == 1 && m.is_empty() {
                continue;
            }
            let got = s.sign(&vendor(0xD155_0050, &[method]), k, m).unwrap();
            assert_eq!(
                hex::encode(&got),
                hex::encode(r::retail_mac(&key, m, method)),
                "retail MAC method {method}, {} bytes",
                m.len()
            );
            s.verify(&vendor(0xD155_0050, &[method]), k, m, &got).unwrap();
            let mut bad = got.clone();
            bad[7] ^= 0x80;
            expect_rv(s.verify(&vendor(0xD155_0050, &[method]), k, m, &bad), RvError::SignatureInvalid);
        }
    }
}

#[test]
fn sha_digests_fips180() {
    let v = vectors();
    let hsm = hsm();
    let s = hsm.session();
    let msg = tstr(&v, "sha", "message");
    for (mech, name) in [
        (Mechanism::Sha1, "sha1"),
        (Mechanism::Sha224, "sha224"),
        (Mechanism::Sha256, "sha256"),
        (Mechanism::Sha384, "sha384"),
        (Mechanism::Sha512, "sha512"),
    ] {
        let want = tstr(&v, "sha", name);
        assert_eq!(hex::encode(s.digest(&mech, msg.as_bytes()).unwrap()), want, "{name}(\"abc\")");
        s.digest_init(&mech).unwrap();
        s.digest_update(b"a").unwrap();
        s.digest_update(b"bc").unwrap();
        assert_eq!(hex::encode(s.digest_final().unwrap()), want, "multi-part {name}");
    }
}

#[test]
fn hmac_sha256_rfc4231_case2() {
    let v = vectors();
    let hsm = hsm();
    let s = hsm.session();
    let k = generic_key(&s, &thex(&v, "hmac_sha256", "key"), &[]);
    let data = thex(&v, "hmac_sha256", "data");
    let mac = s.sign(&Mechanism::Sha256Hmac, k, &data).unwrap();
    assert_eq!(hex::encode(&mac), tstr(&v, "hmac_sha256", "mac"));
    s.verify(&Mechanism::Sha256Hmac, k, &data, &mac).unwrap();
    let mut bad = mac.clone();
    bad[0] ^= 1;
    expect_rv(s.verify(&Mechanism::Sha256Hmac, k, &data, &bad), RvError::SignatureInvalid);
    // The other HMACs agree with OpenSSL.
    let pk = PKey::hmac(&thex(&v, "hmac_sha256", "key")).unwrap();
    for (mech, md) in [
        (Mechanism::Sha1Hmac, MessageDigest::sha1()),
        (Mechanism::Sha384Hmac, MessageDigest::sha384()),
        (Mechanism::Sha512Hmac, MessageDigest::sha512()),
    ] {
        let mut signer = openssl::sign::Signer::new(md, &pk).unwrap();
        let want = signer.sign_oneshot_to_vec(&data).unwrap();
        assert_eq!(s.sign(&mech, k, &data).unwrap(), want, "{mech:?}");
    }
}

#[test]
fn generate_random_lengths_and_variety() {
    let hsm = hsm();
    let s = hsm.session();
    for n in [1u32, 16, 33, 4096] {
        assert_eq!(s.generate_random_vec(n).unwrap().len(), n as usize);
    }
    let a = s.generate_random_vec(64).unwrap();
    let b = s.generate_random_vec(64).unwrap();
    assert_ne!(a, b, "two random draws are equal");
    assert!(a.iter().any(|x| *x != a[0]), "random output is constant");
    let big = s.generate_random_vec(4096).unwrap();
    let mut seen = [false; 256];
    for x in &big {
        seen[*x as usize] = true;
    }
    let distinct = seen.iter().filter(|x| **x).count();
    assert!(distinct > 200, "only {distinct} distinct byte values in 4096 random bytes");
}

#[test]
fn check_value_is_kcv_for_des_and_aes() {
    let v = vectors();
    let hsm = hsm();
    let s = hsm.session();
    let k = des_key(&s, &thex(&v, "kcv", "des2_key"), &[]);
    assert_eq!(kcv(&s, k), thex(&v, "kcv", "des2_kcv"), "published KCV of 0123456789ABCDEF FEDCBA9876543210");
    let des3 = h("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123");
    assert_eq!(kcv(&s, des_key(&s, &des3, &[])), r::kcv_des(&des3));
    for len in [16usize, 24, 32] {
        let value: Vec<u8> = (0..len as u8).map(|i| i ^ 0xA5).collect();
        assert_eq!(kcv(&s, aes_key(&s, &value, &[])), r::kcv_aes(&value), "AES-{} KCV", len * 8);
    }
    // Generated keys too.
    let tmpl = [
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::ValueLen(32u64.into()),
    ];
    let g = s.generate_key(&Mechanism::AesKeyGen, &tmpl).unwrap();
    let gv = bytes(&s, g, AttributeType::Value);
    assert_eq!(gv.len(), 32);
    assert_eq!(kcv(&s, g), r::kcv_aes(&gv));
    // A wrong CKA_CHECK_VALUE in a template is refused.
    let wrong = s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::DES2),
        Attribute::Token(false),
        Attribute::Value(thex(&v, "kcv", "des2_key")),
        Attribute::CheckValue(h("000000")),
    ]);
    expect_rv(wrong, RvError::AttributeValueInvalid);
}

#[test]
fn cbc_encrypt_data_derivation() {
    let hsm = hsm();
    let s = hsm.session();
    let tmpl = |kt: KeyType| {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(kt),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ]
    };
    let base_v = h("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123");
    let base = des_key(&s, &base_v, &[]);
    let iv = [9u8, 8, 7, 6, 5, 4, 3, 2];
    let data: Vec<u8> = (0u8..16).map(|i| i * 3).collect();
    let d = hsm
        .raw
        .derive(&s, CKM_DES3_CBC_ENCRYPT_DATA, Param::DesCbcDerive(iv, &data), base, &tmpl(KeyType::DES2))
        .unwrap();
    let want = r::tdes_cbc(&base_v, &iv, &data, true);
    assert_eq!(r::odd_parity(&bytes(&s, d, AttributeType::Value)), r::odd_parity(&want), "DES3_CBC_ENCRYPT_DATA");
    let abase_v = h("000102030405060708090A0B0C0D0E0F");
    let abase = aes_key(&s, &abase_v, &[]);
    let aiv = [0x44u8; 16];
    let adata: Vec<u8> = (0u8..32).collect();
    let d = s
        .derive_key(&Mechanism::AesCbcEncryptData(AesCbcDeriveParams::new(aiv, &adata)), abase, &tmpl(KeyType::AES))
        .unwrap();
    assert_eq!(bytes(&s, d, AttributeType::Value), r::aes_cbc(&abase_v, &aiv, &adata, true), "AES_CBC_ENCRYPT_DATA");
}

#[test]
fn multi_part_macs_and_signatures_equal_single_part() {
    let hsm = hsm();
    let s = hsm.session();
    let data: Vec<u8> = (0u8..77).map(|i| i.wrapping_mul(17)).collect();
    let aes = aes_key(&s, &h("2B7E151628AED2A6ABF7158809CF4F3C"), &[]);
    let des2 = des_key(&s, &h("0123456789ABCDEFFEDCBA9876543210"), &[]);
    let mac = generic_key(&s, &[0x5Cu8; 32], &[]);
    let (_, rsa) = rsa2048();
    let retail = [2u8];
    let cases: Vec<(Mechanism, ObjectHandle)> = vec![
        (Mechanism::AesCMac, aes),
        (Mechanism::Sha256Hmac, mac),
        (Mechanism::Sha512Hmac, mac),
        (vendor(0xD155_0050, &retail), des2),
        (Mechanism::Sha256RsaPkcs, rsa),
    ];
    for (mech, key) in cases {
        let single = s.sign(&mech, key, &data).unwrap();
        s.sign_init(&mech, key).unwrap();
        for chunk in data.chunks(10) {
            s.sign_update(chunk).unwrap();
        }
        assert_eq!(s.sign_final().unwrap(), single, "multi-part {mech:?}");
    }
}

#[test]
fn generic_secret_keygen_for_hmac() {
    let hsm = hsm();
    let s = hsm.session();
    let k = s
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(48u64.into()),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        )
        .unwrap();
    let v = bytes(&s, k, AttributeType::Value);
    assert_eq!(v.len(), 48);
    let mac = s.sign(&Mechanism::Sha384Hmac, k, b"generic").unwrap();
    let pk = PKey::hmac(&v).unwrap();
    assert_eq!(
        mac,
        openssl::sign::Signer::new(MessageDigest::sha384(), &pk).unwrap().sign_oneshot_to_vec(b"generic").unwrap()
    );
    s.verify(&Mechanism::Sha384Hmac, k, b"generic", &mac).unwrap();
}

#[test]
fn bad_key_parameters_are_rejected() {
    let hsm = hsm();
    let s = hsm.session();
    let rsa = |bits: u64, e: Vec<u8>| {
        s.generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::Token(false), Attribute::ModulusBits(bits.into()), Attribute::PublicExponent(e)],
            &[Attribute::Token(false), Attribute::Sign(true)],
        )
    };
    assert!(rsa(1001, vec![3]).is_err(), "RSA modulus of 1001 bits (README: steps of 8)");
    assert!(rsa(8192, vec![3]).is_err(), "RSA modulus above 4096 bits");
    assert!(rsa(256, vec![3]).is_err(), "RSA modulus below 512 bits");
    assert!(rsa(1024, vec![2]).is_err(), "even public exponent");
    assert!(rsa(1024, vec![1]).is_err(), "public exponent 1");
    let create = |kt: KeyType, len: usize| {
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(kt),
            Attribute::Token(false),
            Attribute::Value(vec![0x42; len]),
        ])
    };
    for (kt, len) in
        [(KeyType::DES2, 15usize), (KeyType::DES2, 24), (KeyType::DES3, 16), (KeyType::AES, 20), (KeyType::AES, 0)]
    {
        assert!(create(kt, len).is_err(), "{kt:?} key of {len} bytes was accepted");
    }
    assert!(
        s.generate_key(&Mechanism::AesKeyGen, &[Attribute::Token(false), Attribute::ValueLen(20u64.into())]).is_err(),
        "AES key of 20 bytes generated"
    );
}

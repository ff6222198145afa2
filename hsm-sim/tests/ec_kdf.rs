//! The mechanisms of issue 14 through `cryptoki`: EC key pairs on P-256/384/521, ECDSA (raw and
//! with SHA-1/2), ECDH, Ed25519, SHA-224 HMAC, the 3.0 HMAC key generators, the key-from-key
//! derivations and NIST SP 800-108 in counter and feedback modes.
//!
//! Vectors: RFC 8032 §7.1 (Ed25519 tests 1–3), RFC 6979 §A.2.5 (P-256 key and its SHA-256
//! signature of "sample"), RFC 5903 §8.1 (ECDH P-256), RFC 4231 §4.3 (HMAC-SHA-224), PKCS#11 3.0
//! §2.43.7 (the extract example); SP 800-108 outputs were produced by OpenSSL 3.0's KBKDF
//! (`openssl kdf … KBKDF`, command lines beside each vector) and checked by hand for counter mode.
//! Every value was also checked with Python's `cryptography` when the test was written, and
//! generated keys are checked against the `openssl` crate at run time.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::kbkdf::{
    DerivedKey, Endianness, KbkdfCounterFormat, KbkdfDkmLengthFormat, KbkdfDkmLengthMethod, KbkdfFeedbackParams,
    KbkdfParams, PrfDataParam, PrfDataParamType,
};
use cryptoki::mechanism::misc::{ExtractParams, KeyDerivationStringData};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use std::num::NonZeroUsize;

const P256: &str = "06082A8648CE3D030107";
const P384: &str = "06052B81040022";
const P521: &str = "06052B81040023";
const ED25519_OID: &str = "06032B6570";

/// Raw attribute bytes (cryptoki 0.12's `Attribute` has no case for every type we read).
#[track_caller]
fn raw_attr(s: &Session, o: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
    let hsm = hsm();
    let (rv, len) = hsm.raw.attribute_len(s, o, ty);
    assert_eq!(rv, CKR_OK, "length of attribute 0x{ty:X}");
    let (rv, n, mut v) = hsm.raw.attribute_into(s, o, ty, len as usize);
    assert_eq!(rv, CKR_OK, "attribute 0x{ty:X}");
    v.truncate(n as usize);
    v
}

fn raw_ulong(s: &Session, o: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> CK_ULONG {
    CK_ULONG::from_ne_bytes(raw_attr(s, o, ty).try_into().unwrap())
}

fn ec_pair(s: &Session, mech: &Mechanism, params: &str, derive: bool) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        mech,
        &[Attribute::Token(false), Attribute::EcParams(h(params)), Attribute::Verify(true)],
        &[
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Derive(derive),
        ],
    )
    .unwrap_or_else(|e| panic!("key pair on {params}: {e}"))
}

/// The raw point inside a `CKA_EC_POINT` (DER OCTET STRING).
fn point_of(der: &[u8]) -> &[u8] {
    match der {
        [0x04, 0x81, n, rest @ ..] => {
            assert_eq!(*n as usize, rest.len());
            rest
        }
        [0x04, n, rest @ ..] => {
            assert_eq!(*n as usize, rest.len());
            rest
        }
        _ => panic!("CKA_EC_POINT is not a DER OCTET STRING"),
    }
}

fn openssl_key(nid: Nid, point: &[u8]) -> EcKey<openssl::pkey::Public> {
    let g = EcGroup::from_curve_name(nid).unwrap();
    let mut ctx = BigNumContext::new().unwrap();
    EcKey::from_public_key(&g, &EcPoint::from_bytes(&g, point, &mut ctx).unwrap()).unwrap()
}

#[test]
fn new_mechanisms_are_advertised_with_flags_and_sizes() {
    let hsm = hsm();
    let slot = hsm.shared().slot;
    let list = hsm.raw.mechanism_list(slot.id());
    for m in [
        CKM_EC_KEY_PAIR_GEN,
        CKM_ECDSA,
        CKM_ECDSA_SHA1,
        CKM_ECDSA_SHA224,
        CKM_ECDSA_SHA256,
        CKM_ECDSA_SHA384,
        CKM_ECDSA_SHA512,
        CKM_ECDH1_DERIVE,
        CKM_EC_EDWARDS_KEY_PAIR_GEN,
        CKM_EDDSA,
        CKM_SHA224_HMAC,
        CKM_SHA_1_KEY_GEN,
        CKM_SHA224_KEY_GEN,
        CKM_SHA256_KEY_GEN,
        CKM_SHA384_KEY_GEN,
        CKM_SHA512_KEY_GEN,
        CKM_CONCATENATE_BASE_AND_KEY,
        CKM_CONCATENATE_BASE_AND_DATA,
        CKM_CONCATENATE_DATA_AND_BASE,
        CKM_XOR_BASE_AND_DATA,
        CKM_EXTRACT_KEY_FROM_KEY,
        CKM_SP800_108_COUNTER_KDF,
        CKM_SP800_108_FEEDBACK_KDF,
    ] {
        assert!(list.contains(&m), "C_GetMechanismList lacks 0x{m:X}");
    }
    let info = hsm.pkcs11.get_mechanism_info(slot, MechanismType::ECC_KEY_PAIR_GEN).unwrap();
    assert_eq!((info.min_key_size(), info.max_key_size()), (256, 521));
    assert!(info.generate_key_pair() && info.ec_from_oid() && info.ec_uncompressed() && info.ec_f_p());
    let info = hsm.pkcs11.get_mechanism_info(slot, MechanismType::ECDSA).unwrap();
    assert!(info.sign() && info.verify() && !info.encrypt() && !info.derive());
    let info = hsm.pkcs11.get_mechanism_info(slot, MechanismType::ECDH1_DERIVE).unwrap();
    assert!(info.derive() && !info.sign());
    let info = hsm.pkcs11.get_mechanism_info(slot, MechanismType::EDDSA).unwrap();
    assert_eq!((info.min_key_size(), info.max_key_size()), (256, 256));
    let info = hsm.pkcs11.get_mechanism_info(slot, MechanismType::SP800_108_COUNTER_KDF).unwrap();
    assert!(info.derive() && !info.generate());
}

#[test]
fn ec_key_pairs_on_three_curves_sign_and_verify_with_openssl() {
    let hsm = hsm();
    let s = hsm.session();
    for (params, nid, n, mech, hash) in [
        (P256, Nid::X9_62_PRIME256V1, 32usize, Mechanism::EcdsaSha256, openssl::hash::MessageDigest::sha256()),
        (P384, Nid::SECP384R1, 48, Mechanism::EcdsaSha384, openssl::hash::MessageDigest::sha384()),
        (P521, Nid::SECP521R1, 66, Mechanism::EcdsaSha512, openssl::hash::MessageDigest::sha512()),
    ] {
        let (public, private) = ec_pair(&s, &Mechanism::EccKeyPairGen, params, false);
        assert_eq!(raw_attr(&s, public, CKA_EC_PARAMS), h(params));
        assert_eq!(raw_attr(&s, private, CKA_EC_PARAMS), h(params));
        assert_eq!(raw_ulong(&s, private, CKA_KEY_TYPE), CKK_EC);
        assert_eq!(raw_ulong(&s, private, CKA_KEY_GEN_MECHANISM), CKM_EC_KEY_PAIR_GEN);
        let der = raw_attr(&s, public, CKA_EC_POINT);
        let point = point_of(&der).to_vec();
        assert_eq!(point.len(), 1 + 2 * n);
        assert_eq!(point[0], 0x04, "uncompressed point");
        // A sensitive private key does not give its value.
        assert_eq!(hsm.raw.attribute_len(&s, private, CKA_VALUE).0, CKR_ATTRIBUTE_SENSITIVE);
        let ossl = openssl_key(nid, &point);
        // Hash-and-sign, multi-part: OpenSSL verifies the r ‖ s signature.
        let msg = b"Quill issue 14: ECDSA with a hash, in two parts";
        s.sign_init(&mech, private).unwrap();
        s.sign_update(&msg[..10]).unwrap();
        s.sign_update(&msg[10..]).unwrap();
        let sig = s.sign_final().unwrap();
        assert_eq!(sig.len(), 2 * n);
        let digest = openssl::hash::hash(hash, msg).unwrap();
        let es = EcdsaSig::from_private_components(
            BigNum::from_slice(&sig[..n]).unwrap(),
            BigNum::from_slice(&sig[n..]).unwrap(),
        )
        .unwrap();
        assert!(es.verify(&digest, &ossl).unwrap(), "OpenSSL rejects the module's signature on {params}");
        s.verify(&mech, public, msg, &sig).unwrap();
        // Raw ECDSA over the digest gives a signature the hashing mechanism accepts.
        let raw = s.sign(&Mechanism::Ecdsa, private, &digest).unwrap();
        s.verify(&mech, public, msg, &raw).unwrap();
        // An OpenSSL signature verifies in the module; a flipped bit does not.
        let theirs = {
            let g = EcGroup::from_curve_name(nid).unwrap();
            let k = EcKey::generate(&g).unwrap();
            let sig = EcdsaSig::sign(&digest, &k).unwrap();
            let mut ctx = BigNumContext::new().unwrap();
            let p = k.public_key().to_bytes(&g, PointConversionForm::UNCOMPRESSED, &mut ctx).unwrap();
            let imported = s
                .create_object(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Token(false),
                    Attribute::Verify(true),
                    Attribute::EcParams(h(params)),
                    Attribute::EcPoint(p),
                ])
                .unwrap();
            let mut rs = sig.r().to_vec_padded(n as i32).unwrap();
            rs.extend(sig.s().to_vec_padded(n as i32).unwrap());
            (imported, rs)
        };
        s.verify(&Mechanism::Ecdsa, theirs.0, &digest, &theirs.1).unwrap();
        let mut bad = theirs.1.clone();
        bad[5] ^= 1;
        expect_rv(s.verify(&Mechanism::Ecdsa, theirs.0, &digest, &bad), RvError::SignatureInvalid);
        expect_rv(s.verify(&Mechanism::Ecdsa, theirs.0, &digest, &bad[1..]), RvError::SignatureLenRange);
    }
}

#[test]
fn rfc6979_p256_key_and_signature() {
    let hsm = hsm();
    let s = hsm.session();
    // RFC 6979 §A.2.5: private key x, public key U, and the SHA-256 signature of "sample".
    let x = h("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721");
    let ux = "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6";
    let uy = "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299";
    let sig = h("EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716\
                 F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8");
    let point = h(&format!("04{ux}{uy}"));
    // The public key as a DER OCTET STRING (what SoftHSM and pkcs11-tool write) and raw.
    for p in [[vec![0x04, 0x41], point.clone()].concat(), point.clone()] {
        let public = s
            .create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Token(false),
                Attribute::Verify(true),
                Attribute::EcParams(h(P256)),
                Attribute::EcPoint(p),
            ])
            .unwrap();
        assert_eq!(raw_attr(&s, public, CKA_EC_POINT), [vec![0x04, 0x41], point.clone()].concat());
        s.verify(&Mechanism::EcdsaSha256, public, b"sample", &sig).unwrap();
        expect_rv(s.verify(&Mechanism::EcdsaSha256, public, b"samplf", &sig), RvError::SignatureInvalid);
    }
    // The private key imported by value signs what that public key verifies.
    let private = s
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Sign(true),
            Attribute::EcParams(h(P256)),
            Attribute::Value(x.clone()),
        ])
        .unwrap();
    assert_eq!(raw_attr(&s, private, CKA_VALUE), x);
    let mine = s.sign(&Mechanism::EcdsaSha256, private, b"sample").unwrap();
    let ossl = openssl_key(Nid::X9_62_PRIME256V1, &point);
    let digest = openssl::sha::sha256(b"sample");
    let es = EcdsaSig::from_private_components(
        BigNum::from_slice(&mine[..32]).unwrap(),
        BigNum::from_slice(&mine[32..]).unwrap(),
    )
    .unwrap();
    assert!(es.verify(&digest, &ossl).unwrap());
    // Malformed keys are refused with the standard's codes.
    let bad_point = [vec![0x04, 0x41, 0x04], vec![0x11; 64]].concat();
    expect_rv(
        s.create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(false),
            Attribute::EcParams(h(P256)),
            Attribute::EcPoint(bad_point),
        ]),
        RvError::AttributeValueInvalid,
    );
    // secp256k1: a well-formed OID of a curve the module lacks.
    expect_rv(
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(false), Attribute::EcParams(h("06052B8104000A"))],
            &[Attribute::Token(false)],
        ),
        RvError::CurveNotSupported,
    );
    expect_rv(
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &[Attribute::Token(false)], &[Attribute::Token(false)]),
        RvError::TemplateIncomplete,
    );
    // An Edwards curve with the Weierstrass generator, and the reverse.
    expect_rv(
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(false), Attribute::EcParams(h(ED25519_OID))],
            &[Attribute::Token(false)],
        ),
        RvError::TemplateInconsistent,
    );
    // An Ed25519 key cannot do ECDSA.
    let (_, ed) = ec_pair(&s, &Mechanism::EccEdwardsKeyPairGen, ED25519_OID, false);
    expect_rv(s.sign_init(&Mechanism::Ecdsa, ed), RvError::KeyTypeInconsistent);
}

#[test]
fn ecdh_rfc5903_and_both_ways_with_kdfs() {
    let hsm = hsm();
    let s = hsm.session();
    // RFC 5903 §8.1: i, g^r, and the shared x-coordinate.
    let i = h("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433");
    let gr = h("04D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63\
                56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB");
    let want = h("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE");
    let private = s
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Derive(true),
            Attribute::EcParams(h(P256)),
            Attribute::Value(i),
        ])
        .unwrap();
    let out = |len: Option<u64>| {
        let mut t = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        if let Some(l) = len {
            t.push(Attribute::ValueLen(l.into()));
        }
        t
    };
    // The peer point raw and as a DER OCTET STRING.
    for public in [gr.clone(), [vec![0x04, 0x41], gr.clone()].concat()] {
        let k = s
            .derive_key(&Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &public)), private, &out(None))
            .unwrap();
        assert_eq!(bytes(&s, k, AttributeType::Value), want);
    }
    // CKD_NULL truncated to 16 bytes; an X9.63 KDF with SHA-256 and shared data.
    let k = s
        .derive_key(&Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &gr)), private, &out(Some(16)))
        .unwrap();
    assert_eq!(bytes(&s, k, AttributeType::Value), want[..16]);
    let k = s
        .derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::sha256(b"quill"), &gr)),
            private,
            &out(Some(40)),
        )
        .unwrap();
    let x963 = {
        let mut v = openssl::sha::sha256(&[want.clone(), vec![0, 0, 0, 1], b"quill".to_vec()].concat()).to_vec();
        v.extend(openssl::sha::sha256(&[want.clone(), vec![0, 0, 0, 2], b"quill".to_vec()].concat()));
        v.truncate(40);
        v
    };
    assert_eq!(bytes(&s, k, AttributeType::Value), x963);
    // Bad parameters: a point off the curve, CKD_NULL with shared data, a longer key than Z.
    let mut off = gr.clone();
    off[40] ^= 1;
    expect_rv(
        s.derive_key(&Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &off)), private, &out(None)),
        RvError::MechanismParamInvalid,
    );
    let null_with_data = hsm.raw.derive(
        &s,
        CKM_ECDH1_DERIVE,
        common::raw::Param::Bytes(&ecdh_params_raw(CKD_NULL, b"x", &gr)),
        private,
        &out(None),
    );
    assert_eq!(null_with_data.unwrap_err(), CKR_MECHANISM_PARAM_INVALID);
    expect_rv(
        s.derive_key(&Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &gr)), private, &out(Some(33))),
        RvError::TemplateInconsistent,
    );
    // Two fresh key pairs on P-384 and P-521 agree both ways, and with OpenSSL.
    for (params, nid) in [(P384, Nid::SECP384R1), (P521, Nid::SECP521R1)] {
        let (pa, sa) = ec_pair(&s, &Mechanism::EccKeyPairGen, params, true);
        let (pb, sb) = ec_pair(&s, &Mechanism::EccKeyPairGen, params, true);
        let qa = point_of(&raw_attr(&s, pa, CKA_EC_POINT)).to_vec();
        let qb = point_of(&raw_attr(&s, pb, CKA_EC_POINT)).to_vec();
        let ab =
            s.derive_key(&Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &qb)), sa, &out(None)).unwrap();
        let ba =
            s.derive_key(&Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &qa)), sb, &out(None)).unwrap();
        let z = bytes(&s, ab, AttributeType::Value);
        assert_eq!(z, bytes(&s, ba, AttributeType::Value));
        let g = EcGroup::from_curve_name(nid).unwrap();
        let mine = EcKey::generate(&g).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let q = mine.public_key().to_bytes(&g, PointConversionForm::UNCOMPRESSED, &mut ctx).unwrap();
        let k =
            s.derive_key(&Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &q)), sa, &out(None)).unwrap();
        let pk = openssl::pkey::PKey::from_ec_key(mine).unwrap();
        let peer = openssl::pkey::PKey::from_ec_key(openssl_key(nid, &qa)).unwrap();
        let mut d = openssl::derive::Deriver::new(&pk).unwrap();
        d.set_peer(&peer).unwrap();
        assert_eq!(bytes(&s, k, AttributeType::Value), d.derive_to_vec().unwrap());
    }
}

/// A packed `CK_ECDH1_DERIVE_PARAMS` pointing into `shared` and `public` (for the raw call).
fn ecdh_params_raw(kdf: CK_ULONG, shared: &[u8], public: &[u8]) -> Vec<u8> {
    let p = CK_ECDH1_DERIVE_PARAMS {
        kdf,
        ulSharedDataLen: shared.len() as CK_ULONG,
        pSharedData: shared.as_ptr() as *mut u8,
        ulPublicDataLen: public.len() as CK_ULONG,
        pPublicData: public.as_ptr() as *mut u8,
    };
    let mut v = Vec::new();
    v.extend(p.kdf.to_ne_bytes());
    v.extend(p.ulSharedDataLen.to_ne_bytes());
    v.extend((p.pSharedData as usize).to_ne_bytes());
    v.extend(p.ulPublicDataLen.to_ne_bytes());
    v.extend((p.pPublicData as usize).to_ne_bytes());
    v
}

#[test]
fn ed25519_rfc8032_vectors() {
    let hsm = hsm();
    let s = hsm.session();
    // RFC 8032 §7.1, TEST 1, 2 and 3: secret key, public key, message, signature.
    let vectors = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];
    for (params, (sk, pk, msg, sig)) in [ED25519_OID, "130C656477617264733235353139", ED25519_OID].iter().zip(vectors) {
        let private = s
            .create_object(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sign(true),
                Attribute::EcParams(h(params)),
                Attribute::Value(h(sk)),
            ])
            .unwrap();
        let public = s
            .create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::Token(false),
                Attribute::Verify(true),
                Attribute::EcParams(h(params)),
                Attribute::EcPoint([vec![0x04, 0x20], h(pk)].concat()),
            ])
            .unwrap();
        assert_eq!(raw_attr(&s, public, CKA_EC_PARAMS), h(params), "CKA_EC_PARAMS is kept as given");
        let pure = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let got = s.sign(&pure, private, &h(msg)).unwrap();
        assert_eq!(hex::encode(&got), sig, "RFC 8032 signature");
        s.verify(&pure, public, &h(msg), &got).unwrap();
        let mut bad = got.clone();
        bad[63] ^= 0x40;
        expect_rv(s.verify(&pure, public, &h(msg), &bad), RvError::SignatureInvalid);
        // Multi-part gives the same (deterministic) signature.
        s.sign_init(&pure, private).unwrap();
        s.sign_update(&h(msg)).unwrap();
        assert_eq!(hex::encode(s.sign_final().unwrap()), sig);
        // Ed25519ctx / Ed25519ph are not supported.
        expect_rv(
            s.sign_init(&Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519ctx(b"ctx"))), private),
            RvError::MechanismParamInvalid,
        );
    }
    // A generated pair: 32-byte point in an OCTET STRING, OpenSSL verifies.
    let (public, private) = ec_pair(&s, &Mechanism::EccEdwardsKeyPairGen, ED25519_OID, false);
    assert_eq!(raw_ulong(&s, private, CKA_KEY_TYPE), CKK_EC_EDWARDS);
    let der = raw_attr(&s, public, CKA_EC_POINT);
    assert_eq!(der[..2], [0x04, 0x20]);
    let pure = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let sig = s.sign(&pure, private, b"quill").unwrap();
    let pk = openssl::pkey::PKey::public_key_from_raw_bytes(&der[2..], openssl::pkey::Id::ED25519).unwrap();
    assert!(openssl::sign::Verifier::new_without_digest(&pk).unwrap().verify_oneshot(&sig, b"quill").unwrap());
}

#[test]
fn sha224_hmac_rfc4231_and_hmac_key_generators() {
    let hsm = hsm();
    let s = hsm.session();
    // RFC 4231 §4.3 (test case 2).
    let k = generic_key(&s, b"Jefe", &[]);
    let mac = s.sign(&Mechanism::Sha224Hmac, k, b"what do ya want for nothing?").unwrap();
    assert_eq!(hex::encode(&mac), "a30e01098bc6dbbf45690f3a7e9e6d0f8bbea2a39e6148008fd05e44");
    s.verify(&Mechanism::Sha224Hmac, k, b"what do ya want for nothing?", &mac).unwrap();
    // PKCS#11 3.0 HMAC key generators: key type from the mechanism, length from the template.
    for (mech, ckm, kt, sign, len) in [
        (Mechanism::Sha1KeyGen, CKM_SHA_1_KEY_GEN, CKK_SHA_1_HMAC, Mechanism::Sha1Hmac, 20u64),
        (Mechanism::Sha224KeyGen, CKM_SHA224_KEY_GEN, CKK_SHA224_HMAC, Mechanism::Sha224Hmac, 28),
        (Mechanism::Sha256KeyGen, CKM_SHA256_KEY_GEN, CKK_SHA256_HMAC, Mechanism::Sha256Hmac, 32),
        (Mechanism::Sha384KeyGen, CKM_SHA384_KEY_GEN, CKK_SHA384_HMAC, Mechanism::Sha384Hmac, 48),
        (Mechanism::Sha512KeyGen, CKM_SHA512_KEY_GEN, CKK_SHA512_HMAC, Mechanism::Sha512Hmac, 64),
    ] {
        let key = s
            .generate_key(
                &mech,
                &[
                    Attribute::Token(false),
                    Attribute::ValueLen(len.into()),
                    Attribute::Sign(true),
                    Attribute::Verify(true),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                ],
            )
            .unwrap();
        assert_eq!(raw_ulong(&s, key, CKA_KEY_TYPE), kt);
        assert_eq!(raw_ulong(&s, key, CKA_KEY_GEN_MECHANISM), ckm);
        let v = bytes(&s, key, AttributeType::Value);
        assert_eq!(v.len() as u64, len);
        let m = s.sign(&sign, key, b"hmac keygen").unwrap();
        let pk = openssl::pkey::PKey::hmac(&v).unwrap();
        let md = match len {
            20 => openssl::hash::MessageDigest::sha1(),
            28 => openssl::hash::MessageDigest::sha224(),
            32 => openssl::hash::MessageDigest::sha256(),
            48 => openssl::hash::MessageDigest::sha384(),
            _ => openssl::hash::MessageDigest::sha512(),
        };
        assert_eq!(m, openssl::sign::Signer::new(md, &pk).unwrap().sign_oneshot_to_vec(b"hmac keygen").unwrap());
        // No length: CKR_TEMPLATE_INCOMPLETE.
        expect_rv(s.generate_key(&mech, &[Attribute::Token(false)]), RvError::TemplateIncomplete);
    }
}

fn plain(extra: &[Attribute]) -> Vec<Attribute> {
    merge(
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ],
        extra,
    )
}

#[test]
fn concatenate_xor_and_extract() {
    let hsm = hsm();
    let s = hsm.session();
    let open = [Attribute::Sensitive(false), Attribute::Extractable(true)];
    let a = generic_key(&s, &h("00112233445566778899"), &open);
    let b = generic_key(&s, &h("AABBCCDD"), &open);
    let v = |k| bytes(&s, k, AttributeType::Value);
    let k = s.derive_key(&Mechanism::ConcatenateBaseAndKey(b), a, &plain(&[])).unwrap();
    assert_eq!(v(k), h("00112233445566778899AABBCCDD"));
    let data = h("0F0F0F");
    let k =
        s.derive_key(&Mechanism::ConcatenateBaseAndData(KeyDerivationStringData::new(&data)), a, &plain(&[])).unwrap();
    assert_eq!(v(k), h("001122334455667788990F0F0F"));
    let k =
        s.derive_key(&Mechanism::ConcatenateDataAndBase(KeyDerivationStringData::new(&data)), a, &plain(&[])).unwrap();
    assert_eq!(v(k), h("0F0F0F00112233445566778899"));
    let k = s.derive_key(&Mechanism::XorBaseAndData(KeyDerivationStringData::new(&data)), a, &plain(&[])).unwrap();
    assert_eq!(v(k), h("0F1E2D"), "XOR is as long as the shorter of key and data");
    // PKCS#11 3.0 §2.43.7: 0x329F84A9, bit 21, 2 bytes -> 0x9526.
    let c = generic_key(&s, &h("329F84A9"), &open);
    let k = s
        .derive_key(
            &Mechanism::ExtractKeyFromKey(ExtractParams::new(21)),
            c,
            &plain(&[Attribute::ValueLen(2u64.into())]),
        )
        .unwrap();
    assert_eq!(v(k), h("9526"));
    // Concatenation to an AES-128 key of the first 16 bytes of base ‖ data.
    let k = s
        .derive_key(
            &Mechanism::ConcatenateBaseAndData(KeyDerivationStringData::new(&h("A0A1A2A3A4A5"))),
            a,
            &plain(&[Attribute::KeyType(KeyType::AES), Attribute::ValueLen(16u64.into())]),
        )
        .unwrap();
    assert_eq!(v(k), h("00112233445566778899A0A1A2A3A4A5"));
    // A sensitive base makes a sensitive key; asking otherwise is inconsistent.
    let secret = generic_key(&s, &h("0102030405060708"), &[]);
    let k = s
        .derive_key(
            &Mechanism::XorBaseAndData(KeyDerivationStringData::new(&h("FFFFFFFF"))),
            secret,
            &[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Token(false)],
        )
        .unwrap();
    assert!(flag(&s, k, AttributeType::Sensitive));
    expect_rv(
        s.derive_key(&Mechanism::XorBaseAndData(KeyDerivationStringData::new(&h("FF"))), secret, &plain(&[])),
        RvError::TemplateInconsistent,
    );
    // Too long, bit index past the end, no length for extract.
    expect_rv(
        s.derive_key(&Mechanism::ConcatenateBaseAndKey(b), a, &plain(&[Attribute::ValueLen(15u64.into())])),
        RvError::TemplateInconsistent,
    );
    expect_rv(
        s.derive_key(
            &Mechanism::ExtractKeyFromKey(ExtractParams::new(32)),
            c,
            &plain(&[Attribute::ValueLen(2u64.into())]),
        ),
        RvError::MechanismParamInvalid,
    );
    expect_rv(
        s.derive_key(&Mechanism::ExtractKeyFromKey(ExtractParams::new(3)), c, &plain(&[])),
        RvError::TemplateIncomplete,
    );
    // The other key must allow derivation too.
    let no_derive = generic_key(&s, &h("01"), &[Attribute::Derive(false)]);
    expect_rv(
        s.derive_key(&Mechanism::ConcatenateBaseAndKey(no_derive), a, &plain(&[])),
        RvError::KeyFunctionNotPermitted,
    );
}

const KBKDF_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn be32() -> KbkdfCounterFormat {
    KbkdfCounterFormat::new(Endianness::Big, NonZeroUsize::new(32).unwrap())
}

fn dkm32() -> KbkdfDkmLengthFormat {
    KbkdfDkmLengthFormat::new(KbkdfDkmLengthMethod::SumOfKeys, Endianness::Big, NonZeroUsize::new(32).unwrap())
}

#[test]
fn sp800_108_counter_mode_matches_openssl_kbkdf() {
    let hsm = hsm();
    let s = hsm.session();
    let base = generic_key(&s, &h(KBKDF_KEY), &[]);
    let (ctr, dkm) = (be32(), dkm32());
    // OpenSSL's KBKDF layout: [i]_32 ‖ label ‖ 00 ‖ context ‖ [L]_32.
    let data = [
        PrfDataParam::new(PrfDataParamType::IterationVariable(Some(&ctr))),
        PrfDataParam::new(PrfDataParamType::ByteArray(b"quill label")),
        PrfDataParam::new(PrfDataParamType::ByteArray(&[0])),
        PrfDataParam::new(PrfDataParamType::ByteArray(b"context 14")),
        PrfDataParam::new(PrfDataParamType::DkmLength(&dkm)),
    ];
    // openssl kdf -keylen 48 -kdfopt mac:HMAC -kdfopt digest:SHA256 -kdfopt hexkey:<KBKDF_KEY>
    //   -kdfopt hexsalt:7175696c6c206c6162656c -kdfopt hexinfo:636f6e74657874203134 KBKDF
    let want48 = "c19bca7ae9691282c386fa99aa53cb7439d691be2efd30b0ef00d54d5eb93d0d9312dd2bf37a705b5d60fd6001068d9d";
    let k = s
        .derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::SHA256_HMAC, &data, None)),
            base,
            &plain(&[Attribute::ValueLen(48u64.into())]),
        )
        .unwrap();
    assert_eq!(hex::encode(bytes(&s, k, AttributeType::Value)), want48);
    // The same 48 bytes as an AES-256 key plus an additional 16-byte key (L is the sum).
    // cryptoki's CK_DERIVED_KEY points into this template: it must outlive the call.
    let extra_template = plain(&[Attribute::ValueLen(16u64.into())]);
    let mut extra = [DerivedKey::new(&extra_template)];
    let k = s
        .derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::SHA256_HMAC, &data, Some(&mut extra))),
            base,
            &plain(&[Attribute::KeyType(KeyType::AES), Attribute::ValueLen(32u64.into())]),
        )
        .unwrap();
    assert_eq!(hex::encode(bytes(&s, k, AttributeType::Value)), want48[..64]);
    let k2 = extra[0].handle().expect("the additional key's handle");
    assert_eq!(hex::encode(bytes(&s, k2, AttributeType::Value)), want48[64..]);
    // HMAC-SHA-512, 40 bytes (-kdfopt digest:SHA512 -keylen 40).
    let k = s
        .derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::SHA512_HMAC, &data, None)),
            base,
            &plain(&[Attribute::ValueLen(40u64.into())]),
        )
        .unwrap();
    assert_eq!(
        hex::encode(bytes(&s, k, AttributeType::Value)),
        "0c64baad64fecd84c1dffe382997d4b9d7b74910baea6529e3bc85eaa17eb47b512b270e7d20b2b3"
    );
    // AES-CMAC with the AES-128 key of SP 800-38B (-kdfopt mac:CMAC -kdfopt cipher:AES-128-CBC).
    let aes = aes_key(&s, &h("2b7e151628aed2a6abf7158809cf4f3c"), &[]);
    let k = s
        .derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::AES_CMAC, &data, None)),
            aes,
            &plain(&[Attribute::ValueLen(32u64.into())]),
        )
        .unwrap();
    assert_eq!(
        hex::encode(bytes(&s, k, AttributeType::Value)),
        "94e253202a6095d4f05a96b3c21423bdb3263be95cf34bece3e8ad65beb171e6"
    );
    // A PRF the base key does not fit.
    expect_rv(
        s.derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::AES_CMAC, &data, None)),
            base,
            &plain(&[Attribute::ValueLen(16u64.into())]),
        ),
        RvError::KeyTypeInconsistent,
    );
}

#[test]
fn sp800_108_feedback_mode_matches_openssl_kbkdf() {
    let hsm = hsm();
    let s = hsm.session();
    let base = generic_key(&s, &h(KBKDF_KEY), &[]);
    let (ctr, dkm) = (be32(), dkm32());
    // OpenSSL's feedback layout: K(i-1) ‖ [i]_32 ‖ label ‖ 00 ‖ context ‖ [L]_32, K(0) = seed.
    let data = [
        PrfDataParam::new(PrfDataParamType::IterationVariable(None)),
        PrfDataParam::new(PrfDataParamType::Counter(&ctr)),
        PrfDataParam::new(PrfDataParamType::ByteArray(b"quill label")),
        PrfDataParam::new(PrfDataParamType::ByteArray(&[0])),
        PrfDataParam::new(PrfDataParamType::ByteArray(b"context 14")),
        PrfDataParam::new(PrfDataParamType::DkmLength(&dkm)),
    ];
    // openssl kdf -keylen 48 -kdfopt mode:FEEDBACK -kdfopt mac:HMAC -kdfopt digest:SHA384
    //   -kdfopt hexkey:<KBKDF_KEY> -kdfopt hexsalt:… -kdfopt hexinfo:… -kdfopt hexseed:6465…93 KBKDF
    let iv: Vec<u8> = (100u8..148).collect();
    let k = s
        .derive_key(
            &Mechanism::KbkdfFeedback(KbkdfFeedbackParams::new(MechanismType::SHA384_HMAC, &data, Some(&iv), None)),
            base,
            &plain(&[Attribute::ValueLen(48u64.into())]),
        )
        .unwrap();
    assert_eq!(
        hex::encode(bytes(&s, k, AttributeType::Value)),
        "63f41d67a62421c1ce10383e51adc504e27bd1392ad70b6bbb667a6f3880072b1583772d36a46d92547662d60b34cb5c"
    );
    // AES-256-CMAC, 16-byte seed (-kdfopt cipher:AES-256-CBC -kdfopt hexseed:00…0f).
    let aes = aes_key(&s, &h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"), &[]);
    let iv: Vec<u8> = (0u8..16).collect();
    let k = s
        .derive_key(
            &Mechanism::KbkdfFeedback(KbkdfFeedbackParams::new(MechanismType::AES_CMAC, &data, Some(&iv), None)),
            aes,
            &plain(&[Attribute::ValueLen(32u64.into())]),
        )
        .unwrap();
    assert_eq!(
        hex::encode(bytes(&s, k, AttributeType::Value)),
        "d3235a4c23e666a2fd3b7edb7eb292e19c2848099f5d5799c2f4e3cd1c0d76c8"
    );
}

#[test]
fn sp800_108_bad_data_parameters_are_mechanism_param_invalid() {
    let hsm = hsm();
    let s = hsm.session();
    let base = generic_key(&s, &h(KBKDF_KEY), &[]);
    let (ctr, dkm) = (be32(), dkm32());
    let odd = KbkdfCounterFormat::new(Endianness::Big, NonZeroUsize::new(12).unwrap());
    let wide =
        KbkdfDkmLengthFormat::new(KbkdfDkmLengthMethod::SumOfKeys, Endianness::Big, NonZeroUsize::new(72).unwrap());
    let t = plain(&[Attribute::ValueLen(32u64.into())]);
    let counter = |data: &[PrfDataParam], prf| {
        s.derive_key(&Mechanism::KbkdfCounter(KbkdfParams::new(prf, data, None)), base, &t)
    };
    let it = PrfDataParam::new(PrfDataParamType::IterationVariable(Some(&ctr)));
    let label = PrfDataParam::new(PrfDataParamType::ByteArray(b"l"));
    let cases: Vec<(&str, Vec<PrfDataParam>, MechanismType)> = vec![
        ("no iteration variable", vec![label], MechanismType::SHA256_HMAC),
        ("two iteration variables", vec![it, it], MechanismType::SHA256_HMAC),
        (
            "iteration variable without format",
            vec![PrfDataParam::new(PrfDataParamType::IterationVariable(None))],
            MechanismType::SHA256_HMAC,
        ),
        (
            "optional counter in counter mode",
            vec![it, PrfDataParam::new(PrfDataParamType::Counter(&ctr))],
            MechanismType::SHA256_HMAC,
        ),
        (
            "12-bit counter",
            vec![PrfDataParam::new(PrfDataParamType::IterationVariable(Some(&odd)))],
            MechanismType::SHA256_HMAC,
        ),
        (
            "two DKM lengths",
            vec![
                it,
                PrfDataParam::new(PrfDataParamType::DkmLength(&dkm)),
                PrfDataParam::new(PrfDataParamType::DkmLength(&dkm)),
            ],
            MechanismType::SHA256_HMAC,
        ),
        (
            "72-bit DKM length",
            vec![it, PrfDataParam::new(PrfDataParamType::DkmLength(&wide))],
            MechanismType::SHA256_HMAC,
        ),
        ("empty byte array", vec![it, PrfDataParam::new(PrfDataParamType::ByteArray(&[]))], MechanismType::SHA256_HMAC),
        ("PRF not supported", vec![it], MechanismType::SHA256),
        ("no data parameters", vec![], MechanismType::SHA256_HMAC),
    ];
    for (what, data, prf) in cases {
        expect_rv_named(counter(&data, prf), RvError::MechanismParamInvalid, what);
    }
    // Feedback mode: the iteration variable takes no format.
    let fb = [PrfDataParam::new(PrfDataParamType::IterationVariable(Some(&ctr)))];
    expect_rv(
        s.derive_key(
            &Mechanism::KbkdfFeedback(KbkdfFeedbackParams::new(MechanismType::SHA256_HMAC, &fb, None, None)),
            base,
            &t,
        ),
        RvError::MechanismParamInvalid,
    );
    // An 8-bit little-endian counter, no other data: 16 blocks of HMAC-SHA-1(key, [i]_8).
    let c8 = KbkdfCounterFormat::new(Endianness::Little, NonZeroUsize::new(8).unwrap());
    let ok = [PrfDataParam::new(PrfDataParamType::IterationVariable(Some(&c8)))];
    let k = s
        .derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::SHA1_HMAC, &ok, None)),
            base,
            &plain(&[Attribute::ValueLen(320u64.into())]),
        )
        .unwrap();
    let v = bytes(&s, k, AttributeType::Value);
    let pk = openssl::pkey::PKey::hmac(&h(KBKDF_KEY)).unwrap();
    for i in 1u8..=16 {
        let b = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha1(), &pk)
            .unwrap()
            .sign_oneshot_to_vec(&[i])
            .unwrap();
        assert_eq!(v[(i as usize - 1) * 20..i as usize * 20], b[..], "block {i}");
    }
    // A length no key can have is refused before the KDF runs (no 2^40-byte allocation).
    let huge = plain(&[Attribute::ValueLen((1u64 << 40).into())]);
    let r =
        s.derive_key(&Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::SHA256_HMAC, &ok, None)), base, &huge);
    assert!(r.is_err(), "a 2^40-byte key was derived");
    let r = s.derive_key(
        &Mechanism::Ecdh1Derive(cryptoki::mechanism::elliptic_curve::Ecdh1DeriveParams::new(
            EcKdf::sha256(b""),
            &[4u8; 65],
        )),
        base,
        &huge,
    );
    assert!(r.is_err());
    // No length for the derived key.
    expect_rv(
        s.derive_key(
            &Mechanism::KbkdfCounter(KbkdfParams::new(MechanismType::SHA256_HMAC, &ok, None)),
            base,
            &plain(&[]),
        ),
        RvError::TemplateIncomplete,
    );
}

#[track_caller]
fn expect_rv_named<T: std::fmt::Debug>(r: cryptoki::error::Result<T>, want: RvError, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {want:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(rv(e), want, "{what}"),
    }
}

#[test]
fn signature_and_point_edge_cases_are_refused() {
    // Wycheproof-style cases (the suite itself is not vendored): r or s out of range, a
    // malleated Ed25519 S (S + L), the point at infinity and a compressed point.
    let hsm = hsm();
    let s = hsm.session();
    let point = h("0460FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6\
                   7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299");
    let public = s
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::EcParams(h(P256)),
            Attribute::EcPoint(point.clone()),
        ])
        .unwrap();
    let r = "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716";
    let sv = "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8";
    let n = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";
    let zero = "00".repeat(32);
    s.verify(&Mechanism::EcdsaSha256, public, b"sample", &h(&format!("{r}{sv}"))).unwrap();
    for (what, sig) in [
        ("r = 0", format!("{zero}{sv}")),
        ("s = 0", format!("{r}{zero}")),
        ("r = n", format!("{n}{sv}")),
        ("s = n", format!("{r}{n}")),
    ] {
        expect_rv_named(
            s.verify(&Mechanism::EcdsaSha256, public, b"sample", &h(&sig)),
            RvError::SignatureInvalid,
            what,
        );
    }
    // The point at infinity and a point with a wrong prefix are not public keys.
    for bad in ["00", "0560FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"] {
        expect_rv_named(
            s.create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
                Attribute::Token(false),
                Attribute::EcParams(h(P256)),
                Attribute::EcPoint(h(bad)),
            ]),
            RvError::AttributeValueInvalid,
            bad,
        );
    }
    // A compressed point (02/03 ‖ X) is accepted and stored uncompressed.
    let compressed = [vec![0x02 | (point[64] & 1)], point[1..33].to_vec()].concat();
    let c = s
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::EcParams(h(P256)),
            Attribute::EcPoint(compressed),
        ])
        .unwrap();
    assert_eq!(raw_attr(&s, c, CKA_EC_POINT), [vec![0x04, 0x41], point].concat());
    // Ed25519, RFC 8032 test 1 with S replaced by S + L: OpenSSL (and so the module) checks S < L.
    let ed = s
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::EcParams(h(ED25519_OID)),
            Attribute::EcPoint(h("0420d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")),
        ])
        .unwrap();
    let pure = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let r8 = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155";
    s.verify(&pure, ed, b"", &h(&format!("{r8}5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")))
        .unwrap();
    expect_rv(
        s.verify(&pure, ed, b"", &h(&format!("{r8}4c8c7872aa064e049dbb3013fbf29380d25bf5f0595bbe24655141438e7a101b"))),
        RvError::SignatureInvalid,
    );
}

//! TR-31 key blocks through the vendor mechanisms `CKM_QUILL_TR31_WRAP` (0xD1550060) and
//! `CKM_QUILL_TR31_UNWRAP` (0xD1550061), on the built module through `cryptoki`
//! (hsm-sim/README.md, "Vendor mechanisms").
//!
//! The module's key blocks are read back twice: by the module itself (C_UnwrapKey) and by the
//! pure implementation in `quill_crypto::tr31` with the KBPK value the test knows (that
//! implementation is checked against the TR-31:2018 / X9.143 examples in its unit tests; the
//! third-party check against psec is tests/third_party/30_tr31_psec.sh). Published key blocks are
//! imported and their keys' check values compared with OpenSSL's.
#![allow(clippy::unwrap_used)]

mod common;

use common::reference as r;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use quill_crypto::tr31::{self, Kbpk};

const TR31_WRAP: u64 = 0xD155_0060;
const TR31_UNWRAP: u64 = 0xD155_0061;
const EMV_MK_OPTION_A: u64 = 0xD155_0001;

/// C_WrapKey with `CKM_QUILL_TR31_WRAP` and this header template.
fn wrap(s: &Session, header: &str, kbpk: ObjectHandle, key: ObjectHandle) -> cryptoki::error::Result<String> {
    s.wrap_key(&vendor(TR31_WRAP, header.as_bytes()), kbpk, key).map(|b| String::from_utf8(b).unwrap())
}

/// C_UnwrapKey with `CKM_QUILL_TR31_UNWRAP`.
fn unwrap(s: &Session, kbpk: ObjectHandle, block: &str, tmpl: &[Attribute]) -> cryptoki::error::Result<ObjectHandle> {
    s.unwrap_key(&vendor(TR31_UNWRAP, &[]), kbpk, block.as_bytes(), tmpl)
}

/// A session key, readable (not sensitive, extractable): the test compares values.
fn open_template() -> Vec<Attribute> {
    vec![Attribute::Token(false), Attribute::Sensitive(false), Attribute::Extractable(true)]
}

fn ulong_attr(s: &Session, o: ObjectHandle, t: AttributeType) -> u64 {
    match attr(s, o, t) {
        Some(Attribute::ValueLen(v)) => v.into(),
        Some(Attribute::KeyType(k)) => k.into(),
        other => panic!("attribute {t:?}: got {other:?}"),
    }
}

fn key_type(s: &Session, o: ObjectHandle) -> KeyType {
    match attr(s, o, AttributeType::KeyType) {
        Some(Attribute::KeyType(k)) => k,
        other => panic!("CKA_KEY_TYPE: got {other:?}"),
    }
}

/// The usage flags of a key: encrypt, decrypt, sign, verify, wrap, unwrap, derive.
fn usages(s: &Session, o: ObjectHandle) -> [bool; 7] {
    [
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Sign,
        AttributeType::Verify,
        AttributeType::Wrap,
        AttributeType::Unwrap,
        AttributeType::Derive,
    ]
    .map(|t| flag(s, o, t))
}

/// The reference check value of a DES-family or AES key.
fn reference_kcv(kt: KeyType, value: &[u8]) -> Vec<u8> {
    if kt == KeyType::AES { r::kcv_aes(value) } else { r::kcv_des(value) }
}

#[test]
fn mechanisms_are_listed_with_wrap_and_unwrap_flags() {
    let hsm = hsm();
    let slot = hsm.shared().slot;
    let list = hsm.raw.mechanism_list(slot.id());
    assert!(list.contains(&TR31_WRAP) && list.contains(&TR31_UNWRAP), "C_GetMechanismList: {list:X?}");
    let info = hsm.pkcs11.get_mechanism_info(slot, MechanismType::new_vendor_defined(TR31_WRAP).unwrap()).unwrap();
    assert!(info.wrap() && !info.unwrap() && !info.encrypt());
    assert_eq!((info.min_key_size(), info.max_key_size()), (16, 32), "KBPK sizes in bytes");
    let info = hsm.pkcs11.get_mechanism_info(slot, MechanismType::new_vendor_defined(TR31_UNWRAP).unwrap()).unwrap();
    assert!(info.unwrap() && !info.wrap());
}

/// One wrap/unwrap round trip: KBPK (type, value), key (type, value), header template.
struct Case {
    kbpk_type: KeyType,
    kbpk: &'static str,
    key_type: KeyType,
    key: &'static str,
    header: &'static str,
    /// The header the block must start with (length and PB block filled in).
    expect_header: &'static str,
}

const CASES: &[Case] = &[
    // Version B, 2-key TDES KBPK, DES2 PIN key; the key length is hidden as 24 bytes: 2 + 24 → 32
    // bytes of key data (64 characters), 16 characters of MAC.
    Case {
        kbpk_type: KeyType::DES2,
        kbpk: "89E88CF7931444F334BD7547FC3F380C",
        key_type: KeyType::DES2,
        key: "F039121BEC83D26B169BDCD5B22AAF8F",
        header: "B0000P0TE00E0000",
        expect_header: "B0096P0TE00E0000",
    },
    // Version B, 3-key KBPK, DES3 key-encryption key with a KS block (PB added to reach 8).
    Case {
        kbpk_type: KeyType::DES3,
        kbpk: "0123456789ABCDEFFEDCBA9876543210F1E2D3C4B5A69788",
        key_type: KeyType::DES3,
        key: "C1C2C4C7C8CBCDCE89ABCDEF0123456776543210FEDCBA98",
        header: "B0000K0TB12S0100KS0600",
        expect_header: "B0112K0TB12S0200KS0600PB0A000000",
    },
    // Version D, AES-128 KBPK, AES-128 data key: 2 + 32 → 48 bytes of key data.
    Case {
        kbpk_type: KeyType::AES,
        kbpk: "000102030405060708090A0B0C0D0E0F",
        key_type: KeyType::AES,
        key: "3F419E1CB7079442AA37474C2EFBF8B8",
        header: "D0000D0AB00S0000",
        expect_header: "D0144D0AB00S0000",
    },
    // Version D, AES-256 KBPK (TR-31:2018 A.7.4), AES-256 key, KS and TS blocks (27 characters:
    // a 5-character PB block brings them to 32).
    Case {
        kbpk_type: KeyType::AES,
        kbpk: "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
        key_type: KeyType::AES,
        key: "8C326037F8910BBFDBC267E5101DFBF9480433028D5E67B34673440F8ACEC972",
        header: "D0000K1AE01E0200KS08VM9ATS1320240101120000Z",
        expect_header: "D0176K1AE01E0300KS08VM9ATS1320240101120000ZPB050",
    },
    // Version D, AES-192 KBPK, a DES2 key (algorithm T in a version D block).
    Case {
        kbpk_type: KeyType::AES,
        kbpk: "E38331FBACE33F0B8694ABA5DC611CA20831949FEB898810",
        key_type: KeyType::DES2,
        key: "0123456789ABCDEFFEDCBA9876543210",
        header: "D0000M3TC00S0000",
        expect_header: "D0112M3TC00S0000",
    },
];

fn kbpk_of(kt: KeyType, v: &[u8]) -> Kbpk<'_> {
    if kt == KeyType::AES { Kbpk::Aes(v) } else { Kbpk::Tdes(v) }
}

#[test]
fn wrap_then_unwrap_versions_b_and_d() {
    let hsm = hsm();
    let s = hsm.session();
    for c in CASES {
        let (kbpk_v, key_v) = (h(c.kbpk), h(c.key));
        let kbpk = secret(&s, c.kbpk_type, &kbpk_v, &[]);
        let key = secret(&s, c.key_type, &key_v, &[]);
        let block = wrap(&s, c.header, kbpk, key).unwrap_or_else(|e| panic!("{}: {e}", c.header));
        assert!(block.starts_with(c.expect_header), "{}: {block}", c.header);
        assert_eq!(block[1..5].parse::<usize>().unwrap(), block.len(), "{}: length field", c.header);
        // The pure implementation reads it with the KBPK value.
        let (header, clear) = tr31::unwrap(kbpk_of(c.kbpk_type, &kbpk_v), block.as_bytes()).unwrap();
        assert_eq!(*clear, key_v, "{}: key in the block", c.header);
        assert_eq!(header.encode().unwrap(), c.expect_header);
        // Random padding: two wraps of the same key differ, both unwrap.
        let again = wrap(&s, c.header, kbpk, key).unwrap();
        assert_ne!(again, block, "{}: padding is random", c.header);
        assert_eq!(again.len(), block.len());
        // The module reads it back: type and length come from the block, the KCV is the key's.
        let back = unwrap(&s, kbpk, &block, &open_template()).unwrap_or_else(|e| panic!("{}: {e}", c.header));
        assert_eq!(key_type(&s, back), c.key_type, "{}", c.header);
        assert_eq!(ulong_attr(&s, back, AttributeType::ValueLen), key_v.len() as u64);
        assert_eq!(kcv(&s, back), kcv(&s, key), "{}: KCV of the unwrapped key", c.header);
        assert_eq!(kcv(&s, back), reference_kcv(c.key_type, &key_v), "{}: KCV against OpenSSL", c.header);
        assert_eq!(bytes(&s, back, AttributeType::Value), key_v);
        let back2 = unwrap(&s, kbpk, &again, &open_template()).unwrap();
        assert_eq!(kcv(&s, back2), kcv(&s, key));
    }
}

#[test]
fn published_blocks_import_with_their_check_values() {
    let hsm = hsm();
    let s = hsm.session();
    // TR-31:2018 A.7.2.2 and A.7.4 (blocks reproduced in openemv/tr31 test/tr31_decrypt_test.c).
    let published = [
        (
            KeyType::DES2,
            "DD7515F2BFC17F85CE48F3CA25CB21F6",
            "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E",
            KeyType::DES2,
        ),
        (
            KeyType::AES,
            "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
            "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F7425509593D03A457DC34",
            KeyType::AES,
        ),
    ];
    let key = h("3F419E1CB7079442AA37474C2EFBF8B8");
    for (kbpk_type, kbpk_v, block, kt) in published {
        let kbpk = secret(&s, kbpk_type, &h(kbpk_v), &[]);
        let k = unwrap(&s, kbpk, block, &open_template()).unwrap();
        assert_eq!(key_type(&s, k), kt);
        assert_eq!(kcv(&s, k), reference_kcv(kt, &key), "{}", &block[..16]);
        assert_eq!(bytes(&s, k, AttributeType::Value), key);
        // Mode E (encrypt only) allows encrypt and wrap; a P0 key gets the data role only (the
        // filled usages never mix the two roles, README "Key hygiene").
        assert_eq!(usages(&s, k), [true, false, false, false, false, false, false], "{}", &block[..16]);
    }
    // TR-31:2018 A.7.3.2: a BDK (mode X) with a KS block; the imported key only derives.
    let kbpk = des_key(&s, &h("1D22BF32387C600AD97F9B97A51311AC"), &[]);
    let bdk = unwrap(
        &s,
        kbpk,
        "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D21C4738A52190E248719E24B433627",
        &[Attribute::Token(false)],
    )
    .unwrap();
    assert_eq!(kcv(&s, bdk), r::kcv_des(&h("E8BC63E5479455E26577F715D587FE68")));
    assert_eq!(usages(&s, bdk), [false, false, false, false, false, false, true]);
}

#[test]
fn imported_imk_derives_the_published_icc_master_key() {
    // An IMK travels as a TR-31 block (E0, mode X) and, once imported, derives the ICC master key
    // of emv.md §6 #1 (testdata/emv_kat.toml, option_a_1) through CKM_QUILL_EMV_MK_OPTION_A.
    let hsm = hsm();
    let s = hsm.session();
    let t = testdata("emv_kat.toml");
    let kbpk = aes_key(&s, &h("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6"), &[]);
    let imk = des_key(&s, &thex(&t, "option_a_1", "imk"), &[]);
    let block = wrap(&s, "D0000E0TX00S0000", kbpk, imk).unwrap();
    let imported = unwrap(&s, kbpk, &block, &[Attribute::Token(false), Attribute::Sensitive(true)]).unwrap();
    assert_eq!(usages(&s, imported), [false, false, false, false, false, false, true], "mode X: derive only");
    let param = [digits(&tstr(&t, "option_a_1", "pan")), tstr(&t, "option_a_1", "psn").into_bytes()].concat();
    let mk = s
        .derive_key(
            &vendor(EMV_MK_OPTION_A, &param),
            imported,
            &[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::DES2), Attribute::Token(false)],
        )
        .unwrap();
    assert_eq!(kcv(&s, mk), r::kcv_des(&thex(&t, "option_a_1", "mk")));
    // Mode X forbids encryption: C_EncryptInit is refused.
    expect_rv(s.encrypt(&Mechanism::Des3Ecb, imported, &[0; 8]), RvError::KeyFunctionNotPermitted);
}

#[test]
fn bad_mac_is_refused() {
    let hsm = hsm();
    let s = hsm.session();
    for c in [&CASES[0], &CASES[2]] {
        let kbpk = secret(&s, c.kbpk_type, &h(c.kbpk), &[]);
        let key = secret(&s, c.key_type, &h(c.key), &[]);
        let block = wrap(&s, c.header, kbpk, key).unwrap();
        // One hex digit of the encrypted key data, of the MAC, and one header field (S -> E keeps
        // a valid header) changed in turn.
        let header_len = c.expect_header.len();
        for pos in [header_len + 3, block.len() - 1, 11] {
            let mut bad = block.clone().into_bytes();
            bad[pos] = match bad[pos] {
                b'0' => b'1',
                b'E' if pos == 11 => b'S',
                b'S' if pos == 11 => b'E',
                _ => b'0',
            };
            let bad = String::from_utf8(bad).unwrap();
            expect_rv(unwrap(&s, kbpk, &bad, &open_template()), RvError::WrappedKeyInvalid);
        }
        // The right block under another KBPK of the same type.
        let mut other_v = h(c.kbpk);
        other_v[3] ^= 0x40;
        let other = secret(&s, c.kbpk_type, &other_v, &[]);
        expect_rv(unwrap(&s, other, &block, &open_template()), RvError::WrappedKeyInvalid);
    }
}

#[test]
fn template_contradicting_the_block_is_refused() {
    let hsm = hsm();
    let s = hsm.session();
    let c = &CASES[0];
    let kbpk = secret(&s, c.kbpk_type, &h(c.kbpk), &[]);
    let key = secret(&s, c.key_type, &h(c.key), &[]);
    let block = wrap(&s, c.header, kbpk, key).unwrap();
    let inconsistent: [&[Attribute]; 6] = [
        // A TDES block imported as AES, or as a 3-key TDES key.
        &[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES)],
        &[Attribute::KeyType(KeyType::DES3)],
        &[Attribute::ValueLen(24u64.into())],
        &[Attribute::Class(ObjectClass::PUBLIC_KEY)],
        // Mode E (encrypt only) with decrypt or sign asked for.
        &[Attribute::Decrypt(true)],
        &[Attribute::Sign(true)],
    ];
    for tmpl in inconsistent {
        let tmpl = merge(open_template(), tmpl);
        expect_rv(unwrap(&s, kbpk, &block, &tmpl), RvError::TemplateInconsistent);
    }
    // The same block with a template that agrees (and one that narrows the usages) imports.
    let ok = merge(
        open_template(),
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::DES2),
            Attribute::ValueLen(16u64.into()),
            Attribute::Encrypt(true),
            Attribute::Wrap(false),
            Attribute::Decrypt(false),
        ],
    );
    let k = unwrap(&s, kbpk, &block, &ok).unwrap();
    assert_eq!(usages(&s, k), [true, false, false, false, false, false, false]);
    // Exportability N: the key cannot be made extractable, and is not by default.
    let n_block = wrap(&s, "B0000P0TE00N0000", kbpk, key).unwrap();
    expect_rv(unwrap(&s, kbpk, &n_block, &[Attribute::Extractable(true)]), RvError::TemplateInconsistent);
    let n_key = unwrap(&s, kbpk, &n_block, &[Attribute::Token(false)]).unwrap();
    assert!(!flag(&s, n_key, AttributeType::Extractable));
    assert_eq!(kcv(&s, n_key), kcv(&s, key));
}

#[test]
fn malformed_blocks_are_refused() {
    let hsm = hsm();
    let s = hsm.session();
    let c = &CASES[0];
    let kbpk = secret(&s, c.kbpk_type, &h(c.kbpk), &[]);
    let key = secret(&s, c.key_type, &h(c.key), &[]);
    let block = wrap(&s, c.header, kbpk, key).unwrap();
    let t = open_template();
    // Lengths: truncated, extended, shorter than a header, empty.
    expect_rv(unwrap(&s, kbpk, &block[..block.len() - 2], &t), RvError::WrappedKeyLenRange);
    expect_rv(unwrap(&s, kbpk, &format!("{block}00"), &t), RvError::WrappedKeyLenRange);
    expect_rv(unwrap(&s, kbpk, "B0010P0TE0", &t), RvError::WrappedKeyLenRange);
    let no_body = format!("B0032P0TE00E0000{}", &block[block.len() - 16..]);
    expect_rv(unwrap(&s, kbpk, &no_body, &t), RvError::WrappedKeyLenRange);
    // Header: unknown usage, variant-binding version, not hex, not ASCII.
    let mut usage = block.clone();
    usage.replace_range(5..7, "Z9");
    expect_rv(unwrap(&s, kbpk, &usage, &t), RvError::WrappedKeyInvalid);
    let mut version_a = block.clone();
    version_a.replace_range(0..1, "A");
    expect_rv(unwrap(&s, kbpk, &version_a, &t), RvError::WrappedKeyInvalid);
    let mut not_hex = block.clone();
    not_hex.replace_range(20..21, "g");
    expect_rv(unwrap(&s, kbpk, &not_hex, &t), RvError::WrappedKeyInvalid);
    let mut bytes = block.clone().into_bytes();
    bytes[30] = 0xC3;
    expect_rv(s.unwrap_key(&vendor(TR31_UNWRAP, &[]), kbpk, &bytes, &t), RvError::WrappedKeyInvalid);
    // KBPK of the wrong family for the version, KBPK without CKA_UNWRAP, a parameter.
    let aes_kbpk = aes_key(&s, &h(CASES[2].kbpk), &[]);
    expect_rv(unwrap(&s, aes_kbpk, &block, &t), RvError::UnwrappingKeyTypeInconsistent);
    let d_block = wrap(&s, CASES[2].header, aes_kbpk, aes_key(&s, &h(CASES[2].key), &[])).unwrap();
    expect_rv(unwrap(&s, kbpk, &d_block, &t), RvError::UnwrappingKeyTypeInconsistent);
    let no_unwrap = secret(&s, c.kbpk_type, &h(c.kbpk), &[Attribute::Unwrap(false)]);
    expect_rv(unwrap(&s, no_unwrap, &block, &t), RvError::KeyFunctionNotPermitted);
    expect_rv(s.unwrap_key(&vendor(TR31_UNWRAP, b"B"), kbpk, block.as_bytes(), &t), RvError::MechanismParamInvalid);
    let generic = generic_key(&s, &h(c.kbpk), &[]);
    expect_rv(unwrap(&s, generic, &block, &t), RvError::UnwrappingKeyTypeInconsistent);
}

#[test]
fn wrap_refusals() {
    let hsm = hsm();
    let s = hsm.session();
    let des2_kbpk = des_key(&s, &h(CASES[0].kbpk), &[]);
    let aes_kbpk = aes_key(&s, &h(CASES[2].kbpk), &[]);
    let des2 = des_key(&s, &h(CASES[0].key), &[]);
    let des3 = des_key(&s, &h(CASES[1].key), &[]);
    let aes = aes_key(&s, &h(CASES[2].key), &[]);
    // The header's algorithm must describe the key.
    expect_rv(wrap(&s, "B0000P0AE00E0000", des2_kbpk, des2), RvError::MechanismParamInvalid);
    expect_rv(wrap(&s, "D0000P0TE00E0000", aes_kbpk, aes), RvError::MechanismParamInvalid);
    // The version must fit the KBPK.
    expect_rv(wrap(&s, "D0000P0TE00E0000", des2_kbpk, des2), RvError::WrappingKeyTypeInconsistent);
    expect_rv(wrap(&s, "B0000P0TE00E0000", aes_kbpk, des2), RvError::WrappingKeyTypeInconsistent);
    // A key stronger than the KBPK.
    expect_rv(wrap(&s, "B0000K0TE00E0000", des2_kbpk, des3), RvError::WrappingKeySizeRange);
    // Malformed or disallowed templates; a length that is neither 0000 nor the real one.
    for bad in ["", "B0000", "B0000P0TG00E0000", "B0000Z9TE00E0000", "B0000P0TE00E0100KS", "B0040P0TE00E0000"] {
        expect_rv(wrap(&s, bad, des2_kbpk, des2), RvError::MechanismParamInvalid);
    }
    // Key and KBPK attributes.
    let locked = des_key(&s, &h(CASES[0].key), &[Attribute::Extractable(false)]);
    expect_rv(wrap(&s, "B0000P0TE00E0000", des2_kbpk, locked), RvError::KeyUnextractable);
    let no_wrap = des_key(&s, &h(CASES[0].kbpk), &[Attribute::Wrap(false)]);
    expect_rv(wrap(&s, "B0000P0TE00E0000", no_wrap, des2), RvError::KeyFunctionNotPermitted);
    // TR-31 unwrap is not a wrap mechanism, and the reverse.
    expect_rv(s.wrap_key(&vendor(TR31_UNWRAP, &[]), des2_kbpk, des2), RvError::MechanismInvalid);
}

//! TR-31 key blocks through the vendor mechanisms `CKM_QUILL_TR31_WRAP` (0xD1550060),
//! `CKM_QUILL_TR31_UNWRAP` (0xD1550061) and `CKM_QUILL_TR31_TRANSLATE` (0xD1550062), on the built
//! module through `cryptoki` (hsm-sim/README.md, "Vendor mechanisms").
//!
//! The module's key blocks are read back twice: by the module itself (C_UnwrapKey) and by the
//! pure implementation in `quill_crypto::tr31` with the KBPK value the test knows (that
//! implementation is checked against the TR-31:2018 / X9.143 examples in its unit tests; the
//! third-party check against psec is tests/third_party/30_tr31_psec.sh). Published key blocks are
//! imported and their keys' check values compared with OpenSSL's.
#![allow(clippy::unwrap_used)]

mod common;

use common::raw::{Param, object_handle};
use common::reference as r;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{CKR_BUFFER_TOO_SMALL, CKR_OK};
use quill_crypto::tr31::{self, BlockId, Exportability, Kbpk, Tr31Error};

const TR31_WRAP: u64 = 0xD155_0060;
const TR31_UNWRAP: u64 = 0xD155_0061;
const TR31_TRANSLATE: u64 = 0xD155_0062;
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

// ---- CKM_QUILL_TR31_TRANSLATE ----------------------------------------------------------------

/// The two AES-256 KBPKs of the translation tests (the old and the new at-rest KBPK, say): the
/// test knows both values, to read the blocks with `quill_crypto::tr31` too.
const KBPK1: &str = "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6";
const KBPK2: &str = "00112233445566778899AABBCCDDEEFF0123456789ABCDEFFEDCBA9876543210";
/// Two DES3 KBPKs for version B.
const TDES_KBPK1: &str = "0123456789ABCDEFFEDCBA9876543210F1E2D3C4B5A69788";
const TDES_KBPK2: &str = "F1E2D3C4B5A697880123456789ABCDEFFEDCBA9876543210";

/// A KBPK as the at-rest one is: wrap and unwrap only, sensitive, not extractable; `extra`
/// overrides.
fn kbpk(s: &Session, kt: KeyType, value: &[u8], extra: &[Attribute]) -> ObjectHandle {
    let base = vec![
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Extractable(false),
    ];
    secret(s, kt, value, &merge(base, extra))
}

/// C_EncryptInit + C_Encrypt (length query, then the block) with `CKM_QUILL_TR31_TRANSLATE`, whose
/// parameter is the source KBPK's handle (one `CK_ULONG`): `block` under `source` re-protected
/// under `dest`.
fn translate(s: &Session, source: ObjectHandle, dest: ObjectHandle, block: &str) -> cryptoki::error::Result<String> {
    let param = ulong(source.handle());
    s.encrypt(&vendor(TR31_TRANSLATE, &param), dest, block.as_bytes()).map(|b| String::from_utf8(b).unwrap())
}

/// The header text of a key block (everything before the encrypted key data).
fn header_text(block: &str) -> &str {
    tr31::key_block_header_text(block.as_bytes()).unwrap()
}

/// The translated block is the source's header, byte for byte, then another payload of the same
/// length; it holds the same key under KBPK2 (read by the module and by `quill_crypto::tr31`),
/// no longer opens under KBPK1, and never shows the key.
#[track_caller]
fn check_translated(s: &Session, old: &str, new: &str, kbpks: [(ObjectHandle, &[u8]); 2], key_v: &[u8], what: &str) {
    let [(k1, v1), (k2, v2)] = kbpks;
    let kt = if old.starts_with('D') { KeyType::AES } else { KeyType::DES3 };
    assert_eq!(new.len(), old.len(), "{what}: same length");
    assert_eq!(header_text(new), header_text(old), "{what}: same header text");
    assert_ne!(&new[header_text(old).len()..], &old[header_text(old).len()..], "{what}: a new payload");
    assert_eq!(new[1..5].parse::<usize>().unwrap(), new.len(), "{what}: length field");
    for k in [hex::encode(key_v), hex::encode_upper(key_v)] {
        assert!(!new.contains(&k), "{what}: the clear key is in the output");
    }
    // The independent implementation with KBPK2's value: the same header and key.
    let (header, clear) = tr31::unwrap(kbpk_of(kt, v2), new.as_bytes()).unwrap();
    assert_eq!(*clear, key_v, "{what}: key in the translated block");
    assert_eq!(header, tr31::parse_key_block_header(old.as_bytes()).unwrap(), "{what}: header");
    assert_eq!(tr31::unwrap(kbpk_of(kt, v1), new.as_bytes()).unwrap_err(), Tr31Error::Mac, "{what}: under KBPK1");
    // The module: opens under KBPK2 into the same key, not under KBPK1.
    let tmpl = if header.exportability == Exportability::NonExportable {
        vec![Attribute::Token(false)]
    } else {
        open_template()
    };
    let back = unwrap(s, k2, new, &tmpl).unwrap_or_else(|e| panic!("{what}: C_UnwrapKey under KBPK2: {e}"));
    let kt = key_type(s, back);
    assert_eq!(kcv(s, back), reference_kcv(kt, key_v), "{what}: KCV of the key opened under KBPK2");
    expect_rv(unwrap(s, k1, new, &tmpl), RvError::WrappedKeyInvalid);
}

#[test]
fn translate_is_listed_as_an_encrypt_mechanism() {
    let hsm = hsm();
    let slot = hsm.shared().slot;
    assert!(hsm.raw.mechanism_list(slot.id()).contains(&TR31_TRANSLATE));
    let info = hsm.pkcs11.get_mechanism_info(slot, MechanismType::new_vendor_defined(TR31_TRANSLATE).unwrap()).unwrap();
    assert!(info.encrypt() && !info.decrypt() && !info.wrap() && !info.unwrap());
    assert_eq!((info.min_key_size(), info.max_key_size()), (16, 32), "KBPK sizes in bytes");
}

#[test]
fn translate_moves_e_and_n_blocks_to_another_kbpk() {
    let hsm = hsm();
    let s = hsm.session();
    let (v1, v2) = (h(KBPK1), h(KBPK2));
    let (k1, k2) = (kbpk(&s, KeyType::AES, &v1, &[]), kbpk(&s, KeyType::AES, &v2, &[]));

    // E: an extractable AES-256 key wrapped out by the module, KS and TS blocks (then PB).
    let e_key_v = h(CASES[3].key);
    let e_key = aes_key(&s, &e_key_v, &[]);
    let e_block = wrap(&s, CASES[3].header, k1, e_key).unwrap();
    let e_new = translate(&s, k1, k2, &e_block).unwrap();
    check_translated(&s, &e_block, &e_new, [(k1, &v1), (k2, &v2)], &e_key_v, "D E block");
    assert!(e_new.starts_with(CASES[3].expect_header));
    // Fresh padding: a second translation differs and opens too.
    let again = translate(&s, k1, k2, &e_block).unwrap();
    assert_ne!(again, e_new, "padding is random");
    check_translated(&s, &e_block, &again, [(k1, &v1), (k2, &v2)], &e_key_v, "D E block again");
    // And back: the block translated to KBPK2 goes home to KBPK1.
    let home = translate(&s, k2, k1, &e_new).unwrap();
    check_translated(&s, &e_new, &home, [(k2, &v2), (k1, &v1)], &e_key_v, "D E block back");

    // N with a KC block and key version 12: such a key never wraps out, so the block is made from
    // the key's bytes, as an HSM of the old SMK wrote it.
    let n_key_v = h("3F419E1CB7079442AA37474C2EFBF8B8");
    let cmac_kcv = &quill_crypto::sym::aes_cmac(&n_key_v, &[0u8; 16]).unwrap()[..5];
    let template = format!("D0000D0AB12N0110KC1001{}", hex::encode_upper(cmac_kcv));
    let header = tr31::Tr31Header::parse_template(template.as_bytes()).unwrap();
    let n_block = tr31::wrap(Kbpk::Aes(&v1), &header, &n_key_v, Some(32), &mut |b: &mut [u8]| b.fill(0x5A)).unwrap();
    assert_eq!(header_text(&n_block), format!("D0160{}", &template[5..]), "no PB block: KC fills 16");
    let n_new = translate(&s, k1, k2, &n_block).unwrap();
    check_translated(&s, &n_block, &n_new, [(k1, &v1), (k2, &v2)], &n_key_v, "D N block");
    let (h2, _) = tr31::unwrap(Kbpk::Aes(&v2), n_new.as_bytes()).unwrap();
    assert_eq!(h2.optional_block(BlockId::Kc), Some(&template[20..]), "KC block kept");
    let n_key = unwrap(&s, k2, &n_new, &[Attribute::Token(false)]).unwrap();
    assert!(!flag(&s, n_key, AttributeType::Extractable), "still not exportable");

    // Version B between two DES3 KBPKs.
    let (t1v, t2v) = (h(TDES_KBPK1), h(TDES_KBPK2));
    let (t1, t2) = (kbpk(&s, KeyType::DES3, &t1v, &[]), kbpk(&s, KeyType::DES3, &t2v, &[]));
    let b_key_v = h(CASES[1].key);
    let b_block = wrap(&s, CASES[1].header, t1, des_key(&s, &b_key_v, &[])).unwrap();
    let b_new = translate(&s, t1, t2, &b_block).unwrap();
    check_translated(&s, &b_block, &b_new, [(t1, &t1v), (t2, &t2v)], &b_key_v, "B block");
}

#[test]
fn translate_length_query_and_short_buffer() {
    let hsm = hsm();
    let s = hsm.session();
    let (v1, v2) = (h(KBPK1), h(KBPK2));
    let (k1, k2) = (kbpk(&s, KeyType::AES, &v1, &[]), kbpk(&s, KeyType::AES, &v2, &[]));
    let key_v = h(CASES[2].key);
    let block = wrap(&s, CASES[2].header, k1, aes_key(&s, &key_v, &[])).unwrap();
    let rv = hsm.raw.encrypt_init(s.handle(), TR31_TRANSLATE, Param::Ulong(k1.handle()), k2.handle());
    assert_eq!(rv, CKR_OK);
    let (rv, len, _) = hsm.raw.encrypt_call(&s, block.as_bytes(), None);
    assert_eq!((rv, len), (CKR_OK, block.len() as u64), "length query");
    let (rv, len, _) = hsm.raw.encrypt_call(&s, block.as_bytes(), Some(block.len() - 1));
    assert_eq!((rv, len), (CKR_BUFFER_TOO_SMALL, block.len() as u64), "short buffer");
    let (rv, len, out) = hsm.raw.encrypt_call(&s, block.as_bytes(), Some(block.len()));
    assert_eq!((rv, len), (CKR_OK, block.len() as u64));
    let out = String::from_utf8(out).unwrap();
    check_translated(&s, &block, &out, [(k1, &v1), (k2, &v2)], &key_v, "D block, two calls");
}

#[test]
fn translate_refusals() {
    let hsm = hsm();
    let s = hsm.session();
    let (v1, v2) = (h(KBPK1), h(KBPK2));
    let (k1, k2) = (kbpk(&s, KeyType::AES, &v1, &[]), kbpk(&s, KeyType::AES, &v2, &[]));
    let key_v = h(CASES[2].key);
    let key = aes_key(&s, &key_v, &[]);
    let block = wrap(&s, CASES[2].header, k1, key).unwrap();
    translate(&s, k1, k2, &block).unwrap();

    // The block: one MAC character flipped; the encrypted key data touched; truncated.
    let mut bad_mac = block.clone().into_bytes();
    let last = bad_mac.len() - 1;
    bad_mac[last] = if bad_mac[last] == b'0' { b'1' } else { b'0' };
    let bad_mac = String::from_utf8(bad_mac).unwrap();
    expect_rv(translate(&s, k1, k2, &bad_mac), RvError::DataInvalid);
    let mut bad_data = block.clone();
    let pos = header_text(&block).len() + 1;
    let c = if &bad_data[pos..=pos] == "0" { "1" } else { "0" };
    bad_data.replace_range(pos..=pos, c);
    expect_rv(translate(&s, k1, k2, &bad_data), RvError::DataInvalid);
    expect_rv(translate(&s, k1, k2, &block[..block.len() - 2]), RvError::DataLenRange);
    expect_rv(translate(&s, k1, k2, &format!("{block}00")), RvError::DataLenRange);
    // The header edited without a new MAC: usage E0 -> D0 (mode N, so that both headers are
    // valid and only the MAC stops it), and E0 mode X -> D0 (a header D0 does not allow).
    let imk_v = h(CASES[2].key);
    let imk = aes_key(&s, &imk_v, &[]);
    for header in ["D0000E0AN00E0000", "D0000E0AX00E0000"] {
        let e0 = wrap(&s, header, k1, imk).unwrap();
        translate(&s, k1, k2, &e0).unwrap();
        let d0 = e0.replacen("E0A", "D0A", 1);
        assert_ne!(d0, e0);
        expect_rv(translate(&s, k1, k2, &d0), RvError::DataInvalid);
        if header.contains("AN") {
            assert_eq!(tr31::unwrap(Kbpk::Aes(&v1), d0.as_bytes()).unwrap_err(), Tr31Error::Mac);
        }
    }
    // The right block under a KBPK that is not its own.
    let mut other_v = v1.clone();
    other_v[3] ^= 0x40;
    let k3 = kbpk(&s, KeyType::AES, &other_v, &[]);
    expect_rv(translate(&s, k3, k2, &block), RvError::DataInvalid);

    // The parameter: not one CK_ULONG, or the handle of no object (never was, or destroyed).
    for p in [&[][..], &[1u8; 4][..], &[1u8; 9][..]] {
        expect_rv(s.encrypt(&vendor(TR31_TRANSLATE, p), k2, block.as_bytes()), RvError::MechanismParamInvalid);
    }
    expect_rv(translate(&s, object_handle(0xDEAD_BEEF), k2, &block), RvError::MechanismParamInvalid);
    let gone = kbpk(&s, KeyType::AES, &v1, &[]);
    s.destroy_object(gone).unwrap();
    expect_rv(translate(&s, gone, k2, &block), RvError::MechanismParamInvalid);

    // Key attributes: a source without CKA_UNWRAP, a destination without CKA_WRAP (CKA_ENCRYPT is
    // not enough), an N block to an extractable destination.
    let no_unwrap = kbpk(&s, KeyType::AES, &v1, &[Attribute::Unwrap(false)]);
    expect_rv(translate(&s, no_unwrap, k2, &block), RvError::KeyFunctionNotPermitted);
    let no_wrap = kbpk(&s, KeyType::AES, &v2, &[Attribute::Wrap(false), Attribute::Encrypt(true)]);
    expect_rv(translate(&s, k1, no_wrap, &block), RvError::KeyFunctionNotPermitted);
    let raw_rv = hsm.raw.encrypt_init(s.handle(), TR31_TRANSLATE, Param::Ulong(k1.handle()), no_wrap.handle());
    assert_eq!(raw_rv, cryptoki_sys::CKR_KEY_FUNCTION_NOT_PERMITTED, "refused at C_EncryptInit");
    let n_block = wrap(&s, "D0000D0AB00N0000", k1, key).unwrap();
    let extractable = kbpk(&s, KeyType::AES, &v2, &[Attribute::Extractable(true)]);
    expect_rv(translate(&s, k1, extractable, &n_block), RvError::KeyFunctionNotPermitted);
    translate(&s, k1, extractable, &block).unwrap();
    translate(&s, k1, k2, &n_block).unwrap();

    // Key types and versions: translation keeps the version.
    let (t1, t2) = (kbpk(&s, KeyType::DES3, &h(TDES_KBPK1), &[]), kbpk(&s, KeyType::DES3, &h(TDES_KBPK2), &[]));
    let b_block = wrap(&s, CASES[1].header, t1, des_key(&s, &h(CASES[1].key), &[])).unwrap();
    translate(&s, t1, t2, &b_block).unwrap();
    // A version B block from a TDES source to an AES destination: refused at C_EncryptInit...
    expect_rv(translate(&s, t1, k2, &b_block), RvError::KeyTypeInconsistent);
    let raw_rv = hsm.raw.encrypt_init(s.handle(), TR31_TRANSLATE, Param::Ulong(t1.handle()), k2.handle());
    assert_eq!(raw_rv, cryptoki_sys::CKR_KEY_TYPE_INCONSISTENT);
    // ... and with AES at both ends, at C_Encrypt; the same for a D block between TDES KBPKs.
    expect_rv(translate(&s, k1, k2, &b_block), RvError::KeyTypeInconsistent);
    expect_rv(translate(&s, t1, t2, &block), RvError::KeyTypeInconsistent);
    // A KBPK that is no KBPK (generic secret) at either end.
    let generic = generic_key(&s, &v1, &[Attribute::Encrypt(false), Attribute::Decrypt(false)]);
    expect_rv(translate(&s, generic, k2, &block), RvError::KeyTypeInconsistent);
    expect_rv(translate(&s, k1, generic, &block), RvError::KeyTypeInconsistent);
    // A key stronger than the destination KBPK: AES-256 under an AES-128 KBPK.
    let strong = wrap(&s, CASES[3].header, k1, aes_key(&s, &h(CASES[3].key), &[])).unwrap();
    let weak = kbpk(&s, KeyType::AES, &h(CASES[2].kbpk), &[]);
    expect_rv(translate(&s, k1, weak, &strong), RvError::KeySizeRange);

    // Single-part only; and no other function takes the mechanism.
    let param = ulong(k1.handle());
    let mech = vendor(TR31_TRANSLATE, &param);
    s.encrypt_init(&mech, k2).unwrap();
    expect_rv(s.encrypt_update(block.as_bytes()), RvError::FunctionNotSupported);
    expect_rv(s.decrypt(&mech, k2, block.as_bytes()), RvError::MechanismInvalid);
    expect_rv(s.wrap_key(&mech, k2, key), RvError::MechanismInvalid);
}

// ---- RSA private keys (algorithm R) -----------------------------------------------------------

/// An RSA key pair generated in the module: the private key sensitive and extractable (it may be
/// wrapped), sign only; the public key for verification.
fn rsa_pair(s: &Session, bits: u64) -> (ObjectHandle, ObjectHandle) {
    let public = [
        Attribute::Token(false),
        Attribute::ModulusBits(bits.into()),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        Attribute::Verify(true),
    ];
    let private = [
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
    ];
    s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private).unwrap()
}

/// The header of an issuer key at rest: usage S0, algorithm R, mode S (sign only), version 00,
/// not exportable, key context 1.
const RSA_AT_REST: &str = "D0000S0RS00N0010";

/// An RSA private key wraps as a version D block whose key data is its DER PKCS#8 (X9.143:
/// asymmetric keys are DER-encoded), which OpenSSL parses as the module's key pair; the block
/// opens back into a private key with the header's rights only (sign; not extractable, as `N`
/// says), which signs what the public key verifies; a translation keeps the header and the key.
#[test]
fn rsa_private_keys_travel_as_algorithm_r_blocks() {
    let hsm = hsm();
    let s = hsm.session();
    let (v1, v2) = (h(KBPK1), h(KBPK2));
    let (k1, k2) = (kbpk(&s, KeyType::AES, &v1, &[]), kbpk(&s, KeyType::AES, &v2, &[]));
    let (public, private) = rsa_pair(&s, 1024);
    let modulus = bytes(&s, public, AttributeType::Modulus);
    let block = wrap(&s, RSA_AT_REST, k1, private).unwrap();
    assert_eq!(&block[5..16], "S0RS00N0010", "{block}");
    assert_eq!(block[1..5].parse::<usize>().unwrap(), block.len());
    let (header, der) = tr31::unwrap(Kbpk::Aes(&v1), block.as_bytes()).unwrap();
    assert_eq!(header.algorithm, tr31::Algorithm::Rsa);
    let rsa = openssl::pkey::PKey::private_key_from_pkcs8(&der).unwrap().rsa().unwrap();
    assert!(rsa.check_key().unwrap(), "OpenSSL: a consistent RSA private key");
    assert_eq!(rsa.n().to_vec(), modulus);
    let d = hex::encode_upper(rsa.d().to_vec());
    assert!(!block.contains(&d[..32]), "the private exponent shows in the block");

    // Opened: a private RSA key, sign only, not extractable, the same modulus; it signs.
    let opened = unwrap(&s, k1, &block, &[Attribute::Token(false)]).unwrap();
    assert_eq!(key_type(&s, opened), KeyType::RSA);
    let private_usages = [AttributeType::Sign, AttributeType::Decrypt, AttributeType::Unwrap, AttributeType::Derive]
        .map(|t| flag(&s, opened, t));
    assert_eq!(private_usages, [true, false, false, false], "sign only (mode S)");
    assert!(!flag(&s, opened, AttributeType::Extractable), "N: never extractable");
    assert_eq!(bytes(&s, opened, AttributeType::Modulus), modulus);
    let sig = s.sign(&Mechanism::RsaPkcs, opened, b"issuer certificate").unwrap();
    s.verify(&Mechanism::RsaPkcs, public, b"issuer certificate", &sig).unwrap();
    // A template asking for more than the header allows, or for another class, is refused.
    for bad in [
        vec![Attribute::Decrypt(true)],
        vec![Attribute::Extractable(true)],
        vec![Attribute::Class(ObjectClass::SECRET_KEY)],
        vec![Attribute::KeyType(KeyType::AES)],
    ] {
        expect_rv(unwrap(&s, k1, &block, &bad), RvError::TemplateInconsistent);
    }
    // Under another KBPK it does not open; translated, it opens there into the same key.
    expect_rv(unwrap(&s, k2, &block, &[Attribute::Token(false)]), RvError::WrappedKeyInvalid);
    let moved = translate(&s, k1, k2, &block).unwrap();
    assert_eq!((header_text(&moved), moved.len()), (header_text(&block), block.len()));
    let back = unwrap(&s, k2, &moved, &[Attribute::Token(false)]).unwrap();
    assert_eq!(bytes(&s, back, AttributeType::Modulus), modulus);
    let sig2 = s.sign(&Mechanism::RsaPkcs, back, b"issuer certificate").unwrap();
    assert_eq!(sig2, sig, "PKCS#1 v1.5 signatures are deterministic: the same key");
    expect_rv(unwrap(&s, k1, &moved, &[Attribute::Token(false)]), RvError::WrappedKeyInvalid);
}

/// What an RSA block must not be: a header whose algorithm does not describe the key, a
/// private key that may not be extracted, key data that is no PKCS#8 RSA key (made with the
/// KBPK's value, so the MAC holds).
#[test]
fn rsa_block_refusals() {
    let hsm = hsm();
    let s = hsm.session();
    let v1 = h(KBPK1);
    let k1 = kbpk(&s, KeyType::AES, &v1, &[]);
    let (_, private) = rsa_pair(&s, 1024);
    expect_rv(wrap(&s, "D0000D0AB00N0000", k1, private), RvError::MechanismParamInvalid);
    let aes = aes_key(&s, &h(CASES[2].key), &[]);
    expect_rv(wrap(&s, RSA_AT_REST, k1, aes), RvError::MechanismParamInvalid);
    let (_, locked) = {
        let public = [Attribute::Token(false), Attribute::ModulusBits(1024u64.into())];
        let private = [Attribute::Token(false), Attribute::Extractable(false), Attribute::Sign(true)];
        s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private).unwrap()
    };
    expect_rv(wrap(&s, RSA_AT_REST, k1, locked), RvError::KeyUnextractable);
    let header = tr31::Tr31Header::parse_template(RSA_AT_REST.as_bytes()).unwrap();
    let junk = tr31::wrap(Kbpk::Aes(&v1), &header, &[0x30, 0x03, 0x02, 0x01, 0x00], None, &mut |b| b.fill(7)).unwrap();
    expect_rv(unwrap(&s, k1, &junk, &[Attribute::Token(false)]), RvError::WrappedKeyInvalid);
    let k2 = kbpk(&s, KeyType::AES, &h(KBPK2), &[]);
    expect_rv(translate(&s, k1, k2, &junk), RvError::DataInvalid);
}

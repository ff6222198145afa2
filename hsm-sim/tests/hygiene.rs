//! Payment-HSM key hygiene (README "Key hygiene") and the PKCS#11 3.0 items, through `cryptoki`.
//! Slots 0–7 of this binary's module keep the key-separation policy on (the default); slot 8
//! turns it off (`key_separation = false`), to show that the policy is per token and what it
//! stops.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::Ulong;

const TR31_WRAP: u64 = 0xD155_0060;
const TR31_UNWRAP: u64 = 0xD155_0061;

fn hsm4() -> &'static Hsm {
    hsm_with(HsmConfig { slots: 9, max_pin_tries: 10, policy_slots: 8, translate_slots: 0 })
}

/// A user session on a fresh token: with the policy (slots 0–7, one per test) or without (slot 8).
fn token(policy: bool) -> (Token, Session) {
    let hsm = hsm4();
    let t = if policy {
        hsm.user_token("hygiene")
    } else {
        // Slot 8 is never handed out by `fresh_slot` (seven tests take 0–6).
        let slot = hsm.pkcs11.get_all_slots().unwrap().into_iter().find(|s| s.id() == 8).unwrap();
        hsm.init_token(slot, "no-policy");
        let keeper = hsm.pkcs11.open_rw_session(slot).unwrap();
        keeper.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
        return (Token::from_keeper(slot, keeper), hsm.pkcs11.open_rw_session(slot).unwrap());
    };
    let s = hsm.session_on(&t);
    (t, s)
}

fn aes(s: &Session, extra: &[Attribute]) -> cryptoki::error::Result<ObjectHandle> {
    let t = merge(vec![Attribute::Token(false), Attribute::ValueLen(Ulong::from(16u64))], extra);
    s.generate_key(&Mechanism::AesKeyGen, &t)
}

#[test]
fn secret_and_private_keys_are_not_extractable_by_default() {
    let (_t, s) = token(true);
    let k = aes(&s, &[]).unwrap();
    assert!(!flag(&s, k, AttributeType::Extractable), "generated secret key");
    let imported = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::DES2),
            Attribute::Token(false),
            Attribute::Value(h("0123456789ABCDEFFEDCBA9876543210")),
        ])
        .unwrap();
    assert!(!flag(&s, imported, AttributeType::Extractable), "imported secret key");
    let (_, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::Token(false), Attribute::ModulusBits(Ulong::from(1024u64))],
            &[Attribute::Token(false)],
        )
        .unwrap();
    assert!(!flag(&s, private, AttributeType::Extractable), "generated private key");
    assert!(flag(&s, private, AttributeType::NeverExtractable));
    let kek = aes(&s, &[Attribute::Wrap(true)]).unwrap();
    expect_rv(s.wrap_key(&Mechanism::AesKeyWrap, kek, k), RvError::KeyUnextractable);
    // Asked for, it is extractable.
    let k2 = aes(&s, &[Attribute::Extractable(true)]).unwrap();
    s.wrap_key(&Mechanism::AesKeyWrap, kek, k2).unwrap();
}

#[test]
fn defaults_never_mix_key_encryption_and_data_roles() {
    let (_t, s) = token(true);
    let data = aes(&s, &[]).unwrap();
    assert!(flag(&s, data, AttributeType::Encrypt) && flag(&s, data, AttributeType::Decrypt));
    assert!(!flag(&s, data, AttributeType::Wrap) && !flag(&s, data, AttributeType::Unwrap));
    let kek = aes(&s, &[Attribute::Unwrap(true)]).unwrap();
    assert!(!flag(&s, kek, AttributeType::Encrypt) && !flag(&s, kek, AttributeType::Decrypt));
    assert!(!flag(&s, kek, AttributeType::Wrap), "wrap is not implied by unwrap");
}

/// The classic attack: wrap a sensitive key under a key the caller may also decrypt with.
#[test]
fn the_wrap_then_decrypt_attack_is_refused() {
    let (_t, s) = token(true);
    let secret = aes(&s, &[Attribute::Sensitive(true), Attribute::Extractable(true)]).unwrap();
    // A key with both roles cannot be made: generated, imported, copied or modified.
    expect_rv(aes(&s, &[Attribute::Wrap(true), Attribute::Decrypt(true)]), RvError::TemplateInconsistent);
    expect_rv(
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Value(vec![7; 16]),
            Attribute::Unwrap(true),
            Attribute::Encrypt(true),
        ]),
        RvError::TemplateInconsistent,
    );
    let kek = aes(&s, &[Attribute::Wrap(true)]).unwrap();
    expect_rv(s.update_attributes(kek, &[Attribute::Decrypt(true)]), RvError::TemplateInconsistent);
    expect_rv(s.copy_object(kek, &[Attribute::Decrypt(true)]), RvError::TemplateInconsistent);
    assert!(!flag(&s, kek, AttributeType::Decrypt), "the refused change left the key as it was");
    // So the wrapped key cannot be decrypted under the KEK.
    let wrapped = s.wrap_key(&Mechanism::AesKeyWrap, kek, secret).unwrap();
    expect_rv(s.decrypt(&Mechanism::AesKeyWrap, kek, &wrapped), RvError::KeyFunctionNotPermitted);
    // A data key cannot wrap or unwrap.
    let data = aes(&s, &[]).unwrap();
    expect_rv(s.wrap_key(&Mechanism::AesKeyWrap, data, secret), RvError::KeyFunctionNotPermitted);
    expect_rv(
        s.unwrap_key(
            &Mechanism::AesKeyWrap,
            data,
            &wrapped,
            &[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES), Attribute::Token(false)],
        ),
        RvError::KeyFunctionNotPermitted,
    );
}

/// With the policy off (slot 3) the same steps give the key in clear: what the policy stops.
#[test]
fn without_the_policy_the_attack_works() {
    let (_t, s) = token(false);
    let secret = aes(&s, &[Attribute::Sensitive(true), Attribute::Extractable(true)]).unwrap();
    let kek = aes(&s, &[Attribute::Wrap(true), Attribute::Decrypt(true)]).unwrap();
    let wrapped = s.wrap_key(&Mechanism::AesKeyWrap, kek, secret).unwrap();
    let clear = s.decrypt(&Mechanism::AesKeyWrap, kek, &wrapped).unwrap();
    assert_eq!(clear.len(), 16, "the sensitive key's value, in clear");
    let check = s.encrypt(&Mechanism::AesEcb, secret, &[0u8; 16]);
    // The secret key has no encrypt role problem here: it is a data key. Its KCV matches the
    // recovered value.
    let mine = openssl::symm::encrypt(openssl::symm::Cipher::aes_128_ecb(), &clear, None, &[0u8; 16]).unwrap();
    assert_eq!(check.unwrap(), mine[..16].to_vec());
}

#[test]
fn unwrapping_needs_cka_unwrap() {
    let (_t, s) = token(true);
    let kek = aes(&s, &[Attribute::Wrap(true), Attribute::Unwrap(false)]).unwrap();
    let key = aes(&s, &[Attribute::Extractable(true)]).unwrap();
    let wrapped = s.wrap_key(&Mechanism::AesKeyWrap, kek, key).unwrap();
    expect_rv(
        s.unwrap_key(
            &Mechanism::AesKeyWrap,
            kek,
            &wrapped,
            &[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES), Attribute::Token(false)],
        ),
        RvError::KeyFunctionNotPermitted,
    );
    // The vendor TR-31 unwrap too.
    let kbpk =
        aes(&s, &[Attribute::Wrap(true), Attribute::Unwrap(false), Attribute::ValueLen(Ulong::from(32u64))]).unwrap();
    let block = s.wrap_key(&vendor(TR31_WRAP, b"D0000D0AB00E0000"), kbpk, key).unwrap();
    expect_rv(
        s.unwrap_key(&vendor(TR31_UNWRAP, &[]), kbpk, &block, &[Attribute::Token(false)]),
        RvError::KeyFunctionNotPermitted,
    );
}

/// `CKM_QUILL_TR31_UNWRAP` fills the usages a template leaves out from the mode of use, but never
/// both roles: a KEK (usage K*) keeps wrap/unwrap, other keys encrypt/decrypt; what the caller
/// names wins.
#[test]
fn tr31_unwrap_fills_usages_within_the_policy() {
    let (_t, s) = token(true);
    let kbpk =
        aes(&s, &[Attribute::Wrap(true), Attribute::Unwrap(true), Attribute::ValueLen(Ulong::from(32u64))]).unwrap();
    let key = aes(&s, &[Attribute::Extractable(true)]).unwrap();
    let roles = |o| {
        [AttributeType::Encrypt, AttributeType::Decrypt, AttributeType::Wrap, AttributeType::Unwrap]
            .map(|t| flag(&s, o, t))
    };
    let data_block = s.wrap_key(&vendor(TR31_WRAP, b"D0000D0AB00E0000"), kbpk, key).unwrap();
    let d = s.unwrap_key(&vendor(TR31_UNWRAP, &[]), kbpk, &data_block, &[Attribute::Token(false)]).unwrap();
    assert_eq!(roles(d), [true, true, false, false], "D0 mode B: a data key");
    let kek_block = s.wrap_key(&vendor(TR31_WRAP, b"D0000K0AB00E0000"), kbpk, key).unwrap();
    let k = s.unwrap_key(&vendor(TR31_UNWRAP, &[]), kbpk, &kek_block, &[Attribute::Token(false)]).unwrap();
    assert_eq!(roles(k), [false, false, true, true], "K0 mode B: a key-encryption key");
    let e = s
        .unwrap_key(&vendor(TR31_UNWRAP, &[]), kbpk, &kek_block, &[Attribute::Token(false), Attribute::Encrypt(true)])
        .unwrap();
    assert_eq!(roles(e), [true, true, false, false], "the caller asked for a data role");
    expect_rv(
        s.unwrap_key(
            &vendor(TR31_UNWRAP, &[]),
            kbpk,
            &data_block,
            &[Attribute::Token(false), Attribute::Encrypt(true), Attribute::Wrap(true)],
        ),
        RvError::TemplateInconsistent,
    );
}

/// `CKA_WRAP_WITH_TRUSTED` keys wrap only under `CKA_TRUSTED` keys, which only the SO sets.
#[test]
fn wrap_with_trusted_and_trusted_keys() {
    let hsm = hsm4();
    let slot = hsm.fresh_slot();
    hsm.init_token(slot, "trusted");
    // The SO makes a trusted public wrapping key on the token (public: the SO cannot make private
    // objects, and the user must see it).
    {
        let so = hsm.pkcs11.open_rw_session(slot).unwrap();
        so.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
        so.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(b"trusted-kek".to_vec()),
            Attribute::Value(vec![0x42; 32]),
            Attribute::Wrap(true),
            Attribute::Trusted(true),
        ])
        .unwrap();
        so.logout().unwrap();
    }
    let s = hsm.pkcs11.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    let trusted = s.find_objects(&[Attribute::Label(b"trusted-kek".to_vec())]).unwrap()[0];
    assert!(flag(&s, trusted, AttributeType::Trusted));
    let plain_kek = aes(&s, &[Attribute::Wrap(true)]).unwrap();
    expect_rv(aes(&s, &[Attribute::Wrap(true), Attribute::Trusted(true)]), RvError::AttributeReadOnly);
    expect_rv(s.update_attributes(plain_kek, &[Attribute::Trusted(true)]), RvError::AttributeReadOnly);
    let guarded = aes(&s, &[Attribute::Extractable(true), Attribute::WrapWithTrusted(true)]).unwrap();
    expect_rv(s.wrap_key(&Mechanism::AesKeyWrap, plain_kek, guarded), RvError::KeyNotWrappable);
    s.wrap_key(&Mechanism::AesKeyWrap, trusted, guarded).unwrap();
    expect_rv(s.update_attributes(guarded, &[Attribute::WrapWithTrusted(false)]), RvError::AttributeReadOnly);
}

#[test]
fn pkcs11_3_0_info_unique_id_and_slot_events() {
    let hsm = hsm4();
    let info = hsm.pkcs11.get_library_info().unwrap();
    assert_eq!((info.cryptoki_version().major(), info.cryptoki_version().minor()), (3, 0));
    assert_eq!(hsm.pkcs11.get_slot_event().unwrap(), None, "CKF_DONT_BLOCK: CKR_NO_EVENT");
    let (_t, s) = token(true);
    let a = aes(&s, &[]).unwrap();
    let b = s.copy_object(a, &[]).unwrap();
    let uid = |o| match attr(&s, o, AttributeType::UniqueId) {
        Some(Attribute::UniqueId(v)) => v,
        other => panic!("CKA_UNIQUE_ID: {other:?}"),
    };
    assert!(!uid(a).is_empty());
    assert_ne!(uid(a), uid(b), "a copy has its own CKA_UNIQUE_ID");
    expect_rv(s.update_attributes(a, &[Attribute::UniqueId(b"mine".to_vec())]), RvError::AttributeReadOnly);
    let found = s.find_objects(&[Attribute::UniqueId(uid(a))]).unwrap();
    assert_eq!(found, vec![a], "C_FindObjects by CKA_UNIQUE_ID");
}

/// `CKM_QUILL_TR31_TRANSLATE` is off unless the token's configuration turns it on
/// (`kbpk_translate`): with it, a user who made a KBPK from bytes they know could move a
/// non-exportable block under it and open it outside the module. Off, it is neither listed nor
/// usable, whatever keys the caller brings.
#[test]
fn kbpk_translation_is_off_unless_the_token_turns_it_on() {
    const TR31_TRANSLATE: u64 = 0xD155_0062;
    let hsm = hsm4();
    let (t, s) = token(true);
    assert!(!hsm.raw.mechanism_list(t.slot.id()).contains(&TR31_TRANSLATE), "listed on a token that leaves it off");
    let ty = cryptoki::mechanism::MechanismType::new_vendor_defined(TR31_TRANSLATE).unwrap();
    expect_rv(hsm.pkcs11.get_mechanism_info(t.slot, ty), RvError::MechanismInvalid);
    let kbpk = |value: &str| {
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Value(h(value)),
        ])
        .unwrap()
    };
    let (k1, k2) = (kbpk(&"11".repeat(32)), kbpk(&"22".repeat(32)));
    let param = k1.handle().to_ne_bytes();
    expect_rv(s.encrypt(&vendor(TR31_TRANSLATE, &param), k2, b"D0000"), RvError::MechanismInvalid);
}

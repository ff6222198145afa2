//! Sessions, logins and PINs, object attribute rules, C_FindObjects at scale, PKCS#11 error
//! codes and concurrency. This binary's module has `max_pin_tries = 3`; tests that change login
//! state take a token of their own.
#![allow(clippy::unwrap_used)]

mod common;

use common::raw::{Param, object_handle};
use common::reference as r;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki_sys::*;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use std::num::NonZeroUsize;
use std::time::Instant;

fn hsm3() -> &'static Hsm {
    hsm_with(HsmConfig { slots: 12, max_pin_tries: 3, ..HsmConfig::default() })
}

fn state(s: &Session) -> SessionState {
    s.get_session_info().unwrap().session_state()
}

fn fresh_token(label: &str) -> Slot {
    let hsm = hsm3();
    let slot = hsm.fresh_slot();
    hsm.init_token(slot, label);
    slot
}

#[test]
fn session_states_and_logins() {
    let hsm = hsm3();
    let slot = fresh_token("states");
    let ro = hsm.pkcs11.open_ro_session(slot).unwrap();
    let rw = hsm.pkcs11.open_rw_session(slot).unwrap();
    assert_eq!(state(&ro), SessionState::RoPublic);
    assert_eq!(state(&rw), SessionState::RwPublic);
    // Public sessions cannot create private objects; RO sessions cannot create token objects.
    expect_rv(
        rw.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Value(vec![1; 16]),
        ]),
        RvError::UserNotLoggedIn,
    );
    expect_rv(
        ro.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Value(vec![1; 16]),
        ]),
        RvError::SessionReadOnly,
    );
    // User login changes every session of the application.
    rw.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    assert_eq!(state(&rw), SessionState::RwUser);
    assert_eq!(state(&ro), SessionState::RoUser);
    expect_rv(rw.login(UserType::User, Some(&pin(USER_PIN))), RvError::UserAlreadyLoggedIn);
    // (SO login now fails for two reasons — user logged in, RO session open — so its code is
    // checked below, with the SO logged in and the user trying instead.)
    rw.logout().unwrap();
    assert_eq!(state(&rw), SessionState::RwPublic);
    assert_eq!(state(&ro), SessionState::RoPublic);
    expect_rv(rw.logout(), RvError::UserNotLoggedIn);
    // SO login is refused while a read-only session exists.
    expect_rv(rw.login(UserType::So, Some(&pin(SO_PIN))), RvError::SessionReadOnlyExists);
    drop(ro);
    rw.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    assert_eq!(state(&rw), SessionState::RwSecurityOfficer);
    expect_rv(rw.login(UserType::User, Some(&pin(USER_PIN))), RvError::UserAnotherAlreadyLoggedIn);
    expect_rv(hsm.pkcs11.open_ro_session(slot), RvError::SessionReadWriteSoExists);
    let rw2 = hsm.pkcs11.open_rw_session(slot).unwrap();
    assert_eq!(state(&rw2), SessionState::RwSecurityOfficer);
    rw.logout().unwrap();
    assert_eq!(state(&rw2), SessionState::RwPublic);
    // Closing every session logs the user out.
    rw.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    drop(rw);
    drop(rw2);
    let again = hsm.pkcs11.open_rw_session(slot).unwrap();
    assert_eq!(state(&again), SessionState::RwPublic, "closing the last session must log out");
}

#[test]
fn logout_destroys_private_session_objects() {
    let hsm = hsm3();
    let slot = fresh_token("logout");
    let rw = hsm.pkcs11.open_rw_session(slot).unwrap();
    // Logging out destroys the application's private session objects (PKCS#11 v2.40 C_Logout)
    // and hides private token objects; public ones stay visible.
    rw.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    let private_session =
        aes_key(&rw, &[7u8; 16], &[Attribute::Private(true), Attribute::Label(b"private-session".to_vec())]);
    let public_session =
        aes_key(&rw, &[8u8; 16], &[Attribute::Private(false), Attribute::Label(b"public-session".to_vec())]);
    aes_key(
        &rw,
        &[9u8; 16],
        &[Attribute::Token(true), Attribute::Private(true), Attribute::Label(b"private-token".to_vec())],
    );
    rw.logout().unwrap();
    assert!(
        rw.find_objects(&[Attribute::Label(b"private-token".to_vec())]).unwrap().is_empty(),
        "private token object visible"
    );
    assert_eq!(rw.find_objects(&[Attribute::Label(b"public-session".to_vec())]).unwrap(), vec![public_session]);
    rw.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    assert!(
        rw.find_objects(&[Attribute::Label(b"private-session".to_vec())]).unwrap().is_empty(),
        "a private session object survived C_Logout"
    );
    assert!(
        rw.get_attributes(private_session, &[AttributeType::Label]).is_err(),
        "handle of a destroyed object still works"
    );
    assert_eq!(
        rw.find_objects(&[Attribute::Label(b"private-token".to_vec())]).unwrap().len(),
        1,
        "private token object after login"
    );
}

#[test]
fn wrong_pin_lockout_and_init_pin_reset() {
    let hsm = hsm3();
    let slot = fresh_token("lockout");
    let s = hsm.pkcs11.open_rw_session(slot).unwrap();
    // A token key made before the lockout; it must survive the PIN reset.
    s.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    let key_v = h("0123456789ABCDEFFEDCBA9876543210");
    let key = des_key(&s, &key_v, &[Attribute::Token(true), Attribute::Label(b"before-lockout".to_vec())]);
    s.logout().unwrap();
    // Wrong PINs below the limit; a correct login resets the counter.
    expect_rv(s.login(UserType::User, Some(&pin("wrong-pin-1"))), RvError::PinIncorrect);
    expect_rv(s.login(UserType::User, Some(&pin("wrong-pin-2"))), RvError::PinIncorrect);
    s.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    s.logout().unwrap();
    expect_rv(s.login(UserType::User, Some(&pin("wrong-pin-3"))), RvError::PinIncorrect);
    expect_rv(s.login(UserType::User, Some(&pin("wrong-pin-4"))), RvError::PinIncorrect);
    assert!(!hsm.pkcs11.get_token_info(slot).unwrap().user_pin_locked());
    // The third consecutive wrong PIN reaches max_pin_tries = 3.
    match s.login(UserType::User, Some(&pin("wrong-pin-5"))) {
        Err(e) => assert!(matches!(rv(e), RvError::PinIncorrect | RvError::PinLocked)),
        Ok(()) => panic!("a wrong PIN logged in"),
    }
    expect_rv(s.login(UserType::User, Some(&pin(USER_PIN))), RvError::PinLocked);
    assert!(hsm.pkcs11.get_token_info(slot).unwrap().user_pin_locked(), "CKF_USER_PIN_LOCKED after lockout");
    // The SO resets the user PIN with C_InitPIN; the old token key still works.
    s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    s.init_pin(&pin("user-pin-2222")).unwrap();
    s.logout().unwrap();
    assert!(!hsm.pkcs11.get_token_info(slot).unwrap().user_pin_locked());
    expect_rv(s.login(UserType::User, Some(&pin(USER_PIN))), RvError::PinIncorrect);
    s.login(UserType::User, Some(&pin("user-pin-2222"))).unwrap();
    let found = s.find_objects(&[Attribute::Label(b"before-lockout".to_vec())]).unwrap();
    assert_eq!(found, vec![key]);
    assert_eq!(s.encrypt(&Mechanism::Des3Ecb, key, &[0u8; 8]).unwrap(), r::tdes_ecb(&key_v, &[0u8; 8], true));
    s.logout().unwrap();
    // SO wrong PIN is reported too.
    expect_rv(s.login(UserType::So, Some(&pin("wrong-so-pin"))), RvError::PinIncorrect);
    s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    s.logout().unwrap();
}

#[test]
fn set_pin_user_and_so() {
    let hsm = hsm3();
    let slot = fresh_token("setpin");
    let s = hsm.pkcs11.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    let key_v = h("000102030405060708090A0B0C0D0E0F");
    let key = aes_key(&s, &key_v, &[Attribute::Token(true), Attribute::Label(b"before-setpin".to_vec())]);
    expect_rv(s.set_pin(&pin("not-the-pin"), &pin("user-pin-3333")), RvError::PinIncorrect);
    expect_rv(s.set_pin(&pin(USER_PIN), &pin("12")), RvError::PinLenRange);
    s.set_pin(&pin(USER_PIN), &pin("user-pin-3333")).unwrap();
    s.logout().unwrap();
    expect_rv(s.login(UserType::User, Some(&pin(USER_PIN))), RvError::PinIncorrect);
    s.login(UserType::User, Some(&pin("user-pin-3333"))).unwrap();
    assert_eq!(s.find_objects(&[Attribute::Label(b"before-setpin".to_vec())]).unwrap(), vec![key]);
    assert_eq!(s.encrypt(&Mechanism::AesEcb, key, &[0u8; 16]).unwrap(), r::aes_ecb(&key_v, &[0u8; 16], true));
    s.logout().unwrap();
    // The SO changes its own PIN.
    s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    s.set_pin(&pin(SO_PIN), &pin("so-pin-4444")).unwrap();
    s.logout().unwrap();
    expect_rv(s.login(UserType::So, Some(&pin(SO_PIN))), RvError::PinIncorrect);
    s.login(UserType::So, Some(&pin("so-pin-4444"))).unwrap();
    // The SO can still reset the user PIN, and the user's key still works after that.
    s.init_pin(&pin("user-pin-5555")).unwrap();
    s.logout().unwrap();
    s.login(UserType::User, Some(&pin("user-pin-5555"))).unwrap();
    assert_eq!(s.encrypt(&Mechanism::AesEcb, key, &[0u8; 16]).unwrap(), r::aes_ecb(&key_v, &[0u8; 16], true));
}

#[test]
fn sensitive_and_extractable_rules() {
    let hsm = hsm3();
    let t = hsm.shared();
    let s = hsm.session_on(t);
    let value = h("0123456789ABCDEFFEDCBA9876543210");
    // Sensitive: CKA_VALUE is not readable.
    let sens = des_key(&s, &value, &[Attribute::Sensitive(true), Attribute::Extractable(true)]);
    let (rv, len) = hsm.raw.attribute_len(&s, sens, CKA_VALUE);
    assert_eq!((rv, len), (CKR_ATTRIBUTE_SENSITIVE, CK_UNAVAILABLE_INFORMATION), "sensitive CKA_VALUE");
    assert_eq!(kcv(&s, sens), h("08D7B4"), "the check value stays readable");
    // Unextractable (even if not sensitive): CKA_VALUE not readable, and no wrapping.
    let unex = des_key(&s, &value, &[Attribute::Sensitive(false), Attribute::Extractable(false)]);
    assert_eq!(hsm.raw.attribute_len(&s, unex, CKA_VALUE).0, CKR_ATTRIBUTE_SENSITIVE, "unextractable CKA_VALUE");
    let kek = des_key(&s, &h("89ABCDEF0123456776543210FEDCBA98"), &[]);
    expect_rv(s.wrap_key(&Mechanism::Des3Ecb, kek, unex), RvError::KeyUnextractable);
    // Readable when neither.
    let open = des_key(&s, &value, &[Attribute::Sensitive(false), Attribute::Extractable(true)]);
    assert_eq!(bytes(&s, open, AttributeType::Value), value);
    // One-way switches.
    expect_rv(s.update_attributes(sens, &[Attribute::Sensitive(false)]), RvError::AttributeReadOnly);
    expect_rv(s.update_attributes(unex, &[Attribute::Extractable(true)]), RvError::AttributeReadOnly);
    s.update_attributes(open, &[Attribute::Sensitive(true)]).unwrap();
    assert_eq!(hsm.raw.attribute_len(&s, open, CKA_VALUE).0, CKR_ATTRIBUTE_SENSITIVE, "after turning CKA_SENSITIVE on");
    s.update_attributes(open, &[Attribute::Extractable(false)]).unwrap();
    expect_rv(s.wrap_key(&Mechanism::Des3Ecb, kek, open), RvError::KeyUnextractable);
    // CKA_ALWAYS_SENSITIVE / CKA_NEVER_EXTRACTABLE / CKA_LOCAL: generated vs created.
    let generate = |sensitive: bool, extractable: bool| {
        s.generate_key(
            &Mechanism::Des2KeyGen,
            &[
                Attribute::Token(false),
                Attribute::Sensitive(sensitive),
                Attribute::Extractable(extractable),
                Attribute::Encrypt(true),
            ],
        )
        .unwrap()
    };
    let facts = |o: ObjectHandle| {
        (
            flag(&s, o, AttributeType::AlwaysSensitive),
            flag(&s, o, AttributeType::NeverExtractable),
            flag(&s, o, AttributeType::Local),
        )
    };
    assert_eq!(facts(generate(true, false)), (true, true, true), "generated sensitive, unextractable");
    let g = generate(true, true);
    assert_eq!(facts(g), (true, false, true), "generated sensitive, extractable");
    assert_eq!(facts(generate(false, true)), (false, false, true), "generated clear, extractable");
    let g2 = generate(false, false);
    assert_eq!(facts(g2), (false, true, true), "generated clear, unextractable");
    assert_eq!(facts(sens), (false, false, false), "created sensitive key");
    let created = des_key(&s, &value, &[Attribute::Sensitive(true), Attribute::Extractable(false)]);
    assert_eq!(facts(created), (false, false, false), "created sensitive, unextractable key");
    // Turning sensitivity on later does not make a key "always" sensitive.
    s.update_attributes(g2, &[Attribute::Sensitive(true)]).unwrap();
    assert!(!flag(&s, g2, AttributeType::AlwaysSensitive));
    // Making an extractable key unextractable does not make it "never" extractable.
    s.update_attributes(g, &[Attribute::Extractable(false)]).unwrap();
    assert!(!flag(&s, g, AttributeType::NeverExtractable));
    // Derived keys inherit "always/never" from the base key (PKCS#11 v2.40 §4.9 C_DeriveKey).
    let base_gen = s
        .generate_key(
            &Mechanism::Des2KeyGen,
            &[
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Derive(true),
            ],
        )
        .unwrap();
    let data = [0x11u8; 16];
    let dtmpl = |sensitive: bool, extractable: bool| {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::DES2),
            Attribute::Token(false),
            Attribute::Sensitive(sensitive),
            Attribute::Extractable(extractable),
        ]
    };
    let derive = |base: ObjectHandle, sensitive: bool, extractable: bool| {
        hsm.raw
            .derive(&s, CKM_DES3_ECB_ENCRYPT_DATA, Param::DeriveData(&data), base, &dtmpl(sensitive, extractable))
            .unwrap()
    };
    let (a, n, _) = facts(derive(base_gen, true, false));
    assert_eq!(
        (a, n),
        (true, true),
        "derived sensitive/unextractable from an always-sensitive, never-extractable base"
    );
    let (a, n, _) = facts(derive(base_gen, false, true));
    assert_eq!((a, n), (false, false), "derived clear/extractable from the same base");
    let base_created =
        des_key(&s, &value, &[Attribute::Sensitive(true), Attribute::Extractable(false), Attribute::Derive(true)]);
    let (a, n, _) = facts(derive(base_created, true, false));
    assert_eq!((a, n), (false, false), "derived from a created (never 'always sensitive') base");
    // Unwrapped keys are never "always sensitive" or "never extractable".
    let wrapped = s.wrap_key(&Mechanism::Des3Ecb, kek, sens).unwrap();
    let unwrapped = s.unwrap_key(&Mechanism::Des3Ecb, kek, &wrapped, &dtmpl(true, false)).unwrap();
    let (a, n, l) = facts(unwrapped);
    assert_eq!((a, n, l), (false, false, false), "unwrapped key");
    // RSA private parts of a sensitive key are not readable; the public parts are.
    let (_, rsa_private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::Token(false), Attribute::ModulusBits(1024u64.into()), Attribute::PublicExponent(vec![3])],
            &[Attribute::Token(false), Attribute::Sensitive(true), Attribute::Sign(true)],
        )
        .unwrap();
    for a in [CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT] {
        assert_eq!(
            hsm.raw.attribute_len(&s, rsa_private, a).0,
            CKR_ATTRIBUTE_SENSITIVE,
            "attribute 0x{a:X} of a sensitive RSA key"
        );
    }
    assert_eq!(bytes(&s, rsa_private, AttributeType::Modulus).len(), 128);
    // These are the module's to set, never the caller's.
    expect_rv(
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::DES2),
            Attribute::Token(false),
            Attribute::Value(value.clone()),
            Attribute::AlwaysSensitive(true),
        ]),
        RvError::AttributeReadOnly,
    );
    expect_rv(s.update_attributes(sens, &[Attribute::Local(true)]), RvError::AttributeReadOnly);
}

#[test]
fn wrap_with_trusted_needs_so_trusted_key() {
    let hsm = hsm3();
    let slot = fresh_token("trusted");
    let s = hsm.pkcs11.open_rw_session(slot).unwrap();
    let kek_v = h("89ABCDEF0123456776543210FEDCBA98C1C2C4C7C8CBCDCE");
    // The SO creates a public, trusted wrapping key.
    s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    let trusted = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::DES3),
            Attribute::Value(kek_v.clone()),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Wrap(true),
            Attribute::Trusted(true),
            Attribute::Label(b"trusted-kek".to_vec()),
        ])
        .unwrap();
    assert!(flag(&s, trusted, AttributeType::Trusted));
    s.logout().unwrap();
    s.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    // A user may not create or mark a trusted key.
    expect_rv(
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::DES3),
            Attribute::Value(kek_v.clone()),
            Attribute::Token(false),
            Attribute::Wrap(true),
            Attribute::Trusted(true),
        ]),
        RvError::AttributeReadOnly,
    );
    let plain_kek = des_key(&s, &kek_v, &[]);
    expect_rv(s.update_attributes(plain_kek, &[Attribute::Trusted(true)]), RvError::AttributeReadOnly);
    let target_v = h("0123456789ABCDEFFEDCBA9876543210");
    let target = des_key(&s, &target_v, &[Attribute::WrapWithTrusted(true), Attribute::Extractable(true)]);
    expect_rv(s.wrap_key(&Mechanism::Des3Ecb, plain_kek, target), RvError::KeyNotWrappable);
    let found = s.find_objects(&[Attribute::Label(b"trusted-kek".to_vec())]).unwrap();
    assert_eq!(found, vec![trusted]);
    let wrapped = s.wrap_key(&Mechanism::Des3Ecb, trusted, target).unwrap();
    assert_eq!(wrapped, r::tdes_ecb(&kek_v, &target_v, true));
    // CKA_WRAP_WITH_TRUSTED cannot be turned off.
    expect_rv(s.update_attributes(target, &[Attribute::WrapWithTrusted(false)]), RvError::AttributeReadOnly);
}

#[test]
fn find_objects_with_3000_session_objects() {
    let hsm = hsm3();
    let t = hsm.user_token("find");
    let creator = hsm.session_on(&t);
    let n = 3000usize;
    let start = Instant::now();
    for i in 0..n {
        creator
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Value(vec![(i % 251) as u8; 16]),
                Attribute::Label(format!("k-{i:04}").into_bytes()),
                Attribute::Id(vec![(i % 3) as u8]),
                Attribute::Encrypt(true),
            ])
            .unwrap();
    }
    eprintln!("created {n} session keys in {:?}", start.elapsed());
    let other = hsm.session_on(&t);
    let timed = |what: &str, tmpl: &[Attribute]| {
        let t0 = Instant::now();
        let found = other.find_objects(tmpl).unwrap();
        eprintln!("C_FindObjects {what}: {} objects in {:?}", found.len(), t0.elapsed());
        found
    };
    assert_eq!(timed("all", &[]).len(), n);
    assert_eq!(timed("class", &[Attribute::Class(ObjectClass::SECRET_KEY)]).len(), n);
    assert_eq!(timed("id 0", &[Attribute::Id(vec![0])]).len(), n / 3);
    assert_eq!(timed("id 1 + AES", &[Attribute::Id(vec![1]), Attribute::KeyType(KeyType::AES)]).len(), n / 3);
    assert_eq!(timed("DES2", &[Attribute::KeyType(KeyType::DES2)]).len(), 0);
    let one = timed("label", &[Attribute::Label(b"k-1234".to_vec())]);
    assert_eq!(one.len(), 1);
    assert_eq!(bytes(&other, one[0], AttributeType::Id), vec![(1234 % 3) as u8]);
    assert_eq!(kcv(&other, one[0]), r::kcv_aes(&[(1234 % 251) as u8; 16]));
    assert!(timed("label + wrong id", &[Attribute::Label(b"k-1234".to_vec()), Attribute::Id(vec![0])]).is_empty());
    assert!(timed("token objects", &[Attribute::Token(true)]).is_empty());
    // Iterating in small batches gives the same set.
    let mut it: Vec<ObjectHandle> = other
        .iter_objects_with_cache_size(&[Attribute::Id(vec![2])], NonZeroUsize::new(7).unwrap())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    it.sort_by_key(ObjectHandle::handle);
    it.dedup();
    assert_eq!(it.len(), n / 3);
    // Session objects die with the session that created them.
    drop(creator);
    assert_eq!(other.find_objects(&[]).unwrap().len(), 0, "session objects outlived their session");
}

#[test]
fn error_codes() {
    let hsm = hsm3();
    let t = hsm.shared();
    let s = hsm.session_on(t);
    let raw = &hsm.raw;
    let key_v = h("000102030405060708090A0B0C0D0E0F");
    let key = aes_key(&s, &key_v, &[]);
    // Bad session handles, including a closed one.
    assert_eq!(raw.encrypt_init(0xDEAD_BEEF, CKM_AES_ECB, Param::None, key.handle()), CKR_SESSION_HANDLE_INVALID);
    assert_eq!(raw.session_info_rv(0xDEAD_BEEF), CKR_SESSION_HANDLE_INVALID);
    let closed = hsm.session_on(t);
    let closed_handle = closed.handle();
    closed.close().unwrap();
    assert_eq!(raw.session_info_rv(closed_handle), CKR_SESSION_HANDLE_INVALID);
    // C_Initialize again: already initialised; a non-NULL pReserved is refused, not a crash.
    assert_eq!(raw.initialize_again(false), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    let rv = raw.initialize_again(true);
    assert!(rv == CKR_ARGUMENTS_BAD || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED, "C_Initialize with pReserved: 0x{rv:X}");
    // Bad object handles.
    let bogus = object_handle(0xFFFF_FF00);
    expect_rv(s.get_attributes(bogus, &[AttributeType::Label]), RvError::ObjectHandleInvalid);
    expect_rv(s.destroy_object(bogus), RvError::ObjectHandleInvalid);
    expect_rv(s.destroy_object(object_handle(0)), RvError::ObjectHandleInvalid);
    expect_rv(s.encrypt(&Mechanism::AesEcb, bogus, &[0u8; 16]), RvError::KeyHandleInvalid);
    // Operation not initialised.
    expect_rv(s.encrypt_update(&[0u8; 16]), RvError::OperationNotInitialized);
    expect_rv(s.decrypt_final(), RvError::OperationNotInitialized);
    expect_rv(s.sign_final(), RvError::OperationNotInitialized);
    expect_rv(s.digest_update(b"x"), RvError::OperationNotInitialized);
    assert_eq!(raw.encrypt_call(&s, &[0u8; 16], Some(16)).0, CKR_OPERATION_NOT_INITIALIZED);
    // Operation active: a second Init fails and leaves the first operation intact.
    s.encrypt_init(&Mechanism::AesEcb, key).unwrap();
    expect_rv(s.encrypt_init(&Mechanism::AesEcb, key), RvError::OperationActive);
    let mut out = s.encrypt_update(&[7u8; 16]).unwrap();
    out.extend(s.encrypt_final().unwrap());
    assert_eq!(out, r::aes_ecb(&key_v, &[7u8; 16], true));
    // CKR_BUFFER_TOO_SMALL reports the needed length and keeps the operation.
    let data = [0x42u8; 32];
    assert_eq!(raw.encrypt_init(s.handle(), CKM_AES_ECB, Param::None, key.handle()), CKR_OK);
    let (rv, len, _) = raw.encrypt_call(&s, &data, None);
    assert_eq!((rv, len), (CKR_OK, 32), "length query");
    let (rv, len, _) = raw.encrypt_call(&s, &data, Some(16));
    assert_eq!((rv, len), (CKR_BUFFER_TOO_SMALL, 32), "short buffer");
    let (rv, len, out) = raw.encrypt_call(&s, &data, Some(32));
    assert_eq!((rv, len), (CKR_OK, 32));
    assert_eq!(out, r::aes_ecb(&key_v, &data, true));
    assert_eq!(raw.encrypt_call(&s, &data, Some(32)).0, CKR_OPERATION_NOT_INITIALIZED, "the operation ended");
    let mac_key = generic_key(&s, &[0x0Bu8; 32], &[]);
    assert_eq!(raw.sign_init(&s, CKM_SHA256_HMAC, Param::None, mac_key), CKR_OK);
    let (rv, len, _) = raw.sign_call(&s, b"data", Some(4));
    assert_eq!((rv, len), (CKR_BUFFER_TOO_SMALL, 32), "short signature buffer");
    let (rv, len, mac) = raw.sign_call(&s, b"data", Some(64));
    assert_eq!((rv, len), (CKR_OK, 32));
    let pk = PKey::hmac(&[0x0Bu8; 32]).unwrap();
    let want = openssl::sign::Signer::new(MessageDigest::sha256(), &pk).unwrap().sign_oneshot_to_vec(b"data").unwrap();
    assert_eq!(mac[..32], want[..]);
    let label_obj = aes_key(&s, &key_v, &[Attribute::Label(b"a-long-label".to_vec())]);
    let (rv, len, _) = raw.attribute_into(&s, label_obj, CKA_LABEL, 2);
    assert_eq!(rv, CKR_BUFFER_TOO_SMALL, "C_GetAttributeValue with a short buffer (ulValueLen {len:#x})");
    let (rv, len, buf) = raw.attribute_into(&s, label_obj, CKA_LABEL, 64);
    assert_eq!((rv, len), (CKR_OK, 12));
    assert_eq!(&buf[..12], b"a-long-label");
    // A failed Init leaves nothing stuck.
    let no_encrypt = aes_key(&s, &key_v, &[Attribute::Encrypt(false)]);
    expect_rv(s.encrypt_init(&Mechanism::AesEcb, no_encrypt), RvError::KeyFunctionNotPermitted);
    s.encrypt_init(&Mechanism::AesEcb, key).unwrap();
    assert_eq!(s.encrypt_update(&[1u8; 16]).unwrap(), r::aes_ecb(&key_v, &[1u8; 16], true));
    s.encrypt_final().unwrap();
    assert_eq!(
        raw.encrypt_init(s.handle(), CKM_AES_CBC, Param::Bytes(&[0u8; 8]), key.handle()),
        CKR_MECHANISM_PARAM_INVALID
    );
    assert_eq!(raw.encrypt_init(s.handle(), CKM_AES_CBC, Param::Bytes(&[0u8; 16]), key.handle()), CKR_OK);
    assert_eq!(raw.encrypt_call(&s, &[2u8; 16], Some(16)).0, CKR_OK);
    expect_rv(s.sign_init(&Mechanism::Sha256RsaPkcs, key), RvError::KeyTypeInconsistent);
    s.sign_init(&Mechanism::AesCMac, key).unwrap();
    s.sign_update(b"abc").unwrap();
    assert_eq!(s.sign_final().unwrap(), r::aes_cmac(&key_v, b"abc"));
    assert_eq!(raw.encrypt_init(s.handle(), 0x8000_7777, Param::None, key.handle()), CKR_MECHANISM_INVALID);
    s.encrypt_init(&Mechanism::AesEcb, key).unwrap();
    // A failing C_Encrypt (bad length) ends its operation too.
    expect_rv(s.encrypt_update(&[0u8; 15]).and_then(|_| s.encrypt_final()), RvError::DataLenRange);
    s.encrypt_init(&Mechanism::AesEcb, key).unwrap();
    s.encrypt_final().unwrap();
}

/// One thread iteration: message, its signature, the IV and the AES-CBC-PAD ciphertext.
type Signed = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

#[test]
fn eight_threads_sign_and_encrypt_concurrently() {
    let hsm = hsm3();
    let t = hsm.shared();
    let (public, private, aes) = t.with_keeper(|s| {
        let (public, private) = s
            .generate_key_pair(
                &Mechanism::RsaPkcsKeyPairGen,
                &[
                    Attribute::Token(false),
                    Attribute::ModulusBits(1024u64.into()),
                    Attribute::PublicExponent(vec![1, 0, 1]),
                    Attribute::Verify(true),
                ],
                &[Attribute::Token(false), Attribute::Sensitive(true), Attribute::Sign(true)],
            )
            .unwrap();
        (public, private, aes_key(s, &h("00112233445566778899AABBCCDDEEFF"), &[]))
    });
    let slot = t.slot;
    let iterations = 40;
    let start = Instant::now();
    let results: Vec<Vec<Signed>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|tid| {
                scope.spawn(move || {
                    let s = hsm.pkcs11.open_rw_session(slot).unwrap();
                    let own_v = [tid as u8; 24];
                    let own = des_key(&s, &own_v, &[]);
                    (0..iterations)
                        .map(|i| {
                            let msg = format!("thread {tid} message {i}").into_bytes();
                            let sig = s.sign(&Mechanism::Sha256RsaPkcs, private, &msg).unwrap();
                            let iv = [tid as u8 ^ i as u8; 16];
                            let ct = s.encrypt(&Mechanism::AesCbcPad(iv), aes, &msg).unwrap();
                            let des = s.encrypt(&Mechanism::Des3Ecb, own, &[i as u8; 8]).unwrap();
                            assert_eq!(
                                des,
                                r::tdes_ecb(&own_v, &[i as u8; 8], true),
                                "thread {tid}: DES3 under its own key"
                            );
                            (msg, sig, iv.to_vec(), ct)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("8 threads × {iterations} (RSA sign + AES + DES3) in {:?}", start.elapsed());
    let s = hsm.session_on(t);
    let n = bytes(&s, public, AttributeType::Modulus);
    let e = bytes(&s, public, AttributeType::PublicExponent);
    let pk = PKey::from_rsa(
        Rsa::from_public_components(BigNum::from_slice(&n).unwrap(), BigNum::from_slice(&e).unwrap()).unwrap(),
    )
    .unwrap();
    let mut count = 0;
    for (msg, sig, iv, ct) in results.into_iter().flatten() {
        let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &pk).unwrap();
        assert!(v.verify_oneshot(&sig, &msg).unwrap(), "signature of {:?}", String::from_utf8_lossy(&msg));
        assert_eq!(r::aes_cbc_pad(&h("00112233445566778899AABBCCDDEEFF"), &iv, &ct, false), msg);
        count += 1;
    }
    assert_eq!(count, 8 * iterations);
}

/// `C_UnwrapKey` of a private key: the template's key type decides the code (issue 14): none is
/// `CKR_TEMPLATE_INCOMPLETE`, one the module cannot unwrap into `CKR_ATTRIBUTE_VALUE_INVALID`;
/// CKK_RSA unwraps (PKCS#8 under AES key wrap with padding).
#[test]
fn private_key_unwrap_template_codes() {
    let hsm = hsm3();
    let t = hsm.shared();
    let s = hsm.session_on(t);
    let kek = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
            ],
        )
        .unwrap();
    let (_, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::Token(false), Attribute::ModulusBits(1024.into()), Attribute::PublicExponent(vec![3])],
            &[Attribute::Token(false), Attribute::Sensitive(true), Attribute::Extractable(true), Attribute::Sign(true)],
        )
        .unwrap();
    let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, private).unwrap();
    let with = |kt: Option<KeyType>| {
        let mut t = vec![Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Token(false), Attribute::Sign(true)];
        t.extend(kt.map(Attribute::KeyType));
        s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped, &t)
    };
    expect_rv(with(None), RvError::TemplateIncomplete);
    expect_rv(with(Some(KeyType::EC)), RvError::AttributeValueInvalid);
    expect_rv(with(Some(KeyType::DSA)), RvError::AttributeValueInvalid);
    with(Some(KeyType::RSA)).unwrap();
}

//! Shared helpers for the hsm-sim integration tests (in the style of Kryoptic's
//! `cdylib/tests/rc_common.rs`): locate the *built* module, load it through `cryptoki`, give each
//! test binary one initialised module instance and hand out tokens, sessions and keys.
//!
//! A PKCS#11 module reads its configuration at `C_Initialize` and a process loads the shared
//! object once, so all tests of one binary share one module instance: [`hsm_with`] initialises
//! it once per binary (fresh temporary token directory, `pin_kdf_iterations = 1000`), and tests
//! that need their own login state take their own slot ([`Hsm::user_token`]). Tests that need
//! a module restart run child processes (`persistence.rs`).
#![allow(dead_code, clippy::unwrap_used)]

pub mod raw;
pub mod reference;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// SO PIN of every test token.
pub const SO_PIN: &str = "so-pin-0000";
/// User PIN of every test token.
pub const USER_PIN: &str = "user-pin-1111";

/// An `AuthPin`.
pub fn pin(p: &str) -> AuthPin {
    AuthPin::new(p.into())
}

/// Path of the built module: `$QUILL_HSM_MODULE`, else `libquill_hsm_sim.so` next to the
/// directory holding this test executable (`target/<profile>/deps/..`) or in `deps/` itself,
/// whichever is newer. `cargo test` builds the cdylib into `deps/` and does not always copy it
/// up (only `cargo build` does), so the copy one level up can be stale.
pub fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("QUILL_HSM_MODULE") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let up = deps.parent().unwrap().join("libquill_hsm_sim.so");
    let here = deps.join("libquill_hsm_sim.so");
    let newest = [&up, &here]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p.clone());
    newest.unwrap_or_else(|| {
        panic!(
            "libquill_hsm_sim.so not found at {} or {} (build it: cargo build --release -p quill-hsm-sim, or set QUILL_HSM_MODULE)",
            up.display(),
            here.display()
        )
    })
}

/// Per-binary module settings.
#[derive(Debug, Clone, Copy)]
pub struct HsmConfig {
    /// Number of slots (ids 0..slots).
    pub slots: usize,
    /// `max_pin_tries`.
    pub max_pin_tries: u32,
    /// Slots `0..policy_slots` keep the key-separation policy on (the module's default); the
    /// others turn it off. The mechanism suites turn it off everywhere (their keys do everything:
    /// [`secret`]); `hygiene.rs` tests the policy.
    pub policy_slots: usize,
    /// Slots `0..translate_slots` offer `CKM_QUILL_TR31_TRANSLATE` (`kbpk_translate`, off in the
    /// module's default); `hygiene.rs` keeps it off everywhere and tests that.
    pub translate_slots: usize,
}

impl Default for HsmConfig {
    fn default() -> Self {
        HsmConfig { slots: 4, max_pin_tries: 10, policy_slots: 0, translate_slots: usize::MAX }
    }
}

/// Write a module configuration for `dir` (tokens in `dir/tokens`, fault file `dir/faults.toml`)
/// and return its path.
pub fn write_config(dir: &Path, cfg: HsmConfig) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let faults = dir.join("faults.toml");
    if !faults.exists() {
        std::fs::write(&faults, "").unwrap();
    }
    let mut s = format!(
        "token_dir = {:?}\npin_kdf_iterations = 1000\nmax_pin_tries = {}\nfault_file = {:?}\n",
        tokens.display().to_string(),
        cfg.max_pin_tries,
        faults.display().to_string()
    );
    for id in 0..cfg.slots {
        let on = id < cfg.policy_slots;
        let translate = id < cfg.translate_slots;
        s.push_str(&format!(
            "\n[[slot]]\nid = {id}\ndescription = \"test slot {id}\"\nkey_separation = {on}\nkbpk_translate = {translate}\n"
        ));
    }
    let path = dir.join("quill-hsm.toml");
    std::fs::write(&path, s).unwrap();
    path
}

/// A fresh directory under cargo's per-target temporary directory. The per-binary module
/// directories live in a `static` and are never dropped, so leftovers of earlier runs (older
/// than an hour) are removed here.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if stale && e.file_name().to_string_lossy().starts_with("hsm-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tempfile::Builder::new().prefix(prefix).tempdir_in(base).unwrap()
}

/// Load and initialise the module at its path; `QUILL_HSM_CONF` must already be set.
pub fn load_module() -> Pkcs11 {
    let path = module_path();
    let p = Pkcs11::new(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    p
}

/// A token with a user logged in; the `keeper` session holds the login for the test's lifetime.
pub struct Token {
    /// Its slot.
    pub slot: Slot,
    keeper: Mutex<Session>,
}

/// The module instance of this test binary.
pub struct Hsm {
    /// The `cryptoki` context.
    pub pkcs11: Pkcs11,
    /// The raw function table of the same instance.
    pub raw: raw::RawModule,
    /// The temporary directory (configuration, tokens, fault file).
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    slots: Vec<Slot>,
    next: AtomicUsize,
    shared: OnceLock<Token>,
}

static HSM: OnceLock<Hsm> = OnceLock::new();

/// The module of this test binary, initialised on first use with `cfg` (later `cfg`s are
/// ignored: every test of a binary must pass the same one).
pub fn hsm_with(cfg: HsmConfig) -> &'static Hsm {
    HSM.get_or_init(|| {
        let tmp = temp_dir("hsm-sim-test-");
        let conf = write_config(tmp.path(), cfg);
        raw::set_env("QUILL_HSM_CONF", conf.as_os_str());
        let pkcs11 = load_module();
        let raw = raw::RawModule::load(&module_path());
        let mut slots = pkcs11.get_all_slots().unwrap();
        slots.sort_by_key(Slot::id);
        assert_eq!(slots.len(), cfg.slots, "the module should show the {} configured slots", cfg.slots);
        Hsm {
            pkcs11,
            raw,
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            slots,
            next: AtomicUsize::new(0),
            shared: OnceLock::new(),
        }
    })
}

/// The module with default settings.
pub fn hsm() -> &'static Hsm {
    hsm_with(HsmConfig::default())
}

impl Hsm {
    /// A slot no other test has taken (its token is not initialised).
    pub fn fresh_slot(&self) -> Slot {
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        *self.slots.get(i).unwrap_or_else(|| panic!("out of slots: raise HsmConfig::slots above {}", self.slots.len()))
    }

    /// `C_InitToken` with [`SO_PIN`], then the SO sets [`USER_PIN`].
    pub fn init_token(&self, slot: Slot, label: &str) {
        self.pkcs11.init_token(slot, &pin(SO_PIN), label).unwrap();
        let s = self.pkcs11.open_rw_session(slot).unwrap();
        s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
        s.init_pin(&pin(USER_PIN)).unwrap();
        s.logout().unwrap();
    }

    /// A fresh initialised token with the user logged in.
    pub fn user_token(&self, label: &str) -> Token {
        let slot = self.fresh_slot();
        self.init_token(slot, label);
        let keeper = self.pkcs11.open_rw_session(slot).unwrap();
        keeper.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
        Token { slot, keeper: Mutex::new(keeper) }
    }

    /// The token the tests of this binary share (user logged in).
    pub fn shared(&self) -> &Token {
        self.shared.get_or_init(|| self.user_token("shared"))
    }

    /// A new R/W session on the shared token (user already logged in).
    pub fn session(&self) -> Session {
        self.pkcs11.open_rw_session(self.shared().slot).unwrap()
    }

    /// A new R/W session on `t`.
    pub fn session_on(&self, t: &Token) -> Session {
        self.pkcs11.open_rw_session(t.slot).unwrap()
    }
}

impl Token {
    /// A token whose login `keeper` holds.
    pub fn from_keeper(slot: Slot, keeper: Session) -> Token {
        Token { slot, keeper: Mutex::new(keeper) }
    }

    /// Run `f` with the session that holds the login.
    pub fn with_keeper<R>(&self, f: impl FnOnce(&Session) -> R) -> R {
        let s = self.keeper.lock().unwrap();
        f(&s)
    }
}

/// Decode hex (spaces allowed).
pub fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

/// The `CK_RV` inside a `cryptoki` error.
pub fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

/// Assert that `r` failed with `want`.
#[track_caller]
pub fn expect_rv<T: std::fmt::Debug>(r: cryptoki::error::Result<T>, want: RvError) {
    match r {
        Ok(v) => panic!("expected {want:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(rv(e), want),
    }
}

/// A base template with the given extra attributes overriding attributes of the same type.
pub fn merge(base: Vec<Attribute>, extra: &[Attribute]) -> Vec<Attribute> {
    let mut out: Vec<Attribute> =
        base.into_iter().filter(|a| !extra.iter().any(|e| e.attribute_type() == a.attribute_type())).collect();
    out.extend_from_slice(extra);
    out
}

/// Create a session secret key of type `kt` with `value`, every usage allowed, sensitive and
/// extractable; `extra` overrides.
pub fn secret(s: &Session, kt: KeyType, value: &[u8], extra: &[Attribute]) -> ObjectHandle {
    let base = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(kt),
        Attribute::Value(value.to_vec()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Derive(true),
    ];
    s.create_object(&merge(base, extra))
        .unwrap_or_else(|e| panic!("C_CreateObject {kt:?} ({} bytes): {e}", value.len()))
}

/// DES2 (16 bytes) or DES3 (24 bytes) key.
pub fn des_key(s: &Session, value: &[u8], extra: &[Attribute]) -> ObjectHandle {
    let kt = match value.len() {
        16 => KeyType::DES2,
        24 => KeyType::DES3,
        n => panic!("{n}-byte DES key"),
    };
    secret(s, kt, value, extra)
}

/// AES key.
pub fn aes_key(s: &Session, value: &[u8], extra: &[Attribute]) -> ObjectHandle {
    secret(s, KeyType::AES, value, extra)
}

/// Generic secret key.
pub fn generic_key(s: &Session, value: &[u8], extra: &[Attribute]) -> ObjectHandle {
    secret(s, KeyType::GENERIC_SECRET, value, extra)
}

/// One attribute, or `None` when the module did not return it.
pub fn attr(s: &Session, o: ObjectHandle, t: AttributeType) -> Option<Attribute> {
    s.get_attributes(o, &[t]).unwrap().into_iter().next()
}

/// A byte-string attribute.
#[track_caller]
pub fn bytes(s: &Session, o: ObjectHandle, t: AttributeType) -> Vec<u8> {
    match attr(s, o, t) {
        Some(
            Attribute::Value(v)
            | Attribute::CheckValue(v)
            | Attribute::Modulus(v)
            | Attribute::PublicExponent(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Id(v)
            | Attribute::Label(v),
        ) => v,
        other => panic!("attribute {t:?}: got {other:?}"),
    }
}

/// A boolean attribute.
#[track_caller]
pub fn flag(s: &Session, o: ObjectHandle, t: AttributeType) -> bool {
    match attr(s, o, t) {
        Some(
            Attribute::Sensitive(b)
            | Attribute::Extractable(b)
            | Attribute::AlwaysSensitive(b)
            | Attribute::NeverExtractable(b)
            | Attribute::Local(b)
            | Attribute::Token(b)
            | Attribute::Private(b)
            | Attribute::Trusted(b)
            | Attribute::WrapWithTrusted(b)
            | Attribute::Modifiable(b)
            | Attribute::Encrypt(b)
            | Attribute::Decrypt(b)
            | Attribute::Sign(b)
            | Attribute::Verify(b)
            | Attribute::Wrap(b)
            | Attribute::Unwrap(b)
            | Attribute::Derive(b),
        ) => b,
        other => panic!("attribute {t:?}: got {other:?}"),
    }
}

/// `CKA_CHECK_VALUE`.
#[track_caller]
pub fn kcv(s: &Session, o: ObjectHandle) -> Vec<u8> {
    bytes(s, o, AttributeType::CheckValue)
}

/// A vendor mechanism with a packed byte-string parameter (`None` parameter when empty).
///
/// `VendorDefinedMechanism::new::<T>` takes the parameter length from `size_of::<T>()`, so a
/// runtime-length byte string is passed as a `[u8; N]` of the matching `N`.
pub fn vendor(ty: u64, param: &[u8]) -> Mechanism<'_> {
    let mt = MechanismType::new_vendor_defined(ty).unwrap();
    macro_rules! sized {
        ($($n:literal)*) => {
            match param.len() {
                0 => VendorDefinedMechanism::new::<u8>(mt, None),
                $($n => {
                    let a: &[u8; $n] = param.try_into().unwrap();
                    VendorDefinedMechanism::new::<[u8; $n]>(mt, Some(a))
                })*
                n => panic!("vendor parameter of {n} bytes: extend the table in tests/common/mod.rs"),
            }
        };
    }
    Mechanism::VendorDefined(sized!(
        1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32
        33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64
        65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96
        97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112 113 114 115 116 117 118 119 120
        121 122 123 124 125 126 127 128 129 130 131 132 133 134 135 136
    ))
}

/// `digits(n)` of the vendor parameter layouts: a length byte, then ASCII digits.
pub fn digits(s: &str) -> Vec<u8> {
    let mut v = vec![u8::try_from(s.len()).unwrap()];
    v.extend_from_slice(s.as_bytes());
    v
}

/// A `CK_ULONG` in host byte order.
pub fn ulong(v: u64) -> Vec<u8> {
    cryptoki_sys::CK_ULONG::from(v).to_ne_bytes().to_vec()
}

/// A table of a TOML file in `hsm-sim/testdata/`.
pub fn testdata(file: &str) -> toml::Table {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(file);
    std::fs::read_to_string(&p).unwrap().parse().unwrap()
}

/// `table.key` as a string.
#[track_caller]
pub fn tstr(t: &toml::Table, table: &str, key: &str) -> String {
    t[table][key].as_str().unwrap_or_else(|| panic!("{table}.{key}")).to_string()
}

/// `table.key` as hex bytes.
#[track_caller]
pub fn thex(t: &toml::Table, table: &str, key: &str) -> Vec<u8> {
    h(&tstr(t, table, key))
}

/// `table.key` as an array of hex byte strings.
#[track_caller]
pub fn thex_list(t: &toml::Table, table: &str, key: &str) -> Vec<Vec<u8>> {
    t[table][key].as_array().unwrap().iter().map(|v| h(v.as_str().unwrap())).collect()
}

/// `table.key` as an integer.
#[track_caller]
pub fn tint(t: &toml::Table, table: &str, key: &str) -> i64 {
    t[table][key].as_integer().unwrap_or_else(|| panic!("{table}.{key}"))
}

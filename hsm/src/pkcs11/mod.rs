//! [`Pkcs11Hsm`]: the [`Hsm`] operations on one slot of any PKCS#11 module.

mod atrest;
mod payment_ops;
mod rotation;
mod session;
mod templates;
mod tr31_ops;

use crate::config::SlotConfig;
use crate::error::{HsmError, Op, SlotRef, is_device_rv, is_session_rv};
use crate::keyblock::Role;
use crate::mechanisms::{Capabilities, mechanism_name, vendor};
use crate::module::{self, Module};
use crate::observer::{HostPathObserver, HostPathUse};
use crate::payment::{CrtPadding, DerivedKey, GeneratedPin, IccKeyPair, PinRequest};
use crate::raw::{RawError, RawParam};
use crate::types::{HsmInfo, Kcv, KeyAlg, KeyUse, RsaPublic, SealedComponent, SlotInfo, WrappedKey, WrappedRsaKey};
use crate::{Hsm, Zeroizing};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Ulong};
use cryptoki_sys::{CK_ULONG, CKM_DES3_ECB_ENCRYPT_DATA};
use quill_crypto::tr31::Tr31Header;
use session::{SessionPool, SlotSession};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use templates::Usage;
use zeroize::Zeroize as _;

/// GCM IV length (NIST SP 800-38D's recommended 96 bits).
const GCM_IV_LEN: usize = 12;
/// GCM tag length.
const GCM_TAG_LEN: usize = 16;

/// The transport key pair, as cached.
#[derive(Clone)]
struct Transport {
    private: ObjectHandle,
    public: RsaPublic,
}

/// The SMK, as cached.
#[derive(Clone)]
struct Smk {
    handle: ObjectHandle,
    kcv: Kcv,
}

/// Token objects found once and kept (handles are valid in every session of the process).
#[derive(Default)]
struct TokenCache {
    transport: Option<Transport>,
    smk: Option<Smk>,
    /// The next SMK of a rotation (`None`: not looked up yet; `Some(None)`: there is none).
    next: Option<Option<Smk>>,
    /// The node audit key ([`Hsm::node_audit_mac`]) and its KCV.
    audit: Option<(ObjectHandle, Kcv)>,
}

/// One slot of one PKCS#11 module, implementing [`Hsm`].
///
/// - The module is loaded and initialised once per process (a process-wide registry keyed by the
///   module's canonical path); every `Pkcs11Hsm` on it shares that instance.
/// - Up to [`SlotConfig::sessions`] logged-in sessions stay open; an operation takes one, uses it
///   alone, and puts it back. No login and no `C_FindObjects` per operation: the transport key and
///   SMK handles are found once, and working keys unwrapped from a [`WrappedKey`] are cached per
///   session (keyed by the SHA-256 of the blob and the usage; least recently used destroyed beyond
///   [`SlotConfig::key_cache`]).
/// - After a device-type error, the session is closed, other sessions are closed as they come back,
///   and the token-object handles are looked up again on next use.
/// - Capabilities come from the slot's unfiltered mechanism list: vendor mechanisms are used when
///   listed (hsm-sim's `CKM_QUILL_KEY_COMPONENTS_XOR`); otherwise standard mechanisms are
///   composed, and what cannot be composed inside the HSM takes the host path if allowed.
pub struct Pkcs11Hsm {
    module: Arc<Module>,
    slot: Slot,
    at: Arc<SlotRef>,
    info: SlotInfo,
    caps: Capabilities,
    pin: Zeroizing<String>,
    allow_host: bool,
    transport_label: String,
    smk_label: String,
    /// The label of the next SMK while a rotation forms it (`<prefix>-smk-next`).
    next_label: String,
    audit_label: String,
    observer: Arc<dyn HostPathObserver>,
    sessions: SessionPool,
    token: Mutex<TokenCache>,
    /// Serialises storing the SMK (taken before `transport_gen` when both are needed).
    ceremony: Mutex<()>,
    /// Serialises generating the transport key pair.
    transport_gen: Mutex<()>,
    /// A refused login (wrong or locked PIN): not retried, so as not to lock the token.
    login_refused: Mutex<Option<HsmError>>,
}

impl std::fmt::Debug for Pkcs11Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11Hsm({})", self.at)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Session objects destroyed when this guard goes out of scope (components, transient keys,
/// peer public keys), whatever path the operation takes.
struct Temporaries<'s> {
    session: &'s Session,
    handles: Vec<ObjectHandle>,
}

impl<'s> Temporaries<'s> {
    fn new(session: &'s Session) -> Self {
        Temporaries { session, handles: Vec::new() }
    }

    fn add(&mut self, h: ObjectHandle) -> ObjectHandle {
        self.handles.push(h);
        h
    }

    /// Stop tracking `h` (it is kept).
    fn keep(&mut self, h: ObjectHandle) {
        self.handles.retain(|x| *x != h);
    }
}

impl Drop for Temporaries<'_> {
    fn drop(&mut self) {
        for h in self.handles.drain(..) {
            if let Err(e) = self.session.destroy_object(h) {
                tracing::debug!(error = %e, "could not destroy a temporary session object");
            }
        }
    }
}

/// Set odd parity on every byte (DES keys).
fn set_odd_parity(key: &mut [u8]) {
    for b in key {
        let ones = (*b & 0xFE).count_ones();
        *b = (*b & 0xFE) | u8::from(ones % 2 == 0);
    }
}

impl Op<'_> {
    fn raw(&self, e: RawError) -> HsmError {
        match e {
            RawError::Rv(f, rv) => {
                HsmError::Module { operation: self.name, function: f.to_owned(), rv, at: self.at.clone() }
            }
            RawError::Missing(f) => HsmError::Unavailable {
                operation: self.name,
                reason: format!("the module's function list has no {f}"),
                at: self.at.clone(),
            },
            RawError::Length(f) => self.misuse(format!("{f}: a length does not fit a CK_ULONG")),
        }
    }
}

impl Pkcs11Hsm {
    /// Open a slot: load the module (once per process), find the slot, read its mechanisms, and
    /// log in (so a wrong PIN fails here, not at first use). `observer` hears about every use of
    /// the host path.
    pub fn open(config: &SlotConfig, observer: Arc<dyn HostPathObserver>) -> Result<Pkcs11Hsm, HsmError> {
        config.validate()?;
        let pin = config.resolve_pin()?;
        let module = module::load(&config.module)?;
        let mpath = config.module.display().to_string();
        let mut at = Arc::new(SlotRef { module: mpath.clone(), slot: config.slot.unwrap_or(0), token: String::new() });
        let op = Op { name: "open", at: &at };
        let slot = match (&config.slot, &config.token_label) {
            (Some(id), _) => op
                .ck(module.pkcs11.get_all_slots())?
                .into_iter()
                .find(|s| s.id() == *id)
                .ok_or_else(|| HsmError::Config { reason: format!("{mpath} has no slot {id}") })?,
            (None, Some(label)) => {
                let mut found = Vec::new();
                for s in op.ck(module.pkcs11.get_slots_with_initialized_token())? {
                    if op.ck(module.pkcs11.get_token_info(s))?.label().trim_end() == label.trim_end() {
                        found.push(s);
                    }
                }
                match found.as_slice() {
                    [s] => *s,
                    [] => {
                        return Err(HsmError::Config {
                            reason: format!("{mpath} has no initialised token labelled {label:?}"),
                        });
                    }
                    _ => {
                        return Err(HsmError::Config {
                            reason: format!("{mpath} has several tokens labelled {label:?}; use slot = <id>"),
                        });
                    }
                }
            }
            (None, None) => return Err(HsmError::Config { reason: "set slot or token_label".to_owned() }),
        };
        Arc::make_mut(&mut at).slot = slot.id();
        let op = Op { name: "open", at: &at };
        let token = op.ck(module.pkcs11.get_token_info(slot))?;
        if !token.token_initialized() {
            return Err(HsmError::Config { reason: format!("{mpath} slot {}: token not initialised", slot.id()) });
        }
        Arc::make_mut(&mut at).token = token.label().trim_end().to_owned();
        let op = Op { name: "open", at: &at };
        let caps = Capabilities::new(&module.raw.mechanism_list(slot.id()).map_err(|e| op.raw(e))?);
        let missing = caps.missing_required();
        if !missing.is_empty() {
            return Err(op.unsupported(format!("mechanisms the adapter needs: {}", missing.join(", "))));
        }
        let info = SlotInfo {
            module: config.module.clone(),
            library: module.library.clone(),
            slot: slot.id(),
            token_label: at.token.clone(),
            token: format!(
                "{} {} #{}",
                token.manufacturer_id().trim(),
                token.model().trim(),
                token.serial_number().trim()
            ),
            host_path_allowed: config.allow_host_key_material,
            capabilities: caps.describe(),
            vendor_mechanisms: caps.vendor_mechanisms(),
        };
        let hsm = Pkcs11Hsm {
            module,
            slot,
            info,
            caps,
            pin,
            allow_host: config.allow_host_key_material,
            transport_label: format!("{}-transport", config.label_prefix),
            smk_label: format!("{}-smk", config.label_prefix),
            next_label: format!("{}-smk-next", config.label_prefix),
            audit_label: format!("{}-audit-mac", config.label_prefix),
            observer,
            sessions: SessionPool::new(config.sessions, config.key_cache),
            token: Mutex::new(TokenCache::default()),
            ceremony: Mutex::new(()),
            transport_gen: Mutex::new(()),
            login_refused: Mutex::new(None),
            at,
        };
        hsm.with_session("open", |_, _| Ok(()))?;
        tracing::info!(slot = %hsm.at, native_xor = hsm.caps.native_components_xor(), "HSM slot opened");
        Ok(hsm)
    }

    /// Module, slot and token of this handle.
    pub fn slot_ref(&self) -> &Arc<SlotRef> {
        &self.at
    }

    /// This slot's description (as in [`Hsm::describe`]).
    pub fn info(&self) -> &SlotInfo {
        &self.info
    }

    /// A cheap call that only succeeds when the device answers (`C_GenerateRandom` of one byte).
    pub fn probe(&self) -> Result<(), HsmError> {
        self.with_session("probe", |s, op| op.ck(s.session.generate_random_vec(1)).map(drop))
    }

    /// Derive a TDES key inside the HSM as the 3DES-ECB encryption of `data` under the wrapped
    /// TDES key `base` (`CKM_DES3_ECB_ENCRYPT_DATA`, through the raw function list because
    /// `cryptoki` lacks it), and return it wrapped under the SMK. With `data = Y ‖ (Y ⊕ FF…FF)`
    /// this is an EMV ICC master key by Option A (EMV Book 2 A1.4.1; parity not adjusted, which the
    /// KCV ignores). `data` must be as long as the derived key (16 bytes for DES2, 24 for DES3).
    pub fn derive_des3_ecb_encrypt_data(
        &self,
        base: &WrappedKey,
        data: &[u8],
        derived: KeyAlg,
        key_use: KeyUse,
    ) -> Result<WrappedKey, HsmError> {
        self.with_session("derive_des3_ecb_encrypt_data", |s, op| {
            if !base.alg.is_tdes() || !derived.is_tdes() {
                return Err(op.misuse(format!("TDES keys only (base {}, derived {derived})", base.alg)));
            }
            if data.len() != derived.key_len() {
                return Err(op.misuse(format!("{} bytes of data for a {derived} key", data.len())));
            }
            if !self.caps.has(CKM_DES3_ECB_ENCRYPT_DATA) {
                return Err(op.unsupported("CKM_DES3_ECB_ENCRYPT_DATA"));
            }
            let smk = self.require_smk(&s.session, op)?;
            let hbase = self.unwrap_working(s, op, &smk, base, Role::Imk, Usage::Derive)?;
            let h = self
                .module
                .raw
                .des3_ecb_encrypt_data(&s.session, hbase, data, &templates::transient(derived))
                .map_err(|e| op.raw(e))?;
            let r = self.finish_block(s, op, &smk, h, derived, key_use);
            let _ = s.session.destroy_object(h);
            r
        })
    }

    // ---- sessions -----------------------------------------------------------------------------

    fn open_session(&self, op: Op<'_>) -> Result<Session, HsmError> {
        if let Some(e) = lock(&self.login_refused).clone() {
            return Err(e);
        }
        let s = op.ck(self.module.pkcs11.open_rw_session(self.slot))?;
        match s.login(UserType::User, Some(&AuthPin::new(self.pin.as_str().into()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
            Err(e) => {
                let err = op.err(e);
                if matches!(err.rv(), Some(RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired)) {
                    *lock(&self.login_refused) = Some(err.clone());
                }
                Err(err)
            }
        }
    }

    /// Run `f` with a session of the pool; on a session- or device-level error, close the session
    /// and forget cached token-object handles.
    fn with_session<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut SlotSession, Op<'_>) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let op = Op { name, at: &self.at };
        let mut lease = self.sessions.acquire(|| self.open_session(op))?;
        let r = f(&mut lease, op);
        if let Err(e) = &r {
            // Only errors the module itself returned count; data errors (CannotOpen, …) carrying
            // CKR_GENERAL_ERROR have already been told apart from device errors.
            let (session_level, device_level) = match e {
                HsmError::Unavailable { .. } => (true, true),
                HsmError::Module { rv, .. } => (is_session_rv(*rv), is_device_rv(*rv)),
                _ => (false, false),
            };
            if session_level {
                lease.mark_broken();
            }
            if device_level {
                drop(lease);
                self.sessions.invalidate();
                *lock(&self.token) = TokenCache::default();
                tracing::warn!(slot = %self.at, error = %e, "HSM slot: device-level error; sessions reset");
            }
        }
        r
    }

    // ---- token objects ------------------------------------------------------------------------

    fn find_one(
        &self,
        s: &Session,
        op: Op<'_>,
        template: &[Attribute],
        what: &str,
    ) -> Result<Option<ObjectHandle>, HsmError> {
        match op.ck(s.find_objects(template))?.as_slice() {
            [] => Ok(None),
            [h] => Ok(Some(*h)),
            many => Err(op.state(format!("{} objects are labelled as the {what}; expected one", many.len()))),
        }
    }

    fn read_public(&self, s: &Session, op: Op<'_>, h: ObjectHandle) -> Result<RsaPublic, HsmError> {
        let attrs = op.ck(s.get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent]))?;
        let (mut n, mut e) = (None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        match (n, e) {
            (Some(n), Some(e)) => Ok(RsaPublic::new(&n, &e)),
            _ => Err(op.state("the transport public key has no modulus or exponent")),
        }
    }

    fn find_transport(&self, s: &Session, op: Op<'_>) -> Result<Option<Transport>, HsmError> {
        let label = &self.transport_label;
        let Some(private) =
            self.find_one(s, op, &templates::find_transport(label, ObjectClass::PRIVATE_KEY), "transport private key")?
        else {
            return Ok(None);
        };
        let public = match self.find_one(
            s,
            op,
            &templates::find_transport(label, ObjectClass::PUBLIC_KEY),
            "transport public key",
        )? {
            Some(h) => self.read_public(s, op, h)?,
            // The private object carries the public attributes as well.
            None => self.read_public(s, op, private)?,
        };
        Ok(Some(Transport { private, public }))
    }

    /// The transport key pair, generated on first use.
    fn transport(&self, s: &Session, op: Op<'_>) -> Result<Transport, HsmError> {
        if let Some(t) = lock(&self.token).transport.clone() {
            return Ok(t);
        }
        let _generating = lock(&self.transport_gen);
        let t = match self.find_transport(s, op)? {
            Some(t) => t,
            None => {
                let (public, private) = templates::transport_pair(&self.transport_label);
                let (hpub, hpriv) = op.ck(s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private))?;
                let t = Transport { private: hpriv, public: self.read_public(s, op, hpub)? };
                tracing::info!(slot = %self.at, fingerprint = %t.public.fingerprint(), "transport key pair generated");
                t
            }
        };
        lock(&self.token).transport = Some(t.clone());
        Ok(t)
    }

    /// The node audit key (found by its label, generated on first use) and its KCV.
    fn node_audit_key(&self, s: &Session, op: Op<'_>) -> Result<(ObjectHandle, Kcv), HsmError> {
        if let Some(k) = lock(&self.token).audit.clone() {
            return Ok(k);
        }
        let _generating = lock(&self.transport_gen);
        let handle = match self.find_one(s, op, &templates::find_node_audit_key(&self.audit_label), "node audit key")? {
            Some(h) => h,
            None => {
                let h = op.ck(
                    s.generate_key(&Mechanism::GenericSecretKeyGen, &templates::node_audit_key(&self.audit_label))
                )?;
                tracing::info!(slot = %self.at, "node audit key generated");
                h
            }
        };
        let k = (handle, self.kcv_of(s, op, handle, KeyAlg::HmacSha256)?);
        lock(&self.token).audit = Some(k.clone());
        Ok(k)
    }

    /// The SMK, if the token holds one.
    fn smk(&self, s: &Session, op: Op<'_>) -> Result<Option<Smk>, HsmError> {
        if let Some(k) = lock(&self.token).smk.clone() {
            return Ok(Some(k));
        }
        let Some(handle) = self.find_one(s, op, &templates::find_smk(&self.smk_label), "SMK")? else {
            return Ok(None);
        };
        let smk = Smk { handle, kcv: self.kcv_of(s, op, handle, KeyAlg::Aes256)? };
        // Found with it (and cached), the next SMK of a rotation: blocks re-protected under it
        // open from the moment the cluster switches, before this token promotes it (`rotation.rs`).
        self.next_smk(s, op)?;
        lock(&self.token).smk = Some(smk.clone());
        Ok(Some(smk))
    }

    fn require_smk(&self, s: &Session, op: Op<'_>) -> Result<Smk, HsmError> {
        self.smk(s, op)?.ok_or_else(|| HsmError::NoSmk { operation: op.name, at: self.at.clone() })
    }

    /// The SMK a key under `key_smk` opens with: `smk` (the token's SMK) or, during a rotation,
    /// the next SMK when that is the one; otherwise [`HsmError::WrongSmk`].
    fn smk_of(&self, op: Op<'_>, smk: &Smk, key_smk: &Kcv) -> Result<Smk, HsmError> {
        if *key_smk == smk.kcv {
            return Ok(smk.clone());
        }
        if let Some(Some(next)) = lock(&self.token).next.clone()
            && next.kcv == *key_smk
        {
            return Ok(next);
        }
        Err(HsmError::WrongSmk {
            operation: op.name,
            key_smk: key_smk.clone(),
            hsm_smk: smk.kcv.clone(),
            at: self.at.clone(),
        })
    }

    // ---- building blocks ----------------------------------------------------------------------

    /// KCV of a key handle, computed inside the HSM (see [`Kcv`]).
    fn kcv_of(&self, s: &Session, op: Op<'_>, h: ObjectHandle, alg: KeyAlg) -> Result<Kcv, HsmError> {
        let full = match alg {
            KeyAlg::Des2 | KeyAlg::Des3 => op.ck(s.encrypt(&Mechanism::Des3Ecb, h, &[0u8; 8]))?,
            KeyAlg::Aes128 | KeyAlg::Aes192 | KeyAlg::Aes256 => op.ck(s.sign(&Mechanism::AesCMac, h, &[0u8; 16]))?,
            KeyAlg::HmacSha256 => op.ck(s.sign(&Mechanism::Sha256Hmac, h, &[0u8; 32]))?,
        };
        let n = alg.kcv_len();
        if full.len() < n {
            return Err(op.state(format!("KCV computation returned {} bytes", full.len())));
        }
        Ok(Kcv::from_bytes(&full[..n]))
    }

    /// [`HsmError::WrongSmk`] unless `key` is wrapped under this token's SMK.
    fn check_smk(&self, op: Op<'_>, smk: &Smk, key: &WrappedKey) -> Result<(), HsmError> {
        self.check_smk_kcv(op, smk, &key.smk_kcv)
    }

    /// [`HsmError::WrongSmk`] unless `key_smk` is the KCV of this token's SMK (or of the next
    /// one, during a rotation: [`Pkcs11Hsm::smk_of`]).
    fn check_smk_kcv(&self, op: Op<'_>, smk: &Smk, key_smk: &Kcv) -> Result<(), HsmError> {
        self.smk_of(op, smk, key_smk).map(drop)
    }

    /// `CKA_VALUE` of a readable key (host path only), in zeroized memory.
    fn read_value(&self, s: &Session, op: Op<'_>, h: ObjectHandle, what: &str) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        op.ck(s.get_attributes(h, &[AttributeType::Value]))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(Zeroizing::new(v)),
                _ => None,
            })
            .ok_or_else(|| op.state(format!("{what}: CKA_VALUE not readable")))
    }

    /// `C_CreateObject` of a secret key with `template` and `value` (host path only); the copy of
    /// the value in the template is zeroized.
    fn create_secret(
        &self,
        s: &Session,
        op: Op<'_>,
        template: &[Attribute],
        value: &[u8],
    ) -> Result<ObjectHandle, HsmError> {
        let mut t = template.to_vec();
        t.push(Attribute::Value(value.to_vec()));
        let r = s.create_object(&t);
        for a in &mut t {
            if let Attribute::Value(v) = a {
                v.zeroize();
            }
        }
        op.ck(r)
    }

    /// Unwrap component `index` with the transport private key and check its KCV.
    #[allow(clippy::too_many_arguments)]
    fn open_component(
        &self,
        s: &Session,
        op: Op<'_>,
        transport: &Transport,
        alg: KeyAlg,
        index: usize,
        component: &SealedComponent,
        expected: &Kcv,
        host_path: bool,
        tmp: &mut Temporaries<'_>,
    ) -> Result<ObjectHandle, HsmError> {
        let h = s
            .unwrap_key(&templates::oaep(), transport.private, &component.0, &templates::component(alg, host_path))
            .map_err(|e| match e {
                CkError::Pkcs11(rv, f) if self.is_data_error(s, &e) => {
                    self.cannot_open(op, format!("component {index}"), rv, f)
                }
                other => op.err(other),
            })?;
        tmp.add(h);
        if !alg.is_tdes() {
            // CKA_VALUE_LEN; SoftHSM 2.6 reports 0 for unwrapped keys (the host path then checks
            // the value's length itself).
            let len = op.ck(s.get_attributes(h, &[AttributeType::ValueLen]))?.into_iter().find_map(|a| match a {
                Attribute::ValueLen(l) => Some(u64::from(l)),
                _ => None,
            });
            if let Some(len) = len.filter(|l| *l != 0)
                && len != alg.key_len() as u64
            {
                return Err(op.misuse(format!("component {index} is {len} bytes; {alg} needs {}", alg.key_len())));
            }
        }
        let actual = self.kcv_of(s, op, h, alg)?;
        if &actual != expected {
            return Err(HsmError::ComponentKcv {
                operation: op.name,
                index,
                expected: expected.clone(),
                actual,
                at: self.at.clone(),
            });
        }
        Ok(h)
    }

    /// Form a key from sealed components with `template`: inside the HSM with the vendor XOR
    /// mechanism, or on the host path (refused unless allowed). The returned handle is the
    /// caller's (not in `tmp`).
    fn combine(
        &self,
        s: &Session,
        op: Op<'_>,
        alg: KeyAlg,
        components: &[SealedComponent],
        expected: &[Kcv],
        template: &[Attribute],
    ) -> Result<ObjectHandle, HsmError> {
        if components.len() != expected.len() {
            return Err(op.misuse(format!("{} components but {} KCVs", components.len(), expected.len())));
        }
        if components.len() < 2 || components.len() > 16 {
            return Err(op.misuse(format!("{} components: between 2 and 16 needed", components.len())));
        }
        let native = self.caps.native_components_xor();
        if !native && !self.allow_host {
            return Err(HsmError::HostPathRefused {
                operation: op.name,
                module: self.at.module.clone(),
                missing: "a key-component XOR mechanism (CKM_QUILL_KEY_COMPONENTS_XOR)",
            });
        }
        let transport = self.transport(s, op)?;
        let mut tmp = Temporaries::new(s);
        if native {
            let mut handles = Vec::with_capacity(components.len());
            for (i, (c, k)) in components.iter().zip(expected).enumerate() {
                handles.push(self.open_component(s, op, &transport, alg, i, c, k, false, &mut tmp)?);
            }
            // CK_QUILL_XOR_PARAMS: ULONG count of further components, then their handles.
            let mut param = Vec::with_capacity(8 * handles.len());
            param.extend_from_slice(&((handles.len() - 1) as CK_ULONG).to_ne_bytes());
            for h in &handles[1..] {
                param.extend_from_slice(&h.handle().to_ne_bytes());
            }
            self.module
                .raw
                .derive_key(s, vendor::CKM_QUILL_KEY_COMPONENTS_XOR, RawParam::Bytes(&param), handles[0], template)
                .map_err(|e| op.raw(e))
        } else {
            self.observer.host_path_used(&HostPathUse {
                operation: op.name,
                what: format!(
                    "XOR of {} key components in host memory: the module lacks {}",
                    components.len(),
                    mechanism_name(vendor::CKM_QUILL_KEY_COMPONENTS_XOR)
                ),
                alg: alg.to_string(),
                module: self.info.module.clone(),
                slot: self.info.slot,
                token_label: self.info.token_label.clone(),
            });
            let mut acc = Zeroizing::new(vec![0u8; alg.key_len()]);
            for (i, (c, k)) in components.iter().zip(expected).enumerate() {
                let h = self.open_component(s, op, &transport, alg, i, c, k, true, &mut tmp)?;
                let value = self.read_value(s, op, h, &format!("component {i}"))?;
                if value.len() != acc.len() {
                    return Err(op.misuse(format!(
                        "component {i} is {} bytes; {alg} needs {}",
                        value.len(),
                        acc.len()
                    )));
                }
                for (a, v) in acc.iter_mut().zip(value.iter()) {
                    *a ^= v;
                }
            }
            if alg.is_tdes() {
                set_odd_parity(&mut acc);
            }
            self.create_secret(s, op, template, &acc)
        }
    }

    /// Store or compare an SMK candidate `h` (formed or unwrapped with [`templates::smk`], as a
    /// token object when `existing` is `None`, else as a session object).
    fn settle_smk(
        &self,
        s: &Session,
        op: Op<'_>,
        h: ObjectHandle,
        existing: Option<Smk>,
        expected: Option<&Kcv>,
    ) -> Result<Kcv, HsmError> {
        let mut tmp = Temporaries::new(s);
        tmp.add(h);
        let kcv = self.kcv_of(s, op, h, KeyAlg::Aes256)?;
        if let Some(expected) = expected
            && &kcv != expected
        {
            return Err(HsmError::KcvMismatch {
                operation: op.name,
                expected: expected.clone(),
                actual: kcv,
                at: self.at.clone(),
            });
        }
        match existing {
            Some(present) if present.kcv == kcv => Ok(kcv),
            Some(present) => Err(HsmError::SmkConflict {
                operation: op.name,
                present: present.kcv,
                offered: kcv,
                at: self.at.clone(),
            }),
            None => {
                tmp.keep(h);
                lock(&self.token).smk = Some(Smk { handle: h, kcv: kcv.clone() });
                tracing::info!(slot = %self.at, smk_kcv = %kcv, "storage master key stored");
                Ok(kcv)
            }
        }
    }

    /// Whether a failed call on `s` was about its input data rather than the device. Modules
    /// answer bad ciphertext in different ways: hsm-sim with `CKR_ENCRYPTED_DATA_INVALID` or
    /// `CKR_WRAPPED_KEY_INVALID`, SoftHSM 2.6 with `CKR_GENERAL_ERROR` (failed OAEP decoding, RFC
    /// 5649 integrity check or GCM tag). `CKR_GENERAL_ERROR`/`CKR_FUNCTION_FAILED` are therefore
    /// settled by a probe on the same session: if the device answers, the data was at fault.
    fn is_data_error(&self, s: &Session, e: &CkError) -> bool {
        match e {
            CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _) => s.generate_random_vec(1).is_ok(),
            CkError::Pkcs11(rv, _) => !is_device_rv(*rv),
            _ => false,
        }
    }

    fn cannot_open(&self, op: Op<'_>, what: String, rv: RvError, f: cryptoki::context::Function) -> HsmError {
        HsmError::CannotOpen { operation: op.name, what, function: format!("C_{f:?}"), rv, at: self.at.clone() }
    }

    /// Token key `h` (an SMK) wrapped with RSA-OAEP to another node's (or pool member's)
    /// transport public key.
    fn wrap_for(&self, s: &Session, op: Op<'_>, peer: &RsaPublic, h: ObjectHandle) -> Result<Vec<u8>, HsmError> {
        if peer.bits() < templates::TRANSPORT_BITS as usize {
            return Err(op.misuse(format!("peer transport key has {} bits; at least 2048 needed", peer.bits())));
        }
        let mut tmp = Temporaries::new(s);
        let hpub = tmp.add(op.ck(s.create_object(&templates::peer_public(peer)))?);
        op.ck(s.wrap_key(&templates::oaep(), hpub, h))
    }

    /// Give the next SMK to another member of the pool (see [`Pkcs11Hsm::install_next_smk`]).
    pub(crate) fn wrap_next_smk_for(&self, peer: &RsaPublic) -> Result<Vec<u8>, HsmError> {
        self.with_session("wrap_next_smk_for", |s, op| self.wrap_next_for(s, op, peer))
    }

    /// Receive the next SMK from [`Pkcs11Hsm::wrap_next_smk_for`] of another pool member.
    pub(crate) fn install_next_smk(&self, sealed: &[u8], expected: &Kcv) -> Result<(), HsmError> {
        self.with_session("install_next_smk", |s, op| self.install_next_in(s, op, sealed, expected))
    }

    /// An unwrapped AES or HMAC key is as long as `alg` says (TDES lengths are in the key type).
    /// SoftHSM 2.6 reports `CKA_VALUE_LEN` 0 for unwrapped keys: nothing to check there.
    fn check_value_len(&self, s: &Session, op: Op<'_>, h: ObjectHandle, alg: KeyAlg) -> Result<(), HsmError> {
        if alg.is_tdes() {
            return Ok(());
        }
        let len = op.ck(s.get_attributes(h, &[AttributeType::ValueLen]))?.into_iter().find_map(|a| match a {
            Attribute::ValueLen(l) => Some(u64::from(l)),
            _ => None,
        });
        match len.filter(|l| *l != 0) {
            Some(len) if len != alg.key_len() as u64 => {
                Err(op.misuse(format!("the key that arrived is {len} bytes; {alg} needs {}", alg.key_len())))
            }
            _ => Ok(()),
        }
    }

    fn require_alg(op: Op<'_>, key: &WrappedKey, ok: bool, want: &str) -> Result<(), HsmError> {
        if ok { Ok(()) } else { Err(op.misuse(format!("needs {want}, got a {} key", key.alg))) }
    }
}

impl Hsm for Pkcs11Hsm {
    fn describe(&self) -> HsmInfo {
        HsmInfo { slots: vec![self.info.clone()] }
    }

    fn transport_public_key(&self) -> Result<RsaPublic, HsmError> {
        self.with_session("transport_public_key", |s, op| Ok(self.transport(&s.session, op)?.public))
    }

    fn form_smk(&self, components: &[SealedComponent], expected: &[Kcv]) -> Result<Kcv, HsmError> {
        self.with_session("form_smk", |s, op| {
            let _ceremony = lock(&self.ceremony);
            let existing = self.smk(&s.session, op)?;
            let template = templates::smk(&self.smk_label, existing.is_none());
            let h = self.combine(&s.session, op, KeyAlg::Aes256, components, expected, &template)?;
            self.settle_smk(&s.session, op, h, existing, None)
        })
    }

    fn smk_kcv(&self) -> Result<Option<Kcv>, HsmError> {
        self.with_session("smk_kcv", |s, op| Ok(self.smk(&s.session, op)?.map(|k| k.kcv)))
    }

    fn wrap_smk_for(&self, peer: &RsaPublic) -> Result<Vec<u8>, HsmError> {
        self.with_session("wrap_smk_for", |s, op| {
            let smk = self.require_smk(&s.session, op)?;
            let sealed = self.wrap_for(&s.session, op, peer, smk.handle)?;
            tracing::info!(slot = %self.at, peer = %peer.fingerprint(), smk_kcv = %smk.kcv, "SMK wrapped to a peer transport key");
            Ok(sealed)
        })
    }

    fn install_smk(&self, sealed: &[u8], expected: &Kcv) -> Result<(), HsmError> {
        self.with_session("install_smk", |s, op| {
            let _ceremony = lock(&self.ceremony);
            let existing = self.smk(&s.session, op)?;
            let transport = self.transport(&s.session, op)?;
            let template = templates::smk(&self.smk_label, existing.is_none());
            let h = s.session.unwrap_key(&templates::oaep(), transport.private, sealed, &template).map_err(
                |e| match e {
                    CkError::Pkcs11(rv, f) if self.is_data_error(&s.session, &e) => {
                        self.cannot_open(op, "the sealed SMK".to_owned(), rv, f)
                    }
                    other => op.err(other),
                },
            )?;
            self.settle_smk(&s.session, op, h, existing, Some(expected)).map(drop)
        })
    }

    fn next_smk_kcv(&self) -> Result<Option<Kcv>, HsmError> {
        self.with_session("next_smk_kcv", |s, op| Ok(self.next_smk(&s.session, op)?.map(|k| k.kcv)))
    }

    fn form_next_smk(&self, components: &[SealedComponent], expected: &[Kcv]) -> Result<Kcv, HsmError> {
        self.with_session("form_next_smk", |s, op| self.form_next_smk_in(s, op, components, expected))
    }

    fn translate_to_next(&self, key: &WrappedKey) -> Result<WrappedKey, HsmError> {
        self.with_session("translate_to_next", |s, op| self.translate_in(s, op, key))
    }

    fn rewrap_rsa_to_next(&self, key: &WrappedRsaKey) -> Result<WrappedRsaKey, HsmError> {
        self.with_session("rewrap_rsa_to_next", |s, op| self.rewrap_rsa_in(s, op, key))
    }

    fn promote_next_smk(&self, expected: &Kcv) -> Result<(), HsmError> {
        self.with_session("promote_next_smk", |s, op| self.promote_in(s, op, expected))
    }

    fn generate_key(&self, alg: KeyAlg, key_use: KeyUse) -> Result<WrappedKey, HsmError> {
        self.with_session("generate_key", |s, op| {
            let smk = self.require_smk(&s.session, op)?;
            let (mech, template) = templates::generate(alg);
            let h = op.ck(s.session.generate_key(&mech, &template))?;
            let r = self.finish_block(s, op, &smk, h, alg, key_use);
            let _ = s.session.destroy_object(h);
            r
        })
    }

    fn import_components(
        &self,
        alg: KeyAlg,
        key_use: KeyUse,
        components: &[SealedComponent],
        expected: &[Kcv],
    ) -> Result<WrappedKey, HsmError> {
        self.with_session("import_components", |s, op| {
            let smk = self.require_smk(&s.session, op)?;
            let h = self.combine(&s.session, op, alg, components, expected, &templates::transient(alg))?;
            let r = self.finish_block(s, op, &smk, h, alg, key_use);
            let _ = s.session.destroy_object(h);
            r
        })
    }

    fn generate_for_transport(
        &self,
        alg: KeyAlg,
        key_use: KeyUse,
        peer: &RsaPublic,
    ) -> Result<(WrappedKey, Vec<u8>), HsmError> {
        self.with_session("generate_for_transport", |s, op| {
            let smk = self.require_smk(&s.session, op)?;
            let (mech, template) = templates::generate(alg);
            let h = op.ck(s.session.generate_key(&mech, &template))?;
            let r = self.wrap_for(&s.session, op, peer, h).and_then(|sealed| {
                let block = self.finish_block(s, op, &smk, h, alg, key_use.clone())?;
                tracing::info!(slot = %self.at, peer = %peer.fingerprint(), kcv = %block.kcv, "key generated for a peer transport key");
                Ok((block, sealed))
            });
            let _ = s.session.destroy_object(h);
            r
        })
    }

    fn receive_transported(&self, alg: KeyAlg, key_use: KeyUse, sealed: &[u8]) -> Result<WrappedKey, HsmError> {
        self.with_session("receive_transported", |s, op| {
            let smk = self.require_smk(&s.session, op)?;
            let transport = self.transport(&s.session, op)?;
            let h = s
                .session
                .unwrap_key(&templates::oaep(), transport.private, sealed, &templates::transient(alg))
                .map_err(|e| match e {
                    CkError::Pkcs11(rv, f) if self.is_data_error(&s.session, &e) => {
                        self.cannot_open(op, "the transported key".to_owned(), rv, f)
                    }
                    other => op.err(other),
                })?;
            let r = self
                .check_value_len(&s.session, op, h, alg)
                .and_then(|()| self.finish_block(s, op, &smk, h, alg, key_use));
            let _ = s.session.destroy_object(h);
            r
        })
    }

    fn kcv(&self, key: &WrappedKey) -> Result<Kcv, HsmError> {
        self.with_session("kcv", |s, op| self.kcv_in(s, op, key))
    }

    fn hmac_sha256(&self, key: &WrappedKey, data: &[u8]) -> Result<[u8; 32], HsmError> {
        self.with_session("hmac_sha256", |s, op| {
            Self::require_alg(op, key, key.alg == KeyAlg::HmacSha256, "an HMAC_SHA256 key")?;
            let smk = self.require_smk(&s.session, op)?;
            let h = self.unwrap_working(s, op, &smk, key, Role::Hmac, Usage::Mac)?;
            let mac = op.ck(s.session.sign(&Mechanism::Sha256Hmac, h, data))?;
            mac.as_slice().try_into().map_err(|_| op.state(format!("HMAC-SHA-256 returned {} bytes", mac.len())))
        })
    }

    fn node_audit_mac(&self, data: &[u8]) -> Result<(Kcv, [u8; 32]), HsmError> {
        self.with_session("node_audit_mac", |s, op| {
            let (h, kcv) = self.node_audit_key(&s.session, op)?;
            let mac = op.ck(s.session.sign(&Mechanism::Sha256Hmac, h, data))?;
            let mac = mac
                .as_slice()
                .try_into()
                .map_err(|_| op.state(format!("HMAC-SHA-256 returned {} bytes", mac.len())))?;
            Ok((kcv, mac))
        })
    }

    fn node_audit_verify(&self, kcv: &Kcv, data: &[u8], mac: &[u8; 32]) -> Result<Option<bool>, HsmError> {
        self.with_session("node_audit_verify", |s, op| {
            let (h, own) = self.node_audit_key(&s.session, op)?;
            if own != *kcv {
                return Ok(None);
            }
            match s.session.verify(&Mechanism::Sha256Hmac, h, data, mac) {
                Ok(()) => Ok(Some(true)),
                Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::SignatureInvalid, _)) => Ok(Some(false)),
                Err(e) => Err(op.err(e)),
            }
        })
    }

    fn seal(&self, key: &WrappedKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.with_session("seal", |s, op| {
            Self::require_alg(op, key, key.alg.is_aes(), "an AES key")?;
            let smk = self.require_smk(&s.session, op)?;
            let h = self.unwrap_working(s, op, &smk, key, Role::Data, Usage::Aead)?;
            let mut iv = [0u8; GCM_IV_LEN];
            op.ck(s.session.generate_random_slice(&mut iv))?;
            let mut iv_param = iv;
            let params = op.ck(GcmParams::new(&mut iv_param, aad, Ulong::from(8 * GCM_TAG_LEN as u64)))?;
            let ct = op.ck(s.session.encrypt(&Mechanism::AesGcm(params), h, plaintext))?;
            let mut out = Vec::with_capacity(GCM_IV_LEN + ct.len());
            out.extend_from_slice(&iv);
            out.extend_from_slice(&ct);
            Ok(out)
        })
    }

    fn open(&self, key: &WrappedKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.with_session("open", |s, op| {
            Self::require_alg(op, key, key.alg.is_aes(), "an AES key")?;
            let smk = self.require_smk(&s.session, op)?;
            let auth_failed = || HsmError::AuthenticationFailed { operation: op.name, at: self.at.clone() };
            if sealed.len() < GCM_IV_LEN + GCM_TAG_LEN {
                return Err(auth_failed());
            }
            let h = self.unwrap_working(s, op, &smk, key, Role::Data, Usage::Aead)?;
            let (iv, ct) = sealed.split_at(GCM_IV_LEN);
            let mut iv = <[u8; GCM_IV_LEN]>::try_from(iv).map_err(|_| auth_failed())?;
            let params = op.ck(GcmParams::new(&mut iv, aad, Ulong::from(8 * GCM_TAG_LEN as u64)))?;
            match s.session.decrypt(&Mechanism::AesGcm(params), h, ct) {
                Ok(pt) => Ok(Zeroizing::new(pt)),
                Err(e) if self.is_data_error(&s.session, &e) => Err(auth_failed()),
                Err(e) => Err(op.err(e)),
            }
        })
    }

    fn tr31_import(&self, kbpk: &WrappedKey, block: &str) -> Result<(Tr31Header, WrappedKey), HsmError> {
        self.with_session("tr31_import", |s, op| self.tr31_import_in(s, op, kbpk, block))
    }

    fn tr31_export(
        &self,
        kbpk: &WrappedKey,
        key: &WrappedKey,
        usage: &str,
        exportable: bool,
    ) -> Result<String, HsmError> {
        self.with_session("tr31_export", |s, op| self.tr31_export_in(s, op, kbpk, key, usage, exportable))
    }

    fn derive_icc_master_key(
        &self,
        imk: &WrappedKey,
        pan: &str,
        psn: &str,
        transport: &WrappedKey,
    ) -> Result<DerivedKey, HsmError> {
        self.with_session("derive_icc_master_key", |s, op| self.derive_icc_mk_in(s, op, imk, pan, psn, transport))
    }

    fn cvv(&self, cvk: &WrappedKey, pan: &str, expiry_yymm: &str, service_code: &str) -> Result<String, HsmError> {
        self.with_session("cvv", |s, op| self.cvv_in(s, op, cvk, pan, expiry_yymm, service_code))
    }

    fn generate_pin(&self, request: &PinRequest) -> Result<GeneratedPin, HsmError> {
        self.with_session("generate_pin", |s, op| self.generate_pin_in(s, op, request))
    }

    fn translate_pin_block(
        &self,
        from_key: &WrappedKey,
        from_format: u8,
        to_key: &WrappedKey,
        to_format: u8,
        pan: &str,
        block: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        self.with_session("translate_pin_block", |s, op| {
            self.translate_pin_in(s, op, from_key, from_format, to_key, to_format, pan, block)
        })
    }

    fn generate_icc_rsa_key(
        &self,
        bits: u32,
        exponent: u32,
        transport: &WrappedKey,
        padding: CrtPadding,
    ) -> Result<IccKeyPair, HsmError> {
        self.with_session("generate_icc_rsa_key", |s, op| self.icc_rsa_in(s, op, bits, exponent, transport, padding))
    }

    fn generate_rsa_key_pair(&self, bits: u32, exponent: u32, owner: Option<&str>) -> Result<WrappedRsaKey, HsmError> {
        self.with_session("generate_rsa_key_pair", |s, op| {
            if !(512..=4096).contains(&bits) || !bits.is_multiple_of(8) {
                return Err(op.misuse(format!("RSA keys have 512 to 4096 bits in steps of 8, not {bits}")));
            }
            if exponent < 3 || exponent.is_multiple_of(2) {
                return Err(op.misuse(format!("the public exponent must be odd and at least 3, not {exponent}")));
            }
            let smk = self.require_smk(&s.session, op)?;
            let e: Vec<u8> = exponent.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            let (pub_t, priv_t) = templates::signing_pair(bits, &e);
            let (hpub, hpriv) = op.ck(s.session.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &pub_t, &priv_t))?;
            let blob = self
                .read_public(&s.session, op, hpub)
                .and_then(|public| Ok((self.make_rsa_block(s, op, &smk, hpriv, &public, owner)?, public)));
            let _ = s.session.destroy_object(hpub);
            let _ = s.session.destroy_object(hpriv);
            let (blob, public) = blob?;
            Ok(WrappedRsaKey { public, blob, smk_kcv: smk.kcv.clone() })
        })
    }

    fn rsa_sign_raw(&self, key: &WrappedRsaKey, block: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.with_session("rsa_sign_raw", |s, op| {
            let n = strip_leading_zeros(&key.public.modulus);
            if block.len() != n.len() || block > n {
                return Err(op.misuse(format!(
                    "a raw RSA block must be {} bytes and below the modulus, got {} bytes",
                    n.len(),
                    block.len()
                )));
            }
            let smk = self.require_smk(&s.session, op)?;
            self.check_smk_kcv(op, &smk, &key.smk_kcv)?;
            // The cache key covers the public key too: a record pairing a cached block with
            // another public key misses it, and `open_rsa_block` refuses it.
            let digest = key.digest();
            let h = match s.cache.get(&digest, Usage::Sign) {
                Some(h) => h,
                None => {
                    let h = self.open_rsa_block(s, op, &smk, key, &templates::signing_private())?;
                    s.cache.insert(&s.session, digest, Usage::Sign, h);
                    h
                }
            };
            let sig = op.ck(s.session.sign(&Mechanism::RsaX509, h, block))?;
            // Some modules strip leading zeros of the result; EMV wants the full length.
            let mut out = vec![0u8; n.len().saturating_sub(sig.len())];
            out.extend_from_slice(&sig);
            Ok(out)
        })
    }
}

fn strip_leading_zeros(v: &[u8]) -> &[u8] {
    let i = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    &v[i..]
}

//! The module: slots, sessions and every PKCS#11 function as a safe Rust method.
//!
//! The C entry points in [`crate::ffi`] copy arguments out of C memory, call one method here and
//! copy results back. Nothing here touches raw pointers.

use crate::attr::{AttrMap, Attribute, template_to_map};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fault::FaultInjector;
use crate::mechanism::{self, *};
use crate::object::{self, AttrRead, Material, NewObject, Object, Origin};
use crate::ops::{self, Kind, Operation, secret_of};
use crate::token::{Login, Token};
use cryptoki_sys::*;
use quill_crypto::{payment, sym};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use zeroize::Zeroizing;

mod derive;

/// Output of a function following the PKCS#11 length convention.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// The caller asked for the length only (null output pointer).
    Len(usize),
    /// The caller's buffer is too small; this many bytes are needed.
    TooSmall(usize),
    /// The output.
    Data(Vec<u8>),
}

/// A session.
pub struct Session {
    /// Handle.
    pub handle: CK_SESSION_HANDLE,
    /// Slot.
    pub slot: CK_SLOT_ID,
    /// Read/write?
    pub rw: bool,
    ops: HashMap<Kind, ActiveOp>,
    find: Option<(Vec<CK_OBJECT_HANDLE>, usize)>,
}

/// An active operation of a session.
pub struct ActiveOp {
    op: Operation,
    /// An `*Update` (or `C_DigestKey`, or a `*Final`) has run: one-shot calls are refused.
    multipart: bool,
    /// Output computed for a length query or a short buffer.
    pending: Option<Pending>,
}

/// Output computed for a length query or a short buffer, handed out by the next call.
enum Pending {
    /// A one-shot call's output, valid only for the same input.
    Single { input: Zeroizing<Vec<u8>>, out: Zeroizing<Vec<u8>> },
    /// A `*Final` output.
    Final(Zeroizing<Vec<u8>>),
}

/// An object lookup that failed on the handle becomes `CKR_KEY_HANDLE_INVALID`; other errors
/// (an invalid session, above all) keep their code.
fn key_handle_invalid(e: Error) -> Error {
    if e.rv == CKR_OBJECT_HANDLE_INVALID { Error::new(CKR_KEY_HANDLE_INVALID, e.reason) } else { e }
}

/// Library information for `C_GetInfo`.
pub const MANUFACTURER: &str = "Quill";
/// Library description.
pub const LIBRARY_DESCRIPTION: &str = "Quill HSM simulator";
/// Token model.
pub const MODEL: &str = "quill-hsm-sim";

/// The loaded module.
pub struct Module {
    cfg: Arc<Config>,
    tokens: Vec<Arc<Token>>,
    sessions: RwLock<HashMap<CK_SESSION_HANDLE, Arc<Mutex<Session>>>>,
    session_objects: RwLock<HashMap<CK_OBJECT_HANDLE, Arc<Object>>>,
    handles: AtomicU64,
    next_session: AtomicU64,
    /// Fault injection.
    pub faults: FaultInjector,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Token information (pieces of `CK_TOKEN_INFO`).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Label.
    pub label: String,
    /// Serial.
    pub serial: String,
    /// Flags.
    pub flags: CK_FLAGS,
    /// Open sessions.
    pub sessions: usize,
    /// Open read/write sessions.
    pub rw_sessions: usize,
}

impl Module {
    /// Load every slot of a configuration.
    pub fn new(cfg: Config) -> Result<Self> {
        let cfg = Arc::new(cfg);
        std::fs::create_dir_all(&cfg.token_dir)
            .map_err(|e| Error::general(format!("token directory {}: {e}", cfg.token_dir.display())))?;
        let handles = AtomicU64::new(1);
        let mut tokens = Vec::new();
        for s in &cfg.slots {
            let desc = s.description.clone().unwrap_or_else(|| format!("Quill HSM simulator slot {}", s.id));
            tokens.push(Arc::new(Token::open(cfg.clone(), s.id, desc, &handles)?));
        }
        Ok(Module {
            faults: FaultInjector::new(cfg.fault_file.clone()),
            cfg,
            tokens,
            sessions: RwLock::new(HashMap::new()),
            session_objects: RwLock::new(HashMap::new()),
            handles,
            next_session: AtomicU64::new(1),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Slot ids (all slots hold a token, initialised or not).
    pub fn slot_list(&self) -> Vec<CK_SLOT_ID> {
        self.tokens.iter().map(|t| t.slot).collect()
    }

    /// The token of a slot.
    pub fn token(&self, slot: CK_SLOT_ID) -> Result<&Arc<Token>> {
        self.tokens
            .iter()
            .find(|t| t.slot == slot)
            .ok_or_else(|| Error::new(CKR_SLOT_ID_INVALID, format!("no slot {slot}")))
    }

    /// Slot description.
    pub fn slot_description(&self, slot: CK_SLOT_ID) -> Result<String> {
        Ok(self.token(slot)?.description.clone())
    }

    fn count_sessions(&self, slot: CK_SLOT_ID) -> (usize, usize) {
        let ss = self.sessions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut n = 0;
        let mut rw = 0;
        for s in ss.values() {
            let s = lock(s);
            if s.slot == slot {
                n += 1;
                if s.rw {
                    rw += 1;
                }
            }
        }
        (n, rw)
    }

    /// `C_GetTokenInfo`.
    pub fn token_info(&self, slot: CK_SLOT_ID) -> Result<TokenInfo> {
        let t = self.token(slot)?;
        let (sessions, rw_sessions) = self.count_sessions(slot);
        let st = t.read();
        let mut flags = CKF_RNG | CKF_LOGIN_REQUIRED;
        let (label, serial) = match &st.record {
            Some(r) => {
                flags |= CKF_TOKEN_INITIALIZED;
                if r.user.is_some() {
                    flags |= CKF_USER_PIN_INITIALIZED;
                }
                let max = self.cfg.max_pin_tries;
                let pin_flags = |n: u32, low, last, locked| {
                    if n >= max {
                        locked
                    } else if n + 1 == max {
                        low | last
                    } else if n > 0 {
                        low
                    } else {
                        0
                    }
                };
                flags |=
                    pin_flags(r.user_failures, CKF_USER_PIN_COUNT_LOW, CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED);
                flags |= pin_flags(r.so_failures, CKF_SO_PIN_COUNT_LOW, CKF_SO_PIN_FINAL_TRY, CKF_SO_PIN_LOCKED);
                (r.label.clone(), r.serial.clone())
            }
            None => (String::new(), String::new()),
        };
        Ok(TokenInfo { label, serial, flags, sessions, rw_sessions })
    }

    /// `C_GetMechanismList` (without `CKM_QUILL_TR31_TRANSLATE` where the token leaves it off).
    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>> {
        self.token(slot)?;
        let translate = self.kbpk_translate(slot);
        Ok(MECHANISMS.iter().map(|m| m.mech).filter(|m| translate || *m != CKM_QUILL_TR31_TRANSLATE).collect())
    }

    /// Whether the token of `slot` offers `CKM_QUILL_TR31_TRANSLATE` (`kbpk_translate`).
    pub fn kbpk_translate(&self, slot: CK_SLOT_ID) -> bool {
        self.cfg.slots.iter().find(|s| s.id == slot).is_some_and(|s| s.kbpk_translate)
    }

    /// `C_GetMechanismInfo`.
    pub fn mechanism_info(&self, slot: CK_SLOT_ID, mech: CK_MECHANISM_TYPE) -> Result<MechInfo> {
        self.token(slot)?;
        if mech == CKM_QUILL_TR31_TRANSLATE && !self.kbpk_translate(slot) {
            return Err(translate_off(slot));
        }
        // The simulated device performs every mechanism itself (pkcs11-tool --test looks for CKF_HW).
        mechanism::info(mech).map(|i| MechInfo { flags: i.flags | CKF_HW, ..*i })
    }

    /// `C_InitToken`.
    pub fn init_token(&self, slot: CK_SLOT_ID, so_pin: &[u8], label: &str) -> Result<()> {
        let t = self.token(slot)?;
        if self.count_sessions(slot).0 > 0 {
            return Err(Error::new(CKR_SESSION_EXISTS, "close every session before C_InitToken"));
        }
        t.init_token(so_pin, label)
    }

    /// `C_OpenSession`.
    pub fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        let t = self.token(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::new(CKR_SESSION_PARALLEL_NOT_SUPPORTED, "CKF_SERIAL_SESSION must be set"));
        }
        if !t.initialized() {
            return Err(Error::new(CKR_TOKEN_NOT_RECOGNIZED, format!("token in slot {slot} is not initialised")));
        }
        let rw = flags & CKF_RW_SESSION != 0;
        if !rw && t.read().login == Login::So {
            return Err(Error::new(CKR_SESSION_READ_WRITE_SO_EXISTS, "the SO is logged in: only read/write sessions"));
        }
        let h = self.next_session.fetch_add(1, Ordering::SeqCst);
        let s = Session { handle: h, slot, rw, ops: HashMap::new(), find: None };
        self.sessions.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(h, Arc::new(Mutex::new(s)));
        Ok(h)
    }

    fn session(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Mutex<Session>>> {
        self.sessions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&h)
            .cloned()
            .ok_or_else(|| Error::new(CKR_SESSION_HANDLE_INVALID, format!("no session {h}")))
    }

    fn slot_of(&self, h: CK_SESSION_HANDLE) -> Result<(CK_SLOT_ID, bool)> {
        let s = self.session(h)?;
        let s = lock(&s);
        Ok((s.slot, s.rw))
    }

    /// `C_CloseSession`.
    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        let s = self
            .sessions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&h)
            .ok_or_else(|| Error::new(CKR_SESSION_HANDLE_INVALID, format!("no session {h}")))?;
        let slot = lock(&s).slot;
        self.session_objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, o| o.owner != Some(h));
        if self.count_sessions(slot).0 == 0 {
            let t = self.token(slot)?;
            let _ = t.logout();
        }
        Ok(())
    }

    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> Result<()> {
        self.token(slot)?;
        let hs: Vec<CK_SESSION_HANDLE> = {
            let ss = self.sessions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            ss.iter().filter(|(_, s)| lock(s).slot == slot).map(|(h, _)| *h).collect()
        };
        for h in hs {
            let _ = self.close_session(h);
        }
        Ok(())
    }

    /// `C_GetSessionInfo`: (slot, state, flags).
    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> Result<(CK_SLOT_ID, CK_STATE, CK_FLAGS)> {
        let (slot, rw) = self.slot_of(h)?;
        let login = self.token(slot)?.read().login;
        let state = match (login, rw) {
            (Login::So, _) => CKS_RW_SO_FUNCTIONS,
            (Login::User, true) => CKS_RW_USER_FUNCTIONS,
            (Login::User, false) => CKS_RO_USER_FUNCTIONS,
            (Login::Public, true) => CKS_RW_PUBLIC_SESSION,
            (Login::Public, false) => CKS_RO_PUBLIC_SESSION,
        };
        Ok((slot, state, CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 }))
    }

    /// `C_Login`.
    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &[u8]) -> Result<()> {
        let (slot, _) = self.slot_of(h)?;
        let who = match user {
            CKU_SO => Login::So,
            CKU_USER => Login::User,
            CKU_CONTEXT_SPECIFIC => {
                let t = self.token(slot)?;
                if t.read().login != Login::User {
                    return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "context-specific login needs the user logged in"));
                }
                return t.check_user_pin(pin);
            }
            _ => return Err(Error::new(CKR_USER_TYPE_INVALID, format!("user type {user}"))),
        };
        if who == Login::So {
            let ss = self.sessions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if ss.values().any(|s| {
                let s = lock(s);
                s.slot == slot && !s.rw
            }) {
                return Err(Error::new(CKR_SESSION_READ_ONLY_EXISTS, "close read-only sessions before the SO logs in"));
            }
        }
        self.token(slot)?.login(who, pin, &self.handles)
    }

    /// `C_Logout`.
    pub fn logout(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        let (slot, _) = self.slot_of(h)?;
        self.token(slot)?.logout()?;
        // PKCS#11 2.40 §5.6.8: the application's private session objects are destroyed.
        let owners: Vec<CK_SESSION_HANDLE> = {
            let ss = self.sessions.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            ss.iter().filter(|(_, s)| lock(s).slot == slot).map(|(h, _)| *h).collect()
        };
        self.session_objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, o| !(o.is_private() && o.owner.is_some_and(|s| owners.contains(&s))));
        Ok(())
    }

    /// `C_InitPIN`.
    pub fn init_pin(&self, h: CK_SESSION_HANDLE, pin: &[u8]) -> Result<()> {
        let (slot, rw) = self.slot_of(h)?;
        if !rw {
            return Err(Error::new(CKR_SESSION_READ_ONLY, "C_InitPIN needs a read/write session"));
        }
        self.token(slot)?.init_pin(pin)
    }

    /// `C_SetPIN`.
    pub fn set_pin(&self, h: CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> Result<()> {
        let (slot, rw) = self.slot_of(h)?;
        if !rw {
            return Err(Error::new(CKR_SESSION_READ_ONLY, "C_SetPIN needs a read/write session"));
        }
        self.token(slot)?.set_pin(old, new)
    }

    fn login_of(&self, slot: CK_SLOT_ID) -> Result<Login> {
        Ok(self.token(slot)?.read().login)
    }

    fn visible(&self, o: &Object, login: Login) -> bool {
        !o.is_private() || login == Login::User
    }

    /// Look up an object visible to a session.
    pub fn object(&self, h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE) -> Result<Arc<Object>> {
        let (slot, _) = self.slot_of(h)?;
        self.object_in(slot, oh)
    }

    fn object_in(&self, slot: CK_SLOT_ID, oh: CK_OBJECT_HANDLE) -> Result<Arc<Object>> {
        let login = self.login_of(slot)?;
        let invalid = || Error::new(CKR_OBJECT_HANDLE_INVALID, format!("no object {oh}"));
        if let Some(o) = self.session_objects.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&oh) {
            let owner_slot = o.owner.and_then(|s| self.slot_of(s).ok()).map(|x| x.0);
            return if owner_slot == Some(slot) && self.visible(o, login) { Ok(o.clone()) } else { Err(invalid()) };
        }
        let t = self.token(slot)?;
        let st = t.read();
        match st.objects.get(&oh) {
            Some(o) if self.visible(o, login) => Ok(o.clone()),
            _ => Err(invalid()),
        }
    }

    /// Is the key-separation policy on for this slot's token (README "Key hygiene")?
    pub fn key_separation(&self, slot: CK_SLOT_ID) -> bool {
        self.cfg.slots.iter().find(|s| s.id == slot).is_none_or(|s| s.key_separation)
    }

    /// Refuse attributes that break the key-separation policy (`CKR_TEMPLATE_INCONSISTENT`: the
    /// template asks for roles this token does not give one key).
    fn check_policy(&self, slot: CK_SLOT_ID, attrs: &AttrMap) -> Result<()> {
        if self.key_separation(slot) && object::mixes_roles(attrs) {
            return Err(Error::template(
                "key separation policy: a key is either a key-encryption key (CKA_WRAP/CKA_UNWRAP) or a data key (CKA_ENCRYPT/CKA_DECRYPT), not both",
            ));
        }
        Ok(())
    }

    /// Store a new object (session or token) and return its handle. Every object gets a fresh
    /// `CKA_UNIQUE_ID` here (a copy too).
    /// Insert a generated key pair, public half first; the public half is destroyed again if
    /// the private half cannot be stored, so a failed generation leaves nothing behind.
    fn insert_pair(
        &self,
        h: CK_SESSION_HANDLE,
        public: (AttrMap, Material),
        private: (AttrMap, Material),
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let ph = self.insert_object(h, public.0, public.1)?;
        match self.insert_object(h, private.0, private.1) {
            Ok(sh) => Ok((ph, sh)),
            Err(e) => {
                let _ = self.destroy_object(h, ph);
                Err(e)
            }
        }
    }

    fn insert_object(&self, h: CK_SESSION_HANDLE, attrs: AttrMap, material: Material) -> Result<CK_OBJECT_HANDLE> {
        let (slot, rw) = self.slot_of(h)?;
        self.check_policy(slot, &attrs)?;
        let mut attrs = attrs;
        let uid = crate::store::new_uid()?;
        attrs.set(CKA_UNIQUE_ID, uid.clone().into_bytes());
        let login = self.login_of(slot)?;
        let token = attrs.flag(CKA_TOKEN);
        let private = attrs.flag(CKA_PRIVATE);
        if token && !rw {
            return Err(Error::new(CKR_SESSION_READ_ONLY, "token objects need a read/write session"));
        }
        if private && login != Login::User {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "private objects need the user logged in"));
        }
        let handle = self.handles.fetch_add(1, Ordering::SeqCst);
        if token {
            let t = self.token(slot)?;
            let obj = Object { handle, uid: Some(uid), owner: None, attrs, material };
            let mut st = t.write();
            t.persist(&mut st, &obj)?;
            if let Some(u) = &obj.uid {
                st.by_uid.insert(u.clone(), handle);
            }
            st.objects.insert(handle, Arc::new(obj));
            st.scanned = t.store.objects_mtime();
        } else {
            let obj = Object { handle, uid: None, owner: Some(h), attrs, material };
            self.session_objects
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(handle, Arc::new(obj));
        }
        Ok(handle)
    }

    fn is_so(&self, slot: CK_SLOT_ID) -> bool {
        self.login_of(slot).map(|l| l == Login::So).unwrap_or(false)
    }

    /// `C_CreateObject`.
    pub fn create_object(&self, h: CK_SESSION_HANDLE, tmpl: &[Attribute]) -> Result<CK_OBJECT_HANDLE> {
        let (slot, _) = self.slot_of(h)?;
        self.faults.apply(slot)?;
        let (attrs, material) = object::build(NewObject {
            template: tmpl,
            class: None,
            key_type: None,
            origin: Origin::Created,
            material: None,
            extra: AttrMap::default(),
            so: self.is_so(slot),
        })?;
        self.insert_object(h, attrs, material)
    }

    /// `C_CopyObject`.
    pub fn copy_object(
        &self,
        h: CK_SESSION_HANDLE,
        oh: CK_OBJECT_HANDLE,
        tmpl: &[Attribute],
    ) -> Result<CK_OBJECT_HANDLE> {
        let (slot, _) = self.slot_of(h)?;
        let o = self.object(h, oh)?;
        if !o.flag(CKA_COPYABLE) && o.attrs.get(CKA_COPYABLE).is_some() {
            return Err(Error::new(CKR_ACTION_PROHIBITED, "object is not copyable"));
        }
        let attrs = object::modify(&o, tmpl, self.is_so(slot), true)?;
        if matches!(o.material, Material::None) && o.class() != CKO_DATA && o.class() != CKO_CERTIFICATE {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "object material is not available: log in first"));
        }
        self.insert_object(h, attrs, o.material.clone())
    }

    /// `C_DestroyObject`.
    pub fn destroy_object(&self, h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE) -> Result<()> {
        let (slot, rw) = self.slot_of(h)?;
        let o = self.object(h, oh)?;
        if o.attrs.get(CKA_DESTROYABLE).is_some() && !o.flag(CKA_DESTROYABLE) {
            return Err(Error::new(CKR_ACTION_PROHIBITED, "object is not destroyable"));
        }
        if o.is_token() {
            if !rw {
                return Err(Error::new(CKR_SESSION_READ_ONLY, "destroying a token object needs a read/write session"));
            }
            let t = self.token(slot)?;
            let mut st = t.write();
            if let Some(u) = &o.uid {
                t.store.delete_object(u)?;
                st.by_uid.remove(u);
            }
            st.objects.remove(&oh);
            st.pending.remove(&oh);
            st.scanned = t.store.objects_mtime();
        } else {
            self.session_objects.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&oh);
        }
        Ok(())
    }

    /// `C_GetObjectSize`.
    pub fn object_size(&self, h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE) -> Result<usize> {
        Ok(self.object(h, oh)?.size())
    }

    /// `C_GetAttributeValue`: one result per requested type.
    pub fn get_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        oh: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrRead>> {
        let o = self.object(h, oh)?;
        Ok(types.iter().map(|t| o.read_attr(*t)).collect())
    }

    /// `C_SetAttributeValue`.
    pub fn set_attributes(&self, h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE, tmpl: &[Attribute]) -> Result<()> {
        let (slot, rw) = self.slot_of(h)?;
        let o = self.object(h, oh)?;
        let attrs = object::modify(&o, tmpl, self.is_so(slot), false)?;
        self.check_policy(slot, &attrs)?;
        let new = Object { attrs, ..(*o).clone() };
        if o.is_token() {
            if !rw {
                return Err(Error::new(CKR_SESSION_READ_ONLY, "modifying a token object needs a read/write session"));
            }
            let t = self.token(slot)?;
            let mut st = t.write();
            if !matches!(new.material, Material::None) || new.secret_attrs().0.is_empty() {
                t.persist(&mut st, &new)?;
            } else {
                return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "log in to modify this object"));
            }
            st.objects.insert(oh, Arc::new(new));
            st.scanned = t.store.objects_mtime();
        } else {
            self.session_objects.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(oh, Arc::new(new));
        }
        Ok(())
    }

    /// `C_FindObjectsInit`.
    pub fn find_init(&self, h: CK_SESSION_HANDLE, tmpl: &[Attribute]) -> Result<()> {
        let (slot, _) = self.slot_of(h)?;
        let s = self.session(h)?;
        if lock(&s).find.is_some() {
            return Err(Error::new(CKR_OPERATION_ACTIVE, "a search is active"));
        }
        let t = self.token(slot)?;
        t.rescan(&self.handles)?;
        let login = self.login_of(slot)?;
        let mut found: Vec<CK_OBJECT_HANDLE> = {
            let st = t.read();
            st.objects.values().filter(|o| self.visible(o, login) && o.attrs.matches(tmpl)).map(|o| o.handle).collect()
        };
        {
            let so = self.session_objects.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            for o in so.values() {
                let owner_slot = o.owner.and_then(|s| self.slot_of(s).ok()).map(|x| x.0);
                if owner_slot == Some(slot) && self.visible(o, login) && o.attrs.matches(tmpl) {
                    found.push(o.handle);
                }
            }
        }
        found.sort_unstable();
        lock(&s).find = Some((found, 0));
        Ok(())
    }

    /// `C_FindObjects`.
    pub fn find_next(&self, h: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let s = self.session(h)?;
        let mut s = lock(&s);
        let (list, pos) =
            s.find.as_mut().ok_or_else(|| Error::new(CKR_OPERATION_NOT_INITIALIZED, "no search active"))?;
        let end = (*pos + max).min(list.len());
        let out = list[*pos..end].to_vec();
        *pos = end;
        Ok(out)
    }

    /// `C_FindObjectsFinal`.
    pub fn find_final(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        let s = self.session(h)?;
        let mut s = lock(&s);
        s.find.take().map(|_| ()).ok_or_else(|| Error::new(CKR_OPERATION_NOT_INITIALIZED, "no search active"))
    }

    /// Start an operation (`C_EncryptInit`, `C_SignInit`, `C_DigestInit`, …).
    pub fn op_init(
        &self,
        h: CK_SESSION_HANDLE,
        kind: Kind,
        mech: &Mechanism,
        key: Option<CK_OBJECT_HANDLE>,
    ) -> Result<()> {
        let (slot, _) = self.slot_of(h)?;
        self.faults.apply(slot)?;
        let s = self.session(h)?;
        if lock(&s).ops.contains_key(&kind) {
            return Err(Error::new(CKR_OPERATION_ACTIVE, "an operation of this kind is active"));
        }
        let key = match key {
            Some(k) => Some(self.object(h, k).map_err(key_handle_invalid)?),
            None => None,
        };
        if let Some(k) = &key
            && matches!(kind, Kind::Encrypt | Kind::Decrypt)
            && self.key_separation(slot)
            && object::mixes_roles(&k.attrs)
        {
            return Err(Error::new(
                CKR_KEY_FUNCTION_NOT_PERMITTED,
                format!("key {} is both a key-encryption key and a data key (key separation policy)", k.handle),
            ));
        }
        if mech.mech == CKM_QUILL_TR31_TRANSLATE && !self.kbpk_translate(slot) {
            return Err(translate_off(slot));
        }
        let separation = self.key_separation(slot);
        let resolve = |oh| {
            let o = self.object_in(slot, oh).map_err(|e| Error::param(format!("second key: {}", e.reason)))?;
            // TR-31 translation unwraps under its second key (the source KBPK): the policy holds
            // it to the same rule as C_UnwrapKey's unwrapping key.
            if mech.mech == CKM_QUILL_TR31_TRANSLATE && separation && object::mixes_roles(&o.attrs) {
                return Err(Error::new(
                    CKR_KEY_FUNCTION_NOT_PERMITTED,
                    format!("the source KBPK {oh} is also a data key (key separation policy)"),
                ));
            }
            Ok(o)
        };
        let op = Operation::init(kind, mech, key, &resolve)?;
        lock(&s).ops.insert(kind, ActiveOp { op, multipart: false, pending: None });
        Ok(())
    }

    /// Take the active operation of `kind` out of its session for one call (put back with
    /// [`Module::put_op`] when the operation goes on). An injected fault ends the operation.
    fn take_op(&self, h: CK_SESSION_HANDLE, kind: Kind) -> Result<(Arc<Mutex<Session>>, CK_SLOT_ID, ActiveOp)> {
        let (slot, _) = self.slot_of(h)?;
        let s = self.session(h)?;
        if let Err(e) = self.faults.apply(slot) {
            lock(&s).ops.remove(&kind);
            return Err(e);
        }
        let a = lock(&s)
            .ops
            .remove(&kind)
            .ok_or_else(|| Error::new(CKR_OPERATION_NOT_INITIALIZED, "no operation of this kind is active"))?;
        Ok((s, slot, a))
    }

    fn put_op(s: &Mutex<Session>, kind: Kind, a: ActiveOp) {
        lock(s).ops.insert(kind, a);
    }

    /// End the active operation of `kind`, if any (a failed one-shot or final call).
    pub fn op_abort(&self, h: CK_SESSION_HANDLE, kind: Kind) {
        if let Ok(s) = self.session(h) {
            lock(&s).ops.remove(&kind);
        }
    }

    /// Single-part call (`C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign`, `C_SignRecover`,
    /// `C_VerifyRecover`). Refused with `CKR_OPERATION_ACTIVE` (the multi-part operation stays) after
    /// an `*Update`. A length query or a short buffer keeps the output with the input it belongs
    /// to; the next call returns it only for the same input and starts afresh for another.
    pub fn op_single(&self, h: CK_SESSION_HANDLE, kind: Kind, data: &[u8], cap: Option<usize>) -> Result<Out> {
        let (s, slot, mut a) = self.take_op(h, kind)?;
        if a.multipart {
            Self::put_op(&s, kind, a);
            return Err(Error::new(
                CKR_OPERATION_ACTIVE,
                "a multi-part operation is active: finish it with the *Final function",
            ));
        }
        let out = match a.pending.take() {
            Some(Pending::Single { input, out }) if input.as_slice() == data => out,
            Some(_) => {
                let resolve =
                    |oh| self.object_in(slot, oh).map_err(|e| Error::param(format!("second key: {}", e.reason)));
                a.op = a.op.restart(&resolve)?;
                Zeroizing::new(a.op.run(data)?)
            }
            None => Zeroizing::new(a.op.run(data)?),
        };
        let n = out.len();
        match cap {
            Some(c) if c >= n => Ok(Out::Data(out.to_vec())),
            _ => {
                a.pending = Some(Pending::Single { input: Zeroizing::new(data.to_vec()), out });
                Self::put_op(&s, kind, a);
                Ok(if cap.is_none() { Out::Len(n) } else { Out::TooSmall(n) })
            }
        }
    }

    /// `C_*Update` (and `C_DigestKey`). A length query or a short buffer leaves the operation as
    /// it was; any error ends it.
    pub fn op_update(&self, h: CK_SESSION_HANDLE, kind: Kind, data: &[u8], cap: Option<usize>) -> Result<Out> {
        let (s, slot, mut a) = self.take_op(h, kind)?;
        match a.pending.take() {
            Some(Pending::Single { .. }) => {
                let resolve =
                    |oh| self.object_in(slot, oh).map_err(|e| Error::param(format!("second key: {}", e.reason)));
                a.op = a.op.restart(&resolve)?;
            }
            Some(p @ Pending::Final(_)) => {
                a.pending = Some(p);
                Self::put_op(&s, kind, a);
                return Err(Error::new(
                    CKR_OPERATION_ACTIVE,
                    "the final part was already computed by a length query: call the *Final function",
                ));
            }
            None => {}
        }
        let n = a.op.update_len(data);
        match cap {
            None => {
                Self::put_op(&s, kind, a);
                Ok(Out::Len(n))
            }
            Some(c) if c < n => {
                Self::put_op(&s, kind, a);
                Ok(Out::TooSmall(n))
            }
            Some(_) => {
                a.multipart = true;
                let out = a.op.update(data)?;
                Self::put_op(&s, kind, a);
                Ok(Out::Data(out))
            }
        }
    }

    /// `C_*Final`.
    pub fn op_final(&self, h: CK_SESSION_HANDLE, kind: Kind, cap: Option<usize>) -> Result<Out> {
        let (s, _, mut a) = self.take_op(h, kind)?;
        a.multipart = true;
        let out = match a.pending.take() {
            Some(Pending::Final(out)) => out,
            Some(Pending::Single { .. }) | None => Zeroizing::new(a.op.finish()?),
        };
        let n = out.len();
        match cap {
            Some(c) if c >= n => Ok(Out::Data(out.to_vec())),
            _ => {
                a.pending = Some(Pending::Final(out));
                Self::put_op(&s, kind, a);
                Ok(if cap.is_none() { Out::Len(n) } else { Out::TooSmall(n) })
            }
        }
    }

    /// `C_Verify` (data given) or `C_VerifyFinal` (data `None`). Any outcome ends the
    /// verification, except `C_Verify` after `C_VerifyUpdate` (refused, `CKR_OPERATION_ACTIVE`).
    pub fn verify(&self, h: CK_SESSION_HANDLE, data: Option<&[u8]>, sig: &[u8]) -> Result<()> {
        let (s, _, mut a) = self.take_op(h, Kind::Verify)?;
        match data {
            Some(_) if a.multipart => {
                Self::put_op(&s, Kind::Verify, a);
                Err(Error::new(CKR_OPERATION_ACTIVE, "a multi-part verification is active: use C_VerifyFinal"))
            }
            Some(d) => a.op.verify_run(d, sig),
            None => a.op.verify(sig),
        }
    }

    /// `C_DigestKey`: the session first, then the active digest, then the key.
    pub fn digest_key(&self, h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<()> {
        let s = self.session(h)?;
        if !lock(&s).ops.contains_key(&Kind::Digest) {
            return Err(Error::new(CKR_OPERATION_NOT_INITIALIZED, "no digest is active"));
        }
        let o = self.object(h, key).map_err(key_handle_invalid)?;
        let v = secret_of(&o, &[CKK_DES, CKK_DES2, CKK_DES3, CKK_AES, CKK_GENERIC_SECRET])
            .map_err(|_| Error::new(CKR_KEY_INDIGESTIBLE, "only secret keys can be digested"))?;
        self.op_update(h, Kind::Digest, &v, Some(0)).map(|_| ())
    }

    /// `C_SessionCancel` (3.0 §5.6.4 of the 3.0 base): end the operations `flags` name.
    pub fn session_cancel(&self, h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<()> {
        let s = self.session(h)?;
        let mut s = lock(&s);
        for kind in [
            Kind::Encrypt,
            Kind::Decrypt,
            Kind::Digest,
            Kind::Sign,
            Kind::Verify,
            Kind::SignRecover,
            Kind::VerifyRecover,
        ] {
            if flags & kind.flag() != 0 {
                s.ops.remove(&kind);
            }
        }
        if flags & CKF_FIND_OBJECTS != 0 {
            s.find = None;
        }
        Ok(())
    }

    /// `C_GenerateKey`.
    pub fn generate_key(&self, h: CK_SESSION_HANDLE, mech: &Mechanism, tmpl: &[Attribute]) -> Result<CK_OBJECT_HANDLE> {
        let (slot, _) = self.slot_of(h)?;
        self.faults.apply(slot)?;
        mechanism::require(mech.mech, CKF_GENERATE)?;
        let kt = match mech.mech {
            CKM_DES2_KEY_GEN => CKK_DES2,
            CKM_DES3_KEY_GEN => CKK_DES3,
            CKM_AES_KEY_GEN => CKK_AES,
            CKM_SHA_1_KEY_GEN => CKK_SHA_1_HMAC,
            CKM_SHA224_KEY_GEN => CKK_SHA224_HMAC,
            CKM_SHA256_KEY_GEN => CKK_SHA256_HMAC,
            CKM_SHA384_KEY_GEN => CKK_SHA384_HMAC,
            CKM_SHA512_KEY_GEN => CKK_SHA512_HMAC,
            _ => CKK_GENERIC_SECRET,
        };
        let t = template_to_map(tmpl)?;
        let len = t.ulong(CKA_VALUE_LEN).map(|l| l as usize);
        match (object::fixed_key_len(kt), len) {
            (None, None) => {
                return Err(Error::new(CKR_TEMPLATE_INCOMPLETE, "this key type needs CKA_VALUE_LEN"));
            }
            // Checked before anything is generated: a huge CKA_VALUE_LEN must not allocate.
            (None, Some(l)) => object::check_secret_len(kt, l)?,
            (Some(_), _) => {}
        }
        let v = ops::generate_secret(kt, len)?;
        let (attrs, material) = object::build(NewObject {
            template: tmpl,
            class: Some(CKO_SECRET_KEY),
            key_type: Some(kt),
            origin: Origin::Generated(mech.mech),
            material: Some(Material::Secret(Arc::new(v))),
            extra: AttrMap::default(),
            so: self.is_so(slot),
        })?;
        self.insert_object(h, attrs, material)
    }

    /// `C_GenerateKeyPair` (RSA).
    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        pub_tmpl: &[Attribute],
        priv_tmpl: &[Attribute],
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let (slot, _) = self.slot_of(h)?;
        self.faults.apply(slot)?;
        mechanism::require(mech.mech, CKF_GENERATE_KEY_PAIR)?;
        if matches!(mech.mech, CKM_EC_KEY_PAIR_GEN | CKM_EC_EDWARDS_KEY_PAIR_GEN) {
            return self.generate_ec_key_pair(h, mech, pub_tmpl, priv_tmpl, slot);
        }
        let pt = template_to_map(pub_tmpl)?;
        let bits = pt
            .ulong(CKA_MODULUS_BITS)
            .ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "CKA_MODULUS_BITS missing"))?;
        if !(512..=4096).contains(&bits) || bits % 8 != 0 {
            // C_GenerateKeyPair lists no CKR_KEY_SIZE_RANGE: the bad value is a template attribute.
            return Err(Error::new(
                CKR_ATTRIBUTE_VALUE_INVALID,
                format!("RSA modulus of {bits} bits: 512..4096 in steps of 8"),
            ));
        }
        let e_bytes = pt.get(CKA_PUBLIC_EXPONENT).map(object::strip).unwrap_or_else(|| vec![1, 0, 1]);
        if e_bytes.len() > 4 || e_bytes.is_empty() {
            return Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID, "public exponent too large"));
        }
        let e = e_bytes.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
        if e < 3 || e % 2 == 0 {
            return Err(Error::new(CKR_ATTRIBUTE_VALUE_INVALID, "public exponent must be odd and >= 3"));
        }
        let key = quill_crypto::rsa::generate(bits as u32, e)?;
        let engine = Arc::new(quill_crypto::rsa::RsaEngine::new(&key)?);
        let mut extra = AttrMap::default();
        extra.set(CKA_MODULUS, object::strip(&key.n));
        extra.set(CKA_PUBLIC_EXPONENT, object::strip(&key.e));
        let pub_clean: Vec<Attribute> =
            pub_tmpl.iter().filter(|a| a.ty != CKA_MODULUS_BITS && a.ty != CKA_PUBLIC_EXPONENT).cloned().collect();
        let so = self.is_so(slot);
        let (pattrs, pmat) = object::build(NewObject {
            template: &pub_clean,
            class: Some(CKO_PUBLIC_KEY),
            key_type: Some(CKK_RSA),
            origin: Origin::Generated(mech.mech),
            material: Some(Material::RsaPublic(engine.clone())),
            extra: extra.clone(),
            so,
        })?;
        let (sattrs, smat) = object::build(NewObject {
            template: priv_tmpl,
            class: Some(CKO_PRIVATE_KEY),
            key_type: Some(CKK_RSA),
            origin: Origin::Generated(mech.mech),
            material: Some(Material::RsaPrivate(Arc::new(key), engine)),
            extra,
            so,
        })?;
        self.insert_pair(h, (pattrs, pmat), (sattrs, smat))
    }

    /// `C_WrapKey`.
    pub fn wrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        cap: Option<usize>,
    ) -> Result<Out> {
        let (slot, _) = self.slot_of(h)?;
        self.faults.apply(slot)?;
        let w = self.object(h, wrapping).map_err(|e| Error::new(CKR_WRAPPING_KEY_HANDLE_INVALID, e.reason))?;
        let k = self.object(h, key).map_err(|e| Error::new(CKR_KEY_HANDLE_INVALID, e.reason))?;
        if self.key_separation(slot) && object::mixes_roles(&w.attrs) {
            return Err(Error::new(
                CKR_KEY_FUNCTION_NOT_PERMITTED,
                "the wrapping key is also a data key (key separation policy)",
            ));
        }
        // Deterministic mechanisms give the same bytes on the second call of the two-call
        // convention; RSA padding is random, which the caller sees only as a length.
        let out = ops::wrap(mech, &w, &k)?;
        Ok(match cap {
            None => Out::Len(out.len()),
            Some(c) if c < out.len() => Out::TooSmall(out.len()),
            Some(_) => Out::Data(out),
        })
    }

    /// `C_UnwrapKey`.
    pub fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        tmpl: &[Attribute],
    ) -> Result<CK_OBJECT_HANDLE> {
        let (slot, _) = self.slot_of(h)?;
        self.faults.apply(slot)?;
        let u = self.object(h, unwrapping).map_err(|e| Error::new(CKR_UNWRAPPING_KEY_HANDLE_INVALID, e.reason))?;
        // Every unwrapping mechanism, the vendor ones included, needs CKA_UNWRAP.
        u.require(CKA_UNWRAP)?;
        if self.key_separation(slot) && object::mixes_roles(&u.attrs) {
            return Err(Error::new(
                CKR_KEY_FUNCTION_NOT_PERMITTED,
                "the unwrapping key is also a data key (key separation policy)",
            ));
        }
        if mech.mech == CKM_QUILL_TR31_UNWRAP {
            // Class, key type and length come from the key block.
            let (key, tmpl) = ops::unwrap_tr31(mech, &u, wrapped, tmpl)?;
            let (class, kt, material) = match key {
                ops::Unwrapped::Secret(kt, value) => (CKO_SECRET_KEY, kt, Material::Secret(Arc::new(value))),
                ops::Unwrapped::RsaPrivate(key) => {
                    let engine = quill_crypto::rsa::RsaEngine::new(&key)?;
                    (CKO_PRIVATE_KEY, CKK_RSA, Material::RsaPrivate(Arc::new(key), Arc::new(engine)))
                }
            };
            let (attrs, material) = object::build(NewObject {
                template: &tmpl,
                class: Some(class),
                key_type: Some(kt),
                origin: Origin::Unwrapped,
                material: Some(material),
                extra: AttrMap::default(),
                so: self.is_so(slot),
            })?;
            return self.insert_object(h, attrs, material);
        }
        let t = template_to_map(tmpl)?;
        if t.ulong(CKA_CLASS) == Some(CKO_PRIVATE_KEY) {
            return self.unwrap_private_key(h, mech, &u, wrapped, tmpl, t.ulong(CKA_KEY_TYPE), slot);
        }
        if t.ulong(CKA_CLASS) != Some(CKO_SECRET_KEY) {
            return Err(Error::new(
                CKR_TEMPLATE_INCOMPLETE,
                "unwrap template must give CKA_CLASS = CKO_SECRET_KEY or CKO_PRIVATE_KEY",
            ));
        }
        let kt = t
            .ulong(CKA_KEY_TYPE)
            .ok_or_else(|| Error::new(CKR_TEMPLATE_INCOMPLETE, "unwrap template must give CKA_KEY_TYPE"))?;
        let mut v = ops::unwrap(mech, &u, wrapped)?;
        if let Some(l) = t.ulong(CKA_VALUE_LEN).map(|l| l as usize) {
            if l > v.len() {
                return Err(Error::new(CKR_WRAPPED_KEY_LEN_RANGE, "wrapped key shorter than CKA_VALUE_LEN"));
            }
            v.truncate(l);
        } else if let Some(f) = object::fixed_key_len(kt)
            && v.len() != f
        {
            return Err(Error::new(
                CKR_WRAPPED_KEY_LEN_RANGE,
                format!("unwrapped {} bytes for a {f}-byte key", v.len()),
            ));
        }
        let (attrs, material) = object::build(NewObject {
            template: tmpl,
            class: Some(CKO_SECRET_KEY),
            key_type: Some(kt),
            origin: Origin::Unwrapped,
            material: Some(Material::Secret(Arc::new(v))),
            extra: AttrMap::default(),
            so: self.is_so(slot),
        })?;
        self.insert_object(h, attrs, material)
    }

    /// `C_UnwrapKey` of an RSA private key: a PKCS#8 `PrivateKeyInfo` under an AES key-wrap
    /// mechanism (the inverse of [`Module::wrap_key`] of a private key).
    #[allow(clippy::too_many_arguments)]
    fn unwrap_private_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        unwrapping: &Object,
        wrapped: &[u8],
        tmpl: &[Attribute],
        key_type: Option<CK_KEY_TYPE>,
        slot: CK_SLOT_ID,
    ) -> Result<CK_OBJECT_HANDLE> {
        // C_UnwrapKey's codes: a template without the key type is incomplete; a key type the
        // module cannot unwrap into is a bad attribute value (PKCS#11 3.0 §5.18.8).
        match key_type {
            Some(CKK_RSA) => {}
            None => {
                return Err(Error::new(
                    CKR_TEMPLATE_INCOMPLETE,
                    "an unwrapped private key needs CKA_KEY_TYPE (CKK_RSA)",
                ));
            }
            Some(kt) => {
                return Err(Error::new(
                    CKR_ATTRIBUTE_VALUE_INVALID,
                    format!("private key type 0x{kt:X} cannot be unwrapped here: only CKK_RSA (PKCS#8)"),
                ));
            }
        }
        if !ops::is_aes_key_wrap(mech.mech) {
            return Err(Error::new(
                CKR_MECHANISM_INVALID,
                "private keys unwrap with CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD or CKM_AES_KEY_WRAP_KWP",
            ));
        }
        let der = ops::unwrap(mech, unwrapping, wrapped)?;
        let key = quill_crypto::rsa::from_pkcs8(&der)
            .map_err(|e| Error::new(CKR_WRAPPED_KEY_INVALID, format!("unwrapped data: {e}")))?;
        let engine = quill_crypto::rsa::RsaEngine::new(&key)?;
        let (attrs, material) = object::build(NewObject {
            template: tmpl,
            class: Some(CKO_PRIVATE_KEY),
            key_type: Some(CKK_RSA),
            origin: Origin::Unwrapped,
            material: Some(Material::RsaPrivate(Arc::new(key), Arc::new(engine))),
            extra: AttrMap::default(),
            so: self.is_so(slot),
        })?;
        self.insert_object(h, attrs, material)
    }

    /// `C_DeriveKey`.
    pub fn derive_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        base: CK_OBJECT_HANDLE,
        tmpl: &[Attribute],
    ) -> Result<CK_OBJECT_HANDLE> {
        let (slot, _) = self.slot_of(h)?;
        self.faults.apply(slot)?;
        mechanism::require(mech.mech, CKF_DERIVE)?;
        let b = self.object(h, base).map_err(|e| Error::new(CKR_KEY_HANDLE_INVALID, e.reason))?;
        b.require(CKA_DERIVE)?;
        let t = template_to_map(tmpl)?;
        let tdes = [CKK_DES2, CKK_DES3];
        let (value, default_kt): (Zeroizing<Vec<u8>>, CK_KEY_TYPE) = match (&mech.mech, &mech.param) {
            (&CKM_DES3_ECB_ENCRYPT_DATA, MechParam::DeriveData(d)) => {
                (Zeroizing::new(sym::des3_ecb_encrypt(&secret_of(&b, &tdes)?, d)?), CKK_GENERIC_SECRET)
            }
            (&CKM_AES_ECB_ENCRYPT_DATA, MechParam::DeriveData(d)) => {
                (Zeroizing::new(sym::aes_ecb_encrypt(&secret_of(&b, &[CKK_AES])?, d)?), CKK_GENERIC_SECRET)
            }
            (&CKM_DES3_CBC_ENCRYPT_DATA, MechParam::CbcDeriveData { iv, data }) => {
                (Zeroizing::new(sym::des3_cbc_encrypt(&secret_of(&b, &tdes)?, iv, data)?), CKK_GENERIC_SECRET)
            }
            (&CKM_AES_CBC_ENCRYPT_DATA, MechParam::CbcDeriveData { iv, data }) => {
                (Zeroizing::new(sym::aes_cbc_encrypt(&secret_of(&b, &[CKK_AES])?, iv, data)?), CKK_GENERIC_SECRET)
            }
            (&CKM_QUILL_EMV_MK_OPTION_A | &CKM_QUILL_EMV_MK_OPTION_B, _) => {
                let mut r = ParamReader::new(mech.param.raw(), "CK_QUILL_EMV_MK_PARAMS");
                let pan = r.digits("pan", 12, 19)?;
                let psn = r.bytes(2, "psn")?;
                r.end()?;
                if !psn.iter().all(u8::is_ascii_digit) {
                    return Err(Error::param("psn must be two ASCII digits"));
                }
                let psn = String::from_utf8_lossy(psn).into_owned();
                let imk = secret_of(&b, &tdes)?;
                let mk = if mech.mech == CKM_QUILL_EMV_MK_OPTION_A {
                    payment::emv_option_a(&imk, &pan, &psn)?
                } else {
                    payment::emv_option_b(&imk, &pan, &psn)?
                };
                (mk, CKK_DES2)
            }
            (&CKM_QUILL_KEY_COMPONENTS_XOR, _) => {
                let mut r = ParamReader::new(mech.param.raw(), "CK_QUILL_XOR_PARAMS");
                let n = r.ulong("count")? as usize;
                if n == 0 || n > 16 {
                    return Err(Error::param("1..16 further components"));
                }
                let kt = b.key_type().unwrap_or(CKK_GENERIC_SECRET);
                let mut acc = Zeroizing::new(secret_of(&b, &[kt])?.to_vec());
                for i in 0..n {
                    let oh = r.ulong("component")?;
                    if oh == base {
                        return Err(Error::param("the same component twice"));
                    }
                    let c = self.object(h, oh).map_err(|e| Error::param(format!("component {i}: {}", e.reason)))?;
                    c.require(CKA_DERIVE)?;
                    let cv = secret_of(&c, &[kt])?;
                    if cv.len() != acc.len() {
                        return Err(Error::param("components differ in length"));
                    }
                    for (a, x) in acc.iter_mut().zip(cv.iter()) {
                        *a ^= x;
                    }
                }
                r.end()?;
                if matches!(kt, CKK_DES | CKK_DES2 | CKK_DES3) {
                    sym::set_odd_parity(&mut acc);
                }
                (acc, kt)
            }
            _ => {
                return Err(Error::param(format!(
                    "mechanism 0x{:X}: parameter missing or of the wrong type",
                    mech.mech
                )));
            }
        };
        let kt = t.ulong(CKA_KEY_TYPE).unwrap_or(default_kt);
        let mut value = value;
        let want = match (object::fixed_key_len(kt), t.ulong(CKA_VALUE_LEN)) {
            (Some(f), _) => f,
            (None, Some(l)) => l as usize,
            (None, None) => value.len(),
        };
        if want > value.len() || want == 0 {
            return Err(Error::new(
                CKR_ATTRIBUTE_VALUE_INVALID,
                format!("derivation gives {} bytes; the key needs {want}", value.len()),
            ));
        }
        value.truncate(want);
        let (attrs, material) = object::build(NewObject {
            template: tmpl,
            class: Some(CKO_SECRET_KEY),
            key_type: Some(kt),
            origin: Origin::Derived {
                always_sensitive: b.flag(CKA_ALWAYS_SENSITIVE),
                never_extractable: b.flag(CKA_NEVER_EXTRACTABLE),
            },
            material: Some(Material::Secret(Arc::new(value))),
            extra: AttrMap::default(),
            so: self.is_so(slot),
        })?;
        self.insert_object(h, attrs, material)
    }

    /// `C_GenerateRandom`.
    pub fn generate_random(&self, h: CK_SESSION_HANDLE, n: usize) -> Result<Vec<u8>> {
        let (slot, _) = self.slot_of(h)?;
        self.faults.apply(slot)?;
        Ok(ops::random_bytes(n)?.to_vec())
    }

    /// `C_SeedRandom` (accepted; the OS generator needs no seed).
    pub fn seed_random(&self, h: CK_SESSION_HANDLE) -> Result<()> {
        self.slot_of(h).map(|_| ())
    }

    /// Shut down (unblocks calls waiting on a dead slot).
    pub fn finalize(&self) {
        self.faults.stop();
        self.sessions.write().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        self.session_objects.write().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

/// `CKR_MECHANISM_INVALID`: the token of `slot` leaves `CKM_QUILL_TR31_TRANSLATE` off.
fn translate_off(slot: CK_SLOT_ID) -> Error {
    Error::new(
        CKR_MECHANISM_INVALID,
        format!("CKM_QUILL_TR31_TRANSLATE is off on slot {slot} (kbpk_translate = false in the module configuration)"),
    )
}

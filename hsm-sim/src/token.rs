//! One token: its stored record, PINs, login state and token objects.

use crate::attr::AttrMap;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::object::{Material, Object, material_from_stored};
use crate::store::{PinRecord, StoredObject, TokenKey, TokenRecord, TokenStore, new_serial, new_token_key};
use cryptoki_sys::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

/// Who is logged in (application-wide for this token, as PKCS#11 defines it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// Nobody.
    Public,
    /// The normal user.
    User,
    /// The security officer.
    So,
}

/// Mutable state of a token.
pub struct TokenState {
    /// The stored record (None: token not initialised).
    pub record: Option<TokenRecord>,
    /// The token key while someone is logged in.
    pub key: Option<TokenKey>,
    /// Login state.
    pub login: Login,
    /// Token objects by handle.
    pub objects: HashMap<CK_OBJECT_HANDLE, Arc<Object>>,
    /// Stored objects whose secret attributes wait for the token key.
    pub pending: HashMap<CK_OBJECT_HANDLE, StoredObject>,
    /// uid → handle.
    pub by_uid: HashMap<String, CK_OBJECT_HANDLE>,
    /// Objects directory mtime at the last scan.
    pub scanned: Option<SystemTime>,
}

/// A token in a slot.
pub struct Token {
    /// Slot id.
    pub slot: CK_SLOT_ID,
    /// Slot description.
    pub description: String,
    /// Its storage.
    pub store: TokenStore,
    cfg: Arc<Config>,
    state: RwLock<TokenState>,
}

fn poisoned<T>(p: std::sync::PoisonError<T>) -> T {
    p.into_inner()
}

impl Token {
    /// Open the token of `slot` (loading its record and objects).
    pub fn open(cfg: Arc<Config>, slot: CK_SLOT_ID, description: String, handles: &AtomicU64) -> Result<Self> {
        let store = TokenStore::open(&cfg.token_dir, slot)?;
        let record = store.load_token()?;
        let t = Token {
            slot,
            description,
            store,
            cfg,
            state: RwLock::new(TokenState {
                record,
                key: None,
                login: Login::Public,
                objects: HashMap::new(),
                pending: HashMap::new(),
                by_uid: HashMap::new(),
                scanned: None,
            }),
        };
        t.rescan(handles)?;
        Ok(t)
    }

    /// Read access to the state.
    pub fn read(&self) -> RwLockReadGuard<'_, TokenState> {
        self.state.read().unwrap_or_else(poisoned)
    }

    /// Write access to the state.
    pub fn write(&self) -> RwLockWriteGuard<'_, TokenState> {
        self.state.write().unwrap_or_else(poisoned)
    }

    /// Pick up objects another process added or removed (cheap when nothing changed).
    pub fn rescan(&self, handles: &AtomicU64) -> Result<()> {
        let mtime = self.store.objects_mtime();
        {
            let st = self.read();
            if st.scanned.is_some() && st.scanned == mtime {
                return Ok(());
            }
        }
        let stored = self.store.list_objects()?;
        let mut st = self.write();
        let serial = st.record.as_ref().map(|r| r.serial.clone()).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for so in stored {
            seen.insert(so.uid.clone());
            if st.by_uid.contains_key(&so.uid) {
                continue;
            }
            let mut attrs = so.plain_attrs()?;
            // Objects stored before CKA_UNIQUE_ID existed: their uid is unique and stable.
            attrs.0.entry(CKA_UNIQUE_ID).or_insert_with(|| so.uid.clone().into_bytes());
            let h = handles.fetch_add(1, Ordering::SeqCst);
            let needs_secret = so.sealed.is_some();
            let public_key = match (needs_secret && so.sealed_public(), &st.record) {
                (true, Some(r)) => r.public_object_key()?,
                _ => None,
            };
            if so.sealed_public() && attrs.flag(CKA_PRIVATE) {
                return Err(Error::device(format!("object {}: a private object sealed as a public one", so.uid)));
            }
            let material = match (&st.key, needs_secret, &public_key) {
                (_, false, _) => material_from_stored(&attrs, &AttrMap::default())?,
                (_, true, Some(pk)) => material_from_stored(&attrs, &so.open_secret(&serial, pk)?)?,
                (Some(k), true, None) if !so.sealed_public() => {
                    material_from_stored(&attrs, &so.open_secret(&serial, k)?)?
                }
                _ => Material::None,
            };
            if needs_secret && !so.sealed_public() && matches!(material, Material::None) {
                st.pending.insert(h, so.clone());
            }
            st.by_uid.insert(so.uid.clone(), h);
            st.objects.insert(h, Arc::new(Object { handle: h, uid: Some(so.uid), owner: None, attrs, material }));
        }
        let gone: Vec<(String, CK_OBJECT_HANDLE)> =
            st.by_uid.iter().filter(|(u, _)| !seen.contains(*u)).map(|(u, h)| (u.clone(), *h)).collect();
        for (u, h) in gone {
            st.by_uid.remove(&u);
            st.objects.remove(&h);
            st.pending.remove(&h);
        }
        st.scanned = mtime;
        Ok(())
    }

    /// Is the token initialised?
    pub fn initialized(&self) -> bool {
        self.read().record.is_some()
    }

    /// `C_InitToken`: (re)initialise with an SO PIN and label; destroys every object.
    pub fn init_token(&self, so_pin: &[u8], label: &str) -> Result<()> {
        check_pin_len(so_pin)?;
        let mut st = self.write();
        if let Some(rec) = st.record.clone() {
            // Re-initialisation needs the current SO PIN.
            self.check_pin_locked(&rec, Login::So)?;
            if rec.so.open(so_pin)?.is_none() {
                self.count_failure(&mut st, Login::So)?;
                return Err(Error::new(CKR_PIN_INCORRECT, "SO PIN incorrect"));
            }
        }
        let key = new_token_key()?;
        let rec = TokenRecord {
            format: crate::store::FORMAT,
            label: label.trim_end().to_string(),
            serial: new_serial()?,
            so: PinRecord::new(so_pin, &key, self.cfg.pin_kdf_iterations)?,
            user: None,
            so_failures: 0,
            user_failures: 0,
            public_key: Some(hex::encode(new_token_key()?.as_ref())),
        };
        self.store.wipe_objects()?;
        self.store.save_token(&rec)?;
        st.record = Some(rec);
        st.key = None;
        st.login = Login::Public;
        st.objects.clear();
        st.pending.clear();
        st.by_uid.clear();
        st.scanned = self.store.objects_mtime();
        Ok(())
    }

    fn check_pin_locked(&self, rec: &TokenRecord, who: Login) -> Result<()> {
        let n = if who == Login::So { rec.so_failures } else { rec.user_failures };
        if n >= self.cfg.max_pin_tries {
            return Err(Error::new(CKR_PIN_LOCKED, "PIN locked after too many wrong tries"));
        }
        Ok(())
    }

    fn count_failure(&self, st: &mut TokenState, who: Login) -> Result<()> {
        if let Some(rec) = st.record.as_mut() {
            if who == Login::So {
                rec.so_failures += 1;
            } else {
                rec.user_failures += 1;
            }
            self.store.save_token(rec)?;
        }
        Ok(())
    }

    /// Re-read the record from disk (another process may have changed PINs).
    fn refresh_record(&self, st: &mut TokenState) -> Result<()> {
        if let Some(r) = self.store.load_token()? {
            st.record = Some(r);
        }
        Ok(())
    }

    /// `C_Login`.
    pub fn login(&self, who: Login, pin: &[u8], handles: &AtomicU64) -> Result<()> {
        {
            let mut st = self.write();
            self.refresh_record(&mut st)?;
            let rec = st.record.clone().ok_or_else(|| Error::new(CKR_TOKEN_NOT_RECOGNIZED, "token not initialised"))?;
            match (st.login, who) {
                (Login::Public, _) => {}
                (a, b) if a == b => return Err(Error::new(CKR_USER_ALREADY_LOGGED_IN, "already logged in")),
                _ => return Err(Error::new(CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "another user is logged in")),
            }
            let pr = match who {
                Login::So => rec.so.clone(),
                _ => rec
                    .user
                    .clone()
                    .ok_or_else(|| Error::new(CKR_USER_PIN_NOT_INITIALIZED, "user PIN not initialised"))?,
            };
            self.check_pin_locked(&rec, who)?;
            let Some(key) = pr.open(pin)? else {
                self.count_failure(&mut st, who)?;
                return Err(Error::new(CKR_PIN_INCORRECT, "PIN incorrect"));
            };
            if let Some(r) = st.record.as_mut() {
                let n = if who == Login::So { &mut r.so_failures } else { &mut r.user_failures };
                if *n != 0 {
                    *n = 0;
                    let r = r.clone();
                    self.store.save_token(&r)?;
                }
            }
            st.key = Some(key);
            st.login = who;
            st.scanned = None; // force a rescan that unseals
        }
        self.unseal_pending()?;
        self.rescan(handles)
    }

    /// Check the user PIN again (`CKU_CONTEXT_SPECIFIC`), counting failures like `C_Login`.
    pub fn check_user_pin(&self, pin: &[u8]) -> Result<()> {
        let mut st = self.write();
        self.refresh_record(&mut st)?;
        let rec = st.record.clone().ok_or_else(|| Error::new(CKR_TOKEN_NOT_RECOGNIZED, "token not initialised"))?;
        let pr =
            rec.user.clone().ok_or_else(|| Error::new(CKR_USER_PIN_NOT_INITIALIZED, "user PIN not initialised"))?;
        self.check_pin_locked(&rec, Login::User)?;
        if pr.open(pin)?.is_none() {
            self.count_failure(&mut st, Login::User)?;
            return Err(Error::new(CKR_PIN_INCORRECT, "PIN incorrect"));
        }
        Ok(())
    }

    fn unseal_pending(&self) -> Result<()> {
        let mut st = self.write();
        let Some(key) = st.key.clone() else { return Ok(()) };
        let serial = st.record.as_ref().map(|r| r.serial.clone()).unwrap_or_default();
        let pending: Vec<(CK_OBJECT_HANDLE, StoredObject)> = st.pending.drain().collect();
        for (h, so) in pending {
            let secret = so.open_secret(&serial, &key)?;
            if let Some(o) = st.objects.get(&h).cloned() {
                let material = material_from_stored(&o.attrs, &secret)?;
                st.objects.insert(h, Arc::new(Object { material, ..(*o).clone() }));
            }
        }
        Ok(())
    }

    /// `C_Logout`: forget the token key and the material of private objects.
    pub fn logout(&self) -> Result<()> {
        let mut st = self.write();
        if st.login == Login::Public {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "not logged in"));
        }
        st.login = Login::Public;
        st.key = None;
        let private: Vec<Arc<Object>> =
            st.objects.values().filter(|o| o.is_private() && !matches!(o.material, Material::None)).cloned().collect();
        if private.is_empty() {
            return Ok(());
        }
        // Keep the sealed forms so the material can be opened again at the next login.
        let mut sealed: HashMap<String, StoredObject> =
            self.store.list_objects()?.into_iter().map(|s| (s.uid.clone(), s)).collect();
        for o in private {
            if let Some(so) = o.uid.as_ref().and_then(|u| sealed.remove(u)) {
                st.pending.insert(o.handle, so);
            }
            st.objects.insert(o.handle, Arc::new(Object { material: Material::None, ..(*o).clone() }));
        }
        Ok(())
    }

    /// `C_InitPIN` (SO logged in).
    pub fn init_pin(&self, pin: &[u8]) -> Result<()> {
        check_pin_len(pin)?;
        let mut st = self.write();
        if st.login != Login::So {
            return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "C_InitPIN needs the SO logged in"));
        }
        let key = st.key.clone().ok_or_else(|| Error::general("no token key while logged in"))?;
        let iters = self.cfg.pin_kdf_iterations;
        let rec = st.record.as_mut().ok_or_else(|| Error::new(CKR_TOKEN_NOT_RECOGNIZED, "token not initialised"))?;
        rec.user = Some(PinRecord::new(pin, &key, iters)?);
        rec.user_failures = 0;
        let rec = rec.clone();
        self.store.save_token(&rec)
    }

    /// `C_SetPIN` for whoever is logged in (or the user when nobody is).
    pub fn set_pin(&self, old: &[u8], new: &[u8]) -> Result<()> {
        check_pin_len(new)?;
        let mut st = self.write();
        self.refresh_record(&mut st)?;
        let who = if st.login == Login::So { Login::So } else { Login::User };
        let rec = st.record.clone().ok_or_else(|| Error::new(CKR_TOKEN_NOT_RECOGNIZED, "token not initialised"))?;
        let pr = match who {
            Login::So => rec.so.clone(),
            _ => {
                rec.user.clone().ok_or_else(|| Error::new(CKR_USER_PIN_NOT_INITIALIZED, "user PIN not initialised"))?
            }
        };
        self.check_pin_locked(&rec, who)?;
        let Some(key) = pr.open(old)? else {
            self.count_failure(&mut st, who)?;
            return Err(Error::new(CKR_PIN_INCORRECT, "old PIN incorrect"));
        };
        let iters = self.cfg.pin_kdf_iterations;
        let r = st.record.as_mut().ok_or_else(|| Error::general("record vanished"))?;
        let newrec = PinRecord::new(new, &key, iters)?;
        if who == Login::So {
            r.so = newrec;
            r.so_failures = 0;
        } else {
            r.user = Some(newrec);
            r.user_failures = 0;
        }
        let r = r.clone();
        self.store.save_token(&r)
    }

    /// Persist a new token object (the caller inserts it in the map after success). A private
    /// object's secret attributes are sealed under the token key (a login is needed); a public
    /// object's under the public-object key, so that a public R/W session can store it.
    pub fn persist(&self, st: &mut TokenState, obj: &Object) -> Result<()> {
        let uid = obj.uid.as_deref().ok_or_else(|| Error::general("token object without uid"))?;
        let secret = obj.secret_attrs();
        let public = !obj.is_private() && !secret.0.is_empty();
        let key = if public {
            self.public_object_key(st)?
        } else {
            match (&st.key, secret.0.is_empty()) {
                (Some(k), _) => k.clone(),
                (None, true) => new_token_key()?, // nothing sealed: the key is not used
                (None, false) => {
                    return Err(Error::new(CKR_USER_NOT_LOGGED_IN, "storing a private secret object needs a login"));
                }
            }
        };
        let rec = st.record.as_ref().ok_or_else(|| Error::new(CKR_TOKEN_NOT_RECOGNIZED, "token not initialised"))?;
        let so = StoredObject::build(uid, &rec.serial, &obj.attrs, &secret, &key, public)?;
        self.store.save_object(&so)
    }

    /// The public-object key, made (and saved) on first use for tokens initialised before it.
    fn public_object_key(&self, st: &mut TokenState) -> Result<TokenKey> {
        let rec = st.record.as_mut().ok_or_else(|| Error::new(CKR_TOKEN_NOT_RECOGNIZED, "token not initialised"))?;
        if let Some(k) = rec.public_object_key()? {
            return Ok(k);
        }
        let k = new_token_key()?;
        rec.public_key = Some(hex::encode(k.as_ref()));
        let rec = rec.clone();
        self.store.save_token(&rec)?;
        Ok(k)
    }
}

fn check_pin_len(pin: &[u8]) -> Result<()> {
    if pin.len() < 4 || pin.len() > 255 {
        return Err(Error::new(CKR_PIN_LEN_RANGE, "PIN length must be 4..255"));
    }
    Ok(())
}

//! Token storage at rest (the scheme is written down in `hsm-sim/docs/storage-encryption.md`).
//!
//! ```text
//! <token_dir>/slot-<id>/token.json            label, serial, PIN records, failure counters
//! <token_dir>/slot-<id>/objects/<uid>.json    one file per token object
//! ```
//! Each token has a random 256-bit *token key*. Each PIN record holds the token key encrypted
//! (AES-256-GCM) under a key-encryption key derived from that PIN with PBKDF2-HMAC-SHA256 and a
//! random salt; a PIN is right exactly when that decryption authenticates. In an object file the
//! non-secret attributes are plain (so public objects can be listed before login) and the secret
//! ones (`CKA_VALUE` of secret keys, private-key components) are one AES-256-GCM ciphertext under
//! the token key, with the token serial and object uid as associated data so that a sealed blob
//! cannot be moved to another object or token. Every write goes to a temporary file that is
//! fsynced and renamed over the old one, and the directory is fsynced, so a crash leaves either
//! the old or the new version, never a torn file.

use crate::attr::AttrMap;
use crate::error::{Error, Result};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Version of the on-disk format.
pub const FORMAT: u32 = 1;

/// A 256-bit token key in memory.
pub type TokenKey = Zeroizing<[u8; 32]>;

/// One PIN's copy of the token key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRecord {
    /// KDF name (`pbkdf2-hmac-sha256`).
    pub kdf: String,
    /// KDF rounds.
    pub iterations: u32,
    /// Hex salt (16 bytes).
    pub salt: String,
    /// Hex GCM nonce (12 bytes).
    pub nonce: String,
    /// Hex ciphertext‖tag of the token key.
    pub wrapped: String,
}

const KDF_NAME: &str = "pbkdf2-hmac-sha256";

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::general(format!("getrandom: {e}")))?;
    Ok(b)
}

/// A fresh random token key.
pub fn new_token_key() -> Result<TokenKey> {
    Ok(Zeroizing::new(random::<32>()?))
}

fn kek(pin: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(pin, salt, iterations, out.as_mut());
    out
}

fn nonce_of(b: &[u8]) -> Result<Nonce<aes_gcm::aead::consts::U12>> {
    Nonce::try_from(b).map_err(|_| Error::device("token storage: bad nonce length"))
}

fn unhex(field: &str, v: &str) -> Result<Vec<u8>> {
    hex::decode(v).map_err(|_| Error::device(format!("token storage: field {field} is not hex")))
}

impl PinRecord {
    /// Protect `token_key` under `pin`.
    pub fn new(pin: &[u8], token_key: &TokenKey, iterations: u32) -> Result<Self> {
        let salt = random::<16>()?;
        let nonce = random::<12>()?;
        let k = kek(pin, &salt, iterations);
        let cipher = Aes256Gcm::new_from_slice(k.as_ref()).map_err(|_| Error::general("kek length"))?;
        let wrapped = cipher
            .encrypt(&nonce_of(&nonce)?, Payload { msg: token_key.as_ref(), aad: KDF_NAME.as_bytes() })
            .map_err(|_| Error::general("token key encryption failed"))?;
        Ok(PinRecord {
            kdf: KDF_NAME.into(),
            iterations,
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            wrapped: hex::encode(wrapped),
        })
    }

    /// Recover the token key with `pin`; `Ok(None)` when the PIN is wrong.
    pub fn open(&self, pin: &[u8]) -> Result<Option<TokenKey>> {
        if self.kdf != KDF_NAME {
            return Err(Error::device(format!("token storage: unknown KDF {}", self.kdf)));
        }
        let salt = unhex("salt", &self.salt)?;
        let nonce = unhex("nonce", &self.nonce)?;
        let wrapped = unhex("wrapped", &self.wrapped)?;
        if nonce.len() != 12 {
            return Err(Error::device("token storage: bad nonce length"));
        }
        let k = kek(pin, &salt, self.iterations);
        let cipher = Aes256Gcm::new_from_slice(k.as_ref()).map_err(|_| Error::general("kek length"))?;
        match cipher.decrypt(&nonce_of(&nonce)?, Payload { msg: &wrapped, aad: KDF_NAME.as_bytes() }) {
            Ok(pt) => {
                let pt = Zeroizing::new(pt);
                let arr: [u8; 32] =
                    pt.as_slice().try_into().map_err(|_| Error::device("token storage: bad token key length"))?;
                Ok(Some(Zeroizing::new(arr)))
            }
            Err(_) => Ok(None),
        }
    }
}

/// The token's own record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// On-disk format version.
    pub format: u32,
    /// Token label (up to 32 bytes, trailing blanks trimmed).
    pub label: String,
    /// Token serial (16 hex digits), also bound into every sealed object.
    pub serial: String,
    /// Security officer's PIN record.
    pub so: PinRecord,
    /// User PIN record, after `C_InitPIN`.
    pub user: Option<PinRecord>,
    /// Consecutive wrong SO PINs.
    pub so_failures: u32,
    /// Consecutive wrong user PINs.
    pub user_failures: u32,
    /// Hex public-object key: seals the secret attributes of public objects (`CKA_PRIVATE` false),
    /// which a public session may create and use without a PIN. Kept in clear: it binds those
    /// blobs to their object and token but hides nothing from whoever reads the directory
    /// (`docs/storage-encryption.md`). Absent in tokens made before it; made at first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

impl TokenRecord {
    /// The public-object key, if the token has one.
    pub fn public_object_key(&self) -> Result<Option<TokenKey>> {
        let Some(h) = &self.public_key else { return Ok(None) };
        let v = Zeroizing::new(unhex("public_key", h)?);
        let arr: [u8; 32] =
            v.as_slice().try_into().map_err(|_| Error::device("token storage: bad public-object key length"))?;
        Ok(Some(Zeroizing::new(arr)))
    }
}

/// Secret attributes sealed under the token key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// Hex GCM nonce.
    pub nonce: String,
    /// Hex ciphertext‖tag.
    pub ct: String,
    /// Sealed under the public-object key (a public object) rather than the token key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

/// One token object as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredObject {
    /// On-disk format version.
    pub format: u32,
    /// Stable identifier (file name).
    pub uid: String,
    /// Non-secret attributes: hex type → hex value.
    pub attrs: BTreeMap<String, String>,
    /// Secret attributes, sealed.
    pub sealed: Option<Sealed>,
}

fn aad(serial: &str, uid: &str, public: bool) -> Vec<u8> {
    let kind = if public { "public-object" } else { "object" };
    format!("quill-hsm-sim/v{FORMAT}/{kind}/{serial}/{uid}").into_bytes()
}

impl StoredObject {
    /// Build from plain attributes and secret attributes (sealed here under `key`: the token key,
    /// or the public-object key when `public`).
    pub fn build(
        uid: &str,
        serial: &str,
        attrs: &AttrMap,
        secret: &AttrMap,
        key: &TokenKey,
        public: bool,
    ) -> Result<Self> {
        let plain = attrs.0.iter().map(|(t, v)| (format!("{t:x}"), hex::encode(v))).collect();
        let sealed = if secret.0.is_empty() {
            None
        } else {
            let map: BTreeMap<String, String> =
                secret.0.iter().map(|(t, v)| (format!("{t:x}"), hex::encode(v))).collect();
            let json = Zeroizing::new(serde_json::to_vec(&map).map_err(|e| Error::general(format!("encode: {e}")))?);
            let mut map = map;
            for v in map.values_mut() {
                zeroize::Zeroize::zeroize(v);
            }
            let nonce = random::<12>()?;
            let cipher = Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| Error::general("token key length"))?;
            let ct = cipher
                .encrypt(&nonce_of(&nonce)?, Payload { msg: &json, aad: &aad(serial, uid, public) })
                .map_err(|_| Error::general("object sealing failed"))?;
            Some(Sealed { nonce: hex::encode(nonce), ct: hex::encode(ct), public })
        };
        Ok(StoredObject { format: FORMAT, uid: uid.into(), attrs: plain, sealed })
    }

    /// The plain attributes.
    pub fn plain_attrs(&self) -> Result<AttrMap> {
        decode_map(&self.attrs)
    }

    /// Are the secret attributes sealed under the public-object key?
    pub fn sealed_public(&self) -> bool {
        self.sealed.as_ref().is_some_and(|s| s.public)
    }

    /// Open the sealed attributes with the key they were sealed under.
    pub fn open_secret(&self, serial: &str, key: &TokenKey) -> Result<AttrMap> {
        let Some(s) = &self.sealed else { return Ok(AttrMap::default()) };
        let nonce = unhex("nonce", &s.nonce)?;
        let ct = unhex("ct", &s.ct)?;
        if nonce.len() != 12 {
            return Err(Error::device(format!("object {}: bad nonce length", self.uid)));
        }
        let cipher = Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| Error::general("token key length"))?;
        let pt = Zeroizing::new(
            cipher
                .decrypt(&nonce_of(&nonce)?, Payload { msg: &ct, aad: &aad(serial, &self.uid, s.public) })
                .map_err(|_| Error::device(format!("object {}: sealed attributes fail authentication", self.uid)))?,
        );
        let mut map: BTreeMap<String, String> = serde_json::from_slice(&pt)
            .map_err(|_| Error::device(format!("object {}: sealed attributes malformed", self.uid)))?;
        let out = decode_map(&map);
        for v in map.values_mut() {
            zeroize::Zeroize::zeroize(v);
        }
        out
    }
}

fn decode_map(m: &BTreeMap<String, String>) -> Result<AttrMap> {
    let mut out = AttrMap::default();
    for (t, v) in m {
        let ty =
            u64::from_str_radix(t, 16).map_err(|_| Error::device(format!("token storage: bad attribute type {t}")))?;
        out.set(ty as cryptoki_sys::CK_ATTRIBUTE_TYPE, unhex("attribute", v)?);
    }
    Ok(out)
}

/// Write `bytes` to `path` atomically and durably.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().ok_or_else(|| Error::general("path has no parent"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", hex::encode(random::<6>()?)));
    let io = |e: std::io::Error| Error::device(format!("token storage {}: {e}", path.display()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::device(format!("token storage {}: {e}", dir.display())))
}

/// One slot's directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    /// The store of slot `id` under `token_dir` (created if missing).
    pub fn open(token_dir: &Path, id: cryptoki_sys::CK_SLOT_ID) -> Result<Self> {
        let dir = token_dir.join(format!("slot-{id}"));
        std::fs::create_dir_all(dir.join("objects"))
            .map_err(|e| Error::general(format!("token directory {}: {e}", dir.display())))?;
        Ok(TokenStore { dir })
    }

    /// The slot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The token record, if the token was initialised.
    pub fn load_token(&self) -> Result<Option<TokenRecord>> {
        let p = self.dir.join("token.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::device(format!("token storage {}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::device(format!("token storage {}: {e}", p.display()))),
        }
    }

    /// Save the token record.
    pub fn save_token(&self, rec: &TokenRecord) -> Result<()> {
        let b = serde_json::to_vec_pretty(rec).map_err(|e| Error::general(format!("encode: {e}")))?;
        atomic_write(&self.dir.join("token.json"), &b)
    }

    fn obj_path(&self, uid: &str) -> PathBuf {
        self.dir.join("objects").join(format!("{uid}.json"))
    }

    /// Modification time of the objects directory (changes when objects come or go).
    pub fn objects_mtime(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.dir.join("objects")).and_then(|m| m.modified()).ok()
    }

    /// Every stored object (files that fail to parse are reported, not skipped silently).
    pub fn list_objects(&self) -> Result<Vec<StoredObject>> {
        let d = self.dir.join("objects");
        let rd = std::fs::read_dir(&d).map_err(|e| Error::device(format!("token storage {}: {e}", d.display())))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::device(format!("token storage {}: {e}", d.display())))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue; // temporary files of an interrupted write
            }
            let b = std::fs::read(ent.path()).map_err(|e| Error::device(format!("token storage {name}: {e}")))?;
            let o: StoredObject =
                serde_json::from_slice(&b).map_err(|e| Error::device(format!("token storage {name}: {e}")))?;
            out.push(o);
        }
        Ok(out)
    }

    /// Save one object.
    pub fn save_object(&self, o: &StoredObject) -> Result<()> {
        let b = serde_json::to_vec(o).map_err(|e| Error::general(format!("encode: {e}")))?;
        atomic_write(&self.obj_path(&o.uid), &b)
    }

    /// Delete one object.
    pub fn delete_object(&self, uid: &str) -> Result<()> {
        match std::fs::remove_file(self.obj_path(uid)) {
            Ok(()) => sync_dir(&self.dir.join("objects")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::device(format!("token storage: delete {uid}: {e}"))),
        }
    }

    /// Delete every object (token re-initialisation).
    pub fn wipe_objects(&self) -> Result<()> {
        for o in self.list_objects()? {
            self.delete_object(&o.uid)?;
        }
        Ok(())
    }
}

/// A new random object uid.
pub fn new_uid() -> Result<String> {
    Ok(hex::encode(random::<16>()?))
}

/// A new random token serial (16 hex digits).
pub fn new_serial() -> Result<String> {
    Ok(hex::encode_upper(random::<8>()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pin_record_opens_only_with_its_pin() {
        let k = new_token_key().unwrap();
        let r = PinRecord::new(b"1234", &k, 1000).unwrap();
        assert_eq!(r.open(b"1234").unwrap().unwrap().as_ref(), k.as_ref());
        assert!(r.open(b"1235").unwrap().is_none());
    }

    #[test]
    fn sealed_attributes_are_bound_to_object_and_token() {
        let k = new_token_key().unwrap();
        let mut plain = AttrMap::default();
        plain.set_ulong(cryptoki_sys::CKA_CLASS, cryptoki_sys::CKO_SECRET_KEY);
        let mut secret = AttrMap::default();
        secret.set(cryptoki_sys::CKA_VALUE, vec![0x42; 16]);
        let o = StoredObject::build("u1", "S1", &plain, &secret, &k, false).unwrap();
        let text = serde_json::to_string(&o).unwrap();
        assert!(!text.contains(&hex::encode([0x42u8; 16])), "secret value stored in clear");
        assert_eq!(o.open_secret("S1", &k).unwrap(), secret);
        let mut moved = o.clone();
        moved.uid = "u2".into();
        assert!(moved.open_secret("S1", &k).is_err());
        assert!(o.open_secret("S2", &k).is_err());
        let other = new_token_key().unwrap();
        assert!(o.open_secret("S1", &other).is_err());
    }

    #[test]
    fn store_round_trip_and_temp_files_ignored() {
        let d = tempfile::tempdir().unwrap();
        let s = TokenStore::open(d.path(), 3).unwrap();
        assert!(s.load_token().unwrap().is_none());
        let k = new_token_key().unwrap();
        let o = StoredObject::build("abc", "S", &AttrMap::default(), &AttrMap::default(), &k, false).unwrap();
        s.save_object(&o).unwrap();
        std::fs::write(s.dir().join("objects").join(".abc.json.tmp.123"), b"torn").unwrap();
        let l = s.list_objects().unwrap();
        assert_eq!(l.len(), 1);
        s.delete_object("abc").unwrap();
        assert!(s.list_objects().unwrap().is_empty());
    }
}

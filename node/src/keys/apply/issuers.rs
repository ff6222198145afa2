//! EMV offline-data-authentication keys in the inventory: CA public keys, issuer key pairs and
//! issuer public-key certificates.
//!
//! - **CA public keys** (`keys/ca/<RID>/<index>`): the scheme TEST CA keys are built in (never
//!   stored); others (a scheme's production keys, the Quill TEST CA) are imported by an admin,
//!   with the scheme's SHA-1 check value when it publishes one.
//! - **Issuer key pairs** (`keys/issuer/<label>`): generated inside a node's HSM; the private key
//!   is kept only wrapped under the SMK (PKCS#8 under AES key wrap), the public key in clear so it
//!   can be sent to the scheme for certification.
//! - **Issuer certificates** (`keys/issuer-cert/<RID>-<CA index>-<issuer id>-<serial>`): a scheme's
//!   issuer-certificate file (Visa or Mastercard layout), verified in apply against the CA keys
//!   the cluster holds before it is accepted (verification is pure public-key arithmetic, the same
//!   on every node). With `key`, the certificate must certify that issuer key pair's public key,
//!   and the pair is bound to it: that is what data preparation signs with.

use quill_hsm::{RsaPublic, WrappedRsaKey};
use quill_prep::emv::cert::{self, CaKeyStore, CaPublicKey, IssuerCertificate, IssuerFileLayout, Rid};
use serde::{Deserialize, Serialize};

use super::{Ctx, State, Step, check_id, key, refuse, scan};
use crate::keys::Applied;
use crate::keys::model::{Actor, Origin, Role, SmkInfo, bound_to};
use crate::store::StoreError;

/// `keys/ca/<RID>/<index>` → [`CaKeyRecord`].
pub const CA: &str = "keys/ca/";
/// `keys/issuer/<label>` → [`IssuerKeyRecord`].
pub const ISSUER: &str = "keys/issuer/";
/// `keys/issuer-cert/<RID>-<CA index>-<issuer id>-<serial>` → [`IssuerCertRecord`].
pub const ISSUER_CERT: &str = "keys/issuer-cert/";

/// An imported CA public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaKeyRecord {
    /// RID, hex.
    pub rid: String,
    /// CA public key index.
    pub index: u8,
    /// Modulus, hex.
    pub modulus: String,
    /// Exponent, hex.
    pub exponent: String,
    /// SHA-1 check value (RID ‖ index ‖ modulus ‖ exponent), hex.
    pub checksum: String,
    /// Who imported it.
    pub imported_by: Actor,
    /// When (leader time, ms).
    pub imported_ms: u64,
}

/// An issuer key pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerKeyRecord {
    /// Label (unique).
    pub label: String,
    /// The tenant it belongs to: only callers acting for it see or use it, and only its jobs.
    #[serde(default = "crate::identity::default_tenant")]
    pub tenant: String,
    /// Modulus bits.
    pub bits: usize,
    /// SHA-256 fingerprint of the public key (SPKI DER).
    pub fingerprint: String,
    /// The key pair: public key, private key wrapped under the SMK.
    pub key: WrappedRsaKey,
    /// Where it was generated.
    pub origin: Origin,
    /// The certificate bound to it (an [`IssuerCertRecord`] id), once imported.
    pub certificate: Option<String>,
    /// Who created it.
    pub created_by: Actor,
    /// When (leader time, ms).
    pub created_ms: u64,
}

impl IssuerKeyRecord {
    /// The private key's block at rest, if its header binds it to this record's tenant (see
    /// [`crate::keys::model::KeyRecord::block`]).
    pub fn block(&self) -> Result<&WrappedRsaKey, String> {
        bound_to(&self.key, &self.tenant, &format!("issuer key {}: its block at rest", self.label))
    }
}

/// A verified issuer public-key certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerCertRecord {
    /// `<RID>-<CA index>-<issuer id>-<serial>`.
    pub id: String,
    /// The file layout it came in (`visa`, `mastercard`, `unionpay`, `tags`).
    pub layout: String,
    /// RID, hex.
    pub rid: String,
    /// CA public key index (tag `8F`).
    pub ca_index: u8,
    /// Issuer identifier (BIN digits).
    pub issuer_id: String,
    /// Expiry, MMYY.
    pub expiry: String,
    /// Serial, hex.
    pub serial: String,
    /// Tag `90`, hex.
    pub cert: String,
    /// Tag `92`, hex (may be empty).
    pub remainder: String,
    /// Tag `9F32`, hex.
    pub exponent: String,
    /// Fingerprint of the certified issuer public key.
    pub key_fingerprint: String,
    /// The issuer key pair it is bound to, if any.
    pub key: Option<String>,
    /// Who imported it.
    pub imported_by: Actor,
    /// When (leader time, ms).
    pub imported_ms: u64,
}

/// Where an issuer certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CertSource {
    /// A scheme's issuer-certificate file (`visa`, `mastercard` or `unionpay` layout, emv.md §1.8).
    File {
        /// `visa`, `mastercard` or `unionpay`.
        layout: String,
        /// The file's bytes.
        bytes: Vec<u8>,
        /// The CA's RID, hex, when it is not the layout's scheme's (a domestic or Quill CA).
        #[serde(default)]
        rid: Option<String>,
    },
    /// The data elements a card carries (e.g. made by a test CA): RID, `8F`, `90`, `92`, `9F32`.
    Tags {
        /// RID, hex.
        rid: String,
        /// Tag `8F`.
        ca_index: u8,
        /// Tag `90`.
        cert: Vec<u8>,
        /// Tag `92` (may be empty).
        remainder: Vec<u8>,
        /// Tag `9F32`.
        exponent: Vec<u8>,
    },
}

fn rid_of(hex_rid: &str) -> Step<Rid> {
    hex::decode(hex_rid)
        .ok()
        .and_then(|v| <Rid>::try_from(v).ok())
        .map_or_else(|| refuse(format!("RID {hex_rid:?} is not 5 bytes of hex")), Ok)
}

/// The CA keys the cluster holds: the built-in scheme TEST keys, the imported ones, and the
/// public halves of its own EMV CA's keys that are not revoked.
pub fn ca_store(kv: &dyn crate::store::Kv) -> Result<CaKeyStore, StoreError> {
    let mut cas = CaKeyStore::with_scheme_test_keys().unwrap_or_else(|_| CaKeyStore::new());
    for r in scan::<CaKeyRecord>(kv, CA)? {
        let (Ok(rid), Ok(m), Ok(e)) = (rid_of(&r.rid), hex::decode(&r.modulus), hex::decode(&r.exponent)) else {
            continue;
        };
        if let Ok(k) = CaPublicKey::new(rid, r.index, &m, &e) {
            let _ = cas.insert(k);
        }
    }
    for r in scan::<super::ca::OwnCaKey>(kv, super::ca::OWN_CA)?.into_iter().filter(|r| r.active) {
        let Ok(rid) = rid_of(&r.rid) else { continue };
        if let Ok(k) = CaPublicKey::new(rid, r.index, &r.key.public.modulus, &r.key.public.exponent) {
            let _ = cas.insert(k);
        }
    }
    Ok(cas)
}

impl State<'_> {
    pub(super) fn ca_import(
        &mut self,
        ctx: &Ctx<'_>,
        rid: String,
        index: u8,
        modulus: Vec<u8>,
        exponent: Vec<u8>,
        checksum: Option<Vec<u8>>,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        let rid_bytes = match rid_of(&rid) {
            Ok(r) => r,
            Err(r) => return Ok(Err(r)),
        };
        let key = match checksum {
            Some(c) => match <[u8; 20]>::try_from(c.as_slice()) {
                Ok(c) => CaPublicKey::with_checksum(rid_bytes, index, &modulus, &exponent, &c),
                Err(_) => return Ok(refuse("the check value is a 20-byte SHA-1")),
            },
            None => CaPublicKey::new(rid_bytes, index, &modulus, &exponent),
        };
        let key = match key {
            Ok(k) => k,
            Err(e) => return Ok(refuse(e.to_string())),
        };
        let rid = hex::encode_upper(rid_bytes);
        let object = format!("ca:{rid}/{index:02X}");
        let mut cas = ca_store(self.kv)?;
        if let Err(e) = cas.insert(key.clone()) {
            return Ok(refuse(e.to_string()));
        }
        let rec = CaKeyRecord {
            rid: rid.clone(),
            index,
            modulus: hex::encode_upper(key.public_key().modulus()),
            exponent: hex::encode_upper(key.public_key().exponent()),
            checksum: hex::encode_upper(key.checksum()),
            imported_by: ctx.actor.clone(),
            imported_ms: ctx.time_ms,
        };
        self.put(format!("{CA}{rid}/{index:02X}"), &rec)?;
        Ok(Ok(Applied::done(object, format!("{} bits, check value {}", key.public_key().len() * 8, rec.checksum))))
    }

    pub(super) fn issuer_key_create(
        &mut self,
        ctx: &Ctx<'_>,
        label: String,
        key: WrappedRsaKey,
        origin: Origin,
        tenant: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        if let Err(r) = check_id("label", &label) {
            return Ok(Err(r));
        }
        if let Err(r) = crate::identity::check_tenant(&tenant).and_then(|()| ctx.require_tenant(&tenant)) {
            return Ok(refuse(r));
        }
        let Some(smk) = self.get::<SmkInfo>(key::SMK)? else { return Ok(refuse("no SMK yet")) };
        if key.smk_kcv != smk.kcv {
            return Ok(refuse(format!(
                "the key is wrapped under an SMK with KCV {}, the cluster's is {}",
                key.smk_kcv, smk.kcv
            )));
        }
        let bits = key.public.bits();
        if !(512..=1984).contains(&bits) {
            return Ok(refuse(format!("an issuer key has 512 to 1984 bits, not {bits}")));
        }
        if self.get::<IssuerKeyRecord>(&format!("{ISSUER}{label}"))?.is_some() {
            return Ok(refuse(format!("issuer key {label} already exists")));
        }
        // The block must bind the key to the tenant the record gives it (an HSM opens it only
        // to sign, and only with its own public key: both bound in the header).
        if let Err(r) = bound_to(&key, &tenant, &format!("issuer key {label}: its block at rest")) {
            return Ok(refuse(r));
        }
        let fingerprint = key.public.fingerprint();
        let rec = IssuerKeyRecord {
            label: label.clone(),
            tenant,
            bits,
            fingerprint: fingerprint.clone(),
            key,
            origin,
            certificate: None,
            created_by: ctx.actor.clone(),
            created_ms: ctx.time_ms,
        };
        self.put(format!("{ISSUER}{label}"), &rec)?;
        Ok(Ok(Applied::done(format!("issuer:{label}"), format!("RSA-{bits}, public key {fingerprint}"))))
    }

    pub(super) fn issuer_request_signed(
        &mut self,
        ctx: &Ctx<'_>,
        label: String,
        what: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        match self.get::<IssuerKeyRecord>(&format!("{ISSUER}{label}"))?.filter(|k| ctx.tenants().covers(&k.tenant)) {
            None => Ok(refuse(format!("no issuer key {label}"))),
            Some(k) => Ok(Ok(Applied::done(
                format!("issuer:{label}"),
                format!("certification request self-signed with key {}: {what}", k.fingerprint),
            ))),
        }
    }

    pub(super) fn issuer_cert_import(
        &mut self,
        ctx: &Ctx<'_>,
        source: CertSource,
        bind: Option<String>,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        let cas = ca_store(self.kv)?;
        let (layout, verified) = match &source {
            CertSource::File { layout, bytes, rid } => {
                let Some(lay) = IssuerFileLayout::from_name(layout) else {
                    return Ok(refuse(format!("unknown issuer-file layout {layout:?} (visa, mastercard or unionpay)")));
                };
                let rid = match rid.as_deref().map(rid_of) {
                    None => lay.rid(),
                    Some(Ok(r)) => r,
                    Some(Err(r)) => return Ok(Err(r)),
                };
                (layout.clone(), cert::import_issuer_file_as(lay, rid, bytes, &cas).map(|f| f.certificate))
            }
            CertSource::Tags { rid, ca_index, cert, remainder, exponent } => {
                let rid = match rid_of(rid) {
                    Ok(r) => r,
                    Err(r) => return Ok(Err(r)),
                };
                ("tags".to_owned(), IssuerCertificate::recover(&cas, rid, *ca_index, cert, remainder, exponent))
            }
        };
        let certificate = match verified {
            Ok(c) => c,
            Err(e) => return Ok(refuse(format!("the certificate does not verify: {e}"))),
        };
        let c = &certificate;
        let public = RsaPublic::new(c.issuer_key().modulus(), c.issuer_key().exponent());
        let key_fingerprint = public.fingerprint();
        let rid = hex::encode_upper(c.rid());
        // Serials are unique per CA key, not per RID: two indexes of one scheme may each issue 000001.
        let id = format!("{rid}-{:02X}-{}-{}", c.ca_index(), c.issuer_id().digits(), hex::encode_upper(c.serial()));
        if super::ca::is_cert_revoked(self.kv, &rid, c.ca_index(), &hex::encode_upper(c.serial()))? {
            return Ok(refuse(format!(
                "certificate {} of CA key {rid}/{:02X} is revoked (on the CA's revocation list)",
                hex::encode_upper(c.serial()),
                c.ca_index()
            )));
        }
        let mut pair = None;
        if let Some(label) = &bind {
            match self.get::<IssuerKeyRecord>(&format!("{ISSUER}{label}"))?.filter(|k| ctx.tenants().covers(&k.tenant))
            {
                None => return Ok(refuse(format!("no issuer key {label}"))),
                Some(k) if k.key.public != public => {
                    return Ok(refuse(format!(
                        "the certificate certifies public key {key_fingerprint}, issuer key {label} is {}",
                        k.fingerprint
                    )));
                }
                Some(k) => pair = Some(k),
            }
        }
        if let Some(old) = self.get::<IssuerCertRecord>(&format!("{ISSUER_CERT}{id}"))? {
            if old.cert == hex::encode_upper(c.cert()) && old.key == bind {
                return Ok(Ok(Applied::done(format!("issuer-cert:{id}"), "already imported")));
            }
            return Ok(refuse(format!("certificate {id} is already imported (bound to {:?})", old.key)));
        }
        let expiry = c.expiry().to_mmyy();
        let rec = IssuerCertRecord {
            id: id.clone(),
            layout,
            rid: rid.clone(),
            ca_index: c.ca_index(),
            issuer_id: c.issuer_id().digits(),
            expiry: hex::encode_upper(expiry),
            serial: hex::encode_upper(c.serial()),
            cert: hex::encode_upper(c.cert()),
            remainder: hex::encode_upper(c.remainder()),
            exponent: hex::encode_upper(c.exponent()),
            key_fingerprint: key_fingerprint.clone(),
            key: bind.clone(),
            imported_by: ctx.actor.clone(),
            imported_ms: ctx.time_ms,
        };
        self.put(format!("{ISSUER_CERT}{id}"), &rec)?;
        if let Some(mut k) = pair {
            k.certificate = Some(id.clone());
            self.put(format!("{ISSUER}{}", k.label), &k)?;
        }
        let bound = bind.map(|l| format!(", bound to issuer key {l}")).unwrap_or_default();
        Ok(Ok(Applied::done(
            format!("issuer-cert:{id}"),
            format!(
                "verified with CA {rid}/{:02X}: issuer {}, expiry {}, key {key_fingerprint}{bound}",
                c.ca_index(),
                c.issuer_id().digits(),
                hex::encode_upper(expiry)
            ),
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::apply::{Ctx, apply};
    use crate::store::MemKv;

    fn admin() -> Actor {
        Actor { name: "ada".into(), role: Role::Admin }
    }

    fn run(kv: &mut MemKv, actor: &Actor, cmd: crate::keys::KeyCommand) -> Applied {
        apply(kv, &Ctx { log_index: 1, time_ms: 1000, actor, cert: None }, cmd).expect("apply")
    }

    fn fixture(name: &str) -> Vec<u8> {
        let p =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/scheme-test-certs").join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn file(layout: &str, name: &str) -> crate::keys::KeyCommand {
        crate::keys::KeyCommand::IssuerCertImport {
            source: CertSource::File { layout: layout.into(), bytes: fixture(name), rid: None },
            key: None,
        }
    }

    #[test]
    fn scheme_files_verify_and_an_unknown_ca_is_refused_without_a_change() {
        let mut kv = MemKv::default();
        let a = run(&mut kv, &admin(), file("visa", "960097.I94"));
        assert!(
            matches!(&a, Applied::Done { object, .. } if object == "issuer-cert:A000000003-94-42158493-03FE66"),
            "{a:?}"
        );
        let a = run(&mut kv, &admin(), file("mastercard", "522230-000001.cEF"));
        assert!(matches!(a, Applied::Done { .. }), "{a:?}");
        let before = scan::<IssuerCertRecord>(&kv, ISSUER_CERT).unwrap();
        assert_eq!(before.len(), 2);
        assert_eq!(before[0].expiry, "1232");
        match run(&mut kv, &admin(), file("visa", "016510.I04")) {
            Applied::Rejected { reason, .. } => assert!(reason.contains("no CA public key A000000003/04"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Importing the same file again is a no-op; an operator may not import.
        assert!(matches!(run(&mut kv, &admin(), file("visa", "960097.I94")), Applied::Done { .. }));
        let op = Actor { name: "otto".into(), role: Role::Operator };
        assert!(matches!(run(&mut kv, &op, file("visa", "960097.I94")), Applied::Rejected { .. }));
        // A flipped byte anywhere in the certificate is refused.
        let mut bad = fixture("522230-000001.cEF");
        let n = bad.len();
        bad[n - 100] ^= 1;
        let cmd = crate::keys::KeyCommand::IssuerCertImport {
            source: CertSource::File { layout: "mastercard".into(), bytes: bad, rid: None },
            key: None,
        };
        assert!(matches!(run(&mut kv, &admin(), cmd), Applied::Rejected { .. }));
        assert_eq!(scan::<IssuerCertRecord>(&kv, ISSUER_CERT).unwrap(), before);
    }

    #[test]
    fn a_unionpay_file_verifies_once_its_ca_key_is_imported() {
        let mut kv = MemKv::default();
        match run(&mut kv, &admin(), file("unionpay", "016510.I04")) {
            Applied::Rejected { reason, .. } => assert!(reason.contains("no CA public key A000000333/04"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // fixtures/scheme-test-certs/README.md: UnionPay TEST CA key 04, e = 3.
        let modulus = hex::decode(
            "BC853E6B5365E89E7EE9317C94B02D0ABB0DBD91C05A224A2554AA29ED9FCB9D86EB9CCBB322A57811F86188AAC7351C72BD9EF1\
             96C5A01ACEF7A4EB0D2AD63D9E6AC2E7836547CB1595C68BCBAFD0F6728760F3A7CA7B97301B7E0220184EFC4F653008D93CE098C0\
             D93B45201096D1ADFF4CF1F9FC02AF759DA27CD6DFD6D789B099F16F378B6100334E63F3D35F3251A5EC78693731F5233519CDB380\
             F5AB8C0F02728E91D469ABD0EAE0D93B1CC66CE127B29C7D77441A49D09FCA5D6D9762FC74C31BB506C8BAE3C79AD6C2578775B959\
             56B5370D1D0519E37906B384736233251E8F09AD79DFBE2C6ABFADAC8E4D8624318C27DAF1",
        )
        .unwrap();
        let ca = crate::keys::KeyCommand::CaKeyImport {
            rid: "A000000333".into(),
            index: 0x04,
            modulus,
            exponent: vec![3],
            checksum: None,
        };
        assert!(matches!(run(&mut kv, &admin(), ca), Applied::Done { .. }));
        let a = run(&mut kv, &admin(), file("unionpay", "016510.I04"));
        assert!(
            matches!(&a, Applied::Done { object, .. } if object == "issuer-cert:A000000333-04-62441902-016510"),
            "{a:?}"
        );
        assert_eq!(scan::<IssuerCertRecord>(&kv, ISSUER_CERT).unwrap()[0].layout, "unionpay");
        match run(&mut kv, &admin(), file("amex", "016510.I04")) {
            Applied::Rejected { reason, .. } => assert!(reason.contains("unknown issuer-file layout"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ca_keys_check_their_check_value_and_never_replace_a_held_key() {
        let mut kv = MemKv::default();
        let k = cert::SCHEME_TEST_CA_KEYS[0];
        let modulus = hex::decode(k.modulus).unwrap();
        let wrong = crate::keys::KeyCommand::CaKeyImport {
            rid: "A000000003".into(),
            index: 0x50,
            modulus: modulus.clone(),
            exponent: vec![3],
            checksum: Some(hex::decode(k.checksum).unwrap()),
        };
        // The check value covers the index: the same key under index 50 does not match it.
        assert!(matches!(run(&mut kv, &admin(), wrong), Applied::Rejected { .. }));
        let clash = crate::keys::KeyCommand::CaKeyImport {
            rid: "A000000003".into(),
            index: k.index,
            modulus: hex::decode(cert::SCHEME_TEST_CA_KEYS[3].modulus).unwrap(),
            exponent: vec![3],
            checksum: None,
        };
        match run(&mut kv, &admin(), clash) {
            Applied::Rejected { reason, .. } => assert!(reason.contains("A000000003"), "{reason}"),
            other => panic!("a built-in key was replaced: {other:?}"),
        }
        let fresh = crate::keys::KeyCommand::CaKeyImport {
            rid: "a000000004".into(),
            index: 0xFE,
            modulus,
            exponent: vec![3],
            checksum: None,
        };
        assert!(matches!(run(&mut kv, &admin(), fresh), Applied::Done { .. }));
        let held = scan::<CaKeyRecord>(&kv, CA).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].rid, "A000000004");
        assert!(ca_store(&kv).unwrap().get(*b"\xA0\x00\x00\x00\x04", 0xFE).is_some());
    }
}

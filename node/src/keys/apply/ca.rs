//! The cluster's own EMV CA: CA key pairs made in the HSMs, issuer certification under dual
//! control, revocation.
//!
//! - **CA keys** (`keys/ca-own/<RID>/<index>` → [`OwnCaKey`]): an RSA pair generated in a node's
//!   HSM by a CA officer; the private half rests only as a key block under the SMK, bound to the
//!   owner [`CA_OWNER`] (no tenant's name: a tenant's issuer-key paths never open it). Each key
//!   certifies issuers whose identifier is in its ranges, until its expiry; it is held in the CA
//!   key store like an imported scheme key, so this cluster verifies what it certified.
//! - **Certification**: a CA officer asks ([`ApprovalAction::Certify`]: the request's bytes, and
//!   the hash file for a Mastercard-style one, checked here in apply: self-signature, hash file,
//!   range, expiry); two custodians grant; the officer's [`KeyCommand::CaCertified`] takes the
//!   next serial of that CA key and records the issue. The HSM signs after apply (the same serial
//!   again if the officer asks again: raw RSA is deterministic, so the files are the same).
//! - **Revocation** (`keys/ca-revoked/<RID>/<index>/<serial>` → [`CaRevocation`]): of a serial
//!   this CA issued (CA officer), or entries of another CA's list (admin). A revoked serial is
//!   refused at issuer-certificate import and by data preparation.

use quill_prep::emv::ca::{IssuerRange, IssuerRequest, RequestFormat, Revocation};
use quill_prep::emv::cert::CertExpiry;

use super::issuers::{self, IssuerCertRecord};
use super::*;

/// `keys/ca-own/<RID>/<index>` → [`OwnCaKey`].
pub const OWN_CA: &str = "keys/ca-own/";
/// `keys/ca-revoked/<RID>/<index>/<serial>` → [`CaRevocation`].
pub const CA_REVOKED: &str = "keys/ca-revoked/";
/// The owner a CA private key's block at rest is bound to.
pub const CA_OWNER: &str = "emv-ca";
/// Highest serial a CA key issues (3 bytes).
const MAX_SERIAL: u32 = 0xFF_FFFF;

/// A CA key pair of this cluster's EMV CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnCaKey {
    /// RID, hex.
    pub rid: String,
    /// CA public key index.
    pub index: u8,
    /// Expiry, MMYY: it signs nothing after the end of that month.
    pub expiry: String,
    /// Issuer identifier ranges it certifies.
    pub ranges: Vec<String>,
    /// The pair: public key, private key as a block under the SMK.
    pub key: quill_hsm::WrappedRsaKey,
    /// SHA-1(RID ‖ index ‖ modulus ‖ exponent), hex.
    pub checksum: String,
    /// `false` once revoked (`quill ca key revoke`): it signs nothing more.
    pub active: bool,
    /// The next serial it gives.
    pub next_serial: u32,
    /// Every certificate it issued.
    pub issued: Vec<IssuedCert>,
    /// Where it was generated.
    pub origin: Origin,
    pub created_by: Actor,
    pub created_ms: u64,
}

impl OwnCaKey {
    /// The private key's block at rest, if its header binds it to the CA ([`CA_OWNER`]).
    pub fn block(&self) -> Result<&quill_hsm::WrappedRsaKey, String> {
        bound_to(&self.key, CA_OWNER, &format!("CA key {}: its block at rest", ca_id(&self.rid, self.index)))
    }
}

/// A certificate a CA key issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Serial, 6 hex digits.
    pub serial: String,
    pub issuer_id: String,
    /// MMYY.
    pub expiry: String,
    /// The index the issuer gave its key, 6 hex digits.
    pub key_index: String,
    /// The certified public key's fingerprint.
    pub key_fingerprint: String,
    /// The request's layout (`visa`, `mastercard`).
    pub format: String,
    /// The certification request, as received (the CA signs from it again on a repeat).
    pub request: Vec<u8>,
    /// The approval that allowed it.
    pub approval: String,
    pub by: Actor,
    pub time_ms: u64,
}

/// A revoked issuer certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRevocation {
    /// RID, hex.
    pub rid: String,
    pub index: u8,
    /// Serial, 6 hex digits.
    pub serial: String,
    pub reason: String,
    pub by: Actor,
    pub time_ms: u64,
    /// `own` (this CA revoked it) or `list` (an imported revocation list).
    pub source: String,
}

/// `RID/II`.
pub fn ca_id(rid: &str, index: u8) -> String {
    format!("{}/{index:02X}", rid.to_ascii_uppercase())
}

/// Whether the certificate `serial` of CA key (`rid`, `index`) is revoked.
pub fn is_cert_revoked(kv: &dyn Kv, rid: &str, index: u8, serial: &str) -> Result<bool, StoreError> {
    let key = format!("{CA_REVOKED}{}/{}", ca_id(rid, index), serial.to_ascii_uppercase());
    Ok(read::<CaRevocation>(kv, &key)?.is_some())
}

/// The end of an expiry month has passed at `time_ms` (leader time, UTC).
pub fn expired_at(expiry: CertExpiry, time_ms: u64) -> bool {
    let days = i64::try_from(time_ms / 86_400_000).unwrap_or(i64::MAX);
    let (y, m) = civil_from_days(days);
    (y, m) > (2000 + i64::from(expiry.year()), i64::from(expiry.month()))
}

/// Days since 1970-01-01 → (year, month) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

fn mmyy(s: &str) -> Option<CertExpiry> {
    let b = hex::decode(s).ok()?;
    CertExpiry::from_mmyy(b.try_into().ok()?)
}

/// A certification request as an approval carries it, checked against the CA key: the
/// self-signature, the hash file, the issuer range and the expiry.
pub fn check_request(
    ca: &OwnCaKey,
    format: &str,
    request: &[u8],
    hash_file: Option<&[u8]>,
    time_ms: u64,
) -> Result<IssuerRequest, String> {
    let id = ca_id(&ca.rid, ca.index);
    if !ca.active {
        return Err(format!("CA key {id} is revoked: it certifies nothing"));
    }
    let ca_expiry = mmyy(&ca.expiry).ok_or_else(|| format!("CA key {id}: expiry {:?} is not MMYY", ca.expiry))?;
    if expired_at(ca_expiry, time_ms) {
        return Err(format!("CA key {id} expired at the end of {ca_expiry}: it certifies nothing; make a new index"));
    }
    let format =
        RequestFormat::from_name(format).ok_or_else(|| format!("request format {format:?}: visa or mastercard"))?;
    let req = IssuerRequest::parse(format, request).map_err(|e| e.to_string())?;
    match (format, hash_file) {
        (RequestFormat::Mastercard, None) => {
            return Err("a Mastercard-style request is certified only with its hash file (checked out of band)".into());
        }
        (_, Some(h)) => req.check_hash_file(h).map_err(|e| e.to_string())?,
        (RequestFormat::Visa, None) => {}
    }
    let ranges: Vec<IssuerRange> = ca.ranges.iter().filter_map(|r| IssuerRange::parse(r).ok()).collect();
    if !ranges.iter().any(|r| r.contains(req.issuer_id)) {
        let list: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        return Err(format!(
            "issuer identifier {} is outside CA key {id}'s ranges ({})",
            req.issuer_id.digits(),
            list.join(", ")
        ));
    }
    if req.expiry > ca_expiry {
        return Err(format!(
            "the request asks for expiry {}, after CA key {id}'s ({ca_expiry}): a certificate never outlives its CA key",
            req.expiry
        ));
    }
    if expired_at(req.expiry, time_ms) {
        return Err(format!("the request asks for expiry {}, already past", req.expiry));
    }
    if req.key.len() > ca.key.public.bits() / 8 {
        return Err(format!(
            "the issuer key ({} bytes) is longer than CA key {id} ({} bytes)",
            req.key.len(),
            ca.key.public.bits() / 8
        ));
    }
    Ok(req)
}

impl State<'_> {
    fn own_ca(&self, rid: &str, index: u8) -> Result<Option<OwnCaKey>, StoreError> {
        self.get::<OwnCaKey>(&format!("{OWN_CA}{}", ca_id(rid, index)))
    }

    #[allow(clippy::too_many_arguments)] // the command's fields, as `key_create` takes them
    pub(super) fn ca_key_create(
        &mut self,
        ctx: &Ctx<'_>,
        rid: String,
        index: u8,
        expiry: String,
        ranges: Vec<String>,
        key: quill_hsm::WrappedRsaKey,
        origin: Origin,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::CaOfficer]) {
            return Ok(Err(r));
        }
        let rid_bytes = match hex::decode(&rid).ok().and_then(|v| <[u8; 5]>::try_from(v).ok()) {
            Some(r) => r,
            None => return Ok(refuse(format!("RID {rid:?} is not 5 bytes of hex"))),
        };
        let rid = hex::encode_upper(rid_bytes);
        let id = ca_id(&rid, index);
        let Some(exp) = mmyy(&expiry) else { return Ok(refuse(format!("expiry {expiry:?} is not MMYY"))) };
        if expired_at(exp, ctx.time_ms) {
            return Ok(refuse(format!("expiry {exp} is already past")));
        }
        if ranges.is_empty() {
            return Ok(refuse("a CA key certifies at least one issuer range (--issuer-range)"));
        }
        for r in &ranges {
            if let Err(e) = IssuerRange::parse(r) {
                return Ok(refuse(e));
            }
        }
        let Some(smk) = self.get::<SmkInfo>(key::SMK)? else { return Ok(refuse("no SMK yet")) };
        if key.smk_kcv != smk.kcv {
            return Ok(refuse(format!("the key is under SMK {}, the cluster's is {}", key.smk_kcv, smk.kcv)));
        }
        if let Err(r) = bound_to(&key, CA_OWNER, &format!("CA key {id}: its block at rest")) {
            return Ok(refuse(r));
        }
        let bits = key.public.bits();
        if !(512..=1984).contains(&bits) {
            return Ok(refuse(format!("a CA key has 512 to 1984 bits, not {bits}")));
        }
        let public = match quill_prep::emv::cert::CaPublicKey::new(
            rid_bytes,
            index,
            &key.public.modulus,
            &key.public.exponent,
        ) {
            Ok(k) => k,
            Err(e) => return Ok(refuse(e.to_string())),
        };
        if self.own_ca(&rid, index)?.is_some() {
            return Ok(refuse(format!("CA key {id} already exists: a new key takes a new index")));
        }
        // Not an index the cluster already holds, ours or a scheme's.
        let mut cas = issuers::ca_store(self.kv)?;
        if let Err(e) = cas.insert(public.clone()) {
            return Ok(refuse(e.to_string()));
        }
        let rec = OwnCaKey {
            rid,
            index,
            expiry: exp.to_string(),
            ranges,
            key,
            checksum: hex::encode_upper(public.checksum()),
            active: true,
            next_serial: 1,
            issued: Vec::new(),
            origin,
            created_by: ctx.actor.clone(),
            created_ms: ctx.time_ms,
        };
        self.put(format!("{OWN_CA}{id}"), &rec)?;
        Ok(Ok(Applied::done(
            format!("ca-key:{id}"),
            format!("RSA-{bits}, expiry {exp}, check value {}, ranges {}", rec.checksum, rec.ranges.join(", ")),
        )))
    }

    /// An approved certification: the next serial of the CA key, recorded. Again for the same
    /// approval: the same serial (the officer signs the files again).
    pub(super) fn ca_certified(&mut self, ctx: &Ctx<'_>, approval: String) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::CaOfficer]) {
            return Ok(Err(r));
        }
        let Some(mut a) = self.get::<Approval>(&format!("{}{approval}", key::APPROVAL))? else {
            return Ok(refuse(format!("no approval {approval}")));
        };
        let ApprovalAction::Certify { ca, format, request, hash_file, .. } = a.action.clone() else {
            return Ok(refuse(format!("approval {approval} is not a certification")));
        };
        let Some((rid, index)) =
            ca.split_once('/').and_then(|(r, i)| Some((r.to_string(), u8::from_str_radix(i, 16).ok()?)))
        else {
            return Ok(refuse(format!("approval {approval} names no CA key ({ca:?})")));
        };
        let Some(mut rec) = self.own_ca(&rid, index)? else { return Ok(refuse(format!("no CA key {ca} of this CA"))) };
        // A record whose block is not bound to the CA (edited at rest) records no certificate.
        if let Err(r) = rec.block() {
            return Ok(refuse(r));
        }
        if a.state == ApprovalState::Done {
            return match rec.issued.iter().find(|c| c.approval == approval) {
                Some(c) if !is_cert_revoked(self.kv, &rid, index, &c.serial)? => Ok(Ok(Applied::done(
                    format!("ca-cert:{}-{}-{}", rec.rid, rec.index, c.serial),
                    format!("serial {} (issued before; signed again)", c.serial),
                ))),
                Some(c) => Ok(refuse(format!("certificate {} of CA key {ca} is revoked", c.serial))),
                None => Ok(refuse(format!("approval {approval} is done"))),
            };
        }
        if a.state != ApprovalState::Approved {
            return Ok(refuse(format!(
                "approval {approval} is {:?}: a certification needs two custodians' grants",
                a.state
            )));
        }
        if let Err(r) = unexpired(&a, ctx) {
            return Ok(Err(r));
        }
        // Checked again: the CA key may have expired or been revoked since the request.
        let req = match check_request(&rec, &format, &request, hash_file.as_deref(), ctx.time_ms) {
            Ok(r) => r,
            Err(r) => return Ok(refuse(r)),
        };
        if rec.next_serial > MAX_SERIAL {
            return Ok(refuse(format!("CA key {ca} has issued every serial: make a new index")));
        }
        let serial = format!("{:06X}", rec.next_serial);
        rec.next_serial += 1;
        let fingerprint = RsaPublic::new(req.key.modulus(), req.key.exponent()).fingerprint();
        rec.issued.push(IssuedCert {
            serial: serial.clone(),
            issuer_id: req.issuer_id.digits(),
            expiry: req.expiry.to_string(),
            key_index: hex::encode_upper(req.key_index),
            key_fingerprint: fingerprint.clone(),
            format,
            request,
            approval: approval.clone(),
            by: ctx.actor.clone(),
            time_ms: ctx.time_ms,
        });
        self.put(format!("{OWN_CA}{}", ca_id(&rid, index)), &rec)?;
        a.state = ApprovalState::Done;
        self.put(format!("{}{approval}", key::APPROVAL), &a)?;
        Ok(Ok(Applied::done(
            format!("ca-cert:{}-{}-{serial}", rec.rid, rec.index),
            format!("serial {serial}: issuer {}, expiry {}, key {fingerprint}", req.issuer_id.digits(), req.expiry),
        )))
    }

    /// Retire one of this CA's keys (CA officer), for good: it certifies nothing more (a pending
    /// certification is refused when it is made) and leaves this cluster's CA key store.
    pub(super) fn ca_key_revoke(
        &mut self,
        ctx: &Ctx<'_>,
        rid: String,
        index: u8,
        reason: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::CaOfficer]) {
            return Ok(Err(r));
        }
        let id = ca_id(&rid, index);
        if reason.trim().is_empty() || reason.len() > 200 {
            return Ok(refuse("a CA key is revoked with a reason of at most 200 bytes"));
        }
        let Some(mut rec) = self.own_ca(&rid, index)? else { return Ok(refuse(format!("no CA key {id} of this CA"))) };
        if !rec.active {
            return Ok(refuse(format!("CA key {id} is already revoked")));
        }
        rec.active = false;
        self.put(format!("{OWN_CA}{id}"), &rec)?;
        Ok(Ok(Applied::done(
            format!("ca-key:{id}"),
            format!("revoked ({reason}); it issued {} certificate(s), none is signed again", rec.issued.len()),
        )))
    }

    /// Revoke a certificate this CA issued (CA officer), or record another CA's revoked serials
    /// from its list (admin).
    pub(super) fn ca_revoke(
        &mut self,
        ctx: &Ctx<'_>,
        entries: Vec<(String, u8, String)>,
        reason: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::CaOfficer, Role::Admin]) {
            return Ok(Err(r));
        }
        if entries.is_empty() || entries.len() > 10_000 {
            return Ok(refuse(format!("{} revocations: 1 to 10,000 at a time", entries.len())));
        }
        let own = ctx.actor.role == Role::CaOfficer;
        let mut added = 0;
        for (rid, index, serial) in &entries {
            let serial = serial.to_ascii_uppercase();
            let rid = rid.to_ascii_uppercase();
            if hex::decode(&rid).map(|v| v.len()) != Ok(5) || hex::decode(&serial).map(|v| v.len()) != Ok(3) {
                return Ok(refuse(format!(
                    "revocation {rid}/{index:02X}/{serial}: RID is 5 bytes and serial 3 bytes of hex"
                )));
            }
            let id = ca_id(&rid, *index);
            if own {
                let Some(rec) = self.own_ca(&rid, *index)? else {
                    return Ok(refuse(format!(
                        "no CA key {id} of this CA: an officer revokes only its own certificates"
                    )));
                };
                if !rec.issued.iter().any(|c| c.serial == serial) {
                    return Ok(refuse(format!("CA key {id} issued no certificate {serial}")));
                }
            }
            let path = format!("{CA_REVOKED}{id}/{serial}");
            if self.get::<CaRevocation>(&path)?.is_some() {
                continue;
            }
            let rec = CaRevocation {
                rid: rid.clone(),
                index: *index,
                serial,
                reason: reason.clone(),
                by: ctx.actor.clone(),
                time_ms: ctx.time_ms,
                source: if own { "own" } else { "list" }.into(),
            };
            self.put(path, &rec)?;
            added += 1;
        }
        let first = &entries[0];
        Ok(Ok(Applied::done(
            format!("ca-revoked:{}/{}", ca_id(&first.0, first.1), first.2.to_ascii_uppercase()),
            format!("{added} certificate serial(s) revoked ({} already were): {reason}", entries.len() - added),
        )))
    }
}

/// The revocation list of CA key (`rid`, `index`), or of every CA key: 9-byte entries.
pub fn revocation_list(kv: &dyn Kv, ca: Option<(&str, u8)>) -> Result<Vec<Revocation>, StoreError> {
    let prefix = match ca {
        Some((rid, index)) => format!("{CA_REVOKED}{}/", ca_id(rid, index)),
        None => CA_REVOKED.to_string(),
    };
    Ok(scan::<CaRevocation>(kv, &prefix)?
        .into_iter()
        .filter_map(|r| {
            Some(Revocation {
                rid: hex::decode(&r.rid).ok()?.try_into().ok()?,
                ca_index: r.index,
                serial: hex::decode(&r.serial).ok()?.try_into().ok()?,
            })
        })
        .collect())
}

/// A certificate record (imported) whose serial its CA revoked.
pub fn cert_revoked(kv: &dyn Kv, c: &IssuerCertRecord) -> Result<bool, StoreError> {
    is_cert_revoked(kv, &c.rid, c.ca_index, &c.serial)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::apply::{Ctx, apply};
    use crate::store::MemKv;
    use openssl::bn::BigNum;
    use openssl::pkey::Private;
    use openssl::rsa::{Padding, Rsa};
    use quill_prep::emv::cert::{IssuerId, RawRsaSigner, RsaPublicKey};

    struct Soft(Rsa<Private>);

    impl RawRsaSigner for Soft {
        type Error = openssl::error::ErrorStack;
        fn sign_raw(&self, block: &[u8]) -> Result<Vec<u8>, Self::Error> {
            let mut out = vec![0; self.0.size() as usize];
            let n = self.0.private_encrypt(block, &mut out, Padding::NONE)?;
            out.truncate(n);
            Ok(out)
        }
        fn modulus_len(&self) -> usize {
            self.0.size() as usize
        }
    }

    fn rsa(bits: u32) -> Rsa<Private> {
        Rsa::generate_with_e(bits, &BigNum::from_u32(3).unwrap()).unwrap()
    }

    fn who(role: Role, name: &str) -> Actor {
        Actor { name: name.into(), role }
    }

    /// 2026-12-07 (leader time of these tests).
    const NOW: u64 = 1_796_601_600_000;

    fn run_at(kv: &mut MemKv, actor: &Actor, time_ms: u64, cmd: KeyCommand) -> Applied {
        let cert = crate::identity::CertRef {
            serial: format!("{actor}"),
            key_fp: format!("key of {actor}"),
            tenants: crate::identity::Tenants::All,
        };
        apply(kv, &Ctx { log_index: 1, time_ms, actor, cert: Some(&cert) }, cmd).unwrap()
    }

    fn run(kv: &mut MemKv, actor: &Actor, cmd: KeyCommand) -> Applied {
        run_at(kv, actor, NOW, cmd)
    }

    fn ok(a: Applied) -> String {
        match a {
            Applied::Done { detail, .. } => detail,
            Applied::Rejected { reason, .. } => panic!("refused: {reason}"),
        }
    }

    fn refused(a: Applied) -> String {
        match a {
            Applied::Rejected { reason, .. } => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// A private key's block at rest as an HSM writes it, bound to `owner` (filler key data: apply
    /// reads only the header).
    fn block(public: RsaPublic, owner: &str) -> quill_hsm::WrappedRsaKey {
        use quill_hsm::tr31::{self, Kbpk, Tr31Header};
        let template = format!("D0000S0RS00N02100P44{}0T{:02X}{owner}", public.fingerprint(), 4 + owner.len());
        let h = Tr31Header::parse_template(template.as_bytes()).unwrap();
        let blob = tr31::wrap(Kbpk::Aes(&[1; 32]), &h, &[0x30; 300], None, &mut |b: &mut [u8]| b.fill(3)).unwrap();
        quill_hsm::WrappedRsaKey { public, blob: blob.into_bytes(), smk_kcv: Kcv("AAAAAAAAAA".into()) }
    }

    /// A state with the SMK's facts (KCV AAAAAAAAAA) and nothing else.
    fn state() -> MemKv {
        let mut kv = MemKv::default();
        let smk = SmkInfo {
            kcv: Kcv("AAAAAAAAAA".into()),
            ceremony: "s".into(),
            formed_ms: 1,
            next: None,
            retired: Vec::new(),
        };
        kv.put(key::SMK.as_bytes(), crate::store::codec::encode(&smk).unwrap());
        kv
    }

    fn create(rid: &str, index: u8, expiry: &str, ranges: &[&str], key: quill_hsm::WrappedRsaKey) -> KeyCommand {
        KeyCommand::CaKeyCreate {
            rid: rid.into(),
            index,
            expiry: expiry.into(),
            ranges: ranges.iter().map(|r| r.to_string()).collect(),
            key,
            origin: Origin::Generated { node: 1 },
        }
    }

    fn request(format: RequestFormat, issuer: &Rsa<Private>, id: &str, expiry: [u8; 2]) -> (IssuerRequest, Vec<u8>) {
        let req = IssuerRequest {
            format,
            issuer_id: IssuerId::from_digits(id).unwrap(),
            key_index: [0, 0, 1],
            expiry: CertExpiry::from_mmyy(expiry).unwrap(),
            key: RsaPublicKey::new(&issuer.n().to_vec(), &[3]).unwrap(),
        };
        let bytes = req.build(&Soft(issuer.clone())).unwrap();
        (req, bytes)
    }

    fn ask(id: &str, req: &IssuerRequest, bytes: &[u8], hash_file: Option<Vec<u8>>) -> KeyCommand {
        KeyCommand::ApprovalRequest {
            id: id.into(),
            action: ApprovalAction::Certify {
                ca: "A000000999/E1".into(),
                format: req.format.name().into(),
                request: bytes.to_vec(),
                hash_file,
                issuer_id: req.issuer_id.digits(),
                expiry: req.expiry.to_string(),
                key_fingerprint: RsaPublic::new(req.key.modulus(), req.key.exponent()).fingerprint(),
            },
            ttl_ms: 0,
        }
    }

    fn grant(kv: &mut MemKv, id: &str) {
        for c in ["alice", "bob"] {
            ok(run(kv, &who(Role::Custodian, c), KeyCommand::ApprovalDecide { id: id.into(), grant: true }));
        }
    }

    #[test]
    fn a_ca_key_is_made_by_a_ca_officer_bound_to_the_ca_and_never_over_a_held_index() {
        let mut kv = state();
        let (carla, ada) = (who(Role::CaOfficer, "carla"), who(Role::Admin, "ada"));
        let k = rsa(1152);
        let public = RsaPublic::new(&k.n().to_vec(), &[3]);
        let good = || block(public.clone(), CA_OWNER);
        assert!(
            refused(run(&mut kv, &ada, create("A000000999", 0xE1, "1230", &["4761"], good()))).contains("ca-officer")
        );
        let r = refused(run(&mut kv, &carla, create("A0000009", 0xE1, "1230", &["4761"], good())));
        assert!(r.contains("5 bytes"), "{r}");
        let r = refused(run(&mut kv, &carla, create("A000000999", 0xE1, "1126", &["4761"], good())));
        assert!(r.contains("already past"), "{r}");
        let r = refused(run(&mut kv, &carla, create("A000000999", 0xE1, "1230", &[], good())));
        assert!(r.contains("at least one issuer range"), "{r}");
        let r = refused(run(&mut kv, &carla, create("A000000999", 0xE1, "1230", &["47-48"], good())));
        assert!(r.contains("issuer range"), "{r}");
        // A block bound to a tenant (an issuer key's) is not a CA key.
        let r = refused(run(
            &mut kv,
            &carla,
            create("A000000999", 0xE1, "1230", &["4761"], block(public.clone(), "bank-a")),
        ));
        assert!(r.contains("belongs to tenant \"bank-a\""), "{r}");
        // The Visa TEST CA key 94 is built in: that index is taken.
        let r = refused(run(&mut kv, &carla, create("A000000003", 0x94, "1230", &["4761"], good())));
        assert!(r.contains("A000000003"), "{r}");
        ok(run(&mut kv, &carla, create("a000000999", 0xE1, "1230", &["476100-476199"], good())));
        let r = refused(run(&mut kv, &carla, create("A000000999", 0xE1, "1230", &["4761"], good())));
        assert!(r.contains("A000000999"), "{r}");
        let rec: OwnCaKey = read(&kv, &format!("{OWN_CA}A000000999/E1")).unwrap().unwrap();
        assert_eq!((rec.rid.as_str(), rec.next_serial, rec.expiry.as_str()), ("A000000999", 1, "1230"));
        assert!(rec.block().is_ok());
        // Its public key is in the CA key store: this cluster verifies what it certifies.
        assert!(issuers::ca_store(&kv).unwrap().get([0xA0, 0, 0, 9, 0x99], 0xE1).is_some());
    }

    #[test]
    fn certification_checks_the_request_and_takes_serials_in_order() {
        let mut kv = state();
        let carla = who(Role::CaOfficer, "carla");
        let ca = rsa(1408);
        ok(run(
            &mut kv,
            &carla,
            create(
                "A000000999",
                0xE1,
                "1230",
                &["476100-476199"],
                block(RsaPublic::new(&ca.n().to_vec(), &[3]), CA_OWNER),
            ),
        ));
        let issuer = rsa(1152);
        let (req, bytes) = request(RequestFormat::Visa, &issuer, "476173", [0x12, 0x29]);

        // Who may ask, and what is checked when asked.
        let r = refused(run(&mut kv, &who(Role::Admin, "ada"), ask("a0", &req, &bytes, None)));
        assert!(r.contains("ca-officer"), "{r}");
        let (out, out_bytes) = request(RequestFormat::Visa, &issuer, "476273", [0x12, 0x29]);
        let r = refused(run(&mut kv, &carla, ask("a1", &out, &out_bytes, None)));
        assert!(r.contains("outside CA key A000000999/E1's ranges (476100-476199)"), "{r}");
        let (late, late_bytes) = request(RequestFormat::Visa, &issuer, "476173", [0x01, 0x31]);
        let r = refused(run(&mut kv, &carla, ask("a2", &late, &late_bytes, None)));
        assert!(r.contains("never outlives its CA key"), "{r}");
        let mut forged = bytes.clone();
        let n = forged.len();
        forged[n - 5] ^= 1;
        let r = refused(run(&mut kv, &carla, ask("a3", &req, &forged, None)));
        assert!(r.contains("self-signature"), "{r}");
        let (mc, mc_bytes) = request(RequestFormat::Mastercard, &issuer, "476173", [0x12, 0x29]);
        let r = refused(run(&mut kv, &carla, ask("a4", &mc, &mc_bytes, None)));
        assert!(r.contains("only with its hash file"), "{r}");
        let mut wrong_hash = mc.hash_file();
        wrong_hash[26] ^= 1;
        let r = refused(run(&mut kv, &carla, ask("a5", &mc, &mc_bytes, Some(wrong_hash))));
        assert!(r.contains("hash file"), "{r}");
        // The summary the custodians read must be the request's.
        let mut lying = ask("a6", &req, &bytes, None);
        if let KeyCommand::ApprovalRequest { action: ApprovalAction::Certify { issuer_id, .. }, .. } = &mut lying {
            *issuer_id = "476199".into();
        }
        assert!(refused(run(&mut kv, &carla, lying)).contains("summary"));

        // Asked, granted by two custodians, made: serial 000001, then 000002.
        ok(run(&mut kv, &carla, ask("v", &req, &bytes, None)));
        let r = refused(run(&mut kv, &carla, KeyCommand::CaCertified { approval: "v".into() }));
        assert!(r.contains("two custodians"), "{r}");
        grant(&mut kv, "v");
        let d = ok(run(&mut kv, &carla, KeyCommand::CaCertified { approval: "v".into() }));
        assert!(d.contains("serial 000001"), "{d}");
        // Again for the same approval: the same serial.
        let d = ok(run(&mut kv, &carla, KeyCommand::CaCertified { approval: "v".into() }));
        assert!(d.contains("serial 000001") && d.contains("signed again"), "{d}");
        ok(run(&mut kv, &carla, ask("m", &mc, &mc_bytes, Some(mc.hash_file()))));
        grant(&mut kv, "m");
        let d = ok(run(&mut kv, &carla, KeyCommand::CaCertified { approval: "m".into() }));
        assert!(d.contains("serial 000002"), "{d}");
        let rec: OwnCaKey = read(&kv, &format!("{OWN_CA}A000000999/E1")).unwrap().unwrap();
        let serials: Vec<&str> = rec.issued.iter().map(|c| c.serial.as_str()).collect();
        assert_eq!(serials, ["000001", "000002"]);
        assert_eq!(rec.next_serial, 3);

        // Revocation: only a serial this CA issued; then the repeat of its approval is refused.
        let revoke = |serial: &str| KeyCommand::CaRevoke {
            entries: vec![("A000000999".into(), 0xE1, serial.into())],
            reason: "key compromise".into(),
        };
        assert!(refused(run(&mut kv, &carla, revoke("000009"))).contains("issued no certificate 000009"));
        ok(run(&mut kv, &carla, revoke("000001")));
        assert!(is_cert_revoked(&kv, "A000000999", 0xE1, "000001").unwrap());
        assert!(!is_cert_revoked(&kv, "A000000999", 0xE1, "000002").unwrap());
        let r = refused(run(&mut kv, &carla, KeyCommand::CaCertified { approval: "v".into() }));
        assert!(r.contains("revoked"), "{r}");
        let list = revocation_list(&kv, Some(("A000000999", 0xE1))).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(hex::encode_upper(list[0].bytes()), "A000000999E1000001");
        // An operator may revoke nothing; an admin records another CA's list.
        assert!(refused(run(&mut kv, &who(Role::Operator, "otto"), revoke("000002"))).contains("role"));
        let other = KeyCommand::CaRevoke {
            entries: vec![("A000000003".into(), 0x94, "03FE66".into())],
            reason: "Visa list".into(),
        };
        ok(run(&mut kv, &who(Role::Admin, "ada"), other));
        assert!(is_cert_revoked(&kv, "A000000003", 0x94, "03FE66").unwrap());
    }

    #[test]
    fn an_expired_ca_key_signs_nothing() {
        let mut kv = state();
        let carla = who(Role::CaOfficer, "carla");
        let ca = rsa(1152);
        ok(run(
            &mut kv,
            &carla,
            create("A000000999", 0xE1, "0127", &["4761"], block(RsaPublic::new(&ca.n().to_vec(), &[3]), CA_OWNER)),
        ));
        let issuer = rsa(1024);
        let (req, bytes) = request(RequestFormat::Visa, &issuer, "476173", [0x01, 0x27]);
        ok(run(&mut kv, &carla, ask("v", &req, &bytes, None)));
        grant(&mut kv, "v");
        // February 2027: the CA key expired at the end of January.
        let feb = NOW + 62 * 86_400_000;
        let r = refused(run_at(&mut kv, &carla, feb, KeyCommand::CaCertified { approval: "v".into() }));
        assert!(r.contains("expired"), "{r}");
        let rec: OwnCaKey = read(&kv, &format!("{OWN_CA}A000000999/E1")).unwrap().unwrap();
        assert!(rec.issued.is_empty() && rec.next_serial == 1, "nothing was issued");
        assert!(expired_at(CertExpiry::from_mmyy([0x01, 0x27]).unwrap(), feb));
        assert!(!expired_at(CertExpiry::from_mmyy([0x01, 0x27]).unwrap(), NOW));
        assert!(!expired_at(CertExpiry::from_mmyy([0x12, 0x26]).unwrap(), NOW), "the last day of the month");
    }

    #[test]
    fn a_revoked_ca_key_or_one_edited_at_rest_certifies_nothing() {
        let mut kv = state();
        let carla = who(Role::CaOfficer, "carla");
        let ca = rsa(1152);
        let public = RsaPublic::new(&ca.n().to_vec(), &[3]);
        ok(run(&mut kv, &carla, create("A000000999", 0xE1, "1230", &["4761"], block(public.clone(), CA_OWNER))));
        let issuer = rsa(1024);
        let (req, bytes) = request(RequestFormat::Visa, &issuer, "476173", [0x12, 0x29]);
        ok(run(&mut kv, &carla, ask("v", &req, &bytes, None)));
        grant(&mut kv, "v");

        // The record edited at rest: another owner's block under the CA's public key.
        let at = format!("{OWN_CA}A000000999/E1");
        let good: OwnCaKey = read(&kv, &at).unwrap().unwrap();
        let edited = OwnCaKey { key: block(public.clone(), "bank-a"), ..good.clone() };
        crate::store::put_typed(&mut kv, at.as_bytes(), &edited).unwrap();
        let r = refused(run(&mut kv, &carla, KeyCommand::CaCertified { approval: "v".into() }));
        assert!(r.contains("belongs to tenant \"bank-a\"") && r.contains("altered"), "{r}");
        let rec: OwnCaKey = read(&kv, &at).unwrap().unwrap();
        assert!(rec.issued.is_empty(), "nothing recorded as issued");
        crate::store::put_typed(&mut kv, at.as_bytes(), &good).unwrap();

        // Revoked: by a CA officer only, with a reason, once.
        let revoke =
            |reason: &str| KeyCommand::CaKeyRevoke { rid: "A000000999".into(), index: 0xE1, reason: reason.into() };
        assert!(refused(run(&mut kv, &who(Role::Admin, "ada"), revoke("x"))).contains("ca-officer"));
        assert!(refused(run(&mut kv, &carla, revoke(" "))).contains("reason"));
        let none = KeyCommand::CaKeyRevoke { rid: "A000000999".into(), index: 0xE7, reason: "x".into() };
        assert!(refused(run(&mut kv, &carla, none)).contains("no CA key A000000999/E7"));
        assert!(issuers::ca_store(&kv).unwrap().get([0xA0, 0, 0, 9, 0x99], 0xE1).is_some());
        let d = ok(run(&mut kv, &carla, revoke("key compromise")));
        assert!(d.contains("key compromise"), "{d}");
        assert!(refused(run(&mut kv, &carla, revoke("again"))).contains("already revoked"));
        // The granted certification is refused when made; nothing new is asked; the key left the store.
        let r = refused(run(&mut kv, &carla, KeyCommand::CaCertified { approval: "v".into() }));
        assert!(r.contains("revoked"), "{r}");
        let r = refused(run(&mut kv, &carla, ask("w", &req, &bytes, None)));
        assert!(r.contains("revoked"), "{r}");
        assert!(issuers::ca_store(&kv).unwrap().get([0xA0, 0, 0, 9, 0x99], 0xE1).is_none());
        let rec: OwnCaKey = read(&kv, &at).unwrap().unwrap();
        assert!(!rec.active && rec.issued.is_empty());
    }
}

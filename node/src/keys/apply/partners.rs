//! Partner key exchange (GIE-CB style): working keys travel between the bureau and a partner
//! system as TR-31 blocks under a zone master key the two formed by a component ceremony.
//!
//! - **Partners** (`keys/partner/<name>` → [`PartnerRecord`]): an admin names the partner (the
//!   name its `partner:<name>` certificate carries) and its ZMK: an active K0 key formed from
//!   components (never generated or imported: both sides hold the same components).
//! - **Sharing**: an admin shares a key with a partner; the partner sees and exports only keys
//!   shared with it and the keys it imported. A key the inventory holds non-exportable (made so,
//!   or imported from a block whose header says `N`) is never shared nor exported.
//! - **Import**: the partner's block is opened under its ZMK in a node's HSM; the key is filed
//!   with the usage and exportability of the block's authenticated header (never a request
//!   field), in the ZMK's tenant, as `<partner>.<label>`.
//! - Every exchange is in the audit chain with the key's KCV ([`KeyCommand::PartnerExported`]).

use super::*;

/// `keys/partner/<name>` → [`PartnerRecord`].
pub const PARTNER: &str = "keys/partner/";

/// A partner system and what it may exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerRecord {
    /// The name in its `partner:<name>` certificate.
    pub name: String,
    /// Its zone master key (inventory id).
    pub zmk: String,
    /// Keys shared with it (inventory ids).
    pub shared: Vec<String>,
    /// Keys it imported (inventory ids).
    pub imported: Vec<String>,
    pub created_by: Actor,
    pub created_ms: u64,
    /// Its pinned TR-34-style signing key, with which it may establish its zone master key.
    #[serde(default)]
    pub kdh: Option<RsaPublic>,
    /// Nonces of the transport envelopes taken from it, newest last (the last [`NONCES_KEPT`]):
    /// an envelope is taken once.
    #[serde(default)]
    pub nonces: Vec<String>,
}

/// How many envelope nonces a partner record keeps (an envelope older than an hour is refused
/// by its time anyway).
pub const NONCES_KEPT: usize = 256;

impl PartnerRecord {
    /// Whether the partner may see key `id`.
    pub fn sees(&self, id: &str) -> bool {
        self.shared.iter().chain(&self.imported).any(|k| k == id)
    }
}

impl State<'_> {
    pub(super) fn partner(&self, name: &str) -> Result<Option<PartnerRecord>, StoreError> {
        self.get::<PartnerRecord>(&format!("{PARTNER}{name}"))
    }

    /// Name a partner and its ZMK (admin); again: a new ZMK for it (the old one is no longer used).
    pub(super) fn partner_set(
        &mut self,
        ctx: &Ctx<'_>,
        name: String,
        zmk: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        if let Err(r) = check_id("partner", &name) {
            return Ok(Err(r));
        }
        let z = match self.key(ctx, &zmk)? {
            Ok(z) => z,
            Err(r) => return Ok(Err(r)),
        };
        if z.usage != Usage::K0 || z.state != KeyState::Active {
            return Ok(refuse(format!(
                "{zmk} is a {} key in state {}: a zone master key is an active K0",
                z.usage,
                z.state.as_str()
            )));
        }
        if !matches!(z.origin, Origin::Components { .. }) {
            return Ok(refuse(format!(
                "{zmk} was not formed from components: a zone master key comes from a ceremony both sides hold the components of"
            )));
        }
        let rec = match self.partner(&name)? {
            Some(mut p) => {
                p.zmk = zmk.clone();
                p
            }
            None => PartnerRecord {
                name: name.clone(),
                zmk: zmk.clone(),
                shared: Vec::new(),
                imported: Vec::new(),
                created_by: ctx.actor.clone(),
                created_ms: ctx.time_ms,
                kdh: None,
                nonces: Vec::new(),
            },
        };
        self.put(format!("{PARTNER}{name}"), &rec)?;
        Ok(Ok(Applied::done(format!("partner:{name}"), format!("zone master key {zmk} (KCV {})", z.kcv))))
    }

    /// Pin a partner's TR-34-style signing key (admin). A new partner has no zone master key
    /// until it sends one ([`State::partner_kbpk_received`]).
    pub(super) fn partner_kdh_set(
        &mut self,
        ctx: &Ctx<'_>,
        name: String,
        kdh: RsaPublic,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        if let Err(r) = check_id("partner", &name) {
            return Ok(Err(r));
        }
        if kdh.bits() < 2048 {
            return Ok(refuse(format!("a signing key of {} bits: at least 2048", kdh.bits())));
        }
        let fp = kdh.fingerprint();
        let rec = match self.partner(&name)? {
            Some(mut p) => {
                p.kdh = Some(kdh);
                p
            }
            None => PartnerRecord {
                name: name.clone(),
                zmk: String::new(),
                shared: Vec::new(),
                imported: Vec::new(),
                created_by: ctx.actor.clone(),
                created_ms: ctx.time_ms,
                kdh: Some(kdh),
                nonces: Vec::new(),
            },
        };
        self.put(format!("{PARTNER}{name}"), &rec)?;
        Ok(Ok(Applied::done(format!("partner:{name}"), format!("signing key for KBPK transport pinned, SHA-256 {fp}"))))
    }

    /// A KBPK the partner sent by TR-34-style transport (actor: the partner), its envelope's
    /// signature, address, time and check value checked by the node that opened it: filed as
    /// `<partner>.kbpk` (K1, not exportable) and made the partner's zone master key. Refused
    /// unless the partner's pinned signing key is the one named, and for a nonce seen before.
    pub(super) fn partner_kbpk_received(
        &mut self,
        ctx: &Ctx<'_>,
        wrapped: WrappedKey,
        kdh: String,
        nonce: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Partner]) {
            return Ok(Err(r));
        }
        let name = ctx.actor.name.clone();
        let Some(mut p) = self.partner(&name)? else { return Ok(refuse(format!("no partner {name}"))) };
        let Some(pinned) = p.kdh.as_ref().map(RsaPublic::fingerprint) else {
            return Ok(refuse(format!("partner {name} has no pinned signing key (quill exchange kdh)")));
        };
        if !kdh.eq_ignore_ascii_case(&pinned) {
            return Ok(refuse(format!(
                "signed with key {}, not partner {name}'s pinned signing key {pinned}",
                crate::domain::clip(&kdh)
            )));
        }
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(refuse("the envelope's nonce is 32 hex digits"));
        }
        let nonce = nonce.to_ascii_uppercase();
        if p.nonces.contains(&nonce) {
            return Ok(refuse(format!("envelope {nonce} from partner {name} was taken before: a replay")));
        }
        let origin = Origin::TransportReceived { partner: name.clone(), kdh: pinned };
        let new = NewKey::transported_kbpk(format!("{name}.kbpk"), origin, wrapped);
        let (id, detail) = match self.key_filed(ctx, new)? {
            Ok(filed) => filed,
            Err(step) => return Ok(step),
        };
        p.nonces.push(nonce);
        if p.nonces.len() > NONCES_KEPT {
            p.nonces.remove(0);
        }
        p.zmk = id.clone();
        self.put(format!("{PARTNER}{name}"), &p)?;
        Ok(Ok(Applied::done(format!("key:{id}"), format!("zone master key of partner {name} by transport: {detail}"))))
    }

    /// Share a key with a partner, or stop sharing it (admin).
    pub(super) fn partner_share(
        &mut self,
        ctx: &Ctx<'_>,
        name: String,
        key_id: String,
        share: bool,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        let Some(mut p) = self.partner(&name)? else { return Ok(refuse(format!("no partner {name}"))) };
        let k = match self.key(ctx, &key_id)? {
            Ok(k) => k,
            Err(r) => return Ok(Err(r)),
        };
        if share {
            if !k.exportable {
                return Ok(refuse(format!("{key_id} is not exportable: it is never shared with a partner")));
            }
            let z = self.get::<KeyRecord>(&format!("{}{}", key::KEY, p.zmk))?;
            if z.as_ref().is_none_or(|z| z.tenant != k.tenant) {
                return Ok(refuse(format!("{key_id} is not of the tenant of {name}'s zone master key {}", p.zmk)));
            }
            if !p.shared.contains(&key_id) {
                p.shared.push(key_id.clone());
            }
        } else {
            p.shared.retain(|s| *s != key_id);
        }
        self.put(format!("{PARTNER}{name}"), &p)?;
        let what = if share { "shared with" } else { "no longer shared with" };
        Ok(Ok(Applied::done(format!("key:{key_id}"), format!("{what} partner {name} (KCV {})", k.kcv))))
    }

    /// A partner's block opened under its ZMK in a node's HSM (actor: the partner).
    pub(super) fn partner_imported(
        &mut self,
        ctx: &Ctx<'_>,
        label: String,
        usage: Usage,
        exportable: bool,
        wrapped: WrappedKey,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Partner]) {
            return Ok(Err(r));
        }
        let name = ctx.actor.name.clone();
        let Some(mut p) = self.partner(&name)? else { return Ok(refuse(format!("no partner {name}"))) };
        let Some(z) = self.get::<KeyRecord>(&format!("{}{}", key::KEY, p.zmk))? else {
            return Ok(refuse(format!("partner {name}'s zone master key {} is gone", p.zmk)));
        };
        if z.state != KeyState::Active {
            return Ok(refuse(format!("partner {name}'s zone master key {} is {}", p.zmk, z.state.as_str())));
        }
        if let Err(r) = check_id("label", &label) {
            return Ok(Err(r));
        }
        let label = format!("{name}.{label}");
        // Filed as an import under the ZMK, in its tenant, by the partner.
        let origin = Origin::Tr31 { kbpk: p.zmk.clone() };
        let new = NewKey { label, usage, exportable, origin, wrapped, active: true, tenant: z.tenant.clone() };
        let (id, detail) = match self.key_filed(ctx, new)? {
            Ok(filed) => filed,
            Err(step) => return Ok(step),
        };
        p.imported.push(id.clone());
        self.put(format!("{PARTNER}{name}"), &p)?;
        Ok(Ok(Applied::done(format!("key:{id}"), format!("imported from partner {name} under {}: {detail}", p.zmk))))
    }

    /// A key left for a partner as a TR-31 block (actor: the partner), for the audit chain with
    /// the KCV; refused unless the partner may see it and it is exportable.
    pub(super) fn partner_exported(&mut self, ctx: &Ctx<'_>, key_id: String) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Partner]) {
            return Ok(Err(r));
        }
        let name = ctx.actor.name.clone();
        let Some(p) = self.partner(&name)? else { return Ok(refuse(format!("no partner {name}"))) };
        if !p.sees(&key_id) {
            return Ok(refuse(format!("no key {key_id}")));
        }
        let Some(k) = self.get::<KeyRecord>(&format!("{}{key_id}", key::KEY))? else {
            return Ok(refuse(format!("no key {key_id}")));
        };
        if !k.exportable || k.state != KeyState::Active {
            return Ok(refuse(format!(
                "{key_id} is {}{}: it does not leave",
                k.state.as_str(),
                if k.exportable { "" } else { " and not exportable" }
            )));
        }
        Ok(Ok(Applied::done(
            format!("key:{key_id}"),
            format!("exported to partner {name} under {} (KCV {})", p.zmk, k.kcv),
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::apply::{Ctx, apply};
    use crate::store::MemKv;

    fn who(role: Role, name: &str) -> Actor {
        Actor { name: name.into(), role }
    }

    fn run(kv: &mut MemKv, actor: &Actor, cmd: KeyCommand) -> Applied {
        let cert = crate::identity::CertRef {
            serial: format!("{actor}"),
            key_fp: format!("key of {actor}"),
            tenants: crate::identity::Tenants::All,
        };
        apply(kv, &Ctx { log_index: 1, time_ms: 1000, actor, cert: Some(&cert) }, cmd).unwrap()
    }

    fn refused(a: Applied) -> String {
        match a {
            Applied::Rejected { reason, .. } => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn done(a: Applied) -> String {
        match a {
            Applied::Done { detail, .. } => detail,
            Applied::Rejected { reason, .. } => panic!("refused: {reason}"),
        }
    }

    fn put_key(kv: &mut MemKv, id: &str, usage: Usage, exportable: bool, origin: Origin) {
        let (label, version) = id.split_once(".v").unwrap();
        let rec = KeyRecord {
            id: id.into(),
            tenant: "default".into(),
            label: label.into(),
            version: version.parse().unwrap(),
            usage,
            alg: KeyAlg::Des3,
            kcv: Kcv("ABCDEF".into()),
            state: KeyState::Active,
            exportable,
            origin,
            wrapped: Some(WrappedKey {
                alg: KeyAlg::Des3,
                blob: vec![7; 40],
                kcv: Kcv("ABCDEF".into()),
                smk_kcv: Kcv("AAAAAAAAAA".into()),
            }),
            created_by: who(Role::Admin, "ada"),
            created_ms: 1,
            approvers: Vec::new(),
            changed_by: None,
            changed_ms: 1,
        };
        kv.put(format!("{}{id}", key::KEY).as_bytes(), crate::store::codec::encode(&rec).unwrap());
    }

    fn state() -> MemKv {
        let mut kv = MemKv::default();
        let formed = Origin::Components { ceremony: "z".into(), custodians: vec!["alice".into(), "bob".into()] };
        put_key(&mut kv, "zmk.v1", Usage::K0, false, formed);
        put_key(&mut kv, "k0gen.v1", Usage::K0, false, Origin::Generated { node: 1 });
        put_key(&mut kv, "zpk.v1", Usage::P0, true, Origin::Generated { node: 1 });
        put_key(&mut kv, "cvk.v1", Usage::C0, false, Origin::Generated { node: 1 });
        kv
    }

    #[test]
    fn a_partner_is_named_with_a_ceremony_zmk_and_sees_only_what_is_shared() {
        let mut kv = state();
        let ada = who(Role::Admin, "ada");
        let set = |zmk: &str| KeyCommand::PartnerSet { name: "gie".into(), zmk: zmk.into() };
        assert!(refused(run(&mut kv, &who(Role::Operator, "otto"), set("zmk.v1"))).contains("role"));
        assert!(refused(run(&mut kv, &ada, set("k0gen.v1"))).contains("not formed from components"));
        assert!(refused(run(&mut kv, &ada, set("zpk.v1"))).contains("active K0"));
        done(run(&mut kv, &ada, set("zmk.v1")));
        let share = |key: &str| KeyCommand::PartnerShare { name: "gie".into(), key: key.into(), share: true };
        assert!(refused(run(&mut kv, &ada, share("cvk.v1"))).contains("not exportable"));
        assert!(refused(run(&mut kv, &ada, share("nope.v1"))).contains("no key nope.v1"));
        done(run(&mut kv, &ada, share("zpk.v1")));

        let gie = who(Role::Partner, "gie");
        let export = |key: &str| KeyCommand::PartnerExported { key: key.into() };
        let d = done(run(&mut kv, &gie, export("zpk.v1")));
        assert!(d.contains("KCV ABCDEF"), "the KCV is in the audit record: {d}");
        assert_eq!(refused(run(&mut kv, &gie, export("cvk.v1"))), "no key cvk.v1");
        // Another partner, or an admin, records no export for gie.
        assert!(refused(run(&mut kv, &who(Role::Partner, "eve"), export("zpk.v1"))).contains("no partner eve"));
        assert!(refused(run(&mut kv, &ada, export("zpk.v1"))).contains("role"));
        // Unshared: no longer exported.
        done(run(&mut kv, &ada, KeyCommand::PartnerShare { name: "gie".into(), key: "zpk.v1".into(), share: false }));
        assert_eq!(refused(run(&mut kv, &gie, export("zpk.v1"))), "no key zpk.v1");
    }

    #[test]
    fn an_import_is_filed_under_the_partner_s_name_in_the_zmk_s_tenant() {
        let mut kv = state();
        let smk = SmkInfo {
            kcv: Kcv("AAAAAAAAAA".into()),
            ceremony: "s".into(),
            formed_ms: 1,
            next: None,
            retired: Vec::new(),
        };
        kv.put(key::SMK.as_bytes(), crate::store::codec::encode(&smk).unwrap());
        done(run(
            &mut kv,
            &who(Role::Admin, "ada"),
            KeyCommand::PartnerSet { name: "gie".into(), zmk: "zmk.v1".into() },
        ));
        let wrapped = WrappedKey {
            alg: KeyAlg::Des2,
            blob: vec![7; 40],
            kcv: Kcv("123456".into()),
            smk_kcv: Kcv("AAAAAAAAAA".into()),
        };
        let import = KeyCommand::PartnerImported { label: "imk".into(), usage: Usage::E0, exportable: true, wrapped };
        assert!(refused(run(&mut kv, &who(Role::Admin, "ada"), import.clone())).contains("role"));
        assert!(refused(run(&mut kv, &who(Role::Partner, "eve"), import.clone())).contains("no partner eve"));
        done(run(&mut kv, &who(Role::Partner, "gie"), import));
        let k: KeyRecord = read(&kv, &format!("{}gie.imk.v1", key::KEY)).unwrap().unwrap();
        assert_eq!((k.usage, k.exportable, k.tenant.as_str()), (Usage::E0, true, "default"));
        assert_eq!(k.origin, Origin::Tr31 { kbpk: "zmk.v1".into() });
        let p: PartnerRecord = read(&kv, &format!("{PARTNER}gie")).unwrap().unwrap();
        assert_eq!(p.imported, ["gie.imk.v1"]);
        assert!(p.sees("gie.imk.v1") && !p.sees("zpk.v1"));
    }

    /// Key distribution to another site (`targets.rs`), with this module's fixtures: the KBPK
    /// must be formed from components; a delivery is recorded once, for an export done under the
    /// target's KBPK, with the key's own KCV.
    #[test]
    fn a_delivery_is_recorded_once_with_the_key_s_kcv_for_an_export_under_the_target_s_kbpk() {
        use crate::keys::apply::targets::{TARGET, TargetRecord};
        let mut kv = state();
        let ada = who(Role::Admin, "ada");
        let fp = "AB".repeat(32);
        let set = |kbpk: &str, endpoint: &str| KeyCommand::TargetSet {
            name: "prod".into(),
            endpoint: endpoint.into(),
            ca_sha256: fp.clone(),
            kbpk: kbpk.into(),
        };
        assert!(refused(run(&mut kv, &who(Role::Operator, "otto"), set("zmk.v1", "prod:7443"))).contains("role"));
        assert!(refused(run(&mut kv, &ada, set("k0gen.v1", "prod:7443"))).contains("not formed from components"));
        assert!(refused(run(&mut kv, &ada, set("zpk.v1", "prod:7443"))).contains("active K0/K1"));
        for bad in ["prod", "prod:0", "https://prod:7443/x", "pr od:1", ":7443"] {
            assert!(refused(run(&mut kv, &ada, set("zmk.v1", bad))).contains("host:port"), "{bad}");
        }
        done(run(&mut kv, &ada, set("zmk.v1", "https://prod.example:7443")));

        // zpk.v1 exported under the target's KBPK (two custodians), and cvk.v1's approval only asked.
        let ask = |id: &str, key: &str, kbpk: &str| KeyCommand::ApprovalRequest {
            id: id.into(),
            action: ApprovalAction::Export { key: key.into(), kbpk: kbpk.into() },
            ttl_ms: 0,
        };
        done(run(&mut kv, &ada, ask("a1", "zpk.v1", "zmk.v1")));
        done(run(&mut kv, &ada, ask("a2", "zpk.v1", "k0gen.v1")));
        for c in ["alice", "bob"] {
            for a in ["a1", "a2"] {
                done(run(&mut kv, &who(Role::Custodian, c), KeyCommand::ApprovalDecide { id: a.into(), grant: true }));
            }
        }
        let delivered = |approval: &str, kcv: &str| KeyCommand::KeyDelivered {
            target: "prod".into(),
            approval: approval.into(),
            kcv: kcv.into(),
            remote_key: "keysite.zpk.v1".into(),
        };
        assert!(refused(run(&mut kv, &ada, delivered("a1", "ABCDEF"))).contains("has not been exported"));
        done(run(&mut kv, &ada, KeyCommand::ExportDone { approval: "a1".into() }));
        done(run(&mut kv, &ada, KeyCommand::ExportDone { approval: "a2".into() }));
        assert!(refused(run(&mut kv, &ada, delivered("a2", "ABCDEF"))).contains("not target prod's KBPK"));
        assert!(refused(run(&mut kv, &ada, delivered("nope", "ABCDEF"))).contains("no approval nope"));
        let r = refused(run(&mut kv, &ada, delivered("a1", "123456")));
        assert!(r.contains("answered KCV 123456") && r.contains("not recorded"), "{r}");
        assert!(refused(run(&mut kv, &who(Role::Partner, "prod"), delivered("a1", "ABCDEF"))).contains("role"));
        let d = done(run(&mut kv, &ada, delivered("a1", "abcdef")));
        assert!(d.contains("delivered to prod as keysite.zpk.v1 (KCV ABCDEF)"), "{d}");
        assert!(refused(run(&mut kv, &ada, delivered("a1", "ABCDEF"))).contains("already recorded"));
        let t: TargetRecord = read(&kv, &format!("{TARGET}prod")).unwrap().unwrap();
        assert_eq!(t.deliveries.len(), 1);
        assert_eq!((t.deliveries[0].key.as_str(), t.deliveries[0].kcv.0.as_str()), ("zpk.v1", "ABCDEF"));
        // A new KBPK for the target keeps what was delivered.
        done(run(&mut kv, &ada, set("zmk.v1", "prod2:7443")));
        let t: TargetRecord = read(&kv, &format!("{TARGET}prod")).unwrap().unwrap();
        assert_eq!((t.endpoint.as_str(), t.deliveries.len()), ("prod2:7443", 1));
    }

    /// TR-34-style transport in apply, both sides (with this module's fixtures): a transported
    /// key is never filed through `KeyCreate`; the key site files the KBPK it sent and makes it
    /// the target's only on the right KCV, once; production takes a KBPK only from a partner
    /// whose pinned signing key signed it, once per nonce, and it becomes the partner's ZMK.
    #[test]
    fn transported_kbpks_are_filed_only_through_their_checks() {
        use crate::keys::apply::targets::{KDH, KdhRecord, TARGET, TargetRecord};
        let mut kv = state();
        let smk = SmkInfo {
            kcv: Kcv("AAAAAAAAAA".into()),
            ceremony: "s".into(),
            formed_ms: 1,
            next: None,
            retired: Vec::new(),
        };
        kv.put(key::SMK.as_bytes(), crate::store::codec::encode(&smk).unwrap());
        let ada = who(Role::Admin, "ada");
        let wrapped = |kcv: &str| WrappedKey {
            alg: KeyAlg::Aes256,
            blob: vec![7; 40],
            kcv: Kcv(kcv.into()),
            smk_kcv: Kcv("AAAAAAAAAA".into()),
        };
        let kdh = {
            let k = quill_crypto::rsa::generate(2048, 65537).unwrap();
            RsaPublic::new(&k.n, &k.e)
        };
        // --- no forged provenance through KeyCreate
        let forged = KeyCommand::KeyCreate {
            label: "kbpk-x".into(),
            usage: Usage::K1,
            exportable: false,
            origin: Origin::TransportReceived { partner: "gie".into(), kdh: kdh.fingerprint() },
            wrapped: wrapped("111111"),
            active: true,
            tenant: "default".into(),
        };
        assert!(refused(run(&mut kv, &ada, forged)).contains("only by the transport"));

        // --- the key site
        let set = KeyCommand::TargetSet {
            name: "prod".into(),
            endpoint: "prod:7443".into(),
            ca_sha256: "AB".repeat(32),
            kbpk: String::new(),
        };
        assert!(done(run(&mut kv, &ada, set)).contains("to be established by transport"));
        let sent = |kcv: &str| KeyCommand::TargetTransported {
            target: "prod".into(),
            wrapped: wrapped(kcv),
            krd: "CD".repeat(32),
            node: 1,
        };
        assert!(refused(run(&mut kv, &ada, sent("222222"))).contains("no signing key"));
        let rec = KdhRecord {
            key: quill_hsm::WrappedRsaKey { public: kdh.clone(), blob: vec![1; 40], smk_kcv: Kcv("AAAAAAAAAA".into()) },
            fingerprint: kdh.fingerprint(),
            created_by: ada.clone(),
            created_ms: 1,
        };
        kv.put(KDH.as_bytes(), crate::store::codec::encode(&rec).unwrap());
        assert!(refused(run(&mut kv, &who(Role::Operator, "otto"), sent("222222"))).contains("role"));
        done(run(&mut kv, &ada, sent("222222")));
        let t: TargetRecord = read(&kv, &format!("{TARGET}prod")).unwrap().unwrap();
        assert_eq!((t.kbpk.as_str(), t.transported.as_ref().unwrap().key.as_str()), ("", "kbpk-prod.v1"));
        let k: KeyRecord = read(&kv, &format!("{}kbpk-prod.v1", key::KEY)).unwrap().unwrap();
        assert_eq!((k.usage, k.exportable), (Usage::K1, false));
        let confirm = |kcv: &str| KeyCommand::TargetConfirmed {
            target: "prod".into(),
            kcv: kcv.into(),
            remote_key: "keysite.kbpk.v1".into(),
        };
        assert!(refused(run(&mut kv, &ada, confirm("333333"))).contains("not its KBPK"));
        done(run(&mut kv, &ada, confirm("222222")));
        assert!(refused(run(&mut kv, &ada, confirm("222222"))).contains("already confirmed"));
        let t: TargetRecord = read(&kv, &format!("{TARGET}prod")).unwrap().unwrap();
        assert_eq!(t.kbpk, "kbpk-prod.v1");

        // --- production
        let gie = who(Role::Partner, "gie");
        let received = |kdh: &str, nonce: &str| KeyCommand::PartnerKbpkReceived {
            wrapped: wrapped("444444"),
            kdh: kdh.into(),
            nonce: nonce.into(),
        };
        let nonce = "0F".repeat(16);
        assert!(refused(run(&mut kv, &gie, received(&kdh.fingerprint(), &nonce))).contains("no partner gie"));
        let weak = {
            let k = quill_crypto::rsa::generate(1024, 65537).unwrap();
            RsaPublic::new(&k.n, &k.e)
        };
        let pin = |k: &RsaPublic| KeyCommand::PartnerKdhSet { name: "gie".into(), kdh: k.clone() };
        assert!(refused(run(&mut kv, &ada, pin(&weak))).contains("at least 2048"));
        assert!(refused(run(&mut kv, &gie, pin(&kdh))).contains("role"));
        done(run(&mut kv, &ada, pin(&kdh)));
        let other = "EE".repeat(32);
        assert!(refused(run(&mut kv, &gie, received(&other, &nonce))).contains("not partner gie's pinned signing key"));
        assert!(refused(run(&mut kv, &ada, received(&kdh.fingerprint(), &nonce))).contains("role"));
        assert!(refused(run(&mut kv, &gie, received(&kdh.fingerprint(), "12"))).contains("32 hex digits"));
        let d = done(run(&mut kv, &gie, received(&kdh.fingerprint(), &nonce)));
        assert!(d.contains("zone master key of partner gie"), "{d}");
        assert!(refused(run(&mut kv, &gie, received(&kdh.fingerprint(), &nonce.to_lowercase()))).contains("replay"));
        let p: PartnerRecord = read(&kv, &format!("{PARTNER}gie")).unwrap().unwrap();
        assert_eq!(p.zmk, "gie.kbpk.v1");
        let k: KeyRecord = read(&kv, &format!("{}gie.kbpk.v1", key::KEY)).unwrap().unwrap();
        assert_eq!(k.origin, Origin::TransportReceived { partner: "gie".into(), kdh: kdh.fingerprint() });
    }
}

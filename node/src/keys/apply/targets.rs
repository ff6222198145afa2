//! Key distribution between sites: the key site pushes working keys to production sites (other
//! Quill clusters) as TR-31 blocks under a key-block protection key the two hold.
//!
//! - **Targets** (`keys/target/<name>` → [`TargetRecord`]): an admin registers another cluster
//!   with its endpoint, the SHA-256 of its CA certificate (the identity the push must find at
//!   that endpoint) and the KBPK between the two: an active K0 formed from components, a ceremony
//!   run on both sides with the same components (the KCVs compared), so no key travels in clear
//!   and no custodian has to.
//! - **Distribution** (`quill key distribute`): the key leaves as any export does, under dual
//!   control ([`ApprovalAction::Export`] with the target's KBPK), as a TR-31 block whose header
//!   carries its usage, mode of use and exportability. The block is imported by the target's
//!   `Exchange` service (this site is a partner there, with the same KBPK as its zone master
//!   key), which answers the key's KCV; the delivery is recorded here ([`Delivery`]: target,
//!   version, KCV, the target's key id) only if that KCV is the key's. A key is never wrapped
//!   under a weaker KBPK (the HSM refuses, X9.24-1).

//! - **TR-34-style transport** ([`crate::keys::transport`]): instead of a ceremony on both
//!   sides, the KBPK is generated here, wrapped in the HSM under the target node's transport key
//!   (its certificate checked against the target's CA) and signed with this site's signing key
//!   ([`KdhRecord`]); it becomes the target's KBPK once the target answers its KCV.

use super::*;

/// `keys/target/<name>` → [`TargetRecord`].
pub const TARGET: &str = "keys/target/";

/// `keys/kdh` → [`KdhRecord`].
pub const KDH: &str = "keys/kdh";

/// The owner bound in the signing key's block at rest (no tenant's name: a tenant's issuer-key
/// paths never open it).
pub const KDH_OWNER: &str = "kbpk-transport";

/// This site's signing key for TR-34-style transport (the key distribution host's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdhRecord {
    /// The pair: private half a key block under the SMK (sign only).
    pub key: quill_hsm::WrappedRsaKey,
    /// SHA-256 of its SubjectPublicKeyInfo, hex.
    pub fingerprint: String,
    pub created_by: Actor,
    pub created_ms: u64,
}

impl KdhRecord {
    /// The private key's block at rest, if its header binds it to [`KDH_OWNER`].
    pub fn block(&self) -> Result<&quill_hsm::WrappedRsaKey, String> {
        crate::keys::model::bound_to(&self.key, KDH_OWNER, "the signing key's block at rest")
    }
}

/// A KBPK sent to a target by TR-34-style transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transported {
    /// The KBPK (inventory id).
    pub key: String,
    /// The target node and SHA-256 of its transport key.
    pub node: u64,
    pub krd: String,
    pub sent_ms: u64,
    /// Once the target answered the KBPK's KCV: the id it filed it under.
    pub confirmed: Option<String>,
}

/// Another cluster this one distributes keys to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// The name the site's operators use.
    pub name: String,
    /// Its API endpoint (`https://host:port` or `host:port`).
    pub endpoint: String,
    /// SHA-256 of its CA certificate (DER), hex: the cluster a push may reach.
    pub ca_sha256: String,
    /// The key-block protection key between the two (inventory id).
    pub kbpk: String,
    /// Every key delivered, in order.
    pub deliveries: Vec<Delivery>,
    pub created_by: Actor,
    pub created_ms: u64,
    /// The last KBPK sent by TR-34-style transport.
    #[serde(default)]
    pub transported: Option<Transported>,
}

/// A key the target confirmed it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The key (inventory id: label and version).
    pub key: String,
    /// Its KCV, as the target answered it (the key's).
    pub kcv: Kcv,
    /// The id the target filed it under.
    pub remote_key: String,
    /// The export approval it left under.
    pub approval: String,
    pub by: Actor,
    pub time_ms: u64,
}

/// Longest endpoint.
const MAX_ENDPOINT: usize = 200;

/// An endpoint as `quill --endpoint` takes it: `[https://]host:port`, no path, no spaces.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint.strip_prefix("https://").unwrap_or(endpoint);
    let ok = endpoint.len() <= MAX_ENDPOINT
        && !rest.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/')
        && rest
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "endpoint {:?}: [https://]host:port of at most {MAX_ENDPOINT} bytes",
            crate::domain::clip(endpoint)
        ))
    }
}

impl State<'_> {
    pub(super) fn target(&self, name: &str) -> Result<Option<TargetRecord>, StoreError> {
        self.get::<TargetRecord>(&format!("{TARGET}{name}"))
    }

    /// Register a target, or change its endpoint, identity or KBPK (admin). Its deliveries stay.
    pub(super) fn target_set(
        &mut self,
        ctx: &Ctx<'_>,
        name: String,
        endpoint: String,
        ca_sha256: String,
        kbpk: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        if let Err(r) = check_id("target", &name) {
            return Ok(Err(r));
        }
        if let Err(r) = check_endpoint(&endpoint) {
            return Ok(refuse(r));
        }
        if ca_sha256.len() != 64 || !ca_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(refuse("the target's CA certificate SHA-256 is 64 hex digits"));
        }
        // Empty: the KBPK is to come by TR-34-style transport (none until the target confirms).
        let kcv = if kbpk.is_empty() {
            None
        } else {
            let k = match self.key(ctx, &kbpk)? {
                Ok(k) => k,
                Err(r) => return Ok(Err(r)),
            };
            if !matches!(k.usage, Usage::K0 | Usage::K1) || k.state != KeyState::Active {
                return Ok(refuse(format!(
                    "{kbpk} is a {} key in state {}: a target's KBPK is an active K0/K1",
                    k.usage,
                    k.state.as_str()
                )));
            }
            if !matches!(k.origin, Origin::Components { .. }) {
                return Ok(refuse(format!(
                    "{kbpk} was not formed from components: a target's KBPK comes from a ceremony both sites hold the components of, or by transport (quill target transport)"
                )));
            }
            Some(k.kcv)
        };
        let rec = match self.target(&name)? {
            Some(mut t) => {
                (t.endpoint, t.ca_sha256, t.kbpk) = (endpoint.clone(), ca_sha256.to_ascii_uppercase(), kbpk.clone());
                t
            }
            None => TargetRecord {
                name: name.clone(),
                endpoint: endpoint.clone(),
                ca_sha256: ca_sha256.to_ascii_uppercase(),
                kbpk: kbpk.clone(),
                deliveries: Vec::new(),
                created_by: ctx.actor.clone(),
                created_ms: ctx.time_ms,
                transported: None,
            },
        };
        self.put(format!("{TARGET}{name}"), &rec)?;
        let detail = match kcv {
            Some(kcv) => format!("{endpoint}, KBPK {kbpk} (KCV {kcv})"),
            None => format!("{endpoint}, KBPK to be established by transport (quill target transport)"),
        };
        Ok(Ok(Applied::done(format!("target:{name}"), detail)))
    }

    /// This site's TR-34-style signing key (admin), once: a second would leave the partners that
    /// pinned the first unable to check what is sent.
    pub(super) fn kdh_key_set(
        &mut self,
        ctx: &Ctx<'_>,
        key: quill_hsm::WrappedRsaKey,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        if let Some(k) = self.get::<KdhRecord>(KDH)? {
            return Ok(refuse(format!("this site's signing key exists (SHA-256 {})", k.fingerprint)));
        }
        if key.public.bits() < 2048 {
            return Ok(refuse(format!("a signing key of {} bits: at least 2048", key.public.bits())));
        }
        if key.owner().as_deref() != Some(KDH_OWNER) {
            return Ok(refuse(format!("the signing key's block is not bound to {KDH_OWNER:?}")));
        }
        let fingerprint = key.public.fingerprint();
        let rec =
            KdhRecord { key, fingerprint: fingerprint.clone(), created_by: ctx.actor.clone(), created_ms: ctx.time_ms };
        self.put(KDH, &rec)?;
        Ok(Ok(Applied::done("kdh-key", format!("signing key for KBPK transport, SHA-256 {fingerprint}"))))
    }

    /// A KBPK made for a target's transport key (admin): filed here as `kbpk-<target>` (K1, not
    /// exportable); the target's KBPK once it answers the KCV.
    pub(super) fn target_transported(
        &mut self,
        ctx: &Ctx<'_>,
        target: String,
        wrapped: WrappedKey,
        krd: String,
        node: u64,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        let Some(mut t) = self.target(&target)? else { return Ok(refuse(format!("no target {target}"))) };
        if self.get::<KdhRecord>(KDH)?.is_none() {
            return Ok(refuse("no signing key for KBPK transport (quill target kdh)"));
        }
        if krd.len() != 64 || !krd.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(refuse("the transport key's SHA-256 is 64 hex digits"));
        }
        let origin = Origin::TransportSent { target: target.clone(), krd: krd.to_ascii_uppercase() };
        let new = NewKey::transported_kbpk(format!("kbpk-{target}"), origin, wrapped);
        let (id, detail) = match self.key_filed(ctx, new)? {
            Ok(filed) => filed,
            Err(step) => return Ok(step),
        };
        t.transported = Some(Transported {
            key: id.clone(),
            node,
            krd: krd.to_ascii_uppercase(),
            sent_ms: ctx.time_ms,
            confirmed: None,
        });
        self.put(format!("{TARGET}{target}"), &t)?;
        Ok(Ok(Applied::done(
            format!("key:{id}"),
            format!("KBPK for target {target} wrapped to node {node}'s transport key {}…: {detail}", &krd[..16]),
        )))
    }

    /// The target answered the transported KBPK's KCV (admin): the target's KBPK from now on, if
    /// the KCV is the key's.
    pub(super) fn target_confirmed(
        &mut self,
        ctx: &Ctx<'_>,
        target: String,
        kcv: String,
        remote_key: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        let Some(mut t) = self.target(&target)? else { return Ok(refuse(format!("no target {target}"))) };
        let Some(mut sent) = t.transported.clone() else {
            return Ok(refuse(format!("no KBPK was sent to target {target} (quill target transport)")));
        };
        if sent.confirmed.is_some() {
            return Ok(refuse(format!("target {target} already confirmed {}", sent.key)));
        }
        let k = match self.key(ctx, &sent.key)? {
            Ok(k) => k,
            Err(r) => return Ok(Err(r)),
        };
        if !kcv.eq_ignore_ascii_case(&k.kcv.0) {
            return Ok(refuse(format!(
                "target {target} answered KCV {} for {}, whose KCV is {}: not its KBPK",
                crate::domain::clip(&kcv),
                k.id,
                k.kcv
            )));
        }
        if let Err(r) = check_id("the target's key id", &remote_key) {
            return Ok(Err(r));
        }
        sent.confirmed = Some(remote_key.clone());
        t.kbpk = sent.key.clone();
        t.transported = Some(sent);
        self.put(format!("{TARGET}{target}"), &t)?;
        Ok(Ok(Applied::done(
            format!("target:{target}"),
            format!("KBPK {} (KCV {}) confirmed by the target as {remote_key}", t.kbpk, k.kcv),
        )))
    }

    /// A key the target confirmed (admin): it left under an export approval to the target's
    /// KBPK, and the KCV the target answered is the key's.
    pub(super) fn key_delivered(
        &mut self,
        ctx: &Ctx<'_>,
        target: String,
        approval: String,
        kcv: String,
        remote_key: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        let Some(mut t) = self.target(&target)? else { return Ok(refuse(format!("no target {target}"))) };
        let Some(a) = self.get::<Approval>(&format!("{}{approval}", key::APPROVAL))? else {
            return Ok(refuse(format!("no approval {approval}")));
        };
        let ApprovalAction::Export { key: kid, kbpk } = a.action.clone() else {
            return Ok(refuse(format!("approval {approval} is not an export")));
        };
        if kbpk != t.kbpk {
            return Ok(refuse(format!(
                "approval {approval} exported {kid} under {kbpk}, not target {target}'s KBPK {}",
                t.kbpk
            )));
        }
        if a.state != ApprovalState::Done {
            return Ok(refuse(format!("approval {approval}: the key has not been exported under it")));
        }
        let k = match self.key(ctx, &kid)? {
            Ok(k) => k,
            Err(r) => return Ok(Err(r)),
        };
        if !kcv.eq_ignore_ascii_case(&k.kcv.0) {
            return Ok(refuse(format!(
                "target {target} answered KCV {} for {kid}, whose KCV is {}: not recorded as delivered",
                crate::domain::clip(&kcv),
                k.kcv
            )));
        }
        if t.deliveries.iter().any(|d| d.approval == approval) {
            return Ok(refuse(format!("the delivery of approval {approval} to {target} is already recorded")));
        }
        if let Err(r) = check_id("the target's key id", &remote_key) {
            return Ok(Err(r));
        }
        t.deliveries.push(Delivery {
            key: kid.clone(),
            kcv: k.kcv.clone(),
            remote_key: remote_key.clone(),
            approval,
            by: ctx.actor.clone(),
            time_ms: ctx.time_ms,
        });
        self.put(format!("{TARGET}{target}"), &t)?;
        Ok(Ok(Applied::done(format!("key:{kid}"), format!("delivered to {target} as {remote_key} (KCV {})", k.kcv))))
    }
}

//! Rotating the storage master key (`quill key rotate-smk`).
//!
//! 1. An admin of the bureau starts a ceremony for the *next* SMK ([`CeremonyTarget::SmkNext`]);
//!    custodians submit components sealed to every node holding the SMK.
//! 2. Each of those nodes forms the next SMK beside the current one in its HSM
//!    ([`KeyCommand::SmkNextFormed`]); once all have, [`SmkInfo::next`] names it.
//! 3. The leader's key agent re-protects open jobs' data keys under the next SMK in its HSM
//!    (`JobCommand::DataKeysMoved`, in the jobs domain), then every other key block of the state,
//!    and proposes those in one [`KeyCommand::SmkSwitch`]; apply takes it only if it covers
//!    exactly the blocks under the current SMK and no job's data key is left under it (anything
//!    made since is caught, and the agent tries again), each block the same key (KCV) and
//!    algorithm. From that entry on the state holds nothing under the old SMK.
//! 4. Every node then destroys the old SMK in its HSM ([`KeyCommand::OldSmkDestroyed`]): the
//!    blocks in older log entries, snapshots and backups open nowhere any more.

use super::*;
use issuers::{ISSUER, IssuerKeyRecord};
use quill_hsm::WrappedRsaKey;
use std::collections::BTreeMap;

/// Where a key block under the SMK lives in the state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BlockAt {
    /// A key of the inventory (`keys/key/<id>`).
    Key(String),
    /// The cluster audit MAC key.
    AuditMac,
    /// The cluster audit encryption key.
    AuditEnc,
}

impl std::fmt::Display for BlockAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockAt::Key(id) => write!(f, "key {id}"),
            BlockAt::AuditMac => f.write_str("the audit MAC key"),
            BlockAt::AuditEnc => f.write_str("the audit encryption key"),
        }
    }
}

/// Every key block of the keys domain wrapped under SMK `smk`, by where it lives (jobs' data
/// keys: [`crate::jobs::data_keys_under`]).
pub fn blocks_under(kv: &dyn Kv, smk: &Kcv) -> Result<BTreeMap<BlockAt, WrappedKey>, StoreError> {
    let mut out = BTreeMap::new();
    for k in scan::<KeyRecord>(kv, key::KEY)? {
        if let Some(w) = k.wrapped.filter(|w| w.smk_kcv == *smk) {
            out.insert(BlockAt::Key(k.id), w);
        }
    }
    if let Some(a) = read::<AuditKeys>(kv, key::AUDIT_KEYS)? {
        for (at, w) in [(BlockAt::AuditMac, a.mac), (BlockAt::AuditEnc, a.enc)] {
            if w.smk_kcv == *smk {
                out.insert(at, w);
            }
        }
    }
    Ok(out)
}

/// The label of the TR-34-style signing key among [`rsa_keys_under`]'s.
pub const KDH_LABEL: &str = "kdh:site";

/// Every RSA private key in the state wrapped under SMK `smk`: issuer keys by label, the EMV
/// CA's keys as `ca:RID/II` (a `:` is in no issuer label), the signing key as [`KDH_LABEL`].
pub fn rsa_keys_under(kv: &dyn Kv, smk: &Kcv) -> Result<BTreeMap<String, WrappedRsaKey>, StoreError> {
    let issuers = scan::<IssuerKeyRecord>(kv, ISSUER)?.into_iter().map(|r| (r.label, r.key));
    let cas = scan::<super::ca::OwnCaKey>(kv, super::ca::OWN_CA)?
        .into_iter()
        .map(|r| (format!("ca:{}", super::ca::ca_id(&r.rid, r.index)), r.key));
    let kdh =
        super::read::<super::targets::KdhRecord>(kv, super::targets::KDH)?.map(|r| (KDH_LABEL.to_string(), r.key));
    Ok(issuers.chain(cas).chain(kdh).filter(|(_, k)| k.smk_kcv == *smk).collect())
}

impl State<'_> {
    pub(super) fn smk_next_formed(
        &mut self,
        ctx: &Ctx<'_>,
        node: NodeId,
        ceremony: String,
        kcv: Kcv,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.node_actor(ctx, node) {
            return Ok(Err(r));
        }
        let mut c = match self.ceremony(ctx, &ceremony)? {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        if c.target != CeremonyTarget::SmkNext || c.state != CeremonyState::Complete {
            return Ok(refuse(format!("ceremony {ceremony} is not a complete SMK rotation ceremony")));
        }
        if !c.recipients.contains(&node) {
            return Ok(refuse(format!("node {node} is not a recipient of ceremony {ceremony}")));
        }
        let Some(mut info) = self.get::<SmkInfo>(key::SMK)? else { return Ok(refuse("no SMK in the cluster")) };
        if kcv == info.kcv {
            return Ok(refuse(format!("the components of ceremony {ceremony} form the current SMK (KCV {kcv})")));
        }
        if let Some(k) = c.kcv.as_ref().filter(|k| **k != kcv) {
            return Ok(refuse(format!(
                "node {node} formed next SMK {kcv}, but ceremony {ceremony} formed {k} before: cancel it and start again"
            )));
        }
        let Some(mut rec) = self.get::<NodeRecord>(&key::node(node))? else {
            return Ok(refuse(format!("node {node} is not enrolled")));
        };
        rec.next_smk = Some(kcv.clone());
        if !c.formed_on.contains(&node) {
            c.formed_on.push(node);
        }
        c.kcv = Some(kcv.clone());
        c.sealed.remove(&node);
        let mut detail = format!("next SMK formed, KCV {kcv}");
        if c.recipients.iter().all(|r| c.formed_on.contains(r)) {
            c.state = CeremonyState::Formed;
            c.sealed.clear();
            info.next = Some(NextSmk { kcv: kcv.clone(), ceremony: ceremony.clone() });
            self.put(key::SMK, &info)?;
            detail.push_str(&format!("; formed on every node ({:?}): the cluster switches to it next", c.recipients));
        }
        self.put(key::node(node), &rec)?;
        self.put(format!("{}{ceremony}", key::CEREMONY), &c)?;
        Ok(Ok(Applied::done(format!("node:{node}"), detail)))
    }

    pub(super) fn smk_switch(
        &mut self,
        ctx: &Ctx<'_>,
        ceremony: String,
        kcv: Kcv,
        blocks: Vec<(BlockAt, WrappedKey)>,
        rsa: Vec<(String, WrappedRsaKey)>,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Node]) {
            return Ok(Err(r));
        }
        let Some(mut info) = self.get::<SmkInfo>(key::SMK)? else { return Ok(refuse("no SMK in the cluster")) };
        match &info.next {
            Some(n) if n.ceremony == ceremony && n.kcv == kcv => {}
            Some(n) => {
                return Ok(refuse(format!(
                    "the next SMK is {} of ceremony {}, not {kcv} of ceremony {ceremony}",
                    n.kcv, n.ceremony
                )));
            }
            None => return Ok(refuse(format!("no next SMK formed on every node (ceremony {ceremony})"))),
        }
        let old = info.kcv.clone();
        // Exactly the blocks under the current SMK, each once, each the same key re-protected
        // under the next SMK.
        let current = blocks_under(self.kv, &old)?;
        let mut new = BTreeMap::new();
        for (at, w) in blocks {
            let Some(was) = current.get(&at) else {
                return Ok(refuse(format!("{at} is not a key block under the current SMK {old}")));
            };
            if w.smk_kcv != kcv || w.alg != was.alg || w.kcv != was.kcv || w.blob.is_empty() {
                return Ok(refuse(format!(
                    "{at}: the block offered is not the same {} key (KCV {}) under the next SMK {kcv}",
                    was.alg, was.kcv
                )));
            }
            if new.insert(at.clone(), w).is_some() {
                return Ok(refuse(format!("{at} is offered twice")));
            }
        }
        if let Some((job, _)) = crate::jobs::data_keys_under(self.kv, &old)?.first() {
            return Ok(refuse(format!(
                "the data key of job {job} is still under the current SMK {old} (moved first; it is moved again)"
            )));
        }
        if let Some(at) = current.keys().find(|at| !new.contains_key(*at)) {
            return Ok(refuse(format!(
                "{at} is under the current SMK {old} but not in the switch (made since the translation began; it is translated again)"
            )));
        }
        let current_rsa = rsa_keys_under(self.kv, &old)?;
        let mut new_rsa = BTreeMap::new();
        for (label, k) in rsa {
            let Some(was) = current_rsa.get(&label) else {
                return Ok(refuse(format!("issuer key {label} is not under the current SMK {old}")));
            };
            if k.smk_kcv != kcv || k.public != was.public || k.blob.is_empty() {
                return Ok(refuse(format!(
                    "issuer key {label}: the key offered is not the same key pair under the next SMK {kcv}"
                )));
            }
            if new_rsa.insert(label.clone(), k).is_some() {
                return Ok(refuse(format!("issuer key {label} is offered twice")));
            }
        }
        if let Some(label) = current_rsa.keys().find(|l| !new_rsa.contains_key(*l)) {
            return Ok(refuse(format!(
                "issuer key {label} is under the current SMK {old} but not in the switch (made since the translation began; it is translated again)"
            )));
        }

        let (n_blocks, n_rsa) = (new.len(), new_rsa.len());
        let mut audit_keys = self.get::<AuditKeys>(key::AUDIT_KEYS)?;
        for (at, w) in new {
            match at {
                BlockAt::Key(id) => {
                    let path = format!("{}{id}", key::KEY);
                    if let Some(mut k) = self.get::<KeyRecord>(&path)? {
                        k.wrapped = Some(w);
                        self.put(path, &k)?;
                    }
                }
                BlockAt::AuditMac => {
                    if let Some(a) = audit_keys.as_mut() {
                        a.mac = w;
                    }
                }
                BlockAt::AuditEnc => {
                    if let Some(a) = audit_keys.as_mut() {
                        a.enc = w;
                    }
                }
            }
        }
        if let Some(a) = &audit_keys {
            self.put(key::AUDIT_KEYS, a)?;
        }
        for (label, k) in new_rsa {
            if label == KDH_LABEL {
                if let Some(mut r) = self.get::<super::targets::KdhRecord>(super::targets::KDH)? {
                    r.key = k;
                    self.put(super::targets::KDH, &r)?;
                }
                continue;
            }
            if let Some(ca) = label.strip_prefix("ca:") {
                let path = format!("{}{ca}", super::ca::OWN_CA);
                if let Some(mut r) = self.get::<super::ca::OwnCaKey>(&path)? {
                    r.key = k;
                    self.put(path, &r)?;
                }
                continue;
            }
            let path = format!("{ISSUER}{label}");
            if let Some(mut r) = self.get::<IssuerKeyRecord>(&path)? {
                r.key = k;
                self.put(path, &r)?;
            }
        }
        // Nodes that formed the next SMK now hold the cluster's SMK (and still the old one);
        // any other node that held the old one no longer holds the cluster's.
        let mut retiring = Vec::new();
        for mut rec in scan::<NodeRecord>(self.kv, key::NODE)? {
            if rec.next_smk.as_ref() == Some(&kcv) {
                rec.smk = NodeSmk::Present;
                rec.retiring = Some(old.clone());
                retiring.push(rec.id);
            } else if rec.smk == NodeSmk::Present {
                rec.smk = NodeSmk::Mismatch { kcv: old.clone() };
            }
            rec.next_smk = None;
            self.put(key::node(rec.id), &rec)?;
        }
        info.retired.push(RetiredSmk { kcv: old.clone(), ceremony: info.ceremony.clone(), retired_ms: ctx.time_ms });
        info.kcv = kcv.clone();
        info.ceremony = ceremony.clone();
        info.formed_ms = ctx.time_ms;
        info.next = None;
        self.put(key::SMK, &info)?;
        Ok(Ok(Applied::done(
            format!("ceremony:{ceremony}"),
            format!(
                "SMK rotated from {old} to {kcv}: {n_blocks} key blocks and {n_rsa} RSA keys re-protected; nodes {retiring:?} destroy SMK {old} next"
            ),
        )))
    }

    pub(super) fn old_smk_destroyed(
        &mut self,
        ctx: &Ctx<'_>,
        node: NodeId,
        kcv: Kcv,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.node_actor(ctx, node) {
            return Ok(Err(r));
        }
        let Some(mut rec) = self.get::<NodeRecord>(&key::node(node))? else {
            return Ok(refuse(format!("node {node} is not enrolled")));
        };
        if rec.retiring.as_ref() != Some(&kcv) {
            return Ok(refuse(format!("node {node} has no old SMK {kcv} to destroy")));
        }
        rec.retiring = None;
        self.put(key::node(node), &rec)?;
        let left: Vec<NodeId> = scan::<NodeRecord>(self.kv, key::NODE)?
            .into_iter()
            .filter(|n| n.id != node && n.retiring.is_some())
            .map(|n| n.id)
            .collect();
        let detail = if left.is_empty() {
            format!("old SMK {kcv} destroyed in node {node}'s HSM: gone from every node")
        } else {
            format!("old SMK {kcv} destroyed in node {node}'s HSM; still held by nodes {left:?}")
        };
        Ok(Ok(Applied::done(format!("node:{node}"), detail)))
    }
}

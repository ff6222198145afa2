//! The node's records as clients see them: each replicated record mapped to its view
//! (`proto/quill/v1/views.proto`). Only this module knows both shapes; what a view leaves out (key
//! blocks, sealed components, wrapped data keys, profile texts) never reaches a client.

use quill_proto::v1 as pb;

use crate::identity::{Actor, CertRef, Tenants};
use crate::jobs::{ChunkRecord, JobRecord};
use crate::keys::apply::Revoked;
use crate::keys::apply::issuers::{self, CaKeyRecord, IssuerCertRecord, IssuerKeyRecord};
use crate::keys::apply::{key, read, scan};
use crate::keys::model::{
    Approval, ApprovalAction, AuditKeys, Ceremony, CeremonyState, CeremonyTarget, KeyRecord, NodeRecord, NodeSmk,
    Origin, RsaPublic, SmkInfo,
};
use crate::store::{Kv, StoreError};

/// Who did something.
pub fn actor(a: &Actor) -> pb::ActorView {
    pb::ActorView { name: a.name.clone(), role: a.role.as_str().into() }
}

fn cert(c: &CertRef) -> pb::CertView {
    pb::CertView { serial: c.serial.clone(), key_fp: c.key_fp.clone() }
}

fn rsa_public(p: &RsaPublic) -> pb::RsaPublicView {
    pb::RsaPublicView { modulus: hex::encode_upper(&p.modulus), exponent: hex::encode_upper(&p.exponent) }
}

fn origin(o: &Origin) -> pb::KeyOriginView {
    match o {
        Origin::Generated { node } => pb::KeyOriginView { kind: "generated".into(), node: *node, ..Default::default() },
        Origin::Components { ceremony, custodians } => pb::KeyOriginView {
            kind: "components".into(),
            ceremony: ceremony.clone(),
            custodians: custodians.clone(),
            ..Default::default()
        },
        Origin::Tr31 { kbpk } => pb::KeyOriginView { kind: "tr31".into(), kbpk: kbpk.clone(), ..Default::default() },
        Origin::TransportSent { target, krd } => pb::KeyOriginView {
            kind: "transport-sent".into(),
            peer: target.clone(),
            peer_key: krd.clone(),
            ..Default::default()
        },
        Origin::TransportReceived { partner, kdh } => pb::KeyOriginView {
            kind: "transport-received".into(),
            peer: partner.clone(),
            peer_key: kdh.clone(),
            ..Default::default()
        },
    }
}

/// The storage master key.
pub fn smk(s: SmkInfo) -> pb::SmkView {
    pb::SmkView {
        kcv: s.kcv.0,
        ceremony: s.ceremony,
        formed_ms: s.formed_ms,
        next_kcv: s.next.as_ref().map(|n| n.kcv.0.clone()).unwrap_or_default(),
        next_ceremony: s.next.map(|n| n.ceremony).unwrap_or_default(),
        retired: s
            .retired
            .into_iter()
            .map(|r| pb::RetiredSmkView { kcv: r.kcv.0, ceremony: r.ceremony, retired_ms: r.retired_ms })
            .collect(),
    }
}

/// An enrolled node: its transport public key (custodians seal to it), not its certificate's key.
pub fn node(n: NodeRecord) -> pb::NodeView {
    let (smk, smk_mismatch_kcv) = match &n.smk {
        NodeSmk::Missing => ("missing", String::new()),
        NodeSmk::Present => ("present", String::new()),
        NodeSmk::Mismatch { kcv } => ("mismatch", kcv.0.clone()),
    };
    pb::NodeView {
        id: n.id,
        transport: Some(rsa_public(&n.transport)),
        fingerprint: n.fingerprint,
        hsm: n.hsm,
        enrolled_ms: n.enrolled_ms,
        smk: smk.into(),
        smk_mismatch_kcv,
        cert: n.cert.as_ref().map(cert),
        next_smk_kcv: n.next_smk.map(|k| k.0).unwrap_or_default(),
        retiring_smk_kcv: n.retiring.map(|k| k.0).unwrap_or_default(),
    }
}

/// A ceremony: its submissions' KCVs and which nodes still have sealed copies, never the copies.
pub fn ceremony(c: Ceremony) -> pb::CeremonyView {
    let target = match &c.target {
        CeremonyTarget::Smk => pb::CeremonyTargetView { smk: true, ..Default::default() },
        CeremonyTarget::SmkNext => pb::CeremonyTargetView { smk_next: true, ..Default::default() },
        CeremonyTarget::Key { label, usage, alg, exportable, tenant } => pb::CeremonyTargetView {
            smk: false,
            label: label.clone(),
            usage: usage.code().into(),
            alg: alg.name().into(),
            exportable: *exportable,
            tenant: tenant.clone(),
            smk_next: false,
        },
    };
    let state = match c.state {
        CeremonyState::Open => "open",
        CeremonyState::Complete => "complete",
        CeremonyState::Formed => "formed",
        CeremonyState::Cancelled => "cancelled",
    };
    pb::CeremonyView {
        id: c.id,
        target: Some(target),
        components: u32::from(c.components),
        state: state.into(),
        started_by: Some(actor(&c.started_by)),
        started_ms: c.started_ms,
        recipients: c.recipients,
        submissions: c
            .submissions
            .into_iter()
            .map(|s| pb::SubmissionView {
                custodian: s.custodian,
                kcv: s.kcv.0,
                at_ms: s.at_ms,
                key_fp: s.key_fp.unwrap_or_default(),
            })
            .collect(),
        sealed_for: c.sealed.iter().filter(|(_, copies)| !copies.is_empty()).map(|(n, _)| *n).collect(),
        formed_on: c.formed_on,
        kcv: c.kcv.map(|k| k.0).unwrap_or_default(),
    }
}

/// A key of the inventory: its key block's header and SMK, not the block.
pub fn key(k: KeyRecord) -> pb::KeyView {
    pb::KeyView {
        id: k.id,
        label: k.label,
        version: k.version,
        usage: k.usage.code().into(),
        alg: k.alg.name().into(),
        kcv: k.kcv.0,
        state: k.state.as_str().into(),
        exportable: k.exportable,
        origin: Some(origin(&k.origin)),
        created_by: Some(actor(&k.created_by)),
        created_ms: k.created_ms,
        approvers: k.approvers,
        changed_by: k.changed_by.as_ref().map(actor),
        changed_ms: k.changed_ms,
        smk_kcv: k.wrapped.as_ref().map(|w| w.smk_kcv.0.clone()).unwrap_or_default(),
        block_header: k.wrapped.as_ref().and_then(|w| w.header_text()).unwrap_or_default(),
        tenant: k.tenant,
    }
}

/// A dual-control approval.
pub fn approval(a: Approval) -> pb::ApprovalView {
    let text = a.action.to_string();
    let action = match a.action {
        ApprovalAction::SmkToNode { node } => {
            pb::ApprovalActionView { kind: "smk_to_node".into(), node, text, ..Default::default() }
        }
        ApprovalAction::Export { key, kbpk } => {
            pb::ApprovalActionView { kind: "export".into(), key, kbpk, text, ..Default::default() }
        }
        ApprovalAction::Destroy { key } => {
            pb::ApprovalActionView { kind: "destroy".into(), key, text, ..Default::default() }
        }
        ApprovalAction::Certify { ca, issuer_id, expiry, key_fingerprint, .. } => pb::ApprovalActionView {
            kind: "certify".into(),
            ca,
            issuer_id,
            expiry,
            key_fingerprint,
            text,
            ..Default::default()
        },
        ApprovalAction::AuditPrune { archive } => pb::ApprovalActionView {
            kind: "audit_prune".into(),
            upto: archive.last,
            sha256: archive.sha256,
            text,
            ..Default::default()
        },
    };
    let state = match a.state {
        crate::keys::model::ApprovalState::Pending => "pending",
        crate::keys::model::ApprovalState::Approved => "approved",
        crate::keys::model::ApprovalState::Denied => "denied",
        crate::keys::model::ApprovalState::Done => "done",
    };
    pb::ApprovalView {
        id: a.id,
        action: Some(action),
        requested_by: Some(actor(&a.requested_by)),
        requested_ms: a.requested_ms,
        expires_ms: a.expires_ms,
        granted_by: a.granted_by,
        keys: a.keys,
        denied_by: a.denied_by.unwrap_or_default(),
        state: state.into(),
    }
}

/// A scheme CA public key.
pub fn ca_key(c: CaKeyRecord) -> pb::CaKeyView {
    pb::CaKeyView {
        rid: c.rid,
        index: u32::from(c.index),
        modulus: c.modulus,
        exponent: c.exponent,
        checksum: c.checksum,
        imported_by: Some(actor(&c.imported_by)),
        imported_ms: c.imported_ms,
    }
}

/// A revoked certificate.
pub fn revoked(r: Revoked) -> pb::RevokedCertView {
    pb::RevokedCertView { serial: r.serial, reason: r.reason, by: Some(actor(&r.by)), time_ms: r.time_ms }
}

/// An issuer key pair: its public half, never the wrapped private key.
pub fn issuer_key(k: IssuerKeyRecord) -> pb::IssuerKeyView {
    pb::IssuerKeyView {
        label: k.label,
        bits: u32::try_from(k.bits).unwrap_or(u32::MAX),
        fingerprint: k.fingerprint,
        public: Some(rsa_public(&k.key.public)),
        origin: Some(origin(&k.origin)),
        certificate: k.certificate.unwrap_or_default(),
        created_by: Some(actor(&k.created_by)),
        created_ms: k.created_ms,
        tenant: k.tenant,
        smk_kcv: k.key.smk_kcv.to_string(),
        block_header: k.key.header_text().unwrap_or_default(),
    }
}

/// An issuer public key certificate.
pub fn issuer_cert(c: IssuerCertRecord) -> pb::IssuerCertView {
    pb::IssuerCertView {
        id: c.id,
        layout: c.layout,
        rid: c.rid,
        ca_index: u32::from(c.ca_index),
        issuer_id: c.issuer_id,
        expiry: c.expiry,
        serial: c.serial,
        cert: c.cert,
        remainder: c.remainder,
        exponent: c.exponent,
        key_fingerprint: c.key_fingerprint,
        key: c.key.unwrap_or_default(),
        imported_by: Some(actor(&c.imported_by)),
        imported_ms: c.imported_ms,
    }
}

/// The audit keys' check values.
pub fn audit_keys(k: AuditKeys) -> pb::AuditKeysView {
    pb::AuditKeysView { mac_kcv: k.mac.kcv.0, enc_kcv: k.enc.kcv.0, node: k.node }
}

/// A job: without its profile text and data key (the data key's KCV only).
pub fn job(j: JobRecord) -> pb::JobView {
    pb::JobView {
        id: j.id,
        product: j.product,
        file: j.file,
        digest: j.digest,
        records: j.records,
        skipped: j.skipped,
        chunk_size: j.chunk_size,
        chunks: j.chunks,
        uploaded: j.uploaded,
        chunks_done: j.chunks_done,
        cards_done: j.cards_done,
        failures: j.failures,
        data_key_kcv: j.data_key.kcv.0,
        mac_key: j.mac_key,
        state: j.state.as_str().into(),
        created_by: Some(actor(&j.created_by)),
        created_ms: j.created_ms,
        done_ms: j.done_ms,
        closed_by: j.closed_by.as_ref().map(actor),
        closed_ms: j.closed_ms,
        delivered: j.delivered.into_iter().map(|(stream, sha256)| pb::DeliveredView { stream, sha256 }).collect(),
        retention_ms: j.retention_ms,
        tenant: j.tenant,
    }
}

/// A job's chunk.
pub fn chunk(c: ChunkRecord) -> pb::ChunkView {
    let state = match c.state {
        crate::jobs::ChunkState::Pending => "pending",
        crate::jobs::ChunkState::Claimed => "claimed",
        crate::jobs::ChunkState::Done => "done",
    };
    pb::ChunkView {
        n: c.n,
        cards: c.cards,
        state: state.into(),
        node: c.node,
        token: c.token,
        lease_until_ms: c.lease_until_ms,
        claims: c.claims,
        prepared: c.prepared,
        output_digest: c.output_digest,
        done_ms: c.done_ms,
    }
}

// ---------------------------------------------------------------------------------------------
// Readers: one per query, over a snapshot of the applied state, showing only what the caller's
// tenants hold (a record of another tenant is absent, as if it did not exist). The typed methods
// and the superseded `Keys.Query` both answer through these.

/// Whether `t` may see the approval: one about a key only when it may see the key.
fn approval_visible(kv: &dyn Kv, a: &Approval, t: &Tenants) -> Result<bool, StoreError> {
    Ok(match &a.action {
        ApprovalAction::Export { key: k, .. } | ApprovalAction::Destroy { key: k } => {
            read::<KeyRecord>(kv, &format!("{}{k}", key::KEY))?.is_some_and(|k| t.covers(&k.tenant))
        }
        ApprovalAction::SmkToNode { .. } | ApprovalAction::AuditPrune { .. } | ApprovalAction::Certify { .. } => true,
    })
}

/// The SMK, once formed.
pub fn read_smk(kv: &dyn Kv) -> Result<Option<pb::SmkView>, StoreError> {
    Ok(read::<SmkInfo>(kv, key::SMK)?.map(smk))
}

/// Enrolled nodes.
pub fn read_nodes(kv: &dyn Kv) -> Result<Vec<pb::NodeView>, StoreError> {
    Ok(scan::<NodeRecord>(kv, key::NODE)?.into_iter().map(node).collect())
}

/// Every ceremony.
pub fn read_ceremonies(kv: &dyn Kv, t: &Tenants) -> Result<Vec<pb::CeremonyView>, StoreError> {
    Ok(scan::<Ceremony>(kv, key::CEREMONY)?.into_iter().filter(|c| c.target.visible_to(t)).map(ceremony).collect())
}

/// One ceremony.
pub fn read_ceremony(kv: &dyn Kv, t: &Tenants, id: &str) -> Result<Option<pb::CeremonyView>, StoreError> {
    Ok(read::<Ceremony>(kv, &format!("{}{id}", key::CEREMONY))?.filter(|c| c.target.visible_to(t)).map(ceremony))
}

/// The key inventory.
pub fn read_keys(kv: &dyn Kv, t: &Tenants) -> Result<Vec<pb::KeyView>, StoreError> {
    Ok(scan::<KeyRecord>(kv, key::KEY)?.into_iter().filter(|k| t.covers(&k.tenant)).map(self::key).collect())
}

/// One key.
pub fn read_key(kv: &dyn Kv, t: &Tenants, id: &str) -> Result<Option<pb::KeyView>, StoreError> {
    Ok(read::<KeyRecord>(kv, &format!("{}{id}", key::KEY))?.filter(|k| t.covers(&k.tenant)).map(self::key))
}

/// Every approval.
pub fn read_approvals(kv: &dyn Kv, t: &Tenants) -> Result<Vec<pb::ApprovalView>, StoreError> {
    let mut out = Vec::new();
    for a in scan::<Approval>(kv, key::APPROVAL)? {
        if approval_visible(kv, &a, t)? {
            out.push(approval(a));
        }
    }
    Ok(out)
}

/// One approval.
pub fn read_approval(kv: &dyn Kv, t: &Tenants, id: &str) -> Result<Option<pb::ApprovalView>, StoreError> {
    match read::<Approval>(kv, &format!("{}{id}", key::APPROVAL))? {
        Some(a) if approval_visible(kv, &a, t)? => Ok(Some(approval(a))),
        _ => Ok(None),
    }
}

/// This cluster's EMV CA keys, with what each issued; `expired` by leader time `now_ms`.
pub fn read_own_ca_keys(kv: &dyn Kv, now_ms: u64) -> Result<Vec<pb::OwnCaKeyView>, StoreError> {
    use crate::keys::apply::ca::{self, OwnCaKey};
    let mut out = Vec::new();
    for k in scan::<OwnCaKey>(kv, ca::OWN_CA)? {
        let expired = hex::decode(&k.expiry)
            .ok()
            .and_then(|b| quill_prep::emv::cert::CertExpiry::from_mmyy(b.try_into().ok()?))
            .is_some_and(|e| ca::expired_at(e, now_ms));
        let state = if !k.active {
            "revoked"
        } else if expired {
            "expired"
        } else {
            "active"
        };
        let mut issued = Vec::new();
        for c in &k.issued {
            issued.push(pb::IssuedCertView {
                serial: c.serial.clone(),
                issuer_id: c.issuer_id.clone(),
                expiry: c.expiry.clone(),
                key_index: c.key_index.clone(),
                key_fingerprint: c.key_fingerprint.clone(),
                approval: c.approval.clone(),
                by: Some(actor(&c.by)),
                time_ms: c.time_ms,
                revoked: ca::is_cert_revoked(kv, &k.rid, k.index, &c.serial)?,
                format: c.format.clone(),
            });
        }
        out.push(pb::OwnCaKeyView {
            rid: k.rid.clone(),
            index: u32::from(k.index),
            bits: u32::try_from(k.key.public.bits()).unwrap_or(0),
            modulus: hex::encode_upper(&k.key.public.modulus),
            exponent: hex::encode_upper(&k.key.public.exponent),
            checksum: k.checksum.clone(),
            expiry: k.expiry.clone(),
            state: state.into(),
            issuer_ranges: k.ranges.clone(),
            next_serial: k.next_serial,
            issued,
            created_by: Some(actor(&k.created_by)),
            created_ms: k.created_ms,
            smk_kcv: k.key.smk_kcv.to_string(),
        });
    }
    Ok(out)
}

/// Every partner of the key exchange.
pub fn read_partners(kv: &dyn Kv) -> Result<Vec<pb::PartnerView>, StoreError> {
    use crate::keys::apply::partners::{PARTNER, PartnerRecord};
    Ok(scan::<PartnerRecord>(kv, PARTNER)?
        .into_iter()
        .map(|p| pb::PartnerView {
            name: p.name,
            zmk: p.zmk,
            shared: p.shared,
            imported: p.imported,
            created_by: Some(actor(&p.created_by)),
            created_ms: p.created_ms,
            kdh_fingerprint: p.kdh.as_ref().map(|k| k.fingerprint()).unwrap_or_default(),
        })
        .collect())
}

/// The targets keys are distributed to, with their deliveries.
pub fn read_targets(kv: &dyn Kv) -> Result<Vec<pb::TargetView>, StoreError> {
    use crate::keys::apply::targets::{TARGET, TargetRecord};
    let mut out = Vec::new();
    for t in scan::<TargetRecord>(kv, TARGET)? {
        let kbpk_kcv = read::<KeyRecord>(kv, &format!("{}{}", key::KEY, t.kbpk))?.map(|k| k.kcv.to_string());
        out.push(pb::TargetView {
            name: t.name,
            endpoint: t.endpoint,
            ca_sha256: t.ca_sha256,
            kbpk: t.kbpk,
            kbpk_kcv: kbpk_kcv.unwrap_or_default(),
            deliveries: t
                .deliveries
                .iter()
                .map(|d| pb::DeliveryView {
                    key: d.key.clone(),
                    kcv: d.kcv.to_string(),
                    remote_key: d.remote_key.clone(),
                    approval: d.approval.clone(),
                    by: Some(actor(&d.by)),
                    time_ms: d.time_ms,
                })
                .collect(),
            created_by: Some(actor(&t.created_by)),
            created_ms: t.created_ms,
            transported_key: t.transported.as_ref().map(|x| x.key.clone()).unwrap_or_default(),
            transported_node: t.transported.as_ref().map_or(0, |x| x.node),
            transported_krd: t.transported.as_ref().map(|x| x.krd.clone()).unwrap_or_default(),
            transported_confirmed: t.transported.as_ref().is_some_and(|x| x.confirmed.is_some()),
        });
    }
    Ok(out)
}

/// The keys partner `name` sees: shared with it, or imported from it (never a value).
pub fn read_partner_keys(kv: &dyn Kv, name: &str) -> Result<Vec<pb::PartnerKeyView>, StoreError> {
    use crate::keys::apply::partners::{PARTNER, PartnerRecord};
    let Some(p) = read::<PartnerRecord>(kv, &format!("{PARTNER}{name}"))? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (ids, direction) in [(&p.shared, "out"), (&p.imported, "in")] {
        for id in ids {
            if let Some(k) = read::<KeyRecord>(kv, &format!("{}{id}", key::KEY))? {
                out.push(pb::PartnerKeyView {
                    id: k.id,
                    usage: k.usage.code().to_string(),
                    alg: k.alg.to_string(),
                    kcv: k.kcv.to_string(),
                    direction: direction.into(),
                    exportable: k.exportable,
                    state: k.state.as_str().into(),
                });
            }
        }
    }
    Ok(out)
}

/// Every revoked issuer certificate the cluster knows (its own CA's and imported lists').
pub fn read_ca_revocations(kv: &dyn Kv) -> Result<Vec<pb::CaRevocationView>, StoreError> {
    use crate::keys::apply::ca::{self, CaRevocation};
    Ok(scan::<CaRevocation>(kv, ca::CA_REVOKED)?
        .into_iter()
        .map(|r| pb::CaRevocationView {
            rid: r.rid,
            index: u32::from(r.index),
            serial: r.serial,
            reason: r.reason,
            by: Some(actor(&r.by)),
            time_ms: r.time_ms,
            source: r.source,
        })
        .collect())
}

/// Scheme CA public keys.
pub fn read_ca_keys(kv: &dyn Kv) -> Result<Vec<pb::CaKeyView>, StoreError> {
    Ok(scan::<CaKeyRecord>(kv, issuers::CA)?.into_iter().map(ca_key).collect())
}

/// Revoked certificates.
pub fn read_revoked(kv: &dyn Kv) -> Result<Vec<pb::RevokedCertView>, StoreError> {
    Ok(crate::keys::apply::revocations(kv)?.into_iter().map(revoked).collect())
}

/// Issuer key pairs.
pub fn read_issuer_keys(kv: &dyn Kv, t: &Tenants) -> Result<Vec<pb::IssuerKeyView>, StoreError> {
    Ok(scan::<IssuerKeyRecord>(kv, issuers::ISSUER)?
        .into_iter()
        .filter(|k| t.covers(&k.tenant))
        .map(issuer_key)
        .collect())
}

/// One issuer key pair.
pub fn read_issuer_key(kv: &dyn Kv, t: &Tenants, label: &str) -> Result<Option<pb::IssuerKeyView>, StoreError> {
    Ok(read::<IssuerKeyRecord>(kv, &format!("{}{label}", issuers::ISSUER))?
        .filter(|k| t.covers(&k.tenant))
        .map(issuer_key))
}

/// One issuer key pair's record (with its block at rest), if the caller's tenants cover it.
pub fn read_issuer_key_record(kv: &dyn Kv, t: &Tenants, label: &str) -> Result<Option<IssuerKeyRecord>, StoreError> {
    Ok(read::<IssuerKeyRecord>(kv, &format!("{}{label}", issuers::ISSUER))?.filter(|k| t.covers(&k.tenant)))
}

/// Issuer certificates: those bound to an issuer key pair only when it may see the pair.
pub fn read_issuer_certs(kv: &dyn Kv, t: &Tenants) -> Result<Vec<pb::IssuerCertView>, StoreError> {
    let mut out = Vec::new();
    for c in scan::<IssuerCertRecord>(kv, issuers::ISSUER_CERT)? {
        let visible = match &c.key {
            None => true,
            Some(label) => read::<IssuerKeyRecord>(kv, &format!("{}{label}", issuers::ISSUER))?
                .is_some_and(|k| t.covers(&k.tenant)),
        };
        if visible {
            out.push(issuer_cert(c));
        }
    }
    Ok(out)
}

/// The audit keys' check values.
pub fn read_audit_keys(kv: &dyn Kv) -> Result<Option<pb::AuditKeysView>, StoreError> {
    Ok(read::<AuditKeys>(kv, key::AUDIT_KEYS)?.map(audit_keys))
}

/// Jobs not yet erased.
pub fn read_jobs(kv: &dyn Kv, t: &Tenants) -> Result<Vec<pb::JobView>, StoreError> {
    Ok(crate::jobs::jobs(kv)?.into_iter().filter(|j| t.covers(&j.tenant)).map(job).collect())
}

/// One job.
pub fn read_job(kv: &dyn Kv, t: &Tenants, id: &str) -> Result<Option<pb::JobView>, StoreError> {
    Ok(crate::jobs::job(kv, id)?.filter(|j| t.covers(&j.tenant)).map(job))
}

/// A job's chunks (none of a job it may not see).
pub fn read_chunks(kv: &dyn Kv, t: &Tenants, id: &str) -> Result<Vec<pb::ChunkView>, StoreError> {
    if !crate::jobs::job(kv, id)?.is_some_and(|j| t.covers(&j.tenant)) {
        return Ok(Vec::new());
    }
    Ok(crate::jobs::chunks(kv, id)?.into_iter().map(chunk).collect())
}

/// What the superseded `Keys.Query` knows.
pub const QUERIES: &str = "smk, nodes, ceremonies, ceremony, keys, key, approvals, approval, cas, revoked, issuers, \
                           issuer, issuer-certs, audit-keys, jobs, job, chunks";

/// The superseded `Keys.Query`: the JSON of the same views (`null` for an absent record), or
/// `None` for a `what` it does not know.
pub fn query_json(kv: &dyn Kv, t: &Tenants, what: &str, id: &str) -> Result<Option<serde_json::Value>, StoreError> {
    fn json<T: serde::Serialize>(v: T) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
    }
    Ok(Some(match what {
        "smk" => json(read_smk(kv)?),
        "nodes" => json(read_nodes(kv)?),
        "ceremonies" => json(read_ceremonies(kv, t)?),
        "ceremony" => json(read_ceremony(kv, t, id)?),
        "keys" => json(read_keys(kv, t)?),
        "key" => json(read_key(kv, t, id)?),
        "approvals" => json(read_approvals(kv, t)?),
        "approval" => json(read_approval(kv, t, id)?),
        "cas" => json(read_ca_keys(kv)?),
        "revoked" => json(read_revoked(kv)?),
        "issuers" => json(read_issuer_keys(kv, t)?),
        "issuer" => json(read_issuer_key(kv, t, id)?),
        "issuer-certs" => json(read_issuer_certs(kv, t)?),
        "audit-keys" => json(read_audit_keys(kv)?),
        "jobs" => json(read_jobs(kv, t)?),
        "job" => json(read_job(kv, t, id)?),
        "chunks" => json(read_chunks(kv, t, id)?),
        _ => return Ok(None),
    }))
}

/// Serve one typed query: the caller must be one of the people who run the cluster (`STAFF`;
/// partner systems, CA officers and branches read nothing here), the read is linearized when
/// asked, and the answer carries this node's applied index.
pub(super) async fn serve<T: Send + 'static>(
    cluster: &super::ClusterService,
    sm: &crate::raft::StateMachine,
    who: &crate::identity::Principal,
    call: &str,
    linearizable: bool,
    f: impl FnOnce(&dyn Kv, &Tenants) -> Result<T, StoreError> + Send + 'static,
) -> Result<(T, u64), super::ApiError> {
    serve_to(cluster, sm, who, &super::STAFF, call, linearizable, f).await
}

/// [`serve`] to the roles `roles` (the EMV CA's views: staff and CA officers).
pub(super) async fn serve_to<T: Send + 'static>(
    cluster: &super::ClusterService,
    sm: &crate::raft::StateMachine,
    who: &crate::identity::Principal,
    roles: &[crate::keys::model::Role],
    call: &str,
    linearizable: bool,
    f: impl FnOnce(&dyn Kv, &Tenants) -> Result<T, StoreError> + Send + 'static,
) -> Result<(T, u64), super::ApiError> {
    cluster.require(who, roles, call).await?;
    if linearizable {
        cluster.linearize().await?;
    }
    let tenants = who.cert.tenants.clone();
    let v = sm.read(move |kv| f(kv, &tenants)).await.map_err(|e| super::ApiError::Internal(e.to_string()))?;
    Ok((v, cluster.applied_index()))
}

/// A record a typed `Get…` did not find.
pub(super) fn found<T>(v: Option<T>, what: &str, id: &str) -> Result<T, super::ApiError> {
    v.ok_or_else(|| super::ApiError::NotFound(format!("no {what} {id:?}")))
}

/// An audit record: its export line (`audit::to_json`, the `quill audit export` and archive form)
/// read as the view, so the two never disagree; with the opened note when an auditor asked.
pub fn audit_record(line: &serde_json::Value) -> pb::AuditRecordView {
    serde_json::from_value(line.clone()).unwrap_or_default()
}

/// What `AuditVerify` found.
pub fn verify_report(r: &crate::audit::VerifyReport) -> pb::AuditVerifyReport {
    let (broken_seq, broken_reason) = r.broken.clone().unwrap_or_default();
    pb::AuditVerifyReport {
        records: r.records,
        macs: r.macs,
        unkeyed: r.unkeyed,
        node_macs: r.node_macs,
        anchors: r.anchors,
        anchors_archived: r.anchors_archived,
        seals: r.seals,
        sealed_upto: r.sealed_upto,
        head_seq: r.head_seq,
        head_hash: r.head_hash.clone(),
        archived: r.archived,
        archives: r.archives,
        broken_seq,
        broken_reason,
    }
}

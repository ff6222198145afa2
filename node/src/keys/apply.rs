//! The key-management commands and how the state machine applies them.
//!
//! Apply is deterministic: it reads only the command, the entry's context ([`Ctx`]: log index,
//! leader time, actor) and the stored state, and it never touches an HSM. HSM work happens before
//! a command is proposed (a node generates or imports a key and proposes the wrapped result) or
//! after it is applied (each node's key agent forms the SMK from the sealed components it finds
//! in the state). A refused command changes nothing and says why ([`Applied::Rejected`]); the
//! refusal is the same on every node.

use serde::{Deserialize, Serialize};

mod approvals;
mod audit_keys;
pub mod ca;
mod ceremonies;
mod inventory;
use inventory::NewKey;
pub mod issuers;
mod nodes;
pub mod partners;
mod revocations;
pub mod rotation;
mod smk;
pub mod targets;

pub use revocations::{Revoked, is_revoked, normalize_serial, revocations, revoked_serials};

use super::model::*;
use crate::identity::NodeId;
use crate::store::{Kv, StoreError};

/// The state-machine key prefixes of key management.
pub mod key {
    /// The SMK's facts.
    pub const SMK: &str = "keys/smk";
    /// The audit keys.
    pub const AUDIT_KEYS: &str = "keys/audit-keys";
    /// `keys/node/<id, 20 digits>` → [`super::NodeRecord`].
    pub const NODE: &str = "keys/node/";
    /// `keys/ceremony/<id>` → [`super::Ceremony`].
    pub const CEREMONY: &str = "keys/ceremony/";
    /// `keys/key/<label.vN>` → [`super::KeyRecord`].
    pub const KEY: &str = "keys/key/";
    /// `keys/label/<label>` → the latest version (u32).
    pub const LABEL: &str = "keys/label/";
    /// `keys/approval/<id>` → [`super::Approval`].
    pub const APPROVAL: &str = "keys/approval/";
    /// `keys/revoked/<serial>` → [`super::Revoked`].
    pub const REVOKED: &str = "keys/revoked/";

    /// The key of node `id`'s record.
    pub fn node(id: u64) -> String {
        format!("{NODE}{id:020}")
    }
}

/// A key-management command, as replicated in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyCommand {
    /// A node enrols its HSM transport public key (actor: that node).
    EnrollNode {
        /// The node.
        node: NodeId,
        /// Its transport public key.
        transport: RsaPublic,
        /// Its HSM, described.
        hsm: String,
    },
    /// Start a ceremony (actor: admin).
    CeremonyStart {
        /// Ceremony id.
        id: String,
        /// What it forms.
        target: CeremonyTarget,
        /// Number of components, 2-9.
        components: u8,
    },
    /// A custodian's component, sealed to every recipient node (actor: custodian).
    CeremonySubmit {
        /// Ceremony id.
        id: String,
        /// The component's KCV, computed where it was entered.
        kcv: Kcv,
        /// The component sealed to each recipient's transport key.
        sealed: Vec<(NodeId, SealedComponent)>,
    },
    /// Cancel an open ceremony (actor: admin).
    CeremonyCancel {
        /// Ceremony id.
        id: String,
    },
    /// A node formed the SMK of a ceremony in its HSM (actor: that node).
    SmkFormed {
        /// The node.
        node: NodeId,
        /// The ceremony.
        ceremony: String,
        /// The formed key's KCV.
        kcv: Kcv,
    },
    /// A node formed the next SMK of a rotation ceremony in its HSM (actor: that node).
    SmkNextFormed {
        /// The node.
        node: NodeId,
        /// The rotation ceremony.
        ceremony: String,
        /// The next SMK's KCV.
        kcv: Kcv,
    },
    /// Switch the cluster to the next SMK: every key block under the current SMK, re-protected
    /// under the next one in a node's HSM, replaces its record's in one step (actor: a node; the
    /// leader's key agent). Refused unless it covers exactly the blocks under the current SMK.
    SmkSwitch {
        /// The rotation ceremony.
        ceremony: String,
        /// The next SMK's KCV.
        kcv: Kcv,
        /// Every key block, re-protected, by where it lives.
        blocks: Vec<(rotation::BlockAt, WrappedKey)>,
        /// Every RSA private key (issuer keys), wrapped again, by label.
        rsa: Vec<(String, quill_hsm::WrappedRsaKey)>,
    },
    /// A node destroyed the old SMK in its HSM after the switch (actor: that node).
    OldSmkDestroyed {
        /// The node.
        node: NodeId,
        /// The old SMK's KCV.
        kcv: Kcv,
    },
    /// A node holding the SMK wrapped it to a later node after approval (actor: the wrapping node).
    SmkGranted {
        /// The approval that allowed it.
        approval: String,
        /// The receiving node.
        node: NodeId,
        /// SMK wrapped to the receiving node's transport key.
        sealed: Vec<u8>,
    },
    /// A node installed a granted SMK (actor: that node).
    SmkInstalled {
        /// The node.
        node: NodeId,
        /// The KCV it sees.
        kcv: Kcv,
    },
    /// A key made in an HSM (generated, formed from components, or imported from TR-31),
    /// wrapped under the SMK (actor: admin, or the node forming a ceremony's key).
    KeyCreate {
        /// Label; the version is the next free one.
        label: String,
        /// Usage.
        usage: Usage,
        /// Exportable as TR-31 under dual control.
        exportable: bool,
        /// Where it came from.
        origin: Origin,
        /// The wrapped key (algorithm and KCV inside).
        wrapped: WrappedKey,
        /// Start active (otherwise pending).
        active: bool,
        /// The tenant it belongs to (the caller must act for it; a ceremony's key: the
        /// ceremony's tenant).
        #[serde(default = "crate::identity::default_tenant")]
        tenant: String,
    },
    /// Change a key's state (actor: admin).
    KeySetState {
        /// Key id.
        id: String,
        /// New state (not `destroyed`: that needs an approval).
        state: KeyState,
    },
    /// Ask for a dual-control approval (actor: admin or operator).
    ApprovalRequest {
        /// Approval id.
        id: String,
        /// What it is for.
        action: ApprovalAction,
        /// How long it may be granted and used, from the request (ms; 0: [`APPROVAL_TTL_MS`]; at
        /// most [`APPROVAL_TTL_MAX_MS`]).
        ttl_ms: u64,
    },
    /// Grant or deny an approval (actor: custodian).
    ApprovalDecide {
        /// Approval id.
        id: String,
        /// `true` grants, `false` denies.
        grant: bool,
    },
    /// Record that an approved export ran (actor: who ran it, admin or operator).
    ExportDone {
        /// The approval.
        approval: String,
    },
    /// A node's HSM adapter brought key material into host memory, as its configuration allows
    /// for that module (actor: that node). Recorded for the audit chain only.
    HostPathUsed {
        /// The node.
        node: NodeId,
        /// The adapter operation.
        operation: String,
        /// What was done in host memory and why.
        what: String,
        /// The PKCS#11 module.
        module: String,
    },
    /// An auditor is about to read the sealed notes of audit records `from..=to` in clear
    /// (`quill audit export --decrypt`): recorded first, so the reading is itself in the chain.
    AuditDecrypt {
        /// First record.
        from: u64,
        /// Last record.
        to: u64,
    },
    /// Store the audit keys (actor: a node holding the SMK). Only the first is kept.
    AuditKeysSet {
        /// The keys.
        keys: AuditKeys,
    },
    /// Import an EMV CA public key (actor: admin); with the scheme's SHA-1 check value when given.
    CaKeyImport {
        /// RID, hex.
        rid: String,
        /// CA public key index.
        index: u8,
        /// Modulus.
        modulus: Vec<u8>,
        /// Public exponent.
        exponent: Vec<u8>,
        /// SHA-1(RID ‖ index ‖ modulus ‖ exponent), when the scheme publishes it.
        checksum: Option<Vec<u8>>,
    },
    /// An issuer RSA key pair generated in a node's HSM (actor: admin).
    IssuerKeyCreate {
        /// Label.
        label: String,
        /// Public key and private key wrapped under the SMK.
        key: quill_hsm::WrappedRsaKey,
        /// Where it was generated.
        origin: Origin,
        /// The tenant it belongs to (the caller must act for it).
        #[serde(default = "crate::identity::default_tenant")]
        tenant: String,
    },
    /// An alarm a node raises for the audit chain (actor: that node), e.g. state hashes that
    /// differ between nodes at one applied index.
    Alarm {
        /// The node raising it.
        node: NodeId,
        /// What it saw.
        what: String,
    },
    /// A call the API refused the caller for its role (actor: the caller): recorded in the audit
    /// chain with the caller's identity, and always rejected.
    Denied {
        /// The RPC, e.g. `Jobs.Fetch`.
        call: String,
        /// Why.
        reason: String,
    },
    /// Revoke a certificate by serial (actor: admin): refused on every listener and in apply from
    /// now on.
    RevokeCert {
        /// Serial, hex.
        serial: String,
        /// Why.
        reason: String,
    },
    /// Import a scheme issuer-certificate file, verified against the CA keys held (actor: admin);
    /// with `key`, bind it to that issuer key pair (the certified key must be its public key).
    IssuerCertImport {
        /// The certificate: a scheme's file, or the card's data elements.
        source: issuers::CertSource,
        /// The issuer key pair it certifies.
        key: Option<String>,
    },
    /// A CA key pair of this cluster's EMV CA generated in a node's HSM (actor: CA officer).
    CaKeyCreate {
        /// RID, hex.
        rid: String,
        /// CA public key index.
        index: u8,
        /// MMYY.
        expiry: String,
        /// Issuer identifier ranges it certifies.
        ranges: Vec<String>,
        /// The pair, private half under the SMK bound to [`ca::CA_OWNER`].
        key: quill_hsm::WrappedRsaKey,
        /// Where it was generated.
        origin: Origin,
    },
    /// An approved certification takes its serial (actor: CA officer; the HSM signs after).
    CaCertified {
        /// The approval.
        approval: String,
    },
    /// Revoke issuer certificates by (RID, CA index, serial): of this CA (CA officer), or from
    /// another CA's revocation list (admin).
    CaRevoke {
        /// (RID hex, CA index, serial hex).
        entries: Vec<(String, u8, String)>,
        /// Why.
        reason: String,
    },
    /// An issuer's certification request was self-signed in a node's HSM (actor: admin), for the
    /// audit chain: the issuer private key was used.
    IssuerRequestSigned {
        /// The issuer key pair.
        label: String,
        /// What the request asks: issuer id, key index, expiry, layout.
        what: String,
    },
    /// Name a partner system and its zone master key (actor: admin).
    PartnerSet {
        /// The name its `partner:<name>` certificate carries.
        name: String,
        /// An active K0 key formed from components.
        zmk: String,
    },
    /// Share a key with a partner, or stop (actor: admin).
    PartnerShare { name: String, key: String, share: bool },
    /// A partner's TR-31 block opened under its ZMK in a node's HSM (actor: the partner): usage
    /// and exportability from the block's authenticated header.
    PartnerImported {
        /// Filed as `<partner>.<label>`.
        label: String,
        usage: Usage,
        exportable: bool,
        wrapped: WrappedKey,
    },
    /// A key left for a partner as a TR-31 block under its ZMK (actor: the partner).
    PartnerExported { key: String },
    /// Retire one of this CA's keys for good (actor: CA officer): it certifies nothing more and
    /// this cluster no longer verifies certificates under it.
    CaKeyRevoke {
        /// RID, hex.
        rid: String,
        /// CA public key index.
        index: u8,
        /// Why.
        reason: String,
    },
    /// Register another cluster keys are distributed to, or change it (actor: admin).
    TargetSet {
        name: String,
        /// `[https://]host:port`.
        endpoint: String,
        /// SHA-256 of its CA certificate (DER), hex.
        ca_sha256: String,
        /// The KBPK between the two: an active K0/K1 formed from components.
        kbpk: String,
    },
    /// The target confirmed a key exported to it (actor: admin): recorded if the KCV it answered
    /// is the key's.
    KeyDelivered {
        target: String,
        /// The export approval the key left under.
        approval: String,
        /// The KCV the target answered.
        kcv: String,
        /// The id the target filed it under.
        remote_key: String,
    },
    /// This site's TR-34-style signing key (actor: admin): an RSA pair made in a node's HSM,
    /// the private half a key block under the SMK. Set once.
    KdhKeySet { key: quill_hsm::WrappedRsaKey },
    /// A KBPK generated for a target's HSM transport key and signed for it (actor: admin): filed
    /// here, the target's KBPK once the target confirms its KCV ([`KeyCommand::TargetConfirmed`]).
    TargetTransported {
        target: String,
        /// The KBPK, under the SMK.
        wrapped: WrappedKey,
        /// SHA-256 of the target node's transport key, and the node.
        krd: String,
        node: u64,
    },
    /// The target answered the transported KBPK's KCV (actor: admin).
    TargetConfirmed { target: String, kcv: String, remote_key: String },
    /// Pin a partner's TR-34-style signing key (actor: admin); the partner then establishes its
    /// zone master key by [`KeyCommand::PartnerKbpkReceived`].
    PartnerKdhSet { name: String, kdh: RsaPublic },
    /// A KBPK a partner sent by TR-34-style transport, checked and opened in a node's HSM (actor:
    /// the partner): its zone master key from now on.
    PartnerKbpkReceived {
        wrapped: WrappedKey,
        /// SHA-256 of the signing key that signed the envelope (the pinned one).
        kdh: String,
        /// The envelope's nonce: an envelope is taken once.
        nonce: String,
    },
}

pub use crate::domain::{Applied, Ctx};

use crate::domain::{Fail, Step, refuse};

impl KeyCommand {
    /// The audit action name.
    pub fn action(&self) -> &'static str {
        match self {
            KeyCommand::EnrollNode { .. } => "node.enroll",
            KeyCommand::CeremonyStart { .. } => "ceremony.start",
            KeyCommand::CeremonySubmit { .. } => "ceremony.submit",
            KeyCommand::CeremonyCancel { .. } => "ceremony.cancel",
            KeyCommand::SmkFormed { .. } => "smk.formed",
            KeyCommand::SmkNextFormed { .. } => "smk.next_formed",
            KeyCommand::SmkSwitch { .. } => "smk.switch",
            KeyCommand::OldSmkDestroyed { .. } => "smk.old_destroyed",
            KeyCommand::SmkGranted { .. } => "smk.grant",
            KeyCommand::SmkInstalled { .. } => "smk.installed",
            KeyCommand::KeyCreate { .. } => "key.create",
            KeyCommand::KeySetState { .. } => "key.state",
            KeyCommand::ApprovalRequest { .. } => "approval.request",
            KeyCommand::ApprovalDecide { grant: true, .. } => "approval.grant",
            KeyCommand::ApprovalDecide { grant: false, .. } => "approval.deny",
            KeyCommand::ExportDone { .. } => "key.export",
            KeyCommand::AuditKeysSet { .. } => "audit.keys",
            KeyCommand::AuditDecrypt { .. } => "audit.decrypt",
            KeyCommand::HostPathUsed { .. } => "hsm.host_path",
            KeyCommand::CaKeyImport { .. } => "ca.import",
            KeyCommand::IssuerKeyCreate { .. } => "issuer.create",
            KeyCommand::IssuerCertImport { .. } => "issuer.certificate",
            KeyCommand::RevokeCert { .. } => "identity.revoke",
            KeyCommand::Alarm { .. } => "cluster.alarm",
            KeyCommand::Denied { .. } => "api.denied",
            KeyCommand::CaKeyCreate { .. } => "ca.key_create",
            KeyCommand::CaCertified { .. } => "ca.certify",
            KeyCommand::CaRevoke { .. } => "ca.revoke",
            KeyCommand::IssuerRequestSigned { .. } => "issuer.request",
            KeyCommand::PartnerSet { .. } => "partner.set",
            KeyCommand::PartnerShare { .. } => "partner.share",
            KeyCommand::PartnerImported { .. } => "exchange.import",
            KeyCommand::PartnerExported { .. } => "exchange.export",
            KeyCommand::CaKeyRevoke { .. } => "ca.key_revoke",
            KeyCommand::TargetSet { .. } => "target.set",
            KeyCommand::KeyDelivered { .. } => "key.distribute",
            KeyCommand::KdhKeySet { .. } => "target.kdh_key",
            KeyCommand::TargetTransported { .. } => "target.kbpk_sent",
            KeyCommand::TargetConfirmed { .. } => "target.kbpk_confirmed",
            KeyCommand::PartnerKdhSet { .. } => "partner.kdh",
            KeyCommand::PartnerKbpkReceived { .. } => "exchange.kbpk_received",
        }
    }

    /// The object the command is about, before applying (for refusals).
    pub fn object(&self) -> String {
        match self {
            KeyCommand::EnrollNode { node, .. }
            | KeyCommand::SmkFormed { node, .. }
            | KeyCommand::SmkNextFormed { node, .. }
            | KeyCommand::OldSmkDestroyed { node, .. }
            | KeyCommand::SmkGranted { node, .. }
            | KeyCommand::SmkInstalled { node, .. }
            | KeyCommand::HostPathUsed { node, .. }
            | KeyCommand::Alarm { node, .. } => format!("node:{node}"),
            KeyCommand::CeremonyStart { id, .. }
            | KeyCommand::CeremonySubmit { id, .. }
            | KeyCommand::CeremonyCancel { id } => format!("ceremony:{id}"),
            KeyCommand::KeyCreate { label, .. } => format!("key:{label}"),
            KeyCommand::KeySetState { id, .. } => format!("key:{id}"),
            KeyCommand::ApprovalRequest { id, .. } | KeyCommand::ApprovalDecide { id, .. } => format!("approval:{id}"),
            KeyCommand::ExportDone { approval } => format!("approval:{approval}"),
            KeyCommand::AuditKeysSet { .. } => "audit-keys".into(),
            KeyCommand::SmkSwitch { ceremony, .. } => format!("ceremony:{ceremony}"),
            KeyCommand::AuditDecrypt { from, to } => format!("audit:{from}..={to}"),
            KeyCommand::CaKeyImport { rid, index, .. } => format!("ca:{}/{index:02X}", rid.to_ascii_uppercase()),
            KeyCommand::IssuerKeyCreate { label, .. } => format!("issuer:{label}"),
            KeyCommand::IssuerCertImport { key: Some(label), .. } => format!("issuer:{label}"),
            KeyCommand::IssuerCertImport { key: None, .. } => "issuer-cert".into(),
            KeyCommand::RevokeCert { serial, .. } => format!("cert:{serial}"),
            KeyCommand::Denied { call, .. } => format!("call:{call}"),
            KeyCommand::CaKeyCreate { rid, index, .. } | KeyCommand::CaKeyRevoke { rid, index, .. } => {
                format!("ca-key:{}", ca::ca_id(rid, *index))
            }
            KeyCommand::CaCertified { approval } => format!("approval:{approval}"),
            KeyCommand::CaRevoke { entries, .. } => match entries.first() {
                Some((rid, index, serial)) => format!("ca-revoked:{}/{serial}", ca::ca_id(rid, *index)),
                None => "ca-revoked".into(),
            },
            KeyCommand::IssuerRequestSigned { label, .. } => format!("issuer:{label}"),
            KeyCommand::PartnerSet { name, .. } => format!("partner:{name}"),
            KeyCommand::PartnerShare { key, .. } | KeyCommand::PartnerExported { key } => format!("key:{key}"),
            KeyCommand::PartnerImported { label, .. } => format!("key:{label}"),
            KeyCommand::TargetSet { name, .. } => format!("target:{name}"),
            KeyCommand::KeyDelivered { approval, .. } => format!("approval:{approval}"),
            KeyCommand::KdhKeySet { .. } => "kdh-key".into(),
            KeyCommand::TargetTransported { target, .. } | KeyCommand::TargetConfirmed { target, .. } => {
                format!("target:{target}")
            }
            KeyCommand::PartnerKdhSet { name, .. } => format!("partner:{name}"),
            KeyCommand::PartnerKbpkReceived { .. } => "partner-kbpk".into(),
        }
    }
}

/// How long an approval may be granted and used, unless its request says otherwise: 24 h.
pub const APPROVAL_TTL_MS: u64 = 24 * 3_600_000;
/// The longest an approval may last: 7 days.
pub const APPROVAL_TTL_MAX_MS: u64 = 7 * 24 * 3_600_000;

/// Refuse an approval past its expiry (leader time).
fn unexpired(a: &Approval, ctx: &Ctx<'_>) -> Step<()> {
    if ctx.time_ms >= a.expires_ms {
        return refuse(format!("approval {} expired {} s ago", a.id, (ctx.time_ms - a.expires_ms) / 1000));
    }
    Ok(())
}

/// Apply `cmd` to the state in `kv`.
pub fn apply(kv: &mut dyn Kv, ctx: &Ctx<'_>, cmd: KeyCommand) -> Result<Applied, StoreError> {
    let object = cmd.object();
    let mut staged = Staged::default();
    let result = {
        let mut st = State { kv: &*kv, staged: &mut staged };
        st.apply(ctx, cmd)
    };
    match result {
        Ok(Ok(done)) => {
            for (k, v) in staged.puts {
                match v {
                    Some(v) => kv.put(k.as_bytes(), v),
                    None => kv.delete(k.as_bytes()),
                }
            }
            Ok(done)
        }
        Ok(Err(Fail::Refused(reason))) => Ok(Applied::Rejected { object, reason }),
        Ok(Err(Fail::Store(e))) => Err(e),
        Err(e) => Err(e),
    }
}

/// Writes of one command, made only if it is not refused.
#[derive(Default)]
struct Staged {
    puts: Vec<(String, Option<Vec<u8>>)>,
}

struct State<'a> {
    kv: &'a dyn Kv,
    staged: &'a mut Staged,
}

/// Read a typed value from `kv`.
pub fn read<T: serde::de::DeserializeOwned>(kv: &dyn Kv, key: &str) -> Result<Option<T>, StoreError> {
    crate::store::get_typed(kv, key.as_bytes())
}

/// Every value under a prefix, in key order.
pub fn scan<T: serde::de::DeserializeOwned>(kv: &dyn Kv, prefix: &str) -> Result<Vec<T>, StoreError> {
    crate::store::scan_typed(kv, prefix.as_bytes())
}

impl State<'_> {
    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        read(self.kv, key)
    }

    fn put<T: Serialize>(&mut self, key: impl Into<String>, value: &T) -> Result<(), StoreError> {
        let key = key.into();
        let bytes = crate::store::codec::encode(value).map_err(|e| StoreError::encode("key-management record", e))?;
        self.staged.puts.push((key, Some(bytes)));
        Ok(())
    }

    fn role(&self, ctx: &Ctx<'_>, allowed: &[Role]) -> Step<()> {
        crate::domain::require_role(ctx.actor, allowed).map_err(Fail::Refused)
    }

    fn node_actor(&self, ctx: &Ctx<'_>, node: NodeId) -> Step<()> {
        self.role(ctx, &[Role::Node])?;
        if ctx.actor.name != Actor::node(node).name {
            return refuse(format!("{} cannot act for node {node}", ctx.actor));
        }
        Ok(())
    }

    fn apply(&mut self, ctx: &Ctx<'_>, cmd: KeyCommand) -> Result<Step<Applied>, StoreError> {
        match cmd {
            KeyCommand::EnrollNode { node, transport, hsm } => self.enroll(ctx, node, transport, hsm),
            KeyCommand::CeremonyStart { id, target, components } => self.ceremony_start(ctx, id, target, components),
            KeyCommand::CeremonySubmit { id, kcv, sealed } => self.ceremony_submit(ctx, id, kcv, sealed),
            KeyCommand::CeremonyCancel { id } => self.ceremony_cancel(ctx, id),
            KeyCommand::SmkFormed { node, ceremony, kcv } => self.smk_formed(ctx, node, ceremony, kcv),
            KeyCommand::SmkNextFormed { node, ceremony, kcv } => self.smk_next_formed(ctx, node, ceremony, kcv),
            KeyCommand::SmkSwitch { ceremony, kcv, blocks, rsa } => self.smk_switch(ctx, ceremony, kcv, blocks, rsa),
            KeyCommand::OldSmkDestroyed { node, kcv } => self.old_smk_destroyed(ctx, node, kcv),
            KeyCommand::SmkGranted { approval, node, sealed } => self.smk_granted(ctx, approval, node, sealed),
            KeyCommand::SmkInstalled { node, kcv } => self.smk_installed(ctx, node, kcv),
            KeyCommand::KeyCreate { label, usage, exportable, origin, wrapped, active, tenant } => {
                self.key_create(ctx, NewKey { label, usage, exportable, origin, wrapped, active, tenant })
            }
            KeyCommand::KeySetState { id, state } => self.key_set_state(ctx, id, state),
            KeyCommand::ApprovalRequest { id, action, ttl_ms } => self.approval_request(ctx, id, action, ttl_ms),
            KeyCommand::ApprovalDecide { id, grant } => self.approval_decide(ctx, id, grant),
            KeyCommand::ExportDone { approval } => self.export_done(ctx, approval),
            KeyCommand::AuditKeysSet { keys } => self.audit_keys(ctx, keys),
            KeyCommand::AuditDecrypt { from, to } => {
                if let Err(r) = self.role(ctx, &[Role::Auditor]) {
                    return Ok(Err(r));
                }
                if from == 0 || from > to {
                    return Ok(refuse(format!("records {from}..={to} are not a range")));
                }
                Ok(Ok(Applied::done(
                    format!("audit:{from}..={to}"),
                    format!("sealed notes of records {from}..={to} opened for {}", ctx.actor),
                )))
            }
            KeyCommand::HostPathUsed { node, operation, what, module } => {
                if let Err(r) = self.node_actor(ctx, node) {
                    return Ok(Err(r));
                }
                Ok(Ok(Applied::done(format!("node:{node}"), format!("{operation} on {module}: {what}"))))
            }
            KeyCommand::CaKeyImport { rid, index, modulus, exponent, checksum } => {
                self.ca_import(ctx, rid, index, modulus, exponent, checksum)
            }
            KeyCommand::IssuerKeyCreate { label, key, origin, tenant } => {
                self.issuer_key_create(ctx, label, key, origin, tenant)
            }
            KeyCommand::IssuerCertImport { source, key } => self.issuer_cert_import(ctx, source, key),
            KeyCommand::CaKeyCreate { rid, index, expiry, ranges, key, origin } => {
                self.ca_key_create(ctx, rid, index, expiry, ranges, key, origin)
            }
            KeyCommand::CaCertified { approval } => self.ca_certified(ctx, approval),
            KeyCommand::CaRevoke { entries, reason } => self.ca_revoke(ctx, entries, reason),
            KeyCommand::CaKeyRevoke { rid, index, reason } => self.ca_key_revoke(ctx, rid, index, reason),
            KeyCommand::TargetSet { name, endpoint, ca_sha256, kbpk } => {
                self.target_set(ctx, name, endpoint, ca_sha256, kbpk)
            }
            KeyCommand::KeyDelivered { target, approval, kcv, remote_key } => {
                self.key_delivered(ctx, target, approval, kcv, remote_key)
            }
            KeyCommand::IssuerRequestSigned { label, what } => self.issuer_request_signed(ctx, label, what),
            KeyCommand::PartnerSet { name, zmk } => self.partner_set(ctx, name, zmk),
            KeyCommand::PartnerShare { name, key, share } => self.partner_share(ctx, name, key, share),
            KeyCommand::PartnerImported { label, usage, exportable, wrapped } => {
                self.partner_imported(ctx, label, usage, exportable, wrapped)
            }
            KeyCommand::PartnerExported { key } => self.partner_exported(ctx, key),
            KeyCommand::KdhKeySet { key } => self.kdh_key_set(ctx, key),
            KeyCommand::TargetTransported { target, wrapped, krd, node } => {
                self.target_transported(ctx, target, wrapped, krd, node)
            }
            KeyCommand::TargetConfirmed { target, kcv, remote_key } => {
                self.target_confirmed(ctx, target, kcv, remote_key)
            }
            KeyCommand::PartnerKdhSet { name, kdh } => self.partner_kdh_set(ctx, name, kdh),
            KeyCommand::PartnerKbpkReceived { wrapped, kdh, nonce } => {
                self.partner_kbpk_received(ctx, wrapped, kdh, nonce)
            }
            KeyCommand::RevokeCert { serial, reason } => self.revoke(ctx, serial, reason),
            KeyCommand::Denied { call, reason } => Ok(refuse(format!("{call}: {reason}"))),
            KeyCommand::Alarm { node, what } => {
                if let Err(r) = self.node_actor(ctx, node) {
                    return Ok(Err(r));
                }
                Ok(Ok(Applied::done(format!("node:{node}"), format!("ALARM: {what}"))))
            }
        }
    }
}

/// Ids and labels: 1-64 characters of `A-Z a-z 0-9 - _ .`.
fn check_id(what: &str, id: &str) -> Step<()> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return refuse(format!("{what} {id:?}: 1-64 characters of A-Z a-z 0-9 - _ ."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKv;

    fn who(role: Role, name: &str) -> Actor {
        Actor { name: name.into(), role }
    }

    fn run(kv: &mut MemKv, actor: &Actor, cmd: KeyCommand) -> Applied {
        run_at(kv, actor, 1000, cmd)
    }

    fn run_at(kv: &mut MemKv, actor: &Actor, time_ms: u64, cmd: KeyCommand) -> Applied {
        // Each actor its own certificate (and key), as the API would establish it.
        let cert = crate::identity::CertRef {
            serial: format!("{actor}"),
            key_fp: format!("key of {actor}"),
            tenants: crate::identity::Tenants::All,
        };
        let ctx = Ctx { log_index: 1, time_ms, actor, cert: Some(&cert) };
        apply(kv, &ctx, cmd).expect("apply")
    }

    #[test]
    fn approvals_expire_and_an_expired_one_is_neither_granted_nor_used() {
        let mut kv = with_smk();
        let admin = who(Role::Admin, "ada");
        let destroy = |id: &str, ttl_ms| KeyCommand::ApprovalRequest {
            id: id.into(),
            action: ApprovalAction::Destroy { key: "nope.v1".into() },
            ttl_ms,
        };
        // the key does not exist: an approval for a real one
        ok(run(
            &mut kv,
            &admin,
            KeyCommand::KeyCreate {
                label: "cvk".into(),
                usage: Usage::C0,
                exportable: false,
                origin: Origin::Generated { node: 1 },
                wrapped: wrapped(KeyAlg::Des2, "ABCDEF", "AAAAAAAAAA"),
                active: true,
                tenant: "default".into(),
            },
        ));
        let req = |id: &str, ttl_ms| KeyCommand::ApprovalRequest {
            id: id.into(),
            action: ApprovalAction::Destroy { key: "cvk.v1".into() },
            ttl_ms,
        };
        assert!(refused(run(&mut kv, &admin, destroy("x", 0))).contains("nope.v1"));
        let r = refused(run(&mut kv, &admin, req("long", APPROVAL_TTL_MAX_MS + 1)));
        assert!(r.contains("at most 168 h"), "{r}");
        // default: 24 h from the request (made at t = 1 s)
        ok(run(&mut kv, &admin, req("d", 0)));
        let a: Approval = read(&kv, &format!("{}d", key::APPROVAL)).expect("read").expect("approval");
        assert_eq!(a.expires_ms, 1000 + APPROVAL_TTL_MS);
        let (alice, bob) = (who(Role::Custodian, "alice"), who(Role::Custodian, "bob"));
        ok(run_at(
            &mut kv,
            &alice,
            1000 + APPROVAL_TTL_MS - 1,
            KeyCommand::ApprovalDecide { id: "d".into(), grant: true },
        ));
        let r = refused(run_at(
            &mut kv,
            &bob,
            1000 + APPROVAL_TTL_MS,
            KeyCommand::ApprovalDecide { id: "d".into(), grant: true },
        ));
        assert!(r.contains("expired"), "{r}");
        let k: KeyRecord = read(&kv, &format!("{}cvk.v1", key::KEY)).expect("read").expect("key");
        assert_ne!(k.state, KeyState::Destroyed, "a late second grant destroys nothing");
    }

    /// `cmd` by `actor` with a certificate naming `tenants`.
    fn run_for(kv: &mut MemKv, actor: &Actor, tenants: &[&str], cmd: KeyCommand) -> Applied {
        let cert = crate::identity::CertRef {
            serial: format!("{actor}"),
            key_fp: format!("key of {actor}"),
            tenants: crate::identity::Tenants::parse(tenants.iter().copied()).expect("tenants"),
        };
        let ctx = Ctx { log_index: 1, time_ms: 1000, actor, cert: Some(&cert) };
        apply(kv, &ctx, cmd).expect("apply")
    }

    /// Tenants in apply (whatever the API checked before): a key is made only in a tenant the
    /// certificate names; another tenant's key is "no key" to every change, approval and grant;
    /// a key leaves only under its own tenant's KBPK.
    #[test]
    fn a_tenant_changes_nothing_of_another() {
        let mut kv = with_smk();
        let create = |label: &str, usage, alg, tenant: &str| KeyCommand::KeyCreate {
            label: label.into(),
            usage,
            exportable: true,
            origin: Origin::Generated { node: 1 },
            wrapped: wrapped(alg, "ABCDEF", "AAAAAAAAAA"),
            active: true,
            tenant: tenant.into(),
        };
        let (a_admin, b_admin) = (who(Role::Admin, "ann"), who(Role::Admin, "bert"));
        ok(run_for(&mut kv, &a_admin, &["bank-a"], create("cvk", Usage::C0, KeyAlg::Des2, "bank-a")));
        ok(run_for(&mut kv, &a_admin, &["bank-a"], create("zmk", Usage::K0, KeyAlg::Des2, "bank-a")));
        ok(run_for(&mut kv, &b_admin, &["bank-b"], create("zmk", Usage::K0, KeyAlg::Des2, "bank-b")));
        let r = refused(run_for(&mut kv, &b_admin, &["bank-b"], create("cvk", Usage::C0, KeyAlg::Des2, "bank-a")));
        assert!(r.contains("may not act for tenant \"bank-a\""), "{r}");
        let r = refused(run_for(&mut kv, &b_admin, &[], create("cvk", Usage::C0, KeyAlg::Des2, "bank-b")));
        assert!(r.contains("may not act for tenant \"bank-b\""), "a certificate naming no tenant: {r}");
        let r = refused(run_for(&mut kv, &b_admin, &["*"], create("cvk", Usage::C0, KeyAlg::Des2, "Bank B")));
        assert!(r.contains("1-32 characters"), "{r}");

        let suspend = KeyCommand::KeySetState { id: "cvk.v1".into(), state: KeyState::Suspended };
        assert_eq!(refused(run_for(&mut kv, &b_admin, &["bank-b"], suspend)), "no key cvk.v1");
        let destroy = |id: &str| KeyCommand::ApprovalRequest {
            id: id.into(),
            action: ApprovalAction::Destroy { key: "cvk.v1".into() },
            ttl_ms: 0,
        };
        assert_eq!(refused(run_for(&mut kv, &b_admin, &["bank-b"], destroy("b"))), "no key cvk.v1");
        let export = |kbpk: &str| KeyCommand::ApprovalRequest {
            id: format!("x-{kbpk}"),
            action: ApprovalAction::Export { key: "cvk.v1".into(), kbpk: kbpk.into() },
            ttl_ms: 0,
        };
        // bank-b's ZMK (zmk.v2) is "no key" to bank-a; to bureau staff it is another tenant's.
        assert_eq!(refused(run_for(&mut kv, &a_admin, &["bank-a"], export("zmk.v2"))), "no key zmk.v2");
        let r = refused(run_for(&mut kv, &a_admin, &["*"], export("zmk.v2")));
        assert!(r.contains("its own tenant's KBPK"), "{r}");
        ok(run_for(&mut kv, &a_admin, &["bank-a"], export("zmk.v1")));

        // A bank-b custodian decides nothing about bank-a's key; bank-a's custodians do.
        ok(run_for(&mut kv, &a_admin, &["bank-a"], destroy("a")));
        let grant = KeyCommand::ApprovalDecide { id: "a".into(), grant: true };
        let (carl, cora, cleo) =
            (who(Role::Custodian, "carl"), who(Role::Custodian, "cora"), who(Role::Custodian, "cleo"));
        assert_eq!(refused(run_for(&mut kv, &carl, &["bank-b"], grant.clone())), "no key cvk.v1");
        ok(run_for(&mut kv, &cora, &["bank-a"], grant.clone()));
        ok(run_for(&mut kv, &cleo, &["*"], grant));
        let k: KeyRecord = read(&kv, &format!("{}cvk.v1", key::KEY)).expect("read").expect("key");
        assert_eq!((k.state, k.tenant.as_str()), (KeyState::Destroyed, "bank-a"));
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
            Applied::Done { detail, .. } => panic!("accepted: {detail}"),
        }
    }

    fn pubkey(n: u8) -> RsaPublic {
        RsaPublic::new(&[0xC0, n, 1, 2, 3], &[1, 0, 1])
    }

    fn wrapped(alg: KeyAlg, kcv: &str, smk: &str) -> WrappedKey {
        WrappedKey { alg, blob: vec![7; 40], kcv: Kcv(kcv.into()), smk_kcv: Kcv(smk.into()) }
    }

    /// Two enrolled nodes and a formed SMK (KCV AAAAAAAAAA).
    fn with_smk() -> MemKv {
        let mut kv = MemKv::default();
        for n in [1, 2] {
            ok(run(
                &mut kv,
                &Actor::node(n),
                KeyCommand::EnrollNode { node: n, transport: pubkey(n as u8), hsm: "sim".into() },
            ));
        }
        let admin = who(Role::Admin, "ada");
        ok(run(
            &mut kv,
            &admin,
            KeyCommand::CeremonyStart { id: "s".into(), target: CeremonyTarget::Smk, components: 2 },
        ));
        for c in ["alice", "bob"] {
            let sealed = vec![(1, SealedComponent(vec![1])), (2, SealedComponent(vec![2]))];
            ok(run(
                &mut kv,
                &who(Role::Custodian, c),
                KeyCommand::CeremonySubmit { id: "s".into(), kcv: Kcv("0102030405".into()), sealed },
            ));
        }
        for n in [1, 2] {
            ok(run(
                &mut kv,
                &Actor::node(n),
                KeyCommand::SmkFormed { node: n, ceremony: "s".into(), kcv: Kcv("AAAAAAAAAA".into()) },
            ));
        }
        kv
    }

    /// SMK rotation in apply (`rotation.rs`): only the bureau starts one, one at a time; the next
    /// SMK differs from the current one and is the same on every node; the switch covers exactly
    /// the blocks under the current SMK, each the same key, or changes nothing; the old SMK is
    /// then retired node by node, and no new rotation starts before every node destroyed it.
    #[test]
    fn smk_rotation_switches_every_block_or_nothing() {
        let mut kv = with_smk();
        let admin = who(Role::Admin, "ada");
        let (n1, n2) = (Actor::node(1), Actor::node(2));
        let create = |label: &str, kcv: &str, smk: &str| KeyCommand::KeyCreate {
            label: label.into(),
            usage: Usage::C0,
            exportable: false,
            origin: Origin::Generated { node: 1 },
            wrapped: wrapped(KeyAlg::Des2, kcv, smk),
            active: true,
            tenant: "default".into(),
        };
        ok(run(&mut kv, &admin, create("cvk", "111111", "AAAAAAAAAA")));
        ok(run(&mut kv, &admin, create("pvk", "222222", "AAAAAAAAAA")));
        let start =
            |id: &str| KeyCommand::CeremonyStart { id: id.into(), target: CeremonyTarget::SmkNext, components: 2 };
        let r = refused(run_for(&mut kv, &admin, &["bank-a"], start("r0")));
        assert!(r.contains("only the bureau rotates the SMK"), "{r}");
        ok(run(&mut kv, &admin, start("r1")));
        let r = refused(run(&mut kv, &admin, start("r2")));
        assert!(r.contains("already under way"), "{r}");
        for c in ["alice", "bob"] {
            let sealed = vec![(1, SealedComponent(vec![1])), (2, SealedComponent(vec![2]))];
            ok(run(
                &mut kv,
                &who(Role::Custodian, c),
                KeyCommand::CeremonySubmit { id: "r1".into(), kcv: Kcv("0102030405".into()), sealed },
            ));
        }
        // A rotation ceremony forms no working key.
        let r = refused(run(
            &mut kv,
            &n1,
            KeyCommand::KeyCreate {
                label: "x".into(),
                usage: Usage::C0,
                exportable: false,
                origin: Origin::Components { ceremony: "r1".into(), custodians: Vec::new() },
                wrapped: wrapped(KeyAlg::Des2, "333333", "AAAAAAAAAA"),
                active: true,
                tenant: "default".into(),
            },
        ));
        assert!(r.contains("no key waiting to form"), "{r}");
        let formed =
            |node: u64, kcv: &str| KeyCommand::SmkNextFormed { node, ceremony: "r1".into(), kcv: Kcv(kcv.into()) };
        assert!(refused(run(&mut kv, &n1, formed(1, "AAAAAAAAAA"))).contains("form the current SMK"));
        assert!(refused(run(&mut kv, &n2, formed(1, "BBBBBBBBBB"))).contains("cannot act for node 1"));
        ok(run(&mut kv, &n1, formed(1, "BBBBBBBBBB")));
        assert!(refused(run(&mut kv, &n2, formed(2, "CCCCCCCCCC"))).contains("formed BBBBBBBBBB before"));
        let switch = |blocks: Vec<(rotation::BlockAt, WrappedKey)>| KeyCommand::SmkSwitch {
            ceremony: "r1".into(),
            kcv: Kcv("BBBBBBBBBB".into()),
            blocks,
            rsa: Vec::new(),
        };
        let moved = |id: &str, kcv: &str| (rotation::BlockAt::Key(id.into()), wrapped(KeyAlg::Des2, kcv, "BBBBBBBBBB"));
        let all = || vec![moved("cvk.v1", "111111"), moved("pvk.v1", "222222")];
        assert!(refused(run(&mut kv, &n1, switch(all()))).contains("no next SMK formed on every node"));
        ok(run(&mut kv, &n2, formed(2, "BBBBBBBBBB")));
        let info: SmkInfo = read(&kv, key::SMK).expect("read").expect("smk");
        assert_eq!(info.next.map(|n| n.kcv), Some(Kcv("BBBBBBBBBB".into())));

        // Every incomplete or dishonest switch changes nothing.
        let r = refused(run(&mut kv, &n1, switch(vec![moved("cvk.v1", "111111")])));
        assert!(r.contains("key pvk.v1 is under the current SMK"), "{r}");
        let r = refused(run(&mut kv, &n1, switch(vec![moved("cvk.v1", "111111"), moved("pvk.v1", "999999")])));
        assert!(r.contains("not the same"), "another key in pvk's place: {r}");
        let twice = vec![moved("cvk.v1", "111111"), moved("cvk.v1", "111111"), moved("pvk.v1", "222222")];
        assert!(refused(run(&mut kv, &n1, switch(twice))).contains("offered twice"));
        let mut stale = all();
        stale[1].1.smk_kcv = Kcv("AAAAAAAAAA".into());
        assert!(refused(run(&mut kv, &n1, switch(stale))).contains("not the same"));
        assert!(refused(run(&mut kv, &admin, switch(all()))).contains("needs role node"));
        // A key made meanwhile under the old SMK is caught; the agent translates again.
        ok(run(&mut kv, &admin, create("zmk", "444444", "AAAAAAAAAA")));
        assert!(refused(run(&mut kv, &n1, switch(all()))).contains("key zmk.v1 is under the current SMK"));
        let mut full = all();
        full.push(moved("zmk.v1", "444444"));
        ok(run(&mut kv, &n1, switch(full)));

        let info: SmkInfo = read(&kv, key::SMK).expect("read").expect("smk");
        assert_eq!((info.kcv.0.as_str(), info.ceremony.as_str(), info.next.is_none()), ("BBBBBBBBBB", "r1", true));
        assert_eq!(info.retired.iter().map(|r| r.kcv.0.as_str()).collect::<Vec<_>>(), ["AAAAAAAAAA"]);
        for id in ["cvk.v1", "pvk.v1", "zmk.v1"] {
            let k: KeyRecord = read(&kv, &format!("{}{id}", key::KEY)).expect("read").expect("key");
            assert_eq!(k.wrapped.map(|w| w.smk_kcv.0), Some("BBBBBBBBBB".into()), "{id}");
        }
        assert!(refused(run(&mut kv, &admin, create("late", "555555", "AAAAAAAAAA"))).contains("SMK"));
        ok(run(&mut kv, &admin, create("new", "555555", "BBBBBBBBBB")));
        assert!(refused(run(&mut kv, &admin, KeyCommand::CeremonyCancel { id: "r1".into() })).contains("switched"));

        // The old SMK leaves node by node; the next rotation waits for all of them.
        let gone = |node: u64| KeyCommand::OldSmkDestroyed { node, kcv: Kcv("AAAAAAAAAA".into()) };
        ok(run(&mut kv, &n1, gone(1)));
        assert!(refused(run(&mut kv, &n1, gone(1))).contains("no old SMK"));
        assert!(refused(run(&mut kv, &admin, start("r3"))).contains("node 2 has not yet destroyed"));
        assert!(ok(run(&mut kv, &n2, gone(2))).contains("gone from every node"));
        ok(run(&mut kv, &admin, start("r3")));
        // Abandoned before the switch: the nodes' next SMK is forgotten.
        ok(run(&mut kv, &admin, KeyCommand::CeremonyCancel { id: "r3".into() }));
        ok(run(&mut kv, &admin, start("r4")));
    }

    #[test]
    fn smk_ceremony_forms_and_purges_components() {
        let kv = with_smk();
        let c: Ceremony = read(&kv, &format!("{}s", key::CEREMONY)).expect("read").expect("ceremony");
        assert_eq!(c.state, CeremonyState::Formed);
        assert!(c.sealed.is_empty(), "sealed components deleted once every recipient formed the key");
        assert_eq!(c.formed_on, vec![1, 2]);
        let n1: NodeRecord = read(&kv, &key::node(1)).expect("read").expect("node 1");
        assert_eq!(n1.smk, NodeSmk::Present);
    }

    #[test]
    fn enrolment_is_bound_to_the_node_certificate() {
        let mut kv = with_smk();
        let node1 = Actor::node(1);
        let enrol = |transport| KeyCommand::EnrollNode { node: 1, transport, hsm: "sim".into() };
        let with = |kv: &mut MemKv, serial: &str, cmd| {
            let cert = crate::identity::CertRef {
                serial: serial.into(),
                key_fp: format!("fp-{serial}"),
                tenants: crate::identity::Tenants::All,
            };
            apply(kv, &Ctx { log_index: 9, time_ms: 9, actor: &node1, cert: Some(&cert) }, cmd).expect("apply")
        };
        let without = apply(&mut kv, &Ctx { log_index: 9, time_ms: 9, actor: &node1, cert: None }, enrol(pubkey(1)));
        assert!(matches!(without.expect("apply"), Applied::Rejected { .. }), "an enrolment without a certificate");
        ok(with(&mut kv, "renewed", enrol(pubkey(1))));
        let n1: NodeRecord = read(&kv, &key::node(1)).expect("read").expect("node 1");
        assert_eq!(n1.cert.as_ref().map(|c| c.serial.as_str()), Some("renewed"));
        assert_eq!(n1.smk, NodeSmk::Present, "a renewed certificate with the same HSM keeps the SMK");
        ok(with(&mut kv, "renewed", enrol(pubkey(7))));
        let n1: NodeRecord = read(&kv, &key::node(1)).expect("read").expect("node 1");
        assert_eq!(n1.smk, NodeSmk::Missing, "a new transport key is a new HSM: no SMK");
    }

    #[test]
    fn ceremony_rules() {
        let mut kv = MemKv::default();
        let admin = who(Role::Admin, "ada");
        let r = refused(run(
            &mut kv,
            &admin,
            KeyCommand::CeremonyStart { id: "s".into(), target: CeremonyTarget::Smk, components: 2 },
        ));
        assert!(r.contains("no enrolled node"), "{r}");
        ok(run(&mut kv, &Actor::node(1), KeyCommand::EnrollNode { node: 1, transport: pubkey(1), hsm: "sim".into() }));
        let r = refused(run(
            &mut kv,
            &who(Role::Custodian, "c"),
            KeyCommand::CeremonyStart { id: "s".into(), target: CeremonyTarget::Smk, components: 2 },
        ));
        assert!(r.contains("needs role admin"), "{r}");
        let r = refused(run(
            &mut kv,
            &admin,
            KeyCommand::CeremonyStart { id: "s".into(), target: CeremonyTarget::Smk, components: 1 },
        ));
        assert!(r.contains("2 to 9"), "{r}");
        ok(run(
            &mut kv,
            &admin,
            KeyCommand::CeremonyStart { id: "s".into(), target: CeremonyTarget::Smk, components: 2 },
        ));
        let alice = who(Role::Custodian, "alice");
        let one = || vec![(1, SealedComponent(vec![1]))];
        ok(run(
            &mut kv,
            &alice,
            KeyCommand::CeremonySubmit { id: "s".into(), kcv: Kcv("0102030405".into()), sealed: one() },
        ));
        let r = refused(run(
            &mut kv,
            &alice,
            KeyCommand::CeremonySubmit { id: "s".into(), kcv: Kcv("0102030405".into()), sealed: one() },
        ));
        assert!(r.contains("already submitted"), "{r}");
        let r = refused(run(
            &mut kv,
            &who(Role::Custodian, "bob"),
            KeyCommand::CeremonySubmit { id: "s".into(), kcv: Kcv("0102030405".into()), sealed: vec![] },
        ));
        assert!(r.contains("not sealed to node 1"), "{r}");
        let r = refused(run(
            &mut kv,
            &who(Role::Admin, "x"),
            KeyCommand::CeremonySubmit { id: "s".into(), kcv: Kcv("0102030405".into()), sealed: one() },
        ));
        assert!(r.contains("needs role custodian"), "{r}");
        let r = refused(run(
            &mut kv,
            &Actor::node(2),
            KeyCommand::SmkFormed { node: 1, ceremony: "s".into(), kcv: Kcv("AA".into()) },
        ));
        assert!(r.contains("cannot act for node 1"), "{r}");
    }

    /// A working-key ceremony whose usage does not fit its algorithm is refused at its start,
    /// before any custodian hands in a component, saying what the usage is for.
    #[test]
    fn a_ceremony_for_a_usage_that_does_not_fit_the_algorithm_is_refused_at_start() {
        let mut kv = with_smk();
        let admin = who(Role::Admin, "ada");
        let start = |id: &str, usage, alg| KeyCommand::CeremonyStart {
            id: id.into(),
            target: CeremonyTarget::Key { label: "k".into(), usage, alg, exportable: false, tenant: "default".into() },
            components: 2,
        };
        let r = refused(run(&mut kv, &admin, start("c1", Usage::E0, KeyAlg::HmacSha256)));
        assert!(r.contains("usage E0 (EMV IMK, application cryptograms) does not allow a HMAC_SHA256 key"), "{r}");
        let r = refused(run(&mut kv, &admin, start("c2", Usage::M7, KeyAlg::Des2)));
        assert!(r.contains("usage M7 (HMAC) does not allow a DES2 key: it is for HMAC-SHA-256 keys"), "{r}");
        let r = refused(run(&mut kv, &admin, start("c3", Usage::C0, KeyAlg::Aes128)));
        assert!(r.contains("usage C0"), "{r}");
        for id in ["c1", "c2", "c3"] {
            assert!(read::<Ceremony>(&kv, &format!("{}{id}", key::CEREMONY)).expect("read").is_none(), "{id} stored");
        }
        ok(run(&mut kv, &admin, start("c4", Usage::E0, KeyAlg::Des2)));
        ok(run(&mut kv, &admin, start("c5", Usage::M7, KeyAlg::HmacSha256)));
    }

    #[test]
    fn keys_versions_usage_and_smk_checks() {
        let mut kv = with_smk();
        let admin = who(Role::Admin, "ada");
        let create = |alg, usage, smk: &str| KeyCommand::KeyCreate {
            label: "imk".into(),
            usage,
            exportable: false,
            origin: Origin::Generated { node: 1 },
            wrapped: wrapped(alg, "123456", smk),
            active: true,
            tenant: "default".into(),
        };
        assert!(ok(run(&mut kv, &admin, create(KeyAlg::Des2, Usage::E0, "AAAAAAAAAA"))).contains("E0"));
        ok(run(&mut kv, &admin, create(KeyAlg::Des2, Usage::E0, "AAAAAAAAAA")));
        let v2: KeyRecord = read(&kv, &format!("{}imk.v2", key::KEY)).expect("read").expect("second version");
        assert_eq!(v2.version, 2);
        let r = refused(run(&mut kv, &admin, create(KeyAlg::Aes128, Usage::C0, "AAAAAAAAAA")));
        assert!(r.contains("usage C0"), "{r}");
        let r = refused(run(&mut kv, &admin, create(KeyAlg::Des2, Usage::E0, "BBBBBBBBBB")));
        assert!(r.contains("SMK"), "{r}");
        let r = refused(run(&mut kv, &who(Role::Operator, "op"), create(KeyAlg::Des2, Usage::E0, "AAAAAAAAAA")));
        assert!(r.contains("needs role admin"), "{r}");
        let r =
            refused(run(&mut kv, &admin, KeyCommand::KeySetState { id: "imk.v1".into(), state: KeyState::Destroyed }));
        assert!(r.contains("dual control"), "{r}");
        ok(run(&mut kv, &admin, KeyCommand::KeySetState { id: "imk.v1".into(), state: KeyState::Retired }));
        let r = refused(run(&mut kv, &admin, KeyCommand::KeySetState { id: "imk.v1".into(), state: KeyState::Active }));
        assert!(r.contains("cannot go from retired to active"), "{r}");
        // A record that disagrees with its key block at rest: a CVK's block recorded as an IMK,
        // a non-exportable block recorded as exportable.
        use quill_hsm::tr31::{self, Kbpk, Tr31Header};
        let block = |template: &str| {
            let h = Tr31Header::parse_template(template.as_bytes()).expect("template");
            let b =
                tr31::wrap(Kbpk::Aes(&[1; 32]), &h, &[2; 16], Some(24), &mut |b: &mut [u8]| b.fill(3)).expect("wrap");
            WrappedKey { blob: b.into_bytes(), ..wrapped(KeyAlg::Des2, "123456", "AAAAAAAAAA") }
        };
        let with = |w: WrappedKey, usage, exportable| KeyCommand::KeyCreate {
            label: "cvk".into(),
            usage,
            exportable,
            origin: Origin::Generated { node: 1 },
            wrapped: w,
            active: true,
            tenant: "default".into(),
        };
        let r = refused(run(&mut kv, &admin, with(block("D0000C0TC00N0010"), Usage::E0, false)));
        assert_eq!(r, "the key block says usage C0; the record says E0");
        let r = refused(run(&mut kv, &admin, with(block("D0000C0TC00N0010"), Usage::C0, true)));
        assert!(r.contains("not exportable (N)"), "{r}");
        ok(run(&mut kv, &admin, with(block("D0000C0TC00N0010"), Usage::C0, false)));
        ok(run(&mut kv, &admin, with(block("D0000C0TC00E0010"), Usage::C0, false)));
    }

    /// An issuer key pair enters the inventory only with a private-key block whose header names
    /// the tenant the record gives it; a record edited to another tenant afterwards is refused
    /// where the key would be used.
    #[test]
    fn an_issuer_key_is_taken_only_with_a_block_naming_its_tenant() {
        use quill_hsm::WrappedRsaKey;
        use quill_hsm::tr31::{self, Kbpk, Tr31Header};
        let mut kv = with_smk();
        let admin = who(Role::Admin, "ada");
        let public = RsaPublic::new(&[0xC1; 128], &[3]);
        let fp = public.fingerprint();
        let key = |blocks: &str| {
            let count = blocks.matches("0P").count() + blocks.matches("0T").count();
            let template = format!("D0000S0RS00N{count:02}10{blocks}");
            let h = Tr31Header::parse_template(template.as_bytes()).expect("template");
            let b =
                tr31::wrap(Kbpk::Aes(&[1; 32]), &h, &[0x30; 600], None, &mut |b: &mut [u8]| b.fill(3)).expect("wrap");
            WrappedRsaKey { public: public.clone(), blob: b.into_bytes(), smk_kcv: Kcv("AAAAAAAAAA".into()) }
        };
        let create = |label: &str, key: WrappedRsaKey| KeyCommand::IssuerKeyCreate {
            label: label.into(),
            key,
            origin: Origin::Generated { node: 1 },
            tenant: "bank-a".into(),
        };
        let r = refused(run(&mut kv, &admin, create("iss", key(&format!("0P44{fp}0T0Abank-b")))));
        assert!(r.contains("belongs to tenant \"bank-b\"") && r.contains("\"bank-a\""), "{r}");
        let r = refused(run(&mut kv, &admin, create("iss", key(&format!("0P44{fp}")))));
        assert!(r.contains("belongs to tenant (none)"), "{r}");
        ok(run(&mut kv, &admin, create("iss", key(&format!("0P44{fp}0T0Abank-a")))));
        let rec: issuers::IssuerKeyRecord =
            read(&kv, &format!("{}iss", issuers::ISSUER)).expect("read").expect("issuer key");
        assert!(rec.block().is_ok());
        let moved = issuers::IssuerKeyRecord { tenant: "bank-c".into(), ..rec };
        let r = moved.block().expect_err("a record moved to another tenant");
        assert!(r.contains("issuer key iss") && r.contains("\"bank-a\"") && r.contains("\"bank-c\""), "{r}");
    }

    #[test]
    fn destroy_needs_two_distinct_custodians_who_did_not_ask() {
        let mut kv = with_smk();
        let admin = who(Role::Admin, "ada");
        ok(run(
            &mut kv,
            &admin,
            KeyCommand::KeyCreate {
                label: "cvk".into(),
                usage: Usage::C0,
                exportable: false,
                origin: Origin::Generated { node: 1 },
                wrapped: wrapped(KeyAlg::Des2, "ABCDEF", "AAAAAAAAAA"),
                active: true,
                tenant: "default".into(),
            },
        ));
        ok(run(
            &mut kv,
            &admin,
            KeyCommand::ApprovalRequest {
                id: "d1".into(),
                action: ApprovalAction::Destroy { key: "cvk.v1".into() },
                ttl_ms: 0,
            },
        ));
        let alice = who(Role::Custodian, "alice");
        assert!(ok(run(&mut kv, &alice, KeyCommand::ApprovalDecide { id: "d1".into(), grant: true })).contains("1/2"));
        let r = refused(run(&mut kv, &alice, KeyCommand::ApprovalDecide { id: "d1".into(), grant: true }));
        assert!(r.contains("already granted"), "{r}");
        let k: KeyRecord = read(&kv, &format!("{}cvk.v1", key::KEY)).expect("read").expect("key");
        assert!(k.wrapped.is_some(), "one grant destroys nothing");
        ok(run(&mut kv, &who(Role::Custodian, "bob"), KeyCommand::ApprovalDecide { id: "d1".into(), grant: true }));
        let k: KeyRecord = read(&kv, &format!("{}cvk.v1", key::KEY)).expect("read").expect("key");
        assert_eq!((k.state, k.wrapped.is_none()), (KeyState::Destroyed, true));
        assert_eq!(k.approvers, vec!["alice".to_string(), "bob".to_string()]);
        // a custodian who asks cannot approve their own request
        let r = refused(run(
            &mut kv,
            &admin,
            KeyCommand::ApprovalRequest { id: "n3".into(), action: ApprovalAction::SmkToNode { node: 1 }, ttl_ms: 0 },
        ));
        assert!(r.contains("already holds the SMK"), "{r}");
        ok(run(&mut kv, &Actor::node(3), KeyCommand::EnrollNode { node: 3, transport: pubkey(3), hsm: "sim".into() }));
        ok(run(
            &mut kv,
            &who(Role::Admin, "carol"),
            KeyCommand::ApprovalRequest { id: "n3".into(), action: ApprovalAction::SmkToNode { node: 3 }, ttl_ms: 0 },
        ));
        let r = refused(run(
            &mut kv,
            &who(Role::Custodian, "carol"),
            KeyCommand::ApprovalDecide { id: "n3".into(), grant: true },
        ));
        assert!(r.contains("cannot also approve"), "{r}");
    }
}

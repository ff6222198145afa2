//! The key agent: the part of a node that does HSM work the replicated state asks for.
//!
//! Apply never touches an HSM, so whatever needs one happens here, on each node, in reaction to
//! the state this node has applied; the result is proposed as a new command. Every step checks
//! the state first and is idempotent, so a node that restarts (or was down) simply catches up:
//!
//! 1. **enrol**: this node's HSM transport public key is in the state (re-enrol if it changed).
//! 2. **form the SMK**: an SMK ceremony is complete and this node is a recipient without the
//!    SMK: unwrap its sealed components inside the HSM, check their KCVs, XOR them there, and
//!    report the KCV (`SmkFormed`).
//! 3. **form a working key**: a working-key ceremony is complete and this node holds the SMK:
//!    form the key from its sealed components and propose it wrapped under the SMK (the first
//!    node to do so wins; the others' proposals are refused).
//! 4. **grant the SMK**: an approved `SmkToNode` approval and this node holds the SMK: wrap it to
//!    the new node's transport key (`SmkGranted`); **install** it on the receiving side.
//! 5. **audit keys**: the leader, holding the SMK, generates the audit MAC and encryption keys
//!    once.
//! 6. **seal**: the leader seals the audit chain head every few seconds when it moved, and at the
//!    latest every [`audit::SEAL_EVERY_RECORDS`] records (verification requires seals). It runs
//!    on every round whatever the other steps did: a step that fails round after round must not
//!    leave the chain unsealed.
//! 7. **rotate the SMK** (`keys/apply/rotation.rs`): a complete rotation ceremony and this node
//!    holds the SMK: form the next SMK beside it (`SmkNextFormed`); the leader, once every node
//!    has, re-protects every key block under it and proposes the switch (`SmkSwitch`); after the
//!    switch, each node destroys the old SMK in its HSM (`OldSmkDestroyed`).
//!
//! Failures are logged and retried on the next round; the last one is kept for status.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tracing::{info, warn};

use crate::audit::{self, AuditMac};
use crate::keys::apply::{KeyCommand, key, read, rotation, scan};
use crate::keys::model::*;
use crate::network::Raft;
use crate::raft::{Command, NodeId, Outcome, StateMachine};
use crate::store::StoreError;
use quill_hsm::tr31::KeyUsage;
use quill_hsm::{Hsm, HsmError, KeyUse};

/// How often the agent looks at the state when nothing wakes it.
const ROUND: Duration = Duration::from_millis(500);
/// How often the leader seals the audit head (when it moved).
const SEAL_EVERY: Duration = Duration::from_secs(3);

/// Something that proposes a command as this node (through the leader).
#[tonic::async_trait]
pub trait Proposer: Send + Sync {
    /// Propose `cmd` with `actor`; the outcome (a refusal is an outcome,
    /// [`Outcome::Rejected`]), or why none could be had.
    async fn propose(&self, actor: Actor, cmd: Command) -> Result<Outcome, ProposeError>;
}

/// Why a proposal got no outcome, grouped by what the proposer does next. A refusal by the state
/// machine is not an error: it is the outcome [`Outcome::Rejected`]. The text is the write path's
/// own message (it names the leader, the index or the timeout).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// No leader could take it now (an election, no quorum, a peer unreachable while
    /// forwarding): nothing was applied; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// Sent, but not confirmed in time: it may still be applied. Retry with the same client id
    /// and serial to learn the outcome.
    #[error("{0}")]
    Indeterminate(String),
    /// The write path would not propose it (the command or the node's identity failed a check
    /// before Raft): a bug on this node; a retry gets the same answer.
    #[error("{0}")]
    Refused(String),
    /// This node's (or the leader's) Raft or storage failed; the node needs attention.
    #[error("{0}")]
    Internal(String),
}

/// Why a round of the key agent failed (it is retried on the next round), by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// This node's HSM refused or failed an operation (the text names the operation and the
    /// slot, never key material).
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    /// A blocking HSM call did not finish (it panicked or the runtime is shutting down).
    #[error("HSM call: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// This node's state could not be read.
    #[error("reading the state: {0}")]
    Store(#[from] StoreError),
    /// A proposal got no outcome.
    #[error("proposing {action}: {source}")]
    Propose {
        /// The command's audit action (`node.enroll`, `audit.seal`, …).
        action: &'static str,
        /// Why.
        #[source]
        source: ProposeError,
    },
}

/// Collects the HSM adapter's host-path uses (key material in host memory, allowed by config)
/// until the agent records them in the audit chain.
#[derive(Debug, Default)]
pub struct HostPathQueue(Mutex<Vec<quill_hsm::HostPathUse>>);

impl quill_hsm::HostPathObserver for HostPathQueue {
    fn host_path_used(&self, used: &quill_hsm::HostPathUse) {
        warn!(operation = used.operation, what = %used.what, module = %used.module.display(), "HSM host path used: key material in host memory");
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(used.clone());
    }
}

/// The agent of one node.
pub struct KeyAgent {
    id: NodeId,
    host_path: Arc<HostPathQueue>,
    hsm: Arc<dyn Hsm>,
    raft: Raft,
    sm: StateMachine,
    /// The text of the last round's error, for status.
    last_error: Mutex<Option<String>>,
    audit_mac_key: Mutex<Option<WrappedKey>>,
    slots: Option<Arc<quill_hsm::HsmPool>>,
}

impl std::fmt::Debug for KeyAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAgent").field("id", &self.id).finish()
    }
}

impl KeyAgent {
    /// The agent of node `id` over an HSM pool, whose slot states it reports.
    pub fn with_pool(
        id: NodeId,
        pool: Arc<quill_hsm::HsmPool>,
        raft: Raft,
        sm: StateMachine,
        host_path: Arc<HostPathQueue>,
    ) -> Arc<Self> {
        let hsm: Arc<dyn Hsm> = pool.clone();
        Arc::new(KeyAgent {
            id,
            host_path,
            hsm,
            raft,
            sm,
            last_error: Mutex::new(None),
            audit_mac_key: Mutex::new(None),
            slots: Some(pool),
        })
    }

    /// The HSM side of this node for `quill cluster status`: per-slot state, SMK KCV, the
    /// agent's last error (JSON).
    pub fn status_json(&self) -> serde_json::Value {
        let slots = self.slots.as_ref().map(|p| p.status()).unwrap_or_default();
        let healthy = slots.iter().filter(|s| s.state == quill_hsm::SlotState::Healthy).count();
        serde_json::json!({
            "slots": slots,
            "healthy": healthy,
            "smk_kcv": slots.iter().find_map(|s| s.smk_kcv.clone()),
            "agent_error": self.last_error(),
        })
    }

    /// The node's HSM.
    pub fn hsm(&self) -> &Arc<dyn Hsm> {
        &self.hsm
    }

    /// The last error a round met (cleared by a clean round).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Run rounds until `stop` resolves.
    pub async fn run(self: Arc<Self>, proposer: Arc<dyn Proposer>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut last_seal = (Instant::now(), 0);
        loop {
            // The seal does not wait on the key steps: a step that fails on every round (a
            // ceremony this node's HSM cannot form, a grant it cannot wrap) must not leave the
            // audit chain unsealed.
            let keys = self.round(&*proposer).await;
            let seal = self.seal(&*proposer, &mut last_seal).await;
            let result = keys.and(seal);
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = result.as_ref().err().map(ToString::to_string);
            if let Err(e) = result {
                warn!(error = %e, "key agent round failed; retrying");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(ROUND) => {}
            }
        }
    }

    /// Run a blocking HSM call off the async threads.
    async fn hsm_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Hsm) -> Result<T, HsmError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let hsm = self.hsm.clone();
        Ok(tokio::task::spawn_blocking(move || f(&*hsm)).await??)
    }

    async fn propose(&self, proposer: &dyn Proposer, cmd: KeyCommand) -> Result<(), AgentError> {
        let action = cmd.action();
        let outcome = proposer
            .propose(Actor::node(self.id), Command::Keys(cmd))
            .await
            .map_err(|source| AgentError::Propose { action, source })?;
        match outcome {
            Outcome::Rejected { reason } => {
                info!(action, %reason, "key agent proposal refused (another node may have done it)");
                Ok(())
            }
            _ => {
                info!(action, "key agent proposal applied");
                Ok(())
            }
        }
    }

    async fn round(&self, proposer: &dyn Proposer) -> Result<(), AgentError> {
        let metrics = self.raft.metrics().borrow().clone();
        let Some(_leader) = metrics.current_leader else { return Ok(()) };
        if !metrics.membership_config.membership().nodes().any(|(id, _)| *id == self.id) {
            return Ok(());
        }
        let sm = self.sm.clone();
        let me = self.id;
        let view = sm
            .read(move |kv| {
                Ok((
                    read::<NodeRecord>(kv, &key::node(me))?,
                    scan::<Ceremony>(kv, key::CEREMONY)?,
                    scan::<Approval>(kv, key::APPROVAL)?,
                    read::<SmkInfo>(kv, key::SMK)?,
                    read::<AuditKeys>(kv, key::AUDIT_KEYS)?,
                    read::<Vec<u8>>(kv, &format!("keys/smk-grant/{me:020}"))?,
                    scan::<NodeRecord>(kv, key::NODE)?,
                ))
            })
            .await?;
        let (me_rec, ceremonies, approvals, smk, audit_keys, grant, nodes) = view;

        // 0. record host-path uses in the audit chain (re-queued if the proposal fails)
        let uses: Vec<quill_hsm::HostPathUse> =
            std::mem::take(&mut *self.host_path.0.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, u) in uses.iter().enumerate() {
            let cmd = KeyCommand::HostPathUsed {
                node: me,
                operation: u.operation.to_string(),
                what: u.what.clone(),
                module: u.module.display().to_string(),
            };
            if let Err(e) = self.propose(proposer, cmd).await {
                self.host_path.0.lock().unwrap_or_else(|p| p.into_inner()).extend(uses[i..].iter().cloned());
                return Err(e);
            }
        }

        // 1. enrol
        let transport = self.hsm_call(|h| h.transport_public_key()).await?;
        if me_rec.as_ref().map(|r| &r.transport) != Some(&transport) {
            let hsm = self
                .hsm
                .describe()
                .slots
                .iter()
                .map(|s| format!("{} slot {} token {}", s.library, s.slot, s.token_label))
                .collect::<Vec<_>>()
                .join("; ");
            self.propose(proposer, KeyCommand::EnrollNode { node: me, transport, hsm }).await?;
            return Ok(());
        }
        // 7c. after a switch: destroy the old SMK here (before anything else uses this HSM's SMK)
        if let (Some(old), Some(info)) = (me_rec.as_ref().and_then(|r| r.retiring.clone()), &smk) {
            if let Some(k) = &audit_keys {
                // The audit key as switched (it opens under the next SMK already).
                *self.audit_mac_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(k.mac.clone());
            }
            let new = info.kcv.clone();
            info!(old = %old, new = %new, "destroying the old SMK in this node's HSM");
            self.hsm_call(move |h| h.promote_next_smk(&new)).await?;
            self.propose(proposer, KeyCommand::OldSmkDestroyed { node: me, kcv: old }).await?;
        }
        let local_smk = self.hsm_call(|h| h.smk_kcv()).await?;
        let holds_smk = matches!((&local_smk, &smk), (Some(l), Some(c)) if l == &c.kcv);

        // 2. and 3. ceremonies
        for c in ceremonies.iter().filter(|c| c.state == CeremonyState::Complete) {
            let Some(sealed) = c.sealed.get(&me).cloned() else { continue };
            let kcvs: Vec<Kcv> = c.submissions.iter().map(|s| s.kcv.clone()).collect();
            match &c.target {
                CeremonyTarget::Smk if !c.formed_on.contains(&me) => {
                    info!(ceremony = %c.id, "forming the SMK from {} sealed components", sealed.len());
                    let kcv = self.hsm_call(move |h| h.form_smk(&sealed, &kcvs)).await?;
                    self.propose(proposer, KeyCommand::SmkFormed { node: me, ceremony: c.id.clone(), kcv }).await?;
                }
                // 7a. the next SMK of a rotation, beside the current one
                CeremonyTarget::SmkNext if holds_smk && !c.formed_on.contains(&me) => {
                    info!(ceremony = %c.id, "forming the next SMK from {} sealed components", sealed.len());
                    let kcv = self.hsm_call(move |h| h.form_next_smk(&sealed, &kcvs)).await?;
                    self.propose(proposer, KeyCommand::SmkNextFormed { node: me, ceremony: c.id.clone(), kcv }).await?;
                }
                CeremonyTarget::Key { label, usage, alg, exportable, tenant } if holds_smk => {
                    let alg = *alg;
                    let key_use = KeyUse::new(usage.tr31(), *exportable).owned_by(tenant);
                    info!(ceremony = %c.id, %label, "forming a working key from {} sealed components", sealed.len());
                    let wrapped = self.hsm_call(move |h| h.import_components(alg, key_use, &sealed, &kcvs)).await?;
                    let origin = Origin::Components {
                        ceremony: c.id.clone(),
                        custodians: c.submissions.iter().map(|s| s.custodian.clone()).collect(),
                    };
                    let cmd = KeyCommand::KeyCreate {
                        label: label.clone(),
                        usage: *usage,
                        exportable: *exportable,
                        origin,
                        wrapped,
                        active: true,
                        tenant: tenant.clone(),
                    };
                    self.propose(proposer, cmd).await?;
                }
                _ => {}
            }
        }

        // 4. SMK grants, both sides
        if holds_smk {
            // An expired approval is refused by the state machine anyway: do not wrap the SMK for it.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            for a in approvals.iter().filter(|a| a.state == ApprovalState::Approved && a.expires_ms > now) {
                let ApprovalAction::SmkToNode { node } = a.action else { continue };
                let Some(target) = nodes.iter().find(|n| n.id == node) else { continue };
                let peer = target.transport.clone();
                let sealed = self.hsm_call(move |h| h.wrap_smk_for(&peer)).await?;
                self.propose(proposer, KeyCommand::SmkGranted { approval: a.id.clone(), node, sealed }).await?;
            }
        }
        if let (Some(sealed), Some(info), false) = (grant, &smk, holds_smk) {
            let expect = info.kcv.clone();
            self.hsm_call(move |h| h.install_smk(&sealed, &expect)).await?;
            self.propose(proposer, KeyCommand::SmkInstalled { node: me, kcv: info.kcv.clone() }).await?;
        }

        let leader = metrics.state == ServerState::Leader;
        // 7b. the switch to the next SMK, formed on every node
        if let (true, true, Some(next)) = (leader, holds_smk, smk.as_ref().and_then(|i| i.next.clone())) {
            self.switch_smk(proposer, next).await?;
            return Ok(());
        }
        // 5. audit keys
        if leader && holds_smk && audit_keys.is_none() {
            // Bound to their use and never exportable: the MAC key is an HMAC key (M7), the
            // encryption key a data key (D0).
            let mac = self.hsm_call(|h| h.generate_key(KeyAlg::HmacSha256, KeyUse::new(KeyUsage::Hmac, false))).await?;
            let enc =
                self.hsm_call(|h| h.generate_key(KeyAlg::Aes256, KeyUse::new(KeyUsage::DataEncryption, false))).await?;
            self.propose(proposer, KeyCommand::AuditKeysSet { keys: AuditKeys { mac, enc, node: me } }).await?;
        }
        if let Some(k) = &audit_keys {
            *self.audit_mac_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(k.mac.clone());
        }

        Ok(())
    }

    /// Step 6, the seal: the leader seals every few seconds while the chain moves, and at the
    /// latest every `SEAL_EVERY_RECORDS` records. Due when the last record is not a seal that was
    /// applied (a refused seal is a record like any other and needs one).
    async fn seal(&self, proposer: &dyn Proposer, last_seal: &mut (Instant, u64)) -> Result<(), AgentError> {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return Ok(());
        }
        let (audit_keys, head, last) = self
            .sm
            .read(|kv| {
                let keys = read::<AuditKeys>(kv, key::AUDIT_KEYS)?;
                let h = audit::head(kv)?;
                let last = audit::record(kv, h.seq)?;
                Ok((keys, h, last))
            })
            .await?;
        let Some(keys) = audit_keys else { return Ok(()) };
        // The key as the state has it now (an SMK switch re-protects it).
        *self.audit_mac_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(keys.mac);
        let due = last_seal.0.elapsed() >= SEAL_EVERY || head.seq >= last_seal.1 + audit::SEAL_EVERY_RECORDS;
        if !due || head.seq == 0 || last.is_none_or(|r| r.seal.is_some()) {
            return Ok(());
        }
        *last_seal = (Instant::now(), head.seq);
        let input = audit::seal_input(head.seq, &head.hash);
        let Some(mac) = self.audit_mac(input).await else { return Ok(()) };
        let cmd = Command::AuditSeal { seq: head.seq, hash: head.hash, mac };
        let outcome = proposer
            .propose(Actor::node(self.id), cmd)
            .await
            .map_err(|source| AgentError::Propose { action: "audit.seal", source })?;
        if let Outcome::Rejected { reason } = outcome {
            warn!(seq = head.seq, %reason, "the audit seal was refused; sealing again next round");
            last_seal.0 = last_seal.0.checked_sub(SEAL_EVERY).unwrap_or(last_seal.0);
        }
        Ok(())
    }

    /// Re-protect every key block and RSA key of the state under the next SMK in this node's HSM
    /// and propose the switch. Refused (and tried again next round) when a key was made meanwhile.
    async fn switch_smk(&self, proposer: &dyn Proposer, next: NextSmk) -> Result<(), AgentError> {
        let here = self.hsm_call(|h| h.next_smk_kcv()).await?;
        if here.as_ref() != Some(&next.kcv) {
            warn!(next = %next.kcv, here = ?here, "this node's HSM does not hold the next SMK the cluster formed; not switching");
            return Ok(());
        }
        // Open jobs' data keys first (the jobs domain's own command), then the rest in one switch.
        let jobs = self
            .sm
            .read(|kv| match read::<SmkInfo>(kv, key::SMK)? {
                Some(info) => crate::jobs::data_keys_under(kv, &info.kcv),
                None => Ok(Vec::new()),
            })
            .await?;
        if !jobs.is_empty() {
            info!(jobs = jobs.len(), next = %next.kcv, "re-protecting open jobs' data keys under the next SMK");
            let keys = self
                .hsm_call(move |h| {
                    jobs.into_iter()
                        .map(|(id, w)| Ok((id, h.translate_to_next(&w)?)))
                        .collect::<Result<Vec<_>, HsmError>>()
                })
                .await?;
            let cmd = Command::Jobs(crate::jobs::JobCommand::DataKeysMoved { smk: next.kcv.clone(), keys });
            let outcome = proposer
                .propose(Actor::node(self.id), cmd)
                .await
                .map_err(|source| AgentError::Propose { action: "job.data_keys_moved", source })?;
            if let Outcome::Rejected { reason } = outcome {
                info!(%reason, "moving jobs' data keys refused; trying again");
            }
            return Ok(());
        }
        let (blocks, rsa) = self
            .sm
            .read(|kv| {
                let Some(info) = read::<SmkInfo>(kv, key::SMK)? else { return Ok(Default::default()) };
                Ok((rotation::blocks_under(kv, &info.kcv)?, rotation::rsa_keys_under(kv, &info.kcv)?))
            })
            .await?;
        info!(blocks = blocks.len(), rsa = rsa.len(), next = %next.kcv, "re-protecting every key block under the next SMK");
        let (blocks, rsa) = self
            .hsm_call(move |h| {
                let blocks = blocks.into_iter().map(|(at, w)| Ok((at, h.translate_to_next(&w)?))).collect::<Result<
                    Vec<_>,
                    HsmError,
                >>(
                )?;
                let rsa =
                    rsa.into_iter()
                        .map(|(label, k)| Ok((label, h.rewrap_rsa_to_next(&k)?)))
                        .collect::<Result<Vec<_>, HsmError>>()?;
                Ok((blocks, rsa))
            })
            .await?;
        self.propose(proposer, KeyCommand::SmkSwitch { ceremony: next.ceremony, kcv: next.kcv, blocks, rsa }).await
    }

    /// The audit MAC of `input` with the audit key, if this node knows it and its HSM answers.
    pub async fn audit_mac(&self, input: Vec<u8>) -> Option<AuditMac> {
        let cached = self.audit_mac_key.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let key = match cached {
            Some(k) => k,
            // Not cached yet: the audit keys may have been applied since the last round.
            None => {
                let keys = self.sm.read(|kv| read::<AuditKeys>(kv, key::AUDIT_KEYS)).await.ok().flatten()?;
                *self.audit_mac_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(keys.mac.clone());
                keys.mac
            }
        };
        let kcv = key.kcv.clone();
        match self.hsm_call(move |h| h.hmac_sha256(&key, &input)).await {
            Ok(mac) => Some(AuditMac { key_kcv: kcv, mac }),
            Err(e) => {
                warn!(error = %e, "audit MAC failed; the record goes unMACed (covered by the next seal)");
                None
            }
        }
    }

    /// Check an audit MAC with the audit key (for `quill audit verify`).
    pub fn check_audit_mac(&self, audit_keys: &AuditKeys, mac: &AuditMac, input: &[u8]) -> Result<bool, HsmError> {
        if mac.key_kcv != audit_keys.mac.kcv {
            return Ok(false);
        }
        let got = self.hsm.hmac_sha256(&audit_keys.mac, input)?;
        Ok(got == mac.mac)
    }
}

//! The storage master key: formed by the nodes from a ceremony, granted to a late node after
//! dual control, installed there.

use super::*;

impl State<'_> {
    pub(super) fn smk_formed(
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
        if c.target != CeremonyTarget::Smk || !matches!(c.state, CeremonyState::Complete | CeremonyState::Formed) {
            return Ok(refuse(format!("ceremony {ceremony} is not a complete SMK ceremony")));
        }
        let Some(mut rec) = self.get::<NodeRecord>(&key::node(node))? else {
            return Ok(refuse(format!("node {node} is not enrolled")));
        };
        let smk = self.get::<SmkInfo>(key::SMK)?;
        let detail;
        match &smk {
            Some(info) if info.kcv != kcv => {
                rec.smk = NodeSmk::Mismatch { kcv: kcv.clone() };
                detail = format!("KCV {kcv} differs from the cluster's {}: node marked mismatched", info.kcv);
            }
            _ => {
                if smk.is_none() {
                    self.put(
                        key::SMK,
                        &SmkInfo {
                            kcv: kcv.clone(),
                            ceremony: ceremony.clone(),
                            formed_ms: ctx.time_ms,
                            next: None,
                            retired: Vec::new(),
                        },
                    )?;
                }
                rec.smk = NodeSmk::Present;
                detail = format!("SMK formed, KCV {kcv}");
            }
        }
        if !c.formed_on.contains(&node) {
            c.formed_on.push(node);
        }
        c.kcv.get_or_insert(kcv);
        c.sealed.remove(&node);
        if c.recipients.iter().all(|r| c.formed_on.contains(r)) {
            c.state = CeremonyState::Formed;
            c.sealed.clear();
        }
        self.put(key::node(node), &rec)?;
        self.put(format!("{}{ceremony}", key::CEREMONY), &c)?;
        Ok(Ok(Applied::done(format!("node:{node}"), detail)))
    }

    pub(super) fn smk_granted(
        &mut self,
        ctx: &Ctx<'_>,
        approval: String,
        node: NodeId,
        sealed: Vec<u8>,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Node]) {
            return Ok(Err(r));
        }
        let Some(mut a) = self.get::<Approval>(&format!("{}{approval}", key::APPROVAL))? else {
            return Ok(refuse(format!("no approval {approval}")));
        };
        if a.action != (ApprovalAction::SmkToNode { node }) || a.state != ApprovalState::Approved {
            return Ok(refuse(format!("approval {approval} does not allow wrapping the SMK to node {node} now")));
        }
        if sealed.is_empty() {
            return Ok(refuse("empty wrapped SMK"));
        }
        if let Err(r) = unexpired(&a, ctx) {
            return Ok(Err(r));
        }
        a.state = ApprovalState::Done;
        self.put(format!("{}{approval}", key::APPROVAL), &a)?;
        self.put(format!("keys/smk-grant/{node:020}"), &sealed)?;
        Ok(Ok(Applied::done(format!("node:{node}"), format!("SMK wrapped to node {node} by {}", ctx.actor.name))))
    }

    pub(super) fn smk_installed(&mut self, ctx: &Ctx<'_>, node: NodeId, kcv: Kcv) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.node_actor(ctx, node) {
            return Ok(Err(r));
        }
        let Some(info) = self.get::<SmkInfo>(key::SMK)? else { return Ok(refuse("no SMK in the cluster")) };
        let Some(mut rec) = self.get::<NodeRecord>(&key::node(node))? else {
            return Ok(refuse(format!("node {node} is not enrolled")));
        };
        rec.smk = if info.kcv == kcv { NodeSmk::Present } else { NodeSmk::Mismatch { kcv: kcv.clone() } };
        self.put(key::node(node), &rec)?;
        self.staged.puts.push((format!("keys/smk-grant/{node:020}"), None));
        Ok(Ok(Applied::done(format!("node:{node}"), format!("SMK installed, KCV {kcv}"))))
    }
}

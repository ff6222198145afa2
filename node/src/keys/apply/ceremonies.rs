//! Key ceremonies: start, component submissions sealed to every recipient node, cancellation.

use super::*;

impl State<'_> {
    pub(super) fn ceremony_start(
        &mut self,
        ctx: &Ctx<'_>,
        id: String,
        target: CeremonyTarget,
        components: u8,
    ) -> Result<Step<Applied>, StoreError> {
        let step = (|| -> Result<Step<Ceremony>, StoreError> {
            if let Err(r) = self.role(ctx, &[Role::Admin]) {
                return Ok(Err(r));
            }
            if let Err(r) = check_id("ceremony id", &id) {
                return Ok(Err(r));
            }
            if !(2..=9).contains(&components) {
                return Ok(refuse(format!("a ceremony needs 2 to 9 components, not {components}")));
            }
            if self.get::<Ceremony>(&format!("{}{id}", key::CEREMONY))?.is_some() {
                return Ok(refuse(format!("ceremony {id} already exists")));
            }
            let ceremonies: Vec<Ceremony> = scan(self.kv, key::CEREMONY)?;
            match &target {
                CeremonyTarget::Smk => {
                    if let Some(smk) = self.get::<SmkInfo>(key::SMK)? {
                        return Ok(refuse(format!(
                            "the SMK already exists (KCV {}, ceremony {})",
                            smk.kcv, smk.ceremony
                        )));
                    }
                    if let Some(c) = ceremonies.iter().find(|c| {
                        c.target == CeremonyTarget::Smk
                            && matches!(c.state, CeremonyState::Open | CeremonyState::Complete)
                    }) {
                        return Ok(refuse(format!("SMK ceremony {} is already under way", c.id)));
                    }
                }
                CeremonyTarget::SmkNext => {
                    // The SMK protects every tenant's keys: only the bureau rotates it.
                    if !ctx.tenants().is_bureau() {
                        return Ok(refuse(format!(
                            "{} acts for tenants {}: only the bureau rotates the SMK",
                            ctx.actor,
                            ctx.tenants()
                        )));
                    }
                    let Some(smk) = self.get::<SmkInfo>(key::SMK)? else {
                        return Ok(refuse("no SMK to rotate: form it in an SMK ceremony first"));
                    };
                    if let Some(n) = &smk.next {
                        return Ok(refuse(format!(
                            "next SMK {} of ceremony {} is formed and not yet switched to",
                            n.kcv, n.ceremony
                        )));
                    }
                    if let Some(c) = ceremonies.iter().find(|c| {
                        matches!(c.target, CeremonyTarget::Smk | CeremonyTarget::SmkNext)
                            && matches!(c.state, CeremonyState::Open | CeremonyState::Complete)
                    }) {
                        return Ok(refuse(format!("SMK ceremony {} is already under way", c.id)));
                    }
                    let nodes: Vec<NodeRecord> = scan(self.kv, key::NODE)?;
                    if let Some(n) = nodes.iter().find(|n| n.retiring.is_some()) {
                        return Ok(refuse(format!(
                            "node {} has not yet destroyed the SMK of the last rotation ({})",
                            n.id,
                            n.retiring.as_ref().map(ToString::to_string).unwrap_or_default()
                        )));
                    }
                }
                CeremonyTarget::Key { label, usage, alg, tenant, .. } => {
                    if let Err(r) = check_id("label", label) {
                        return Ok(Err(r));
                    }
                    if let Err(r) = crate::identity::check_tenant(tenant).and_then(|()| ctx.require_tenant(tenant)) {
                        return Ok(refuse(r));
                    }
                    // A usage that does not fit the algorithm (E0 with HMAC, M7 with TDES) is
                    // refused before any custodian submits a component.
                    if let Err(r) = usage.check_alg(*alg) {
                        return Ok(refuse(r));
                    }
                    if self.get::<SmkInfo>(key::SMK)?.is_none() {
                        return Ok(refuse("no SMK yet: form it in an SMK ceremony first"));
                    }
                }
            }
            let nodes: Vec<NodeRecord> = scan(self.kv, key::NODE)?;
            let recipients: Vec<NodeId> = match &target {
                CeremonyTarget::Smk => nodes.iter().map(|n| n.id).collect(),
                // A working key forms on one node holding the SMK, and the next SMK on every node
                // holding it: seal to all that hold it.
                CeremonyTarget::Key { .. } | CeremonyTarget::SmkNext => {
                    nodes.iter().filter(|n| n.smk == NodeSmk::Present).map(|n| n.id).collect()
                }
            };
            if recipients.is_empty() {
                return Ok(refuse("no enrolled node can receive the components (no node has enrolled its HSM)"));
            }
            Ok(Ok(Ceremony {
                id: id.clone(),
                target,
                components,
                state: CeremonyState::Open,
                started_by: ctx.actor.clone(),
                started_ms: ctx.time_ms,
                recipients,
                submissions: Vec::new(),
                sealed: Default::default(),
                formed_on: Vec::new(),
                kcv: None,
            }))
        })()?;
        let c = match step {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        let detail = format!("{} components, recipients {:?}", c.components, c.recipients);
        self.put(format!("{}{id}", key::CEREMONY), &c)?;
        Ok(Ok(Applied::done(format!("ceremony:{id}"), detail)))
    }

    /// Ceremony `id`; one forming a key of a tenant the caller does not act for does not exist
    /// to it (an SMK ceremony is the bureau's).
    pub(super) fn ceremony(&self, ctx: &Ctx<'_>, id: &str) -> Result<Step<Ceremony>, StoreError> {
        Ok(match self.get::<Ceremony>(&format!("{}{id}", key::CEREMONY))? {
            Some(c) if c.target.visible_to(ctx.tenants()) => Ok(c),
            _ => refuse(format!("no ceremony {id}")),
        })
    }

    pub(super) fn ceremony_submit(
        &mut self,
        ctx: &Ctx<'_>,
        id: String,
        kcv: Kcv,
        sealed: Vec<(NodeId, SealedComponent)>,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Custodian]) {
            return Ok(Err(r));
        }
        let mut c = match self.ceremony(ctx, &id)? {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        if c.state != CeremonyState::Open {
            return Ok(refuse(format!("ceremony {id} is {:?}, not open", c.state).to_lowercase()));
        }
        if c.submissions.iter().any(|s| s.custodian == ctx.actor.name) {
            return Ok(refuse(format!(
                "custodian {} already submitted a component to ceremony {id}: each component needs a different custodian",
                ctx.actor.name
            )));
        }
        if !kcv.is_well_formed() {
            return Ok(refuse(format!("KCV {kcv} is not hex of 3 to 8 bytes")));
        }
        let mut by_node = std::collections::BTreeMap::new();
        for (node, s) in sealed {
            if !c.recipients.contains(&node) {
                return Ok(refuse(format!("node {node} is not a recipient of ceremony {id} ({:?})", c.recipients)));
            }
            if by_node.insert(node, s).is_some() {
                return Ok(refuse(format!("two sealed components for node {node}")));
            }
        }
        if let Some(missing) = c.recipients.iter().find(|n| !by_node.contains_key(n)) {
            return Ok(refuse(format!("the component is not sealed to node {missing}, a recipient of ceremony {id}")));
        }
        for (node, s) in by_node {
            c.sealed.entry(node).or_default().push(s);
        }
        if let Some(cert) = ctx.cert
            && c.submissions.iter().any(|s| s.key_fp.as_deref() == Some(cert.key_fp.as_str()))
        {
            return Ok(refuse(format!(
                "{}'s certificate has the same key as an earlier custodian of ceremony {id}: one person, two names",
                ctx.actor
            )));
        }
        c.submissions.push(Submission {
            custodian: ctx.actor.name.clone(),
            kcv: kcv.clone(),
            at_ms: ctx.time_ms,
            key_fp: ctx.cert.map(|c| c.key_fp.clone()),
        });
        let n = c.submissions.len();
        if n == usize::from(c.components) {
            c.state = CeremonyState::Complete;
        }
        self.put(format!("{}{id}", key::CEREMONY), &c)?;
        Ok(Ok(Applied::done(format!("ceremony:{id}"), format!("component {n}/{} KCV {kcv}", c.components))))
    }

    pub(super) fn ceremony_cancel(&mut self, ctx: &Ctx<'_>, id: String) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        let mut c = match self.ceremony(ctx, &id)? {
            Ok(c) => c,
            Err(r) => return Ok(Err(r)),
        };
        if c.target == CeremonyTarget::SmkNext {
            // A rotation can be abandoned until the cluster switches: the next SMK some nodes
            // formed protects nothing yet (the next rotation replaces it in their HSMs).
            let mut info = self.get::<SmkInfo>(key::SMK)?;
            let switched = info.as_ref().is_some_and(|i| i.ceremony == id);
            if switched || c.state == CeremonyState::Cancelled {
                return Ok(refuse(format!(
                    "ceremony {id} can no longer be cancelled: the cluster switched to its SMK"
                )));
            }
            for mut n in scan::<NodeRecord>(self.kv, key::NODE)?.into_iter().filter(|n| n.next_smk.is_some()) {
                n.next_smk = None;
                self.put(key::node(n.id), &n)?;
            }
            if let Some(i) = info.as_mut().filter(|i| i.next.as_ref().is_some_and(|n| n.ceremony == id)) {
                i.next = None;
                self.put(key::SMK, &*i)?;
            }
        } else if !matches!(c.state, CeremonyState::Open | CeremonyState::Complete) || !c.formed_on.is_empty() {
            return Ok(refuse(format!(
                "ceremony {id} can no longer be cancelled: the key formed on {:?}",
                c.formed_on
            )));
        }
        c.state = CeremonyState::Cancelled;
        c.sealed.clear();
        self.put(format!("{}{id}", key::CEREMONY), &c)?;
        Ok(Ok(Applied::done(format!("ceremony:{id}"), "cancelled; sealed components deleted")))
    }
}

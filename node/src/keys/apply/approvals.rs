//! Dual-control approvals: requests, grants and denials by distinct custodians (never the
//! requester), expiry, and the export an approval allows.

use super::*;

impl State<'_> {
    pub(super) fn approval_request(
        &mut self,
        ctx: &Ctx<'_>,
        id: String,
        action: ApprovalAction,
        ttl_ms: u64,
    ) -> Result<Step<Applied>, StoreError> {
        // Pruning audit records is an auditor's request; everything else an admin's or operator's.
        let requesters: &[Role] = match &action {
            ApprovalAction::AuditPrune { .. } => &[Role::Auditor],
            ApprovalAction::Certify { .. } => &[Role::CaOfficer],
            _ => &[Role::Admin, Role::Operator],
        };
        if let Err(r) = self.role(ctx, requesters) {
            return Ok(Err(r));
        }
        let ttl_ms = if ttl_ms == 0 { APPROVAL_TTL_MS } else { ttl_ms };
        if ttl_ms > APPROVAL_TTL_MAX_MS {
            return Ok(refuse(format!(
                "an approval lasts at most {} h, not {} h",
                APPROVAL_TTL_MAX_MS / 3_600_000,
                ttl_ms / 3_600_000
            )));
        }
        if let Err(r) = check_id("approval id", &id) {
            return Ok(Err(r));
        }
        if self.get::<Approval>(&format!("{}{id}", key::APPROVAL))?.is_some() {
            return Ok(refuse(format!("approval {id} already exists")));
        }
        match &action {
            ApprovalAction::SmkToNode { node } => {
                let Some(rec) = self.get::<NodeRecord>(&key::node(*node))? else {
                    return Ok(refuse(format!("node {node} is not enrolled")));
                };
                if rec.smk == NodeSmk::Present {
                    return Ok(refuse(format!("node {node} already holds the SMK")));
                }
                if self.get::<SmkInfo>(key::SMK)?.is_none() {
                    return Ok(refuse("no SMK yet"));
                }
            }
            ApprovalAction::Export { key: kid, kbpk } => {
                let k = match self.key(ctx, kid)? {
                    Ok(k) => k,
                    Err(r) => return Ok(Err(r)),
                };
                if !k.exportable {
                    return Ok(refuse(format!("key {kid} is not exportable")));
                }
                if !matches!(k.state, KeyState::Active | KeyState::Pending) {
                    return Ok(refuse(format!("key {kid} is {}", k.state.as_str())));
                }
                match self.key(ctx, kbpk)? {
                    Ok(z) if z.tenant != k.tenant => {
                        return Ok(refuse(format!(
                            "{kbpk} belongs to tenant {:?}, {kid} to {:?}: a key leaves only under its own tenant's KBPK",
                            z.tenant, k.tenant
                        )));
                    }
                    Ok(z) if matches!(z.usage, Usage::K0 | Usage::K1) && z.state == KeyState::Active => {}
                    Ok(z) => {
                        return Ok(refuse(format!(
                            "{kbpk} is a {} key in state {}, not an active K0/K1",
                            z.usage,
                            z.state.as_str()
                        )));
                    }
                    Err(r) => return Ok(Err(r)),
                }
            }
            ApprovalAction::Destroy { key: kid } => match self.key(ctx, kid)? {
                Ok(k) if k.state == KeyState::Destroyed => {
                    return Ok(refuse(format!("key {kid} is already destroyed")));
                }
                Ok(_) => {}
                Err(r) => return Ok(Err(r)),
            },
            // The request must verify and fit the CA key now (checked again when it is signed);
            // what the custodians read in the approval must be what the request says.
            ApprovalAction::Certify { ca, format, request, hash_file, issuer_id, expiry, key_fingerprint } => {
                let Some((rid, index)) =
                    ca.split_once('/').and_then(|(r, i)| Some((r.to_string(), u8::from_str_radix(i, 16).ok()?)))
                else {
                    return Ok(refuse(format!("CA key {ca:?}: RID/II")));
                };
                let Some(rec) = self.get::<super::ca::OwnCaKey>(&format!(
                    "{}{}",
                    super::ca::OWN_CA,
                    super::ca::ca_id(&rid, index)
                ))?
                else {
                    return Ok(refuse(format!("no CA key {ca} of this CA")));
                };
                let req = match super::ca::check_request(&rec, format, request, hash_file.as_deref(), ctx.time_ms) {
                    Ok(r) => r,
                    Err(r) => return Ok(refuse(r)),
                };
                let fp = RsaPublic::new(req.key.modulus(), req.key.exponent()).fingerprint();
                if *issuer_id != req.issuer_id.digits() || *expiry != req.expiry.to_string() || *key_fingerprint != fp {
                    return Ok(refuse("the approval's summary is not what the request says"));
                }
            }
            // The archive must be of this chain as it stands (checked again when it is pruned).
            ApprovalAction::AuditPrune { archive } => {
                if let Err(r) = crate::audit::check_archive(self.kv, archive)? {
                    return Ok(refuse(r));
                }
            }
        }
        let detail = action.to_string();
        let a = Approval {
            id: id.clone(),
            action,
            requested_by: ctx.actor.clone(),
            requested_ms: ctx.time_ms,
            expires_ms: ctx.time_ms.saturating_add(ttl_ms),
            granted_by: Vec::new(),
            keys: ctx.cert.map(|c| c.key_fp.clone()).into_iter().collect(),
            denied_by: None,
            state: ApprovalState::Pending,
        };
        self.put(format!("{}{id}", key::APPROVAL), &a)?;
        Ok(Ok(Applied::done(format!("approval:{id}"), detail)))
    }

    pub(super) fn approval_decide(
        &mut self,
        ctx: &Ctx<'_>,
        id: String,
        grant: bool,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Custodian]) {
            return Ok(Err(r));
        }
        let Some(mut a) = self.get::<Approval>(&format!("{}{id}", key::APPROVAL))? else {
            return Ok(refuse(format!("no approval {id}")));
        };
        if a.state != ApprovalState::Pending {
            return Ok(refuse(format!("approval {id} is {:?}, not pending", a.state).to_lowercase()));
        }
        if let Err(r) = unexpired(&a, ctx) {
            return Ok(Err(r));
        }
        // A custodian decides only on keys of tenants it acts for.
        if let ApprovalAction::Export { key: kid, .. } | ApprovalAction::Destroy { key: kid } = &a.action
            && let Err(r) = self.key(ctx, kid)?
        {
            return Ok(Err(r));
        }
        if a.requested_by.name == ctx.actor.name {
            return Ok(refuse(format!("{} requested approval {id} and cannot also approve it", ctx.actor.name)));
        }
        if a.granted_by.contains(&ctx.actor.name) {
            return Ok(refuse(format!("custodian {} already granted approval {id}", ctx.actor.name)));
        }
        if let Some(c) = ctx.cert
            && a.keys.contains(&c.key_fp)
        {
            return Ok(refuse(format!(
                "{}'s certificate has the same key as the requester or an earlier approver of {id}: one person, \
                 two names",
                ctx.actor
            )));
        }
        let detail;
        if grant {
            a.granted_by.push(ctx.actor.name.clone());
            a.keys.extend(ctx.cert.map(|c| c.key_fp.clone()));
            if a.granted_by.len() >= APPROVALS_NEEDED {
                a.state = ApprovalState::Approved;
                detail = format!("granted ({}/{APPROVALS_NEEDED}): approved: {}", a.granted_by.len(), a.action);
                // Destruction runs as soon as it is approved: it needs no HSM.
                if let ApprovalAction::Destroy { key: kid } = &a.action {
                    let mut k = match self.key(ctx, kid)? {
                        Ok(k) => k,
                        Err(r) => return Ok(Err(r)),
                    };
                    k.state = KeyState::Destroyed;
                    k.wrapped = None;
                    k.approvers.extend(a.granted_by.iter().cloned());
                    k.changed_by = Some(ctx.actor.clone());
                    k.changed_ms = ctx.time_ms;
                    self.put(format!("{}{kid}", key::KEY), &k)?;
                    a.state = ApprovalState::Done;
                }
            } else {
                detail = format!("granted ({}/{APPROVALS_NEEDED})", a.granted_by.len());
            }
        } else {
            a.denied_by = Some(ctx.actor.name.clone());
            a.state = ApprovalState::Denied;
            detail = "denied".to_string();
        }
        self.put(format!("{}{id}", key::APPROVAL), &a)?;
        Ok(Ok(Applied::done(format!("approval:{id}"), detail)))
    }

    pub(super) fn export_done(&mut self, ctx: &Ctx<'_>, approval: String) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin, Role::Operator]) {
            return Ok(Err(r));
        }
        let Some(mut a) = self.get::<Approval>(&format!("{}{approval}", key::APPROVAL))? else {
            return Ok(refuse(format!("no approval {approval}")));
        };
        let ApprovalAction::Export { key: kid, kbpk } = a.action.clone() else {
            return Ok(refuse(format!("approval {approval} is not an export")));
        };
        if a.state != ApprovalState::Approved {
            return Ok(refuse(format!("approval {approval} is {:?}, not approved", a.state).to_lowercase()));
        }
        if let Err(r) = unexpired(&a, ctx) {
            return Ok(Err(r));
        }
        let mut k = match self.key(ctx, &kid)? {
            Ok(k) => k,
            Err(r) => return Ok(Err(r)),
        };
        k.approvers.extend(a.granted_by.iter().cloned());
        a.state = ApprovalState::Done;
        self.put(format!("{}{kid}", key::KEY), &k)?;
        self.put(format!("{}{approval}", key::APPROVAL), &a)?;
        Ok(Ok(Applied::done(format!("key:{kid}"), format!("exported as TR-31 under {kbpk}"))))
    }
}

//! The key inventory: keys created in an HSM (generated, formed, imported), versions, life cycle.

use super::*;

/// A key to file in the inventory: what `KeyCreate` and a partner's import carry.
pub(super) struct NewKey {
    pub label: String,
    pub usage: Usage,
    pub exportable: bool,
    pub origin: Origin,
    pub wrapped: WrappedKey,
    pub active: bool,
    pub tenant: String,
}

impl NewKey {
    /// A KBPK that came by TR-34-style transport: K1, not exportable, in the default tenant.
    pub(super) fn transported_kbpk(label: String, origin: Origin, wrapped: WrappedKey) -> Self {
        NewKey {
            label,
            usage: Usage::K1,
            exportable: false,
            origin,
            wrapped,
            active: true,
            tenant: crate::identity::default_tenant(),
        }
    }
}

impl State<'_> {
    pub(super) fn key_create(&mut self, ctx: &Ctx<'_>, new: NewKey) -> Result<Step<Applied>, StoreError> {
        let allowed: &[Role] = match new.origin {
            Origin::Components { .. } => &[Role::Node],
            // Only the transport commands file these, after their own checks.
            Origin::TransportSent { .. } | Origin::TransportReceived { .. } => {
                return Ok(refuse("a transported key is filed only by the transport itself"));
            }
            _ => &[Role::Admin],
        };
        if let Err(r) = self.role(ctx, allowed) {
            return Ok(Err(r));
        }
        self.key_create_checked(ctx, new)
    }

    /// Files `new` as [`State::key_create_checked`] does and gives the new key's id and the
    /// detail line; anything else (a refusal) comes back as the step for the caller to return.
    pub(super) fn key_filed(
        &mut self,
        ctx: &Ctx<'_>,
        new: NewKey,
    ) -> Result<Result<(String, String), Step<Applied>>, StoreError> {
        Ok(match self.key_create_checked(ctx, new)? {
            Ok(Applied::Done { object, detail }) => Ok((object.trim_start_matches("key:").to_string(), detail)),
            other => Err(other),
        })
    }

    /// [`State::key_create`] once the caller's role is checked (a partner's import checks its own).
    pub(super) fn key_create_checked(&mut self, ctx: &Ctx<'_>, new: NewKey) -> Result<Step<Applied>, StoreError> {
        let NewKey { label, usage, exportable, origin, wrapped, active, tenant } = new;
        if let Err(r) = check_id("label", &label) {
            return Ok(Err(r));
        }
        if let Err(r) = crate::identity::check_tenant(&tenant).and_then(|()| ctx.require_tenant(&tenant)) {
            return Ok(refuse(r));
        }
        if let Err(r) = usage.check_alg(wrapped.alg) {
            return Ok(refuse(r));
        }
        // The record says what the key block at rest binds (the HSMs hold the key to the block's
        // header whatever the record says; a record that disagrees is refused here, so the
        // inventory never shows a usage the key does not have). Blobs that are no key block at
        // all cannot be used by any HSM; the unit tests' placeholders are such blobs.
        if let Ok(header) = wrapped.header() {
            let block_usage = String::from_utf8_lossy(&header.key_usage.code()).into_owned();
            if block_usage != usage.code() {
                return Ok(refuse(format!("the key block says usage {block_usage}; the record says {usage}")));
            }
            // A record may be narrower than its block (an imported `E` block kept non-exportable:
            // the export path checks the record too), never wider.
            if exportable && header.exportability == quill_hsm::tr31::Exportability::NonExportable {
                return Ok(refuse("the key block says the key is not exportable (N); the record says exportable"));
            }
        }
        let Some(smk) = self.get::<SmkInfo>(key::SMK)? else { return Ok(refuse("no SMK yet")) };
        // The block binds its tenant: a node may not file a key of one tenant under another.
        if let Some(owner) = wrapped.owner().filter(|o| *o != tenant) {
            return Ok(refuse(format!("the key's block belongs to tenant {owner:?}, not {tenant:?}")));
        }
        if wrapped.smk_kcv != smk.kcv {
            return Ok(refuse(format!(
                "the key is wrapped under an SMK with KCV {}, the cluster's is {}",
                wrapped.smk_kcv, smk.kcv
            )));
        }
        if let Origin::Components { ceremony, .. } = &origin {
            let mut c = match self.ceremony(ctx, ceremony)? {
                Ok(c) => c,
                Err(r) => return Ok(Err(r)),
            };
            if c.state != CeremonyState::Complete || !matches!(c.target, CeremonyTarget::Key { .. }) {
                return Ok(refuse(format!("ceremony {ceremony} has no key waiting to form (it is {:?})", c.state)));
            }
            if let Some(t) = c.target.tenant()
                && t != tenant
            {
                return Ok(refuse(format!("ceremony {ceremony} forms a key of tenant {t:?}, not {tenant:?}")));
            }
            c.state = CeremonyState::Formed;
            c.kcv = Some(wrapped.kcv.clone());
            c.sealed.clear();
            self.put(format!("{}{ceremony}", key::CEREMONY), &c)?;
        }
        if let Origin::Tr31 { kbpk } = &origin {
            match self.get::<KeyRecord>(&format!("{}{kbpk}", key::KEY))?.filter(|k| k.tenant == tenant) {
                Some(k) if matches!(k.usage, Usage::K0 | Usage::K1) && k.state == KeyState::Active => {}
                Some(k) => {
                    return Ok(refuse(format!(
                        "{kbpk} is a {} key in state {}, not an active K0/K1",
                        k.usage,
                        k.state.as_str()
                    )));
                }
                None => return Ok(refuse(format!("no key {kbpk}"))),
            }
        }
        let version = self.get::<u32>(&format!("{}{label}", key::LABEL))?.unwrap_or(0) + 1;
        let id = format!("{label}.v{version}");
        let rec = KeyRecord {
            id: id.clone(),
            tenant,
            label: label.clone(),
            version,
            usage,
            alg: wrapped.alg,
            kcv: wrapped.kcv.clone(),
            state: if active { KeyState::Active } else { KeyState::Pending },
            exportable,
            origin,
            wrapped: Some(wrapped),
            created_by: ctx.actor.clone(),
            created_ms: ctx.time_ms,
            approvers: Vec::new(),
            changed_by: None,
            changed_ms: ctx.time_ms,
        };
        let detail = format!("{} {} KCV {} {}", rec.usage, rec.alg, rec.kcv, rec.state.as_str());
        self.put(format!("{}{label}", key::LABEL), &version)?;
        self.put(format!("{}{id}", key::KEY), &rec)?;
        Ok(Ok(Applied::done(format!("key:{id}"), detail)))
    }

    /// Key `id`, if the caller may act for its tenant: to anyone else it does not exist.
    pub(super) fn key(&self, ctx: &Ctx<'_>, id: &str) -> Result<Step<KeyRecord>, StoreError> {
        Ok(match self.get::<KeyRecord>(&format!("{}{id}", key::KEY))? {
            Some(k) if ctx.tenants().covers(&k.tenant) => Ok(k),
            _ => refuse(format!("no key {id}")),
        })
    }

    pub(super) fn key_set_state(
        &mut self,
        ctx: &Ctx<'_>,
        id: String,
        state: KeyState,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.role(ctx, &[Role::Admin]) {
            return Ok(Err(r));
        }
        let mut k = match self.key(ctx, &id)? {
            Ok(k) => k,
            Err(r) => return Ok(Err(r)),
        };
        if state == KeyState::Destroyed {
            return Ok(refuse("destroying a key needs dual control: request an approval (quill key destroy)"));
        }
        if !k.state.can_become(state) {
            return Ok(refuse(format!("key {id} cannot go from {} to {}", k.state.as_str(), state.as_str())));
        }
        let from = k.state;
        k.state = state;
        k.changed_by = Some(ctx.actor.clone());
        k.changed_ms = ctx.time_ms;
        self.put(format!("{}{id}", key::KEY), &k)?;
        Ok(Ok(Applied::done(format!("key:{id}"), format!("{} -> {}", from.as_str(), state.as_str()))))
    }
}

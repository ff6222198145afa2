//! Node enrolment: a node records its HSM transport public key (only for itself), bound to the
//! node certificate it proposed it with.

use super::*;

impl State<'_> {
    pub(super) fn enroll(
        &mut self,
        ctx: &Ctx<'_>,
        node: NodeId,
        transport: RsaPublic,
        hsm: String,
    ) -> Result<Step<Applied>, StoreError> {
        if let Err(r) = self.node_actor(ctx, node) {
            return Ok(Err(r));
        }
        let Some(cert) = ctx.cert else {
            return Ok(refuse(format!("node {node} enrols with its node certificate; this request carries none")));
        };
        let fingerprint = transport.fingerprint();
        let existing: Option<NodeRecord> = self.get(&key::node(node))?;
        let (smk, next_smk, retiring) = match existing {
            Some(rec) if rec.transport == transport && rec.cert.as_ref() == Some(cert) => {
                return Ok(Ok(Applied::done(format!("node:{node}"), format!("already enrolled ({fingerprint})"))));
            }
            // The same HSM transport key with a renewed node certificate: the SMK stays where it is.
            Some(rec) if rec.transport == transport => (rec.smk, rec.next_smk, rec.retiring),
            // A node that re-enrols with a new transport key (its HSM token was replaced) has
            // lost its SMK with it.
            Some(_) | None => (NodeSmk::Missing, None, None),
        };
        let rec = NodeRecord {
            id: node,
            transport,
            fingerprint: fingerprint.clone(),
            hsm,
            enrolled_ms: ctx.time_ms,
            smk,
            next_smk,
            retiring,
            cert: Some(cert.clone()),
        };
        self.put(key::node(node), &rec)?;
        Ok(Ok(Applied::done(
            format!("node:{node}"),
            format!("transport key {fingerprint}, node certificate {}", cert.serial),
        )))
    }
}

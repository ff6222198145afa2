//! Job intake: a submitted batch file checked against its profile (every record, before anything
//! is created), split into chunks, and sealed (AES-GCM) under a fresh data key made in this
//! node's HSM. It runs on the node that received the file, off the async threads; the API then
//! proposes the job, its chunks and its start. Also the AAD that binds a sealed chunk to its job
//! and position, shared with the workers that open inputs and seal outputs.

use quill_hsm::tr31::KeyUsage;
use quill_hsm::{Hsm, HsmError, KeyAlg, KeyUse, WrappedKey};
use quill_prep::engine::KeyStep;
use quill_prep::input::{self, CardRecord};
use quill_prep::profile::{BadRecordPolicy, Profile};
use sha2::{Digest, Sha256};

use crate::keys::apply::{key, scan};
use crate::keys::model::{KeyRecord, KeyState};
use crate::runtime::worker::{WorkerError, inventory_keys};
use crate::store::{Kv, StoreError};

/// Largest batch file accepted in one submission.
pub const MAX_INPUT_BYTES: usize = 256 << 20;
/// Input validation errors listed in a refusal.
const MAX_LISTED: usize = 50;
/// Default cards per chunk.
pub const DEFAULT_CHUNK: u32 = 250;
/// Most cards per chunk.
pub const MAX_CHUNK: u32 = 10_000;

/// A chunk ready to propose: number, cards, sealed records.
pub type SealedChunk = (u32, u32, Vec<u8>);

/// AAD of a chunk's sealed input.
pub fn input_aad(job: &str, n: u32) -> Vec<u8> {
    format!("quill job {job} input chunk {n}").into_bytes()
}

/// AAD of a chunk's sealed output.
pub fn output_aad(job: &str, n: u32) -> Vec<u8> {
    format!("quill job {job} output chunk {n}").into_bytes()
}

/// Why a submission was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The submission is wrong (incomplete, altered, a bad profile or bad records); nothing was
    /// created. The text names the file, line and field, never a card's data.
    #[error("{0}")]
    Invalid(String),
    /// This node's HSM could not make the data key, seal a chunk or open another job's input.
    /// Its class is kept: a device error means another node may take the submission.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// Another open job's input, opened for the duplicate check, does not decode (the state is
    /// damaged or was written by an incompatible build).
    #[error("job {job} input chunk {n} does not decode: {source}")]
    Decode {
        /// The other job.
        job: String,
        /// Its chunk.
        n: u32,
        /// Why.
        #[source]
        source: postcard::Error,
    },
    /// A chunk did not encode (a bug).
    #[error("encoding chunk {n}: {reason}")]
    Encode {
        /// The chunk.
        n: u32,
        /// Why.
        reason: String,
    },
}

/// What arrived: the file and what the sender says about it.
#[derive(Debug)]
pub struct Submission<'a> {
    /// The file's name, for messages.
    pub file: &'a str,
    /// Its bytes.
    pub data: &'a [u8],
    /// The size the sender announced.
    pub total_bytes: u64,
    /// The SHA-256 the sender computed, hex (empty: not given).
    pub digest: &'a str,
    /// The profile's name and TOML text.
    pub profile_name: &'a str,
    /// The profile's text.
    pub profile_toml: &'a str,
    /// Cards per chunk (0: [`DEFAULT_CHUNK`]).
    pub chunk_size: u32,
}

/// A submission that passed every check.
#[derive(Debug)]
pub struct Checked {
    /// The parsed profile.
    pub profile: Profile,
    /// SHA-256 of the file, hex.
    pub digest: String,
    /// Records the profile's policy skipped, with file, line, field and reason.
    pub skipped: Vec<String>,
    /// The valid records, in input order.
    pub records: Vec<CardRecord>,
    /// Valid records whose names were transliterated to ISO 7813.
    pub transliterated: u64,
    /// The file's name, for messages.
    pub file: String,
    /// Cards per chunk.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u32,
}

/// The newest active key of `tenant` with `label`.
pub fn active_key(kv: &dyn Kv, tenant: &str, label: &str) -> Result<Option<KeyRecord>, StoreError> {
    let keys: Vec<KeyRecord> = scan(kv, key::KEY)?;
    Ok(keys
        .into_iter()
        .filter(|k| k.label == label && k.tenant == tenant && k.state == KeyState::Active)
        .max_by_key(|k| k.version))
}

/// The output MAC key `label` of a job: an active key of usage `M7` (HMAC-SHA-256 MACs the output
/// streams). `Ok(Err(reason))` names the label and why.
pub fn output_mac_key(kv: &dyn Kv, tenant: &str, label: &str) -> Result<Result<KeyRecord, String>, StoreError> {
    let Some(k) = active_key(kv, tenant, label)? else {
        return Ok(Err(format!("no active output MAC key {label} in tenant {tenant:?}'s inventory")));
    };
    if let Err(reason) = k.block() {
        return Ok(Err(reason));
    }
    Ok(KeyStep::OutputMac.check("--mac-key", label, k.usage.tr31()).map(|()| k).map_err(|e| e.to_string()))
}

/// The keys of a job of `tenant` checked against that tenant's keys in `kv` as the workers' engine will check
/// them, so that a job no worker could prepare is refused at submission, before anything is
/// stored: the output MAC key `mac_key` ([`output_mac_key`]), and every key the profile names
/// ([`quill_prep::engine::check_keys`]: present and active, of a TR-31 usage its step needs and a
/// fitting algorithm; issuer key pairs certified for the application). `Ok(Err(reason))` names
/// the profile field, the label and why (the usage the key has and the usages the step needs).
pub fn check_keys(
    kv: &dyn Kv,
    tenant: &str,
    profile: &Profile,
    mac_key: &str,
) -> Result<Result<(), String>, StoreError> {
    if let Err(reason) = output_mac_key(kv, tenant, mac_key)? {
        return Ok(Err(reason));
    }
    let keys = match inventory_keys(kv, tenant) {
        Ok(k) => k,
        Err(WorkerError::Store(e)) => return Err(e),
        Err(e) => return Ok(Err(e.to_string())),
    };
    Ok(quill_prep::engine::check_keys(profile, &keys).map_err(|e| e.to_string()))
}

/// Check a submission: complete, unaltered, a valid profile, and records that pass it (with
/// `fail_batch`, one bad record refuses the whole file).
pub fn check(s: &Submission<'_>) -> Result<Checked, IntakeError> {
    let file = s.file;
    if s.data.len() as u64 != s.total_bytes {
        return Err(IntakeError::Invalid(format!(
            "{file}: the upload is incomplete ({} of {} bytes arrived)",
            s.data.len(),
            s.total_bytes
        )));
    }
    let digest = hex::encode_upper(Sha256::digest(s.data));
    if !s.digest.is_empty() && !s.digest.eq_ignore_ascii_case(&digest) {
        return Err(IntakeError::Invalid(format!("{file}: SHA-256 of what arrived differs from the sender's")));
    }
    let profile = Profile::parse(s.profile_toml, s.profile_name)
        .map_err(|e| IntakeError::Invalid(format!("profile {}: {e}", s.profile_name)))?;
    let summary = input::scan(&profile.input, file, std::io::Cursor::new(s.data));
    if summary.refuses_batch(&profile.input) {
        let list: Vec<String> = summary.errors.iter().take(MAX_LISTED).map(|e| e.to_string()).collect();
        return Err(IntakeError::Invalid(format!(
            "{} bad record(s); the profile fails the batch, nothing was submitted: {}",
            summary.bad.max(1),
            list.join("; ")
        )));
    }
    let skipped: Vec<String> = summary.errors.iter().map(|e| e.to_string()).collect();
    let records: Vec<CardRecord> = input::Batch::new(&profile.input, file, std::io::Cursor::new(s.data)).collect();
    if records.is_empty() {
        return Err(IntakeError::Invalid(format!("{file}: no valid record")));
    }
    let chunk_size = if s.chunk_size == 0 { DEFAULT_CHUNK } else { s.chunk_size.min(MAX_CHUNK) };
    let chunks = u32::try_from(records.len().div_ceil(chunk_size as usize))
        .map_err(|_| IntakeError::Invalid(format!("{file}: too many chunks")))?;
    let transliterated = summary.transliterated;
    Ok(Checked { profile, digest, skipped, records, transliterated, file: file.to_owned(), chunk_size, chunks })
}

/// One sealed input chunk of another open job, read from the state for [`drop_repeats`].
#[derive(Debug)]
pub struct OpenInput {
    /// The job's id.
    pub id: String,
    /// How messages name it: `job <id>` to its submitter, not by id to anyone else.
    pub job: String,
    /// Its data key (wrapped under the SMK).
    pub data_key: WrappedKey,
    /// The chunk number.
    pub n: u32,
    /// The sealed records.
    pub sealed: Vec<u8>,
}

/// The duplicate check across jobs: a card (PAN + PSN) of this submission that is already in
/// another job not yet acknowledged, cancelled or expired. Those jobs' inputs are opened in the
/// HSM, compared by fingerprint and dropped (nothing of them is kept). Per the profile's
/// `duplicates`: `refuse_record` skips the repeated records (reported like any bad record),
/// `refuse_batch` refuses the submission, `allow` takes them. Blocking: call it off the async
/// threads.
pub fn drop_repeats(hsm: &dyn Hsm, others: &[OpenInput], mut c: Checked) -> Result<Checked, IntakeError> {
    use quill_prep::profile::DuplicatePolicy;
    let policy = c.profile.input.duplicates;
    if policy == DuplicatePolicy::Allow || others.is_empty() {
        return Ok(c);
    }
    let mut open = std::collections::HashMap::new();
    for o in others {
        let clear = zeroize::Zeroizing::new(hsm.open(&o.data_key, &input_aad(&o.id, o.n), &o.sealed)?);
        let records: Vec<CardRecord> =
            postcard::from_bytes(&clear).map_err(|source| IntakeError::Decode { job: o.id.clone(), n: o.n, source })?;
        for r in records {
            open.entry(r.card_fingerprint()).or_insert_with(|| o.job.clone());
        }
    }
    let file = c.file.clone();
    let mut repeated = Vec::new();
    c.records.retain(|r| match open.get(&r.card_fingerprint()) {
        Some(job) => {
            repeated.push(format!(
                "{file}:{}: PAN {} with PSN {} is already in {job}, not yet acknowledged",
                r.line,
                r.pan.masked(),
                r.psn_digits()
            ));
            false
        }
        None => true,
    });
    if repeated.is_empty() {
        return Ok(c);
    }
    // Within a file a repeat is a bad record, so `fail_batch` refuses the batch for it too.
    if policy == DuplicatePolicy::RefuseBatch || c.profile.input.on_bad_record == BadRecordPolicy::FailBatch {
        let list: Vec<&str> = repeated.iter().take(MAX_LISTED).map(String::as_str).collect();
        return Err(IntakeError::Invalid(format!(
            "{} card(s) already in open jobs; the profile refuses the batch ({}), nothing was submitted: {}",
            repeated.len(),
            if policy == DuplicatePolicy::RefuseBatch {
                "duplicates = \"refuse_batch\""
            } else {
                "on_bad_record = \"fail_batch\""
            },
            list.join("; ")
        )));
    }
    if c.records.is_empty() {
        return Err(IntakeError::Invalid(format!(
            "{file}: no valid record: every card is already in an open job ({})",
            repeated.first().map_or("", String::as_str)
        )));
    }
    c.transliterated = c.records.iter().filter(|r| r.transliterated()).count() as u64;
    c.skipped.extend(repeated);
    c.chunks = u32::try_from(c.records.len().div_ceil(c.chunk_size as usize))
        .map_err(|_| IntakeError::Invalid(format!("{file}: too many chunks")))?;
    Ok(c)
}

/// Seal the checked records of job `id` of `tenant` in chunks under a fresh AES-256 data key made
/// in `hsm` (returned wrapped under the SMK). Blocking: call it off the async threads.
pub fn seal(hsm: &dyn Hsm, id: &str, tenant: &str, c: &Checked) -> Result<(WrappedKey, Vec<SealedChunk>), IntakeError> {
    // A data key (D0) of the job's tenant that never leaves the HSMs: its block at rest says so.
    let data_key = hsm.generate_key(KeyAlg::Aes256, KeyUse::new(KeyUsage::DataEncryption, false).owned_by(tenant))?;
    let mut out = Vec::with_capacity(c.chunks as usize);
    for (n, chunk) in c.records.chunks(c.chunk_size as usize).enumerate() {
        let n = u32::try_from(n).map_err(|_| IntakeError::Encode { n: u32::MAX, reason: "chunk number".into() })?;
        let bytes = zeroize::Zeroizing::new(
            postcard::to_allocvec(chunk).map_err(|e| IntakeError::Encode { n, reason: e.to_string() })?,
        );
        let sealed = hsm.seal(&data_key, &input_aad(id, n), &bytes)?;
        let cards = u32::try_from(chunk.len()).map_err(|_| IntakeError::Encode { n, reason: "chunk size".into() })?;
        out.push((n, cards, sealed));
    }
    Ok((data_key, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::model::{Actor, Kcv, Origin, Usage};
    use crate::store::MemKv;

    /// Active inventory keys (wrapped blobs that wrap nothing: only labels, algorithms and usages
    /// matter to the checks) for the `visa-dda-credit` sample profile, without its issuer key.
    fn inventory(extra: &[(&str, u32, Usage, KeyAlg, KeyState)]) -> MemKv {
        let mut kv = MemKv::default();
        add(&mut kv, "default", extra);
        kv
    }

    /// A placeholder key block whose header binds `tenant` and `usage` (as the HSMs write it; no
    /// HSM here).
    fn owned_block(tenant: &str, usage: Usage, alg: KeyAlg) -> Vec<u8> {
        use quill_hsm::tr31::{self, Kbpk, Tr31Header};
        let mode = quill_hsm::tr31_mode_of_use(usage.tr31()).expect("a mode").code();
        let (a, hm, len) = if alg == KeyAlg::HmacSha256 { ('H', "HM0621", 32) } else { ('T', "", 16) };
        let blocks = if hm.is_empty() { 1 } else { 2 };
        let template = format!("D0000{}{a}{mode}00N0{blocks}10{hm}0T{:02X}{tenant}", usage.code(), 4 + tenant.len());
        let h = Tr31Header::parse_template(template.as_bytes()).unwrap_or_else(|e| panic!("{template}: {e}"));
        let b = tr31::wrap(Kbpk::Aes(&[1; 32]), &h, &vec![2; len], Some(32), &mut |b: &mut [u8]| b.fill(3))
            .unwrap_or_else(|e| panic!("{template}: {e}"));
        b.into_bytes()
    }

    /// The sample profile's keys and `extra`, in `tenant`.
    fn add(kv: &mut MemKv, tenant: &str, extra: &[(&str, u32, Usage, KeyAlg, KeyState)]) {
        let des2 = KeyAlg::Des2;
        let base = [
            ("IMK-AC-VISA-TEST", 1, Usage::E0, des2, KeyState::Active),
            ("IMK-SMI-VISA-TEST", 1, Usage::E2, des2, KeyState::Active),
            ("IMK-SMC-VISA-TEST", 1, Usage::E1, des2, KeyState::Active),
            ("TK-DEK-TEST", 1, Usage::D0, des2, KeyState::Active),
            ("CVK-VISA-TEST", 1, Usage::C0, des2, KeyState::Active),
            ("PVK-VISA-TEST", 1, Usage::V2, des2, KeyState::Active),
            ("ZPK-MAILER-TEST", 1, Usage::P0, des2, KeyState::Active),
            ("MAC-OUTPUT-TEST", 1, Usage::M7, KeyAlg::HmacSha256, KeyState::Active),
        ];
        let base = if tenant == "default" { &base[..] } else { &[] };
        for (label, version, usage, alg, state) in base.iter().chain(extra) {
            let id = format!("{label}.v{version}");
            let wrapped = WrappedKey {
                alg: *alg,
                blob: owned_block(tenant, *usage, *alg),
                kcv: Kcv("ABCDEF".into()),
                smk_kcv: Kcv("00".into()),
            };
            let rec = KeyRecord {
                id: id.clone(),
                label: (*label).into(),
                version: *version,
                usage: *usage,
                alg: *alg,
                kcv: wrapped.kcv.clone(),
                state: *state,
                exportable: false,
                origin: Origin::Generated { node: 1 },
                tenant: tenant.into(),
                wrapped: Some(wrapped),
                created_by: Actor::node(1),
                created_ms: 0,
                approvers: Vec::new(),
                changed_by: None,
                changed_ms: 0,
            };
            crate::store::put_typed(kv, format!("{}{id}", key::KEY).as_bytes(), &rec).expect("put");
        }
    }

    fn profile(from: &str, to: &str) -> Profile {
        let text = quill_prep::samples::VISA_DDA_CREDIT;
        assert!(text.contains(from), "{from}");
        Profile::parse(&text.replacen(from, to, 1), "visa-dda-credit").expect("profile")
    }

    fn sample() -> Profile {
        Profile::parse(quill_prep::samples::VISA_DDA_CREDIT, "visa-dda-credit").expect("profile")
    }

    fn refusal(kv: &MemKv, p: &Profile, mac: &str) -> String {
        check_keys(kv, "default", p, mac).expect("state").expect_err("refused")
    }

    /// The finding of issue 13 at submission: the IMK-AC as the transport key, the CVK as the
    /// PIN-mailer key, the CVK as the output MAC key; each refused naming field, label, the usage
    /// the key has and the usages the step needs.
    #[test]
    fn a_submission_naming_a_key_outside_its_use_is_refused() {
        let kv = inventory(&[]);
        let p = profile("transport_key = \"TK-DEK-TEST\"", "transport_key = \"IMK-AC-VISA-TEST\"");
        assert_eq!(
            refusal(&kv, &p, "MAC-OUTPUT-TEST"),
            "applications.visa-credit.secret.transport_key: key \"IMK-AC-VISA-TEST\" has usage E0 (EMV IMK, \
             application cryptograms); this step needs D0 (data encryption) or K0 (key encryption)"
        );
        let p = profile("key = \"ZPK-MAILER-TEST\"", "key = \"CVK-VISA-TEST\"");
        assert_eq!(
            refusal(&kv, &p, "MAC-OUTPUT-TEST"),
            "pin.mailer.key: key \"CVK-VISA-TEST\" has usage C0 (card verification key); this step needs P0 (PIN \
             encryption)"
        );
        let p = sample();
        assert_eq!(
            refusal(&kv, &p, "CVK-VISA-TEST"),
            "--mac-key: key \"CVK-VISA-TEST\" has usage C0 (card verification key); this step needs M7 (HMAC)"
        );
        assert_eq!(refusal(&kv, &p, "MAC-NONE"), "no active output MAC key MAC-NONE in tenant \"default\"'s inventory");
        // The right keys pass every working-key check; what is left is the issuer key pair this
        // inventory does not have (refused too: no worker could sign the cards).
        let r = refusal(&kv, &p, "MAC-OUTPUT-TEST");
        assert!(r.starts_with("applications.visa-credit.issuer_key: issuer key \"ISS-VISA-TEST-1408\""), "{r}");
    }

    /// A label is checked with the usage of the version the workers would use: the newest active
    /// one. A new version of the transport key's label that is an IMK is refused; a suspended
    /// newer version leaves the older one in charge.
    #[test]
    fn the_newest_active_version_of_a_label_is_the_one_checked() {
        let p = sample();
        let kv = inventory(&[("TK-DEK-TEST", 2, Usage::E0, KeyAlg::Des2, KeyState::Active)]);
        let r = refusal(&kv, &p, "MAC-OUTPUT-TEST");
        assert!(
            r.starts_with("applications.visa-credit.secret.transport_key: key \"TK-DEK-TEST\" has usage E0"),
            "{r}"
        );
        let kv = inventory(&[("TK-DEK-TEST", 2, Usage::E0, KeyAlg::Des2, KeyState::Suspended)]);
        let r = refusal(&kv, &p, "MAC-OUTPUT-TEST");
        assert!(r.contains("issuer_key"), "{r}");
        let kv = inventory(&[("MAC-OUTPUT-TEST", 2, Usage::K0, KeyAlg::Aes256, KeyState::Active)]);
        let r = refusal(&kv, &p, "MAC-OUTPUT-TEST");
        assert!(r.starts_with("--mac-key: key \"MAC-OUTPUT-TEST\" has usage K0 (key encryption)"), "{r}");
    }

    /// Keys of another tenant are not there for a job: a bank-b job naming the default tenant's
    /// keys finds none of them (its own MAC key passes, the profile's first key is missing), and
    /// the worker's key set for bank-b holds bank-b's keys only.
    #[test]
    fn a_job_sees_only_its_own_tenants_keys() {
        let mut kv = inventory(&[]);
        let p = sample();
        let r = check_keys(&kv, "bank-b", &p, "MAC-OUTPUT-TEST").expect("state").expect_err("refused");
        assert_eq!(r, "no active output MAC key MAC-OUTPUT-TEST in tenant \"bank-b\"'s inventory");
        add(&mut kv, "bank-b", &[("MAC-OUTPUT-TEST", 2, Usage::M7, KeyAlg::HmacSha256, KeyState::Active)]);
        let r = check_keys(&kv, "bank-b", &p, "MAC-OUTPUT-TEST").expect("state").expect_err("refused");
        assert!(r.contains("-TEST") && !r.contains("MAC-OUTPUT") && !r.contains("has usage"), "{r}");
        let set = inventory_keys(&kv, "bank-b").expect("key set");
        assert_eq!(set.labels().collect::<Vec<_>>(), vec!["MAC-OUTPUT-TEST"]);
        let set = inventory_keys(&kv, "default").expect("key set");
        let labels: Vec<&str> = set.labels().collect();
        assert!(labels.contains(&"IMK-AC-VISA-TEST") && labels.len() == 8, "{labels:?}");
        // The default tenant's newest MAC key is still its own v1, not bank-b's v2.
        assert_eq!(active_key(&kv, "default", "MAC-OUTPUT-TEST").expect("state").expect("key").version, 1);
    }
}

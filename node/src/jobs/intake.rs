//! Job intake: a submitted batch file checked against its profile (every record, before anything
//! is created), split into chunks, and sealed (AES-GCM) under a fresh data key made in this
//! node's HSM. It runs on the node that received the file, off the async threads; the API then
//! proposes the job, its chunks and its start. Also the AAD that binds a sealed chunk to its job
//! and position, shared with the workers that open inputs and seal outputs.

use quill_hsm::{Hsm, HsmError, KeyAlg, WrappedKey};
use quill_prep::input::{self, CardRecord};
use quill_prep::profile::{BadRecordPolicy, Profile};
use sha2::{Digest, Sha256};

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
    /// This node's HSM could not make the data key or seal a chunk.
    #[error(transparent)]
    Hsm(#[from] HsmError),
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
    /// Cards per chunk.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u32,
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
    if !summary.is_clean() && (profile.input.on_bad_record == BadRecordPolicy::FailBatch || summary.stopped) {
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
    Ok(Checked { profile, digest, skipped, records, chunk_size, chunks })
}

/// Seal the checked records of job `id` in chunks under a fresh AES-256 data key made in `hsm`
/// (returned wrapped under the SMK). Blocking: call it off the async threads.
pub fn seal(hsm: &dyn Hsm, id: &str, c: &Checked) -> Result<(WrappedKey, Vec<SealedChunk>), IntakeError> {
    let data_key = hsm.generate_key(KeyAlg::Aes256)?;
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

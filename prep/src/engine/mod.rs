//! The per-card engine: a validated [`CardRecord`] + a [`Profile`] + an [`Hsm`] handle in, a
//! [`CardOutput`] out (DESIGN.md §7).
//!
//! What a card gets, in this order (each step's keys by label from the [`KeySet`]):
//!
//! 1. **PIN** (`[pin]`): a random PIN drawn inside the HSM (weak PINs excluded when asked), which
//!    leaves only as a PIN block under the mailer key, with its Visa PVV or IBM 3624 offset; the
//!    chip's offline PIN is the same PIN block translated inside the HSM to the application's
//!    transport key in the chip format (DGI `8010`), with the try limit (`9010`).
//! 2. **Card verification values** (`[mag_stripe]`): CVV with the card's service code, iCVV
//!    (`999`) for the chip's track 2 equivalent data, CVV2 (`000`) for the carrier.
//! 3. **Tracks** 1 and 2 with the profile's discretionary data (PVKI, PVV or offset, CVV), and the
//!    chip's own track 2 (tag `57`, with iCVV).
//! 4. **Each application** in card order:
//!    EMV and CAP: the ICC master keys (AC, SMI, SMC and the profile's extra ones; CAP: its own
//!    IMK) derived inside the HSM by Option A or B and returned encrypted under the transport key
//!    (DGI `8000`), their KCVs (`9000`); every tag from its source; for DDA an ICC RSA key pair
//!    (from the [`IccKeyPool`] when one runs) whose CRT components come encrypted (`8201` q⁻¹ mod
//!    p, `8202` dq, `8203` dp, `8204` q, `8205` p);
//!    the record DGIs; then, once every ODA record is final, the Signed Static Application Data
//!    (`93`, SDA) or the ICC Public Key Certificate (`9F46`/`9F47`/`9F48`, DDA), signed inside the
//!    HSM with the issuer key; the issuer certificate (`8F`, `90`, `92`, `9F32`) from the
//!    inventory. E-purse: per-card keys derived from the purse master keys (`8001`, KCVs in
//!    `9001`) and the purse parameters (`9201`).
//! 5. **Embossing** lines, the **PIN-mailer** record (PIN block, a mailer reference that is not the
//!    PAN) and the **carrier** record (masked PAN, name, expiry, CVV2).
//!
//! Every label, every key's TR-31 usage for its step ([`KeyStep`]: an IMK is never a transport
//! key, a CVK never a PIN key) and every key's algorithm is checked once, in [`Engine::new`] (and
//! by [`check_keys`] where a job is submitted). Per-card errors name the input line, the
//! application and the step, never the PAN or a key.

mod keypool;
mod keys;
pub mod output;

pub use keypool::{IccKeyPool, PairSpec, PoolSettings, PoolStats};
use keys::Need;
pub use keys::{IssuerKey, KeyRef, KeySet, KeyStep, usage_text, usages_text};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use quill_hsm::tr31::KeyUsage;
use quill_hsm::{CrtPadding, Hsm, HsmError, PinRequest, PinVerification, WrappedKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cps::{self, Dgi};
use crate::emv::cert::{self, CertExpiry, IccCertificateRequest, RawRsaSigner, RsaPublicKey};
use crate::input::CardRecord;
use crate::magstripe;
use crate::profile::{
    Application, Computed, DdItem, Derived, EmvApplication, EpurseApplication, KeyDerivation, Oda, PinBlockFormat,
    PinMethod, Profile, TagSource, TrackLayout,
};
use crate::tlv::{self, Tag};

// ---------------------------------------------------------------------------------------------
// Output of one card
// ---------------------------------------------------------------------------------------------

/// Everything prepared for one card (one record of the `cards` stream, see
/// `docs/output-format.md`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardOutput {
    /// 1-based line of the input record.
    pub line: u64,
    /// Application PAN.
    pub pan: String,
    /// PAN sequence number, 2 digits.
    pub psn: String,
    /// Expiry, YYMM.
    pub expiry: String,
    /// The applications in card order.
    pub applications: Vec<AppOutput>,
    /// Embossing lines (PAN grouped, expiry MM/YY, name).
    pub embossing: Vec<String>,
    /// Mag-stripe tracks, when the product has a stripe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracks: Option<Tracks>,
    /// The PIN-mailer record, when the product has a PIN (written to the `pin-mailers` stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailer: Option<MailerRecord>,
    /// The carrier record (written to the `carriers` stream).
    pub carrier: CarrierRecord,
}

impl CardOutput {
    /// Overwrite the card's data in memory (PAN, tracks, clear DGIs, embossing, names, CVV2, the
    /// PIN block) and leave it empty. Dropping an output does this; what was written to the
    /// (sealed) output stream is the copy that lives on.
    pub fn wipe(&mut self) {
        use zeroize::Zeroize;
        self.pan.zeroize();
        self.embossing.zeroize();
        if let Some(t) = &mut self.tracks {
            t.track1.zeroize();
            t.track2.zeroize();
        }
        for d in self.applications.iter_mut().flat_map(|a| a.dgis.iter_mut()) {
            d.data.zeroize();
        }
        if let Some(m) = &mut self.mailer {
            m.name.zeroize();
            m.pin_block.zeroize();
        }
        self.carrier.pan_masked.zeroize();
        self.carrier.name.zeroize();
        self.carrier.cvv2.zeroize();
    }
}

impl Drop for CardOutput {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl fmt::Debug for CardOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardOutput")
            .field("line", &self.line)
            .field("pan", &crate::input::mask_pan(&self.pan))
            .field("applications", &self.applications.iter().map(|a| &a.name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One application's personalization data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppOutput {
    /// The profile's name of the application.
    pub name: String,
    /// AID, hex.
    pub aid: String,
    /// DGIs in personalization order.
    pub dgis: Vec<DgiOut>,
}

/// One DGI of the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DgiOut {
    /// DGI number, 4 hex digits.
    pub dgi: String,
    /// Content (without the DGI header), hex; ciphertext when `encrypted`.
    pub data: String,
    /// The content is encrypted under `key`.
    pub encrypted: bool,
    /// The key protecting the content (transport key), when encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyRef>,
}

impl DgiOut {
    fn clear(d: &Dgi) -> Self {
        Self { dgi: format!("{:04X}", d.id), data: hex::encode_upper(&d.data), encrypted: false, key: None }
    }

    fn secret(id: u16, data: &[u8], key: KeyRef) -> Self {
        Self { dgi: format!("{id:04X}"), data: hex::encode_upper(data), encrypted: true, key: Some(key) }
    }
}

/// Mag-stripe tracks (contents without sentinels and LRC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracks {
    /// Track 1 (format B), when the product has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track1: Option<String>,
    /// Track 2.
    pub track2: String,
}

/// A PIN-mailer record: the PIN only as an encrypted PIN block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailerRecord {
    /// Mailer reference (input line based; not the PAN).
    pub reference: String,
    /// Name to print on the mailer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ISO 9564-1 format of the block (`iso0`..`iso4`).
    pub format: String,
    /// The encrypted PIN block, hex.
    pub pin_block: String,
    /// The key the block is encrypted under.
    pub key: KeyRef,
}

/// A card-carrier record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarrierRecord {
    /// Same reference as the card's mailer.
    pub reference: String,
    /// PAN with all but the first 6 and last 4 digits masked.
    pub pan_masked: String,
    /// Embossing name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, MM/YY.
    pub expiry: String,
    /// CVV2 to print, when the product asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cvv2: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// The engine cannot be built for this profile with these keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A label the profile names is not in the key set.
    #[error("{field}: key {label:?} is not in the key inventory")]
    MissingKey {
        /// The profile field naming it.
        field: String,
        /// The label.
        label: String,
    },
    /// A key has the wrong algorithm for its use.
    #[error("{field}: key {label:?} is {alg}; this use needs {need}")]
    WrongKey {
        /// The profile field naming it.
        field: String,
        /// The label.
        label: String,
        /// Its algorithm.
        alg: String,
        /// What the use needs.
        need: &'static str,
    },
    /// A key's TR-31 usage is not one the step needs (PCI PIN 18-3: a key has one use).
    #[error("{field}: key {label:?} has usage {}; this step needs {}", usage_text(.has), usages_text(.needs))]
    WrongUsage {
        /// The profile field naming it.
        field: String,
        /// The label.
        label: String,
        /// The usage the inventory records for the key.
        has: KeyUsage,
        /// The usages the step accepts (any one).
        needs: &'static [KeyUsage],
    },
    /// An issuer key does not fit the application.
    #[error("{field}: issuer key {label:?}: {reason}")]
    Issuer {
        /// The profile field naming it.
        field: String,
        /// The label.
        label: String,
        /// Why.
        reason: String,
    },
    /// The profile asks for something the engine cannot do.
    #[error("{field}: {reason}")]
    Profile {
        /// The profile field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// One card could not be prepared. Names the input line, where and why; never the PAN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input line {line}: {step}: {reason}")]
pub struct CardError {
    /// 1-based input line.
    pub line: u64,
    /// The application and step (`visa-credit: ICC certificate`).
    pub step: String,
    /// Why.
    pub reason: String,
    /// The HSM failed in a way another HSM might not (retry the card elsewhere).
    pub device: bool,
}

impl CardError {
    fn new(line: u64, step: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { line, step: step.into(), reason: reason.into(), device: false }
    }

    fn hsm(line: u64, step: impl Into<String>, e: &HsmError) -> Self {
        Self { line, step: step.into(), reason: e.to_string(), device: e.is_device_error() }
    }
}

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

/// Engine settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineSettings {
    /// ICC key-pair pools (one per DDA key size/exponent and transport key).
    pub pool: PoolSettings,
}

/// Prepares cards of one profile. `Send + Sync`: call [`Engine::prepare`] from as many threads
/// as the HSMs have sessions.
pub struct Engine {
    profile: Profile,
    keys: KeySet,
    hsm: Arc<dyn Hsm>,
    pools: BTreeMap<(String, PairSpec), Arc<IccKeyPool>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("product", &self.profile.product.name).finish_non_exhaustive()
    }
}

/// CRT padding of the ICC private-key DGIs 8201–8205 (ISO 9797-1 method 2, as PBOC/CPS).
const CRT_PADDING: CrtPadding = CrtPadding::Iso9797Method2;

impl Engine {
    /// Check every key the profile names and start the ICC key-pair pools.
    pub fn new(
        profile: Profile,
        keys: KeySet,
        hsm: Arc<dyn Hsm>,
        settings: EngineSettings,
    ) -> Result<Self, SetupError> {
        check_keys(&profile, &keys)?;
        let mut pools = BTreeMap::new();
        if settings.pool.capacity > 0 {
            for app in &profile.applications {
                if let Application::Emv(a) = app
                    && a.oda == Oda::Dda
                    && let (Some(spec), Some(secret)) = (a.icc_key, &a.secret)
                {
                    let pair = PairSpec { bits: spec.bits, exponent: spec.exponent };
                    let tk = secret.transport_key.clone();
                    if let std::collections::btree_map::Entry::Vacant(v) = pools.entry((tk.clone(), pair)) {
                        // check_keys made sure the transport key exists.
                        let transport = keys.get(&tk).cloned().ok_or_else(|| SetupError::MissingKey {
                            field: format!("applications.{}.secret.transport_key", a.name),
                            label: tk.clone(),
                        })?;
                        v.insert(Arc::new(IccKeyPool::start(hsm.clone(), transport, pair, CRT_PADDING, settings.pool)));
                    }
                }
            }
        }
        Ok(Self { profile, keys, hsm, pools })
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The ICC key-pair pools, by transport-key label and pair parameters.
    pub fn pools(&self) -> impl Iterator<Item = (&(String, PairSpec), &Arc<IccKeyPool>)> {
        self.pools.iter()
    }

    /// Prepare one card.
    pub fn prepare(&self, rec: &CardRecord) -> Result<CardOutput, CardError> {
        let line = rec.line;
        let pan = rec.pan.digits();
        let yymm = rec.expiry.yymm();
        let reference = format!("L{line:08}");
        let mut c = CardValues::default();

        // 1. PIN
        let pin = match &self.profile.pin {
            Some(p) => Some(self.pin(rec, p)?),
            None => None,
        };
        if let Some(g) = &pin {
            c.pvv_or_offset = Some(g.pvv_or_offset.clone());
        }

        // 2. Card verification values and 3. tracks
        let mut tracks = None;
        let mut cvv2 = None;
        if let Some(m) = &self.profile.mag_stripe {
            let sc = rec
                .service_code
                .as_deref()
                .ok_or_else(|| CardError::new(line, "mag stripe", "the record has no service code"))?;
            let cvk = self.key(&m.cvk);
            let cvv = |code: &str, what: &str| {
                self.hsm.cvv(cvk, pan, &yymm, code).map_err(|e| CardError::hsm(line, format!("mag stripe: {what}"), &e))
            };
            c.cvv = Some(cvv(sc, "CVV")?);
            c.icvv = Some(cvv("999", "iCVV")?);
            if m.cvv2 {
                cvv2 = Some(cvv("000", "CVV2")?);
            }
            c.pvki = self.profile.pin.as_ref().and_then(|p| p.pvv.as_ref()).map(|p| p.pvki);
            let t2dd = discretionary(&m.track2, &c).map_err(|r| CardError::new(line, "track 2", r))?;
            let t2 =
                magstripe::track2(pan, &yymm, sc, &t2dd).map_err(|e| CardError::new(line, "track 2", e.to_string()))?;
            let track1 = match &m.track1 {
                Some(l) => {
                    let dd = discretionary(l, &c).map_err(|r| CardError::new(line, "track 1", r))?;
                    let name = rec
                        .cardholder_name
                        .as_deref()
                        .ok_or_else(|| CardError::new(line, "track 1", "the record has no cardholder name"))?;
                    Some(
                        magstripe::track1(pan, name, &yymm, sc, &dd)
                            .map_err(|e| CardError::new(line, "track 1", e.to_string()))?,
                    )
                }
                None => None,
            };
            let chip_dd =
                discretionary(&m.chip_track2_layout(), &c).map_err(|r| CardError::new(line, "chip track 2", r))?;
            // The chip's track 1 discretionary data (9F1F) carries the iCVV, like 57 (emv.md §4.2).
            if let Some(l) = m.chip_track1_layout() {
                c.chip_track1_dd = Some(discretionary(&l, &c).map_err(|r| CardError::new(line, "chip track 1", r))?);
            }
            c.chip_track2_dd = Some(chip_dd.clone());
            c.chip_track2 = Some(
                magstripe::track2(pan, &yymm, sc, &chip_dd)
                    .map_err(|e| CardError::new(line, "chip track 2", e.to_string()))?,
            );
            tracks = Some(Tracks { track1, track2: t2 });
        }

        // 4. Applications
        let mut applications = Vec::with_capacity(self.profile.applications.len());
        for app in &self.profile.applications {
            let out = match app {
                Application::Emv(a) => self.emv(rec, a, false, &c, pin.as_ref())?,
                Application::Cap(a) => self.emv(rec, a, true, &c, pin.as_ref())?,
                Application::Epurse(a) => self.epurse(rec, a)?,
            };
            applications.push(out);
        }

        // 5. Embossing, mailer, carrier
        let mm_yy = format!("{}/{}", &yymm[2..4], &yymm[0..2]);
        let mut embossing = vec![group_pan(pan), mm_yy.clone()];
        if let Some(n) = &rec.embossing_name {
            embossing.push(n.clone());
        }
        let mailer = match (&self.profile.pin, pin) {
            (Some(p), Some(g)) => Some(MailerRecord {
                reference: reference.clone(),
                name: rec.embossing_name.clone().or_else(|| rec.cardholder_name.clone()),
                format: format_name(p.mailer.block_format).to_owned(),
                pin_block: hex::encode_upper(&g.encrypted_block),
                key: KeyRef::of(&p.mailer.key, self.key(&p.mailer.key)),
            }),
            _ => None,
        };
        Ok(CardOutput {
            line,
            pan: pan.to_owned(),
            psn: rec.psn_digits(),
            expiry: yymm,
            applications,
            embossing,
            tracks,
            mailer,
            carrier: CarrierRecord {
                reference,
                pan_masked: rec.pan.masked(),
                // The carrier is a letter: it prints the name as the issuer sent it (UTF-8).
                name: rec.original_embossing_name.clone().or_else(|| rec.embossing_name.clone()),
                expiry: mm_yy,
                cvv2,
            },
        })
    }

    /// A key [`check_keys`] has found.
    fn key(&self, label: &str) -> &WrappedKey {
        // check_keys refused the profile unless every label it names is in the set.
        self.keys.get(label).unwrap_or_else(|| unreachable!("key {label} was checked in Engine::new"))
    }

    fn pin(&self, rec: &CardRecord, p: &crate::profile::PinConfig) -> Result<quill_hsm::GeneratedPin, CardError> {
        let line = rec.line;
        let verification = match p.method {
            PinMethod::Random => PinVerification::None,
            PinMethod::Pvv => {
                let v = p.pvv.as_ref().ok_or_else(|| CardError::new(line, "PIN", "method pvv without [pin.pvv]"))?;
                PinVerification::VisaPvv { pvk: self.key(&v.pvk).clone(), pvki: v.pvki }
            }
            PinMethod::Ibm3624 => {
                let v = p
                    .ibm3624
                    .as_ref()
                    .ok_or_else(|| CardError::new(line, "PIN", "method ibm3624 without [pin.ibm3624]"))?;
                PinVerification::Ibm3624 {
                    pvk: self.key(&v.pvk).clone(),
                    decimalisation: v.decimalisation.clone(),
                    start: u8::try_from(v.validation_start.saturating_sub(1)).unwrap_or(u8::MAX),
                    length: u8::try_from(v.validation_length).unwrap_or(u8::MAX),
                    pad: v.pad.to_digit(16).map_or(15, |d| d as u8),
                }
            }
        };
        let req = PinRequest {
            pin_key: self.key(&p.mailer.key).clone(),
            format: format_code(p.mailer.block_format),
            pin_length: u8::try_from(p.length).unwrap_or(u8::MAX),
            exclude_weak: p.exclude_weak,
            pan: rec.pan.digits().to_owned(),
            verification,
        };
        let g = self.hsm.generate_pin(&req).map_err(|e| CardError::hsm(line, "PIN generation", &e))?;
        Ok(g)
    }

    fn emv(
        &self,
        rec: &CardRecord,
        a: &EmvApplication,
        is_cap: bool,
        c: &CardValues,
        pin: Option<&quill_hsm::GeneratedPin>,
    ) -> Result<AppOutput, CardError> {
        let line = rec.line;
        let step = |s: &str| format!("{}: {s}", a.name);
        let pan = rec.pan.digits();
        let psn = rec.psn_digits();
        let mut secret_dgis: Vec<DgiOut> = Vec::new();
        let mut kcv_dgis: Vec<DgiOut> = Vec::new();

        // ICC master keys → 8000 / 9000.
        if let Some(secret) = &a.secret {
            let tk = self.key(&secret.transport_key);
            let tref = KeyRef::of(&secret.transport_key, tk);
            let imks: Vec<&str> = if is_cap {
                a.cap.as_ref().and_then(|cap| cap.imk.as_deref()).into_iter().collect()
            } else {
                a.keys
                    .as_ref()
                    .map(|k| {
                        let mut v = vec![k.ac.as_str(), k.smi.as_str(), k.smc.as_str()];
                        v.extend(k.extra.values().map(String::as_str));
                        v
                    })
                    .unwrap_or_default()
            };
            if !imks.is_empty() {
                let dpan = derivation_pan(pan, a.key_derivation);
                let mut enc = Vec::with_capacity(16 * imks.len());
                let mut kcvs = Vec::with_capacity(3 * imks.len());
                for label in imks {
                    let d = self
                        .hsm
                        .derive_icc_master_key(self.key(label), dpan, &psn, tk)
                        .map_err(|e| CardError::hsm(line, step("ICC master keys"), &e))?;
                    enc.extend_from_slice(&d.encrypted);
                    kcvs.extend(hex::decode(d.kcv.as_str()).unwrap_or_default());
                }
                secret_dgis.push(DgiOut::secret(0x8000, &enc, tref.clone()));
                kcv_dgis.push(DgiOut::clear(&Dgi { id: 0x9000, data: kcvs }));
            }
            // Offline PIN → 8010 / 9010.
            if a.offline_pin
                && let (Some(p), Some(g)) = (&self.profile.pin, pin)
                && let Some(chip) = &p.chip
            {
                let block = self
                    .hsm
                    .translate_pin_block(
                        self.key(&p.mailer.key),
                        format_code(p.mailer.block_format),
                        tk,
                        format_code(chip.block_format),
                        pan,
                        &g.encrypted_block,
                    )
                    .map_err(|e| CardError::hsm(line, step("offline PIN"), &e))?;
                let dgi = parse_dgi(&chip.dgi);
                secret_dgis.push(DgiOut::secret(dgi, &block, tref.clone()));
                kcv_dgis.push(DgiOut::clear(&Dgi {
                    id: parse_dgi(&chip.try_dgi),
                    data: vec![chip.try_limit, chip.try_limit],
                }));
            }
        }

        // DDA key pair.
        let icc_pair = match (a.oda, a.icc_key, &a.secret) {
            (Oda::Dda, Some(spec), Some(secret)) => {
                let pair = PairSpec { bits: spec.bits, exponent: spec.exponent };
                let got = match self.pools.get(&(secret.transport_key.clone(), pair)) {
                    Some(pool) => pool.take(),
                    None => self.hsm.generate_icc_rsa_key(
                        spec.bits,
                        spec.exponent,
                        self.key(&secret.transport_key),
                        CRT_PADDING,
                    ),
                };
                let kp = got.map_err(|e| CardError::hsm(line, step("ICC key pair"), &e))?;
                let tref = KeyRef::of(&secret.transport_key, self.key(&secret.transport_key));
                // kp.crt is p, q, dp, dq, qinv; the CPS DGIs (VSDC, PBOC) hold them the other
                // way round: 8201 qinv, 8202 dq, 8203 dp, 8204 q, 8205 p.
                for (i, part) in kp.crt.iter().rev().enumerate() {
                    secret_dgis.push(DgiOut::secret(0x8201 + i as u16, part, tref.clone()));
                }
                Some(kp)
            }
            _ => None,
        };

        // Tag values that need no signature.
        let issuer = a.issuer_key.as_deref().and_then(|l| self.keys.issuer(l));
        let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (tag, src) in &a.tags {
            let v = match src {
                TagSource::Constant(h) => hex::decode(h).unwrap_or_default(),
                TagSource::Field(f) => {
                    let text = rec.fields.get(f).ok_or_else(|| {
                        CardError::new(
                            line,
                            step(&format!("tag {tag}")),
                            format!("the record has no value for field {f:?}"),
                        )
                    })?;
                    field_bytes(tag, text).map_err(|r| CardError::new(line, step(&format!("tag {tag}")), r))?
                }
                TagSource::Derived(d) => {
                    self.derived(rec, *d, c).map_err(|r| CardError::new(line, step(&format!("tag {tag}")), r))?
                }
                TagSource::Computed(k) => match k {
                    Computed::CaPkIndex => a.ca_index.as_deref().and_then(|h| hex::decode(h).ok()).unwrap_or_default(),
                    Computed::IssuerPkCertificate => issuer.map(|i| i.certificate.cert().to_vec()).unwrap_or_default(),
                    Computed::IssuerPkRemainder => {
                        issuer.map(|i| i.certificate.remainder().to_vec()).unwrap_or_default()
                    }
                    Computed::IssuerPkExponent => issuer.map(|i| i.certificate.exponent().to_vec()).unwrap_or_default(),
                    Computed::Aip => hex::decode(&a.aip).unwrap_or_default(),
                    Computed::Afl => a.afl_bytes(),
                    Computed::CapIaf => a.cap.as_ref().and_then(|x| hex::decode(&x.iaf).ok()).unwrap_or_default(),
                    Computed::CapIpb => a.cap.as_ref().and_then(|x| hex::decode(&x.ipb).ok()).unwrap_or_default(),
                    Computed::CapCdol1 => a.cap.as_ref().and_then(|x| hex::decode(&x.cdol1).ok()).unwrap_or_default(),
                    // Filled in below, after the ODA records are final.
                    Computed::SignedStaticData
                    | Computed::IccPkCertificate
                    | Computed::IccPkExponent
                    | Computed::IccPkRemainder => continue,
                },
            };
            values.insert(tag.to_ascii_uppercase(), v);
        }
        if let Some(i) = issuer
            && matches!(a.oda, Oda::Sda | Oda::Dda)
        {
            i.certificate
                .check_pan(pan)
                .map_err(|e| CardError::new(line, step("issuer certificate"), e.to_string()))?;
            // A card outliving its issuer certificate fails offline data authentication in its
            // last months.
            let card = CertExpiry::new(rec.expiry.mm, rec.expiry.yy);
            if !self.profile.input.allow_beyond_issuer_expiry && card.is_some_and(|c| c > i.certificate.expiry()) {
                return Err(CardError::new(
                    line,
                    step("issuer certificate"),
                    format!(
                        "the card expires {} (YYMM), after its issuer certificate ({} MMYY): its offline data \
                         authentication would fail first; renew the issuer key or set \
                         input.allow_beyond_issuer_expiry",
                        rec.expiry.yymm(),
                        i.certificate.expiry()
                    ),
                ));
            }
        }

        // Static data to be authenticated: the ODA records (EMV Book 3 §10.3), then the AIP when
        // 9F4A lists it.
        let mut static_data = Vec::new();
        if a.oda != Oda::None {
            for r in a.records.iter().filter(|r| r.oda) {
                let body = record_body(&r.tags, &values).map_err(|e| CardError::new(line, step("ODA record"), e))?;
                if r.sfi <= 10 {
                    static_data.extend_from_slice(&body);
                } else {
                    let d = cps::record_dgi(r.sfi as u8, r.record as u8, &body)
                        .map_err(|e| CardError::new(line, step("ODA record"), e.to_string()))?;
                    static_data.extend_from_slice(&d.data);
                }
            }
            if let Some(list) = values.get("9F4A")
                && list.as_slice() == [0x82]
            {
                static_data.extend(hex::decode(&a.aip).unwrap_or_default());
            }
        }

        // Signatures.
        let expiry = CertExpiry::new(rec.expiry.mm, rec.expiry.yy)
            .ok_or_else(|| CardError::new(line, step("certificate"), "expiry is not a valid month"))?;
        match (a.oda, issuer) {
            (Oda::Sda, Some(i)) => {
                let dac: [u8; 2] =
                    values.get("9F45").and_then(|v| v.as_slice().try_into().ok()).unwrap_or([0xDA, 0xC0]);
                let signer = HsmSigner { hsm: &*self.hsm, key: &i.key };
                let ssad = cert::build_signed_static_data(&signer, i.public(), dac, &static_data).map_err(|e| {
                    CardError { line, step: step("SDA (93)"), reason: build_reason(&e), device: signer_device(&e) }
                })?;
                values.insert("93".into(), ssad);
            }
            (Oda::Dda, Some(i)) => {
                let kp = icc_pair.as_ref().ok_or_else(|| CardError::new(line, step("DDA"), "no ICC key pair"))?;
                let icc_key = RsaPublicKey::new(&kp.public.modulus, &kp.public.exponent)
                    .map_err(|e| CardError::new(line, step("ICC key pair"), e.to_string()))?;
                let serial = cert_serial(pan, &psn, &rec.expiry.yymm());
                let req = IccCertificateRequest { pan, expiry, serial, icc_key: &icc_key, static_data: &static_data };
                let signer = HsmSigner { hsm: &*self.hsm, key: &i.key };
                let ic = cert::build_icc_certificate(&signer, i.public(), &req).map_err(|e| CardError {
                    line,
                    step: step("ICC certificate (9F46)"),
                    reason: build_reason(&e),
                    device: signer_device(&e),
                })?;
                values.insert("9F46".into(), ic.cert);
                values.insert("9F47".into(), ic.exponent);
                values.insert("9F48".into(), ic.remainder);
            }
            _ => {}
        }

        // DGIs in order: records, data groups, secrets (8xxx), their clear companions (9xxx).
        let mut dgis = Vec::new();
        for r in &a.records {
            let body = record_body(&r.tags, &values).map_err(|e| CardError::new(line, step("record"), e))?;
            let d = cps::record_dgi(r.sfi as u8, r.record as u8, &body)
                .map_err(|e| CardError::new(line, step("record"), e.to_string()))?;
            dgis.push(DgiOut::clear(&d));
        }
        for g in &a.data_groups {
            let body = record_body(&g.tags, &values).map_err(|e| CardError::new(line, step("data group"), e))?;
            dgis.push(DgiOut::clear(&Dgi { id: parse_dgi(&g.dgi), data: body }));
        }
        dgis.extend(secret_dgis);
        dgis.extend(kcv_dgis);
        Ok(AppOutput { name: a.name.clone(), aid: a.aid.to_ascii_uppercase(), dgis })
    }

    fn epurse(&self, rec: &CardRecord, a: &EpurseApplication) -> Result<AppOutput, CardError> {
        let line = rec.line;
        let step = |s: &str| format!("{}: {s}", a.name);
        let pan = rec.pan.digits();
        let psn = rec.psn_digits();
        let mut dgis = Vec::new();
        let mut params = Vec::new();
        let put = |out: &mut Vec<u8>, tag: &[u8], v: &[u8]| {
            // Fixed two-byte tags and short values: encoding cannot fail.
            if let Ok(t) = Tag::new(tag) {
                let _ = tlv::encode(out, t, v);
            }
        };
        put(&mut params, &[0x5A], &bcd_f(pan));
        put(&mut params, &[0x5F, 0x24], &bcd(&rec.expiry.last_day_yymmdd()));
        put(&mut params, &[0xDF, 0x50], &bcd(&format!("0{}", a.currency)));
        put(&mut params, &[0xDF, 0x51], &[a.currency_exponent]);
        put(&mut params, &[0xDF, 0x52], &(a.balance_limit.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        put(&mut params, &[0xDF, 0x53], &(a.transaction_limit.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        dgis.push(DgiOut::clear(&Dgi { id: 0x9201, data: params }));
        if let Some(secret) = &a.secret {
            let tk = self.key(&secret.transport_key);
            let mut enc = Vec::new();
            let mut kcvs = Vec::new();
            for label in a.master_keys.values() {
                let d = self
                    .hsm
                    .derive_icc_master_key(self.key(label), derivation_pan(pan, KeyDerivation::OptionA), &psn, tk)
                    .map_err(|e| CardError::hsm(line, step("purse keys"), &e))?;
                enc.extend_from_slice(&d.encrypted);
                kcvs.extend(hex::decode(d.kcv.as_str()).unwrap_or_default());
            }
            let id = secret.dgis.first().map_or(0x8001, |d| parse_dgi(d));
            dgis.push(DgiOut::secret(id, &enc, KeyRef::of(&secret.transport_key, tk)));
            dgis.push(DgiOut::clear(&Dgi { id: 0x9000 | (id & 0x0FFF), data: kcvs }));
        }
        Ok(AppOutput { name: a.name.clone(), aid: a.aid.to_ascii_uppercase(), dgis })
    }

    fn derived(&self, rec: &CardRecord, d: Derived, c: &CardValues) -> Result<Vec<u8>, String> {
        Ok(match d {
            Derived::Pan => bcd_f(rec.pan.digits()),
            Derived::Psn => bcd(&rec.psn_digits()),
            Derived::ExpiryYymmdd => bcd(&rec.expiry.last_day_yymmdd()),
            Derived::EffectiveYymmdd => {
                bcd(&rec.effective.as_ref().ok_or("the record has no effective date")?.first_day_yymmdd())
            }
            Derived::ServiceCode => {
                bcd(&format!("0{}", rec.service_code.as_deref().ok_or("the record has no service code")?))
            }
            Derived::CardholderName => {
                rec.cardholder_name.as_deref().ok_or("the record has no cardholder name")?.as_bytes().to_vec()
            }
            Derived::Track2Equivalent => {
                magstripe::track2_equivalent(c.chip_track2.as_deref().ok_or("the product has no mag stripe")?)
                    .map_err(|e| e.to_string())?
            }
            Derived::Track1Discretionary => {
                c.chip_track1_dd.as_deref().ok_or("the product has no track 1")?.as_bytes().to_vec()
            }
            Derived::Track2Discretionary => {
                magstripe::discretionary_bcd(c.chip_track2_dd.as_deref().ok_or("the product has no mag stripe")?)
                    .map_err(|e| e.to_string())?
            }
        })
    }
}

/// Per-card values computed before the applications.
#[derive(Default)]
struct CardValues {
    pvki: Option<u8>,
    pvv_or_offset: Option<String>,
    cvv: Option<String>,
    icvv: Option<String>,
    chip_track2: Option<String>,
    /// Discretionary data of the chip's tracks (iCVV, never the stripe CVV).
    chip_track1_dd: Option<String>,
    chip_track2_dd: Option<String>,
}

fn discretionary(layout: &TrackLayout, c: &CardValues) -> Result<String, String> {
    let need = |v: &Option<String>, what: &str| v.clone().ok_or_else(|| format!("the layout needs a {what}; none"));
    let mut out = String::new();
    for item in &layout.discretionary {
        match item {
            DdItem::Pvki => out.push_str(&c.pvki.ok_or("the layout needs a PVKI; none")?.to_string()),
            DdItem::Pvv | DdItem::PinOffset => out.push_str(&need(&c.pvv_or_offset, "PVV or PIN offset")?),
            DdItem::Cvv => out.push_str(&need(&c.cvv, "CVV")?),
            DdItem::Icvv => out.push_str(&need(&c.icvv, "iCVV")?),
            DdItem::Pad(p) => out.push_str(p),
            DdItem::Invalid(s) => return Err(format!("invalid discretionary item {s:?}")),
        }
    }
    Ok(out)
}

/// TLV-encode `tags` (in order) from `values`; a computed remainder (`92`, `9F48`) that came out
/// empty is left out, as EMV wants.
fn record_body(tags: &[String], values: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for t in tags {
        let key = t.to_ascii_uppercase();
        let v = values.get(&key).ok_or_else(|| format!("tag {key} has no value"))?;
        if v.is_empty() && (key == "92" || key == "9F48") {
            continue;
        }
        let tag = Tag::parse(&key).map_err(|e| e.to_string())?;
        tlv::encode(&mut out, tag, v).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The raw RSA private operation through an HSM with a wrapped private key (an issuer key, or
/// an EMV CA key).
pub struct HsmSigner<'a> {
    pub hsm: &'a dyn Hsm,
    pub key: &'a quill_hsm::WrappedRsaKey,
}

impl RawRsaSigner for HsmSigner<'_> {
    type Error = HsmError;

    fn sign_raw(&self, block: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.hsm.rsa_sign_raw(self.key, block)
    }

    fn modulus_len(&self) -> usize {
        self.key.public.bits().div_ceil(8)
    }
}

/// A build error with its source (the HSM's reason when the signer failed).
fn build_reason(e: &cert::BuildError) -> String {
    match e {
        cert::BuildError::Signer { source, .. } => format!("{e}: {source}"),
        _ => e.to_string(),
    }
}

/// Whether a certificate build failed in the HSM in a way another HSM might not.
fn signer_device(e: &cert::BuildError) -> bool {
    match e {
        cert::BuildError::Signer { source, .. } => {
            source.downcast_ref::<HsmError>().is_some_and(HsmError::is_device_error)
        }
        _ => false,
    }
}

/// The PAN handed to the HSM: Option A on a PAN longer than 16 digits uses only the rightmost 16
/// digits of PAN ‖ PSN, which the rightmost 16 digits of the PAN give as well.
fn derivation_pan(pan: &str, how: KeyDerivation) -> &str {
    match how {
        KeyDerivation::OptionA if pan.len() > 16 => &pan[pan.len() - 16..],
        _ => pan,
    }
}

/// ICC certificate serial: 3 bytes of SHA-256(PAN ‖ PSN ‖ expiry), stable for a card.
fn cert_serial(pan: &str, psn: &str, yymm: &str) -> [u8; 3] {
    let h = Sha256::digest(format!("{pan}{psn}{yymm}").as_bytes());
    [h[0], h[1], h[2]]
}

fn parse_dgi(s: &str) -> u16 {
    // Validated by Profile::parse.
    u16::from_str_radix(s, 16).unwrap_or(0)
}

fn format_code(f: PinBlockFormat) -> u8 {
    match f {
        PinBlockFormat::Iso0 => 0,
        PinBlockFormat::Iso1 => 1,
        PinBlockFormat::Iso2 => 2,
        PinBlockFormat::Iso3 => 3,
        PinBlockFormat::Iso4 => 4,
    }
}

fn format_name(f: PinBlockFormat) -> &'static str {
    ["iso0", "iso1", "iso2", "iso3", "iso4"][usize::from(format_code(f))]
}

/// Numeric text as BCD (an odd length gets a leading 0).
fn bcd(digits: &str) -> Vec<u8> {
    let s = if digits.len() % 2 == 1 { format!("0{digits}") } else { digits.to_owned() };
    hex::decode(s).unwrap_or_default()
}

/// Digits as compressed numeric (`cn`): packed, `F`-padded (the PAN in `5A`).
fn bcd_f(digits: &str) -> Vec<u8> {
    let s = if digits.len() % 2 == 1 { format!("{digits}F") } else { digits.to_owned() };
    hex::decode(s).unwrap_or_default()
}

/// Numeric (format `n`) EMV tags an input field may fill, with their length in bytes. Any other
/// tag takes the field's text as is (formats `an`/`ans`, e.g. `9F12`, `5F2D`, `50`).
const NUMERIC_TAGS: &[(&str, usize)] = &[
    ("5F28", 2), // issuer country code
    ("5F2A", 2), // transaction currency code
    ("5F30", 2), // service code
    ("5F34", 1), // PAN sequence number
    ("5F36", 1), // transaction currency exponent
    ("9F11", 1), // issuer code table index
    ("9F15", 2), // merchant category code
    ("9F1A", 2), // terminal country code
    ("9F3C", 2), // transaction reference currency
    ("9F3D", 1), // transaction reference currency exponent
    ("9F42", 2), // application currency code
    ("9F44", 1), // application currency exponent
    ("9F51", 2), // application currency code (VSDC)
];

/// An input field's value for a tag: BCD, right-aligned in the tag's length, for a numeric tag;
/// the text's bytes otherwise.
fn field_bytes(tag: &str, text: &str) -> Result<Vec<u8>, String> {
    let tag = tag.to_ascii_uppercase();
    match NUMERIC_TAGS.iter().find(|(t, _)| *t == tag) {
        Some((_, len)) => {
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 2 * len {
                return Err(format!("a numeric tag of {len} byte(s) needs 1 to {} digits", 2 * len));
            }
            Ok(bcd(&format!("{text:0>width$}", width = 2 * len)))
        }
        None => Ok(text.as_bytes().to_vec()),
    }
}

/// The PAN grouped for embossing: 4-6-5 for 15 digits, otherwise groups of four.
fn group_pan(pan: &str) -> String {
    if pan.len() == 15 {
        return format!("{} {} {}", &pan[..4], &pan[4..10], &pan[10..]);
    }
    pan.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// Key checks
// ---------------------------------------------------------------------------------------------

/// Check every working key `p` names against `keys`, as [`Engine::new`] does: each label is in the
/// set, has a TR-31 usage its step needs ([`KeyStep`]) and an algorithm that fits; then the issuer
/// key pairs of SDA/DDA applications. The node runs it when a job is submitted, so that a profile
/// the workers could not prepare is refused before anything is stored.
pub fn check_keys(p: &Profile, keys: &KeySet) -> Result<(), SetupError> {
    let sym = |field: String, label: &str, step: KeyStep, need: Need| -> Result<(), SetupError> {
        let (Some(k), Some(usage)) = (keys.get(label), keys.usage(label)) else {
            return Err(SetupError::MissingKey { field, label: label.into() });
        };
        step.check(field.clone(), label, usage)?;
        if !need.fits(k.alg) {
            return Err(SetupError::WrongKey { field, label: label.into(), alg: k.alg.to_string(), need: need.name() });
        }
        Ok(())
    };
    // The working keys of every step first, then the issuer key pairs.
    for app in &p.applications {
        let at = |f: &str| format!("applications.{}.{f}", app.name());
        match app {
            Application::Emv(a) | Application::Cap(a) => {
                if let Some(k) = &a.keys {
                    sym(at("keys.ac"), &k.ac, KeyStep::ImkAc, Need::Tdes)?;
                    sym(at("keys.smi"), &k.smi, KeyStep::ImkSmi, Need::Tdes)?;
                    sym(at("keys.smc"), &k.smc, KeyStep::ImkSmc, Need::Tdes)?;
                    for (name, l) in &k.extra {
                        sym(at(&format!("keys.extra.{name}")), l, KeyStep::extra(name), Need::Tdes)?;
                    }
                }
                if let Some(imk) = a.cap.as_ref().and_then(|c| c.imk.as_deref()) {
                    sym(at("cap.imk"), imk, KeyStep::CapImk, Need::Tdes)?;
                }
                if let Some(s) = &a.secret {
                    sym(at("secret.transport_key"), &s.transport_key, KeyStep::Transport, Need::Tdes)?;
                } else if a.keys.is_some() || a.oda == Oda::Dda || a.offline_pin {
                    return Err(SetupError::Profile {
                        field: at("secret"),
                        reason: "master keys, a DDA key pair or an offline PIN need [applications.secret] (the transport key)"
                            .into(),
                    });
                }
            }
            Application::Epurse(a) => {
                for (name, l) in &a.master_keys {
                    sym(at(&format!("master_keys.{name}")), l, KeyStep::PurseMaster, Need::Tdes)?;
                }
                if let Some(s) = &a.secret {
                    sym(at("secret.transport_key"), &s.transport_key, KeyStep::Transport, Need::Tdes)?;
                }
            }
        }
    }
    if let Some(m) = &p.mag_stripe {
        sym("mag_stripe.cvk".into(), &m.cvk, KeyStep::Cvk, Need::Des2)?;
    }
    if let Some(pin) = &p.pin {
        if let Some(v) = &pin.pvv {
            sym("pin.pvv.pvk".into(), &v.pvk, KeyStep::PvkVisa, Need::Tdes)?;
        }
        if let Some(v) = &pin.ibm3624 {
            sym("pin.ibm3624.pvk".into(), &v.pvk, KeyStep::PvkIbm3624, Need::Tdes)?;
        }
        let need = if pin.mailer.block_format == PinBlockFormat::Iso4 { Need::Aes } else { Need::Tdes };
        sym("pin.mailer.key".into(), &pin.mailer.key, KeyStep::PinMailer, need)?;
    }
    for app in &p.applications {
        let at = |f: &str| format!("applications.{}.{f}", app.name());
        let (Application::Emv(a) | Application::Cap(a)) = app else { continue };
        if !matches!(a.oda, Oda::Sda | Oda::Dda) {
            continue;
        }
        let label = a.issuer_key.as_deref().unwrap_or_default();
        let field = at("issuer_key");
        let i = keys.issuer(label).ok_or_else(|| SetupError::Issuer {
            field: field.clone(),
            label: label.into(),
            reason: keys
                .issuer_refusal(label)
                .unwrap_or("no such issuer key pair with a certificate in the key inventory")
                .into(),
        })?;
        let bad = |reason: String| SetupError::Issuer { field: field.clone(), label: label.into(), reason };
        let aid = hex::decode(&a.aid).unwrap_or_default();
        if aid.get(..5) != Some(&i.certificate.rid()[..]) {
            return Err(bad(format!(
                "its certificate is for RID {}, the application's AID {} has another",
                hex::encode_upper(i.certificate.rid()),
                a.aid
            )));
        }
        let want = a.ca_index.as_deref().and_then(|h| hex::decode(h).ok()).unwrap_or_default();
        if want != [i.certificate.ca_index()] {
            return Err(bad(format!(
                "its certificate is signed by CA index {:02X}, the profile's ca_index is {}",
                i.certificate.ca_index(),
                a.ca_index.as_deref().unwrap_or("absent")
            )));
        }
        if let Some(spec) = a.icc_key
            && spec.bits as usize / 8 > i.public().len()
        {
            return Err(bad(format!(
                "the ICC key ({} bits) is longer than the issuer key ({} bits)",
                spec.bits,
                i.public().len() * 8
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bcd_and_cn() {
        assert_eq!(bcd("201"), vec![0x02, 0x01]);
        assert_eq!(bcd_f("4761739001010010"), hex::decode("4761739001010010").unwrap());
        assert_eq!(bcd_f("476173900101001"), hex::decode("476173900101001F").unwrap());
    }

    #[test]
    fn option_a_on_a_long_pan_takes_the_rightmost_16_digits() {
        assert_eq!(derivation_pan("1234567890123456789", KeyDerivation::OptionA), "4567890123456789");
        assert_eq!(derivation_pan("1234567890123456789", KeyDerivation::Auto), "1234567890123456789");
        assert_eq!(derivation_pan("1234567890123456", KeyDerivation::OptionA), "1234567890123456");
    }

    #[test]
    fn embossing_groups() {
        assert_eq!(group_pan("4761739001010010"), "4761 7390 0101 0010");
        assert_eq!(group_pan("378282246310005"), "3782 822463 10005");
        assert_eq!(group_pan("4970100000000000017"), "4970 1000 0000 0000 017");
    }
}

/// The key checks against the TEST key set (no HSM: [`crate::testkeys::unwrapped_set`]): the
/// usage each step needs, as an attacker's profile would try it.
#[cfg(all(test, feature = "test-keys"))]
#[allow(clippy::unwrap_used)]
mod key_usage_tests {
    use std::sync::OnceLock;

    use super::*;

    /// Every TR-31 usage code (X9.143-2022 table 6).
    const CODES: [&[u8; 2]; 38] = [
        b"B0", b"B1", b"B2", b"C0", b"D0", b"D1", b"D2", b"E0", b"E1", b"E2", b"E3", b"E4", b"E5", b"E6", b"I0", b"K0",
        b"K1", b"K2", b"K3", b"M0", b"M1", b"M2", b"M3", b"M4", b"M5", b"M6", b"M7", b"M8", b"P0", b"S0", b"S1", b"S2",
        b"V0", b"V1", b"V2", b"V3", b"V4", b"42",
    ];

    fn all_usages() -> impl Iterator<Item = KeyUsage> {
        CODES.iter().map(|c| KeyUsage::from_code(**c).unwrap())
    }

    fn keys() -> &'static KeySet {
        static S: OnceLock<KeySet> = OnceLock::new();
        S.get_or_init(|| crate::testkeys::unwrapped_set().unwrap())
    }

    fn sample(name: &str) -> &'static str {
        match name {
            "visa-dda-credit" => crate::samples::VISA_DDA_CREDIT,
            "mc-cap" => crate::samples::MC_CAP,
            "multi-app" => crate::samples::MULTI_APP,
            _ => unreachable!("no sample {name}"),
        }
    }

    /// A sample profile with `from` replaced by `to` (once, where it must be).
    fn edited(name: &str, from: &str, to: &str) -> Profile {
        let text = sample(name);
        assert!(text.contains(from), "{name} has no {from:?}");
        Profile::parse(&text.replacen(from, to, 1), name).unwrap()
    }

    fn profile(name: &str) -> Profile {
        Profile::parse(sample(name), name).unwrap()
    }

    #[test]
    fn the_sample_profiles_pass_with_the_test_keys() {
        for name in ["visa-dda-credit", "mc-cap", "multi-app"] {
            check_keys(&profile(name), keys()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    /// The finding: the IMK-AC named as the transport key of the secret DGIs.
    #[test]
    fn an_imk_as_the_transport_key_is_refused() {
        let p = edited("visa-dda-credit", "transport_key = \"TK-DEK-TEST\"", "transport_key = \"IMK-AC-VISA-TEST\"");
        let e = check_keys(&p, keys()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "applications.visa-credit.secret.transport_key: key \"IMK-AC-VISA-TEST\" has usage E0 (EMV IMK, \
             application cryptograms); this step needs D0 (data encryption) or K0 (key encryption)"
        );
        assert!(matches!(e, SetupError::WrongUsage { has: KeyUsage::EmvAc, .. }), "{e:?}");
    }

    /// The finding: the CVK named as the PIN-mailer key.
    #[test]
    fn a_cvk_as_the_pin_mailer_key_is_refused() {
        let p = edited("visa-dda-credit", "key = \"ZPK-MAILER-TEST\"", "key = \"CVK-VISA-TEST\"");
        let e = check_keys(&p, keys()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pin.mailer.key: key \"CVK-VISA-TEST\" has usage C0 (card verification key); this step needs P0 (PIN \
             encryption)"
        );
        // Both at once: the first step in profile order answers.
        let text = sample("visa-dda-credit")
            .replacen("transport_key = \"TK-DEK-TEST\"", "transport_key = \"IMK-AC-VISA-TEST\"", 1)
            .replacen("key = \"ZPK-MAILER-TEST\"", "key = \"CVK-VISA-TEST\"", 1);
        let e = check_keys(&Profile::parse(&text, "both").unwrap(), keys()).unwrap_err();
        assert!(e.to_string().starts_with("applications.visa-credit.secret.transport_key:"), "{e}");
    }

    /// Other swaps an attacker would try: an IMK of one use for another, the PVK as the CVK, the
    /// PIN key as the transport key, the KMC as an IMK. Each refused by usage although its
    /// algorithm fits.
    #[test]
    fn keys_of_another_use_are_refused_whatever_their_algorithm() {
        for (name, from, to, field, has) in [
            ("visa-dda-credit", "smi = \"IMK-SMI-VISA-TEST\"", "smi = \"IMK-AC-VISA-TEST\"", "keys.smi", "E0"),
            ("visa-dda-credit", "ac = \"IMK-AC-VISA-TEST\"", "ac = \"IMK-SMC-VISA-TEST\"", "keys.ac", "E1"),
            ("visa-dda-credit", "ac = \"IMK-AC-VISA-TEST\"", "ac = \"KMC-TEST\"", "keys.ac", "E5"),
            ("visa-dda-credit", "cvk = \"CVK-VISA-TEST\"", "cvk = \"PVK-VISA-TEST\"", "mag_stripe.cvk", "V2"),
            (
                "visa-dda-credit",
                "transport_key = \"TK-DEK-TEST\"",
                "transport_key = \"ZPK-MAILER-TEST\"",
                "secret.transport_key",
                "P0",
            ),
            ("visa-dda-credit", "pvk = \"PVK-VISA-TEST\"", "pvk = \"PVK-MC-TEST\"", "pin.pvv.pvk", "V1"),
            ("mc-cap", "pvk = \"PVK-MC-TEST\"", "pvk = \"PVK-VISA-TEST\"", "pin.ibm3624.pvk", "V2"),
            ("mc-cap", "imk = \"IMK-CAP-MC-TEST\"", "imk = \"IMK-CVC3-MC-TEST\"", "cap.imk", "E6"),
            ("multi-app", "load = \"PMK-LOAD-TEST\"", "load = \"TK-DEK-TEST\"", "master_keys.load", "D0"),
            ("multi-app", "dn = \"IMK-DN-VISA-TEST\"", "dn = \"IMK-CVC3-MC-TEST\"", "keys.extra.dn", "E6"),
            ("mc-cap", "cvc3 = \"IMK-CVC3-MC-TEST\"", "cvc3 = \"IMK-DN-VISA-TEST\"", "keys.extra.cvc3", "E4"),
        ] {
            let e = check_keys(&edited(name, from, to), keys()).unwrap_err();
            let SetupError::WrongUsage { field: f, has: h, .. } = &e else { panic!("{name} {to}: {e}") };
            assert!(f.ends_with(field), "{name} {to}: {e}");
            assert_eq!(&h.code(), has.as_bytes(), "{name} {to}: {e}");
            let label = to.split('"').nth(1).unwrap();
            assert!(e.to_string().contains(&format!("key \"{label}\" has usage {has} (")), "{e}");
        }
    }

    /// Every step, with its key given every TR-31 usage in turn: accepted exactly with the usages
    /// of [`KeyStep::needs`], refused otherwise naming the field, the label, the usage and the
    /// needed usages.
    #[test]
    fn every_step_takes_exactly_its_usages() {
        let dac = sample("multi-app").replacen("dn = \"IMK-DN-VISA-TEST\"", "dac = \"IMK-DN-VISA-TEST\"", 1);
        let dac = Profile::parse(&dac, "multi-app with dac").unwrap();
        let idn = sample("multi-app").replacen("dn = \"IMK-DN-VISA-TEST\"", "idn = \"IMK-DN-VISA-TEST\"", 1);
        let idn = Profile::parse(&idn, "multi-app with idn").unwrap();
        let cases: Vec<(Profile, &str, &str, KeyStep)> = vec![
            (profile("visa-dda-credit"), "IMK-AC-VISA-TEST", "applications.visa-credit.keys.ac", KeyStep::ImkAc),
            (profile("visa-dda-credit"), "IMK-SMI-VISA-TEST", "applications.visa-credit.keys.smi", KeyStep::ImkSmi),
            (profile("visa-dda-credit"), "IMK-SMC-VISA-TEST", "applications.visa-credit.keys.smc", KeyStep::ImkSmc),
            (dac, "IMK-DN-VISA-TEST", "applications.international.keys.extra.dac", KeyStep::ImkDac),
            (profile("multi-app"), "IMK-DN-VISA-TEST", "applications.international.keys.extra.dn", KeyStep::ImkDn),
            (idn, "IMK-DN-VISA-TEST", "applications.international.keys.extra.idn", KeyStep::ImkDn),
            (profile("mc-cap"), "IMK-CVC3-MC-TEST", "applications.mc-credit.keys.extra.cvc3", KeyStep::ImkOther),
            (profile("mc-cap"), "IMK-CAP-MC-TEST", "applications.mc-cap.cap.imk", KeyStep::CapImk),
            (profile("multi-app"), "PMK-LOAD-TEST", "applications.purse.master_keys.load", KeyStep::PurseMaster),
            (
                profile("visa-dda-credit"),
                "TK-DEK-TEST",
                "applications.visa-credit.secret.transport_key",
                KeyStep::Transport,
            ),
            (profile("multi-app"), "TK-DEK-TEST", "applications.domestic.secret.transport_key", KeyStep::Transport),
            (profile("visa-dda-credit"), "ZPK-MAILER-TEST", "pin.mailer.key", KeyStep::PinMailer),
            (profile("mc-cap"), "ZPK-MAILER-AES-TEST", "pin.mailer.key", KeyStep::PinMailer),
            (profile("visa-dda-credit"), "CVK-VISA-TEST", "mag_stripe.cvk", KeyStep::Cvk),
            (profile("mc-cap"), "CVK-MC-TEST", "mag_stripe.cvk", KeyStep::Cvk),
            (profile("visa-dda-credit"), "PVK-VISA-TEST", "pin.pvv.pvk", KeyStep::PvkVisa),
            (profile("mc-cap"), "PVK-MC-TEST", "pin.ibm3624.pvk", KeyStep::PvkIbm3624),
        ];
        let mut covered = std::collections::BTreeSet::new();
        for (p, label, field, step) in &cases {
            covered.insert(format!("{step:?}"));
            for u in all_usages() {
                let mut set = keys().clone();
                set.insert(*label, set.get(label).unwrap().clone(), u);
                let got = check_keys(p, &set);
                if step.needs().contains(&u) {
                    got.unwrap_or_else(|e| panic!("{field} with {u:?}: {e}"));
                } else {
                    let e = got.unwrap_err();
                    assert_eq!(
                        e,
                        SetupError::WrongUsage {
                            field: (*field).into(),
                            label: (*label).into(),
                            has: u,
                            needs: step.needs()
                        },
                        "{field} with {u:?}"
                    );
                    let text = e.to_string();
                    assert!(text.starts_with(&format!("{field}: key \"{label}\" has usage ")), "{text}");
                    assert!(text.ends_with(&format!("; this step needs {}", usages_text(step.needs()))), "{text}");
                }
            }
        }
        // The output MAC key is checked where the output is MACed (the node at submission, the
        // lab run): only an HMAC (M7) key.
        covered.insert(format!("{:?}", KeyStep::OutputMac));
        for u in all_usages() {
            let got = KeyStep::OutputMac.check("--mac-key", "MAC-OUTPUT", u);
            assert_eq!(got.is_ok(), u == KeyUsage::Hmac, "{u:?}");
        }
        let e = KeyStep::OutputMac.check("--mac-key", "CVK-VISA-TEST", KeyUsage::Cvk).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--mac-key: key \"CVK-VISA-TEST\" has usage C0 (card verification key); this step needs M7 (HMAC)"
        );
        assert_eq!(covered.len(), KeyStep::ALL.len(), "a step without a test: {covered:?}");
    }

    /// The mapping, as the standards name the usages.
    #[test]
    fn the_mapping() {
        let code =
            |s: KeyStep| s.needs().iter().map(|u| String::from_utf8_lossy(&u.code()).into_owned()).collect::<Vec<_>>();
        let want: [(KeyStep, &[&str]); 14] = [
            (KeyStep::ImkAc, &["E0"]),
            (KeyStep::ImkSmi, &["E2"]),
            (KeyStep::ImkSmc, &["E1"]),
            (KeyStep::ImkDac, &["E3"]),
            (KeyStep::ImkDn, &["E4"]),
            (KeyStep::ImkOther, &["E6"]),
            (KeyStep::CapImk, &["E0"]),
            (KeyStep::PurseMaster, &["E6"]),
            (KeyStep::Transport, &["D0", "K0"]),
            (KeyStep::PinMailer, &["P0"]),
            (KeyStep::Cvk, &["C0"]),
            (KeyStep::PvkVisa, &["V2"]),
            (KeyStep::PvkIbm3624, &["V1"]),
            (KeyStep::OutputMac, &["M7"]),
        ];
        for (s, codes) in want {
            assert_eq!(code(s), codes, "{s:?}");
        }
        assert_eq!(KeyStep::extra("DAC"), KeyStep::ImkDac);
        assert_eq!(KeyStep::extra("idn"), KeyStep::ImkDn);
        assert_eq!(KeyStep::extra("cvc3"), KeyStep::ImkOther);
        // A missing key is still named as such, before its usage.
        let mut set = keys().clone();
        set.remove("TK-DEK-TEST");
        let e = check_keys(&profile("visa-dda-credit"), &set).unwrap_err();
        assert!(matches!(e, SetupError::MissingKey { .. }), "{e}");
    }
}

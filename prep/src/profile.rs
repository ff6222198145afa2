//! Card-product profiles: one TOML file per card product.
//!
//! A profile says how the issuer's input file is laid out, what to do with a bad record, which
//! applications sit on the chip (in card order) and how each is filled, how the mag-stripe tracks
//! and the PIN are produced, and which keys (by label, never by value) each step uses. The format
//! is described field by field on the types below; `prep/profiles/*.toml` are worked examples.
//!
//! [`Profile::parse`] reports **every** problem it finds, each as a [`ProfileError`] naming the
//! file, the line, the field path (`applications[1].records[0].tags[3]`) and the reason, so that
//! `quill profile validate` can list them all in one go. Problems are found in three passes:
//! TOML syntax (with toml's error recovery), shape (each section and each application is
//! deserialized on its own, so one mistake does not hide the next), and meaning (the semantic
//! checks in [`Profile::parse`]'s docs).
//!
//! Like the rest of the crate this module does no I/O: the caller reads the file and passes the
//! text and a name for messages.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

// ---------------------------------------------------------------------------------------------
// The profile
// ---------------------------------------------------------------------------------------------

/// A validated card-product profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Product name and version (`[product]`).
    pub product: Product,
    /// How the issuer's input file is laid out (`[input]`).
    pub input: InputLayout,
    /// The applications in the order they sit on the card (`[[applications]]`).
    pub applications: Vec<Application>,
    /// Mag-stripe tracks and card verification values (`[mag_stripe]`), if the card has a stripe.
    pub mag_stripe: Option<MagStripe>,
    /// PIN generation, verification value and PIN blocks (`[pin]`), if the card has a PIN.
    pub pin: Option<PinConfig>,
}

/// `[product]`: what this profile is called.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Short product name, e.g. `visa-dda-credit`.
    pub name: String,
    /// Profile version; bump it whenever the card output changes.
    pub version: u32,
    /// Free text for operators.
    #[serde(default)]
    pub description: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Input layout
// ---------------------------------------------------------------------------------------------

/// `[input]`: the layout of the issuer's batch file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputLayout {
    /// `csv` or `fixed_width`.
    pub format: InputFormat,
    /// Character encoding of the file (default `ascii`).
    #[serde(default)]
    pub encoding: Encoding,
    /// CSV only: the first line names the columns (default `true`).
    #[serde(default = "default_true")]
    pub header: bool,
    /// CSV only: the column delimiter (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Fixed-width only: the exact line length in characters, if the issuer guarantees one.
    #[serde(default)]
    pub record_length: Option<usize>,
    /// What to do with a record that fails validation.
    pub on_bad_record: BadRecordPolicy,
    /// Names outside the ISO 7813 set (accents, lower case): `ascii` (default) uppercases and
    /// transliterates them for track 1, `5F20` and embossing (the carrier keeps the original);
    /// `refuse` refuses the record.
    #[serde(default)]
    pub name_transliteration: NameTransliteration,
    /// The same PAN and PSN twice in a batch (or in a batch and another job not yet
    /// acknowledged): `refuse_record` (default), `refuse_batch` or `allow`.
    #[serde(default)]
    pub duplicates: DuplicatePolicy,
    /// Accept cards whose expiry month has passed (lab use only; default `false`).
    #[serde(default)]
    pub allow_expired: bool,
    /// Accept cards that expire after their issuer public key certificate (their offline data
    /// authentication fails in their last months; default `false`).
    #[serde(default)]
    pub allow_beyond_issuer_expiry: bool,
    /// The fields of one record, in column order for a CSV file without header.
    pub fields: Vec<FieldSpec>,
}

/// How names outside the ISO 7813 character set are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NameTransliteration {
    /// Uppercase and transliterate to ASCII (é→E, ß→SS, Æ→AE, Ø→O, ı→I); a character that has no
    /// mapping refuses the record. A name the mapping makes longer than the field's maximum is cut
    /// to the maximum (trailing spaces removed).
    #[default]
    Ascii,
    /// Refuse any name outside A–Z, 0–9, space and `/ . - '` (and the field's `extra_chars`).
    Refuse,
}

/// What a repeated PAN + PSN does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// The repeated record is refused (per record, naming the line of the first).
    #[default]
    RefuseRecord,
    /// One repeat refuses the whole batch.
    RefuseBatch,
    /// Repeats are prepared (re-issues the issuer wants in one file).
    Allow,
}

fn default_true() -> bool {
    true
}

fn default_delimiter() -> char {
    ','
}

/// Input file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Delimited text with RFC 4180 quoting (`"a,b"`, `""` for a quote); no line breaks in fields.
    Csv,
    /// Fixed columns given by 1-based `start` and `length` (in characters).
    FixedWidth,
}

/// Character encoding of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// 7-bit ASCII; any byte ≥ 0x80 is an error.
    #[default]
    Ascii,
    /// ISO 8859-1: every byte is a character.
    #[serde(alias = "latin-1", alias = "iso-8859-1")]
    Latin1,
    /// UTF-8; invalid sequences are an error (a leading BOM is ignored).
    #[serde(alias = "utf-8")]
    Utf8,
}

/// Bad-record policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordPolicy {
    /// One bad record fails the whole batch; nothing is produced.
    FailBatch,
    /// Bad records are reported and skipped; good ones are produced.
    SkipAndReport,
}

/// One field of an input record (`[[input.fields]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Name used by tag sources (`field = "…"`); lower-case letters, digits and `_`.
    pub name: String,
    /// What the field holds, which decides how it is validated (default `text`).
    #[serde(default)]
    pub kind: FieldKind,
    /// CSV with header: the column title (default: `name`).
    #[serde(default)]
    pub column: Option<String>,
    /// Fixed-width: 1-based position of the first character.
    #[serde(default)]
    pub start: Option<usize>,
    /// Fixed-width: length in characters.
    #[serde(default)]
    pub length: Option<usize>,
    /// An empty value is an error (default `true`). An empty optional PSN means `00`.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Minimum length for names, digits and text (names default to 2).
    #[serde(default)]
    pub min_length: Option<usize>,
    /// Maximum length for names, digits and text (names default to 26).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Embossing names: characters allowed on top of the ISO 7813 set
    /// (`A`–`Z`, `0`–`9`, space, `/ . - '`), e.g. `"&,"`.
    #[serde(default)]
    pub extra_chars: String,
}

/// What an input field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Ord, PartialOrd, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// Primary account number: 12–19 digits with a valid Luhn check digit. Exactly one per layout.
    Pan,
    /// PAN sequence number, 2 digits (`00` when optional and empty).
    Psn,
    /// Expiry date `YYMM`. Exactly one per layout.
    Expiry,
    /// Effective date `YYMM`, not after the expiry.
    Effective,
    /// Service code, 3 digits, first digit 1, 2, 5, 6, 7 or 9.
    ServiceCode,
    /// Name for track 1 and tag `5F20`: ISO 7813 characters, 2–26 long.
    CardholderName,
    /// Name for the embossing/printing stream: ISO 7813 characters plus `extra_chars`.
    EmbossingName,
    /// Decimal digits only.
    Digits,
    /// Any printable text.
    #[default]
    Text,
}

impl FieldKind {
    /// Kinds of which a layout may hold at most one field.
    fn is_unique(self) -> bool {
        !matches!(self, FieldKind::Digits | FieldKind::Text)
    }
}

// ---------------------------------------------------------------------------------------------
// Applications
// ---------------------------------------------------------------------------------------------

/// One application on the chip (`[[applications]]`, chosen by `kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Application {
    /// `kind = "emv"`: a payment application.
    Emv(EmvApplication),
    /// `kind = "cap"`: an EMV-CAP (Visa DPA) application; `[applications.cap]` is required.
    Cap(EmvApplication),
    /// `kind = "epurse"`: an electronic purse.
    Epurse(EpurseApplication),
}

impl Application {
    /// The application's short name.
    pub fn name(&self) -> &str {
        match self {
            Application::Emv(a) | Application::Cap(a) => &a.name,
            Application::Epurse(a) => &a.name,
        }
    }

    /// The AID as hex text.
    pub fn aid(&self) -> &str {
        match self {
            Application::Emv(a) | Application::Cap(a) => &a.aid,
            Application::Epurse(a) => &a.aid,
        }
    }
}

/// An EMV (or CAP) application.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmvApplication {
    /// Short name, unique in the profile (used in output and logs).
    pub name: String,
    /// Application identifier, 5–16 bytes as hex.
    pub aid: String,
    /// Which kernel's conventions to follow.
    pub kernel: Kernel,
    /// Offline data authentication (default `none`).
    #[serde(default)]
    pub oda: Oda,
    /// DDA only: the per-card ICC RSA key.
    #[serde(default)]
    pub icc_key: Option<IccKeySpec>,
    /// SDA/DDA: label of the issuer key pair (and its certificate) in the key inventory.
    #[serde(default)]
    pub issuer_key: Option<String>,
    /// SDA/DDA: CA public key index (tag `8F`), one byte as hex.
    #[serde(default)]
    pub ca_index: Option<String>,
    /// ICC master-key derivation (default `auto`: Option A for PAN ≤ 16 digits, else B).
    #[serde(default)]
    pub key_derivation: KeyDerivation,
    /// Application Interchange Profile (`82`), 2 bytes as hex.
    pub aip: String,
    /// Application File Locator (`94`) as hex; derived from `records` when absent.
    #[serde(default)]
    pub afl: Option<String>,
    /// The card holds an offline (reference) PIN: `[pin.chip]` is required and its DGI must be
    /// secret here.
    #[serde(default)]
    pub offline_pin: bool,
    /// Issuer master keys by label (required for `emv`; a CAP application uses `cap.imk`).
    #[serde(default)]
    pub keys: Option<EmvKeys>,
    /// Which DGIs are secret and which transport key protects them.
    #[serde(default)]
    pub secret: Option<SecretDgis>,
    /// Every tag the application holds and where its value comes from, keyed by tag hex.
    #[serde(default)]
    pub tags: BTreeMap<String, TagSource>,
    /// Record layout: SFI/record → tags, in file order.
    #[serde(default)]
    pub records: Vec<RecordSpec>,
    /// Non-record DGIs (SELECT/GPO data, internal data) → tags.
    #[serde(default)]
    pub data_groups: Vec<DataGroupSpec>,
    /// CAP data (only for `kind = "cap"`).
    #[serde(default)]
    pub cap: Option<CapData>,
}

/// Kernel style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kernel {
    /// Visa VSDC-like (also PBOC).
    VisaVsdc,
    /// Mastercard M/Chip-like.
    McMchip,
    /// A domestic scheme's application.
    Domestic,
}

/// Offline data authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Oda {
    /// No offline data authentication.
    #[default]
    None,
    /// Static: Signed Static Application Data (`93`).
    Sda,
    /// Dynamic: a per-card ICC key pair certified by the issuer (`9F46`).
    Dda,
}

/// ICC RSA key parameters (DDA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IccKeySpec {
    /// Modulus size in bits: 1024–1984, a multiple of 8.
    pub bits: u32,
    /// Public exponent: 3 or 65537.
    pub exponent: u32,
}

/// ICC master-key derivation method (EMV Book 2 Annex A1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyDerivation {
    /// Option A for PANs of up to 16 digits, Option B for longer ones.
    #[default]
    Auto,
    /// Always Option A.
    OptionA,
    /// Option B (identical to A for PANs of up to 16 digits).
    OptionB,
}

/// Issuer master keys of an EMV application, by label.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmvKeys {
    /// IMK for application cryptograms.
    pub ac: String,
    /// IMK for issuer-script integrity.
    pub smi: String,
    /// IMK for issuer-script confidentiality.
    pub smc: String,
    /// Extra per-profile IMKs (e.g. `dn`, `cvc3`), name → label.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// Secret DGIs and the transport key that protects them in the output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretDgis {
    /// Label of the transport key (KEK shared with the personalization device).
    pub transport_key: String,
    /// DGIs, 4 hex digits each, written encrypted.
    pub dgis: Vec<String>,
}

/// Where a tag's value comes from (`"5A" = { derived = "pan" }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TagSource {
    /// Copied from an input field (by layout name; not the PAN or the names, which are derived).
    Field(String),
    /// A constant, as hex.
    Constant(String),
    /// Derived from the card record.
    Derived(Derived),
    /// Computed with keys during preparation.
    Computed(Computed),
}

/// Values derived from the card record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Derived {
    /// `5A`: PAN, BCD, `F`-padded.
    Pan,
    /// `5F34`: PAN sequence number.
    Psn,
    /// `5F24`: last day of the expiry month.
    ExpiryYymmdd,
    /// `5F25`: first day of the effective month.
    EffectiveYymmdd,
    /// `57`: track 2 equivalent data (with iCVV per `[mag_stripe.chip_track2]`).
    Track2Equivalent,
    /// `9F1F`: track 1 discretionary data of the chip (with iCVV per `[mag_stripe.chip_track1]`).
    Track1Discretionary,
    /// `9F20`: track 2 discretionary data of the chip (the discretionary data of `57`, with iCVV).
    Track2Discretionary,
    /// `5F20`: cardholder name.
    CardholderName,
    /// `5F30`: service code.
    ServiceCode,
}

/// Values computed with keys during preparation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Computed {
    /// `8F`: CA public key index (from `ca_index`).
    CaPkIndex,
    /// `90`: issuer public key certificate (from the key inventory).
    IssuerPkCertificate,
    /// `92`: issuer public key remainder.
    IssuerPkRemainder,
    /// `9F32`: issuer public key exponent.
    IssuerPkExponent,
    /// `93`: signed static application data (SDA).
    SignedStaticData,
    /// `9F46`: ICC public key certificate (DDA).
    IccPkCertificate,
    /// `9F47`: ICC public key exponent (DDA).
    IccPkExponent,
    /// `9F48`: ICC public key remainder (DDA).
    IccPkRemainder,
    /// `82`: the application's `aip`.
    Aip,
    /// `94`: the application's AFL (`afl`, or derived from the records).
    Afl,
    /// `9F55`: CAP Issuer Authentication Flags (`cap.iaf`).
    CapIaf,
    /// `9F56`: CAP Issuer Proprietary Bitmap (`cap.ipb`).
    CapIpb,
    /// `8C`: CAP CDOL1 (`cap.cdol1`).
    CapCdol1,
}

/// One record: `[[applications.records]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    /// Short file identifier, 1–30.
    pub sfi: u32,
    /// Record number, 1–255.
    pub record: u32,
    /// The record is part of the static data to be authenticated (SDA/DDA).
    #[serde(default)]
    pub oda: bool,
    /// Tags in the record, in order (each must be defined in `tags`).
    pub tags: Vec<String>,
}

impl RecordSpec {
    /// The record's DGI number (SFI ‖ record).
    pub fn dgi(&self) -> u16 {
        // Validated: sfi ≤ 30 and record ≤ 255.
        ((self.sfi as u16) << 8) | (self.record as u16 & 0xFF)
    }
}

/// A non-record DGI: `[[applications.data_groups]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataGroupSpec {
    /// DGI, 4 hex digits (e.g. `9102` SELECT response, `9104` GPO response, `0D01`).
    pub dgi: String,
    /// Tags in the DGI, in order.
    pub tags: Vec<String>,
}

/// CAP application data (`[applications.cap]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapData {
    /// Label of the CAP IMK-AC (per-card key by Option A).
    #[serde(default)]
    pub imk: Option<String>,
    /// Issuer Authentication Flags (`9F55`), hex.
    pub iaf: String,
    /// Issuer Proprietary Bitmap (`9F56`), hex.
    pub ipb: String,
    /// CDOL1 as a DOL (tag ‖ length …), hex.
    pub cdol1: String,
    /// The CAP application verifies the payment application's PIN (default `true`).
    #[serde(default = "default_true")]
    pub shared_pin: bool,
}

/// An e-purse application.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EpurseApplication {
    /// Short name, unique in the profile.
    pub name: String,
    /// Application identifier, 5–16 bytes as hex.
    pub aid: String,
    /// ISO 4217 numeric currency code, 3 digits (e.g. `978`).
    pub currency: String,
    /// Minor-unit digits of the currency (default 2).
    #[serde(default = "default_currency_exponent")]
    pub currency_exponent: u8,
    /// Maximum balance, in minor units.
    pub balance_limit: u64,
    /// Maximum amount of one purchase, in minor units.
    pub transaction_limit: u64,
    /// Purse master keys (name → label); per-card keys are derived from them.
    pub master_keys: BTreeMap<String, String>,
    /// Secret DGIs of the purse (the derived keys).
    #[serde(default)]
    pub secret: Option<SecretDgis>,
}

fn default_currency_exponent() -> u8 {
    2
}

// ---------------------------------------------------------------------------------------------
// Mag stripe and PIN
// ---------------------------------------------------------------------------------------------

/// `[mag_stripe]`: ISO 7813 tracks and card verification values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MagStripe {
    /// Label of the CVK pair (CVV, iCVV, CVV2).
    pub cvk: String,
    /// Produce CVV2 (service code `000`) for the carrier/printing stream (default `true`).
    #[serde(default = "default_true")]
    pub cvv2: bool,
    /// Track 1 layout; absent means no track 1.
    #[serde(default)]
    pub track1: Option<TrackLayout>,
    /// Track 2 layout.
    pub track2: TrackLayout,
    /// Discretionary data of the chip's track 2 equivalent (`57`, `9F20`); default: track 2's
    /// with `cvv` replaced by `icvv`.
    #[serde(default)]
    pub chip_track2: Option<TrackLayout>,
    /// Discretionary data of the chip's track 1 (`9F1F`); default: track 1's with `cvv` replaced
    /// by `icvv`. Track data on the chip never carries the stripe's CVV (emv.md §4.2): whoever
    /// reads the chip must not be able to write a working stripe.
    #[serde(default)]
    pub chip_track1: Option<TrackLayout>,
}

impl MagStripe {
    /// The chip's track 1 discretionary layout: `chip_track1`, or track 1's with the CVV swapped
    /// for the iCVV. `None` when the product has no track 1 and no `chip_track1`.
    pub fn chip_track1_layout(&self) -> Option<TrackLayout> {
        self.chip_track1.clone().or_else(|| self.track1.as_ref().map(TrackLayout::for_chip))
    }

    /// The chip's track 2 discretionary layout: `chip_track2`, or track 2's with the CVV swapped
    /// for the iCVV.
    pub fn chip_track2_layout(&self) -> TrackLayout {
        self.chip_track2.clone().unwrap_or_else(|| self.track2.for_chip())
    }
}

/// Discretionary-data layout of one track.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackLayout {
    /// Items in order: `pvki`, `pvv`, `pin_offset`, `cvv`, `icvv`, `pad:<digits>`.
    pub discretionary: Vec<DdItem>,
}

impl TrackLayout {
    /// Length of the discretionary data in characters, given the PIN length (for the offset).
    pub fn len(&self, pin_length: usize) -> usize {
        self.discretionary.iter().map(|i| i.len(pin_length)).sum()
    }

    /// The layout has no discretionary data.
    pub fn is_empty(&self) -> bool {
        self.discretionary.is_empty()
    }

    /// The same layout for the chip: every `cvv` becomes `icvv`.
    pub fn for_chip(&self) -> TrackLayout {
        let swap = |i: &DdItem| if *i == DdItem::Cvv { DdItem::Icvv } else { i.clone() };
        TrackLayout { discretionary: self.discretionary.iter().map(swap).collect() }
    }
}

/// One discretionary-data item, a string: `pvki`, `pvv`, `pin_offset`, `cvv` (stripe only), `icvv`
/// (chip only) or `pad:<digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(from = "String")]
pub enum DdItem {
    /// PIN verification key index, 1 digit.
    Pvki,
    /// Visa PVV, 4 digits.
    Pvv,
    /// IBM 3624 PIN offset, as many digits as the PIN.
    PinOffset,
    /// CVV/CVC with the card's service code, 3 digits.
    Cvv,
    /// Chip CVV (service code `999`), 3 digits.
    Icvv,
    /// Fixed padding digits.
    Pad(String),
    /// Not a valid item. [`Profile::parse`] reports it (with its exact path), so a parsed
    /// profile never holds one.
    Invalid(String),
}

impl DdItem {
    fn len(&self, pin_length: usize) -> usize {
        match self {
            DdItem::Pvki => 1,
            DdItem::Pvv => 4,
            DdItem::PinOffset => pin_length,
            DdItem::Cvv | DdItem::Icvv => 3,
            DdItem::Pad(p) | DdItem::Invalid(p) => p.len(),
        }
    }
}

impl From<String> for DdItem {
    fn from(s: String) -> Self {
        match s.as_str() {
            "pvki" => DdItem::Pvki,
            "pvv" => DdItem::Pvv,
            "pin_offset" => DdItem::PinOffset,
            "cvv" => DdItem::Cvv,
            "icvv" => DdItem::Icvv,
            other => match other.strip_prefix("pad:") {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => DdItem::Pad(p.to_owned()),
                _ => DdItem::Invalid(s),
            },
        }
    }
}

/// `[pin]`: PIN generation, verification value and PIN blocks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    /// How the PIN is tied to the card.
    pub method: PinMethod,
    /// PIN length, 4–12 digits.
    pub length: usize,
    /// Exclude weak PINs (all digits equal, ascending/descending runs) when generating.
    #[serde(default = "default_true")]
    pub exclude_weak: bool,
    /// `method = "pvv"`: Visa PVV parameters.
    #[serde(default)]
    pub pvv: Option<PvvParams>,
    /// `method = "ibm3624"`: IBM 3624 offset parameters.
    #[serde(default)]
    pub ibm3624: Option<Ibm3624Params>,
    /// Offline (reference) PIN on the chip.
    #[serde(default)]
    pub chip: Option<ChipPin>,
    /// PIN-mailer stream.
    pub mailer: PinMailer,
}

/// PIN method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PinMethod {
    /// A random PIN with no verification value on the card.
    Random,
    /// A random PIN and its Visa PVV.
    Pvv,
    /// A random PIN and its IBM 3624 offset.
    Ibm3624,
}

/// Visa PVV parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PvvParams {
    /// Label of the PVK pair.
    pub pvk: String,
    /// PIN verification key index, 0–9 (usually 0–6).
    pub pvki: u8,
}

/// IBM 3624 offset parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ibm3624Params {
    /// Label of the PIN verification key.
    pub pvk: String,
    /// Decimalisation table, 16 decimal digits.
    pub decimalisation: String,
    /// 1-based position in the PAN of the first validation-data digit.
    #[serde(default = "default_validation_start")]
    pub validation_start: usize,
    /// Number of PAN digits in the validation data (1–16, commonly 12).
    #[serde(default = "default_validation_length")]
    pub validation_length: usize,
    /// Pad character (one hex digit) to 16 digits.
    #[serde(default = "default_pad")]
    pub pad: char,
}

fn default_validation_start() -> usize {
    4
}

fn default_validation_length() -> usize {
    12
}

fn default_pad() -> char {
    'F'
}

/// ISO 9564-1 PIN block formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PinBlockFormat {
    /// Format 0 (PAN-bound).
    Iso0,
    /// Format 1 (random fill, no PAN).
    Iso1,
    /// Format 2 (ICC plaintext offline PIN).
    Iso2,
    /// Format 3 (PAN-bound, random fill).
    Iso3,
    /// Format 4 (AES, 16 bytes).
    Iso4,
}

/// Offline (reference) PIN on the chip.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChipPin {
    /// PIN block format of the reference PIN.
    pub block_format: PinBlockFormat,
    /// Secret DGI of the reference PIN (usually `8010`).
    pub dgi: String,
    /// PIN try limit, 1–15.
    pub try_limit: u8,
    /// DGI of the try counter/limit (usually `9010`).
    pub try_dgi: String,
}

/// PIN-mailer stream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PinMailer {
    /// PIN block format in the mailer stream.
    pub block_format: PinBlockFormat,
    /// Label of the key the mailer PIN blocks are encrypted under.
    pub key: String,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in a profile, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    /// The file name given to [`Profile::parse`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Field path, e.g. `applications[1].records[0].tags[3]` (empty for the document itself).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.reason)
        } else {
            write!(f, "{}:{}:{}: {}: {}", self.file, self.line, self.column, self.field, self.reason)
        }
    }
}

/// Every problem found in a profile, in file order (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProfileErrors(pub Vec<ProfileError>);

impl fmt::Display for ProfileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{} in profile", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Profile {
    /// Parse and check a profile. `file` only names the source in errors.
    ///
    /// Beyond the shape (types, required keys, no unknown keys), it checks: AIDs are 5–16 bytes
    /// of hex and unique; application names unique; SFI 1–30, record 1–255, no record twice;
    /// every tag is valid BER-TLV tag hex, defined once in `tags` and placed in one record at
    /// most; every `field` source names a non-special layout field and derived values have the
    /// field they need; ODA settings are consistent (SDA/DDA need an issuer key, CA index and
    /// the certificate tags; DDA needs a 1024–1984-bit (multiple of 8) ICC key with exponent 3
    /// or 65537 and its private key DGIs 8201–8205 secret; the certificates are not themselves
    /// in ODA records); the AFL (given or derived) matches the record layout and its ODA
    /// records; DGI 8000 is secret; DGIs are 4 hex digits and not used twice; key labels are
    /// non-empty; fixed-width fields lie in the line and do not overlap; CSV columns are unique;
    /// a CAP application has its IMK, IAF, IPB and a valid CDOL1; discretionary data fits the
    /// tracks and matches the PIN method; an offline PIN has its `[pin.chip]` and secret DGI.
    pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileErrors> {
        let (root, syntax) = DeTable::parse_recoverable(text);
        let mut cx = Cx { text, file, root: &root, errors: Vec::new() };
        if !syntax.is_empty() {
            for e in syntax {
                let span = e.span().unwrap_or(0..0);
                cx.push_at(span, String::new(), e.message().to_owned());
            }
            return Err(cx.finish());
        }
        let top = Path::root();
        let table = root.get_ref();

        for (key, _) in table.iter() {
            let k = key.get_ref().as_ref();
            if !["product", "input", "applications", "mag_stripe", "pin"].contains(&k) {
                cx.push(
                    &top.key(k),
                    format!("unknown section `{k}`, expected product, input, applications, mag_stripe or pin"),
                );
            }
        }

        let product: Option<Product> = cx.section(table, "product", true);
        let input: Option<InputLayout> = cx.section(table, "input", true);
        let mag_stripe: Option<MagStripe> = cx.section(table, "mag_stripe", false);
        let pin: Option<PinConfig> = cx.section(table, "pin", false);
        let applications = cx.applications(table);

        let broken = [("input", input.is_none()), ("mag_stripe", mag_stripe.is_none()), ("pin", pin.is_none())]
            .into_iter()
            .filter(|&(k, none)| none && table.contains_key(k))
            .map(|(k, _)| k)
            .collect();
        let parts = Parts { broken, product, input, applications, mag_stripe, pin };
        check(&mut cx, &parts);
        if !cx.errors.is_empty() {
            return Err(cx.finish());
        }
        match parts {
            Parts { product: Some(product), input: Some(input), applications, mag_stripe, pin, .. }
                if applications.iter().all(Option::is_some) =>
            {
                Ok(Profile {
                    product,
                    input,
                    applications: applications.into_iter().flatten().collect(),
                    mag_stripe,
                    pin,
                })
            }
            _ => {
                // Unreachable in practice: a missing part always records an error above.
                cx.push(&top, "incomplete profile".to_owned());
                Err(cx.finish())
            }
        }
    }

    /// The application with this name.
    pub fn application(&self, name: &str) -> Option<&Application> {
        self.applications.iter().find(|a| a.name() == name)
    }
}

impl EmvApplication {
    /// The AFL bytes: the configured `afl`, or one derived from the record layout (records of
    /// one SFI with consecutive numbers share an entry; ODA records must lead an entry, so a
    /// run is split where an ODA record follows a non-ODA one).
    pub fn afl_bytes(&self) -> Vec<u8> {
        match &self.afl {
            // Validated by `Profile::parse`; an invalid value cannot reach here.
            Some(hex) => hex::decode(hex).unwrap_or_default(),
            None => derive_afl(&self.records),
        }
    }

    /// The DGIs listed as secret.
    pub fn is_secret(&self, dgi: u16) -> bool {
        self.secret.as_ref().is_some_and(|s| s.dgis.iter().any(|d| parse_dgi(d) == Ok(dgi)))
    }

    /// Whether the record at `sfi`/`record` is in the ODA static data.
    pub fn is_oda_record(&self, sfi: u32, record: u32) -> bool {
        self.records.iter().any(|r| r.sfi == sfi && r.record == record && r.oda)
    }
}

fn derive_afl(records: &[RecordSpec]) -> Vec<u8> {
    let mut sorted: Vec<&RecordSpec> = records.iter().collect();
    sorted.sort_by_key(|r| (r.sfi, r.record));
    // (sfi, first, last, oda count, a non-ODA record seen)
    let mut entries: Vec<(u32, u32, u32, u32, bool)> = Vec::new();
    for r in sorted {
        match entries.last_mut() {
            Some(e) if e.0 == r.sfi && r.record == e.2 + 1 && !(r.oda && e.4) => {
                e.2 = r.record;
                if r.oda {
                    e.3 += 1;
                } else {
                    e.4 = true;
                }
            }
            _ => entries.push((r.sfi, r.record, r.record, u32::from(r.oda), !r.oda)),
        }
    }
    entries.iter().flat_map(|e| [(e.0 << 3) as u8, e.1 as u8, e.2 as u8, e.3 as u8]).collect()
}

// ---------------------------------------------------------------------------------------------
// Field paths and locations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A field path inside the document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Path(Vec<Seg>);

impl Path {
    fn root() -> Path {
        Path(Vec::new())
    }

    fn key(&self, k: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    fn idx(&self, i: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if n > 0 {
                        f.write_str(".")?;
                    }
                    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// The span of the deepest node of `path` that exists (a missing key points at its table).
fn locate(root: &Spanned<DeTable<'_>>, path: &Path) -> Range<usize> {
    let mut span = root.span();
    let mut cur: Option<&DeValue<'_>> = None;
    let mut table = Some(root.get_ref());
    for seg in &path.0 {
        let next = match (seg, table, cur) {
            (Seg::Key(k), Some(t), _) => t.get(k.as_str()),
            (Seg::Index(i), _, Some(DeValue::Array(a))) => a.get(*i),
            _ => None,
        };
        let Some(v) = next else { break };
        span = v.span();
        cur = Some(v.get_ref());
        table = v.get_ref().as_table();
    }
    span
}

/// The path of the deepest node (key or value) below `node` (at `base`) whose span contains
/// `at`. Every child is searched, not only those inside a containing parent: the span toml gives
/// an array of tables does not cover all its elements.
fn path_of(node: &Spanned<DeValue<'_>>, base: &Path, at: &Range<usize>) -> Path {
    fn walk(node: &Spanned<DeValue<'_>>, path: &Path, at: &Range<usize>, best: &mut (usize, Path)) {
        let contains = |s: Range<usize>| s.start <= at.start && at.end <= s.end.max(s.start + 1);
        if contains(node.span()) && path.0.len() >= best.0 {
            *best = (path.0.len(), path.clone());
        }
        match node.get_ref() {
            DeValue::Table(t) => {
                for (k, v) in t.iter() {
                    let p = path.key(k.get_ref());
                    if contains(k.span()) && p.0.len() >= best.0 {
                        *best = (p.0.len(), p.clone());
                    }
                    walk(v, &p, at, best);
                }
            }
            DeValue::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &path.idx(i), at, best);
                }
            }
            _ => {}
        }
    }
    let mut best = (base.0.len(), base.clone());
    walk(node, base, at, &mut best);
    best.1
}

struct Cx<'a, 'i> {
    text: &'a str,
    file: &'a str,
    root: &'a Spanned<DeTable<'i>>,
    errors: Vec<ProfileError>,
}

impl Cx<'_, '_> {
    fn push_at(&mut self, span: Range<usize>, field: String, reason: String) {
        let start = span.start.min(self.text.len());
        let before = self.text.get(..start).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.errors.push(ProfileError { file: self.file.to_owned(), line, column, field, reason });
    }

    fn push(&mut self, path: &Path, reason: String) {
        let span = locate(self.root, path);
        self.push_at(span, path.to_string(), reason);
    }

    fn serde_error(&mut self, node: &Spanned<DeValue<'_>>, base: &Path, e: toml::de::Error) {
        let span = e.span().unwrap_or_else(|| node.span());
        let path = path_of(node, base, &span);
        self.push_at(span, path.to_string(), e.message().to_owned());
    }

    fn deserialize<T: for<'de> Deserialize<'de>>(&mut self, node: &Spanned<DeValue<'_>>, base: &Path) -> Option<T> {
        let owned: Spanned<DeValue<'_>> = node.clone();
        match T::deserialize(ValueDeserializer::from(owned)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.serde_error(node, base, e);
                None
            }
        }
    }

    fn section<T: for<'de> Deserialize<'de>>(&mut self, table: &DeTable<'_>, key: &str, required: bool) -> Option<T> {
        let path = Path::root().key(key);
        match table.get(key) {
            Some(node) => self.deserialize(node, &path),
            None => {
                if required {
                    self.push(&path, format!("missing section [{key}]"));
                }
                None
            }
        }
    }

    /// Each application is deserialized on its own so that one bad application does not hide
    /// problems in the next. `None` marks an application that did not deserialize.
    fn applications(&mut self, table: &DeTable<'_>) -> Vec<Option<Application>> {
        let base = Path::root().key("applications");
        let Some(node) = table.get("applications") else {
            self.push(&base, "missing [[applications]]: a card needs at least one application".to_owned());
            return Vec::new();
        };
        let Some(arr) = node.get_ref().as_array() else {
            self.push(&base, "expected an array of tables [[applications]]".to_owned());
            return Vec::new();
        };
        if arr.iter().next().is_none() {
            self.push(&base, "a card needs at least one application".to_owned());
        }
        let mut out = Vec::new();
        for (i, app) in arr.iter().enumerate() {
            let path = base.idx(i);
            let Some(t) = app.get_ref().as_table() else {
                self.push(&path, "expected a table".to_owned());
                out.push(None);
                continue;
            };
            let kind = match t.get("kind") {
                None => {
                    self.push(&path, "missing field `kind` (emv, cap or epurse)".to_owned());
                    out.push(None);
                    continue;
                }
                Some(k) => k.get_ref().as_str().map(str::to_owned),
            };
            let mut rest = t.clone();
            rest.remove("kind");
            let rest = Spanned::new(app.span(), DeValue::Table(rest));
            let parsed = match kind.as_deref() {
                Some("emv") => self.deserialize(&rest, &path).map(Application::Emv),
                Some("cap") => self.deserialize(&rest, &path).map(Application::Cap),
                Some("epurse") => self.deserialize(&rest, &path).map(Application::Epurse),
                _ => {
                    self.push(&path.key("kind"), "unknown application kind, expected emv, cap or epurse".to_owned());
                    None
                }
            };
            out.push(parsed);
        }
        out
    }

    fn finish(mut self) -> ProfileErrors {
        self.errors.sort_by_key(|a| (a.line, a.column));
        self.errors.dedup();
        ProfileErrors(self.errors)
    }
}

// ---------------------------------------------------------------------------------------------
// Semantic checks
// ---------------------------------------------------------------------------------------------

struct Parts {
    /// Sections present in the file that did not deserialize: cross-section checks that need
    /// them are skipped (their own errors are already reported).
    broken: BTreeSet<&'static str>,
    product: Option<Product>,
    input: Option<InputLayout>,
    applications: Vec<Option<Application>>,
    mag_stripe: Option<MagStripe>,
    pin: Option<PinConfig>,
}

fn check(cx: &mut Cx<'_, '_>, p: &Parts) {
    let root = Path::root();
    if let Some(product) = &p.product
        && product.name.trim().is_empty()
    {
        cx.push(&root.key("product").key("name"), "product name is empty".to_owned());
    }
    if let Some(input) = &p.input {
        check_input(cx, &root.key("input"), input);
    }
    if let Some(ms) = &p.mag_stripe {
        check_mag_stripe(cx, &root.key("mag_stripe"), ms, p.pin.as_ref(), p.broken.contains("pin"));
    }
    if let Some(pin) = &p.pin {
        check_pin(cx, &root.key("pin"), pin);
    }

    let apps = root.key("applications");
    let mut aids: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, app) in p.applications.iter().enumerate() {
        let Some(app) = app else { continue };
        let path = apps.idx(i);
        if let Some(prev) = names.insert(app.name(), i) {
            cx.push(&path.key("name"), format!("application name already used by applications[{prev}]"));
        }
        if app.name().trim().is_empty() {
            cx.push(&path.key("name"), "application name is empty".to_owned());
        }
        match hex_bytes(app.aid()) {
            Ok(aid) if (5..=16).contains(&aid.len()) => {
                if let Some(prev) = aids.insert(aid, i) {
                    cx.push(&path.key("aid"), format!("duplicate AID: applications[{prev}] has the same AID"));
                }
            }
            Ok(aid) => cx.push(&path.key("aid"), format!("AID must be 5–16 bytes, got {}", aid.len())),
            Err(e) => cx.push(&path.key("aid"), format!("AID {e}")),
        }
        match app {
            Application::Emv(a) => check_emv(cx, &path, a, false, p),
            Application::Cap(a) => check_emv(cx, &path, a, true, p),
            Application::Epurse(a) => check_epurse(cx, &path, a),
        }
    }
}

fn check_label(cx: &mut Cx<'_, '_>, path: &Path, label: &str) {
    if label.is_empty() {
        cx.push(path, "key label is empty".to_owned());
    } else if label.len() > 64 || !label.bytes().all(|b| b.is_ascii_graphic()) {
        cx.push(path, "key label must be 1–64 printable ASCII characters without spaces".to_owned());
    }
}

fn check_input(cx: &mut Cx<'_, '_>, path: &Path, input: &InputLayout) {
    let fields = path.key("fields");
    if input.fields.is_empty() {
        cx.push(&fields, "the layout has no fields".to_owned());
    }
    let fixed = input.format == InputFormat::FixedWidth;
    if !fixed && (input.delimiter == '"' || input.delimiter == '\n' || input.delimiter == '\r') {
        cx.push(&path.key("delimiter"), "the delimiter cannot be a quote or a line break".to_owned());
    }
    if !fixed && input.record_length.is_some() {
        cx.push(&path.key("record_length"), "record_length applies to fixed_width files only".to_owned());
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut columns: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kinds: BTreeMap<FieldKind, usize> = BTreeMap::new();
    let mut ranges: Vec<(usize, usize, usize)> = Vec::new();
    for (i, f) in input.fields.iter().enumerate() {
        let fp = fields.idx(i);
        if f.name.is_empty()
            || !f.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || f.name.as_bytes()[0].is_ascii_digit()
        {
            cx.push(&fp.key("name"), "field name must be lower-case letters, digits and `_`".to_owned());
        }
        let duplicate_name = names.insert(&f.name, i);
        if let Some(prev) = duplicate_name {
            cx.push(&fp.key("name"), format!("field name already used by input.fields[{prev}]"));
        }
        if f.kind.is_unique()
            && let Some(prev) = kinds.insert(f.kind, i)
        {
            cx.push(&fp.key("kind"), format!("only one field of this kind is allowed (see input.fields[{prev}])"));
        }
        if let (Some(min), Some(max)) = (f.min_length, f.max_length)
            && min > max
        {
            cx.push(&fp.key("min_length"), "min_length is greater than max_length".to_owned());
        }
        if f.kind == FieldKind::CardholderName && f.max_length.is_some_and(|m| m > 26) {
            cx.push(&fp.key("max_length"), "a cardholder name is at most 26 characters (ISO 7813 track 1)".to_owned());
        }
        if !f.extra_chars.is_empty() && f.kind != FieldKind::EmbossingName {
            cx.push(&fp.key("extra_chars"), "extra_chars applies to embossing_name fields only".to_owned());
        }
        if matches!(f.kind, FieldKind::Pan | FieldKind::Expiry) && !f.required {
            cx.push(&fp.key("required"), "the PAN and the expiry date are always required".to_owned());
        }
        if fixed {
            if f.column.is_some() {
                cx.push(
                    &fp.key("column"),
                    "column applies to CSV files; fixed-width fields use start/length".to_owned(),
                );
            }
            match (f.start, f.length) {
                (Some(start @ 1..), Some(length @ 1..)) => {
                    let end = start + length - 1;
                    for &(s, e, j) in &ranges {
                        if start <= e && s <= end {
                            cx.push(
                                &fp.key("start"),
                                format!("positions {start}–{end} overlap input.fields[{j}] (positions {s}–{e})"),
                            );
                        }
                    }
                    if let Some(len) = input.record_length
                        && end > len
                    {
                        cx.push(&fp.key("length"), format!("field ends at {end}, past record_length {len}"));
                    }
                    ranges.push((start, end, i));
                }
                (Some(0), _) => cx.push(&fp.key("start"), "positions are 1-based: start must be ≥ 1".to_owned()),
                (_, Some(0)) => cx.push(&fp.key("length"), "length must be ≥ 1".to_owned()),
                (None, _) => cx.push(&fp, "fixed-width field needs `start`".to_owned()),
                (_, None) => cx.push(&fp, "fixed-width field needs `length`".to_owned()),
            }
        } else {
            if f.start.is_some() || f.length.is_some() {
                cx.push(&fp, "start/length apply to fixed_width files; CSV fields are columns".to_owned());
            }
            if f.column.is_some() && !input.header {
                cx.push(
                    &fp.key("column"),
                    "column titles need `header = true`; without header, fields are in order".to_owned(),
                );
            }
            let col = f.column.as_deref().unwrap_or(&f.name);
            let checked = input.header && (f.column.is_some() || duplicate_name.is_none());
            if let Some(prev) = columns.insert(col, i).filter(|_| checked) {
                cx.push(&fp, format!("column `{col}` already used by input.fields[{prev}]"));
            }
        }
    }
    for (kind, what) in [(FieldKind::Pan, "pan"), (FieldKind::Expiry, "expiry")] {
        if !kinds.contains_key(&kind) && !input.fields.is_empty() {
            cx.push(&fields, format!("the layout needs a field of kind `{what}`"));
        }
    }
}

fn check_mag_stripe(cx: &mut Cx<'_, '_>, path: &Path, ms: &MagStripe, pin: Option<&PinConfig>, pin_broken: bool) {
    check_label(cx, &path.key("cvk"), &ms.cvk);
    let pin_len = pin.map_or(4, |p| p.length);
    // Content without sentinels and LRC: track 1 ≤ 76, track 2 ≤ 37 characters. Checked for the
    // longest card data: a 19-digit PAN and a 26-character name.
    let tracks = [
        ("track1", ms.track1.as_ref(), 76 - (1 + 19 + 1 + 26 + 1 + 4 + 3)),
        ("track2", Some(&ms.track2), 37 - (19 + 1 + 4 + 3)),
        ("chip_track2", ms.chip_track2.as_ref(), 37 - (19 + 1 + 4 + 3)),
        ("chip_track1", ms.chip_track1.as_ref(), 76 - (1 + 19 + 1 + 26 + 1 + 4 + 3)),
    ];
    for (name, layout, room) in tracks {
        let Some(layout) = layout else { continue };
        let tp = path.key(name).key("discretionary");
        let len = layout.len(pin_len);
        if len > room {
            cx.push(
                &tp,
                format!("discretionary data is {len} characters; with a 19-digit PAN only {room} fit on {name}"),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, item) in layout.discretionary.iter().enumerate() {
            let ip = tp.idx(i);
            if !matches!(item, DdItem::Pad(_)) && !seen.insert(format!("{item:?}")) {
                cx.push(&ip, "item appears twice".to_owned());
            }
            match item {
                DdItem::Invalid(other) => cx.push(
                    &ip,
                    format!(
                        "unknown discretionary-data item `{other}`, expected pvki, pvv, pin_offset, cvv, icvv or \
                         pad:<digits>"
                    ),
                ),
                DdItem::Pvki | DdItem::Pvv | DdItem::PinOffset if pin_broken => {}
                DdItem::Pvki | DdItem::Pvv if pin.map(|p| p.method) != Some(PinMethod::Pvv) => {
                    cx.push(&ip, "PVKI/PVV need [pin] with method = \"pvv\"".to_owned())
                }
                DdItem::PinOffset if pin.map(|p| p.method) != Some(PinMethod::Ibm3624) => {
                    cx.push(&ip, "pin_offset needs [pin] with method = \"ibm3624\"".to_owned())
                }
                DdItem::Icvv if !name.starts_with("chip_") => {
                    cx.push(&ip, "iCVV belongs in chip_track1/chip_track2 only; the stripe carries the CVV".to_owned())
                }
                DdItem::Cvv if name.starts_with("chip_") => cx.push(
                    &ip,
                    format!(
                        "track data on the chip carries the iCVV (`icvv`), never the stripe's CVV: whoever reads \
                         the chip could write a working stripe ({name})"
                    ),
                ),
                _ => {}
            }
        }
    }
}

fn check_pin(cx: &mut Cx<'_, '_>, path: &Path, pin: &PinConfig) {
    if !(4..=12).contains(&pin.length) {
        cx.push(&path.key("length"), format!("PIN length must be 4–12, not {}", pin.length));
    }
    match pin.method {
        PinMethod::Pvv => match &pin.pvv {
            None => cx.push(path, "method = \"pvv\" needs [pin.pvv] with pvk and pvki".to_owned()),
            Some(p) => {
                check_label(cx, &path.key("pvv").key("pvk"), &p.pvk);
                if p.pvki > 9 {
                    cx.push(&path.key("pvv").key("pvki"), "PVKI is one digit, 0–9".to_owned());
                }
            }
        },
        PinMethod::Ibm3624 => match &pin.ibm3624 {
            None => cx.push(path, "method = \"ibm3624\" needs [pin.ibm3624]".to_owned()),
            Some(p) => {
                let ip = path.key("ibm3624");
                check_label(cx, &ip.key("pvk"), &p.pvk);
                if p.decimalisation.len() != 16 || !p.decimalisation.bytes().all(|b| b.is_ascii_digit()) {
                    cx.push(&ip.key("decimalisation"), "decimalisation table must be 16 decimal digits".to_owned());
                }
                if !(1..=16).contains(&p.validation_length) {
                    cx.push(&ip.key("validation_length"), "validation data is 1–16 PAN digits".to_owned());
                }
                if p.validation_start == 0 {
                    cx.push(&ip.key("validation_start"), "positions are 1-based".to_owned());
                } else if p.validation_start - 1 + p.validation_length > 12 {
                    cx.push(
                        &ip.key("validation_start"),
                        "validation data must lie in the first 12 PAN digits (a 12-digit PAN is allowed)".to_owned(),
                    );
                }
                if !p.pad.is_ascii_hexdigit() {
                    cx.push(&ip.key("pad"), "pad must be one hex digit".to_owned());
                }
            }
        },
        PinMethod::Random => {}
    }
    if pin.method != PinMethod::Pvv && pin.pvv.is_some() {
        cx.push(&path.key("pvv"), "[pin.pvv] is set but method is not \"pvv\"".to_owned());
    }
    if pin.method != PinMethod::Ibm3624 && pin.ibm3624.is_some() {
        cx.push(&path.key("ibm3624"), "[pin.ibm3624] is set but method is not \"ibm3624\"".to_owned());
    }
    if let Some(chip) = &pin.chip {
        let cp = path.key("chip");
        if let Err(e) = parse_dgi(&chip.dgi) {
            cx.push(&cp.key("dgi"), e);
        }
        if let Err(e) = parse_dgi(&chip.try_dgi) {
            cx.push(&cp.key("try_dgi"), e);
        }
        if !(1..=15).contains(&chip.try_limit) {
            cx.push(&cp.key("try_limit"), "PIN try limit must be 1–15".to_owned());
        }
        if chip.block_format == PinBlockFormat::Iso4 {
            cx.push(
                &cp.key("block_format"),
                "the reference PIN is a 8-byte block; ISO format 4 is 16 bytes".to_owned(),
            );
        }
    }
    check_label(cx, &path.key("mailer").key("key"), &pin.mailer.key);
}

fn check_epurse(cx: &mut Cx<'_, '_>, path: &Path, a: &EpurseApplication) {
    if a.currency.len() != 3 || !a.currency.bytes().all(|b| b.is_ascii_digit()) {
        cx.push(&path.key("currency"), "currency is the ISO 4217 numeric code, 3 digits".to_owned());
    }
    if a.currency_exponent > 3 {
        cx.push(&path.key("currency_exponent"), "currency exponent is 0–3".to_owned());
    }
    if a.transaction_limit > a.balance_limit {
        cx.push(&path.key("transaction_limit"), "transaction limit exceeds the balance limit".to_owned());
    }
    if a.master_keys.is_empty() {
        cx.push(&path.key("master_keys"), "an e-purse needs at least one purse master key".to_owned());
    }
    for (name, label) in &a.master_keys {
        check_label(cx, &path.key("master_keys").key(name), label);
    }
    if let Some(s) = &a.secret {
        check_secret(cx, &path.key("secret"), s, &BTreeSet::new());
    }
}

fn check_secret(cx: &mut Cx<'_, '_>, path: &Path, s: &SecretDgis, record_dgis: &BTreeSet<u16>) -> BTreeSet<u16> {
    check_label(cx, &path.key("transport_key"), &s.transport_key);
    let mut out = BTreeSet::new();
    for (i, d) in s.dgis.iter().enumerate() {
        match parse_dgi(d) {
            Ok(v) => {
                if !out.insert(v) {
                    cx.push(&path.key("dgis").idx(i), "DGI listed twice".to_owned());
                }
                if record_dgis.contains(&v) {
                    cx.push(
                        &path.key("dgis").idx(i),
                        "record DGIs are read by terminals and cannot be secret".to_owned(),
                    );
                }
            }
            Err(e) => cx.push(&path.key("dgis").idx(i), e),
        }
    }
    out
}

const ODA_TAGS_SDA: [(Computed, &str); 4] = [
    (Computed::CaPkIndex, "8F"),
    (Computed::IssuerPkCertificate, "90"),
    (Computed::IssuerPkExponent, "9F32"),
    (Computed::SignedStaticData, "93"),
];
const ODA_TAGS_DDA: [(Computed, &str); 5] = [
    (Computed::CaPkIndex, "8F"),
    (Computed::IssuerPkCertificate, "90"),
    (Computed::IssuerPkExponent, "9F32"),
    (Computed::IccPkCertificate, "9F46"),
    (Computed::IccPkExponent, "9F47"),
];

fn check_emv(cx: &mut Cx<'_, '_>, path: &Path, a: &EmvApplication, is_cap: bool, p: &Parts) {
    // Keys.
    match (&a.keys, is_cap) {
        (Some(k), _) => {
            let kp = path.key("keys");
            check_label(cx, &kp.key("ac"), &k.ac);
            check_label(cx, &kp.key("smi"), &k.smi);
            check_label(cx, &kp.key("smc"), &k.smc);
            for (name, label) in &k.extra {
                check_label(cx, &kp.key("extra").key(name), label);
            }
        }
        (None, false) => cx.push(path, "missing [applications.keys] (IMK-AC/SMI/SMC labels)".to_owned()),
        (None, true) => {}
    }
    match (&a.cap, is_cap) {
        (Some(_), false) => {
            cx.push(&path.key("cap"), "CAP data on an application whose kind is not \"cap\"".to_owned())
        }
        (None, true) => cx.push(path, "a CAP application needs [applications.cap] with its IMK".to_owned()),
        (Some(cap), true) => {
            let cp = path.key("cap");
            match &cap.imk {
                None => cx.push(&cp, "a CAP application needs its own IMK (`imk`)".to_owned()),
                Some(l) => check_label(cx, &cp.key("imk"), l),
            }
            for (name, v) in [("iaf", &cap.iaf), ("ipb", &cap.ipb)] {
                if let Err(e) = hex_bytes(v) {
                    cx.push(&cp.key(name), e);
                }
            }
            if let Err(e) = check_dol(&cap.cdol1) {
                cx.push(&cp.key("cdol1"), e);
            }
            if !cap.shared_pin && !a.offline_pin {
                cx.push(
                    &path.key("offline_pin"),
                    "a CAP application with its own PIN needs offline_pin = true".to_owned(),
                );
            }
        }
        (None, false) => {}
    }

    // AIP.
    match hex_bytes(&a.aip) {
        Ok(b) if b.len() == 2 => {
            let sda = b[0] & 0x40 != 0;
            let dda = b[0] & 0x20 != 0;
            if (a.oda == Oda::Sda) != sda || (a.oda == Oda::Dda) != dda {
                cx.push(&path.key("aip"), "AIP byte 1 SDA/DDA bits (0x40/0x20) disagree with `oda`".to_owned());
            }
        }
        Ok(_) => cx.push(&path.key("aip"), "AIP is 2 bytes".to_owned()),
        Err(e) => cx.push(&path.key("aip"), format!("AIP {e}")),
    }

    // Tags and their sources.
    let layout = p.input.as_ref();
    let has_kind = |k: FieldKind| layout.is_none_or(|l| l.fields.iter().any(|f| f.kind == k));
    let mut tags: BTreeMap<Vec<u8>, &TagSource> = BTreeMap::new();
    for (tag, source) in &a.tags {
        let tp = path.key("tags").key(tag);
        let bytes = match check_tag(tag) {
            Ok(b) => b,
            Err(e) => {
                cx.push(&tp, e);
                continue;
            }
        };
        if tags.insert(bytes, source).is_some() {
            cx.push(&tp, "tag defined twice (spelt differently)".to_owned());
        }
        match source {
            TagSource::Field(name) => match layout.map(|l| l.fields.iter().find(|f| &f.name == name)) {
                Some(None) => cx.push(&tp.key("field"), format!("no input field named `{name}` in [input]")),
                Some(Some(f)) if f.kind.is_unique() => cx.push(
                    &tp.key("field"),
                    "this field has a special kind; use a `derived` source (pan, psn, cardholder_name, …)".to_owned(),
                ),
                _ => {}
            },
            TagSource::Constant(v) => {
                if let Err(e) = hex_bytes(v) {
                    cx.push(&tp.key("constant"), e);
                }
            }
            TagSource::Derived(d) => {
                let need = match d {
                    Derived::EffectiveYymmdd => Some((FieldKind::Effective, "effective")),
                    Derived::CardholderName => Some((FieldKind::CardholderName, "cardholder_name")),
                    Derived::ServiceCode | Derived::Track2Equivalent | Derived::Track2Discretionary => {
                        Some((FieldKind::ServiceCode, "service_code"))
                    }
                    Derived::Track1Discretionary => Some((FieldKind::CardholderName, "cardholder_name")),
                    Derived::Pan | Derived::Psn | Derived::ExpiryYymmdd => None,
                };
                if let Some((kind, what)) = need
                    && !has_kind(kind)
                {
                    cx.push(&tp.key("derived"), format!("needs an input field of kind `{what}`"));
                }
                match d {
                    _ if p.broken.contains("mag_stripe") => {}
                    Derived::Track2Equivalent | Derived::Track2Discretionary if p.mag_stripe.is_none() => cx.push(
                        &tp.key("derived"),
                        format!(
                            "{} needs [mag_stripe] (CVK for the iCVV)",
                            if *d == Derived::Track2Equivalent { "track2_equivalent" } else { "track2_discretionary" }
                        ),
                    ),
                    Derived::Track1Discretionary
                        if p.mag_stripe.as_ref().is_none_or(|m| m.chip_track1_layout().is_none()) =>
                    {
                        cx.push(
                            &tp.key("derived"),
                            "track1_discretionary needs [mag_stripe.track1] or [mag_stripe.chip_track1]".to_owned(),
                        )
                    }
                    _ => {}
                }
            }
            TagSource::Computed(c) => {
                let ok = match c {
                    Computed::SignedStaticData => a.oda == Oda::Sda,
                    Computed::IccPkCertificate | Computed::IccPkExponent | Computed::IccPkRemainder => {
                        a.oda == Oda::Dda
                    }
                    Computed::Aip | Computed::Afl => true,
                    Computed::CapIaf | Computed::CapIpb | Computed::CapCdol1 => is_cap,
                    _ => a.oda != Oda::None,
                };
                if !ok && matches!(c, Computed::CapIaf | Computed::CapIpb | Computed::CapCdol1) {
                    cx.push(&tp.key("computed"), "CAP values exist only in a kind = \"cap\" application".to_owned());
                } else if !ok {
                    cx.push(&tp.key("computed"), format!("not available with oda = {:?}", a.oda).to_lowercase());
                }
            }
        }
    }

    // ODA parameters.
    if a.oda != Oda::None {
        match &a.issuer_key {
            None => cx.push(path, "SDA/DDA need `issuer_key` (label of the issuer key pair)".to_owned()),
            Some(l) => check_label(cx, &path.key("issuer_key"), l),
        }
        match &a.ca_index {
            None => cx.push(path, "SDA/DDA need `ca_index` (tag 8F, one byte hex)".to_owned()),
            Some(c) => match hex_bytes(c) {
                Ok(b) if b.len() == 1 => {}
                _ => cx.push(&path.key("ca_index"), "CA index is one byte as hex, e.g. \"92\"".to_owned()),
            },
        }
        let required: &[(Computed, &str)] = if a.oda == Oda::Sda { &ODA_TAGS_SDA } else { &ODA_TAGS_DDA };
        for (c, tag) in required {
            if !a.tags.values().any(|s| s == &TagSource::Computed(*c)) {
                cx.push(&path.key("tags"), format!("{:?} needs tag {tag} = {{ computed = … }}", a.oda).to_uppercase());
            }
        }
    }
    match (a.oda, &a.icc_key) {
        (Oda::Dda, None) => cx.push(path, "DDA needs `icc_key = { bits = …, exponent = … }`".to_owned()),
        (Oda::Dda, Some(k)) => {
            let kp = path.key("icc_key");
            if !(1024..=1984).contains(&k.bits) || k.bits % 8 != 0 {
                cx.push(
                    &kp.key("bits"),
                    format!("ICC key size must be 1024–1984 bits, a multiple of 8, not {}", k.bits),
                );
            }
            if k.exponent != 3 && k.exponent != 65537 {
                cx.push(&kp.key("exponent"), format!("ICC public exponent must be 3 or 65537, not {}", k.exponent));
            }
        }
        (_, Some(_)) => cx.push(&path.key("icc_key"), "icc_key applies to DDA only".to_owned()),
        (_, None) => {}
    }

    // Records.
    let mut placed: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut seen_records: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    let mut record_dgis = BTreeSet::new();
    let mut any_oda_record = false;
    for (i, r) in a.records.iter().enumerate() {
        let rp = path.key("records").idx(i);
        let mut ok = true;
        if !(1..=30).contains(&r.sfi) {
            cx.push(&rp.key("sfi"), format!("SFI must be 1–30, not {}", r.sfi));
            ok = false;
        }
        if !(1..=255).contains(&r.record) {
            cx.push(&rp.key("record"), format!("record number must be 1–255, not {}", r.record));
            ok = false;
        }
        if ok {
            record_dgis.insert(r.dgi());
            if let Some(prev) = seen_records.insert((r.sfi, r.record), i) {
                cx.push(&rp, format!("SFI {} record {} is already defined by records[{prev}]", r.sfi, r.record));
            }
        }
        any_oda_record |= r.oda;
        if r.oda && a.oda == Oda::None {
            cx.push(&rp.key("oda"), "ODA record in an application with oda = \"none\"".to_owned());
        }
        if r.tags.is_empty() {
            cx.push(&rp.key("tags"), "a record needs at least one tag".to_owned());
        }
        for (j, t) in r.tags.iter().enumerate() {
            let tp = rp.key("tags").idx(j);
            match check_tag(t) {
                Err(e) => cx.push(&tp, e),
                Ok(b) => {
                    let source = tags.get(&b);
                    if source.is_none() {
                        cx.push(&tp, format!("tag {t} has no source in [applications.tags]"));
                    }
                    if r.oda
                        && matches!(
                            source,
                            Some(TagSource::Computed(Computed::SignedStaticData | Computed::IccPkCertificate))
                        )
                    {
                        cx.push(&tp, "a signature cannot sit in a record it signs (record has oda = true)".to_owned());
                    }
                    if let Some(prev) = placed.insert(b, i) {
                        cx.push(&tp, format!("tag {t} is already in records[{prev}]"));
                    }
                }
            }
        }
    }
    if a.oda != Oda::None && !any_oda_record {
        cx.push(&path.key("records"), "SDA/DDA need at least one record with oda = true".to_owned());
    }
    if a.records.is_empty() {
        cx.push(path, "an EMV application needs at least one record".to_owned());
    }

    // AFL.
    if let Some(afl) = &a.afl {
        check_afl(cx, &path.key("afl"), afl, a, &seen_records);
    }

    // Data groups and secret DGIs.
    let mut dgis = record_dgis.clone();
    for (i, g) in a.data_groups.iter().enumerate() {
        let gp = path.key("data_groups").idx(i);
        match parse_dgi(&g.dgi) {
            Ok(v) if !dgis.insert(v) => {
                cx.push(&gp.key("dgi"), "DGI already used by a record or data group".to_owned())
            }
            Ok(_) => {}
            Err(e) => cx.push(&gp.key("dgi"), e),
        }
        for (j, t) in g.tags.iter().enumerate() {
            match check_tag(t) {
                Err(e) => cx.push(&gp.key("tags").idx(j), e),
                Ok(b) if !tags.contains_key(&b) => {
                    cx.push(&gp.key("tags").idx(j), format!("tag {t} has no source in [applications.tags]"))
                }
                Ok(_) => {}
            }
        }
    }
    let secret = match &a.secret {
        Some(s) => check_secret(cx, &path.key("secret"), s, &record_dgis),
        None => {
            cx.push(path, "missing [applications.secret]: DGI 8000 (ICC master keys) is always secret".to_owned());
            BTreeSet::new()
        }
    };
    if a.secret.is_some() {
        let sp = path.key("secret").key("dgis");
        if !secret.contains(&0x8000) {
            cx.push(&sp, "DGI 8000 (ICC master keys) must be secret".to_owned());
        }
        if a.oda == Oda::Dda {
            for d in 0x8201..=0x8205u16 {
                if !secret.contains(&d) {
                    cx.push(&sp, format!("DDA: DGI {d:04X} (ICC private key CRT part) must be secret"));
                }
            }
        }
    }
    if a.offline_pin && !p.broken.contains("pin") {
        match p.pin.as_ref().map(|p| p.chip.as_ref()) {
            None => cx.push(&path.key("offline_pin"), "offline_pin needs a [pin] section".to_owned()),
            Some(None) => cx.push(&path.key("offline_pin"), "offline_pin needs [pin.chip]".to_owned()),
            Some(Some(chip)) => {
                if let Ok(d) = parse_dgi(&chip.dgi)
                    && a.secret.is_some()
                    && !secret.contains(&d)
                {
                    cx.push(
                        &path.key("secret").key("dgis"),
                        format!("the offline PIN DGI {d:04X} ([pin.chip].dgi) must be secret"),
                    );
                }
            }
        }
    }
}

fn check_afl(cx: &mut Cx<'_, '_>, path: &Path, afl: &str, a: &EmvApplication, records: &BTreeMap<(u32, u32), usize>) {
    let bytes = match hex_bytes(afl) {
        Ok(b) if !b.is_empty() && b.len() % 4 == 0 => b,
        Ok(_) => return cx.push(path, "AFL is a non-empty list of 4-byte entries".to_owned()),
        Err(e) => return cx.push(path, format!("AFL {e}")),
    };
    let mut covered: BTreeMap<(u32, u32), bool> = BTreeMap::new();
    for (n, e) in bytes.chunks(4).enumerate() {
        let sfi = u32::from(e[0] >> 3);
        let (first, last, oda) = (u32::from(e[1]), u32::from(e[2]), u32::from(e[3]));
        if e[0] & 7 != 0 || sfi == 0 || sfi > 30 {
            cx.push(path, format!("AFL entry {n}: first byte must be SFI << 3 with SFI 1–30"));
            continue;
        }
        if first == 0 || last < first || oda > last - first + 1 {
            cx.push(path, format!("AFL entry {n}: need 1 ≤ first ≤ last and ODA count ≤ number of records"));
            continue;
        }
        for rec in first..=last {
            if covered.insert((sfi, rec), rec - first < oda).is_some() {
                cx.push(path, format!("AFL names SFI {sfi} record {rec} twice"));
            }
            if !records.contains_key(&(sfi, rec)) {
                cx.push(path, format!("AFL names SFI {sfi} record {rec}, which the record layout does not define"));
            }
        }
    }
    for (i, r) in a.records.iter().enumerate() {
        match covered.get(&(r.sfi, r.record)) {
            None => cx.push(&path_up(path).key("records").idx(i), "record is not covered by the AFL".to_owned()),
            Some(&oda) if oda != r.oda => cx.push(
                &path_up(path).key("records").idx(i).key("oda"),
                format!(
                    "the AFL {} this record in the ODA static data",
                    if oda { "includes" } else { "does not include" }
                ),
            ),
            Some(_) => {}
        }
    }
}

fn path_up(p: &Path) -> Path {
    let mut q = p.clone();
    q.0.pop();
    q
}

// ---------------------------------------------------------------------------------------------
// Small parsers
// ---------------------------------------------------------------------------------------------

fn hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    if s.is_empty() {
        return Err("is empty".to_owned());
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!("must be an even number of hex digits, got {}", s.len()));
    }
    hex::decode(s).map_err(|_| "must be hex digits (0-9, A-F)".to_owned())
}

fn parse_dgi(s: &str) -> Result<u16, String> {
    match hex_bytes(s) {
        Ok(b) if b.len() == 2 => Ok(u16::from_be_bytes([b[0], b[1]])),
        _ => Err(format!("DGI must be 4 hex digits, not `{s}`")),
    }
}

/// A BER-TLV tag (1–3 bytes) as hex; returns its bytes.
fn check_tag(s: &str) -> Result<Vec<u8>, String> {
    let b = hex_bytes(s).map_err(|e| format!("tag `{s}` {e}"))?;
    tag_len(&b).and_then(|n| {
        if n == b.len() {
            Ok(b.clone())
        } else {
            Err(format!("`{s}` is not one BER-TLV tag: the tag ends after {n} byte(s)"))
        }
    })
}

/// Length of the BER-TLV tag at the start of `b`.
fn tag_len(b: &[u8]) -> Result<usize, String> {
    let Some(&first) = b.first() else { return Err("empty tag".to_owned()) };
    if first == 0x00 || first == 0xFF {
        return Err(format!("{first:02X} is not a valid first tag byte"));
    }
    if first & 0x1F != 0x1F {
        return Ok(1);
    }
    for (i, &x) in b.iter().enumerate().skip(1) {
        if i == 1 && x & 0x7F == 0 {
            return Err("a subsequent tag byte cannot start with 80 or 00 padding".to_owned());
        }
        if x & 0x80 == 0 {
            return if i + 1 > 3 { Err("tags longer than 3 bytes are not used in EMV".to_owned()) } else { Ok(i + 1) };
        }
    }
    Err("multi-byte tag is truncated (first byte ends in 1F, last byte must have bit 8 clear)".to_owned())
}

/// A data object list: tag ‖ length, repeated.
fn check_dol(s: &str) -> Result<(), String> {
    let b = hex_bytes(s)?;
    let mut i = 0;
    while i < b.len() {
        let n = tag_len(&b[i..])?;
        i += n;
        match b.get(i) {
            Some(0) => return Err(format!("DOL entry at byte {} has length 0", i - n)),
            Some(_) => i += 1,
            None => return Err("DOL ends with a tag but no length".to_owned()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: [(&str, &str); 3] = [
        ("visa-dda-credit.toml", include_str!("../profiles/visa-dda-credit.toml")),
        ("mc-cap.toml", include_str!("../profiles/mc-cap.toml")),
        ("multi-app.toml", include_str!("../profiles/multi-app.toml")),
    ];

    #[test]
    fn sample_profiles_parse_clean() {
        for (name, text) in SAMPLES {
            if let Err(e) = Profile::parse(text, name) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn sample_profiles_have_expected_shape() {
        let visa = Profile::parse(SAMPLES[0].1, "visa").expect("clean");
        let Application::Emv(app) = &visa.applications[0] else { panic!("emv first") };
        assert_eq!(app.oda, Oda::Dda);
        // SFI 1 records 1–2 (both ODA), SFI 2 record 1, SFI 3 record 1.
        assert_eq!(hex::encode_upper(app.afl_bytes()), "080102021001010018010100");
        assert!(app.is_secret(0x8010) && !app.is_secret(0x9010));
        let multi = Profile::parse(SAMPLES[2].1, "multi").expect("clean");
        let names: Vec<&str> = multi.applications.iter().map(Application::name).collect();
        assert_eq!(names, ["domestic", "international", "purse"]);
        let mc = Profile::parse(SAMPLES[1].1, "mc").expect("clean");
        assert!(
            matches!(&mc.applications[1], Application::Cap(a) if a.cap.as_ref().and_then(|c| c.imk.as_deref()) == Some("IMK-CAP-MC-TEST"))
        );
        assert_eq!(mc.input.format, InputFormat::FixedWidth);
    }

    #[test]
    fn derived_afl_splits_where_oda_records_do_not_lead() {
        let r = |sfi, record, oda| RecordSpec { sfi, record, oda, tags: vec!["5A".into()] };
        let afl = derive_afl(&[r(1, 1, true), r(1, 2, false), r(1, 3, true), r(2, 1, false), r(1, 5, false)]);
        assert_eq!(hex::encode_upper(afl), "08010201080303010805050010010100");
    }

    /// One broken profile: (base sample, text to replace, replacement, expected field path,
    /// marker whose line the error must point at, words the reason must contain).
    type Case = (usize, &'static str, &'static str, &'static str, &'static str, &'static str);

    const BROKEN: &[Case] = &[
        (0, "aid = \"A0000000031010\"", "aid = \"A00000\"", "applications[0].aid", "aid = \"A00000\"", "5–16 bytes"),
        (
            0,
            "tags = [\"57\", \"5F20\", \"9F1F\"]",
            "tags = [\"57\", \"5F20\", \"9F1F\", \"9F\"]",
            "applications[0].records[0].tags[3]",
            "\"9F1F\", \"9F\"]",
            "truncated",
        ),
        (0, "sfi = 2\n", "sfi = 31\n", "applications[0].records[2].sfi", "sfi = 31", "1–30"),
        (0, "record = 2\n", "record = 0\n", "applications[0].records[1].record", "record = 0", "1–255"),
        (0, "bits = 1152", "bits = 1000", "applications[0].icc_key.bits", "bits = 1000", "multiple of 8"),
        (0, "exponent = 65537", "exponent = 17", "applications[0].icc_key.exponent", "exponent = 17", "3 or 65537"),
        (
            0,
            "kernel = \"visa_vsdc\"\n",
            "kernel = \"visa_vsdc\"\ncolour = \"red\"\n",
            "applications[0].colour",
            "colour",
            "unknown field",
        ),
        (
            0,
            "kernel = \"visa_vsdc\"",
            "kernel = \"visa\"",
            "applications[0].kernel",
            "kernel = \"visa\"",
            "unknown variant",
        ),
        (
            0,
            "{ field = \"country\" }",
            "{ field = \"nation\" }",
            "applications[0].tags.5F28.field",
            "\"nation\"",
            "no input field",
        ),
        (
            0,
            "\"9F08\" = { constant = \"0096\" }",
            "\"9F08\" = { constant = \"0G96\" }",
            "applications[0].tags.9F08.constant",
            "0G96",
            "hex",
        ),
        (0, "cvk = \"CVK-VISA-TEST\"", "cvk = \"\"", "mag_stripe.cvk", "cvk = \"\"", "empty"),
        (0, "\"8010\", \"8201\"", "\"8201\"", "applications[0].secret.dgis", "dgis = [", "offline PIN DGI 8010"),
        (0, "sfi = 3\n", "sfi = \"three\"\n", "applications[0].records[3].sfi", "\"three\"", "invalid type"),
        (
            0,
            "\"pvki\", \"pvv\", \"cvv\", \"pad:00\"]",
            "\"pvki\", \"pvv\", \"cvv\", \"zero\"]",
            "mag_stripe.track2.discretionary[3]",
            "\"zero\"",
            "unknown discretionary",
        ),
        (0, "[pin]\nmethod = \"pvv\"", "[pin]\nmethod = \"ibm3624\"", "pin", "[pin]", "needs [pin.ibm3624]"),
        (0, "[product]", "[produce]\nname = \"x\"\n[product]", "produce", "[produce]", "unknown section"),
        (0, "kind = \"emv\"", "kind = \"emvx\"", "applications[0].kind", "\"emvx\"", "unknown application kind"),
        (0, "aip = \"3C00\"", "aip = \"7C00\"", "applications[0].aip", "aip = \"7C00\"", "disagree"),
        (
            0,
            "\"9F46\" = { computed = \"icc_pk_certificate\" }\n",
            "",
            "applications[0].records[3].tags[0]",
            "tags = [\"9F46\"",
            "no source",
        ),
        (1, "start = 20", "start = 19", "input.fields[1].start", "start = 19", "overlap"),
        (1, "length = 10", "length = 11", "input.fields[7].length", "length = 11", "past record_length"),
        (
            1,
            "afl = \"0801010110010100\"",
            "afl = \"0801010010010100\"",
            "applications[0].records[0].oda",
            "oda = true",
            "does not include",
        ),
        (
            1,
            "afl = \"0801010110010100\"",
            "afl = \"080101011001020100\"",
            "applications[0].afl",
            "afl = ",
            "4-byte entries",
        ),
        (
            1,
            "afl = \"0801010110010100\"",
            "afl = \"0801010110010200\"",
            "applications[0].afl",
            "afl = ",
            "does not define",
        ),
        (1, "imk = \"IMK-CAP-MC-TEST\"\n", "", "applications[1].cap", "[applications.cap]", "own IMK"),
        (
            1,
            "cdol1 = \"9F02069F03069F1A0295055F2A029A039C019F3704\"",
            "cdol1 = \"9F020682\"",
            "applications[1].cap.cdol1",
            "cdol1 =",
            "no length",
        ),
        (1, "pad = \"F\"", "pad = \"G\"", "pin.ibm3624.pad", "pad = \"G\"", "hex digit"),
        (
            2,
            "aid = \"A0000000421010\"",
            "aid = \"A0000000031010\"",
            "applications[1].aid",
            "aid = \"A0000000031010\"\nkernel = \"visa",
            "duplicate AID",
        ),
        (
            2,
            "transaction_limit = 3000",
            "transaction_limit = 30000",
            "applications[2].transaction_limit",
            "transaction_limit",
            "exceeds",
        ),
        (
            2,
            "name = \"branch\"",
            "name = \"pan\"",
            "input.fields[6].name",
            "name = \"pan\"\nkind = \"digits\"",
            "already used",
        ),
        (
            2,
            "name = \"purse\"",
            "name = \"domestic\"",
            "applications[2].name",
            "name = \"domestic\"\naid = \"D2",
            "already used",
        ),
        (2, "aid = \"A0000000421010\"", "aid = \"A000", "", "aid = \"A000", "invalid"),
    ];

    fn line_of(text: &str, marker: &str) -> usize {
        let at = text.find(marker).unwrap_or_else(|| panic!("marker {marker:?} not in text"));
        text[..at].matches('\n').count() + 1
    }

    #[test]
    fn broken_profiles_name_field_and_line() {
        for (n, &(base, from, to, field, marker, reason)) in BROKEN.iter().enumerate() {
            let (name, text) = SAMPLES[base];
            assert!(text.contains(from), "case {n}: {from:?} not in {name}");
            let text = text.replacen(from, to, 1);
            let errors = match Profile::parse(&text, name) {
                Ok(_) => panic!("case {n}: {to:?} parsed clean"),
                Err(e) => e.0,
            };
            let line = line_of(&text, marker);
            let hit = errors.iter().any(|e| e.field == field && e.line == line && e.reason.contains(reason));
            assert!(hit, "case {n}: want {field} at line {line} with {reason:?}, got:\n{}", ProfileErrors(errors));
            assert!(errors.iter().all(|e| e.file == name));
        }
    }

    #[test]
    fn all_problems_are_reported_not_just_the_first() {
        let text = SAMPLES[0]
            .1
            .replacen("aid = \"A0000000031010\"", "aid = \"A0\"", 1)
            .replacen("sfi = 2\n", "sfi = 0\n", 1)
            .replacen("cvk = \"CVK-VISA-TEST\"", "cvk = 5", 1)
            .replacen("length = 4\n", "length = 3\n", 1);
        let errors = Profile::parse(&text, "x.toml").expect_err("broken").0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for want in ["applications[0].aid", "applications[0].records[2].sfi", "mag_stripe.cvk", "pin.length"] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        // Sorted by position.
        assert!(errors.windows(2).all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)));
        let shown = ProfileErrors(errors).to_string();
        assert!(shown.starts_with("4 problems in profile"), "{shown}");
        assert!(shown.contains("x.toml:"), "{shown}");
    }

    #[test]
    fn one_bad_application_does_not_hide_the_next() {
        let text = SAMPLES[2].1.replacen("kernel = \"domestic\"", "kernel = \"nope\"", 1).replacen(
            "bits = 1024",
            "bits = 4096",
            1,
        );
        let errors = Profile::parse(&text, "m").expect_err("broken").0;
        assert!(errors.iter().any(|e| e.field == "applications[0].kernel"), "{errors:?}");
        assert!(errors.iter().any(|e| e.field == "applications[1].icc_key.bits"), "{errors:?}");
    }

    #[test]
    fn missing_sections_and_tag_syntax() {
        let errors = Profile::parse("[product]\nname = \"x\"\nversion = 1\n", "min").expect_err("broken").0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"input") && fields.contains(&"applications"), "{fields:?}");
        for bad in ["", "9", "00", "FF", "9F", "9F8001", "5F2000", "DF808001", "1F00"] {
            assert!(check_tag(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["5A", "9F46", "BF0C", "DF8101", "70"] {
            assert!(check_tag(good).is_ok(), "{good:?} refused");
        }
    }
}

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

use std::collections::BTreeMap;

use serde::Deserialize;

mod checks;
mod locations;
mod parse;

pub use locations::{ProfileError, ProfileErrors};

use checks::parse_dgi;

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
    /// IMK for application cryptograms (TR-31 usage `E0`).
    pub ac: String,
    /// IMK for issuer-script integrity (TR-31 usage `E2`).
    pub smi: String,
    /// IMK for issuer-script confidentiality (TR-31 usage `E1`).
    pub smc: String,
    /// Extra per-profile IMKs (e.g. `dn`, `cvc3`), name → label; TR-31 usage `E3` for `dac`, `E4` for
    /// `dn` and `idn`, `E6` for any other name.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// Secret DGIs and the transport key that protects them in the output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretDgis {
    /// Label of the transport key (KEK shared with the personalization device; TR-31 usage `D0` or
    /// `K0`).
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
    /// Label of the CAP IMK-AC (per-card key by Option A; TR-31 usage `E0`).
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
    /// Purse master keys (name → label; TR-31 usage `E6`); per-card keys are derived from them.
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
    /// Label of the CVK pair (CVV, iCVV, CVV2; TR-31 usage `C0`).
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
    /// Label of the PVK pair (TR-31 usage `V2`).
    pub pvk: String,
    /// PIN verification key index, 0–9 (usually 0–6).
    pub pvki: u8,
}

/// IBM 3624 offset parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ibm3624Params {
    /// Label of the PIN verification key (TR-31 usage `V1`).
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
    /// Label of the key the mailer PIN blocks are encrypted under (TR-31 usage `P0`).
    pub key: String,
}

impl Profile {
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const SAMPLES: [(&str, &str); 3] = [
        ("visa-dda-credit.toml", include_str!("../../profiles/visa-dda-credit.toml")),
        ("mc-cap.toml", include_str!("../../profiles/mc-cap.toml")),
        ("multi-app.toml", include_str!("../../profiles/multi-app.toml")),
    ];

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
}

//! Issuer batch files → validated card records.
//!
//! [`Records`] reads a batch file line by line from any [`BufRead`] (so files of any size stream
//! through in constant memory), splits each line per the profile's [`InputLayout`] (CSV with
//! RFC 4180 quoting, or fixed-width columns), decodes it per the layout's [`Encoding`] and
//! validates every field: Luhn and length of the PAN, dates, service code, PSN, name character
//! sets and lengths, required fields. A record either becomes a [`CardRecord`] or a
//! [`BadRecord`] listing **every** problem of that record as an [`InputError`] (file, line,
//! field, reason).
//!
//! [`Batch`] applies the profile's bad-record policy on top and keeps a [`BatchSummary`];
//! [`scan`] checks a whole file without keeping records, the pre-flight for `fail_batch`.
//!
//! Errors never carry cardholder data: a PAN is shown masked (first 6 and last 4 digits at most,
//! see [`mask_pan`]), and names and free-text values are never shown, only positions.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, Read};

use sha2::{Digest, Sha256};

use crate::profile::{
    BadRecordPolicy, DuplicatePolicy, Encoding, FieldKind, FieldSpec, InputFormat, InputLayout, NameTransliteration,
};

/// The longest line accepted, in bytes (a card record is a few hundred bytes at most).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How many errors a [`BatchSummary`] keeps; the rest are only counted.
pub const MAX_KEPT_ERRORS: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in an input file. Never contains a PAN in clear or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The file name given to the reader.
    pub file: String,
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    /// The layout field concerned, if the problem is one field's.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}:{}: {}: {}", self.file, self.line, field, self.reason),
            None => write!(f, "{}:{}: {}", self.file, self.line, self.reason),
        }
    }
}

impl std::error::Error for InputError {}

/// A record that failed validation, with all of its problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// 1-based line number.
    pub line: u64,
    /// The file cannot be read further (unreadable header, I/O error): no more records follow.
    pub fatal: bool,
    /// Every problem found in the record (at least one).
    pub errors: Vec<InputError>,
    /// The record repeats an earlier card (same PAN and PSN).
    pub duplicate: bool,
}

/// Mask a PAN for messages and logs: first 6 and last 4 digits for PANs of 16 digits or more,
/// only the last 4 for 12–15 digits, nothing for anything shorter.
pub fn mask_pan(pan: &str) -> String {
    let n = pan.chars().count();
    let keep = |s: usize, e: usize| -> String {
        pan.chars().enumerate().map(|(i, c)| if i < s || i >= n - e { c } else { '*' }).collect()
    };
    match n {
        16.. => keep(6, 4),
        12..=15 => keep(0, 4),
        _ => "*".repeat(n),
    }
}

// ---------------------------------------------------------------------------------------------
// Card records
// ---------------------------------------------------------------------------------------------

/// A validated PAN (12–19 digits, Luhn). `Debug` and `Display` show it masked. It is
/// serialized (for sealed job chunks) as its digits and checked again when deserialized.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pan(String);

impl TryFrom<String> for Pan {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Pan::parse(&s)
    }
}

impl From<Pan> for String {
    fn from(p: Pan) -> String {
        p.0
    }
}

impl Pan {
    /// Validate a PAN.
    pub fn parse(digits: &str) -> Result<Pan, String> {
        if let Some(i) = digits.bytes().position(|b| !b.is_ascii_digit()) {
            return Err(format!("PAN has a non-digit at position {}", i + 1));
        }
        if !(12..=19).contains(&digits.len()) {
            return Err(format!("PAN is {} digits, must be 12–19", digits.len()));
        }
        if !luhn_ok(digits) {
            return Err(format!("Luhn check digit is wrong for {}", mask_pan(digits)));
        }
        Ok(Pan(digits.to_owned()))
    }

    /// The digits, in clear. Handle with care.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// Number of digits (12–19).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true; present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The masked form, e.g. `476173******0010`.
    pub fn masked(&self) -> String {
        mask_pan(&self.0)
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// The Luhn check digit that completes `body` (ASCII digits), e.g. for generated test PANs.
pub fn luhn_check_digit(body: &str) -> u32 {
    (0..10).find(|d| luhn_ok(&format!("{body}{d}"))).unwrap_or(0)
}

/// Luhn (mod 10) check over a string of ASCII digits.
pub fn luhn_ok(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A `YYMM` date (years 2000–2099).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Yymm {
    /// Year within the century, 0–99.
    pub yy: u8,
    /// Month, 1–12.
    pub mm: u8,
}

impl Yymm {
    /// The current month (UTC).
    pub fn now() -> Yymm {
        let now = time::OffsetDateTime::now_utc();
        Yymm { yy: u8::try_from(now.year().rem_euclid(100)).unwrap_or(0), mm: u8::from(now.month()) }
    }

    /// Parse `YYMM` with month 01–12.
    pub fn parse(s: &str) -> Result<Yymm, String> {
        if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must be 4 digits YYMM".to_owned());
        }
        let n = |i: usize| (s.as_bytes()[i] - b'0') * 10 + (s.as_bytes()[i + 1] - b'0');
        let (yy, mm) = (n(0), n(2));
        if !(1..=12).contains(&mm) {
            return Err(format!("month {mm:02} is not 01–12"));
        }
        Ok(Yymm { yy, mm })
    }

    /// `YYMM` as on the tracks.
    pub fn yymm(&self) -> String {
        format!("{:02}{:02}", self.yy, self.mm)
    }

    /// `YYMMDD` with the last day of the month (tag `5F24`).
    pub fn last_day_yymmdd(&self) -> String {
        let leap = self.yy.is_multiple_of(4); // 2000–2099: every fourth year, 2000 included.
        let dd = match self.mm {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        format!("{:02}{:02}{dd:02}", self.yy, self.mm)
    }

    /// `YYMMDD` with the first day of the month (tag `5F25`).
    pub fn first_day_yymmdd(&self) -> String {
        format!("{:02}{:02}01", self.yy, self.mm)
    }
}

/// One validated input record. `Debug` masks the PAN and hides the names. Serializable so that a
/// job's chunks can travel sealed between nodes.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CardRecord {
    /// 1-based line number in the input file.
    pub line: u64,
    /// The PAN.
    pub pan: Pan,
    /// PAN sequence number, 0–99 (`00` when the layout has none or it is empty).
    pub psn: u8,
    /// Expiry date.
    pub expiry: Yymm,
    /// Effective date, if the layout has one.
    pub effective: Option<Yymm>,
    /// Service code (3 digits), if the layout has one.
    pub service_code: Option<String>,
    /// Cardholder name for track 1 and `5F20`.
    pub cardholder_name: Option<String>,
    /// Embossing name.
    pub embossing_name: Option<String>,
    /// The cardholder name as the issuer sent it, when transliteration changed it.
    pub original_cardholder_name: Option<String>,
    /// The embossing name as the issuer sent it, when transliteration changed it (the carrier
    /// prints this one).
    pub original_embossing_name: Option<String>,
    /// The other fields (`digits` and `text` kinds), by layout name; empty optional fields are
    /// absent.
    pub fields: BTreeMap<String, String>,
}

impl CardRecord {
    /// The PSN as two digits.
    pub fn psn_digits(&self) -> String {
        format!("{:02}", self.psn)
    }

    /// Overwrite the cardholder data in memory (PAN, names, service code, the other fields) and
    /// leave them empty. Dropping a record does this.
    pub fn wipe(&mut self) {
        use zeroize::Zeroize;
        self.pan.0.zeroize();
        self.service_code.zeroize();
        self.cardholder_name.zeroize();
        self.embossing_name.zeroize();
        self.original_cardholder_name.zeroize();
        self.original_embossing_name.zeroize();
        for v in self.fields.values_mut() {
            v.zeroize();
        }
    }

    /// A name of this record was transliterated to fit ISO 7813.
    pub fn transliterated(&self) -> bool {
        self.original_cardholder_name.is_some() || self.original_embossing_name.is_some()
    }

    /// A fingerprint of PAN + PSN, to find the same card twice without keeping PANs around
    /// (SHA-256 under a label; compared only within one process or one job's check).
    pub fn card_fingerprint(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(b"quill card fingerprint v1\0")
            .chain_update(self.pan.digits().as_bytes())
            .chain_update([self.psn])
            .finalize()
            .into()
    }
}

impl Drop for CardRecord {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl fmt::Debug for CardRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<hidden>");
        f.debug_struct("CardRecord")
            .field("line", &self.line)
            .field("pan", &self.pan)
            .field("psn", &self.psn)
            .field("expiry", &self.expiry)
            .field("effective", &self.effective)
            .field("service_code", &self.service_code)
            .field("cardholder_name", &hidden(&self.cardholder_name))
            .field("embossing_name", &hidden(&self.embossing_name))
            .field("transliterated", &self.transliterated())
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading records
// ---------------------------------------------------------------------------------------------

/// Streaming reader: an iterator of validated records or bad records, one per non-empty line.
///
/// Empty lines are skipped. A CSV header that lacks a layout column, an I/O error, or a line
/// that is not valid in the file's encoding on the header line, ends the iteration with a
/// [`BadRecord`] marked `fatal`.
pub struct Records<'p, R> {
    layout: &'p InputLayout,
    file: String,
    reader: R,
    line: u64,
    buf: Vec<u8>,
    /// CSV: for each layout field, its column index; `None` until the header is read.
    columns: Option<Vec<usize>>,
    /// CSV: number of columns a row must have.
    width: usize,
    done: bool,
    /// The current month: earlier expiries are refused unless the layout allows them.
    today: Yymm,
    /// Fingerprints of the cards read so far, with their lines (the duplicate check).
    seen: std::collections::HashMap<[u8; 32], u64>,
}

impl<'p, R: BufRead> Records<'p, R> {
    /// Read `reader` per `layout`; `file` only names the source in errors.
    pub fn new(layout: &'p InputLayout, file: &str, reader: R) -> Self {
        let columns = match (layout.format, layout.header) {
            (InputFormat::Csv, false) => Some((0..layout.fields.len()).collect()),
            (InputFormat::Csv, true) => None,
            (InputFormat::FixedWidth, _) => Some(Vec::new()),
        };
        Records {
            layout,
            file: file.to_owned(),
            reader,
            line: 0,
            buf: Vec::new(),
            columns,
            width: layout.fields.len(),
            done: false,
            today: Yymm::now(),
            seen: std::collections::HashMap::new(),
        }
    }

    /// Check expiries against `today` instead of the current month (tests, replays).
    pub fn with_today(mut self, today: Yymm) -> Self {
        self.today = today;
        self
    }

    /// Lines read so far.
    pub fn lines_read(&self) -> u64 {
        self.line
    }

    fn error(&self, field: Option<&str>, reason: impl Into<String>) -> InputError {
        InputError { file: self.file.clone(), line: self.line, field: field.map(str::to_owned), reason: reason.into() }
    }

    fn bad(&self, fatal: bool, errors: Vec<InputError>) -> BadRecord {
        BadRecord { line: self.line, fatal, errors, duplicate: false }
    }

    /// Read one line into `buf` (without the line end). `Ok(None)` at end of file; otherwise
    /// whether the line ended with a newline and whether it was too long.
    fn read_line(&mut self) -> std::io::Result<Option<(bool, bool)>> {
        self.buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = (&mut self.reader).take(limit).read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        let mut too_long = false;
        if !self.buf.ends_with(b"\n") && self.buf.len() > MAX_LINE_BYTES {
            too_long = true;
            // Skip the rest of the line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let n = (&mut self.reader).take(limit).read_until(b'\n', &mut rest)?;
                if n == 0 || rest.ends_with(b"\n") {
                    break;
                }
            }
        }
        let newline = self.buf.ends_with(b"\n");
        if newline {
            self.buf.pop();
            if self.buf.ends_with(b"\r") {
                self.buf.pop();
            }
        }
        Ok(Some((newline || too_long, too_long)))
    }

    fn decode(&self) -> Result<String, String> {
        let mut bytes = self.buf.as_slice();
        match self.layout.encoding {
            Encoding::Ascii => match bytes.iter().position(|b| !b.is_ascii()) {
                Some(i) => Err(format!("byte 0x{:02X} at byte offset {i} is not ASCII", bytes[i])),
                None => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
            },
            Encoding::Latin1 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
            Encoding::Utf8 => {
                if self.line == 1 {
                    bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
                }
                match std::str::from_utf8(bytes) {
                    Ok(s) => Ok(s.to_owned()),
                    Err(e) => {
                        let bom = self.buf.len() - bytes.len();
                        Err(format!("invalid UTF-8 at byte offset {}", e.valid_up_to() + bom))
                    }
                }
            }
        }
    }

    fn read_header(&mut self, text: &str) -> Result<(), BadRecord> {
        let titles = split_csv(text, self.layout.delimiter).map_err(|e| self.bad(true, vec![self.error(None, e)]))?;
        let titles: Vec<String> = titles.into_iter().map(|t| t.trim().to_owned()).collect();
        let mut errors = Vec::new();
        for (i, t) in titles.iter().enumerate() {
            if titles[..i].contains(t) {
                errors.push(self.error(None, format!("header names column `{t}` twice")));
            }
        }
        let mut columns = Vec::new();
        for f in &self.layout.fields {
            let title = f.column.as_deref().unwrap_or(&f.name);
            match titles.iter().position(|t| t == title) {
                Some(i) => columns.push(i),
                None => errors.push(self.error(Some(&f.name), format!("header has no column `{title}`"))),
            }
        }
        if errors.is_empty() {
            self.width = titles.len();
            self.columns = Some(columns);
            Ok(())
        } else {
            Err(self.bad(true, errors))
        }
    }

    /// Split a line into one raw value per layout field.
    fn split(&self, text: &str, newline: bool) -> Result<Vec<String>, InputError> {
        let truncated = "truncated last line (no newline at end of file)";
        match self.layout.format {
            InputFormat::Csv => {
                let cells = match split_csv(text, self.layout.delimiter) {
                    Ok(c) => c,
                    Err(e) if !newline => return Err(self.error(None, format!("{truncated}: {e}"))),
                    Err(e) => return Err(self.error(None, e)),
                };
                if cells.len() != self.width {
                    let what = format!("{} columns, expected {}", cells.len(), self.width);
                    return Err(if !newline && cells.len() < self.width {
                        self.error(None, format!("{truncated}: {what}"))
                    } else {
                        self.error(None, what)
                    });
                }
                let columns = self.columns.as_deref().unwrap_or(&[]);
                Ok(columns.iter().map(|&c| cells[c].trim().to_owned()).collect())
            }
            InputFormat::FixedWidth => {
                let chars: Vec<char> = text.chars().collect();
                let needed = match self.layout.record_length {
                    Some(len) => len,
                    None => self
                        .layout
                        .fields
                        .iter()
                        .filter(|f| f.required)
                        .map(|f| f.start.unwrap_or(1) + f.length.unwrap_or(0) - 1)
                        .max()
                        .unwrap_or(0),
                };
                if chars.len() < needed {
                    let what = format!("line is {} characters, the layout needs {needed}", chars.len());
                    return Err(self.error(None, if newline { what } else { format!("{truncated}: {what}") }));
                }
                if let Some(len) = self.layout.record_length
                    && chars.len() > len
                {
                    return Err(self.error(None, format!("line is {} characters, record_length is {len}", chars.len())));
                }
                Ok(self
                    .layout
                    .fields
                    .iter()
                    .map(|f| {
                        // Validated by Profile::parse: fixed-width fields have start ≥ 1 and length.
                        let start = f.start.unwrap_or(1) - 1;
                        let end = (start + f.length.unwrap_or(0)).min(chars.len());
                        chars
                            .get(start..end)
                            .map(|s| s.iter().collect::<String>())
                            .unwrap_or_default()
                            .trim()
                            .to_owned()
                    })
                    .collect())
            }
        }
    }

    fn record(&self, values: Vec<String>) -> Result<CardRecord, BadRecord> {
        let mut errors = Vec::new();
        let mut pan = None;
        let mut psn = 0u8;
        let mut expiry = None;
        let mut effective = None;
        let mut service_code = None;
        let mut cardholder_name = None;
        let mut embossing_name = None;
        let (mut original_cardholder_name, mut original_embossing_name) = (None, None);
        let mut fields = BTreeMap::new();
        let mode = self.layout.name_transliteration;
        for (spec, value) in self.layout.fields.iter().zip(values) {
            if value.is_empty() {
                if spec.required {
                    errors.push(self.error(Some(&spec.name), "required field is empty"));
                }
                continue;
            }
            let result = match spec.kind {
                FieldKind::Pan => Pan::parse(&value).map(|p| pan = Some(p)),
                FieldKind::Psn => parse_psn(&value).map(|p| psn = p),
                FieldKind::Expiry => Yymm::parse(&value).map(|d| expiry = Some(d)),
                FieldKind::Effective => Yymm::parse(&value).map(|d| effective = Some(d)),
                FieldKind::ServiceCode => check_service_code(&value).map(|()| service_code = Some(value)),
                FieldKind::CardholderName => name(&value, spec, "", mode).map(|n| {
                    if n != value {
                        original_cardholder_name = Some(value);
                    }
                    cardholder_name = Some(n);
                }),
                FieldKind::EmbossingName => name(&value, spec, &spec.extra_chars, mode).map(|n| {
                    if n != value {
                        original_embossing_name = Some(value);
                    }
                    embossing_name = Some(n);
                }),
                FieldKind::Digits => check_other(&value, spec, true).map(|()| {
                    fields.insert(spec.name.clone(), value);
                }),
                FieldKind::Text => check_other(&value, spec, false).map(|()| {
                    fields.insert(spec.name.clone(), value);
                }),
            };
            if let Err(reason) = result {
                errors.push(self.error(Some(&spec.name), reason));
            }
        }
        if let (Some(eff), Some(exp)) = (effective, expiry)
            && eff > exp
        {
            let name = self.field_name(FieldKind::Effective);
            errors.push(self.error(name, "effective date is after the expiry date"));
        }
        if let Some(exp) = expiry.filter(|e| *e < self.today && !self.layout.allow_expired) {
            let name = self.field_name(FieldKind::Expiry);
            let why = format!(
                "the card expired in {} (before {}); only a lab profile with `allow_expired = true` takes it",
                exp.yymm(),
                self.today.yymm()
            );
            errors.push(self.error(name, why));
        }
        match (pan, expiry) {
            (Some(pan), Some(expiry)) if errors.is_empty() => Ok(CardRecord {
                line: self.line,
                pan,
                psn,
                expiry,
                effective,
                service_code,
                cardholder_name,
                embossing_name,
                original_cardholder_name,
                original_embossing_name,
                fields,
            }),
            _ => {
                if errors.is_empty() {
                    // A layout without a PAN or expiry field is refused by Profile::parse.
                    errors.push(self.error(None, "the layout has no PAN or expiry field"));
                }
                Err(self.bad(false, errors))
            }
        }
    }

    /// The duplicate check: a card (PAN + PSN) seen on an earlier line is refused unless the
    /// layout allows repeats.
    fn unique(&mut self, r: CardRecord) -> Result<CardRecord, BadRecord> {
        if self.layout.duplicates == DuplicatePolicy::Allow {
            return Ok(r);
        }
        match self.seen.entry(r.card_fingerprint()) {
            std::collections::hash_map::Entry::Occupied(first) => {
                let why = format!(
                    "PAN {} with PSN {} is already on line {} (duplicates = {})",
                    r.pan.masked(),
                    r.psn_digits(),
                    first.get(),
                    if self.layout.duplicates == DuplicatePolicy::RefuseBatch {
                        "refuse_batch"
                    } else {
                        "refuse_record"
                    }
                );
                let name = self.field_name(FieldKind::Pan);
                let mut bad = self.bad(false, vec![self.error(name, why)]);
                bad.duplicate = true;
                Err(bad)
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(self.line);
                Ok(r)
            }
        }
    }

    fn field_name(&self, kind: FieldKind) -> Option<&str> {
        self.layout.fields.iter().find(|f| f.kind == kind).map(|f| f.name.as_str())
    }
}

impl<R: BufRead> Iterator for Records<'_, R> {
    type Item = Result<CardRecord, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let (newline, too_long) = match self.read_line() {
                Ok(Some(l)) => l,
                Ok(None) => {
                    self.done = true;
                    if self.columns.is_none() {
                        self.line += 1;
                        return Some(Err(
                            self.bad(true, vec![self.error(None, "empty file: the header line is missing")])
                        ));
                    }
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    self.line += 1;
                    return Some(Err(self.bad(true, vec![self.error(None, format!("read error: {e}"))])));
                }
            };
            self.line += 1;
            let header = self.columns.is_none();
            if too_long {
                self.done |= header;
                let reason = format!("line is longer than {MAX_LINE_BYTES} bytes");
                return Some(Err(self.bad(header, vec![self.error(None, reason)])));
            }
            if self.buf.is_empty() {
                continue;
            }
            let text = match self.decode() {
                Ok(t) => t,
                Err(e) => {
                    self.done |= header;
                    return Some(Err(self.bad(header, vec![self.error(None, e)])));
                }
            };
            if header {
                if let Err(bad) = self.read_header(&text) {
                    self.done = true;
                    return Some(Err(bad));
                }
                continue;
            }
            return Some(match self.split(&text, newline) {
                Ok(values) => self.record(values).and_then(|r| self.unique(r)),
                Err(e) => Err(self.bad(false, vec![e])),
            });
        }
    }
}

/// Split one CSV line (RFC 4180 quoting: `"a,b"`, `""` inside quotes; no line breaks inside).
fn split_csv(line: &str, delim: char) -> Result<Vec<String>, String> {
    let mut cells = Vec::new();
    let mut chars = line.chars().enumerate().peekable();
    loop {
        let mut cell = String::new();
        if chars.peek().is_some_and(|&(_, c)| c == '"') {
            let (open, _) = chars.next().unwrap_or((0, '"'));
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quote opened at column {}", open + 1)),
                    Some((_, '"')) => match chars.peek() {
                        Some(&(_, '"')) => {
                            chars.next();
                            cell.push('"');
                        }
                        Some(&(_, c)) if c == delim => break,
                        None => break,
                        Some(&(i, _)) => {
                            return Err(format!("unexpected character after a closing quote at column {}", i + 1));
                        }
                    },
                    Some((_, c)) => cell.push(c),
                }
            }
        } else {
            while let Some(&(i, c)) = chars.peek() {
                if c == delim {
                    break;
                }
                if c == '"' {
                    return Err(format!("quote inside an unquoted value at column {}", i + 1));
                }
                cell.push(c);
                chars.next();
            }
        }
        cells.push(cell);
        match chars.next() {
            Some(_) => continue, // the delimiter
            None => return Ok(cells),
        }
    }
}

fn parse_psn(s: &str) -> Result<u8, String> {
    if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("PSN must be 2 digits".to_owned());
    }
    s.parse().map_err(|_| "PSN must be 2 digits".to_owned())
}

fn check_service_code(s: &str) -> Result<(), String> {
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("service code must be 3 digits".to_owned());
    }
    if !matches!(s.as_bytes()[0], b'1' | b'2' | b'5' | b'6' | b'7' | b'9') {
        return Err(format!("service code first digit {} is not 1, 2, 5, 6, 7 or 9", char::from(s.as_bytes()[0])));
    }
    Ok(())
}

/// ISO 7813 track-1 name characters.
fn iso7813_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || matches!(c, ' ' | '/' | '.' | '-' | '\'')
}

fn check_name(s: &str, spec: &FieldSpec, extra: &str) -> Result<(), String> {
    let n = s.chars().count();
    let (min, max) = (spec.min_length.unwrap_or(2), spec.max_length.unwrap_or(26));
    if n < min || n > max {
        return Err(format!("name is {n} characters, must be {min}–{max}"));
    }
    if let Some(i) = s.chars().position(|c| !iso7813_char(c) && !extra.contains(c)) {
        let allowed = if extra.is_empty() { String::new() } else { format!(" and `{extra}`") };
        return Err(format!("character {} is not allowed (ISO 7813: A–Z, 0–9, space, / . - '{allowed})", i + 1));
    }
    Ok(())
}

/// A name field's value as the card carries it: checked for length (on what the issuer sent),
/// then, under `ascii`, uppercased and transliterated ([`transliterate`]) and cut to the field's
/// maximum; under `refuse`, taken only if it is already in the character set.
fn name(s: &str, spec: &FieldSpec, extra: &str, mode: NameTransliteration) -> Result<String, String> {
    let n = s.chars().count();
    let (min, max) = (spec.min_length.unwrap_or(2), spec.max_length.unwrap_or(26));
    if n < min || n > max {
        return Err(format!("name is {n} characters, must be {min}–{max}"));
    }
    if mode == NameTransliteration::Refuse {
        return check_name(s, spec, extra).map(|()| s.to_owned());
    }
    let mut t = transliterate(s, extra)?;
    if t.chars().count() > max {
        t = t.chars().take(max).collect::<String>().trim_end().to_owned();
    }
    if t.chars().count() < min {
        return Err(format!("name is {} characters once transliterated, must be {min}–{max}", t.chars().count()));
    }
    Ok(t)
}

/// Uppercase `s` and map it to the ISO 7813 name set (plus `extra`): letters with diacritics and
/// other scripts through `deunicode` (é→E, ß→SS, Æ→AE, Ø→O, ı→I, Ж→ZH), combining marks dropped,
/// any white space as one space, typographic punctuation to its ASCII form (’→', –→-). A
/// character with no mapping into the set is an error naming its position (never the name).
pub fn transliterate(s: &str, extra: &str) -> Result<String, String> {
    let allowed = |c: char| iso7813_char(c) || extra.contains(c);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        let upper: String = c.to_uppercase().collect();
        if upper.chars().all(allowed) {
            out.push_str(&upper);
            continue;
        }
        if c.is_whitespace() {
            out.push(' ');
            continue;
        }
        let raw = deunicode::deunicode_char(c).unwrap_or("[?]");
        let mapped = raw.trim().to_ascii_uppercase();
        let fits = if c.is_alphabetic() {
            !mapped.is_empty() && mapped.chars().all(|m| m.is_ascii_uppercase() || m == ' ')
        } else if is_combining_mark(c) {
            mapped.is_empty()
        } else {
            // Punctuation: only to punctuation of the set (no letters: a symbol is not a name).
            !mapped.is_empty() && mapped.chars().all(|m| allowed(m) && !m.is_ascii_alphanumeric())
        };
        if !fits {
            return Err(format!(
                "character {} is not allowed and has no mapping to ISO 7813 (A–Z, 0–9, space, / . - '{})",
                i + 1,
                if extra.is_empty() { String::new() } else { format!(" and `{extra}`") }
            ));
        }
        out.push_str(&mapped);
        // Syllabic scripts map one character to one syllable followed by a space (张三 → ZHANG SAN).
        if raw.ends_with(' ') && chars.peek().is_some_and(|&(_, n)| n.is_alphanumeric()) {
            out.push(' ');
        }
    }
    Ok(out)
}

/// Unicode combining diacritical marks (the blocks that decomposed input uses).
fn is_combining_mark(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

fn check_other(s: &str, spec: &FieldSpec, digits: bool) -> Result<(), String> {
    let n = s.chars().count();
    if let Some(min) = spec.min_length.filter(|&m| n < m) {
        return Err(format!("value is {n} characters, at least {min} required"));
    }
    if let Some(max) = spec.max_length.filter(|&m| n > m) {
        return Err(format!("value is {n} characters, at most {max} allowed"));
    }
    if digits {
        if let Some(i) = s.chars().position(|c| !c.is_ascii_digit()) {
            return Err(format!("character {} is not a digit", i + 1));
        }
    } else if let Some(i) = s.chars().position(char::is_control) {
        return Err(format!("character {} is a control character", i + 1));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Batches and policy
// ---------------------------------------------------------------------------------------------

/// Counts and errors of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Good records.
    pub ok: u64,
    /// Bad records.
    pub bad: u64,
    /// Errors of the bad records, in file order (at most [`MAX_KEPT_ERRORS`]).
    pub errors: Vec<InputError>,
    /// Errors beyond [`MAX_KEPT_ERRORS`], counted but not kept.
    pub errors_not_kept: u64,
    /// Reading stopped early: `fail_batch` met a bad record, a repeated card met
    /// `duplicates = "refuse_batch"`, or the file could not be read on.
    pub stopped: bool,
    /// Good records whose names were transliterated.
    pub transliterated: u64,
    /// Records refused as repeats of an earlier card (counted in `bad` too).
    pub duplicates: u64,
}

impl BatchSummary {
    /// No bad record and nothing stopped the reading.
    pub fn is_clean(&self) -> bool {
        self.bad == 0 && !self.stopped
    }

    /// The layout's policies refuse the whole batch: a bad record under `fail_batch`, a repeated
    /// card under `duplicates = "refuse_batch"`, or a file that could not be read to the end.
    pub fn refuses_batch(&self, layout: &InputLayout) -> bool {
        self.stopped
            || (self.bad > 0 && layout.on_bad_record == BadRecordPolicy::FailBatch)
            || (self.duplicates > 0 && layout.duplicates == DuplicatePolicy::RefuseBatch)
    }

    fn ok(&mut self, r: &CardRecord) {
        self.ok += 1;
        self.transliterated += u64::from(r.transliterated());
    }

    fn add(&mut self, bad: BadRecord) {
        self.bad += 1;
        self.duplicates += u64::from(bad.duplicate);
        for e in bad.errors {
            if self.errors.len() < MAX_KEPT_ERRORS {
                self.errors.push(e);
            } else {
                self.errors_not_kept += 1;
            }
        }
    }
}

/// Records under the profile's bad-record policy: yields only good records and keeps a summary.
///
/// With `skip_and_report`, bad records are counted, their errors kept, and reading goes on.
/// With `fail_batch`, the first bad record stops the iteration (`stopped`) with its errors in
/// the summary; records already yielded must then be discarded by the caller. To fail a batch
/// before producing anything, run [`scan`] first: it reads the whole file and reports all
/// errors without keeping records.
pub struct Batch<'p, R> {
    records: Records<'p, R>,
    policy: BadRecordPolicy,
    duplicates: DuplicatePolicy,
    summary: BatchSummary,
}

impl<'p, R: BufRead> Batch<'p, R> {
    /// Read `reader` per `layout`, with the layout's `on_bad_record` policy.
    pub fn new(layout: &'p InputLayout, file: &str, reader: R) -> Self {
        Batch {
            records: Records::new(layout, file, reader),
            policy: layout.on_bad_record,
            duplicates: layout.duplicates,
            summary: BatchSummary::default(),
        }
    }

    /// The summary so far (final once the iterator returned `None`).
    pub fn summary(&self) -> &BatchSummary {
        &self.summary
    }

    /// The summary, consuming the batch.
    pub fn into_summary(self) -> BatchSummary {
        self.summary
    }
}

impl<R: BufRead> Iterator for Batch<'_, R> {
    type Item = CardRecord;

    fn next(&mut self) -> Option<CardRecord> {
        if self.summary.stopped {
            return None;
        }
        loop {
            match self.records.next()? {
                Ok(r) => {
                    self.summary.ok(&r);
                    return Some(r);
                }
                Err(bad) => {
                    let stop = bad.fatal
                        || self.policy == BadRecordPolicy::FailBatch
                        || (bad.duplicate && self.duplicates == DuplicatePolicy::RefuseBatch);
                    self.summary.add(bad);
                    if stop {
                        self.summary.stopped = true;
                        return None;
                    }
                }
            }
        }
    }
}

/// Check a whole file without keeping records: every bad record is reported (up to
/// [`MAX_KEPT_ERRORS`] errors), whatever the policy. `stopped` is set only if the file could not
/// be read to the end.
pub fn scan<R: BufRead>(layout: &InputLayout, file: &str, reader: R) -> BatchSummary {
    let mut summary = BatchSummary::default();
    for item in Records::new(layout, file, reader) {
        match item {
            Ok(r) => summary.ok(&r),
            Err(bad) => {
                summary.stopped |= bad.fatal;
                summary.add(bad);
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use std::io::BufReader;

    fn profile(name: &str) -> Profile {
        let text = match name {
            "visa" => include_str!("../profiles/visa-dda-credit.toml"),
            "mc" => include_str!("../profiles/mc-cap.toml"),
            _ => include_str!("../profiles/multi-app.toml"),
        };
        Profile::parse(text, name).expect("sample profile")
    }

    fn read_all(layout: &InputLayout, bytes: &[u8]) -> Vec<Result<CardRecord, BadRecord>> {
        Records::new(layout, "in.csv", bytes).collect()
    }

    const VISA_HEADER: &str = "PAN,PSN,EXPIRY,EFFECTIVE,SERVICE_CODE,TRACK_NAME,EMBOSS_NAME,COUNTRY\n";

    #[test]
    fn sample_inputs_parse_clean() {
        let cases: [(&str, &[u8], u64); 3] = [
            ("visa", include_bytes!("../samples/visa-dda-credit.csv"), 4),
            ("mc", include_bytes!("../samples/mc-cap.txt"), 3),
            ("multi", include_bytes!("../samples/multi-app.csv"), 3),
        ];
        for (name, bytes, count) in cases {
            let p = profile(name);
            let mut batch = Batch::new(&p.input, name, bytes);
            let records: Vec<CardRecord> = batch.by_ref().collect();
            let summary = batch.into_summary();
            assert!(summary.is_clean(), "{name}: {:?}", summary.errors);
            assert_eq!(records.len() as u64, count, "{name}");
            assert!(records.iter().any(|r| r.pan.len() == 17), "{name}: a 17-digit PAN");
        }
        let p = profile("visa");
        let r: Vec<_> = Batch::new(&p.input, "v", &include_bytes!("../samples/visa-dda-credit.csv")[..]).collect();
        assert_eq!(r[0].pan.digits(), "4761739001010010");
        assert_eq!(r[0].psn, 1);
        assert_eq!(r[1].psn, 0, "empty optional PSN is 00");
        assert_eq!(r[0].expiry.last_day_yymmdd(), "281231");
        assert_eq!(r[0].effective.map(|e| e.first_day_yymmdd()).as_deref(), Some("251201"));
        assert_eq!(r[2].embossing_name.as_deref(), Some("SMITH-JONES, ALEX"), "quoted CSV value");
        assert_eq!(r[0].fields.get("country").map(String::as_str), Some("840"));
        assert_eq!(r[0].line, 2);
        let debug = format!("{:?}", r[0]);
        assert!(!debug.contains("4761739001010010") && !debug.contains("CARDHOLDER"), "{debug}");
        assert!(debug.contains("476173******0010"), "{debug}");
    }

    /// (the data line, expected field, words the reason must contain)
    const BAD_LINES: &[(&str, Option<&str>, &str)] = &[
        (
            "4761739001010011,01,2812,2512,201,TEST/CARD,TEST CARD,840",
            Some("pan"),
            "Luhn check digit is wrong for 476173******0011",
        ),
        ("47617390010,01,2812,2512,201,TEST/CARD,TEST CARD,840", Some("pan"), "11 digits, must be 12–19"),
        ("47617390010100100000,01,2812,2512,201,TEST/CARD,TEST CARD,840", Some("pan"), "20 digits"),
        ("47617390010100A0,01,2812,2512,201,TEST/CARD,TEST CARD,840", Some("pan"), "non-digit at position 15"),
        ("4761739001010010,01,2813,2512,201,TEST/CARD,TEST CARD,840", Some("expiry"), "month 13 is not 01–12"),
        ("4761739001010010,01,281,2512,201,TEST/CARD,TEST CARD,840", Some("expiry"), "4 digits YYMM"),
        ("4761739001010010,01,2812,2500,201,TEST/CARD,TEST CARD,840", Some("effective"), "month 00"),
        ("4761739001010010,01,2812,2901,201,TEST/CARD,TEST CARD,840", Some("effective"), "after the expiry"),
        ("4761739001010010,01,2812,2512,301,TEST/CARD,TEST CARD,840", Some("service_code"), "first digit 3"),
        ("4761739001010010,01,2812,2512,20,TEST/CARD,TEST CARD,840", Some("service_code"), "3 digits"),
        ("4761739001010010,1,2812,2512,201,TEST/CARD,TEST CARD,840", Some("psn"), "2 digits"),
        (
            "4761739001010010,01,2812,2512,201,#TEST/CARD,TEST CARD,840",
            Some("cardholder_name"),
            "character 1 is not allowed",
        ),
        ("4761739001010010,01,2112,2012,201,TEST/CARD,TEST CARD,840", Some("expiry"), "the card expired in 2112"),
        (
            "4761739001010010,01,2812,2512,201,ABCDEFGHIJKLMNOPQRSTUVWXYZA,TEST CARD,840",
            Some("cardholder_name"),
            "27 characters, must be 2–26",
        ),
        ("4761739001010010,01,2812,2512,201,A,TEST CARD,840", Some("cardholder_name"), "1 characters"),
        (
            "4761739001010010,01,2812,2512,201,TEST/CARD,TEST@CARD,840",
            Some("embossing_name"),
            "character 5 is not allowed",
        ),
        (
            "4761739001010010,01,2812,2512,201,TEST/CARD,ABCDEFGHIJKLMNOPQRSTUVWXY,840",
            Some("embossing_name"),
            "must be 2–24",
        ),
        ("4761739001010010,01,,2512,201,TEST/CARD,TEST CARD,840", Some("expiry"), "required field is empty"),
        ("4761739001010010,01,2812,2512,201,TEST/CARD,TEST CARD,84A", Some("country"), "character 3 is not a digit"),
        ("4761739001010010,01,2812,2512,201,TEST/CARD,TEST CARD,8400", Some("country"), "at most 3"),
        ("4761739001010010,01,2812,2512,201,TEST/CARD,TEST CARD", None, "7 columns, expected 8"),
        ("4761739001010010,01,2812,2512,201,TEST/CARD,TEST CARD,840,9", None, "9 columns, expected 8"),
        ("4761739001010010,01,2812,2512,201,TEST/CARD,\"TEST CARD,840", None, "unterminated quote opened at column 45"),
        (
            "4761739001010010,01,2812,2512,201,TEST/CARD,TEST \"CARD\",840",
            None,
            "quote inside an unquoted value at column 50",
        ),
        ("4761739001010010,01,2812,2512,201,TEST/CARD,\"TEST\"CARD,840", None, "after a closing quote at column 51"),
    ];

    #[test]
    fn broken_lines_name_field_and_reason() {
        let p = profile("visa");
        for (n, &(line, field, reason)) in BAD_LINES.iter().enumerate() {
            let text = format!("{VISA_HEADER}{line}\n");
            let items = read_all(&p.input, text.as_bytes());
            assert_eq!(items.len(), 1, "case {n}");
            let bad = items.into_iter().next().and_then(Result::err).unwrap_or_else(|| panic!("case {n} accepted"));
            assert_eq!(bad.line, 2, "case {n}");
            assert!(!bad.fatal, "case {n}");
            let hit =
                bad.errors.iter().any(|e| e.field.as_deref() == field && e.reason.contains(reason) && e.line == 2);
            assert!(hit, "case {n}: want {field:?} / {reason:?}, got {:?}", bad.errors);
            for e in &bad.errors {
                let shown = e.to_string();
                assert!(shown.starts_with("in.csv:2: "), "{shown}");
                for secret in ["4761739001010010", "4761739001010011", "47617390010100100000", "TEST/CARD", "TEST CARD"]
                {
                    assert!(!shown.contains(secret), "case {n} leaks {secret}: {shown}");
                }
            }
        }
    }

    #[test]
    fn every_problem_of_a_record_is_reported() {
        let p = profile("visa");
        let text = format!("{VISA_HEADER}4761739001010011,1,2813,2512,301,x,TEST CARD,840\n");
        let bad = read_all(&p.input, text.as_bytes()).remove(0).expect_err("bad");
        let fields: Vec<_> = bad.errors.iter().filter_map(|e| e.field.as_deref()).collect();
        assert_eq!(fields, ["pan", "psn", "expiry", "service_code", "cardholder_name"]);
    }

    #[test]
    fn truncated_last_line_is_detected() {
        let p = profile("visa");
        let good = "4761739001010010,01,2812,2512,201,TEST/CARD,TEST CARD,840";
        // A complete last line without newline is fine.
        let ok = read_all(&p.input, format!("{VISA_HEADER}{good}").as_bytes());
        assert!(ok[0].is_ok());
        for cut in [good.len() - 4, 30, 46] {
            let text = format!("{VISA_HEADER}{good}\n{}", &good[..cut]);
            let items = read_all(&p.input, text.as_bytes());
            let bad = items[1].as_ref().expect_err("truncated");
            assert_eq!(bad.line, 3);
            assert!(bad.errors[0].reason.starts_with("truncated last line"), "{:?}", bad.errors);
        }
        // Cut inside a quoted value.
        let text = format!("{VISA_HEADER}4761739001010010,01,2812,2512,201,TEST/CARD,\"TEST");
        let bad = read_all(&p.input, text.as_bytes()).remove(0).expect_err("truncated");
        assert!(bad.errors[0].reason.starts_with("truncated last line"), "{:?}", bad.errors);

        let mc = profile("mc");
        let line =
            std::str::from_utf8(include_bytes!("../samples/mc-cap.txt")).expect("ascii").lines().next().unwrap_or("");
        let text = format!("{line}\n{}", &line[..60]);
        let items = read_all(&mc.input, text.as_bytes());
        assert!(items[0].is_ok());
        let bad = items[1].as_ref().expect_err("truncated");
        assert_eq!(
            bad.errors[0].reason,
            "truncated last line (no newline at end of file): line is 60 characters, the layout needs 94"
        );
        // Short but with a newline: an ordinary error.
        let text = format!("{}\n", &line[..60]);
        let bad = read_all(&mc.input, text.as_bytes()).remove(0).expect_err("short");
        assert_eq!(bad.errors[0].reason, "line is 60 characters, the layout needs 94");
    }

    #[test]
    fn encodings() {
        // ASCII file with a Latin-1 byte.
        let p = profile("visa");
        let mut bytes = VISA_HEADER.as_bytes().to_vec();
        bytes.extend_from_slice(b"4761739001010010,01,2812,2512,201,TEST/CARD,J\xC9R\xD4ME,840\n");
        let bad = read_all(&p.input, &bytes).remove(0).expect_err("not ascii");
        assert_eq!(bad.errors[0].reason, "byte 0xC9 at byte offset 45 is not ASCII");
        assert_eq!((bad.line, bad.errors[0].field.as_deref()), (2, None));

        // UTF-8 file: invalid sequence, then a valid accented name (refused by the charset, not
        // the decoder), and a BOM on the first line is ignored.
        let mut m = profile("multi");
        m.input.duplicates = DuplicatePolicy::Allow; // one card, three lines
        let mut bytes = b"\xEF\xBB\xBF4970100000000014;00;2810;201;MARTIN/CLAIRE;CLAIRE MARTIN;75001\n".to_vec();
        bytes.extend_from_slice(b"4970100000000014;00;2810;201;MARTIN/CLAIRE;CLAIRE \xC3MARTIN;75001\n");
        bytes.extend_from_slice("4970100000000014;00;2810;201;MARTIN/CLAIRE;CLAIRE MARTÍN;75001\n".as_bytes());
        let items = read_all(&m.input, &bytes);
        assert!(items[0].is_ok(), "{:?}", items[0]);
        let bad = items[1].as_ref().expect_err("invalid utf-8");
        assert_eq!(bad.errors[0].reason, "invalid UTF-8 at byte offset 50");
        assert_eq!(bad.line, 2);
        // Accents are transliterated for the card (ascii, the default); the carrier keeps them.
        let r = items[2].as_ref().expect("transliterated");
        assert_eq!(r.embossing_name.as_deref(), Some("CLAIRE MARTIN"));
        assert_eq!(r.original_embossing_name.as_deref(), Some("CLAIRE MARTÍN"));
        assert!(r.transliterated() && r.original_cardholder_name.is_none());
        // … and refused under `refuse`.
        let mut strict = m.clone();
        strict.input.name_transliteration = NameTransliteration::Refuse;
        let items = read_all(&strict.input, &bytes);
        let bad = items[2].as_ref().expect_err("charset");
        assert_eq!(bad.errors[0].field.as_deref(), Some("embossing_name"));
        assert!(bad.errors[0].reason.contains("character 12 is not allowed"), "{:?}", bad.errors);

        // Latin-1 file: every byte decodes; positions count characters.
        let mc = profile("mc");
        let line =
            std::str::from_utf8(include_bytes!("../samples/mc-cap.txt")).expect("ascii").lines().next().unwrap_or("");
        let mut bytes = line.as_bytes().to_vec();
        bytes[58] = 0xC9; // first character of the embossing name
        bytes.push(b'\n');
        let r = read_all(&mc.input, &bytes).remove(0).expect("É transliterated");
        assert_eq!(r.embossing_name.as_deref(), Some("ERIKA MUSTERMANN"));
        assert_eq!(r.original_embossing_name.as_deref(), Some("ÉRIKA MUSTERMANN"));
        let mut strict = mc.clone();
        strict.input.name_transliteration = NameTransliteration::Refuse;
        let bad = read_all(&strict.input, &bytes).remove(0).expect_err("charset");
        assert_eq!(bad.errors[0].field.as_deref(), Some("embossing_name"));
        assert!(bad.errors[0].reason.contains("character 1 is not allowed"));
    }

    #[test]
    fn names_are_transliterated_by_a_documented_rule() {
        let cases = [
            ("García/José", "GARCIA/JOSE"),
            ("MÜLLER/JÖRG", "MULLER/JORG"),
            ("Lefèvre", "LEFEVRE"),
            ("Straße/Åse", "STRASSE/ASE"),
            ("Ærø/Bjørn", "AERO/BJORN"),
            ("Yılmaz/Işıl Çağrı", "YILMAZ/ISIL CAGRI"),
            ("Nguyễn/Thị Ánh", "NGUYEN/THI ANH"),
            ("O\u{2019}Brien/Seán", "O'BRIEN/SEAN"),
            ("Łukasz Wąs", "LUKASZ WAS"),
            ("Zoe\u{0301} Dupont", "ZOE DUPONT"), // decomposed accent: the mark is dropped
            ("smith\u{00A0}jones", "SMITH JONES"),
            ("张/三", "ZHANG/SAN"),
        ];
        for (sent, want) in cases {
            assert_eq!(transliterate(sent, "").as_deref(), Ok(want), "{sent}");
        }
        for (sent, pos) in [("SMITH☺", 6), ("A&B", 2), ("TEST#1", 5), ("X€Y", 2)] {
            let e = transliterate(sent, "").expect_err(sent);
            assert!(e.starts_with(&format!("character {pos} is not allowed")), "{sent}: {e}");
            assert!(!e.contains(sent), "the error shows no name: {e}");
        }
        assert_eq!(transliterate("A&B", "&").as_deref(), Ok("A&B"), "extra_chars of an embossing field");
        // A mapping that makes the name longer than the field's maximum is cut to it.
        let spec = FieldSpec {
            name: "n".into(),
            kind: FieldKind::CardholderName,
            column: None,
            start: None,
            length: None,
            required: true,
            min_length: None,
            max_length: Some(10),
            extra_chars: String::new(),
        };
        assert_eq!(name("Weiß/Straß", &spec, "", NameTransliteration::Ascii).as_deref(), Ok("WEISS/STRA"));
        assert_eq!(
            name("ßbcdefgh i", &spec, "", NameTransliteration::Ascii).as_deref(),
            Ok("SSBCDEFGH"),
            "no trailing space"
        );
        assert!(name("Weiß/Straß", &spec, "", NameTransliteration::Refuse).is_err());
        assert!(name("ABCDEFGHIJK", &spec, "", NameTransliteration::Ascii).is_err(), "too long as sent: refused");
    }

    #[test]
    fn repeated_cards_follow_the_duplicates_policy() {
        let a = "4761739001010010,01,2812,2512,201,TEST/CARD,TEST CARD,840\n";
        let other_psn = "4761739001010010,02,2812,2512,201,TEST/CARD,TEST CARD,840\n";
        let text = format!("{VISA_HEADER}{a}{other_psn}{a}");
        let mut p = profile("visa");
        p.input.on_bad_record = BadRecordPolicy::SkipAndReport;
        assert_eq!(p.input.duplicates, DuplicatePolicy::RefuseRecord, "the default");
        let mut batch = Batch::new(&p.input, "f", text.as_bytes());
        assert_eq!(batch.by_ref().map(|r| r.line).collect::<Vec<_>>(), [2, 3]);
        let s = batch.into_summary();
        assert_eq!((s.ok, s.bad, s.duplicates, s.stopped), (2, 1, 1, false));
        assert!(!s.refuses_batch(&p.input));
        let e = &s.errors[0];
        assert_eq!((e.line, e.field.as_deref()), (4, Some("pan")));
        assert!(e.reason.contains("476173******0010 with PSN 01 is already on line 2"), "{e}");
        assert!(!e.to_string().contains("4761739001010010"));

        p.input.duplicates = DuplicatePolicy::RefuseBatch;
        let s = scan(&p.input, "f", text.as_bytes());
        assert!(s.refuses_batch(&p.input), "{s:?}");
        let mut batch = Batch::new(&p.input, "f", text.as_bytes());
        assert_eq!(batch.by_ref().count(), 2);
        assert!(batch.into_summary().stopped);

        p.input.duplicates = DuplicatePolicy::Allow;
        let s = scan(&p.input, "f", text.as_bytes());
        assert_eq!((s.ok, s.bad), (3, 0));
    }

    #[test]
    fn a_record_wipes_its_cardholder_data() {
        let p = profile("visa");
        let mut r: Vec<CardRecord> =
            Batch::new(&p.input, "v", &include_bytes!("../samples/visa-dda-credit.csv")[..]).collect();
        let r = &mut r[0];
        assert!(!r.pan.digits().is_empty() && r.cardholder_name.is_some() && !r.fields.is_empty());
        r.wipe();
        assert!(r.pan.digits().is_empty() && r.cardholder_name.is_none() && r.embossing_name.is_none());
        assert!(r.service_code.is_none() && r.fields.values().all(String::is_empty));
    }

    #[test]
    fn expired_cards_are_refused_unless_allowed() {
        let text = format!("{VISA_HEADER}4761739001010010,01,2811,2501,201,TEST/CARD,TEST CARD,840\n");
        let mut p = profile("visa");
        let at = |p: &Profile, yy, mm| {
            Records::new(&p.input, "f", text.as_bytes()).with_today(Yymm { yy, mm }).next().expect("one record")
        };
        assert!(at(&p, 28, 11).is_ok(), "valid through its expiry month");
        let bad = at(&p, 28, 12).expect_err("expired");
        assert_eq!(bad.errors[0].field.as_deref(), Some("expiry"));
        assert!(bad.errors[0].reason.contains("expired in 2811 (before 2812)"), "{:?}", bad.errors);
        p.input.allow_expired = true;
        assert!(at(&p, 28, 12).is_ok());
    }

    #[test]
    fn header_problems_are_fatal() {
        let p = profile("visa");
        let text = "PAN,PSN,EXPIRY,EFFECTIVE,SERVICE_CODE,NAME,EMBOSS_NAME,COUNTRY\n4761739001010010\n";
        let items = read_all(&p.input, text.as_bytes());
        assert_eq!(items.len(), 1);
        let bad = items[0].as_ref().expect_err("fatal");
        assert!(bad.fatal);
        assert_eq!(bad.errors[0].field.as_deref(), Some("cardholder_name"));
        assert_eq!(bad.errors[0].reason, "header has no column `TRACK_NAME`");
        let empty = read_all(&p.input, b"");
        assert!(empty[0].as_ref().is_err_and(|b| b.fatal && b.errors[0].reason.contains("header line is missing")));
        // Columns in another order and extra columns are fine; blank lines are skipped.
        let text = "COUNTRY,EXTRA,PAN,PSN,EXPIRY,EFFECTIVE,SERVICE_CODE,TRACK_NAME,EMBOSS_NAME\r\n\r\n\
                    840,x,4761739001010010,01,2812,2512,201,TEST/CARD,TEST CARD\r\n";
        let items = read_all(&p.input, text.as_bytes());
        let r = items[0].as_ref().expect("good");
        assert_eq!((r.line, r.fields.get("country").map(String::as_str)), (3, Some("840")));
    }

    #[test]
    fn policies() {
        let good = "4761739001010010,01,2812,2512,201,TEST/CARD,TEST CARD,840\n";
        let bad = "4761739001010011,01,2812,2512,201,TEST/CARD,TEST CARD,840\n";
        let text = format!("{VISA_HEADER}{good}{bad}{good}{bad}{good}");

        let mut p = profile("visa");
        p.input.duplicates = DuplicatePolicy::Allow; // the same good record three times
        assert_eq!(p.input.on_bad_record, BadRecordPolicy::FailBatch);
        let mut batch = Batch::new(&p.input, "f", text.as_bytes());
        assert_eq!(batch.by_ref().count(), 1);
        let s = batch.into_summary();
        assert!(s.stopped && !s.is_clean());
        assert_eq!((s.ok, s.bad, s.errors.len(), s.errors[0].line), (1, 1, 1, 3));

        let all = scan(&p.input, "f", text.as_bytes());
        assert_eq!((all.ok, all.bad, all.stopped), (3, 2, false));
        assert_eq!(all.errors.iter().map(|e| e.line).collect::<Vec<_>>(), [3, 5]);

        p.input.on_bad_record = BadRecordPolicy::SkipAndReport;
        let mut batch = Batch::new(&p.input, "f", text.as_bytes());
        let lines: Vec<u64> = batch.by_ref().map(|r| r.line).collect();
        assert_eq!(lines, [2, 4, 6]);
        let s = batch.into_summary();
        assert_eq!((s.ok, s.bad, s.stopped), (3, 2, false));
        assert!(s.errors.iter().all(|e| e.field.as_deref() == Some("pan") && e.reason.contains("476173******0011")));
    }

    #[test]
    fn masking() {
        assert_eq!(mask_pan("4761739001010010"), "476173******0010");
        assert_eq!(mask_pan("47617390010100304"), "476173*******0304");
        assert_eq!(mask_pan("476173900101"), "********0101");
        assert_eq!(mask_pan("12345"), "*****");
        assert!(luhn_ok("4761739001010010") && !luhn_ok("4761739001010011"));
        assert_eq!(Yymm::parse("2802").map(|d| d.last_day_yymmdd()), Ok("280229".to_owned()));
        assert_eq!(Yymm::parse("2702").map(|d| d.last_day_yymmdd()), Ok("270228".to_owned()));
    }

    /// Generates a large CSV batch on the fly, so nothing the size of the file is ever held.
    struct Generated {
        next: u64,
        total: u64,
        chunk: Vec<u8>,
        pos: usize,
    }

    impl Read for Generated {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.pos == self.chunk.len() {
                if self.next > self.total {
                    return Ok(0);
                }
                self.chunk.clear();
                self.pos = 0;
                if self.next == 0 {
                    self.chunk.extend_from_slice(VISA_HEADER.as_bytes());
                } else {
                    // Body 476173 + 9 digits, then the Luhn digit; every 1000th line is broken.
                    let body = format!("476173{:09}", self.next);
                    let check = (0..10u8).find(|d| luhn_ok(&format!("{body}{d}"))).unwrap_or(0);
                    let check = if self.next.is_multiple_of(1000) { (check + 1) % 10 } else { check };
                    let line = format!("{body}{check},00,2812,2512,201,TEST/CARD {},TEST CARD,840\n", self.next % 97);
                    self.chunk.extend_from_slice(line.as_bytes());
                }
                self.next += 1;
            }
            let n = out.len().min(self.chunk.len() - self.pos);
            out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn large_input_streams() {
        let mut p = profile("visa");
        p.input.on_bad_record = BadRecordPolicy::SkipAndReport;
        let reader = BufReader::new(Generated { next: 0, total: 100_000, chunk: Vec::new(), pos: 0 });
        let mut batch = Batch::new(&p.input, "big.csv", reader);
        let mut count = 0u64;
        for r in batch.by_ref() {
            assert_eq!(r.pan.len(), 16);
            count += 1;
        }
        let s = batch.into_summary();
        assert_eq!((count, s.ok, s.bad, s.errors.len()), (99_900, 99_900, 100, 100));
        assert!(!s.stopped);
    }
}

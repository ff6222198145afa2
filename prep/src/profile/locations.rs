//! Where a problem is: field paths in the document, the span a path points at, the line and
//! column of a span, and the errors that carry them.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

#[cfg(doc)]
use super::Profile;

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
// Field paths and locations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A field path inside the document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Path(Vec<Seg>);

impl Path {
    pub(super) fn root() -> Path {
        Path(Vec::new())
    }

    pub(super) fn key(&self, k: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    pub(super) fn idx(&self, i: usize) -> Path {
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

pub(super) struct Cx<'a, 'i> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
    pub(super) root: &'a Spanned<DeTable<'i>>,
    pub(super) errors: Vec<ProfileError>,
}

impl Cx<'_, '_> {
    pub(super) fn push_at(&mut self, span: Range<usize>, field: String, reason: String) {
        let start = span.start.min(self.text.len());
        let before = self.text.get(..start).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.errors.push(ProfileError { file: self.file.to_owned(), line, column, field, reason });
    }

    pub(super) fn push(&mut self, path: &Path, reason: String) {
        let span = locate(self.root, path);
        self.push_at(span, path.to_string(), reason);
    }

    pub(super) fn serde_error(&mut self, node: &Spanned<DeValue<'_>>, base: &Path, e: toml::de::Error) {
        let span = e.span().unwrap_or_else(|| node.span());
        let path = path_of(node, base, &span);
        self.push_at(span, path.to_string(), e.message().to_owned());
    }

    pub(super) fn finish(mut self) -> ProfileErrors {
        self.errors.sort_by_key(|a| (a.line, a.column));
        self.errors.dedup();
        ProfileErrors(self.errors)
    }
}

pub(super) fn path_up(p: &Path) -> Path {
    let mut q = p.clone();
    q.0.pop();
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use crate::profile::tests::SAMPLES;

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
}

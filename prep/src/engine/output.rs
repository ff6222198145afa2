//! The output streams (`docs/output-format.md`, version 1).
//!
//! Three streams per batch, each a file of JSON lines: `cards` (one [`CardOutput`] per card, in
//! input order), `pin-mailers` ([`MailerRecord`]s) and `carriers` ([`CarrierRecord`]s). Each file
//! starts with a [`Header`] line and ends with a trailer line
//! `{"end":{"records":N,"sha256":H,"mac":M}}` where `H` is SHA-256 over every byte before the
//! trailer line and `M` = HMAC-SHA-256(output MAC key, H), computed inside the HSM. A reader
//! recomputes `H`, asks the HSM (or, for TEST keys, anyone) for the HMAC and compares; a file
//! cut short has no trailer and is refused.
//!
//! [`gppro_dgis`] writes a card as GlobalPlatformPro's `DGIxxxx=hex` lines for lab cards.

use std::io::Write;

use quill_hsm::{Hsm, HsmError, WrappedKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CardOutput, KeyRef};

/// Format name in every header.
pub const FORMAT: &str = "quill-prep-output";
/// Format version this code writes and reads.
pub const VERSION: u32 = 1;

/// The three streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    /// Chip, tracks and embossing data (`cards.jsonl`).
    Cards,
    /// PIN mailers (`pin-mailers.jsonl`).
    PinMailers,
    /// Card carriers (`carriers.jsonl`).
    Carriers,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 3] = [Stream::Cards, Stream::PinMailers, Stream::Carriers];

    /// The file name of the stream.
    pub fn file_name(self) -> &'static str {
        match self {
            Stream::Cards => "cards.jsonl",
            Stream::PinMailers => "pin-mailers.jsonl",
            Stream::Carriers => "carriers.jsonl",
        }
    }
}

/// The first line of every stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// Which stream.
    pub stream: Stream,
    /// Profile (product) name.
    pub product: String,
    /// Profile version.
    pub product_version: u32,
    /// Batch or job identifier.
    pub batch: String,
    /// The key the trailer MAC is made with.
    pub mac_key: KeyRef,
    /// The data was prepared with the documented TEST keys (never for real cards).
    pub test_keys: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Trailer {
    end: End,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct End {
    records: u64,
    sha256: String,
    mac: String,
}

/// Writing or checking a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Writing failed.
    #[error("{stream}: write failed: {source}")]
    Io {
        /// The stream's file name.
        stream: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HSM could not make or check the MAC.
    #[error("{stream}: MAC: {source}")]
    Hsm {
        /// The stream's file name.
        stream: &'static str,
        /// The HSM error.
        #[source]
        source: HsmError,
    },
    /// A stream does not have the documented form, or its MAC does not verify.
    #[error("{stream}: line {line}: {reason}")]
    Invalid {
        /// The stream's file name (or what the caller called it).
        stream: String,
        /// 1-based line.
        line: usize,
        /// Why.
        reason: String,
    },
}

/// Writes one stream: header, records, trailer with the MAC.
pub struct StreamWriter<W: Write> {
    out: W,
    hash: Sha256,
    records: u64,
    stream: Stream,
}

impl<W: Write> StreamWriter<W> {
    /// Start a stream: writes the header line.
    pub fn new(out: W, header: &Header) -> Result<Self, OutputError> {
        let mut w = Self { out, hash: Sha256::new(), records: 0, stream: header.stream };
        w.line(header)?;
        Ok(w)
    }

    fn line<T: Serialize>(&mut self, v: &T) -> Result<(), OutputError> {
        let mut bytes = serde_json::to_vec(v).map_err(|e| self.io(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.out.write_all(&bytes).map_err(|e| self.io(e))
    }

    fn io(&self, source: std::io::Error) -> OutputError {
        OutputError::Io { stream: self.stream.file_name(), source }
    }

    /// Append one record.
    pub fn push<T: Serialize>(&mut self, record: &T) -> Result<(), OutputError> {
        self.line(record)?;
        self.records += 1;
        Ok(())
    }

    /// Append one record given as its JSON text (one line, as [`StreamWriter::push`] writes it).
    pub fn push_raw(&mut self, json: &str) -> Result<(), OutputError> {
        if json.contains('\n') {
            return Err(self.io(std::io::Error::other("a record line contains a newline")));
        }
        let mut bytes = Vec::with_capacity(json.len() + 1);
        bytes.extend_from_slice(json.as_bytes());
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.out.write_all(&bytes).map_err(|e| self.io(e))?;
        self.records += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Write the trailer with the MAC (made inside the HSM) and flush; returns the writer.
    pub fn finish(mut self, hsm: &dyn Hsm, mac_key: &WrappedKey) -> Result<W, OutputError> {
        let digest: [u8; 32] = self.hash.clone().finalize().into();
        let mac = hsm
            .hmac_sha256(mac_key, &digest)
            .map_err(|source| OutputError::Hsm { stream: self.stream.file_name(), source })?;
        let t = Trailer {
            end: End { records: self.records, sha256: hex::encode_upper(digest), mac: hex::encode_upper(mac) },
        };
        let mut bytes = serde_json::to_vec(&t).map_err(|e| self.io(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        self.out.write_all(&bytes).map_err(|e| self.io(e))?;
        self.out.flush().map_err(|e| self.io(e))?;
        Ok(self.out)
    }
}

/// A stream read back and checked: its header and its record lines (JSON text).
#[derive(Debug, Clone)]
pub struct CheckedStream {
    /// The header.
    pub header: Header,
    /// The record lines, in order.
    pub records: Vec<String>,
}

/// Check a stream's structure, digest and record count, and its MAC with `mac`, which computes
/// HMAC-SHA-256 of the digest (through the HSM with [`hsm_mac`], or in clear for TEST keys).
pub fn check_stream(
    name: &str,
    bytes: &[u8],
    mac: impl FnOnce(&KeyRef, &[u8; 32]) -> Result<[u8; 32], String>,
) -> Result<CheckedStream, OutputError> {
    check_stream_with(name, bytes, |key, digest, claimed| mac(key, digest).map(|m| m.as_slice() == claimed))
}

/// [`check_stream`] with a MAC *verifier*: `verify(key, digest, trailer MAC)` says whether the
/// trailer's MAC is right (a cluster answers yes or no; it never hands out a MAC).
pub fn check_stream_with(
    name: &str,
    bytes: &[u8],
    verify: impl FnOnce(&KeyRef, &[u8; 32], &[u8]) -> Result<bool, String>,
) -> Result<CheckedStream, OutputError> {
    let bad = |line: usize, reason: String| OutputError::Invalid { stream: name.to_owned(), line, reason };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(0, format!("not UTF-8: {e}")))?;
    if !text.ends_with('\n') {
        return Err(bad(text.lines().count(), "the file does not end with a complete line (cut short?)".into()));
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < 2 {
        return Err(bad(lines.len(), "a stream has at least a header and a trailer line".into()));
    }
    let header: Header = serde_json::from_str(lines[0]).map_err(|e| bad(1, format!("not a stream header: {e}")))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(bad(
            1,
            format!("format {} version {}; this reader knows {FORMAT} {VERSION}", header.format, header.version),
        ));
    }
    let last = lines.len();
    let trailer: Trailer = serde_json::from_str(lines[last - 1])
        .map_err(|e| bad(last, format!("the last line is not the trailer (file cut short?): {e}")))?;
    let body_len = text.len() - lines[last - 1].len() - 1;
    let digest: [u8; 32] = Sha256::digest(&bytes[..body_len]).into();
    if hex::encode_upper(digest) != trailer.end.sha256.to_ascii_uppercase() {
        return Err(bad(last, "SHA-256 of the file does not match the trailer: the file was changed".into()));
    }
    let records = lines[1..last - 1].iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    if records.len() as u64 != trailer.end.records {
        return Err(bad(last, format!("{} records, the trailer says {}", records.len(), trailer.end.records)));
    }
    let claimed = hex::decode(&trailer.end.mac).map_err(|_| bad(last, "the trailer's MAC is not hex".into()))?;
    let valid =
        verify(&header.mac_key, &digest, &claimed).map_err(|r| bad(last, format!("cannot verify the MAC: {r}")))?;
    if !valid {
        return Err(bad(
            last,
            format!("MAC does not verify with key {} (KCV {})", header.mac_key.label, header.mac_key.kcv),
        ));
    }
    Ok(CheckedStream { header, records })
}

/// A MAC function for [`check_stream`] through the HSM with the wrapped output MAC key (its KCV
/// must be the header's).
pub fn hsm_mac<'a>(
    hsm: &'a dyn Hsm,
    key: &'a WrappedKey,
) -> impl FnOnce(&KeyRef, &[u8; 32]) -> Result<[u8; 32], String> + 'a {
    move |r, d| {
        if r.kcv != key.kcv.to_string() {
            return Err(format!(
                "the stream names MAC key {} KCV {}, the key given has KCV {}",
                r.label, r.kcv, key.kcv
            ));
        }
        hsm.hmac_sha256(key, d).map_err(|e| e.to_string())
    }
}

/// A card as GlobalPlatformPro `DGIxxxx=hex` lines (one block per application, headed by a
/// `# <name> <AID>` comment), for personalizing lab cards.
pub fn gppro_dgis(card: &CardOutput) -> String {
    let mut s = String::new();
    for app in &card.applications {
        s.push_str(&format!("# {} {}\n", app.name, app.aid));
        for d in &app.dgis {
            s.push_str(&format!("DGI{}={}\n", d.dgi, d.data));
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            stream: Stream::Carriers,
            product: "p".into(),
            product_version: 1,
            batch: "b".into(),
            mac_key: KeyRef { label: "MAC-OUTPUT-TEST".into(), kcv: "00".into() },
            test_keys: true,
        }
    }

    /// A stand-in MAC (SHA-256 of a fixed key ‖ digest): the tests here are about the framing.
    fn mac(_: &KeyRef, d: &[u8; 32]) -> Result<[u8; 32], String> {
        Ok(Sha256::digest([b"k".as_slice(), d].concat()).into())
    }

    fn write(records: &[&str]) -> Vec<u8> {
        // finish() needs an HSM; build the trailer the same way with the stand-in MAC.
        let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
        for r in records {
            w.push(&serde_json::json!({ "r": r })).unwrap();
        }
        let digest: [u8; 32] = w.hash.clone().finalize().into();
        let n = w.records;
        let mut out = w.out;
        let t = Trailer {
            end: End {
                records: n,
                sha256: hex::encode_upper(digest),
                mac: hex::encode_upper(mac(&header().mac_key, &digest).unwrap()),
            },
        };
        out.extend(serde_json::to_vec(&t).unwrap());
        out.push(b'\n');
        out
    }

    #[test]
    fn a_stream_checks_and_every_change_is_caught() {
        let bytes = write(&["a", "b", "c"]);
        let ok = check_stream("carriers.jsonl", &bytes, mac).unwrap();
        assert_eq!(ok.records.len(), 3);
        assert_eq!(ok.header, header());
        // Flip one byte anywhere: refused (digest, MAC, structure or count).
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(check_stream("x", &b, mac).is_err(), "flip at {i} not caught");
        }
        // Drop the trailer / cut a line.
        let cut = &bytes[..bytes.len() - 10];
        assert!(check_stream("x", cut, mac).is_err());
        let without_trailer: Vec<u8> = {
            let t = std::str::from_utf8(&bytes).unwrap();
            let keep: Vec<&str> = t.lines().take(4).collect();
            format!("{}\n", keep.join("\n")).into_bytes()
        };
        let e = check_stream("x", &without_trailer, mac).unwrap_err().to_string();
        assert!(e.contains("trailer"), "{e}");
    }
}

//! BER-TLV as EMV uses it (EMV Book 3 Annex B): tags of one to three bytes, definite lengths in
//! one (`0..=127`), two (`81 xx`) or three (`82 xx xx`) bytes, constructed objects (bit 6 of the
//! first tag byte) holding further TLVs.
//!
//! [`Tag`] is a validated tag, [`encode`] writes one object, [`parse_all`] reads a sequence and
//! refuses anything malformed with the offset where it went wrong.

use std::fmt;

/// A malformed tag, length or TLV sequence, with the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    /// A tag is not valid BER (empty, continuation bits wrong, longer than 3 bytes).
    #[error("tag {tag}: {reason}")]
    BadTag {
        /// The tag as given (hex).
        tag: String,
        /// Why.
        reason: &'static str,
    },
    /// The data ends inside an object.
    #[error("TLV truncated at offset {offset}: {what}")]
    Truncated {
        /// Where.
        offset: usize,
        /// What was being read.
        what: &'static str,
    },
    /// A length form EMV does not use (indefinite, or more than 3 length bytes).
    #[error("TLV at offset {offset}: unsupported length byte {byte:02X}")]
    BadLength {
        /// Where.
        offset: usize,
        /// The first length byte.
        byte: u8,
    },
    /// A value longer than 65,535 bytes.
    #[error("value of tag {tag} is {len} bytes; at most 65535 can be encoded")]
    TooLong {
        /// The tag.
        tag: Tag,
        /// The length.
        len: usize,
    },
}

/// A BER-TLV tag of one to three bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    bytes: [u8; 3],
    len: u8,
}

impl Tag {
    /// A tag from its bytes, checked: a first byte with low five bits `11111` needs continuation
    /// bytes, each but the last with bit 8 set.
    pub fn new(bytes: &[u8]) -> Result<Tag, TlvError> {
        let bad = |reason| TlvError::BadTag { tag: hex::encode_upper(bytes), reason };
        let (&first, rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
        if first & 0x1F != 0x1F {
            if !rest.is_empty() {
                return Err(bad("a one-byte tag (low bits of the first byte not 11111) has extra bytes"));
            }
        } else {
            if rest.is_empty() {
                return Err(bad("the first byte announces a subsequent tag byte, none follows"));
            }
            if rest.len() > 2 {
                return Err(bad("longer than 3 bytes"));
            }
            let (last, middle) = rest.split_last().ok_or_else(|| bad("empty"))?;
            if middle.iter().any(|b| b & 0x80 == 0) || last & 0x80 != 0 {
                return Err(bad("continuation bits (bit 8) wrong in the subsequent bytes"));
            }
        }
        let mut b = [0u8; 3];
        b[..bytes.len()].copy_from_slice(bytes);
        Ok(Tag { bytes: b, len: bytes.len() as u8 })
    }

    /// A tag from hex text such as `9F46`.
    pub fn parse(hex_text: &str) -> Result<Tag, TlvError> {
        let bytes = hex::decode(hex_text.trim())
            .map_err(|_| TlvError::BadTag { tag: hex_text.to_string(), reason: "not hex" })?;
        Tag::new(&bytes)
    }

    /// The tag's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Whether the tag is constructed (its value is more TLVs).
    pub fn is_constructed(&self) -> bool {
        self.bytes[0] & 0x20 != 0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(self.bytes()))
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({self})")
    }
}

/// The BER length field of `len` (EMV: at most 3 bytes).
pub fn length_bytes(len: usize) -> Option<Vec<u8>> {
    match len {
        0..=0x7F => Some(vec![len as u8]),
        0x80..=0xFF => Some(vec![0x81, len as u8]),
        0x100..=0xFFFF => Some(vec![0x82, (len >> 8) as u8, len as u8]),
        _ => None,
    }
}

/// Append `tag ‖ length ‖ value` to `out`.
pub fn encode(out: &mut Vec<u8>, tag: Tag, value: &[u8]) -> Result<(), TlvError> {
    let len = length_bytes(value.len()).ok_or(TlvError::TooLong { tag, len: value.len() })?;
    out.extend_from_slice(tag.bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(value);
    Ok(())
}

/// One object of a parsed sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag.
    pub tag: Tag,
    /// The value bytes.
    pub value: &'a [u8],
    /// Offset of the tag in the parsed data.
    pub offset: usize,
}

/// Parse a sequence of TLVs (not descending into constructed values). `00`/`FF` padding between
/// objects is skipped, as EMV allows.
pub fn parse_all(data: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i] == 0x00 || data[i] == 0xFF {
            i += 1;
            continue;
        }
        let start = i;
        let mut tag_len = 1;
        if data[i] & 0x1F == 0x1F {
            loop {
                let b = *data.get(i + tag_len).ok_or(TlvError::Truncated { offset: start, what: "tag" })?;
                tag_len += 1;
                if b & 0x80 == 0 || tag_len > 3 {
                    break;
                }
            }
        }
        let tag = Tag::new(&data[i..i + tag_len])?;
        i += tag_len;
        let first = *data.get(i).ok_or(TlvError::Truncated { offset: start, what: "length" })?;
        let (len, len_len) = match first {
            0..=0x7F => (usize::from(first), 1),
            0x81 => (usize::from(*data.get(i + 1).ok_or(TlvError::Truncated { offset: i, what: "length" })?), 2),
            0x82 => {
                let hi = *data.get(i + 1).ok_or(TlvError::Truncated { offset: i, what: "length" })?;
                let lo = *data.get(i + 2).ok_or(TlvError::Truncated { offset: i, what: "length" })?;
                ((usize::from(hi) << 8) | usize::from(lo), 3)
            }
            byte => return Err(TlvError::BadLength { offset: i, byte }),
        };
        i += len_len;
        let value = data.get(i..i + len).ok_or(TlvError::Truncated { offset: start, what: "value" })?;
        i += len;
        out.push(Tlv { tag, value, offset: start });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_validated() {
        for ok in ["5A", "9F46", "BF0C", "70", "DF8101", "5F20"] {
            assert_eq!(Tag::parse(ok).expect(ok).to_string(), ok);
        }
        for bad in ["", "9F", "5A01", "9F8101FF", "DF81", "ZZ"] {
            assert!(Tag::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(Tag::parse("70").expect("70").is_constructed());
        assert!(!Tag::parse("5A").expect("5A").is_constructed());
    }

    #[test]
    fn lengths_in_one_two_and_three_bytes() {
        let tag = Tag::parse("9F46").expect("tag");
        for (len, prefix) in [(5usize, vec![0x05]), (0x80, vec![0x81, 0x80]), (0x1234, vec![0x82, 0x12, 0x34])] {
            let mut out = Vec::new();
            encode(&mut out, tag, &vec![0xAB; len]).expect("encode");
            assert_eq!(&out[2..2 + prefix.len()], &prefix[..]);
            let parsed = parse_all(&out).expect("parse");
            assert_eq!((parsed.len(), parsed[0].tag, parsed[0].value.len()), (1, tag, len));
        }
        assert!(encode(&mut Vec::new(), tag, &vec![0; 0x10000]).is_err());
    }

    #[test]
    fn a_record_round_trips_and_errors_name_offsets() {
        let mut rec = Vec::new();
        encode(&mut rec, Tag::parse("5A").expect("5A"), &[0x47, 0x61, 0x73, 0x90, 0x01, 0x01, 0x00, 0x10]).expect("5A");
        encode(&mut rec, Tag::parse("5F24").expect("5F24"), &[0x29, 0x12, 0x31]).expect("5F24");
        let items = parse_all(&rec).expect("parse");
        assert_eq!(items.iter().map(|t| t.tag.to_string()).collect::<Vec<_>>(), ["5A", "5F24"]);
        assert_eq!(items[1].offset, 10);
        let cut = &rec[..rec.len() - 1];
        assert_eq!(parse_all(cut), Err(TlvError::Truncated { offset: 10, what: "value" }));
        assert!(matches!(parse_all(&[0x5A, 0x84, 0, 0, 0, 1]), Err(TlvError::BadLength { offset: 1, byte: 0x84 })));
    }
}

//! EMV CPS data grouping identifiers (DGIs): `DGI (2 bytes) ‖ length ‖ data`, the length in one
//! byte for 0–254, else `FF` and two bytes (GlobalPlatform / CPS; emv.md §3.1). Record DGIs are
//! `SFI ‖ record number` with the record template `70 L …` as their value; secret DGIs (`8xxx`)
//! are encrypted under a transport key, some after ISO 7816-4 padding (emv.md §3.3).

use crate::tlv::{self, Tag, TlvError};

/// A malformed DGI or an impossible record address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DgiError {
    /// SFI outside 1–30 or record number outside 1–255.
    #[error("record SFI {sfi} record {record}: {reason}")]
    BadRecord {
        /// The SFI.
        sfi: u8,
        /// The record number.
        record: u8,
        /// Why.
        reason: &'static str,
    },
    /// A value longer than a DGI can carry.
    #[error("DGI {dgi:04X} is {len} bytes; at most 65535")]
    TooLong {
        /// The DGI.
        dgi: u16,
        /// Its length.
        len: usize,
    },
    /// Encoded DGIs that do not parse.
    #[error("DGI data truncated at offset {offset}")]
    Truncated {
        /// Where.
        offset: usize,
    },
    /// A TLV inside a record is malformed.
    #[error(transparent)]
    Tlv(#[from] TlvError),
}

/// One DGI: its number and its (clear or encrypted) data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dgi {
    /// The DGI number, e.g. `0x0101`, `0x8000`, `0x9102`.
    pub id: u16,
    /// The data.
    pub data: Vec<u8>,
}

impl Dgi {
    /// Whether the DGI holds secret data by the CPS convention (`8xxx`).
    pub fn is_secret_by_convention(&self) -> bool {
        self.id & 0xF000 == 0x8000
    }

    /// Append the encoded DGI to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), DgiError> {
        let len = self.data.len();
        out.extend_from_slice(&self.id.to_be_bytes());
        match len {
            0..=254 => out.push(len as u8),
            255..=0xFFFF => {
                out.push(0xFF);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => return Err(DgiError::TooLong { dgi: self.id, len }),
        }
        out.extend_from_slice(&self.data);
        Ok(())
    }
}

/// Decode a sequence of DGIs.
pub fn parse_dgis(data: &[u8]) -> Result<Vec<Dgi>, DgiError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let start = i;
        let id = u16::from_be_bytes([
            *data.get(i).ok_or(DgiError::Truncated { offset: start })?,
            *data.get(i + 1).ok_or(DgiError::Truncated { offset: start })?,
        ]);
        let first = *data.get(i + 2).ok_or(DgiError::Truncated { offset: start })?;
        let (len, hdr) = if first == 0xFF {
            let hi = *data.get(i + 3).ok_or(DgiError::Truncated { offset: start })?;
            let lo = *data.get(i + 4).ok_or(DgiError::Truncated { offset: start })?;
            (usize::from(u16::from_be_bytes([hi, lo])), 5)
        } else {
            (usize::from(first), 3)
        };
        let value = data.get(i + hdr..i + hdr + len).ok_or(DgiError::Truncated { offset: start })?;
        out.push(Dgi { id, data: value.to_vec() });
        i += hdr + len;
    }
    Ok(out)
}

/// The record DGI for SFI `sfi`, record `record`, holding `tlvs` (already TLV-encoded objects)
/// inside the `70` record template.
pub fn record_dgi(sfi: u8, record: u8, tlvs: &[u8]) -> Result<Dgi, DgiError> {
    if !(1..=30).contains(&sfi) {
        return Err(DgiError::BadRecord { sfi, record, reason: "SFI must be 1 to 30" });
    }
    if record == 0 {
        return Err(DgiError::BadRecord { sfi, record, reason: "record numbers start at 1" });
    }
    tlv::parse_all(tlvs)?;
    let mut data = Vec::with_capacity(tlvs.len() + 4);
    tlv::encode(&mut data, Tag::new(&[0x70])?, tlvs)?;
    Ok(Dgi { id: u16::from_be_bytes([sfi, record]), data })
}

/// ISO/IEC 7816-4 padding: `80` then `00`s to a multiple of `block` — always added, a full block
/// when the data is already aligned (GlobalPlatform `pad80`).
pub fn pad80(data: &[u8], block: usize) -> Vec<u8> {
    let mut out = data.to_vec();
    out.push(0x80);
    while !out.len().is_multiple_of(block) {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_dgis_round_trip() {
        let mut out = Vec::new();
        let short = Dgi { id: 0x9000, data: vec![0x97, 0xDC, 0xB0, 0xCE, 0x4E, 0x2C, 0xB3, 0x7D, 0xF3] };
        let long = Dgi { id: 0x8201, data: vec![0x11; 300] };
        let edge = Dgi { id: 0x0101, data: vec![0x22; 254] };
        for d in [&short, &long, &edge] {
            d.encode(&mut out).expect("encode");
        }
        assert_eq!(&out[..3], &[0x90, 0x00, 0x09]);
        assert_eq!(&out[12..17], &[0x82, 0x01, 0xFF, 0x01, 0x2C]);
        assert_eq!(parse_dgis(&out).expect("parse"), vec![short.clone(), long, edge]);
        assert!(short.encode(&mut Vec::new()).is_ok() && !short.is_secret_by_convention());
        assert_eq!(parse_dgis(&out[..out.len() - 1]), Err(DgiError::Truncated { offset: 317 }));
    }

    #[test]
    fn record_dgis_wrap_the_70_template() {
        let mut tlvs = Vec::new();
        tlv::encode(&mut tlvs, Tag::parse("5F20").expect("tag"), b"TEST/CARD").expect("tlv");
        let d = record_dgi(1, 1, &tlvs).expect("record");
        assert_eq!(d.id, 0x0101);
        assert_eq!(&d.data[..2], &[0x70, tlvs.len() as u8]);
        assert!(record_dgi(31, 1, &tlvs).is_err());
        assert!(record_dgi(2, 0, &tlvs).is_err());
        assert!(record_dgi(2, 1, &[0x5F]).is_err(), "malformed TLV inside a record");
    }

    #[test]
    fn pad80_always_pads() {
        assert_eq!(pad80(&[1, 2, 3], 8), vec![1, 2, 3, 0x80, 0, 0, 0, 0]);
        assert_eq!(pad80(&[0; 8], 8).len(), 16);
    }
}

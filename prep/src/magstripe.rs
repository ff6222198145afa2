//! Magnetic-stripe data (ISO/IEC 7813; emv.md §4.1): track 1 and track 2 contents (the encoder
//! adds start/end sentinels and the LRC), the chip's Track 2 Equivalent Data (tag `57`), and the
//! discretionary data laid out per card product (PVKI + PVV, IBM offset, CVV or iCVV, fillers).
//! The values themselves (CVV, PVV, offset) come from the HSM; this module only places them.

/// Why track data cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// A field has characters or a length the track cannot carry.
    #[error("{field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The whole track is longer than ISO 7813 allows.
    #[error("track {track} would be {len} characters; at most {max}")]
    TooLong {
        /// 1 or 2.
        track: u8,
        /// Its length.
        len: usize,
        /// The limit (without sentinels and LRC).
        max: usize,
    },
}

/// One element of the discretionary data, in product order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discretionary {
    /// The PIN verification key index (1 digit).
    Pvki,
    /// The Visa PVV (4 digits).
    Pvv,
    /// The IBM 3624 offset (PIN length digits).
    Offset,
    /// The card verification value: CVV1 on the stripe, iCVV in the chip's track 2 equivalent.
    Cvv,
    /// Fixed text, e.g. `000` or an issuer flag.
    Constant(String),
    /// `n` times the character `c`.
    Fill(char, usize),
}

/// The values discretionary data may hold, for one card and one track.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscretionaryValues {
    /// PVKI digit.
    pub pvki: Option<u8>,
    /// PVV.
    pub pvv: Option<String>,
    /// IBM offset.
    pub offset: Option<String>,
    /// CVV1, or iCVV for the chip.
    pub cvv: Option<String>,
}

/// Build the discretionary data string.
pub fn discretionary(layout: &[Discretionary], v: &DiscretionaryValues) -> Result<String, TrackError> {
    let missing =
        |what: &'static str| TrackError::Field { field: what, reason: "the layout needs it, no value".into() };
    let mut out = String::new();
    for item in layout {
        match item {
            Discretionary::Pvki => out.push_str(&v.pvki.ok_or_else(|| missing("PVKI"))?.to_string()),
            Discretionary::Pvv => out.push_str(v.pvv.as_deref().ok_or_else(|| missing("PVV"))?),
            Discretionary::Offset => out.push_str(v.offset.as_deref().ok_or_else(|| missing("PIN offset"))?),
            Discretionary::Cvv => out.push_str(v.cvv.as_deref().ok_or_else(|| missing("CVV"))?),
            Discretionary::Constant(s) => out.push_str(s),
            Discretionary::Fill(c, n) => out.extend(std::iter::repeat_n(*c, *n)),
        }
    }
    Ok(out)
}

fn digits(field: &'static str, s: &str, lens: std::ops::RangeInclusive<usize>) -> Result<(), TrackError> {
    if !s.bytes().all(|b| b.is_ascii_digit()) || !lens.contains(&s.len()) {
        return Err(TrackError::Field {
            field,
            reason: format!("{} characters, needs {}-{} digits", s.len(), lens.start(), lens.end()),
        });
    }
    Ok(())
}

/// Track 2 content: `PAN = YYMM SC DD` (numeric; at most 37 characters without `;`, `?`, LRC).
pub fn track2(pan: &str, yymm: &str, service_code: &str, dd: &str) -> Result<String, TrackError> {
    digits("PAN", pan, 12..=19)?;
    digits("expiry YYMM", yymm, 4..=4)?;
    digits("service code", service_code, 3..=3)?;
    digits("track 2 discretionary data", dd, 0..=37)?;
    let t = format!("{pan}={yymm}{service_code}{dd}");
    if t.len() > 37 {
        return Err(TrackError::TooLong { track: 2, len: t.len(), max: 37 });
    }
    Ok(t)
}

/// Track 1 content (format B): `B PAN ^ NAME ^ YYMM SC DD` (at most 76 characters without `%`,
/// `?`, LRC). The name is `SURNAME/FIRST` in the track-1 character set, 2–26 characters.
pub fn track1(pan: &str, name: &str, yymm: &str, service_code: &str, dd: &str) -> Result<String, TrackError> {
    digits("PAN", pan, 12..=19)?;
    digits("expiry YYMM", yymm, 4..=4)?;
    digits("service code", service_code, 3..=3)?;
    let name_ok = name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || " /.-'".contains(c));
    if !name_ok || !(2..=26).contains(&name.len()) {
        return Err(TrackError::Field {
            field: "cardholder name",
            reason: format!("{} characters; needs 2-26 of A-Z 0-9 space / . - '", name.chars().count()),
        });
    }
    if dd.chars().any(|c| c == '^' || c == '?' || c == '%' || !(' '..='_').contains(&c)) {
        return Err(TrackError::Field {
            field: "track 1 discretionary data",
            reason: "characters outside the track-1 set".into(),
        });
    }
    let t = format!("B{pan}^{name}^{yymm}{service_code}{dd}");
    if t.len() > 76 {
        return Err(TrackError::TooLong { track: 1, len: t.len(), max: 76 });
    }
    Ok(t)
}

/// Track 2 Equivalent Data (tag `57`): the track 2 content with `D` as separator, packed two
/// digits per byte, padded with `F` to whole bytes.
pub fn track2_equivalent(track2: &str) -> Result<Vec<u8>, TrackError> {
    let mut nibbles: Vec<u8> = Vec::with_capacity(track2.len() + 1);
    for c in track2.chars() {
        nibbles.push(match c {
            '0'..='9' => c as u8 - b'0',
            '=' | 'D' => 0xD,
            _ => return Err(TrackError::Field { field: "track 2", reason: format!("character {c:?} is not numeric") }),
        });
    }
    if !nibbles.len().is_multiple_of(2) {
        nibbles.push(0xF);
    }
    let out: Vec<u8> = nibbles.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
    if out.len() > 19 {
        return Err(TrackError::TooLong { track: 2, len: out.len(), max: 19 });
    }
    Ok(out)
}

/// Track 2 Discretionary Data (tag `9F20`, format cn): the digits packed two per byte, padded
/// with `F`, the same packing as `57`.
pub fn discretionary_bcd(dd: &str) -> Result<Vec<u8>, TrackError> {
    if let Some(c) = dd.chars().find(|c| !c.is_ascii_digit()) {
        return Err(TrackError::Field {
            field: "track 2 discretionary data",
            reason: format!("character {c:?} is not a digit"),
        });
    }
    track2_equivalent(dd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visa_layout() -> Vec<Discretionary> {
        vec![Discretionary::Pvki, Discretionary::Pvv, Discretionary::Cvv, Discretionary::Fill('0', 5)]
    }

    #[test]
    fn visa_style_tracks() {
        let v = DiscretionaryValues { pvki: Some(1), pvv: Some("4021".into()), cvv: Some("561".into()), offset: None };
        let dd = discretionary(&visa_layout(), &v).expect("dd");
        assert_eq!(dd, "1402156100000");
        let t2 = track2("4123456789012345", "8701", "101", &dd).expect("t2");
        assert_eq!(t2, "4123456789012345=87011011402156100000");
        let t1 = track1("4123456789012345", "TEST/CARD A", "8701", "101", &dd).expect("t1");
        assert_eq!(t1, "B4123456789012345^TEST/CARD A^87011011402156100000");
        let ted = track2_equivalent(&t2).expect("57");
        assert_eq!(hex::encode_upper(&ted), "4123456789012345D87011011402156100000F");
    }

    #[test]
    fn bad_fields_are_named() {
        let e = track2("41234567890123A5", "8701", "101", "").expect_err("letters");
        assert!(e.to_string().starts_with("PAN"), "{e}");
        let e = track2("4123456789012345", "871", "101", "").expect_err("short expiry");
        assert!(e.to_string().contains("expiry"), "{e}");
        let e = track1("4123456789012345", "tést", "8701", "101", "").expect_err("name");
        assert!(e.to_string().contains("cardholder name"), "{e}");
        let e = track2("4123456789012345678", "8701", "101", &"0".repeat(20)).expect_err("too long");
        assert!(matches!(e, TrackError::TooLong { track: 2, .. }), "{e}");
        let e = discretionary(&visa_layout(), &DiscretionaryValues::default()).expect_err("no PVKI");
        assert!(e.to_string().contains("PVKI"), "{e}");
    }
}

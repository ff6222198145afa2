//! EMV and card payment functions: ICC master-key derivation (EMV Book 2 Annex A1.4 options
//! A and B), CVV/CVC, Visa PVV, IBM 3624 PIN offsets, ISO 9564-1 PIN blocks (formats 0–4) and
//! random/weak PIN handling.
//!
//! Digit strings are ASCII `'0'..='9'`. PANs are 12..=19 digits, PINs 4..=12 digits. Every
//! function validates its input; error messages never contain PINs, PANs or key material.

use zeroize::Zeroizing;

use crate::digest::{HashAlg, digest};
use crate::error::{CryptoError, Result, Secret, data_len};
use crate::sym::{Bc, set_odd_parity, xor_in_place};

/// Checks that `s` is `min..=max` ASCII digits and returns it as bytes.
fn digits<'a>(s: &'a str, what: &'static str, min: usize, max: usize, rule: &'static str) -> Result<&'a [u8]> {
    let b = s.as_bytes();
    if !(min..=max).contains(&b.len()) {
        return Err(data_len(what, b.len(), rule));
    }
    if !b.iter().all(u8::is_ascii_digit) {
        return Err(CryptoError::Invalid(format!("{what} must contain only decimal digits")));
    }
    Ok(b)
}

fn check_pan(pan: &str) -> Result<&[u8]> {
    digits(pan, "PAN", 12, 19, "must be 12..=19 digits")
}

fn check_pin(pin: &str) -> Result<&[u8]> {
    digits(pin, "PIN", 4, 12, "must be 4..=12 digits")
}

/// Packs nibble values (each 0..=15) into bytes; `N` bytes from `2N` nibbles.
fn pack<const N: usize>(nibbles: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(nibbles.chunks(2)) {
        let hi = pair.first().copied().unwrap_or(0) & 0x0F;
        let lo = pair.get(1).copied().unwrap_or(0) & 0x0F;
        *o = (hi << 4) | lo;
    }
    out
}

/// Splits bytes into nibble values.
fn unpack(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(bytes.iter().flat_map(|b| [b >> 4, b & 0x0F]).collect())
}

/// ASCII digits to nibble values.
fn digit_values(d: &[u8]) -> impl Iterator<Item = u8> + '_ {
    d.iter().map(|c| c.wrapping_sub(b'0'))
}

/// The rightmost 16 digits of `d`, left-padded with `0`, as 8 BCD bytes.
fn right16_bcd(d: &[u8]) -> [u8; 8] {
    let mut nib = [0u8; 16];
    let take = d.len().min(16);
    let src = d.get(d.len() - take..).unwrap_or_default();
    for (n, v) in nib.iter_mut().skip(16 - take).zip(digit_values(src)) {
        *n = v;
    }
    pack(&nib)
}

/// Two-pass decimalisation of 16 hex digits: digits 0–9 left to right, then A–F as 0–5.
fn decimalise(r: &[u8; 8], count: usize) -> String {
    let nib = unpack(r);
    let first = nib.iter().filter(|&&v| v < 10).copied();
    let second = nib.iter().filter(|&&v| v >= 10).map(|&v| v - 10);
    first.chain(second).take(count).map(|v| char::from(b'0' + v)).collect()
}

fn check_psn(psn: &str) -> Result<&[u8]> {
    if psn.is_empty() {
        return Ok(b"00");
    }
    digits(psn, "PSN", 2, 2, "must be empty or 2 digits")
}

/// Z = E(IMK, Y) ‖ E(IMK, Y ⊕ FF..), odd parity.
fn derive_from_y(imk: &Bc, y: [u8; 8]) -> Secret {
    let mut y_inv = y;
    for b in y_inv.iter_mut() {
        *b ^= 0xFF;
    }
    let mut mk = Zeroizing::new(Vec::with_capacity(16));
    mk.extend_from_slice(&imk.encrypt_array(y));
    mk.extend_from_slice(&imk.encrypt_array(y_inv));
    set_odd_parity(&mut mk);
    mk
}

/// EMV ICC master key, option A: Y = rightmost 16 digits of PAN ‖ PSN; 16 bytes, odd parity.
/// `imk` is a 3DES key (16 or 24 bytes); `psn` "" means "00".
pub fn emv_option_a(imk: &[u8], pan: &str, psn: &str) -> Result<Secret> {
    let bc = Bc::des3(imk)?;
    let pan = check_pan(pan)?;
    let psn = check_psn(psn)?;
    let x = [pan, psn].concat();
    Ok(derive_from_y(&bc, right16_bcd(&x)))
}

/// EMV ICC master key, option B (SHA-1 of PAN ‖ PSN, decimalised); equals option A when the
/// PAN has at most 16 digits.
pub fn emv_option_b(imk: &[u8], pan: &str, psn: &str) -> Result<Secret> {
    let bc = Bc::des3(imk)?;
    let pan_d = check_pan(pan)?;
    if pan_d.len() <= 16 {
        return emv_option_a(imk, pan, psn);
    }
    let psn = check_psn(psn)?;
    let mut x: Vec<u8> = Vec::with_capacity(22);
    if (pan_d.len() + psn.len()) % 2 == 1 {
        x.push(b'0');
    }
    x.extend_from_slice(pan_d);
    x.extend_from_slice(psn);
    let nibbles: Vec<u8> = digit_values(&x).collect();
    let bcd: Vec<u8> = nibbles.chunks(2).map(|p| pack::<1>(p)[0]).collect();
    let h = digest(HashAlg::Sha1, &bcd);
    let hn = unpack(&h);
    let y: Vec<u8> = hn
        .iter()
        .filter(|&&v| v < 10)
        .copied()
        .chain(hn.iter().filter(|&&v| v >= 10).map(|&v| v - 10))
        .take(16)
        .collect();
    // SHA-1 gives 40 nibbles, so y always has 16 entries.
    Ok(derive_from_y(&bc, pack(&y)))
}

/// CVV/CVC (also iCVV with service code 999, CVV2 with 000): `cvk` 16 bytes = CVK-A ‖ CVK-B,
/// expiry as YYMM, full two-pass decimalisation; 3 digits.
pub fn cvv(cvk: &[u8], pan: &str, expiry_yymm: &str, service_code: &str) -> Result<String> {
    if cvk.len() != 16 {
        return Err(CryptoError::KeyLength { what: "CVK", got: cvk.len() });
    }
    let pan = check_pan(pan)?;
    let exp = digits(expiry_yymm, "expiry", 4, 4, "must be 4 digits (YYMM)")?;
    let sc = digits(service_code, "service code", 3, 3, "must be 3 digits")?;
    let mut nib = [0u8; 32];
    for (n, v) in nib.iter_mut().zip(digit_values(pan).chain(digit_values(exp)).chain(digit_values(sc))) {
        *n = v;
    }
    let (b1, b2) = nib.split_at(16);
    let (ka, _) = cvk.split_at(8);
    let des_a = Bc::des(ka)?;
    let tdes = Bc::des3(cvk)?;
    let mut r = des_a.encrypt_array(pack::<8>(b1));
    xor_in_place(&mut r, &pack::<8>(b2));
    let r = tdes.encrypt_array(r);
    Ok(decimalise(&r, 3))
}

/// The 11 rightmost PAN digits excluding the check digit.
fn pan11(pan: &[u8]) -> &[u8] {
    // PAN has at least 12 digits (checked), so the range is valid.
    pan.get(pan.len().saturating_sub(12)..pan.len().saturating_sub(1)).unwrap_or_default()
}

/// Visa PIN verification value: 3DES(PVK)[11 PAN digits ‖ PVKI ‖ first 4 PIN digits],
/// decimalised; 4 digits. `pvki` is the digit value 0..=9 (not ASCII).
pub fn visa_pvv(pvk: &[u8], pan: &str, pvki: u8, pin: &str) -> Result<String> {
    let bc = Bc::des3(pvk)?;
    let pan = check_pan(pan)?;
    let pin = check_pin(pin)?;
    if pvki > 9 {
        return Err(CryptoError::Invalid("PVKI must be 0..=9".into()));
    }
    let mut tsp = Zeroizing::new(Vec::with_capacity(16));
    tsp.extend(digit_values(pan11(pan)));
    tsp.push(pvki);
    tsp.extend(digit_values(pin.get(..4).unwrap_or_default()));
    let r = bc.encrypt_array(pack::<8>(&tsp));
    Ok(decimalise(&r, 4))
}

/// IBM 3624 parameters: decimalisation table, which PAN digits form the validation data, pad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ibm3624Params {
    /// Decimalisation table: 16 ASCII digits, entry i for hex digit i.
    pub decimalisation: [u8; 16],
    /// Index of the first PAN digit used (0-based).
    pub start: usize,
    /// Number of PAN digits used (1..=16).
    pub length: usize,
    /// Pad nibble value (0..=15) filling the validation data to 16 hex digits.
    pub pad: u8,
}

fn ibm3624_natural(pvk: &[u8], pan: &str, p: &Ibm3624Params, pin_len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let bc = Bc::des_any(pvk)?;
    let pan = check_pan(pan)?;
    if !(4..=12).contains(&pin_len) {
        return Err(data_len("IBM 3624 PIN length", pin_len, "must be 4..=12"));
    }
    if !p.decimalisation.iter().all(u8::is_ascii_digit) {
        return Err(CryptoError::Invalid("decimalisation table must be 16 decimal digits".into()));
    }
    if p.pad > 15 {
        return Err(CryptoError::Invalid("IBM 3624 pad must be a nibble value 0..=15".into()));
    }
    if !(1..=16).contains(&p.length) {
        return Err(data_len("IBM 3624 validation data", p.length, "length must be 1..=16"));
    }
    let sel = p
        .start
        .checked_add(p.length)
        .and_then(|end| pan.get(p.start..end))
        .ok_or_else(|| CryptoError::Invalid("IBM 3624 start/length outside the PAN".into()))?;
    let mut vd = [p.pad; 16];
    for (n, v) in vd.iter_mut().zip(digit_values(sel)) {
        *n = v;
    }
    let r = bc.encrypt_array(pack::<8>(&vd));
    let nib = unpack(&r);
    let table = &p.decimalisation;
    Ok(Zeroizing::new(
        nib.iter().take(pin_len).map(|&v| table.get(usize::from(v)).copied().unwrap_or(b'0') - b'0').collect(),
    ))
}

/// IBM 3624 natural PIN of `pin_len` digits (4..=12); `pvk` is DES or 3DES (8/16/24 bytes).
pub fn ibm3624_natural_pin(pvk: &[u8], pan: &str, p: &Ibm3624Params, pin_len: usize) -> Result<String> {
    let nat = ibm3624_natural(pvk, pan, p, pin_len)?;
    Ok(nat.iter().map(|&v| char::from(b'0' + v)).collect())
}

/// IBM 3624 PIN offset: digit i = (PIN_i − natural_i) mod 10; same length as `pin`.
pub fn ibm3624_offset(pvk: &[u8], pan: &str, p: &Ibm3624Params, pin: &str) -> Result<String> {
    let pin = check_pin(pin)?;
    let nat = ibm3624_natural(pvk, pan, p, pin.len())?;
    Ok(digit_values(pin).zip(nat.iter()).map(|(a, &b)| char::from(b'0' + (a + 10 - b) % 10)).collect())
}

/// ISO 9564-1 PIN block format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinBlockFormat {
    /// Format 0 (ANSI X9.8): PIN ⊕ PAN, `F` fill.
    Iso0,
    /// Format 1: random fill, no PAN.
    Iso1,
    /// Format 2: `F` fill, no PAN (ICC offline PIN).
    Iso2,
    /// Format 3: PIN ⊕ PAN, random `A`–`F` fill.
    Iso3,
    /// Format 4: 16-byte AES block, PIN field enciphered, ⊕ PAN field, enciphered again.
    Iso4,
}

impl PinBlockFormat {
    fn code(self) -> u8 {
        match self {
            Self::Iso0 => 0,
            Self::Iso1 => 1,
            Self::Iso2 => 2,
            Self::Iso3 => 3,
            Self::Iso4 => 4,
        }
    }
}

fn rng_err(_: getrandom::Error) -> CryptoError {
    CryptoError::Invalid("system random number generator failed".into())
}

/// `n` random bytes from the OS.
fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    getrandom::fill(&mut v).map_err(rng_err)?;
    Ok(v)
}

/// `n` uniformly random values in `0..modulus` (modulus 1..=256), by rejection sampling.
fn random_below(n: usize, modulus: u16) -> Result<Zeroizing<Vec<u8>>> {
    let modulus = modulus.clamp(1, 256);
    // Largest multiple of `modulus` not above 256.
    let limit = 256 - 256 % modulus;
    let mut out = Zeroizing::new(Vec::with_capacity(n));
    while out.len() < n {
        for &b in random_bytes(n.max(16))?.iter() {
            if u16::from(b) < limit && out.len() < n {
                // b % modulus < modulus <= 256, so it fits in u8.
                out.push((u16::from(b) % modulus) as u8);
            }
        }
    }
    Ok(out)
}

/// PAN block for formats 0 and 3: `0000` ‖ 12 rightmost PAN digits excluding the check digit.
fn pan_block_iso0(pan: &[u8]) -> [u8; 8] {
    let body = pan.get(..pan.len().saturating_sub(1)).unwrap_or_default();
    right16_bcd(body.get(body.len().saturating_sub(12)..).unwrap_or_default())
}

/// PAN field for format 4: M = len − 12, PAN left-justified, zero-filled to 32 nibbles.
fn pan_field_iso4(pan: &[u8]) -> [u8; 16] {
    let mut nib = [0u8; 32];
    let m = pan.len().saturating_sub(12);
    // m <= 7 for PANs of at most 19 digits.
    nib[0] = (m & 0x0F) as u8;
    let pad = 12usize.saturating_sub(pan.len());
    for (n, v) in nib.iter_mut().skip(1 + pad).zip(digit_values(pan)) {
        *n = v;
    }
    pack(&nib)
}

/// The clear 8-byte PIN field: code, length, PIN digits, fill.
fn pin_field(code: u8, pin: &[u8], fill: &[u8]) -> Zeroizing<[u8; 8]> {
    let mut nib = Zeroizing::new([0u8; 16]);
    nib[0] = code;
    // pin.len() <= 12 (checked), so it fits in a nibble.
    nib[1] = (pin.len() & 0x0F) as u8;
    for (n, v) in nib.iter_mut().skip(2).zip(digit_values(pin).chain(fill.iter().copied())) {
        *n = v;
    }
    Zeroizing::new(pack(&nib[..]))
}

/// Clear PIN block (8 bytes for 0..3; for Iso4 the 16-byte *PIN field* and 16-byte PAN field are
/// combined only by `encrypt_pin_block`). Random fill from getrandom.
///
/// Iso0–3 are enciphered with 3DES-ECB (key 16/24 bytes), Iso4 with AES
/// (E(K, E(K, PIN field) ⊕ PAN field)). `pan` is ignored (may be empty) for Iso1 and Iso2.
pub fn encrypt_pin_block(fmt: PinBlockFormat, key: &[u8], pin: &str, pan: &str) -> Result<Vec<u8>> {
    let pin = check_pin(pin)?;
    let fill_len = 14 - pin.len();
    match fmt {
        PinBlockFormat::Iso0 | PinBlockFormat::Iso1 | PinBlockFormat::Iso2 | PinBlockFormat::Iso3 => {
            let bc = Bc::des3(key)?;
            let fill = match fmt {
                PinBlockFormat::Iso1 => random_below(fill_len, 16)?,
                PinBlockFormat::Iso3 => {
                    let mut f = random_below(fill_len, 6)?;
                    f.iter_mut().for_each(|v| *v += 10);
                    f
                }
                _ => Zeroizing::new(vec![0x0F; fill_len]),
            };
            let mut block = pin_field(fmt.code(), pin, &fill);
            if matches!(fmt, PinBlockFormat::Iso0 | PinBlockFormat::Iso3) {
                xor_in_place(&mut block[..], &pan_block_iso0(check_pan(pan)?));
            }
            bc.encrypt_block(&mut block[..]);
            Ok(block.to_vec())
        }
        PinBlockFormat::Iso4 => {
            let bc = Bc::aes(key)?;
            let pan = check_pan(pan)?;
            let head = pin_field(4, pin, &vec![0x0A; fill_len]);
            let mut field = Zeroizing::new([0u8; 16]);
            field[..8].copy_from_slice(&head[..]);
            field[8..].copy_from_slice(&random_bytes(8)?);
            bc.encrypt_block(&mut field[..]);
            xor_in_place(&mut field[..], &pan_field_iso4(pan));
            bc.encrypt_block(&mut field[..]);
            Ok(field.to_vec())
        }
    }
}

fn bad_block(msg: &str) -> CryptoError {
    CryptoError::Invalid(format!("PIN block: {msg}"))
}

/// Parses a clear PIN field (first 8 bytes) and checks the format code and fill.
fn parse_pin_field(fmt: PinBlockFormat, field: &[u8]) -> Result<Zeroizing<String>> {
    let nib = unpack(field.get(..8).unwrap_or_default());
    if nib.len() != 16 {
        return Err(bad_block("wrong length"));
    }
    if nib.first() != Some(&fmt.code()) {
        return Err(bad_block("format code does not match"));
    }
    let len = usize::from(nib.get(1).copied().unwrap_or(0));
    if !(4..=12).contains(&len) {
        return Err(bad_block("PIN length out of range"));
    }
    let (pin, fill) = nib.get(2..).unwrap_or_default().split_at(len);
    if !pin.iter().all(|&v| v < 10) {
        return Err(bad_block("PIN digit out of range"));
    }
    let fill_ok = match fmt {
        PinBlockFormat::Iso0 | PinBlockFormat::Iso2 => fill.iter().all(|&v| v == 0x0F),
        PinBlockFormat::Iso1 => true,
        PinBlockFormat::Iso3 => fill.iter().all(|&v| v >= 0x0A),
        PinBlockFormat::Iso4 => fill.iter().all(|&v| v == 0x0A),
    };
    if !fill_ok {
        return Err(bad_block("fill does not match the format"));
    }
    Ok(Zeroizing::new(pin.iter().map(|&v| char::from(b'0' + v)).collect()))
}

/// Deciphers a PIN block and returns the PIN; checks the format nibble, PIN length and fill.
pub fn decrypt_pin_block(fmt: PinBlockFormat, key: &[u8], block: &[u8], pan: &str) -> Result<Zeroizing<String>> {
    match fmt {
        PinBlockFormat::Iso4 => {
            let bc = Bc::aes(key)?;
            let pan = check_pan(pan)?;
            if block.len() != 16 {
                return Err(data_len("ISO-4 PIN block", block.len(), "must be 16 bytes"));
            }
            let mut field = Zeroizing::new(block.to_vec());
            bc.decrypt_block(&mut field);
            xor_in_place(&mut field, &pan_field_iso4(pan));
            bc.decrypt_block(&mut field);
            parse_pin_field(fmt, &field)
        }
        _ => {
            let bc = Bc::des3(key)?;
            if block.len() != 8 {
                return Err(data_len("PIN block", block.len(), "must be 8 bytes"));
            }
            let mut field = Zeroizing::new(block.to_vec());
            bc.decrypt_block(&mut field);
            if matches!(fmt, PinBlockFormat::Iso0 | PinBlockFormat::Iso3) {
                xor_in_place(&mut field, &pan_block_iso0(check_pan(pan)?));
            }
            parse_pin_field(fmt, &field)
        }
    }
}

/// A uniformly random PIN of `len` digits (4..=12), optionally excluding weak PINs.
pub fn random_pin(len: usize, exclude_weak: bool) -> Result<Zeroizing<String>> {
    if !(4..=12).contains(&len) {
        return Err(data_len("random PIN", len, "must be 4..=12 digits"));
    }
    // Weak PINs are a few percent of all PINs at most; 1000 tries never all fail in practice.
    for _ in 0..1000 {
        let d = random_below(len, 10)?;
        let pin = Zeroizing::new(d.iter().map(|&v| char::from(b'0' + v)).collect::<String>());
        if !exclude_weak || !is_weak_pin(&pin) {
            return Ok(pin);
        }
    }
    Err(CryptoError::Invalid("could not draw a non-weak PIN".into()))
}

/// Common PINs that are not caught by the pattern rules.
const WEAK_LIST: &[&str] = &["2580", "0852", "1004", "2000", "1357", "2468", "8642", "7531", "1998", "1999"];

/// True for weak PINs: all one digit, ascending/descending runs (mod 10, e.g. 1234, 9876,
/// 8901), repeated short patterns (1212, 123123), `AABB` (1122), and a short built-in list
/// (2580, 1004, 2000, …). Empty or non-digit input counts as weak.
pub fn is_weak_pin(pin: &str) -> bool {
    let d = pin.as_bytes();
    if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let step_run = |step: u8| d.windows(2).all(|w| matches!(w, [a, b] if (a - b'0' + step) % 10 == b - b'0'));
    if step_run(1) || step_run(9) {
        return true;
    }
    // Period 1..=3 repeated at least twice (covers all-same digits).
    for p in 1..=3 {
        if d.len() >= 2 * p && d.iter().enumerate().all(|(i, c)| d.get(i % p) == Some(c)) {
            return true;
        }
    }
    if let [a, b, c, e] = d
        && a == b
        && c == e
    {
        return true;
    }
    WEAK_LIST.contains(&pin)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    const IMK: &str = "0123456789ABCDEFFEDCBA9876543210";

    #[test]
    fn option_a_b_known_answers() {
        // EMV reference §6 #1, #2, #3 (pyemv).
        let imk = h(IMK);
        assert_eq!(*emv_option_a(&imk, "12345678901234567", "01").unwrap(), h("73AD54688CEF2934B0979857E3C719F1"));
        assert_eq!(*emv_option_a(&imk, "99012345678901234", "45").unwrap(), h("67F8292358083E5EA7AB7FDA58D53B6B"));
        assert_eq!(*emv_option_b(&imk, "12345678901234567", "01").unwrap(), h("AD406D7F6D7570916D75E5DCAB8CF737"));
        // Option B == option A for PANs of 16 digits or fewer; empty PSN == "00".
        for pan in ["1234567890123456", "123456789012", "5413330089020011"] {
            assert_eq!(emv_option_b(&imk, pan, "07").unwrap(), emv_option_a(&imk, pan, "07").unwrap());
            assert_eq!(emv_option_a(&imk, pan, "").unwrap(), emv_option_a(&imk, pan, "00").unwrap());
        }
        // 24-byte K1K2K1 form of the IMK gives the same key.
        let imk24 = h(&format!("{IMK}0123456789ABCDEF"));
        assert_eq!(
            emv_option_a(&imk24, "12345678901234567", "01").unwrap(),
            emv_option_a(&imk, "12345678901234567", "01").unwrap()
        );
        // Option B for 18 and 19 digit PANs works and differs from A.
        for pan in ["123456789012345678", "1234567890123456789"] {
            let b = emv_option_b(&imk, pan, "01").unwrap();
            assert!(crate::sym::has_odd_parity(&b));
            assert_ne!(b, emv_option_a(&imk, pan, "01").unwrap());
        }
        assert!(emv_option_a(&imk, "1234", "01").is_err());
        assert!(emv_option_a(&imk, "12345678901234567890", "01").is_err());
        assert!(emv_option_a(&imk, "1234567890123A56", "01").is_err());
        assert!(emv_option_a(&imk, "1234567890123456", "1").is_err());
        assert!(emv_option_a(&imk[..8], "1234567890123456", "01").is_err());
    }

    #[test]
    fn option_b_matches_spec_steps() {
        // Independent re-computation of option B for an 18-digit PAN with PSN 01 (even length).
        let imk = h(IMK);
        let pan = "543210987654321098";
        let bcd = h("54321098765432109801");
        let hd: String = hex::encode(crate::digest::digest(HashAlg::Sha1, &bcd));
        let mut y: String = hd.chars().filter(char::is_ascii_digit).collect();
        y.extend(hd.chars().filter(|c| c.is_ascii_alphabetic()).map(|c| char::from(c as u8 - b'a' + b'0')));
        y.truncate(16);
        let zl = crate::sym::des3_ecb_encrypt(&imk, &h(&y)).unwrap();
        let yr: Vec<u8> = h(&y).iter().map(|b| b ^ 0xFF).collect();
        let mut mk = [zl, crate::sym::des3_ecb_encrypt(&imk, &yr).unwrap()].concat();
        set_odd_parity(&mut mk);
        assert_eq!(*emv_option_b(&imk, pan, "01").unwrap(), mk);
    }

    #[test]
    fn cvv_known_answers() {
        // EMV reference §6 #8 and #9.
        let cvk = h(IMK);
        assert_eq!(cvv(&cvk, "4123456789012345", "8701", "101").unwrap(), "561");
        assert_eq!(cvv(&cvk, "1234567890123456", "9912", "220").unwrap(), "170");
        // Reference §7: a case that needs the second decimalisation pass (psec returns "10").
        assert_eq!(cvv(&h("404142434445464748494A4B4C4D4E4F"), "4761730000304750", "3012", "201").unwrap(), "105");
        assert!(cvv(&cvk[..8], "4123456789012345", "8701", "101").is_err());
        assert!(cvv(&cvk, "4123456789012345", "870", "101").is_err());
        assert!(cvv(&cvk, "4123456789012345", "8701", "1O1").is_err());
    }

    #[test]
    fn decimalisation_second_pass() {
        assert_eq!(decimalise(&[0xAB, 0xCD, 0xEF, 0xAB, 0xCD, 0xEF, 0xAB, 0x1C], 4), "1012");
        assert_eq!(decimalise(&[0x12, 0x3A, 0, 0, 0, 0, 0, 0], 3), "123");
    }

    #[test]
    fn pvv_known_answer() {
        // EMV reference §6 #10.
        assert_eq!(visa_pvv(&h(IMK), "1122334455667788", 3, "4524").unwrap(), "4021");
        // Only the first four PIN digits count.
        assert_eq!(visa_pvv(&h(IMK), "1122334455667788", 3, "452499").unwrap(), "4021");
        assert!(visa_pvv(&h(IMK), "1122334455667788", 10, "4524").is_err());
        assert!(visa_pvv(&h(IMK), "1122334455667788", 3, "452").is_err());
    }

    fn ibm_params() -> Ibm3624Params {
        Ibm3624Params { decimalisation: *b"1234567890123456", start: 0, length: 16, pad: 0xF }
    }

    #[test]
    fn ibm3624_known_answer() {
        // EMV reference §6 #11: offset 0000 gives PIN 4524, so the natural PIN is 4524.
        let pvk = h(IMK);
        let p = ibm_params();
        assert_eq!(ibm3624_natural_pin(&pvk, "1122334455667788", &p, 4).unwrap(), "4524");
        assert_eq!(ibm3624_offset(&pvk, "1122334455667788", &p, "4524").unwrap(), "0000");
        assert_eq!(ibm3624_offset(&pvk, "1122334455667788", &p, "1234").unwrap(), "7710");
        let nat6 = ibm3624_natural_pin(&pvk, "1122334455667788", &p, 6).unwrap();
        assert!(nat6.starts_with("4524"));
        // Partial validation data with pad, single-DES key.
        let p12 = Ibm3624Params { start: 3, length: 12, ..p };
        let off = ibm3624_offset(&pvk[..8], "1122334455667788", &p12, "9876").unwrap();
        let nat = ibm3624_natural_pin(&pvk[..8], "1122334455667788", &p12, 4).unwrap();
        let back: String =
            nat.bytes().zip(off.bytes()).map(|(n, o)| char::from(b'0' + (n - b'0' + o - b'0') % 10)).collect();
        assert_eq!(back, "9876");
        // Invalid parameters.
        assert!(ibm3624_natural_pin(&pvk, "1122334455667788", &Ibm3624Params { start: 5, ..p }, 4).is_err());
        assert!(ibm3624_natural_pin(&pvk, "1122334455667788", &Ibm3624Params { length: 0, ..p }, 4).is_err());
        assert!(ibm3624_natural_pin(&pvk, "1122334455667788", &Ibm3624Params { pad: 16, ..p }, 4).is_err());
        let mut t = p;
        t.decimalisation[3] = b'A';
        assert!(ibm3624_natural_pin(&pvk, "1122334455667788", &t, 4).is_err());
        assert!(ibm3624_natural_pin(&pvk, "1122334455667788", &p, 3).is_err());
        assert!(ibm3624_natural_pin(&pvk, "1122334455667788", &Ibm3624Params { start: usize::MAX, ..p }, 4).is_err());
    }

    #[test]
    fn iso0_known_answer() {
        // EMV reference §6 #12: clear ISO-0 block.
        let pin = pin_field(0, b"1234", &[0xF; 10]);
        let mut clear = *pin;
        xor_in_place(&mut clear, &pan_block_iso0(b"5544332211009966"));
        assert_eq!(clear.to_vec(), h("041277CDDEEFF669"));
        // Encrypted block deciphers to exactly that clear block.
        let key = h(IMK);
        let blk = encrypt_pin_block(PinBlockFormat::Iso0, &key, "1234", "5544332211009966").unwrap();
        assert_eq!(crate::sym::des3_ecb_decrypt(&key, &blk).unwrap(), h("041277CDDEEFF669"));
        let enc = crate::sym::des3_ecb_encrypt(&key, &h("041277CDDEEFF669")).unwrap();
        assert_eq!(*decrypt_pin_block(PinBlockFormat::Iso0, &key, &enc, "5544332211009966").unwrap(), "1234");
    }

    #[test]
    fn iso4_known_answer() {
        // EMV reference §6 #13.
        let key = h("00112233445566778899AABBCCDDEEFF");
        let blk = h("E4BE5B623AF7E006AC319E5B93544564");
        assert_eq!(*decrypt_pin_block(PinBlockFormat::Iso4, &key, &blk, "1234567890123456").unwrap(), "1234");
        assert!(decrypt_pin_block(PinBlockFormat::Iso4, &key, &blk, "1234567890123457").is_err());
        assert_eq!(pan_field_iso4(b"1234567890123456"), h("41234567890123456000000000000000")[..]);
        assert_eq!(pan_field_iso4(b"123456789012"), h("01234567890120000000000000000000")[..]);
    }

    #[test]
    fn pin_blocks_round_trip_all_formats() {
        let k3 = h(IMK);
        let kaes = h("000102030405060708090A0B0C0D0E0F1011121314151617");
        let formats = [
            PinBlockFormat::Iso0,
            PinBlockFormat::Iso1,
            PinBlockFormat::Iso2,
            PinBlockFormat::Iso3,
            PinBlockFormat::Iso4,
        ];
        for i in 0..300 {
            let pin = random_pin(4 + i % 9, false).unwrap();
            let pan_len = 12 + i % 8;
            let pan: String = random_below(pan_len, 10).unwrap().iter().map(|&v| char::from(b'0' + v)).collect();
            for fmt in formats {
                let key = if fmt == PinBlockFormat::Iso4 { &kaes } else { &k3 };
                let blk = encrypt_pin_block(fmt, key, &pin, &pan).unwrap();
                assert_eq!(blk.len(), if fmt == PinBlockFormat::Iso4 { 16 } else { 8 });
                assert_eq!(*decrypt_pin_block(fmt, key, &blk, &pan).unwrap(), *pin, "{fmt:?}");
                // Decrypting as another format fails on the format nibble.
                if fmt != PinBlockFormat::Iso4 {
                    let other = if fmt == PinBlockFormat::Iso2 { PinBlockFormat::Iso1 } else { PinBlockFormat::Iso2 };
                    assert!(decrypt_pin_block(other, key, &blk, &pan).is_err());
                }
            }
        }
        // Format 1 and 3 fill is random: two encryptions differ.
        let a = encrypt_pin_block(PinBlockFormat::Iso3, &k3, "1234", "5544332211009966").unwrap();
        let b = encrypt_pin_block(PinBlockFormat::Iso3, &k3, "1234", "5544332211009966").unwrap();
        assert_ne!(a, b);
        // ISO-2 is deterministic and has no PAN.
        let c = encrypt_pin_block(PinBlockFormat::Iso2, &k3, "1234", "").unwrap();
        assert_eq!(crate::sym::des3_ecb_decrypt(&k3, &c).unwrap(), h("241234FFFFFFFFFF"));
        // Input checks.
        assert!(encrypt_pin_block(PinBlockFormat::Iso0, &k3, "123", "5544332211009966").is_err());
        assert!(encrypt_pin_block(PinBlockFormat::Iso0, &k3, "1234567890123", "5544332211009966").is_err());
        assert!(encrypt_pin_block(PinBlockFormat::Iso0, &k3, "1234", "").is_err());
        assert!(encrypt_pin_block(PinBlockFormat::Iso4, &k3[..8], "1234", "5544332211009966").is_err());
        assert!(decrypt_pin_block(PinBlockFormat::Iso0, &k3, &[0; 16], "5544332211009966").is_err());
        assert!(decrypt_pin_block(PinBlockFormat::Iso4, &kaes, &[0; 8], "5544332211009966").is_err());
        // Garbage never panics.
        for _ in 0..200 {
            let junk = random_bytes(16).unwrap();
            let _ = decrypt_pin_block(PinBlockFormat::Iso1, &k3, &junk[..8], "");
            let _ = decrypt_pin_block(PinBlockFormat::Iso4, &kaes, &junk, "5544332211009966");
        }
    }

    #[test]
    fn weak_pins() {
        for p in [
            "0000", "1111", "1234", "9876", "8901", "0987", "1212", "1122", "2580", "123456", "123123", "999999",
            "121212", "2000",
        ] {
            assert!(is_weak_pin(p), "{p}");
        }
        for p in ["4524", "1357924", "8391", "2749", "120947"] {
            assert!(!is_weak_pin(p), "{p}");
        }
        assert!(is_weak_pin(""));
        assert!(is_weak_pin("12a4"));
        for len in 4..=12 {
            for _ in 0..50 {
                let p = random_pin(len, true).unwrap();
                assert_eq!(p.len(), len);
                assert!(p.bytes().all(|c| c.is_ascii_digit()));
                assert!(!is_weak_pin(&p));
            }
        }
        assert!(random_pin(3, false).is_err());
        assert!(random_pin(13, false).is_err());
    }
}

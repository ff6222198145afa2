//! Values of the payment operations ([`crate::Hsm::derive_icc_master_key`], [`crate::Hsm::cvv`],
//! [`crate::Hsm::generate_pin`], [`crate::Hsm::translate_pin_block`],
//! [`crate::Hsm::generate_icc_rsa_key`]) and the checks of their inputs that need no key. The
//! checks run before any key is touched, so bad input gets the same [`crate::HsmError::Misuse`]
//! from every module; messages never contain a PAN, a PIN or key bytes.

use crate::types::{Kcv, RsaPublic, WrappedKey};
use quill_crypto::digest::{HashAlg, digest};

/// An EMV ICC master key derived inside the HSM, encrypted for the card output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedKey {
    /// 3DES-ECB of the 16-byte key (odd parity) under the transport key (CPS DGI 8000 content).
    pub encrypted: Vec<u8>,
    /// KCV of the derived key (first 3 bytes of 3DES-ECB(key, 0⁸)).
    pub kcv: Kcv,
}

/// How a generated PIN is made verifiable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinVerification {
    /// No verification value.
    None,
    /// Visa PVV (4 digits) with a TDES PVK and a PVKI digit 0–9.
    VisaPvv {
        /// PIN verification key (DES2/DES3).
        pvk: WrappedKey,
        /// PIN verification key index, 0–9.
        pvki: u8,
    },
    /// IBM 3624 offset (as many digits as the PIN).
    Ibm3624 {
        /// PIN verification key (DES2/DES3).
        pvk: WrappedKey,
        /// Decimalisation table: 16 decimal digits (`"0123456789012345"`).
        decimalisation: String,
        /// First PAN digit of the validation data (0-based).
        start: u8,
        /// Number of PAN digits in the validation data (1–16).
        length: u8,
        /// Pad nibble (0–15) filling the validation data to 16 hex digits.
        pad: u8,
    },
}

/// A request for a random PIN generated inside the HSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRequest {
    /// Key the PIN block comes out under (TDES for formats 0–3, AES for format 4): a PIN mailer
    /// key, a DEK, a zone PIN key.
    pub pin_key: WrappedKey,
    /// ISO 9564-1 PIN block format, 0–4.
    pub format: u8,
    /// PIN length, 4–12.
    pub pin_length: u8,
    /// Exclude weak PINs (one digit repeated, runs, `1122`, a short list).
    pub exclude_weak: bool,
    /// PAN (12–19 digits): bound into formats 0, 3 and 4, and the PVV/offset input.
    pub pan: String,
    /// PVV, IBM 3624 offset, or none.
    pub verification: PinVerification,
}

/// A generated PIN: never in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedPin {
    /// The ISO 9564 PIN block (8 bytes, 16 for format 4) encrypted under the request's PIN key.
    pub encrypted_block: Vec<u8>,
    /// The PVV (4 digits) or IBM 3624 offset (PIN length digits); empty with
    /// [`PinVerification::None`].
    pub pvv_or_offset: String,
}

/// Padding of each ICC RSA CRT component before encryption (the component is first left-padded
/// with zeros to half the modulus length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrtPadding {
    /// None: half the modulus must be a multiple of 8 bytes.
    None,
    /// ISO/IEC 9797-1 method 2 (`80 00..`, always added), as PBOC DGIs 8201–8205.
    #[default]
    Iso9797Method2,
    /// Zeros up to a multiple of 8 bytes.
    Zeros,
}

impl CrtPadding {
    /// hsm-sim's `padding` byte.
    pub(crate) fn code(self) -> u8 {
        match self {
            CrtPadding::None => 0,
            CrtPadding::Iso9797Method2 => 1,
            CrtPadding::Zeros => 2,
        }
    }

    /// `v` padded to a multiple of `bs` (`None` when no padding was asked and `v` does not fit).
    pub(crate) fn apply(self, v: &[u8], bs: usize) -> Option<Vec<u8>> {
        let mut d = v.to_vec();
        match self {
            CrtPadding::None => return d.len().is_multiple_of(bs).then_some(d),
            CrtPadding::Iso9797Method2 => d.push(0x80),
            CrtPadding::Zeros => {}
        }
        while !d.len().is_multiple_of(bs) {
            d.push(0);
        }
        Some(d)
    }
}

/// An ICC RSA key pair generated inside the HSM: the public key, and the private key's CRT
/// components encrypted under the transport key. The private key itself is destroyed in the HSM
/// (data preparation needs it only for the card).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IccKeyPair {
    /// Modulus and public exponent.
    pub public: RsaPublic,
    /// `p`, `q`, `dp`, `dq`, `qinv`, each left-padded to half the modulus length, padded as asked
    /// and 3DES-ECB encrypted under the transport key (CPS DGIs 8201–8205 content).
    pub crt: [Vec<u8>; 5],
}

// ---- checks that need no key -------------------------------------------------------------------

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A PAN: 12–19 decimal digits.
pub(crate) fn check_pan(pan: &str) -> Result<(), String> {
    if !(12..=19).contains(&pan.len()) || !all_digits(pan) {
        let what = if all_digits(pan) { format!("{} digits", pan.len()) } else { "not only decimal digits".to_owned() };
        return Err(format!("the PAN must be 12 to 19 decimal digits ({what})"));
    }
    Ok(())
}

/// A PAN sequence number: exactly 2 decimal digits.
pub(crate) fn check_psn(psn: &str) -> Result<(), String> {
    if psn.len() != 2 || !all_digits(psn) {
        return Err(format!("the PAN sequence number must be 2 decimal digits (\"00\" when absent), got {psn:?}"));
    }
    Ok(())
}

/// `n` decimal digits named `what`.
pub(crate) fn check_digits(value: &str, n: usize, what: &str) -> Result<(), String> {
    if value.len() != n || !all_digits(value) {
        return Err(format!("the {what} must be {n} decimal digits, got {value:?}"));
    }
    Ok(())
}

/// An ISO 9564-1 PIN block format, 0–4.
pub(crate) fn check_format(format: u8) -> Result<(), String> {
    if format > 4 {
        return Err(format!("PIN block format {format} does not exist (ISO 9564-1 formats 0 to 4)"));
    }
    Ok(())
}

/// EMV Book 2 A1.4: the 8 bytes Y enciphered (with Y ⊕ FF…) under the IMK. Option A (PAN ≤ 16
/// digits): the rightmost 16 digits of PAN ‖ PSN; Option B (longer PANs): the decimalised SHA-1
/// of PAN ‖ PSN. Y is not secret (PAN and PSN are the inputs).
pub(crate) fn emv_y(pan: &str, psn: &str) -> [u8; 8] {
    let x: Vec<u8> = pan.bytes().chain(psn.bytes()).map(|c| c - b'0').collect();
    let nibbles: Vec<u8> = if pan.len() <= 16 {
        let mut n = vec![0u8; 16usize.saturating_sub(x.len())];
        n.extend_from_slice(&x[x.len().saturating_sub(16)..]);
        n
    } else {
        let mut padded = Vec::with_capacity(x.len() + 1);
        if x.len() % 2 == 1 {
            padded.push(0);
        }
        padded.extend_from_slice(&x);
        let bcd: Vec<u8> = padded.chunks(2).map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(0)).collect();
        let h: Vec<u8> = digest(HashAlg::Sha1, &bcd).iter().flat_map(|b| [b >> 4, b & 0x0F]).collect();
        h.iter().filter(|v| **v < 10).copied().chain(h.iter().filter(|v| **v >= 10).map(|v| v - 10)).take(16).collect()
    };
    let mut y = [0u8; 8];
    for (o, p) in y.iter_mut().zip(nibbles.chunks(2)) {
        *o = (p[0] << 4) | p[1];
    }
    y
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn y_for_both_options_matches_the_reference_derivation() {
        let imk = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
        for (pan, psn) in [("12345678901234567", "01"), ("4761739001010010", "00"), ("476173900101", "00")] {
            let y = emv_y(pan, psn);
            let want = quill_crypto::payment::emv_option_b(&imk, pan, psn).unwrap();
            let mut yy = y.to_vec();
            yy.extend(y.iter().map(|b| b ^ 0xFF));
            let mut got = quill_crypto::sym::des3_ecb_encrypt(&imk, &yy).unwrap();
            quill_crypto::sym::set_odd_parity(&mut got);
            assert_eq!(got, want.to_vec(), "{pan}");
        }
    }

    #[test]
    fn input_checks() {
        assert!(check_pan("4123456789012345").is_ok());
        assert!(check_pan("41234567890A2345").unwrap_err().contains("not only decimal digits"));
        assert!(check_pan("12345").unwrap_err().contains("5 digits"));
        assert!(check_psn("1").is_err());
        assert!(check_psn("01").is_ok());
        assert!(check_format(5).is_err());
        assert_eq!(CrtPadding::Iso9797Method2.apply(&[1; 8], 8).unwrap().len(), 16);
        assert_eq!(CrtPadding::None.apply(&[1; 7], 8), None);
    }
}

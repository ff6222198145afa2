//! EMV ODA certificates: the scheme test issuer-certificate files (testdata/scheme-test-certs),
//! and round trips with OpenSSL-generated CA, issuer and ICC keys, each result recovered twice:
//! by this crate and independently with OpenSSL's raw RSA public operation, checked by hand here.

use openssl::bn::BigNum;
use openssl::pkey::{Private, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sha::sha1;
use quill_prep::emv::cert::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The issuer (or CA) private key in software, standing in for the HSM's CKM_RSA_X_509.
struct OpensslSigner(Rsa<Private>);

impl RawRsaSigner for OpensslSigner {
    type Error = openssl::error::ErrorStack;

    fn sign_raw(&self, block: &[u8]) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0; self.0.size() as usize];
        let len = self.0.private_encrypt(block, &mut out, Padding::NONE)?;
        out.truncate(len);
        Ok(out)
    }

    fn modulus_len(&self) -> usize {
        self.0.size() as usize
    }
}

fn keygen(bits: u32, e: u32) -> Rsa<Private> {
    let e = BigNum::from_u32(e).expect("bn");
    Rsa::generate_with_e(bits, &e).expect("openssl keygen")
}

fn public(k: &Rsa<Private>) -> RsaPublicKey {
    RsaPublicKey::new(&k.n().to_vec(), &k.e().to_vec()).expect("EMV-shaped key")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/scheme-test-certs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Independent recovery: OpenSSL's raw public operation, then the frame and hash checked by hand
/// from the layout in emv.md §1.4-1.6. Returns the recovered block.
fn openssl_recover(n: &[u8], e: &[u8], sig: &[u8], format: u8, hash_tail: &[&[u8]]) -> Vec<u8> {
    let key: Rsa<Public> =
        Rsa::from_public_components(BigNum::from_slice(n).expect("n"), BigNum::from_slice(e).expect("e")).expect("key");
    let mut m = vec![0; key.size() as usize];
    let len = key.public_decrypt(sig, &mut m, Padding::NONE).expect("raw public op");
    assert_eq!(len, n.len());
    let l = m.len();
    assert_eq!(m[0], 0x6A, "header");
    assert_eq!(m[1], format, "format");
    assert_eq!(m[l - 1], 0xBC, "trailer");
    let mut data = m[1..l - 21].to_vec();
    for t in hash_tail {
        data.extend_from_slice(t);
    }
    assert_eq!(sha1(&data), m[l - 21..l - 1], "hash");
    m
}

/// Rebuilds the certified modulus from a recovered format 02/04 block by hand.
fn certified_modulus(m: &[u8], head: usize, remainder: &[u8]) -> Vec<u8> {
    let key_len = m[head - 2] as usize;
    let space = m.len() - head - 21;
    if key_len <= space {
        assert!(remainder.is_empty());
        assert!(m[head + key_len..head + space].iter().all(|&b| b == 0xBB), "padding");
        m[head..head + key_len].to_vec()
    } else {
        [&m[head..head + space], remainder].concat()
    }
}

fn test_cas() -> CaKeyStore {
    CaKeyStore::with_scheme_test_keys().expect("built-in test CA keys")
}

// ---------------------------------------------------------------------------------------------
// Scheme test files
// ---------------------------------------------------------------------------------------------

#[test]
fn visa_test_file_960097_i94_imports_and_verifies() {
    let f = import_issuer_file(IssuerFileLayout::Visa, &fixture("960097.I94"), &test_cas()).expect("verifies");
    let c = &f.certificate;
    assert_eq!(c.rid(), RID_VISA);
    assert_eq!(c.ca_index(), 0x94);
    assert_eq!(c.issuer_id().to_string(), "42158493");
    assert_eq!(c.expiry().to_string(), "1232");
    assert_eq!(hex::encode_upper(c.serial()), "03FE66");
    assert_eq!(c.issuer_modulus().len(), 176);
    assert_eq!(c.exponent(), [3]);
    assert_eq!(c.cert().len(), 248);
    assert!(c.remainder().is_empty(), "176 <= 248 - 36: no 92");
    assert!(f.detached_signature_verified);
    assert_eq!(f.service_id, Some([0x10, 0x10, 0x00, 0x00]));
    c.check_pan("4215849312345678").expect("BIN matches");
    assert!(c.check_pan("4215849412345678").is_err());
}

#[test]
fn mastercard_test_file_522230_cef_imports_and_verifies() {
    let f =
        import_issuer_file(IssuerFileLayout::Mastercard, &fixture("522230-000001.cEF"), &test_cas()).expect("verifies");
    let c = &f.certificate;
    assert_eq!(c.rid(), RID_MASTERCARD);
    assert_eq!(c.ca_index(), 0xEF);
    assert_eq!(c.issuer_id().to_string(), "522230FF");
    assert_eq!(c.issuer_id().digits(), "522230");
    assert_eq!(c.expiry().to_string(), "1232");
    assert_eq!(hex::encode_upper(c.serial()), "073459");
    assert_eq!(hex::encode_upper(f.file_serial), "000001");
    assert_eq!(c.issuer_modulus().len(), 176);
    assert_eq!(c.exponent(), [3]);
    assert!(!f.detached_signature_verified);
}

#[test]
fn visa_test_file_016510_i04_is_refused_for_its_unknown_ca_key() {
    let err =
        import_issuer_file(IssuerFileLayout::Visa, &fixture("016510.I04"), &test_cas()).expect_err("CA 04 unknown");
    assert!(matches!(err, CertError::UnknownCaKey { index: 0x04, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "no CA public key A000000003/04 is held: import it before importing certificates it signed"
    );
}

#[test]
fn test_files_recover_independently_with_openssl() {
    let cas = test_cas();
    // Visa: 18-byte header, certificate, detached signature.
    let visa = fixture("960097.I94");
    let ca = cas.get(RID_VISA, 0x94).expect("held").public_key();
    let cert = &visa[18..18 + 248];
    let m = openssl_recover(ca.modulus(), ca.exponent(), cert, 0x02, &[&[], &[3]]);
    assert_eq!(hex::encode_upper(&m[2..11]), "42158493123203FE66");
    let f = import_issuer_file(IssuerFileLayout::Visa, &visa, &cas).expect("verifies");
    assert_eq!(certified_modulus(&m, 15, &[]), f.certificate.issuer_modulus());
    // Detached signature, by hand: PKCS#1 v1.5 (OpenSSL's own padding check) over header ‖ plaintext.
    let key = Rsa::from_public_components(
        BigNum::from_slice(ca.modulus()).expect("n"),
        BigNum::from_slice(ca.exponent()).expect("e"),
    )
    .expect("key");
    let mut di = vec![0; 248];
    let len = key.public_decrypt(&visa[18 + 248..], &mut di, Padding::PKCS1).expect("PKCS#1 v1.5 block");
    let digest = sha1(&[&visa[..18], &m[..]].concat());
    assert_eq!(di[..len], [&hex::decode("3021300906052B0E03021A05000414").expect("hex")[..], &digest].concat());
    // Mastercard: 8-byte header, exponent 03, certificate.
    let mc = fixture("522230-000001.cEF");
    let ca = cas.get(RID_MASTERCARD, 0xEF).expect("held").public_key();
    let m = openssl_recover(ca.modulus(), ca.exponent(), &mc[9..], 0x02, &[&[], &[3]]);
    assert_eq!(hex::encode_upper(&m[2..11]), "522230FF1232073459");
}

#[test]
fn damaged_test_files_are_refused_with_the_field_named() {
    let cas = test_cas();
    let visa = fixture("960097.I94");
    let import = |b: &[u8]| import_issuer_file(IssuerFileLayout::Visa, b, &cas).expect_err("refused").to_string();
    let flip = |i: usize| {
        let mut b = visa.clone();
        b[i] ^= 0x01;
        b
    };
    // A flipped certificate byte: the block recovers to garbage.
    let e = import(&flip(100));
    assert!(e.starts_with("Issuer Public Key Certificate (90): recovered data"), "{e}");
    // A flipped detached-signature byte.
    let e = import(&flip(400));
    assert!(e.starts_with("issuer file (Visa layout): detached signature:"), "{e}");
    // The header's issuer identifier disagrees with the certificate.
    assert_eq!(
        import(&flip(8)),
        "issuer file (Visa layout): issuer identifier is 42158492 in the file but 42158493 in the certificate"
    );
    // The header's exponent: the certificate hash covers 9F32.
    assert_eq!(
        import(&flip(16)),
        "Issuer Public Key Certificate (90): hash does not match the recovered data (wrong remainder, exponent or static data?)"
    );
    // Truncated.
    let e = import(&visa[..300]);
    assert!(e.contains("certificate and detached signature: 282 bytes after the header, expected 2 x 248"), "{e}");
    let e = import(&visa[..7]);
    assert!(e.contains("issuer identifier: file ends"), "{e}");
    // A Mastercard file read as Visa.
    let e = import(&fixture("522230-000001.cEF"));
    assert_eq!(e, "issuer file (Visa layout): header: 52, expected 24");
    // Mastercard: flipped certificate byte, wrong header issuer id.
    let mc = fixture("522230-000001.cEF");
    let mut b = mc.clone();
    b[200] ^= 0x80;
    assert!(import_issuer_file(IssuerFileLayout::Mastercard, &b, &cas).is_err());
    let mut b = mc.clone();
    b[2] = 0x31;
    let e = import_issuer_file(IssuerFileLayout::Mastercard, &b, &cas).expect_err("refused").to_string();
    assert_eq!(
        e,
        "issuer file (Mastercard layout): issuer identifier is 522231FF in the file but 522230FF in the certificate"
    );
}

#[test]
fn an_imported_ca_key_is_used_for_files_it_signed() {
    // A made-up Visa CA key 04 lets the I04 file get as far as recovery, where it fails: the key
    // is not the one that signed it. (The real test CA key 04 is not in the reference.)
    let mut cas = test_cas();
    let fake = keygen(1984, 3);
    cas.insert(CaPublicKey::new(RID_VISA, 0x04, &fake.n().to_vec(), &[3]).expect("key")).expect("insert");
    let err = import_issuer_file(IssuerFileLayout::Visa, &fixture("016510.I04"), &cas).expect_err("wrong key");
    assert!(
        matches!(err, CertError::Header { .. } | CertError::Trailer { .. } | CertError::NotBelowModulus { .. }),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Round trips with generated keys
// ---------------------------------------------------------------------------------------------

const RID_TEST: Rid = [0xA0, 0x00, 0x00, 0x09, 0x99];

/// Static data as the caller would assemble it (two records without 70, then the AIP).
fn static_data() -> Vec<u8> {
    hex::decode("5A0847617300003047505F24033012315F280208409F0702FF008E0C000000000000000002031F005800").expect("hex")
}

struct Case {
    ca_bits: u32,
    issuer_bits: u32,
    issuer_e: u32,
    icc_bits: u32,
    icc_e: u32,
}

fn round_trip(c: &Case) {
    let label =
        format!("CA {} / issuer {} e={} / ICC {} e={}", c.ca_bits, c.issuer_bits, c.issuer_e, c.icc_bits, c.icc_e);
    let ca_priv = keygen(c.ca_bits, 3);
    let ca = CaPublicKey::new(RID_TEST, 0x01, &ca_priv.n().to_vec(), &[3]).expect("CA key");
    let mut cas = CaKeyStore::new();
    cas.insert(ca.clone()).expect("insert");
    let issuer_priv = keygen(c.issuer_bits, c.issuer_e);
    let issuer_pub = public(&issuer_priv);
    let icc_priv = keygen(c.icc_bits, c.icc_e);
    let icc_pub = public(&icc_priv);
    let sd = static_data();

    // Issuer certificate by the test CA.
    let req = IssuerCertificateRequest {
        issuer_id: IssuerId::from_digits("476173").expect("id"),
        expiry: CertExpiry::new(12, 30).expect("expiry"),
        serial: [0x00, 0x12, 0x34],
        issuer_key: &issuer_pub,
    };
    let ic = build_issuer_certificate(&OpensslSigner(ca_priv), &ca, &req).expect("issuer cert");
    let n_ca = (c.ca_bits / 8) as usize;
    let n_i = (c.issuer_bits / 8) as usize;
    let n_ic = (c.icc_bits / 8) as usize;
    assert_eq!(ic.cert().len(), n_ca, "{label}");
    assert_eq!(ic.remainder().len(), n_i.saturating_sub(n_ca - 36), "{label}: 92 length");
    let back =
        IssuerCertificate::recover(&cas, RID_TEST, 0x01, ic.cert(), ic.remainder(), ic.exponent()).expect(&label);
    assert_eq!(back, ic, "{label}");
    let m = openssl_recover(ca.public_key().modulus(), &[3], ic.cert(), 0x02, &[ic.remainder(), ic.exponent()]);
    assert_eq!(hex::encode_upper(&m[2..11]), "476173FF1230001234", "{label}");
    assert_eq!(m[13] as usize, n_i, "{label}");
    assert_eq!(certified_modulus(&m, 15, ic.remainder()), issuer_priv.n().to_vec(), "{label}");

    // ICC certificate by the issuer.
    let req = IccCertificateRequest {
        pan: "4761730000304750",
        expiry: CertExpiry::new(12, 29).expect("expiry"),
        serial: [0x01, 0x02, 0x03],
        icc_key: &icc_pub,
        static_data: &sd,
    };
    let signer = OpensslSigner(issuer_priv);
    let icc = build_icc_certificate(&signer, ic.issuer_key(), &req).expect(&label);
    assert_eq!(icc.cert.len(), n_i, "{label}");
    assert_eq!(icc.remainder.len(), n_ic.saturating_sub(n_i - 42), "{label}: 9F48 length");
    assert_eq!(icc.exponent, icc_pub.exponent(), "{label}");
    let rec = recover_icc_certificate(ic.issuer_key(), &icc, &sd).expect(&label);
    assert_eq!(rec.pan, "4761730000304750");
    assert_eq!(rec.expiry.to_string(), "1229");
    assert_eq!(rec.serial, [1, 2, 3]);
    assert_eq!(rec.icc_key, icc_pub, "{label}");
    let m = openssl_recover(ic.issuer_modulus(), ic.exponent(), &icc.cert, 0x04, &[&icc.remainder, &icc.exponent, &sd]);
    assert_eq!(hex::encode_upper(&m[2..19]), "4761730000304750FFFF12290102030101", "{label}");
    assert_eq!(m[19] as usize, n_ic);
    assert_eq!(m[20] as usize, icc.exponent.len());
    assert_eq!(certified_modulus(&m, 21, &icc.remainder), icc_priv.n().to_vec(), "{label}");

    // Signed Static Application Data.
    let ssad = build_signed_static_data(&signer, ic.issuer_key(), [0xDA, 0xC1], &sd).expect(&label);
    assert_eq!(ssad.len(), n_i);
    assert_eq!(recover_signed_static_data(ic.issuer_key(), &ssad, &sd).expect(&label), [0xDA, 0xC1]);
    let m = openssl_recover(ic.issuer_modulus(), ic.exponent(), &ssad, 0x03, &[&sd]);
    assert_eq!(m[2..5], [0x01, 0xDA, 0xC1]);
    assert!(m[5..n_i - 21].iter().all(|&b| b == 0xBB), "{label}: pad pattern");

    // Each element fails when damaged.
    let mut sd2 = sd.clone();
    sd2[3] ^= 1;
    assert!(matches!(recover_icc_certificate(ic.issuer_key(), &icc, &sd2), Err(CertError::Hash { .. })), "{label}");
    assert!(matches!(recover_signed_static_data(ic.issuer_key(), &ssad, &sd2), Err(CertError::Hash { .. })));
    let mut bad = icc.clone();
    bad.cert[n_i / 2] ^= 0x04;
    assert!(recover_icc_certificate(ic.issuer_key(), &bad, &sd).is_err(), "{label}");
    let mut bad = icc.clone();
    bad.exponent = if bad.exponent == [3] { vec![1, 0, 1] } else { vec![3] };
    assert!(recover_icc_certificate(ic.issuer_key(), &bad, &sd).is_err(), "{label}");
    if !icc.remainder.is_empty() {
        let mut bad = icc.clone();
        bad.remainder[0] ^= 1;
        assert!(matches!(recover_icc_certificate(ic.issuer_key(), &bad, &sd), Err(CertError::Hash { .. })));
    }
    let mut bad = ssad.clone();
    bad[0] ^= 0x01;
    assert!(recover_signed_static_data(ic.issuer_key(), &bad, &sd).is_err());
    // A format-03 block is not a format-04 certificate and vice versa.
    let as_cert = IccCertificate { cert: ssad.clone(), remainder: vec![], exponent: vec![3] };
    assert!(matches!(
        recover_icc_certificate(ic.issuer_key(), &as_cert, &sd),
        Err(CertError::Format { found: 0x03, expected: 0x04, .. })
    ));
    assert!(matches!(
        recover_signed_static_data(ic.issuer_key(), &icc.cert, &sd),
        Err(CertError::Format { found: 0x04, expected: 0x03, .. })
    ));
}

#[test]
fn round_trip_1984_issuer_with_remainders_both_levels() {
    // 92: 248 - 212 = 36 bytes; 9F48: 248 - 206 = 42 bytes.
    round_trip(&Case { ca_bits: 1984, issuer_bits: 1984, issuer_e: 3, icc_bits: 1984, icc_e: 65537 });
}

#[test]
fn round_trip_short_keys_padded_with_bb() {
    // Issuer 176 bytes fits 212: BB padding; ICC 128 bytes fits 176 - 42 = 134: BB padding.
    round_trip(&Case { ca_bits: 1984, issuer_bits: 1408, issuer_e: 65537, icc_bits: 1024, icc_e: 3 });
}

#[test]
fn round_trip_odd_sizes() {
    round_trip(&Case { ca_bits: 1408, issuer_bits: 1152, issuer_e: 3, icc_bits: 1152, icc_e: 3 });
    round_trip(&Case { ca_bits: 1152, issuer_bits: 1152, issuer_e: 65537, icc_bits: 1024, icc_e: 65537 });
    round_trip(&Case { ca_bits: 1152, issuer_bits: 1024, issuer_e: 3, icc_bits: 1024, icc_e: 3 });
    round_trip(&Case { ca_bits: 1984, issuer_bits: 1984, issuer_e: 65537, icc_bits: 1408, icc_e: 3 });
}

#[test]
fn exact_fit_has_no_padding_and_no_remainder() {
    // N_IC = N_I - 42: the modulus fills the field exactly (1408-bit issuer, 134-byte ICC key = 1072 bits).
    round_trip(&Case { ca_bits: 1984, issuer_bits: 1408, issuer_e: 3, icc_bits: 1072, icc_e: 3 });
}

#[test]
fn a_signer_with_the_wrong_key_is_caught_when_building() {
    let issuer = public(&keygen(1152, 3));
    let wrong = OpensslSigner(keygen(1152, 3));
    let icc_pub = public(&keygen(1024, 3));
    let sd = static_data();
    let req = IccCertificateRequest {
        pan: "4761730000304750",
        expiry: CertExpiry::new(12, 29).expect("expiry"),
        serial: [0, 0, 1],
        icc_key: &icc_pub,
        static_data: &sd,
    };
    let err = build_icc_certificate(&wrong, &issuer, &req).expect_err("wrong signer");
    assert!(matches!(err, BuildError::SelfCheck { .. }), "{err:?}");
    assert!(err.to_string().starts_with("ICC Public Key Certificate (9F46): signature does not verify"), "{err}");
    let err = build_signed_static_data(&wrong, &issuer, [0, 0], &sd).expect_err("wrong signer");
    assert!(matches!(err, BuildError::SelfCheck { .. }), "{err:?}");
    // A signer whose modulus length differs from the public key.
    let err = build_signed_static_data(&OpensslSigner(keygen(1024, 3)), &issuer, [0, 0], &sd).expect_err("length");
    assert_eq!(
        err.to_string(),
        "Signed Static Application Data (93): the signer's modulus is 128 bytes but its public key is 144 bytes"
    );
}

#[test]
fn bad_inputs_are_refused_when_building() {
    let issuer_priv = keygen(1024, 3);
    let issuer = public(&issuer_priv);
    let signer = OpensslSigner(issuer_priv);
    let icc_pub = public(&keygen(1152, 3));
    let sd = static_data();
    let mut req = IccCertificateRequest {
        pan: "4761730000304750",
        expiry: CertExpiry::new(12, 29).expect("expiry"),
        serial: [0, 0, 1],
        icc_key: &icc_pub,
        static_data: &sd,
    };
    let err = build_icc_certificate(&signer, &issuer, &req).expect_err("ICC key longer than issuer key");
    assert!(err.to_string().contains("certified key (144 bytes) is longer than the signer's (128 bytes)"), "{err}");
    let small = public(&keygen(1024, 3));
    req.icc_key = &small;
    req.pan = "47617300003047X0";
    let err = build_icc_certificate(&signer, &issuer, &req).expect_err("bad PAN");
    assert_eq!(err.to_string(), "Application PAN (5A): PAN must be 12-19 digits, got 16 characters");
    req.pan = "4761730000304750123";
    let icc = build_icc_certificate(&signer, &issuer, &req).expect("19-digit PAN");
    assert_eq!(recover_icc_certificate(&issuer, &icc, &sd).expect("recovers").pan, "4761730000304750123");
}

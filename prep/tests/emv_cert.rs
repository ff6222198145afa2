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

/// The UnionPay TEST CA public key, index 04, e = 3 (fixtures/scheme-test-certs/README.md).
const UNIONPAY_TEST_CA_04: &str = "BC853E6B5365E89E7EE9317C94B02D0ABB0DBD91C05A224A2554AA29ED9FCB9D86EB9CCBB322A57811F86188AAC7351C72BD9EF196C5A01ACEF7A4EB0D2AD63D9E6AC2E7836547CB1595C68BCBAFD0F6728760F3A7CA7B97301B7E0220184EFC4F653008D93CE098C0D93B45201096D1ADFF4CF1F9FC02AF759DA27CD6DFD6D789B099F16F378B6100334E63F3D35F3251A5EC78693731F5233519CDB380F5AB8C0F02728E91D469ABD0EAE0D93B1CC66CE127B29C7D77441A49D09FCA5D6D9762FC74C31BB506C8BAE3C79AD6C2578775B95956B5370D1D0519E37906B384736233251E8F09AD79DFBE2C6ABFADAC8E4D8624318C27DAF1";

#[test]
fn unionpay_test_file_016510_i04_verifies_with_its_ca_key_and_padding() {
    let file = fixture("016510.I04");
    let modulus = hex::decode(UNIONPAY_TEST_CA_04).expect("hex");
    // Refused until the UnionPay CA key is held.
    let err = import_issuer_file(IssuerFileLayout::UnionPay, &file, &test_cas()).expect_err("CA unknown");
    assert!(matches!(err, CertError::UnknownCaKey { index: 0x04, .. }), "{err:?}");
    let mut cas = test_cas();
    cas.insert(CaPublicKey::new(RID_UNIONPAY, 0x04, &modulus, &[3]).expect("key")).expect("insert");
    let f = import_issuer_file(IssuerFileLayout::UnionPay, &file, &cas).expect("verifies");
    let c = &f.certificate;
    assert_eq!(c.rid(), RID_UNIONPAY);
    assert_eq!(c.issuer_id().digits(), "62441902");
    assert_eq!(c.expiry().to_string(), "1231");
    assert_eq!(hex::encode_upper(c.serial()), "016510");
    assert_eq!(c.issuer_modulus().len(), 176);
    assert_eq!(c.exponent(), [3]);
    assert_eq!(f.service_id, Some([0x01, 0x01, 0x00, 0x00]));
    assert!(f.detached_signature_verified);

    // The padding, recovered by OpenSSL (no padding check): 00 01, 224 x FF, 00, 01, SHA-1 of
    // the 18-byte header and the recovered certificate; no DigestInfo.
    let key = Rsa::from_public_components(BigNum::from_slice(&modulus).expect("n"), BigNum::from_u32(3).expect("e"))
        .expect("key");
    let mut block = vec![0; 248];
    key.public_decrypt(&file[18 + 248..], &mut block, Padding::NONE).expect("raw");
    let m = openssl_recover(&modulus, &[3], &file[18..18 + 248], 0x02, &[&[], &[3]]);
    let digest = sha1(&[&file[..18], &m[..]].concat());
    let expected = [&[0x00, 0x01][..], &[0xFF; 224], &[0x00, 0x01], &digest].concat();
    assert_eq!(block, expected);

    // Each scheme's padding and no other: the same file under the same key as a Visa file
    // (PKCS#1 v1.5 with DigestInfo expected) is refused at the detached signature.
    let mut as_visa = test_cas();
    as_visa.insert(CaPublicKey::new(RID_VISA, 0x04, &modulus, &[3]).expect("key")).expect("insert");
    let e = import_issuer_file(IssuerFileLayout::Visa, &file, &as_visa).expect_err("Visa padding").to_string();
    assert_eq!(
        e,
        "issuer file (Visa layout): detached signature: does not recover to the Visa layout's signature block with the CA key"
    );
    // And a Visa file read as UnionPay: under the UnionPay RID there is no Visa CA key 94.
    let e = import_issuer_file(IssuerFileLayout::UnionPay, &fixture("960097.I94"), &cas).expect_err("no key");
    assert!(matches!(e, CertError::UnknownCaKey { index: 0x94, .. }), "{e:?}");
    let mut visa_under_up = cas.clone();
    let visa94 = test_cas().get(RID_VISA, 0x94).expect("held").public_key().clone();
    visa_under_up
        .insert(CaPublicKey::new(RID_UNIONPAY, 0x94, visa94.modulus(), visa94.exponent()).expect("key"))
        .expect("insert");
    let e = import_issuer_file(IssuerFileLayout::UnionPay, &fixture("960097.I94"), &visa_under_up)
        .expect_err("UnionPay padding")
        .to_string();
    assert!(
        e.ends_with("detached signature: does not recover to the UnionPay layout's signature block with the CA key"),
        "{e}"
    );
    // A flipped byte of the detached signature.
    let mut bad = file.clone();
    bad[400] ^= 1;
    let e = import_issuer_file(IssuerFileLayout::UnionPay, &bad, &cas).expect_err("flipped").to_string();
    assert!(e.starts_with("issuer file (UnionPay layout): detached signature:"), "{e}");
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

// ---------------------------------------------------------------------------------------------
// The EMV CA's side: requests, certificate files, CA key files, revocation lists
// ---------------------------------------------------------------------------------------------

mod ca_side {
    use super::*;
    use quill_prep::emv::ca::*;

    const RID_Q: Rid = [0xA0, 0x00, 0x00, 0x09, 0x99];

    fn request(format: RequestFormat, issuer: &Rsa<Private>, id: &str, exp: &str) -> (IssuerRequest, Vec<u8>) {
        let e = hex::decode(exp).expect("hex");
        let req = IssuerRequest {
            format,
            issuer_id: IssuerId::from_digits(id).expect("id"),
            key_index: [0x00, 0x00, 0x07],
            expiry: CertExpiry::from_mmyy([e[0], e[1]]).expect("MMYY"),
            key: public(issuer),
        };
        let bytes = req.build(&OpensslSigner(issuer.clone())).expect("self-signed");
        (req, bytes)
    }

    /// A request is self-signed (recovered here by OpenSSL, by hand), parses back to itself, and
    /// its hash file binds the issuer id, key index and the request's SHA-1.
    #[test]
    fn requests_are_self_signed_and_parse_back() {
        let issuer = keygen(1408, 3);
        for format in [RequestFormat::Visa, RequestFormat::Mastercard] {
            let (req, bytes) = request(format, &issuer, "476173", "1230");
            assert_eq!(IssuerRequest::parse(format, &bytes).expect("parses"), req);
            let n = 176;
            let body = &bytes[..bytes.len() - n];
            if format == RequestFormat::Visa {
                assert_eq!(&body[..5], &[0x22, 0x10, 0x10, 0x00, 0x00]);
            }
            // The self-signature, recovered with the issuer's own public key: format 23, the
            // identifier, expiry and key index; the modulus's last 36 bytes are in the hash.
            let m = openssl_recover(
                &issuer.n().to_vec(),
                &[3],
                &bytes[bytes.len() - n..],
                0x23,
                &[&issuer.n().to_vec()[n - 36..], &[3]],
            );
            assert_eq!(hex::encode_upper(&m[2..11]), "476173FF1230000007");
            let hash = req.hash_file();
            assert_eq!(hash.len(), HASH_FILE_LEN);
            assert_eq!(hash[7..], sha1(body));
            req.check_hash_file(&hash).expect("its own hash file");
        }
    }

    /// Tampered requests are refused with the field named.
    #[test]
    fn tampered_requests_and_hash_files_are_refused() {
        let issuer = keygen(1152, 3);
        let (req, bytes) = request(RequestFormat::Mastercard, &issuer, "522230", "1229");
        let parse = |b: &[u8]| IssuerRequest::parse(RequestFormat::Mastercard, b).expect_err("refused").to_string();
        // The issuer id changed after signing.
        let mut b = bytes.clone();
        b[2] = 0x31;
        assert!(parse(&b).contains("self-signature"), "{}", parse(&b));
        // A modulus byte changed: the signature does not recover to a valid block.
        let mut b = bytes.clone();
        b[30] ^= 0x40;
        assert!(parse(&b).contains("self-signature"), "{}", parse(&b));
        // Signed by another key.
        let other = keygen(1152, 3);
        let forged = [req.body(), OpensslSigner(other).sign_raw(&[0x11; 144]).expect("sig")].concat();
        assert!(parse(&forged).contains("self-signature"), "{}", parse(&forged));
        // Truncated, or trailing bytes.
        assert!(parse(&bytes[..40]).contains("file ends"), "{}", parse(&bytes[..40]));
        let longer = [bytes.clone(), vec![0]].concat();
        assert!(parse(&longer).contains("1 bytes after the last field"), "{}", parse(&longer));
        // A Visa request read as Mastercard and the reverse.
        let (_, visa) = request(RequestFormat::Visa, &issuer, "522230", "1229");
        let e = IssuerRequest::parse(RequestFormat::Visa, &bytes).expect_err("no 22 header").to_string();
        assert!(e.contains("header"), "{e}");
        assert!(IssuerRequest::parse(RequestFormat::Mastercard, &visa).is_err());
        // Hash files: wrong issuer id, wrong key index, wrong hash, wrong length.
        let h = req.hash_file();
        let mut w = h.clone();
        w[0] = 0x42;
        assert!(req.check_hash_file(&w).expect_err("id").to_string().contains("issuer identifier"));
        let mut w = h.clone();
        w[6] = 0x08;
        assert!(req.check_hash_file(&w).expect_err("index").to_string().contains("issuer key index"));
        let mut w = h.clone();
        w[20] ^= 1;
        assert!(req.check_hash_file(&w).expect_err("hash").to_string().contains("request was changed"));
        assert!(req.check_hash_file(&h[..26]).expect_err("len").to_string().contains("26 bytes"));
    }

    /// The files the CA writes import with the scheme-file importer (each layout, each padding)
    /// under the CA's own RID, and their certificates recover independently with OpenSSL.
    #[test]
    fn certificate_files_round_trip_through_the_importer() {
        for (ca_bits, issuer_bits, issuer_e) in [(1984u32, 1408u32, 3u32), (1152, 1152, 65537), (1408, 1984 - 576, 3)] {
            let ca_key = keygen(ca_bits, 3);
            let ca = CaPublicKey::new(RID_Q, 0xE1, &ca_key.n().to_vec(), &[3]).expect("CA");
            let mut cas = CaKeyStore::new();
            cas.insert(ca.clone()).expect("held");
            let issuer = keygen(issuer_bits, issuer_e);
            let (req, _) = request(RequestFormat::Visa, &issuer, "476173", "1230");
            let (cert, files) =
                certificate_files(&OpensslSigner(ca_key.clone()), &ca, &req, [0x00, 0x00, 0x2A]).expect("files");
            assert_eq!(files.len(), 3);
            for f in &files {
                let got = import_issuer_file_as(f.layout, RID_Q, &f.bytes, &cas)
                    .unwrap_or_else(|e| panic!("{:?} ({ca_bits}/{issuer_bits}): {e}", f.layout));
                assert_eq!(got.certificate, cert, "{:?}", f.layout);
                assert_eq!(hex::encode_upper(got.certificate.serial()), "00002A");
                assert_eq!(got.certificate.issuer_key(), &req.key);
                // Each padding and no other: the Visa file read as UnionPay and the reverse.
                let other = match f.layout {
                    IssuerFileLayout::Visa => Some(IssuerFileLayout::UnionPay),
                    IssuerFileLayout::UnionPay => Some(IssuerFileLayout::Visa),
                    IssuerFileLayout::Mastercard => None,
                };
                if let Some(o) = other {
                    // Same header and certificate: only the detached signature's padding differs.
                    let e = import_issuer_file_as(o, RID_Q, &f.bytes, &cas).expect_err("other padding").to_string();
                    assert!(e.contains("detached signature: does not recover to the"), "{:?} as {o:?}: {e}", f.layout);
                }
            }
            let mc = files.iter().find(|f| f.layout == IssuerFileLayout::Mastercard).expect("mc");
            assert_eq!(mc.name, "476173-000007.cE1");
            assert_eq!(&mc.bytes[4..7], &[0, 0, 7], "the issuer's key index in the header");
            // Independent recovery of the certificate with OpenSSL.
            let m =
                openssl_recover(&ca_key.n().to_vec(), &[3], cert.cert(), 0x02, &[cert.remainder(), cert.exponent()]);
            assert_eq!(hex::encode_upper(&m[2..11]), "476173FF123000002A");
            assert_eq!(certified_modulus(&m, 15, cert.remainder()), issuer.n().to_vec());
        }
    }

    #[test]
    fn ca_key_files_carry_the_check_value() {
        let ca_key = keygen(1408, 3);
        let ca = CaPublicKey::new(RID_Q, 0xE1, &ca_key.n().to_vec(), &[3]).expect("CA");
        let expiry = CertExpiry::from_mmyy([0x12, 0x30]).expect("MMYY");
        let files = ca_key_files(&ca, expiry);
        let get = |suffix: &str| files.iter().find(|(n, _)| n.ends_with(suffix)).expect(suffix).1.clone();
        let (k, e) = parse_ca_key_file(&get(".visa"), None).expect("visa file");
        assert_eq!((k.checksum(), e), (ca.checksum(), expiry));
        let (k, _) = parse_ca_key_file(&get(".mc.key"), Some(&get(".mc.hash"))).expect("mc pair");
        assert_eq!(k.checksum(), ca.checksum());
        // The check value by hand: SHA-1(RID || index || modulus || exponent).
        assert_eq!(ca.checksum(), sha1(&[&RID_Q[..], &[0xE1][..], &ca_key.n().to_vec()[..], &[3][..]].concat()));
        // A modulus byte changed: the check value no longer matches.
        let mut bad = get(".visa");
        bad[30] ^= 1;
        let err = parse_ca_key_file(&bad, None).expect_err("check value").to_string();
        assert!(err.contains("check value"), "{err}");
    }

    #[test]
    fn revocation_lists_are_nine_byte_entries() {
        let list = [
            Revocation { rid: RID_Q, ca_index: 0xE1, serial: [0, 0, 1] },
            Revocation { rid: RID_VISA, ca_index: 0x94, serial: [0x03, 0xFE, 0x66] },
        ];
        let bytes = Revocation::format_list(&list);
        assert_eq!(hex::encode_upper(&bytes), "A000000999E1000001A00000000394 03FE66".replace(' ', ""));
        assert_eq!(Revocation::parse_list(&bytes).expect("parses"), list);
        assert!(Revocation::parse_list(&bytes[..17]).expect_err("len").to_string().contains("17 bytes"));
        let twice = [bytes.clone(), bytes[..9].to_vec()].concat();
        assert!(Revocation::parse_list(&twice).expect_err("dup").to_string().contains("entry 3"));
    }

    #[test]
    fn issuer_ranges() {
        let r = IssuerRange::parse("476100-476199").expect("range");
        assert!(r.contains(IssuerId::from_digits("476173").expect("id")));
        assert!(r.contains(IssuerId::from_digits("47617312").expect("id")));
        assert!(!r.contains(IssuerId::from_digits("476200").expect("id")));
        assert!(!r.contains(IssuerId::from_digits("4761").expect("id")), "shorter than the range");
        assert!(IssuerRange::parse("4761").expect("prefix").contains(IssuerId::from_digits("476173").expect("id")));
        for bad in ["", "12", "476199-476100", "4761-47619", "47a1", "123456789"] {
            assert!(IssuerRange::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Property-based (proptest, fresh random cases each run): what a hostile caller can hand the
    /// CA (requests, hash files, CA key files, certificate files of each layout, revocation lists,
    /// issuer ranges) never panics a parser, every refusal names its file and field in a bounded
    /// message, and a changed byte of a signed or checked file is never taken as other content.
    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;
        use std::sync::LazyLock;

        /// Valid files of every kind, made once (RSA key generation is the slow part).
        struct Files {
            req: IssuerRequest,
            cert: IssuerCertificate,
            cas: CaKeyStore,
            ca: CaPublicKey,
            /// (what, bytes): both request layouts, the three certificate files, the CA key files.
            signed: Vec<(String, Vec<u8>)>,
            hash_file: Vec<u8>,
            ca_mc_key: Vec<u8>,
            ca_mc_hash: Vec<u8>,
        }

        static FILES: LazyLock<Files> = LazyLock::new(|| {
            let issuer = keygen(1024, 3);
            let ca_key = keygen(1152, 3);
            let ca = CaPublicKey::new(RID_Q, 0xE1, &ca_key.n().to_vec(), &[3]).expect("CA");
            let mut cas = CaKeyStore::new();
            cas.insert(ca.clone()).expect("held");
            let (req, visa_req) = request(RequestFormat::Visa, &issuer, "476173", "1230");
            let (_, mc_req) = request(RequestFormat::Mastercard, &issuer, "476173", "1230");
            let (cert, files) = certificate_files(&OpensslSigner(ca_key), &ca, &req, [0, 0, 1]).expect("files");
            let ca_files = ca_key_files(&ca, CertExpiry::from_mmyy([0x12, 0x30]).expect("MMYY"));
            let get = |suffix: &str| ca_files.iter().find(|(n, _)| n.ends_with(suffix)).expect(suffix).1.clone();
            let mut signed = vec![("visa request".to_string(), visa_req), ("mastercard request".to_string(), mc_req)];
            signed.extend(files.iter().map(|f| (format!("{:?} certificate file", f.layout), f.bytes.clone())));
            signed.push(("CA key file (Visa layout)".to_string(), get(".visa")));
            Files {
                hash_file: req.hash_file(),
                req,
                cert,
                cas,
                ca,
                signed,
                ca_mc_key: get(".mc.key"),
                ca_mc_hash: get(".mc.hash"),
            }
        });

        /// A refusal names its file and field, and stays short whatever the input's size.
        fn named(e: &CaFileError) -> Result<(), TestCaseError> {
            prop_assert!(!e.file.is_empty() && !e.field.is_empty(), "{e:?}");
            prop_assert!(e.to_string().len() < 300, "an error of {} characters: {e}", e.to_string().len());
            Ok(())
        }

        fn named_cert(e: &CertError) -> Result<(), TestCaseError> {
            let text = e.to_string();
            prop_assert!(text.len() < 300, "an error of {} characters: {text}", text.len());
            prop_assert!(text.contains(':'), "no field named: {text}");
            Ok(())
        }

        /// Every parser on `input`; `changed`: the input is a valid file with something changed,
        /// so a request must be refused and a certificate or CA key file may only read back as
        /// the same content.
        fn every_parser(input: &[u8], changed: bool) -> Result<(), TestCaseError> {
            let f = &*FILES;
            for format in [RequestFormat::Visa, RequestFormat::Mastercard] {
                match IssuerRequest::parse(format, input) {
                    // Every byte of a request is fixed, checked or under its self-signature.
                    Ok(r) => prop_assert!(!changed || r != f.req || input.is_empty(), "a changed request parsed"),
                    Err(e) => named(&e)?,
                }
            }
            if let Err(e) = f.req.check_hash_file(input) {
                named(&e)?;
            }
            for hash in [None, Some(input), Some(&f.ca_mc_hash[..])] {
                match parse_ca_key_file(input, hash) {
                    Ok((k, _)) => prop_assert!(!changed || k == f.ca, "a changed CA key file named another key"),
                    Err(e) => named(&e)?,
                }
            }
            if let Err(e) = Revocation::parse_list(input) {
                named(&e)?;
            }
            for l in IssuerFileLayout::ALL {
                match import_issuer_file_as(l, RID_Q, input, &f.cas) {
                    // The Mastercard header's key index is outside the certificate, as in the
                    // schemes' files: a change there imports as the same certificate.
                    Ok(got) => prop_assert!(!changed || got.certificate == f.cert, "a changed {l:?} file imported"),
                    Err(e) => named_cert(&e)?,
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
            // PROPTEST_CASES, when set, runs more (or fewer) cases than the default here.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

            #[test]
            fn any_bytes_are_refused_with_the_field_named(input in prop::collection::vec(any::<u8>(), 0..700)) {
                every_parser(&input, false)?;
            }

            #[test]
            fn a_changed_file_is_refused_or_the_same(
                which in any::<Index>(),
                edits in prop::collection::vec((any::<Index>(), 1..=255u8), 1..4),
            ) {
                let (what, good) = which.get(&FILES.signed);
                let mut b = good.clone();
                for (at, x) in &edits {
                    b[at.index(good.len())] ^= x;
                }
                prop_assume!(&b != good);
                let _ = what;
                every_parser(&b, true)?;
            }

            #[test]
            fn a_cut_or_lengthened_file_is_refused(
                which in any::<Index>(),
                cut in any::<Index>(),
                tail in prop::collection::vec(any::<u8>(), 1..40),
            ) {
                let (what, good) = which.get(&FILES.signed);
                let short = &good[..cut.index(good.len())];
                let long = [&good[..], &tail[..]].concat();
                for b in [short, &long[..]] {
                    let f = &*FILES;
                    if what.ends_with("request") {
                        for format in [RequestFormat::Visa, RequestFormat::Mastercard] {
                            prop_assert!(IssuerRequest::parse(format, b).is_err(), "{what} of {} bytes parsed", b.len());
                        }
                    } else if what.starts_with("CA key") {
                        prop_assert!(parse_ca_key_file(b, None).is_err(), "{what} of {} bytes parsed", b.len());
                    } else {
                        for l in IssuerFileLayout::ALL {
                            prop_assert!(import_issuer_file_as(l, RID_Q, b, &f.cas).is_err(), "{what} of {} bytes as {l:?}", b.len());
                        }
                    }
                    every_parser(b, false)?;
                }
            }

            #[test]
            fn a_changed_ca_key_pair_is_refused_or_the_same(
                in_hash in any::<bool>(),
                at in any::<Index>(),
                x in 1..=255u8,
            ) {
                let f = &*FILES;
                let (mut key, mut hash) = (f.ca_mc_key.clone(), f.ca_mc_hash.clone());
                let target = if in_hash { &mut hash } else { &mut key };
                let i = at.index(target.len());
                target[i] ^= x;
                match parse_ca_key_file(&key, Some(&hash)) {
                    Ok((k, _)) => prop_assert_eq!(k, f.ca.clone(), "a changed pair named another key"),
                    Err(e) => named(&e)?,
                }
            }

            #[test]
            fn a_changed_hash_file_is_refused_with_the_field_named(
                edits in prop::collection::vec((any::<Index>(), 1..=255u8), 1..4),
                cut in any::<Index>(),
            ) {
                let f = &*FILES;
                let mut b = f.hash_file.clone();
                for (at, x) in &edits {
                    b[at.index(HASH_FILE_LEN)] ^= x;
                }
                prop_assume!(b != f.hash_file);
                let e = f.req.check_hash_file(&b).expect_err("a changed hash file was taken");
                named(&e)?;
                let e = f.req.check_hash_file(&f.hash_file[..cut.index(f.hash_file.len())]).expect_err("short");
                prop_assert_eq!(e.field, "length");
            }

            #[test]
            fn revocation_lists_round_trip_and_duplicates_are_named(
                entries in prop::collection::btree_set((any::<[u8; 5]>(), any::<u8>(), any::<[u8; 3]>()), 0..40),
                dup in any::<Index>(),
                extra in 1..9usize,
            ) {
                let list: Vec<Revocation> =
                    entries.iter().map(|&(rid, ca_index, serial)| Revocation { rid, ca_index, serial }).collect();
                let bytes = Revocation::format_list(&list);
                prop_assert_eq!(bytes.len(), 9 * list.len());
                prop_assert_eq!(Revocation::parse_list(&bytes).expect("a list it wrote"), list.clone());
                // Not a whole number of entries.
                let e = Revocation::parse_list(&[&bytes[..], &vec![0; extra][..]].concat()).expect_err("ragged");
                prop_assert_eq!(e.field, "length");
                // An entry listed twice: refused, naming the second one.
                if !list.is_empty() {
                    let twice = [&bytes[..], &dup.get(&list).bytes()[..]].concat();
                    let e = Revocation::parse_list(&twice).expect_err("duplicate");
                    prop_assert!(e.reason.contains(&format!("entry {} ", list.len() + 1)), "{e}");
                }
            }

            #[test]
            fn issuer_ranges_parse_or_say_why(s in "[0-9a-z\\- ]{0,20}|\\PC{0,12}") {
                if let Ok(r) = IssuerRange::parse(&s) {
                    prop_assert!(r.low.len() == r.high.len() && r.low <= r.high, "{r:?}");
                    prop_assert!(r.low.bytes().all(|b| b.is_ascii_digit()), "{r:?}");
                }
            }
        }

        /// A revocation list of 120,000 entries (a megabyte) parses in linear time: a hostile list
        /// cannot stall the CA with a quadratic duplicate check.
        #[test]
        fn a_long_revocation_list_parses() {
            let list: Vec<Revocation> = (0..120_000u32)
                .map(|i| {
                    let b = i.to_be_bytes();
                    Revocation { rid: RID_Q, ca_index: b[0], serial: [b[1], b[2], b[3]] }
                })
                .collect();
            let bytes = Revocation::format_list(&list);
            assert_eq!(Revocation::parse_list(&bytes).expect("parses").len(), 120_000);
        }
    }
}

//! TR-34-style establishment of a key-block protection key between two sites, without a
//! custodian travelling (see `docs/key-distribution.md`).
//!
//! - The **receiving device** (KRD, the production site) holds an RSA transport key in its HSM;
//!   its public half is certified by the receiving cluster's CA ([`check_krd_certificate`]), the
//!   CA whose SHA-256 the sending site registered with the target.
//! - The **key distribution host** (KDH, the key site) generates the KBPK in its HSM, wraps it
//!   there under the KRD's public key (RSA-OAEP) and signs the [`Envelope`] with its own RSA
//!   signing key, also in its HSM (PKCS#1 v1.5, SHA-256). The receiving site pinned that signing
//!   key for the partner beforehand (its SHA-256, compared out of band like a KCV).
//! - The KRD checks the signature, that the envelope is addressed to its transport key, fresh and
//!   not seen before, opens the key in its HSM, and compares the check value.
//!
//! This is the TR-34 protocol's shape (one-pass, KDH-signed, KRD-bound, with a nonce and a
//! time), not its CMS encoding: the envelope is JSON, signed as sent.

use serde::{Deserialize, Serialize};

use quill_crypto::digest::HashAlg;
use quill_crypto::rsa::{RsaEngine, RsaPublicKey};
use quill_hsm::{KeyAlg, RsaPublic};

/// The envelope format name.
pub const FORMAT: &str = "quill-kbpk-transport/1";

/// How old an envelope the receiving site takes: an hour (the time between the key site
/// making it and the push; clocks of the two sites are assumed within minutes).
pub const MAX_AGE_MS: u64 = 3_600_000;

/// How far in the future an envelope's time may be (clock difference between the sites).
pub const MAX_AHEAD_MS: u64 = 300_000;

/// The largest envelope or signature accepted (bytes): a 4096-bit blob in hex is ~1 KB.
pub const MAX_BYTES: usize = 8192;

/// What the key site signs and sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// [`FORMAT`].
    pub format: String,
    /// The target's name at the key site (for the receiving site's records).
    pub target: String,
    /// SHA-256 of the receiving transport key's SubjectPublicKeyInfo, upper-case hex.
    pub krd: String,
    /// SHA-256 of the signing key's SubjectPublicKeyInfo, upper-case hex.
    pub kdh: String,
    /// The key's algorithm: AES-256.
    pub alg: KeyAlg,
    /// Its TR-31 usage: `K1` (a key-block protection key).
    pub usage: String,
    /// Its check value.
    pub kcv: String,
    /// The key, RSA-OAEP (SHA-1, MGF1-SHA-1) under the KRD's transport key, hex.
    pub sealed: String,
    /// 16 random bytes, hex: an envelope is taken once.
    pub nonce: String,
    /// When the key site made it (ms since the epoch, its clock).
    pub issued_ms: u64,
}

/// Why an envelope is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("the envelope: {0}")]
    Envelope(String),
    #[error("the signature: {0}")]
    Signature(String),
    #[error("the transport key certificate: {0}")]
    Certificate(String),
}

impl Envelope {
    /// The bytes that are signed and sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A plain struct of strings and integers: serde_json does not fail on it.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse what arrived (strictly: no unknown field, the format, sizes and hex checked).
    pub fn parse(bytes: &[u8]) -> Result<Envelope, TransportError> {
        let bad = |m: String| TransportError::Envelope(m);
        if bytes.len() > MAX_BYTES {
            return Err(bad(format!("{} bytes; at most {MAX_BYTES}", bytes.len())));
        }
        // A value of the wrong type is reported with the field it is in.
        let e: Envelope =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes)).map_err(|x| {
                // serde names an unknown field in full, in the message and in the path: an
                // attacker's 8 KB name is not echoed.
                let cut = |mut t: String| {
                    if let Some((at, _)) = t.char_indices().nth(200) {
                        t.truncate(at);
                        t.push('…');
                    }
                    t
                };
                let why = cut(x.inner().to_string());
                match cut(x.path().to_string()) {
                    p if p == "." => bad(format!("not an envelope: {why}")),
                    p => bad(format!("field {p}: {why}")),
                }
            })?;
        if e.format != FORMAT {
            return Err(bad(format!("format {:?}, expected {FORMAT:?}", crate::domain::clip(&e.format))));
        }
        let hex_of = |field: &str, v: &str, len: Option<usize>| {
            let ok = v.bytes().all(|b| b.is_ascii_hexdigit()) && len.is_none_or(|n| v.len() == n) && !v.is_empty();
            if ok {
                Ok(())
            } else {
                Err(bad(format!("field {field}: {} hex digits expected", len.map_or("some".into(), |n| n.to_string()))))
            }
        };
        hex_of("krd", &e.krd, Some(64))?;
        hex_of("kdh", &e.kdh, Some(64))?;
        // TDES and AES-KCV-3 check values are 3 bytes; this system's AES ones are 5 (CMAC).
        if !matches!(e.kcv.len(), 6 | 10) || !e.kcv.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("field kcv: 6 or 10 hex digits expected".into()));
        }
        hex_of("nonce", &e.nonce, Some(32))?;
        hex_of("sealed", &e.sealed, None)?;
        if !e.sealed.len().is_multiple_of(2) || e.sealed.len() > 1024 {
            return Err(bad("field sealed: an RSA block of at most 512 bytes, hex".into()));
        }
        if e.usage != "K1" {
            return Err(bad(format!(
                "field usage {:?}: a transported key is a KBPK (K1)",
                crate::domain::clip(&e.usage)
            )));
        }
        if e.alg != KeyAlg::Aes256 {
            return Err(bad(format!("field alg: {}; a KBPK travels as AES-256", e.alg)));
        }
        crate::state::validate::id("target", &e.target).map_err(|r| bad(format!("field target: {r}")))?;
        Ok(e)
    }

    /// Whether `now_ms` (the receiving site's clock) is within the envelope's window.
    pub fn check_time(&self, now_ms: u64) -> Result<(), TransportError> {
        if self.issued_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(TransportError::Envelope(format!(
                "made {} s in the future of this site's clock",
                (self.issued_ms - now_ms) / 1000
            )));
        }
        if now_ms.saturating_sub(self.issued_ms) > MAX_AGE_MS {
            return Err(TransportError::Envelope(format!(
                "made {} s ago; at most {} s old",
                (now_ms - self.issued_ms) / 1000,
                MAX_AGE_MS / 1000
            )));
        }
        Ok(())
    }
}

/// The EMSA-PKCS1-v1_5 encoding (RFC 8017 §9.2) of SHA-256(`data`) for a `k`-byte modulus: the
/// block the HSM's raw RSA private operation signs.
pub fn pkcs1_sha256_block(data: &[u8], k: usize) -> Result<Vec<u8>, TransportError> {
    let mut t = HashAlg::Sha256.digest_info_prefix().to_vec();
    t.extend_from_slice(&quill_crypto::digest::digest(HashAlg::Sha256, data));
    if k < t.len() + 11 {
        return Err(TransportError::Signature(format!("a {k}-byte modulus is too short for PKCS#1 SHA-256")));
    }
    let mut em = vec![0x00, 0x01];
    em.resize(k - t.len() - 1, 0xFF);
    em.push(0x00);
    em.extend_from_slice(&t);
    Ok(em)
}

/// Verify `signature` over `data` with `key` (PKCS#1 v1.5, SHA-256).
pub fn verify(key: &RsaPublic, data: &[u8], signature: &[u8]) -> Result<(), TransportError> {
    let sig = |m: String| TransportError::Signature(m);
    let engine = RsaEngine::public(&RsaPublicKey { n: key.modulus.clone(), e: key.exponent.clone() })
        .map_err(|e| sig(format!("the signing key: {e}")))?;
    let mut t = HashAlg::Sha256.digest_info_prefix().to_vec();
    t.extend_from_slice(&quill_crypto::digest::digest(HashAlg::Sha256, data));
    match engine.pkcs1_verify(&t, signature) {
        Ok(true) => Ok(()),
        Ok(false) => Err(sig("does not verify with the pinned signing key".into())),
        Err(e) => Err(sig(e.to_string())),
    }
}

/// The public key of a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY`.
pub fn public_from_pem(pem: &str) -> Result<RsaPublic, String> {
    let key = openssl::rsa::Rsa::public_key_from_pem(pem.as_bytes())
        .or_else(|_| openssl::rsa::Rsa::public_key_from_pem_pkcs1(pem.as_bytes()))
        .map_err(|_| "not an RSA public key in PEM (-----BEGIN PUBLIC KEY-----)".to_string())?;
    Ok(RsaPublic::new(&key.n().to_vec(), &key.e().to_vec()))
}

/// The PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of `key`.
pub fn public_to_pem(key: &RsaPublic) -> Result<String, String> {
    let err = |e: openssl::error::ErrorStack| format!("RSA public key: {e}");
    let rsa = openssl::rsa::Rsa::from_public_components(
        openssl::bn::BigNum::from_slice(&key.modulus).map_err(err)?,
        openssl::bn::BigNum::from_slice(&key.exponent).map_err(err)?,
    )
    .map_err(err)?;
    let pem = openssl::pkey::PKey::from_rsa(rsa).and_then(|k| k.public_key_to_pem()).map_err(err)?;
    String::from_utf8(pem).map_err(|e| e.to_string())
}

/// What a checked KRD certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Krd {
    /// The transport public key.
    pub key: RsaPublic,
    /// The node it belongs to (its `quill:node/<id>` URI).
    pub node: u64,
}

/// Check a receiving device's transport key certificate (PEM) against the target's CA (PEM) at
/// `now_s` (Unix seconds): signed by that CA, valid now, for key encipherment, naming a node, an
/// RSA key of at least 2048 bits.
pub fn check_krd_certificate(cert_pem: &str, ca_pem: &str, now_s: i64) -> Result<Krd, TransportError> {
    use x509_parser::prelude::*;
    let bad = |m: String| TransportError::Certificate(m);
    let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes()).map_err(|_| bad("not a PEM certificate".into()))?;
    let ca =
        openssl::x509::X509::from_pem(ca_pem.as_bytes()).map_err(|_| bad("the CA: not a PEM certificate".into()))?;
    let ca_key = ca.public_key().map_err(|e| bad(format!("the CA's key: {e}")))?;
    if !cert.verify(&ca_key).unwrap_or(false) {
        return Err(bad("not signed by the target's CA".into()));
    }
    let der = cert.to_der().map_err(|e| bad(e.to_string()))?;
    let (_, x) = X509Certificate::from_der(&der).map_err(|e| bad(format!("does not parse: {e}")))?;
    let (from, to) = (x.validity().not_before.timestamp(), x.validity().not_after.timestamp());
    if now_s < from || now_s > to {
        return Err(bad(format!("valid from {from} to {to} (Unix time), not now ({now_s})")));
    }
    match x.key_usage() {
        Ok(Some(ku)) if ku.value.key_encipherment() && !ku.value.digital_signature() => {}
        _ => return Err(bad("its key usage is not key encipherment alone".into())),
    }
    let node = x
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => u.strip_prefix("quill:node/").and_then(|id| id.parse::<u64>().ok()),
                _ => None,
            })
        })
        .ok_or_else(|| bad("names no node (quill:node/<id>)".into()))?;
    let rsa = cert.public_key().and_then(|k| k.rsa()).map_err(|_| bad("its key is not an RSA key".into()))?;
    let key = RsaPublic::new(&rsa.n().to_vec(), &rsa.e().to_vec());
    if key.bits() < 2048 {
        return Err(bad(format!("an RSA key of {} bits; at least 2048", key.bits())));
    }
    Ok(Krd { key, node })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            format: FORMAT.into(),
            target: "prod".into(),
            krd: "A".repeat(64),
            kdh: "B".repeat(64),
            alg: KeyAlg::Aes256,
            usage: "K1".into(),
            kcv: "0A1B2C".into(),
            sealed: "00".repeat(256),
            nonce: "11".repeat(16),
            issued_ms: 1_800_000_000_000,
        }
    }

    /// A signature made through the block an HSM signs verifies; one changed byte of the
    /// envelope or the signature, or another key, does not.
    #[test]
    fn a_signed_envelope_verifies_and_a_changed_one_does_not() {
        let key = quill_crypto::rsa::generate(2048, 65537).unwrap();
        let engine = RsaEngine::new(&key).unwrap();
        let public = RsaPublic::new(&key.n, &key.e);
        let bytes = envelope().to_bytes();
        let block = pkcs1_sha256_block(&bytes, engine.modulus_len()).unwrap();
        let sig = engine.raw_private(&block).unwrap();
        verify(&public, &bytes, &sig).unwrap();
        // The same as OpenSSL's own PKCS#1 v1.5 SHA-256 signature.
        let pkey = openssl::pkey::PKey::from_rsa(
            openssl::rsa::Rsa::from_public_components(
                openssl::bn::BigNum::from_slice(&key.n).unwrap(),
                openssl::bn::BigNum::from_slice(&key.e).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut v = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &pkey).unwrap();
        assert!(v.verify_oneshot(&sig, &bytes).unwrap(), "OpenSSL verifies it");

        let mut other = bytes.clone();
        let at = other.iter().position(|b| *b == b'0').unwrap();
        other[at] = b'1';
        assert!(verify(&public, &other, &sig).is_err());
        let mut bent = sig.clone();
        bent[10] ^= 1;
        assert!(verify(&public, &bytes, &bent).is_err());
        assert!(verify(&public, &bytes, &sig[1..]).is_err());
        let stranger = quill_crypto::rsa::generate(2048, 65537).unwrap();
        assert!(verify(&RsaPublic::new(&stranger.n, &stranger.e), &bytes, &sig).is_err());
    }

    /// Every field is checked: what no honest key site sends is refused, naming the field.
    #[test]
    fn malformed_envelopes_name_the_field() {
        assert_eq!(Envelope::parse(&envelope().to_bytes()).unwrap(), envelope());
        type Change = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Change)> = vec![
            ("format", Box::new(|v| v["format"] = "tr34/9".into())),
            ("krd", Box::new(|v| v["krd"] = "XYZ".into())),
            ("kdh", Box::new(|v| v["kdh"] = "A".repeat(63).into())),
            ("kcv", Box::new(|v| v["kcv"] = "0A1B2C3D".into())),
            ("kcv", Box::new(|v| v["kcv"] = "0A1B2G".into())),
            ("nonce", Box::new(|v| v["nonce"] = "".into())),
            ("sealed", Box::new(|v| v["sealed"] = "0".into())),
            ("sealed", Box::new(|v| v["sealed"] = "00".repeat(600).into())),
            ("usage", Box::new(|v| v["usage"] = "D0".into())),
            ("alg", Box::new(|v| v["alg"] = "AES128".into())),
            ("target", Box::new(|v| v["target"] = "../../etc".into())),
            ("unknown field", Box::new(|v| v["extra"] = 1.into())),
            ("issued_ms", Box::new(|v| v["issued_ms"] = (-1).into())),
        ];
        for (field, change) in cases {
            let mut v = serde_json::to_value(envelope()).unwrap();
            change(&mut v);
            let e = Envelope::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err().to_string();
            let named = e.contains(field) || field == "unknown field";
            assert!(named, "{field}: {e}");
        }
        assert!(Envelope::parse(&vec![b' '; MAX_BYTES + 1]).unwrap_err().to_string().contains("at most"));
        assert!(Envelope::parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn the_time_window_holds() {
        let e = envelope();
        e.check_time(e.issued_ms).unwrap();
        e.check_time(e.issued_ms + MAX_AGE_MS).unwrap();
        assert!(e.check_time(e.issued_ms + MAX_AGE_MS + 1).unwrap_err().to_string().contains("ago"));
        assert!(e.check_time(e.issued_ms - MAX_AHEAD_MS - 1).unwrap_err().to_string().contains("future"));
    }

    #[test]
    fn public_keys_round_trip_through_pem() {
        let key = quill_crypto::rsa::generate(2048, 65537).unwrap();
        let public = RsaPublic::new(&key.n, &key.e);
        let pem = public_to_pem(&public).unwrap();
        assert_eq!(public_from_pem(&pem).unwrap(), public);
        let ossl = openssl::rsa::Rsa::public_key_from_pem(pem.as_bytes()).unwrap();
        assert_eq!(ossl.n().to_vec(), public.modulus, "OpenSSL reads it as the same key");
        assert!(public_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
    }

    /// The fields of an envelope, as the JSON names them.
    const FIELDS: [&str; 10] =
        ["format", "target", "krd", "kdh", "alg", "usage", "kcv", "sealed", "nonce", "issued_ms"];

    /// JSON values no honest key site sends in a field: every type, hex and non-hex text of
    /// every length, numbers out of range.
    fn any_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "[0-9A-Fa-f]{0,80}".prop_map(Value::from),
            "[0-9A-F]{6}|[0-9A-F]{10}|[0-9A-F]{32}|[0-9A-F]{64}".prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
            "AES256|TDES2|TDES3|AES128|K1|K0|D0|quill-kbpk-transport/1".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// What a parsed envelope must be, whatever came in.
    fn well_formed(e: &Envelope) -> bool {
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        e.format == FORMAT
            && e.krd.len() == 64
            && hex(&e.krd)
            && e.kdh.len() == 64
            && hex(&e.kdh)
            && matches!(e.kcv.len(), 6 | 10)
            && hex(&e.kcv)
            && e.nonce.len() == 32
            && hex(&e.nonce)
            && !e.sealed.is_empty()
            && e.sealed.len() <= 1024
            && e.sealed.len().is_multiple_of(2)
            && hex(&e.sealed)
            && e.usage == "K1"
            && e.alg == KeyAlg::Aes256
            && crate::state::validate::id("target", &e.target).is_ok()
    }

    /// A node CA and node 1's transport key certificate, made with OpenSSL: (CA PEM, CA key,
    /// certificate DER, the transport key).
    fn krd_pki() -> (String, openssl::pkey::PKey<openssl::pkey::Private>, Vec<u8>, RsaPublic) {
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        use openssl::rsa::Rsa;
        use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
        use openssl::x509::{X509Builder, X509NameBuilder};
        let name = |cn: &str| {
            let mut n = X509NameBuilder::new().unwrap();
            n.append_entry_by_text("CN", cn).unwrap();
            n.build()
        };
        let build =
            |subject: &str, key: &PKey<openssl::pkey::Private>, public: &PKey<openssl::pkey::Private>, ca: bool| {
                let mut b = X509Builder::new().unwrap();
                b.set_version(2).unwrap();
                b.set_serial_number(&BigNum::from_u32(if ca { 1 } else { 2 }).unwrap().to_asn1_integer().unwrap())
                    .unwrap();
                b.set_subject_name(&name(subject)).unwrap();
                b.set_issuer_name(&name("TEST node CA")).unwrap();
                b.set_pubkey(public).unwrap();
                b.set_not_before(&Asn1Time::from_unix(1_700_000_000).unwrap()).unwrap();
                b.set_not_after(&Asn1Time::from_unix(2_000_000_000).unwrap()).unwrap();
                if ca {
                    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
                    b.append_extension(KeyUsage::new().critical().key_cert_sign().build().unwrap()).unwrap();
                } else {
                    b.append_extension(KeyUsage::new().critical().key_encipherment().build().unwrap()).unwrap();
                    let san =
                        SubjectAlternativeName::new().uri("quill:node/1").build(&b.x509v3_context(None, None)).unwrap();
                    b.append_extension(san).unwrap();
                }
                b.sign(key, MessageDigest::sha256()).unwrap();
                b.build()
            };
        let ca_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let krd_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let ca = build("TEST node CA", &ca_key, &ca_key, true);
        let cert = build("TEST transport key of node 1", &ca_key, &krd_key, false);
        let rsa = krd_key.rsa().unwrap();
        let public = RsaPublic::new(&rsa.n().to_vec(), &rsa.e().to_vec());
        (String::from_utf8(ca.to_pem().unwrap()).unwrap(), ca_key, cert.to_der().unwrap(), public)
    }

    fn pem_of(der: &[u8]) -> String {
        let b64 = openssl::base64::encode_block(der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
    }

    /// The certificate made here checks out, as production's PKI's does.
    #[test]
    fn a_transport_key_certificate_checks_out() {
        let (ca, _, der, public) = krd_pki();
        let krd = check_krd_certificate(&pem_of(&der), &ca, 1_800_000_000).unwrap();
        assert_eq!(krd, Krd { key: public, node: 1 });
        let e = check_krd_certificate(&pem_of(&der), &ca, 2_100_000_000).unwrap_err().to_string();
        assert!(e.contains("not now"), "{e}");
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            // PROPTEST_CASES, when set, runs more (or fewer) cases than the default here.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// A transport key certificate with bytes of its DER changed, inserted or removed is
        /// refused, or still names node 1's own key (an edit outside what the CA signed, such as
        /// a redundant encoding OpenSSL reads the same): never another key or node.
        #[test]
        fn an_edited_transport_key_certificate_never_names_another_key(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..5)
        ) {
            thread_local! {
                static PKI: (String, Vec<u8>, RsaPublic) = {
                    let (ca, _, der, public) = krd_pki();
                    (ca, der, public)
                };
            }
            let (ca, der, public) = PKI.with(|p| p.clone());
            let mut b = der.clone();
            for (at, byte, how) in edits {
                let i = at.index(b.len());
                match how {
                    0 => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ => { b.remove(i); }
                }
            }
            if let Ok(krd) = check_krd_certificate(&pem_of(&b), &ca, 1_800_000_000) {
                prop_assert_eq!(krd, Krd { key: public, node: 1 });
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            // PROPTEST_CASES, when set, runs more (or fewer) cases than the default here.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(3000),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Any bytes: refused as an envelope, never a panic; nothing of the input echoed at length.
        #[test]
        fn any_bytes_are_refused_as_an_envelope(bytes in proptest::collection::vec(any::<u8>(), 0..(MAX_BYTES + 64))) {
            if let Err(e) = Envelope::parse(&bytes) {
                let m = e.to_string();
                prop_assert!(m.starts_with("the envelope: "), "{}", m);
                prop_assert!(m.len() < 400, "an error of {} characters", m.len());
            }
        }

        /// One field set to any JSON value, or removed: parsed only if it is still a well-formed
        /// envelope, otherwise refused naming that field.
        #[test]
        fn a_field_of_any_value_is_refused_naming_it(field in 0..FIELDS.len(), value in any_value(), remove in any::<bool>()) {
            let name = FIELDS[field];
            let mut v = serde_json::to_value(envelope()).unwrap();
            if remove {
                v.as_object_mut().unwrap().remove(name);
            } else {
                v[name] = value;
            }
            match Envelope::parse(&serde_json::to_vec(&v).unwrap()) {
                Ok(e) => prop_assert!(well_formed(&e), "accepted {:?}", e),
                Err(e) => {
                    let m = e.to_string();
                    prop_assert!(m.contains(name), "{} not named: {}", name, m);
                }
            }
        }

        /// An envelope's text with bytes changed, inserted or removed: either refused, or a
        /// well-formed envelope (the signature, checked first, is what refuses such a change).
        #[test]
        fn an_edited_envelope_is_refused_or_well_formed(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)
        ) {
            let mut b = envelope().to_bytes();
            for (at, byte, how) in edits {
                let i = at.index(b.len().max(1)).min(b.len().saturating_sub(1));
                match how {
                    0 if !b.is_empty() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ if !b.is_empty() => { b.remove(i); }
                    _ => {}
                }
            }
            match Envelope::parse(&b) {
                Ok(e) => prop_assert!(well_formed(&e), "accepted {:?}", e),
                Err(e) => prop_assert!(e.to_string().len() < 400, "an error of {} characters", e.to_string().len()),
            }
        }

        /// A signature of any length and content does not verify and never panics.
        #[test]
        fn any_signature_is_refused(sig in proptest::collection::vec(any::<u8>(), 0..600)) {
            let public = RsaPublic::new(&[0xC3; 256], &[1, 0, 1]);
            prop_assert!(verify(&public, &envelope().to_bytes(), &sig).is_err());
        }
    }
}

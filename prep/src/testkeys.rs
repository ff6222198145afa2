//! The documented TEST key set (`prep/test-keys/`, docs/test-keys.md): **public** clear keys for
//! tests, benchmarks, the demo and lab cards, so that anyone can decrypt and check what Quill
//! produced with them. Never for real cards.
//!
//! [`load`] puts the set into an HSM the way production keys get there: the storage master key
//! and every working key are formed inside the HSM from components sealed to its transport key
//! (each component's KCV checked); the issuer key pairs are generated inside the HSM (their private
//! halves never have a clear form, even here) and certified by the Quill TEST CA, whose private
//! key is in the fixture, under CA index `FE` of each RID.

use openssl::pkey::Private;
use openssl::rsa::{Padding, Rsa};
use quill_hsm::tr31::KeyUsage;
use quill_hsm::{Hsm, Kcv, KeyAlg, KeyUse, SealedComponent};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::emv::cert::{
    self, CaKeyStore, CaPublicKey, CertExpiry, IssuerCertificateRequest, IssuerId, RawRsaSigner, Rid,
};
use crate::engine::{IssuerKey, KeySet};

/// The key set, as committed.
pub const TEST_KEYS_TOML: &str = include_str!("../test-keys/test-keys.toml");
/// The Quill TEST CA private key (PEM, RSA-1984, e = 3).
pub const TEST_CA_PEM: &str = include_str!("../test-keys/quill-TEST-ca-1984.pem");
pub use crate::test_ca::TEST_CA_INDEX;

/// One clear TEST key.
#[derive(Clone, Deserialize)]
pub struct TestKey {
    /// Inventory label.
    pub label: String,
    /// Algorithm name (`DES2`, `AES128`, `AES256`, `HMAC_SHA256`).
    pub alg: String,
    /// TR-31 key usage code (`E0`, `D0`, `P0`, …): the step it serves
    /// ([`crate::engine::KeyStep`]).
    pub usage: String,
    /// What it is for.
    pub description: String,
    /// Clear components, hex.
    pub components: Vec<String>,
    /// KCV of each component.
    pub component_kcvs: Vec<String>,
    /// The key (XOR of the components), hex.
    pub value: String,
    /// The key's KCV.
    pub kcv: String,
}

impl TestKey {
    /// The key's TR-31 usage, parsed (a proprietary or unknown code is refused).
    pub fn key_usage(&self) -> Result<KeyUsage, String> {
        let code: Option<[u8; 2]> = self.usage.as_bytes().try_into().ok();
        match code.and_then(KeyUsage::from_code) {
            Some(KeyUsage::Proprietary(_)) | None => {
                Err(format!("{}: usage {:?} is not a TR-31 key usage", self.label, self.usage))
            }
            Some(u) => Ok(u),
        }
    }
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestKey({} {} {} KCV {})", self.label, self.alg, self.usage, self.kcv)
    }
}

/// A TEST issuer key pair to generate and certify.
#[derive(Debug, Clone, Deserialize)]
pub struct TestIssuer {
    /// Inventory label.
    pub label: String,
    /// RID, hex.
    pub rid: String,
    /// CA index (always `FE`).
    pub ca_index: String,
    /// Modulus bits.
    pub bits: u32,
    /// Public exponent.
    pub exponent: u32,
    /// Issuer identifier (BIN digits).
    pub issuer_id: String,
    /// Certificate expiry, MMYY.
    pub expiry: String,
}

/// The whole set.
#[derive(Debug, Clone, Deserialize)]
pub struct TestKeys {
    /// Symmetric keys.
    #[serde(rename = "key")]
    pub keys: Vec<TestKey>,
    /// Issuer key pairs.
    #[serde(rename = "issuer")]
    pub issuers: Vec<TestIssuer>,
}

impl TestKeys {
    /// The committed set.
    pub fn builtin() -> Self {
        // The fixture is part of the crate; a test parses it.
        toml::from_str(TEST_KEYS_TOML).unwrap_or_else(|e| panic!("prep/test-keys/test-keys.toml: {e}"))
    }

    /// The key with this label.
    pub fn key(&self, label: &str) -> Option<&TestKey> {
        self.keys.iter().find(|k| k.label == label)
    }
}

/// The Quill TEST CA: its private key as a raw RSA signer.
pub struct TestCa {
    rsa: Rsa<Private>,
}

impl TestCa {
    /// The CA from [`TEST_CA_PEM`].
    pub fn builtin() -> Self {
        let pem = TEST_CA_PEM.as_bytes();
        let start = TEST_CA_PEM.find("-----BEGIN").unwrap_or(0);
        let rsa = Rsa::private_key_from_pem(&pem[start..])
            .or_else(|_| openssl::pkey::PKey::private_key_from_pem(&pem[start..]).and_then(|k| k.rsa()))
            .unwrap_or_else(|e| panic!("prep/test-keys/quill-TEST-ca-1984.pem: {e}"));
        Self { rsa }
    }

    /// The CA public key under `rid`, index [`TEST_CA_INDEX`].
    pub fn public(&self, rid: Rid) -> CaPublicKey {
        CaPublicKey::new(rid, TEST_CA_INDEX, &self.rsa.n().to_vec(), &self.rsa.e().to_vec())
            .unwrap_or_else(|e| panic!("TEST CA key: {e}"))
    }
}

impl RawRsaSigner for TestCa {
    type Error = openssl::error::ErrorStack;

    fn sign_raw(&self, block: &[u8]) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0u8; self.rsa.size() as usize];
        let n = self.rsa.private_encrypt(block, &mut out, Padding::NONE)?;
        out.truncate(n);
        Ok(out)
    }

    fn modulus_len(&self) -> usize {
        self.rsa.size() as usize
    }
}

/// The scheme TEST CA keys plus the Quill TEST CA under every RID of the TEST issuers.
pub fn ca_store() -> Result<CaKeyStore, String> {
    let mut cas = CaKeyStore::with_scheme_test_keys().map_err(|e| e.to_string())?;
    let ca = TestCa::builtin();
    for i in TestKeys::builtin().issuers {
        let rid = parse_rid(&i.rid)?;
        cas.insert(ca.public(rid)).map_err(|e| e.to_string())?;
    }
    Ok(cas)
}

fn parse_rid(s: &str) -> Result<Rid, String> {
    hex::decode(s).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| format!("RID {s:?} is not 5 bytes of hex"))
}

/// Load the TEST set into `hsm`: form the SMK from `SMK-TEST` when the token has none (an HSM with
/// another SMK keeps it, and the keys are wrapped under that one), form every working key from its
/// sealed components, generate and certify the issuer key pairs. Returns the key set the engine
/// takes, each key with its fixture usage. The output MAC key is `MAC-OUTPUT-TEST` (`M7`).
pub fn load(hsm: &dyn Hsm) -> Result<KeySet, String> {
    load_with(hsm, IssuerParams::default())
}

/// Lab choice of the TEST issuer key pairs' size and exponent (`quill prep run --issuer-bits
/// --issuer-exponent`), so that every size the profile model allows can be tried end to end.
/// `None` keeps the fixture's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IssuerParams {
    /// Modulus size: 1024–1984 bits (the TEST CA's size is the ceiling), a multiple of 8.
    pub bits: Option<u32>,
    /// Public exponent: 3 or 65537.
    pub exponent: Option<u32>,
}

impl IssuerParams {
    /// Refuse sizes and exponents EMV issuer keys cannot have under the TEST CA.
    pub fn check(&self) -> Result<(), String> {
        if let Some(b) = self.bits
            && (!(1024..=1984).contains(&b) || b % 8 != 0)
        {
            return Err(format!("issuer key size must be 1024–1984 bits (the TEST CA's) and a multiple of 8, not {b}"));
        }
        if let Some(e) = self.exponent
            && e != 3
            && e != 65537
        {
            return Err(format!("issuer public exponent must be 3 or 65537, not {e}"));
        }
        Ok(())
    }
}

/// [`load`] with the issuer key pairs made to `issuers`' size and exponent.
pub fn load_with(hsm: &dyn Hsm, issuers: IssuerParams) -> Result<KeySet, String> {
    issuers.check()?;
    let set = TestKeys::builtin();
    let transport = hsm.transport_public_key().map_err(|e| format!("transport key: {e}"))?;
    let seal = |k: &TestKey| -> Result<(Vec<SealedComponent>, Vec<Kcv>), String> {
        let mut sealed = Vec::new();
        let mut kcvs = Vec::new();
        for (c, kcv) in k.components.iter().zip(&k.component_kcvs) {
            let clear = Zeroizing::new(hex::decode(c).map_err(|_| format!("{}: component is not hex", k.label))?);
            sealed.push(SealedComponent(transport.seal(&clear)?));
            kcvs.push(Kcv::parse(kcv).ok_or_else(|| format!("{}: bad component KCV", k.label))?);
        }
        Ok((sealed, kcvs))
    };
    if hsm.smk_kcv().map_err(|e| e.to_string())?.is_none() {
        let smk = set.key("SMK-TEST").ok_or("the TEST set has no SMK-TEST")?;
        let (sealed, kcvs) = seal(smk)?;
        hsm.form_smk(&sealed, &kcvs).map_err(|e| format!("SMK-TEST: {e}"))?;
    }
    let mut keys = KeySet::new();
    for k in set.keys.iter().filter(|k| k.label != "SMK-TEST") {
        let alg: KeyAlg = k.alg.parse()?;
        let usage = k.key_usage()?;
        let (sealed, kcvs) = seal(k)?;
        // TEST keys may be exported (labs exchange them as TR-31 blocks).
        let w = hsm
            .import_components(alg, KeyUse::new(usage, true), &sealed, &kcvs)
            .map_err(|e| format!("{}: {e}", k.label))?;
        if w.kcv.as_str() != k.kcv {
            return Err(format!("{}: the HSM formed KCV {}, the fixture says {}", k.label, w.kcv, k.kcv));
        }
        keys.insert(k.label.clone(), w, usage);
    }
    for i in &set.issuers {
        let (bits, exponent) = (issuers.bits.unwrap_or(i.bits), issuers.exponent.unwrap_or(i.exponent));
        let pair = hsm.generate_rsa_key_pair(bits, exponent, None).map_err(|e| format!("{}: {e}", i.label))?;
        keys.insert_issuer(i.label.clone(), certify(i, pair)?);
    }
    Ok(keys)
}

/// `pair` certified by the Quill TEST CA as `i` says.
fn certify(i: &TestIssuer, pair: quill_hsm::WrappedRsaKey) -> Result<IssuerKey, String> {
    let ca = TestCa::builtin();
    let rid = parse_rid(&i.rid)?;
    let public = cert::RsaPublicKey::new(&pair.public.modulus, &pair.public.exponent).map_err(|e| e.to_string())?;
    let mmyy = hex::decode(&i.expiry).ok().and_then(|v| <[u8; 2]>::try_from(v).ok());
    let expiry = mmyy
        .and_then(CertExpiry::from_mmyy)
        .ok_or_else(|| format!("{}: expiry {:?} is not MMYY", i.label, i.expiry))?;
    let issuer_id =
        IssuerId::from_digits(&i.issuer_id).ok_or_else(|| format!("{}: issuer id is not 3-8 digits", i.label))?;
    let req = IssuerCertificateRequest { issuer_id, expiry, serial: [0x00, 0x00, 0x01], issuer_key: &public };
    let certificate =
        cert::build_issuer_certificate(&ca, &ca.public(rid), &req).map_err(|e| format!("{}: {e}", i.label))?;
    IssuerKey::new(pair, certificate)
}

/// The TEST set as a [`KeySet`] without an HSM, for tests of the key checks: every working key
/// with its fixture algorithm, KCV and usage but a blob that wraps nothing (an HSM would refuse
/// it), and every issuer key pair generated here with OpenSSL (its private half thrown away) and
/// certified by the TEST CA. Good for [`crate::engine::check_keys`], never for preparing a card.
#[cfg(test)]
pub(crate) fn unwrapped_set() -> Result<KeySet, String> {
    let set = TestKeys::builtin();
    let smk = Kcv("000000".into());
    let mut keys = KeySet::new();
    for k in set.keys.iter().filter(|k| k.label != "SMK-TEST") {
        let alg: KeyAlg = k.alg.parse()?;
        let w = quill_hsm::WrappedKey { alg, blob: Vec::new(), kcv: Kcv(k.kcv.clone()), smk_kcv: smk.clone() };
        keys.insert(k.label.clone(), w, k.key_usage()?);
    }
    for i in &set.issuers {
        let e = openssl::bn::BigNum::from_u32(i.exponent).map_err(|e| e.to_string())?;
        let rsa = Rsa::generate_with_e(i.bits, &e).map_err(|e| e.to_string())?;
        let public = quill_hsm::RsaPublic::new(&rsa.n().to_vec(), &rsa.e().to_vec());
        let pair = quill_hsm::WrappedRsaKey { public, blob: Vec::new(), smk_kcv: smk.clone() };
        keys.insert_issuer(i.label.clone(), certify(i, pair)?);
    }
    Ok(keys)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_parses_and_every_kcv_matches_its_value() {
        let set = TestKeys::builtin();
        assert!(set.keys.len() >= 20);
        for k in &set.keys {
            assert!(k.label.contains("TEST"), "{} is not marked TEST", k.label);
            let alg: KeyAlg = k.alg.parse().unwrap();
            let v = hex::decode(&k.value).unwrap();
            let parts: Vec<Vec<u8>> = k.components.iter().map(|c| hex::decode(c).unwrap()).collect();
            let xor: Vec<u8> = parts[0].iter().zip(&parts[1]).map(|(a, b)| a ^ b).collect();
            assert_eq!(xor, v, "{}", k.label);
            assert_eq!(Kcv::of_clear(alg, &v).unwrap().as_str(), k.kcv, "{}", k.label);
            let usage = k.key_usage().unwrap();
            assert!(quill_hsm::tr31_usage_allows(usage, alg), "{}: usage {} does not fit {alg}", k.label, k.usage);
            for (c, kcv) in parts.iter().zip(&k.component_kcvs) {
                assert_eq!(Kcv::of_clear(alg, c).unwrap().as_str(), kcv, "{} component", k.label);
            }
        }
        for i in &set.issuers {
            assert!(i.label.contains("TEST"));
        }
    }

    #[test]
    fn the_test_ca_signs_what_its_public_key_recovers() {
        let ca = TestCa::builtin();
        let public = ca.public(cert::RID_VISA);
        assert_eq!(public.public_key().len(), 248);
        let mut block = vec![0x6A; 248];
        block[0] = 0x6A;
        block[247] = 0xBC;
        let sig = ca.sign_raw(&block).unwrap();
        assert_eq!(public.public_key().recover("test", &sig).unwrap(), block);
        assert!(ca_store().unwrap().get(cert::RID_MASTERCARD, TEST_CA_INDEX).is_some());
    }
}

//! TR-34-style key transport (`generate_for_transport`, `receive_transported`) against hsm-sim and
//! SoftHSM 2, checked with OpenSSL: a key generated for a host RSA key decrypts there (RSA-OAEP,
//! SHA-1) to a value whose check value is the block's; a key OpenSSL sealed to the HSM's transport
//! key arrives with its own check value; and the sealed blob of one HSM opens in another. Wrong
//! or tampered blobs and weak peers are refused.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::reference::{self as r, h};
use common::{Backend, token_host_path};
use openssl::rsa::{Padding, Rsa};
use quill_hsm::{Hsm, HsmError, Kcv, KeyAlg, Pkcs11Hsm, RsaPublic, SealedComponent};

per_backend!(a_key_generated_for_a_peer_opens_there_with_its_check_value, a_key_sealed_to_the_transport_key_arrives);

/// A TEST AES-256 key (TR-31:2018 A.7.4's KBPK value).
const TEST_AES: &str = "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6";

/// A token with an SMK formed from components of a random TEST value.
fn hsm_with_smk(b: Backend, name: &str) -> Option<Pkcs11Hsm> {
    let config = token_host_path(b, name)?;
    let hsm = Pkcs11Hsm::open(&config, common::Recorder::new()).unwrap();
    let smk = r::random(32);
    let pk = hsm.transport_public_key().unwrap();
    let parts = r::split(KeyAlg::Aes256, &smk, 2);
    let comps: Vec<SealedComponent> = parts.iter().map(|p| r::seal(&pk, p)).collect();
    let kcvs: Vec<Kcv> = parts.iter().map(|p| Kcv::of_clear(KeyAlg::Aes256, p).unwrap()).collect();
    hsm.form_smk(&comps, &kcvs).unwrap();
    Some(hsm)
}

fn public_of(rsa: &Rsa<openssl::pkey::Private>) -> RsaPublic {
    RsaPublic::new(&rsa.n().to_vec(), &rsa.e().to_vec())
}

fn a_key_generated_for_a_peer_opens_there_with_its_check_value(b: Backend) {
    let Some(hsm) = hsm_with_smk(b, "tr34-send") else { return };
    // The receiving device's key pair, in OpenSSL (a TEST key made for this test).
    let peer = Rsa::generate(2048).unwrap();
    for alg in [KeyAlg::Aes256, KeyAlg::Des3, KeyAlg::Des2] {
        let (block, sealed) = hsm.generate_for_transport(alg, common::key_use("K1"), &public_of(&peer)).unwrap();
        let mut clear = vec![0u8; peer.size() as usize];
        let n = peer.private_decrypt(&sealed, &mut clear, Padding::PKCS1_OAEP).unwrap();
        clear.truncate(n);
        assert_eq!(clear.len(), alg.key_len(), "{alg}");
        assert_eq!(r::kcv(alg, &clear), block.kcv, "{alg}: OpenSSL's check value of the transported key");
        assert_eq!(hsm.kcv(&block).unwrap(), block.kcv, "{alg}: the block at rest is the same key");
        assert!(!block.blob.windows(clear.len()).any(|w| w == clear.as_slice()), "no clear key in the block");
    }
    // A peer key under 2048 bits is refused before anything is generated.
    let weak = Rsa::generate(1024).unwrap();
    let e = hsm.generate_for_transport(KeyAlg::Aes256, common::key_use("K1"), &public_of(&weak)).unwrap_err();
    assert!(matches!(e, HsmError::Misuse { .. }), "{e:?}");
    assert!(e.to_string().contains("2048"), "{e}");
}

fn a_key_sealed_to_the_transport_key_arrives(b: Backend) {
    let Some(hsm) = hsm_with_smk(b, "tr34-recv") else { return };
    let pk = hsm.transport_public_key().unwrap();
    let key = h(TEST_AES);
    let sealed = r::seal(&pk, &key).0;
    let block = hsm.receive_transported(KeyAlg::Aes256, common::key_use("K1"), &sealed).unwrap();
    assert_eq!(block.kcv, r::kcv(KeyAlg::Aes256, &key));
    assert_eq!(hsm.kcv(&block).unwrap(), block.kcv);

    // --- attacks: a flipped bit, a blob for another key, garbage, nothing
    let mut flipped = sealed.clone();
    flipped[40] ^= 0x01;
    let other = Rsa::generate(2048).unwrap();
    let mut for_other = vec![0u8; other.size() as usize];
    let n = other.public_encrypt(&key, &mut for_other, Padding::PKCS1_OAEP).unwrap();
    for_other.truncate(n);
    for (what, bad) in [("a flipped bit", flipped), ("another key's blob", for_other), ("empty", vec![])] {
        let e = hsm.receive_transported(KeyAlg::Aes256, common::key_use("K1"), &bad).unwrap_err();
        assert!(!e.is_device_error(), "{what}: {e:?}");
        assert!(!e.to_string().contains(TEST_AES), "{what}: no key in the error");
    }
    // A key of the wrong length for the algorithm announced is refused, not filed as another
    // key. SoftHSM 2.6 reports no length for an unwrapped key; the node takes only AES-256 by
    // transport (the envelope's alg) and compares the check value.
    let r = hsm.receive_transported(KeyAlg::Aes128, common::key_use("K1"), &sealed);
    if b == Backend::Sim {
        let e = r.unwrap_err();
        assert!(matches!(e, HsmError::Misuse { .. }) && e.to_string().contains("32 bytes"), "{e:?}");
    }
}

/// One HSM generates for another's transport key: both blocks are one key (sim → SoftHSM when
/// SoftHSM is there, else sim → sim).
#[test]
fn one_hsm_sends_and_another_receives() {
    let Some(send) = hsm_with_smk(Backend::Sim, "tr34-a") else { return };
    let recv = hsm_with_smk(Backend::SoftHsm, "tr34-b").or_else(|| hsm_with_smk(Backend::Sim, "tr34-b")).unwrap();
    let (sent, sealed) = send
        .generate_for_transport(KeyAlg::Aes256, common::key_use("K1"), &recv.transport_public_key().unwrap())
        .unwrap();
    let got = recv.receive_transported(KeyAlg::Aes256, common::key_use("K1"), &sealed).unwrap();
    assert_eq!(sent.kcv, got.kcv);
    assert_ne!(sent.blob, got.blob, "each under its own SMK");
}

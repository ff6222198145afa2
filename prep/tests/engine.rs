//! The prep engine end to end on hsm-sim with the TEST key set: the three sample profiles, every
//! card checked against the clear TEST keys with OpenSSL (master keys, KCVs, PINs, certificates,
//! CRT components), randomised valid and invalid records, and setup errors.
//!
//! The third-party cross-check of the same output (pyemv, psec) is
//! tests/third_party/40_prep_pyemv.sh.
#![allow(clippy::unwrap_used)]

#[path = "../../hsm/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use openssl::bn::{BigNum, BigNumContext};
use openssl::symm::{Cipher, Crypter, Mode};
use quill_hsm::tr31::KeyUsage;
use quill_hsm::{Hsm, Pkcs11Hsm};
use quill_prep::emv::cert::{self, IccCertificate, IssuerCertificate, RsaPublicKey};
use quill_prep::engine::{AppOutput, CardOutput, Engine, EngineSettings, KeySet, PoolSettings, SetupError};
use quill_prep::input::{self, CardRecord, Pan, Yymm};
use quill_prep::profile::{Application, Oda, Profile};
use quill_prep::testkeys::{self, TestKeys};
use quill_prep::tlv;
use rand::{RngExt, SeedableRng};

const PROFILES: [(&str, &str); 3] =
    [("visa-dda-credit", "visa-dda-credit.csv"), ("mc-cap", "mc-cap.txt"), ("multi-app", "multi-app.csv")];

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn profile(name: &str) -> Profile {
    let path = root().join("profiles").join(format!("{name}.toml"));
    Profile::parse(&std::fs::read_to_string(&path).unwrap(), &path.display().to_string()).unwrap()
}

fn records(p: &Profile, sample: &str) -> Vec<CardRecord> {
    let path = root().join("samples").join(sample);
    let f = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    input::Batch::new(&p.input, sample, f).collect()
}

/// One hsm-sim token with the TEST set loaded, shared by the tests of this binary.
fn hsm_and_keys() -> &'static (Arc<dyn Hsm>, KeySet) {
    static S: OnceLock<(Arc<dyn Hsm>, KeySet)> = OnceLock::new();
    S.get_or_init(|| {
        let config = common::token(common::Backend::Sim, "prep-engine").unwrap();
        let hsm: Arc<dyn Hsm> = Arc::new(Pkcs11Hsm::open(&config, Arc::new(quill_hsm::LogHostPath)).unwrap());
        let keys = testkeys::load(&*hsm).unwrap();
        (hsm, keys)
    })
}

fn engine(name: &str, pool: usize) -> Engine {
    let (hsm, keys) = hsm_and_keys();
    let settings = EngineSettings { pool: PoolSettings { capacity: pool, refill_threads: 1 } };
    Engine::new(profile(name), keys.clone(), hsm.clone(), settings).unwrap()
}

// ---- clear-key references (OpenSSL) ------------------------------------------------------------

fn clear(label: &str) -> Vec<u8> {
    hex::decode(&TestKeys::builtin().key(label).unwrap().value).unwrap()
}

fn tdes(key: &[u8], data: &[u8], mode: Mode) -> Vec<u8> {
    let k: Vec<u8> = [key, &key[..8]].concat();
    let mut c = Crypter::new(Cipher::des_ede3(), mode, &k, None).unwrap();
    c.pad(false);
    let mut out = vec![0; data.len() + 16];
    let n = c.update(data, &mut out).unwrap();
    out.truncate(n);
    out
}

fn odd_parity(mut k: Vec<u8>) -> Vec<u8> {
    for b in &mut k {
        *b = (*b & 0xFE) | u8::from((*b >> 1).count_ones() % 2 == 0);
    }
    k
}

/// EMV Option A (emv.md §2.1): Y = rightmost 16 digits of PAN ‖ PSN.
fn option_a(imk: &[u8], pan: &str, psn: &str) -> Vec<u8> {
    let x = format!("{:0>16}", format!("{pan}{psn}"));
    let y = hex::decode(&x[x.len() - 16..]).unwrap();
    let inv: Vec<u8> = y.iter().map(|b| b ^ 0xFF).collect();
    odd_parity([tdes(imk, &y, Mode::Encrypt), tdes(imk, &inv, Mode::Encrypt)].concat())
}

fn kcv3(key: &[u8]) -> Vec<u8> {
    tdes(key, &[0; 8], Mode::Encrypt)[..3].to_vec()
}

/// The PIN inside an ISO 9564 format 0 or 2 clear block.
fn pin_of(block: &[u8], pan: Option<&str>) -> String {
    let mut b = block.to_vec();
    if let Some(pan) = pan {
        let digits = &pan[pan.len() - 13..pan.len() - 1];
        let pb = hex::decode(format!("0000{digits}")).unwrap();
        for (x, y) in b.iter_mut().zip(pb) {
            *x ^= y;
        }
    }
    let h = hex::encode_upper(&b);
    let n = usize::from_str_radix(&h[1..2], 16).unwrap();
    assert!(h[2 + n..].chars().all(|c| c == 'F'), "fill of {h}");
    h[2..2 + n].to_owned()
}

// ---- checks of one card ------------------------------------------------------------------------

fn dgi<'a>(app: &'a AppOutput, id: &str) -> &'a quill_prep::engine::DgiOut {
    app.dgis.iter().find(|d| d.dgi == id).unwrap_or_else(|| panic!("{}: no DGI {id}", app.name))
}

/// Tag values of the record and data-group DGIs of an application (first occurrence).
fn tags(app: &AppOutput) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for d in app.dgis.iter().filter(|d| !d.encrypted) {
        let bytes = hex::decode(&d.data).unwrap();
        let Ok(objs) = tlv::parse_all(&bytes) else { continue };
        for o in objs {
            if o.tag.bytes() == [0x70] {
                for i in tlv::parse_all(o.value).unwrap() {
                    out.entry(hex::encode_upper(i.tag.bytes())).or_insert_with(|| i.value.to_vec());
                }
            } else {
                out.entry(hex::encode_upper(o.tag.bytes())).or_insert_with(|| o.value.to_vec());
            }
        }
    }
    out
}

/// Static data to be authenticated, rebuilt from the output: the ODA records' contents (SFI ≤ 10)
/// in profile order, then the AIP when 9F4A asks.
fn static_data(p: &quill_prep::profile::EmvApplication, app: &AppOutput, t: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut s = Vec::new();
    for r in p.records.iter().filter(|r| r.oda) {
        let id = format!("{:02X}{:02X}", r.sfi, r.record);
        let bytes = hex::decode(&dgi(app, &id).data).unwrap();
        let rec = tlv::parse_all(&bytes).unwrap();
        assert_eq!(rec.len(), 1);
        s.extend_from_slice(rec[0].value);
    }
    if t.get("9F4A").map(Vec::as_slice) == Some(&[0x82]) {
        s.extend(t["82"].clone());
    }
    s
}

fn check_card(p: &Profile, card: &CardOutput) -> usize {
    let dek = clear("TK-DEK-TEST");
    let cas = testkeys::ca_store().unwrap();
    let mut checks = 0;
    // PIN: the mailer block and the chip's offline PIN hold the same PIN, which is not weak.
    let mut pin = None;
    if let (Some(pc), Some(m)) = (&p.pin, &card.mailer) {
        assert_ne!(m.reference, card.pan);
        assert!(!m.reference.contains(&card.pan[card.pan.len() - 8..]));
        let block = hex::decode(&m.pin_block).unwrap();
        let got = match m.format.as_str() {
            "iso0" => pin_of(&tdes(&clear(&pc.mailer.key), &block, Mode::Decrypt), Some(&card.pan)),
            "iso4" => {
                assert_eq!(block.len(), 16);
                String::new()
            }
            f => panic!("mailer format {f}"),
        };
        pin = Some(got);
        checks += 1;
    }
    for (spec, app) in p.applications.iter().zip(&card.applications) {
        assert_eq!(spec.aid(), app.aid);
        match spec {
            Application::Emv(a) | Application::Cap(a) => {
                // 8000 = Option A/B of the IMKs under the DEK, 9000 their KCVs.
                let enc = hex::decode(&dgi(app, "8000").data).unwrap();
                let mks = tdes(&dek, &enc, Mode::Decrypt);
                let kcvs = hex::decode(&dgi(app, "9000").data).unwrap();
                assert_eq!(kcvs.len(), mks.len() / 16 * 3);
                for (i, mk) in mks.chunks(16).enumerate() {
                    assert_eq!(kcv3(mk), kcvs[i * 3..i * 3 + 3], "{} 9000 KCV {i}", app.name);
                }
                let imk_ac = match (&a.keys, &a.cap) {
                    (Some(k), _) => &k.ac,
                    (None, Some(c)) => c.imk.as_ref().unwrap(),
                    _ => unreachable!(),
                };
                if card.pan.len() <= 16 {
                    assert_eq!(mks[..16], option_a(&clear(imk_ac), &card.pan, &card.psn)[..], "{} MK-AC", app.name);
                }
                assert!(dgi(app, "8000").encrypted && dgi(app, "8000").key.as_ref().unwrap().label == "TK-DEK-TEST");
                checks += 2;
                if a.offline_pin
                    && let Some(chip) = p.pin.as_ref().and_then(|x| x.chip.as_ref())
                {
                    let b = tdes(&dek, &hex::decode(&dgi(app, &chip.dgi).data).unwrap(), Mode::Decrypt);
                    let chip_pin = pin_of(&b, None);
                    match pin.as_deref() {
                        Some("") | None => pin = Some(chip_pin.clone()),
                        Some(m) => assert_eq!(m, chip_pin, "mailer and chip PIN"),
                    }
                    let digits: Vec<u8> = chip_pin.bytes().collect();
                    assert!(digits.windows(2).any(|w| w[0] != w[1]), "weak PIN (all equal)");
                    checks += 1;
                }
                let t = tags(app);
                if a.oda == Oda::None {
                    continue;
                }
                // Issuer certificate from the inventory recovers with the TEST CA.
                let rid: [u8; 5] = hex::decode(&app.aid).unwrap()[..5].try_into().unwrap();
                let issuer = IssuerCertificate::recover(
                    &cas,
                    rid,
                    t["8F"][0],
                    &t["90"],
                    t.get("92").map_or(&[][..], |v| v),
                    &t["9F32"],
                )
                .unwrap();
                issuer.check_pan(&card.pan).unwrap();
                let sd = static_data(a, app, &t);
                if a.oda == Oda::Sda {
                    cert::recover_signed_static_data(issuer.issuer_key(), &t["93"], &sd).unwrap();
                    let mut bad = sd.clone();
                    bad[3] ^= 1;
                    assert!(cert::recover_signed_static_data(issuer.issuer_key(), &t["93"], &bad).is_err());
                } else {
                    let ic = IccCertificate {
                        cert: t["9F46"].clone(),
                        remainder: t.get("9F48").cloned().unwrap_or_default(),
                        exponent: t["9F47"].clone(),
                    };
                    let rec = cert::recover_icc_certificate(issuer.issuer_key(), &ic, &sd).unwrap();
                    assert_eq!(rec.pan, card.pan);
                    // p·q of the CRT DGIs is the certified modulus.
                    let part = |id: &str| {
                        let mut c = tdes(&dek, &hex::decode(&dgi(app, id).data).unwrap(), Mode::Decrypt);
                        while c.last() == Some(&0) {
                            c.pop();
                        }
                        assert_eq!(c.pop(), Some(0x80), "ISO 9797-1 method 2 padding");
                        BigNum::from_slice(&c).unwrap()
                    };
                    let mut n = BigNum::new().unwrap();
                    n.checked_mul(&part("8205"), &part("8204"), &mut BigNumContext::new().unwrap()).unwrap();
                    assert_eq!(n.to_vec(), rec.icc_key.modulus());
                    // A flipped byte anywhere in the certificate fails.
                    for i in [0, ic.cert.len() / 2, ic.cert.len() - 1] {
                        let mut bad = ic.clone();
                        bad.cert[i] ^= 0x01;
                        assert!(cert::recover_icc_certificate(issuer.issuer_key(), &bad, &sd).is_err());
                    }
                    let _: &RsaPublicKey = issuer.issuer_key();
                }
                checks += 2;
            }
            Application::Epurse(e) => {
                let enc = hex::decode(&dgi(app, "8001").data).unwrap();
                let keys = tdes(&dek, &enc, Mode::Decrypt);
                for (k, label) in keys.chunks(16).zip(e.master_keys.values()) {
                    assert_eq!(k, option_a(&clear(label), &card.pan, &card.psn), "purse key {label}");
                }
                checks += 1;
            }
        }
    }
    checks
}

#[test]
fn the_sample_batches_prepare_and_check() {
    let mut total = 0;
    for (name, sample) in PROFILES {
        let p = profile(name);
        let e = engine(name, 4);
        let recs = records(&p, sample);
        assert!(!recs.is_empty());
        for r in &recs {
            let card = e.prepare(r).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(card.line, r.line);
            assert_eq!(card.applications.len(), p.applications.len());
            total += check_card(&p, &card);
            // Nothing the engine returns in its Debug form shows the PAN.
            assert!(!format!("{card:?}").contains(r.pan.digits()));
        }
    }
    assert!(total > 30, "{total} checks");
}

/// Visa CVV (emv.md §4.2) with OpenSSL: PAN ‖ YYMM ‖ service code, zero-filled to 32 digits;
/// DES(A) of the first half, XOR the second, 3DES(A,B), decimalise, first three digits.
fn cvv_ref(cvk: &[u8], pan: &str, yymm: &str, sc: &str) -> String {
    let data = format!("{:0<32}", format!("{pan}{yymm}{sc}"));
    let (b1, b2) = (hex::decode(&data[..16]).unwrap(), hex::decode(&data[16..]).unwrap());
    let single_a = [&cvk[..8], &cvk[..8]].concat();
    let x: Vec<u8> = tdes(&single_a, &b1, Mode::Encrypt).iter().zip(&b2).map(|(a, b)| a ^ b).collect();
    let h = hex::encode_upper(tdes(cvk, &x, Mode::Encrypt));
    let digits = h.chars().filter(char::is_ascii_digit);
    let letters = h.chars().filter(|c| c.is_ascii_alphabetic()).map(|c| char::from(b'0' + (c as u8 - b'A')));
    digits.chain(letters).take(3).collect()
}

/// Every value of every clear DGI of the card, nested templates opened (tag, value).
fn all_chip_values(card: &CardOutput) -> Vec<(String, Vec<u8>)> {
    fn walk(bytes: &[u8], out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(objs) = tlv::parse_all(bytes) else { return };
        for o in objs {
            if o.tag.bytes()[0] & 0x20 != 0 {
                walk(o.value, out);
            }
            out.push((hex::encode_upper(o.tag.bytes()), o.value.to_vec()));
        }
    }
    let mut out = Vec::new();
    for d in card.applications.iter().flat_map(|a| &a.dgis).filter(|d| !d.encrypted) {
        let bytes = hex::decode(&d.data).unwrap();
        walk(&bytes, &mut out);
        out.push((format!("DGI {}", d.dgi), bytes));
    }
    out
}

/// Issue 16's defect: 9F1F carried the stripe's CVV. Every track on the chip holds the iCVV, and
/// no chip value (as BCD digits or as characters) holds the stripe's discretionary data.
#[test]
fn no_chip_tag_carries_the_stripe_cvv() {
    let (mut cards, mut track_tags) = (0, 0);
    for (name, sample) in PROFILES {
        let p = profile(name);
        let Some(ms) = &p.mag_stripe else { continue };
        let cvk = clear(&ms.cvk);
        let e = engine(name, 4);
        for r in records(&p, sample) {
            let card = e.prepare(&r).unwrap();
            let (pan, yymm) = (r.pan.digits(), r.expiry.yymm());
            let cvv = cvv_ref(&cvk, pan, &yymm, r.service_code.as_deref().unwrap());
            let icvv = cvv_ref(&cvk, pan, &yymm, "999");
            let tracks = card.tracks.as_ref().unwrap();
            // The stripe's discretionary data: after PAN, separator, YYMM and service code.
            let t2_dd = &tracks.track2[pan.len() + 1 + 7..];
            assert!(t2_dd.contains(&cvv), "{name} line {}: track 2 carries the CVV", r.line);
            let mut stripe = vec![t2_dd.to_owned()];
            if let Some(t1) = &tracks.track1 {
                stripe.push(t1.rsplit('^').next().unwrap()[7..].to_owned());
            }
            let values = all_chip_values(&card);
            for (tag, v) in &values {
                if ["57", "9F1F", "9F20", "9F6B", "56"].contains(&tag.as_str()) {
                    let text = format!("{}{}", hex::encode_upper(v), String::from_utf8_lossy(v));
                    assert!(text.contains(&icvv), "{name} line {}: {tag} carries the iCVV {icvv}: {text}", r.line);
                    track_tags += 1;
                }
            }
            if cvv == icvv {
                continue; // the same digits by chance: nothing to tell apart
            }
            for (tag, v) in &values {
                for dd in &stripe {
                    let leaks =
                        hex::encode_upper(v).contains(dd.as_str()) || String::from_utf8_lossy(v).contains(dd.as_str());
                    assert!(!leaks, "{name} line {}: chip {tag} carries the stripe's discretionary data (CVV)", r.line);
                }
            }
            cards += 1;
        }
    }
    assert!(cards >= 8 && track_tags > cards, "{cards} cards, {track_tags} track tags");
}

/// Issue 16: 1,000 generated international names (Latin, Nordic, Turkish, Vietnamese, German,
/// Polish, Czech, Irish; mixed case, as core banking sends them) in a UTF-8 fixed-width file,
/// read and prepared end to end: no refusal, every track valid ISO 7813, 5F20 the track's name,
/// the carrier keeps the name as sent.
#[test]
fn a_thousand_international_names_prepare_with_valid_tracks() {
    const FIRST: [&str; 20] = [
        "José",
        "Jörg",
        "Søren",
        "Åsa",
        "Çağrı",
        "Işıl",
        "Thị Ánh",
        "Đức",
        "François",
        "Zoë",
        "Bjørn",
        "Łukasz",
        "Dvořák",
        "Seán",
        "Ümit",
        "Ægir",
        "Renée",
        "Nguyễn Văn",
        "Göran",
        "Maël",
    ];
    const LAST: [&str; 20] = [
        "García",
        "Müller",
        "Lefèvre",
        "Øvergård",
        "Yılmaz",
        "Şahin",
        "Trần",
        "Phạm",
        "Straße",
        "O’Brien",
        "Kowalczyk-Wąs",
        "Ångström",
        "Ñúñez",
        "Dubois",
        "Håkansson",
        "Öztürk",
        "Lê",
        "Ní Bhriain",
        "Weiß",
        "Brontë",
    ];
    let mut p = profile("mc-cap");
    p.input.encoding = quill_prep::profile::Encoding::Utf8;
    let pad = |s: &str, n: usize| format!("{s}{}", " ".repeat(n.saturating_sub(s.chars().count())));
    let mut text = String::new();
    for i in 0..1000usize {
        let (first, last) = (FIRST[i % 20], LAST[(i / 20 + i) % 20]);
        let mut track = format!("{last}/{first}");
        let mut emboss = format!("{first} {last}");
        if track.chars().count() > 26 {
            track = track.chars().take(26).collect();
        }
        if emboss.chars().count() > 26 {
            emboss = format!("{} {last}", first.chars().next().unwrap());
        }
        let body = format!("5413338{:08}", 104_729 + i * 7_919);
        let pan = format!("{body}{}", input::luhn_check_digit(&body));
        text.push_str(&format!(
            "{}{:02}{}2512201{}{}{:010}\n",
            pad(&pan, 19),
            i % 100,
            ["2712", "2806", "3011"][i % 3],
            pad(&track, 26),
            pad(&emboss, 26),
            i
        ));
    }
    let mut batch = input::Batch::new(&p.input, "names.txt", text.as_bytes());
    let records: Vec<CardRecord> = batch.by_ref().collect();
    let summary = batch.into_summary();
    assert!(summary.is_clean(), "{:?}", summary.errors.first());
    assert_eq!((summary.ok, summary.transliterated), (1000, 1000));
    let e = Engine::new(
        p.clone(),
        hsm_and_keys().1.clone(),
        hsm_and_keys().0.clone(),
        EngineSettings { pool: PoolSettings { capacity: 0, refill_threads: 1 } },
    )
    .unwrap();
    let iso7813 = |s: &str| s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || " /.-'".contains(c));
    for r in &records {
        let card = e.prepare(r).unwrap_or_else(|err| panic!("line {}: {err}", r.line));
        let sent = r.original_cardholder_name.as_deref().unwrap();
        let name = r.cardholder_name.as_deref().unwrap();
        assert_eq!(name, input::transliterate(sent, "").unwrap().chars().take(26).collect::<String>().trim_end());
        // Track 1: B PAN ^ NAME ^ YYMM SC DD, ≤ 79 with sentinels, the name 2–26 ISO 7813.
        let t1 = card.tracks.as_ref().unwrap().track1.as_deref().unwrap();
        let parts: Vec<&str> = t1.split('^').collect();
        assert_eq!(parts.len(), 3, "line {}", r.line);
        assert_eq!((parts[0], parts[1]), (format!("B{}", r.pan.digits()).as_str(), name));
        assert!((2..=26).contains(&name.len()) && iso7813(name), "line {}: {name}", r.line);
        assert!(t1.len() <= 76 && t1.is_ascii(), "line {}: track 1 is {} characters", r.line, t1.len());
        let t2 = &card.tracks.as_ref().unwrap().track2;
        assert!(t2.len() <= 37 && t2.chars().all(|c| c.is_ascii_digit() || c == '='));
        // 5F20 carries the same name; embossing the transliterated embossing name.
        let t = tags(&card.applications[0]);
        assert_eq!(t["5F20"], name.as_bytes(), "line {}", r.line);
        let emb = r.embossing_name.as_deref().unwrap();
        assert!(iso7813(emb) && card.embossing.last().map(String::as_str) == Some(emb), "line {}", r.line);
        // The carrier prints the name as the issuer sent it.
        let sent_emboss = r.original_embossing_name.as_deref().unwrap_or(emb);
        assert_eq!(card.carrier.name.as_deref(), Some(sent_emboss));
        assert!(!sent_emboss.is_ascii() || sent_emboss != emb);
    }
    check_card(&p, &e.prepare(&records[0]).unwrap());
}

/// Issue 16: a card that outlives its issuer certificate (TEST issuers expire 12/35) is refused
/// per card, naming the line, unless the profile allows it.
#[test]
fn a_card_beyond_its_issuer_certificate_is_refused_unless_allowed() {
    let mut p = profile("visa-dda-credit");
    let mut r = records(&p, "visa-dda-credit.csv").remove(0);
    r.expiry = Yymm { yy: 36, mm: 1 };
    let e = engine("visa-dda-credit", 0);
    let err = e.prepare(&r).expect_err("beyond the issuer certificate").to_string();
    assert!(err.contains(&format!("line {}", r.line)) || err.contains(&r.line.to_string()), "{err}");
    assert!(
        err.contains("after its issuer certificate (1235 MMYY)") && err.contains("allow_beyond_issuer_expiry"),
        "{err}"
    );
    assert!(!err.contains(r.pan.digits()), "{err}");
    r.expiry = Yymm { yy: 35, mm: 12 };
    e.prepare(&r).expect("the certificate's own month is fine");
    p.input.allow_beyond_issuer_expiry = true;
    r.expiry = Yymm { yy: 36, mm: 1 };
    let (hsm, keys) = hsm_and_keys();
    let settings = EngineSettings { pool: PoolSettings { capacity: 0, refill_threads: 1 } };
    let allowed = Engine::new(p, keys.clone(), hsm.clone(), settings).unwrap();
    allowed.prepare(&r).expect("allowed by the profile");
}

/// Issue 13: card buffers are wiped, not left for the allocator (Drop calls `wipe`).
#[test]
fn a_prepared_card_wipes_its_data() {
    let p = profile("visa-dda-credit");
    let r = records(&p, "visa-dda-credit.csv").remove(0);
    let mut card = engine("visa-dda-credit", 0).prepare(&r).unwrap();
    assert!(card.carrier.cvv2.is_some() && card.tracks.is_some() && card.mailer.is_some());
    card.wipe();
    assert!(card.pan.is_empty() && card.embossing.is_empty());
    let t = card.tracks.as_ref().unwrap();
    assert!(t.track1.is_none() && t.track2.is_empty());
    assert!(card.applications.iter().flat_map(|a| &a.dgis).all(|d| d.data.is_empty()));
    let m = card.mailer.as_ref().unwrap();
    assert!(m.pin_block.is_empty() && m.name.is_none());
    assert!(card.carrier.cvv2.is_none() && card.carrier.name.is_none() && card.carrier.pan_masked.is_empty());
}

fn random_record(rng: &mut rand::rngs::StdRng, bin: &str, line: u64) -> CardRecord {
    let len = rng.random_range(13..=19usize);
    let mut body: String = bin.to_owned();
    while body.len() < len - 1 {
        body.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    let check = (0..10).find(|d| input::luhn_ok(&format!("{body}{d}"))).unwrap();
    let letters = |rng: &mut rand::rngs::StdRng, n: usize| -> String {
        (0..n).map(|_| char::from(b'A' + rng.random_range(0..26u8))).collect()
    };
    let (n1, n2) = (rng.random_range(1..8), rng.random_range(1..12));
    let (first, last) = (letters(rng, n1), letters(rng, n2));
    CardRecord {
        line,
        pan: Pan::parse(&format!("{body}{check}")).unwrap(),
        psn: rng.random_range(0..100),
        expiry: Yymm { yy: rng.random_range(27..=35), mm: rng.random_range(1..=12) },
        effective: Some(Yymm { yy: 25, mm: rng.random_range(1..=12) }),
        service_code: Some(["201", "101", "221", "120"][rng.random_range(0..4)].to_owned()),
        cardholder_name: Some(format!("{last}/{first}")),
        embossing_name: Some(format!("{first} {last}")),
        original_cardholder_name: None,
        original_embossing_name: None,
        fields: BTreeMap::from([
            ("country".to_owned(), "840".to_owned()),
            ("postcode".to_owned(), "75001".to_owned()),
            ("branch".to_owned(), format!("{:05}", rng.random_range(0..100_000u32))),
        ]),
    }
}

/// Random valid records (PAN 13–19 digits, PSN, dates, service codes, names) always produce cards
/// that pass every check, on the DDA and the multi-application profile.
#[test]
fn random_valid_records_always_check() {
    let seed: u64 = std::env::var("QUILL_PROP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_0001);
    println!("seed {seed} (QUILL_PROP_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, bin) in [("visa-dda-credit", "476173"), ("multi-app", "497010")] {
        let p = profile(name);
        let e = engine(name, 8);
        for i in 0..25 {
            let r = random_record(&mut rng, bin, i + 1);
            let card = e.prepare(&r).unwrap_or_else(|err| panic!("{name} seed {seed} record {i}: {err}"));
            check_card(&p, &card);
        }
    }
}

/// Random corruptions of valid input lines give a record or an error naming the line; never a
/// panic, never a PAN in the message.
#[test]
fn random_invalid_input_is_an_error_never_a_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xBAD1);
    let p = profile("visa-dda-credit");
    let text = std::fs::read_to_string(root().join("samples/visa-dda-credit.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let header = lines.remove(0);
    let mut errors = 0;
    for _ in 0..400 {
        let mut l = lines[rng.random_range(0..lines.len())].clone().into_bytes();
        for _ in 0..rng.random_range(1..4) {
            if l.is_empty() {
                break;
            }
            let i = rng.random_range(0..l.len());
            match rng.random_range(0..4) {
                0 => l[i] = rng.random(),
                1 => {
                    l.remove(i);
                }
                2 => l.insert(i, b",;\"\xFF9"[rng.random_range(0..5)]),
                _ => l.truncate(i),
            }
        }
        let data = [header.as_bytes(), b"\n", &l, b"\n"].concat();
        for r in input::Records::new(&p.input, "fuzz.csv", std::io::Cursor::new(data)) {
            if let Err(bad) = r {
                assert!(!bad.errors.is_empty());
                for e in &bad.errors {
                    let msg = e.to_string();
                    assert!(msg.starts_with(&format!("fuzz.csv:{}:", bad.line)), "{msg}");
                    assert!(!msg.contains("4761739001010010"), "PAN in {msg}");
                }
                errors += 1;
            }
        }
    }
    assert!(errors > 100, "{errors} errors");
}

#[test]
fn setup_errors_name_the_field_and_the_label() {
    let (hsm, keys) = hsm_and_keys();
    // A missing key.
    let mut partial = keys.clone();
    assert!(partial.remove("CVK-VISA-TEST").is_some());
    let e = Engine::new(profile("visa-dda-credit"), partial, hsm.clone(), EngineSettings::default()).unwrap_err();
    assert!(
        matches!(&e, SetupError::MissingKey { field, label } if field == "mag_stripe.cvk" && label == "CVK-VISA-TEST"),
        "{e}"
    );
    // A key of the wrong algorithm recorded with the usage the step needs: its block at rest says
    // P0, and that answers first.
    let mut wrong = keys.clone();
    wrong.insert("CVK-VISA-TEST", keys.get("ZPK-MAILER-AES-TEST").unwrap().clone(), KeyUsage::Cvk);
    let e = Engine::new(profile("visa-dda-credit"), wrong, hsm.clone(), EngineSettings::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mag_stripe.cvk: key \"CVK-VISA-TEST\" has usage P0 (PIN encryption); this step needs C0 (card verification key)"
    );
    // The PIN-mailer key recorded as a CVK: the record's usage changes nothing, its block says P0,
    // which is what the step needs.
    let mut other_use = keys.clone();
    other_use.insert("ZPK-MAILER-TEST", keys.get("ZPK-MAILER-TEST").unwrap().clone(), KeyUsage::Cvk);
    assert_eq!(other_use.usage("ZPK-MAILER-TEST"), Some(KeyUsage::PinEncryption));
    Engine::new(profile("visa-dda-credit"), other_use, hsm.clone(), EngineSettings::default()).unwrap();
    // An issuer key certified for another RID.
    let mut swapped = keys.clone();
    swapped.insert_issuer("ISS-VISA-TEST-1408", keys.issuer("ISS-MC-TEST-1408").unwrap().clone());
    let e = Engine::new(profile("visa-dda-credit"), swapped, hsm.clone(), EngineSettings::default()).unwrap_err();
    assert!(e.to_string().contains("RID A000000004"), "{e}");
}

/// The finding of issue 13: a profile naming the IMK-AC as the transport key and the CVK as the
/// PIN-mailer key was accepted and produced output. Both algorithms fit (DES2); the usages do not.
#[test]
fn an_imk_as_transport_key_and_a_cvk_as_mailer_key_are_refused() {
    let (hsm, keys) = hsm_and_keys();
    let path = root().join("profiles/visa-dda-credit.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let attack = |from: &str, to: &str| {
        let p = Profile::parse(&text.replacen(from, to, 1), "attack").unwrap();
        Engine::new(p, keys.clone(), hsm.clone(), EngineSettings::default()).unwrap_err().to_string()
    };
    assert_eq!(
        attack("transport_key = \"TK-DEK-TEST\"", "transport_key = \"IMK-AC-VISA-TEST\""),
        "applications.visa-credit.secret.transport_key: key \"IMK-AC-VISA-TEST\" has usage E0 (EMV IMK, application \
         cryptograms); this step needs D0 (data encryption) or K0 (key encryption)"
    );
    assert_eq!(
        attack("key = \"ZPK-MAILER-TEST\"", "key = \"CVK-VISA-TEST\""),
        "pin.mailer.key: key \"CVK-VISA-TEST\" has usage C0 (card verification key); this step needs P0 (PIN encryption)"
    );
    // The profile as it was still builds, and prepares a card.
    let e = Engine::new(profile("visa-dda-credit"), keys.clone(), hsm.clone(), EngineSettings::default()).unwrap();
    let p = profile("visa-dda-credit");
    let r = records(&p, "visa-dda-credit.csv").into_iter().next().unwrap();
    e.prepare(&r).unwrap();
}

#[test]
fn a_pan_outside_the_issuer_certificate_is_refused_per_card() {
    let e = engine("visa-dda-credit", 0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let r = random_record(&mut rng, "411111", 42);
    let err = e.prepare(&r).unwrap_err();
    assert_eq!(err.line, 42);
    assert!(err.step.contains("issuer certificate"), "{err}");
    assert!(!err.to_string().contains(r.pan.digits()), "{err}");
}

/// A key inventory record that lies about a key's usage does not turn the key to another use:
/// the IMK-AC's block at rest says E0, so recorded as the transport key (D0) it is refused when
/// the engine is built, from the block's header; and the HSM refuses it for a transport step
/// even when asked directly, before the block is opened.
#[test]
fn a_record_that_lies_about_usage_changes_nothing() {
    let (hsm, keys) = hsm_and_keys();
    let imk = keys.get("IMK-AC-VISA-TEST").unwrap().clone();
    assert_eq!(imk.usage(), Some(KeyUsage::EmvAc));
    let mut lying = keys.clone();
    lying.insert("TK-DEK-TEST", imk.clone(), KeyUsage::DataEncryption);
    let settings = EngineSettings { pool: PoolSettings { capacity: 1, refill_threads: 1 } };
    let Err(e) = Engine::new(profile("visa-dda-credit"), lying, hsm.clone(), settings) else {
        panic!("an engine with the IMK recorded as the transport key was built")
    };
    assert!(matches!(e, SetupError::WrongUsage { has: KeyUsage::EmvAc, .. }), "{e:?}");
    assert!(e.to_string().contains("\"TK-DEK-TEST\" has usage E0"), "{e}");
    let e = hsm.derive_icc_master_key(&imk, "4761739001010010", "01", &imk).unwrap_err();
    assert!(matches!(e, quill_hsm::HsmError::KeyBlock { .. }), "{e:?}");
    assert!(e.to_string().contains("usage E0") && e.to_string().contains("transport key"), "{e}");
}

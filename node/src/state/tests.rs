//! Apply is total and deterministic: a property test throws valid, mutated and random commands of
//! every domain at [`super::apply`] (as the state machine does, one request at a time) and checks
//! that it never panics, that two runs of the same sequence give the same outcomes and the same
//! state, that no write ever lands outside the domains' prefixes, and that the audit chain still
//! verifies afterwards. Seeded, so a failure names a reproducible seed.

#![allow(clippy::unwrap_used)]

use quill_hsm::{Kcv, KeyAlg, RsaPublic, SealedComponent, WrappedKey};

use super::apply;
use crate::identity::{Actor, Role};
use crate::jobs::JobCommand;
use crate::keys::KeyCommand;
use crate::keys::model::{ApprovalAction, CeremonyTarget, KeyState, Origin, Usage};
use crate::raft::{Command, Outcome, Request};
use crate::store::{Kv, MemKv};

/// xorshift64*: a small deterministic generator (the test must replay from its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn who(role: Role, name: &str) -> Actor {
    Actor { name: name.into(), role }
}

/// An issuer key's block at rest as an HSM writes it (algorithm R, usage S0, bound to `public`
/// and `tenant`; the key data is filler under a made-up KBPK: apply reads only the header).
fn issuer_block(public: RsaPublic, tenant: &str) -> quill_hsm::WrappedRsaKey {
    use quill_hsm::tr31::{self, Kbpk, Tr31Header};
    let template = format!("D0000S0RS00N02100P44{}0T{:02X}{tenant}", public.fingerprint(), 4 + tenant.len());
    let h = Tr31Header::parse_template(template.as_bytes()).expect("template");
    let blob = tr31::wrap(Kbpk::Aes(&[1; 32]), &h, &[0x30; 300], None, &mut |b: &mut [u8]| b.fill(3)).expect("wrap");
    quill_hsm::WrappedRsaKey { public, blob: blob.into_bytes(), smk_kcv: Kcv("AAAAAAAAAA".into()) }
}

fn wrapped(smk: &str) -> WrappedKey {
    WrappedKey { alg: KeyAlg::Aes256, blob: vec![7; 40], kcv: Kcv("0A0B0C0D0E".into()), smk_kcv: Kcv(smk.into()) }
}

const DIGEST: &str = "ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789";

/// A story through every domain, valid in this order: nodes enrol, custodians form the SMK, keys
/// are made and approved, a job runs and is delivered, the benchmark writes, a seal is tried.
fn corpus() -> Vec<(Actor, Command)> {
    let admin = who(Role::Admin, "ada");
    let (alice, bob) = (who(Role::Custodian, "alice"), who(Role::Custodian, "bob"));
    let otto = who(Role::Operator, "otto");
    let mut c: Vec<(Actor, Command)> = Vec::new();
    for n in [1u64, 2] {
        let transport = RsaPublic::new(&[0xC0, n as u8, 1, 2, 3], &[1, 0, 1]);
        c.push((Actor::node(n), Command::Keys(KeyCommand::EnrollNode { node: n, transport, hsm: "sim".into() })));
    }
    c.push((
        admin.clone(),
        Command::Keys(KeyCommand::CeremonyStart { id: "s".into(), target: CeremonyTarget::Smk, components: 2 }),
    ));
    for who in [&alice, &bob] {
        let sealed = vec![(1, SealedComponent(vec![1; 8])), (2, SealedComponent(vec![2; 8]))];
        c.push((
            who.clone(),
            Command::Keys(KeyCommand::CeremonySubmit { id: "s".into(), kcv: Kcv("0102030405".into()), sealed }),
        ));
    }
    for n in [1u64, 2] {
        c.push((
            Actor::node(n),
            Command::Keys(KeyCommand::SmkFormed { node: n, ceremony: "s".into(), kcv: Kcv("AAAAAAAAAA".into()) }),
        ));
    }
    c.push((
        Actor::node(1),
        Command::Keys(KeyCommand::AuditKeysSet {
            keys: crate::keys::model::AuditKeys { mac: wrapped("AAAAAAAAAA"), enc: wrapped("AAAAAAAAAA"), node: 1 },
        }),
    ));
    for (label, usage) in [("imk", Usage::E0), ("zmk", Usage::K0)] {
        c.push((
            admin.clone(),
            Command::Keys(KeyCommand::KeyCreate {
                label: label.into(),
                usage,
                exportable: true,
                origin: Origin::Generated { node: 1 },
                wrapped: wrapped("AAAAAAAAAA"),
                active: true,
                tenant: "default".into(),
            }),
        ));
    }
    c.push((admin.clone(), Command::Keys(KeyCommand::KeySetState { id: "imk.v1".into(), state: KeyState::Suspended })));
    c.push((
        admin.clone(),
        Command::Keys(KeyCommand::ApprovalRequest {
            id: "x1".into(),
            action: ApprovalAction::Export { key: "imk.v1".into(), kbpk: "zmk.v1".into() },
            ttl_ms: 0,
        }),
    ));
    c.push((
        admin.clone(),
        Command::Keys(KeyCommand::ApprovalRequest {
            id: "g1".into(),
            action: ApprovalAction::SmkToNode { node: 3 },
            ttl_ms: 0,
        }),
    ));
    for who in [&alice, &bob] {
        c.push((who.clone(), Command::Keys(KeyCommand::ApprovalDecide { id: "x1".into(), grant: true })));
    }
    c.push((admin.clone(), Command::Keys(KeyCommand::ExportDone { approval: "x1".into() })));
    c.push((
        Actor::node(2),
        Command::Keys(KeyCommand::HostPathUsed {
            node: 2,
            operation: "xor".into(),
            what: "components".into(),
            module: "softhsm".into(),
        }),
    ));
    c.push((
        admin.clone(),
        Command::Keys(KeyCommand::CaKeyImport {
            rid: "A000000999".into(),
            index: 0x42,
            modulus: vec![0xB5; 128],
            exponent: vec![3],
            checksum: Some(vec![0; 20]),
        }),
    ));
    c.push((
        admin.clone(),
        Command::Keys(KeyCommand::IssuerKeyCreate {
            label: "iss".into(),
            key: issuer_block(RsaPublic::new(&[0xC1; 64], &[3]), "default"),
            origin: Origin::Generated { node: 1 },
            tenant: "default".into(),
        }),
    ));
    // Issue 17's domains: a partner with its ZMK, a shared key, a block in and one out, its pinned
    // signing key and a KBPK by transport; a target, this site's signing key, a KBPK sent and
    // confirmed; an EMV CA key, a revocation, a request signed.
    let partner = who(Role::Partner, "gie");
    let kdh = RsaPublic::new(&[0xC3; 256], &[1, 0, 1]);
    let keys = |k: KeyCommand| Command::Keys(k);
    c.push((admin.clone(), keys(KeyCommand::PartnerSet { name: "gie".into(), zmk: "zmk.v1".into() })));
    c.push((admin.clone(), keys(KeyCommand::PartnerShare { name: "gie".into(), key: "imk.v1".into(), share: true })));
    c.push((
        partner.clone(),
        keys(KeyCommand::PartnerImported {
            label: "pk".into(),
            usage: Usage::E0,
            exportable: false,
            wrapped: wrapped("AAAAAAAAAA"),
        }),
    ));
    c.push((partner.clone(), keys(KeyCommand::PartnerExported { key: "imk.v1".into() })));
    c.push((admin.clone(), keys(KeyCommand::PartnerKdhSet { name: "gie".into(), kdh: kdh.clone() })));
    c.push((
        partner,
        keys(KeyCommand::PartnerKbpkReceived {
            wrapped: wrapped("AAAAAAAAAA"),
            kdh: kdh.fingerprint(),
            nonce: "00112233445566778899AABBCCDDEEFF".into(),
        }),
    ));
    c.push((
        admin.clone(),
        keys(KeyCommand::TargetSet {
            name: "prod".into(),
            endpoint: "prod.example:7443".into(),
            ca_sha256: DIGEST.into(),
            kbpk: String::new(),
        }),
    ));
    c.push((admin.clone(), keys(KeyCommand::KdhKeySet { key: issuer_block(kdh, "kbpk-transport") })));
    c.push((
        admin.clone(),
        keys(KeyCommand::TargetTransported {
            target: "prod".into(),
            wrapped: wrapped("AAAAAAAAAA"),
            krd: DIGEST.into(),
            node: 1,
        }),
    ));
    c.push((
        admin.clone(),
        keys(KeyCommand::TargetConfirmed {
            target: "prod".into(),
            kcv: "0A0B0C0D0E".into(),
            remote_key: "keysite.kbpk.v1".into(),
        }),
    ));
    c.push((
        admin.clone(),
        keys(KeyCommand::KeyDelivered {
            target: "prod".into(),
            approval: "x1".into(),
            kcv: "0A0B0C0D0E".into(),
            remote_key: "keysite.imk.v1".into(),
        }),
    ));
    let officer = who(Role::CaOfficer, "carla");
    c.push((
        officer.clone(),
        keys(KeyCommand::CaKeyCreate {
            rid: "A000000999".into(),
            index: 0xE1,
            expiry: "1299".into(),
            ranges: vec!["476100-476199".into()],
            key: issuer_block(RsaPublic::new(&[0xC5; 144], &[3]), crate::keys::apply::ca::CA_OWNER),
            origin: Origin::Generated { node: 1 },
        }),
    ));
    c.push((
        officer.clone(),
        keys(KeyCommand::CaRevoke {
            entries: vec![("A000000999".into(), 0xE1, "000001".into())],
            reason: "test".into(),
        }),
    ));
    c.push((
        admin.clone(),
        keys(KeyCommand::IssuerRequestSigned { label: "iss".into(), what: "visa request 476173-000007".into() }),
    ));
    c.push((officer, keys(KeyCommand::CaKeyRevoke { rid: "A000000999".into(), index: 0xE1, reason: "test".into() })));
    c.push((
        otto.clone(),
        Command::Jobs(JobCommand::Create {
            id: "J".into(),
            product: "p v1".into(),
            profile: String::new(),
            file: "f.csv".into(),
            digest: DIGEST.into(),
            records: 3,
            skipped: vec![],
            chunk_size: 2,
            chunks: 2,
            data_key: wrapped("AAAAAAAAAA"),
            mac_key: "MAC".into(),
            force: false,
            reason: None,
            retention_ms: 60_000,
            tenant: "default".into(),
        }),
    ));
    for (n, cards) in [(0u32, 2u32), (1, 1)] {
        c.push((otto.clone(), Command::Jobs(JobCommand::Input { id: "J".into(), n, cards, sealed: vec![n as u8; 4] })));
    }
    c.push((otto.clone(), Command::Jobs(JobCommand::Start { id: "J".into() })));
    c.push((Actor::node(1), Command::Jobs(JobCommand::Claim { id: "J".into(), n: 0, node: 1, lease_ms: 1000 })));
    c.push((
        Actor::node(1),
        Command::Jobs(JobCommand::Renew { id: "J".into(), n: 0, node: 1, token: 30, lease_ms: 1000 }),
    ));
    c.push((
        Actor::node(1),
        Command::Jobs(JobCommand::Complete {
            id: "J".into(),
            n: 0,
            node: 1,
            token: 30,
            prepared: 2,
            failures: vec![],
            sealed: vec![9; 8],
        }),
    ));
    c.push((
        otto.clone(),
        Command::Jobs(JobCommand::Ack { id: "J".into(), delivered: vec![("cards".into(), DIGEST.into())] }),
    ));
    c.push((otto.clone(), Command::Jobs(JobCommand::Cancel { id: "J".into() })));
    c.push((Actor::node(2), Command::Jobs(JobCommand::Expire { id: "J".into() })));
    c.push((otto.clone(), Command::Jobs(JobCommand::Abort { id: "J".into() })));
    c.push((otto.clone(), Command::Put { key: "bench/k".into(), value: b"v".to_vec() }));
    c.push((
        Actor::node(1),
        Command::AuditSeal {
            seq: 3,
            hash: [0; 32],
            mac: crate::audit::AuditMac { key_kcv: Kcv("0A0B0C0D0E".into()), mac: [1; 32] },
        },
    ));
    c.push((admin, Command::Noop));
    c
}

/// Bytes that tend to break parsers: multi-byte UTF-8 (at every offset), huge varints, zeros.
const NASTY: &[&[u8]] =
    &["é".as_bytes(), "€".as_bytes(), "😀".as_bytes(), &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F], &[0], &[0x80, 0x01], b"/"];

fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for _ in 0..=rng.below(4) {
        if b.is_empty() {
            b.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(b.len());
        match rng.below(6) {
            0 => b[at] = rng.next() as u8,
            1 => b[at] ^= 1 << rng.below(8),
            2 => {
                let nasty = NASTY[rng.below(NASTY.len())];
                b.splice(at..at, nasty.iter().copied());
            }
            3 => b.truncate(at),
            4 => {
                let end = (at + 1 + rng.below(8)).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
            _ => b[at] = b[at].wrapping_add(1),
        }
    }
    b
}

fn actors() -> Vec<Actor> {
    let mut a: Vec<Actor> = Role::ALL.iter().map(|r| who(*r, "eve")).collect();
    a.extend([Actor::node(1), Actor::node(2), Actor::node(3), who(Role::Admin, "ada"), who(Role::Custodian, "alice")]);
    a.extend([who(Role::Custodian, "bob"), who(Role::Operator, "otto")]);
    a
}

/// One sequence of requests from `seed`: corpus entries in story order, interleaved with mutated
/// and re-attributed ones.
fn sequence(seed: u64) -> Vec<Request> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let corpus = corpus();
    let actors = actors();
    let mut out = Vec::new();
    let mut time_ms = 1_000u64;
    for (i, (actor, cmd)) in corpus.iter().enumerate() {
        time_ms += rng.below(3000) as u64;
        let mut push = |actor: Actor, cmd: Command, serial: u64| {
            let cert = Some(cert_of(&actor));
            out.push(Request { client_id: "c".into(), serial, time_ms, actor, audit_mac: None, cert, cmd })
        };
        push(actor.clone(), cmd.clone(), i as u64 * 10);
        for k in 1..=rng.below(4) as u64 {
            let actor = if rng.below(3) == 0 { actors[rng.below(actors.len())].clone() } else { actor.clone() };
            let source = &corpus[rng.below(corpus.len())].1;
            let bytes = mutate(&mut rng, &crate::raft::encode_command(source));
            if let Ok(cmd) = crate::raft::decode_command(&bytes) {
                push(actor, cmd, i as u64 * 10 + k);
            }
        }
    }
    out
}

fn run(seq: &[Request]) -> (Vec<Outcome>, MemKv) {
    let mut kv = MemKv::default();
    let outcomes = seq
        .iter()
        .enumerate()
        .map(|(i, req)| apply(&mut kv, i as u64 + 1, req.clone()).expect("MemKv never fails"))
        .collect();
    (outcomes, kv)
}

#[test]
fn apply_is_total_and_deterministic_on_mutated_commands_of_every_domain() {
    let mut applied = 0;
    let mut done = 0;
    for seed in 1..=1500u64 {
        let seq = sequence(seed);
        let (a, kv_a) = run(&seq);
        let (b, kv_b) = run(&seq);
        assert_eq!(a, b, "seed {seed}: outcomes differ between two runs");
        assert_eq!(kv_a.0, kv_b.0, "seed {seed}: states differ between two runs");
        for key in kv_a.0.keys() {
            let known = ["keys/", "jobs/", "audit/", "bench/"];
            assert!(known.iter().any(|p| key.starts_with(p.as_bytes())), "seed {seed}: stray key {key:?}");
        }
        let report = crate::audit::verify_links(&kv_a).expect("verify");
        assert!(report.broken.is_none(), "seed {seed}: audit chain broken: {:?}", report.broken);
        applied += a.len();
        done += a.iter().filter(|o| matches!(o, Outcome::Done { .. } | Outcome::Put { .. })).count();
    }
    // The story's own commands go through: the test exercises apply beyond its first refusal.
    assert!(applied > 10_000 && done > 1500 * 20, "only {done} of {applied} applied");
}

#[test]
fn apply_is_total_on_random_bytes() {
    let mut rng = Rng(0x5EED);
    let actors = actors();
    let mut decoded = 0;
    let mut kv = MemKv::default();
    for (index, (actor, cmd)) in corpus().into_iter().enumerate() {
        let req = Request {
            client_id: "c".into(),
            serial: index as u64,
            time_ms: 5,
            actor,
            audit_mac: None,
            cert: None,
            cmd,
        };
        apply(&mut kv, index as u64 + 1, req).unwrap();
    }
    for i in 0..200_000u64 {
        let len = 1 + rng.below(48);
        // A command tag and a domain command tag (KeyCommand has 43 variants), then small values most of the time: they decode
        // as enum tags, lengths and ASCII text.
        let mut bytes = vec![rng.below(6) as u8, rng.below(48) as u8];
        bytes.extend((0..len).map(|_| match rng.below(4) {
            0 => rng.next() as u8,
            1 => b'a' + rng.below(26) as u8,
            _ => rng.below(8) as u8,
        }));
        // Whatever prefix decodes as a command (the rest is ignored here; the wire refuses it).
        let Ok((cmd, _)) = postcard::take_from_bytes::<Command>(&bytes) else { continue };
        decoded += 1;
        let actor = actors[rng.below(actors.len())].clone();
        let req =
            Request { client_id: "r".into(), serial: i, time_ms: 10_000 + i, actor, audit_mac: None, cert: None, cmd };
        apply(&mut kv, 1000 + i, req).unwrap();
    }
    eprintln!("{decoded} of 200000 random inputs decoded as commands and were applied");
    assert!(decoded > 10_000, "only {decoded} random inputs decoded");
}

#[test]
fn a_job_digest_with_a_multibyte_character_at_byte_16_is_refused_not_a_panic() {
    // Regression: slicing the digest at byte 16 for a duplicate-file message aborted every node,
    // again on every restart as they replayed the entry.
    let mut kv = MemKv::default();
    for (index, (actor, cmd)) in corpus().into_iter().take(20).enumerate() {
        let req = Request {
            client_id: "c".into(),
            serial: index as u64,
            time_ms: 5,
            actor,
            audit_mac: None,
            cert: None,
            cmd,
        };
        apply(&mut kv, index as u64 + 1, req).unwrap();
    }
    let digest = format!("{}é{}", &DIGEST[..15], &DIGEST[..47]);
    let cmd = |id: &str| {
        Command::Jobs(JobCommand::Create {
            id: id.into(),
            product: "p".into(),
            profile: String::new(),
            file: "f".into(),
            digest: digest.clone(),
            records: 1,
            skipped: vec![],
            chunk_size: 1,
            chunks: 1,
            data_key: wrapped("AAAAAAAAAA"),
            mac_key: "MAC".into(),
            force: false,
            reason: None,
            retention_ms: 0,
            tenant: "default".into(),
        })
    };
    assert!(super::validate::client_command(&cmd("J2")).unwrap_err().contains("SHA-256"));
    for (i, id) in ["J2", "J3"].into_iter().enumerate() {
        let req = Request {
            client_id: "x".into(),
            serial: i as u64,
            time_ms: 6,
            actor: who(Role::Operator, "otto"),
            audit_mac: None,
            cert: None,
            cmd: cmd(id),
        };
        match apply(&mut kv, 100 + i as u64, req).unwrap() {
            Outcome::Rejected { reason } => assert!(reason.contains("SHA-256"), "{reason}"),
            other => panic!("accepted: {other:?}"),
        }
    }
}

#[test]
fn a_benchmark_write_outside_bench_is_refused_and_changes_nothing() {
    let mut kv = MemKv::default();
    kv.put(b"audit/head", b"untouched".to_vec());
    for key in ["audit/head", "keys/smk", "jobs/job/J", "bench/", "benchX", ""] {
        let req = Request {
            client_id: "c".into(),
            serial: 1,
            time_ms: 1,
            actor: who(Role::Operator, "otto"),
            audit_mac: None,
            cert: None,
            cmd: Command::Put { key: key.into(), value: b"forged".to_vec() },
        };
        assert!(super::validate::client_command(&req.cmd).is_err(), "{key:?} passes validation");
        let mut copy = MemKv::default();
        let outcome = apply(&mut copy, 1, req).unwrap();
        assert!(matches!(outcome, Outcome::Rejected { .. }), "{key:?}: {outcome:?}");
        assert_ne!(copy.get(key.as_bytes()).unwrap().as_deref(), Some(&b"forged"[..]), "{key:?} written");
    }
}

#[test]
fn only_nodes_seal_the_audit_chain_and_clients_cannot_send_batches_or_seals() {
    let seal = Command::AuditSeal {
        seq: 1,
        hash: [0; 32],
        mac: crate::audit::AuditMac { key_kcv: Kcv("0A0B0C0D0E".into()), mac: [1; 32] },
    };
    assert!(super::validate::client_command(&seal).is_err());
    assert!(super::validate::client_command(&Command::Batch(vec![])).is_err());
    let mut kv = MemKv::default();
    let noop = Request {
        client_id: "c".into(),
        serial: 1,
        time_ms: 1,
        actor: who(Role::Operator, "otto"),
        audit_mac: None,
        cert: None,
        cmd: Command::Put { key: "bench/a".into(), value: vec![1] },
    };
    apply(&mut kv, 1, noop).unwrap();
    let head = crate::audit::head(&kv).unwrap();
    let req = Request {
        client_id: "c".into(),
        serial: 2,
        time_ms: 2,
        actor: who(Role::Admin, "ada"),
        audit_mac: None,
        cert: None,
        cmd: Command::AuditSeal {
            seq: head.seq,
            hash: head.hash,
            mac: crate::audit::AuditMac { key_kcv: Kcv("0A0B0C0D0E".into()), mac: [1; 32] },
        },
    };
    match apply(&mut kv, 2, req).unwrap() {
        Outcome::Rejected { reason } => assert!(reason.contains("needs role node"), "{reason}"),
        other => panic!("a seal by an admin was applied: {other:?}"),
    }
}

/// The certificate the API would have established for `actor` (one key per identity).
fn cert_of(actor: &Actor) -> crate::identity::CertRef {
    crate::identity::CertRef {
        serial: hex::encode(actor.to_string()),
        key_fp: actor.to_string(),
        tenants: crate::identity::Tenants::All,
    }
}

//! Token objects survive a module restart and a SIGKILL. A module loads once per process, so
//! each phase runs in a child process: this test binary re-run with `--exact child --nocapture`
//! and `QUILL_PERSIST_ROLE` naming what the child does. Children print one line per fact
//! (`KEY <label> <id> <kcv>`, `ACK …`) on stdout; the parent compares.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "QUILL_PERSIST_ROLE";
const PIN_VAR: &str = "QUILL_PERSIST_PIN";
const ROUND: &str = "QUILL_PERSIST_ROUND";
const NEW_USER_PIN: &str = "user-pin-after-restart";
/// The message every RSA check signs (raw, so the signature is deterministic).
const RSA_MSG: [u8; 4] = [0x6A, 0x01, 0x02, 0xBC];

// ---------------------------------------------------------------- child side

/// The child entry point: does nothing unless `QUILL_PERSIST_ROLE` is set.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    // libtest has printed "test child ... " without a newline: start on a line of our own.
    say("");
    let pkcs11 = load_module();
    let slot = *pkcs11.get_all_slots().unwrap().iter().min_by_key(|s| s.id()).unwrap();
    if role == "init" {
        pkcs11.init_token(slot, &pin(SO_PIN), "persist").unwrap();
        let s = pkcs11.open_rw_session(slot).unwrap();
        s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
        s.init_pin(&pin(USER_PIN)).unwrap();
        s.logout().unwrap();
        say("READY");
        return;
    }
    let info = pkcs11.get_token_info(slot).unwrap();
    assert!(info.token_initialized(), "the token must still be initialised");
    assert_eq!(info.label(), "persist");
    let s = pkcs11.open_rw_session(slot).unwrap();
    let user_pin = std::env::var(PIN_VAR).unwrap_or_else(|_| USER_PIN.to_string());
    s.login(UserType::User, Some(&pin(&user_pin))).unwrap();
    match role.as_str() {
        "create" => child_create(&s),
        "list" => child_list(&s),
        "setpin" => {
            s.set_pin(&pin(&user_pin), &pin(NEW_USER_PIN)).unwrap();
            say("PIN-CHANGED");
        }
        "churn" => child_churn(&s, &std::env::var(ROUND).unwrap()),
        "parallel" => child_parallel(&pkcs11, slot),
        other => panic!("unknown role {other}"),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn report_key(s: &Session, o: ObjectHandle) {
    let label = String::from_utf8(bytes(s, o, AttributeType::Label)).unwrap();
    let id = hex::encode(bytes(s, o, AttributeType::Id));
    say(&format!("KEY {label} {id} {}", hex::encode(kcv(s, o))));
}

fn child_create(s: &Session) {
    let token = |label: &str, id: u8| {
        vec![Attribute::Token(true), Attribute::Label(label.as_bytes().to_vec()), Attribute::Id(vec![id])]
    };
    let g = s
        .generate_key(
            &Mechanism::Des2KeyGen,
            &[
                token("gen-des2", 1),
                vec![Attribute::Sensitive(true), Attribute::Extractable(false), Attribute::Encrypt(true)],
            ]
            .concat(),
        )
        .unwrap();
    report_key(s, g);
    let g3 = s
        .generate_key(
            &Mechanism::Des3KeyGen,
            &[
                token("gen-des3-clear", 2),
                vec![Attribute::Sensitive(false), Attribute::Extractable(true), Attribute::Encrypt(true)],
            ]
            .concat(),
        )
        .unwrap();
    report_key(s, g3);
    say(&format!("VALUE gen-des3-clear {}", hex::encode(bytes(s, g3, AttributeType::Value))));
    let a =
        aes_key(s, &h("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"), &token("aes-created", 3));
    report_key(s, a);
    let renamed = des_key(s, &h("0123456789ABCDEFFEDCBA9876543210"), &token("renamed-before", 4));
    s.update_attributes(renamed, &[Attribute::Label(b"renamed-after".to_vec())]).unwrap();
    report_key(s, renamed);
    let gone = des_key(s, &h("FEDCBA98765432100123456789ABCDEF"), &token("destroyed", 5));
    s.destroy_object(gone).unwrap();
    let _session_only = des_key(
        s,
        &h("1111111111111111FEDCBA9876543210"),
        &[Attribute::Label(b"session-only".to_vec()), Attribute::Id(vec![6])],
    );
    let (_, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::ModulusBits(1024u64.into()),
                Attribute::PublicExponent(vec![3]),
                Attribute::Verify(true),
                Attribute::Label(b"rsa".to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Label(b"rsa".to_vec()),
            ],
        )
        .unwrap();
    say(&format!("RSA rsa {}", hex::encode(s.sign(&Mechanism::RsaX509, private, &RSA_MSG).unwrap())));
}

fn child_list(s: &Session) {
    let secret = s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)]).unwrap();
    for o in &secret {
        report_key(s, *o);
        if let Some(Attribute::Value(v)) = attr(s, *o, AttributeType::Value) {
            let label = String::from_utf8(bytes(s, *o, AttributeType::Label)).unwrap();
            say(&format!("VALUE {label} {}", hex::encode(v)));
        }
        // The key is usable, not only listed.
        let kt = attr(s, *o, AttributeType::KeyType);
        if matches!(kt, Some(Attribute::KeyType(KeyType::DES2 | KeyType::DES3))) && flag(s, *o, AttributeType::Encrypt)
        {
            let ct = s.encrypt(&Mechanism::Des3Ecb, *o, &[0u8; 8]).unwrap();
            assert_eq!(ct[..3], kcv(s, *o)[..], "encrypting zeros reproduces the KCV");
        }
    }
    for o in s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]).unwrap() {
        let label = String::from_utf8(bytes(s, o, AttributeType::Label)).unwrap();
        say(&format!("RSA {label} {}", hex::encode(s.sign(&Mechanism::RsaX509, o, &RSA_MSG).unwrap())));
    }
    say(&format!("COUNT {}", s.find_objects(&[Attribute::Token(true)]).unwrap().len()));
}

fn child_churn(s: &Session, round: &str) {
    let mut live: Vec<(String, ObjectHandle)> = Vec::new();
    for i in 0u32.. {
        let label = format!("churn-{round}-{i}");
        let tmpl = vec![
            Attribute::Token(true),
            Attribute::Label(label.clone().into_bytes()),
            Attribute::Id(i.to_be_bytes().to_vec()),
            Attribute::Encrypt(true),
        ];
        let o = if i % 2 == 0 {
            s.generate_key(&Mechanism::Des2KeyGen, &tmpl).unwrap()
        } else {
            let v: Vec<u8> = (0..16u32).map(|j| (i.wrapping_mul(31).wrapping_add(j * 7)) as u8).collect();
            aes_key(s, &v, &tmpl)
        };
        say(&format!("ACK {label} {}", hex::encode(kcv(s, o))));
        live.push((label, o));
        // Every fifth key, destroy the oldest one of this round.
        if i % 5 == 4 {
            let (old, oh) = live.remove(0);
            say(&format!("DELETING {old}"));
            s.destroy_object(oh).unwrap();
            say(&format!("DEL {old}"));
        }
    }
}

/// Four threads, each with its own session, create and destroy token keys at the same time.
fn child_parallel(pkcs11: &cryptoki::context::Pkcs11, slot: cryptoki::slot::Slot) {
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            scope.spawn(move || {
                let s = pkcs11.open_rw_session(slot).unwrap();
                for i in 0..20u8 {
                    let label = format!("par-{t}-{i}");
                    let v: Vec<u8> = (0..16u8).map(|j| j ^ (t << 4) ^ i).collect();
                    let tmpl = [
                        Attribute::Token(true),
                        Attribute::Label(label.clone().into_bytes()),
                        Attribute::Id(vec![t, i]),
                    ];
                    let o = aes_key(&s, &v, &tmpl);
                    if i % 4 == 3 {
                        s.destroy_object(o).unwrap();
                    } else {
                        report_key(&s, o);
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------- parent side

fn child_command(conf: &Path, role: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("QUILL_HSM_CONF", conf)
        .env(ROLE, role)
        .env_remove(PIN_VAR)
        .stdin(Stdio::null());
    c
}

/// Run a child to completion; its stdout lines (asserting it succeeded).
fn run_child(conf: &Path, role: &str, envs: &[(&str, &str)]) -> Vec<String> {
    let mut c = child_command(conf, role);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {role} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// The rest of a line after `tag` (which may follow other output on the same line).
fn after<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    line.find(tag).map(|i| &line[i + tag.len()..])
}

/// `KEY label id kcv` lines → label → (id, kcv).
fn keys(lines: &[String]) -> BTreeMap<String, (String, String)> {
    lines
        .iter()
        .filter_map(|l| after(l, "KEY "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_string(), (f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

fn tagged(lines: &[String], tag: &str) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| after(l, tag))
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
}

#[test]
fn token_keys_survive_module_restart() {
    let tmp = temp_dir("hsm-persist-");
    let conf = write_config(tmp.path(), HsmConfig { slots: 1, max_pin_tries: 10, ..HsmConfig::default() });
    run_child(&conf, "init", &[]);
    let created = run_child(&conf, "create", &[]);
    let made = keys(&created);
    assert_eq!(made.len(), 4, "the create child reports 4 token secret keys: {created:?}");
    let listed = run_child(&conf, "list", &[]);
    let found = keys(&listed);
    assert_eq!(found, made, "token secret keys after a restart (label → id, KCV)");
    assert!(!found.contains_key("session-only"), "a session key was persisted");
    assert!(!found.contains_key("destroyed"), "a destroyed key came back");
    assert!(!found.contains_key("renamed-before"), "a label change was lost");
    assert_eq!(tagged(&listed, "VALUE ")["gen-des3-clear"], tagged(&created, "VALUE ")["gen-des3-clear"]);
    assert_eq!(
        tagged(&listed, "RSA ")["rsa"],
        tagged(&created, "RSA ")["rsa"],
        "the RSA key signs identically after a restart"
    );
    let count: Vec<&str> = listed.iter().filter_map(|l| after(l, "COUNT ")).collect();
    assert_eq!(count, ["6"], "token objects after a restart: 4 secret keys and one RSA pair");
}

#[test]
fn token_survives_pin_change_across_restart() {
    let tmp = temp_dir("hsm-persist-pin-");
    let conf = write_config(tmp.path(), HsmConfig { slots: 1, max_pin_tries: 10, ..HsmConfig::default() });
    run_child(&conf, "init", &[]);
    let made = keys(&run_child(&conf, "create", &[]));
    run_child(&conf, "setpin", &[]);
    let listed = run_child(&conf, "list", &[(PIN_VAR, NEW_USER_PIN)]);
    assert_eq!(keys(&listed), made, "keys readable with the new PIN after a restart");
    // The old PIN no longer works.
    let out = child_command(&conf, "list").output().unwrap();
    assert!(!out.status.success(), "the old user PIN still logs in after C_SetPIN and a restart");
}

#[test]
fn concurrent_token_writes_survive_restart() {
    let tmp = temp_dir("hsm-persist-par-");
    let conf = write_config(tmp.path(), HsmConfig { slots: 1, max_pin_tries: 10, ..HsmConfig::default() });
    run_child(&conf, "init", &[]);
    let made = keys(&run_child(&conf, "parallel", &[]));
    assert_eq!(made.len(), 4 * 15, "keys reported by the writer threads");
    let found = keys(&run_child(&conf, "list", &[]));
    assert_eq!(found, made, "token keys written concurrently, after a restart");
}

#[test]
fn acknowledged_keys_survive_sigkill() {
    let tmp = temp_dir("hsm-persist-kill-");
    let conf = write_config(tmp.path(), HsmConfig { slots: 1, max_pin_tries: 10, ..HsmConfig::default() });
    run_child(&conf, "init", &[]);
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut deleted: Vec<String> = Vec::new();
    // Destroys started but not acknowledged when the child died: either outcome is fine.
    let mut deleting: Vec<String> = Vec::new();
    let mut in_flight: Vec<String> = Vec::new();
    for (round, kill_after) in [(0u32, 12usize), (1, 27), (2, 41), (3, 3), (4, 64), (5, 0)] {
        let mut child = child_command(&conf, "churn")
            .env(ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let started = Instant::now();
        let mut n = 0;
        let mut lines = BufReader::new(stdout).lines();
        while n < kill_after {
            let Some(line) = lines.next() else {
                panic!("churn child {round} ended after {n} keys: {:?}", child.wait());
            };
            let line = line.unwrap();
            if let Some(rest) = after(&line, "ACK ") {
                let (label, kcv) = rest.split_once(' ').unwrap();
                acked.insert(label.to_string(), kcv.to_string());
                n += 1;
            } else if let Some(label) = after(&line, "DELETING ") {
                deleting.push(label.to_string());
            } else if let Some(label) = after(&line, "DEL ") {
                deleted.push(label.to_string());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "churn child too slow");
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "the churn child should have been killed");
        // Lines the child wrote before it died are acknowledged too (it printed them after OK).
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = after(&line, "ACK ") {
                let (label, kcv) = rest.split_once(' ').unwrap();
                acked.insert(label.to_string(), kcv.to_string());
            } else if let Some(label) = after(&line, "DELETING ") {
                deleting.push(label.to_string());
            } else if let Some(label) = after(&line, "DEL ") {
                deleted.push(label.to_string());
            }
        }
        in_flight.push(format!("churn-{round}-"));
        eprintln!("round {round}: killed after {n} acknowledged keys ({:?})", started.elapsed());
        // A new process loads the token and finds every acknowledged key.
        let found = keys(&run_child(&conf, "list", &[]));
        for (label, kcv) in &acked {
            if deleted.contains(label) {
                assert!(!found.contains_key(label), "{label} was destroyed (acknowledged) but came back");
                continue;
            }
            if deleting.contains(label) && !found.contains_key(label) {
                continue; // its destroy was in flight at the kill
            }
            let got = found
                .get(label)
                .unwrap_or_else(|| panic!("acknowledged key {label} lost after SIGKILL in round {round}"));
            assert_eq!(&got.1, kcv, "KCV of {label}");
        }
        // Nothing unexpected: only acknowledged keys, or the one key in flight at the kill.
        let extra: Vec<&String> = found.keys().filter(|l| !acked.contains_key(*l)).collect();
        assert!(extra.len() <= in_flight.len(), "unacknowledged keys present: {extra:?}");
    }
}

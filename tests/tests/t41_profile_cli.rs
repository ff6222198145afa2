//! `quill profile` and `quill prep run` as an integrator drives them (issue 16): the profile
//! reference and JSON Schema the binary prints, a batch checked against its profile with the
//! refusals a bureau expects (a repeated card, an expired card, a name with no mapping), a
//! profile that puts the stripe's CVV on the chip refused, and lab issuer key sizes checked.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use quill_tests::{binary, repo_root};

fn quill(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("quill")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_reference_and_the_schema_come_from_the_binary() {
    let (code, md, err) = quill(&["profile", "schema"]);
    assert_eq!(code, 0, "{err}");
    let doc = std::fs::read_to_string(repo_root().join("docs/profile-reference.md")).unwrap();
    assert_eq!(md, doc, "quill profile schema and docs/profile-reference.md differ");
    let (code, json, err) = quill(&["profile", "schema", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let input = &v["$defs"]["InputLayout"]["properties"];
    for f in ["name_transliteration", "duplicates", "allow_expired", "allow_beyond_issuer_expiry", "encoding"] {
        assert!(input.get(f).is_some(), "InputLayout lacks {f}: {input}");
    }
    assert!(v["$defs"]["MagStripe"]["properties"].get("chip_track1").is_some());
    assert_eq!(v["additionalProperties"], serde_json::Value::Bool(false), "unknown sections are refused");
}

#[test]
fn a_batch_is_checked_the_way_a_bureau_expects() {
    let dir = tempfile::tempdir().unwrap();
    let profile = repo_root().join("prep/profiles/multi-app.toml");
    let input = dir.path().join("bank.csv");
    let lines = [
        "4970100000000014;00;2810;201;García/José;José García;75001",
        "4970100000000014;01;2810;201;MÜLLER/JÖRG;Jörg Müller;75001",
        "4970100000000014;00;2810;201;Lefèvre/Zoë;Zoë Lefèvre;75001", // line 3 repeats line 1
        "4970100000000030;00;2001;201;DURAND/ANNE;ANNE DURAND;13001", // expired
        "4970100000000048;00;3011;201;SMITH☺/JO;JO SMITH;13001",      // no mapping
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (code, out, err) =
        quill(&["profile", "validate", profile.to_str().unwrap(), "--input", input.to_str().unwrap(), "--json"]);
    assert_eq!(code, 3, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["records_ok"].as_u64(), v["records_bad"].as_u64()), (Some(2), Some(3)), "{v}");
    assert_eq!((v["transliterated"].as_u64(), v["duplicates"].as_u64()), (Some(2), Some(1)), "{v}");
    let errors: Vec<&str> = v["errors"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
    assert!(errors.iter().any(|e| e.contains("bank.csv:3: pan:") && e.contains("already on line 1")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("bank.csv:4: expiry:") && e.contains("expired in 2001")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("bank.csv:5: cardholder_name:") && e.contains("character 6 is not allowed")),
        "{errors:?}"
    );
    for e in &errors {
        assert!(!e.contains("4970100000000014") && !e.contains("SMITH"), "cardholder data in {e}");
    }
}

#[test]
fn a_profile_with_the_stripe_cvv_on_the_chip_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("prep/profiles/visa-dda-credit.toml")).unwrap();
    let chip = "[mag_stripe.chip_track2]\ndiscretionary = [\"pvki\", \"pvv\", \"icvv\", \"pad:00\"]";
    assert!(text.contains(chip));
    let bad = text.replace(chip, &chip.replace("icvv", "cvv"))
        + "\n[mag_stripe.chip_track1]\ndiscretionary = [\"pvki\", \"pvv\", \"cvv\"]\n";
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let (code, out, _) = quill(&["profile", "validate", path.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}");
    for field in ["mag_stripe.chip_track2.discretionary[2]", "mag_stripe.chip_track1.discretionary[2]"] {
        assert!(out.contains(field) && out.contains("never the stripe's CVV"), "{field}: {out}");
    }
}

#[test]
fn lab_issuer_key_sizes_outside_the_model_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let profile = repo_root().join("prep/profiles/visa-dda-credit.toml");
    let input = repo_root().join("prep/samples/visa-dda-credit.csv");
    for (bits, exponent) in [("1000", "3"), ("2048", "3"), ("1984", "17")] {
        let out = dir.path().join(bits);
        let (code, _, err) = quill(&[
            "prep",
            "run",
            "--profile",
            profile.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--issuer-bits",
            bits,
            "--issuer-exponent",
            exponent,
        ]);
        assert_eq!(code, 2, "{bits}/{exponent}: {err}");
        assert!(err.contains("issuer"), "{err}");
        assert!(!out.exists(), "nothing written for {bits}/{exponent}");
    }
}

//! `quill profile schema`: the profile reference (docs/profile-reference.md) or, with `--json`,
//! the profile format as a JSON Schema.
//!
//! `quill profile validate`: check a card-product profile (and, with `--input`, a batch file
//! against it) before anything is submitted. Every problem is listed with file, line, field and
//! reason; the exit code is 0 when clean, 3 when there are problems.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use quill_prep::input;
use quill_prep::profile::Profile;
use serde_json::json;

/// Options of `quill profile validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The profile (TOML).
    profile: PathBuf,
    /// A batch file to check against the profile's input layout (nothing is sent anywhere).
    #[arg(long)]
    input: Option<PathBuf>,
}

/// `quill profile schema`.
pub fn schema(json: bool) -> Result<u8> {
    if json {
        println!("{}", serde_json::to_string_pretty(&quill_prep::profile_schema::schema())?);
    } else {
        print!("{}", quill_prep::profile_schema::reference_markdown());
    }
    Ok(crate::exit_codes::OK)
}

/// `quill profile validate`.
pub fn validate(a: &ValidateArgs, json: bool) -> Result<u8> {
    let name = a.profile.display().to_string();
    let text = std::fs::read_to_string(&a.profile).with_context(|| format!("cannot read {name}"))?;
    let profile = match Profile::parse(&text, &name) {
        Ok(p) => p,
        Err(errors) => {
            if json {
                let list: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
                println!("{}", json!({"profile": name, "ok": false, "errors": list}));
            } else {
                for e in &errors.0 {
                    println!("{e}");
                }
                println!("{name}: {} problem(s)", errors.0.len());
            }
            return Ok(crate::exit_codes::CHECK_FAILED);
        }
    };
    let Some(path) = &a.input else {
        if json {
            println!("{}", json!({"profile": name, "ok": true, "applications": profile.applications.len()}));
        } else {
            println!("{name}: OK ({} application(s))", profile.applications.len());
        }
        return Ok(crate::exit_codes::OK);
    };
    let file = path.display().to_string();
    let reader = std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("cannot open {file}"))?);
    let summary = input::scan(&profile.input, &file, reader);
    let errors: Vec<String> = summary.errors.iter().map(|e| e.to_string()).collect();
    if json {
        println!(
            "{}",
            json!({"profile": name, "input": file, "ok": summary.bad == 0 && errors.is_empty(),
                   "records_ok": summary.ok, "records_bad": summary.bad, "errors": errors,
                   "transliterated": summary.transliterated, "duplicates": summary.duplicates,
                   "refuses_batch": summary.refuses_batch(&profile.input)})
        );
    } else {
        for e in &errors {
            println!("{e}");
        }
        println!(
            "{file}: {} good record(s) ({} with names transliterated), {} bad ({} repeated card(s))",
            summary.ok, summary.transliterated, summary.bad, summary.duplicates
        );
    }
    Ok(if summary.bad == 0 && errors.is_empty() { crate::exit_codes::OK } else { crate::exit_codes::CHECK_FAILED })
}

//! The profile format as data: a JSON Schema generated from the profile model ([`schema`], what
//! `quill profile schema --json` prints) and the reference page rendered from it
//! ([`reference_markdown`], `docs/profile-reference.md`, which a test keeps equal to it). Field
//! descriptions are the doc comments of the model's types, so the reference cannot drift from
//! what [`crate::profile::Profile::parse`] accepts; [`LIMITS`] lists the limits the semantic
//! checks enforce, each tested to name a field that exists.

use schemars::JsonSchema;
use serde_json::{Map, Value};

use crate::engine::KeyStep;
use crate::profile::{EmvApplication, EpurseApplication, InputLayout, MagStripe, PinConfig, Product};

/// A card-product profile file (TOML): the sections below, each a table.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // a schema-only mirror of what `Profile::parse` reads section by section
struct ProfileFile {
    /// What this profile is called.
    product: Product,
    /// How the issuer's input file is laid out and checked.
    input: InputLayout,
    /// The applications in the order they sit on the card, chosen by `kind`.
    applications: Vec<ApplicationFile>,
    /// Mag-stripe tracks and card verification values, if the card has a stripe.
    mag_stripe: Option<MagStripe>,
    /// PIN generation, verification value and PIN blocks, if the card has a PIN.
    pin: Option<PinConfig>,
}

/// One `[[applications]]` entry; `kind` chooses the table's shape.
#[derive(JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(dead_code)]
enum ApplicationFile {
    /// A payment application.
    Emv(EmvApplication),
    /// An EMV-CAP (Visa DPA) application; `[applications.cap]` is required.
    Cap(EmvApplication),
    /// An electronic purse.
    Epurse(EpurseApplication),
}

/// Limits the semantic checks of [`crate::profile::Profile::parse`] enforce beyond the types:
/// (field path, rule). The reference lists them; a test checks each path names a real field.
pub const LIMITS: &[(&str, &str)] = &[
    ("product.version", "an integer ≥ 0; bump it whenever the card output changes"),
    ("input.fields[].name", "lower-case letters, digits and `_`; unique"),
    ("input.fields[].start", "fixed_width: 1-based, ≥ 1; fields may not overlap"),
    ("input.fields[].length", "fixed_width: ≥ 1"),
    ("input.fields[].max_length", "cardholder_name: at most 26 (ISO 7813 track 1, tag 5F20)"),
    ("input.fields", "exactly one field of kind `pan` and one of kind `expiry`"),
    ("applications[].aid", "5–16 bytes as hex"),
    ("applications[].icc_key.bits", "1024–1984, a multiple of 8, not longer than the issuer key"),
    ("applications[].icc_key.exponent", "3 or 65537"),
    ("applications[].records[].sfi", "1–30"),
    ("applications[].records[].record", "1–255"),
    ("applications[].tags", "tags of 1–3 bytes as hex; every tag of a record or data group has a source"),
    ("applications[].secret", "DGI 8000 secret; DDA: 8201–8205 secret; the offline PIN DGI secret"),
    ("applications[].currency_exponent", "0–3"),
    (
        "mag_stripe.track1",
        "discretionary data fits track 1 (76 characters) with a 19-digit PAN and a 26-character name",
    ),
    ("mag_stripe.track2", "discretionary data fits track 2 (37 characters) with a 19-digit PAN"),
    ("mag_stripe.chip_track2", "as track 2; carries `icvv`, never `cvv`"),
    ("mag_stripe.chip_track1", "as track 1; carries `icvv`, never `cvv`"),
    ("pin.length", "4–12 digits"),
    ("pin.pvv.pvki", "0–9"),
    ("pin.ibm3624.decimalisation", "16 decimal digits"),
    ("pin.ibm3624.validation_length", "1–16, and start − 1 + length ≤ 12"),
    ("pin.ibm3624.pad", "one hex digit"),
    ("pin.chip.try_limit", "1–15"),
    ("*.key, *.cvk, *.pvk, *.transport_key, …", "key labels: 1–64 printable ASCII characters, no spaces"),
];

/// The profile format as a JSON Schema (draft 2020-12).
pub fn schema() -> Value {
    schemars::schema_for!(ProfileFile).to_value()
}

/// The reference page: every section and field with its type, whether it is required, its
/// allowed values and its description, then [`LIMITS`].
pub fn reference_markdown() -> String {
    let schema = schema();
    let empty = Map::new();
    let defs = schema.get("$defs").and_then(Value::as_object).unwrap_or(&empty);
    let mut out = String::from(
        "# Card-product profile reference\n\n\
         Generated from the profile model (`prep/src/profile/mod.rs`, `prep/src/profile_schema.rs`) by \
         `quill profile schema`; `quill profile schema --json` prints the same as a JSON Schema. A test \
         keeps this file equal to the generator's output (`QUILL_DOCS=update cargo nextest run -E \
         'test(profile_reference)'` rewrites it). Worked examples: `prep/profiles/*.toml`.\n\n\
         A profile is one TOML file. Optional fields say their default in their description.\n",
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut queue: Vec<(String, String)> = vec![("Profile file".into(), String::new())];
    let mut i = 0;
    while i < queue.len() {
        let (title, def) = queue[i].clone();
        i += 1;
        let node = if def.is_empty() { &schema } else { defs.get(&def).unwrap_or(&Value::Null) };
        section(&mut out, &title, node, defs, &mut |d: &str| {
            if seen.insert(d.to_owned()) {
                queue.push((d.to_owned(), d.to_owned()));
            }
        });
    }
    out.push_str("\n## Limits enforced by the checks\n\n| Field | Rule |\n|---|---|\n");
    for (field, rule) in LIMITS {
        out.push_str(&format!("| `{field}` | {rule} |\n"));
    }
    out.push_str(
        "\n## Key usages\n\n\
         Every key a profile names must have, in the key inventory, a TR-31 key usage (ANSI X9.143) its \
         step needs: a key is bound to one use (PCI PIN requirement 18-3), and a key of another use is \
         refused whatever its algorithm, when the job is submitted (and when a lab run starts), with the \
         field, the label, the usage the key has and the usages the step needs.\n\n\
         | Field | Usage | Why |\n|---|---|---|\n",
    );
    for step in KeyStep::ALL {
        let codes: Vec<String> =
            step.needs().iter().map(|u| format!("`{}`", String::from_utf8_lossy(&u.code()))).collect();
        let fields: Vec<String> = step.field().split(", ").map(|f| format!("`{f}`")).collect();
        out.push_str(&format!("| {} | {} | {} |\n", fields.join(", "), codes.join(" or "), step.why()));
    }
    out
}

fn section(out: &mut String, title: &str, node: &Value, defs: &Map<String, Value>, found: &mut impl FnMut(&str)) {
    out.push_str(&format!("\n## {title}\n\n"));
    if let Some(d) = node.get("description").and_then(Value::as_str) {
        out.push_str(&one_line(d));
        out.push_str("\n\n");
    }
    fields(out, node, defs, found, &[]);
    let mut tables: Vec<(String, &Value)> = Vec::new();
    if let Some(vs) = node.get("oneOf").or_else(|| node.get("anyOf")).and_then(Value::as_array) {
        out.push_str("| Value | Meaning |\n|---|---|\n");
        for v in vs {
            let desc = v.get("description").and_then(Value::as_str).map(one_line).unwrap_or_default();
            let value = match (v.get("const"), v.get("enum"), v.get("properties").and_then(Value::as_object)) {
                (Some(c), _, _) => format!("`{}`", c.as_str().unwrap_or_default()),
                (_, Some(Value::Array(e)), _) => {
                    e.iter().filter_map(Value::as_str).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                }
                (_, _, Some(props)) => match props.get("kind").and_then(|k| k.get("const")).and_then(Value::as_str) {
                    // Internally tagged (`kind = "emv"`): the variant's fields follow the table.
                    Some(k) => {
                        tables.push((k.to_owned(), v));
                        format!("`kind = \"{k}\"`")
                    }
                    // Externally tagged (`{ derived = … }`).
                    None => props
                        .iter()
                        .map(|(k, p)| format!("`{k} =` {}", type_of(p, defs, found)))
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                _ => type_of(v, defs, found),
            };
            out.push_str(&format!("| {value} | {} |\n", desc.replace('|', "\\|")));
        }
    }
    let mut shown: Vec<(String, String)> = Vec::new();
    for (kind, v) in tables {
        out.push_str(&format!("\n### `kind = \"{kind}\"`\n\n"));
        let key = serde_json::to_string(&v.get("properties").map(|p| {
            let mut p = p.clone();
            if let Some(o) = p.as_object_mut() {
                o.remove("kind");
            }
            p
        }))
        .unwrap_or_default();
        match shown.iter().find(|(k, _)| *k == key) {
            Some((_, same)) => out.push_str(&format!("The same fields as `kind = \"{same}\"`.\n")),
            None => {
                fields(out, v, defs, found, &["kind"]);
                shown.push((key, kind));
            }
        }
    }
    if let Some(Value::Array(e)) = node.get("enum") {
        let values: Vec<String> = e.iter().filter_map(Value::as_str).map(|s| format!("`{s}`")).collect();
        out.push_str(&format!("Values: {}\n", values.join(", ")));
    }
}

/// The field table of an object schema, without the fields in `skip`.
fn fields(out: &mut String, node: &Value, defs: &Map<String, Value>, found: &mut impl FnMut(&str), skip: &[&str]) {
    let Some(props) = node.get("properties").and_then(Value::as_object) else { return };
    let required: Vec<&str> =
        node.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    out.push_str("| Field | Type | Required | Description |\n|---|---|---|---|\n");
    for (name, p) in props.iter().filter(|(n, _)| !skip.contains(&n.as_str())) {
        let ty = type_of(p, defs, found);
        let req = if required.contains(&name.as_str()) { "yes" } else { "no" };
        let desc = p.get("description").and_then(Value::as_str).map(one_line).unwrap_or_default();
        out.push_str(&format!("| `{name}` | {ty} | {req} | {} |\n", desc.replace('|', "\\|")));
    }
}

/// A field's type in words, with links to the sections of named types.
fn type_of(p: &Value, defs: &Map<String, Value>, found: &mut impl FnMut(&str)) -> String {
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        found(name);
        let def = defs.get(name);
        // Plain string enums read better inline.
        if let Some(Value::Array(e)) = def.and_then(|d| d.get("enum")) {
            return e.iter().filter_map(Value::as_str).map(|s| format!("`\"{s}\"`")).collect::<Vec<_>>().join(" \\| ");
        }
        return format!("[{name}](#{})", name.to_ascii_lowercase());
    }
    if let Some(Value::Array(any)) = p.get("anyOf").or_else(|| p.get("oneOf")) {
        let parts: Vec<String> = any
            .iter()
            .filter(|v| v.get("type") != Some(&Value::from("null")))
            .map(|v| type_of(v, defs, found))
            .collect();
        return parts.join(" or ");
    }
    match p.get("type") {
        Some(Value::String(t)) if t == "array" => {
            format!("array of {}", p.get("items").map(|i| type_of(i, defs, found)).unwrap_or_default())
        }
        Some(Value::String(t)) if t == "object" => match p.get("additionalProperties") {
            Some(v) if v.is_object() => format!("table of {}", type_of(v, defs, found)),
            _ => "table".into(),
        },
        Some(Value::String(t)) => {
            let fmt = p.get("format").and_then(Value::as_str).map(|f| format!(" ({f})")).unwrap_or_default();
            format!("{t}{fmt}")
        }
        Some(Value::Array(ts)) => {
            ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join(" or ")
        }
        _ => "any".into(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each limit names a field of the schema (the part before any `*`).
    #[test]
    fn limits_name_real_fields() {
        let text = serde_json::to_string(&schema()).unwrap_or_default();
        for (field, _) in LIMITS.iter().filter(|(f, _)| !f.starts_with('*')) {
            let last = field.rsplit('.').next().unwrap_or(field).trim_end_matches("[]");
            assert!(text.contains(&format!("\"{last}\"")), "LIMITS names {field}, which the model does not have");
        }
    }

    /// `docs/profile-reference.md` is what the generator writes (QUILL_DOCS=update rewrites it).
    #[test]
    fn profile_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/profile-reference.md");
        let want = reference_markdown();
        if std::env::var("QUILL_DOCS").as_deref() == Ok("update") {
            std::fs::write(&path, &want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale: run QUILL_DOCS=update cargo nextest run -E 'test(profile_reference)'",
            path.display()
        );
    }

    #[test]
    fn every_section_and_new_field_is_documented() {
        let md = reference_markdown();
        for needle in [
            "`name_transliteration`",
            "`duplicates`",
            "`allow_expired`",
            "`allow_beyond_issuer_expiry`",
            "`chip_track1`",
            "`track1_discretionary`",
            "`track2_discretionary`",
            "`kind = \"epurse\"`",
            "## PinConfig",
            "## MagStripe",
            "## Key usages",
            "| `applications.*.secret.transport_key` | `D0` or `K0` |",
            "| `pin.mailer.key` | `P0` |",
        ] {
            assert!(md.contains(needle), "the reference lacks {needle}");
        }
    }
}

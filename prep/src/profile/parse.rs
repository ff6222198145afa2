//! Loading: TOML syntax (with error recovery), then shape (each section and each application
//! deserialized on its own, so that one mistake does not hide the next), then the semantic checks.

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::checks::{Parts, check};
use super::locations::{Cx, Path, ProfileErrors};
use super::{Application, InputLayout, MagStripe, PinConfig, Product, Profile};

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Profile {
    /// Parse and check a profile. `file` only names the source in errors.
    ///
    /// Beyond the shape (types, required keys, no unknown keys), it checks: AIDs are 5–16 bytes
    /// of hex and unique; application names unique; SFI 1–30, record 1–255, no record twice;
    /// every tag is valid BER-TLV tag hex, defined once in `tags` and placed in one record at
    /// most; every `field` source names a non-special layout field and derived values have the
    /// field they need; ODA settings are consistent (SDA/DDA need an issuer key, CA index and
    /// the certificate tags; DDA needs a 1024–1984-bit (multiple of 8) ICC key with exponent 3
    /// or 65537 and its private key DGIs 8201–8205 secret; the certificates are not themselves
    /// in ODA records); the AFL (given or derived) matches the record layout and its ODA
    /// records; DGI 8000 is secret; DGIs are 4 hex digits and not used twice; key labels are
    /// non-empty; fixed-width fields lie in the line and do not overlap; CSV columns are unique;
    /// a CAP application has its IMK, IAF, IPB and a valid CDOL1; discretionary data fits the
    /// tracks and matches the PIN method; an offline PIN has its `[pin.chip]` and secret DGI.
    pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileErrors> {
        let (root, syntax) = DeTable::parse_recoverable(text);
        let mut cx = Cx { text, file, root: &root, errors: Vec::new() };
        if !syntax.is_empty() {
            for e in syntax {
                let span = e.span().unwrap_or(0..0);
                cx.push_at(span, String::new(), e.message().to_owned());
            }
            return Err(cx.finish());
        }
        let top = Path::root();
        let table = root.get_ref();

        for (key, _) in table.iter() {
            let k = key.get_ref().as_ref();
            if !["product", "input", "applications", "mag_stripe", "pin"].contains(&k) {
                cx.push(
                    &top.key(k),
                    format!("unknown section `{k}`, expected product, input, applications, mag_stripe or pin"),
                );
            }
        }

        let product: Option<Product> = cx.section(table, "product", true);
        let input: Option<InputLayout> = cx.section(table, "input", true);
        let mag_stripe: Option<MagStripe> = cx.section(table, "mag_stripe", false);
        let pin: Option<PinConfig> = cx.section(table, "pin", false);
        let applications = cx.applications(table);

        let broken = [("input", input.is_none()), ("mag_stripe", mag_stripe.is_none()), ("pin", pin.is_none())]
            .into_iter()
            .filter(|&(k, none)| none && table.contains_key(k))
            .map(|(k, _)| k)
            .collect();
        let parts = Parts { broken, product, input, applications, mag_stripe, pin };
        check(&mut cx, &parts);
        if !cx.errors.is_empty() {
            return Err(cx.finish());
        }
        match parts {
            Parts { product: Some(product), input: Some(input), applications, mag_stripe, pin, .. }
                if applications.iter().all(Option::is_some) =>
            {
                Ok(Profile {
                    product,
                    input,
                    applications: applications.into_iter().flatten().collect(),
                    mag_stripe,
                    pin,
                })
            }
            _ => {
                // Unreachable in practice: a missing part always records an error above.
                cx.push(&top, "incomplete profile".to_owned());
                Err(cx.finish())
            }
        }
    }
}

impl Cx<'_, '_> {
    fn deserialize<T: for<'de> Deserialize<'de>>(&mut self, node: &Spanned<DeValue<'_>>, base: &Path) -> Option<T> {
        let owned: Spanned<DeValue<'_>> = node.clone();
        match T::deserialize(ValueDeserializer::from(owned)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.serde_error(node, base, e);
                None
            }
        }
    }

    fn section<T: for<'de> Deserialize<'de>>(&mut self, table: &DeTable<'_>, key: &str, required: bool) -> Option<T> {
        let path = Path::root().key(key);
        match table.get(key) {
            Some(node) => self.deserialize(node, &path),
            None => {
                if required {
                    self.push(&path, format!("missing section [{key}]"));
                }
                None
            }
        }
    }

    /// Each application is deserialized on its own so that one bad application does not hide
    /// problems in the next. `None` marks an application that did not deserialize.
    fn applications(&mut self, table: &DeTable<'_>) -> Vec<Option<Application>> {
        let base = Path::root().key("applications");
        let Some(node) = table.get("applications") else {
            self.push(&base, "missing [[applications]]: a card needs at least one application".to_owned());
            return Vec::new();
        };
        let Some(arr) = node.get_ref().as_array() else {
            self.push(&base, "expected an array of tables [[applications]]".to_owned());
            return Vec::new();
        };
        if arr.iter().next().is_none() {
            self.push(&base, "a card needs at least one application".to_owned());
        }
        let mut out = Vec::new();
        for (i, app) in arr.iter().enumerate() {
            let path = base.idx(i);
            let Some(t) = app.get_ref().as_table() else {
                self.push(&path, "expected a table".to_owned());
                out.push(None);
                continue;
            };
            let kind = match t.get("kind") {
                None => {
                    self.push(&path, "missing field `kind` (emv, cap or epurse)".to_owned());
                    out.push(None);
                    continue;
                }
                Some(k) => k.get_ref().as_str().map(str::to_owned),
            };
            let mut rest = t.clone();
            rest.remove("kind");
            let rest = Spanned::new(app.span(), DeValue::Table(rest));
            let parsed = match kind.as_deref() {
                Some("emv") => self.deserialize(&rest, &path).map(Application::Emv),
                Some("cap") => self.deserialize(&rest, &path).map(Application::Cap),
                Some("epurse") => self.deserialize(&rest, &path).map(Application::Epurse),
                _ => {
                    self.push(&path.key("kind"), "unknown application kind, expected emv, cap or epurse".to_owned());
                    None
                }
            };
            out.push(parsed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::tests::SAMPLES;

    #[test]
    fn sample_profiles_parse_clean() {
        for (name, text) in SAMPLES {
            if let Err(e) = Profile::parse(text, name) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn all_problems_are_reported_not_just_the_first() {
        let text = SAMPLES[0]
            .1
            .replacen("aid = \"A0000000031010\"", "aid = \"A0\"", 1)
            .replacen("sfi = 2\n", "sfi = 0\n", 1)
            .replacen("cvk = \"CVK-VISA-TEST\"", "cvk = 5", 1)
            .replacen("length = 4\n", "length = 3\n", 1);
        let errors = Profile::parse(&text, "x.toml").expect_err("broken").0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for want in ["applications[0].aid", "applications[0].records[2].sfi", "mag_stripe.cvk", "pin.length"] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        // Sorted by position.
        assert!(errors.windows(2).all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)));
        let shown = ProfileErrors(errors).to_string();
        assert!(shown.starts_with("4 problems in profile"), "{shown}");
        assert!(shown.contains("x.toml:"), "{shown}");
    }

    #[test]
    fn one_bad_application_does_not_hide_the_next() {
        let text = SAMPLES[2].1.replacen("kernel = \"domestic\"", "kernel = \"nope\"", 1).replacen(
            "bits = 1024",
            "bits = 4096",
            1,
        );
        let errors = Profile::parse(&text, "m").expect_err("broken").0;
        assert!(errors.iter().any(|e| e.field == "applications[0].kernel"), "{errors:?}");
        assert!(errors.iter().any(|e| e.field == "applications[1].icc_key.bits"), "{errors:?}");
    }

    #[test]
    fn missing_sections() {
        let errors = Profile::parse("[product]\nname = \"x\"\nversion = 1\n", "min").expect_err("broken").0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"input") && fields.contains(&"applications"), "{fields:?}");
    }
}

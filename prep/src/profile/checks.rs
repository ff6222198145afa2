//! The semantic checks: what the types alone do not say (see [`Profile::parse`]'s docs), run on
//! every section and application that deserialized.

use std::collections::{BTreeMap, BTreeSet};

#[cfg(doc)]
use super::Profile;
use super::locations::{Cx, Path, path_up};
use super::{
    Application, Computed, DdItem, Derived, EmvApplication, EpurseApplication, FieldKind, InputFormat, InputLayout,
    MagStripe, Oda, PinBlockFormat, PinConfig, PinMethod, Product, SecretDgis, TagSource,
};

pub(super) struct Parts {
    /// Sections present in the file that did not deserialize: cross-section checks that need
    /// them are skipped (their own errors are already reported).
    pub(super) broken: BTreeSet<&'static str>,
    pub(super) product: Option<Product>,
    pub(super) input: Option<InputLayout>,
    pub(super) applications: Vec<Option<Application>>,
    pub(super) mag_stripe: Option<MagStripe>,
    pub(super) pin: Option<PinConfig>,
}

pub(super) fn check(cx: &mut Cx<'_, '_>, p: &Parts) {
    let root = Path::root();
    if let Some(product) = &p.product
        && product.name.trim().is_empty()
    {
        cx.push(&root.key("product").key("name"), "product name is empty".to_owned());
    }
    if let Some(input) = &p.input {
        check_input(cx, &root.key("input"), input);
    }
    if let Some(ms) = &p.mag_stripe {
        check_mag_stripe(cx, &root.key("mag_stripe"), ms, p.pin.as_ref(), p.broken.contains("pin"));
    }
    if let Some(pin) = &p.pin {
        check_pin(cx, &root.key("pin"), pin);
    }

    let apps = root.key("applications");
    let mut aids: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, app) in p.applications.iter().enumerate() {
        let Some(app) = app else { continue };
        let path = apps.idx(i);
        if let Some(prev) = names.insert(app.name(), i) {
            cx.push(&path.key("name"), format!("application name already used by applications[{prev}]"));
        }
        if app.name().trim().is_empty() {
            cx.push(&path.key("name"), "application name is empty".to_owned());
        }
        match hex_bytes(app.aid()) {
            Ok(aid) if (5..=16).contains(&aid.len()) => {
                if let Some(prev) = aids.insert(aid, i) {
                    cx.push(&path.key("aid"), format!("duplicate AID: applications[{prev}] has the same AID"));
                }
            }
            Ok(aid) => cx.push(&path.key("aid"), format!("AID must be 5–16 bytes, got {}", aid.len())),
            Err(e) => cx.push(&path.key("aid"), format!("AID {e}")),
        }
        match app {
            Application::Emv(a) => check_emv(cx, &path, a, false, p),
            Application::Cap(a) => check_emv(cx, &path, a, true, p),
            Application::Epurse(a) => check_epurse(cx, &path, a),
        }
    }
}

fn check_label(cx: &mut Cx<'_, '_>, path: &Path, label: &str) {
    if label.is_empty() {
        cx.push(path, "key label is empty".to_owned());
    } else if label.len() > 64 || !label.bytes().all(|b| b.is_ascii_graphic()) {
        cx.push(path, "key label must be 1–64 printable ASCII characters without spaces".to_owned());
    }
}

fn check_input(cx: &mut Cx<'_, '_>, path: &Path, input: &InputLayout) {
    let fields = path.key("fields");
    if input.fields.is_empty() {
        cx.push(&fields, "the layout has no fields".to_owned());
    }
    let fixed = input.format == InputFormat::FixedWidth;
    if !fixed && (input.delimiter == '"' || input.delimiter == '\n' || input.delimiter == '\r') {
        cx.push(&path.key("delimiter"), "the delimiter cannot be a quote or a line break".to_owned());
    }
    if !fixed && input.record_length.is_some() {
        cx.push(&path.key("record_length"), "record_length applies to fixed_width files only".to_owned());
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut columns: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kinds: BTreeMap<FieldKind, usize> = BTreeMap::new();
    let mut ranges: Vec<(usize, usize, usize)> = Vec::new();
    for (i, f) in input.fields.iter().enumerate() {
        let fp = fields.idx(i);
        if f.name.is_empty()
            || !f.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || f.name.as_bytes()[0].is_ascii_digit()
        {
            cx.push(&fp.key("name"), "field name must be lower-case letters, digits and `_`".to_owned());
        }
        let duplicate_name = names.insert(&f.name, i);
        if let Some(prev) = duplicate_name {
            cx.push(&fp.key("name"), format!("field name already used by input.fields[{prev}]"));
        }
        if f.kind.is_unique()
            && let Some(prev) = kinds.insert(f.kind, i)
        {
            cx.push(&fp.key("kind"), format!("only one field of this kind is allowed (see input.fields[{prev}])"));
        }
        if let (Some(min), Some(max)) = (f.min_length, f.max_length)
            && min > max
        {
            cx.push(&fp.key("min_length"), "min_length is greater than max_length".to_owned());
        }
        if f.kind == FieldKind::CardholderName && f.max_length.is_some_and(|m| m > 26) {
            cx.push(&fp.key("max_length"), "a cardholder name is at most 26 characters (ISO 7813 track 1)".to_owned());
        }
        if !f.extra_chars.is_empty() && f.kind != FieldKind::EmbossingName {
            cx.push(&fp.key("extra_chars"), "extra_chars applies to embossing_name fields only".to_owned());
        }
        if matches!(f.kind, FieldKind::Pan | FieldKind::Expiry) && !f.required {
            cx.push(&fp.key("required"), "the PAN and the expiry date are always required".to_owned());
        }
        if fixed {
            if f.column.is_some() {
                cx.push(
                    &fp.key("column"),
                    "column applies to CSV files; fixed-width fields use start/length".to_owned(),
                );
            }
            match (f.start, f.length) {
                (Some(start @ 1..), Some(length @ 1..)) => {
                    let end = start + length - 1;
                    for &(s, e, j) in &ranges {
                        if start <= e && s <= end {
                            cx.push(
                                &fp.key("start"),
                                format!("positions {start}–{end} overlap input.fields[{j}] (positions {s}–{e})"),
                            );
                        }
                    }
                    if let Some(len) = input.record_length
                        && end > len
                    {
                        cx.push(&fp.key("length"), format!("field ends at {end}, past record_length {len}"));
                    }
                    ranges.push((start, end, i));
                }
                (Some(0), _) => cx.push(&fp.key("start"), "positions are 1-based: start must be ≥ 1".to_owned()),
                (_, Some(0)) => cx.push(&fp.key("length"), "length must be ≥ 1".to_owned()),
                (None, _) => cx.push(&fp, "fixed-width field needs `start`".to_owned()),
                (_, None) => cx.push(&fp, "fixed-width field needs `length`".to_owned()),
            }
        } else {
            if f.start.is_some() || f.length.is_some() {
                cx.push(&fp, "start/length apply to fixed_width files; CSV fields are columns".to_owned());
            }
            if f.column.is_some() && !input.header {
                cx.push(
                    &fp.key("column"),
                    "column titles need `header = true`; without header, fields are in order".to_owned(),
                );
            }
            let col = f.column.as_deref().unwrap_or(&f.name);
            let checked = input.header && (f.column.is_some() || duplicate_name.is_none());
            if let Some(prev) = columns.insert(col, i).filter(|_| checked) {
                cx.push(&fp, format!("column `{col}` already used by input.fields[{prev}]"));
            }
        }
    }
    for (kind, what) in [(FieldKind::Pan, "pan"), (FieldKind::Expiry, "expiry")] {
        if !kinds.contains_key(&kind) && !input.fields.is_empty() {
            cx.push(&fields, format!("the layout needs a field of kind `{what}`"));
        }
    }
}

fn check_mag_stripe(cx: &mut Cx<'_, '_>, path: &Path, ms: &MagStripe, pin: Option<&PinConfig>, pin_broken: bool) {
    check_label(cx, &path.key("cvk"), &ms.cvk);
    let pin_len = pin.map_or(4, |p| p.length);
    // Content without sentinels and LRC: track 1 ≤ 76, track 2 ≤ 37 characters. Checked for the
    // longest card data: a 19-digit PAN and a 26-character name.
    let tracks = [
        ("track1", ms.track1.as_ref(), 76 - (1 + 19 + 1 + 26 + 1 + 4 + 3)),
        ("track2", Some(&ms.track2), 37 - (19 + 1 + 4 + 3)),
        ("chip_track2", ms.chip_track2.as_ref(), 37 - (19 + 1 + 4 + 3)),
        ("chip_track1", ms.chip_track1.as_ref(), 76 - (1 + 19 + 1 + 26 + 1 + 4 + 3)),
    ];
    for (name, layout, room) in tracks {
        let Some(layout) = layout else { continue };
        let tp = path.key(name).key("discretionary");
        let len = layout.len(pin_len);
        if len > room {
            cx.push(
                &tp,
                format!("discretionary data is {len} characters; with a 19-digit PAN only {room} fit on {name}"),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, item) in layout.discretionary.iter().enumerate() {
            let ip = tp.idx(i);
            if !matches!(item, DdItem::Pad(_)) && !seen.insert(format!("{item:?}")) {
                cx.push(&ip, "item appears twice".to_owned());
            }
            match item {
                DdItem::Invalid(other) => cx.push(
                    &ip,
                    format!(
                        "unknown discretionary-data item `{other}`, expected pvki, pvv, pin_offset, cvv, icvv or \
                         pad:<digits>"
                    ),
                ),
                DdItem::Pvki | DdItem::Pvv | DdItem::PinOffset if pin_broken => {}
                DdItem::Pvki | DdItem::Pvv if pin.map(|p| p.method) != Some(PinMethod::Pvv) => {
                    cx.push(&ip, "PVKI/PVV need [pin] with method = \"pvv\"".to_owned())
                }
                DdItem::PinOffset if pin.map(|p| p.method) != Some(PinMethod::Ibm3624) => {
                    cx.push(&ip, "pin_offset needs [pin] with method = \"ibm3624\"".to_owned())
                }
                DdItem::Icvv if !name.starts_with("chip_") => {
                    cx.push(&ip, "iCVV belongs in chip_track1/chip_track2 only; the stripe carries the CVV".to_owned())
                }
                DdItem::Cvv if name.starts_with("chip_") => cx.push(
                    &ip,
                    format!(
                        "track data on the chip carries the iCVV (`icvv`), never the stripe's CVV: whoever reads \
                         the chip could write a working stripe ({name})"
                    ),
                ),
                _ => {}
            }
        }
    }
}

fn check_pin(cx: &mut Cx<'_, '_>, path: &Path, pin: &PinConfig) {
    if !(4..=12).contains(&pin.length) {
        cx.push(&path.key("length"), format!("PIN length must be 4–12, not {}", pin.length));
    }
    match pin.method {
        PinMethod::Pvv => match &pin.pvv {
            None => cx.push(path, "method = \"pvv\" needs [pin.pvv] with pvk and pvki".to_owned()),
            Some(p) => {
                check_label(cx, &path.key("pvv").key("pvk"), &p.pvk);
                if p.pvki > 9 {
                    cx.push(&path.key("pvv").key("pvki"), "PVKI is one digit, 0–9".to_owned());
                }
            }
        },
        PinMethod::Ibm3624 => match &pin.ibm3624 {
            None => cx.push(path, "method = \"ibm3624\" needs [pin.ibm3624]".to_owned()),
            Some(p) => {
                let ip = path.key("ibm3624");
                check_label(cx, &ip.key("pvk"), &p.pvk);
                if p.decimalisation.len() != 16 || !p.decimalisation.bytes().all(|b| b.is_ascii_digit()) {
                    cx.push(&ip.key("decimalisation"), "decimalisation table must be 16 decimal digits".to_owned());
                }
                if !(1..=16).contains(&p.validation_length) {
                    cx.push(&ip.key("validation_length"), "validation data is 1–16 PAN digits".to_owned());
                }
                if p.validation_start == 0 {
                    cx.push(&ip.key("validation_start"), "positions are 1-based".to_owned());
                } else if p.validation_start - 1 + p.validation_length > 12 {
                    cx.push(
                        &ip.key("validation_start"),
                        "validation data must lie in the first 12 PAN digits (a 12-digit PAN is allowed)".to_owned(),
                    );
                }
                if !p.pad.is_ascii_hexdigit() {
                    cx.push(&ip.key("pad"), "pad must be one hex digit".to_owned());
                }
            }
        },
        PinMethod::Random => {}
    }
    if pin.method != PinMethod::Pvv && pin.pvv.is_some() {
        cx.push(&path.key("pvv"), "[pin.pvv] is set but method is not \"pvv\"".to_owned());
    }
    if pin.method != PinMethod::Ibm3624 && pin.ibm3624.is_some() {
        cx.push(&path.key("ibm3624"), "[pin.ibm3624] is set but method is not \"ibm3624\"".to_owned());
    }
    if let Some(chip) = &pin.chip {
        let cp = path.key("chip");
        if let Err(e) = parse_dgi(&chip.dgi) {
            cx.push(&cp.key("dgi"), e);
        }
        if let Err(e) = parse_dgi(&chip.try_dgi) {
            cx.push(&cp.key("try_dgi"), e);
        }
        if !(1..=15).contains(&chip.try_limit) {
            cx.push(&cp.key("try_limit"), "PIN try limit must be 1–15".to_owned());
        }
        if chip.block_format == PinBlockFormat::Iso4 {
            cx.push(
                &cp.key("block_format"),
                "the reference PIN is a 8-byte block; ISO format 4 is 16 bytes".to_owned(),
            );
        }
    }
    check_label(cx, &path.key("mailer").key("key"), &pin.mailer.key);
}

fn check_epurse(cx: &mut Cx<'_, '_>, path: &Path, a: &EpurseApplication) {
    if a.currency.len() != 3 || !a.currency.bytes().all(|b| b.is_ascii_digit()) {
        cx.push(&path.key("currency"), "currency is the ISO 4217 numeric code, 3 digits".to_owned());
    }
    if a.currency_exponent > 3 {
        cx.push(&path.key("currency_exponent"), "currency exponent is 0–3".to_owned());
    }
    if a.transaction_limit > a.balance_limit {
        cx.push(&path.key("transaction_limit"), "transaction limit exceeds the balance limit".to_owned());
    }
    if a.master_keys.is_empty() {
        cx.push(&path.key("master_keys"), "an e-purse needs at least one purse master key".to_owned());
    }
    for (name, label) in &a.master_keys {
        check_label(cx, &path.key("master_keys").key(name), label);
    }
    if let Some(s) = &a.secret {
        check_secret(cx, &path.key("secret"), s, &BTreeSet::new());
    }
}

fn check_secret(cx: &mut Cx<'_, '_>, path: &Path, s: &SecretDgis, record_dgis: &BTreeSet<u16>) -> BTreeSet<u16> {
    check_label(cx, &path.key("transport_key"), &s.transport_key);
    let mut out = BTreeSet::new();
    for (i, d) in s.dgis.iter().enumerate() {
        match parse_dgi(d) {
            Ok(v) => {
                if !out.insert(v) {
                    cx.push(&path.key("dgis").idx(i), "DGI listed twice".to_owned());
                }
                if record_dgis.contains(&v) {
                    cx.push(
                        &path.key("dgis").idx(i),
                        "record DGIs are read by terminals and cannot be secret".to_owned(),
                    );
                }
            }
            Err(e) => cx.push(&path.key("dgis").idx(i), e),
        }
    }
    out
}

const ODA_TAGS_SDA: [(Computed, &str); 4] = [
    (Computed::CaPkIndex, "8F"),
    (Computed::IssuerPkCertificate, "90"),
    (Computed::IssuerPkExponent, "9F32"),
    (Computed::SignedStaticData, "93"),
];
const ODA_TAGS_DDA: [(Computed, &str); 5] = [
    (Computed::CaPkIndex, "8F"),
    (Computed::IssuerPkCertificate, "90"),
    (Computed::IssuerPkExponent, "9F32"),
    (Computed::IccPkCertificate, "9F46"),
    (Computed::IccPkExponent, "9F47"),
];

fn check_emv(cx: &mut Cx<'_, '_>, path: &Path, a: &EmvApplication, is_cap: bool, p: &Parts) {
    // Keys.
    match (&a.keys, is_cap) {
        (Some(k), _) => {
            let kp = path.key("keys");
            check_label(cx, &kp.key("ac"), &k.ac);
            check_label(cx, &kp.key("smi"), &k.smi);
            check_label(cx, &kp.key("smc"), &k.smc);
            for (name, label) in &k.extra {
                check_label(cx, &kp.key("extra").key(name), label);
            }
        }
        (None, false) => cx.push(path, "missing [applications.keys] (IMK-AC/SMI/SMC labels)".to_owned()),
        (None, true) => {}
    }
    match (&a.cap, is_cap) {
        (Some(_), false) => {
            cx.push(&path.key("cap"), "CAP data on an application whose kind is not \"cap\"".to_owned())
        }
        (None, true) => cx.push(path, "a CAP application needs [applications.cap] with its IMK".to_owned()),
        (Some(cap), true) => {
            let cp = path.key("cap");
            match &cap.imk {
                None => cx.push(&cp, "a CAP application needs its own IMK (`imk`)".to_owned()),
                Some(l) => check_label(cx, &cp.key("imk"), l),
            }
            for (name, v) in [("iaf", &cap.iaf), ("ipb", &cap.ipb)] {
                if let Err(e) = hex_bytes(v) {
                    cx.push(&cp.key(name), e);
                }
            }
            if let Err(e) = check_dol(&cap.cdol1) {
                cx.push(&cp.key("cdol1"), e);
            }
            if !cap.shared_pin && !a.offline_pin {
                cx.push(
                    &path.key("offline_pin"),
                    "a CAP application with its own PIN needs offline_pin = true".to_owned(),
                );
            }
        }
        (None, false) => {}
    }

    // AIP.
    match hex_bytes(&a.aip) {
        Ok(b) if b.len() == 2 => {
            let sda = b[0] & 0x40 != 0;
            let dda = b[0] & 0x20 != 0;
            if (a.oda == Oda::Sda) != sda || (a.oda == Oda::Dda) != dda {
                cx.push(&path.key("aip"), "AIP byte 1 SDA/DDA bits (0x40/0x20) disagree with `oda`".to_owned());
            }
        }
        Ok(_) => cx.push(&path.key("aip"), "AIP is 2 bytes".to_owned()),
        Err(e) => cx.push(&path.key("aip"), format!("AIP {e}")),
    }

    // Tags and their sources.
    let layout = p.input.as_ref();
    let has_kind = |k: FieldKind| layout.is_none_or(|l| l.fields.iter().any(|f| f.kind == k));
    let mut tags: BTreeMap<Vec<u8>, &TagSource> = BTreeMap::new();
    for (tag, source) in &a.tags {
        let tp = path.key("tags").key(tag);
        let bytes = match check_tag(tag) {
            Ok(b) => b,
            Err(e) => {
                cx.push(&tp, e);
                continue;
            }
        };
        if tags.insert(bytes, source).is_some() {
            cx.push(&tp, "tag defined twice (spelt differently)".to_owned());
        }
        match source {
            TagSource::Field(name) => match layout.map(|l| l.fields.iter().find(|f| &f.name == name)) {
                Some(None) => cx.push(&tp.key("field"), format!("no input field named `{name}` in [input]")),
                Some(Some(f)) if f.kind.is_unique() => cx.push(
                    &tp.key("field"),
                    "this field has a special kind; use a `derived` source (pan, psn, cardholder_name, …)".to_owned(),
                ),
                _ => {}
            },
            TagSource::Constant(v) => {
                if let Err(e) = hex_bytes(v) {
                    cx.push(&tp.key("constant"), e);
                }
            }
            TagSource::Derived(d) => {
                let need = match d {
                    Derived::EffectiveYymmdd => Some((FieldKind::Effective, "effective")),
                    Derived::CardholderName => Some((FieldKind::CardholderName, "cardholder_name")),
                    Derived::ServiceCode | Derived::Track2Equivalent | Derived::Track2Discretionary => {
                        Some((FieldKind::ServiceCode, "service_code"))
                    }
                    Derived::Track1Discretionary => Some((FieldKind::CardholderName, "cardholder_name")),
                    Derived::Pan | Derived::Psn | Derived::ExpiryYymmdd => None,
                };
                if let Some((kind, what)) = need
                    && !has_kind(kind)
                {
                    cx.push(&tp.key("derived"), format!("needs an input field of kind `{what}`"));
                }
                match d {
                    _ if p.broken.contains("mag_stripe") => {}
                    Derived::Track2Equivalent | Derived::Track2Discretionary if p.mag_stripe.is_none() => cx.push(
                        &tp.key("derived"),
                        format!(
                            "{} needs [mag_stripe] (CVK for the iCVV)",
                            if *d == Derived::Track2Equivalent { "track2_equivalent" } else { "track2_discretionary" }
                        ),
                    ),
                    Derived::Track1Discretionary
                        if p.mag_stripe.as_ref().is_none_or(|m| m.chip_track1_layout().is_none()) =>
                    {
                        cx.push(
                            &tp.key("derived"),
                            "track1_discretionary needs [mag_stripe.track1] or [mag_stripe.chip_track1]".to_owned(),
                        )
                    }
                    _ => {}
                }
            }
            TagSource::Computed(c) => {
                let ok = match c {
                    Computed::SignedStaticData => a.oda == Oda::Sda,
                    Computed::IccPkCertificate | Computed::IccPkExponent | Computed::IccPkRemainder => {
                        a.oda == Oda::Dda
                    }
                    Computed::Aip | Computed::Afl => true,
                    Computed::CapIaf | Computed::CapIpb | Computed::CapCdol1 => is_cap,
                    _ => a.oda != Oda::None,
                };
                if !ok && matches!(c, Computed::CapIaf | Computed::CapIpb | Computed::CapCdol1) {
                    cx.push(&tp.key("computed"), "CAP values exist only in a kind = \"cap\" application".to_owned());
                } else if !ok {
                    cx.push(&tp.key("computed"), format!("not available with oda = {:?}", a.oda).to_lowercase());
                }
            }
        }
    }

    // ODA parameters.
    if a.oda != Oda::None {
        match &a.issuer_key {
            None => cx.push(path, "SDA/DDA need `issuer_key` (label of the issuer key pair)".to_owned()),
            Some(l) => check_label(cx, &path.key("issuer_key"), l),
        }
        match &a.ca_index {
            None => cx.push(path, "SDA/DDA need `ca_index` (tag 8F, one byte hex)".to_owned()),
            Some(c) => match hex_bytes(c) {
                Ok(b) if b.len() == 1 => {}
                _ => cx.push(&path.key("ca_index"), "CA index is one byte as hex, e.g. \"92\"".to_owned()),
            },
        }
        let required: &[(Computed, &str)] = if a.oda == Oda::Sda { &ODA_TAGS_SDA } else { &ODA_TAGS_DDA };
        for (c, tag) in required {
            if !a.tags.values().any(|s| s == &TagSource::Computed(*c)) {
                cx.push(&path.key("tags"), format!("{:?} needs tag {tag} = {{ computed = … }}", a.oda).to_uppercase());
            }
        }
    }
    match (a.oda, &a.icc_key) {
        (Oda::Dda, None) => cx.push(path, "DDA needs `icc_key = { bits = …, exponent = … }`".to_owned()),
        (Oda::Dda, Some(k)) => {
            let kp = path.key("icc_key");
            if !(1024..=1984).contains(&k.bits) || k.bits % 8 != 0 {
                cx.push(
                    &kp.key("bits"),
                    format!("ICC key size must be 1024–1984 bits, a multiple of 8, not {}", k.bits),
                );
            }
            if k.exponent != 3 && k.exponent != 65537 {
                cx.push(&kp.key("exponent"), format!("ICC public exponent must be 3 or 65537, not {}", k.exponent));
            }
        }
        (_, Some(_)) => cx.push(&path.key("icc_key"), "icc_key applies to DDA only".to_owned()),
        (_, None) => {}
    }

    // Records.
    let mut placed: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut seen_records: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    let mut record_dgis = BTreeSet::new();
    let mut any_oda_record = false;
    for (i, r) in a.records.iter().enumerate() {
        let rp = path.key("records").idx(i);
        let mut ok = true;
        if !(1..=30).contains(&r.sfi) {
            cx.push(&rp.key("sfi"), format!("SFI must be 1–30, not {}", r.sfi));
            ok = false;
        }
        if !(1..=255).contains(&r.record) {
            cx.push(&rp.key("record"), format!("record number must be 1–255, not {}", r.record));
            ok = false;
        }
        if ok {
            record_dgis.insert(r.dgi());
            if let Some(prev) = seen_records.insert((r.sfi, r.record), i) {
                cx.push(&rp, format!("SFI {} record {} is already defined by records[{prev}]", r.sfi, r.record));
            }
        }
        any_oda_record |= r.oda;
        if r.oda && a.oda == Oda::None {
            cx.push(&rp.key("oda"), "ODA record in an application with oda = \"none\"".to_owned());
        }
        if r.tags.is_empty() {
            cx.push(&rp.key("tags"), "a record needs at least one tag".to_owned());
        }
        for (j, t) in r.tags.iter().enumerate() {
            let tp = rp.key("tags").idx(j);
            match check_tag(t) {
                Err(e) => cx.push(&tp, e),
                Ok(b) => {
                    let source = tags.get(&b);
                    if source.is_none() {
                        cx.push(&tp, format!("tag {t} has no source in [applications.tags]"));
                    }
                    if r.oda
                        && matches!(
                            source,
                            Some(TagSource::Computed(Computed::SignedStaticData | Computed::IccPkCertificate))
                        )
                    {
                        cx.push(&tp, "a signature cannot sit in a record it signs (record has oda = true)".to_owned());
                    }
                    if let Some(prev) = placed.insert(b, i) {
                        cx.push(&tp, format!("tag {t} is already in records[{prev}]"));
                    }
                }
            }
        }
    }
    if a.oda != Oda::None && !any_oda_record {
        cx.push(&path.key("records"), "SDA/DDA need at least one record with oda = true".to_owned());
    }
    if a.records.is_empty() {
        cx.push(path, "an EMV application needs at least one record".to_owned());
    }

    // AFL.
    if let Some(afl) = &a.afl {
        check_afl(cx, &path.key("afl"), afl, a, &seen_records);
    }

    // Data groups and secret DGIs.
    let mut dgis = record_dgis.clone();
    for (i, g) in a.data_groups.iter().enumerate() {
        let gp = path.key("data_groups").idx(i);
        match parse_dgi(&g.dgi) {
            Ok(v) if !dgis.insert(v) => {
                cx.push(&gp.key("dgi"), "DGI already used by a record or data group".to_owned())
            }
            Ok(_) => {}
            Err(e) => cx.push(&gp.key("dgi"), e),
        }
        for (j, t) in g.tags.iter().enumerate() {
            match check_tag(t) {
                Err(e) => cx.push(&gp.key("tags").idx(j), e),
                Ok(b) if !tags.contains_key(&b) => {
                    cx.push(&gp.key("tags").idx(j), format!("tag {t} has no source in [applications.tags]"))
                }
                Ok(_) => {}
            }
        }
    }
    let secret = match &a.secret {
        Some(s) => check_secret(cx, &path.key("secret"), s, &record_dgis),
        None => {
            cx.push(path, "missing [applications.secret]: DGI 8000 (ICC master keys) is always secret".to_owned());
            BTreeSet::new()
        }
    };
    if a.secret.is_some() {
        let sp = path.key("secret").key("dgis");
        if !secret.contains(&0x8000) {
            cx.push(&sp, "DGI 8000 (ICC master keys) must be secret".to_owned());
        }
        if a.oda == Oda::Dda {
            for d in 0x8201..=0x8205u16 {
                if !secret.contains(&d) {
                    cx.push(&sp, format!("DDA: DGI {d:04X} (ICC private key CRT part) must be secret"));
                }
            }
        }
    }
    if a.offline_pin && !p.broken.contains("pin") {
        match p.pin.as_ref().map(|p| p.chip.as_ref()) {
            None => cx.push(&path.key("offline_pin"), "offline_pin needs a [pin] section".to_owned()),
            Some(None) => cx.push(&path.key("offline_pin"), "offline_pin needs [pin.chip]".to_owned()),
            Some(Some(chip)) => {
                if let Ok(d) = parse_dgi(&chip.dgi)
                    && a.secret.is_some()
                    && !secret.contains(&d)
                {
                    cx.push(
                        &path.key("secret").key("dgis"),
                        format!("the offline PIN DGI {d:04X} ([pin.chip].dgi) must be secret"),
                    );
                }
            }
        }
    }
}

fn check_afl(cx: &mut Cx<'_, '_>, path: &Path, afl: &str, a: &EmvApplication, records: &BTreeMap<(u32, u32), usize>) {
    let bytes = match hex_bytes(afl) {
        Ok(b) if !b.is_empty() && b.len() % 4 == 0 => b,
        Ok(_) => return cx.push(path, "AFL is a non-empty list of 4-byte entries".to_owned()),
        Err(e) => return cx.push(path, format!("AFL {e}")),
    };
    let mut covered: BTreeMap<(u32, u32), bool> = BTreeMap::new();
    for (n, e) in bytes.chunks(4).enumerate() {
        let sfi = u32::from(e[0] >> 3);
        let (first, last, oda) = (u32::from(e[1]), u32::from(e[2]), u32::from(e[3]));
        if e[0] & 7 != 0 || sfi == 0 || sfi > 30 {
            cx.push(path, format!("AFL entry {n}: first byte must be SFI << 3 with SFI 1–30"));
            continue;
        }
        if first == 0 || last < first || oda > last - first + 1 {
            cx.push(path, format!("AFL entry {n}: need 1 ≤ first ≤ last and ODA count ≤ number of records"));
            continue;
        }
        for rec in first..=last {
            if covered.insert((sfi, rec), rec - first < oda).is_some() {
                cx.push(path, format!("AFL names SFI {sfi} record {rec} twice"));
            }
            if !records.contains_key(&(sfi, rec)) {
                cx.push(path, format!("AFL names SFI {sfi} record {rec}, which the record layout does not define"));
            }
        }
    }
    for (i, r) in a.records.iter().enumerate() {
        match covered.get(&(r.sfi, r.record)) {
            None => cx.push(&path_up(path).key("records").idx(i), "record is not covered by the AFL".to_owned()),
            Some(&oda) if oda != r.oda => cx.push(
                &path_up(path).key("records").idx(i).key("oda"),
                format!(
                    "the AFL {} this record in the ODA static data",
                    if oda { "includes" } else { "does not include" }
                ),
            ),
            Some(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small parsers
// ---------------------------------------------------------------------------------------------

fn hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    if s.is_empty() {
        return Err("is empty".to_owned());
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!("must be an even number of hex digits, got {}", s.len()));
    }
    hex::decode(s).map_err(|_| "must be hex digits (0-9, A-F)".to_owned())
}

pub(super) fn parse_dgi(s: &str) -> Result<u16, String> {
    match hex_bytes(s) {
        Ok(b) if b.len() == 2 => Ok(u16::from_be_bytes([b[0], b[1]])),
        _ => Err(format!("DGI must be 4 hex digits, not `{s}`")),
    }
}

/// A BER-TLV tag (1–3 bytes) as hex; returns its bytes.
fn check_tag(s: &str) -> Result<Vec<u8>, String> {
    let b = hex_bytes(s).map_err(|e| format!("tag `{s}` {e}"))?;
    tag_len(&b).and_then(|n| {
        if n == b.len() {
            Ok(b.clone())
        } else {
            Err(format!("`{s}` is not one BER-TLV tag: the tag ends after {n} byte(s)"))
        }
    })
}

/// Length of the BER-TLV tag at the start of `b`.
fn tag_len(b: &[u8]) -> Result<usize, String> {
    let Some(&first) = b.first() else { return Err("empty tag".to_owned()) };
    if first == 0x00 || first == 0xFF {
        return Err(format!("{first:02X} is not a valid first tag byte"));
    }
    if first & 0x1F != 0x1F {
        return Ok(1);
    }
    for (i, &x) in b.iter().enumerate().skip(1) {
        if i == 1 && x & 0x7F == 0 {
            return Err("a subsequent tag byte cannot start with 80 or 00 padding".to_owned());
        }
        if x & 0x80 == 0 {
            return if i + 1 > 3 { Err("tags longer than 3 bytes are not used in EMV".to_owned()) } else { Ok(i + 1) };
        }
    }
    Err("multi-byte tag is truncated (first byte ends in 1F, last byte must have bit 8 clear)".to_owned())
}

/// A data object list: tag ‖ length, repeated.
fn check_dol(s: &str) -> Result<(), String> {
    let b = hex_bytes(s)?;
    let mut i = 0;
    while i < b.len() {
        let n = tag_len(&b[i..])?;
        i += n;
        match b.get(i) {
            Some(0) => return Err(format!("DOL entry at byte {} has length 0", i - n)),
            Some(_) => i += 1,
            None => return Err("DOL ends with a tag but no length".to_owned()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_syntax() {
        for bad in ["", "9", "00", "FF", "9F", "9F8001", "5F2000", "DF808001", "1F00"] {
            assert!(check_tag(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["5A", "9F46", "BF0C", "DF8101", "70"] {
            assert!(check_tag(good).is_ok(), "{good:?} refused");
        }
    }
}

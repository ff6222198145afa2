//! The wire only grows. `proto/wire.lock` records every service method (request and response
//! types, streaming) and every message field (number, type, label) of `quill.v1` as one line each.
//! This test fails when a recorded line is missing from the compiled descriptor: a field renumbered,
//! retyped, relabelled or removed, a method removed or changed. New lines (additions) pass, and the
//! test says how to record them: `QUILL_WIRE_LOCK=update cargo test -p quill-proto --test wire_compat`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

fn lock_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("wire.lock")
}

fn message_lines(prefix: &str, m: &DescriptorProto, out: &mut BTreeSet<String>) {
    let name = format!("{prefix}.{}", m.name());
    for f in &m.field {
        let ty = match f.r#type() {
            Type::Message | Type::Enum => f.type_name().to_string(),
            t => format!("{t:?}").to_lowercase(),
        };
        let label = match f.label() {
            Label::Repeated => "repeated",
            Label::Required => "required",
            Label::Optional if f.proto3_optional() => "optional",
            Label::Optional => "singular",
        };
        let oneof = match f.oneof_index {
            Some(i) if !f.proto3_optional() => format!(" oneof {}", m.oneof_decl[i as usize].name()),
            _ => String::new(),
        };
        out.insert(format!("field {name}.{} = {} {label} {ty}{oneof}", f.name(), f.number()));
    }
    for nested in &m.nested_type {
        message_lines(&name, nested, out);
    }
    for e in &m.enum_type {
        for v in &e.value {
            out.insert(format!("enum {name}.{}.{} = {}", e.name(), v.name(), v.number()));
        }
    }
}

/// One line per method and per field of the compiled `quill.v1`.
fn current() -> BTreeSet<String> {
    let set = FileDescriptorSet::decode(quill_proto::FILE_DESCRIPTOR_SET).expect("the compiled descriptor set decodes");
    let mut out = BTreeSet::new();
    for file in &set.file {
        let package = format!(".{}", file.package());
        for m in &file.message_type {
            message_lines(&package, m, &mut out);
        }
        for s in &file.service {
            for m in &s.method {
                let stream = |b: bool| if b { "stream " } else { "" };
                out.insert(format!(
                    "rpc {package}.{}.{}({}{}) returns ({}{})",
                    s.name(),
                    m.name(),
                    stream(m.client_streaming()),
                    m.input_type(),
                    stream(m.server_streaming()),
                    m.output_type()
                ));
            }
        }
    }
    out
}

#[test]
fn the_wire_only_grows() {
    let now = current();
    assert!(now.iter().any(|l| l.starts_with("rpc .quill.v1.Keys.")), "the descriptor has no Keys service");
    if std::env::var("QUILL_WIRE_LOCK").as_deref() == Ok("update") {
        let mut text = String::from(
            "# quill.v1 as compiled: one line per method and field. Lines may be added, never changed or\n\
             # removed (proto/README.md). Regenerate after an addition:\n\
             #   QUILL_WIRE_LOCK=update cargo test --release -p quill-proto --test wire_compat\n",
        );
        for l in &now {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(lock_path(), text).expect("write wire.lock");
        return;
    }
    let locked = std::fs::read_to_string(lock_path()).expect("proto/wire.lock");
    let locked: BTreeSet<String> =
        locked.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(String::from).collect();
    let broken: Vec<&String> = locked.difference(&now).collect();
    assert!(
        broken.is_empty(),
        "the wire changed incompatibly: these recorded lines are gone or different (add a new field or method \
         instead; proto/README.md):\n{}",
        broken.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    );
    let added: Vec<&String> = now.difference(&locked).collect();
    assert!(
        added.is_empty(),
        "the wire grew (fine), but proto/wire.lock does not record it yet: run\n  QUILL_WIRE_LOCK=update cargo test \
         --release -p quill-proto --test wire_compat\nnew lines:\n{}",
        added.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_renumbered_or_removed_field_is_caught() {
    // The check itself: a lock with one field renumbered and one that does not exist.
    let now = current();
    let field = now.iter().find(|l| l.starts_with("field .quill.v1.Caller.serial = 2 ")).expect("Caller.serial");
    let renumbered = field.replace(" = 2 ", " = 7 ");
    assert!(!now.contains(&renumbered));
    assert!(!now.contains("field .quill.v1.Caller.gone = 9 singular string"));
}

//! Output of every command: one JSON document with `--json`, text otherwise; aligned tables.

use serde_json::Value;

pub(crate) fn print(json: bool, doc: Value, text: impl AsRef<str>) {
    if json {
        println!("{doc}");
    } else {
        println!("{}", text.as_ref());
    }
}

/// Who, as the CLI prints it: `role:name` (`-` for nobody).
pub(crate) fn actor(a: Option<&quill_proto::v1::ActorView>) -> String {
    a.map_or_else(|| "-".to_string(), |a| format!("{}:{}", a.role, a.name))
}

/// Left-aligned columns separated by two spaces; the first row is the header.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

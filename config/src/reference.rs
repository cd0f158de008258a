//! The configuration reference, written from the schema itself.
//!
//! A hand-kept reference drifts the day someone adds a key. This one is rendered from the
//! JSON schema `schemars` derives from the very structs that parse the file: every key, its
//! type, its default (from the `Default` the loader uses) and its doc comment. Both programs
//! print it (`config reference`); `docs/configuration.md` is that output, and a test fails when
//! the two differ.

use schemars::schema_for;
use serde_json::{Map, Value};

/// The sections `beamflow-agent` reads (its `config check --print` shows these).
pub const AGENT_SECTIONS: &[&str] = &["agent", "watch", "link", "notify"];

/// The sections `beamflow-collector` reads.
pub const COLLECTOR_SECTIONS: &[&str] = &["collector", "service", "workflows", "queues"];

/// The command that writes `docs/configuration.md`.
pub const REGENERATE: &str =
    "cargo run -q --bin beamflow-agent -- config reference > docs/configuration.md";

/// The whole reference, as Markdown.
pub fn reference() -> String {
    let schema = schema_for!(crate::Config);
    let root = schema.as_value();
    let defs = root
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    out.push_str(
        "One TOML file configures both programs; each loads all of it (so a mistake anywhere is \
         reported by whichever reads it first) and uses its own sections. Unknown keys are \
         errors, named in full with their line. This page is generated from the schema the \
         programs parse with (`beamflow-agent config reference` or `beamflow-collector config \
         reference` prints it); a test fails when it and the code disagree.\n\n",
    );
    out.push_str(&format!(
        "Regenerate it with `{REGENERATE}`. Worked examples: `examples/local.toml` (the \
         demo's), `examples/beamline.toml`, `examples/slurm.toml`, `examples/polaris.toml`, \
         `examples/theta.toml`, and the recipes in `docs/sites.md`.\n\n"
    ));
    out.push_str("| section | read by | what it is for |\n|---|---|---|\n");
    let props = root
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut order: Vec<&str> = AGENT_SECTIONS.to_vec();
    order.extend(COLLECTOR_SECTIONS);
    for name in &order {
        if let Some((p, (_, suffix))) = props.get(*name).and_then(|p| Some((p, table(&defs, p)?))) {
            let head = header(name, suffix);
            out.push_str(&format!(
                "| [`{head}`](#{}) | {} | {} |\n",
                anchor(&head),
                reader(name),
                cell(&describe(p))
            ));
        }
    }
    out.push('\n');
    for name in &order {
        if let Some(p) = props.get(*name) {
            section(&mut out, &defs, name, name, p);
        }
    }
    out
}

/// Which program reads a top-level section.
fn reader(top: &str) -> &'static str {
    if AGENT_SECTIONS.contains(&top) {
        "beamflow-agent"
    } else {
        "beamflow-collector"
    }
}

/// The TOML header of a table, from the suffix [`table`] gives its keys: `[agent]`,
/// `[[watch]]` (keys `watch[].…`), `[workflows.NAME]`.
fn header(path: &str, suffix: &str) -> String {
    match suffix {
        "[]" => format!("[[{path}]]"),
        _ => format!("[{path}{suffix}]"),
    }
}

/// A GitHub-style anchor for a heading.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The object definition behind a property: itself, its `$ref`, the items of an array of
/// tables or the values of a map of tables.
fn table<'a>(defs: &'a Map<String, Value>, p: &'a Value) -> Option<(&'a Value, &'static str)> {
    let resolve = |v: &'a Value| -> Option<&'a Value> {
        let r = v.get("$ref")?.as_str()?.strip_prefix("#/$defs/")?;
        let d = defs.get(r)?;
        (d.get("properties").is_some()).then_some(d)
    };
    if let Some(d) = resolve(p) {
        return Some((d, ""));
    }
    if let Some(d) = p.get("items").and_then(resolve) {
        return Some((d, "[]"));
    }
    if let Some(d) = p.get("additionalProperties").and_then(resolve) {
        return Some((d, ".NAME"));
    }
    None
}

/// Renders one table and, after it, the tables inside it.
fn section(out: &mut String, defs: &Map<String, Value>, top: &str, path: &str, p: &Value) {
    let Some((def, suffix)) = table(defs, p) else {
        return;
    };
    let head = header(path, suffix);
    out.push_str(&format!("## `{head}`\n\n"));
    // the table's own doc says it best; it opens by naming its header, which the heading shows
    let own = describe(def);
    let own = match own.split_once("`: ") {
        Some((h, rest)) if h.starts_with("`[") => {
            let mut c = rest.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        }
        _ => own,
    };
    let about = if own.is_empty() { describe(p) } else { own };
    out.push_str(&format!("Read by {}. {about}\n\n", reader(top)));
    let props = def
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let required: Vec<&str> = def
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // the key as an error names it: `watch[].root`, `workflows.NAME.steps[].command`
    let prefix = format!("{path}{suffix}");
    let mut nested = Vec::new();
    out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
    for (key, v) in &props {
        if table(defs, v).is_some() {
            nested.push((key.clone(), v.clone()));
            continue;
        }
        let default = match v.get("default") {
            Some(d) => value(d),
            None if required.contains(&key.as_str()) => "required".to_string(),
            None => "none".to_string(),
        };
        out.push_str(&format!(
            "| `{prefix}.{key}` | {} | {} | {} |\n",
            kind(defs, v),
            default,
            cell(&meaning(defs, v))
        ));
    }
    out.push('\n');
    for (key, v) in nested {
        section(out, defs, top, &format!("{prefix}.{key}"), &v);
    }
}

/// A value as it would be written in TOML.
fn value(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) if s.is_empty() => "`\"\"`".into(),
        Value::String(s) => format!("`{}`", serde_json::to_string(s).unwrap_or_default()),
        Value::Array(a) if a.is_empty() => "`[]`".into(),
        Value::Object(o) if o.is_empty() => "`{}`".into(),
        other => format!("`{other}`"),
    }
    .replace('|', "\\|")
}

/// The type of a key in words.
fn kind(defs: &Map<String, Value>, v: &Value) -> String {
    if let Some(r) = v
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        return match defs.get(r) {
            Some(d) if d.get("oneOf").is_some() || d.get("enum").is_some() => {
                let names = variants(d)
                    .into_iter()
                    .map(|(n, _)| format!("`{n}`"))
                    .collect::<Vec<_>>();
                format!("one of {}", names.join(", "))
            }
            Some(d) => kind(defs, d),
            None => r.to_string(),
        };
    }
    if let Some(f) = v.get("format").and_then(Value::as_str) {
        match f {
            "duration" => return "duration".into(),
            "bytes" => return "size".into(),
            _ => {}
        }
    }
    let types: Vec<&str> = match v.get("type") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let optional = types.contains(&"null");
    let base = match types.iter().find(|t| **t != "null").copied() {
        Some("array") => match v.get("items") {
            Some(i) => format!("list of {}", plural(&kind(defs, i))),
            None => "list".into(),
        },
        Some("object") => match v.get("additionalProperties") {
            Some(i) if i.is_object() => format!("table of {}", plural(&kind(defs, i))),
            _ => "table".into(),
        },
        Some("integer") => "integer".into(),
        Some("number") => "number".into(),
        Some("boolean") => "boolean".into(),
        Some("string") => "string".into(),
        Some(other) => other.into(),
        None => v
            .get("anyOf")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x.get("type") != Some(&"null".into())))
            .map(|x| kind(defs, x))
            .unwrap_or_else(|| "value".into()),
    };
    if optional {
        format!("{base} (optional)")
    } else {
        base
    }
}

fn plural(k: &str) -> String {
    match k {
        "string" => "strings".into(),
        "integer" => "integers".into(),
        "duration" => "durations".into(),
        other => other.into(),
    }
}

/// The unit variants of an enum and what each means.
fn variants(d: &Value) -> Vec<(String, String)> {
    if let Some(all) = d.get("oneOf").and_then(Value::as_array) {
        return all
            .iter()
            .flat_map(|x| {
                let text = describe(x);
                let names: Vec<String> = match (x.get("const"), x.get("enum")) {
                    (Some(Value::String(c)), _) => vec![c.clone()],
                    (_, Some(Value::Array(e))) => e
                        .iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect(),
                    _ => vec![],
                };
                names.into_iter().map(move |n| (n, text.clone()))
            })
            .collect();
    }
    d.get("enum")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .filter_map(|s| s.as_str().map(|n| (n.to_string(), String::new())))
                .collect()
        })
        .unwrap_or_default()
}

/// A key's description, with its enum's variants explained where it has them.
fn meaning(defs: &Map<String, Value>, v: &Value) -> String {
    let mut text = describe(v);
    let target = v
        .get("$ref")
        .or_else(|| v.get("items").and_then(|i| i.get("$ref")))
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|r| defs.get(r));
    if let Some(d) = target {
        let explained: Vec<String> = variants(d)
            .into_iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(n, t)| format!("`{n}`: {}", t.trim_end_matches('.')))
            .collect();
        if !explained.is_empty() {
            text = format!("{} {}.", text.trim_end(), explained.join("; "));
        }
    }
    text
}

/// A schema node's description, rustdoc links made plain.
fn describe(v: &Value) -> String {
    let raw = v.get("description").and_then(Value::as_str).unwrap_or("");
    // `[`crate::argv`]` → `crate::argv`
    let mut s = String::new();
    let mut rest = raw;
    while let Some(i) = rest.find("[`") {
        match rest[i..].find("`]") {
            Some(j) => {
                s.push_str(&rest[..i]);
                s.push_str(&rest[i + 1..i + j + 1]);
                rest = &rest[i + j + 2..];
            }
            None => break,
        }
    }
    s.push_str(rest);
    one_line(&s)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text fit for a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in reference is exactly what the code prints.
    #[test]
    fn docs_configuration_md_is_what_the_schema_says() {
        let docs = include_str!("../../docs/configuration.md");
        let now = reference();
        if docs != now {
            let first = docs
                .lines()
                .zip(now.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(docs.lines().count().min(now.lines().count()));
            panic!(
                "docs/configuration.md differs from the schema from line {}:\n  docs: {:?}\n  code: {:?}\nregenerate it: {REGENERATE}",
                first + 1,
                docs.lines().nth(first),
                now.lines().nth(first)
            );
        }
    }

    /// Every key the shipped examples write is in the reference under its full name.
    #[test]
    fn every_key_of_the_examples_is_described() {
        fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            let Some(t) = v.as_table() else { return };
            for (k, v) in t {
                // maps of named tables: workflows.NAME, queues.NAME; env holds free names
                let name = match prefix {
                    "workflows" | "queues" => "NAME",
                    p if p.ends_with(".env") => return,
                    _ => k.as_str(),
                };
                let full = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}.{name}")
                };
                match v {
                    toml::Value::Table(_) => keys(&full, v, out),
                    toml::Value::Array(a)
                        if a.iter().all(toml::Value::is_table) && !a.is_empty() =>
                    {
                        for item in a {
                            keys(&format!("{full}[]"), item, out);
                        }
                    }
                    _ => out.push(full),
                }
            }
        }
        let text = reference();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut seen = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let v: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut found = Vec::new();
            keys("", &v, &mut found);
            for k in found {
                assert!(
                    text.contains(&format!("| `{k}` |")),
                    "{k} (in {}) is not in the reference",
                    path.display()
                );
                seen += 1;
            }
        }
        assert!(seen > 40, "only {seen} keys in the examples");
        // enums are spelled out, defaults are the loader's
        assert!(text.contains("one of `plain`, `json`"));
        assert!(text.contains("| `agent.rescan` | duration | `\"5m\"` |"));
        assert!(text.contains("| `workflows.NAME.steps[].command` | string | required |"));
    }
}

//! The configuration reference (`docs/CONFIG.md`), rendered from the config types.
//!
//! Owns the markdown of `hookfleet config reference`. Every key comes from the
//! JSON schema that `schemars` derives from [`Config`] (the field's doc comment
//! is its description, an enum's variants its allowed values), its default from
//! the embedded `config/default.toml` as loaded, its range by asking
//! [`Config::validate`] itself (see [`probed_range`]). So the reference cannot drift: a test
//! (`tests/config_reference.rs`) fails when `docs/CONFIG.md` differs from what
//! this renders, and says how to regenerate it.

use std::borrow::Cow;
use std::fmt::Write as _;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use crate::config::{Config, ENV_PREFIX, SecretString, SecretUrl};

/// The schema of a duration setting: a humantime string (`30s`, `5m`, `1h 30m`).
pub(crate) struct HumanDuration;

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "HumanDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "duration" })
    }
}

impl JsonSchema for SecretUrl {
    fn schema_name() -> Cow<'static, str> {
        "SecretUrl".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "uri", "writeOnly": true })
    }
}

impl JsonSchema for SecretString {
    fn schema_name() -> Cow<'static, str> {
        "SecretString".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "writeOnly": true })
    }
}

/// Largest value probed for an integer key; a key still valid there has no
/// upper bound worth printing.
const PROBE_MAX: u64 = 1 << 40;

/// Whether the config loads with `dotted` set to `value` (as its environment
/// variable would set it) and every other key at its default.
fn accepts(dotted: &str, value: &str) -> bool {
    let var = format!(
        "{ENV_PREFIX}{}",
        dotted.to_ascii_uppercase().replace('.', "__")
    );
    Config::load_from(None, [(var, value.to_string())]).is_ok()
}

/// The range [`Config::validate`] (and the field's type) accepts for an integer
/// key, found by asking it, every other key at its default: the reference shows
/// the checks as they are instead of a table kept by hand beside them. Ranges
/// are intervals around the default, so two binary searches find their ends.
/// `None` when the default itself is refused (nothing sensible to probe from).
fn probed_range(dotted: &str, default: u64) -> Option<(u64, Option<u64>)> {
    let ok = |v: u64| accepts(dotted, &v.to_string());
    if !ok(default) {
        return None;
    }
    // Smallest accepted value in [0, default].
    let (mut lo, mut hi) = (0, default);
    if !ok(0) {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if ok(mid) { hi = mid } else { lo = mid }
        }
        lo = hi;
    }
    let min = lo;
    if ok(PROBE_MAX) {
        return Some((min, None));
    }
    // Largest accepted value in [default, PROBE_MAX).
    let (mut lo, mut hi) = (default, PROBE_MAX);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) { lo = mid } else { hi = mid }
    }
    Some((min, Some(lo)))
}

/// The markdown of `docs/CONFIG.md`.
pub fn markdown() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or(Value::Null);
    let defaults = Config::load_from(None, Vec::<(String, String)>::new())
        .ok()
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or(Value::Null);
    let mut out = String::from(HEADER);
    let sections = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (section, section_schema) in &sections {
        let def = resolve(&schema, section_schema);
        let _ = writeln!(out, "\n## `[{section}]`\n");
        if let Some(d) = def["description"].as_str() {
            let _ = writeln!(out, "{}\n", one_line(d));
        }
        out.push_str("| key | default | allowed | env | description |\n");
        out.push_str("| --- | --- | --- | --- | --- |\n");
        let fields = def["properties"].as_object().cloned().unwrap_or_default();
        for (key, field) in &fields {
            let dotted = format!("{section}.{key}");
            let _ = writeln!(
                out,
                "| `{dotted}` | {} | {} | `{ENV_PREFIX}{}__{}` | {} |",
                default_of(&defaults[section.as_str()][key.as_str()]),
                allowed(
                    &schema,
                    &dotted,
                    field,
                    &defaults[section.as_str()][key.as_str()]
                ),
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase(),
                cell(field["description"].as_str().unwrap_or("")),
            );
        }
    }
    out
}

const HEADER: &str = "# Configuration reference\n\n\
<!-- Generated by `hookfleet config reference > docs/CONFIG.md` from the config types \
(src/config/ doc comments, config/default.toml); do not edit by hand. -->\n\n\
Layers, lowest first: the built-in defaults (`config/default.toml`), the file given with \
`--config`, then environment variables `HOOKFLEET_<SECTION>__<KEY>` (a list as one \
comma-separated string). Unknown keys are errors. `hookfleet config check` prints the \
effective config with secrets redacted. Durations are written like `30s`, `5m`, `1h 30m`. \
The allowed range of a number is what the config check accepts for that key with every other \
key at its default (some bounds follow other keys: a cap must fit in \
`amqp.max_message_bytes`, writers in `database.max_connections`).\n";

/// A `$ref` followed to its definition, or the schema itself.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => r
            .strip_prefix("#/$defs/")
            .and_then(|name| root["$defs"].get(name))
            .unwrap_or(schema),
        None => schema,
    }
}

/// The default as a TOML-like literal (secrets show as set or empty, never their value).
fn default_of(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) if s.is_empty() => "`\"\"`".into(),
        Value::Array(a) if a.is_empty() => "`[]`".into(),
        other => format!("`{}`", cell(&other.to_string())),
    }
}

/// Range, enum values or the type of a field.
fn allowed(root: &Value, dotted: &str, field: &Value, default: &Value) -> String {
    let def = resolve(root, field);
    if def["type"] == "integer"
        && let Some(d) = default.as_u64()
        && let Some((min, max)) = probed_range(dotted, d)
    {
        return match max {
            Some(max) => format!("{min}..={max}"),
            None => format!("≥ {min}"),
        };
    }
    if def["format"] == "duration"
        && !dotted.is_empty()
        && let Some(d) = default.as_str()
        && accepts(dotted, d)
        && !accepts(dotted, "0s")
    {
        return "duration > 0".into();
    }
    // Unit enums: `enum`, or `oneOf` of `const`s when variants have doc comments.
    let values: Vec<&Value> = match (def["enum"].as_array(), def["oneOf"].as_array()) {
        (Some(e), _) => e.iter().collect(),
        (None, Some(one_of)) => one_of.iter().map(|v| &v["const"]).collect(),
        (None, None) => Vec::new(),
    };
    if !values.is_empty() {
        return values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", ");
    }
    if def["format"] == "duration" {
        return "duration".into();
    }
    let ty = match &def["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => String::new(),
    };
    if ty == "array" {
        let item = allowed(root, "", &def["items"], &Value::Null);
        return format!("list of {item}");
    }
    ty
}

/// Text fit for a table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

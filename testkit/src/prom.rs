//! Prometheus text exposition helpers: a line-by-line format check, sample
//! lookup by name and labels, and `promtool check metrics` when installed.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// Checks the Prometheus text format line by line: comments are `# HELP name ...` or
/// `# TYPE name <type>`, every other line is `name{labels} value [timestamp]`.
pub fn check_exposition(text: &str) -> Result<usize, String> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn is_value(s: &str) -> bool {
        matches!(s, "+Inf" | "-Inf" | "NaN") || s.parse::<f64>().is_ok()
    }
    /// Parses `k="v",k2="v2"` (with `\"`, `\\`, `\n` escapes) up to the closing brace;
    /// returns the rest after `}`.
    fn labels(mut s: &str) -> Result<&str, String> {
        loop {
            if let Some(rest) = s.strip_prefix('}') {
                return Ok(rest);
            }
            let eq = s.find('=').ok_or("label without =")?;
            if !is_name(&s[..eq]) {
                return Err(format!("bad label name {:?}", &s[..eq]));
            }
            let mut chars = s[eq + 1..].char_indices();
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut end = None;
            let mut escaped = false;
            for (i, c) in chars {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(eq + 1 + i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("unterminated label value")?;
            s = &s[end + 1..];
            if let Some(rest) = s.strip_prefix(',') {
                s = rest;
            } else if !s.starts_with('}') {
                return Err("expected , or } after label".into());
            }
        }
    }
    let mut samples = 0;
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            let mut parts = c.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), _) if is_name(name) => {}
                (Some("TYPE"), Some(name), Some(t))
                    if is_name(name)
                        && ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) => {
                }
                _ => return Err(err("bad comment".into())),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        if !is_name(&line[..name_end]) {
            return Err(err("bad metric name".into()));
        }
        let rest = match line[name_end..].strip_prefix('{') {
            Some(l) => labels(l).map_err(err)?,
            None => &line[name_end..],
        };
        let fields: Vec<&str> = rest.trim_start_matches(' ').split(' ').collect();
        match fields.as_slice() {
            [v] if is_value(v) => {}
            [v, ts] if is_value(v) && ts.parse::<i64>().is_ok() => {}
            _ => return Err(err("bad value".into())),
        }
        samples += 1;
    }
    Ok(samples)
}

/// Splits a sample line into name, labels and value; `None` for comments,
/// blank lines and anything malformed.
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            if let Some(r) = s.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = s.find('=')?;
            let key = s[..eq].to_string();
            let mut value = String::new();
            let mut chars = s[eq + 1..].char_indices();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut end = None;
            let mut escaped = false;
            for (i, c) in chars {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(eq + 1 + i);
                        break;
                    }
                    (false, c) => value.push(c),
                }
            }
            labels.insert(key, value);
            s = &s[end? + 1..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The value of the sample `name` whose labels include all of `labels`; `None`
/// when there is no such sample (a labelled counter appears once first touched).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter_map(parse_sample).find_map(|(n, l, v)| {
        (n == name
            && labels
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want)))
        .then_some(v)
    })
}

/// Runs `promtool check metrics` on `text` when promtool is on PATH (the Debian
/// package `prometheus` ships it); prints a note and returns when it is not.
pub fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            println!("note: promtool not runnable ({e}); skipped `promtool check metrics`");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! One ref update as git hands it to `post-receive` on stdin:
//! `<old-id> <new-id> <refname>`, and its validation.
//!
//! Owns the line format and what counts as a well-formed update (object ids of
//! SHA-1 or SHA-256 length, both the same length, a valid refname, not both
//! zero). It never looks into a repository.

use serde::{Deserialize, Serialize};

use super::refname;

/// Hex length of a SHA-1 object id.
pub(crate) const SHA1_HEX_LEN: usize = 40;
/// Hex length of a SHA-256 object id.
pub(crate) const SHA256_HEX_LEN: usize = 64;

/// One updated ref. Ids are lowercase hex; an all-zero id means the ref did not
/// exist before (`before`) or was deleted (`after`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    /// Full refname, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub refname: String,
    /// Object id before the push (zero when created).
    pub before: String,
    /// Object id after the push (zero when deleted).
    pub after: String,
}

/// `true` when `id` is the all-zero id git uses for "no object".
pub(crate) fn is_zero(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b == b'0')
}

impl RefUpdate {
    /// The ref did not exist before the push.
    pub(crate) fn is_created(&self) -> bool {
        is_zero(&self.before)
    }
    /// The ref was deleted by the push.
    pub(crate) fn is_deleted(&self) -> bool {
        is_zero(&self.after)
    }
    /// Checks the update (used for stdin and again for bodies read back from
    /// the spool or the queue, which must not be trusted either).
    pub fn validate(&self) -> Result<(), String> {
        check_id("old id", &self.before)?;
        check_id("new id", &self.after)?;
        if self.before.len() != self.after.len() {
            return Err(format!(
                "old and new ids differ in length ({} and {} hex digits)",
                self.before.len(),
                self.after.len()
            ));
        }
        if self.is_created() && self.is_deleted() {
            return Err("old and new ids are both zero".into());
        }
        refname::check(&self.refname).map_err(|e| format!("{e}: {:?}", self.refname))
    }
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.len() != SHA1_HEX_LEN && id.len() != SHA256_HEX_LEN {
        return Err(format!(
            "{what} has {} characters, expected {SHA1_HEX_LEN} (SHA-1) or {SHA256_HEX_LEN} (SHA-256)",
            id.chars().count()
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("{what} is not lowercase hex"));
    }
    Ok(())
}

/// Parses and validates one stdin line (without its newline).
pub fn parse_line(line: &str) -> Result<RefUpdate, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.splitn(3, ' ');
    let (Some(before), Some(after), Some(refname)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("expected \"<old-id> <new-id> <refname>\"".into());
    };
    let update = RefUpdate {
        refname: refname.to_string(),
        before: before.to_ascii_lowercase(),
        after: after.to_ascii_lowercase(),
    };
    update.validate()?;
    Ok(update)
}

/// A stdin line that was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineError {
    /// 1-based line number.
    pub(crate) line: usize,
    /// Why it was skipped.
    pub(crate) reason: String,
}

/// Parses all of stdin: the valid updates in order, and the skipped lines.
/// Blank lines are ignored silently; a line that is not UTF-8 is skipped (its
/// refname could not be carried faithfully in a JSON body).
pub(crate) fn parse_input(input: &[u8]) -> (Vec<RefUpdate>, Vec<LineError>) {
    let mut updates = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in input.split(|b| *b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(raw) else {
            errors.push(LineError {
                line: i + 1,
                reason: "line is not valid UTF-8".into(),
            });
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(u) => updates.push(u),
            Err(reason) => errors.push(LineError {
                line: i + 1,
                reason,
            }),
        }
    }
    (updates, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A1: &str = "1111111111111111111111111111111111111111";
    const Z1: &str = "0000000000000000000000000000000000000000";

    fn a256() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn sha1_and_sha256_lines_parse() {
        let u = parse_line(&format!("{Z1} {A1} refs/heads/main")).unwrap();
        assert!(u.is_created() && !u.is_deleted());
        assert_eq!(u.refname, "refs/heads/main");
        let z256 = "0".repeat(64);
        let u = parse_line(&format!("{} {z256} refs/tags/v1", a256())).unwrap();
        assert!(u.is_deleted());
        // Upper case is normalised.
        let u = parse_line(&format!(
            "{} {A1} refs/heads/x",
            "ABCDEF".repeat(6) + "ABCD"
        ))
        .unwrap();
        assert_eq!(u.before, "abcdef".repeat(6) + "abcd");
    }

    #[test]
    fn bad_lines_are_rejected_with_a_reason() {
        let cases = [
            (format!("{A1} {} refs/heads/x", a256()), "differ in length"),
            (format!("{A1} {} refs/heads/x", &A1[..39]), "39 characters"),
            (
                format!("{A1} {}g refs/heads/x", &A1[..39]),
                "not lowercase hex",
            ),
            (format!("{Z1} {Z1} refs/heads/x"), "both zero"),
            (format!("{Z1} {A1} refs/heads/a..b"), "\"..\""),
            (format!("{Z1} {A1} main"), "single component"),
            (format!("{Z1} {A1}"), "expected"),
            ("garbage".to_string(), "expected"),
        ];
        for (line, want) in cases {
            let err = parse_line(&line).unwrap_err();
            assert!(
                err.contains(want),
                "{line:?}: {err:?} should mention {want:?}"
            );
        }
    }

    #[test]
    fn input_keeps_valid_lines_and_numbers_bad_ones() {
        let mut input =
            format!("{Z1} {A1} refs/heads/a\nnope\n\n{A1} {Z1} refs/tags/t\n").into_bytes();
        input.extend_from_slice(b"\xff\xfe\n");
        let (ok, bad) = parse_input(&input);
        assert_eq!(ok.len(), 2);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].line, 2);
        assert_eq!(bad[1].line, 5);
        assert!(bad[1].reason.contains("UTF-8"));
    }
}

//! Reference name rules: what `git check-ref-format` (without `--allow-onelevel`)
//! accepts, implemented here so the hook needs no git process to validate stdin.
//!
//! Owns the rule set only; it never touches a repository.

/// Why a refname is invalid (a short human reason, shown to the pusher).
pub(crate) type RefnameError = &'static str;

/// Checks `name` against the rules of `git check-ref-format`:
/// at least two components (`refs/heads/x`), no empty component (leading,
/// trailing or doubled `/`), no component starting with `.` or ending in
/// `.lock`, no `..`, no `@{`, not `@`, no trailing `.`, and none of control
/// characters, space, `~ ^ : ? * [ \`.
pub(crate) fn check(name: &str) -> Result<(), RefnameError> {
    if name.is_empty() {
        return Err("refname is empty");
    }
    if name == "@" {
        return Err("refname must not be \"@\"");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_ascii_control() || " ~^:?*[\\".contains(*c))
    {
        return Err(if c.is_ascii_control() {
            "refname contains a control character"
        } else if c == ' ' {
            "refname contains a space"
        } else {
            "refname contains one of ~ ^ : ? * [ \\"
        });
    }
    if name.contains("..") {
        return Err("refname contains \"..\"");
    }
    if name.contains("@{") {
        return Err("refname contains \"@{\"");
    }
    if name.ends_with('.') {
        return Err("refname ends with \".\"");
    }
    if name.starts_with('/') || name.ends_with('/') {
        return Err("refname starts or ends with \"/\"");
    }
    if name.contains("//") {
        return Err("refname contains \"//\"");
    }
    if !name.contains('/') {
        return Err("refname has a single component (expected e.g. refs/heads/name)");
    }
    for component in name.split('/') {
        if component.starts_with('.') {
            return Err("a refname component starts with \".\"");
        }
        if component.ends_with(".lock") {
            return Err("a refname component ends with \".lock\"");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn valid_names() {
        for name in [
            "refs/heads/main",
            "refs/heads/feature/x-1",
            "refs/tags/v1.0.0",
            "refs/heads/a.b",
            "refs/heads/@",
            "refs/heads/a@b",
            "refs/heads/ünïcode",
            "refs/heads/lock.x",
            "refs/notes/commits",
            "a/b",
        ] {
            assert_eq!(check(name), Ok(()), "{name} should be valid");
        }
    }

    #[test]
    fn invalid_names() {
        for name in [
            "",
            "@",
            "main",
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/a\tb",
            "refs/heads/a\u{7f}",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a?",
            "refs/heads/a*",
            "refs/heads/a[b",
            "refs/heads/a\\b",
            "refs/heads/.hidden",
            "refs/.heads/x",
            "refs/heads/x.lock",
            "refs/heads/x.lock/y",
            "refs/heads/a@{1}",
            "refs/heads/x/",
            "/refs/heads/x",
            "refs//heads/x",
            "refs/heads/x.",
        ] {
            assert!(check(name).is_err(), "{name:?} should be invalid");
        }
    }
}

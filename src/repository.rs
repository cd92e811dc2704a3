//! Repository names as subscriptions and limits see them: who owns a name, and which
//! patterns select it.
//!
//! A pattern matches with `*` within one path segment, `**` across segments, `?` one
//! character but `/`, and `*` or `**` alone every repository; a trailing `.git` on the
//! repository is ignored. Webhook subscriptions (`webhook::subscription`) and the
//! per-repository rate limits (`ratelimit`) both select repositories this way, so the
//! rule lives below both. Pure: no I/O.

/// The owner of a repository named `full_name`: its first path segment when it
/// has more than one (`org/app`, `org/team/app` → `org`), else none.
pub(crate) fn owner_of(full_name: &str) -> Option<&str> {
    full_name
        .split_once('/')
        .map(|(owner, _)| owner)
        .filter(|o| !o.is_empty())
}

/// Checks a repository pattern: non-empty, no whitespace or control characters.
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "repository pattern must be non-empty with no spaces, got {pattern:?}"
        ));
    }
    Ok(())
}

/// Whether `pattern` matches `repository` (or `repository` without `.git`).
/// `*` alone and `**` match every repository, whatever its number of segments:
/// nobody writing `*` means "repositories without an owner".
pub(crate) fn matches(pattern: &str, repository: &str) -> bool {
    if matches!(pattern.trim(), "*" | "**") {
        return true;
    }
    let repo = repository.trim_matches('/');
    let pattern = pattern.trim_matches('/');
    let short = repo.strip_suffix(".git").unwrap_or(repo);
    let pat_short = pattern.strip_suffix(".git").unwrap_or(pattern);
    glob(pattern.as_bytes(), repo.as_bytes()) || glob(pat_short.as_bytes(), short.as_bytes())
}

/// Glob over bytes: `**` matches anything, `*` anything but `/`, `?` one non-`/`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some(b'?') => !s.is_empty() && s[0] != b'/' && glob(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("org/*", "org/repo"));
        assert!(matches("org/*", "org/repo.git"));
        assert!(matches("org/repo", "org/repo.git"));
        assert!(!matches("org/*", "org/team/repo"));
        assert!(matches("org/**", "org/team/repo"));
        assert!(matches("**", "/srv/git/x.git"));
        assert!(!matches("org/*", "other/repo"));
        assert!(matches("org/re?o", "org/repo"));
        assert!(matches("*", "org/team/repo"));
        assert!(matches("*", "/srv/git/x.git"));
        assert!(matches("**", "org/repo"));
    }
}

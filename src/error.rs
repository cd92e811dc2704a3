//! Error rendering shared by every role: one line per error, for logs and the
//! command line. A foundation module: it imports nothing from the crate.

/// Renders an error and its causes on one line, skipping a cause whose text the
/// message already contains (sqlx and lapin repeat their sources in `Display`).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

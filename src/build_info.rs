//! What is running: version, git SHA and build time, stamped by `build.rs`.
//!
//! Used by `--version`, `/info` and the `hookfleet_build_info` metric, so all three agree.

/// Crate version.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short git SHA of the build, or `unknown` outside a checkout.
pub(crate) const GIT_SHA: &str = env!("HOOKFLEET_GIT_SHA");
/// Build time in seconds since the epoch (`SOURCE_DATE_EPOCH` when set).
pub(crate) const BUILD_EPOCH: &str = env!("HOOKFLEET_BUILD_EPOCH");

/// Build time in epoch seconds.
pub(crate) fn build_epoch() -> u64 {
    BUILD_EPOCH.parse().unwrap_or(0)
}

/// Build time as RFC 3339.
pub(crate) fn build_time() -> String {
    chrono::DateTime::from_timestamp(build_epoch() as i64, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "unknown".into())
}

/// `0.1.0 (git abc123, built 2026-11-23T11:00:00+00:00)`, the `--version` line.
pub(crate) fn long_version() -> String {
    format!("{VERSION} (git {GIT_SHA}, built {})", build_time())
}

//! The checks every section's `validate` shares. A failed one names the key, the
//! value and what is allowed.

use std::time::Duration;

use super::error::ConfigError;
use super::secret::SecretUrl;

/// `v` must lie in `r`.
pub(super) fn range(
    key: &str,
    v: u64,
    r: std::ops::RangeInclusive<u64>,
) -> Result<(), ConfigError> {
    if r.contains(&v) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: key.into(),
            message: format!("must be {}..={}, got {v}", r.start(), r.end()),
        })
    }
}
/// `(key, value)` must be at least `(min_key, min)`: a series' largest delay
/// and its first.
pub(super) fn at_least(
    (key, value): (&str, Duration),
    (min_key, min): (&str, Duration),
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::Invalid {
            key: key.into(),
            message: format!(
                "must be at least {min_key} ({}), got {}",
                humantime::format_duration(min),
                humantime::format_duration(value)
            ),
        });
    }
    Ok(())
}
/// A duration that must not be zero (a timeout or an interval).
pub(super) fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::Invalid {
            key: key.into(),
            message: "must be greater than 0s, got 0s".into(),
        })
    } else {
        Ok(())
    }
}
/// A URL with one of `schemes`; the message shows it redacted.
pub(super) fn url(key: &str, u: &SecretUrl, schemes: &[&str]) -> Result<(), ConfigError> {
    match url::Url::parse(u.expose()) {
        Ok(p) if schemes.contains(&p.scheme()) => Ok(()),
        Ok(p) => Err(ConfigError::Invalid {
            key: key.into(),
            message: format!(
                "must use one of the schemes {}, got {:?}",
                schemes.join(", "),
                p.scheme()
            ),
        }),
        Err(e) => Err(ConfigError::Invalid {
            key: key.into(),
            message: format!("must be a valid URL, got {} ({e})", u.redacted()),
        }),
    }
}

/// A URL base of webhook bodies: bodies are checked against schemas with
/// `format: uri`, so a base that is not an absolute http(s) URL would make every
/// body invalid. Empty is allowed where `empty_ok` (the base is derived).
pub(super) fn http_base_url(key: &str, base: &str, empty_ok: bool) -> Result<(), ConfigError> {
    let ok = (base.is_empty() && empty_ok)
        || url::Url::parse(base)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
    if !ok {
        return Err(ConfigError::Invalid {
            key: key.into(),
            message: format!("must be an absolute http or https URL, got {base:?}"),
        });
    }
    Ok(())
}

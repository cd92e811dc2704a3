//! [`ConfigError`]: what loading or validating the configuration reports.

use std::path::PathBuf;

/// A configuration error, with enough context for an operator to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not valid TOML (the message carries line and column).
    #[error("{origin} is not valid TOML: {message}")]
    Syntax {
        /// The file (or "built-in defaults").
        origin: String,
        /// The parser's message, with position.
        message: String,
    },
    /// A key is unknown or a value has the wrong type.
    #[error("{origin}: {message}")]
    Shape {
        /// Where the offending key came from (file path or environment variable).
        origin: String,
        /// What is wrong, with the dotted key.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{key} {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is allowed and what was given.
        message: String,
    },
}

//! Loading: the embedded defaults, a file and `HOOKFLEET_<SECTION>__<KEY>`
//! variables merged in that order, then deserialized and validated, each error
//! blamed on the layer that set the bad key.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::root::Config;

/// The defaults, embedded so the binary works with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "HOOKFLEET_";

/// Where a layer of configuration came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    Defaults,
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Defaults => f.write_str("built-in defaults"),
            Origin::File(p) => write!(f, "config file {}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

impl Config {
    /// Loads defaults, then `file`, then the process environment, and validates.
    pub(crate) fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut merged = parse_toml(DEFAULT_TOML, &Origin::Defaults)?;
        // Remember which layer set each dotted key, so a bad key can be blamed on it.
        let mut origins: Vec<(Vec<String>, Origin)> = Vec::new();
        if let Some(path) = file {
            merge_file(path, &mut merged, &mut origins)?;
        }
        merge_env(env, &mut merged, &mut origins)?;
        let config = deserialize(merged, &origins)?;
        one_of_url_and_urls(&config, &origins)?;
        config.validate()?;
        Ok(config)
    }
}

/// Merges the TOML file at `path` over `merged`, noting the keys it sets.
fn merge_file(
    path: &Path,
    merged: &mut toml::Table,
    origins: &mut Vec<(Vec<String>, Origin)>,
) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = Origin::File(path.to_path_buf());
    let table = parse_toml(&text, &origin)?;
    collect_paths(&table, &mut Vec::new(), &origin, origins);
    merge(merged, table);
    Ok(())
}

/// Sets each `HOOKFLEET_<SECTION>__<KEY>` variable of `env` (in name order) in
/// `merged`, noting the keys they set. Variables without `__` are not config.
fn merge_env(
    env: impl IntoIterator<Item = (String, String)>,
    merged: &mut toml::Table,
    origins: &mut Vec<(Vec<String>, Origin)>,
) -> Result<(), ConfigError> {
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    env.sort();
    for (var, raw) in env {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Shape {
                origin: Origin::Env(var.clone()).to_string(),
                message: "empty key segment (use HOOKFLEET_SECTION__KEY)".into(),
            });
        }
        let value = env_value(&raw);
        origins.push((path.clone(), Origin::Env(var.clone())));
        set_path(merged, &path, value).map_err(|message| ConfigError::Shape {
            origin: Origin::Env(var.clone()).to_string(),
            message,
        })?;
    }
    Ok(())
}

/// The merged layers as a [`Config`]; a key unknown or of the wrong type is
/// blamed on the layer that set it.
fn deserialize(
    merged: toml::Table,
    origins: &[(Vec<String>, Origin)],
) -> Result<Config, ConfigError> {
    let de = toml::Value::Table(merged);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let segments: Vec<String> = path
            .split('.')
            .filter(|s| !s.is_empty() && *s != "?")
            .map(|s| s.to_string())
            .collect();
        let inner = e.into_inner().to_string().replace('\n', " ");
        // The offending key is the path plus, for an unknown field, the field itself.
        let origin = blame(origins, &segments, &inner);
        let key = if path.is_empty() || path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        ConfigError::Shape {
            origin: origin.to_string(),
            message: format!("{key}{inner}"),
        }
    })
}

/// `amqp.url` has a default; a non-empty `amqp.urls` replaces it. Both set by
/// the operator is ambiguous: which one did they mean?
fn one_of_url_and_urls(
    config: &Config,
    origins: &[(Vec<String>, Origin)],
) -> Result<(), ConfigError> {
    let set_in = |key: &[&str]| {
        origins
            .iter()
            .rev()
            .find(|(p, _)| p.iter().map(String::as_str).eq(key.iter().copied()))
            .map(|(_, o)| o.to_string())
    };
    if let (false, Some(one), Some(list)) = (
        config.amqp.urls.is_empty(),
        set_in(&["amqp", "url"]),
        set_in(&["amqp", "urls"]),
    ) {
        return Err(ConfigError::Invalid {
            key: "amqp.url".into(),
            message: format!(
                "and amqp.urls are both set ({one}; {list}): set amqp.urls for several \
                 nodes or amqp.url for one address, not both"
            ),
        });
    }
    Ok(())
}

fn parse_toml(text: &str, origin: &Origin) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string().trim().to_string(),
        })
}

/// Parses an environment value as a TOML value (number, bool, array), else as a string.
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            // A bare word like `quorum` fails to parse; a quoted or typed value succeeds.
            Some(v) => v,
            None => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = match path.split_last() {
        Some(x) => x,
        None => return Err("empty key".into()),
    };
    let mut cur = table;
    for (i, seg) in parents.iter().enumerate() {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("{} is not a section", path[..=i].join("."))),
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn collect_paths(
    table: &toml::Table,
    prefix: &mut Vec<String>,
    origin: &Origin,
    out: &mut Vec<(Vec<String>, Origin)>,
) {
    for (k, v) in table {
        prefix.push(k.clone());
        match v {
            toml::Value::Table(t) => collect_paths(t, prefix, origin, out),
            _ => out.push((prefix.clone(), origin.clone())),
        }
        prefix.pop();
    }
}

/// Finds the last layer that set `path` (or, for an unknown field, `path.<field>`).
fn blame(origins: &[(Vec<String>, Origin)], path: &[String], message: &str) -> Origin {
    let mut wanted = path.to_vec();
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        wanted.push(field.to_string());
    }
    origins
        .iter()
        .rev()
        .find(|(p, _)| p.starts_with(&wanted) || wanted.starts_with(p))
        .or_else(|| origins.iter().rev().find(|(p, _)| p.starts_with(path)))
        .map(|(_, o)| o.clone())
        .unwrap_or(Origin::Defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = Config::load_from(None, Vec::new()).unwrap();
        assert_eq!(c.worker.concurrency, 64);
        assert_eq!(c.prefetch(), 64);
    }

    #[test]
    fn site_urls_are_checked() {
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let c = Config::load_from(None, env("HOOKFLEET_SITE__API_URL", "https://api.h/")).unwrap();
        assert_eq!(c.site.api_url, "https://api.h/");
        for (k, v) in [
            ("HOOKFLEET_SITE__HTML_URL", "git.example.com"),
            ("HOOKFLEET_SITE__CLONE_URL", "ftp://h/"),
            ("HOOKFLEET_SITE__SSH_HOST", "git@h; rm"),
            ("HOOKFLEET_PUSH__COMPARE_BASE_URL", ""),
        ] {
            let e = Config::load_from(None, env(k, v)).unwrap_err().to_string();
            let key = k["HOOKFLEET_".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            assert!(e.contains(&key), "{k}={v}: {e}");
        }
    }

    #[test]
    fn env_values_are_typed() {
        assert_eq!(env_value("20"), toml::Value::Integer(20));
        assert_eq!(env_value("true"), toml::Value::Boolean(true));
        assert_eq!(env_value("quorum"), toml::Value::String("quorum".into()));
        assert_eq!(
            env_value("amqp://a:b@h/"),
            toml::Value::String("amqp://a:b@h/".into())
        );
    }
}

//! Subscription secrets: their forms, which of them sign at a given time, and
//! how they are kept at rest.
//!
//! Owns three things:
//! - **Forms.** A GitHub-style secret is any string (its UTF-8 bytes are the
//!   HMAC key). A Standard Webhooks secret is `whsec_<base64 key>` (the decoded
//!   bytes are the HMAC key), as Svix, Convoy and the `standardwebhooks`
//!   libraries expect; [`generate`] makes one of either style.
//! - **Rotation.** A subscription holds its current secret and, after
//!   `webhook rotate-secret`, the previous one with an expiry. [`signing_secrets`]
//!   compares that expiry with the clock at signing time, so no job is needed to
//!   retire an old secret.
//! - **Encryption at rest.** With `webhook.secret_key` set, secrets are stored
//!   as `enc:v1:<key id>:<base64(nonce || AES-256-GCM ciphertext)>`. The key id
//!   (the first 8 hex digits of SHA-256 of the key) names which key sealed a
//!   value, so after a key rotation the old key, listed in
//!   `webhook.previous_secret_keys`, still opens what `hookfleet migrate` has not
//!   re-sealed yet. A value without the prefix is a plaintext secret from before
//!   a key was configured; it is read as it is until `migrate` seals it.
//!
//! This module never logs, prints or formats a secret or a key into an error.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::subscription::{Style, Subscription};
use crate::config::WebhookConfig;

/// Prefix of a Standard Webhooks secret.
pub(crate) const WHSEC_PREFIX: &str = "whsec_";
/// Prefix of a sealed (encrypted) stored secret; a plaintext secret may not start with it.
pub const SEALED_PREFIX: &str = "enc:v1:";
/// Bytes of a generated secret's key (Svix uses 24; 32 is the HMAC-SHA256 block-friendly size).
pub(crate) const GENERATED_KEY_BYTES: usize = 32;
/// Associated data of every sealed secret, so a ciphertext of some other use of
/// the same key cannot be passed off as a webhook secret.
const AAD: &[u8] = b"hookfleet webhook secret v1";
const NONCE_BYTES: usize = 12;

/// Why a secret could not be used. Never carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// A sealed secret names a key that is not configured.
    #[error(
        "the subscription's secret is encrypted with key {0}, which is neither \
         webhook.secret_key nor in webhook.previous_secret_keys"
    )]
    UnknownKey(String),
    /// A sealed secret does not decrypt (corrupt, or tampered with).
    #[error("the subscription's secret does not decrypt with key {0} (corrupt?)")]
    Corrupt(String),
    /// A secret's form is wrong for its style.
    #[error("{0}")]
    Form(String),
}

/// Checks a secret given for a subscription of `style`: Standard Webhooks needs
/// `whsec_` and a non-empty base64 key; no secret may look sealed.
pub(crate) fn check_form(style: Style, secret: &str) -> Result<(), SecretError> {
    if secret.starts_with(SEALED_PREFIX) {
        return Err(SecretError::Form(format!(
            "a secret may not start with {SEALED_PREFIX:?} (reserved for encrypted secrets)"
        )));
    }
    if style == Style::Standard {
        standard_key(secret)?;
    }
    Ok(())
}

/// The HMAC key of a `whsec_` secret.
pub(crate) fn standard_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let Some(b64) = secret.strip_prefix(WHSEC_PREFIX) else {
        return Err(SecretError::Form(
            "a standard-style secret must have the form whsec_<base64 key>".into(),
        ));
    };
    // Accept unpadded base64 too, as the reference libraries do.
    let padded = format!("{b64}{}", "=".repeat((4 - b64.len() % 4) % 4));
    match B64.decode(padded) {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => Err(SecretError::Form(
            "a standard-style secret must be whsec_ followed by non-empty base64".into(),
        )),
    }
}

/// A new random secret for `style`: `whsec_<base64>` or 64 hex digits.
pub fn generate(style: Style) -> String {
    let mut key = [0u8; GENERATED_KEY_BYTES];
    OsRng.fill_bytes(&mut key);
    match style {
        Style::Standard => format!("{WHSEC_PREFIX}{}", B64.encode(key)),
        Style::Github => hex::encode(key),
    }
}

/// The secrets that sign a delivery of `sub` at `now`, opened: the current one
/// first, then the previous one while its overlap lasts. Empty when the
/// subscription has no secret.
pub(crate) fn signing_secrets(
    sub: &Subscription,
    keys: &Keyring,
    now: DateTime<Utc>,
) -> Result<Vec<String>, SecretError> {
    let mut out = Vec::new();
    if let Some(s) = sub.secret.as_deref().filter(|s| !s.is_empty()) {
        out.push(keys.open(s)?);
    }
    if let (Some(s), Some(until)) = (
        sub.previous_secret.as_deref().filter(|s| !s.is_empty()),
        sub.previous_secret_expires_at,
    ) && now < until
    {
        out.push(keys.open(s)?);
    }
    Ok(out)
}

/// One AES-256-GCM key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    /// The cipher of key bytes that [`WebhookConfig::secret_key_bytes`] decoded.
    fn from_bytes(bytes: &[u8]) -> Result<Key, String> {
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| "invalid key".to_string())?;
        Ok(Key { id, cipher })
    }
}

/// The keys of `webhook.secret_key` (seals and opens) and
/// `webhook.previous_secret_keys` (open only). Without a current key, secrets
/// are stored as given (plaintext), as before encryption existed.
#[derive(Clone, Default)]
pub struct Keyring {
    current: Option<Key>,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.as_ref().map(|k| &k.id))
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// The keys of `cfg`; the error names the config key (never its value).
    pub fn from_config(cfg: &WebhookConfig) -> Result<Keyring, (String, String)> {
        let bytes = cfg.secret_key_bytes()?;
        let current = bytes
            .current
            .map(|k| Key::from_bytes(&k).map_err(|m| ("webhook.secret_key".to_string(), m)))
            .transpose()?;
        let previous = bytes
            .previous
            .iter()
            .enumerate()
            .map(|(i, k)| {
                Key::from_bytes(k).map_err(|m| (format!("webhook.previous_secret_keys[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring { current, previous })
    }

    /// Whether secrets are encrypted when stored.
    pub(crate) fn encrypts(&self) -> bool {
        self.current.is_some()
    }

    /// The id of the current key, if any.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    /// The stored form of `secret`: sealed with the current key, or as given
    /// when no key is configured.
    pub(crate) fn seal(&self, secret: &str) -> String {
        let Some(key) = &self.current else {
            return secret.to_string();
        };
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: secret.as_bytes(),
            aad: AAD,
        };
        // Encryption only fails for plaintexts beyond GCM's 64 GiB limit.
        let Ok(ct) = key.cipher.encrypt(Nonce::from_slice(&nonce), payload) else {
            return secret.to_string();
        };
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!("{SEALED_PREFIX}{}:{}", key.id, B64.encode(blob))
    }

    /// The secret of a stored value: opened with whichever configured key sealed
    /// it, or the value itself when it is plaintext.
    pub fn open(&self, stored: &str) -> Result<String, SecretError> {
        let Some(rest) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_string());
        };
        let (id, b64) = rest.split_once(':').unwrap_or((rest, ""));
        let key = self
            .current
            .iter()
            .chain(self.previous.iter())
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey(id.to_string()))?;
        let corrupt = || SecretError::Corrupt(id.to_string());
        let blob = B64.decode(b64).map_err(|_| corrupt())?;
        if blob.len() < NONCE_BYTES {
            return Err(corrupt());
        }
        let (nonce, ct) = blob.split_at(NONCE_BYTES);
        let pt = key
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: AAD })
            .map_err(|_| corrupt())?;
        String::from_utf8(pt).map_err(|_| corrupt())
    }

    /// Whether `stored` should be re-sealed by `migrate`: plaintext, or sealed
    /// with a key other than the current one. Always `false` without a key.
    pub(crate) fn needs_reseal(&self, stored: &str) -> bool {
        let Some(key) = &self.current else {
            return false;
        };
        match stored.strip_prefix(SEALED_PREFIX) {
            None => !stored.is_empty(),
            Some(rest) => rest.split_once(':').map(|(id, _)| id) != Some(key.id.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretString;

    fn cfg(current: &str, previous: &[&str]) -> WebhookConfig {
        let mut c = crate::config::Config::load_from(None, Vec::new())
            .unwrap()
            .webhook;
        c.secret_key = SecretString::new(current);
        c.previous_secret_keys = previous.iter().map(|p| SecretString::new(*p)).collect();
        c
    }

    fn key() -> String {
        let mut k = [0u8; crate::config::SECRET_KEY_BYTES];
        OsRng.fill_bytes(&mut k);
        B64.encode(k)
    }

    #[test]
    fn seal_open_roundtrip_and_rotation() {
        let (k1, k2) = (key(), key());
        let one = Keyring::from_config(&cfg(&k1, &[])).unwrap();
        let sealed = one.seal("s3cret");
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("s3cret"));
        assert_ne!(sealed, one.seal("s3cret"), "fresh nonce each time");
        assert_eq!(one.open(&sealed).unwrap(), "s3cret");
        assert_eq!(one.open("plain").unwrap(), "plain");
        assert!(one.needs_reseal("plain"));
        assert!(!one.needs_reseal(&sealed));

        let two = Keyring::from_config(&cfg(&k2, &[&k1])).unwrap();
        assert_eq!(two.open(&sealed).unwrap(), "s3cret");
        assert!(two.needs_reseal(&sealed));
        let resealed = two.seal(&two.open(&sealed).unwrap());
        let only_two = Keyring::from_config(&cfg(&k2, &[])).unwrap();
        assert_eq!(only_two.open(&resealed).unwrap(), "s3cret");
        assert!(matches!(
            only_two.open(&sealed),
            Err(SecretError::UnknownKey(_))
        ));

        let mut tampered = resealed.clone();
        tampered.pop();
        tampered.push(if resealed.ends_with('A') { 'B' } else { 'A' });
        assert!(only_two.open(&tampered).is_err());
    }

    #[test]
    fn no_key_keeps_plaintext() {
        let none = Keyring::from_config(&cfg("", &[])).unwrap();
        assert!(!none.encrypts());
        assert_eq!(none.seal("x"), "x");
        assert!(!none.needs_reseal("x"));
    }

    #[test]
    fn malformed_keys_are_refused_without_echo() {
        let (k, m) = Keyring::from_config(&cfg("not base64!", &[])).unwrap_err();
        assert_eq!(k, "webhook.secret_key");
        assert!(!m.contains("not base64!"));
        let (_, m) = Keyring::from_config(&cfg(&B64.encode([1u8; 16]), &[])).unwrap_err();
        assert!(m.contains("got 16 bytes"), "{m}");
        let (k, _) = Keyring::from_config(&cfg(&key(), &["short"])).unwrap_err();
        assert_eq!(k, "webhook.previous_secret_keys[0]");
    }

    #[test]
    fn forms() {
        assert!(check_form(Style::Standard, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(check_form(Style::Standard, "plain").is_err());
        assert!(check_form(Style::Standard, "whsec_").is_err());
        assert!(check_form(Style::Github, "plain").is_ok());
        assert!(check_form(Style::Github, "enc:v1:x").is_err());
        assert!(generate(Style::Standard).starts_with(WHSEC_PREFIX));
        assert!(standard_key(&generate(Style::Standard)).is_ok());
        assert_eq!(generate(Style::Github).len(), 64);
    }
}

//! Extra trusted roots for TLS connections to services with a private CA.
//!
//! `amqp.ca_file` (amqps:// brokers) and `webhook.ca_file` (https receivers) name
//! PEM files whose certificates are trusted besides the platform's roots.
//! PostgreSQL needs no setting of ours: its URL takes `sslrootcert=<file>`.
//! Both files are checked when the config loads ([`read_ca_file`]), so a bad
//! file stops the process at start rather than failing every connection.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The roots of a CA file: its text (what lapin takes) and its certificates
/// (what a rustls root store takes).
#[derive(Debug, Clone)]
pub(crate) struct CaFile {
    /// The file's PEM text.
    pub(crate) pem: String,
    /// Its certificates, each usable as a trust anchor; at least one.
    pub(crate) certs: Vec<CertificateDer<'static>>,
}

/// The CA file a `*.ca_file` setting names: `None` when the setting is empty
/// (surrounding spaces ignored), else the file as [`read_ca_file`] reads it.
pub(crate) fn configured_ca(setting: &str) -> Result<Option<CaFile>, String> {
    let path = setting.trim();
    if path.is_empty() {
        return Ok(None);
    }
    read_ca_file(Path::new(path)).map(Some)
}

/// Reads a PEM file of root certificates. The error names the file and what
/// is wrong with it: unreadable, not PEM, no certificate, or a certificate
/// that cannot be a root.
pub(crate) fn read_ca_file(path: &Path) -> Result<CaFile, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let pem = String::from_utf8(bytes).map_err(|_| format!("{shown} is not a PEM text file"))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no PEM certificate"));
    }
    let mut check = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        check.add(cert.clone()).map_err(|e| {
            format!(
                "certificate {} of {shown} is not usable as a root: {e}",
                i + 1
            )
        })?;
    }
    Ok(CaFile { pem, certs })
}

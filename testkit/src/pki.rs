//! A private CA made for a test and a `localhost` certificate it signed, with
//! the rustls acceptor a test's TLS server uses.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA (as PEM, what a `ca_file` holds) and the server's certificate and key.
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    leaf: CertificateDer<'static>,
    leaf_key: PrivateKeyDer<'static>,
}

impl Pki {
    /// A new CA and a certificate for `localhost` signed by it.
    // Not `Default`: each call generates fresh keys, which a default should not.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "hookfleet test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .expect("leaf params")
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .expect("leaf certificate");
        Pki {
            ca_pem: ca_cert.pem(),
            leaf: leaf.der().clone(),
            leaf_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        }
    }

    /// Writes the CA to `ca.pem` in `dir` and returns its path as a string.
    pub fn write_ca(&self, dir: &std::path::Path) -> String {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path.display().to_string()
    }

    /// A TLS acceptor presenting the `localhost` certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf.clone()], self.leaf_key.clone_key())
            .expect("server certificate");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

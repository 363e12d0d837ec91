//! TLS for HTTPS (and for NBD's STARTTLS): a rustls server configuration (ring) from PEM
//! certificate chain and private key files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {problem}")]
    Certificate { path: PathBuf, problem: String },
    #[error("cannot read the TLS private key {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error(
        "the TLS certificate {cert} and key {key} do not make a server configuration: {problem}"
    )]
    Config {
        cert: PathBuf,
        key: PathBuf,
        problem: String,
    },
}

/// The server configuration for `cert` (PEM chain, leaf first) and `key` (PEM, PKCS#8,
/// PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_error = |problem: String| TlsError::Certificate {
        path: cert.to_path_buf(),
        problem,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        problem: e.to_string(),
    })?;
    let config_error = |problem: String| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        problem,
    };
    // The workspace builds rustls with ring only (no C toolchain for aws-lc); ring's provider
    // is marked deprecated for lacking post-quantum key exchange, which clients here do not need.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| config_error(e.to_string()))
}

/// An acceptor for HTTPS (ALPN `http/1.1`).
pub fn http_acceptor(config: &ServerConfig) -> TlsAcceptor {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// An acceptor without ALPN (NBD's STARTTLS).
pub fn plain_acceptor(config: &ServerConfig) -> TlsAcceptor {
    TlsAcceptor::from(Arc::new(config.clone()))
}

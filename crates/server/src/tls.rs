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

/// Where the daemon keeps the certificate it made for itself, inside the state folder.
pub const SELF_SIGNED_DIR: &str = "tls";

/// The certificate and key the daemon made on an earlier start, or new ones (self-signed,
/// for `localhost`, the host name and the loopback addresses) written into `STATE/tls/` (key
/// readable by the owner only). Returns the PEM paths and the certificate's SHA-256
/// fingerprint (`AA:BB:...`), which clients compare with what they are shown.
pub fn self_signed(state_dir: &Path) -> Result<(PathBuf, PathBuf, String), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = state_dir.join(SELF_SIGNED_DIR);
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let cert_error = |problem: String| TlsError::Certificate {
        path: cert.clone(),
        problem,
    };
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| cert_error(e.to_string()))?;
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let host = host.trim();
            if !host.is_empty() && !names.iter().any(|n| n == host) {
                names.push(host.to_string());
            }
        }
        let made =
            rcgen::generate_simple_self_signed(names).map_err(|e| cert_error(e.to_string()))?;
        let write = |path: &Path, text: &str, mode: u32| -> std::io::Result<()> {
            let mut file =
                vmedia_io::AtomicFile::create(path, vmedia_io::OverwritePolicy::Replace)?;
            file.file()
                .set_permissions(std::fs::Permissions::from_mode(mode))?;
            file.file_mut().write_all(text.as_bytes())?;
            file.commit_with(vmedia_io::Durability::Flush)
        };
        // The key first: a certificate without its key would be unusable after a crash.
        write(&key, &made.key_pair.serialize_pem(), 0o600).map_err(|e| TlsError::Key {
            path: key.clone(),
            problem: e.to_string(),
        })?;
        write(&cert, &made.cert.pem(), 0o644).map_err(|e| cert_error(e.to_string()))?;
    }
    let der = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| cert_error(e.to_string()))?
        .next()
        .ok_or_else(|| cert_error("no CERTIFICATE block in the file".into()))?
        .map_err(|e| cert_error(e.to_string()))?;
    Ok((cert.clone(), key, fingerprint(&der)))
}

/// `AA:BB:...`: the SHA-256 of a certificate's DER bytes, as browsers and `openssl x509
/// -fingerprint -sha256` show it.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
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

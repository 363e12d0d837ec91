//! STARTTLS: libnbd clients upgrade to TLS (certificate made here with openssl), plain
//! clients still work when TLS is optional and are refused when it is required.

#[path = "support_nbd.rs"]
mod support_nbd;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support_nbd::*;
use tokio_rustls::rustls;
use vmedia_server::nbd::NbdLimits;

/// A self-signed certificate for localhost / 127.0.0.1 in `dir` (key.pem, cert.pem), and a
/// libnbd certificates folder (`dir/ca/ca-cert.pem`) that trusts it.
fn acceptor(dir: &Path) -> tokio_rustls::TlsAcceptor {
    run(Command::new(tool("openssl"))
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem")));
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    std::fs::copy(dir.join("cert.pem"), dir.join("ca/ca-cert.pem")).unwrap();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[test]
fn nbds_clients_upgrade_with_starttls_and_plain_clients_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, expected) = two_exports(dir.path());
    let tls = acceptor(dir.path());
    let server = Server::start(exports, Some(tls), NbdLimits::default());
    let ca = dir.path().join("ca");
    let uri = format!(
        "nbds://127.0.0.1:{}/iso?tls-certificates={}",
        server.port,
        ca.display()
    );
    let out = run(Command::new(tool("nbdinfo")).arg("--json").arg(&uri));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["TLS"], true, "{out}");
    assert_eq!(json["exports"][0]["export-size"], IMAGE_SIZE, "{out}");

    let copy = dir.path().join("copy.img");
    run(Command::new(tool("nbdcopy")).arg(&uri).arg(&copy));
    assert!(
        std::fs::read(&copy).unwrap() == expected,
        "copy over TLS differs"
    );

    let out = run(Command::new(tool("nbdinfo"))
        .arg("--json")
        .arg(server.uri("iso")));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["TLS"], false, "{out}");
    server.wait_all_closed();
}

#[test]
fn required_tls_refuses_plain_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, _) = two_exports(dir.path());
    let tls = acceptor(dir.path());
    let limits = NbdLimits {
        require_tls: true,
        ..NbdLimits::default()
    };
    let server = Server::start(exports, Some(tls), limits);
    let plain = Command::new(tool("nbdinfo"))
        .arg(server.uri("iso"))
        .output()
        .unwrap();
    // libnbd reports NBD_REP_ERR_TLS_REQD to GO as a refused export.
    assert!(!plain.status.success(), "a plain client was served");

    let script = r#"
import sys, nbd
h = nbd.NBD()
h.set_tls(nbd.TLS_REQUIRE)
h.set_tls_verify_peer(False)
h.set_export_name("iso")
h.connect_tcp("127.0.0.1", sys.argv[1])
assert h.get_tls_negotiated()
data = h.pread(4096, 0)
h.shutdown()
sys.stdout.write(data.hex())
"#;
    let out = run(Command::new(python())
        .args(["-c", script])
        .arg(server.port.to_string()));
    assert_eq!(out, hex(&pattern(0, 4096)));
    server.wait_all_closed();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

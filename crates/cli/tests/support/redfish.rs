//! Redfish test support: a small in-memory `Authenticate` (the daemon's real user store is
//! another component), the daemon in-process with HTTPS (a self-signed certificate made with
//! openssl) serving Redfish for a VM store, and the Python environment scripts/setup.sh makes
//! with DMTF's Redfish-Service-Validator and sushy.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmedia_boot::store::BootConfig;
use vmedia_library::{InitOptions, Library, OpenConfig};
use vmedia_server::auth::{Authenticate, Principal, Role};
use vmedia_server::{Server, ServerHandle, Settings};

use crate::support::{require_tool, run_ok};

/// Test users: name, password, role.
pub const USERS: [(&str, &str, Role); 3] = [
    ("admin", "admin-pw", Role::Administrator),
    ("operator", "operator-pw", Role::Operator),
    ("viewer", "viewer-pw", Role::Readonly),
];

/// Users from `USERS`, sessions in memory.
pub struct MemoryUsers {
    sessions: Mutex<HashMap<String, (String, Principal)>>,
    next: AtomicU64,
}

impl Default for MemoryUsers {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryUsers {
    pub fn new() -> MemoryUsers {
        MemoryUsers {
            sessions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl Authenticate for MemoryUsers {
    fn password(&self, name: &str, password: &str) -> Option<Principal> {
        USERS
            .iter()
            .find(|(n, p, _)| *n == name && *p == password)
            .map(|(n, _, role)| Principal {
                name: n.to_string(),
                role: *role,
            })
    }

    fn token(&self, token: &str) -> Option<Principal> {
        self.sessions
            .lock()
            .unwrap()
            .values()
            .find(|(t, _)| t == token)
            .map(|(_, p)| p.clone())
    }

    fn open_session(&self, who: &Principal) -> (String, String) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let (id, token) = (format!("s{n}"), format!("token-{n}-{nanos:x}"));
        self.sessions
            .lock()
            .unwrap()
            .insert(id.clone(), (token.clone(), who.clone()));
        (id, token)
    }

    fn close_session(&self, id: &str) -> bool {
        self.sessions.lock().unwrap().remove(id).is_some()
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon with Redfish for the VMs under `vms`, HTTPS and HTTP on 127.0.0.1.
pub struct Daemon {
    pub runtime: tokio::runtime::Runtime,
    pub handle: Option<ServerHandle>,
    /// `https://127.0.0.1:PORT`
    pub https: String,
    /// `http://127.0.0.1:PORT` (images, for QEMU's curl driver)
    pub http: String,
}

impl Daemon {
    pub fn start(dir: &Path, vms: &BootConfig) -> Daemon {
        let library = Library::init(
            &OpenConfig::folder(dir.join("library"), "test@localhost"),
            &InitOptions::default(),
        )
        .unwrap();
        Daemon::start_with(dir, vms, library)
    }

    pub fn start_with(dir: &Path, vms: &BootConfig, library: Library) -> Daemon {
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        run_ok(
            Command::new(require_tool("openssl"))
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
                .args(["-subj", "/CN=localhost"])
                .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
                .arg("-keyout")
                .arg(tls.join("key.pem"))
                .arg("-out")
                .arg(tls.join("cert.pem")),
        );
        let settings = Settings {
            listen: Some("127.0.0.1".into()),
            http_port: Some(free_port()),
            https_port: Some(free_port()),
            nbd_port: Some(0),
            tls_cert: Some(tls.join("cert.pem")),
            tls_key: Some(tls.join("key.pem")),
            cache_size: Some("64M".into()),
            state: Some(dir.join("serve")),
            ..Settings::default()
        };
        let options = settings.resolve(dir.join("serve")).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let auth: Arc<dyn Authenticate> = Arc::new(MemoryUsers::new());
        let ctx = vmedia_server::redfish::Context { vms: vms.clone() };
        let handle = runtime
            .block_on(Server::start_with_redfish(
                library,
                options,
                Some((ctx, auth)),
            ))
            .unwrap();
        Daemon {
            https: format!("https://{}", handle.https.unwrap()),
            http: format!("http://{}", handle.http.unwrap()),
            runtime,
            handle: Some(handle),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.shutdown());
        }
    }
}

/// The Python of the virtual environment scripts/setup.sh fills (`$VMEDIA_VENV`, else
/// /opt/vmedia-venv), checked to hold `module`.
pub fn venv_python(module: &str) -> PathBuf {
    let venv = std::env::var_os("VMEDIA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/vmedia-venv"));
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} lacks the Python module {module}: run scripts/setup.sh",
        python.display()
    );
    python
}

/// DMTF's Redfish schema files (test data beside the repository, see its SOURCES.md).
pub fn csdl_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = repo.join("../shared/testdata/redfish/csdl");
    assert!(
        dir.join("ServiceRoot_v1.xml").exists(),
        "no Redfish schemas at {}",
        dir.display()
    );
    dir.canonicalize().unwrap()
}

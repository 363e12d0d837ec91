//! Helpers for the HTTP tests: a folder library with fixtures, the daemon in-process on free
//! ports, curl, and metric lookups.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmedia_io::NoProgress;
use vmedia_library::{AddOptions, AddReport, AddSource, InitOptions, Library, OpenConfig};
use vmedia_server::{Server, ServerHandle, ServerOptions};

pub fn new_library(dir: &Path) -> Library {
    Library::init(
        &OpenConfig::folder(dir.join("library"), "test@localhost"),
        &InitOptions::default(),
    )
    .unwrap()
}

pub fn add(library: &Library, name: &str, file: &Path) -> AddReport {
    library
        .add(
            name,
            AddSource::File(file.to_path_buf()),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), so chunks differ and do not compress.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An ISO (Rock Ridge + Joliet, by genisoimage) holding `hello.txt`, `docs/Mixed Case
/// Name.txt` and `big.bin` (3 MiB of noise); returns its path.
pub fn make_iso(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("docs")).unwrap();
    std::fs::write(tree.join("hello.txt"), b"hello from the library\n").unwrap();
    std::fs::write(
        tree.join("docs/Mixed Case Name.txt"),
        b"rock ridge keeps this name\n",
    )
    .unwrap();
    std::fs::write(tree.join("big.bin"), noise(7, 3 << 20)).unwrap();
    let iso = dir.join("image.iso");
    let status = Command::new("genisoimage")
        .args(["-quiet", "-R", "-J", "-V", "HTTPTEST", "-o"])
        .arg(&iso)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(status.success());
    iso
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options for a test daemon on 127.0.0.1: HTTP on a free port, no NBD.
pub fn options(state: &Path) -> ServerOptions {
    ServerOptions {
        listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        http_port: free_port(),
        https_port: 0,
        nbd_port: 0,
        tls: None,
        cache_bytes: 64 << 20,
        disk_cache: None,
        state_dir: state.to_path_buf(),
        preload: Vec::new(),
        trace_window: Duration::from_secs(60),
        netboot: None,
        systems: None,
        replication: None,
    }
}

/// The daemon running in this process.
pub struct Daemon {
    pub runtime: tokio::runtime::Runtime,
    pub handle: Option<ServerHandle>,
    pub url: String,
}

impl Daemon {
    pub fn start(library: Library, options: ServerOptions) -> Daemon {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.block_on(Server::start(library, options)).unwrap();
        let url = format!("http://{}", handle.http.unwrap());
        Daemon {
            runtime,
            handle: Some(handle),
            url,
        }
    }

    pub fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.shutdown());
        }
    }

    pub fn metrics(&self) -> String {
        self.handle.as_ref().unwrap().metrics.render()
    }

    /// The value of the sample `series` (name with labels, exactly as rendered), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics(), series)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// One curl exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header lines of the last response, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// POSTs the JSON file `body` to `url` as `token`, for a body over the daemon's limit, and
/// requires the daemon's 413: the daemon answers from the first bytes past the limit and then
/// reads and discards the rest (lingering close, `http::LINGER_BYTES`), so curl, still
/// sending, reads the answer instead of a reset.
pub fn post_oversized(url: &str, token: &str, body: &std::path::Path) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(url)
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        code == "413" && out.status.success(),
        "oversized body: {code} {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs curl with `args` (plus silent, headers and body captured).
pub fn curl(args: &[&str]) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    let head = std::fs::read_to_string(&head).unwrap_or_default();
    // With redirects or 100-continue there may be several heads: keep the last.
    let last = head.trim_end().rsplit("\r\n\r\n").next().unwrap_or("");
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

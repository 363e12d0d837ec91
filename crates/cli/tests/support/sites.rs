//! Two replication sites for tests/sites.rs: each a private network namespace with its own
//! folder library and its own `vmedia serve` (HTTPS on the site's address, a certificate made
//! for that address), joined by one veth pair whose ends the test takes down and up. Also a
//! seeded block generator that streams images into `library add -` without a source file, and
//! the per-item view two synced sites must agree on.
//!
//! Included by a test binary next to `support` and `support/netboot.rs` (as `nb`).
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::nb::Netns;
use crate::support::serve::{http_get, spawn_tied, terminate_cleanly};
use crate::support::{run_ok, vmedia};

/// The daemon's ports inside its own namespace (nothing else listens there).
pub const HTTP_PORT: u16 = 8080;
pub const HTTPS_PORT: u16 = 8443;
/// How long `vmedia serve` may take to print its listening lines on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM drain may take (a replication round in progress finishes first).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Generated images are made of blocks this large, each a function of (seed, index), so a
/// "repacked" image shares every block but the spliced ones with its original.
pub const BLOCK: usize = 1 << 20;

/// One site: namespace, library folder, daemon state and certificate, its end of the link.
pub struct Site {
    pub name: &'static str,
    pub ns: Netns,
    /// The site's address on the link (no prefix length).
    pub addr: &'static str,
    /// Its end of the veth pair (inside `ns`).
    pub dev: &'static str,
    pub dir: tempfile::TempDir,
    pub library: PathBuf,
    pub state: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
    /// An administrator's API token of this site's daemon: what a peer replicates with.
    pub token: String,
    daemon: Mutex<Option<Child>>,
    log: Arc<Mutex<String>>,
}

/// Two sites A (10.77.0.1) and B (10.77.0.2) joined by a veth pair; libraries not created yet.
pub fn pair(tag: &str) -> (Site, Site) {
    let a = Site::new("a", tag, "10.77.0.1", "site-a0");
    let b = Site::new("b", tag, "10.77.0.2", "site-b0");
    a.ns.veth_to(a.dev, "10.77.0.1/24", &b.ns, b.dev);
    b.ns.ip(&["addr", "add", "10.77.0.2/24", "dev", b.dev]);
    (a, b)
}

impl Site {
    fn new(name: &'static str, tag: &str, addr: &'static str, dev: &'static str) -> Site {
        let ns = Netns::new(&format!("{tag}-{name}"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("vmedia-site-{name}"))
            .tempdir()
            .unwrap();
        let library = dir.path().join("library");
        let state = dir.path().join("state");
        fs::create_dir_all(&state).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        // A certificate for the site's address, so the peer checks it (no --peer-insecure);
        // an end-entity one (CA:FALSE), which is what TLS clients accept from a server.
        let openssl_config = dir.path().join("openssl.cnf");
        fs::write(
            &openssl_config,
            format!(
                "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
                 [dn]\nCN = site-{name}\n\
                 [ext]\nsubjectAltName = IP:{addr}\nbasicConstraints = critical,CA:FALSE\n"
            ),
        )
        .unwrap();
        run_ok(
            Command::new(crate::support::require_tool("openssl"))
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-config"])
                .arg(&openssl_config)
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        let token = String::from_utf8(
            run_ok(
                vmedia()
                    .args(["token", "create", "replicator", "--role", "administrator"])
                    .arg("--state")
                    .arg(&state),
            )
            .stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        Site {
            name,
            ns,
            addr,
            dev,
            dir,
            library,
            state,
            cert,
            key,
            token,
            daemon: Mutex::new(None),
            log: Arc::new(Mutex::new(String::new())),
        }
    }

    /// `https://ADDR:PORT`: this site's daemon as a library location for the other site.
    pub fn url(&self) -> String {
        format!("https://{}:{HTTPS_PORT}", self.addr)
    }

    /// `vmedia` on the host with this site's library (a folder: no network needed).
    pub fn vmedia(&self) -> Command {
        let mut cmd = vmedia();
        clean_env(&mut cmd);
        cmd.env("VMEDIA_LIBRARY", &self.library);
        cmd
    }

    /// `vmedia library ARGS` on this site's library.
    pub fn library(&self, args: &[&str]) -> Command {
        let mut cmd = self.vmedia();
        cmd.arg("library").args(args);
        cmd
    }

    /// `library ARGS --json`, which must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = run_ok(self.library(args).arg("--json"));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "library {args:?} --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `vmedia` inside this site's namespace, with this site's library and the peer flags
    /// for reaching `peer`'s daemon.
    pub fn vmedia_in_ns(&self, peer: &Site) -> Command {
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_vmedia"));
        clean_env(&mut cmd);
        cmd.env("VMEDIA_LIBRARY", &self.library)
            .env("VMEDIA_PEER_TOKEN", &peer.token)
            .env("VMEDIA_PEER_CA_CERT", &peer.cert);
        cmd
    }

    /// Starts this site's daemon in its namespace (HTTP and HTTPS on every address there),
    /// replicating with `peer` as `extra` says (`--replicate-to`, `--mirror-from`, interval),
    /// and waits for its listening lines.
    pub fn start(&self, peer: &Site, extra: &[&str]) {
        let mut slot = self.daemon.lock().unwrap();
        assert!(slot.is_none(), "site {} already runs a daemon", self.name);
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_vmedia"));
        clean_env(&mut cmd);
        cmd.env("VMEDIA_LIBRARY", &self.library)
            .arg("serve")
            .args(["--listen", "0.0.0.0"])
            .args(["--http-port", &HTTP_PORT.to_string()])
            .args(["--https-port", &HTTPS_PORT.to_string()])
            .args(["--nbd-port", "0", "--cache-size", "64M"])
            .arg("--state")
            .arg(&self.state)
            .arg("--tls-cert")
            .arg(&self.cert)
            .arg("--tls-key")
            .arg(&self.key)
            .args(["--peer-token", &peer.token])
            .arg("--peer-ca-cert")
            .arg(&peer.cert)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(cmd).expect("cannot start vmedia serve");
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel::<String>();
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
                drop(l);
                let _ = ready_tx.send(line);
            }
        });
        *slot = Some(child);
        drop(slot);
        let deadline = Instant::now() + READY_TIMEOUT;
        let (mut http, mut https) = (false, false);
        while !(http && https) {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(line) => {
                    http |= line.contains(&format!("listening for http on 0.0.0.0:{HTTP_PORT}"));
                    https |= line.contains(&format!("listening for https on 0.0.0.0:{HTTPS_PORT}"));
                }
                Err(_) => panic!(
                    "site {}: vmedia serve did not listen within {READY_TIMEOUT:?}:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// SIGTERM to the daemon and its drain (panics when it does not exit 0 in time).
    pub fn stop(&self) {
        let Some(mut child) = self.daemon.lock().unwrap().take() else {
            return;
        };
        terminate_cleanly(&mut child, STOP_TIMEOUT, &|| self.log());
    }

    /// What the daemon wrote on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The daemon's `/metrics` (fetched from inside the namespace).
    pub fn metrics(&self) -> String {
        self.ns.run(|| http_get(HTTP_PORT, "/metrics"))
    }

    /// Takes this site's end of the link down (`ip link set DEV down` in its namespace).
    pub fn cut(&self) {
        self.ns.ip(&["link", "set", self.dev, "down"]);
    }

    /// Brings this site's end of the link up again.
    pub fn restore(&self) {
        self.ns.ip(&["link", "set", self.dev, "up"]);
    }

    /// Chunk objects in this site's folder library: (count, stored bytes).
    pub fn chunk_files(&self) -> (u64, u64) {
        fn walk(dir: &Path, acc: &mut (u64, u64)) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    walk(&entry.path(), acc);
                } else if entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    acc.0 += 1;
                    acc.1 += meta.len();
                }
            }
        }
        let mut acc = (0, 0);
        walk(&self.library.join("chunks"), &mut acc);
        acc
    }

    /// Item name -> current digest, for items listed (not removed) by `library ls`.
    pub fn listed(&self) -> Vec<(String, String)> {
        let ls = self.json(&["ls"]);
        ls.as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_string(),
                    i["digest"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn clean_env(cmd: &mut Command) {
    for var in [
        "VMEDIA_LIBRARY",
        "VMEDIA_LIBRARY_KEY",
        "VMEDIA_PEER_TOKEN",
        "VMEDIA_PEER_CA_CERT",
        "VMEDIA_PEER_INSECURE",
        "AWS_ENDPOINT_URL",
        "AWS_PROFILE",
    ] {
        cmd.env_remove(var);
    }
}

/// The sum of every sample of `name` whose labels contain `label` (e.g. `direction="pull"`).
pub fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(label))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Block `index` of the image with `seed`: 1 MiB of xorshift output.
pub fn block(seed: u64, index: u64, buf: &mut [u8]) {
    let mut x =
        (seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xD1B5_4A32_D192_ED03) | 1;
    for word in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
}

/// Writes `blocks` blocks of image `seed` to `out`.
pub fn write_blocks(out: &mut dyn Write, seed: u64, blocks: u64) {
    let mut buf = vec![0u8; BLOCK];
    for index in 0..blocks {
        block(seed, index, &mut buf);
        out.write_all(&buf).unwrap();
    }
}

/// `library add NAME -` on `site` with `blocks` blocks of image `seed` streamed to its stdin;
/// the add's JSON report.
pub fn add_generated(site: &Site, name: &str, seed: u64, blocks: u64) -> Value {
    let mut child = site
        .library(&["add", name, "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || write_blocks(&mut stdin, seed, blocks));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `library add NAME FILE --json` on `site`.
pub fn add_file(site: &Site, name: &str, file: &Path) -> Value {
    let out = run_ok(site.library(&["add", name]).arg(file).arg("--json"));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What two synced sites must agree on for an item: the version digests (numbers are per
/// site), the events as (time, kind, digest, actor) in order, the current digest, removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub versions: std::collections::BTreeSet<String>,
    pub events: Vec<String>,
    pub current: Option<String>,
    pub removed: bool,
}

/// `site`'s view of item `name` (None when the site does not hold it).
pub fn view(site: &Site, name: &str) -> Option<View> {
    let out = site.library(&["history", name, "--json"]).output().unwrap();
    if !out.status.success() {
        return None;
    }
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions = history["versions"].as_array().unwrap();
    let current = history["current"].as_u64().and_then(|n| {
        versions
            .iter()
            .find(|v| v["version"].as_u64() == Some(n))
            .and_then(|v| v["digest"].as_str().map(str::to_string))
    });
    Some(View {
        versions: versions
            .iter()
            .map(|v| v["digest"].as_str().unwrap().to_string())
            .collect(),
        events: history["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {} {} {}", e["time"], e["kind"], e["digest"], e["actor"]))
            .collect(),
        current,
        removed: history["removed"].as_bool().unwrap_or(false),
    })
}

/// A small seeded generator for the random schedules (ops, link flaps).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

//! Test helpers for `vmedia netboot`: private network namespaces (never the host's network),
//! a server process inside one, threads that run client code inside a namespace, and a small
//! independent TFTP client (written here from RFC 1350/2347/7440, not shared with the server).
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace removed on drop, with loopback up.
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        super::require_tool("ip");
        let name = format!(
            "vmtest-{}-{tag}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n NS args`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// A bridge `br0` with `addr` (CIDR) and up.
    pub fn bridge(&self, addr: &str) {
        self.ip(&["link", "add", "br0", "type", "bridge"]);
        self.ip(&["addr", "add", addr, "dev", "br0"]);
        self.ip(&["link", "set", "br0", "up"]);
    }

    /// A veth pair: `server_if` with `addr` (CIDR) and `client_if` without address, both up.
    pub fn veth(&self, server_if: &str, addr: &str, client_if: &str) {
        self.ip(&[
            "link", "add", server_if, "type", "veth", "peer", "name", client_if,
        ]);
        self.ip(&["addr", "add", addr, "dev", server_if]);
        self.ip(&["link", "set", server_if, "up"]);
        self.ip(&["link", "set", client_if, "up"]);
    }

    /// A veth pair from `server_if` here (with `addr`, CIDR) to `client_if` in `other`
    /// (unaddressed): the client's packets come from outside, as on a real wire.
    pub fn veth_to(&self, server_if: &str, addr: &str, other: &Netns, client_if: &str) {
        ip(&[
            "link",
            "add",
            server_if,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            client_if,
            "netns",
            &other.name,
        ]);
        self.ip(&["addr", "add", addr, "dev", server_if]);
        self.ip(&["link", "set", server_if, "up"]);
        other.ip(&["link", "set", client_if, "up"]);
    }

    /// A tap device `name` attached to br0, for a QEMU VM.
    pub fn tap(&self, name: &str) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        self.ip(&["link", "set", name, "master", "br0"]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace (sockets it makes live there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// Like `run`, returning the join handle (for many clients at once).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                enter(&path);
                f()
            })
            .expect("cannot spawn client thread")
    }
}

fn enter(path: &str) {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // SAFETY: setns on a namespace file we hold open; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A `vmedia netboot serve` process inside a namespace; killed on drop.
pub struct Server {
    child: Child,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server and waits for its "serving" banner.
    pub fn start(ns: &Netns, args: &[&str]) -> Server {
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_vmedia"));
        cmd.args(["netboot", "serve"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start vmedia netboot serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("vmedia netboot: serving") {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut server = Server { child, log };
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = server.child.kill();
            panic!("netboot server did not start: {:?}\n{}", args, server.log());
        }
        server
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file of `len` pseudo-random bytes (seeded, so failures are reproducible).
pub fn random_file(path: &Path, len: usize, seed: u64) -> PathBuf {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    fs::write(path, &data).unwrap();
    path.to_path_buf()
}

/// FNV-1a, enough to compare transfers without an extra crate.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Independent minimal TFTP read client: RRQ with options, windowed ACKs, block wrap.
pub fn tftp_get(
    server: SocketAddr,
    file: &str,
    options: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(file.as_bytes());
    rrq.push(0);
    rrq.extend_from_slice(b"octet\0");
    for (k, v) in options {
        rrq.extend_from_slice(k.as_bytes());
        rrq.push(0);
        rrq.extend_from_slice(v.as_bytes());
        rrq.push(0);
    }
    let mut blksize = 512usize;
    let mut window = 1u32;
    let mut out = Vec::new();
    let mut expected: u16 = 1;
    let mut in_window = 0u32;
    let mut peer: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65536];
    let mut last_ack: u16 = 0;
    let mut timeouts = 0;
    sock.send_to(&rrq, server).map_err(|e| e.to_string())?;
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => {
                timeouts += 1;
                if timeouts > 8 {
                    return Err(format!("{file}: timed out after {} bytes", out.len()));
                }
                match peer {
                    Some(p) => sock.send_to(&[0, 4, (last_ack >> 8) as u8, last_ack as u8], p),
                    None => sock.send_to(&rrq, server),
                }
                .map_err(|e| e.to_string())?;
                continue;
            }
        };
        if let Some(p) = peer {
            if p != from {
                continue;
            }
        }
        let pkt = &buf[..n];
        if n < 4 {
            return Err("short packet".into());
        }
        match u16::from_be_bytes([pkt[0], pkt[1]]) {
            6 => {
                peer = Some(from);
                let mut parts = pkt[2..].split(|&b| b == 0);
                while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                    let k = String::from_utf8_lossy(k).to_ascii_lowercase();
                    let v = String::from_utf8_lossy(v);
                    match k.as_str() {
                        "blksize" => blksize = v.parse().unwrap(),
                        "windowsize" => window = v.parse().unwrap(),
                        _ => {}
                    }
                }
                sock.send_to(&[0, 4, 0, 0], from)
                    .map_err(|e| e.to_string())?;
            }
            3 => {
                peer = Some(from);
                timeouts = 0;
                let block = u16::from_be_bytes([pkt[2], pkt[3]]);
                if block != expected {
                    // Lost or reordered: ACK what we have, the server restarts after it.
                    sock.send_to(&[0, 4, (last_ack >> 8) as u8, last_ack as u8], from)
                        .map_err(|e| e.to_string())?;
                    in_window = 0;
                    continue;
                }
                out.extend_from_slice(&pkt[4..]);
                last_ack = block;
                expected = expected.wrapping_add(1);
                in_window += 1;
                let last = pkt.len() - 4 < blksize;
                if last || in_window >= window {
                    sock.send_to(&[0, 4, (block >> 8) as u8, block as u8], from)
                        .map_err(|e| e.to_string())?;
                    in_window = 0;
                }
                if last {
                    return Ok(out);
                }
            }
            5 => {
                return Err(format!(
                    "error {}: {}",
                    u16::from_be_bytes([pkt[2], pkt[3]]),
                    String::from_utf8_lossy(&pkt[4..n - 1])
                ))
            }
            op => return Err(format!("unexpected opcode {op}")),
        }
    }
}

//! Test support for the failover proof: a logged child process stopped cleanly on drop, a
//! `vmedia serve` site inside a network namespace, keepalived (VRRP with unicast peers and
//! vmedia's own health check), the bootable disk the VM reads whole over NBD, and the libnbd
//! readers that run across the cut. Used with `#[path = "support/failover.rs"] mod failover;`
//! after `mod support;`, `#[path = "support/netboot.rs"] mod nb;`,
//! `#[path = "support/boot.rs"] mod boot_fixtures;` and `#[path = "support/disk.rs"] mod
//! disk_fixture;`.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::nb::Netns;
use super::support::{cached_fixture, pack_initramfs, require_tool, run_ok};

/// What the failover guest prints once its disk is read whole (after the checksum line).
pub const FAILOVER_MARKER: &str = "VMEDIA-FAILOVER-OK";
/// What the guest prints when its kernel runs and it starts reading the disk over NBD: the
/// moment the test cuts site A's link.
pub const READING_MARKER: &str = "VMEDIA-FAILOVER-READING";
/// The guest's checksum line: `VMEDIA-FAILOVER-SUM <sha256 of /dev/vda>`.
pub const SUM_PREFIX: &str = "VMEDIA-FAILOVER-SUM ";
/// Pseudo-random data after the boot partition: makes the guest's whole-disk read last long
/// enough under TCG to span the failover (the disk is then 128 MiB).
const PAD_BYTES: u64 = 62 << 20;
/// How long a child gets after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process whose stdout and stderr are collected (line by line, also sent on a
/// channel for `wait_line`); SIGTERM then SIGKILL on drop, so keepalived's own children
/// (it forks its VRRP process) are stopped by their parent.
pub struct Logged {
    pub what: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
    /// SIGTERM first on drop (keepalived: its children stop with it); false for processes
    /// that fork nothing and whose graceful drain would only wait on the cut-off clients.
    terminate_first: bool,
}

impl Logged {
    pub fn spawn(what: &str, mut cmd: Command) -> Logged {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let (log, tx) = (Arc::clone(&log), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut log = log.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                    let _ = tx.send(line);
                }
            });
        }
        Logged {
            what: what.to_string(),
            child: Some(child),
            log,
            lines,
            terminate_first: true,
        }
    }

    /// Drop sends SIGKILL at once instead of SIGTERM first.
    pub fn killed_on_drop(mut self) -> Logged {
        self.terminate_first = false;
        self
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a line containing `needle`; panics with the log on time-out or exit.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.what,
                    tail(&self.log(), 6000)
                ),
            }
        }
    }

    /// Waits for the process to exit on its own; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let child = self.child.as_mut().expect("already reaped");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                // Let the readers drain what was left in the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return status.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not finish within {timeout:?}:\n{}",
                    self.what,
                    tail(&self.log(), 6000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after `STOP_TIMEOUT`; reaps.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !self.terminate_first {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `chars` characters of a log.
pub fn tail(text: &str, chars: usize) -> String {
    let skip = text.chars().count().saturating_sub(chars);
    text.chars().skip(skip).collect()
}

/// Polls `check` every 100 ms until it holds; false after `timeout`.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True when `address` (no prefix length) is configured on `dev` in `ns`.
pub fn holds_address(ns: &Netns, dev: &str, address: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-4", "-o", "addr", "show", "dev", dev])
        .output()
        .expect("cannot run ip");
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {address}/"))
}

/// `vmedia serve` for one site: listens on every address of its namespace (so also on the
/// virtual address once keepalived puts it there) with fixed ports.
pub fn start_site_daemon(
    ns: &Netns,
    envs: &[(&'static str, String)],
    state: &Path,
    http_port: u16,
    nbd_port: u16,
) -> Logged {
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_vmedia"));
    cmd.env_remove("VMEDIA_LIBRARY")
        .env_remove("VMEDIA_LIBRARY_KEY")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["serve", "--listen", "0.0.0.0"])
        .args(["--http-port", &http_port.to_string()])
        .args(["--nbd-port", &nbd_port.to_string()])
        .arg("--state")
        .arg(state)
        .args(["--cache-size", "128M"]);
    let daemon = Logged::spawn(&format!("vmedia serve in {}", ns.name), cmd).killed_on_drop();
    daemon.wait_line("listening for nbd on", Duration::from_secs(60));
    daemon
}

/// One site's keepalived settings.
pub struct VrrpSite<'a> {
    pub name: &'a str,
    pub interface: &'a str,
    pub address: &'a str,
    pub peer: &'a str,
    pub priority: u8,
    pub virtual_address: &'a str,
    pub prefix_len: u8,
    pub router_id: u8,
    pub health_url: &'a str,
}

/// The keepalived configuration docs/replication.md shows: VRRP with unicast peers (no
/// multicast needed on the segment), vmedia's health check as a tracked script (a failing
/// check puts the instance in FAULT, which gives the address up), the higher priority site
/// preempting once healthy again.
pub fn keepalived_config(site: &VrrpSite, vmedia: &str) -> String {
    format!(
        r#"global_defs {{
    router_id vmedia_{name}
    script_user root
    enable_script_security
}}

vrrp_script vmedia_health {{
    script "{vmedia} serve --health {health_url} --health-timeout 2s"
    interval 1
    timeout 3
    fall 2
    rise 2
}}

vrrp_instance vmedia {{
    state BACKUP
    interface {interface}
    virtual_router_id {router_id}
    priority {priority}
    advert_int 1
    unicast_src_ip {address}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {virtual_address}/{prefix_len} dev {interface}
    }}
    track_script {{
        vmedia_health
    }}
}}
"#,
        name = site.name,
        health_url = site.health_url,
        interface = site.interface,
        router_id = site.router_id,
        priority = site.priority,
        address = site.address,
        peer = site.peer,
        virtual_address = site.virtual_address,
        prefix_len = site.prefix_len,
    )
}

/// keepalived (VRRP only, in the foreground, logging to the console) in `ns` with `config`.
pub fn start_keepalived(ns: &Netns, dir: &Path, name: &str, config: &str) -> Logged {
    let keepalived = require_tool("keepalived");
    let conf = dir.join(format!("keepalived-{name}.conf"));
    fs::write(&conf, config).unwrap();
    let mut cmd = ns.command(keepalived);
    cmd.args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
        .arg("--use-file")
        .arg(&conf)
        .arg(format!(
            "--pid={}",
            dir.join(format!("{name}.pid")).display()
        ))
        .arg(format!(
            "--vrrp_pid={}",
            dir.join(format!("{name}-vrrp.pid")).display()
        ))
        .arg(format!(
            "--checkers_pid={}",
            dir.join(format!("{name}-checkers.pid")).display()
        ));
    Logged::spawn(&format!("keepalived {name}"), cmd)
}

/// The guest's /init: loads the block drivers, says it is reading, reads the whole virtio
/// disk (served over NBD) through sha256sum, prints the sum and how many I/O errors the
/// kernel logged, then the marker, and powers off.
const FAILOVER_INIT: &str = "#!/bin/busybox sh\n\
/bin/busybox --install -s /bin\n\
mount -t proc proc /proc\n\
mount -t sysfs sys /sys\n\
mount -t devtmpfs dev /dev 2>/dev/null\n\
for m in /mods/*.ko; do insmod $m; done\n\
i=0\n\
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
echo\n\
echo VMEDIA-FAILOVER-READING\n\
sum=$(sha256sum /dev/vda | cut -d' ' -f1)\n\
echo \"VMEDIA-FAILOVER-SUM $sum\"\n\
echo \"VMEDIA-FAILOVER-IOERRORS $(dmesg | grep -ci 'i/o error')\"\n\
echo VMEDIA-FAILOVER-OK\n\
poweroff -f\n";

/// The failover disk (built once): the bootable MBR/FAT/syslinux disk with its initramfs
/// replaced by the block-driver payload plus `FAILOVER_INIT`, and `PAD_BYTES` of
/// pseudo-random data after the partition.
pub fn failover_disk() -> PathBuf {
    let base = super::disk_fixture::bootable_raw_disk();
    let modules = super::boot_fixtures::initrd_with_block_drivers();
    let dir = cached_fixture("failover-disk-v1", |dir| {
        let overlay = dir.join("overlay");
        fs::create_dir_all(&overlay).unwrap();
        pack_initramfs(dir, "overlay", Some(FAILOVER_INIT), "init.cpio.gz");
        // Linux unpacks concatenated archives in order: this /init replaces the earlier ones.
        let mut initrd = fs::read(&modules).unwrap();
        initrd.extend(fs::read(dir.join("init.cpio.gz")).unwrap());
        fs::write(dir.join("initrd.gz"), initrd).unwrap();
        let disk = dir.join("failover.raw");
        fs::copy(&base, &disk).unwrap();
        let partition = super::disk_fixture::PARTITION_START_LBA * 512;
        run_ok(
            Command::new(require_tool("mcopy"))
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-o")
                .arg("-i")
                .arg(format!("{}@@{partition}", disk.display()))
                .arg(dir.join("initrd.gz"))
                .arg("::initrd.gz"),
        );
        let mut data = fs::read(&disk).unwrap();
        data.extend(super::support::library::pseudo_random(
            PAD_BYTES as usize,
            0x5eed_fa11,
        ));
        fs::write(&disk, data).unwrap();
        fs::remove_dir_all(&overlay).unwrap();
        fs::remove_file(dir.join("init.cpio.gz")).unwrap();
        fs::remove_file(dir.join("initrd.gz")).unwrap();
    });
    dir.join("failover.raw")
}

/// The libnbd readers (python3-libnbd). Each of COUNT threads reads its own slice of the
/// export again and again, piece by piece with a pause between pieces, and checks every pass
/// against the same slice of the local file. libnbd has no reconnect of its own, so this is
/// the client's retry loop: a failed request (the connection died with site A) closes the
/// handle and connects to the virtual address again until the deadline, then the pass starts
/// over. The socket is the script's own, with keepalive probes every second and
/// TCP_USER_TIMEOUT set, so a request on a connection whose peer vanished fails within
/// seconds instead of waiting forever for a reply that died with the peer.
/// Prints `READY` once every reader finished a pass, and at the end one JSON object per
/// reader. A reader stops once the stop file exists and it has completed a verified pass
/// after reconnecting.
pub const READERS_SCRIPT: &str = r#"
import hashlib, json, os, socket, sys, threading, time
import nbd

host, port, export, path, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
count, slice_bytes, piece, deadline = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), time.time() + float(sys.argv[9])
size = os.path.getsize(path)
step = (size - slice_bytes) // (count - 1) // 4096 * 4096
with open(path, 'rb') as f:
    expected = []
    for i in range(count):
        f.seek(i * step)
        expected.append(hashlib.sha256(f.read(slice_bytes)).hexdigest())

def connect():
    s = socket.create_connection((host, port), timeout=3)
    # A request whose reply died with site A leaves nothing unacknowledged on our side, so
    # only keepalive probes notice the dead peer (or are reset by the site that now holds the
    # address); the user timeout bounds how long probes and requests go unanswered.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 4000)
    s.settimeout(None)
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_socket(s.detach())
    return h

ready = threading.Barrier(count + 1)
results = [None] * count

def reader(i):
    r = {'reader': i, 'offset': i * step, 'passes': 0, 'verified': 0, 'mismatches': 0,
         'reconnects': 0, 'passes_after_reconnect': 0, 'errors': [], 'done': False}
    results[i] = r
    h = None
    first = True
    while time.time() < deadline:
        try:
            if h is None:
                h = connect()
            got = bytearray()
            for off in range(0, slice_bytes, piece):
                got += h.pread(piece, i * step + off)
                time.sleep(0.15)
        except Exception as e:
            if len(r['errors']) < 5:
                r['errors'].append(str(e))
            try:
                if h is not None:
                    h.close()
            except Exception:
                pass
            h = None
            r['reconnects'] += 1
            time.sleep(0.2)
            continue
        r['passes'] += 1
        if hashlib.sha256(got).hexdigest() == expected[i]:
            r['verified'] += 1
        else:
            r['mismatches'] += 1
        if r['reconnects']:
            r['passes_after_reconnect'] += 1
        if first:
            first = False
            ready.wait()
        if os.path.exists(stop_file) and r['passes_after_reconnect'] > 0:
            r['done'] = True
            break
    if first:
        ready.abort()

threads = [threading.Thread(target=reader, args=(i,)) for i in range(count)]
for t in threads:
    t.start()
try:
    ready.wait()
    print('READY', flush=True)
except threading.BrokenBarrierError:
    print('NOT-READY', flush=True)
for t in threads:
    t.join()
for r in results:
    print(json.dumps(r), flush=True)
"#;

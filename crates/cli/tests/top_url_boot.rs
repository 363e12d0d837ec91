//! `vmedia boot --cdrom URL`: QEMU (TCG, SeaBIOS) boots the test ISO to its marker through its
//! own NBD driver from `qemu-nbd`, and through its curl driver from a small HTTP server with
//! Range support written here; the ISO is reachable only over the network in both runs.

#[path = "support/boot.rs"]
mod boot_fixtures;
mod support;

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boot_fixtures::hybrid_iso;
use support::{require_tool, run_any, vmedia, BOOT_MARKER};

/// TCG boots take 5-30 s here; the limit leaves room for a loaded machine.
const BOOT_TIMEOUT: &str = "240";

/// Kills the server it holds when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, server: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.try_wait() {
            panic!("the server exited ({status}) before listening on {port}");
        }
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn boot_from(url: &str, home: &Path) -> (i32, serde_json::Value, String) {
    require_tool("qemu-system-x86_64");
    let (code, out, err) = run_any(
        vmedia()
            .env("VMEDIA_HOME", home)
            .args(["boot", "--accel", "tcg", "--timeout", BOOT_TIMEOUT])
            .args(["--cdrom", url, "--expect", BOOT_MARKER, "--json"]),
    );
    let report =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}\n{err}"));
    (code, report, err)
}

fn assert_booted(code: i32, report: &serde_json::Value, err: &str) {
    assert_eq!(code, 0, "boot failed: {report:#}\n{err}");
    assert_eq!(report["outcome"], "booted", "{report:#}");
    assert_eq!(report["marker_text"], BOOT_MARKER);
}

#[test]
fn iso_boots_over_nbd_from_qemu_nbd() {
    let iso = hybrid_iso("cdrom");
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Command::new(require_tool("qemu-nbd"))
        .args(["--read-only", "--persistent", "--shared=4", "--format=raw"])
        .args(["--bind=127.0.0.1", &format!("--port={port}")])
        // An export name like the daemon's, with '@' in it.
        .arg("--export-name=demo@1")
        .arg(&iso)
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    wait_for_port(port, &mut server);
    let _server = KillOnDrop(server);
    let (code, report, err) = boot_from(&format!("nbd://127.0.0.1:{port}/demo@1"), home.path());
    assert_booted(code, &report, &err);
}

#[test]
fn iso_boots_over_http_with_range_requests() {
    // Debian builds QEMU's curl block driver as a module in qemu-block-extra.
    assert!(
        Path::new("/usr/lib/x86_64-linux-gnu/qemu/block-curl.so").exists(),
        "QEMU's curl block driver is not installed: apt-get install qemu-block-extra \
         (scripts/setup.sh does)"
    );
    let iso = hybrid_iso("cdrom");
    let home = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = iso.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let path = served.clone();
            std::thread::spawn(move || serve_connection(stream, &path));
        }
    });
    let url = format!("http://127.0.0.1:{port}/images/demo@1");
    let (code, report, err) = boot_from(&url, home.path());
    assert_booted(code, &report, &err);
}

#[test]
fn unreachable_nbd_server_ends_the_vm_with_qemus_reason() {
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let (code, out, err) = run_any(
        vmedia()
            .env("VMEDIA_HOME", home.path())
            .args(["boot", "--accel", "tcg", "--timeout", "30"])
            .args(["--cdrom", &format!("nbd://127.0.0.1:{port}/x")])
            .args(["--expect", BOOT_MARKER]),
    );
    // QEMU connects before the guest starts and exits with its own reason.
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(err.contains("Connection refused"), "{err}");
}

#[test]
fn malformed_url_is_refused_not_taken_as_a_file() {
    for (url, reason) in [
        ("nbd://127.0.0.1", "no export"),
        ("nbd:/demo", "nbd://"),
        ("ftp://h/a.iso", "not supported"),
        ("http://h/a b.iso", "not allowed"),
    ] {
        let (code, out, err) = run_any(vmedia().args(["boot", "--cdrom", url, "--expect", "x"]));
        assert_eq!(code, 1, "{url}: {out}\n{err}");
        assert!(err.contains(reason), "{url}: {err}");
        assert!(
            !err.contains("No such file"),
            "{url} was opened as a file: {err}"
        );
    }
    let (code, _, err) =
        run_any(vmedia().args(["boot", "--disk-rw", "http://h/images/a", "--expect", "x"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("read-only"), "{err}");
    let (code, _, err) = run_any(vmedia().args([
        "boot",
        "--accel",
        "tcg",
        "--cdrom",
        "nbd://127.0.0.1/demo",
        "--direct",
        "--expect",
        "x",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("local ISO"), "{err}");
}

#[test]
fn managed_vm_stores_url_media_and_shows_them() {
    let home = tempfile::tempdir().unwrap();
    let vm = || {
        let mut cmd = vmedia();
        cmd.env("VMEDIA_HOME", home.path()).arg("vm");
        cmd
    };
    let (code, out, err) = run_any(vm().args([
        "create",
        "urls",
        "--cdrom",
        "nbd://127.0.0.1/demo@1",
        "--disk",
        "https://127.0.0.1:8443/images/d@2/disk,format=qcow2",
        "--https-insecure",
        "--disk-rw",
        "nbd://[::1]:10810/clone/web1",
    ]));
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = run_any(vm().args(["show", "urls", "--json"]));
    assert_eq!(code, 0, "{err}");
    let show: serde_json::Value = serde_json::from_str(&out).unwrap();
    let config = &show["config"];
    assert_eq!(
        config["cdroms"][0]["medium"],
        "nbd://127.0.0.1:10809/demo@1"
    );
    assert_eq!(
        config["disks"][0]["path"],
        serde_json::json!({"url": "https://127.0.0.1:8443/images/d@2/disk", "tls_verify": false})
    );
    assert_eq!(config["disks"][0]["format"], "qcow2");
    assert_eq!(config["disks"][0]["writable"], false);
    assert_eq!(config["disks"][1]["path"], "nbd://[::1]:10810/clone/web1");
    assert_eq!(config["disks"][1]["writable"], true);
    let (code, _, err) = run_any(vm().args(["insert", "urls", "--slot", "0", "nbd://h/x"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("local ISO"), "{err}");
    let (code, _, err) = run_any(vm().args([
        "create",
        "plain",
        "--cdrom",
        "http://127.0.0.1/a.iso",
        "--https-insecure",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("https:// media only"), "{err}");
}

/// One HTTP/1.1 connection: HEAD and GET of the one image, with a single `Range`, keep-alive.
/// What QEMU's curl driver needs: `Accept-Ranges: bytes`, the size on HEAD, 206 with an exact
/// `Content-Range`.
fn serve_connection(stream: TcpStream, image: &PathBuf) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut file = std::fs::File::open(image).unwrap();
    let size = file.metadata().unwrap().len();
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut range = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("range") {
                    range = parse_range(value.trim(), size);
                }
            }
        }
        let head = request_line.starts_with("HEAD ");
        let (status, first, last) = match range {
            Some((first, last)) => ("206 Partial Content", first, last),
            None => ("200 OK", 0, size - 1),
        };
        let length = last - first + 1;
        let mut answer = format!(
            "HTTP/1.1 {status}\r\nAccept-Ranges: bytes\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\n"
        );
        if range.is_some() {
            answer.push_str(&format!("Content-Range: bytes {first}-{last}/{size}\r\n"));
        }
        answer.push_str("\r\n");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
        if !head {
            file.seek(SeekFrom::Start(first)).unwrap();
            let mut body = vec![0u8; length as usize];
            file.read_exact(&mut body).unwrap();
            if writer.write_all(&body).is_err() {
                return;
            }
        }
    }
}

/// `bytes=A-B` or `bytes=A-` inside the image.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let (first, last) = value.strip_prefix("bytes=")?.split_once('-')?;
    let first: u64 = first.parse().ok()?;
    let last: u64 = if last.is_empty() {
        size - 1
    } else {
        last.parse().ok()?
    };
    (first <= last && last < size).then_some((first, last.min(size - 1)))
}

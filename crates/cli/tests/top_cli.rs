//! `vmedia top` against a tiny in-test HTTP server that answers /metrics with prepared scrapes
//! (written with the daemon's metric names, counters growing between them): `--batch` prints the
//! rates those counters imply, and the full-screen view under a pseudo-terminal shows its header
//! and table, quits on `q` and gives the terminal back.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::{run_any, vmedia};

/// A scrape: `reads` read operations of 4 KiB so far on debian@3, a tenth of them misses, and
/// one client (10.0.0.5:40000) that did all of them; every read took between 1 and 2 ms.
fn scrape(reads: u64) -> String {
    let bytes = reads * 4096;
    let hits = reads - reads / 10;
    let misses = reads / 10;
    format!(
        r#"# HELP vmedia_connections_open Open connections by protocol.
# TYPE vmedia_connections_open gauge
vmedia_connections_open{{protocol="nbd"}} 1
# TYPE vmedia_export_requests_in_flight gauge
vmedia_export_requests_in_flight{{export="debian@3"}} 7
# TYPE vmedia_export_operations_total counter
vmedia_export_operations_total{{export="debian@3",op="read"}} {reads}
# TYPE vmedia_export_bytes_total counter
vmedia_export_bytes_total{{export="debian@3",op="read"}} {bytes}
# TYPE vmedia_export_latency_seconds histogram
vmedia_export_latency_seconds_bucket{{export="debian@3",op="read",le="0.001"}} 0
vmedia_export_latency_seconds_bucket{{export="debian@3",op="read",le="0.002"}} {reads}
vmedia_export_latency_seconds_bucket{{export="debian@3",op="read",le="+Inf"}} {reads}
vmedia_export_latency_seconds_sum{{export="debian@3",op="read"}} {sum}
vmedia_export_latency_seconds_count{{export="debian@3",op="read"}} {reads}
# TYPE vmedia_export_cache_hits_total counter
vmedia_export_cache_hits_total{{export="debian@3"}} {hits}
# TYPE vmedia_export_cache_misses_total counter
vmedia_export_cache_misses_total{{export="debian@3"}} {misses}
# TYPE vmedia_client_requests_in_flight gauge
vmedia_client_requests_in_flight{{export="debian@3",client="10.0.0.5:40000"}} 7
# TYPE vmedia_client_operations_total counter
vmedia_client_operations_total{{export="debian@3",client="10.0.0.5:40000",op="read"}} {reads}
# TYPE vmedia_client_bytes_total counter
vmedia_client_bytes_total{{export="debian@3",client="10.0.0.5:40000",op="read"}} {bytes}
# TYPE vmedia_cache_hits_total counter
vmedia_cache_hits_total {hits}
# TYPE vmedia_cache_misses_total counter
vmedia_cache_misses_total {misses}
# TYPE vmedia_cache_capacity_bytes gauge
vmedia_cache_capacity_bytes 268435456
"#,
        sum = reads as f64 * 0.0015,
    )
}

/// Serves `bodies[i]` to the i-th request (the last one from then on); returns the base URL.
fn metrics_server(bodies: Vec<String>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let index = counter.fetch_add(1, Ordering::SeqCst);
            let body = &bodies[index.min(bodies.len() - 1)];
            answer(stream, body);
        }
    });
    (url, served)
}

fn answer(mut stream: TcpStream, body: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
            break;
        }
    }
    let (status, body) = if request_line.starts_with("GET /metrics ") {
        ("200 OK", body)
    } else {
        ("404 Not Found", "")
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Kills the server it holds when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A rate over a measured interval: never above the counters' increase over the nominal
/// interval (the answers are at least that far apart), and on a loaded machine maybe well below.
fn rate_like(value: f64, expected: f64) -> bool {
    value <= expected * 1.001 && value >= expected * 0.5
}

#[test]
fn batch_prints_rates_from_growing_counters() {
    // 1 s apart: 2000 reads, then 4000 more.
    let (url, served) = metrics_server(vec![scrape(1000), scrape(3000), scrape(7000)]);
    let (code, out, err) = run_any(vmedia().args([
        "top",
        "--server",
        &url,
        "--batch",
        "--iterations",
        "2",
        "--interval",
        "1s",
    ]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        served.load(Ordering::SeqCst),
        3,
        "one scrape per interval, plus the first"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("KIND"), "{out}");
    let headers: Vec<&&str> = lines.iter().filter(|l| l.starts_with("# ")).collect();
    assert_eq!(headers.len(), 2, "one header per interval:\n{out}");
    assert!(headers[0].contains("connections=nbd:1"), "{out}");
    assert!(headers[0].contains("cache_hit=90.0%"), "{out}");
    let exports: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.starts_with("export "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let clients: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.starts_with("client "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!((exports.len(), clients.len()), (2, 2), "{out}");
    // KIND EXPORT CLIENT QD IOPS READ WRITE LAT P99 HIT
    for (row, expected_iops) in exports.iter().zip([2000.0, 4000.0]) {
        assert_eq!(&row[..4], ["export", "debian@3", "-", "7"], "{out}");
        let iops: f64 = row[4].parse().unwrap();
        assert!(
            rate_like(iops, expected_iops),
            "IOPS {iops} not ~{expected_iops}:\n{out}"
        );
        let read_mb: f64 = row[5].parse().unwrap();
        let expected_mb = expected_iops * 4096.0 / 1e6;
        assert!(
            rate_like(read_mb, expected_mb * 1.01),
            "read {read_mb} MB/s not ~{expected_mb}:\n{out}"
        );
        assert_eq!(row[6], "0.00", "no writes:\n{out}");
        assert_eq!(row[7], "1.500", "mean latency:\n{out}");
        // rank 0.99 * n in (1 ms, 2 ms] holding all n: 1 ms + 0.99 ms.
        assert_eq!(row[8], "1.990", "p99 latency:\n{out}");
        assert_eq!(row[9], "90.0", "cache hit rate:\n{out}");
    }
    for row in &clients {
        assert_eq!(
            &row[..4],
            ["client", "debian@3", "10.0.0.5:40000", "7"],
            "{out}"
        );
        assert_eq!(row[9], "-", "clients have no cache series:\n{out}");
    }
    let client_iops: f64 = clients[1][4].parse().unwrap();
    assert!(rate_like(client_iops, 4000.0), "{out}");
}

#[test]
fn batch_fails_clearly_when_the_daemon_is_not_there() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, err) = run_any(vmedia().args([
        "top",
        "--server",
        &format!("127.0.0.1:{port}"),
        "--batch",
        "--iterations",
        "1",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn batch_refuses_text_that_is_not_metrics() {
    let (url, _) = metrics_server(vec!["<html>hello</html>\n".into()]);
    let (code, _, err) =
        run_any(vmedia().args(["top", "--server", &url, "--batch", "--iterations", "1"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not metrics text"), "{err}");
}

#[test]
fn full_screen_shows_the_table_and_quits_on_q() {
    let (url, _) = metrics_server(vec![scrape(1000), scrape(3000), scrape(7000)]);
    // A pseudo-terminal of 30 x 120: wait for the table with the export, press q, check that
    // vmedia left the alternate screen and exited 0 on its own.
    let script = r#"
import os, pty, sys, time, struct, fcntl, termios, select
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
seen = b""
def read_for(seconds, until):
    global seen
    deadline = time.time() + seconds
    while time.time() < deadline and until not in seen:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                return
read_for(20, b"debian@3")
if b"debian@3" not in seen:
    print("NO-TABLE"); sys.stdout.write(seen.decode("utf-8", "replace")); os.kill(pid, 9); sys.exit(0)
os.write(fd, b"q")
deadline = time.time() + 10
status = None
while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    read_for(0.2, b"\x00never")
else:
    os.kill(pid, 9); print("DID-NOT-QUIT"); sys.exit(0)
read_for(0.5, b"\x00never")
print("EXIT", os.waitstatus_to_exitcode(status))
print("LEFT-ALTERNATE-SCREEN", b"\x1b[?1049l" in seen)
# The screen is redrawn by difference: only words drawn once are whole in the byte stream.
for word in [b"vmedia top", b"IOPS", b"EXPORT / CLIENT"]:
    print("HEADER", word.decode(), word in seen)
"#;
    let (code, out, err) = run_any(
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_vmedia"))
            .args(["top", "--server", &url, "--interval", "500ms"]),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        !out.contains("NO-TABLE"),
        "the export never appeared:\n{out}"
    );
    assert!(!out.contains("DID-NOT-QUIT"), "q did not quit:\n{out}");
    assert!(out.contains("EXIT 0"), "{out}");
    assert!(
        out.contains("LEFT-ALTERNATE-SCREEN True"),
        "the terminal was not restored:\n{out}"
    );
    assert!(
        !out.contains("HEADER") || !out.contains(" False"),
        "the header is incomplete:\n{out}"
    );
}

#[test]
fn https_daemon_with_a_self_signed_certificate_needs_insecure() {
    // openssl s_server -WWW serves the files of its folder over TLS: /metrics is a file here.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metrics"), scrape(1000)).unwrap();
    let status = std::process::Command::new("openssl")
        .current_dir(dir.path())
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
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(status.success());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "s_server", "-WWW", "-quiet", "-key", "key.pem", "-cert", "cert.pem",
        ])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = KillOnDrop(server);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}");
    let top = |extra: &[&str]| {
        run_any(
            vmedia()
                .args(["top", "--server", &url, "--batch", "--iterations", "1"])
                .args(["--interval", "200ms"])
                .args(extra),
        )
    };
    let (code, _, err) = top(&[]);
    assert_eq!(code, 1, "an unverified certificate was accepted: {err}");
    let (code, out, err) = top(&["--insecure"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.lines().any(|l| l.starts_with("export debian@3 ")),
        "{out}"
    );
    let (code, _, err) = run_any(vmedia().args(["top", "--batch", "--insecure"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("https://"), "{err}");
}

#[test]
fn full_screen_refuses_a_pipe() {
    let (url, _) = metrics_server(vec![scrape(1)]);
    let (code, _, err) = run_any(vmedia().args(["top", "--server", &url]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--batch"), "{err}");
}

#[test]
fn iterations_need_batch() {
    let (code, _, err) = run_any(vmedia().args(["top", "--iterations", "2"]));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn unknown_sort_column_is_a_usage_error() {
    let (code, _, err) = run_any(vmedia().args(["top", "--batch", "--sort", "speed"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("p99"), "the message lists the columns: {err}");
}

//! `vmedia serve` over HTTP(S), checked with curl: ranges, validators, files, disks, TLS,
//! metrics (promtool), an nginx cache in front, boot traces.

#[path = "support_http.rs"]
mod support_http;

use std::process::Command;
use std::time::{Duration, Instant};

use support_http::*;

fn digest_hex(report: &vmedia_library::AddReport) -> String {
    report.digest.strip_prefix("sha256:").unwrap().to_string()
}

#[test]
fn image_ranges_validators_and_conditional_requests() {
    let dir = tempfile::tempdir().unwrap();
    let iso = make_iso(dir.path());
    let bytes = std::fs::read(&iso).unwrap();
    let size = bytes.len();
    let library = new_library(dir.path());
    let added = add(&library, "deb", &iso);
    let hex = digest_hex(&added);
    let daemon = Daemon::start(library, options(&dir.path().join("state")));
    let url = format!("{}/images/deb", daemon.url);

    let full = curl(&[&url]);
    assert_eq!(full.status, 200);
    assert!(full.body == bytes, "the full body differs from the image");
    let etag = format!("\"{hex}\"");
    assert_eq!(full.header("etag"), Some(etag.as_str()));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(full.header("cache-control"), Some("no-cache"));
    let last_modified = full.header("last-modified").unwrap().to_string();
    assert!(last_modified.ends_with(" GMT"), "{last_modified}");

    let head = curl(&["-I", &url]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    // curl -I writes the response head where the body would go: nothing else may follow.
    assert!(head.body.starts_with(b"HTTP/1.1 200"));
    assert!(head.body.ends_with(b"\r\n\r\n") && head.body.len() < 1024);

    let one = curl(&["-r", "1000-1999", &url]);
    assert_eq!(one.status, 206);
    assert_eq!(
        one.header("content-range"),
        Some(format!("bytes 1000-1999/{size}").as_str())
    );
    assert_eq!(one.body, bytes[1000..2000]);

    let suffix = curl(&["-r", "-100", &url]);
    assert_eq!(suffix.status, 206);
    assert_eq!(suffix.body, bytes[size - 100..]);

    // Two ranges: multipart/byteranges with each part's exact Content-Range.
    let multi = curl(&["-r", "0-9,2000000-2000099", &url]);
    assert_eq!(multi.status, 206);
    let content_type = multi.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap();
    assert_eq!(
        multi.header("content-length"),
        Some(multi.body.len().to_string().as_str())
    );
    let mut expected = Vec::new();
    for (start, end) in [(0usize, 9usize), (2_000_000, 2_000_099)] {
        expected.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {start}-{end}/{size}\r\n\r\n"
            )
            .as_bytes(),
        );
        expected.extend_from_slice(&bytes[start..=end]);
    }
    expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert!(
        multi.body == expected,
        "the multipart body is not as expected"
    );

    // If-Range: the current ETag or date keeps the range, anything else gets the whole image.
    let kept = curl(&["-r", "0-99", "-H", &format!("If-Range: {etag}"), &url]);
    assert_eq!(kept.status, 206);
    let kept = curl(&[
        "-r",
        "0-99",
        "-H",
        &format!("If-Range: {last_modified}"),
        &url,
    ]);
    assert_eq!(kept.status, 206);
    let stale = curl(&["-r", "0-99", "-H", "If-Range: \"0000\"", &url]);
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body.len(), size);

    let not_modified = curl(&["-H", &format!("If-None-Match: {etag}"), &url]);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    let changed = curl(&["-H", "If-None-Match: \"other\"", "-r", "0-0", &url]);
    assert_eq!(changed.status, 206);

    let beyond = curl(&["-r", &format!("{size}-"), &url]);
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );

    // Named by digest: immutable for every cache on the way.
    let pinned = curl(&[
        "-I",
        &format!("{}/images/deb@sha256:{}", daemon.url, &hex[..12]),
    ]);
    assert_eq!(pinned.status, 200);
    assert_eq!(
        pinned.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let numbered = curl(&["-r", "5-9", &format!("{}/images/deb@1", daemon.url)]);
    assert_eq!(numbered.body, bytes[5..10]);

    assert_eq!(
        curl(&[&format!("{}/images/nothere", daemon.url)]).status,
        404
    );
    assert_eq!(curl(&[&format!("{}/images/deb@7", daemon.url)]).status, 404);
    assert_eq!(
        curl(&[&format!("{}/images/bad%20name", daemon.url)]).status,
        404
    );
}

#[test]
fn files_stream_out_of_a_library_iso_by_their_rock_ridge_names() {
    let dir = tempfile::tempdir().unwrap();
    let iso = make_iso(dir.path());
    let library = new_library(dir.path());
    add(&library, "live", &iso);
    let daemon = Daemon::start(library, options(&dir.path().join("state")));
    let base = format!("{}/images/live/files", daemon.url);

    let hello = curl(&[&format!("{base}/hello.txt")]);
    assert_eq!(hello.status, 200);
    assert_eq!(hello.body, b"hello from the library\n");
    let mixed = curl(&[&format!("{base}/docs/Mixed%20Case%20Name.txt")]);
    assert_eq!(mixed.status, 200);
    assert_eq!(mixed.body, b"rock ridge keeps this name\n");

    let big = noise(7, 3 << 20);
    let whole = curl(&[&format!("{base}/big.bin")]);
    assert!(whole.body == big, "big.bin differs");
    let part = curl(&["-r", "1048570-1048589", &format!("{base}/big.bin")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, big[1_048_570..1_048_590]);
    assert_ne!(
        whole.header("etag"),
        curl(&["-I", &format!("{base}/hello.txt")]).header("etag")
    );

    assert_eq!(curl(&[&format!("{base}/missing.txt")]).status, 404);
}

#[test]
fn disk_serves_a_qcow2_virtual_content_and_refuses_a_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let mut content = vec![0u8; 8 << 20];
    content[..1 << 20].copy_from_slice(&noise(3, 1 << 20));
    content[5 << 20..(5 << 20) + 4096].copy_from_slice(&noise(4, 4096));
    std::fs::write(&raw, &content).unwrap();
    let qcow2 = dir.path().join("disk.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .unwrap();
    assert!(status.success());
    let overlay = dir.path().join("overlay.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&qcow2)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(status.success());
    let library = new_library(dir.path());
    add(&library, "vm", &qcow2);
    let overlay_added = library.add(
        "overlay",
        vmedia_library::AddSource::File(overlay.clone()),
        &vmedia_library::AddOptions::default(),
        &vmedia_io::NoProgress,
    );
    let daemon = Daemon::start(library, options(&dir.path().join("state")));

    let disk = curl(&[&format!("{}/images/vm/disk", daemon.url)]);
    assert_eq!(disk.status, 200);
    assert!(
        disk.body == content,
        "the virtual content differs from the raw disk"
    );
    let part = curl(&[
        "-r",
        "5242880-5246975",
        &format!("{}/images/vm@1/disk", daemon.url),
    ]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, content[5 << 20..(5 << 20) + 4096]);
    // The qcow2 container itself is something else.
    let container = curl(&["-I", &format!("{}/images/vm", daemon.url)]);
    assert_ne!(
        container.header("content-length"),
        Some(content.len().to_string().as_str())
    );
    // The library may refuse an overlay at add; if it took it, serving must refuse it.
    if overlay_added.is_ok() {
        assert_eq!(
            curl(&[&format!("{}/images/overlay/disk", daemon.url)]).status,
            503
        );
    }
}

#[test]
fn https_serves_the_same_bytes_with_a_verified_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", "/CN=localhost"])
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let iso = make_iso(dir.path());
    let bytes = std::fs::read(&iso).unwrap();
    let library = new_library(dir.path());
    add(&library, "deb", &iso);
    let mut opts = options(&dir.path().join("state"));
    opts.https_port = free_port();
    opts.tls = Some((cert.clone(), key));
    let https_port = opts.https_port;
    let daemon = Daemon::start(library, opts);
    let url = format!("https://127.0.0.1:{https_port}/images/deb");
    let cacert = cert.to_str().unwrap();
    let whole = curl(&["--cacert", cacert, &url]);
    assert_eq!(whole.status, 200);
    assert!(whole.body == bytes);
    let part = curl(&["--cacert", cacert, "-r", "100-199", &url]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, bytes[100..200]);
    let metrics = curl(&[
        "--cacert",
        cacert,
        &format!("https://localhost:{https_port}/metrics"),
    ]);
    assert_eq!(metrics.status, 200);
    assert!(daemon.metric("vmedia_connections_total{protocol=\"https\"}") >= 3.0);
    // Without the CA, curl refuses: the certificate really is checked.
    let refused = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", &url])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!refused.success());
}

#[test]
fn metrics_name_every_series_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let iso = make_iso(dir.path());
    let library = new_library(dir.path());
    add(&library, "deb", &iso);
    let daemon = Daemon::start(library, options(&dir.path().join("state")));
    curl(&[&format!("{}/images/deb", daemon.url)]);
    curl(&["-r", "0-4095", &format!("{}/images/deb", daemon.url)]);
    let reply = curl(&[&format!("{}/metrics", daemon.url)]);
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(reply.body).unwrap();
    for name in [
        "vmedia_connections_open",
        "vmedia_connections_total",
        "vmedia_export_requests_in_flight",
        "vmedia_export_operations_total",
        "vmedia_export_bytes_total",
        "vmedia_export_latency_seconds",
        "vmedia_client_requests_in_flight",
        "vmedia_client_operations_total",
        "vmedia_client_bytes_total",
        "vmedia_client_latency_seconds",
        "vmedia_export_cache_hits_total",
        "vmedia_export_cache_misses_total",
        "vmedia_cache_hits_total",
        "vmedia_cache_misses_total",
        "vmedia_cache_evictions_total",
        "vmedia_cache_bytes",
        "vmedia_cache_capacity_bytes",
        "vmedia_backend_reads_total",
        "vmedia_backend_read_bytes_total",
        "vmedia_backend_read_latency_seconds",
        "vmedia_clones",
        "vmedia_clone_bytes_written",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    let size = std::fs::metadata(&iso).unwrap().len() as f64;
    assert_eq!(
        metric(
            &text,
            "vmedia_export_bytes_total{export=\"deb@1\",op=\"read\"}"
        ),
        size + 4096.0
    );
    assert_eq!(
        metric(
            &text,
            "vmedia_export_latency_seconds_count{export=\"deb@1\",op=\"read\"}"
        ),
        2.0
    );
    assert!(metric(&text, "vmedia_backend_reads_total") >= 1.0);
    assert_eq!(
        metric(&text, "vmedia_cache_capacity_bytes"),
        (64u64 << 20) as f64
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nginx_cache_in_front_keeps_repeat_downloads_off_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let iso = make_iso(dir.path());
    let bytes = std::fs::read(&iso).unwrap();
    let library = new_library(dir.path());
    let hex = digest_hex(&add(&library, "deb", &iso));
    let daemon = Daemon::start(library, options(&dir.path().join("state")));
    let upstream = daemon.url.strip_prefix("http://").unwrap().to_string();
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let port = free_port();
    let n = nginx_dir.display();
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    let conf = format!(
        "{user}\nworker_processes 1;\nerror_log {n}/error.log;\npid {n}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log {n}/access.log;\n client_body_temp_path {n}/body;\n proxy_temp_path {n}/proxy;\n\
         fastcgi_temp_path {n}/fastcgi;\n uwsgi_temp_path {n}/uwsgi;\n scgi_temp_path {n}/scgi;\n\
         proxy_cache_path {n}/cache keys_zone=images:1m max_size=200m;\n\
         server {{\n  listen 127.0.0.1:{port};\n  location / {{\n   proxy_pass http://{upstream};\n\
         proxy_http_version 1.1;\n   proxy_cache images;\n  }}\n }}\n}}\n"
    );
    std::fs::write(nginx_dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&nginx_dir)
        .arg("-c")
        .arg(nginx_dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // SIGTERM to the master stops its workers too (SIGKILL would orphan them).
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let mut nginx = Stop(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx did not start"
        );
        if let Ok(Some(status)) = nginx.0.try_wait() {
            panic!(
                "nginx exited ({status}): {}",
                std::fs::read_to_string(nginx_dir.join("error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}/images/deb@sha256:{hex}");
    let first = curl(&[&url]);
    assert_eq!(first.status, 200);
    assert!(first.body == bytes);
    let requests = || daemon.metric("vmedia_export_operations_total{export=\"deb@1\",op=\"read\"}");
    let after_first = requests();
    assert_eq!(after_first, 1.0);
    let second = curl(&[&url]);
    assert!(second.body == bytes);
    for (start, end) in [
        (0usize, 511usize),
        (1_000_000, 1_065_535),
        (bytes.len() - 10, bytes.len() - 1),
    ] {
        let part = curl(&["-r", &format!("{start}-{end}"), &url]);
        assert_eq!(part.status, 206);
        assert_eq!(part.body, bytes[start..=end]);
    }
    assert_eq!(
        requests(),
        after_first,
        "a repeat request reached the daemon"
    );
}

#[test]
fn a_boot_trace_is_recorded_then_replayed_ahead_of_the_next_client() {
    let dir = tempfile::tempdir().unwrap();
    let iso = make_iso(dir.path());
    let bytes = std::fs::read(&iso).unwrap();
    let library = new_library(dir.path());
    let added = add(&library, "deb", &iso);
    let state = dir.path().join("state");
    let mut opts = options(&state);
    opts.trace_window = Duration::from_secs(1);
    let ranges = [
        (0usize, 40_959usize),
        (1_500_000, 1_600_000),
        (2_900_000, 2_900_100),
    ];
    {
        let daemon = Daemon::start(library.clone(), opts.clone());
        for (start, end) in ranges {
            let part = curl(&[
                "-r",
                &format!("{start}-{end}"),
                &format!("{}/images/deb", daemon.url),
            ]);
            assert_eq!(part.body, bytes[start..=end]);
        }
        let trace = state
            .join("traces")
            .join(format!("{}.trace", digest_hex(&added)));
        let started = Instant::now();
        while !trace.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no trace written"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = std::fs::read_to_string(&trace).unwrap();
        for (start, end) in ranges {
            assert!(
                text.contains(&format!("\n{start} {}\n", end - start + 1)),
                "range {start}-{end} missing from the trace:\n{text}"
            );
        }
    }
    // A new daemon (cold cache): the first request attaches the version and the trace is
    // read ahead of the client.
    opts.http_port = free_port();
    let daemon = Daemon::start(library, opts);
    assert_eq!(daemon.metric("vmedia_backend_reads_total"), 0.0);
    let head = curl(&["-I", &format!("{}/images/deb", daemon.url)]);
    assert_eq!(head.status, 200);
    let started = Instant::now();
    let mut settled = (-1.0, Instant::now());
    loop {
        let reads = daemon.metric("vmedia_backend_reads_total");
        if reads != settled.0 {
            settled = (reads, Instant::now());
        } else if reads > 0.0 && settled.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no replay");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = daemon.metric("vmedia_backend_reads_total");
    let misses = daemon.metric("vmedia_cache_misses_total");
    for (start, end) in ranges {
        let part = curl(&[
            "-r",
            &format!("{start}-{end}"),
            &format!("{}/images/deb", daemon.url),
        ]);
        assert_eq!(part.body, bytes[start..=end]);
    }
    assert_eq!(
        daemon.metric("vmedia_backend_reads_total"),
        before,
        "the client's reads went to the backend"
    );
    assert_eq!(daemon.metric("vmedia_cache_misses_total"), misses);
    assert!(daemon.metric("vmedia_cache_hits_total") > 0.0);
}

#[test]
fn preload_reads_a_whole_version_into_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let iso = make_iso(dir.path());
    let library = new_library(dir.path());
    add(&library, "deb", &iso);
    let daemon = Daemon::start(library, options(&dir.path().join("state")));
    let reply = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        "{\"image\":\"deb\"}",
        &format!("{}/api/v1/preload", daemon.url),
    ]);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let report: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(report["export"], "deb@1");
    let loaded = daemon.metric("vmedia_backend_reads_total");
    assert!(loaded > 0.0);
    curl(&[&format!("{}/images/deb", daemon.url)]);
    assert_eq!(daemon.metric("vmedia_backend_reads_total"), loaded);
    let missing = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        "{\"image\":\"nothere\"}",
        &format!("{}/api/v1/preload", daemon.url),
    ]);
    assert_eq!(missing.status, 404);
    // A body curl sends as a form is refused with the daemon's JSON error body.
    let untyped = curl(&[
        "--data",
        "{\"image\":\"deb\"}",
        &format!("{}/api/v1/preload", daemon.url),
    ]);
    assert_eq!(untyped.status, 415);
    let error: serde_json::Value = serde_json::from_slice(&untyped.body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{error}"
    );
}

#[test]
fn shutdown_lets_a_download_in_progress_finish_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    // Larger than what localhost socket buffers absorb, so the server is still sending.
    let image = dir.path().join("big.raw");
    let bytes = noise(11, 24 << 20);
    std::fs::write(&image, &bytes).unwrap();
    let library = new_library(dir.path());
    add(&library, "deb", &image);
    let mut daemon = Daemon::start(library, options(&dir.path().join("state")));
    let url = format!("{}/images/deb", daemon.url);
    let out = dir.path().join("download");
    // About 6 s at 4 MiB/s: shutdown starts while most of the body is still to come.
    let slow = Command::new("curl")
        .args(["-sS", "--limit-rate", "4M", "-o"])
        .arg(&out)
        .arg(&url)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    daemon.stop();
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "shutdown did not wait"
    );
    let status = slow.wait_with_output().unwrap().status;
    assert!(status.success());
    assert!(
        std::fs::read(&out).unwrap() == bytes,
        "the drained download is incomplete"
    );
    let refused = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", &url])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!refused.success());
}

#[test]
fn a_boot_trace_still_recording_when_the_daemon_stops_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let iso = make_iso(dir.path());
    let bytes = std::fs::read(&iso).unwrap();
    let library = new_library(dir.path());
    let added = add(&library, "deb", &iso);
    let state = dir.path().join("state");
    let mut opts = options(&state);
    // Far longer than the test: only the shutdown can end this recording.
    opts.trace_window = Duration::from_secs(3600);
    let mut daemon = Daemon::start(library, opts);
    let ranges = [(0usize, 40_959usize), (2_000_000, 2_065_535)];
    for (start, end) in ranges {
        let part = curl(&[
            "-r",
            &format!("{start}-{end}"),
            &format!("{}/images/deb", daemon.url),
        ]);
        assert_eq!(part.body, bytes[start..=end]);
    }
    let trace = state
        .join("traces")
        .join(format!("{}.trace", digest_hex(&added)));
    assert!(
        !trace.exists(),
        "the trace was written before the window ended"
    );
    daemon.stop();
    let text = std::fs::read_to_string(&trace).expect("the shutdown kept no trace");
    assert!(text.starts_with(&format!("vmedia-trace 1 sha256:{}\n", digest_hex(&added))));
    for (start, end) in ranges {
        assert!(
            text.contains(&format!("\n{start} {}\n", end - start + 1)),
            "range {start}-{end} missing from the trace:\n{text}"
        );
    }
    assert!(!trace.with_extension("trace.part").exists());
}

/// Regression: an answer given before the request body was read (here a 405 to a 32 MiB
/// upload) used to be followed by a close with the body unread, so the kernel reset the
/// connection under the client's next bytes and the client saw a reset, not the answer. The
/// daemon now reads and discards the rest (lingering close): the whole body goes out without
/// an error and the answer is there to read after it.
#[test]
fn an_early_answer_to_a_large_upload_reaches_the_client_instead_of_a_reset() {
    use std::io::{Read, Write};
    const BODY: usize = 32 << 20; // far beyond what socket buffers absorb, within LINGER_BYTES
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(new_library(dir.path()), options(&dir.path().join("state")));
    let address = daemon.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        write!(
            writer,
            "PUT /images/nothing HTTP/1.1\r\nHost: {address}\r\nContent-Length: {BODY}\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )?;
        let piece = vec![0u8; 64 << 10];
        for _ in 0..BODY / piece.len() {
            writer.write_all(&piece)?;
        }
        writer.flush()
    });
    let sent = sender.join().unwrap();
    assert!(
        sent.is_ok(),
        "the upload was cut off by the daemon: {sent:?}"
    );
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let head = String::from_utf8_lossy(&answer);
    assert!(
        head.starts_with("HTTP/1.1 4"),
        "expected the daemon's 4xx answer, got {head:?}"
    );
}

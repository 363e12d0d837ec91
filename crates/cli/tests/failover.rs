//! Issue 12's failover proof. Two sites, each a network namespace running `vmedia serve` on
//! its own folder library (B a replica of A made by `library sync`: the same export names and
//! bytes) and keepalived (VRRP with unicast peers, vmedia's health check as its tracked
//! script); a third namespace holds the bridge both sites are cabled to, and the clients. The
//! health check moves the virtual address when A's store vanishes and back when it returns;
//! then a VM (QEMU TCG, NBD client with `reconnect-delay`) boots through the virtual address
//! from A, A's link is cut while the guest reads its disk, keepalived moves the address to B,
//! and the guest reads its whole disk with the right checksum and no I/O error; 100 libnbd
//! readers and 3 curl downloads (with --retry) running across the cut all finish with
//! verified bytes. One VM boot in all.

#[path = "support/boot.rs"]
mod boot_fixtures;
#[path = "support/disk.rs"]
mod disk_fixture;
#[path = "support/failover.rs"]
mod failover;
#[path = "support/netboot.rs"]
mod nb;
mod support;

use std::fs;
use std::time::{Duration, Instant};

use failover::{
    failover_disk, holds_address, keepalived_config, start_keepalived, start_site_daemon,
    wait_until, Logged, VrrpSite, FAILOVER_MARKER, READERS_SCRIPT, READING_MARKER, SUM_PREFIX,
};
use nb::Netns;
use support::library::{add, library_json, Backend, TestLibrary};
use support::{require_tool, run_any, run_ok, sha256_file};

const SITE_A: &str = "10.61.0.1";
const SITE_B: &str = "10.61.0.2";
const CLIENT: &str = "10.61.0.100";
/// The virtual address keepalived moves between the sites.
const VIP: &str = "10.61.0.10";
const HTTP_PORT: u16 = 8080;
const NBD_PORT: u16 = 10809;
const EXPORT: &str = "failover-disk";
/// libnbd readers running across the cut.
const READERS: usize = 100;
/// curl downloads running across the cut.
const CURLS: usize = 3;
/// Each curl fetches this much of the image, throttled so that it spans the cut.
const CURL_BYTES: u64 = 12 << 20;
/// VRRP decides within about 3 advertisement intervals; the health check adds its fall/rise.
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// SeaBIOS, syslinux and the kernel under TCG on a shared 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn health_url(host: &str) -> String {
    format!("http://{host}:{HTTP_PORT}/health")
}

/// `vmedia serve --health URL` run inside `ns`: (exit code, stdout, stderr).
fn health_check(ns: &Netns, url: &str) -> (i32, String, String) {
    run_any(ns.command(env!("CARGO_BIN_EXE_vmedia")).args([
        "serve",
        "--health",
        url,
        "--health-timeout",
        "2s",
    ]))
}

/// `GET url` with curl inside `ns`: (HTTP status, body).
fn curl_status(ns: &Netns, url: &str) -> (u16, String) {
    let out = run_ok(ns.command(require_tool("curl")).args([
        "-s",
        "--max-time",
        "5",
        "-w",
        "\n%{http_code}",
        url,
    ]));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_string())
}

fn metric_sum(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn vm_boot_nbd_readers_and_http_clients_ride_through_a_keepalived_failover() {
    let started = Instant::now();
    require_tool("keepalived");
    require_tool("qemu-system-x86_64");
    require_tool("curl");
    let disk = failover_disk();
    let disk_sha = sha256_file(&disk);
    let disk_size = fs::metadata(&disk).unwrap().len();

    // Site A's library holds the disk; B is a replica made by one sync.
    let lib_a = TestLibrary::new(Backend::Folder, "failover-a");
    run_ok(&mut lib_a.library(&["init"]));
    add(&lib_a, EXPORT, &disk, &[]);
    let lib_b = lib_a.sibling("site-b");
    run_ok(&mut lib_a.library(&["sync", "--to", &lib_b.location]));
    let digest = |lib: &TestLibrary| {
        library_json(lib, &["show", EXPORT])["digest"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(digest(&lib_a), Some(format!("sha256:{disk_sha}")));
    assert_eq!(digest(&lib_b), digest(&lib_a), "B is not a replica of A");

    // The client namespace holds the bridge; each site is cabled to it by a veth pair.
    let client = Netns::new("fo-client");
    client.bridge(&format!("{CLIENT}/24"));
    let site_a = Netns::new("fo-a");
    let site_b = Netns::new("fo-b");
    site_a.veth_to("eth0", &format!("{SITE_A}/24"), &client, "cable-a");
    site_b.veth_to("eth0", &format!("{SITE_B}/24"), &client, "cable-b");
    client.ip(&["link", "set", "cable-a", "master", "br0"]);
    client.ip(&["link", "set", "cable-b", "master", "br0"]);

    let scratch = tempfile::tempdir().unwrap();
    let daemon_a = start_site_daemon(
        &site_a,
        &lib_a.env(),
        &lib_a.path("state"),
        HTTP_PORT,
        NBD_PORT,
    );
    let daemon_b = start_site_daemon(
        &site_b,
        &lib_b.env(),
        &lib_b.path("state"),
        HTTP_PORT,
        NBD_PORT,
    );

    // The health check on its own: healthy, with every check named.
    let local_health = health_url("127.0.0.1");
    let (code, out, err) = health_check(&site_a, &local_health);
    assert_eq!(code, 0, "site A is not healthy: {out}{err}");
    for check in ["store ok", "http ok", "nbd ok"] {
        assert!(out.contains(check), "{check:?} missing: {out}");
    }
    let (status, body) = curl_status(&client, &health_url(SITE_A));
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["healthy"], true, "{report:#}");
    // Nothing listens there: unhealthy, exit 1.
    let (code, _, err) = health_check(&site_a, "http://127.0.0.1:1/health");
    assert_eq!(code, 1, "{err}");

    let vmedia = env!("CARGO_BIN_EXE_vmedia");
    let vrrp = |name, address, peer, priority| VrrpSite {
        name,
        interface: "eth0",
        address,
        peer,
        priority,
        virtual_address: VIP,
        prefix_len: 24,
        router_id: 61,
        health_url: &local_health,
    };
    let keepalived_a = start_keepalived(
        &site_a,
        scratch.path(),
        "site-a",
        &keepalived_config(&vrrp("site_a", SITE_A, SITE_B, 150), vmedia),
    );
    let keepalived_b = start_keepalived(
        &site_b,
        scratch.path(),
        "site-b",
        &keepalived_config(&vrrp("site_b", SITE_B, SITE_A, 100), vmedia),
    );
    let holder = || {
        (
            holds_address(&site_a, "eth0", VIP),
            holds_address(&site_b, "eth0", VIP),
        )
    };
    let logs = || {
        format!(
            "--- keepalived A\n{}\n--- keepalived B\n{}",
            failover::tail(&keepalived_a.log(), 4000),
            failover::tail(&keepalived_b.log(), 4000)
        )
    };
    assert!(
        wait_until(MOVE_TIMEOUT, || holder() == (true, false)),
        "the virtual address did not settle on A (A, B hold: {:?})\n{}",
        holder(),
        logs()
    );

    // A's store vanishes (a folder library whose mount went away): /health answers 503 with
    // the store as the reason, the check exits 1, keepalived gives the address to B; the store
    // returns and A (the higher priority) takes it back.
    let parked = lib_a.path("library-unmounted");
    fs::rename(&lib_a.location, &parked).unwrap();
    let (status, body) = curl_status(&client, &health_url(SITE_A));
    assert_eq!(status, 503, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["healthy"], false, "{report:#}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("store:"),
        "{report:#}"
    );
    let (code, _, err) = health_check(&site_a, &local_health);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("store"), "{err}");
    assert!(
        wait_until(MOVE_TIMEOUT, || holder() == (false, true)),
        "A's failing health check did not move the address to B: {:?}\n{}",
        holder(),
        logs()
    );
    fs::rename(&parked, &lib_a.location).unwrap();
    assert!(
        wait_until(MOVE_TIMEOUT, || holder() == (true, false)),
        "the address did not return to A once healthy: {:?}\n{}",
        holder(),
        logs()
    );
    eprintln!(
        "health-driven move and return: done at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The readers connect (to A, through the address) and finish a first pass.
    let stop_file = scratch.path().join("readers-stop");
    let mut readers_cmd = client.command("/usr/bin/python3");
    readers_cmd
        .arg("-c")
        .arg(READERS_SCRIPT)
        .args([VIP, &NBD_PORT.to_string(), EXPORT])
        .arg(&disk)
        .arg(&stop_file)
        .args([
            &READERS.to_string(),
            &(256u32 << 10).to_string(),
            &(64u32 << 10).to_string(),
            "240",
        ]);
    let mut readers = Logged::spawn("libnbd readers", readers_cmd);
    let ready = readers.wait_line("READY", Duration::from_secs(120));
    assert_eq!(ready, "READY", "{}", readers.log());

    // The VM, in the client namespace, boots from the disk over NBD through the address.
    let blockdev = serde_json::json!({
        "driver": "nbd",
        "node-name": "nbd0",
        "server": {"type": "inet", "host": VIP, "port": NBD_PORT.to_string()},
        "export": EXPORT,
        "reconnect-delay": 60,
        "read-only": true,
    });
    let mut qemu_cmd = client.command(require_tool("qemu-system-x86_64"));
    qemu_cmd
        .args(["-accel", "tcg", "-m", "512", "-nographic", "-no-reboot"])
        .args(["-monitor", "none", "-serial", "stdio"])
        .arg("-blockdev")
        .arg(blockdev.to_string())
        .args(["-device", "virtio-blk-pci,drive=nbd0,bootindex=1"]);
    let mut vm = Logged::spawn("the VM", qemu_cmd);
    vm.wait_line(READING_MARKER, BOOT_TIMEOUT);
    let boot_seconds = started.elapsed().as_secs_f64();
    eprintln!("the guest reads its disk at {boot_seconds:.1} s: cutting A's link");

    // HTTP clients start, then A's cable is cut while the guest reads its disk.
    let curls: Vec<(Logged, std::path::PathBuf)> = (0..CURLS)
        .map(|i| {
            let out = scratch.path().join(format!("curl-{i}.bin"));
            let mut cmd = client.command(require_tool("curl"));
            cmd.args(["--no-progress-meter", "--fail"])
                .args(["--retry", "30", "--retry-all-errors", "--retry-delay", "1"])
                .args(["--connect-timeout", "2", "--speed-limit", "1024"])
                .args(["--speed-time", "3", "--limit-rate", "2M"])
                .args(["-r", &format!("0-{}", CURL_BYTES - 1), "-o"])
                .arg(&out)
                .arg(format!("http://{VIP}:{HTTP_PORT}/images/{EXPORT}"));
            (Logged::spawn(&format!("curl {i}"), cmd), out)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let cut = Instant::now();
    client.ip(&["link", "set", "cable-a", "down"]);
    assert!(
        wait_until(MOVE_TIMEOUT, || holds_address(&site_b, "eth0", VIP)),
        "keepalived did not move the address to B after the cut\n{}",
        logs()
    );
    let moved = cut.elapsed().as_secs_f64();
    eprintln!("the address is on B {moved:.1} s after the cut");

    // The guest finishes reading its disk through B.
    let sum_line = vm.wait_line(SUM_PREFIX, BOOT_TIMEOUT);
    vm.wait_line(FAILOVER_MARKER, Duration::from_secs(30));
    let after_cut = cut.elapsed().as_secs_f64();
    eprintln!("the guest read its whole disk {after_cut:.1} s after the cut");
    let console = vm.log();
    let guest_sum = sum_line
        .split(SUM_PREFIX)
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    assert_eq!(
        guest_sum,
        disk_sha,
        "the guest read other bytes\n{}",
        failover::tail(&console, 4000)
    );
    assert!(
        console.contains("VMEDIA-FAILOVER-IOERRORS 0"),
        "the guest's kernel logged I/O errors\n{}",
        failover::tail(&console, 6000)
    );
    assert!(
        !console.contains("I/O error"),
        "{}",
        failover::tail(&console, 6000)
    );
    vm.stop();

    // The readers: every one reconnected (its connection died with A) and went on verifying.
    fs::write(&stop_file, b"stop").unwrap();
    let code = readers.wait_exit(Duration::from_secs(120));
    let log = readers.log();
    assert_eq!(code, 0, "{}", failover::tail(&log, 6000));
    let results: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), READERS, "{}", failover::tail(&log, 6000));
    for r in &results {
        assert!(
            r["done"] == true
                && r["mismatches"] == 0
                && r["verified"] == r["passes"]
                && r["reconnects"].as_u64().unwrap_or(0) >= 1
                && r["passes_after_reconnect"].as_u64().unwrap_or(0) >= 1,
            "reader did not ride through: {r}"
        );
    }
    let verified: u64 = results.iter().filter_map(|r| r["verified"].as_u64()).sum();

    // The HTTP clients: whole ranges with the image's bytes, retried across the cut.
    let expected = fs::read(&disk).unwrap()[..CURL_BYTES as usize].to_vec();
    let mut retried = 0;
    for (mut curl, out) in curls {
        let code = curl.wait_exit(Duration::from_secs(120));
        let log = curl.log();
        assert_eq!(code, 0, "{}: {log}", curl.what);
        assert!(
            fs::read(&out).unwrap() == expected,
            "{}: wrong bytes\n{log}",
            curl.what
        );
        if log.contains("Will retry") {
            retried += 1;
        }
    }
    assert!(
        retried > 0,
        "no curl needed a retry: the cut came after they finished"
    );

    // The survivor served the reads after the cut.
    let (status, metrics) = curl_status(&client, &format!("http://{VIP}:{HTTP_PORT}/metrics"));
    assert_eq!(status, 200);
    let read_on_b = metric_sum(
        &metrics,
        "vmedia_export_bytes_total",
        &[&format!("export=\"{EXPORT}"), "op=\"read\""],
    );
    assert!(read_on_b > 0.0, "B served nothing:\n{metrics}");
    assert!(
        daemon_a.log().contains("listening for nbd")
            && daemon_b.log().contains("listening for nbd")
    );
    eprintln!(
        "failover: guest reading at {boot_seconds:.1} s; address on B {moved:.1} s after the \
         cut; guest done {after_cut:.1} s after the cut; {READERS} readers verified {verified} \
         passes; {retried}/{CURLS} curls retried; B read {read_on_b} bytes; disk {disk_size} \
         bytes; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

//! Issue 11's proofs with real clients of `vmedia serve` that serve_boot.rs does not cover:
//! iPXE's `sanboot` (QEMU's network ROM, ipxe-qemu) booting the test ISO from the daemon's
//! HTTP port; `nbdcopy` of a sparse 1 GiB folder-library image equal to its source and
//! `nbdinfo --map` reporting its holes; and a VM on a private bridge in a network namespace
//! that network-boots a kernel and initrd read out of a library ISO by the netboot server
//! inside the daemon (`vmedia serve --netboot FILE`). VMs run under TCG and stop at the test
//! payload's marker.

#[path = "support/boot.rs"]
mod boot_fixtures;
#[path = "support/netboot.rs"]
mod nb;
mod support;

use std::fs;
use std::process::Command;
use std::time::Duration;

use boot_fixtures::hybrid_iso;
use nb::Netns;
use support::library::{add, pseudo_random, Backend, TestLibrary};
use support::serve::{Daemon, ServeOptions};
use support::{qemu_boot, require_tool, run_ok, Firmware, BOOT_MARKER};

/// TCG boots of the payload take 20-90 s here; the machine is shared.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// What the iPXE script prints before it hands over to `sanboot` (seen on the console).
const IPXE_SCRIPT_MARKER: &str = "vmedia-ipxe-sanboot";

/// The sum of `metric{...}` samples whose labels contain every one of `labels`.
fn metric_with(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A folder library holding the hybrid test ISO as `demo` (version 1).
fn demo_library(tag: &str) -> TestLibrary {
    let lib = TestLibrary::new(Backend::Folder, tag);
    run_ok(&mut lib.library(&["init"]));
    add(&lib, "demo", &hybrid_iso("cdrom"), &[]);
    lib
}

#[test]
fn ipxe_sanboot_boots_the_library_iso_over_http_from_the_daemon() {
    let lib = demo_library("serve-ipxe");
    let daemon = Daemon::start(lib.vmedia(), &ServeOptions::default());
    // QEMU's user network: its DHCP names boot.ipxe, its TFTP serves it from `tftp`, and
    // 10.0.2.2 is the host's loopback, where the daemon listens.
    let tftp = lib.path("tftp");
    fs::create_dir_all(&tftp).unwrap();
    fs::write(
        tftp.join("boot.ipxe"),
        format!(
            "#!ipxe\necho {IPXE_SCRIPT_MARKER}\nsanboot http://10.0.2.2:{}/images/demo\n",
            daemon.http_port
        ),
    )
    .unwrap();
    let netdev = format!(
        "user,id=n0,tftp={},bootfile=boot.ipxe",
        tftp.to_str().unwrap()
    );
    // virtio-net's default option ROM is QEMU's iPXE.
    let args = [
        "-netdev",
        &netdev,
        "-device",
        "virtio-net-pci,netdev=n0",
        "-boot",
        "order=n",
    ];
    let console = qemu_boot(Firmware::Bios, &args, BOOT_MARKER, BOOT_TIMEOUT);
    assert!(
        console.contains(IPXE_SCRIPT_MARKER),
        "iPXE did not run the script:\n{console}"
    );
    // isolinux's command line names the medium: the ISO, booted through iPXE's SAN drive.
    assert!(
        console.contains("vmedia.from=cdrom"),
        "booted, but not from the served ISO:\n{console}"
    );
    let metrics = daemon.metrics();
    let read = metric_with(
        &metrics,
        "vmedia_export_bytes_total",
        &["export=\"demo", "op=\"read\""],
    );
    assert!(read > 0.0, "no reads of demo in /metrics:\n{metrics}");
}

/// The sparse image's data: `(offset, length)` in bytes; everything else is zero.
const SPARSE_SIZE: u64 = 1 << 30;
const SPARSE_DATA: [(u64, u64); 3] = [
    (0, 3 << 20),
    (500 << 20, 5 << 20),
    (SPARSE_SIZE - (2 << 20), 2 << 20),
];

/// One extent of `nbdinfo --map --json`.
#[derive(Debug, serde::Deserialize)]
struct Extent {
    offset: u64,
    length: u64,
    #[serde(rename = "type")]
    kind: u32,
}

/// NBD_STATE_HOLE in base:allocation.
const STATE_HOLE: u32 = 1;

#[test]
fn nbdcopy_of_a_sparse_1gib_library_image_equals_it_and_nbdinfo_maps_its_holes() {
    require_tool("nbdcopy");
    require_tool("nbdinfo");
    let lib = TestLibrary::new(Backend::Folder, "serve-nbdcopy");
    run_ok(&mut lib.library(&["init"]));
    // Sparse on disk: only the data ranges are written.
    let source = lib.path("sparse.raw");
    {
        use std::os::unix::fs::FileExt;
        let file = fs::File::create(&source).unwrap();
        file.set_len(SPARSE_SIZE).unwrap();
        for (i, &(offset, len)) in SPARSE_DATA.iter().enumerate() {
            file.write_all_at(&pseudo_random(len as usize, 11 + i as u64), offset)
                .unwrap();
        }
    }
    add(&lib, "sparse", &source, &[]);
    let daemon = Daemon::start(lib.vmedia(), &ServeOptions::default());
    let url = format!("nbd://127.0.0.1:{}/sparse", daemon.nbd_port);

    let copy = lib.path("copy.raw");
    run_ok(
        Command::new("nbdcopy")
            .arg(&url)
            .arg(&copy)
            .args(["--requests", "16"]),
    );
    assert_eq!(fs::metadata(&copy).unwrap().len(), SPARSE_SIZE);
    let cmp = Command::new(require_tool("cmp"))
        .arg(&source)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "nbdcopy's copy differs from the library's bytes: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );

    let out = run_ok(Command::new("nbdinfo").args(["--map", "--json"]).arg(&url));
    let extents: Vec<Extent> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("nbdinfo --map --json: {e}"));
    // The map covers the image once, in order.
    let mut at = 0;
    for extent in &extents {
        assert_eq!(extent.offset, at, "{extents:?}");
        at += extent.length;
    }
    assert_eq!(at, SPARSE_SIZE, "{extents:?}");
    // No hole overlaps data, and the holes are the zeros: only the chunks where data and
    // zeros meet (content-defined, at most two of the largest size per edge) are reported as
    // data beyond the data itself.
    let holes: Vec<&Extent> = extents
        .iter()
        .filter(|e| e.kind & STATE_HOLE != 0)
        .collect();
    for hole in &holes {
        for &(offset, len) in &SPARSE_DATA {
            assert!(
                hole.offset + hole.length <= offset || offset + len <= hole.offset,
                "hole {hole:?} covers data at {offset:#x}+{len:#x}: {extents:?}"
            );
        }
    }
    let data_bytes: u64 = SPARSE_DATA.iter().map(|&(_, len)| len).sum();
    let zero_bytes = SPARSE_SIZE - data_bytes;
    let hole_bytes: u64 = holes.iter().map(|e| e.length).sum();
    let edges = 2 * SPARSE_DATA.len() as u64 - 2;
    let slack = edges * 2 * u64::from(vmedia_library::CHUNKING.max);
    assert!(
        hole_bytes + slack >= zero_bytes,
        "holes {hole_bytes} bytes of {zero_bytes} zero bytes (slack {slack}): {extents:?}"
    );
    assert_eq!(holes.len(), 2, "one hole per zero range: {extents:?}");
    eprintln!(
        "nbdinfo --map: {} extents, {hole_bytes} of {zero_bytes} zero bytes reported as holes",
        extents.len()
    );
}

#[test]
fn vm_network_boots_kernel_and_initrd_out_of_a_library_iso_from_serve_netboot() {
    let lib = demo_library("serve-netboot");
    let ns = Netns::new("srvnb");
    ns.bridge("10.73.0.1/24");
    ns.tap("tap0");
    let root = lib.path("netboot-root");
    fs::create_dir_all(&root).unwrap();
    let config = lib.path("netboot.toml");
    fs::write(
        &config,
        "[server]\nroot = \"netboot-root\"\ndhcp = \"full\"\ninterface = \"br0\"\n\
             dhcp_range = \"10.73.0.100-10.73.0.150\"\nlease_file = \"leases.json\"\n\
             tftp_port = 69\nhttp_port = 8080\n\n\
             [default]\nkernel = \"library:demo@1:/boot/vmlinuz\"\n\
             initrd = [\"library:demo@1:/boot/initrd.gz\"]\n\
             cmdline = \"console=ttyS0 no_timer_check panic=-1 vmedia.from=netboot\"\n",
    )
    .unwrap();
    // The daemon runs inside the namespace: its netboot server binds br0 there.
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_vmedia"));
    for var in ["VMEDIA_LIBRARY", "VMEDIA_LIBRARY_KEY", "AWS_ENDPOINT_URL"] {
        cmd.env_remove(var);
    }
    cmd.envs(lib.env()).env(
        "RUST_LOG",
        "warn,vmedia=info,vmedia_server=info,vmedia_netboot=info",
    );
    let daemon = Daemon::start(
        cmd,
        &ServeOptions {
            extra: vec!["--netboot".into(), config.display().to_string()],
            ..ServeOptions::default()
        },
    );
    let args: Vec<String> = [
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:73:00:01",
        "-boot",
        "order=n",
    ]
    .map(String::from)
    .to_vec();
    require_tool("qemu-system-x86_64");
    let console = ns.run(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        qemu_boot(Firmware::Bios, &refs, BOOT_MARKER, BOOT_TIMEOUT)
    });
    assert!(
        console.contains("vmedia.from=netboot"),
        "booted, but not the netboot rule's kernel:\n{console}"
    );
    let log = daemon.log();
    assert!(log.contains("-> OFFER 10.73.0.100"), "{log}");
    for file in ["boot/vmlinuz", "boot/initrd.gz"] {
        assert!(
            log.lines()
                .any(|l| l.contains("done ") && l.contains("demo@1") && l.contains(file)),
            "{file} not served from the library:\n{log}"
        );
    }
    // Nothing but the netboot server read the library, through the daemon's shared cache.
    let port = daemon.http_port;
    let metrics = ns.run(move || support::serve::http_get(port, "/metrics"));
    let fetched = support::serve::metric_sum(&metrics, "vmedia_backend_read_bytes_total");
    let kernel_len = fs::metadata(support::payload().kernel).unwrap().len();
    assert!(
        fetched >= kernel_len as f64,
        "the shared cache fetched {fetched} bytes, the kernel alone is {kernel_len}:\n{metrics}"
    );
}

/// Holds one libnbd connection to `argv[1]` open: prints `connected`, waits for a line on
/// stdin, then reads 4 KiB and prints `READ-OK` or `READ-FAILED <error>`.
const HOLD_SCRIPT: &str = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print('connected', flush=True)
sys.stdin.readline()
try:
    h.pread(4096, 0)
    print('READ-OK', flush=True)
except nbd.Error as e:
    print('READ-FAILED', e, flush=True)
"#;

#[test]
fn clone_rm_refuses_a_clone_with_an_open_nbd_connection_and_force_cuts_it_off() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let lib = TestLibrary::new(Backend::Folder, "serve-clone-rm");
    run_ok(&mut lib.library(&["init"]));
    let disk = lib.path("disk.raw");
    fs::write(&disk, pseudo_random(1 << 20, 5)).unwrap();
    add(&lib, "disk", &disk, &[]);
    let daemon = Daemon::start(lib.vmedia(), &ServeOptions::default());
    let server = daemon.http_url();
    let clone = |args: &[&str]| {
        let mut cmd = support::vmedia();
        cmd.arg("clone").args(args).args(["--server", &server]);
        support::run_any(&mut cmd)
    };
    let (code, _, err) = clone(&["create", "disk", "vm1"]);
    assert_eq!(code, 0, "{err}");

    let mut holder = Command::new(support::serve::python())
        .arg("-c")
        .arg(HOLD_SCRIPT)
        .arg(format!("nbd://127.0.0.1:{}/clone/vm1", daemon.nbd_port))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot run /usr/bin/python3 (python3-libnbd)");
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");

    let (code, out, err) = clone(&["rm", "vm1"]);
    assert_ne!(code, 0, "removed a clone in use: {out}");
    assert!(
        err.contains("in use by 1 open connection") && err.contains("--force"),
        "the refusal does not say what to do: {err}"
    );
    let (_, listed, _) = clone(&["ls", "--json"]);
    assert!(listed.contains("\"vm1\""), "{listed}");

    let (code, out, err) = clone(&["rm", "vm1", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed clone vm1"), "{out}");
    holder.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let after = lines.next().unwrap().unwrap();
    assert!(
        after.starts_with("READ-FAILED"),
        "the cut-off connection still reads: {after}"
    );
    let _ = holder.wait();
    let (_, listed, _) = clone(&["ls", "--json"]);
    assert!(!listed.contains("\"vm1\""), "{listed}");
}

#[test]
fn netboot_serve_with_an_s3_library_serves_library_paths() {
    let lib = TestLibrary::new(Backend::S3, "netboot-serve-library");
    run_ok(&mut lib.library(&["init"]));
    add(&lib, "demo", &hybrid_iso("cdrom"), &[]);
    let kernel = fs::read(support::payload().kernel).unwrap();
    let root = lib.path("root");
    fs::create_dir_all(&root).unwrap();
    let (tftp_port, http_port) = (support::serve::free_port(), support::serve::free_port());
    // The library and its endpoint come as flags, the credentials as AWS_* variables: what
    // the library commands take.
    let mut cmd = lib.vmedia();
    cmd.env_remove("VMEDIA_LIBRARY")
        .env_remove("AWS_ENDPOINT_URL")
        .args(["netboot", "serve", "--no-dhcp", "--listen", "127.0.0.1"])
        .arg("--root")
        .arg(&root)
        .args(["--tftp-port", &tftp_port.to_string()])
        .args(["--http-port", &http_port.to_string()])
        .args(["--library", &lib.location])
        .args(["--s3-endpoint", &lib.server().unwrap().endpoint])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = support::serve::spawn_tied(cmd).expect("cannot start vmedia netboot serve");
    let banner = {
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let found = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("vmedia netboot: serving"));
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        found
    };
    let banner = banner.unwrap_or_else(|| {
        let status = child.wait();
        panic!("netboot serve did not start: {status:?}")
    });
    assert!(banner.contains(&lib.location), "{banner}");

    let http = run_ok(Command::new(require_tool("curl")).args([
        "-sf",
        &format!("http://127.0.0.1:{http_port}/library:demo@1:/boot/vmlinuz"),
    ]));
    assert!(http.stdout == kernel, "the kernel over HTTP differs");
    let tftp = nb::tftp_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], tftp_port)),
        "library:demo:/boot/vmlinuz",
        &[("blksize", "1468")],
    )
    .unwrap();
    assert!(tftp == kernel, "the kernel over TFTP differs");
    support::kill_and_reap(&mut child);
}

//! Issue 11's boot proof: QEMU (TCG) boots images that only a `vmedia serve` daemon holds. The
//! test ISO from a folder library over NBD and over HTTP (QEMU's NBD and curl block drivers),
//! under SeaBIOS and OVMF; a zstd qcow2 and a streamOptimized VMDK of the bootable disk as disks
//! over NBD (`NAME/disk`); and 10 copy-on-write clones of one bootable disk, each booted from
//! `nbd://.../clone/cN`, each guest writing its own token to its disk, checked after a daemon
//! restart, with the base version untouched and `clone commit` storing only what changed.
//! The clone guests start the payload kernel uncompressed (PVH `vmlinux`, no decompression in
//! TCG) with an initramfs holding only the virtio disk drivers: what they prove is the clones.
//! Independent boots run in parallel threads (bounded, the machine has 2 cores).

#[path = "support/boot.rs"]
mod boot_fixtures;
#[path = "support/disk.rs"]
mod disk_fixture;
#[path = "support/serve_boot.rs"]
mod serve_boot;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use boot_fixtures::hybrid_iso;
use serve_boot::{python_nbd, Daemon};
use support::library::{add, library_json, Backend, TestLibrary};
use support::{
    cached_fixture, module_closure, newest_module_release, pack_initramfs, payload,
    payload_vmlinux, require_tool, run_any, run_ok, sha256_file, BOOT_MARKER,
};

/// TCG boots take 5-60 s here, more with several VMs on 2 cores; firmware adds some.
const BOOT_TIMEOUT: &str = "240";
/// VMs booting at once per test: the two tests run side by side, so four TCG guests share the
/// 2 cores, each well inside its time-out.
const PARALLEL_BOOTS: usize = 2;
/// Clones of the bootable disk, each booted once.
const CLONES: usize = 10;
/// Where each clone's guest writes its token: this many 512-byte sectors before the end of the
/// disk, in the free space after the partition that nothing else uses.
const TOKEN_SECTORS_FROM_END: u64 = 8;
/// What the clone guest prints once its token is on the disk and synced.
const TOKEN_MARKER: &str = "VMEDIA-TOKEN-WRITTEN";

/// Runs `work` on every job, at most `workers` at a time; panics (with every failure) if any
/// job panicked.
fn in_parallel<T: Send>(jobs: Vec<T>, workers: usize, work: impl Fn(T) + Sync) {
    let queue = Mutex::new(jobs);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(job) = queue.lock().unwrap().pop() else {
                    return;
                };
                if let Err(panic) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(job)))
                {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.lock().unwrap().push(text);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `vmedia boot --accel tcg ... --json` with `args`; asserts the VM reached `marker` and
/// returns the console log.
fn boot(args: &[String], marker: &str, what: &str) -> String {
    require_tool("qemu-system-x86_64");
    let started = std::time::Instant::now();
    let home = tempfile::tempdir().unwrap();
    let (code, out, err) = run_any(
        support::vmedia()
            .env("VMEDIA_HOME", home.path())
            .args(["boot", "--accel", "tcg", "--timeout", BOOT_TIMEOUT])
            .args(args)
            .args(["--expect", marker, "--json"]),
    );
    let report: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{what}: bad JSON ({e}):\n{out}\n{err}"));
    let console = report["console_log"]
        .as_str()
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
    assert!(
        code == 0 && report["outcome"] == "booted",
        "{what}: the VM did not reach {marker:?} (exit {code}): {report:#}\n{err}\n--- console\n{console}"
    );
    eprintln!("{what}: booted in {:.1} s", started.elapsed().as_secs_f64());
    console
}

/// Sum of `metric{...}` samples whose labels contain every one of `labels`.
fn metric_sum(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn get(url: &str) -> String {
    let out = run_ok(Command::new(require_tool("curl")).args(["-sf", url]));
    String::from_utf8(out.stdout).unwrap()
}

/// The hybrid test ISO's bootable disk (tag `disk`) converted by `qemu-img convert OPTIONS`.
fn converted_disk(name: &str, options: &[&str]) -> PathBuf {
    let iso = hybrid_iso("disk");
    let dir = cached_fixture(&format!("serve-boot-{name}"), |dir| {
        run_ok(
            Command::new(require_tool("qemu-img"))
                .args(["convert", "-f", "raw"])
                .args(options)
                .arg(&iso)
                .arg(dir.join(name)),
        );
    });
    dir.join(name)
}

#[test]
fn library_iso_boots_over_nbd_and_http_under_bios_and_uefi_and_disks_boot_over_nbd() {
    assert!(
        Path::new("/usr/lib/x86_64-linux-gnu/qemu/block-curl.so").exists(),
        "QEMU's curl block driver is not installed: apt-get install qemu-block-extra \
         (scripts/setup.sh does)"
    );
    let iso = hybrid_iso("cdrom");
    // -c compresses every cluster, with zstd as the compression type.
    let qcow2 = converted_disk(
        "disk.qcow2",
        &["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
    );
    let vmdk = converted_disk(
        "disk.vmdk",
        &["-O", "vmdk", "-o", "subformat=streamOptimized"],
    );
    let info = run_ok(
        Command::new(require_tool("qemu-img"))
            .args(["info", "--output=json"])
            .arg(&qcow2),
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["format-specific"]["data"]["compression-type"], "zstd",
        "{info:#}"
    );
    let info = run_ok(
        Command::new(require_tool("qemu-img"))
            .args(["info", "--output=json"])
            .arg(&vmdk),
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["format-specific"]["data"]["create-type"], "streamOptimized",
        "{info:#}"
    );

    let lib = TestLibrary::new(Backend::Folder, "serve-boot-media");
    run_ok(&mut lib.library(&["init"]));
    add(&lib, "demo", &iso, &[]);
    add(&lib, "hd-qcow2", &qcow2, &[]);
    add(&lib, "hd-vmdk", &vmdk, &[]);
    let state = lib.path("state");
    let daemon = Daemon::start(lib.env(), &state);

    let iso_nbd = daemon.nbd_url("demo");
    let iso_http = format!("{}/images/demo", daemon.http);
    let boots: Vec<(String, Vec<String>)> = vec![
        (
            "ISO over NBD, SeaBIOS".into(),
            vec!["--cdrom".into(), iso_nbd.clone()],
        ),
        (
            "ISO over NBD, OVMF".into(),
            vec![
                "--cdrom".into(),
                iso_nbd,
                "--firmware".into(),
                "uefi".into(),
            ],
        ),
        (
            "ISO over HTTP, SeaBIOS".into(),
            vec!["--cdrom".into(), iso_http.clone()],
        ),
        (
            "ISO over HTTP, OVMF".into(),
            vec![
                "--cdrom".into(),
                iso_http,
                "--firmware".into(),
                "uefi".into(),
            ],
        ),
        (
            "zstd qcow2 as a disk over NBD, SeaBIOS".into(),
            vec!["--disk".into(), daemon.nbd_url("hd-qcow2/disk")],
        ),
        (
            "streamOptimized VMDK as a disk over NBD, SeaBIOS".into(),
            vec!["--disk".into(), daemon.nbd_url("hd-vmdk/disk")],
        ),
    ];
    in_parallel(boots, PARALLEL_BOOTS, |(what, args)| {
        let console = boot(&args, BOOT_MARKER, &what);
        let tag = if what.starts_with("ISO") {
            "cdrom"
        } else {
            "disk"
        };
        // The kernel command line names the medium the boot loader came from.
        assert!(
            console.contains(&format!("vmedia.from={tag}")),
            "{what}: booted, but not from the served image:\n{console}"
        );
    });

    // Every image was read through the daemon (QEMU had nothing but the URLs).
    let metrics = get(&format!("{}/metrics", daemon.http));
    for name in ["demo", "hd-qcow2", "hd-vmdk"] {
        let read = metric_sum(
            &metrics,
            "vmedia_export_bytes_total",
            &[&format!("export=\"{name}"), "op=\"read\""],
        );
        assert!(read > 0.0, "no reads of {name} in /metrics:\n{metrics}");
    }
}

/// Kernel modules the clone guest loads: only what its virtio disk needs (the shared
/// block-driver overlay also brings AHCI, the CD driver and isofs, which ten boots would load,
/// probe and verify for nothing).
const CLONE_GUEST_MODULES: [&str; 2] = ["virtio_pci", "virtio_blk"];

/// The clone guest: the payload, then an overlay with the virtio disk drivers and an /init that
/// writes `VMEDIA-CLONE-TOKEN <vmedia.token=...>` into the disk's last sectors, syncs, says so
/// and powers off.
fn token_writing_initrd() -> PathBuf {
    let dir = cached_fixture("serve-boot-token-initrd-v2", |dir| {
        let release =
            newest_module_release().expect("no /lib/modules/<release>: install linux-image-amd64");
        let overlay = dir.join("overlay");
        fs::create_dir_all(overlay.join("mods")).unwrap();
        for (index, module) in module_closure(&release, &CLONE_GUEST_MODULES)
            .iter()
            .enumerate()
        {
            let name = Path::new(module).file_name().unwrap().to_string_lossy();
            fs::copy(module, overlay.join(format!("mods/{index:02}-{name}"))).unwrap();
        }
        let init = format!(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev 2>/dev/null\n\
             for m in /mods/*.ko; do insmod $m; done\n\
             i=0\n\
             while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
             token=$(sed -n 's/.*vmedia[.]token=\\([A-Za-z0-9_-]*\\).*/\\1/p' /proc/cmdline)\n\
             sectors=$(cat /sys/block/vda/size)\n\
             printf 'VMEDIA-CLONE-TOKEN %s\\n' \"$token\" > /token\n\
             dd if=/token of=/dev/vda bs=512 seek=$((sectors - {TOKEN_SECTORS_FROM_END})) conv=notrunc,sync,fsync 2>/dev/null && sync && echo \"{TOKEN_MARKER} $token\"\n\
             poweroff -f\n"
        );
        pack_initramfs(dir, "overlay", Some(init.as_str()), "overlay.cpio.gz");
        // Linux unpacks concatenated archives in order: this /init replaces the payload's.
        let mut joined = fs::read(payload().initrd).unwrap();
        joined.extend(fs::read(dir.join("overlay.cpio.gz")).unwrap());
        fs::write(dir.join("initrd.gz"), joined).unwrap();
        fs::remove_dir_all(&overlay).unwrap();
    });
    dir.join("initrd.gz")
}

/// The sector a clone's guest writes: its token line, zero-padded (dd conv=sync).
fn token_sector(token: &str) -> Vec<u8> {
    let mut sector = format!("VMEDIA-CLONE-TOKEN {token}\n").into_bytes();
    sector.resize(512, 0);
    sector
}

/// Reads each `(NBD URL, token)` export whole with libnbd and compares it with the base disk
/// in which only the token sector holds that token (`-`: the base itself). Prints one line per
/// export: `OK` or where it first differs.
const COMPARE_SCRIPT: &str = r#"
import sys, nbd
base = open(sys.argv[1], 'rb').read()
offset = int(sys.argv[2])
for pair in sys.argv[3:]:
    url, token = pair.split('|')
    if token == '-':
        sector = base[offset:offset + 512]
    else:
        sector = ('VMEDIA-CLONE-TOKEN %s\n' % token).encode().ljust(512, b'\0')
    want = base[:offset] + sector + base[offset + 512:]
    h = nbd.NBD()
    h.connect_uri(url)
    size = h.get_size()
    got = bytearray()
    while len(got) < size:
        got += h.pread(min(4 << 20, size - len(got)), len(got))
    h.shutdown()
    found = bytes(got[offset:offset + 512]).rstrip(b'\0')
    if size != len(want):
        print(url, 'SIZE', size, len(want))
    elif bytes(got) == want:
        print(url, 'OK', found)
    else:
        first = next(i for i in range(size) if got[i] != want[i])
        print(url, 'DIFFERS at', first, 'token sector holds', found)
"#;

#[test]
fn ten_clones_boot_over_nbd_keep_their_own_writes_across_a_restart_and_commit_only_changes() {
    let base = disk_fixture::bootable_raw_disk();
    let base_size = fs::metadata(&base).unwrap().len();
    let token_offset = base_size - TOKEN_SECTORS_FROM_END * 512;
    let initrd = token_writing_initrd();
    // The uncompressed kernel: ten boots would spend ~50 CPU seconds decompressing the
    // bzImage under TCG, and what they prove is the clones, not the kernel's format.
    let kernel = payload_vmlinux();

    let lib = TestLibrary::new(Backend::Folder, "serve-boot-clones");
    run_ok(&mut lib.library(&["init"]));
    let added = add(&lib, "boot-disk", &base, &[]);
    let base_digest = format!("sha256:{}", sha256_file(&base));
    assert_eq!(added["digest"], base_digest.as_str(), "{added:#}");
    let state = lib.path("state");
    let mut daemon = Daemon::start(lib.env(), &state);

    let names: Vec<String> = (1..=CLONES).map(|i| format!("c{i}")).collect();
    for name in &names {
        run_ok(support::vmedia().args([
            "clone",
            "create",
            "boot-disk",
            name,
            "--server",
            &daemon.http,
        ]));
    }
    let jobs: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.clone(), daemon.nbd_url(&format!("clone/{n}"))))
        .collect();
    in_parallel(jobs, PARALLEL_BOOTS, |(name, url)| {
        let args: Vec<String> = vec![
            "--kernel".into(),
            kernel.display().to_string(),
            "--initrd".into(),
            initrd.display().to_string(),
            "--append".into(),
            format!("console=ttyS0 no_timer_check vmedia.token={name}"),
            "--disk-rw".into(),
            url,
        ];
        boot(
            &args,
            &format!("{TOKEN_MARKER} {name}\\b"),
            &format!("clone {name}"),
        );
    });

    let listed =
        run_ok(support::vmedia().args(["clone", "ls", "--json", "--server", &daemon.http]));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let written = |name: &str| -> u64 {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in clone ls: {listed:#}"))["bytes_written"]
            .as_u64()
            .unwrap()
    };
    for name in &names {
        assert!(written(name) > 0, "{name} wrote nothing: {listed:#}");
    }

    // The clones and their writes outlive the daemon.
    daemon.restart();
    let mut pairs: Vec<String> = names
        .iter()
        .map(|n| format!("{}|{n}", daemon.nbd_url(&format!("clone/{n}"))))
        .collect();
    pairs.push(format!("{}|-", daemon.nbd_url("boot-disk")));
    let mut args = vec![base.display().to_string(), token_offset.to_string()];
    args.extend(pairs);
    let report = python_nbd(COMPARE_SCRIPT, &args);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), CLONES + 1, "{report}");
    for line in &lines {
        assert!(
            line.contains(" OK "),
            "an export is not the base plus its own token:\n{report}\n--- daemon log\n{}",
            daemon.log()
        );
    }

    // The restarted daemon counts the same clones and bytes written in /metrics.
    let metrics = get(&format!("{}/metrics", daemon.http));
    let clones_gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vmedia_clones "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(clones_gauge, Some(CLONES as f64), "{metrics}");
    for name in &names {
        let gauge = metric_sum(
            &metrics,
            "vmedia_clone_bytes_written",
            &[&format!("clone=\"{name}\"")],
        );
        assert_eq!(gauge, written(name) as f64, "{name}: {metrics}");
    }

    // The base version is what was added, intact.
    let shown = library_json(&lib, &["show", "boot-disk"]);
    assert_eq!(shown["digest"], base_digest.as_str(), "{shown:#}");
    assert_eq!(shown["version"], 1, "{shown:#}");
    let verified = library_json(&lib, &["verify", "boot-disk"]);
    assert_eq!(
        verified["damaged_chunks"].as_array().map(Vec::len),
        Some(0),
        "{verified:#}"
    );

    // Committing c1 stores the chunks its write touched, nothing more.
    let c1_written = written("c1");
    let out = run_ok(support::vmedia().args([
        "clone",
        "commit",
        "c1",
        "--as",
        "boot-disk-c1",
        "--json",
        "--server",
        &daemon.http,
    ]));
    let commit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut expected = fs::read(&base).unwrap();
    let at = token_offset as usize;
    expected[at..at + 512].copy_from_slice(&token_sector("c1"));
    let expected_path = lib.path("c1-expected.raw");
    fs::write(&expected_path, &expected).unwrap();
    assert_eq!(
        commit["digest"],
        format!("sha256:{}", sha256_file(&expected_path)).as_str(),
        "{commit:#}"
    );
    let new_bytes = commit["new_bytes"].as_u64().unwrap();
    // A write changes the chunk it falls in and can move the next boundary: at most two
    // chunks of the largest size more than the bytes written.
    let bound = c1_written + 2 * u64::from(vmedia_library::CHUNKING.max);
    assert!(
        new_bytes > 0 && new_bytes <= bound,
        "commit stored {new_bytes} new bytes; c1 wrote {c1_written} (bound {bound}): {commit:#}"
    );
    eprintln!("clone c1 wrote {c1_written} bytes; its commit stored {new_bytes} new bytes (bound {bound})");
    let shown = library_json(&lib, &["show", "boot-disk"]);
    assert_eq!(shown["digest"], base_digest.as_str(), "{shown:#}");
}

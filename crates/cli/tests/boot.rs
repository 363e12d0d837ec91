//! `vmedia boot` against real firmware and boot loaders under QEMU/TCG: isolinux (BIOS) and
//! GRUB EFI (OVMF) from an ISO made by xorriso, disks converted by qemu-img to every format,
//! pxelinux and GRUB netboot over QEMU's TFTP, the direct-kernel fast path, and clean failures.

#[path = "support/boot.rs"]
mod boot_fixtures;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use boot_fixtures::{
    bootable_disk, hybrid_iso, live_iso_finding_its_medium, qemu_processes, tftp_root, LIVE_TOKEN,
};
use support::{payload, require_tool, run_any, sha256_file, vmedia, BOOT_MARKER};

/// TCG boots take 5-30 s here; the limit leaves room for a loaded machine.
const BOOT_TIMEOUT: &str = "240";

fn boot_cmd(home: &Path) -> Command {
    require_tool("qemu-system-x86_64");
    let mut cmd = vmedia();
    cmd.env("VMEDIA_HOME", home)
        .args(["boot", "--accel", "tcg", "--timeout", BOOT_TIMEOUT]);
    cmd
}

/// Runs `vmedia boot ... --json`; returns exit code, parsed report, stderr.
fn boot_json(cmd: &mut Command) -> (i32, serde_json::Value, String) {
    let (code, out, err) = run_any(cmd.arg("--json"));
    let report =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{out}\n{err}"));
    (code, report, err)
}

fn console_of(report: &serde_json::Value) -> String {
    let path = report["console_log"]
        .as_str()
        .expect("console_log in report");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read console log {path}: {e}"))
}

fn assert_booted(code: i32, report: &serde_json::Value, err: &str) {
    assert_eq!(code, 0, "boot failed: {report:#}\n{err}");
    assert_eq!(report["outcome"], "booted");
    assert_eq!(report["marker_text"], BOOT_MARKER);
    let marker = report["timeline"]["marker"].as_f64().unwrap();
    let kernel = report["timeline"]["first_kernel_output"].as_f64().unwrap();
    assert!(
        kernel <= marker,
        "the kernel spoke after the marker: {report:#}"
    );
}

#[test]
fn iso_boots_under_bios_through_isolinux() {
    let home = tempfile::tempdir().unwrap();
    let iso = hybrid_iso("cdrom");
    let (code, out, err) = run_any(
        boot_cmd(home.path())
            .arg("--cdrom")
            .arg(&iso)
            .args(["--expect", BOOT_MARKER]),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    for stage in [
        "VM started",
        "first firmware output",
        "firmware handed over",
        "first kernel output",
        "marker",
    ] {
        assert!(out.contains(stage), "timeline lacks {stage:?}:\n{out}");
    }
    assert!(!out.contains("not seen"), "a boot stage was missed:\n{out}");
    let log_path = out
        .lines()
        .find_map(|l| l.strip_prefix("console log: "))
        .unwrap();
    let console = std::fs::read_to_string(log_path).unwrap();
    assert!(
        console.contains("ISOLINUX"),
        "not booted by isolinux:\n{console}"
    );
    assert!(console.contains("vmedia.from=cdrom"));
}

#[test]
fn iso_boots_under_uefi_through_grub_efi() {
    let home = tempfile::tempdir().unwrap();
    let iso = hybrid_iso("cdrom");
    let (code, report, err) = boot_json(boot_cmd(home.path()).arg("--cdrom").arg(&iso).args([
        "--firmware",
        "uefi",
        "--expect",
        BOOT_MARKER,
    ]));
    assert_booted(code, &report, &err);
    let command = report["qemu_command"].to_string();
    assert!(command.contains("if=pflash"), "OVMF not used: {command}");
    let console = console_of(&report);
    assert!(console.contains("vmedia.from=cdrom"));
    assert!(
        !console.contains("ISOLINUX"),
        "UEFI must not go through isolinux"
    );
}

/// Boots the hybrid image as a disk in `format` and proves the image was not written to.
fn disk_boot(format: &str, qemu_name: &str, firmware: &str) {
    let home = tempfile::tempdir().unwrap();
    let disk = bootable_disk(format);
    let before = sha256_file(&disk);
    let (code, report, err) = boot_json(boot_cmd(home.path()).arg("--disk").arg(&disk).args([
        "--firmware",
        firmware,
        "--boot",
        "disk",
        "--expect",
        BOOT_MARKER,
    ]));
    assert_booted(code, &report, &err);
    let command: Vec<String> = serde_json::from_value(report["qemu_command"].clone()).unwrap();
    let drive = command
        .iter()
        .find(|a| a.starts_with("if=none,id=disk0"))
        .unwrap();
    assert!(
        drive.contains(&format!("format={qemu_name}")),
        "format not explicit: {drive}"
    );
    assert!(drive.contains("readonly=on"), "disk not read-only: {drive}");
    assert!(console_of(&report).contains("vmedia.from=disk"));
    assert_eq!(sha256_file(&disk), before, "the {format} image changed");
}

#[test]
fn vmdk_disk_boots_under_bios() {
    disk_boot("vmdk", "vmdk", "bios");
}

#[test]
fn vhd_disk_boots_under_uefi() {
    disk_boot("vpc", "vpc", "uefi");
}

#[test]
fn vhdx_disk_boots_under_bios() {
    disk_boot("vhdx", "vhdx", "bios");
}

#[test]
fn qcow2_disk_boots_under_uefi() {
    disk_boot("qcow2", "qcow2", "uefi");
}

#[test]
fn pxelinux_boots_from_qemu_user_network_tftp() {
    let home = tempfile::tempdir().unwrap();
    let tftp = tftp_root();
    let (code, report, err) = boot_json(
        boot_cmd(home.path())
            .args(["--net", "user", "--tftp"])
            .arg(&tftp)
            .args([
                "--bootfile",
                "pxelinux.0",
                "--boot",
                "net",
                "--expect",
                BOOT_MARKER,
            ]),
    );
    assert_booted(code, &report, &err);
    let console = console_of(&report);
    assert!(
        console.contains("PXELINUX"),
        "not booted by pxelinux:\n{console}"
    );
    assert!(console.contains("vmedia.from=net"));
}

#[test]
fn direct_fast_path_boots_the_isos_kernel_without_a_boot_loader() {
    let home = tempfile::tempdir().unwrap();
    let iso = hybrid_iso("cdrom");
    let (code, report, err) = boot_json(boot_cmd(home.path()).arg("--cdrom").arg(&iso).args([
        "--direct",
        "--expect",
        BOOT_MARKER,
    ]));
    assert_booted(code, &report, &err);
    let command: Vec<String> = serde_json::from_value(report["qemu_command"].clone()).unwrap();
    let at = command
        .iter()
        .position(|a| a == "-append")
        .expect("-append missing");
    assert!(
        command[at + 1].contains("vmedia.from=cdrom"),
        "isolinux APPEND not used: {}",
        command[at + 1]
    );
    assert!(command[at + 1].contains("console=ttyS0"));
    assert!(
        !command[at + 1].contains("initrd="),
        "initrd= must become -initrd"
    );
    assert!(command.iter().any(|a| a == "-initrd"));
    assert!(
        command.iter().any(|a| a.contains("ide-cd")),
        "the ISO must stay attached as a CD"
    );
    let kernel = &command[command.iter().position(|a| a == "-kernel").unwrap() + 1];
    assert!(
        kernel.ends_with(".vmlinux"),
        "the Debian kernel has a PVH entry: boot it uncompressed ({kernel})"
    );
    let console = console_of(&report);
    assert!(
        !console.contains("ISOLINUX"),
        "the fast path must skip isolinux"
    );
}

/// Regression: under UEFI the fast path handed OVMF the uncompressed vmlinux, which OVMF cannot
/// start (it runs kernels through their EFI stub), and the VM sat in the EFI shell.
#[test]
fn direct_fast_path_under_uefi_boots_the_kernel_through_its_efi_stub() {
    let home = tempfile::tempdir().unwrap();
    let iso = hybrid_iso("cdrom");
    let (code, report, err) = boot_json(boot_cmd(home.path()).arg("--cdrom").arg(&iso).args([
        "--direct",
        "--firmware",
        "uefi",
        "--expect",
        BOOT_MARKER,
    ]));
    assert_booted(code, &report, &err);
    let command: Vec<String> = serde_json::from_value(report["qemu_command"].clone()).unwrap();
    let kernel = &command[command.iter().position(|a| a == "-kernel").unwrap() + 1];
    assert!(
        !kernel.ends_with(".vmlinux"),
        "OVMF needs the bzImage: {kernel}"
    );
    assert!(err.contains("EFI stub"), "the reason is given: {err}");
    let console = console_of(&report);
    assert!(
        !console.contains("Welcome to GRUB") && !console.contains("Shell>"),
        "the kernel must start directly, not the ISO's GRUB or the EFI shell:\n{console}"
    );
    assert!(
        console.contains("vmedia.from=cdrom"),
        "the ISO's command line reached the kernel:\n{console}"
    );
}

/// The lean machine of `--direct` (qboot, no HPET, initrd decompressed on the host, added
/// kernel parameters) must still give the live system its medium: the guest's /init loads the
/// AHCI and CD drivers, mounts /dev/sr0 and prints a file from it and the CD's size.
#[test]
fn direct_lean_machine_live_system_finds_its_cd() {
    let home = tempfile::tempdir().unwrap();
    let iso = live_iso_finding_its_medium();
    let (code, report, err) = boot_json(
        boot_cmd(home.path())
            .arg("--cdrom")
            .arg(&iso)
            .args(["--direct", "--append", "tsc=unstable vmedia.user=1"])
            .args(["--expect", r"CDSIZE [0-9]+ sectors"]),
    );
    assert_eq!(code, 0, "boot failed: {report:#}\n{err}");
    let console = console_of(&report);
    assert!(
        console.contains(&format!("CDFILE {LIVE_TOKEN}")),
        "the guest did not read its medium:\n{console}"
    );
    let sectors: u64 = console
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("CDSIZE ")
                .and_then(|n| n.strip_suffix(" sectors"))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no CD size on the console:\n{console}"));
    let iso_bytes = std::fs::metadata(&iso).unwrap().len();
    assert_eq!(
        sectors * 512,
        iso_bytes,
        "the guest's CD is not the ISO (sr0 {sectors} sectors)"
    );
    let command: Vec<String> = serde_json::from_value(report["qemu_command"].clone()).unwrap();
    let after = |flag: &str| {
        let at = command
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} missing: {command:?}"));
        command[at + 1].clone()
    };
    assert!(
        report["timeline"]["first_firmware_output"].is_null(),
        "qboot is silent: the first output was the guest's, not firmware output: {report:#}"
    );
    assert!(
        after("-machine").contains("hpet=off"),
        "lean machine: {command:?}"
    );
    assert!(
        after("-bios").ends_with("qboot.rom"),
        "qboot (qemu-system-data) is installed here: {command:?}"
    );
    let initrd = after("-initrd");
    assert!(
        initrd.ends_with(".cpio"),
        "the gzip initrd is decompressed on the host: {initrd}"
    );
    let plain = std::fs::read(&initrd).unwrap();
    assert!(plain.starts_with(b"070701"), "not a plain cpio: {initrd}");
    let append = after("-append");
    assert!(append.contains("vmedia.from=direct"), "{append}");
    assert!(append.contains("cryptomgr.notests"), "{append}");
    assert!(append.contains("no_timer_check"), "{append}");
    assert!(
        append.contains("tsc=unstable") && !append.contains("tsc=reliable"),
        "the user's --append has the last word: {append}"
    );
    assert!(
        append.ends_with(
            "tsc=unstable vmedia.user=1 cryptomgr.notests no_timer_check mitigations=off"
        ),
        "--append goes after the ISO's line, the TCG-only mitigations=off last: {append}"
    );
}

#[test]
fn direct_refuses_an_iso_without_linux_boot_config() {
    let home = tempfile::tempdir().unwrap();
    let tree = home.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("README.TXT"), "data only\n").unwrap();
    let iso = home.path().join("data.iso");
    support::run_ok(
        Command::new(require_tool("xorriso"))
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(&iso)
            .arg(&tree),
    );
    let (code, _, err) = run_any(
        boot_cmd(home.path())
            .arg("--cdrom")
            .arg(&iso)
            .args(["--direct", "--expect", "x"]),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a Linux ISO"), "{err}");
}

#[test]
fn missing_image_is_a_clear_error_before_qemu_starts() {
    let home = tempfile::tempdir().unwrap();
    let (code, _, err) =
        run_any(boot_cmd(home.path()).args(["--cdrom", "/nonexistent/x.iso", "--expect", "x"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/x.iso") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn broken_images_are_refused_with_the_reason() {
    let home = tempfile::tempdir().unwrap();
    let garbage = home.path().join("garbage.iso");
    std::fs::write(&garbage, vec![0x5a; 64 * 1024]).unwrap();
    let (code, _, err) = run_any(
        boot_cmd(home.path())
            .arg("--cdrom")
            .arg(&garbage)
            .args(["--expect", "x"]),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("garbage.iso") && err.contains("not an ISO 9660"),
        "{err}"
    );
    let truncated = home.path().join("cut.qcow2");
    std::fs::write(&truncated, b"QFI\xfb\0\0\0\x03").unwrap();
    let (code, _, err) = run_any(
        boot_cmd(home.path())
            .arg("--disk")
            .arg(&truncated)
            .args(["--expect", "x"]),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cut.qcow2") && err.contains("truncated"),
        "{err}"
    );
}

/// The keys of a pretty-printed JSON object at `indent` spaces, in the order printed.
fn keys_at(text: &str, indent: usize) -> Vec<String> {
    let prefix = format!("{}\"", " ".repeat(indent));
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once("\":").map(|(k, _)| k.to_string()))
        .collect()
}

/// A stand-in for QEMU, named by VMEDIA_QEMU: prints a kernel banner and the marker, then
/// waits to be stopped.
fn fake_qemu(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-qemu");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf 'Linux version 6.1.0 (fake)\\n{BOOT_MARKER}\\n'\nexec sleep 60\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn boot_json_keeps_its_shape_and_runs_the_qemu_vmedia_qemu_names() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = fake_qemu(dir.path());
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"not run by the fake").unwrap();
    let mut cmd = vmedia();
    cmd.env("VMEDIA_HOME", dir.path().join("home"))
        .env("VMEDIA_QEMU", &qemu)
        .args([
            "boot",
            "--accel",
            "tcg",
            "--timeout",
            "60",
            "--expect",
            BOOT_MARKER,
        ])
        .arg("--kernel")
        .arg(&kernel)
        .arg("--json");
    let (code, out, err) = run_any(&mut cmd);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        keys_at(&out, 2),
        [
            "accel",
            "console_log",
            "console_tail",
            "marker_text",
            "outcome",
            "qemu_command",
            "qemu_exit",
            "timeline",
            "total_seconds"
        ]
    );
    assert_eq!(
        keys_at(&out, 4),
        [
            "first_firmware_output",
            "first_kernel_output",
            "firmware_handover",
            "guest_panic",
            "marker",
            "vm_started"
        ]
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["outcome"], "booted");
    assert_eq!(report["accel"], "tcg");
    assert_eq!(report["marker_text"], BOOT_MARKER);
    assert!(report["console_tail"].is_null() && report["qemu_exit"].is_null());
    assert_eq!(report["timeline"]["vm_started"], 0.0);
    assert!(report["timeline"]["guest_panic"].is_null());
    assert!(report["timeline"]["marker"].as_f64().unwrap() >= 0.0);
    assert!(report["total_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(report["qemu_command"][0], qemu.to_str().unwrap());
    assert!(std::path::Path::new(report["console_log"].as_str().unwrap()).is_file());
}

#[test]
fn vmedia_qemu_that_does_not_exist_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"x").unwrap();
    let missing = dir.path().join("no-such-qemu");
    let mut cmd = vmedia();
    cmd.env("VMEDIA_HOME", dir.path().join("home"))
        .env("VMEDIA_QEMU", &missing)
        .args(["boot", "--accel", "tcg", "--timeout", "10", "--expect", "x"])
        .arg("--kernel")
        .arg(&kernel);
    let (code, _, err) = run_any(&mut cmd);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot start") && err.contains("no-such-qemu"),
        "{err}"
    );
}

/// Runs vmedia boot in the background, returning its child and the QEMU name it will use.
fn spawn_boot(cmd: &mut Command) -> (std::process::Child, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let name = format!("boot-{},process=vmedia-boot", child.id());
    (child, name)
}

/// Waits until the QEMU of a background `vmedia boot` runs, so "none left" checks mean something.
fn wait_for_qemu(name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while qemu_processes(name).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU {name} never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn timeout_exits_4_with_the_console_tail_and_no_qemu_left() {
    let home = tempfile::tempdir().unwrap();
    let iso = hybrid_iso("cdrom");
    let mut cmd = vmedia();
    cmd.env("VMEDIA_HOME", home.path())
        .args([
            "boot",
            "--accel",
            "tcg",
            "--timeout",
            "4",
            "--expect",
            "NEVER-PRINTED",
        ])
        .arg("--cdrom")
        .arg(&iso);
    let (child, name) = spawn_boot(&mut cmd);
    wait_for_qemu(&name);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("time-out"), "{err}");
    // The tail holds whatever the guest printed last (SeaBIOS on a slow host, kernel messages
    // on a fast one): require the heading and at least one console line after it.
    let tail: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.contains("last console lines"))
        .skip(1)
        .collect();
    assert!(
        tail.iter()
            .any(|l| l.contains("SeaBIOS") || l.contains("] ")),
        "no console tail:\n{err}"
    );
    assert!(
        qemu_processes(&name).is_empty(),
        "QEMU left behind: {:?}",
        qemu_processes(&name)
    );
}

#[test]
fn kernel_panic_exits_5_and_stops_the_vm() {
    let home = tempfile::tempdir().unwrap();
    // The uncompressed kernel reaches its panic without ~5 CPU seconds of decompression (the
    // bzImage's own --kernel boot is proven by auto_accel_never_hangs_the_first_boot...).
    let kernel = support::payload_vmlinux();
    let mut cmd = boot_cmd(home.path());
    cmd.arg("--kernel").arg(&kernel).args([
        "--append",
        "console=ttyS0 panic=-1 init=/nonexistent",
        "--expect",
        BOOT_MARKER,
    ]);
    let (child, name) = spawn_boot(&mut cmd);
    wait_for_qemu(&name);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("panicked") || err.contains("VM ended"),
        "{err}"
    );
    assert!(
        err.contains("Kernel panic"),
        "the tail must show the panic:\n{err}"
    );
    assert!(qemu_processes(&name).is_empty(), "QEMU left behind");
}

#[test]
fn sigterm_stops_the_vm_and_exits_130() {
    let home = tempfile::tempdir().unwrap();
    let iso = hybrid_iso("cdrom");
    let mut cmd = boot_cmd(home.path());
    cmd.arg("--cdrom")
        .arg(&iso)
        .args(["--expect", "NEVER-PRINTED"]);
    let (child, name) = spawn_boot(&mut cmd);
    wait_for_qemu(&name);
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(qemu_processes(&name).is_empty(), "QEMU left behind");
}

#[test]
fn auto_accel_never_hangs_the_first_boot_and_caches_the_kvm_verdict() {
    let home = tempfile::tempdir().unwrap();
    let p = payload();
    let mut cmd = vmedia();
    cmd.env("VMEDIA_HOME", home.path())
        .args([
            "boot",
            "--accel",
            "auto",
            "--timeout",
            BOOT_TIMEOUT,
            "--kernel",
        ])
        .arg(&p.kernel)
        .arg("--initrd")
        .arg(&p.initrd)
        .args(["--append", "console=ttyS0", "--expect", BOOT_MARKER]);
    let (code, report, err) = boot_json(&mut cmd);
    assert_booted(code, &report, &err);
    let cache =
        std::fs::read_to_string(home.path().join("kvm-probe.json")).expect("verdict cached");
    let verdict: serde_json::Value = serde_json::from_str(&cache).unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(verdict["boot_id"], boot_id.trim());
    if verdict["works"] == false {
        assert_eq!(report["accel"], "tcg");
        assert!(
            err.contains("KVM not used"),
            "the TCG fallback needs a note: {err}"
        );
    } else {
        assert_eq!(report["accel"], "kvm");
    }
}

#[test]
fn direct_argument_errors_come_before_the_kvm_probe() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("README.TXT"), "data\n").unwrap();
    let iso = dir.path().join("data.iso");
    support::run_ok(
        vmedia()
            .args(["iso", "create"])
            .arg(&tree)
            .arg("-o")
            .arg(&iso),
    );
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, vec![0u8; 4096]).unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    // Any QEMU run (the probe's) would leave this file.
    let ran = dir.path().join("qemu-ran");
    let qemu = dir.path().join("qemu");
    std::fs::write(
        &qemu,
        format!("#!/bin/sh\ntouch '{}'\nexit 1\n", ran.display()),
    )
    .unwrap();
    std::fs::set_permissions(&qemu, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cases: [(Vec<std::ffi::OsString>, &str); 2] = [
        (
            vec![
                "--cdrom".into(),
                iso.clone().into(),
                "--kernel".into(),
                kernel.into(),
            ],
            "do not give --kernel too",
        ),
        (
            vec![
                "--disk".into(),
                format!("{},format=raw", disk.display()).into(),
            ],
            "--direct needs a Linux ISO given with --cdrom",
        ),
    ];
    for (args, expected) in cases {
        let (code, _, err) = run_any(
            vmedia()
                .env("VMEDIA_HOME", &home)
                .env("VMEDIA_QEMU", &qemu)
                .args(["boot", "--accel", "auto", "--direct", "--expect", "x"])
                .args(&args),
        );
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(expected), "{expected:?} not in {err}");
        assert!(
            !home.join("kvm-probe.json").exists() && !ran.exists(),
            "KVM was probed before the argument error: {err}"
        );
    }
}

#[test]
fn clear_cache_empties_the_direct_cache() {
    let home = tempfile::tempdir().unwrap();
    let kernels = home.path().join("kernels");
    let initrds = home.path().join("initrds");
    std::fs::create_dir_all(&kernels).unwrap();
    std::fs::create_dir_all(&initrds).unwrap();
    std::fs::write(kernels.join("a.vmlinux"), vec![1u8; 3000]).unwrap();
    std::fs::write(initrds.join("b.cpio"), vec![2u8; 2000]).unwrap();
    let (code, out, err) = run_any(
        vmedia()
            .env("VMEDIA_HOME", home.path())
            .args(["boot", "--clear-cache"]),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("removed 2 cached file(s), 5000 bytes"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(&kernels).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&initrds).unwrap().count(), 0);
    // Nothing else is allowed beside it.
    let (code, _, err) = run_any(vmedia().env("VMEDIA_HOME", home.path()).args([
        "boot",
        "--clear-cache",
        "--cdrom",
        "x.iso",
    ]));
    assert_eq!(code, 2, "{err}");
}

//! Managed VMs (`vmedia vm`) under QEMU/TCG: the stored TOML, background start, state read from
//! the live process, one-time boot under BIOS (pxelinux) and UEFI (GRUB netboot) followed by
//! the normal disk boot, live CD insert/eject seen by a running Linux guest, stop and kill.

#[path = "support/boot.rs"]
mod boot_fixtures;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use boot_fixtures::{
    bootable_disk, hybrid_iso, initrd_with_block_drivers, qemu_processes, tftp_root, GuestShell,
};
use support::{payload_vmlinux, require_tool, run_any, run_ok, BOOT_MARKER};

/// A TCG boot here takes 5-30 s; guests get this long to reach their marker.
const GUEST_WAIT: Duration = Duration::from_secs(240);

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        require_tool("qemu-system-x86_64");
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn vm(&self) -> Command {
        let mut cmd = support::vmedia();
        cmd.env("VMEDIA_HOME", self.dir.path()).arg("vm");
        cmd
    }
    fn ok(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run_ok(self.vm().args(args)).stdout).into_owned()
    }
    fn vm_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("vms").join(name)
    }
    fn log(&self, name: &str) -> String {
        self.ok(&["log", name])
    }
    fn state(&self, name: &str) -> String {
        let list: serde_json::Value = serde_json::from_str(&self.ok(&["list", "--json"])).unwrap();
        let row = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .expect("VM listed");
        row["state"].as_str().unwrap().to_string()
    }
    /// Waits for the guest to power itself off (the payload does after its marker).
    fn wait_stopped(&self, name: &str) {
        let deadline = Instant::now() + GUEST_WAIT;
        while self.state(name) != "stopped" {
            assert!(
                Instant::now() < deadline,
                "VM {name} still runs; console:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    fn wait_log(&self, name: &str, needle: &str) {
        let deadline = Instant::now() + GUEST_WAIT;
        while !self.log(name).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared; console:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Never leave a VM running when a test fails half-way.
        if let Ok(names) = std::fs::read_dir(self.dir.path().join("vms")) {
            for name in names.flatten() {
                let _ = self.vm().arg("kill").arg(name.file_name()).output();
            }
        }
    }
}

fn no_qemu_left(home: &Home, name: &str) {
    let socket = home.vm_dir(name).join("qmp.sock");
    let left = qemu_processes(&socket.to_string_lossy());
    assert!(left.is_empty(), "QEMU left behind: {left:?}");
}

#[test]
fn managed_vm_lifecycle_with_state_from_the_live_process() {
    let home = Home::new();
    let iso = hybrid_iso("cdrom");
    let out = home.ok(&[
        "create",
        "life",
        "--cdrom",
        iso.to_str().unwrap(),
        "--memory",
        "512",
        "--accel",
        "tcg",
    ]);
    assert!(out.contains("created VM life"), "{out}");
    let toml_text = std::fs::read_to_string(home.vm_dir("life").join("vm.toml")).unwrap();
    assert!(
        toml_text.contains("memory_mib = 512") && toml_text.contains(iso.to_str().unwrap()),
        "{toml_text}"
    );
    assert_eq!(home.state("life"), "stopped");

    let started = Instant::now();
    let out = home.ok(&["start", "life"]);
    assert!(out.contains("started VM life"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "start must return once QEMU runs"
    );
    let (code, _, err) = run_any(home.vm().args(["start", "life"]));
    assert_ne!(code, 0);
    assert!(err.contains("already running"), "{err}");
    let show: serde_json::Value =
        serde_json::from_str(&home.ok(&["show", "life", "--json"])).unwrap();
    assert_eq!(show["config"]["memory_mib"], 512);

    // The payload powers off after its marker: the VM must then show as stopped.
    home.wait_log("life", BOOT_MARKER);
    home.wait_stopped("life");
    no_qemu_left(&home, "life");
    assert!(home.log("life").contains("vmedia.from=cdrom"));

    home.ok(&["rm", "life"]);
    assert!(!home.vm_dir("life").exists());
    let (code, _, err) = run_any(home.vm().args(["show", "life"]));
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
}

/// A VM that boots the disk normally boots the network once, then the disk again.
fn boot_once_net_then_disk(firmware: &str, bootfile: &str, disk_format: &str) {
    let home = Home::new();
    let name = format!("once-{firmware}");
    let disk = bootable_disk(disk_format);
    let tftp = tftp_root();
    home.ok(&[
        "create",
        &name,
        "--firmware",
        firmware,
        "--accel",
        "tcg",
        "--boot",
        "disk,net",
        "--disk",
        disk.to_str().unwrap(),
        "--net",
        "user",
        "--tftp",
        tftp.to_str().unwrap(),
        "--bootfile",
        bootfile,
    ]);
    home.ok(&["boot-once", &name, "net"]);
    let out = home.ok(&["start", &name]);
    assert!(
        out.contains("boot order net,disk") && out.contains("net once"),
        "{out}"
    );
    home.wait_stopped(&name);
    let first = home.log(&name);
    assert!(
        first.contains("vmedia.from=net") && first.contains(BOOT_MARKER),
        "one-time net boot did not happen:\n{first}"
    );
    assert!(!first.contains("vmedia.from=disk"));

    let toml_text = std::fs::read_to_string(home.vm_dir(&name).join("vm.toml")).unwrap();
    assert!(
        !toml_text.contains("boot_once"),
        "the one-time device must be cleared:\n{toml_text}"
    );
    let out = home.ok(&["start", &name]);
    assert!(
        out.contains("boot order disk,net") && !out.contains("net once"),
        "{out}"
    );
    home.wait_stopped(&name);
    let second = home.log(&name);
    let new_part = &second[first.len()..];
    assert!(
        new_part.contains("vmedia.from=disk") && new_part.contains(BOOT_MARKER),
        "second start did not boot the disk:\n{new_part}"
    );
    assert!(!new_part.contains("vmedia.from=net"));
    no_qemu_left(&home, &name);
}

#[test]
fn boot_once_network_then_disk_under_bios() {
    boot_once_net_then_disk("bios", "pxelinux.0", "qcow2");
}

#[test]
fn boot_once_network_then_disk_under_uefi() {
    boot_once_net_then_disk("uefi", "grubnet.efi", "vmdk");
}

fn shell_vm(home: &Home, name: &str, extra: &[&str]) -> GuestShell {
    // The uncompressed kernel: these guests prove what the VM's drives do, and the bzImage
    // would spend ~5 CPU seconds of TCG decompressing itself first.
    let kernel = payload_vmlinux();
    let initrd = initrd_with_block_drivers();
    let mut args = vec![
        "create",
        name,
        "--accel",
        "tcg",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        "console=ttyS0 no_timer_check vmedia.shell",
    ];
    args.extend_from_slice(extra);
    home.ok(&args);
    home.ok(&["start", name]);
    home.wait_log(name, BOOT_MARKER);
    let mut shell = GuestShell::connect(&home.vm_dir(name).join("serial.sock"));
    // Kernel messages (I/O errors of an empty drive) would interleave with command output.
    shell.run("dmesg -n 1", Duration::from_secs(60));
    shell
}

/// Reads the first sector of the guest's CD drive: "READ-OK" or the error.
const READ_CD: &str = "dd if=/dev/sr0 of=/dev/null bs=2048 count=1 2>&1 | grep -q 'No medium' && echo NO-MEDIUM || echo SIZE=$(cat /sys/block/sr0/size)";

#[test]
fn live_media_insert_and_eject_are_seen_by_the_running_guest() {
    let home = Home::new();
    let iso = hybrid_iso("cdrom");
    let mut shell = shell_vm(&home, "live", &["--cdrom-slots", "1"]);
    let wait = Duration::from_secs(60);
    assert_eq!(
        shell.run(READ_CD, wait),
        "NO-MEDIUM",
        "the empty drive must have no medium"
    );

    let out = home.ok(&["insert", "live", "--slot", "0", iso.to_str().unwrap()]);
    assert!(out.contains("(now)"), "{out}");
    let seen = shell.run(READ_CD, wait);
    let sectors: u64 = seen
        .strip_prefix("SIZE=")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(
        sectors * 512,
        std::fs::metadata(&iso).unwrap().len(),
        "guest sees {seen:?}"
    );
    assert!(std::fs::read_to_string(home.vm_dir("live").join("vm.toml"))
        .unwrap()
        .contains(iso.to_str().unwrap()));

    // A mounted disc locks the tray: eject is refused with advice, --force ejects anyway.
    let listing = shell.run(
        "mkdir -p /mnt/cd && mount -t iso9660 /dev/sr0 /mnt/cd && ls /mnt/cd",
        wait,
    );
    assert!(listing.contains("isolinux"), "{listing}");
    let (code, _, err) = run_any(home.vm().args(["eject", "live", "--slot", "0"]));
    assert_eq!(code, 1);
    assert!(err.contains("locked") && err.contains("--force"), "{err}");
    home.ok(&["eject", "live", "--slot", "0", "--force"]);
    shell.run("umount /mnt/cd 2>/dev/null; true", wait);
    assert_eq!(
        shell.run(READ_CD, wait),
        "NO-MEDIUM",
        "the medium must be gone after eject"
    );

    // Inserting again and ejecting without a lock works without --force.
    home.ok(&["insert", "live", iso.to_str().unwrap()]);
    assert!(shell.run(READ_CD, wait).starts_with("SIZE="));
    home.ok(&["eject", "live"]);
    assert_eq!(shell.run(READ_CD, wait), "NO-MEDIUM");

    let out = home.ok(&["stop", "live", "--grace", "2"]);
    assert!(
        out.contains("forced off") || out.contains("shut down"),
        "{out}"
    );
    assert_eq!(home.state("live"), "stopped");
    no_qemu_left(&home, "live");
}

#[test]
fn read_only_disk_is_write_protected_in_the_guest() {
    let home = Home::new();
    let disk = bootable_disk("vhdx");
    let writable = home.dir.path().join("rw.qcow2");
    std::fs::copy(bootable_disk("qcow2"), &writable).unwrap();
    let mut shell = shell_vm(
        &home,
        "disks",
        &[
            "--disk",
            disk.to_str().unwrap(),
            "--disk-rw",
            writable.to_str().unwrap(),
        ],
    );
    let wait = Duration::from_secs(60);
    assert_eq!(
        shell.run(
            "cat /sys/block/vda/ro /sys/block/vdb/ro | tr '\\n' ' '",
            wait
        ),
        "1 0"
    );
    let refused = shell.run(
        "echo x | dd of=/dev/vda bs=512 count=1 conv=fsync 2>&1 | head -1",
        wait,
    );
    assert!(
        refused.contains("Operation not permitted") || refused.contains("Read-only"),
        "{refused}"
    );

    // `vm console` with piped input: what is typed reaches the guest shell, its answer comes back.
    drop(shell);
    let mut console = home
        .vm()
        .args(["console", "disks"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stdin stays open until the answer came back (or GUEST_WAIT passed): closing it ends
    // `vm console`, and a fixed pause was either too short on a loaded host or wasted time.
    let stdin = console.stdin.take().unwrap();
    let stdout = console.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut stdout = stdout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
                }
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    {
        use std::io::Write;
        let mut stdin = stdin;
        stdin.write_all(b"echo CONSOLE-$((6*7))\n").unwrap();
        let deadline = Instant::now() + GUEST_WAIT;
        while let Ok(seen) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if seen.contains("CONSOLE-42") {
                break;
            }
        }
    }
    console.wait().unwrap();
    let out = reader.join().unwrap();
    assert!(out.contains("CONSOLE-42"), "console: {out}");
    home.ok(&["kill", "disks"]);
    assert_eq!(home.state("disks"), "stopped");
    no_qemu_left(&home, "disks");
}

#[test]
fn start_with_a_vanished_medium_fails_clearly() {
    let home = Home::new();
    let iso = home.dir.path().join("gone.iso");
    std::fs::copy(hybrid_iso("cdrom"), &iso).unwrap();
    home.ok(&[
        "create",
        "gone",
        "--cdrom",
        iso.to_str().unwrap(),
        "--accel",
        "tcg",
    ]);
    std::fs::remove_file(&iso).unwrap();
    let (code, _, err) = run_any(home.vm().args(["start", "gone"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("gone.iso") && err.contains("No such file"),
        "{err}"
    );
    assert_eq!(home.state("gone"), "stopped");
}

#[test]
fn create_refuses_bad_names_and_too_many_cd_slots() {
    let home = Home::new();
    let (code, _, err) = run_any(home.vm().args(["create", "../evil"]));
    assert_eq!(code, 1);
    assert!(err.contains("VM name"), "{err}");
    let (code, _, err) = run_any(home.vm().args(["create", "many", "--cdrom-slots", "7"]));
    assert_eq!(code, 1);
    assert!(err.contains("at most 6"), "{err}");
    assert!(!Path::new(&home.vm_dir("many")).exists());
}

#[test]
fn list_and_show_json_keep_their_shape() {
    let home = Home::new();
    home.ok(&["create", "shape", "--cdrom-slots", "1", "--memory", "256"]);
    let list = home.ok(&["list", "--json"]);
    assert_eq!(
        list.trim_end(),
        "[\n  {\n    \"name\": \"shape\",\n    \"pid\": null,\n    \"state\": \"stopped\"\n  }\n]"
    );
    let show = home.ok(&["show", "shape", "--json"]);
    let keys: Vec<&str> = show
        .lines()
        .filter_map(|l| l.strip_prefix("  \""))
        .filter_map(|l| l.split_once("\":").map(|(k, _)| k))
        .collect();
    assert_eq!(
        keys,
        [
            "boot_once",
            "config",
            "folder",
            "name",
            "pid",
            "qemu_status",
            "serial_log",
            "state"
        ]
    );
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["name"], "shape");
    assert_eq!(show["state"], "stopped");
    assert!(show["pid"].is_null() && show["qemu_status"].is_null() && show["boot_once"].is_null());
    assert_eq!(show["config"]["memory_mib"], 256);
    assert_eq!(
        Path::new(show["folder"].as_str().unwrap()),
        home.vm_dir("shape")
    );
    assert_eq!(
        Path::new(show["serial_log"].as_str().unwrap()),
        home.vm_dir("shape").join("serial.log")
    );
}

#[test]
fn reboot_after_a_one_time_boot_uses_the_stored_order_again() {
    let home = Home::new();
    // A network boot whose kernel panics and reboots (panic=1): the reboot in the same run must
    // boot the disk, because vmedia restored the stored bootindex order once QEMU was up.
    let tftp = home.dir.path().join("tftp");
    std::fs::create_dir_all(tftp.join("pxelinux.cfg")).unwrap();
    let fixture = tftp_root();
    for file in ["pxelinux.0", "ldlinux.c32", "vmlinuz", "initrd.gz"] {
        std::fs::copy(fixture.join(file), tftp.join(file)).unwrap();
    }
    std::fs::write(
        tftp.join("pxelinux.cfg/default"),
        "serial 0 115200\ndefault linux\nprompt 0\ntimeout 0\nlabel linux\n kernel vmlinuz\n append initrd=initrd.gz console=ttyS0 no_timer_check vmedia.from=net rdinit=/nonexistent panic=1\n",
    )
    .unwrap();
    let disk = bootable_disk("qcow2");
    home.ok(&[
        "create",
        "reboot",
        "--accel",
        "tcg",
        "--boot",
        "disk,net",
        "--disk",
        disk.to_str().unwrap(),
        "--net",
        "user",
        "--tftp",
        tftp.to_str().unwrap(),
        "--bootfile",
        "pxelinux.0",
    ]);
    home.ok(&["boot-once", "reboot", "net"]);
    let (code, _, err) = run_any(home.vm().args(["start", "reboot"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("repeats the one-time device"),
        "bootindex not restored: {err}"
    );
    home.wait_stopped("reboot");
    let log = home.log("reboot");
    let net = log
        .find("vmedia.from=net")
        .expect("the one-time network boot did not happen");
    let disk_boot = log
        .find("vmedia.from=disk")
        .expect("the reboot did not boot the disk");
    assert!(
        net < disk_boot && log[disk_boot..].contains(BOOT_MARKER),
        "{log}"
    );
    let net_boots = log
        .lines()
        .filter(|l| l.contains("] Command line:") && l.contains("vmedia.from=net"))
        .count();
    assert_eq!(
        net_boots, 1,
        "the network was booted {net_boots} times:\n{log}"
    );
    no_qemu_left(&home, "reboot");
}

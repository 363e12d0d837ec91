//! `vmedia multiboot`: one stick image holding two different live ISOs (a Debian-style
//! isolinux/GRUB ISO made by vmedia, booted through `findiso=`; an ISO of another layout made by
//! xorriso, booted through its own loopback.cfg) boots each to its own marker under SeaBIOS
//! and under OVMF; `add`, `remove`, `ls` and `default` change and read it; sgdisk, fdisk,
//! mdir and fsck.fat find its partitions clean.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use support::{
    cached_fixture, payload, qemu_boot, require_tool, run_any, run_ok, vmedia, Firmware,
};

/// What the shared initramfs prints after the arguments that tell it which ISO booted it.
const END_MARKER: &str = "MB-END";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

struct Fixture {
    /// Debian-style live ISO (isolinux and GRUB configs, /live kernel), made by vmedia.
    live: PathBuf,
    /// Another layout (/boot/x86_64/loader) with its own /boot/grub/loopback.cfg, by xorriso.
    other: PathBuf,
    /// A third ISO for `add` (the live ISO under another name).
    extra: PathBuf,
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, text).unwrap();
}

/// The two ISOs, built once per machine. Both carry the host's Debian kernel and one tiny
/// busybox initramfs whose /init prints the arguments naming the ISO, then `MB-END`.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = cached_fixture("multiboot-isos", |dir| {
            let p = payload();
            let ird = dir.join("initramfs");
            fs::create_dir_all(ird.join("bin")).unwrap();
            fs::create_dir_all(ird.join("proc")).unwrap();
            fs::copy(require_tool("busybox"), ird.join("bin/busybox")).unwrap();
            write(
                &ird.join("init"),
                "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\nfor a in $(/bin/busybox cat /proc/cmdline); do case $a in vmedia.iso=*|findiso=*|iso_path=*) echo \"MB-ARG $a\";; esac; done\necho MB-END\n/bin/busybox poweroff -f\n",
            );
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(ird.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
            run_ok(
                Command::new("sh")
                    .arg("-c")
                    .arg("cd initramfs && find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz")
                    .current_dir(dir),
            );
            fs::remove_dir_all(&ird).unwrap();
            let initrd = dir.join("initrd.gz");

            let a = dir.join("tree-live");
            fs::create_dir_all(a.join("isolinux")).unwrap();
            fs::create_dir_all(a.join("live")).unwrap();
            fs::copy("/usr/lib/ISOLINUX/isolinux.bin", a.join("isolinux/isolinux.bin"))
                .expect("isolinux not installed: run scripts/setup.sh");
            fs::copy(
                "/usr/lib/syslinux/modules/bios/ldlinux.c32",
                a.join("isolinux/ldlinux.c32"),
            )
            .expect("syslinux-common not installed: run scripts/setup.sh");
            fs::copy(&p.kernel, a.join("live/vmlinuz")).unwrap();
            fs::copy(&initrd, a.join("live/initrd.img")).unwrap();
            // Debian live-boot's shape: isolinux.cfg includes live.cfg, GRUB names the same.
            write(&a.join("isolinux/isolinux.cfg"), "prompt 0\ntimeout 0\ninclude live.cfg\ndefault live\n");
            write(
                &a.join("isolinux/live.cfg"),
                "label live\n kernel /live/vmlinuz\n append initrd=/live/initrd.img boot=live components console=ttyS0 no_timer_check vmedia.iso=live\n",
            );
            write(
                &a.join("boot/grub/grub.cfg"),
                "set timeout=0\nmenuentry 'Live' {\n linux /live/vmlinuz boot=live components console=ttyS0 no_timer_check vmedia.iso=live findiso=${iso_path}\n initrd /live/initrd.img\n}\n",
            );
            run_ok(
                vmedia()
                    .args(["mkisofs", "-quiet", "-R", "-J", "-V", "DEBIAN_LIVE"])
                    .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
                    .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", "-o"])
                    .arg(dir.join("debian-live.iso"))
                    .arg(&a),
            );

            let b = dir.join("tree-other");
            fs::create_dir_all(b.join("boot/x86_64/loader")).unwrap();
            fs::copy(&p.kernel, b.join("boot/x86_64/loader/linux")).unwrap();
            fs::copy(&initrd, b.join("boot/x86_64/loader/initrd")).unwrap();
            write(
                &b.join("boot/grub/loopback.cfg"),
                "set timeout=0\nset default=0\nmenuentry 'Other layout' {\n linux /boot/x86_64/loader/linux console=ttyS0 no_timer_check vmedia.iso=other iso_path=${iso_path}\n initrd /boot/x86_64/loader/initrd\n}\n",
            );
            run_ok(
                Command::new(require_tool("xorriso"))
                    .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", "OTHER_LAYOUT", "-o"])
                    .arg(dir.join("other-layout.iso"))
                    .arg(&b),
            );
            fs::copy(dir.join("debian-live.iso"), dir.join("extra.iso")).unwrap();
            fs::remove_dir_all(&a).unwrap();
            fs::remove_dir_all(&b).unwrap();
        });
        Fixture {
            live: dir.join("debian-live.iso"),
            other: dir.join("other-layout.iso"),
            extra: dir.join("extra.iso"),
        }
    })
}

fn ls_json(stick: &Path) -> serde_json::Value {
    let out = run_ok(vmedia().args(["multiboot", "ls", "--json"]).arg(stick));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn iso_names(stick: &Path) -> Vec<String> {
    ls_json(stick)["record"]["isos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

/// Boots the stick (read-only: QEMU's snapshot mode) and returns the MB-ARG lines.
fn boot_args(stick: &Path, firmware: Firmware) -> Vec<String> {
    let drive = format!("file={},format=raw,if=virtio,snapshot=on", stick.display());
    let log = qemu_boot(firmware, &["-drive", &drive], END_MARKER, BOOT_TIMEOUT);
    let mut args: Vec<String> = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("MB-ARG "))
        .map(str::to_string)
        .collect();
    args.sort();
    args
}

/// Each (firmware) boot on its own thread: two TCG guests fit the two cores.
fn boot_both(stick: &Path) -> (Vec<String>, Vec<String>) {
    std::thread::scope(|s| {
        let bios = s.spawn(|| boot_args(stick, Firmware::Bios));
        let uefi = s.spawn(|| boot_args(stick, Firmware::Uefi));
        (bios.join().unwrap(), uefi.join().unwrap())
    })
}

#[test]
fn two_live_isos_boot_from_one_stick_under_seabios_and_ovmf() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick.img");
    run_ok(
        vmedia()
            .args([
                "multiboot",
                "create",
                "-q",
                "--timeout",
                "0",
                "--default",
                "debian-live.iso",
                "-o",
            ])
            .arg(&stick)
            .arg(&f.live)
            .arg(&f.other),
    );
    let report = ls_json(&stick);
    let isos = report["record"]["isos"].as_array().unwrap();
    assert_eq!(isos[0]["boot"]["kind"], "kernel", "{report}");
    assert_eq!(isos[0]["boot"]["convention"], "debian_live", "{report}");
    assert_eq!(isos[1]["boot"]["kind"], "loopback_cfg", "{report}");

    let (bios, uefi) = boot_both(&stick);
    let live = vec![
        "findiso=/debian-live.iso".to_string(),
        "vmedia.iso=live".to_string(),
    ];
    assert_eq!(bios, live, "SeaBIOS booted the wrong entry");
    assert_eq!(uefi, live, "OVMF booted the wrong entry");

    run_ok(
        vmedia()
            .args(["multiboot", "default"])
            .arg(&stick)
            .arg("other-layout.iso"),
    );
    let (bios, uefi) = boot_both(&stick);
    let other = vec![
        "iso_path=/other-layout.iso".to_string(),
        "vmedia.iso=other".to_string(),
    ];
    assert_eq!(bios, other, "SeaBIOS booted the wrong entry");
    assert_eq!(uefi, other, "OVMF booted the wrong entry");
    peers_find_the_stick_clean(&stick);
}

/// sgdisk and fdisk read the table without complaint; mdir lists each FAT partition and
/// fsck.fat finds it clean.
fn peers_find_the_stick_clean(stick: &Path) {
    let (code, out, err) = run_any(Command::new(require_tool("sgdisk")).arg("-v").arg(stick));
    assert_eq!(code, 0, "sgdisk -v: {out}{err}");
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
    let fdisk = run_ok(Command::new(require_tool("fdisk")).arg("-l").arg(stick));
    let text = String::from_utf8_lossy(&fdisk.stdout).to_string()
        + &String::from_utf8_lossy(&fdisk.stderr);
    assert!(text.contains("Disklabel type: gpt"), "{text}");
    assert!(
        text.contains("BIOS boot") && text.contains("EFI System"),
        "{text}"
    );
    assert!(!text.to_lowercase().contains("corrupt"), "{text}");
    let report = ls_json(stick);
    for part in report["partitions"].as_array().unwrap() {
        let name = part["name"].as_str().unwrap();
        if !(name.starts_with("EFI") || name.starts_with("VMEDIA")) {
            continue;
        }
        let offset = part["offset"].as_u64().unwrap();
        let size = part["size_bytes"].as_u64().unwrap();
        let mdir = run_ok(
            Command::new(require_tool("mdir"))
                .arg("-i")
                .arg(format!("{}@@{offset}", stick.display()))
                .arg("-/")
                .arg("::"),
        );
        let listing = String::from_utf8_lossy(&mdir.stdout).to_string();
        if name.starts_with("EFI") {
            assert!(
                listing.contains("BOOTX64") && listing.contains("grub"),
                "{listing}"
            );
        } else {
            assert!(
                listing.contains("debian-live.iso") && listing.contains("other-layout.iso"),
                "{listing}"
            );
        }
        let copy = stick.with_extension(format!("part{offset}"));
        let mut data = vec![0u8; size as usize];
        use std::os::unix::fs::FileExt;
        fs::File::open(stick)
            .unwrap()
            .read_exact_at(&mut data, offset)
            .unwrap();
        fs::write(&copy, &data).unwrap();
        let (code, out, err) = run_any(Command::new(require_tool("fsck.fat")).arg("-n").arg(&copy));
        assert_eq!(code, 0, "fsck.fat -n on {name}: {out}{err}");
        fs::remove_file(&copy).unwrap();
    }
}

#[test]
fn add_remove_and_ls_change_the_stick_and_keep_the_isos_intact() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let stick = dir.path().join("stick.img");
    run_ok(
        vmedia()
            .args(["multiboot", "create", "-q", "-o"])
            .arg(&stick)
            .arg(&f.other),
    );
    // Refused without --force, and the stick is untouched.
    let before = fs::read(&stick).unwrap();
    let (code, _, err) = run_any(
        vmedia()
            .args(["multiboot", "create", "-q", "-o"])
            .arg(&stick)
            .arg(&f.live),
    );
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(fs::read(&stick).unwrap(), before);

    run_ok(
        vmedia()
            .args(["multiboot", "add", "-q"])
            .arg(&stick)
            .arg(&f.live)
            .arg(&f.extra),
    );
    assert_eq!(
        iso_names(&stick),
        ["other-layout.iso", "debian-live.iso", "extra.iso"]
    );
    let (code, _, err) = run_any(
        vmedia()
            .args(["multiboot", "add", "-q"])
            .arg(&stick)
            .arg(&f.live),
    );
    assert_ne!(code, 0);
    assert!(err.contains("already holds"), "{err}");

    run_ok(
        vmedia()
            .args(["multiboot", "remove", "-q"])
            .arg(&stick)
            .arg("other-layout.iso"),
    );
    assert_eq!(iso_names(&stick), ["debian-live.iso", "extra.iso"]);
    // The ISO bytes on the stick are the originals, at the offsets the record gives.
    let report = ls_json(&stick);
    let data = fs::read(&stick).unwrap();
    let original = fs::read(&f.live).unwrap();
    for iso in report["record"]["isos"].as_array().unwrap() {
        let at = iso["offset"].as_u64().unwrap() as usize;
        assert_eq!(&data[at..at + original.len()], &original[..], "{iso}");
    }
    let menu = run_ok(vmedia().args(["multiboot", "ls", "--menu"]).arg(&stick));
    let menu = String::from_utf8_lossy(&menu.stdout);
    assert!(menu.contains("findiso=/extra.iso"), "{menu}");
    assert!(!menu.contains("other-layout"), "{menu}");
    let text = run_ok(vmedia().args(["multiboot", "ls"]).arg(&stick));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("debian-live.iso") && text.contains("findiso="),
        "{text}"
    );

    let (code, _, err) = run_any(
        vmedia()
            .args(["multiboot", "remove", "-q"])
            .arg(&stick)
            .arg("missing.iso"),
    );
    assert_ne!(code, 0);
    assert!(err.contains("no ISO named"), "{err}");
    let (code, _, err) = run_any(vmedia().args(["multiboot", "ls"]).arg(&f.live));
    assert_ne!(code, 0);
    assert!(err.contains("GPT") || err.contains("partition"), "{err}");
}

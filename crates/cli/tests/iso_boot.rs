//! Images made by `vmedia mkisofs`, `vmedia iso create` and `vmedia iso repack` boot the Debian
//! kernel + busybox initramfs to the serial-console marker under QEMU (TCG): BIOS via isolinux
//! and via GRUB, UEFI (OVMF) via a GRUB EFI binary in an ESP vmedia built, and the hybrid images
//! as raw hard disks under SeaBIOS and OVMF. Each boot is one VM; only what is tested boots.

#[path = "support/iso.rs"]
mod iso;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{qemu_boot, require_tool, run_ok, vmedia, Firmware, BOOT_MARKER};

/// TCG boots of the Debian kernel take 5-20 s; firmware and loaders add a few more.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn cdrom(image: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "file={},format=raw,if=ide,media=cdrom,readonly=on",
            image.display()
        ),
        "-boot".into(),
        "d".into(),
    ]
}

fn hard_disk(image: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},format=raw,if=ide", image.display()),
        "-boot".into(),
        "c".into(),
    ]
}

fn boot(firmware: Firmware, drive: Vec<String>, what: &str) {
    let args: Vec<&str> = drive.iter().map(String::as_str).collect();
    let log = qemu_boot(firmware, &args, BOOT_MARKER, BOOT_TIMEOUT);
    assert!(log.contains(BOOT_MARKER), "{what}: no marker");
}

/// A copy of the image, so a VM writing to a "hard disk" never touches the original.
fn disk_copy(image: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("disk.img");
    fs::copy(image, &copy).unwrap();
    copy
}

#[test]
fn mkisofs_isolinux_image_boots_from_cdrom_and_as_hybrid_disk_under_bios() {
    let tree = iso::isolinux_tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("isolinux.iso");
    run_ok(
        vmedia()
            .args(["mkisofs", "-quiet", "-R", "-J", "-V", "VMEDIA_BIOS"])
            .args([
                "-b",
                "isolinux/isolinux.bin",
                "-c",
                "isolinux/boot.cat",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
            ])
            .args(["-isohybrid-mbr", "/usr/lib/ISOLINUX/isohdpfx.bin", "-o"])
            .arg(&image)
            .arg(&tree),
    );
    boot(
        Firmware::Bios,
        cdrom(&image),
        "isolinux CD-ROM under SeaBIOS",
    );
    boot(
        Firmware::Bios,
        hard_disk(&disk_copy(&image, dir.path())),
        "isohybrid disk under SeaBIOS",
    );
}

/// `vmedia iso esp` of the GRUB EFI folder (the ESP vmedia builds).
fn vmedia_esp(efi_dir: &Path, dir: &Path) -> PathBuf {
    let esp = dir.join("esp.img");
    run_ok(
        vmedia()
            .args(["iso", "esp", "-q"])
            .arg(efi_dir)
            .arg("-o")
            .arg(&esp),
    );
    esp
}

#[test]
fn mkisofs_grub_hybrid_image_boots_bios_and_uefi_from_cdrom_and_disk() {
    let (tree, efi_dir) = iso::grub_tree();
    let dir = tempfile::tempdir().unwrap();
    let esp = vmedia_esp(&efi_dir, dir.path());
    let image = dir.path().join("grub.iso");
    // grub-mkrescue's BIOS options with an archiso-style appended ESP for UEFI.
    run_ok(
        vmedia()
            .args(["mkisofs", "-quiet", "-R", "-J", "-V", "VMEDIA_GRUB"])
            .args([
                "-b",
                "boot/grub/i386-pc/eltorito.img",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "--grub2-boot-info",
            ])
            .args([
                "--grub2-mbr",
                "/usr/lib/grub/i386-pc/boot_hybrid.img",
                "--protective-msdos-label",
            ])
            .args(["-append_partition", "2", "0xef"])
            .arg(&esp)
            .args([
                "-appended_part_as_gpt",
                "-eltorito-alt-boot",
                "-e",
                "--interval:appended_partition_2:all::",
                "-no-emul-boot",
                "-o",
            ])
            .arg(&image)
            .arg(&tree),
    );
    boot(
        Firmware::Bios,
        cdrom(&image),
        "GRUB El Torito CD-ROM under SeaBIOS",
    );
    boot(Firmware::Uefi, cdrom(&image), "GRUB EFI CD-ROM under OVMF");
    boot(
        Firmware::Bios,
        hard_disk(&disk_copy(&image, dir.path())),
        "GRUB hybrid disk under SeaBIOS",
    );
    boot(
        Firmware::Uefi,
        hard_disk(&disk_copy(&image, dir.path())),
        "GPT ESP disk under OVMF",
    );
}

#[test]
fn iso_create_with_efi_dir_boots_as_uefi_disk() {
    let (tree, efi_dir) = iso::grub_tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("create.iso");
    run_ok(
        vmedia()
            .args([
                "iso",
                "create",
                "--quiet",
                "--volume-id",
                "VMEDIA_NATIVE",
                "--bios-boot",
                "boot/grub/i386-pc/eltorito.img",
                "--efi-dir",
            ])
            .arg(&efi_dir)
            .arg("--hybrid")
            .arg(&tree)
            .arg("-o")
            .arg(&image),
    );
    let report = iso::xorriso_report(&image);
    assert_eq!(
        iso::boot_entries(&report),
        [
            ("BIOS".to_string(), "none".to_string()),
            ("UEFI".to_string(), "none".to_string())
        ],
        "{}",
        report.join("\n")
    );
    assert!(
        iso::gpt_types(&report).contains(&iso::XORRISO_GPT_ESP.to_string()),
        "{}",
        report.join("\n")
    );
    boot(
        Firmware::Uefi,
        hard_disk(&disk_copy(&image, dir.path())),
        "iso create --efi-dir disk under OVMF",
    );
}

#[test]
fn repacked_grub_mkrescue_image_still_boots_bios_and_uefi() {
    let (tree, _) = iso::grub_tree();
    let dir = tempfile::tempdir().unwrap();
    // grub-mkrescue (real xorriso) over the payload; its own grub.cfg is replaced by ours.
    let src = dir.path().join("src");
    run_ok(Command::new("cp").arg("-a").arg(&tree).arg(&src));
    fs::remove_file(src.join("boot/grub/i386-pc/eltorito.img")).unwrap();
    let original = dir.path().join("rescue.iso");
    run_ok(
        Command::new(require_tool("grub-mkrescue"))
            .arg("-o")
            .arg(&original)
            .arg(&src),
    );
    let extra = dir.path().join("extra.txt");
    fs::write(&extra, b"added by repack\n").unwrap();
    let repacked = dir.path().join("repacked.iso");
    run_ok(
        vmedia()
            .args(["iso", "repack", "--quiet"])
            .arg(&original)
            .arg(format!("--add=/extra.txt={}", extra.display()))
            .arg("-o")
            .arg(&repacked),
    );
    let cat = run_ok(
        Command::new(require_tool("isoinfo"))
            .args(["-R", "-x", "/extra.txt", "-i"])
            .arg(&repacked),
    );
    assert_eq!(cat.stdout, b"added by repack\n");
    let before = iso::xorriso_report(&original);
    let after = iso::xorriso_report(&repacked);
    assert_eq!(
        iso::boot_entries(&after),
        iso::boot_entries(&before),
        "boot entries changed:\n{}",
        after.join("\n")
    );
    assert!(
        iso::system_area_summary(&after).contains(&"grub2-mbr".to_string()),
        "{}",
        after.join("\n")
    );
    boot(
        Firmware::Bios,
        cdrom(&repacked),
        "repacked grub-mkrescue CD-ROM under SeaBIOS",
    );
    boot(
        Firmware::Uefi,
        cdrom(&repacked),
        "repacked grub-mkrescue CD-ROM under OVMF",
    );
}

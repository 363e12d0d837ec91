//! `vmedia mkisofs` takes the option lines distributions pass to `xorriso -as mkisofs`
//! (archiso, grub-mkrescue, lorax, live-build, debian-cd) and writes images whose El Torito
//! entries and system area xorriso reports like those of xorriso's own image from the same
//! line; options vmedia does not implement are refused by name with exit code 2.

#[path = "support/iso.rs"]
mod iso;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{cached_fixture, require_tool, run_any, run_ok, vmedia};

/// A tree with the boot files the lines name, made by the peers (isolinux package,
/// grub-mkimage, mkfs.vfat + mtools), and an EFI image outside it for -append_partition.
fn compat_tree() -> PathBuf {
    cached_fixture("mkisofs-compat-tree-v1", |dir| {
        let t = dir.join("tree");
        fs::create_dir_all(t.join("isolinux")).unwrap();
        fs::create_dir_all(t.join("boot/grub/i386-pc")).unwrap();
        fs::create_dir_all(t.join("images")).unwrap();
        fs::copy(
            "/usr/lib/ISOLINUX/isolinux.bin",
            t.join("isolinux/isolinux.bin"),
        )
        .expect("isolinux package");
        fs::copy(
            "/usr/lib/syslinux/modules/bios/ldlinux.c32",
            t.join("isolinux/ldlinux.c32"),
        )
        .expect("syslinux-common package");
        fs::write(t.join("isolinux/isolinux.cfg"), "DEFAULT linux\n").unwrap();
        fs::write(t.join("readme.txt"), "compat\n").unwrap();
        run_ok(
            Command::new(require_tool("grub-mkimage"))
                .args(["-O", "i386-pc-eltorito", "-p", "/boot/grub", "-o"])
                .arg(t.join("boot/grub/i386-pc/eltorito.img"))
                .args(["biosdisk", "iso9660", "normal"]),
        );
        let loader = dir.join("BOOTX64.EFI");
        fs::write(&loader, iso::pattern(40_000, 7)).unwrap();
        iso::peer_fat_image(
            &t.join("boot/grub/efi.img"),
            1440,
            &[(&loader, "EFI/BOOT/BOOTX64.EFI")],
        );
        fs::copy(t.join("boot/grub/efi.img"), t.join("images/efiboot.img")).unwrap();
        fs::copy(t.join("boot/grub/efi.img"), dir.join("efiboot.img")).unwrap();
    })
}

/// Runs the same mkisofs arguments through vmedia and through xorriso; returns both reports.
fn both(dir: &Path, args: &[String]) -> (Vec<String>, Vec<String>) {
    let fixture = compat_tree();
    let tree = fixture.join("tree");
    let vm_iso = dir.join("vmedia.iso");
    let xo_iso = dir.join("xorriso.iso");
    run_ok(
        vmedia()
            .current_dir(&fixture)
            .arg("mkisofs")
            .arg("-quiet")
            .args(args)
            .arg("-o")
            .arg(&vm_iso)
            .arg(&tree),
    );
    run_ok(
        Command::new(require_tool("xorriso"))
            .current_dir(&fixture)
            .args(["-as", "mkisofs", "-quiet"])
            .args(args)
            .arg("-o")
            .arg(&xo_iso)
            .arg(&tree),
    );
    (iso::xorriso_report(&vm_iso), iso::xorriso_report(&xo_iso))
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// The rows of `key` with the numbers that depend on layout (LBAs, sizes) left out.
fn rows(report: &[String], key: &str) -> Vec<Vec<String>> {
    iso::report_rows(report, key)
}

/// Asserts the El Torito entries, image paths and options, catalog path, system-area kind and
/// MBR partition types match xorriso's image; addresses and padding may differ.
fn assert_same_boot_structure(vm: &[String], xo: &[String]) {
    assert_same_boot_structure_but(vm, xo, &[]);
}

/// As `assert_same_boot_structure`, with system-area summary words left out of the comparison.
fn assert_same_boot_structure_but(vm: &[String], xo: &[String], ignored_summary: &[&str]) {
    let context = || {
        format!(
            "\n--- vmedia\n{}\n--- xorriso\n{}",
            vm.join("\n"),
            xo.join("\n")
        )
    };
    assert_eq!(
        iso::boot_entries(vm),
        iso::boot_entries(xo),
        "El Torito entries{}",
        context()
    );
    let bios_load = |r: &[String]| -> Vec<String> {
        rows(r, "El Torito boot img")
            .into_iter()
            .filter(|row| row[1] == "BIOS")
            .map(|row| row[6].clone())
            .collect()
    };
    assert_eq!(bios_load(vm), bios_load(xo), "BIOS load sizes{}", context());
    assert_eq!(
        rows(vm, "El Torito img path"),
        rows(xo, "El Torito img path"),
        "boot image paths{}",
        context()
    );
    assert_eq!(
        rows(vm, "El Torito cat path"),
        rows(xo, "El Torito cat path"),
        "catalog path{}",
        context()
    );
    // The boot info table checksum covers the image after the --grub2-boot-info patch, so
    // xorriso recognizes both patches on grub-mkrescue-style images.
    assert_eq!(
        rows(vm, "El Torito img opts"),
        rows(xo, "El Torito img opts"),
        "boot image options{}",
        context()
    );
    let summary = |r: &[String]| -> Vec<String> {
        iso::system_area_summary(r)
            .into_iter()
            .filter(|w| !w.starts_with("cyl-align") && !ignored_summary.contains(&w.as_str()))
            .collect()
    };
    assert_eq!(summary(vm), summary(xo), "system area summary{}", context());
    let first_mbr = |r: &[String]| iso::mbr_types(r).into_iter().next();
    assert_eq!(
        first_mbr(vm),
        first_mbr(xo),
        "type of MBR partition 1{}",
        context()
    );
}

/// The GPT (or MBR) partition start that holds the UEFI El Torito image.
fn assert_efi_image_is_a_partition(report: &[String]) {
    let efi_lba: u64 = rows(report, "El Torito boot img")
        .into_iter()
        .find(|row| row[1] == "UEFI")
        .map(|row| row[7].parse().unwrap())
        .unwrap_or_else(|| panic!("no UEFI entry:\n{}", report.join("\n")));
    let gpt_starts: Vec<u64> = rows(report, "GPT start and size")
        .into_iter()
        .map(|r| r[1].parse().unwrap())
        .collect();
    let mbr_starts: Vec<u64> = rows(report, "MBR partition")
        .into_iter()
        .map(|r| r[3].parse().unwrap())
        .collect();
    assert!(
        gpt_starts.contains(&(efi_lba * 4)) || mbr_starts.contains(&(efi_lba * 4)),
        "no partition starts at the EFI image (block {efi_lba}):\n{}",
        report.join("\n")
    );
}

#[test]
fn lorax_line_matches_xorriso() {
    let dir = tempfile::tempdir().unwrap();
    let args = words(
        "-R -J -V Fedora-S-dvd-x86_64-38 -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
         -b isolinux/isolinux.bin -c isolinux/boot.cat -boot-load-size 4 -boot-info-table \
         -no-emul-boot -eltorito-alt-boot -e images/efiboot.img -no-emul-boot -isohybrid-gpt-basdat",
    );
    let (vm, xo) = both(dir.path(), &args);
    assert_same_boot_structure(&vm, &xo);
    assert_efi_image_is_a_partition(&vm);
    assert!(iso::system_area_summary(&vm).contains(&"isohybrid".to_string()));
}

#[test]
fn live_build_line_matches_xorriso() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = words(
        "-R -r -J -joliet-long -l -cache-inodes -iso-level 3 -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
         -partition_offset 16 -A Debian_Live -p live-build -publisher Debian_Live_project",
    );
    args.extend(["-V".to_string(), "Debian bookworm 20240101".to_string()]);
    args.extend(words(
        "--modification-date=2024010110000000 -b isolinux/isolinux.bin -c isolinux/boot.cat \
         -no-emul-boot -boot-load-size 4 -boot-info-table -eltorito-alt-boot -e boot/grub/efi.img \
         -no-emul-boot -isohybrid-gpt-basdat",
    ));
    let (vm, xo) = both(dir.path(), &args);
    assert_same_boot_structure(&vm, &xo);
    assert_efi_image_is_a_partition(&vm);
    assert_eq!(
        rows(&vm, "Partition offset"),
        rows(&xo, "Partition offset"),
        "partition offset\n{}",
        vm.join("\n")
    );
    let pvd = run_ok(
        Command::new("xorriso")
            .arg("-indev")
            .arg(dir.path().join("vmedia.iso"))
            .arg("-pvd_info"),
    );
    let pvd = String::from_utf8_lossy(&pvd.stdout);
    assert!(
        pvd.contains("2024010110000000"),
        "--modification-date not recorded:\n{pvd}"
    );
    assert!(
        pvd.contains("Debian bookworm 20240101"),
        "volume id not recorded:\n{pvd}"
    );
}

#[test]
fn archiso_line_with_appended_esp_matches_xorriso() {
    let dir = tempfile::tempdir().unwrap();
    let args = words(
        "-iso-level 3 -full-iso9660-filenames -joliet -joliet-long -rational-rock -volid ARCH_202401 \
         -appid Arch_Linux_baseline -publisher Arch_Linux -preparer prepared_by_mkarchiso \
         -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
         -eltorito-boot isolinux/isolinux.bin -eltorito-catalog isolinux/boot.cat -no-emul-boot \
         -boot-load-size 4 -boot-info-table -partition_offset 16 \
         -append_partition 2 C12A7328-F81F-11D2-BA4B-00A0C93EC93B efiboot.img -appended_part_as_gpt \
         -eltorito-alt-boot -e --interval:appended_partition_2:all:: -no-emul-boot",
    );
    let (vm, xo) = both(dir.path(), &args);
    assert_same_boot_structure(&vm, &xo);
    assert_efi_image_is_a_partition(&vm);
    assert!(
        iso::gpt_types(&vm).contains(&iso::XORRISO_GPT_ESP.to_string()),
        "no ESP in the GPT:\n{}",
        vm.join("\n")
    );
}

#[test]
fn grub_mkrescue_drives_vmedia_through_its_xorriso_option() {
    let fixture = compat_tree();
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("xorriso-shim");
    fs::write(
        &shim,
        format!(
            "#!/bin/sh\nexec '{}' mkisofs \"$@\"\n",
            env!("CARGO_BIN_EXE_vmedia")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    let src = fixture.join("tree");
    let vm_iso = dir.path().join("vmedia.iso");
    let xo_iso = dir.path().join("xorriso.iso");
    let mkrescue = require_tool("grub-mkrescue");
    run_ok(
        Command::new(&mkrescue)
            .arg(format!("--xorriso={}", shim.display()))
            .arg("-o")
            .arg(&vm_iso)
            .arg(&src),
    );
    run_ok(Command::new(&mkrescue).arg("-o").arg(&xo_iso).arg(&src));
    let vm = iso::xorriso_report(&vm_iso);
    let xo = iso::xorriso_report(&xo_iso);
    // grub-mkrescue's full line: the HFS+ hybrid and its Apple Partition Map included.
    assert_same_boot_structure(&vm, &xo);
    assert_efi_image_is_a_partition(&vm);
    let apm = |r: &[String]| -> Vec<Vec<String>> {
        ["APM block size", "APM partition name", "APM partition type"]
            .iter()
            .flat_map(|key| rows(r, key))
            .collect()
    };
    assert_eq!(apm(&vm), apm(&xo), "APM\n{}", vm.join("\n"));
    assert_eq!(
        iso::gpt_types(&vm),
        iso::gpt_types(&xo),
        "GPT\n{}",
        vm.join("\n")
    );
    for token in ["protective-msdos-label", "grub2-mbr", "APM"] {
        assert!(
            iso::system_area_summary(&vm).contains(&token.to_string()),
            "{token} missing:\n{}",
            vm.join("\n")
        );
    }
}

#[test]
fn unimplemented_mac_options_are_refused_without_drop_hfsplus() {
    let fixture = compat_tree();
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_any(
        vmedia()
            .current_dir(&fixture)
            .args([
                "mkisofs",
                "-as",
                "mkisofs",
                "-graft-points",
                "-r",
                "-hfsplus",
                "-appended_part_as_apm",
                "-o",
            ])
            .arg(dir.path().join("x.iso"))
            .arg("tree"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("-appended_part_as_apm") && err.contains("--drop-hfsplus"),
        "{err}"
    );
    assert!(!dir.path().join("x.iso").exists());
}

#[test]
fn debian_cd_line_with_isohybrid_apm_matches_xorriso_and_drops_on_request() {
    let fixture = compat_tree();
    let dir = tempfile::tempdir().unwrap();
    let line = words(
        "-r -checksum_algorithm_iso md5,sha1,sha256,sha512 -V Debian_12 -J -joliet-long -cache-inodes \
         -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin -b isolinux/isolinux.bin -c isolinux/boot.cat \
         -boot-load-size 4 -boot-info-table -no-emul-boot -eltorito-alt-boot -e boot/grub/efi.img \
         -no-emul-boot -isohybrid-gpt-basdat -isohybrid-apm-hfsplus",
    );
    let (vm, xo) = both(dir.path(), &line);
    assert_same_boot_structure(&vm, &xo);
    assert_efi_image_is_a_partition(&vm);
    // isohybrid's Apple Partition Map: one "EFI" Apple_HFS entry at the EFI image.
    let apm = |r: &[String]| -> Vec<Vec<String>> {
        [
            "APM block size",
            "APM partition name",
            "APM partition type",
            "APM start and size",
        ]
        .iter()
        .flat_map(|key| rows(r, key))
        .collect()
    };
    let efi_lba: Vec<String> = rows(&vm, "El Torito boot img")
        .into_iter()
        .filter(|r| r[1] == "UEFI")
        .map(|r| r[7].clone())
        .collect();
    let vm_apm = apm(&vm);
    assert_eq!(
        vm_apm.iter().map(|r| r.len()).collect::<Vec<_>>(),
        apm(&xo).iter().map(|r| r.len()).collect::<Vec<_>>(),
        "APM rows\n{}",
        vm.join("\n")
    );
    assert!(
        vm_apm
            .iter()
            .any(|r| r.first() == Some(&"1".to_string()) && r.get(1) == efi_lba.first()),
        "APM entry 1 does not start at the EFI image:\n{}",
        vm.join("\n")
    );
    // --drop-hfsplus still leaves every Mac option out, with a warning naming it.
    let out = dir.path().join("d.iso");
    let done = run_ok(
        vmedia()
            .current_dir(&fixture)
            .args(["mkisofs", "--drop-hfsplus"])
            .args(&line)
            .arg("-o")
            .arg(&out)
            .arg("tree"),
    );
    let warn = String::from_utf8_lossy(&done.stderr);
    assert!(
        warn.contains("-isohybrid-apm-hfsplus"),
        "the dropped option is not reported: {warn}"
    );
    let report = iso::xorriso_report(&out);
    assert!(
        !iso::system_area_summary(&report).contains(&"APM".to_string()),
        "{}",
        report.join("\n")
    );
}

#[test]
fn unsupported_options_are_refused_by_name_with_exit_code_2() {
    let fixture = compat_tree();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.iso");
    for (option, extra) in [
        ("-frobnicate", None),
        ("-z", None),
        ("-M", Some("old.iso")),
        ("--J", None),
        ("-jigdo-jigdo", Some("x.jigdo")),
        ("-input-charset", Some("iso8859-1")),
    ] {
        let mut cmd = vmedia();
        cmd.current_dir(&fixture).args(["mkisofs", "-R", option]);
        if let Some(value) = extra {
            cmd.arg(value);
        }
        let (code, _, err) = run_any(cmd.arg("-o").arg(&out).arg("tree"));
        assert_eq!(code, 2, "{option}: exit {code}, {err}");
        assert!(err.contains(option), "{option} not named in: {err}");
        assert!(!out.exists(), "{option}: an image was written anyway");
    }
}

#[test]
fn harmless_no_op_options_are_accepted() {
    let fixture = compat_tree();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.iso");
    run_ok(
        vmedia()
            .current_dir(&fixture)
            .args([
                "mkisofs",
                "-quiet",
                "-R",
                "-J",
                "-cache-inodes",
                "-input-charset",
                "utf-8",
                "-output-charset",
                "UTF-8",
                "--no_rc",
                "-o",
            ])
            .arg(&out)
            .arg("tree"),
    );
    let listing = run_ok(
        Command::new(require_tool("isoinfo"))
            .args(["-R", "-f", "-i"])
            .arg(&out),
    );
    assert!(String::from_utf8_lossy(&listing.stdout).contains("/readme.txt"));
}

#[test]
fn print_size_matches_the_written_image() {
    let fixture = compat_tree();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.iso");
    let printed =
        run_ok(
            vmedia()
                .current_dir(&fixture)
                .args(["mkisofs", "-print-size", "-R", "-J", "tree"]),
        );
    let sectors: u64 = String::from_utf8_lossy(&printed.stdout)
        .trim()
        .parse()
        .expect("a number on stdout");
    run_ok(
        vmedia()
            .current_dir(&fixture)
            .args(["mkisofs", "-quiet", "-R", "-J", "-o"])
            .arg(&out)
            .arg("tree"),
    );
    assert_eq!(fs::metadata(&out).unwrap().len(), sectors * 2048);
}

#[test]
fn output_is_replaced_like_mkisofs_does() {
    let fixture = compat_tree();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.iso");
    fs::write(&out, b"old").unwrap();
    run_ok(
        vmedia()
            .current_dir(&fixture)
            .args(["mkisofs", "-quiet", "-R", "-o"])
            .arg(&out)
            .arg("tree"),
    );
    assert!(fs::metadata(&out).unwrap().len() > 2048 * 16);
}

#[test]
fn iso_create_native_flags_make_the_lorax_layout() {
    let fixture = compat_tree();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("native.iso");
    run_ok(
        vmedia()
            .current_dir(&fixture)
            .args(["iso", "create", "-q", "tree", "-o"])
            .arg(&out)
            .args([
                "--bios-boot",
                "isolinux/isolinux.bin",
                "--uefi-boot",
                "images/efiboot.img",
                "--hybrid",
                "--boot-catalog",
                "isolinux/boot.cat",
            ]),
    );
    let report = iso::xorriso_report(&out);
    assert_eq!(
        iso::boot_entries(&report),
        [
            ("BIOS".to_string(), "none".to_string()),
            ("UEFI".to_string(), "none".to_string())
        ],
        "{}",
        report.join("\n")
    );
    assert_eq!(
        rows(&report, "El Torito cat path"),
        [["/isolinux/boot.cat".to_string()]]
    );
    let opts = rows(&report, "El Torito img opts");
    assert!(
        opts.iter()
            .any(|r| r.contains(&"boot-info-table".to_string())),
        "{}",
        report.join("\n")
    );
    let summary = iso::system_area_summary(&report);
    assert!(
        summary.contains(&"isohybrid".to_string()) && summary.contains(&"GPT".to_string()),
        "{}",
        report.join("\n")
    );
    assert_efi_image_is_a_partition(&report);
}

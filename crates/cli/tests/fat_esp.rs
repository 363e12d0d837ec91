//! `vmedia iso esp` against dosfstools and mtools: images pass `fsck.fat -n`, list with `mdir`,
//! copy back with `mcopy` identical to the source (long names, subfolders, empty files, large
//! files), come out byte-identical for the same tree with a fixed date, and boot under OVMF.
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{
    cached_fixture, payload, qemu_boot, require_tool, run_any, run_ok, vmedia, Firmware,
    BOOT_MARKER,
};

/// A tree exercising names and sizes: 8.3 and long names, lowercase, spaces, Unicode, deep
/// folders, an empty file, an empty folder, a file of several clusters and a GRUB module folder.
fn esp_tree() -> PathBuf {
    cached_fixture("esp-tree", |dir| {
        let root = dir.join("tree");
        fs::create_dir_all(root.join("EFI/BOOT")).unwrap();
        fs::create_dir_all(root.join("EFI/debian")).unwrap();
        fs::create_dir_all(root.join("boot/grub/x86_64-efi")).unwrap();
        fs::create_dir_all(root.join("deep/a/b/c/d/e/f")).unwrap();
        fs::create_dir_all(root.join("empty folder")).unwrap();
        fs::create_dir_all(root.join("Überordner mit Umlauten")).unwrap();
        let mut state = 0x9E37_79B9u32;
        let mut noise = |size: usize| -> Vec<u8> {
            (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect()
        };
        fs::write(root.join("EFI/BOOT/BOOTX64.EFI"), noise(700_000)).unwrap();
        fs::write(
            root.join("EFI/BOOT/grub.cfg"),
            b"search --file --set=root /vmlinuz\n",
        )
        .unwrap();
        fs::write(root.join("EFI/debian/shimx64.efi"), noise(3_000_000)).unwrap();
        fs::write(
            root.join("deep/a/b/c/d/e/f/A very long file name that needs several LFN entries.txt"),
            b"deep\n",
        )
        .unwrap();
        fs::write(
            root.join("Überordner mit Umlauten/résumé – ✓.txt"),
            b"unicode\n",
        )
        .unwrap();
        fs::write(root.join("zero-length"), b"").unwrap();
        fs::write(root.join("README.TXT"), b"short name only\n").unwrap();
        // Many small files, as a GRUB module folder has, so folders span several clusters.
        for i in 0..300 {
            fs::write(
                root.join(format!("boot/grub/x86_64-efi/module_{i:03}.mod")),
                noise(1000 + i * 37),
            )
            .unwrap();
        }
    })
    .join("tree")
}

fn build_esp(source: &Path, out: &Path, extra: &[&str]) -> String {
    let output = run_ok(
        vmedia()
            .args(["iso", "esp", "--quiet"])
            .arg(source)
            .arg("-o")
            .arg(out)
            .args(extra),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fsck_clean(image: &Path) {
    require_tool("fsck.fat");
    let (code, stdout, stderr) = run_any(Command::new("fsck.fat").arg("-n").arg("-v").arg(image));
    assert_eq!(
        code,
        0,
        "fsck.fat -n found problems in {}:\n{stdout}\n{stderr}",
        image.display()
    );
    assert!(
        !stdout.contains("Free cluster summary wrong") && !stdout.contains("differ"),
        "{stdout}"
    );
}

/// Copies everything back out with mcopy and compares with the source tree.
fn mcopy_matches_source(image: &Path, source: &Path) {
    require_tool("mcopy");
    let out = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(image)
            .args(["-s", "-n", "-m", "::/"])
            .arg(out.path()),
    );
    let diff = run_any(Command::new("diff").arg("-r").arg(source).arg(out.path()));
    assert_eq!(
        diff.0,
        0,
        "mcopy of {} differs from the source:\n{}{}",
        image.display(),
        diff.1,
        diff.2
    );
}

fn json_summary(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

#[test]
fn auto_sized_esp_passes_fsck_and_copies_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("esp.img");
    let summary = json_summary(&build_esp(&esp_tree(), &image, &["--json"]));
    assert_eq!(
        summary["size_bytes"].as_u64().unwrap(),
        fs::metadata(&image).unwrap().len()
    );
    assert!(summary["free_clusters"].as_u64().unwrap() > 0);
    fsck_clean(&image);
    mcopy_matches_source(&image, &esp_tree());
}

#[test]
fn every_fat_type_passes_fsck_and_copies_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    for (fat_type, expected) in [("12", "FAT12"), ("16", "FAT16"), ("32", "FAT32")] {
        let image = dir.path().join(format!("esp{fat_type}.img"));
        let summary = json_summary(&build_esp(
            &esp_tree(),
            &image,
            &["--json", "--fat-type", fat_type],
        ));
        assert_eq!(summary["fat_type"], expected);
        require_tool("file");
        let kind = run_ok(Command::new("file").arg("-b").arg(&image));
        assert!(
            String::from_utf8_lossy(&kind.stdout).contains(&format!("FAT ({} bit)", fat_type)),
            "{}",
            String::from_utf8_lossy(&kind.stdout)
        );
        fsck_clean(&image);
        mcopy_matches_source(&image, &esp_tree());
    }
}

#[test]
fn mdir_lists_long_names_label_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("esp.img");
    build_esp(
        &esp_tree(),
        &image,
        &["--label", "MYESP", "--volume-id", "1234-ABCD"],
    );
    require_tool("mdir");
    let out = run_ok(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&image)
            .arg("::/"),
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("Volume in drive : is MYESP"), "{listing}");
    assert!(listing.contains("1234-ABCD"), "{listing}");
    assert!(listing.contains("empty folder"), "{listing}");
    assert!(listing.contains("Überordner mit Umlauten"), "{listing}");
    let out = run_ok(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&image)
            .arg("::/EFI/BOOT"),
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("BOOTX64  EFI    700000"), "{listing}");
    assert!(listing.contains("grub.cfg"), "{listing}");
}

#[test]
fn fixed_date_makes_identical_images_despite_new_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tree");
    run_ok(Command::new("cp").arg("-r").arg(esp_tree()).arg(&copy));
    let first = dir.path().join("first.img");
    let second = dir.path().join("second.img");
    build_esp(&copy, &first, &["--date", "2024-01-01T00:00:00"]);
    // New modification times everywhere: a fixed date must hide them.
    run_ok(Command::new("find").arg(&copy).args([
        "-exec",
        "touch",
        "-d",
        "2031-05-06 07:08:09",
        "{}",
        "+",
    ]));
    build_esp(&copy, &second, &["--date", "2024-01-01T00:00:00"]);
    assert_eq!(
        fs::read(&first).unwrap(),
        fs::read(&second).unwrap(),
        "same tree and date gave different bytes"
    );
    // SOURCE_DATE_EPOCH does the same for build systems.
    let third = dir.path().join("third.img");
    run_ok(
        vmedia()
            .env("SOURCE_DATE_EPOCH", "1704067200")
            .args(["iso", "esp", "--quiet"])
            .arg(&copy)
            .arg("-o")
            .arg(&third),
    );
    assert_eq!(fs::read(&first).unwrap(), fs::read(&third).unwrap());
    // mtools shows the fixed date.
    let out = run_ok(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&first)
            .arg("::/EFI/BOOT"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2024-01-01"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn without_a_date_source_mtimes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("old.txt"), b"x").unwrap();
    run_ok(
        Command::new("touch")
            .env("TZ", "UTC")
            .args(["-d", "2015-03-04 05:06:08"])
            .arg(src.join("old.txt")),
    );
    let image = dir.path().join("esp.img");
    let output = run_ok(
        vmedia()
            .env_remove("SOURCE_DATE_EPOCH")
            .args(["iso", "esp", "--quiet"])
            .arg(&src)
            .arg("-o")
            .arg(&image),
    );
    assert!(output.status.success());
    let out = run_ok(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("TZ", "UTC")
            .arg("-i")
            .arg(&image)
            .arg("::/"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2015-03-04"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn fixed_size_is_honoured_and_too_small_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("esp.img");
    build_esp(&esp_tree(), &image, &["--size", "48M"]);
    assert_eq!(fs::metadata(&image).unwrap().len(), 48 << 20);
    fsck_clean(&image);
    mcopy_matches_source(&image, &esp_tree());

    let small = dir.path().join("small.img");
    let (code, _, stderr) = run_any(
        vmedia()
            .args(["iso", "esp"])
            .arg(esp_tree())
            .arg("-o")
            .arg(&small)
            .args(["--size", "1M"]),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--size"), "{stderr}");
    assert!(!small.exists(), "a refused build left a file behind");
}

#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("esp.img");
    fs::write(&image, b"precious").unwrap();
    let (code, _, stderr) = run_any(
        vmedia()
            .args(["iso", "esp"])
            .arg(esp_tree())
            .arg("-o")
            .arg(&image),
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(fs::read(&image).unwrap(), b"precious");
    build_esp(&esp_tree(), &image, &["--force"]);
    fsck_clean(&image);
}

#[test]
fn names_fat_cannot_hold_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("what?.txt"), b"x").unwrap();
    let (code, _, stderr) = run_any(
        vmedia()
            .args(["iso", "esp"])
            .arg(&src)
            .arg("-o")
            .arg(dir.path().join("x.img")),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("what?.txt") && stderr.contains("not allowed"),
        "{stderr}"
    );
}

#[test]
fn grub_esp_boots_a_linux_kernel_under_ovmf() {
    // A real ESP: GRUB for x86_64-efi as BOOTX64.EFI, the test kernel and initramfs beside it.
    require_tool("grub-mkstandalone");
    let payload = payload();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("esp");
    fs::create_dir_all(tree.join("EFI/BOOT")).unwrap();
    fs::copy(&payload.kernel, tree.join("vmlinuz")).unwrap();
    fs::copy(&payload.initrd, tree.join("initrd.gz")).unwrap();
    let cfg = dir.path().join("grub.cfg");
    fs::write(
        &cfg,
        "set timeout=0\nsearch --no-floppy --file --set=root /vmlinuz\nlinux /vmlinuz console=ttyS0 no_timer_check panic=-1\ninitrd /initrd.gz\nboot\n",
    )
    .unwrap();
    run_ok(
        Command::new("grub-mkstandalone")
            .args([
                "-O",
                "x86_64-efi",
                "--modules=part_msdos part_gpt fat search linux normal",
                "--locales=",
                "--themes=",
                "--fonts=",
            ])
            .arg("-o")
            .arg(tree.join("EFI/BOOT/BOOTX64.EFI"))
            .arg(format!("boot/grub/grub.cfg={}", cfg.display())),
    );
    let image = dir.path().join("esp.img");
    build_esp(&tree, &image, &["--label", "ESP"]);
    fsck_clean(&image);
    let drive = format!("file={},format=raw,if=virtio", image.display());
    qemu_boot(
        Firmware::Uefi,
        &["-drive", &drive],
        BOOT_MARKER,
        Duration::from_secs(240),
    );
}

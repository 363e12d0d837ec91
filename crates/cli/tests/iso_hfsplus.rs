//! `vmedia mkisofs -hfsplus`: the HFS+ hybrid and its Apple Partition Map, proven by the peers.
//! 7z (its HFS handler) lists and extracts the HFS+ partition with the ISO tree's files and
//! bytes; GRUB (`grub-fstest`, its own APM, GPT and HFS+ code) reads the same files through
//! the partition maps; `xorriso -report_system_area` shows the APM and GPT of xorriso's own
//! image of the same line; the real grub-mkrescue drives vmedia through `--xorriso` and its
//! image boots under SeaBIOS and OVMF. Also: repacked hard links share one extent again.

#[path = "support/iso.rs"]
mod iso;
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{qemu_boot, require_tool, run_ok, vmedia, Firmware, BOOT_MARKER};

/// TCG boots of the Debian kernel take 5-20 s; firmware and GRUB add a few more.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// "é" as HFS+ stores it: decomposed (e + combining acute).
const E_ACUTE_NFD: &str = "e\u{301}";

/// A tree with what HFS+ must handle: accented and Hangul names (stored decomposed), nested
/// and empty folders, an empty file, a symlink, a hard link, a multi-megabyte file and enough
/// long names for a catalog B-tree with an index level.
fn hfs_tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    fs::create_dir_all(t.join("docs/deep/deeper")).unwrap();
    fs::create_dir_all(t.join("empty")).unwrap();
    fs::create_dir_all(t.join("many")).unwrap();
    fs::write(t.join("docs/readme.txt"), b"hello hfs+\n").unwrap();
    fs::write(
        t.join("docs/deep/deeper/data.bin"),
        iso::pattern(3 << 20, 5),
    )
    .unwrap();
    fs::write(t.join("caf\u{e9}.txt"), b"accent\n").unwrap();
    fs::write(t.join("\u{d55c}\u{ae00}.txt"), b"hangul\n").unwrap();
    fs::write(t.join("zero"), b"").unwrap();
    std::os::unix::fs::symlink("docs/readme.txt", t.join("link")).unwrap();
    fs::hard_link(t.join("docs/readme.txt"), t.join("hard")).unwrap();
    for i in 0..400 {
        fs::write(
            t.join(format!("many/file-{i:04}-with-a-rather-long-name.txt")),
            format!("file {i}\n"),
        )
        .unwrap();
    }
    t
}

/// The tree as the HFS+ volume must show it: names decomposed, hard links as separate files.
fn expected_hfs_view(tree: &Path) -> iso::Manifest {
    let mut m = iso::manifest(tree, false);
    m.hard_links.clear();
    m.nodes = m
        .nodes
        .into_iter()
        .map(|(path, node)| {
            let path = path.replace('\u{e9}', E_ACUTE_NFD).replace(
                "\u{d55c}\u{ae00}",
                "\u{1112}\u{1161}\u{11ab}\u{1100}\u{1173}\u{11af}",
            );
            (path, node)
        })
        .collect();
    m
}

/// (name, type, start, size) of each APM entry xorriso reports, in 512-byte units.
fn apm_entries(report: &[String]) -> Vec<(String, String, u64, u64)> {
    let block: u64 = iso::report_rows(report, "APM block size")
        .first()
        .and_then(|r| r.first())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no APM:\n{}", report.join("\n")));
    let names = iso::report_rows(report, "APM partition name");
    let types = iso::report_rows(report, "APM partition type");
    let ranges = iso::report_rows(report, "APM start and size");
    names
        .iter()
        .zip(&types)
        .zip(&ranges)
        .map(|((n, t), r)| {
            let start: u64 = r[1].parse().unwrap();
            let size: u64 = r[2].parse().unwrap();
            (
                n[1].clone(),
                t[1].clone(),
                start * block / 512,
                size * block / 512,
            )
        })
        .collect()
}

/// Copies the Apple_HFS partition the APM describes out of the image.
fn hfs_partition(image: &Path, out: &Path) -> PathBuf {
    let report = iso::xorriso_report(image);
    let (_, _, start, size) = apm_entries(&report)
        .into_iter()
        .find(|e| e.1 == "Apple_HFS")
        .unwrap_or_else(|| panic!("no Apple_HFS entry:\n{}", report.join("\n")));
    let bytes = fs::read(image).unwrap();
    let part = out.join("hfsplus.img");
    let (from, len) = (start as usize * 512, size as usize * 512);
    assert!(
        from + len <= bytes.len(),
        "the HFS+ entry runs past the image"
    );
    fs::write(&part, &bytes[from..from + len]).unwrap();
    part
}

fn mkisofs(tree: &Path, out: &Path, extra: &[&str]) {
    run_ok(
        vmedia()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["mkisofs", "-quiet", "-R", "-J", "-V", "HFSTEST", "-hfsplus"])
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(tree),
    );
}

#[test]
fn seven_zip_lists_and_extracts_the_hfsplus_volume_like_the_iso_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = hfs_tree(dir.path());
    let image = dir.path().join("hfs.iso");
    mkisofs(&tree, &image, &[]);
    let part = hfs_partition(&image, dir.path());
    let listing = run_ok(
        Command::new(require_tool("7z"))
            .args(["l", "-thfs"])
            .arg(&part),
    );
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("Method = HFS+"), "{listing}");
    assert!(
        listing.contains(&format!("HFSTEST/caf{E_ACUTE_NFD}.txt")),
        "names are not stored decomposed:\n{listing}"
    );
    let out = dir.path().join("x");
    run_ok(
        Command::new("7z")
            .args(["x", "-thfs", "-y"])
            .arg(format!("-o{}", out.display()))
            .arg(&part),
    );
    iso::assert_same_tree(
        &expected_hfs_view(&tree),
        &iso::manifest(&out.join("HFSTEST"), false),
        "7z extraction of the HFS+ volume",
    );
    // The HFS+ files are the ISO files: same bytes as xorriso extracts from the ISO tree.
    let iso_out = dir.path().join("iso");
    run_ok(
        Command::new(require_tool("xorriso"))
            .args(["-osirrox", "on", "-indev"])
            .arg(&image)
            .arg("-extract")
            .arg("/many")
            .arg(&iso_out),
    );
    assert_eq!(
        iso::manifest(&iso_out, false).nodes,
        iso::manifest(&out.join("HFSTEST/many"), false).nodes
    );
}

#[test]
fn grub_reads_the_hfsplus_files_through_the_apple_partition_map_and_the_gpt() {
    let dir = tempfile::tempdir().unwrap();
    let tree = hfs_tree(dir.path());
    let efi = dir.path().join("efi.img");
    let loader = dir.path().join("BOOTX64.EFI");
    fs::write(&loader, iso::pattern(30_000, 9)).unwrap();
    iso::peer_fat_image(&efi, 1440, &[(&loader, "EFI/BOOT/BOOTX64.EFI")]);
    fs::copy(&efi, tree.join("efi.img")).unwrap();
    let image = dir.path().join("grub.iso");
    // grub-mkrescue's layout: the EFI image as its own GPT partition beside the HFS+ one.
    mkisofs(
        &tree,
        &image,
        &[
            "-apm-block-size",
            "2048",
            "--efi-boot",
            "efi.img",
            "-efi-boot-part",
            "--efi-boot-image",
            "--protective-msdos-label",
        ],
    );
    let fstest = require_tool("grub-fstest");
    let grub = |args: &[&str]| -> String {
        let out = run_ok(Command::new(&fstest).arg(&image).args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let partitions = grub(&["ls"]);
    // apple1 is the map itself, apple2 the gap before the volume, apple3 the HFS+ volume.
    assert!(
        partitions.contains("(loop0,apple3)") && partitions.contains("(loop0,gpt3)"),
        "{partitions}"
    );
    for hfs in ["(loop0,apple3)", "(loop0,gpt3)"] {
        let root = grub(&["ls", &format!("{hfs}/")]);
        for name in ["docs/", "empty/", "many/", "zero", "link"] {
            assert!(root.split_whitespace().any(|w| w == name), "{hfs}: {root}");
        }
        assert!(
            !root.contains("efi.img"),
            "the ESP image is its own partition: {root}"
        );
        for file in [
            "docs/deep/deeper/data.bin",
            "many/file-0399-with-a-rather-long-name.txt",
        ] {
            assert_eq!(
                grub(&["crc", &format!("{hfs}/{file}")]),
                grub(&["crc", &format!("(loop0)/{file}")]),
                "{hfs}/{file} differs from the ISO 9660 file"
            );
        }
    }
    let esp = grub(&["ls", "(loop0,gpt2)/EFI/BOOT/"]);
    assert!(esp.to_ascii_uppercase().contains("BOOTX64.EFI"), "{esp}");
}

#[test]
fn apm_and_gpt_match_xorrisos_image_of_the_same_line() {
    let dir = tempfile::tempdir().unwrap();
    let tree = hfs_tree(dir.path());
    fs::copy(tree.join("docs/deep/deeper/data.bin"), tree.join("efi.img")).unwrap();
    let line = [
        "-R",
        "-hfsplus",
        "-apm-block-size",
        "2048",
        "--efi-boot",
        "efi.img",
        "-efi-boot-part",
        "--efi-boot-image",
        "--protective-msdos-label",
    ];
    let plain = ["-R", "-hfsplus"];
    for (args, what) in [
        (&line[..], "grub-mkrescue line"),
        (&plain[..], "-hfsplus alone"),
    ] {
        let vm = dir.path().join("vmedia.iso");
        let xo = dir.path().join("xorriso.iso");
        run_ok(
            vmedia()
                .args(["mkisofs", "-quiet"])
                .args(args)
                .arg("-o")
                .arg(&vm)
                .arg(&tree),
        );
        run_ok(
            Command::new(require_tool("xorriso"))
                .args(["-as", "mkisofs", "-quiet"])
                .args(args)
                .arg("-o")
                .arg(&xo)
                .arg(&tree),
        );
        let (vr, xr) = (iso::xorriso_report(&vm), iso::xorriso_report(&xo));
        let context = format!(
            "{what}\n--- vmedia\n{}\n--- xorriso\n{}",
            vr.join("\n"),
            xr.join("\n")
        );
        let kinds = |r: &[String]| -> Vec<(String, String)> {
            apm_entries(r).into_iter().map(|e| (e.0, e.1)).collect()
        };
        assert_eq!(kinds(&vr), kinds(&xr), "APM entries: {context}");
        assert_eq!(
            iso::report_rows(&vr, "APM block size"),
            iso::report_rows(&xr, "APM block size"),
            "{context}"
        );
        assert_eq!(
            iso::system_area_summary(&vr),
            iso::system_area_summary(&xr),
            "{context}"
        );
        assert_eq!(
            iso::gpt_types(&vr),
            iso::gpt_types(&xr),
            "GPT types: {context}"
        );
        assert_eq!(
            iso::report_rows(&vr, "GPT partname local"),
            iso::report_rows(&xr, "GPT partname local"),
            "GPT names: {context}"
        );
        // Every file of the same tree gets the same catalog id as in xorriso's volume, so
        // the HFS+ partitions hold the same number of files.
        let count = |image: &Path| -> String {
            let sub = tempfile::tempdir().unwrap();
            let part = hfs_partition(image, sub.path());
            let out = run_ok(Command::new("7z").args(["l", "-thfs"]).arg(&part));
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(count(&vm), count(&xo), "7z totals: {context}");
    }
}

#[test]
fn bless_and_finder_codes_land_where_xorriso_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("System/Library/CoreServices")).unwrap();
    fs::write(tree.join("System/Library/CoreServices/boot.efi"), b"efi").unwrap();
    fs::write(
        tree.join("System/Library/CoreServices/.disk_label"),
        b"label",
    )
    .unwrap();
    fs::write(tree.join("mach_kernel"), b"").unwrap();
    // xorriso finds the folder for -hfs-bless through a data file directly in it.
    fs::write(tree.join("System/readme"), b"blessed\n").unwrap();
    let system = tree.join("System").to_string_lossy().into_owned();
    let args = [
        "-R",
        "-hfsplus",
        "-hfsplus-file-creator-type",
        "chrp",
        "tbxj",
        "/System/Library/CoreServices/.disk_label",
        "-hfs-bless-by",
        "i",
        "/System/Library/CoreServices/boot.efi",
        "-hfs-bless-by",
        "x",
        "/System/Library/CoreServices",
        "-hfsplus-serial-no",
        "0123456789abcdef",
        // By host path: the folder made from tree/System becomes ppc_bootdir.
        "-hfs-bless",
        &system,
    ];
    let vm = dir.path().join("vmedia.iso");
    let xo = dir.path().join("xorriso.iso");
    run_ok(
        vmedia()
            .args(["mkisofs", "-quiet"])
            .args(args)
            .arg("-o")
            .arg(&vm)
            .arg(&tree),
    );
    run_ok(
        Command::new(require_tool("xorriso"))
            .args(["-as", "mkisofs", "-quiet"])
            .args(args)
            .arg("-o")
            .arg(&xo)
            .arg(&tree),
    );
    // Volume header finder info (blessed catalog ids) and the serial number: same bytes.
    let header = |image: &Path| -> Vec<u8> {
        let sub = tempfile::tempdir().unwrap();
        let part = fs::read(hfs_partition(image, sub.path())).unwrap();
        assert_eq!(&part[1024..1026], b"H+");
        part[1024 + 80..1024 + 112].to_vec()
    };
    let (vh, xh) = (header(&vm), header(&xo));
    assert_eq!(vh, xh, "finder info words");
    assert_ne!(&vh[4..8], &[0u8; 4], "intel_bootfile is blessed");
    assert_ne!(&vh[0..4], &[0u8; 4], "ppc_bootdir is blessed (-hfs-bless)");
    assert_eq!(
        &vh[24..32],
        &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
    );
    for image in [&vm, &xo] {
        let sub = tempfile::tempdir().unwrap();
        let part = fs::read(hfs_partition(image, sub.path())).unwrap();
        let hits = part.windows(8).filter(|w| w == b"tbxjchrp").count();
        assert_eq!(
            hits,
            1,
            "type and creator of .disk_label in {}",
            image.display()
        );
    }
    // A bless target that is not in the image is an error naming it.
    let (code, _, err) = support::run_any(
        vmedia()
            .args([
                "mkisofs",
                "-quiet",
                "-hfsplus",
                "-hfs-bless-by",
                "i",
                "/nope.efi",
                "-o",
            ])
            .arg(dir.path().join("bad.iso"))
            .arg(&tree),
    );
    assert_ne!(code, 0);
    assert!(err.contains("/nope.efi"), "{err}");
}

#[test]
fn hfsplus_images_are_reproducible_and_dated_from_source_date_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let tree = hfs_tree(dir.path());
    let a = dir.path().join("a.iso");
    let b = dir.path().join("b.iso");
    mkisofs(&tree, &a, &[]);
    // A copy with new mtimes gives the same bytes (times later than the date are clamped).
    let copy = dir.path().join("copy");
    run_ok(
        Command::new("cp")
            .args(["-r", "--preserve=links"])
            .arg(&tree)
            .arg(&copy),
    );
    mkisofs(&copy, &b, &[]);
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "images differ"
    );
    let part = hfs_partition(&a, dir.path());
    let listing = run_ok(Command::new("7z").args(["l", "-thfs"]).arg(&part));
    let listing = String::from_utf8_lossy(&listing.stdout);
    // 1700000000 = 2023-11-14 22:13:20 UTC.
    assert!(
        listing.contains("Created = 2023-11-14 22:13:20"),
        "{listing}"
    );
}

#[test]
fn names_that_fold_alike_are_renamed_in_hfsplus_only() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("README"), b"upper").unwrap();
    fs::write(tree.join("readme"), b"lower").unwrap();
    let image = dir.path().join("case.iso");
    mkisofs(&tree, &image, &[]);
    let part = hfs_partition(&image, dir.path());
    let out = dir.path().join("x");
    run_ok(
        Command::new("7z")
            .args(["x", "-thfs", "-y"])
            .arg(format!("-o{}", out.display()))
            .arg(&part),
    );
    let mut names: Vec<String> = fs::read_dir(out.join("HFSTEST"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["README", "readme_0"]);
    assert_eq!(fs::read(out.join("HFSTEST/readme_0")).unwrap(), b"lower");
    let rr = run_ok(
        Command::new(require_tool("isoinfo"))
            .args(["-R", "-f", "-i"])
            .arg(&image),
    );
    let rr = String::from_utf8_lossy(&rr.stdout);
    assert!(rr.contains("/readme\n") && rr.contains("/README\n"), "{rr}");
}

/// A shell script grub-mkrescue runs as its xorriso: `vmedia mkisofs` with the same words.
fn xorriso_shim(dir: &Path) -> PathBuf {
    let shim = dir.join("xorriso-shim");
    fs::write(
        &shim,
        format!(
            "#!/bin/sh\nexec '{}' mkisofs \"$@\"\n",
            env!("CARGO_BIN_EXE_vmedia")
        ),
    )
    .unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    shim
}

#[test]
fn grub_mkrescue_with_hfsplus_boots_under_seabios_and_ovmf() {
    let (tree, _) = iso::grub_tree();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    run_ok(Command::new("cp").arg("-a").arg(&tree).arg(&src));
    // grub-mkrescue makes its own El Torito core; ours would shadow it.
    fs::remove_file(src.join("boot/grub/i386-pc/eltorito.img")).unwrap();
    let image = dir.path().join("rescue.iso");
    let shim = xorriso_shim(dir.path());
    let out = run_ok(
        Command::new(require_tool("grub-mkrescue"))
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg(format!("--xorriso={}", shim.display()))
            .arg("-o")
            .arg(&image)
            .arg(&src),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("left out"),
        "nothing may be dropped: {stderr}"
    );
    let report = iso::xorriso_report(&image);
    let summary = iso::system_area_summary(&report);
    for token in ["protective-msdos-label", "grub2-mbr", "GPT", "APM"] {
        assert!(
            summary.contains(&token.to_string()),
            "{token}:\n{}",
            report.join("\n")
        );
    }
    let boot_efi = run_ok(
        Command::new(require_tool("grub-fstest"))
            .arg(&image)
            .args(["ls", "(loop0,apple3)/System/Library/CoreServices/"]),
    );
    assert!(
        String::from_utf8_lossy(&boot_efi.stdout).contains("boot.efi"),
        "grub-mkrescue's Mac loader is in the HFS+ volume"
    );
    let cdrom = format!(
        "file={},format=raw,if=ide,media=cdrom,readonly=on",
        image.display()
    );
    let log = qemu_boot(
        Firmware::Bios,
        &["-drive", &cdrom, "-boot", "d"],
        BOOT_MARKER,
        BOOT_TIMEOUT,
    );
    assert!(log.contains(BOOT_MARKER), "SeaBIOS CD-ROM boot");
    // UEFI from the image as a disk: OVMF finds the ESP through the GPT whose entries sit
    // behind the Apple Partition Map.
    let disk = dir.path().join("disk.img");
    fs::copy(&image, &disk).unwrap();
    let hd = format!("file={},format=raw,if=ide", disk.display());
    let log = qemu_boot(
        Firmware::Uefi,
        &["-drive", &hd, "-boot", "c"],
        BOOT_MARKER,
        BOOT_TIMEOUT,
    );
    assert!(log.contains(BOOT_MARKER), "OVMF hybrid disk boot");
}

/// `isoinfo -R -l` rows as (name, link count, extent LBA), per file.
fn isoinfo_links(image: &Path) -> Vec<(String, u32, u64)> {
    let out = run_ok(
        Command::new(require_tool("isoinfo"))
            .args(["-R", "-l", "-i"])
            .arg(image),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut rows = Vec::new();
    let mut dir = String::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("Directory listing of ") {
            dir = d.trim().to_string();
            continue;
        }
        if !line.starts_with('-') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let links: u32 = fields[1].parse().unwrap();
        let open = line.find('[').unwrap();
        let lba: u64 = line[open + 1..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let name = line.rsplit("] ").next().unwrap().trim().to_string();
        rows.push((format!("{dir}{name}"), links, lba));
    }
    rows.sort();
    rows
}

#[test]
fn repacked_hard_links_share_one_extent_and_keep_their_link_count() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("d")).unwrap();
    fs::write(tree.join("a"), b"shared content\n").unwrap();
    fs::hard_link(tree.join("a"), tree.join("d/b")).unwrap();
    fs::write(tree.join("e1"), b"").unwrap();
    fs::write(tree.join("e2"), b"").unwrap();
    fs::write(tree.join("other"), b"shared content\n").unwrap();
    let original = dir.path().join("xorriso.iso");
    run_ok(
        Command::new(require_tool("xorriso"))
            .args(["-as", "mkisofs", "-quiet", "-R", "-o"])
            .arg(&original)
            .arg(&tree),
    );
    let repacked = dir.path().join("repacked.iso");
    run_ok(
        vmedia()
            .args(["iso", "repack", "--quiet"])
            .arg(&original)
            .arg("-o")
            .arg(&repacked),
    );
    let rows = isoinfo_links(&repacked);
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing: {rows:?}"))
    };
    let (a, b) = (get("/a"), get("/d/b"));
    assert_eq!((a.1, b.1), (2, 2), "link counts: {rows:?}");
    assert_eq!(a.2, b.2, "one extent for both names: {rows:?}");
    // Same content but not a link in the input: its own extent and one link.
    let other = get("/other");
    assert_eq!(other.1, 1);
    assert_ne!(other.2, a.2);
    // Empty files are never merged.
    assert_eq!((get("/e1").1, get("/e2").1), (1, 1));
    // xorriso agrees: both names start at the same block of the repacked image.
    let lba = run_ok(Command::new("xorriso").arg("-indev").arg(&repacked).args([
        "-find",
        "/",
        "-type",
        "f",
        "-exec",
        "report_lba",
    ]));
    let lba = String::from_utf8_lossy(&lba.stdout);
    let start_of = |name: &str| -> String {
        lba.lines()
            .find(|l| l.ends_with(&format!("'{name}'")))
            .and_then(|l| l.split(',').nth(1))
            .map(|f| f.trim().to_string())
            .unwrap_or_else(|| panic!("{name} not reported:\n{lba}"))
    };
    assert_eq!(start_of("/a"), start_of("/d/b"), "{lba}");
    assert_ne!(start_of("/a"), start_of("/other"), "{lba}");
}

/// Printed by the HFS+ check initramfs after its listing.
const HFS_DONE: &str = "VMEDIA-HFS-DONE";

/// An initramfs that loop-mounts `volume` with the Linux kernel's own HFS+ driver and prints
/// one line per entry: `D path`, `L path target`, `F path md5`; then mounts the whole `image`
/// (the driver finds the volume through the 512-byte Apple Partition Map itself) and prints
/// `WHOLE-OK` when a file reads back there too; then `HFS_DONE`.
fn kernel_hfs_initrd(volume: &Path, image: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let payload = support::payload();
    let version = fs::read_dir("/boot")
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .max()
        .expect("no /boot/vmlinuz-*");
    let modules = Path::new("/lib/modules").join(&version).join("kernel");
    let root = dir.join("initramfs");
    for sub in ["bin", "proc", "sys", "dev", "mnt", "whole"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    fs::copy(require_tool("busybox"), root.join("bin/busybox")).unwrap();
    // hfsplus.ko needs cdrom.ko (its multi-session query) and the UTF-8 table for names.
    for module in [
        "drivers/block/loop.ko",
        "drivers/cdrom/cdrom.ko",
        "fs/nls/nls_utf8.ko",
        "fs/hfsplus/hfsplus.ko",
    ] {
        let from = modules.join(module);
        let name = from.file_name().unwrap().to_owned();
        fs::copy(&from, root.join(name))
            .unwrap_or_else(|e| panic!("{}: {e} (linux-image-amd64 modules)", from.display()));
    }
    fs::copy(volume, root.join("hfs.img")).unwrap();
    fs::copy(image, root.join("image.iso")).unwrap();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t devtmpfs dev /dev\n\
         insmod /loop.ko\n\
         insmod /cdrom.ko\n\
         insmod /nls_utf8.ko\n\
         insmod /hfsplus.ko\n\
         losetup /dev/loop0 /hfs.img\n\
         echo\n\
         if mount -t hfsplus -o ro /dev/loop0 /mnt; then\n\
           cd /mnt\n\
           find . | sort | while read p; do\n\
             if [ -L \"$p\" ]; then echo \"L $p $(readlink \"$p\")\";\n\
             elif [ -d \"$p\" ]; then echo \"D $p\";\n\
             else echo \"F $p $(md5sum < \"$p\" | cut -d' ' -f1)\"; fi\n\
           done\n\
         else echo MOUNT-FAILED; fi\n\
         cd /\n\
         losetup /dev/loop1 /image.iso\n\
         if mount -t hfsplus -o ro /dev/loop1 /whole && cmp /whole/docs/readme.txt /mnt/docs/readme.txt; then\n\
           echo WHOLE-OK; fi\n\
         echo {HFS_DONE}\n\
         poweroff -f\n"
    );
    fs::write(root.join("init"), init).unwrap();
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
    let initrd = dir.join("hfs-initrd.gz");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("cd initramfs && find . | cpio -o -H newc --quiet | gzip -1 > ../hfs-initrd.gz")
            .current_dir(dir),
    );
    (payload.kernel, initrd)
}

/// The same listing of a host tree.
fn host_listing(tree: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(
                "find . | sort | while read p; do \
           if [ -L \"$p\" ]; then echo \"L $p $(readlink \"$p\")\"; \
           elif [ -d \"$p\" ]; then echo \"D $p\"; \
           else echo \"F $p $(md5sum < \"$p\" | cut -d' ' -f1)\"; fi; done",
            )
            .current_dir(tree),
    );
    // The kernel composes names again when it lists them, so the host's names are expected.
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn linux_hfsplus_driver_mounts_the_volume_and_reads_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let tree = hfs_tree(dir.path());
    // The big file would only slow the initramfs down; the B-tree and names are the point.
    fs::remove_file(tree.join("docs/deep/deeper/data.bin")).unwrap();
    fs::write(
        tree.join("docs/deep/deeper/data.bin"),
        iso::pattern(300_000, 5),
    )
    .unwrap();
    let image = dir.path().join("linux.iso");
    mkisofs(&tree, &image, &[]);
    let part = hfs_partition(&image, dir.path());
    let (kernel, initrd) = kernel_hfs_initrd(&part, &image, dir.path());
    let log = qemu_boot(
        Firmware::Bios,
        &[
            "-kernel",
            &kernel.to_string_lossy(),
            "-initrd",
            &initrd.to_string_lossy(),
            "-append",
            "console=ttyS0 no_timer_check panic=-1 loglevel=4",
        ],
        HFS_DONE,
        BOOT_TIMEOUT,
    );
    assert!(
        !log.contains("MOUNT-FAILED"),
        "the kernel refused the volume:\n{log}"
    );
    assert!(
        log.contains("WHOLE-OK"),
        "the kernel did not find the volume through the APM of the whole image:\n{log}"
    );
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hfsplus:") || l.contains("hfs:"))
        .collect();
    assert!(
        errors.is_empty(),
        "kernel HFS+ messages:\n{}",
        errors.join("\n")
    );
    let mut seen: Vec<String> = log
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with("D ") || l.starts_with("F ") || l.starts_with("L "))
        .map(str::to_string)
        .collect();
    seen.sort();
    let mut expected = host_listing(&tree);
    expected.retain(|l| l != "D .");
    seen.retain(|l| l != "D .");
    let only_kernel: Vec<&String> = seen.iter().filter(|l| !expected.contains(l)).collect();
    let only_host: Vec<&String> = expected.iter().filter(|l| !seen.contains(l)).collect();
    assert!(
        only_kernel.is_empty() && only_host.is_empty(),
        "kernel view of the HFS+ volume differs:\nonly in the kernel's: {only_kernel:?}\n\
         only in the tree: {only_host:?}"
    );
}

#[test]
fn isohybrid_apm_image_still_boots_as_a_bios_disk() {
    let tree = iso::isolinux_tree();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    run_ok(Command::new("cp").arg("-a").arg(&tree).arg(&src));
    let loader = dir.path().join("BOOTX64.EFI");
    fs::write(&loader, iso::pattern(20_000, 3)).unwrap();
    iso::peer_fat_image(
        &src.join("efi.img"),
        1440,
        &[(&loader, "EFI/BOOT/BOOTX64.EFI")],
    );
    let image = dir.path().join("debian-like.iso");
    // debian-cd's layout: the APM descriptor overwrites the first 8 bytes of isohdpfx.bin.
    run_ok(
        vmedia()
            .args(["mkisofs", "-quiet", "-r", "-J", "-isohybrid-mbr"])
            .arg("/usr/lib/ISOLINUX/isohdpfx.bin")
            .args([
                "-b",
                "isolinux/isolinux.bin",
                "-c",
                "isolinux/boot.cat",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "-eltorito-alt-boot",
                "-e",
                "efi.img",
                "-no-emul-boot",
                "-isohybrid-gpt-basdat",
                "-isohybrid-apm-hfsplus",
                "-o",
            ])
            .arg(&image)
            .arg(&src),
    );
    let report = iso::xorriso_report(&image);
    assert!(
        iso::system_area_summary(&report).contains(&"APM".to_string()),
        "{}",
        report.join("\n")
    );
    let disk = dir.path().join("disk.img");
    fs::copy(&image, &disk).unwrap();
    let hd = format!("file={},format=raw,if=ide", disk.display());
    let log = qemu_boot(
        Firmware::Bios,
        &["-drive", &hd, "-boot", "c"],
        BOOT_MARKER,
        BOOT_TIMEOUT,
    );
    assert!(log.contains(BOOT_MARKER), "SeaBIOS hybrid disk boot");
}

#[test]
fn catalog_btree_shape_matches_xorrisos_for_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = hfs_tree(dir.path());
    let args = ["-R", "-V", "SHAPE", "-hfsplus"];
    let vm = dir.path().join("vmedia.iso");
    let xo = dir.path().join("xorriso.iso");
    run_ok(
        vmedia()
            .args(["mkisofs", "-quiet"])
            .args(args)
            .arg("-o")
            .arg(&vm)
            .arg(&tree),
    );
    run_ok(
        Command::new(require_tool("xorriso"))
            .args(["-as", "mkisofs", "-quiet"])
            .args(args)
            .arg("-o")
            .arg(&xo)
            .arg(&tree),
    );
    // The catalog B-tree header record (depth, root, leaf records, first and last leaf,
    // node size, key length, node count) and the counts in the volume header: records are
    // sized and packed into nodes the same way, so the trees have the same shape.
    let shape = |image: &Path| -> (Vec<u8>, Vec<u8>) {
        let sub = tempfile::tempdir().unwrap();
        let part = fs::read(hfs_partition(image, sub.path())).unwrap();
        let volume = &part[1024..1024 + 512];
        let catalog_start = u32::from_be_bytes(volume[272 + 16..272 + 20].try_into().unwrap());
        let header = catalog_start as usize * 2048 + 14;
        (
            part[header..header + 30].to_vec(),
            [&volume[32..48], &volume[64..68]].concat(),
        )
    };
    let (v_tree, v_counts) = shape(&vm);
    let (x_tree, x_counts) = shape(&xo);
    assert_eq!(v_tree, x_tree, "catalog header record");
    assert_eq!(
        v_counts, x_counts,
        "file and folder counts, block size, total blocks, next catalog id"
    );
    let depth = u16::from_be_bytes([v_tree[0], v_tree[1]]);
    assert!(depth >= 2, "the tree has index levels (depth {depth})");
}

#[test]
fn a_file_over_4_gib_is_read_through_hfsplus_by_grub() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    // Sparse: 5 GiB with a marker in its last bytes (multi-extent in ISO 9660, one HFS+ extent).
    let size: u64 = 5 << 30;
    let huge = fs::File::create(tree.join("huge.bin")).unwrap();
    huge.set_len(size).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&huge, b"tail", size - 4).unwrap();
    drop(huge);
    let image = dir.path().join("huge.iso");
    run_ok(
        vmedia()
            .args([
                "mkisofs",
                "-quiet",
                "-R",
                "-iso-level",
                "3",
                "-hfsplus",
                "--no-checksums",
                "-o",
            ])
            .arg(&image)
            .arg(&tree),
    );
    let skip = (size - 4).to_string();
    let tail = run_ok(
        Command::new(require_tool("grub-fstest"))
            .args(["-s", &skip, "-n", "4"])
            .arg(&image)
            .args(["cat", "(loop0,apple3)/huge.bin"]),
    );
    assert_eq!(String::from_utf8_lossy(&tail.stdout).trim(), "tail");
}

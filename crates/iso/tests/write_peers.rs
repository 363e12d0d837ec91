//! The ISO writer engine checked by the peers: every image written here is read back by
//! xorriso, isoinfo, 7z, bsdtar (and checkisomd5), and compared with the source tree.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use vmedia_io::{NoProgress, OverwritePolicy};
use vmedia_iso::spec::*;
use vmedia_iso::write::{write_image, WriteError, WriteReport};

fn require_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("required tool {name} is not installed; run `bash scripts/setup.sh` (make test does)");
}

/// Runs a peer tool, panicking with its output when it fails; returns stdout + stderr.
fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(require_tool(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{tool} {args:?} failed with {}:\n{text}",
        out.status
    );
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tree with the things readers trip over: long and Unicode names, a symlink, a hard link,
/// an empty file and folder, a FIFO, deep folders and a name that collides at level 1.
fn rich_tree(root: &Path) {
    fs::create_dir_all(root.join("docs/deep/a/b/c/d/e/f/g/h")).unwrap();
    fs::write(root.join("hello.txt"), b"hello world\n").unwrap();
    fs::write(
        root.join("docs/deep/a/b/c/d/e/f/g/h/bottom.txt"),
        b"at the bottom\n",
    )
    .unwrap();
    fs::write(
        root.join("A long file name that needs Rock Ridge or Joliet.tar.gz"),
        vec![7u8; 5000],
    )
    .unwrap();
    fs::write(root.join("Grüße, 日本語.txt"), b"unicode\n").unwrap();
    fs::write(root.join("longname1.txt"), b"1").unwrap();
    fs::write(root.join("longname2.txt"), b"2").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::create_dir(root.join("emptydir")).unwrap();
    fs::write(root.join("docs/readme.md"), vec![b'r'; 70_000]).unwrap();
    fs::hard_link(root.join("hello.txt"), root.join("docs/hello-hardlink.txt")).unwrap();
    symlink("../hello.txt", root.join("docs/link-to-hello")).unwrap();
    let fifo = std::ffi::CString::new(s(&root.join("fifo"))).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
}

fn base_spec(src: &Path) -> IsoSpec {
    let mut spec = IsoSpec::default();
    spec.sources.push(GraftPoint {
        iso_path: "/".into(),
        host_path: src.to_path_buf(),
    });
    spec.naming.rock_ridge = Some(RockRidgeMode::Faithful);
    spec.naming.joliet = true;
    spec.volume.volume_id = Some("VMEDIA_TEST".into());
    spec
}

fn write(spec: &IsoSpec, out: &Path) -> WriteReport {
    write_image(spec, out, OverwritePolicy::Replace, &NoProgress)
        .unwrap_or_else(|e| panic!("write_image failed: {e}"))
}

#[test]
fn rock_ridge_tree_is_listed_alike_by_xorriso_bsdtar_and_isoinfo() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    let iso = dir.path().join("out.iso");
    write(&base_spec(&src), &iso);

    let x = run(
        "xorriso",
        &["-indev", s(&iso), "-find", "/", "-exec", "lsdl"],
    );
    for want in [
        "'/A long file name that needs Rock Ridge or Joliet.tar.gz'",
        "'/Grüße, 日本語.txt'",
        "'/docs/deep/a/b/c/d/e/f/g/h/bottom.txt'",
        "'/docs/link-to-hello' -> '../hello.txt'",
        "'/emptydir'",
    ] {
        assert!(x.contains(want), "xorriso does not list {want}:\n{x}");
    }
    assert!(
        x.lines()
            .any(|l| l.starts_with('p') && l.contains("'/fifo'")),
        "FIFO lost:\n{x}"
    );

    let b = run("bsdtar", &["-tvf", s(&iso)]);
    assert!(b.contains("docs/link-to-hello -> ../hello.txt"), "{b}");
    assert!(b.contains("docs/deep/a/b/c/d/e/f/g/h/bottom.txt"), "{b}");
    // libarchive reports the second name of a hard link as a link to the first.
    assert!(
        b.contains("link to"),
        "hard link not recognised by bsdtar:\n{b}"
    );

    let r = run("isoinfo", &["-R", "-l", "-i", s(&iso)]);
    assert!(
        r.contains("A long file name that needs Rock Ridge or Joliet.tar.gz"),
        "{r}"
    );
    let j = run("isoinfo", &["-J", "-l", "-i", s(&iso)]);
    assert!(
        j.contains("A long file name that needs Rock Ridge or Joliet.tar.gz "),
        "Joliet name wrong:\n{j}"
    );
    // 7z reads the Joliet tree, with Unicode names.
    let z = run("7z", &["l", s(&iso)]);
    assert!(
        z.contains("Grüße, 日本語.txt"),
        "Joliet Unicode name wrong:\n{z}"
    );
    assert!(
        z.contains("docs/readme.md") || z.contains("docs\\readme.md"),
        "{z}"
    );
}

#[test]
fn extraction_by_xorriso_and_bsdtar_matches_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    fs::remove_file(src.join("fifo")).unwrap();
    let iso = dir.path().join("out.iso");
    write(&base_spec(&src), &iso);

    let by_xorriso = dir.path().join("x");
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            s(&iso),
            "-extract",
            "/",
            s(&by_xorriso),
        ],
    );
    // rr_moved (the deep-folder relocation folder) is visible, as with genisoimage images.
    run(
        "diff",
        &[
            "-r",
            "--no-dereference",
            "-x",
            "rr_moved",
            s(&src),
            s(&by_xorriso),
        ],
    );

    let by_bsdtar = dir.path().join("b");
    fs::create_dir(&by_bsdtar).unwrap();
    run("bsdtar", &["-xf", s(&iso), "-C", s(&by_bsdtar)]);
    run(
        "diff",
        &[
            "-r",
            "--no-dereference",
            "-x",
            "rr_moved",
            s(&src),
            s(&by_bsdtar),
        ],
    );

    let by_7z = dir.path().join("z");
    run("7z", &["x", "-y", &format!("-o{}", s(&by_7z)), s(&iso)]);
    assert_eq!(
        fs::read(by_7z.join("docs/readme.md")).unwrap(),
        vec![b'r'; 70_000]
    );
}

#[test]
fn level1_names_are_8_3_with_versions_and_unique() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    let iso = dir.path().join("out.iso");
    let mut spec = base_spec(&src);
    spec.naming.rock_ridge = None;
    spec.naming.joliet = false;
    write(&spec, &iso);
    let l = run("isoinfo", &["-l", "-i", s(&iso)]);
    for want in [
        "HELLO.TXT;1",
        "LONGNAME.TXT;1",
        "LONGN000.TXT;1",
        "EMPTY.;1",
        "A_LONG_F.GZ;1",
    ] {
        assert!(l.contains(want), "isoinfo does not list {want}:\n{l}");
    }
    // Every name is 8.3 at most.
    for line in l.lines().filter(|l| l.contains(";1")) {
        let name = line.rsplit(' ').find(|w| w.contains(";1")).unwrap();
        let stem = name.trim_end_matches(";1");
        let (base, ext) = stem.split_once('.').unwrap();
        assert!(base.len() <= 8 && ext.len() <= 3, "{name} is not 8.3");
    }
    // Without Rock Ridge, symlinks and FIFOs are left out as mkisofs does.
    assert!(!l.contains("FIFO"), "{l}");
}

#[test]
fn names_agree_with_genisoimage_on_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    fs::remove_file(src.join("fifo")).unwrap();
    let ours = dir.path().join("ours.iso");
    let theirs = dir.path().join("theirs.iso");
    let mut spec = base_spec(&src);
    spec.naming.iso_level = 2;
    write(&spec, &ours);
    run(
        "genisoimage",
        &[
            "-quiet",
            "-R",
            "-J",
            "-iso-level",
            "2",
            "-o",
            s(&theirs),
            s(&src),
        ],
    );
    let list = |iso: &Path, flag: &str| {
        let mut v: Vec<String> = run("isoinfo", &[flag, "-f", "-i", s(iso)])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        list(&ours, "-R"),
        list(&theirs, "-R"),
        "Rock Ridge paths differ from genisoimage"
    );
    // genisoimage writes symbolic links into Joliet as empty files; xorriso leaves them out, and
    // so does vmedia.
    let is_link = |p: &String| {
        fs::symlink_metadata(src.join(p.trim_start_matches('/')))
            .is_ok_and(|m| m.file_type().is_symlink())
    };
    let mut genisoimage_joliet = list(&theirs, "-J");
    genisoimage_joliet.retain(|p| !is_link(p));
    assert_eq!(
        list(&ours, "-J"),
        genisoimage_joliet,
        "Joliet paths differ from genisoimage's, symbolic links aside"
    );
}

#[test]
fn symlinks_are_left_out_of_joliet_like_xorriso() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    fs::remove_file(src.join("fifo")).unwrap();
    let ours = dir.path().join("ours.iso");
    let theirs = dir.path().join("xorriso.iso");
    write(&base_spec(&src), &ours);
    run(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-J",
            "-o",
            s(&theirs),
            s(&src),
        ],
    );
    let list = |iso: &Path| {
        let mut v: Vec<String> = run("isoinfo", &["-J", "-f", "-i", s(iso)])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    };
    let ours_joliet = list(&ours);
    assert!(
        ours_joliet.iter().all(
            |p| !fs::symlink_metadata(src.join(p.trim_start_matches('/')))
                .is_ok_and(|m| m.file_type().is_symlink())
        ),
        "{ours_joliet:?}"
    );
    assert_eq!(
        ours_joliet,
        list(&theirs),
        "Joliet paths differ from xorriso's"
    );
}

#[test]
fn deep_folders_are_relocated_and_shown_in_place_by_rock_ridge_readers() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    let iso = dir.path().join("out.iso");
    write(&base_spec(&src), &iso);
    // Plain ISO 9660 view: the deep folder lives under RR_MOVED.
    let plain = run("isoinfo", &["-l", "-i", s(&iso)]);
    assert!(plain.contains("Directory listing of /RR_MOVED/"), "{plain}");
    // Rock Ridge readers follow CL/PL/RE back to the original place.
    let x = run(
        "xorriso",
        &[
            "-indev",
            s(&iso),
            "-find",
            "/docs/deep/a/b/c/d/e/f/g/h",
            "-exec",
            "lsdl",
        ],
    );
    assert!(x.contains("'/docs/deep/a/b/c/d/e/f/g/h/bottom.txt'"), "{x}");
}

#[test]
fn hard_links_share_one_extent() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    let iso = dir.path().join("out.iso");
    write(&base_spec(&src), &iso);
    let l = run("isoinfo", &["-R", "-l", "-i", s(&iso)]);
    let lba_of = |name: &str| -> String {
        let line = l
            .lines()
            .find(|x| x.trim_end().ends_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{l}"));
        line.split('[')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(lba_of("hello.txt"), lba_of("hello-hardlink.txt"));
    assert!(
        l.lines()
            .any(|x| x.contains(" 2 ") && x.trim_end().ends_with("hello.txt")),
        "link count 2 expected:\n{l}"
    );
}

/// A small FAT image standing in for an EFI system partition.
fn efi_image(path: &Path) {
    run("mkfs.vfat", &["-C", s(path), "1440"]);
    let mmd = Command::new(require_tool("mmd"))
        .args(["-i", s(path), "::/EFI", "::/EFI/BOOT"])
        .status()
        .unwrap();
    assert!(mmd.success());
}

fn boot_tree(root: &Path) {
    fs::create_dir_all(root.join("isolinux")).unwrap();
    fs::copy(
        "/usr/lib/ISOLINUX/isolinux.bin",
        root.join("isolinux/isolinux.bin"),
    )
    .unwrap_or_else(|e| panic!("isolinux not installed: {e}"));
    fs::write(root.join("isolinux/isolinux.cfg"), "DEFAULT linux\n").unwrap();
    efi_image(&root.join("efi.img"));
}

fn bios_efi_spec(src: &Path) -> IsoSpec {
    let mut spec = base_spec(src);
    spec.boot.catalog_path = Some("isolinux/boot.cat".into());
    let mut bios = BootEntry::new(
        Platform::X86,
        BootImage::IsoPath("isolinux/isolinux.bin".into()),
    );
    bios.emulation = Emulation::NoEmulation;
    bios.boot_info_table = true;
    spec.boot.entries.push(bios);
    spec.boot.entries.push(BootEntry::new(
        Platform::Efi,
        BootImage::IsoPath("/efi.img".into()),
    ));
    spec
}

#[test]
fn bios_and_efi_el_torito_entries_are_reported_by_xorriso() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    boot_tree(&src);
    let iso = dir.path().join("boot.iso");
    let report = write(&bios_efi_spec(&src), &iso);
    let x = run(
        "xorriso",
        &["-indev", s(&iso), "-report_el_torito", "plain"],
    );
    assert!(x.contains("El Torito cat path : /isolinux/boot.cat"), "{x}");
    assert!(x.contains("/isolinux/isolinux.bin"), "{x}");
    assert!(x.contains("/efi.img"), "{x}");
    assert!(
        x.contains("boot-info-table"),
        "xorriso does not see the boot-info-table:\n{x}"
    );
    let bios_line = x
        .lines()
        .find(|l| l.contains("boot img") && l.contains("BIOS"))
        .unwrap();
    let efi_line = x
        .lines()
        .find(|l| l.contains("boot img") && l.contains("UEFI"))
        .unwrap();
    assert!(
        bios_line.split_whitespace().any(|w| w == "4"),
        "BIOS load size 4 expected: {bios_line}"
    );
    assert!(
        efi_line.contains(" 2880 "),
        "EFI load size = whole 1.44 MB image expected: {efi_line}"
    );
    // Boot-info-table: PVD at 16, the file's own LBA and length, as isolinux expects.
    let img = fs::read(&iso).unwrap();
    let lba = report.boot_entries[0].image_lba as usize;
    let table = &img[lba * 2048 + 8..lba * 2048 + 24];
    assert_eq!(u32::from_le_bytes(table[0..4].try_into().unwrap()), 16);
    assert_eq!(
        u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize,
        lba
    );
    assert_eq!(
        u64::from(u32::from_le_bytes(table[8..12].try_into().unwrap())),
        fs::metadata(src.join("isolinux/isolinux.bin"))
            .unwrap()
            .len()
    );
    // 7z sees the boot image too.
    assert!(run("7z", &["l", s(&iso)]).contains("[BOOT]"));
}

#[test]
fn isohybrid_gpt_basdat_tables_are_reported_by_xorriso() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    boot_tree(&src);
    let iso = dir.path().join("hybrid.iso");
    let mut spec = bios_efi_spec(&src);
    spec.hybrid.system_area = Some(SystemArea {
        source: BlobSource::File("/usr/lib/ISOLINUX/isohdpfx.bin".into()),
        kind: SystemAreaKind::IsohybridMbr,
    });
    spec.hybrid.gpt_basdat = true;
    write(&spec, &iso);
    let x = run(
        "xorriso",
        &["-indev", s(&iso), "-report_system_area", "plain"],
    );
    assert!(x.contains("MBR isohybrid"), "{x}");
    assert!(x.contains("GPT"), "{x}");
    assert!(x.contains("ISOHybrid ISO"), "{x}");
    assert!(
        x.contains("GPT partition path :   2  /efi.img"),
        "ESP must be the EFI boot image:\n{x}"
    );
    assert!(
        !x.to_lowercase().contains("crc mismatch") && !x.contains("damaged"),
        "{x}"
    );
    let img = fs::read(&iso).unwrap();
    assert_eq!(&img[510..512], &[0x55, 0xAA]);
    assert_eq!(&img[512..520], b"EFI PART");
    assert_eq!(
        &img[img.len() - 512..img.len() - 504],
        b"EFI PART",
        "backup GPT header must end the image"
    );
}

#[test]
fn appended_esp_as_gpt_is_reported_by_xorriso() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    boot_tree(&src);
    let esp = dir.path().join("esp.img");
    efi_image(&esp);
    let iso = dir.path().join("appended.iso");
    let mut spec = base_spec(&src);
    spec.hybrid.appended.push(AppendedPartition {
        number: 2,
        part_type: PartType::Mbr(0xEF),
        source: BlobSource::File(esp.clone()),
    });
    spec.hybrid.appended_as_gpt = true;
    spec.boot.entries.push(BootEntry::new(
        Platform::Efi,
        BootImage::AppendedPartition(2),
    ));
    let report = write(&spec, &iso);
    let x = run(
        "xorriso",
        &[
            "-indev",
            s(&iso),
            "-report_system_area",
            "plain",
            "-report_el_torito",
            "plain",
        ],
    );
    assert!(
        x.contains("GPT type GUID      :   2  28732ac11ff8d211ba4b00a0c93ec93b"),
        "appended ESP missing:\n{x}"
    );
    assert!(x.contains("UEFI"), "{x}");
    // The appended bytes are the ESP file, at the partition's place.
    let gpt = report
        .partitions
        .iter()
        .find(|p| p.table == "gpt" && p.number == 2)
        .unwrap();
    let img = fs::read(&iso).unwrap();
    let esp_bytes = fs::read(&esp).unwrap();
    let at = gpt.start_sector as usize * 512;
    assert_eq!(&img[at..at + esp_bytes.len()], &esp_bytes[..]);
    assert_eq!(
        report.boot_entries[0].image_lba as u64 * 4,
        gpt.start_sector
    );
}

#[test]
fn partition_offset_16_gives_partition_one_its_own_readable_tree() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    let iso = dir.path().join("offset.iso");
    let mut spec = base_spec(&src);
    spec.hybrid.partition_offset = 16;
    spec.hybrid.system_area = Some(SystemArea {
        source: BlobSource::File("/usr/lib/ISOLINUX/isohdpfx.bin".into()),
        kind: SystemAreaKind::IsohybridMbr,
    });
    write(&spec, &iso);
    let img = fs::read(&iso).unwrap();
    let part = dir.path().join("part1.iso");
    fs::write(&part, &img[16 * 2048..]).unwrap();
    let r = run("isoinfo", &["-R", "-l", "-i", s(&part)]);
    assert!(r.contains("hello.txt"), "{r}");
    let x = dir.path().join("x");
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            s(&part),
            "-extract",
            "/hello.txt",
            s(&x),
        ],
    );
    assert_eq!(fs::read(&x).unwrap(), b"hello world\n");
    // The whole image still reads from sector 16 too.
    assert!(run("isoinfo", &["-R", "-l", "-i", s(&iso)]).contains("hello.txt"));
    assert_eq!(
        u32::from_le_bytes(img[446 + 8..446 + 12].try_into().unwrap()),
        64,
        "partition 1 starts at 16 blocks"
    );
}

#[test]
fn five_gib_sparse_file_is_multi_extent_and_stays_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let big = src.join("big.img");
    let f = fs::File::create(&big).unwrap();
    f.set_len(5 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"PAST-4GIB", (4 << 30) + 4096).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"HEAD", 0).unwrap();
    drop(f);
    let iso = dir.path().join("big.iso");
    let mut spec = base_spec(&src);
    spec.naming.iso_level = 2;
    match write_image(&spec, &iso, OverwritePolicy::Replace, &NoProgress) {
        Err(WriteError::FileTooLarge { size, .. }) => assert_eq!(size, 5 << 30),
        other => panic!("level 2 must refuse a 5 GiB file, got {other:?}"),
    }
    spec.naming.iso_level = 3;
    write(&spec, &iso);
    let meta = fs::metadata(&iso).unwrap();
    assert!(meta.len() > 5 << 30);
    assert!(
        meta.blocks() * 512 < 64 << 20,
        "output is not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    let x = run(
        "xorriso",
        &["-indev", s(&iso), "-find", "/big.img", "-exec", "lsdl"],
    );
    assert!(x.contains(" 5368709120 "), "{x}");
    assert!(run("bsdtar", &["-tvf", s(&iso)]).contains("5368709120"));
    let cut = dir.path().join("cut");
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            s(&iso),
            "-extract_cut",
            "/big.img",
            &((4u64 << 30) + 4096).to_string(),
            "9",
            s(&cut),
        ],
    );
    assert_eq!(fs::read(&cut).unwrap(), b"PAST-4GIB");
    let plain = run("isoinfo", &["-l", "-i", s(&iso)]);
    assert_eq!(
        plain.matches("BIG.IMG;1").count(),
        2,
        "two extents expected:\n{plain}"
    );
}

#[test]
fn reproducible_builds_are_byte_identical_across_copies_and_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    rich_tree(&a);
    boot_tree(&a);
    // A second copy made later, in a different order, with fresh times.
    let b = dir.path().join("b");
    run("cp", &["-a", s(&a), s(&b)]);
    run(
        "touch",
        &[
            "-d",
            "2030-01-01",
            s(&b.join("hello.txt")),
            s(&b.join("docs/readme.md")),
        ],
    );
    let mut images = Vec::new();
    for (src, name) in [(&a, "1.iso"), (&b, "2.iso")] {
        let mut spec = bios_efi_spec(src);
        spec.date = Some(1_700_000_000);
        spec.hybrid.system_area = Some(SystemArea {
            source: BlobSource::File("/usr/lib/ISOLINUX/isohdpfx.bin".into()),
            kind: SystemAreaKind::IsohybridMbr,
        });
        spec.hybrid.gpt_basdat = true;
        spec.integrity.md5 = true;
        let out = dir.path().join(name);
        write(&spec, &out);
        images.push(fs::read(&out).unwrap());
    }
    assert!(
        images[0] == images[1],
        "two builds of the same content differ"
    );
    // File times later than the date are clamped to it.
    let x = run(
        "xorriso",
        &[
            "-indev",
            s(&dir.path().join("2.iso")),
            "-find",
            "/hello.txt",
            "-exec",
            "lsdl",
        ],
    );
    assert!(
        x.contains("Nov 14  2023"),
        "mtime not clamped to the date:\n{x}"
    );
}

#[test]
fn md5_implant_passes_checkisomd5() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    let iso = dir.path().join("md5.iso");
    let mut spec = base_spec(&src);
    spec.integrity.md5 = true;
    let report = write(&spec, &iso);
    let digest = report.integrity.and_then(|i| i.md5).expect("md5 reported");
    let out = run("checkisomd5", &["--verbose", s(&iso)]);
    assert!(out.contains("PASS"), "{out}");
    assert!(
        out.contains(&digest),
        "checkisomd5 digest differs from the report:\n{out}"
    );
}

#[test]
fn excludes_hide_and_graft_points_shape_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    let extra = dir.path().join("extra.cfg");
    fs::write(&extra, b"cfg").unwrap();
    let iso = dir.path().join("out.iso");
    let mut spec = base_spec(&src);
    spec.excludes.push(Matcher::Glob("*.md".into()));
    spec.excludes.push(Matcher::HostPath(src.join("emptydir")));
    spec.hide.push(Hide {
        tree: HideTree::Joliet,
        matcher: Matcher::IsoPath("/hello.txt".into()),
    });
    spec.sources.push(GraftPoint {
        iso_path: "/boot/grub/grub.cfg".into(),
        host_path: extra,
    });
    spec.mem_files.push(MemFile {
        iso_path: "/meta-data".into(),
        data: b"instance-id: x\n".to_vec(),
        mode: 0o644,
        mtime: None,
    });
    write(&spec, &iso);
    let r = run("isoinfo", &["-R", "-f", "-i", s(&iso)]);
    assert!(!r.contains("readme.md"), "{r}");
    assert!(!r.contains("emptydir"), "{r}");
    assert!(r.contains("/boot/grub/grub.cfg"), "{r}");
    assert!(r.contains("/meta-data"), "{r}");
    assert!(r.contains("/hello.txt"), "{r}");
    let j = run("isoinfo", &["-J", "-f", "-i", s(&iso)]);
    assert!(
        !j.lines().any(|l| l == "/hello.txt"),
        "hidden from Joliet:\n{j}"
    );
    let m = dir.path().join("m");
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            s(&iso),
            "-extract",
            "/meta-data",
            s(&m),
        ],
    );
    assert_eq!(fs::read(&m).unwrap(), b"instance-id: x\n");
}

#[test]
fn rational_rock_ridge_normalises_owners_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("script.sh"), b"#!/bin/sh\n").unwrap();
    fs::write(src.join("secret"), b"x").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(src.join("script.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let iso = dir.path().join("r.iso");
    let mut spec = base_spec(&src);
    spec.naming.rock_ridge = Some(RockRidgeMode::Rational);
    write(&spec, &iso);
    let l = run("isoinfo", &["-R", "-l", "-i", s(&iso)]);
    let line = |name: &str| {
        l.lines()
            .find(|x| x.trim_end().ends_with(name))
            .unwrap_or_else(|| panic!("{name}:\n{l}"))
            .to_string()
    };
    assert!(line("script.sh").starts_with("-r-xr-xr-x"), "{l}");
    assert!(line("secret").starts_with("-r--r--r--"), "{l}");
    assert!(
        line("secret").contains("   0    0 "),
        "owner must be 0:0:\n{l}"
    );
}

#[test]
fn sort_weights_and_range_files_place_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("aaa.bin"), vec![1u8; 10_000]).unwrap();
    fs::write(src.join("zzz.bin"), vec![2u8; 10_000]).unwrap();
    let blob = dir.path().join("blob");
    fs::write(&blob, b"0123456789ABCDEF").unwrap();
    let iso = dir.path().join("sorted.iso");
    let mut spec = base_spec(&src);
    spec.sort.push(SortRule {
        pattern: "zzz.bin".into(),
        weight: 10,
    });
    spec.range_files.push(RangeFile {
        iso_path: "/from-range.txt".into(),
        host_path: blob,
        offset: 4,
        length: 6,
        mode: 0o444,
        mtime: None,
    });
    write(&spec, &iso);
    let l = run("isoinfo", &["-R", "-l", "-i", s(&iso)]);
    let lba = |name: &str| -> u64 {
        let line = l
            .lines()
            .find(|x| x.trim_end().ends_with(name))
            .unwrap_or_else(|| panic!("{name}:\n{l}"));
        line.split('[')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        lba("zzz.bin") < lba("aaa.bin"),
        "the heavier file must come first:\n{l}"
    );
    let out = dir.path().join("r");
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            s(&iso),
            "-extract",
            "/from-range.txt",
            s(&out),
        ],
    );
    assert_eq!(fs::read(&out).unwrap(), b"456789");
}

#[test]
fn folders_spanning_many_sectors_with_continuation_areas_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    // 300 names of ~200 bytes: many directory sectors, and NM entries spilling into CE areas.
    let mut names = Vec::new();
    for i in 0..300 {
        let name = format!("{i:04}-{}", "long-name-part-".repeat(13));
        fs::write(src.join(&name), name.as_bytes()).unwrap();
        names.push(name);
    }
    let iso = dir.path().join("wide.iso");
    write(&base_spec(&src), &iso);
    let x = run("xorriso", &["-indev", s(&iso), "-find", "/", "-type", "f"]);
    let listed: Vec<&str> = x.lines().filter(|l| l.starts_with("'/")).collect();
    assert_eq!(listed.len(), 300, "{x}");
    for n in &names {
        assert!(x.contains(&format!("'/{n}'")), "{n} missing");
    }
    let b = run("bsdtar", &["-tf", s(&iso)]);
    assert_eq!(
        b.lines().filter(|l| l.contains("long-name-part")).count(),
        300
    );
    let out = dir.path().join("one");
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            s(&iso),
            "-extract",
            &format!("/{}", names[299]),
            s(&out),
        ],
    );
    assert_eq!(fs::read(&out).unwrap(), names[299].as_bytes());
}

#[test]
fn hfsplus_volume_beside_a_partition_offset_is_read_by_7z_and_grub() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    rich_tree(&src);
    let mut spec = base_spec(&src);
    spec.hybrid.partition_offset = 16;
    spec.date = Some(1_700_000_000);
    spec.hfsplus = Some(HfsPlusSpec {
        blessed: vec![HfsBless {
            blessing: HfsBlessing::ShowFolder,
            iso_path: "/docs".into(),
        }],
        ..HfsPlusSpec::default()
    });
    let iso = dir.path().join("hfs.iso");
    let report = write(&spec, &iso);
    // The report lists the APM: the map, the gaps and the Apple_HFS volume (512-byte units).
    let hfs = report
        .partitions
        .iter()
        .find(|p| p.table == "apm" && p.part_type == "Apple_HFS")
        .unwrap_or_else(|| panic!("no Apple_HFS entry: {:?}", report.partitions));
    assert_eq!(hfs.name, "HFSPLUS_Hybrid");
    let bytes = fs::read(&iso).unwrap();
    let (start, len) = (hfs.start_sector as usize * 512, hfs.sectors as usize * 512);
    let volume = &bytes[start..start + len];
    assert_eq!(&volume[1024..1026], b"H+", "volume header");
    assert_eq!(
        &volume[len - 1024..len - 1022],
        b"H+",
        "alternate volume header 1 KiB before the end"
    );
    let part = dir.path().join("hfs.img");
    fs::write(&part, volume).unwrap();
    let listing = run("7z", &["l", "-thfs", s(&part)]);
    assert!(listing.contains("Method = HFS+"), "{listing}");
    let out = dir.path().join("x");
    // 7z refuses to create a link pointing above its own folder ("dangerous link"), so
    // that one is checked in the listing instead.
    assert!(
        listing.contains("VMEDIA_TEST/docs/link-to-hello"),
        "{listing}"
    );
    run(
        "7z",
        &[
            "x",
            "-thfs",
            "-y",
            "-x!VMEDIA_TEST/docs/link-to-hello",
            &format!("-o{}", s(&out)),
            s(&part),
        ],
    );
    let root = out.join("VMEDIA_TEST");
    for file in [
        "hello.txt",
        "docs/readme.md",
        "docs/hello-hardlink.txt",
        "docs/deep/a/b/c/d/e/f/g/h/bottom.txt",
        "A long file name that needs Rock Ridge or Joliet.tar.gz",
    ] {
        assert_eq!(
            fs::read(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}\n{listing}")),
            fs::read(src.join(file)).unwrap(),
            "{file}"
        );
    }
    assert!(root.join("emptydir").is_dir() && root.join("empty").exists());
    // GRUB reads the same volume through the APM (entry 3: map, gap, volume).
    let grub = run(
        "grub-fstest",
        &[
            s(&iso),
            "cat",
            "(loop0,apple3)/docs/deep/a/b/c/d/e/f/g/h/bottom.txt",
        ],
    );
    assert!(grub.contains("at the bottom"), "{grub}");
    // The tree relative to the partition offset is still readable on its own.
    let cut = dir.path().join("cut.iso");
    fs::write(&cut, &bytes[16 * 2048..]).unwrap();
    let x = run("xorriso", &["-indev", s(&cut), "-find", "/hello.txt"]);
    assert!(x.contains("/hello.txt"), "{x}");
}

/// Regression: level 4 wrote 207-byte names but no ISO 9660:1999 enhanced volume descriptor,
/// so readers that look for it (libisofs, Linux) took the tree for a plain level-3 one.
#[test]
fn level4_writes_the_enhanced_volume_descriptor_readers_expect() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let long_dir = "a folder with a long name and spaces";
    let long_file = "A very long file name, well beyond thirty-one characters.txt";
    fs::create_dir_all(src.join(long_dir)).unwrap();
    fs::write(src.join(long_dir).join(long_file), b"level four\n").unwrap();
    let ours = dir.path().join("ours.iso");
    let theirs = dir.path().join("theirs.iso");
    let mut spec = IsoSpec::default();
    spec.sources.push(GraftPoint {
        iso_path: "/".into(),
        host_path: src.clone(),
    });
    spec.naming.iso_level = 4;
    write(&spec, &ours);
    run(
        "genisoimage",
        &["-quiet", "-iso-level", "4", "-o", s(&theirs), s(&src)],
    );
    // The descriptor set: (type, version, file structure version) per sector, as genisoimage.
    let set = |iso: &Path| {
        let d = fs::read(iso).unwrap();
        let mut v = Vec::new();
        for sector in 16.. {
            let b = &d[sector * 2048..(sector + 1) * 2048];
            assert_eq!(&b[1..6], b"CD001");
            v.push((b[0], b[6], b[881]));
            if b[0] == 255 {
                break;
            }
        }
        v
    };
    assert_eq!(set(&ours), [(1, 1, 1), (2, 2, 2), (255, 1, 0)]);
    assert_eq!(set(&ours), set(&theirs));
    // Without Rock Ridge or Joliet the writer's level-4 names are d-characters (upper case,
    // `_` for a space) but keep their full length: far past level 3's 31.
    let path = format!("/{long_dir}/{long_file}")
        .to_uppercase()
        .replace(' ', "_");
    assert!(path.rsplit('/').next().unwrap().len() > 31);
    let x = run("xorriso", &["-indev", s(&ours), "-find", "/"]);
    assert!(x.contains(&format!("'{path}'")), "xorriso:\n{x}");
    let i = run("isoinfo", &["-f", "-i", s(&ours)]);
    assert!(i.lines().any(|l| l == path), "isoinfo:\n{i}");
    let cat = run(
        "xorriso",
        &[
            "-indev",
            s(&ours),
            "-osirrox",
            "on",
            "-extract",
            &path,
            s(&dir.path().join("out.txt")),
        ],
    );
    assert!(!cat.contains("FAILURE"), "{cat}");
    assert_eq!(
        fs::read(dir.path().join("out.txt")).unwrap(),
        b"level four\n"
    );
}

//! ISO 9660 + UDF bridge images (`iso create --udf`, `mkisofs -udf`) checked by the peers:
//! udfinfo (udftools) accepts them, 7z and bsdtar list and extract them as the source tree,
//! a 5 GiB sparse file reads back identically; the Linux kernel's own UDF driver (a QEMU guest,
//! one boot) mounts a 1.02 and a 2.01 image and reads every file as the host has it; vmedia
//! reads genisoimage -udf and mkudffs images; hostile UDF gives clean errors. One fixture (tree
//! and images) for every case.

mod support;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use support::{
    module_closure, newest_module_release, pack_initramfs, require_tool, run_any, run_ok, vmedia,
};
use vmedia_iso::read::{IsoImage, NameSpace, OpenOptions};

/// Size of the big sparse file: over 4 GiB, so its UDF entry needs six extents of
/// 2^30 - 2048 bytes (the 30-bit length limit, whole sectors).
const BIG: u64 = 5 << 30;
/// Offsets in the big file that hold data (the rest is a hole): the start, across the first
/// UDF extent boundary, past 4 GiB and the last bytes.
const BIG_DATA: [u64; 4] = [0, (1 << 30) - 4096, (4 << 30) + 12345, BIG - 1000];

struct Fixture {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    /// `iso create --udf` of the tree with the 5 GiB file.
    image: PathBuf,
    /// `iso create --udf` of the small tree only (the peers extract it whole).
    small: PathBuf,
    /// `mkisofs -udf-revision 2.01` of the small tree only.
    v201: PathBuf,
}

fn big_block(at: u64) -> Vec<u8> {
    (0..1000u64).map(|i| ((at + i) % 251) as u8 + 1).collect()
}

/// A Windows-like tree: sources/install.wim, boot and efi folders, a deep path, unicode
/// names, an empty file and folder.
fn make_small_tree(root: &Path) {
    let write = |rel: &str, bytes: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    };
    let wim: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    write("sources/install.wim", &wim);
    write("sources/boot.wim", &wim[..100_000]);
    write("boot/bcd", b"bcd");
    write("efi/microsoft/boot/efisys.bin", &[0x55; 2048 * 3 + 17]);
    write("setup.exe", b"MZ setup");
    write("autorun.inf", b"[autorun]\r\nopen=setup.exe\r\n");
    write("a/b/c/d/e/f/g/h/i/j/deep.txt", b"deep\n");
    write("sources/ja-jp/日本語 ファイル.txt", "こんにちは".as_bytes());
    write("sources/de-de/Größe ü.txt", b"gross\n");
    write("empty.txt", b"");
    fs::create_dir_all(root.join("support/empty-folder")).unwrap();
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        make_small_tree(&tree);
        let small = dir.path().join("small.iso");
        run_ok(
            vmedia()
                .args(["iso", "create"])
                .arg(&tree)
                .arg("-o")
                .arg(&small)
                .args(["--udf", "-V", "WIN_UDF", "--date", "2024-01-02T03:04:05Z"]),
        );
        let v201 = dir.path().join("v201.iso");
        run_ok(
            vmedia()
                .args(["mkisofs", "-udf-revision", "2.01", "-V", "REV201", "-o"])
                .arg(&v201)
                .arg(&tree),
        );
        let big = File::create(tree.join("sources/big.bin")).unwrap();
        big.set_len(BIG).unwrap();
        for at in BIG_DATA {
            big.write_all_at(&big_block(at)[..(BIG - at).min(1000) as usize], at)
                .unwrap();
        }
        drop(big);
        let image = dir.path().join("win.iso");
        run_ok(
            vmedia()
                .args(["iso", "create"])
                .arg(&tree)
                .arg("-o")
                .arg(&image)
                .args(["--udf", "-V", "WIN_UDF"]),
        );
        Fixture {
            _dir: dir,
            tree,
            image,
            small,
            v201,
        }
    })
}

/// Every path of the small tree (files and folders, relative, no big file).
fn tree_paths(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "sources/big.bin" {
                continue;
            }
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.insert(rel);
        }
    }
    out
}

fn open(path: &Path, prefer: NameSpace) -> IsoImage {
    let file = File::open(path).unwrap();
    IsoImage::open(Arc::new(file), OpenOptions { prefer }).unwrap()
}

#[test]
fn udfinfo_accepts_the_bridge_and_reports_label_and_revision() {
    let f = fixture();
    let udfinfo = require_tool("udfinfo");
    for (image, rev) in [(&f.image, "1.02"), (&f.small, "1.02")] {
        let out = run_ok(Command::new(&udfinfo).arg(image));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("label=WIN_UDF"), "{text}");
        assert!(text.contains(&format!("udfrev={rev}")), "{text}");
    }
    // 2.01 on request, through the mkisofs spelling too.
    let v201 = &f.v201;
    let out = run_ok(Command::new(&udfinfo).arg(v201));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("udfrev=2.01") && text.contains("label=REV201"),
        "{text}"
    );
    let image = open(v201, NameSpace::Auto);
    assert_eq!(image.namespace(), NameSpace::Udf);
    assert_eq!(
        image.volume().udf.as_ref().unwrap().revision.as_deref(),
        Some("2.01")
    );
}

#[test]
fn seven_zip_and_bsdtar_list_and_extract_the_udf_tree_identically() {
    let f = fixture();
    let expected = tree_paths(&f.tree);
    let dir = tempfile::tempdir().unwrap();
    let by_7z = dir.path().join("7z");
    let by_bsdtar = dir.path().join("bsdtar");
    fs::create_dir_all(&by_bsdtar).unwrap();
    run_ok(
        Command::new(require_tool("7z"))
            .arg("x")
            .arg(format!("-o{}", by_7z.display()))
            .arg(&f.small),
    );
    run_ok(
        Command::new(require_tool("bsdtar"))
            .arg("-xf")
            .arg(&f.small)
            .arg("-C")
            .arg(&by_bsdtar),
    );
    for (peer, out) in [("7z", &by_7z), ("bsdtar", &by_bsdtar)] {
        assert_eq!(tree_paths(out), expected, "{peer} sees another tree");
        for p in &expected {
            let src = f.tree.join(p);
            if src.is_file() {
                assert!(
                    fs::read(&src).unwrap() == fs::read(out.join(p)).unwrap(),
                    "{peer}: {p} differs"
                );
            }
        }
    }
    // 7z says it read UDF (not the ISO 9660 tree) and lists the 5 GiB file at its size.
    let out = run_ok(
        Command::new(require_tool("7z"))
            .args(["l", "-slt"])
            .arg(&f.image),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Type = Udf"), "{text}");
    assert!(text.contains(&format!("Size = {BIG}")), "{text}");
    let out = run_ok(
        Command::new(require_tool("bsdtar"))
            .arg("-tvf")
            .arg(&f.image),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&BIG.to_string()) && text.contains("日本語 ファイル.txt"),
        "{text}"
    );
}

#[test]
fn the_5_gib_sparse_file_reads_back_identically_and_the_image_stays_sparse() {
    let f = fixture();
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&f.image).unwrap();
    assert!(meta.len() > BIG);
    assert!(
        meta.blocks() * 512 < 64 << 20,
        "the image is not sparse: {} bytes on disk",
        meta.blocks() * 512
    );
    let image = open(&f.image, NameSpace::Auto);
    assert_eq!(image.namespace(), NameSpace::Udf);
    let entry = image.lookup("/sources/big.bin").unwrap();
    assert_eq!(entry.size, BIG);
    assert_eq!(entry.extents.len(), 6, "{:?}", entry.extents);
    assert!(entry.extents.iter().all(|e| e.length < 1 << 30));
    // The same data extents as the ISO 9660 tree: no byte is stored twice.
    let iso = open(&f.image, NameSpace::Iso9660);
    let iso_entry = iso.lookup("/sources/big.bin").unwrap();
    assert_eq!(entry.extents[0].lba, iso_entry.extents[0].lba);
    let reader = image.file_reader(&entry).unwrap();
    let src = File::open(f.tree.join("sources/big.bin")).unwrap();
    // Data blocks, the zeros around them and every extent boundary read as the source does.
    let mut probes: Vec<u64> = BIG_DATA
        .iter()
        .flat_map(|&a| [a, a.saturating_sub(3000)])
        .collect();
    probes.extend(entry.extents.iter().scan(0u64, |pos, e| {
        *pos += e.length;
        Some(pos.saturating_sub(2500))
    }));
    for at in probes {
        let len = (BIG - at).min(5000) as usize;
        let mut want = vec![0u8; len];
        let mut got = vec![1u8; len];
        src.read_exact_at(&mut want, at).unwrap();
        vmedia_io::ReadAt::read_exact_at(&reader, &mut got, at).unwrap();
        assert!(want == got, "bytes at {at} differ");
    }
}

#[test]
fn ls_info_and_cat_choose_udf_and_namespace_picks_iso9660() {
    let f = fixture();
    let (code, out, err) = run_any(vmedia().args(["iso", "info"]).arg(&f.small));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("UDF 1.02 (label \"WIN_UDF\")") && out.contains("in use: UDF"),
        "{out}"
    );
    let (code, out, _) = run_any(vmedia().args(["iso", "ls", "-R"]).arg(&f.small));
    assert_eq!(code, 0);
    assert!(
        out.contains("日本語 ファイル.txt") && out.contains("install.wim"),
        "{out}"
    );
    let out = run_ok(
        vmedia()
            .args(["iso", "cat"])
            .arg(&f.small)
            .arg("/sources/de-de/Größe ü.txt"),
    );
    assert_eq!(out.stdout, b"gross\n");
    let (code, out, _) = run_any(
        vmedia()
            .args(["iso", "ls", "--namespace", "iso9660"])
            .arg(&f.small)
            .arg("/"),
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("SETUP.EXE") || out.contains("setup.exe"),
        "{out}"
    );
}

#[test]
fn genisoimage_udf_and_mkudffs_images_read() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let gen = dir.path().join("gen.iso");
    let tree = f.tree.join("sources");
    let small = dir.path().join("small");
    fs::create_dir_all(&small).unwrap();
    for p in ["install.wim", "boot.wim"] {
        fs::copy(tree.join(p), small.join(p)).unwrap();
    }
    fs::create_dir_all(small.join("ja-jp")).unwrap();
    fs::copy(
        tree.join("ja-jp/日本語 ファイル.txt"),
        small.join("ja-jp/日本語 ファイル.txt"),
    )
    .unwrap();
    run_ok(
        Command::new(require_tool("genisoimage"))
            .args(["-quiet", "-udf", "-J", "-R", "-V", "GENUDF", "-o"])
            .arg(&gen)
            .arg(&small),
    );
    let image = open(&gen, NameSpace::Auto);
    assert_eq!(image.namespace(), NameSpace::Udf);
    let mut seen = BTreeSet::new();
    for item in image.walk() {
        let item = item.unwrap();
        if item.entry.is_file() {
            let mut data = Vec::new();
            let r = image.file_reader(&item.entry).unwrap();
            data.resize(vmedia_io::ReadAt::size(&r).unwrap() as usize, 0);
            vmedia_io::ReadAt::read_exact_at(&r, &mut data, 0).unwrap();
            assert!(
                data == fs::read(small.join(&item.path[1..])).unwrap(),
                "{}",
                item.path
            );
        }
        seen.insert(item.path[1..].to_string());
    }
    assert_eq!(seen, tree_paths(&small));

    let mk = dir.path().join("mk.udf");
    File::create(&mk).unwrap().set_len(4 << 20).unwrap();
    run_ok(
        Command::new(require_tool("mkudffs"))
            .args(["--media-type=hd", "--blocksize=2048", "--label=MKUDF"])
            .arg(&mk),
    );
    let image = open(&mk, NameSpace::Auto);
    assert_eq!(image.namespace(), NameSpace::Udf);
    assert_eq!(image.volume().udf.as_ref().unwrap().label, "MKUDF");
    for item in image.walk() {
        item.unwrap();
    }
    let (code, out, err) = run_any(vmedia().args(["iso", "info"]).arg(&mk));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MKUDF"), "{out}");
}

/// The small image's bytes with `edit` applied, opened in its UDF tree and walked whole.
fn hostile(edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = fs::read(&fixture().small).unwrap();
    edit(&mut bytes);
    let source: Arc<dyn vmedia_io::ReadAt> = Arc::new(bytes);
    let result = IsoImage::open(
        source,
        OpenOptions {
            prefer: NameSpace::Udf,
        },
    )
    .and_then(|image| {
        for item in image.walk() {
            let item = item?;
            if item.entry.is_file() {
                image.file_reader(&item.entry)?;
            }
        }
        Ok(())
    });
    match result {
        Err(e) => e.to_string(),
        Ok(()) => panic!("the hostile image was accepted"),
    }
}

/// Byte offset of the first descriptor with tag `ident` at or after sector 257.
fn find_tag(bytes: &[u8], ident: u16) -> usize {
    (257..bytes.len() / 2048)
        .map(|s| s * 2048)
        .find(|&o| u16::from_le_bytes([bytes[o], bytes[o + 1]]) == ident)
        .unwrap()
}

/// Rewrites the tag checksum and CRC of the descriptor at `o` (`len` bytes) after an edit.
fn retag(bytes: &mut [u8], o: usize) {
    let crc_len = usize::from(u16::from_le_bytes([bytes[o + 10], bytes[o + 11]]));
    let crc = vmedia_iso::udf::crc_itu_t(&bytes[o + 16..o + 16 + crc_len]);
    bytes[o + 8..o + 10].copy_from_slice(&crc.to_le_bytes());
    let sum = (0..16)
        .filter(|&i| i != 4)
        .fold(0u8, |a, i| a.wrapping_add(bytes[o + i]));
    bytes[o + 4] = sum;
}

#[test]
fn hostile_udf_gives_clean_errors() {
    // A flipped byte in a file entry: its CRC no longer matches.
    let e = hostile(|b| {
        let o = find_tag(b, 261) + 40;
        b[o] ^= 0xFF;
    });
    assert!(e.contains("CRC"), "{e}");
    // An extent past the end of the image (tags recomputed, so only the bounds catch it).
    let e = hostile(|b| {
        let fe = (257..b.len() / 2048)
            .map(|s| s * 2048)
            .filter(|&o| u16::from_le_bytes([b[o], b[o + 1]]) == 261 && b[o + 27] == 5)
            .find(|&o| u32::from_le_bytes(b[o + 172..o + 176].try_into().unwrap()) > 0)
            .unwrap();
        b[fe + 180..fe + 184].copy_from_slice(&0x00F0_0000u32.to_le_bytes());
        retag(b, fe);
    });
    assert!(
        e.contains("outside the partition") || e.contains("past the end"),
        "{e}"
    );
    // A folder whose identifier points back at the root: a loop.
    let e = hostile(|b| {
        let fsd = find_tag(b, 256);
        let root_block = u32::from_le_bytes(b[fsd + 404..fsd + 408].try_into().unwrap());
        let sub = (257..b.len() / 2048)
            .map(|s| s * 2048)
            .find(|&o| u16::from_le_bytes([b[o], b[o + 1]]) == 257)
            .unwrap();
        // Walk the root's identifiers to its first child folder and point that at the root.
        let mut o = sub;
        loop {
            let l_fi = usize::from(b[o + 19]);
            if b[o + 18] & 0x0A == 0x02 {
                b[o + 24..o + 28].copy_from_slice(&root_block.to_le_bytes());
                retag(b, o);
                break;
            }
            o += (38 + l_fi).div_ceil(4) * 4;
        }
    });
    assert!(e.contains("loop"), "{e}");
    // Volume descriptor pointers that point at themselves, in both sequences.
    let e = hostile(|b| {
        for lba in [32u32, 48] {
            let o = lba as usize * 2048;
            b[o..o + 512].fill(0);
            b[o..o + 2].copy_from_slice(&3u16.to_le_bytes());
            b[o + 2] = 2;
            b[o + 10..o + 12].copy_from_slice(&496u16.to_le_bytes());
            b[o + 12..o + 16].copy_from_slice(&lba.to_le_bytes());
            b[o + 20..o + 24].copy_from_slice(&(16 * 2048u32).to_le_bytes());
            b[o + 24..o + 28].copy_from_slice(&lba.to_le_bytes());
            retag(b, o);
        }
    });
    assert!(e.contains("MAX_VDS_POINTERS"), "{e}");
    // No anchor anywhere.
    let e = hostile(|b| {
        let o = 256 * 2048;
        b[o + 20] ^= 1;
        let last = (b.len() / 2048 - 1) * 2048;
        b[last..].fill(0);
    });
    assert!(e.contains("anchor"), "{e}");
}

/// Kernel modules the guest loads, in an order that satisfies their dependencies once
/// `modprobe --show-depends` has expanded each: the virtio disk and the UDF file system.
const GUEST_MODULES: [&str; 3] = ["virtio_pci", "virtio_blk", "udf"];
/// Printed by the guest once it has tried both drives.
const UDF_PROOF_DONE: &str = "VMEDIA-UDF-PROOF-DONE";
/// A TCG boot of the Debian kernel takes 5-20 s; the listing and hashing a few seconds more.
const KERNEL_PROOF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// A busybox initramfs (its own, not the payload's) whose /init loads `GUEST_MODULES`, mounts
/// /dev/vda and /dev/vdb with the kernel's UDF driver (`-t udf -o ro`), lists each and hashes
/// every file, then prints `UDF_PROOF_DONE`.
fn udf_guest_initrd(dir: &Path) -> PathBuf {
    let release =
        newest_module_release().expect("no /lib/modules/<release>: install linux-image-amd64");
    let root = dir.join("initramfs");
    for sub in ["bin", "proc", "sys", "dev", "mnt", "mods"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    fs::copy(require_tool("busybox"), root.join("bin/busybox")).unwrap();
    let ordered = module_closure(&release, &GUEST_MODULES);
    assert!(
        ordered.iter().any(|m| m.contains("/fs/udf/")),
        "the kernel has no udf module: {ordered:?}"
    );
    for (index, module) in ordered.iter().enumerate() {
        let name = Path::new(module).file_name().unwrap().to_string_lossy();
        fs::copy(module, root.join(format!("mods/{index:02}-{name}"))).unwrap();
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         echo\n\
         for m in /mods/*.ko; do insmod $m || echo \"INSMOD-FAILED $m\"; done\n\
         i=0\n\
         while [ ! -e /dev/vdb ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
         for d in vda vdb; do\n\
         \x20 mkdir -p /mnt/$d\n\
         \x20 if mount -t udf -o ro /dev/$d /mnt/$d; then\n\
         \x20   echo \"UDF-MOUNTED $d $(grep \"/dev/$d \" /proc/mounts)\"\n\
         \x20   cd /mnt/$d\n\
         \x20   find . | sed \"s|^|UDF-LS $d |\"\n\
         \x20   find . -type f -exec sha256sum {{}} \\; | sed \"s|^|UDF-SUM $d |\"\n\
         \x20   cd /\n\
         \x20 else\n\
         \x20   echo \"UDF-MOUNT-FAILED $d\"\n\
         \x20 fi\n\
         done\n\
         dmesg | grep -i udf | sed 's|^|DMESG |'\n\
         echo {UDF_PROOF_DONE}\n\
         poweroff -f\n"
    );
    pack_initramfs(dir, "initramfs", Some(init.as_str()), "udf-initrd.gz");
    dir.join("udf-initrd.gz")
}

#[test]
fn linux_udf_driver_mounts_both_revisions_and_reads_every_file() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let initrd = udf_guest_initrd(dir.path());
    let kernel = support::payload().kernel;
    let drive = |image: &Path| format!("file={},format=raw,if=virtio,readonly=on", image.display());
    let args = [
        "-kernel".to_string(),
        kernel.display().to_string(),
        "-initrd".to_string(),
        initrd.display().to_string(),
        "-append".to_string(),
        "console=ttyS0 quiet".to_string(),
        "-drive".to_string(),
        drive(&f.small),
        "-drive".to_string(),
        drive(&f.v201),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = support::qemu_boot(
        support::Firmware::Bios,
        &args,
        &format!("\n{UDF_PROOF_DONE}"),
        KERNEL_PROOF_TIMEOUT,
    );
    // Firmware and kernel write terminal escapes without a newline: a guest line may follow
    // one on the same console line, so each line is taken from its "UDF-" tag on.
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .map(|l| l.find("UDF-").map_or(l, |at| &l[at..]))
        .collect();
    let expected = tree_paths(&f.tree);
    for (drive, image, revision) in [("vda", &f.small, "1.02"), ("vdb", &f.v201, "2.01")] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!(
                "UDF-MOUNTED {drive} /dev/{drive} /mnt/{drive} udf ro"
            ))),
            "the kernel did not mount the UDF {revision} image {}:\n{log}",
            image.display()
        );
        let listed: BTreeSet<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("UDF-LS {drive} ./")))
            .map(str::to_string)
            .collect();
        assert_eq!(
            listed, expected,
            "UDF {revision}: the kernel lists another tree"
        );
        let sums: BTreeSet<(String, String)> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("UDF-SUM {drive} ")))
            .filter_map(|l| l.split_once("  ./"))
            .map(|(sum, path)| (path.to_string(), sum.to_string()))
            .collect();
        let want: BTreeSet<(String, String)> = expected
            .iter()
            .filter(|p| f.tree.join(p).is_file())
            .map(|p| (p.clone(), support::sha256_file(&f.tree.join(p))))
            .collect();
        assert!(want.len() >= 10);
        assert_eq!(sums, want, "UDF {revision}: the kernel read other bytes");
    }
}

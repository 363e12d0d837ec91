//! ISO test helpers shared by iso_peers.rs, iso_boot.rs and mkisofs_compat.rs: generated trees,
//! tree manifests (what a peer's extraction must reproduce), xorriso's El Torito / system-area
//! reports, and the boot trees (isolinux, GRUB BIOS, GRUB EFI).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{cached_fixture, payload, require_tool, run_ok};

/// What a path is, as far as every peer can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, size: u64, hash: u64 },
    Symlink { target: String },
}

/// Every path below a root (relative, '/'-separated), with hard-link groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub nodes: BTreeMap<String, Node>,
    /// Sets of paths that share one inode (only groups of two or more).
    pub hard_links: BTreeSet<Vec<String>>,
}

/// A fast 64-bit content hash (FNV-1a over 8-byte words); collisions do not matter here.
pub fn hash_file(path: &Path) -> u64 {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        let mut chunks = buf[..n].chunks_exact(8);
        for c in &mut chunks {
            h ^= u64::from_le_bytes(c.try_into().unwrap());
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in chunks.remainder() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^ total
}

/// Reads the tree under `root`. `with_modes` = false zeroes the permission bits (for peers
/// that do not carry them, like 7z reading Joliet).
pub fn manifest(root: &Path, with_modes: bool) -> Manifest {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    walk(root, root, with_modes, &mut nodes, &mut inodes);
    let hard_links = inodes.into_values().filter(|v| v.len() > 1).collect();
    Manifest { nodes, hard_links }
}

fn walk(
    root: &Path,
    dir: &Path,
    with_modes: bool,
    nodes: &mut BTreeMap<String, Node>,
    inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
) {
    let mut items: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    items.sort();
    for path in items {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = if with_modes {
            meta.permissions().mode() & 0o7777
        } else {
            0
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).unwrap().to_string_lossy().into_owned();
            nodes.insert(rel, Node::Symlink { target });
        } else if meta.is_dir() {
            nodes.insert(rel, Node::Dir { mode });
            walk(root, &path, with_modes, nodes, inodes);
        } else {
            if meta.nlink() > 1 {
                let mut group = inodes.remove(&(meta.dev(), meta.ino())).unwrap_or_default();
                group.push(rel.clone());
                group.sort();
                inodes.insert((meta.dev(), meta.ino()), group);
            }
            nodes.insert(
                rel,
                Node::File {
                    mode,
                    size: meta.len(),
                    hash: hash_file(&path),
                },
            );
        }
    }
}

/// Panics with the first differences between two manifests.
pub fn assert_same_tree(expected: &Manifest, actual: &Manifest, what: &str) {
    let mut problems = Vec::new();
    for (path, node) in &expected.nodes {
        match actual.nodes.get(path) {
            None => problems.push(format!("missing: {path} ({node:?})")),
            Some(other) if other != node => {
                problems.push(format!("differs: {path}: expected {node:?}, got {other:?}"))
            }
            Some(_) => {}
        }
    }
    for (path, node) in &actual.nodes {
        if !expected.nodes.contains_key(path) {
            problems.push(format!("unexpected: {path} ({node:?})"));
        }
    }
    if expected.hard_links != actual.hard_links {
        problems.push(format!(
            "hard links: expected {:?}, got {:?}",
            expected.hard_links, actual.hard_links
        ));
    }
    assert!(
        problems.is_empty(),
        "{what}: {} differences:\n{}",
        problems.len(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A 200-character file name (Rock Ridge keeps it whole, Joliet cannot).
pub fn long_name() -> String {
    let mut name = String::from("long-");
    while name.len() < 196 {
        name.push_str("abcdefghij");
    }
    name.truncate(196);
    name.push_str(".txt");
    name
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The interoperability tree (built once): unicode, long and odd names, deep nesting, symlinks,
/// hard links, empty files and folders, permissions, sizes around sector boundaries.
pub fn peer_tree() -> PathBuf {
    let dir = cached_fixture("iso-peer-tree-v1", |dir| {
        let t = dir.join("tree");
        fs::create_dir_all(&t).unwrap();
        write(&t.join("readme.txt"), b"hello from vmedia\n", 0o644);
        write(&t.join("empty.txt"), b"", 0o644);
        fs::create_dir_all(t.join("emptydir")).unwrap();
        write(
            &t.join("ünïcødé-файл-日本語.txt"),
            "ünïcødé\n".as_bytes(),
            0o644,
        );
        write(
            &t.join("name with spaces & (parens).txt"),
            b"spaces\n",
            0o644,
        );
        write(&t.join("UPPER-lower.Mixed.tar.gz"), b"dots\n", 0o644);
        write(&t.join(long_name()), b"long\n", 0o644);
        let mut deep = t.join("deep");
        for level in 1..=12 {
            deep = deep.join(format!("level{level}"));
        }
        write(&deep.join("leaf.txt"), b"twelve levels down\n", 0o644);
        let p = t.join("perms");
        write(&p.join("private/secret.txt"), b"secret\n", 0o600);
        fs::set_permissions(p.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
        write(&p.join("script.sh"), b"#!/bin/sh\necho hi\n", 0o755);
        write(&p.join("setuid-bin"), b"\x7fELF pretend\n", 0o4755);
        write(&p.join("plain.txt"), b"plain\n", 0o644);
        write(&p.join("group.txt"), b"group\n", 0o640);
        let l = t.join("links");
        write(&l.join("target.txt"), b"link target\n", 0o644);
        std::os::unix::fs::symlink("target.txt", l.join("rel-link")).unwrap();
        std::os::unix::fs::symlink("../deep/level1", l.join("dir-link")).unwrap();
        std::os::unix::fs::symlink("does/not/exist", l.join("dangling")).unwrap();
        let h = t.join("hard");
        write(&h.join("a.txt"), b"shared by two names\n", 0o644);
        fs::hard_link(h.join("a.txt"), h.join("b.txt")).unwrap();
        for (i, size) in [1usize, 2047, 2048, 2049, 100_000, 3 << 20]
            .iter()
            .enumerate()
        {
            write(
                &t.join(format!("data/file-{size}.bin")),
                &pattern(*size, i as u64 + 1),
                0o644,
            );
        }
    });
    dir.join("tree")
}

/// Whether every component of `path` fits a Joliet name of `max` UCS-2 characters (BMP only).
pub fn joliet_representable(path: &str, max: usize) -> bool {
    path.split('/')
        .all(|c| c.chars().count() <= max && c.chars().all(|ch| (ch as u32) < 0x10000))
}

/// The manifest a Joliet-only reader (7z) can reproduce: no links, no modes, short names.
pub fn joliet_view(m: &Manifest, max: usize) -> Manifest {
    let nodes = m
        .nodes
        .iter()
        .filter(|(path, node)| {
            !matches!(node, Node::Symlink { .. }) && joliet_representable(path, max)
        })
        .map(|(path, node)| {
            let node = match node {
                Node::Dir { .. } => Node::Dir { mode: 0 },
                Node::File { size, hash, .. } => Node::File {
                    mode: 0,
                    size: *size,
                    hash: *hash,
                },
                other => other.clone(),
            };
            (path.clone(), node)
        })
        .collect();
    Manifest {
        nodes,
        hard_links: BTreeSet::new(),
    }
}

/// `xorriso -indev ISO -report_el_torito plain -report_system_area plain`, as lines.
pub fn xorriso_report(iso: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new(require_tool("xorriso"))
            .args(["-indev"])
            .arg(iso)
            .args(["-report_el_torito", "plain", "-report_system_area", "plain"]),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The value columns of report lines starting with `key` (e.g. "El Torito boot img").
pub fn report_rows(report: &[String], key: &str) -> Vec<Vec<String>> {
    report
        .iter()
        .filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim_end() == key).then(|| v.split_whitespace().map(str::to_string).collect())
        })
        .collect()
}

/// (platform, emulation) of each El Torito entry, e.g. ("BIOS", "none").
pub fn boot_entries(report: &[String]) -> Vec<(String, String)> {
    report_rows(report, "El Torito boot img")
        .into_iter()
        .map(|r| (r[1].clone(), r[3].clone()))
        .collect()
}

/// GPT type GUIDs (xorriso's byte-order hex) in entry order.
pub fn gpt_types(report: &[String]) -> Vec<String> {
    report_rows(report, "GPT type GUID")
        .into_iter()
        .map(|r| r[1].clone())
        .collect()
}

/// MBR partition types, e.g. ["0x00", "0xef"].
pub fn mbr_types(report: &[String]) -> Vec<String> {
    report_rows(report, "MBR partition")
        .into_iter()
        .map(|r| r[2].clone())
        .collect()
}

/// The words of "System area summary".
pub fn system_area_summary(report: &[String]) -> Vec<String> {
    report_rows(report, "System area summary")
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// xorriso's spelling of the EFI System Partition type GUID.
pub const XORRISO_GPT_ESP: &str = "28732ac11ff8d211ba4b00a0c93ec93b";
/// xorriso's spelling of the Basic Data type GUID.
pub const XORRISO_GPT_BASIC_DATA: &str = "a2a0d0ebe5b9334487c068b6b72699c7";

/// Runs a shell script in `dir`, panicking with its output on failure.
pub fn sh(dir: &Path, script: &str) {
    run_ok(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
}

/// A FAT image (made by the peers mkfs.vfat + mtools) holding `files` (host path, FAT path).
pub fn peer_fat_image(out: &Path, kib: u32, files: &[(&Path, &str)]) {
    require_tool("mkfs.vfat");
    require_tool("mcopy");
    run_ok(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", out.display()))
            .arg("bs=1k")
            .arg(format!("count={kib}"))
            .arg("status=none"),
    );
    run_ok(Command::new("mkfs.vfat").args(["-n", "EFIBOOT"]).arg(out));
    for (host, fat_path) in files {
        let mut dir = String::from("::");
        let parts: Vec<&str> = fat_path.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if dir != "::" {
                dir.push('/');
            }
            dir.push_str(part);
            let _ = Command::new("mmd").arg("-i").arg(out).arg(&dir).output();
        }
        run_ok(
            Command::new("mcopy")
                .arg("-i")
                .arg(out)
                .arg(host)
                .arg(format!("::/{}", fat_path.trim_start_matches('/'))),
        );
    }
}

/// The kernel command line every boot test uses.
/// `no_timer_check` (as `boot --direct` adds it, boot/tune.rs): under TCG on a loaded host the
/// kernel's IO-APIC timer check can fail and panic ("IO-APIC + timer doesn't work"); every
/// test payload's command line carries it.
pub const KERNEL_ARGS: &str = "console=ttyS0 panic=-1 quiet no_timer_check";

/// The GRUB configuration that boots the payload (serial console, no menu delay).
pub fn grub_cfg() -> String {
    format!(
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n\
         set timeout=0\nmenuentry vmedia {{\n  linux /boot/vmlinuz {KERNEL_ARGS}\n  initrd /boot/initrd.gz\n}}\n"
    )
}

/// A folder with the payload kernel and initramfs under /boot (shared by every boot tree).
pub fn add_payload(tree: &Path) {
    let p = payload();
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::copy(&p.kernel, tree.join("boot/vmlinuz")).unwrap();
    fs::copy(&p.initrd, tree.join("boot/initrd.gz")).unwrap();
}

/// A BIOS isolinux tree: isolinux/isolinux.bin, ldlinux.c32, isolinux.cfg + the payload.
pub fn isolinux_tree() -> PathBuf {
    let dir = cached_fixture("iso-boot-isolinux-v1", |dir| {
        let t = dir.join("tree");
        fs::create_dir_all(t.join("isolinux")).unwrap();
        fs::copy(
            "/usr/lib/ISOLINUX/isolinux.bin",
            t.join("isolinux/isolinux.bin"),
        )
        .expect("isolinux not installed: run scripts/setup.sh");
        fs::copy(
            "/usr/lib/syslinux/modules/bios/ldlinux.c32",
            t.join("isolinux/ldlinux.c32"),
        )
        .expect("syslinux-common not installed: run scripts/setup.sh");
        fs::write(
            t.join("isolinux/isolinux.cfg"),
            format!(
                "SERIAL 0 115200\nDEFAULT vmedia\nPROMPT 0\nTIMEOUT 0\nLABEL vmedia\n  KERNEL /boot/vmlinuz\n  APPEND initrd=/boot/initrd.gz {KERNEL_ARGS}\n"
            ),
        )
        .unwrap();
        add_payload(&t);
    });
    dir.join("tree")
}

/// A GRUB tree for BIOS (El Torito image from grub-mkimage -O i386-pc-eltorito) and UEFI
/// (a standalone GRUB EFI binary with grub.cfg inside, in efi/EFI/BOOT/BOOTX64.EFI), plus
/// the payload. Returns (tree, efi_dir).
pub fn grub_tree() -> (PathBuf, PathBuf) {
    let dir = cached_fixture("iso-boot-grub-v1", |dir| {
        let t = dir.join("tree");
        fs::create_dir_all(t.join("boot/grub/i386-pc")).unwrap();
        add_payload(&t);
        fs::write(t.join("boot/grub/grub.cfg"), grub_cfg()).unwrap();
        require_tool("grub-mkimage");
        // The BIOS core finds its disc by searching for /boot/grub/grub.cfg.
        let early = dir.join("early.cfg");
        fs::write(&early, "search --no-floppy --file --set=root /boot/grub/grub.cfg\nset prefix=($root)/boot/grub\nconfigfile /boot/grub/grub.cfg\n").unwrap();
        run_ok(
            Command::new("grub-mkimage")
                .args(["-O", "i386-pc-eltorito", "-p", "/boot/grub", "-c"])
                .arg(&early)
                .arg("-o")
                .arg(t.join("boot/grub/i386-pc/eltorito.img"))
                .args([
                    "biosdisk",
                    "iso9660",
                    "part_msdos",
                    "part_gpt",
                    "normal",
                    "configfile",
                    "search",
                    "search_fs_file",
                    "linux",
                    "serial",
                    "terminal",
                    "echo",
                    "test",
                    "ls",
                    "gzio",
                ]),
        );
        let efi = dir.join("efi");
        fs::create_dir_all(efi.join("EFI/BOOT")).unwrap();
        let embedded = dir.join("embedded-grub.cfg");
        fs::write(
            &embedded,
            format!(
                "search --no-floppy --file --set=root /boot/vmlinuz\n{}",
                grub_cfg()
            ),
        )
        .unwrap();
        require_tool("grub-mkstandalone");
        run_ok(
            Command::new("grub-mkstandalone")
                .args(["-O", "x86_64-efi", "--locales=", "--fonts=", "--themes="])
                .arg("-o")
                .arg(efi.join("EFI/BOOT/BOOTX64.EFI"))
                .arg(format!("boot/grub/grub.cfg={}", embedded.display())),
        );
    });
    (dir.join("tree"), dir.join("efi"))
}

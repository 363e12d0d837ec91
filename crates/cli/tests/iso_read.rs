//! `vmedia iso info/ls/extract/cat/rip` against images made by xorriso, genisoimage and
//! grub-mkrescue and against every shared ISO sample, checked with xorriso, isoinfo and 7z.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{cached_fixture, require_tool, run_any, run_ok, shared_sample, vmedia};

// ---------------------------------------------------------------------------------------------
// fixtures

/// The source tree: modes, setuid/sticky, symlinks (relative, absolute, dangling, to a
/// directory), a hard link, an empty file and directory, a 12-level deep path (relocated by
/// genisoimage), unicode and 200-byte names, a quote in a name.
fn source_tree() -> PathBuf {
    cached_fixture("iso-read-tree", |dir| {
        let script = r#"
set -e
mkdir -p tree/sub/a/b/c/d/e/f/g/h/i/j/k tree/emptydir "tree/ünïcødé 日本語"
cd tree
echo hello > hello.txt
head -c 1000000 /dev/urandom > random.bin
head -c 2049 /dev/urandom > sub/odd.bin
: > empty
ln hello.txt hardlink.txt
ln -s hello.txt rel-link
ln -s /etc/passwd abs-link
ln -s sub dir-link
ln -s missing dangling
echo deep > sub/a/b/c/d/e/f/g/h/i/j/k/deep.txt
echo uni > "ünïcødé 日本語/файл 🎉.txt"
printf x > "$(printf 'L%.0s' $(seq 1 200))"
echo "it's quoted" > "it's.txt"
chmod 755 random.bin
chmod 600 sub/odd.bin
chmod 4755 hello.txt
chmod 1777 emptydir
touch -d '2001-02-03 04:05:06' sub/odd.bin
"#;
        run_ok(Command::new("bash").arg("-c").arg(script).current_dir(dir));
    })
    .join("tree")
}

fn make_image(name: &str, tool: &str, args: &[&str]) -> PathBuf {
    let tree = source_tree();
    let dir = cached_fixture(name, |dir| {
        let out = dir.join("image.iso");
        let mut cmd = Command::new(require_tool(tool));
        cmd.args(args).arg("-o").arg(&out).arg(&tree);
        run_ok(&mut cmd);
    });
    dir.join("image.iso")
}

fn xorriso_image() -> PathBuf {
    make_image(
        "iso-read-xorriso",
        "xorriso",
        &["-as", "mkisofs", "-R", "-J", "-joliet-long"],
    )
}

fn genisoimage_rj_image() -> PathBuf {
    make_image(
        "iso-read-genisoimage-rj",
        "genisoimage",
        &["-quiet", "-R", "-J", "-joliet-long"],
    )
}

fn genisoimage_r_image() -> PathBuf {
    make_image(
        "iso-read-genisoimage-r",
        "genisoimage",
        &["-quiet", "-r", "-J", "-joliet-long"],
    )
}

/// grub-mkrescue: El Torito BIOS + EFI entries, an MBR/GPT hybrid layout.
fn grub_image() -> PathBuf {
    let dir = cached_fixture("iso-read-grub", |dir| {
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("boot/grub")).unwrap();
        fs::write(
            tree.join("boot/grub/grub.cfg"),
            "set timeout=0\nmenuentry x { halt }\n",
        )
        .unwrap();
        fs::write(tree.join("readme.txt"), "grub rescue image\n").unwrap();
        let mut cmd = Command::new(require_tool("grub-mkrescue"));
        cmd.arg("-o").arg(dir.join("image.iso")).arg(&tree);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        assert!(cmd.status().unwrap().success(), "grub-mkrescue failed");
        fs::remove_dir_all(&tree).unwrap();
    });
    dir.join("image.iso")
}

/// isolinux-style BIOS boot made by genisoimage: a boot info table and a visible catalog.
fn isolinux_image() -> PathBuf {
    let dir = cached_fixture("iso-read-isolinux", |dir| {
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("isolinux")).unwrap();
        fs::copy(
            "/usr/lib/ISOLINUX/isolinux.bin",
            tree.join("isolinux/isolinux.bin"),
        )
        .expect("isolinux not installed: run scripts/setup.sh");
        fs::write(tree.join("isolinux/isolinux.cfg"), "default x\n").unwrap();
        run_ok(
            Command::new(require_tool("genisoimage"))
                .args([
                    "-quiet",
                    "-R",
                    "-J",
                    "-b",
                    "isolinux/isolinux.bin",
                    "-c",
                    "isolinux/boot.cat",
                ])
                .args([
                    "-no-emul-boot",
                    "-boot-load-size",
                    "4",
                    "-boot-info-table",
                    "-o",
                ])
                .arg(dir.join("image.iso"))
                .arg(&tree),
        );
        fs::remove_dir_all(&tree).unwrap();
    });
    dir.join("image.iso")
}

/// A 4.5 GiB sparse file with markers near the start, across the 4 GiB extent boundary and at
/// the end: xorriso stores it as a multi-extent file. The image is re-sparsified after writing.
fn big_image() -> (PathBuf, String) {
    let dir = cached_fixture("iso-read-big", |dir| {
        let script = r#"
set -e
mkdir tree
truncate -s 4831838208 tree/big.bin
printf HEAD | dd of=tree/big.bin conv=notrunc status=none
printf ACROSS-THE-4GIB-LINE | dd of=tree/big.bin bs=1 seek=4294965000 conv=notrunc status=none
printf TAIL | dd of=tree/big.bin bs=1 seek=4831838204 conv=notrunc status=none
echo small > tree/small.txt
sha256sum tree/big.bin | cut -d' ' -f1 > big.sha256
xorriso -as mkisofs -R -J -iso-level 3 -o - tree 2>/dev/null | dd of=image.iso bs=1M conv=sparse status=none iflag=fullblock
rm -rf tree
"#;
        run_ok(Command::new("bash").arg("-c").arg(script).current_dir(dir));
    });
    let sha = fs::read_to_string(dir.join("big.sha256"))
        .unwrap()
        .trim()
        .to_string();
    (dir.join("image.iso"), sha)
}

/// Every ISO among the shared samples, decompressed; the CE-loop sample is the hostile one.
const SHARED_ISOS: &[&str] = &[
    "libarchive/test_read_format_iso.iso.xz",
    "libarchive/test_read_format_iso_2.iso.xz",
    "libarchive/test_read_format_iso_3.iso.xz",
    "libarchive/test_read_format_iso_joliet.iso.xz",
    "libarchive/test_read_format_iso_joliet_by_nero.iso.xz",
    "libarchive/test_read_format_iso_joliet_long.iso.xz",
    "libarchive/test_read_format_iso_joliet_rockridge.iso.xz",
    "libarchive/test_read_format_iso_multi_extent.iso.xz",
    "libarchive/test_read_format_iso_rockridge.iso.xz",
    "libarchive/test_read_format_iso_rockridge_ce.iso.xz",
    "libarchive/test_read_format_iso_rockridge_rr_moved.iso.xz",
    "libarchive/test_read_format_iso_xorriso.iso.xz",
    "libarchive/test_read_format_iso_zisofs.iso.xz",
    "kdomanski-iso9660/test.iso.xz",
    "kdomanski-iso9660/test_rockridge.iso.xz",
    "iso9660-rs/test.iso.xz",
    "hadris/valid.iso.xz",
    "dfvfs/iso9660.raw.xz",
    "dfvfs/iso9660-level1.raw.xz",
];

// ---------------------------------------------------------------------------------------------
// helpers

/// Splits the quoted tail of an xorriso `lsdl` line ('a'"'"'b' -> 'c') into words.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                    cur.push(d);
                }
            }
            ' ' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            other => {
                in_word = true;
                cur.push(other);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// (path, mode string, uid, gid, size for regular files, symlink target)
type Row = (String, String, String, String, String, String);

fn xorriso_listing(image: &Path) -> BTreeSet<Row> {
    let out = run_ok(
        Command::new(require_tool("xorriso"))
            .env("LC_ALL", "C.UTF-8")
            .args(["-abort_on", "FATAL", "-indev"])
            .arg(image)
            .args(["-find", "/", "-exec", "lsdl"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = BTreeSet::new();
    for line in text.lines() {
        // mode nlink uid gid size month day year-or-time 'path' [-> 'target']
        let mut it = line.split_whitespace();
        // xorriso marks the El Torito catalog with type 'e'; it is a plain file to everyone else.
        let mode = it.next().unwrap().replacen('e', "-", 1);
        let _nlink = it.next();
        let uid = it.next().unwrap().to_string();
        let gid = it.next().unwrap().to_string();
        let size = it.next().unwrap().to_string();
        let quoted = &line[line.find('\'').unwrap()..];
        let words = shell_words(quoted);
        let path = words[0].clone();
        if path == "/" {
            continue;
        }
        let target = if words.len() == 3 && words[1] == "->" {
            words[2].clone()
        } else {
            String::new()
        };
        let size = if mode.starts_with('-') {
            size
        } else {
            String::new()
        };
        rows.insert((path, mode, uid, gid, size, target));
    }
    rows
}

fn mode_string(kind: &str, mode: u64) -> String {
    let c = match kind {
        "directory" => 'd',
        "symlink" => 'l',
        "char_device" => 'c',
        "block_device" => 'b',
        "fifo" => 'p',
        "socket" => 's',
        _ => '-',
    };
    let mut s = String::from(c);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (mask, ch)) in bits.iter().enumerate() {
        let set = mode & mask != 0;
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        s.push(match (special, set, i) {
            (true, true, 8) => 't',
            (true, false, 8) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => *ch,
            (false, false, _) => '-',
        });
    }
    s
}

fn ls_json(image: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = run_ok(
        vmedia()
            .args(["iso", "ls", "-R", "--json"])
            .args(extra)
            .arg(image),
    );
    serde_json::from_slice(&out.stdout).expect("ls --json prints JSON")
}

fn vmedia_listing(image: &Path) -> BTreeSet<Row> {
    ls_json(image, &[])
        .iter()
        .map(|item| {
            let e = &item["entry"];
            let kind = e["kind"]["type"].as_str().unwrap();
            let size = if kind == "file" {
                e["size"].to_string()
            } else {
                String::new()
            };
            let target = e["kind"]["target"].as_str().unwrap_or("").to_string();
            (
                item["path"].as_str().unwrap().to_string(),
                mode_string(kind, e["mode"].as_u64().unwrap()),
                e["uid"].to_string(),
                e["gid"].to_string(),
                size,
                target,
            )
        })
        .collect()
}

fn assert_listing_matches_xorriso(image: &Path) {
    let ours = vmedia_listing(image);
    let theirs = xorriso_listing(image);
    let only_ours: Vec<_> = ours.difference(&theirs).collect();
    let only_theirs: Vec<_> = theirs.difference(&ours).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "{}: listings differ\nonly vmedia: {only_ours:#?}\nonly xorriso: {only_theirs:#?}",
        image.display()
    );
}

/// Type, mode, size, target, owner and (except for symlinks, whose times xorriso does not
/// restore) mtime of every path below `dir`.
fn tree_state(dir: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new("find")
            .arg(".")
            .arg("-printf")
            .arg("%P|%y|%m|%s|%l|%U|%G|%T@\n")
            .current_dir(dir),
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('|'))
        .map(|l| {
            let mut f: Vec<String> = l.split('|').map(str::to_string).collect();
            if f[1] == "d" {
                f[3] = "-".into();
            }
            if f[1] == "l" {
                // xorriso restores neither the times nor the owner of symlinks; vmedia does.
                f[5] = "-".into();
                f[6] = "-".into();
                f[7] = "-".into();
            }
            f.join("|")
        })
        .collect();
    lines.sort();
    lines
}

/// Lets the temp dir be removed although extraction restored read-only directories.
fn make_writable(dir: &Path) {
    let _ = Command::new("chmod").arg("-R").arg("u+w").arg(dir).status();
}

fn assert_extract_matches_xorriso(image: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("vmedia");
    let theirs = tmp.path().join("xorriso");
    run_ok(
        vmedia()
            .args(["iso", "extract", "-q"])
            .arg(image)
            .arg(&ours),
    );
    run_ok(
        Command::new(require_tool("xorriso"))
            .env("LC_ALL", "C.UTF-8")
            .args(["-osirrox", "on", "-indev"])
            .arg(image)
            .args(["-extract", "/"])
            .arg(&theirs),
    );
    let diff = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&ours)
        .arg(&theirs)
        .output()
        .unwrap();
    let (a, b) = (tree_state(&ours), tree_state(&theirs));
    make_writable(tmp.path());
    assert!(
        diff.status.success(),
        "{}: contents differ:\n{}",
        image.display(),
        String::from_utf8_lossy(&diff.stdout)
    );
    assert_eq!(
        a,
        b,
        "{}: metadata differs (vmedia left, xorriso right)",
        image.display()
    );
}

// ---------------------------------------------------------------------------------------------
// listings and extraction against xorriso

#[test]
fn xorriso_made_image_lists_and_extracts_like_xorriso() {
    let image = xorriso_image();
    assert_listing_matches_xorriso(&image);
    assert_extract_matches_xorriso(&image);
}

#[test]
fn genisoimage_rock_ridge_image_lists_and_extracts_like_xorriso() {
    let image = genisoimage_rj_image();
    assert_listing_matches_xorriso(&image);
    assert_extract_matches_xorriso(&image);
}

#[test]
fn genisoimage_rationalized_image_lists_and_extracts_like_xorriso() {
    let image = genisoimage_r_image();
    assert_listing_matches_xorriso(&image);
    assert_extract_matches_xorriso(&image);
}

#[test]
fn grub_mkrescue_image_lists_and_extracts_like_xorriso() {
    let image = grub_image();
    assert_listing_matches_xorriso(&image);
    assert_extract_matches_xorriso(&image);
}

#[test]
fn every_shared_iso_sample_lists_and_extracts_like_xorriso() {
    for name in SHARED_ISOS {
        let image = shared_sample(name);
        assert_listing_matches_xorriso(&image);
        assert_extract_matches_xorriso(&image);
    }
}

#[test]
fn ce_loop_sample_is_a_clear_error_not_a_hang() {
    let image = shared_sample("libarchive/test_read_format_iso_rockridge_ce_loop.iso.xz");
    let (code, _, err) = run_any(vmedia().args(["iso", "ls", "-R"]).arg(&image));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("CE continuation") && err.contains("loop") && err.contains("offset 0x"),
        "{err}"
    );
}

#[test]
fn hard_links_are_restored_as_links() {
    let image = genisoimage_rj_image();
    let tmp = tempfile::tempdir().unwrap();
    run_ok(
        vmedia()
            .args(["iso", "extract", "-q"])
            .arg(&image)
            .arg(tmp.path()),
    );
    let a = fs::metadata(tmp.path().join("hello.txt")).unwrap();
    let b = fs::metadata(tmp.path().join("hardlink.txt")).unwrap();
    make_writable(tmp.path());
    assert_eq!(
        a.ino(),
        b.ino(),
        "hello.txt and hardlink.txt should be one inode"
    );
    assert_eq!(a.mode() & 0o7777, 0o4755);
}

// ---------------------------------------------------------------------------------------------
// Joliet views against isoinfo and 7z

fn joliet_paths(image: &Path) -> BTreeSet<String> {
    ls_json(image, &["--namespace", "joliet"])
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect()
}

/// isoinfo shows Joliet names with the recorded ";1" version; xorriso, 7z and Linux drop it.
fn strip_version(path: &str) -> String {
    match path.rsplit_once(';') {
        Some((base, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            base.to_string()
        }
        _ => path.to_string(),
    }
}

#[test]
fn joliet_listing_matches_isoinfo_and_7z() {
    for image in [
        genisoimage_rj_image(),
        xorriso_image(),
        shared_sample("libarchive/test_read_format_iso_joliet_by_nero.iso.xz"),
    ] {
        let ours = joliet_paths(&image);
        // isoinfo knows no UTF-8 output charset, so it is compared on the ASCII names.
        let out = run_ok(
            Command::new(require_tool("isoinfo"))
                .args(["-J", "-f", "-i"])
                .arg(&image),
        );
        let isoinfo: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|p| p.is_ascii())
            .map(strip_version)
            .collect();
        let ascii: BTreeSet<String> = ours.iter().filter(|p| p.is_ascii()).cloned().collect();
        assert_eq!(
            ascii,
            isoinfo,
            "{}: Joliet paths differ from isoinfo -J",
            image.display()
        );
        let out = run_ok(
            Command::new(require_tool("7z"))
                .args(["l", "-ba", "-slt"])
                .arg(&image),
        );
        let seven: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("Path = "))
            .map(|p| format!("/{p}"))
            .collect();
        assert_eq!(
            ours,
            seven,
            "{}: Joliet paths differ from 7z",
            image.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// multi-extent files over 4 GiB

#[test]
fn multi_extent_file_over_4gib_reads_whole() {
    let (image, sha) = big_image();
    assert_listing_matches_xorriso(&image);
    let items = ls_json(&image, &[]);
    let big = items
        .iter()
        .find(|i| i["path"] == "/big.bin")
        .expect("big.bin listed");
    assert_eq!(big["entry"]["size"], 4_831_838_208u64);
    assert!(
        big["entry"]["extents"].as_array().unwrap().len() >= 2,
        "a >4 GiB file needs several extents"
    );
    let cat = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' iso cat '{}' /big.bin | sha256sum",
            env!("CARGO_BIN_EXE_vmedia"),
            image.display()
        ))
        .output()
        .unwrap();
    assert!(cat.status.success());
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout)
            .split_whitespace()
            .next()
            .unwrap(),
        sha
    );
}

// ---------------------------------------------------------------------------------------------
// cat, ls, info

#[test]
fn cat_prints_file_and_follows_symlinks() {
    let image = xorriso_image();
    let out = run_ok(vmedia().args(["iso", "cat"]).arg(&image).arg("/rel-link"));
    assert_eq!(out.stdout, b"hello\n");
    let out = run_ok(
        vmedia()
            .args(["iso", "cat"])
            .arg(&image)
            .arg("/dir-link/odd.bin"),
    );
    assert_eq!(
        out.stdout,
        fs::read(source_tree().join("sub/odd.bin")).unwrap()
    );
    let (code, _, err) = run_any(vmedia().args(["iso", "cat"]).arg(&image).arg("/nope"));
    assert_eq!(code, 1);
    assert!(
        err.contains("/nope") && err.contains("no such file"),
        "{err}"
    );
    let (code, _, err) = run_any(vmedia().args(["iso", "cat"]).arg(&image).arg("/sub"));
    assert_eq!(code, 1);
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn cat_into_a_closed_pipe_exits_quietly() {
    let image = xorriso_image();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' iso cat '{}' /random.bin | head -c 10 >/dev/null",
            env!("CARGO_BIN_EXE_vmedia"),
            image.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exit {:?}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn iso_names_match_with_and_without_version() {
    let image = shared_sample("dfvfs/iso9660.raw.xz");
    let a = run_ok(
        vmedia()
            .args(["iso", "cat"])
            .arg(&image)
            .arg("/PASSWORDS.TXT"),
    )
    .stdout;
    let b = run_ok(
        vmedia()
            .args(["iso", "cat"])
            .arg(&image)
            .arg("/PASSWORDS.TXT;1"),
    )
    .stdout;
    let c = run_ok(
        vmedia()
            .args(["iso", "cat"])
            .arg(&image)
            .arg("/passwords.txt"),
    )
    .stdout;
    assert_eq!(a.len(), 116);
    assert_eq!(a, b);
    assert_eq!(
        a, c,
        "plain ISO 9660 names also match in lower case, as Linux shows them"
    );
}

#[test]
fn ls_long_shows_mode_owner_size_and_link_target() {
    let image = xorriso_image();
    let out =
        String::from_utf8(run_ok(vmedia().args(["iso", "ls", "-l"]).arg(&image)).stdout).unwrap();
    let hello = out
        .lines()
        .find(|l| l.ends_with(" hello.txt"))
        .expect("hello.txt listed");
    assert!(hello.starts_with("-rwsr-xr-x"), "{hello}");
    assert!(hello.contains(" 6 "), "{hello}");
    let link = out.lines().find(|l| l.contains(" rel-link")).unwrap();
    assert!(
        link.starts_with('l') && link.ends_with("rel-link -> hello.txt"),
        "{link}"
    );
    let short = String::from_utf8(run_ok(vmedia().args(["iso", "ls"]).arg(&image)).stdout).unwrap();
    let names: Vec<&str> = short.lines().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "ls sorts by name");
    assert_eq!(names.len(), out.lines().count());
    let sub =
        String::from_utf8(run_ok(vmedia().args(["iso", "ls"]).arg(&image).arg("/sub")).stdout)
            .unwrap();
    assert_eq!(sub, "a\nodd.bin\n");
}

fn info_json(image: &Path) -> serde_json::Value {
    let out = run_ok(vmedia().args(["iso", "info", "--json"]).arg(image));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn info_reports_volume_fields_like_isoinfo() {
    let image = shared_sample("kdomanski-iso9660/test.iso.xz");
    let info = info_json(&image);
    let out = run_ok(
        Command::new(require_tool("isoinfo"))
            .arg("-d")
            .arg("-i")
            .arg(&image),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    assert_eq!(info["volume"]["primary"]["volume_id"], field("Volume id:"));
    assert_eq!(
        info["volume"]["primary"]["publisher_id"],
        field("Publisher id:")
    );
    assert_eq!(
        info["volume"]["primary"]["volume_space_size"].to_string(),
        field("Volume size is:")
    );
    assert_eq!(info["volume"]["namespace"], "iso9660");
    assert!(info["boot_catalog"].is_null());
    let text =
        String::from_utf8(run_ok(vmedia().args(["iso", "info"]).arg(&image)).stdout).unwrap();
    assert!(text.contains("Volume id:          my-vol-id"), "{text}");
}

#[test]
fn info_shows_isolinux_boot_entry_and_mkisofs_options() {
    let image = isolinux_image();
    let info = info_json(&image);
    let entry = &info["boot_catalog"]["entries"][0];
    assert_eq!(entry["platform"], "x86");
    assert_eq!(entry["emulation"], "no_emulation");
    assert_eq!(entry["sector_count"], 4);
    assert_eq!(entry["image_path"], "/isolinux/isolinux.bin");
    assert_eq!(entry["boot_info_table"], true);
    assert_eq!(info["boot_catalog"]["catalog_path"], "/isolinux/boot.cat");
    let args: Vec<String> = info["mkisofs_boot_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        args.join(" "),
        "-c /isolinux/boot.cat -b /isolinux/isolinux.bin -no-emul-boot -boot-load-size 4 -boot-info-table"
    );
    assert_boot_args_match_xorriso(&image, &info);
}

#[test]
fn info_shows_grub_mkrescue_bios_and_efi_entries_and_partitions() {
    let image = grub_image();
    let info = info_json(&image);
    let entries = info["boot_catalog"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{info:#}");
    assert_eq!(entries[0]["platform"], "x86");
    assert_eq!(entries[1]["platform"], "efi");
    assert_eq!(entries[0]["grub2_boot_info"], true);
    assert_eq!(entries[0]["boot_info_table"], true);
    assert!(
        !info["partitions"]["mbr"].as_array().unwrap().is_empty(),
        "grub-mkrescue writes an MBR"
    );
    let out = run_ok(
        Command::new(require_tool("xorriso"))
            .arg("-indev")
            .arg(&image)
            .args(["-report_el_torito", "plain"]),
    );
    let report = String::from_utf8_lossy(&out.stdout);
    // xorriso lists "El Torito boot img :   N  BIOS/UEFI  y  none  0x0000  0x00  size  lba"
    let lbas: Vec<u64> = report
        .lines()
        .filter(|l| l.starts_with("El Torito boot img :"))
        .filter_map(|l| l.split_whitespace().last().and_then(|v| v.parse().ok()))
        .collect();
    let ours: Vec<u64> = entries.iter().map(|e| e["lba"].as_u64().unwrap()).collect();
    assert_eq!(
        ours, lbas,
        "boot image locations differ from xorriso:\n{report}"
    );
    let efi_size = entries[1]["image_size"].as_u64().unwrap();
    assert!(efi_size > 512);
    assert_eq!(
        info["partitions"]["apple_partition_map"], true,
        "grub-mkrescue writes an APM for Macs"
    );
    assert_boot_args_match_xorriso(&image, &info);
}

/// Our El Torito mkisofs options equal xorriso's `-report_el_torito as_mkisofs` from `-c` on.
fn assert_boot_args_match_xorriso(image: &Path, info: &serde_json::Value) {
    let out = run_ok(
        Command::new(require_tool("xorriso"))
            .arg("-indev")
            .arg(image)
            .args(["-report_el_torito", "as_mkisofs"]),
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let theirs: Vec<String> = report
        .lines()
        .skip_while(|l| !l.starts_with("-c "))
        .flat_map(shell_words)
        .collect();
    let ours: Vec<String> = info["mkisofs_boot_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ours, theirs,
        "El Torito options differ from xorriso -report_el_torito as_mkisofs:\n{report}"
    );
}

// ---------------------------------------------------------------------------------------------
// extraction rules

#[test]
fn extract_selected_paths_keeps_their_place() {
    let image = xorriso_image();
    let tmp = tempfile::tempdir().unwrap();
    run_ok(
        vmedia()
            .args(["iso", "extract", "-q"])
            .arg(&image)
            .arg(tmp.path())
            .args(["/sub/odd.bin", "/ünïcødé 日本語"]),
    );
    assert_eq!(
        fs::read(tmp.path().join("sub/odd.bin")).unwrap(),
        fs::read(source_tree().join("sub/odd.bin")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("ünïcødé 日本語/файл 🎉.txt")).unwrap(),
        "uni\n"
    );
    assert!(!tmp.path().join("hello.txt").exists());
    let mtime = fs::metadata(tmp.path().join("sub/odd.bin"))
        .unwrap()
        .mtime();
    let want = fs::metadata(source_tree().join("sub/odd.bin"))
        .unwrap()
        .mtime();
    make_writable(tmp.path());
    assert_eq!(mtime, want, "mtime restored");
}

#[test]
fn extract_refuses_to_overwrite_without_force() {
    let image = xorriso_image();
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("hello.txt"), "mine").unwrap();
    let (code, _, err) = run_any(
        vmedia()
            .args(["iso", "extract", "-q"])
            .arg(&image)
            .arg(tmp.path())
            .arg("/hello.txt"),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("hello.txt")).unwrap(),
        "mine"
    );
    run_ok(
        vmedia()
            .args(["iso", "extract", "-q", "--force"])
            .arg(&image)
            .arg(tmp.path())
            .arg("/hello.txt"),
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("hello.txt")).unwrap(),
        "hello\n"
    );
}

#[test]
fn extract_never_writes_through_an_existing_symlink() {
    let image = xorriso_image();
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("sub")).unwrap();
    let (code, _, err) = run_any(
        vmedia()
            .args(["iso", "extract", "-q"])
            .arg(&image)
            .arg(&dest)
            .arg("/sub"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing may land outside the destination"
    );
}

// ---------------------------------------------------------------------------------------------
// rip

#[test]
fn rip_copies_a_hybrid_image_file_and_verifies() {
    let image = grub_image();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("copy.iso");
    let report = run_ok(
        vmedia()
            .args(["iso", "rip", "-q", "--json"])
            .arg(&image)
            .arg("-o")
            .arg(&out),
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["verified"], true);
    // grub-mkrescue pads the file to the partition layout; the copy holds what the medium records.
    let info = info_json(&image);
    let recorded = info["recorded_bytes"].as_u64().unwrap();
    assert_eq!(fs::metadata(&out).unwrap().len(), recorded);
    let original = fs::read(&image).unwrap();
    assert_eq!(fs::read(&out).unwrap(), original[..recorded as usize]);
    let (code, _, err) = run_any(
        vmedia()
            .args(["iso", "rip", "-q"])
            .arg(&image)
            .arg("-o")
            .arg(&out),
    );
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn rip_copies_a_loop_device() {
    let image = xorriso_image();
    let losetup = require_tool("losetup");
    let out = run_ok(
        Command::new(&losetup)
            .args(["--find", "--show", "--read-only"])
            .arg(&image),
    );
    let device = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("copy.iso");
    let result = run_any(
        vmedia()
            .args(["iso", "rip", "-q"])
            .arg(&device)
            .arg("-o")
            .arg(&copy),
    );
    let _ = Command::new(&losetup).arg("-d").arg(&device).status();
    assert_eq!(result.0, 0, "{}", result.2);
    assert!(result.2.contains("verified"), "{}", result.2);
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&image).unwrap());
}

#[test]
fn non_iso_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake.iso");
    fs::write(&fake, vec![0u8; 100 * 1024]).unwrap();
    for cmd in [&["iso", "info"][..], &["iso", "ls"][..]] {
        let (code, _, err) = run_any(vmedia().args(cmd).arg(&fake));
        assert_eq!(code, 1);
        assert!(
            err.contains("not an ISO 9660 image") && err.contains("fake.iso"),
            "{err}"
        );
    }
}

#[test]
fn info_shows_the_md5_implanted_by_implantisomd5() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("md5.iso");
    fs::copy(genisoimage_rj_image(), &image).unwrap();
    run_ok(Command::new(require_tool("implantisomd5")).arg(&image));
    let out = run_ok(
        Command::new(require_tool("checkisomd5"))
            .arg("--md5sumonly")
            .arg(&image),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let theirs = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let info = info_json(&image);
    assert_eq!(info["checksums"]["md5"]["digest"], theirs.as_str());
    let text =
        String::from_utf8(run_ok(vmedia().args(["iso", "info"]).arg(&image)).stdout).unwrap();
    assert!(text.contains(&format!("MD5 {theirs}")), "{text}");
}

// ---------------------------------------------------------------------------------------------
// extraction engine: fresh and existing destinations, batched small files, big files

/// Hidden temporary names `vmedia iso extract` leaves in `dir` (there must be none).
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("vmedia-tmp"))
        .collect()
}

/// A tree whose last file in the image is large: truncating the image inside that file's
/// data makes extraction fail after most of the tree was written.
fn truncatable_image() -> (PathBuf, u64) {
    let dir = cached_fixture("iso-read-truncatable", |dir| {
        let script = r#"
set -e
mkdir -p tree/a tree/b
for i in $(seq 1 20); do echo "file $i" > tree/a/f$i.txt; done
head -c 3000000 /dev/urandom > tree/b/zz-last.bin
xorriso -as mkisofs -quiet -R -o image.iso tree
"#;
        run_ok(Command::new("bash").arg("-c").arg(script).current_dir(dir));
    });
    let image = dir.join("image.iso");
    let items = ls_json(&image, &[]);
    let last = items
        .iter()
        .find(|i| i["path"] == "/b/zz-last.bin")
        .expect("zz-last.bin listed");
    let lba = last["entry"]["extents"][0]["lba"].as_u64().unwrap();
    (image, lba * 2048 + 4096)
}

#[test]
fn extract_into_a_new_folder_appears_only_when_complete() {
    let (image, cut) = truncatable_image();
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.iso");
    let mut bytes = fs::read(&image).unwrap();
    bytes.truncate(cut as usize);
    fs::write(&broken, bytes).unwrap();

    let dest = tmp.path().join("out/new");
    let (code, _, err) = run_any(
        vmedia()
            .args(["iso", "extract", "-q"])
            .arg(&broken)
            .arg(&dest),
    );
    assert_eq!(code, 1, "a truncated image must fail: {err}");
    assert!(
        !dest.exists(),
        "a failed run must not leave {}",
        dest.display()
    );
    assert_eq!(leftovers(&tmp.path().join("out")), Vec::<String>::new());

    run_ok(
        vmedia()
            .args(["iso", "extract", "-q"])
            .arg(&image)
            .arg(&dest),
    );
    assert_eq!(leftovers(&tmp.path().join("out")), Vec::<String>::new());
    assert_eq!(
        fs::read_to_string(dest.join("a/f7.txt")).unwrap(),
        "file 7\n"
    );
    assert_eq!(
        fs::metadata(dest.join("b/zz-last.bin")).unwrap().len(),
        3_000_000
    );
    make_writable(tmp.path());
}

#[test]
fn extract_into_an_existing_folder_keeps_what_is_there() {
    let image = xorriso_image();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir_all(dest.join("sub")).unwrap();
    fs::write(dest.join("mine.txt"), "mine").unwrap();
    fs::write(dest.join("sub/mine-too.txt"), "mine too").unwrap();
    run_ok(
        vmedia()
            .args(["iso", "extract", "-q"])
            .arg(&image)
            .arg(&dest),
    );
    assert_eq!(fs::read_to_string(dest.join("mine.txt")).unwrap(), "mine");
    assert_eq!(
        fs::read_to_string(dest.join("sub/mine-too.txt")).unwrap(),
        "mine too"
    );
    assert_eq!(
        fs::read(dest.join("sub/odd.bin")).unwrap(),
        fs::read(source_tree().join("sub/odd.bin")).unwrap()
    );
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
    assert_eq!(leftovers(&dest), Vec::<String>::new());
    make_writable(tmp.path());
}

/// Many small files in a few folders (batched reads, one thread per folder), odd sizes and
/// empty files between them, and one 70 MB file (copied by the kernel in steps).
fn batch_and_big_image() -> PathBuf {
    let dir = cached_fixture("iso-read-batch-big", |dir| {
        let script = r#"
set -e
for d in 1 2 3 4 5; do
  mkdir -p tree/d$d
  for i in $(seq 1 120); do head -c $((i * 97 % 9000)) /dev/urandom > tree/d$d/f$i; done
  : > tree/d$d/empty
  head -c 300000 /dev/urandom > tree/d$d/middle.bin
done
head -c 70000000 /dev/urandom > tree/d3/big.bin
genisoimage -quiet -R -J -o image.iso tree
"#;
        run_ok(Command::new("bash").arg("-c").arg(script).current_dir(dir));
    });
    dir.join("image.iso")
}

#[test]
fn batched_small_files_and_a_big_file_extract_like_7z() {
    let image = batch_and_big_image();
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("vmedia");
    let theirs = tmp.path().join("7z");
    run_ok(
        vmedia()
            .args(["iso", "extract", "-q", "--sync"])
            .arg(&image)
            .arg(&ours),
    );
    run_ok(
        Command::new(require_tool("7z"))
            .args(["x", "-y", "-bd"])
            .arg(format!("-o{}", theirs.display()))
            .arg(&image),
    );
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&ours)
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "contents differ from 7z's:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert_eq!(
        fs::metadata(ours.join("d3/big.bin")).unwrap().len(),
        70_000_000
    );
    assert_eq!(
        fs::metadata(ours.join("d1/f99")).unwrap().len(),
        99 * 97 % 9000,
        "odd sizes survive the batched reads"
    );
}

#[test]
fn extract_into_a_symlink_to_a_folder_follows_only_that_link() {
    let image = xorriso_image();
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    run_ok(
        vmedia()
            .args(["iso", "extract", "-q"])
            .arg(&image)
            .arg(&link)
            .arg("/sub/odd.bin"),
    );
    assert_eq!(
        fs::read(real.join("sub/odd.bin")).unwrap(),
        fs::read(source_tree().join("sub/odd.bin")).unwrap()
    );
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    make_writable(tmp.path());
}

//! Images written by `vmedia mkisofs` / `vmedia iso create` / `iso seed` are read back the same
//! by the peers: xorriso (osirrox), isoinfo (Rock Ridge and Joliet views), 7z, bsdtar, and
//! checkisomd5 accepts their embedded MD5. Builds are reproducible with SOURCE_DATE_EPOCH.

#[path = "support/iso.rs"]
mod iso;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use iso::{assert_same_tree, joliet_view, manifest, Node};
use support::{require_tool, run_any, run_ok, vmedia};

/// Joliet name limit with -joliet-long.
const JOLIET_LONG: usize = 103;

/// `vmedia mkisofs -R -J -joliet-long -iso-level 3` of `tree` into `dir`.
fn mkisofs(dir: &Path, tree: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join("out.iso");
    run_ok(
        vmedia()
            .arg("mkisofs")
            .args([
                "-quiet",
                "-R",
                "-J",
                "-joliet-long",
                "-iso-level",
                "3",
                "-V",
                "VMEDIA_PEERS",
            ])
            .args(extra)
            .arg("-o")
            .arg(&out)
            .arg(tree),
    );
    out
}

fn tree_and_image() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tree = iso::peer_tree();
    let dir = tempfile::tempdir().unwrap();
    let image = mkisofs(dir.path(), &tree, &[]);
    (dir, tree, image)
}

/// The extractors the tests compare with.
#[derive(Clone, Copy)]
enum Peer {
    /// `xorriso -osirrox on -extract /` (Rock Ridge, hard links kept).
    Xorriso,
    /// `bsdtar -xpf` (Rock Ridge, modes kept).
    Bsdtar,
    /// `7z x` (Joliet names).
    SevenZip,
}

/// Extracts the whole `image` into `dest` (made here) with `peer`.
fn peer_extract(peer: Peer, image: &Path, dest: &Path) {
    let mut cmd = match peer {
        Peer::Xorriso => {
            let mut c = Command::new(require_tool("xorriso"));
            c.args(["-hardlinks", "on", "-osirrox", "on", "-indev"])
                .arg(image)
                .args(["-extract", "/"])
                .arg(dest);
            c
        }
        Peer::Bsdtar => {
            fs::create_dir(dest).unwrap();
            let mut c = Command::new(require_tool("bsdtar"));
            c.arg("-xpf").arg(image).arg("-C").arg(dest);
            c
        }
        Peer::SevenZip => {
            let mut c = Command::new(require_tool("7z"));
            c.args(["x", "-y"])
                .arg(format!("-o{}", dest.display()))
                .arg(image);
            c
        }
    };
    run_ok(&mut cmd);
}

#[test]
fn xorriso_extracts_the_same_tree_with_modes_links_and_hard_links() {
    let (dir, tree, image) = tree_and_image();
    let out = dir.path().join("x");
    peer_extract(Peer::Xorriso, &image, &out);
    assert_same_tree(
        &manifest(&tree, true),
        &manifest(&out, true),
        "xorriso -osirrox extract",
    );
    let diff = run_any(
        Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&tree)
            .arg(&out),
    );
    assert_eq!(
        diff.0, 0,
        "diff -r found differences:\n{}{}",
        diff.1, diff.2
    );
}

#[test]
fn xorriso_lsl_shows_sizes_and_modes() {
    let (_dir, tree, image) = tree_and_image();
    let out = run_ok(
        Command::new(require_tool("xorriso"))
            .args(["-indev"])
            .arg(&image)
            .args(["-lsl", "/perms", "/data"]),
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    for (mode, name) in [
        ("-rwsr-xr-x", "setuid-bin"),
        ("-rwxr-xr-x", "script.sh"),
        ("-rw-r-----", "group.txt"),
        ("drwx------", "private"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.contains(&format!("'{name}'"))),
            "xorriso -lsl does not show {name} as {mode}:\n{listing}"
        );
    }
    let size = fs::metadata(tree.join("data/file-3145728.bin"))
        .unwrap()
        .len();
    assert!(
        listing.lines().any(|l| l.contains("'file-3145728.bin'")
            && l.split_whitespace().any(|w| w == size.to_string())),
        "xorriso -lsl does not show the size {size}:\n{listing}"
    );
}

#[test]
fn bsdtar_extracts_the_same_tree() {
    let (dir, tree, image) = tree_and_image();
    let out = dir.path().join("x");
    peer_extract(Peer::Bsdtar, &image, &out);
    let expected = manifest(&tree, true);
    let actual = manifest(&out, true);
    assert_same_tree(&expected, &actual, "bsdtar -x");
}

#[test]
fn seven_zip_extracts_every_joliet_name_and_content() {
    let (dir, tree, image) = tree_and_image();
    let out = dir.path().join("x");
    peer_extract(Peer::SevenZip, &image, &out);
    let expected = joliet_view(&manifest(&tree, true), JOLIET_LONG);
    let source = manifest(&tree, true);
    let mut actual = manifest(&out, false);
    // 7z shows names Joliet cannot hold (the 200-character one) cut to 103 characters.
    actual.nodes.retain(|path, _| {
        path.split('/').all(|c| c.chars().count() < JOLIET_LONG)
            || expected.nodes.contains_key(path)
    });
    // Symbolic links are left out of Joliet, as xorriso does: 7z must not find them there.
    assert!(
        !actual
            .nodes
            .keys()
            .any(|p| matches!(source.nodes.get(p), Some(Node::Symlink { .. }))),
        "a symbolic link appears in the Joliet tree"
    );
    actual.hard_links.clear();
    assert_same_tree(&expected, &actual, "7z x (Joliet)");
}

fn isoinfo_list(image: &Path, view: &str) -> Vec<String> {
    let out = run_ok(
        Command::new(require_tool("isoinfo"))
            .env("LC_ALL", "C.UTF-8")
            .arg(view)
            .arg("-f")
            .arg("-i")
            .arg(image),
    );
    let mut paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    paths.sort();
    paths
}

/// Asserts that `isoinfo -d` finds the volume id and both Rock Ridge and Joliet.
fn assert_isoinfo_volume(image: &Path, volume_id: &str) {
    let out = run_ok(
        Command::new(require_tool("isoinfo"))
            .arg("-d")
            .arg("-i")
            .arg(image),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        &format!("Volume id: {volume_id}")[..],
        "Rock Ridge signatures version 1 found",
        "Joliet with UCS level 3 found",
    ] {
        assert!(
            text.contains(needle),
            "isoinfo -d of {} lacks {needle:?}:\n{text}",
            image.display()
        );
    }
}

/// One file's content as `isoinfo -R -x PATH` extracts it.
fn isoinfo_cat(image: &Path, path: &str) -> Vec<u8> {
    run_ok(
        Command::new(require_tool("isoinfo"))
            .args(["-R", "-x", path, "-i"])
            .arg(image),
    )
    .stdout
}

#[test]
fn isoinfo_rock_ridge_listing_has_every_path() {
    let (_dir, tree, image) = tree_and_image();
    let expected: Vec<String> = manifest(&tree, true).nodes.keys().cloned().collect();
    assert_eq!(isoinfo_list(&image, "-R"), expected, "isoinfo -R -f");
}

#[test]
fn isoinfo_joliet_listing_has_every_representable_path() {
    let (_dir, tree, image) = tree_and_image();
    let expected: Vec<String> = joliet_view(&manifest(&tree, true), JOLIET_LONG)
        .nodes
        .keys()
        .cloned()
        .collect();
    let listed: Vec<String> = isoinfo_list(&image, "-J")
        .into_iter()
        .filter(|p| p.split('/').all(|c| c.chars().count() < JOLIET_LONG) || expected.contains(p))
        .collect();
    // isoinfo prints Joliet names through Latin-1 ('_' for the rest), whoever wrote them:
    // compare ASCII paths exactly and the others by count.
    let (listed_ascii, listed_other): (Vec<String>, Vec<String>) =
        listed.into_iter().partition(|p| p.is_ascii());
    let (expected_ascii, expected_other): (Vec<String>, Vec<String>) =
        expected.into_iter().partition(|p| p.is_ascii());
    assert_eq!(listed_ascii, expected_ascii, "isoinfo -J -f");
    assert_eq!(
        listed_other.len(),
        expected_other.len(),
        "isoinfo -J -f non-ASCII names: {listed_other:?}"
    );
}

#[test]
fn isoinfo_describes_the_volume_and_extracts_a_file() {
    let (_dir, _tree, image) = tree_and_image();
    assert_isoinfo_volume(&image, "VMEDIA_PEERS");
    assert_eq!(isoinfo_cat(&image, "/readme.txt"), b"hello from vmedia\n");
}

#[test]
fn builds_with_the_same_source_date_epoch_are_byte_identical() {
    let tree = iso::peer_tree();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    run_ok(Command::new("cp").arg("-a").arg(&tree).arg(&copy));
    // New times (and new inode numbers) on every entry of the copy.
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("find \"$1\" -exec touch -h -d '2031-02-03 04:05:06' {} +")
            .arg("sh")
            .arg(&copy),
    );
    let build = |src: &Path, name: &str, epoch: &str| {
        let out = dir.path().join(name);
        run_ok(
            vmedia()
                .env("SOURCE_DATE_EPOCH", epoch)
                .args([
                    "mkisofs",
                    "-quiet",
                    "-R",
                    "-J",
                    "-joliet-long",
                    "-iso-level",
                    "3",
                    "-o",
                ])
                .arg(&out)
                .arg(src),
        );
        fs::read(out).unwrap()
    };
    let first = build(&tree, "a.iso", "1700000000");
    let second = build(&copy, "b.iso", "1700000000");
    assert!(
        first == second,
        "two builds with SOURCE_DATE_EPOCH=1700000000 differ"
    );
    let other = build(&tree, "c.iso", "1700000001");
    assert!(
        first != other,
        "a different SOURCE_DATE_EPOCH gave the same bytes: dates are not recorded"
    );
}

#[test]
fn checkisomd5_passes_and_fails_after_one_flipped_byte() {
    let (dir, _tree, image) = tree_and_image();
    let checkisomd5 = require_tool("checkisomd5");
    let (code, out, err) = run_any(Command::new(&checkisomd5).arg("--verbose").arg(&image));
    assert_eq!(code, 0, "checkisomd5 rejects vmedia's image:\n{out}{err}");
    let (code, out, err) = run_any(vmedia().args(["iso", "verify", "-q"]).arg(&image));
    assert_eq!(code, 0, "vmedia iso verify rejects the image:\n{out}{err}");

    // Flip one byte of file data (the 3 MiB file lies in the middle of the image).
    let broken = dir.path().join("broken.iso");
    fs::copy(&image, &broken).unwrap();
    let mut data = fs::read(&broken).unwrap();
    let needle = iso::pattern(3 << 20, 6);
    let at = data
        .windows(64)
        .position(|w| w == &needle[..64])
        .expect("file data not found in the image");
    data[at + 1000] ^= 0x55;
    fs::write(&broken, &data).unwrap();
    let (code, out, err) = run_any(Command::new(&checkisomd5).arg(&broken));
    assert_ne!(code, 0, "checkisomd5 accepted a damaged image:\n{out}{err}");
    let (code, out, err) = run_any(vmedia().args(["iso", "verify", "-q"]).arg(&broken));
    assert_eq!(
        code, 1,
        "vmedia iso verify did not report the damage:\n{out}{err}"
    );
}

#[test]
fn no_checksums_leaves_nothing_for_checkisomd5() {
    let tree = iso::peer_tree();
    let dir = tempfile::tempdir().unwrap();
    let image = mkisofs(dir.path(), &tree, &["--no-checksums"]);
    let (code, out, err) = run_any(Command::new(require_tool("checkisomd5")).arg(&image));
    assert_ne!(
        code, 0,
        "checkisomd5 found a checksum that --no-checksums should have left out:\n{out}{err}"
    );
}

/// A sparse file of 4 GiB + 8 MiB with data at the start, across the 4 GiB mark and at the end.
fn big_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("big");
    fs::create_dir(&tree).unwrap();
    let file = tree.join("big.bin");
    run_ok(
        Command::new("truncate")
            .arg("-s")
            .arg(((4u64 << 30) + (8 << 20)).to_string())
            .arg(&file),
    );
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
    for (offset, seed) in [
        (0u64, 11u64),
        ((4u64 << 30) - 4096, 12),
        ((4u64 << 30) + (8 << 20) - 65536, 13),
    ] {
        f.write_all_at(&iso::pattern(65536, seed), offset).unwrap();
    }
    fs::write(tree.join("small.txt"), b"next to a big one\n").unwrap();
    tree
}

#[test]
fn file_over_4_gib_reads_back_in_xorriso_7z_and_bsdtar() {
    let dir = tempfile::tempdir().unwrap();
    let tree = big_tree(dir.path());
    let image = dir.path().join("big.iso");
    run_ok(
        vmedia()
            .args(["iso", "create", "--quiet", "--no-integrity"])
            .arg(&tree)
            .arg("-o")
            .arg(&image),
    );
    let expected = manifest(&tree, true);
    let listing = run_ok(
        Command::new(require_tool("xorriso"))
            .arg("-indev")
            .arg(&image)
            .args(["-lsl", "/big.bin"]),
    );
    let size = ((4u64 << 30) + (8 << 20)).to_string();
    assert!(
        String::from_utf8_lossy(&listing.stdout)
            .split_whitespace()
            .any(|w| w == size),
        "xorriso -lsl does not show {size} bytes:\n{}",
        String::from_utf8_lossy(&listing.stdout)
    );
    let x = dir.path().join("x-xorriso");
    peer_extract(Peer::Xorriso, &image, &x);
    assert_same_tree(
        &expected,
        &manifest(&x, true),
        "xorriso extract of a 4 GiB+ file",
    );
    fs::remove_dir_all(&x).unwrap();

    let x = dir.path().join("x-bsdtar");
    peer_extract(Peer::Bsdtar, &image, &x);
    assert_same_tree(
        &expected,
        &manifest(&x, true),
        "bsdtar extract of a 4 GiB+ file",
    );
    fs::remove_dir_all(&x).unwrap();

    let x = dir.path().join("x-7z");
    peer_extract(Peer::SevenZip, &image, &x);
    let mut got = manifest(&x, false);
    got.hard_links.clear();
    assert_same_tree(
        &joliet_view(&expected, JOLIET_LONG),
        &got,
        "7z extract of a 4 GiB+ file",
    );
}

#[test]
fn seed_image_matches_what_cloud_localds_makes() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("user.yaml");
    let meta = dir.path().join("meta.yaml");
    let net = dir.path().join("net.yaml");
    fs::write(&user, "#cloud-config\npassword: passw0rd\n").unwrap();
    fs::write(&meta, "instance-id: i-123\nlocal-hostname: vm1\n").unwrap();
    fs::write(&net, "version: 2\nethernets: {}\n").unwrap();
    let seed = dir.path().join("seed.iso");
    run_ok(
        vmedia()
            .args(["iso", "seed", "--quiet", "--user-data"])
            .arg(&user)
            .arg("--meta-data")
            .arg(&meta)
            .arg("--network-config")
            .arg(&net)
            .arg("-o")
            .arg(&seed),
    );
    assert_isoinfo_volume(&seed, "cidata");
    for view in ["-R", "-J"] {
        assert_eq!(
            isoinfo_list(&seed, view),
            ["meta-data", "network-config", "user-data"],
            "isoinfo {view} -f"
        );
    }
    let x = dir.path().join("x");
    peer_extract(Peer::Bsdtar, &seed, &x);
    assert_eq!(
        fs::read(x.join("user-data")).unwrap(),
        fs::read(&user).unwrap()
    );
    assert_eq!(
        fs::read(x.join("meta-data")).unwrap(),
        fs::read(&meta).unwrap()
    );
    assert_eq!(
        fs::read(x.join("network-config")).unwrap(),
        fs::read(&net).unwrap()
    );
    // A second run refuses to replace the seed without --force.
    let (code, _, err) = run_any(
        vmedia()
            .args(["iso", "seed", "--user-data"])
            .arg(&user)
            .arg("-o")
            .arg(&seed),
    );
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn seed_without_meta_data_gets_an_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("user.yaml");
    fs::write(&user, "#cloud-config\n").unwrap();
    let seed = dir.path().join("seed.iso");
    run_ok(
        vmedia()
            .args(["iso", "seed", "-q", "--hostname", "vm7", "--user-data"])
            .arg(&user)
            .arg("-o")
            .arg(&seed),
    );
    assert_eq!(
        String::from_utf8_lossy(&isoinfo_cat(&seed, "/meta-data")),
        "instance-id: iid-local01\nlocal-hostname: vm7\n"
    );
}

#[test]
fn iso_create_refuses_to_overwrite_without_force_and_reports_json() {
    let tree = iso::peer_tree();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.iso");
    fs::write(&out, b"precious").unwrap();
    let (code, _, err) = run_any(
        vmedia()
            .args(["iso", "create"])
            .arg(&tree)
            .arg("-o")
            .arg(&out),
    );
    assert_ne!(code, 0);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    let json = run_ok(
        vmedia()
            .args([
                "iso",
                "create",
                "--force",
                "--json",
                "--volume-id",
                "NATIVE",
            ])
            .arg(&tree)
            .arg("-o")
            .arg(&out),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("--json prints JSON");
    assert!(report["sectors"].as_u64().unwrap() > 16, "{report}");
    assert!(
        report["integrity"]["md5"].is_string(),
        "integrity is on by default: {report}"
    );
    let (code, out_text, err) = run_any(Command::new(require_tool("checkisomd5")).arg(&out));
    assert_eq!(code, 0, "{out_text}{err}");
    let x = dir.path().join("x");
    run_ok(
        Command::new("xorriso")
            .args(["-hardlinks", "on", "-osirrox", "on", "-indev"])
            .arg(&out)
            .args(["-extract", "/"])
            .arg(&x),
    );
    assert_same_tree(
        &manifest(&tree, true),
        &manifest(&x, true),
        "xorriso extract of iso create",
    );
}

#[test]
fn graft_points_place_files_and_merge_folders() {
    let tree = iso::peer_tree();
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra=name.cfg");
    fs::write(&extra, b"cfg\n").unwrap();
    let out = dir.path().join("g.iso");
    run_ok(
        vmedia()
            .args(["mkisofs", "-quiet", "-R", "-graft-points", "-o"])
            .arg(&out)
            .arg(format!("/sub/dir={}", tree.join("links").display()))
            .arg(format!(
                "/etc/renamed.cfg={}",
                extra.display().to_string().replace('=', "\\=")
            ))
            .arg(format!(
                "/keep/={}",
                extra.display().to_string().replace('=', "\\=")
            ))
            .arg(tree.join("hard")),
    );
    let listed = isoinfo_list(&out, "-R");
    for path in [
        "a.txt",
        "b.txt",
        "etc/renamed.cfg",
        "keep/extra=name.cfg",
        "sub/dir/target.txt",
        "sub/dir/rel-link",
    ] {
        assert!(
            listed.contains(&path.to_string()),
            "{path} missing from {listed:?}"
        );
    }
    assert!(matches!(
        manifest(&tree, true).nodes.get("links/rel-link"),
        Some(Node::Symlink { .. })
    ));
}

#[test]
fn repack_adds_and_removes_and_keeps_everything_else() {
    let (dir, tree, image) = tree_and_image();
    let extra = dir.path().join("extra.txt");
    fs::write(&extra, b"added\n").unwrap();
    let replacement = dir.path().join("readme.txt");
    fs::write(&replacement, b"replaced readme\n").unwrap();
    let out = dir.path().join("repacked.iso");
    run_ok(
        vmedia()
            .args(["iso", "repack", "--quiet"])
            .arg(&image)
            .arg(format!("--add=/new/extra.txt={}", extra.display()))
            .arg(format!("--add=/readme.txt={}", replacement.display()))
            .args(["--remove", "/deep", "--remove", "/data/file-1.bin", "-o"])
            .arg(&out),
    );
    let x = dir.path().join("x");
    peer_extract(Peer::Xorriso, &out, &x);
    let mut expected = manifest(&tree, true);
    expected.nodes.retain(|path, _| {
        !(path == "deep" || path.starts_with("deep/") || path == "data/file-1.bin")
    });
    expected
        .nodes
        .insert("new".into(), Node::Dir { mode: 0o755 });
    expected.nodes.insert(
        "new/extra.txt".into(),
        Node::File {
            mode: 0o644,
            size: 6,
            hash: iso::hash_file(&extra),
        },
    );
    expected.nodes.insert(
        "readme.txt".into(),
        Node::File {
            mode: 0o644,
            size: 16,
            hash: iso::hash_file(&replacement),
        },
    );
    let mut actual = manifest(&x, true);
    // KNOWN WRITER GAP (reported): RangeFile cannot say that two names share one inode, so
    // repack writes hard links as separate files with the same content.
    expected.hard_links.clear();
    actual.hard_links.clear();
    assert_same_tree(&expected, &actual, "xorriso extract of the repacked image");
    let (code, text, err) = run_any(Command::new(require_tool("checkisomd5")).arg(&out));
    assert_eq!(code, 0, "{text}{err}");
    // The input is never modified and a removal of something absent is an error.
    assert_eq!(
        fs::read(&image).unwrap(),
        fs::read(dir.path().join("out.iso")).unwrap()
    );
    let (code, _, err) = run_any(
        vmedia()
            .args(["iso", "repack"])
            .arg(&image)
            .args(["--remove", "/nope", "-o"])
            .arg(dir.path().join("y.iso")),
    );
    assert_ne!(code, 0);
    assert!(err.contains("/nope"), "{err}");
}

#[test]
fn exclusions_hiding_and_path_lists_shape_the_trees() {
    let tree = iso::peer_tree();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("paths");
    fs::write(
        &list,
        format!(
            "{}\n/more/={}\n",
            tree.join("perms").display(),
            tree.join("links/target.txt").display()
        ),
    )
    .unwrap();
    let out = dir.path().join("x.iso");
    run_ok(
        vmedia()
            .args([
                "mkisofs",
                "-quiet",
                "-R",
                "-J",
                "-graft-points",
                "-m",
                "*.sh",
                "-x",
            ])
            .arg(tree.join("perms/private"))
            .args([
                "-hide",
                "plain.txt",
                "-hide-joliet",
                "group.txt",
                "-path-list",
            ])
            .arg(&list)
            .arg("-o")
            .arg(&out),
    );
    let rr = isoinfo_list(&out, "-R");
    let joliet = isoinfo_list(&out, "-J");
    assert_eq!(
        rr,
        ["group.txt", "more", "more/target.txt", "setuid-bin"],
        "Rock Ridge tree"
    );
    assert_eq!(
        joliet,
        ["more", "more/target.txt", "plain.txt", "setuid-bin"],
        "Joliet tree"
    );
}

#[test]
fn signed_image_verifies_with_the_public_key() {
    let openssl = require_tool("openssl");
    let tree = iso::peer_tree();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let public = dir.path().join("key.pub");
    run_ok(
        Command::new(&openssl)
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&key),
    );
    run_ok(
        Command::new(&openssl)
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public),
    );
    let image = mkisofs(dir.path(), &tree, &["--sign-key", key.to_str().unwrap()]);
    let (code, out, err) = run_any(
        vmedia()
            .args(["iso", "verify", "-q", "--key"])
            .arg(&public)
            .arg(&image),
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_any(Command::new(require_tool("checkisomd5")).arg(&image));
    assert_eq!(code, 0, "{out}{err}");
    let unsigned = dir.path().join("unsigned.iso");
    run_ok(
        vmedia()
            .args(["iso", "create", "-q"])
            .arg(&tree)
            .arg("-o")
            .arg(&unsigned),
    );
    let (code, _, _) = run_any(
        vmedia()
            .args(["iso", "verify", "-q", "--key"])
            .arg(&public)
            .arg(&unsigned),
    );
    assert_ne!(code, 0, "an unsigned image passed the signature check");
}

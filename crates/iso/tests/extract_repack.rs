//! The extraction and repack engines as library operations: an image written by
//! `write_image` is extracted with and without the image file (kernel copy and the read/write
//! path over any `ReadAt`), and repacked with an addition and a removal.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmedia_io::{Durability, NoProgress, OverwritePolicy, Progress};
use vmedia_iso::extract::{extract, ExtractError, ExtractOptions};
use vmedia_iso::read::{IsoImage, OpenOptions};
use vmedia_iso::repack::{repack, Addition, RepackError, RepackOptions};
use vmedia_iso::spec::{GraftPoint, IntegritySpec, IsoSpec, RockRidgeMode};
use vmedia_iso::write::write_image;

/// Counts the bytes reported, to check the engine reports its work.
#[derive(Default)]
struct Counter {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress for Counter {
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    fn advance(&self, done: u64) {
        self.done.fetch_add(done, Ordering::Relaxed);
    }
}

fn tree(root: &Path) {
    fs::create_dir_all(root.join("boot/grub")).unwrap();
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::write(root.join("boot/grub/grub.cfg"), "set timeout=5\n").unwrap();
    fs::write(root.join("docs/readme.txt"), "hello\n").unwrap();
    fs::write(root.join("docs/old.txt"), "to be removed\n").unwrap();
    // Larger than one batch file (256 KiB), so it takes the unbatched copy path.
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(root.join("big.bin"), big).unwrap();
    fs::set_permissions(
        root.join("docs/readme.txt"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    symlink("docs/readme.txt", root.join("link")).unwrap();
}

fn build(dir: &Path) -> (PathBuf, PathBuf) {
    let source = dir.join("tree");
    tree(&source);
    let mut spec = IsoSpec::default();
    spec.sources.push(GraftPoint {
        iso_path: "/".into(),
        host_path: source.clone(),
    });
    spec.naming.rock_ridge = Some(RockRidgeMode::Faithful);
    spec.naming.joliet = true;
    spec.date = Some(1_700_000_000);
    let image = dir.join("in.iso");
    write_image(&spec, &image, OverwritePolicy::Refuse, &NoProgress).unwrap();
    (source, image)
}

fn open(path: &Path) -> (Arc<fs::File>, IsoImage) {
    let file = Arc::new(fs::File::open(path).unwrap());
    let image = IsoImage::open(file.clone(), OpenOptions::default()).unwrap();
    (file, image)
}

fn same_tree(a: &Path, b: &Path) {
    for name in [
        "boot/grub/grub.cfg",
        "docs/readme.txt",
        "docs/old.txt",
        "big.bin",
    ] {
        assert_eq!(
            fs::read(a.join(name)).unwrap(),
            fs::read(b.join(name)).unwrap(),
            "{name}"
        );
    }
    let mode = fs::metadata(b.join("docs/readme.txt")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    assert_eq!(
        fs::read_link(b.join("link")).unwrap(),
        PathBuf::from("docs/readme.txt")
    );
}

#[test]
fn extract_with_the_image_file_and_through_read_at_give_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, image_path) = build(tmp.path());
    let (file, image) = open(&image_path);
    let options = ExtractOptions {
        durability: Durability::PageCache,
        ..ExtractOptions::default()
    };
    for (dest, kernel_copy) in [("kernel", true), ("read-at", false)] {
        let dest = tmp.path().join(dest);
        let progress = Counter::default();
        let image_file = kernel_copy.then_some(&*file);
        let report = extract(&image, image_file, &dest, &options, &progress).unwrap();
        same_tree(&source, &dest);
        assert_eq!(report.files, 4);
        assert_eq!(report.bytes, progress.total.load(Ordering::Relaxed));
        assert_eq!(report.bytes, progress.done.load(Ordering::Relaxed));
        // The staging name is gone: only the destination is left beside the image.
        let hidden: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("vmedia-tmp"))
            .collect();
        assert!(hidden.is_empty());
    }
}

#[test]
fn extract_refuses_an_existing_file_unless_replacing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, image_path) = build(tmp.path());
    let (file, image) = open(&image_path);
    let dest = tmp.path().join("out");
    fs::create_dir_all(dest.join("docs")).unwrap();
    fs::write(dest.join("docs/readme.txt"), "mine").unwrap();
    let mut options = ExtractOptions {
        paths: vec!["/docs/readme.txt".into()],
        ..ExtractOptions::default()
    };
    let err = extract(&image, Some(&file), &dest, &options, &NoProgress).unwrap_err();
    assert!(matches!(err, ExtractError::Exists { .. }), "{err}");
    assert!(err.replace_would_help());
    assert_eq!(fs::read(dest.join("docs/readme.txt")).unwrap(), b"mine");
    options.replace_existing = true;
    extract(&image, Some(&file), &dest, &options, &NoProgress).unwrap();
    assert_eq!(fs::read(dest.join("docs/readme.txt")).unwrap(), b"hello\n");
}

#[test]
fn extract_refuses_a_path_that_climbs_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, image_path) = build(tmp.path());
    let (file, image) = open(&image_path);
    let options = ExtractOptions {
        paths: vec!["/docs/../docs".into()],
        ..ExtractOptions::default()
    };
    let err = extract(
        &image,
        Some(&file),
        &tmp.path().join("x"),
        &options,
        &NoProgress,
    );
    assert!(err.is_err());
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn repack_adds_removes_and_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, image_path) = build(tmp.path());
    let (_, image) = open(&image_path);
    let extra = tmp.path().join("extra.txt");
    fs::write(&extra, "added\n").unwrap();
    let options = RepackOptions {
        input: image_path.clone(),
        additions: vec![Addition {
            iso_path: "/docs/".into(),
            host_path: extra,
        }],
        removals: vec!["/docs/old.txt".into()],
        volume_id: Some("REPACKED".into()),
        date: Some(1_700_000_000),
        integrity: IntegritySpec::default(),
        durability: Durability::PageCache,
    };
    let out = tmp.path().join("out.iso");
    let report = repack(&image, &options, &out, OverwritePolicy::Refuse, &NoProgress).unwrap();
    assert_eq!(report.path, out);
    let (file, repacked) = open(&out);
    assert_eq!(repacked.volume().primary.volume_id, "REPACKED");
    assert!(repacked.lookup("/docs/old.txt").is_err());
    let dest = tmp.path().join("repacked");
    extract(
        &repacked,
        Some(&file),
        &dest,
        &ExtractOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fs::read(dest.join("docs/extra.txt")).unwrap(), b"added\n");
    assert_eq!(
        fs::read(dest.join("big.bin")).unwrap(),
        fs::read(source.join("big.bin")).unwrap()
    );
    // The skeleton folder is gone.
    assert!(!fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("vmedia-repack")));
    // Writing over the input is refused.
    let same = repack(
        &image,
        &options,
        &image_path,
        OverwritePolicy::Replace,
        &NoProgress,
    );
    assert!(matches!(same, Err(RepackError::OutputIsInput { .. })));
}

//! Hostile and damaged images: every broken field gives a typed error naming the file, the
//! offset and the field; nothing panics, loops or allocates from an unchecked size. Also replays
//! the fuzz corpus (fuzz/corpus/disk_open) and random mutations of valid images.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmedia_disk::factory;
use vmedia_disk::image::{CreateOptions, Format, OpenOptions};
use vmedia_disk::DiskError;

const MIB: u64 = 1 << 20;

/// A valid v3 qcow2 (64 KiB clusters) with data in the first and last MiB, some compressed.
fn valid_qcow2(dir: &Path, name: &str, compress: bool) -> PathBuf {
    let path = dir.join(name);
    let mut opts = CreateOptions::new(Format::Qcow2, 16 * MIB);
    opts.compress = compress;
    let mut w = factory::create(&path, &opts).unwrap();
    let text: Vec<u8> = b"hostile image test line\n"
        .iter()
        .copied()
        .cycle()
        .take(65536)
        .collect();
    if let Some(c) = w.compressor() {
        let packed = c.compress_cluster(&text).unwrap().unwrap();
        w.write_compressed(0, &packed).unwrap();
        w.write_compressed(65536, &packed).unwrap();
    } else {
        w.write_at(0, &text).unwrap();
        w.write_at(65536, &text).unwrap();
    }
    w.write_at(15 * MIB, &vec![0xabu8; 65536]).unwrap();
    w.finish().unwrap();
    path
}

fn be64_at(path: &Path, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    u64::from_be_bytes(b)
}

fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

fn open(path: &Path) -> vmedia_disk::Result<Box<dyn vmedia_disk::DiskImage>> {
    factory::open(path, &OpenOptions::default())
}

/// Reads the whole guest; returns the first error.
fn read_all(path: &Path) -> vmedia_disk::Result<()> {
    let img = open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < img.virtual_size() {
        let n = (img.virtual_size() - off).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

fn assert_names(err: &DiskError, path: &Path, field: &str) {
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()),
        "error does not name the file: {text}"
    );
    assert!(text.contains(field), "error does not name {field}: {text}");
}

#[test]
fn absurd_virtual_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "a.qcow2", false);
    poke(&p, 24, &(1u64 << 62).to_be_bytes());
    let err = open(&p).err().unwrap();
    assert!(matches!(err, DiskError::Limit { .. }), "{err}");
    assert_names(&err, &p, "size");
}

#[test]
fn l1_table_past_the_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "a.qcow2", false);
    poke(&p, 40, &(1u64 << 40).to_be_bytes());
    let err = open(&p).err().unwrap();
    assert_names(&err, &p, "l1_table_offset");
    assert!(
        err.to_string().contains("0x28"),
        "offset of the field in hex: {err}"
    );
}

#[test]
fn huge_l1_size_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "a.qcow2", false);
    poke(&p, 36, &u32::MAX.to_be_bytes());
    let err = open(&p).err().unwrap();
    assert!(matches!(err, DiskError::Limit { .. }), "{err}");
    assert_names(&err, &p, "l1_size");
}

#[test]
fn refcount_table_overflow_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "a.qcow2", false);
    poke(&p, 56, &u32::MAX.to_be_bytes());
    let err = open(&p).err().unwrap();
    assert!(matches!(err, DiskError::Limit { .. }), "{err}");
    assert_names(&err, &p, "refcount_table_clusters");
    // A refcount table whose entries point past the end: check fails cleanly.
    let q = valid_qcow2(dir.path(), "b.qcow2", false);
    let reftable = be64_at(&q, 48);
    poke(&q, reftable, &(1u64 << 50).to_be_bytes());
    let img = open(&q).unwrap();
    let err = img.check(&vmedia_io::NoProgress).err().unwrap();
    assert_names(&err, &q, "refcount");
}

#[test]
fn bad_cluster_bits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [0u32, 8, 22, 63, u32::MAX] {
        let p = valid_qcow2(dir.path(), &format!("bits{bits}.qcow2"), false);
        poke(&p, 20, &bits.to_be_bytes());
        let err = open(&p).err().unwrap();
        assert_names(&err, &p, "cluster_bits");
    }
}

#[test]
fn unaligned_l2_offset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "a.qcow2", false);
    let l1 = be64_at(&p, 40);
    let entry = be64_at(&p, l1);
    poke(&p, l1, &(entry + 512).to_be_bytes());
    let err = open(&p).err().unwrap();
    assert_names(&err, &p, "L1 entry");
}

#[test]
fn compressed_cluster_past_the_end_is_an_error_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "c.qcow2", true);
    let l1 = be64_at(&p, 40);
    let l2 = be64_at(&p, l1) & 0x00ff_ffff_ffff_fe00;
    let entry = be64_at(&p, l2);
    assert!(entry & (1 << 62) != 0, "first cluster should be compressed");
    // Keep the flag and the size, move the offset far past the end of the file.
    let offset_mask = (1u64 << 54) - 1;
    poke(
        &p,
        l2,
        &((entry & !offset_mask) | (1u64 << 45)).to_be_bytes(),
    );
    let err = read_all(&p).err().unwrap();
    assert_names(&err, &p, "compressed cluster");
    // Garbage compressed bytes: a decompression error, not a panic.
    let q = valid_qcow2(dir.path(), "d.qcow2", true);
    let l2 = be64_at(&q, be64_at(&q, 40)) & 0x00ff_ffff_ffff_fe00;
    let host = be64_at(&q, l2) & offset_mask;
    poke(&q, host, &[0xffu8; 64]);
    let err = read_all(&q).err().unwrap();
    assert_names(&err, &q, "compressed cluster");
}

#[test]
fn backing_loops_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, backing: &str| {
        let mut opts = CreateOptions::new(Format::Qcow2, MIB);
        opts.backing = Some((backing.to_string(), Some(Format::Qcow2)));
        factory::create(&dir.path().join(name), &opts)
            .unwrap()
            .finish()
            .unwrap();
    };
    make("self.qcow2", "self.qcow2");
    make("a.qcow2", "b.qcow2");
    make("b.qcow2", "c.qcow2");
    make("c.qcow2", "a.qcow2");
    for name in ["self.qcow2", "a.qcow2"] {
        let err = open(&dir.path().join(name)).err().unwrap();
        assert!(matches!(err, DiskError::BackingLoop { .. }), "{err}");
        assert!(err.to_string().contains("loop"), "{err}");
    }
}

#[test]
fn backing_file_outside_the_folder_is_not_opened_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let mut opts = CreateOptions::new(Format::Qcow2, MIB);
    opts.backing = Some(("/etc/passwd".into(), Some(Format::Raw)));
    let p = sub.join("top.qcow2");
    factory::create(&p, &opts).unwrap().finish().unwrap();
    let err = open(&p).err().unwrap();
    assert!(matches!(err, DiskError::Reference { .. }), "{err}");
    // Reported without being followed.
    let info_opts = OpenOptions {
        skip_backing: true,
        ..OpenOptions::default()
    };
    let info = factory::open(&p, &info_opts).unwrap().info().unwrap();
    assert_eq!(info.backing_filename.as_deref(), Some("/etc/passwd"));
}

/// An overlay of 16 MiB at `dir/name` whose backing file is recorded as `backing`.
fn overlay(dir: &Path, name: &str, backing: &str) -> PathBuf {
    let mut opts = CreateOptions::new(Format::Qcow2, 16 * MIB);
    opts.backing = Some((backing.to_string(), Some(Format::Qcow2)));
    let p = dir.join(name);
    factory::create(&p, &opts).unwrap().finish().unwrap();
    p
}

#[test]
fn backing_file_swapped_for_a_symlink_outside_the_folder_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let secret = valid_qcow2(outside.path(), "base.qcow2", false);
    let dir = tempfile::tempdir().unwrap();
    let top = overlay(dir.path(), "top.qcow2", "base.qcow2");
    let base = valid_qcow2(dir.path(), "base.qcow2", false);
    read_all(&top).unwrap();
    // The symlink race: the name passes any check made by path, then becomes a link that
    // leads outside the folder before it is opened. The open itself refuses it.
    fs::remove_file(&base).unwrap();
    std::os::unix::fs::symlink(&secret, &base).unwrap();
    let err = open(&top).err().unwrap();
    assert!(matches!(err, DiskError::Reference { .. }), "{err}");
    assert!(
        err.to_string().contains("outside the image's own folder"),
        "{err}"
    );
}

/// A caller's resolver: images held in memory, named by the names images record.
#[derive(Debug)]
struct MemoryResolver {
    files: Vec<(String, std::sync::Arc<Vec<u8>>)>,
}

impl vmedia_disk::ReferenceResolver for MemoryResolver {
    fn open(
        &self,
        referrer: &Path,
        name: &str,
    ) -> vmedia_disk::Result<vmedia_disk::OpenedReference> {
        let (_, bytes) =
            self.files
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| DiskError::Reference {
                    path: referrer.to_path_buf(),
                    reference: PathBuf::from(name),
                    reason: "not in the library",
                })?;
        Ok(vmedia_disk::OpenedReference {
            path: PathBuf::from(format!("memory:{name}")),
            source: bytes.clone(),
        })
    }
}

#[test]
fn an_image_and_its_backing_file_open_from_memory_through_a_caller_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let base = valid_qcow2(dir.path(), "base.qcow2", true);
    let top = overlay(dir.path(), "top.qcow2", "base.qcow2");
    let resolver = MemoryResolver {
        files: vec![(
            "base.qcow2".into(),
            std::sync::Arc::new(fs::read(&base).unwrap()),
        )],
    };
    let opts = OpenOptions {
        resolver: Some(std::sync::Arc::new(resolver)),
        ..OpenOptions::default()
    };
    let source = std::sync::Arc::new(fs::read(&top).unwrap());
    let img = factory::open_source(Path::new("memory:top.qcow2"), source, &opts).unwrap();
    let backing = img.backing().unwrap();
    assert_eq!(backing.path(), Path::new("memory:base.qcow2"));
    let mut got = vec![0u8; 65536];
    img.read_at(&mut got, 0).unwrap();
    assert!(got.starts_with(b"hostile image test line\n"));
    // Without the resolver the same bytes cannot reach the file beside them by name.
    let source = std::sync::Arc::new(fs::read(&top).unwrap());
    let err = factory::open_source(
        Path::new("memory:top.qcow2"),
        source,
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, DiskError::Open { .. }), "{err}");
}

#[test]
fn unknown_incompatible_feature_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "a.qcow2", false);
    poke(&p, 72, &(1u64 << 40).to_be_bytes());
    let err = open(&p).err().unwrap();
    assert!(matches!(err, DiskError::Unsupported { .. }), "{err}");
}

#[test]
fn snapshot_table_past_the_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "a.qcow2", false);
    poke(&p, 60, &1000u32.to_be_bytes());
    poke(&p, 64, &(1u64 << 41).to_be_bytes());
    let err = open(&p).err().unwrap();
    assert_names(&err, &p, "snapshots_offset");
    let q = valid_qcow2(dir.path(), "b.qcow2", false);
    poke(&q, 60, &u32::MAX.to_be_bytes());
    poke(&q, 64, &65536u64.to_be_bytes());
    let err = open(&q).err().unwrap();
    assert!(matches!(err, DiskError::Limit { .. }), "{err}");
}

#[test]
fn truncated_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "a.qcow2", true);
    let bytes = fs::read(&p).unwrap();
    for len in (0..512).chain((512..bytes.len()).step_by(4093)) {
        let _ = vmedia_disk::exercise::exercise(&bytes[..len]);
    }
}

#[test]
fn random_mutations_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = valid_qcow2(dir.path(), "a.qcow2", true);
    let original = fs::read(&p).unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Mutate the metadata-dense head (header, tables) and random spots.
    for _ in 0..300 {
        let mut bytes = original.clone();
        for _ in 0..(1 + next() % 8) {
            let at = if next() % 2 == 0 {
                (next() % 1024) as usize
            } else {
                (next() % bytes.len() as u64) as usize
            };
            bytes[at] = next() as u8;
        }
        let _ = vmedia_disk::exercise::exercise(&bytes);
    }
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/disk_open");
    let mut count = 0;
    for entry in fs::read_dir(&corpus).unwrap_or_else(|e| panic!("{}: {e}", corpus.display())) {
        let path = entry.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        let outcomes = vmedia_disk::exercise::exercise(&bytes);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        // Valid qcow2 members must open and read cleanly as qcow2 (references are not followed,
        // so the overlay only opens).
        if name.ends_with(".qcow2") && !name.contains("overlay") {
            let q = outcomes.iter().find(|o| o.format == Format::Qcow2).unwrap();
            assert!(q.opened && q.error.is_none(), "{name}: {q:?}");
        }
        // Everything opens as raw.
        assert!(
            outcomes.iter().any(|o| o.format == Format::Raw && o.opened),
            "{name}"
        );
        count += 1;
    }
    assert!(count >= 10, "corpus has only {count} files");
}

#[test]
fn shared_negative_samples_fail_cleanly() {
    // qemu's fuzzed images (VHD and VMDK): whatever the probe says, opening fails with a typed
    // error or succeeds, and reading never panics.
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/images/qemu-iotests");
    for name in ["afl5.img.bz2", "afl9.vmdk.bz2", "afl9-2015orig.vmdk.bz2"] {
        let packed = root.join(name);
        assert!(
            packed.exists(),
            "shared sample {} missing",
            packed.display()
        );
        let out = std::process::Command::new("bzip2")
            .arg("-dc")
            .arg(&packed)
            .output()
            .expect("bzip2 is needed");
        assert!(out.status.success());
        let outcomes = vmedia_disk::exercise::exercise(&out.stdout);
        let q = outcomes.iter().find(|o| o.format == Format::Qcow2).unwrap();
        assert!(!q.opened, "{name} opened as qcow2");
        assert_ne!(
            factory::probe(
                &out.stdout,
                &out.stdout[out.stdout.len().saturating_sub(512)..]
            ),
            Format::Qcow2
        );
    }
}

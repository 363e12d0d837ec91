//! Hostile images for the ISO reader: a small valid image made by genisoimage, corrupted field
//! by field, must give a clear typed error naming the offset and field, never a panic or a
//! hang. Also replays the fuzz corpus through the fuzz target's code path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use vmedia_io::ReadAt;
use vmedia_iso::read::{exercise, IsoImage, NameSpace, OpenOptions, ReadError};

fn require_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("required tool {name} is not installed; run `bash scripts/setup.sh` (make test does)");
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small Rock Ridge + Joliet image with a directory, files, a symlink and a symlink loop,
/// and an El Torito no-emulation entry.
fn base_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("a.txt"), "alpha\n").unwrap();
        std::fs::write(tree.join("d/f.txt"), "inside\n").unwrap();
        std::fs::write(tree.join("boot.bin"), vec![0x90u8; 2048]).unwrap();
        std::os::unix::fs::symlink("a.txt", tree.join("link")).unwrap();
        std::os::unix::fs::symlink("loop", tree.join("loop")).unwrap();
        let out = tmp.path().join("base.iso");
        run(Command::new(require_tool("genisoimage"))
            .args([
                "-quiet",
                "-R",
                "-J",
                "-b",
                "boot.bin",
                "-c",
                "boot.cat",
                "-no-emul-boot",
                "-o",
            ])
            .arg(&out)
            .arg(&tree));
        std::fs::read(&out).unwrap()
    })
}

fn open(data: Vec<u8>) -> Result<IsoImage, ReadError> {
    IsoImage::open(Arc::new(data), OpenOptions::default())
}

/// Opens, walks everything and reads every file; returns the first error.
fn read_all(data: Vec<u8>) -> Result<(), ReadError> {
    open(data)?.scan(u64::MAX).map(|_| ())
}

fn record_offset(path: &str) -> usize {
    let image = open(base_image().to_vec()).unwrap();
    image.lookup(path).unwrap().record_offset as usize
}

fn put_both_endian32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_le_bytes());
    data[at + 4..at + 8].copy_from_slice(&value.to_be_bytes());
}

fn assert_error(result: Result<(), ReadError>, needles: &[&str]) {
    let err = result.expect_err("the corrupt image must be refused");
    let text = err.to_string();
    for needle in needles {
        assert!(
            text.contains(needle),
            "error {text:?} should mention {needle:?}"
        );
    }
}

#[test]
fn base_image_is_valid() {
    let image = open(base_image().to_vec()).unwrap();
    assert_eq!(image.namespace(), NameSpace::RockRidge);
    let summary = image.scan(u64::MAX).unwrap();
    assert_eq!(summary.files, 4, "a.txt, d/f.txt, boot.bin and boot.cat");
    assert_eq!(summary.boot_entries, 1);
}

#[test]
fn missing_cd001_is_not_iso() {
    let mut data = base_image().to_vec();
    data[0x8001] = b'X';
    assert!(matches!(open(data), Err(ReadError::NotIso { .. })));
}

#[test]
fn directory_extent_past_end_is_corrupt() {
    let mut data = base_image().to_vec();
    let at = record_offset("/d");
    put_both_endian32(&mut data, at + 2, 0x00FF_FFFF);
    assert_error(
        read_all(data),
        &["directory extent", "past the end", "offset 0x"],
    );
}

#[test]
fn absurd_directory_size_hits_the_limit() {
    let mut data = base_image().to_vec();
    let at = record_offset("/d");
    put_both_endian32(&mut data, at + 10, 0xFFFF_F000);
    assert_error(read_all(data), &["MAX_DIRECTORY_BYTES"]);
}

#[test]
fn directory_loop_is_detected() {
    let mut data = base_image().to_vec();
    let image = open(data.clone()).unwrap();
    let root_lba = image.root().extents[0].lba;
    let root_len = image.root().extents[0].length as u32;
    let at = record_offset("/d");
    put_both_endian32(&mut data, at + 2, root_lba);
    put_both_endian32(&mut data, at + 10, root_len);
    let err = read_all(data).unwrap_err();
    assert!(matches!(err, ReadError::DirectoryLoop { .. }), "{err}");
    assert!(err.to_string().contains("/d"), "{err}");
}

#[test]
fn record_length_below_minimum_is_corrupt() {
    let mut data = base_image().to_vec();
    let at = record_offset("/a.txt");
    data[at] = 10;
    assert_error(read_all(data), &["directory record length"]);
}

#[test]
fn identifier_length_past_record_is_corrupt() {
    let mut data = base_image().to_vec();
    let at = record_offset("/a.txt");
    data[at + 32] = 200;
    assert_error(read_all(data), &["file identifier length"]);
}

#[test]
fn file_extent_past_end_is_corrupt() {
    let mut data = base_image().to_vec();
    let at = record_offset("/a.txt");
    put_both_endian32(&mut data, at + 2, 0x00FF_FF00);
    assert_error(read_all(data), &["file extent", "past the end"]);
}

/// Offset of the system use area of the record at `at`.
fn system_use_offset(data: &[u8], at: usize) -> usize {
    let name_len = data[at + 32] as usize;
    at + 33 + name_len + usize::from(name_len.is_multiple_of(2))
}

#[test]
fn susp_entry_length_overrun_is_corrupt() {
    let mut data = base_image().to_vec();
    let at = record_offset("/a.txt");
    let su = system_use_offset(&data, at);
    data[su + 2] = 0xFF;
    assert_error(read_all(data), &["SUSP entry length", "offset 0x"]);
}

fn ce_entry(lba: u32, offset: u32, length: u32) -> Vec<u8> {
    let mut e = vec![b'C', b'E', 28, 1];
    for v in [lba, offset, length] {
        e.extend_from_slice(&v.to_le_bytes());
        e.extend_from_slice(&v.to_be_bytes());
    }
    e
}

/// Replaces the first SUSP entries of /a.txt by `entry` followed by ST.
fn with_first_susp_entry(data: &mut [u8], entry: &[u8]) {
    let at = record_offset("/a.txt");
    let su = system_use_offset(data, at);
    let record_end = at + data[at] as usize;
    assert!(
        su + entry.len() + 4 <= record_end,
        "the record's system use area is too small for the test"
    );
    data[su..su + entry.len()].copy_from_slice(entry);
    data[su + entry.len()..su + entry.len() + 4].copy_from_slice(b"ST\x04\x01");
}

#[test]
fn oversized_ce_area_hits_the_limit() {
    let mut data = base_image().to_vec();
    with_first_susp_entry(&mut data, &ce_entry(20, 0, 1_000_000));
    assert_error(read_all(data), &["MAX_CE_AREA_BYTES"]);
}

#[test]
fn long_ce_chain_hits_the_limit() {
    let mut data = base_image().to_vec();
    let first_lba = (data.len() / 2048) as u32;
    let areas = 100u32;
    data.resize(data.len() + areas as usize * 2048, 0);
    for i in 0..areas {
        let area = ce_entry(first_lba + i + 1, 0, 32);
        let at = (first_lba + i) as usize * 2048;
        data[at..at + 28].copy_from_slice(&area);
    }
    with_first_susp_entry(&mut data, &ce_entry(first_lba, 0, 32));
    assert_error(read_all(data), &["MAX_CE_CHAIN"]);
}

#[test]
fn ce_pointing_at_itself_is_a_loop_error() {
    let mut data = base_image().to_vec();
    let lba = (data.len() / 2048) as u32;
    data.resize(data.len() + 2048, 0);
    let at = lba as usize * 2048;
    data[at..at + 28].copy_from_slice(&ce_entry(lba, 0, 28));
    with_first_susp_entry(&mut data, &ce_entry(lba, 0, 28));
    assert_error(read_all(data), &["CE continuation", "loop"]);
}

fn shared_sample(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/images")
        .join(name);
    assert!(path.exists(), "shared sample {} is missing", path.display());
    let out = Command::new(require_tool("xz"))
        .arg("-dc")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn libarchive_ce_loop_sample_is_an_error_not_a_hang() {
    let data = shared_sample("libarchive/test_read_format_iso_rockridge_ce_loop.iso.xz");
    assert_error(read_all(data), &["CE continuation", "loop"]);
}

#[test]
fn multi_extent_without_final_record_is_corrupt() {
    let mut data = base_image().to_vec();
    let at = record_offset("/a.txt");
    data[at + 25] |= 0x80;
    assert_error(read_all(data), &["multi-extent file"]);
}

#[test]
fn truncated_image_is_an_error() {
    let data = base_image()[..20 * 2048].to_vec();
    assert!(read_all(data).is_err());
}

#[test]
fn boot_catalog_with_bad_checksum_is_corrupt() {
    let mut data = base_image().to_vec();
    let image = open(data.clone()).unwrap();
    let lba = image.volume().el_torito.as_ref().unwrap().catalog_lba as usize;
    data[lba * 2048 + 4] ^= 0xFF;
    let image = open(data).unwrap();
    let err = image.boot_catalog().unwrap_err();
    assert!(
        err.to_string().contains("boot catalog validation checksum"),
        "{err}"
    );
}

#[test]
fn gpt_with_absurd_entry_count_hits_the_limit() {
    let mut data = base_image().to_vec();
    data[510] = 0x55;
    data[511] = 0xAA;
    data[512..520].copy_from_slice(b"EFI PART");
    data[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    data[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
    let image = open(data).unwrap();
    assert!(image
        .partitions()
        .unwrap_err()
        .to_string()
        .contains("MAX_GPT_ENTRIES"));
}

#[test]
fn symlink_loop_is_bounded() {
    let image = open(base_image().to_vec()).unwrap();
    let err = image.lookup_follow("/loop").unwrap_err();
    assert!(err.to_string().contains("MAX_SYMLINK_HOPS"), "{err}");
    assert_eq!(image.lookup_follow("/link").unwrap().name, "a.txt");
}

#[test]
fn zisofs_file_with_broken_header_is_corrupt() {
    let mut data = shared_sample("libarchive/test_read_format_iso_zisofs.iso.xz");
    let image = open(data.clone()).unwrap();
    let file = image.lookup("/file").unwrap();
    assert!(file.zisofs.is_some());
    let at = file.extents[0].byte_offset() as usize;
    data[at] ^= 0xFF;
    let image = open(data).unwrap();
    let err = image
        .file_reader(&image.lookup("/file").unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("zisofs header"), "{err}");
}

#[test]
fn zisofs_file_decompresses_to_its_recorded_size() {
    let data = shared_sample("libarchive/test_read_format_iso_zisofs.iso.xz");
    let image = open(data).unwrap();
    let file = image.lookup("/file").unwrap();
    let reader = image.file_reader(&file).unwrap();
    assert_eq!(reader.len(), file.size);
    let mut head = [0u8; 6];
    reader.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"hello\n");
}

/// Deterministic byte mutations of the base image: whatever breaks, nothing panics.
#[test]
fn random_mutations_never_panic() {
    let base = base_image();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..400 {
        let mut data = base.to_vec();
        let flips = 1 + next() % 8;
        for _ in 0..flips {
            // Mostly the metadata (descriptors, directories, catalog) at the image start.
            let limit = if next() % 4 == 0 {
                data.len()
            } else {
                data.len().min(64 * 2048)
            };
            let at = (next() % limit as u64) as usize;
            data[at] = next() as u8;
        }
        let _ = exercise(&data);
    }
}

/// Every corpus file goes through the fuzz target's code path; real samples must read.
#[test]
fn every_fuzz_corpus_file_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/iso_read");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let opened = exercise(&data);
        if !name.starts_with("hostile-") {
            assert!(
                opened > 0,
                "{name} is a valid sample but no name space scanned cleanly"
            );
        }
        count += 1;
    }
    assert!(
        count >= 10,
        "the corpus should hold the seed samples ({count} found)"
    );
}

//! Hostile VMDK, VHD and VHDX images: damaged tables, absurd sizes, descriptor bombs, parent
//! loops, log loops and random corruption must give typed errors naming the file, never a
//! panic, a hang or an unbounded allocation.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmedia_disk::{CreateOptions, DiskError, DiskImage, Format, OpenOptions};

type OpenFn =
    fn(&Path, Arc<dyn vmedia_io::ReadAt>, &OpenOptions) -> vmedia_disk::Result<Box<dyn DiskImage>>;

fn opener(format: Format) -> OpenFn {
    match format {
        Format::Vmdk => vmedia_disk::vmdk::open,
        Format::Vhd => vmedia_disk::vhd::open,
        _ => vmedia_disk::vhdx::open,
    }
}

fn open(path: &Path, format: Format) -> vmedia_disk::Result<Box<dyn DiskImage>> {
    let file = std::fs::File::open(path).unwrap();
    opener(format)(path, Arc::new(file), &OpenOptions::default())
}

/// A small valid image of `format` with data in a few places.
fn make(
    dir: &Path,
    name: &str,
    format: Format,
    options: &[(&str, &str)],
    backing: Option<&str>,
) -> PathBuf {
    let path = dir.join(name);
    let mut opts = CreateOptions::new(format, 6 << 20);
    for (k, v) in options {
        opts.options.insert((*k).into(), (*v).into());
    }
    if let Some(b) = backing {
        opts.backing = Some((b.into(), Some(format)));
    }
    let create = match format {
        Format::Vmdk => vmedia_disk::vmdk::create,
        Format::Vhd => vmedia_disk::vhd::create,
        _ => vmedia_disk::vhdx::create,
    };
    let mut w = create(&path, &opts).unwrap();
    let cluster = w.cluster_size() as usize;
    let data: Vec<u8> = (0..cluster).map(|i| (i % 253) as u8 + 1).collect();
    for at in [0u64, 3 << 20] {
        match w.compressor() {
            Some(c) => {
                let z = c.compress_cluster(&data).unwrap().unwrap();
                w.write_compressed(at, &z).unwrap();
            }
            None => w.write_at(at, &data).unwrap(),
        }
    }
    w.finish().unwrap();
    path
}

/// One small valid image of `format` in a fresh temporary folder (kept alive by the first
/// element).
fn fixture(name: &str, format: Format, options: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = make(dir.path(), name, format, options, None);
    (dir, path)
}

/// Rewrites both VHDX headers with `edit(header, copy index)` and a fresh CRC-32C.
fn rewrite_vhdx_headers(p: &Path, edit: impl Fn(&mut [u8], usize)) {
    let mut bytes = std::fs::read(p).unwrap();
    for (i, at) in [64 * 1024usize, 128 * 1024].into_iter().enumerate() {
        let h = &mut bytes[at..at + 4096];
        edit(h, i);
        h[4..8].fill(0);
        let crc = crc32c::crc32c(h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        patch(p, at as u64, h);
    }
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// Reads the start, a middle piece and the end of the disk; returns the first error.
fn read_some(img: &dyn DiskImage) -> vmedia_disk::Result<()> {
    let size = img.virtual_size();
    let mut buf = vec![0u8; 256 * 1024];
    for at in [0, size / 2, size.saturating_sub(buf.len() as u64)] {
        let n = (size - at.min(size)).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], at)?;
        img.block_status(at, n.max(1) as u64)?;
    }
    img.check(&vmedia_io::NoProgress)?;
    Ok(())
}

fn expect_corrupt(result: vmedia_disk::Result<()>, path: &Path, field_hint: &str) {
    let err = result.expect_err("the damaged image was accepted");
    let text = err.to_string();
    assert!(
        text.contains(path.file_name().unwrap().to_str().unwrap()),
        "{text} does not name the file"
    );
    assert!(
        text.to_lowercase().contains(&field_hint.to_lowercase()),
        "{text} does not mention {field_hint}"
    );
}

fn open_and_read(path: &Path, format: Format) -> vmedia_disk::Result<()> {
    let img = open(path, format)?;
    read_some(img.as_ref())
}

fn check_report_flags(path: &Path, format: Format) -> u64 {
    let img = open(path, format).unwrap();
    let r = img.check(&vmedia_io::NoProgress).unwrap();
    r.corruptions + r.check_errors
}

// ---- VMDK ----

#[test]
fn vmdk_grain_directory_past_the_end() {
    let (_dir, p) = fixture("a.vmdk", Format::Vmdk, &[]);
    patch(&p, 56, &(1u64 << 40).to_le_bytes());
    expect_corrupt(open_and_read(&p, Format::Vmdk), &p, "gdOffset");
}

#[test]
fn vmdk_absurd_capacity() {
    let (_dir, p) = fixture("a.vmdk", Format::Vmdk, &[]);
    patch(&p, 12, &(u64::MAX / 3).to_le_bytes());
    expect_corrupt(open_and_read(&p, Format::Vmdk), &p, "capacity");
}

#[test]
fn vmdk_descriptor_size_bomb() {
    let (_dir, p) = fixture("a.vmdk", Format::Vmdk, &[]);
    patch(&p, 36, &(1u64 << 50).to_le_bytes());
    expect_corrupt(open_and_read(&p, Format::Vmdk), &p, "descriptorSize");
}

#[test]
fn vmdk_descriptor_with_too_many_extents() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bomb.vmdk");
    let mut text =
        String::from("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n");
    for _ in 0..40_000 {
        text.push_str("RW 1 ZERO\n");
    }
    std::fs::write(&p, text).unwrap();
    expect_corrupt(open_and_read(&p, Format::Vmdk), &p, "extents");
}

#[test]
fn vmdk_huge_text_descriptor_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.vmdk");
    let f = std::fs::File::create(&p).unwrap();
    f.write_all_at(b"# Disk DescriptorFile\n", 0).unwrap();
    f.set_len(1 << 30).unwrap();
    let err = open_and_read(&p, Format::Vmdk).unwrap_err();
    assert!(matches!(err, DiskError::Limit { .. }), "{err}");
}

#[test]
fn vmdk_grain_table_entry_past_the_end() {
    let (_dir, p) = fixture("a.vmdk", Format::Vmdk, &[]);
    let img = open(&p, Format::Vmdk).unwrap();
    drop(img);
    // Read the primary GD's first entry and corrupt the first GTE of that table.
    let bytes = std::fs::read(&p).unwrap();
    let gd = u64::from_le_bytes(bytes[56..64].try_into().unwrap()) * 512;
    let gt = u64::from(u32::from_le_bytes(
        bytes[gd as usize..gd as usize + 4].try_into().unwrap(),
    )) * 512;
    patch(&p, gt, &0x7fff_fff0u32.to_le_bytes());
    expect_corrupt(open_and_read(&p, Format::Vmdk), &p, "past the end");
    assert!(check_report_flags(&p, Format::Vmdk) > 0);
}

#[test]
fn vmdk_stream_grain_marker_size_bomb() {
    let (_dir, p) = fixture("s.vmdk", Format::Vmdk, &[("subformat", "streamOptimized")]);
    // The first grain follows the 64 KiB header area: its size field is at +8.
    patch(&p, 128 * 512 + 8, &u32::MAX.to_le_bytes());
    let err = open_and_read(&p, Format::Vmdk).unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::Limit {
                field: "grain marker size",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn vmdk_stream_without_footer() {
    let (_dir, p) = fixture("s.vmdk", Format::Vmdk, &[("subformat", "streamOptimized")]);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 1536)
        .unwrap();
    expect_corrupt(open_and_read(&p, Format::Vmdk), &p, "footer");
}

#[test]
fn vmdk_stream_damaged_deflate_data() {
    let (_dir, p) = fixture("s.vmdk", Format::Vmdk, &[("subformat", "streamOptimized")]);
    patch(&p, 128 * 512 + 12, &[0xff; 64]);
    expect_corrupt(open_and_read(&p, Format::Vmdk), &p, "compressed grain");
}

#[test]
fn vmdk_parent_loop() {
    let dir = tempfile::tempdir().unwrap();
    let base = make(dir.path(), "base.vmdk", Format::Vmdk, &[], None);
    make(dir.path(), "a.vmdk", Format::Vmdk, &[], Some("base.vmdk"));
    make(dir.path(), "b.vmdk", Format::Vmdk, &[], Some("a.vmdk"));
    // Make base a delta of b: base -> b -> a -> base.
    let desc = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=87654321\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"b.vmdk\"\n\nRW 12288 SPARSE \"base.vmdk\"\n";
    let mut padded = desc.as_bytes().to_vec();
    padded.resize(20 * 512, 0);
    patch(&base, 512, &padded);
    let err = open_and_read(&dir.path().join("a.vmdk"), Format::Vmdk).unwrap_err();
    assert!(matches!(err, DiskError::BackingLoop { .. }), "{err}");
}

#[test]
fn vmdk_extent_outside_the_folder_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.vmdk");
    std::fs::write(&p, "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/passwd\" 0\n").unwrap();
    let err = open_and_read(&p, Format::Vmdk).unwrap_err();
    assert!(matches!(err, DiskError::Reference { .. }), "{err}");
}

// ---- VHD ----

fn vhd_bat_offset(p: &Path) -> u64 {
    let bytes = std::fs::read(p).unwrap();
    u64::from_be_bytes(bytes[512 + 16..512 + 24].try_into().unwrap())
}

#[test]
fn vhd_bat_entry_past_the_end() {
    let (_dir, p) = fixture("a.vhd", Format::Vhd, &[]);
    let bat = vhd_bat_offset(&p);
    patch(&p, bat, &0x00ff_ffffu32.to_be_bytes());
    expect_corrupt(open_and_read(&p, Format::Vhd), &p, "BAT entry");
    assert!(check_report_flags(&p, Format::Vhd) > 0);
}

fn fix_vhd_header_checksum(p: &Path) {
    let mut bytes = std::fs::read(p).unwrap();
    let header = &mut bytes[512..1536];
    header[36..40].fill(0);
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    patch(p, 512 + 36, &(!sum).to_be_bytes());
}

#[test]
fn vhd_max_table_entries_overflow() {
    let (_dir, p) = fixture("a.vhd", Format::Vhd, &[]);
    patch(&p, 512 + 28, &0x4000_0001u32.to_be_bytes());
    fix_vhd_header_checksum(&p);
    expect_corrupt(open_and_read(&p, Format::Vhd), &p, "max table entries");
}

#[test]
fn vhd_table_too_small_for_the_disk() {
    let (_dir, p) = fixture("a.vhd", Format::Vhd, &[]);
    patch(&p, 512 + 28, &1u32.to_be_bytes());
    fix_vhd_header_checksum(&p);
    expect_corrupt(open_and_read(&p, Format::Vhd), &p, "max table entries");
}

#[test]
fn vhd_bad_footer_checksum() {
    let (_dir, p) = fixture("a.vhd", Format::Vhd, &[("subformat", "fixed")]);
    let len = std::fs::metadata(&p).unwrap().len();
    patch(&p, len - 512 + 68, &[0x55]);
    expect_corrupt(open_and_read(&p, Format::Vhd), &p, "checksum");
}

/// A child whose parent name resolves to the child itself (the real parent moved away and a
/// hard link to the child took its name) must be refused as a loop.
fn self_parent_loop(format: Format, ext: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("base.{ext}");
    make(dir.path(), &base, format, &[], None);
    let child = make(
        dir.path(),
        &format!("child.{ext}"),
        format,
        &[],
        Some(&base),
    );
    std::fs::rename(
        dir.path().join(&base),
        dir.path().join(format!("gone.{ext}")),
    )
    .unwrap();
    std::fs::hard_link(&child, dir.path().join(&base)).unwrap();
    let err = open_and_read(&child, format).unwrap_err();
    assert!(matches!(err, DiskError::BackingLoop { .. }), "{err}");
}

#[test]
fn vhd_parent_loop() {
    self_parent_loop(Format::Vhd, "vhd");
}

// ---- VHDX ----

fn vhdx_region(p: &Path, which: u128) -> (u64, u32) {
    let bytes = std::fs::read(p).unwrap();
    let table = &bytes[192 * 1024..256 * 1024];
    let count = u32::from_le_bytes(table[8..12].try_into().unwrap()) as usize;
    for i in 0..count {
        let e = &table[16 + i * 32..48 + i * 32];
        let id = uuid::Uuid::from_bytes_le(e[..16].try_into().unwrap());
        if id.as_u128() == which {
            return (
                u64::from_le_bytes(e[16..24].try_into().unwrap()),
                u32::from_le_bytes(e[24..28].try_into().unwrap()),
            );
        }
    }
    panic!("region not found");
}

const BAT: u128 = 0x2DC27766_F623_4200_9D64_115E9BFD4A08;

#[test]
fn vhdx_bat_entry_past_the_end() {
    let (_dir, p) = fixture("a.vhdx", Format::Vhdx, &[("block_size", "1M")]);
    let (bat, _) = vhdx_region(&p, BAT);
    patch(&p, bat, &((1u64 << 40) | 6).to_le_bytes());
    expect_corrupt(open_and_read(&p, Format::Vhdx), &p, "BAT entry");
    assert!(check_report_flags(&p, Format::Vhdx) > 0);
}

fn rewrite_region_tables(p: &Path, edit: impl Fn(&mut [u8])) {
    let mut bytes = std::fs::read(p).unwrap();
    for at in [192 * 1024usize, 256 * 1024] {
        let t = &mut bytes[at..at + 64 * 1024];
        edit(t);
        t[4..8].fill(0);
        let crc = crc32c::crc32c(t);
        t[4..8].copy_from_slice(&crc.to_le_bytes());
        patch(p, at as u64, t);
    }
}

#[test]
fn vhdx_region_table_entry_count_bomb() {
    let (_dir, p) = fixture("a.vhdx", Format::Vhdx, &[]);
    rewrite_region_tables(&p, |t| t[8..12].copy_from_slice(&u32::MAX.to_le_bytes()));
    expect_corrupt(
        open_and_read(&p, Format::Vhdx),
        &p,
        "region table entry count",
    );
}

#[test]
fn vhdx_bat_region_smaller_than_the_disk_needs() {
    let (_dir, p) = fixture("a.vhdx", Format::Vhdx, &[("block_size", "1M")]);
    rewrite_region_tables(&p, |t| {
        // First entry is the BAT: shrink its length to 8 bytes.
        t[16 + 24..16 + 28].copy_from_slice(&8u32.to_le_bytes());
    });
    expect_corrupt(open_and_read(&p, Format::Vhdx), &p, "BAT region");
}

#[test]
fn vhdx_headers_both_damaged() {
    let (_dir, p) = fixture("a.vhdx", Format::Vhdx, &[]);
    patch(&p, 64 * 1024 + 100, &[1]);
    patch(&p, 128 * 1024 + 100, &[1]);
    expect_corrupt(open_and_read(&p, Format::Vhdx), &p, "header");
}

/// Writes a header (both copies) naming a log GUID, with the log area holding `log`.
fn set_log(p: &Path, log: &[u8], log_guid: uuid::Uuid) {
    rewrite_vhdx_headers(p, |h, i| {
        h[8..16].copy_from_slice(&(10 + i as u64).to_le_bytes());
        h[48..64].copy_from_slice(&log_guid.to_bytes_le());
    });
    patch(p, 1 << 20, log);
}

fn log_entry(seq: u64, tail: u32, guid: uuid::Uuid, length: u32) -> Vec<u8> {
    let mut e = vec![0u8; length as usize];
    e[0..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&length.to_le_bytes());
    e[12..16].copy_from_slice(&tail.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[32..48].copy_from_slice(&guid.to_bytes_le());
    let crc = crc32c::crc32c(&e);
    e[4..8].copy_from_slice(&crc.to_le_bytes());
    e
}

#[test]
fn vhdx_log_loop_terminates() {
    let (_dir, p) = fixture("a.vhdx", Format::Vhdx, &[]);
    let guid = uuid::Uuid::from_u128(0x1234);
    // Every 4 KiB slot of the 1 MiB log holds an entry whose tail points at the next slot,
    // all with the same sequence number: no valid sequence, many candidates.
    let mut log = Vec::with_capacity(1 << 20);
    for slot in 0..256u32 {
        log.extend(log_entry(5, ((slot + 1) % 256) * 4096, guid, 4096));
    }
    set_log(&p, &log, guid);
    let started = std::time::Instant::now();
    let result = open_and_read(&p, Format::Vhdx);
    assert!(
        result.is_ok() || matches!(result, Err(DiskError::Corrupt { .. })),
        "{result:?}"
    );
    // Not a timing assertion on speed: a guard that the walk ended at all.
    assert!(started.elapsed() < std::time::Duration::from_secs(600));
}

#[test]
fn vhdx_log_larger_than_the_limit() {
    let (_dir, p) = fixture("a.vhdx", Format::Vhdx, &[]);
    rewrite_vhdx_headers(&p, |h, _| {
        h[48..64].copy_from_slice(&uuid::Uuid::from_u128(9).to_bytes_le());
        h[68..72].copy_from_slice(&u32::MAX.to_le_bytes());
    });
    expect_corrupt(open_and_read(&p, Format::Vhdx), &p, "log");
}

#[test]
fn vhdx_parent_loop() {
    self_parent_loop(Format::Vhdx, "vhdx");
}

// ---- random corruption ----

/// xorshift64*: deterministic, no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<(PathBuf, Format)> = [
        ("m.vmdk", Format::Vmdk, &[][..]),
        (
            "s.vmdk",
            Format::Vmdk,
            &[("subformat", "streamOptimized")][..],
        ),
        ("d.vhd", Format::Vhd, &[][..]),
        ("f.vhd", Format::Vhd, &[("subformat", "fixed")][..]),
        ("d.vhdx", Format::Vhdx, &[("block_size", "1M")][..]),
    ]
    .into_iter()
    .map(|(name, format, options)| (make(dir.path(), name, format, options, None), format))
    .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (seed, format) in &seeds {
        let original = std::fs::read(seed).unwrap();
        // Metadata lives at the start (and VHD's footer at the end): aim most flips there.
        let hot = original.len().min(4 << 20);
        for round in 0..150 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.next() % 8 {
                let at = if rng.next().is_multiple_of(4) {
                    (rng.next() % bytes.len() as u64) as usize
                } else if rng.next().is_multiple_of(3) {
                    bytes.len() - 1 - (rng.next() % 512) as usize
                } else {
                    (rng.next() % hot as u64) as usize
                };
                bytes[at] = rng.next() as u8;
            }
            let p = dir.path().join(format!(
                "fuzz-{round}-{}",
                seed.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&p, &bytes).unwrap();
            if let Ok(img) = open(&p, *format) {
                let _ = read_some(img.as_ref());
                let _ = img.info();
            }
            std::fs::remove_file(&p).unwrap();
        }
    }
}

// ---- in-place editors ----

#[test]
fn editors_refuse_damaged_images_without_writing() {
    use vmedia_disk::vhd::edit::VhdEditor;
    use vmedia_disk::vhdx::edit::VhdxEditor;
    let (_d1, vhd) = fixture("a.vhd", Format::Vhd, &[]);
    let bat = vhd_bat_offset(&vhd);
    patch(&vhd, bat, &0x00ff_ffffu32.to_be_bytes());
    let before = std::fs::read(&vhd).unwrap();
    let err = VhdEditor::open(&vhd)
        .err()
        .expect("damaged VHD opened for writing");
    assert!(err.to_string().contains("BAT entry"), "{err}");
    assert_eq!(std::fs::read(&vhd).unwrap(), before);
    // A VHDX whose log still holds entries must be replayed before anything is written.
    let (_d2, vhdx) = fixture("a.vhdx", Format::Vhdx, &[("block_size", "1M")]);
    let guid = uuid::Uuid::from_u128(0x77);
    let log = one_page_log_entry(guid);
    set_log(&vhdx, &log, guid);
    let before = std::fs::read(&vhdx).unwrap();
    let err = VhdxEditor::open(&vhdx)
        .err()
        .expect("dirty VHDX opened for writing");
    assert!(err.to_string().contains("replay it first"), "{err}");
    assert_eq!(std::fs::read(&vhdx).unwrap(), before);
}

/// A one-entry log (sequence 1, tail at 0) that writes one page of 0x5a at 8 KiB.
fn one_page_log_entry(guid: uuid::Uuid) -> Vec<u8> {
    let mut e = vec![0u8; 8192];
    e[0..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&8192u32.to_le_bytes());
    e[16..24].copy_from_slice(&1u64.to_le_bytes());
    e[24..28].copy_from_slice(&1u32.to_le_bytes());
    e[32..48].copy_from_slice(&guid.to_bytes_le());
    e[56..64].copy_from_slice(&(1u64 << 20).to_le_bytes());
    // Descriptor: "desc", trailing 4 bytes, leading 8 bytes, file offset, sequence.
    e[64..68].copy_from_slice(b"desc");
    e[68..72].copy_from_slice(&[0x5a; 4]);
    e[72..80].copy_from_slice(&[0x5a; 8]);
    e[80..88].copy_from_slice(&8192u64.to_le_bytes());
    e[88..96].copy_from_slice(&1u64.to_le_bytes());
    let s = 4096;
    e[s..s + 4].copy_from_slice(b"data");
    e[s + 4..s + 8].copy_from_slice(&0u32.to_le_bytes());
    e[s + 8..s + 4092].fill(0x5a);
    e[s + 4092..s + 4096].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32c::crc32c(&e);
    e[4..8].copy_from_slice(&crc.to_le_bytes());
    e
}

#[test]
fn editors_on_randomly_corrupted_images_never_panic_or_balloon() {
    use vmedia_disk::modify::InPlaceEditor;
    let dir = tempfile::tempdir().unwrap();
    let seeds = [
        (
            make(dir.path(), "d.vhd", Format::Vhd, &[], None),
            Format::Vhd,
        ),
        (
            make(
                dir.path(),
                "d.vhdx",
                Format::Vhdx,
                &[("block_size", "1M")],
                None,
            ),
            Format::Vhdx,
        ),
        (
            make(
                dir.path(),
                "base.vhdx",
                Format::Vhdx,
                &[("block_size", "1M")],
                None,
            ),
            Format::Vhdx,
        ),
    ];
    // A differencing child too: its bitmaps and locator are edited.
    let child = make(
        dir.path(),
        "child.vhdx",
        Format::Vhdx,
        &[("block_size", "1M")],
        Some("base.vhdx"),
    );
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for (seed, format) in seeds.iter().chain([(child, Format::Vhdx)].iter()) {
        let original = std::fs::read(seed).unwrap();
        let hot = original.len().min(4 << 20);
        for round in 0..60 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.next() % 6 {
                let at = if rng.next().is_multiple_of(3) {
                    bytes.len() - 1 - (rng.next() % 512) as usize
                } else {
                    (rng.next() % hot as u64) as usize
                };
                bytes[at] = rng.next() as u8;
            }
            let p = dir.path().join(format!(
                "edit-{round}-{}",
                seed.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&p, &bytes).unwrap();
            let editor: Option<Box<dyn InPlaceEditor>> = match format {
                Format::Vhd => vmedia_disk::vhd::edit::VhdEditor::open(&p)
                    .ok()
                    .map(|e| Box::new(e) as Box<dyn InPlaceEditor>),
                _ => vmedia_disk::vhdx::edit::VhdxEditor::open(&p)
                    .ok()
                    .map(|e| Box::new(e) as Box<dyn InPlaceEditor>),
            };
            if let Some(mut e) = editor {
                let cluster = e.cluster_size() as usize;
                let data = vec![0x6bu8; cluster];
                let _ = e.write_cluster(0, &data);
                let _ = e.write_cluster(3 << 20, &data);
                let _ = e.zero_cluster(1 << 20);
                let _ = e.finish();
                // Appending two blocks (and a bitmap) is the most an edit may add.
                let len = std::fs::metadata(&p).unwrap().len();
                assert!(
                    len <= original.len() as u64 + (8 << 20),
                    "{} grew to {len} bytes",
                    p.display()
                );
            }
            std::fs::remove_file(&p).unwrap();
        }
    }
}

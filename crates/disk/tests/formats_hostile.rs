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
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vmdk", Format::Vmdk, &[], None);
    patch(&p, 56, &(1u64 << 40).to_le_bytes());
    expect_corrupt(open_and_read(&p, Format::Vmdk), &p, "gdOffset");
}

#[test]
fn vmdk_absurd_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vmdk", Format::Vmdk, &[], None);
    patch(&p, 12, &(u64::MAX / 3).to_le_bytes());
    expect_corrupt(open_and_read(&p, Format::Vmdk), &p, "capacity");
}

#[test]
fn vmdk_descriptor_size_bomb() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vmdk", Format::Vmdk, &[], None);
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vmdk", Format::Vmdk, &[], None);
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        "s.vmdk",
        Format::Vmdk,
        &[("subformat", "streamOptimized")],
        None,
    );
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        "s.vmdk",
        Format::Vmdk,
        &[("subformat", "streamOptimized")],
        None,
    );
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        "s.vmdk",
        Format::Vmdk,
        &[("subformat", "streamOptimized")],
        None,
    );
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vhd", Format::Vhd, &[], None);
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vhd", Format::Vhd, &[], None);
    patch(&p, 512 + 28, &0x4000_0001u32.to_be_bytes());
    fix_vhd_header_checksum(&p);
    expect_corrupt(open_and_read(&p, Format::Vhd), &p, "max table entries");
}

#[test]
fn vhd_table_too_small_for_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vhd", Format::Vhd, &[], None);
    patch(&p, 512 + 28, &1u32.to_be_bytes());
    fix_vhd_header_checksum(&p);
    expect_corrupt(open_and_read(&p, Format::Vhd), &p, "max table entries");
}

#[test]
fn vhd_bad_footer_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        "a.vhd",
        Format::Vhd,
        &[("subformat", "fixed")],
        None,
    );
    let len = std::fs::metadata(&p).unwrap().len();
    patch(&p, len - 512 + 68, &[0x55]);
    expect_corrupt(open_and_read(&p, Format::Vhd), &p, "checksum");
}

#[test]
fn vhd_parent_loop() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), "base.vhd", Format::Vhd, &[], None);
    let child = make(dir.path(), "child.vhd", Format::Vhd, &[], Some("base.vhd"));
    // The child now names itself as its parent.
    std::fs::rename(dir.path().join("base.vhd"), dir.path().join("gone.vhd")).unwrap();
    std::fs::hard_link(&child, dir.path().join("base.vhd")).unwrap();
    let err = open_and_read(&child, Format::Vhd).unwrap_err();
    assert!(matches!(err, DiskError::BackingLoop { .. }), "{err}");
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        "a.vhdx",
        Format::Vhdx,
        &[("block_size", "1M")],
        None,
    );
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vhdx", Format::Vhdx, &[], None);
    rewrite_region_tables(&p, |t| t[8..12].copy_from_slice(&u32::MAX.to_le_bytes()));
    expect_corrupt(
        open_and_read(&p, Format::Vhdx),
        &p,
        "region table entry count",
    );
}

#[test]
fn vhdx_bat_region_smaller_than_the_disk_needs() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        "a.vhdx",
        Format::Vhdx,
        &[("block_size", "1M")],
        None,
    );
    rewrite_region_tables(&p, |t| {
        // First entry is the BAT: shrink its length to 8 bytes.
        t[16 + 24..16 + 28].copy_from_slice(&8u32.to_le_bytes());
    });
    expect_corrupt(open_and_read(&p, Format::Vhdx), &p, "BAT region");
}

#[test]
fn vhdx_headers_both_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vhdx", Format::Vhdx, &[], None);
    patch(&p, 64 * 1024 + 100, &[1]);
    patch(&p, 128 * 1024 + 100, &[1]);
    expect_corrupt(open_and_read(&p, Format::Vhdx), &p, "header");
}

/// Writes a header (both copies) naming a log GUID, with the log area holding `log`.
fn set_log(p: &Path, log: &[u8], log_guid: uuid::Uuid) {
    let mut bytes = std::fs::read(p).unwrap();
    for (seq, at) in [(10u64, 64 * 1024usize), (11, 128 * 1024)] {
        let h = &mut bytes[at..at + 4096];
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        h[48..64].copy_from_slice(&log_guid.to_bytes_le());
        h[4..8].fill(0);
        let crc = crc32c::crc32c(h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        patch(p, at as u64, h);
    }
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vhdx", Format::Vhdx, &[], None);
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
    let dir = tempfile::tempdir().unwrap();
    let p = make(dir.path(), "a.vhdx", Format::Vhdx, &[], None);
    let mut bytes = std::fs::read(&p).unwrap();
    for at in [64 * 1024usize, 128 * 1024] {
        let h = &mut bytes[at..at + 4096];
        h[48..64].copy_from_slice(&uuid::Uuid::from_u128(9).to_bytes_le());
        h[68..72].copy_from_slice(&u32::MAX.to_le_bytes());
        h[4..8].fill(0);
        let crc = crc32c::crc32c(h);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        patch(&p, at as u64, h);
    }
    expect_corrupt(open_and_read(&p, Format::Vhdx), &p, "log");
}

#[test]
fn vhdx_parent_loop() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), "base.vhdx", Format::Vhdx, &[], None);
    let child = make(
        dir.path(),
        "child.vhdx",
        Format::Vhdx,
        &[],
        Some("base.vhdx"),
    );
    std::fs::rename(dir.path().join("base.vhdx"), dir.path().join("gone.vhdx")).unwrap();
    std::fs::hard_link(&child, dir.path().join("base.vhdx")).unwrap();
    let err = open_and_read(&child, Format::Vhdx).unwrap_err();
    assert!(matches!(err, DiskError::BackingLoop { .. }), "{err}");
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
    let seeds = [
        (
            make(dir.path(), "m.vmdk", Format::Vmdk, &[], None),
            Format::Vmdk,
        ),
        (
            make(
                dir.path(),
                "s.vmdk",
                Format::Vmdk,
                &[("subformat", "streamOptimized")],
                None,
            ),
            Format::Vmdk,
        ),
        (
            make(dir.path(), "d.vhd", Format::Vhd, &[], None),
            Format::Vhd,
        ),
        (
            make(
                dir.path(),
                "f.vhd",
                Format::Vhd,
                &[("subformat", "fixed")],
                None,
            ),
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
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (seed, format) in &seeds {
        let original = std::fs::read(seed).unwrap();
        // Metadata lives at the start (and VHD's footer at the end): aim most flips there.
        let hot = original.len().min(4 << 20);
        for round in 0..150 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.next() % 8 {
                let at = if rng.next() % 4 == 0 {
                    (rng.next() % bytes.len() as u64) as usize
                } else if rng.next() % 3 == 0 {
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

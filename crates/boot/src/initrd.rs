//! Plain initrds for the direct fast path: Linux unpacks a compressed initrd in emulated code
//! under TCG (gzip -1 of 2 MiB: ~0.15 s; a live ISO's 50-100 MiB xz/zstd initrd: many
//! seconds), while the host decompresses it in a blink. So the initrd's archives (a sequence of
//! plain cpio archives and gzip/xz/zstd streams, as Linux accepts) are turned into plain cpio
//! once on the host and cached by content hash, like the kernel.
//!
//! The guest then holds the larger plain image in memory until it has unpacked it, so this is
//! only done while the plain image stays a small share of the guest's memory.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vmedia_io::{AtomicFile, OverwritePolicy};

use crate::error::{BootError, Result};
use crate::inflate::{decode_stream, Bounded, Compression, InflateError, MAX_DECOMPRESSION_TIME};

/// Initrds read whole into memory for hashing and walking; larger ones stay as they are.
/// Also the input bound that, with the output cap, bounds the decoders' CPU time.
const MAX_INITRD_BYTES: u64 = 1024 * 1024 * 1024;
/// The plain image may use at most 1/this of the guest's memory: the guest holds it and the
/// unpacked files at once, and a live system still needs room to run.
const GUEST_MEMORY_SHARE: u64 = 4;
/// Plain images are never made larger than this, whatever the guest's memory: QEMU places the
/// initrd below 4 GiB, and each one is kept in the cache folder. It is also the decompression
/// bomb bound: no initrd is ever decompressed past it.
const MAX_PLAIN_INITRD_BYTES: u64 = 1024 * 1024 * 1024;
/// Bounds the walk over a hostile initrd (real ones hold 1 to 3 archives).
const MAX_ARCHIVES: usize = 64;
/// Bounds the entries walked in one plain cpio archive (a busy initrd has ~10^4 files).
const MAX_CPIO_ENTRIES: usize = 1_000_000;
/// newc/crc cpio header length and the offsets of its size fields (8 hex digits each).
const CPIO_HEADER: usize = 110;
const CPIO_FILESIZE: usize = 54;
const CPIO_NAMESIZE: usize = 94;
const CPIO_TRAILER: &[u8] = b"TRAILER!!!";
/// Output buffer for the decompressed stream.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Whether a plain initrd could be made, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlainInitrd {
    /// A plain cpio initrd, ready for `-initrd`.
    Ready(PathBuf),
    /// The initrd is already plain: nothing to do.
    AlreadyPlain,
    /// Keep the initrd as it is: the reason, for the user.
    NotApplicable(String),
}

/// One archive of an initrd, as Linux reads them in sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Archive {
    Cpio,
    Compressed(Compression),
}

fn archive_at(data: &[u8]) -> Option<Archive> {
    if data.starts_with(b"070701") || data.starts_with(b"070702") {
        Some(Archive::Cpio)
    } else {
        Compression::detect(data).map(Archive::Compressed)
    }
}

/// Returns a cached or freshly made plain form of `initrd` for a guest with `memory_mib`.
pub fn plain_initrd(initrd: &Path, cache_dir: &Path, memory_mib: u32) -> Result<PlainInitrd> {
    let _span =
        tracing::info_span!("plain_initrd", initrd = %initrd.display(), memory_mib).entered();
    let size = std::fs::metadata(initrd)
        .map_err(|e| BootError::io(initrd, e))?
        .len();
    if size > MAX_INITRD_BYTES {
        return Ok(PlainInitrd::NotApplicable(format!(
            "{size} bytes is more than vmedia decompresses ahead"
        )));
    }
    let image = std::fs::read(initrd).map_err(|e| BootError::io(initrd, e))?;
    let limit =
        (u64::from(memory_mib) * 1024 * 1024 / GUEST_MEMORY_SHARE).min(MAX_PLAIN_INITRD_BYTES);
    let digest = hex::encode(Sha256::digest(&image));
    // The memory share is part of the key: a bigger guest may take what a smaller one could not.
    let cached = cache_dir.join(format!("{digest}.cpio"));
    if let Ok(meta) = std::fs::metadata(&cached) {
        if meta.len() <= limit {
            return Ok(PlainInitrd::Ready(cached));
        }
    }
    match first_compressed(&image) {
        Ok(None) => return Ok(PlainInitrd::AlreadyPlain),
        Ok(Some(_)) => {}
        Err(reason) => return Ok(PlainInitrd::NotApplicable(reason)),
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| BootError::io(cache_dir, e))?;
    let mut out = AtomicFile::create(&cached, OverwritePolicy::Replace)
        .map_err(|e| BootError::io(&cached, e))?;
    let mut sink = Bounded::new(
        std::io::BufWriter::with_capacity(WRITE_BUFFER, out.file_mut()),
        limit,
        MAX_DECOMPRESSION_TIME,
    );
    match unpack(&image, &mut sink) {
        Ok(()) => {}
        Err(Unpack::Refused(reason)) => return Ok(PlainInitrd::NotApplicable(reason)),
        Err(Unpack::Inflate(InflateError::TooLarge(_), _)) => {
            return Ok(PlainInitrd::NotApplicable(format!(
                "it decompresses to over {} MiB, more than a quarter of the guest's memory \
                 (or the 1 GiB cap)",
                limit / (1024 * 1024)
            )))
        }
        Err(Unpack::Inflate(e @ InflateError::TooSlow(_), _)) => {
            return Ok(PlainInitrd::NotApplicable(e.to_string()))
        }
        Err(Unpack::Inflate(InflateError::Stream(e), at)) => {
            return Ok(PlainInitrd::NotApplicable(format!(
                "cannot decompress its archive at {at:#x}: {e}"
            )))
        }
        Err(Unpack::Write(e)) => return Err(BootError::io(&cached, e)),
    }
    let mut writer = sink.into_inner();
    writer.flush().map_err(|e| BootError::io(&cached, e))?;
    drop(writer);
    out.commit().map_err(|e| BootError::io(&cached, e))?;
    Ok(PlainInitrd::Ready(cached))
}

/// Why the walk stopped.
#[derive(Debug)]
pub(crate) enum Unpack {
    /// The initrd is not something vmedia turns plain: the reason, for the user.
    Refused(String),
    /// A compressed archive (at this offset) failed or hit a bound.
    Inflate(InflateError, usize),
    /// Writing the plain image failed.
    Write(std::io::Error),
}

/// The offset of the first compressed archive, `None` when the initrd is all plain cpio.
/// Only cpio headers are read, so this is cheap even for a large initrd.
pub(crate) fn first_compressed(image: &[u8]) -> std::result::Result<Option<usize>, String> {
    let mut at = 0usize;
    let mut archives = 0usize;
    loop {
        at = skip_padding(image, at);
        if at >= image.len() {
            return if archives == 0 {
                Err("the initrd is empty".into())
            } else {
                Ok(None)
            };
        }
        match archive_at(&image[at..]) {
            Some(Archive::Cpio) => {}
            Some(Archive::Compressed(_)) => return Ok(Some(at)),
            None => return Err(not_an_archive(at)),
        }
        archives += 1;
        if archives > MAX_ARCHIVES {
            return Err(format!("more than {MAX_ARCHIVES} archives"));
        }
        let length = cpio_length(&image[at..]).map_err(|e| format!("cpio at {at:#x}: {e}"))?;
        at += length;
    }
}

fn skip_padding(image: &[u8], mut at: usize) -> usize {
    while image.get(at) == Some(&0) {
        at += 1;
    }
    at
}

fn not_an_archive(at: usize) -> String {
    format!("data at {at:#x} is neither a cpio archive nor gzip, xz or zstd")
}

/// Walks the initrd's archives in order as Linux does and writes them as one plain cpio
/// stream: plain archives copied, compressed ones decoded (each decode bounded by `sink`).
pub(crate) fn unpack<W: Write>(
    image: &[u8],
    sink: &mut Bounded<W>,
) -> std::result::Result<(), Unpack> {
    let mut at = 0usize;
    let mut archives = 0usize;
    loop {
        at = skip_padding(image, at);
        if at >= image.len() {
            break;
        }
        if archives >= MAX_ARCHIVES {
            return Err(Unpack::Refused(format!(
                "more than {MAX_ARCHIVES} archives"
            )));
        }
        archives += 1;
        let rest = &image[at..];
        let length = match archive_at(rest) {
            Some(Archive::Cpio) => {
                let length = cpio_length(rest)
                    .map_err(|e| Unpack::Refused(format!("cpio at {at:#x}: {e}")))?;
                sink.write_all(&rest[..length])
                    .map_err(|e| written_error(sink, e, at))?;
                length
            }
            Some(Archive::Compressed(kind)) => {
                decode_stream(kind, rest, sink).map_err(|e| Unpack::Inflate(e, at))?
            }
            None => return Err(Unpack::Refused(not_an_archive(at))),
        };
        if length == 0 {
            return Err(Unpack::Refused(format!("empty archive at {at:#x}")));
        }
        at += length;
        // Linux expects each archive to start 4-byte aligned in the unpacked stream and skips
        // the zero padding between archives.
        let pad = (4 - sink.written() % 4) % 4;
        sink.write_all(&[0u8; 3][..pad as usize])
            .map_err(|e| written_error(sink, e, at))?;
    }
    if archives == 0 {
        return Err(Unpack::Refused("the initrd is empty".into()));
    }
    Ok(())
}

/// A failed plain write: a bound the sink enforces, else an I/O error of the cache file.
fn written_error<W: Write>(sink: &Bounded<W>, error: std::io::Error, at: usize) -> Unpack {
    match sink.explain(error) {
        InflateError::Stream(e) => Unpack::Write(e),
        bound => Unpack::Inflate(bound, at),
    }
}

fn hex_field(header: &[u8], at: usize) -> Option<usize> {
    let text = std::str::from_utf8(header.get(at..at.checked_add(8)?)?).ok()?;
    usize::from_str_radix(text, 16).ok()
}

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

/// The length of a plain newc cpio archive up to and including its trailer entry.
fn cpio_length(data: &[u8]) -> std::result::Result<usize, String> {
    let mut at = 0usize;
    for _ in 0..MAX_CPIO_ENTRIES {
        let header = data
            .get(at..)
            .filter(|h| h.len() >= CPIO_HEADER)
            .ok_or("cut short inside an entry header")?;
        if !(header.starts_with(b"070701") || header.starts_with(b"070702")) {
            return Err(format!("bad entry magic at +{at:#x}"));
        }
        let namesize = hex_field(header, CPIO_NAMESIZE).ok_or("bad c_namesize")?;
        let filesize = hex_field(header, CPIO_FILESIZE).ok_or("bad c_filesize")?;
        let name_end = CPIO_HEADER
            .checked_add(namesize)
            .ok_or("name size overflows")?;
        let name = header
            .get(CPIO_HEADER..name_end)
            .ok_or("name runs past the end")?;
        let data_start = align4(name_end).ok_or("name size overflows")?;
        let next = filesize
            .checked_add(data_start)
            .and_then(align4)
            .and_then(|len| at.checked_add(len))
            .ok_or("file size overflows")?;
        if next > data.len() {
            return Err(format!("entry at +{at:#x} runs past the end"));
        }
        at = next;
        if name.strip_suffix(&[0]).unwrap_or(name) == CPIO_TRAILER {
            return Ok(at);
        }
    }
    Err(format!("more than {MAX_CPIO_ENTRIES} entries"))
}

/// Reads a whole plain cpio stream's member names (for tests and diagnostics).
pub fn cpio_names(mut data: &[u8]) -> std::result::Result<Vec<String>, String> {
    let mut names = Vec::new();
    loop {
        while data.first() == Some(&0) {
            data = &data[1..];
        }
        if data.is_empty() {
            return Ok(names);
        }
        let length = cpio_length(data)?;
        let mut at = 0usize;
        // cpio_length checked every entry; the reads stay checked all the same.
        while at < length {
            let header = data.get(at..).ok_or("entry past the end")?;
            let namesize = hex_field(header, CPIO_NAMESIZE).ok_or("bad c_namesize")?;
            let filesize = hex_field(header, CPIO_FILESIZE).ok_or("bad c_filesize")?;
            let name_end = CPIO_HEADER.checked_add(namesize).ok_or("overflow")?;
            let name = header
                .get(CPIO_HEADER..name_end)
                .ok_or("name past the end")?;
            names.push(String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).into());
            let entry = align4(name_end)
                .and_then(|n| n.checked_add(filesize))
                .and_then(align4)
                .ok_or("overflow")?;
            at = at.checked_add(entry).ok_or("overflow")?;
        }
        data = data.get(length..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newc archive holding `files`, padded to 512 bytes as cpio(1) does.
    fn cpio(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut entry = |name: &str, data: &[u8]| {
            let header = format!(
                "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                1, 0o100644, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
            );
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        };
        for (name, data) in files {
            entry(name, data);
        }
        entry("TRAILER!!!", b"");
        while out.len() % 512 != 0 {
            out.push(0);
        }
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn make(image: &[u8], memory_mib: u32) -> (tempfile::TempDir, PlainInitrd) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initrd");
        std::fs::write(&path, image).unwrap();
        let result = plain_initrd(&path, &dir.path().join("cache"), memory_mib).unwrap();
        (dir, result)
    }

    #[test]
    fn concatenated_plain_and_compressed_archives_become_one_plain_stream() {
        let mut image = cpio(&[("early/microcode.bin", b"ucode")]);
        image.extend(gzip(&cpio(&[("init", b"#!/bin/sh\n")])));
        image.extend([0u8; 16]);
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&cpio(&[("etc/overlay", b"x")])).unwrap();
        image.extend(xz.finish().unwrap());
        image.extend(zstd::encode_all(&cpio(&[("etc/z", b"zz")])[..], 1).unwrap());
        image.extend(gzip(&cpio(&[("etc/last", b"g")])));
        let (_dir, result) = make(&image, 512);
        let PlainInitrd::Ready(path) = result else {
            panic!("{result:?}")
        };
        let plain = std::fs::read(path).unwrap();
        let names = cpio_names(&plain).unwrap();
        assert_eq!(
            names,
            [
                "early/microcode.bin",
                "TRAILER!!!",
                "init",
                "TRAILER!!!",
                "etc/overlay",
                "TRAILER!!!",
                "etc/z",
                "TRAILER!!!",
                "etc/last",
                "TRAILER!!!"
            ]
        );
    }

    #[test]
    fn a_plain_initrd_is_left_alone() {
        let (_dir, result) = make(&cpio(&[("init", b"x")]), 512);
        assert_eq!(result, PlainInitrd::AlreadyPlain);
    }

    #[test]
    fn a_plain_image_over_a_quarter_of_guest_memory_is_not_made() {
        // 9 MiB of zeros compresses to almost nothing; a 32 MiB guest allows 8 MiB.
        let big = vec![0u8; 9 * 1024 * 1024];
        let (dir, result) = make(&gzip(&cpio(&[("big", &big)])), 32);
        assert!(
            matches!(&result, PlainInitrd::NotApplicable(r) if r.contains("quarter")),
            "{result:?}"
        );
        let leftovers = std::fs::read_dir(dir.path().join("cache"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(leftovers, 0, "no partial plain initrd may stay behind");
    }

    #[test]
    fn initrd_decompression_bomb_is_refused_quickly() {
        // 8 MiB of zstd RLE blocks claiming 256 GiB, after a real-looking first archive. The
        // walk used to decode every stream to its end just to measure it, before any limit.
        let mut image = cpio(&[("early/microcode.bin", b"ucode")]);
        image.extend(crate::inflate::tests::zstd_rle_bomb(1 << 21));
        let started = std::time::Instant::now();
        let (dir, result) = make(&image, 32);
        assert!(
            matches!(&result, PlainInitrd::NotApplicable(r) if r.contains("decompresses to over 8 MiB")),
            "{result:?}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        let leftovers = std::fs::read_dir(dir.path().join("cache"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(leftovers, 0, "no partial plain initrd may stay behind");
    }

    #[test]
    fn unknown_compression_keeps_the_initrd() {
        let (_dir, result) = make(b"\x02\x21\x4c\x18lz4-framed", 512);
        assert!(
            matches!(&result, PlainInitrd::NotApplicable(r) if r.contains("neither")),
            "{result:?}"
        );
    }

    #[test]
    fn a_truncated_compressed_stream_keeps_the_initrd() {
        let full = gzip(&cpio(&[("init", b"#!/bin/sh\n")]));
        let (_dir, result) = make(&full[..full.len() / 2], 512);
        assert!(
            matches!(result, PlainInitrd::NotApplicable(_)),
            "{result:?}"
        );
    }

    #[test]
    fn cpio_entry_running_past_the_end_is_refused() {
        let mut archive = cpio(&[("init", b"x")]);
        // c_filesize of the first entry: claim 0xffffff00 bytes.
        archive[CPIO_FILESIZE..CPIO_FILESIZE + 8].copy_from_slice(b"ffffff00");
        assert!(cpio_length(&archive).unwrap_err().contains("past the end"));
    }

    #[test]
    fn cpio_without_a_trailer_is_refused() {
        let archive = cpio(&[("init", b"x")]);
        // Cut right after the first entry: no trailer follows.
        assert!(cpio_length(&archive[..CPIO_HEADER + 8]).is_err());
    }
}

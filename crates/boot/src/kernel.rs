//! The uncompressed-kernel fast path: under TCG a Linux bzImage spends seconds decompressing
//! itself in emulated code, while QEMU can start an uncompressed `vmlinux` directly at its PVH
//! entry point. So a bzImage whose payload is gzip, xz or zstd is decompressed once on the host
//! (cached by content hash) and booted as vmlinux when it carries a PVH entry note.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vmedia_io::bytes::{le16, le32, le64};
use vmedia_io::{AtomicFile, OverwritePolicy};

use crate::error::{BootError, Result};
use crate::inflate::{decode_stream, Bounded, Compression, InflateError, MAX_DECOMPRESSION_TIME};

/// bzImages are tens of MiB; a bigger "kernel" is not one.
const MAX_BZIMAGE_BYTES: u64 = 256 * 1024 * 1024;
/// Uncompressed kernels are 30-100 MiB; beyond this the payload is not a kernel (or a bomb).
const MAX_VMLINUX_BYTES: u64 = 512 * 1024 * 1024;
/// The setup header fields used (boot protocol 2.08+ has payload_offset/length).
const SETUP_SECTS: usize = 0x1f1;
const BOOT_FLAG: usize = 0x1fe;
const HEADER_MAGIC: usize = 0x202;
const PROTOCOL_VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
const MIN_PROTOCOL_WITH_PAYLOAD: u16 = 0x0208;
/// Xen's ELF note type for the 32-bit PVH entry point, which QEMU's -kernel looks for.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// ELF program headers read at most (a kernel has a handful).
const MAX_PROGRAM_HEADERS: usize = 64;

/// Whether the fast kernel could be used, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvhKernel {
    /// An uncompressed kernel with a PVH entry, ready for `-kernel`.
    Ready(PathBuf),
    /// Keep the bzImage: the reason, for the user.
    NotApplicable(String),
}

/// Returns a cached or freshly extracted PVH vmlinux for `bzimage`.
pub fn pvh_kernel(bzimage: &Path, cache_dir: &Path) -> Result<PvhKernel> {
    let _span = tracing::info_span!("pvh_kernel", bzimage = %bzimage.display()).entered();
    let size = std::fs::metadata(bzimage)
        .map_err(|e| BootError::io(bzimage, e))?
        .len();
    if size > MAX_BZIMAGE_BYTES {
        return Ok(PvhKernel::NotApplicable(format!(
            "{size} bytes is too large for a bzImage"
        )));
    }
    let image = std::fs::read(bzimage).map_err(|e| BootError::io(bzimage, e))?;
    let digest = hex::encode(Sha256::digest(&image));
    let cached = cache_dir.join(format!("{digest}.vmlinux"));
    if cached.exists() {
        return Ok(PvhKernel::Ready(cached));
    }
    let payload = match compressed_payload(&image) {
        Ok(payload) => payload,
        Err(reason) => return Ok(PvhKernel::NotApplicable(reason)),
    };
    let vmlinux = match decompress(payload) {
        Ok(vmlinux) => vmlinux,
        Err(reason) => return Ok(PvhKernel::NotApplicable(reason)),
    };
    if !has_pvh_note(&vmlinux) {
        return Ok(PvhKernel::NotApplicable(
            "the kernel has no PVH entry point (CONFIG_PVH)".into(),
        ));
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| BootError::io(cache_dir, e))?;
    let mut out = AtomicFile::create(&cached, OverwritePolicy::Replace)
        .map_err(|e| BootError::io(&cached, e))?;
    use std::io::Write;
    out.file_mut()
        .write_all(&vmlinux)
        .map_err(|e| BootError::io(&cached, e))?;
    out.commit().map_err(|e| BootError::io(&cached, e))?;
    Ok(PvhKernel::Ready(cached))
}

/// The compressed kernel inside a bzImage, located through the setup header.
fn compressed_payload(image: &[u8]) -> std::result::Result<&[u8], String> {
    if le16(image, BOOT_FLAG) != Some(0xAA55)
        || image.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS")
    {
        return Err("not a bzImage (no Linux boot setup header)".into());
    }
    let version = le16(image, PROTOCOL_VERSION).unwrap_or(0);
    if version < MIN_PROTOCOL_WITH_PAYLOAD {
        return Err(format!(
            "boot protocol {version:#x} predates payload fields (2.08)"
        ));
    }
    let setup_sects = match image.get(SETUP_SECTS) {
        Some(0) | None => 4,
        Some(&n) => usize::from(n),
    };
    let protected_mode = (setup_sects + 1) * 512;
    let offset = le32(image, PAYLOAD_OFFSET).ok_or("setup header cut short")? as usize;
    let length = le32(image, PAYLOAD_LENGTH).ok_or("setup header cut short")? as usize;
    let start = protected_mode
        .checked_add(offset)
        .ok_or("payload offset overflows")?;
    let end = start
        .checked_add(length)
        .ok_or("payload length overflows")?;
    image.get(start..end).ok_or_else(|| {
        format!(
            "payload at {start:#x}+{length:#x} runs past the end of the {}-byte image",
            image.len()
        )
    })
}

fn decompress(payload: &[u8]) -> std::result::Result<Vec<u8>, String> {
    decompress_bounded(payload, MAX_VMLINUX_BYTES)
}

/// Decodes the kernel payload into memory, refusing more than `limit` bytes of output (and
/// past the time budget): see `inflate.rs` for why that bounds the CPU a hostile payload costs.
fn decompress_bounded(payload: &[u8], limit: u64) -> std::result::Result<Vec<u8>, String> {
    let Some(kind) = Compression::detect(payload) else {
        return Err("the kernel payload is compressed with a method vmedia does not decode (not gzip, xz or zstd)".into());
    };
    let mut out = Bounded::new(Vec::new(), limit, MAX_DECOMPRESSION_TIME);
    match decode_stream(kind, payload, &mut out) {
        // The kernel's build appends the uncompressed size after the stream; the decoder stops
        // at the end of the stream and leaves it.
        Ok(_) => Ok(out.into_inner()),
        Err(InflateError::TooLarge(limit)) => Err(format!(
            "the kernel payload decompresses to over {limit} bytes"
        )),
        Err(e @ InflateError::TooSlow(_)) => Err(format!("the kernel payload: {e}")),
        Err(InflateError::Stream(e)) => {
            let out = out.into_inner();
            // A stream whose end is damaged but that already gave a whole ELF kernel is
            // booted as before (the PVH note check below still has to pass).
            if out.starts_with(b"\x7fELF") && out.len() > 1024 * 1024 {
                Ok(out)
            } else {
                Err(format!("cannot decompress the kernel payload: {e}"))
            }
        }
    }
}

/// Whether an ELF64 kernel carries the PVH entry note in a PT_NOTE segment.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    if !elf.starts_with(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (le64(elf, 0x20), le16(elf, 0x36), le16(elf, 0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    for index in 0..usize::from(phnum).min(MAX_PROGRAM_HEADERS) {
        let Some(header) = index
            .checked_mul(usize::from(phentsize))
            .and_then(|o| o.checked_add(phoff))
        else {
            return false;
        };
        if le32(elf, header) != Some(PT_NOTE) {
            continue;
        }
        let field = |at: usize| header.checked_add(at).and_then(|at| le64(elf, at));
        let (Some(offset), Some(size)) = (field(8), field(32)) else {
            continue;
        };
        let (Ok(offset), Ok(size)) = (usize::try_from(offset), usize::try_from(size)) else {
            continue;
        };
        let Some(notes) = offset
            .checked_add(size)
            .and_then(|end| elf.get(offset..end))
        else {
            continue;
        };
        if notes_contain(notes, b"Xen", XEN_ELFNOTE_PHYS32_ENTRY) {
            return true;
        }
    }
    false
}

fn notes_contain(mut notes: &[u8], name: &[u8], kind: u32) -> bool {
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    while notes.len() >= 12 {
        let (Some(namesz), Some(descsz), Some(note_type)) =
            (le32(notes, 0), le32(notes, 4), le32(notes, 8))
        else {
            return false;
        };
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let Some(name_end) = align4(namesz).and_then(|n| n.checked_add(12)) else {
            return false;
        };
        let Some(next) = align4(descsz).and_then(|d| d.checked_add(name_end)) else {
            return false;
        };
        let Some(note_name) = notes.get(12..12 + namesz) else {
            return false;
        };
        if note_type == kind && note_name.strip_suffix(&[0]).unwrap_or(note_name) == name {
            return true;
        }
        notes = match notes.get(next..) {
            Some(rest) => rest,
            None => return false,
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE segment holding `name`/`kind`.
    fn elf_with_note(name: &[u8], kind: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x200];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&4u32.to_le_bytes());
        let mut note = Vec::new();
        note.extend_from_slice(&((name.len() + 1) as u32).to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&kind.to_le_bytes());
        note.extend_from_slice(name);
        note.push(0);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&0x100_0000u32.to_le_bytes());
        elf[0x40 + 8..0x40 + 16].copy_from_slice(&0x100u64.to_le_bytes());
        elf[0x40 + 32..0x40 + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        elf[0x100..0x100 + note.len()].copy_from_slice(&note);
        elf
    }

    #[test]
    fn pvh_note_is_found() {
        assert!(has_pvh_note(&elf_with_note(
            b"Xen",
            XEN_ELFNOTE_PHYS32_ENTRY
        )));
    }

    #[test]
    fn other_notes_are_not_pvh() {
        assert!(!has_pvh_note(&elf_with_note(b"Xen", 6)));
        assert!(!has_pvh_note(&elf_with_note(
            b"GNU",
            XEN_ELFNOTE_PHYS32_ENTRY
        )));
    }

    #[test]
    fn note_segment_past_the_end_is_ignored() {
        let mut elf = elf_with_note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY);
        elf[0x40 + 32..0x40 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(!has_pvh_note(&elf));
    }

    #[test]
    fn non_bzimage_is_not_applicable() {
        assert!(compressed_payload(&[0u8; 1024])
            .unwrap_err()
            .contains("not a bzImage"));
    }

    #[test]
    fn payload_past_the_end_is_refused() {
        let mut image = vec![0u8; 0x400];
        image[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xAA55u16.to_le_bytes());
        image[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        image[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        image[SETUP_SECTS] = 1;
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x10u32.to_le_bytes());
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(compressed_payload(&image)
            .unwrap_err()
            .contains("past the end"));
    }

    #[test]
    fn gzip_payload_round_trips() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"\x7fELF-payload").unwrap();
        let compressed = encoder.finish().unwrap();
        assert_eq!(decompress(&compressed).unwrap(), b"\x7fELF-payload");
    }

    #[test]
    fn kernel_decompression_bomb_is_refused_quickly() {
        // 256 GiB claimed by 8 MiB of zstd RLE blocks; the limit is lowered so the test does
        // not hold the real 512 MiB in memory.
        let bomb = crate::inflate::tests::zstd_rle_bomb(1 << 21);
        let started = std::time::Instant::now();
        let err = decompress_bounded(&bomb, 4 * 1024 * 1024).unwrap_err();
        assert!(err.contains("decompresses to over 4194304 bytes"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn unknown_compression_is_not_applicable() {
        assert!(decompress(b"\x02\x21\x4c\x18lz4")
            .unwrap_err()
            .contains("does not decode"));
    }
}

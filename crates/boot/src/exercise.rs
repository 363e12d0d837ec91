//! The boot crate's parsers of untrusted ISO content, run on raw bytes with bounded work: the
//! entry points of the fuzz targets (`fuzz/fuzz_targets/boot_*.rs`) and of the test that
//! replays their corpora (`tests/fuzz_corpus.rs`). Each returns what the parser made of the
//! bytes, so a replay can also check that real samples still parse.

use std::path::PathBuf;

use crate::direct::{find_default_entry, parse_grub, BootEntry, Files};
use crate::inflate::{Bounded, MAX_DECOMPRESSION_TIME};
use crate::initrd::{cpio_names, first_compressed, unpack, Unpack};

/// Plain output one initrd run may produce: enough for every corpus sample, small enough that
/// a fuzzer's iteration stays fast (production uses the guest-memory share, up to 1 GiB).
pub const INITRD_OUTPUT_LIMIT: u64 = 64 * 1024 * 1024;

/// An ISO as the config parsers see it, holding one text: every configuration path and every
/// INCLUDE reads `text` again (so the include bounds are exercised) and every kernel exists.
struct OneText {
    text: String,
}

impl Files for OneText {
    fn read_text(&self, _path: &str) -> Option<String> {
        Some(self.text.clone())
    }
    fn exists(&self, _path: &str) -> bool {
        true
    }
    fn describe(&self) -> PathBuf {
        PathBuf::from("fuzz input")
    }
}

/// `data` as an isolinux/syslinux configuration (then, if that yields no entry, as GRUB's):
/// the default boot entry, or why there is none.
pub fn isolinux_config(data: &[u8]) -> Result<BootEntry, String> {
    let files = OneText {
        text: String::from_utf8_lossy(data).into_owned(),
    };
    find_default_entry(&files)
        .map(|(_, entry)| entry)
        .map_err(|e| e.to_string())
}

/// `data` as a GRUB configuration: the default entry, or why there is none.
pub fn grub_config(data: &[u8]) -> Result<BootEntry, String> {
    parse_grub(&String::from_utf8_lossy(data))
}

/// What the initrd walk made of `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitrdWalk {
    /// Only plain cpio archives: their member names.
    Plain(Vec<String>),
    /// Compressed archives, turned into this many bytes of plain cpio.
    Unpacked(u64),
}

/// `data` walked as an initrd, as `--direct` does before booting: archives found, compressed
/// ones decoded (into nothing, at most [`INITRD_OUTPUT_LIMIT`] bytes), plain ones listed.
pub fn initrd(data: &[u8]) -> Result<InitrdWalk, String> {
    if first_compressed(data)?.is_none() {
        return cpio_names(data).map(InitrdWalk::Plain);
    }
    let mut sink = Bounded::new(std::io::sink(), INITRD_OUTPUT_LIMIT, MAX_DECOMPRESSION_TIME);
    match unpack(data, &mut sink) {
        Ok(()) => Ok(InitrdWalk::Unpacked(sink.written())),
        Err(Unpack::Refused(reason)) => Err(reason),
        Err(Unpack::Inflate(e, at)) => Err(format!("archive at {at:#x}: {e}")),
        Err(Unpack::Write(e)) => Err(e.to_string()),
    }
}

//! Copying a disc (an optical drive, a block device, a file) to an image: the size comes from
//! the volume descriptor and partition tables, bad reads are retried sector by sector, and the
//! copy is verified by re-reading both sides and comparing SHA-256 digests.

use std::io;

use serde::Serialize;
use sha2::{Digest, Sha256};
use vmedia_io::{Progress, ReadAt};

use super::error::ReadError;
use super::SECTOR_BYTES;

/// Large reads keep optical drives streaming; a multiple of the 2048-byte sector.
pub const RIP_BLOCK_BYTES: usize = 1024 * 1024;

/// How to copy.
#[derive(Debug, Clone, Copy)]
pub struct RipOptions {
    /// Bytes to copy (from [`IsoImage::recorded_size`](super::IsoImage::recorded_size)).
    pub size: u64,
    /// Attempts per sector after a failed large read.
    pub retries: u32,
    /// Fill sectors that stay unreadable with zeros instead of failing.
    pub allow_bad_sectors: bool,
    /// Re-read the source and the copy and compare digests.
    pub verify: bool,
}

/// What a copy did.
#[derive(Debug, Clone, Serialize)]
pub struct RipReport {
    pub bytes: u64,
    /// SHA-256 of the copied bytes, hex.
    pub sha256: String,
    /// Sectors that needed retries but were read in the end.
    pub recovered_sectors: Vec<u64>,
    /// Sectors that could not be read (zero-filled; only with `allow_bad_sectors`).
    pub bad_sectors: Vec<u64>,
    /// Whether the verify pass ran and matched.
    pub verified: bool,
}

/// An error while copying; the source offset is part of the message.
#[derive(Debug, thiserror::Error)]
pub enum RipError {
    #[error(
        "sector {sector} (offset {offset:#x}) is unreadable after {attempts} attempts: {source}"
    )]
    BadSector {
        sector: u64,
        offset: u64,
        attempts: u32,
        source: io::Error,
    },
    #[error("the source holds {available} bytes but the medium records {expected}; it is truncated or not the whole disc")]
    ShortSource { available: u64, expected: u64 },
    #[error("cannot write the copy at offset {offset:#x}: {source}")]
    Write { offset: u64, source: io::Error },
    #[error("cannot re-read {what} at offset {offset:#x} for verification: {source}")]
    VerifyRead {
        what: &'static str,
        offset: u64,
        source: io::Error,
    },
    #[error("verification failed: the source now reads as {source_sha256}, the copy as {copy_sha256}, the first pass as {first_sha256}")]
    Mismatch {
        first_sha256: String,
        source_sha256: String,
        copy_sha256: String,
    },
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Where the copy goes: positional writes, and reads back for verification.
pub trait RipTarget: ReadAt {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

impl RipTarget for std::fs::File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `opts.size` bytes of `source` to `target`, retrying and verifying as asked.
pub fn rip(
    source: &dyn ReadAt,
    target: &dyn RipTarget,
    opts: RipOptions,
    progress: &dyn Progress,
) -> Result<RipReport, RipError> {
    let available = source
        .size()
        .map_err(|e| ReadError::io("the source size", 0, e))?;
    if available < opts.size {
        return Err(RipError::ShortSource {
            available,
            expected: opts.size,
        });
    }
    progress.phase("copying");
    progress.set_total(if opts.verify {
        opts.size * 2
    } else {
        opts.size
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; RIP_BLOCK_BYTES];
    let mut recovered_sectors = Vec::new();
    let mut bad_sectors = Vec::new();
    let mut offset = 0u64;
    while offset < opts.size {
        let n = (opts.size - offset).min(RIP_BLOCK_BYTES as u64) as usize;
        let block = &mut buf[..n];
        if source.read_exact_at(block, offset).is_err() {
            read_sector_by_sector(
                source,
                block,
                offset,
                &opts,
                &mut recovered_sectors,
                &mut bad_sectors,
            )?;
        }
        target
            .write_all_at(block, offset)
            .map_err(|source| RipError::Write { offset, source })?;
        hasher.update(&*block);
        offset += n as u64;
        progress.advance(n as u64);
    }
    let sha256 = hex(&hasher.finalize());
    let mut verified = false;
    if opts.verify {
        progress.phase("verifying");
        let (again, copy) = rayon::join(
            || digest(source, opts.size, "the source", progress),
            || digest(target, opts.size, "the copy", &vmedia_io::NoProgress),
        );
        let (again, copy) = (again?, copy?);
        // Zero-filled bad sectors make the source differ; only the copy must match then.
        let source_ok = again == sha256 || !bad_sectors.is_empty();
        if !source_ok || copy != sha256 {
            return Err(RipError::Mismatch {
                first_sha256: sha256,
                source_sha256: again,
                copy_sha256: copy,
            });
        }
        verified = true;
    }
    Ok(RipReport {
        bytes: opts.size,
        sha256,
        recovered_sectors,
        bad_sectors,
        verified,
    })
}

fn read_sector_by_sector(
    source: &dyn ReadAt,
    block: &mut [u8],
    offset: u64,
    opts: &RipOptions,
    recovered: &mut Vec<u64>,
    bad: &mut Vec<u64>,
) -> Result<(), RipError> {
    for (i, sector) in block.chunks_mut(SECTOR_BYTES as usize).enumerate() {
        let at = offset + i as u64 * SECTOR_BYTES;
        let number = at / SECTOR_BYTES;
        let mut last_error = None;
        let attempts = opts.retries.max(1);
        for attempt in 0..attempts {
            match source.read_exact_at(sector, at) {
                Ok(()) => {
                    if attempt > 0 {
                        recovered.push(number);
                    }
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            if !opts.allow_bad_sectors {
                return Err(RipError::BadSector {
                    sector: number,
                    offset: at,
                    attempts,
                    source: e,
                });
            }
            sector.fill(0);
            bad.push(number);
        }
    }
    Ok(())
}

fn digest(
    source: &dyn ReadAt,
    size: u64,
    what: &'static str,
    progress: &dyn Progress,
) -> Result<String, RipError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; RIP_BLOCK_BYTES];
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(RIP_BLOCK_BYTES as u64) as usize;
        source
            .read_exact_at(&mut buf[..n], offset)
            .map_err(|source| RipError::VerifyRead {
                what,
                offset,
                source,
            })?;
        hasher.update(&buf[..n]);
        offset += n as u64;
        progress.advance(n as u64);
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A source whose sector 3 fails the first `failures` reads.
    struct Flaky {
        data: Vec<u8>,
        failures: Mutex<u32>,
    }

    impl ReadAt for Flaky {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let bad = 3 * SECTOR_BYTES;
            if offset <= bad && offset + buf.len() as u64 > bad {
                let mut left = self.failures.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    return Err(io::Error::other("medium error"));
                }
            }
            self.data.read_at(buf, offset)
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.data.len() as u64)
        }
    }

    struct Sink(Mutex<Vec<u8>>);
    impl ReadAt for Sink {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.0.lock().unwrap().read_at(buf, offset)
        }
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
    }
    impl RipTarget for Sink {
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut v = self.0.lock().unwrap();
            let end = offset as usize + buf.len();
            if v.len() < end {
                v.resize(end, 0);
            }
            v[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
    }

    fn data() -> Vec<u8> {
        (0..10 * 2048u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn retried_sector_is_recovered_and_verified() {
        let src = Flaky {
            data: data(),
            failures: Mutex::new(2),
        };
        let sink = Sink(Mutex::new(Vec::new()));
        let opts = RipOptions {
            size: 10 * 2048,
            retries: 3,
            allow_bad_sectors: false,
            verify: true,
        };
        let report = rip(&src, &sink, opts, &vmedia_io::NoProgress).unwrap();
        assert_eq!(report.recovered_sectors, vec![3]);
        assert!(report.verified);
        assert_eq!(*sink.0.lock().unwrap(), data());
    }

    #[test]
    fn unreadable_sector_fails_with_its_number() {
        let src = Flaky {
            data: data(),
            failures: Mutex::new(100),
        };
        let sink = Sink(Mutex::new(Vec::new()));
        let opts = RipOptions {
            size: 10 * 2048,
            retries: 3,
            allow_bad_sectors: false,
            verify: false,
        };
        let err = rip(&src, &sink, opts, &vmedia_io::NoProgress).unwrap_err();
        assert!(err.to_string().contains("sector 3"), "{err}");
    }

    #[test]
    fn short_source_is_refused() {
        let src = Flaky {
            data: data(),
            failures: Mutex::new(0),
        };
        let sink = Sink(Mutex::new(Vec::new()));
        let opts = RipOptions {
            size: 11 * 2048,
            retries: 1,
            allow_bad_sectors: false,
            verify: false,
        };
        assert!(matches!(
            rip(&src, &sink, opts, &vmedia_io::NoProgress),
            Err(RipError::ShortSource { .. })
        ));
    }
}

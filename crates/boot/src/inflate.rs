//! Bounded decompression for the direct fast path: every gzip, xz or zstd stream vmedia-boot
//! decodes (kernel payloads, initrd archives) goes through [`decode_stream`] into a
//! [`Bounded`] sink, which stops the decoder once the output passes its byte limit or the
//! time budget runs out.
//!
//! Why both bounds: a decompression bomb (a few KiB of zstd RLE blocks or xz can claim
//! terabytes) would otherwise cost unbounded CPU before any size check runs. The byte limit is
//! what bounds CPU in practice: each decoder does work proportional to the input it consumes
//! (capped by the callers' input limits) plus the output it produces (capped here), so a run is
//! at most a few seconds of host CPU. The time budget is a second, independent backstop for a
//! host so loaded that even that work drags on; hitting it only means the guest decompresses
//! the file itself. Decoder memory is bounded too: liblzma gets a memory limit, zstd refuses
//! windows over its default 128 MiB (`ZSTD_WINDOWLOG_LIMIT_DEFAULT`), gzip needs 32 KiB.

use std::io::Write;
use std::time::{Duration, Instant};

/// liblzma's memory limit: the kernel's own xz decoder handles dictionaries far below this;
/// a larger demand is a hostile header.
pub(crate) const MAX_XZ_DECODER_MEMORY: u64 = 256 * 1024 * 1024;
/// Wall-clock budget for one decompression job (a whole initrd or one kernel): real ones take
/// well under 5 s on a loaded 2-core host; past this the job is abandoned, not retried.
pub(crate) const MAX_DECOMPRESSION_TIME: Duration = Duration::from_secs(60);
/// Decoder output buffer.
const OUTPUT_BUFFER: usize = 1024 * 1024;

/// The compressed formats vmedia decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// The format whose magic starts `data`.
    pub(crate) fn detect(data: &[u8]) -> Option<Compression> {
        if data.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// Why a bounded decompression stopped early.
#[derive(Debug)]
pub(crate) enum InflateError {
    /// The output passed the byte limit (the limit, in bytes).
    TooLarge(u64),
    /// The time budget ran out (the budget).
    TooSlow(Duration),
    /// The stream is corrupt or cut short, or the sink failed.
    Stream(std::io::Error),
}

impl std::fmt::Display for InflateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InflateError::TooLarge(limit) => write!(
                f,
                "it decompresses to over {limit} bytes (a decompression bomb or not a boot file)"
            ),
            InflateError::TooSlow(budget) => write!(
                f,
                "decompressing it took longer than {} s",
                budget.as_secs()
            ),
            InflateError::Stream(e) => write!(f, "{e}"),
        }
    }
}

/// A writer that counts what passes through and refuses output past `limit` bytes or after
/// `deadline`. The refusal is remembered, so an error the decoder wraps is still told apart
/// from a corrupt stream.
pub(crate) struct Bounded<W: Write> {
    inner: W,
    written: u64,
    limit: u64,
    deadline: Instant,
    budget: Duration,
    stopped: Option<Stop>,
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Size,
    Time,
}

impl<W: Write> Bounded<W> {
    /// At most `limit` bytes within `budget` from now.
    pub(crate) fn new(inner: W, limit: u64, budget: Duration) -> Bounded<W> {
        Bounded {
            inner,
            written: 0,
            limit,
            deadline: Instant::now() + budget,
            budget,
            stopped: None,
        }
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    /// The typed reason for a failed write (the bound that was hit, else the I/O error).
    pub(crate) fn explain(&self, error: std::io::Error) -> InflateError {
        match self.stopped {
            Some(Stop::Size) => InflateError::TooLarge(self.limit),
            Some(Stop::Time) => InflateError::TooSlow(self.budget),
            None => InflateError::Stream(error),
        }
    }
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let total = self.written.saturating_add(buf.len() as u64);
        if total > self.limit {
            self.stopped = Some(Stop::Size);
            return Err(std::io::Error::other(
                "decompressed output over its size limit",
            ));
        }
        if Instant::now() > self.deadline {
            self.stopped = Some(Stop::Time);
            return Err(std::io::Error::other("decompression over its time budget"));
        }
        self.inner.write_all(buf)?;
        self.written = total;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Decodes the single `kind` stream at the start of `input` into `out`, returning how many
/// input bytes the stream used (data after it, such as the next initrd archive or the size
/// word the kernel's build appends, is left alone).
pub(crate) fn decode_stream<W: Write>(
    kind: Compression,
    input: &[u8],
    out: &mut Bounded<W>,
) -> std::result::Result<usize, InflateError> {
    let _span = tracing::info_span!("decompress", ?kind, input_bytes = input.len()).entered();
    let mut rest: &[u8] = input;
    let result = match kind {
        Compression::Gzip => {
            // The bufread decoder consumes exactly the member it decodes from `rest`.
            std::io::copy(&mut flate2::bufread::GzDecoder::new(&mut rest), out).map(|_| ())
        }
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(&mut rest)
            .and_then(|d| std::io::copy(&mut d.single_frame(), out))
            .map(|_| ()),
        Compression::Xz => match xz_stream(input, out) {
            Ok(used) => {
                tracing::debug!(output_bytes = out.written(), "decompressed");
                return Ok(used);
            }
            Err(e) => return Err(out.explain(e)),
        },
    };
    match result {
        Ok(()) => {
            tracing::debug!(output_bytes = out.written(), "decompressed");
            Ok(input.len() - rest.len())
        }
        Err(e) => Err(out.explain(e)),
    }
}

/// Decodes the one xz stream at the start of `input` into `out`; returns the input it used.
/// (xz2's reader reports data after a finished stream as corruption, so liblzma is driven
/// directly.)
fn xz_stream(input: &[u8], out: &mut dyn Write) -> std::io::Result<usize> {
    use xz2::stream::{Action, Status, Stream};
    let mut stream = Stream::new_stream_decoder(MAX_XZ_DECODER_MEMORY, 0)?;
    let mut buf = vec![0u8; OUTPUT_BUFFER];
    loop {
        let used = usize::try_from(stream.total_in()).unwrap_or(usize::MAX);
        let before_out = stream.total_out();
        let status =
            stream.process(input.get(used..).unwrap_or_default(), &mut buf, Action::Run)?;
        let produced = usize::try_from(stream.total_out().saturating_sub(before_out))
            .unwrap_or(0)
            .min(buf.len());
        out.write_all(&buf[..produced])?;
        let now_used = usize::try_from(stream.total_in()).unwrap_or(usize::MAX);
        if status == Status::StreamEnd {
            return Ok(now_used);
        }
        if produced == 0 && now_used == used {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "xz stream cut short",
            ));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A zstd frame of `blocks` RLE blocks of 128 KiB each: 4 bytes of input per 128 KiB of
    /// output, so a few MiB claim hundreds of GiB. Built by hand from RFC 8878 (frame header:
    /// no content size, a 128 KiB window; block header: last flag, type 1 = RLE, size).
    pub(crate) fn zstd_rle_bomb(blocks: usize) -> Vec<u8> {
        const BLOCK: u32 = 128 * 1024;
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
        for index in 0..blocks {
            let last = u32::from(index + 1 == blocks);
            let header = (BLOCK << 3) | (1 << 1) | last;
            frame.extend_from_slice(&header.to_le_bytes()[..3]);
            frame.push(0);
        }
        frame
    }

    #[test]
    fn the_hand_made_zstd_frame_is_valid() {
        let data = zstd::decode_all(&zstd_rle_bomb(2)[..]).unwrap();
        assert_eq!(data.len(), 256 * 1024);
        assert!(data.iter().all(|&b| b == 0));
    }

    #[test]
    fn zstd_bomb_stops_at_the_output_limit_quickly() {
        // 2^21 blocks claim 256 GiB; unbounded, this would decode for minutes.
        let bomb = zstd_rle_bomb(1 << 21);
        let started = Instant::now();
        let mut out = Bounded::new(std::io::sink(), 1024 * 1024, MAX_DECOMPRESSION_TIME);
        let err = decode_stream(Compression::Zstd, &bomb, &mut out).unwrap_err();
        assert!(matches!(err, InflateError::TooLarge(_)), "{err}");
        assert!(out.written() <= 1024 * 1024);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn xz_and_gzip_bombs_stop_at_the_output_limit() {
        let zeros = vec![0u8; 16 * 1024 * 1024];
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&zeros).unwrap();
        let xz = xz.finish().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&zeros).unwrap();
        let gz = gz.finish().unwrap();
        for (kind, data) in [(Compression::Xz, xz), (Compression::Gzip, gz)] {
            let mut out = Bounded::new(std::io::sink(), 1024 * 1024, MAX_DECOMPRESSION_TIME);
            let err = decode_stream(kind, &data, &mut out).unwrap_err();
            assert!(matches!(err, InflateError::TooLarge(_)), "{kind:?}: {err}");
        }
    }

    #[test]
    fn an_expired_time_budget_stops_the_decoder() {
        let mut out = Bounded::new(std::io::sink(), u64::MAX, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        let err = decode_stream(Compression::Zstd, &zstd_rle_bomb(4), &mut out).unwrap_err();
        assert!(matches!(err, InflateError::TooSlow(_)), "{err}");
    }

    #[test]
    fn the_used_input_stops_at_the_end_of_the_stream() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"payload").unwrap();
        let mut data = gz.finish().unwrap();
        let length = data.len();
        data.extend_from_slice(b"\x07\x00\x00\x00trailing");
        let mut out = Bounded::new(Vec::new(), 1024, MAX_DECOMPRESSION_TIME);
        assert_eq!(
            decode_stream(Compression::Gzip, &data, &mut out).unwrap(),
            length
        );
        assert_eq!(out.into_inner(), b"payload");
    }
}

//! The hashing engine: MD5 (with isomd5sum's fragment checkpoints) and SHA-256 on two threads.
//!
//! One thread reads large positional chunks and runs SHA-256; it hands every buffer to the MD5
//! thread, so each byte leaves the page cache once and the MD5 (a chain that cannot be split,
//! and the slower of the two) only hashes. The application-use area is hashed as spaces, as
//! isomd5sum does.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use md5::{Digest, Md5};
use sha2::Sha256;
use vmedia_io::{Progress, ReadAt};

/// Bytes per read: a multiple of isomd5sum's 32 KiB step, large enough that syscalls vanish from
/// the profile, small enough to stay in the CPU cache between the read and the hash.
const READ_CHUNK: usize = 1 << 20;
/// checkisomd5 reads and checkpoints in steps of 16 sectors; fragment sums depend on it.
pub const CHECKER_STEP: u64 = 16 * 2048;

/// What the MD5 thread computes.
pub struct Md5Plan {
    /// Bytes hashed from offset 0 (the volume minus the skipped sectors).
    pub length: u64,
    pub fragment_count: u64,
}

/// MD5 digest plus the state at every fragment checkpoint checkisomd5 visits.
pub struct Md5Outcome {
    pub digest: [u8; 16],
    /// `checkpoints[k]` is the MD5 state (finalised copy) when checkisomd5 enters fragment `k`;
    /// index 0 is never visited.
    pub checkpoints: Vec<Option<[u8; 16]>>,
}

/// Where a read failed.
pub struct ReadFailure {
    pub offset: u64,
    pub error: io::Error,
}

/// Hashes `source` as planned; `blank` is hashed as spaces.
///
/// With both digests, one thread reads and runs SHA-256 (the faster hash) and hands each
/// buffer to the MD5 thread, so every byte is copied out of the page cache once and the MD5,
/// the critical path, does nothing but hash.
pub fn hash_image(
    source: &dyn ReadAt,
    md5_plan: Option<&Md5Plan>,
    sha256_length: Option<u64>,
    blank: Range<u64>,
    progress: &dyn Progress,
) -> Result<(Option<Md5Outcome>, Option<[u8; 32]>), ReadFailure> {
    let total = md5_plan
        .map_or(0, |p| p.length)
        .max(sha256_length.unwrap_or(0));
    progress.set_total(total);
    let tracker = Tracker::new(progress, md5_plan.is_some(), sha256_length.is_some());
    match (md5_plan, sha256_length) {
        (None, None) => Ok((None, None)),
        (Some(plan), None) => {
            let mut runner = Md5Runner::new(plan);
            let mut buffer = vec![0u8; READ_CHUNK];
            while runner.offset < plan.length {
                let len = (plan.length - runner.offset).min(READ_CHUNK as u64) as usize;
                read_blanked(source, &mut buffer[..len], runner.offset, &blank)?;
                runner.feed(&buffer[..len]);
                tracker.md5_at(runner.offset);
            }
            tracker.md5_at(u64::MAX);
            Ok((Some(runner.finish()), None))
        }
        (None, Some(sha_length)) => {
            let sha = read_with_sha(source, sha_length, sha_length, None, &blank, &tracker)?;
            Ok((None, Some(sha)))
        }
        (Some(plan), Some(sha_length)) => std::thread::scope(|scope| {
            let (to_md5, from_reader) = mpsc::sync_channel::<(Arc<Vec<u8>>, usize)>(PIPELINE_DEPTH);
            let (recycle, recycled) = mpsc::channel::<Arc<Vec<u8>>>();
            let tracker = &tracker;
            let md5_thread = scope.spawn(move || {
                let mut runner = Md5Runner::new(plan);
                for (buffer, len) in from_reader {
                    let take = (plan.length - runner.offset).min(len as u64) as usize;
                    runner.feed(&buffer[..take]);
                    tracker.md5_at(runner.offset);
                    // The reader may have stopped already; then the buffer is simply freed.
                    let _ = recycle.send(buffer);
                    if runner.offset >= plan.length {
                        break;
                    }
                }
                tracker.md5_at(u64::MAX);
                runner
            });
            let total = plan.length.max(sha_length);
            let sha = read_with_sha(
                source,
                total,
                sha_length,
                Some((to_md5, recycled, plan.length)),
                &blank,
                tracker,
            );
            let runner = match md5_thread.join() {
                Ok(runner) => runner,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            let sha = sha?;
            if runner.offset < plan.length {
                return Err(ReadFailure {
                    offset: runner.offset,
                    error: io::Error::other("the MD5 worker stopped early"),
                });
            }
            Ok((Some(runner.finish()), Some(sha)))
        }),
    }
}

/// Buffers in flight between the reader and the MD5 thread: enough to absorb jitter, small
/// enough to stay cache- and memory-friendly.
const PIPELINE_DEPTH: usize = 4;

type Md5Feed = (
    mpsc::SyncSender<(Arc<Vec<u8>>, usize)>,
    mpsc::Receiver<Arc<Vec<u8>>>,
    u64,
);

/// Reads `[0, total)`, hashes `[0, sha_length)` with SHA-256 and, with `md5`, hands every
/// buffer starting below the MD5 length to the MD5 thread.
fn read_with_sha(
    source: &dyn ReadAt,
    total: u64,
    sha_length: u64,
    md5: Option<Md5Feed>,
    blank: &Range<u64>,
    tracker: &Tracker,
) -> Result<[u8; 32], ReadFailure> {
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    let mut allocated = 0usize;
    let mut spare: Option<Arc<Vec<u8>>> = None;
    while offset < total {
        let len = (total - offset).min(READ_CHUNK as u64) as usize;
        let mut buffer = match (spare.take(), &md5) {
            (Some(buffer), _) => buffer,
            (None, None) => Arc::new(vec![0u8; READ_CHUNK]),
            (None, Some((_, recycled, _))) => match recycled.try_recv() {
                Ok(buffer) => buffer,
                Err(mpsc::TryRecvError::Empty) if allocated < PIPELINE_DEPTH + 2 => {
                    allocated += 1;
                    Arc::new(vec![0u8; READ_CHUNK])
                }
                // Wait for the MD5 thread to hand one back; if it has finished, make one.
                Err(mpsc::TryRecvError::Empty) => recycled
                    .recv()
                    .unwrap_or_else(|_| Arc::new(vec![0u8; READ_CHUNK])),
                Err(mpsc::TryRecvError::Disconnected) => Arc::new(vec![0u8; READ_CHUNK]),
            },
        };
        // Every clone of a recycled buffer has been dropped (the MD5 thread sent its own back,
        // this thread dropped its own last round), so this never copies.
        let data = Arc::make_mut(&mut buffer);
        read_blanked(source, &mut data[..len], offset, blank)?;
        let mut shared = false;
        if let Some((to_md5, _, md5_length)) = &md5 {
            if offset < *md5_length {
                // A closed channel means the MD5 thread is done with its range.
                shared = to_md5.send((Arc::clone(&buffer), len)).is_ok();
            }
        }
        if offset < sha_length {
            let take = (sha_length - offset).min(len as u64) as usize;
            hasher.update(&buffer[..take]);
        }
        offset += len as u64;
        tracker.sha_at(offset);
        // A buffer the MD5 thread never saw stays here for the next round.
        if !shared {
            spare = Some(buffer);
        }
    }
    tracker.sha_at(u64::MAX);
    Ok(hasher.finalize().into())
}

/// MD5 with isomd5sum's checkpoints, fed with consecutive pieces of any length from offset 0
/// (a checkpoint is taken at the end of each 32 KiB step of the checker, however the pieces
/// fall).
pub(super) struct Md5Runner {
    hasher: Md5,
    checkpoints: Vec<Option<[u8; 16]>>,
    previous_fragment: u64,
    fragment_size: u64,
    offset: u64,
    length: u64,
}

impl Md5Runner {
    pub(super) fn new(plan: &Md5Plan) -> Md5Runner {
        // Bounded by the record parser (at most MAX_FRAGMENT_COUNT) or our own constant.
        let slots = usize::try_from(plan.fragment_count)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        Md5Runner {
            hasher: Md5::new(),
            checkpoints: vec![None; slots],
            previous_fragment: 0,
            // checkisomd5 divides by this; zero (a tiny volume) means no checkpoint is crossed.
            fragment_size: plan.length / plan.fragment_count.saturating_add(1),
            offset: 0,
            length: plan.length,
        }
    }

    /// Hashes the next bytes. checkisomd5 looks at its fragment number once per step, after
    /// hashing the step, using the offset where the step began.
    pub(super) fn feed(&mut self, mut piece: &[u8]) {
        while !piece.is_empty() {
            let step_start = self.offset - self.offset % CHECKER_STEP;
            let into_step = (self.offset - step_start) as usize;
            let take = piece.len().min(CHECKER_STEP as usize - into_step);
            self.hasher.update(&piece[..take]);
            piece = &piece[take..];
            self.offset += take as u64;
            // A step ends at its full length or where the input ends (the final short step);
            // the caller never feeds past the planned length.
            if self.offset.is_multiple_of(CHECKER_STEP) || piece.is_empty() && self.at_end() {
                self.checkpoint(step_start);
            }
        }
    }

    fn at_end(&self) -> bool {
        self.offset >= self.length
    }

    fn checkpoint(&mut self, step_start: u64) {
        if let Some(fragment) = step_start.checked_div(self.fragment_size) {
            if fragment != self.previous_fragment {
                if let Some(slot) = usize::try_from(fragment)
                    .ok()
                    .and_then(|i| self.checkpoints.get_mut(i))
                {
                    *slot = Some(self.hasher.clone().finalize().into());
                }
                self.previous_fragment = fragment;
            }
        }
    }

    /// Bytes hashed so far.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    pub(super) fn finish(self) -> Md5Outcome {
        Md5Outcome {
            digest: self.hasher.finalize().into(),
            checkpoints: self.checkpoints,
        }
    }
}

/// Overwrites the part of `buf` (which holds the bytes at `offset`) inside `blank` with spaces.
pub(super) fn blank_out(buf: &mut [u8], offset: u64, blank: &Range<u64>) {
    let end = offset + buf.len() as u64;
    let start = blank.start.max(offset);
    let stop = blank.end.min(end);
    if start < stop {
        buf[(start - offset) as usize..(stop - offset) as usize].fill(b' ');
    }
}

/// Reads `buf` at `offset` and overwrites the part inside `blank` with spaces.
fn read_blanked(
    source: &dyn ReadAt,
    buf: &mut [u8],
    offset: u64,
    blank: &Range<u64>,
) -> Result<(), ReadFailure> {
    source
        .read_exact_at(buf, offset)
        .map_err(|error| ReadFailure { offset, error })?;
    blank_out(buf, offset, blank);
    Ok(())
}

/// Reports the slower thread's position, so the bar never runs ahead of the work.
struct Tracker<'p> {
    progress: &'p dyn Progress,
    md5: AtomicU64,
    sha: AtomicU64,
    reported: Mutex<u64>,
}

impl<'p> Tracker<'p> {
    fn new(progress: &'p dyn Progress, md5: bool, sha: bool) -> Self {
        // A digest that is not computed counts as finished from the start.
        let idle = |active: bool| AtomicU64::new(if active { 0 } else { u64::MAX });
        Tracker {
            progress,
            md5: idle(md5),
            sha: idle(sha),
            reported: Mutex::new(0),
        }
    }
    fn md5_at(&self, offset: u64) {
        self.md5.store(offset, Ordering::Relaxed);
        self.report();
    }
    fn sha_at(&self, offset: u64) {
        self.sha.store(offset, Ordering::Relaxed);
        self.report();
    }
    fn report(&self) {
        let position = self
            .md5
            .load(Ordering::Relaxed)
            .min(self.sha.load(Ordering::Relaxed));
        let Ok(mut reported) = self.reported.lock() else {
            return;
        };
        if position != u64::MAX && position > *reported {
            self.progress.advance(position - *reported);
            *reported = position;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmedia_io::NoProgress;

    #[test]
    fn blank_range_hashes_as_spaces() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut expected_input = data.clone();
        expected_input[40_000..40_512].fill(b' ');
        let (md5, sha) = hash_image(
            &data,
            Some(&Md5Plan {
                length: 90_000,
                fragment_count: 20,
            }),
            Some(100_000),
            40_000..40_512,
            &NoProgress,
        )
        .unwrap_or_else(|f| panic!("read failed at {}: {}", f.offset, f.error));
        let md5 = md5.unwrap();
        assert_eq!(
            md5.digest,
            <[u8; 16]>::from(Md5::digest(&expected_input[..90_000]))
        );
        assert_eq!(
            sha.unwrap(),
            <[u8; 32]>::from(Sha256::digest(&expected_input))
        );
    }

    #[test]
    fn checkpoints_follow_the_checker_steps() {
        // 21 steps of 32 KiB with 20 fragments: one step per fragment, so fragment k's state is
        // the MD5 of the first k+1 steps.
        let length = 21 * CHECKER_STEP;
        let data: Vec<u8> = (0..length).map(|i| (i % 253) as u8).collect();
        let (md5, _) = hash_image(
            &data,
            Some(&Md5Plan {
                length,
                fragment_count: 20,
            }),
            None,
            0..0,
            &NoProgress,
        )
        .unwrap_or_else(|f| panic!("read failed at {}: {}", f.offset, f.error));
        let md5 = md5.unwrap();
        assert!(md5.checkpoints[0].is_none());
        for k in 1..=20usize {
            let end = (k as u64 + 1) * CHECKER_STEP;
            let expected: [u8; 16] = Md5::digest(&data[..end as usize]).into();
            assert_eq!(md5.checkpoints[k], Some(expected), "fragment {k}");
        }
    }

    #[test]
    fn checkpoints_do_not_depend_on_how_the_input_is_cut() {
        // A streaming check sees chunk boundaries anywhere; the checkpoints must be those of
        // checkisomd5's 32 KiB steps all the same, including a short final step.
        let length = 23 * CHECKER_STEP + 1000;
        let data: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
        let plan = Md5Plan {
            length,
            fragment_count: 20,
        };
        let mut aligned = Md5Runner::new(&plan);
        aligned.feed(&data);
        let aligned = aligned.finish();
        for cut in [1usize, 4093, 65_537, 300_001] {
            let mut runner = Md5Runner::new(&plan);
            for piece in data.chunks(cut) {
                runner.feed(piece);
            }
            let outcome = runner.finish();
            assert_eq!(outcome.digest, aligned.digest, "pieces of {cut}");
            assert_eq!(outcome.checkpoints, aligned.checkpoints, "pieces of {cut}");
        }
        assert!(aligned.checkpoints.iter().skip(1).all(Option::is_some));
    }

    #[test]
    fn sha_range_far_beyond_the_md5_range() {
        // The reader keeps going for SHA-256 long after the MD5 thread has finished.
        let data: Vec<u8> = (0..12_000_000u32).map(|i| (i % 241) as u8).collect();
        let (md5, sha) = hash_image(
            &data,
            Some(&Md5Plan {
                length: 1_000_000,
                fragment_count: 20,
            }),
            Some(12_000_000),
            0..0,
            &NoProgress,
        )
        .unwrap_or_else(|f| panic!("read failed at {}: {}", f.offset, f.error));
        assert_eq!(
            md5.unwrap().digest,
            <[u8; 16]>::from(Md5::digest(&data[..1_000_000]))
        );
        assert_eq!(sha.unwrap(), <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn md5_range_beyond_the_sha_range() {
        let data: Vec<u8> = (0..9_000_000u32).map(|i| (i % 239) as u8).collect();
        let (md5, sha) = hash_image(
            &data,
            Some(&Md5Plan {
                length: 9_000_000,
                fragment_count: 20,
            }),
            Some(2_500_000),
            0..0,
            &NoProgress,
        )
        .unwrap_or_else(|f| panic!("read failed at {}: {}", f.offset, f.error));
        assert_eq!(md5.unwrap().digest, <[u8; 16]>::from(Md5::digest(&data)));
        assert_eq!(
            sha.unwrap(),
            <[u8; 32]>::from(Sha256::digest(&data[..2_500_000]))
        );
    }

    #[test]
    fn each_digest_alone_matches() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 233) as u8).collect();
        let plan = Md5Plan {
            length: 3_000_000,
            fragment_count: 20,
        };
        let (md5, sha) = hash_image(&data, Some(&plan), None, 0..0, &NoProgress)
            .unwrap_or_else(|f| panic!("{}", f.error));
        assert!(sha.is_none());
        assert_eq!(md5.unwrap().digest, <[u8; 16]>::from(Md5::digest(&data)));
        let (md5, sha) = hash_image(&data, None, Some(3_000_000), 0..0, &NoProgress)
            .unwrap_or_else(|f| panic!("{}", f.error));
        assert!(md5.is_none());
        assert_eq!(sha.unwrap(), <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn truncated_source_with_both_digests_fails_without_hanging() {
        let data = vec![0u8; 5_000_000];
        let failure = hash_image(
            &data,
            Some(&Md5Plan {
                length: 4_000_000,
                fragment_count: 20,
            }),
            Some(9_000_000),
            0..0,
            &NoProgress,
        )
        .err()
        .unwrap();
        assert_eq!(failure.offset, 4 << 20);
    }

    #[test]
    fn truncated_source_reports_the_offset() {
        let data = vec![0u8; 10];
        let failure = hash_image(&data, None, Some(20), 0..0, &NoProgress)
            .err()
            .unwrap();
        assert_eq!(failure.offset, 0);
    }
}

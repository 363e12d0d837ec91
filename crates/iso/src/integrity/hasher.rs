//! The hashing engine: MD5 (with isomd5sum's fragment checkpoints) and SHA-256 on two threads.
//!
//! Each digest runs on its own thread with its own large positional reads, so neither waits for
//! the other; the second read of each block comes from the page cache, which costs far less than
//! the hashing. The application-use area is hashed as spaces, as isomd5sum does.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
pub fn hash_image(
    source: &dyn ReadAt,
    md5_plan: Option<&Md5Plan>,
    sha256_length: Option<u64>,
    blank: Range<u64>,
    progress: &dyn Progress,
) -> Result<(Option<Md5Outcome>, Option<[u8; 32]>), ReadFailure> {
    let total = md5_plan.map_or(0, |p| p.length).max(sha256_length.unwrap_or(0));
    progress.set_total(total);
    let tracker = Tracker::new(progress, md5_plan.is_some(), sha256_length.is_some());
    let (md5, sha) = std::thread::scope(|scope| {
        let sha_thread = sha256_length.map(|length| {
            let blank = blank.clone();
            let tracker = &tracker;
            scope.spawn(move || hash_sha256(source, length, blank, tracker))
        });
        let md5 = md5_plan.map(|plan| hash_md5(source, plan, blank.clone(), &tracker));
        let sha = sha_thread.map(|handle| match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        });
        (md5, sha)
    });
    Ok((md5.transpose()?, sha.transpose()?))
}

fn hash_md5(
    source: &dyn ReadAt,
    plan: &Md5Plan,
    blank: Range<u64>,
    tracker: &Tracker,
) -> Result<Md5Outcome, ReadFailure> {
    // checkisomd5 divides by this; a zero (tiny volume) means no checkpoint is ever crossed.
    let fragment_size = plan.length / plan.fragment_count.saturating_add(1);
    let checkpoint_slots = usize::try_from(plan.fragment_count).unwrap_or(usize::MAX).saturating_add(1);
    let mut checkpoints = vec![None; checkpoint_slots];
    let mut hasher = Md5::new();
    let mut previous_fragment = 0u64;
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    while offset < plan.length {
        let len = (plan.length - offset).min(READ_CHUNK as u64) as usize;
        let chunk = &mut buffer[..len];
        read_blanked(source, chunk, offset, &blank)?;
        let mut step_offset = offset;
        for step in chunk.chunks(CHECKER_STEP as usize) {
            hasher.update(step);
            if let Some(fragment) = step_offset.checked_div(fragment_size) {
                if fragment != previous_fragment {
                    if let Some(slot) = usize::try_from(fragment).ok().and_then(|i| checkpoints.get_mut(i)) {
                        *slot = Some(hasher.clone().finalize().into());
                    }
                    previous_fragment = fragment;
                }
            }
            step_offset += step.len() as u64;
        }
        offset += len as u64;
        tracker.md5_at(offset);
    }
    tracker.md5_at(u64::MAX);
    Ok(Md5Outcome { digest: hasher.finalize().into(), checkpoints })
}

fn hash_sha256(
    source: &dyn ReadAt,
    length: u64,
    blank: Range<u64>,
    tracker: &Tracker,
) -> Result<[u8; 32], ReadFailure> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    while offset < length {
        let len = (length - offset).min(READ_CHUNK as u64) as usize;
        let chunk = &mut buffer[..len];
        read_blanked(source, chunk, offset, &blank)?;
        hasher.update(&*chunk);
        offset += len as u64;
        tracker.sha_at(offset);
    }
    tracker.sha_at(u64::MAX);
    Ok(hasher.finalize().into())
}

/// Reads `buf` at `offset` and overwrites the part inside `blank` with spaces.
fn read_blanked(
    source: &dyn ReadAt,
    buf: &mut [u8],
    offset: u64,
    blank: &Range<u64>,
) -> Result<(), ReadFailure> {
    source.read_exact_at(buf, offset).map_err(|error| ReadFailure { offset, error })?;
    let end = offset + buf.len() as u64;
    let start = blank.start.max(offset);
    let stop = blank.end.min(end);
    if start < stop {
        buf[(start - offset) as usize..(stop - offset) as usize].fill(b' ');
    }
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
        Tracker { progress, md5: idle(md5), sha: idle(sha), reported: Mutex::new(0) }
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
        let position = self.md5.load(Ordering::Relaxed).min(self.sha.load(Ordering::Relaxed));
        let Ok(mut reported) = self.reported.lock() else { return };
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
            Some(&Md5Plan { length: 90_000, fragment_count: 20 }),
            Some(100_000),
            40_000..40_512,
            &NoProgress,
        )
        .unwrap_or_else(|f| panic!("read failed at {}: {}", f.offset, f.error));
        let md5 = md5.unwrap();
        assert_eq!(md5.digest, <[u8; 16]>::from(Md5::digest(&expected_input[..90_000])));
        assert_eq!(sha.unwrap(), <[u8; 32]>::from(Sha256::digest(&expected_input)));
    }

    #[test]
    fn checkpoints_follow_the_checker_steps() {
        // 21 steps of 32 KiB with 20 fragments: one step per fragment, so fragment k's state is
        // the MD5 of the first k+1 steps.
        let length = 21 * CHECKER_STEP;
        let data: Vec<u8> = (0..length).map(|i| (i % 253) as u8).collect();
        let (md5, _) =
            hash_image(&data, Some(&Md5Plan { length, fragment_count: 20 }), None, 0..0, &NoProgress)
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
    fn truncated_source_reports_the_offset() {
        let data = vec![0u8; 10];
        let failure = hash_image(&data, None, Some(20), 0..0, &NoProgress).err().unwrap();
        assert_eq!(failure.offset, 0);
    }
}

//! `ImplantTask`: hashes an image while it is being written, reading just behind the writer.
//!
//! The writer reports each finished range with [`ImplantTask::written`]; the hashing threads
//! read a range only once everything before its end has been reported (or the writer said it
//! is done), so they see final bytes, from the page cache, while the writer is still busy.
//! MD5 is a chain and cannot be split across cores; overlapping it with the write is what
//! keeps "write + checksums" close to the cost of the MD5 alone.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmedia_io::{Progress, ReadAt};

use super::{compute_implant, ComputedImplant, Implant, ImplantOptions, IntegrityError};

/// How often `finish` refreshes the caller's progress while the hashing catches up.
const PROGRESS_TICK: Duration = Duration::from_millis(50);

/// Background hashing of an image being written; see the module docs.
pub struct ImplantTask {
    gate: Arc<Gate>,
    file: File,
    image_bytes: u64,
    hashed: Arc<AtomicU64>,
    worker: Option<JoinHandle<Result<ComputedImplant, IntegrityError>>>,
}

impl ImplantTask {
    /// Starts hashing `file`, which will hold an image of `image_bytes` bytes when the writer
    /// is done. Nothing is read before the writer reports it.
    pub fn start(
        file: &File,
        image_bytes: u64,
        opts: ImplantOptions,
    ) -> Result<ImplantTask, IntegrityError> {
        let clone = |file: &File| {
            file.try_clone()
                .map_err(|source| IntegrityError::Read { offset: 0, source })
        };
        let gate = Arc::new(Gate::default());
        let hashed = Arc::new(AtomicU64::new(0));
        let source = GatedSource {
            file: clone(file)?,
            gate: Arc::clone(&gate),
            image_bytes,
        };
        let counter = Counter {
            hashed: Arc::clone(&hashed),
        };
        let worker = std::thread::Builder::new()
            .name("vmedia-implant".into())
            .spawn(move || compute_implant(&source, image_bytes, &opts, &counter))
            .map_err(|source| IntegrityError::Read { offset: 0, source })?;
        Ok(ImplantTask {
            gate,
            file: clone(file)?,
            image_bytes,
            hashed,
            worker: Some(worker),
        })
    }

    /// Reports that `[offset, offset + len)` now holds its final bytes.
    pub fn written(&self, offset: u64, len: u64) {
        let Ok(mut state) = self.gate.state.lock() else {
            return;
        };
        state.add(offset, offset.saturating_add(len));
        self.gate.changed.notify_all();
    }

    /// The writer is done: hashes whatever is left, then writes the record into the image.
    pub fn finish(mut self, progress: &dyn Progress) -> Result<Implant, IntegrityError> {
        let _span = tracing::info_span!("iso.implant", bytes = self.image_bytes).entered();
        self.gate.set(|state| state.finished = true);
        progress.phase("checksums");
        progress.set_total(self.image_bytes);
        let mut reported = 0u64;
        let worker = self
            .worker
            .take()
            .expect("worker present until finish or drop");
        while !worker.is_finished() {
            reported = advance(progress, reported, self.hashed.load(Ordering::Relaxed));
            std::thread::sleep(PROGRESS_TICK);
        }
        advance(progress, reported, self.image_bytes);
        let computed = match worker.join() {
            Ok(result) => result?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        computed.write(&self.file)
    }
}

fn advance(progress: &dyn Progress, reported: u64, now: u64) -> u64 {
    if now > reported {
        progress.advance(now - reported);
        now
    } else {
        reported
    }
}

impl Drop for ImplantTask {
    /// A writer that failed drops the task: the threads stop at their next read.
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.gate.set(|state| state.aborted = true);
            let _ = worker.join();
        }
    }
}

/// Which bytes are final: a contiguous prefix plus ranges reported ahead of it.
#[derive(Default)]
struct GateState {
    prefix_end: u64,
    /// Reported ranges beyond the prefix, start -> end.
    ahead: BTreeMap<u64, u64>,
    finished: bool,
    aborted: bool,
}

impl GateState {
    fn add(&mut self, start: u64, end: u64) {
        if end <= self.prefix_end {
            return;
        }
        if start > self.prefix_end {
            let slot = self.ahead.entry(start).or_insert(end);
            *slot = (*slot).max(end);
            return;
        }
        self.prefix_end = end;
        while let Some((&next_start, &next_end)) = self.ahead.first_key_value() {
            if next_start > self.prefix_end {
                break;
            }
            self.ahead.pop_first();
            self.prefix_end = self.prefix_end.max(next_end);
        }
    }
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, change: impl FnOnce(&mut GateState)) {
        if let Ok(mut state) = self.state.lock() {
            change(&mut state);
        }
        self.changed.notify_all();
    }
}

/// The file as the hashing threads see it: reads wait until their range is final.
struct GatedSource {
    file: File,
    gate: Arc<Gate>,
    image_bytes: u64,
}

impl ReadAt for GatedSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let end = offset
            .saturating_add(buf.len() as u64)
            .min(self.image_bytes);
        let mut state = self
            .gate
            .state
            .lock()
            .map_err(|_| io::Error::other("implant gate poisoned"))?;
        while !state.finished && !state.aborted && state.prefix_end < end {
            state = self
                .gate
                .changed
                .wait(state)
                .map_err(|_| io::Error::other("implant gate poisoned"))?;
        }
        if state.aborted {
            // Not `Interrupted`: read_exact_at retries those.
            return Err(io::Error::other("the image write was abandoned"));
        }
        drop(state);
        FileExt::read_at(&self.file, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.image_bytes)
    }
}

/// Collects the hashing threads' progress for `finish` to replay on the caller's bar.
struct Counter {
    hashed: Arc<AtomicU64>,
}

impl Progress for Counter {
    fn set_total(&self, _total: u64) {}
    fn advance(&self, done: u64) {
        self.hashed.fetch_add(done, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::{implant_file, verify, CheckOutcome};
    use vmedia_io::NoProgress;

    #[test]
    fn gate_merges_out_of_order_ranges_into_the_prefix() {
        let mut state = GateState::default();
        state.add(100, 200);
        assert_eq!(state.prefix_end, 0);
        state.add(0, 50);
        assert_eq!(state.prefix_end, 50);
        state.add(50, 100);
        assert_eq!(state.prefix_end, 200);
        assert!(state.ahead.is_empty());
    }

    /// Writes `image` into a file in chunks (out of order at the start, as a writer that puts
    /// metadata last would), reporting each, and returns the task's implant.
    fn streamed_implant(image: &[u8], opts: ImplantOptions) -> (tempfile::TempDir, File, Implant) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.iso");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(image.len() as u64).unwrap();
        let task = ImplantTask::start(&file, image.len() as u64, opts).unwrap();
        let chunk = 100_000;
        let mut offsets: Vec<usize> = (0..image.len()).step_by(chunk).collect();
        offsets.swap(0, 1);
        for offset in offsets {
            let end = (offset + chunk).min(image.len());
            file.write_all_at(&image[offset..end], offset as u64)
                .unwrap();
            task.written(offset as u64, (end - offset) as u64);
        }
        let implant = task.finish(&NoProgress).unwrap();
        (dir, file, implant)
    }

    #[test]
    fn streamed_implant_equals_implant_after_writing() {
        let image = crate::integrity::tests::tiny_iso(3000);
        let opts = ImplantOptions::default();
        let (_dir, file, streamed) = streamed_implant(&image, opts.clone());
        let (_dir2, file2) = crate::integrity::tests::write_temp(&image);
        let after = implant_file(&file2, &opts, &NoProgress).unwrap();
        assert_eq!(streamed, after);
        let report = verify(&file, None, &NoProgress).unwrap();
        assert_eq!(report.md5, CheckOutcome::Ok);
        assert_eq!(report.sha256, CheckOutcome::Ok);
    }

    #[test]
    fn unreported_ranges_are_read_after_finish() {
        let image = crate::integrity::tests::tiny_iso(800);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.iso");
        std::fs::write(&path, &image).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let task =
            ImplantTask::start(&file, image.len() as u64, ImplantOptions::default()).unwrap();
        let implant = task.finish(&NoProgress).unwrap();
        assert!(implant.md5.is_some());
        assert_eq!(
            verify(&file, None, &NoProgress).unwrap().md5,
            CheckOutcome::Ok
        );
    }

    #[test]
    fn dropping_an_unfinished_task_does_not_hang() {
        let image = crate::integrity::tests::tiny_iso(800);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.iso");
        std::fs::write(&path, &image).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let task =
            ImplantTask::start(&file, image.len() as u64, ImplantOptions::default()).unwrap();
        task.written(0, 4096);
        drop(task);
    }
}

//! Preload: warming the shared cache with a whole version, and boot traces.
//!
//! A boot trace is the list of byte ranges read from a version during the first
//! `window` after its first client attached (in this daemon's life, when no trace exists
//! yet), stored at `STATE/traces/<digest>.trace`. When a client attaches a version that has
//! a trace, the ranges are read in trace order ahead of it (a few threads), so its reads
//! find the cache warm. Recording wraps the version's export (`decorate`), so NBD and HTTP
//! reads both feed it.
//!
//! Trace file: a line `vmedia-trace 1 sha256:HEX`, then one `OFFSET LENGTH` line per range
//! (decimal), in the order first read.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::export::{BlockSizes, Export, Extent};

/// The default recording window (`--trace-window`).
pub const DEFAULT_TRACE_WINDOW: Duration = Duration::from_secs(60);
/// Ranges kept per trace: a boot reads a few thousand; this bounds a runaway recording.
pub const MAX_TRACE_RANGES: usize = 65_536;
/// Threads reading a trace or a whole version ahead of clients: enough to keep an object
/// store busy without starving the clients' own reads.
pub const PREFETCH_THREADS: usize = 4;
/// Largest single read while warming (one request to the export).
const PREFETCH_PIECE: u64 = 4 << 20;
/// First line of a trace file.
const TRACE_MAGIC: &str = "vmedia-trace 1";

/// Recording and replaying boot traces for every version the daemon serves.
pub struct Traces {
    dir: PathBuf,
    window: Duration,
    versions: Mutex<HashMap<String, Arc<VersionTrace>>>,
}

struct VersionTrace {
    digest: String,
    path: PathBuf,
    /// True while a recording runs: every read checks this, and takes the lock only then.
    recording: AtomicBool,
    state: Mutex<TraceState>,
}

#[derive(Default)]
struct TraceState {
    /// Recording until this moment.
    recording_until: Option<Instant>,
    ranges: Vec<(u64, u64)>,
    /// A recording already ran (or a trace file existed) in this daemon's life.
    recorded: bool,
    /// The trace file exists (looked up once, then kept true when a recording writes it), so
    /// an attach costs no file-system call.
    has_file: bool,
    /// When a replay last started (one per window: the cache holds what it read).
    last_replay: Option<Instant>,
}

impl Traces {
    /// Traces under `dir` (created when the first trace is written).
    pub fn new(dir: PathBuf, window: Duration) -> Arc<Traces> {
        Arc::new(Traces {
            dir,
            window,
            versions: Mutex::new(HashMap::new()),
        })
    }

    /// The trace file of a version (`digest` is `sha256:HEX`).
    pub fn path_for(dir: &Path, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        dir.join(format!("{hex}.trace"))
    }

    fn version(&self, digest: &str) -> Arc<VersionTrace> {
        let mut versions = lock(&self.versions);
        // Every HTTP request attaches: the usual case (known digest) allocates nothing.
        if let Some(known) = versions.get(digest) {
            return Arc::clone(known);
        }
        Arc::clone(versions.entry(digest.to_string()).or_insert_with(|| {
            Arc::new(VersionTrace {
                digest: digest.to_string(),
                path: Traces::path_for(&self.dir, digest),
                recording: AtomicBool::new(false),
                state: Mutex::new(TraceState::default()),
            })
        }))
    }

    /// Wraps a version's export so its reads are recorded while a recording runs.
    pub fn decorate(&self, inner: Arc<dyn Export>, digest: &str) -> Arc<dyn Export> {
        Arc::new(TracedExport {
            inner,
            trace: self.version(digest),
        })
    }

    /// A client attached the version: replay its trace ahead of it, or start recording one.
    pub fn attached(&self, digest: &str, export: &Arc<dyn Export>) {
        let trace = self.version(digest);
        let now = Instant::now();
        let mut state = lock(&trace.state);
        if state.recording_until.is_some_and(|until| now < until) {
            return;
        }
        if !state.recorded {
            state.recorded = true;
            state.has_file = trace.path.exists();
            if !state.has_file {
                state.recording_until = Some(now + self.window);
                state.ranges.clear();
                trace.recording.store(true, Ordering::Release);
                drop(state);
                self.record(trace);
                return;
            }
        }
        if !state.has_file || state.last_replay.is_some_and(|at| now - at < self.window) {
            return;
        }
        state.last_replay = Some(now);
        drop(state);
        let (path, export) = (trace.path.clone(), Arc::clone(export));
        let spawned = std::thread::Builder::new()
            .name("trace-replay".into())
            .spawn(move || match read_trace(&path) {
                Ok(ranges) => {
                    let started = Instant::now();
                    let (count, bytes) = (ranges.len(), ranges.iter().map(|r| r.1).sum::<u64>());
                    match prefetch(&export, &ranges) {
                        Ok(()) => tracing::info!(
                            export = export.name(), ranges = count, bytes,
                            seconds = started.elapsed().as_secs_f64(),
                            "boot trace replayed"
                        ),
                        Err(error) => tracing::warn!(export = export.name(), %error, "boot trace replay stopped"),
                    }
                }
                Err(error) => tracing::warn!(path = %path.display(), %error, "unreadable boot trace"),
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a trace replay");
        }
    }

    /// Records the reads of `trace` for one window, then writes the trace file.
    fn record(&self, trace: Arc<VersionTrace>) {
        let (dir, window) = (self.dir.clone(), self.window);
        let spawned = std::thread::Builder::new()
            .name("trace-record".into())
            .spawn(move || {
                std::thread::sleep(window);
                // Nothing left when the daemon's shutdown already kept the recording.
                finish_recording(&dir, &trace);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a trace recording");
        }
    }

    /// Ends every recording still running and writes what it recorded as a finished trace
    /// (the daemon calls this on a graceful shutdown, so a boot recorded for less than the
    /// window is kept rather than lost). Returns the traces written.
    pub fn finish_recordings(&self) -> usize {
        let running: Vec<Arc<VersionTrace>> = lock(&self.versions)
            .values()
            .filter(|trace| trace.recording.load(Ordering::Acquire))
            .cloned()
            .collect();
        running
            .iter()
            .filter(|trace| finish_recording(&self.dir, trace))
            .count()
    }
}

/// Stops `trace`'s recording and writes the ranges it holds (atomically: a `.part` file
/// renamed into place). Whoever comes first (the window's end or the shutdown) takes the
/// ranges; the other finds none. True when a trace file was written.
fn finish_recording(dir: &Path, trace: &VersionTrace) -> bool {
    let ranges = {
        let mut state = lock(&trace.state);
        state.recording_until = None;
        trace.recording.store(false, Ordering::Release);
        std::mem::take(&mut state.ranges)
    };
    if ranges.is_empty() {
        return false;
    }
    match write_trace(dir, &trace.path, &trace.digest, &ranges) {
        Ok(()) => {
            lock(&trace.state).has_file = true;
            tracing::info!(path = %trace.path.display(), ranges = ranges.len(), "boot trace recorded");
            true
        }
        Err(error) => {
            tracing::warn!(path = %trace.path.display(), %error, "cannot write a boot trace");
            false
        }
    }
}

/// A version's export whose reads are recorded while its trace records.
struct TracedExport {
    inner: Arc<dyn Export>,
    trace: Arc<VersionTrace>,
}

impl TracedExport {
    /// Records a read while the recording runs.
    fn note(&self, offset: u64, length: u64) {
        if self.trace.recording.load(Ordering::Acquire) {
            let mut state = lock(&self.trace.state);
            if state
                .recording_until
                .is_some_and(|until| Instant::now() < until)
            {
                record(&mut state.ranges, offset, length);
            }
        }
    }
}

impl Export for TracedExport {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn block_sizes(&self) -> BlockSizes {
        self.inner.block_sizes()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.note(offset, buf.len() as u64);
        self.inner.read_at(buf, offset)
    }

    fn read_cached(&self, offset: u64, length: usize) -> Option<Vec<bytes::Bytes>> {
        let got = self.inner.read_cached(offset, length)?;
        self.note(offset, length as u64);
        Some(got)
    }

    fn read_bytes(&self, offset: u64, length: usize) -> io::Result<Vec<bytes::Bytes>> {
        self.note(offset, length as u64);
        self.inner.read_bytes(offset, length)
    }

    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        self.inner.extents(offset, length)
    }
}

/// Appends a range, merged with the previous one when it continues it.
fn record(ranges: &mut Vec<(u64, u64)>, offset: u64, length: u64) {
    if length == 0 {
        return;
    }
    if let Some(last) = ranges.last_mut() {
        if last.0.checked_add(last.1) == Some(offset) {
            last.1 = last.1.saturating_add(length);
            return;
        }
    }
    if ranges.len() < MAX_TRACE_RANGES {
        ranges.push((offset, length));
    }
}

fn write_trace(dir: &Path, path: &Path, digest: &str, ranges: &[(u64, u64)]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut text = format!("{TRACE_MAGIC} {digest}\n");
    for (offset, length) in ranges {
        text.push_str(&format!("{offset} {length}\n"));
    }
    let partial = path.with_extension("trace.part");
    let mut file = fs::File::create(&partial)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&partial, path)?;
    // The rename itself reaches the disk only with the folder's own sync.
    fs::File::open(dir)?.sync_all()
}

/// Reads a trace file (at most `MAX_TRACE_RANGES` ranges).
pub fn read_trace(path: &Path) -> io::Result<Vec<(u64, u64)>> {
    let text = fs::read_to_string(path)?;
    let bad = |line: usize| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: line {line} is not a trace line", path.display()),
        )
    };
    let mut lines = text.lines();
    if !lines.next().is_some_and(|l| l.starts_with(TRACE_MAGIC)) {
        return Err(bad(1));
    }
    let mut ranges = Vec::new();
    for (n, line) in lines.enumerate() {
        let (offset, length) = line.split_once(' ').ok_or_else(|| bad(n + 2))?;
        let offset: u64 = offset.parse().map_err(|_| bad(n + 2))?;
        let length: u64 = length.parse().map_err(|_| bad(n + 2))?;
        if ranges.len() == MAX_TRACE_RANGES {
            break;
        }
        ranges.push((offset, length));
    }
    Ok(ranges)
}

/// Reads `ranges` of `export` (clipped to its size) with `PREFETCH_THREADS` threads, roughly
/// in order; the reads land in the shared cache.
pub fn prefetch(export: &Arc<dyn Export>, ranges: &[(u64, u64)]) -> io::Result<()> {
    let size = export.size();
    let mut pieces = Vec::new();
    for &(offset, length) in ranges {
        let end = offset.saturating_add(length).min(size);
        let mut at = offset;
        while at < end {
            let n = (end - at).min(PREFETCH_PIECE);
            pieces.push((at, n));
            at += n;
        }
    }
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<io::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..PREFETCH_THREADS {
            scope.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(offset, length)) = pieces.get(index) else {
                        return;
                    };
                    buf.resize(length as usize, 0);
                    if let Err(error) = export.read_at(&mut buf, offset) {
                        // Stop every worker: the store is failing, clients will see it too.
                        next.store(pieces.len(), Ordering::Relaxed);
                        lock(&failure).get_or_insert(error);
                        return;
                    }
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// What a whole-version preload did.
#[derive(Debug, Clone, Serialize)]
pub struct PreloadReport {
    pub export: String,
    pub digest: String,
    pub size: u64,
    pub seconds: f64,
}

/// The answer to a preload request that does not wait (202): the version is being read.
#[derive(Debug, Clone, Serialize)]
pub struct PreloadAccepted {
    pub image: String,
}

/// Reads a whole export through the cache.
pub fn preload(export: &Arc<dyn Export>, digest: &str) -> io::Result<PreloadReport> {
    let started = Instant::now();
    prefetch(export, &[(0, export.size())])?;
    Ok(PreloadReport {
        export: export.name().to_string(),
        digest: digest.to_string(),
        size: export.size(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_reads_merge_into_one_range() {
        let mut ranges = Vec::new();
        record(&mut ranges, 0, 512);
        record(&mut ranges, 512, 512);
        record(&mut ranges, 4096, 100);
        record(&mut ranges, 0, 0);
        assert_eq!(ranges, vec![(0, 1024), (4096, 100)]);
    }

    #[test]
    fn a_trace_file_round_trips_and_bad_lines_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = Traces::path_for(dir.path(), "sha256:abcd");
        write_trace(dir.path(), &path, "sha256:abcd", &[(0, 10), (99, 1)]).unwrap();
        assert_eq!(read_trace(&path).unwrap(), vec![(0, 10), (99, 1)]);
        fs::write(&path, "vmedia-trace 1 sha256:abcd\n1 x\n").unwrap();
        assert!(read_trace(&path).is_err());
    }

    /// Bytes in memory as an export.
    struct Memory(Vec<u8>);

    impl Export for Memory {
        fn name(&self) -> &str {
            "memory"
        }
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_only(&self) -> bool {
            true
        }
        fn block_sizes(&self) -> BlockSizes {
            BlockSizes {
                minimum: 1,
                preferred: 4096,
                maximum: 1 << 20,
            }
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let start = offset as usize;
            buf.copy_from_slice(&self.0[start..start + buf.len()]);
            Ok(())
        }
        fn extents(&self, _offset: u64, length: u64) -> io::Result<Vec<Extent>> {
            Ok(vec![Extent {
                length,
                hole: false,
                zero: false,
            }])
        }
    }

    #[test]
    fn a_trace_still_recording_is_written_whole_when_recordings_finish() {
        let dir = tempfile::tempdir().unwrap();
        let traces = Traces::new(dir.path().join("traces"), Duration::from_secs(3600));
        let digest = "sha256:00ff";
        let export = traces.decorate(Arc::new(Memory(vec![7; 1 << 16])), digest);
        traces.attached(digest, &export);
        let mut buf = vec![0; 512];
        export.read_at(&mut buf, 4096).unwrap();
        export.read_at(&mut buf, 4608).unwrap();
        export.read_at(&mut buf[..100], 0).unwrap();
        let path = Traces::path_for(&dir.path().join("traces"), digest);
        assert!(!path.exists(), "written before the window ended");
        assert_eq!(traces.finish_recordings(), 1);
        assert_eq!(read_trace(&path).unwrap(), vec![(4096, 1024), (0, 100)]);
        assert!(!path.with_extension("trace.part").exists());
        // Finished: later reads are not recorded, and nothing is left to write.
        export.read_at(&mut buf, 8192).unwrap();
        assert_eq!(traces.finish_recordings(), 0);
        assert_eq!(read_trace(&path).unwrap(), vec![(4096, 1024), (0, 100)]);
    }
}

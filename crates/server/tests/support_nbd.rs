//! Test support for the NBD front end: a file-backed `Export` (holes from SEEK_DATA /
//! SEEK_HOLE, writes with FUA, zeroing and trimming by punching holes), a resolver over a
//! fixed set of exports, an observer that counts what it is told, a server on a loopback
//! port with its own runtime, and the peer tools (nbdinfo, nbdcopy, python3 nbd, qemu-img).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use vmedia_server::export::{
    BlockSizes, Export, ExportError, ExportListing, ExportResolver, Extent, IoObserver, Op,
    Protocol,
};
use vmedia_server::nbd::{serve_nbd, NbdContext, NbdLimits};

/// An export over a file.
pub struct FileExport {
    name: String,
    file: File,
    size: u64,
    read_only: bool,
    block_sizes: BlockSizes,
}

impl FileExport {
    pub fn open(name: &str, path: &Path, read_only: bool) -> Arc<FileExport> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let size = file.metadata().unwrap().len();
        Arc::new(FileExport {
            name: name.to_string(),
            file,
            size,
            read_only,
            block_sizes: BlockSizes {
                minimum: 1,
                preferred: 4096,
                maximum: 32 << 20,
            },
        })
    }

    pub fn with_block_sizes(mut self: Arc<Self>, sizes: BlockSizes) -> Arc<Self> {
        Arc::get_mut(&mut self).unwrap().block_sizes = sizes;
        self
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<u64> {
        // SAFETY: lseek on a descriptor this struct owns; no memory is passed.
        let at = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if at < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(at as u64)
    }

    fn punch(&self, offset: u64, length: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on an owned descriptor; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                length as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Export for FileExport {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn block_sizes(&self) -> BlockSizes {
        self.block_sizes
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let end = (offset + length).min(self.size);
        let mut extents = Vec::new();
        let mut at = offset;
        while at < end {
            let data = match self.seek(at, libc::SEEK_DATA) {
                Ok(data) => data.min(end),
                // ENXIO: no data after `at`.
                Err(error) if error.raw_os_error() == Some(libc::ENXIO) => end,
                Err(error) => return Err(error),
            };
            if data > at {
                extents.push(Extent {
                    length: data - at,
                    hole: true,
                    zero: true,
                });
                at = data;
                continue;
            }
            let hole = self.seek(at, libc::SEEK_HOLE)?.min(end);
            extents.push(Extent {
                length: hole - at,
                hole: false,
                zero: false,
            });
            at = hole;
        }
        Ok(extents)
    }
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> io::Result<()> {
        self.punch(offset, length)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }
    fn trim(&self, offset: u64, length: u64) -> io::Result<()> {
        self.punch(offset, length)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A resolver over a fixed set of exports.
#[derive(Default)]
pub struct Exports {
    exports: BTreeMap<String, Arc<dyn Export>>,
}

impl Exports {
    pub fn with(mut self, export: Arc<dyn Export>) -> Self {
        self.exports.insert(export.name().to_string(), export);
        self
    }
}

impl ExportResolver for Exports {
    fn list(&self) -> io::Result<Vec<ExportListing>> {
        Ok(self
            .exports
            .keys()
            .map(|name| ExportListing {
                name: name.clone(),
                description: format!("test export {name}"),
            })
            .collect())
    }
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, ExportError> {
        self.exports
            .get(name)
            .cloned()
            .ok_or_else(|| ExportError::NotFound(name.to_string()))
    }
}

/// Counts what the server reports.
#[derive(Default, Debug)]
pub struct Counts {
    pub opened: u64,
    pub closed: u64,
    pub started: u64,
    pub finished: u64,
    pub failed: u64,
    pub by_op: BTreeMap<&'static str, (u64, u64)>,
    pub in_flight: i64,
    pub max_in_flight: i64,
}

#[derive(Default)]
pub struct Recorder {
    pub counts: Mutex<Counts>,
}

impl Recorder {
    pub fn snapshot(&self) -> Counts {
        let counts = self.counts.lock().unwrap();
        Counts {
            opened: counts.opened,
            closed: counts.closed,
            started: counts.started,
            finished: counts.finished,
            failed: counts.failed,
            by_op: counts.by_op.clone(),
            in_flight: counts.in_flight,
            max_in_flight: counts.max_in_flight,
        }
    }
}

impl IoObserver for Recorder {
    fn connection_opened(&self, protocol: Protocol, _client: &str) {
        assert_eq!(protocol, Protocol::Nbd);
        self.counts.lock().unwrap().opened += 1;
    }
    fn connection_closed(&self, _protocol: Protocol, _client: &str) {
        self.counts.lock().unwrap().closed += 1;
    }
    fn request_started(&self, _export: &str, _client: &str) {
        let mut counts = self.counts.lock().unwrap();
        counts.started += 1;
        counts.in_flight += 1;
        counts.max_in_flight = counts.max_in_flight.max(counts.in_flight);
    }
    fn request_finished(
        &self,
        _export: &str,
        _client: &str,
        op: Op,
        bytes: u64,
        _latency: Duration,
        ok: bool,
    ) {
        let mut counts = self.counts.lock().unwrap();
        counts.finished += 1;
        counts.in_flight -= 1;
        if !ok {
            counts.failed += 1;
        }
        let entry = counts.by_op.entry(op.as_str()).or_default();
        entry.0 += 1;
        entry.1 += bytes;
    }
}

/// `serve_nbd` on a loopback port, in its own runtime.
pub struct Server {
    pub port: u16,
    pub recorder: Arc<Recorder>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    pub fn start(
        exports: Exports,
        tls: Option<tokio_rustls::TlsAcceptor>,
        limits: NbdLimits,
    ) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let recorder = Arc::new(Recorder::default());
        let (shutdown, receiver) = watch::channel(false);
        let ctx = NbdContext {
            resolver: Arc::new(exports),
            observer: recorder.clone(),
            tls,
            limits,
        };
        let task = runtime.spawn(serve_nbd(listener, ctx, receiver));
        Server {
            port,
            recorder,
            shutdown,
            task: Some(task),
            runtime,
        }
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// Asks for shutdown and waits (bounded) for `serve_nbd` to return.
    pub fn stop(&mut self) -> Duration {
        let started = std::time::Instant::now();
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            self.runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(60), task).await })
                .expect("serve_nbd returns after shutdown")
                .unwrap();
        }
        started.elapsed()
    }

    /// Waits until the observer has seen every connection close.
    pub fn wait_all_closed(&self) -> Counts {
        for _ in 0..200 {
            let counts = self.recorder.snapshot();
            if counts.opened == counts.closed {
                return counts;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("connections left open: {:?}", self.recorder.snapshot());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A peer program, or a loud failure naming the package that ships it.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is not installed: run scripts/setup.sh (Debian packages libnbd-bin, python3-libnbd, qemu-utils)");
}

/// The system Python, which is where Debian's python3-libnbd installs `nbd`.
pub fn python() -> PathBuf {
    let python = tool("python3");
    let check = Command::new(&python)
        .args(["-c", "import nbd"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "python3 cannot import nbd (install python3-libnbd): {}",
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn run(command: &mut Command) -> String {
    let output: Output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Deterministic bytes that differ at every offset of a test image.
pub fn pattern(offset: u64, length: usize) -> Vec<u8> {
    (0..length as u64)
        .map(|i| {
            let at = offset + i;
            (at.wrapping_mul(2_654_435_761) >> 13) as u8 | 1
        })
        .collect()
}

/// Where the test image has data; everything else is a hole.
pub const DATA_RUNS: [(u64, u64); 3] = [(0, 1 << 20), (3 << 20, 1 << 20), (6 << 20, 512 << 10)];
/// The test image's size: 8 MiB.
pub const IMAGE_SIZE: u64 = 8 << 20;

/// A sparse 8 MiB image with `DATA_RUNS` filled with `pattern`.
pub fn sparse_image(path: &Path) -> Vec<u8> {
    let file = File::create(path).unwrap();
    file.set_len(IMAGE_SIZE).unwrap();
    let mut expected = vec![0u8; IMAGE_SIZE as usize];
    for (offset, length) in DATA_RUNS {
        let bytes = pattern(offset, length as usize);
        file.write_all_at(&bytes, offset).unwrap();
        expected[offset as usize..(offset + length) as usize].copy_from_slice(&bytes);
    }
    file.sync_all().unwrap();
    expected
}

/// A read-only export `iso` and a writable `disk` over copies of the sparse image.
pub fn two_exports(dir: &Path) -> (Exports, Vec<u8>) {
    let expected = sparse_image(&dir.join("iso.img"));
    sparse_image(&dir.join("disk.img"));
    let exports = Exports::default()
        .with(FileExport::open("iso", &dir.join("iso.img"), true))
        .with(FileExport::open("disk", &dir.join("disk.img"), false));
    (exports, expected)
}

//! Helpers for the clone tests: a base export over a file with known allocation, a
//! `BaseOpener` over such bases, deterministic byte patterns.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmedia_io::ReadAt;
use vmedia_library::AddReport;
use vmedia_server::clones::{BaseOpener, BaseVersion};
use vmedia_server::export::{BlockSizes, Export, ExportError, Extent};

/// Deterministic bytes (xorshift) for `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A read-only base over a file: the first half is data, the second half zeroes that the
/// base reports as a hole.
pub struct FileBase {
    name: String,
    file: File,
    size: u64,
    pub reads: AtomicU64,
}

impl FileBase {
    /// Writes `size` bytes (pattern in the first half, zeroes after) to `path`.
    pub fn create(path: &Path, name: &str, size: u64, seed: u64) -> FileBase {
        let half = (size / 2) as usize;
        let mut bytes = pattern(seed, half);
        bytes.resize(size as usize, 0);
        std::fs::write(path, &bytes).unwrap();
        FileBase {
            name: name.to_string(),
            file: File::open(path).unwrap(),
            size,
            reads: AtomicU64::new(0),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.size as usize];
        FileExt::read_exact_at(&self.file, &mut buf, 0).unwrap();
        buf
    }
}

impl Export for FileBase {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        true
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: 32 << 20,
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let half = self.size / 2;
        let end = (offset + length).min(self.size);
        // Deliberately at most one extent per call, as a lazy base may.
        Ok(vec![if offset < half {
            Extent {
                length: end.min(half) - offset,
                hole: false,
                zero: false,
            }
        } else {
            Extent {
                length: end - offset,
                hole: true,
                zero: true,
            }
        }])
    }
}

/// Bases by item name, each at version 1.
#[derive(Default)]
pub struct TestBases {
    bases: Mutex<HashMap<String, (Arc<FileBase>, String)>>,
    pub opens: AtomicU64,
}

impl TestBases {
    pub fn add(&self, base: Arc<FileBase>, digest: &str) {
        let name = base.name.clone();
        self.bases
            .lock()
            .unwrap()
            .insert(name, (base, digest.to_string()));
    }

    /// The item's name from `NAME` or `NAME@1`.
    fn item(spec: &str) -> Result<&str, ExportError> {
        match spec.split_once('@') {
            None => Ok(spec),
            Some((name, "1")) => Ok(name),
            Some(_) => Err(ExportError::NotFound(spec.to_string())),
        }
    }

    fn lookup(&self, spec: &str) -> Result<(Arc<FileBase>, String), ExportError> {
        let item = TestBases::item(spec)?;
        self.bases
            .lock()
            .unwrap()
            .get(item)
            .cloned()
            .ok_or_else(|| ExportError::NotFound(spec.to_string()))
    }
}

impl BaseOpener for TestBases {
    fn resolve_base(&self, spec: &str) -> Result<BaseVersion, ExportError> {
        let (base, digest) = self.lookup(spec)?;
        Ok(BaseVersion {
            spec: format!("{}@1", TestBases::item(spec)?),
            digest,
            size: base.size,
        })
    }
    fn open_base(&self, spec: &str) -> Result<Arc<dyn Export>, ExportError> {
        self.opens.fetch_add(1, Ordering::Relaxed);
        Ok(self.lookup(spec)?.0)
    }
    fn commit(&self, _name: &str, _source: &dyn ReadAt, _size: u64) -> io::Result<AddReport> {
        Err(io::Error::other(
            "the file-backed test bases have no library to commit to",
        ))
    }
}

/// A store folder with one base `base` of `size` bytes (digest `sha256:base`).
pub fn bases_with(dir: &Path, size: u64) -> (Arc<TestBases>, Arc<FileBase>) {
    let bases = Arc::new(TestBases::default());
    let base = Arc::new(FileBase::create(&dir.join("base.img"), "base", size, 7));
    bases.add(Arc::clone(&base), "sha256:base");
    (bases, base)
}

/// Reads a whole export.
pub fn read_all(export: &dyn Export) -> Vec<u8> {
    let mut buf = vec![0u8; export.size() as usize];
    export.read_at(&mut buf, 0).unwrap();
    buf
}

/// Serves the clone API router nested where the daemon puts it on a loopback port (for the
/// test process's lifetime); returns the base URL.
pub fn serve_api(store: Arc<vmedia_server::clones::CloneStore>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new()
                .nest("/api/v1/clones", vmedia_server::clones::api::router(store));
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}/api/v1/clones", rx.recv().unwrap())
}

/// A client that returns 4xx/5xx answers instead of failing on them, as the CLI reads them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

//! `LibraryBases`: a `BaseOpener` straight over a `Library`, without the daemon's shared cache
//! (each opened base reads through its own small `VersionReader` cache). Tests use it; the
//! daemon can delegate `resolve_base` and `commit` to it and open bases through its cache.

use std::io::{self, Read};
use std::sync::mpsc;
use std::sync::Arc;

use vmedia_io::{NoProgress, ReadAt};
use vmedia_library::{
    AddOptions, AddReport, AddSource, Library, LibraryError, VersionReader, VersionSpec,
};

use super::{BaseOpener, BaseVersion};
use crate::export::{Export, ExportError};
use crate::exports::VersionExport;

/// Bytes read from the clone per piece handed to the library's add: one 1 MiB chunk's worth.
const COMMIT_PIECE: usize = 1 << 20;
/// Pieces buffered between the clone reader and the add: keeps both busy, bounds memory.
const COMMIT_PIECES_IN_FLIGHT: usize = 8;

/// Bases and commits over one library.
#[derive(Clone)]
pub struct LibraryBases {
    library: Library,
}

impl LibraryBases {
    pub fn new(library: Library) -> LibraryBases {
        LibraryBases { library }
    }

    fn open_version(&self, spec: &str) -> Result<VersionReader, ExportError> {
        if spec.ends_with("/disk") {
            return Err(ExportError::Unavailable {
                name: spec.to_string(),
                reason: "a disk's virtual content is opened by the daemon's resolver, not by \
                         LibraryBases"
                    .into(),
            });
        }
        let parsed = VersionSpec::parse(spec).map_err(|e| ExportError::Unavailable {
            name: spec.to_string(),
            reason: e.to_string(),
        })?;
        self.library.open_version(&parsed).map_err(|e| match e {
            LibraryError::NoSuchItem { .. } | LibraryError::NoSuchVersion { .. } => {
                ExportError::NotFound(spec.to_string())
            }
            other => ExportError::Unavailable {
                name: spec.to_string(),
                reason: other.to_string(),
            },
        })
    }
}

impl BaseOpener for LibraryBases {
    fn resolve_base(&self, spec: &str) -> Result<BaseVersion, ExportError> {
        let reader = self.open_version(spec)?;
        Ok(BaseVersion {
            spec: format!("{}@{}", reader.name(), reader.version()),
            digest: reader.digest().to_string(),
            size: reader.size(),
        })
    }

    fn open_base(&self, spec: &str) -> Result<Arc<dyn Export>, ExportError> {
        let reader = self.open_version(spec)?;
        Ok(Arc::new(VersionExport::new(
            format!("{}@{}", reader.name(), reader.version()),
            reader,
        )))
    }

    fn commit(&self, name: &str, source: &dyn ReadAt, size: u64) -> io::Result<AddReport> {
        add_read_at(&self.library, name, source, size)
    }
}

/// Adds `size` bytes of `source` to `library` as a new version of `name`, streamed in order
/// (never held whole). A name the library refuses is `InvalidInput` (the API answers 400).
pub(crate) fn add_read_at(
    library: &Library,
    name: &str,
    source: &dyn ReadAt,
    size: u64,
) -> io::Result<AddReport> {
    // `add` takes an owned stream; a scoped thread feeds it from the borrowed source.
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(COMMIT_PIECES_IN_FLIGHT);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut offset = 0u64;
            while offset < size {
                let n = (size - offset).min(COMMIT_PIECE as u64) as usize;
                let mut piece = vec![0u8; n];
                let read = source.read_exact_at(&mut piece, offset).map(|()| piece);
                let failed = read.is_err();
                if tx.send(read).is_err() || failed {
                    return;
                }
                offset += n as u64;
            }
        });
        let stream = ChannelReader {
            rx,
            piece: Vec::new(),
            at: 0,
        };
        library
            .add(
                name,
                AddSource::Reader(Box::new(stream)),
                &AddOptions::default(),
                &NoProgress,
            )
            .map_err(|e| {
                let kind = match e {
                    // The caller's mistake, not the server's: the API answers 400.
                    LibraryError::InvalidName { .. } | LibraryError::InvalidSpec { .. } => {
                        io::ErrorKind::InvalidInput
                    }
                    _ => io::ErrorKind::Other,
                };
                io::Error::new(kind, e)
            })
    })
}

/// A `Read` over pieces arriving on a channel; ends when the sender is done.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(piece) => {
                    self.piece = piece?;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

//! The one error type of the OVF crate: what failed, in which file, where and why.

use std::path::PathBuf;

/// Everything reading or writing an OVF package can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The descriptor is not well-formed XML (or uses what we refuse: DTDs, unknown entities).
    #[error("{file}: XML at byte {offset:#x}: {problem}")]
    Xml {
        file: String,
        offset: u64,
        problem: String,
    },
    /// Well-formed XML that is not a usable OVF descriptor.
    #[error("{file}: {field}: {problem}")]
    Descriptor {
        file: String,
        field: String,
        problem: String,
    },
    /// A tar header of the OVA.
    #[error("{path}: tar header at {offset:#x}: {field}: {problem}")]
    Tar {
        path: PathBuf,
        offset: u64,
        field: &'static str,
        problem: String,
    },
    #[error("{file}: line {line}: {problem}")]
    Manifest {
        file: String,
        line: usize,
        problem: String,
    },
    #[error("{file}: {algorithm} digest mismatch (manifest {expected}, actual {actual})")]
    DigestMismatch {
        file: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{what}: {value} is over the limit {max} ({limit})")]
    Limit {
        what: String,
        limit: &'static str,
        value: u64,
        max: u64,
    },
    /// A file the descriptor or manifest names is not in the package.
    #[error("{package}: {file} is named by the {by} but not in the package")]
    MissingFile {
        package: PathBuf,
        file: String,
        by: &'static str,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("signing: {0}")]
    Signing(String),
    #[error(transparent)]
    Disk(#[from] vmedia_disk::DiskError),
}

pub type Result<T> = std::result::Result<T, OvfError>;

/// `map_err` helper for std::io errors on a path.
pub(crate) fn io_err(
    path: &std::path::Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> OvfError {
    let path = path.to_path_buf();
    move |source| OvfError::Io {
        path,
        action,
        source,
    }
}

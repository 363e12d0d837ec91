//! `ReadError`: what can go wrong reading an image, always with the offset and field at fault.

use std::io;

/// An error reading an ISO 9660 image. Offsets are byte offsets in the image source.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The source could not be read at `offset`.
    #[error("cannot read {what} at offset {offset:#x}: {source}")]
    Io {
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The source holds no ISO 9660 volume (no "CD001" primary volume descriptor).
    #[error("not an ISO 9660 image: {reason}")]
    NotIso { reason: String },
    /// A structure in the image breaks the format; `field` names it, `problem` says how.
    #[error("corrupt image at offset {offset:#x}: {field}: {problem}")]
    Corrupt {
        offset: u64,
        field: &'static str,
        problem: String,
    },
    /// The image exceeds one of the reader's safety limits (named by `limit`).
    #[error("image exceeds the limit {limit} ({value} > {max}) at offset {offset:#x}; the image is hostile or damaged")]
    Limit {
        offset: u64,
        limit: &'static str,
        value: u64,
        max: u64,
    },
    /// A directory is reached twice while walking the tree (a loop or shared directory extent).
    #[error("directory loop: the directory at block {lba} (offset {offset:#x}) is reached twice, last via {path}")]
    DirectoryLoop { lba: u32, offset: u64, path: String },
    /// The image uses a feature this reader does not handle.
    #[error("unsupported at offset {offset:#x}: {feature}")]
    Unsupported { offset: u64, feature: String },
    /// A path asked for does not exist in the image.
    #[error("{path}: no such file or directory in the image")]
    NotFound { path: String },
    /// A path component that must be a directory is not one.
    #[error("{path}: not a directory in the image")]
    NotADirectory { path: String },
    /// File contents were asked for an entry that has none (a directory, device...).
    #[error("{path}: not a regular file")]
    NotAFile { path: String },
    /// The namespace the caller forced is not in the image.
    #[error("the image has no {namespace} tree")]
    MissingNamespace { namespace: &'static str },
}

impl ReadError {
    pub(crate) fn corrupt(offset: u64, field: &'static str, problem: impl Into<String>) -> Self {
        ReadError::Corrupt {
            offset,
            field,
            problem: problem.into(),
        }
    }

    pub(crate) fn io(what: &'static str, offset: u64, source: io::Error) -> Self {
        ReadError::Io {
            what,
            offset,
            source,
        }
    }

    pub(crate) fn limit(offset: u64, limit: &'static str, value: u64, max: u64) -> Self {
        ReadError::Limit {
            offset,
            limit,
            value,
            max,
        }
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        let kind = match &e {
            ReadError::Io { source, .. } => source.kind(),
            ReadError::NotFound { .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

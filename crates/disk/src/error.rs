//! The one error type of the disk crate: every variant names the file and, where there is one,
//! the offset (hex) and the field that was wrong, so a user can act on the message.

use std::path::PathBuf;

/// Result alias used by every format module.
pub type Result<T, E = DiskError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The operating system refused a read or write.
    #[error("{}: I/O error at offset {offset:#x}: {source}", path.display())]
    Io {
        path: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },

    /// A file could not be opened or created at all.
    #[error("{}: cannot {action}: {source}", path.display())]
    Open {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A structure in the image breaks the format's rules (hostile or damaged image).
    #[error("{}: corrupt {format} image: {field} at offset {offset:#x}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        offset: u64,
        field: &'static str,
        reason: String,
    },

    /// A value is valid for the format but beyond a limit vmedia enforces for safety.
    #[error("{}: {field} = {value} at offset {offset:#x} exceeds the limit of {limit} ({why})", path.display())]
    Limit {
        path: PathBuf,
        offset: u64,
        field: &'static str,
        value: u64,
        limit: u64,
        why: &'static str,
    },

    /// A valid feature that this build does not implement.
    #[error("{}: unsupported {format} feature: {feature}", path.display())]
    Unsupported {
        path: PathBuf,
        format: &'static str,
        feature: String,
    },

    /// A file named inside an image (backing file, extent, parent) that the open options
    /// do not allow to be followed.
    #[error("{}: refers to {} which is {reason}; pass --allow-references any (or VMEDIA_ALLOW_REFERENCES=any) to follow it", path.display(), reference.display())]
    Reference {
        path: PathBuf,
        reference: PathBuf,
        reason: &'static str,
    },

    /// A backing/parent chain that comes back to a file already in it, or is too deep.
    #[error("{}: backing chain loop or too deep: {}", path.display(), chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> "))]
    BackingLoop { path: PathBuf, chain: Vec<PathBuf> },

    /// A -o option (or other creation parameter) that the format rejects.
    #[error("invalid option {key}={value}: {reason}")]
    InvalidOption {
        key: String,
        value: String,
        reason: String,
    },

    /// A guest read or write outside the virtual disk.
    #[error("{}: guest range {offset:#x}+{len:#x} is outside the virtual size {size:#x}", path.display())]
    OutOfRange {
        path: PathBuf,
        offset: u64,
        len: u64,
        size: u64,
    },

    /// An encrypted image whose secret is missing or does not unlock it.
    #[error("{}: {reason}", path.display())]
    Secret { path: PathBuf, reason: String },

    /// A format name that is not known.
    #[error("unknown disk format {0:?} (known: raw, qcow2, vmdk, vpc (alias vhd), vhdx)")]
    UnknownFormat(String),

    /// An operation that the format does not support (e.g. resize of a VMDK).
    #[error("{}: {operation} is not supported for {format} images", path.display())]
    NotSupportedFor {
        path: PathBuf,
        format: &'static str,
        operation: &'static str,
    },
}

impl DiskError {
    /// An I/O error at `offset` in `path`.
    pub fn io(path: impl Into<PathBuf>, offset: u64, source: std::io::Error) -> DiskError {
        DiskError::Io {
            path: path.into(),
            offset,
            source,
        }
    }

    /// A corrupt-structure error.
    pub fn corrupt(
        path: impl Into<PathBuf>,
        format: &'static str,
        offset: u64,
        field: &'static str,
        reason: impl Into<String>,
    ) -> DiskError {
        DiskError::Corrupt {
            path: path.into(),
            format,
            offset,
            field,
            reason: reason.into(),
        }
    }
}

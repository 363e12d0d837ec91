//! Typed errors of the boot crate; each names the file, VM or QEMU step it is about.

use std::path::PathBuf;

/// Everything that can go wrong while preparing, starting or driving a VM.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a disk image vmedia can attach ({reason}); give its format with IMG,format=raw|qcow2|vmdk|vhd|vhdx")]
    UnknownDiskFormat { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadMedium { path: PathBuf, reason: String },
    #[error("cannot start {program}: {source}; install it with apt-get install qemu-system-x86 (or set VMEDIA_QEMU); vmedia doctor checks this host")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU refused the VM: {message}")]
    QemuFailed { message: String },
    #[error("QMP {command}: {message}")]
    Qmp { command: String, message: String },
    #[error("QMP socket {path}")]
    QmpIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name:?} {reason}")]
    Vm { name: String, reason: String },
    #[error("{file}:{line}: {reason}")]
    Config {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{iso}: {reason}")]
    Direct { iso: PathBuf, reason: String },
}

impl BootError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> BootError {
        BootError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, BootError>;

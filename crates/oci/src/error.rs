//! Typed errors: what was being done, at which registry address, layer offset or field.

/// The crate's result type.
pub type Result<T> = std::result::Result<T, OciError>;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid registry reference {text:?}: {reason}")]
    Reference { text: String, reason: String },
    #[error("{method} {url}: {reason}")]
    Connect {
        method: String,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: the registry answered {status}: {detail}")]
    Status {
        method: String,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: authentication failed: {reason}")]
    Auth { url: String, reason: String },
    #[error("manifest {what}: {problem}")]
    Manifest { what: String, problem: String },
    #[error("{what}: tar header at offset {offset:#x}, {field}: {problem}")]
    Tar {
        what: String,
        offset: u64,
        field: &'static str,
        problem: String,
    },
    #[error("{what}: {limit} is {value}, more than the limit {max}")]
    Limit {
        what: String,
        limit: &'static str,
        value: u64,
        max: u64,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: {problem}")]
    Layout { what: String, problem: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl OciError {
    /// This error as an `io::Error`, for the `Read` implementations a caller streams through
    /// (the typed error stays reachable as the source).
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
}

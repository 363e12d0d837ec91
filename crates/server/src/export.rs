//! The contract between the front ends (HTTP, NBD) and what they serve, and what the front ends
//! tell the metrics about every operation.
//!
//! Export methods block (they may fetch chunks from an object store): front ends call them from
//! `tokio::task::spawn_blocking` or a dedicated pool, never on a runtime worker.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// One run of an export's allocation, as NBD's `base:allocation` context reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    /// Not allocated: reads return zeroes and nothing backs the range (NBD_STATE_HOLE).
    pub hole: bool,
    /// Reads return zeroes (NBD_STATE_ZERO).
    pub zero: bool,
}

/// NBD block-size constraints (NBD_INFO_BLOCK_SIZE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// Something served: a library version's bytes, a disk image's virtual content, or a clone.
pub trait Export: Send + Sync {
    /// The export name as clients ask for it (`NAME@V`, `NAME@V/disk`, `clone/NAME`).
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    fn block_sizes(&self) -> BlockSizes;
    /// Fills `buf` from `offset`; the range lies inside the export (front ends check it).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// `[offset, offset + length)` as byte slices in order, if they can be had at once from
    /// memory (the shared cache) without blocking; `None` sends the caller to `read_bytes` on
    /// a blocking thread. An export that answers here also answers `extents` without
    /// blocking. The slices may share the cached chunks (no copy).
    fn read_cached(&self, _offset: u64, _length: usize) -> Option<Vec<Bytes>> {
        None
    }
    /// `[offset, offset + length)` as byte slices in order (blocking). The default reads into
    /// one new buffer; exports over cached chunks hand out slices of them instead.
    fn read_bytes(&self, offset: u64, length: usize) -> io::Result<Vec<Bytes>> {
        let mut buf = vec![0u8; length];
        self.read_at(&mut buf, offset)?;
        Ok(vec![Bytes::from(buf)])
    }
    /// Allocation of `[offset, offset + length)`, in order, covering at least one byte and at
    /// most `length` bytes.
    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>>;
    /// Writes `data` at `offset`; with `fua` it is durable before this returns.
    fn write_at(&self, _data: &[u8], _offset: u64, _fua: bool) -> io::Result<()> {
        Err(read_only_error())
    }
    /// Makes `[offset, offset + length)` read as zeroes.
    fn write_zeroes(&self, _offset: u64, _length: u64, _fua: bool) -> io::Result<()> {
        Err(read_only_error())
    }
    /// Discards `[offset, offset + length)` (reads then return zeroes).
    fn trim(&self, _offset: u64, _length: u64) -> io::Result<()> {
        Err(read_only_error())
    }
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    /// Whether a FLUSH on one connection covers writes made on every other connection.
    fn can_multi_conn(&self) -> bool {
        true
    }
}

fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "the export is read-only")
}

/// One export a client may list (NBD_OPT_LIST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportListing {
    pub name: String,
    pub description: String,
}

/// Why an export cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no such export: {0}")]
    NotFound(String),
    #[error("export {name} is unavailable: {reason}")]
    Unavailable { name: String, reason: String },
}

/// Finds exports by name. Blocking (it may read the library); call from a blocking context.
pub trait ExportResolver: Send + Sync {
    fn list(&self) -> io::Result<Vec<ExportListing>>;
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, ExportError>;
    /// `open` for a network client (its address, for the audit of a refusal).
    fn open_for(&self, name: &str, _client: &str) -> Result<Arc<dyn Export>, ExportError> {
        self.open(name)
    }
}

/// The front end an operation came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    Nbd,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Nbd => "nbd",
        }
    }
}

/// An operation, as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
    WriteZeroes,
    Trim,
    Flush,
    BlockStatus,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::WriteZeroes => "write_zeroes",
            Op::Trim => "trim",
            Op::Flush => "flush",
            Op::BlockStatus => "block_status",
        }
    }
}

/// What front ends report; `metrics` implements it. `client` is the peer address.
pub trait IoObserver: Send + Sync {
    fn connection_opened(&self, protocol: Protocol, client: &str);
    fn connection_closed(&self, protocol: Protocol, client: &str);
    /// A request was accepted for `export` (queue depth rises).
    fn request_started(&self, export: &str, client: &str);
    /// The request finished (queue depth falls); `bytes` moved, `ok` false on an error reply.
    fn request_finished(
        &self,
        export: &str,
        client: &str,
        op: Op,
        bytes: u64,
        latency: Duration,
        ok: bool,
    );
}

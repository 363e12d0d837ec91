//! Shared I/O plumbing for vmedia: positional byte sources, a shared block cache, atomic output
//! files, checked endian readers, progress hooks.
//!
//! Architecture invariant: this crate knows no image format and prints nothing.
//!
//! Durability policy for outputs (see `atomic.rs`): an output always appears under its final
//! name only when complete (temporary name + rename); flushing it to stable storage is a
//! separate, explicit choice (`Durability`): `AtomicFile::commit` flushes, commands that follow
//! the peers (cp, tar, 7z, genisoimage, xorriso, qemu-img) use `commit_with(durability)` with
//! the caller's policy (the CLI flushes only with `--sync` or `VMEDIA_SYNC=1`). This crate
//! reads no environment variables.

#![deny(unsafe_code)]

mod atomic;
pub mod bytes;
pub mod cache;
mod ordered_writer;
mod progress;
mod read_at;
#[allow(unsafe_code)] // the SHA-NI kernels; nowhere else in this crate
pub mod sha256x2;

pub use atomic::{sync_file_system, AtomicFile, Durability, OverwritePolicy};
pub use cache::{BlockCache, CacheError, CacheStats, CachedSource};
pub use ordered_writer::{
    OrderedWriter, MAX_DIRECT_ALIGN, MIN_DIRECT_RATE, RATE_WINDOW, STAGING_BYTES,
};
pub use progress::{NoProgress, Progress};
pub use read_at::{ReadAt, SliceSource};

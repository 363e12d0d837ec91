//! Shared I/O plumbing for vmedia: positional byte sources, atomic output files, progress hooks.
//!
//! Architecture invariant: this crate knows no image format and prints nothing.

mod atomic;
mod progress;
mod read_at;

pub use atomic::{sync_file_system, AtomicFile, Durability, OverwritePolicy, SYNC_ENV};
pub use progress::{NoProgress, Progress};
pub use read_at::{ReadAt, SliceSource};

//! Shared I/O plumbing for vmedia: positional byte sources, atomic output files, progress hooks.
//!
//! Architecture invariant: this crate knows no image format and prints nothing.

mod atomic;
mod progress;
mod read_at;

pub use atomic::{AtomicFile, OverwritePolicy};
pub use progress::{NoProgress, Progress};
pub use read_at::{ReadAt, SliceSource};

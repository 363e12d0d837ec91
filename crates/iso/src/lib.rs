//! ISO 9660 disc images: write (Joliet, Rock Ridge, El Torito, hybrid MBR/GPT, a UDF bridge),
//! read (UDF too), verify,
//! extract into a folder, repack with changes.
//!
//! Architecture invariant: this crate knows nothing about QEMU, disks or the network, and
//! prints nothing; callers pass a `vmedia_io::Progress` for long work, and long operations
//! open `tracing` spans (the binary installs the subscriber).

pub mod date;
pub mod extract;
pub mod integrity;
pub mod read;
pub mod repack;
pub mod report;
pub mod spec;
pub mod udf;
pub mod write;

//! ISO 9660 disc images: write (Joliet, Rock Ridge, El Torito, hybrid MBR/GPT), read, verify.
//!
//! Architecture invariant: this crate knows nothing about QEMU, disks or the network, and
//! prints nothing; callers pass a `vmedia_io::Progress` for long work.

pub mod integrity;
pub mod read;
pub mod spec;
pub mod write;

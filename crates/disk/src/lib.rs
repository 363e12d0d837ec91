//! Virtual disk formats: raw, VMDK, VHD, VHDX and qcow2, with qemu-img compatible operations.
//!
//! Architecture invariant: this crate prints nothing, knows nothing about QEMU processes or
//! ISO file systems, and never opens a file an image names (backing file, extent, parent)
//! unless the caller's open options allow it.

pub mod compare;
pub mod convert;
pub mod error;
pub mod exercise;
pub mod image;
pub mod map;
pub mod modify;
pub mod profile;
pub mod qcow2;
pub mod raw;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

pub use error::{DiskError, Result};
pub use image::{
    BackingRef, BlockKind, BlockStatus, CheckReport, ClusterCompressor, CreateOptions, DiskImage,
    Format, HostOffset, ImageInfo, ImageWriter, Measurement, OpenOptions, ReferencePolicy, Sectors,
};

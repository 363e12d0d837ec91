//! Virtual disk formats: raw, VMDK, VHD, VHDX and qcow2, with qemu-img compatible operations.
//!
//! Architecture invariant: this crate prints nothing, knows nothing about QEMU processes or
//! ISO file systems, and never opens a file an image names (backing file, extent, parent)
//! unless the caller's open options allow it: every such file goes through the options'
//! `ReferenceResolver` (`reference`), so an image can be read from any byte source.
//!
//! Module order (dependencies point one way): `image` (traits and types) and the neutral
//! helpers (`shared`, `table`, `parse_error`, `reference`, `editor`) <- the formats (`raw`,
//! `qcow2`, `vmdk`, `vhd`, `vhdx`) <- `factory` <- the operations (`convert`, `compare`,
//! `modify`, `map`, `profile`, `exercise`).

pub mod compare;
pub mod convert;
pub mod editor;
pub mod error;
pub mod exercise;
pub mod factory;
pub mod image;
pub mod map;
pub mod modify;
pub mod parse_error;
pub mod profile;
pub mod qcow2;
pub mod raw;
pub mod reference;
mod shared;
mod table;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

pub use error::{DiskError, Result};
pub use image::{
    BackingRef, BlockKind, BlockStatus, CheckReport, ClusterCompressor, CreateOptions, DiskImage,
    Format, HostOffset, ImageInfo, ImageWriter, Measurement, OpenOptions, OpenedReference,
    ReferencePolicy, ReferenceResolver, Sectors,
};
pub use reference::FolderResolver;

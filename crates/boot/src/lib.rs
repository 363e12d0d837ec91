//! Boot virtual machines in QEMU from ISOs, disks or the network and detect when they booted.
//!
//! Architecture invariant: this crate drives QEMU only through its command line, QMP and the
//! serial chardev; it never links QEMU, never prints (the CLI reports) and never lets QEMU
//! probe an image format.

pub mod console;
pub mod direct;
pub mod error;
pub mod exercise;
mod inflate;
pub mod initrd;
pub mod kernel;
pub mod kvm;
pub mod managed;
pub mod media;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod run;
pub mod spec;
pub mod store;
pub mod tune;

pub use error::{BootError, Result};

//! Boot virtual machines in QEMU from ISOs, disks or the network and detect when they booted.
//!
//! Architecture invariant: this crate drives QEMU only through its command line, QMP and the
//! serial chardev; it never links QEMU, never prints (the CLI reports) and never lets QEMU
//! probe an image format.
//!
//! Unsafe code: denied crate-wide, with one exception: `process::Guarded::spawn` registers a
//! `pre_exec` hook (an unsafe API, as it runs between fork and exec) to put QEMU in its own
//! process group and give it a parent-death signal; std has no safe way to set the latter.
//! Every system call goes through rustix.
#![deny(unsafe_code)]

pub mod console;
pub mod direct;
pub mod doctor;
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
pub mod remote;
pub mod run;
pub mod spec;
pub mod store;
pub mod tune;

pub use error::{BootError, Result};

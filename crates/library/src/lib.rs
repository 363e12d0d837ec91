//! The vmedia image library: content-addressed, deduplicated image versions with a timeline,
//! stored in a folder or an S3 object store shared by many hosts.
//!
//! Architecture invariant: this crate knows nothing of HTTP, sockets or the CLI, prints
//! nothing and reads no environment variable. All state lives in the store (`docs/library.md`
//! describes its layout), so many processes on many hosts can share one library; every change
//! of an item is a compare-and-swap of its timeline object.
#![forbid(unsafe_code)]

mod add;
mod chunker;
mod config;
mod crypto;
mod error;
pub mod fuzzing;
mod gc;
mod inspect;
mod library;
mod location;
pub mod manifest;
mod naming;
mod ops;
mod reader;
mod references;
mod reports;
mod restore;
pub mod retention;
mod signing;
pub mod store;
pub mod sync;
mod timefmt;
pub mod timeline;
mod verify;

pub use add::{AddOptions, AddSource};
pub use error::{LibraryError, Result};
pub use library::{Library, CHUNKING};
pub use location::{
    InitOptions, Location, OpenConfig, ProvidedStore, S3Settings, DEFAULT_KEEP_WITHIN,
    S3_READ_DEADLINE,
};
pub use manifest::{BootEntryRecord, EmbeddedCheck, ImageKind};
pub use naming::{VersionSelector, VersionSpec};
pub use ops::RollbackTarget;
pub use reader::{ChunkCache, ReadPiece, VersionReader};
pub use references::NoReferences;
pub use reports::{
    AddReport, BrokenVersion, DamagedChunk, EventReport, GcReport, GetReport, HistoryEvent,
    HistoryReport, HistoryVersion, InitReport, ItemSummary, KeptVersion, PruneReport,
    PrunedVersion, RepairReport, SignatureFailure, SignatureReport, VerifyReport, VersionReport,
};
pub use signing::{parse_signing_key, parse_verifying_key, verify_signature};
pub use sync::{sync, sync_status, SyncOptions, SyncReport, SyncStatusReport};
pub use timeline::EventKind;

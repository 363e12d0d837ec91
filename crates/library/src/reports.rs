//! The typed reports every operation returns (they are also the future REST API's schemas).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::manifest::ImageKind;
use crate::timeline::EventKind;

/// What `add` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct AddReport {
    pub name: String,
    pub version: u64,
    /// `sha256:hex` of the whole image (compare with a published SHA256SUMS).
    pub digest: String,
    pub size: u64,
    /// Image bytes in chunks the library did not hold before.
    pub new_bytes: u64,
    /// Image bytes in chunks it already held (or zero runs, which are not stored).
    pub reused_bytes: u64,
    /// Bytes written to the store for the new chunks (after compression and sealing).
    pub stored_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub kind: ImageKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    pub manifest: String,
}

/// One item in `ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ItemSummary {
    pub name: String,
    /// The current version (the one a restore brings back, when removed).
    pub current: Option<u64>,
    pub digest: Option<String>,
    pub size: Option<u64>,
    pub kind: Option<String>,
    /// Versions not pruned.
    pub versions: u64,
    pub removed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// `show`: one version in full.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct VersionReport {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub size: u64,
    pub created: String,
    pub actor: String,
    pub note: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub kind: ImageKind,
    pub current: bool,
    pub signed_by: Option<String>,
    pub chunks: u64,
    pub stored_bytes: u64,
    /// Image bytes in chunks no earlier version of the item uses (earlier by creation time,
    /// then manifest name: the same order at every site); `None` when an earlier version's
    /// manifest could not be read.
    #[serde(default)]
    pub new_bytes: Option<u64>,
    /// The rest of `size`: bytes in chunks (and zero runs) an earlier version already uses.
    #[serde(default)]
    pub shared_bytes: Option<u64>,
    pub manifest: String,
}

/// One version in `history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HistoryVersion {
    pub version: u64,
    pub digest: String,
    pub size: u64,
    pub created: String,
    pub kind: String,
    pub current: bool,
    pub signed_by: Option<String>,
    /// Why prune released it, when it did.
    pub pruned: Option<String>,
    /// As in `show`: bytes in chunks no earlier kept version uses. `None` for a pruned
    /// version (its chunks are released) or when an earlier manifest could not be read.
    #[serde(default)]
    pub new_bytes: Option<u64>,
    /// The rest of `size` (`None` with `new_bytes`).
    #[serde(default)]
    pub shared_bytes: Option<u64>,
}

/// One event in `history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HistoryEvent {
    pub time: String,
    pub actor: String,
    pub kind: EventKind,
    pub version: Option<u64>,
    pub digest: Option<String>,
    pub note: Option<String>,
}

/// `history NAME`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct HistoryReport {
    pub name: String,
    pub current: Option<u64>,
    pub removed: bool,
    pub versions: Vec<HistoryVersion>,
    pub events: Vec<HistoryEvent>,
}

/// `get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct GetReport {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub size: u64,
    #[cfg_attr(feature = "schema", schema(value_type = String))]
    pub path: PathBuf,
    /// Bytes written (the rest are holes left sparse).
    pub written_bytes: u64,
    pub hole_bytes: u64,
}

/// `rollback` and `rm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct EventReport {
    pub name: String,
    pub kind: EventKind,
    pub version: Option<u64>,
    pub digest: Option<String>,
    pub time: String,
    pub actor: String,
    pub note: Option<String>,
}

/// A version `prune` releases (or would).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PrunedVersion {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub size: u64,
    pub reason: String,
}

/// A version `prune` keeps, and the rule that keeps it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct KeptVersion {
    pub name: String,
    pub version: u64,
    pub reason: String,
}

/// `prune`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct PruneReport {
    pub dry_run: bool,
    pub now: String,
    pub keep_within_seconds: u64,
    pub keep_last: Option<u32>,
    pub pruned: Vec<PrunedVersion>,
    pub kept: Vec<KeptVersion>,
}

/// `gc`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct GcReport {
    /// False when adds kept running on other hosts for the whole wait: nothing was deleted.
    pub ran: bool,
    pub deleted_chunks: u64,
    pub freed_bytes: u64,
    pub kept_chunks: u64,
    pub kept_bytes: u64,
    pub deleted_manifests: u64,
    pub stale_markers_removed: u64,
    pub waited_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred_reason: Option<String>,
}

/// A chunk `verify` found bad, and every version it breaks.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct DamagedChunk {
    /// The chunk's object key.
    pub chunk: String,
    /// `sha256:hex` of the content it should hold.
    pub digest: String,
    pub problem: String,
    /// `NAME@N` of every version using it.
    pub versions: Vec<String>,
}

/// A version `verify` found unusable.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct BrokenVersion {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub problem: String,
}

/// `verify`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct VerifyReport {
    pub items: u64,
    pub versions: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub damaged_chunks: Vec<DamagedChunk>,
    pub broken_versions: Vec<BrokenVersion>,
    /// Objects that could not be read at all (timelines), with the problem.
    pub unreadable: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is damaged: the CLI exits non-zero otherwise.
    pub fn ok(&self) -> bool {
        self.damaged_chunks.is_empty()
            && self.broken_versions.is_empty()
            && self.unreadable.is_empty()
    }
}

/// `repair --from`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct RepairReport {
    /// Chunks replaced with good copies from the other library.
    pub repaired: Vec<String>,
    /// Damaged chunks the other library does not hold intact either.
    pub unrepaired: Vec<String>,
    /// The verification after repair.
    pub after: VerifyReport,
}

/// `verify-signature`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct SignatureReport {
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub signed: bool,
    /// The id of the key that signed it, when signed.
    pub key_id: Option<String>,
    /// True when signed by the given key and the signature matches the manifest.
    pub valid: bool,
    pub problem: Option<String>,
}

impl SignatureReport {
    pub fn ok(&self) -> bool {
        self.valid
    }
}

/// What `init` made: where the library is and the policy it recorded.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct InitReport {
    pub location: String,
    pub encrypted: bool,
    /// How many trusted signing keys every version must be signed by one of (0: none required).
    pub require_signed: usize,
    pub keep_within_seconds: u64,
    pub keep_last: Option<u32>,
}

impl InitReport {
    pub fn new(location: &crate::Location, options: &crate::InitOptions) -> InitReport {
        InitReport {
            location: location.to_string(),
            encrypted: options.encrypt_key.is_some(),
            require_signed: options.require_signed.len(),
            keep_within_seconds: options.keep_within.as_secs(),
            keep_last: options.keep_last,
        }
    }
}

/// A signature check that could not even start: the bytes are not a manifest or the key is
/// not a key. Always `valid: false`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct SignatureFailure {
    pub valid: bool,
    pub error: String,
}

impl SignatureFailure {
    pub fn new(error: String) -> SignatureFailure {
        SignatureFailure {
            valid: false,
            error,
        }
    }
}

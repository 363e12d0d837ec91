//! Embedded integrity: checkisomd5-compatible MD5, SHA-256 and ed25519 signatures inside an image.
//!
//! Everything lives in the primary volume descriptor's 512-byte application-use area (see
//! [`appdata`] for the text layout), the place isomd5sum already uses, so no sector moves and
//! xorriso, isoinfo, 7z, bsdtar and firmware see an ordinary image.
//!
//! What each check covers (the application-use area always hashed as 512 spaces):
//! - MD5: bytes `[0, volume_size - SKIPSECTORS * 2048)`, exactly what `checkisomd5` hashes, with
//!   its fragment checkpoints.
//! - SHA-256: bytes `[0, SHA256 BYTES)`, the whole image file as written (volume, padding and any
//!   appended partition), so nothing at the end escapes the signature.
//! - Signature: ed25519 over [`keys::signed_message`]: the context string
//!   `vmedia-iso-ed25519-v1\0`, the covered length (u64 big-endian) and the SHA-256 digest.
//!
//! Architecture invariant: this module never changes a byte outside the application-use area,
//! and verification reads only.

pub mod appdata;
mod hasher;
pub mod keys;
mod stream;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Serialize;
use vmedia_io::{sha256x2, Progress, ReadAt};

pub use appdata::{Md5Record, Sha256Record, SignatureRecord};
pub use keys::{
    generate_keypair, key_id, load_signing_key, load_verifying_key, signed_message,
    signing_key_pem, verifying_key_pem,
};
pub use stream::ImplantTask;

use appdata::{
    AppData, APPDATA_OFFSET, APPDATA_SIZE, FRAGMENT_COUNT, FRAGMENT_SUMS_SIZE, SKIP_SECTORS,
};
use hasher::{hash_image, Md5Outcome, Md5Plan};

/// ISO 9660 logical sector size.
const SECTOR_SIZE: u64 = 2048;
/// Volume descriptors start after the 16-sector system area.
const FIRST_DESCRIPTOR_SECTOR: u64 = 16;
/// Real images have a handful of descriptors; a longer chain is damage, not data.
const MAX_DESCRIPTORS: u64 = 64;

/// Which checks `implant_file` writes.
#[derive(Debug, Clone)]
pub struct ImplantOptions {
    /// The isomd5sum MD5 that `checkisomd5` and installers' media checks verify.
    pub md5: bool,
    /// SHA-256 of the whole image file.
    pub sha256: bool,
    /// Signs the SHA-256 with this key; implies `sha256`.
    pub signing_key: Option<SigningKey>,
}

impl Default for ImplantOptions {
    /// MD5 and SHA-256 on, no signature: what `vmedia mkisofs` does unless told otherwise.
    fn default() -> Self {
        ImplantOptions {
            md5: true,
            sha256: true,
            signing_key: None,
        }
    }
}

/// What `implant_file` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Implant {
    #[serde(serialize_with = "serialize_hex_opt")]
    pub md5: Option<[u8; 16]>,
    #[serde(serialize_with = "serialize_hex_opt")]
    pub sha256: Option<[u8; 32]>,
    /// Bytes the SHA-256 (and so the signature) covers.
    pub sha256_bytes: Option<u64>,
    pub signed: bool,
    /// Names the signing key (first 8 bytes of SHA-256 of the public key).
    #[serde(serialize_with = "serialize_hex_opt")]
    pub key_id: Option<[u8; 8]>,
}

/// The checks an image carries, as read from its primary volume descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImplantInfo {
    /// Byte offset of the primary volume descriptor.
    pub pvd_offset: u64,
    /// Volume size from the descriptor, in bytes.
    pub volume_bytes: u64,
    pub md5: Option<Md5Record>,
    pub sha256: Option<Sha256Record>,
    pub signature: Option<SignatureRecord>,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CheckOutcome {
    /// The image carries no such value.
    Absent,
    /// Present and matching.
    Ok,
    /// Present and wrong.
    Mismatch { expected: String, actual: String },
    /// Present but not checked (e.g. a signature without `--key`).
    Unchecked { reason: String },
}

impl CheckOutcome {
    pub fn is_mismatch(&self) -> bool {
        matches!(self, CheckOutcome::Mismatch { .. })
    }
}

/// Per check: absent, ok, or mismatch with expected and actual values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// What the image declares; `None` when it carries no checks at all.
    pub implant: Option<ImplantInfo>,
    pub md5: CheckOutcome,
    /// isomd5sum's fragment checkpoints (they locate damage to a twentieth of the image).
    pub fragments: CheckOutcome,
    /// The first fragment (1-based) whose checkpoint failed, with its byte range.
    pub first_bad_fragment: Option<BadFragment>,
    pub sha256: CheckOutcome,
    pub signature: CheckOutcome,
}

/// Where the first failed fragment checkpoint lies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadFragment {
    pub index: u64,
    /// The damage is somewhere before this offset and after the previous good checkpoint.
    pub checkpoint_offset: u64,
}

impl VerifyReport {
    /// True when at least one check failed.
    pub fn any_mismatch(&self) -> bool {
        [&self.md5, &self.fragments, &self.sha256, &self.signature]
            .iter()
            .any(|c| c.is_mismatch())
    }
    /// True when at least one value was actually compared.
    pub fn anything_checked(&self) -> bool {
        [&self.md5, &self.fragments, &self.sha256, &self.signature]
            .iter()
            .any(|c| matches!(c, CheckOutcome::Ok | CheckOutcome::Mismatch { .. }))
    }
}

/// Errors of implanting and verifying.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("reading the image at offset {offset:#x}: {source}")]
    Read { offset: u64, source: io::Error },
    #[error("writing the checksum record at offset {offset:#x}: {source}")]
    Write { offset: u64, source: io::Error },
    #[error("no ISO 9660 primary volume descriptor in sectors 16..{}: not an ISO image", FIRST_DESCRIPTOR_SECTOR + MAX_DESCRIPTORS)]
    NoPrimaryVolume,
    #[error("primary volume descriptor at offset {offset:#x}, field {field}: {problem}")]
    BadDescriptor {
        offset: u64,
        field: &'static str,
        problem: String,
    },
    #[error("checksum record at offset {offset:#x}, field {field}: {problem}")]
    BadRecord {
        offset: u64,
        field: &'static str,
        problem: String,
    },
    #[error("the image is {actual} bytes but must be at least {expected} (its volume size or recorded SHA256 BYTES): it is truncated")]
    Truncated { expected: u64, actual: u64 },
    #[error("the checksum record needs {needed} bytes but the application-use area holds {}", APPDATA_SIZE - 1)]
    RecordTooLong { needed: usize },
    #[error("key file {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error("encoding a key: {0}")]
    KeyEncoding(String),
}

/// Hashes a finished image in place and writes the record into its application-use area.
///
/// The file must be open for reading and writing. Any earlier record is replaced (like
/// `implantisomd5 -f`): the area is hashed as spaces either way.
pub fn implant_file(
    file: &File,
    opts: &ImplantOptions,
    progress: &dyn Progress,
) -> Result<Implant, IntegrityError> {
    let _span = tracing::info_span!("iso.implant").entered();
    let file_size = file
        .size()
        .map_err(|source| IntegrityError::Read { offset: 0, source })?;
    let computed = compute_implant(file, file_size, opts, progress)?;
    computed.write(file)
}

/// A record computed but not yet written, and where it goes.
pub(crate) struct ComputedImplant {
    offset: u64,
    area: [u8; APPDATA_SIZE],
    implant: Implant,
}

impl ComputedImplant {
    pub(crate) fn write(self, file: &File) -> Result<Implant, IntegrityError> {
        let offset = self.offset;
        file.write_all_at(&self.area, offset)
            .map_err(|source| IntegrityError::Write { offset, source })?;
        Ok(self.implant)
    }
}

/// Hashes `source` (an image of `image_bytes` bytes) and builds its record.
pub(crate) fn compute_implant(
    source: &dyn ReadAt,
    image_bytes: u64,
    opts: &ImplantOptions,
    progress: &dyn Progress,
) -> Result<ComputedImplant, IntegrityError> {
    let pvd = find_primary_volume(source)?;
    if image_bytes < pvd.volume_bytes {
        return Err(IntegrityError::Truncated {
            expected: pvd.volume_bytes,
            actual: image_bytes,
        });
    }
    let want_sha = opts.sha256 || opts.signing_key.is_some();
    let md5_plan = if opts.md5 {
        let length = md5_length(&pvd, SKIP_SECTORS)?;
        Some(Md5Plan {
            length,
            fragment_count: FRAGMENT_COUNT,
        })
    } else {
        None
    };
    progress.phase("checksums");
    let (md5, sha) = hash_image(
        source,
        md5_plan.as_ref(),
        want_sha.then_some(image_bytes),
        pvd.appdata_range(),
        progress,
    )
    .map_err(|f| IntegrityError::Read {
        offset: f.offset,
        source: f.error,
    })?;

    let md5_record = md5
        .as_ref()
        .zip(md5_plan.as_ref())
        .map(|(outcome, plan)| Md5Record {
            digest: outcome.digest,
            skip_sectors: SKIP_SECTORS,
            supported: Some(0),
            fragment_sums: Some(fragment_sums_text(outcome, plan.fragment_count)),
            fragment_count: plan.fragment_count,
        });
    let sha_record = sha.map(|digest| Sha256Record {
        digest,
        covered_bytes: image_bytes,
    });
    let signature_record = match (&opts.signing_key, &sha_record) {
        (Some(key), Some(sha)) => {
            let signature = key.sign(&signed_message(sha.covered_bytes, &sha.digest));
            Some(SignatureRecord {
                signature: signature.to_bytes(),
                key_id: key_id(&key.verifying_key()),
            })
        }
        _ => None,
    };
    let data = AppData {
        md5: md5_record.clone(),
        sha256: sha_record.clone(),
        signature: signature_record.clone(),
    };
    let area = data
        .emit()
        .map_err(|e| IntegrityError::RecordTooLong { needed: e.needed })?;
    Ok(ComputedImplant {
        offset: pvd.appdata_range().start,
        area,
        implant: Implant {
            md5: md5_record.map(|r| r.digest),
            sha256: sha_record.as_ref().map(|r| r.digest),
            sha256_bytes: sha_record.map(|r| r.covered_bytes),
            signed: signature_record.is_some(),
            key_id: signature_record.map(|r| r.key_id),
        },
    })
}

/// Reads the checks an image declares, without hashing anything (for `iso info`).
pub fn read_implant(source: &dyn ReadAt) -> Result<Option<ImplantInfo>, IntegrityError> {
    let pvd = find_primary_volume(source)?;
    let Some(data) = AppData::parse(&pvd.appdata).map_err(|e| IntegrityError::BadRecord {
        offset: pvd.appdata_range().start,
        field: e.field,
        problem: e.problem,
    })?
    else {
        return Ok(None);
    };
    Ok(Some(ImplantInfo {
        pvd_offset: pvd.offset,
        volume_bytes: pvd.volume_bytes,
        md5: data.md5,
        sha256: data.sha256,
        signature: data.signature,
    }))
}

/// Checks every embedded value against the image's bytes.
///
/// With `key`, a missing or invalid signature is a mismatch; without it a present signature is
/// reported as unchecked.
pub fn verify(
    source: &dyn ReadAt,
    key: Option<&VerifyingKey>,
    progress: &dyn Progress,
) -> Result<VerifyReport, IntegrityError> {
    let _span = tracing::info_span!("iso.verify", signature_key = key.is_some()).entered();
    let Some(plan) = CheckPlan::read(source, Md5Policy::Always)? else {
        return Ok(absent_report(key));
    };
    let size = source
        .size()
        .map_err(|source| IntegrityError::Read { offset: 0, source })?;
    plan.check_size(size)?;
    progress.phase("verifying");
    let (md5, sha) = hash_image(
        source,
        plan.md5.as_ref(),
        plan.sha_length,
        plan.blank.clone(),
        progress,
    )
    .map_err(|f| IntegrityError::Read {
        offset: f.offset,
        source: f.error,
    })?;
    Ok(plan.judge(md5.as_ref(), sha.as_ref(), key))
}

/// The report for an image that carries no record at all.
fn absent_report(key: Option<&VerifyingKey>) -> VerifyReport {
    VerifyReport {
        implant: None,
        md5: CheckOutcome::Absent,
        fragments: CheckOutcome::Absent,
        first_bad_fragment: None,
        sha256: CheckOutcome::Absent,
        signature: match key {
            Some(key) => missing_signature(key),
            None => CheckOutcome::Absent,
        },
    }
}

/// Whether a check hashes the MD5 when a SHA-256 record covers the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Md5Policy {
    /// Check every recorded value (what `iso verify` does: it also finds a stale MD5 record).
    Always,
    /// Leave the MD5 and its fragments unchecked when the SHA-256 record covers every byte the
    /// MD5 covers: a matching SHA-256 already proves those bytes are the ones the producer
    /// hashed, and the MD5 (a chain that cannot be split across cores) is the slowest hash.
    UnlessSha256Covers,
}

/// What checking an image's record will hash, read from its descriptors.
struct CheckPlan {
    info: ImplantInfo,
    md5: Option<Md5Plan>,
    /// Why the MD5 record is not checked although present.
    md5_skipped: Option<String>,
    sha_length: Option<u64>,
    blank: std::ops::Range<u64>,
}

impl CheckPlan {
    /// `None` when the image carries no record.
    fn read(source: &dyn ReadAt, policy: Md5Policy) -> Result<Option<CheckPlan>, IntegrityError> {
        let pvd = find_primary_volume(source)?;
        let Some(info) = read_implant(source)? else {
            return Ok(None);
        };
        let sha_length = info.sha256.as_ref().map(|r| r.covered_bytes);
        let mut md5 = None;
        let mut md5_skipped = None;
        if let Some(record) = &info.md5 {
            let length = md5_length(&pvd, record.skip_sectors)?;
            if policy == Md5Policy::UnlessSha256Covers && sha_length.is_some_and(|l| l >= length) {
                md5_skipped = Some("the SHA-256 record covers the same bytes".to_string());
            } else {
                md5 = Some(Md5Plan {
                    length,
                    fragment_count: record.fragment_count,
                });
            }
        }
        Ok(Some(CheckPlan {
            info,
            md5,
            md5_skipped,
            sha_length,
            blank: pvd.appdata_range(),
        }))
    }

    /// Bytes the hashes need from offset 0.
    fn needed(&self) -> u64 {
        self.md5
            .as_ref()
            .map_or(0, |p| p.length)
            .max(self.sha_length.unwrap_or(0))
    }

    fn check_size(&self, size: u64) -> Result<(), IntegrityError> {
        if size < self.needed() {
            return Err(IntegrityError::Truncated {
                expected: self.needed(),
                actual: size,
            });
        }
        Ok(())
    }

    /// Compares what was hashed with what the record says.
    fn judge(
        self,
        md5: Option<&Md5Outcome>,
        sha: Option<&[u8; 32]>,
        key: Option<&VerifyingKey>,
    ) -> VerifyReport {
        let info = self.info;
        let (md5_outcome, fragments, first_bad_fragment) = match (&info.md5, md5, &self.md5) {
            (Some(record), Some(outcome), Some(plan)) => {
                let whole = compare(&hex::encode(record.digest), &hex::encode(outcome.digest));
                let (fragments, bad) = check_fragments(record, outcome, plan);
                (whole, fragments, bad)
            }
            (Some(record), _, None) => match self.md5_skipped {
                Some(reason) => {
                    let unchecked = CheckOutcome::Unchecked { reason };
                    let fragments = match record.fragment_sums {
                        Some(_) if record.fragment_count > 0 => unchecked.clone(),
                        _ => CheckOutcome::Absent,
                    };
                    (unchecked, fragments, None)
                }
                None => (CheckOutcome::Absent, CheckOutcome::Absent, None),
            },
            _ => (CheckOutcome::Absent, CheckOutcome::Absent, None),
        };
        let sha_outcome = match (&info.sha256, sha) {
            (Some(record), Some(digest)) => {
                compare(&hex::encode(record.digest), &hex::encode(digest))
            }
            _ => CheckOutcome::Absent,
        };
        let signature = match (&info.signature, key) {
            (None, None) => CheckOutcome::Absent,
            (None, Some(key)) => missing_signature(key),
            (Some(record), None) => CheckOutcome::Unchecked {
                reason: format!(
                    "signed by key {}; pass the public key to check it",
                    hex::encode(record.key_id)
                ),
            },
            (Some(record), Some(key)) => check_signature(record, info.sha256.as_ref(), sha, key),
        };
        VerifyReport {
            implant: Some(info),
            md5: md5_outcome,
            fragments,
            first_bad_fragment,
            sha256: sha_outcome,
            signature,
        }
    }
}

/// Checks an image's embedded values from its bytes as they stream past, in order from offset
/// 0, so a caller that reads the image anyway (the library chunking it) needs no second read.
pub struct StreamVerifier {
    plan: CheckPlan,
    md5: Option<hasher::Md5Runner>,
    sha: Option<sha256x2::Sha256>,
    /// Bytes seen so far.
    offset: u64,
}

impl StreamVerifier {
    /// Reads the volume descriptors of `head` (the image, or at least its first sectors) and
    /// prepares the check; `None` when the image carries no record.
    pub fn new(head: &dyn ReadAt, policy: Md5Policy) -> Result<Option<Self>, IntegrityError> {
        let Some(plan) = CheckPlan::read(head, policy)? else {
            return Ok(None);
        };
        Ok(Some(StreamVerifier {
            md5: plan.md5.as_ref().map(hasher::Md5Runner::new),
            sha: plan.sha_length.map(|_| sha256x2::Sha256::new()),
            plan,
            offset: 0,
        }))
    }

    /// The bytes that follow those fed so far.
    pub fn feed(&mut self, data: &[u8]) {
        self.feed_inner(data, None);
    }

    /// `feed`, and `data` appended to `whole` as well, for a caller that hashes the image
    /// itself: the embedded SHA-256 covers the same bytes (but the application-use area), so
    /// the two computations advance in lockstep on one core (`sha256x2::update_pair`).
    pub fn feed_paired(&mut self, data: &[u8], whole: &mut sha256x2::Sha256) {
        self.feed_inner(data, Some(whole));
    }

    fn feed_inner(&mut self, data: &[u8], whole: Option<&mut sha256x2::Sha256>) {
        let start = self.offset;
        self.offset = start.saturating_add(data.len() as u64);
        let needed = self.plan.needed();
        if start >= needed {
            if let Some(whole) = whole {
                whole.update(data);
            }
            return;
        }
        let ours = &data[..(needed - start).min(data.len() as u64) as usize];
        // Only the piece holding the application-use area is copied, to hash it as spaces.
        let blanked;
        let ours = if start < self.plan.blank.end && self.plan.blank.start < self.offset {
            let mut copy = ours.to_vec();
            hasher::blank_out(&mut copy, start, &self.plan.blank);
            blanked = copy;
            &blanked[..]
        } else {
            ours
        };
        if let (Some(runner), Some(plan)) = (&mut self.md5, &self.plan.md5) {
            let take = plan
                .length
                .saturating_sub(runner.offset())
                .min(ours.len() as u64);
            runner.feed(&ours[..take as usize]);
        }
        match (&mut self.sha, self.plan.sha_length, whole) {
            (Some(sha), Some(length), whole) => {
                let take = length.saturating_sub(start).min(ours.len() as u64) as usize;
                match whole {
                    Some(whole) => sha256x2::update_pair(whole, data, sha, &ours[..take]),
                    None => sha.update(&ours[..take]),
                }
            }
            (_, _, Some(whole)) => whole.update(data),
            _ => {}
        }
    }

    /// Every byte has been fed: the report, as [`verify`] without a key gives it.
    pub fn finish(self) -> Result<VerifyReport, IntegrityError> {
        self.plan.check_size(self.offset)?;
        let md5 = self.md5.map(hasher::Md5Runner::finish);
        let sha: Option<[u8; 32]> = self.sha.map(sha256x2::Sha256::finalize);
        Ok(self.plan.judge(md5.as_ref(), sha.as_ref(), None))
    }
}

fn missing_signature(key: &VerifyingKey) -> CheckOutcome {
    CheckOutcome::Mismatch {
        expected: format!("a signature by key {}", hex::encode(key_id(key))),
        actual: "no signature".into(),
    }
}

/// The signature must verify over the digest of the bytes actually read, not merely over the
/// recorded one, so a signed image whose data changed fails here too.
fn check_signature(
    record: &SignatureRecord,
    sha_record: Option<&Sha256Record>,
    actual_sha: Option<&[u8; 32]>,
    key: &VerifyingKey,
) -> CheckOutcome {
    let expected = format!("a valid signature by key {}", hex::encode(key_id(key)));
    if record.key_id != key_id(key) {
        return CheckOutcome::Mismatch {
            expected,
            actual: format!("signed by key {}", hex::encode(record.key_id)),
        };
    }
    let (Some(sha_record), Some(actual_sha)) = (sha_record, actual_sha) else {
        return CheckOutcome::Mismatch {
            expected,
            actual: "no SHA256 record to check".into(),
        };
    };
    let message = signed_message(sha_record.covered_bytes, actual_sha);
    match key.verify(&message, &Signature::from_bytes(&record.signature)) {
        Ok(()) => CheckOutcome::Ok,
        Err(_) => CheckOutcome::Mismatch {
            expected,
            actual: "the signature does not match the image's content".into(),
        },
    }
}

fn compare(expected: &str, actual: &str) -> CheckOutcome {
    if expected == actual {
        CheckOutcome::Ok
    } else {
        CheckOutcome::Mismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
}

/// Compares checkpoints the way checkisomd5 does: fragment `k`'s characters sit at
/// `(k - 1) * chars_per_fragment` in the recorded text, and only visited fragments count.
fn check_fragments(
    record: &Md5Record,
    outcome: &Md5Outcome,
    plan: &Md5Plan,
) -> (CheckOutcome, Option<BadFragment>) {
    let Some(sums) = &record.fragment_sums else {
        return (CheckOutcome::Absent, None);
    };
    if record.fragment_count == 0 {
        return (CheckOutcome::Absent, None);
    }
    let per_fragment = chars_per_fragment(record.fragment_count);
    let fragment_size = plan.length / plan.fragment_count.saturating_add(1);
    let sums = sums.as_bytes();
    for (index, state) in outcome.checkpoints.iter().enumerate() {
        let Some(state) = state else { continue };
        let actual = appdata::fragment_chars(state, per_fragment);
        let start = (index - 1) * per_fragment;
        let expected = sums.get(start..start + actual.len()).unwrap_or(&[]);
        if expected != actual.as_slice() {
            // Later checkpoints all differ once one has, so the first one is the news.
            let bad = BadFragment {
                index: index as u64,
                checkpoint_offset: checkpoint_end(index as u64, fragment_size, plan.length),
            };
            let mismatch = CheckOutcome::Mismatch {
                expected: format!("fragment {index}: {}", String::from_utf8_lossy(expected)),
                actual: format!("fragment {index}: {}", String::from_utf8_lossy(&actual)),
            };
            return (mismatch, Some(bad));
        }
    }
    (CheckOutcome::Ok, None)
}

/// The byte offset where checkisomd5 takes checkpoint `k`: the end of the 32 KiB step during
/// which the running offset first reaches fragment `k`.
fn checkpoint_end(fragment: u64, fragment_size: u64, length: u64) -> u64 {
    let boundary = fragment.saturating_mul(fragment_size);
    let step = hasher::CHECKER_STEP;
    let step_start = boundary.div_ceil(step).saturating_mul(step);
    step_start.saturating_add(step).min(length)
}

fn chars_per_fragment(fragment_count: u64) -> usize {
    usize::try_from(FRAGMENT_SUMS_SIZE as u64 / fragment_count.max(1)).unwrap_or(0)
}

/// isomd5sum's text: for every fragment checkisomd5 will visit, its characters at the position
/// checkisomd5 reads them from. Fragments a tiny image skips over keep `0`s, never compared.
fn fragment_sums_text(outcome: &Md5Outcome, fragment_count: u64) -> String {
    let per_fragment = chars_per_fragment(fragment_count);
    let width = per_fragment * usize::try_from(fragment_count).unwrap_or(0);
    let mut text = vec![b'0'; width.min(FRAGMENT_SUMS_SIZE)];
    for (index, state) in outcome.checkpoints.iter().enumerate() {
        let Some(state) = state else { continue };
        let chars = appdata::fragment_chars(state, per_fragment);
        let start = (index - 1) * per_fragment;
        if let Some(slot) = text.get_mut(start..start + chars.len()) {
            slot.copy_from_slice(&chars);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The primary volume descriptor: where it is and what the checks need from it.
struct PrimaryVolume {
    offset: u64,
    volume_bytes: u64,
    appdata: [u8; APPDATA_SIZE],
}

impl PrimaryVolume {
    fn appdata_range(&self) -> std::ops::Range<u64> {
        let start = self.offset + APPDATA_OFFSET;
        start..start + APPDATA_SIZE as u64
    }
}

fn md5_length(pvd: &PrimaryVolume, skip_sectors: u64) -> Result<u64, IntegrityError> {
    skip_sectors
        .checked_mul(SECTOR_SIZE)
        .and_then(|skip| pvd.volume_bytes.checked_sub(skip))
        .filter(|&length| length > pvd.appdata_range().end)
        .ok_or_else(|| IntegrityError::BadDescriptor {
            offset: pvd.offset,
            field: "volume space size",
            problem: format!(
                "{} bytes leave nothing to hash after skipping {skip_sectors} sectors",
                pvd.volume_bytes
            ),
        })
}

fn find_primary_volume(source: &dyn ReadAt) -> Result<PrimaryVolume, IntegrityError> {
    let mut sector = [0u8; SECTOR_SIZE as usize];
    for index in FIRST_DESCRIPTOR_SECTOR..FIRST_DESCRIPTOR_SECTOR + MAX_DESCRIPTORS {
        let offset = index * SECTOR_SIZE;
        match source.read_exact_at(&mut sector, offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(IntegrityError::NoPrimaryVolume)
            }
            Err(source) => return Err(IntegrityError::Read { offset, source }),
        }
        if &sector[1..6] != b"CD001" {
            return Err(IntegrityError::NoPrimaryVolume);
        }
        match sector[0] {
            1 => {
                // checkisomd5 reads the big-endian half; both halves must agree.
                // A whole sector: both fields lie inside the checked view.
                let fields = vmedia_io::bytes::Fields::new_checked(&sector[..], 88)
                    .ok_or(IntegrityError::NoPrimaryVolume)?;
                let (le, be) = (fields.le32(80), fields.be32(84));
                if le != be {
                    return Err(IntegrityError::BadDescriptor {
                        offset: offset + 80,
                        field: "volume space size",
                        problem: format!("little-endian {le} and big-endian {be} halves differ"),
                    });
                }
                let mut appdata = [0u8; APPDATA_SIZE];
                appdata.copy_from_slice(
                    &sector[APPDATA_OFFSET as usize..APPDATA_OFFSET as usize + APPDATA_SIZE],
                );
                return Ok(PrimaryVolume {
                    offset,
                    volume_bytes: u64::from(be) * SECTOR_SIZE,
                    appdata,
                });
            }
            255 => return Err(IntegrityError::NoPrimaryVolume),
            _ => {}
        }
    }
    Err(IntegrityError::NoPrimaryVolume)
}

/// Serialises a byte array as lowercase hex (JSON output of `iso info` / `iso verify`).
pub(crate) fn serialize_hex<S: serde::Serializer, const N: usize>(
    bytes: &[u8; N],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(bytes))
}

fn serialize_hex_opt<S: serde::Serializer, const N: usize>(
    bytes: &Option<[u8; N]>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(b) => serializer.serialize_some(&hex::encode(b)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmedia_io::NoProgress;

    /// A minimal ISO 9660 volume: system area, a PVD, a terminator and some data sectors.
    pub(super) fn tiny_iso(sectors: u32) -> Vec<u8> {
        let mut image = vec![0u8; sectors as usize * SECTOR_SIZE as usize];
        for (i, b) in image.iter_mut().enumerate().skip(20 * SECTOR_SIZE as usize) {
            *b = (i % 249) as u8;
        }
        let pvd = &mut image[16 * 2048..17 * 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[80..84].copy_from_slice(&sectors.to_le_bytes());
        pvd[84..88].copy_from_slice(&sectors.to_be_bytes());
        pvd[883..883 + 512].fill(b' ');
        let term = &mut image[17 * 2048..18 * 2048];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        term[6] = 1;
        image
    }

    pub(super) fn write_temp(image: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.iso");
        std::fs::write(&path, image).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (dir, file)
    }

    #[test]
    fn implant_then_verify_passes_every_check() {
        let (_dir, file) = write_temp(&tiny_iso(2000));
        let key = generate_keypair();
        let opts = ImplantOptions {
            md5: true,
            sha256: true,
            signing_key: Some(key.clone()),
        };
        let implant = implant_file(&file, &opts, &NoProgress).unwrap();
        assert!(implant.signed);
        let report = verify(&file, Some(&key.verifying_key()), &NoProgress).unwrap();
        assert_eq!(report.md5, CheckOutcome::Ok);
        assert_eq!(report.fragments, CheckOutcome::Ok);
        assert_eq!(report.sha256, CheckOutcome::Ok);
        assert_eq!(report.signature, CheckOutcome::Ok);
        assert!(!report.any_mismatch());
    }

    #[test]
    fn md5_matches_an_independent_computation() {
        let image = tiny_iso(1000);
        let (_dir, file) = write_temp(&image);
        let implant = implant_file(&file, &ImplantOptions::default(), &NoProgress).unwrap();
        let mut blanked = image.clone();
        blanked[16 * 2048 + 883..16 * 2048 + 883 + 512].fill(b' ');
        let md5_len = (1000 - 15) * 2048;
        use md5::Digest;
        assert_eq!(
            implant.md5.unwrap(),
            <[u8; 16]>::from(md5::Md5::digest(&blanked[..md5_len]))
        );
        assert_eq!(
            implant.sha256.unwrap(),
            <[u8; 32]>::from(sha2::Sha256::digest(&blanked))
        );
    }

    #[test]
    fn flipped_data_byte_is_a_mismatch_and_located() {
        let (_dir, file) = write_temp(&tiny_iso(4000));
        implant_file(&file, &ImplantOptions::default(), &NoProgress).unwrap();
        let offset = 3000 * 2048;
        let mut byte = [0u8; 1];
        FileExt::read_exact_at(&file, &mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0x01], offset).unwrap();
        let report = verify(&file, None, &NoProgress).unwrap();
        assert!(report.md5.is_mismatch());
        assert!(report.sha256.is_mismatch());
        assert!(report.fragments.is_mismatch());
        let bad = report.first_bad_fragment.unwrap();
        assert!(bad.checkpoint_offset > offset, "{bad:?}");
    }

    fn stream(image: &[u8], policy: Md5Policy, cut: usize) -> VerifyReport {
        let mut verifier = StreamVerifier::new(&image, policy).unwrap().unwrap();
        for piece in image.chunks(cut) {
            verifier.feed(piece);
        }
        verifier.finish().unwrap()
    }

    #[test]
    fn streamed_check_agrees_with_verify_however_the_bytes_are_cut() {
        let (dir, file) = write_temp(&tiny_iso(3000));
        implant_file(&file, &ImplantOptions::default(), &NoProgress).unwrap();
        let image = std::fs::read(dir.path().join("t.iso")).unwrap();
        let expected = verify(&file, None, &NoProgress).unwrap();
        assert_eq!(expected.md5, CheckOutcome::Ok);
        for cut in [777usize, 65_536, 1 << 20, image.len()] {
            assert_eq!(
                stream(&image, Md5Policy::Always, cut),
                expected,
                "pieces of {cut}"
            );
        }
        let mut damaged = image.clone();
        damaged[2500 * 2048] ^= 1;
        let report = stream(&damaged, Md5Policy::Always, 100_000);
        assert!(report.md5.is_mismatch() && report.sha256.is_mismatch());
        assert_eq!(report, verify(&damaged, None, &NoProgress).unwrap());
    }

    #[test]
    fn paired_feeding_gives_the_same_report_and_the_whole_image_digest() {
        let (dir, file) = write_temp(&tiny_iso(3000));
        implant_file(&file, &ImplantOptions::default(), &NoProgress).unwrap();
        let image = std::fs::read(dir.path().join("t.iso")).unwrap();
        let expected = verify(&file, None, &NoProgress).unwrap();
        assert_eq!(expected.sha256, CheckOutcome::Ok);
        use sha2::{Digest, Sha256};
        let whole_expected: [u8; 32] = Sha256::digest(&image).into();
        for cut in [777usize, 65_536, image.len()] {
            for policy in [Md5Policy::Always, Md5Policy::UnlessSha256Covers] {
                let mut verifier = StreamVerifier::new(&image, policy).unwrap().unwrap();
                let mut whole = sha256x2::Sha256::new();
                for piece in image.chunks(cut) {
                    verifier.feed_paired(piece, &mut whole);
                }
                assert_eq!(whole.finalize(), whole_expected, "pieces of {cut}");
                let report = verifier.finish().unwrap();
                assert_eq!(report.sha256, CheckOutcome::Ok, "pieces of {cut}");
                assert_eq!(report, stream(&image, policy, cut), "pieces of {cut}");
            }
        }
        let mut damaged = image.clone();
        damaged[2500 * 2048] ^= 1;
        let mut verifier = StreamVerifier::new(&damaged, Md5Policy::Always)
            .unwrap()
            .unwrap();
        let mut whole = sha256x2::Sha256::new();
        verifier.feed_paired(&damaged, &mut whole);
        assert_eq!(whole.finalize(), <[u8; 32]>::from(Sha256::digest(&damaged)));
        assert!(verifier.finish().unwrap().sha256.is_mismatch());
    }

    #[test]
    fn md5_covered_by_a_matching_sha256_is_left_unchecked_on_request() {
        let (dir, file) = write_temp(&tiny_iso(3000));
        implant_file(&file, &ImplantOptions::default(), &NoProgress).unwrap();
        let image = std::fs::read(dir.path().join("t.iso")).unwrap();
        let report = stream(&image, Md5Policy::UnlessSha256Covers, 50_000);
        assert_eq!(report.sha256, CheckOutcome::Ok);
        assert!(matches!(report.md5, CheckOutcome::Unchecked { .. }));
        assert!(matches!(report.fragments, CheckOutcome::Unchecked { .. }));
        // Damage still fails: the SHA-256 covers every byte the MD5 would have.
        let mut damaged = image.clone();
        damaged[2999 * 2048] ^= 1;
        let report = stream(&damaged, Md5Policy::UnlessSha256Covers, 50_000);
        assert!(report.sha256.is_mismatch());
        // An MD5-only image is checked with its MD5 whatever the policy.
        let (dir, file) = write_temp(&tiny_iso(3000));
        let md5_only = ImplantOptions {
            sha256: false,
            ..Default::default()
        };
        implant_file(&file, &md5_only, &NoProgress).unwrap();
        let image = std::fs::read(dir.path().join("t.iso")).unwrap();
        let report = stream(&image, Md5Policy::UnlessSha256Covers, 50_000);
        assert_eq!(report.md5, CheckOutcome::Ok);
        assert_eq!(report.sha256, CheckOutcome::Absent);
    }

    #[test]
    fn streamed_check_of_a_truncated_image_is_an_error() {
        let (dir, file) = write_temp(&tiny_iso(600));
        implant_file(&file, &ImplantOptions::default(), &NoProgress).unwrap();
        let image = std::fs::read(dir.path().join("t.iso")).unwrap();
        let mut verifier = StreamVerifier::new(&image, Md5Policy::Always)
            .unwrap()
            .unwrap();
        verifier.feed(&image[..500 * 2048]);
        assert!(matches!(
            verifier.finish(),
            Err(IntegrityError::Truncated { .. })
        ));
    }

    #[test]
    fn wrong_key_is_a_signature_mismatch() {
        let (_dir, file) = write_temp(&tiny_iso(600));
        let opts = ImplantOptions {
            signing_key: Some(generate_keypair()),
            ..Default::default()
        };
        implant_file(&file, &opts, &NoProgress).unwrap();
        let other = generate_keypair();
        let report = verify(&file, Some(&other.verifying_key()), &NoProgress).unwrap();
        assert!(report.signature.is_mismatch());
        assert_eq!(report.md5, CheckOutcome::Ok);
    }

    #[test]
    fn signature_without_key_is_unchecked() {
        let (_dir, file) = write_temp(&tiny_iso(600));
        let opts = ImplantOptions {
            signing_key: Some(generate_keypair()),
            ..Default::default()
        };
        implant_file(&file, &opts, &NoProgress).unwrap();
        let report = verify(&file, None, &NoProgress).unwrap();
        assert!(matches!(report.signature, CheckOutcome::Unchecked { .. }));
        assert!(!report.any_mismatch());
    }

    #[test]
    fn key_demands_a_signature() {
        let (_dir, file) = write_temp(&tiny_iso(600));
        implant_file(&file, &ImplantOptions::default(), &NoProgress).unwrap();
        let report = verify(
            &file,
            Some(&generate_keypair().verifying_key()),
            &NoProgress,
        )
        .unwrap();
        assert!(report.signature.is_mismatch());
    }

    #[test]
    fn image_without_record_has_nothing_to_verify() {
        let image = tiny_iso(600);
        let report = verify(&image, None, &NoProgress).unwrap();
        assert!(report.implant.is_none());
        assert!(!report.anything_checked());
        assert_eq!(read_implant(&image).unwrap(), None);
    }

    #[test]
    fn non_iso_is_refused() {
        let data = vec![0u8; 100_000];
        assert!(matches!(
            verify(&data, None, &NoProgress),
            Err(IntegrityError::NoPrimaryVolume)
        ));
    }

    #[test]
    fn disagreeing_volume_size_halves_are_refused() {
        let mut image = tiny_iso(600);
        image[16 * 2048 + 84..16 * 2048 + 88].copy_from_slice(&601u32.to_be_bytes());
        assert!(matches!(
            read_implant(&image),
            Err(IntegrityError::BadDescriptor {
                field: "volume space size",
                ..
            })
        ));
    }

    #[test]
    fn truncated_image_is_reported() {
        let (_dir, file) = write_temp(&tiny_iso(600));
        implant_file(&file, &ImplantOptions::default(), &NoProgress).unwrap();
        file.set_len(500 * 2048).unwrap();
        assert!(matches!(
            verify(&file, None, &NoProgress),
            Err(IntegrityError::Truncated { .. })
        ));
    }

    #[test]
    fn volume_too_small_for_skip_sectors_is_refused() {
        let (_dir, file) = write_temp(&tiny_iso(18));
        assert!(matches!(
            implant_file(&file, &ImplantOptions::default(), &NoProgress),
            Err(IntegrityError::BadDescriptor { .. })
        ));
    }

    #[test]
    fn implant_touches_only_the_application_use_area() {
        let image = tiny_iso(700);
        let (dir, file) = write_temp(&image);
        implant_file(&file, &ImplantOptions::default(), &NoProgress).unwrap();
        let after = std::fs::read(dir.path().join("t.iso")).unwrap();
        let area = 16 * 2048 + 883..16 * 2048 + 883 + 512;
        assert_eq!(after[..area.start], image[..area.start]);
        assert_eq!(after[area.end..], image[area.end..]);
    }
}

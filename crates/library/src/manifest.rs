//! Manifests: one immutable object per version, naming every chunk of the image.
//!
//! Layout (all integers little-endian):
//! ```text
//! 0      8   magic "VMLMANI1"
//! 8      4   header length H (<= MAX_HEADER_BYTES)
//! 12     H   header: UTF-8 JSON (`ManifestHeader`)
//! 12+H   8   entry count N (<= MAX_ENTRIES)
//! 20+H   56N entries: offset u64, length u32, stored length u32, flags u32, reserved u32 (0),
//!            SHA-256 of the chunk's plain bytes [32]
//! ...    4   optional: "FPB3" + BLAKE3 of each entry's plain bytes [32] x N (all zero for zero
//!            runs), in entry order: the chunks' fingerprints (see below)
//! ...    4   "SIG0" (unsigned) or "SIG1" + ed25519 public key [32] + signature [64]
//! ```
//! Everything before the trailer is the *body*; a signature covers
//! `SIGNATURE_CONTEXT || body`. Entries are in image order, contiguous from 0, and their
//! lengths add up to the header's `size`. Flag bit 0 marks a run of zero bytes that is not
//! stored (length up to 4 GiB - 1, stored length 0, digest all zero); every other entry is a
//! stored chunk of 1 byte to `MAX_CHUNK_BYTES`.
//!
//! Fingerprints: an add hashes every chunk with BLAKE3 (several times faster than SHA-256 on
//! one core) and looks it up among the previous version's fingerprints; a hit gives the chunk's
//! SHA-256 digest from that version's entry without computing it, so a new version of an
//! image pays the SHA-256 only for the chunks that changed. BLAKE3 is collision resistant like
//! SHA-256, so equal fingerprints mean equal bytes. Chunks are still named, checked and
//! verified by their SHA-256 alone; a reader may ignore the section.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{LibraryError, Result};

pub const MAGIC: &[u8; 8] = b"VMLMANI1";
/// The header is a few hundred bytes of metadata; notes and labels are bounded by this.
pub const MAX_HEADER_BYTES: u32 = 1 << 20;
/// 4 Mi entries: a 1 TiB image at the 256 KiB average chunk size.
pub const MAX_ENTRIES: u64 = 4 << 20;
/// Bytes of one index entry.
pub const ENTRY_BYTES: usize = 56;
/// Bytes of one fingerprint (BLAKE3).
pub const FINGERPRINT_BYTES: usize = 32;
/// Tag of the fingerprint section.
const FINGERPRINTS_TAG: &[u8; 4] = b"FPB3";
/// No stored chunk is larger (FastCDC's own ceiling); bounds every decode buffer.
pub const MAX_CHUNK_BYTES: u32 = 16 << 20;
/// Largest stored form of a chunk: zstd's worst case plus the codec byte and sealing.
pub fn max_stored_bytes(length: u32) -> u32 {
    length.saturating_add(length / 128).saturating_add(1024)
}
/// The whole manifest: trailer, header and index at their limits.
pub const MAX_MANIFEST_BYTES: u64 = 12
    + MAX_HEADER_BYTES as u64
    + 8
    + MAX_ENTRIES * ENTRY_BYTES as u64
    + 4
    + MAX_ENTRIES * FINGERPRINT_BYTES as u64
    + 4
    + 96;
/// Domain separation: a manifest signature can never be replayed as another vmedia message.
pub const SIGNATURE_CONTEXT: &[u8] = b"vmedia-library-manifest-ed25519-v1\0";
/// The header format this code writes and reads.
pub const HEADER_FORMAT: u32 = 1;

const FLAG_ZERO: u32 = 1;

/// One El Torito boot entry as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct BootEntryRecord {
    pub platform: String,
    pub emulation: String,
    pub bootable: bool,
    pub image_path: Option<String>,
}

/// One embedded checksum and what checking it gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct EmbeddedCheck {
    /// "md5", "fragments", "sha256" or "signature".
    pub check: String,
    /// "ok", or "unchecked: why".
    pub outcome: String,
}

/// One disk of an OVA item: the member holding it and its capacity in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct OvfDiskRecord {
    pub file: String,
    pub capacity: u64,
}

/// What vmedia's readers found the image to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageKind {
    Iso {
        volume_id: String,
        boot_entries: Vec<BootEntryRecord>,
        embedded_checks: Vec<EmbeddedCheck>,
    },
    Disk {
        /// qemu-img's format name.
        format: String,
        virtual_size: u64,
        /// With `--flatten`: the format of the layered image whose merged content was stored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flattened_from: Option<String>,
    },
    /// An OVA (OVF package in one tar): the VM's name and its disks.
    Ovf {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        disks: Vec<OvfDiskRecord>,
    },
    Raw {
        /// Why a more specific reader did not apply, when one was tried and failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
}

impl ImageKind {
    /// A one-word summary ("iso", "qcow2", "raw").
    pub fn summary(&self) -> String {
        match self {
            ImageKind::Iso { .. } => "iso".into(),
            ImageKind::Disk { format, .. } => format.clone(),
            ImageKind::Ovf { .. } => "ova".into(),
            ImageKind::Raw { .. } => "raw".into(),
        }
    }
}

/// The chunking parameters a version was cut with (informational; readers need only the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkingParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// The JSON header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    pub format: u32,
    pub name: String,
    /// `sha256:` and 64 hex digits: the whole image.
    pub digest: String,
    pub size: u64,
    #[serde(with = "crate::timefmt")]
    pub created: jiff::Timestamp,
    pub actor: String,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub kind: ImageKind,
    pub chunking: ChunkingParams,
}

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    pub offset: u64,
    pub length: u32,
    pub stored_length: u32,
    /// A run of zeros, not stored.
    pub zero: bool,
    /// SHA-256 of the plain bytes (all zero for zero runs).
    pub digest: [u8; 32],
}

impl ChunkEntry {
    pub fn end(&self) -> u64 {
        self.offset + self.length as u64
    }
}

/// An ed25519 signature over the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSignature {
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

/// A parsed (or to-be-written) manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub header: ManifestHeader,
    pub entries: Vec<ChunkEntry>,
    /// BLAKE3 of each entry's plain bytes (all zero for zero runs), one per entry, when the
    /// writer recorded them (see the module documentation).
    pub fingerprints: Option<Vec<[u8; FINGERPRINT_BYTES]>>,
    pub signature: Option<ManifestSignature>,
}

/// Names a public key: the first 8 bytes of SHA-256 over its raw bytes, in hex (the same id
/// `vmedia iso` prints for its signing keys).
pub fn key_id(public_key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

fn corrupt(
    key: &str,
    offset: u64,
    field: &'static str,
    problem: impl Into<String>,
) -> LibraryError {
    LibraryError::Corrupt {
        key: key.to_string(),
        offset,
        field,
        problem: problem.into(),
    }
}

/// Parses a digest written as `sha256:` + 64 hex digits.
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix("sha256:")?;
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut digest).ok()?;
    Some(digest)
}

/// Formats a digest as `sha256:hex`.
pub fn format_digest(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(digest))
}

/// Serialises index entries (the manifest's entry table).
pub fn index_bytes(entries: &[ChunkEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for entry in entries {
        out.extend_from_slice(&entry.offset.to_le_bytes());
        out.extend_from_slice(&entry.length.to_le_bytes());
        out.extend_from_slice(&entry.stored_length.to_le_bytes());
        out.extend_from_slice(&(if entry.zero { FLAG_ZERO } else { 0 }).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&entry.digest);
    }
    out
}

/// Parses and validates an entry table of an image of `size` bytes. `base` is the table's
/// offset in its object, for error messages. Entries must start at 0, be contiguous, be
/// non-empty, stay within the chunk and stored-size limits and cover exactly `size` bytes.
pub fn parse_index(key: &str, table: &[u8], base: u64, size: u64) -> Result<Vec<ChunkEntry>> {
    if table.len() % ENTRY_BYTES != 0 {
        return Err(corrupt(
            key,
            base,
            "entries",
            format!(
                "{} bytes is not a whole number of {ENTRY_BYTES}-byte entries",
                table.len()
            ),
        ));
    }
    let count = table.len() / ENTRY_BYTES;
    if count as u64 > MAX_ENTRIES {
        return Err(corrupt(
            key,
            base,
            "entry count",
            format!("{count} entries, limit {MAX_ENTRIES}"),
        ));
    }
    let mut entries = Vec::with_capacity(count);
    let mut expected_offset = 0u64;
    for (index, e) in table.chunks_exact(ENTRY_BYTES).enumerate() {
        let at = base + (index * ENTRY_BYTES) as u64;
        let field = |name: &'static str, problem: String| corrupt(key, at, name, problem);
        let offset = vmedia_io::bytes::le64(e, 0).unwrap_or(u64::MAX);
        let length = vmedia_io::bytes::le32(e, 8).unwrap_or(0);
        let stored_length = vmedia_io::bytes::le32(e, 12).unwrap_or(u32::MAX);
        let flags = vmedia_io::bytes::le32(e, 16).unwrap_or(u32::MAX);
        let reserved = vmedia_io::bytes::le32(e, 20).unwrap_or(u32::MAX);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&e[24..56]);
        if offset != expected_offset {
            return Err(field(
                "entry offset",
                format!(
                    "entry {index} starts at {offset:#x}, the previous one ends at {expected_offset:#x}"
                ),
            ));
        }
        if flags & !FLAG_ZERO != 0 || reserved != 0 {
            return Err(field(
                "entry flags",
                format!("unknown flags {flags:#x}/{reserved:#x}"),
            ));
        }
        if length == 0 {
            return Err(field("entry length", format!("entry {index} is empty")));
        }
        let zero = flags & FLAG_ZERO != 0;
        if zero {
            if stored_length != 0 || digest != [0u8; 32] {
                return Err(field(
                    "zero entry",
                    format!("entry {index} is a zero run but names stored data"),
                ));
            }
        } else {
            if length > MAX_CHUNK_BYTES {
                return Err(field(
                    "entry length",
                    format!("entry {index} is {length} bytes, limit {MAX_CHUNK_BYTES}"),
                ));
            }
            if stored_length == 0 || stored_length > max_stored_bytes(length) {
                return Err(field(
                    "entry stored length",
                    format!("entry {index}: {stored_length} stored bytes for {length}"),
                ));
            }
        }
        expected_offset = offset
            .checked_add(length as u64)
            .ok_or_else(|| field("entry length", "runs past 2^64".into()))?;
        entries.push(ChunkEntry {
            offset,
            length,
            stored_length,
            zero,
            digest,
        });
    }
    if expected_offset != size {
        return Err(corrupt(
            key,
            base,
            "entries",
            format!("the entries cover {expected_offset} bytes, the image has {size}"),
        ));
    }
    Ok(entries)
}

impl Manifest {
    /// The bytes a signature covers (everything but the trailer).
    pub fn body_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).expect("the header serialises");
        let mut out =
            Vec::with_capacity(12 + header.len() + 8 + self.entries.len() * ENTRY_BYTES + 100);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        out.extend_from_slice(&index_bytes(&self.entries));
        if let Some(fingerprints) = &self.fingerprints {
            out.extend_from_slice(FINGERPRINTS_TAG);
            for fingerprint in fingerprints {
                out.extend_from_slice(fingerprint);
            }
        }
        out
    }

    /// The full serialised manifest, trailer included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.body_bytes();
        match &self.signature {
            None => out.extend_from_slice(b"SIG0"),
            Some(sig) => {
                out.extend_from_slice(b"SIG1");
                out.extend_from_slice(&sig.public_key);
                out.extend_from_slice(&sig.signature);
            }
        }
        out
    }

    /// Signs the body with `key`, replacing any earlier signature.
    pub fn sign(&mut self, key: &SigningKey) {
        let mut message = SIGNATURE_CONTEXT.to_vec();
        message.extend_from_slice(&self.body_bytes());
        let signature = key.sign(&message);
        self.signature = Some(ManifestSignature {
            public_key: key.verifying_key().to_bytes(),
            signature: signature.to_bytes(),
        });
    }

    /// Checks the signature against the body; `Ok(None)` when unsigned, `Ok(Some(key id))`
    /// when valid, an error when present and wrong.
    pub fn check_signature(&self, what: &str) -> Result<Option<String>> {
        let Some(sig) = &self.signature else {
            return Ok(None);
        };
        let bad = || LibraryError::BadSignature {
            what: what.to_string(),
        };
        let key = VerifyingKey::from_bytes(&sig.public_key).map_err(|_| bad())?;
        let mut message = SIGNATURE_CONTEXT.to_vec();
        message.extend_from_slice(&self.body_bytes());
        key.verify(&message, &Signature::from_bytes(&sig.signature))
            .map_err(|_| bad())?;
        Ok(Some(key_id(&sig.public_key)))
    }

    /// Stored bytes of all chunks (zero runs count nothing).
    pub fn stored_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.stored_length as u64).sum()
    }

    /// Parses and validates manifest bytes read from object `key`.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Manifest> {
        crate::error::check_size(key, "a manifest", bytes, MAX_MANIFEST_BYTES)?;
        if bytes.get(..8) != Some(MAGIC.as_slice()) {
            return Err(corrupt(key, 0, "magic", "not a vmedia library manifest"));
        }
        let header_len = vmedia_io::bytes::le32(bytes, 8)
            .ok_or_else(|| corrupt(key, 8, "header length", "truncated"))?;
        if header_len > MAX_HEADER_BYTES {
            return Err(corrupt(
                key,
                8,
                "header length",
                format!("{header_len} bytes, limit {MAX_HEADER_BYTES}"),
            ));
        }
        let header_end = 12 + header_len as usize;
        let header_bytes = bytes
            .get(12..header_end)
            .ok_or_else(|| corrupt(key, 12, "header", "truncated"))?;
        let header: ManifestHeader = serde_json::from_slice(header_bytes)
            .map_err(|e| corrupt(key, 12, "header", e.to_string()))?;
        crate::error::check_format(key, "manifest", header.format, HEADER_FORMAT)?;
        crate::naming::check_name(&header.name)
            .map_err(|e| corrupt(key, 12, "header name", e.to_string()))?;
        if parse_digest(&header.digest).is_none() {
            return Err(corrupt(
                key,
                12,
                "header digest",
                "not sha256:64-hex-digits",
            ));
        }
        let count = vmedia_io::bytes::le64(bytes, header_end)
            .ok_or_else(|| corrupt(key, header_end as u64, "entry count", "truncated"))?;
        if count > MAX_ENTRIES {
            return Err(corrupt(
                key,
                header_end as u64,
                "entry count",
                format!("{count} entries, limit {MAX_ENTRIES}"),
            ));
        }
        let entries_start = header_end + 8;
        let entries_len = count as usize * ENTRY_BYTES;
        let entries_end = entries_start + entries_len;
        if bytes.len() < entries_end + 4 {
            return Err(corrupt(
                key,
                entries_start as u64,
                "entries",
                format!("{count} entries do not fit in {} bytes", bytes.len()),
            ));
        }
        let entries = parse_index(
            key,
            &bytes[entries_start..entries_end],
            entries_start as u64,
            header.size,
        )?;
        let mut trailer = &bytes[entries_end..];
        let mut fingerprints = None;
        if let Some(section) = trailer.strip_prefix(FINGERPRINTS_TAG.as_slice()) {
            // count <= MAX_ENTRIES, so this cannot overflow.
            let table_len = count as usize * FINGERPRINT_BYTES;
            let Some(table) = section.get(..table_len) else {
                return Err(corrupt(
                    key,
                    entries_end as u64,
                    "fingerprints",
                    format!("{count} fingerprints do not fit in the manifest"),
                ));
            };
            let table: Vec<[u8; FINGERPRINT_BYTES]> = table
                .chunks_exact(FINGERPRINT_BYTES)
                .map(|f| f.try_into().expect("chunks_exact gives whole fingerprints"))
                .collect();
            if let Some(index) = entries
                .iter()
                .zip(&table)
                .position(|(e, f)| e.zero && *f != [0; FINGERPRINT_BYTES])
            {
                return Err(corrupt(
                    key,
                    (entries_end + 4 + index * FINGERPRINT_BYTES) as u64,
                    "fingerprints",
                    format!("entry {index} is a zero run but has a fingerprint"),
                ));
            }
            fingerprints = Some(table);
            trailer = &section[table_len..];
        }
        let signature =
            match trailer {
                [b'S', b'I', b'G', b'0'] => None,
                [b'S', b'I', b'G', b'1', rest @ ..] if rest.len() == 96 => {
                    let mut public_key = [0u8; 32];
                    let mut signature = [0u8; 64];
                    public_key.copy_from_slice(&rest[..32]);
                    signature.copy_from_slice(&rest[32..]);
                    Some(ManifestSignature {
                        public_key,
                        signature,
                    })
                }
                _ => return Err(corrupt(
                    key,
                    entries_end as u64,
                    "trailer",
                    "expected SIG0, or SIG1 with a 32-byte key and a 64-byte signature, at the end",
                )),
            };
        Ok(Manifest {
            header,
            entries,
            fingerprints,
            signature,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let data = [b"hello".as_slice(), b"world!"];
        let mut entries = Vec::new();
        let mut offset = 0;
        for chunk in data {
            entries.push(ChunkEntry {
                offset,
                length: chunk.len() as u32,
                stored_length: chunk.len() as u32 + 1,
                zero: false,
                digest: Sha256::digest(chunk).into(),
            });
            offset += chunk.len() as u64;
        }
        entries.push(ChunkEntry {
            offset,
            length: 4096,
            stored_length: 0,
            zero: true,
            digest: [0; 32],
        });
        Manifest {
            header: ManifestHeader {
                format: HEADER_FORMAT,
                name: "demo.iso".into(),
                digest: format_digest(&[3u8; 32]),
                size: offset + 4096,
                created: "2026-01-02T03:04:05Z".parse().unwrap(),
                actor: "root@host".into(),
                note: Some("first".into()),
                labels: [("os".to_string(), "debian".to_string())].into(),
                kind: ImageKind::Raw { note: None },
                chunking: ChunkingParams {
                    min: 64,
                    avg: 256,
                    max: 1024,
                },
            },
            entries,
            fingerprints: None,
            signature: None,
        }
    }

    /// `sample` with the fingerprints an add records.
    fn sample_with_fingerprints() -> Manifest {
        let mut manifest = sample();
        let data = [b"hello".as_slice(), b"world!"];
        let mut fingerprints: Vec<[u8; 32]> =
            data.iter().map(|d| *blake3::hash(d).as_bytes()).collect();
        fingerprints.push([0; 32]);
        manifest.fingerprints = Some(fingerprints);
        manifest
    }

    #[test]
    fn fingerprints_round_trip_and_are_signed() {
        let mut manifest = sample_with_fingerprints();
        let bytes = manifest.to_bytes();
        assert_eq!(bytes.len(), sample().to_bytes().len() + 4 + 3 * 32);
        assert_eq!(Manifest::parse("m", &bytes).unwrap(), manifest);
        manifest.sign(&SigningKey::from_bytes(&[9u8; 32]));
        let mut bytes = manifest.to_bytes();
        assert!(Manifest::parse("m", &bytes)
            .unwrap()
            .check_signature("m")
            .is_ok());
        // Inside the first fingerprint: parses, fails the signature.
        let at = bytes.len() - 4 - 96 - 3 * 32 + 1;
        bytes[at] ^= 1;
        assert!(matches!(
            Manifest::parse("m", &bytes).unwrap().check_signature("m"),
            Err(LibraryError::BadSignature { .. })
        ));
    }

    #[test]
    fn fingerprint_sections_that_lie_are_refused() {
        let bytes = sample_with_fingerprints().to_bytes();
        for cut in 0..bytes.len() {
            assert!(Manifest::parse("m", &bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A zero run with a fingerprint.
        let mut manifest = sample_with_fingerprints();
        manifest.fingerprints.as_mut().unwrap()[2] = [1; 32];
        assert!(Manifest::parse("m", &manifest.to_bytes()).is_err());
        // One fingerprint too many: the trailer no longer parses.
        let mut manifest = sample_with_fingerprints();
        manifest.fingerprints.as_mut().unwrap().push([1; 32]);
        assert!(Manifest::parse("m", &manifest.to_bytes()).is_err());
    }

    #[test]
    fn manifests_round_trip_signed_and_unsigned() {
        let mut manifest = sample();
        let bytes = manifest.to_bytes();
        assert_eq!(Manifest::parse("m", &bytes).unwrap(), manifest);
        let key = SigningKey::from_bytes(&[9u8; 32]);
        manifest.sign(&key);
        let parsed = Manifest::parse("m", &manifest.to_bytes()).unwrap();
        assert_eq!(parsed, manifest);
        assert_eq!(
            parsed.check_signature("m").unwrap(),
            Some(key_id(&key.verifying_key().to_bytes()))
        );
    }

    #[test]
    fn a_changed_byte_breaks_the_signature() {
        let mut manifest = sample();
        manifest.sign(&SigningKey::from_bytes(&[9u8; 32]));
        let mut bytes = manifest.to_bytes();
        // Inside the first entry's digest: still parses, no longer verifies.
        let at = bytes.len() - 4 - 96 - 3 * ENTRY_BYTES + 30;
        bytes[at] ^= 1;
        let parsed = Manifest::parse("m", &bytes).unwrap();
        assert!(matches!(
            parsed.check_signature("m"),
            Err(LibraryError::BadSignature { .. })
        ));
    }

    #[test]
    fn entries_must_be_contiguous_and_cover_the_size() {
        let mut manifest = sample();
        manifest.entries[1].offset += 1;
        assert!(Manifest::parse("m", &manifest.to_bytes()).is_err());
        let mut manifest = sample();
        manifest.header.size += 1;
        assert!(Manifest::parse("m", &manifest.to_bytes()).is_err());
    }

    #[test]
    fn absurd_lengths_and_counts_are_refused() {
        let mut manifest = sample();
        manifest.entries[0].length = MAX_CHUNK_BYTES + 1;
        assert!(Manifest::parse("m", &manifest.to_bytes()).is_err());
        let mut manifest = sample();
        manifest.entries[0].stored_length = u32::MAX;
        assert!(Manifest::parse("m", &manifest.to_bytes()).is_err());
        let mut bytes = sample().to_bytes();
        let header_len = vmedia_io::bytes::le32(&bytes, 8).unwrap() as usize;
        bytes[12 + header_len..12 + header_len + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Manifest::parse("m", &bytes).is_err());
    }

    #[test]
    fn zero_runs_name_no_stored_data() {
        let mut manifest = sample();
        manifest.entries[2].stored_length = 5;
        assert!(Manifest::parse("m", &manifest.to_bytes()).is_err());
    }

    #[test]
    fn truncated_manifests_are_refused_at_every_length() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(Manifest::parse("m", &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}

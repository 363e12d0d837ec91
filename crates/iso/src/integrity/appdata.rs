//! The text record in the primary volume descriptor's 512-byte application-use area.
//!
//! isomd5sum's layout is a run of `KEY = VALUE` fields separated by `;`, padded with spaces:
//!
//! ```text
//! ISO MD5SUM = <32 hex>;SKIPSECTORS = 15;RHLISOSTATUS=0;FRAGMENT SUMS = <60 chars>;
//! FRAGMENT COUNT = 20;THIS IS NOT THE SAME AS RUNNING MD5SUM ON THIS ISO!!
//! ```
//!
//! checkisomd5 scans for its five keys and stops once it has all of them, so vmedia appends its
//! own fields after `FRAGMENT COUNT` and before the closing sentence, where checkisomd5 never
//! looks: `SHA256 = <64 hex>;SHA256 BYTES = <n>;ED25519 SIG = <128 hex>;ED25519 KEY = <16 hex>;`.
//! The area is hashed as spaces by every check, so writing it after hashing changes no digest.

use serde::Serialize;

/// Size of the ISO 9660 application-use field (ECMA-119 8.4.32).
pub const APPDATA_SIZE: usize = 512;
/// Offset of the application-use field inside the primary volume descriptor.
pub const APPDATA_OFFSET: u64 = 883;
/// Sectors at the end of the volume isomd5sum leaves out of its MD5 (old drives misread them).
pub const SKIP_SECTORS: u64 = 15;
/// Fragments isomd5sum checkpoints the MD5 at, so a damaged disc fails early.
pub const FRAGMENT_COUNT: u64 = 20;
/// Characters isomd5sum reserves for all fragment sums together.
pub const FRAGMENT_SUMS_SIZE: usize = 60;
/// More fragments than characters in `FRAGMENT SUMS` would carry no sum at all; also bounds the
/// checkpoint table a hostile record can make us allocate.
pub const MAX_FRAGMENT_COUNT: u64 = FRAGMENT_SUMS_SIZE as u64;
/// checkisomd5 turns the last byte of the area into a NUL terminator, so text must stop before.
const APPDATA_USABLE: usize = APPDATA_SIZE - 1;
/// The closing sentence implantisomd5 writes; kept so tools that show the area look familiar.
const CLOSING_SENTENCE: &str = "THIS IS NOT THE SAME AS RUNNING MD5SUM ON THIS ISO!!";

/// The isomd5sum part of an implant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Md5Record {
    #[serde(serialize_with = "super::serialize_hex")]
    pub digest: [u8; 16],
    /// Sectors at the end of the volume left out of the MD5.
    pub skip_sectors: u64,
    /// `RHLISOSTATUS`: 1 when the distributor marked the disc as "supported".
    pub supported: Option<i64>,
    /// The raw `FRAGMENT SUMS` text (one checkpoint per fragment, a few hex characters each).
    pub fragment_sums: Option<String>,
    /// `FRAGMENT COUNT`; isomd5sum assumes 20 when the field is missing.
    pub fragment_count: u64,
}

/// vmedia's SHA-256 of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sha256Record {
    #[serde(serialize_with = "super::serialize_hex")]
    pub digest: [u8; 32],
    /// How many bytes from the start of the image the digest covers.
    pub covered_bytes: u64,
}

/// vmedia's ed25519 signature over the SHA-256 record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureRecord {
    #[serde(serialize_with = "super::serialize_hex")]
    pub signature: [u8; 64],
    /// First 8 bytes of SHA-256 of the signer's public key, to name the key.
    #[serde(serialize_with = "super::serialize_hex")]
    pub key_id: [u8; 8],
}

/// Everything one application-use area can carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppData {
    pub md5: Option<Md5Record>,
    pub sha256: Option<Sha256Record>,
    pub signature: Option<SignatureRecord>,
}

/// Why an area's text could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLong {
    pub needed: usize,
}

impl AppData {
    /// Lays the record out as implantisomd5 would, with vmedia's fields after isomd5sum's.
    pub fn emit(&self) -> Result<[u8; APPDATA_SIZE], TooLong> {
        let mut text = String::new();
        if let Some(md5) = &self.md5 {
            text.push_str(&format!("ISO MD5SUM = {};", hex::encode(md5.digest)));
            text.push_str(&format!("SKIPSECTORS = {};", md5.skip_sectors));
            text.push_str(&format!("RHLISOSTATUS={};", md5.supported.unwrap_or(0)));
            if let Some(sums) = &md5.fragment_sums {
                text.push_str(&format!("FRAGMENT SUMS = {sums};"));
            }
            text.push_str(&format!("FRAGMENT COUNT = {};", md5.fragment_count));
        }
        if let Some(sha) = &self.sha256 {
            text.push_str(&format!("SHA256 = {};", hex::encode(sha.digest)));
            text.push_str(&format!("SHA256 BYTES = {};", sha.covered_bytes));
        }
        if let Some(sig) = &self.signature {
            text.push_str(&format!("ED25519 SIG = {};", hex::encode(sig.signature)));
            text.push_str(&format!("ED25519 KEY = {};", hex::encode(sig.key_id)));
        }
        if text.len() > APPDATA_USABLE {
            return Err(TooLong { needed: text.len() });
        }
        if self.md5.is_some() && text.len() + CLOSING_SENTENCE.len() <= APPDATA_USABLE {
            text.push_str(CLOSING_SENTENCE);
        }
        let mut area = [b' '; APPDATA_SIZE];
        area[..text.len()].copy_from_slice(text.as_bytes());
        Ok(area)
    }

    /// Reads an area; `Ok(None)` when it carries no checksum at all (blank, zeros, other text).
    ///
    /// Like checkisomd5, an MD5 record needs both `ISO MD5SUM` and `SKIPSECTORS`; a field whose
    /// value is malformed is an error naming the field, never a silent "absent".
    pub fn parse(area: &[u8]) -> Result<Option<AppData>, FieldError> {
        let usable = &area[..area.len().min(APPDATA_USABLE)];
        let end = usable.iter().position(|&b| b == 0).unwrap_or(usable.len());
        let text = String::from_utf8_lossy(&usable[..end]);

        let mut md5_digest = None;
        let mut skip_sectors = None;
        let mut supported = None;
        let mut fragment_sums = None;
        let mut fragment_count = None;
        let mut sha_digest = None;
        let mut sha_bytes = None;
        let mut sig = None;
        let mut key_id = None;
        for field in text.split(';') {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let key = key.trim();
            let value = value.trim();
            match key {
                "ISO MD5SUM" => md5_digest = Some(parse_hex::<16>("ISO MD5SUM", value)?),
                "SKIPSECTORS" => skip_sectors = Some(parse_number("SKIPSECTORS", value)?),
                "RHLISOSTATUS" => {
                    supported = Some(value.parse::<i64>().map_err(|_| FieldError {
                        field: "RHLISOSTATUS",
                        problem: format!("{value:?} is not a number"),
                    })?)
                }
                "FRAGMENT SUMS" => {
                    if value.len() > FRAGMENT_SUMS_SIZE || !value.is_ascii() {
                        return Err(FieldError {
                            field: "FRAGMENT SUMS",
                            problem: format!(
                                "{} characters of text where at most {FRAGMENT_SUMS_SIZE} ASCII characters fit",
                                value.len()
                            ),
                        });
                    }
                    fragment_sums = Some(value.to_string())
                }
                "FRAGMENT COUNT" => {
                    let count = parse_number("FRAGMENT COUNT", value)?;
                    if count > MAX_FRAGMENT_COUNT {
                        return Err(FieldError {
                            field: "FRAGMENT COUNT",
                            problem: format!("{count} fragments; at most {MAX_FRAGMENT_COUNT} have room for a sum"),
                        });
                    }
                    fragment_count = Some(count)
                }
                "SHA256" => sha_digest = Some(parse_hex::<32>("SHA256", value)?),
                "SHA256 BYTES" => sha_bytes = Some(parse_number("SHA256 BYTES", value)?),
                "ED25519 SIG" => sig = Some(parse_hex::<64>("ED25519 SIG", value)?),
                "ED25519 KEY" => key_id = Some(parse_hex::<8>("ED25519 KEY", value)?),
                // Other tools' fields are data we carry past, not errors.
                _ => {}
            }
        }

        let md5 = match (md5_digest, skip_sectors) {
            (Some(digest), Some(skip_sectors)) => Some(Md5Record {
                digest,
                skip_sectors,
                supported,
                fragment_sums,
                fragment_count: fragment_count.unwrap_or(FRAGMENT_COUNT),
            }),
            (Some(_), None) => {
                return Err(FieldError {
                    field: "SKIPSECTORS",
                    problem: "missing beside ISO MD5SUM (checkisomd5 needs both)".into(),
                })
            }
            _ => None,
        };
        let sha256 = match (sha_digest, sha_bytes) {
            (Some(digest), Some(covered_bytes)) => Some(Sha256Record {
                digest,
                covered_bytes,
            }),
            (None, None) => None,
            _ => {
                return Err(FieldError {
                    field: "SHA256 BYTES",
                    problem: "SHA256 and SHA256 BYTES must appear together".into(),
                })
            }
        };
        let signature = match (sig, key_id) {
            (Some(signature), Some(key_id)) => Some(SignatureRecord { signature, key_id }),
            (None, None) => None,
            _ => {
                return Err(FieldError {
                    field: "ED25519 KEY",
                    problem: "ED25519 SIG and ED25519 KEY must appear together".into(),
                })
            }
        };
        if signature.is_some() && sha256.is_none() {
            return Err(FieldError {
                field: "ED25519 SIG",
                problem: "a signature without the SHA256 record it signs".into(),
            });
        }
        if md5.is_none() && sha256.is_none() && signature.is_none() {
            return Ok(None);
        }
        Ok(Some(AppData {
            md5,
            sha256,
            signature,
        }))
    }
}

/// A field of the application-use area whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

fn parse_hex<const N: usize>(field: &'static str, value: &str) -> Result<[u8; N], FieldError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(value, &mut out).map_err(|_| FieldError {
        field,
        problem: format!("{value:?} is not {} hexadecimal digits", N * 2),
    })?;
    Ok(out)
}

fn parse_number(field: &'static str, value: &str) -> Result<u64, FieldError> {
    value.parse::<u64>().map_err(|_| FieldError {
        field,
        problem: format!("{value:?} is not a whole number"),
    })
}

/// The characters isomd5sum keeps per fragment checkpoint: for each of the first bytes of the
/// MD5 state, the first digit of its lowercase hex form without leading zeros (`0x0b` -> `b`,
/// `0xab` -> `a`).
pub fn fragment_chars(digest: &[u8; 16], per_fragment: usize) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    digest
        .iter()
        .take(per_fragment.min(digest.len()))
        .map(|&b| {
            if b >= 16 {
                DIGITS[usize::from(b >> 4)]
            } else {
                DIGITS[usize::from(b)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AppData {
        AppData {
            md5: Some(Md5Record {
                digest: [0xab; 16],
                skip_sectors: SKIP_SECTORS,
                supported: Some(0),
                fragment_sums: Some("a".repeat(FRAGMENT_SUMS_SIZE)),
                fragment_count: FRAGMENT_COUNT,
            }),
            sha256: Some(Sha256Record {
                digest: [0x11; 32],
                covered_bytes: 123_456_789_012,
            }),
            signature: Some(SignatureRecord {
                signature: [0x22; 64],
                key_id: [0x33; 8],
            }),
        }
    }

    #[test]
    fn emit_parse_round_trip_with_every_record() {
        let data = sample();
        let area = data.emit().unwrap();
        assert_eq!(AppData::parse(&area).unwrap(), Some(data));
        assert_eq!(area[APPDATA_SIZE - 1], b' ');
    }

    #[test]
    fn emit_matches_implantisomd5_layout() {
        let mut data = sample();
        data.sha256 = None;
        data.signature = None;
        let area = data.emit().unwrap();
        let text = String::from_utf8(area.to_vec()).unwrap();
        let expected = format!(
            "ISO MD5SUM = {};SKIPSECTORS = 15;RHLISOSTATUS=0;FRAGMENT SUMS = {};FRAGMENT COUNT = 20;{CLOSING_SENTENCE}",
            "ab".repeat(16),
            "a".repeat(60)
        );
        assert_eq!(text.trim_end(), expected);
    }

    #[test]
    fn blank_zero_and_foreign_areas_carry_nothing() {
        assert_eq!(AppData::parse(&[b' '; APPDATA_SIZE]).unwrap(), None);
        assert_eq!(AppData::parse(&[0; APPDATA_SIZE]).unwrap(), None);
        let mut area = [b' '; APPDATA_SIZE];
        area[..14].copy_from_slice(b"MKI Sat Nov 21");
        assert_eq!(AppData::parse(&area).unwrap(), None);
    }

    #[test]
    fn md5_without_skipsectors_is_rejected() {
        let mut area = [b' '; APPDATA_SIZE];
        let text = format!("ISO MD5SUM = {};", "00".repeat(16));
        area[..text.len()].copy_from_slice(text.as_bytes());
        assert_eq!(AppData::parse(&area).unwrap_err().field, "SKIPSECTORS");
    }

    #[test]
    fn malformed_md5_hex_is_rejected() {
        let mut area = [b' '; APPDATA_SIZE];
        let text = "ISO MD5SUM = xyz;SKIPSECTORS = 15;";
        area[..text.len()].copy_from_slice(text.as_bytes());
        assert_eq!(AppData::parse(&area).unwrap_err().field, "ISO MD5SUM");
    }

    #[test]
    fn huge_fragment_count_is_rejected() {
        let mut area = [b' '; APPDATA_SIZE];
        let text = "FRAGMENT COUNT = 1000000000000;";
        area[..text.len()].copy_from_slice(text.as_bytes());
        assert_eq!(AppData::parse(&area).unwrap_err().field, "FRAGMENT COUNT");
    }

    #[test]
    fn signature_without_sha256_is_rejected() {
        let mut data = sample();
        data.sha256 = None;
        let area = data.emit().unwrap();
        assert_eq!(AppData::parse(&area).unwrap_err().field, "ED25519 SIG");
    }

    #[test]
    fn overlong_fragment_sums_are_rejected() {
        let mut area = [b' '; APPDATA_SIZE];
        let text = format!("FRAGMENT SUMS = {};", "a".repeat(70));
        area[..text.len()].copy_from_slice(text.as_bytes());
        assert_eq!(AppData::parse(&area).unwrap_err().field, "FRAGMENT SUMS");
    }

    #[test]
    fn text_longer_than_the_area_is_refused() {
        let mut data = sample();
        data.md5.as_mut().unwrap().fragment_sums = Some("a".repeat(300));
        assert!(data.emit().is_err());
    }

    #[test]
    fn hostile_areas_never_panic() {
        // Random splices of real field names, separators, digits and junk.
        const PIECES: &[&[u8]] = &[
            b"ISO MD5SUM = ",
            b"SKIPSECTORS = ",
            b"RHLISOSTATUS=",
            b"FRAGMENT SUMS = ",
            b"FRAGMENT COUNT = ",
            b"SHA256 = ",
            b"SHA256 BYTES = ",
            b"ED25519 SIG = ",
            b"ED25519 KEY = ",
            b";",
            b"=",
            b"0123456789abcdef",
            b"99999999999999999999999",
            b"\xff\xfe",
            b"\0",
            b"   ",
            b"-1",
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut area = [b' '; APPDATA_SIZE];
            let mut at = 0;
            while at < APPDATA_SIZE {
                let piece = PIECES[(next() % PIECES.len() as u64) as usize];
                let n = piece.len().min(APPDATA_SIZE - at);
                area[at..at + n].copy_from_slice(&piece[..n]);
                at += n;
                if next() % 7 == 0 {
                    break;
                }
            }
            let _ = AppData::parse(&area);
        }
    }

    #[test]
    fn fragment_chars_drop_leading_zeros() {
        let mut digest = [0u8; 16];
        digest[0] = 0xab;
        digest[1] = 0x0b;
        digest[2] = 0x00;
        assert_eq!(fragment_chars(&digest, 3), b"ab0");
    }
}

//! The stick's own record: what is on it and how each ISO boots, kept as checked JSON in a
//! small partition of vmedia's type so `ls`, `add`, `remove` and `default` never have to parse
//! FAT or the ISOs again.

use serde::{Deserialize, Serialize};

use crate::MultibootError;

const MAGIC: &[u8; 16] = b"VMEDIA-MULTIBOOT";
const VERSION: u32 = 1;
/// Magic, version, JSON length and CRC32 of the JSON.
const HEADER_BYTES: usize = 28;

/// How the kernel finds its ISO once it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convention {
    /// Debian live-boot: `findiso=/path`.
    DebianLive,
    /// Ubuntu casper: `iso-scan/filename=/path`.
    Casper,
    /// The ISO's own command line, unchanged: the kernel and initrd boot, but a system that
    /// looks for its medium may not find it.
    Plain,
}

impl Convention {
    /// The arguments that tell the kernel where the ISO is on the data partition.
    pub fn args(self, iso_path: &str) -> Vec<String> {
        match self {
            Convention::DebianLive => vec![format!("findiso={iso_path}")],
            Convention::Casper => vec![format!("iso-scan/filename={iso_path}")],
            Convention::Plain => Vec::new(),
        }
    }
}

/// How a menu entry boots its ISO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BootMethod {
    /// The ISO's own `loopback.cfg` (the GRUB convention for booting an ISO file), with
    /// `iso_path` exported.
    LoopbackCfg { path: String },
    /// A kernel and initrds from the ISO, with the arguments its own config gives.
    Kernel {
        kernel: String,
        initrd: Vec<String>,
        args: Vec<String>,
        convention: Convention,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsoRecord {
    /// The file name on the data partition (and the menu entry's id).
    pub name: String,
    pub size: u64,
    /// Byte offset of the file's data in the disk image (one contiguous run).
    pub offset: u64,
    /// The ISO's volume id, shown in the menu.
    pub volume_id: Option<String>,
    pub boot: BootMethod,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickRecord {
    pub version: u32,
    /// Whether the user fixed the disk size (kept by `add`/`remove`) or vmedia chose it.
    pub fixed_size: bool,
    pub esp_volume_id: u32,
    pub data_volume_id: u32,
    /// Menu timeout in seconds.
    pub timeout: u32,
    /// The entry booted when the timeout ends (a file name); the first one when `None`.
    pub default: Option<String>,
    pub isos: Vec<IsoRecord>,
}

impl StickRecord {
    pub fn new_version() -> u32 {
        VERSION
    }

    pub fn encode(&self, room: usize) -> Result<Vec<u8>, MultibootError> {
        let json = serde_json::to_vec(self).map_err(|e| MultibootError::Record {
            offset: 0,
            problem: format!("cannot encode: {e}"),
        })?;
        if HEADER_BYTES + json.len() > room {
            return Err(MultibootError::Record {
                offset: 0,
                problem: format!(
                    "the record is {} bytes; its partition holds {room}",
                    json.len()
                ),
            });
        }
        let mut out = Vec::with_capacity(HEADER_BYTES + json.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// Parses the record partition's bytes; `base` is their offset in the disk (for errors).
    pub fn decode(bytes: &[u8], base: u64) -> Result<StickRecord, MultibootError> {
        let bad = |at: u64, problem: &str| MultibootError::Record {
            offset: base + at,
            problem: problem.to_string(),
        };
        if bytes.len() < HEADER_BYTES || &bytes[..16] != MAGIC {
            return Err(bad(
                0,
                "no vmedia multiboot record (magic missing): not a stick made by vmedia multiboot",
            ));
        }
        let version = vmedia_io::bytes::le32(bytes, 16).unwrap_or(0);
        if version != VERSION {
            return Err(bad(
                16,
                &format!("record version {version}; this vmedia reads {VERSION}"),
            ));
        }
        let len = vmedia_io::bytes::le32(bytes, 20).unwrap_or(0) as usize;
        let Some(json) = bytes.get(HEADER_BYTES..HEADER_BYTES.saturating_add(len)) else {
            return Err(bad(20, "record length runs past its partition"));
        };
        if crc32fast::hash(json) != vmedia_io::bytes::le32(bytes, 24).unwrap_or(0) {
            return Err(bad(24, "record CRC32 does not match"));
        }
        serde_json::from_slice(json)
            .map_err(|e| bad(HEADER_BYTES as u64, &format!("record JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StickRecord {
        StickRecord {
            version: VERSION,
            fixed_size: false,
            esp_volume_id: 1,
            data_volume_id: 2,
            timeout: 5,
            default: Some("a.iso".into()),
            isos: vec![IsoRecord {
                name: "a.iso".into(),
                size: 2048,
                offset: 1 << 20,
                volume_id: Some("A".into()),
                boot: BootMethod::Kernel {
                    kernel: "/live/vmlinuz".into(),
                    initrd: vec!["/live/initrd.img".into()],
                    args: vec!["boot=live".into()],
                    convention: Convention::DebianLive,
                },
            }],
        }
    }

    #[test]
    fn record_round_trips() {
        let bytes = sample().encode(4096).unwrap();
        assert_eq!(StickRecord::decode(&bytes, 0).unwrap(), sample());
    }

    #[test]
    fn a_corrupt_record_is_refused() {
        let mut bytes = sample().encode(4096).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        assert!(StickRecord::decode(&bytes, 0)
            .unwrap_err()
            .to_string()
            .contains("CRC32"));
        let mut long = sample().encode(4096).unwrap();
        long[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(StickRecord::decode(&long, 0)
            .unwrap_err()
            .to_string()
            .contains("past"));
    }
}

//! The VMDK text descriptor: header keys (version, CID, parentCID, createType,
//! parentFileNameHint), extent lines and the disk database (`ddb.*`), parsed from and written to
//! the layout VMware's tools produce.
//!
//! Parsing is line based with bounded sizes; unknown keys are kept (data, not errors) so a
//! descriptor survives a parse -> emit round trip.

use super::Error;

/// Largest descriptor accepted (bytes). VMware's are under 2 KiB; a twoGbMaxExtent descriptor of
/// a 62 TiB disk has ~32 Ki extent lines of ~60 bytes, about 2 MiB.
pub const MAX_DESCRIPTOR_BYTES: usize = 4 << 20;
/// Largest number of extents: 62 TiB in 2 GiB extents is 31744; 32 Ki covers it.
pub const MAX_EXTENTS: usize = 32 << 10;
/// Largest number of `ddb.*` and header entries kept (real descriptors have about 20).
pub const MAX_KEYS: usize = 1024;
/// Longest line accepted (a path of 4 KiB plus the extent fields).
pub const MAX_LINE_BYTES: usize = 8192;
/// CID meaning "no parent" in parentCID.
pub const NO_PARENT_CID: u32 = 0xffff_ffff;
/// The first line of every descriptor.
pub const SIGNATURE: &str = "# Disk DescriptorFile";

/// Access mode of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
    NoAccess,
}

impl Access {
    fn parse(s: &str) -> Option<Access> {
        match s {
            "RW" => Some(Access::ReadWrite),
            "RDONLY" => Some(Access::ReadOnly),
            "NOACCESS" => Some(Access::NoAccess),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// Kind of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    Flat,
    Sparse,
    Zero,
    Vmfs,
    VmfsSparse,
    VmfsRdm,
    VmfsRaw,
    SeSparse,
}

impl ExtentKind {
    fn parse(s: &str) -> Option<ExtentKind> {
        Some(match s {
            "FLAT" => ExtentKind::Flat,
            "SPARSE" => ExtentKind::Sparse,
            "ZERO" => ExtentKind::Zero,
            "VMFS" => ExtentKind::Vmfs,
            "VMFSSPARSE" => ExtentKind::VmfsSparse,
            "VMFSRDM" => ExtentKind::VmfsRdm,
            "VMFSRAW" => ExtentKind::VmfsRaw,
            "SESPARSE" => ExtentKind::SeSparse,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ExtentKind::Flat => "FLAT",
            ExtentKind::Sparse => "SPARSE",
            ExtentKind::Zero => "ZERO",
            ExtentKind::Vmfs => "VMFS",
            ExtentKind::VmfsSparse => "VMFSSPARSE",
            ExtentKind::VmfsRdm => "VMFSRDM",
            ExtentKind::VmfsRaw => "VMFSRAW",
            ExtentKind::SeSparse => "SESPARSE",
        }
    }
}

/// One extent line: `RW 2097152 SPARSE "disk-s001.vmdk"` or `RW 8192 FLAT "disk-flat.vmdk" 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    pub access: Access,
    /// Size in sectors.
    pub sectors: u64,
    pub kind: ExtentKind,
    /// File name (relative to the descriptor's folder), absent for ZERO extents.
    pub file_name: Option<String>,
    /// Start of the data inside a flat file, in sectors.
    pub offset: u64,
}

impl ExtentLine {
    /// The line as VMware writes it (no line break).
    pub fn emit(&self) -> String {
        let mut out = format!(
            "{} {} {}",
            self.access.as_str(),
            self.sectors,
            self.kind.as_str()
        );
        if let Some(name) = &self.file_name {
            out.push_str(&format!(" \"{name}\""));
            if matches!(self.kind, ExtentKind::Flat | ExtentKind::Vmfs) {
                out.push_str(&format!(" {}", self.offset));
            }
        }
        out
    }

    /// True when a descriptor line is an extent line (starts with an access mode).
    pub fn is_extent_line(line: &str) -> bool {
        let first = line.split_whitespace().next().unwrap_or("");
        Access::parse(first).is_some()
    }
}

/// A parsed descriptor. `entries` keeps every `key = value` pair in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    pub extents: Vec<ExtentLine>,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v)
}

impl Descriptor {
    /// True when `bytes` looks like a text descriptor (used by probing).
    pub fn looks_like(bytes: &[u8]) -> bool {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]);
        let trimmed = text.trim_start_matches('\u{feff}');
        trimmed.starts_with(SIGNATURE)
            || (trimmed.contains("createType") && trimmed.contains("version="))
    }

    /// Parses descriptor text (NULs at the end of an embedded descriptor are ignored).
    pub fn parse(bytes: &[u8]) -> Result<Descriptor, Error> {
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(Error::Descriptor {
                line: 0,
                reason: format!(
                    "{} bytes is more than the limit {MAX_DESCRIPTOR_BYTES}",
                    bytes.len()
                ),
            });
        }
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut d = Descriptor::default();
        for (index, raw_line) in text.lines().enumerate() {
            let line_no = index + 1;
            if raw_line.len() > MAX_LINE_BYTES {
                return Err(Error::Descriptor {
                    line: line_no,
                    reason: format!(
                        "line of {} bytes is longer than the limit {MAX_LINE_BYTES}",
                        raw_line.len()
                    ),
                });
            }
            let line = raw_line.trim().trim_start_matches('\u{feff}');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some(access) = Access::parse(first) {
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(Error::Descriptor {
                        line: line_no,
                        reason: format!("more than {MAX_EXTENTS} extents"),
                    });
                }
                d.extents.push(parse_extent(access, line, line_no)?);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(Error::Descriptor {
                    line: line_no,
                    reason: format!("{line:?} is neither an extent line nor key = value"),
                });
            };
            if d.entries.len() >= MAX_KEYS {
                return Err(Error::Descriptor {
                    line: line_no,
                    reason: format!("more than {MAX_KEYS} keys"),
                });
            }
            d.entries
                .push((key.trim().to_string(), unquote(value).to_string()));
        }
        if d.extents.is_empty() {
            return Err(Error::Descriptor {
                line: 0,
                reason: "no extent lines".into(),
            });
        }
        Ok(d)
    }

    /// The value of `key` (last one wins, as in VMware's parser).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing an existing entry in place or appending.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        if let Some(slot) = self
            .entries
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            slot.1 = value;
        } else {
            self.entries.push((key.to_string(), value));
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
    }

    pub fn create_type(&self) -> Option<&str> {
        self.get("createType")
    }

    fn hex_u32(&self, key: &str) -> Result<Option<u32>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => u32::from_str_radix(v.trim(), 16)
                .map(Some)
                .map_err(|_| Error::Descriptor {
                    line: 0,
                    reason: format!("{key} {v:?} is not a hexadecimal 32-bit number"),
                }),
        }
    }

    pub fn cid(&self) -> Result<Option<u32>, Error> {
        self.hex_u32("CID")
    }

    /// The parent CID, `None` when there is no parent (absent or ffffffff).
    pub fn parent_cid(&self) -> Result<Option<u32>, Error> {
        Ok(self.hex_u32("parentCID")?.filter(|c| *c != NO_PARENT_CID))
    }

    pub fn parent_file_name_hint(&self) -> Option<&str> {
        self.get("parentFileNameHint")
    }

    /// Total size of the extents, in sectors.
    pub fn total_sectors(&self) -> Result<u64, Error> {
        self.extents.iter().try_fold(0u64, |acc, e| {
            acc.checked_add(e.sectors).ok_or_else(|| Error::Descriptor {
                line: 0,
                reason: "extent sizes overflow 64 bits".into(),
            })
        })
    }

    /// Writes the descriptor the way VMware lays it out: header keys, extents, then the disk
    /// database. Keys starting with `ddb.` go to the database section.
    pub fn emit(&self) -> String {
        let mut out = String::from("# Disk DescriptorFile\n");
        let quoted = |k: &str| {
            matches!(
                k,
                "createType" | "parentFileNameHint" | "encoding" | "isNativeSnapshot"
            )
        };
        for (k, v) in self.entries.iter().filter(|(k, _)| !k.starts_with("ddb.")) {
            if quoted(k) {
                out.push_str(&format!("{k}=\"{v}\"\n"));
            } else {
                out.push_str(&format!("{k}={v}\n"));
            }
        }
        out.push_str("\n# Extent description\n");
        for e in &self.extents {
            out.push_str(&e.emit());
            out.push('\n');
        }
        out.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in self.entries.iter().filter(|(k, _)| k.starts_with("ddb.")) {
            out.push_str(&format!("{k} = \"{v}\"\n"));
        }
        out
    }
}

fn parse_extent(access: Access, line: &str, line_no: usize) -> Result<ExtentLine, Error> {
    let bad = |reason: String| Error::Descriptor {
        line: line_no,
        reason,
    };
    let mut rest = line
        .split_once(char::is_whitespace)
        .map(|x| x.1)
        .unwrap_or("")
        .trim_start();
    let (size_text, after) = rest
        .split_once(char::is_whitespace)
        .ok_or_else(|| bad("extent line without a type".into()))?;
    let sectors: u64 = size_text
        .parse()
        .map_err(|_| bad(format!("extent size {size_text:?} is not a number")))?;
    rest = after.trim_start();
    let (kind_text, after) = match rest.split_once(char::is_whitespace) {
        Some((k, a)) => (k, a.trim_start()),
        None => (rest, ""),
    };
    let kind = ExtentKind::parse(kind_text)
        .ok_or_else(|| bad(format!("unknown extent type {kind_text:?}")))?;
    if kind == ExtentKind::Zero && after.is_empty() {
        return Ok(ExtentLine {
            access,
            sectors,
            kind,
            file_name: None,
            offset: 0,
        });
    }
    let after = after
        .strip_prefix('"')
        .ok_or_else(|| bad("extent file name is not quoted".into()))?;
    let (name, tail) = after
        .split_once('"')
        .ok_or_else(|| bad("extent file name has no closing quote".into()))?;
    if name.is_empty() {
        return Err(bad("extent file name is empty".into()));
    }
    let tail = tail.trim();
    let offset = if tail.is_empty() {
        0
    } else {
        let first = tail.split_whitespace().next().unwrap_or("");
        first
            .parse()
            .map_err(|_| bad(format!("extent offset {first:?} is not a number")))?
    };
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file_name: Some(name.to_string()),
        offset,
    })
}

/// A new random content ID (CID) that is not the "no parent" value.
pub fn random_cid() -> u32 {
    let cid = uuid::Uuid::new_v4().as_u128() as u32;
    if cid == NO_PARENT_CID {
        0xfffffffe
    } else {
        cid
    }
}

/// `ddb.uuid` text form VMware uses: "60 00 C2 9f e4 0c 87 33-ea 3e c3 1b 2b 43 52 e9".
pub fn ddb_uuid_text(id: &uuid::Uuid) -> String {
    let b = id.as_bytes();
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}", hex[..8].join(" "), hex[8..].join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMWARE: &str = "# Disk DescriptorFile\nversion=1\nCID=00000000\nparentCID=ffffffff\nisNativeSnapshot=\"no\"\ncreateType=\"streamOptimized\"\n\n# Extent description\nRW 20480 SPARSE \"streamOptimized.vmdk\"\n\n# The Disk Data Base \n#DDB\n\nddb.toolsVersion = \"1\"\nddb.virtualHWVersion = \"7\"\nddb.geometry.cylinders = \"301\"\nddb.adapterType = \"buslogic\"\n";

    #[test]
    fn vmware_descriptor_parses() {
        let d = Descriptor::parse(VMWARE.as_bytes()).unwrap();
        assert_eq!(d.create_type(), Some("streamOptimized"));
        assert_eq!(d.parent_cid().unwrap(), None);
        assert_eq!(d.cid().unwrap(), Some(0));
        assert_eq!(d.get("ddb.adapterType"), Some("buslogic"));
        assert_eq!(
            d.extents,
            vec![ExtentLine {
                access: Access::ReadWrite,
                sectors: 20480,
                kind: ExtentKind::Sparse,
                file_name: Some("streamOptimized.vmdk".into()),
                offset: 0,
            }]
        );
    }

    #[test]
    fn descriptor_round_trip() {
        let d = Descriptor::parse(VMWARE.as_bytes()).unwrap();
        let again = Descriptor::parse(d.emit().as_bytes()).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn flat_extent_with_offset_and_spaces_in_name() {
        let d = Descriptor::parse(
            b"# Disk DescriptorFile\nversion=1\nRDONLY 100 FLAT \"my disk.iso\" 8\nRW 50 ZERO\n",
        )
        .unwrap();
        assert_eq!(d.extents[0].file_name.as_deref(), Some("my disk.iso"));
        assert_eq!(d.extents[0].offset, 8);
        assert_eq!(d.extents[0].access, Access::ReadOnly);
        assert_eq!(d.extents[1].kind, ExtentKind::Zero);
        assert_eq!(d.total_sectors().unwrap(), 150);
    }

    #[test]
    fn descriptor_without_extents_is_refused() {
        assert!(matches!(
            Descriptor::parse(b"# Disk DescriptorFile\nversion=1\n"),
            Err(Error::Descriptor { .. })
        ));
    }

    #[test]
    fn too_many_extents_is_refused() {
        let mut text = String::from("# Disk DescriptorFile\n");
        for _ in 0..=MAX_EXTENTS {
            text.push_str("RW 1 ZERO\n");
        }
        assert!(matches!(
            Descriptor::parse(text.as_bytes()),
            Err(Error::Descriptor { .. })
        ));
    }

    #[test]
    fn overlong_line_is_refused() {
        let text = format!(
            "# Disk DescriptorFile\nddb.x = \"{}\"\n",
            "a".repeat(MAX_LINE_BYTES)
        );
        assert!(matches!(
            Descriptor::parse(text.as_bytes()),
            Err(Error::Descriptor { line: 2, .. })
        ));
    }

    #[test]
    fn unknown_extent_type_is_refused() {
        assert!(matches!(
            Descriptor::parse(b"# Disk DescriptorFile\nRW 1 WEIRD \"x\"\n"),
            Err(Error::Descriptor { line: 2, .. })
        ));
    }

    #[test]
    fn extent_sizes_overflow_is_an_error() {
        let d =
            Descriptor::parse(b"# Disk DescriptorFile\nRW 18446744073709551615 ZERO\nRW 1 ZERO\n")
                .unwrap();
        assert!(d.total_sectors().is_err());
    }

    #[test]
    fn ddb_uuid_has_vmware_spacing() {
        let id = uuid::Uuid::from_bytes([
            0x60, 0, 0xc2, 0x9f, 0xe4, 0x0c, 0x87, 0x33, 0xea, 0x3e, 0xc3, 0x1b, 0x2b, 0x43, 0x52,
            0xe9,
        ]);
        assert_eq!(
            ddb_uuid_text(&id),
            "60 00 c2 9f e4 0c 87 33-ea 3e c3 1b 2b 43 52 e9"
        );
    }
}

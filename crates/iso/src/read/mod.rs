//! Reading ISO 9660 images: volume descriptors, directories, Joliet, Rock Ridge, El Torito, partitions.
//!
//! Entry point: [`IsoImage::open`] over any `vmedia_io::ReadAt`. The image is untrusted: every
//! offset and length is checked against the source size, every structure that could grow
//! without bound has a named limit below, and a walk of the tree refuses to enter a directory
//! twice. Nothing here panics on any input; errors name the byte offset and the field.
//!
//! Name spaces are chosen like 7z and bsdtar: the UDF tree when the image has one (an ISO
//! 9660 and UDF bridge, or UDF alone), then as xorriso and the Linux kernel: Rock Ridge names
//! when the image has Rock Ridge, else Joliet, else plain ISO 9660 names (without the `;1` version).

mod eltorito;
mod error;
mod file;
mod partition;
pub mod rip;
mod susp;
mod volume;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use vmedia_io::bytes::{le32, Fields};
use vmedia_io::ReadAt;

pub use eltorito::{BootCatalog, BootEntryInfo, Emulation, Platform, MAX_BOOT_CATALOG_BYTES};
pub use error::ReadError;
pub use file::FileReader;
pub use partition::{
    format_guid, Gpt, GptPartition, MbrPartition, PartitionTable, MAX_GPT_ENTRIES,
};
pub use susp::{
    ZisofsInfo, MAX_CE_AREA_BYTES, MAX_CE_CHAIN, MAX_NAME_BYTES, MAX_SYMLINK_TARGET_BYTES,
};
pub use volume::{
    DescriptorKind, DescriptorSummary, JolietInfo, RootLocation, Timestamp, VolumeFields,
    MAX_VOLUME_DESCRIPTORS,
};

pub(crate) const SECTOR: usize = 2048;
pub(crate) const SECTOR_BYTES: u64 = 2048;
/// The system area before the volume descriptors (boot code, MBR, GPT, APM).
pub const SYSTEM_AREA_BYTES: usize = 16 * SECTOR;

/// A directory is read whole into memory; 64 MiB holds over 300 000 Rock Ridge records.
pub const MAX_DIRECTORY_BYTES: u64 = 64 * 1024 * 1024;
/// More entries than any real directory has; bounds one `read_dir` result.
pub const MAX_ENTRIES_PER_DIRECTORY: usize = 1_000_000;
/// Rock Ridge relocation allows deep trees, but PATH_MAX (4096) allows at most 2048 levels.
pub const MAX_DIRECTORY_DEPTH: usize = 2048;
/// Bounds the memory and time of a whole-tree walk (each entry is about 200 bytes).
pub const MAX_TOTAL_ENTRIES: u64 = 10_000_000;
/// xorriso splits at 4 GiB per extent, so 4096 extents are a 16 TiB file; bounds the extent list.
pub const MAX_EXTENTS_PER_FILE: usize = 4096;
/// Directories kept by the lookup cache; cleared when full.
pub const MAX_CACHED_DIRECTORIES: usize = 256;
/// Larger directories are not cached, so the cache stays below 256 x 10 000 entries.
pub const MAX_CACHED_DIRECTORY_ENTRIES: usize = 10_000;
/// Linux's limit on symbolic links followed while resolving one path.
pub const MAX_SYMLINK_HOPS: usize = 40;

/// Which directory tree supplies the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NameSpace {
    /// UDF if present (as 7z and bsdtar), then Rock Ridge, then Joliet, then ISO 9660
    /// (what xorriso and Linux do).
    #[default]
    Auto,
    Udf,
    RockRidge,
    Joliet,
    Iso9660,
}

impl NameSpace {
    /// A human name ("Rock Ridge", "Joliet"...).
    pub fn label(self) -> &'static str {
        match self {
            NameSpace::Auto => "auto",
            NameSpace::Udf => "UDF",
            NameSpace::RockRidge => "Rock Ridge",
            NameSpace::Joliet => "Joliet",
            NameSpace::Iso9660 => "ISO 9660",
        }
    }
}

/// How to open an image.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    pub prefer: NameSpace,
}

/// The byte source with its size, checked once at open.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) inner: Arc<dyn ReadAt>,
    pub(crate) size: u64,
}

impl Source {
    pub(crate) fn new(inner: Arc<dyn ReadAt>) -> Result<Source, ReadError> {
        let size = inner
            .size()
            .map_err(|e| ReadError::io("the image size", 0, e))?;
        Ok(Source { inner, size })
    }

    /// Fails with a `Corrupt` error naming `what` when `[offset, offset + len)` is not inside.
    pub(crate) fn check_range(
        &self,
        offset: u64,
        len: u64,
        what: &'static str,
    ) -> Result<(), ReadError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(ReadError::corrupt(
                offset,
                what,
                format!(
                    "{len} bytes at offset {offset:#x} run past the end of the image ({:#x} bytes)",
                    self.size
                ),
            )),
        }
    }

    /// Reads a range known to be bounded by a limit, after checking it lies in the image.
    pub(crate) fn read_range(
        &self,
        offset: u64,
        len: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, ReadError> {
        self.check_range(offset, len, what)?;
        let len = usize::try_from(len)
            .map_err(|_| ReadError::limit(offset, "address space", len, usize::MAX as u64))?;
        let mut buf = vec![0u8; len];
        self.inner
            .read_exact_at(&mut buf, offset)
            .map_err(|e| ReadError::io(what, offset, e))?;
        Ok(buf)
    }
}

/// Rock Ridge as announced by the root directory's SP and ER fields.
#[derive(Debug, Clone, Serialize)]
pub struct RockRidgeInfo {
    /// Extension identifiers (`RRIP_1991A`, `IEEE_P1282`, `IEEE_1282`, `AAIP_0200`...).
    pub extensions: Vec<String>,
    /// Bytes skipped at the start of every system use area (the SP field's LEN_SKP).
    pub skip: u8,
}

/// The El Torito boot record volume descriptor.
#[derive(Debug, Clone, Serialize)]
pub struct ElToritoRecord {
    pub catalog_lba: u32,
    pub boot_system_id: String,
}

/// Everything the volume descriptors say, plus what was found on opening.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub primary: VolumeFields,
    pub joliet: Option<JolietInfo>,
    pub rock_ridge: Option<RockRidgeInfo>,
    pub el_torito: Option<ElToritoRecord>,
    /// The UDF volume of a bridge (or UDF-only) image.
    pub udf: Option<crate::udf::read::UdfVolume>,
    pub descriptors: Vec<DescriptorSummary>,
    /// The name space in use for this `IsoImage` (never `Auto`).
    pub namespace: NameSpace,
    /// Size of the source in bytes.
    pub image_bytes: u64,
    /// Volume space size in bytes (what the primary descriptor records).
    pub volume_bytes: u64,
}

/// The type of a directory entry, with what is specific to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Directory,
    Symlink { target: String },
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
    Socket,
}

/// A run of 2048-byte blocks holding (part of) an entry's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    pub lba: u32,
    /// Length in bytes.
    pub length: u64,
}

impl Extent {
    /// Byte offset of the extent in the image.
    pub fn byte_offset(&self) -> u64 {
        u64::from(self.lba) * SECTOR_BYTES
    }
}

/// One directory entry, with its Rock Ridge metadata where the image has it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The name in the chosen name space (Rock Ridge NM, Joliet, or ISO without `;1`).
    pub name: String,
    /// The raw identifier of the directory record, version included (Joliet decoded).
    pub iso_name: String,
    pub kind: EntryKind,
    /// Size in bytes as the user sees it (uncompressed for zisofs files).
    pub size: u64,
    /// st_mode: file type and permission bits (synthesized when there is no Rock Ridge:
    /// 0555, as xorriso and Linux show).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    /// The Rock Ridge file serial number (PX of RRIP 1.12), shared by hard links.
    pub inode: Option<u32>,
    pub mtime: Option<Timestamp>,
    pub atime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
    pub created: Option<Timestamp>,
    pub extents: Vec<Extent>,
    pub zisofs: Option<ZisofsInfo>,
    /// The ISO "existence" (hidden) flag.
    pub hidden: bool,
    /// Whether Rock Ridge fields were found on this record.
    pub rock_ridge: bool,
    /// A directory reached through a Rock Ridge CL (relocated to rr_moved by the writer).
    pub relocated: bool,
    /// Byte offset of the directory record in the image (of the file identifier in UDF).
    pub record_offset: u64,
    /// UDF: the file's bytes as byte ranges of the image when they are not whole sectors
    /// (data embedded in the file entry); `extents` is then empty.
    #[serde(skip)]
    pub(crate) pieces: Option<Vec<(u64, u64)>>,
}

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFIFO: u32 = 0o010_000;
const S_IFSOCK: u32 = 0o140_000;

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Directory
    }

    pub fn is_file(&self) -> bool {
        self.kind == EntryKind::File
    }

    /// Permission bits (including setuid, setgid, sticky).
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    /// `ls -l`'s mode column, e.g. `drwxr-xr-x`.
    pub fn mode_string(&self) -> String {
        let kind = match self.kind {
            EntryKind::File => '-',
            EntryKind::Directory => 'd',
            EntryKind::Symlink { .. } => 'l',
            EntryKind::CharDevice { .. } => 'c',
            EntryKind::BlockDevice { .. } => 'b',
            EntryKind::Fifo => 'p',
            EntryKind::Socket => 's',
        };
        let m = self.mode;
        let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
        let special = |exec: bool, flag: bool, lower: char, upper: char| match (exec, flag) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        };
        let mut s = String::with_capacity(10);
        s.push(kind);
        s.push(bit(0o400, 'r'));
        s.push(bit(0o200, 'w'));
        s.push(special(m & 0o100 != 0, m & 0o4000 != 0, 's', 'S'));
        s.push(bit(0o040, 'r'));
        s.push(bit(0o020, 'w'));
        s.push(special(m & 0o010 != 0, m & 0o2000 != 0, 's', 'S'));
        s.push(bit(0o004, 'r'));
        s.push(bit(0o002, 'w'));
        s.push(special(m & 0o001 != 0, m & 0o1000 != 0, 't', 'T'));
        s
    }

    /// A key shared by hard links of one file: the Rock Ridge serial number when the writer
    /// recorded one, else the data location (genisoimage shares extents between links).
    pub fn hard_link_key(&self) -> Option<u64> {
        if !self.is_file() || self.nlink < 2 {
            return None;
        }
        if let Some(ino) = self.inode.filter(|&i| i != 0) {
            return Some(u64::from(ino));
        }
        let first = self.extents.first()?;
        if first.length == 0 {
            return None;
        }
        Some((1u64 << 40) | u64::from(first.lba))
    }

    /// Bytes stored in the image (compressed size for zisofs).
    pub fn stored_size(&self) -> u64 {
        self.extents.iter().map(|e| e.length).sum()
    }
}

/// An entry found by [`IsoImage::walk`], with its path from the root (`/a/b`).
#[derive(Debug, Clone, Serialize)]
pub struct WalkEntry {
    pub path: String,
    pub depth: usize,
    pub entry: Entry,
}

/// Totals of [`IsoImage::scan`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanSummary {
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    pub other: u64,
    pub bytes_read: u64,
    pub boot_entries: usize,
}

/// Whether `source` holds an ISO 9660 volume (a "CD001" descriptor at sector 16).
pub fn is_iso(source: &dyn ReadAt) -> bool {
    let mut id = [0u8; 6];
    source.read_exact_at(&mut id, 16 * SECTOR_BYTES).is_ok() && &id[1..6] == b"CD001"
}

/// An open ISO 9660 image. Cheap to share: all methods take `&self`; `Send + Sync`.
#[derive(Clone)]
pub struct IsoImage {
    source: Source,
    volume: VolumeInfo,
    root: Entry,
    /// SUSP skip for the primary tree's records, when Rock Ridge is in use.
    rock_ridge_skip: Option<usize>,
    joliet_tree: bool,
    /// Directories read by path lookups, shared by clones: a boot or netboot server resolves
    /// the same few paths for every client.
    lookup_cache: DirectoryCache,
    /// The UDF volume when the UDF tree is the one in use.
    udf: Option<Arc<crate::udf::read::UdfVolume>>,
}

/// Directory contents by (block, length), shared by clones of an `IsoImage`.
type DirectoryCache = Arc<Mutex<HashMap<(u32, u64), Arc<Vec<Entry>>>>>;

impl std::fmt::Debug for IsoImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsoImage")
            .field("volume", &self.volume)
            .finish()
    }
}

/// The fixed fields of one directory record.
struct RawRecord<'a> {
    length: usize,
    lba: u32,
    data_length: u32,
    date: [u8; 7],
    flags: u8,
    name: &'a [u8],
    system_use: &'a [u8],
}

const FLAG_HIDDEN: u8 = 0x01;
const FLAG_DIRECTORY: u8 = 0x02;
const FLAG_MULTI_EXTENT: u8 = 0x80;

fn parse_record(buf: &[u8], offset: u64) -> Result<RawRecord<'_>, ReadError> {
    let length = usize::from(*buf.first().unwrap_or(&0));
    if length < 34 || length > buf.len() {
        return Err(ReadError::corrupt(
            offset,
            "directory record length",
            format!("{length} (a record needs 34..={} bytes here)", buf.len()),
        ));
    }
    let rec = &buf[..length];
    // Every fixed field lies in the first 33 bytes, which the length check above covers.
    let fields = Fields::new_checked(rec, 33).ok_or_else(|| {
        ReadError::corrupt(offset, "directory record length", format!("{length}"))
    })?;
    let xattr_blocks = u32::from(rec[1]);
    let name_len = usize::from(rec[32]);
    if 33 + name_len > length {
        return Err(ReadError::corrupt(
            offset + 32,
            "file identifier length",
            format!("{name_len} does not fit in a {length}-byte record"),
        ));
    }
    if rec[26] != 0 || rec[27] != 0 {
        return Err(ReadError::Unsupported {
            offset: offset + 26,
            feature: "interleaved file (file unit size / gap); no known writer makes these".into(),
        });
    }
    let su_start = 33 + name_len + usize::from(name_len % 2 == 0);
    let mut date = [0u8; 7];
    date.copy_from_slice(&rec[18..25]);
    let lba = fields.le32(2).checked_add(xattr_blocks).ok_or_else(|| {
        ReadError::corrupt(
            offset + 2,
            "extent location",
            "overflows with the extended attribute length",
        )
    })?;
    Ok(RawRecord {
        length,
        lba,
        data_length: fields.le32(10),
        date,
        flags: rec[25],
        name: &rec[33..33 + name_len],
        system_use: rec.get(su_start..).unwrap_or(&[]),
    })
}

/// ISO names without the `;N` version, and without the lone trailing dot of an
/// extension-less name ("README." -> "README"), as xorriso and Linux present them.
fn plain_iso_name(raw: &str) -> String {
    let base = match raw.rfind(';') {
        Some(i) if raw[i + 1..].chars().all(|c| c.is_ascii_digit()) => &raw[..i],
        _ => raw,
    };
    let base = base.strip_suffix('.').unwrap_or(base);
    base.to_string()
}

fn joliet_name(raw: &str) -> String {
    match raw.rfind(';') {
        Some(i) if raw[i + 1..].chars().all(|c| c.is_ascii_digit()) => raw[..i].to_string(),
        _ => raw.to_string(),
    }
}

fn join_path(dir: &str, name: &str) -> String {
    if dir == "/" || dir.is_empty() {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

impl IsoImage {
    /// Opens the image in `source`, reading the volume descriptors and the root directory.
    pub fn open(source: Arc<dyn ReadAt>, opts: OpenOptions) -> Result<IsoImage, ReadError> {
        let source = Source::new(source)?;
        let udf_nsr = crate::udf::read::detect(&*source.inner);
        let has_iso = is_iso(&*source.inner);
        if let (Some(nsr), false) = (udf_nsr, has_iso) {
            if matches!(opts.prefer, NameSpace::Auto | NameSpace::Udf) {
                return Self::open_udf_only(source, nsr);
            }
        }
        if opts.prefer == NameSpace::Udf && udf_nsr.is_none() {
            return Err(ReadError::MissingNamespace { namespace: "UDF" });
        }
        if source.size < 17 * SECTOR_BYTES {
            return Err(ReadError::NotIso {
                reason: format!(
                    "{} bytes is too small to hold a volume descriptor",
                    source.size
                ),
            });
        }
        let read_sector = |lba: u32, buf: &mut [u8; SECTOR]| -> Result<(), ReadError> {
            let offset = u64::from(lba) * SECTOR_BYTES;
            source.check_range(offset, SECTOR_BYTES, "volume descriptor")?;
            source
                .inner
                .read_exact_at(buf, offset)
                .map_err(|e| ReadError::io("volume descriptor", offset, e))
        };
        let set = volume::read_descriptors(&read_sector)?;

        let primary_root = set.primary.root;
        let root_dot = Self::first_record_fields(&source, primary_root.lba, "root directory")?;
        let su = susp::parse_system_use(&source, &root_dot.1, root_dot.0)?;
        let rock_ridge = match su.sp_skip {
            Some(skip) => Some(RockRidgeInfo {
                extensions: su.extensions.clone(),
                skip,
            }),
            None if su.any_rock_ridge => Some(RockRidgeInfo {
                extensions: su.extensions.clone(),
                skip: 0,
            }),
            None => None,
        };
        let udf = match (opts.prefer, udf_nsr) {
            (NameSpace::Udf, Some(nsr)) => Some(crate::udf::read::open(&source, nsr)?),
            // A damaged UDF side leaves the ISO 9660 trees readable, as 7z falls back.
            // A damaged UDF side leaves the ISO 9660 trees readable, as 7z falls back; with
            // another tree asked for, the UDF volume is still described.
            (_, Some(nsr)) => crate::udf::read::open(&source, nsr).ok(),
            _ => None,
        };
        let namespace = match opts.prefer {
            NameSpace::Auto if udf.is_some() => NameSpace::Udf,
            NameSpace::Auto if rock_ridge.is_some() => NameSpace::RockRidge,
            NameSpace::Auto if set.joliet.is_some() => NameSpace::Joliet,
            NameSpace::Auto => NameSpace::Iso9660,
            NameSpace::RockRidge if rock_ridge.is_none() => {
                return Err(ReadError::MissingNamespace {
                    namespace: "Rock Ridge",
                })
            }
            NameSpace::Joliet if set.joliet.is_none() => {
                return Err(ReadError::MissingNamespace {
                    namespace: "Joliet",
                })
            }
            other => other,
        };
        let root_location = match (namespace, &set.joliet) {
            (NameSpace::Joliet, Some(j)) => j.fields.root,
            _ => primary_root,
        };
        let rock_ridge_skip = match (namespace, &rock_ridge) {
            (NameSpace::RockRidge, Some(rr)) => Some(usize::from(rr.skip)),
            _ => None,
        };
        let mut root = Entry {
            name: String::new(),
            iso_name: String::new(),
            kind: EntryKind::Directory,
            size: u64::from(root_location.size),
            mode: S_IFDIR | 0o555,
            uid: 0,
            gid: 0,
            nlink: 1,
            inode: None,
            mtime: None,
            atime: None,
            ctime: None,
            created: None,
            extents: vec![Extent {
                lba: root_location.lba,
                length: u64::from(root_location.size),
            }],
            zisofs: None,
            hidden: false,
            rock_ridge: false,
            relocated: false,
            record_offset: u64::from(root_location.lba) * SECTOR_BYTES,
            pieces: None,
        };
        if rock_ridge_skip.is_some() {
            apply_rock_ridge(&mut root, &su);
            root.kind = EntryKind::Directory;
        }
        let volume = VolumeInfo {
            volume_bytes: u64::from(set.primary.volume_space_size) * SECTOR_BYTES,
            primary: set.primary,
            joliet: set.joliet,
            rock_ridge,
            udf: udf.clone(),
            el_torito: set.boot_catalog_lba.map(|catalog_lba| ElToritoRecord {
                catalog_lba,
                boot_system_id: set.boot_system_id.unwrap_or_default(),
            }),
            descriptors: set.descriptors,
            namespace,
            image_bytes: source.size,
        };
        IsoImage {
            source,
            volume,
            root,
            rock_ridge_skip,
            joliet_tree: namespace == NameSpace::Joliet,
            lookup_cache: Arc::new(Mutex::new(HashMap::new())),
            udf: None,
        }
        .with_udf_root(if namespace == NameSpace::Udf {
            udf
        } else {
            None
        })
    }

    /// Switches an opened image to its UDF tree (when `udf` is given).
    fn with_udf_root(
        mut self,
        udf: Option<crate::udf::read::UdfVolume>,
    ) -> Result<IsoImage, ReadError> {
        if let Some(vol) = udf {
            let node = crate::udf::read::read_node(&self.source, &vol, vol.root_lba)?;
            if !crate::udf::read::is_directory(&node) {
                return Err(ReadError::corrupt(
                    u64::from(vol.root_lba) * SECTOR_BYTES,
                    "UDF root",
                    "the file set's root is not a folder",
                ));
            }
            self.root = self.udf_entry(&node, String::new(), 0, false);
            self.rock_ridge_skip = None;
            self.joliet_tree = false;
            self.udf = Some(Arc::new(vol));
        }
        Ok(self)
    }

    /// Opens an image that holds UDF and no ISO 9660 volume (what mkudffs makes).
    fn open_udf_only(source: Source, nsr: u8) -> Result<IsoImage, ReadError> {
        let vol = crate::udf::read::open(&source, nsr)?;
        let dummy_root = RootLocation {
            lba: vol.root_lba,
            size: 0,
        };
        let primary = VolumeFields {
            system_id: String::new(),
            volume_id: vol.label.clone(),
            volume_set_id: vol.volume_set_id.clone(),
            publisher_id: String::new(),
            data_preparer_id: String::new(),
            application_id: String::new(),
            copyright_file_id: String::new(),
            abstract_file_id: String::new(),
            bibliographic_file_id: String::new(),
            volume_space_size: u32::try_from(source.size / SECTOR_BYTES).unwrap_or(u32::MAX),
            volume_set_size: 1,
            volume_sequence_number: 1,
            logical_block_size: SECTOR as u16,
            path_table_size: 0,
            path_table_lba_le: 0,
            path_table_lba_be: 0,
            root: dummy_root,
            creation: vol.recorded,
            modification: vol.recorded,
            expiration: None,
            effective: None,
            file_structure_version: 0,
        };
        let volume = VolumeInfo {
            volume_bytes: source.size / SECTOR_BYTES * SECTOR_BYTES,
            primary,
            joliet: None,
            rock_ridge: None,
            udf: Some(vol.clone()),
            el_torito: None,
            descriptors: Vec::new(),
            namespace: NameSpace::Udf,
            image_bytes: source.size,
        };
        let image = IsoImage {
            source,
            volume,
            root: Entry {
                name: String::new(),
                iso_name: String::new(),
                kind: EntryKind::Directory,
                size: 0,
                mode: S_IFDIR | 0o555,
                uid: 0,
                gid: 0,
                nlink: 1,
                inode: None,
                mtime: None,
                atime: None,
                ctime: None,
                created: None,
                extents: Vec::new(),
                zisofs: None,
                hidden: false,
                rock_ridge: false,
                relocated: false,
                record_offset: 0,
                pieces: None,
            },
            rock_ridge_skip: None,
            joliet_tree: false,
            lookup_cache: Arc::new(Mutex::new(HashMap::new())),
            udf: None,
        };
        image.with_udf_root(Some(vol))
    }

    /// An entry for the UDF file entry `node` named `name`.
    fn udf_entry(
        &self,
        node: &crate::udf::read::Node,
        name: String,
        record_offset: u64,
        hidden: bool,
    ) -> Entry {
        use crate::udf::{file_type, read as udf};
        let perm = udf::unix_mode(node.permissions);
        let (kind, mode) = match node.file_type {
            file_type::DIRECTORY => (EntryKind::Directory, S_IFDIR | perm),
            file_type::SYMLINK => (
                EntryKind::Symlink {
                    target: udf::symlink_target(&self.source, node).unwrap_or_default(),
                },
                S_IFLNK | 0o777,
            ),
            _ => (EntryKind::File, S_IFREG | perm),
        };
        // Folders are keyed by their file entry (loops, the lookup cache); file data by its
        // extents, or by byte ranges when embedded in the file entry.
        let sector_aligned = !node.inline
            && node
                .ranges
                .iter()
                .all(|&(start, _)| start % SECTOR_BYTES == 0)
            && node
                .ranges
                .iter()
                .rev()
                .skip(1)
                .all(|&(_, len)| len % SECTOR_BYTES == 0);
        let (extents, pieces) = if kind == EntryKind::Directory {
            (
                vec![Extent {
                    lba: node.lba,
                    length: node.size,
                }],
                None,
            )
        } else if sector_aligned {
            (
                node.ranges
                    .iter()
                    .filter_map(|&(start, length)| {
                        u32::try_from(start / SECTOR_BYTES)
                            .ok()
                            .map(|lba| Extent { lba, length })
                    })
                    .collect(),
                None,
            )
        } else {
            (Vec::new(), Some(node.ranges.clone()))
        };
        let size = match &kind {
            EntryKind::Symlink { target } => target.len() as u64,
            _ => node.size,
        };
        Entry {
            iso_name: name.clone(),
            name,
            kind,
            size,
            mode,
            uid: if node.uid == u32::MAX { 0 } else { node.uid },
            gid: if node.gid == u32::MAX { 0 } else { node.gid },
            nlink: u32::from(node.links.max(1)),
            inode: u32::try_from(node.unique_id).ok(),
            mtime: node.mtime,
            atime: node.atime,
            ctime: node.ctime,
            created: None,
            extents,
            zisofs: None,
            hidden,
            rock_ridge: false,
            relocated: false,
            record_offset,
            pieces,
        }
    }

    /// `read_dir` of the UDF tree: the folder's file entry is read again (it is keyed by it).
    fn udf_read_dir(
        &self,
        vol: &crate::udf::read::UdfVolume,
        dir: &Entry,
    ) -> Result<Vec<Entry>, ReadError> {
        let Some(first) = dir.extents.first() else {
            return Ok(Vec::new());
        };
        let node = crate::udf::read::read_node(&self.source, vol, first.lba)?;
        let ids = crate::udf::read::read_dir(&self.source, vol, &node)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let child = crate::udf::read::read_node(&self.source, vol, id.lba)?;
            let is_dir_fid = id.characteristics & crate::udf::fid_flag::DIRECTORY != 0;
            if is_dir_fid != crate::udf::read::is_directory(&child) {
                return Err(ReadError::corrupt(
                    id.offset,
                    "file identifier",
                    format!(
                        "{:?}: the directory flag disagrees with its file entry",
                        id.name
                    ),
                ));
            }
            let hidden = id.characteristics & crate::udf::fid_flag::HIDDEN != 0;
            out.push(self.udf_entry(&child, id.name, id.offset, hidden));
        }
        Ok(out)
    }

    /// Reads the first record (".") of the directory at `lba`: (record offset, system use
    /// bytes, data length).
    fn first_record_fields(
        source: &Source,
        lba: u32,
        what: &'static str,
    ) -> Result<(u64, Vec<u8>, u32), ReadError> {
        let offset = u64::from(lba) * SECTOR_BYTES;
        let sector = source.read_range(offset, SECTOR_BYTES, what)?;
        let rec = parse_record(&sector, offset)?;
        Ok((offset, rec.system_use.to_vec(), rec.data_length))
    }

    /// The volume descriptors and what was found on opening.
    pub fn volume(&self) -> &VolumeInfo {
        &self.volume
    }

    /// The name space in use (never `Auto`).
    pub fn namespace(&self) -> NameSpace {
        self.volume.namespace
    }

    /// The root directory.
    pub fn root(&self) -> &Entry {
        &self.root
    }

    /// The byte source the image was opened on.
    pub fn source(&self) -> &Arc<dyn ReadAt> {
        &self.source.inner
    }

    /// The entries of directory `dir` in on-disc order, without "." and "..".
    pub fn read_dir(&self, dir: &Entry) -> Result<Vec<Entry>, ReadError> {
        if !dir.is_dir() {
            return Err(ReadError::NotADirectory {
                path: dir.name.clone(),
            });
        }
        if let Some(vol) = &self.udf {
            return self.udf_read_dir(vol, dir);
        }
        let Some(extent) = dir.extents.first() else {
            return Ok(Vec::new());
        };
        if extent.length > MAX_DIRECTORY_BYTES {
            return Err(ReadError::limit(
                dir.record_offset,
                "MAX_DIRECTORY_BYTES",
                extent.length,
                MAX_DIRECTORY_BYTES,
            ));
        }
        let base = extent.byte_offset();
        let buf = self
            .source
            .read_range(base, extent.length, "directory extent")?;
        let mut entries: Vec<Entry> = Vec::new();
        let mut pending: Option<Entry> = None;
        let mut pos = 0usize;
        while pos < buf.len() {
            let length = usize::from(buf[pos]);
            if length == 0 {
                // Records never cross a block; a zero length pads to the next block.
                pos = (pos / SECTOR + 1) * SECTOR;
                continue;
            }
            let offset = base + pos as u64;
            let rec = parse_record(&buf[pos..], offset)?;
            pos += rec.length;
            if rec.name.len() == 1 && rec.name[0] <= 1 {
                continue;
            }
            let iso_name = if self.joliet_tree {
                volume::ucs2_name(rec.name)
            } else {
                String::from_utf8_lossy(rec.name).into_owned()
            };
            let extent = Extent {
                lba: rec.lba,
                length: u64::from(rec.data_length),
            };
            if let Some(mut first) = pending.take() {
                // A multi-extent file continues in the following records of the same name.
                if first.iso_name != iso_name {
                    return Err(ReadError::corrupt(
                        offset,
                        "multi-extent file",
                        format!(
                            "{:?} is continued by a record named {iso_name:?}",
                            first.iso_name
                        ),
                    ));
                }
                if first.extents.len() >= MAX_EXTENTS_PER_FILE {
                    return Err(ReadError::limit(
                        offset,
                        "MAX_EXTENTS_PER_FILE",
                        first.extents.len() as u64 + 1,
                        MAX_EXTENTS_PER_FILE as u64,
                    ));
                }
                first.extents.push(extent);
                if first.zisofs.is_none() {
                    first.size = first.size.saturating_add(extent.length);
                }
                if rec.flags & FLAG_MULTI_EXTENT != 0 {
                    pending = Some(first);
                } else {
                    entries.push(first);
                }
                continue;
            }
            let mut entry = Entry {
                name: if self.joliet_tree {
                    joliet_name(&iso_name)
                } else {
                    plain_iso_name(&iso_name)
                },
                iso_name,
                kind: if rec.flags & FLAG_DIRECTORY != 0 {
                    EntryKind::Directory
                } else {
                    EntryKind::File
                },
                size: extent.length,
                mode: if rec.flags & FLAG_DIRECTORY != 0 {
                    S_IFDIR | 0o555
                } else {
                    S_IFREG | 0o555
                },
                uid: 0,
                gid: 0,
                nlink: 1,
                inode: None,
                mtime: volume::parse_record_date(&rec.date),
                atime: None,
                ctime: None,
                created: None,
                extents: vec![extent],
                zisofs: None,
                hidden: rec.flags & FLAG_HIDDEN != 0,
                rock_ridge: false,
                relocated: false,
                record_offset: offset,
                pieces: None,
            };
            if let Some(skip) = self.rock_ridge_skip {
                let area = rec.system_use.get(skip..).unwrap_or(&[]);
                let su = susp::parse_system_use(&self.source, area, offset)?;
                if su.relocated {
                    // The real place of this directory is the CL entry elsewhere.
                    continue;
                }
                apply_rock_ridge(&mut entry, &su);
                if let Some(child) = su.child_link {
                    let (_, _, length) =
                        Self::first_record_fields(&self.source, child, "relocated directory (CL)")?;
                    entry.kind = EntryKind::Directory;
                    entry.mode = (entry.mode & !S_IFMT) | S_IFDIR;
                    entry.extents = vec![Extent {
                        lba: child,
                        length: u64::from(length),
                    }];
                    entry.size = u64::from(length);
                    entry.relocated = true;
                } else if rec.flags & FLAG_DIRECTORY != 0 {
                    entry.kind = EntryKind::Directory;
                    entry.mode = (entry.mode & !S_IFMT) | S_IFDIR;
                }
            }
            if entries.len() >= MAX_ENTRIES_PER_DIRECTORY {
                return Err(ReadError::limit(
                    offset,
                    "MAX_ENTRIES_PER_DIRECTORY",
                    entries.len() as u64 + 1,
                    MAX_ENTRIES_PER_DIRECTORY as u64,
                ));
            }
            if rec.flags & FLAG_MULTI_EXTENT != 0 && !entry.is_dir() {
                pending = Some(entry);
            } else {
                entries.push(entry);
            }
        }
        if let Some(first) = pending {
            return Err(ReadError::corrupt(
                first.record_offset,
                "multi-extent file",
                format!("{:?} has no final extent record", first.iso_name),
            ));
        }
        Ok(entries)
    }

    /// Every entry below the root, depth first, parents before children, on-disc order.
    pub fn walk(&self) -> Walk<'_> {
        self.walk_from(self.root.clone(), "/")
    }

    /// Every entry below `dir` (whose path is `path`), depth first.
    pub fn walk_from(&self, dir: Entry, path: &str) -> Walk<'_> {
        let mut visited = HashSet::new();
        if let Some(e) = dir.extents.first() {
            visited.insert(e.lba);
        }
        Walk {
            image: self,
            stack: Vec::new(),
            start: Some((dir, path.to_string())),
            visited,
            total: 0,
            failed: false,
        }
    }

    /// `read_dir` through the lookup cache.
    fn cached_dir(&self, dir: &Entry) -> Result<Arc<Vec<Entry>>, ReadError> {
        let key = dir.extents.first().map_or((0, 0), |e| (e.lba, e.length));
        if let Ok(cache) = self.lookup_cache.lock() {
            if let Some(hit) = cache.get(&key) {
                return Ok(hit.clone());
            }
        }
        let children = Arc::new(self.read_dir(dir)?);
        if children.len() > MAX_CACHED_DIRECTORY_ENTRIES {
            return Ok(children);
        }
        if let Ok(mut cache) = self.lookup_cache.lock() {
            if cache.len() >= MAX_CACHED_DIRECTORIES {
                cache.clear();
            }
            cache.insert(key, children.clone());
        }
        Ok(children)
    }

    fn find_child(&self, dir: &Entry, name: &str, path: &str) -> Result<Entry, ReadError> {
        let children = self.cached_dir(dir)?;
        let found = children
            .iter()
            .find(|e| e.name == name)
            .or_else(|| {
                children
                    .iter()
                    .find(|e| e.iso_name == name || joliet_name(&e.iso_name) == name)
            })
            // Plain ISO 9660 names are upper case; Linux shows them lower case (map=normal)
            // and boot configurations name them so.
            .or_else(|| {
                (self.namespace() == NameSpace::Iso9660)
                    .then(|| children.iter().find(|e| e.name.eq_ignore_ascii_case(name)))
                    .flatten()
            });
        found.cloned().ok_or_else(|| ReadError::NotFound {
            path: path.to_string(),
        })
    }

    fn resolve(&self, path: &str, follow_last: bool) -> Result<Entry, ReadError> {
        let mut queue: VecDeque<String> = path.split('/').map(str::to_string).collect();
        let mut stack: Vec<Entry> = vec![self.root.clone()];
        let mut hops = 0usize;
        while let Some(component) = queue.pop_front() {
            if component.is_empty() || component == "." {
                continue;
            }
            if component == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let dir = stack.last().cloned().unwrap_or_else(|| self.root.clone());
            if !dir.is_dir() {
                return Err(ReadError::NotADirectory {
                    path: path.to_string(),
                });
            }
            let child = self.find_child(&dir, &component, path)?;
            let last = queue.iter().all(|c| c.is_empty() || c == ".");
            if let EntryKind::Symlink { target } = &child.kind {
                if !last || follow_last {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ReadError::limit(
                            child.record_offset,
                            "MAX_SYMLINK_HOPS",
                            hops as u64,
                            MAX_SYMLINK_HOPS as u64,
                        ));
                    }
                    if target.starts_with('/') {
                        stack.truncate(1);
                    }
                    for part in target.split('/').rev() {
                        queue.push_front(part.to_string());
                    }
                    continue;
                }
            }
            if stack.len() > MAX_DIRECTORY_DEPTH {
                return Err(ReadError::limit(
                    child.record_offset,
                    "MAX_DIRECTORY_DEPTH",
                    stack.len() as u64,
                    MAX_DIRECTORY_DEPTH as u64,
                ));
            }
            stack.push(child);
        }
        Ok(stack.pop().unwrap_or_else(|| self.root.clone()))
    }

    /// The entry at `path` ("/boot/grub/grub.cfg"); symbolic links are not followed.
    /// Names match exactly, or the ISO identifier with or without its `;1` version; in the
    /// plain ISO 9660 name space also regardless of ASCII case (as Linux maps them).
    pub fn lookup(&self, path: &str) -> Result<Entry, ReadError> {
        self.resolve(path, false)
    }

    /// Like [`lookup`](Self::lookup), but symbolic links inside the image are followed
    /// (at most `MAX_SYMLINK_HOPS`), the last component included.
    pub fn lookup_follow(&self, path: &str) -> Result<Entry, ReadError> {
        self.resolve(path, true)
    }

    /// The contents of a regular file. Multi-extent files are joined, zisofs decompressed.
    pub fn file_reader(&self, entry: &Entry) -> Result<FileReader, ReadError> {
        if !entry.is_file() {
            return Err(ReadError::NotAFile {
                path: entry.name.clone(),
            });
        }
        if let Some(pieces) = &entry.pieces {
            for &(start, len) in pieces {
                self.source.check_range(start, len, "file data")?;
            }
            return FileReader::new(&self.source, pieces, None, &entry.name);
        }
        let mut ranges = Vec::with_capacity(entry.extents.len());
        for e in &entry.extents {
            if e.length == 0 {
                continue;
            }
            self.source
                .check_range(e.byte_offset(), e.length, "file extent")?;
            ranges.push((e.byte_offset(), e.length));
        }
        FileReader::new(&self.source, &ranges, entry.zisofs, &entry.name)
    }

    /// The stored bytes of a file, zisofs data left compressed (for repacking as is).
    pub fn raw_file_reader(&self, entry: &Entry) -> Result<FileReader, ReadError> {
        let mut plain = entry.clone();
        plain.zisofs = None;
        self.file_reader(&plain)
    }

    /// The first 32 KiB of the image: boot code, MBR, GPT, APM.
    pub fn system_area(&self) -> Result<Box<[u8; SYSTEM_AREA_BYTES]>, ReadError> {
        let mut area = Box::new([0u8; SYSTEM_AREA_BYTES]);
        self.source
            .inner
            .read_exact_at(&mut area[..], 0)
            .map_err(|e| ReadError::io("system area", 0, e))?;
        Ok(area)
    }

    /// MBR and GPT partitions from the system area.
    pub fn partitions(&self) -> Result<PartitionTable, ReadError> {
        let area = self.system_area()?;
        partition::read_partitions(&self.source, &area[..])
    }

    /// The bytes a full copy of the medium needs: the volume space, or further when a
    /// partition (an appended EFI image, say) lies past it.
    pub fn recorded_size(&self) -> Result<u64, ReadError> {
        let partitions = self.partitions()?;
        Ok(self.volume.volume_bytes.max(partitions.end_bytes()))
    }

    /// The El Torito boot catalog, with each entry's image located in the tree or partitions.
    pub fn boot_catalog(&self) -> Result<Option<BootCatalog>, ReadError> {
        let Some(record) = &self.volume.el_torito else {
            return Ok(None);
        };
        let offset = u64::from(record.catalog_lba) * SECTOR_BYTES;
        if offset >= self.source.size {
            return Err(ReadError::corrupt(
                offset,
                "boot catalog location",
                format!(
                    "block {} lies past the end of the image",
                    record.catalog_lba
                ),
            ));
        }
        let len = (self.source.size - offset).min(MAX_BOOT_CATALOG_BYTES);
        let buf = self.source.read_range(offset, len, "boot catalog")?;
        let mut catalog = eltorito::parse_catalog(&buf, record.catalog_lba, offset)?;

        // Files by first block, to name boot images and the catalog. A tree that cannot be
        // walked completely still yields the names found before the damage.
        let mut by_lba: HashMap<u32, (String, u64)> = HashMap::new();
        for item in self.walk() {
            let Ok(item) = item else { break };
            if item.entry.is_file() {
                if let Some(first) = item.entry.extents.first() {
                    by_lba
                        .entry(first.lba)
                        .or_insert((item.path, item.entry.size));
                }
            }
        }
        catalog.catalog_path = by_lba.get(&catalog.lba).map(|(p, _)| p.clone());
        let partitions = self.partitions().unwrap_or_default();
        for entry in &mut catalog.entries {
            let start_sector = u64::from(entry.lba) * 4;
            let partition = partitions
                .gpt
                .as_ref()
                .and_then(|g| {
                    g.partitions
                        .iter()
                        .find(|p| p.first_sector == start_sector)
                        .map(|p| {
                            (
                                p.number,
                                (p.last_sector.saturating_sub(p.first_sector) + 1) * 512,
                            )
                        })
                })
                .or_else(|| {
                    partitions
                        .mbr
                        .iter()
                        .find(|p| {
                            u64::from(p.start_sector) == start_sector
                                && p.partition_type != 0xEE
                                && start_sector != 0
                        })
                        .map(|p| (u32::from(p.number), u64::from(p.sector_count) * 512))
                });
            if let Some((path, size)) = by_lba.get(&entry.lba) {
                entry.image_path = Some(path.clone());
                entry.image_size = *size;
            } else if let Some((number, size)) = partition {
                entry.appended_partition = Some(number);
                entry.image_size = size;
            } else if let Some(size) = entry.emulation.floppy_bytes() {
                entry.image_size = size;
            } else {
                entry.image_size = u64::from(entry.sector_count) * 512;
            }
            let image_offset = u64::from(entry.lba) * SECTOR_BYTES;
            let mut head = [0u8; 24];
            if entry.image_size >= 64
                && self
                    .source
                    .inner
                    .read_exact_at(&mut head, image_offset)
                    .is_ok()
            {
                // The boot info table (mkisofs -boot-info-table) at bytes 8..24.
                entry.boot_info_table = le32(&head, 8) == Some(16)
                    && le32(&head, 12) == Some(entry.lba)
                    && le32(&head, 16).map(u64::from) == Some(entry.image_size);
            }
            let mut grub = [0u8; 8];
            if entry.image_size >= 2556
                && self
                    .source
                    .inner
                    .read_exact_at(&mut grub, image_offset + 2548)
                    .is_ok()
            {
                entry.grub2_boot_info = u64::from_le_bytes(grub) == start_sector + 5;
            }
        }
        Ok(Some(catalog))
    }

    /// The bytes of a boot image (as located by [`boot_catalog`](Self::boot_catalog)).
    pub fn boot_image_reader(&self, entry: &BootEntryInfo) -> Result<FileReader, ReadError> {
        let offset = u64::from(entry.lba) * SECTOR_BYTES;
        self.source
            .check_range(offset, entry.image_size, "boot image")?;
        FileReader::new(
            &self.source,
            &[(offset, entry.image_size)],
            None,
            "boot image",
        )
    }

    /// Walks the whole tree, reads every file (up to `byte_budget` bytes in all) and the boot
    /// catalog. Proves an image readable end to end; the fuzz target and corpus replay use it.
    pub fn scan(&self, byte_budget: u64) -> Result<ScanSummary, ReadError> {
        let mut summary = ScanSummary::default();
        let mut buf = vec![0u8; 256 * 1024];
        for item in self.walk() {
            let item = item?;
            match &item.entry.kind {
                EntryKind::Directory => summary.directories += 1,
                EntryKind::Symlink { .. } => summary.symlinks += 1,
                EntryKind::File => {
                    summary.files += 1;
                    let reader = self.file_reader(&item.entry)?;
                    let mut offset = 0u64;
                    while offset < reader.len() && summary.bytes_read < byte_budget {
                        let want = (reader.len() - offset).min(buf.len() as u64) as usize;
                        let n = reader
                            .read_at(&mut buf[..want], offset)
                            .map_err(|e| ReadError::io("file data", item.entry.record_offset, e))?;
                        if n == 0 {
                            return Err(ReadError::corrupt(
                                item.entry.record_offset,
                                "file data",
                                format!("{}: ends early at {offset}", item.path),
                            ));
                        }
                        offset += n as u64;
                        summary.bytes_read += n as u64;
                    }
                }
                _ => summary.other += 1,
            }
        }
        if let Some(catalog) = self.boot_catalog()? {
            summary.boot_entries = catalog.entries.len();
            for entry in &catalog.entries {
                if let Ok(reader) = self.boot_image_reader(entry) {
                    let want = reader.len().min(buf.len() as u64) as usize;
                    let n = reader.read_at(&mut buf[..want], 0).map_err(|e| {
                        ReadError::io("boot image", u64::from(entry.lba) * SECTOR_BYTES, e)
                    })?;
                    summary.bytes_read += n as u64;
                }
            }
        }
        let _ = self.partitions()?;
        let _ = self.recorded_size()?;
        Ok(summary)
    }
}

/// Applies the Rock Ridge fields of a record to its entry.
fn apply_rock_ridge(entry: &mut Entry, su: &susp::SystemUse) {
    entry.rock_ridge = su.any_rock_ridge;
    if let Some(name) = &su.name {
        entry.name = name.clone();
    }
    if let Some(px) = su.posix {
        entry.mode = px.mode;
        entry.nlink = px.nlink;
        entry.uid = px.uid;
        entry.gid = px.gid;
        entry.inode = px.inode;
        let (major, minor) = su.device.unwrap_or((0, 0));
        let is_dir_record = entry.kind == EntryKind::Directory;
        entry.kind = match px.mode & S_IFMT {
            _ if is_dir_record => EntryKind::Directory,
            S_IFLNK => EntryKind::Symlink {
                target: su.symlink.clone().unwrap_or_default(),
            },
            S_IFCHR => EntryKind::CharDevice { major, minor },
            S_IFBLK => EntryKind::BlockDevice { major, minor },
            S_IFIFO => EntryKind::Fifo,
            S_IFSOCK => EntryKind::Socket,
            S_IFDIR => EntryKind::Directory,
            _ => EntryKind::File,
        };
        if entry.kind == EntryKind::File && px.mode & S_IFMT != S_IFREG {
            entry.mode = (px.mode & !S_IFMT) | S_IFREG;
        }
    } else if let Some(target) = &su.symlink {
        entry.kind = EntryKind::Symlink {
            target: target.clone(),
        };
        entry.mode = S_IFLNK | 0o777;
    }
    if let Some(t) = su.modified {
        entry.mtime = Some(t);
    }
    entry.atime = su.accessed;
    entry.ctime = su.attributes_changed;
    entry.created = su.created;
    if entry.kind == EntryKind::File {
        if let Some(z) = su.zisofs {
            entry.zisofs = Some(z);
            entry.size = u64::from(z.uncompressed_size);
        }
    } else if !matches!(entry.kind, EntryKind::Directory) {
        entry.size = 0;
        if let EntryKind::Symlink { target } = &entry.kind {
            entry.size = target.len() as u64;
        }
    }
}

/// Iterator of [`IsoImage::walk`]: yields `Result<WalkEntry>`; stops after the first error.
pub struct Walk<'a> {
    image: &'a IsoImage,
    stack: Vec<(String, std::vec::IntoIter<Entry>)>,
    start: Option<(Entry, String)>,
    visited: HashSet<u32>,
    total: u64,
    failed: bool,
}

impl Iterator for Walk<'_> {
    type Item = Result<WalkEntry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some((dir, path)) = self.start.take() {
            match self.image.read_dir(&dir) {
                Ok(children) => self.stack.push((path, children.into_iter())),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        loop {
            let depth = self.stack.len();
            let (dir_path, iter) = self.stack.last_mut()?;
            let Some(entry) = iter.next() else {
                self.stack.pop();
                continue;
            };
            let path = join_path(dir_path, &entry.name);
            let result = self.visit(&entry, &path, depth);
            if let Err(e) = result {
                self.failed = true;
                return Some(Err(e));
            }
            return Some(Ok(WalkEntry { path, depth, entry }));
        }
    }
}

impl Walk<'_> {
    fn visit(&mut self, entry: &Entry, path: &str, depth: usize) -> Result<(), ReadError> {
        self.total += 1;
        if self.total > MAX_TOTAL_ENTRIES {
            return Err(ReadError::limit(
                entry.record_offset,
                "MAX_TOTAL_ENTRIES",
                self.total,
                MAX_TOTAL_ENTRIES,
            ));
        }
        if !entry.is_dir() {
            return Ok(());
        }
        let Some(extent) = entry.extents.first() else {
            return Ok(());
        };
        if extent.length == 0 {
            return Ok(());
        }
        if !self.visited.insert(extent.lba) {
            return Err(ReadError::DirectoryLoop {
                lba: extent.lba,
                offset: entry.record_offset,
                path: path.to_string(),
            });
        }
        if depth >= MAX_DIRECTORY_DEPTH {
            return Err(ReadError::limit(
                entry.record_offset,
                "MAX_DIRECTORY_DEPTH",
                depth as u64 + 1,
                MAX_DIRECTORY_DEPTH as u64,
            ));
        }
        let children = self.image.read_dir(entry)?;
        self.stack.push((path.to_string(), children.into_iter()));
        Ok(())
    }
}

/// Opens `data` under every name space it has and scans each completely with a small byte
/// budget. Never panics; returns how many name spaces opened cleanly. The fuzz target and
/// the corpus replay test call this.
pub fn exercise(data: &[u8]) -> usize {
    let source: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    let _ = is_iso(&*source);
    let mut ok = 0;
    for prefer in [
        NameSpace::Auto,
        NameSpace::Udf,
        NameSpace::Joliet,
        NameSpace::Iso9660,
    ] {
        let Ok(image) = IsoImage::open(source.clone(), OpenOptions { prefer }) else {
            continue;
        };
        let _ = image.lookup_follow("/a/b/../c");
        if image.scan(16 * 1024 * 1024).is_ok() {
            ok += 1;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_lose_version_and_lone_dot() {
        assert_eq!(plain_iso_name("README.TXT;1"), "README.TXT");
        assert_eq!(plain_iso_name("README.;1"), "README");
        assert_eq!(plain_iso_name("DIR"), "DIR");
        assert_eq!(plain_iso_name("A;B"), "A;B");
    }

    #[test]
    fn mode_string_like_ls() {
        let mut e = Entry {
            name: "x".into(),
            iso_name: "X;1".into(),
            kind: EntryKind::File,
            size: 0,
            mode: S_IFREG | 0o4755,
            uid: 0,
            gid: 0,
            nlink: 1,
            inode: None,
            mtime: None,
            atime: None,
            ctime: None,
            created: None,
            extents: vec![],
            zisofs: None,
            hidden: false,
            rock_ridge: true,
            relocated: false,
            record_offset: 0,
            pieces: None,
        };
        assert_eq!(e.mode_string(), "-rwsr-xr-x");
        e.kind = EntryKind::Directory;
        e.mode = S_IFDIR | 0o1777;
        assert_eq!(e.mode_string(), "drwxrwxrwt");
    }

    #[test]
    fn record_shorter_than_34_bytes_is_an_error() {
        let mut rec = [0u8; 40];
        rec[0] = 20;
        let err = parse_record(&rec, 0x9000).err().unwrap();
        assert!(err.to_string().contains("directory record length"), "{err}");
    }

    #[test]
    fn name_length_past_record_is_an_error() {
        let mut rec = [0u8; 40];
        rec[0] = 34;
        rec[32] = 10;
        let err = parse_record(&rec, 0).err().unwrap();
        assert!(err.to_string().contains("file identifier length"), "{err}");
    }

    #[test]
    fn tiny_source_is_not_iso() {
        let err = IsoImage::open(Arc::new(vec![0u8; 1000]), OpenOptions::default()).unwrap_err();
        assert!(matches!(err, ReadError::NotIso { .. }));
        assert!(!is_iso(&vec![0u8; 40000]));
    }

    #[test]
    fn exercise_survives_garbage() {
        let mut data = vec![0xA5u8; 40 * 2048];
        data[16 * 2048..16 * 2048 + 6].copy_from_slice(b"\x01CD001");
        assert_eq!(exercise(&data), 0);
    }
}

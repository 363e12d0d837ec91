//! Writing VMDK images: monolithicSparse (also as a delta disk over a VMDK parent),
//! monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat (streamOptimized lives in
//! `stream.rs`), and the descriptor-only wrapper of an ISO (`wrap_flat`).

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmedia_io::{AtomicFile, OverwritePolicy};

use super::descriptor::{self, Access, Descriptor, ExtentKind, ExtentLine};
use super::header::{self, SparseHeader, GTES_PER_GT, SECTOR};
use crate::error::{DiskError, Result};
use crate::image::{
    BlockKind, CreateOptions, DiskImage, Format, ImageWriter, Measurement, OpenOptions,
    ReferencePolicy,
};

/// Grain size written (sectors): 64 KiB, what VMware and qemu use.
pub const GRAIN_SECTORS: u64 = 128;
/// Sectors reserved for an embedded descriptor (VMware reserves 20).
pub const DESCRIPTOR_SECTORS: u64 = 20;
/// Size of each extent of the twoGbMaxExtent subformats (sectors): 2 GiB minus 1 MiB, as
/// VMware's classic split disks, so every piece stays under 2 GiB.
pub const SPLIT_EXTENT_SECTORS: u64 = 4_192_256;
/// Granularity fed to flat writers: large writes, holes for zero runs.
const FLAT_FEED: u64 = 1 << 20;

/// VMDK subformats vmedia writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subformat {
    MonolithicSparse,
    MonolithicFlat,
    TwoGbMaxExtentSparse,
    TwoGbMaxExtentFlat,
    StreamOptimized,
}

impl Subformat {
    pub fn from_name(name: &str) -> Option<Subformat> {
        Some(match name {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbMaxExtentFlat,
            "streamOptimized" => Subformat::StreamOptimized,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }
}

/// Descriptor fields decided from the options (qemu's vmdk options plus vmedia's).
#[derive(Clone)]
pub(crate) struct Plan {
    pub subformat: Subformat,
    pub sectors: u64,
    pub adapter_type: String,
    pub hw_version: String,
    pub tools_version: String,
    pub zeroed_grain: bool,
    pub parent: Option<(String, u32)>,
    /// The opened parent chain of a delta: partially written grains are filled from it.
    pub parent_image: Option<Arc<dyn DiskImage>>,
}

/// Adapter types accepted in ddb.adapterType (qemu's list plus pvscsi for ESXi).
pub const ADAPTER_TYPES: [&str; 5] = ["ide", "buslogic", "lsilogic", "legacyESX", "pvscsi"];

impl Plan {
    pub(crate) fn from_options(path: &Path, opts: &CreateOptions) -> Result<Plan> {
        opts.reject_unknown_options(&[
            "subformat",
            "adapter_type",
            "hwversion",
            "compat6",
            "toolsversion",
            "zeroed_grain",
            "size",
            "backing_file",
            "backing_fmt",
        ])?;
        let get = |k: &str| opts.options.get(k).map(String::as_str);
        let subformat = match get("subformat") {
            None => Subformat::MonolithicSparse,
            Some(name) => Subformat::from_name(name).ok_or_else(|| DiskError::InvalidOption {
                key: "subformat".into(),
                value: name.into(),
                reason: "vmdk accepts monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized".into(),
            })?,
        };
        if opts.compress && subformat != Subformat::StreamOptimized {
            return Err(DiskError::InvalidOption {
                key: "compress".into(),
                value: "on".into(),
                reason: "VMDK compression needs subformat=streamOptimized".into(),
            });
        }
        let adapter_type = get("adapter_type").unwrap_or("ide").to_string();
        if !ADAPTER_TYPES.contains(&adapter_type.as_str()) {
            return Err(DiskError::InvalidOption {
                key: "adapter_type".into(),
                value: adapter_type,
                reason: format!("one of {}", ADAPTER_TYPES.join(", ")),
            });
        }
        let compat6 = match get("compat6") {
            Some(v) => crate::image::parse_on_off("compat6", v)?,
            None => false,
        };
        let hw_version = match (get("hwversion"), compat6) {
            (Some(v), true) if v != "6" => {
                return Err(DiskError::InvalidOption {
                    key: "hwversion".into(),
                    value: v.into(),
                    reason: "compat6 means hwversion 6".into(),
                })
            }
            (Some(v), _) => {
                v.parse::<u32>().map_err(|_| DiskError::InvalidOption {
                    key: "hwversion".into(),
                    value: v.into(),
                    reason: "a number".into(),
                })?;
                v.to_string()
            }
            (None, true) => "6".into(),
            (None, false) => "4".into(),
        };
        let tools_version = get("toolsversion").unwrap_or("2147483647").to_string();
        tools_version
            .parse::<u32>()
            .map_err(|_| DiskError::InvalidOption {
                key: "toolsversion".into(),
                value: tools_version.clone(),
                reason: "a number".into(),
            })?;
        let zeroed_grain = match get("zeroed_grain") {
            Some(v) => crate::image::parse_on_off("zeroed_grain", v)?,
            None => false,
        };
        let sectors = opts.virtual_size.div_ceil(SECTOR);
        if sectors > header::MAX_CAPACITY_SECTORS {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: opts.virtual_size.to_string(),
                reason: "VMDK disks are limited to 64 TiB".into(),
            });
        }
        let mut parent_image: Option<Arc<dyn DiskImage>> = None;
        let parent = match &opts.backing {
            None => None,
            Some((given_name, format)) => {
                if subformat != Subformat::MonolithicSparse
                    && subformat != Subformat::TwoGbMaxExtentSparse
                {
                    return Err(DiskError::NotSupportedFor {
                        path: path.to_path_buf(),
                        format: "vmdk",
                        operation: "a parent disk with a flat or stream subformat",
                    });
                }
                let name = &match format {
                    None | Some(Format::Vmdk) => given_name.clone(),
                    Some(Format::Raw) => wrap_raw_parent(path, given_name, opts.overwrite)?,
                    Some(other) => {
                        return Err(DiskError::InvalidOption {
                            key: "backing_fmt".into(),
                            value: other.qemu_name().into(),
                            reason: "a VMDK delta disk can only name a VMDK parent: VMware links deltas by the parent's CID, qemu-img create refuses any other parent (\"backing_file must be a vmdk image\") and qemu refuses reads through one; make the overlay a qcow2 (-f qcow2), or convert the parent to VMDK first (a raw parent, -F raw, is wrapped in a flat VMDK descriptor)".into(),
                        })
                    }
                };
                let parent_path = crate::reference::resolve_reference(path, name);
                // The user named the parent: follow its chain wherever it is.
                let parent_opts = OpenOptions {
                    references: ReferencePolicy::Any,
                    ..OpenOptions::default()
                };
                let file = std::fs::File::open(&parent_path).map_err(|source| DiskError::Open {
                    path: parent_path.clone(),
                    action: "open the parent",
                    source,
                })?;
                let parent = super::VmdkImage::open(&parent_path, Arc::new(file), &parent_opts)?;
                let cid = parent
                    .descriptor()
                    .cid()
                    .map_err(|e| e.into_disk(&parent_path, "vmdk", 0))?
                    .unwrap_or(0);
                if parent.virtual_size() != sectors * SECTOR {
                    return Err(DiskError::InvalidOption {
                        key: "size".into(),
                        value: opts.virtual_size.to_string(),
                        reason: format!(
                            "a delta disk must have its parent's size ({} bytes)",
                            parent.virtual_size()
                        ),
                    });
                }
                parent_image = Some(Arc::new(parent));
                Some((name.clone(), cid))
            }
        };
        Ok(Plan {
            subformat,
            sectors,
            adapter_type,
            hw_version,
            tools_version,
            zeroed_grain,
            parent,
            parent_image,
        })
    }

    /// The descriptor for this plan with the given extent lines.
    pub(crate) fn descriptor(&self, extents: Vec<ExtentLine>) -> Descriptor {
        let mut d = Descriptor::default();
        d.set("version", "1");
        d.set("encoding", "UTF-8");
        let cid = descriptor::random_cid();
        d.set("CID", format!("{cid:08x}"));
        match &self.parent {
            Some((name, parent_cid)) => {
                d.set("parentCID", format!("{parent_cid:08x}"));
                d.set("createType", self.subformat.name());
                d.set("parentFileNameHint", name.clone());
            }
            None => {
                d.set("parentCID", "ffffffff");
                d.set("createType", self.subformat.name());
            }
        }
        d.extents = extents;
        let (cylinders, heads, sectors) = geometry(self.sectors, &self.adapter_type);
        d.set("ddb.virtualHWVersion", self.hw_version.clone());
        d.set("ddb.geometry.cylinders", cylinders.to_string());
        d.set("ddb.geometry.heads", heads.to_string());
        d.set("ddb.geometry.sectors", sectors.to_string());
        d.set("ddb.adapterType", self.adapter_type.clone());
        d.set("ddb.toolsVersion", self.tools_version.clone());
        let id = uuid::Uuid::new_v4();
        d.set("ddb.uuid", descriptor::ddb_uuid_text(&id));
        // longContentID ends with the CID, as VMware derives it.
        let long = format!("{:024x}{cid:08x}", id.as_u128() >> 32 & ((1u128 << 96) - 1));
        d.set("ddb.longContentID", long);
        d
    }
}

/// The BIOS geometry VMware records: 16 heads for IDE, 255 for SCSI, 63 sectors per track.
pub fn geometry(total_sectors: u64, adapter_type: &str) -> (u64, u64, u64) {
    let heads = if adapter_type == "ide" { 16 } else { 255 };
    let sectors = 63;
    let cylinders = (total_sectors / (heads * sectors))
        .clamp(1, if adapter_type == "ide" { 16383 } else { 65535 });
    (cylinders, heads, sectors)
}

fn create_file(path: &Path, policy: OverwritePolicy) -> Result<AtomicFile> {
    AtomicFile::create(path, policy).map_err(|source| DiskError::Open {
        path: path.to_path_buf(),
        action: "create",
        source,
    })
}

/// A raw parent of a new delta disk: VMware and qemu follow only VMDK parents, so the raw
/// file is wrapped in a descriptor-only monolithicFlat VMDK next to the delta
/// (`delta-parent.vmdk`, nothing copied), which the delta then names. Returns the wrapper's
/// name. The raw file is found beneath the delta's folder, as every reference.
fn wrap_raw_parent(path: &Path, name: &str, overwrite: OverwritePolicy) -> Result<String> {
    let raw = crate::reference::resolve_reference(path, name);
    let (wrapper, wrapper_name) = sibling(path, "-parent");
    wrap_flat(
        &raw,
        &wrapper,
        &WrapOptions {
            overwrite,
            ..WrapOptions::default()
        },
    )?;
    Ok(wrapper_name)
}

/// "dir/disk.vmdk" + "-flat" -> "dir/disk-flat.vmdk".
fn sibling(path: &Path, suffix: &str) -> (PathBuf, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let name = format!("{stem}{suffix}.vmdk");
    (path.with_file_name(&name), name)
}

pub fn create(path: &Path, opts: &CreateOptions) -> Result<Box<dyn ImageWriter>> {
    let plan = Plan::from_options(path, opts)?;
    let size = plan.sectors * SECTOR;
    match plan.subformat {
        Subformat::StreamOptimized => {
            super::stream::StreamWriter::create(path, opts.overwrite, plan)
        }
        Subformat::MonolithicSparse => {
            let file = create_file(path, opts.overwrite)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let descriptor = plan.descriptor(vec![ExtentLine {
                access: Access::ReadWrite,
                sectors: plan.sectors,
                kind: ExtentKind::Sparse,
                file_name: Some(name),
                offset: 0,
            }]);
            let mut extent = SparseFileWriter::new(
                file,
                plan.sectors,
                Some(descriptor.emit()),
                plan.zeroed_grain,
            )?;
            extent.parent = plan.parent_image.clone().map(|p| (p, 0));
            extent.flush = opts.flush;
            Ok(Box::new(MultiWriter {
                flush: opts.flush,
                descriptor_file: None,
                extents: vec![(0, size, Piece::Sparse(extent))],
                virtual_size: size,
                cluster: GRAIN_SECTORS * SECTOR,
                path: path.to_path_buf(),
            }))
        }
        Subformat::TwoGbMaxExtentSparse
        | Subformat::TwoGbMaxExtentFlat
        | Subformat::MonolithicFlat => {
            let flat = plan.subformat != Subformat::TwoGbMaxExtentSparse;
            let piece_sectors = if plan.subformat == Subformat::MonolithicFlat {
                plan.sectors.max(1)
            } else {
                SPLIT_EXTENT_SECTORS
            };
            let mut extents = Vec::new();
            let mut lines = Vec::new();
            let mut start = 0u64;
            let mut index = 1u32;
            while start < plan.sectors || (plan.sectors == 0 && index == 1) {
                let sectors = piece_sectors.min(plan.sectors - start);
                let suffix = match plan.subformat {
                    Subformat::MonolithicFlat => "-flat".to_string(),
                    Subformat::TwoGbMaxExtentFlat => format!("-f{index:03}"),
                    _ => format!("-s{index:03}"),
                };
                let (piece_path, piece_name) = sibling(path, &suffix);
                let file = create_file(&piece_path, opts.overwrite)?;
                let piece = if flat {
                    file.file()
                        .set_len(sectors * SECTOR)
                        .map_err(|e| DiskError::io(file.temp_path(), sectors * SECTOR, e))?;
                    Piece::Flat(file)
                } else {
                    let mut extent = SparseFileWriter::new(file, sectors, None, plan.zeroed_grain)?;
                    extent.parent = plan.parent_image.clone().map(|p| (p, start * SECTOR));
                    extent.flush = opts.flush;
                    Piece::Sparse(extent)
                };
                lines.push(ExtentLine {
                    access: Access::ReadWrite,
                    sectors,
                    kind: if flat {
                        ExtentKind::Flat
                    } else {
                        ExtentKind::Sparse
                    },
                    file_name: Some(piece_name),
                    offset: 0,
                });
                extents.push((start * SECTOR, sectors * SECTOR, piece));
                start += sectors;
                index += 1;
                if sectors == 0 {
                    break;
                }
            }
            let descriptor = plan.descriptor(lines);
            let file = create_file(path, opts.overwrite)?;
            let cluster = if flat {
                FLAT_FEED
            } else {
                GRAIN_SECTORS * SECTOR
            };
            Ok(Box::new(MultiWriter {
                flush: opts.flush,
                descriptor_file: Some((file, descriptor.emit())),
                extents,
                virtual_size: size,
                cluster,
                path: path.to_path_buf(),
            }))
        }
    }
}

enum Piece {
    Flat(AtomicFile),
    Sparse(SparseFileWriter),
}

/// A descriptor plus extent pieces laid end to end.
struct MultiWriter {
    /// Flush before the renames (`CreateOptions::flush`; off for qemu-img's "unsafe" cache).
    flush: bool,
    descriptor_file: Option<(AtomicFile, String)>,
    /// (guest start, length, piece)
    extents: Vec<(u64, u64, Piece)>,
    virtual_size: u64,
    cluster: u64,
    path: PathBuf,
}

impl MultiWriter {
    fn each_piece(
        &mut self,
        guest_offset: u64,
        len: u64,
        mut f: impl FnMut(&mut Piece, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        crate::shared::check_range(&self.path, guest_offset, len, self.virtual_size)?;
        let mut done = 0u64;
        while done < len {
            let at = guest_offset + done;
            let Some((start, plen, piece)) = self
                .extents
                .iter_mut()
                .find(|(s, l, _)| at >= *s && at < s + l)
            else {
                break;
            };
            let n = (*start + *plen - at).min(len - done);
            f(piece, at - *start, done, n)?;
            done += n;
        }
        Ok(())
    }
}

impl ImageWriter for MultiWriter {
    fn cluster_size(&self) -> u64 {
        self.cluster
    }

    fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        self.each_piece(guest_offset, data.len() as u64, |piece, rel, done, n| {
            let chunk = &data[done as usize..(done + n) as usize];
            match piece {
                Piece::Flat(file) => file
                    .file()
                    .write_all_at(chunk, rel)
                    .map_err(|e| DiskError::io(file.temp_path(), rel, e)),
                Piece::Sparse(s) => s.write(rel, chunk),
            }
        })
    }

    fn write_zeroes(&mut self, guest_offset: u64, len: u64) -> Result<()> {
        self.each_piece(guest_offset, len, |piece, rel, _, n| match piece {
            Piece::Flat(_) => Ok(()),
            Piece::Sparse(s) => s.zero(rel, n),
        })
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let this = *self;
        for (_, _, piece) in this.extents {
            match piece {
                Piece::Flat(file) => {
                    let p = file.final_path().to_path_buf();
                    file.commit_with(crate::image::durability(this.flush))
                        .map_err(|e| DiskError::io(p, 0, e))?
                }
                Piece::Sparse(s) => s.finish()?,
            }
        }
        // The descriptor goes last: until it exists, nothing looks like a whole image.
        if let Some((file, text)) = this.descriptor_file {
            file.file()
                .write_all_at(text.as_bytes(), 0)
                .map_err(|e| DiskError::io(file.temp_path(), 0, e))?;
            let p = file.final_path().to_path_buf();
            file.commit_with(crate::image::durability(this.flush))
                .map_err(|e| DiskError::io(p, 0, e))?;
        }
        Ok(())
    }
}

/// One hosted sparse extent file being written: header, optional embedded descriptor,
/// redundant and primary grain directories with all grain tables preallocated (as VMware and
/// qemu lay them out), then grains appended in guest order.
pub(crate) struct SparseFileWriter {
    file: AtomicFile,
    header: SparseHeader,
    descriptor: Option<String>,
    gd_entries: u64,
    /// Byte offsets of the first grain table of each copy.
    rgt_at: u64,
    gt_at: u64,
    next_grain: u64,
    tables: BTreeMap<u64, Vec<u32>>,
    capacity_bytes: u64,
    /// A delta's parent and this extent's first guest byte: a grain that is only partly
    /// written is first filled with the parent's data (copy on write).
    pub(crate) parent: Option<(Arc<dyn DiskImage>, u64)>,
    /// Flush before the rename; set by the creator from `CreateOptions::flush`.
    pub(crate) flush: bool,
}

impl SparseFileWriter {
    pub(crate) fn new(
        file: AtomicFile,
        sectors: u64,
        descriptor: Option<String>,
        zeroed_grain: bool,
    ) -> Result<SparseFileWriter> {
        let gd_entries = sectors
            .div_ceil(GRAIN_SECTORS)
            .div_ceil(u64::from(GTES_PER_GT))
            .max(1);
        let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
        let gt_sectors = u64::from(GTES_PER_GT) * 4 / SECTOR;
        let (desc_offset, desc_size) = match &descriptor {
            Some(text) => {
                let needed = (text.len() as u64).div_ceil(SECTOR).max(DESCRIPTOR_SECTORS);
                (1, needed)
            }
            None => (0, 0),
        };
        let rgd = 1 + desc_size;
        let rgt = rgd + gd_sectors;
        let gd = rgt + gd_entries * gt_sectors;
        let gt = gd + gd_sectors;
        let overhead = (gt + gd_entries * gt_sectors).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
        let mut flags = header::FLAG_VALID_NEWLINE | header::FLAG_REDUNDANT_GT;
        if zeroed_grain {
            flags |= header::FLAG_ZEROED_GTE;
        }
        let header = SparseHeader {
            version: 1,
            flags,
            capacity: sectors,
            grain_size: GRAIN_SECTORS,
            descriptor_offset: desc_offset,
            descriptor_size: desc_size,
            num_gtes_per_gt: GTES_PER_GT,
            rgd_offset: rgd,
            gd_offset: gd,
            overhead,
            unclean_shutdown: false,
            compress_algorithm: 0,
        };
        Ok(SparseFileWriter {
            flush: true,
            file,
            header,
            descriptor,
            gd_entries,
            rgt_at: rgt * SECTOR,
            gt_at: gt * SECTOR,
            next_grain: overhead * SECTOR,
            tables: BTreeMap::new(),
            capacity_bytes: sectors * SECTOR,
            parent: None,
        })
    }

    fn entry(&mut self, grain: u64) -> &mut u32 {
        let per = u64::from(GTES_PER_GT);
        let table = self
            .tables
            .entry(grain / per)
            .or_insert_with(|| vec![0u32; GTES_PER_GT as usize]);
        &mut table[(grain % per) as usize]
    }

    fn write(&mut self, rel: u64, data: &[u8]) -> Result<()> {
        let grain_bytes = GRAIN_SECTORS * SECTOR;
        let mut done = 0usize;
        while done < data.len() {
            let at = rel + done as u64;
            let grain = at / grain_bytes;
            let in_grain = at % grain_bytes;
            let n = ((grain_bytes - in_grain) as usize).min(data.len() - done);
            let next = self.next_grain;
            if *self.entry(grain) <= 1 {
                let sector =
                    u32::try_from(next / SECTOR).map_err(|_| DiskError::InvalidOption {
                        key: "size".into(),
                        value: next.to_string(),
                        reason: "a sparse extent cannot address more than 2 TiB of grains".into(),
                    })?;
                *self.entry(grain) = sector;
                self.next_grain += grain_bytes;
                if n < grain_bytes as usize {
                    self.fill_from_parent(grain, next)?;
                }
            }
            let host = u64::from(*self.entry(grain)) * SECTOR + in_grain;
            self.file
                .file()
                .write_all_at(&data[done..done + n], host)
                .map_err(|e| DiskError::io(self.file.temp_path(), host, e))?;
            done += n;
        }
        Ok(())
    }

    /// Copies the parent's content of `grain` into the newly allocated grain at `host`.
    fn fill_from_parent(&mut self, grain: u64, host: u64) -> Result<()> {
        let Some((parent, base)) = &self.parent else {
            return Ok(());
        };
        let grain_bytes = GRAIN_SECTORS * SECTOR;
        let guest = base + grain * grain_bytes;
        let end = (guest + grain_bytes)
            .min(parent.virtual_size())
            .min(base + self.capacity_bytes);
        if guest >= end {
            return Ok(());
        }
        let mut buf = vec![0u8; (end - guest) as usize];
        parent.read_at(&mut buf, guest)?;
        if buf.iter().any(|b| *b != 0) {
            self.file
                .file()
                .write_all_at(&buf, host)
                .map_err(|e| DiskError::io(self.file.temp_path(), host, e))?;
        }
        Ok(())
    }

    fn zero(&mut self, rel: u64, len: u64) -> Result<()> {
        // Only meaningful over a parent: without one, an unallocated grain already reads as
        // zeros. Over a parent, a zeroed GTE hides the parent's grain (whole grains only; a
        // partial grain, or any grain without the zeroed-GTE flag, is written as data).
        if self.parent.is_none() {
            return Ok(());
        }
        if self.header.flags & header::FLAG_ZEROED_GTE == 0 {
            let zeros = vec![0u8; (GRAIN_SECTORS * SECTOR) as usize];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(zeros.len() as u64);
                self.write(rel + done, &zeros[..n as usize])?;
                done += n;
            }
            return Ok(());
        }
        let grain_bytes = GRAIN_SECTORS * SECTOR;
        let mut at = rel;
        while at < rel + len {
            let grain = at / grain_bytes;
            let end = ((grain + 1) * grain_bytes).min(rel + len);
            if at.is_multiple_of(grain_bytes)
                && (end - at == grain_bytes || end == self.capacity_bytes)
            {
                let e = self.entry(grain);
                if *e == 0 {
                    *e = 1;
                }
            } else {
                let zeros = vec![0u8; (end - at) as usize];
                self.write(at, &zeros)?;
            }
            at = end;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let f = self.file.file();
        let io = |at: u64, e: std::io::Error| DiskError::io(self.file.temp_path(), at, e);
        let gt_bytes = u64::from(GTES_PER_GT) * 4;
        for (base, gd_offset) in [
            (self.rgt_at, self.header.rgd_offset * SECTOR),
            (self.gt_at, self.header.gd_offset * SECTOR),
        ] {
            let gd: Vec<u8> = (0..self.gd_entries)
                .map(|i| ((base + i * gt_bytes) / SECTOR) as u32)
                .flat_map(u32::to_le_bytes)
                .collect();
            f.write_all_at(&gd, gd_offset)
                .map_err(|e| io(gd_offset, e))?;
            for (index, table) in &self.tables {
                let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
                let at = base + index * gt_bytes;
                f.write_all_at(&bytes, at).map_err(|e| io(at, e))?;
            }
        }
        if let Some(text) = &self.descriptor {
            f.write_all_at(text.as_bytes(), SECTOR)
                .map_err(|e| io(SECTOR, e))?;
        }
        f.write_all_at(&self.header.emit(), 0)
            .map_err(|e| io(0, e))?;
        f.set_len(self.next_grain)
            .map_err(|e| io(self.next_grain, e))?;
        let p = self.file.final_path().to_path_buf();
        self.file
            .commit_with(crate::image::durability(self.flush))
            .map_err(|e| DiskError::io(p, 0, e))
    }
}

/// Options of `wrap_flat`.
#[derive(Debug, Clone)]
pub struct WrapOptions {
    /// ddb.adapterType (ide by default: an ISO is usually attached as an IDE disk).
    pub adapter_type: String,
    /// RDONLY instead of RW. VMware honours RDONLY, but qemu skips every extent that is not
    /// RW (it then sees a disk without extents), so RW is the default; attach the disk
    /// read-only or with snapshot=on to keep the ISO unchanged.
    pub read_only: bool,
    pub overwrite: OverwritePolicy,
}

impl Default for WrapOptions {
    fn default() -> Self {
        WrapOptions {
            adapter_type: "ide".into(),
            read_only: false,
            overwrite: OverwritePolicy::Refuse,
        }
    }
}

/// What `wrap_flat` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    pub descriptor: String,
    /// The name written in the extent line.
    pub extent_name: String,
    pub sectors: u64,
    /// Bytes of the last sector past the end of the file (read as zeros).
    pub padding: u64,
}

/// The answer of `vmedia disk wrap-iso --json`: what `wrap_flat` wrote.
///
/// Serializes as the CLI's JSON document (keys in alphabetical order, as the document has
/// always been printed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WrapReport {
    /// "RW" or "RDONLY".
    pub access: &'static str,
    #[serde(rename = "adapter-type")]
    pub adapter_type: String,
    /// The extent name written in the descriptor.
    pub extent: String,
    /// The descriptor written.
    pub filename: String,
    pub padding: u64,
    pub sectors: u64,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
}

impl WrapReport {
    /// The report for `wrapped`, written at `out` with `opts`.
    pub fn new(out: &Path, wrapped: &Wrapped, opts: &WrapOptions) -> WrapReport {
        WrapReport {
            access: if opts.read_only { "RDONLY" } else { "RW" },
            adapter_type: opts.adapter_type.clone(),
            extent: wrapped.extent_name.clone(),
            filename: out.display().to_string(),
            padding: wrapped.padding,
            sectors: wrapped.sectors,
            virtual_size: wrapped.sectors.saturating_mul(SECTOR),
        }
    }
}

/// Writes a descriptor-only VMDK at `out` whose single FLAT extent is `target` (nothing is
/// copied). The extent name is relative when `target` sits in `out`'s folder, else absolute
/// (readers then need permission to follow references outside the folder).
pub fn wrap_flat(target: &Path, out: &Path, opts: &WrapOptions) -> Result<Wrapped> {
    let meta = std::fs::metadata(target).map_err(|source| DiskError::Open {
        path: target.to_path_buf(),
        action: "read",
        source,
    })?;
    if !meta.is_file() {
        return Err(DiskError::Open {
            path: target.to_path_buf(),
            action: "wrap",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    if !ADAPTER_TYPES.contains(&opts.adapter_type.as_str()) {
        return Err(DiskError::InvalidOption {
            key: "adapter_type".into(),
            value: opts.adapter_type.clone(),
            reason: format!("one of {}", ADAPTER_TYPES.join(", ")),
        });
    }
    let size = meta.len();
    let sectors = size.div_ceil(SECTOR);
    if sectors == 0 {
        return Err(DiskError::InvalidOption {
            key: "file".into(),
            value: target.display().to_string(),
            reason: "the file is empty".into(),
        });
    }
    let target_abs = std::fs::canonicalize(target).map_err(|source| DiskError::Open {
        path: target.to_path_buf(),
        action: "resolve",
        source,
    })?;
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out_dir_abs = std::fs::canonicalize(&out_dir).map_err(|source| DiskError::Open {
        path: out_dir.clone(),
        action: "resolve",
        source,
    })?;
    let extent_name = if target_abs.parent() == Some(out_dir_abs.as_path()) {
        target_abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        target_abs.display().to_string()
    };
    if extent_name.contains('"') || extent_name.contains('\n') {
        return Err(DiskError::InvalidOption {
            key: "file".into(),
            value: extent_name,
            reason: "a VMDK extent name cannot contain quotes or newlines".into(),
        });
    }
    let plan = Plan {
        subformat: Subformat::MonolithicFlat,
        sectors,
        adapter_type: opts.adapter_type.clone(),
        hw_version: "4".into(),
        tools_version: "2147483647".into(),
        zeroed_grain: false,
        parent: None,
        parent_image: None,
    };
    let access = if opts.read_only {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let descriptor = plan
        .descriptor(vec![ExtentLine {
            access,
            sectors,
            kind: ExtentKind::Flat,
            file_name: Some(extent_name.clone()),
            offset: 0,
        }])
        .emit();
    let file = create_file(out, opts.overwrite)?;
    file.file()
        .write_all_at(descriptor.as_bytes(), 0)
        .map_err(|e| DiskError::io(file.temp_path(), 0, e))?;
    file.commit().map_err(|e| DiskError::io(out, 0, e))?;
    Ok(Wrapped {
        descriptor,
        extent_name,
        sectors,
        padding: sectors * SECTOR - size,
    })
}

/// qemu-img measure for VMDK.
pub(crate) fn measure(opts: &CreateOptions, source: Option<&dyn DiskImage>) -> Result<Measurement> {
    let mut probe_opts = opts.clone();
    probe_opts.backing = None;
    let plan = Plan::from_options(Path::new("measure.vmdk"), &probe_opts)?;
    let size = plan.sectors * SECTOR;
    let grain = GRAIN_SECTORS * SECTOR;
    let grains = plan.sectors.div_ceil(GRAIN_SECTORS);
    let gd_entries = grains.div_ceil(u64::from(GTES_PER_GT)).max(1);
    let metadata =
        (1 + DESCRIPTOR_SECTORS + 2 * ((gd_entries * 4).div_ceil(SECTOR) + gd_entries * 4))
            .div_ceil(GRAIN_SECTORS)
            * GRAIN_SECTORS
            * SECTOR;
    let used = match source {
        Some(img) => {
            let mut n = 0u64;
            let mut at = 0u64;
            while at < img.virtual_size().min(size) {
                let end = (at + grain).min(img.virtual_size());
                let s = img.block_status(at, end - at)?;
                if s.kind == BlockKind::Data
                    || s.len < end - at
                    || (s.kind == BlockKind::Unallocated && img.backing().is_some())
                {
                    n += 1;
                }
                at = end;
            }
            n
        }
        None => 0,
    };
    Ok(match plan.subformat {
        Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat => Measurement {
            required: size,
            fully_allocated: size,
            bitmaps: 0,
        },
        _ => Measurement {
            required: metadata + used * grain,
            fully_allocated: metadata + grains * grain,
            bitmaps: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scsi_geometry_uses_255_heads() {
        assert_eq!(geometry(20480, "lsilogic"), (1, 255, 63));
        assert_eq!(geometry(2097152, "ide"), (2080, 16, 63));
    }

    #[test]
    fn unknown_subformat_is_refused() {
        let mut o = CreateOptions::new(Format::Vmdk, 1 << 20);
        o.options.insert("subformat".into(), "weird".into());
        assert!(Plan::from_options(Path::new("x.vmdk"), &o).is_err());
    }

    #[test]
    fn compression_needs_stream_optimized() {
        let mut o = CreateOptions::new(Format::Vmdk, 1 << 20);
        o.compress = true;
        assert!(Plan::from_options(Path::new("x.vmdk"), &o).is_err());
        o.options
            .insert("subformat".into(), "streamOptimized".into());
        assert!(Plan::from_options(Path::new("x.vmdk"), &o).is_ok());
    }
}

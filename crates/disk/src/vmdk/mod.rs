//! VMDK: descriptor, sparse extents (hosted sparse, streamOptimized), flat and ZERO extents, delta chains.
//!
//! An image is a descriptor (a text file, or text embedded in a sparse extent) listing extents
//! that are laid end to end in the guest's address space. Extent files are opened only through
//! the options' resolver (`reference::open_reference_source`); a delta disk's parent (parentCID +
//! parentFileNameHint) likewise.

pub mod descriptor;
pub mod edit;
pub mod header;
pub mod sesparse;
pub mod sparse;
mod stream;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use vmedia_io::{Progress, ReadAt};

use crate::error::{DiskError, Result};
use crate::image::{
    BackingRef, BlockKind, BlockStatus, CheckReport, CreateOptions, DiskImage, Format, HostOffset,
    ImageInfo, Measurement, OpenOptions,
};
pub use crate::parse_error::ParseError as Error;
use crate::shared::{self, check_range, read_exact, source_size};
use descriptor::{Access, Descriptor, ExtentKind};
use header::{SparseHeader, SECTOR};
use sparse::{Grain, SparseExtent};

pub use stream::{deflate_grain, StreamCompressor};
pub use writer::{create, wrap_flat, WrapOptions, WrapReport, Wrapped};

const FORMAT: &str = "vmdk";

/// A sparse header ("KDMV"), a COWD or seSparse header (recognised so that opening them names
/// the unsupported format instead of reading them as raw), or a text descriptor.
pub fn probe(head: &[u8], _tail: &[u8]) -> bool {
    head.starts_with(b"KDMV")
        || head.starts_with(b"COWD")
        || header::has_sesparse_magic(head, SESPARSE_VERSION)
        || Descriptor::looks_like(head)
}

/// The version field of seSparse headers written by ESXi (2.1).
const SESPARSE_VERSION: u64 = 0x0000_0002_0000_0001;

enum ExtentData {
    Flat {
        path: PathBuf,
        source: Arc<dyn ReadAt>,
        offset: u64,
        size: u64,
    },
    Zero,
    Sparse(Box<SparseExtent>),
    SeSparse(Box<sesparse::SeSparseExtent>),
}

struct Extent {
    /// First guest byte.
    start: u64,
    /// Length in bytes.
    len: u64,
    access: Access,
    data: ExtentData,
}

/// One open VMDK layer.
pub struct VmdkImage {
    path: PathBuf,
    descriptor: Descriptor,
    extents: Vec<Extent>,
    virtual_size: u64,
    parent: Option<Box<dyn DiskImage>>,
    parent_ref: Option<BackingRef>,
}

pub fn open(
    path: &Path,
    source: Arc<dyn ReadAt>,
    opts: &OpenOptions,
) -> Result<Box<dyn DiskImage>> {
    Ok(Box::new(VmdkImage::open(path, source, opts)?))
}

fn read_sparse_header(path: &Path, source: &dyn ReadAt) -> Result<SparseHeader> {
    let mut bytes = [0u8; 512];
    read_exact(source, path, &mut bytes, 0)?;
    SparseHeader::parse(&bytes).map_err(|e| e.into_disk(path, FORMAT, 0))
}

/// Where a sparse extent's embedded descriptor lies: (byte offset, reserved bytes), checked
/// against the file; `None` for a bare extent without one.
pub(crate) fn embedded_descriptor_range(
    path: &Path,
    header: &SparseHeader,
    file_size: u64,
) -> Result<Option<(u64, u64)>> {
    if header.descriptor_offset == 0 || header.descriptor_size == 0 {
        return Ok(None);
    }
    let at = header.descriptor_offset.checked_mul(SECTOR);
    let len = header.descriptor_size.checked_mul(SECTOR);
    match (at, len) {
        (Some(at), Some(len)) if at.checked_add(len).is_some_and(|end| end <= file_size) => {
            Ok(Some((at, len)))
        }
        _ => Err(DiskError::corrupt(
            path,
            FORMAT,
            28,
            "descriptorOffset",
            format!(
                "embedded descriptor of {} sectors at sector {} lies past the end of the file",
                header.descriptor_size, header.descriptor_offset
            ),
        )),
    }
}

/// The bytes of a text descriptor file: size-limited, and refused unless they look like one.
pub(crate) fn read_text_descriptor(
    path: &Path,
    source: &dyn ReadAt,
    file_size: u64,
) -> Result<Vec<u8>> {
    if file_size > descriptor::MAX_DESCRIPTOR_BYTES as u64 {
        return Err(DiskError::Limit {
            path: path.to_path_buf(),
            offset: 0,
            field: "descriptor file size",
            value: file_size,
            limit: descriptor::MAX_DESCRIPTOR_BYTES as u64,
            why: "a text descriptor is a few KiB; larger files are not descriptors",
        });
    }
    let mut text = vec![0u8; file_size as usize];
    read_exact(source, path, &mut text, 0)?;
    if !Descriptor::looks_like(&text) {
        return Err(DiskError::corrupt(
            path,
            FORMAT,
            0,
            "descriptor",
            "neither a sparse header (KDMV) nor a text descriptor",
        ));
    }
    Ok(text)
}

impl VmdkImage {
    pub fn open(path: &Path, source: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<VmdkImage> {
        let file_size = source_size(source.as_ref(), path)?;
        let mut head = [0u8; 4];
        if file_size >= 4 {
            read_exact(source.as_ref(), path, &mut head, 0)?;
        }
        if file_size >= 16 {
            let mut first = [0u8; 16];
            read_exact(source.as_ref(), path, &mut first, 0)?;
            if header::has_sesparse_magic(&first, SESPARSE_VERSION) {
                return Err(DiskError::Unsupported { path: path.to_path_buf(), format: FORMAT,
                    feature: "a bare ESXi seSparse extent without its descriptor: name the format (-f sesparse, optionally --size N), or open the snapshot's descriptor .vmdk".into() });
            }
        }
        let (descriptor, own_sparse) = if &head == b"KDMV" || &head == b"COWD" {
            let header = read_sparse_header(path, source.as_ref())?;
            header
                .validate()
                .map_err(|e| e.into_disk(path, FORMAT, 0))?;
            let extent = SparseExtent::open(path, source.clone(), header.clone())?;
            let descriptor = if let Some((at, len)) =
                embedded_descriptor_range(path, &header, file_size)?
            {
                let mut text = vec![0u8; len as usize];
                read_exact(source.as_ref(), path, &mut text, at)?;
                Descriptor::parse(&text).map_err(|e| e.into_disk(path, FORMAT, at))?
            } else {
                // A bare extent (e.g. a -s001.vmdk opened directly): one SPARSE extent.
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Descriptor::parse(format!("# Disk DescriptorFile\nversion=1\nCID=ffffffff\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\nRW {} SPARSE \"{name}\"\n", header.capacity).as_bytes())
                    .map_err(|e| e.into_disk(path, FORMAT, 0))?
            };
            (descriptor, Some(extent))
        } else {
            let text = read_text_descriptor(path, source.as_ref(), file_size)?;
            (
                Descriptor::parse(&text).map_err(|e| e.into_disk(path, FORMAT, 0))?,
                None,
            )
        };
        let mut image = VmdkImage {
            path: path.to_path_buf(),
            descriptor,
            extents: Vec::new(),
            virtual_size: 0,
            parent: None,
            parent_ref: None,
        };
        image.open_extents(own_sparse, opts)?;
        image.open_parent(opts)?;
        Ok(image)
    }

    fn open_extents(
        &mut self,
        mut own_sparse: Option<SparseExtent>,
        opts: &OpenOptions,
    ) -> Result<()> {
        let mut start = 0u64;
        let lines = self.descriptor.extents.clone();
        if own_sparse.is_some() && lines.len() != 1 {
            return Err(DiskError::Unsupported {
                path: self.path.clone(),
                format: FORMAT,
                feature: format!("an embedded descriptor with {} extents", lines.len()),
            });
        }
        for line in &lines {
            let len = line.sectors.checked_mul(SECTOR).ok_or_else(|| {
                DiskError::corrupt(
                    &self.path,
                    FORMAT,
                    0,
                    "extent size",
                    format!("{} sectors overflow", line.sectors),
                )
            })?;
            let data = match line.kind {
                ExtentKind::Zero => ExtentData::Zero,
                ExtentKind::Flat | ExtentKind::Vmfs | ExtentKind::VmfsRaw | ExtentKind::VmfsRdm => {
                    let name = line.file_name.clone().unwrap_or_default();
                    let (path, source) = self.open_extent_file(&name, opts)?;
                    let offset = line.offset.checked_mul(SECTOR).ok_or_else(|| {
                        DiskError::corrupt(
                            &self.path,
                            FORMAT,
                            0,
                            "extent offset",
                            "overflows 64 bits",
                        )
                    })?;
                    let size = source_size(source.as_ref(), &path)?;
                    ExtentData::Flat {
                        path,
                        source,
                        offset,
                        size,
                    }
                }
                ExtentKind::Sparse => {
                    let extent = match own_sparse.take() {
                        Some(e) => e,
                        None => {
                            let name = line.file_name.clone().unwrap_or_default();
                            let (path, source) = self.open_extent_file(&name, opts)?;
                            let header = read_sparse_header(&path, source.as_ref())?;
                            SparseExtent::open(&path, source, header)?
                        }
                    };
                    if extent.capacity_bytes() < len {
                        return Err(DiskError::corrupt(
                            &extent.path,
                            FORMAT,
                            12,
                            "capacity",
                            format!(
                                "extent holds {} bytes but the descriptor gives it {len}",
                                extent.capacity_bytes()
                            ),
                        ));
                    }
                    ExtentData::Sparse(Box::new(extent))
                }
                ExtentKind::SeSparse => {
                    let name = line.file_name.clone().unwrap_or_default();
                    let (path, source) = self.open_extent_file(&name, opts)?;
                    let extent = sesparse::SeSparseExtent::open(&path, source)?;
                    if extent.capacity_bytes() < len {
                        return Err(DiskError::corrupt(
                            &path,
                            FORMAT,
                            16,
                            "capacity",
                            format!(
                                "extent holds {} bytes but the descriptor gives it {len}",
                                extent.capacity_bytes()
                            ),
                        ));
                    }
                    ExtentData::SeSparse(Box::new(extent))
                }
                ExtentKind::VmfsSparse => {
                    return Err(DiskError::Unsupported { path: self.path.clone(), format: FORMAT,
                        feature: format!("{} extents (ESXi snapshot formats); consolidate the snapshot on the host or export with ovftool", line.kind.as_str()) });
                }
            };
            let end = start.checked_add(len).ok_or_else(|| {
                DiskError::corrupt(
                    &self.path,
                    FORMAT,
                    0,
                    "extent size",
                    "extent sizes overflow",
                )
            })?;
            if end > header::MAX_CAPACITY_SECTORS * SECTOR {
                return Err(DiskError::Limit {
                    path: self.path.clone(),
                    offset: 0,
                    field: "total extent size",
                    value: end,
                    limit: header::MAX_CAPACITY_SECTORS * SECTOR,
                    why: "VMDK disks are limited to 64 TiB",
                });
            }
            self.extents.push(Extent {
                start,
                len,
                access: line.access,
                data,
            });
            start = end;
        }
        self.virtual_size = start;
        Ok(())
    }

    fn open_extent_file(
        &self,
        name: &str,
        opts: &OpenOptions,
    ) -> Result<(PathBuf, Arc<dyn ReadAt>)> {
        let (extent, _) = crate::reference::open_reference_source(&self.path, name, opts)?;
        Ok((extent.path, extent.source))
    }

    fn open_parent(&mut self, opts: &OpenOptions) -> Result<()> {
        let parent_cid = self
            .descriptor
            .parent_cid()
            .map_err(|e| e.into_disk(&self.path, FORMAT, 0))?;
        if parent_cid.is_none() {
            return Ok(());
        }
        let Some(hint) = self.descriptor.parent_file_name_hint().map(str::to_string) else {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                0,
                "parentFileNameHint",
                "the delta disk has a parentCID but names no parent",
            ));
        };
        let resolved = crate::reference::resolve_reference(&self.path, &hint);
        self.parent_ref = Some(BackingRef {
            name: hint.clone(),
            format: Some(Format::Vmdk),
            resolved,
        });
        if opts.skip_backing {
            return Ok(());
        }
        // VMware and qemu follow only VMDK parents; a delta whose parent was converted to
        // another format (qcow2, VHD, raw) is still read here, the parent's format probed, so
        // its data can be recovered with convert. Without the factory's opener (a VMDK opened
        // directly), the parent must be a VMDK.
        let parent = match opts.opener {
            Some(_) => crate::reference::open_reference(&self.path, &hint, None, opts)?,
            None => crate::reference::open_reference_with(&self.path, &hint, opts, open)?,
        };
        if let Some(r) = self.parent_ref.as_mut() {
            r.format = Some(parent.format());
        }
        self.parent = Some(parent);
        Ok(())
    }

    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// A bare seSparse extent file (no descriptor) as a disk of `size` bytes (default: the
    /// header's capacity), what `-f sesparse [--size N]` opens. No parent: unallocated grains
    /// read as zeros.
    pub fn open_bare_sesparse(
        path: &Path,
        source: Arc<dyn ReadAt>,
        size: Option<u64>,
    ) -> Result<VmdkImage> {
        let extent = sesparse::SeSparseExtent::open(path, source)?;
        let len = size.unwrap_or(extent.capacity_bytes());
        if len > extent.capacity_bytes() || !len.is_multiple_of(SECTOR) {
            return Err(DiskError::InvalidOption {
                key: "size".into(),
                value: len.to_string(),
                reason: format!(
                    "a multiple of 512 up to the extent's capacity ({} bytes)",
                    extent.capacity_bytes()
                ),
            });
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let descriptor = Descriptor::parse(
            format!("# Disk DescriptorFile\nversion=1\nCID=ffffffff\nparentCID=ffffffff\ncreateType=\"seSparse\"\nRW {} SESPARSE \"{name}\"\n", len / SECTOR).as_bytes(),
        )
        .map_err(|e| e.into_disk(path, FORMAT, 0))?;
        Ok(VmdkImage {
            path: path.to_path_buf(),
            descriptor,
            extents: vec![Extent {
                start: 0,
                len,
                access: Access::ReadWrite,
                data: ExtentData::SeSparse(Box::new(extent)),
            }],
            virtual_size: len,
            parent: None,
            parent_ref: None,
        })
    }

    fn extent_at(&self, guest_offset: u64) -> Option<&Extent> {
        let i = self
            .extents
            .partition_point(|e| e.start + e.len <= guest_offset);
        self.extents.get(i)
    }

    fn read_parent(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        if self.parent_ref.is_some() && self.parent.is_none() {
            return Err(DiskError::Reference {
                path: self.path.clone(),
                reference: self
                    .parent_ref
                    .as_ref()
                    .map(|r| r.resolved.clone())
                    .unwrap_or_default(),
                reason: "not opened, and the read needs the parent's data",
            });
        }
        shared::read_backing(self.parent.as_deref(), buf, guest_offset)
    }

    fn read_extent(&self, e: &Extent, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        let rel = guest_offset - e.start;
        if e.access == Access::NoAccess {
            return Err(DiskError::corrupt(
                &self.path,
                FORMAT,
                0,
                "extent access",
                format!("the extent at guest {:#x} is NOACCESS", e.start),
            ));
        }
        match &e.data {
            ExtentData::Zero => {
                buf.fill(0);
                Ok(())
            }
            ExtentData::Flat {
                path,
                source,
                offset,
                size,
            } => {
                let at = offset + rel;
                // Past the end of a flat file reads as zeros (an ISO wrapped with a partial
                // last sector; qemu's file driver does the same).
                let inside = size.saturating_sub(at).min(buf.len() as u64) as usize;
                if inside > 0 {
                    read_exact(source.as_ref(), path, &mut buf[..inside], at)?;
                }
                buf[inside..].fill(0);
                Ok(())
            }
            ExtentData::SeSparse(se) => se.read(buf, rel, &mut |chunk, at| {
                self.read_parent(chunk, e.start + at)
            }),
            ExtentData::Sparse(sp) => {
                let grain_bytes = sp.grain_bytes();
                let mut done = 0usize;
                while done < buf.len() {
                    let at = rel + done as u64;
                    let in_grain = at % grain_bytes;
                    let n = ((grain_bytes - in_grain) as usize).min(buf.len() - done);
                    let grain = sp.lookup(at)?;
                    let chunk = &mut buf[done..done + n];
                    match grain {
                        Grain::Unallocated => {
                            self.read_parent(chunk, guest_offset + done as u64)?
                        }
                        other => sp.read_grain(other, in_grain, chunk, (at - in_grain) / SECTOR)?,
                    }
                    done += n;
                }
                Ok(())
            }
        }
    }
}

impl DiskImage for VmdkImage {
    fn format(&self) -> Format {
        Format::Vmdk
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }
    fn cluster_size(&self) -> Option<u64> {
        self.extents.iter().find_map(|e| match &e.data {
            ExtentData::Sparse(s) => Some(s.grain_bytes()),
            ExtentData::SeSparse(s) => Some(s.grain_bytes()),
            _ => None,
        })
    }

    fn read_at(&self, buf: &mut [u8], guest_offset: u64) -> Result<()> {
        check_range(
            &self.path,
            guest_offset,
            buf.len() as u64,
            self.virtual_size,
        )?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = guest_offset + done as u64;
            let Some(e) = self.extent_at(at) else { break };
            let n = ((e.start + e.len - at) as usize).min(buf.len() - done);
            self.read_extent(e, &mut buf[done..done + n], at)?;
            done += n;
        }
        Ok(())
    }

    fn block_status(&self, guest_offset: u64, len: u64) -> Result<BlockStatus> {
        let len = len
            .min(self.virtual_size.saturating_sub(guest_offset))
            .max(1);
        let Some(e) = self.extent_at(guest_offset) else {
            return Ok(BlockStatus {
                len,
                kind: BlockKind::Zero,
                host_offset: None,
            });
        };
        let rel = guest_offset - e.start;
        let len = len.min(e.len - rel);
        Ok(match &e.data {
            ExtentData::Zero => BlockStatus {
                len,
                kind: BlockKind::Zero,
                host_offset: None,
            },
            ExtentData::Flat { offset, .. } => BlockStatus {
                len,
                kind: BlockKind::Data,
                host_offset: Some(HostOffset(offset + rel)),
            },
            ExtentData::SeSparse(se) => se.block_status(rel, len)?,
            ExtentData::Sparse(sp) => {
                let grain_bytes = sp.grain_bytes();
                let first = sp.lookup(rel)?;
                let in_grain = rel % grain_bytes;
                let mut run = (grain_bytes - in_grain).min(len);
                let mut next_rel = rel - in_grain + grain_bytes;
                // Bounded by `len`: the caller asks for as much as it wants merged.
                while run < len {
                    let g = sp.lookup(next_rel)?;
                    let same = match (first, g) {
                        (Grain::Unallocated, Grain::Unallocated)
                        | (Grain::Zero, Grain::Zero)
                        | (Grain::Compressed(_), Grain::Compressed(_)) => true,
                        (Grain::Data(a), Grain::Data(b)) => b == a + (next_rel - (rel - in_grain)),
                        _ => false,
                    };
                    if !same {
                        break;
                    }
                    run = (run + grain_bytes).min(len);
                    next_rel += grain_bytes;
                }
                match first {
                    Grain::Unallocated => BlockStatus {
                        len: run,
                        kind: BlockKind::Unallocated,
                        host_offset: None,
                    },
                    Grain::Zero => BlockStatus {
                        len: run,
                        kind: BlockKind::Zero,
                        host_offset: None,
                    },
                    Grain::Compressed(_) => BlockStatus {
                        len: run,
                        kind: BlockKind::Data,
                        host_offset: None,
                    },
                    Grain::Data(at) => BlockStatus {
                        len: run,
                        kind: BlockKind::Data,
                        host_offset: Some(HostOffset(at + in_grain)),
                    },
                }
            }
        })
    }

    fn info(&self) -> Result<ImageInfo> {
        let mut info = ImageInfo::basic(&self.path, Format::Vmdk, self.virtual_size);
        info.cluster_size = self.cluster_size();
        if let Some(r) = &self.parent_ref {
            info.backing_filename = Some(r.name.clone());
            info.full_backing_filename = Some(r.resolved.display().to_string());
            // A delta disk's parent is always a VMDK; qemu reports it so.
            info.backing_filename_format = Some(FORMAT.to_string());
        }
        let extents: Vec<serde_json::Value> = self
            .extents
            .iter()
            .map(|e| {
                let mut v = json!({ "virtual-size": e.len });
                match &e.data {
                    ExtentData::Flat { path, .. } => {
                        v["filename"] = json!(path.display().to_string());
                        v["format"] = json!("FLAT");
                    }
                    ExtentData::Zero => v["format"] = json!("ZERO"),
                    ExtentData::SeSparse(s) => {
                        v["filename"] = json!(s.path.display().to_string());
                        v["cluster-size"] = json!(s.grain_bytes());
                        v["format"] = json!("SESPARSE");
                    }
                    ExtentData::Sparse(s) => {
                        v["filename"] = json!(s.path.display().to_string());
                        v["cluster-size"] = json!(s.grain_bytes());
                        // qemu names the descriptor's extent type, and an empty one for an
                        // extent whose descriptor is embedded (it parses no extent line).
                        v["format"] = json!(if s.path == self.path { "" } else { "SPARSE" });
                        if s.header.is_compressed() {
                            v["compressed"] = json!(true);
                        }
                    }
                }
                v
            })
            .collect();
        let cid = self.descriptor.cid().ok().flatten().unwrap_or(0);
        let parent_cid = self
            .descriptor
            .get("parentCID")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .unwrap_or(u32::MAX);
        info.format_specific = Some(json!({
            "type": "vmdk",
            "data": {
                "cid": cid,
                "parent-cid": parent_cid,
                "create-type": self.descriptor.create_type().unwrap_or(""),
                "extents": extents,
            }
        }));
        Ok(info)
    }

    fn check(&self, progress: &dyn Progress) -> Result<CheckReport> {
        let _span =
            tracing::info_span!("check", path = %self.path.display(), format = FORMAT).entered();
        let mut report = CheckReport {
            filename: self.path.display().to_string(),
            format: FORMAT.into(),
            ..CheckReport::default()
        };
        let mut total = 0u64;
        let mut allocated = 0u64;
        let mut compressed = 0u64;
        let mut end = 0u64;
        for e in &self.extents {
            match &e.data {
                ExtentData::Sparse(sp) => {
                    for note in sp.notes() {
                        report.corruptions += 1;
                        report
                            .messages
                            .push(format!("ERROR: {}: {note}", sp.path.display()));
                    }
                    progress.set_total(sp.gd_len() as u64);
                    total += e.len.div_ceil(sp.grain_bytes());
                    let limit = sp.file_size();
                    end = end.max(limit);
                    for (i, table) in sp.all_tables() {
                        progress.advance(1);
                        let table = match table {
                            Ok(Some(t)) => t,
                            Ok(None) => continue,
                            Err(err) => {
                                report.corruptions += 1;
                                report.messages.push(format!("ERROR: {err}"));
                                continue;
                            }
                        };
                        for (j, &gte) in table.iter().enumerate() {
                            if gte == 0
                                || (gte == 1 && sp.header.flags & header::FLAG_ZEROED_GTE != 0)
                            {
                                continue;
                            }
                            allocated += 1;
                            let at = u64::from(gte) * SECTOR;
                            let need = if sp.header.is_compressed() {
                                header::GRAIN_MARKER_HEADER as u64
                            } else {
                                sp.grain_bytes()
                            };
                            if at + need > limit {
                                report.corruptions += 1;
                                let sector = (i as u64 * u64::from(sp.header.num_gtes_per_gt)
                                    + j as u64)
                                    * sp.header.grain_size;
                                report.messages.push(format!("ERROR: cluster offset for sector {sector} points after image end"));
                            } else if sp.header.is_compressed() {
                                compressed += 1;
                            }
                        }
                    }
                }
                ExtentData::Flat {
                    size, offset, path, ..
                } => {
                    if offset + e.len > *size + SECTOR {
                        report.corruptions += 1;
                        report.messages.push(format!("ERROR: flat extent {} is shorter than the {} bytes the descriptor gives it", path.display(), e.len));
                    }
                }
                ExtentData::Zero => {}
                ExtentData::SeSparse(se) => {
                    let (n, errors) = se.count_allocated();
                    for err in errors {
                        report.corruptions += 1;
                        report
                            .messages
                            .push(format!("ERROR: {}: {err}", se.path.display()));
                    }
                    total += e.len.div_ceil(se.grain_bytes());
                    allocated += n;
                    end = end.max(se.file_size());
                }
            }
        }
        if let (Some(parent), Ok(Some(want))) = (&self.parent, self.descriptor.parent_cid()) {
            if let Some(vm) = parent
                .info()
                .ok()
                .and_then(|i| i.format_specific)
                .and_then(|f| f["data"]["cid"].as_u64())
            {
                if vm != u64::from(want) {
                    report.check_errors += 1;
                    report.messages.push(format!("ERROR: parentCID {want:08x} does not match the parent's CID {vm:08x} (the parent changed after this delta was made)"));
                }
            }
        }
        if total > 0 {
            report.total_clusters = Some(total);
            report.allocated_clusters = Some(allocated);
            report.compressed_clusters = Some(compressed).filter(|c| *c > 0);
            report.image_end_offset = Some(end);
        }
        Ok(report)
    }

    fn backing_ref(&self) -> Option<BackingRef> {
        self.parent_ref.clone()
    }
    fn backing(&self) -> Option<&dyn DiskImage> {
        self.parent.as_deref()
    }
}

/// qemu-img measure for VMDK subformats.
pub fn measure(opts: &CreateOptions, source: Option<&dyn DiskImage>) -> Result<Measurement> {
    writer::measure(opts, source)
}

//! commit, rebase and resize on existing images (qemu-img semantics), for every format that
//! has backing/parent chains, through one small in-place editing trait.
//!
//! Each format provides an [`InPlaceEditor`] ([`open_editor`] dispatches): raw files, qcow2
//! (`qcow2::modify::Qcow2Editor`), VMDK hosted sparse and flat extents (`vmdk::edit`), VHD and
//! VHDX (`vhd::edit`, `vhdx::edit`). Reading always goes through the read-only
//! [`DiskImage`] of the chain; editors only write.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmedia_io::Progress;

pub use crate::editor::{InPlaceEditor, ParentRef};
use crate::error::{DiskError, Result};
use crate::factory;
use crate::image::{BlockKind, DiskImage, Format, OpenOptions};
use crate::qcow2::modify::Qcow2Editor;
use crate::vhd::edit::VhdEditor;
use crate::vhdx::edit::VhdxEditor;
use crate::vmdk::edit::VmdkEditor;

/// Opens `path` (of the given, already known format) for in-place writing.
pub fn open_editor(path: &Path, format: Format) -> Result<Box<dyn InPlaceEditor>> {
    match format {
        Format::Raw => Ok(Box::new(RawEditor::open(path)?)),
        Format::Qcow2 => Ok(Box::new(Qcow2Editor::open(path)?)),
        Format::Vmdk => Ok(Box::new(VmdkEditor::open(path)?)),
        Format::Vhd => Ok(Box::new(VhdEditor::open(path)?)),
        Format::Vhdx => Ok(Box::new(VhdxEditor::open(path)?)),
    }
}

/// Cluster size of raw commit targets: large enough for few syscalls, small enough that a
/// partially allocated overlay does not rewrite much unchanged data.
const RAW_CLUSTER: u64 = 64 << 10;

/// A raw file written in place; it has no metadata and no parent.
struct RawEditor {
    file: std::fs::File,
    path: PathBuf,
}

impl RawEditor {
    fn open(path: &Path) -> Result<RawEditor> {
        let file = crate::image::open_for_writing(path)?;
        Ok(RawEditor {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl InPlaceEditor for RawEditor {
    fn cluster_size(&self) -> u64 {
        RAW_CLUSTER
    }

    fn write_cluster(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, guest_offset)
            .map_err(|e| DiskError::io(&self.path, guest_offset, e))
    }

    fn zero_cluster(&mut self, guest_offset: u64) -> Result<()> {
        let len = self
            .file
            .metadata()
            .map_err(|e| DiskError::io(&self.path, guest_offset, e))?
            .len()
            .saturating_sub(guest_offset)
            .min(RAW_CLUSTER);
        self.write_cluster(guest_offset, &vec![0u8; len as usize])
    }

    fn set_parent(&mut self, parent: Option<&ParentRef>) -> Result<()> {
        match parent {
            None => Ok(()),
            Some(_) => Err(DiskError::NotSupportedFor {
                path: self.path.clone(),
                format: "raw",
                operation: "recording a backing file",
            }),
        }
    }

    fn empty(&mut self) -> Result<()> {
        Err(DiskError::NotSupportedFor {
            path: self.path.clone(),
            format: "raw",
            operation: "emptying (a raw file has no backing file to read through)",
        })
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| DiskError::io(&self.path, 0, e))
    }
}

/// What the first `layers` layers of the chain from `top` hold at `offset`: Data, Zero, or
/// Unallocated when none of them allocates it.
fn allocated_above(
    top: &dyn DiskImage,
    layers: usize,
    offset: u64,
    len: u64,
) -> Result<(u64, BlockKind)> {
    let mut img = top;
    let mut len = len;
    for _ in 0..layers {
        if offset >= img.virtual_size() {
            return Ok((len, BlockKind::Unallocated));
        }
        let s = img.block_status(offset, len.min(img.virtual_size() - offset))?;
        if s.kind != BlockKind::Unallocated {
            return Ok((s.len, s.kind));
        }
        len = s.len;
        match img.backing() {
            Some(b) => img = b,
            None => break,
        }
    }
    Ok((len, BlockKind::Unallocated))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Formats whose overlays record an identity of their parent (VMDK parentCID, VHD parent
/// UUID and time stamp, VHDX parent DataWriteGuid) that a commit into the parent changes.
fn records_parent_identity(format: Format) -> bool {
    matches!(format, Format::Vmdk | Format::Vhd | Format::Vhdx)
}

/// qemu-img commit: writes what `top` (and the layers between it and `base`) allocate into
/// `base` (default: the direct backing file); empties `top` afterwards when `empty` is set and
/// no explicit base was named (as qemu, `-b` implies `-d`).
///
/// The layer whose parent is the base is re-linked to the changed base when its format records
/// the parent's identity (VMDK: its parentCID takes the base's new CID), so qemu and VMware
/// still read through it. With `-b` the images between top and base become invalid as
/// qemu-img documents (their own view changed), while the top keeps reading correctly.
pub fn commit(
    top_path: &Path,
    base: Option<&Path>,
    empty: bool,
    opts: &OpenOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let _span = tracing::info_span!("commit", top = %top_path.display(), empty).entered();
    let top = factory::open(top_path, opts)?;
    let top_format = top.format();
    let mut layers = 1usize;
    let mut base_img = top.backing().ok_or_else(|| DiskError::NotSupportedFor {
        path: top_path.into(),
        format: top_format.qemu_name(),
        operation: "commit without a backing file",
    })?;
    if let Some(wanted) = base {
        while !same_file(base_img.path(), wanted) {
            layers += 1;
            base_img = base_img.backing().ok_or_else(|| DiskError::Reference {
                path: top_path.into(),
                reference: wanted.into(),
                reason: "not in the image's backing chain",
            })?;
        }
    }
    let base_path = base_img.path().to_path_buf();
    let base_format = base_img.format();
    // The layer that names the base as its parent: the top, or the intermediate just above.
    let mut child: &dyn DiskImage = top.as_ref();
    for _ in 1..layers {
        match child.backing() {
            Some(b) => child = b,
            None => break,
        }
    }
    let child_path = child.path().to_path_buf();
    let child_format = child.format();
    let child_parent = child.backing_ref();
    let size = top.virtual_size();
    let base_size = base_img.virtual_size();
    // Grow the base first when the overlay is larger (qemu does the same).
    if size > base_size {
        resize(
            &base_path,
            size,
            &OpenOptions {
                skip_backing: true,
                format: Some(base_format),
                ..opts.clone()
            },
        )?;
    }
    let mut target = open_editor(&base_path, base_format)?;
    copy_allocated(top.as_ref(), layers, target.as_mut(), progress)?;
    drop(top);
    target.finish()?;
    let empty_top = empty && base.is_none();
    // Re-link the base's child to the changed base (VMDK: parentCID takes the base's new
    // CID; qemu refuses reads through a delta whose parentCID is stale). With -b that child
    // is an intermediate: its own view is invalid afterwards, as qemu-img documents, but the
    // top reads correctly through it.
    let relink = records_parent_identity(child_format) && child_parent.is_some();
    if relink && !(empty_top && same_file(&child_path, top_path)) {
        let mut editor = open_editor(&child_path, child_format)?;
        editor.keep_content_id();
        relink_to(
            editor.as_mut(),
            child_parent.as_ref(),
            &base_path,
            base_format,
        )?;
        editor.finish()?;
    }
    if empty_top {
        let mut editor = open_editor(top_path, top_format)?;
        // The top's guest view is unchanged: its data now also lives in the parent.
        editor.keep_content_id();
        if relink {
            relink_to(
                editor.as_mut(),
                child_parent.as_ref(),
                &base_path,
                base_format,
            )?;
        }
        editor.empty()?;
        editor.finish()?;
    }
    Ok(())
}

/// Records `parent` again (same name) so the format re-reads the parent's identity.
fn relink_to(
    editor: &mut dyn InPlaceEditor,
    parent: Option<&crate::image::BackingRef>,
    base_path: &Path,
    base_format: Format,
) -> Result<()> {
    match parent {
        Some(p) => editor.set_parent(Some(&ParentRef {
            name: p.name.clone(),
            resolved: base_path.to_path_buf(),
            format: Some(base_format),
        })),
        None => Ok(()),
    }
}

/// Copies into `target` every range that the first `layers` layers of `top` allocate, as whole
/// target clusters read through the full chain (so partially covered clusters keep the data
/// below them); ranges those layers mark as zero become zero clusters.
fn copy_allocated(
    top: &dyn DiskImage,
    layers: usize,
    target: &mut dyn InPlaceEditor,
    progress: &dyn Progress,
) -> Result<()> {
    let size = top.virtual_size();
    let cluster = target.cluster_size().max(1);
    progress.set_total(size);
    let mut offset = 0u64;
    let mut buf = Vec::new();
    while offset < size {
        let (len, kind) = allocated_above(top, layers, offset, size - offset)?;
        let len = len.max(1);
        let whole_zero_clusters =
            kind == BlockKind::Zero && offset.is_multiple_of(cluster) && len >= cluster;
        if whole_zero_clusters {
            let n = len / cluster * cluster;
            let mut pos = offset;
            while pos < offset + n {
                target.zero_cluster(pos)?;
                pos += cluster;
            }
            progress.advance(n);
            offset += n;
        } else if kind != BlockKind::Unallocated {
            let start = offset / cluster * cluster;
            let end = ((offset + len).div_ceil(cluster) * cluster).min(size);
            let mut pos = start;
            while pos < end {
                let n = cluster.min(end - pos) as usize;
                buf.resize(n, 0);
                top.read_at(&mut buf, pos)?;
                target.write_cluster(pos, &buf)?;
                pos += n as u64;
            }
            progress.advance(end - offset);
            offset = end;
        } else {
            progress.advance(len);
            offset += len;
        }
    }
    Ok(())
}

/// qemu-img rebase. Safe mode copies into the overlay every cluster where the guest would see
/// a difference between the old and the new backing file; unsafe mode only rewrites the
/// reference (and the parent identity the format records).
pub fn rebase(
    top_path: &Path,
    new_backing: Option<&str>,
    new_format: Option<Format>,
    safe: bool,
    opts: &OpenOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let _span = tracing::info_span!(
        "rebase",
        top = %top_path.display(),
        backing = new_backing.unwrap_or(""),
        safe
    )
    .entered();
    if !safe {
        let probe = factory::open(
            top_path,
            &OpenOptions {
                skip_backing: true,
                ..opts.clone()
            },
        )?;
        let top_format = probe.format();
        drop(probe);
        let parent = new_backing.map(|name| ParentRef {
            name: name.to_string(),
            resolved: crate::reference::resolve_reference(top_path, name),
            format: new_format,
        });
        let mut editor = open_editor(top_path, top_format)?;
        editor.set_parent(parent.as_ref())?;
        return editor.finish();
    }
    let top = factory::open(top_path, opts)?;
    let top_format = top.format();
    let (new_img, parent) = match new_backing {
        Some(name) => {
            let child = OpenOptions {
                format: new_format,
                ..opts.clone()
            };
            let img = factory::open_reference(top_path, name, new_format, &child)?;
            let resolved = img.path().to_path_buf();
            let parent = ParentRef {
                name: name.to_string(),
                resolved,
                format: Some(new_format.unwrap_or(img.format())),
            };
            (Some(img), Some(parent))
        }
        None => (None, None),
    };
    let mut editor = open_editor(top_path, top_format)?;
    // Recorded first so that a parent reference the format cannot store (a VMDK descriptor
    // without room for the name) fails before any data is written.
    editor.set_parent(parent.as_ref())?;
    editor.keep_content_id();
    copy_differences(top.as_ref(), new_img.as_deref(), editor.as_mut(), progress)?;
    drop(top);
    editor.finish()
}

/// Bytes compared at once in safe rebase: large reads for few system calls, bounded memory
/// (two buffers of this size).
const REBASE_SPAN: u64 = 4 << 20;

/// When `new_backing` is the same file as a layer of `top`'s current chain (rebase onto an
/// ancestor, the common case): the first layer below the top and how many layers lie between
/// the top and that ancestor. Only what those layers allocate can differ.
fn layers_above_ancestor<'a>(
    top: &'a dyn DiskImage,
    new_backing: Option<&dyn DiskImage>,
) -> Option<(&'a dyn DiskImage, usize)> {
    let new_path = new_backing?.path();
    let first = top.backing()?;
    let mut img = first;
    let mut layers = 0usize;
    loop {
        if same_file(img.path(), new_path) {
            return Some((first, layers));
        }
        layers += 1;
        img = img.backing()?;
    }
}

/// Safe rebase's copy: for each editor cluster that the top does not fully allocate, builds
/// what the guest would see over the new backing file and writes the current view where the
/// two differ. Writing the current view into the top never changes what the guest sees.
fn copy_differences(
    top: &dyn DiskImage,
    new_backing: Option<&dyn DiskImage>,
    editor: &mut dyn InPlaceEditor,
    progress: &dyn Progress,
) -> Result<()> {
    let size = top.virtual_size();
    let cluster = editor.cluster_size().max(1);
    let span_len = REBASE_SPAN.max(cluster) / cluster * cluster;
    let between = layers_above_ancestor(top, new_backing);
    progress.set_total(size);
    let mut old = Vec::new();
    let mut new = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let want = span_len.min(size - offset);
        let s = top.block_status(offset, want)?;
        let len = s.len.clamp(1, want);
        // Whole clusters from `offset` that share this status.
        let whole = (offset + len) / cluster * cluster;
        let whole = if offset + len == size { size } else { whole };
        if whole <= offset {
            // The status changes inside this cluster: compare it piece by piece.
            let n = cluster.min(size - offset);
            copy_cluster_if_different(top, new_backing, editor, offset, n)?;
            progress.advance(n);
            offset += n;
            continue;
        }
        let run = whole - offset;
        if s.kind != BlockKind::Unallocated {
            progress.advance(run);
            offset = whole;
            continue;
        }
        let mut compare_len = run;
        if let Some((first, layers)) = between {
            let (l, kind) = allocated_above(first, layers, offset, run)?;
            if kind == BlockKind::Unallocated {
                // Read from the new backing file itself today: nothing can differ.
                let skip = if offset + l >= size {
                    size - offset
                } else {
                    l / cluster * cluster
                };
                if skip > 0 {
                    progress.advance(skip.min(run));
                    offset += skip.min(run);
                    continue;
                }
            } else {
                let upto = if offset + l >= size {
                    size - offset
                } else {
                    l.div_ceil(cluster) * cluster
                };
                compare_len = upto.clamp(cluster.min(run), run);
            }
        }
        let n = compare_len as usize;
        old.resize(n, 0);
        new.resize(n, 0);
        let (old_read, new_read) = rayon::join(
            || top.read_at(&mut old, offset),
            || read_or_zeros(new_backing, &mut new, offset),
        );
        old_read?;
        new_read?;
        let mut at = 0usize;
        while at < n {
            let m = (cluster as usize).min(n - at);
            if old[at..at + m] != new[at..at + m] {
                editor.write_cluster(offset + at as u64, &old[at..at + m])?;
            }
            at += m;
        }
        progress.advance(compare_len);
        offset += compare_len;
    }
    Ok(())
}

/// Guest bytes of `image` at `offset`, zeros past its end or without an image.
fn read_or_zeros(image: Option<&dyn DiskImage>, buf: &mut [u8], offset: u64) -> Result<()> {
    buf.fill(0);
    if let Some(img) = image {
        let vs = img.virtual_size();
        if offset < vs {
            let m = (vs - offset).min(buf.len() as u64) as usize;
            img.read_at(&mut buf[..m], offset)?;
        }
    }
    Ok(())
}

/// One cluster whose allocation in the top changes inside it: the new view takes the top's
/// allocated pieces and the new backing file elsewhere.
fn copy_cluster_if_different(
    top: &dyn DiskImage,
    new_backing: Option<&dyn DiskImage>,
    editor: &mut dyn InPlaceEditor,
    offset: u64,
    n: u64,
) -> Result<()> {
    let mut through: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < n {
        let s = top.block_status(offset + pos, n - pos)?;
        let len = s.len.clamp(1, n - pos);
        if s.kind == BlockKind::Unallocated {
            through.push((pos, len));
        }
        pos += len;
    }
    if through.is_empty() {
        return Ok(());
    }
    let mut old = vec![0u8; n as usize];
    top.read_at(&mut old, offset)?;
    let mut new = old.clone();
    for &(rel, len) in &through {
        let piece = &mut new[rel as usize..(rel + len) as usize];
        read_or_zeros(new_backing, piece, offset + rel)?;
    }
    if old != new {
        editor.write_cluster(offset, &old)?;
    }
    Ok(())
}

/// qemu-img resize: raw files change length; qcow2 images change their virtual size; VMDK
/// hosted sparse and flat disks grow (`VmdkEditor::grow`; qemu-img 7.2 resizes no VMDK).
pub fn resize(path: &Path, new_size: u64, opts: &OpenOptions) -> Result<()> {
    let _span = tracing::info_span!("resize", path = %path.display(), new_size).entered();
    let img = factory::open(
        path,
        &OpenOptions {
            skip_backing: true,
            ..opts.clone()
        },
    )?;
    let format = img.format();
    drop(img);
    match format {
        Format::Raw => {
            let f = crate::image::open_for_writing(path)?;
            f.set_len(new_size)
                .map_err(|e| DiskError::io(path, new_size, e))?;
            f.sync_all().map_err(|e| DiskError::io(path, 0, e))
        }
        Format::Qcow2 => {
            let mut editor = Qcow2Editor::open(path)?;
            editor.set_size(new_size)?;
            editor.finish()
        }
        Format::Vmdk => {
            let create_type = crate::vmdk::edit::read_descriptor(path)?
                .create_type()
                .unwrap_or("")
                .to_string();
            if create_type.eq_ignore_ascii_case("streamOptimized") {
                return Err(DiskError::NotSupportedFor {
                    path: path.into(),
                    format: "vmdk",
                    operation: "resizing a streamOptimized disk (a compressed stream, as qemu-img refuses it too); convert it to monolithicSparse, resize that, and convert back",
                });
            }
            let mut editor = VmdkEditor::open(path)?;
            editor.grow(new_size)?;
            Box::new(editor).finish()
        }
        other => Err(DiskError::NotSupportedFor {
            path: path.into(),
            format: other.qemu_name(),
            operation: "resize",
        }),
    }
}

//! commit, rebase and resize on existing images (qemu-img semantics), for qcow2 overlays and
//! raw or qcow2 bases.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmedia_io::Progress;

use crate::error::{DiskError, Result};
use crate::image::{self, BlockKind, DiskImage, Format, OpenOptions};
use crate::qcow2::modify::Qcow2Editor;

/// Where committed data goes: a raw file or a qcow2 image edited in place.
enum Target {
    Raw(std::fs::File, PathBuf),
    Qcow2(Box<Qcow2Editor>),
}

impl Target {
    fn open(path: &Path, format: Format) -> Result<Target> {
        match format {
            Format::Raw => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|source| DiskError::Open {
                        path: path.into(),
                        action: "open for writing",
                        source,
                    })?;
                Ok(Target::Raw(f, path.to_path_buf()))
            }
            Format::Qcow2 => Ok(Target::Qcow2(Box::new(Qcow2Editor::open(path)?))),
            other => Err(DiskError::NotSupportedFor {
                path: path.into(),
                format: other.qemu_name(),
                operation: "writing in place (commit/rebase/resize)",
            }),
        }
    }

    fn cluster(&self) -> u64 {
        match self {
            Target::Raw(..) => 64 << 10,
            Target::Qcow2(e) => e.header().cluster_size(),
        }
    }

    fn write(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        match self {
            Target::Raw(f, p) => f
                .write_all_at(data, guest_offset)
                .map_err(|e| DiskError::io(p.as_path(), guest_offset, e)),
            Target::Qcow2(e) => e.write_cluster(guest_offset, data),
        }
    }

    /// Makes a whole cluster read as zeros (qcow2: the zero flag, as qemu's commit job does).
    fn zero(&mut self, guest_offset: u64, len: u64) -> Result<()> {
        match self {
            Target::Qcow2(e) if len == e.header().cluster_size() => e.zero_cluster(guest_offset),
            _ => self.write(guest_offset, &vec![0u8; len as usize]),
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Target::Raw(f, p) => f.sync_all().map_err(|e| DiskError::io(p, 0, e)),
            Target::Qcow2(e) => e.finish(),
        }
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

/// qemu-img commit: writes what `top` (and the layers between it and `base`) allocate into
/// `base` (default: the direct backing file); empties `top` afterwards when `empty` is set and
/// no explicit base was named (as qemu, `-b` implies `-d`).
pub fn commit(
    top_path: &Path,
    base: Option<&Path>,
    empty: bool,
    opts: &OpenOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let top = image::open(top_path, opts)?;
    let mut layers = 1usize;
    let mut base_img = top.backing().ok_or_else(|| DiskError::NotSupportedFor {
        path: top_path.into(),
        format: top.format().qemu_name(),
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
    let size = top.virtual_size();
    let base_size = base_img.virtual_size();
    if top.format() != Format::Qcow2 && empty && base.is_none() {
        return Err(DiskError::NotSupportedFor {
            path: top_path.into(),
            format: top.format().qemu_name(),
            operation: "emptying after commit (use -d)",
        });
    }
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
    let mut target = Target::open(&base_path, base_format)?;
    let cluster = target.cluster();
    progress.set_total(size);
    let mut offset = 0u64;
    let mut buf = Vec::new();
    while offset < size {
        let (len, kind) = allocated_above(top.as_ref(), layers, offset, size - offset)?;
        let len = len.max(1);
        let whole_zero_clusters =
            kind == BlockKind::Zero && offset % cluster == 0 && len >= cluster;
        if whole_zero_clusters {
            let n = len / cluster * cluster;
            let mut pos = offset;
            while pos < offset + n {
                target.zero(pos, cluster.min(size - pos))?;
                pos += cluster;
            }
            progress.advance(n);
            offset += n;
        } else if kind != BlockKind::Unallocated {
            // Whole target clusters, read through the full chain from the top.
            let start = offset / cluster * cluster;
            let end = ((offset + len).div_ceil(cluster) * cluster).min(size);
            let mut pos = start;
            while pos < end {
                let n = cluster.min(end - pos) as usize;
                buf.resize(n, 0);
                top.read_at(&mut buf, pos)?;
                target.write(pos, &buf)?;
                pos += n as u64;
            }
            progress.advance(end - offset);
            offset = end;
        } else {
            progress.advance(len);
            offset += len;
        }
    }
    drop(top);
    target.finish()?;
    if empty && base.is_none() {
        let mut editor = Qcow2Editor::open(top_path)?;
        editor.discard_all()?;
        editor.finish()?;
    }
    Ok(())
}

/// qemu-img rebase. Safe mode copies into the overlay every cluster it does not allocate whose
/// content differs between the old and the new backing file; unsafe mode only rewrites the name.
pub fn rebase(
    top_path: &Path,
    new_backing: Option<&str>,
    new_format: Option<Format>,
    safe: bool,
    opts: &OpenOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let mut format = new_format;
    if safe {
        let top = image::open(top_path, opts)?;
        if top.format() != Format::Qcow2 {
            return Err(DiskError::NotSupportedFor {
                path: top_path.into(),
                format: top.format().qemu_name(),
                operation: "rebase",
            });
        }
        let new_img = match new_backing {
            Some(name) => {
                let child = OpenOptions {
                    format: new_format,
                    ..opts.clone()
                };
                let target = image::check_reference(top_path, name, &child)?;
                Some(image::open(&target, &child)?)
            }
            None => None,
        };
        if format.is_none() {
            format = new_img.as_ref().map(|i| i.format());
        }
        let mut editor = Qcow2Editor::open(top_path)?;
        let cluster = editor.header().cluster_size();
        let size = top.virtual_size();
        progress.set_total(size);
        let mut old = vec![0u8; cluster as usize];
        let mut new = vec![0u8; cluster as usize];
        let mut offset = 0u64;
        while offset < size {
            let n = cluster.min(size - offset);
            let status = top.block_status(offset, n)?;
            if status.kind == BlockKind::Unallocated && status.len >= n {
                let old_buf = &mut old[..n as usize];
                top.read_at(old_buf, offset)?;
                let new_buf = &mut new[..n as usize];
                new_buf.fill(0);
                if let Some(img) = &new_img {
                    let vs = img.virtual_size();
                    if offset < vs {
                        let m = (vs - offset).min(n) as usize;
                        img.read_at(&mut new_buf[..m], offset)?;
                    }
                }
                if old_buf != new_buf {
                    editor.write_cluster(offset, old_buf)?;
                }
            } else if status.kind == BlockKind::Unallocated {
                // Part of the cluster is allocated: qcow2 allocates whole clusters, so this
                // only happens with subclusters, which the editor refuses.
                return Err(DiskError::Unsupported {
                    path: top_path.into(),
                    format: "qcow2",
                    feature: "rebase of partially allocated clusters".into(),
                });
            }
            progress.advance(n);
            offset += n;
        }
        drop(top);
        editor.set_backing(new_backing, format)?;
        return editor.finish();
    }
    let mut editor = Qcow2Editor::open(top_path)?;
    editor.set_backing(new_backing, format)?;
    editor.finish()
}

/// qemu-img resize: raw files change length; qcow2 images change their virtual size.
pub fn resize(path: &Path, new_size: u64, opts: &OpenOptions) -> Result<()> {
    let img = image::open(
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
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|source| DiskError::Open {
                    path: path.into(),
                    action: "open for writing",
                    source,
                })?;
            f.set_len(new_size)
                .map_err(|e| DiskError::io(path, new_size, e))?;
            f.sync_all().map_err(|e| DiskError::io(path, 0, e))
        }
        Format::Qcow2 => {
            let mut editor = Qcow2Editor::open(path)?;
            editor.set_size(new_size)?;
            editor.finish()
        }
        other => Err(DiskError::NotSupportedFor {
            path: path.into(),
            format: other.qemu_name(),
            operation: "resize",
        }),
    }
}

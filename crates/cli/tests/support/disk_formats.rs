//! Helpers for the VMDK/VHD/VHDX interoperability tests: open any image through the vmedia
//! library (dispatching VMDK/VHD/VHDX to their drivers), copy one image into a new one the way
//! a converter does, dump the guest view to a raw file, and drive qemu-img.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vmedia_disk::factory::{self, probe_windows};
use vmedia_disk::{BlockKind, CreateOptions, DiskImage, Format, OpenOptions, ReferencePolicy};

use super::{require_tool, run_ok};

/// Opens `path` with the vmedia driver of its probed format.
pub fn open_any(path: &Path, opts: &OpenOptions) -> vmedia_disk::Result<Box<dyn DiskImage>> {
    let file = File::open(path).map_err(|source| vmedia_disk::DiskError::Open {
        path: path.into(),
        action: "open",
        source,
    })?;
    let source: Arc<dyn vmedia_io::ReadAt> = Arc::new(file);
    let (head, tail) = probe_windows(source.as_ref(), path)?;
    if vmedia_disk::vhdx::probe(&head, &tail) {
        vmedia_disk::vhdx::open(path, source, opts)
    } else if vmedia_disk::vmdk::probe(&head, &tail) {
        vmedia_disk::vmdk::open(path, source, opts)
    } else if vmedia_disk::vhd::probe(&head, &tail) {
        vmedia_disk::vhd::open(path, source, opts)
    } else {
        factory::open(path, opts)
    }
}

pub fn open_default(path: &Path) -> Box<dyn DiskImage> {
    open_any(path, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("vmedia cannot open {}: {e}", path.display()))
}

/// Writes the guest view of `img` to `out` as a sparse raw file: ranges the chain reports as
/// unallocated or zero are left as holes, data ranges are read (1 MiB at a time).
pub fn dump_raw(img: &dyn DiskImage, out: &Path) {
    use std::os::unix::fs::FileExt;
    let f = File::create(out).unwrap();
    let size = img.virtual_size();
    f.set_len(size).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let want = (size - at).min(buf.len() as u64);
        let (len, maybe_data) = chain_status(img, at, want);
        if maybe_data {
            let n = len as usize;
            img.read_at(&mut buf[..n], at)
                .unwrap_or_else(|e| panic!("{}: read at {at:#x}: {e}", img.path().display()));
            if buf[..n].iter().any(|b| *b != 0) {
                f.write_all_at(&buf[..n], at).unwrap();
            }
        }
        at += len;
    }
}

/// (len, whether some layer may hold data there).
fn chain_status(img: &dyn DiskImage, at: u64, len: u64) -> (u64, bool) {
    let s = img
        .block_status(at, len)
        .unwrap_or_else(|e| panic!("{}: block status at {at:#x}: {e}", img.path().display()));
    match s.kind {
        BlockKind::Data => (s.len, true),
        BlockKind::Zero => (s.len, false),
        BlockKind::Unallocated => match img.backing() {
            Some(b) if at < b.virtual_size() => {
                chain_status(b, at, s.len.min(b.virtual_size() - at))
            }
            _ => (s.len, false),
        },
    }
}

/// Copies `src` into a new image the way a converter does: cluster by cluster, skipping
/// clusters that read as zeros, compressing through the writer's compressor when it has one.
pub fn lib_convert(
    src: &dyn DiskImage,
    dst: &Path,
    format: Format,
    options: &[(&str, &str)],
    backing: Option<&str>,
) {
    let mut opts = CreateOptions::new(format, src.virtual_size());
    for (k, v) in options {
        opts.options.insert((*k).into(), (*v).into());
    }
    opts.backing = backing.map(|b| (b.to_string(), Some(format)));
    let create = match format {
        Format::Vmdk => vmedia_disk::vmdk::create,
        Format::Vhd => vmedia_disk::vhd::create,
        Format::Vhdx => vmedia_disk::vhdx::create,
        _ => factory::create,
    };
    let mut writer = create(dst, &opts).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    let cluster = writer.cluster_size();
    let compressor = writer.compressor();
    let size = src.virtual_size();
    let mut buf = vec![0u8; cluster as usize];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(cluster) as usize;
        let status = src.block_status(at, n as u64).unwrap();
        let layer_only = backing.is_some();
        if status.kind == BlockKind::Unallocated && layer_only && status.len >= n as u64 {
            at += n as u64;
            continue;
        }
        src.read_at(&mut buf[..n], at).unwrap();
        if buf[..n].iter().all(|b| *b == 0) {
            if layer_only && status.kind != BlockKind::Unallocated {
                writer.write_zeroes(at, n as u64).unwrap();
            }
        } else if let Some(c) = &compressor {
            match c.compress_cluster(&buf[..n]).unwrap() {
                Some(z) => writer.write_compressed(at, &z).unwrap(),
                None => writer.write_at(at, &buf[..n]).unwrap(),
            }
        } else {
            writer.write_at(at, &buf[..n]).unwrap();
        }
        at += n as u64;
    }
    writer
        .finish()
        .unwrap_or_else(|e| panic!("finish {}: {e}", dst.display()));
}

/// Copies only what `top`'s own layer stores (a delta): reads through the chain for those
/// ranges, writes them into a new delta image over `backing`.
pub fn lib_convert_layer(
    top: &dyn DiskImage,
    dst: &Path,
    format: Format,
    options: &[(&str, &str)],
    backing: &str,
) {
    lib_convert(top, dst, format, options, Some(backing))
}

pub fn qemu_img() -> PathBuf {
    require_tool("qemu-img")
}

/// `qemu-img convert -O raw` of `src` (format forced when given).
pub fn qemu_to_raw(src: &Path, format: Option<&str>, out: &Path) {
    let mut cmd = Command::new(qemu_img());
    cmd.arg("convert");
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    cmd.args(["-O", "raw"]).arg(src).arg(out);
    run_ok(&mut cmd);
}

/// `qemu-img compare` exit code and output.
pub fn qemu_compare(a: &Path, fa: &str, b: &Path, fb: &str) -> (i32, String) {
    let out = Command::new(qemu_img())
        .args(["compare", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn assert_qemu_identical(a: &Path, fa: &str, b: &Path, fb: &str) {
    let (code, text) = qemu_compare(a, fa, b, fb);
    assert_eq!(
        code,
        0,
        "qemu-img compare {} ({fa}) vs {} ({fb}): {text}",
        a.display(),
        b.display()
    );
}

/// `qemu-img check` passes (exit 0).
pub fn assert_qemu_check(path: &Path, format: &str) {
    let out = Command::new(qemu_img())
        .args(["check", "-f", format])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img check {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn qemu_info_json(path: &Path, format: &str) -> serde_json::Value {
    let out = run_ok(
        Command::new(qemu_img())
            .args(["info", "-f", format, "--output", "json"])
            .arg(path),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Files equal (byte for byte, compared in chunks).
pub fn files_equal(a: &Path, b: &Path) -> bool {
    let (ma, mb) = (
        std::fs::metadata(a).unwrap().len(),
        std::fs::metadata(b).unwrap().len(),
    );
    ma == mb && super::sha256_file(a) == super::sha256_file(b)
}

pub fn allow_any() -> OpenOptions {
    OpenOptions {
        references: ReferencePolicy::Any,
        ..OpenOptions::default()
    }
}

/// A raw file of `size` bytes with a recognisable pattern in some places and holes elsewhere.
pub fn patterned_raw(path: &Path, size: u64, seed: u8) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    let mut at = 0u64;
    let mut i = 0u64;
    while at < size {
        if i % 3 != 1 {
            let n = (size - at).min(96 * 1024) as usize;
            let data: Vec<u8> = (0..n)
                .map(|j| ((j as u64 * 31 + i * 7 + u64::from(seed)) % 251) as u8)
                .collect();
            f.write_all_at(&data, at).unwrap();
        }
        at += 5 * 128 * 1024 + 4096;
        i += 1;
    }
}

/// Writes into a new delta image (over `backing`, a name relative to `dst`) only what differs
/// between `wanted` and the backing image's content, as `qemu-img convert -B` does.
pub fn lib_delta(
    wanted: &dyn DiskImage,
    backing_img: &dyn DiskImage,
    dst: &Path,
    format: Format,
    backing: &str,
) {
    let mut opts = CreateOptions::new(format, wanted.virtual_size());
    opts.backing = Some((backing.to_string(), Some(format)));
    let create = match format {
        Format::Vmdk => vmedia_disk::vmdk::create,
        Format::Vhd => vmedia_disk::vhd::create,
        Format::Vhdx => vmedia_disk::vhdx::create,
        _ => factory::create,
    };
    let mut writer = create(dst, &opts).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    // Compare at sector granularity inside 64 KiB pieces so partial blocks are exercised.
    let piece = 64 * 1024u64;
    let size = wanted.virtual_size();
    let mut a = vec![0u8; piece as usize];
    let mut b = vec![0u8; piece as usize];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(piece) as usize;
        wanted.read_at(&mut a[..n], at).unwrap();
        backing_img.read_at(&mut b[..n], at).unwrap();
        let mut s = 0usize;
        while s < n {
            let e = (s + 512).min(n);
            if a[s..e] != b[s..e] {
                // Extend the run of differing sectors.
                let mut end = e;
                while end < n && a[end..(end + 512).min(n)] != b[end..(end + 512).min(n)] {
                    end = (end + 512).min(n);
                }
                if a[s..end].iter().all(|x| *x == 0) {
                    writer
                        .write_zeroes(at + s as u64, (end - s) as u64)
                        .unwrap();
                } else {
                    writer.write_at(at + s as u64, &a[s..end]).unwrap();
                }
                s = end;
            } else {
                s = e;
            }
        }
        at += n as u64;
    }
    writer
        .finish()
        .unwrap_or_else(|e| panic!("finish {}: {e}", dst.display()));
}

/// Overwrites `len` bytes at `at` in a raw file with `fill` (0 makes a zeroed range).
pub fn poke(path: &Path, at: u64, len: usize, fill: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![fill; len], at).unwrap();
}

/// A source seen with another virtual size (larger: zeros past the end), as a target profile
/// that rounds the size up makes the converter see it.
pub struct SizedSource<'a> {
    pub inner: &'a dyn DiskImage,
    pub size: u64,
}

impl DiskImage for SizedSource<'_> {
    fn format(&self) -> Format {
        self.inner.format()
    }
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], guest_offset: u64) -> vmedia_disk::Result<()> {
        let inner = self.inner.virtual_size();
        let inside = inner.saturating_sub(guest_offset).min(buf.len() as u64) as usize;
        if inside > 0 {
            self.inner.read_at(&mut buf[..inside], guest_offset)?;
        }
        buf[inside..].fill(0);
        Ok(())
    }
    fn block_status(
        &self,
        guest_offset: u64,
        len: u64,
    ) -> vmedia_disk::Result<vmedia_disk::BlockStatus> {
        let inner = self.inner.virtual_size();
        if guest_offset >= inner {
            return Ok(vmedia_disk::BlockStatus {
                len,
                kind: BlockKind::Zero,
                host_offset: None,
            });
        }
        self.inner
            .block_status(guest_offset, len.min(inner - guest_offset))
    }
    fn info(&self) -> vmedia_disk::Result<vmedia_disk::ImageInfo> {
        self.inner.info()
    }
    fn check(&self, p: &dyn vmedia_io::Progress) -> vmedia_disk::Result<vmedia_disk::CheckReport> {
        self.inner.check(p)
    }
}

/// One in-place change, made through the `InPlaceEditor` calls commit and rebase use.
#[derive(Debug, Clone, Copy)]
pub enum Edit {
    /// `len` bytes of `fill` at a guest offset (whole sectors).
    Write(u64, usize, u8),
    /// `zero_cluster` at a cluster-aligned guest offset.
    ZeroCluster(u64),
}

/// Opens the in-place editor of a VHD or VHDX.
pub fn editor(path: &Path, format: Format) -> Box<dyn vmedia_disk::modify::InPlaceEditor> {
    match format {
        Format::Vhd => Box::new(vmedia_disk::vhd::edit::VhdEditor::open(path).unwrap()),
        Format::Vhdx => Box::new(vmedia_disk::vhdx::edit::VhdxEditor::open(path).unwrap()),
        other => panic!("no editor for {other:?} in these tests"),
    }
}

/// Applies `edits` to the image at `path` in place and the same changes to the raw file
/// `expected` (the guest view the image must have afterwards).
pub fn edit_both(path: &Path, format: Format, expected: &Path, edits: &[Edit]) {
    let mut e = editor(path, format);
    let cluster = e.cluster_size();
    for edit in edits {
        match *edit {
            Edit::Write(at, len, fill) => {
                e.write_cluster(at, &vec![fill; len]).unwrap();
                poke(expected, at, len, fill);
            }
            Edit::ZeroCluster(at) => {
                e.zero_cluster(at).unwrap();
                let size = std::fs::metadata(expected).unwrap().len();
                poke(expected, at, cluster.min(size - at) as usize, 0);
            }
        }
    }
    e.finish().unwrap();
}

/// Records `parent_name` (beside `child`) again as `child`'s parent: after data was written
/// into the parent, a VHDX child must record the parent's new DataWriteGuid (and a VHD child
/// its new time stamp), as commit does for the children it keeps.
pub fn relink(child: &Path, parent_name: &str, format: Format) {
    let mut e = editor(child, format);
    e.keep_content_id();
    e.set_parent(Some(&vmedia_disk::modify::ParentRef {
        name: parent_name.to_string(),
        resolved: vmedia_disk::reference::resolve_reference(child, parent_name),
        format: Some(format),
    }))
    .unwrap();
    e.finish().unwrap();
}

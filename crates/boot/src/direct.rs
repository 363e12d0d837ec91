//! The direct-kernel fast path: find a Linux ISO's default boot entry in its isolinux/syslinux
//! or GRUB configuration, copy the kernel and initrd out of the ISO and hand them to QEMU's
//! `-kernel/-initrd/-append`, skipping firmware disk boot and the boot loader.
//!
//! Config parsing is pure text work (unit-tested below); reading the ISO goes through
//! `vmedia_iso::read`. Paths come from an untrusted image: they are looked up inside the ISO
//! only, never on the host.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmedia_io::ReadAt;
use vmedia_iso::read::{Entry, IsoImage, OpenOptions};

use crate::error::{BootError, Result};
use crate::spec::DirectKernel;

/// Boot configs are a few KiB; anything larger is not a config file.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// syslinux nests INCLUDE a few levels deep (Debian: isolinux.cfg -> menu.cfg -> txt.cfg).
const MAX_INCLUDE_DEPTH: usize = 8;
/// Bounds the total text parsed through includes.
const MAX_INCLUDED_FILES: usize = 64;
/// Linux kernels are tens of MiB; a bigger "kernel" is not one.
const MAX_KERNEL_BYTES: u64 = 256 * 1024 * 1024;
/// Live systems ship large initrds, but not beyond this.
const MAX_INITRD_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Copy buffer for extracting files.
const COPY_CHUNK: usize = 4 * 1024 * 1024;

/// isolinux/syslinux configurations, in the order the boot loaders look for them.
const SYSLINUX_CONFIGS: [&str; 7] = [
    "/isolinux/isolinux.cfg",
    "/boot/isolinux/isolinux.cfg",
    "/isolinux.cfg",
    "/syslinux/syslinux.cfg",
    "/boot/syslinux/syslinux.cfg",
    "/syslinux.cfg",
    "/boot/syslinux/isolinux.cfg",
];
/// GRUB configurations on Linux ISOs (BIOS eltorito and EFI).
const GRUB_CONFIGS: [&str; 4] = [
    "/boot/grub/grub.cfg",
    "/EFI/BOOT/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/boot/grub/loopback.cfg",
];

/// A default boot entry as the configuration states it (paths inside the ISO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub label: String,
    pub kernel: String,
    pub initrds: Vec<String>,
    pub append: String,
}

/// A kernel, initrd and command line extracted into a temporary folder (deleted on drop).
pub struct Extracted {
    pub kernel: DirectKernel,
    pub config: String,
    pub label: String,
    _dir: tempfile::TempDir,
}

/// Reads the ISO's boot configuration and extracts its default entry.
pub fn extract(iso_path: &Path) -> Result<Extracted> {
    let _span = tracing::info_span!("direct_extract", iso = %iso_path.display()).entered();
    let file = std::fs::File::open(iso_path).map_err(|e| BootError::io(iso_path, e))?;
    let source: Arc<dyn ReadAt> = Arc::new(file);
    let iso = IsoImage::open(source, OpenOptions::default()).map_err(|e| BootError::Direct {
        iso: iso_path.into(),
        reason: format!("cannot read it as an ISO 9660 image: {e}"),
    })?;
    let reader = IsoFiles {
        iso: &iso,
        path: iso_path,
    };
    let (config, entry) = find_default_entry(&reader)?;
    let dir = tempfile::Builder::new()
        .prefix("vmedia-direct-")
        .tempdir()
        .map_err(|e| BootError::io(std::env::temp_dir(), e))?;
    let kernel = dir.path().join("kernel");
    reader.copy_out(
        std::slice::from_ref(&entry.kernel),
        &kernel,
        MAX_KERNEL_BYTES,
    )?;
    let initrd = if entry.initrds.is_empty() {
        None
    } else {
        let path = dir.path().join("initrd");
        // Linux accepts concatenated (compressed) cpio archives as one initrd, which is what
        // syslinux and GRUB do with several initrd files.
        reader.copy_out(&entry.initrds, &path, MAX_INITRD_BYTES)?;
        Some(path)
    };
    Ok(Extracted {
        kernel: DirectKernel {
            kernel,
            initrd,
            append: serial_append(&entry.append),
        },
        config,
        label: entry.label,
        _dir: dir,
    })
}

/// Adds `console=ttyS0` unless the entry already picks a console.
pub fn serial_append(append: &str) -> String {
    let has_console = append.split_whitespace().any(|w| w.starts_with("console="));
    if has_console || append.is_empty() {
        if append.is_empty() {
            return "console=ttyS0".into();
        }
        return append.to_string();
    }
    // Before a "---" (Debian installer's separator) so the option reaches the kernel proper.
    format!("{append} console=ttyS0")
}

/// File access the parser needs; the ISO in production, a map in tests.
pub(crate) trait Files {
    fn read_text(&self, path: &str) -> Option<String>;
    fn exists(&self, path: &str) -> bool;
    fn describe(&self) -> PathBuf;
}

pub(crate) fn find_default_entry(files: &dyn Files) -> Result<(String, BootEntry)> {
    let mut problems = Vec::new();
    for config in SYSLINUX_CONFIGS {
        let Some(text) = files.read_text(config) else {
            continue;
        };
        let base = parent_dir(config);
        match parse_syslinux(&text, &base, files) {
            Ok(entry) => return Ok((config.to_string(), entry)),
            Err(reason) => problems.push(format!("{config}: {reason}")),
        }
    }
    for config in GRUB_CONFIGS {
        let Some(text) = files.read_text(config) else {
            continue;
        };
        match parse_grub(&text) {
            Ok(entry) => return Ok((config.to_string(), entry)),
            Err(reason) => problems.push(format!("{config}: {reason}")),
        }
    }
    let reason = if problems.is_empty() {
        "not a Linux ISO vmedia understands: no isolinux/syslinux or GRUB configuration found \
         (looked for /isolinux/isolinux.cfg, /syslinux/syslinux.cfg, /boot/grub/grub.cfg, ...); \
         boot it without --direct"
            .to_string()
    } else {
        format!(
            "no Linux boot entry vmedia can boot directly: {}",
            problems.join("; ")
        )
    };
    Err(BootError::Direct {
        iso: files.describe(),
        reason,
    })
}

fn parent_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".into(),
        Some(at) => path[..at].to_string(),
    }
}

/// Resolves a path as syslinux does: absolute from the ISO root, else from the config folder.
fn resolve(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else if base.ends_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

#[derive(Default, Debug)]
struct SyslinuxLabel {
    name: String,
    kernel: Option<String>,
    append: String,
    initrd: Option<String>,
    menu_default: bool,
}

#[derive(Default)]
struct SyslinuxState {
    default: Option<String>,
    on_timeout: Option<String>,
    labels: Vec<SyslinuxLabel>,
    files_read: usize,
}

/// Parses a syslinux configuration (with its INCLUDEs) and returns its default entry.
fn parse_syslinux(
    text: &str,
    base: &str,
    files: &dyn Files,
) -> std::result::Result<BootEntry, String> {
    let mut state = SyslinuxState::default();
    read_syslinux(text, base, files, 0, &mut state)?;
    let pick = |name: &str| {
        state
            .labels
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name) && l.kernel.is_some())
    };
    let chosen = state
        .on_timeout
        .as_deref()
        .and_then(pick)
        .or_else(|| {
            state
                .labels
                .iter()
                .find(|l| l.menu_default && l.kernel.is_some())
        })
        .or_else(|| state.default.as_deref().and_then(pick))
        .or_else(|| state.labels.iter().find(|l| l.kernel.is_some()));
    let label = match chosen {
        Some(label) => label,
        None => {
            // "DEFAULT vmlinuz initrd=x ..." without labels is a command line of its own.
            let default = state
                .default
                .as_deref()
                .ok_or("no LABEL with a KERNEL/LINUX line")?;
            let mut words = default.splitn(2, char::is_whitespace);
            let kernel = words.next().unwrap_or_default();
            return finish_syslinux(
                &SyslinuxLabel {
                    name: kernel.to_string(),
                    kernel: Some(kernel.to_string()),
                    append: words.next().unwrap_or_default().trim().to_string(),
                    ..SyslinuxLabel::default()
                },
                base,
                files,
            );
        }
    };
    finish_syslinux(label, base, files)
}

fn finish_syslinux(
    label: &SyslinuxLabel,
    base: &str,
    files: &dyn Files,
) -> std::result::Result<BootEntry, String> {
    let kernel = label.kernel.clone().unwrap_or_default();
    let lower = kernel.to_ascii_lowercase();
    if lower.ends_with(".c32")
        || lower.ends_with(".com")
        || lower.ends_with(".0")
        || lower.ends_with(".bin")
    {
        return Err(format!(
            "the default entry {:?} runs {kernel}, a boot loader module, not a Linux kernel",
            label.name
        ));
    }
    let mut initrds = Vec::new();
    let mut append_words = Vec::new();
    for word in label.append.split_whitespace() {
        if let Some(list) = word.strip_prefix("initrd=") {
            initrds.extend(
                list.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| resolve(base, s)),
            );
        } else {
            append_words.push(word);
        }
    }
    if let Some(initrd) = &label.initrd {
        initrds.extend(
            initrd
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| resolve(base, s)),
        );
    }
    let kernel = resolve(base, &kernel);
    if !files.exists(&kernel) {
        return Err(format!(
            "the default entry {:?} names kernel {kernel}, which is not in the ISO",
            label.name
        ));
    }
    Ok(BootEntry {
        label: label.name.clone(),
        kernel,
        initrds,
        append: append_words.join(" "),
    })
}

fn read_syslinux(
    text: &str,
    base: &str,
    files: &dyn Files,
    depth: usize,
    state: &mut SyslinuxState,
) -> std::result::Result<(), String> {
    state.files_read += 1;
    if depth > MAX_INCLUDE_DEPTH || state.files_read > MAX_INCLUDED_FILES {
        return Err(format!("INCLUDE nests deeper than {MAX_INCLUDE_DEPTH} or reads over {MAX_INCLUDED_FILES} files"));
    }
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = split_keyword(line);
        let keyword = keyword.to_ascii_lowercase();
        let (keyword, rest) = if keyword == "menu" {
            let (sub, sub_rest) = split_keyword(rest);
            (format!("menu {}", sub.to_ascii_lowercase()), sub_rest)
        } else {
            (keyword, rest)
        };
        match keyword.as_str() {
            "default" => state.default = Some(rest.to_string()),
            "ontimeout" => state.on_timeout = Some(rest.to_string()),
            "label" => state.labels.push(SyslinuxLabel {
                name: rest.to_string(),
                ..Default::default()
            }),
            "kernel" | "linux" => {
                if let Some(label) = state.labels.last_mut() {
                    label.kernel = Some(rest.to_string());
                }
            }
            "append" => {
                if let Some(label) = state.labels.last_mut() {
                    label.append = rest.to_string();
                }
            }
            "initrd" => {
                if let Some(label) = state.labels.last_mut() {
                    label.initrd = Some(rest.to_string());
                }
            }
            "menu default" => {
                if let Some(label) = state.labels.last_mut() {
                    label.menu_default = true;
                }
            }
            "include" | "menu include" => {
                let file = split_keyword(rest).0;
                let path = resolve(base, file);
                if let Some(included) = files.read_text(&path) {
                    read_syslinux(&included, base, files, depth + 1, state)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn split_keyword(line: &str) -> (&str, &str) {
    match line.find(char::is_whitespace) {
        Some(at) => (&line[..at], line[at..].trim()),
        None => (line, ""),
    }
}

/// Parses a GRUB configuration: `set default=`, top-level `menuentry`/`submenu` blocks,
/// `linux`/`linuxefi` and `initrd`/`initrdefi` inside them.
pub(crate) fn parse_grub(text: &str) -> std::result::Result<BootEntry, String> {
    let mut default: Option<String> = None;
    let mut entries: Vec<(String, Option<BootEntry>)> = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<(String, BootEntry)> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = split_keyword(line);
        if depth == 0 && keyword == "set" {
            if let Some(value) = rest.strip_prefix("default=") {
                default = Some(unquote(value).to_string());
            }
        }
        let opens = line.ends_with('{');
        if (keyword == "menuentry" || keyword == "submenu") && opens {
            if depth == 0 {
                let title = grub_title(rest);
                if keyword == "menuentry" {
                    current = Some((
                        title,
                        BootEntry {
                            label: String::new(),
                            kernel: String::new(),
                            initrds: vec![],
                            append: String::new(),
                        },
                    ));
                } else {
                    entries.push((title, None));
                }
            }
            depth += 1;
            continue;
        }
        if opens {
            depth += 1;
            continue;
        }
        if line == "}" || line.ends_with(" }") {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                if let Some((title, mut entry)) = current.take() {
                    entry.label = title.clone();
                    let usable = !entry.kernel.is_empty();
                    entries.push((title, usable.then_some(entry)));
                }
            }
            continue;
        }
        if depth == 1 {
            if let Some((_, entry)) = current.as_mut() {
                match keyword {
                    "linux" | "linuxefi" | "linux16" => {
                        let (kernel, args) = split_keyword(rest);
                        entry.kernel = kernel.to_string();
                        entry.append = args.to_string();
                    }
                    "initrd" | "initrdefi" | "initrd16" => {
                        entry.initrds = rest.split_whitespace().map(str::to_string).collect();
                    }
                    _ => {}
                }
            }
        }
    }
    if entries.is_empty() {
        return Err("no menuentry".into());
    }
    let index = match default.as_deref() {
        None | Some("") => 0,
        Some(value) => {
            let first = value.split('>').next().unwrap_or_default();
            match first.parse::<usize>() {
                Ok(n) => n,
                Err(_) => entries
                    .iter()
                    .position(|(title, _)| title == first)
                    .unwrap_or(0),
            }
        }
    };
    let (title, entry) = entries
        .get(index)
        .ok_or_else(|| format!("default entry {index} does not exist"))?;
    let entry = entry
        .clone()
        .ok_or_else(|| format!("the default entry {title:?} has no linux line"))?;
    if entry.kernel.contains('$') || entry.initrds.iter().any(|i| i.contains('$')) {
        return Err(format!(
            "the default entry {title:?} builds its paths from GRUB variables"
        ));
    }
    if !entry.kernel.starts_with('/') {
        return Err(format!(
            "the default entry {title:?} names a kernel outside the ISO ({})",
            entry.kernel
        ));
    }
    Ok(entry)
}

fn unquote(value: &str) -> &str {
    value.trim().trim_matches(|c| c == '"' || c == '\'')
}

fn grub_title(rest: &str) -> String {
    let rest = rest.trim();
    for quote in ['\'', '"'] {
        if let Some(inner) = rest.strip_prefix(quote) {
            if let Some(end) = inner.find(quote) {
                return inner[..end].to_string();
            }
        }
    }
    split_keyword(rest).0.to_string()
}

/// Files inside an ISO, looked up case-insensitively (plain ISO 9660 names are upper case
/// while configs name them in lower case, which is how isolinux finds them).
struct IsoFiles<'a> {
    iso: &'a IsoImage,
    path: &'a Path,
}

impl IsoFiles<'_> {
    fn find(&self, path: &str) -> Option<Entry> {
        if let Ok(entry) = self.iso.lookup_follow(path) {
            return Some(entry);
        }
        let mut current = self.iso.root().clone();
        for component in path.split('/').filter(|c| !c.is_empty()) {
            let children = self.iso.read_dir(&current).ok()?;
            current = children.into_iter().find(|e| {
                e.name.eq_ignore_ascii_case(component)
                    || e.iso_name
                        .split(';')
                        .next()
                        .is_some_and(|n| n.eq_ignore_ascii_case(component))
            })?;
        }
        Some(current)
    }

    /// Copies the concatenation of `sources` to `destination`.
    fn copy_out(&self, sources: &[String], destination: &Path, limit: u64) -> Result<()> {
        let mut out =
            std::fs::File::create(destination).map_err(|e| BootError::io(destination, e))?;
        let mut total = 0u64;
        let mut buf = vec![0u8; COPY_CHUNK];
        for source in sources {
            let entry =
                self.find(source)
                    .filter(Entry::is_file)
                    .ok_or_else(|| BootError::Direct {
                        iso: self.path.into(),
                        reason: format!(
                            "the boot entry names {source}, which is not a file in the ISO"
                        ),
                    })?;
            total = total.saturating_add(entry.size);
            if total > limit {
                return Err(BootError::Direct {
                    iso: self.path.into(),
                    reason: format!(
                        "{source}: {} bytes is over the {limit}-byte limit for a boot file",
                        entry.size
                    ),
                });
            }
            let reader = self
                .iso
                .file_reader(&entry)
                .map_err(|e| BootError::Direct {
                    iso: self.path.into(),
                    reason: format!("{source}: {e}"),
                })?;
            let mut offset = 0u64;
            while offset < entry.size {
                let want = (entry.size - offset).min(COPY_CHUNK as u64) as usize;
                reader
                    .read_exact_at(&mut buf[..want], offset)
                    .map_err(|e| BootError::Direct {
                        iso: self.path.into(),
                        reason: format!("{source} at offset {offset:#x}: {e}"),
                    })?;
                out.write_all(&buf[..want])
                    .map_err(|e| BootError::io(destination, e))?;
                offset += want as u64;
            }
        }
        out.flush().map_err(|e| BootError::io(destination, e))
    }
}

impl Files for IsoFiles<'_> {
    fn read_text(&self, path: &str) -> Option<String> {
        let entry = self.find(path).filter(Entry::is_file)?;
        if entry.size > MAX_CONFIG_BYTES {
            return None;
        }
        let reader = self.iso.file_reader(&entry).ok()?;
        let mut buf = vec![0u8; entry.size as usize];
        reader.read_exact_at(&mut buf, 0).ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    }
    fn exists(&self, path: &str) -> bool {
        self.find(path).is_some_and(|e| e.is_file())
    }
    fn describe(&self) -> PathBuf {
        self.path.to_path_buf()
    }
}

/// Default size limit of the `--direct` cache (uncompressed kernels and plain initrds): a few
/// distributions' worth (a kernel is tens of MiB, a plain initrd up to a few hundred).
pub const DEFAULT_CACHE_LIMIT: u64 = 2 << 30;
/// Files looked at in one cache folder; far more than any real cache, and a bound on the work
/// a folder filled by something else can cause.
const MAX_CACHE_FILES: usize = 100_000;

/// What pruning or clearing the `--direct` cache did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// Files removed and their bytes.
    pub removed: usize,
    pub freed: u64,
    /// Files and bytes left.
    pub kept: usize,
    pub kept_bytes: u64,
}

/// Marks a cached file as just used: its modification time is the "last used" that pruning
/// orders by (access times are often not kept: `noatime`, `relatime`).
pub fn touch_cached(path: &Path) -> Result<()> {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .map_err(|e| BootError::io(path, e))?;
    file.set_modified(std::time::SystemTime::now())
        .map_err(|e| BootError::io(path, e))
}

struct CachedFile {
    path: PathBuf,
    size: u64,
    used: std::time::SystemTime,
}

fn cached_files(dir: &Path) -> Result<Vec<CachedFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BootError::io(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries.take(MAX_CACHE_FILES) {
        let entry = entry.map_err(|e| BootError::io(dir, e))?;
        // A name starting with '.' is a file being written (an AtomicFile temporary) by a
        // boot running now: never ours to remove.
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        files.push(CachedFile {
            path: entry.path(),
            size: meta.len(),
            used: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
        });
    }
    Ok(files)
}

/// Removes the least recently used files of the cache folders `dirs` until they hold at most
/// `limit` bytes; the files in `keep` (the ones the current boot uses) stay whatever their
/// size. Folders that do not exist are empty.
pub fn prune_cache(dirs: &[PathBuf], limit: u64, keep: &[&Path]) -> Result<CacheReport> {
    let mut files = Vec::new();
    for dir in dirs {
        files.extend(cached_files(dir)?);
    }
    let mut total: u64 = files.iter().map(|f| f.size).fold(0, u64::saturating_add);
    files.sort_by_key(|f| f.used);
    let mut report = CacheReport::default();
    for file in files {
        if total > limit && !keep.iter().any(|k| *k == file.path) {
            match std::fs::remove_file(&file.path) {
                Ok(()) => {
                    total = total.saturating_sub(file.size);
                    report.removed += 1;
                    report.freed = report.freed.saturating_add(file.size);
                    continue;
                }
                // Another boot pruned it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    total = total.saturating_sub(file.size);
                    continue;
                }
                Err(e) => return Err(BootError::io(&file.path, e)),
            }
        }
        report.kept += 1;
        report.kept_bytes = report.kept_bytes.saturating_add(file.size);
    }
    Ok(report)
}

/// Empties the cache folders `dirs` (`vmedia boot --clear-cache`).
pub fn clear_cache(dirs: &[PathBuf]) -> Result<CacheReport> {
    prune_cache(dirs, 0, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cache_file(dir: &Path, name: &str, size: usize, age_secs: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; size]).unwrap();
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        path
    }

    #[test]
    fn cache_prune_removes_least_recently_used_first_and_keeps_the_files_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let kernels = dir.path().join("kernels");
        let initrds = dir.path().join("initrds");
        std::fs::create_dir_all(&kernels).unwrap();
        std::fs::create_dir_all(&initrds).unwrap();
        let oldest = cache_file(&kernels, "a.vmlinux", 1000, 400);
        let in_use = cache_file(&initrds, "b.cpio", 1000, 300);
        let middle = cache_file(&kernels, "c.vmlinux", 1000, 200);
        let newest = cache_file(&initrds, "d.cpio", 1000, 100);
        let writing = cache_file(&initrds, ".e.cpio.vmedia-tmp-1-0", 5000, 500);
        // Used just now: the oldest becomes the newest.
        touch_cached(&oldest).unwrap();
        let dirs = [kernels.clone(), initrds.clone(), dir.path().join("absent")];
        let report = prune_cache(&dirs, 2500, &[&in_use]).unwrap();
        assert_eq!(report.removed, 2);
        assert_eq!(report.freed, 2000);
        assert_eq!((report.kept, report.kept_bytes), (2, 2000));
        assert!(oldest.exists() && in_use.exists() && writing.exists());
        assert!(!middle.exists() && !newest.exists());
        // Under the limit: nothing to do.
        assert_eq!(prune_cache(&dirs, 2500, &[]).unwrap().removed, 0);
        let cleared = clear_cache(&dirs).unwrap();
        assert_eq!((cleared.removed, cleared.freed, cleared.kept), (2, 2000, 0));
        assert!(!oldest.exists() && !in_use.exists() && writing.exists());
    }

    struct MapFiles(HashMap<&'static str, &'static str>);

    impl Files for MapFiles {
        fn read_text(&self, path: &str) -> Option<String> {
            self.0.get(path).map(|s| s.to_string())
        }
        fn exists(&self, path: &str) -> bool {
            self.0.contains_key(path)
        }
        fn describe(&self) -> PathBuf {
            "test.iso".into()
        }
    }

    fn files(list: &[(&'static str, &'static str)]) -> MapFiles {
        MapFiles(list.iter().copied().collect())
    }

    #[test]
    fn debian_style_includes_and_initrd_in_append() {
        let f = files(&[
            ("/isolinux/isolinux.cfg", "path\ninclude menu.cfg\ndefault vesamenu.c32\nprompt 0\ntimeout 0\n"),
            ("/isolinux/menu.cfg", "menu hshift 4\ninclude txt.cfg\n"),
            ("/isolinux/txt.cfg", "default install\nlabel install\n\tmenu label ^Install\n\tkernel /install.amd/vmlinuz\n\tappend vga=788 initrd=/install.amd/initrd.gz --- quiet\n"),
            ("/install.amd/vmlinuz", ""),
        ]);
        let (config, entry) = find_default_entry(&f).unwrap();
        assert_eq!(config, "/isolinux/isolinux.cfg");
        assert_eq!(entry.kernel, "/install.amd/vmlinuz");
        assert_eq!(entry.initrds, vec!["/install.amd/initrd.gz"]);
        assert_eq!(entry.append, "vga=788 --- quiet");
    }

    #[test]
    fn ontimeout_wins_over_menu_default_and_default() {
        let f = files(&[
            ("/isolinux/isolinux.cfg", "default a\nontimeout c\nlabel a\nkernel /a\nlabel b\nmenu default\nkernel /b\nlabel c\nlinux /c\ninitrd /c.img\n"),
            ("/a", ""), ("/b", ""), ("/c", ""),
        ]);
        let (_, entry) = find_default_entry(&f).unwrap();
        assert_eq!(entry.kernel, "/c");
        assert_eq!(entry.initrds, vec!["/c.img"]);
    }

    #[test]
    fn menu_default_wins_over_a_module_default() {
        let f = files(&[
            ("/isolinux/isolinux.cfg", "ui menu.c32\ndefault vesamenu.c32\nlabel a\nkernel vmlinuz\nlabel b\nmenu default\nkernel vmlinuz2\nappend initrd=initrd2.img,extra.img ro\n"),
            ("/isolinux/vmlinuz", ""), ("/isolinux/vmlinuz2", ""),
        ]);
        let (_, entry) = find_default_entry(&f).unwrap();
        assert_eq!(
            entry.kernel, "/isolinux/vmlinuz2",
            "relative to the config folder"
        );
        assert_eq!(
            entry.initrds,
            vec!["/isolinux/initrd2.img", "/isolinux/extra.img"]
        );
        assert_eq!(entry.append, "ro");
    }

    #[test]
    fn default_as_command_line_without_labels() {
        let f = files(&[
            (
                "/syslinux.cfg",
                "DEFAULT /linux initrd=/initrd.gz console=ttyS1\n",
            ),
            ("/linux", ""),
        ]);
        let (_, entry) = find_default_entry(&f).unwrap();
        assert_eq!(entry.kernel, "/linux");
        assert_eq!(entry.append, "console=ttyS1");
    }

    #[test]
    fn module_only_entry_is_not_linux() {
        let f = files(&[(
            "/isolinux/isolinux.cfg",
            "default hdt\nlabel hdt\nkernel hdt.c32\n",
        )]);
        let err = find_default_entry(&f).unwrap_err().to_string();
        assert!(err.contains("not a Linux kernel"), "{err}");
    }

    #[test]
    fn include_loop_is_bounded() {
        let f = files(&[("/isolinux/isolinux.cfg", "include isolinux.cfg\n")]);
        let err = find_default_entry(&f).unwrap_err().to_string();
        assert!(err.contains("INCLUDE"), "{err}");
    }

    #[test]
    fn grub_default_index_and_initrd() {
        let cfg = "set timeout=5\nset default=1\nmenuentry 'Live' {\n linux /live/vmlinuz boot=live\n initrd /live/initrd\n}\nmenuentry \"Safe mode\" --class x {\n  linux /live/vmlinuz boot=live nomodeset\n  initrd /live/initrd /live/extra\n}\n";
        let entry = parse_grub(cfg).unwrap();
        assert_eq!(entry.label, "Safe mode");
        assert_eq!(entry.append, "boot=live nomodeset");
        assert_eq!(entry.initrds, vec!["/live/initrd", "/live/extra"]);
    }

    #[test]
    fn grub_default_by_title_and_submenus_count() {
        let cfg = "set default=\"Two\"\nsubmenu 'More' {\n menuentry 'inner' {\n  linux /x\n }\n}\nmenuentry 'Two' {\n linux /k a=b\n}\n";
        let entry = parse_grub(cfg).unwrap();
        assert_eq!(entry.kernel, "/k");
        let entry = parse_grub(&cfg.replace("\"Two\"", "0")).unwrap_err();
        assert!(entry.contains("no linux line"), "{entry}");
    }

    #[test]
    fn grub_variables_in_paths_are_refused() {
        let err = parse_grub("menuentry 'x' {\n linux $kernel\n}\n").unwrap_err();
        assert!(err.contains("variables"), "{err}");
    }

    #[test]
    fn no_config_means_not_a_linux_iso() {
        let err = find_default_entry(&files(&[])).unwrap_err().to_string();
        assert!(err.contains("not a Linux ISO"), "{err}");
    }

    #[test]
    fn serial_console_is_added_once() {
        assert_eq!(serial_append("quiet"), "quiet console=ttyS0");
        assert_eq!(serial_append("console=tty0"), "console=tty0");
        assert_eq!(serial_append(""), "console=ttyS0");
    }
}

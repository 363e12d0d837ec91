//! Files an image names (qcow2 backing and data files, VMDK extents, VMDK/VHD/VHDX parents):
//! resolved and opened through the [`ReferenceResolver`] the caller passes in
//! [`OpenOptions::resolver`], with loop and depth checks on the chain.
//!
//! The default resolver ([`FolderResolver`]) applies [`ReferencePolicy`]: with the default
//! same-folder policy a name is opened *beneath* the referring image's folder (openat2 with
//! `RESOLVE_BENEATH`, or a component-by-component `O_NOFOLLOW` walk where openat2 is
//! missing), so a symbolic link swapped in between a check and the open cannot lead outside
//! the folder: there is no separate check. A caller whose images are not files (a library
//! object, a network export) passes its own resolver and returns any `vmedia_io::ReadAt`.
//!
//! Architecture invariant: format modules open named files only through this module, and
//! this module knows no format: opening a reference as an image of any format goes through
//! the opener the factory put in the options ([`OpenOptions::opener`]).

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{DiskError, Result};
use crate::image::{
    BackingRef, DiskImage, Format, OpenFn, OpenOptions, OpenedReference, ReferencePolicy,
    ReferenceResolver,
};

/// Longest backing/parent chain followed: deeper chains are almost surely loops or abuse.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// Why the same-folder rule refuses a name (also the reason of a symlink leaving the folder).
const OUTSIDE_THE_FOLDER: &str = "outside the image's own folder";

/// The default resolver: names relative to the referring image's folder, opened as the
/// [`ReferencePolicy`] allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FolderResolver {
    pub policy: ReferencePolicy,
}

impl ReferenceResolver for FolderResolver {
    fn open(&self, referrer: &Path, name: &str) -> Result<OpenedReference> {
        let target = resolve_reference(referrer, name);
        let refused = |reason| DiskError::Reference {
            path: referrer.to_path_buf(),
            reference: target.clone(),
            reason,
        };
        let file = match self.policy {
            ReferencePolicy::None => return Err(refused("not followed (references are disabled)")),
            ReferencePolicy::Any => File::open(&target),
            ReferencePolicy::SameFolder => {
                let folder = folder_of(referrer);
                let file_name =
                    same_folder_name(&folder, name).ok_or_else(|| refused(OUTSIDE_THE_FOLDER))?;
                match open_beneath(&folder, &[file_name.as_os_str()]) {
                    Err(e) if is_escape(&e) => return Err(refused(OUTSIDE_THE_FOLDER)),
                    other => other,
                }
            }
        }
        .map_err(|source| DiskError::Open {
            path: target.clone(),
            action: "open (referenced file)",
            source,
        })?;
        Ok(OpenedReference {
            path: target,
            source: Arc::new(file),
        })
    }
}

/// The folder names inside `referrer` are relative to ("." for a bare file name).
fn folder_of(referrer: &Path) -> PathBuf {
    match referrer.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The file name `name` stands for in `folder` under the same-folder rule: a single name
/// (`./` allowed), or an absolute path whose folder is `folder` itself. Anything else
/// (subfolders, `..`) is outside.
fn same_folder_name(folder: &Path, name: &str) -> Option<PathBuf> {
    let named = Path::new(name);
    if named.is_absolute() {
        let parent = named.parent()?;
        let same = std::fs::canonicalize(parent).ok()? == std::fs::canonicalize(folder).ok()?;
        return if same {
            named.file_name().map(PathBuf::from)
        } else {
            None
        };
    }
    let mut parts = named.components().filter(|c| *c != Component::CurDir);
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(file)), None) => Some(PathBuf::from(file)),
        _ => None,
    }
}

/// Errors that mean "the path leads outside the folder": openat2's EXDEV (an absolute
/// symlink or `..` past the start) and ELOOP (a symlink met by the O_NOFOLLOW walk).
fn is_escape(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::XDEV) | Some(Errno::LOOP)
    )
}

/// Opens `components` (plain names) beneath `folder` for reading: symlinks may not lead
/// outside it. openat2 `RESOLVE_BENEATH` where the kernel has it (Linux 5.6+); elsewhere one
/// `O_NOFOLLOW` open per component, which refuses every symlink.
fn open_beneath(folder: &Path, components: &[&std::ffi::OsStr]) -> io::Result<File> {
    let dir = rustix::fs::open(
        folder,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let relative: PathBuf = components.iter().collect();
    match rustix::fs::openat2(
        &dir,
        relative.as_path(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(Errno::NOSYS) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    walk_nofollow(dir, components)
}

/// The fallback of [`open_beneath`]: every component opened with `O_NOFOLLOW` relative to the
/// previous one; `..` and absolute components are refused like a symlink.
fn walk_nofollow(
    mut dir: std::os::fd::OwnedFd,
    components: &[&std::ffi::OsStr],
) -> io::Result<File> {
    let Some((&last, folders)) = components.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty name"));
    };
    let plain = |name: &std::ffi::OsStr| {
        let mut parts = Path::new(name).components();
        matches!(
            (parts.next(), parts.next()),
            (Some(Component::Normal(_)), None)
        )
    };
    for &name in folders {
        if !plain(name) {
            return Err(Errno::XDEV.into());
        }
        dir = rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
    }
    if !plain(last) {
        return Err(Errno::XDEV.into());
    }
    let fd = rustix::fs::openat(
        &dir,
        last,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Resolves a name recorded inside `referrer` (relative names are relative to its folder, as
/// qemu does) without opening it: what `qemu-img info` shows as the full backing filename.
pub fn resolve_reference(referrer: &Path, name: &str) -> PathBuf {
    let named = Path::new(name);
    if named.is_absolute() {
        return named.to_path_buf();
    }
    match referrer.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(named),
        _ => named.to_path_buf(),
    }
}

/// The key of `path` in a chain: its canonical path when it exists, else the path itself
/// (a file that does not exist cannot close a loop; no working directory is read).
fn chain_key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The chain above a reference of `referrer` with `target` added, or the loop/depth error.
fn extended_chain(referrer: &Path, target: &Path, opts: &OpenOptions) -> Result<Vec<PathBuf>> {
    let mut chain = opts.chain.clone();
    if chain.is_empty() {
        chain.push(chain_key(referrer));
    }
    let key = chain_key(target);
    let looped = chain.contains(&key) || chain.len() >= MAX_CHAIN_DEPTH;
    chain.push(key);
    if looped {
        return Err(DiskError::BackingLoop {
            path: referrer.to_path_buf(),
            chain,
        });
    }
    Ok(chain)
}

/// Applies the reference policy and the chain checks to a name inside `referrer` without
/// opening it; returns the path it resolves to. For commands that record a name (create,
/// convert with a backing file) and want the error before writing anything.
pub fn check_reference(referrer: &Path, name: &str, opts: &OpenOptions) -> Result<PathBuf> {
    let target = resolve_reference(referrer, name);
    let refused = |reason| DiskError::Reference {
        path: referrer.to_path_buf(),
        reference: target.clone(),
        reason,
    };
    match opts.references {
        ReferencePolicy::None => return Err(refused("not followed (references are disabled)")),
        ReferencePolicy::SameFolder => {
            if same_folder_name(&folder_of(referrer), name).is_none() {
                return Err(refused(OUTSIDE_THE_FOLDER));
            }
        }
        ReferencePolicy::Any => {}
    }
    extended_chain(referrer, &target, opts)?;
    Ok(target)
}

/// Opens the file `name` inside `referrer` through the options' resolver and checks the
/// chain; returns it with the options for opening it as an image (chain extended, format
/// left to the caller).
pub fn open_reference_source(
    referrer: &Path,
    name: &str,
    opts: &OpenOptions,
) -> Result<(OpenedReference, OpenOptions)> {
    let opened = match &opts.resolver {
        Some(resolver) => resolver.open(referrer, name)?,
        None => FolderResolver {
            policy: opts.references,
        }
        .open(referrer, name)?,
    };
    let chain = extended_chain(referrer, &opened.path, opts)?;
    let child = OpenOptions {
        format: None,
        chain,
        ..opts.clone()
    };
    Ok((opened, child))
}

/// Opens the image `name` inside `referrer` (a backing file) as `format`, or probed.
pub fn open_reference(
    referrer: &Path,
    name: &str,
    format: Option<Format>,
    opts: &OpenOptions,
) -> Result<Box<dyn DiskImage>> {
    let open_source = opts.opener.ok_or_else(|| DiskError::Reference {
        path: referrer.to_path_buf(),
        reference: resolve_reference(referrer, name),
        reason: "not opened: the image was not opened through vmedia_disk::factory",
    })?;
    let (opened, child) = open_reference_source(referrer, name, opts)?;
    open_source(
        &opened.path,
        opened.source,
        &OpenOptions { format, ..child },
    )
}

/// Opens `name` (recorded inside `referrer`) with `open_fn`: parents of the formats whose
/// parent must be of their own format.
pub fn open_reference_with(
    referrer: &Path,
    name: &str,
    opts: &OpenOptions,
    open_fn: OpenFn,
) -> Result<Box<dyn DiskImage>> {
    let (opened, child) = open_reference_source(referrer, name, opts)?;
    open_fn(&opened.path, opened.source, &child)
}

/// Opens the parent of a differencing image from its candidate names, in the image's order of
/// preference (VHD: W2ru, W2ku, MacX, ..., unicode name; VHDX: relative_path,
/// absolute_win32_path, volume_path; VMDK: parentFileNameHint). Candidates that do not exist
/// are skipped; the first one that opens wins. The returned reference names the first
/// candidate when nothing was opened (`opts.skip_backing`), as `qemu-img info` shows it.
///
/// `names` must not be empty (callers report "no parent named" with their own field and
/// offset); an empty list gives a not-found error rather than a panic.
pub fn open_first_parent(
    referrer: &Path,
    names: &[String],
    format: Format,
    opts: &OpenOptions,
    open_fn: OpenFn,
) -> Result<(BackingRef, Option<Box<dyn DiskImage>>)> {
    let first = names.first().cloned().unwrap_or_default();
    let recorded = BackingRef {
        name: first.clone(),
        format: Some(format),
        resolved: resolve_reference(referrer, &first),
    };
    if opts.skip_backing {
        return Ok((recorded, None));
    }
    let mut last_error = None;
    for name in names {
        match open_reference_with(referrer, name, opts, open_fn) {
            Ok(parent) => {
                let found = BackingRef {
                    name: name.clone(),
                    format: Some(format),
                    resolved: parent.path().to_path_buf(),
                };
                return Ok((found, Some(parent)));
            }
            Err(DiskError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            // A refused candidate that does not exist either is skipped like a missing one.
            Err(DiskError::Reference { reference, .. }) if !reference.exists() => {}
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| DiskError::Open {
        path: recorded.resolved.clone(),
        action: "open the parent of a differencing image",
        source: io::Error::new(
            io::ErrorKind::NotFound,
            format!("none of {names:?} exists beside {}", referrer.display()),
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use vmedia_io::ReadAt;

    #[test]
    fn same_folder_policy_refuses_other_folders() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top.qcow2");
        std::fs::write(&top, b"x").unwrap();
        let opts = OpenOptions::default();
        assert!(check_reference(&top, "base.qcow2", &opts).is_ok());
        assert!(matches!(
            check_reference(&top, "/etc/passwd", &opts),
            Err(DiskError::Reference { .. })
        ));
        assert!(matches!(
            check_reference(&top, "../x.qcow2", &opts),
            Err(DiskError::Reference { .. })
        ));
        let any = OpenOptions {
            references: ReferencePolicy::Any,
            ..OpenOptions::default()
        };
        assert!(check_reference(&top, "/etc/passwd", &any).is_ok());
    }

    #[test]
    fn self_reference_is_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top.qcow2");
        std::fs::write(&top, b"x").unwrap();
        assert!(matches!(
            check_reference(&top, "top.qcow2", &OpenOptions::default()),
            Err(DiskError::BackingLoop { .. })
        ));
        assert!(matches!(
            open_reference_source(&top, "top.qcow2", &OpenOptions::default()),
            Err(DiskError::BackingLoop { .. })
        ));
    }

    #[test]
    fn same_folder_resolver_opens_a_file_beside_the_image_by_either_name() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top.qcow2");
        std::fs::write(dir.path().join("base.qcow2"), b"base").unwrap();
        let resolver = FolderResolver::default();
        for name in ["base.qcow2", "./base.qcow2"] {
            let opened = resolver.open(&top, name).unwrap();
            let mut buf = [0u8; 4];
            opened.source.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(&buf, b"base");
        }
        let absolute = dir.path().join("base.qcow2");
        assert!(resolver.open(&top, absolute.to_str().unwrap()).is_ok());
        let missing = resolver.open(&top, "missing.qcow2").unwrap_err();
        assert!(
            matches!(&missing, DiskError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{missing}"
        );
    }

    #[test]
    fn same_folder_reference_swapped_for_a_symlink_outside_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top.qcow2");
        let base = dir.path().join("base.qcow2");
        std::fs::write(&base, b"base").unwrap();
        let resolver = FolderResolver::default();
        assert!(resolver.open(&top, "base.qcow2").is_ok());
        // The race: between any check of the name and the open, the file becomes a link
        // leading outside the folder. The open itself must refuse it.
        std::fs::remove_file(&base).unwrap();
        std::os::unix::fs::symlink(&secret, &base).unwrap();
        let err = resolver.open(&top, "base.qcow2").unwrap_err();
        assert!(
            matches!(
                err,
                DiskError::Reference {
                    reason: OUTSIDE_THE_FOLDER,
                    ..
                }
            ),
            "{err}"
        );
        // A relative link climbing out is refused the same way.
        std::fs::remove_file(&base).unwrap();
        let climb = PathBuf::from("..")
            .join(outside.path().file_name().unwrap())
            .join("secret");
        std::os::unix::fs::symlink(&climb, &base).unwrap();
        assert!(matches!(
            resolver.open(&top, "base.qcow2"),
            Err(DiskError::Reference { .. })
        ));
    }

    #[test]
    fn nofollow_walk_refuses_links_and_climbing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("file", dir.path().join("link")).unwrap();
        let open_dir = || {
            rustix::fs::open(
                dir.path(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        };
        assert!(walk_nofollow(open_dir(), &[OsStr::new("file")]).is_ok());
        let link = walk_nofollow(open_dir(), &[OsStr::new("link")]).unwrap_err();
        assert!(is_escape(&link), "{link}");
        let climb = walk_nofollow(open_dir(), &[OsStr::new(".."), OsStr::new("file")]).unwrap_err();
        assert!(is_escape(&climb), "{climb}");
    }

    #[test]
    fn no_policy_refuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top.qcow2");
        std::fs::write(dir.path().join("base.qcow2"), b"base").unwrap();
        let resolver = FolderResolver {
            policy: ReferencePolicy::None,
        };
        assert!(matches!(
            resolver.open(&top, "base.qcow2"),
            Err(DiskError::Reference { .. })
        ));
    }
}

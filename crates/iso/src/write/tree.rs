//! Scan stage: host folders, graft points, in-memory and range files become one node tree.
//!
//! Host folders are walked in parallel (rayon), each entry stat-ed once. Names are kept as the
//! host spells them (UTF-8, lossy for other bytes); ISO and Joliet names are made later.
//! Hard links (same device and inode) share one data item.

use super::WriteError;
use crate::spec::{IsoSpec, Matcher};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Index of a node in `Tree::nodes`.
pub(crate) type NodeId = usize;
/// Index of a data item in `Tree::data`.
pub(crate) type DataId = usize;

/// Deepest host folder nesting followed; deeper means a loop or a hostile tree.
const MAX_SCAN_DEPTH: usize = 1024;
/// Longest symbolic link target stored (PATH_MAX on Linux).
const MAX_SYMLINK_TARGET: usize = 4096;

pub(crate) const S_IFMT: u32 = 0o170000;
pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFLNK: u32 = 0o120000;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Meta {
    /// Full st_mode, type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub atime: i64,
    pub ctime: i64,
}

#[derive(Debug)]
pub(crate) enum NodeKind {
    Dir(BTreeMap<String, NodeId>),
    File(DataId),
    Symlink(String),
    /// Block or character device, with its st_rdev.
    Device(u64),
    Fifo,
    Socket,
    /// The El Torito boot catalog, when it is visible in the tree.
    Catalog,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub name: String,
    pub parent: NodeId,
    pub kind: NodeKind,
    pub meta: Meta,
    pub host_path: Option<PathBuf>,
    pub hide_iso: bool,
    pub hide_joliet: bool,
    /// Left out of the HFS+ tree (`-hide-hfsplus`, the EFI image exposed as a partition).
    pub hide_hfsplus: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum DataSource {
    Host(PathBuf),
    Range { path: PathBuf, offset: u64 },
    Mem(Arc<Vec<u8>>),
}

#[derive(Debug)]
pub(crate) struct Data {
    pub source: DataSource,
    pub size: u64,
    /// Names in the tree referring to this data (hard links).
    pub links: u32,
}

#[derive(Debug)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    pub data: Vec<Data>,
}

pub(crate) const ROOT: NodeId = 0;

/// What a parallel host walk returns before it is merged into the arena.
struct Scanned {
    name: String,
    path: PathBuf,
    meta: Meta,
    kind: ScannedKind,
}

enum ScannedKind {
    Dir(Vec<Scanned>),
    File { size: u64, dev: u64, ino: u64 },
    Symlink(String),
    Device(u64),
    Fifo,
    Socket,
}

fn read_err(path: &Path, source: std::io::Error) -> WriteError {
    WriteError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn meta_of(m: &std::fs::Metadata) -> Meta {
    Meta {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        atime: m.atime(),
        ctime: m.ctime(),
    }
}

/// Shell glob match (`*`, `?`, `[...]`, `[!...]`), as mkisofs `-m` uses.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut star_t) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some(pi);
                    star_t = ti;
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some(s) => {
                pi = s + 1;
                star_t += 1;
                ti = star_t;
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches `c` against the bracket class starting at `p[start] == '['`; returns
/// (matched, index after the class) or None when the class is not closed.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

fn normalize_host(path: &Path) -> PathBuf {
    path.components().collect()
}

/// Whether a host entry is excluded by `-m` / `-x`.
fn excluded(excludes: &[Matcher], name: &str, path: &Path) -> bool {
    excludes.iter().any(|m| match m {
        Matcher::Glob(g) => glob_match(g, name) || glob_match(g, &path.to_string_lossy()),
        Matcher::HostPath(p) => normalize_host(p) == normalize_host(path),
        Matcher::IsoPath(_) => false,
    })
}

struct ScanCtx<'a> {
    excludes: &'a [Matcher],
    follow: bool,
}

fn scan_entry(
    ctx: &ScanCtx<'_>,
    path: PathBuf,
    name: String,
    depth: usize,
    ancestors: &[(u64, u64)],
    known: Option<std::fs::Metadata>,
) -> Result<Option<Scanned>, WriteError> {
    let lmeta = match known {
        Some(m) => m,
        None => std::fs::symlink_metadata(&path).map_err(|e| read_err(&path, e))?,
    };
    let meta = if ctx.follow && lmeta.file_type().is_symlink() {
        match std::fs::metadata(&path) {
            Ok(m) => m,
            // A dangling link under -f is kept as a link, as mkisofs does.
            Err(_) => lmeta,
        }
    } else {
        lmeta
    };
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        if depth >= MAX_SCAN_DEPTH {
            return Err(WriteError::InvalidSpec {
                field: "sources",
                reason: format!(
                    "{} is nested more than {MAX_SCAN_DEPTH} folders deep",
                    path.display()
                ),
            });
        }
        let key = (meta.dev(), meta.ino());
        if ancestors.contains(&key) {
            // A link loop under -f: mkisofs skips the repeated folder.
            return Ok(None);
        }
        let mut chain = ancestors.to_vec();
        chain.push(key);
        ScannedKind::Dir(scan_dir(ctx, &path, depth + 1, &chain)?)
    } else if ft.is_file() {
        ScannedKind::File {
            size: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(&path).map_err(|e| read_err(&path, e))?;
        let target = target.to_string_lossy().into_owned();
        if target.len() > MAX_SYMLINK_TARGET {
            return Err(WriteError::InvalidSpec {
                field: "sources",
                reason: format!(
                    "symbolic link {} has a target longer than {MAX_SYMLINK_TARGET} bytes",
                    path.display()
                ),
            });
        }
        ScannedKind::Symlink(target)
    } else if ft.is_block_device() || ft.is_char_device() {
        ScannedKind::Device(meta.rdev())
    } else if ft.is_fifo() {
        ScannedKind::Fifo
    } else {
        ScannedKind::Socket
    };
    Ok(Some(Scanned {
        name,
        path,
        meta: meta_of(&meta),
        kind,
    }))
}

fn scan_dir(
    ctx: &ScanCtx<'_>,
    dir: &Path,
    depth: usize,
    ancestors: &[(u64, u64)],
) -> Result<Vec<Scanned>, WriteError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = dir.join(entry.file_name());
        if excluded(ctx.excludes, &name, &path) {
            continue;
        }
        names.push((name, path, entry));
    }
    // DirEntry::metadata stats relative to the open folder (no path walk per file).
    let scanned: Result<Vec<Option<Scanned>>, WriteError> = names
        .into_par_iter()
        .map(|(name, path, entry)| {
            let meta = entry.metadata().map_err(|e| read_err(&path, e))?;
            scan_entry(ctx, path, name, depth, ancestors, Some(meta))
        })
        .collect();
    Ok(scanned?.into_iter().flatten().collect())
}

/// Splits an absolute ISO path into components, refusing empty, "." and ".." parts.
pub(crate) fn iso_components(iso_path: &str) -> Result<Vec<String>, WriteError> {
    let mut out = Vec::new();
    for part in iso_path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(WriteError::Conflict {
                    iso_path: iso_path.to_string(),
                    reason: "'..' is not allowed in an ISO path".into(),
                })
            }
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}

impl Tree {
    fn new(root_meta: Meta) -> Tree {
        Tree {
            nodes: vec![Node {
                name: String::new(),
                parent: ROOT,
                kind: NodeKind::Dir(BTreeMap::new()),
                meta: root_meta,
                host_path: None,
                hide_iso: false,
                hide_joliet: false,
                hide_hfsplus: false,
            }],
            data: Vec::new(),
        }
    }

    pub fn children(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let list = match &self.nodes[id].kind {
            NodeKind::Dir(c) => Some(c.values().copied()),
            _ => None,
        };
        list.into_iter().flatten()
    }

    pub fn is_dir(&self, id: NodeId) -> bool {
        matches!(self.nodes[id].kind, NodeKind::Dir(_))
    }

    /// ISO path of a node, '/'-separated from the root.
    pub fn path_of(&self, mut id: NodeId) -> String {
        let mut parts = Vec::new();
        while id != ROOT {
            parts.push(self.nodes[id].name.as_str());
            id = self.nodes[id].parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    pub fn lookup(&self, iso_path: &str) -> Option<NodeId> {
        let mut id = ROOT;
        for part in iso_path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            match &self.nodes[id].kind {
                NodeKind::Dir(c) => id = *c.get(part)?,
                _ => return None,
            }
        }
        Some(id)
    }

    /// The folder at `parts`, made (with `dir_meta`) where missing.
    fn ensure_dir(
        &mut self,
        parts: &[String],
        full: &str,
        dir_meta: Meta,
    ) -> Result<NodeId, WriteError> {
        let mut id = ROOT;
        for part in parts {
            let existing = match &self.nodes[id].kind {
                NodeKind::Dir(c) => c.get(part).copied(),
                _ => None,
            };
            id = match existing {
                Some(child) if self.is_dir(child) => child,
                Some(_) => {
                    return Err(WriteError::Conflict {
                        iso_path: full.to_string(),
                        reason: format!("'{part}' is a file in one source and a folder in another"),
                    })
                }
                None => self.add_child(
                    id,
                    part.clone(),
                    NodeKind::Dir(BTreeMap::new()),
                    dir_meta,
                    None,
                ),
            };
        }
        Ok(id)
    }

    fn add_child(
        &mut self,
        parent: NodeId,
        name: String,
        kind: NodeKind,
        meta: Meta,
        host: Option<PathBuf>,
    ) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(Node {
            name: name.clone(),
            parent,
            kind,
            meta,
            host_path: host,
            hide_iso: false,
            hide_joliet: false,
            hide_hfsplus: false,
        });
        if let NodeKind::Dir(c) = &mut self.nodes[parent].kind {
            if let Some(old) = c.insert(name, id) {
                self.detach(old);
            }
        }
        id
    }

    /// Forgets a replaced node's data link count (the node stays in the arena, unreachable).
    fn detach(&mut self, old: NodeId) {
        if let NodeKind::File(d) = self.nodes[old].kind {
            self.data[d].links = self.data[d].links.saturating_sub(1);
        }
    }

    /// Places a non-folder leaf at `parent/name`, replacing a leaf of that name.
    fn put_leaf(
        &mut self,
        parent: NodeId,
        name: String,
        kind: NodeKind,
        meta: Meta,
        host: Option<PathBuf>,
    ) -> Result<NodeId, WriteError> {
        if let NodeKind::Dir(c) = &self.nodes[parent].kind {
            if let Some(&old) = c.get(&name) {
                if self.is_dir(old) {
                    return Err(WriteError::Conflict {
                        iso_path: format!("{}/{name}", self.path_of(parent).trim_end_matches('/')),
                        reason: "a file would replace a folder of the same name".into(),
                    });
                }
            }
        }
        Ok(self.add_child(parent, name, kind, meta, host))
    }

    fn merge(
        &mut self,
        parent: NodeId,
        item: Scanned,
        links: &mut HashMap<(u64, u64), DataId>,
    ) -> Result<(), WriteError> {
        let Scanned {
            name,
            path,
            meta,
            kind,
        } = item;
        match kind {
            ScannedKind::Dir(children) => {
                let existing = match &self.nodes[parent].kind {
                    NodeKind::Dir(c) => c.get(&name).copied(),
                    _ => None,
                };
                let id = match existing {
                    Some(d) if self.is_dir(d) => {
                        self.nodes[d].meta = meta;
                        self.nodes[d].host_path = Some(path);
                        d
                    }
                    Some(_) => {
                        return Err(WriteError::Conflict {
                            iso_path: format!(
                                "{}/{name}",
                                self.path_of(parent).trim_end_matches('/')
                            ),
                            reason: "a folder would replace a file of the same name".into(),
                        })
                    }
                    None => self.add_child(
                        parent,
                        name,
                        NodeKind::Dir(BTreeMap::new()),
                        meta,
                        Some(path),
                    ),
                };
                for child in children {
                    self.merge(id, child, links)?;
                }
            }
            leaf => {
                let kind = match leaf {
                    ScannedKind::File { size, dev, ino } => {
                        let data = match links.get(&(dev, ino)) {
                            Some(&d) => {
                                self.data[d].links += 1;
                                d
                            }
                            None => {
                                self.data.push(Data {
                                    source: DataSource::Host(path.clone()),
                                    size,
                                    links: 1,
                                });
                                let d = self.data.len() - 1;
                                links.insert((dev, ino), d);
                                d
                            }
                        };
                        NodeKind::File(data)
                    }
                    ScannedKind::Symlink(t) => NodeKind::Symlink(t),
                    ScannedKind::Device(r) => NodeKind::Device(r),
                    ScannedKind::Fifo => NodeKind::Fifo,
                    ScannedKind::Socket => NodeKind::Socket,
                    // Folders took the arm above; an empty folder here would be harmless.
                    ScannedKind::Dir(_) => NodeKind::Dir(BTreeMap::new()),
                };
                self.put_leaf(parent, name, kind, meta, Some(path))?;
            }
        }
        Ok(())
    }

    /// Places the boot catalog at `iso_path`.
    pub fn add_catalog(&mut self, iso_path: &str, meta: Meta) -> Result<NodeId, WriteError> {
        let mut parts = iso_components(iso_path)?;
        let Some(name) = parts.pop() else {
            return Err(WriteError::Conflict {
                iso_path: iso_path.into(),
                reason: "the boot catalog cannot be the root".into(),
            });
        };
        let dir_meta = Meta {
            mode: S_IFDIR | 0o755,
            ..meta
        };
        let parent = self.ensure_dir(&parts, iso_path, dir_meta)?;
        self.put_leaf(parent, name, NodeKind::Catalog, meta, None)
    }

    /// Adds a data item that no name refers to (a boot image given as bytes).
    pub fn add_hidden_data(&mut self, data: Vec<u8>) -> DataId {
        let size = data.len() as u64;
        self.data.push(Data {
            source: DataSource::Mem(Arc::new(data)),
            size,
            links: 0,
        });
        self.data.len() - 1
    }

    fn add_data_file(
        &mut self,
        iso_path: &str,
        source: DataSource,
        size: u64,
        meta: Meta,
    ) -> Result<NodeId, WriteError> {
        let mut parts = iso_components(iso_path)?;
        let Some(name) = parts.pop() else {
            return Err(WriteError::Conflict {
                iso_path: iso_path.into(),
                reason: "a file cannot be the root".into(),
            });
        };
        let dir_meta = Meta {
            mode: S_IFDIR | 0o755,
            ..meta
        };
        let parent = self.ensure_dir(&parts, iso_path, dir_meta)?;
        self.data.push(Data {
            source,
            size,
            links: 1,
        });
        let d = self.data.len() - 1;
        self.put_leaf(parent, name, NodeKind::File(d), meta, None)
    }
}

impl Tree {
    /// Places another name for data item `d` (a hard link) at `iso_path`.
    fn add_link(&mut self, iso_path: &str, d: DataId, meta: Meta) -> Result<NodeId, WriteError> {
        let mut parts = iso_components(iso_path)?;
        let Some(name) = parts.pop() else {
            return Err(WriteError::Conflict {
                iso_path: iso_path.into(),
                reason: "a file cannot be the root".into(),
            });
        };
        let dir_meta = Meta {
            mode: S_IFDIR | 0o755,
            ..meta
        };
        let parent = self.ensure_dir(&parts, iso_path, dir_meta)?;
        self.data[d].links += 1;
        self.put_leaf(parent, name, NodeKind::File(d), meta, None)
    }
}

/// Builds the node tree for `spec`.
pub(crate) fn build(spec: &IsoSpec, now: i64) -> Result<Tree, WriteError> {
    let default_meta = Meta {
        mode: S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        mtime: now,
        atime: now,
        ctime: now,
    };
    let mut tree = Tree::new(default_meta);
    let ctx = ScanCtx {
        excludes: &spec.excludes,
        follow: spec.follow_symlinks,
    };
    let mut links: HashMap<(u64, u64), DataId> = HashMap::new();
    // Scan every graft in parallel, then merge in option order so later grafts win.
    let scanned: Vec<Result<Option<Scanned>, WriteError>> = spec
        .sources
        .par_iter()
        .map(|g| {
            let name = g
                .host_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            scan_entry(&ctx, g.host_path.clone(), name, 0, &[], None)
        })
        .collect();
    for (graft, item) in spec.sources.iter().zip(scanned) {
        let Some(item) = item? else { continue };
        let mut parts = iso_components(&graft.iso_path)?;
        if let ScannedKind::Dir(children) = item.kind {
            let dir = tree.ensure_dir(&parts, &graft.iso_path, default_meta)?;
            if dir != ROOT || tree.nodes[ROOT].host_path.is_none() {
                tree.nodes[dir].meta = item.meta;
                tree.nodes[dir].host_path = Some(item.path.clone());
            }
            for child in children {
                tree.merge(dir, child, &mut links)?;
            }
            continue;
        }
        let mut leaf = item;
        if !graft.iso_path.ends_with('/') {
            match parts.pop() {
                Some(name) => leaf.name = name,
                None => {
                    return Err(WriteError::Conflict {
                        iso_path: graft.iso_path.clone(),
                        reason: format!(
                            "{} is not a folder and cannot be the root",
                            graft.host_path.display()
                        ),
                    })
                }
            }
        }
        let parent = tree.ensure_dir(&parts, &graft.iso_path, default_meta)?;
        tree.merge(parent, leaf, &mut links)?;
    }
    for mem in &spec.mem_files {
        let t = mem.mtime.unwrap_or(now);
        let meta = Meta {
            mode: S_IFREG | (mem.mode & 0o7777),
            uid: 0,
            gid: 0,
            mtime: t,
            atime: t,
            ctime: t,
        };
        tree.add_data_file(
            &mem.iso_path,
            DataSource::Mem(Arc::new(mem.data.clone())),
            mem.data.len() as u64,
            meta,
        )?;
    }
    let mut range_links: HashMap<(PathBuf, u64, u64), DataId> = HashMap::new();
    for range in &spec.range_files {
        let t = range.mtime.unwrap_or(now);
        let meta = Meta {
            mode: S_IFREG | (range.mode & 0o7777),
            uid: 0,
            gid: 0,
            mtime: t,
            atime: t,
            ctime: t,
        };
        // Ranges of one host file with the same offset and length were hard links in the
        // image being repacked: they share one extent and inode again. Empty files never do
        // (every empty file of an ISO has the same "extent").
        let key = (range.host_path.clone(), range.offset, range.length);
        if range.length > 0 {
            if let Some(&d) = range_links.get(&key) {
                tree.add_link(&range.iso_path, d, meta)?;
                continue;
            }
        }
        let source = DataSource::Range {
            path: range.host_path.clone(),
            offset: range.offset,
        };
        let node = tree.add_data_file(&range.iso_path, source, range.length, meta)?;
        if range.length > 0 {
            if let NodeKind::File(d) = tree.nodes[node].kind {
                range_links.insert(key, d);
            }
        }
    }
    apply_hide(&mut tree, spec);
    Ok(tree)
}

fn apply_hide(tree: &mut Tree, spec: &IsoSpec) {
    if spec.hide.is_empty() {
        return;
    }
    for id in 1..tree.nodes.len() {
        let iso_path = tree.path_of(id);
        for hide in &spec.hide {
            let hit = match &hide.matcher {
                Matcher::IsoPath(p) => {
                    let want = format!("/{}", p.trim_start_matches('/'));
                    want.trim_end_matches('/') == iso_path
                }
                Matcher::HostPath(p) => {
                    tree.nodes[id].host_path.as_deref().map(normalize_host)
                        == Some(normalize_host(p))
                }
                Matcher::Glob(g) => {
                    glob_match(g, &tree.nodes[id].name)
                        || glob_match(g, &iso_path)
                        || tree.nodes[id]
                            .host_path
                            .as_ref()
                            .is_some_and(|h| glob_match(g, &h.to_string_lossy()))
                }
            };
            if hit {
                match hide.tree {
                    crate::spec::HideTree::Iso9660 => tree.nodes[id].hide_iso = true,
                    crate::spec::HideTree::Joliet => tree.nodes[id].hide_joliet = true,
                    crate::spec::HideTree::HfsPlus => tree.nodes[id].hide_hfsplus = true,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_supports_star_question_and_classes() {
        assert!(glob_match("*.o", "main.o"));
        assert!(!glob_match("*.o", "main.c"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("[abc]x", "bx"));
        assert!(!glob_match("[!abc]x", "bx"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
    }

    #[test]
    fn dot_dot_in_iso_path_is_refused() {
        assert!(iso_components("/a/../b").is_err());
        assert_eq!(iso_components("/a//b/").unwrap(), vec!["a", "b"]);
    }
}

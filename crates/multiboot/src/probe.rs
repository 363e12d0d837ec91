//! Reads an ISO (with vmedia's ISO reader) to decide how the menu boots it: its own
//! `loopback.cfg`, else the kernel, initrd and arguments its isolinux or GRUB config names
//! (with the Debian live or Ubuntu casper argument that tells the system where its ISO is),
//! else the kernels found where those distributions keep them.

use std::sync::Arc;

use vmedia_io::ReadAt;
use vmedia_iso::read::{IsoImage, OpenOptions};

use crate::record::{BootMethod, Convention};
use crate::MultibootError;

/// Boot configs are a few KiB; a larger one is not a config (and is not read into memory).
const MAX_CONFIG_BYTES: u64 = 256 * 1024;
/// syslinux `include` chains (Debian: isolinux.cfg → menu.cfg → live.cfg) stay shallow; the
/// bound also stops include loops.
const MAX_CONFIG_FILES: usize = 16;
/// Kernel arguments kept from one config line.
const MAX_ARGS: usize = 64;

/// GRUB's loopback convention: a config written for booting the ISO as a file.
const LOOPBACK_CFG: &str = "/boot/grub/loopback.cfg";
const GRUB_CONFIGS: &[&str] = &[
    "/boot/grub/grub.cfg",
    "/EFI/BOOT/grub.cfg",
    "/boot/grub2/grub.cfg",
];
const SYSLINUX_CONFIGS: &[&str] = &[
    "/isolinux/isolinux.cfg",
    "/boot/isolinux/isolinux.cfg",
    "/isolinux.cfg",
    "/syslinux/syslinux.cfg",
    "/boot/syslinux/syslinux.cfg",
    "/syslinux.cfg",
];
/// Where distributions without a usable config keep their kernels: (folder, kernel prefix,
/// initrd prefix).
const KNOWN_KERNEL_DIRS: &[(&str, &str, &str)] = &[
    ("/live", "vmlinuz", "initrd"),
    ("/casper", "vmlinuz", "initrd"),
];

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub volume_id: Option<String>,
    pub boot: BootMethod,
}

/// A kernel line found in a config, paths absolute within the ISO.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelLine {
    pub kernel: String,
    pub initrd: Vec<String>,
    pub args: Vec<String>,
}

pub fn probe(source: Arc<dyn ReadAt>, what: &std::path::Path) -> Result<Probe, MultibootError> {
    let iso = IsoImage::open(source, OpenOptions::default()).map_err(|e| {
        MultibootError::NotBootable {
            path: what.to_path_buf(),
            problem: format!("not a readable ISO 9660 image: {e}"),
        }
    })?;
    let volume_id =
        Some(iso.volume().primary.volume_id.trim().to_string()).filter(|v| !v.is_empty());
    if is_file(&iso, LOOPBACK_CFG) {
        return Ok(Probe {
            volume_id,
            boot: BootMethod::LoopbackCfg {
                path: LOOPBACK_CFG.into(),
            },
        });
    }
    let mut candidates = Vec::new();
    for cfg in GRUB_CONFIGS {
        if let Some(text) = read_text(&iso, cfg) {
            candidates.extend(parse_grub(&text));
        }
    }
    for cfg in SYSLINUX_CONFIGS {
        candidates.extend(syslinux_entries(&iso, cfg));
    }
    for dir in KNOWN_KERNEL_DIRS {
        candidates.extend(known_layout(&iso, dir));
    }
    for line in candidates {
        if !is_file(&iso, &line.kernel) || !line.initrd.iter().all(|i| is_file(&iso, i)) {
            continue;
        }
        let convention = convention_of(&line);
        return Ok(Probe {
            volume_id,
            boot: BootMethod::Kernel {
                kernel: line.kernel,
                initrd: line.initrd,
                args: line.args,
                convention,
            },
        });
    }
    Err(MultibootError::NotBootable {
        path: what.to_path_buf(),
        problem: format!(
            "no {LOOPBACK_CFG}, no Linux kernel named by its GRUB or isolinux config, and none under /live or /casper"
        ),
    })
}

fn is_file(iso: &IsoImage, path: &str) -> bool {
    iso.lookup_follow(path).is_ok_and(|e| e.is_file())
}

fn read_text(iso: &IsoImage, path: &str) -> Option<String> {
    let entry = iso.lookup_follow(path).ok()?;
    if !entry.is_file() || entry.size > MAX_CONFIG_BYTES {
        return None;
    }
    let reader = iso.file_reader(&entry).ok()?;
    let mut buf = vec![0u8; entry.size as usize];
    let mut done = 0;
    while done < buf.len() {
        match reader.read_at(&mut buf[done..], done as u64) {
            Ok(0) | Err(_) => return None,
            Ok(n) => done += n,
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn convention_of(line: &KernelLine) -> Convention {
    let has = |arg: &str| line.args.iter().any(|a| a == arg);
    if line.kernel.starts_with("/live/") || has("boot=live") {
        Convention::DebianLive
    } else if line.kernel.starts_with("/casper/") || has("boot=casper") {
        Convention::Casper
    } else {
        Convention::Plain
    }
}

/// A path GRUB and the kernel command line take without quoting.
fn safe_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains("..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/+-~".contains(&b))
}

/// Arguments kept from the ISO's config: only plain tokens (no GRUB variables or quoting),
/// without the ones this menu sets itself (initrd, where the ISO is).
fn keep_args<'a>(tokens: impl Iterator<Item = &'a str>) -> Vec<String> {
    tokens
        .filter(|t| {
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._,:=/+@%~-".contains(&b))
        })
        .filter(|t| {
            ![
                "initrd=",
                "findiso=",
                "iso-scan/filename=",
                "BOOT_IMAGE=",
                "iso_path=",
            ]
            .iter()
            .any(|p| t.starts_with(p))
        })
        .take(MAX_ARGS)
        .map(str::to_string)
        .collect()
}

/// Strips a GRUB device prefix such as `($root)` or `(cd0)`.
fn grub_path(p: &str) -> String {
    match p.strip_prefix('(').and_then(|r| r.split_once(')')) {
        Some((_, rest)) => rest.to_string(),
        None => p.to_string(),
    }
}

/// Kernel lines of a GRUB config's menu entries, in order.
pub fn parse_grub(text: &str) -> Vec<KernelLine> {
    let mut out = Vec::new();
    let mut current: Option<KernelLine> = None;
    for raw in text.lines() {
        let line = raw.trim();
        let mut words = line.split_whitespace();
        let Some(cmd) = words.next() else { continue };
        match cmd {
            "menuentry" => {
                if let Some(k) = current.take().filter(|k| !k.kernel.is_empty()) {
                    out.push(k);
                }
                current = Some(KernelLine::default());
            }
            "linux" | "linuxefi" | "linux16" => {
                if let (Some(k), Some(path)) = (current.as_mut(), words.next()) {
                    let path = grub_path(path);
                    if safe_path(&path) {
                        k.kernel = path;
                        k.args = keep_args(words);
                    }
                }
            }
            "initrd" | "initrdefi" | "initrd16" => {
                if let Some(k) = current.as_mut() {
                    k.initrd = words.map(grub_path).filter(|p| safe_path(p)).collect();
                }
            }
            _ => {}
        }
    }
    if let Some(k) = current.filter(|k| !k.kernel.is_empty()) {
        out.push(k);
    }
    out
}

/// A syslinux label as read.
#[derive(Debug, Default)]
struct Label {
    kernel: String,
    append: String,
    initrd: Option<String>,
    is_default: bool,
    name: String,
}

/// Entries of a syslinux config and the files it includes, the default label first.
fn syslinux_entries(iso: &IsoImage, path: &str) -> Vec<KernelLine> {
    let mut labels = Vec::new();
    let mut default = None;
    let mut queue = vec![path.to_string()];
    let mut seen = 0;
    while let Some(file) = queue.pop() {
        seen += 1;
        if seen > MAX_CONFIG_FILES {
            break;
        }
        let Some(text) = read_text(iso, &file) else {
            continue;
        };
        let dir = file.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let (mut found, includes, file_default) = parse_syslinux(&text, &dir);
        labels.append(&mut found);
        default = default.or(file_default);
        queue.extend(includes.into_iter().rev());
    }
    let mut lines: Vec<(bool, KernelLine)> = labels
        .into_iter()
        .filter(|l| !l.kernel.is_empty())
        .filter(|l| {
            let k = l.kernel.to_ascii_lowercase();
            ![".c32", ".com", ".0", ".bin", ".bss"]
                .iter()
                .any(|x| k.ends_with(x))
        })
        .map(|l| {
            let mut initrd: Vec<String> = l.initrd.iter().cloned().collect();
            for token in l.append.split_whitespace() {
                if let Some(list) = token.strip_prefix("initrd=") {
                    initrd.extend(list.split(',').map(|p| absolute(&p.to_string(), "")));
                }
            }
            let preferred = l.is_default || default.as_deref() == Some(l.name.as_str());
            (
                preferred,
                KernelLine {
                    kernel: l.kernel,
                    initrd: initrd.into_iter().filter(|p| safe_path(p)).collect(),
                    args: keep_args(l.append.split_whitespace()),
                },
            )
        })
        .filter(|(_, k)| safe_path(&k.kernel))
        .collect();
    lines.sort_by_key(|(preferred, _)| !preferred);
    lines.into_iter().map(|(_, k)| k).collect()
}

fn absolute(p: &String, dir: &str) -> String {
    if p.starts_with('/') {
        p.clone()
    } else {
        format!("{dir}/{p}")
    }
}

/// Parses one syslinux file: its labels, the files it includes, its `default` label.
fn parse_syslinux(text: &str, dir: &str) -> (Vec<Label>, Vec<String>, Option<String>) {
    let mut labels: Vec<Label> = Vec::new();
    let mut includes = Vec::new();
    let mut default = None;
    for raw in text.lines() {
        let line = raw.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let word = word.to_ascii_lowercase();
        match word.as_str() {
            "label" => labels.push(Label {
                name: rest.to_string(),
                ..Label::default()
            }),
            "kernel" | "linux" => {
                if let Some(l) = labels.last_mut() {
                    let path = rest.split_whitespace().next().unwrap_or("").to_string();
                    l.kernel = absolute(&path, dir);
                }
            }
            "append" => {
                if let Some(l) = labels.last_mut() {
                    l.append = rest.to_string();
                }
            }
            "initrd" => {
                if let Some(l) = labels.last_mut() {
                    l.initrd = Some(absolute(&rest.to_string(), dir));
                }
            }
            "default" => default = Some(rest.to_string()),
            "include" => includes.push(absolute(&rest.to_string(), dir)),
            "menu" => {
                let sub: Vec<&str> = rest.split_whitespace().collect();
                match sub.as_slice() {
                    ["default"] => {
                        if let Some(l) = labels.last_mut() {
                            l.is_default = true;
                        }
                    }
                    ["include", file, ..] => includes.push(absolute(&file.to_string(), dir)),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    (labels, includes, default)
}

/// A kernel and initrd where Debian live (`/live`) or Ubuntu (`/casper`) keep them.
fn known_layout(
    iso: &IsoImage,
    (dir, kernel_prefix, initrd_prefix): &(&str, &str, &str),
) -> Option<KernelLine> {
    let entry = iso.lookup_follow(dir).ok()?;
    let mut names: Vec<String> = iso
        .read_dir(&entry)
        .ok()?
        .into_iter()
        .filter(|e| e.is_file())
        .map(|e| e.name)
        .collect();
    names.sort();
    let kernel = names.iter().find(|n| n.starts_with(kernel_prefix))?;
    let initrd = names.iter().find(|n| n.starts_with(initrd_prefix))?;
    Some(KernelLine {
        kernel: format!("{dir}/{kernel}"),
        initrd: vec![format!("{dir}/{initrd}")],
        args: if *dir == "/live" {
            vec!["boot=live".into()]
        } else {
            vec!["boot=casper".into()]
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_entries_give_kernel_initrd_and_plain_args() {
        let cfg = "set timeout=5\nmenuentry 'Live' {\n  linux ($root)/live/vmlinuz boot=live quiet findiso=${iso_path} 'x y'\n  initrd /live/initrd.img\n}\nmenuentry 'Other' {\n linux /boot/k\n}\n";
        let lines = parse_grub(cfg);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].kernel, "/live/vmlinuz");
        assert_eq!(lines[0].initrd, vec!["/live/initrd.img"]);
        assert_eq!(lines[0].args, vec!["boot=live", "quiet"]);
        assert_eq!(convention_of(&lines[0]), Convention::DebianLive);
        assert_eq!(convention_of(&lines[1]), Convention::Plain);
    }

    #[test]
    fn syslinux_labels_take_initrd_from_append_and_the_default_first() {
        let cfg = "DEFAULT two\nLABEL one\n KERNEL vmlinuz\n APPEND initrd=initrd.gz quiet\nLABEL two\n KERNEL /casper/vmlinuz\n APPEND initrd=/casper/initrd boot=casper ---\nLABEL menu\n KERNEL vesamenu.c32\n";
        let (labels, includes, default) = parse_syslinux(cfg, "/isolinux");
        assert_eq!(labels.len(), 3);
        assert!(includes.is_empty());
        assert_eq!(default.as_deref(), Some("two"));
        assert_eq!(labels[0].kernel, "/isolinux/vmlinuz");
    }

    #[test]
    fn unsafe_paths_and_arguments_are_dropped() {
        assert!(!safe_path("/a b"));
        assert!(!safe_path("/../etc"));
        assert!(!safe_path("relative"));
        assert_eq!(
            keep_args(["a;reboot", "ok=1", "${x}", "initrd=/i"].into_iter()),
            vec!["ok=1"]
        );
    }
}

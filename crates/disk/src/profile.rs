//! Target profiles (ESXi/vSphere, Azure, Hyper-V): the fields those targets check, and why an image would be refused.
//!
//! How the converter uses this module (`vmedia disk convert --target esxi|azure|hyperv`):
//!
//! ```text
//! let target = Target::from_name("azure")?;           // unknown names list the known ones
//! let mut opts = CreateOptions::new(Format::Raw, source.virtual_size());
//! opts.options = user's -o options;                    // explicit user options win
//! profile::apply(target, &mut opts)?;                  // sets format, subformat, sizes
//! let writer = factory::create(out, &opts)?; ... finish
//! let problems = profile::check_target(out_image.as_ref(), target);  // must be empty
//! ```
//!
//! `check_target` re-reads the structures the target validates straight from the image's file
//! (a `DiskImage` does not expose format internals), so it also judges images vmedia did not
//! write, e.g. a qemu-img streamOptimized VMDK that vSphere refuses.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{DiskError, Result};
use crate::image::{CreateOptions, DiskImage, Format};
use crate::vmdk::descriptor::Descriptor;
use crate::vmdk::header::{self as vmdk_header, SparseHeader};

const MIB: u64 = 1 << 20;
/// Largest VHD Azure accepts as a page blob disk image: the VHD format's own 2040 GiB limit.
pub const AZURE_MAX_SIZE: u64 = 2040 << 30;
/// vSphere's largest virtual disk (62 TiB).
pub const ESXI_MAX_SIZE: u64 = 62 << 40;
/// Adapter types an ESXi VM can attach a disk to (ddb.adapterType values vSphere accepts).
pub const ESXI_ADAPTERS: [&str; 5] = ["lsilogic", "pvscsi", "buslogic", "lsisas1068", "ide"];

/// A platform the image is meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// VMware ESXi / vSphere (OVF import, ovftool, Content Library): streamOptimized VMDK.
    Esxi,
    /// Microsoft Azure: fixed VHD, size a whole number of MiB, footer size exact.
    Azure,
    /// Microsoft Hyper-V: VHDX, 32 MiB blocks, 4 KiB physical sectors, 1 MiB alignment.
    HyperV,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Esxi, Target::Azure, Target::HyperV];

    pub fn from_name(name: &str) -> Result<Target> {
        match name.to_ascii_lowercase().as_str() {
            "esxi" | "vsphere" | "vmware" => Ok(Target::Esxi),
            "azure" => Ok(Target::Azure),
            "hyperv" | "hyper-v" => Ok(Target::HyperV),
            _ => Err(DiskError::InvalidOption {
                key: "target".into(),
                value: name.into(),
                reason: "known targets: esxi (alias vsphere), azure, hyperv (alias hyper-v)".into(),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Esxi => "esxi",
            Target::Azure => "azure",
            Target::HyperV => "hyperv",
        }
    }

    /// The format the target takes.
    pub fn format(self) -> Format {
        match self {
            Target::Esxi => Format::Vmdk,
            Target::Azure => Format::Vhd,
            Target::HyperV => Format::Vhdx,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Turns `opts` into what `target` needs: format, subformat and fields, and the size rule.
/// Options the user set explicitly are kept when the target allows them (e.g. an ESXi
/// `adapter_type=pvscsi`, a Hyper-V `block_size`) and refused when it does not.
pub fn apply(target: Target, opts: &mut CreateOptions) -> Result<()> {
    if opts.format != Format::Raw && opts.format != target.format() {
        return Err(DiskError::InvalidOption {
            key: "target".into(),
            value: target.name().into(),
            reason: format!(
                "{target} takes {} images, not {}",
                target.format(),
                opts.format
            ),
        });
    }
    opts.format = target.format();
    let require = |options: &mut std::collections::BTreeMap<String, String>,
                   key: &str,
                   value: &str|
     -> Result<()> {
        match options.get(key) {
            Some(v) if v != value => Err(DiskError::InvalidOption {
                key: key.into(),
                value: v.clone(),
                reason: format!("the {target} target needs {key}={value}"),
            }),
            _ => {
                options.insert(key.into(), value.into());
                Ok(())
            }
        }
    };
    match target {
        Target::Esxi => {
            require(&mut opts.options, "subformat", "streamOptimized")?;
            let adapter = opts
                .options
                .entry("adapter_type".into())
                .or_insert_with(|| "lsilogic".into())
                .clone();
            if !ESXI_ADAPTERS.contains(&adapter.as_str()) {
                return Err(DiskError::InvalidOption {
                    key: "adapter_type".into(),
                    value: adapter,
                    reason: format!("ESXi takes {}", ESXI_ADAPTERS.join(", ")),
                });
            }
            opts.options
                .entry("hwversion".into())
                .or_insert_with(|| "4".into());
            opts.options
                .entry("toolsversion".into())
                .or_insert_with(|| "2147483647".into());
            if opts.backing.is_some() {
                return Err(DiskError::InvalidOption {
                    key: "backing_file".into(),
                    value: String::new(),
                    reason: "an ESXi import disk is self-contained (no parent)".into(),
                });
            }
            if opts.virtual_size > ESXI_MAX_SIZE {
                return Err(DiskError::InvalidOption {
                    key: "size".into(),
                    value: opts.virtual_size.to_string(),
                    reason: "vSphere disks are limited to 62 TiB".into(),
                });
            }
        }
        Target::Azure => {
            require(&mut opts.options, "subformat", "fixed")?;
            require(&mut opts.options, "force_size", "on")?;
            opts.virtual_size = opts.virtual_size.div_ceil(MIB).max(1) * MIB;
            if opts.virtual_size > AZURE_MAX_SIZE {
                return Err(DiskError::InvalidOption {
                    key: "size".into(),
                    value: opts.virtual_size.to_string(),
                    reason: "a VHD is limited to 2040 GiB".into(),
                });
            }
            if opts.backing.is_some() {
                return Err(DiskError::InvalidOption {
                    key: "backing_file".into(),
                    value: String::new(),
                    reason: "Azure takes fixed VHDs only".into(),
                });
            }
        }
        Target::HyperV => {
            opts.options
                .entry("subformat".into())
                .or_insert_with(|| "dynamic".into());
            opts.options
                .entry("block_size".into())
                .or_insert_with(|| (32 * MIB).to_string());
            require(&mut opts.options, "physical_sector_size", "4096")?;
            opts.options
                .entry("logical_sector_size".into())
                .or_insert_with(|| "512".into());
            opts.virtual_size = opts.virtual_size.div_ceil(MIB).max(1) * MIB;
        }
    }
    Ok(())
}

/// Why a target would refuse an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The field or structure at fault ("createType", "footer current size", ...).
    pub field: String,
    pub message: String,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// The answer of `vmedia disk check --target`: what `target` would refuse in one image.
///
/// Serializes as the CLI's JSON document (keys in alphabetical order, as the document has
/// always been printed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetReport {
    /// True when `problems` is empty.
    pub accepted: bool,
    /// The image checked, as it was named.
    pub filename: PathBuf,
    pub problems: Vec<Problem>,
    /// The target's name ("esxi", "azure", "hyperv").
    pub target: &'static str,
}

impl TargetReport {
    /// Checks `image` against `target`.
    pub fn new(image: &dyn DiskImage, target: Target) -> TargetReport {
        let problems = check_target(image, target);
        TargetReport {
            accepted: problems.is_empty(),
            filename: image.path().to_path_buf(),
            problems,
            target: target.name(),
        }
    }
}

/// Everything in `image` that `target` would refuse; empty when the image fits.
pub fn check_target(image: &dyn DiskImage, target: Target) -> Vec<Problem> {
    let mut problems = Vec::new();
    if image.format() != target.format() {
        problems.push(problem(
            "format",
            format!(
                "{target} takes {} images; this is {}",
                target.format(),
                image.format()
            ),
        ));
        return problems;
    }
    if image.backing_ref().is_some() {
        problems.push(problem("parent", format!("{target} imports self-contained disks; this one has a parent: convert it without -B first")));
    }
    match target {
        Target::Esxi => check_esxi(image, &mut problems),
        Target::Azure => check_azure(image, &mut problems),
        Target::HyperV => check_hyperv(image, &mut problems),
    }
    problems
}

fn read_head(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len().min(len as u64) as usize;
    let mut buf = vec![0u8; size];
    f.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

fn read_tail(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let len = len.min(size);
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, size - len)?;
    Ok(buf)
}

fn check_esxi(image: &dyn DiskImage, problems: &mut Vec<Problem>) {
    let path = image.path();
    let head = match read_head(path, 512) {
        Ok(h) if h.len() == 512 => h,
        _ => {
            problems.push(problem("file", "cannot read the sparse header"));
            return;
        }
    };
    let mut bytes = [0u8; 512];
    bytes.copy_from_slice(&head);
    let header = match SparseHeader::parse(&bytes) {
        Ok(h) => h,
        Err(_) => {
            problems.push(problem("createType", "not a streamOptimized VMDK: vSphere imports need one file with a sparse header (convert with --target esxi)"));
            return;
        }
    };
    if header.version != 3 {
        problems.push(problem(
            "header version",
            format!("{} (streamOptimized needs 3)", header.version),
        ));
    }
    if !header.is_compressed() || !header.has_markers() {
        problems.push(problem(
            "header flags",
            format!(
                "{:#x} lacks compressed grains (bit 16) or markers (bit 17)",
                header.flags
            ),
        ));
    }
    if header.flags & vmdk_header::FLAG_REDUNDANT_GT != 0 {
        problems.push(problem("header flags", "redundant grain table bit set: a stream has no redundant tables (qemu-img writes this; vSphere refuses)"));
    }
    if header.gd_offset != vmdk_header::GD_AT_END {
        problems.push(problem("gdOffset", format!("first header holds {:#x}; VMware streams put GD_AT_END there and the real offset in the footer (qemu-img's layout is refused)", header.gd_offset)));
    }
    if header.grain_size != 128 {
        problems.push(problem(
            "grainSize",
            format!("{} sectors (VMware uses 128)", header.grain_size),
        ));
    }
    match read_tail(path, 1536) {
        Ok(t) if t.len() == 1536 => {
            let footer_marker = vmdk_header::Marker::parse(&t[..512]);
            let eos = vmdk_header::Marker::parse(&t[1024..]);
            if footer_marker
                != Some(vmdk_header::Marker::Metadata {
                    sectors: 1,
                    kind: vmdk_header::MARKER_FOOTER,
                })
            {
                problems.push(problem("footer", "no footer marker before the last 1 KiB"));
            }
            if eos
                != Some(vmdk_header::Marker::Metadata {
                    sectors: 0,
                    kind: vmdk_header::MARKER_EOS,
                })
                || t[1024..].iter().any(|b| *b != 0)
            {
                problems.push(problem(
                    "end-of-stream marker",
                    "the file does not end with a zero end-of-stream marker",
                ));
            }
        }
        _ => problems.push(problem("footer", "file too short for a footer")),
    }
    let desc_at = (header.descriptor_offset * 512) as usize;
    let desc_len = (header.descriptor_size * 512) as usize;
    let descriptor = read_head(path, desc_at + desc_len.min(1 << 20))
        .ok()
        .and_then(|b| b.get(desc_at..).map(Descriptor::parse))
        .and_then(|r| r.ok());
    let Some(d) = descriptor else {
        problems.push(problem("descriptor", "no embedded descriptor"));
        return;
    };
    if d.create_type() != Some("streamOptimized") {
        problems.push(problem(
            "createType",
            format!(
                "{:?} (needs streamOptimized)",
                d.create_type().unwrap_or("")
            ),
        ));
    }
    match d.get("ddb.adapterType") {
        Some(a) if ESXI_ADAPTERS.contains(&a) => {}
        other => problems.push(problem(
            "ddb.adapterType",
            format!("{other:?} is not one of {}", ESXI_ADAPTERS.join(", ")),
        )),
    }
    if d.get("ddb.virtualHWVersion")
        .and_then(|v| v.parse::<u32>().ok())
        .is_none()
    {
        problems.push(problem("ddb.virtualHWVersion", "missing or not a number"));
    }
    for key in [
        "ddb.geometry.cylinders",
        "ddb.geometry.heads",
        "ddb.geometry.sectors",
    ] {
        if d.get(key).and_then(|v| v.parse::<u64>().ok()).is_none() {
            problems.push(problem(key, "missing or not a number"));
        }
    }
    if image.virtual_size() > ESXI_MAX_SIZE {
        problems.push(problem("capacity", "over vSphere's 62 TiB"));
    }
}

fn check_azure(image: &dyn DiskImage, problems: &mut Vec<Problem>) {
    let path = image.path();
    let size = image.virtual_size();
    let Ok(tail) = read_tail(path, 512) else {
        problems.push(problem("footer", "cannot read the footer"));
        return;
    };
    let mut bytes = [0u8; 512];
    if tail.len() != 512 {
        problems.push(problem("footer", "file too short"));
        return;
    }
    bytes.copy_from_slice(&tail);
    let Ok(footer) = crate::vhd::footer::Footer::parse(&bytes) else {
        problems.push(problem(
            "disk type",
            "not a fixed VHD (no footer at the end of the file): Azure takes fixed VHDs only",
        ));
        return;
    };
    if footer.disk_type != crate::vhd::footer::DiskType::Fixed {
        problems.push(problem(
            "disk type",
            format!("{} (Azure takes fixed VHDs only)", footer.disk_type.name()),
        ));
    }
    if footer.current_size % MIB != 0 {
        problems.push(problem(
            "footer current size",
            format!("{} bytes is not a whole number of MiB", footer.current_size),
        ));
    }
    if footer.current_size != size {
        problems.push(problem(
            "footer current size",
            format!(
                "{} bytes but readers that size by CHS see {size}: write it with force_size=on",
                footer.current_size
            ),
        ));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.len() != footer.current_size + 512 {
            problems.push(problem(
                "file size",
                format!(
                    "{} bytes; a fixed VHD is exactly its size plus the 512-byte footer ({})",
                    meta.len(),
                    footer.current_size + 512
                ),
            ));
        }
    }
    if footer.current_size > AZURE_MAX_SIZE {
        problems.push(problem(
            "footer current size",
            "over the 2040 GiB VHD limit",
        ));
    }
}

fn check_hyperv(image: &dyn DiskImage, problems: &mut Vec<Problem>) {
    let info = match image.info() {
        Ok(i) => i,
        Err(e) => {
            problems.push(problem("metadata", e.to_string()));
            return;
        }
    };
    let data = info
        .format_specific
        .as_ref()
        .map(|f| f["data"].clone())
        .unwrap_or_default();
    if data["log-replayed-entries"].as_u64().unwrap_or(0) > 0 {
        problems.push(problem("log", "the log holds unreplayed entries: open the image writable once (qemu-img check -r all) before shipping it"));
    }
    let block = data["block-size"].as_u64().unwrap_or(0);
    if block == 0 || block % MIB != 0 {
        problems.push(problem(
            "block size",
            format!("{block} is not a whole number of MiB"),
        ));
    }
    if !image.virtual_size().is_multiple_of(u64::from(
        data["logical-sector-size"].as_u64().unwrap_or(512) as u32,
    )) {
        problems.push(problem(
            "virtual disk size",
            "not a multiple of the logical sector size",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_rounds_up_to_whole_mib_and_forces_the_size() {
        let mut o = CreateOptions::new(Format::Raw, 10 * MIB + 1);
        apply(Target::Azure, &mut o).unwrap();
        assert_eq!(o.format, Format::Vhd);
        assert_eq!(o.virtual_size, 11 * MIB);
        assert_eq!(o.options["subformat"], "fixed");
        assert_eq!(o.options["force_size"], "on");
    }

    #[test]
    fn esxi_defaults_to_lsilogic_stream() {
        let mut o = CreateOptions::new(Format::Raw, MIB);
        apply(Target::Esxi, &mut o).unwrap();
        assert_eq!(o.options["subformat"], "streamOptimized");
        assert_eq!(o.options["adapter_type"], "lsilogic");
    }

    #[test]
    fn esxi_keeps_pvscsi_and_refuses_an_unknown_adapter() {
        let mut o = CreateOptions::new(Format::Raw, MIB);
        o.options.insert("adapter_type".into(), "pvscsi".into());
        apply(Target::Esxi, &mut o).unwrap();
        assert_eq!(o.options["adapter_type"], "pvscsi");
        let mut bad = CreateOptions::new(Format::Raw, MIB);
        bad.options.insert("adapter_type".into(), "floppy".into());
        assert!(apply(Target::Esxi, &mut bad).is_err());
    }

    #[test]
    fn target_conflicting_with_the_format_is_refused() {
        let mut o = CreateOptions::new(Format::Qcow2, MIB);
        assert!(apply(Target::HyperV, &mut o).is_err());
        let mut sub = CreateOptions::new(Format::Raw, MIB);
        sub.options.insert("subformat".into(), "dynamic".into());
        assert!(apply(Target::Azure, &mut sub).is_err());
    }

    #[test]
    fn hyperv_uses_32mib_blocks_and_4k_physical_sectors() {
        let mut o = CreateOptions::new(Format::Raw, 5 * MIB);
        apply(Target::HyperV, &mut o).unwrap();
        assert_eq!(o.options["block_size"], (32 * MIB).to_string());
        assert_eq!(o.options["physical_sector_size"], "4096");
    }

    #[test]
    fn target_names_parse() {
        for t in Target::ALL {
            assert_eq!(Target::from_name(t.name()).unwrap(), t);
        }
        assert!(Target::from_name("gcp").is_err());
    }
}

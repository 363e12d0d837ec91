//! GRUB: the BIOS core image (its first sector patched to find the rest of itself), the MBR
//! boot code patched to find the core, the UEFI image, and the menu that boots each ISO.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gpt::{MBR_CODE_BYTES, SECTOR};
use crate::record::{BootMethod, IsoRecord, StickRecord};
use crate::MultibootError;

/// Where boot.img keeps the 64-bit sector of the core image's first sector
/// (GRUB_BOOT_MACHINE_KERNEL_SECTOR).
const KERNEL_SECTOR_AT: usize = 0x5c;
/// boot.img's jump over the "is DL a hard disk?" check (GRUB_BOOT_MACHINE_DRIVE_CHECK);
/// grub-install turns it into two NOPs for hard disks so BIOSes that pass DL=0 still work.
const DRIVE_CHECK_AT: usize = 0x66;
/// diskboot.img (the core's first sector) ends with a block list entry: start sector (8
/// bytes), sector count (2), load segment (2).
const BLOCKLIST_AT: usize = 512 - 12;

/// Modules both images carry, so neither ever loads a module from the stick.
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "iso9660",
    "loopback",
    "linux",
    "normal",
    "configfile",
    "search",
    "search_fs_uuid",
    "search_fs_file",
    "echo",
    "test",
    "regexp",
    "ls",
    "cat",
    "sleep",
    "serial",
    "terminal",
    "loadenv",
    "chain",
    "halt",
    "reboot",
];

/// Where GRUB's tools and module folders are (Debian's grub-common, grub-pc-bin,
/// grub-efi-amd64-bin by default).
#[derive(Debug, Clone)]
pub struct GrubTools {
    pub mkimage: PathBuf,
    /// Holds `i386-pc/` (with boot.img) and `x86_64-efi/`.
    pub lib_dir: PathBuf,
}

impl Default for GrubTools {
    fn default() -> Self {
        GrubTools {
            mkimage: PathBuf::from("/usr/bin/grub-mkimage"),
            lib_dir: PathBuf::from("/usr/lib/grub"),
        }
    }
}

/// The three boot programs of a stick.
pub struct GrubImages {
    /// MBR boot code, already pointing at the core.
    pub mbr_code: [u8; MBR_CODE_BYTES],
    /// core.img, already pointing at its own second sector.
    pub core: Vec<u8>,
    /// \EFI\BOOT\BOOTX64.EFI.
    pub efi: Vec<u8>,
}

fn mkimage(
    tools: &GrubTools,
    format: &str,
    prefix: &str,
    out: &Path,
    extra: &[&str],
) -> Result<Vec<u8>, MultibootError> {
    let dir = tools.lib_dir.join(format);
    let mut cmd = Command::new(&tools.mkimage);
    cmd.arg("-O")
        .arg(format)
        .arg("-d")
        .arg(&dir)
        .arg("-p")
        .arg(prefix)
        .arg("-o")
        .arg(out);
    cmd.args(extra).args(COMMON_MODULES);
    let output = cmd.output().map_err(|source| MultibootError::Tool {
        tool: tools.mkimage.clone(),
        problem: format!("cannot run it ({source}); install grub-common, grub-pc-bin and grub-efi-amd64-bin (scripts/setup.sh)"),
    })?;
    if !output.status.success() {
        return Err(MultibootError::Tool {
            tool: tools.mkimage.clone(),
            problem: format!(
                "{} for {format}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    std::fs::read(out).map_err(|source| MultibootError::Io {
        path: out.to_path_buf(),
        offset: 0,
        source,
    })
}

/// Builds the images; `core_lba` is where core.img will be written and `core_room` the bytes
/// the BIOS boot partition holds; `esp_index` the ESP's GPT partition number.
pub fn build(
    tools: &GrubTools,
    core_lba: u64,
    core_room: u64,
    esp_index: usize,
) -> Result<GrubImages, MultibootError> {
    let scratch = tempfile::tempdir().map_err(|source| MultibootError::Io {
        path: std::env::temp_dir(),
        offset: 0,
        source,
    })?;
    // "(,gptN)": the disk GRUB was booted from (the BIOS drive), whatever its number.
    let core_prefix = format!("(,gpt{esp_index})/boot/grub");
    let mut core = mkimage(
        tools,
        "i386-pc",
        &core_prefix,
        &scratch.path().join("core.img"),
        &["biosdisk"],
    )?;
    // The UEFI image's prefix without a device means the partition it was loaded from.
    let efi = mkimage(
        tools,
        "x86_64-efi",
        "/boot/grub",
        &scratch.path().join("bootx64.efi"),
        &[],
    )?;
    if core.len() as u64 > core_room || core.len() < 512 {
        return Err(MultibootError::Tool {
            tool: tools.mkimage.clone(),
            problem: format!(
                "core.img is {} bytes; the BIOS boot partition holds {core_room}",
                core.len()
            ),
        });
    }
    // The rest of the core follows its first sector.
    let rest_sectors = (core.len() as u64).div_ceil(SECTOR) - 1;
    let listed = u64::from(u16::from_le_bytes([
        core[BLOCKLIST_AT + 8],
        core[BLOCKLIST_AT + 9],
    ]));
    if listed < rest_sectors {
        return Err(MultibootError::Tool {
            tool: tools.mkimage.clone(),
            problem: format!("core.img lists {listed} sectors but needs {rest_sectors}: not an i386-pc diskboot image"),
        });
    }
    core[BLOCKLIST_AT..BLOCKLIST_AT + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());

    let boot_path = tools.lib_dir.join("i386-pc/boot.img");
    let boot = std::fs::read(&boot_path).map_err(|source| MultibootError::Io {
        path: boot_path.clone(),
        offset: 0,
        source,
    })?;
    if boot.len() != 512 {
        return Err(MultibootError::Tool {
            tool: boot_path,
            problem: format!("boot.img is {} bytes, not 512", boot.len()),
        });
    }
    let mut mbr_code = [0u8; MBR_CODE_BYTES];
    mbr_code.copy_from_slice(&boot[..MBR_CODE_BYTES]);
    mbr_code[KERNEL_SECTOR_AT..KERNEL_SECTOR_AT + 8].copy_from_slice(&core_lba.to_le_bytes());
    mbr_code[DRIVE_CHECK_AT] = 0x90;
    mbr_code[DRIVE_CHECK_AT + 1] = 0x90;
    Ok(GrubImages {
        mbr_code,
        core,
        efi,
    })
}

/// GRUB single-quoted text: a quote closes, is escaped, and reopens.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The FAT volume id as GRUB's `search --fs-uuid` prints it.
pub fn fat_uuid(volume_id: u32) -> String {
    format!("{:04x}-{:04x}", volume_id >> 16, volume_id & 0xffff)
}

/// grub.cfg: serial and screen, the data partition found by its FAT serial, one entry per ISO.
pub fn menu(record: &StickRecord) -> String {
    let mut cfg = String::new();
    cfg.push_str("# Written by `vmedia multiboot`; add, remove and default rewrite it.\n");
    cfg.push_str("serial --unit=0 --speed=115200\n");
    cfg.push_str("terminal_input console serial\nterminal_output console serial\n");
    cfg.push_str(&format!("set timeout={}\n", record.timeout));
    match &record.default {
        Some(name) => cfg.push_str(&format!("set default={}\n", quote(name))),
        None => cfg.push_str("set default=0\n"),
    }
    cfg.push_str(&format!(
        "search --no-floppy --fs-uuid --set=data {}\n",
        fat_uuid(record.data_volume_id)
    ));
    for iso in &record.isos {
        cfg.push_str(&entry(iso));
    }
    if record.isos.is_empty() {
        cfg.push_str(
            "menuentry 'No ISO on this stick: vmedia multiboot add STICK FILE.iso' { halt }\n",
        );
    }
    cfg.push_str(
        "menuentry 'Reboot' --id reboot { reboot }\nmenuentry 'Power off' --id halt { halt }\n",
    );
    cfg
}

fn entry(iso: &IsoRecord) -> String {
    let title = match &iso.volume_id {
        Some(v) if !v.is_empty() => format!("{} ({v})", iso.name),
        _ => iso.name.clone(),
    };
    let path = format!("/{}", iso.name);
    let mut e = format!("menuentry {} --id {} {{\n", quote(&title), quote(&iso.name));
    e.push_str(&format!(
        " set iso_path={}\n export iso_path\n",
        quote(&path)
    ));
    e.push_str(&format!(" loopback loop ($data){path}\n"));
    match &iso.boot {
        BootMethod::LoopbackCfg { path: cfg } => {
            e.push_str(" set root=(loop)\n");
            e.push_str(&format!(" configfile {}\n", quote(cfg)));
        }
        BootMethod::Kernel {
            kernel,
            initrd,
            args,
            convention,
        } => {
            let mut line = format!(" linux (loop){kernel}");
            for a in convention.args(&path) {
                line.push(' ');
                line.push_str(&a);
            }
            for a in args {
                line.push(' ');
                line.push_str(a);
            }
            e.push_str(&line);
            e.push('\n');
            if !initrd.is_empty() {
                e.push_str(" initrd");
                for i in initrd {
                    e.push_str(&format!(" (loop){i}"));
                }
                e.push('\n');
            }
        }
    }
    e.push_str("}\n");
    e
}

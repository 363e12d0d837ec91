//! Media checks before QEMU sees them: the disk format is detected here and passed to QEMU
//! explicitly (QEMU never probes, so a raw disk can never be reinterpreted as qcow2 with a
//! backing file), and a CD image must look like a disc.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmedia_io::ReadAt;

use crate::error::{BootError, Result};

/// ISO 9660 and UDF put their volume descriptors from sector 16 on.
const VOLUME_DESCRIPTOR_OFFSET: u64 = 16 * 2048;

/// A disk image format as QEMU's `format=` option spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
    Vmdk,
    /// VHD (QEMU calls the driver "vpc").
    Vhd,
    Vhdx,
}

impl DiskFormat {
    /// The name QEMU's block layer uses.
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vhd => "vpc",
            DiskFormat::Vhdx => "vhdx",
        }
    }

    /// Parses a user's format name (`vpc` is accepted for VHD, as qemu-img does).
    pub fn parse(name: &str) -> Option<DiskFormat> {
        Some(match name.to_ascii_lowercase().as_str() {
            "raw" | "img" | "iso" => DiskFormat::Raw,
            "qcow2" => DiskFormat::Qcow2,
            "vmdk" => DiskFormat::Vmdk,
            "vhd" | "vpc" => DiskFormat::Vhd,
            "vhdx" => DiskFormat::Vhdx,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskFormat::Vhd => "vhd",
            other => other.qemu_name(),
        })
    }
}

/// Detects the format of a disk image (vmedia-disk's probe, the same qemu-img uses) and opens
/// it with vmedia-disk to prove its headers are sound before QEMU sees it. Backing files and
/// extents are followed only inside the image's own folder (vmedia-disk's default policy), so a
/// disk cannot make QEMU open an arbitrary host file.
pub fn detect_disk_format(path: &Path) -> Result<DiskFormat> {
    let file = open_medium(path)?;
    let size = file.size().map_err(|e| BootError::io(path, e))?;
    if size == 0 {
        return Err(BootError::BadMedium {
            path: path.into(),
            reason: "the image is empty".into(),
        });
    }
    let mut head = [0u8; 512];
    let got = read_some(&file, &mut head, 0, path)?;
    if let Some(format) = classify_head(&head[..got]) {
        check_header_length(path, format, size)?;
    }
    let image =
        vmedia_disk::image::open(path, &vmedia_disk::OpenOptions::default()).map_err(|e| {
            BootError::BadMedium {
                path: path.into(),
                reason: format!("cannot be attached: {e}"),
            }
        })?;
    Ok(match image.format() {
        vmedia_disk::Format::Raw => DiskFormat::Raw,
        vmedia_disk::Format::Qcow2 => DiskFormat::Qcow2,
        vmedia_disk::Format::Vmdk => DiskFormat::Vmdk,
        vmedia_disk::Format::Vhd => DiskFormat::Vhd,
        vmedia_disk::Format::Vhdx => DiskFormat::Vhdx,
    })
}

/// The format named by the first bytes of an image, if any.
pub fn classify_head(head: &[u8]) -> Option<DiskFormat> {
    if head.starts_with(b"QFI\xfb") {
        Some(DiskFormat::Qcow2)
    } else if head.starts_with(b"vhdxfile") {
        Some(DiskFormat::Vhdx)
    } else if head.starts_with(b"KDMV")
        || head.starts_with(b"COWD")
        || head.starts_with(b"# Disk DescriptorFile")
    {
        Some(DiskFormat::Vmdk)
    } else if head.starts_with(b"conectix") {
        Some(DiskFormat::Vhd)
    } else {
        None
    }
}

/// A header that is cut short is refused here, with the file named, rather than by QEMU later.
fn check_header_length(path: &Path, format: DiskFormat, size: u64) -> Result<()> {
    let minimum = match format {
        DiskFormat::Qcow2 => 72,
        DiskFormat::Vmdk => 21,
        DiskFormat::Vhd => 1024,
        DiskFormat::Vhdx => 1024 * 1024,
        DiskFormat::Raw => 1,
    };
    if size < minimum {
        return Err(BootError::BadMedium {
            path: path.into(),
            reason: format!(
                "{format} image is truncated: {size} bytes, its headers alone need {minimum}"
            ),
        });
    }
    Ok(())
}

/// Checks that a CD image looks like a disc: ISO 9660 (`CD001`) or UDF (`BEA01`/`NSR0x`)
/// volume descriptors at sector 16.
pub fn check_cdrom_image(path: &Path) -> Result<()> {
    let file = open_medium(path)?;
    let mut descriptor = [0u8; 8];
    let got = read_some(&file, &mut descriptor, VOLUME_DESCRIPTOR_OFFSET, path)?;
    let id = &descriptor[1..got.max(1)];
    if id.starts_with(b"CD001") || id.starts_with(b"BEA01") || id.starts_with(b"NSR0") {
        return Ok(());
    }
    Err(BootError::BadMedium {
        path: path.into(),
        reason: format!(
            "not an ISO 9660 or UDF disc image (no volume descriptor at offset {VOLUME_DESCRIPTOR_OFFSET:#x}); attach disk images with --disk"
        ),
    })
}

/// Absolute path of a medium, so a managed VM still finds it from another working folder.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| BootError::io(path, e))
}

fn open_medium(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(|e| BootError::io(path, e))?;
    let meta = file.metadata().map_err(|e| BootError::io(path, e))?;
    if meta.is_dir() {
        return Err(BootError::BadMedium {
            path: path.into(),
            reason: "is a folder, not an image".into(),
        });
    }
    Ok(file)
}

fn read_some(file: &File, buf: &mut [u8], offset: u64, path: &Path) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let position = offset + filled as u64;
        match ReadAt::read_at(file, &mut buf[filled..], position) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BootError::io(path, e)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn magic_numbers_name_formats() {
        assert_eq!(classify_head(b"QFI\xfb\0\0\0\x03"), Some(DiskFormat::Qcow2));
        assert_eq!(classify_head(b"vhdxfile"), Some(DiskFormat::Vhdx));
        assert_eq!(classify_head(b"KDMV\x01\0\0\0"), Some(DiskFormat::Vmdk));
        assert_eq!(
            classify_head(b"# Disk DescriptorFile\nversion=1"),
            Some(DiskFormat::Vmdk)
        );
        assert_eq!(classify_head(b"conectix"), Some(DiskFormat::Vhd));
        assert_eq!(classify_head(&[0u8; 512]), None);
    }

    #[test]
    fn corrupt_vhd_footer_is_refused_before_qemu() {
        let mut data = vec![0u8; 4096];
        data[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        let f = image(&data);
        let err = detect_disk_format(f.path()).unwrap_err().to_string();
        assert!(err.contains("cannot be attached"), "{err}");
    }

    #[test]
    fn unknown_content_is_raw() {
        let f = image(&[0x55u8; 2048]);
        assert_eq!(detect_disk_format(f.path()).unwrap(), DiskFormat::Raw);
    }

    #[test]
    fn empty_image_is_refused() {
        let f = image(&[]);
        assert!(detect_disk_format(f.path())
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn truncated_qcow2_header_is_refused() {
        let f = image(b"QFI\xfb\0\0\0\x03");
        let err = detect_disk_format(f.path()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn cdrom_needs_a_volume_descriptor() {
        let mut data = vec![0u8; 17 * 2048];
        assert!(check_cdrom_image(image(&data).path()).is_err());
        data[0x8001..0x8006].copy_from_slice(b"CD001");
        check_cdrom_image(image(&data).path()).unwrap();
    }

    #[test]
    fn vhd_is_called_vpc_by_qemu() {
        assert_eq!(DiskFormat::Vhd.qemu_name(), "vpc");
        assert_eq!(DiskFormat::parse("vpc"), Some(DiskFormat::Vhd));
    }
}

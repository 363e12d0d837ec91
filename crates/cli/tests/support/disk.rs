//! A bootable raw BIOS disk, built once: MBR (syslinux mbr.bin) + one FAT partition holding
//! syslinux, the test kernel and the busybox initramfs from `support::payload()`. The kernel
//! prints `VMEDIA-BOOT-OK` on ttyS0. Reuse it with
//! `#[path = "support/disk.rs"] mod disk_fixture;` (after `mod support;`).
#![allow(dead_code)]

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::{cached_fixture, payload, require_tool, run_ok};

/// Where the partition starts (1 MiB, as partitioning tools align).
pub const PARTITION_START_LBA: u64 = 2048;
/// Partition size: room for the Debian kernel, the initramfs and syslinux.
pub const PARTITION_MIB: u64 = 64;

const SYSLINUX_CFG: &str = "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  APPEND initrd=initrd.gz console=ttyS0 no_timer_check\n";

/// The bootable raw disk image (built once per target dir).
pub fn bootable_raw_disk() -> PathBuf {
    let dir = cached_fixture("disk-bootable-mbr-fat", |dir| {
        let p = payload();
        let part = dir.join("part.img");
        let sectors = PARTITION_MIB * 2048;
        run_ok(
            Command::new(require_tool("mkfs.vfat"))
                .args([
                    "-n",
                    "VMEDIABOOT",
                    "-h",
                    &PARTITION_START_LBA.to_string(),
                    "-C",
                ])
                .arg(&part)
                .arg((sectors / 2).to_string()),
        );
        fs::write(dir.join("syslinux.cfg"), SYSLINUX_CFG).unwrap();
        for (src, name) in [
            (p.kernel.as_path(), "vmlinuz"),
            (p.initrd.as_path(), "initrd.gz"),
            (dir.join("syslinux.cfg").as_path(), "syslinux.cfg"),
        ] {
            run_ok(
                Command::new(require_tool("mcopy"))
                    .arg("-i")
                    .arg(&part)
                    .arg(src)
                    .arg(format!("::{name}")),
            );
        }
        run_ok(
            Command::new(require_tool("syslinux"))
                .arg("--install")
                .arg(&part),
        );
        let disk = dir.join("boot.raw");
        write_mbr_disk(&disk, &part, sectors);
        fs::remove_file(&part).unwrap();
    });
    dir.join("boot.raw")
}

/// Writes syslinux's MBR code, one active FAT16 (LBA) partition entry and the partition data.
fn write_mbr_disk(disk: &Path, part: &Path, part_sectors: u64) {
    let mbr_code = fs::read("/usr/lib/syslinux/mbr/mbr.bin")
        .expect("syslinux-common's mbr.bin is missing (scripts/setup.sh installs it)");
    let mut mbr = [0u8; 512];
    mbr[..mbr_code.len().min(440)].copy_from_slice(&mbr_code[..mbr_code.len().min(440)]);
    let entry = &mut mbr[446..462];
    entry[0] = 0x80;
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[4] = 0x0e;
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&(PARTITION_START_LBA as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(part_sectors as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut f = fs::File::create(disk).unwrap();
    f.write_all(&mbr).unwrap();
    let data = fs::read(part).unwrap();
    f.seek(SeekFrom::Start(PARTITION_START_LBA * 512)).unwrap();
    f.write_all(&data).unwrap();
    // A little free space after the partition, as real disks have.
    f.set_len((PARTITION_START_LBA + part_sectors) * 512 + (1 << 20))
        .unwrap();
}

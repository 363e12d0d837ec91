//! What a VM is made of: firmware, CPUs, memory, media slots, network and boot order. The same
//! struct drives `vmedia boot` and is stored as TOML for managed VMs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{BootError, Result};
use crate::media::DiskFormat;
use crate::remote::Medium;

/// q35's AHCI controller has six ports; each CD slot takes one.
pub const MAX_CDROM_SLOTS: usize = 6;
/// Each virtio disk takes a PCI slot; 16 leaves room for everything else on bus 0.
pub const MAX_DISKS: usize = 16;
/// QEMU's TCG handles at most this many vCPUs well on one host thread each; more only slows it.
pub const MAX_CPUS: u32 = 64;
/// Below this Linux installers and OVMF do not start; above it is a typo (MiB).
pub const MIN_MEMORY_MIB: u32 = 32;
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;

/// Firmware the VM starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS, QEMU's default PC BIOS.
    #[default]
    Bios,
    /// OVMF (EDK II) from Debian's ovmf package, with a private copy of the variable store.
    Uefi,
}

/// Which accelerator runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a probe shows it really boots Linux here, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// A class of boot device, as in `--boot cdrom,disk,net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Cdrom,
    Disk,
    Net,
}

impl BootDevice {
    pub fn parse(word: &str) -> Result<BootDevice> {
        match word.trim().to_ascii_lowercase().as_str() {
            "cdrom" | "cd" | "dvd" | "d" => Ok(BootDevice::Cdrom),
            "disk" | "hd" | "c" => Ok(BootDevice::Disk),
            "net" | "network" | "pxe" | "n" => Ok(BootDevice::Net),
            other => Err(BootError::Invalid(format!(
                "unknown boot device {other:?}: use cdrom, disk or net"
            ))),
        }
    }

    /// Parses `cdrom,disk,net`; each class at most once.
    pub fn parse_order(list: &str) -> Result<Vec<BootDevice>> {
        let mut order = Vec::new();
        for word in list.split(',').filter(|w| !w.trim().is_empty()) {
            let device = BootDevice::parse(word)?;
            if order.contains(&device) {
                return Err(BootError::Invalid(format!(
                    "boot device {word:?} is listed twice"
                )));
            }
            order.push(device);
        }
        Ok(order)
    }
}

impl std::fmt::Display for BootDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootDevice::Cdrom => "cdrom",
            BootDevice::Disk => "disk",
            BootDevice::Net => "net",
        })
    }
}

/// One CD drive; empty when `medium` is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CdromSlot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<Medium>,
}

/// One virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// A local image or a network medium. Written as `path`, the key vm.toml and
    /// `vm show --json` have always used for a disk; `medium` (the CD slots' key) is read too.
    #[serde(rename = "path", alias = "medium")]
    pub medium: Medium,
    /// Always explicit: QEMU is never asked to guess.
    pub format: DiskFormat,
    /// False: the guest sees a write-protected disk and the image is never modified.
    #[serde(default)]
    pub writable: bool,
}

/// The VM's network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Net {
    #[default]
    None,
    /// QEMU's user-mode network (NAT, DHCP and TFTP built in).
    User {
        /// A folder QEMU's built-in TFTP server serves.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tftp: Option<PathBuf>,
        /// The boot file its DHCP server announces.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bootfile: Option<String>,
    },
    /// A tap device on a host bridge, through qemu-bridge-helper.
    Bridge { bridge: String },
}

/// A kernel booted directly by QEMU, without a boot loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub append: String,
}

/// Everything that defines a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    #[serde(default)]
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub cpus: u32,
    #[serde(default)]
    pub accel: Accel,
    #[serde(default)]
    pub boot_order: Vec<BootDevice>,
    #[serde(default)]
    pub cdroms: Vec<CdromSlot>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub net: Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<DirectKernel>,
    #[serde(default, skip_serializing_if = "Machine::is_standard")]
    pub machine: Machine,
}

/// The device set and firmware a VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// q35 with its usual platform devices and the chosen firmware: what an installed system
    /// or a boot loader expects.
    #[default]
    Standard,
    /// For a kernel QEMU loads itself (`--direct`): no HPET, and under BIOS the minimal qboot
    /// firmware instead of SeaBIOS (no POST, no boot menu, no disk boot). Each choice was
    /// measured under TCG; see docs/boot.md.
    Lean,
}

impl Machine {
    pub fn is_standard(&self) -> bool {
        *self == Machine::Standard
    }
}

impl VmSpec {
    /// A VM with defaults: BIOS, 512 MiB, 1 CPU, boot order cdrom, disk, net.
    pub fn new(name: &str) -> VmSpec {
        VmSpec {
            name: name.to_string(),
            firmware: Firmware::Bios,
            memory_mib: 512,
            cpus: 1,
            accel: Accel::Auto,
            boot_order: vec![BootDevice::Cdrom, BootDevice::Disk, BootDevice::Net],
            cdroms: Vec::new(),
            disks: Vec::new(),
            net: Net::None,
            kernel: None,
            machine: Machine::Standard,
        }
    }

    /// The readable TOML form (what `vm.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot encode: {e}\n"))
    }

    /// Checks the limits; every rule has its own message.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        if self.cdroms.len() > MAX_CDROM_SLOTS {
            return Err(BootError::Invalid(format!(
                "{} CD drives asked for; q35's AHCI controller has {MAX_CDROM_SLOTS} ports",
                self.cdroms.len()
            )));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(BootError::Invalid(format!(
                "{} disks asked for; at most {MAX_DISKS}",
                self.disks.len()
            )));
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(BootError::Invalid(format!(
                "--cpus {} is outside 1..={MAX_CPUS}",
                self.cpus
            )));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(BootError::Invalid(format!(
                "--memory {} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB",
                self.memory_mib
            )));
        }
        for disk in &self.disks {
            if disk.writable && disk.medium.remote().is_some_and(|r| r.url.is_http()) {
                return Err(BootError::Invalid(format!(
                    "{}: http(s) media are read-only (QEMU's curl driver cannot write); \
                     attach a writable network disk over NBD, e.g. a vmedia clone export",
                    disk.medium
                )));
            }
        }
        if let Net::Bridge { bridge } = &self.net {
            if bridge.is_empty() || bridge.len() > 15 || bridge.contains([',', '/', ' ']) {
                return Err(BootError::Invalid(format!(
                    "bridge name {bridge:?} is not a Linux interface name"
                )));
            }
        }
        if self.machine == Machine::Lean && self.kernel.is_none() {
            return Err(BootError::Invalid(
                "the lean machine boots only a kernel QEMU loads itself (--direct or --kernel): \
                 its firmware cannot boot a CD, a disk or the network"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// VM names become folder names and QEMU `-name` values: keep them plain.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(BootError::Invalid(format!(
            "VM name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.' or '-'"
        )))
    }
}

/// Parses a memory size: plain MiB, or with a K/M/G/T suffix.
pub fn parse_memory(text: &str) -> Result<u32> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => (&text[..at], text[at..].to_ascii_uppercase()),
        None => (text, String::new()),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| BootError::Invalid(format!("memory size {text:?} is not a number")))?;
    let mib = match unit.trim_end_matches(['B', 'I']) {
        "" | "M" => Some(value),
        "G" => value.checked_mul(1024),
        "T" => value.checked_mul(1024 * 1024),
        "K" => Some(value / 1024),
        _ => {
            return Err(BootError::Invalid(format!(
                "memory size {text:?}: unknown unit"
            )))
        }
    };
    mib.and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| BootError::Invalid(format!("memory size {text:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_order_parses_synonyms() {
        assert_eq!(
            BootDevice::parse_order("cdrom,hd,pxe").unwrap(),
            vec![BootDevice::Cdrom, BootDevice::Disk, BootDevice::Net]
        );
    }

    #[test]
    fn boot_order_rejects_duplicates() {
        assert!(BootDevice::parse_order("disk,disk").is_err());
    }

    #[test]
    fn boot_order_rejects_unknown_device() {
        assert!(BootDevice::parse_order("floppy").is_err());
    }

    #[test]
    fn name_rejects_path_characters() {
        assert!(validate_name("../etc").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
        validate_name("web-01.lab").unwrap();
    }

    #[test]
    fn too_many_cdrom_slots_is_refused() {
        let mut spec = VmSpec::new("x");
        spec.cdroms = vec![CdromSlot::default(); MAX_CDROM_SLOTS + 1];
        assert!(spec.validate().is_err());
    }

    #[test]
    fn zero_cpus_is_refused() {
        let mut spec = VmSpec::new("x");
        spec.cpus = 0;
        assert!(spec.validate().is_err());
    }

    #[test]
    fn memory_outside_limits_is_refused() {
        let mut spec = VmSpec::new("x");
        spec.memory_mib = 1;
        assert!(spec.validate().is_err());
    }

    #[test]
    fn lean_machine_without_a_kernel_is_refused() {
        let mut spec = VmSpec::new("x");
        spec.machine = Machine::Lean;
        assert!(spec.validate().unwrap_err().to_string().contains("lean"));
        spec.kernel = Some(DirectKernel {
            kernel: "/k".into(),
            initrd: None,
            append: String::new(),
        });
        spec.validate().unwrap();
    }

    #[test]
    fn vm_toml_from_before_urls_still_reads() {
        let text =
            "name = \"old\"\nmemory_mib = 512\ncpus = 1\n\n[[cdroms]]\nmedium = \"/srv/a.iso\"\n\n\
                    [[disks]]\npath = \"/srv/d.qcow2\"\nformat = \"qcow2\"\n";
        let spec: VmSpec = toml::from_str(text).unwrap();
        assert_eq!(
            spec.cdroms[0].medium,
            Some(Medium::File(PathBuf::from("/srv/a.iso")))
        );
        assert_eq!(
            spec.disks[0].medium,
            Medium::File(PathBuf::from("/srv/d.qcow2"))
        );
    }

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("512").unwrap(), 512);
        assert_eq!(parse_memory("2G").unwrap(), 2048);
        assert_eq!(parse_memory("1GiB").unwrap(), 1024);
        assert!(parse_memory("12Q").is_err());
        assert!(parse_memory("99999999999T").is_err());
    }

    #[test]
    fn spec_round_trips_through_toml() {
        let mut spec = VmSpec::new("lab");
        spec.firmware = Firmware::Uefi;
        spec.cdroms = vec![
            CdromSlot {
                medium: Some(PathBuf::from("/x.iso").into()),
            },
            CdromSlot::default(),
        ];
        spec.disks = vec![Disk {
            medium: PathBuf::from("/d.vmdk").into(),
            format: DiskFormat::Vmdk,
            writable: false,
        }];
        spec.net = Net::User {
            tftp: Some("/srv/tftp".into()),
            bootfile: Some("pxelinux.0".into()),
        };
        let text = toml::to_string_pretty(&spec).unwrap();
        assert!(
            !text.contains("machine"),
            "the standard machine is not written out: {text}"
        );
        let back: VmSpec = toml::from_str(&text).unwrap();
        assert_eq!(back, spec);
        spec.machine = Machine::Lean;
        spec.kernel = Some(DirectKernel {
            kernel: "/k".into(),
            initrd: None,
            append: "console=ttyS0".into(),
        });
        let back: VmSpec = toml::from_str(&spec.to_toml()).unwrap();
        assert_eq!(back, spec);
    }
}

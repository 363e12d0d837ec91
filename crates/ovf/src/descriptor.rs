//! The OVF descriptor as vmedia models it: files, disks (capacity in bytes whatever the
//! allocation units), networks and each virtual system's CPUs, memory, firmware, NICs and
//! attached disks. `parse` reads OVF 1.x and 2.x descriptors as VMware (vSphere, Workstation,
//! ovftool) and VirtualBox write them; `Export::descriptor` writes an OVF 1.x descriptor that
//! validates against DMTF DSP8023.

use serde::Serialize;

use crate::error::{OvfError, Result};
use crate::xml::{self, escape, Element};

/// The OVF 1.x envelope namespace (also what VirtualBox's "OVF 1.0" and vSphere write).
pub const NS_OVF1: &str = "http://schemas.dmtf.org/ovf/envelope/1";
/// The OVF 2.x envelope namespace.
pub const NS_OVF2: &str = "http://schemas.dmtf.org/ovf/envelope/2";
const NS_RASD: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
const NS_VSSD: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
const NS_VMW: &str = "http://www.vmware.com/schema/ovf";
const NS_VBOX: &str = "http://www.virtualbox.org/ovf/machine";
const OVF_NS: &[&str] = &[NS_OVF1, NS_OVF2];
/// The disk format URI of a streamOptimized VMDK, as VMware and VirtualBox write it.
pub const FORMAT_STREAM_OPTIMIZED: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// Most files, disks, systems or hardware items one descriptor may list: each becomes a
/// work item (a digest, a conversion); real packages have a handful.
pub const MAX_ITEMS: usize = 4096;

/// CIM resource types (CIM_ResourceAllocationSettingData.ResourceType) that vmedia reads.
mod resource {
    pub const CPU: u32 = 3;
    pub const MEMORY: u32 = 4;
    pub const IDE: u32 = 5;
    pub const SCSI: u32 = 6;
    pub const ETHERNET: u32 = 10;
    pub const DISK: u32 = 17;
    pub const SATA: u32 = 20;
}

/// What a package's descriptor says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Descriptor {
    /// "1.x" or "2.x" from the envelope namespace.
    pub ovf_version: String,
    /// Who wrote it, as far as the descriptor tells ("VMware", "VirtualBox", "unknown").
    pub producer: String,
    pub files: Vec<FileRef>,
    pub disks: Vec<DiskDesc>,
    pub networks: Vec<String>,
    pub systems: Vec<VirtualSystem>,
}

/// A `References/File` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRef {
    pub id: String,
    pub href: String,
    pub size: Option<u64>,
    /// `gzip` when the file is stored compressed.
    pub compression: Option<String>,
    /// Set when the file is split into chunks (`href.000000000`, ...).
    pub chunk_size: Option<u64>,
}

/// A `DiskSection/Disk` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskDesc {
    pub id: String,
    pub file_ref: Option<String>,
    /// Capacity in bytes (capacity times its allocation units).
    pub capacity: u64,
    pub populated_size: Option<u64>,
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Efi,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Efi => "efi",
        }
    }
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    pub network: Option<String>,
    /// The adapter model (`E1000`, `VmxNet3`, `PCNet32`, ...).
    pub adapter: Option<String>,
    pub mac: Option<String>,
}

/// A disk attached to a controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachedDisk {
    pub disk_id: String,
    /// `ide`, `scsi`, `sata` or the controller's own name.
    pub controller: Option<String>,
    pub address: Option<String>,
}

/// A `VirtualSystem`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualSystem {
    pub id: String,
    pub name: Option<String>,
    pub os_id: Option<u32>,
    pub os_type: Option<String>,
    /// `vssd:VirtualSystemType` (`vmx-13`, `virtualbox-2.2`, ...).
    pub system_type: Option<String>,
    pub cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub firmware: Firmware,
    pub nics: Vec<Nic>,
    pub disks: Vec<AttachedDisk>,
}

impl Descriptor {
    /// The file a disk's data is in.
    pub fn disk_file(&self, disk: &DiskDesc) -> Option<&FileRef> {
        let id = disk.file_ref.as_deref()?;
        self.files.iter().find(|f| f.id == id)
    }
}

/// Parses a descriptor; `file` names it in errors.
pub fn parse(bytes: &[u8], file: &str) -> Result<Descriptor> {
    let root = xml::parse(bytes, file)?;
    let bad = |field: &str, problem: String| OvfError::Descriptor {
        file: file.to_string(),
        field: field.to_string(),
        problem,
    };
    if root.name != "Envelope" {
        return Err(bad(
            "Envelope",
            format!("the root element is {}", root.name),
        ));
    }
    let ovf_version = match root.ns.as_str() {
        NS_OVF1 => "1.x",
        NS_OVF2 => "2.x",
        other => {
            return Err(OvfError::Unsupported(format!(
                "{file}: envelope namespace {other:?} is not OVF 1.x or 2.x (OVF 0.9 and others are not read)"
            )))
        }
    }
    .to_string();
    let mut files = Vec::new();
    if let Some(refs) = root.child("References") {
        for f in refs.children_named("File") {
            let id = need_attr(f, "id", file)?;
            let href = need_attr(f, "href", file)?;
            files.push(FileRef {
                id,
                href,
                size: opt_u64(f, "size", file)?,
                compression: f
                    .attr(OVF_NS, "compression")
                    .filter(|c| !c.is_empty() && *c != "identity")
                    .map(str::to_string),
                chunk_size: opt_u64(f, "chunkSize", file)?,
            });
            limit(files.len(), "References/File", file)?;
        }
    }
    let mut disks = Vec::new();
    let mut networks = Vec::new();
    for section in &root.children {
        match section.name.as_str() {
            "DiskSection" => {
                for d in section.children_named("Disk") {
                    let id = need_attr(d, "diskId", file)?;
                    let raw = need_attr(d, "capacity", file)?;
                    let capacity: u64 = raw.trim().parse().map_err(|_| {
                        bad(
                            &format!("Disk {id} capacity"),
                            format!(
                                "{raw:?} is not a number (property references are not resolved)"
                            ),
                        )
                    })?;
                    let units = d.attr(OVF_NS, "capacityAllocationUnits").unwrap_or("byte");
                    let scale = units_in_bytes(units).ok_or_else(|| {
                        bad(
                            &format!("Disk {id} capacityAllocationUnits"),
                            format!("{units:?} is not a unit of bytes"),
                        )
                    })?;
                    let capacity = capacity.checked_mul(scale).ok_or_else(|| {
                        bad(
                            &format!("Disk {id} capacity"),
                            format!("{raw} x {units} overflows 64 bits"),
                        )
                    })?;
                    disks.push(DiskDesc {
                        file_ref: d.attr(OVF_NS, "fileRef").map(str::to_string),
                        capacity,
                        populated_size: opt_u64(d, "populatedSize", file)?,
                        format: d.attr(OVF_NS, "format").map(str::to_string),
                        id,
                    });
                    limit(disks.len(), "DiskSection/Disk", file)?;
                }
            }
            "NetworkSection" => {
                for n in section.children_named("Network") {
                    networks.push(need_attr(n, "name", file)?);
                    limit(networks.len(), "NetworkSection/Network", file)?;
                }
            }
            _ => {}
        }
    }
    let mut systems = Vec::new();
    collect_systems(&root, &mut systems, file)?;
    if systems.is_empty() {
        return Err(bad("VirtualSystem", "the descriptor has none".into()));
    }
    for disk in &disks {
        if let Some(r) = &disk.file_ref {
            if !files.iter().any(|f| &f.id == r) {
                return Err(bad(
                    &format!("Disk {} fileRef", disk.id),
                    format!("{r:?} is not in References"),
                ));
            }
        }
    }
    let producer = producer(&root, &systems);
    Ok(Descriptor {
        ovf_version,
        producer,
        files,
        disks,
        networks,
        systems,
    })
}

/// VirtualSystems directly in the envelope or in (nested) VirtualSystemCollections.
fn collect_systems(parent: &Element, out: &mut Vec<VirtualSystem>, file: &str) -> Result<()> {
    for c in &parent.children {
        match c.name.as_str() {
            "VirtualSystem" => {
                out.push(system(c, file)?);
                limit(out.len(), "VirtualSystem", file)?;
            }
            // The XML depth limit bounds the recursion.
            "VirtualSystemCollection" => collect_systems(c, out, file)?,
            _ => {}
        }
    }
    Ok(())
}

fn system(vs: &Element, file: &str) -> Result<VirtualSystem> {
    let id = need_attr(vs, "id", file)?;
    let mut sys = VirtualSystem {
        name: vs.child_text("Name").map(str::to_string),
        id,
        os_id: None,
        os_type: None,
        system_type: None,
        cpus: None,
        memory_bytes: None,
        firmware: Firmware::Bios,
        nics: Vec::new(),
        disks: Vec::new(),
    };
    if let Some(os) = vs.child("OperatingSystemSection") {
        sys.os_id = os.attr(OVF_NS, "id").and_then(|v| v.trim().parse().ok());
        sys.os_type = os
            .attr(&[NS_VMW], "osType")
            .map(str::to_string)
            .or_else(|| os.child_text("Description").map(str::to_string));
    }
    let Some(hw) = vs.child("VirtualHardwareSection") else {
        return Err(OvfError::Descriptor {
            file: file.to_string(),
            field: format!("VirtualSystem {} VirtualHardwareSection", sys.id),
            problem: "missing".into(),
        });
    };
    sys.system_type = hw
        .child("System")
        .and_then(|s| s.child_text("VirtualSystemType"))
        .map(str::to_string);
    // Controllers by InstanceID, to name the bus a disk hangs on.
    let items: Vec<&Element> = hw
        .children
        .iter()
        .filter(|c| matches!(c.name.as_str(), "Item" | "EthernetPortItem" | "StorageItem"))
        .collect();
    limit(items.len(), "VirtualHardwareSection/Item", file)?;
    let kind = |item: &Element| -> Option<u32> {
        item.child_text("ResourceType").and_then(|t| t.parse().ok())
    };
    let controller_of = |parent: &str| -> Option<String> {
        let c = items
            .iter()
            .find(|i| i.child_text("InstanceID") == Some(parent))?;
        Some(match kind(c)? {
            resource::IDE => "ide".to_string(),
            resource::SCSI => c
                .child_text("ResourceSubType")
                .map(|s| format!("scsi ({s})"))
                .unwrap_or_else(|| "scsi".into()),
            resource::SATA => "sata".to_string(),
            _ => c
                .child_text("ElementName")
                .unwrap_or("controller")
                .to_string(),
        })
    };
    for item in &items {
        let quantity = item
            .child_text("VirtualQuantity")
            .and_then(|q| q.parse::<u64>().ok());
        match kind(item) {
            Some(resource::CPU) => sys.cpus = quantity,
            Some(resource::MEMORY) => {
                let units = item
                    .child_text("AllocationUnits")
                    .or_else(|| item.child_text("VirtualQuantityUnits"))
                    .unwrap_or("byte * 2^20");
                let scale = units_in_bytes(units).ok_or_else(|| OvfError::Descriptor {
                    file: file.to_string(),
                    field: "memory AllocationUnits".into(),
                    problem: format!("{units:?} is not a unit of bytes"),
                })?;
                sys.memory_bytes = quantity.and_then(|q| q.checked_mul(scale));
            }
            Some(resource::ETHERNET) => sys.nics.push(Nic {
                network: item.child_text("Connection").map(str::to_string),
                adapter: item.child_text("ResourceSubType").map(str::to_string),
                mac: item.child_text("Address").map(str::to_string),
            }),
            Some(resource::DISK) => {
                if let Some(host) = item.child_text("HostResource") {
                    // "ovf:/disk/vmdisk1" (VMware) or "/disk/vmdisk1" (VirtualBox).
                    let id = host
                        .strip_prefix("ovf:")
                        .unwrap_or(host)
                        .strip_prefix("/disk/")
                        .unwrap_or(host);
                    sys.disks.push(AttachedDisk {
                        disk_id: id.to_string(),
                        controller: item.child_text("Parent").and_then(controller_of),
                        address: item.child_text("AddressOnParent").map(str::to_string),
                    });
                }
            }
            _ => {}
        }
    }
    // VMware: <vmw:Config vmw:key="firmware" vmw:value="efi"/>; VirtualBox: the embedded
    // machine's <Firmware type="EFI"/>.
    let vmw_efi = hw.children_named("Config").any(|c| {
        c.attr_any("key") == Some("firmware")
            && c.attr_any("value")
                .is_some_and(|v| v.eq_ignore_ascii_case("efi"))
    });
    let vbox_efi = vs
        .children
        .iter()
        .filter(|c| c.ns == NS_VBOX)
        .any(|m| has_efi_firmware(m, 0));
    if vmw_efi || vbox_efi {
        sys.firmware = Firmware::Efi;
    }
    Ok(sys)
}

fn has_efi_firmware(e: &Element, depth: usize) -> bool {
    if e.name == "Firmware"
        && e.attr_any("type")
            .is_some_and(|t| t.to_ascii_uppercase().starts_with("EFI"))
    {
        return true;
    }
    depth < xml::MAX_DEPTH && e.children.iter().any(|c| has_efi_firmware(c, depth + 1))
}

fn producer(root: &Element, systems: &[VirtualSystem]) -> String {
    let typed = |p: &str| {
        systems.iter().any(|s| {
            s.system_type
                .as_deref()
                .is_some_and(|t| t.split_whitespace().any(|w| w.starts_with(p)))
        })
    };
    let uses_ns = |ns: &str| any_ns(root, ns, 0);
    if typed("virtualbox") || uses_ns(NS_VBOX) {
        "VirtualBox".into()
    } else if typed("vmx-") || uses_ns(NS_VMW) {
        "VMware".into()
    } else {
        "unknown".into()
    }
}

fn any_ns(e: &Element, ns: &str, depth: usize) -> bool {
    e.ns == ns
        || e.attrs.iter().any(|a| a.ns == ns)
        || (depth < xml::MAX_DEPTH && e.children.iter().any(|c| any_ns(c, ns, depth + 1)))
}

/// Bytes per unit of a DMTF programmatic unit ("byte", "byte * 2^30", "byte*10^9") or the
/// spelled-out units older writers use ("MegaBytes", "GigaBytes", "KB").
pub fn units_in_bytes(units: &str) -> Option<u64> {
    let u: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    let lower = u.to_ascii_lowercase();
    match lower.as_str() {
        "byte" | "bytes" | "b" => return Some(1),
        "kilobytes" | "kb" | "kib" => return Some(1 << 10),
        "megabytes" | "mb" | "mib" => return Some(1 << 20),
        "gigabytes" | "gb" | "gib" => return Some(1 << 30),
        "terabytes" | "tb" | "tib" => return Some(1 << 40),
        _ => {}
    }
    let rest = lower
        .strip_prefix("bytes*")
        .or_else(|| lower.strip_prefix("byte*"))?;
    let (base, exp) = rest.split_once('^')?;
    let base: u64 = base.parse().ok()?;
    let exp: u32 = exp.parse().ok()?;
    if base != 2 && base != 10 {
        return None;
    }
    base.checked_pow(exp)
}

fn need_attr(e: &Element, name: &str, file: &str) -> Result<String> {
    e.attr(OVF_NS, name)
        .map(str::to_string)
        .ok_or_else(|| OvfError::Descriptor {
            file: file.to_string(),
            field: format!("{} {name}", e.name),
            problem: "required attribute missing".into(),
        })
}

fn opt_u64(e: &Element, name: &str, file: &str) -> Result<Option<u64>> {
    match e.attr(OVF_NS, name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| OvfError::Descriptor {
                file: file.to_string(),
                field: format!("{} {name}", e.name),
                problem: format!("{v:?} is not a number"),
            }),
    }
}

fn limit(count: usize, what: &str, file: &str) -> Result<()> {
    if count > MAX_ITEMS {
        return Err(OvfError::Limit {
            what: format!("{file}: {what}"),
            limit: "MAX_ITEMS",
            value: count as u64,
            max: MAX_ITEMS as u64,
        });
    }
    Ok(())
}

/// What `export` writes into the descriptor.
#[derive(Debug, Clone)]
pub struct SystemSpec {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    /// Network names; each gets an E1000 adapter.
    pub networks: Vec<String>,
}

/// One exported disk: its file name in the package, file size and capacity in bytes.
#[derive(Debug, Clone)]
pub struct ExportedDisk {
    pub href: String,
    pub file_size: u64,
    pub capacity: u64,
}

/// An OVF 1.x descriptor (DSP8023 1.1 element order; rasd/vssd children in the CIM schemas'
/// alphabetical order) for one virtual system with its disks on one LSI Logic SCSI controller.
pub fn emit(spec: &SystemSpec, disks: &[ExportedDisk]) -> String {
    let name = escape(&spec.name);
    let mut s = String::new();
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    s.push_str(&format!(
        "<Envelope xmlns=\"{NS_OVF1}\" xmlns:ovf=\"{NS_OVF1}\" xmlns:rasd=\"{NS_RASD}\" xmlns:vssd=\"{NS_VSSD}\" xmlns:vmw=\"{NS_VMW}\">\n"
    ));
    s.push_str("  <References>\n");
    for (i, d) in disks.iter().enumerate() {
        s.push_str(&format!(
            "    <File ovf:href=\"{}\" ovf:id=\"file{}\" ovf:size=\"{}\"/>\n",
            escape(&d.href),
            i + 1,
            d.file_size
        ));
    }
    s.push_str("  </References>\n");
    s.push_str("  <DiskSection>\n    <Info>Virtual disk information</Info>\n");
    for (i, d) in disks.iter().enumerate() {
        s.push_str(&format!(
            "    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk{n}\" ovf:fileRef=\"file{n}\" ovf:format=\"{FORMAT_STREAM_OPTIMIZED}\"/>\n",
            d.capacity,
            n = i + 1
        ));
    }
    s.push_str("  </DiskSection>\n");
    if !spec.networks.is_empty() {
        s.push_str("  <NetworkSection>\n    <Info>The list of logical networks</Info>\n");
        for n in &spec.networks {
            s.push_str(&format!(
                "    <Network ovf:name=\"{0}\">\n      <Description>The {0} network</Description>\n    </Network>\n",
                escape(n)
            ));
        }
        s.push_str("  </NetworkSection>\n");
    }
    s.push_str(&format!(
        "  <VirtualSystem ovf:id=\"{name}\">\n    <Info>A virtual machine</Info>\n    <Name>{name}</Name>\n"
    ));
    s.push_str("    <OperatingSystemSection ovf:id=\"1\">\n      <Info>The kind of installed guest operating system</Info>\n      <Description>Other</Description>\n    </OperatingSystemSection>\n");
    s.push_str("    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n");
    s.push_str(&format!(
        "      <System>\n        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        <vssd:InstanceID>0</vssd:InstanceID>\n        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>\n        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>\n      </System>\n"
    ));
    let item = |fields: &[(&str, String)]| {
        let mut out = String::from("      <Item>\n");
        for (k, v) in fields {
            out.push_str(&format!("        <rasd:{k}>{}</rasd:{k}>\n", escape(v)));
        }
        out.push_str("      </Item>\n");
        out
    };
    s.push_str(&item(&[
        ("AllocationUnits", "hertz * 10^6".into()),
        ("Description", "Number of Virtual CPUs".into()),
        ("ElementName", format!("{} virtual CPU(s)", spec.cpus)),
        ("InstanceID", "1".into()),
        ("ResourceType", resource::CPU.to_string()),
        ("VirtualQuantity", spec.cpus.to_string()),
    ]));
    s.push_str(&item(&[
        ("AllocationUnits", "byte * 2^20".into()),
        ("Description", "Memory Size".into()),
        ("ElementName", format!("{}MB of memory", spec.memory_mib)),
        ("InstanceID", "2".into()),
        ("ResourceType", resource::MEMORY.to_string()),
        ("VirtualQuantity", spec.memory_mib.to_string()),
    ]));
    s.push_str(&item(&[
        ("Address", "0".into()),
        ("Description", "SCSI Controller".into()),
        ("ElementName", "SCSI Controller 0".into()),
        ("InstanceID", "3".into()),
        ("ResourceSubType", "lsilogic".into()),
        ("ResourceType", resource::SCSI.to_string()),
    ]));
    let mut instance = 4;
    for i in 0..disks.len() {
        // SCSI unit 7 is the controller itself.
        let unit = if i >= 7 { i + 1 } else { i };
        s.push_str(&item(&[
            ("AddressOnParent", unit.to_string()),
            ("ElementName", format!("Hard Disk {}", i + 1)),
            ("HostResource", format!("ovf:/disk/vmdisk{}", i + 1)),
            ("InstanceID", instance.to_string()),
            ("Parent", "3".into()),
            ("ResourceType", resource::DISK.to_string()),
        ]));
        instance += 1;
    }
    for (i, n) in spec.networks.iter().enumerate() {
        s.push_str(&item(&[
            ("AddressOnParent", (i + 7).to_string()),
            ("AutomaticAllocation", "true".into()),
            ("Connection", n.clone()),
            ("Description", format!("E1000 ethernet adapter on \"{n}\"")),
            ("ElementName", format!("Network adapter {}", i + 1)),
            ("InstanceID", instance.to_string()),
            ("ResourceSubType", "E1000".into()),
            ("ResourceType", resource::ETHERNET.to_string()),
        ]));
        instance += 1;
    }
    if spec.firmware == Firmware::Efi {
        s.push_str(
            "      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"efi\"/>\n",
        );
    }
    s.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_units_cover_dmtf_and_spelled_out_forms() {
        assert_eq!(units_in_bytes("byte"), Some(1));
        assert_eq!(units_in_bytes("byte * 2^30"), Some(1 << 30));
        assert_eq!(units_in_bytes("byte*2^20"), Some(1 << 20));
        assert_eq!(units_in_bytes("byte * 10^9"), Some(1_000_000_000));
        assert_eq!(units_in_bytes("MegaBytes"), Some(1 << 20));
        assert_eq!(units_in_bytes("hertz * 10^6"), None);
        assert_eq!(units_in_bytes("byte * 2^99"), None);
    }

    #[test]
    fn emitted_descriptor_parses_back() {
        let spec = SystemSpec {
            name: "web & db".into(),
            cpus: 2,
            memory_mib: 1024,
            firmware: Firmware::Efi,
            networks: vec!["VM Network".into()],
        };
        let disks = [
            ExportedDisk {
                href: "a-disk1.vmdk".into(),
                file_size: 4096,
                capacity: 1 << 30,
            },
            ExportedDisk {
                href: "a-disk2.vmdk".into(),
                file_size: 8192,
                capacity: 1 << 20,
            },
        ];
        let text = emit(&spec, &disks);
        let d = parse(text.as_bytes(), "t.ovf").unwrap();
        assert_eq!(d.ovf_version, "1.x");
        assert_eq!(d.producer, "VMware");
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.files[1].size, Some(8192));
        assert_eq!(d.disks[0].capacity, 1 << 30);
        let s = &d.systems[0];
        assert_eq!(s.name.as_deref(), Some("web & db"));
        assert_eq!(s.cpus, Some(2));
        assert_eq!(s.memory_bytes, Some(1 << 30));
        assert_eq!(s.firmware, Firmware::Efi);
        assert_eq!(s.nics[0].network.as_deref(), Some("VM Network"));
        assert_eq!(s.disks.len(), 2);
        assert_eq!(s.disks[1].controller.as_deref(), Some("scsi (lsilogic)"));
    }

    #[test]
    fn disk_with_unknown_file_ref_is_refused() {
        let doc = format!(
            r#"<Envelope xmlns="{NS_OVF1}" xmlns:ovf="{NS_OVF1}"><References/><DiskSection><Disk ovf:diskId="d" ovf:capacity="1" ovf:fileRef="nope"/></DiskSection><VirtualSystem ovf:id="v"><VirtualHardwareSection/></VirtualSystem></Envelope>"#
        );
        assert!(matches!(
            parse(doc.as_bytes(), "t"),
            Err(OvfError::Descriptor { .. })
        ));
    }

    #[test]
    fn capacity_overflow_is_an_error() {
        let doc = format!(
            r#"<Envelope xmlns="{NS_OVF1}" xmlns:ovf="{NS_OVF1}"><References/><DiskSection><Disk ovf:diskId="d" ovf:capacity="18446744073709551615" ovf:capacityAllocationUnits="byte * 2^30"/></DiskSection><VirtualSystem ovf:id="v"><VirtualHardwareSection/></VirtualSystem></Envelope>"#
        );
        assert!(parse(doc.as_bytes(), "t").is_err());
    }
}

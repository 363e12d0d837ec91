//! VMDK, VHD and VHDX interoperability with qemu-img and the shared third-party samples,
//! delta chains, the streamOptimized layout, boot tests and `vmedia disk wrap-iso`.

mod support;
#[path = "support/disk_formats.rs"]
mod formats;

use std::path::Path;

use formats::*;
use support::*;

/// (stored sample, qemu-img format, extra files that must sit beside it)
const READABLE_SAMPLES: &[(&str, &str, &[&str])] = &[
    ("qemu-iotests/d2v-zerofilled.vhd.bz2", "vpc", &[]),
    ("qemu-iotests/hyperv2012r2-dynamic.vhd.bz2", "vpc", &[]),
    ("qemu-iotests/virtualpc-dynamic.vhd.bz2", "vpc", &[]),
    ("qemu-iotests/iotest-dynamic-1G.vhdx.bz2", "vhdx", &[]),
    ("qemu-iotests/test-disk2vhd.vhdx.bz2", "vhdx", &[]),
    ("qemu-iotests/iotest-version3.vmdk.bz2", "vmdk", &[]),
    ("qemu-iotests/iotest-version3-2013orig.vmdk.bz2", "vmdk", &[]),
    ("vmdk-rs/monolithicSparse.vmdk.xz", "vmdk", &[]),
    ("vmdk-rs/streamOptimized.vmdk.xz", "vmdk", &[]),
    ("vmdk-rs/streamOptimizedWithMarkers.vmdk.xz", "vmdk", &[]),
    ("go-vmdk-parser/vmdk-monolith.img.xz", "vmdk", &[]),
    ("go-vmdk-parser/vmdk-streamoptimized.img.xz", "vmdk", &[]),
    ("dissect.hypervisor/dynamic.vhd.gz", "vpc", &[]),
    ("dissect.hypervisor/fixed.vhd.gz", "vpc", &[]),
    ("dissect.hypervisor/dynamic.vhdx.gz", "vhdx", &[]),
    ("dissect.hypervisor/fixed.vhdx.gz", "vhdx", &[]),
    ("dfvfs/ext2.vhd.xz", "vpc", &[]),
    ("dfvfs/ext2.vmdk.xz", "vmdk", &[]),
    ("plaso/image.vhd.xz", "vpc", &[]),
    ("plaso/image.vmdk.xz", "vmdk", &[]),
];

fn check_sample_matches_qemu(name: &str, format: &str) {
    let sample = shared_sample(name);
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.raw");
    let img = open_default(&sample);
    let qemu_size = qemu_info_json(&sample, format)["virtual-size"].as_u64().unwrap();
    assert_eq!(img.virtual_size(), qemu_size, "{name}: virtual size differs from qemu-img info");
    dump_raw(img.as_ref(), &ours);
    let (code, text) = qemu_compare(&ours, "raw", &sample, format);
    assert_eq!(code, 0, "{name}: vmedia's guest view differs from qemu-img's: {text}");
}

#[test]
fn shared_samples_read_like_qemu() {
    for (name, format, _) in READABLE_SAMPLES {
        eprintln!("checking {name}");
        check_sample_matches_qemu(name, format);
    }
}

//! Replays the OVF fuzz corpora (fuzz/corpus/ovf_*) through the fuzz targets' code: no sample
//! may panic, `valid-*` samples parse and `bad-*` samples are refused.

#[path = "../../../fuzz/corpus_samples.rs"]
mod corpus_samples;

#[test]
fn ovf_descriptor_corpus_replays() {
    corpus_samples::replay("ovf_descriptor", vmedia_ovf::fuzzing::descriptor);
}

#[test]
fn ovf_manifest_corpus_replays() {
    corpus_samples::replay("ovf_manifest", vmedia_ovf::fuzzing::manifest);
}

#[test]
fn hand_written_vmware_and_virtualbox_descriptors_read_as_their_producers_wrote_them() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let vmw = vmedia_ovf::descriptor::parse(
        &std::fs::read(data.join("vsphere.ovf")).unwrap(),
        "vsphere.ovf",
    )
    .unwrap();
    assert_eq!(vmw.producer, "VMware");
    assert_eq!(vmw.disks[0].capacity, 64 << 20);
    let s = &vmw.systems[0];
    assert_eq!((s.cpus, s.memory_bytes), (Some(4), Some(2048 << 20)));
    assert_eq!(s.firmware, vmedia_ovf::Firmware::Efi);
    assert_eq!(s.os_type.as_deref(), Some("vmwarePhoton64Guest"));
    assert_eq!(s.nics[0].adapter.as_deref(), Some("VmxNet3"));
    assert_eq!(s.disks[0].controller.as_deref(), Some("scsi (VirtualSCSI)"));

    let vbox = vmedia_ovf::descriptor::parse(
        &std::fs::read(data.join("virtualbox.ovf")).unwrap(),
        "virtualbox.ovf",
    )
    .unwrap();
    assert_eq!(vbox.producer, "VirtualBox");
    assert_eq!(vbox.disks[0].capacity, 32 << 20);
    let s = &vbox.systems[0];
    assert_eq!((s.cpus, s.memory_bytes), (Some(1), Some(512 << 20)));
    assert_eq!(s.firmware, vmedia_ovf::Firmware::Efi);
    assert_eq!(s.nics[0].network.as_deref(), Some("NAT"));
    assert_eq!(s.disks[0].controller.as_deref(), Some("sata"));
    assert_eq!(s.disks[0].disk_id, "vmdisk1");
}

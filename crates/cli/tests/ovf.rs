//! `vmedia ovf`: an exported OVA is listed in the required order by bsdtar, its descriptor
//! validates with xmllint against the DMTF OVF schema (dsp8023), qemu-img reads its VMDKs as
//! the inputs, its manifest is the members' SHA-256, its signature verifies with openssl; OVA
//! and OVF packages shaped as VMware (ovftool/vSphere) and VirtualBox write them are read and
//! imported. One export fixture is shared by all cases.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use support::{require_tool, run_any, run_ok, vmedia};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    inputs: Vec<PathBuf>,
    ova: PathBuf,
}

/// Writes `len` bytes of a recognisable pattern with zero gaps (so sparse and data ranges
/// both occur) to `path` as a raw disk.
fn pattern_disk(path: &Path, len: usize, seed: u8) {
    let mut data = vec![0u8; len];
    for (i, chunk) in data.chunks_mut(64 << 10).enumerate() {
        if i % 3 != 1 {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = (j as u8).wrapping_mul(31).wrapping_add(seed ^ i as u8);
            }
        }
    }
    fs::write(path, data).unwrap();
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        require_tool("qemu-img");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        pattern_disk(&root.join("boot.raw"), 8 << 20, 1);
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(root.join("boot.raw"))
                .arg(root.join("boot.qcow2")),
        );
        pattern_disk(&root.join("data.raw"), 3 << 20, 7);
        let inputs = vec![root.join("boot.qcow2"), root.join("data.raw")];
        let ova = root.join("web.ova");
        run_ok(
            vmedia()
                .args(["ovf", "export"])
                .args(&inputs)
                .arg("-o")
                .arg(&ova)
                .args([
                    "--name",
                    "web 1",
                    "--cpus",
                    "2",
                    "--memory",
                    "2048",
                    "--firmware",
                    "efi",
                    "--network",
                    "VM Network",
                ]),
        );
        Fixture {
            _dir: dir,
            root,
            inputs,
            ova,
        }
    })
}

fn bsdtar_list(ova: &Path) -> Vec<String> {
    require_tool("bsdtar");
    let out = run_ok(Command::new("bsdtar").arg("-tf").arg(ova));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn extract(ova: &Path, member: &str, into: &Path) -> PathBuf {
    run_ok(
        Command::new("bsdtar")
            .arg("-xf")
            .arg(ova)
            .arg("-C")
            .arg(into)
            .arg(member),
    );
    into.join(member)
}

#[test]
fn export_writes_the_members_in_the_order_the_format_requires() {
    let f = fixture();
    assert_eq!(
        bsdtar_list(&f.ova),
        [
            "web_1.ovf",
            "web_1-disk1.vmdk",
            "web_1-disk2.vmdk",
            "web_1.mf"
        ]
    );
}

#[test]
fn exported_descriptor_validates_against_the_dmtf_ovf_schema() {
    let f = fixture();
    let xmllint = require_tool("xmllint");
    let dir = tempfile::tempdir().unwrap();
    let ovf = extract(&f.ova, "web_1.ovf", dir.path());
    let schema =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ovf/tests/data/schema/dsp8023_1.1.1.xsd");
    let (code, out, err) = run_any(
        Command::new(xmllint)
            .args(["--noout", "--nonet", "--schema"])
            .arg(&schema)
            .arg(&ovf),
    );
    assert_eq!(
        code,
        0,
        "xmllint refused the descriptor:\n{out}{err}\n{}",
        fs::read_to_string(&ovf).unwrap()
    );
    assert!(err.contains("validates"), "{err}");
}

#[test]
fn qemu_img_reads_the_exported_vmdks_as_the_inputs() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    for (i, input) in f.inputs.iter().enumerate() {
        let vmdk = extract(&f.ova, &format!("web_1-disk{}.vmdk", i + 1), dir.path());
        let info = run_ok(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(&vmdk),
        );
        let info = String::from_utf8(info.stdout).unwrap();
        assert!(info.contains("streamOptimized"), "{info}");
        run_ok(Command::new("qemu-img").arg("check").arg(&vmdk));
        run_ok(
            Command::new("qemu-img")
                .arg("compare")
                .arg(input)
                .arg(&vmdk),
        );
    }
}

#[test]
fn manifest_lists_the_sha256_of_the_descriptor_and_every_disk() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mf = fs::read_to_string(extract(&f.ova, "web_1.mf", dir.path())).unwrap();
    let mut expected = String::new();
    for m in ["web_1.ovf", "web_1-disk1.vmdk", "web_1-disk2.vmdk"] {
        let p = extract(&f.ova, m, dir.path());
        expected.push_str(&format!("SHA256({m})= {}\n", support::sha256_file(&p)));
    }
    assert_eq!(mf, expected);
}

#[test]
fn info_reads_back_what_export_wrote() {
    let f = fixture();
    let out = run_ok(vmedia().args(["ovf", "info", "--json"]).arg(&f.ova));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sys = &v["systems"][0];
    assert_eq!(sys["name"], "web 1");
    assert_eq!(sys["cpus"], 2);
    assert_eq!(sys["memory_bytes"], 2048u64 << 20);
    assert_eq!(sys["firmware"], "efi");
    assert_eq!(sys["nics"][0]["network"], "VM Network");
    assert_eq!(v["disks"][0]["capacity"], 8u64 << 20);
    assert_eq!(v["disks"][1]["capacity"], 3u64 << 20);
    assert_eq!(v["manifest_checked"].as_array().unwrap().len(), 3);
    let human = run_ok(vmedia().args(["ovf", "info"]).arg(&f.ova));
    let human = String::from_utf8(human.stdout).unwrap();
    assert!(
        human.contains("manifest:    web_1.mf: 3 files OK (SHA256)"),
        "{human}"
    );
}

#[test]
fn import_converts_the_disks_back_to_the_inputs() {
    let f = fixture();
    let out = f.root.join("imported");
    run_ok(
        vmedia()
            .args(["ovf", "import", "--format", "qcow2"])
            .arg(&f.ova)
            .arg("-o")
            .arg(&out),
    );
    assert!(out.join("web_1.ovf").is_file());
    run_ok(
        Command::new("qemu-img")
            .arg("compare")
            .arg(&f.inputs[0])
            .arg(out.join("web_1-disk1.qcow2")),
    );
    run_ok(
        Command::new("qemu-img")
            .arg("compare")
            .arg(&f.inputs[1])
            .arg(out.join("web_1-disk2.qcow2")),
    );
    // A second import into the same folder refuses to replace without --force.
    let (code, _, err) = run_any(
        vmedia()
            .args(["ovf", "import", "--format", "qcow2"])
            .arg(&f.ova)
            .arg("-o")
            .arg(&out),
    );
    assert_ne!(code, 0);
    assert!(err.contains("web_1.ovf"), "{err}");
}

#[test]
fn a_changed_disk_byte_fails_the_manifest_check_before_anything_is_written() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let ovf_len = fs::metadata(extract(&f.ova, "web_1.ovf", dir.path()))
        .unwrap()
        .len();
    let mut bytes = fs::read(&f.ova).unwrap();
    // Header, descriptor (padded), the first disk's header, then its data.
    let disk1 = 512 + ovf_len.div_ceil(512) * 512 + 512;
    bytes[disk1 as usize + 4000] ^= 0x55;
    let bad = dir.path().join("bad.ova");
    fs::write(&bad, &bytes).unwrap();
    let (code, _, err) = run_any(vmedia().args(["ovf", "info"]).arg(&bad));
    assert_ne!(code, 0);
    assert!(
        err.contains("web_1-disk1.vmdk") && err.contains("SHA256 digest mismatch"),
        "{err}"
    );
    let out = dir.path().join("never");
    let (code, _, _) = run_any(
        vmedia()
            .args(["ovf", "import"])
            .arg(&bad)
            .arg("-o")
            .arg(&out),
    );
    assert_ne!(code, 0);
    assert!(!out.join("web_1.ovf").exists());
}

#[test]
fn signed_export_verifies_with_openssl() {
    let f = fixture();
    let openssl = require_tool("openssl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(
        Command::new(&openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=vmedia test",
            ])
            .arg("-keyout")
            .arg(d.join("key.pem"))
            .arg("-out")
            .arg(d.join("cert.pem")),
    );
    let ova = d.join("signed.ova");
    run_ok(
        vmedia()
            .args(["ovf", "export"])
            .arg(&f.inputs[1])
            .arg("-o")
            .arg(&ova)
            .arg("--sign")
            .arg(d.join("key.pem"))
            .arg(d.join("cert.pem")),
    );
    assert_eq!(
        bsdtar_list(&ova),
        ["vm.ovf", "vm-disk1.vmdk", "vm.mf", "vm.cert"]
    );
    let cert = fs::read_to_string(extract(&ova, "vm.cert", d)).unwrap();
    let first = cert.lines().next().unwrap();
    let sig = first.strip_prefix("SHA256(vm.mf)= ").expect(first);
    fs::write(d.join("sig.bin"), hex_decode(sig)).unwrap();
    assert!(cert.contains("-----BEGIN CERTIFICATE-----"));
    let mf = extract(&ova, "vm.mf", d);
    let pubkey = run_ok(
        Command::new(&openssl)
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(d.join("vm.cert")),
    );
    fs::write(d.join("pub.pem"), pubkey.stdout).unwrap();
    let out = run_ok(
        Command::new(&openssl)
            .args(["dgst", "-sha256", "-verify"])
            .arg(d.join("pub.pem"))
            .arg("-signature")
            .arg(d.join("sig.bin"))
            .arg(&mf),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Verified OK"));
    let info = run_ok(vmedia().args(["ovf", "info"]).arg(&ova));
    assert!(String::from_utf8_lossy(&info.stdout).contains("certificate: vm.cert"));
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ovf_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ovf/tests/data")
        .join(name)
}

fn digest_line(tool: &str, spelled: &str, path: &Path) -> String {
    let out = run_ok(Command::new(tool).arg(path));
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.split_whitespace().next().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    match spelled {
        "ovftool" => format!("SHA256({name})= {hex}\n"),
        _ => format!("SHA1 ({name}) = {hex}\n"),
    }
}

#[test]
fn a_vsphere_shaped_ova_made_by_other_tools_imports() {
    require_tool("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pattern_disk(&d.join("photon.raw"), 64 << 20, 3);
    run_ok(
        Command::new("qemu-img")
            .args([
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(d.join("photon.raw"))
            .arg(d.join("photon-disk1.vmdk")),
    );
    fs::copy(ovf_data("vsphere.ovf"), d.join("photon.ovf")).unwrap();
    let mf = digest_line("sha256sum", "ovftool", &d.join("photon.ovf"))
        + &digest_line("sha256sum", "ovftool", &d.join("photon-disk1.vmdk"));
    fs::write(d.join("photon.mf"), mf).unwrap();
    // ovftool's order: descriptor, manifest, disks; GNU tar's ustar, as ovftool writes.
    run_ok(
        Command::new("tar")
            .arg("--format=ustar")
            .arg("-cf")
            .arg(d.join("photon.ova"))
            .arg("-C")
            .arg(d)
            .args(["photon.ovf", "photon.mf", "photon-disk1.vmdk"]),
    );
    let out = run_ok(vmedia().args(["ovf", "info"]).arg(d.join("photon.ova")));
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "OVF 1.x, VMware style",
        "system photon: photon [vmx-19]",
        "cpus 4, memory 2 GiB, firmware efi, os vmwarePhoton64Guest",
        "nic VmxNet3 on VM Network",
        "disk vmdisk1 on scsi (VirtualSCSI) unit 0",
        "manifest:    photon.mf: 2 files OK (SHA256)",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let out = d.join("vm");
    run_ok(
        vmedia()
            .args(["ovf", "import", "--format", "raw"])
            .arg(d.join("photon.ova"))
            .arg("-o")
            .arg(&out),
    );
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(d.join("photon.raw"))
            .arg(out.join("photon-disk1.raw")),
    );
}

#[test]
fn a_virtualbox_shaped_ovf_folder_imports_with_its_sha1_manifest() {
    require_tool("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pattern_disk(&d.join("debian.raw"), 32 << 20, 9);
    run_ok(
        Command::new("qemu-img")
            .args([
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(d.join("debian.raw"))
            .arg(d.join("debian-disk001.vmdk")),
    );
    fs::copy(ovf_data("virtualbox.ovf"), d.join("debian.ovf")).unwrap();
    let mf = digest_line("sha1sum", "vbox", &d.join("debian.ovf"))
        + &digest_line("sha1sum", "vbox", &d.join("debian-disk001.vmdk"));
    fs::write(d.join("debian.mf"), mf).unwrap();
    let out = run_ok(
        vmedia()
            .args(["ovf", "info", "--json"])
            .arg(d.join("debian.ovf")),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "ovf");
    assert_eq!(v["producer"], "VirtualBox");
    assert_eq!(v["systems"][0]["memory_bytes"], 512u64 << 20);
    assert_eq!(v["systems"][0]["firmware"], "efi");
    assert_eq!(v["systems"][0]["disks"][0]["controller"], "sata");
    assert_eq!(v["manifest_checked"][0]["algorithm"], "Sha1");
    let out = d.join("vm");
    run_ok(
        vmedia()
            .args(["ovf", "import"])
            .arg(d.join("debian.ovf"))
            .arg("-o")
            .arg(&out),
    );
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw"])
            .arg(d.join("debian.raw"))
            .arg(out.join("debian-disk001.vmdk")),
    );
    // A file outside the descriptor's folder is never opened.
    let evil = fs::read_to_string(d.join("debian.ovf")).unwrap().replace(
        "ovf:href=\"debian-disk001.vmdk\"",
        "ovf:href=\"../etc/passwd\"",
    );
    fs::write(d.join("evil.ovf"), evil).unwrap();
    let (code, _, err) = run_any(
        vmedia()
            .args(["ovf", "import", "--no-verify"])
            .arg(d.join("evil.ovf"))
            .arg("-o")
            .arg(d.join("evil")),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("outside") || err.contains("plain file names"),
        "{err}"
    );
}

#[test]
fn library_add_records_an_ova_as_a_package_with_its_disks() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("library");
    let with_lib = || {
        let mut cmd = vmedia();
        cmd.env_remove("VMEDIA_LIBRARY_KEY")
            .env("VMEDIA_LIBRARY", &lib);
        cmd
    };
    run_ok(with_lib().args(["library", "init"]));
    let out = run_ok(
        with_lib()
            .args(["library", "add", "web", "--json"])
            .arg(&f.ova),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kind = &v["kind"];
    assert_eq!(kind["type"], "ovf", "{v}");
    assert_eq!(kind["name"], "web 1");
    assert_eq!(kind["disks"][0]["file"], "web_1-disk1.vmdk");
    assert_eq!(kind["disks"][1]["capacity"], 3u64 << 20);
}

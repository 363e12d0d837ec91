//! A real UEFI machine network-boots over IPv6 only through `vmedia netboot serve`: OVMF
//! (Debian's ovmf, QEMU TCG) with no NIC option ROM, so its own NetworkPkg drivers run, on a
//! tap device on an IPv6-only bridge inside a network namespace the test creates. UEFI PXE over
//! IPv6: DHCPv6 (full mode) hands out an address and `tftp://[fd00:6::1]/grubx64.efi`, the
//! firmware fetches GRUB over TFTP/IPv6, GRUB fetches the payload kernel and initramfs over
//! TFTP/IPv6, and the payload prints its marker.

#[path = "support/netboot.rs"]
mod nb;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nb::{Netns, Server};
use support::{cached_fixture, payload, qemu_boot, require_tool, run_ok, Firmware, BOOT_MARKER};

/// TCG is slow and the machine is shared: a boot may take minutes.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// A namespace with br0 (fd00:6::1/64, no IPv4 address) and tap0 on it; DAD off so the
/// address is usable at once.
fn ipv6_lab(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    run_ok(ns.command("sysctl").args([
        "-qw",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.all.accept_dad=0",
    ]));
    ns.ip(&["link", "add", "br0", "type", "bridge"]);
    ns.ip(&["addr", "add", "fd00:6::1/64", "dev", "br0", "nodad"]);
    ns.ip(&["link", "set", "br0", "up"]);
    ns.tap("tap0");
    ns
}

fn copy(from: &Path, to: &Path) {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}

/// GRUB EFI with an embedded config that loads the payload from where GRUB itself came from:
/// after a PXEv6 boot GRUB's `$root` is `tftp,fd00:6::1` (the server of the DHCPv6 boot URL).
fn grub_root6() -> PathBuf {
    cached_fixture("netboot6-grub-root", |dir| {
        require_tool("grub-mkimage");
        let p = payload();
        copy(&p.kernel, &dir.join("vmlinuz"));
        copy(&p.initrd, &dir.join("initrd.gz"));
        let cfg = dir.join("embedded.cfg");
        fs::write(
            &cfg,
            "echo vmedia-grub root=$root\nlinux ($root)/vmlinuz console=ttyS0 panic=-1\ninitrd ($root)/initrd.gz\nboot\n",
        )
        .unwrap();
        run_ok(
            Command::new("grub-mkimage")
                .args(["-O", "x86_64-efi", "-p", "/grub", "-c"])
                .arg(&cfg)
                .arg("-o")
                .arg(dir.join("grubx64.efi"))
                .args(["efinet", "tftp", "net", "linux", "normal", "echo"]),
        );
        fs::remove_file(&cfg).unwrap();
    })
}

#[test]
fn ovmf_pxe_boots_over_ipv6_with_dhcp6_and_tftp() {
    require_tool("qemu-system-x86_64");
    let root = grub_root6();
    let ns = ipv6_lab("vm6");
    let scratch = tempfile::tempdir().unwrap();
    let server = Server::start(
        &ns,
        &[
            "--interface",
            "br0",
            "--no-dhcp",
            "--dhcp6",
            "full",
            "--dhcp6-range",
            "fd00:6::100-fd00:6::1ff",
            "--lease-file6",
            scratch.path().join("leases6.json").to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--uefi-bootfile",
            "grubx64.efi",
            "--tftp-port",
            "69",
            "--http-port",
            "8080",
        ],
    );
    // No option ROM (romfile=): OVMF's own virtio-net driver and NetworkPkg PXE run. The
    // fw_cfg knob turns off its PXEv4 boot option, which on an IPv6-only link would only wait
    // out DHCPv4 before the PXEv6 option is tried.
    let args: Vec<String> = [
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:66:00:01,romfile=",
        "-fw_cfg",
        "name=opt/org.tianocore/IPv4PXESupport,string=n",
        "-boot",
        "order=n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let console = ns.run(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        qemu_boot(Firmware::Uefi, &refs, BOOT_MARKER, BOOT_TIMEOUT)
    });
    assert!(console.contains(BOOT_MARKER));
    assert!(
        console.contains("UEFI PXEv6 (MAC:525400660001)"),
        "not the firmware's PXEv6 boot option:\n{console}"
    );
    assert!(console.contains("root=tftp,fd00:6::1"), "{console}");
    let log = server.log();
    assert!(
        log.contains(
            "DHCPv6 REQUEST -> REPLY fd00:6::100 boot tftp://[fd00:6::1]/grubx64.efi arch=7"
        ),
        "{log}"
    );
    assert!(
        log.contains("tftp 52:54:00:66:00:01 done grubx64.efi"),
        "{log}"
    );
    assert!(log.contains("done vmlinuz"), "{log}");
    assert!(log.contains("done initrd.gz"), "{log}");
    assert!(
        !log.contains("ipxe"),
        "iPXE answered instead of the firmware:\n{log}"
    );
}

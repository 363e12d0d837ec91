//! A real UEFI machine network-boots over IPv6 only through `vmedia netboot serve`: OVMF
//! (Debian's ovmf, QEMU TCG) with no NIC option ROM, so its own NetworkPkg drivers run, on a
//! tap device on an IPv6-only bridge inside a network namespace the test creates. UEFI PXE over
//! IPv6: DHCPv6 (full mode) hands out an address and `tftp://[fd00:6::1]/grubx64.efi`, the
//! firmware fetches GRUB over TFTP/IPv6, GRUB fetches the payload kernel and initramfs over
//! TFTP/IPv6, and the payload prints its marker. UEFI HTTP boot over IPv6: a second machine
//! gets `http://[fd00:6::1]/grubx64.efi` as an HTTP-boot client (architecture 16) and boots
//! GRUB, then the payload, over HTTP/IPv6. Both boots share one namespace and one server.

#[path = "support/netboot.rs"]
mod nb;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nb::{Netns, Server};
use support::{cached_fixture, payload, qemu_boot, require_tool, run_ok, Firmware, BOOT_MARKER};

/// TCG is slow and the machine is shared: a boot may take minutes (each of these took
/// 270-420 s while the host's load average was 28 on 2 cores).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

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
/// after a PXEv6 boot GRUB's `$root` is `tftp,fd00:6::1` (the server of the DHCPv6 boot URL),
/// after an HTTPv6 boot `http,fd00:6::1` (port 80).
fn grub_root6() -> PathBuf {
    cached_fixture("netboot6-grub-root", |dir| {
        require_tool("grub-mkimage");
        let p = payload();
        copy(&p.kernel, &dir.join("vmlinuz"));
        copy(&p.initrd, &dir.join("initrd.gz"));
        let cfg = dir.join("embedded.cfg");
        fs::write(
            &cfg,
            "echo vmedia-grub root=$root\nlinux ($root)/vmlinuz console=ttyS0 no_timer_check panic=-1\ninitrd ($root)/initrd.gz\nboot\n",
        )
        .unwrap();
        run_ok(
            Command::new("grub-mkimage")
                .args(["-O", "x86_64-efi", "-p", "/grub", "-c"])
                .arg(&cfg)
                .arg("-o")
                .arg(dir.join("grubx64.efi"))
                .args(["efinet", "tftp", "http", "net", "linux", "normal", "echo"]),
        );
        fs::remove_file(&cfg).unwrap();
    })
}

/// QEMU arguments for a machine on tap0 with `mac`, no option ROM (romfile=: OVMF's own
/// virtio-net driver and NetworkPkg PXE and HTTP boot run), and OVMF fw_cfg knobs.
fn vm_args(mac: &str, knobs: &[&str]) -> Vec<String> {
    let mut args = vec![
        "-netdev".to_string(),
        "tap,id=n0,ifname=tap0,script=no,downscript=no".to_string(),
        "-device".to_string(),
        format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
        "-boot".to_string(),
        "order=n".to_string(),
    ];
    for knob in knobs {
        args.push("-fw_cfg".to_string());
        args.push(format!("name=opt/org.tianocore/{knob},string=n"));
    }
    args
}

fn boot(ns: &Netns, args: Vec<String>) -> String {
    ns.run(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        qemu_boot(Firmware::Uefi, &refs, BOOT_MARKER, BOOT_TIMEOUT)
    })
}

#[test]
fn ovmf_boots_over_ipv6_by_pxe_with_tftp_and_by_http_boot() {
    require_tool("qemu-system-x86_64");
    let root = grub_root6();
    let ns = ipv6_lab("vm6");
    let scratch = tempfile::tempdir().unwrap();
    // OVMF's HTTP-boot driver gives up at once when the link-local address is still in
    // duplicate address detection (it never sends its SOLICIT), which on a TCG machine it
    // always is right after start. PXEv6 waits for it, so the HTTP machine tries PXEv6
    // first, and this rule makes that attempt fail (no such file) before HTTPv6 runs.
    let rules = scratch.path().join("rules.toml");
    fs::write(
        &rules,
        "[[machine]]\nmac = \"52:54:00:66:00:02\"\narch = 7\nbootfile = \"no-such-file.efi\"\n",
    )
    .unwrap();
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
            "--config",
            rules.to_str().unwrap(),
            "--uefi-bootfile",
            "grubx64.efi",
            "--tftp-port",
            "69",
            // GRUB's http module connects to port 80.
            "--http-port",
            "80",
        ],
    );

    // UEFI PXE over IPv6. The PXEv4 option comes first and would only wait out DHCPv4 on
    // this IPv6-only link; the fw_cfg knob removes it.
    let console = boot(&ns, vm_args("52:54:00:66:00:01", &["IPv4PXESupport"]));
    assert!(
        console.contains("UEFI PXEv6 (MAC:525400660001)"),
        "not the firmware's PXEv6 boot option:\n{console}"
    );
    assert!(console.contains("root=tftp,fd00:6::1"), "{console}");
    let log = server.log();
    assert!(
        log.contains("52:54:00:66:00:01 DHCPv6 REQUEST -> REPLY fd00:6::100 boot tftp://[fd00:6::1]/grubx64.efi arch=7"),
        "{log}"
    );
    assert!(
        log.contains("tftp 52:54:00:66:00:01 done grubx64.efi"),
        "{log}"
    );
    assert!(log.contains("tftp 52:54:00:66:00:01 done vmlinuz"), "{log}");
    assert!(
        log.contains("tftp 52:54:00:66:00:01 done initrd.gz"),
        "{log}"
    );

    // UEFI HTTP boot over IPv6: no IPv4 (so no HTTPv4 option either).
    let console = boot(
        &ns,
        vm_args("52:54:00:66:00:02", &["IPv4PXESupport", "IPv4Support"]),
    );
    assert!(
        console.contains("UEFI HTTPv6 (MAC:525400660002)"),
        "not the firmware's HTTPv6 boot option:\n{console}"
    );
    assert!(
        console.contains("URI: http://[fd00:6::1]/grubx64.efi"),
        "{console}"
    );
    assert!(console.contains("root=http,fd00:6::1"), "{console}");
    let log = server.log();
    // Its address may be the one its failed PXEv6 attempt released, or the next one.
    assert!(
        log.lines().any(
            |line| line.contains("52:54:00:66:00:02 DHCPv6 REQUEST -> REPLY fd00:6::")
                && line.contains("boot http://[fd00:6::1]/grubx64.efi arch=16 (x64 UEFI HTTP)")
        ),
        "{log}"
    );
    assert!(
        log.contains("http 52:54:00:66:00:02 done grubx64.efi"),
        "{log}"
    );
    assert!(log.contains("http 52:54:00:66:00:02 done vmlinuz"), "{log}");
    assert!(
        log.contains("http 52:54:00:66:00:02 done initrd.gz"),
        "{log}"
    );
    assert!(
        !log.contains("ipxe"),
        "iPXE answered instead of the firmware:\n{log}"
    );
}

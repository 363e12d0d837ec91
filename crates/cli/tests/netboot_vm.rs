//! Real machines boot through `vmedia netboot serve`: QEMU (TCG) VMs with QEMU's own iPXE ROM
//! (ipxe-qemu) or OVMF's PXE stack, on a tap device on a private bridge inside a network
//! namespace the test creates (never the host's network). Every bridge also carries IPv6
//! router advertisements (dnsmasq): iPXE does not finish configuring its interface until IPv6
//! router discovery is over, which without a router costs ~16 s per boot.

#[path = "support/netboot.rs"]
mod nb;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nb::{Netns, Server};
use support::{cached_fixture, payload, qemu_boot, require_tool, run_ok, Firmware, BOOT_MARKER};

/// TCG is slow and the machine is shared: a boot may take minutes.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// A namespace with br0 (10.N.0.1/24, and fd00:N::1/64 for router advertisements) and tap0
/// on it.
fn lab(tag: &str, subnet: u8) -> Netns {
    let ns = Netns::new(tag);
    ns.bridge(&format!("10.{subnet}.0.1/24"));
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("fd00:{subnet}::1/64"),
        "dev",
        "br0",
        "nodad",
    ]);
    ns.tap("tap0");
    ns
}

/// dnsmasq's arguments that make it send IPv6 router advertisements (SLAAC only, no DHCPv6)
/// on br0. iPXE configures IPv4 and IPv6 together and reports "Configuring ... ok" only when
/// both are done: on a link without a router it waits out its router solicitations, ~16 s of
/// busy polling under TCG on a loaded host, before it even fetches the boot file. With an
/// advertisement it goes on at once.
const ROUTER_ADVERTISEMENTS: [&str; 2] = ["--enable-ra", "--dhcp-range=::,constructor:br0,ra-only"];

/// dnsmasq sending router advertisements only (no DHCP), for the iPXE machines whose DHCP
/// comes from vmedia.
fn router_advertiser(ns: &Netns, dir: &Path) -> Killed {
    require_tool("dnsmasq");
    let child = ns
        .command("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=br0",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
        ])
        .args(ROUTER_ADVERTISEMENTS)
        .arg(format!("--pid-file={}", dir.join("radvd.pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start dnsmasq");
    Killed(child)
}

fn nic_args(mac: &str) -> Vec<String> {
    vec![
        "-netdev".into(),
        "tap,id=n0,ifname=tap0,script=no,downscript=no".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={mac}"),
        "-boot".into(),
        "order=n".into(),
    ]
}

/// Boots a VM inside the namespace (QEMU opens tap0 there) and returns its console.
fn boot_in(ns: &Netns, firmware: Firmware, args: Vec<String>, marker: &'static str) -> String {
    require_tool("qemu-system-x86_64");
    ns.run(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        qemu_boot(firmware, &refs, marker, BOOT_TIMEOUT)
    })
}

fn copy(from: &Path, to: &Path) {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}

/// pxelinux + the payload kernel and initramfs.
fn pxelinux_root() -> PathBuf {
    cached_fixture("netboot-pxelinux-root", |dir| {
        let p = payload();
        copy(
            Path::new("/usr/lib/PXELINUX/pxelinux.0"),
            &dir.join("pxelinux.0"),
        );
        copy(
            Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
            &dir.join("ldlinux.c32"),
        );
        copy(&p.kernel, &dir.join("vmlinuz"));
        copy(&p.initrd, &dir.join("initrd.gz"));
        fs::create_dir_all(dir.join("pxelinux.cfg")).unwrap();
        fs::write(dir.join("pxelinux.cfg/default"), "DEFAULT vm\nPROMPT 0\nLABEL vm\n  KERNEL vmlinuz\n  APPEND initrd=initrd.gz console=ttyS0 no_timer_check panic=-1\n").unwrap();
    })
}

/// A GRUB EFI network boot image with an embedded config that loads the payload over TFTP.
fn grub_root(server: &str) -> PathBuf {
    cached_fixture(&format!("netboot-grub-root-{server}"), |dir| {
        require_tool("grub-mkimage");
        let p = payload();
        copy(&p.kernel, &dir.join("vmlinuz"));
        copy(&p.initrd, &dir.join("initrd.gz"));
        let cfg = dir.join("embedded.cfg");
        fs::write(
            &cfg,
            format!("echo vmedia-grub\nlinux (tftp,{server})/vmlinuz console=ttyS0 no_timer_check panic=-1\ninitrd (tftp,{server})/initrd.gz\nboot\n"),
        )
        .unwrap();
        run_ok(
            Command::new("grub-mkimage")
                .args(["-O", "x86_64-efi", "-p", "/grub", "-c"])
                .arg(&cfg)
                .arg("-o")
                .arg(dir.join("grubx64.efi"))
                .args([
                    "efinet",
                    "tftp",
                    "net",
                    "linux",
                    "normal",
                    "echo",
                    "configfile",
                ]),
        );
        fs::remove_file(&cfg).unwrap();
    })
}

/// An ISO holding the payload under /boot, built with xorriso.
fn payload_iso_root() -> PathBuf {
    cached_fixture("netboot-iso-root", |dir| {
        require_tool("xorriso");
        let p = payload();
        let tree = dir.join("tree");
        copy(&p.kernel, &tree.join("boot/vmlinuz"));
        copy(&p.initrd, &tree.join("boot/initrd.gz"));
        fs::create_dir_all(dir.join("root")).unwrap();
        run_ok(
            Command::new("xorriso")
                .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
                .arg(dir.join("root/payload.iso"))
                .arg(&tree),
        );
        fs::remove_dir_all(&tree).unwrap();
    })
    .join("root")
}

#[test]
fn bios_boots_pxelinux_over_tftp_with_full_dhcp() {
    let root = pxelinux_root();
    let ns = lab("vmpxe", 79);
    let leases = tempfile::tempdir().unwrap();
    let _router = router_advertiser(&ns, leases.path());
    let server = Server::start(
        &ns,
        &[
            "--interface",
            "br0",
            "--dhcp-range",
            "10.79.0.100-10.79.0.150",
            "--root",
            root.to_str().unwrap(),
            "--bios-bootfile",
            "pxelinux.0",
            "--http-port",
            "8080",
            "--lease-file",
            leases.path().join("l.json").to_str().unwrap(),
        ],
    );
    let console = boot_in(
        &ns,
        Firmware::Bios,
        nic_args("52:54:00:79:00:01"),
        BOOT_MARKER,
    );
    assert!(console.contains(BOOT_MARKER));
    let log = server.log();
    assert!(log.contains("-> OFFER 10.79.0.100"), "{log}");
    assert!(log.contains("done pxelinux.0"), "{log}");
    assert!(log.contains("done vmlinuz"), "{log}");
    assert!(log.contains("done initrd.gz"), "{log}");
}

/// dnsmasq as the network's plain DHCP server (addresses only, no PXE options) and IPv6
/// router (see ROUTER_ADVERTISEMENTS). `--no-ping`:
/// by default dnsmasq pings an address before it offers it and holds the OFFER until the
/// ping times out (seconds, then the client's retransmission), a wait that proves nothing on
/// a private bridge with one machine.
fn plain_dhcp_server(ns: &Netns, dir: &Path, subnet: u8) -> Child {
    require_tool("dnsmasq");
    ns.command("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=br0",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-ping",
        ])
        .args(ROUTER_ADVERTISEMENTS)
        .arg(format!(
            "--dhcp-range=10.{subnet}.0.100,10.{subnet}.0.150,255.255.255.0,1h"
        ))
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join("dnsmasq.leases").display()
        ))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start dnsmasq")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bios_ipxe_script_boots_kernel_from_an_iso_over_http_in_proxy_mode_beside_dnsmasq() {
    let root = payload_iso_root();
    let ns = lab("vmproxy", 78);
    let scratch = tempfile::tempdir().unwrap();
    let _dnsmasq = Killed(plain_dhcp_server(&ns, scratch.path(), 78));
    let rules = scratch.path().join("rules.toml");
    fs::write(
        &rules,
        "[default]\nkernel = \"payload.iso:/boot/vmlinuz\"\ninitrd = [\"payload.iso:/boot/initrd.gz\"]\ncmdline = \"console=ttyS0 no_timer_check panic=-1 vmedia.host={{hostname}}\"\n",
    )
    .unwrap();
    let server = Server::start(
        &ns,
        &[
            "--interface",
            "br0",
            "--proxy",
            "--root",
            root.to_str().unwrap(),
            "--config",
            rules.to_str().unwrap(),
            "--http-port",
            "8080",
        ],
    );
    let console = boot_in(
        &ns,
        Firmware::Bios,
        nic_args("52:54:00:78:00:01"),
        BOOT_MARKER,
    );
    assert!(console.contains(BOOT_MARKER));
    let log = server.log();
    assert!(
        log.contains(
            "proxy OFFER boot=http://10.78.0.1:8080/boot.ipxe?mac=52:54:00:78:00:01&arch=0"
        ),
        "{log}"
    );
    // The address is dnsmasq's: the proxy never acknowledges a lease.
    assert!(
        !log.contains("-> proxy ACK") || log.contains("on port 4011 -> proxy ACK"),
        "the proxy answered a port-67 REQUEST:\n{log}"
    );
    assert!(log.contains("boot.ipxe served (default rule"), "{log}");
    assert!(log.contains("done payload.iso/boot/vmlinuz"), "{log}");
    assert!(log.contains("done payload.iso/boot/initrd.gz"), "{log}");
    let leases = fs::read_to_string(scratch.path().join("dnsmasq.leases")).unwrap_or_default();
    assert!(
        leases.contains("52:54:00:78:00:01"),
        "the address did not come from dnsmasq: {leases:?}"
    );
}

#[test]
fn uefi_boots_grub_efi_over_tftp_with_full_dhcp() {
    let root = grub_root("10.77.0.1");
    let ns = lab("vmefi", 77);
    let leases = tempfile::tempdir().unwrap();
    let _router = router_advertiser(&ns, leases.path());
    let server = Server::start(
        &ns,
        &[
            "--interface",
            "br0",
            "--dhcp-range",
            "10.77.0.100-10.77.0.150",
            "--root",
            root.to_str().unwrap(),
            "--uefi-bootfile",
            "grubx64.efi",
            "--http-port",
            "8080",
            "--lease-file",
            leases.path().join("l.json").to_str().unwrap(),
        ],
    );
    let console = boot_in(
        &ns,
        Firmware::Uefi,
        nic_args("52:54:00:77:00:01"),
        BOOT_MARKER,
    );
    assert!(console.contains(BOOT_MARKER));
    let log = server.log();
    assert!(log.contains("arch=7 (x64 UEFI)"), "{log}");
    assert!(log.contains("done grubx64.efi"), "{log}");
    assert!(log.contains("done vmlinuz"), "{log}");
}

#[test]
fn uefi_firmware_pxe_boots_in_proxy_mode_beside_dnsmasq() {
    // No option ROM: OVMF's own virtio-net driver and PXE stack (not iPXE) do DHCP, ask the
    // proxy on port 4011 and fetch the boot file with their own TFTP client.
    let root = grub_root("10.74.0.1");
    let ns = lab("vmefiproxy", 74);
    let scratch = tempfile::tempdir().unwrap();
    let _dnsmasq = Killed(plain_dhcp_server(&ns, scratch.path(), 74));
    let server = Server::start(
        &ns,
        &[
            "--interface",
            "br0",
            "--proxy",
            "--root",
            root.to_str().unwrap(),
            "--uefi-bootfile",
            "grubx64.efi",
            "--http-port",
            "8080",
        ],
    );
    let mut args = nic_args("52:54:00:74:00:01");
    args[3] = "virtio-net-pci,netdev=n0,mac=52:54:00:74:00:01,romfile=".into();
    let console = boot_in(&ns, Firmware::Uefi, args, BOOT_MARKER);
    assert!(console.contains(BOOT_MARKER));
    let log = server.log();
    assert!(
        log.contains("DISCOVER arch=7 (x64 UEFI) on port 67 -> proxy OFFER boot=grubx64.efi"),
        "{log}"
    );
    assert!(
        !log.contains("ipxe"),
        "iPXE answered instead of the firmware:\n{log}"
    );
    assert!(log.contains("done grubx64.efi"), "{log}");
}

#[test]
fn debian_installer_starts_from_its_netboot_tree() {
    let tree = Path::new("/usr/lib/debian-installer/images/12/amd64/text");
    assert!(
        tree.join("debian-installer/amd64/linux").exists(),
        "install debian-installer-12-netboot-amd64 (scripts/setup.sh)"
    );
    let ns = lab("vmdi", 76);
    let scratch = tempfile::tempdir().unwrap();
    let _router = router_advertiser(&ns, scratch.path());
    let rules = scratch.path().join("rules.toml");
    fs::write(
        &rules,
        "[default]\nkernel = \"debian-installer/amd64/linux\"\ninitrd = [\"debian-installer/amd64/initrd.gz\"]\ncmdline = \"console=ttyS0,115200n8 no_timer_check priority=low hostname={{hostname}}\"\n",
    )
    .unwrap();
    let server = Server::start(
        &ns,
        &[
            "--interface",
            "br0",
            "--dhcp-range",
            "10.76.0.100-10.76.0.150",
            "--root",
            tree.to_str().unwrap(),
            "--config",
            rules.to_str().unwrap(),
            "--http-port",
            "8080",
            "--lease-file",
            scratch.path().join("l.json").to_str().unwrap(),
        ],
    );
    let mut args = nic_args("52:54:00:76:00:01");
    args.extend(["-m".to_string(), "1024".to_string()]);
    let console = boot_in(&ns, Firmware::Bios, args, DI_MARKER);
    assert!(
        console.contains("Linux version"),
        "not the installer kernel"
    );
    let log = server.log();
    assert!(
        log.contains("done debian-installer/amd64/initrd.gz"),
        "{log}"
    );
}

/// With priority=low the installer opens its main menu on the serial console, first item
/// "Choose language".
const DI_MARKER: &str = "Choose language";

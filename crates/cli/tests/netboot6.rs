//! `vmedia netboot serve` over IPv6, with no IPv4 address on the link: DHCPv6 (full and
//! proxy) answers UEFI PXE and HTTP-boot clients sent from another network namespace, over a
//! veth pair, with the boot file URL (option 59) chosen by the client architecture (option 61);
//! the HTTP boot URL is fetched over IPv6 with curl; and dnsmasq's DHCPv6 server reads the
//! SOLICIT our codec writes while our codec reads its ADVERTISE (a peer cross-check); TFTP
//! over IPv6 serves the DHCPv6 boot URL to atftp, tftp-hpa and curl byte-identical, with
//! blksize capped by the link's IPv6 MTU.

#[path = "support/netboot.rs"]
mod nb;
mod support;

use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use nb::{Netns, Server};
use support::{require_tool, run_any, run_ok};
use vmedia_netboot::wire::dhcp6::{
    code, duid_ll, status, Dhcp6Option, Dhcp6Repr, IaNa, MessageType, ALL_SERVERS,
};

/// Server namespace with vs0 (fd00:6::1/64) and a client namespace with vc0 (fd00:6::7/64),
/// DAD off so the addresses are usable at once; neither side has an IPv4 address.
fn ipv6_link(tag: &str) -> (Netns, Netns) {
    let ns = Netns::new(tag);
    let client = Netns::new(&format!("{tag}c"));
    for n in [&ns, &client] {
        run_ok(n.command("sysctl").args([
            "-qw",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_dad=0",
        ]));
    }
    ns.veth_to("vs0", "fd00:6::1/64", &client, "vc0");
    client.ip(&["addr", "add", "fd00:6::7/64", "dev", "vc0"]);
    // Link-local addresses made before the sysctl took effect may still be tentative.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for n in [&ns, &client] {
        loop {
            let out = run_ok(n.command("ip").args(["-6", "addr", "show", "tentative"]));
            if out.stdout.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "addresses stay tentative"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (ns, client)
}

/// A client message as OVMF sends it: DUID-LL of `mac`, one IA_NA, ORO 59/60, the
/// architecture and a vendor class ("PXEClient:..." or "HTTPClient:...").
fn client_message(
    msg_type: MessageType,
    mac: [u8; 6],
    arch: u16,
    vendor: Option<&str>,
    server_id: Option<Vec<u8>>,
) -> Vec<u8> {
    let mut options = vec![
        Dhcp6Option::ClientId(duid_ll(mac)),
        Dhcp6Option::ElapsedTime(0),
        Dhcp6Option::IaNa(IaNa {
            iaid: 1,
            t1: 0,
            t2: 0,
            addresses: vec![],
            status: None,
        }),
        Dhcp6Option::Oro(vec![code::BOOTFILE_URL, code::BOOTFILE_PARAM]),
        Dhcp6Option::ClientArch(vec![arch]),
        Dhcp6Option::Nii(1, 3, 16),
    ];
    if let Some(v) = vendor {
        options.push(Dhcp6Option::VendorClass {
            enterprise: 343,
            data: vec![v.as_bytes().to_vec()],
        });
    }
    if let Some(id) = server_id {
        options.push(Dhcp6Option::ServerId(id));
    }
    Dhcp6Repr {
        msg_type,
        xid: 0x00c0ffee,
        options,
    }
    .emit()
}

/// Sends `message` to ff02::1:2 from vc0 (port 546) inside `client` and returns the first
/// parsed answer with the same transaction id, if one comes within 3 s.
fn exchange6(client: &Netns, message: Vec<u8>) -> Option<Dhcp6Repr> {
    client.run(move || {
        use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
        let fd = rustix::net::socket_with(
            AddressFamily::INET6,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        sockopt::set_socket_reuseaddr(&fd, true).unwrap();
        sockopt::set_ipv6_v6only(&fd, true).unwrap();
        let index = rustix::net::netdevice::name_to_index(&fd, "vc0").unwrap();
        rustix::net::bind(&fd, &SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 546, 0, 0)).unwrap();
        let sock = UdpSocket::from(fd);
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        sock.send_to(&message, SocketAddrV6::new(ALL_SERVERS, 547, 0, index))
            .unwrap();
        let mut buf = [0u8; 2048];
        loop {
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            if let Ok(reply) = Dhcp6Repr::parse(&buf[..n]) {
                if reply.xid == 0x00c0ffee {
                    return Some(reply);
                }
            }
        }
    })
}

fn boot_url(reply: &Dhcp6Repr) -> Option<&str> {
    reply.options.iter().find_map(|o| match o {
        Dhcp6Option::BootfileUrl(u) => Some(u.as_str()),
        _ => None,
    })
}

fn first_address(reply: &Dhcp6Repr) -> Option<Ipv6Addr> {
    reply
        .ia_nas()
        .flat_map(|ia| ia.addresses.iter())
        .map(|a| a.addr)
        .next()
}

fn serve(ns: &Netns, root: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--interface",
        "vs0",
        "--no-dhcp",
        "--tftp-port",
        "0",
        "--http-port",
        "8080",
        "--uefi-bootfile",
        "grubx64.efi",
        "--root",
        root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let server = Server::start(ns, &args);
    // The banner is printed once every socket is bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.log().contains("DHCPv6 on vs0") {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[test]
fn dhcp6_full_and_proxy_boot_uefi_pxe_and_http_clients_on_an_ipv6_only_link() {
    require_tool("curl");
    let (ns, client) = ipv6_link("dhcp6");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("grubx64.efi"), b"MZ pretend EFI application\n").unwrap();
    let leases = dir.path().join("leases6.json");
    let pxe_mac = [0x52, 0x54, 0, 0x66, 0, 1];
    {
        let server = serve(
            &ns,
            &root,
            &[
                "--dhcp6",
                "full",
                "--dhcp6-range",
                "fd00:6::100-fd00:6::1ff",
                "--lease-file6",
                leases.to_str().unwrap(),
            ],
        );
        // UEFI PXE over IPv6: SOLICIT -> ADVERTISE -> REQUEST -> REPLY, a TFTP URL.
        let pxe = Some("PXEClient:Arch:00007:UNDI:003016");
        let adv = exchange6(
            &client,
            client_message(MessageType::Solicit, pxe_mac, 7, pxe, None),
        )
        .unwrap_or_else(|| panic!("no ADVERTISE\n{}", server.log()));
        assert_eq!(adv.msg_type, MessageType::Advertise);
        assert_eq!(boot_url(&adv), Some("tftp://[fd00:6::1]/grubx64.efi"));
        let offered = first_address(&adv).expect("an address in the ADVERTISE");
        assert_eq!(offered, "fd00:6::100".parse::<Ipv6Addr>().unwrap());
        let server_id = adv.server_id().unwrap().to_vec();
        let reply = exchange6(
            &client,
            client_message(MessageType::Request, pxe_mac, 7, pxe, Some(server_id)),
        )
        .unwrap_or_else(|| panic!("no REPLY\n{}", server.log()));
        assert_eq!(reply.msg_type, MessageType::Reply);
        assert_eq!(first_address(&reply), Some(offered));
        // The lease is saved just after the REPLY is sent.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let saved = loop {
            match std::fs::read_to_string(&leases) {
                Ok(text) => break text,
                Err(e) => assert!(std::time::Instant::now() < deadline, "no lease file: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            saved.contains("fd00:6::100") && saved.contains("52:54:00:66:00:01"),
            "{saved}"
        );
        // UEFI HTTP boot over IPv6: an HTTP URL, the vendor class echoed, and the URL serves
        // the file over IPv6.
        let http = Some("HTTPClient:Arch:00016:UNDI:003001");
        let adv = exchange6(
            &client,
            client_message(
                MessageType::Solicit,
                [0x52, 0x54, 0, 0x66, 0, 2],
                16,
                http,
                None,
            ),
        )
        .unwrap_or_else(|| panic!("no ADVERTISE for HTTP\n{}", server.log()));
        let url = boot_url(&adv).unwrap().to_string();
        assert_eq!(url, "http://[fd00:6::1]:8080/grubx64.efi");
        assert!(adv.vendor_class_starts_with(b"HTTPClient"));
        assert_ne!(first_address(&adv), Some(offered));
        let fetched = client.run(move || {
            run_ok(Command::new("curl").args(["-gsf", "--max-time", "10", &url])).stdout
        });
        assert_eq!(fetched, b"MZ pretend EFI application\n");
        // The server logs the transfer once the response is finished, which can be just after
        // curl has read the last byte.
        assert!(
            server.wait_log("done grubx64.efi (27 bytes)", Duration::from_secs(10)),
            "{}",
            server.log()
        );
        let log = server.log();
        assert!(log.contains("SOLICIT -> ADVERTISE fd00:6::100"), "{log}");
    }
    // Restarted with the same lease file: the machine keeps its address.
    {
        let server = serve(
            &ns,
            &root,
            &[
                "--dhcp6",
                "full",
                "--dhcp6-range",
                "fd00:6::100-fd00:6::1ff",
                "--lease-file6",
                leases.to_str().unwrap(),
            ],
        );
        let adv = exchange6(
            &client,
            client_message(
                MessageType::Solicit,
                pxe_mac,
                7,
                Some("PXEClient:Arch:00007:UNDI:003016"),
                None,
            ),
        )
        .unwrap_or_else(|| panic!("no ADVERTISE after restart\n{}", server.log()));
        assert_eq!(first_address(&adv), Some("fd00:6::100".parse().unwrap()));
    }
    // Proxy mode: boot options, no address; a client that does not network-boot is left to
    // the network's own DHCPv6 server.
    let server = serve(&ns, &root, &["--dhcp6", "proxy"]);
    let adv = exchange6(
        &client,
        client_message(
            MessageType::Solicit,
            pxe_mac,
            7,
            Some("PXEClient:Arch:00007:UNDI:003016"),
            None,
        ),
    )
    .unwrap_or_else(|| panic!("no proxy ADVERTISE\n{}", server.log()));
    assert_eq!(boot_url(&adv), Some("tftp://[fd00:6::1]/grubx64.efi"));
    assert_eq!(first_address(&adv), None);
    let ia = adv.ia_nas().next().unwrap();
    assert_eq!(
        ia.status.as_ref().map(|s| s.0),
        Some(status::NO_ADDRS_AVAIL)
    );
    assert!(
        exchange6(
            &client,
            client_message(
                MessageType::Solicit,
                [0x52, 0x54, 0, 0x66, 0, 3],
                7,
                None,
                None
            )
        )
        .is_none(),
        "the proxy answered a client that does not network-boot"
    );
}

#[test]
fn dnsmasq_dhcp6_reads_our_solicit_and_we_read_its_advertise() {
    require_tool("dnsmasq");
    let (ns, client) = ipv6_link("dnsm6");
    let dir = tempfile::tempdir().unwrap();
    let mut dnsmasq = ns
        .command("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=vs0",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--dhcp-range=fd00:6::100,fd00:6::1ff,64,1h",
            "--dhcp-option=option6:bootfile-url,tftp://[fd00:6::1]/grubx64.efi",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.path().join("leases").display()
        ))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start dnsmasq");
    let mut reply = None;
    // dnsmasq binds its socket shortly after it starts.
    for _ in 0..10 {
        reply = exchange6(
            &client,
            client_message(
                MessageType::Solicit,
                [0x52, 0x54, 0, 0x66, 0, 9],
                7,
                Some("PXEClient:Arch:00007:UNDI:003016"),
                None,
            ),
        );
        if reply.is_some() {
            break;
        }
    }
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    let adv = reply.expect("no ADVERTISE from dnsmasq");
    assert_eq!(adv.msg_type, MessageType::Advertise);
    assert_eq!(
        adv.client_id(),
        Some(duid_ll([0x52, 0x54, 0, 0x66, 0, 9]).as_slice())
    );
    assert!(adv.server_id().is_some());
    let addr = first_address(&adv).expect("dnsmasq offered an address");
    assert!(
        (0xfd00_0006_0000_0000_0000_0000_0000_0100..=0xfd00_0006_0000_0000_0000_0000_0000_01ff)
            .contains(&u128::from(addr)),
        "{addr}"
    );
    assert_eq!(boot_url(&adv), Some("tftp://[fd00:6::1]/grubx64.efi"));
}

#[test]
fn tftp_over_ipv6_serves_the_dhcp6_boot_url_to_atftp_tftp_hpa_and_curl() {
    require_tool("atftp");
    require_tool("tftp");
    require_tool("curl");
    let (ns, client) = ipv6_link("tftp6");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    nb::random_file(&root.join("grubx64.efi"), 300_000, 61);
    nb::random_file(&root.join("empty"), 0, 1);
    nb::random_file(&root.join("b512"), 512, 2);
    nb::random_file(&root.join("sub/big.bin"), (1 << 20) + 3, 3);
    let server = Server::start(
        &ns,
        &[
            "--interface",
            "vs0",
            "--no-dhcp",
            "--dhcp6",
            "proxy",
            "--tftp-port",
            "69",
            "--http-port",
            "8080",
            "--uefi-bootfile",
            "grubx64.efi",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    // The banner line reaches the log just after Server::start sees it.
    assert!(
        server.wait_log("TFTP on [::]:69", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    // The URL a UEFI PXE client gets over DHCPv6 is fetchable as it stands.
    let adv = exchange6(
        &client,
        client_message(
            MessageType::Solicit,
            [0x52, 0x54, 0, 0x66, 0, 5],
            7,
            Some("PXEClient:Arch:00007:UNDI:003016"),
            None,
        ),
    )
    .unwrap_or_else(|| panic!("no ADVERTISE\n{}", server.log()));
    let url = boot_url(&adv).unwrap().to_string();
    assert_eq!(url, "tftp://[fd00:6::1]/grubx64.efi");
    let fetched = client
        .run(move || run_ok(Command::new("curl").args(["-gsf", "--max-time", "20", &url])).stdout);
    assert_eq!(fetched, std::fs::read(root.join("grubx64.efi")).unwrap());

    let out = dir.path().join("out");
    for name in ["empty", "b512", "sub/big.bin", "grubx64.efi"] {
        let original = std::fs::read(root.join(name)).unwrap();
        // tftp-hpa over IPv6, plain RFC 1350 (512-byte blocks, no options).
        let _ = std::fs::remove_file(&out);
        run_ok(
            client
                .command("tftp")
                .args(["-6", "-m", "binary", "fd00:6::1", "-c", "get", name])
                .arg(&out),
        );
        assert_eq!(std::fs::read(&out).unwrap(), original, "tftp-hpa: {name}");
        // atftp over IPv6 with blksize, tsize and windowsize.
        let _ = std::fs::remove_file(&out);
        let (code, stdout, stderr) = run_any(client.command("atftp").args([
            "--option",
            "blksize 1428",
            "--option",
            "tsize 0",
            "--option",
            "windowsize 8",
            "-g",
            "-r",
            name,
            "-l",
            out.to_str().unwrap(),
            "fd00:6::1",
            "69",
        ]));
        assert_eq!(code, 0, "atftp {name}:\n{stdout}\n{stderr}");
        assert_eq!(std::fs::read(&out).unwrap(), original, "atftp: {name}");
    }
    // blksize is capped by the IPv6 path MTU: 1500 less 40 (IPv6), 8 (UDP) and 4 (TFTP).
    let _ = std::fs::remove_file(&out);
    let (code, stdout, stderr) = run_any(client.command("atftp").args([
        "--option",
        "blksize 65464",
        "--option",
        "windowsize 16",
        "--trace",
        "-g",
        "-r",
        "sub/big.bin",
        "-l",
        out.to_str().unwrap(),
        "fd00:6::1",
        "69",
    ]));
    assert_eq!(code, 0, "atftp:\n{stdout}\n{stderr}");
    let trace = format!("{stdout}{stderr}");
    assert!(trace.contains("blksize: 1448"), "{trace}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(root.join("sub/big.bin")).unwrap()
    );
    // Each transfer is logged under the client's IPv6 address, with its options.
    assert!(
        server.wait_log("done sub/big.bin (1048579 bytes", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("tftp fd00:6::7 send sub/big.bin"), "{log}");
    assert!(log.contains("options blksize=1448,windowsize=16"), "{log}");
}

//! `vmedia netboot serve` against real peers, each test inside its own network namespace:
//! tftp-hpa and atftp clients, curl, crafted DHCP packets, 500 simultaneous TFTP clients.

#[path = "support/netboot.rs"]
mod nb;
mod support;

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nb::{checksum, random_file, tftp_get, Netns, Server};
use support::{require_tool, run_any, run_ok};

const TFTP_PORT: &str = "69";
const HTTP_PORT: &str = "8080";

/// A root with files of awkward sizes, a text file, a secret outside it and escape links.
fn make_root(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(root.join("sub")).unwrap();
    random_file(&root.join("empty"), 0, 1);
    random_file(&root.join("b511"), 511, 2);
    random_file(&root.join("b512"), 512, 3);
    random_file(&root.join("sub/one.bin"), 1024 * 1024 + 3, 4);
    random_file(&root.join("two.bin"), 2 * 1024 * 1024 + 17, 5);
    fs::write(root.join("text.txt"), "line one\nline two\r\nend\n").unwrap();
    fs::write(dir.join("secret"), "top secret\n").unwrap();
    std::os::unix::fs::symlink(dir.join("secret"), root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../secret", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("two.bin", root.join("inside-link")).unwrap();
    root
}

fn loopback_server(ns: &Netns, root: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--no-dhcp",
        "--listen",
        "127.0.0.1",
        "--tftp-port",
        TFTP_PORT,
        "--http-port",
        HTTP_PORT,
        "--root",
    ];
    let root = root.to_str().unwrap().to_string();
    args.push(&root);
    args.extend_from_slice(extra);
    Server::start(ns, &args)
}

#[test]
fn tftp_hpa_client_fetches_identical_files() {
    require_tool("tftp");
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let ns = Netns::new("hpa");
    let _server = loopback_server(&ns, &root, &[]);
    for name in [
        "empty",
        "b511",
        "b512",
        "sub/one.bin",
        "two.bin",
        "/two.bin",
        "inside-link",
    ] {
        let out = dir.path().join("fetched");
        let _ = fs::remove_file(&out);
        run_ok(
            ns.command("tftp")
                .args(["-m", "binary", "127.0.0.1", TFTP_PORT, "-c", "get", name])
                .arg(&out),
        );
        let original = fs::read(root.join(name.trim_start_matches('/'))).unwrap();
        assert_eq!(
            fs::read(&out).unwrap(),
            original,
            "tftp-hpa copy of {name} differs"
        );
    }
    // netascii: tftp-hpa converts CR LF back, so the text arrives unchanged.
    let out = dir.path().join("text.out");
    run_ok(
        ns.command("tftp")
            .args([
                "-m",
                "netascii",
                "127.0.0.1",
                TFTP_PORT,
                "-c",
                "get",
                "text.txt",
            ])
            .arg(&out),
    );
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(root.join("text.txt")).unwrap()
    );
}

#[test]
fn atftp_fetches_with_every_option_combination() {
    require_tool("atftp");
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let ns = Netns::new("atftp");
    let _server = loopback_server(&ns, &root, &[]);
    let original = fs::read(root.join("two.bin")).unwrap();
    let mut runs = 0;
    for blksize in [None, Some("1468"), Some("8192")] {
        for tsize in [false, true] {
            for timeout in [None, Some("2")] {
                for windowsize in [None, Some("4"), Some("16")] {
                    let out = dir.path().join("a.out");
                    let _ = fs::remove_file(&out);
                    let mut cmd = ns.command("atftp");
                    let mut shown = Vec::new();
                    if let Some(b) = blksize {
                        cmd.args(["--option", &format!("blksize {b}")]);
                        shown.push(format!("blksize {b}"));
                    }
                    if tsize {
                        cmd.args(["--option", "tsize"]);
                        shown.push("tsize".into());
                    }
                    if let Some(t) = timeout {
                        cmd.args(["--option", &format!("timeout {t}")]);
                        shown.push(format!("timeout {t}"));
                    }
                    if let Some(w) = windowsize {
                        cmd.args(["--option", &format!("windowsize {w}")]);
                        shown.push(format!("windowsize {w}"));
                    }
                    cmd.args(["-g", "-r", "two.bin", "-l"])
                        .arg(&out)
                        .args(["127.0.0.1", TFTP_PORT]);
                    run_ok(&mut cmd);
                    assert!(
                        fs::read(&out).unwrap() == original,
                        "atftp with {shown:?} got different bytes"
                    );
                    runs += 1;
                }
            }
        }
    }
    assert_eq!(runs, 36);
}

#[test]
fn block_numbers_roll_over_past_65535() {
    require_tool("atftp");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    // 70000 blocks of 512 bytes + a tail: the block counter wraps once.
    let big = random_file(&root.join("big.bin"), 512 * 70_000 + 100, 9);
    let ns = Netns::new("wrap");
    let _server = loopback_server(&ns, &root, &[]);
    let out = dir.path().join("big.out");
    run_ok(
        ns.command("atftp")
            .args(["--option", "windowsize 16", "-g", "-r", "big.bin", "-l"])
            .arg(&out)
            .args(["127.0.0.1", TFTP_PORT]),
    );
    assert!(
        fs::read(&out).unwrap() == fs::read(&big).unwrap(),
        "atftp copy across the block wrap differs"
    );
    // Our own client too (it ACKs wrapped numbers the same way).
    let data = ns.run(|| {
        tftp_get(
            "127.0.0.1:69".parse().unwrap(),
            "big.bin",
            &[("windowsize", "8")],
        )
        .unwrap()
    });
    assert!(data == fs::read(&big).unwrap());
}

#[test]
fn curl_head_range_and_keep_alive() {
    require_tool("curl");
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let ns = Netns::new("curl");
    let _server = loopback_server(&ns, &root, &[]);
    let base = format!("http://127.0.0.1:{HTTP_PORT}");
    let original = fs::read(root.join("two.bin")).unwrap();
    let size = original.len();

    let (_, head, _) = run_any(
        ns.command("curl")
            .args(["-sS", "-I", &format!("{base}/two.bin")]),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("Content-Length: {size}")), "{head}");
    assert!(head.contains("Accept-Ranges: bytes"), "{head}");

    for (range, start, end) in [
        ("0-99", 0, 99),
        ("1000-", 1000, size - 1),
        ("-100", size - 100, size - 1),
    ] {
        let out = dir.path().join("range.out");
        let (_, headers, _) = run_any(
            ns.command("curl")
                .args(["-sS", "-D", "-", "-r", range, "-o"])
                .arg(&out)
                .arg(format!("{base}/two.bin")),
        );
        assert!(headers.starts_with("HTTP/1.1 206"), "{range}: {headers}");
        assert!(
            headers.contains(&format!("Content-Range: bytes {start}-{end}/{size}")),
            "{range}: {headers}"
        );
        assert!(
            fs::read(&out).unwrap() == original[start..=end],
            "range {range} bytes differ"
        );
    }
    let (_, code, _) = run_any(ns.command("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-r",
        &format!("{size}-"),
        &format!("{base}/two.bin"),
    ]));
    assert_eq!(code, "416");

    // Two requests on one connection: curl reports reusing it.
    let (_, _, verbose) = run_any(ns.command("curl").args([
        "-sS",
        "-v",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &format!("{base}/b511"),
        &format!("{base}/sub/one.bin"),
    ]));
    assert!(
        verbose.contains("Re-using existing connection")
            || verbose.contains("Reusing existing connection"),
        "{verbose}"
    );

    let full = dir.path().join("full.out");
    run_ok(
        ns.command("curl")
            .args(["-sS", "-f", "-o"])
            .arg(&full)
            .arg(format!("{base}/two.bin")),
    );
    assert!(fs::read(&full).unwrap() == original);
    let (_, code, _) = run_any(ns.command("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/missing"),
    ]));
    assert_eq!(code, "404");
    let (_, code, _) = run_any(ns.command("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("{base}/two.bin"),
    ]));
    assert_eq!(code, "405");
}

#[test]
fn traversal_and_symlink_escapes_are_refused() {
    require_tool("tftp");
    require_tool("curl");
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let ns = Netns::new("escape");
    let mut server = loopback_server(&ns, &root, &[]);
    let secret_path = dir.path().join("secret");
    let secret_abs = secret_path.to_str().unwrap();
    let attempts = [
        "../secret",
        "..\\secret",
        "/../secret",
        "sub/../../secret",
        "sub\\..\\..\\secret",
        secret_abs,
        "abs-link",
        "rel-link",
    ];
    for name in attempts {
        let out = dir.path().join("escape.out");
        let _ = fs::remove_file(&out);
        let (_, stdout, stderr) = run_any(
            ns.command("tftp")
                .args(["-m", "binary", "127.0.0.1", TFTP_PORT, "-c", "get", name])
                .arg(&out),
        );
        let got = fs::read(&out).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&got).contains("top secret"),
            "TFTP {name} leaked the secret"
        );
        let said = format!("{stdout}{stderr}");
        assert!(
            said.contains("Error code"),
            "TFTP {name}: expected an error, got {said:?}"
        );
        // Our client sees the exact code: 1 (not found, absolute path under root) or 2 (access).
        let name_owned = name.to_string();
        let err = ns
            .run(move || tftp_get("127.0.0.1:69".parse().unwrap(), &name_owned, &[]))
            .unwrap_err();
        assert!(
            err.starts_with("error 2") || err.starts_with("error 1"),
            "{name}: {err}"
        );
    }
    for path in [
        "/../secret",
        "/%2e%2e/secret",
        "/sub/..%2f..%2fsecret",
        "/abs-link",
        "/rel-link",
        "/..%5csecret",
    ] {
        let (_, body, _) = run_any(ns.command("curl").args([
            "-s",
            "--path-as-is",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{HTTP_PORT}{path}"),
        ]));
        assert!(
            !body.contains("top secret"),
            "HTTP {path} leaked the secret"
        );
        let code = body.lines().last().unwrap_or_default().to_string();
        assert!(code == "403" || code == "404", "HTTP {path}: status {code}");
    }
    assert!(server.alive());
    let data = ns.run(|| tftp_get("127.0.0.1:69".parse().unwrap(), "b512", &[]).unwrap());
    assert_eq!(data.len(), 512);
}

#[test]
fn malformed_packets_get_errors_and_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let ns = Netns::new("malformed");
    let mut server = loopback_server(&ns, &root, &[]);
    let replies = ns.run(|| {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("one byte", vec![0]),
            ("unknown opcode", vec![0, 9, 1, 2]),
            ("unterminated RRQ", b"\x00\x01abc".to_vec()),
            ("RRQ without mode", b"\x00\x01abc\x00".to_vec()),
            (
                "option without value",
                b"\x00\x01b512\x00octet\x00blksize".to_vec(),
            ),
            ("WRQ", b"\x00\x02new\x00octet\x00".to_vec()),
            ("stray ACK", vec![0, 4, 0, 1]),
            ("mail mode", b"\x00\x01b512\x00mail\x00".to_vec()),
            (
                "huge blksize",
                b"\x00\x01b512\x00octet\x00blksize\x0099999999999999999999\x00".to_vec(),
            ),
        ];
        let mut replies = HashMap::new();
        let mut buf = [0u8; 1024];
        for (what, packet) in cases {
            sock.send_to(&packet, "127.0.0.1:69").unwrap();
            let reply = sock
                .recv_from(&mut buf)
                .ok()
                .map(|(n, _)| buf[..n].to_vec());
            replies.insert(what, reply);
        }
        replies
    });
    let error_code = |what: &str| -> Option<u16> {
        let r = replies[what].as_ref()?;
        (r.len() >= 4 && r[1] == 5).then(|| u16::from_be_bytes([r[2], r[3]]))
    };
    assert_eq!(error_code("one byte"), Some(4));
    assert_eq!(error_code("unknown opcode"), Some(4));
    assert_eq!(error_code("unterminated RRQ"), Some(4));
    assert_eq!(error_code("RRQ without mode"), Some(4));
    assert_eq!(error_code("option without value"), Some(4));
    assert_eq!(error_code("WRQ"), Some(2));
    assert_eq!(error_code("stray ACK"), Some(5));
    assert_eq!(error_code("mail mode"), Some(4));
    // A blksize that does not parse is left out of the OACK: the transfer runs with 512.
    let huge = replies["huge blksize"]
        .as_ref()
        .expect("no reply to an RRQ with a bad blksize");
    assert_eq!(&huge[..4], &[0, 3, 0, 1]);
    assert_eq!(huge.len(), 4 + 512);
    assert!(
        server.alive(),
        "server died on malformed input:\n{}",
        server.log()
    );
    let data = ns.run(|| {
        tftp_get(
            "127.0.0.1:69".parse().unwrap(),
            "two.bin",
            &[("blksize", "1468"), ("windowsize", "8")],
        )
        .unwrap()
    });
    assert!(data == fs::read(root.join("two.bin")).unwrap());
}

#[test]
fn five_hundred_clients_at_once() {
    const CLIENTS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let file = random_file(&root.join("two-mib.bin"), 2 * 1024 * 1024, 77);
    let expected = checksum(&fs::read(&file).unwrap());
    let ns = Netns::new("mass");
    let _server = loopback_server(&ns, &root, &[]);
    let start = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            ns.spawn(move || {
                let server: SocketAddr = "127.0.0.1:69".parse().unwrap();
                tftp_get(
                    server,
                    "two-mib.bin",
                    &[("blksize", "1468"), ("windowsize", "8"), ("tsize", "0")],
                )
                .map(|d| checksum(&d))
            })
        })
        .collect();
    let mut ok = 0;
    let mut failures = Vec::new();
    for h in handles {
        match h.join().unwrap() {
            Ok(sum) if sum == expected => ok += 1,
            Ok(_) => failures.push("checksum mismatch".to_string()),
            Err(e) => failures.push(e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let total_mib = (CLIENTS * 2) as f64;
    println!(
        "500 TFTP clients x 2 MiB (blksize 1468, windowsize 8): {secs:.2} s, aggregate {:.1} MiB/s",
        total_mib / secs
    );
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} transfers failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(ok, CLIENTS);
}

// ---- DHCP with crafted client packets on a veth pair ----

struct DhcpReply {
    op: u8,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    file: String,
    options: HashMap<u8, Vec<u8>>,
}

fn dhcp_packet(
    mac: [u8; 6],
    message: u8,
    vendor: Option<&str>,
    arch: Option<u16>,
    ipxe: bool,
    extra: &[(u8, Vec<u8>)],
) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    p[10] = 0x80;
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let mut opt = |code: u8, value: &[u8]| {
        p.push(code);
        p.push(value.len() as u8);
        p.extend_from_slice(value);
    };
    opt(53, &[message]);
    if let Some(v) = vendor {
        opt(60, v.as_bytes());
    }
    if let Some(a) = arch {
        opt(93, &a.to_be_bytes());
    }
    if ipxe {
        opt(77, b"iPXE");
        opt(175, &[0xb1, 5, 1, 0x10, 0xec, 0x81, 0x39]);
    }
    let mut uuid = vec![0u8];
    uuid.extend(0x10..0x20u8);
    opt(97, &uuid);
    for (c, v) in extra {
        opt(*c, v);
    }
    p.push(255);
    if p.len() < 300 {
        p.resize(300, 0);
    }
    p
}

fn parse_reply(b: &[u8]) -> DhcpReply {
    assert!(
        b.len() >= 240 && b[236..240] == [99, 130, 83, 99],
        "reply is not DHCP"
    );
    let mut options = HashMap::new();
    let mut i = 240;
    while i < b.len() && b[i] != 255 {
        if b[i] == 0 {
            i += 1;
            continue;
        }
        let (code, len) = (b[i], b[i + 1] as usize);
        options
            .entry(code)
            .or_insert_with(Vec::new)
            .extend_from_slice(&b[i + 2..i + 2 + len]);
        i += 2 + len;
    }
    let file_end = b[108..236].iter().position(|&c| c == 0).unwrap_or(128);
    DhcpReply {
        op: b[0],
        yiaddr: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        siaddr: Ipv4Addr::new(b[20], b[21], b[22], b[23]),
        file: String::from_utf8_lossy(&b[108..108 + file_end]).into_owned(),
        options,
    }
}

/// A DHCP client's socket on the client side of the veth: port 68, bound to vc0, broadcast.
/// Call inside the namespace.
fn client_socket() -> UdpSocket {
    // SO_REUSEADDR, as real DHCP clients set it: a socket this test closed can still be open
    // in another process for a moment. Tests run as threads of one process, and any of them
    // that starts a child (`ip`, curl, a server) forks: the child holds a copy of every open
    // descriptor, the previous exchange's port-68 socket included, until its exec closes the
    // close-on-exec ones; under a loaded parallel run that window reached the next bind.
    use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("cannot make the DHCP client socket");
    sockopt::set_socket_reuseaddr(&fd, true).unwrap();
    rustix::net::bind(&fd, &std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))
        .unwrap_or_else(|e| panic!("cannot bind the DHCP client port 68: {e}"));
    let sock = UdpSocket::from(fd);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let ifname = b"vc0";
    // SAFETY: SO_BINDTODEVICE with the interface name bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr() as *const libc::c_void,
            ifname.len() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "SO_BINDTODEVICE vc0: {}",
        std::io::Error::last_os_error()
    );
    sock.set_broadcast(true).unwrap();
    sock
}

/// Sends `packet` from the client side of the veth (port 68, broadcast) and returns the reply.
fn exchange(ns: &Netns, packet: Vec<u8>, to_port: u16, to: Ipv4Addr) -> Option<DhcpReply> {
    ns.run(move || {
        let sock = client_socket();
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        sock.send_to(&packet, (to, to_port)).unwrap();
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            if buf[0] == 2 {
                return Some(parse_reply(&buf[..n]));
            }
        }
    })
}

#[test]
fn dhcp_client_port_held_by_a_forked_child_does_not_block_the_next_exchange() {
    // What made full_dhcp_leases_reservations_and_restart fail with AddrInUse under the full
    // parallel run: another test's fork copied the port-68 socket just before this test closed
    // it, and the copy stayed open until the child's exec.
    let (_ns, client) = dhcp_ns();
    client.run(|| {
        use std::os::unix::process::CommandExt;
        let first = client_socket();
        // Another test's thread starts a child: fork, then (here, slowly) exec.
        let forker = std::thread::spawn(|| {
            let mut cmd = Command::new("true");
            // SAFETY: the hook only sleeps (nanosleep), between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    std::thread::sleep(Duration::from_millis(1500));
                    Ok(())
                });
            }
            cmd.status().unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        // The child still holds its copy of the socket: the next exchange binds all the same.
        let second = client_socket();
        assert_eq!(second.local_addr().unwrap().port(), 68);
        assert!(!forker.is_finished(), "the child exec'd too early to tell");
        assert!(forker.join().unwrap().success());
    });
}

/// The server's namespace and a client namespace joined by a veth pair (vs0 10.77.0.1 - vc0).
fn dhcp_ns() -> (Netns, Netns) {
    let ns = Netns::new("dhcp");
    let client = Netns::new("dhcpc");
    ns.veth_to("vs0", "10.77.0.1/24", &client, "vc0");
    // The client has an address for the unicast port-4011 step (firmware has one by then).
    client.ip(&["addr", "add", "10.77.0.7/24", "dev", "vc0"]);
    (ns, client)
}

#[test]
fn proxy_dhcp_answers_pxe_clients_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let (ns, client) = dhcp_ns();
    let _server = Server::start(
        &ns,
        &[
            "--interface",
            "vs0",
            "--proxy",
            "--root",
            root.to_str().unwrap(),
            "--tftp-port",
            TFTP_PORT,
            "--http-port",
            HTTP_PORT,
            "--bios-bootfile",
            "pxelinux.0",
            "--uefi-bootfile",
            "grubx64.efi",
            "--ipxe-script",
            "http://10.77.0.1:8080/custom.ipxe",
        ],
    );
    let mac = [0x52, 0x54, 0, 0xaa, 0, 1];
    let bcast = Ipv4Addr::BROADCAST;
    assert!(
        exchange(
            &client,
            dhcp_packet(mac, 1, Some("MSFT 5.0"), None, false, &[]),
            67,
            bcast
        )
        .is_none(),
        "proxy answered a non-PXE client"
    );

    let bios = exchange(
        &client,
        dhcp_packet(
            mac,
            1,
            Some("PXEClient:Arch:00000:UNDI:002001"),
            Some(0),
            false,
            &[],
        ),
        67,
        bcast,
    )
    .expect("no offer to a BIOS PXE client");
    assert_eq!(bios.op, 2);
    assert_eq!(bios.options[&53], vec![2], "not an OFFER");
    assert_eq!(
        bios.yiaddr,
        Ipv4Addr::UNSPECIFIED,
        "proxy offered an address"
    );
    assert_eq!(bios.siaddr, Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(bios.file, "pxelinux.0");
    assert_eq!(bios.options[&54], vec![10, 77, 0, 1]);
    assert_eq!(bios.options[&60], b"PXEClient");
    assert_eq!(
        bios.options[&97][1..],
        (0x10..0x20u8).collect::<Vec<_>>()[..],
        "option 97 not echoed"
    );
    assert_eq!(
        bios.options[&43],
        vec![6, 1, 8, 255],
        "PXE discovery control"
    );

    let uefi = exchange(
        &client,
        dhcp_packet(
            mac,
            1,
            Some("PXEClient:Arch:00007:UNDI:003016"),
            Some(7),
            false,
            &[],
        ),
        67,
        bcast,
    )
    .unwrap();
    assert_eq!(uefi.file, "grubx64.efi");
    // The UEFI firmware asks again on port 4011 and gets an ACK.
    let ack = exchange(
        &client,
        dhcp_packet(
            mac,
            3,
            Some("PXEClient:Arch:00007:UNDI:003016"),
            Some(7),
            false,
            &[],
        ),
        4011,
        Ipv4Addr::new(10, 77, 0, 1),
    )
    .expect("no 4011 answer");
    assert_eq!(ack.options[&53], vec![5]);
    assert_eq!(ack.file, "grubx64.efi");

    let http = exchange(
        &client,
        dhcp_packet(
            mac,
            1,
            Some("HTTPClient:Arch:00016:UNDI:003001"),
            Some(16),
            false,
            &[],
        ),
        67,
        bcast,
    )
    .unwrap_or_else(|| panic!("no HTTPClient offer\n{}", _server.log()));
    assert_eq!(http.file, "http://10.77.0.1:8080/grubx64.efi");
    assert_eq!(http.options[&60], b"HTTPClient");

    let ipxe = exchange(
        &client,
        dhcp_packet(
            mac,
            1,
            Some("PXEClient:Arch:00000:UNDI:002001"),
            Some(0),
            true,
            &[],
        ),
        67,
        bcast,
    )
    .unwrap();
    assert_eq!(ipxe.file, "http://10.77.0.1:8080/custom.ipxe");
    assert_eq!(ipxe.options[&67], b"http://10.77.0.1:8080/custom.ipxe");

    // No file configured for arm64: no answer rather than a wrong one.
    assert!(exchange(
        &client,
        dhcp_packet(mac, 1, Some("PXEClient:Arch:00011"), Some(11), false, &[]),
        67,
        bcast
    )
    .is_none());
}

#[test]
fn full_dhcp_leases_reservations_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let rules = dir.path().join("rules.toml");
    fs::write(&rules, "[[machine]]\nmac = \"52:54:00:bb:00:09\"\nip = \"10.77.0.99\"\nhostname = \"reserved\"\nboot = \"exit\"\n\n[default]\nboot = \"exit\"\n").unwrap();
    let leases = dir.path().join("leases.json");
    let (ns, client) = dhcp_ns();
    let args_owned = [
        "--interface",
        "vs0",
        "--dhcp-range",
        "10.77.0.50-10.77.0.60",
        "--root",
        root.to_str().unwrap(),
        "--tftp-port",
        TFTP_PORT,
        "--http-port",
        HTTP_PORT,
        "--bios-bootfile",
        "pxelinux.0",
        "--lease-file",
        leases.to_str().unwrap(),
        "--config",
        rules.to_str().unwrap(),
        "--router",
        "10.77.0.254",
    ];
    let mac = [0x52, 0x54, 0, 0xbb, 0, 1];
    let bcast = Ipv4Addr::BROADCAST;
    let first_ip;
    {
        let _server = Server::start(&ns, &args_owned);
        let offer = exchange(
            &client,
            dhcp_packet(
                mac,
                1,
                Some("PXEClient:Arch:00000:UNDI:002001"),
                Some(0),
                false,
                &[],
            ),
            67,
            bcast,
        )
        .expect("no OFFER");
        assert_eq!(offer.options[&53], vec![2]);
        first_ip = offer.yiaddr;
        assert!(
            (50..=60).contains(&first_ip.octets()[3]),
            "{first_ip} outside the range"
        );
        assert_eq!(offer.options[&1], vec![255, 255, 255, 0]);
        assert_eq!(offer.options[&3], vec![10, 77, 0, 254]);
        assert_eq!(offer.file, "pxelinux.0");
        let request = dhcp_packet(
            mac,
            3,
            Some("PXEClient:Arch:00000:UNDI:002001"),
            Some(0),
            false,
            &[(50, first_ip.octets().to_vec()), (54, vec![10, 77, 0, 1])],
        );
        let ack = exchange(&client, request, 67, bcast).expect("no ACK");
        assert_eq!(ack.options[&53], vec![5], "{}", _server.log());
        assert_eq!(ack.yiaddr, first_ip);
        assert!(u32::from_be_bytes(ack.options[&51][..4].try_into().unwrap()) > 0);
        // iPXE on the same machine gets the generated script URL (rules are configured).
        let ipxe = exchange(
            &client,
            dhcp_packet(
                mac,
                1,
                Some("PXEClient:Arch:00000:UNDI:002001"),
                Some(0),
                true,
                &[],
            ),
            67,
            bcast,
        )
        .unwrap();
        assert_eq!(
            ipxe.file,
            "http://10.77.0.1:8080/boot.ipxe?mac=52:54:00:bb:00:01&arch=0"
        );
        // A reservation wins, with its host name.
        let reserved = exchange(
            &client,
            dhcp_packet([0x52, 0x54, 0, 0xbb, 0, 9], 1, None, None, false, &[]),
            67,
            bcast,
        )
        .unwrap();
        assert_eq!(reserved.yiaddr, Ipv4Addr::new(10, 77, 0, 99));
        assert_eq!(reserved.options[&12], b"reserved");
        // A foreign address is refused.
        let nak = exchange(
            &client,
            dhcp_packet(
                [0x52, 0x54, 0, 0xbb, 0, 2],
                3,
                None,
                None,
                false,
                &[(50, vec![192, 168, 9, 9]), (54, vec![10, 77, 0, 1])],
            ),
            67,
            bcast,
        )
        .unwrap();
        assert_eq!(nak.options[&53], vec![6]);
    }
    let saved = fs::read_to_string(&leases).expect("lease file not written");
    assert!(saved.contains(&first_ip.to_string()), "{saved}");
    let _server = Server::start(&ns, &args_owned);
    let offer = exchange(
        &client,
        dhcp_packet(mac, 1, None, None, false, &[]),
        67,
        bcast,
    )
    .expect("no OFFER after restart");
    assert_eq!(offer.yiaddr, first_ip, "lease not kept across a restart");
}

#[test]
fn rules_scripts_templates_and_status() {
    require_tool("curl");
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    fs::write(
        root.join("preseed.cfg"),
        "d-i netcfg/get_hostname string {{hostname}}\nd-i mirror/http/hostname string {{server}}\n",
    )
    .unwrap();
    let rules = dir.path().join("rules.toml");
    fs::write(
        &rules,
        r#"
[default]
kernel = "iso/debian.iso:/install.amd/vmlinuz"
initrd = ["iso/debian.iso:/install.amd/initrd.gz"]
cmdline = "auto=true url={{preseed}} hostname={{hostname}}"
preseed = "preseed.cfg"

[[machine]]
mac = "52:54:00:cc:00:01"
hostname = "disk1"
boot = "exit"

[[machine]]
arch = 7
boot = "menu"
menu_timeout = 3
[[machine.menu]]
label = "Install"
kernel = "vmlinuz"
[[machine.menu]]
label = "Local disk"
exit = true
"#,
    )
    .unwrap();
    let ns = Netns::new("rules");
    let _server = loopback_server(&ns, &root, &["--config", rules.to_str().unwrap()]);
    let base = format!("http://127.0.0.1:{HTTP_PORT}");
    let get = |path: &str| -> String {
        let out = run_ok(
            ns.command("curl")
                .args(["-sS", "-f", &format!("{base}{path}")]),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let default = get("/boot.ipxe?mac=52:54:00:cc:00:02&arch=0");
    assert!(default.starts_with("#!ipxe\n"), "{default}");
    assert!(
        default.contains("kernel http://127.0.0.1:8080/iso/debian.iso/install.amd/vmlinuz initrd=initrd.gz auto=true url=http://127.0.0.1:8080/_vmedia/preseed/52-54-00-cc-00-02 hostname=vmedia-525400cc0002"),
        "{default}"
    );
    let exit = get("/boot.ipxe?mac=52-54-00-CC-00-01&arch=0");
    assert!(
        exit.contains("sanboot --no-describe --drive 0x80"),
        "{exit}"
    );
    let menu = get("/boot.ipxe?mac=52:54:00:cc:00:03&arch=7");
    assert!(menu.contains("choose --timeout 3000"), "{menu}");
    assert!(menu.contains(":item1\nexit\n"), "{menu}");
    let preseed = get("/_vmedia/preseed/52-54-00-cc-00-02");
    assert_eq!(preseed, "d-i netcfg/get_hostname string vmedia-525400cc0002\nd-i mirror/http/hostname string 127.0.0.1\n");

    // A fetch shows up in the status, per machine, with bytes and state.
    let data = ns.run(|| {
        tftp_get(
            "127.0.0.1:69".parse().unwrap(),
            "two.bin",
            &[("blksize", "1468")],
        )
        .unwrap()
    });
    assert_eq!(data.len(), 2 * 1024 * 1024 + 17);
    let out = run_ok(
        ns.command(env!("CARGO_BIN_EXE_vmedia"))
            .args(["netboot", "status", "--server", &base, "--json"]),
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let machines = status["machines"].as_array().unwrap();
    let transfer = machines
        .iter()
        .flat_map(|m| m["transfers"].as_array().unwrap().iter())
        .find(|t| t["file"] == "two.bin" && t["protocol"] == "tftp")
        .expect("TFTP transfer missing from status");
    assert_eq!(transfer["state"], "done");
    assert_eq!(transfer["bytes_sent"], 2 * 1024 * 1024 + 17);
    let text = run_ok(
        ns.command(env!("CARGO_BIN_EXE_vmedia"))
            .args(["netboot", "status", "--server", &base]),
    );
    assert!(String::from_utf8_lossy(&text.stdout).contains("two.bin"));
}

#[test]
fn files_stream_straight_from_an_iso() {
    require_tool("xorriso");
    require_tool("atftp");
    require_tool("curl");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("install.amd")).unwrap();
    let kernel = random_file(&tree.join("install.amd/vmlinuz"), 3 * 1024 * 1024 + 5, 11);
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    run_ok(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
            .arg(root.join("debian.iso"))
            .arg(&tree),
    );
    let ns = Netns::new("iso");
    let _server = loopback_server(&ns, &root, &[]);
    let original = fs::read(&kernel).unwrap();
    for name in [
        "debian.iso:/install.amd/vmlinuz",
        "debian.iso/install.amd/vmlinuz",
    ] {
        let out = dir.path().join("k.out");
        let _ = fs::remove_file(&out);
        run_ok(
            ns.command("atftp")
                .args([
                    "--option",
                    "blksize 1468",
                    "--option",
                    "windowsize 8",
                    "-g",
                    "-r",
                    name,
                    "-l",
                ])
                .arg(&out)
                .args(["127.0.0.1", TFTP_PORT]),
        );
        assert!(
            fs::read(&out).unwrap() == original,
            "TFTP {name} from the ISO differs"
        );
    }
    let out = dir.path().join("h.out");
    run_ok(
        ns.command("curl")
            .args(["-sS", "-f", "-o"])
            .arg(&out)
            .arg(format!(
                "http://127.0.0.1:{HTTP_PORT}/debian.iso/install.amd/vmlinuz"
            )),
    );
    assert!(fs::read(&out).unwrap() == original);
    let (_, headers, _) = run_any(ns.command("curl").args([
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-r",
        "100-199",
        &format!("http://127.0.0.1:{HTTP_PORT}/debian.iso/install.amd/vmlinuz"),
    ]));
    assert!(
        headers.contains(&format!("Content-Range: bytes 100-199/{}", original.len())),
        "{headers}"
    );
    let (_, code, _) = run_any(ns.command("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{HTTP_PORT}/debian.iso/install.amd/missing"),
    ]));
    assert_eq!(code, "404");
}

/// Sends an RRQ with `options` from inside `ns` and returns the server's OACK options, then
/// ends the transfer with error 8 (as UEFI firmware does after its size probe).
fn oack_options(
    ns: &Netns,
    server: SocketAddr,
    file: &'static str,
    options: &'static [(&'static str, &'static str)],
) -> HashMap<String, String> {
    ns.run(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut rrq = vec![0, 1];
        rrq.extend_from_slice(file.as_bytes());
        rrq.extend_from_slice(b"\0octet\0");
        for (k, v) in options {
            rrq.extend_from_slice(k.as_bytes());
            rrq.push(0);
            rrq.extend_from_slice(v.as_bytes());
            rrq.push(0);
        }
        sock.send_to(&rrq, server).unwrap();
        let mut buf = [0u8; 1024];
        let (n, from) = sock.recv_from(&mut buf).expect("no OACK");
        assert_eq!(&buf[..2], &[0, 6], "not an OACK: {:?}", &buf[..n]);
        let fields: Vec<String> = buf[2..n]
            .split(|&b| b == 0)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        sock.send_to(b"\0\x05\0\x08probe done\0", from).unwrap();
        fields
            .chunks(2)
            .filter(|pair| pair.len() == 2 && !pair[0].is_empty())
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect()
    })
}

#[test]
fn blksize_is_capped_by_the_link_mtu_except_on_loopback() {
    require_tool("atftp");
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let (ns, client) = dhcp_ns();
    ns.ip(&["link", "set", "lo", "up"]);
    let _server = Server::start(
        &ns,
        &[
            "--no-dhcp",
            "--root",
            root.to_str().unwrap(),
            "--tftp-port",
            TFTP_PORT,
            "--http-port",
            "0",
        ],
    );
    const BIG: &[(&str, &str)] = &[("blksize", "65464"), ("tsize", "0")];
    // Ethernet's 1500-byte MTU less the IP, UDP and TFTP headers, as tftp-hpa and dnsmasq do:
    // larger blocks would be IP-fragmented, which many firmware stacks cannot reassemble.
    let over_veth = oack_options(&client, "10.77.0.1:69".parse().unwrap(), "two.bin", BIG);
    assert_eq!(over_veth["blksize"], "1468", "{over_veth:?}");
    assert_eq!(over_veth["tsize"], (2 * 1024 * 1024 + 17).to_string());
    // Loopback's 64 KiB MTU leaves the RFC 2348 maximum.
    let over_lo = oack_options(&ns, "127.0.0.1:69".parse().unwrap(), "two.bin", BIG);
    assert_eq!(over_lo["blksize"], "65464", "{over_lo:?}");
    // A jumbo-frame link gets jumbo blocks.
    ns.ip(&["link", "set", "vs0", "mtu", "9000"]);
    client.ip(&["link", "set", "vc0", "mtu", "9000"]);
    let jumbo = oack_options(&client, "10.77.0.1:69".parse().unwrap(), "two.bin", BIG);
    assert_eq!(jumbo["blksize"], "8968", "{jumbo:?}");
    ns.ip(&["link", "set", "vs0", "mtu", "1500"]);
    client.ip(&["link", "set", "vc0", "mtu", "1500"]);

    // atftp asking for 65464 accepts the smaller block and gets the file intact.
    let out = dir.path().join("two.out");
    let (code, stdout, stderr) = run_any(client.command("atftp").args([
        "--option",
        "blksize 65464",
        "--option",
        "windowsize 16",
        "--trace",
        "-g",
        "-r",
        "two.bin",
        "-l",
        out.to_str().unwrap(),
        "10.77.0.1",
        TFTP_PORT,
    ]));
    assert_eq!(code, 0, "atftp failed:\n{stdout}\n{stderr}");
    let trace = format!("{stdout}{stderr}");
    assert!(trace.contains("blksize: 1468"), "{trace}");
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(root.join("two.bin")).unwrap()
    );
}

/// A bare DHCP REQUEST a client broadcasts to the network's real DHCP server (not to us).
fn send_only(ns: &Netns, packet: Vec<u8>) {
    ns.run(move || {
        let sock = client_socket();
        sock.send_to(&packet, (Ipv4Addr::BROADCAST, 67)).unwrap();
    })
}

#[test]
fn proxy_status_files_tftp_and_http_steps_under_the_mac() {
    require_tool("curl");
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let script = dir.path().join("boot.ipxe");
    fs::write(&script, "#!ipxe\necho {{mac}}\n").unwrap();
    let (ns, client) = dhcp_ns();
    client.ip(&["addr", "add", "10.77.0.8/24", "dev", "vc0"]);
    let server = Server::start(
        &ns,
        &[
            "--interface",
            "vs0",
            "--proxy",
            "--root",
            root.to_str().unwrap(),
            "--tftp-port",
            TFTP_PORT,
            "--http-port",
            HTTP_PORT,
            "--bios-bootfile",
            "pxelinux.0",
            "--uefi-bootfile",
            "two.bin",
            "--ipxe-script",
            script.to_str().unwrap(),
        ],
    );
    let uefi_vendor = Some("PXEClient:Arch:00007:UNDI:003016");
    let firmware = [0x52, 0x54, 0, 0xaa, 0, 2];
    // UEFI firmware: DISCOVER (proxy OFFER), REQUEST to the real DHCP server with the address
    // it was offered there (option 50), then TFTP from that address.
    exchange(
        &client,
        dhcp_packet(firmware, 1, uefi_vendor, Some(7), false, &[]),
        67,
        Ipv4Addr::BROADCAST,
    )
    .expect("no proxy offer");
    send_only(
        &client,
        dhcp_packet(
            firmware,
            3,
            uefi_vendor,
            Some(7),
            false,
            &[(50, vec![10, 77, 0, 7])],
        ),
    );
    // The proxy answers nothing to that REQUEST; give it a moment to read it.
    std::thread::sleep(Duration::from_millis(300));
    // The client's primary address is 10.77.0.7, the one it requested.
    let data = client.run(|| {
        tftp_get(
            "10.77.0.1:69".parse().unwrap(),
            "two.bin",
            &[("blksize", "1468")],
        )
    });
    assert_eq!(data.unwrap().len(), 2 * 1024 * 1024 + 17);

    // iPXE on a second machine: an HTTP fetch first (only its address is known), then its
    // script URL names the MAC, which claims the earlier step too.
    let ipxe_mac = "52:54:00:aa:00:03";
    let base = "http://10.77.0.1:8080";
    run_ok(client.command("curl").args([
        "-sS",
        "-f",
        "--interface",
        "10.77.0.8",
        "-o",
        "/dev/null",
        &format!("{base}/b512"),
    ]));
    run_ok(client.command("curl").args([
        "-sS",
        "-f",
        "--interface",
        "10.77.0.8",
        "-o",
        "/dev/null",
        &format!("{base}/boot.ipxe?mac={ipxe_mac}&arch=0"),
    ]));
    run_ok(client.command("curl").args([
        "-sS",
        "-f",
        "--interface",
        "10.77.0.8",
        "-o",
        "/dev/null",
        &format!("{base}/sub/one.bin"),
    ]));

    let out = run_ok(
        ns.command(env!("CARGO_BIN_EXE_vmedia"))
            .args(["netboot", "status", "--server", base, "--json"]),
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let machines = status["machines"].as_array().unwrap();
    let keys: Vec<&str> = machines
        .iter()
        .map(|m| m["client"].as_str().unwrap())
        .collect();
    assert!(
        !keys.iter().any(|k| k.starts_with("10.77.0.")),
        "a machine is still filed under its IP: {keys:?}\n{}",
        server.log()
    );
    let machine = |mac: &str| {
        machines
            .iter()
            .find(|m| m["client"] == mac)
            .unwrap_or_else(|| panic!("{mac} missing from {keys:?}"))
    };
    let firmware_view = machine("52:54:00:aa:00:02");
    assert_eq!(firmware_view["ip"], "10.77.0.7");
    assert_eq!(firmware_view["arch"], 7);
    let tftp = &firmware_view["transfers"][0];
    assert_eq!(tftp["protocol"], "tftp");
    assert_eq!(tftp["file"], "two.bin");
    assert_eq!(tftp["state"], "done");
    let ipxe_view = machine(ipxe_mac);
    assert_eq!(ipxe_view["ip"], "10.77.0.8");
    let files: Vec<&str> = ipxe_view["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["b512", "sub/one.bin"], "{ipxe_view}");
    let steps: Vec<&str> = ipxe_view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["message"].as_str().unwrap())
        .collect();
    assert!(
        steps.iter().any(|s| s.starts_with("boot.ipxe served")),
        "{steps:?}"
    );
    // The log names the MAC for every step after the address is known.
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("tftp 52:54:00:aa:00:02 done two.bin")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("http {ipxe_mac} send sub/one.bin"))),
        "{log}"
    );
}

#[test]
fn json_log_lines_carry_the_machine_mac() {
    let dir = tempfile::tempdir().unwrap();
    let root = make_root(dir.path());
    let (ns, client) = dhcp_ns();
    let server = Server::start(
        &ns,
        &[
            "--log-format",
            "json",
            "--interface",
            "vs0",
            "--proxy",
            "--root",
            root.to_str().unwrap(),
            "--tftp-port",
            TFTP_PORT,
            "--http-port",
            HTTP_PORT,
            "--bios-bootfile",
            "pxelinux.0",
        ],
    );
    let mac = [0x52, 0x54, 0, 0xaa, 0, 0x51];
    let offer = exchange(
        &client,
        dhcp_packet(
            mac,
            1,
            Some("PXEClient:Arch:00000:UNDI:002001"),
            Some(0),
            false,
            &[],
        ),
        67,
        Ipv4Addr::BROADCAST,
    );
    assert!(offer.is_some(), "no proxy offer\n{}", server.log());
    let mac_text = "52:54:00:aa:00:51";
    assert!(
        server.wait_log(mac_text, Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect();
    // The banner is an event too: the whole stream stays JSON.
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("vmedia netboot: serving"))),
        "{log}"
    );
    let exchange_line = lines
        .iter()
        .find(|l| l["kind"] == "dhcp" && l["span"]["mac"] == mac_text)
        .unwrap_or_else(|| panic!("no DHCP event with the MAC in its span:\n{log}"));
    assert_eq!(exchange_line["level"], "INFO");
    assert_eq!(exchange_line["client"], mac_text);
    assert_eq!(exchange_line["span"]["name"], "dhcp");
    assert_eq!(exchange_line["span"]["port"], 67);
    assert!(
        exchange_line["message"]
            .as_str()
            .is_some_and(|m| m.contains("proxy OFFER boot=pxelinux.0")),
        "{exchange_line}"
    );
    assert!(exchange_line["timestamp"].is_string(), "{exchange_line}");
}

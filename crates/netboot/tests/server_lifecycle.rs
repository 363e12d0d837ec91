//! The server is embeddable: it runs inside the caller's tokio runtime and is started and
//! stopped by library calls. Started and stopped twice in one runtime, on the same ports: it
//! serves over HTTP and TFTP each time, and after each stop its ports answer no more.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use vmedia_netboot::{DhcpConfig, Server, ServerConfig};

fn config(root: &Path, tftp_port: u16, http_port: u16) -> ServerConfig {
    ServerConfig {
        root: root.to_path_buf(),
        listen: Ipv4Addr::LOCALHOST,
        interface: None,
        server_ip: None,
        dhcp: DhcpConfig::Off,
        tftp_port: Some(tftp_port),
        http_port: Some(http_port),
        bios_bootfile: None,
        uefi_bootfile: None,
        arm64_bootfile: None,
        ipxe_script: None,
        rules_file: None,
    }
}

/// A whole-file GET; the body when the answer is 200.
fn http_get(addr: SocketAddrV4, path: &str) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of head")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(head);
    }
    Ok(raw[end + 4..].to_vec())
}

/// A lock-step RFC 1350 read (512-byte blocks, no options); DATA comes from the transfer's
/// own port.
fn tftp_get(server: SocketAddrV4, file: &str) -> Result<Vec<u8>, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut request = vec![0, 1];
    request.extend_from_slice(file.as_bytes());
    request.extend_from_slice(b"\0octet\0");
    socket
        .send_to(&request, server)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut expected: u16 = 1;
    let mut buf = [0u8; 600];
    loop {
        let (n, from) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
        if n < 4 || buf[1] != 3 {
            return Err(format!("not DATA: {:?}", &buf[..n.min(40)]));
        }
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block == expected {
            out.extend_from_slice(&buf[4..n]);
            expected = expected.wrapping_add(1);
        }
        socket
            .send_to(&[0, 4, buf[2], buf[3]], from)
            .map_err(|e| e.to_string())?;
        if block == expected.wrapping_sub(1) && n < 4 + 512 {
            return Ok(out);
        }
    }
}

/// True when nothing answers a read request on `server` (ICMP port unreachable or silence).
fn tftp_is_silent(server: SocketAddrV4) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    socket.send(b"\x00\x01hello.txt\x00octet\x00").unwrap();
    let mut buf = [0u8; 600];
    socket.recv(&mut buf).is_err()
}

#[test]
fn server_starts_and_stops_twice_in_one_runtime() {
    let dir = tempfile::tempdir().unwrap();
    // Three TFTP blocks and a short last one.
    let content: Vec<u8> = (0..1700u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("hello.txt"), &content).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut ports = (0, 0);
        for round in 0..2 {
            let server = Server::start(config(dir.path(), ports.0, ports.1))
                .await
                .unwrap_or_else(|e| panic!("round {round}: start: {e}"));
            let bound = server.bound().clone();
            let (tftp, http) = (bound.tftp.unwrap(), bound.http.unwrap());
            if round == 1 {
                assert_eq!((tftp.port(), http.port()), ports, "not the same ports");
            }
            ports = (tftp.port(), http.port());
            // The clients block: they run on the blocking pool, as an embedder's would.
            let (body, data) = tokio::task::spawn_blocking(move || {
                (http_get(http, "/hello.txt"), tftp_get(tftp, "hello.txt"))
            })
            .await
            .unwrap();
            assert_eq!(body.unwrap(), content, "round {round}: HTTP");
            assert_eq!(data.unwrap(), content, "round {round}: TFTP");
            server
                .shutdown()
                .await
                .unwrap_or_else(|e| panic!("round {round}: shutdown: {e}"));
            let (connect, silent) = tokio::task::spawn_blocking(move || {
                (TcpStream::connect(http), tftp_is_silent(tftp))
            })
            .await
            .unwrap();
            assert!(
                connect.is_err(),
                "round {round}: HTTP still accepts after shutdown"
            );
            assert!(silent, "round {round}: TFTP still answers after shutdown");
        }
    });
}

#[test]
fn a_running_tftp_transfer_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 1 << 20]).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = Server::start(config(dir.path(), 0, 0)).await.unwrap();
        let tftp = server.bound().tftp.unwrap();
        // A client that asks and then never acknowledges: the transfer waits for its ACK.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        client
            .send_to(b"\x00\x01big.bin\x00octet\x00", tftp)
            .unwrap();
        let mut buf = [0u8; 600];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(
            &buf[..2],
            &[0, 3],
            "first DATA expected, got {:?}",
            &buf[..n]
        );
        let started = std::time::Instant::now();
        server.shutdown().await.unwrap();
        // Well within the client's retransmission timeout: the thread saw the stop flag.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "shutdown took {:?}",
            started.elapsed()
        );
        // The client is told, not left waiting (retransmitted DATA may be queued first).
        let mut told = false;
        for _ in 0..8 {
            let Ok((n, _)) = client.recv_from(&mut buf) else {
                break;
            };
            if buf[..2] == [0, 5] {
                assert!(
                    String::from_utf8_lossy(&buf[4..n]).contains("shutting down"),
                    "{:?}",
                    &buf[..n]
                );
                told = true;
                break;
            }
        }
        assert!(told, "the client got no error packet at shutdown");
    });
}

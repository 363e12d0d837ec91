//! The TFTP server's edges that real clients rarely reach: windows sent with plain sendmmsg
//! (the fallback where the kernel refuses UDP segmentation offload) arrive whole and in
//! order, and the 2049th transfer running at once is refused with a TFTP error packet while
//! the 2048 before it run. One server in one runtime per case, on loopback.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmedia_netboot::files::FileRoot;
use vmedia_netboot::net;
use vmedia_netboot::status::Status;
use vmedia_netboot::tftp::server::{TftpServer, TransferControl, MAX_ACTIVE_TRANSFERS};

/// A file of `len` bytes from a fixed sequence.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A TFTP server on an ephemeral loopback port, serving `files`, in `runtime`.
fn start(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    files: &[(&str, &[u8])],
) -> (SocketAddrV4, Arc<TransferControl>) {
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    let root = Arc::new(FileRoot::new(dir).unwrap());
    runtime.block_on(async {
        let socket =
            net::udp_socket(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None, false).unwrap();
        let SocketAddr::V4(addr) = socket.local_addr().unwrap() else {
            unreachable!()
        };
        let server = TftpServer::new(socket, root, Arc::new(Status::new()), Ipv4Addr::LOCALHOST);
        let control = server.control();
        tokio::spawn(server.run());
        (addr, control)
    })
}

fn rrq(file: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(file.as_bytes());
    p.extend_from_slice(b"\0octet\0");
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// A windowed read (RFC 7440): ACKs the OACK, then the last block of each full window.
fn windowed_get(server: SocketAddrV4, file: &str, blksize: usize, window: u16) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (bs, ws) = (blksize.to_string(), window.to_string());
    socket
        .send_to(&rrq(file, &[("blksize", &bs), ("windowsize", &ws)]), server)
        .unwrap();
    let mut buf = vec![0u8; blksize + 4];
    let (n, peer) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, 6], "OACK expected: {:?}", &buf[..n.min(40)]);
    socket.send_to(&[0, 4, 0, 0], peer).unwrap();
    let mut out = Vec::new();
    let mut expected: u16 = 1;
    loop {
        let (n, _) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..2], &[0, 3], "DATA expected: {:?}", &buf[..n.min(40)]);
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block != expected {
            // A lost block: ACK what we have, the server resends from there.
            socket
                .send_to(
                    &[
                        0,
                        4,
                        (expected - 1).to_be_bytes()[0],
                        (expected - 1).to_be_bytes()[1],
                    ],
                    peer,
                )
                .unwrap();
            continue;
        }
        out.extend_from_slice(&buf[4..n]);
        let last = n - 4 < blksize;
        if last || block.is_multiple_of(window) {
            socket.send_to(&[0, 4, buf[2], buf[3]], peer).unwrap();
        }
        if last {
            return out;
        }
        expected = expected.wrapping_add(1);
    }
}

#[test]
fn sendmmsg_fallback_sends_whole_windows_when_offload_is_off() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(3 * 1024 * 1024 + 77);
    let (addr, control) = start(&runtime, dir.path(), &[("big.bin", &data)]);
    control.disable_offload();
    for (blksize, window) in [(1428, 16), (8192, 8), (512, 64)] {
        let before = control.batched_windows();
        let got = windowed_get(addr, "big.bin", blksize, window);
        assert!(
            got == data,
            "blksize {blksize} window {window}: content differs"
        );
        let windows = control.batched_windows() - before;
        let expected_min = (data.len() / blksize / usize::from(window)) as u64;
        assert!(
            windows >= expected_min,
            "only {windows} of at least {expected_min} windows went through sendmmsg"
        );
    }
}

#[test]
fn transfer_beyond_the_limit_gets_a_busy_error_packet() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (addr, control) = start(&runtime, dir.path(), &[("f.bin", &pattern(4000))]);
    // Clients that never acknowledge: each transfer waits (with backoff, for seconds) for an
    // ACK and holds its place meanwhile.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let request = rrq("f.bin", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    // In groups, each started before the next is sent: the request socket's queue holds a
    // few hundred requests, not 2048.
    for sent in (64..=MAX_ACTIVE_TRANSFERS).step_by(64) {
        for _ in 0..64 {
            silent.send_to(&request, addr).unwrap();
        }
        while control.running() < sent {
            assert!(
                Instant::now() < deadline,
                "only {} of {sent} transfers started",
                control.running()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // The next one, from a client whose queue is not full of DATA.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(&request, addr).unwrap();
    let mut buf = [0u8; 600];
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(
        from,
        SocketAddr::V4(addr),
        "the refusal comes from the request port"
    );
    assert_eq!(
        &buf[..4],
        &[0, 5, 0, 0],
        "ERROR 0 expected: {:?}",
        &buf[..n]
    );
    let message = String::from_utf8_lossy(&buf[4..n - 1]);
    assert!(message.contains("server busy"), "{message}");
    assert_eq!(control.running(), MAX_ACTIVE_TRANSFERS);
    control.stop();
    assert!(runtime.block_on(control.wait_idle(Duration::from_secs(10))));
}

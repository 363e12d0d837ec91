//! Helpers for the netboot tests: curl for HTTP, a lock-step RFC 1350 TFTP client, ISO
//! building, free ports, deterministic bytes.

#![allow(dead_code)]

use std::net::{SocketAddrV4, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmedia_io::{NoProgress, OverwritePolicy};

/// TFTP error codes (RFC 1350).
pub const TFTP_FILE_NOT_FOUND: u16 = 1;
pub const TFTP_ACCESS_VIOLATION: u16 = 2;

/// Deterministic bytes (xorshift) for `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes an ISO of the folder `tree` to `out`.
pub fn write_iso(tree: &Path, out: &Path) {
    let spec = vmedia_iso::spec::IsoSpec {
        volume: vmedia_iso::spec::VolumeIds {
            volume_id: Some("NETLIB".into()),
            ..Default::default()
        },
        sources: vec![vmedia_iso::spec::GraftPoint {
            iso_path: "/".into(),
            host_path: tree.to_path_buf(),
        }],
        date: Some(1_700_000_000),
        ..Default::default()
    };
    vmedia_iso::write::write_image(&spec, out, OverwritePolicy::Replace, &NoProgress).unwrap();
}

/// A UDP and a TCP port on 127.0.0.1 that were free a moment ago.
pub fn free_ports() -> (u16, u16) {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        udp.local_addr().unwrap().port(),
        tcp.local_addr().unwrap().port(),
    )
}

/// The body of a successful curl call (`args` split at spaces, the URL last); panics on any
/// HTTP error.
pub fn curl(args: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "-f", "-g", "--noproxy", "*", "--max-time", "20"])
        .args(args.split_whitespace())
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The HTTP status curl gets for `url`.
pub fn curl_status(url: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-sS", "-g", "--noproxy", "*", "--max-time", "20"])
        .args(["-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A lock-step RFC 1350 read (512-byte blocks, octet); DATA comes from the transfer's own
/// port. An ERROR packet gives its code and message.
pub fn tftp_get(server: SocketAddrV4, file: &str) -> Result<Vec<u8>, (u16, String)> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = vec![0, 1];
    request.extend_from_slice(file.as_bytes());
    request.extend_from_slice(b"\0octet\0");
    socket.send_to(&request, server).unwrap();
    let mut out = Vec::new();
    let mut expected: u16 = 1;
    let mut buf = [0u8; 600];
    loop {
        let (n, from) = socket
            .recv_from(&mut buf)
            .map_err(|e| (0, format!("waiting for {file:?}: {e}")))?;
        if n >= 4 && buf[1] == 5 {
            let code = u16::from_be_bytes([buf[2], buf[3]]);
            let text = String::from_utf8_lossy(&buf[4..n]);
            return Err((code, text.trim_end_matches('\0').to_string()));
        }
        if n < 4 || buf[1] != 3 {
            return Err((0, format!("not DATA: {:?}", &buf[..n.min(40)])));
        }
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block == expected {
            out.extend_from_slice(&buf[4..n]);
            expected = expected.wrapping_add(1);
        }
        socket.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
        if block == expected.wrapping_sub(1) && n < 4 + 512 {
            return Ok(out);
        }
    }
}

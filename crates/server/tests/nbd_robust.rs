//! A misbehaving NBD client hurts only itself: garbage, malformed requests, clients that die
//! mid-request or never read their replies, and many clients at once, while other clients'
//! transfers are verified byte for byte; shutdown drains and returns.

#[path = "support_nbd.rs"]
mod support_nbd;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support_nbd::*;
use vmedia_nbd::option::{RawOptionReply, GREETING_LEN};
use vmedia_nbd::wire::{client_flags, reply};
use vmedia_nbd::{ClientOption, Command as NbdCommand, InfoRequest, RequestHeader};
use vmedia_server::nbd::NbdLimits;

/// Connects and negotiates `export` with GO (simple replies); returns the stream in
/// transmission.
fn raw_client(port: u16, export: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut greeting = [0u8; GREETING_LEN];
    stream.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    let mut out = (client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    ClientOption::Go(InfoRequest {
        name: export.into(),
        requests: vec![],
    })
    .emit(&mut out);
    stream.write_all(&out).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let mut at = 0;
        while let Some((parsed, used)) = RawOptionReply::parse(&received[at..]) {
            at += used;
            assert!(parsed.reply_type & (1 << 31) == 0, "GO refused: {parsed:?}");
            if parsed.reply_type == reply::ACK {
                assert_eq!(at, received.len());
                return stream;
            }
        }
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "server closed during GO");
        received.extend_from_slice(&buffer[..read]);
    }
}

fn request(command: NbdCommand, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut out = Vec::new();
    RequestHeader {
        flags: 0,
        command,
        cookie,
        offset,
        length,
    }
    .emit(&mut out);
    out
}

/// Reads until the server closes; true when it did within the timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 65536];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Copies the read-only export with nbdcopy and checks every byte.
fn verified_copy(server: &Server, dir: &std::path::Path, expected: &[u8], name: &str) {
    let out = dir.join(name);
    run(Command::new(tool("nbdcopy"))
        .arg(server.uri("iso"))
        .arg(&out));
    assert!(std::fs::read(&out).unwrap() == expected, "{name} differs");
}

#[test]
fn misbehaving_clients_do_not_disturb_other_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, expected) = two_exports(dir.path());
    let limits = NbdLimits {
        handshake_timeout: Duration::from_secs(1),
        ..NbdLimits::default()
    };
    let server = Server::start(exports, None, limits);

    // Garbage instead of client flags and options.
    let mut garbage = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    garbage.write_all(&[0xde; 4096]).unwrap();
    // A request with a bad magic closes that connection.
    let mut bad_magic = raw_client(server.port, "iso");
    bad_magic.write_all(&[0x55; 28]).unwrap();
    // A client that dies right after asking for 1 MiB, and one mid-way through a write.
    let mut dies_reading = raw_client(server.port, "iso");
    dies_reading
        .write_all(&request(NbdCommand::Read, 1, 0, 1 << 20))
        .unwrap();
    drop(dies_reading);
    let mut dies_writing = raw_client(server.port, "disk");
    dies_writing
        .write_all(&request(NbdCommand::Write, 2, 0, 1 << 20))
        .unwrap();
    dies_writing.write_all(&[7u8; 1000]).unwrap();
    drop(dies_writing);
    // A client that connects and says nothing: closed at the handshake timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let silent_since = Instant::now();

    verified_copy(&server, dir.path(), &expected, "copy1.img");

    assert!(closed_by_server(&mut garbage), "garbage client left open");
    assert!(
        closed_by_server(&mut bad_magic),
        "bad-magic client left open"
    );
    assert!(closed_by_server(&mut silent), "silent client left open");
    let waited = silent_since.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "silent client held {waited:?}"
    );

    verified_copy(&server, dir.path(), &expected, "copy2.img");
    // The half-written request never reached the file.
    let disk = std::fs::read(dir.path().join("disk.img")).unwrap();
    assert_eq!(disk[..1000], pattern(0, 1000)[..]);
    let counts = server.wait_all_closed();
    assert_eq!(counts.started, counts.finished, "{counts:?}");
}

#[test]
fn a_client_that_never_reads_its_replies_stalls_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, expected) = two_exports(dir.path());
    let limits = NbdLimits {
        max_in_flight: 8,
        max_buffered_bytes: 16 << 20,
        ..NbdLimits::default()
    };
    let server = Server::start(exports, None, limits);
    let mut hog = raw_client(server.port, "iso");
    // 512 MiB of reads asked for; the hog reads none of it.
    hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sent = 0;
    for cookie in 0..512u64 {
        let offset = (cookie % 7) << 20;
        if hog
            .write_all(&request(NbdCommand::Read, cookie, offset, 1 << 20))
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    assert!(sent > 8, "only {sent} requests sent");
    std::thread::sleep(Duration::from_millis(300));
    let stalled = server.recorder.snapshot();
    assert!(
        stalled.started < 100,
        "the server kept reading a stalled client's requests: {stalled:?}"
    );

    verified_copy(&server, dir.path(), &expected, "copy.img");
    let counts = server.recorder.snapshot();
    // nbdcopy's own requests add to the hog's, which never exceed its cap of 8.
    assert!(counts.max_in_flight <= 8 + 64, "{counts:?}");
    drop(hog);
    server.wait_all_closed();
}

const MANY_CLIENTS: &str = r#"
import sys, nbd, random, threading
uri, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
expected = open(path, "rb").read()
verified = []
failures = []
def client(seed):
    try:
        rng = random.Random(seed)
        h = nbd.NBD()
        h.connect_uri(uri)
        for _ in range(20):
            length = rng.choice([4096, 65536, 262144])
            offset = rng.randrange(0, len(expected) - length, 512)
            if h.pread(length, offset) != expected[offset:offset + length]:
                failures.append((seed, offset, length))
                return
        h.shutdown()
        verified.append(seed)
    except Exception as e:
        failures.append((seed, repr(e)))
threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
for t in threads: t.start()
for t in threads: t.join()
print(len(verified), failures[:3])
"#;

#[test]
fn a_hundred_concurrent_clients_all_read_the_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, _) = two_exports(dir.path());
    let server = Server::start(exports, None, NbdLimits::default());
    let out = run(Command::new(python())
        .args(["-c", MANY_CLIENTS])
        .arg(server.uri("iso"))
        .arg(dir.path().join("iso.img"))
        .arg("100"));
    assert_eq!(out.trim(), "100 []");
    let counts = server.wait_all_closed();
    assert_eq!(counts.opened, 100);
    assert_eq!(counts.by_op["read"].0, 2000);
    assert_eq!(counts.failed, 0);
}

#[test]
fn shutdown_drains_in_flight_requests_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, _) = two_exports(dir.path());
    let limits = NbdLimits {
        drain_timeout: Duration::from_secs(2),
        ..NbdLimits::default()
    };
    let mut server = Server::start(exports, None, limits);
    let mut idle = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut busy = raw_client(server.port, "iso");
    busy.write_all(&request(NbdCommand::Read, 9, 0, 4096))
        .unwrap();
    let mut reply = [0u8; 16 + 4096];
    busy.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[8..16], &9u64.to_be_bytes());
    assert_eq!(reply[16..], pattern(0, 4096)[..]);

    let took = server.stop();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(closed_by_server(&mut busy));
    assert!(closed_by_server(&mut idle));
    assert!(TcpStream::connect(("127.0.0.1", server.port)).is_err());
    let counts = server.recorder.snapshot();
    assert_eq!(counts.opened, counts.closed, "{counts:?}");
}

/// An export whose reads fail (I/O error) or panic in one region.
struct Faulty {
    inner: std::sync::Arc<FileExport>,
}

impl vmedia_server::export::Export for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    fn block_sizes(&self) -> vmedia_server::export::BlockSizes {
        self.inner.block_sizes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset == 3 << 20 {
            panic!("a bug in an export");
        }
        if offset >= 3 << 20 {
            return Err(std::io::Error::other("backend unreachable"));
        }
        self.inner.read_at(buf, offset)
    }
    fn extents(
        &self,
        offset: u64,
        length: u64,
    ) -> std::io::Result<Vec<vmedia_server::export::Extent>> {
        self.inner.extents(offset, length)
    }
}

#[test]
fn export_errors_and_panics_become_eio_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_, expected) = two_exports(dir.path());
    let inner = FileExport::open("inner", &dir.path().join("iso.img"), true);
    let exports = Exports::default().with(std::sync::Arc::new(Faulty { inner }));
    let server = Server::start(exports, None, NbdLimits::default());
    let script = r#"
import sys, nbd
for structured in (True, False):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(sys.argv[1])
    for offset in (3 << 20, (3 << 20) + 4096):
        try:
            h.pread(4096, offset)
            raise SystemExit("a failing read succeeded")
        except nbd.Error as e:
            assert e.errno == "EIO", e.errno
    sys.stdout.write(h.pread(16, 0).hex() + "\n")
    h.shutdown()
"#;
    let out = run(Command::new(python())
        .args(["-c", script])
        .arg(server.uri("faulty")));
    let want: String = expected[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(out, format!("{want}\n{want}\n"));
    let counts = server.wait_all_closed();
    assert_eq!(counts.failed, 4, "{counts:?}");
}

#[test]
fn connections_over_the_limit_are_closed_and_slots_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, _) = two_exports(dir.path());
    let limits = NbdLimits {
        max_connections: 1,
        ..NbdLimits::default()
    };
    let server = Server::start(exports, None, limits);
    let first = raw_client(server.port, "iso");
    let mut second = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(second.read(&mut byte), Ok(0) | Err(_)),
        "a connection over the limit was served"
    );
    drop(first);
    // The slot is free once the first connection's task ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut third = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        third
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut greeting = [0u8; 8];
        if third.read_exact(&mut greeting).is_ok() {
            assert_eq!(&greeting, b"NBDMAGIC");
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic byte mutations of a seed (flip, cut, overwrite a 32-bit field).
fn mutate(seed: &[u8], round: u64) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    let mut state = round.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let at = (next() as usize) % bytes.len().max(1);
    match next() % 3 {
        0 => {
            if let Some(byte) = bytes.get_mut(at) {
                *byte ^= 1 << (next() % 8);
            }
        }
        1 => bytes.truncate(at),
        _ => {
            for (i, byte) in (next() as u32).to_be_bytes().iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *byte;
                }
            }
        }
    }
    bytes
}

#[test]
fn the_fuzz_corpora_sent_to_a_live_server_leave_it_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (exports, expected) = two_exports(dir.path());
    let server = Server::start(exports, None, NbdLimits::default());
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut sent = 0;
    for (target, after_go) in [("nbd_handshake", false), ("nbd_request", true)] {
        for entry in std::fs::read_dir(corpus.join(target)).unwrap() {
            let seed = std::fs::read(entry.unwrap().path()).unwrap();
            for round in 0..4 {
                let bytes = if round == 0 {
                    seed.clone()
                } else {
                    mutate(&seed, round)
                };
                let mut stream = if after_go {
                    raw_client(server.port, "disk")
                } else {
                    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .unwrap();
                    let mut greeting = [0u8; GREETING_LEN];
                    stream.read_exact(&mut greeting).unwrap();
                    stream
                };
                // The server may close first; a failed send is part of the test.
                let _ = stream.write_all(&bytes);
                let _ = stream.shutdown(std::net::Shutdown::Write);
                assert!(
                    closed_by_server(&mut stream),
                    "{target} seed left a connection open"
                );
                sent += 1;
            }
        }
    }
    assert!(sent >= 100, "only {sent} conversations replayed");
    verified_copy(&server, dir.path(), &expected, "after-corpus.img");
    server.wait_all_closed();
}

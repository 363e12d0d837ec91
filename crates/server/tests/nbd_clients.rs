//! The NBD server against real clients: libnbd's nbdinfo, nbdcopy and Python bindings, and
//! QEMU's qemu-img and qemu-io, over a read-only and a writable file-backed export.

#[path = "support_nbd.rs"]
mod support_nbd;

use std::process::Command;

use support_nbd::*;
use vmedia_server::nbd::NbdLimits;

fn server(dir: &std::path::Path) -> (Server, Vec<u8>) {
    let (exports, expected) = two_exports(dir);
    (Server::start(exports, None, NbdLimits::default()), expected)
}

#[test]
fn nbdinfo_lists_every_export() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server(dir.path());
    let out = run(Command::new(tool("nbdinfo"))
        .arg("--list")
        .arg(format!("nbd://127.0.0.1:{}", server.port)));
    assert!(out.contains("export=\"disk\""), "{out}");
    assert!(out.contains("export=\"iso\""), "{out}");
    assert!(out.contains("test export iso"), "{out}");
    server.wait_all_closed();
}

#[test]
fn nbdinfo_json_reports_size_block_sizes_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server(dir.path());
    let out = run(Command::new(tool("nbdinfo"))
        .arg("--json")
        .arg(server.uri("iso")));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let export = &json["exports"][0];
    assert_eq!(export["export-name"], "iso", "{out}");
    assert_eq!(export["export-size"], IMAGE_SIZE, "{out}");
    assert_eq!(export["block_size_minimum"], 1, "{out}");
    assert_eq!(export["block_size_preferred"], 4096, "{out}");
    assert_eq!(export["block_size_maximum"], 32 << 20, "{out}");
    assert_eq!(export["is_read_only"], true, "{out}");
    assert_eq!(export["can_multi_conn"], true, "{out}");
    assert_eq!(export["can_trim"], false, "{out}");
    assert_eq!(export["can_df"], true, "{out}");
    assert_eq!(json["protocol"], "newstyle-fixed", "{out}");
    assert_eq!(json["TLS"], false, "{out}");

    let out = run(Command::new(tool("nbdinfo"))
        .arg("--json")
        .arg(server.uri("disk")));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let export = &json["exports"][0];
    assert_eq!(export["is_read_only"], false, "{out}");
    assert_eq!(export["can_trim"], true, "{out}");
    assert_eq!(export["can_zero"], true, "{out}");
    assert_eq!(export["can_fua"], true, "{out}");
    assert_eq!(export["can_flush"], true, "{out}");
}

#[test]
fn nbdinfo_map_shows_the_holes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server(dir.path());
    let out = run(Command::new(tool("nbdinfo"))
        .arg("--map")
        .arg(server.uri("iso")));
    // Lines: offset length type description, e.g. "0 1048576 0 data".
    let mut map = Vec::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let offset: u64 = fields[0].parse().unwrap();
        let length: u64 = fields[1].parse().unwrap();
        let flags: u32 = fields[2].parse().unwrap();
        map.push((offset, length, flags));
    }
    let expected = vec![
        (0, 1 << 20, 0),
        (1 << 20, 2 << 20, 3),
        (3 << 20, 1 << 20, 0),
        (4 << 20, 2 << 20, 3),
        (6 << 20, 512 << 10, 0),
        ((6 << 20) + (512 << 10), (1 << 20) + (512 << 10), 3),
    ];
    assert_eq!(map, expected, "{out}");
}

#[test]
fn nbdcopy_copies_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (server, expected) = server(dir.path());
    let out = dir.path().join("copy.img");
    run(Command::new(tool("nbdcopy"))
        .arg(server.uri("iso"))
        .arg(&out));
    assert!(
        std::fs::read(&out).unwrap() == expected,
        "nbdcopy output differs"
    );
    let counts = server.wait_all_closed();
    let reads = counts.by_op.get("read").copied().unwrap_or_default();
    // Holes are skipped through BLOCK_STATUS, so only the data runs are read.
    let data: u64 = DATA_RUNS.iter().map(|run| run.1).sum();
    assert!(reads.1 >= data && reads.1 < IMAGE_SIZE, "{counts:?}");
    assert_eq!(counts.failed, 0, "{counts:?}");
}

#[test]
fn qemu_img_convert_and_map_through_nbd() {
    let dir = tempfile::tempdir().unwrap();
    let (server, expected) = server(dir.path());
    let out = dir.path().join("converted.raw");
    run(Command::new(tool("qemu-img"))
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(server.uri("iso"))
        .arg(&out));
    assert!(
        std::fs::read(&out).unwrap() == expected,
        "qemu-img output differs"
    );

    let map = run(Command::new(tool("qemu-img"))
        .args(["map", "--output=json", "-f", "raw"])
        .arg(server.uri("iso")));
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    let ranges: Vec<(u64, u64, bool)> = map
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["start"].as_u64().unwrap(),
                entry["length"].as_u64().unwrap(),
                entry["data"].as_bool().unwrap(),
            )
        })
        .collect();
    for (offset, length) in DATA_RUNS {
        assert!(
            ranges.contains(&(offset, length, true)),
            "data run {offset}+{length} missing from {ranges:?}"
        );
    }
    assert!(ranges.contains(&(1 << 20, 2 << 20, false)), "{ranges:?}");
}

#[test]
fn qemu_io_writes_land_in_the_writable_export() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server(dir.path());
    run(Command::new(tool("qemu-io"))
        .args(["-f", "raw", "-c", "write -P 0x5a 1M 64k", "-c", "flush"])
        .arg(server.uri("disk")));
    let disk = std::fs::read(dir.path().join("disk.img")).unwrap();
    assert!(disk[1 << 20..(1 << 20) + 65536]
        .iter()
        .all(|byte| *byte == 0x5a));
    // The read-only export refuses the same write.
    let output = Command::new(tool("qemu-io"))
        .args(["-f", "raw", "-c", "write -P 0x5a 0 4k"])
        .arg(server.uri("iso"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    // qemu sees READ_ONLY and refuses to open the export for writing.
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("Permission denied"), "{text}");
    let iso = std::fs::read(dir.path().join("iso.img")).unwrap();
    assert_eq!(iso[..4096], pattern(0, 4096)[..]);
}

/// Structured replies, block status, DF reads, writes with FUA, flush, zero and trim through
/// libnbd's Python bindings; prints "ok" when every check in the script passed.
const PYTHON_CHECKS: &str = r#"
import sys, nbd
uri, data_end = sys.argv[1], int(sys.argv[2])
h = nbd.NBD()
# No client-side checks: the refusals below must come from the server.
h.set_strict_mode(0)
h.add_meta_context("base:allocation")
h.connect_uri(uri)
assert h.get_structured_replies_negotiated()
assert h.can_meta_context("base:allocation")
assert h.can_df() and h.can_fua() and h.can_flush() and h.can_trim() and h.can_zero()
assert h.can_multi_conn() and not h.is_read_only()
size = h.get_size()
assert size == 8 << 20, size

entries = []
def extent(metacontext, offset, e, err):
    assert metacontext == "base:allocation"
    entries.extend(zip(e[0::2], e[1::2]))
    return 0
h.block_status(size, 0, extent)
assert entries[0] == (1 << 20, 0), entries
assert entries[1] == (2 << 20, 3), entries

# Holes read as zeroes, data as written, with and without DF.
assert h.pread(4096, 2 << 20) == bytes(4096)
whole = h.pread(1 << 20, 512 << 10)
chunks = []
def chunk(subbuf, offset, status, error):
    chunks.append((offset, len(subbuf), status))
    return 0
# DF: one data chunk even where the range holds a hole.
assert h.pread_structured(1 << 20, 512 << 10, chunk, nbd.CMD_FLAG_DF) == whole
assert chunks == [(512 << 10, 1 << 20, nbd.READ_DATA)], chunks
# Without DF, the hole comes back as a hole chunk.
chunks.clear()
span = h.pread_structured(8192, (1 << 20) - 4096, chunk)
assert span[4096:] == bytes(4096)
assert sorted(chunks) == [((1 << 20) - 4096, 4096, nbd.READ_DATA), (1 << 20, 4096, nbd.READ_HOLE)], chunks

h.pwrite(b"\xab" * 65536, 2 << 20, nbd.CMD_FLAG_FUA)
h.pwrite(b"\xcd" * 4096, 5 << 20)
h.flush()
assert h.pread(65536, 2 << 20) == b"\xab" * 65536
h.zero(65536, 0)
assert h.pread(65536, 0) == bytes(65536)
h.trim(4096, 5 << 20)
h.flush()

# Out of bounds and read-only refusals come back as errors, and the connection stays usable.
try:
    h.pread(4096, size)
    raise SystemExit("read past the end succeeded")
except nbd.Error as e:
    assert e.errno == "EINVAL", e.errno
try:
    h.pwrite(b"x" * 512, size - 256)
    raise SystemExit("write past the end succeeded")
except nbd.Error as e:
    assert e.errno == "ENOSPC", e.errno
assert h.pread(512, 3 << 20) == open(sys.argv[3], "rb").read()[3 << 20:(3 << 20) + 512]
h.shutdown()

ro = nbd.NBD()
ro.set_strict_mode(0)
ro.connect_uri(uri.rsplit("/", 1)[0] + "/iso")
assert ro.is_read_only()
try:
    ro.pwrite(b"x" * 512, 0)
    raise SystemExit("write to a read-only export succeeded")
except nbd.Error as e:
    assert e.errno == "EPERM", e.errno
ro.shutdown()
print("ok")
"#;

#[test]
fn python_libnbd_structured_replies_block_status_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, expected) = server(dir.path());
    let original = dir.path().join("iso.img");
    let out = run(Command::new(python())
        .args(["-c", PYTHON_CHECKS])
        .arg(server.uri("disk"))
        .arg((1u64 << 20).to_string())
        .arg(&original));
    assert_eq!(out.trim(), "ok");
    let disk = std::fs::read(dir.path().join("disk.img")).unwrap();
    let mut want = expected.clone();
    want[2 << 20..(2 << 20) + 65536].fill(0xab);
    want[..65536].fill(0);
    want[5 << 20..(5 << 20) + 4096].fill(0);
    assert!(
        disk == want,
        "the writable export's file differs from the writes"
    );
    let counts = server.wait_all_closed();
    for op in [
        "read",
        "write",
        "write_zeroes",
        "trim",
        "flush",
        "block_status",
    ] {
        assert!(
            counts.by_op.contains_key(op),
            "{op} not observed: {counts:?}"
        );
    }
    assert_eq!(counts.started, counts.finished);
    assert_eq!(counts.in_flight, 0);
    // The refused read, write past the end and write to the read-only export.
    assert_eq!(counts.failed, 3, "{counts:?}");
}

#[test]
fn minimum_block_size_is_advertised_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    sparse_image(&dir.path().join("sector.img"));
    let export = FileExport::open("sector", &dir.path().join("sector.img"), true).with_block_sizes(
        vmedia_server::export::BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: 1 << 20,
        },
    );
    let server = Server::start(Exports::default().with(export), None, NbdLimits::default());
    let script = r#"
import sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 1 << 20
try:
    h.pread(100, 3)
    raise SystemExit("unaligned read succeeded")
except nbd.Error as e:
    assert e.errno == "EINVAL", e.errno
assert len(h.pread(512, 512)) == 512
print("ok")
"#;
    let out = run(Command::new(python())
        .args(["-c", script])
        .arg(server.uri("sector")));
    assert_eq!(out.trim(), "ok");
}

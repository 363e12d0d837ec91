//! Entry points for the fuzz targets (`fuzz/fuzz_targets/library_*.rs`) and the corpus replay
//! test: each takes untrusted bytes, must never panic, and checks that whatever parses
//! survives an emit -> parse round trip. Returns whether the input parsed.

use std::time::Duration;

use crate::manifest::{index_bytes, parse_index, Manifest};
use crate::timeline::Timeline;

/// A manifest object's plain bytes.
pub fn manifest(data: &[u8]) -> bool {
    let Ok(parsed) = Manifest::parse("fuzz", data) else {
        return false;
    };
    let again = Manifest::parse("fuzz", &parsed.to_bytes()).expect("an emitted manifest parses");
    assert_eq!(again, parsed);
    let _ = parsed.check_signature("fuzz");
    true
}

/// A chunk index: the image size (8 bytes, little-endian), then the entry table.
pub fn chunk_index(data: &[u8]) -> bool {
    let Some(size) = vmedia_io::bytes::le64(data, 0) else {
        return false;
    };
    let table = &data[8..];
    let Ok(entries) = parse_index("fuzz", table, 8, size) else {
        return false;
    };
    assert_eq!(index_bytes(&entries), table);
    true
}

/// A timeline object's plain bytes; retention is decided on whatever parses.
pub fn timeline(data: &[u8]) -> bool {
    let Ok(parsed) = Timeline::parse("fuzz", data, None) else {
        return false;
    };
    let again =
        Timeline::parse("fuzz", &parsed.to_bytes(), None).expect("an emitted timeline parses");
    assert_eq!(again, parsed);
    let _ = parsed.current();
    let now = parsed
        .events
        .last()
        .map(|e| e.time)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let _ = crate::retention::decide(&parsed, now, Duration::from_secs(72 * 3600), Some(2));
    let _ = crate::retention::decide(&parsed, jiff::Timestamp::MAX, Duration::MAX, None);
    true
}

//! Replays the `iso_implant` fuzz corpus (fuzz/corpus/iso_implant) through the fuzz target's
//! code path, `vmedia_iso::integrity::read_implant`, plus every truncation of each sample at
//! the places the parser reads: no input may panic, and the real samples must read.

use std::path::Path;

use vmedia_iso::integrity::read_implant;

/// Where the primary volume descriptor starts (sector 16) and where its application-use
/// area, which holds the embedded records, ends.
const PVD_OFFSET: usize = 0x8000;
const APPLICATION_USE_END: usize = 0x8000 + 883 + 512;

#[test]
fn every_iso_implant_corpus_file_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/iso_implant");
    let mut count = 0;
    let mut valid = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = read_implant(&data);
        if !name.starts_with("hostile-") {
            let info = result
                .unwrap_or_else(|e| panic!("{name} is a valid sample but does not read: {e}"));
            assert!(info.is_some(), "{name} carries embedded checksums");
            valid += 1;
        }
        // Every cut through the descriptor and its records gives an answer, never a panic.
        for len in (0..data.len().min(APPLICATION_USE_END + 1)).filter(|len| {
            *len < 64 || (PVD_OFFSET..=APPLICATION_USE_END).contains(len) || len % 2048 == 0
        }) {
            let _ = read_implant(&data[..len].to_vec());
        }
        count += 1;
    }
    assert!(valid >= 1, "the corpus should hold a valid seed sample");
    assert!(
        count >= 4,
        "the corpus should hold the seed and the short samples ({count} found)"
    );
}

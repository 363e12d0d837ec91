//! Replays the fuzz corpora of the library's parsers (manifest, chunk index, timeline): no
//! input may panic, and the valid seeds must parse.

use std::fs;
use std::path::Path;

fn replay(target: &str, parse: fn(&[u8]) -> bool) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut count = 0;
    let mut parsed = 0;
    for entry in fs::read_dir(&corpus).unwrap_or_else(|e| panic!("{}: {e}", corpus.display())) {
        let path = entry.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        let ok = parse(&bytes);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("valid-") {
            assert!(ok, "{name} should parse");
        }
        if name.starts_with("bad-") {
            assert!(!ok, "{name} should be refused");
        }
        parsed += ok as usize;
        count += 1;
    }
    assert!(count >= 5, "{target}: corpus has only {count} files");
    assert!(parsed >= 1, "{target}: no valid seed");
}

#[test]
fn manifest_corpus_replays() {
    replay("library_manifest", vmedia_library::fuzzing::manifest);
}

#[test]
fn chunk_index_corpus_replays() {
    replay("library_chunk_index", vmedia_library::fuzzing::chunk_index);
}

#[test]
fn timeline_corpus_replays() {
    replay("library_timeline", vmedia_library::fuzzing::timeline);
}

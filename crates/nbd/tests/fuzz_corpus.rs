//! Replays the NBD fuzz corpora (handshakes and transmission-phase requests captured from
//! nbdinfo, nbdcopy, qemu-img, qemu-io and libnbd's Python bindings, plus hand-made malformed
//! seeds): no input may panic, `valid-` seeds must be accepted and `bad-` seeds refused.

use std::fs;
use std::path::Path;

fn replay(target: &str, accept: fn(&[u8]) -> bool) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut count = 0;
    let mut accepted = 0;
    for entry in fs::read_dir(&corpus).unwrap_or_else(|e| panic!("{}: {e}", corpus.display())) {
        let path = entry.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        let ok = accept(&bytes);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("valid-") {
            assert!(ok, "{name} should be accepted");
        }
        if name.starts_with("bad-") {
            assert!(!ok, "{name} should be refused");
        }
        accepted += ok as usize;
        count += 1;
    }
    assert!(count >= 5, "{target}: corpus has only {count} files");
    assert!(accepted >= 1, "{target}: no valid seed");
}

#[test]
fn handshake_corpus_replays() {
    replay("nbd_handshake", vmedia_nbd::fuzzing::handshake);
}

#[test]
fn request_corpus_replays() {
    replay("nbd_request", vmedia_nbd::fuzzing::requests);
}

/// Every byte string a fuzzer would try first (each prefix of a real conversation) must be
/// handled without a panic.
#[test]
fn every_prefix_of_the_real_handshakes_is_handled() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/nbd_handshake");
    for entry in fs::read_dir(&corpus).unwrap() {
        let bytes = fs::read(entry.unwrap().path()).unwrap();
        for end in 0..bytes.len() {
            let _ = vmedia_nbd::fuzzing::handshake(&bytes[..end]);
        }
    }
}

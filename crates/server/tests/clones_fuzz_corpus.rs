//! Replays the clone fuzz corpora (fuzz/corpus/clone_journal, fuzz/corpus/clone_meta) through
//! the fuzz targets' code (`vmedia_server::clones::fuzzing`): no sample may panic, `valid-*`
//! and `torn-*` samples must replay (a torn tail is dropped, not an error) and `bad-*` must not.

#[path = "../../../fuzz/corpus_samples.rs"]
mod corpus_samples;

use vmedia_server::clones::fuzzing;
use vmedia_server::clones::journal::{replay, HEADER_LEN, RECORD_LEN};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    corpus_samples::samples(target, 5)
}

#[test]
fn clone_journal_corpus_replays() {
    for (name, data) in corpus("clone_journal") {
        let parsed = fuzzing::journal(&data);
        let expected = !name.starts_with("bad-");
        assert_eq!(parsed, expected, "{name}");
        if name.starts_with("torn-") {
            let replayed = replay(&data).unwrap();
            assert!(
                replayed.valid_len < data.len() as u64,
                "{name}: nothing torn"
            );
            assert_eq!(
                replayed.valid_len as usize,
                HEADER_LEN + replayed.records.len() * RECORD_LEN
            );
        }
    }
}

#[test]
fn clone_meta_corpus_replays() {
    for (name, data) in corpus("clone_meta") {
        assert_eq!(fuzzing::meta(&data), name.starts_with("valid-"), "{name}");
    }
}

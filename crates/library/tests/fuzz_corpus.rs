//! Replays the fuzz corpora of the library's parsers (manifest, chunk index, timeline): no
//! input may panic, and the valid seeds must parse.

#[path = "../../../fuzz/corpus_samples.rs"]
mod corpus_samples;

use corpus_samples::replay;

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

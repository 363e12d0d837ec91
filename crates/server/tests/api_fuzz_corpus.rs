//! Replays fuzz/corpus/api_upload_headers through the fuzz target's code
//! (`vmedia_server::api::uploads::fuzz_headers`): no sample may panic, `valid-*` appends are
//! accepted and `bad-*` refused.

#[path = "../../../fuzz/corpus_samples.rs"]
mod corpus_samples;

#[test]
fn api_upload_headers_corpus_replays() {
    corpus_samples::replay(
        "api_upload_headers",
        vmedia_server::api::uploads::fuzz_headers,
    );
}

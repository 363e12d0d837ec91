//! Replays the `udf_read` fuzz corpus (fuzz/corpus/udf_read) through the fuzz target's code
//! path, `vmedia_iso::udf::read::exercise`: no sample may panic, `valid-*` samples (vmedia,
//! genisoimage -udf and mkudffs images) must read, `bad-*` samples must be refused.

#[path = "../../../fuzz/corpus_samples.rs"]
mod corpus_samples;

#[test]
fn every_udf_read_corpus_file_replays() {
    corpus_samples::replay("udf_read", vmedia_iso::udf::read::exercise);
}

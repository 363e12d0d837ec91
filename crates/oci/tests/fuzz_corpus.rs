//! Replays the OCI fuzz corpus (fuzz/corpus/oci_manifest) through the fuzz target's code: no
//! sample may panic, `valid-*` manifests (and layers) are accepted, `bad-*` ones refused.

#[path = "../../../fuzz/corpus_samples.rs"]
mod corpus_samples;

#[test]
fn oci_manifest_corpus_replays() {
    corpus_samples::replay("oci_manifest", vmedia_oci::fuzzing::manifest_and_layer);
}

//! Fuzz target for the UDF reader: open the bytes in their UDF tree (anchor, descriptor
//! sequences, file set, file entries, identifiers), walk it and read every file
//! (`vmedia_iso::udf::read::exercise`, the same path the corpus replay test in
//! crates/iso/tests/udf_corpus.rs runs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_iso::udf::read::exercise(data);
});

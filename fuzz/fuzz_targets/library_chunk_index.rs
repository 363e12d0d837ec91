//! Fuzz target: library chunk index objects come from a shared, untrusted store; parsing must never
//! panic or allocate from unchecked sizes, and whatever parses must survive emit -> parse.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_library::fuzzing::chunk_index(data);
});

//! Fuzz target: the offset headers of a resumable upload's append (`Upload-Offset`,
//! `Content-Range`, `Content-Length`) from strangers must never panic the parser, and an
//! accepted range always lies inside its stated total.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_server::api::uploads::fuzz_headers(data);
});

//! Fuzz target: transmission-phase bytes (request headers and WRITE payloads) parsed,
//! re-emitted and validated, with the read and block-status planners checked on what passes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_nbd::fuzzing::requests(data);
});

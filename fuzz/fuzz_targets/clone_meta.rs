//! Fuzz target: a clone's `clone.json` is read on every daemon start; parsing must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_server::clones::fuzzing::meta(data);
});

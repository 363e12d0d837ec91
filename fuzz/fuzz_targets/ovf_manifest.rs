//! Fuzz target: OVF manifests (.mf) are untrusted text; parsing must never panic, and what
//! parses must survive emit -> parse unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_ovf::fuzzing::manifest(data);
});

//! Fuzz target: OVF descriptors come from packages downloaded from anywhere; parsing must never
//! panic, expand entities or allocate past the named limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_ovf::fuzzing::descriptor(data);
    let _ = vmedia_ovf::fuzzing::ova_index(data);
});

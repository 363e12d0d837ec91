//! Fuzz target for the disk readers: probe the bytes, open them as raw, qcow2, vmdk, vpc and
//! vhdx in turn, read guest data, walk block status, build info and run the check
//! (`vmedia_disk::exercise::exercise`, the same path the corpus replay test in
//! crates/disk/tests/hostile.rs runs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_disk::exercise::exercise(data);
});

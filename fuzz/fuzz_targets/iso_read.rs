//! Fuzz target for the ISO 9660 reader: open the bytes under every name space, walk the whole
//! tree, read every file and the boot catalog (`vmedia_iso::read::exercise`, the same path the
//! corpus replay test in crates/iso/tests/read_hostile.rs runs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_iso::read::exercise(data);
});

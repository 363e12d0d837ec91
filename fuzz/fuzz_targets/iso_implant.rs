//! Fuzz target for the embedded-integrity record parser: the bytes as a whole image (PVD
//! application-use area at 0x8373) through `vmedia_iso::integrity::read_implant`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let image: Vec<u8> = data.to_vec();
    let _ = vmedia_iso::integrity::read_implant(&image);
});

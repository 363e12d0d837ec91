//! Fuzz target for the initrd archive walk (plain cpio, gzip, xz, zstd back to back; decoding
//! bounded), as `boot --direct` runs it before booting the lean machine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_boot::exercise::initrd(data);
});

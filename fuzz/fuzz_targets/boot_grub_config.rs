//! Fuzz target for the GRUB configuration parser, as `boot --direct` runs it on an ISO's
//! /boot/grub/grub.cfg.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_boot::exercise::grub_config(data);
});

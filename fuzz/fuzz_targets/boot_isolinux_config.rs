//! Fuzz target for the isolinux/syslinux configuration parser (with INCLUDE, then GRUB's as a
//! fallback), as `boot --direct` runs it on an ISO's /isolinux/isolinux.cfg.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_boot::exercise::isolinux_config(data);
});

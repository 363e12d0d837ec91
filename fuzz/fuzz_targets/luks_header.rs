//! Fuzz target for the LUKS1 header of encrypted qcow2 images: parse the bytes as the
//! encryption header region, describe it as qemu-img info does, emit it again and parse that
//! back to the same header, and (when the iteration counts are small enough to stay fast) try
//! to unlock it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmedia_disk::qcow2::luks::LuksHeader;

/// Iteration counts above this are parsed but not unlocked (PBKDF2 would dominate the run).
const FUZZ_MAX_ITERATIONS: u32 = 2000;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.qcow2");
    let len = data.len() as u64;
    if let Ok(h) = LuksHeader::parse(path, 0, data, len) {
        let _ = h.format_specific();
        let mut again = data.to_vec();
        let emitted = h.emit();
        again[..emitted.len()].copy_from_slice(&emitted);
        let reparsed = LuksHeader::parse(path, 0, &again, len).expect("an emitted header parses");
        assert_eq!(reparsed.slots, h.slots);
        assert_eq!(reparsed.key_bytes, h.key_bytes);
        let cheap = h.mk_iterations <= FUZZ_MAX_ITERATIONS
            && h.slots
                .iter()
                .all(|s| !s.active || s.iterations <= FUZZ_MAX_ITERATIONS);
        if cheap {
            let _ = h.unlock(data, b"fuzz");
        }
    }
});

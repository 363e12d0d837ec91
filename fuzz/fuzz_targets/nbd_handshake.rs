//! Fuzz target: a client's handshake bytes (client flags, options) run through the NBD
//! handshake state machine under every TLS policy; nothing may panic or loop.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_nbd::fuzzing::handshake(data);
});

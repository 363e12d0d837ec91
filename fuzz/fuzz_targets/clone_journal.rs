//! Fuzz target: a clone's allocation journal is read back from disk after crashes (torn tails)
//! and disk damage; replay must never panic or allocate from unchecked sizes, and whatever
//! replays must survive encode -> replay.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_server::clones::fuzzing::journal(data);
});

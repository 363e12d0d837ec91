//! Fuzz target: registry manifests and containerDisk layers are untrusted; the bytes up to the
//! first NUL are parsed as a manifest (image, index, Docker schema 2) and the rest, when
//! present, scanned as a tar layer for its one disk. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmedia_oci::fuzzing::manifest_and_layer(data);
});

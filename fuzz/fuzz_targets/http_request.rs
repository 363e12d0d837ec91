//! Fuzz target: HTTP request heads from strangers must never panic the parser, the range
//! resolution or the path normalisation, and a resolved range always lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmedia_netboot::files::normalize;
use vmedia_netboot::wire::http::{find_head_end, parse_range, query_param, RequestHead};

fuzz_target!(|data: &[u8]| {
    let Some(end) = find_head_end(data) else {
        return;
    };
    let Ok(head) = RequestHead::parse(&data[..end]) else {
        return;
    };
    if let Some(range) = &head.range {
        for size in [0u64, 1, 511, 1 << 40, u64::MAX] {
            if let Ok(Some((first, last))) = parse_range(range, size) {
                assert!(first <= last && last < size, "{range:?} of {size}");
            }
        }
    }
    for name in ["mac", "arch", "uuid"] {
        let _ = query_param(&head.query, name);
    }
    let _ = normalize(&head.path);
});

//! Fuzz target: `/metrics` text from a daemon `vmedia top` does not trust must never panic the
//! parser or the rate model, and rates computed from finite counters are never negative.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmedia_server::scrape;

fuzz_target!(|data: &[u8]| {
    let Ok(view) = scrape::exercise(data) else {
        return;
    };
    for export in &view.exports {
        for row in std::iter::once(&export.row).chain(&export.clients) {
            for rate in [row.iops, row.read_bytes_per_second, row.write_bytes_per_second] {
                assert!(rate.is_nan() || rate >= 0.0, "{row:?}");
            }
        }
    }
});

//! Fuzz target for ESXi seSparse extents: open the bytes as a bare seSparse file (what
//! `-f sesparse` does), then read, walk block status, describe and check it with bounded work.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmedia_disk::image::DiskImage;
use vmedia_disk::vmdk::VmdkImage;

/// Guest bytes read and block-status steps per input.
const READ_BYTES: u64 = 4 << 20;
const STATUS_STEPS: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let source: Arc<dyn vmedia_io::ReadAt> = Arc::new(data.to_vec());
    let Ok(img) = VmdkImage::open_bare_sesparse(std::path::Path::new("fuzz.vmdk"), source, None)
    else {
        return;
    };
    let _ = img.info();
    let _ = img.check(&vmedia_io::NoProgress);
    let size = img.virtual_size();
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < size.min(READ_BYTES) {
        let n = (size.min(READ_BYTES) - at).min(buf.len() as u64) as usize;
        if img.read_at(&mut buf[..n], at).is_err() {
            break;
        }
        at += n as u64;
    }
    let mut pos = 0u64;
    for _ in 0..STATUS_STEPS {
        if pos >= size {
            break;
        }
        match img.block_status(pos, size - pos) {
            Ok(s) => pos = pos.saturating_add(s.len.max(1)),
            Err(_) => break,
        }
    }
});

//! Robustness harness: opens untrusted bytes as every format (probe, open, read, block status,
//! info, check) with bounded work. The fuzz target `disk_open` and the corpus replay test in
//! crates/disk/tests/hostile.rs both run exactly this, so a crash found by one is a test in the
//! other. It never follows references (backing files, extents, parents).

use std::path::Path;
use std::sync::Arc;

use vmedia_io::{NoProgress, ReadAt};

use crate::error::Result;
use crate::factory;
use crate::image::{DiskImage, Format, OpenOptions, ReferencePolicy};

/// Guest bytes read per image: enough to touch tables and compressed clusters, bounded so a
/// huge virtual size cannot make one input slow.
pub const EXERCISE_READ_BYTES: u64 = 4 << 20;
/// block_status calls per image.
pub const EXERCISE_STATUS_STEPS: usize = 4096;

/// What happened for one format (errors are expected for hostile input; panics are bugs).
#[derive(Debug)]
pub struct Outcome {
    pub format: Format,
    pub opened: bool,
    pub error: Option<String>,
}

/// Probes the bytes, then opens them as each format in turn and exercises the image.
pub fn exercise(data: &[u8]) -> Vec<Outcome> {
    let tail_start = data.len().saturating_sub(factory::PROBE_TAIL_LEN);
    let head = &data[..data.len().min(factory::PROBE_HEAD_LEN)];
    let _ = factory::probe(head, &data[tail_start..]);
    let source: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    // A path that does not exist: nothing an image names can be opened.
    let path = Path::new("/nonexistent/vmedia-exercise/image");
    Format::ALL
        .iter()
        .map(|&format| {
            let opts = OpenOptions {
                references: ReferencePolicy::None,
                format: Some(format),
                ..OpenOptions::default()
            };
            match factory::open_source(path, source.clone(), &opts) {
                Ok(img) => Outcome {
                    format,
                    opened: true,
                    error: walk(img.as_ref()).err().map(|e| e.to_string()),
                },
                Err(e) => Outcome {
                    format,
                    opened: false,
                    error: Some(e.to_string()),
                },
            }
        })
        .collect()
}

fn walk(img: &dyn DiskImage) -> Result<()> {
    let _ = img.info();
    let _ = img.check(&NoProgress);
    let size = img.virtual_size();
    let limit = size.min(EXERCISE_READ_BYTES);
    let mut buf = vec![0u8; 64 << 10];
    let mut offset = 0u64;
    while offset < limit {
        let n = (limit - offset).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], offset)?;
        offset += n as u64;
    }
    // The far end of the disk too: tables there are reached through other L1/BAT entries.
    if size > limit {
        let n = (size - limit).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..n], size - n as u64)?;
    }
    let mut pos = 0u64;
    for _ in 0..EXERCISE_STATUS_STEPS {
        if pos >= size {
            break;
        }
        let s = img.block_status(pos, size - pos)?;
        pos = pos.saturating_add(s.len.max(1));
    }
    Ok(())
}

//! A disk image in the library (qcow2, VMDK, VHD, VHDX, raw) served as its virtual content.
//! Read-only; a disk that names a backing file or extent files is refused, since a library
//! version must be whole on its own (and a name inside it must never open a server file).

use std::io;
use std::path::Path;
use std::sync::Arc;

use vmedia_disk::image::{BlockKind, DiskImage, OpenOptions, ReferencePolicy};

use super::version::{MAX_EXTENTS, MAX_REQUEST_BYTES};
use super::ExportReader;
use crate::export::{BlockSizes, Export, ExportError, Extent};

pub struct DiskExport {
    name: String,
    image: Box<dyn DiskImage>,
}

impl DiskExport {
    /// Opens `source` (a version's bytes) as a disk image named `name`.
    pub fn open(name: String, source: Arc<dyn Export>) -> Result<DiskExport, ExportError> {
        let unavailable = |reason: String| ExportError::Unavailable {
            name: name.clone(),
            reason,
        };
        let options = OpenOptions {
            references: ReferencePolicy::None,
            skip_backing: true,
            ..OpenOptions::default()
        };
        let image = vmedia_disk::factory::open_source(
            Path::new(&name),
            Arc::new(ExportReader(source)),
            &options,
        )
        .map_err(|e| unavailable(e.to_string()))?;
        if let Some(backing) = image.backing_ref() {
            return Err(unavailable(format!(
                "the disk names a backing file ({}); a library disk must stand alone",
                backing.name
            )));
        }
        Ok(DiskExport { name, image })
    }
}

impl Export for DiskExport {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.image.virtual_size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: MAX_REQUEST_BYTES,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image
            .read_at(buf, offset)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn extents(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(length).min(self.image.virtual_size());
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end && out.len() < MAX_EXTENTS {
            let status = self
                .image
                .block_status(at, end - at)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let run = status.len.clamp(1, end - at);
            // No backing image is ever opened, so unallocated ranges read as zeroes.
            let (hole, zero) = match status.kind {
                BlockKind::Data => (false, false),
                BlockKind::Zero => (false, true),
                BlockKind::Unallocated => (true, true),
            };
            match out.last_mut() {
                Some(last) if last.hole == hole && last.zero == zero => last.length += run,
                _ => out.push(Extent {
                    length: run,
                    hole,
                    zero,
                }),
            }
            at += run;
        }
        if out.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: offset {offset:#x} is past the end", self.name),
            ));
        }
        Ok(out)
    }
}

//! How a library version that is a layered disk may reach the files it names: not at all.

use std::path::{Path, PathBuf};

use vmedia_disk::image::{OpenedReference, ReferenceResolver};
use vmedia_disk::DiskError;

/// The resolver for disks read out of a library (`library:NAME`): every reference is refused.
///
/// A version is one self-contained image (add refuses a disk naming a backing file unless
/// `--flatten` merged it), so a backing file named inside a stored image means a store that was
/// tampered with. The default resolver would look for that name beside `library:NAME`, i.e. in
/// the current folder of the host: a file the library never held.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReferences;

impl ReferenceResolver for NoReferences {
    fn open(&self, referrer: &Path, name: &str) -> vmedia_disk::Result<OpenedReference> {
        Err(DiskError::Reference {
            path: referrer.to_path_buf(),
            reference: PathBuf::from(name),
            reason: "not followed: a library version opens no file outside the library",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vmedia_disk::image::{CreateOptions, Format, OpenOptions};
    use vmedia_io::ReadAt;

    #[test]
    fn a_library_qcow2_naming_a_backing_file_cannot_reach_a_host_file() {
        // Tests run in the crate's folder, where Cargo.toml exists: the name a tampered store
        // would use to read a host file through `library:NAME`.
        assert!(Path::new("Cargo.toml").is_file());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlay.qcow2");
        let mut create = CreateOptions::new(Format::Qcow2, 1 << 20);
        create.backing = Some(("Cargo.toml".into(), Some(Format::Raw)));
        let writer = vmedia_disk::factory::create(&path, &create).unwrap();
        writer.finish().unwrap();
        let bytes: Arc<dyn ReadAt> = Arc::new(std::fs::read(&path).unwrap());
        let as_library = Path::new("library:evil");

        // The default resolver takes the name relative to `library:evil`'s "folder", the
        // current one, and opens the host file: what this resolver exists to prevent.
        let default = vmedia_disk::factory::open_source(
            as_library,
            Arc::clone(&bytes),
            &OpenOptions::default(),
        )
        .unwrap();
        let host = std::fs::read("Cargo.toml").unwrap();
        let mut start = vec![0u8; 16.min(host.len())];
        default.read_at(&mut start, 0).unwrap();
        assert_eq!(start, host[..start.len()]);

        let options = OpenOptions {
            resolver: Some(Arc::new(NoReferences)),
            ..Default::default()
        };
        let err = vmedia_disk::factory::open_source(as_library, bytes, &options)
            .err()
            .expect("the backing file was opened");
        assert!(
            matches!(err, DiskError::Reference { .. }) || err.to_string().contains("library"),
            "{err}"
        );
    }
}

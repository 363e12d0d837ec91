//! OVF packages (DMTF DSP0243), VMware's and VirtualBox's way of moving virtual machines:
//! an `.ovf` XML descriptor, the disks it names, a `.mf` manifest of digests and an optional
//! `.cert` signature, side by side in a folder or in one tar (`.ova`).
//!
//! Architecture invariant: this crate prints nothing and reads no environment; it reads
//! descriptors into its own model (`descriptor`) through a bounded element tree (`xml`), never
//! trusts a size or name from a package without a named limit, writes only through
//! `vmedia_io::AtomicFile`, and leaves every disk format to `vmedia-disk`.
//!
//! Modules: `xml` (quick-xml events -> element tree, limits) <- `descriptor` (model, parse,
//! emit) and `manifest`, `tar` (OVA container), `sign` (`.cert`) <- `package` (open, verify,
//! import) and `export`.

pub mod descriptor;
pub mod error;
pub mod export;
pub mod manifest;
pub mod package;
pub mod sign;
pub mod tar;
pub mod xml;

pub use descriptor::{Descriptor, Firmware, SystemSpec};
pub use error::{OvfError, Result};
pub use export::{export, ExportOptions, ExportReport};
pub use package::{import, ImportOptions, ImportReport, InfoReport, Kind, Package};

/// The fuzz targets' entry points: parse, and for what parses, emit-free sanity checks.
pub mod fuzzing {
    /// Descriptor parsing: never panics; `true` when the bytes are a usable descriptor.
    pub fn descriptor(data: &[u8]) -> bool {
        crate::descriptor::parse(data, "fuzz.ovf").is_ok()
    }

    /// Manifest parsing: never panics; what parses emits and parses back the same.
    pub fn manifest(data: &[u8]) -> bool {
        match crate::manifest::parse(data, "fuzz.mf") {
            Ok(entries) => {
                let again =
                    crate::manifest::parse(crate::manifest::emit(&entries).as_bytes(), "fuzz.mf")
                        .expect("emitted manifest parses");
                assert_eq!(again, entries);
                true
            }
            Err(_) => false,
        }
    }

    /// OVA container indexing: never panics; `true` when the bytes are a tar with members.
    pub fn ova_index(data: &[u8]) -> bool {
        crate::tar::index(&data.to_vec(), std::path::Path::new("fuzz.ova"))
            .is_ok_and(|m| !m.is_empty())
    }
}

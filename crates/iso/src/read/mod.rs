//! Reading ISO 9660 images: volume descriptors, directories, Joliet, Rock Ridge, El Torito, partitions.

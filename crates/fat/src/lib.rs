//! Reproducible FAT12/16/32 image writer, for EFI system partitions.

//! VMDK: descriptor, sparse extents (hosted sparse, streamOptimized), flat and ZERO extents, delta chains.

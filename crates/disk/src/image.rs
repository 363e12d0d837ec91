//! The capability traits every format implements, and the shared types (format, extents, info).

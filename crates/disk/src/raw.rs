//! raw images (sparse-aware).

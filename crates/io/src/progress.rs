//! Progress hooks: library crates report work done; only the CLI draws bars.

/// Receives progress from long operations. Implementations must be cheap and thread-safe.
pub trait Progress: Send + Sync {
    /// Announces the total amount of work, in bytes (or items where bytes make no sense).
    fn set_total(&self, total: u64);
    /// Adds `done` units of finished work.
    fn advance(&self, done: u64);
    /// Names the current phase ("writing", "hashing", ...).
    fn phase(&self, _name: &str) {}
}

/// A `Progress` that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _total: u64) {}
    fn advance(&self, _done: u64) {}
}

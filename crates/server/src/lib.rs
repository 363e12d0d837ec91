//! The vmedia daemon: serves library versions over HTTP(S) and NBD from one shared cache,
//! with per-VM copy-on-write clones, preload and Prometheus metrics.
//!
//! Architecture invariant: this is the only crate that maps errors to HTTP statuses and NBD
//! errors; routes and protocol drivers call library, disk and iso operations and hold no format
//! logic. The protocol logic of NBD is in `vmedia-nbd`; this crate owns the sockets.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod client;
pub mod clones;
pub mod config;
pub mod console;
pub mod daemon;
pub mod export;
pub mod exports;
pub mod health;
pub mod http;
pub mod metrics;
pub mod nbd;
pub mod netboot;
pub mod peer;
pub mod preload;
pub mod redfish;
pub mod replicate;
pub mod scrape;
pub mod tls;

pub use config::{ServerOptions, Settings};
pub use daemon::{shutdown_signal, ServeError, Server, ServerHandle};

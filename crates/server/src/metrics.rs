//! Metrics: the daemon's `IoObserver` (what the front ends report) and the Prometheus text
//! rendering of `/metrics`. Names and labels are the contract `vmedia top` reads
//! (docs/serve.md lists them).
//!
//! Per-client series live while the client's connection does, so thousands of short clients
//! do not grow `/metrics` forever.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::{Histogram, SharedCache, LATENCY_BUCKETS};
use crate::export::{IoObserver, Op, Protocol};
use crate::exports::LibraryExports;

/// The clone store's figures for `/metrics`: (clone name, bytes written) per clone.
pub type CloneGauges = Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

const PROTOCOLS: [Protocol; 3] = [Protocol::Http, Protocol::Https, Protocol::Nbd];

#[derive(Default)]
struct Series {
    in_flight: i64,
    /// Per op: (operations, bytes).
    ops: BTreeMap<&'static str, (u64, u64)>,
    /// Per op (read, write): latency.
    latency: BTreeMap<&'static str, Histogram>,
}

impl Series {
    fn finish(&mut self, op: Op, bytes: u64, latency: Duration) {
        self.in_flight = (self.in_flight - 1).max(0);
        let slot = self.ops.entry(op.as_str()).or_default();
        slot.0 += 1;
        slot.1 = slot.1.saturating_add(bytes);
        if matches!(op, Op::Read | Op::Write) {
            self.latency
                .entry(op.as_str())
                .or_default()
                .observe(latency);
        }
    }
}

#[derive(Default)]
struct State {
    open: HashMap<Protocol, i64>,
    total: HashMap<Protocol, u64>,
    exports: BTreeMap<String, Series>,
    clients: BTreeMap<(String, String), Series>,
    /// Client -> the exports it has series for (removed with the client).
    client_exports: HashMap<String, HashSet<String>>,
}

/// The daemon's metrics.
pub struct Metrics {
    state: Mutex<State>,
    cache: Arc<SharedCache>,
    exports: Mutex<Option<Arc<LibraryExports>>>,
    clones: Mutex<Option<CloneGauges>>,
    replication: Mutex<Option<Arc<crate::replicate::Replication>>>,
}

impl Metrics {
    pub fn new(cache: Arc<SharedCache>) -> Metrics {
        Metrics {
            state: Mutex::new(State::default()),
            cache,
            exports: Mutex::new(None),
            clones: Mutex::new(None),
            replication: Mutex::new(None),
        }
    }

    /// Per-export cache figures come from the library exports.
    pub fn set_exports(&self, exports: Arc<LibraryExports>) {
        *lock(&self.exports) = Some(exports);
    }

    /// Clone figures come from the clone store.
    pub fn set_clones(&self, clones: CloneGauges) {
        *lock(&self.clones) = Some(clones);
    }

    /// Replication figures come from the running replication.
    pub fn set_replication(&self, replication: Arc<crate::replicate::Replication>) {
        *lock(&self.replication) = Some(replication);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        {
            let state = lock(&self.state);
            family(
                &mut out,
                "vmedia_connections_open",
                "gauge",
                "Open client connections.",
            );
            for p in PROTOCOLS {
                let v = state.open.get(&p).copied().unwrap_or(0);
                sample(
                    &mut out,
                    "vmedia_connections_open",
                    &[("protocol", p.as_str())],
                    v,
                );
            }
            family(
                &mut out,
                "vmedia_connections_total",
                "counter",
                "Client connections accepted.",
            );
            for p in PROTOCOLS {
                let v = state.total.get(&p).copied().unwrap_or(0);
                sample(
                    &mut out,
                    "vmedia_connections_total",
                    &[("protocol", p.as_str())],
                    v,
                );
            }
            family(
                &mut out,
                "vmedia_export_requests_in_flight",
                "gauge",
                "Requests being served per export (queue depth).",
            );
            for (export, s) in &state.exports {
                sample(
                    &mut out,
                    "vmedia_export_requests_in_flight",
                    &[("export", export)],
                    s.in_flight,
                );
            }
            family(
                &mut out,
                "vmedia_export_operations_total",
                "counter",
                "Operations per export and op.",
            );
            for (export, s) in &state.exports {
                for (op, (count, _)) in &s.ops {
                    sample(
                        &mut out,
                        "vmedia_export_operations_total",
                        &[("export", export), ("op", op)],
                        count,
                    );
                }
            }
            family(
                &mut out,
                "vmedia_export_bytes_total",
                "counter",
                "Bytes moved per export and op.",
            );
            for (export, s) in &state.exports {
                for (op, (_, bytes)) in &s.ops {
                    sample(
                        &mut out,
                        "vmedia_export_bytes_total",
                        &[("export", export), ("op", op)],
                        bytes,
                    );
                }
            }
            family(
                &mut out,
                "vmedia_export_latency_seconds",
                "histogram",
                "Read and write latency per export.",
            );
            for (export, s) in &state.exports {
                for (op, h) in &s.latency {
                    histogram(
                        &mut out,
                        "vmedia_export_latency_seconds",
                        &[("export", export), ("op", op)],
                        h,
                    );
                }
            }
            family(
                &mut out,
                "vmedia_client_requests_in_flight",
                "gauge",
                "Requests being served per client (queue depth).",
            );
            for ((export, client), s) in &state.clients {
                sample(
                    &mut out,
                    "vmedia_client_requests_in_flight",
                    &[("export", export), ("client", client)],
                    s.in_flight,
                );
            }
            family(
                &mut out,
                "vmedia_client_operations_total",
                "counter",
                "Operations per client and op.",
            );
            for ((export, client), s) in &state.clients {
                for (op, (count, _)) in &s.ops {
                    sample(
                        &mut out,
                        "vmedia_client_operations_total",
                        &[("export", export), ("client", client), ("op", op)],
                        count,
                    );
                }
            }
            family(
                &mut out,
                "vmedia_client_bytes_total",
                "counter",
                "Bytes moved per client and op.",
            );
            for ((export, client), s) in &state.clients {
                for (op, (_, bytes)) in &s.ops {
                    sample(
                        &mut out,
                        "vmedia_client_bytes_total",
                        &[("export", export), ("client", client), ("op", op)],
                        bytes,
                    );
                }
            }
            family(
                &mut out,
                "vmedia_client_latency_seconds",
                "histogram",
                "Read and write latency per client.",
            );
            for ((export, client), s) in &state.clients {
                for (op, h) in &s.latency {
                    histogram(
                        &mut out,
                        "vmedia_client_latency_seconds",
                        &[("export", export), ("client", client), ("op", op)],
                        h,
                    );
                }
            }
        }
        let per_export = lock(&self.exports)
            .as_ref()
            .map(|e| e.cache_stats())
            .unwrap_or_default();
        family(
            &mut out,
            "vmedia_export_cache_hits_total",
            "counter",
            "Chunk reads of an export found in the cache.",
        );
        for (export, s) in &per_export {
            sample(
                &mut out,
                "vmedia_export_cache_hits_total",
                &[("export", export)],
                s.hits.load(Ordering::Relaxed),
            );
        }
        family(
            &mut out,
            "vmedia_export_cache_misses_total",
            "counter",
            "Chunk reads of an export not found in the cache.",
        );
        for (export, s) in &per_export {
            sample(
                &mut out,
                "vmedia_export_cache_misses_total",
                &[("export", export)],
                s.misses.load(Ordering::Relaxed),
            );
        }
        let stats = self.cache.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        family(
            &mut out,
            "vmedia_cache_hits_total",
            "counter",
            "Chunk reads found in the shared cache.",
        );
        sample(&mut out, "vmedia_cache_hits_total", &[], load(&stats.hits));
        family(
            &mut out,
            "vmedia_cache_misses_total",
            "counter",
            "Chunk reads not found in the shared cache.",
        );
        sample(
            &mut out,
            "vmedia_cache_misses_total",
            &[],
            load(&stats.misses),
        );
        family(
            &mut out,
            "vmedia_cache_evictions_total",
            "counter",
            "Chunks evicted from the shared cache.",
        );
        sample(
            &mut out,
            "vmedia_cache_evictions_total",
            &[],
            load(&stats.evictions),
        );
        family(
            &mut out,
            "vmedia_cache_bytes",
            "gauge",
            "Bytes held by the shared cache.",
        );
        sample(&mut out, "vmedia_cache_bytes", &[], self.cache.bytes());
        family(
            &mut out,
            "vmedia_cache_capacity_bytes",
            "gauge",
            "The shared cache's capacity.",
        );
        sample(
            &mut out,
            "vmedia_cache_capacity_bytes",
            &[],
            self.cache.capacity(),
        );
        family(
            &mut out,
            "vmedia_backend_reads_total",
            "counter",
            "Chunks fetched from the library store.",
        );
        sample(
            &mut out,
            "vmedia_backend_reads_total",
            &[],
            load(&stats.backend_reads),
        );
        family(
            &mut out,
            "vmedia_backend_read_bytes_total",
            "counter",
            "Bytes fetched from the library store (decoded).",
        );
        sample(
            &mut out,
            "vmedia_backend_read_bytes_total",
            &[],
            load(&stats.backend_read_bytes),
        );
        family(
            &mut out,
            "vmedia_backend_read_latency_seconds",
            "histogram",
            "Latency of chunk fetches from the library store.",
        );
        histogram(
            &mut out,
            "vmedia_backend_read_latency_seconds",
            &[],
            &stats.backend_latency,
        );
        let clones = lock(&self.clones).clone().map(|f| f()).unwrap_or_default();
        family(
            &mut out,
            "vmedia_clones",
            "gauge",
            "Clones in the clone store.",
        );
        sample(&mut out, "vmedia_clones", &[], clones.len());
        family(
            &mut out,
            "vmedia_clone_bytes_written",
            "gauge",
            "Bytes written to each clone's overlay.",
        );
        for (clone, bytes) in &clones {
            sample(
                &mut out,
                "vmedia_clone_bytes_written",
                &[("clone", clone)],
                bytes,
            );
        }
        if let Some(replication) = lock(&self.replication).clone() {
            replication_families(&mut out, &replication.report());
        }
        out
    }
}

/// Per replication peer: runs, failures, last success, lag, pending and sent figures.
fn replication_families(out: &mut String, report: &crate::replicate::ReplicationReport) {
    type Figure = fn(&crate::replicate::PeerState) -> Option<f64>;
    let figures: [(&str, &str, &str, Figure); 8] = [
        (
            "vmedia_replication_runs_total",
            "counter",
            "Sync runs started per peer.",
            |p| Some(p.runs as f64),
        ),
        (
            "vmedia_replication_failures_total",
            "counter",
            "Sync runs that failed or left something pending.",
            |p| Some(p.failures as f64),
        ),
        (
            "vmedia_replication_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last complete sync.",
            |p| p.last_success_unix.map(|t| t as f64),
        ),
        (
            "vmedia_replication_lag_seconds",
            "gauge",
            "Age of the oldest change not yet at the receiving side (the recovery point).",
            |p| p.lag_seconds.map(|l| l as f64),
        ),
        (
            "vmedia_replication_pending_chunks",
            "gauge",
            "Chunks left missing at the receiving side after the last run.",
            |p| Some(p.pending_chunks as f64),
        ),
        (
            "vmedia_replication_pending_bytes",
            "gauge",
            "Stored bytes left missing at the receiving side after the last run.",
            |p| Some(p.pending_bytes as f64),
        ),
        (
            "vmedia_replication_sent_bytes_total",
            "counter",
            "Stored bytes sent to the receiving side.",
            |p| Some(p.bytes_sent as f64),
        ),
        (
            "vmedia_replication_sent_chunks_total",
            "counter",
            "Chunks sent to the receiving side.",
            |p| Some(p.chunks_sent as f64),
        ),
    ];
    for (name, kind, help, figure) in figures {
        family(out, name, kind, help);
        for peer in &report.peers {
            if let Some(value) = figure(peer) {
                sample(
                    out,
                    name,
                    &[("peer", &peer.peer), ("direction", peer.direction.as_str())],
                    value,
                );
            }
        }
    }
}

impl IoObserver for Metrics {
    fn connection_opened(&self, protocol: Protocol, _client: &str) {
        let mut state = lock(&self.state);
        *state.open.entry(protocol).or_default() += 1;
        *state.total.entry(protocol).or_default() += 1;
    }

    fn connection_closed(&self, protocol: Protocol, client: &str) {
        let mut state = lock(&self.state);
        let open = state.open.entry(protocol).or_default();
        *open = (*open - 1).max(0);
        if let Some(exports) = state.client_exports.remove(client) {
            for export in exports {
                state.clients.remove(&(export, client.to_string()));
            }
        }
    }

    fn request_started(&self, export: &str, client: &str) {
        let mut state = lock(&self.state);
        state
            .exports
            .entry(export.to_string())
            .or_default()
            .in_flight += 1;
        state
            .clients
            .entry((export.to_string(), client.to_string()))
            .or_default()
            .in_flight += 1;
        state
            .client_exports
            .entry(client.to_string())
            .or_default()
            .insert(export.to_string());
    }

    fn request_finished(
        &self,
        export: &str,
        client: &str,
        op: Op,
        bytes: u64,
        latency: Duration,
        _ok: bool,
    ) {
        let mut state = lock(&self.state);
        state
            .exports
            .entry(export.to_string())
            .or_default()
            .finish(op, bytes, latency);
        // Only a client still connected has series (a late finish must not resurrect one).
        if let Some(series) = state
            .clients
            .get_mut(&(export.to_string(), client.to_string()))
        {
            series.finish(op, bytes, latency);
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    let all: Vec<(&str, &str)> = labels.iter().copied().chain(extra).collect();
    if all.is_empty() {
        return;
    }
    out.push('{');
    for (i, (key, value)) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn sample(out: &mut String, name: &str, label_set: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    labels(out, label_set, None);
    let _ = writeln!(out, " {value}");
}

fn histogram(out: &mut String, name: &str, label_set: &[(&str, &str)], h: &Histogram) {
    let (cumulative, sum) = h.snapshot();
    let bucket = format!("{name}_bucket");
    for (i, count) in cumulative.iter().enumerate() {
        let le = match LATENCY_BUCKETS.get(i) {
            Some(bound) => format!("{bound}"),
            None => "+Inf".to_string(),
        };
        out.push_str(&bucket);
        labels(out, label_set, Some(("le", &le)));
        let _ = writeln!(out, " {count}");
    }
    sample(out, &format!("{name}_sum"), label_set, sum);
    sample(
        out,
        &format!("{name}_count"),
        label_set,
        cumulative.last().copied().unwrap_or(0),
    );
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheOptions;

    fn metrics() -> Metrics {
        let cache = SharedCache::new(&CacheOptions {
            memory_bytes: 1 << 20,
            disk: None,
        })
        .unwrap();
        Metrics::new(Arc::new(cache))
    }

    #[test]
    fn client_series_go_away_with_the_connection() {
        let m = metrics();
        m.connection_opened(Protocol::Nbd, "10.0.0.1:5000");
        m.request_started("deb@1", "10.0.0.1:5000");
        m.request_finished(
            "deb@1",
            "10.0.0.1:5000",
            Op::Read,
            4096,
            Duration::from_micros(70),
            true,
        );
        let text = m.render();
        assert!(text.contains(
            "vmedia_client_bytes_total{export=\"deb@1\",client=\"10.0.0.1:5000\",op=\"read\"} 4096"
        ));
        assert!(text.contains(
            "vmedia_export_latency_seconds_bucket{export=\"deb@1\",op=\"read\",le=\"0.0001\"} 1"
        ));
        assert!(text.contains("vmedia_connections_open{protocol=\"nbd\"} 1"));
        m.connection_closed(Protocol::Nbd, "10.0.0.1:5000");
        let text = m.render();
        assert!(!text.contains("client=\"10.0.0.1:5000\""));
        assert!(text.contains("vmedia_export_bytes_total{export=\"deb@1\",op=\"read\"} 4096"));
        assert!(text.contains("vmedia_connections_open{protocol=\"nbd\"} 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "x", &[("clone", "a\"b\\c\nd")], 1);
        assert_eq!(out, "x{clone=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}

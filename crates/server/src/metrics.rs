//! Metrics: the daemon's `IoObserver` (what the front ends report) and the Prometheus text
//! rendering of `/metrics`. Names and labels are the contract `vmedia top` reads
//! (docs/serve.md lists them).
//!
//! Per-client series live while the client's connection does, so thousands of short clients
//! do not grow `/metrics` forever.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::cache::{Histogram, SharedCache, LATENCY_BUCKETS};
use crate::export::{IoObserver, Op, Protocol};
use crate::exports::LibraryExports;

/// The clone store's figures for `/metrics`: (clone name, bytes written) per clone.
pub type CloneGauges = Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

const PROTOCOLS: [Protocol; 3] = [Protocol::Http, Protocol::Https, Protocol::Nbd];

/// Every op, in the order `/metrics` lists them (by name).
const OPS: [Op; 6] = [
    Op::BlockStatus,
    Op::Flush,
    Op::Read,
    Op::Trim,
    Op::Write,
    Op::WriteZeroes,
];

/// Where an op's counters sit in a series.
fn op_slot(op: Op) -> usize {
    match op {
        Op::BlockStatus => 0,
        Op::Flush => 1,
        Op::Read => 2,
        Op::Trim => 3,
        Op::Write => 4,
        Op::WriteZeroes => 5,
    }
}

fn protocol_slot(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Http => 0,
        Protocol::Https => 1,
        Protocol::Nbd => 2,
    }
}

/// One export's or one client's counters. A request only reads the maps that hold series (a
/// shared lock) and counts with atomics, so serving allocates nothing and two cores do not
/// queue on one lock per request; only a new export or client takes the lock exclusively.
#[derive(Default)]
struct Series {
    /// Started minus finished; read as at least zero (a finish can race its start's count).
    in_flight: AtomicI64,
    /// Per op (indexed by `op_slot`): operations and bytes. An op never done is not listed.
    ops: [(AtomicU64, AtomicU64); OPS.len()],
    /// Read and write latency.
    read_latency: Histogram,
    write_latency: Histogram,
}

impl Series {
    fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn finish(&self, op: Op, bytes: u64, latency: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let (count, moved) = &self.ops[op_slot(op)];
        count.fetch_add(1, Ordering::Relaxed);
        // Saturating: a counter that wrapped would read as a reset to Prometheus.
        let _ = moved.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(b.saturating_add(bytes))
        });
        match op {
            Op::Read => self.read_latency.observe(latency),
            Op::Write => self.write_latency.observe(latency),
            _ => {}
        }
    }

    fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed).max(0)
    }

    /// The ops done at least once: (name, operations, bytes).
    fn ops(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        OPS.iter().filter_map(|&op| {
            let (count, bytes) = &self.ops[op_slot(op)];
            let count = count.load(Ordering::Relaxed);
            (count > 0).then(|| (op.as_str(), count, bytes.load(Ordering::Relaxed)))
        })
    }

    /// The latency histograms of ops done at least once.
    fn latencies(&self) -> impl Iterator<Item = (&'static str, &Histogram)> + '_ {
        [
            (Op::Read, &self.read_latency),
            (Op::Write, &self.write_latency),
        ]
        .into_iter()
        .filter(|(op, _)| self.ops[op_slot(*op)].0.load(Ordering::Relaxed) > 0)
        .map(|(op, h)| (op.as_str(), h))
    }
}

/// The series maps' hasher: looked up twice per request (start and finish) on every core,
/// so a fast non-cryptographic one; the keys are export names and peer addresses, which
/// collide only by the daemon's own choice.
type Fast = quick_cache::DefaultHashBuilder;

#[derive(Default)]
struct State {
    exports: HashMap<String, Arc<Series>, Fast>,
    /// Client -> export -> series (a client's series go with its connection).
    clients: HashMap<String, HashMap<String, Arc<Series>, Fast>, Fast>,
}

impl State {
    /// The export's series and the client's for that export, where they exist.
    fn lookup(&self, export: &str, client: &str) -> (Option<Arc<Series>>, Option<Arc<Series>>) {
        (
            self.exports.get(export).cloned(),
            self.clients
                .get(client)
                .and_then(|by_export| by_export.get(export))
                .cloned(),
        )
    }
}

/// The daemon's metrics.
pub struct Metrics {
    state: RwLock<State>,
    open: [AtomicI64; PROTOCOLS.len()],
    total: [AtomicU64; PROTOCOLS.len()],
    cache: Arc<SharedCache>,
    exports: Mutex<Option<Arc<LibraryExports>>>,
    clones: Mutex<Option<CloneGauges>>,
    replication: Mutex<Option<Arc<crate::replicate::Replication>>>,
}

impl Metrics {
    pub fn new(cache: Arc<SharedCache>) -> Metrics {
        Metrics {
            state: RwLock::new(State::default()),
            open: Default::default(),
            total: Default::default(),
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
            family(
                &mut out,
                "vmedia_connections_open",
                "gauge",
                "Open client connections.",
            );
            for p in PROTOCOLS {
                let v = self.open[protocol_slot(p)].load(Ordering::Relaxed).max(0);
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
                let v = self.total[protocol_slot(p)].load(Ordering::Relaxed);
                sample(
                    &mut out,
                    "vmedia_connections_total",
                    &[("protocol", p.as_str())],
                    v,
                );
            }
            // Sorted by name, as a scrape diff expects; taken under the shared lock, rendered
            // after it (the series are shared).
            let (exports, clients) = {
                let state = read(&self.state);
                let mut exports: Vec<(String, Arc<Series>)> = state
                    .exports
                    .iter()
                    .map(|(name, s)| (name.clone(), s.clone()))
                    .collect();
                let mut clients: Vec<(String, String, Arc<Series>)> = state
                    .clients
                    .iter()
                    .flat_map(|(client, by_export)| {
                        by_export
                            .iter()
                            .map(|(export, s)| (export.clone(), client.clone(), s.clone()))
                    })
                    .collect();
                exports.sort_by(|a, b| a.0.cmp(&b.0));
                clients.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
                (exports, clients)
            };
            family(
                &mut out,
                "vmedia_export_requests_in_flight",
                "gauge",
                "Requests being served per export (queue depth).",
            );
            for (export, s) in &exports {
                sample(
                    &mut out,
                    "vmedia_export_requests_in_flight",
                    &[("export", export)],
                    s.in_flight(),
                );
            }
            family(
                &mut out,
                "vmedia_export_operations_total",
                "counter",
                "Operations per export and op.",
            );
            for (export, s) in &exports {
                for (op, count, _) in s.ops() {
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
            for (export, s) in &exports {
                for (op, _, bytes) in s.ops() {
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
            for (export, s) in &exports {
                for (op, h) in s.latencies() {
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
            for (export, client, s) in &clients {
                sample(
                    &mut out,
                    "vmedia_client_requests_in_flight",
                    &[("export", export), ("client", client)],
                    s.in_flight(),
                );
            }
            family(
                &mut out,
                "vmedia_client_operations_total",
                "counter",
                "Operations per client and op.",
            );
            for (export, client, s) in &clients {
                for (op, count, _) in s.ops() {
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
            for (export, client, s) in &clients {
                for (op, _, bytes) in s.ops() {
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
            for (export, client, s) in &clients {
                for (op, h) in s.latencies() {
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
        self.open[protocol_slot(protocol)].fetch_add(1, Ordering::Relaxed);
        self.total[protocol_slot(protocol)].fetch_add(1, Ordering::Relaxed);
    }

    fn connection_closed(&self, protocol: Protocol, client: &str) {
        self.open[protocol_slot(protocol)].fetch_sub(1, Ordering::Relaxed);
        write(&self.state).clients.remove(client);
    }

    fn request_started(&self, export: &str, client: &str) {
        // Looked up in a statement of its own: the shared guard must be gone before the
        // exclusive lock below is taken.
        let found = read(&self.state).lookup(export, client);
        let (export_series, client_series) = match found {
            (Some(e), Some(c)) => (e, c),
            _ => {
                let mut state = write(&self.state);
                let e = state.exports.entry(export.to_string()).or_default().clone();
                let c = state
                    .clients
                    .entry(client.to_string())
                    .or_default()
                    .entry(export.to_string())
                    .or_default()
                    .clone();
                (e, c)
            }
        };
        export_series.start();
        client_series.start();
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
        let (export_series, client_series) = read(&self.state).lookup(export, client);
        let export_series = export_series.unwrap_or_else(|| {
            write(&self.state)
                .exports
                .entry(export.to_string())
                .or_default()
                .clone()
        });
        export_series.finish(op, bytes, latency);
        // Only a client still connected has series (a late finish must not resurrect one).
        if let Some(series) = client_series {
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

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
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
    fn requests_from_many_threads_are_all_counted_and_new_series_do_not_deadlock() {
        let m = Arc::new(metrics());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        // New exports and clients appear while others are served.
                        let export = format!("e{}", i % 7);
                        let client = format!("10.0.0.{t}:{}", i % 5);
                        m.request_started(&export, &client);
                        m.request_finished(
                            &export,
                            &client,
                            Op::Read,
                            512,
                            Duration::from_micros(50),
                            true,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render();
        let total: u64 = text
            .lines()
            .filter(|l| l.starts_with("vmedia_export_operations_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 4 * 2000);
        assert!(text.contains("vmedia_export_requests_in_flight{export=\"e0\"} 0"));
        assert!(!text.contains("op=\"write\""), "an op never done is listed");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "x", &[("clone", "a\"b\\c\nd")], 1);
        assert_eq!(out, "x{clone=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}

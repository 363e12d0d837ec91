//! What `vmedia top` reads: a strict, bounded parser of the Prometheus text exposition format
//! (version 0.0.4) and the model built from two scrapes of a daemon's `/metrics`: one row per
//! export and one per (export, client) with queue depth, IOPS, MB/s, mean and p99 latency and
//! the cache hit rate.
//!
//! The text comes from the network, so it is untrusted: every size is bounded by a named limit,
//! every line is checked whole (a sample line with trailing garbage is an error, not a partial
//! sample) and nothing panics. The metric names are those of the daemon's `metrics.rs`
//! (see docs/serve-top.md); unknown metrics are carried in the parse and ignored by the model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// A scrape larger than this is refused: 500 clients times a few dozen series is ~3 MiB.
pub const MAX_TEXT_BYTES: usize = 32 * 1024 * 1024;
/// Samples in one scrape (memory bound: each sample holds its labels).
pub const MAX_SAMPLES: usize = 500_000;
/// Labels on one sample; the daemon's widest series has four (`export`, `client`, `op`, `le`).
pub const MAX_LABELS: usize = 32;
/// Metric and label names; Prometheus itself sets no limit, real names stay far below this.
pub const MAX_NAME_BYTES: usize = 256;
/// A label value (an export name is at most 4096 bytes, NBD's own limit, plus room).
pub const MAX_LABEL_VALUE_BYTES: usize = 8 * 1024;
/// Distinct metric families (`# TYPE` lines).
pub const MAX_FAMILIES: usize = 10_000;

/// Why a scrape cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    #[error("the metrics text is {size} bytes, more than the limit of {MAX_TEXT_BYTES}")]
    TooLarge { size: usize },
    #[error("the metrics text is not UTF-8 (byte offset {offset:#x})")]
    NotUtf8 { offset: usize },
    #[error("line {line}, column {column}: {reason}")]
    Syntax {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("more than {limit} {what} in one scrape")]
    Limit { what: &'static str, limit: usize },
}

/// The type a `# TYPE` line gives a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl MetricType {
    fn parse(word: &str) -> Option<MetricType> {
        Some(match word {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "summary" => MetricType::Summary,
            "untyped" => MetricType::Untyped,
            _ => return None,
        })
    }
}

/// A sample's labels, sorted by name (names are unique).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|at| self.0[at].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
    /// Milliseconds since the epoch, when the line carries one.
    pub timestamp_ms: Option<i64>,
}

/// A whole parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub types: HashMap<String, MetricType>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The family a sample belongs to: histogram and summary series carry a suffix.
    pub fn family_of<'a>(&self, sample_name: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample_name.strip_suffix(suffix) {
                if matches!(
                    self.types.get(base),
                    Some(MetricType::Histogram | MetricType::Summary)
                ) {
                    return base;
                }
            }
        }
        sample_name
    }
}

/// Parses the text exposition format. Strict: unknown escapes, duplicate label names, bad
/// names, bad numbers, trailing garbage, a `# TYPE` repeated or given after its samples, and a
/// histogram bucket without a numeric `le` are errors.
pub fn parse(text: &[u8]) -> Result<Exposition, ScrapeError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ScrapeError::TooLarge { size: text.len() });
    }
    let text = std::str::from_utf8(text).map_err(|e| ScrapeError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut exposition = Exposition::default();
    let mut families_seen: HashSet<String> = HashSet::new();
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_number = index + 1;
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let syntax = |column: usize, reason: String| ScrapeError::Syntax {
            line: line_number,
            column: column + 1,
            reason,
        };
        if line.trim_matches([' ', '\t']).is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            parse_comment(comment, &mut exposition, &families_seen).map_err(|(at, reason)| {
                // The comment text starts after the '#'.
                syntax(at + 1, reason)
            })?;
            if exposition.types.len() > MAX_FAMILIES {
                return Err(ScrapeError::Limit {
                    what: "metric families",
                    limit: MAX_FAMILIES,
                });
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|(at, reason)| syntax(at, reason))?;
        let family = exposition.family_of(&sample.name).to_string();
        if exposition.types.get(&family) == Some(&MetricType::Histogram)
            && sample.name.ends_with("_bucket")
        {
            match sample.labels.get("le").map(parse_value) {
                Some(Some(_)) => {}
                Some(None) => {
                    return Err(syntax(0, format!("{}: le is not a number", sample.name)));
                }
                None => {
                    return Err(syntax(0, format!("{}: a bucket without le", sample.name)));
                }
            }
        }
        families_seen.insert(family);
        if exposition.samples.len() >= MAX_SAMPLES {
            return Err(ScrapeError::Limit {
                what: "samples",
                limit: MAX_SAMPLES,
            });
        }
        exposition.samples.push(sample);
    }
    Ok(exposition)
}

type LineError = (usize, String);

/// `# HELP name text`, `# TYPE name type`; any other comment is ignored.
fn parse_comment(
    comment: &str,
    exposition: &mut Exposition,
    families_seen: &HashSet<String>,
) -> Result<(), LineError> {
    let body = comment.trim_start_matches([' ', '\t']);
    let offset = comment.len() - body.len();
    let (keyword, rest) = split_word(body);
    match keyword {
        "HELP" => {
            let (name, _text) = split_word(rest);
            check_metric_name(name).map_err(|reason| (offset, reason))?;
        }
        "TYPE" => {
            let (name, rest) = split_word(rest);
            check_metric_name(name).map_err(|reason| (offset, reason))?;
            let (kind, trailing) = split_word(rest);
            if !trailing.is_empty() {
                return Err((offset, format!("TYPE {name}: trailing text {trailing:?}")));
            }
            let kind = MetricType::parse(kind)
                .ok_or_else(|| (offset, format!("TYPE {name}: unknown type {kind:?}")))?;
            if exposition.types.contains_key(name) {
                return Err((offset, format!("TYPE {name} given twice")));
            }
            if families_seen.contains(name) {
                return Err((offset, format!("TYPE {name} after its samples")));
            }
            exposition.types.insert(name.to_string(), kind);
        }
        _ => {}
    }
    Ok(())
}

/// The first blank-separated word and the rest (leading blanks removed).
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches([' ', '\t']);
    match text.find([' ', '\t']) {
        Some(at) => (&text[..at], text[at..].trim_start_matches([' ', '\t'])),
        None => (text, ""),
    }
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
        });
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a metric name"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphabetic() || b == b'_' || (i > 0 && b.is_ascii_digit()));
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a label name"))
    }
}

/// `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, LineError> {
    let bytes = line.as_bytes();
    let name_end = bytes
        .iter()
        .position(|&b| b == b'{' || b == b' ' || b == b'\t')
        .unwrap_or(bytes.len());
    let name = &line[..name_end];
    check_metric_name(name).map_err(|reason| (0, reason))?;
    let mut at = name_end;
    let mut labels = Vec::new();
    if bytes.get(at) == Some(&b'{') {
        at += 1;
        loop {
            at = skip_blanks(bytes, at);
            if bytes.get(at) == Some(&b'}') {
                at += 1;
                break;
            }
            let label_end = bytes[at..]
                .iter()
                .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))
                .map_or(bytes.len(), |n| at + n);
            let label = &line[at..label_end];
            check_label_name(label).map_err(|reason| (at, reason))?;
            at = skip_blanks(bytes, label_end);
            if bytes.get(at) != Some(&b'=') {
                return Err((at, format!("label {label}: '=' expected")));
            }
            at = skip_blanks(bytes, at + 1);
            if bytes.get(at) != Some(&b'"') {
                return Err((at, format!("label {label}: '\"' expected")));
            }
            let (value, next) = parse_label_value(line, at + 1)?;
            if labels.len() >= MAX_LABELS {
                return Err((at, format!("more than {MAX_LABELS} labels")));
            }
            labels.push((label.to_string(), value));
            at = skip_blanks(bytes, next);
            match bytes.get(at) {
                Some(b',') => at += 1,
                Some(b'}') => {
                    at += 1;
                    break;
                }
                _ => return Err((at, "',' or '}' expected after a label".into())),
            }
        }
    }
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = labels.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err((name_end, format!("label {} given twice", pair[0].0)));
    }
    let rest = &line[at..];
    if !rest.starts_with([' ', '\t']) {
        return Err((at, "a blank and the value expected".into()));
    }
    let (value_text, rest) = split_word(rest);
    let value =
        parse_value(value_text).ok_or_else(|| (at, format!("{value_text:?} is not a number")))?;
    let (timestamp_text, trailing) = split_word(rest);
    if !trailing.is_empty() {
        return Err((
            line.len() - trailing.len(),
            format!("trailing text {trailing:?}"),
        ));
    }
    let timestamp_ms = if timestamp_text.is_empty() {
        None
    } else {
        Some(timestamp_text.parse::<i64>().map_err(|_| {
            (
                at,
                format!("timestamp {timestamp_text:?} is not an integer"),
            )
        })?)
    };
    Ok(Sample {
        name: name.to_string(),
        labels: Labels(labels),
        value,
        timestamp_ms,
    })
}

fn skip_blanks(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    at
}

/// A quoted label value from just after its opening quote; returns the value and the index
/// after the closing quote. Escapes: `\\`, `\"`, `\n` only.
fn parse_label_value(line: &str, start: usize) -> Result<(String, usize), LineError> {
    let mut value = String::new();
    let mut chars = line[start..].char_indices();
    while let Some((offset, c)) = chars.next() {
        let at = start + offset;
        match c {
            '"' => return Ok((value, at + 1)),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => return Err((at, format!("unknown escape \\{other}"))),
                None => return Err((at, "a label value ends in a backslash".into())),
            },
            other => value.push(other),
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return Err((
                start,
                format!("a label value longer than {MAX_LABEL_VALUE_BYTES} bytes"),
            ));
        }
    }
    Err((start, "a label value without its closing quote".into()))
}

/// A Prometheus float: decimal or exponent notation, `NaN`, `+Inf`, `-Inf`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => return Some(f64::NAN),
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust also reads "inf" and "infinity": keep to the digits the format allows.
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !plain {
        return None;
    }
    text.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The model `vmedia top` shows.

/// A histogram's series at one scrape: cumulative counts by upper bound, sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)`, sorted by `le`; the last bound is normally `+Inf`.
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// Buckets arrive in any order (and a bound may repeat across series that differ only in
    /// labels the model ignores); `finish` sorts and folds them once, so a hostile scrape with
    /// many buckets costs O(n log n), not O(n^2).
    fn add_bucket(&mut self, le: f64, count: f64) {
        self.buckets.push((le, count));
    }

    fn finish(&mut self) {
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.buckets.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 += later.1;
            }
            same
        });
    }

    /// Cumulative count at bound `le`: that of the largest bound not above it.
    fn cumulative_at(&self, le: f64) -> f64 {
        let below = self.buckets.partition_point(|(bound, _)| *bound <= le);
        below.checked_sub(1).map_or(0.0, |at| self.buckets[at].1)
    }

    /// The sum of histograms (read and write latency) over the union of their bounds: each
    /// one's per-bucket increments are added up by bound, then accumulated again. O(n log n)
    /// in the total number of buckets, however many histograms there are.
    fn sum_of<'a>(histograms: impl Iterator<Item = &'a Histogram>) -> Histogram {
        let mut increments: Vec<(f64, f64)> = Vec::new();
        let (mut sum, mut count) = (0.0, 0.0);
        for histogram in histograms {
            let mut previous = 0.0;
            for (le, cumulative) in &histogram.buckets {
                increments.push((*le, cumulative - previous));
                previous = *cumulative;
            }
            sum += histogram.sum;
            count += histogram.count;
        }
        increments.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut buckets: Vec<(f64, f64)> = Vec::with_capacity(increments.len());
        let mut running = 0.0;
        for (le, increment) in increments {
            running += increment;
            match buckets.last_mut() {
                Some(last) if last.0 == le => last.1 = running,
                _ => buckets.push((le, running)),
            }
        }
        Histogram {
            buckets,
            sum,
            count,
        }
    }

    /// What happened between `before` and `self`. A histogram that went down was reset (the
    /// daemon restarted): then everything in `self` is new, as Prometheus's `increase` says.
    fn since(&self, before: &Histogram) -> Histogram {
        let reset = self.count < before.count
            || self
                .buckets
                .iter()
                .any(|(le, count)| *count < before.cumulative_at(*le));
        if reset {
            return self.clone();
        }
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, count)| (*le, count - before.cumulative_at(*le)))
                .collect(),
            sum: (self.sum - before.sum).max(0.0),
            count: self.count - before.count,
        }
    }

    /// Mean of the observations, in seconds.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket as Prometheus's
    /// `histogram_quantile` does; in the `+Inf` bucket, the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map_or(0.0, |(_, count)| *count);
        if total <= 0.0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total;
        let mut lower_bound = 0.0;
        let mut lower_count = 0.0;
        for (le, count) in &self.buckets {
            if *count >= rank && *count > lower_count {
                if le.is_infinite() {
                    return Some(lower_bound);
                }
                let fraction = (rank - lower_count) / (count - lower_count);
                return Some(lower_bound + (le - lower_bound) * fraction);
            }
            if le.is_finite() {
                lower_bound = *le;
            }
            lower_count = *count;
        }
        Some(lower_bound)
    }
}

/// The I/O series of one export or one (export, client) at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IoSeries {
    pub in_flight: f64,
    /// Operations by `op` label.
    pub operations: BTreeMap<String, f64>,
    /// Bytes by `op` label.
    pub bytes: BTreeMap<String, f64>,
    /// Latency by `op` label (read, write).
    pub latency: BTreeMap<String, Histogram>,
    /// Only exports have cache series.
    pub cache_hits: Option<f64>,
    pub cache_misses: Option<f64>,
}

/// Daemon-wide series at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerSeries {
    pub connections_open: BTreeMap<String, f64>,
    pub connections_total: BTreeMap<String, f64>,
    pub cache_hits: f64,
    pub cache_misses: f64,
    pub cache_evictions: f64,
    pub cache_bytes: f64,
    pub cache_capacity_bytes: f64,
    pub backend_reads: f64,
    pub backend_read_bytes: f64,
    pub backend_latency: Histogram,
    pub clones: f64,
}

/// One scrape, arranged per export and per client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub exports: BTreeMap<String, IoSeries>,
    /// Keyed by (export, client).
    pub clients: BTreeMap<(String, String), IoSeries>,
    pub server: ServerSeries,
}

impl Snapshot {
    /// Arranges a parsed scrape; series the model does not know are ignored, and a series
    /// missing its `export` or `client` label is skipped.
    pub fn from_exposition(exposition: &Exposition) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for sample in &exposition.samples {
            snapshot.take(sample);
        }
        snapshot.server.backend_latency.finish();
        for series in snapshot
            .exports
            .values_mut()
            .chain(snapshot.clients.values_mut())
        {
            for histogram in series.latency.values_mut() {
                histogram.finish();
            }
        }
        snapshot
    }

    /// Parses and arranges a scrape.
    pub fn parse(text: &[u8]) -> Result<Snapshot, ScrapeError> {
        Ok(Snapshot::from_exposition(&parse(text)?))
    }

    fn take(&mut self, sample: &Sample) {
        let labels = &sample.labels;
        let value = sample.value;
        let op = labels.get("op").unwrap_or("");
        let server = &mut self.server;
        let name = sample.name.as_str();
        match name {
            "vmedia_connections_open" => {
                *server
                    .connections_open
                    .entry(labels.get("protocol").unwrap_or("").to_string())
                    .or_default() += value;
                return;
            }
            "vmedia_connections_total" => {
                *server
                    .connections_total
                    .entry(labels.get("protocol").unwrap_or("").to_string())
                    .or_default() += value;
                return;
            }
            "vmedia_cache_hits_total" => server.cache_hits += value,
            "vmedia_cache_misses_total" => server.cache_misses += value,
            "vmedia_cache_evictions_total" => server.cache_evictions += value,
            "vmedia_cache_bytes" => server.cache_bytes += value,
            "vmedia_cache_capacity_bytes" => server.cache_capacity_bytes += value,
            "vmedia_backend_reads_total" => server.backend_reads += value,
            "vmedia_backend_read_bytes_total" => server.backend_read_bytes += value,
            "vmedia_clones" => server.clones += value,
            _ => {}
        }
        if let Some(part) = name.strip_prefix("vmedia_backend_read_latency_seconds") {
            histogram_part(&mut server.backend_latency, part, labels, value);
            return;
        }
        let Some(export) = labels.get("export") else {
            return;
        };
        if let Some(rest) = name.strip_prefix("vmedia_export_") {
            let series = self.exports.entry(export.to_string()).or_default();
            take_io(series, rest, op, labels, value);
        } else if let Some(rest) = name.strip_prefix("vmedia_client_") {
            let Some(client) = labels.get("client") else {
                return;
            };
            let series = self
                .clients
                .entry((export.to_string(), client.to_string()))
                .or_default();
            take_io(series, rest, op, labels, value);
        }
    }
}

/// `rest` is the metric name after `vmedia_export_` / `vmedia_client_`.
fn take_io(series: &mut IoSeries, rest: &str, op: &str, labels: &Labels, value: f64) {
    match rest {
        "requests_in_flight" => series.in_flight += value,
        "operations_total" => *series.operations.entry(op.to_string()).or_default() += value,
        "bytes_total" => *series.bytes.entry(op.to_string()).or_default() += value,
        "cache_hits_total" => *series.cache_hits.get_or_insert(0.0) += value,
        "cache_misses_total" => *series.cache_misses.get_or_insert(0.0) += value,
        _ => {
            if let Some(part) = rest.strip_prefix("latency_seconds") {
                let histogram = series.latency.entry(op.to_string()).or_default();
                histogram_part(histogram, part, labels, value);
            }
        }
    }
}

fn histogram_part(histogram: &mut Histogram, part: &str, labels: &Labels, value: f64) {
    match part {
        "_bucket" => {
            if let Some(le) = labels.get("le").and_then(parse_value) {
                if !le.is_nan() {
                    histogram.add_bucket(le, value);
                }
            }
        }
        "_sum" => histogram.sum += value,
        "_count" => histogram.count += value,
        _ => {}
    }
}

/// Increase of a counter between two scrapes; a counter that went down was reset.
fn increase(after: f64, before: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after.max(0.0)
    }
}

/// A sum that starts from +0.0: std's empty `f64` sum is -0.0, which prints as "-0.00".
fn total(amounts: impl Iterator<Item = f64>) -> f64 {
    amounts.fold(0.0, |sum, amount| sum + amount)
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

/// One line of `vmedia top`: an export, or one client of an export.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub export: String,
    /// `None` on an export's own row.
    pub client: Option<String>,
    /// Requests in flight at the second scrape.
    pub queue_depth: f64,
    /// Operations of every kind per second.
    pub iops: f64,
    pub read_bytes_per_second: f64,
    pub write_bytes_per_second: f64,
    /// Mean latency of the reads and writes in the interval, seconds.
    pub mean_latency: Option<f64>,
    /// 99th percentile of the same, seconds.
    pub p99_latency: Option<f64>,
    /// Share of cache lookups that hit (exports only).
    pub cache_hit_rate: Option<f64>,
}

impl Row {
    fn between(
        export: &str,
        client: Option<&str>,
        after: &IoSeries,
        before: Option<&IoSeries>,
        seconds: f64,
    ) -> Row {
        let empty = IoSeries::default();
        let before = before.unwrap_or(&empty);
        let counter_increase = |after: &BTreeMap<String, f64>,
                                before: &BTreeMap<String, f64>,
                                op: Option<&str>| {
            let increases = after
                .iter()
                .filter(|(name, _)| op.is_none_or(|op| name.as_str() == op))
                .map(|(name, value)| increase(*value, before.get(name).copied().unwrap_or(0.0)));
            total(increases)
        };
        let operations = counter_increase(&after.operations, &before.operations, None);
        let read_bytes = counter_increase(&after.bytes, &before.bytes, Some("read"));
        let write_bytes = counter_increase(&after.bytes, &before.bytes, Some("write"));
        let empty_histogram = Histogram::default();
        let increases: Vec<Histogram> = after
            .latency
            .iter()
            .map(|(op, histogram)| {
                histogram.since(before.latency.get(op).unwrap_or(&empty_histogram))
            })
            .collect();
        let latency = Histogram::sum_of(increases.iter());
        let cache_hit_rate = match (after.cache_hits, after.cache_misses) {
            (None, None) => None,
            (hits, misses) => {
                let hits = increase(hits.unwrap_or(0.0), before.cache_hits.unwrap_or(0.0));
                let misses = increase(misses.unwrap_or(0.0), before.cache_misses.unwrap_or(0.0));
                let lookups = hits + misses;
                (lookups > 0.0).then(|| hits / lookups)
            }
        };
        Row {
            export: export.to_string(),
            client: client.map(str::to_string),
            queue_depth: after.in_flight,
            iops: per_second(operations, seconds),
            read_bytes_per_second: per_second(read_bytes, seconds),
            write_bytes_per_second: per_second(write_bytes, seconds),
            mean_latency: latency.mean(),
            p99_latency: latency.quantile(0.99),
            cache_hit_rate,
        }
    }
}

/// An export's row and its clients' rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportView {
    pub row: Row,
    pub clients: Vec<Row>,
}

/// The daemon-wide figures of the header.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Totals {
    pub connections_open: BTreeMap<String, f64>,
    pub queue_depth: f64,
    pub iops: f64,
    pub read_bytes_per_second: f64,
    pub write_bytes_per_second: f64,
    pub cache_hit_rate: Option<f64>,
    pub cache_evictions_per_second: f64,
    pub cache_bytes: f64,
    pub cache_capacity_bytes: f64,
    pub backend_reads_per_second: f64,
    pub backend_read_bytes_per_second: f64,
    pub backend_mean_latency: Option<f64>,
    pub clones: f64,
}

/// What one refresh of `vmedia top` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub interval: Duration,
    pub totals: Totals,
    pub exports: Vec<ExportView>,
}

/// A column to sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    Name,
    QueueDepth,
    Iops,
    ReadRate,
    WriteRate,
    MeanLatency,
    P99Latency,
    CacheHitRate,
}

impl SortColumn {
    pub const ALL: [SortColumn; 8] = [
        SortColumn::Name,
        SortColumn::QueueDepth,
        SortColumn::Iops,
        SortColumn::ReadRate,
        SortColumn::WriteRate,
        SortColumn::MeanLatency,
        SortColumn::P99Latency,
        SortColumn::CacheHitRate,
    ];

    /// The column's name as `--sort` and the batch header spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SortColumn::Name => "name",
            SortColumn::QueueDepth => "qd",
            SortColumn::Iops => "iops",
            SortColumn::ReadRate => "read",
            SortColumn::WriteRate => "write",
            SortColumn::MeanLatency => "lat",
            SortColumn::P99Latency => "p99",
            SortColumn::CacheHitRate => "hit",
        }
    }

    pub fn parse(text: &str) -> Option<SortColumn> {
        let text = text.to_ascii_lowercase();
        SortColumn::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Orders two rows: names ascending, every figure descending (busiest first); a missing
    /// figure sorts last.
    pub fn compare(self, a: &Row, b: &Row) -> std::cmp::Ordering {
        let figure = |row: &Row| -> Option<f64> {
            match self {
                SortColumn::Name => None,
                SortColumn::QueueDepth => Some(row.queue_depth),
                SortColumn::Iops => Some(row.iops),
                SortColumn::ReadRate => Some(row.read_bytes_per_second),
                SortColumn::WriteRate => Some(row.write_bytes_per_second),
                SortColumn::MeanLatency => row.mean_latency,
                SortColumn::P99Latency => row.p99_latency,
                SortColumn::CacheHitRate => row.cache_hit_rate,
            }
        };
        let by_name = (&a.export, &a.client).cmp(&(&b.export, &b.client));
        if self == SortColumn::Name {
            return by_name;
        }
        match (figure(a), figure(b)) {
            (Some(x), Some(y)) => y.total_cmp(&x).then(by_name),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => by_name,
        }
    }
}

impl View {
    /// Rates from two scrapes `interval` apart. Exports and clients present only in `before`
    /// are gone (disconnected clients' series are removed) and left out; those present only in
    /// `after` started in the interval, from zero.
    pub fn between(before: &Snapshot, after: &Snapshot, interval: Duration) -> View {
        let seconds = interval.as_secs_f64();
        let mut exports: Vec<ExportView> = after
            .exports
            .iter()
            .map(|(name, series)| ExportView {
                row: Row::between(name, None, series, before.exports.get(name), seconds),
                clients: Vec::new(),
            })
            .collect();
        let mut position: HashMap<String, usize> = exports
            .iter()
            .enumerate()
            .map(|(at, view)| (view.row.export.clone(), at))
            .collect();
        for ((export, client), series) in &after.clients {
            let key = (export.clone(), client.clone());
            let row = Row::between(
                export,
                Some(client),
                series,
                before.clients.get(&key),
                seconds,
            );
            match position.get(export) {
                Some(&at) => exports[at].clients.push(row),
                // A client series without its export's series: show the client anyway.
                None => {
                    position.insert(export.clone(), exports.len());
                    exports.push(ExportView {
                        row: Row::between(export, None, &IoSeries::default(), None, seconds),
                        clients: vec![row],
                    });
                }
            }
        }
        let (server, previous) = (&after.server, &before.server);
        let hits = increase(server.cache_hits, previous.cache_hits);
        let misses = increase(server.cache_misses, previous.cache_misses);
        let backend = server.backend_latency.since(&previous.backend_latency);
        let totals = Totals {
            connections_open: server.connections_open.clone(),
            queue_depth: total(exports.iter().map(|e| e.row.queue_depth)),
            iops: total(exports.iter().map(|e| e.row.iops)),
            read_bytes_per_second: total(exports.iter().map(|e| e.row.read_bytes_per_second)),
            write_bytes_per_second: total(exports.iter().map(|e| e.row.write_bytes_per_second)),
            cache_hit_rate: (hits + misses > 0.0).then(|| hits / (hits + misses)),
            cache_evictions_per_second: per_second(
                increase(server.cache_evictions, previous.cache_evictions),
                seconds,
            ),
            cache_bytes: server.cache_bytes,
            cache_capacity_bytes: server.cache_capacity_bytes,
            backend_reads_per_second: per_second(
                increase(server.backend_reads, previous.backend_reads),
                seconds,
            ),
            backend_read_bytes_per_second: per_second(
                increase(server.backend_read_bytes, previous.backend_read_bytes),
                seconds,
            ),
            backend_mean_latency: backend.mean(),
            clones: server.clones,
        };
        View {
            interval,
            totals,
            exports,
        }
    }

    /// Sorts the exports, and each export's clients, by `column`.
    pub fn sort(&mut self, column: SortColumn) {
        self.exports.sort_by(|a, b| column.compare(&a.row, &b.row));
        for export in &mut self.exports {
            export.clients.sort_by(|a, b| column.compare(a, b));
        }
    }
}

/// What the `metrics_text` fuzz target and its corpus replay run: parse, arrange, compare the
/// scrape with itself and with nothing in both orders, sort by every column.
pub fn exercise(text: &[u8]) -> Result<View, ScrapeError> {
    let snapshot = Snapshot::parse(text)?;
    let empty = Snapshot::default();
    let interval = Duration::from_secs(2);
    let mut view = View::between(&empty, &snapshot, interval);
    let mut backwards = View::between(&snapshot, &empty, interval);
    let mut same = View::between(&snapshot, &snapshot, interval);
    for column in SortColumn::ALL {
        view.sort(column);
        backwards.sort(column);
        same.sort(column);
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        parse(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn samples_with_labels_escapes_and_timestamps() {
        let text = "# HELP vmedia_export_bytes_total Bytes moved.\n\
                    # TYPE vmedia_export_bytes_total counter\n\
                    vmedia_export_bytes_total{export=\"a\\\"b\\\\c\\nd\",op=\"read\"} 1.5e3 1700000000000\n\
                    vmedia_cache_bytes 42\n\
                    \n\
                    # a free comment\n\
                    up{ job = \"x\" , } NaN\r\n";
        let exposition = parse(text.as_bytes()).unwrap();
        assert_eq!(
            exposition.types["vmedia_export_bytes_total"],
            MetricType::Counter
        );
        let first = &exposition.samples[0];
        assert_eq!(first.labels.get("export"), Some("a\"b\\c\nd"));
        assert_eq!(first.labels.get("op"), Some("read"));
        assert_eq!(first.value, 1500.0);
        assert_eq!(first.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(exposition.samples[1].value, 42.0);
        assert!(exposition.samples[1].labels.is_empty());
        assert_eq!(exposition.samples[2].labels.get("job"), Some("x"));
        assert!(exposition.samples[2].value.is_nan());
    }

    #[test]
    fn unknown_escape_is_refused() {
        assert!(error_of("m{a=\"\\t\"} 1\n").contains("unknown escape"));
    }

    #[test]
    fn unterminated_label_value_is_refused() {
        assert!(error_of("m{a=\"x} 1\n").contains("closing quote"));
    }

    #[test]
    fn duplicate_label_is_refused() {
        assert!(error_of("m{a=\"1\",a=\"2\"} 1\n").contains("twice"));
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(error_of("m 1 2 3\n").contains("trailing"));
        assert!(error_of("m{a=\"1\"}x 1\n").contains("blank"));
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert!(error_of("m inf\n").contains("not a number"));
        assert!(error_of("m 0x10\n").contains("not a number"));
        assert!(error_of("m 1 12.5\n").contains("timestamp"));
        assert_eq!(
            parse(b"m -Inf\n").unwrap().samples[0].value,
            f64::NEG_INFINITY
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(error_of("9m 1\n").contains("metric name"));
        assert!(error_of("m{a:b=\"1\"} 1\n").contains("'='"));
        assert!(error_of("m{1a=\"1\"} 1\n").contains("label name"));
    }

    #[test]
    fn type_rules() {
        assert!(error_of("# TYPE m counter\n# TYPE m gauge\n").contains("twice"));
        assert!(error_of("m 1\n# TYPE m counter\n").contains("after its samples"));
        assert!(error_of("# TYPE m meter\n").contains("unknown type"));
        let errors = error_of("# TYPE h histogram\nh_bucket{x=\"1\"} 1\n");
        assert!(errors.contains("without le"), "{errors}");
        assert!(error_of("# TYPE h histogram\nh_bucket{le=\"big\"} 1\n").contains("le is not"));
    }

    #[test]
    fn errors_name_line_and_column() {
        let err = parse(b"ok 1\nm{a=\"\\q\"} 1\n").unwrap_err();
        match err {
            ScrapeError::Syntax { line, column, .. } => {
                assert_eq!(line, 2);
                assert_eq!(column, 6, "the backslash is the sixth character");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_are_enforced() {
        let huge = vec![b'#'; MAX_TEXT_BYTES + 1];
        assert!(matches!(parse(&huge), Err(ScrapeError::TooLarge { .. })));
        let many_labels: String = (0..=MAX_LABELS).map(|i| format!("l{i}=\"v\",")).collect();
        assert!(error_of(&format!("m{{{many_labels}}} 1\n")).contains("labels"));
        let long_value = "v".repeat(MAX_LABEL_VALUE_BYTES + 1);
        assert!(error_of(&format!("m{{a=\"{long_value}\"}} 1\n")).contains("longer"));
        assert!(matches!(
            parse(b"m \xff\n"),
            Err(ScrapeError::NotUtf8 { offset: 2 })
        ));
    }

    /// Two scrapes 2 s apart, written by hand with the daemon's metric names.
    const BEFORE: &str = r#"# HELP vmedia_connections_open Open connections.
# TYPE vmedia_connections_open gauge
vmedia_connections_open{protocol="nbd"} 2
# TYPE vmedia_export_requests_in_flight gauge
vmedia_export_requests_in_flight{export="debian@3"} 1
# TYPE vmedia_export_operations_total counter
vmedia_export_operations_total{export="debian@3",op="read"} 1000
vmedia_export_operations_total{export="debian@3",op="write"} 0
# TYPE vmedia_export_bytes_total counter
vmedia_export_bytes_total{export="debian@3",op="read"} 4096000
vmedia_export_bytes_total{export="debian@3",op="write"} 0
# TYPE vmedia_export_latency_seconds histogram
vmedia_export_latency_seconds_bucket{export="debian@3",op="read",le="5e-05"} 100
vmedia_export_latency_seconds_bucket{export="debian@3",op="read",le="0.001"} 900
vmedia_export_latency_seconds_bucket{export="debian@3",op="read",le="0.01"} 1000
vmedia_export_latency_seconds_bucket{export="debian@3",op="read",le="+Inf"} 1000
vmedia_export_latency_seconds_sum{export="debian@3",op="read"} 0.5
vmedia_export_latency_seconds_count{export="debian@3",op="read"} 1000
# TYPE vmedia_export_cache_hits_total counter
vmedia_export_cache_hits_total{export="debian@3"} 50
# TYPE vmedia_export_cache_misses_total counter
vmedia_export_cache_misses_total{export="debian@3"} 50
# TYPE vmedia_client_requests_in_flight gauge
vmedia_client_requests_in_flight{export="debian@3",client="10.0.0.5:40000"} 1
# TYPE vmedia_client_operations_total counter
vmedia_client_operations_total{export="debian@3",client="10.0.0.5:40000",op="read"} 1000
# TYPE vmedia_client_bytes_total counter
vmedia_client_bytes_total{export="debian@3",client="10.0.0.5:40000",op="read"} 4096000
vmedia_client_bytes_total{export="debian@3",client="10.0.0.7:41000",op="read"} 10
# TYPE vmedia_cache_hits_total counter
vmedia_cache_hits_total 50
# TYPE vmedia_cache_misses_total counter
vmedia_cache_misses_total 50
# TYPE vmedia_cache_evictions_total counter
vmedia_cache_evictions_total 0
# TYPE vmedia_backend_read_latency_seconds histogram
vmedia_backend_read_latency_seconds_bucket{le="0.01"} 10
vmedia_backend_read_latency_seconds_bucket{le="+Inf"} 10
vmedia_backend_read_latency_seconds_sum 0.05
vmedia_backend_read_latency_seconds_count 10
"#;

    const AFTER: &str = r#"# TYPE vmedia_connections_open gauge
vmedia_connections_open{protocol="nbd"} 3
vmedia_connections_open{protocol="http"} 1
# TYPE vmedia_export_requests_in_flight gauge
vmedia_export_requests_in_flight{export="debian@3"} 4
vmedia_export_requests_in_flight{export="clone/web1"} 0
# TYPE vmedia_export_operations_total counter
vmedia_export_operations_total{export="debian@3",op="read"} 3000
vmedia_export_operations_total{export="debian@3",op="write"} 200
vmedia_export_operations_total{export="debian@3",op="flush"} 2
vmedia_export_operations_total{export="clone/web1",op="write"} 10
# TYPE vmedia_export_bytes_total counter
vmedia_export_bytes_total{export="debian@3",op="read"} 12096000
vmedia_export_bytes_total{export="debian@3",op="write"} 2000000
vmedia_export_bytes_total{export="clone/web1",op="write"} 40960
# TYPE vmedia_export_latency_seconds histogram
vmedia_export_latency_seconds_bucket{export="debian@3",op="read",le="5e-05"} 100
vmedia_export_latency_seconds_bucket{export="debian@3",op="read",le="0.001"} 2700
vmedia_export_latency_seconds_bucket{export="debian@3",op="read",le="0.01"} 3000
vmedia_export_latency_seconds_bucket{export="debian@3",op="read",le="+Inf"} 3000
vmedia_export_latency_seconds_sum{export="debian@3",op="read"} 1.5
vmedia_export_latency_seconds_count{export="debian@3",op="read"} 3000
vmedia_export_latency_seconds_bucket{export="debian@3",op="write",le="5e-05"} 0
vmedia_export_latency_seconds_bucket{export="debian@3",op="write",le="0.001"} 0
vmedia_export_latency_seconds_bucket{export="debian@3",op="write",le="0.01"} 200
vmedia_export_latency_seconds_bucket{export="debian@3",op="write",le="+Inf"} 200
vmedia_export_latency_seconds_sum{export="debian@3",op="write"} 1.1
vmedia_export_latency_seconds_count{export="debian@3",op="write"} 200
# TYPE vmedia_export_cache_hits_total counter
vmedia_export_cache_hits_total{export="debian@3"} 1850
# TYPE vmedia_export_cache_misses_total counter
vmedia_export_cache_misses_total{export="debian@3"} 250
# TYPE vmedia_client_requests_in_flight gauge
vmedia_client_requests_in_flight{export="debian@3",client="10.0.0.5:40000"} 3
vmedia_client_requests_in_flight{export="debian@3",client="10.0.0.9:42000"} 1
# TYPE vmedia_client_operations_total counter
vmedia_client_operations_total{export="debian@3",client="10.0.0.5:40000",op="read"} 2000
vmedia_client_operations_total{export="debian@3",client="10.0.0.9:42000",op="read"} 1000
# TYPE vmedia_client_bytes_total counter
vmedia_client_bytes_total{export="debian@3",client="10.0.0.5:40000",op="read"} 8192000
vmedia_client_bytes_total{export="debian@3",client="10.0.0.9:42000",op="read"} 3904000
# TYPE vmedia_cache_hits_total counter
vmedia_cache_hits_total 1850
# TYPE vmedia_cache_misses_total counter
vmedia_cache_misses_total 250
# TYPE vmedia_cache_evictions_total counter
vmedia_cache_evictions_total 20
# TYPE vmedia_cache_bytes gauge
vmedia_cache_bytes 1.048576e+06
# TYPE vmedia_cache_capacity_bytes gauge
vmedia_cache_capacity_bytes 2.68435456e+08
# TYPE vmedia_backend_read_latency_seconds histogram
vmedia_backend_read_latency_seconds_bucket{le="0.01"} 30
vmedia_backend_read_latency_seconds_bucket{le="+Inf"} 30
vmedia_backend_read_latency_seconds_sum 0.25
vmedia_backend_read_latency_seconds_count 30
# TYPE vmedia_clones gauge
vmedia_clones 1
"#;

    fn view() -> View {
        let before = Snapshot::parse(BEFORE.as_bytes()).unwrap();
        let after = Snapshot::parse(AFTER.as_bytes()).unwrap();
        View::between(&before, &after, Duration::from_secs(2))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn export_rates_from_two_scrapes() {
        let view = view();
        let debian = view
            .exports
            .iter()
            .find(|e| e.row.export == "debian@3")
            .unwrap();
        let row = &debian.row;
        assert_eq!(row.queue_depth, 4.0);
        // 2000 reads + 200 writes + 2 flushes in 2 s.
        assert!(close(row.iops, 1101.0), "{row:?}");
        assert!(close(row.read_bytes_per_second, 4_000_000.0), "{row:?}");
        assert!(close(row.write_bytes_per_second, 1_000_000.0), "{row:?}");
        // (1.0 s of reads + 1.1 s of writes) / 2200 operations.
        assert!(close(row.mean_latency.unwrap(), 2.1 / 2200.0), "{row:?}");
        // 2200 observations: rank 2178 lies in (0.001, 0.01], which holds 1800..2200 after
        // merging: 2178 - 1800 = 378 of its 400.
        let expected_p99 = 0.001 + 0.009 * 378.0 / 400.0;
        assert!(close(row.p99_latency.unwrap(), expected_p99), "{row:?}");
        assert!(
            close(row.cache_hit_rate.unwrap(), 1800.0 / 2000.0),
            "{row:?}"
        );
    }

    #[test]
    fn client_rows_follow_connections() {
        let view = view();
        let debian = view
            .exports
            .iter()
            .find(|e| e.row.export == "debian@3")
            .unwrap();
        let clients: Vec<&str> = debian
            .clients
            .iter()
            .map(|c| c.client.as_deref().unwrap())
            .collect();
        // 10.0.0.7 disconnected (its series are gone); 10.0.0.9 is new and counts from zero.
        assert_eq!(clients, ["10.0.0.5:40000", "10.0.0.9:42000"]);
        let old = &debian.clients[0];
        assert_eq!(old.queue_depth, 3.0);
        assert!(close(old.iops, 500.0));
        assert!(close(old.read_bytes_per_second, 2_048_000.0));
        assert_eq!(old.cache_hit_rate, None);
        let new = &debian.clients[1];
        assert!(close(new.iops, 500.0));
        assert!(close(new.read_bytes_per_second, 1_952_000.0));
    }

    #[test]
    fn totals_sum_exports_and_read_the_daemon_series() {
        let totals = view().totals;
        assert_eq!(totals.connections_open["nbd"], 3.0);
        assert_eq!(totals.connections_open["http"], 1.0);
        assert_eq!(totals.queue_depth, 4.0);
        assert!(close(totals.iops, 1101.0 + 5.0));
        assert!(close(totals.write_bytes_per_second, 1_000_000.0 + 20_480.0));
        assert!(close(totals.cache_hit_rate.unwrap(), 0.9));
        assert!(close(totals.cache_evictions_per_second, 10.0));
        assert_eq!(totals.cache_bytes, 1_048_576.0);
        assert_eq!(totals.cache_capacity_bytes, 268_435_456.0);
        assert!(close(totals.backend_mean_latency.unwrap(), 0.2 / 20.0));
        assert_eq!(totals.clones, 1.0);
    }

    #[test]
    fn restarted_daemon_counts_from_zero_not_negative() {
        let before = Snapshot::parse(AFTER.as_bytes()).unwrap();
        let after = Snapshot::parse(BEFORE.as_bytes()).unwrap();
        let view = View::between(&before, &after, Duration::from_secs(1));
        let row = &view.exports[0].row;
        assert!(
            row.iops >= 0.0 && row.read_bytes_per_second >= 0.0,
            "{row:?}"
        );
        assert!(close(row.iops, 1000.0), "{row:?}");
    }

    #[test]
    fn rates_without_traffic_are_positive_zero() {
        let text = "vmedia_export_operations_total{export=\"a\",op=\"read\"} 5\n";
        let snapshot = Snapshot::parse(text.as_bytes()).unwrap();
        let view = View::between(&snapshot, &snapshot, Duration::from_secs(1));
        let row = &view.exports[0].row;
        assert!(row.write_bytes_per_second.is_sign_positive(), "{row:?}");
        let empty = View::between(
            &Snapshot::default(),
            &Snapshot::default(),
            Duration::from_secs(1),
        );
        assert!(empty.totals.iops.is_sign_positive());
    }

    #[test]
    fn idle_export_has_no_latency_figures() {
        let text = "vmedia_export_requests_in_flight{export=\"idle\"} 0\n";
        let snapshot = Snapshot::parse(text.as_bytes()).unwrap();
        let view = View::between(&snapshot, &snapshot, Duration::from_secs(2));
        let row = &view.exports[0].row;
        assert_eq!(
            (row.iops, row.mean_latency, row.p99_latency),
            (0.0, None, None)
        );
    }

    #[test]
    fn p99_in_the_infinite_bucket_is_the_highest_finite_bound() {
        let histogram = Histogram {
            buckets: vec![(0.1, 0.0), (1.0, 0.0), (f64::INFINITY, 10.0)],
            sum: 100.0,
            count: 10.0,
        };
        assert_eq!(histogram.quantile(0.99), Some(1.0));
    }

    #[test]
    fn buckets_in_any_order_fold_into_one_sorted_histogram() {
        let text = "# TYPE vmedia_export_latency_seconds histogram\n\
                    vmedia_export_latency_seconds_bucket{export=\"a\",op=\"read\",le=\"+Inf\"} 4\n\
                    vmedia_export_latency_seconds_bucket{export=\"a\",op=\"read\",le=\"0.1\"} 3\n\
                    vmedia_export_latency_seconds_bucket{export=\"a\",op=\"read\",le=\"0.01\"} 1\n";
        let snapshot = Snapshot::parse(text.as_bytes()).unwrap();
        let histogram = &snapshot.exports["a"].latency["read"];
        assert_eq!(
            histogram.buckets,
            vec![(0.01, 1.0), (0.1, 3.0), (f64::INFINITY, 4.0)]
        );
    }

    #[test]
    fn many_buckets_and_clients_stay_fast() {
        // A hostile scrape: 100 000 distinct bounds in one histogram, 20 000 exports' clients.
        let mut text = String::from("# TYPE vmedia_export_latency_seconds histogram\n");
        for i in 0..100_000 {
            text.push_str(&format!(
                "vmedia_export_latency_seconds_bucket{{export=\"a\",op=\"read\",le=\"{}\"}} {i}\n",
                i as f64 * 1e-6
            ));
        }
        for i in 0..20_000 {
            text.push_str(&format!(
                "vmedia_client_requests_in_flight{{export=\"e{i}\",client=\"c\"}} 1\n"
            ));
        }
        let started = std::time::Instant::now();
        let view = exercise(text.as_bytes()).unwrap();
        assert_eq!(view.exports.len(), 20_001);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn sorting_puts_the_busiest_first() {
        let mut view = view();
        view.sort(SortColumn::Iops);
        assert_eq!(view.exports[0].row.export, "debian@3");
        view.sort(SortColumn::Name);
        assert_eq!(view.exports[0].row.export, "clone/web1");
        view.sort(SortColumn::CacheHitRate);
        assert_eq!(view.exports[0].row.export, "debian@3", "None sorts last");
        assert_eq!(SortColumn::parse("P99"), Some(SortColumn::P99Latency));
        assert_eq!(SortColumn::parse("bogus"), None);
    }
}

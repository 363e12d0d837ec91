//! The one `tracing` subscriber of the `vmedia` binary: readable lines on stderr by default,
//! one JSON object per line with `--log-format json` (for servers and log collectors), and
//! `RUST_LOG` filters (tracing-subscriber's EnvFilter syntax, e.g. `RUST_LOG=vmedia_netboot=debug`).
//!
//! The readable line is `TIME [LEVEL] [KIND CLIENT] MESSAGE [key=value...]`: the level only when
//! it is not INFO, and an event's `kind` and `client` fields (netboot's per-machine log) lead
//! bare, so `netboot serve` prints the lines it always printed. Warnings and errors also name
//! the spans they happened in.

use std::fmt;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields, current span)
    Json,
}

/// The filter without RUST_LOG: warnings and errors only, so commands print what they always
/// printed. Commands that log their work by default (the netboot server) extend it.
pub const DEFAULT_FILTER: &str = "warn";

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the subscriber; `default_filter` applies when RUST_LOG is unset or empty.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!(
                "vmedia: RUST_LOG={spec:?} is not a valid filter ({e}); using {default_filter:?}"
            );
            EnvFilter::new(default_filter)
        }),
        _ => EnvFilter::new(default_filter),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.event_format(Readable).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if let Err(e) = installed {
        eprintln!("vmedia: logging is not set up: {e}");
    }
    let _ = FORMAT.set(format);
}

/// A line for the operator (a server's "serving on ..." banner): printed as is in text mode,
/// an INFO event (target `vmedia::announce`) in JSON mode so the stream stays JSON.
pub fn announce(line: &str) {
    match FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Text => eprintln!("{line}"),
        LogFormat::Json => tracing::info!(target: "vmedia::announce", "{line}"),
    }
}

/// The readable line format (see the module doc).
struct Readable;

impl<S, N> FormatEvent<S, N> for Readable
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = LineFields::default();
        event.record(&mut fields);
        write!(writer, "{:.3}", jiff::Timestamp::now())?;
        let level = *event.metadata().level();
        if level != Level::INFO {
            write!(writer, " {level}")?;
        }
        for lead in [&fields.kind, &fields.client].into_iter().flatten() {
            write!(writer, " {lead}")?;
        }
        if let Some(message) = &fields.message {
            write!(writer, " {message}")?;
        }
        for (name, value) in &fields.others {
            write!(writer, " {name}={value}")?;
        }
        if level != Level::INFO {
            if let Some(scope) = ctx.event_scope() {
                for span in scope.from_root() {
                    let extensions = span.extensions();
                    match extensions.get::<FormattedFields<N>>() {
                        Some(f) if !f.is_empty() => write!(writer, " in {}{{{f}}}", span.name())?,
                        _ => write!(writer, " in {}", span.name())?,
                    }
                }
            }
        }
        writeln!(writer)
    }
}

/// An event's fields, sorted into the parts of a readable line.
#[derive(Default)]
struct LineFields {
    kind: Option<String>,
    client: Option<String>,
    message: Option<String>,
    others: Vec<(&'static str, String)>,
}

impl LineFields {
    fn put(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = Some(value),
            "kind" => self.kind = Some(value),
            "client" => self.client = Some(value),
            name => self.others.push((name, value)),
        }
    }
}

impl Visit for LineFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

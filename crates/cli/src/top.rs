//! `vmedia top`: a live view of a `vmedia serve` daemon in the manner of esxtop, from its
//! `/metrics`: one row per export and per client with queue depth, IOPS, MB/s, mean and p99
//! latency and cache hit rate. Full-screen (ratatui) on a terminal, plain lines with `--batch`.
//! The parsing and the rate model live in `vmedia_server::scrape`; this file fetches, draws
//! and prints.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row as TableRow, Table, TableState};
use vmedia_server::scrape::{self, Row, Snapshot, SortColumn, View};

/// Refreshing faster than this measures the scrape more than the traffic.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longer than an hour between refreshes is a typo.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// A scrape that takes longer than this is reported as an error; the next one retries.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the full-screen view looks for key presses while it waits.
const KEY_POLL: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia top --server http://10.0.0.1:8080
  vmedia top --sort p99 --interval 1s
  vmedia top --batch --iterations 5 --interval 2s > io.log

Columns: QD requests in flight (queue depth), IOPS operations per second, READ and WRITE MB/s
(10^6 bytes), LAT mean and P99 99th-percentile latency of reads and writes in ms (from the
daemon's latency histograms), HIT% share of cache lookups served from the cache (exports only).

Keys (full screen): n d i r w l p h sort by name, QD, IOPS, READ, WRITE, LAT, P99, HIT%;
up/down select; enter expands the selected export's clients; c expands or folds all; q quits.

--batch prints, every interval, a header line starting with '#' (time and daemon totals) and
one line per export (kind 'export') and per client (kind 'client'); the column names are
printed once first. A missing figure is '-'.")]
pub struct Args {
    /// The daemon's HTTP address (its /metrics is read) [default: $VMEDIA_SERVER, else
    /// http://127.0.0.1:8080]
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Time between refreshes (e.g. 2s, 500ms, 1m)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_interval)]
    interval: Duration,
    /// Sort column: name, qd, iops, read, write, lat, p99, hit
    #[arg(long, value_name = "COLUMN", default_value = "iops", value_parser = parse_sort)]
    sort: SortColumn,
    /// Plain lines on stdout for scripts instead of the full-screen view
    #[arg(long)]
    batch: bool,
    /// With --batch: stop after N intervals (default: run until interrupted)
    #[arg(long, value_name = "N", requires = "batch")]
    iterations: Option<u64>,
    /// With an https:// --server: do not verify its certificate (a self-signed daemon)
    #[arg(long)]
    insecure: bool,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 2s, 500ms, 1m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    if !seconds.is_finite() || seconds < MIN_INTERVAL.as_secs_f64() {
        return Err(format!("{text:?} is shorter than {MIN_INTERVAL:?}"));
    }
    if seconds > MAX_INTERVAL.as_secs_f64() {
        return Err(format!("{text:?} is longer than an hour"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_sort(text: &str) -> Result<SortColumn, String> {
    SortColumn::parse(text).ok_or_else(|| {
        let names: Vec<&str> = SortColumn::ALL.iter().map(|c| c.as_str()).collect();
        format!("unknown column {text:?}: use {}", names.join(", "))
    })
}

/// `http(s)://HOST[:PORT][/PATH]`, or `HOST:PORT`; the metrics path is added when missing.
fn metrics_url(server: &str) -> anyhow::Result<String> {
    let with_scheme = if server.starts_with("http://") || server.starts_with("https://") {
        server.to_string()
    } else if server.contains("://") {
        bail!("--server {server:?}: only http:// and https:// are supported");
    } else {
        format!("http://{server}")
    };
    let after_scheme = with_scheme.split_once("://").map_or("", |(_, rest)| rest);
    if after_scheme.is_empty() || after_scheme.starts_with('/') {
        bail!("--server {server:?} names no host");
    }
    let trimmed = with_scheme.trim_end_matches('/');
    Ok(if trimmed.ends_with("/metrics") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/metrics")
    })
}

struct Scraper {
    agent: ureq::Agent,
    url: String,
}

impl Scraper {
    fn new(url: String, insecure: bool) -> Scraper {
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(insecure)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(SCRAPE_TIMEOUT))
            .http_status_as_error(false)
            // The daemon is ours to reach directly; a proxy from the environment must not apply.
            .proxy(None)
            .build()
            .into();
        Scraper { agent, url }
    }

    /// One scrape and the moment it was answered.
    fn scrape(&self) -> anyhow::Result<(Snapshot, Instant)> {
        let mut response = self
            .agent
            .get(&self.url)
            .call()
            .with_context(|| format!("cannot reach {}", self.url))?;
        let status = response.status();
        if status != 200 {
            bail!(
                "{} answered {status}: is it a vmedia serve daemon?",
                self.url
            );
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(scrape::MAX_TEXT_BYTES as u64)
            .read_to_vec()
            .with_context(|| format!("reading {}", self.url))?;
        let at = Instant::now();
        let snapshot =
            Snapshot::parse(&body).with_context(|| format!("{} is not metrics text", self.url))?;
        Ok((snapshot, at))
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = metrics_url(&crate::env::server_url(args.server.clone()))?;
    if args.insecure && !url.starts_with("https://") {
        bail!("--insecure applies to an https:// --server only");
    }
    let scraper = Scraper::new(url, args.insecure);
    if args.batch {
        batch(&scraper, &args)
    } else {
        screen(&scraper, &args)
    }
}

// ---------------------------------------------------------------------------------------------
// Figures as both views print them.

fn mb(bytes_per_second: f64) -> String {
    format!("{:.2}", bytes_per_second / 1e6)
}

fn ms(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.3}", s * 1000.0))
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| format!("{:.1}", r * 100.0))
}

fn mib(bytes: f64) -> String {
    format!("{:.1}MiB", bytes / (1024.0 * 1024.0))
}

/// The figures of a row, in column order after the names.
fn figures(row: &Row) -> [String; 7] {
    [
        format!("{:.0}", row.queue_depth),
        format!("{:.1}", row.iops),
        mb(row.read_bytes_per_second),
        mb(row.write_bytes_per_second),
        ms(row.mean_latency),
        ms(row.p99_latency),
        percent(row.cache_hit_rate),
    ]
}

const FIGURE_TITLES: [&str; 7] = [
    "QD",
    "IOPS",
    "READ_MB/s",
    "WRITE_MB/s",
    "LAT_ms",
    "P99_ms",
    "HIT%",
];

fn connections(view: &View) -> String {
    let open = &view.totals.connections_open;
    if open.is_empty() {
        return "-".into();
    }
    open.iter()
        .map(|(protocol, count)| format!("{protocol}:{count:.0}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The daemon-wide figures, `key=value` words (the batch header, the screen's summary).
fn totals_words(view: &View) -> Vec<String> {
    let t = &view.totals;
    vec![
        format!("interval={:.2}s", view.interval.as_secs_f64()),
        format!("connections={}", connections(view)),
        format!("qd={:.0}", t.queue_depth),
        format!("iops={:.1}", t.iops),
        format!("read={}MB/s", mb(t.read_bytes_per_second)),
        format!("write={}MB/s", mb(t.write_bytes_per_second)),
        format!("cache_hit={}%", percent(t.cache_hit_rate)),
        format!(
            "cache={}/{}",
            mib(t.cache_bytes),
            mib(t.cache_capacity_bytes)
        ),
        format!("evictions={:.1}/s", t.cache_evictions_per_second),
        format!(
            "backend={}MB/s,{:.1}reads/s,{}ms",
            mb(t.backend_read_bytes_per_second),
            t.backend_reads_per_second,
            ms(t.backend_mean_latency)
        ),
        format!("clones={:.0}", t.clones),
    ]
}

fn now_text() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// --batch

fn batch(scraper: &Scraper, args: &Args) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let (mut before, mut before_at) = scraper.scrape()?;
    writeln!(
        out,
        "{:<6} {:<28} {:<22} {:>4} {:>9} {:>9} {:>10} {:>8} {:>8} {:>5}",
        "KIND",
        "EXPORT",
        "CLIENT",
        FIGURE_TITLES[0],
        FIGURE_TITLES[1],
        FIGURE_TITLES[2],
        FIGURE_TITLES[3],
        FIGURE_TITLES[4],
        FIGURE_TITLES[5],
        FIGURE_TITLES[6]
    )?;
    out.flush()?;
    let mut done = 0u64;
    while args.iterations.is_none_or(|limit| done < limit) {
        std::thread::sleep(args.interval.saturating_sub(before_at.elapsed()));
        let (after, after_at) = scraper.scrape()?;
        // Rates over the time that really passed between the two answers.
        let elapsed = after_at.duration_since(before_at);
        let mut view = View::between(&before, &after, elapsed);
        view.sort(args.sort);
        writeln!(out, "# {} {}", now_text(), totals_words(&view).join(" "))?;
        for export in &view.exports {
            for row in std::iter::once(&export.row).chain(&export.clients) {
                let [qd, iops, read, write, lat, p99, hit] = figures(row);
                let (kind, client) = match &row.client {
                    Some(client) => ("client", client.as_str()),
                    None => ("export", "-"),
                };
                writeln!(
                    out,
                    "{kind:<6} {:<28} {client:<22} {qd:>4} {iops:>9} {read:>9} {write:>10} {lat:>8} {p99:>8} {hit:>5}",
                    row.export
                )?;
            }
        }
        out.flush()?;
        (before, before_at) = (after, after_at);
        done += 1;
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Full screen

/// Puts the terminal back (raw mode off, main screen, cursor shown) when dropped, on every
/// return path; the panic hook installed with it does the same before the panic message.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> anyhow::Result<TerminalGuard> {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            default_hook(info);
        }));
        crossterm::terminal::enable_raw_mode().context("the terminal refuses raw mode")?;
        let guard = TerminalGuard;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// What the screen shows between refreshes.
struct ScreenState {
    url: String,
    interval: Duration,
    sort: SortColumn,
    view: Option<View>,
    error: Option<String>,
    /// Exports whose clients are shown.
    expanded: BTreeSet<String>,
    expand_all: bool,
    table: TableState,
    updated: String,
}

impl ScreenState {
    /// The visible rows: each export, then its clients when expanded.
    fn rows(&self) -> Vec<&Row> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        for export in &view.exports {
            rows.push(&export.row);
            if self.expand_all || self.expanded.contains(&export.row.export) {
                rows.extend(&export.clients);
            }
        }
        rows
    }

    fn toggle_selected(&mut self) {
        let selected = self
            .table
            .selected()
            .and_then(|at| self.rows().get(at).map(|row| row.export.clone()));
        if let Some(export) = selected {
            if !self.expanded.remove(&export) {
                self.expanded.insert(export);
            }
        }
    }

    fn resort(&mut self, column: SortColumn) {
        self.sort = column;
        if let Some(view) = &mut self.view {
            view.sort(column);
        }
    }
}

fn screen(scraper: &Scraper, args: &Args) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        bail!("the full-screen view needs a terminal; use --batch for scripts");
    }
    let mut state = ScreenState {
        url: scraper.url.clone(),
        interval: args.interval,
        sort: args.sort,
        view: None,
        error: None,
        expanded: BTreeSet::new(),
        expand_all: false,
        table: TableState::default(),
        updated: String::new(),
    };
    let _guard = TerminalGuard::enter()?;
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    let mut previous: Option<(Snapshot, Instant)> = None;
    let mut next_scrape = Instant::now();
    loop {
        if Instant::now() >= next_scrape {
            next_scrape = Instant::now() + state.interval;
            match scraper.scrape() {
                Ok((snapshot, at)) => {
                    if let Some((before, before_at)) = &previous {
                        let mut view =
                            View::between(before, &snapshot, at.duration_since(*before_at));
                        view.sort(state.sort);
                        state.view = Some(view);
                        state.updated = now_text();
                    }
                    state.error = None;
                    previous = Some((snapshot, at));
                }
                // The daemon may restart; keep showing the last figures and retry.
                Err(err) => state.error = Some(format!("{err:#}")),
            }
        }
        terminal.draw(|frame| draw(frame, &mut state))?;
        let wait = next_scrape
            .saturating_duration_since(Instant::now())
            .min(KEY_POLL);
        if !event::poll(wait)? {
            continue;
        }
        let Event::Key(key) = event::read()? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        let visible = state.rows().len();
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => break,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => break,
            KeyCode::Char('c') => state.expand_all = !state.expand_all,
            KeyCode::Char('n') => state.resort(SortColumn::Name),
            KeyCode::Char('d') => state.resort(SortColumn::QueueDepth),
            KeyCode::Char('i') => state.resort(SortColumn::Iops),
            KeyCode::Char('r') => state.resort(SortColumn::ReadRate),
            KeyCode::Char('w') => state.resort(SortColumn::WriteRate),
            KeyCode::Char('l') => state.resort(SortColumn::MeanLatency),
            KeyCode::Char('p') => state.resort(SortColumn::P99Latency),
            KeyCode::Char('h') => state.resort(SortColumn::CacheHitRate),
            KeyCode::Down if visible > 0 => {
                let at = state
                    .table
                    .selected()
                    .map_or(0, |at| (at + 1).min(visible - 1));
                state.table.select(Some(at));
            }
            KeyCode::Up if visible > 0 => {
                let at = state.table.selected().map_or(0, |at| at.saturating_sub(1));
                state.table.select(Some(at));
            }
            KeyCode::Enter | KeyCode::Char(' ') => state.toggle_selected(),
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn draw(frame: &mut ratatui::Frame, state: &mut ScreenState) {
    let [header_area, table_area, status_area] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let title = format!(
        "vmedia top  {}  every {:.1} s  {}  sort: {}",
        state.url,
        state.interval.as_secs_f64(),
        state.updated,
        state.sort.as_str()
    );
    let summary = match &state.view {
        Some(view) => {
            let words = totals_words(view);
            vec![
                Line::from(words[1..6].join("  ")),
                Line::from(words[6..].join("  ")),
            ]
        }
        None => vec![Line::from(format!(
            "collecting: the first rates appear after one interval ({:.1} s)",
            state.interval.as_secs_f64()
        ))],
    };
    let mut header = vec![Line::from(title).style(Style::new().add_modifier(Modifier::BOLD))];
    header.extend(summary);
    frame.render_widget(Paragraph::new(header), header_area);

    let sort_titles = ["qd", "iops", "read", "write", "lat", "p99", "hit"];
    let mut titles = vec![Cell::from("EXPORT / CLIENT")];
    for (title, key) in FIGURE_TITLES.iter().zip(sort_titles) {
        let style = if state.sort.as_str() == key {
            Style::new().add_modifier(Modifier::UNDERLINED)
        } else {
            Style::new()
        };
        titles.push(Cell::from(*title).style(style));
    }
    let rows: Vec<TableRow> = state
        .rows()
        .into_iter()
        .map(|row| {
            let name = match &row.client {
                Some(client) => format!("  └ {client}"),
                None => row.export.clone(),
            };
            let mut cells = vec![Cell::from(name)];
            cells.extend(
                figures(row)
                    .into_iter()
                    .map(|text| Cell::from(Line::from(text).right_aligned())),
            );
            TableRow::new(cells)
        })
        .collect();
    let widths = [
        Constraint::Min(24),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
    ];
    let table = Table::new(rows, widths)
        .header(TableRow::new(titles).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::new().borders(Borders::TOP))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(table, table_area, &mut state.table);

    let status = match &state.error {
        Some(error) => format!("error: {error} (retrying)"),
        None => "q quit  n/d/i/r/w/l/p/h sort  up/down select  enter clients  c all clients".into(),
    };
    frame.render_widget(Paragraph::new(status), status_area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units_and_limits() {
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_interval("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("2h").is_err());
        assert!(parse_interval("fast").is_err());
    }

    const BEFORE: &str = "vmedia_export_operations_total{export=\"debian@3\",op=\"read\"} 100\n\
        vmedia_client_operations_total{export=\"debian@3\",client=\"10.0.0.5:4000\",op=\"read\"} 100\n";
    const AFTER: &str = "vmedia_export_operations_total{export=\"debian@3\",op=\"read\"} 300\n\
        vmedia_export_requests_in_flight{export=\"debian@3\"} 5\n\
        vmedia_export_operations_total{export=\"idle@1\",op=\"read\"} 0\n\
        vmedia_client_operations_total{export=\"debian@3\",client=\"10.0.0.5:4000\",op=\"read\"} 300\n";

    fn screen_text(state: &mut ScreenState) -> Vec<String> {
        let backend = ratatui::backend::TestBackend::new(110, 12);
        let mut terminal = ratatui::Terminal::new(backend).unwrap();
        terminal.draw(|frame| draw(frame, state)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn screen_shows_totals_exports_and_expanded_clients() {
        let before = Snapshot::parse(BEFORE.as_bytes()).unwrap();
        let after = Snapshot::parse(AFTER.as_bytes()).unwrap();
        let mut view = View::between(&before, &after, Duration::from_secs(2));
        view.sort(SortColumn::Iops);
        let mut state = ScreenState {
            url: "http://h:8080/metrics".into(),
            interval: Duration::from_secs(2),
            sort: SortColumn::Iops,
            view: Some(view),
            error: None,
            expanded: BTreeSet::new(),
            expand_all: false,
            table: TableState::default(),
            updated: "now".into(),
        };
        let lines = screen_text(&mut state);
        assert!(
            lines[0].starts_with("vmedia top  http://h:8080/metrics  every 2.0 s"),
            "{lines:#?}"
        );
        assert!(
            lines[1].contains("qd=5") && lines[1].contains("iops=100.0"),
            "{lines:#?}"
        );
        let table: Vec<&String> = lines.iter().filter(|l| l.contains('@')).collect();
        assert!(
            table[0].starts_with("debian@3") && table[0].contains("100.0"),
            "{lines:#?}"
        );
        assert!(table[1].starts_with("idle@1"), "busiest first: {lines:#?}");
        assert!(
            !lines.iter().any(|l| l.contains("10.0.0.5")),
            "clients folded: {lines:#?}"
        );
        state.table.select(Some(0));
        state.toggle_selected();
        let lines = screen_text(&mut state);
        let client = lines
            .iter()
            .position(|l| l.contains("└ 10.0.0.5:4000"))
            .unwrap();
        let export = lines
            .iter()
            .position(|l| l.starts_with("debian@3"))
            .unwrap();
        assert_eq!(
            client,
            export + 1,
            "the client row follows its export: {lines:#?}"
        );
        state.resort(SortColumn::Name);
        state.error = Some("cannot reach http://h:8080/metrics".into());
        let lines = screen_text(&mut state);
        assert!(
            lines.last().unwrap().starts_with("error: cannot reach"),
            "{lines:#?}"
        );
        assert!(lines[0].contains("sort: name"), "{lines:#?}");
    }

    #[test]
    fn metrics_url_adds_scheme_and_path() {
        assert_eq!(
            metrics_url("10.0.0.1:8080").unwrap(),
            "http://10.0.0.1:8080/metrics"
        );
        assert_eq!(metrics_url("https://h/").unwrap(), "https://h/metrics");
        assert_eq!(
            metrics_url("http://h:1/metrics").unwrap(),
            "http://h:1/metrics"
        );
        assert!(metrics_url("ftp://h").is_err());
        assert!(metrics_url("http://").is_err());
    }
}

//! Watches a serial console as bytes arrive: records when the firmware spoke, handed over to a
//! boot loader, when the kernel spoke and when the user's marker appeared.

use std::time::{Duration, Instant};

use regex::bytes::Regex;
use serde::Serialize;

/// Console kept in memory for the marker search and the tail; older output is dropped (the log
/// file keeps everything).
const MAX_CONSOLE_IN_MEMORY: usize = 8 * 1024 * 1024;
/// How much is kept when the in-memory console is trimmed.
const KEPT_AFTER_TRIM: usize = 1024 * 1024;
/// Lines longer than this are searched in pieces: a guest printing without newlines must not
/// make every search rescan megabytes.
const MAX_SEARCH_WINDOW: usize = 64 * 1024;

/// Lines that mean "the firmware has passed control on": its own announcement, or the first
/// words of the boot loader or network boot ROM it started.
const HANDOVER_PATTERNS: [&[u8]; 8] = [
    b"Booting from ",     // SeaBIOS: "Booting from DVD/CD...", "... ROM..."
    b"BdsDxe: starting ", // OVMF's boot manager starting a Boot#### option
    b"iPXE initialising", // iPXE option ROM under SeaBIOS
    b"Open Source Network Boot Firmware", // iPXE's banner (its EFI driver under OVMF)
    b"Welcome to GRUB",
    b"ISOLINUX ",
    b"PXELINUX ",
    b"SYSLINUX ",
];

/// When each boot stage was first seen, measured from VM start.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Timeline {
    pub first_output: Option<Duration>,
    pub firmware_handover: Option<Duration>,
    pub kernel_output: Option<Duration>,
    pub marker: Option<Duration>,
    /// The text the marker regex matched.
    pub marker_text: Option<String>,
    /// When the guest kernel announced a panic.
    pub guest_panic: Option<Duration>,
}

/// What a Linux guest prints when it gives up.
const PANIC_PATTERN: &[u8] = b"Kernel panic - not syncing";

/// Compiles a user's `--expect` pattern.
pub fn compile_marker(pattern: &str) -> crate::Result<Regex> {
    Regex::new(pattern).map_err(|e| {
        crate::BootError::Invalid(format!(
            "--expect {pattern:?} is not a valid regular expression: {e}"
        ))
    })
}

/// Incremental console scanner.
pub struct ConsoleWatch {
    /// `None` for an interactive boot without `--expect`: only the stages are timed.
    marker: Option<Regex>,
    kernel: Regex,
    start: Instant,
    console: Vec<u8>,
    /// Where the current (unfinished) line starts in `console`.
    line_start: usize,
    timeline: Timeline,
}

impl ConsoleWatch {
    pub fn new(marker: Regex, start: Instant) -> ConsoleWatch {
        ConsoleWatch::watching(Some(marker), start)
    }

    /// A watch that times the boot stages, and the marker when there is one.
    pub fn watching(marker: Option<Regex>, start: Instant) -> ConsoleWatch {
        ConsoleWatch {
            marker,
            kernel: Regex::new(r"Linux version \d|\[\s*\d+\.\d{6}\] ").expect("static regex"),
            start,
            console: Vec::new(),
            line_start: 0,
            timeline: Timeline::default(),
        }
    }

    /// Adds console bytes received at `at`; returns true once the marker has been seen.
    pub fn feed(&mut self, bytes: &[u8], at: Instant) -> bool {
        if bytes.is_empty() || self.timeline.marker.is_some() {
            return self.timeline.marker.is_some();
        }
        let elapsed = at.saturating_duration_since(self.start);
        self.timeline.first_output.get_or_insert(elapsed);
        let search_from = self
            .line_start
            .max(self.console.len().saturating_sub(MAX_SEARCH_WINDOW));
        self.console.extend_from_slice(bytes);
        let window = &self.console[search_from..];
        if self.timeline.firmware_handover.is_none()
            && self.timeline.kernel_output.is_none()
            && HANDOVER_PATTERNS.iter().any(|p| contains(window, p))
        {
            self.timeline.firmware_handover = Some(elapsed);
        }
        if self.timeline.kernel_output.is_none() && self.kernel.is_match(window) {
            self.timeline.kernel_output = Some(elapsed);
        }
        if self.timeline.guest_panic.is_none() && contains(window, PANIC_PATTERN) {
            self.timeline.guest_panic = Some(elapsed);
        }
        if let Some(found) = self.marker.as_ref().and_then(|m| m.find(window)) {
            self.timeline.marker = Some(elapsed);
            self.timeline.marker_text =
                Some(String::from_utf8_lossy(found.as_bytes()).into_owned());
        }
        if let Some(newline) = self.console[search_from..]
            .iter()
            .rposition(|&b| b == b'\n')
        {
            self.line_start = search_from + newline + 1;
        }
        if self.console.len() > MAX_CONSOLE_IN_MEMORY {
            let drop = self.console.len() - KEPT_AFTER_TRIM;
            self.console.drain(..drop);
            self.line_start = self.line_start.saturating_sub(drop);
        }
        self.timeline.marker.is_some()
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The last `lines` lines of the console, escape sequences removed, for error reports.
    pub fn tail(&self, lines: usize) -> String {
        let text = strip_escapes(&String::from_utf8_lossy(&self.console));
        let all: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        let from = all.len().saturating_sub(lines);
        all[from..].join("\n")
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Removes ANSI/VT100 control sequences (SeaBIOS and GRUB draw with them).
pub fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&next) = chars.peek() {
                    chars.next();
                    if next.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                chars.next();
            }
            continue;
        }
        if c == '\r' || c == '\n' || c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(marker: &str) -> (ConsoleWatch, Instant) {
        let start = Instant::now();
        (ConsoleWatch::new(Regex::new(marker).unwrap(), start), start)
    }

    #[test]
    fn stages_are_recorded_in_order() {
        let (mut w, start) = watch("login:");
        let t = |ms| start + Duration::from_millis(ms);
        assert!(!w.feed(b"SeaBIOS (version 1.16)\r\n", t(100)));
        assert!(!w.feed(b"Booting from DVD/CD...\r\n", t(400)));
        assert!(!w.feed(b"[    0.000000] Linux version 6.1.0\n", t(900)));
        assert!(w.feed(b"host login: ", t(2000)));
        let tl = w.timeline();
        assert_eq!(tl.first_output, Some(Duration::from_millis(100)));
        assert_eq!(tl.firmware_handover, Some(Duration::from_millis(400)));
        assert_eq!(tl.kernel_output, Some(Duration::from_millis(900)));
        assert_eq!(tl.marker, Some(Duration::from_millis(2000)));
        assert_eq!(tl.marker_text.as_deref(), Some("login:"));
    }

    #[test]
    fn marker_split_across_chunks_is_found() {
        let (mut w, start) = watch("VMEDIA-BOOT-OK");
        assert!(!w.feed(b"xx VMEDIA-BO", start));
        assert!(w.feed(b"OT-OK\n", start));
    }

    #[test]
    fn uefi_boot_manager_line_is_the_handover() {
        let (mut w, start) = watch("nothing");
        w.feed(
            b"BdsDxe: loading Boot0001\r\nBdsDxe: starting Boot0001 \"UEFI QEMU DVD-ROM\"\r\n",
            start,
        );
        assert!(w.timeline().firmware_handover.is_some());
    }

    #[test]
    fn kernel_panic_is_noticed() {
        let (mut w, start) = watch("VMEDIA-BOOT-OK");
        w.feed(
            b"[    1.2] Kernel panic - not syncing: No working init found.\n",
            start,
        );
        assert!(w.timeline().guest_panic.is_some());
    }

    #[test]
    fn tail_strips_escape_sequences() {
        let (mut w, start) = watch("nothing");
        w.feed(b"\x1b[2J\x1b[0mone\r\ntwo\r\nthree\r\n", start);
        assert_eq!(w.tail(2), "two\nthree");
    }

    #[test]
    fn huge_console_is_trimmed_but_still_searched() {
        let (mut w, start) = watch("END");
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..10 {
            assert!(!w.feed(&chunk, start));
        }
        assert!(w.console.len() <= MAX_CONSOLE_IN_MEMORY);
        assert!(w.feed(b"END", start));
    }
}

//! `vmedia boot`: one VM in the foreground, watched on its serial console until a marker, a
//! time-out, an exit or a cancel; QEMU never outlives the run.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use regex::bytes::Regex;
use serde::{Deserialize, Serialize};

use crate::console::{ConsoleWatch, Timeline};
use crate::error::{BootError, Result};
use crate::process::{describe_exit, Guarded};
use crate::qemu::{command_line, find_ovmf, find_qboot, Launch, ResolvedAccel, SerialTarget};
use crate::spec::{Firmware, Machine, VmSpec};

/// QEMU's own error output kept for the report (it is short unless something loops).
const MAX_QEMU_STDERR: usize = 64 * 1024;
/// How long QEMU gets to exit cleanly after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often the cancel flag is checked while the console is quiet.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Console lines quoted in a failure report.
pub const TAIL_LINES: usize = 25;

/// A foreground boot to run.
pub struct BootRequest {
    pub spec: VmSpec,
    pub accel: ResolvedAccel,
    /// The QEMU system emulator to run (`BootConfig::qemu`).
    pub qemu: PathBuf,
    /// What means "booted"; `None` only for an interactive run, which times the stages only.
    pub marker: Option<Regex>,
    pub timeout: Duration,
    /// Every console byte is appended here as it arrives.
    pub console_log: File,
    pub console_log_path: PathBuf,
    /// A person at the console: the run shows the console and types into it, and goes on
    /// after the marker until the VM ends or the cancel flag is set (Ctrl-] in the CLI).
    pub interactive: Option<Interactive>,
}

/// The console of an interactive run.
pub struct Interactive {
    /// Keys for the guest's serial port, in order.
    pub keys: mpsc::Receiver<Vec<u8>>,
    /// Where every console byte is shown as it arrives (the terminal).
    pub screen: Box<dyn Write + Send>,
    /// A QEMU window (`-display` value such as `gtk` or `sdl`) instead of none.
    pub display: Option<String>,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The marker appeared.
    Booted,
    /// The time ran out first.
    TimedOut,
    /// QEMU ended (guest powered off, rebooted under -no-reboot, QEMU error) first.
    Exited,
    /// The guest kernel panicked.
    Panicked,
    /// SIGINT/SIGTERM arrived.
    Cancelled,
}

/// Everything the CLI reports about a run.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    pub outcome: Outcome,
    pub timeline: Timeline,
    pub accel: &'static str,
    pub console_log: PathBuf,
    pub console_tail: String,
    /// How QEMU ended when it ended by itself.
    pub qemu_exit: Option<String>,
    pub qemu_stderr: String,
    /// The whole QEMU command line, for reproducing by hand.
    pub command: Vec<String>,
    pub total: Duration,
}

/// The `vmedia boot --json` document: the outcome, the timeline in seconds since the VM
/// started (rounded to milliseconds, null when a stage was not seen) and how to reproduce the
/// run. Fields in the order the JSON lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootSummary {
    pub accel: String,
    pub console_log: PathBuf,
    /// The last console lines, when the marker was not seen.
    pub console_tail: Option<String>,
    /// The text the marker matched.
    pub marker_text: Option<String>,
    pub outcome: Outcome,
    /// The whole QEMU command line.
    pub qemu_command: Vec<String>,
    /// How QEMU ended when it ended by itself.
    pub qemu_exit: Option<String>,
    pub timeline: TimelineSeconds,
    pub total_seconds: f64,
}

/// Boot stages in seconds since the VM started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimelineSeconds {
    pub first_firmware_output: Option<f64>,
    pub first_kernel_output: Option<f64>,
    pub firmware_handover: Option<f64>,
    pub guest_panic: Option<f64>,
    pub marker: Option<f64>,
    /// Always 0: the origin of the other times.
    pub vm_started: f64,
}

/// Seconds rounded to milliseconds.
fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

impl BootReport {
    /// The report as `vmedia boot --json` prints it.
    pub fn summary(&self) -> BootSummary {
        let t = &self.timeline;
        BootSummary {
            accel: self.accel.to_string(),
            console_log: self.console_log.clone(),
            console_tail: (self.outcome != Outcome::Booted).then(|| self.console_tail.clone()),
            marker_text: t.marker_text.clone(),
            outcome: self.outcome,
            qemu_command: self.command.clone(),
            qemu_exit: self.qemu_exit.clone(),
            timeline: TimelineSeconds {
                first_firmware_output: t.first_output.map(seconds),
                first_kernel_output: t.kernel_output.map(seconds),
                firmware_handover: t.firmware_handover.map(seconds),
                guest_panic: t.guest_panic.map(seconds),
                marker: t.marker.map(seconds),
                vm_started: 0.0,
            },
            total_seconds: seconds(self.total),
        }
    }
}

/// Boots, waits, stops. Errors are for failures to start at all; everything after QEMU runs is
/// an `Outcome`.
pub fn boot(request: BootRequest, cancel: &AtomicBool) -> Result<BootReport> {
    let _span = tracing::info_span!("boot_run", vm = %request.spec.name).entered();
    let scratch = tempfile::Builder::new()
        .prefix("vmedia-boot-")
        .tempdir()
        .map_err(|e| BootError::io(std::env::temp_dir(), e))?;
    let uefi_vars = if request.spec.firmware == Firmware::Uefi {
        let (_, template) = find_ovmf()?;
        let vars = scratch.path().join("OVMF_VARS.fd");
        std::fs::copy(&template, &vars).map_err(|e| BootError::io(&template, e))?;
        Some(vars)
    } else {
        None
    };
    let launch = Launch {
        spec: &request.spec,
        accel: request.accel,
        boot_order: request.spec.boot_order.clone(),
        serial: SerialTarget::Stdio,
        qmp_socket: scratch.path().join("qmp.sock"),
        uefi_vars,
        pidfile: None,
        no_reboot: true,
    };
    let mut args = command_line(&launch)?;
    let (keys, mut screen) = match request.interactive {
        Some(interactive) => {
            if let Some(display) = interactive.display {
                // The command line is headless for every other run (managed VMs, scripts).
                if let Some(at) = args.iter().position(|a| a == "-display") {
                    if let Some(value) = args.get_mut(at + 1) {
                        *value = display.into();
                    }
                }
            }
            (Some(interactive.keys), Some(interactive.screen))
        }
        None => (None, None),
    };
    let program = request.qemu.clone();
    let mut command_text = vec![program.to_string_lossy().into_owned()];
    command_text.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));

    let mut command = Command::new(&program);
    command
        .args(&args)
        .stdin(if keys.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut qemu = Guarded::spawn(&mut command)?;
    let stdout = qemu.child_mut().stdout.take().expect("piped stdout");
    let stderr = qemu.child_mut().stderr.take().expect("piped stderr");
    let console = spawn_reader(stdout);
    if let (Some(keys), Some(mut to_guest)) = (keys, qemu.child_mut().stdin.take()) {
        // Ends when the keys stop (the caller dropped its sender) or QEMU closes its input.
        std::thread::spawn(move || {
            while let Ok(bytes) = keys.recv() {
                if to_guest
                    .write_all(&bytes)
                    .and_then(|_| to_guest.flush())
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    let stderr_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.take(MAX_QEMU_STDERR as u64).read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });

    let mut watch = ConsoleWatch::watching(request.marker.clone(), start);
    let mut log = request.console_log;
    let deadline = start + request.timeout;
    let outcome = loop {
        if cancel.load(Ordering::SeqCst) {
            break Outcome::Cancelled;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Outcome::TimedOut;
        }
        match console.recv_timeout(left.min(POLL_INTERVAL)) {
            Ok((chunk, at)) => {
                log.write_all(&chunk)
                    .map_err(|e| BootError::io(&request.console_log_path, e))?;
                if let Some(screen) = screen.as_mut() {
                    // A closed terminal must not stop the VM's log; the cancel flag does that.
                    let _ = screen.write_all(&chunk).and_then(|_| screen.flush());
                }
                if watch.feed(&chunk, at) && screen.is_none() {
                    break Outcome::Booted;
                }
                if watch.timeline().guest_panic.is_some() {
                    // Give the panic message a moment to finish printing for the tail.
                    drain(&console, &mut watch, &mut log, Duration::from_millis(300));
                    break Outcome::Panicked;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break Outcome::Exited,
        }
    };
    let total = start.elapsed();
    let qemu_exit = if outcome == Outcome::Exited {
        qemu.wait_for(Duration::from_secs(2))
            .map(|s| describe_exit(&s))
    } else {
        qemu.stop(STOP_GRACE);
        None
    };
    drop(qemu);
    let _ = log.flush();
    // QEMU reports the SIGTERM we sent it; that is not news to the user.
    let qemu_stderr: String = stderr_reader
        .join()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("terminating on signal"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut timeline = watch.timeline().clone();
    if firmware_is_silent(&request.spec) {
        // qboot never writes to the serial port: whatever came first was the guest's.
        timeline.first_output = None;
    }
    Ok(BootReport {
        outcome,
        timeline,
        accel: match request.accel {
            ResolvedAccel::Kvm => "kvm",
            ResolvedAccel::Tcg => "tcg",
        },
        console_log: request.console_log_path,
        console_tail: watch.tail(TAIL_LINES),
        qemu_exit,
        qemu_stderr,
        command: command_text,
        total,
    })
}

/// Whether the VM's firmware prints nothing on the console (the lean machine's qboot).
fn firmware_is_silent(spec: &VmSpec) -> bool {
    spec.machine == Machine::Lean && spec.firmware == Firmware::Bios && find_qboot().is_some()
}

type Chunk = (Vec<u8>, Instant);

/// Reads the console pipe on its own thread, stamping each chunk with its arrival time.
fn spawn_reader(mut source: impl Read + Send + 'static) -> mpsc::Receiver<Chunk> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if sender.send((buf[..n].to_vec(), Instant::now())).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    receiver
}

fn drain(
    console: &mpsc::Receiver<Chunk>,
    watch: &mut ConsoleWatch,
    log: &mut File,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while let Ok((chunk, at)) =
        console.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        let _ = log.write_all(&chunk);
        watch.feed(&chunk, at);
    }
}

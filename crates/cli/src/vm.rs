//! `vmedia vm`: managed VMs stored as TOML in the state folder, started in the background,
//! stopped, inspected, with live CD media and an interactive serial console.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use vmedia_boot::managed::{StopHow, VmState, VmStore};
use vmedia_boot::spec::BootDevice;

use crate::boot::{build_spec, VmOptions};

/// The byte Ctrl-] sends: detaches from the console, as telnet and virsh do.
pub(crate) const DETACH_BYTE: u8 = 0x1d;
/// Longest grace period accepted for `stop`.
const MAX_GRACE_SECS: u64 = 3600;

// Parsed once per process: the size of the `Create` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
pub enum VmCommand {
    /// Define a VM (stored as <state>/vms/NAME/vm.toml)
    #[command(after_help = "Examples:
  vmedia vm create web --cdrom debian.iso --disk disk.qcow2,rw --boot disk,cdrom --memory 1G
  vmedia vm create lab --firmware uefi --cdrom-slots 2 --net user --tftp ./tftp --bootfile grubx64.efi

The state folder is $VMEDIA_HOME, else $XDG_DATA_HOME/vmedia, else ~/.local/share/vmedia.")]
    Create {
        name: String,
        #[command(flatten)]
        vm: VmOptions,
    },
    /// Start a VM in the background (returns once QEMU runs it)
    Start {
        name: String,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Press the ACPI power button; force the VM off after the grace period
    Stop {
        name: String,
        /// Seconds the guest gets to shut down
        #[arg(long, default_value_t = 30)]
        grace: u64,
    },
    /// Turn a VM off at once
    Kill { name: String },
    /// List VMs and whether they run
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a VM's definition and state
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Attach to the serial console (Ctrl-] detaches)
    Console { name: String },
    /// Print the serial console output so far
    Log { name: String },
    /// Delete a VM's definition and state (media files are never touched)
    Rm {
        name: String,
        /// Kill it first if it runs
        #[arg(long)]
        force: bool,
    },
    /// Boot from DEVICE on the next start only, then the normal order again
    #[command(
        name = "boot-once",
        after_help = "Examples:
  vmedia vm boot-once web net && vmedia vm start web

Works under BIOS and UEFI: the next start gives DEVICE the first per-device bootindex."
    )]
    BootOnce {
        name: String,
        /// cdrom, disk or net
        device: String,
    },
    /// Put an ISO into a CD slot (live when the VM runs)
    #[command(after_help = "Examples:
  vmedia vm insert web --slot 1 tools.iso")]
    Insert {
        name: String,
        #[arg(long, default_value_t = 0)]
        slot: usize,
        image: PathBuf,
    },
    /// Eject the medium of a CD slot (live when the VM runs)
    Eject {
        name: String,
        #[arg(long, default_value_t = 0)]
        slot: usize,
        /// Eject even when the guest holds the tray locked
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: VmCommand) -> anyhow::Result<ExitCode> {
    let boot_config = crate::env::boot_config()?;
    let store = VmStore::new(&boot_config);
    match cmd {
        VmCommand::Create { name, vm } => {
            let spec = build_spec(&name, &vm)?;
            let path = store.create(&spec)?;
            println!("created VM {name} ({})", path.display());
        }
        VmCommand::Start { name, json } => {
            let config = store.load(&name)?;
            let (accel, note) = vmedia_boot::kvm::resolve_accel(config.spec.accel, &boot_config);
            if let Some(note) = note {
                eprintln!("vmedia: note: {note}");
            }
            let report = store
                .start(&name, accel)
                .with_context(|| format!("cannot start VM {name}"))?;
            for note in &report.notes {
                eprintln!("vmedia: note: {note}");
            }
            if json {
                crate::print_json(&report)?;
            } else {
                let order: Vec<String> = report.boot_order.iter().map(|d| d.to_string()).collect();
                println!(
                    "started VM {name} (pid {}, {}, boot order {}{})",
                    report.pid,
                    report.accel,
                    order.join(","),
                    report
                        .one_time
                        .map(|d| format!(", {d} once"))
                        .unwrap_or_default()
                );
                println!(
                    "console: vmedia vm console {name}   log: {}",
                    report.serial_log.display()
                );
            }
        }
        VmCommand::Stop { name, grace } => {
            if grace > MAX_GRACE_SECS {
                bail!("--grace {grace} is over {MAX_GRACE_SECS} seconds");
            }
            match store.stop(&name, Duration::from_secs(grace))? {
                StopHow::AlreadyStopped => println!("VM {name} is not running"),
                StopHow::PoweredDown => println!("VM {name} shut down"),
                StopHow::Forced => {
                    println!("VM {name} did not shut down within {grace} s; forced off")
                }
            }
        }
        VmCommand::Kill { name } => match store.kill(&name)? {
            StopHow::AlreadyStopped => println!("VM {name} is not running"),
            _ => println!("VM {name} killed"),
        },
        VmCommand::List { json } => {
            let rows = store.list_report()?;
            if json {
                crate::print_json(&rows)?;
            } else {
                println!("{:<24} {:<8} PID", "NAME", "STATE");
                for row in &rows {
                    let pid = row.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                    println!("{:<24} {:<8} {pid}", row.name, row.state.as_str());
                }
            }
        }
        VmCommand::Show { name, json } => {
            let report = store.status_report(&name)?;
            if json {
                crate::print_json(&report)?;
            } else {
                println!("name:   {name}");
                println!(
                    "state:  {}{}",
                    report.state,
                    report
                        .qemu_status
                        .as_ref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default()
                );
                println!("folder: {}", report.folder.display());
                if let Some(device) = report.boot_once {
                    println!("next start boots {device} once");
                }
                print!("{}", report.config.to_toml());
            }
        }
        VmCommand::Console { name } => return console(&store, &name),
        VmCommand::Log { name } => {
            store.load(&name)?;
            let path = store.serial_log(&name);
            match std::fs::File::open(&path) {
                Ok(mut file) => {
                    std::io::copy(&mut file, &mut std::io::stdout().lock())
                        .with_context(|| format!("cannot read {}", path.display()))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!("vmedia: VM {name} has not printed anything yet");
                }
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        }
        VmCommand::Rm { name, force } => {
            if force {
                store.kill(&name)?;
            }
            store.remove(&name)?;
            println!("removed VM {name}");
        }
        VmCommand::BootOnce { name, device } => {
            let device = BootDevice::parse(&device)?;
            store.boot_once(&name, device)?;
            println!("VM {name} boots from {device} on its next start, then in its normal order");
        }
        VmCommand::Insert { name, slot, image } => {
            if vmedia_boot::remote::looks_like_url(&image.to_string_lossy()) {
                anyhow::bail!(
                    "vm insert takes a local ISO; give a network medium with vm create --cdrom URL"
                );
            }
            let live = store.insert(&name, slot, &image)?;
            let when = if live { "now" } else { "at its next start" };
            println!(
                "inserted {} into CD slot {slot} of VM {name} ({when})",
                image.display()
            );
        }
        VmCommand::Eject { name, slot, force } => {
            let live = store.eject(&name, slot, force)?;
            let when = if live { "now" } else { "for its next start" };
            println!("ejected CD slot {slot} of VM {name} ({when})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Relays the terminal to the VM's serial socket until Ctrl-], end of input or VM exit.
fn console(store: &VmStore, name: &str) -> anyhow::Result<ExitCode> {
    store.load(name)?;
    if !matches!(store.state(name), VmState::Running { .. }) {
        bail!("VM {name} is not running (vmedia vm start {name}; vmedia vm log {name} shows past output)");
    }
    let path = store.serial_socket(name);
    let socket = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot attach to {} (is another console attached?)",
            path.display()
        )
    })?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("vmedia: attached to VM {name}; Ctrl-] detaches\r");
    }
    let _raw = if interactive {
        RawTerminal::enter()
    } else {
        None
    };
    let mut from_vm = socket.try_clone()?;
    let output = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut stdout = std::io::stdout();
        while let Ok(n) = from_vm.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = stdout.flush();
        }
    });
    let mut to_vm = socket.try_clone()?;
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = buf[..n].iter().position(|&b| b == DETACH_BYTE) {
            let _ = to_vm.write_all(&buf[..at]);
            break;
        }
        if to_vm.write_all(&buf[..n]).is_err() {
            break;
        }
        if output.is_finished() {
            break;
        }
    }
    if !interactive {
        // Piped input: let the guest answer the last command before detaching.
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = socket.shutdown(std::net::Shutdown::Both);
    let _ = output.join();
    if interactive {
        eprintln!("\r\nvmedia: detached from VM {name}\r");
    }
    Ok(ExitCode::SUCCESS)
}

/// The terminal in raw mode for the life of the value (restored on drop, even on error).
pub(crate) struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    pub(crate) fn enter() -> Option<RawTerminal> {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use rustix::termios::{tcsetattr, OptionalActions};
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

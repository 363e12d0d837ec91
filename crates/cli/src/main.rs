//! The `vmedia` binary: parse the command line, hand the work to a domain crate, map the
//! outcome to an exit code. No format logic lives here.

mod boot;
mod clone;
mod config;
mod disk;
mod doctor;
mod env;
mod iso;
mod library;
mod logging;
mod manuals;
mod mkisofs;
mod multiboot;
mod netboot;
mod ovf;
mod progress;
mod serve;
mod top;
mod user;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// One tool for the media that virtual machines start from.
#[derive(Parser)]
#[command(
    name = "vmedia",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VMEDIA_BUILD_COMMIT"), ")"),
    about = "Make, check and convert disc images and virtual disks, boot VMs from them, serve network boot",
    after_help = "Examples:\n  vmedia iso create ./tree -o out.iso --volume-id MYDISC\n  vmedia mkisofs -o out.iso -R -J -V MYDISC ./tree\n  vmedia iso ls out.iso -l\n  vmedia disk convert -O vmdk -o subformat=streamOptimized disk.raw disk.vmdk\n  vmedia boot --cdrom out.iso --expect 'login:'\n\nExit codes: 0 success, 1 failure, 2 usage error; see each command's --help for its own codes."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr: readable text, or one JSON object per line for log collectors
    /// (filter with RUST_LOG, e.g. RUST_LOG=debug)
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(flatten)]
    library: library::GlobalArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Make, inspect, extract, verify and repack ISO 9660 disc images
    #[command(subcommand)]
    Iso(iso::IsoCommand),
    /// Write an ISO image with xorriso -as mkisofs / genisoimage options
    #[command(disable_help_flag = true)]
    Mkisofs(mkisofs::Args),
    /// Multi-ISO boot sticks: one disk image, a GRUB menu of ISO files (BIOS and UEFI)
    #[command(subcommand)]
    Multiboot(multiboot::MultibootCommand),
    /// Create, inspect, check, compare and convert virtual disks (qemu-img commands)
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Export disks as an OVA; read, check and import OVA/OVF packages (VMware, VirtualBox)
    #[command(subcommand)]
    Ovf(ovf::OvfCommand),
    /// Boot a VM from an ISO, a disk or the network and wait for a console marker
    Boot(boot::Args),
    /// Managed virtual machines: create, start, stop, media, console
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Network boot server (DHCP/proxyDHCP, TFTP, HTTP, iPXE)
    #[command(subcommand)]
    Netboot(netboot::NetbootCommand),
    /// Image library: deduplicated versions with a timeline, in a folder or on S3
    #[command(after_help = library::LIBRARY_AFTER_HELP)]
    Library(library::LibraryArgs),
    /// Per-VM copy-on-write clones on a running `vmedia serve` (create, ls, rm, commit)
    #[command(subcommand)]
    Clone(clone::CloneCommand),
    /// Live I/O of a vmedia serve daemon per export and client (esxtop-like; --batch for scripts)
    Top(top::Args),
    /// Serve library images over HTTP(S) and NBD (the vmedia daemon)
    Serve(serve::Args),
    /// The daemon's users and their roles (offline, on its state folder)
    #[command(subcommand)]
    User(user::UserCommand),
    /// The daemon's API tokens (offline, on its state folder)
    #[command(subcommand)]
    Token(user::TokenCommand),
    /// Check what this host can boot with and name what to install for the rest
    Doctor(doctor::Args),
    /// Show the settings in effect (config files, environment, defaults)
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print shell completions for bash, zsh, fish, elvish or powershell
    Completions(manuals::CompletionsArgs),
    /// Write the man pages into a folder (for packagers)
    #[command(hide = true)]
    Man(manuals::ManArgs),
}

/// Allocations up to this size come from glibc's heap, not from their own `mmap`.
const MALLOC_MMAP_THRESHOLD: i32 = 4 << 20;
/// Free memory at the top of a heap kept for reuse before glibc hands it back to the kernel.
const MALLOC_TRIM_THRESHOLD: i32 = 32 << 20;

/// Fixes glibc's allocator thresholds. The library commands stream gigabytes through
/// short-lived buffers of up to a few MiB (a chunk read, decrypted, decompressed, written);
/// with glibc's adaptive defaults those pages keep going back to the kernel and faulting in
/// again zeroed (a 2 GiB encrypted `library get`: 57-125 thousand page faults and 0.46-0.66 s
/// of system time; 5-17 thousand and 0.27-0.43 s with these values). Retention stays bounded
/// by the trim threshold per heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets two numeric allocator parameters; it is called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let default_filter = match &cli.command {
        Command::Netboot(cmd) => netboot::default_log_filter(cmd),
        Command::Serve(_) => serve::DEFAULT_LOG_FILTER,
        _ => logging::DEFAULT_FILTER,
    };
    logging::init(cli.log_format, default_filter);
    library::set_global(cli.library);
    if let Err(err) = config::load() {
        return report(&err);
    }
    let outcome = match cli.command {
        Command::Iso(cmd) => iso::run(cmd),
        Command::Mkisofs(args) => mkisofs::run(args),
        Command::Multiboot(cmd) => multiboot::run(cmd),
        Command::Disk(cmd) => disk::run(cmd),
        Command::Ovf(cmd) => ovf::run(cmd),
        Command::Boot(args) => boot::run(args),
        Command::Vm(cmd) => vm::run(cmd),
        Command::Netboot(cmd) => netboot::run(cmd),
        Command::Library(cmd) => library::run(cmd),
        Command::Clone(cmd) => clone::run(cmd),
        Command::Top(args) => top::run(args),
        Command::Serve(args) => serve::run(args),
        Command::User(cmd) => user::run_user(cmd),
        Command::Token(cmd) => user::run_token(cmd),
        Command::Doctor(args) => doctor::run(args),
        Command::Config(cmd) => config::run(cmd),
        Command::Completions(args) => manuals::run_completions(args),
        Command::Man(args) => manuals::run_man(args),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

/// Prints the whole error chain; a broken pipe (e.g. `vmedia iso cat ... | head`) exits quietly.
fn report(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(io_err) = cause.downcast_ref::<std::io::Error>() {
            if io_err.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
        }
    }
    let mut line = error_text(err);
    if let Some(step) = next_step(err) {
        line.push_str("; ");
        line.push_str(step);
    }
    eprintln!("vmedia: error: {line}");
    ExitCode::FAILURE
}

/// The next step for the OS errors a first run meets most, whichever command hit them (the
/// libraries name the file and the step; what to do about it is the same everywhere).
/// A report as pretty JSON on stdout, the one way every `--json` prints.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, text.as_bytes())?;
    std::io::Write::write_all(&mut out, b"\n")?;
    Ok(())
}

fn next_step(err: &anyhow::Error) -> Option<&'static str> {
    use std::io::ErrorKind;
    // ureq keeps a socket's io::Error inside its own error, not as its source.
    let kind = err.chain().find_map(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .or(match cause.downcast_ref::<ureq::Error>() {
                Some(ureq::Error::Io(io)) => Some(io),
                _ => None,
            })
            .map(std::io::Error::kind)
    })?;
    match kind {
        ErrorKind::AddrInUse => Some(
            "another program listens there (ss -ltnup names it): stop it or choose another \
             port (--http-port, --nbd-port, --https-port, --tftp-port)",
        ),
        ErrorKind::StorageFull => Some("free space there or write the output elsewhere"),
        ErrorKind::ConnectionRefused => Some(
            "nothing listens there: start the server (`vmedia serve`, `vmedia netboot serve`) \
             or point --server (VMEDIA_SERVER) at the right address",
        ),
        _ => None,
    }
}

/// The error chain on one line, each cause once. Many library errors already embed their
/// source's text (`cannot read F: No such file...`) and also return it as `source()`, so
/// anyhow's `{:#}` printed the OS text twice; a cause whose text the line already holds is
/// skipped here, for every crate's errors at once.
fn error_text(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct ReadError {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn os_text_embedded_by_a_library_error_is_printed_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let os_text = io.to_string();
        let err = anyhow::Error::new(ReadError {
            path: "/nonexistent".into(),
            source: io,
        })
        .context("cannot make x.iso");
        let text = error_text(&err);
        assert_eq!(
            text,
            format!("cannot make x.iso: cannot read /nonexistent: {os_text}")
        );
        assert_eq!(text.matches(&os_text).count(), 1, "{text}");
    }

    #[test]
    fn causes_not_yet_in_the_line_are_all_kept() {
        let err = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_text(&err), "outer: middle: inner");
    }
}

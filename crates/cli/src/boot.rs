//! `vmedia boot`: start a VM from ISOs, disks or the network, wait for a console marker, print
//! the boot timeline, power off; without `--expect`, the serial console on the terminal until
//! Ctrl-] or the VM ends. Also the VM options `vmedia vm create` shares.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use vmedia_boot::initrd::PlainInitrd;
use vmedia_boot::media::{self, DiskFormat};
use vmedia_boot::remote::{self, Medium, Remote, RemoteUrl};
use vmedia_boot::run::{self, BootReport, BootRequest, Interactive, Outcome};
use vmedia_boot::spec::{self, Accel, BootDevice, CdromSlot, Disk, Firmware, Machine, Net, VmSpec};

/// Exit codes of `vmedia boot` (documented in --help).
pub const EXIT_TIMEOUT: u8 = 4;
pub const EXIT_VM_ENDED: u8 = 5;
pub const EXIT_INTERRUPTED: u8 = 130;

/// Longest wait accepted: a week; beyond that it is a typo.
const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// What a VM is made of (shared by `vmedia boot` and `vmedia vm create`).
#[derive(clap::Args, Debug, Clone)]
pub struct VmOptions {
    /// An ISO in a CD drive (repeat for more drives; slots in order from 0); or a network
    /// medium: nbd://HOST[:PORT]/EXPORT or http(s)://HOST[:PORT]/PATH
    #[arg(long, value_name = "IMG|URL")]
    pub cdrom: Vec<String>,
    /// A disk image, read-only to the guest; IMG,rw makes it writable, IMG,format=vmdk names
    /// the format (detected otherwise: raw, qcow2, vmdk, vhd, vhdx). IMG may be an nbd:// or
    /// http(s):// URL (format raw unless given; http(s) is read-only)
    #[arg(long, value_name = "IMG|URL[,rw][,format=F]")]
    pub disk: Vec<String>,
    /// A disk image (or nbd:// URL) the guest may write to
    #[arg(long, value_name = "IMG|URL")]
    pub disk_rw: Vec<String>,
    /// Do not verify the certificate of https:// media (QEMU's sslverify=off), for a server
    /// with a self-signed certificate
    #[arg(long)]
    pub https_insecure: bool,
    /// Network: none, user (QEMU's NAT with DHCP/TFTP) or bridge=BR
    #[arg(long, value_name = "user|bridge=BR|none")]
    pub net: Option<String>,
    /// Folder served by the user network's built-in TFTP server (implies --net user)
    #[arg(long, value_name = "DIR")]
    pub tftp: Option<PathBuf>,
    /// Boot file announced by the user network's DHCP (e.g. pxelinux.0)
    #[arg(long, value_name = "FILE")]
    pub bootfile: Option<String>,
    /// Firmware
    #[arg(long, value_enum)]
    pub firmware: Option<FirmwareArg>,
    /// Boot order, e.g. cdrom,disk,net (per-device bootindex, honoured by SeaBIOS and OVMF)
    #[arg(long, value_name = "LIST")]
    pub boot: Option<String>,
    /// Guest memory (MiB, or with a G suffix)
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Virtual CPUs
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Accelerator: auto uses KVM only when a probe shows it boots Linux on this host
    #[arg(long, value_enum)]
    pub accel: Option<AccelArg>,
    /// Extra empty CD drives, for media inserted later (vmedia vm insert)
    #[arg(long, value_name = "N")]
    pub cdrom_slots: Option<usize>,
    /// Boot this kernel directly (no boot loader)
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initrd for --kernel
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel; with --direct, words added after the ISO's own
    /// command line (so they override it)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub append: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FirmwareArg {
    Bios,
    Uefi,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia boot --cdrom debian.iso                  (interactive: Ctrl-] stops the VM)
  vmedia boot --cdrom debian.iso --display gtk    (a QEMU window, the console here)
  vmedia boot --cdrom debian.iso --expect 'login:' --timeout 600
  vmedia boot --cdrom live.iso --direct --expect 'login:'
  vmedia boot --cdrom live.iso --direct --append 'tsc=unstable' --expect 'login:'
  vmedia boot --disk disk.vmdk --firmware uefi --expect 'Welcome'
  vmedia boot --net user --tftp ./tftp --bootfile pxelinux.0 --boot net --expect 'login:'
  vmedia boot --kernel vmlinuz --initrd initrd.gz --append 'console=ttyS0' --expect 'BOOT-OK' --json

Disks are read-only to the guest unless given with --disk-rw or IMG,rw; their format is detected
by vmedia and passed to QEMU explicitly. The timeline (VM started, first firmware output,
firmware hand-over, first kernel output, marker) goes to stdout; the whole serial console is
written to --console-log (default: a new file in the temporary folder).

Without --expect the boot is interactive: the serial console is on the terminal (keys go to
the guest; Ctrl-] detaches and stops the VM, as vmedia vm console does), --timeout does not
apply, and the timeline is printed when the VM ends. It needs a terminal on stdin.

Exit codes: 0 marker seen (interactive: the VM ended or Ctrl-] stopped it), 1 error before
the VM ran, 2 usage error, 4 time-out, 5 the VM ended (powered off, crashed, kernel panic)
before the marker, 130 interrupted.
No QEMU process is left behind on any path.

--direct boots on a lean machine: qboot instead of SeaBIOS (BIOS only), no HPET, the initrd
decompressed on the host (cached under the state folder), and the kernel parameters
cryptomgr.notests tsc=reliable no_timer_check (and under TCG, which emulates no speculative
execution, mitigations=off) added unless the command line sets them or a key they would
overrule.
--no-lean turns all of that off.")]
pub struct Args {
    #[command(flatten)]
    pub vm: VmOptions,
    /// Boot the Linux kernel, initrd and command line found in the --cdrom ISO's
    /// isolinux/GRUB configuration directly (the ISO stays attached as a CD)
    #[arg(long)]
    pub direct: bool,
    /// With --direct: boot the ISO's compressed kernel as it is, instead of its uncompressed
    /// PVH form (decompressed once on the host and cached; much faster under TCG)
    #[arg(long, requires = "direct")]
    pub bzimage: bool,
    /// With --direct: boot on the standard machine (SeaBIOS, HPET) with the ISO's initrd as it
    /// is and no added kernel parameters, instead of the lean machine (qboot, no HPET, initrd
    /// decompressed once on the host, three boot-time kernel parameters; see docs/boot.md)
    #[arg(long, requires = "direct")]
    pub no_lean: bool,
    /// With --direct: size limit of the host cache of uncompressed kernels and plain initrds
    /// (bytes, or with K/M/G/T); the least recently used files beyond it are removed after
    /// each direct boot [default: 2G]
    #[arg(long, value_name = "SIZE", requires = "direct", value_parser = parse_cache_limit)]
    pub cache_limit: Option<u64>,
    /// Empty the --direct kernel and initrd cache and exit
    #[arg(long, exclusive = true)]
    pub clear_cache: bool,
    /// Regular expression that means "booted" on the serial console (matched within a line);
    /// without it the boot is interactive
    #[arg(long, value_name = "REGEX")]
    pub expect: Option<String>,
    /// Interactive boot in a QEMU window of this kind (gtk, sdl, ...) besides the console
    #[arg(long, value_name = "KIND", num_args = 0..=1, default_missing_value = "gtk", conflicts_with = "expect")]
    pub display: Option<String>,
    /// Seconds to wait for the marker
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub timeout: u64,
    /// Write the serial console here
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
    /// Replace an existing --console-log file
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

static CANCEL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    CANCEL.store(true, Ordering::SeqCst);
}

/// Ctrl-C, SIGTERM and SIGHUP stop the VM in order instead of killing vmedia mid-way.
pub fn install_stop_signals() -> &'static AtomicBool {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    &CANCEL
}

/// Builds a VM spec from the options (media checked, formats detected, paths made absolute).
pub fn build_spec(name: &str, options: &VmOptions) -> anyhow::Result<VmSpec> {
    let mut spec = VmSpec::new(name);
    // A flag beats the configuration files' defaults (checked when they were read).
    let (firmware_default, memory_default, accel_default) = crate::env::vm_defaults();
    let from_config = <FirmwareArg as clap::ValueEnum>::from_str;
    if let Some(firmware) = options
        .firmware
        .or_else(|| from_config(firmware_default.as_deref()?, false).ok())
    {
        spec.firmware = match firmware {
            FirmwareArg::Bios => Firmware::Bios,
            FirmwareArg::Uefi => Firmware::Uefi,
        };
    }
    if let Some(memory) = options.memory.as_ref().or(memory_default.as_ref()) {
        spec.memory_mib = spec::parse_memory(memory)?;
    }
    if let Some(cpus) = options.cpus {
        spec.cpus = cpus;
    }
    let accel_from_config = <AccelArg as clap::ValueEnum>::from_str;
    if let Some(accel) = options
        .accel
        .or_else(|| accel_from_config(accel_default.as_deref()?, false).ok())
    {
        spec.accel = match accel {
            AccelArg::Auto => Accel::Auto,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        };
    }
    if let Some(order) = &options.boot {
        spec.boot_order = BootDevice::parse_order(order)?;
    }
    for text in &options.cdrom {
        let medium = match remote_medium(text, options.https_insecure)? {
            Some(remote) => remote,
            None => {
                let iso = Path::new(text);
                media::check_cdrom_image(iso)?;
                Medium::File(media::absolute(iso)?)
            }
        };
        spec.cdroms.push(CdromSlot {
            medium: Some(medium),
        });
    }
    for _ in 0..options.cdrom_slots.unwrap_or(0) {
        if spec.cdroms.len() >= spec::MAX_CDROM_SLOTS {
            bail!(
                "{} CD drives asked for; at most {}",
                options.cdrom.len() + options.cdrom_slots.unwrap_or(0),
                spec::MAX_CDROM_SLOTS
            );
        }
        spec.cdroms.push(CdromSlot::default());
    }
    for text in &options.disk {
        spec.disks.push(parse_disk(text, options.https_insecure)?);
    }
    for text in &options.disk_rw {
        let (medium, format) = match remote_medium(text, options.https_insecure)? {
            Some(remote) => (remote, DiskFormat::Raw),
            None => {
                let path = Path::new(text);
                (
                    Medium::File(media::absolute(path)?),
                    media::detect_disk_format(path)?,
                )
            }
        };
        spec.disks.push(Disk {
            medium,
            format,
            writable: true,
        });
    }
    if options.https_insecure
        && !spec
            .cdroms
            .iter()
            .filter_map(|slot| slot.medium.as_ref())
            .chain(spec.disks.iter().map(|disk| &disk.medium))
            .any(|medium| {
                matches!(
                    medium.remote(),
                    Some(Remote {
                        url: RemoteUrl::Http { secure: true, .. },
                        ..
                    })
                )
            })
    {
        bail!("--https-insecure applies to https:// media only; none was given");
    }
    spec.net = parse_net(options)?;
    if options.append.is_some() && options.kernel.is_none() {
        bail!("--append needs --kernel (or, with vmedia boot, --direct)");
    }
    if let Some(kernel) = &options.kernel {
        spec.kernel = Some(spec::DirectKernel {
            kernel: media::absolute(kernel)?,
            initrd: options.initrd.as_deref().map(media::absolute).transpose()?,
            append: options.append.clone().unwrap_or_default(),
        });
    }
    spec.validate()?;
    Ok(spec)
}

/// A medium given as a URL (text naming a scheme is a URL or an error, never a file name);
/// `None` for a local path.
fn remote_medium(text: &str, https_insecure: bool) -> anyhow::Result<Option<Medium>> {
    if !remote::looks_like_url(text) {
        return Ok(None);
    }
    let url = RemoteUrl::parse(text)?;
    // Only an https medium has a certificate to skip.
    let https = matches!(url, RemoteUrl::Http { secure: true, .. });
    Ok(Some(Medium::Remote(Remote {
        url,
        tls_verify: !(https_insecure && https),
    })))
}

/// `IMG`, `IMG,rw`, `IMG,format=vmdk`, `IMG,ro,format=raw`. A path that itself contains commas
/// is taken whole when the suffixes are not options. IMG may be a URL (format raw unless given:
/// nothing is probed over the network).
fn parse_disk(text: &str, https_insecure: bool) -> anyhow::Result<Disk> {
    let mut parts = text.split(',');
    let path_part = parts.next().unwrap_or_default();
    let mut writable = false;
    let mut format = None;
    let mut all_options = true;
    for option in parts {
        match option {
            "rw" => writable = true,
            "ro" => writable = false,
            _ if option.starts_with("format=") => {
                let name = &option["format=".len()..];
                format = Some(DiskFormat::parse(name).with_context(|| {
                    format!("--disk {text}: unknown format {name:?} (raw, qcow2, vmdk, vhd, vhdx)")
                })?);
            }
            _ => all_options = false,
        }
    }
    let (source, format, writable) = if all_options {
        (path_part, format, writable)
    } else {
        (text, None, false)
    };
    if let Some(medium) = remote_medium(source, https_insecure)? {
        return Ok(Disk {
            medium,
            format: format.unwrap_or(DiskFormat::Raw),
            writable,
        });
    }
    let path = Path::new(source);
    let detected = media::detect_disk_format(path)?;
    Ok(Disk {
        medium: Medium::File(media::absolute(path)?),
        format: format.unwrap_or(detected),
        writable,
    })
}

fn parse_net(options: &VmOptions) -> anyhow::Result<Net> {
    let wants_tftp = options.tftp.is_some() || options.bootfile.is_some();
    let tftp = options.tftp.as_deref().map(media::absolute).transpose()?;
    match options.net.as_deref() {
        None if wants_tftp => Ok(Net::User {
            tftp,
            bootfile: options.bootfile.clone(),
        }),
        None | Some("none") => {
            if wants_tftp {
                bail!("--tftp/--bootfile need --net user");
            }
            Ok(Net::None)
        }
        Some("user") => Ok(Net::User {
            tftp,
            bootfile: options.bootfile.clone(),
        }),
        Some(other) => match other.strip_prefix("bridge=") {
            Some(bridge) if !wants_tftp => Ok(Net::Bridge {
                bridge: bridge.to_string(),
            }),
            Some(_) => bail!("--tftp/--bootfile work with --net user only"),
            None => bail!("--net {other:?}: use user, bridge=BR or none"),
        },
    }
}

fn parse_cache_limit(text: &str) -> Result<u64, String> {
    crate::disk::parse_size(text).map_err(|e| e.to_string())
}

/// Marks the cache files this boot uses as just used, then prunes the cache to its limit
/// (never removing them).
fn prune_direct_cache(
    config: &vmedia_boot::store::BootConfig,
    in_use: &[PathBuf],
    limit: Option<u64>,
) -> anyhow::Result<()> {
    for path in in_use {
        vmedia_boot::direct::touch_cached(path)?;
    }
    let keep: Vec<&Path> = in_use.iter().map(PathBuf::as_path).collect();
    let limit = limit.unwrap_or(vmedia_boot::direct::DEFAULT_CACHE_LIMIT);
    let dirs = [config.kernel_cache(), config.initrd_cache()];
    let report = vmedia_boot::direct::prune_cache(&dirs, limit, &keep)?;
    if report.removed > 0 {
        eprintln!(
            "vmedia: note: removed {} least recently used file(s) ({} bytes) from the --direct cache (limit {limit} bytes)",
            report.removed, report.freed
        );
    }
    Ok(())
}

/// `vmedia boot --clear-cache`: empties the --direct cache.
fn clear_cache() -> anyhow::Result<ExitCode> {
    let config = crate::env::boot_config()?;
    let dirs = [config.kernel_cache(), config.initrd_cache()];
    let report = vmedia_boot::direct::clear_cache(&dirs)?;
    println!(
        "removed {} cached file(s), {} bytes, from {} and {}",
        report.removed,
        report.freed,
        dirs[0].display(),
        dirs[1].display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.clear_cache {
        return clear_cache();
    }
    let cancel = install_stop_signals();
    if args.timeout == 0 || args.timeout > MAX_TIMEOUT_SECS {
        bail!(
            "--timeout {} is outside 1..={MAX_TIMEOUT_SECS} seconds",
            args.timeout
        );
    }
    let marker = args
        .expect
        .as_deref()
        .map(vmedia_boot::console::compile_marker)
        .transpose()?;
    if marker.is_none() && !std::io::stdin().is_terminal() {
        bail!(
            "without --expect, vmedia boot is interactive and needs a terminal on stdin; \
             give --expect REGEX to wait for a console marker from a script"
        );
    }
    let name = format!("boot-{}", std::process::id());
    let mut vm_options = args.vm.clone();
    // With --direct, --append extends the ISO's command line instead of being a whole one.
    let user_append = if args.direct {
        vm_options.append.take()
    } else {
        None
    };
    let mut spec = build_spec(&name, &vm_options)?;
    // --direct needs a --cdrom, so it never changes this verdict.
    if spec.cdroms.is_empty()
        && spec.disks.is_empty()
        && spec.net == Net::None
        && spec.kernel.is_none()
    {
        bail!("nothing to boot: give --cdrom, --disk, --net or --kernel");
    }
    // Argument errors first: probing KVM can take seconds (it boots a tiny VM).
    let direct_iso = if args.direct {
        if spec.kernel.is_some() {
            bail!("--direct takes the kernel from the ISO; do not give --kernel too");
        }
        let medium = spec
            .cdroms
            .iter()
            .find_map(|slot| slot.medium.clone())
            .context("--direct needs a Linux ISO given with --cdrom")?;
        let iso = medium.as_path().map(Path::to_path_buf).with_context(|| {
            format!("--direct reads the kernel from a local ISO; {medium} is a network medium")
        })?;
        Some(iso)
    } else {
        None
    };
    // Resolved before the fast path: its kernel parameters depend on it.
    let config = crate::env::boot_config()?;
    let (accel, note) = vmedia_boot::kvm::resolve_accel(spec.accel, &config);
    if let Some(note) = note {
        eprintln!("vmedia: note: {note}");
    }
    let _extracted = if let Some(iso) = direct_iso {
        let found = vmedia_boot::direct::extract(&iso)?;
        let mut cached: Vec<PathBuf> = Vec::new();
        let mut kernel = found.kernel.clone();
        if spec.firmware == Firmware::Uefi && !args.bzimage {
            // OVMF starts a -kernel through its EFI stub, which only the bzImage has.
            eprintln!(
                "vmedia: note: booting the compressed kernel: OVMF starts kernels through their \
                 EFI stub, which the uncompressed vmlinux lacks"
            );
        } else if !args.bzimage {
            let cache = config.kernel_cache();
            match vmedia_boot::kernel::pvh_kernel(&kernel.kernel, &cache)? {
                vmedia_boot::kernel::PvhKernel::Ready(vmlinux) => {
                    cached.push(vmlinux.clone());
                    kernel.kernel = vmlinux;
                }
                vmedia_boot::kernel::PvhKernel::NotApplicable(reason) => {
                    eprintln!("vmedia: note: booting the compressed kernel: {reason}");
                }
            }
        }
        if let Some(extra) = user_append.as_deref().filter(|a| !a.trim().is_empty()) {
            kernel.append = format!("{} {}", kernel.append.trim_end(), extra.trim());
        }
        let mut lean_notes = Vec::new();
        if !args.no_lean {
            spec.machine = Machine::Lean;
            if spec.firmware == Firmware::Bios {
                lean_notes.push(match vmedia_boot::qemu::find_qboot() {
                    Some(_) => "qboot firmware".to_string(),
                    None => "SeaBIOS (qboot.rom not installed)".to_string(),
                });
            }
            lean_notes.push("no HPET".into());
            if let Some(initrd) = kernel.initrd.clone() {
                let cache = config.initrd_cache();
                match vmedia_boot::initrd::plain_initrd(&initrd, &cache, spec.memory_mib)? {
                    PlainInitrd::Ready(plain) => {
                        cached.push(plain.clone());
                        kernel.initrd = Some(plain);
                        lean_notes.push("initrd decompressed on the host".into());
                    }
                    PlainInitrd::AlreadyPlain => {}
                    PlainInitrd::NotApplicable(reason) => {
                        eprintln!("vmedia: note: the guest decompresses its initrd: {reason}");
                    }
                }
            }
            let (append, added) = vmedia_boot::tune::add_fast_params(
                &kernel.append,
                accel == vmedia_boot::qemu::ResolvedAccel::Tcg,
            );
            if !added.is_empty() {
                let words: Vec<&str> = added.iter().map(|p| p.text).collect();
                lean_notes.push(format!("added {}", words.join(" ")));
            }
            kernel.append = append;
        }
        if !args.json {
            eprintln!(
                "vmedia: direct boot of {:?} from {} ({})",
                found.label,
                found.config,
                kernel.kernel.display()
            );
            if !lean_notes.is_empty() {
                eprintln!("vmedia: lean machine: {}", lean_notes.join(", "));
            }
        }
        prune_direct_cache(&config, &cached, args.cache_limit)?;
        spec.kernel = Some(kernel);
        Some(found)
    } else {
        None
    };
    let (console_log_path, console_log) =
        open_console_log(args.console_log.as_deref(), &name, args.force)?;
    let (interactive, timeout, _raw) = if marker.is_none() {
        eprintln!("vmedia: console of the VM follows; Ctrl-] stops the VM\r");
        let (keys, raw) = relay_keys(cancel);
        let interactive = Interactive {
            keys,
            screen: Box::new(std::io::stdout()),
            display: args.display.clone(),
        };
        // A person decides when it ends; a week is the longest wait accepted anywhere.
        (Some(interactive), MAX_TIMEOUT_SECS, raw)
    } else {
        (None, args.timeout, None)
    };
    let request = BootRequest {
        spec,
        accel,
        qemu: config.qemu.clone(),
        marker,
        timeout: Duration::from_secs(timeout),
        console_log,
        console_log_path,
        interactive,
    };
    let report = run::boot(request, cancel)?;
    // The terminal leaves raw mode before the timeline is printed.
    drop(_raw);
    if args.expect.is_none() {
        eprintln!("\r");
        print_report(&report, &args)?;
        return Ok(ExitCode::from(match report.outcome {
            Outcome::Booted | Outcome::Exited | Outcome::Cancelled => 0,
            Outcome::TimedOut => EXIT_TIMEOUT,
            Outcome::Panicked => EXIT_VM_ENDED,
        }));
    }
    print_report(&report, &args)?;
    Ok(ExitCode::from(match report.outcome {
        Outcome::Booted => 0,
        Outcome::TimedOut => EXIT_TIMEOUT,
        Outcome::Exited | Outcome::Panicked => EXIT_VM_ENDED,
        Outcome::Cancelled => EXIT_INTERRUPTED,
    }))
}

/// Reads the terminal in raw mode and sends its keys to the guest until Ctrl-], which sets
/// `cancel` (the run then stops the VM). Returns the keys and the raw-mode guard.
fn relay_keys(
    cancel: &'static AtomicBool,
) -> (
    std::sync::mpsc::Receiver<Vec<u8>>,
    Option<crate::vm::RawTerminal>,
) {
    use std::io::Read;
    let raw = crate::vm::RawTerminal::enter();
    let (sender, keys) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(at) = buf[..n].iter().position(|&b| b == crate::vm::DETACH_BYTE) {
                let _ = sender.send(buf[..at].to_vec());
                cancel.store(true, Ordering::SeqCst);
                break;
            }
            if sender.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    (keys, raw)
}

fn open_console_log(
    requested: Option<&Path>,
    name: &str,
    force: bool,
) -> anyhow::Result<(PathBuf, std::fs::File)> {
    // The console log is written live (so `tail -f` works), not through AtomicFile: a partial
    // log of an interrupted boot is exactly what the user needs to see.
    let (path, create_new) = match requested {
        Some(path) => (path.to_path_buf(), !force),
        None => (
            std::env::temp_dir().join(format!("vmedia-{name}.log")),
            false,
        ),
    };
    let mut options = OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let file = options.open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists; pass --force to replace it",
                path.display()
            )
        } else {
            anyhow::Error::new(e)
                .context(format!("cannot write the console log {}", path.display()))
        }
    })?;
    Ok((path, file))
}

fn print_report(report: &BootReport, args: &Args) -> anyhow::Result<()> {
    use std::io::Write;
    let t = &report.timeline;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = report.summary();
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        writeln!(out, "boot timeline ({}):", report.accel)?;
        let mut line = |label: &str, at: Option<Duration>| match at {
            Some(at) => writeln!(out, "  {:>8.3} s  {label}", at.as_secs_f64()),
            None => writeln!(out, "  {:>8}    {label}: not seen", "-"),
        };
        line("VM started", Some(Duration::ZERO))?;
        line("first firmware output", t.first_output)?;
        line(
            "firmware handed over to the boot loader/kernel",
            t.firmware_handover,
        )?;
        line("first kernel output", t.kernel_output)?;
        match (&t.marker, &t.marker_text) {
            (Some(at), Some(text)) => line(&format!("marker {text:?}"), Some(*at))?,
            _ => match &args.expect {
                Some(expect) => line(&format!("marker /{expect}/"), None)?,
                None => line("VM stopped", Some(report.total))?,
            },
        }
        writeln!(out, "console log: {}", report.console_log.display())?;
    }
    drop(out);
    let ended = |what: String| {
        eprintln!("vmedia: {what}");
        if !report.console_tail.is_empty() {
            eprintln!("--- last console lines\n{}\n---", report.console_tail);
        }
        if !report.qemu_stderr.trim().is_empty() {
            eprintln!("--- QEMU said\n{}---", report.qemu_stderr);
        }
    };
    let Some(expect) = &args.expect else {
        match report.outcome {
            Outcome::Panicked => ended("the guest kernel panicked; the VM was stopped".into()),
            Outcome::Exited => eprintln!(
                "vmedia: the VM ended ({})",
                report.qemu_exit.as_deref().unwrap_or("QEMU exited")
            ),
            _ => eprintln!("vmedia: the VM was stopped"),
        }
        return Ok(());
    };
    match report.outcome {
        Outcome::Booted => {}
        Outcome::TimedOut => ended(format!(
            "time-out: /{}/ did not appear on the console within {} s; the VM was stopped",
            expect, args.timeout
        )),
        Outcome::Exited => ended(format!(
            "the VM ended ({}) after {:.1} s before /{}/ appeared",
            report.qemu_exit.as_deref().unwrap_or("QEMU exited"),
            report.total.as_secs_f64(),
            expect
        )),
        Outcome::Panicked => ended(format!(
            "the guest kernel panicked after {:.1} s; the VM was stopped",
            report.total.as_secs_f64()
        )),
        Outcome::Cancelled => ended("interrupted; the VM was stopped".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options_are_split_from_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let disk = parse_disk(&format!("{},rw,format=qcow2", img.display()), false).unwrap();
        assert!(disk.writable);
        assert_eq!(disk.format, DiskFormat::Qcow2);
        let disk = parse_disk(&img.display().to_string(), false).unwrap();
        assert!(!disk.writable);
        assert_eq!(disk.format, DiskFormat::Raw);
    }

    #[test]
    fn disk_urls_take_the_same_options_and_are_never_paths() {
        let disk = parse_disk("nbd://h:10809/clone/web1,rw", false).unwrap();
        assert!(disk.writable);
        assert_eq!(disk.format, DiskFormat::Raw);
        assert_eq!(disk.medium.to_string(), "nbd://h:10809/clone/web1");
        let disk = parse_disk("https://h/images/d@2/disk,format=qcow2", true).unwrap();
        assert_eq!(disk.format, DiskFormat::Qcow2);
        assert!(!disk.medium.remote().unwrap().tls_verify);
        let err = parse_disk("nbd://h", false).unwrap_err().to_string();
        assert!(err.contains("no export"), "{err}");
        let err = parse_disk("nbd:/relative-looking", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nbd://"), "{err}");
    }
}

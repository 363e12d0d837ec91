//! `vmedia doctor`: what this host can boot with and what to install for the rest. The host
//! checks are `vmedia_boot::doctor`; this module adds the library and the daemon when they
//! are configured, prints the report and maps the verdict to the exit code.

use std::process::ExitCode;
use std::time::Duration;

use vmedia_boot::doctor::{self, Check, DoctorReport, HostProbe, Need, Status};

/// A daemon that does not answer within this is as good as absent for a first run.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(clap::Args)]
#[command(after_help = "Examples:
  vmedia doctor
  vmedia doctor --json | jq '.checks[] | select(.status != \"ok\")'

Checks QEMU (and that qemu-img is the same release), SeaBIOS and OVMF, KVM (a cached probe
that boots the host's Linux kernel under KVM, as --accel auto does), bridge networking
(qemu-bridge-helper and /etc/qemu/bridge.conf), free space in the state, library and temporary
folders, the library and the daemon when configured, and the peer programs the README
compares vmedia with. Every missing piece names its Debian package or setting.

Exit codes: 0 VMs can boot on this host (every required check passed), 1 they cannot.")]
pub struct Args {
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Do not boot the KVM probe when this host boot has no cached verdict yet
    #[arg(long)]
    no_probe: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let boot = crate::env::boot_config()?;
    let mut folders = vec![
        ("state".to_string(), boot.state_dir().to_path_buf()),
        ("temp".to_string(), std::env::temp_dir()),
    ];
    let library = crate::library::doctor_location();
    if let Some(location) = library.as_ref().filter(|l| !l.starts_with("s3://")) {
        folders.push(("library".to_string(), location.into()));
    }
    let probe = HostProbe {
        boot,
        search_path: std::env::var_os("PATH").unwrap_or_default(),
        folders,
        is_root: rustix::process::geteuid().is_root(),
        probe_kvm: !args.no_probe,
    };
    let mut report = doctor::check_host(&probe);
    report.extend([check_library(library.is_some()), check_daemon()]);
    print(&report, args.json)?;
    Ok(if report.can_boot {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The configured library opens (a folder or S3); skipped when none is configured.
fn check_library(configured: bool) -> Check {
    if !configured {
        return Check::ok(
            "library",
            Need::Optional,
            "none configured (--library, VMEDIA_LIBRARY or library = in config.toml)",
        );
    }
    match crate::library::doctor_open() {
        Ok(location) => Check::ok("library", Need::Recommended, format!("{location} opens")),
        Err(e) => Check::not_ok(
            "library",
            Need::Recommended,
            Status::Missing,
            format!("{e:#}"),
            "create it with vmedia library init, or fix library = in config.toml / VMEDIA_LIBRARY",
        ),
    }
}

/// The configured daemon answers HTTP (any status: a 401 still proves it is there).
fn check_daemon() -> Check {
    if !crate::env::server_configured() {
        return Check::ok(
            "daemon",
            Need::Optional,
            "none configured (VMEDIA_SERVER or server = in config.toml)",
        );
    }
    let url = crate::env::server_url(None);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(DAEMON_TIMEOUT))
        .http_status_as_error(false)
        // The daemon is reached directly; a proxy from the environment must not apply.
        .proxy(None)
        .build()
        .into();
    let mut request = agent.get(&format!("{url}/metrics"));
    if let Some(token) = crate::env::server_token() {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    match request.call() {
        Ok(response) => Check::ok(
            "daemon",
            Need::Recommended,
            format!("{url} answers (HTTP {})", response.status().as_u16()),
        ),
        Err(e) => Check::not_ok(
            "daemon",
            Need::Recommended,
            Status::Missing,
            format!("{url}: {e}"),
            "start it (systemctl start vmedia, or vmedia serve), or fix server = in config.toml / VMEDIA_SERVER",
        ),
    }
}

fn print(report: &DoctorReport, json: bool) -> anyhow::Result<()> {
    if json {
        crate::print_json(report)?;
        return Ok(());
    }
    for check in &report.checks {
        let mark = match (check.status, check.need) {
            (Status::Ok, _) => "ok",
            (_, Need::Required) => "MISSING",
            (Status::Warning, _) => "warning",
            (Status::Missing, _) => "missing",
        };
        println!("{mark:<8} {:<18} {}", check.name, check.detail);
        if let Some(fix) = &check.fix {
            println!("{:<8} {:<18} fix: {fix}", "", "");
        }
    }
    if report.can_boot {
        println!("verdict: VMs can boot on this host");
    } else {
        println!("verdict: VMs cannot boot on this host until the MISSING lines are fixed");
    }
    Ok(())
}

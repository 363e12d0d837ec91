//! Managed VMs: a folder per VM under `<state>/vms/NAME` holding `vm.toml` (readable, the
//! source of truth for what the VM is), and while it runs a daemonised QEMU with `qmp.sock`,
//! `serial.sock` (interactive console), `serial.log` (everything the console printed) and
//! `qemu.pid`. Whether a VM runs is always read from the live process, never from a flag in a
//! file, so a guest that powers itself off simply shows as stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use vmedia_io::{AtomicFile, OverwritePolicy};

use crate::error::{BootError, Result};
use crate::media;
use crate::qemu::{self, cdrom_id, command_line, find_ovmf, Launch, ResolvedAccel, SerialTarget};
use crate::qmp::Qmp;
use crate::remote::Medium;
use crate::spec::{validate_name, BootDevice, Firmware, Net, VmSpec};
use crate::store::BootConfig;

/// Linux limits unix socket paths to 108 bytes including the terminator.
const MAX_SOCKET_PATH: usize = 107;
/// How long `start` waits for a daemonised QEMU's QMP socket to answer.
const QMP_READY_WAIT: Duration = Duration::from_secs(10);
/// A QEMU that does not finish daemonising within this has hung during set-up.
const DAEMONIZE_WAIT: Duration = Duration::from_secs(60);
const CONFIG_FILE: &str = "vm.toml";

/// What is stored for a managed VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// The device class the next start boots from first, once (then cleared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_once: Option<BootDevice>,
    /// The device class every start boots from first until cleared (a continuous override,
    /// Redfish's BootSourceOverrideEnabled=Continuous); the stored order stays as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_continuous: Option<BootDevice>,
    /// Free-form `key = value` labels that select VMs in batches (e.g. a batch attach by
    /// `rack=a`); they do not change how the VM runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub spec: VmSpec,
}

impl VmConfig {
    /// The order a start uses without a one-time device: the continuous override first, then
    /// the stored order.
    pub fn normal_order(&self) -> Vec<BootDevice> {
        first_then(self.boot_continuous, &self.spec.boot_order)
    }

    /// The boot override in force.
    pub fn boot_override(&self) -> BootOverride {
        match (self.boot_once, self.boot_continuous) {
            (Some(device), _) => BootOverride::Once(device),
            (None, Some(device)) => BootOverride::Continuous(device),
            (None, None) => BootOverride::Disabled,
        }
    }
}

/// `first` (if any) and then `order` without it.
fn first_then(first: Option<BootDevice>, order: &[BootDevice]) -> Vec<BootDevice> {
    let mut out: Vec<BootDevice> = first.into_iter().collect();
    out.extend(order.iter().copied().filter(|d| Some(*d) != first));
    out
}

/// A boot override: the next start only (`Once`), every start (`Continuous`), or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootOverride {
    Disabled,
    Once(BootDevice),
    Continuous(BootDevice),
}

/// How `reset` restarted the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetHow {
    /// It was off: started.
    Started,
    /// A machine reset inside the running QEMU (the firmware reads the boot order again).
    Reset,
    /// QEMU ended and started again, because a one-time device waits: a fresh start is what
    /// applies it, and it is then cleared as on any start.
    Restarted,
}

/// Login for a network medium's URL (QEMU's curl driver sends it; never written to vm.toml).
#[derive(Clone, PartialEq, Eq)]
pub struct MediumLogin {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for MediumLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediumLogin")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A VM's live state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum VmState {
    Stopped,
    Running { pid: u32 },
}

impl VmState {
    /// Running or stopped, without the pid.
    pub fn run_state(&self) -> RunState {
        match self {
            VmState::Running { .. } => RunState::Running,
            VmState::Stopped => RunState::Stopped,
        }
    }

    /// QEMU's pid while the VM runs.
    pub fn pid(&self) -> Option<u32> {
        match self {
            VmState::Running { pid } => Some(*pid),
            VmState::Stopped => None,
        }
    }
}

/// Whether a VM runs, as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
}

impl RunState {
    /// The word reports use ("running", "stopped").
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VM in `vmedia vm list --json` (fields in the order the JSON lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmListEntry {
    pub name: String,
    /// QEMU's pid while the VM runs, else null.
    pub pid: Option<u32>,
    pub state: RunState,
}

/// A VM's definition and live state: `vmedia vm show --json` (fields in the order the JSON
/// lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatusReport {
    /// The device class the next start boots from first, once.
    pub boot_once: Option<BootDevice>,
    /// The stored definition (`vm.toml`).
    pub config: VmSpec,
    /// The VM's folder under the state folder.
    pub folder: PathBuf,
    pub name: String,
    /// QEMU's pid while the VM runs, else null.
    pub pid: Option<u32>,
    /// QEMU's own run status ("running", "paused", ...) when QMP answers.
    pub qemu_status: Option<String>,
    pub serial_log: PathBuf,
    pub state: RunState,
}

/// What `start` did.
#[derive(Debug, Clone, Serialize)]
pub struct StartReport {
    pub pid: u32,
    pub accel: &'static str,
    pub boot_order: Vec<BootDevice>,
    pub one_time: Option<BootDevice>,
    pub serial_socket: PathBuf,
    pub serial_log: PathBuf,
    pub notes: Vec<String>,
}

/// How `stop` ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopHow {
    AlreadyStopped,
    PoweredDown,
    Forced,
}

/// The VM folders under the state folder.
pub struct VmStore {
    root: PathBuf,
    qemu: PathBuf,
}

impl VmStore {
    /// The VMs under `config.state_dir`, started with `config.qemu`.
    pub fn new(config: &BootConfig) -> VmStore {
        VmStore {
            root: config.state_dir.join("vms"),
            qemu: config.qemu.clone(),
        }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.dir(name).join(CONFIG_FILE)
    }

    pub fn qmp_socket(&self, name: &str) -> PathBuf {
        self.dir(name).join("qmp.sock")
    }
    pub fn serial_socket(&self, name: &str) -> PathBuf {
        self.dir(name).join("serial.sock")
    }
    pub fn serial_log(&self, name: &str) -> PathBuf {
        self.dir(name).join("serial.log")
    }
    fn pidfile(&self, name: &str) -> PathBuf {
        self.dir(name).join("qemu.pid")
    }
    fn uefi_vars(&self, name: &str) -> PathBuf {
        self.dir(name).join("OVMF_VARS.fd")
    }

    /// Stores a new VM; an existing one is refused.
    pub fn create(&self, spec: &VmSpec) -> Result<PathBuf> {
        spec.validate()?;
        let dir = self.dir(&spec.name);
        let socket = self.serial_socket(&spec.name);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(BootError::Vm {
                name: spec.name.clone(),
                reason: format!(
                    "would need socket path {} over Linux's {MAX_SOCKET_PATH}-byte limit; use a shorter name or VMEDIA_HOME",
                    socket.display()
                ),
            });
        }
        if self.config_path(&spec.name).exists() {
            return Err(BootError::Vm {
                name: spec.name.clone(),
                reason: format!(
                    "already exists ({}); remove it with vmedia vm rm",
                    dir.display()
                ),
            });
        }
        std::fs::create_dir_all(&dir).map_err(|e| BootError::io(&dir, e))?;
        self.save(
            &VmConfig {
                boot_once: None,
                boot_continuous: None,
                labels: BTreeMap::new(),
                spec: spec.clone(),
            },
            OverwritePolicy::Refuse,
        )?;
        Ok(self.config_path(&spec.name))
    }

    pub fn load(&self, name: &str) -> Result<VmConfig> {
        validate_name(name)?;
        let path = self.config_path(name);
        let text =
            match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BootError::Vm {
                    name: name.into(),
                    reason:
                        "does not exist (vmedia vm list shows the VMs; vmedia vm create makes one)"
                            .into(),
                }),
                Err(e) => return Err(BootError::io(&path, e)),
            };
        let config: VmConfig = toml::from_str(&text).map_err(|e| BootError::Config {
            file: path.clone(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0),
            reason: e.message().to_string(),
        })?;
        if config.spec.name != name {
            return Err(BootError::Config {
                file: path,
                line: 0,
                reason: format!(
                    "name = {:?} does not match the folder {name:?}",
                    config.spec.name
                ),
            });
        }
        config.spec.validate()?;
        Ok(config)
    }

    pub fn save(&self, config: &VmConfig, policy: OverwritePolicy) -> Result<()> {
        let path = self.config_path(&config.spec.name);
        let text = toml::to_string_pretty(config)
            .map_err(|e| BootError::Invalid(format!("cannot encode {}: {e}", path.display())))?;
        let mut file = AtomicFile::create(&path, policy).map_err(|e| BootError::io(&path, e))?;
        use std::io::Write;
        file.file_mut()
            .write_all(format!("# vmedia VM; edit while it is stopped\n{text}").as_bytes())
            .map_err(|e| BootError::io(&path, e))?;
        file.commit().map_err(|e| BootError::io(&path, e))
    }

    /// Names of the stored VMs, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(BootError::io(&self.root, e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(CONFIG_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Running when the pid in qemu.pid is alive and is the QEMU serving this VM's QMP socket
    /// (a reused pid of another program does not count).
    pub fn state(&self, name: &str) -> VmState {
        let Ok(text) = std::fs::read_to_string(self.pidfile(name)) else {
            return VmState::Stopped;
        };
        let Ok(pid) = text.trim().parse::<u32>() else {
            return VmState::Stopped;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return VmState::Stopped;
        };
        let socket = self.qmp_socket(name);
        let needle = socket.to_string_lossy().replace(',', ",,");
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(&needle) && !is_zombie(pid) {
            VmState::Running { pid }
        } else {
            VmState::Stopped
        }
    }

    fn running_pid(&self, name: &str) -> Option<u32> {
        match self.state(name) {
            VmState::Running { pid } => Some(pid),
            VmState::Stopped => None,
        }
    }

    fn require_running(&self, name: &str) -> Result<u32> {
        self.running_pid(name).ok_or_else(|| BootError::Vm {
            name: name.into(),
            reason: "is not running (vmedia vm start starts it)".into(),
        })
    }

    /// Connects to a running VM's QMP.
    pub fn qmp(&self, name: &str) -> Result<Qmp> {
        self.require_running(name)?;
        Qmp::connect(&self.qmp_socket(name), Duration::from_secs(5))
    }

    /// Starts the VM in the background and returns once QEMU runs it.
    pub fn start(&self, name: &str, accel: ResolvedAccel) -> Result<StartReport> {
        let mut config = self.load(name)?;
        if let Some(pid) = self.running_pid(name) {
            return Err(BootError::Vm {
                name: name.into(),
                reason: format!("is already running (pid {pid})"),
            });
        }
        check_media(&config.spec)?;
        let dir = self.dir(name);
        let vars = if config.spec.firmware == Firmware::Uefi {
            let vars = self.uefi_vars(name);
            if !vars.exists() {
                let (_, template) = find_ovmf()?;
                std::fs::copy(&template, &vars).map_err(|e| BootError::io(&template, e))?;
            }
            Some(vars)
        } else {
            None
        };
        for stale in [
            self.qmp_socket(name),
            self.serial_socket(name),
            self.pidfile(name),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        let stored_order = config.normal_order();
        let one_time = config.boot_once;
        let order = first_then(one_time, &stored_order);
        let launch = Launch {
            spec: &config.spec,
            accel,
            boot_order: order.clone(),
            serial: SerialTarget::Socket {
                path: self.serial_socket(name),
                log: self.serial_log(name),
            },
            qmp_socket: self.qmp_socket(name),
            uefi_vars: vars,
            pidfile: Some(self.pidfile(name)),
            no_reboot: false,
        };
        let args = command_line(&launch)?;
        let mut command = Command::new(&self.qemu);
        command
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .spawn()
            .map_err(|source| BootError::Spawn { program, source })?;
        let stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stderr) = stderr {
                use std::io::Read;
                let _ = stderr.by_ref().take(64 * 1024).read_to_string(&mut text);
            }
            text
        });
        let deadline = Instant::now() + DAEMONIZE_WAIT;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BootError::QemuFailed {
                    message: "QEMU did not finish starting within 60 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = reader.join().unwrap_or_default();
        if !status.success() {
            return Err(BootError::QemuFailed {
                message: stderr.trim().to_string(),
            });
        }
        let pid = self
            .require_running(name)
            .map_err(|_| BootError::QemuFailed {
                message: format!(
                    "QEMU daemonised but is not running (it may have exited at once): {}",
                    stderr.trim()
                ),
            })?;
        let mut notes = Vec::new();
        if one_time.is_some() {
            config.boot_once = None;
            self.save(&config, OverwritePolicy::Replace)?;
            // The firmware already read this boot's order; setting the stored order now makes
            // a reboot inside this run use it again (QEMU rebuilds the order on reset).
            if let Err(e) = self.restore_boot_order(name, &config.spec, &order, &stored_order) {
                notes.push(format!(
                    "a guest reboot during this run repeats the one-time device ({e}); the next start uses the stored order"
                ));
            }
        }
        let _ = Qmp::connect(&self.qmp_socket(name), QMP_READY_WAIT)?;
        Ok(StartReport {
            pid,
            accel: match accel {
                ResolvedAccel::Kvm => "kvm",
                ResolvedAccel::Tcg => "tcg",
            },
            boot_order: order,
            one_time,
            serial_socket: self.serial_socket(name),
            serial_log: self.serial_log(name),
            notes,
        })
    }

    fn restore_boot_order(
        &self,
        name: &str,
        spec: &VmSpec,
        current: &[BootDevice],
        stored: &[BootDevice],
    ) -> Result<()> {
        let mut qmp = Qmp::connect(&self.qmp_socket(name), QMP_READY_WAIT)?;
        let now = qemu::boot_indexes(spec, current);
        let wanted = qemu::boot_indexes(spec, stored);
        let devices = |ix: &qemu::BootIndexes| {
            let mut all: Vec<(String, Option<u32>)> = Vec::new();
            all.extend(ix.cdroms.iter().enumerate().map(|(n, i)| (cdrom_id(n), *i)));
            all.extend(
                ix.disks
                    .iter()
                    .enumerate()
                    .map(|(n, i)| (format!("disk{n}"), *i)),
            );
            if spec.net != Net::None {
                all.push(("nic0".to_string(), ix.net));
            }
            all
        };
        let set = |qmp: &mut Qmp, id: &str, value: i64| {
            qmp.execute(
                "qom-set",
                Some(json!({"path": format!("/machine/peripheral/{id}"), "property": "bootindex", "value": value})),
            )
        };
        // Clear first: QEMU refuses two devices with the same index at any moment.
        for (id, index) in devices(&now) {
            if index.is_some() {
                set(&mut qmp, &id, -1)?;
            }
        }
        for (id, index) in devices(&wanted) {
            if let Some(index) = index {
                set(&mut qmp, &id, i64::from(index))?;
            }
        }
        Ok(())
    }

    /// ACPI power button, then force after `grace`.
    pub fn stop(&self, name: &str, grace: Duration) -> Result<StopHow> {
        self.load(name)?;
        let Some(pid) = self.running_pid(name) else {
            return Ok(StopHow::AlreadyStopped);
        };
        if let Ok(mut qmp) = Qmp::connect(&self.qmp_socket(name), Duration::from_secs(2)) {
            let _ = qmp.execute("system_powerdown", None);
        }
        if wait_gone(pid, grace) {
            return Ok(StopHow::PoweredDown);
        }
        self.kill(name)?;
        Ok(StopHow::Forced)
    }

    /// Ends QEMU at once (QMP quit, then SIGKILL).
    pub fn kill(&self, name: &str) -> Result<StopHow> {
        self.load(name)?;
        let Some(pid) = self.running_pid(name) else {
            return Ok(StopHow::AlreadyStopped);
        };
        if let Ok(mut qmp) = Qmp::connect(&self.qmp_socket(name), Duration::from_secs(1)) {
            let _ = qmp.execute("quit", None);
        }
        if !wait_gone(pid, Duration::from_secs(3)) {
            // The pid was verified to be this VM's QEMU just above.
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            wait_gone(pid, Duration::from_secs(5));
        }
        Ok(StopHow::Forced)
    }

    /// Deletes a stopped VM's folder (its own files only; media are never touched).
    pub fn remove(&self, name: &str) -> Result<()> {
        self.load(name)?;
        if let Some(pid) = self.running_pid(name) {
            return Err(BootError::Vm {
                name: name.into(),
                reason: format!("is running (pid {pid}); stop or kill it first, or pass --force"),
            });
        }
        let dir = self.dir(name);
        for file in [
            CONFIG_FILE,
            "qmp.sock",
            "serial.sock",
            "serial.log",
            "qemu.pid",
            "OVMF_VARS.fd",
        ] {
            let path = dir.join(file);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BootError::io(&path, e)),
            }
        }
        std::fs::remove_dir(&dir).map_err(|e| BootError::io(&dir, e))
    }

    /// Records a one-time boot device for the next start.
    pub fn boot_once(&self, name: &str, device: BootDevice) -> Result<()> {
        let mut config = self.load(name)?;
        let spec = &config.spec;
        let present = match device {
            BootDevice::Cdrom => spec.cdroms.iter().any(|c| c.medium.is_some()),
            BootDevice::Disk => !spec.disks.is_empty(),
            BootDevice::Net => spec.net != Net::None,
        };
        if !present {
            return Err(BootError::Vm {
                name: name.into(),
                reason: format!("has no {device} to boot from"),
            });
        }
        config.boot_once = Some(device);
        self.save(&config, OverwritePolicy::Replace)
    }

    /// Puts `image` in CD slot `slot`: live through QMP when running, and in vm.toml either way.
    /// Returns true when the running guest got it.
    pub fn insert(&self, name: &str, slot: usize, image: &Path) -> Result<bool> {
        let mut config = self.load(name)?;
        check_slot(name, &config.spec, slot)?;
        media::check_cdrom_image(image)?;
        let image = media::absolute(image)?;
        let live = self.running_pid(name).is_some();
        if live {
            let mut qmp = self.qmp(name)?;
            let filename = image.to_str().ok_or_else(|| {
                BootError::Invalid(format!("{}: QEMU needs UTF-8 paths", image.display()))
            })?;
            qmp.execute(
                "blockdev-change-medium",
                Some(json!({"id": cdrom_id(slot), "filename": filename, "format": "raw", "read-only-mode": "read-only"})),
            )
            .map_err(|e| tray_error(name, slot, e))?;
        }
        config.spec.cdroms[slot].medium = Some(image.into());
        self.save(&config, OverwritePolicy::Replace)?;
        Ok(live)
    }

    /// Removes the medium from CD slot `slot`; `force` ejects even when the guest locked the
    /// tray.
    pub fn eject(&self, name: &str, slot: usize, force: bool) -> Result<bool> {
        let mut config = self.load(name)?;
        check_slot(name, &config.spec, slot)?;
        let live = self.running_pid(name).is_some();
        if live {
            let mut qmp = self.qmp(name)?;
            qmp.execute("eject", Some(json!({"id": cdrom_id(slot), "force": force})))
                .map_err(|e| tray_error(name, slot, e))?;
        }
        config.spec.cdroms[slot].medium = None;
        self.save(&config, OverwritePolicy::Replace)?;
        Ok(live)
    }

    /// Replaces the VM's labels (each key and value checked against `MAX_LABEL`).
    pub fn set_labels(&self, name: &str, labels: BTreeMap<String, String>) -> Result<()> {
        check_labels(&labels)?;
        let mut config = self.load(name)?;
        config.labels = labels;
        self.save(&config, OverwritePolicy::Replace)
    }

    /// Sets or clears the boot override. A device class the VM does not have is refused; a CD
    /// slot may still be empty (media usually go in after the override is set).
    pub fn set_boot_override(&self, name: &str, wanted: BootOverride) -> Result<()> {
        let mut config = self.load(name)?;
        if let BootOverride::Once(device) | BootOverride::Continuous(device) = wanted {
            let spec = &config.spec;
            let present = match device {
                BootDevice::Cdrom => !spec.cdroms.is_empty(),
                BootDevice::Disk => !spec.disks.is_empty(),
                BootDevice::Net => spec.net != Net::None,
            };
            if !present {
                return Err(BootError::Vm {
                    name: name.into(),
                    reason: format!("has no {device} to boot from"),
                });
            }
        }
        (config.boot_once, config.boot_continuous) = match wanted {
            BootOverride::Disabled => (None, None),
            BootOverride::Once(device) => (Some(device), config.boot_continuous),
            BootOverride::Continuous(device) => (None, Some(device)),
        };
        self.save(&config, OverwritePolicy::Replace)
    }

    /// A hard reset. A stopped VM is started. A one-time device that waits needs a fresh
    /// start to apply (QEMU takes the boot order for the first boot from its command line and
    /// the firmware reads the order at reset), so then QEMU is ended and started again;
    /// otherwise the machine resets inside the running QEMU.
    pub fn reset(&self, name: &str, accel: ResolvedAccel) -> Result<ResetHow> {
        let config = self.load(name)?;
        if self.running_pid(name).is_none() {
            self.start(name, accel)?;
            return Ok(ResetHow::Started);
        }
        if config.boot_once.is_some() {
            self.kill(name)?;
            self.start(name, accel)?;
            return Ok(ResetHow::Restarted);
        }
        self.qmp(name)?.execute("system_reset", None)?;
        Ok(ResetHow::Reset)
    }

    /// Presses the ACPI power button and returns at once (the guest shuts down in its own
    /// time); false when the VM was not running.
    pub fn request_powerdown(&self, name: &str) -> Result<bool> {
        self.load(name)?;
        if self.running_pid(name).is_none() {
            return Ok(false);
        }
        self.qmp(name)?.execute("system_powerdown", None)?;
        Ok(true)
    }

    /// Puts `medium` in CD slot `slot`, a local image or a network URL that QEMU reads itself
    /// (curl for http(s), its NBD client for nbd://: nothing is downloaded first). Live through
    /// QMP when the VM runs; stored in vm.toml unless a `login` was given (vmedia writes no
    /// passwords to vm.toml, so such a medium lasts as long as this QEMU). Returns true when the
    /// running guest got it.
    pub fn insert_medium(
        &self,
        name: &str,
        slot: usize,
        medium: &Medium,
        login: Option<&MediumLogin>,
    ) -> Result<bool> {
        let remote = match medium {
            Medium::File(path) if login.is_none() => return self.insert(name, slot, path),
            Medium::File(_) => {
                return Err(BootError::Invalid(
                    "a user name and password apply to http(s) media only".into(),
                ))
            }
            Medium::Remote(remote) => remote,
        };
        let mut config = self.load(name)?;
        check_slot(name, &config.spec, slot)?;
        let live = self.running_pid(name).is_some();
        if login.is_some() && !live {
            return Err(BootError::Vm {
                name: name.into(),
                reason: "is not running: a medium with a login can only be inserted into a running VM (vmedia keeps no passwords in vm.toml)".into(),
            });
        }
        if live {
            let mut qmp = self.qmp(name)?;
            live_insert_remote(&mut qmp, slot, remote, login)
                .map_err(|e| tray_error(name, slot, e))?;
        }
        if login.is_none() {
            config.spec.cdroms[slot].medium = Some(medium.clone());
            self.save(&config, OverwritePolicy::Replace)?;
        }
        if live {
            // A CD that went in while the VM ran has no boot index yet: give every device the
            // index of the normal order so a guest reboot or a reset can boot it.
            let mut spec = config.spec.clone();
            spec.cdroms[slot].medium = Some(medium.clone());
            let _ = self.apply_boot_order(name, &spec, &config.normal_order());
        }
        Ok(live)
    }

    /// Sets every device's boot index for `order` in a running QEMU (read at the next reset).
    fn apply_boot_order(&self, name: &str, spec: &VmSpec, order: &[BootDevice]) -> Result<()> {
        let mut qmp = Qmp::connect(&self.qmp_socket(name), QMP_READY_WAIT)?;
        let wanted = qemu::boot_indexes(spec, order);
        let mut ids: Vec<String> = (0..spec.cdroms.len()).map(cdrom_id).collect();
        ids.extend((0..spec.disks.len()).map(|n| format!("disk{n}")));
        if spec.net != Net::None {
            ids.push("nic0".to_string());
        }
        let set = |qmp: &mut Qmp, id: &str, value: i64| {
            qmp.execute(
                "qom-set",
                Some(json!({"path": format!("/machine/peripheral/{id}"), "property": "bootindex", "value": value})),
            )
        };
        // Clear all first: QEMU refuses two devices with the same index at any moment.
        for id in &ids {
            set(&mut qmp, id, -1)?;
        }
        let mut numbered: Vec<(String, Option<u32>)> = Vec::new();
        numbered.extend(
            wanted
                .cdroms
                .iter()
                .enumerate()
                .map(|(n, i)| (cdrom_id(n), *i)),
        );
        numbered.extend(
            wanted
                .disks
                .iter()
                .enumerate()
                .map(|(n, i)| (format!("disk{n}"), *i)),
        );
        if spec.net != Net::None {
            numbered.push(("nic0".to_string(), wanted.net));
        }
        for (id, index) in numbered {
            if let Some(index) = index {
                set(&mut qmp, &id, i64::from(index))?;
            }
        }
        Ok(())
    }

    /// Every stored VM with its live state, sorted by name.
    pub fn list_report(&self) -> Result<Vec<VmListEntry>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|name| {
                let state = self.state(&name);
                VmListEntry {
                    name,
                    pid: state.pid(),
                    state: state.run_state(),
                }
            })
            .collect())
    }

    /// A VM's definition, live state and files.
    pub fn status_report(&self, name: &str) -> Result<VmStatusReport> {
        let config = self.load(name)?;
        let state = self.state(name);
        let qemu_status = self.status(name);
        Ok(VmStatusReport {
            boot_once: config.boot_once,
            config: config.spec,
            folder: self.dir(name),
            name: name.to_string(),
            pid: state.pid(),
            qemu_status,
            serial_log: self.serial_log(name),
            state: state.run_state(),
        })
    }

    /// QEMU's own run status ("running", "paused", "shutdown"...) of a running VM.
    pub fn status(&self, name: &str) -> Option<String> {
        let mut qmp = self.qmp(name).ok()?;
        let answer = qmp.execute("query-status", None).ok()?;
        answer
            .get("status")
            .and_then(|s| s.as_str())
            .map(str::to_string)
    }
}

/// Longest label key or value, and most labels on one VM: labels are short selectors.
pub const MAX_LABEL: usize = 128;
pub const MAX_LABELS: usize = 64;

/// Label keys are names (letters, digits, `.`, `_`, `-`, `/`); values are printable without
/// `,` or `=` (the selector syntax `k=v,k2=v2` splits on them).
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(BootError::Invalid(format!(
            "{} labels: at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        let value_ok = value.len() <= MAX_LABEL
            && value
                .chars()
                .all(|c| !c.is_control() && !matches!(c, ',' | '='));
        if !key_ok || !value_ok {
            return Err(BootError::Invalid(format!(
                "label {key:?}={value:?}: keys are 1 to {MAX_LABEL} letters, digits, '.', '_', '-' or '/'; values at most {MAX_LABEL} printable characters without ',' or '='"
            )));
        }
    }
    Ok(())
}

fn check_slot(name: &str, spec: &VmSpec, slot: usize) -> Result<()> {
    if slot >= spec.cdroms.len() {
        return Err(BootError::Vm {
            name: name.into(),
            reason: format!(
                "has {} CD slot(s) (0..{}), no slot {slot}; create it with --cdrom-slots",
                spec.cdroms.len(),
                spec.cdroms.len().saturating_sub(1)
            ),
        });
    }
    Ok(())
}

/// Turns QEMU's tray-lock refusal into advice.
fn tray_error(name: &str, slot: usize, error: BootError) -> BootError {
    let text = error.to_string();
    if text.contains("locked") || text.contains("Tray") || text.contains("tray") {
        return BootError::Vm {
            name: name.into(),
            reason: format!(
                "has the tray of CD slot {slot} locked by the guest (a mounted disc or a program using the drive); \
                 the guest was asked to release it: unmount the disc in the guest and retry, or pass --force to eject anyway"
            ),
        };
    }
    error
}

/// QMP node names vmedia gives the media it inserts live (so it can delete them again).
const LIVE_NODE_PREFIX: &str = "vmedia-cd";

/// Opens `remote` as a new read-only block node and swaps it into CD slot `slot`: the node is
/// opened first, so an unreachable URL leaves the old medium in place.
fn live_insert_remote(
    qmp: &mut Qmp,
    slot: usize,
    remote: &crate::remote::Remote,
    login: Option<&MediumLogin>,
) -> Result<()> {
    use crate::remote::RemoteUrl;
    let id = cdrom_id(slot);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() & 0xffff_ffff_ffff)
        .unwrap_or(0);
    let node = format!("{LIVE_NODE_PREFIX}{slot}-{stamp:012x}");
    let file = match &remote.url {
        RemoteUrl::Nbd { host, port, export } => {
            if login.is_some() {
                return Err(BootError::Invalid(
                    "an nbd:// medium takes no user name or password".into(),
                ));
            }
            json!({"driver": "nbd", "server": {"type": "inet", "host": host.qemu_form(), "port": port.to_string()}, "export": export})
        }
        RemoteUrl::Http { secure, .. } => {
            let mut file = json!({"driver": if *secure { "https" } else { "http" }, "url": remote.url.to_string()});
            if *secure {
                file["sslverify"] = json!(remote.tls_verify);
            }
            if let Some(login) = login {
                let secret = format!("{node}-pw");
                qmp.execute(
                    "object-add",
                    Some(json!({"qom-type": "secret", "id": secret, "data": login.password})),
                )?;
                file["username"] = json!(login.user);
                file["password-secret"] = json!(secret);
            }
            file
        }
    };
    qmp.execute(
        "blockdev-add",
        Some(json!({"node-name": node, "driver": "raw", "read-only": true, "file": file})),
    )?;
    let old = current_node(qmp, &id);
    qmp.execute("blockdev-open-tray", Some(json!({"id": id, "force": true})))?;
    qmp.execute("blockdev-remove-medium", Some(json!({"id": id})))?;
    qmp.execute(
        "blockdev-insert-medium",
        Some(json!({"id": id, "node-name": node})),
    )?;
    qmp.execute("blockdev-close-tray", Some(json!({"id": id})))?;
    if let Some(old) = old.filter(|n| n.starts_with(LIVE_NODE_PREFIX)) {
        // The previous live medium is no longer attached; free its connection.
        let _ = qmp.execute("blockdev-del", Some(json!({"node-name": old})));
    }
    Ok(())
}

/// The node name of the medium in the drive with qdev id `id`, if any.
fn current_node(qmp: &mut Qmp, id: &str) -> Option<String> {
    let block = qmp.execute("query-block", None).ok()?;
    block.as_array()?.iter().find_map(|dev| {
        (dev.get("qdev").and_then(|q| q.as_str()) == Some(id)
            || dev
                .get("qdev")
                .and_then(|q| q.as_str())
                .is_some_and(|q| q.ends_with(&format!("/{id}"))))
        .then(|| {
            dev.get("inserted")
                .and_then(|i| i.get("node-name"))
                .and_then(|n| n.as_str())
                .map(str::to_string)
        })
        .flatten()
    })
}

/// Every stored medium must still be there before QEMU starts.
fn check_media(spec: &VmSpec) -> Result<()> {
    // Network media are checked by QEMU when it connects: a daemon may start after the VM's
    // definition was written.
    for path in spec
        .cdroms
        .iter()
        .filter_map(|s| s.medium.as_ref().and_then(|m| m.as_path()))
    {
        media::check_cdrom_image(path)?;
    }
    for path in spec.disks.iter().filter_map(|d| d.medium.as_path()) {
        std::fs::metadata(path).map_err(|e| BootError::io(path, e))?;
    }
    if let Some(kernel) = &spec.kernel {
        std::fs::metadata(&kernel.kernel).map_err(|e| BootError::io(&kernel.kernel, e))?;
    }
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::CdromSlot;

    #[test]
    fn create_load_round_trip_and_refuse_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::new(&BootConfig::new(dir.path()));
        let mut spec = VmSpec::new("lab1");
        spec.cdroms = vec![CdromSlot::default()];
        store.create(&spec).unwrap();
        assert_eq!(store.load("lab1").unwrap().spec, spec);
        assert!(store
            .create(&spec)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        assert_eq!(store.list().unwrap(), vec!["lab1"]);
        assert_eq!(store.state("lab1"), VmState::Stopped);
    }

    #[test]
    fn boot_once_needs_such_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::new(&BootConfig::new(dir.path()));
        store.create(&VmSpec::new("nonet")).unwrap();
        assert!(store
            .boot_once("nonet", BootDevice::Net)
            .unwrap_err()
            .to_string()
            .contains("no net"));
    }

    #[test]
    fn slot_out_of_range_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::new(&BootConfig::new(dir.path()));
        store.create(&VmSpec::new("one")).unwrap();
        let err = store.eject("one", 3, false).unwrap_err().to_string();
        assert!(err.contains("no slot 3"), "{err}");
    }

    #[test]
    fn stale_pidfile_of_another_process_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::new(&BootConfig::new(dir.path()));
        store.create(&VmSpec::new("stale")).unwrap();
        std::fs::write(store.pidfile("stale"), std::process::id().to_string()).unwrap();
        assert_eq!(store.state("stale"), VmState::Stopped);
    }

    #[test]
    fn hand_edited_config_with_wrong_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = VmStore::new(&BootConfig::new(dir.path()));
        store.create(&VmSpec::new("a")).unwrap();
        let path = store.config_path("a");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("name = \"a\"", "name = \"b\"");
        std::fs::write(&path, text).unwrap();
        assert!(store
            .load("a")
            .unwrap_err()
            .to_string()
            .contains("does not match"));
    }
}

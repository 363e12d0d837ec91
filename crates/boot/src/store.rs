//! Explicit configuration of the boot crate: where vmedia keeps managed VMs and cached facts,
//! and which QEMU binary it runs. This crate reads no environment variables; the binary maps
//! its environment to a [`BootConfig`] (the state folder by [`state_dir_from`]: `$VMEDIA_HOME`,
//! else `$XDG_DATA_HOME/vmedia`, else `~/.local/share/vmedia`), a daemon passes its own.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::error::{BootError, Result};

/// The emulator run unless the configuration names another (a wrapper, another build).
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// Where the boot crate keeps its state and which emulator it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// The state folder (created on first use): `vms/`, `kvm-probe.json`, `kernels/`,
    /// `initrds/`.
    pub state_dir: PathBuf,
    /// The QEMU system emulator: a program name looked up in `PATH`, or a path.
    pub qemu: PathBuf,
}

impl BootConfig {
    /// State under `state_dir`, the default emulator.
    pub fn new(state_dir: impl Into<PathBuf>) -> BootConfig {
        BootConfig {
            state_dir: state_dir.into(),
            qemu: PathBuf::from(DEFAULT_QEMU),
        }
    }

    /// The same state, another emulator.
    pub fn with_qemu(mut self, qemu: impl Into<PathBuf>) -> BootConfig {
        self.qemu = qemu.into();
        self
    }

    /// Where uncompressed PVH kernels are cached (`--direct`).
    pub fn kernel_cache(&self) -> PathBuf {
        self.state_dir.join("kernels")
    }

    /// Where plain initrds are cached (`--direct` on the lean machine).
    pub fn initrd_cache(&self) -> PathBuf {
        self.state_dir.join("initrds")
    }

    /// The state folder.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// The state folder from the values of `VMEDIA_HOME`, `XDG_DATA_HOME` and `HOME` as the
/// caller read them (an empty value counts as unset).
pub fn state_dir_from(
    vmedia_home: Option<&OsStr>,
    xdg_data_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> Result<PathBuf> {
    let set = |v: Option<&OsStr>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = set(vmedia_home) {
        return Ok(home);
    }
    if let Some(data) = set(xdg_data_home) {
        return Ok(data.join("vmedia"));
    }
    if let Some(home) = set(home) {
        return Ok(home.join(".local/share/vmedia"));
    }
    Err(BootError::Invalid(
        "no state folder: set VMEDIA_HOME (or XDG_DATA_HOME or HOME)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_folder_follows_vmedia_home_then_xdg_then_home() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            state_dir_from(os("/v"), os("/x"), os("/h")).unwrap(),
            Path::new("/v")
        );
        assert_eq!(
            state_dir_from(os(""), os("/x"), os("/h")).unwrap(),
            Path::new("/x/vmedia")
        );
        assert_eq!(
            state_dir_from(None, None, os("/h")).unwrap(),
            Path::new("/h/.local/share/vmedia")
        );
        assert!(state_dir_from(None, os(""), None).is_err());
    }
}

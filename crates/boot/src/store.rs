//! Where vmedia keeps managed VMs and cached facts: `$VMEDIA_HOME`, else
//! `$XDG_DATA_HOME/vmedia`, else `~/.local/share/vmedia`.

use std::path::PathBuf;

use crate::error::{BootError, Result};

/// The state folder (not created here).
pub fn state_dir() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("VMEDIA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(data).join("vmedia"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home).join(".local/share/vmedia"));
    }
    Err(BootError::Invalid(
        "no state folder: set VMEDIA_HOME (or XDG_DATA_HOME or HOME)".into(),
    ))
}

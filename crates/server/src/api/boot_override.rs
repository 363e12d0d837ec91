//! The one boot-override model the REST API (`api/systems.rs`) and Redfish
//! (`redfish/systems.rs`) share: the typed request (enabled Disabled/Once/Continuous, target
//! None/Pxe/Cd/Hdd/UefiHttp, mode Legacy/UEFI), one parser for either API's spelling, one
//! resolution against the VM's current override and firmware, one apply path on the VM store,
//! and one description of the current state. Each API only names the fields its own way.

use vmedia_boot::managed::{BootOverride, VmConfig, VmStore};
use vmedia_boot::spec::{BootDevice, Firmware};
use vmedia_boot::BootError;
use vmedia_io::OverwritePolicy;

/// Whether and how long the override holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enabled {
    Disabled,
    /// The next start only: the start that applies it clears it.
    Once,
    Continuous,
}

/// What the override boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// No override.
    None,
    Pxe,
    Cd,
    Hdd,
    /// The network device under UEFI firmware (OVMF boots it over HTTP or PXE).
    UefiHttp,
}

/// The firmware the VM starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Legacy,
    Uefi,
}

/// Which API's spelling: the names of the fields and of their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `{"mode": "once", "target": "cd", "firmware": "uefi"}`.
    Rest,
    /// `{"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Cd",
    /// "BootSourceOverrideMode": "UEFI"}`.
    Redfish,
}

/// The field a value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Enabled,
    Target,
    Mode,
}

impl Dialect {
    /// The field's name in this API.
    pub fn field(self, field: Field) -> &'static str {
        match (self, field) {
            (Dialect::Rest, Field::Enabled) => "mode",
            (Dialect::Rest, Field::Target) => "target",
            (Dialect::Rest, Field::Mode) => "firmware",
            (Dialect::Redfish, Field::Enabled) => "BootSourceOverrideEnabled",
            (Dialect::Redfish, Field::Target) => "BootSourceOverrideTarget",
            (Dialect::Redfish, Field::Mode) => "BootSourceOverrideMode",
        }
    }
}

/// A value and its spelling in each API.
trait Named: Copy + Sized + 'static {
    const ALL: &'static [Self];
    fn names(self) -> (&'static str, &'static str);

    fn name(self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Rest => self.names().0,
            Dialect::Redfish => self.names().1,
        }
    }

    fn parse(text: &str, dialect: Dialect) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name(dialect) == text)
    }

    fn allowed(dialect: Dialect) -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.name(dialect)).collect()
    }
}

impl Named for Enabled {
    const ALL: &'static [Enabled] = &[Enabled::Disabled, Enabled::Once, Enabled::Continuous];
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Enabled::Disabled => ("disabled", "Disabled"),
            Enabled::Once => ("once", "Once"),
            Enabled::Continuous => ("continuous", "Continuous"),
        }
    }
}

impl Named for Target {
    const ALL: &'static [Target] = &[
        Target::None,
        Target::Pxe,
        Target::Cd,
        Target::Hdd,
        Target::UefiHttp,
    ];
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Target::None => ("none", "None"),
            Target::Pxe => ("pxe", "Pxe"),
            Target::Cd => ("cd", "Cd"),
            Target::Hdd => ("hdd", "Hdd"),
            Target::UefiHttp => ("uefihttp", "UefiHttp"),
        }
    }
}

impl Named for Mode {
    const ALL: &'static [Mode] = &[Mode::Legacy, Mode::Uefi];
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Mode::Legacy => ("bios", "Legacy"),
            Mode::Uefi => ("uefi", "UEFI"),
        }
    }
}

impl Enabled {
    pub fn name(self, dialect: Dialect) -> &'static str {
        Named::name(self, dialect)
    }
    pub fn allowed(dialect: Dialect) -> Vec<&'static str> {
        <Self as Named>::allowed(dialect)
    }
}

impl Target {
    pub fn name(self, dialect: Dialect) -> &'static str {
        Named::name(self, dialect)
    }
    pub fn allowed(dialect: Dialect) -> Vec<&'static str> {
        <Self as Named>::allowed(dialect)
    }
    fn of(device: BootDevice) -> Target {
        match device {
            BootDevice::Cdrom => Target::Cd,
            BootDevice::Disk => Target::Hdd,
            BootDevice::Net => Target::Pxe,
        }
    }
}

impl Mode {
    pub fn name(self, dialect: Dialect) -> &'static str {
        Named::name(self, dialect)
    }
    pub fn allowed(dialect: Dialect) -> Vec<&'static str> {
        <Self as Named>::allowed(dialect)
    }
    pub fn firmware(self) -> Firmware {
        match self {
            Mode::Legacy => Firmware::Bios,
            Mode::Uefi => Firmware::Uefi,
        }
    }
    fn of(firmware: Firmware) -> Mode {
        match firmware {
            Firmware::Bios => Mode::Legacy,
            Firmware::Uefi => Mode::Uefi,
        }
    }
}

/// Why a boot-override request cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("{property} {value:?}: one of {allowed}")]
    NotInList {
        property: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{property} {value}: needs UEFI firmware")]
    UefiHttpNeedsUefi {
        property: &'static str,
        value: &'static str,
    },
    #[error("{property} {value} needs a target, and the system has none to keep")]
    NeedsTarget {
        property: &'static str,
        value: &'static str,
    },
    #[error("system {0} is running: its firmware (boot mode) changes only while it is off")]
    Running(String),
    #[error(transparent)]
    Store(#[from] BootError),
}

/// A boot-override change: each field absent keeps what the system has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverrideRequest {
    pub enabled: Option<Enabled>,
    pub target: Option<Target>,
    pub mode: Option<Mode>,
    pub dialect: Option<Dialect>,
}

/// What a request comes to on one system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The override to store; None: leave it.
    pub boot_override: Option<BootOverride>,
    /// The firmware to switch to; None: leave it.
    pub firmware: Option<Firmware>,
}

/// The override a system has now, in the model's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub enabled: Enabled,
    /// `Target::None` when disabled.
    pub target: Target,
    pub mode: Mode,
}

/// The system's override and firmware, described.
pub fn current(config: &VmConfig) -> Current {
    let (enabled, target) = match config.boot_override() {
        BootOverride::Disabled => (Enabled::Disabled, Target::None),
        BootOverride::Once(d) => (Enabled::Once, Target::of(d)),
        BootOverride::Continuous(d) => (Enabled::Continuous, Target::of(d)),
    };
    Current {
        enabled,
        target,
        mode: Mode::of(config.spec.firmware),
    }
}

fn parse_one<T: Named>(
    text: Option<&str>,
    dialect: Dialect,
    field: Field,
) -> Result<Option<T>, OverrideError> {
    text.map(|text| {
        T::parse(text, dialect).ok_or_else(|| OverrideError::NotInList {
            property: dialect.field(field),
            value: text.to_string(),
            allowed: T::allowed(dialect).join(", "),
        })
    })
    .transpose()
}

impl OverrideRequest {
    /// The one parser: each field as the API spelled it (absent: keep), checked.
    pub fn parse(
        dialect: Dialect,
        enabled: Option<&str>,
        target: Option<&str>,
        mode: Option<&str>,
    ) -> Result<OverrideRequest, OverrideError> {
        Ok(OverrideRequest {
            enabled: parse_one(enabled, dialect, Field::Enabled)?,
            target: parse_one(target, dialect, Field::Target)?,
            mode: parse_one(mode, dialect, Field::Mode)?,
            dialect: Some(dialect),
        })
    }

    /// What the request comes to on a system with `current` override and `firmware`:
    /// a target without `enabled` means the next boot (Once) unless the override is
    /// Continuous (what BMCs do); `enabled` without a target keeps the current target;
    /// target None, or Disabled, clears the override; UefiHttp needs UEFI firmware (the
    /// wanted one when the request changes it).
    pub fn resolve(
        &self,
        current: BootOverride,
        firmware: Firmware,
    ) -> Result<Resolved, OverrideError> {
        let dialect = self.dialect.unwrap_or(Dialect::Rest);
        let wanted_firmware = self.mode.map(Mode::firmware);
        if self.enabled.is_none() && self.target.is_none() {
            return Ok(Resolved {
                boot_override: None,
                firmware: wanted_firmware,
            });
        }
        let uefi = wanted_firmware.unwrap_or(firmware) == Firmware::Uefi;
        let current_device = match current {
            BootOverride::Once(d) | BootOverride::Continuous(d) => Some(d),
            BootOverride::Disabled => None,
        };
        let device = match self.target {
            Some(Target::None) => None,
            Some(Target::Pxe) => Some(BootDevice::Net),
            Some(Target::UefiHttp) if uefi => Some(BootDevice::Net),
            Some(Target::UefiHttp) => {
                return Err(OverrideError::UefiHttpNeedsUefi {
                    property: dialect.field(Field::Target),
                    value: Target::UefiHttp.name(dialect),
                })
            }
            Some(Target::Cd) => Some(BootDevice::Cdrom),
            Some(Target::Hdd) => Some(BootDevice::Disk),
            None => current_device,
        };
        let enabled = self.enabled.unwrap_or(match current {
            BootOverride::Continuous(_) => Enabled::Continuous,
            _ => Enabled::Once,
        });
        let wanted = match (enabled, device) {
            (Enabled::Disabled, _) => BootOverride::Disabled,
            (_, None) if self.target == Some(Target::None) => BootOverride::Disabled,
            (e, None) => {
                return Err(OverrideError::NeedsTarget {
                    property: dialect.field(Field::Enabled),
                    value: e.name(dialect),
                })
            }
            (Enabled::Once, Some(d)) => BootOverride::Once(d),
            (Enabled::Continuous, Some(d)) => BootOverride::Continuous(d),
        };
        Ok(Resolved {
            boot_override: Some(wanted),
            firmware: wanted_firmware,
        })
    }

    /// The one apply path: resolves against system `id` as stored, switches its firmware
    /// (only while it is off) and stores the override. Returns what was applied.
    pub fn apply(&self, store: &VmStore, id: &str) -> Result<Resolved, OverrideError> {
        let mut config = store.load(id)?;
        let resolved = self.resolve(config.boot_override(), config.spec.firmware)?;
        if let Some(firmware) = resolved.firmware.filter(|f| *f != config.spec.firmware) {
            if store.state(id).pid().is_some() {
                return Err(OverrideError::Running(id.to_string()));
            }
            config.spec.firmware = firmware;
            store.save(&config, OverwritePolicy::Replace)?;
        }
        if let Some(wanted) = resolved.boot_override {
            store.set_boot_override(id, wanted)?;
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(e: Option<&str>, t: Option<&str>, m: Option<&str>) -> OverrideRequest {
        OverrideRequest::parse(Dialect::Rest, e, t, m).unwrap()
    }

    #[test]
    fn both_spellings_parse_to_the_same_request_and_unknown_values_name_their_field() {
        let a = rest(Some("once"), Some("cd"), Some("uefi"));
        let b = OverrideRequest::parse(Dialect::Redfish, Some("Once"), Some("Cd"), Some("UEFI"))
            .unwrap();
        assert_eq!((a.enabled, a.target, a.mode), (b.enabled, b.target, b.mode));
        let error = OverrideRequest::parse(Dialect::Redfish, Some("Twice"), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("BootSourceOverrideEnabled \"Twice\""),
            "{error}"
        );
        let error = OverrideRequest::parse(Dialect::Rest, None, Some("Cd"), None)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("target \"Cd\""), "{error}");
    }

    #[test]
    fn resolution_keeps_what_is_not_given_and_checks_targets() {
        let once_cd = BootOverride::Once(BootDevice::Cdrom);
        let cont_net = BootOverride::Continuous(BootDevice::Net);
        let bios = Firmware::Bios;
        let to = |r: OverrideRequest, current, fw| {
            r.resolve(current, fw)
                .map(|r| (r.boot_override, r.firmware))
        };
        // A target alone: Once, or Continuous when that is what holds.
        assert_eq!(
            to(rest(None, Some("hdd"), None), BootOverride::Disabled, bios).unwrap(),
            (Some(BootOverride::Once(BootDevice::Disk)), None)
        );
        assert_eq!(
            to(rest(None, Some("cd"), None), cont_net, bios).unwrap(),
            (Some(BootOverride::Continuous(BootDevice::Cdrom)), None)
        );
        // Enabled alone keeps the target; with none to keep it is refused.
        assert_eq!(
            to(rest(Some("continuous"), None, None), once_cd, bios).unwrap(),
            (Some(BootOverride::Continuous(BootDevice::Cdrom)), None)
        );
        assert!(matches!(
            to(rest(Some("once"), None, None), BootOverride::Disabled, bios),
            Err(OverrideError::NeedsTarget { .. })
        ));
        // Target None or Disabled clears it.
        assert_eq!(
            to(rest(Some("once"), Some("none"), None), once_cd, bios).unwrap(),
            (Some(BootOverride::Disabled), None)
        );
        assert_eq!(
            to(rest(Some("disabled"), None, None), once_cd, bios).unwrap(),
            (Some(BootOverride::Disabled), None)
        );
        // UefiHttp needs UEFI: the firmware the request switches to counts.
        assert!(matches!(
            to(
                rest(Some("once"), Some("uefihttp"), None),
                BootOverride::Disabled,
                bios
            ),
            Err(OverrideError::UefiHttpNeedsUefi { .. })
        ));
        assert_eq!(
            to(
                rest(Some("once"), Some("uefihttp"), Some("uefi")),
                BootOverride::Disabled,
                bios
            )
            .unwrap(),
            (
                Some(BootOverride::Once(BootDevice::Net)),
                Some(Firmware::Uefi)
            )
        );
        // Mode alone changes only the firmware.
        assert_eq!(
            to(rest(None, None, Some("bios")), once_cd, Firmware::Uefi).unwrap(),
            (None, Some(Firmware::Bios))
        );
    }
}

//! Per-machine boot rules (`--config FILE`, TOML): match a machine by MAC, architecture or
//! UUID and give it a kernel + initrd + command line, a boot menu, a local-disk exit, a chain
//! to another boot file or a custom iPXE script; unknown machines get `[default]`. Templates
//! (`{{server}}`, `{{http}}`, `{{mac}}`, `{{hostname}}`, `{{preseed}}`...) are checked when the
//! file is loaded, so a typo fails at start-up, not at 3 a.m. during an install.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

/// Largest rules file we read: rules for thousands of machines fit in far less.
pub const MAX_RULES_FILE: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum RuleError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("rules file {path} is larger than {MAX_RULES_FILE} bytes")]
    TooLarge { path: String },
    #[error("rules file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{context}: unknown template variable {{{{{name}}}}}; known: {known}")]
    UnknownVariable {
        context: String,
        name: String,
        known: String,
    },
    #[error("{context}: unterminated '{{{{' in template")]
    Unterminated { context: String },
    #[error("{context}: {message}")]
    Invalid { context: String, message: String },
}

/// What a machine boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootKind {
    Kernel,
    Menu,
    Exit,
    Chain,
    Script,
}

/// One entry of a boot menu.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MenuItem {
    pub label: String,
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Vec<String>,
    #[serde(default)]
    pub cmdline: String,
    /// Boot from the local disk instead.
    #[serde(default)]
    pub exit: bool,
    #[serde(default)]
    pub chain: Option<String>,
}

/// A rule: match fields (empty in `[default]`) and what to boot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub mac: Option<String>,
    pub arch: Option<u16>,
    pub uuid: Option<String>,
    pub hostname: Option<String>,
    /// Reserved address in full-DHCP mode.
    pub ip: Option<Ipv4Addr>,
    /// Reserved IPv6 address in full-DHCPv6 mode (for a client whose DUID carries its MAC).
    pub ip6: Option<Ipv6Addr>,
    /// Boot file handed out by DHCP to this machine's firmware (not to iPXE).
    pub bootfile: Option<String>,
    pub boot: Option<BootKind>,
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Vec<String>,
    #[serde(default)]
    pub cmdline: String,
    pub chain: Option<String>,
    /// An iPXE script template under the root.
    pub script: Option<String>,
    #[serde(default)]
    pub menu: Vec<MenuItem>,
    /// Seconds before the first menu entry is chosen; 0 waits forever.
    #[serde(default)]
    pub menu_timeout: u32,
    /// Template files under the root, served rendered for this machine.
    pub preseed: Option<String>,
    pub kickstart: Option<String>,
    /// Cloud-init user-data template (autoinstall for Ubuntu, nocloud-net for cloud images).
    pub user_data: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesToml {
    /// Server settings for `vmedia serve --netboot FILE` (the daemon reads them); the rules
    /// here ignore them, so one file serves both `vmedia netboot serve --config` and the daemon.
    #[serde(default)]
    #[allow(dead_code)]
    server: Option<toml::Table>,
    default: Option<Rule>,
    #[serde(default)]
    machine: Vec<Rule>,
}

/// Who is asking, as far as DHCP or the script URL tells us.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub mac: Option<String>,
    pub arch: Option<u16>,
    pub uuid: Option<String>,
}

/// Normalises "52-54-00-AA-BB-CC" and "52:54:00:aa:bb:cc" to the latter.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let hex: Vec<&str> = mac.trim().split([':', '-']).collect();
    if hex.len() != 6
        || hex
            .iter()
            .any(|h| h.len() != 2 || !h.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(hex.join(":").to_ascii_lowercase())
}

/// The loaded rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub default: Option<Rule>,
    pub machines: Vec<Rule>,
}

/// Template variable names; `render` refuses anything else.
pub const VARIABLES: &[&str] = &[
    "server",
    "http",
    "mac",
    "mac_hyphen",
    "hostname",
    "arch",
    "uuid",
    "ip",
    "preseed",
    "kickstart",
    "cloud_init",
    "autoinstall",
];

/// Values for the template variables.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub server: String,
    pub http: String,
    pub mac: String,
    pub hostname: String,
    pub arch: String,
    pub uuid: String,
    pub ip: String,
}

impl Vars {
    fn get(&self, name: &str) -> Option<String> {
        let mac_path = if self.mac.is_empty() {
            "unknown".to_string()
        } else {
            self.mac.replace(':', "-")
        };
        Some(match name {
            "server" => self.server.clone(),
            "http" => self.http.clone(),
            "mac" => self.mac.clone(),
            "mac_hyphen" => self.mac.replace(':', "-"),
            "hostname" => self.hostname.clone(),
            "arch" => self.arch.clone(),
            "uuid" => self.uuid.clone(),
            "ip" => self.ip.clone(),
            "preseed" => format!("{}/_vmedia/preseed/{mac_path}", self.http),
            "kickstart" => format!("{}/_vmedia/kickstart/{mac_path}", self.http),
            "cloud_init" | "autoinstall" => format!("{}/_vmedia/nocloud/{mac_path}/", self.http),
            _ => return None,
        })
    }

    /// Sample values used to check templates at load time.
    pub fn sample() -> Vars {
        Vars {
            server: "192.0.2.1".into(),
            http: "http://192.0.2.1".into(),
            mac: "52:54:00:00:00:01".into(),
            hostname: "sample".into(),
            arch: "0".into(),
            uuid: String::new(),
            ip: "192.0.2.10".into(),
        }
    }
}

/// Replaces `{{name}}` (spaces allowed inside the braces) with its value.
pub fn render(template: &str, vars: &Vars, context: &str) -> Result<String, RuleError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(RuleError::Unterminated {
                context: context.to_string(),
            });
        };
        let name = after[..end].trim();
        match vars.get(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(RuleError::UnknownVariable {
                    context: context.to_string(),
                    name: name.to_string(),
                    known: VARIABLES.join(", "),
                })
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Rule {
    fn matches(&self, client: &Client) -> bool {
        if self.mac.is_none() && self.arch.is_none() && self.uuid.is_none() {
            return false;
        }
        if let Some(mac) = &self.mac {
            if client.mac.as_deref() != normalize_mac(mac).as_deref() {
                return false;
            }
        }
        if let Some(arch) = self.arch {
            if client.arch != Some(arch) {
                return false;
            }
        }
        if let Some(uuid) = &self.uuid {
            match &client.uuid {
                Some(u) if u.eq_ignore_ascii_case(uuid.trim()) => {}
                _ => return false,
            }
        }
        true
    }

    /// What this rule boots: `boot` when given, else inferred from the fields present.
    pub fn kind(&self) -> Option<BootKind> {
        if self.boot.is_some() {
            return self.boot;
        }
        if self.script.is_some() {
            Some(BootKind::Script)
        } else if self.kernel.is_some() {
            Some(BootKind::Kernel)
        } else if !self.menu.is_empty() {
            Some(BootKind::Menu)
        } else if self.chain.is_some() {
            Some(BootKind::Chain)
        } else {
            None
        }
    }

    fn validate(&self, context: &str) -> Result<(), RuleError> {
        let invalid = |message: String| RuleError::Invalid {
            context: context.to_string(),
            message,
        };
        if let Some(mac) = &self.mac {
            if normalize_mac(mac).is_none() {
                return Err(invalid(format!("mac {mac:?} is not six hex pairs")));
            }
        }
        match self.kind() {
            Some(BootKind::Kernel) if self.kernel.is_none() => {
                return Err(invalid("boot = \"kernel\" needs kernel = ...".into()))
            }
            Some(BootKind::Menu) if self.menu.is_empty() => {
                return Err(invalid("boot = \"menu\" needs [[...menu]] entries".into()))
            }
            Some(BootKind::Chain) if self.chain.is_none() => {
                return Err(invalid("boot = \"chain\" needs chain = ...".into()))
            }
            Some(BootKind::Script) if self.script.is_none() => {
                return Err(invalid("boot = \"script\" needs script = ...".into()))
            }
            _ => {}
        }
        let sample = Vars::sample();
        for (what, text) in [
            ("kernel", self.kernel.as_deref()),
            ("cmdline", Some(self.cmdline.as_str())),
            ("chain", self.chain.as_deref()),
        ] {
            if let Some(t) = text {
                render(t, &sample, &format!("{context} {what}"))?;
            }
        }
        for (i, item) in self.menu.iter().enumerate() {
            render(
                &item.cmdline,
                &sample,
                &format!("{context} menu item {i} cmdline"),
            )?;
            if item.kernel.is_none() && !item.exit && item.chain.is_none() {
                return Err(invalid(format!(
                    "menu item {:?} needs kernel, chain or exit = true",
                    item.label
                )));
            }
        }
        Ok(())
    }
}

impl Rules {
    pub fn load(path: &Path) -> Result<Rules, RuleError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| RuleError::Read {
            path: shown.clone(),
            source: e,
        })?;
        if meta.len() > MAX_RULES_FILE {
            return Err(RuleError::TooLarge { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(|e| RuleError::Read {
            path: shown.clone(),
            source: e,
        })?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &str, path: &str) -> Result<Rules, RuleError> {
        let parsed: RulesToml = toml::from_str(text).map_err(|e| RuleError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        if let Some(d) = &parsed.default {
            if d.mac.is_some() || d.arch.is_some() || d.uuid.is_some() {
                return Err(RuleError::Invalid {
                    context: format!("{path} [default]"),
                    message: "the default rule cannot have mac, arch or uuid: it is for machines no rule matches".into(),
                });
            }
            d.validate(&format!("{path} [default]"))?;
        }
        for (i, m) in parsed.machine.iter().enumerate() {
            let context = format!("{path} [[machine]] #{}", i + 1);
            if m.mac.is_none() && m.arch.is_none() && m.uuid.is_none() {
                return Err(RuleError::Invalid {
                    context,
                    message: "a machine rule needs mac, arch or uuid to match on".into(),
                });
            }
            m.validate(&context)?;
        }
        Ok(Rules {
            default: parsed.default,
            machines: parsed.machine,
        })
    }

    /// The first machine rule matching, else the default.
    pub fn find(&self, client: &Client) -> Option<&Rule> {
        self.machines
            .iter()
            .find(|r| r.matches(client))
            .or(self.default.as_ref())
    }

    /// MAC -> reserved IPv6 address, for full-DHCPv6 mode.
    pub fn reservations6(&self) -> Vec<(String, Ipv6Addr)> {
        self.machines
            .iter()
            .filter_map(|r| Some((normalize_mac(r.mac.as_deref()?)?, r.ip6?)))
            .collect()
    }

    /// MAC -> reserved address, for full-DHCP mode.
    pub fn reservations(&self) -> Vec<(String, Ipv4Addr)> {
        self.machines
            .iter()
            .filter_map(|r| Some((normalize_mac(r.mac.as_deref()?)?, r.ip?)))
            .collect()
    }
}

/// Makes a URL for a served path (or passes a URL through).
pub fn file_url(path: &str, http: &str) -> String {
    let lower = path.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("tftp://")
    {
        return path.to_string();
    }
    let library = path
        .trim_start_matches('/')
        .get(..crate::files::LIBRARY_SCHEME.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(crate::files::LIBRARY_SCHEME));
    // debian.iso:/install.amd/vmlinuz -> debian.iso/install.amd/vmlinuz (no ':' in URL paths).
    // library:NAME@V:/path keeps its ':' and '@' (both allowed in a URL path, RFC 3986
    // pchar): the ':' is what ends the spec, and an item may be named debian.iso.
    let mut p = if library {
        path.to_string()
    } else {
        path.replace(".iso:/", ".iso/").replace(".ISO:/", ".ISO/")
    };
    while p.starts_with('/') {
        p.remove(0);
    }
    let keep: &[u8] = if library { b"/-._~:@" } else { b"/-._~" };
    let mut encoded = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{http}/{encoded}")
}

fn base_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// True for UEFI architecture types (RFC 4578 / IANA registry).
pub fn arch_is_uefi(arch: Option<u16>) -> bool {
    matches!(arch, Some(6 | 7 | 9 | 10 | 11 | 15 | 16 | 18 | 19))
}

fn kernel_lines(
    out: &mut String,
    kernel: &str,
    initrds: &[String],
    cmdline: &str,
    vars: &Vars,
    context: &str,
) -> Result<(), RuleError> {
    let kernel_url = file_url(&render(kernel, vars, context)?, &vars.http);
    let cmdline = render(cmdline, vars, context)?;
    let mut initrd_urls = Vec::new();
    for initrd in initrds {
        initrd_urls.push(file_url(&render(initrd, vars, context)?, &vars.http));
    }
    // EFI-stub kernels find their initrd by name; BIOS kernels ignore the extra argument.
    let mut args = String::new();
    for url in &initrd_urls {
        args.push_str(&format!(" initrd={}", base_name(url)));
    }
    if !cmdline.trim().is_empty() {
        args.push(' ');
        args.push_str(cmdline.trim());
    }
    out.push_str(&format!("kernel {kernel_url}{args}\n"));
    for url in &initrd_urls {
        out.push_str(&format!("initrd {url}\n"));
    }
    out.push_str("boot\n");
    Ok(())
}

fn exit_lines(out: &mut String, arch: Option<u16>) {
    if arch_is_uefi(arch) {
        out.push_str("exit\n");
    } else {
        out.push_str("sanboot --no-describe --drive 0x80 || exit\n");
    }
}

/// Builds the iPXE script for a rule. `custom_script` is the text of `rule.script` when the
/// rule names one (the caller reads it from the root).
pub fn ipxe_script(
    rule: Option<&Rule>,
    vars: &Vars,
    arch: Option<u16>,
    custom_script: Option<&str>,
) -> Result<String, RuleError> {
    let mut out = String::from("#!ipxe\n");
    out.push_str(&format!(
        "echo vmedia: booting {} ({})\n",
        if vars.mac.is_empty() {
            "unknown machine"
        } else {
            &vars.mac
        },
        vars.hostname
    ));
    let Some(rule) = rule else {
        out.push_str("echo vmedia: no rule matches this machine and there is no [default]; booting the local disk\n");
        exit_lines(&mut out, arch);
        return Ok(out);
    };
    match rule.kind() {
        Some(BootKind::Kernel) => {
            let kernel = rule.kernel.as_deref().unwrap_or_default();
            kernel_lines(
                &mut out,
                kernel,
                &rule.initrd,
                &rule.cmdline,
                vars,
                "rule kernel",
            )?;
        }
        Some(BootKind::Exit) => exit_lines(&mut out, arch),
        Some(BootKind::Chain) => {
            let target = render(
                rule.chain.as_deref().unwrap_or_default(),
                vars,
                "rule chain",
            )?;
            let url = if target.contains("://") {
                target
            } else {
                format!("tftp://{}/{}", vars.server, target.trim_start_matches('/'))
            };
            out.push_str(&format!("chain {url}\n"));
        }
        Some(BootKind::Script) => {
            let text = custom_script.unwrap_or("#!ipxe\nexit\n");
            let rendered = render(text, vars, "rule script")?;
            return Ok(rendered);
        }
        Some(BootKind::Menu) => {
            out.push_str("menu vmedia network boot\n");
            for (i, item) in rule.menu.iter().enumerate() {
                out.push_str(&format!("item item{i} {}\n", item.label.replace('\n', " ")));
            }
            if rule.menu_timeout > 0 {
                out.push_str(&format!(
                    "choose --timeout {} --default item0 target || goto item0\n",
                    u64::from(rule.menu_timeout) * 1000
                ));
            } else {
                out.push_str("choose --default item0 target || goto item0\n");
            }
            out.push_str("goto ${target}\n");
            for (i, item) in rule.menu.iter().enumerate() {
                out.push_str(&format!(":item{i}\n"));
                if item.exit {
                    exit_lines(&mut out, arch);
                } else if let Some(kernel) = &item.kernel {
                    kernel_lines(
                        &mut out,
                        kernel,
                        &item.initrd,
                        &item.cmdline,
                        vars,
                        "menu item",
                    )?;
                } else if let Some(chain) = &item.chain {
                    out.push_str(&format!(
                        "chain {}\n",
                        file_url(&render(chain, vars, "menu chain")?, &vars.http)
                    ));
                }
            }
        }
        None => {
            out.push_str(
                "echo vmedia: the matching rule says nothing to boot; booting the local disk\n",
            );
            exit_lines(&mut out, arch);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[default]
kernel = "debian.iso:/install.amd/vmlinuz"
initrd = ["debian.iso:/install.amd/initrd.gz"]
cmdline = "auto=true url={{preseed}} hostname={{hostname}}"

[[machine]]
mac = "52-54-00-AA-BB-CC"
hostname = "db1"
ip = "10.0.0.50"
boot = "exit"

[[machine]]
arch = 7
menu_timeout = 5
[[machine.menu]]
label = "Install"
kernel = "vmlinuz"
[[machine.menu]]
label = "Local disk"
exit = true
"#;

    fn vars(mac: &str) -> Vars {
        Vars {
            server: "10.0.0.1".into(),
            http: "http://10.0.0.1:8080".into(),
            mac: mac.into(),
            hostname: "h".into(),
            ..Vars::default()
        }
    }

    #[test]
    fn rules_match_by_mac_then_arch_then_default() {
        let rules = Rules::parse(SAMPLE, "t.toml").unwrap();
        let by_mac = rules
            .find(&Client {
                mac: Some("52:54:00:aa:bb:cc".into()),
                arch: Some(7),
                uuid: None,
            })
            .unwrap();
        assert_eq!(by_mac.kind(), Some(BootKind::Exit));
        let by_arch = rules
            .find(&Client {
                mac: Some("52:54:00:00:00:01".into()),
                arch: Some(7),
                uuid: None,
            })
            .unwrap();
        assert_eq!(by_arch.kind(), Some(BootKind::Menu));
        let default = rules
            .find(&Client {
                mac: None,
                arch: Some(0),
                uuid: None,
            })
            .unwrap();
        assert_eq!(default.kind(), Some(BootKind::Kernel));
        assert_eq!(
            rules.reservations(),
            vec![(
                "52:54:00:aa:bb:cc".to_string(),
                "10.0.0.50".parse().unwrap()
            )]
        );
    }

    #[test]
    fn kernel_script_uses_http_urls_and_preseed() {
        let rules = Rules::parse(SAMPLE, "t.toml").unwrap();
        let script = ipxe_script(
            rules.default.as_ref(),
            &vars("52:54:00:00:00:09"),
            Some(0),
            None,
        )
        .unwrap();
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains("kernel http://10.0.0.1:8080/debian.iso/install.amd/vmlinuz initrd=initrd.gz auto=true url=http://10.0.0.1:8080/_vmedia/preseed/52-54-00-00-00-09 hostname=h\n"), "{script}");
        assert!(
            script.contains("initrd http://10.0.0.1:8080/debian.iso/install.amd/initrd.gz\nboot\n")
        );
    }

    #[test]
    fn exit_is_sanboot_on_bios_and_exit_on_uefi() {
        let rule = Rule {
            boot: Some(BootKind::Exit),
            ..Rule::default()
        };
        assert!(ipxe_script(Some(&rule), &vars("x"), Some(0), None)
            .unwrap()
            .contains("sanboot --no-describe --drive 0x80"));
        assert!(ipxe_script(Some(&rule), &vars("x"), Some(7), None)
            .unwrap()
            .ends_with("exit\n"));
    }

    #[test]
    fn unknown_template_variable_is_rejected_at_load() {
        let err = Rules::parse(
            "[default]\nkernel = \"k\"\ncmdline = \"x={{nope}}\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(matches!(err, RuleError::UnknownVariable { .. }), "{err}");
    }

    #[test]
    fn unterminated_template_is_rejected() {
        assert!(matches!(
            render("a {{mac", &Vars::default(), "x"),
            Err(RuleError::Unterminated { .. })
        ));
    }

    #[test]
    fn machine_rule_without_match_field_is_rejected() {
        assert!(matches!(
            Rules::parse("[[machine]]\nkernel = \"k\"\n", "t"),
            Err(RuleError::Invalid { .. })
        ));
    }

    #[test]
    fn default_with_match_field_is_rejected() {
        assert!(matches!(
            Rules::parse(
                "[default]\nmac = \"52:54:00:00:00:01\"\nboot = \"exit\"\n",
                "t"
            ),
            Err(RuleError::Invalid { .. })
        ));
    }

    #[test]
    fn bad_mac_is_rejected() {
        assert!(matches!(
            Rules::parse("[[machine]]\nmac = \"zz\"\nboot = \"exit\"\n", "t"),
            Err(RuleError::Invalid { .. })
        ));
    }

    #[test]
    fn unknown_key_is_rejected() {
        assert!(matches!(
            Rules::parse("[default]\nkernal = \"k\"\n", "t"),
            Err(RuleError::Parse { .. })
        ));
    }

    #[test]
    fn kind_without_its_field_is_rejected() {
        assert!(matches!(
            Rules::parse("[default]\nboot = \"kernel\"\n", "t"),
            Err(RuleError::Invalid { .. })
        ));
    }

    #[test]
    fn menu_script_has_items_and_choose() {
        let rules = Rules::parse(SAMPLE, "t.toml").unwrap();
        let rule = &rules.machines[1];
        let script = ipxe_script(Some(rule), &vars("m"), Some(7), None).unwrap();
        assert!(script.contains("item item0 Install\nitem item1 Local disk\n"));
        assert!(script.contains("choose --timeout 5000 --default item0 target"));
        assert!(script.contains(":item1\nexit\n"));
    }

    #[test]
    fn library_paths_become_urls_with_their_spec_intact() {
        assert_eq!(
            file_url("library:deb.iso@2:/install.amd/vmlinuz", "http://h:8"),
            "http://h:8/library:deb.iso@2:/install.amd/vmlinuz"
        );
        assert_eq!(
            file_url("/library:deb@sha256:ab12:/a b", "http://h"),
            "http://h/library:deb@sha256:ab12:/a%20b"
        );
        // Outside library paths ':' and '@' are still escaped.
        assert_eq!(file_url("a@b:c", "http://h"), "http://h/a%40b%3Ac");
    }

    #[test]
    fn server_table_is_ignored_by_the_rules() {
        let rules = Rules::parse(
            "[server]\nroot = \"/srv\"\ntftp_port = 69\n\n[default]\nkernel = \"library:deb:/k\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            rules.default.unwrap().kernel.as_deref(),
            Some("library:deb:/k")
        );
    }
}

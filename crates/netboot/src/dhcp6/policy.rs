//! The DHCPv6 decision logic: given a parsed client message, what to answer. Proxy mode
//! answers network-boot clients only (UEFI PXE "PXEClient", UEFI HTTP boot "HTTPClient",
//! iPXE) with the boot file URL (option 59) and no address, leaving addresses to the
//! network's own DHCPv6 server or router advertisements; full mode also hands out IA_NA
//! addresses from a range. The boot file follows the client architecture (option 61) and the
//! machine rules, as for DHCPv4 (`dhcp::policy::BootFiles::for_arch`).

use std::net::Ipv6Addr;

use crate::dhcp::policy::{arch_name, BootFiles, Ignored, IpxeScript};
use crate::rules::{Client, Rules};
use crate::wire::dhcp::{format_mac, format_uuid};
use crate::wire::dhcp6::{
    duid_mac, duid_uuid, format_duid, status, Dhcp6Option, Dhcp6Repr, IaAddress, IaNa, MessageType,
};

use super::leases::LeaseTable6;

#[derive(Debug)]
pub enum Mode6 {
    Proxy,
    Full {
        leases: LeaseTable6,
        dns: Vec<Ipv6Addr>,
    },
}

/// A reply to send back to the client's address; `leases_changed` asks the caller to save.
#[derive(Debug)]
pub struct Reply6 {
    pub packet: Dhcp6Repr,
    pub leases_changed: bool,
    /// One log line describing the exchange.
    pub summary: String,
    /// The address handed to the client, when one was.
    pub address: Option<Ipv6Addr>,
}

pub struct Policy6 {
    pub mode: Mode6,
    /// This server's DUID (option 2).
    pub server_duid: Vec<u8>,
    /// The address put in boot file URLs.
    pub server_ip: Ipv6Addr,
    pub boot: BootFiles,
    pub rules: Rules,
}

/// What kind of client asked, from options 15, 16 and 61.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKind6 {
    pub pxe: bool,
    pub http_client: bool,
    pub ipxe: bool,
    pub arch: Option<u16>,
}

pub fn classify6(req: &Dhcp6Repr) -> ClientKind6 {
    ClientKind6 {
        pxe: req.vendor_class_starts_with(b"PXEClient"),
        http_client: req.vendor_class_starts_with(b"HTTPClient"),
        ipxe: req.user_class_contains(b"iPXE"),
        arch: req.client_arch(),
    }
}

/// The MAC ("aa:bb:..") a client's DUID carries, if it carries one.
pub fn client_mac(req: &Dhcp6Repr) -> Option<String> {
    req.client_id().and_then(duid_mac).map(|m| format_mac(&m))
}

/// What the client is called in logs and the status board: its MAC when the DUID has one,
/// else the DUID.
pub fn client_label(req: &Dhcp6Repr) -> String {
    client_mac(req).unwrap_or_else(|| format_duid(req.client_id().unwrap_or_default()))
}

impl Policy6 {
    /// `[addr]` for URLs.
    fn host(&self) -> String {
        format!("[{}]", self.server_ip)
    }

    fn http_base(&self) -> Option<String> {
        self.boot.http_port.map(|p| {
            if p == 80 {
                format!("http://{}", self.host())
            } else {
                format!("http://{}:{p}", self.host())
            }
        })
    }

    /// The boot file URL (option 59) for this client, or why there is none. DHCPv6 has no
    /// `file` field: a TFTP boot file is a `tftp://[server]/path` URL too.
    pub fn boot_url(&self, req: &Dhcp6Repr, kind: &ClientKind6) -> Result<String, Ignored> {
        let mac = client_mac(req);
        if kind.ipxe {
            match &self.boot.ipxe {
                IpxeScript::Url(u) => return Ok(u.clone()),
                IpxeScript::Generated => {
                    if let Some(base) = self.http_base() {
                        let mut url = format!(
                            "{base}/boot.ipxe?mac={}",
                            mac.as_deref().unwrap_or("unknown")
                        );
                        if let Some(a) = kind.arch {
                            url.push_str(&format!("&arch={a}"));
                        }
                        return Ok(url);
                    }
                }
                IpxeScript::None => {}
            }
        }
        let client = Client {
            mac,
            arch: kind.arch,
            uuid: req
                .client_id()
                .and_then(duid_uuid)
                .and_then(|u| format_uuid(&u)),
        };
        let ruled = self.rules.find(&client).and_then(|r| r.bootfile.clone());
        let arch = kind.arch.unwrap_or(0);
        let (file, http) = match ruled {
            Some(file) => (Some(file), false),
            None => self.boot.for_arch(arch),
        };
        let Some(file) = file else {
            return Err(Ignored::NoBootFile(format!(
                "no boot file configured for architecture {arch} ({})",
                arch_name(Some(arch))
            )));
        };
        if file.contains("://") {
            return Ok(file);
        }
        if http || kind.http_client {
            let Some(base) = self.http_base() else {
                return Err(Ignored::NoBootFile(
                    "an HTTP-boot client needs the HTTP server (--http-port)".into(),
                ));
            };
            return Ok(crate::rules::file_url(&file, &base));
        }
        Ok(format!(
            "tftp://{}/{}",
            self.host(),
            file.trim_start_matches('/')
        ))
    }

    fn reply(&self, req: &Dhcp6Repr, msg_type: MessageType) -> Dhcp6Repr {
        let mut options = vec![Dhcp6Option::ServerId(self.server_duid.clone())];
        if let Some(id) = req.client_id() {
            options.push(Dhcp6Option::ClientId(id.to_vec()));
        }
        Dhcp6Repr {
            msg_type,
            xid: req.xid,
            options,
        }
    }

    fn add_boot(&self, reply: &mut Dhcp6Repr, kind: &ClientKind6, url: &str) {
        reply
            .options
            .push(Dhcp6Option::BootfileUrl(url.to_string()));
        if kind.http_client {
            // UEFI HTTP boot takes only offers that say they are for HTTP clients.
            reply.options.push(Dhcp6Option::VendorClass {
                enterprise: 343,
                data: vec![b"HTTPClient".to_vec()],
            });
        }
    }

    /// The IA_NAs of the reply: addresses in full mode (advertised or bound), "no addresses"
    /// in proxy mode. `None` in full mode when the range is full.
    fn ia_nas(
        &mut self,
        req: &Dhcp6Repr,
        bind: bool,
        now_ms: u64,
    ) -> (Vec<IaNa>, Option<Ipv6Addr>, bool) {
        let duid = format_duid(req.client_id().unwrap_or_default());
        let mac = client_mac(req);
        let mut out = Vec::new();
        let mut first = None;
        let mut changed = false;
        for ia in req.ia_nas() {
            let mut reply_ia = IaNa {
                iaid: ia.iaid,
                t1: 0,
                t2: 0,
                addresses: Vec::new(),
                status: None,
            };
            match &mut self.mode {
                Mode6::Proxy => {
                    reply_ia.status = Some((
                        status::NO_ADDRS_AVAIL,
                        "boot information only; addresses come from the network's DHCPv6 server"
                            .into(),
                    ));
                }
                Mode6::Full { leases, .. } => {
                    let key = format!("{duid}/{}", ia.iaid);
                    let hint = ia.addresses.first().map(|a| a.addr);
                    let got = if bind {
                        leases.bind(&key, mac.as_deref(), hint, now_ms)
                    } else {
                        leases.advertise(&key, mac.as_deref(), hint, now_ms)
                    };
                    match got {
                        Some(addr) => {
                            let secs = leases.lease_secs();
                            reply_ia.t1 = secs / 2;
                            reply_ia.t2 = secs / 5 * 4;
                            reply_ia.addresses.push(IaAddress {
                                addr,
                                preferred: secs,
                                valid: secs,
                                status: None,
                            });
                            first.get_or_insert(addr);
                            changed |= bind;
                        }
                        None => {
                            reply_ia.status = Some((
                                status::NO_ADDRS_AVAIL,
                                "the DHCPv6 range has no free address".into(),
                            ))
                        }
                    }
                }
            }
            out.push(reply_ia);
        }
        (out, first, changed)
    }

    /// Handles one client message. `now_ms` drives lease expiry.
    pub fn handle(&mut self, req: &Dhcp6Repr, now_ms: u64) -> Result<Reply6, Ignored> {
        let kind = classify6(req);
        let booting = kind.pxe || kind.http_client || kind.ipxe;
        let full = matches!(self.mode, Mode6::Full { .. });
        if !full && !booting {
            return Err(Ignored::NotPxe);
        }
        if req.client_id().is_none() {
            return Err(Ignored::Unhandled("no client identifier"));
        }
        // Messages naming another server are for it (RFC 8415 section 16).
        let for_us = req.server_id().is_none_or(|id| id == self.server_duid);
        if !for_us {
            return Err(Ignored::NotForUs);
        }
        let boot = if booting {
            match self.boot_url(req, &kind) {
                Ok(url) => Some(url),
                Err(e) if !full => return Err(e),
                Err(_) => None,
            }
        } else {
            None
        };
        let (reply_type, bind) = match req.msg_type {
            MessageType::Solicit if req.has_rapid_commit() && full => (MessageType::Reply, true),
            MessageType::Solicit => (MessageType::Advertise, false),
            MessageType::Request | MessageType::Renew | MessageType::Rebind => {
                if req.server_id().is_none() && req.msg_type != MessageType::Rebind {
                    return Err(Ignored::Unhandled("request without server identifier"));
                }
                (MessageType::Reply, true)
            }
            MessageType::InformationRequest => (MessageType::Reply, false),
            MessageType::Confirm => {
                let Mode6::Full { leases, .. } = &self.mode else {
                    // Only a server that knows the link's prefixes may answer a Confirm.
                    return Err(Ignored::Unhandled("confirm in proxy mode"));
                };
                let on_link = req
                    .ia_nas()
                    .flat_map(|ia| ia.addresses.iter())
                    .all(|a| leases.in_range(a.addr));
                let mut reply = self.reply(req, MessageType::Reply);
                let (code, text) = if on_link {
                    (status::SUCCESS, "addresses are on this link")
                } else {
                    (status::NOT_ON_LINK, "an address is not on this link")
                };
                reply
                    .options
                    .push(Dhcp6Option::StatusCode(code, text.into()));
                return Ok(Reply6 {
                    packet: reply,
                    leases_changed: false,
                    summary: format!("CONFIRM -> REPLY ({text})"),
                    address: None,
                });
            }
            MessageType::Release => {
                let duid = format_duid(req.client_id().unwrap_or_default());
                let mut changed = false;
                if let Mode6::Full { leases, .. } = &mut self.mode {
                    for ia in req.ia_nas() {
                        changed |= leases.release(&format!("{duid}/{}", ia.iaid));
                    }
                }
                let mut reply = self.reply(req, MessageType::Reply);
                reply
                    .options
                    .push(Dhcp6Option::StatusCode(status::SUCCESS, String::new()));
                return Ok(Reply6 {
                    packet: reply,
                    leases_changed: changed,
                    summary: "RELEASE -> REPLY: leases freed".into(),
                    address: None,
                });
            }
            _ => return Err(Ignored::Unhandled("not a client message we answer")),
        };
        let mut reply = self.reply(req, reply_type);
        if reply_type == MessageType::Reply && req.msg_type == MessageType::Solicit {
            reply.options.push(Dhcp6Option::RapidCommit);
        }
        let mut address = None;
        let mut leases_changed = false;
        if req.msg_type != MessageType::InformationRequest {
            let (ias, first, changed) = self.ia_nas(req, bind, now_ms);
            address = first;
            leases_changed = changed;
            if full && address.is_none() && req.ia_nas().next().is_some() && boot.is_none() {
                return Err(Ignored::PoolExhausted);
            }
            reply.options.extend(ias.into_iter().map(Dhcp6Option::IaNa));
        }
        if let Mode6::Full { dns, .. } = &self.mode {
            if !dns.is_empty() {
                reply.options.push(Dhcp6Option::DnsServers(dns.clone()));
            }
        }
        if let Some(url) = &boot {
            self.add_boot(&mut reply, &kind, url);
        }
        let summary = format!(
            "{} -> {}{}{} arch={} ({})",
            req.msg_type.name(),
            reply_type.name(),
            address.map(|a| format!(" {a}")).unwrap_or_default(),
            boot.as_deref()
                .map(|u| format!(" boot {u}"))
                .unwrap_or_default(),
            kind.arch
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            arch_name(kind.arch),
        );
        Ok(Reply6 {
            packet: reply,
            leases_changed,
            summary,
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::dhcp6::{code, duid_ll};

    fn boot_files() -> BootFiles {
        BootFiles {
            bios: None,
            uefi_x64: Some("grubx64.efi".into()),
            arm64: None,
            http_port: Some(8080),
            ipxe: IpxeScript::None,
        }
    }

    fn policy(mode: Mode6) -> Policy6 {
        Policy6 {
            mode,
            server_duid: duid_ll([2, 0, 0, 0, 0, 1]),
            server_ip: "fd00::1".parse().unwrap(),
            boot: boot_files(),
            rules: Rules::default(),
        }
    }

    fn full() -> Mode6 {
        Mode6::Full {
            leases: LeaseTable6::new(
                "fd00::100".parse().unwrap(),
                "fd00::1ff".parse().unwrap(),
                600,
            )
            .unwrap(),
            dns: vec!["fd00::53".parse().unwrap()],
        }
    }

    fn message(
        msg_type: MessageType,
        vendor: Option<&str>,
        arch: u16,
        server: Option<Vec<u8>>,
    ) -> Dhcp6Repr {
        let mut options = vec![
            Dhcp6Option::ClientId(duid_ll([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            Dhcp6Option::IaNa(IaNa {
                iaid: 7,
                t1: 0,
                t2: 0,
                addresses: vec![],
                status: None,
            }),
            Dhcp6Option::Oro(vec![code::BOOTFILE_URL]),
            Dhcp6Option::ClientArch(vec![arch]),
        ];
        if let Some(v) = vendor {
            options.push(Dhcp6Option::VendorClass {
                enterprise: 343,
                data: vec![v.as_bytes().to_vec()],
            });
        }
        if let Some(s) = server {
            options.push(Dhcp6Option::ServerId(s));
        }
        Dhcp6Repr {
            msg_type,
            xid: 42,
            options,
        }
    }

    fn url(reply: &Dhcp6Repr) -> Option<&str> {
        reply.options.iter().find_map(|o| match o {
            Dhcp6Option::BootfileUrl(u) => Some(u.as_str()),
            _ => None,
        })
    }

    #[test]
    fn proxy_answers_pxe_with_a_tftp_url_and_no_address() {
        let mut p = policy(Mode6::Proxy);
        let req = message(
            MessageType::Solicit,
            Some("PXEClient:Arch:00007:UNDI:003016"),
            7,
            None,
        );
        let r = p.handle(&req, 0).unwrap();
        assert_eq!(r.packet.msg_type, MessageType::Advertise);
        assert_eq!(r.packet.xid, 42);
        assert_eq!(url(&r.packet), Some("tftp://[fd00::1]/grubx64.efi"));
        let ia = r.packet.ia_nas().next().unwrap();
        assert!(ia.addresses.is_empty());
        assert_eq!(
            ia.status.as_ref().map(|s| s.0),
            Some(status::NO_ADDRS_AVAIL)
        );
        assert!(r.address.is_none());
        // A client that does not network-boot is left to the network's server.
        let plain = message(MessageType::Solicit, None, 7, None);
        assert_eq!(p.handle(&plain, 0).unwrap_err(), Ignored::NotPxe);
        // A Confirm is only answered by a server that knows the link.
        let confirm = message(MessageType::Confirm, Some("PXEClient"), 7, None);
        assert!(p.handle(&confirm, 0).is_err());
    }

    #[test]
    fn http_client_gets_an_http_url_and_the_vendor_class_back() {
        let mut p = policy(Mode6::Proxy);
        let req = message(
            MessageType::Solicit,
            Some("HTTPClient:Arch:00016:UNDI:003001"),
            16,
            None,
        );
        let r = p.handle(&req, 0).unwrap();
        assert_eq!(url(&r.packet), Some("http://[fd00::1]:8080/grubx64.efi"));
        assert!(r.packet.vendor_class_starts_with(b"HTTPClient"));
        // Another server's Request is not ours.
        let other = message(
            MessageType::Request,
            Some("HTTPClient"),
            16,
            Some(duid_ll([9; 6])),
        );
        assert_eq!(p.handle(&other, 0).unwrap_err(), Ignored::NotForUs);
    }

    #[test]
    fn full_mode_advertises_binds_renews_confirms_and_releases() {
        let mut p = policy(full());
        let vendor = Some("PXEClient:Arch:00007:UNDI:003016");
        let adv = p
            .handle(&message(MessageType::Solicit, vendor, 7, None), 0)
            .unwrap();
        let offered = adv.address.unwrap();
        assert_eq!(offered, "fd00::100".parse::<Ipv6Addr>().unwrap());
        assert!(!adv.leases_changed);
        let sid = p.server_duid.clone();
        let rep = p
            .handle(
                &message(MessageType::Request, vendor, 7, Some(sid.clone())),
                1,
            )
            .unwrap();
        assert_eq!(rep.packet.msg_type, MessageType::Reply);
        assert_eq!(rep.address, Some(offered));
        assert!(rep.leases_changed);
        assert_eq!(url(&rep.packet), Some("tftp://[fd00::1]/grubx64.efi"));
        assert!(rep
            .packet
            .options
            .contains(&Dhcp6Option::DnsServers(vec!["fd00::53".parse().unwrap()])));
        let renew = p
            .handle(
                &message(MessageType::Renew, vendor, 7, Some(sid.clone())),
                2,
            )
            .unwrap();
        assert_eq!(renew.address, Some(offered));
        // A machine that does not network-boot still gets an address, without boot options.
        let mut other = message(MessageType::Solicit, None, 7, None);
        other.options[0] = Dhcp6Option::ClientId(duid_ll([0x52, 0x54, 0, 0x12, 0x34, 0x57]));
        let plain = p.handle(&other, 3).unwrap();
        assert_ne!(plain.address, Some(offered));
        assert_eq!(url(&plain.packet), None);
        let mut confirm = message(MessageType::Confirm, vendor, 7, None);
        if let Some(Dhcp6Option::IaNa(ia)) = confirm.options.get_mut(1) {
            ia.addresses.push(IaAddress {
                addr: "2001:db8::1".parse().unwrap(),
                preferred: 0,
                valid: 0,
                status: None,
            });
        }
        let c = p.handle(&confirm, 4).unwrap();
        assert!(c
            .packet
            .options
            .iter()
            .any(|o| matches!(o, Dhcp6Option::StatusCode(status::NOT_ON_LINK, _))));
        let rel = p
            .handle(&message(MessageType::Release, vendor, 7, Some(sid)), 5)
            .unwrap();
        assert!(rel.leases_changed);
        let Mode6::Full { leases, .. } = &p.mode else {
            unreachable!()
        };
        assert!(leases.to_file().leases.is_empty());
    }

    #[test]
    fn rules_choose_the_file_by_mac_from_the_duid() {
        let mut p = policy(Mode6::Proxy);
        p.rules = Rules::parse(
            "[[machine]]\nmac = \"52:54:00:12:34:56\"\nbootfile = \"special.efi\"\n",
            "rules.toml",
        )
        .unwrap();
        let req = message(MessageType::Solicit, Some("PXEClient"), 7, None);
        let r = p.handle(&req, 0).unwrap();
        assert_eq!(url(&r.packet), Some("tftp://[fd00::1]/special.efi"));
        assert_eq!(client_label(&req), "52:54:00:12:34:56");
    }
}

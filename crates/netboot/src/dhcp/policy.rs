//! The DHCP decision logic: given a parsed request, what to answer and where to send it.
//! Proxy mode answers PXE and HTTP-boot clients only, with boot information and no address;
//! full mode also hands out leases. The boot file follows the client architecture (option 93),
//! iPXE gets its script URL instead of being chain-loaded again, option 97 is echoed.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::rules::{normalize_mac, Client, Rules};
use crate::wire::dhcp::{
    build_suboptions, format_mac, format_uuid, pxe, DhcpOption, DhcpRepr, MessageType,
    FLAG_BROADCAST, OP_REPLY, OP_REQUEST,
};

use super::leases::LeaseTable;

/// Where a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67: broadcast DHCP.
    Dhcp,
    /// 4011: the PXE boot server / proxyDHCP request port.
    Pxe,
}

/// Boot files per architecture and how iPXE is treated.
#[derive(Debug, Clone, Default)]
pub struct BootFiles {
    pub bios: Option<String>,
    pub uefi_x64: Option<String>,
    pub arm64: Option<String>,
    /// HTTP port of this server, for HTTP-boot URLs and the iPXE script URL; `None`: no HTTP.
    pub http_port: Option<u16>,
    /// What iPXE clients get: an explicit URL, or `Generated` for /boot.ipxe on this server.
    pub ipxe: IpxeScript,
}

impl BootFiles {
    /// The boot file configured for an architecture type (RFC 4578 / RFC 5970 numbers, the
    /// same in DHCPv4 option 93 and DHCPv6 option 61), and whether the type is an HTTP-boot
    /// one that needs a URL.
    pub fn for_arch(&self, arch: u16) -> (Option<String>, bool) {
        match arch {
            0 => (self.bios.clone(), false),
            6 | 7 | 9 => (self.uefi_x64.clone(), false),
            11 => (self.arm64.clone(), false),
            15 | 16 => (self.uefi_x64.clone(), true),
            19 => (self.arm64.clone(), true),
            _ => (None, false),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IpxeScript {
    /// iPXE is treated like any other client (gets the architecture's boot file).
    #[default]
    None,
    /// iPXE gets `http://server:port/boot.ipxe?mac=..&arch=..`.
    Generated,
    Url(String),
}

#[derive(Debug)]
pub enum Mode {
    Proxy,
    Full {
        leases: LeaseTable,
        subnet_mask: Ipv4Addr,
        router: Option<Ipv4Addr>,
        dns: Vec<Ipv4Addr>,
    },
}

/// A reply and where to send it; `leases_changed` asks the caller to save the lease file.
#[derive(Debug)]
pub struct Reply {
    pub packet: DhcpRepr,
    pub destination: SocketAddrV4,
    pub leases_changed: bool,
    /// One log line describing the exchange.
    pub summary: String,
}

/// Why a request got no reply (logged at debug level by the caller).
#[derive(Debug, PartialEq, Eq)]
pub enum Ignored {
    NotARequest,
    NotPxe,
    NotForUs,
    NoBootFile(String),
    PoolExhausted,
    Unhandled(&'static str),
}

pub struct Policy {
    pub mode: Mode,
    pub server_ip: Ipv4Addr,
    pub boot: BootFiles,
    pub rules: Rules,
}

/// What kind of client asked, from options 60, 77, 93 and 175.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKind {
    pub pxe: bool,
    pub http_client: bool,
    pub ipxe: bool,
    pub arch: Option<u16>,
}

pub fn classify(req: &DhcpRepr) -> ClientKind {
    let vendor = req.vendor_class().unwrap_or_default();
    ClientKind {
        pxe: vendor.starts_with(b"PXEClient"),
        http_client: vendor.starts_with(b"HTTPClient"),
        ipxe: req.user_class_contains(b"iPXE")
            || req.option(crate::wire::dhcp::code::IPXE).is_some(),
        arch: req.client_arch(),
    }
}

/// Human name of an architecture type.
pub fn arch_name(arch: Option<u16>) -> &'static str {
    match arch {
        None => "unknown",
        Some(0) => "x86 BIOS",
        Some(6) => "x86 UEFI",
        Some(7) | Some(9) => "x64 UEFI",
        Some(10) => "arm32 UEFI",
        Some(11) => "arm64 UEFI",
        Some(15) => "x86 UEFI HTTP",
        Some(16) => "x64 UEFI HTTP",
        Some(18) => "arm32 UEFI HTTP",
        Some(19) => "arm64 UEFI HTTP",
        Some(_) => "other",
    }
}

impl Policy {
    fn http_base(&self) -> Option<String> {
        self.boot.http_port.map(|p| {
            if p == 80 {
                format!("http://{}", self.server_ip)
            } else {
                format!("http://{}:{p}", self.server_ip)
            }
        })
    }

    /// The boot file (TFTP path or URL) for this client, or why there is none.
    pub fn boot_file(&self, req: &DhcpRepr, kind: &ClientKind) -> Result<String, Ignored> {
        let mac = format_mac(req.mac());
        if kind.ipxe {
            match &self.boot.ipxe {
                IpxeScript::Url(u) => return Ok(u.clone()),
                IpxeScript::Generated => {
                    if let Some(base) = self.http_base() {
                        let mut url = format!("{base}/boot.ipxe?mac={mac}");
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
            mac: Some(mac),
            arch: kind.arch,
            uuid: req.client_uuid().and_then(format_uuid),
        };
        if let Some(file) = self.rules.find(&client).and_then(|r| r.bootfile.clone()) {
            return Ok(file);
        }
        let arch = kind.arch.unwrap_or(0);
        let (file, http) = self.boot.for_arch(arch);
        let Some(file) = file else {
            return Err(Ignored::NoBootFile(format!(
                "no boot file configured for architecture {arch} ({})",
                arch_name(Some(arch))
            )));
        };
        if http || kind.http_client {
            if file.contains("://") {
                return Ok(file);
            }
            let Some(base) = self.http_base() else {
                return Err(Ignored::NoBootFile(
                    "an HTTP-boot client needs the HTTP server (--http-port)".into(),
                ));
            };
            return Ok(crate::rules::file_url(&file, &base));
        }
        Ok(file)
    }

    fn base_reply(&self, req: &DhcpRepr, message: MessageType) -> DhcpRepr {
        DhcpRepr {
            op: OP_REPLY,
            htype: req.htype,
            hlen: req.hlen,
            hops: 0,
            xid: req.xid,
            secs: 0,
            flags: req.flags,
            ciaddr: req.ciaddr,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: req.giaddr,
            chaddr: req.chaddr,
            sname: Vec::new(),
            file: Vec::new(),
            options: vec![
                DhcpOption::MessageType(message),
                DhcpOption::ServerId(self.server_ip),
            ],
        }
    }

    fn add_boot(&self, reply: &mut DhcpRepr, req: &DhcpRepr, kind: &ClientKind, file: &str) {
        reply.siaddr = self.server_ip;
        reply.sname = self.server_ip.to_string().into_bytes();
        reply.file = file.as_bytes().to_vec();
        let vendor: &[u8] = if kind.http_client {
            b"HTTPClient"
        } else {
            b"PXEClient"
        };
        reply.options.push(DhcpOption::VendorClass(vendor.to_vec()));
        if kind.pxe && !kind.ipxe {
            // Discovery control 8: boot the file named here, skip PXE boot-server discovery.
            reply
                .options
                .push(DhcpOption::VendorSpecific(build_suboptions(&[(
                    pxe::DISCOVERY_CONTROL,
                    vec![pxe::DISCOVERY_USE_BOOTFILE],
                )])));
        }
        reply.options.push(DhcpOption::TftpServerName(
            self.server_ip.to_string().into_bytes(),
        ));
        reply
            .options
            .push(DhcpOption::BootfileName(file.as_bytes().to_vec()));
        if let Some(uuid) = req.client_uuid() {
            reply.options.push(DhcpOption::ClientUuid(uuid.to_vec()));
        }
    }

    fn destination(
        req: &DhcpRepr,
        port: Port,
        source: SocketAddrV4,
        message: MessageType,
    ) -> SocketAddrV4 {
        if !req.giaddr.is_unspecified() {
            return SocketAddrV4::new(req.giaddr, 67);
        }
        if port == Port::Pxe {
            return source;
        }
        if !req.ciaddr.is_unspecified()
            && message != MessageType::Nak
            && req.flags & FLAG_BROADCAST == 0
        {
            return SocketAddrV4::new(req.ciaddr, 68);
        }
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    }

    /// Handles one request. `now_ms` drives lease expiry.
    pub fn handle(
        &mut self,
        req: &DhcpRepr,
        port: Port,
        source: SocketAddrV4,
        now_ms: u64,
    ) -> Result<Reply, Ignored> {
        if req.op != OP_REQUEST {
            return Err(Ignored::NotARequest);
        }
        let Some(message) = req.message_type() else {
            return Err(Ignored::Unhandled("BOOTP without DHCP message type"));
        };
        let kind = classify(req);
        let mac = format_mac(req.mac());
        let booting = kind.pxe || kind.http_client || kind.ipxe;
        let describe = |kind: &ClientKind| {
            format!(
                "arch={} ({}){}{}",
                kind.arch
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                arch_name(kind.arch),
                if kind.ipxe { " ipxe" } else { "" },
                if kind.http_client { " http-client" } else { "" }
            )
        };
        match &mut self.mode {
            Mode::Proxy => {
                if !booting {
                    return Err(Ignored::NotPxe);
                }
                let reply_type = match (message, port) {
                    (MessageType::Discover, Port::Dhcp) => MessageType::Offer,
                    // A REQUEST on port 67 belongs to the real DHCP server, even when it runs on
                    // this host and shares our server identifier: answering it makes firmware
                    // decline its lease. PXE clients confirm with the proxy on port 4011.
                    (MessageType::Request, Port::Pxe) | (MessageType::Inform, Port::Pxe) => {
                        MessageType::Ack
                    }
                    (MessageType::Discover, Port::Pxe) => MessageType::Ack,
                    _ => return Err(Ignored::NotForUs),
                };
                let file = self.boot_file(req, &kind)?;
                let mut reply = self.base_reply(req, reply_type);
                self.add_boot(&mut reply, req, &kind, &file);
                let destination = Self::destination(req, port, source, reply_type);
                let summary = format!(
                    "{} {} on port {} -> proxy {} boot={file}",
                    message.name(),
                    describe(&kind),
                    if port == Port::Dhcp { 67 } else { 4011 },
                    reply_type.name()
                );
                Ok(Reply {
                    packet: reply,
                    destination,
                    leases_changed: false,
                    summary,
                })
            }
            Mode::Full { .. } => self.handle_full(
                req,
                port,
                source,
                now_ms,
                message,
                &kind,
                &mac,
                describe(&kind),
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_full(
        &mut self,
        req: &DhcpRepr,
        port: Port,
        source: SocketAddrV4,
        now_ms: u64,
        message: MessageType,
        kind: &ClientKind,
        mac: &str,
        described: String,
    ) -> Result<Reply, Ignored> {
        let booting = kind.pxe || kind.http_client || kind.ipxe;
        let boot_file = if booting {
            Some(self.boot_file(req, kind))
        } else {
            None
        };
        let server_ip = self.server_ip;
        let hostname = req
            .hostname()
            .map(|h| String::from_utf8_lossy(h).into_owned());
        let Mode::Full {
            leases,
            subnet_mask,
            router,
            dns,
        } = &mut self.mode
        else {
            return Err(Ignored::Unhandled("mode"));
        };
        let (reply_type, ip, changed) = match message {
            MessageType::Discover => match leases.offer(mac, req.requested_ip(), now_ms) {
                Some(ip) => (MessageType::Offer, ip, false),
                None => return Err(Ignored::PoolExhausted),
            },
            MessageType::Request => {
                if let Some(id) = req.server_id() {
                    if id != server_ip {
                        // The client chose another server's offer: drop ours.
                        if leases.lease_of(mac).is_some_and(|l| !l.bound) {
                            leases.release(mac);
                        }
                        return Err(Ignored::NotForUs);
                    }
                }
                let wanted = req.requested_ip().unwrap_or(req.ciaddr);
                if leases.request(mac, wanted, hostname, now_ms) {
                    (MessageType::Ack, wanted, true)
                } else {
                    (MessageType::Nak, Ipv4Addr::UNSPECIFIED, false)
                }
            }
            MessageType::Release => {
                let changed = leases.release(mac);
                return Err(if changed {
                    Ignored::Unhandled("released")
                } else {
                    Ignored::NotForUs
                });
            }
            MessageType::Decline => {
                leases.release(mac);
                return Err(Ignored::Unhandled("declined"));
            }
            MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED, false),
            _ => return Err(Ignored::Unhandled("message type")),
        };
        let lease_secs = leases.lease_secs();
        let (mask, router, dns) = (*subnet_mask, *router, dns.clone());
        let mut reply = self.base_reply(req, reply_type);
        if reply_type == MessageType::Nak {
            let destination = Self::destination(req, port, source, reply_type);
            return Ok(Reply {
                packet: reply,
                destination,
                leases_changed: false,
                summary: format!("{} {described} -> NAK", message.name()),
            });
        }
        reply.yiaddr = ip;
        if message != MessageType::Inform {
            reply.options.push(DhcpOption::LeaseTime(lease_secs));
        }
        reply.options.push(DhcpOption::SubnetMask(mask));
        if let Some(r) = router {
            reply.options.push(DhcpOption::Router(vec![r]));
        }
        if !dns.is_empty() {
            reply.options.push(DhcpOption::DnsServers(dns));
        }
        let client = Client {
            mac: normalize_mac(mac),
            arch: kind.arch,
            uuid: req.client_uuid().and_then(format_uuid),
        };
        if let Some(name) = self.rules.find(&client).and_then(|r| r.hostname.clone()) {
            reply.options.push(DhcpOption::Hostname(name.into_bytes()));
        }
        let boot_note = match boot_file {
            Some(Ok(file)) => {
                self.add_boot(&mut reply, req, kind, &file);
                format!(" boot={file}")
            }
            Some(Err(Ignored::NoBootFile(why))) => format!(" (no boot file: {why})"),
            Some(Err(_)) | None => String::new(),
        };
        let destination = Self::destination(req, port, source, reply_type);
        let summary = format!(
            "{} {described} -> {} {ip}{boot_note}",
            message.name(),
            reply_type.name()
        );
        Ok(Reply {
            packet: reply,
            destination,
            leases_changed: changed,
            summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::dhcp::code;

    fn request(
        message: MessageType,
        vendor: Option<&[u8]>,
        arch: Option<u16>,
        ipxe: bool,
    ) -> DhcpRepr {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        let mut options = vec![DhcpOption::MessageType(message)];
        if let Some(v) = vendor {
            options.push(DhcpOption::VendorClass(v.to_vec()));
        }
        if let Some(a) = arch {
            options.push(DhcpOption::ClientArch(vec![a]));
        }
        if ipxe {
            options.push(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        options.push(DhcpOption::ClientUuid(vec![0; 17]));
        DhcpRepr {
            op: OP_REQUEST,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: 42,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            sname: vec![],
            file: vec![],
            options,
        }
    }

    fn policy(mode: Mode) -> Policy {
        Policy {
            mode,
            server_ip: "10.0.0.1".parse().unwrap(),
            boot: BootFiles {
                bios: Some("pxelinux.0".into()),
                uefi_x64: Some("grubx64.efi".into()),
                arm64: None,
                http_port: Some(8080),
                ipxe: IpxeScript::Generated,
            },
            rules: Rules::default(),
        }
    }

    fn src() -> SocketAddrV4 {
        "0.0.0.0:68".parse().unwrap()
    }

    #[test]
    fn proxy_ignores_non_pxe_clients() {
        let mut p = policy(Mode::Proxy);
        let r = p.handle(
            &request(MessageType::Discover, Some(b"MSFT 5.0"), None, false),
            Port::Dhcp,
            src(),
            0,
        );
        assert_eq!(r.unwrap_err(), Ignored::NotPxe);
    }

    #[test]
    fn proxy_offer_has_boot_file_and_no_address() {
        let mut p = policy(Mode::Proxy);
        let r = p
            .handle(
                &request(
                    MessageType::Discover,
                    Some(b"PXEClient:Arch:00000"),
                    Some(0),
                    false,
                ),
                Port::Dhcp,
                src(),
                0,
            )
            .unwrap();
        assert_eq!(r.packet.message_type(), Some(MessageType::Offer));
        assert_eq!(r.packet.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(r.packet.file, b"pxelinux.0");
        assert_eq!(r.packet.vendor_class(), Some(&b"PXEClient"[..]));
        assert!(r.packet.option(code::VENDOR_SPECIFIC).is_some());
        assert_eq!(r.packet.client_uuid(), Some(&[0u8; 17][..]));
        assert_eq!(r.destination, "255.255.255.255:68".parse().unwrap());
    }

    #[test]
    fn uefi_arch_gets_uefi_file_and_4011_reply_goes_back_to_sender() {
        let mut p = policy(Mode::Proxy);
        let from: SocketAddrV4 = "10.0.0.7:68".parse().unwrap();
        let r = p
            .handle(
                &request(
                    MessageType::Request,
                    Some(b"PXEClient:Arch:00007"),
                    Some(7),
                    false,
                ),
                Port::Pxe,
                from,
                0,
            )
            .unwrap();
        assert_eq!(r.packet.message_type(), Some(MessageType::Ack));
        assert_eq!(r.packet.file, b"grubx64.efi");
        assert_eq!(r.destination, from);
    }

    #[test]
    fn proxy_leaves_port_67_requests_to_the_dhcp_server() {
        let mut p = policy(Mode::Proxy);
        let mut req = request(
            MessageType::Request,
            Some(b"PXEClient:Arch:00007"),
            Some(7),
            false,
        );
        req.options
            .push(DhcpOption::ServerId("10.0.0.1".parse().unwrap()));
        assert_eq!(
            p.handle(&req, Port::Dhcp, src(), 0).unwrap_err(),
            Ignored::NotForUs
        );
    }

    #[test]
    fn http_client_gets_url_and_httpclient_vendor() {
        let mut p = policy(Mode::Proxy);
        let r = p
            .handle(
                &request(
                    MessageType::Discover,
                    Some(b"HTTPClient:Arch:00016"),
                    Some(16),
                    false,
                ),
                Port::Dhcp,
                src(),
                0,
            )
            .unwrap();
        assert_eq!(r.packet.file, b"http://10.0.0.1:8080/grubx64.efi");
        assert_eq!(r.packet.vendor_class(), Some(&b"HTTPClient"[..]));
    }

    #[test]
    fn ipxe_gets_script_url() {
        let mut p = policy(Mode::Proxy);
        let r = p
            .handle(
                &request(
                    MessageType::Discover,
                    Some(b"PXEClient:Arch:00000"),
                    Some(0),
                    true,
                ),
                Port::Dhcp,
                src(),
                0,
            )
            .unwrap();
        assert_eq!(
            r.packet.file,
            b"http://10.0.0.1:8080/boot.ipxe?mac=52:54:00:01:02:03&arch=0"
        );
    }

    #[test]
    fn unknown_arch_without_file_is_ignored() {
        let mut p = policy(Mode::Proxy);
        let r = p.handle(
            &request(MessageType::Discover, Some(b"PXEClient"), Some(11), false),
            Port::Dhcp,
            src(),
            0,
        );
        assert!(matches!(r, Err(Ignored::NoBootFile(_))));
    }

    #[test]
    fn full_mode_offers_then_acks_address() {
        let leases = LeaseTable::new(
            "10.0.0.10".parse().unwrap(),
            "10.0.0.20".parse().unwrap(),
            600,
            "10.0.0.1".parse().unwrap(),
        )
        .unwrap();
        let mut p = policy(Mode::Full {
            leases,
            subnet_mask: "255.255.255.0".parse().unwrap(),
            router: None,
            dns: vec![],
        });
        let offer = p
            .handle(
                &request(MessageType::Discover, None, None, false),
                Port::Dhcp,
                src(),
                0,
            )
            .unwrap();
        assert_eq!(
            offer.packet.yiaddr,
            "10.0.0.10".parse::<Ipv4Addr>().unwrap()
        );
        assert!(offer.packet.file.is_empty());
        let mut req = request(
            MessageType::Request,
            Some(b"PXEClient:Arch:00000"),
            Some(0),
            false,
        );
        req.options
            .push(DhcpOption::RequestedIp(offer.packet.yiaddr));
        req.options
            .push(DhcpOption::ServerId("10.0.0.1".parse().unwrap()));
        let ack = p.handle(&req, Port::Dhcp, src(), 0).unwrap();
        assert_eq!(ack.packet.message_type(), Some(MessageType::Ack));
        assert!(ack.leases_changed);
        assert_eq!(ack.packet.file, b"pxelinux.0");
    }

    #[test]
    fn full_mode_naks_foreign_address() {
        let leases = LeaseTable::new(
            "10.0.0.10".parse().unwrap(),
            "10.0.0.20".parse().unwrap(),
            600,
            "10.0.0.1".parse().unwrap(),
        )
        .unwrap();
        let mut p = policy(Mode::Full {
            leases,
            subnet_mask: "255.255.255.0".parse().unwrap(),
            router: None,
            dns: vec![],
        });
        let mut req = request(MessageType::Request, None, None, false);
        req.options
            .push(DhcpOption::RequestedIp("192.168.1.5".parse().unwrap()));
        let nak = p.handle(&req, Port::Dhcp, src(), 0).unwrap();
        assert_eq!(nak.packet.message_type(), Some(MessageType::Nak));
    }
}

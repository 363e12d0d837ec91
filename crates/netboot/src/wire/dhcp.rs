//! DHCPv4 / BOOTP packets (RFC 2131, 2132) with the PXE options (RFC 4578: 93 client
//! architecture, 94 network interface id, 97 machine UUID; option 43 PXE vendor sub-options),
//! user class 77 (RFC 3004), vendor class 60 and iPXE's encapsulated option 175.
//!
//! `DhcpRepr::parse` takes untrusted bytes and never panics: the fixed header is checked with
//! `check_len`, options are walked with bounds checks, and an option split over several
//! instances (RFC 3396) is concatenated. Option codes we do not model are kept as
//! `DhcpOption::Unknown(code, bytes)` and emitted back unchanged.

use std::net::Ipv4Addr;

use thiserror::Error;

mod field {
    use std::ops::Range;
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: Range<usize> = 4..8;
    pub const SECS: Range<usize> = 8..10;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const SIADDR: Range<usize> = 20..24;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const SNAME: Range<usize> = 44..108;
    pub const FILE: Range<usize> = 108..236;
    pub const MAGIC: Range<usize> = 236..240;
    pub const OPTIONS: usize = 240;
}

/// The fixed BOOTP header plus the DHCP magic cookie.
pub const HEADER_LEN: usize = field::OPTIONS;
/// RFC 2131 magic cookie that starts the options.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// BOOTP requires replies of at least 300 bytes; some PXE ROMs drop shorter ones.
pub const MIN_PACKET: usize = 300;
/// Largest datagram we read: the IPv4 UDP maximum; anything longer was truncated by the kernel.
pub const MAX_PACKET: usize = 65507;
/// Flag bit asking the server to broadcast its reply (RFC 2131 figure 2).
pub const FLAG_BROADCAST: u16 = 0x8000;

pub const OP_REQUEST: u8 = 1;
pub const OP_REPLY: u8 = 2;

/// Why a packet could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DhcpError {
    #[error("DHCP packet of {0} bytes is shorter than the 240-byte BOOTP header")]
    Truncated(usize),
    #[error("DHCP packet has no magic cookie at offset 0xec (found {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("DHCP option {code} at offset {offset:#x} runs past the end of the packet")]
    OptionOverrun { code: u8, offset: usize },
    #[error("DHCP hardware address length {0} exceeds 16")]
    BadHardwareLength(u8),
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
    Unknown(u8),
}

impl MessageType {
    pub fn from_u8(v: u8) -> MessageType {
        match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            other => MessageType::Unknown(other),
        }
    }
    pub fn to_u8(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Release => 7,
            MessageType::Inform => 8,
            MessageType::Unknown(v) => v,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            MessageType::Discover => "DISCOVER",
            MessageType::Offer => "OFFER",
            MessageType::Request => "REQUEST",
            MessageType::Decline => "DECLINE",
            MessageType::Ack => "ACK",
            MessageType::Nak => "NAK",
            MessageType::Release => "RELEASE",
            MessageType::Inform => "INFORM",
            MessageType::Unknown(_) => "UNKNOWN",
        }
    }
}

/// Option codes we model.
pub mod code {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER: u8 = 66;
    pub const BOOTFILE: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const IPXE: u8 = 175;
    pub const END: u8 = 255;
}

/// One DHCP option. Values are owned so a reply can be built from a request's pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpOption {
    SubnetMask(Ipv4Addr),
    Router(Vec<Ipv4Addr>),
    DnsServers(Vec<Ipv4Addr>),
    Hostname(Vec<u8>),
    /// Option 43, raw; `pxe_suboptions` decodes PXE's encapsulation.
    VendorSpecific(Vec<u8>),
    RequestedIp(Ipv4Addr),
    LeaseTime(u32),
    MessageType(MessageType),
    ServerId(Ipv4Addr),
    ParameterRequestList(Vec<u8>),
    Message(Vec<u8>),
    MaxMessageSize(u16),
    VendorClass(Vec<u8>),
    ClientId(Vec<u8>),
    TftpServerName(Vec<u8>),
    BootfileName(Vec<u8>),
    /// Option 77, raw. iPXE sends the bare string "iPXE"; RFC 3004 clients send
    /// length-prefixed items; `user_class_contains` handles both.
    UserClass(Vec<u8>),
    /// Option 93: one or more 16-bit architecture types.
    ClientArch(Vec<u16>),
    /// Option 94: type, major, minor.
    ClientNdi(Vec<u8>),
    /// Option 97: type byte (0) and 16-byte UUID.
    ClientUuid(Vec<u8>),
    /// Option 175: iPXE's encapsulated feature options.
    Ipxe(Vec<u8>),
    Unknown(u8, Vec<u8>),
}

fn ipv4_at(b: &[u8]) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

fn ipv4_list(b: &[u8]) -> Vec<Ipv4Addr> {
    b.chunks_exact(4).filter_map(ipv4_at).collect()
}

impl DhcpOption {
    pub fn code(&self) -> u8 {
        match self {
            DhcpOption::SubnetMask(_) => code::SUBNET_MASK,
            DhcpOption::Router(_) => code::ROUTER,
            DhcpOption::DnsServers(_) => code::DNS,
            DhcpOption::Hostname(_) => code::HOSTNAME,
            DhcpOption::VendorSpecific(_) => code::VENDOR_SPECIFIC,
            DhcpOption::RequestedIp(_) => code::REQUESTED_IP,
            DhcpOption::LeaseTime(_) => code::LEASE_TIME,
            DhcpOption::MessageType(_) => code::MESSAGE_TYPE,
            DhcpOption::ServerId(_) => code::SERVER_ID,
            DhcpOption::ParameterRequestList(_) => code::PARAMETER_REQUEST_LIST,
            DhcpOption::Message(_) => code::MESSAGE,
            DhcpOption::MaxMessageSize(_) => code::MAX_MESSAGE_SIZE,
            DhcpOption::VendorClass(_) => code::VENDOR_CLASS,
            DhcpOption::ClientId(_) => code::CLIENT_ID,
            DhcpOption::TftpServerName(_) => code::TFTP_SERVER,
            DhcpOption::BootfileName(_) => code::BOOTFILE,
            DhcpOption::UserClass(_) => code::USER_CLASS,
            DhcpOption::ClientArch(_) => code::CLIENT_ARCH,
            DhcpOption::ClientNdi(_) => code::CLIENT_NDI,
            DhcpOption::ClientUuid(_) => code::CLIENT_UUID,
            DhcpOption::Ipxe(_) => code::IPXE,
            DhcpOption::Unknown(c, _) => *c,
        }
    }

    /// Decodes one option's (already concatenated) value. Values of the wrong length for a
    /// typed option are kept as `Unknown` rather than rejected: a strange client still gets served.
    pub fn decode(option_code: u8, value: &[u8]) -> DhcpOption {
        let v = value.to_vec();
        let typed = match option_code {
            code::SUBNET_MASK if value.len() == 4 => ipv4_at(value).map(DhcpOption::SubnetMask),
            code::ROUTER if value.len().is_multiple_of(4) => {
                Some(DhcpOption::Router(ipv4_list(value)))
            }
            code::DNS if value.len().is_multiple_of(4) => {
                Some(DhcpOption::DnsServers(ipv4_list(value)))
            }
            code::HOSTNAME => Some(DhcpOption::Hostname(v.clone())),
            code::VENDOR_SPECIFIC => Some(DhcpOption::VendorSpecific(v.clone())),
            code::REQUESTED_IP if value.len() == 4 => ipv4_at(value).map(DhcpOption::RequestedIp),
            code::LEASE_TIME if value.len() == 4 => {
                Some(DhcpOption::LeaseTime(u32::from_be_bytes([
                    value[0], value[1], value[2], value[3],
                ])))
            }
            code::MESSAGE_TYPE if value.len() == 1 => {
                Some(DhcpOption::MessageType(MessageType::from_u8(value[0])))
            }
            code::SERVER_ID if value.len() == 4 => ipv4_at(value).map(DhcpOption::ServerId),
            code::PARAMETER_REQUEST_LIST => Some(DhcpOption::ParameterRequestList(v.clone())),
            code::MESSAGE => Some(DhcpOption::Message(v.clone())),
            code::MAX_MESSAGE_SIZE if value.len() == 2 => {
                Some(DhcpOption::MaxMessageSize(u16::from_be_bytes([
                    value[0], value[1],
                ])))
            }
            code::VENDOR_CLASS => Some(DhcpOption::VendorClass(v.clone())),
            code::CLIENT_ID => Some(DhcpOption::ClientId(v.clone())),
            code::TFTP_SERVER => Some(DhcpOption::TftpServerName(v.clone())),
            code::BOOTFILE => Some(DhcpOption::BootfileName(v.clone())),
            code::USER_CLASS => Some(DhcpOption::UserClass(v.clone())),
            code::CLIENT_ARCH if value.len().is_multiple_of(2) && !value.is_empty() => {
                Some(DhcpOption::ClientArch(
                    value
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect(),
                ))
            }
            code::CLIENT_NDI => Some(DhcpOption::ClientNdi(v.clone())),
            code::CLIENT_UUID => Some(DhcpOption::ClientUuid(v.clone())),
            code::IPXE => Some(DhcpOption::Ipxe(v.clone())),
            _ => None,
        };
        typed.unwrap_or(DhcpOption::Unknown(option_code, v))
    }

    /// The option's value bytes.
    pub fn value(&self) -> Vec<u8> {
        match self {
            DhcpOption::SubnetMask(a) | DhcpOption::RequestedIp(a) | DhcpOption::ServerId(a) => {
                a.octets().to_vec()
            }
            DhcpOption::Router(l) | DhcpOption::DnsServers(l) => {
                l.iter().flat_map(|a| a.octets()).collect()
            }
            DhcpOption::LeaseTime(t) => t.to_be_bytes().to_vec(),
            DhcpOption::MessageType(t) => vec![t.to_u8()],
            DhcpOption::MaxMessageSize(s) => s.to_be_bytes().to_vec(),
            DhcpOption::ClientArch(l) => l.iter().flat_map(|a| a.to_be_bytes()).collect(),
            DhcpOption::Hostname(v)
            | DhcpOption::VendorSpecific(v)
            | DhcpOption::ParameterRequestList(v)
            | DhcpOption::Message(v)
            | DhcpOption::VendorClass(v)
            | DhcpOption::ClientId(v)
            | DhcpOption::TftpServerName(v)
            | DhcpOption::BootfileName(v)
            | DhcpOption::UserClass(v)
            | DhcpOption::ClientNdi(v)
            | DhcpOption::ClientUuid(v)
            | DhcpOption::Ipxe(v)
            | DhcpOption::Unknown(_, v) => v.clone(),
        }
    }
}

/// A decoded DHCP/BOOTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpRepr {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// Server host name field, up to its first NUL.
    pub sname: Vec<u8>,
    /// Boot file name field, up to its first NUL.
    pub file: Vec<u8>,
    /// Options in first-seen order; repeated codes are concatenated (RFC 3396).
    pub options: Vec<DhcpOption>,
}

fn field_string(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b[..end].to_vec()
}

/// Raw option walk: (code, offset, value) triples, bounds-checked.
fn walk_options(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, DhcpError> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut offset = field::OPTIONS;
    while offset < bytes.len() {
        let option_code = bytes[offset];
        if option_code == code::PAD {
            offset += 1;
            continue;
        }
        if option_code == code::END {
            break;
        }
        let Some(&len) = bytes.get(offset + 1) else {
            return Err(DhcpError::OptionOverrun {
                code: option_code,
                offset,
            });
        };
        let start = offset + 2;
        let end = start + len as usize;
        let Some(value) = bytes.get(start..end) else {
            return Err(DhcpError::OptionOverrun {
                code: option_code,
                offset,
            });
        };
        match out.iter_mut().find(|(c, _)| *c == option_code) {
            Some((_, existing)) => existing.extend_from_slice(value),
            None => out.push((option_code, value.to_vec())),
        }
        offset = end;
    }
    Ok(out)
}

impl DhcpRepr {
    /// Checks that `bytes` holds the fixed header and the magic cookie.
    pub fn check_len(bytes: &[u8]) -> Result<(), DhcpError> {
        if bytes.len() < HEADER_LEN {
            return Err(DhcpError::Truncated(bytes.len()));
        }
        let magic: [u8; 4] = [bytes[236], bytes[237], bytes[238], bytes[239]];
        if magic != MAGIC_COOKIE {
            return Err(DhcpError::BadMagic(magic));
        }
        Ok(())
    }

    pub fn parse(bytes: &[u8]) -> Result<DhcpRepr, DhcpError> {
        Self::check_len(bytes)?;
        let ip = |r: std::ops::Range<usize>| {
            Ipv4Addr::new(
                bytes[r.start],
                bytes[r.start + 1],
                bytes[r.start + 2],
                bytes[r.start + 3],
            )
        };
        let hlen = bytes[field::HLEN];
        if hlen > 16 {
            return Err(DhcpError::BadHardwareLength(hlen));
        }
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&bytes[field::CHADDR]);
        let x = &bytes[field::XID];
        let options = walk_options(bytes)?
            .into_iter()
            .map(|(c, v)| DhcpOption::decode(c, &v))
            .collect();
        Ok(DhcpRepr {
            op: bytes[field::OP],
            htype: bytes[field::HTYPE],
            hlen,
            hops: bytes[field::HOPS],
            xid: u32::from_be_bytes([x[0], x[1], x[2], x[3]]),
            secs: u16::from_be_bytes([bytes[field::SECS.start], bytes[field::SECS.start + 1]]),
            flags: u16::from_be_bytes([bytes[field::FLAGS.start], bytes[field::FLAGS.start + 1]]),
            ciaddr: ip(field::CIADDR),
            yiaddr: ip(field::YIADDR),
            siaddr: ip(field::SIADDR),
            giaddr: ip(field::GIADDR),
            chaddr,
            sname: field_string(&bytes[field::SNAME]),
            file: field_string(&bytes[field::FILE]),
            options,
        })
    }

    /// Emits the packet, options in order, each split into 255-byte pieces when longer
    /// (RFC 3396), padded to the BOOTP minimum of 300 bytes.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_LEN];
        out[field::OP] = self.op;
        out[field::HTYPE] = self.htype;
        out[field::HLEN] = self.hlen;
        out[field::HOPS] = self.hops;
        out[field::XID].copy_from_slice(&self.xid.to_be_bytes());
        out[field::SECS].copy_from_slice(&self.secs.to_be_bytes());
        out[field::FLAGS].copy_from_slice(&self.flags.to_be_bytes());
        out[field::CIADDR].copy_from_slice(&self.ciaddr.octets());
        out[field::YIADDR].copy_from_slice(&self.yiaddr.octets());
        out[field::SIADDR].copy_from_slice(&self.siaddr.octets());
        out[field::GIADDR].copy_from_slice(&self.giaddr.octets());
        out[field::CHADDR].copy_from_slice(&self.chaddr);
        // Fields longer than their slot are cut, leaving room for a terminating NUL.
        let sname_len = self.sname.len().min(field::SNAME.len() - 1);
        out[field::SNAME.start..field::SNAME.start + sname_len]
            .copy_from_slice(&self.sname[..sname_len]);
        let file_len = self.file.len().min(field::FILE.len() - 1);
        out[field::FILE.start..field::FILE.start + file_len]
            .copy_from_slice(&self.file[..file_len]);
        out[field::MAGIC].copy_from_slice(&MAGIC_COOKIE);
        for option in &self.options {
            let value = option.value();
            if value.is_empty() {
                out.extend_from_slice(&[option.code(), 0]);
            }
            for piece in value.chunks(255) {
                out.push(option.code());
                out.push(piece.len() as u8);
                out.extend_from_slice(piece);
            }
        }
        out.push(code::END);
        if out.len() < MIN_PACKET {
            out.resize(MIN_PACKET, 0);
        }
        out
    }

    /// The first option with this code.
    pub fn option(&self, option_code: u8) -> Option<&DhcpOption> {
        self.options.iter().find(|o| o.code() == option_code)
    }

    pub fn message_type(&self) -> Option<MessageType> {
        self.options.iter().find_map(|o| match o {
            DhcpOption::MessageType(t) => Some(*t),
            _ => None,
        })
    }

    /// The client hardware address (first `hlen` bytes of chaddr).
    pub fn mac(&self) -> &[u8] {
        &self.chaddr[..(self.hlen as usize).min(16)]
    }

    pub fn vendor_class(&self) -> Option<&[u8]> {
        self.options.iter().find_map(|o| match o {
            DhcpOption::VendorClass(v) => Some(v.as_slice()),
            _ => None,
        })
    }

    /// First architecture type from option 93.
    pub fn client_arch(&self) -> Option<u16> {
        self.options.iter().find_map(|o| match o {
            DhcpOption::ClientArch(l) => l.first().copied(),
            _ => None,
        })
    }

    pub fn client_uuid(&self) -> Option<&[u8]> {
        self.options.iter().find_map(|o| match o {
            DhcpOption::ClientUuid(v) => Some(v.as_slice()),
            _ => None,
        })
    }

    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        self.options.iter().find_map(|o| match o {
            DhcpOption::RequestedIp(a) => Some(*a),
            _ => None,
        })
    }

    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.options.iter().find_map(|o| match o {
            DhcpOption::ServerId(a) => Some(*a),
            _ => None,
        })
    }

    pub fn hostname(&self) -> Option<&[u8]> {
        self.options.iter().find_map(|o| match o {
            DhcpOption::Hostname(v) => Some(v.as_slice()),
            _ => None,
        })
    }

    /// True when option 77 names `class`, in iPXE's bare form or RFC 3004's length-prefixed form.
    pub fn user_class_contains(&self, class: &[u8]) -> bool {
        let Some(DhcpOption::UserClass(raw)) = self.option(code::USER_CLASS) else {
            return false;
        };
        if raw.as_slice() == class {
            return true;
        }
        let mut rest = raw.as_slice();
        while let Some((&len, tail)) = rest.split_first() {
            let Some(item) = tail.get(..len as usize) else {
                return false;
            };
            if item == class {
                return true;
            }
            rest = &tail[len as usize..];
        }
        false
    }
}

/// PXE vendor sub-options inside option 43 (PXE spec 2.1 table 2-1).
pub mod pxe {
    pub const DISCOVERY_CONTROL: u8 = 6;
    pub const BOOT_SERVERS: u8 = 8;
    pub const BOOT_MENU: u8 = 9;
    pub const MENU_PROMPT: u8 = 10;
    pub const BOOT_ITEM: u8 = 71;
    /// Discovery control bit 3: boot from the file name in this packet, skip boot server
    /// discovery.
    pub const DISCOVERY_USE_BOOTFILE: u8 = 0x08;
}

/// Splits an encapsulated option block (43 or 175) into (sub-code, value) pairs; `None` when
/// a sub-option runs past the end.
pub fn suboptions(raw: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some((&sub, tail)) = rest.split_first() {
        if sub == code::PAD {
            rest = tail;
            continue;
        }
        if sub == code::END {
            break;
        }
        let (&len, tail) = tail.split_first()?;
        let value = tail.get(..len as usize)?;
        out.push((sub, value.to_vec()));
        rest = &tail[len as usize..];
    }
    Some(out)
}

/// Builds an encapsulated option block from (sub-code, value) pairs, ended by 255.
pub fn build_suboptions(items: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (sub, value) in items {
        for piece in value.chunks(255) {
            out.push(*sub);
            out.push(piece.len() as u8);
            out.extend_from_slice(piece);
        }
    }
    out.push(code::END);
    out
}

/// "52:54:00:12:34:56" for a hardware address.
pub fn format_mac(mac: &[u8]) -> String {
    let mut s = String::with_capacity(mac.len() * 3);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Formats option 97's payload (type 0 + 16 bytes, SMBIOS byte order) as a UUID string.
pub fn format_uuid(raw: &[u8]) -> Option<String> {
    let u = match raw.len() {
        17 if raw[0] == 0 => &raw[1..],
        16 => raw,
        _ => return None,
    };
    // SMBIOS stores the first three fields little-endian; firmware shows them that way.
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DISCOVER shaped like QEMU's iPXE ROM sends (BIOS, user class iPXE, option 175).
    pub fn ipxe_discover() -> DhcpRepr {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        DhcpRepr {
            op: OP_REQUEST,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: 0x1234_5678,
            secs: 0,
            flags: FLAG_BROADCAST,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            sname: vec![],
            file: vec![],
            options: vec![
                DhcpOption::MessageType(MessageType::Discover),
                DhcpOption::MaxMessageSize(1472),
                DhcpOption::ClientArch(vec![0]),
                DhcpOption::ClientNdi(vec![1, 2, 1]),
                DhcpOption::VendorClass(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::UserClass(b"iPXE".to_vec()),
                DhcpOption::ParameterRequestList(vec![
                    1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133,
                    134, 135, 175, 203,
                ]),
                DhcpOption::Ipxe(vec![
                    0xb1, 5, 1, 0x10, 0xec, 0x81, 0x39, 0xeb, 3, 1, 0, 0, 0x17, 1, 1, 0x15, 1, 1,
                    0x18, 1, 1, 0x13, 1, 1,
                ]),
                DhcpOption::ClientUuid({
                    let mut u = vec![0u8];
                    u.extend(1..=16u8);
                    u
                }),
                DhcpOption::Unknown(250, vec![1, 2, 3]),
            ],
        }
    }

    #[test]
    fn round_trip_keeps_every_field_and_unknown_options() {
        let repr = ipxe_discover();
        let bytes = repr.emit();
        assert!(bytes.len() >= MIN_PACKET);
        assert_eq!(DhcpRepr::parse(&bytes).unwrap(), repr);
    }

    #[test]
    fn short_packet_is_truncated() {
        assert_eq!(DhcpRepr::parse(&[0u8; 100]), Err(DhcpError::Truncated(100)));
    }

    #[test]
    fn missing_magic_cookie_is_rejected() {
        let mut bytes = ipxe_discover().emit();
        bytes[236] = 0;
        assert!(matches!(
            DhcpRepr::parse(&bytes),
            Err(DhcpError::BadMagic(_))
        ));
    }

    #[test]
    fn option_running_past_end_is_rejected() {
        let mut bytes = ipxe_discover().emit();
        bytes.truncate(240);
        bytes.extend_from_slice(&[60, 200, b'P']);
        assert!(matches!(
            DhcpRepr::parse(&bytes),
            Err(DhcpError::OptionOverrun { code: 60, .. })
        ));
    }

    #[test]
    fn hardware_length_over_16_is_rejected() {
        let mut bytes = ipxe_discover().emit();
        bytes[2] = 17;
        assert_eq!(
            DhcpRepr::parse(&bytes),
            Err(DhcpError::BadHardwareLength(17))
        );
    }

    #[test]
    fn split_options_are_concatenated() {
        let mut bytes = ipxe_discover().emit();
        bytes.truncate(240);
        bytes.extend_from_slice(&[
            53, 1, 1, 60, 3, b'P', b'X', b'E', 60, 6, b'C', b'l', b'i', b'e', b'n', b't', 255,
        ]);
        let repr = DhcpRepr::parse(&bytes).unwrap();
        assert_eq!(repr.vendor_class(), Some(&b"PXEClient"[..]));
    }

    #[test]
    fn long_option_is_split_on_emit() {
        let mut repr = ipxe_discover();
        repr.options = vec![DhcpOption::BootfileName(vec![b'a'; 300])];
        let bytes = repr.emit();
        assert_eq!(bytes[240], code::BOOTFILE);
        assert_eq!(bytes[241], 255);
        assert_eq!(DhcpRepr::parse(&bytes).unwrap().options, repr.options);
    }

    #[test]
    fn wrong_length_typed_option_becomes_unknown() {
        assert_eq!(
            DhcpOption::decode(code::SERVER_ID, &[1, 2, 3]),
            DhcpOption::Unknown(54, vec![1, 2, 3])
        );
    }

    #[test]
    fn user_class_in_both_forms() {
        let mut repr = ipxe_discover();
        assert!(repr.user_class_contains(b"iPXE"));
        repr.options[5] = DhcpOption::UserClass(b"\x03abc\x04iPXE".to_vec());
        assert!(repr.user_class_contains(b"iPXE"));
        repr.options[5] = DhcpOption::UserClass(b"\x09abc".to_vec());
        assert!(!repr.user_class_contains(b"iPXE"));
    }

    #[test]
    fn pxe_suboptions_round_trip() {
        let items = vec![(pxe::DISCOVERY_CONTROL, vec![pxe::DISCOVERY_USE_BOOTFILE])];
        let raw = build_suboptions(&items);
        assert_eq!(suboptions(&raw).unwrap(), items);
        assert_eq!(suboptions(&[6, 5, 1]), None);
    }

    #[test]
    fn uuid_and_mac_format() {
        let repr = ipxe_discover();
        assert_eq!(format_mac(repr.mac()), "52:54:00:12:34:56");
        assert_eq!(
            format_uuid(repr.client_uuid().unwrap()).unwrap(),
            "04030201-0605-0807-090a-0b0c0d0e0f10"
        );
    }
}

//! DHCPv6 messages (RFC 8415) with the network boot options of RFC 5970 (59 boot file URL,
//! 60 boot file parameters, 61 client architecture types, 62 network interface id) and the
//! vendor class (16) UEFI HTTP boot sends as "HTTPClient".
//!
//! `Dhcp6Repr::parse` takes untrusted bytes and never panics: every length is checked against
//! what remains, option counts and nesting are bounded by named limits, and option codes we do
//! not model are kept as `Dhcp6Option::Unknown(code, bytes)` and emitted back unchanged.
//! Relay messages (12, 13) are parsed as their fixed header's message type only and refused.

use std::net::Ipv6Addr;

use thiserror::Error;
use vmedia_io::bytes::{be16, be32};

/// Largest datagram we read (the UDP maximum over IPv6 without jumbograms).
pub const MAX_PACKET: usize = 65_535;
/// Options in one message or one IA_NA: a boot exchange carries about ten, so thousands are
/// an attack, and each is an allocation.
pub const MAX_OPTIONS: usize = 256;
/// Entries in a list-valued option (ORO, architectures, vendor class data, boot parameters):
/// bounded like `MAX_OPTIONS`.
pub const MAX_LIST: usize = 256;
/// Longest DUID (RFC 8415 section 11.1: at most 128 octets plus the 2-octet type).
pub const MAX_DUID: usize = 130;

/// The DHCPv6 server and relay agent port.
pub const SERVER_PORT: u16 = 547;
/// The DHCPv6 client port.
pub const CLIENT_PORT: u16 = 546;
/// All_DHCP_Relay_Agents_and_Servers (link-scoped multicast the clients send to).
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// Option codes (RFC 8415 section 21, RFC 3646, RFC 5970).
pub mod code {
    pub const CLIENT_ID: u16 = 1;
    pub const SERVER_ID: u16 = 2;
    pub const IA_NA: u16 = 3;
    pub const IA_ADDR: u16 = 5;
    pub const ORO: u16 = 6;
    pub const ELAPSED_TIME: u16 = 8;
    pub const STATUS_CODE: u16 = 13;
    pub const RAPID_COMMIT: u16 = 14;
    pub const USER_CLASS: u16 = 15;
    pub const VENDOR_CLASS: u16 = 16;
    pub const DNS_SERVERS: u16 = 23;
    pub const BOOTFILE_URL: u16 = 59;
    pub const BOOTFILE_PARAM: u16 = 60;
    pub const CLIENT_ARCH_TYPE: u16 = 61;
    pub const NII: u16 = 62;
}

/// Status codes (RFC 8415 section 21.13).
pub mod status {
    pub const SUCCESS: u16 = 0;
    pub const NO_ADDRS_AVAIL: u16 = 2;
    pub const NO_BINDING: u16 = 3;
    pub const NOT_ON_LINK: u16 = 4;
}

/// Why a message could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Dhcp6Error {
    #[error("DHCPv6 message of {0} bytes is shorter than its 4-byte header")]
    Truncated(usize),
    #[error("DHCPv6 option {code} at offset {offset:#x} runs past the end of its container")]
    OptionOverrun { code: u16, offset: usize },
    #[error("DHCPv6 option {code} at offset {offset:#x}: {reason}")]
    BadOption {
        code: u16,
        offset: usize,
        reason: &'static str,
    },
    #[error("DHCPv6 message has more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("DHCPv6 relay message (type {0}): relays are not supported")]
    Relay(u8),
}

/// Message types (RFC 8415 section 7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Solicit,
    Advertise,
    Request,
    Confirm,
    Renew,
    Rebind,
    Reply,
    Release,
    Decline,
    InformationRequest,
    Unknown(u8),
}

impl MessageType {
    pub fn from_u8(v: u8) -> MessageType {
        match v {
            1 => MessageType::Solicit,
            2 => MessageType::Advertise,
            3 => MessageType::Request,
            4 => MessageType::Confirm,
            5 => MessageType::Renew,
            6 => MessageType::Rebind,
            7 => MessageType::Reply,
            8 => MessageType::Release,
            9 => MessageType::Decline,
            11 => MessageType::InformationRequest,
            other => MessageType::Unknown(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            MessageType::Solicit => 1,
            MessageType::Advertise => 2,
            MessageType::Request => 3,
            MessageType::Confirm => 4,
            MessageType::Renew => 5,
            MessageType::Rebind => 6,
            MessageType::Reply => 7,
            MessageType::Release => 8,
            MessageType::Decline => 9,
            MessageType::InformationRequest => 11,
            MessageType::Unknown(v) => v,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MessageType::Solicit => "SOLICIT",
            MessageType::Advertise => "ADVERTISE",
            MessageType::Request => "REQUEST",
            MessageType::Confirm => "CONFIRM",
            MessageType::Renew => "RENEW",
            MessageType::Rebind => "REBIND",
            MessageType::Reply => "REPLY",
            MessageType::Release => "RELEASE",
            MessageType::Decline => "DECLINE",
            MessageType::InformationRequest => "INFORMATION-REQUEST",
            MessageType::Unknown(_) => "UNKNOWN",
        }
    }
}

/// One address of an IA_NA (option 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IaAddress {
    pub addr: Ipv6Addr,
    pub preferred: u32,
    pub valid: u32,
    /// A status code inside the IAADDR option.
    pub status: Option<(u16, String)>,
}

/// An identity association for non-temporary addresses (option 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IaNa {
    pub iaid: u32,
    pub t1: u32,
    pub t2: u32,
    pub addresses: Vec<IaAddress>,
    pub status: Option<(u16, String)>,
}

/// A DHCPv6 option; codes not modelled are kept as `Unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dhcp6Option {
    ClientId(Vec<u8>),
    ServerId(Vec<u8>),
    IaNa(IaNa),
    Oro(Vec<u16>),
    ElapsedTime(u16),
    StatusCode(u16, String),
    RapidCommit,
    UserClass(Vec<Vec<u8>>),
    VendorClass {
        enterprise: u32,
        data: Vec<Vec<u8>>,
    },
    DnsServers(Vec<Ipv6Addr>),
    BootfileUrl(String),
    BootfileParams(Vec<Vec<u8>>),
    ClientArch(Vec<u16>),
    /// Network interface identifier: type, major and minor revision (UNDI 3.10 = 1, 3, 16).
    Nii(u8, u8, u8),
    Unknown(u16, Vec<u8>),
}

/// A parsed DHCPv6 client/server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp6Repr {
    pub msg_type: MessageType,
    /// The 24-bit transaction id.
    pub xid: u32,
    pub options: Vec<Dhcp6Option>,
}

/// Walks `code, len, data` triples in `bytes`; `base` is their offset in the message.
fn walk(
    bytes: &[u8],
    base: usize,
    mut each: impl FnMut(u16, &[u8], usize) -> Result<(), Dhcp6Error>,
) -> Result<(), Dhcp6Error> {
    let mut at = 0;
    let mut count = 0;
    while at < bytes.len() {
        let offset = base + at;
        let (Some(code), Some(len)) = (be16(bytes, at), be16(bytes, at + 2)) else {
            return Err(Dhcp6Error::OptionOverrun { code: 0, offset });
        };
        let start = at + 4;
        let end = start + usize::from(len);
        let Some(data) = bytes.get(start..end) else {
            return Err(Dhcp6Error::OptionOverrun { code, offset });
        };
        count += 1;
        if count > MAX_OPTIONS {
            return Err(Dhcp6Error::TooManyOptions);
        }
        each(code, data, offset)?;
        at = end;
    }
    Ok(())
}

/// A list of `len u16, data` items (user class, vendor class data, boot parameters).
fn length_prefixed(data: &[u8], code: u16, offset: usize) -> Result<Vec<Vec<u8>>, Dhcp6Error> {
    let bad = |reason| Dhcp6Error::BadOption {
        code,
        offset,
        reason,
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = usize::from(be16(data, at).ok_or(bad("item length cut short"))?);
        let item = data
            .get(at + 2..at + 2 + len)
            .ok_or(bad("item runs past the option"))?;
        if out.len() == MAX_LIST {
            return Err(bad("too many items"));
        }
        out.push(item.to_vec());
        at += 2 + len;
    }
    Ok(out)
}

fn u16_list(data: &[u8], code: u16, offset: usize) -> Result<Vec<u16>, Dhcp6Error> {
    if !data.len().is_multiple_of(2) || data.len() / 2 > MAX_LIST {
        return Err(Dhcp6Error::BadOption {
            code,
            offset,
            reason: "not a list of 16-bit values within the limit",
        });
    }
    Ok(data
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect())
}

fn addr_at(data: &[u8], at: usize) -> Option<Ipv6Addr> {
    let raw: [u8; 16] = data.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(raw))
}

fn status_code(data: &[u8], offset: usize) -> Result<(u16, String), Dhcp6Error> {
    let value = be16(data, 0).ok_or(Dhcp6Error::BadOption {
        code: code::STATUS_CODE,
        offset,
        reason: "shorter than its 2-byte code",
    })?;
    Ok((value, String::from_utf8_lossy(&data[2..]).into_owned()))
}

fn parse_ia_addr(data: &[u8], offset: usize) -> Result<IaAddress, Dhcp6Error> {
    let bad = |reason| Dhcp6Error::BadOption {
        code: code::IA_ADDR,
        offset,
        reason,
    };
    let addr = addr_at(data, 0).ok_or(bad("shorter than 24 bytes"))?;
    let preferred = be32(data, 16).ok_or(bad("shorter than 24 bytes"))?;
    let valid = be32(data, 20).ok_or(bad("shorter than 24 bytes"))?;
    let mut status = None;
    walk(&data[24..], offset + 4 + 24, |c, d, o| {
        if c == code::STATUS_CODE {
            status = Some(status_code(d, o)?);
        }
        Ok(())
    })?;
    Ok(IaAddress {
        addr,
        preferred,
        valid,
        status,
    })
}

fn parse_ia_na(data: &[u8], offset: usize) -> Result<IaNa, Dhcp6Error> {
    let bad = Dhcp6Error::BadOption {
        code: code::IA_NA,
        offset,
        reason: "shorter than 12 bytes",
    };
    let (Some(iaid), Some(t1), Some(t2)) = (be32(data, 0), be32(data, 4), be32(data, 8)) else {
        return Err(bad);
    };
    let mut ia = IaNa {
        iaid,
        t1,
        t2,
        addresses: Vec::new(),
        status: None,
    };
    walk(&data[12..], offset + 4 + 12, |c, d, o| {
        match c {
            code::IA_ADDR => ia.addresses.push(parse_ia_addr(d, o)?),
            code::STATUS_CODE => ia.status = Some(status_code(d, o)?),
            _ => {}
        }
        Ok(())
    })?;
    Ok(ia)
}

fn parse_option(code: u16, data: &[u8], offset: usize) -> Result<Dhcp6Option, Dhcp6Error> {
    let bad = |reason| Dhcp6Error::BadOption {
        code,
        offset,
        reason,
    };
    Ok(match code {
        code::CLIENT_ID | code::SERVER_ID => {
            if data.len() < 2 || data.len() > MAX_DUID {
                return Err(bad("DUID length outside 2..=130"));
            }
            if code == code::CLIENT_ID {
                Dhcp6Option::ClientId(data.to_vec())
            } else {
                Dhcp6Option::ServerId(data.to_vec())
            }
        }
        code::IA_NA => Dhcp6Option::IaNa(parse_ia_na(data, offset)?),
        code::ORO => Dhcp6Option::Oro(u16_list(data, code, offset)?),
        code::ELAPSED_TIME => {
            if data.len() != 2 {
                return Err(bad("not 2 bytes"));
            }
            Dhcp6Option::ElapsedTime(u16::from_be_bytes([data[0], data[1]]))
        }
        code::STATUS_CODE => {
            let (value, message) = status_code(data, offset)?;
            Dhcp6Option::StatusCode(value, message)
        }
        code::RAPID_COMMIT => {
            if !data.is_empty() {
                return Err(bad("not empty"));
            }
            Dhcp6Option::RapidCommit
        }
        code::USER_CLASS => Dhcp6Option::UserClass(length_prefixed(data, code, offset)?),
        code::VENDOR_CLASS => {
            let enterprise = be32(data, 0).ok_or(bad("shorter than its enterprise number"))?;
            Dhcp6Option::VendorClass {
                enterprise,
                data: length_prefixed(&data[4..], code, offset)?,
            }
        }
        code::DNS_SERVERS => {
            if !data.len().is_multiple_of(16) || data.len() / 16 > MAX_LIST {
                return Err(bad("not a list of IPv6 addresses within the limit"));
            }
            Dhcp6Option::DnsServers(
                (0..data.len() / 16)
                    .filter_map(|i| addr_at(data, i * 16))
                    .collect(),
            )
        }
        code::BOOTFILE_URL => Dhcp6Option::BootfileUrl(
            String::from_utf8(data.to_vec()).map_err(|_| bad("URL is not UTF-8"))?,
        ),
        code::BOOTFILE_PARAM => Dhcp6Option::BootfileParams(length_prefixed(data, code, offset)?),
        code::CLIENT_ARCH_TYPE => Dhcp6Option::ClientArch(u16_list(data, code, offset)?),
        code::NII => match data {
            [t, major, minor] => Dhcp6Option::Nii(*t, *major, *minor),
            _ => return Err(bad("not 3 bytes")),
        },
        other => Dhcp6Option::Unknown(other, data.to_vec()),
    })
}

fn put_option(out: &mut Vec<u8>, code: u16, data: &[u8]) {
    // Options are built by us from bounded parts; a value past 65535 bytes would be a bug, and
    // is cut rather than emitted with a wrong length.
    let data = &data[..data.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

fn put_length_prefixed(out: &mut Vec<u8>, items: &[Vec<u8>]) {
    for item in items {
        let item = &item[..item.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(item.len() as u16).to_be_bytes());
        out.extend_from_slice(item);
    }
}

fn status_bytes(value: u16, message: &str) -> Vec<u8> {
    let mut d = value.to_be_bytes().to_vec();
    d.extend_from_slice(message.as_bytes());
    d
}

impl Dhcp6Option {
    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Dhcp6Option::ClientId(d) => put_option(out, code::CLIENT_ID, d),
            Dhcp6Option::ServerId(d) => put_option(out, code::SERVER_ID, d),
            Dhcp6Option::IaNa(ia) => {
                let mut d = Vec::with_capacity(12 + 28 * ia.addresses.len());
                d.extend_from_slice(&ia.iaid.to_be_bytes());
                d.extend_from_slice(&ia.t1.to_be_bytes());
                d.extend_from_slice(&ia.t2.to_be_bytes());
                for a in &ia.addresses {
                    let mut ad = a.addr.octets().to_vec();
                    ad.extend_from_slice(&a.preferred.to_be_bytes());
                    ad.extend_from_slice(&a.valid.to_be_bytes());
                    if let Some((v, m)) = &a.status {
                        put_option(&mut ad, code::STATUS_CODE, &status_bytes(*v, m));
                    }
                    put_option(&mut d, code::IA_ADDR, &ad);
                }
                if let Some((v, m)) = &ia.status {
                    put_option(&mut d, code::STATUS_CODE, &status_bytes(*v, m));
                }
                put_option(out, code::IA_NA, &d);
            }
            Dhcp6Option::Oro(codes) | Dhcp6Option::ClientArch(codes) => {
                let c = if matches!(self, Dhcp6Option::Oro(_)) {
                    code::ORO
                } else {
                    code::CLIENT_ARCH_TYPE
                };
                let d: Vec<u8> = codes.iter().flat_map(|v| v.to_be_bytes()).collect();
                put_option(out, c, &d);
            }
            Dhcp6Option::ElapsedTime(t) => put_option(out, code::ELAPSED_TIME, &t.to_be_bytes()),
            Dhcp6Option::StatusCode(v, m) => {
                put_option(out, code::STATUS_CODE, &status_bytes(*v, m))
            }
            Dhcp6Option::RapidCommit => put_option(out, code::RAPID_COMMIT, &[]),
            Dhcp6Option::UserClass(items) => {
                let mut d = Vec::new();
                put_length_prefixed(&mut d, items);
                put_option(out, code::USER_CLASS, &d);
            }
            Dhcp6Option::VendorClass { enterprise, data } => {
                let mut d = enterprise.to_be_bytes().to_vec();
                put_length_prefixed(&mut d, data);
                put_option(out, code::VENDOR_CLASS, &d);
            }
            Dhcp6Option::DnsServers(addrs) => {
                let d: Vec<u8> = addrs.iter().flat_map(|a| a.octets()).collect();
                put_option(out, code::DNS_SERVERS, &d);
            }
            Dhcp6Option::BootfileUrl(url) => put_option(out, code::BOOTFILE_URL, url.as_bytes()),
            Dhcp6Option::BootfileParams(items) => {
                let mut d = Vec::new();
                put_length_prefixed(&mut d, items);
                put_option(out, code::BOOTFILE_PARAM, &d);
            }
            Dhcp6Option::Nii(t, major, minor) => put_option(out, code::NII, &[*t, *major, *minor]),
            Dhcp6Option::Unknown(c, d) => put_option(out, *c, d),
        }
    }
}

impl Dhcp6Repr {
    /// Parses a client or server message (not a relay message).
    pub fn parse(bytes: &[u8]) -> Result<Dhcp6Repr, Dhcp6Error> {
        let Some(header) = bytes.get(..4) else {
            return Err(Dhcp6Error::Truncated(bytes.len()));
        };
        if matches!(header[0], 12 | 13) {
            return Err(Dhcp6Error::Relay(header[0]));
        }
        let msg_type = MessageType::from_u8(header[0]);
        let xid = u32::from_be_bytes([0, header[1], header[2], header[3]]);
        let mut options = Vec::new();
        walk(&bytes[4..], 4, |c, d, o| {
            options.push(parse_option(c, d, o)?);
            Ok(())
        })?;
        Ok(Dhcp6Repr {
            msg_type,
            xid,
            options,
        })
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(self.msg_type.to_u8());
        out.extend_from_slice(&self.xid.to_be_bytes()[1..]);
        for option in &self.options {
            option.emit(&mut out);
        }
        out
    }

    pub fn client_id(&self) -> Option<&[u8]> {
        self.options.iter().find_map(|o| match o {
            Dhcp6Option::ClientId(d) => Some(d.as_slice()),
            _ => None,
        })
    }

    pub fn server_id(&self) -> Option<&[u8]> {
        self.options.iter().find_map(|o| match o {
            Dhcp6Option::ServerId(d) => Some(d.as_slice()),
            _ => None,
        })
    }

    pub fn ia_nas(&self) -> impl Iterator<Item = &IaNa> {
        self.options.iter().filter_map(|o| match o {
            Dhcp6Option::IaNa(ia) => Some(ia),
            _ => None,
        })
    }

    /// The first client architecture type (option 61).
    pub fn client_arch(&self) -> Option<u16> {
        self.options.iter().find_map(|o| match o {
            Dhcp6Option::ClientArch(list) => list.first().copied(),
            _ => None,
        })
    }

    /// True when a vendor class (option 16) data item starts with `prefix`.
    pub fn vendor_class_starts_with(&self, prefix: &[u8]) -> bool {
        self.options.iter().any(|o| match o {
            Dhcp6Option::VendorClass { data, .. } => data.iter().any(|d| d.starts_with(prefix)),
            _ => false,
        })
    }

    /// True when a user class (option 15) item equals `class` (iPXE sends "iPXE").
    pub fn user_class_contains(&self, class: &[u8]) -> bool {
        self.options.iter().any(|o| match o {
            Dhcp6Option::UserClass(items) => items.iter().any(|i| i == class),
            _ => false,
        })
    }

    /// True when the client asked for option `code` in its ORO.
    pub fn requests(&self, wanted: u16) -> bool {
        self.options.iter().any(|o| match o {
            Dhcp6Option::Oro(codes) => codes.contains(&wanted),
            _ => false,
        })
    }

    pub fn has_rapid_commit(&self) -> bool {
        self.options.contains(&Dhcp6Option::RapidCommit)
    }
}

/// DUID types (RFC 8415 section 11).
pub mod duid {
    pub const LLT: u16 = 1;
    pub const EN: u16 = 2;
    pub const LL: u16 = 3;
    pub const UUID: u16 = 4;
}

/// The Ethernet MAC inside a DUID-LLT or DUID-LL (hardware type 1), if it carries one.
pub fn duid_mac(duid: &[u8]) -> Option<[u8; 6]> {
    let kind = be16(duid, 0)?;
    let hwtype = be16(duid, 2)?;
    let at = match kind {
        duid::LLT => 8,
        duid::LL => 4,
        _ => return None,
    };
    if hwtype != 1 || duid.len() != at + 6 {
        return None;
    }
    duid.get(at..at + 6)?.try_into().ok()
}

/// The 16-byte UUID of a DUID-UUID.
pub fn duid_uuid(duid: &[u8]) -> Option<[u8; 16]> {
    if be16(duid, 0)? != duid::UUID || duid.len() != 18 {
        return None;
    }
    duid.get(2..18)?.try_into().ok()
}

/// A DUID-LL for a server identified by its interface's MAC address.
pub fn duid_ll(mac: [u8; 6]) -> Vec<u8> {
    let mut d = duid::LL.to_be_bytes().to_vec();
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&mac);
    d
}

/// Hex with colons, as DUIDs are shown by dnsmasq and ISC dhcpd.
pub fn format_duid(duid: &[u8]) -> String {
    duid.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SOLICIT as OVMF's PXEv6 sends it: client id (DUID-UUID), IA_NA, ORO with 59/60,
    /// vendor class "PXEClient:Arch:00007:UNDI:003016", architecture 7, NII 1.3.16, elapsed.
    pub(crate) fn ovmf_solicit(vendor: &str, arch: u16) -> Vec<u8> {
        let mut uuid = vec![0, 4];
        uuid.extend_from_slice(&[0x11; 16]);
        Dhcp6Repr {
            msg_type: MessageType::Solicit,
            xid: 0x00ab_cdef,
            options: vec![
                Dhcp6Option::ElapsedTime(0),
                Dhcp6Option::ClientId(uuid),
                Dhcp6Option::IaNa(IaNa {
                    iaid: 0x1234,
                    t1: 0,
                    t2: 0,
                    addresses: vec![],
                    status: None,
                }),
                Dhcp6Option::Oro(vec![code::BOOTFILE_URL, code::BOOTFILE_PARAM, 24, 23]),
                Dhcp6Option::ClientArch(vec![arch]),
                Dhcp6Option::Nii(1, 3, 16),
                Dhcp6Option::VendorClass {
                    enterprise: 343,
                    data: vec![vendor.as_bytes().to_vec()],
                },
            ],
        }
        .emit()
    }

    #[test]
    fn solicit_round_trips_and_exposes_the_boot_fields() {
        let bytes = ovmf_solicit("PXEClient:Arch:00007:UNDI:003016", 7);
        let repr = Dhcp6Repr::parse(&bytes).unwrap();
        assert_eq!(repr.msg_type, MessageType::Solicit);
        assert_eq!(repr.xid, 0xabcdef);
        assert_eq!(repr.client_arch(), Some(7));
        assert!(repr.vendor_class_starts_with(b"PXEClient"));
        assert!(!repr.vendor_class_starts_with(b"HTTPClient"));
        assert!(repr.requests(code::BOOTFILE_URL));
        assert_eq!(duid_uuid(repr.client_id().unwrap()), Some([0x11; 16]));
        assert_eq!(repr.emit(), bytes);
    }

    #[test]
    fn reply_with_addresses_and_status_round_trips() {
        let repr = Dhcp6Repr {
            msg_type: MessageType::Reply,
            xid: 1,
            options: vec![
                Dhcp6Option::ServerId(duid_ll([2, 0, 0, 0, 0, 1])),
                Dhcp6Option::IaNa(IaNa {
                    iaid: 9,
                    t1: 1800,
                    t2: 2880,
                    addresses: vec![IaAddress {
                        addr: "fd00::10".parse().unwrap(),
                        preferred: 3600,
                        valid: 3600,
                        status: Some((status::SUCCESS, "ok".into())),
                    }],
                    status: None,
                }),
                Dhcp6Option::BootfileUrl("tftp://[fd00::1]/grubx64.efi".into()),
                Dhcp6Option::BootfileParams(vec![b"a".to_vec(), b"".to_vec()]),
                Dhcp6Option::DnsServers(vec!["fd00::53".parse().unwrap()]),
                Dhcp6Option::StatusCode(status::SUCCESS, String::new()),
                Dhcp6Option::RapidCommit,
                Dhcp6Option::Unknown(999, vec![1, 2, 3]),
            ],
        };
        let again = Dhcp6Repr::parse(&repr.emit()).unwrap();
        assert_eq!(again, repr);
        assert_eq!(
            duid_mac(again.server_id().unwrap()),
            Some([2, 0, 0, 0, 0, 1])
        );
    }

    #[test]
    fn hostile_lengths_are_errors_not_panics() {
        assert_eq!(Dhcp6Repr::parse(&[1, 0]), Err(Dhcp6Error::Truncated(2)));
        assert!(matches!(
            Dhcp6Repr::parse(&[12, 0, 0, 0]),
            Err(Dhcp6Error::Relay(12))
        ));
        // An option claiming 100 bytes with 2 present.
        assert!(matches!(
            Dhcp6Repr::parse(&[1, 0, 0, 1, 0, 1, 0, 100, 0, 1]),
            Err(Dhcp6Error::OptionOverrun { code: 1, offset: 4 })
        ));
        // Half an option header.
        assert!(Dhcp6Repr::parse(&[1, 0, 0, 1, 0]).is_err());
        // IA_NA shorter than its fixed part; IAADDR inside it cut short.
        assert!(Dhcp6Repr::parse(&[1, 0, 0, 1, 0, 3, 0, 4, 0, 0, 0, 1]).is_err());
        let mut ia = vec![3, 0, 0, 1, 0, 3, 0, 18];
        ia.extend_from_slice(&[0; 12]);
        ia.extend_from_slice(&[0, 5, 0, 2, 0, 0]);
        assert!(Dhcp6Repr::parse(&ia).is_err());
        // A vendor class item longer than the option.
        assert!(Dhcp6Repr::parse(&[1, 0, 0, 1, 0, 16, 0, 6, 0, 0, 1, 87, 0, 9]).is_err());
        // Odd-length architecture list.
        assert!(Dhcp6Repr::parse(&[1, 0, 0, 1, 0, 61, 0, 3, 0, 7, 0]).is_err());
    }

    #[test]
    fn option_floods_are_refused() {
        let mut bytes = vec![1, 0, 0, 1];
        for _ in 0..=MAX_OPTIONS {
            bytes.extend_from_slice(&[0, 14, 0, 0]);
        }
        assert_eq!(Dhcp6Repr::parse(&bytes), Err(Dhcp6Error::TooManyOptions));
    }
}

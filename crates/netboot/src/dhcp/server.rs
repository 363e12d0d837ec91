//! The DHCP socket loop: port 67 (broadcast DHCP, bound to the serving interface) and port
//! 4011 (PXE boot-server requests), both fed to one `Policy`; leases are saved after changes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UdpSocket;

use crate::status::{now_ms, Status};
use crate::wire::dhcp::{format_mac, DhcpRepr, MessageType, MAX_PACKET};

use super::policy::{classify, Ignored, Mode, Policy, Port};

/// The address a booting client has in proxy mode, where the real DHCP server hands it out:
/// the address it already uses (`ciaddr`), the one it requests from the DHCP server (option 50
/// of its REQUEST), or the source of its request to port 4011. Non-booting clients are not
/// tracked.
fn proxy_client_address(req: &DhcpRepr, port: Port, from: SocketAddrV4) -> Option<Ipv4Addr> {
    let kind = classify(req);
    if !(kind.pxe || kind.http_client || kind.ipxe) {
        return None;
    }
    let usable = |ip: Ipv4Addr| !(ip.is_unspecified() || ip.is_broadcast());
    if usable(req.ciaddr) {
        return Some(req.ciaddr);
    }
    if req.message_type() == Some(MessageType::Request) {
        if let Some(ip) = req.requested_ip().filter(|ip| usable(*ip)) {
            return Some(ip);
        }
    }
    (port == Port::Pxe && usable(*from.ip())).then_some(*from.ip())
}

pub struct DhcpServer {
    pub policy: Policy,
    pub socket_67: UdpSocket,
    pub socket_4011: UdpSocket,
    pub status: Arc<Status>,
    pub lease_file: Option<PathBuf>,
}

impl DhcpServer {
    pub async fn run(mut self) -> std::io::Result<()> {
        let mut buf_67 = vec![0u8; MAX_PACKET];
        let mut buf_4011 = vec![0u8; MAX_PACKET];
        loop {
            let (port, len, from) = tokio::select! {
                r = self.socket_67.recv_from(&mut buf_67) => { let (n, f) = r?; (Port::Dhcp, n, f) }
                r = self.socket_4011.recv_from(&mut buf_4011) => { let (n, f) = r?; (Port::Pxe, n, f) }
            };
            let bytes = if port == Port::Dhcp {
                &buf_67[..len]
            } else {
                &buf_4011[..len]
            };
            let SocketAddr::V4(from) = from else { continue };
            let req = match DhcpRepr::parse(bytes) {
                Ok(r) => r,
                Err(e) => {
                    self.status.event(
                        "dhcp",
                        &from.ip().to_string(),
                        format!("malformed packet ignored: {e}"),
                    );
                    continue;
                }
            };
            let mac = format_mac(req.mac());
            let arch = req.client_arch();
            if matches!(self.policy.mode, Mode::Proxy) {
                if let Some(ip) = proxy_client_address(&req, port, from) {
                    self.status.learn_address(&mac, IpAddr::V4(ip));
                }
            }
            match self.policy.handle(&req, port, from, now_ms()) {
                Ok(reply) => {
                    let bytes = reply.packet.emit();
                    let socket = if port == Port::Dhcp {
                        &self.socket_67
                    } else {
                        &self.socket_4011
                    };
                    let ip = (!reply.packet.yiaddr.is_unspecified())
                        .then_some(IpAddr::V4(reply.packet.yiaddr))
                        .or_else(|| {
                            (!req.ciaddr.is_unspecified()).then_some(IpAddr::V4(req.ciaddr))
                        });
                    match socket.send_to(&bytes, reply.destination).await {
                        Ok(_) => self.status.dhcp(
                            &mac,
                            ip,
                            arch,
                            format!("{} (to {})", reply.summary, reply.destination),
                        ),
                        Err(e) => self.status.dhcp(
                            &mac,
                            ip,
                            arch,
                            format!("{} NOT SENT to {}: {e}", reply.summary, reply.destination),
                        ),
                    }
                    if reply.leases_changed {
                        self.save_leases();
                    }
                }
                Err(Ignored::NoBootFile(why)) => self.status.dhcp(
                    &mac,
                    None,
                    arch,
                    format!(
                        "{} ignored: {why}",
                        req.message_type().map(|m| m.name()).unwrap_or("?")
                    ),
                ),
                Err(Ignored::PoolExhausted) => self.status.dhcp(
                    &mac,
                    None,
                    arch,
                    "DISCOVER ignored: the DHCP range has no free address".into(),
                ),
                Err(Ignored::Unhandled("released")) => {
                    self.status
                        .dhcp(&mac, None, arch, "RELEASE: lease freed".into());
                    self.save_leases();
                }
                Err(_) => {}
            }
        }
    }

    fn save_leases(&self) {
        let (Some(path), Mode::Full { leases, .. }) = (&self.lease_file, &self.policy.mode) else {
            return;
        };
        let result = (|| -> std::io::Result<()> {
            let json =
                serde_json::to_vec_pretty(&leases.to_file()).map_err(std::io::Error::other)?;
            let mut out = vmedia_io::AtomicFile::create(path, vmedia_io::OverwritePolicy::Replace)?;
            std::io::Write::write_all(out.file_mut(), &json)?;
            out.commit()
        })();
        if let Err(e) = result {
            self.status.event(
                "server",
                "-",
                format!("cannot save leases to {}: {e}", path.display()),
            );
        }
    }
}

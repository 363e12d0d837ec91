//! The DHCP socket loop: port 67 (broadcast DHCP, bound to the serving interface) and port
//! 4011 (PXE boot-server requests), both fed to one `Policy`, each request in a `dhcp` span
//! (MAC, transaction id, port, architecture, address); leases are saved after changes, on the
//! blocking pool.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tracing::Instrument;

use super::leases::LeaseFile;
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

/// After a failed receive, how long the loop waits before the next: an error that repeats
/// (a socket in a bad state) must not spin a core, and one packet in 50 ms is no loss.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(50);

pub struct DhcpServer {
    pub policy: Policy,
    pub socket_67: UdpSocket,
    pub socket_4011: UdpSocket,
    pub status: Arc<Status>,
    /// Full-DHCP mode with a lease file: where lease changes are saved.
    pub leases: Option<LeaseStore>,
}

fn port_number(port: Port) -> u16 {
    match port {
        Port::Dhcp => 67,
        Port::Pxe => 4011,
    }
}

impl DhcpServer {
    pub async fn run(mut self) -> std::io::Result<()> {
        let mut buf_67 = vec![0u8; MAX_PACKET];
        let mut buf_4011 = vec![0u8; MAX_PACKET];
        loop {
            let (port, received) = tokio::select! {
                r = self.socket_67.recv_from(&mut buf_67) => (Port::Dhcp, r),
                r = self.socket_4011.recv_from(&mut buf_4011) => (Port::Pxe, r),
            };
            let (len, from) = match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(port = port_number(port), error = %e, "DHCP receive failed");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    continue;
                }
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
            let span = tracing::info_span!(
                "dhcp",
                mac = %mac,
                xid = %format_args!("{:#010x}", req.xid),
                port = port_number(port),
                from = %from,
                arch = tracing::field::Empty,
                ip = tracing::field::Empty,
            );
            if let Some(arch) = req.client_arch() {
                span.record("arch", arch);
            }
            self.exchange(&req, &mac, port, from).instrument(span).await;
        }
    }

    /// One request: the policy's answer sent, the step recorded, leases saved when changed.
    async fn exchange(&mut self, req: &DhcpRepr, mac: &str, port: Port, from: SocketAddrV4) {
        let arch = req.client_arch();
        if matches!(self.policy.mode, Mode::Proxy) {
            if let Some(ip) = proxy_client_address(req, port, from) {
                tracing::Span::current().record("ip", tracing::field::display(ip));
                self.status.learn_address(mac, IpAddr::V4(ip));
            }
        }
        match self.policy.handle(req, port, from, now_ms()) {
            Ok(reply) => {
                let bytes = reply.packet.emit();
                let socket = if port == Port::Dhcp {
                    &self.socket_67
                } else {
                    &self.socket_4011
                };
                let ip = (!reply.packet.yiaddr.is_unspecified())
                    .then_some(IpAddr::V4(reply.packet.yiaddr))
                    .or_else(|| (!req.ciaddr.is_unspecified()).then_some(IpAddr::V4(req.ciaddr)));
                if let Some(ip) = ip {
                    tracing::Span::current().record("ip", tracing::field::display(ip));
                }
                match socket.send_to(&bytes, reply.destination).await {
                    Ok(_) => self.status.dhcp(
                        mac,
                        ip,
                        arch,
                        format!("{} (to {})", reply.summary, reply.destination),
                    ),
                    Err(e) => self.status.dhcp(
                        mac,
                        ip,
                        arch,
                        format!("{} NOT SENT to {}: {e}", reply.summary, reply.destination),
                    ),
                }
                if reply.leases_changed {
                    self.save_leases().await;
                }
            }
            Err(Ignored::NoBootFile(why)) => self.status.dhcp(
                mac,
                None,
                arch,
                format!(
                    "{} ignored: {why}",
                    req.message_type().map(|m| m.name()).unwrap_or("?")
                ),
            ),
            Err(Ignored::PoolExhausted) => self.status.dhcp(
                mac,
                None,
                arch,
                "DISCOVER ignored: the DHCP range has no free address".into(),
            ),
            Err(Ignored::Unhandled("released")) => {
                self.status
                    .dhcp(mac, None, arch, "RELEASE: lease freed".into());
                self.save_leases().await;
            }
            Err(other) => tracing::debug!(reason = ?other, "request not answered"),
        }
    }

    /// Saves the current leases (off the runtime workers; see `LeaseStore`).
    async fn save_leases(&self) {
        let (Some(store), Mode::Full { leases, .. }) = (&self.leases, &self.policy.mode) else {
            return;
        };
        if let Err(e) = store.save(leases.to_file()).await {
            self.status.event(
                "server",
                "-",
                format!("cannot save leases to {}: {e}", store.path.display()),
            );
        }
    }
}

/// The lease file. A save runs on the blocking pool (write, fsync, rename) and the DHCP loop
/// awaits it before the next request, as when it saved inline: a client's ACK is on disk before
/// the server answers anyone else, and the runtime's workers never wait on the disk. The lock
/// is held for the whole save, so a shutdown can wait for one that is under way.
pub struct LeaseStore {
    pub path: PathBuf,
    pub lock: Arc<Mutex<()>>,
}

impl LeaseStore {
    async fn save(&self, file: LeaseFile) -> Result<(), String> {
        let (path, lock) = (self.path.clone(), self.lock.clone());
        tokio::task::spawn_blocking(move || {
            let _saving = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            write_lease_file(&path, &file).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

fn write_lease_file(path: &std::path::Path, file: &LeaseFile) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    let mut out = vmedia_io::AtomicFile::create(path, vmedia_io::OverwritePolicy::Replace)?;
    std::io::Write::write_all(out.file_mut(), &json)?;
    out.commit()
}

//! The DHCPv6 socket loop: UDP 547 on the serving interface, joined to ff02::1:2, each
//! message in a `dhcp6` span (client, transaction id, architecture, address); replies go back
//! to the client's (link-local, scoped) address on port 546, and leases are saved after
//! changes on the blocking pool, as for DHCPv4.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tracing::Instrument;

use super::leases::LeaseFile6;
use super::policy::{client_label, Mode6, Policy6};
use crate::dhcp::policy::Ignored;
use crate::status::{now_ms, Status};
use crate::wire::dhcp6::{Dhcp6Repr, MAX_PACKET};

/// After a failed receive, how long the loop waits before the next (see the DHCPv4 loop).
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(50);

pub struct Dhcp6Server {
    pub policy: Policy6,
    pub socket: UdpSocket,
    pub status: Arc<Status>,
    /// Full mode with a lease file: where lease changes are saved, and the lock held while
    /// saving.
    pub leases: Option<(PathBuf, Arc<Mutex<()>>)>,
}

impl Dhcp6Server {
    pub async fn run(mut self) -> std::io::Result<()> {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let (len, from) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "DHCPv6 receive failed");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    continue;
                }
            };
            let SocketAddr::V6(from) = from else { continue };
            let req = match Dhcp6Repr::parse(&buf[..len]) {
                Ok(r) => r,
                Err(e) => {
                    self.status.event(
                        "dhcp6",
                        &from.ip().to_string(),
                        format!("malformed packet ignored: {e}"),
                    );
                    continue;
                }
            };
            let client = client_label(&req);
            let span = tracing::info_span!(
                "dhcp6",
                client = %client,
                xid = %format_args!("{:#08x}", req.xid),
                from = %from,
                arch = tracing::field::Empty,
                ip = tracing::field::Empty,
            );
            if let Some(arch) = req.client_arch() {
                span.record("arch", arch);
            }
            self.exchange(&req, &client, from).instrument(span).await;
        }
    }

    async fn exchange(&mut self, req: &Dhcp6Repr, client: &str, from: std::net::SocketAddrV6) {
        let arch = req.client_arch();
        match self.policy.handle(req, now_ms()) {
            Ok(reply) => {
                let ip = reply.address.map(IpAddr::V6);
                if let Some(ip) = ip {
                    tracing::Span::current().record("ip", tracing::field::display(ip));
                }
                let bytes = reply.packet.emit();
                match self.socket.send_to(&bytes, from).await {
                    Ok(_) => self.status.dhcp(
                        client,
                        ip,
                        arch,
                        format!("DHCPv6 {} (to {from})", reply.summary),
                    ),
                    Err(e) => self.status.dhcp(
                        client,
                        ip,
                        arch,
                        format!("DHCPv6 {} NOT SENT to {from}: {e}", reply.summary),
                    ),
                }
                if reply.leases_changed {
                    self.save_leases().await;
                }
            }
            Err(Ignored::NoBootFile(why)) => self.status.dhcp(
                client,
                None,
                arch,
                format!("DHCPv6 {} ignored: {why}", req.msg_type.name()),
            ),
            Err(Ignored::PoolExhausted) => self.status.dhcp(
                client,
                None,
                arch,
                "DHCPv6 SOLICIT ignored: the DHCPv6 range has no free address".into(),
            ),
            Err(other) => tracing::debug!(reason = ?other, "DHCPv6 message not answered"),
        }
    }

    async fn save_leases(&self) {
        let (Some((path, lock)), Mode6::Full { leases, .. }) = (&self.leases, &self.policy.mode)
        else {
            return;
        };
        let file = leases.to_file();
        let (path, lock) = (path.clone(), lock.clone());
        let shown = path.display().to_string();
        let saved = tokio::task::spawn_blocking(move || {
            let _saving = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            write_lease_file(&path, &file)
        })
        .await;
        let error = match saved {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        self.status.event(
            "server",
            "-",
            format!("cannot save DHCPv6 leases to {shown}: {error}"),
        );
    }
}

fn write_lease_file(path: &std::path::Path, file: &LeaseFile6) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    let mut out = vmedia_io::AtomicFile::create(path, vmedia_io::OverwritePolicy::Replace)?;
    std::io::Write::write_all(out.file_mut(), &json)?;
    out.commit()
}

//! What each machine did, step by step: DHCP exchanges, files fetched, bytes sent, finished,
//! failed or stalled. The server records here; each event is also a `tracing` event (INFO,
//! fields `kind` and `client`, inside the span of the exchange, transfer or request it belongs
//! to), which the binary's subscriber prints as one log line, and `/_vmedia/status` serves a
//! snapshot as JSON.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Steps remembered per machine; older ones are dropped (the log keeps everything).
pub const MAX_STEPS: usize = 64;
/// Transfers remembered per machine.
pub const MAX_TRANSFERS: usize = 32;
/// Machines remembered; a scan of a /16 must not grow memory without bound.
pub const MAX_MACHINES: usize = 4096;
/// A running transfer without progress for this long is reported as stalled.
pub const STALL_AFTER_MS: u64 = 5_000;

pub fn now_ms() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0)
}

/// One log event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub time_ms: u64,
    /// "dhcp", "tftp", "http" or "server".
    pub kind: String,
    /// MAC address when known, else the client's IP address.
    pub client: String,
    pub message: String,
}

/// RFC 3339 UTC time with milliseconds (`2026-11-21T09:08:27.011Z`) from milliseconds since
/// the epoch; times past jiff's range (year 9999) show as that limit.
pub fn format_time(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    let timestamp = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::MAX);
    format!("{timestamp:.3}")
}

/// A file transfer as shown in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferView {
    pub id: u64,
    pub protocol: String,
    pub file: String,
    pub size: u64,
    pub bytes_sent: u64,
    /// "running", "stalled", "done" or "failed".
    pub state: String,
    pub error: Option<String>,
    pub started_ms: u64,
    pub updated_ms: u64,
}

/// A machine as shown in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineView {
    pub client: String,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub arch: Option<u16>,
    pub last_seen_ms: u64,
    /// The latest step, e.g. "tftp pxelinux.0 done" or "dhcp ACK 10.0.0.50".
    pub last_step: String,
    pub steps: Vec<Event>,
    pub transfers: Vec<TransferView>,
}

/// The whole status document served at `/_vmedia/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub server_started_ms: u64,
    pub now_ms: u64,
    pub machines: Vec<MachineView>,
}

struct TransferRecord {
    id: u64,
    protocol: &'static str,
    file: String,
    size: u64,
    progress: Arc<TransferProgress>,
    outcome: Option<Result<(), String>>,
    started_ms: u64,
}

/// Lock-free progress counters a running transfer updates.
#[derive(Debug, Default)]
pub struct TransferProgress {
    pub bytes: AtomicU64,
    pub updated_ms: AtomicU64,
}

impl TransferProgress {
    pub fn set(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        self.updated_ms.store(now_ms(), Ordering::Relaxed);
    }
}

#[derive(Default)]
struct MachineRecord {
    mac: Option<String>,
    ip: Option<IpAddr>,
    arch: Option<u16>,
    last_seen_ms: u64,
    steps: VecDeque<Event>,
    transfers: VecDeque<TransferRecord>,
}

#[derive(Default)]
struct Inner {
    machines: BTreeMap<String, MachineRecord>,
    ip_to_mac: HashMap<IpAddr, String>,
    next_id: u64,
}

/// The shared status board.
pub struct Status {
    inner: Mutex<Inner>,
    started_ms: u64,
}

impl Default for Status {
    fn default() -> Self {
        Status::new()
    }
}

impl Status {
    pub fn new() -> Status {
        Status {
            inner: Mutex::new(Inner::default()),
            started_ms: now_ms(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// The key a client is filed under: its MAC when we have seen it in DHCP, else its IP.
    pub fn client_key(&self, ip: IpAddr) -> String {
        self.with(|inner| {
            inner
                .ip_to_mac
                .get(&ip)
                .cloned()
                .unwrap_or_else(|| ip.to_string())
        })
    }

    /// The MAC an address has been tied to (by a lease, a proxyDHCP request or an iPXE script
    /// URL), for log fields.
    pub fn mac_of(&self, ip: IpAddr) -> Option<String> {
        self.with(|inner| inner.ip_to_mac.get(&ip).cloned())
    }

    fn record<'a>(inner: &'a mut Inner, key: &str) -> Option<&'a mut MachineRecord> {
        if !inner.machines.contains_key(key) && inner.machines.len() >= MAX_MACHINES {
            // Forget the machine seen longest ago.
            let oldest = inner
                .machines
                .iter()
                .min_by_key(|(_, m)| m.last_seen_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                inner.machines.remove(&k);
            }
        }
        let rec = inner.machines.entry(key.to_string()).or_default();
        rec.last_seen_ms = now_ms();
        Some(rec)
    }

    /// Records an event for a client and emits it as a `tracing` INFO event.
    pub fn event(&self, kind: &str, client: &str, message: String) {
        tracing::info!(kind, client, "{message}");
        let event = Event {
            time_ms: now_ms(),
            kind: kind.to_string(),
            client: client.to_string(),
            message,
        };
        self.with(|inner| {
            if let Some(rec) = Self::record(inner, client) {
                if rec.steps.len() >= MAX_STEPS {
                    rec.steps.pop_front();
                }
                rec.steps.push_back(event);
            }
        });
    }

    /// Files `ip` under `mac` from now on, and moves what was recorded under the bare IP
    /// (TFTP and HTTP steps seen before the address was tied to a MAC) into the MAC's record.
    fn link(inner: &mut Inner, mac: &str, ip: IpAddr) {
        inner.ip_to_mac.insert(ip, mac.to_string());
        let ip_key = ip.to_string();
        if ip_key == mac {
            return;
        }
        let Some(orphan) = inner.machines.remove(&ip_key) else {
            return;
        };
        let Some(rec) = Self::record(inner, mac) else {
            return;
        };
        rec.mac = Some(mac.to_string());
        rec.ip.get_or_insert(ip);
        if rec.arch.is_none() {
            rec.arch = orphan.arch;
        }
        rec.last_seen_ms = rec.last_seen_ms.max(orphan.last_seen_ms);
        rec.steps.extend(orphan.steps);
        rec.steps
            .make_contiguous()
            .sort_by_key(|event| event.time_ms);
        while rec.steps.len() > MAX_STEPS {
            rec.steps.pop_front();
        }
        rec.transfers.extend(orphan.transfers);
        rec.transfers.make_contiguous().sort_by_key(|t| t.id);
        while rec.transfers.len() > MAX_TRANSFERS {
            rec.transfers.pop_front();
        }
    }

    /// Ties an address to a MAC seen elsewhere (a proxyDHCP client's REQUEST to the real DHCP
    /// server, a request on port 4011, an iPXE script fetched with `?mac=`), so the machine's
    /// TFTP and HTTP steps are filed under its MAC.
    pub fn learn_address(&self, mac: &str, ip: IpAddr) {
        if ip.is_unspecified() {
            return;
        }
        self.with(|inner| {
            if inner.ip_to_mac.get(&ip).map(String::as_str) == Some(mac) {
                return;
            }
            Self::link(inner, mac, ip);
            if let Some(rec) = inner.machines.get_mut(mac) {
                rec.mac = Some(mac.to_string());
                rec.ip = Some(ip);
            }
        });
    }

    /// A DHCP step from a known MAC; `ip` is the address it has or was given.
    pub fn dhcp(&self, mac: &str, ip: Option<IpAddr>, arch: Option<u16>, message: String) {
        self.with(|inner| {
            if let Some(ip) = ip {
                Self::link(inner, mac, ip);
            }
            if let Some(rec) = Self::record(inner, mac) {
                rec.mac = Some(mac.to_string());
                if ip.is_some() {
                    rec.ip = ip;
                }
                if arch.is_some() {
                    rec.arch = arch;
                }
            }
        });
        self.event("dhcp", mac, message);
    }

    /// Starts tracking a transfer; returns its id and progress counters.
    pub fn transfer_start(
        &self,
        protocol: &'static str,
        client: IpAddr,
        file: &str,
        size: u64,
        detail: &str,
    ) -> (u64, Arc<TransferProgress>, String) {
        let progress = Arc::new(TransferProgress::default());
        progress.set(0);
        let (id, key) = self.with(|inner| {
            inner.next_id += 1;
            let id = inner.next_id;
            let key = inner
                .ip_to_mac
                .get(&client)
                .cloned()
                .unwrap_or_else(|| client.to_string());
            if let Some(rec) = Self::record(inner, &key) {
                rec.ip.get_or_insert(client);
                if rec.transfers.len() >= MAX_TRANSFERS {
                    rec.transfers.pop_front();
                }
                rec.transfers.push_back(TransferRecord {
                    id,
                    protocol,
                    file: file.to_string(),
                    size,
                    progress: progress.clone(),
                    outcome: None,
                    started_ms: now_ms(),
                });
            }
            (id, key)
        });
        self.event(
            protocol,
            &key,
            format!("send {file} ({size} bytes){detail}"),
        );
        (id, progress, key)
    }

    /// Marks a transfer finished or failed. `key` is where it started; the machine may have
    /// been tied to its MAC meanwhile, and the event is filed where the transfer is now.
    pub fn transfer_end(&self, key: &str, id: u64, outcome: Result<(), String>, summary: String) {
        let (protocol, key) = self.with(|inner| {
            let current = key
                .parse::<IpAddr>()
                .ok()
                .and_then(|ip| inner.ip_to_mac.get(&ip).cloned())
                .unwrap_or_else(|| key.to_string());
            let mut protocol = "tftp";
            if let Some(rec) = inner.machines.get_mut(&current) {
                if let Some(t) = rec.transfers.iter_mut().find(|t| t.id == id) {
                    t.outcome = Some(outcome.clone());
                    protocol = t.protocol;
                }
            }
            (protocol, current)
        });
        self.event(protocol, &key, summary);
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let now = now_ms();
        let machines = self.with(|inner| {
            inner
                .machines
                .iter()
                .map(|(key, m)| {
                    let transfers: Vec<TransferView> = m
                        .transfers
                        .iter()
                        .map(|t| {
                            let updated = t.progress.updated_ms.load(Ordering::Relaxed);
                            let (state, error) = match &t.outcome {
                                Some(Ok(())) => ("done", None),
                                Some(Err(e)) => ("failed", Some(e.clone())),
                                None if now.saturating_sub(updated) > STALL_AFTER_MS => {
                                    ("stalled", None)
                                }
                                None => ("running", None),
                            };
                            TransferView {
                                id: t.id,
                                protocol: t.protocol.to_string(),
                                file: t.file.clone(),
                                size: t.size,
                                bytes_sent: t.progress.bytes.load(Ordering::Relaxed),
                                state: state.to_string(),
                                error,
                                started_ms: t.started_ms,
                                updated_ms: updated,
                            }
                        })
                        .collect();
                    let last_step = match (transfers.last(), m.steps.back()) {
                        (Some(t), Some(s)) if t.updated_ms >= s.time_ms => {
                            format!(
                                "{} {} {} ({}/{} bytes)",
                                t.protocol, t.file, t.state, t.bytes_sent, t.size
                            )
                        }
                        (_, Some(s)) => format!("{} {}", s.kind, s.message),
                        (Some(t), None) => format!("{} {} {}", t.protocol, t.file, t.state),
                        (None, None) => String::new(),
                    };
                    MachineView {
                        client: key.clone(),
                        mac: m.mac.clone(),
                        ip: m.ip.map(|i| i.to_string()),
                        arch: m.arch,
                        last_seen_ms: m.last_seen_ms,
                        last_step,
                        steps: m.steps.iter().cloned().collect(),
                        transfers,
                    }
                })
                .collect()
        });
        StatusSnapshot {
            server_started_ms: self.started_ms,
            now_ms: now,
            machines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats_as_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn transfers_are_filed_under_the_mac_learned_from_dhcp() {
        let status = Status::new();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        status.dhcp("52:54:00:00:00:01", Some(ip), Some(0), "ACK".into());
        let (id, progress, key) = status.transfer_start("tftp", ip, "pxelinux.0", 10, "");
        assert_eq!(key, "52:54:00:00:00:01");
        progress.set(10);
        status.transfer_end(&key, id, Ok(()), "done".into());
        let snap = status.snapshot();
        assert_eq!(snap.machines.len(), 1);
        assert_eq!(snap.machines[0].transfers[0].state, "done");
        assert_eq!(snap.machines[0].transfers[0].bytes_sent, 10);
    }

    #[test]
    fn steps_seen_by_ip_join_the_mac_once_the_address_is_learned() {
        let status = Status::new();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let mac = "52:54:00:00:00:07";
        status.dhcp(mac, None, Some(7), "DISCOVER -> proxy OFFER".into());
        let (id, progress, key) = status.transfer_start("tftp", ip, "grubx64.efi", 10, "");
        assert_eq!(key, "10.0.0.7");
        status.learn_address(mac, ip);
        progress.set(10);
        status.transfer_end(&key, id, Ok(()), "done".into());
        status.event("http", &status.client_key(ip), "send vmlinuz".into());
        let snap = status.snapshot();
        assert_eq!(snap.machines.len(), 1, "{:?}", snap.machines);
        let machine = &snap.machines[0];
        assert_eq!(machine.client, mac);
        assert_eq!(machine.ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(machine.arch, Some(7));
        assert_eq!(machine.transfers.len(), 1);
        assert_eq!(machine.transfers[0].state, "done");
        let kinds: Vec<&str> = machine.steps.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["dhcp", "tftp", "tftp", "http"]);
    }
}

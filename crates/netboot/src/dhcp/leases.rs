//! Address leases for full-DHCP mode: a range, reservations per MAC, and the lease table that
//! is saved to a JSON file on every change so a restarted server hands machines the same
//! addresses. Pure logic; the caller decides when to save.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// How long an offered (not yet requested) address stays set aside for its client.
pub const OFFER_HOLD_MS: u64 = 60_000;
/// Largest range we manage: the table is scanned linearly when looking for a free address.
pub const MAX_RANGE: u32 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
    /// Milliseconds since the epoch.
    pub expires_ms: u64,
    /// False while only offered.
    pub bound: bool,
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LeaseFile {
    pub leases: Vec<Lease>,
}

#[derive(Debug)]
pub struct LeaseTable {
    first: u32,
    last: u32,
    lease_secs: u32,
    server_ip: Ipv4Addr,
    by_mac: BTreeMap<String, Lease>,
    reservations: HashMap<String, Ipv4Addr>,
}

impl LeaseTable {
    /// A table for `first..=last`; `Err` names what is wrong with the range.
    pub fn new(
        first: Ipv4Addr,
        last: Ipv4Addr,
        lease_secs: u32,
        server_ip: Ipv4Addr,
    ) -> Result<LeaseTable, String> {
        let (a, b) = (u32::from(first), u32::from(last));
        if a > b {
            return Err(format!("DHCP range {first}-{last} ends before it starts"));
        }
        if b - a >= MAX_RANGE {
            return Err(format!(
                "DHCP range {first}-{last} holds more than {MAX_RANGE} addresses"
            ));
        }
        Ok(LeaseTable {
            first: a,
            last: b,
            lease_secs,
            server_ip,
            by_mac: BTreeMap::new(),
            reservations: HashMap::new(),
        })
    }

    pub fn lease_secs(&self) -> u32 {
        self.lease_secs
    }

    pub fn reserve(&mut self, mac: &str, ip: Ipv4Addr) {
        self.reservations.insert(mac.to_string(), ip);
    }

    /// Loads saved leases, keeping those inside the range.
    pub fn load(&mut self, file: LeaseFile) {
        for lease in file.leases {
            let n = u32::from(lease.ip);
            if n >= self.first && n <= self.last && lease.bound {
                self.by_mac.insert(lease.mac.clone(), lease);
            }
        }
    }

    pub fn to_file(&self) -> LeaseFile {
        LeaseFile {
            leases: self.by_mac.values().filter(|l| l.bound).cloned().collect(),
        }
    }

    fn in_use_by_other(&self, ip: Ipv4Addr, mac: &str, now_ms: u64) -> bool {
        if ip == self.server_ip {
            return true;
        }
        if self.reservations.iter().any(|(m, r)| *r == ip && m != mac) {
            return true;
        }
        self.by_mac
            .values()
            .any(|l| l.ip == ip && l.mac != mac && l.expires_ms > now_ms)
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= self.first && n <= self.last
    }

    /// The address to offer: the reservation, the client's current lease, the address it asks
    /// for when free, else the first free one. Sets it aside for `OFFER_HOLD_MS`.
    pub fn offer(
        &mut self,
        mac: &str,
        requested: Option<Ipv4Addr>,
        now_ms: u64,
    ) -> Option<Ipv4Addr> {
        let ip = self.pick(mac, requested, now_ms)?;
        let entry = self.by_mac.entry(mac.to_string()).or_insert(Lease {
            mac: mac.to_string(),
            ip,
            expires_ms: 0,
            bound: false,
            hostname: None,
        });
        if entry.ip != ip || !entry.bound {
            entry.ip = ip;
            entry.bound = false;
            entry.expires_ms = now_ms + OFFER_HOLD_MS;
        }
        Some(ip)
    }

    fn pick(&self, mac: &str, requested: Option<Ipv4Addr>, now_ms: u64) -> Option<Ipv4Addr> {
        if let Some(ip) = self.reservations.get(mac) {
            return Some(*ip);
        }
        if let Some(l) = self.by_mac.get(mac) {
            if !self.in_use_by_other(l.ip, mac, now_ms) {
                return Some(l.ip);
            }
        }
        if let Some(ip) = requested {
            if self.in_range(ip) && !self.in_use_by_other(ip, mac, now_ms) {
                return Some(ip);
            }
        }
        (self.first..=self.last)
            .map(Ipv4Addr::from)
            .find(|ip| !self.in_use_by_other(*ip, mac, now_ms))
    }

    /// A REQUEST for `ip`: binds it when it is this client's to take; `false` means NAK.
    pub fn request(
        &mut self,
        mac: &str,
        ip: Ipv4Addr,
        hostname: Option<String>,
        now_ms: u64,
    ) -> bool {
        let allowed = match self.reservations.get(mac) {
            Some(r) => *r == ip,
            None => self.in_range(ip) && !self.in_use_by_other(ip, mac, now_ms),
        };
        if !allowed {
            return false;
        }
        self.by_mac.insert(
            mac.to_string(),
            Lease {
                mac: mac.to_string(),
                ip,
                expires_ms: now_ms + u64::from(self.lease_secs) * 1000,
                bound: true,
                hostname,
            },
        );
        true
    }

    pub fn release(&mut self, mac: &str) -> bool {
        self.by_mac.remove(mac).is_some()
    }

    pub fn lease_of(&self, mac: &str) -> Option<&Lease> {
        self.by_mac.get(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LeaseTable {
        LeaseTable::new(
            "10.0.0.10".parse().unwrap(),
            "10.0.0.12".parse().unwrap(),
            3600,
            "10.0.0.1".parse().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn reversed_range_is_rejected() {
        assert!(LeaseTable::new(
            "10.0.0.9".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            1,
            Ipv4Addr::UNSPECIFIED
        )
        .is_err());
    }

    #[test]
    fn oversized_range_is_rejected() {
        assert!(LeaseTable::new(
            "10.0.0.0".parse().unwrap(),
            "10.2.0.0".parse().unwrap(),
            1,
            Ipv4Addr::UNSPECIFIED
        )
        .is_err());
    }

    #[test]
    fn offers_distinct_addresses_until_the_pool_is_empty() {
        let mut t = table();
        let a = t.offer("a", None, 0).unwrap();
        let b = t.offer("b", None, 0).unwrap();
        let c = t.offer("c", None, 0).unwrap();
        assert!(a != b && b != c && a != c);
        assert_eq!(t.offer("d", None, 0), None);
        // Offers expire.
        assert!(t.offer("d", None, OFFER_HOLD_MS + 1).is_some());
    }

    #[test]
    fn reservation_wins_and_others_cannot_take_it() {
        let mut t = table();
        t.reserve("r", "10.0.0.11".parse().unwrap());
        assert_eq!(t.offer("r", None, 0), Some("10.0.0.11".parse().unwrap()));
        assert!(!t.request("x", "10.0.0.11".parse().unwrap(), None, 0));
    }

    #[test]
    fn leases_survive_save_and_load() {
        let mut t = table();
        let ip = t.offer("a", None, 0).unwrap();
        assert!(t.request("a", ip, None, 0));
        let saved = serde_json::to_string(&t.to_file()).unwrap();
        let mut t2 = table();
        t2.load(serde_json::from_str(&saved).unwrap());
        assert_eq!(t2.offer("a", None, 1), Some(ip));
    }

    #[test]
    fn request_outside_range_is_refused() {
        let mut t = table();
        assert!(!t.request("a", "10.0.0.99".parse().unwrap(), None, 0));
    }
}

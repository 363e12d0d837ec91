//! IPv6 address leases for full DHCPv6 mode: a range, reservations per MAC (from rules'
//! `ip6`), and the table saved to a JSON file on every change, as the IPv4 leases are. A lease
//! belongs to one identity association: the client's DUID and the IA_NA's IAID.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

/// How long an advertised (not yet requested) address stays set aside for its client.
pub const OFFER_HOLD_MS: u64 = 60_000;
/// Largest range we manage: free addresses are found by a linear scan.
pub const MAX_RANGE: u128 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease6 {
    /// "DUID/IAID", the DUID in colon hex.
    pub key: String,
    /// The MAC the DUID carries, when it carries one (for reservations and the status board).
    #[serde(default)]
    pub mac: Option<String>,
    pub ip: Ipv6Addr,
    /// Milliseconds since the epoch.
    pub expires_ms: u64,
    /// False while only advertised.
    pub bound: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LeaseFile6 {
    pub leases: Vec<Lease6>,
}

#[derive(Debug)]
pub struct LeaseTable6 {
    first: u128,
    last: u128,
    lease_secs: u32,
    by_key: BTreeMap<String, Lease6>,
    reservations: HashMap<String, Ipv6Addr>,
}

impl LeaseTable6 {
    /// A table for `first..=last`; `Err` names what is wrong with the range.
    pub fn new(first: Ipv6Addr, last: Ipv6Addr, lease_secs: u32) -> Result<LeaseTable6, String> {
        let (a, b) = (u128::from(first), u128::from(last));
        if a > b {
            return Err(format!("DHCPv6 range {first}-{last} ends before it starts"));
        }
        if b - a >= MAX_RANGE {
            return Err(format!(
                "DHCPv6 range {first}-{last} holds more than {MAX_RANGE} addresses"
            ));
        }
        Ok(LeaseTable6 {
            first: a,
            last: b,
            lease_secs,
            by_key: BTreeMap::new(),
            reservations: HashMap::new(),
        })
    }

    pub fn lease_secs(&self) -> u32 {
        self.lease_secs
    }

    /// Reserves `ip` for the machine with this MAC (normalised "aa:bb:..").
    pub fn reserve(&mut self, mac: &str, ip: Ipv6Addr) {
        self.reservations.insert(mac.to_string(), ip);
    }

    /// Loads saved leases, keeping the bound ones inside the range.
    pub fn load(&mut self, file: LeaseFile6) {
        for lease in file.leases {
            if self.in_range(lease.ip) && lease.bound {
                self.by_key.insert(lease.key.clone(), lease);
            }
        }
    }

    pub fn to_file(&self) -> LeaseFile6 {
        LeaseFile6 {
            leases: self.by_key.values().filter(|l| l.bound).cloned().collect(),
        }
    }

    pub fn in_range(&self, ip: Ipv6Addr) -> bool {
        let n = u128::from(ip);
        n >= self.first && n <= self.last
    }

    fn taken_by_other(&self, ip: Ipv6Addr, key: &str, mac: Option<&str>, now_ms: u64) -> bool {
        if self
            .reservations
            .iter()
            .any(|(m, r)| *r == ip && Some(m.as_str()) != mac)
        {
            return true;
        }
        self.by_key
            .values()
            .any(|l| l.ip == ip && l.key != key && l.expires_ms > now_ms)
    }

    fn pick(
        &self,
        key: &str,
        mac: Option<&str>,
        hint: Option<Ipv6Addr>,
        now_ms: u64,
    ) -> Option<Ipv6Addr> {
        if let Some(ip) = mac.and_then(|m| self.reservations.get(m)) {
            return Some(*ip);
        }
        if let Some(lease) = self.by_key.get(key) {
            if !self.taken_by_other(lease.ip, key, mac, now_ms) {
                return Some(lease.ip);
            }
        }
        if let Some(ip) = hint.filter(|ip| self.in_range(*ip)) {
            if !self.taken_by_other(ip, key, mac, now_ms) {
                return Some(ip);
            }
        }
        (self.first..=self.last)
            .map(Ipv6Addr::from)
            .find(|ip| !self.taken_by_other(*ip, key, mac, now_ms))
    }

    /// The address to advertise to identity association `key`, set aside for
    /// `OFFER_HOLD_MS`; `None` when the range is full.
    pub fn advertise(
        &mut self,
        key: &str,
        mac: Option<&str>,
        hint: Option<Ipv6Addr>,
        now_ms: u64,
    ) -> Option<Ipv6Addr> {
        let ip = self.pick(key, mac, hint, now_ms)?;
        let entry = self.by_key.entry(key.to_string()).or_insert(Lease6 {
            key: key.to_string(),
            mac: mac.map(str::to_string),
            ip,
            expires_ms: 0,
            bound: false,
        });
        if entry.ip != ip || !entry.bound {
            entry.ip = ip;
            entry.bound = false;
            entry.expires_ms = now_ms.saturating_add(OFFER_HOLD_MS);
        }
        Some(ip)
    }

    /// Binds (or renews) the address of `key` for the lease time; `None` when none is free.
    pub fn bind(
        &mut self,
        key: &str,
        mac: Option<&str>,
        hint: Option<Ipv6Addr>,
        now_ms: u64,
    ) -> Option<Ipv6Addr> {
        let ip = self.pick(key, mac, hint, now_ms)?;
        let expires_ms = now_ms.saturating_add(u64::from(self.lease_secs) * 1000);
        self.by_key.insert(
            key.to_string(),
            Lease6 {
                key: key.to_string(),
                mac: mac.map(str::to_string),
                ip,
                expires_ms,
                bound: true,
            },
        );
        Some(ip)
    }

    /// The bound lease of `key`, if any.
    pub fn lease_of(&self, key: &str) -> Option<&Lease6> {
        self.by_key.get(key).filter(|l| l.bound)
    }

    /// Frees the lease of `key`; true when there was one.
    pub fn release(&mut self, key: &str) -> bool {
        self.by_key.remove(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LeaseTable6 {
        LeaseTable6::new(
            "fd00::100".parse().unwrap(),
            "fd00::102".parse().unwrap(),
            600,
        )
        .unwrap()
    }

    #[test]
    fn ranges_are_checked() {
        assert!(
            LeaseTable6::new("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap(), 1).is_err()
        );
        assert!(
            LeaseTable6::new("fd00::".parse().unwrap(), "fd00::1:0".parse().unwrap(), 1).is_err()
        );
    }

    #[test]
    fn distinct_addresses_until_the_range_is_full_then_saved_and_loaded() {
        let mut t = table();
        let a = t.bind("d1/1", None, None, 0).unwrap();
        let b = t.advertise("d2/1", None, None, 0).unwrap();
        let c = t.bind("d3/1", None, None, 0).unwrap();
        assert!(a != b && b != c && a != c);
        assert_eq!(t.advertise("d4/1", None, None, 0), None);
        // The advertisement's hold runs out.
        assert!(t.bind("d4/1", None, None, OFFER_HOLD_MS + 1).is_some());
        let mut again = table();
        again.load(t.to_file());
        assert_eq!(again.lease_of("d1/1").map(|l| l.ip), Some(a));
        assert_eq!(again.bind("d1/1", None, None, 1).unwrap(), a);
        assert!(again.release("d1/1"));
        assert!(again.lease_of("d1/1").is_none());
    }

    #[test]
    fn reservation_wins_and_others_cannot_take_it() {
        let mut t = table();
        let reserved: Ipv6Addr = "fd00::100".parse().unwrap();
        t.reserve("52:54:00:00:00:01", reserved);
        assert_ne!(t.bind("other/1", None, Some(reserved), 0), Some(reserved));
        assert_eq!(
            t.bind("mine/1", Some("52:54:00:00:00:01"), None, 0),
            Some(reserved)
        );
    }
}

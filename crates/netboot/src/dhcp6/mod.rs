//! DHCPv6 for network boot over IPv6: leases (`leases`), the decision logic (`policy`) and
//! the socket loop (`server`).

pub mod leases;
pub mod policy;
pub mod server;

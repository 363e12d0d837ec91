//! DHCP: leases (`leases`), the decision logic (`policy`) and the socket loop (`server`).

pub mod leases;
pub mod policy;
pub mod server;

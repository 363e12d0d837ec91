//! Packet codecs (no I/O, no state): DHCPv4 and TFTP, each a bounds-checked view plus a `Repr`.

pub mod dhcp;
pub mod tftp;

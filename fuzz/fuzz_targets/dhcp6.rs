//! Fuzz target: DHCPv6 messages from strangers must never panic the codec or the policy (proxy
//! and full), and whatever parses must survive an emit -> parse round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmedia_netboot::dhcp::policy::{BootFiles, IpxeScript};
use vmedia_netboot::dhcp6::leases::LeaseTable6;
use vmedia_netboot::dhcp6::policy::{Mode6, Policy6};
use vmedia_netboot::rules::Rules;
use vmedia_netboot::wire::dhcp6::{duid_ll, duid_mac, duid_uuid, Dhcp6Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(repr) = Dhcp6Repr::parse(data) else { return };
    let again = Dhcp6Repr::parse(&repr.emit()).expect("an emitted message parses");
    assert_eq!(again, repr);
    if let Some(id) = repr.client_id() {
        let _ = (duid_mac(id), duid_uuid(id));
    }
    let boot = BootFiles {
        bios: Some("pxelinux.0".into()),
        uefi_x64: Some("grubx64.efi".into()),
        arm64: None,
        http_port: Some(80),
        ipxe: IpxeScript::Generated,
    };
    let full = Mode6::Full {
        leases: LeaseTable6::new("fd00::100".parse().unwrap(), "fd00::1ff".parse().unwrap(), 600)
            .unwrap(),
        dns: vec![],
    };
    for mode in [Mode6::Proxy, full] {
        let mut policy = Policy6 {
            mode,
            server_duid: duid_ll([2, 0, 0, 0, 0, 1]),
            server_ip: "fd00::1".parse().unwrap(),
            boot: boot.clone(),
            rules: Rules::default(),
        };
        if let Ok(reply) = policy.handle(&repr, 0) {
            Dhcp6Repr::parse(&reply.packet.emit()).expect("a reply parses");
        }
    }
});

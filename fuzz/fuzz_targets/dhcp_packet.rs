//! Fuzz target: DHCP packets from strangers must never panic the codec or the proxy policy,
//! and whatever parses must survive an emit -> parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmedia_netboot::dhcp::policy::{BootFiles, IpxeScript, Mode, Policy, Port};
use vmedia_netboot::rules::Rules;
use vmedia_netboot::wire::dhcp::{suboptions, DhcpOption, DhcpRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(repr) = DhcpRepr::parse(data) else { return };
    for option in &repr.options {
        if let DhcpOption::VendorSpecific(raw) | DhcpOption::Ipxe(raw) = option {
            let _ = suboptions(raw);
        }
    }
    let again = DhcpRepr::parse(&repr.emit()).expect("an emitted packet parses");
    assert_eq!(again.options.len(), repr.options.len());
    let mut policy = Policy {
        mode: Mode::Proxy,
        server_ip: "10.0.0.1".parse().unwrap(),
        boot: BootFiles {
            bios: Some("pxelinux.0".into()),
            uefi_x64: Some("grubx64.efi".into()),
            arm64: None,
            http_port: Some(80),
            ipxe: IpxeScript::Generated,
        },
        rules: Rules::default(),
    };
    let _ = policy.handle(&repr, Port::Dhcp, "0.0.0.0:68".parse().unwrap(), 0);
    let _ = policy.handle(&repr, Port::Pxe, "10.0.0.9:68".parse().unwrap(), 0);
});

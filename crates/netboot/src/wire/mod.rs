//! Codecs (no I/O, no state): DHCPv4, DHCPv6 and TFTP packets, each a bounds-checked view plus a
//! `Repr`, and HTTP/1.1 request heads.

pub mod dhcp;
pub mod dhcp6;
pub mod http;
pub mod tftp;

#[cfg(test)]
mod robustness {
    //! The fuzz corpora (real captured packets) and deterministic mutations of them must never
    //! make a parser panic; the cargo-fuzz targets explore further.
    use std::path::PathBuf;

    fn corpus(name: &str) -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(name);
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(!out.is_empty(), "empty corpus {}", dir.display());
        out.sort();
        out
    }

    /// Bit flips, truncations and byte overwrites from a fixed xorshift sequence.
    fn mutations(seed: &[u8], rounds: usize, mut f: impl FnMut(&[u8])) {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ seed.len() as u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        f(seed);
        for _ in 0..rounds {
            let mut m = seed.to_vec();
            match next() % 4 {
                0 if !m.is_empty() => {
                    let i = (next() as usize) % m.len();
                    m[i] ^= 1 << (next() % 8);
                }
                1 => m.truncate((next() as usize) % (seed.len() + 1)),
                2 if !m.is_empty() => {
                    let i = (next() as usize) % m.len();
                    m[i] = next() as u8;
                }
                _ => m.extend((0..(next() % 16)).map(|_| next() as u8)),
            }
            f(&m);
        }
    }

    #[test]
    fn dhcp_parser_survives_corpus_mutations() {
        let mut parsed = 0;
        for seed in corpus("dhcp_packet") {
            mutations(&seed, 3000, |bytes| {
                if let Ok(repr) = super::dhcp::DhcpRepr::parse(bytes) {
                    parsed += 1;
                    let again =
                        super::dhcp::DhcpRepr::parse(&repr.emit()).expect("emitted packet parses");
                    assert_eq!(again.options.len(), repr.options.len());
                }
            });
        }
        assert!(parsed > 0);
    }

    #[test]
    fn dhcp6_parser_and_policy_survive_corpus_mutations() {
        use crate::dhcp::policy::{BootFiles, IpxeScript};
        use crate::dhcp6::leases::LeaseTable6;
        use crate::dhcp6::policy::{Mode6, Policy6};
        let mut parsed = 0;
        let mut answered = 0;
        let mut policy = Policy6 {
            mode: Mode6::Full {
                leases: LeaseTable6::new(
                    "fd00::100".parse().unwrap(),
                    "fd00::1ff".parse().unwrap(),
                    600,
                )
                .unwrap(),
                dns: vec![],
            },
            server_duid: super::dhcp6::duid_ll([2, 0, 0, 0, 0, 1]),
            server_ip: "fd00::1".parse().unwrap(),
            boot: BootFiles {
                bios: None,
                uefi_x64: Some("grubx64.efi".into()),
                arm64: None,
                http_port: Some(80),
                ipxe: IpxeScript::Generated,
            },
            rules: crate::rules::Rules::default(),
        };
        for seed in corpus("dhcp6") {
            mutations(&seed, 3000, |bytes| {
                if let Ok(repr) = super::dhcp6::Dhcp6Repr::parse(bytes) {
                    parsed += 1;
                    let again = super::dhcp6::Dhcp6Repr::parse(&repr.emit())
                        .expect("emitted message parses");
                    assert_eq!(again, repr);
                    if let Ok(reply) = policy.handle(&repr, 0) {
                        answered += 1;
                        super::dhcp6::Dhcp6Repr::parse(&reply.packet.emit())
                            .expect("a reply parses");
                    }
                }
            });
        }
        assert!(
            parsed > 0 && answered > 0,
            "{parsed} parsed, {answered} answered"
        );
    }

    #[test]
    fn http_request_parser_survives_corpus_mutations() {
        let mut parsed = 0;
        for seed in corpus("http_request") {
            mutations(&seed, 3000, |bytes| {
                let Some(end) = super::http::find_head_end(bytes) else {
                    return;
                };
                if let Ok(head) = super::http::RequestHead::parse(&bytes[..end]) {
                    parsed += 1;
                    for size in [0, 1, 1 << 40] {
                        if let Some(range) = &head.range {
                            if let Ok(Some((first, last))) = super::http::parse_range(range, size) {
                                assert!(first <= last && last < size, "{range} of {size}");
                            }
                        }
                    }
                    let _ = super::http::query_param(&head.query, "mac");
                    let _ = crate::files::normalize(&head.path);
                }
            });
        }
        assert!(parsed > 0);
    }

    #[test]
    fn tftp_parser_survives_corpus_mutations() {
        let mut parsed = 0;
        for seed in corpus("tftp_packet") {
            mutations(&seed, 3000, |bytes| {
                if let Ok(repr) = super::tftp::TftpRepr::parse(bytes) {
                    parsed += 1;
                    super::tftp::TftpRepr::parse(&repr.to_vec()).expect("emitted packet parses");
                }
            });
        }
        assert!(parsed > 0);
    }
}

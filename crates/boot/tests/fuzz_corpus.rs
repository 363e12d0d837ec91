//! Replays the boot crate's fuzz corpora (fuzz/corpus/boot_*) through the fuzz targets' code
//! paths (`vmedia_boot::exercise`): no input may panic, and the real samples (Debian 12
//! installer configs, the configs and initrds vmedia's boot tests build) must still parse.

#[path = "../../../fuzz/corpus_samples.rs"]
mod corpus_samples;

use vmedia_boot::exercise::{self, InitrdWalk};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    corpus_samples::samples(target, 3)
}

#[test]
fn boot_isolinux_config_corpus_replays() {
    for (name, data) in corpus("boot_isolinux_config") {
        let result = exercise::isolinux_config(&data);
        if name.starts_with("vmedia-") {
            let entry = result.clone().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(entry.kernel, "/boot/vmlinuz", "{name}");
            assert_eq!(entry.initrds, ["/boot/initrd.gz"], "{name}");
        }
        if name == "debian12-netboot-txt.cfg" {
            let entry = result.clone().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(entry.label, "install");
            assert!(
                entry.kernel.ends_with("debian-installer/amd64/linux"),
                "{entry:?}"
            );
            assert_eq!(entry.append, "vga=788 --- quiet");
        }
    }
}

#[test]
fn boot_grub_config_corpus_replays() {
    for (name, data) in corpus("boot_grub_config") {
        let result = exercise::grub_config(&data);
        if name.starts_with("vmedia-") {
            let entry = result.clone().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(entry.kernel, "/boot/vmlinuz", "{name}");
        }
        if name == "debian12-netboot-grub.cfg" {
            let entry = result.clone().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(entry.label, "Install");
            assert_eq!(entry.kernel, "/debian-installer/amd64/linux");
            assert_eq!(entry.initrds, ["/debian-installer/amd64/initrd.gz"]);
        }
    }
}

#[test]
fn boot_initrd_corpus_replays() {
    for (name, data) in corpus("boot_initrd") {
        let result = exercise::initrd(&data);
        match name.as_str() {
            "plain-newc.cpio" => {
                let Ok(InitrdWalk::Plain(names)) = &result else {
                    panic!("{name}: {result:?}")
                };
                assert!(names.iter().any(|n| n == "init"), "{names:?}");
            }
            "early-cpio-then-gzip.img" | "gzip-pad-xz-zstd.img" | "xz-crc32.img" | "zstd.img" => {
                assert!(
                    matches!(result, Ok(InitrdWalk::Unpacked(n)) if n > 512),
                    "{name}: {result:?}"
                );
            }
            "lz4-unsupported.img" => {
                assert!(result.unwrap_err().contains("neither"), "{name}");
            }
            n if n.starts_with("hostile-zstd-rle-bomb") => {
                let err = result.unwrap_err();
                assert!(err.contains("decompresses to over"), "{name}: {err}");
            }
            _ => {}
        }
    }
}

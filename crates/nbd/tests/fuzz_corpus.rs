//! Replays the NBD fuzz corpora (handshakes and transmission-phase requests captured from
//! nbdinfo, nbdcopy, qemu-img, qemu-io and libnbd's Python bindings, plus hand-made malformed
//! seeds): no input may panic, `valid-` seeds must be accepted and `bad-` seeds refused.

#[path = "../../../fuzz/corpus_samples.rs"]
mod corpus_samples;

use std::fs;

use corpus_samples::{dir, replay};

#[test]
fn handshake_corpus_replays() {
    replay("nbd_handshake", vmedia_nbd::fuzzing::handshake);
}

#[test]
fn request_corpus_replays() {
    replay("nbd_request", vmedia_nbd::fuzzing::requests);
}

/// Every byte string a fuzzer would try first (each prefix of a real conversation) must be
/// handled without a panic.
#[test]
fn every_prefix_of_the_real_handshakes_is_handled() {
    let corpus = dir("nbd_handshake");
    for entry in fs::read_dir(&corpus).unwrap() {
        let bytes = fs::read(entry.unwrap().path()).unwrap();
        for end in 0..bytes.len() {
            let _ = vmedia_nbd::fuzzing::handshake(&bytes[..end]);
        }
    }
}

/// A small deterministic mutator over the seeds (byte flips, truncations, splices, random
/// lengths in option and request headers), so `cargo test` exercises what a fuzzer would
/// without cargo-fuzz: no input may panic or hang.
#[test]
fn mutated_seeds_never_panic() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for target in ["nbd_handshake", "nbd_request"] {
        let corpus = dir(target);
        let seeds: Vec<Vec<u8>> = fs::read_dir(&corpus)
            .unwrap()
            .map(|entry| fs::read(entry.unwrap().path()).unwrap())
            .collect();
        let run: fn(&[u8]) -> bool = if target == "nbd_handshake" {
            vmedia_nbd::fuzzing::handshake
        } else {
            vmedia_nbd::fuzzing::requests
        };
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                let len = bytes.len().max(1);
                let at = (next() as usize) % len;
                match next() % 5 {
                    0 => {
                        if let Some(byte) = bytes.get_mut(at) {
                            *byte ^= 1 << (next() % 8);
                        }
                    }
                    1 => bytes.truncate(at),
                    2 => {
                        let other = &seeds[(next() as usize) % seeds.len()];
                        let from = (next() as usize) % other.len().max(1);
                        bytes.splice(
                            at.min(bytes.len())..,
                            other[from.min(other.len())..].iter().copied(),
                        );
                    }
                    3 => {
                        // A random 32-bit length where headers keep theirs.
                        let value = (next() as u32).to_be_bytes();
                        for (i, byte) in value.iter().enumerate() {
                            if let Some(slot) = bytes.get_mut(at + i) {
                                *slot = *byte;
                            }
                        }
                    }
                    _ => bytes.insert(at.min(bytes.len()), next() as u8),
                }
            }
            let _ = run(&bytes);
        }
    }
}

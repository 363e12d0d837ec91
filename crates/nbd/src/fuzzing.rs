//! Entry points for the fuzz targets (`fuzz/fuzz_targets/nbd_*.rs`) and the corpus replay
//! test: each takes untrusted bytes, must never panic, and checks the invariants of what it
//! produced. Each returns whether the input was a well-formed conversation.

use crate::handshake::{Action, ExportEntry, ExportInfo, Handshake, TlsPolicy};
use crate::option::RawOptionReply;
use crate::transmission::{
    block_status_descriptors, plan_read, Extent, Request, RequestHeader, Session,
    REQUEST_HEADER_LEN,
};
use crate::wire::{transmission_flags, BlockSizes, BASE_ALLOCATION_ID};

/// The export every fuzzed handshake opens (any name but `missing`).
fn fuzz_export(name: &str) -> ExportInfo {
    ExportInfo {
        name: name.to_string(),
        description: "fuzz export".to_string(),
        size: 64 << 20,
        read_only: false,
        multi_conn: true,
        block_sizes: BlockSizes::DEFAULT,
    }
}

/// Bounds the steps of one run: every step consumes input or changes state, so a correct
/// machine finishes far sooner; hitting this is a bug the fuzzer reports.
const MAX_STEPS: usize = 1 << 20;

fn drive(data: &[u8], policy: TlsPolicy) -> bool {
    let mut handshake = Handshake::new(policy);
    // Fed as a driver reads: no more than the current step needs, so a client that waits
    // for the STARTTLS ACK before its next bytes looks the same here as on a socket.
    let mut rest = data;
    for _ in 0..MAX_STEPS {
        match handshake.poll() {
            Ok(Action::Send(bytes)) => check_replies(&bytes),
            Ok(Action::NeedInput) => {
                if rest.is_empty() {
                    return false;
                }
                let (now, later) = rest.split_at(handshake.wanted().clamp(1, rest.len()));
                handshake.feed(now);
                rest = later;
            }
            Ok(Action::ListExports) => handshake
                .exports_listed(Ok(vec![ExportEntry {
                    name: "fuzz".into(),
                    description: "fuzz export".into(),
                }]))
                .expect("listing was asked for"),
            Ok(Action::OpenExport { name }) => {
                let opened = if name == "missing" {
                    Err("no such export".to_string())
                } else {
                    Ok(fuzz_export(&name))
                };
                let _ = handshake.export_opened(opened);
            }
            Ok(Action::StartTls) => handshake.tls_started().expect("TLS was asked for"),
            Ok(Action::Abort) => return false,
            Ok(Action::Enter(negotiated)) => {
                assert!(negotiated.flags & transmission_flags::HAS_FLAGS != 0);
                return true;
            }
            Err(_) => return false,
        }
    }
    panic!("handshake did not finish within {MAX_STEPS} steps");
}

/// Everything the server sends after the greeting must be well-formed option replies or the
/// EXPORT_NAME answer; checks the option replies it can recognise.
fn check_replies(bytes: &[u8]) {
    let mut at = 0;
    while let Some((_, used)) = bytes.get(at..).and_then(RawOptionReply::parse) {
        at += used;
    }
}

/// A client's handshake bytes (client flags onward).
pub fn handshake(data: &[u8]) -> bool {
    let _ = drive(data, TlsPolicy::Required);
    let _ = drive(data, TlsPolicy::Unavailable);
    drive(data, TlsPolicy::Optional)
}

/// A client's transmission-phase bytes: requests (with WRITE payloads) against a writable
/// 64 MiB export with structured replies and `base:allocation`.
pub fn requests(data: &[u8]) -> bool {
    let session = Session {
        size: 64 << 20,
        flags: fuzz_export("fuzz").transmission_flags(true),
        structured_replies: true,
        base_allocation: Some(BASE_ALLOCATION_ID),
        block_sizes: BlockSizes::DEFAULT,
    };
    // Alternating hole and data runs, so the planners always have work.
    let extents: Vec<Extent> = (0..64)
        .map(|i| Extent {
            length: 4096 * (1 + i % 3),
            hole: i % 2 == 0,
            zero: i % 2 == 0,
        })
        .collect();
    let mut at = 0;
    let mut valid = 0;
    while at < data.len() {
        let Ok(header) = RequestHeader::parse(&data[at..]) else {
            return false;
        };
        let mut emitted = Vec::new();
        header.emit(&mut emitted);
        assert_eq!(RequestHeader::parse(&emitted), Ok(header));
        at += REQUEST_HEADER_LEN;
        let payload = header.payload_len() as usize;
        let Some(next) = at.checked_add(payload).filter(|end| *end <= data.len()) else {
            return false;
        };
        at = next;
        match session.validate(&header) {
            Ok(Request::Read { offset, length, .. }) => {
                let pieces = plan_read(offset, length, &extents, 512);
                let total: u64 = pieces.iter().map(|piece| u64::from(piece.length)).sum();
                assert_eq!(total, u64::from(length));
                assert!(offset + total <= session.size);
                valid += 1;
            }
            Ok(Request::BlockStatus {
                length, req_one, ..
            }) => {
                let descriptors = block_status_descriptors(length, &extents, req_one, 1);
                assert!(!descriptors.is_empty());
                assert!(descriptors.iter().all(|descriptor| descriptor.length > 0));
                if req_one {
                    assert_eq!(descriptors.len(), 1);
                    assert!(descriptors[0].length <= length);
                }
                valid += 1;
            }
            Ok(Request::Disconnect) => return valid > 0,
            Ok(_) => valid += 1,
            Err(_) => {}
        }
    }
    valid > 0
}

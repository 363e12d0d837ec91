//! Fuzz target: TFTP packets from strangers must never panic the codec or the option
//! negotiation, and whatever parses must survive an emit -> parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmedia_netboot::files::normalize;
use vmedia_netboot::tftp::session::{negotiate, ReadSession};
use vmedia_netboot::wire::tftp::{TftpRepr, MAX_BLKSIZE};

fuzz_target!(|data: &[u8]| {
    let Ok(repr) = TftpRepr::parse(data) else { return };
    let bytes = repr.to_vec();
    let _ = TftpRepr::parse(&bytes).expect("an emitted packet parses");
    if let TftpRepr::ReadRequest(req) = &repr {
        let _ = normalize(&String::from_utf8_lossy(&req.filename));
        let negotiated = negotiate(&req.options, 1 << 20, MAX_BLKSIZE);
        let mut session = ReadSession::new(&negotiated, 1 << 20);
        let _ = session.start();
        // Drive the session with ACK numbers taken from the input itself.
        for pair in data.chunks_exact(2).take(64) {
            let _ = session.on_ack(u16::from_be_bytes([pair[0], pair[1]]));
        }
        let _ = session.on_timeout();
    }
});

//! The NBD protocol's numbers: magics, option and reply codes, flags, error values and the
//! named limits this implementation enforces. Values are those of the protocol document
//! (doc/proto.md of the NetworkBlockDevice project); every integer on the wire is big-endian.

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle greeting's second magic and every option request's magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags the server sends after the greeting magics.
pub mod handshake_flags {
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags, the 32 bits the client answers the greeting with.
pub mod client_flags {
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    pub const NO_ZEROES: u32 = 1 << 1;
    /// Every flag this server understands; anything else closes the connection.
    pub const KNOWN: u32 = FIXED_NEWSTYLE | NO_ZEROES;
}

/// Transmission flags (16 bits, sent with the export's size).
pub mod transmission_flags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_RESIZE: u16 = 1 << 9;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option codes (`NBD_OPT_*`).
pub mod option {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
pub mod reply {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    const ERROR: u32 = 1 << 31;
    pub const ERR_UNSUP: u32 = ERROR | 1;
    pub const ERR_POLICY: u32 = ERROR | 2;
    pub const ERR_INVALID: u32 = ERROR | 3;
    pub const ERR_PLATFORM: u32 = ERROR | 4;
    pub const ERR_TLS_REQD: u32 = ERROR | 5;
    pub const ERR_UNKNOWN: u32 = ERROR | 6;
    pub const ERR_SHUTDOWN: u32 = ERROR | 7;
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERROR | 8;
    pub const ERR_TOO_BIG: u32 = ERROR | 9;
}

/// Information types inside an `NBD_REP_INFO` reply (`NBD_INFO_*`).
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types (`NBD_CMD_*`).
pub mod command {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod command_flags {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk flags and types.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1 << 0;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = 0x8001;
    pub const ERROR_OFFSET: u16 = 0x8002;
}

/// `base:allocation` status flags (`NBD_STATE_*`).
pub mod state {
    pub const HOLE: u32 = 1 << 0;
    pub const ZERO: u32 = 1 << 1;
}

/// The one metadata context this server offers.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id this server gives `base:allocation` (ids are opaque to clients; any fixed value works).
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Longest option payload accepted: the largest legitimate one is a meta-context request with
/// `MAX_META_QUERIES` queries; anything longer is treated as a denial of service.
pub const MAX_OPTION_LENGTH: u32 = 64 * 1024;
/// Options one handshake may send before the server gives up on it (a handshake that never
/// ends holds a connection slot); enough for `nbdinfo --list` over thousands of exports.
pub const MAX_OPTIONS: u32 = 16 * 1024;
/// Most queries in one LIST/SET_META_CONTEXT; more are answered with `NBD_REP_ERR_TOO_BIG`.
pub const MAX_META_QUERIES: u32 = 128;
// A meta-context request with the most queries (each at least a length and "x:") must fit.
const _: () = assert!(MAX_OPTION_LENGTH >= 8 + MAX_META_QUERIES * 6);
/// The protocol's hard limit on any string (export names, queries, messages).
pub const MAX_STRING_LENGTH: usize = 4096;
/// Default and ceiling of the payload one READ or WRITE may carry: the protocol says clients
/// may always use 32 MiB, and a request buffer is allocated from this length.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Most descriptors in one BLOCK_STATUS chunk (the protocol's own recommendation is 2^20;
/// fewer keeps one reply under 1 MiB and clients simply ask again from where it stopped).
pub const MAX_BLOCK_STATUS_DESCRIPTORS: usize = 128 * 1024;
/// Largest minimum block size the protocol allows.
pub const MAX_MINIMUM_BLOCK_SIZE: u32 = 64 * 1024;
/// Reads with `NBD_CMD_FLAG_DF` up to this length must be served unfragmented.
pub const DF_GUARANTEED_LENGTH: u32 = 64 * 1024;

/// An NBD error value, as sent in simple replies and error chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NbdError {
    /// Operation not permitted (a write to a read-only export).
    Perm,
    /// Input/output error.
    Io,
    /// Cannot allocate memory.
    NoMem,
    /// Invalid argument (bounds, alignment, flags, unknown command).
    Inval,
    /// No space left on device (a write past the end).
    NoSpc,
    /// Value too large (a DF read or an effect length too big to serve).
    Overflow,
    /// Operation not supported.
    NotSup,
    /// The server is shutting down.
    Shutdown,
}

impl NbdError {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        match self {
            NbdError::Perm => 1,
            NbdError::Io => 5,
            NbdError::NoMem => 12,
            NbdError::Inval => 22,
            NbdError::NoSpc => 28,
            NbdError::Overflow => 75,
            NbdError::NotSup => 95,
            NbdError::Shutdown => 108,
        }
    }

    /// The error a wire value names; unknown values read as `Inval`, as the protocol tells
    /// clients to treat them.
    pub fn from_code(code: u32) -> NbdError {
        match code {
            1 => NbdError::Perm,
            5 => NbdError::Io,
            12 => NbdError::NoMem,
            28 => NbdError::NoSpc,
            75 => NbdError::Overflow,
            95 => NbdError::NotSup,
            108 => NbdError::Shutdown,
            _ => NbdError::Inval,
        }
    }
}

/// Block-size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

impl BlockSizes {
    /// Values every client accepts: byte granularity, 4 KiB preferred, `MAX_PAYLOAD` payloads.
    pub const DEFAULT: BlockSizes = BlockSizes {
        minimum: 1,
        preferred: 4096,
        maximum: MAX_PAYLOAD,
    };

    /// The nearest constraints the protocol allows, with the maximum payload capped at
    /// `payload_cap`: the minimum a power of two up to 64 KiB, the preferred a power of two at
    /// least max(minimum, 512), the maximum at least the preferred. An export that reports
    /// nonsense is served with sane values rather than confusing clients.
    pub fn normalized(self, payload_cap: u32) -> BlockSizes {
        let minimum = if self.minimum.is_power_of_two() && self.minimum <= MAX_MINIMUM_BLOCK_SIZE {
            self.minimum
        } else {
            1
        };
        let floor = minimum.max(512);
        let preferred = if self.preferred.is_power_of_two() && self.preferred >= floor {
            self.preferred
        } else {
            floor.max(4096)
        };
        let cap = payload_cap.max(preferred);
        let maximum = self.maximum.clamp(preferred, cap);
        BlockSizes {
            minimum,
            preferred,
            maximum,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        for error in [
            NbdError::Perm,
            NbdError::Io,
            NbdError::NoMem,
            NbdError::Inval,
            NbdError::NoSpc,
            NbdError::Overflow,
            NbdError::NotSup,
            NbdError::Shutdown,
        ] {
            assert_eq!(NbdError::from_code(error.code()), error);
        }
        assert_eq!(NbdError::from_code(9999), NbdError::Inval);
    }

    #[test]
    fn block_sizes_are_normalized_to_what_the_protocol_allows() {
        let odd = BlockSizes {
            minimum: 3,
            preferred: 100,
            maximum: u32::MAX,
        };
        assert_eq!(
            odd.normalized(MAX_PAYLOAD),
            BlockSizes {
                minimum: 1,
                preferred: 4096,
                maximum: MAX_PAYLOAD
            }
        );
        let sector = BlockSizes {
            minimum: 512,
            preferred: 65536,
            maximum: 1024,
        };
        assert_eq!(
            sector.normalized(MAX_PAYLOAD),
            BlockSizes {
                minimum: 512,
                preferred: 65536,
                maximum: 65536
            }
        );
        let huge_minimum = BlockSizes {
            minimum: 1 << 20,
            preferred: 1 << 20,
            maximum: 1 << 22,
        };
        assert_eq!(huge_minimum.normalized(MAX_PAYLOAD).minimum, 1);
    }
}

//! SHA-256 that advances two independent messages at once on one core, with the x86 SHA
//! extensions (SHA-NI) when the CPU has them.
//!
//! One SHA-256 stream cannot keep the SHA unit busy: every `sha256rnds2` needs the state the
//! previous one produced, so a single stream runs at the instruction's latency. Two messages
//! have two independent chains; issuing their instructions interleaved fills the gaps, which
//! is nearly twice the throughput of one stream on one core. Callers with two messages (an
//! image and its embedded-checksum view, two chunks) hash both for little more than the cost
//! of one: [`update_pair`], [`digest_pair`], [`digest_many`]. When both chains take the very
//! same bytes (an image and its embedded-checksum view, past the blanked area), the message
//! schedule is computed once for both.
//!
//! Without SHA-NI (or off x86_64) every block goes through the `sha2` crate's compression
//! function, which is also the reference the tests compare against. This is the crate's only
//! module with `unsafe` code: the SHA-NI kernels (`ni`) and the calls into them after runtime
//! detection.

/// Bytes per SHA-256 block.
pub const BLOCK_BYTES: usize = 64;
/// Bytes of a digest.
pub const DIGEST_BYTES: usize = 32;

/// FIPS 180-4's initial hash value.
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// FIPS 180-4's round constants.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// True when this CPU runs the SHA-NI kernels (std caches the detection).
pub fn accelerated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Compresses whole blocks of one message into `state`.
fn compress1(state: &mut [u32; 8], blocks: &[u8]) {
    debug_assert_eq!(blocks.len() % BLOCK_BYTES, 0);
    #[cfg(target_arch = "x86_64")]
    if accelerated() {
        // SAFETY: the CPU has every feature the kernel is compiled for (checked just above).
        unsafe { ni::compress1(state, blocks) };
        return;
    }
    portable(state, blocks);
}

/// Compresses whole blocks of two messages, `a.len() == b.len()`, interleaved.
fn compress2(sa: &mut [u32; 8], a: &[u8], sb: &mut [u32; 8], b: &[u8]) {
    debug_assert_eq!(a.len(), b.len());
    debug_assert_eq!(a.len() % BLOCK_BYTES, 0);
    #[cfg(target_arch = "x86_64")]
    if accelerated() {
        // Two views of the same bytes (an image and its embedded-checksum view, past the
        // blanked area): one message schedule serves both chains.
        if a.as_ptr() == b.as_ptr() {
            // SAFETY: as below.
            unsafe { ni::compress_same(sa, sb, a) };
            return;
        }
        // SAFETY: the CPU has every feature the kernel is compiled for (checked just above).
        unsafe { ni::compress2(sa, a, sb, b) };
        return;
    }
    portable(sa, a);
    portable(sb, b);
}

/// The `sha2` crate's compression function, block by block.
fn portable(state: &mut [u32; 8], blocks: &[u8]) {
    use sha2::digest::generic_array::GenericArray;
    for block in blocks.chunks_exact(BLOCK_BYTES) {
        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
    }
}

/// An incremental SHA-256 (the same digests as `sha2::Sha256`).
#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    buffer: [u8; BLOCK_BYTES],
    buffered: usize,
    /// Message bytes so far (the padding encodes it in bits, modulo 2^64 as FIPS 180-4 says).
    length: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256 {
            state: H0,
            buffer: [0; BLOCK_BYTES],
            buffered: 0,
            length: 0,
        }
    }

    /// Appends `data` to the message.
    pub fn update(&mut self, data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        self.absorb(data);
    }

    /// The digest of the message.
    pub fn finalize(mut self) -> [u8; DIGEST_BYTES] {
        let bits = self.length.wrapping_mul(8);
        let mut tail = [0u8; 2 * BLOCK_BYTES];
        tail[..self.buffered].copy_from_slice(&self.buffer[..self.buffered]);
        tail[self.buffered] = 0x80;
        // The 64-bit length ends the last block; a second block when it does not fit.
        let blocks = if self.buffered < BLOCK_BYTES - 8 {
            1
        } else {
            2
        };
        let end = blocks * BLOCK_BYTES;
        tail[end - 8..end].copy_from_slice(&bits.to_be_bytes());
        compress1(&mut self.state, &tail[..end]);
        let mut digest = [0u8; DIGEST_BYTES];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }

    /// Completes a partly filled block from `data`; returns the rest of `data` (non-empty
    /// only when the buffer is empty afterwards).
    fn fill<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        if self.buffered == 0 {
            return data;
        }
        let take = (BLOCK_BYTES - self.buffered).min(data.len());
        self.buffer[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
        self.buffered += take;
        if self.buffered == BLOCK_BYTES {
            let block = self.buffer;
            compress1(&mut self.state, &block);
            self.buffered = 0;
        }
        &data[take..]
    }

    /// `update` without counting the length.
    fn absorb(&mut self, data: &[u8]) {
        let data = self.fill(data);
        let whole = data.len() - data.len() % BLOCK_BYTES;
        compress1(&mut self.state, &data[..whole]);
        self.keep(&data[whole..]);
    }

    /// Buffers less than a block, the buffer being empty.
    fn keep(&mut self, rest: &[u8]) {
        if !rest.is_empty() {
            self.buffer[..rest.len()].copy_from_slice(rest);
            self.buffered = rest.len();
        }
    }
}

/// Appends `da` to `a`'s message and `db` to `b`'s, the whole blocks they have in common
/// hashed in lockstep. Any lengths and buffered states work; the lockstep part is largest when
/// both advance by the same amount from the same block offset (two views of one stream).
pub fn update_pair(a: &mut Sha256, da: &[u8], b: &mut Sha256, db: &[u8]) {
    a.length = a.length.wrapping_add(da.len() as u64);
    b.length = b.length.wrapping_add(db.len() as u64);
    let ra = a.fill(da);
    let rb = b.fill(db);
    let common = ra.len().min(rb.len());
    let common = common - common % BLOCK_BYTES;
    // A buffer left partly filled means its rest is empty, so `common` is 0 then.
    compress2(&mut a.state, &ra[..common], &mut b.state, &rb[..common]);
    a.absorb(&ra[common..]);
    b.absorb(&rb[common..]);
}

/// The SHA-256 of `data`.
pub fn digest(data: &[u8]) -> [u8; DIGEST_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(data);
    hasher.finalize()
}

/// The SHA-256 digests of two messages, hashed in lockstep.
pub fn digest_pair(a: &[u8], b: &[u8]) -> ([u8; DIGEST_BYTES], [u8; DIGEST_BYTES]) {
    let (mut ha, mut hb) = (Sha256::new(), Sha256::new());
    update_pair(&mut ha, a, &mut hb, b);
    (ha.finalize(), hb.finalize())
}

/// The SHA-256 digest of each message, in order. Two lanes run in lockstep; a lane whose
/// message ends takes the next one, so messages of different lengths keep both lanes busy
/// until the last.
pub fn digest_many(messages: &[&[u8]]) -> Vec<[u8; DIGEST_BYTES]> {
    let mut digests = vec![[0u8; DIGEST_BYTES]; messages.len()];
    let mut next = 0usize;
    // A lane: the message's index, its hasher and what is left of it.
    let take = |next: &mut usize| {
        let index = *next;
        let message = messages.get(index)?;
        *next += 1;
        Some((index, Sha256::new(), *message))
    };
    let mut lane_a = take(&mut next);
    let mut lane_b = take(&mut next);
    loop {
        match (&mut lane_a, &mut lane_b) {
            (Some((ia, ha, ra)), Some((ib, hb, rb))) => {
                let step = ra.len().min(rb.len());
                update_pair(ha, &ra[..step], hb, &rb[..step]);
                *ra = &ra[step..];
                *rb = &rb[step..];
                if ra.is_empty() {
                    digests[*ia] = ha.clone().finalize();
                    lane_a = take(&mut next);
                }
                if rb.is_empty() {
                    digests[*ib] = hb.clone().finalize();
                    lane_b = take(&mut next);
                }
            }
            (Some((index, hasher, rest)), None) | (None, Some((index, hasher, rest))) => {
                hasher.update(rest);
                digests[*index] = hasher.clone().finalize();
                // Nothing is left for the other lane either.
                break;
            }
            (None, None) => break,
        }
    }
    digests
}

/// The SHA-NI kernels. `ABEF`/`CDGH` is the state layout `sha256rnds2` works on; each group of
/// four rounds consumes one vector of message words, and the schedule for the next group is
/// computed while the rounds run (the order of Intel's reference sequence).
#[cfg(target_arch = "x86_64")]
mod ni {
    use super::{BLOCK_BYTES, K};
    use core::arch::x86_64::*;

    /// Four rounds (`$i` = 0..16) for each listed stream: (ABEF, CDGH, message ring, scratch).
    macro_rules! rounds {
        ($i:literal; $(($s0:ident, $s1:ident, $w:ident, $wk:ident)),+) => {{
            let k = _mm_set_epi32(
                K[4 * $i + 3] as i32,
                K[4 * $i + 2] as i32,
                K[4 * $i + 1] as i32,
                K[4 * $i] as i32,
            );
            $( let $wk = _mm_add_epi32($w[$i % 4], k); )+
            $( $s1 = _mm_sha256rnds2_epu32($s1, $s0, $wk); )+
            // W[i + 1] = msg2(msg1(W[i - 3], W[i - 2]) + W[i - 1..] shifted in, W[i]).
            if $i >= 3 && $i <= 14 {
                $(
                    $w[($i + 1) % 4] = _mm_sha256msg2_epu32(
                        _mm_add_epi32($w[($i + 1) % 4], _mm_alignr_epi8($w[$i % 4], $w[($i + 3) % 4], 4)),
                        $w[$i % 4],
                    );
                )+
            }
            $( $s0 = _mm_sha256rnds2_epu32($s0, $s1, _mm_shuffle_epi32($wk, 0x0E)); )+
            // W[i - 1] gets its sigma0 part, ready for W[i + 3].
            if $i >= 1 && $i <= 12 {
                $( $w[($i + 3) % 4] = _mm_sha256msg1_epu32($w[($i + 3) % 4], $w[$i % 4]); )+
            }
        }};
    }

    /// Four rounds (`$i` = 0..16) of one message for each listed chain: the message words and
    /// their schedule are computed once.
    macro_rules! rounds_same {
        ($i:literal; $w:ident; $(($s0:ident, $s1:ident)),+) => {{
            let k = _mm_set_epi32(
                K[4 * $i + 3] as i32,
                K[4 * $i + 2] as i32,
                K[4 * $i + 1] as i32,
                K[4 * $i] as i32,
            );
            let wk = _mm_add_epi32($w[$i % 4], k);
            $( $s1 = _mm_sha256rnds2_epu32($s1, $s0, wk); )+
            if $i >= 3 && $i <= 14 {
                $w[($i + 1) % 4] = _mm_sha256msg2_epu32(
                    _mm_add_epi32($w[($i + 1) % 4], _mm_alignr_epi8($w[$i % 4], $w[($i + 3) % 4], 4)),
                    $w[$i % 4],
                );
            }
            let wk_high = _mm_shuffle_epi32(wk, 0x0E);
            $( $s0 = _mm_sha256rnds2_epu32($s0, $s1, wk_high); )+
            if $i >= 1 && $i <= 12 {
                $w[($i + 3) % 4] = _mm_sha256msg1_epu32($w[($i + 3) % 4], $w[$i % 4]);
            }
        }};
    }

    macro_rules! all_rounds_same {
        ($w:ident; $($chain:tt),+) => {
            rounds_same!(0; $w; $($chain),+); rounds_same!(1; $w; $($chain),+);
            rounds_same!(2; $w; $($chain),+); rounds_same!(3; $w; $($chain),+);
            rounds_same!(4; $w; $($chain),+); rounds_same!(5; $w; $($chain),+);
            rounds_same!(6; $w; $($chain),+); rounds_same!(7; $w; $($chain),+);
            rounds_same!(8; $w; $($chain),+); rounds_same!(9; $w; $($chain),+);
            rounds_same!(10; $w; $($chain),+); rounds_same!(11; $w; $($chain),+);
            rounds_same!(12; $w; $($chain),+); rounds_same!(13; $w; $($chain),+);
            rounds_same!(14; $w; $($chain),+); rounds_same!(15; $w; $($chain),+);
        };
    }

    macro_rules! all_rounds {
        ($($stream:tt),+) => {
            rounds!(0; $($stream),+); rounds!(1; $($stream),+); rounds!(2; $($stream),+);
            rounds!(3; $($stream),+); rounds!(4; $($stream),+); rounds!(5; $($stream),+);
            rounds!(6; $($stream),+); rounds!(7; $($stream),+); rounds!(8; $($stream),+);
            rounds!(9; $($stream),+); rounds!(10; $($stream),+); rounds!(11; $($stream),+);
            rounds!(12; $($stream),+); rounds!(13; $($stream),+); rounds!(14; $($stream),+);
            rounds!(15; $($stream),+);
        };
    }

    /// `[a..h]` as (ABEF, CDGH).
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn load_state(s: &[u32; 8]) -> (__m128i, __m128i) {
        let dcba = _mm_set_epi32(s[3] as i32, s[2] as i32, s[1] as i32, s[0] as i32);
        let hgfe = _mm_set_epi32(s[7] as i32, s[6] as i32, s[5] as i32, s[4] as i32);
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
        (
            _mm_alignr_epi8(cdab, efgh, 8),
            _mm_blend_epi16(efgh, cdab, 0xF0),
        )
    }

    /// (ABEF, CDGH) back to `[a..h]`.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn store_state(abef: __m128i, cdgh: __m128i, s: &mut [u32; 8]) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
        let hgfe = _mm_alignr_epi8(dchg, feba, 8);
        *s = [
            _mm_extract_epi32(dcba, 0) as u32,
            _mm_extract_epi32(dcba, 1) as u32,
            _mm_extract_epi32(dcba, 2) as u32,
            _mm_extract_epi32(dcba, 3) as u32,
            _mm_extract_epi32(hgfe, 0) as u32,
            _mm_extract_epi32(hgfe, 1) as u32,
            _mm_extract_epi32(hgfe, 2) as u32,
            _mm_extract_epi32(hgfe, 3) as u32,
        ];
    }

    /// A block's sixteen big-endian words as four vectors.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn load_block(block: &[u8]) -> [__m128i; 4] {
        assert!(block.len() >= BLOCK_BYTES);
        let swap = _mm_set_epi64x(0x0c0d0e0f_08090a0b, 0x04050607_00010203);
        // SAFETY: the assert above keeps each 16-byte read at 0, 16, 32, 48 inside `block`;
        // `loadu` has no alignment requirement.
        let word = |at: usize| unsafe {
            _mm_shuffle_epi8(_mm_loadu_si128(block.as_ptr().add(at).cast()), swap)
        };
        [word(0), word(16), word(32), word(48)]
    }

    /// One message's whole blocks.
    ///
    /// # Safety
    /// The CPU must support SHA, SSE2, SSSE3 and SSE4.1.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress1(state: &mut [u32; 8], blocks: &[u8]) {
        let (mut a0, mut a1) = load_state(state);
        for block in blocks.chunks_exact(BLOCK_BYTES) {
            let (save0, save1) = (a0, a1);
            let mut wa = load_block(block);
            all_rounds!((a0, a1, wa, wka));
            a0 = _mm_add_epi32(a0, save0);
            a1 = _mm_add_epi32(a1, save1);
        }
        store_state(a0, a1, state);
    }

    /// Two messages' whole blocks, `a.len() == b.len()`, their instructions interleaved.
    ///
    /// # Safety
    /// The CPU must support SHA, SSE2, SSSE3 and SSE4.1.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress2(sa: &mut [u32; 8], a: &[u8], sb: &mut [u32; 8], b: &[u8]) {
        let (mut a0, mut a1) = load_state(sa);
        let (mut b0, mut b1) = load_state(sb);
        for (block_a, block_b) in a.chunks_exact(BLOCK_BYTES).zip(b.chunks_exact(BLOCK_BYTES)) {
            let (save_a0, save_a1, save_b0, save_b1) = (a0, a1, b0, b1);
            let mut wa = load_block(block_a);
            let mut wb = load_block(block_b);
            all_rounds!((a0, a1, wa, wka), (b0, b1, wb, wkb));
            a0 = _mm_add_epi32(a0, save_a0);
            a1 = _mm_add_epi32(a1, save_a1);
            b0 = _mm_add_epi32(b0, save_b0);
            b1 = _mm_add_epi32(b1, save_b1);
        }
        store_state(a0, a1, sa);
        store_state(b0, b1, sb);
    }

    /// The same message's whole blocks into two chaining states (one schedule for both).
    ///
    /// # Safety
    /// The CPU must support SHA, SSE2, SSSE3 and SSE4.1.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress_same(sa: &mut [u32; 8], sb: &mut [u32; 8], blocks: &[u8]) {
        let (mut a0, mut a1) = load_state(sa);
        let (mut b0, mut b1) = load_state(sb);
        for block in blocks.chunks_exact(BLOCK_BYTES) {
            let (save_a0, save_a1, save_b0, save_b1) = (a0, a1, b0, b1);
            let mut w = load_block(block);
            all_rounds_same!(w; (a0, a1), (b0, b1));
            a0 = _mm_add_epi32(a0, save_a0);
            a1 = _mm_add_epi32(a1, save_a1);
            b0 = _mm_add_epi32(b0, save_b0);
            b1 = _mm_add_epi32(b1, save_b1);
        }
        store_state(a0, a1, sa);
        store_state(b0, b1, sb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn reference(data: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(data).into()
    }

    fn pseudo_random(length: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn hex(digest: &[u8; 32]) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn nist_vectors() {
        let million_a = vec![b'a'; 1_000_000];
        let cases: [(&[u8], &str); 4] = [
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            (
                &million_a,
                "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(hex(&digest(message)), expected);
            let (a, b) = digest_pair(message, b"abc");
            assert_eq!(hex(&a), expected);
            assert_eq!(
                hex(&b),
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            );
        }
    }

    #[test]
    fn every_length_up_to_300_matches_sha2() {
        let data = pseudo_random(300, 1);
        let other = pseudo_random(300, 2);
        for length in 0..=300 {
            let message = &data[..length];
            assert_eq!(digest(message), reference(message), "length {length}");
            // Paired with messages of every relation: equal length, shorter, longer.
            for other_length in [length, length / 2, 300 - length] {
                let second = &other[..other_length];
                let (a, b) = digest_pair(message, second);
                assert_eq!(a, reference(message), "length {length} paired");
                assert_eq!(b, reference(second), "length {other_length} paired");
            }
        }
    }

    #[test]
    fn megabytes_in_uneven_updates_match_sha2() {
        let data = pseudo_random(3 << 20, 3);
        let mut blanked = data.clone();
        blanked[40_000..40_512].fill(b' ');
        // Two views of one stream, fed in steps that split blocks everywhere.
        let (mut a, mut b) = (Sha256::new(), Sha256::new());
        let mut at = 0usize;
        let mut step = 1usize;
        while at < data.len() {
            let end = (at + step).min(data.len());
            update_pair(&mut a, &data[at..end], &mut b, &blanked[at..end]);
            at = end;
            step = step * 7 % 1_000_003 + 13;
        }
        assert_eq!(a.finalize(), reference(&data));
        assert_eq!(b.finalize(), reference(&blanked));
        // Two hashers at different offsets.
        let (mut a, mut b) = (Sha256::new(), Sha256::new());
        a.update(&data[..5]);
        update_pair(&mut a, &data[5..], &mut b, &data[..2_000_001]);
        assert_eq!(a.finalize(), reference(&data));
        assert_eq!(b.finalize(), reference(&data[..2_000_001]));
    }

    #[test]
    fn one_message_into_two_chains_matches_sha2() {
        // The same bytes after different prefixes (an image and its blanked view past the
        // blanked area): the shared-schedule kernel, in steps that split blocks everywhere.
        let data = pseudo_random(2 << 20, 9);
        let (prefix_a, prefix_b) = (pseudo_random(128, 10), pseudo_random(128, 11));
        let (mut a, mut b) = (Sha256::new(), Sha256::new());
        a.update(&prefix_a);
        b.update(&prefix_b);
        let mut at = 0usize;
        let mut step = 1usize;
        while at < data.len() {
            let end = (at + step).min(data.len());
            update_pair(&mut a, &data[at..end], &mut b, &data[at..end]);
            at = end;
            step = step * 5 % 700_001 + 61;
        }
        let with = |prefix: &[u8]| {
            let mut message = prefix.to_vec();
            message.extend_from_slice(&data);
            reference(&message)
        };
        assert_eq!(a.finalize(), with(&prefix_a));
        assert_eq!(b.finalize(), with(&prefix_b));
        // The kernel itself against the portable path.
        let (mut sa, mut sb) = (H0, H0);
        portable(&mut sb, &prefix_b);
        let mut expected_b = sb;
        compress2(&mut sa, &data[..4096], &mut sb, &data[..4096]);
        let mut expected_a = H0;
        portable(&mut expected_a, &data[..4096]);
        portable(&mut expected_b, &data[..4096]);
        assert_eq!((sa, sb), (expected_a, expected_b));
    }

    #[test]
    fn digest_many_matches_sha2_for_mixed_lengths() {
        let data = pseudo_random(6 << 20, 4);
        let lengths = [1 << 20, 300_001, 0, 2 << 20, 64, 65, 777_777, 1, 1 << 20];
        let mut messages = Vec::new();
        let mut at = 0usize;
        for length in lengths {
            messages.push(&data[at..at + length]);
            at += length;
        }
        let digests = digest_many(&messages);
        assert_eq!(digests.len(), messages.len());
        for (message, digest) in messages.iter().zip(&digests) {
            assert_eq!(*digest, reference(message), "{} bytes", message.len());
        }
        assert!(digest_many(&[]).is_empty());
        assert_eq!(digest_many(&[b"abc"]), vec![reference(b"abc")]);
    }

    #[test]
    fn the_portable_path_matches_the_accelerated_one() {
        let data = pseudo_random(10_000, 5);
        let whole = data.len() - data.len() % BLOCK_BYTES;
        let mut portable_state = H0;
        portable(&mut portable_state, &data[..whole]);
        let mut state = H0;
        compress1(&mut state, &data[..whole]);
        assert_eq!(state, portable_state);
        let other = pseudo_random(whole, 6);
        let (mut a, mut b) = (H0, H0);
        compress2(&mut a, &data[..whole], &mut b, &other);
        let mut portable_other = H0;
        portable(&mut portable_other, &other);
        assert_eq!((a, b), (portable_state, portable_other));
    }

    #[test]
    #[ignore]
    fn throughput() {
        // Thread CPU time: the machine is shared, wall time says little.
        let cpu = || {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            let ns: f64 = stat.split_whitespace().next().unwrap().parse().unwrap();
            ns / 1e9
        };
        let data = pseudo_random(256 << 20, 7);
        let t = cpu();
        let r = reference(&data);
        let sha2_time = cpu() - t;
        let t = cpu();
        let one = digest(&data);
        let one_time = cpu() - t;
        let half = data.len() / 2;
        let t = cpu();
        let (a, b) = digest_pair(&data[..half], &data[half..]);
        let pair_time = cpu() - t;
        assert_eq!(one, r);
        assert_eq!(a, reference(&data[..half]));
        assert_eq!(b, reference(&data[half..]));
        let small = pseudo_random(64 << 10, 8);
        let t = cpu();
        let mut st = H0;
        for _ in 0..4096 {
            compress1(&mut st, &small);
        }
        let c1 = cpu() - t;
        let t = cpu();
        let (mut sa, mut sb) = (H0, H0);
        for _ in 0..2048 {
            compress2(&mut sa, &small, &mut sb, &small);
        }
        let c2 = cpu() - t;
        let other = pseudo_random(64 << 10, 9);
        let t = cpu();
        for _ in 0..2048 {
            compress2(&mut sa, &small, &mut sb, &other);
        }
        let c2_two = cpu() - t;
        eprintln!(
            "in cache 256 MiB: compress1 {c1:.3}, compress2 of one message {c2:.3}, of two \
             {c2_two:.3} {:?}",
            (st[0], sa[0])
        );
        eprintln!("256 MiB, CPU s: sha2 {sha2_time:.3} one {one_time:.3} pair {pair_time:.3}");
    }
}

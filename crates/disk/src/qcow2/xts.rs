//! AES-XTS over 512-byte sectors with the plain64/plain IVs LUKS names: the cipher of
//! LUKS-encrypted qcow2 data clusters and of LUKS key material.
//!
//! Each sector's 32 blocks are whitened with their tweaks and then enciphered in one batched
//! call, so the AES-NI backend (runtime-detected by the `aes` crate) pipelines eight blocks at a
//! time; a large buffer is split over the rayon pool so both cores work.

use aes::cipher::generic_array::typenum::U16;
use aes::cipher::inout::InOutBuf;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use rayon::prelude::*;

/// The sector size LUKS encrypts in (the IV counts these).
pub const SECTOR: usize = 512;
/// Buffers at least this long are split across threads; below it thread hand-off costs more
/// than the AES work (about 20 us of AES-NI per 64 KiB).
const PARALLEL_MIN: usize = 256 << 10;
/// Bytes one thread takes at a time when a buffer is split.
const PARALLEL_CHUNK: usize = 64 << 10;

/// How a sector number becomes the tweak (LUKS "ivgen").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvGen {
    /// The 64-bit sector number, little-endian (the default of qemu and cryptsetup).
    Plain64,
    /// The sector number truncated to 32 bits (old cryptsetup volumes).
    Plain,
}

impl IvGen {
    pub fn name(self) -> &'static str {
        match self {
            IvGen::Plain64 => "plain64",
            IvGen::Plain => "plain",
        }
    }

    fn tweak(self, sector: u64) -> u128 {
        match self {
            IvGen::Plain64 => u128::from(sector),
            IvGen::Plain => u128::from(sector as u32),
        }
    }
}

#[derive(Clone)]
enum Pair {
    A128(Box<(Aes128, Aes128)>),
    A192(Box<(Aes192, Aes192)>),
    A256(Box<(Aes256, Aes256)>),
}

/// An AES-XTS key (two AES keys of equal size) with its IV generator.
#[derive(Clone)]
pub struct XtsCipher {
    pair: Pair,
    iv: IvGen,
}

impl std::fmt::Debug for XtsCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XtsCipher(aes-{}, {})", self.key_bits(), self.iv.name())
    }
}

/// Multiplies a tweak by x in GF(2^128) (the little-endian convention of IEEE 1619).
fn next_tweak(t: u128) -> u128 {
    let carry = t >> 127;
    (t << 1) ^ (carry * 0x87)
}

impl XtsCipher {
    /// `key` is the XTS key: 32, 48 or 64 bytes (AES-128, -192, -256); None for another length.
    pub fn new(key: &[u8], iv: IvGen) -> Option<XtsCipher> {
        let half = key.len() / 2;
        let (k1, k2) = key.split_at(half);
        let pair = match key.len() {
            32 => Pair::A128(Box::new((
                Aes128::new_from_slice(k1).ok()?,
                Aes128::new_from_slice(k2).ok()?,
            ))),
            48 => Pair::A192(Box::new((
                Aes192::new_from_slice(k1).ok()?,
                Aes192::new_from_slice(k2).ok()?,
            ))),
            64 => Pair::A256(Box::new((
                Aes256::new_from_slice(k1).ok()?,
                Aes256::new_from_slice(k2).ok()?,
            ))),
            _ => return None,
        };
        Some(XtsCipher { pair, iv })
    }

    /// AES key size in bits (half the XTS key).
    pub fn key_bits(&self) -> u32 {
        match self.pair {
            Pair::A128(..) => 128,
            Pair::A192(..) => 192,
            Pair::A256(..) => 256,
        }
    }

    pub fn iv(&self) -> IvGen {
        self.iv
    }

    /// Encrypts whole sectors in place; the first has number `first_sector`. A trailing
    /// partial sector is left as is (callers pass sector multiples).
    pub fn encrypt(&self, buf: &mut [u8], first_sector: u64) {
        self.apply(buf, first_sector, true);
    }

    /// Decrypts whole sectors in place; the first has number `first_sector`.
    pub fn decrypt(&self, buf: &mut [u8], first_sector: u64) {
        self.apply(buf, first_sector, false);
    }

    fn apply(&self, buf: &mut [u8], first_sector: u64, encrypt: bool) {
        if buf.len() >= PARALLEL_MIN {
            let per_chunk = (PARALLEL_CHUNK / SECTOR) as u64;
            buf.par_chunks_mut(PARALLEL_CHUNK)
                .enumerate()
                .for_each(|(i, chunk)| {
                    let sector = first_sector.wrapping_add(i as u64 * per_chunk);
                    self.apply_serial(chunk, sector, encrypt);
                });
        } else {
            self.apply_serial(buf, first_sector, encrypt);
        }
    }

    fn apply_serial(&self, buf: &mut [u8], first_sector: u64, encrypt: bool) {
        for (i, sector) in buf.chunks_exact_mut(SECTOR).enumerate() {
            let number = first_sector.wrapping_add(i as u64);
            match &self.pair {
                Pair::A128(k) => sector_op(&k.0, &k.1, sector, self.iv.tweak(number), encrypt),
                Pair::A192(k) => sector_op(&k.0, &k.1, sector, self.iv.tweak(number), encrypt),
                Pair::A256(k) => sector_op(&k.0, &k.1, sector, self.iv.tweak(number), encrypt),
            }
        }
    }
}

/// One 512-byte sector: T = E_k2(iv); each block is whitened with T*x^j, enciphered with k1
/// and whitened again.
fn sector_op<C>(k1: &C, k2: &C, sector: &mut [u8], iv: u128, encrypt: bool)
where
    C: BlockEncrypt + BlockDecrypt + aes::cipher::BlockSizeUser<BlockSize = U16>,
{
    let mut t = iv.to_le_bytes().into();
    k2.encrypt_block(&mut t);
    let mut tweak = u128::from_le_bytes(t.into());
    let mut tweaks = [0u128; SECTOR / 16];
    for (slot, block) in tweaks.iter_mut().zip(sector.chunks_exact_mut(16)) {
        *slot = tweak;
        xor_block(block, tweak);
        tweak = next_tweak(tweak);
    }
    let io: InOutBuf<'_, '_, u8> = sector.into();
    let (blocks, _tail) = io.into_chunks::<U16>();
    if encrypt {
        k1.encrypt_blocks_inout(blocks);
    } else {
        k1.decrypt_blocks_inout(blocks);
    }
    for (slot, block) in tweaks.iter().zip(sector.chunks_exact_mut(16)) {
        xor_block(block, *slot);
    }
}

fn xor_block(block: &mut [u8], tweak: u128) {
    let mut b = [0u8; 16];
    b.copy_from_slice(block);
    let v = u128::from_le_bytes(b) ^ tweak;
    block.copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batched implementation agrees with the xts-mode crate's per-block one.
    #[test]
    fn xts_matches_the_reference_crate() {
        let key: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        let plain: Vec<u8> = (0..4 * SECTOR).map(|i| (i * 7 % 251) as u8).collect();
        let mut ours = plain.clone();
        let c = XtsCipher::new(&key, IvGen::Plain64).unwrap();
        c.encrypt(&mut ours, 1 << 40);
        let reference = xts_mode::Xts128::new(
            Aes256::new_from_slice(&key[..32]).unwrap(),
            Aes256::new_from_slice(&key[32..]).unwrap(),
        );
        let mut theirs = plain.clone();
        reference.encrypt_area(&mut theirs, SECTOR, 1 << 40, xts_mode::get_tweak_default);
        assert_eq!(ours, theirs);
        c.decrypt(&mut ours, 1 << 40);
        assert_eq!(ours, plain);
    }

    #[test]
    fn parallel_and_serial_agree() {
        let key = [7u8; 32];
        let c = XtsCipher::new(&key, IvGen::Plain64).unwrap();
        let plain: Vec<u8> = (0..PARALLEL_MIN * 2).map(|i| (i % 253) as u8).collect();
        let mut a = plain.clone();
        c.encrypt(&mut a, 5);
        let mut b = plain.clone();
        c.apply_serial(&mut b, 5, true);
        assert_eq!(a, b);
        assert_ne!(a, plain);
    }

    #[test]
    fn odd_key_lengths_are_refused() {
        assert!(XtsCipher::new(&[0u8; 40], IvGen::Plain64).is_none());
        assert!(XtsCipher::new(&[0u8; 48], IvGen::Plain).is_some());
    }
}

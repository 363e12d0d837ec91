//! LUKS1 headers as qcow2 stores them (crypt_method 2, the full-disk-encryption header
//! extension pointing at a region of clusters): parse with every field bounded, unlock a key
//! slot with a passphrase (PBKDF2, anti-forensic merge, master key digest check), and lay out
//! a new header with one active slot as `qemu-img create -o encrypt.format=luks` does.
//!
//! All LUKS fields are big-endian. Key slot offsets count 512-byte sectors from the start of the
//! region; the data clusters of the qcow2 image are encrypted with the master key, the sector
//! number being the host offset divided by 512.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::Digest;
use vmedia_io::bytes::Fields;

use super::xts::{IvGen, XtsCipher, SECTOR};
use crate::error::{DiskError, Result};

pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Bytes of the LUKS1 partition header (fixed part plus 8 key slots).
pub const PHDR_LEN: usize = 592;
/// Key slots in a LUKS1 header (fixed by the format).
pub const NUM_SLOTS: usize = 8;
const SLOT_ACTIVE: u32 = 0x00AC_71F3;
const SLOT_INACTIVE: u32 = 0x0000_DEAD;
/// Length of the master key digest and of every salt (fixed by the format).
const DIGEST_LEN: usize = 20;
const SALT_LEN: usize = 32;
/// Stripes of the anti-forensic split that qemu and cryptsetup write.
pub const STRIPES: u32 = 4000;
/// Most stripes accepted: 4x what every LUKS1 tool writes, so one slot's key material stays
/// under 4 MiB whatever a hostile header says.
pub const MAX_STRIPES: u32 = 16_000;
/// Most PBKDF2 iterations accepted per slot or digest: about half a minute of one fast core,
/// so a hostile header cannot make an open run for hours.
pub const MAX_ITERATIONS: u32 = 50_000_000;
/// Fewest iterations a new header gets (qemu's and cryptsetup's floor).
const MIN_ITERATIONS: u32 = 1000;
/// Largest master key (AES-256 in XTS mode needs two 256-bit keys).
pub const MAX_KEY_BYTES: u32 = 64;
/// Largest encryption header region read from a qcow2 image: 8 slots of the largest key
/// material plus the header, rounded up generously.
pub const MAX_REGION_LEN: u64 = 64 << 20;
/// Where the first key slot's material starts (bytes), and the alignment of every slot.
const KEY_SLOT_OFFSET: u64 = 4096;
/// qemu's default PBKDF2 time for the passphrase slot (ms).
pub const DEFAULT_ITER_TIME_MS: u64 = 2000;
/// Longest `encrypt.iter-time` accepted (ms): one minute.
const MAX_ITER_TIME_MS: u64 = 60_000;

/// The hashes LUKS1 names for PBKDF2 and the anti-forensic diffusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub fn from_name(name: &str) -> Option<HashAlg> {
        Some(match name {
            "sha1" => HashAlg::Sha1,
            "sha224" => HashAlg::Sha224,
            "sha256" => HashAlg::Sha256,
            "sha384" => HashAlg::Sha384,
            "sha512" => HashAlg::Sha512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    fn digest(self, prefix: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(prefix: &[u8], data: &[u8]) -> Vec<u8> {
            let mut h = D::new();
            h.update(prefix);
            h.update(data);
            h.finalize().to_vec()
        }
        match self {
            HashAlg::Sha1 => run::<sha1::Sha1>(prefix, data),
            HashAlg::Sha224 => run::<sha2::Sha224>(prefix, data),
            HashAlg::Sha256 => run::<sha2::Sha256>(prefix, data),
            HashAlg::Sha384 => run::<sha2::Sha384>(prefix, data),
            HashAlg::Sha512 => run::<sha2::Sha512>(prefix, data),
        }
    }

    fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        match self {
            HashAlg::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, out),
            HashAlg::Sha224 => pbkdf2::pbkdf2_hmac::<sha2::Sha224>(password, salt, iterations, out),
            HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
            HashAlg::Sha384 => pbkdf2::pbkdf2_hmac::<sha2::Sha384>(password, salt, iterations, out),
            HashAlg::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
        }
    }
}

/// One key slot of the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    pub active: bool,
    pub iterations: u32,
    pub salt: [u8; SALT_LEN],
    /// Start of the slot's key material, in sectors from the start of the region.
    pub key_offset: u32,
    pub stripes: u32,
}

/// A parsed LUKS1 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksHeader {
    /// Cipher spec as stored ("aes") and mode ("xts-plain64").
    pub cipher_name: String,
    pub cipher_mode: String,
    pub hash: HashAlg,
    pub iv: IvGen,
    /// Payload offset in sectors (unused by qcow2, whose data lives in clusters; reported).
    pub payload_offset: u32,
    pub key_bytes: u32,
    pub mk_digest: [u8; DIGEST_LEN],
    pub mk_salt: [u8; SALT_LEN],
    pub mk_iterations: u32,
    pub uuid: String,
    pub slots: Vec<KeySlot>,
}

/// A NUL-padded text field.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn put_text(out: &mut [u8], at: usize, len: usize, value: &str) {
    let n = value.len().min(len - 1);
    out[at..at + n].copy_from_slice(&value.as_bytes()[..n]);
}

impl LuksHeader {
    /// Parses the header at the start of `region` (the encryption header region of `path`,
    /// which starts at `region_offset` in the file and is `region_len` bytes long as the
    /// qcow2 extension says). Every slot's key material must lie inside the region.
    pub fn parse(
        path: &Path,
        region_offset: u64,
        region: &[u8],
        region_len: u64,
    ) -> Result<LuksHeader> {
        let corrupt = |at: usize, field: &'static str, reason: String| {
            DiskError::corrupt(path, "qcow2 LUKS", region_offset + at as u64, field, reason)
        };
        let Some(f) = Fields::new_checked(region, PHDR_LEN) else {
            return Err(corrupt(
                0,
                "LUKS header",
                format!("{} bytes, needs {PHDR_LEN}", region.len()),
            ));
        };
        if f.slice(0, 6) != MAGIC {
            return Err(corrupt(0, "LUKS magic", "not LUKS\\xba\\xbe".into()));
        }
        let version = f.be16(6);
        if version != 1 {
            return Err(DiskError::Unsupported {
                path: path.into(),
                format: "qcow2",
                feature: format!("LUKS version {version} (only LUKS1 is used in qcow2)"),
            });
        }
        let cipher_name = text(f.slice(8, 32));
        let cipher_mode = text(f.slice(40, 32));
        let hash_spec = text(f.slice(72, 32));
        let payload_offset = f.be32(104);
        let key_bytes = f.be32(108);
        let unsupported = |feature: String| DiskError::Unsupported {
            path: path.into(),
            format: "qcow2",
            feature,
        };
        let hash = HashAlg::from_name(&hash_spec)
            .ok_or_else(|| unsupported(format!("LUKS hash {hash_spec:?}")))?;
        if cipher_name != "aes" {
            return Err(unsupported(format!(
                "LUKS cipher {cipher_name:?} (vmedia reads aes)"
            )));
        }
        let iv = match cipher_mode.as_str() {
            "xts-plain64" => IvGen::Plain64,
            "xts-plain" => IvGen::Plain,
            other => {
                return Err(unsupported(format!(
                    "LUKS cipher mode {other:?} (vmedia reads xts-plain64 and xts-plain)"
                )))
            }
        };
        if !matches!(key_bytes, 32 | 48 | 64) {
            return Err(corrupt(
                108,
                "key_bytes",
                format!("{key_bytes} is not an AES-XTS key size (32, 48 or 64)"),
            ));
        }
        let mut mk_digest = [0u8; DIGEST_LEN];
        mk_digest.copy_from_slice(f.slice(112, DIGEST_LEN));
        let mut mk_salt = [0u8; SALT_LEN];
        mk_salt.copy_from_slice(f.slice(132, SALT_LEN));
        let mk_iterations = f.be32(164);
        check_iterations(
            path,
            region_offset + 164,
            "master key iterations",
            mk_iterations,
        )?;
        let uuid = text(f.slice(168, 40));
        let mut slots = Vec::with_capacity(NUM_SLOTS);
        for i in 0..NUM_SLOTS {
            let at = 208 + i * 48;
            let state = f.be32(at);
            let active = match state {
                SLOT_ACTIVE => true,
                SLOT_INACTIVE => false,
                other => {
                    return Err(corrupt(
                        at,
                        "key slot state",
                        format!("slot {i}: {other:#x} is neither active nor inactive"),
                    ))
                }
            };
            let mut salt = [0u8; SALT_LEN];
            salt.copy_from_slice(f.slice(at + 8, SALT_LEN));
            let slot = KeySlot {
                active,
                iterations: f.be32(at + 4),
                salt,
                key_offset: f.be32(at + 40),
                stripes: f.be32(at + 44),
            };
            if active {
                check_iterations(
                    path,
                    region_offset + at as u64 + 4,
                    "slot iterations",
                    slot.iterations,
                )?;
                if slot.stripes == 0 || slot.stripes > MAX_STRIPES {
                    return Err(DiskError::Limit {
                        path: path.into(),
                        offset: region_offset + at as u64 + 44,
                        field: "stripes",
                        value: u64::from(slot.stripes),
                        limit: u64::from(MAX_STRIPES),
                        why: "bounds the key material read per slot",
                    });
                }
                let (start, len) = slot.material_range(key_bytes);
                if start < PHDR_LEN as u64 || start.checked_add(len).is_none_or(|e| e > region_len)
                {
                    return Err(corrupt(
                        at + 40,
                        "key material offset",
                        format!("slot {i}: {start:#x}+{len:#x} is outside the header region ({region_len:#x} bytes)"),
                    ));
                }
            }
            slots.push(slot);
        }
        if !slots.iter().any(|s| s.active) {
            return Err(corrupt(208, "key slots", "no active key slot".into()));
        }
        Ok(LuksHeader {
            cipher_name,
            cipher_mode,
            hash,
            iv,
            payload_offset,
            key_bytes,
            mk_digest,
            mk_salt,
            mk_iterations,
            uuid,
            slots,
        })
    }

    /// The 592 header bytes.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = vec![0u8; PHDR_LEN];
        out[..6].copy_from_slice(&MAGIC);
        out[6..8].copy_from_slice(&1u16.to_be_bytes());
        put_text(&mut out, 8, 32, &self.cipher_name);
        put_text(&mut out, 40, 32, &self.cipher_mode);
        put_text(&mut out, 72, 32, self.hash.name());
        out[104..108].copy_from_slice(&self.payload_offset.to_be_bytes());
        out[108..112].copy_from_slice(&self.key_bytes.to_be_bytes());
        out[112..132].copy_from_slice(&self.mk_digest);
        out[132..164].copy_from_slice(&self.mk_salt);
        out[164..168].copy_from_slice(&self.mk_iterations.to_be_bytes());
        put_text(&mut out, 168, 40, &self.uuid);
        for (i, s) in self.slots.iter().enumerate().take(NUM_SLOTS) {
            let at = 208 + i * 48;
            let state = if s.active { SLOT_ACTIVE } else { SLOT_INACTIVE };
            out[at..at + 4].copy_from_slice(&state.to_be_bytes());
            out[at + 4..at + 8].copy_from_slice(&s.iterations.to_be_bytes());
            out[at + 8..at + 40].copy_from_slice(&s.salt);
            out[at + 40..at + 44].copy_from_slice(&s.key_offset.to_be_bytes());
            out[at + 44..at + 48].copy_from_slice(&s.stripes.to_be_bytes());
        }
        out
    }

    /// Tries `secret` on every active slot; the master key data cipher when one opens, None
    /// when none does (a wrong passphrase).
    pub fn unlock(&self, region: &[u8], secret: &[u8]) -> Option<XtsCipher> {
        let key_len = self.key_bytes as usize;
        for slot in self.slots.iter().filter(|s| s.active) {
            let (start, len) = slot.material_range(self.key_bytes);
            let (Ok(start), Ok(len)) = (usize::try_from(start), usize::try_from(len)) else {
                continue;
            };
            let Some(stored) = region.get(start..start.saturating_add(len)) else {
                continue;
            };
            let mut slot_key = vec![0u8; key_len];
            self.hash
                .pbkdf2(secret, &slot.salt, slot.iterations, &mut slot_key);
            let cipher = XtsCipher::new(&slot_key, self.iv)?;
            let mut material = stored.to_vec();
            cipher.decrypt(&mut material, 0);
            let used = key_len * slot.stripes as usize;
            let master = af_merge(self.hash, &material[..used], key_len, slot.stripes as usize);
            if self.digest_matches(&master) {
                return XtsCipher::new(&master, self.iv);
            }
        }
        None
    }

    fn digest_matches(&self, master: &[u8]) -> bool {
        let mut digest = [0u8; DIGEST_LEN];
        self.hash
            .pbkdf2(master, &self.mk_salt, self.mk_iterations, &mut digest);
        // Not secret-dependent in a way that matters here (the digest is public), but compare
        // every byte anyway.
        digest
            .iter()
            .zip(self.mk_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// `qemu-img info`'s "encrypt" object for this header.
    pub fn format_specific(&self) -> serde_json::Value {
        let slots: Vec<serde_json::Value> = self
            .slots
            .iter()
            .map(|s| {
                let offset = u64::from(s.key_offset) * SECTOR as u64;
                if s.active {
                    serde_json::json!({"active": true, "iters": s.iterations, "key-offset": offset, "stripes": s.stripes})
                } else {
                    serde_json::json!({"active": false, "key-offset": offset})
                }
            })
            .collect();
        serde_json::json!({
            "ivgen-alg": self.iv.name(),
            "hash-alg": self.hash.name(),
            "cipher-alg": format!("{}-{}", self.cipher_name, self.key_bytes * 4),
            "uuid": self.uuid,
            "format": "luks",
            "cipher-mode": self.cipher_mode.split('-').next().unwrap_or("xts"),
            "slots": slots,
            "payload-offset": u64::from(self.payload_offset) * SECTOR as u64,
            "master-key-iters": self.mk_iterations,
        })
    }
}

impl KeySlot {
    /// Byte range of the slot's key material in the region, rounded up to whole sectors
    /// (the material is encrypted sector by sector).
    fn material_range(&self, key_bytes: u32) -> (u64, u64) {
        let start = u64::from(self.key_offset) * SECTOR as u64;
        let len = (u64::from(key_bytes) * u64::from(self.stripes)).div_ceil(SECTOR as u64)
            * SECTOR as u64;
        (start, len)
    }
}

fn check_iterations(path: &Path, offset: u64, field: &'static str, value: u32) -> Result<()> {
    if value == 0 {
        return Err(DiskError::corrupt(
            path,
            "qcow2 LUKS",
            offset,
            field,
            "0".to_string(),
        ));
    }
    if value > MAX_ITERATIONS {
        return Err(DiskError::Limit {
            path: path.into(),
            offset,
            field,
            value: u64::from(value),
            limit: u64::from(MAX_ITERATIONS),
            why: "bounds the time an open spends in PBKDF2",
        });
    }
    Ok(())
}

/// LUKS's diffusion: each digest-sized piece is replaced by H(piece index, piece).
fn diffuse(hash: HashAlg, data: &mut [u8]) {
    let len = hash.digest(&[], &[]).len();
    for (i, piece) in data.chunks_mut(len).enumerate() {
        let h = hash.digest(&(i as u32).to_be_bytes(), piece);
        let n = piece.len();
        piece.copy_from_slice(&h[..n]);
    }
}

/// Recovers the key from `stripes` stripes of `key_len` bytes.
fn af_merge(hash: HashAlg, material: &[u8], key_len: usize, stripes: usize) -> Vec<u8> {
    let mut d = vec![0u8; key_len];
    for (i, stripe) in material.chunks_exact(key_len).take(stripes).enumerate() {
        for (a, b) in d.iter_mut().zip(stripe) {
            *a ^= b;
        }
        if i + 1 < stripes {
            diffuse(hash, &mut d);
        }
    }
    d
}

/// Splits `key` into `stripes` stripes: all but the last random, the last chosen so that the
/// merge gives the key back.
fn af_split(hash: HashAlg, key: &[u8], stripes: usize) -> Result<Vec<u8>> {
    let mut out = random_bytes(key.len() * stripes)?;
    let mut d = vec![0u8; key.len()];
    let (head, last) = out.split_at_mut(key.len() * (stripes - 1));
    for stripe in head.chunks_exact(key.len()) {
        for (a, b) in d.iter_mut().zip(stripe) {
            *a ^= b;
        }
        diffuse(hash, &mut d);
    }
    for ((l, a), k) in last.iter_mut().zip(&d).zip(key) {
        *l = a ^ k;
    }
    Ok(out)
}

/// Random bytes from the kernel.
fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .map_err(|e| DiskError::io("/dev/urandom", 0, e))?;
    Ok(out)
}

/// The `-o encrypt.*` choices for a new header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuksParams {
    pub key_bytes: u32,
    pub iv: IvGen,
    pub hash: HashAlg,
    pub iter_time_ms: u64,
}

impl Default for LuksParams {
    /// qemu-img's defaults: aes-256 xts plain64, sha256, 2 s of PBKDF2.
    fn default() -> Self {
        LuksParams {
            key_bytes: 64,
            iv: IvGen::Plain64,
            hash: HashAlg::Sha256,
            iter_time_ms: DEFAULT_ITER_TIME_MS,
        }
    }
}

/// The `-o` keys of the LUKS encryption, as qemu-img names them.
pub const OPTION_KEYS: &[&str] = &[
    "encrypt.format",
    "encrypt.key-secret",
    "encrypt.cipher-alg",
    "encrypt.cipher-mode",
    "encrypt.ivgen-alg",
    "encrypt.hash-alg",
    "encrypt.iter-time",
];

fn invalid(key: &str, value: &str, reason: &str) -> DiskError {
    DiskError::InvalidOption {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

impl LuksParams {
    /// Reads the `encrypt.*` options; None when the image is not to be encrypted.
    pub fn from_options(
        o: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<LuksParams>> {
        match o.get("encrypt.format").map(String::as_str) {
            None => {
                if let Some(key) = o.keys().find(|k| k.starts_with("encrypt.")) {
                    return Err(invalid(key, &o[key], "needs encrypt.format=luks"));
                }
                return Ok(None);
            }
            Some("luks") => {}
            Some(other) => {
                return Err(invalid(
                    "encrypt.format",
                    other,
                    "vmedia writes luks (the legacy aes format is insecure and refused by qemu)",
                ))
            }
        }
        let mut p = LuksParams::default();
        if let Some(v) = o.get("encrypt.cipher-alg") {
            p.key_bytes = match v.as_str() {
                "aes-128" => 32,
                "aes-192" => 48,
                "aes-256" => 64,
                _ => {
                    return Err(invalid(
                        "encrypt.cipher-alg",
                        v,
                        "expected aes-128, aes-192 or aes-256",
                    ))
                }
            };
        }
        if let Some(v) = o.get("encrypt.cipher-mode") {
            if v != "xts" {
                return Err(invalid("encrypt.cipher-mode", v, "vmedia writes xts"));
            }
        }
        if let Some(v) = o.get("encrypt.ivgen-alg") {
            p.iv = match v.as_str() {
                "plain64" => IvGen::Plain64,
                "plain" => IvGen::Plain,
                _ => return Err(invalid("encrypt.ivgen-alg", v, "expected plain64 or plain")),
            };
        }
        if let Some(v) = o.get("encrypt.hash-alg") {
            p.hash = HashAlg::from_name(v).ok_or_else(|| {
                invalid(
                    "encrypt.hash-alg",
                    v,
                    "expected sha1, sha224, sha256, sha384 or sha512",
                )
            })?;
        }
        if let Some(v) = o.get("encrypt.iter-time") {
            p.iter_time_ms = v
                .parse()
                .ok()
                .filter(|&ms| (1..=MAX_ITER_TIME_MS).contains(&ms))
                .ok_or_else(|| invalid("encrypt.iter-time", v, "milliseconds, 1 to 60000"))?;
        }
        Ok(Some(p))
    }
}

/// PBKDF2 iterations this machine does per second with `hash` (timed over at least 20 ms).
fn iterations_per_second(hash: HashAlg, key_len: usize) -> u64 {
    let mut out = vec![0u8; key_len];
    let mut iterations: u32 = 1000;
    loop {
        let start = Instant::now();
        hash.pbkdf2(b"vmedia-benchmark", &[0u8; SALT_LEN], iterations, &mut out);
        let spent = start.elapsed();
        if spent >= Duration::from_millis(20) || iterations >= 1 << 26 {
            let nanos = spent.as_nanos().max(1);
            return u64::try_from(u128::from(iterations) * 1_000_000_000 / nanos)
                .unwrap_or(u64::MAX);
        }
        iterations = iterations.saturating_mul(4);
    }
}

fn clamp_iterations(v: u64) -> u32 {
    v.clamp(u64::from(MIN_ITERATIONS), u64::from(MAX_ITERATIONS)) as u32
}

/// Bytes of the header region a new header with `key_bytes`-byte keys takes (qemu's layout:
/// the header sector block, then 8 slots of 4000 stripes each aligned to 4 KiB).
pub fn region_len(key_bytes: u32) -> u64 {
    let split_len = u64::from(key_bytes) * u64::from(STRIPES);
    KEY_SLOT_OFFSET + NUM_SLOTS as u64 * split_len.div_ceil(KEY_SLOT_OFFSET) * KEY_SLOT_OFFSET
}

/// A new header with `secret` in slot 0: the header region bytes (header and every slot's
/// material; its length is the payload offset) and the data cipher.
pub fn create(params: &LuksParams, secret: &[u8]) -> Result<(LuksHeader, Vec<u8>, XtsCipher)> {
    let key_len = params.key_bytes as usize;
    let master = random_bytes(key_len)?;
    let rate = iterations_per_second(params.hash, key_len);
    let slot_iters = clamp_iterations(rate.saturating_mul(params.iter_time_ms) / 1000);
    // A digest check costs an eighth of a slot, as qemu and cryptsetup choose.
    let mk_iters = clamp_iterations(rate.saturating_mul(params.iter_time_ms) / 1000 / 8);
    let split_len = key_len as u64 * u64::from(STRIPES);
    let slot_span = split_len.div_ceil(KEY_SLOT_OFFSET) * KEY_SLOT_OFFSET;
    let salts = random_bytes(SALT_LEN * 2)?;
    let mut mk_salt = [0u8; SALT_LEN];
    mk_salt.copy_from_slice(&salts[..SALT_LEN]);
    let mut slot_salt = [0u8; SALT_LEN];
    slot_salt.copy_from_slice(&salts[SALT_LEN..]);
    let mut slots = Vec::with_capacity(NUM_SLOTS);
    for i in 0..NUM_SLOTS as u64 {
        let offset = (KEY_SLOT_OFFSET + i * slot_span) / SECTOR as u64;
        slots.push(KeySlot {
            active: i == 0,
            iterations: if i == 0 { slot_iters } else { 0 },
            salt: if i == 0 { slot_salt } else { [0u8; SALT_LEN] },
            key_offset: offset as u32,
            stripes: STRIPES,
        });
    }
    let region_len = region_len(params.key_bytes);
    let mut header = LuksHeader {
        cipher_name: "aes".into(),
        cipher_mode: format!("xts-{}", params.iv.name()),
        hash: params.hash,
        iv: params.iv,
        payload_offset: (region_len / SECTOR as u64) as u32,
        key_bytes: params.key_bytes,
        mk_digest: [0u8; DIGEST_LEN],
        mk_salt,
        mk_iterations: mk_iters,
        uuid: uuid::Uuid::new_v4().to_string(),
        slots,
    };
    params
        .hash
        .pbkdf2(&master, &header.mk_salt, mk_iters, &mut header.mk_digest);
    let mut region = vec![0u8; region_len as usize];
    region[..PHDR_LEN].copy_from_slice(&header.emit());
    let mut slot_key = vec![0u8; key_len];
    params
        .hash
        .pbkdf2(secret, &slot_salt, slot_iters, &mut slot_key);
    let slot_cipher = XtsCipher::new(&slot_key, params.iv)
        .ok_or_else(|| invalid("encrypt.cipher-alg", "", "unsupported key size"))?;
    let mut material = af_split(params.hash, &master, STRIPES as usize)?;
    material.resize(split_len.div_ceil(SECTOR as u64) as usize * SECTOR, 0);
    slot_cipher.encrypt(&mut material, 0);
    let start = KEY_SLOT_OFFSET as usize;
    region[start..start + material.len()].copy_from_slice(&material);
    let cipher = XtsCipher::new(&master, params.iv)
        .ok_or_else(|| invalid("encrypt.cipher-alg", "", "unsupported key size"))?;
    Ok((header, region, cipher))
}

/// The encryption of an open qcow2 image: its LUKS header and, once unlocked, the data cipher.
#[derive(Debug, Clone)]
pub struct Encryption {
    pub header: LuksHeader,
    pub cipher: Option<XtsCipher>,
}

impl Encryption {
    /// Reads and parses the LUKS region of `path` and unlocks it with the first of `secrets`
    /// that opens a slot. No secrets: the header only (info works, data reads are refused).
    /// Secrets of which none opens a slot: an error naming the wrong passphrase.
    pub fn open(
        path: &Path,
        source: &dyn vmedia_io::ReadAt,
        offset: u64,
        len: u64,
        secrets: &[crate::image::Secret],
    ) -> Result<Encryption> {
        let region_len = usize::try_from(len.min(MAX_REGION_LEN)).unwrap_or(0);
        let mut region = vec![0u8; region_len];
        source
            .read_exact_at(&mut region, offset)
            .map_err(|e| DiskError::io(path, offset, e))?;
        let header = LuksHeader::parse(path, offset, &region, len)?;
        if secrets.is_empty() {
            return Ok(Encryption {
                header,
                cipher: None,
            });
        }
        for secret in secrets {
            if let Some(cipher) = header.unlock(&region, secret.bytes()) {
                return Ok(Encryption {
                    header,
                    cipher: Some(cipher),
                });
            }
        }
        let ids: Vec<&str> = secrets.iter().map(|s| s.id.as_str()).collect();
        Err(DiskError::Secret {
            path: path.into(),
            reason: format!(
                "wrong passphrase: the secret{} {} open{} none of the LUKS key slots",
                if ids.len() == 1 { "" } else { "s" },
                ids.join(", "),
                if ids.len() == 1 { "s" } else { "" }
            ),
        })
    }

    /// The data cipher, or the error a read of a locked image gives.
    pub fn cipher(&self, path: &Path) -> Result<&XtsCipher> {
        self.cipher.as_ref().ok_or_else(|| DiskError::Secret {
            path: path.into(),
            reason: "is encrypted (LUKS): its data needs the passphrase (--object secret,id=ID,file=F or data=..., --secret-file F, or the prompt on a terminal)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> LuksParams {
        LuksParams {
            iter_time_ms: 1,
            ..LuksParams::default()
        }
    }

    #[test]
    fn luks_create_parse_unlock_round_trip() {
        let (header, region, cipher) = create(&quick(), b"pass").unwrap();
        let parsed = LuksHeader::parse(Path::new("x"), 0, &region, region.len() as u64).unwrap();
        assert_eq!(parsed, header);
        assert_eq!(u64::from(header.payload_offset) * 512, 2_068_480);
        let opened = parsed.unlock(&region, b"pass").expect("unlocks");
        let mut a = vec![1u8; 1024];
        let mut b = a.clone();
        cipher.encrypt(&mut a, 9);
        opened.encrypt(&mut b, 9);
        assert_eq!(a, b);
        assert!(parsed.unlock(&region, b"wrong").is_none());
    }

    #[test]
    fn af_split_merge_round_trip_for_every_hash() {
        for hash in [
            HashAlg::Sha1,
            HashAlg::Sha224,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            let key: Vec<u8> = (0..48u8).collect();
            let split = af_split(hash, &key, 37).unwrap();
            assert_eq!(af_merge(hash, &split, 48, 37), key, "{hash:?}");
        }
    }

    #[test]
    fn luks_hostile_slot_material_outside_region_is_an_error() {
        let (_, mut region, _) = create(&quick(), b"pass").unwrap();
        // Slot 0's key offset far past the region.
        region[208 + 40..208 + 44].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = LuksHeader::parse(Path::new("x"), 0, &region, region.len() as u64).unwrap_err();
        assert!(err.to_string().contains("key material offset"), "{err}");
    }

    #[test]
    fn luks_hostile_limits_are_errors() {
        let (_, region, _) = create(&quick(), b"pass").unwrap();
        let mut r = region.clone();
        r[208 + 4..208 + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = LuksHeader::parse(Path::new("x"), 0, &r, r.len() as u64).unwrap_err();
        assert!(err.to_string().contains("iterations"), "{err}");
        let mut r = region.clone();
        r[208 + 44..208 + 48].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = LuksHeader::parse(Path::new("x"), 0, &r, r.len() as u64).unwrap_err();
        assert!(err.to_string().contains("stripes"), "{err}");
        let mut r = region.clone();
        r[108..112].copy_from_slice(&40u32.to_be_bytes());
        let err = LuksHeader::parse(Path::new("x"), 0, &r, r.len() as u64).unwrap_err();
        assert!(err.to_string().contains("key_bytes"), "{err}");
        for len in [0, 6, 100, PHDR_LEN - 1] {
            assert!(LuksHeader::parse(Path::new("x"), 0, &region[..len], len as u64).is_err());
        }
    }

    /// The fuzz seeds (fuzz/corpus/luks_header): valid-* parse, bad-* are refused, none panics.
    #[test]
    fn luks_fuzz_corpus_replays() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/luks_header");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&path).unwrap();
            let ok = LuksHeader::parse(Path::new("x"), 0, &data, data.len() as u64).is_ok();
            assert_eq!(ok, name.starts_with("valid-"), "{name}");
            seen += 1;
        }
        assert!(seen >= 5);
    }
}

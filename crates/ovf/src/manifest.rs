//! The `.mf` manifest: one `ALGO(file)= hexdigest` line per file of the package, as ovftool
//! writes it, or `ALGO (file) = hexdigest` as VirtualBox and `openssl dgst` write it.

use sha1::Digest as _;

use crate::error::{OvfError, Result};

/// Largest manifest read: one line per file, a few hundred bytes each.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Most lines: one per file of the package.
pub const MAX_MANIFEST_LINES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }

    fn parse(name: &str) -> Option<Algorithm> {
        match name.to_ascii_uppercase().as_str() {
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            "SHA512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 40,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// A running digest of one of the manifest algorithms.
pub enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn hex(self) -> String {
        match self {
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub algorithm: Algorithm,
    pub file: String,
    /// Lower-case hex.
    pub digest: String,
}

/// Parses a manifest; `file` names it in errors. Blank lines are skipped.
pub fn parse(bytes: &[u8], file: &str) -> Result<Vec<Entry>> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(OvfError::Limit {
            what: file.to_string(),
            limit: "MAX_MANIFEST_BYTES",
            value: bytes.len() as u64,
            max: MAX_MANIFEST_BYTES as u64,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| OvfError::Manifest {
        file: file.to_string(),
        line: 0,
        problem: "not UTF-8".into(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |problem: &str| OvfError::Manifest {
            file: file.to_string(),
            line: i + 1,
            problem: problem.to_string(),
        };
        let open = line
            .find('(')
            .ok_or_else(|| bad("no \"(\" after the algorithm"))?;
        let close = line
            .rfind(")")
            .ok_or_else(|| bad("no \")\" after the file name"))?;
        if close <= open {
            return Err(bad("\")\" before \"(\""));
        }
        let algorithm = Algorithm::parse(line[..open].trim())
            .ok_or_else(|| bad(&format!("unknown algorithm {:?}", line[..open].trim())))?;
        let name = &line[open + 1..close];
        let rest = line[close + 1..].trim_start();
        let digest = rest
            .strip_prefix('=')
            .ok_or_else(|| bad("no \"=\" after the file name"))?
            .trim()
            .to_ascii_lowercase();
        if digest.len() != algorithm.hex_len() || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(&format!(
                "{} digest must be {} hex digits",
                algorithm.name(),
                algorithm.hex_len()
            )));
        }
        if name.is_empty() {
            return Err(bad("empty file name"));
        }
        out.push(Entry {
            algorithm,
            file: name.to_string(),
            digest,
        });
        if out.len() > MAX_MANIFEST_LINES {
            return Err(OvfError::Limit {
                what: file.to_string(),
                limit: "MAX_MANIFEST_LINES",
                value: out.len() as u64,
                max: MAX_MANIFEST_LINES as u64,
            });
        }
    }
    Ok(out)
}

/// The manifest text in ovftool's spelling.
pub fn emit(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}({})= {}\n", e.algorithm.name(), e.file, e.digest))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmware_and_virtualbox_spellings_parse() {
        let text = format!(
            "SHA256(vm.ovf)= {}\nSHA1 (vm-disk1.vmdk) = {}\n\n",
            "A".repeat(64),
            "0".repeat(40)
        );
        let m = parse(text.as_bytes(), "vm.mf").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].algorithm, Algorithm::Sha256);
        assert_eq!(m[0].digest, "a".repeat(64));
        assert_eq!(m[1].file, "vm-disk1.vmdk");
        assert_eq!(parse(emit(&m).as_bytes(), "vm.mf").unwrap(), m);
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            "SHA256(vm.ovf) abc",
            "MD5(vm.ovf)= 00",
            "SHA1(vm.ovf)= 123",
            "SHA1 vm.ovf = 0000000000000000000000000000000000000000",
            "SHA1)(= 0000000000000000000000000000000000000000",
        ] {
            assert!(parse(bad.as_bytes(), "m").is_err(), "{bad}");
        }
    }
}

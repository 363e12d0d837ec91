//! Item names and version specs (`NAME`, `NAME@N`, `NAME@sha256:PREFIX`).

use crate::error::{LibraryError, Result};

/// Longest item name: names become object keys, and S3 keys are limited to 1024 bytes.
pub const MAX_NAME_LEN: usize = 200;
/// Shortest digest prefix accepted, so that a typo does not silently pick a version.
pub const MIN_DIGEST_PREFIX: usize = 4;

/// Checks an item name: 1 to 200 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
/// The same characters are safe as an S3 key, a file name and a URL path segment.
pub fn check_name(name: &str) -> Result<()> {
    let fail = |problem: &str| {
        Err(LibraryError::InvalidName {
            name: name.to_string(),
            problem: problem.to_string(),
        })
    };
    if name.is_empty() {
        return fail("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return fail("longer than 200 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return fail("starts with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return fail("use only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Which version of an item a command means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// The current version.
    Current,
    /// `@N`.
    Number(u64),
    /// `@sha256:PREFIX` (lowercase hex).
    DigestPrefix(String),
}

/// `NAME[@N|@sha256:PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSpec {
    pub name: String,
    pub selector: VersionSelector,
}

impl VersionSpec {
    /// Parses `NAME`, `NAME@N` or `NAME@sha256:PREFIX` (at least 4 hex digits).
    pub fn parse(text: &str) -> Result<VersionSpec> {
        let fail = |problem: &str| LibraryError::InvalidSpec {
            spec: text.to_string(),
            problem: problem.to_string(),
        };
        let (name, selector) = match text.split_once('@') {
            None => (text, VersionSelector::Current),
            Some((name, rest)) => {
                let selector = if let Some(prefix) = rest.strip_prefix("sha256:") {
                    let prefix = prefix.to_ascii_lowercase();
                    if prefix.len() < MIN_DIGEST_PREFIX || prefix.len() > 64 {
                        return Err(fail("a digest prefix has 4 to 64 hex digits"));
                    }
                    if !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(fail("a digest prefix is hex digits"));
                    }
                    VersionSelector::DigestPrefix(prefix)
                } else {
                    let number: u64 = rest
                        .parse()
                        .map_err(|_| fail("the version after @ is a number or sha256:PREFIX"))?;
                    if number == 0 {
                        return Err(fail("versions are numbered from 1"));
                    }
                    VersionSelector::Number(number)
                };
                (name, selector)
            }
        };
        check_name(name)?;
        Ok(VersionSpec {
            name: name.to_string(),
            selector,
        })
    }

    /// The item alone, meaning its current version.
    pub fn current(name: &str) -> Result<VersionSpec> {
        check_name(name)?;
        Ok(VersionSpec {
            name: name.to_string(),
            selector: VersionSelector::Current,
        })
    }
}

impl std::fmt::Display for VersionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            VersionSelector::Current => write!(f, "{}", self.name),
            VersionSelector::Number(n) => write!(f, "{}@{n}", self.name),
            VersionSelector::DigestPrefix(p) => write!(f, "{}@sha256:{p}", self.name),
        }
    }
}

impl std::str::FromStr for VersionSpec {
    type Err = LibraryError;
    fn from_str(text: &str) -> Result<VersionSpec> {
        VersionSpec::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_current_number_and_digest_prefix() {
        assert_eq!(
            VersionSpec::parse("debian-12.iso").unwrap().selector,
            VersionSelector::Current
        );
        assert_eq!(
            VersionSpec::parse("a@3").unwrap().selector,
            VersionSelector::Number(3)
        );
        assert_eq!(
            VersionSpec::parse("a@sha256:3F9A").unwrap().selector,
            VersionSelector::DigestPrefix("3f9a".into())
        );
        assert_eq!(VersionSpec::parse("a@2").unwrap().to_string(), "a@2");
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "",
            "a@",
            "a@0",
            "a@x",
            "a@sha256:12",
            "a@sha256:xyz1",
            "../a",
            ".a",
            "a/b",
            "a b",
        ] {
            assert!(VersionSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}

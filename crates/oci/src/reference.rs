//! `oci://REGISTRY/REPO[:TAG|@sha256:HEX]`: where an image lives in a registry.

use crate::error::{OciError, Result};

/// The scheme vmedia's command line uses for registry references.
pub const SCHEME: &str = "oci://";

/// The longest tag the distribution specification allows.
const MAX_TAG_CHARS: usize = 128;

/// The longest repository name most registries accept (distribution's own limit).
const MAX_REPOSITORY_CHARS: usize = 255;

/// One image in one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port` as given (Docker Hub's `docker.io` is mapped in `api_host`).
    pub registry: String,
    /// `path/to/repo`, lowercase.
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    /// Parses `oci://REGISTRY/REPO:TAG` (tag `latest` when none is given) or
    /// `oci://REGISTRY/REPO@sha256:HEX`.
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |reason: &str| OciError::Reference {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not start with oci://"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("give oci://REGISTRY/REPOSITORY[:TAG]"))?;
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(bad("the registry must be HOST or HOST:PORT"));
        }
        let (repository, reference) = if let Some((repo, digest)) = path.split_once('@') {
            check_digest(digest).map_err(|reason| bad(&reason))?;
            (repo, digest.to_string())
        } else {
            // A colon after the last slash starts the tag.
            let last = path.rfind('/').map(|i| i + 1).unwrap_or(0);
            match path[last..].find(':') {
                Some(i) => (&path[..last + i], path[last + i + 1..].to_string()),
                None => (path, "latest".to_string()),
            }
        };
        check_repository(repository).map_err(|reason| bad(&reason))?;
        if !reference.starts_with("sha256:") {
            check_tag(&reference).map_err(|reason| bad(&reason))?;
        }
        let repository = if (registry == "docker.io" || registry == "index.docker.io")
            && !repository.contains('/')
        {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            reference,
        })
    }

    /// The host the distribution API answers on (Docker Hub's API is not at docker.io).
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        }
    }

    /// `REGISTRY/REPO` and `:TAG` or `@DIGEST`, as docker and skopeo print it.
    pub fn display(&self) -> String {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        format!(
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }

    /// True when the reference is a digest rather than a tag.
    pub fn is_digest(&self) -> bool {
        self.reference.starts_with("sha256:")
    }
}

/// `sha256:` and 64 lowercase hex digits: the only digest algorithm vmedia accepts.
pub fn check_digest(digest: &str) -> std::result::Result<(), String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!(
            "digest {digest:?} is not sha256:HEX (the only algorithm supported)"
        ));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {digest:?} is not 64 lowercase hexadecimal digits"
        ));
    }
    Ok(())
}

fn check_repository(repo: &str) -> std::result::Result<(), String> {
    if repo.is_empty() || repo.len() > MAX_REPOSITORY_CHARS {
        return Err(format!(
            "the repository must be 1 to {MAX_REPOSITORY_CHARS} characters"
        ));
    }
    for component in repo.split('/') {
        let ok = !component.is_empty()
            && component
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            && component.as_bytes()[0].is_ascii_alphanumeric()
            && component.as_bytes()[component.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(format!(
                "repository component {component:?}: lowercase letters, digits and . _ - between them"
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> std::result::Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_CHARS
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?}: up to {MAX_TAG_CHARS} letters, digits, . _ - (not starting with . or -)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_take_a_port_a_default_tag_and_a_digest() {
        let r = Reference::parse("oci://127.0.0.1:5000/vm/debian:12").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("127.0.0.1:5000", "vm/debian", "12")
        );
        let r = Reference::parse("oci://quay.io/containerdisks/fedora").unwrap();
        assert_eq!(r.reference, "latest");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("oci://r.example/x@{digest}")).unwrap();
        assert!(r.is_digest());
        assert_eq!(r.display(), format!("r.example/x@{digest}"));
        let r = Reference::parse("oci://docker.io/alpine:3").unwrap();
        assert_eq!(
            (r.api_host(), r.repository.as_str()),
            ("registry-1.docker.io", "library/alpine")
        );
    }

    #[test]
    fn hostile_references_are_refused() {
        for text in [
            "https://r/x:1",
            "oci://r",
            "oci:///x",
            "oci://r/X",
            "oci://r/a//b",
            "oci://r/../x",
            "oci://r/x:-t",
            "oci://r/x@sha256:short",
            "oci://r/x@md5:00",
            "oci://r@x/y",
        ] {
            assert!(Reference::parse(text).is_err(), "{text}");
        }
    }
}

//! Capabilities for restricted items on the ports that ask for no credentials (plain HTTP
//! `/images/...`, NBD). Firmware, iPXE and QEMU cannot sign in, so an item no access rule
//! limits stays anonymous there; an item a rule limits is served only to a holder of a
//! capability the daemon handed out after its own access check:
//! - HTTP: a signed, expiring URL, `/images/NAME@V?exp=UNIX&sig=HEX`, the signature being
//!   HMAC-SHA256 over `GET`, the path and the expiry with the daemon's key;
//! - NBD: an unguessable per-attachment export name, `NAME@V/cap/HOLDER/TOKEN`, the token being
//!   the first 128 bits of HMAC-SHA256 over `NBD`, the export and the holder (the system).
//!
//! A clone (`clone/NAME`) shows its base's bytes, so it is restricted when its base item is:
//! its capability is `clone/NAME/cap/NAME/TOKEN`, the token also covering the clone's base and
//! creation time, so a later clone of the same name does not open with an old token.
//!
//! The key (`STATE/media.key`, 32 random bytes, mode 0600) is made on the first start; removing
//! it (and restarting) revokes every capability handed out. Every refusal answers as a missing
//! image does and is an audit record.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use vmedia_io::{AtomicFile, OverwritePolicy};

use crate::api::access::{item_of_spec, AccessList};
use crate::audit::{AuditLog, Outcome};
use crate::auth::Principal;
use crate::clones::{CloneStore, CLONE_EXPORT_PREFIX};
use crate::export::{Export, ExportError, ExportListing, ExportResolver};

/// The key's file inside the state folder.
pub const MEDIA_KEY_FILE: &str = "media.key";
/// Key length: 256 bits, the strength of HMAC-SHA256 itself.
pub const KEY_BYTES: usize = 32;
/// How long an attachment's signed URL lasts: QEMU reads the medium for as long as the VM runs,
/// so it must outlive a long-running VM; attaching again hands out a fresh one.
pub const ATTACHMENT_URL_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Hex digits of an NBD capability token: 128 bits cannot be guessed.
const NBD_TOKEN_HEX: usize = 32;
/// What separates an export from its holder and token in an NBD capability name.
const NBD_CAP_INFIX: &str = "/cap/";
/// Longest `exp`/`sig` query a signed URL carries; anything longer is not ours.
const MAX_QUERY: usize = 256;

/// Why the key could not be read or made.
#[derive(Debug, thiserror::Error)]
#[error("cannot read or make the media signing key {path}: {problem}")]
pub struct GateError {
    pub path: PathBuf,
    pub problem: String,
}

/// Why a request for a restricted image was refused (audited; the client sees a 404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `sig`/`exp` at all.
    Unsigned,
    /// `exp` is in the past.
    Expired,
    /// The signature does not match (altered path, expiry or signature).
    BadSignature,
}

impl Refusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "restricted item requested without a signed URL",
            Refusal::Expired => "the signed URL has expired",
            Refusal::BadSignature => "the URL's signature does not match",
        }
    }
}

/// The gate: the key, the access rules it asks "restricted?", the audit log it writes to,
/// and the clone store it asks which item a clone shows.
pub struct MediaGate {
    key: [u8; KEY_BYTES],
    access: Arc<AccessList>,
    audit: Arc<AuditLog>,
    clones: std::sync::OnceLock<Arc<CloneStore>>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MediaGate {
    /// Reads `STATE/media.key`, making it on the first start.
    pub fn open(
        state_dir: &Path,
        access: Arc<AccessList>,
        audit: Arc<AuditLog>,
    ) -> Result<MediaGate, GateError> {
        let path = state_dir.join(MEDIA_KEY_FILE);
        let fail = |problem: String| GateError {
            path: path.clone(),
            problem,
        };
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => parse_key(&text).ok_or_else(|| fail("not 64 hex digits".into()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_BYTES];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
                match write_key(&path, &key) {
                    Ok(()) => key,
                    // Another start made it first: use that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let text =
                            std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
                        parse_key(&text).ok_or_else(|| fail("not 64 hex digits".into()))?
                    }
                    Err(e) => return Err(fail(e.to_string())),
                }
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        Ok(MediaGate {
            key,
            access,
            audit,
            clones: std::sync::OnceLock::new(),
        })
    }

    /// The clone store whose clones' bases decide whether a `clone/NAME` export is restricted
    /// (set once by the daemon; without it a clone export counts as its base unknown).
    pub fn set_clones(&self, clones: Arc<CloneStore>) {
        let _ = self.clones.set(clones);
    }

    /// Is `item` limited by an access rule (and so not anonymous on HTTP and NBD)?
    pub fn restricted(&self, item: &str) -> bool {
        self.access.current().restricted(item)
    }

    /// A clone's base (`NAME@V`) and creation time, when the store knows the clone.
    fn clone_of(&self, clone: &str) -> Option<(String, String)> {
        let info = self.clones.get()?.get(clone).ok()?;
        Some((info.base, info.created))
    }

    /// Is the export `export` restricted: its item's, or for `clone/NAME` its base item's? A
    /// clone the store does not know is not restricted here: opening it fails as missing.
    pub fn restricted_export(&self, export: &str) -> bool {
        match export.strip_prefix(CLONE_EXPORT_PREFIX) {
            Some(clone) => self
                .clone_of(clone)
                .is_some_and(|(base, _)| self.restricted(item_of_spec(&base))),
            None => self.restricted(item_of_spec(export)),
        }
    }

    /// The item an export's audit records name: its own, a clone's base item, or the export
    /// itself for a clone the store does not know.
    pub fn item_of_export(&self, export: &str) -> String {
        match export.strip_prefix(CLONE_EXPORT_PREFIX) {
            Some(clone) => self.clone_of(clone).map_or_else(
                || export.to_string(),
                |(base, _)| item_of_spec(&base).to_string(),
            ),
            None => item_of_spec(export).to_string(),
        }
    }

    /// May `who` (None: an anonymous request, on the plain HTTP port) use `item`? An
    /// unrestricted item, anyone; a restricted one, whoever its rules let see it.
    pub fn may_use(&self, who: Option<&Principal>, item: &str) -> bool {
        if !self.restricted(item) {
            return true;
        }
        who.is_some_and(|who| self.access.visible(who, item))
    }

    /// Writes the audit record of a refused request for `item`.
    pub fn record_denied(&self, who: Option<&Principal>, peer: &str, action: &str, item: &str) {
        self.audit.record(
            who,
            peer,
            action,
            item,
            Outcome::Denied,
            Some("no access to this item"),
        );
    }

    fn mac(&self, parts: &[&str]) -> Hmac<Sha256> {
        // HMAC takes a key of any length; ours is fixed, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        for (n, part) in parts.iter().enumerate() {
            if n > 0 {
                mac.update(b"\n");
            }
            mac.update(part.as_bytes());
        }
        mac
    }

    /// `path?exp=..&sig=..`, valid until `expires` (Unix seconds). `path` is the decoded
    /// request path, `/images/NAME@V`.
    pub fn sign_path(&self, path: &str, expires: u64) -> String {
        let expiry = expires.to_string();
        let sig = self.mac(&["GET", path, &expiry]).finalize().into_bytes();
        format!("{path}?exp={expiry}&sig={}", hex::encode(sig))
    }

    /// The path an attachment hands to its VM: signed for `ATTACHMENT_URL_LIFETIME` when the
    /// item is restricted, the plain path otherwise.
    pub fn attachment_path(&self, spec: &str) -> String {
        let path = format!("/images/{spec}");
        if self.restricted(item_of_spec(spec)) {
            self.sign_path(
                &path,
                now_unix().saturating_add(ATTACHMENT_URL_LIFETIME.as_secs()),
            )
        } else {
            path
        }
    }

    /// Checks a request for `path` (decoded, `/images/...`) with its raw `query`, at `now`.
    /// `HEAD` is checked as `GET` (the same bytes' headers; QEMU asks it first).
    pub fn check_http(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        now: u64,
    ) -> Result<(), Refusal> {
        let spec = path.strip_prefix("/images/").unwrap_or(path);
        if !self.restricted(item_of_spec(spec)) {
            return Ok(());
        }
        if method != Method::GET && method != Method::HEAD {
            return Err(Refusal::Unsigned);
        }
        let (mut exp, mut sig) = (None, None);
        for pair in query
            .filter(|q| q.len() <= MAX_QUERY)
            .unwrap_or("")
            .split('&')
        {
            match pair.split_once('=') {
                Some(("exp", v)) => exp = Some(v),
                Some(("sig", v)) => sig = Some(v),
                _ => {}
            }
        }
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err(Refusal::Unsigned);
        };
        let sig = hex::decode(sig).map_err(|_| Refusal::BadSignature)?;
        // The signature first: an altered expiry is a forgery, not an expired URL.
        self.mac(&["GET", path, exp])
            .verify_slice(&sig)
            .map_err(|_| Refusal::BadSignature)?;
        let expires: u64 = exp.parse().map_err(|_| Refusal::BadSignature)?;
        if expires < now {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    /// `check_http` now, auditing a refusal as `METHOD /images/...` from `peer`.
    pub fn admit_http(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        peer: &str,
    ) -> Result<(), Refusal> {
        self.check_http(method, path, query, now_unix())
            .inspect_err(|refusal| {
                let spec = path.strip_prefix("/images/").unwrap_or(path);
                self.audit.record(
                    None,
                    peer,
                    &format!("{method} {path}"),
                    item_of_spec(spec),
                    Outcome::Denied,
                    Some(refusal.as_str()),
                );
            })
    }

    fn nbd_token(&self, export: &str, holder: &str) -> String {
        let mac = match export
            .strip_prefix(CLONE_EXPORT_PREFIX)
            .and_then(|clone| self.clone_of(clone))
        {
            // A clone's token also names what it was made from and when: a clone removed and
            // made again under the same name is another clone.
            Some((base, created)) => self.mac(&["NBD", export, holder, &base, &created]),
            None => self.mac(&["NBD", export, holder]),
        }
        .finalize()
        .into_bytes();
        let mut token = hex::encode(mac);
        token.truncate(NBD_TOKEN_HEX);
        token
    }

    /// The NBD export name an attachment of `export` to `holder` hands to its VM: a capability
    /// name when the item is restricted, the export itself otherwise.
    pub fn attachment_export(&self, export: &str, holder: &str) -> String {
        if self.restricted_export(export) {
            format!(
                "{export}{NBD_CAP_INFIX}{holder}/{}",
                self.nbd_token(export, holder)
            )
        } else {
            export.to_string()
        }
    }

    /// The export name a clone's create answer gives: `clone/NAME` itself, or for a clone of a
    /// restricted item its capability name, `clone/NAME/cap/NAME/TOKEN`.
    pub fn clone_export(&self, clone: &str) -> String {
        self.attachment_export(&format!("{CLONE_EXPORT_PREFIX}{clone}"), clone)
    }

    /// The export an NBD client may open by `name`: a capability name gives its export when
    /// its token matches; a plain name is itself unless its item is restricted.
    pub fn nbd_export(&self, name: &str) -> Result<String, Refusal> {
        if let Some((rest, token)) = name.rsplit_once('/') {
            if let Some((export, holder)) = rest.rsplit_once(NBD_CAP_INFIX) {
                let expected = self.nbd_token(export, holder);
                // Constant time: the comparison must not tell how much of a guess was right.
                let same = token.len() == expected.len()
                    && token
                        .bytes()
                        .zip(expected.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0;
                return if same {
                    Ok(export.to_string())
                } else {
                    Err(Refusal::BadSignature)
                };
            }
        }
        if self.restricted_export(name) {
            Err(Refusal::Unsigned)
        } else {
            Ok(name.to_string())
        }
    }
}

/// A medium's URL or export name with its capability taken out (`?exp=..&sig=..`, `/cap/...`):
/// what is shown to readers of a system, who may not be allowed the item.
pub fn without_capability(text: &str) -> String {
    let text = match text.split_once('?') {
        Some((path, query)) if query.split('&').any(|p| p.starts_with("sig=")) => path,
        _ => text,
    };
    text.split(NBD_CAP_INFIX).next().unwrap_or(text).to_string()
}

fn parse_key(text: &str) -> Option<[u8; KEY_BYTES]> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

fn write_key(path: &Path, key: &[u8; KEY_BYTES]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut file = AtomicFile::create(path, OverwritePolicy::Refuse)?;
    file.file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.file_mut().write_all(hex::encode(key).as_bytes())?;
    file.commit()
}

/// The resolver NBD uses: capability names open their export, restricted items are not
/// listed and not opened by their plain name (audited), everything else passes through.
pub struct GatedResolver {
    pub inner: Arc<dyn ExportResolver>,
    pub gate: Arc<MediaGate>,
}

impl ExportResolver for GatedResolver {
    fn list(&self) -> std::io::Result<Vec<ExportListing>> {
        let mut listed = self.inner.list()?;
        listed.retain(|e| !self.gate.restricted_export(&e.name));
        Ok(listed)
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Export>, ExportError> {
        self.open_for(name, "-")
    }

    fn open_for(&self, name: &str, client: &str) -> Result<Arc<dyn Export>, ExportError> {
        match self.gate.nbd_export(name) {
            Ok(export) => self.inner.open(&export),
            Err(refusal) => {
                // The name as asked is not logged when it carries a token.
                let shown = name.split(NBD_CAP_INFIX).next().unwrap_or(name);
                self.gate.audit.record(
                    None,
                    client,
                    "nbd open",
                    &self.gate.item_of_export(shown),
                    Outcome::Denied,
                    Some(refusal.as_str()),
                );
                Err(ExportError::NotFound(shown.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(dir: &Path) -> MediaGate {
        std::fs::write(
            dir.join(crate::api::access::ACCESS_FILE),
            r#"{"rules":[{"pattern":"secret","users":["alice"]}]}"#,
        )
        .unwrap();
        let access = Arc::new(AccessList::open(dir).unwrap());
        let audit = Arc::new(AuditLog::open(dir).unwrap());
        MediaGate::open(dir, access, audit).unwrap()
    }

    #[test]
    fn signed_urls_open_restricted_items_until_they_expire_and_not_once_altered() {
        let dir = tempfile::tempdir().unwrap();
        let gate = gate(dir.path());
        let get = Method::GET;
        assert_eq!(gate.check_http(&get, "/images/deb@1", None, 100), Ok(()));
        assert_eq!(
            gate.check_http(&get, "/images/secret@1", None, 100),
            Err(Refusal::Unsigned)
        );
        let signed = gate.sign_path("/images/secret@1", 200);
        let (path, query) = signed.split_once('?').unwrap();
        assert_eq!(gate.check_http(&get, path, Some(query), 100), Ok(()));
        assert_eq!(
            gate.check_http(&Method::HEAD, path, Some(query), 100),
            Ok(())
        );
        assert_eq!(
            gate.check_http(&get, path, Some(query), 201),
            Err(Refusal::Expired)
        );
        assert_eq!(
            gate.check_http(&get, "/images/secret@2", Some(query), 100),
            Err(Refusal::BadSignature)
        );
        let later = query.replace("exp=200", "exp=900");
        assert_eq!(
            gate.check_http(&get, path, Some(&later), 100),
            Err(Refusal::BadSignature)
        );
        // The key survives a reopen: the same URL is still good.
        let again = self::gate(dir.path());
        assert_eq!(again.check_http(&get, path, Some(query), 100), Ok(()));
    }

    #[test]
    fn nbd_capability_names_open_their_export_only() {
        let dir = tempfile::tempdir().unwrap();
        let gate = gate(dir.path());
        assert_eq!(gate.attachment_export("deb@1", "node1"), "deb@1");
        let name = gate.attachment_export("secret@1", "node1");
        assert!(name.starts_with("secret@1/cap/node1/"), "{name}");
        assert_eq!(gate.nbd_export(&name), Ok("secret@1".to_string()));
        assert_eq!(gate.nbd_export("secret@1"), Err(Refusal::Unsigned));
        let last = if name.ends_with('0') { "1" } else { "0" };
        let forged = format!("{}{last}", &name[..name.len() - 1]);
        assert_eq!(gate.nbd_export(&forged), Err(Refusal::BadSignature));
        let moved = name.replace("node1", "node2");
        assert_eq!(gate.nbd_export(&moved), Err(Refusal::BadSignature));
        assert_eq!(gate.nbd_export("deb@1"), Ok("deb@1".to_string()));
        assert_eq!(without_capability(&name), "secret@1");
        let url = format!("http://h:1{}", gate.sign_path("/images/secret@1", 5));
        assert_eq!(without_capability(&url), "http://h:1/images/secret@1");
        assert_eq!(without_capability("http://h/a?b=c"), "http://h/a?b=c");
    }
}

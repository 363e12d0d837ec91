//! Per-item access: rules that limit an item, or a namespace of items (a name prefix ending in
//! `*`), to named users and groups. Administrators manage the one document
//! (`GET`/`PUT /api/v1/access`, persisted atomically in `STATE/access.json`); an item no rule
//! matches is visible to everyone signed in. A hidden item answers 404, never 403, so its
//! existence does not leak; every such refusal is an audit record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmedia_io::{AtomicFile, OverwritePolicy};

use super::{blocking, check_if_match, ApiState, Problem};
use crate::audit::Outcome;
use crate::auth::Principal;
use crate::http::{ErrorBody, Peer};

/// The file inside the state folder.
pub const ACCESS_FILE: &str = "access.json";
/// Most rules and groups: the whole document is checked on every item request.
pub const MAX_RULES: usize = 1000;
/// Most names one rule or group lists.
pub const MAX_MEMBERS: usize = 1000;
/// Longest pattern, user or group name (item names are at most 200 characters).
const MAX_NAME: usize = 256;

/// One rule: items matching `pattern` are visible only to `users` and members of `groups`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// An item name, or a namespace: a name prefix ending in `*` (`team-a.*`).
    pub pattern: String,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl AccessRule {
    fn matches(&self, item: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => item.starts_with(prefix),
            None => self.pattern == item,
        }
    }
}

/// The access document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessDoc {
    /// Group name to its member users.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub rules: Vec<AccessRule>,
}

impl AccessDoc {
    fn check(&self) -> Result<(), Problem> {
        let bad = |what: String| Err(Problem::new(StatusCode::BAD_REQUEST, what));
        if self.rules.len() > MAX_RULES || self.groups.len() > MAX_RULES {
            return bad(format!("at most {MAX_RULES} rules and {MAX_RULES} groups"));
        }
        let name_ok =
            |n: &str| !n.is_empty() && n.len() <= MAX_NAME && n.chars().all(|c| !c.is_control());
        for (group, members) in &self.groups {
            if !name_ok(group) || members.len() > MAX_MEMBERS || !members.iter().all(|m| name_ok(m))
            {
                return bad(format!(
                    "group {group:?}: a name and at most {MAX_MEMBERS} user names"
                ));
            }
        }
        for rule in &self.rules {
            let body = rule.pattern.strip_suffix('*').unwrap_or(&rule.pattern);
            // A namespace prefix may be empty (`*`: every item) or end in a separator.
            let pattern_ok = rule.pattern.len() <= MAX_NAME
                && !body.contains('*')
                && body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                && (!body.is_empty() || rule.pattern == "*");
            if !pattern_ok {
                return bad(format!(
                    "pattern {:?}: an item name, or a name prefix ending in '*'",
                    rule.pattern
                ));
            }
            if rule.users.len() > MAX_MEMBERS
                || rule.groups.len() > MAX_MEMBERS
                || !rule.users.iter().chain(&rule.groups).all(|n| name_ok(n))
            {
                return bad(format!(
                    "rule {:?}: at most {MAX_MEMBERS} user and group names",
                    rule.pattern
                ));
            }
            if let Some(missing) = rule.groups.iter().find(|g| !self.groups.contains_key(*g)) {
                return bad(format!(
                    "rule {:?} names group {missing:?}, which the document does not define",
                    rule.pattern
                ));
            }
        }
        Ok(())
    }

    /// May `who` see `item`? Administrators always; otherwise unless a rule matches the item
    /// and none of the matching rules names the user or one of their groups.
    pub fn visible(&self, who: &Principal, item: &str) -> bool {
        if who.role.may_administer() {
            return true;
        }
        let mut limited = false;
        for rule in self.rules.iter().filter(|r| r.matches(item)) {
            limited = true;
            if rule.users.contains(&who.name)
                || rule.groups.iter().any(|g| {
                    self.groups
                        .get(g)
                        .is_some_and(|members| members.contains(&who.name))
                })
            {
                return true;
            }
        }
        !limited
    }

    /// Does a rule limit `item` (to anyone)? Such an item is served on the plain HTTP and NBD
    /// ports only through a capability (`http::gate`).
    pub fn restricted(&self, item: &str) -> bool {
        self.rules.iter().any(|r| r.matches(item))
    }

    fn etag(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        format!(
            "\"{}\"",
            &hex::encode(Sha256::digest(text.as_bytes()))[..16]
        )
    }
}

/// The daemon's access document, loaded once and replaced whole.
pub struct AccessList {
    path: PathBuf,
    doc: RwLock<Arc<AccessDoc>>,
}

/// Why the access document could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the access rules {path}: {problem}")]
pub struct AccessError {
    pub path: PathBuf,
    pub problem: String,
}

impl AccessList {
    /// Reads `STATE/access.json` (none: no rules).
    pub fn open(state_dir: &Path) -> Result<AccessList, AccessError> {
        let path = state_dir.join(ACCESS_FILE);
        let doc = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AccessError {
                path: path.clone(),
                problem: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AccessDoc::default(),
            Err(e) => {
                return Err(AccessError {
                    path,
                    problem: e.to_string(),
                })
            }
        };
        Ok(AccessList {
            path,
            doc: RwLock::new(Arc::new(doc)),
        })
    }

    /// The document in force.
    pub fn current(&self) -> Arc<AccessDoc> {
        Arc::clone(&self.doc.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// May `who` see `item`?
    pub fn visible(&self, who: &Principal, item: &str) -> bool {
        self.current().visible(who, item)
    }

    fn replace(&self, doc: AccessDoc) -> Result<(), Problem> {
        let text = serde_json::to_vec_pretty(&doc)
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let fail = |e: std::io::Error| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write {}: {e}", self.path.display()),
            )
        };
        let mut file = AtomicFile::create(&self.path, OverwritePolicy::Replace).map_err(fail)?;
        use std::io::Write;
        file.file_mut().write_all(&text).map_err(fail)?;
        file.commit().map_err(fail)?;
        *self.doc.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(doc);
        Ok(())
    }
}

/// The library item an export or image name belongs to: `NAME`, `NAME@V`, `NAME@sha256:...`,
/// `NAME@V/disk`, `NAME@V/files/PATH` all name `NAME`. A clone export (`clone/NAME`) is not
/// an item name: its base says which item it shows (`export_item`).
pub fn item_of_spec(spec: &str) -> &str {
    let end = spec.find(['@', '/']).unwrap_or(spec.len());
    &spec[..end]
}

/// The item whose bytes an export shows: the item itself, or a clone's base item (looked up
/// in `clones`, clone name to base `NAME@V`). None: a clone the store no longer knows.
pub fn export_item<'a>(export: &'a str, clones: &'a BTreeMap<String, String>) -> Option<&'a str> {
    match export.strip_prefix(crate::clones::CLONE_EXPORT_PREFIX) {
        Some(clone) => clones.get(clone).map(|base| item_of_spec(base)),
        None => Some(item_of_spec(export)),
    }
}

/// A hidden or missing item, alike: 404.
pub fn hidden(item: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("no such item: {item}"))
}

/// Checks that `who` may see `item`; when not, records the attempt and answers 404.
pub fn require(
    state: &ApiState,
    who: &Principal,
    peer: &str,
    action: &str,
    item: &str,
) -> Result<(), Problem> {
    if state.access.visible(who, item) {
        return Ok(());
    }
    state.audit.record(
        Some(who),
        peer,
        action,
        item,
        Outcome::Denied,
        Some("no access to this item"),
    );
    Err(hidden(item))
}

/// The item a `/api/v1/library/items/NAME...` path names.
fn item_of_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/library/items/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// Middleware: every route under `/api/v1/library/items/NAME` answers 404 for a hidden item.
pub async fn item_routes(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(item) = item_of_path(request.uri().path()).map(str::to_string) else {
        return next.run(request).await;
    };
    let Some(who) = request.extensions().get::<Principal>().cloned() else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<Peer>()
        .map(|p| p.addr.clone())
        .unwrap_or_else(|| "-".into());
    let action = format!("{} {}", request.method(), request.uri().path());
    match require(&state, &who, &peer, &action, &item) {
        Ok(()) => next.run(request).await,
        Err(problem) => problem.into_response(),
    }
}

/// Refuses a document that would restrict an item the daemon's netboot rules name: network
/// boot (TFTP, the netboot HTTP port) asks for no credentials and hands a rule's paths to any
/// machine that asks, so it cannot serve a restricted item (docs/serve.md, "Network boot and
/// restricted items").
fn refuse_restricting_netboot(doc: &AccessDoc, netboot_files: &[PathBuf]) -> Result<(), Problem> {
    for reference in super::usage::netboot_references(netboot_files) {
        let Some((item, _)) = super::usage::reference_target(&reference) else {
            continue;
        };
        if doc.restricted(item) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "the daemon's netboot rules name {reference}, and this document would \
                     restrict {item}: network boot has no credentials and gives a rule's paths \
                     to any machine that asks, so it cannot serve a restricted item; remove the \
                     reference from the netboot rules (and restart the daemon), or leave {item} \
                     unrestricted"
                ),
            ));
        }
    }
    Ok(())
}

fn administrator(who: &Principal) -> Result<(), Problem> {
    super::require_administrator(who, "read and change access rules")
}

fn with_etag(doc: &AccessDoc) -> Response {
    ([(header::ETAG, doc.etag())], Json(doc.clone())).into_response()
}

/// The access rules and groups (administrators).
#[utoipa::path(get, path = "/api/v1/access", tag = "accounts",
    responses((status = 200, body = AccessDoc, headers(("ETag" = String))),
        (status = 403, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn access_show(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
) -> Result<Response, Problem> {
    administrator(&who)?;
    Ok(with_etag(&state.access.current()))
}

/// Replaces the access rules and groups (administrators); `If-Match` is honoured.
#[utoipa::path(put, path = "/api/v1/access", tag = "accounts",
    request_body = AccessDoc,
    params(("If-Match" = Option<String>, Header)),
    responses((status = 200, body = AccessDoc, headers(("ETag" = String))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json"),
        (status = 412, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn access_replace(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Json<AccessDoc>, JsonRejection>,
) -> Result<Response, Problem> {
    administrator(&who)?;
    let Json(doc) = body?;
    doc.check()?;
    let st = Arc::clone(&state);
    blocking(move || {
        check_if_match(&headers, &st.access.current().etag(), false)?;
        refuse_restricting_netboot(&doc, &st.netboot_files)?;
        st.access.replace(doc)
    })
    .await?;
    Ok(with_etag(&state.access.current()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn who(name: &str, role: Role) -> Principal {
        Principal {
            name: name.into(),
            role,
        }
    }

    #[test]
    fn rules_hide_items_and_namespaces_from_everyone_not_named() {
        let doc: AccessDoc = serde_json::from_value(serde_json::json!({
            "groups": {"ops": ["bob"]},
            "rules": [
                {"pattern": "secret", "users": ["alice"]},
                {"pattern": "team-a.*", "groups": ["ops"]},
            ]
        }))
        .unwrap();
        doc.check().unwrap();
        let alice = who("alice", Role::Operator);
        let bob = who("bob", Role::Readonly);
        let root = who("root", Role::Administrator);
        assert!(doc.visible(&alice, "secret"));
        assert!(!doc.visible(&bob, "secret"));
        assert!(doc.visible(&bob, "team-a.web"));
        assert!(!doc.visible(&alice, "team-a.web"));
        assert!(doc.visible(&alice, "public"));
        assert!(doc.visible(&root, "secret"));
    }

    #[test]
    fn traversal_and_unknown_groups_are_refused() {
        for pattern in ["../etc", "a/*", "*a*", ""] {
            let doc = AccessDoc {
                rules: vec![AccessRule {
                    pattern: pattern.into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert!(doc.check().is_err(), "{pattern}");
        }
        let doc = AccessDoc {
            rules: vec![AccessRule {
                pattern: "x".into(),
                groups: vec!["nope".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(doc.check().is_err());
        assert_eq!(
            item_of_path("/api/v1/library/items/deb/versions"),
            Some("deb")
        );
        assert_eq!(item_of_path("/api/v1/library/items"), None);
    }

    #[test]
    fn restricting_an_item_the_netboot_rules_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("netboot.toml");
        std::fs::write(
            &rules,
            "[default]\nkernel = \"library:deb@3:/boot/vmlinuz\"\ninitrd = [\"library:tools\"]\n",
        )
        .unwrap();
        let files = [rules];
        let limiting = |pattern: &str| AccessDoc {
            rules: vec![AccessRule {
                pattern: pattern.into(),
                users: vec!["alice".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        for pattern in ["deb", "de*", "tools", "*"] {
            let refused = refuse_restricting_netboot(&limiting(pattern), &files).unwrap_err();
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{pattern}");
            assert!(
                refused.detail.contains("netboot rules"),
                "{}",
                refused.detail
            );
        }
        for pattern in ["secret", "debian", "deb.*"] {
            assert!(
                refuse_restricting_netboot(&limiting(pattern), &files).is_ok(),
                "{pattern}"
            );
        }
        assert!(refuse_restricting_netboot(&limiting("deb"), &[]).is_ok());
    }

    #[test]
    fn exports_name_their_item_and_clones_their_base() {
        let clones = BTreeMap::from([("web1".to_string(), "secret@2".to_string())]);
        for (export, item) in [
            ("deb", Some("deb")),
            ("deb@3", Some("deb")),
            ("deb@sha256:ab12", Some("deb")),
            ("deb@3/disk", Some("deb")),
            ("deb/disk", Some("deb")),
            ("clone/web1", Some("secret")),
            ("clone/gone", None),
        ] {
            assert_eq!(export_item(export, &clones), item, "{export}");
        }
        let doc = AccessDoc {
            rules: vec![AccessRule {
                pattern: "team-a.*".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(doc.restricted("team-a.web"));
        assert!(!doc.restricted("deb"));
    }
}

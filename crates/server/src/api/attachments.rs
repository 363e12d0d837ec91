//! Attachments: a library version put in a system's virtual CD, one system or hundreds per
//! call. An attachment is recorded in `STATE/attachments/SYSTEM.json`, one file per system,
//! each replaced atomically (write, fsync, rename): a SIGKILL in the middle of a batch leaves
//! every system either attached or not, never a torn record, and no log needs compacting. The
//! system's CD slot gets the daemon's own URL for the pinned version (`/images/NAME@V` on the
//! HTTP port), so QEMU, and any client of that system, reads it through the shared cache; the
//! same bytes are the NBD export `NAME@V` and `GET /api/v1/systems/ID/media/content`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use vmedia_boot::managed::VmStore;
use vmedia_boot::remote::{Medium, Remote, RemoteUrl};
use vmedia_io::{AtomicFile, OverwritePolicy};
use vmedia_library::VersionSpec;

use super::systems::{boot_problem, Selector};
use super::{blocking, page_response, paginate, ApiState, PageQuery, Problem};
use crate::audit::Outcome;
use crate::auth::Principal;
use crate::http::{ErrorBody, Peer};

/// The folder inside the state folder.
pub const ATTACHMENTS_DIR: &str = "attachments";
/// Most systems one batch call names or selects.
pub const MAX_BATCH: usize = 10_000;
/// A batch publishes its per-system results after this many systems (and at the end).
const PUBLISH_EVERY: usize = 25;

/// One system's attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attachment {
    pub system: String,
    pub item: String,
    pub version: u64,
    pub digest: String,
    pub size: u64,
    /// The CD slot it is in.
    pub slot: usize,
    /// RFC 3339.
    pub attached: String,
    /// Who attached it.
    pub by: String,
    /// Where the bytes are on the image routes (plain HTTP and HTTPS).
    pub http_path: String,
    /// The NBD export name.
    pub nbd_export: String,
    /// The authenticated API route to the bytes.
    pub content: String,
}

/// The attachments of a state folder: files on disk, a copy in memory.
pub struct Attachments {
    dir: PathBuf,
    by_system: Mutex<BTreeMap<String, Attachment>>,
}

/// Why the attachments could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the attachments in {path}: {source}")]
pub struct AttachmentsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl Attachments {
    /// Reads `STATE/attachments/` (a damaged file is skipped with a warning: it is one system's).
    pub fn open(state_dir: &Path) -> Result<Attachments, AttachmentsError> {
        let dir = state_dir.join(ATTACHMENTS_DIR);
        let fail = |source| AttachmentsError {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(fail)?;
        let mut by_system = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(fail)? {
            let path = entry.map_err(fail)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Attachment>(&b).map_err(|e| e.to_string()))
            {
                Ok(a) => {
                    by_system.insert(a.system.clone(), a);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), error, "skipping a damaged attachment")
                }
            }
        }
        Ok(Attachments {
            dir,
            by_system: Mutex::new(by_system),
        })
    }

    fn path(&self, system: &str) -> PathBuf {
        self.dir.join(format!("{system}.json"))
    }

    pub fn get(&self, system: &str) -> Option<Attachment> {
        self.lock().get(system).cloned()
    }

    /// Every attachment, by system name.
    pub fn list(&self) -> Vec<Attachment> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Attachment>> {
        self.by_system.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, attachment: &Attachment) -> Result<(), Problem> {
        let path = self.path(&attachment.system);
        let text = serde_json::to_vec(attachment).map_err(internal)?;
        let fail = |e: std::io::Error| internal(format!("cannot write {}: {e}", path.display()));
        let mut file = AtomicFile::create(&path, OverwritePolicy::Replace).map_err(fail)?;
        use std::io::Write;
        file.file_mut().write_all(&text).map_err(fail)?;
        file.commit().map_err(fail)?;
        self.lock()
            .insert(attachment.system.clone(), attachment.clone());
        Ok(())
    }

    /// Forgets `system`'s attachment; false when it had none.
    pub fn remove(&self, system: &str) -> Result<bool, Problem> {
        let path = self.path(system);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(format!("cannot remove {}: {e}", path.display()))),
        }
        Ok(self.lock().remove(system).is_some())
    }
}

/// A library version, resolved and pinned.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub item: String,
    pub version: u64,
    pub digest: String,
    pub size: u64,
}

impl Pinned {
    pub fn spec(&self) -> String {
        format!("{}@{}", self.item, self.version)
    }
}

/// Resolves `image` (`NAME`, `NAME@V`, `NAME@current`, `NAME@sha256:...`) for `who`: a hidden
/// item is 404 and an audit record, like a missing one.
pub fn pin(
    state: &ApiState,
    who: &Principal,
    peer: &str,
    action: &str,
    image: &str,
) -> Result<Pinned, Problem> {
    let text = image.strip_suffix("@current").unwrap_or(image);
    let spec = VersionSpec::parse(text)?;
    super::access::require(state, who, peer, action, &spec.name)?;
    let report = state.library().show(&spec)?;
    Ok(Pinned {
        item: report.name,
        version: report.version,
        digest: report.digest,
        size: report.size,
    })
}

/// Puts `pinned` in `system`'s CD slot `slot` and records the attachment: the one operation
/// behind a batch attach and `POST /api/v1/systems/ID/media` with a library image.
pub fn attach_one(
    state: &ApiState,
    store: &VmStore,
    who: &Principal,
    system: &str,
    pinned: &Pinned,
    slot: usize,
) -> Result<Attachment, Problem> {
    let config = store.load(system).map_err(boot_problem)?;
    if slot >= config.spec.cdroms.len() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "system {system} has {} CD slot(s), no slot {slot}",
                config.spec.cdroms.len()
            ),
        ));
    }
    let spec = pinned.spec();
    // A restricted item: the VM gets a signed URL and a capability export name.
    let http_path = state.app.gate.attachment_path(&spec);
    if let Some(base) = state.media_base.get() {
        let url = RemoteUrl::parse(&format!("{base}{http_path}")).map_err(boot_problem)?;
        let medium = Medium::Remote(Remote {
            url,
            tls_verify: true,
        });
        store
            .insert_medium(system, slot, &medium, None)
            .map_err(boot_problem)?;
    }
    let attachment = Attachment {
        system: system.to_string(),
        item: pinned.item.clone(),
        version: pinned.version,
        digest: pinned.digest.clone(),
        size: pinned.size,
        slot,
        attached: jiff::Timestamp::now().to_string(),
        by: who.name.clone(),
        http_path,
        nbd_export: state.app.gate.attachment_export(&spec, system),
        content: format!("/api/v1/systems/{system}/media/content"),
    };
    state.attachments.put(&attachment)?;
    state
        .events
        .record(system, "attach", &format!("{spec} in CD slot {slot}"));
    Ok(attachment)
}

/// Ejects `system`'s attached medium and forgets the attachment; false when it had none.
pub fn detach_one(state: &ApiState, store: &VmStore, system: &str) -> Result<bool, Problem> {
    let Some(attachment) = state.attachments.get(system) else {
        return Ok(false);
    };
    match store.load(system) {
        Ok(config) if attachment.slot < config.spec.cdroms.len() => {
            store
                .eject(system, attachment.slot, true)
                .map_err(boot_problem)?;
        }
        // A system removed behind the daemon's back: only the record remains to drop.
        _ => {}
    }
    state.attachments.remove(system)?;
    state.events.record(
        system,
        "detach",
        &format!("{}@{}", attachment.item, attachment.version),
    );
    Ok(true)
}

/// `POST /api/v1/attachments`: one of `systems` or `selector`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// `NAME`, `NAME@V`, `NAME@current` or `NAME@sha256:...`.
    pub image: String,
    pub systems: Option<Vec<String>>,
    /// `key=value[,key=value...]`: every system carrying all these labels.
    pub selector: Option<String>,
    /// The CD slot (default 0).
    #[serde(default)]
    pub slot: usize,
}

/// `POST /api/v1/attachments/detach`: one of `systems`, `selector` or `item`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    pub systems: Option<Vec<String>>,
    pub selector: Option<String>,
    /// Every system the item (any version) is attached to.
    pub item: Option<String>,
}

/// One system's outcome in a batch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SystemResult {
    pub system: String,
    pub ok: bool,
    pub error: Option<String>,
    /// Milliseconds this system took.
    pub ms: f64,
}

/// A batch task's result (published while it runs, final when it ends).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchResult {
    /// The pinned image (`NAME@V`); null for a detach.
    pub image: Option<String>,
    pub item: Option<String>,
    pub version: Option<u64>,
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub results: Vec<SystemResult>,
}

/// The systems a batch names: the list (each name checked, duplicates dropped) or those the
/// selector matches.
pub fn batch_targets(
    store: &VmStore,
    systems: Option<Vec<String>>,
    selector: Option<&str>,
) -> Result<Vec<String>, Problem> {
    match (systems, selector) {
        (Some(list), None) => {
            if list.is_empty() {
                return Err(Problem::new(StatusCode::BAD_REQUEST, "systems is empty"));
            }
            if list.len() > MAX_BATCH {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("{} systems: at most {MAX_BATCH} per call", list.len()),
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            let mut out = Vec::new();
            for name in list {
                vmedia_boot::spec::validate_name(&name).map_err(boot_problem)?;
                if seen.insert(name.clone()) {
                    out.push(name);
                }
            }
            Ok(out)
        }
        (None, Some(text)) => {
            let selector = Selector::parse(text)?;
            let mut out = Vec::new();
            for name in store.list().map_err(boot_problem)? {
                if let Ok(config) = store.load(&name) {
                    if selector.matches(&config.labels) {
                        out.push(name);
                    }
                }
            }
            if out.len() > MAX_BATCH {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the selector matches {} systems: at most {MAX_BATCH} per call",
                        out.len()
                    ),
                ));
            }
            Ok(out)
        }
        _ => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "give exactly one of \"systems\" (a list of names) or \"selector\" (\"key=value,...\")",
        )),
    }
}

/// Runs `one` over `systems`, publishing results as they come.
fn run_batch(
    systems: &[String],
    mut result: BatchResult,
    progress: &dyn vmedia_io::Progress,
    publish: super::tasks::Publish<'_>,
    mut one: impl FnMut(&str) -> Result<(), Problem>,
) -> Result<serde_json::Value, Problem> {
    progress.set_total(systems.len() as u64);
    for (n, system) in systems.iter().enumerate() {
        let started = Instant::now();
        let outcome = one(system);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match &outcome {
            Ok(()) => result.succeeded += 1,
            Err(_) => result.failed += 1,
        }
        result.results.push(SystemResult {
            system: system.clone(),
            ok: outcome.is_ok(),
            error: outcome.err().map(|p| p.detail),
            ms,
        });
        progress.advance(1);
        if (n + 1) % PUBLISH_EVERY == 0 {
            publish(serde_json::to_value(&result).map_err(internal)?);
        }
    }
    serde_json::to_value(&result).map_err(internal)
}

/// Attaches one library version to many systems (a list or a label selector) as a task; its
/// result lists every system's outcome and arrives while the task runs.
#[utoipa::path(post, path = "/api/v1/attachments", tag = "systems",
    request_body = AttachRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 202, body = crate::api::tasks::TaskInfo, headers(("Location" = String)),
            description = "The task; its result is a BatchResult"),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 503, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn attach_batch(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Extension(peer): Extension<Peer>,
    body: Result<Json<AttachRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let caller = who.clone();
    let (pinned, systems) = blocking(move || {
        let pinned = pin(
            &st,
            &caller,
            &peer.addr,
            "POST /api/v1/attachments",
            &request.image,
        )?;
        let systems = batch_targets(&store, request.systems, request.selector.as_deref())?;
        Ok((pinned, (systems, request.slot)))
    })
    .await?;
    let (systems, slot) = systems;
    let st = Arc::clone(&state);
    let owner = who.clone();
    let target = pinned.spec();
    Ok(state.tasks.start_publishing(
        "attach",
        &target,
        &who,
        Box::new(move |progress, publish| {
            progress.phase("attaching");
            let store = st.vm_store()?;
            let result = BatchResult {
                image: Some(pinned.spec()),
                item: Some(pinned.item.clone()),
                version: Some(pinned.version),
                total: systems.len(),
                succeeded: 0,
                failed: 0,
                results: Vec::with_capacity(systems.len()),
            };
            let value = run_batch(&systems, result, progress, publish, |system| {
                attach_one(&st, &store, &owner, system, &pinned, slot).map(|_| ())
            })?;
            st.audit.record(
                Some(&owner),
                "task",
                "attach",
                &pinned.spec(),
                Outcome::Success,
                Some(&format!(
                    "{} of {} systems",
                    value["succeeded"], value["total"]
                )),
            );
            Ok(value)
        }),
    ))
}

/// Detaches many systems (a list, a label selector, or every system using an item) as a task.
#[utoipa::path(post, path = "/api/v1/attachments/detach", tag = "systems",
    request_body = DetachRequest,
    responses((status = 202, body = crate::api::tasks::TaskInfo, headers(("Location" = String)),
            description = "The task; its result is a BatchResult"),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 503, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn detach_batch(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Extension(peer): Extension<Peer>,
    body: Result<Json<DetachRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let caller = who.clone();
    let systems = blocking(
        move || match (request.item, request.systems, request.selector) {
            (Some(item), None, None) => {
                super::access::require(
                    &st,
                    &caller,
                    &peer.addr,
                    "POST /api/v1/attachments/detach",
                    &item,
                )?;
                Ok(st
                    .attachments
                    .list()
                    .into_iter()
                    .filter(|a| a.item == item)
                    .map(|a| a.system)
                    .collect::<Vec<_>>())
            }
            (None, systems, selector) => batch_targets(&store, systems, selector.as_deref()),
            _ => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"systems\", \"selector\" or \"item\"",
            )),
        },
    )
    .await?;
    let st = Arc::clone(&state);
    Ok(state.tasks.start_publishing(
        "detach",
        "attachments",
        &who,
        Box::new(move |progress, publish| {
            progress.phase("detaching");
            let store = st.vm_store()?;
            let result = BatchResult {
                image: None,
                item: None,
                version: None,
                total: systems.len(),
                succeeded: 0,
                failed: 0,
                results: Vec::with_capacity(systems.len()),
            };
            run_batch(&systems, result, progress, publish, |system| {
                detach_one(&st, &store, system).map(|_| ())
            })
        }),
    ))
}

/// `GET /api/v1/attachments`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttachmentsQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    /// Only this item's attachments.
    pub item: Option<String>,
    /// Only this system's.
    pub system: Option<String>,
}

/// A page of attachments.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttachmentPage {
    pub items: Vec<Attachment>,
    pub next: Option<String>,
}

/// Attachments, by system name (items the caller may not see are left out).
#[utoipa::path(get, path = "/api/v1/attachments", tag = "systems", params(AttachmentsQuery),
    responses((status = 200, body = AttachmentPage),
        (status = 400, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn attachments_list(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
    query: Result<Query<AttachmentsQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query?;
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor.clone(),
    };
    let access = state.access.current();
    let all: Vec<Attachment> = state
        .attachments
        .list()
        .into_iter()
        .filter(|a| query.item.as_ref().is_none_or(|i| a.item == *i))
        .filter(|a| query.system.as_ref().is_none_or(|s| a.system == *s))
        .filter(|a| access.visible(&who, &a.item))
        .collect();
    let (items, next) = paginate(all, |a| a.system.clone(), &page)?;
    Ok(page_response(
        "/api/v1/attachments",
        raw.as_deref(),
        next,
        |next| AttachmentPage { items, next },
    ))
}

/// Detaches one system: its CD slot is ejected and the attachment forgotten.
#[utoipa::path(delete, path = "/api/v1/attachments/{id}", tag = "systems",
    params(("id" = String, Path, description = "The system")),
    responses((status = 204, description = "Detached"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn detach(
    State(state): State<Arc<ApiState>>,
    UrlPath(system): UrlPath<String>,
) -> Result<Response, Problem> {
    vmedia_boot::spec::validate_name(&system).map_err(boot_problem)?;
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let name = system.clone();
    let found = blocking(move || detach_one(&st, &store, &name)).await?;
    if found {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("system {system} has no attachment"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(system: &str) -> Attachment {
        Attachment {
            system: system.into(),
            item: "deb".into(),
            version: 2,
            digest: "sha256:00".into(),
            size: 10,
            slot: 0,
            attached: "2026-01-01T00:00:00Z".into(),
            by: "root".into(),
            http_path: "/images/deb@2".into(),
            nbd_export: "deb@2".into(),
            content: format!("/api/v1/systems/{system}/media/content"),
        }
    }

    #[test]
    fn attachments_survive_a_reopen_and_a_damaged_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Attachments::open(dir.path()).unwrap();
        store.put(&sample("a")).unwrap();
        store.put(&sample("b")).unwrap();
        assert!(store.remove("b").unwrap());
        std::fs::write(dir.path().join(ATTACHMENTS_DIR).join("c.json"), b"{\"sys").unwrap();
        let again = Attachments::open(dir.path()).unwrap();
        assert_eq!(again.list(), vec![sample("a")]);
        assert!(!again.remove("zz").unwrap());
    }
}

//! Systems: the VMs of the `vm` commands' store, as REST resources. List (label selector),
//! create a definition, show, PATCH labels and boot override (ETag/If-Match), delete; start,
//! stop (graceful or force), reset; media insert (a library version, which becomes the
//! system's attachment, or an http(s) URL) and eject; the serial console log (by offset, or
//! followed as server-sent events); the last boot's timeline. Every operation is the VM
//! store's (`vmedia_boot::managed::VmStore`), the same calls Redfish makes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path as FsPath};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmedia_boot::error::BootError;
use vmedia_boot::kvm::resolve_accel;
use vmedia_boot::managed::{BootOverride, VmConfig, VmStore};
use vmedia_boot::remote::{Medium, Remote, RemoteUrl};
use vmedia_boot::spec::{validate_name, CdromSlot, Disk, Firmware, Net, VmSpec};

use super::attachments::{attach_one, detach_one, pin, Attachment};
use super::boot_override::{Dialect, OverrideError, OverrideRequest, Target};
use super::{blocking, check_if_match, page_response, paginate, ApiState, PageQuery, Problem};
use crate::auth::Principal;
use crate::http::{ErrorBody, Peer};

/// Most events kept per system for its boot timeline (the newest win).
const MAX_EVENTS: usize = 200;
/// Console bytes one request returns by default and at most.
const CONSOLE_DEFAULT: u64 = 64 << 10;
const CONSOLE_MAX: u64 = 1 << 20;
/// How often a followed console is polled for new bytes.
const CONSOLE_POLL: Duration = Duration::from_millis(200);
/// Most CD slots and disks a created system may have (QEMU's q35 has 6 SATA ports).
const MAX_SLOTS: usize = 4;
/// Disks of systems created through the API must lie here, under the VM store's state
/// folder: the API never hands an arbitrary host file to a guest.
pub const DISKS_DIR: &str = "disks";

/// The VM store's error as a problem: a missing system is 404, a bad request 400, a state
/// conflict (running, no such device) 409, anything else 500.
pub fn boot_problem(error: BootError) -> Problem {
    let status = match &error {
        BootError::Vm { reason, .. } if reason.starts_with("does not exist") => {
            StatusCode::NOT_FOUND
        }
        BootError::Vm { .. } => StatusCode::CONFLICT,
        BootError::Invalid(_)
        | BootError::UnknownDiskFormat { .. }
        | BootError::BadMedium { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Problem::new(status, error.to_string())
}

/// A label selector: `key=value[,key=value...]`, all of which must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Vec<(String, String)>);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, Problem> {
        let bad = |why: &str| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("selector {text:?}: {why}; write key=value[,key=value...]"),
            )
        };
        if text.len() > 4096 {
            return Err(bad("too long"));
        }
        let mut pairs = Vec::new();
        for part in text.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad("a part has no '='"))?;
            let (key, value) = (key.trim(), value.trim());
            let mut one = BTreeMap::new();
            one.insert(key.to_string(), value.to_string());
            vmedia_boot::managed::check_labels(&one).map_err(|e| bad(&e.to_string()))?;
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(Selector(pairs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// One thing that happened to a system, for its boot timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SystemEvent {
    /// RFC 3339.
    pub time: String,
    /// `start`, `stop`, `reset`, `insert`, `eject`, `attach`, `detach`, `boot_override`.
    pub event: String,
    pub detail: String,
}

/// Per-system events since the daemon started, and where in the console log the last boot
/// began.
#[derive(Default)]
pub struct Events {
    by_system: Mutex<HashMap<String, VecDeque<SystemEvent>>>,
    boots: Mutex<HashMap<String, (String, u64)>>,
}

impl Events {
    pub fn record(&self, system: &str, event: &str, detail: &str) {
        let mut all = self.by_system.lock().unwrap_or_else(|p| p.into_inner());
        let list = all.entry(system.to_string()).or_default();
        if list.len() >= MAX_EVENTS {
            list.pop_front();
        }
        list.push_back(SystemEvent {
            time: jiff::Timestamp::now().to_string(),
            event: event.to_string(),
            detail: detail.to_string(),
        });
    }

    /// A boot began now, its console output from `offset` on.
    fn boot_began(&self, system: &str, offset: u64) {
        self.boots.lock().unwrap_or_else(|p| p.into_inner()).insert(
            system.to_string(),
            (jiff::Timestamp::now().to_string(), offset),
        );
    }

    fn last_boot(&self, system: &str) -> Option<(String, u64)> {
        self.boots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(system)
            .cloned()
    }

    /// The events since the last boot began (all kept ones when none is known).
    fn since_boot(&self, system: &str, since: Option<&str>) -> Vec<SystemEvent> {
        let all = self.by_system.lock().unwrap_or_else(|p| p.into_inner());
        all.get(system)
            .map(|list| {
                list.iter()
                    .filter(|e| since.is_none_or(|s| e.time.as_str() >= s))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn forget(&self, system: &str) {
        self.by_system
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(system);
        self.boots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(system);
    }
}

/// `{"mode": "once", "target": "cd"}`: Redfish's Boot object in this API's spelling, parsed
/// and applied by the one model both share (`boot_override.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootOverrideBody {
    /// `disabled`, `once` (the next start only) or `continuous`.
    pub mode: String,
    /// `cd`, `hdd`, `pxe`, `uefihttp` (UEFI firmware only) or `none`; null with `disabled`,
    /// or to keep the current target.
    pub target: Option<String>,
    /// `bios` or `uefi`: switches the system's firmware (Redfish's BootSourceOverrideMode;
    /// only while it is off). Absent: kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
}

impl BootOverrideBody {
    /// The shared model's request.
    pub fn request(&self) -> Result<OverrideRequest, Problem> {
        OverrideRequest::parse(
            Dialect::Rest,
            Some(&self.mode),
            self.target.as_deref(),
            self.firmware.as_deref(),
        )
        .map_err(override_problem)
    }
}

/// The status of a boot-override refusal.
pub fn override_problem(error: OverrideError) -> Problem {
    match error {
        OverrideError::Store(e) => boot_problem(e),
        OverrideError::Running(_) => Problem::new(StatusCode::CONFLICT, error.to_string()),
        _ => Problem::new(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

/// One CD slot and what is in it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SlotMedium {
    pub slot: usize,
    /// The image (a URL or a host path), or null when empty.
    pub image: Option<String>,
}

/// A system.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct System {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// `on` or `off`.
    pub power: String,
    pub pid: Option<u32>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `bios` or `uefi`.
    pub firmware: String,
    /// The disk images (host paths or URLs).
    pub disks: Vec<String>,
    pub cdrom_slots: usize,
    pub net: bool,
    pub boot_override: BootOverrideBody,
    pub media: Vec<SlotMedium>,
    pub attachment: Option<Attachment>,
}

fn system_body(state: &ApiState, store: &VmStore, config: &VmConfig) -> System {
    let id = config.spec.name.clone();
    let pid = store.state(&id).pid();
    let spec = &config.spec;
    let now = super::boot_override::current(config);
    let boot_override = BootOverrideBody {
        mode: now.enabled.name(Dialect::Rest).into(),
        target: (now.target != Target::None).then(|| now.target.name(Dialect::Rest).into()),
        firmware: None,
    };
    System {
        labels: config.labels.clone(),
        power: if pid.is_some() { "on" } else { "off" }.into(),
        pid,
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        firmware: match spec.firmware {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
        .into(),
        disks: spec.disks.iter().map(|d| d.medium.to_string()).collect(),
        cdrom_slots: spec.cdroms.len(),
        net: spec.net != Net::None,
        boot_override,
        media: spec
            .cdroms
            .iter()
            .enumerate()
            .map(|(slot, s)| SlotMedium {
                slot,
                // Signed URLs and capability names are for the VM, not for readers.
                image: s
                    .medium
                    .as_ref()
                    .map(|m| crate::http::gate::without_capability(&m.to_string())),
            })
            .collect(),
        attachment: state.attachments.get(&id).map(|mut a| {
            a.http_path = crate::http::gate::without_capability(&a.http_path);
            a.nbd_export = crate::http::gate::without_capability(&a.nbd_export);
            a
        }),
        id,
    }
}

/// A strong ETag over the system's representation, power state left out (it changes on its
/// own and does not conflict with a label or override change).
fn etag(system: &System) -> String {
    let mut copy = system.clone();
    copy.power.clear();
    copy.pid = None;
    let text = serde_json::to_string(&copy).unwrap_or_default();
    format!(
        "\"{}\"",
        &hex::encode(Sha256::digest(text.as_bytes()))[..16]
    )
}

fn with_etag(status: StatusCode, system: System) -> Response {
    let tag = etag(&system);
    (status, [(header::ETAG, tag)], Json(system)).into_response()
}

/// Loads system `id`: 400 for a name that cannot be one, 404 when there is none.
fn load(store: &VmStore, id: &str) -> Result<VmConfig, Problem> {
    validate_name(id).map_err(boot_problem)?;
    store.load(id).map_err(boot_problem)
}

impl ApiState {
    /// The VM store, or 503 when the daemon runs without one.
    pub fn vm_store(&self) -> Result<VmStore, Problem> {
        match &self.systems {
            Some(config) => Ok(VmStore::new(config)),
            None => Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this daemon manages no systems: start it with a VM store (vmedia serve --state DIR)",
            )),
        }
    }
}

/// A page of systems.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SystemPage {
    pub items: Vec<System>,
    pub next: Option<String>,
}

/// `GET /api/v1/systems` query.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SystemsQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    /// `key=value[,key=value...]` (may be repeated): systems carrying all these labels.
    pub label: Option<String>,
}

/// Systems, sorted by id, with power state, boot override and media.
#[utoipa::path(get, path = "/api/v1/systems", tag = "systems", params(SystemsQuery),
    responses((status = 200, body = SystemPage),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 503, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn systems_list(
    State(state): State<Arc<ApiState>>,
    RawQuery(raw): RawQuery,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(pairs) = query?;
    let mut page = PageQuery::default();
    let mut selectors = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "limit" => {
                page.limit = Some(
                    value
                        .parse()
                        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "limit is a number"))?,
                )
            }
            "cursor" => page.cursor = Some(value),
            "label" => selectors.push(Selector::parse(&value)?),
            other => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?} (limit, cursor, label)"),
                ))
            }
        }
    }
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let (items, next) = blocking(move || {
        let mut systems = Vec::new();
        for name in store.list().map_err(boot_problem)? {
            // A hand-damaged vm.toml hides that one system, not the list.
            let Ok(config) = store.load(&name) else {
                continue;
            };
            if selectors.iter().all(|s| s.matches(&config.labels)) {
                systems.push(config);
            }
        }
        let (configs, next) = paginate(systems, |c| c.spec.name.clone(), &page)?;
        Ok((
            configs
                .iter()
                .map(|c| system_body(&st, &store, c))
                .collect::<Vec<_>>(),
            next,
        ))
    })
    .await?;
    Ok(page_response(
        "/api/v1/systems",
        raw.as_deref(),
        next,
        |next| SystemPage { items, next },
    ))
}

/// `POST /api/v1/systems`: a definition; only `id` is required.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSystem {
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Default 512.
    pub memory_mib: Option<u32>,
    /// Default 1.
    pub cpus: Option<u32>,
    /// `bios` (default) or `uefi`.
    pub firmware: Option<String>,
    /// Disk images under the VM store's `disks/` folder (absolute, or relative to it).
    #[serde(default)]
    pub disks: Vec<String>,
    /// Default 1.
    pub cdrom_slots: Option<usize>,
    /// QEMU's user-mode network card (default true).
    pub net: Option<bool>,
}

fn parse_firmware(text: Option<&str>) -> Result<Firmware, Problem> {
    match text {
        None | Some("bios") => Ok(Firmware::Bios),
        Some("uefi") => Ok(Firmware::Uefi),
        Some(other) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("firmware {other:?}: bios or uefi"),
        )),
    }
}

/// A disk path from a request: inside `<state>/disks`, no `..`, an image whose format is known.
fn request_disk(root: &FsPath, text: &str) -> Result<Disk, Problem> {
    let bad = |why: String| Problem::new(StatusCode::BAD_REQUEST, format!("disk {text:?}: {why}"));
    let dir = root.join(DISKS_DIR);
    let given = FsPath::new(text);
    if given
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(bad("no '..' in disk paths".into()));
    }
    let path = if given.is_absolute() {
        given.to_path_buf()
    } else {
        dir.join(given)
    };
    let real = path
        .canonicalize()
        .map_err(|e| bad(format!("cannot open it: {e}")))?;
    let real_dir = dir.canonicalize().map_err(|_| {
        bad(format!(
            "disks must lie in {}, which does not exist",
            dir.display()
        ))
    })?;
    if !real.starts_with(&real_dir) {
        return Err(bad(format!("disks must lie in {}", dir.display())));
    }
    let format = vmedia_boot::media::detect_disk_format(&real).map_err(boot_problem)?;
    Ok(Disk {
        medium: Medium::File(real),
        format,
        writable: true,
    })
}

/// Registers a system (a definition: it need not run).
#[utoipa::path(post, path = "/api/v1/systems", tag = "systems", request_body = NewSystem,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = System, headers(("Location" = String), ("ETag" = String))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 409, body = ErrorBody, content_type = "application/problem+json"),
        (status = 503, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn system_create(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<NewSystem>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    validate_name(&request.id).map_err(boot_problem)?;
    vmedia_boot::managed::check_labels(&request.labels).map_err(boot_problem)?;
    let store = state.vm_store()?;
    let root = state
        .systems
        .as_ref()
        .map(|c| c.state_dir.clone())
        .unwrap_or_default();
    let st = Arc::clone(&state);
    let system = blocking(move || {
        let mut spec = VmSpec::new(&request.id);
        spec.firmware = parse_firmware(request.firmware.as_deref())?;
        if let Some(memory) = request.memory_mib {
            spec.memory_mib = memory;
        }
        if let Some(cpus) = request.cpus {
            spec.cpus = cpus;
        }
        let slots = request.cdrom_slots.unwrap_or(1);
        if slots > MAX_SLOTS || request.disks.len() > MAX_SLOTS {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("at most {MAX_SLOTS} CD slots and {MAX_SLOTS} disks"),
            ));
        }
        spec.cdroms = vec![CdromSlot::default(); slots];
        spec.disks = request
            .disks
            .iter()
            .map(|d| request_disk(&root, d))
            .collect::<Result<_, _>>()?;
        if request.net.unwrap_or(true) {
            spec.net = Net::User {
                tftp: None,
                bootfile: None,
            };
        }
        store.create(&spec).map_err(|e| match e {
            BootError::Vm { .. } => Problem::new(StatusCode::CONFLICT, e.to_string()),
            other => boot_problem(other),
        })?;
        if !request.labels.is_empty() {
            store
                .set_labels(&request.id, request.labels)
                .map_err(boot_problem)?;
        }
        let config = store.load(&request.id).map_err(boot_problem)?;
        Ok(system_body(&st, &store, &config))
    })
    .await?;
    let location = format!("/api/v1/systems/{}", system.id);
    let mut response = with_etag(StatusCode::CREATED, system);
    if let Ok(value) = location.parse() {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// One system.
#[utoipa::path(get, path = "/api/v1/systems/{id}", tag = "systems",
    params(("id" = String, Path)),
    responses((status = 200, body = System, headers(("ETag" = String))),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn system_show(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let system = blocking(move || {
        let config = load(&store, &id)?;
        Ok(system_body(&st, &store, &config))
    })
    .await?;
    Ok(with_etag(StatusCode::OK, system))
}

/// `PATCH /api/v1/systems/{id}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemPatch {
    /// Replaces every label.
    pub labels: Option<BTreeMap<String, String>>,
    pub boot_override: Option<BootOverrideBody>,
}

/// The override `body` asks for on a system with no override and `firmware` (the shared
/// model's resolution): `uefihttp` needs UEFI firmware (then, as in Redfish, it is the
/// network device under OVMF).
pub fn wanted_override(
    body: &BootOverrideBody,
    firmware: Firmware,
) -> Result<BootOverride, Problem> {
    let resolved = body
        .request()?
        .resolve(BootOverride::Disabled, firmware)
        .map_err(override_problem)?;
    Ok(resolved.boot_override.unwrap_or(BootOverride::Disabled))
}

/// Changes labels and the boot override; `If-Match` is honoured (412 on a stale ETag).
#[utoipa::path(patch, path = "/api/v1/systems/{id}", tag = "systems",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = SystemPatch,
    responses((status = 200, body = System, headers(("ETag" = String))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 409, body = ErrorBody, content_type = "application/problem+json"),
        (status = 412, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn system_patch(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<SystemPatch>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(patch) = body?;
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let system = blocking(move || {
        let config = load(&store, &id)?;
        check_if_match(&headers, &etag(&system_body(&st, &store, &config)), false)?;
        if let Some(wanted) = &patch.boot_override {
            let applied = wanted
                .request()?
                .apply(&store, &id)
                .map_err(override_problem)?;
            if let Some(wanted) = applied.boot_override {
                st.events
                    .record(&id, "boot_override", &format!("{wanted:?}").to_lowercase());
            }
        }
        if let Some(labels) = patch.labels {
            store.set_labels(&id, labels).map_err(boot_problem)?;
        }
        let config = store.load(&id).map_err(boot_problem)?;
        Ok(system_body(&st, &store, &config))
    })
    .await?;
    Ok(with_etag(StatusCode::OK, system))
}

/// Removes a stopped system's definition (its media are never touched); its attachment goes.
#[utoipa::path(delete, path = "/api/v1/systems/{id}", tag = "systems",
    params(("id" = String, Path)),
    responses((status = 204, description = "Removed"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 409, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn system_delete(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    blocking(move || {
        load(&store, &id)?;
        store.remove(&id).map_err(boot_problem)?;
        st.attachments.remove(&id)?;
        st.events.forget(&id);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What a power action did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActionReport {
    pub id: String,
    /// `on` or `off` after the action (a graceful stop may still be under way: `on`).
    pub power: String,
    /// What happened, in words.
    pub detail: String,
}

/// `POST /api/v1/systems/{id}/actions/stop`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// `graceful` (the ACPI power button; default) or `force`.
    pub mode: Option<String>,
}

fn console_size(store: &VmStore, id: &str) -> u64 {
    std::fs::metadata(store.serial_log(id))
        .map(|m| m.len())
        .unwrap_or(0)
}

async fn power_action(
    state: Arc<ApiState>,
    id: String,
    action: &'static str,
    mode: Option<String>,
) -> Result<Response, Problem> {
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let report = blocking(move || {
        let config = load(&store, &id)?;
        let boot = st
            .systems
            .clone()
            .unwrap_or_else(|| vmedia_boot::store::BootConfig::new(FsPath::new(".")));
        let (accel, _) = resolve_accel(config.spec.accel, &boot);
        let offset = console_size(&store, &id);
        let detail = match (action, mode.as_deref()) {
            ("start", _) => {
                if store.state(&id).pid().is_some() {
                    "already running".to_string()
                } else {
                    let report = store.start(&id, accel).map_err(boot_problem)?;
                    st.events.boot_began(&id, offset);
                    format!(
                        "started (pid {}, {}, boot order {:?})",
                        report.pid, report.accel, report.boot_order
                    )
                }
            }
            ("stop", None | Some("graceful")) => {
                if store.request_powerdown(&id).map_err(boot_problem)? {
                    "the power button was pressed; the guest shuts down in its own time".into()
                } else {
                    "already stopped".into()
                }
            }
            ("stop", Some("force")) => {
                format!("{:?}", store.kill(&id).map_err(boot_problem)?).to_lowercase()
            }
            ("stop", Some(other)) => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("mode {other:?}: graceful or force"),
                ))
            }
            _ => {
                let how = store.reset(&id, accel).map_err(boot_problem)?;
                st.events.boot_began(&id, offset);
                format!("{how:?}").to_lowercase()
            }
        };
        st.events.record(&id, action, &detail);
        let power = if store.state(&id).pid().is_some() {
            "on"
        } else {
            "off"
        };
        Ok(ActionReport {
            id,
            power: power.into(),
            detail,
        })
    })
    .await?;
    Ok(Json(report).into_response())
}

/// Starts the system (its boot override, if once, is used and cleared).
#[utoipa::path(post, path = "/api/v1/systems/{id}/actions/start", tag = "systems",
    params(("id" = String, Path)),
    responses((status = 200, body = ActionReport),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 500, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn system_start(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    power_action(state, id, "start", None).await
}

/// Stops the system: `graceful` presses the ACPI power button, `force` ends QEMU.
#[utoipa::path(post, path = "/api/v1/systems/{id}/actions/stop", tag = "systems",
    params(("id" = String, Path)), request_body = StopRequest,
    responses((status = 200, body = ActionReport),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn system_stop(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Option<Json<StopRequest>>,
) -> Result<Response, Problem> {
    let mode = body.and_then(|Json(b)| b.mode);
    power_action(state, id, "stop", mode).await
}

/// A hard reset (a stopped system starts; a waiting one-time override restarts QEMU).
#[utoipa::path(post, path = "/api/v1/systems/{id}/actions/reset", tag = "systems",
    params(("id" = String, Path)),
    responses((status = 200, body = ActionReport),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn system_reset(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    power_action(state, id, "reset", None).await
}

/// `POST /api/v1/systems/{id}/media`: one of `image` or `url`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaRequest {
    /// A library image: `NAME`, `NAME@V`, `NAME@current`, `NAME@sha256:...`.
    pub image: Option<String>,
    /// An http(s) URL QEMU reads itself.
    pub url: Option<String>,
    /// The CD slot (default 0).
    #[serde(default)]
    pub slot: usize,
}

/// Inserts media: a library version (it becomes the system's attachment) or an http(s) URL.
#[utoipa::path(post, path = "/api/v1/systems/{id}/media", tag = "systems",
    params(("id" = String, Path)), request_body = MediaRequest,
    responses((status = 200, body = System, headers(("ETag" = String))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 409, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn media_insert(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
    body: Result<Json<MediaRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let system = blocking(move || {
        load(&store, &id)?;
        match (&request.image, &request.url) {
            (Some(image), None) => {
                let action = format!("POST /api/v1/systems/{id}/media");
                let pinned = pin(&st, &who, &peer.addr, &action, image)?;
                attach_one(&st, &store, &who, &id, &pinned, request.slot)?;
            }
            (None, Some(url)) => {
                let parsed = RemoteUrl::parse(url).map_err(boot_problem)?;
                if !matches!(parsed, RemoteUrl::Http { .. }) {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "url: http:// or https:// (library images go in by \"image\")",
                    ));
                }
                let medium = Medium::Remote(Remote {
                    url: parsed,
                    tls_verify: true,
                });
                store
                    .insert_medium(&id, request.slot, &medium, None)
                    .map_err(boot_problem)?;
                if st
                    .attachments
                    .get(&id)
                    .is_some_and(|a| a.slot == request.slot)
                {
                    st.attachments.remove(&id)?;
                }
                st.events.record(&id, "insert", url);
            }
            _ => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "give exactly one of \"image\" (a library version) or \"url\"",
                ))
            }
        }
        let config = store.load(&id).map_err(boot_problem)?;
        Ok(system_body(&st, &store, &config))
    })
    .await?;
    Ok(with_etag(StatusCode::OK, system))
}

/// `?slot=`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SlotQuery {
    /// The CD slot (default 0).
    pub slot: Option<usize>,
}

/// Ejects the medium of a CD slot (and drops the attachment in it).
#[utoipa::path(delete, path = "/api/v1/systems/{id}/media", tag = "systems",
    params(("id" = String, Path), SlotQuery),
    responses((status = 200, body = System, headers(("ETag" = String))),
        (status = 404, body = ErrorBody, content_type = "application/problem+json"),
        (status = 409, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn media_eject(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    query: Result<Query<SlotQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query?;
    let slot = query.slot.unwrap_or(0);
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let system = blocking(move || {
        load(&store, &id)?;
        if st.attachments.get(&id).is_some_and(|a| a.slot == slot) {
            detach_one(&st, &store, &id)?;
        } else {
            store.eject(&id, slot, true).map_err(boot_problem)?;
            st.events.record(&id, "eject", &format!("CD slot {slot}"));
        }
        let config = store.load(&id).map_err(boot_problem)?;
        Ok(system_body(&st, &store, &config))
    })
    .await?;
    Ok(with_etag(StatusCode::OK, system))
}

/// The attached library version's bytes (Range, ETag), through the daemon's shared cache.
#[utoipa::path(get, path = "/api/v1/systems/{id}/media/content", tag = "systems",
    params(("id" = String, Path), ("Range" = Option<String>, Header, description = "bytes=START-END")),
    responses((status = 200, description = "The attached image", content_type = "application/octet-stream"),
        (status = 206, description = "The requested ranges"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn media_content(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    validate_name(&id).map_err(boot_problem)?;
    let attachment = state.attachments.get(&id).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("system {id} has no library image attached"),
        )
    })?;
    super::access::require(
        &state,
        &who,
        &peer.addr,
        &format!("GET /api/v1/systems/{id}/media/content"),
        &attachment.item,
    )?;
    Ok(crate::http::images::image(
        State(Arc::clone(&state.app)),
        Extension(peer),
        // The version itself: the attachment's names may be capabilities for the VM.
        Path(format!("{}@{}", attachment.item, attachment.version)),
        method,
        headers,
    )
    .await)
}

/// `?offset=&limit=`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsoleQuery {
    /// Byte offset in the console log (the previous answer's `next`); default 0.
    pub offset: Option<u64>,
    /// Bytes to return (default 64 KiB, at most 1 MiB).
    pub limit: Option<u64>,
}

/// A piece of the serial console log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsoleChunk {
    pub offset: u64,
    /// Where the next read starts.
    pub next: u64,
    /// The log's size now.
    pub size: u64,
    /// The bytes, as UTF-8 (invalid sequences replaced).
    pub text: String,
    pub running: bool,
}

fn read_console(
    store: &VmStore,
    id: &str,
    offset: u64,
    limit: u64,
) -> Result<ConsoleChunk, Problem> {
    let path = store.serial_log(id);
    let running = store.state(id).pid().is_some();
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConsoleChunk {
                offset,
                next: offset,
                size: 0,
                text: String::new(),
                running,
            })
        }
        Err(e) => {
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}: {e}", path.display()),
            ))
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.min(size);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.take(limit).read_to_end(&mut bytes))
        .map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}: {e}", path.display()),
            )
        })?;
    // Stop before a UTF-8 sequence cut at the end: the next read gets it whole.
    let mut keep = bytes.len();
    if let Err(e) = std::str::from_utf8(&bytes) {
        if e.error_len().is_none() {
            keep = e.valid_up_to();
        }
    }
    bytes.truncate(keep);
    Ok(ConsoleChunk {
        offset: start,
        next: start + bytes.len() as u64,
        size,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        running,
    })
}

/// The serial console log from `offset`; with `Accept: text/event-stream` it is followed live
/// (events `console`, data a `ConsoleChunk`).
#[utoipa::path(get, path = "/api/v1/systems/{id}/console", tag = "systems",
    params(("id" = String, Path), ConsoleQuery),
    responses((status = 200, body = ConsoleChunk,
            description = "A chunk; or, with Accept: text/event-stream, a stream of them"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn console(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ConsoleQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(CONSOLE_DEFAULT).clamp(1, CONSOLE_MAX);
    let offset = query.offset.unwrap_or(0);
    let store = state.vm_store()?;
    let name = id.clone();
    let store = blocking(move || {
        load(&store, &name)?;
        Ok(store)
    })
    .await?;
    let follow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !follow {
        let chunk = blocking(move || read_console(&store, &id, offset, limit)).await?;
        return Ok(Json(chunk).into_response());
    }
    let store = Arc::new(store);
    let stream = futures::stream::unfold(offset, move |at| {
        let store = Arc::clone(&store);
        let id = id.clone();
        async move {
            loop {
                let (store2, id2) = (Arc::clone(&store), id.clone());
                let chunk = blocking(move || read_console(&store2, &id2, at, limit)).await;
                match chunk {
                    Ok(chunk) if chunk.next > at => {
                        let next = chunk.next;
                        let event = Event::default()
                            .event("console")
                            .json_data(&chunk)
                            .unwrap_or_default();
                        return Some((Ok::<_, std::convert::Infallible>(event), next));
                    }
                    Ok(_) => tokio::time::sleep(CONSOLE_POLL).await,
                    Err(_) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Where a boot stage first showed in the console log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsolePhase {
    /// `first_output`, `firmware_handover`, `kernel_output`.
    pub phase: String,
    /// Byte offset in the console log (near: the scan goes in 4 KiB steps).
    pub offset: u64,
}

/// The console part of a boot timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BootConsole {
    /// Where this boot's output starts in the log, and how many bytes it printed.
    pub start: u64,
    pub bytes: u64,
    pub phases: Vec<ConsolePhase>,
}

/// The last boot's timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BootTimeline {
    pub id: String,
    pub running: bool,
    /// When this daemon last started or reset it (RFC 3339); null when it has not.
    pub started: Option<String>,
    /// What the API did to it since then.
    pub events: Vec<SystemEvent>,
    pub console: BootConsole,
}

/// Console bytes scanned for the timeline at most (the stages come early in a boot).
const TIMELINE_SCAN: u64 = 8 << 20;

fn console_phases(store: &VmStore, id: &str, start: u64) -> Result<BootConsole, Problem> {
    let mut watch = vmedia_boot::console::ConsoleWatch::watching(None, std::time::Instant::now());
    let mut phases = Vec::new();
    let mut at = start;
    let mut seen = [false; 3];
    let size = console_size(store, id);
    while at < size.min(start.saturating_add(TIMELINE_SCAN)) {
        let chunk = read_console(store, id, at, 4096)?;
        if chunk.next <= at {
            break;
        }
        let base = std::time::Instant::now();
        watch.feed(chunk.text.as_bytes(), base);
        let timeline = watch.timeline();
        for (n, (name, hit)) in [
            ("first_output", timeline.first_output.is_some()),
            ("firmware_handover", timeline.firmware_handover.is_some()),
            ("kernel_output", timeline.kernel_output.is_some()),
        ]
        .into_iter()
        .enumerate()
        {
            if hit && !seen[n] {
                seen[n] = true;
                phases.push(ConsolePhase {
                    phase: name.into(),
                    offset: at,
                });
            }
        }
        at = chunk.next;
    }
    Ok(BootConsole {
        start,
        bytes: size.saturating_sub(start),
        phases,
    })
}

/// The last boot's timeline: when this daemon started it, what was done since, and where the
/// boot stages showed in its console.
#[utoipa::path(get, path = "/api/v1/systems/{id}/boot", tag = "systems",
    params(("id" = String, Path)),
    responses((status = 200, body = BootTimeline),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn boot_timeline(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let store = state.vm_store()?;
    let st = Arc::clone(&state);
    let timeline = blocking(move || {
        load(&store, &id)?;
        let last = st.events.last_boot(&id);
        let start = last.as_ref().map_or(0, |(_, offset)| *offset);
        let console = console_phases(&store, &id, start)?;
        let started = last.map(|(time, _)| time);
        Ok(BootTimeline {
            running: store.state(&id).pid().is_some(),
            events: st.events.since_boot(&id, started.as_deref()),
            started,
            console,
            id,
        })
    })
    .await?;
    Ok(Json(timeline).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmedia_boot::spec::BootDevice;

    #[test]
    fn selectors_need_key_value_pairs_and_match_all() {
        let s = Selector::parse("rack=a, role=web").unwrap();
        let mut labels = BTreeMap::new();
        labels.insert("rack".to_string(), "a".to_string());
        assert!(!s.matches(&labels));
        labels.insert("role".to_string(), "web".to_string());
        assert!(s.matches(&labels));
        for bad in ["", "rack", "=a", "rack=a,", "ra ck=a", "k=v=w", "k=\u{7}"] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overrides_need_a_target_and_uefihttp_needs_uefi() {
        let body = |mode: &str, target: Option<&str>| BootOverrideBody {
            mode: mode.into(),
            target: target.map(str::to_string),
            firmware: None,
        };
        assert_eq!(
            wanted_override(&body("once", Some("cd")), Firmware::Bios).unwrap(),
            BootOverride::Once(BootDevice::Cdrom)
        );
        assert_eq!(
            wanted_override(&body("disabled", None), Firmware::Bios).unwrap(),
            BootOverride::Disabled
        );
        assert!(wanted_override(&body("once", None), Firmware::Bios).is_err());
        assert!(wanted_override(&body("once", Some("uefihttp")), Firmware::Bios).is_err());
        assert_eq!(
            wanted_override(&body("continuous", Some("uefihttp")), Firmware::Uefi).unwrap(),
            BootOverride::Continuous(BootDevice::Net)
        );
        assert!(wanted_override(&body("sometimes", Some("cd")), Firmware::Bios).is_err());
    }
}

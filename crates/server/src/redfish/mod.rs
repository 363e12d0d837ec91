//! DMTF Redfish for the VMs the `vm` commands manage: service root, sessions and HTTP Basic,
//! accounts and roles, systems (power, reset, boot override with ETags), managers and systems
//! with virtual media (inserted by URL, read by QEMU itself), chassis and the task service.
//! Mounted on the daemon's HTTPS listener only; every VM store call runs off the async workers.

mod error;
mod media;
mod resources;
mod systems;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use vmedia_boot::managed::VmStore;
use vmedia_boot::store::BootConfig;

use crate::auth::{Authenticate, Principal, Role};
pub use error::{RedfishError, BASE_REGISTRY};

/// The Redfish protocol version this service follows (DSP0266).
pub const REDFISH_VERSION: &str = "1.11.0";
/// A Redfish request body larger than this is not a Redfish request (the largest, an
/// InsertMedia with a long URL and a login, is a few KiB).
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// What the Redfish service needs from the daemon.
#[derive(Debug, Clone)]
pub struct Context {
    /// The VM store the systems are (the `vm` commands' state folder and emulator).
    pub vms: BootConfig,
}

/// What InsertMedia needs to hand a VM a restricted library image of this daemon: the
/// capability gate and the API state (access rules, audit log, the plain HTTP port's address).
#[derive(Clone)]
pub struct MediaAccess {
    pub gate: Arc<crate::http::gate::MediaGate>,
    pub api: Arc<crate::api::ApiState>,
}

/// A session opened through the SessionService: who, under which id.
#[derive(Debug, Clone)]
struct SessionRecord {
    who: Principal,
}

/// What the handlers share.
pub(crate) struct Service {
    pub(crate) boot: BootConfig,
    pub(crate) auth: Arc<dyn Authenticate>,
    /// None: image URLs are passed on as given (no daemon images to sign).
    pub(crate) media: Option<MediaAccess>,
    sessions: Mutex<BTreeMap<String, SessionRecord>>,
}

impl Service {
    pub(crate) fn store(&self) -> VmStore {
        VmStore::new(&self.boot)
    }

    /// Runs VM store work on the blocking pool (it reads files, waits on QEMU and QMP).
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, job: F) -> Result<T, RedfishError>
    where
        T: Send + 'static,
        F: FnOnce(&VmStore, &BootConfig) -> Result<T, RedfishError> + Send + 'static,
    {
        let service = Arc::clone(self);
        tokio::task::spawn_blocking(move || job(&service.store(), &service.boot))
            .await
            .map_err(|e| RedfishError::Internal(e.to_string()))?
    }
}

pub(crate) type Shared = Arc<Service>;

/// The Redfish routes (`/redfish` and everything under it).
pub fn router(ctx: Context, auth: Arc<dyn Authenticate>) -> Router {
    router_with_media(ctx, auth, None)
}

/// `router`, with InsertMedia turning this daemon's restricted library images into signed URLs.
pub fn router_with_media(
    ctx: Context,
    auth: Arc<dyn Authenticate>,
    media: Option<MediaAccess>,
) -> Router {
    let service: Shared = Arc::new(Service {
        boot: ctx.vms,
        auth,
        media,
        sessions: Mutex::new(BTreeMap::new()),
    });
    Router::new()
        .route("/redfish", get(resources::versions))
        .route("/redfish/v1", get(resources::service_root))
        .route("/redfish/v1/", get(resources::service_root))
        .route("/redfish/v1/$metadata", get(resources::metadata))
        .route("/redfish/v1/odata", get(resources::odata))
        .route(
            "/redfish/v1/SessionService",
            get(resources::session_service),
        )
        .route(
            "/redfish/v1/SessionService/Sessions",
            get(sessions).post(login),
        )
        .route(
            "/redfish/v1/SessionService/Sessions/{id}",
            get(session).delete(logout),
        )
        .route(
            "/redfish/v1/AccountService",
            get(resources::account_service),
        )
        .route("/redfish/v1/AccountService/Accounts", get(accounts))
        .route("/redfish/v1/AccountService/Accounts/{id}", get(account))
        .route("/redfish/v1/AccountService/Roles", get(resources::roles))
        .route(
            "/redfish/v1/AccountService/Roles/{id}",
            get(resources::role),
        )
        .route("/redfish/v1/TaskService", get(resources::task_service))
        .route("/redfish/v1/TaskService/Tasks", get(resources::tasks))
        .route("/redfish/v1/Systems", get(systems::collection))
        .route(
            "/redfish/v1/Systems/{id}",
            get(systems::system).patch(systems::patch_system),
        )
        .route(
            "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
            post(systems::reset),
        )
        .route("/redfish/v1/Chassis", get(systems::chassis_collection))
        .route("/redfish/v1/Chassis/{id}", get(systems::chassis))
        .route("/redfish/v1/Managers", get(systems::manager_collection))
        .route("/redfish/v1/Managers/{id}", get(systems::manager))
        .merge(media_routes("Systems"))
        .merge(media_routes("Managers"))
        .route("/redfish/{*rest}", axum::routing::any(not_found))
        .layer(middleware::from_fn_with_state(Arc::clone(&service), gate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

/// Virtual media under `/redfish/v1/{kind}/{id}` (Systems and Managers alike).
fn media_routes(kind: &str) -> Router<Shared> {
    let base = format!("/redfish/v1/{kind}/{{id}}/VirtualMedia");
    Router::new()
        .route(&base, get(media::collection))
        .route(&format!("{base}/{{device}}"), get(media::resource))
        .route(
            &format!("{base}/{{device}}/Actions/VirtualMedia.InsertMedia"),
            post(media::insert),
        )
        .route(
            &format!("{base}/{{device}}/Actions/VirtualMedia.EjectMedia"),
            post(media::eject),
        )
}

async fn not_found(request: Request) -> Response {
    RedfishError::NotFound(request.uri().path().to_string()).into_response()
}

/// Resources anyone may read (the protocol says so: clients discover the service with them).
fn is_public(method: &Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    (*method == Method::GET || *method == Method::HEAD)
        && matches!(
            path,
            "/redfish" | "/redfish/v1" | "/redfish/v1/$metadata" | "/redfish/v1/odata"
        )
        || (*method == Method::POST && path == "/redfish/v1/SessionService/Sessions")
}

/// Authenticates every request (X-Auth-Token, then HTTP Basic), refuses changes from a role that
/// may not make them, and puts the principal in the request for the handlers.
async fn gate(State(service): State<Shared>, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = if is_public(&method, &path) {
        next.run(request).await
    } else {
        match who(&service, request.headers()) {
            None => RedfishError::NoValidSession.into_response(),
            Some(principal) => {
                let changes = !matches!(method, Method::GET | Method::HEAD);
                // Anyone may end a session (the handler checks it is theirs).
                let logout = method == Method::DELETE
                    && path.starts_with("/redfish/v1/SessionService/Sessions/");
                if changes && !logout && !principal.role.may_change() {
                    RedfishError::InsufficientPrivilege.into_response()
                } else {
                    request.extensions_mut().insert(principal);
                    next.run(request).await
                }
            }
        }
    };
    response
        .headers_mut()
        .insert("OData-Version", HeaderValue::from_static("4.0"));
    response
}

fn who(service: &Service, headers: &HeaderMap) -> Option<Principal> {
    if let Some(token) = headers.get("X-Auth-Token").and_then(|v| v.to_str().ok()) {
        return service.auth.token(token.trim());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = decode_base64(rest.trim())?;
        let text = String::from_utf8(decoded).ok()?;
        let (name, password) = text.split_once(':')?;
        service.auth.password(name, password)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        service.auth.token(rest.trim())
    } else {
        None
    }
}

/// Standard base64 (RFC 4648 section 4, padding optional); None on any other byte.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for chunk in text.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut bits = 0u32;
        for (n, c) in chunk.iter().enumerate() {
            bits |= value(*c)? << (18 - 6 * n);
        }
        out.push((bits >> 16) as u8);
        if chunk.len() > 2 {
            out.push((bits >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(bits as u8);
        }
    }
    Some(out)
}

/// A JSON body that must be an object; anything else is MalformedJSON.
pub(crate) fn object_body(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<serde_json::Map<String, Value>, RedfishError> {
    match body {
        Ok(Json(Value::Object(map))) => Ok(map),
        Ok(Json(_)) => Err(RedfishError::MalformedJson(
            "the body must be a JSON object".into(),
        )),
        Err(rejection) => Err(RedfishError::MalformedJson(rejection.body_text())),
    }
}

/// A Redfish role id for a vmedia role (the three standard predefined roles).
pub(crate) fn role_id(role: Role) -> &'static str {
    match role {
        Role::Administrator => "Administrator",
        Role::Operator => "Operator",
        Role::Readonly => "ReadOnly",
    }
}

const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

fn session_body(id: &str, record: &SessionRecord) -> Value {
    json!({
        "@odata.type": "#Session.v1_3_0.Session",
        "@odata.id": format!("{SESSIONS}/{id}"),
        "Id": id,
        "Name": format!("Session of {}", record.who.name),
        "UserName": record.who.name,
        "Password": null,
        "SessionType": "Redfish",
    })
}

async fn login(
    State(service): State<Shared>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, RedfishError> {
    let body = object_body(body)?;
    let field = |name: &str| -> Result<String, RedfishError> {
        body.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| RedfishError::ActionParameterMissing {
                action: "Session creation".into(),
                parameter: name.into(),
            })
    };
    let (name, password) = (field("UserName")?, field("Password")?);
    let auth = Arc::clone(&service.auth);
    // Password checks hash on purpose (argon2): keep them off the async workers.
    let principal = tokio::task::spawn_blocking(move || auth.password(&name, &password))
        .await
        .map_err(|e| RedfishError::Internal(e.to_string()))?
        .ok_or(RedfishError::LoginFailed)?;
    let (id, token) = service.auth.open_session(&principal);
    let record = SessionRecord { who: principal };
    let body = session_body(&id, &record);
    service
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), record);
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(token) = HeaderValue::from_str(&token) {
        headers.insert("X-Auth-Token", token);
    }
    if let Ok(location) = HeaderValue::from_str(&format!("{SESSIONS}/{id}")) {
        headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn sessions(State(service): State<Shared>) -> Json<Value> {
    let ids: Vec<String> = service
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    Json(resources::collection_body(
        "SessionCollection",
        SESSIONS,
        "Sessions",
        ids.iter().map(|id| format!("{SESSIONS}/{id}")),
    ))
}

async fn session(
    State(service): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, RedfishError> {
    let sessions = service.sessions.lock().unwrap_or_else(|p| p.into_inner());
    let record = sessions
        .get(&id)
        .ok_or_else(|| RedfishError::NotFound(format!("{SESSIONS}/{id}")))?;
    Ok(Json(session_body(&id, record)))
}

async fn logout(
    State(service): State<Shared>,
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Principal>,
) -> Result<StatusCode, RedfishError> {
    let mut sessions = service.sessions.lock().unwrap_or_else(|p| p.into_inner());
    let record = sessions
        .get(&id)
        .ok_or_else(|| RedfishError::NotFound(format!("{SESSIONS}/{id}")))?;
    if record.who.name != caller.name && !caller.role.may_administer() {
        return Err(RedfishError::InsufficientPrivilege);
    }
    sessions.remove(&id);
    drop(sessions);
    service.auth.close_session(&id);
    Ok(StatusCode::NO_CONTENT)
}

const ACCOUNTS: &str = "/redfish/v1/AccountService/Accounts";

/// The accounts a caller can see: its own (the user store lists no one else to Redfish yet).
async fn accounts(axum::Extension(caller): axum::Extension<Principal>) -> Json<Value> {
    Json(resources::collection_body(
        "ManagerAccountCollection",
        ACCOUNTS,
        "Accounts",
        std::iter::once(format!("{ACCOUNTS}/{}", caller.name)),
    ))
}

async fn account(
    Path(id): Path<String>,
    axum::Extension(caller): axum::Extension<Principal>,
) -> Result<Json<Value>, RedfishError> {
    if id != caller.name {
        return Err(RedfishError::NotFound(format!("{ACCOUNTS}/{id}")));
    }
    let role = role_id(caller.role);
    Ok(Json(json!({
        "@odata.type": "#ManagerAccount.v1_4_0.ManagerAccount",
        "@odata.id": format!("{ACCOUNTS}/{id}"),
        "Id": id,
        "Name": format!("Account {id}"),
        "UserName": caller.name,
        "RoleId": role,
        "Enabled": true,
        "Locked": false,
        "Password": null,
        "AccountTypes": ["Redfish"],
        "Links": {"Role": {"@odata.id": format!("/redfish/v1/AccountService/Roles/{role}")}},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_basic_credentials() {
        assert_eq!(
            decode_base64("YWRtaW46c2VjcmV0").unwrap(),
            b"admin:secret".to_vec()
        );
        assert_eq!(decode_base64("YQ==").unwrap(), b"a".to_vec());
        assert!(decode_base64("Y").is_none());
        assert!(decode_base64("a b!").is_none());
    }

    #[test]
    fn only_discovery_and_login_are_public() {
        assert!(is_public(&Method::GET, "/redfish/v1/"));
        assert!(is_public(&Method::GET, "/redfish/v1/$metadata"));
        assert!(is_public(
            &Method::POST,
            "/redfish/v1/SessionService/Sessions"
        ));
        assert!(!is_public(&Method::GET, "/redfish/v1/Systems"));
        assert!(!is_public(
            &Method::DELETE,
            "/redfish/v1/SessionService/Sessions/1"
        ));
        assert!(!is_public(&Method::POST, "/redfish/v1/"));
    }
}

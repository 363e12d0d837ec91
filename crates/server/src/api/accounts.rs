//! Accounts: who am I, users and API tokens (administrators), sessions (log in with a name and
//! password for a bearer token, log out), and the audit log (administrators).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{blocking, page_response, paginate, ApiState, PageQuery, Problem};
use crate::audit::{AuditRecord, Outcome};
use crate::auth::{NewToken, Principal, Role, TokenInfo, UserInfo};
use crate::http::{ErrorBody, Peer};

/// Who the credentials of this request belong to.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
    /// May change media, systems and the library.
    pub may_change: bool,
    /// May manage users and read the audit log.
    pub may_administer: bool,
}

fn administrator(who: &Principal) -> Result<(), Problem> {
    super::require_administrator(who, "manage accounts and read the audit log")
}

/// The caller's name and role.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "accounts",
    responses((status = 200, body = WhoAmI),
        (status = 401, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn whoami(Extension(who): Extension<Principal>) -> Response {
    Json(WhoAmI {
        may_change: who.role.may_change(),
        may_administer: who.role.may_administer(),
        name: who.name,
        role: who.role,
    })
    .into_response()
}

/// Every user (administrators).
#[utoipa::path(get, path = "/api/v1/users", tag = "accounts",
    responses((status = 200, body = Vec<UserInfo>),
        (status = 403, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn users_list(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
) -> Result<Response, Problem> {
    administrator(&who)?;
    Ok(Json(state.users.users()).into_response())
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
    pub password: String,
}

/// Adds a user (administrators).
#[utoipa::path(post, path = "/api/v1/users", tag = "accounts",
    request_body = NewUser,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = UserInfo, headers(("Location" = String))),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json"),
        (status = 409, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn users_add(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<Response, Problem> {
    administrator(&who)?;
    let Json(user) = body?;
    let users = Arc::clone(&state.users);
    let info = blocking(move || Ok(users.add_user(&user.name, user.role, &user.password)?)).await?;
    let location = format!("/api/v1/users/{}", info.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(info),
    )
        .into_response())
}

/// Removes a user with its tokens and sessions (administrators).
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "accounts",
    params(("name" = String, Path)),
    responses((status = 204, description = "Removed"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn users_remove(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    administrator(&who)?;
    let users = Arc::clone(&state.users);
    blocking(move || Ok(users.remove_user(&name)?)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every API token, without secrets (administrators).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "accounts",
    responses((status = 200, body = Vec<TokenInfo>),
        (status = 403, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn tokens_list(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
) -> Result<Response, Problem> {
    administrator(&who)?;
    Ok(Json(state.users.tokens()).into_response())
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The name requests with the token are recorded under.
    pub name: String,
    pub role: Role,
    /// Lifetime in seconds; without, the token lasts until revoked.
    pub expires_in: Option<u64>,
}

/// Creates an API token (administrators); its secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "accounts",
    request_body = TokenRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = NewToken),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn tokens_create(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    administrator(&who)?;
    let Json(request) = body?;
    let users = Arc::clone(&state.users);
    let token = blocking(move || {
        Ok(users.create_token(
            &request.name,
            request.role,
            request.expires_in.map(std::time::Duration::from_secs),
        )?)
    })
    .await?;
    let location = format!("/api/v1/tokens/{}", token.info.id);
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
        Json(token),
    )
        .into_response())
}

/// Revokes an API token (administrators).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "accounts",
    params(("id" = String, Path)),
    responses((status = 204, description = "Revoked"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn tokens_revoke(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    administrator(&who)?;
    let users = Arc::clone(&state.users);
    blocking(move || Ok(users.revoke_token(&id)?)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/sessions`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub name: String,
    pub password: String,
}

/// A session: send `token` as `Authorization: Bearer TOKEN`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    pub id: String,
    pub token: String,
    pub name: String,
    pub role: Role,
}

/// Logs in with a name and password (no other credentials needed); failures are
/// rate-limited per name.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "accounts", security(()),
    request_body = Login,
    responses((status = 201, body = SessionInfo, headers(("Location" = String))),
        (status = 401, body = ErrorBody, content_type = "application/problem+json"),
        (status = 429, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn session_login(
    State(state): State<Arc<ApiState>>,
    peer: Option<Extension<Peer>>,
    body: Result<Json<Login>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(login) = body?;
    let peer = peer
        .map(|Extension(p)| p.addr)
        .unwrap_or_else(|| "-".into());
    if state.users.login_blocked(&format!("user:{}", login.name)) {
        state.audit.record(
            None,
            &peer,
            "session.login",
            &login.name,
            Outcome::Denied,
            Some("too many failed logins"),
        );
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins for this name; wait a minute",
        )
        .with_header(header::RETRY_AFTER, "60".into()));
    }
    let auth = Arc::clone(&state.auth);
    let name = login.name.clone();
    let opened = blocking(move || {
        Ok(auth.password(&login.name, &login.password).map(|who| {
            let (id, token) = auth.open_session(&who);
            (who, id, token)
        }))
    })
    .await?;
    let Some((who, id, token)) = opened else {
        state.audit.record(
            None,
            &peer,
            "session.login",
            &name,
            Outcome::Denied,
            Some("bad credentials"),
        );
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unknown name or wrong password",
        ));
    };
    state.audit.record(
        Some(&who),
        &peer,
        "session.login",
        &who.name,
        Outcome::Success,
        None,
    );
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/api/v1/sessions/{id}")),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
        Json(SessionInfo {
            id,
            token,
            name: who.name,
            role: who.role,
        }),
    )
        .into_response())
}

/// Logs out: ends a session (one's own, or any for administrators).
#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "accounts",
    params(("id" = String, Path)),
    responses((status = 204, description = "Ended"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json"),
        (status = 404, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn session_logout(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let auth = Arc::clone(&state.auth);
    let owner = state.users.session_owner(&id);
    match owner {
        None => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no such session: {}",
                    id.chars().take(40).collect::<String>()
                ),
            ))
        }
        Some(owner) if owner != who.name && !who.role.may_administer() => {
            return Err(Problem::forbidden("that session is not yours"))
        }
        Some(_) => {}
    }
    blocking(move || {
        if auth.close_session(&id) {
            Ok(())
        } else {
            Err(Problem::new(StatusCode::NOT_FOUND, "no such session"))
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/audit`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    /// Only this user's records.
    pub user: Option<String>,
    /// Only records whose target contains this.
    pub target: Option<String>,
    /// Only records about this library item (target `NAME` or `NAME@...`).
    pub item: Option<String>,
    /// Only records at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only records at or before this time (RFC 3339).
    pub until: Option<String>,
    /// `success`, `denied` or `failed`.
    pub outcome: Option<Outcome>,
}

/// A page of audit records, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditRecord>,
    pub next: Option<String>,
}

/// The audit log (administrators): every change and every refused attempt.
#[utoipa::path(get, path = "/api/v1/audit", tag = "accounts", params(AuditQuery),
    responses((status = 200, body = AuditPage),
        (status = 400, body = ErrorBody, content_type = "application/problem+json"),
        (status = 403, body = ErrorBody, content_type = "application/problem+json")))]
pub async fn audit_list(
    State(state): State<Arc<ApiState>>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    administrator(&who)?;
    let Query(query) = query?;
    let time = |name: &str, value: &Option<String>| match value {
        Some(text) => text
            .parse::<jiff::Timestamp>()
            .map(Some)
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("{name} {text:?}: {e}"))),
        None => Ok(None),
    };
    let since = time("since", &query.since)?;
    let until = time("until", &query.until)?;
    let page = PageQuery {
        limit: query.limit,
        cursor: query.cursor.clone(),
    };
    let audit = Arc::clone(&state.audit);
    let (items, next) = blocking(move || {
        let records = audit
            .read()
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let kept: Vec<(u64, AuditRecord)> = records
            .into_iter()
            .filter(|(_, r)| query.user.as_ref().is_none_or(|u| &r.user == u))
            .filter(|(_, r)| {
                query
                    .target
                    .as_ref()
                    .is_none_or(|t| r.target.contains(t.as_str()))
            })
            .filter(|(_, r)| query.outcome.is_none_or(|o| r.outcome == o))
            .filter(|(_, r)| {
                query.item.as_ref().is_none_or(|item| {
                    r.target == *item
                        || r.target
                            .strip_prefix(item.as_str())
                            .is_some_and(|rest| rest.starts_with('@'))
                })
            })
            .filter(|(_, r)| {
                until.is_none_or(|u| r.time.parse::<jiff::Timestamp>().is_ok_and(|t| t <= u))
            })
            .filter(|(_, r)| {
                since.is_none_or(|s| r.time.parse::<jiff::Timestamp>().is_ok_and(|t| t >= s))
            })
            .collect();
        let (page, next) = paginate(kept, |(at, _)| format!("{at:020}"), &page)?;
        Ok((page.into_iter().map(|(_, r)| r).collect::<Vec<_>>(), next))
    })
    .await?;
    Ok(page_response(
        "/api/v1/audit",
        raw.as_deref(),
        next,
        |next| AuditPage { items, next },
    ))
}

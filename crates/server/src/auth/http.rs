//! The authentication middleware of `/api/v1` on HTTPS: `Authorization: Bearer TOKEN` (API
//! tokens, session tokens) or `Basic` (user and password). It puts the `Principal` in the
//! request's extensions, refuses readonly principals on every method that changes something
//! (403), rate-limits failed password attempts per client address (429), and writes every change and
//! every refusal to the audit log. Credentials are never logged or recorded.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::store::FailureLimiter;
use super::{Authenticate, Principal};
use crate::audit::{AuditLog, Outcome};
use crate::http::{error_response, Peer};

/// Routes reachable without credentials: the API description and the login itself.
pub const PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("POST", "/api/v1/sessions"),
];

/// Longest `Authorization` header value considered (a token or Basic pair is far shorter).
const MAX_AUTHORIZATION: usize = 4096;

/// What the middleware needs.
#[derive(Clone)]
pub struct AuthLayer {
    pub auth: Arc<dyn Authenticate>,
    pub audit: Arc<AuditLog>,
    pub failures: Arc<FailureLimiter>,
}

/// Does `method` change something? Everything but the safe methods does.
pub fn mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The client's address without the port (what failures are counted by).
pub fn client_ip(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => peer,
    }
}

enum Credentials {
    None,
    Bearer(String),
    Basic(String, String),
    Malformed,
}

fn credentials(request: &Request) -> Credentials {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let Ok(text) = value.to_str() else {
        return Credentials::Malformed;
    };
    if text.len() > MAX_AUTHORIZATION {
        return Credentials::Malformed;
    }
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Credentials::Bearer(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        if let Some((name, password)) = decoded.as_deref().and_then(|t| t.split_once(':')) {
            return Credentials::Basic(name.to_string(), password.to_string());
        }
    }
    Credentials::Malformed
}

fn unauthorized(message: &str) -> Response {
    let mut response = error_response(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"vmedia\", Basic realm=\"vmedia\""),
    );
    response
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn authenticate(
    State(layer): State<AuthLayer>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<Peer>()
        .map(|p| p.addr.clone())
        .unwrap_or_else(|| "-".into());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let action = format!("{method} {path}");
    if PUBLIC_ROUTES
        .iter()
        .any(|(m, p)| method.as_str() == *m && path == *p)
    {
        return next.run(request).await;
    }
    let ip_key = format!("ip:{}", client_ip(&peer));
    let found: Option<Principal> = match credentials(&request) {
        Credentials::None => {
            layer.audit.record(
                None,
                &peer,
                &action,
                &path,
                Outcome::Denied,
                Some("no credentials"),
            );
            return unauthorized("sign in: send Authorization: Bearer TOKEN or Basic");
        }
        Credentials::Malformed => None,
        // Tokens carry 256 random bits: guessing is hopeless, so they are not rate-limited
        // (and a guesser cannot lock out the tokens of others behind the same address).
        Credentials::Bearer(token) => {
            let auth = Arc::clone(&layer.auth);
            tokio::task::spawn_blocking(move || auth.token(&token))
                .await
                .ok()
                .flatten()
        }
        Credentials::Basic(name, password) => {
            if layer.failures.blocked(&ip_key) {
                layer.audit.record(
                    None,
                    &peer,
                    &action,
                    &path,
                    Outcome::Denied,
                    Some("too many failed logins"),
                );
                let mut response = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed password logins from this address; wait a minute",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
                return response;
            }
            let auth = Arc::clone(&layer.auth);
            let checked = tokio::task::spawn_blocking(move || auth.password(&name, &password))
                .await
                .ok()
                .flatten();
            match &checked {
                Some(_) => layer.failures.succeeded(&ip_key),
                None => layer.failures.failed(&ip_key),
            }
            checked
        }
    };
    let Some(principal) = found else {
        layer.audit.record(
            None,
            &peer,
            &action,
            &path,
            Outcome::Denied,
            Some("bad credentials"),
        );
        return unauthorized("the credentials are unknown, expired or malformed");
    };
    if mutating(&method) && !principal.role.may_change() && !readonly_may(&method, &path) {
        layer.audit.record(
            Some(&principal),
            &peer,
            &action,
            &path,
            Outcome::Denied,
            Some("403 readonly"),
        );
        return error_response(
            StatusCode::FORBIDDEN,
            &format!("{} is readonly: it may not {method} {path}", principal.name),
        );
    }
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    let status = response.status();
    // A replicated chunk is content-addressed and changes nothing anyone sees: the manifest
    // and timeline writes that make it part of a version are the changes recorded.
    let chunk_write = status.is_success() && path.starts_with("/api/v1/store/objects/chunks/");
    if (mutating(&method) || status == StatusCode::FORBIDDEN) && !chunk_write {
        let outcome = if status.is_success() {
            Outcome::Success
        } else if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            Outcome::Denied
        } else {
            Outcome::Failed
        };
        layer.audit.record(
            Some(&principal),
            &peer,
            &action,
            &path,
            outcome,
            Some(status.as_str()),
        );
    }
    response.into_response()
}

/// The one change a readonly principal may make: ending its own session (the handler checks
/// that the session is the caller's).
fn readonly_may(method: &Method, path: &str) -> bool {
    *method == Method::DELETE && path.starts_with("/api/v1/sessions/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_dropped_from_v4_and_v6_peers() {
        assert_eq!(client_ip("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(client_ip("[::1]:5000"), "[::1]");
        assert_eq!(client_ip("-"), "-");
    }

    #[test]
    fn only_safe_methods_are_not_mutating() {
        assert!(!mutating(&Method::GET));
        assert!(!mutating(&Method::HEAD));
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(mutating(&m));
        }
    }
}

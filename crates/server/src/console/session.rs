//! The console's session cookie. A browser logs in through the API's own
//! `POST /api/v1/sessions`; when that request carries `X-Vmedia-Console: 1` the minted session
//! token is moved out of the JSON answer into an `HttpOnly; Secure; SameSite=Strict` cookie, so
//! no script ever holds it. Later requests with the cookie and no `Authorization` header get
//! the token as `Authorization: Bearer`, and the API's authentication, roles and audit apply
//! unchanged. Changes (every method but GET/HEAD/OPTIONS) made with the cookie must also
//! carry `X-Vmedia-Console: 1`, which another site's form or image cannot send: with
//! SameSite=Strict that is the console's protection against cross-site requests.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use crate::auth::http::mutating;
use crate::http::error_response;

/// The cookie holding the session token.
pub const SESSION_COOKIE: &str = "vmedia_session";
/// The header the console sends with every request (and must send with every change).
pub const CONSOLE_HEADER: &str = "x-vmedia-console";
/// Largest login answer read back to move its token (the JSON is a few short fields).
const MAX_LOGIN_ANSWER: usize = 16 << 10;
/// Longest cookie header considered (a session token is 64 characters).
const MAX_COOKIE_HEADER: usize = 8 << 10;

/// The session token in the request's `Cookie` headers, if any.
pub fn session_token(request: &Request) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter(|text| text.len() <= MAX_COOKIE_HEADER)
        .flat_map(|text| text.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()))
}

fn from_console(request: &Request) -> bool {
    request
        .headers()
        .get(CONSOLE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1")
}

fn cookie(token: &str, max_age: Option<u64>) -> Option<HeaderValue> {
    let age = match max_age {
        Some(seconds) => format!("; Max-Age={seconds}"),
        None => String::new(),
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/api/v1; HttpOnly; Secure; SameSite=Strict{age}"
    ))
    .ok()
}

/// The middleware (`axum::middleware::from_fn`) around the HTTPS router.
pub async fn cookie_session(mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if !path.starts_with("/api/v1/") {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let console = from_console(&request);
    if method == Method::POST && path == "/api/v1/sessions" && console {
        return login(request, next).await;
    }
    if request.headers().contains_key(header::AUTHORIZATION) {
        return next.run(request).await;
    }
    let Some(token) = session_token(&request) else {
        return next.run(request).await;
    };
    if mutating(&method) && !console {
        return error_response(
            StatusCode::FORBIDDEN,
            "a change made with the console's session cookie must come from the console \
             (X-Vmedia-Console: 1); scripts and tools send Authorization instead",
        );
    }
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return next.run(request).await;
    };
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let logout = method == Method::DELETE && path.starts_with("/api/v1/sessions/");
    let mut response = next.run(request).await;
    // A logged-out or expired session: the browser forgets the cookie.
    if (logout && response.status().is_success()) || response.status() == StatusCode::UNAUTHORIZED {
        if let Some(clear) = cookie("", Some(0)) {
            response.headers_mut().append(header::SET_COOKIE, clear);
        }
    }
    response
}

/// `POST /api/v1/sessions` from the console: the API logs in; the token goes into the cookie
/// and is blanked in the body the page sees.
async fn login(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() != StatusCode::CREATED {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_LOGIN_ANSWER)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the login answer could not be read; try again",
            )
        }
    };
    let mut session: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(_) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the login answer was not JSON; try again",
            )
        }
    };
    let token = session
        .get("token")
        .and_then(|t| t.as_str())
        .map(str::to_string);
    let Some(set) = token.as_deref().and_then(|t| cookie(t, None)) else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the login answer had no session token; try again",
        );
    };
    session["token"] = serde_json::Value::String(String::new());
    let body = serde_json::to_vec(&session).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.append(header::SET_COOKIE, set);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> Request {
        Request::builder()
            .header(header::COOKIE, value)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_junk_is_refused() {
        assert_eq!(
            session_token(&with_cookie("a=b; vmedia_session=abc123; c=d")).as_deref(),
            Some("abc123")
        );
        assert_eq!(session_token(&with_cookie("vmedia_session=")), None);
        assert_eq!(session_token(&with_cookie("other=1")), None);
        assert_eq!(session_token(&with_cookie("vmedia_sessionx=1")), None);
    }

    #[test]
    fn the_cookie_is_strict_secure_and_hidden_from_script() {
        let value = cookie("t", None).unwrap();
        let text = value.to_str().unwrap();
        for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/api/v1"] {
            assert!(text.contains(part), "{text}");
        }
        assert!(cookie("", Some(0))
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
    }
}

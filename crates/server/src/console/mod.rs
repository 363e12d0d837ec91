//! The web console served at `/` on the HTTPS listener: static assets embedded in the binary
//! (plain ES modules, CSS and SVG written here; no build step, nothing fetched from elsewhere),
//! sent with a strict Content-Security-Policy, and the cookie session that lets a browser use
//! the public REST API (`session.rs`). The console does nothing the API cannot do: every page
//! is drawn by script from `/api/v1` answers.

pub mod session;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::http::error_response;

pub use session::{cookie_session, CONSOLE_HEADER, SESSION_COOKIE};

/// No script but our own files, no inline script or style element, no framing, no other
/// origin: the console needs nothing else, so an injected string can do nothing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its path under `/console/`, media type and bytes.
struct Asset {
    name: &'static str,
    media_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $media:expr) => {
        Asset {
            name: $name,
            media_type: $media,
            body: include_bytes!(concat!("../../console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console. `index.html` is also `/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("chart.js", JS),
    asset!("library.js", JS),
    asset!("upload.js", JS),
    asset!("live.js", JS),
    asset!("audit.js", JS),
    asset!("replication.js", JS),
    asset!("systems.js", JS),
];

/// `/` and `/console/FILE`.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/console/{file}", get(file))
}

fn serve(asset: &Asset) -> Response {
    let mut response = (StatusCode::OK, asset.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.media_type),
    );
    // The files change with the binary; revalidating costs little next to a stale console.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(headers);
    response
}

/// The headers every console answer carries.
fn security_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

async fn index() -> Response {
    match ASSETS.iter().find(|a| a.name == "index.html") {
        Some(asset) => serve(asset),
        None => error_response(StatusCode::NOT_FOUND, "the console is not built in"),
    }
}

async fn file(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset),
        None => error_response(
            StatusCode::NOT_FOUND,
            &format!(
                "no such console file: {}",
                name.chars().take(80).collect::<String>()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for asset in ASSETS
            .iter()
            .filter(|a| a.media_type == JS || a.name == "index.html")
        {
            let text = std::str::from_utf8(asset.body).unwrap();
            for (at, _) in text.match_indices("./") {
                let rest = &text[at + 2..];
                let end = rest.find(['"', '\'']).unwrap_or(rest.len());
                let target = &rest[..end];
                if target.ends_with(".js") || target.ends_with(".css") || target.ends_with(".svg") {
                    assert!(
                        names.contains(&target),
                        "{} refers to {target}, which is not embedded",
                        asset.name
                    );
                }
            }
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let index = ASSETS.iter().find(|a| a.name == "index.html").unwrap();
        let text = std::str::from_utf8(index.body).unwrap();
        assert!(!text.contains("<script>"), "inline script in index.html");
        assert!(!text.contains("<style"), "inline style in index.html");
        assert!(!text.contains(" style="), "style attribute in index.html");
        assert!(!text.contains("http://") && !text.contains("https://"));
    }
}

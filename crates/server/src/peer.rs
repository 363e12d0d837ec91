//! A library's store reached through another site's `vmedia serve` over HTTP(S): the daemon's
//! store routes (`api/store.rs`, administrators only) give the same operations as a folder or
//! S3 store, so `sync` replicates to and from a daemon with no special case. It lives here, not
//! in the library crate, which speaks no HTTP: callers hand the opened store to the library in
//! `OpenConfig::store`.
//!
//! The wire (docs/replication.md): `GET|HEAD|PUT|DELETE /api/v1/store/objects/KEY` with the
//! object's tag in `ETag`; `PUT` with `If-None-Match: *` is `put_if_absent` and with
//! `If-Match: TAG` is `put_if_match` (412 when the condition fails);
//! `GET /api/v1/store/list?prefix=P` answers `[{"key", "size", "modified"}]`;
//! `POST /api/v1/store/flush`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmedia_library::store::{check_key, Etag, Object, ObjectMeta, PutOutcome, Store, StoreError};

use crate::client::{Client, ClientConfig};

/// Largest listing answer read: about 2.5 million objects.
pub const MAX_LISTING_BYTES: u64 = 256 << 20;
/// Largest error body kept for a message.
const MAX_ERROR_BODY: u64 = 4 << 10;
/// A peer that sends (or takes) nothing for this long on an open connection is gone, e.g. its
/// link was cut: the request fails and the sync round is retried, instead of waiting the ~15
/// minutes TCP takes to give up. Every read and write restarts it, so big slow transfers pass.
pub const PEER_IDLE_TIMEOUT: Duration = crate::client::IO_TIMEOUT;

/// One object as a listing shows it (the store routes' JSON).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub modified: Option<String>,
}

/// A peer daemon's library store, reached with the API client's URL rules (https only: the
/// token never travels in clear), certificate trust and bearer token.
pub struct RemoteStore {
    client: Client,
    /// `https://HOST:PORT`, for messages.
    base: String,
    /// `PEER_IDLE_TIMEOUT`.
    idle: Duration,
}

impl RemoteStore {
    pub fn new(config: &ClientConfig) -> Result<RemoteStore, StoreError> {
        let base = config.server.trim().trim_end_matches('/').to_string();
        let client = Client::new(config)
            .map_err(|e| StoreError::new(&base, "connect", "", e.to_string()))?;
        Ok(RemoteStore {
            client,
            base,
            idle: PEER_IDLE_TIMEOUT,
        })
    }

    /// A request with the token and the idle timeout on every read and write (which also
    /// covers the TLS handshake and the wait for the answer's headers).
    fn prepare<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        self.client
            .authorize(request)
            .config()
            .timeout_per_read(Some(self.idle))
            .timeout_per_write(Some(self.idle))
            .build()
    }

    fn object_url(&self, key: &str) -> String {
        self.client.url(&format!("/api/v1/store/objects/{key}"))
    }

    fn error(&self, action: &'static str, key: &str, message: String) -> StoreError {
        StoreError::new(&self.describe(), action, key, message)
    }

    /// Turns a non-success answer into an error carrying the daemon's own words.
    fn refused(
        &self,
        action: &'static str,
        key: &str,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> StoreError {
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ERROR_BODY)
            .read_to_string()
            .unwrap_or_default();
        let detail = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("detail")
                    .or_else(|| v.get("error"))
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
            })
            .unwrap_or(body);
        let hint = match status.as_u16() {
            401 => " (give an administrator's API token of the peer: --peer-token)",
            403 => " (the token's user must be an administrator on the peer)",
            _ => "",
        };
        self.error(action, key, format!("HTTP {status}: {detail}{hint}"))
    }

    fn etag_of(response: &ureq::http::Response<ureq::Body>) -> Option<Etag> {
        response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| Etag(v.trim_start_matches("W/").trim_matches('"').to_string()))
    }

    fn fetch(&self, key: &str, limit: u64) -> Result<Option<Object>, StoreError> {
        check_key(&self.describe(), key)?;
        let io = |e: ureq::Error| self.error("get", key, e.to_string());
        let mut response = self
            .prepare(self.client.agent().get(self.object_url(key)))
            .call()
            .map_err(io)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(self.refused("get", key, response)),
        }
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = length.filter(|l| *l > limit) {
            let mut e = self.error(
                "get",
                key,
                format!("{length} bytes, over the limit {limit}"),
            );
            e.too_large = Some(length);
            return Err(e);
        }
        let etag = Self::etag_of(&response)
            .ok_or_else(|| self.error("get", key, "the answer has no ETag".into()))?;
        let bytes = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => {
                    let mut err = self.error("get", key, format!("over the limit {limit}"));
                    err.too_large = Some(limit.saturating_add(1));
                    err
                }
                other => io(other),
            })?;
        Ok(Some(Object { bytes, etag }))
    }

    fn send(
        &self,
        action: &'static str,
        key: &str,
        bytes: &[u8],
        condition: Option<(&str, String)>,
    ) -> Result<PutOutcome, StoreError> {
        check_key(&self.describe(), key)?;
        let mut request = self.prepare(self.client.agent().put(self.object_url(key)));
        if let Some((name, value)) = condition {
            request = request.header(name, value);
        }
        let response = request
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .map_err(|e| self.error(action, key, e.to_string()))?;
        match response.status().as_u16() {
            200 | 201 | 204 => Ok(PutOutcome::Written),
            412 => Ok(PutOutcome::Conflict),
            _ => Err(self.refused(action, key, response)),
        }
    }
}

impl Store for RemoteStore {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn get(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.fetch(key, limit)?.map(|o| o.bytes))
    }

    fn get_tagged(&self, key: &str, limit: u64) -> Result<Option<Object>, StoreError> {
        self.fetch(key, limit)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        match self.send("put", key, bytes, None)? {
            PutOutcome::Written => Ok(()),
            PutOutcome::Conflict => Err(self.error("put", key, "refused (412)".into())),
        }
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        self.send(
            "put_if_absent",
            key,
            bytes,
            Some(("If-None-Match", "*".into())),
        )
    }

    fn put_if_match(&self, key: &str, bytes: &[u8], etag: &Etag) -> Result<PutOutcome, StoreError> {
        self.send(
            "put_if_match",
            key,
            bytes,
            Some(("If-Match", format!("\"{}\"", etag.0))),
        )
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let io = |e: ureq::Error| self.error("list", prefix, e.to_string());
        let mut response = self
            .prepare(
                self.client
                    .agent()
                    .get(self.client.url("/api/v1/store/list")),
            )
            .query("prefix", prefix)
            .call()
            .map_err(io)?;
        if response.status().as_u16() != 200 {
            return Err(self.refused("list", prefix, response));
        }
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_LISTING_BYTES)
            .read_to_vec()
            .map_err(io)?;
        let listed: Vec<ListedObject> = serde_json::from_slice(&bytes)
            .map_err(|e| self.error("list", prefix, format!("not a listing: {e}")))?;
        let mut out = Vec::with_capacity(listed.len());
        for object in listed {
            // A peer names only keys a library builds; anything else is refused, not used.
            check_key(&self.describe(), &object.key)?;
            if !object.key.starts_with(prefix) {
                return Err(self.error(
                    "list",
                    prefix,
                    format!("the peer listed {:?} outside the prefix", object.key),
                ));
            }
            out.push(ObjectMeta {
                key: object.key,
                size: object.size,
                modified: object.modified.as_deref().and_then(|t| t.parse().ok()),
            });
        }
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(&self.describe(), key)?;
        let response = self
            .prepare(self.client.agent().delete(self.object_url(key)))
            .call()
            .map_err(|e| self.error("delete", key, e.to_string()))?;
        match response.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.refused("delete", key, response)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(&self.describe(), key)?;
        let response = self
            .prepare(self.client.agent().head(self.object_url(key)))
            .call()
            .map_err(|e| self.error("head", key, e.to_string()))?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(self.refused("head", key, response)),
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let size = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.error("head", key, "no Content-Length".into()))?;
        let modified = header("x-vmedia-modified").and_then(|t| t.parse().ok());
        Ok(Some(ObjectMeta {
            key: key.to_string(),
            size,
            modified,
        }))
    }

    fn flush(&self) -> Result<(), StoreError> {
        let response = self
            .prepare(
                self.client
                    .agent()
                    .post(self.client.url("/api/v1/store/flush")),
            )
            .send_empty()
            .map_err(|e| self.error("flush", "", e.to_string()))?;
        match response.status().as_u16() {
            200 | 204 => Ok(()),
            _ => Err(self.refused("flush", "", response)),
        }
    }
}

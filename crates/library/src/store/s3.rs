//! The S3 backend, through `object_store` (no hand-written S3 client).
//!
//! `object_store` is async; the library API is blocking. The store owns a small tokio runtime
//! and runs each request as a task on it, waiting for the task's handle with
//! `futures::executor::block_on`: unlike `Runtime::block_on`, this never panics when the
//! caller is itself a thread of another runtime (the daemon's `spawn_blocking` pool).
//! Conditional writes use `If-None-Match: *` (`PutMode::Create`) and `If-Match: ETAG`
//! (`PutMode::Update`), which AWS S3, SeaweedFS and MinIO honour.

use std::future::Future;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};

use super::{check_key, Etag, Object, ObjectMeta, PutOutcome, Store, StoreError};
use crate::location::{S3_CONNECT_TIMEOUT, S3_MAX_BACKOFF, S3_READ_DEADLINE, S3_RETRY_BUDGET};

/// Runtime threads: requests are I/O bound and the callers already run on every core.
const RUNTIME_THREADS: usize = 2;

/// Explicit S3 settings (the crate reads no environment variable; the binary fills these).
#[derive(Debug, Default, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: bool,
}

/// A library store under `s3://bucket/prefix`.
pub struct S3Store {
    client: Arc<AmazonS3>,
    /// Prefix of every key, without the trailing `/` (empty for the bucket root).
    prefix: String,
    name: String,
    /// `Option` only so that `Drop` can shut it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl S3Store {
    /// Builds the client (no request is made until the first operation).
    pub fn new(config: &S3Config) -> Result<S3Store, StoreError> {
        let prefix = config.prefix.trim_matches('/').to_string();
        let name = if prefix.is_empty() {
            format!("s3://{}", config.bucket)
        } else {
            format!("s3://{}/{prefix}", config.bucket)
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(config.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_allow_http(config.allow_http)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    max_backoff: S3_MAX_BACKOFF,
                    ..BackoffConfig::default()
                },
                retry_timeout: S3_RETRY_BUDGET,
                ..RetryConfig::default()
            })
            .with_client_options(ClientOptions::new().with_connect_timeout(S3_CONNECT_TIMEOUT));
        if let Some(endpoint) = &config.endpoint {
            // S3-compatible servers on an explicit endpoint are addressed by path, not by
            // virtual host (a loopback SeaweedFS has no DNS for bucket names).
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
            if endpoint.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
        }
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let client = builder
            .build()
            .map_err(|e| StoreError::new(&name, "configure", "", e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("vmedia-s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::new(&name, "start the S3 runtime for", "", e.to_string()))?;
        Ok(S3Store {
            client: Arc::new(client),
            prefix,
            name,
            runtime: Some(runtime),
        })
    }

    fn path(&self, key: &str, action: &'static str) -> Result<StorePath, StoreError> {
        check_key(&self.name, key).map_err(|mut e| {
            e.action = action;
            e
        })?;
        Ok(if self.prefix.is_empty() {
            StorePath::from(key)
        } else {
            StorePath::from(format!("{}/{key}", self.prefix))
        })
    }

    /// Runs one request on the store's runtime and waits for it from this (any) thread.
    fn run<F>(&self, action: &'static str, key: &str, future: F) -> Result<F::Output, StoreError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::new(&self.name, action, key, "store closed".into()))?;
        let handle = runtime.spawn(future);
        futures::executor::block_on(handle)
            .map_err(|e| StoreError::new(&self.name, action, key, format!("task failed: {e}")))
    }

    fn fail(&self, action: &'static str, key: &str, error: object_store::Error) -> StoreError {
        StoreError::new(&self.name, action, key, error.to_string())
    }

    fn key_of(&self, location: &StorePath) -> String {
        let full = location.as_ref();
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&self.prefix)
                .and_then(|rest| rest.strip_prefix('/'))
                .unwrap_or(full)
                .to_string()
        }
    }

    fn put_mode(
        &self,
        action: &'static str,
        key: &str,
        bytes: &[u8],
        mode: PutMode,
    ) -> Result<PutOutcome, StoreError> {
        let path = self.path(key, action)?;
        let client = Arc::clone(&self.client);
        let payload = PutPayload::from(bytes.to_vec());
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        let result = self.run(action, key, async move {
            client.put_opts(&path, payload, options).await
        })?;
        match result {
            Ok(_) => Ok(PutOutcome::Written),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(PutOutcome::Conflict),
            Err(e) => Err(self.fail(action, key, e)),
        }
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime blocks; inside another runtime that would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn get(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_tagged(key, limit)?.map(|o| o.bytes))
    }

    fn get_tagged(&self, key: &str, limit: u64) -> Result<Option<Object>, StoreError> {
        let path = self.path(key, "read")?;
        let client = Arc::clone(&self.client);
        let read = async move {
            let got = client.get(&path).await?;
            let size = got.meta.size;
            if size > limit {
                return Ok(Err(size));
            }
            let etag = got.meta.e_tag.clone().unwrap_or_default();
            let bytes = got.bytes().await?;
            Ok::<_, object_store::Error>(Ok((bytes, etag)))
        };
        // The timer is made inside the task: it needs the store's runtime.
        let result = self
            .run("read", key, async move {
                tokio::time::timeout(S3_READ_DEADLINE, read).await
            })?
            .map_err(|_| {
                StoreError::new(
                    &self.name,
                    "read",
                    key,
                    format!("no answer within {S3_READ_DEADLINE:?} (retries included)"),
                )
            })?;
        match result {
            Ok(Ok((bytes, etag))) => Ok(Some(Object {
                bytes: bytes.to_vec(),
                etag: Etag(etag),
            })),
            Ok(Err(size)) => {
                let mut error = StoreError::new(
                    &self.name,
                    "read",
                    key,
                    format!("{size} bytes, limit {limit}"),
                );
                error.too_large = Some(size);
                Err(error)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("read", key, e)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        match self.put_mode("write", key, bytes, PutMode::Overwrite)? {
            PutOutcome::Written => Ok(()),
            PutOutcome::Conflict => Err(StoreError::new(
                &self.name,
                "write",
                key,
                "the server refused an unconditional write".into(),
            )),
        }
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        self.put_mode("create", key, bytes, PutMode::Create)
    }

    fn put_if_match(&self, key: &str, bytes: &[u8], etag: &Etag) -> Result<PutOutcome, StoreError> {
        let version = UpdateVersion {
            e_tag: Some(etag.0.clone()),
            version: None,
        };
        self.put_mode("update", key, bytes, PutMode::Update(version))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let directory = prefix.rfind('/').map(|at| &prefix[..at]).unwrap_or("");
        let list_path = match (self.prefix.is_empty(), directory.is_empty()) {
            (true, true) => None,
            (true, false) => Some(self.path(directory, "list")?),
            (false, true) => Some(StorePath::from(self.prefix.clone())),
            (false, false) => Some(StorePath::from(format!("{}/{directory}", self.prefix))),
        };
        let client = Arc::clone(&self.client);
        let listed = self
            .run("list", prefix, async move {
                client
                    .list(list_path.as_ref())
                    .try_collect::<Vec<_>>()
                    .await
            })?
            .map_err(|e| self.fail("list", prefix, e))?;
        let mut found: Vec<ObjectMeta> = listed
            .into_iter()
            .filter_map(|meta| {
                let key = self.key_of(&meta.location);
                key.starts_with(prefix).then(|| ObjectMeta {
                    key,
                    size: meta.size,
                    modified: jiff::Timestamp::from_second(meta.last_modified.timestamp()).ok(),
                })
            })
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key, "delete")?;
        let client = Arc::clone(&self.client);
        match self.run("delete", key, async move { client.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("delete", key, e)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path(key, "stat")?;
        let client = Arc::clone(&self.client);
        match self.run("stat", key, async move { client.head(&path).await })? {
            Ok(meta) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: meta.size,
                modified: jiff::Timestamp::from_second(meta.last_modified.timestamp()).ok(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("stat", key, e)),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

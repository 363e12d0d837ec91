//! The daemon: builds the shared pieces (cache, exports, metrics, boot traces), binds the
//! listeners, runs the front ends, and drains them on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vmedia_library::Library;

use crate::api::ApiState;
use crate::audit::AuditLog;
use crate::auth::{Authenticate, UserStore};
use crate::cache::{CacheOptions, SharedCache};
use crate::clones::{BaseOpener, CloneStore};
use crate::config::ServerOptions;
use crate::export::{ExportResolver, IoObserver};
use crate::exports::LibraryExports;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::nbd::{serve_nbd, NbdContext, NbdLimits};
use crate::preload::Traces;
use crate::tls::{self, TlsError};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up the cache: {0}")]
    Cache(std::io::Error),
    #[error("cannot open the clone store: {0}")]
    Clones(crate::clones::CloneError),
    #[error("cannot start network boot: {0}")]
    Netboot(crate::netboot::NetbootStartError),
    #[error("cannot open the daemon's {what}: {problem}")]
    State { what: &'static str, problem: String },
}

/// Starts the daemon.
pub struct Server;

/// The netboot config and the rules file it names: where "where used" looks for `library:`.
fn netboot_files(config: Option<&std::path::Path>) -> Vec<std::path::PathBuf> {
    let Some(config) = config else {
        return Vec::new();
    };
    let mut files = vec![config.to_path_buf()];
    if let Ok(loaded) = crate::netboot::load_netboot_config(config) {
        files.extend(loaded.rules_file);
    }
    files
}

/// A running daemon: its bound addresses and shared pieces; `shutdown` drains it.
pub struct ServerHandle {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub nbd: Option<SocketAddr>,
    pub exports: Arc<LibraryExports>,
    pub metrics: Arc<Metrics>,
    /// The resolver every front end uses (library versions, disks, clones).
    pub resolver: Arc<dyn ExportResolver>,
    /// The network boot server run with `--netboot`.
    pub netboot: Option<vmedia_netboot::ServerHandle>,
    /// Users, API tokens and sessions (`STATE/auth/`), which the API and Redfish check.
    pub users: Arc<UserStore>,
    /// The audit log (`STATE/audit.jsonl`) every interface records changes in.
    pub audit: Arc<AuditLog>,
    /// SHA-256 of the self-signed certificate the HTTPS listener uses, when it made one.
    pub tls_fingerprint: Option<String>,
    /// Continuous replication with the peers of `--replicate-to`/`--mirror-from`.
    pub replication: Option<Arc<crate::replicate::Replication>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    traces: Arc<Traces>,
}

impl Server {
    /// Binds every listener whose port is not 0 and starts serving; call inside a tokio
    /// runtime. Versions named in `options.preload` are read into the cache in the
    /// background.
    pub async fn start(
        library: Library,
        options: ServerOptions,
    ) -> Result<ServerHandle, ServeError> {
        Self::start_with_redfish(library, options, None).await
    }

    /// `start`, and Redfish for the VM store in `redfish` served on the HTTPS listener.
    pub async fn start_with_redfish(
        library: Library,
        options: ServerOptions,
        redfish: Option<(crate::redfish::Context, Arc<dyn crate::auth::Authenticate>)>,
    ) -> Result<ServerHandle, ServeError> {
        let cache = Arc::new(
            SharedCache::new(&CacheOptions {
                memory_bytes: options.cache_bytes,
                disk: options.disk_cache.clone(),
            })
            .map_err(ServeError::Cache)?,
        );
        let traces = Traces::new(options.state_dir.join("traces"), options.trace_window);
        let exports = Arc::new(LibraryExports::new(
            library,
            Arc::clone(&cache),
            Some(Arc::clone(&traces)),
        ));
        let metrics = Arc::new(Metrics::new(Arc::clone(&cache)));
        metrics.set_exports(Arc::clone(&exports));
        let observer: Arc<dyn IoObserver> = metrics.clone();

        let store = Arc::new(
            CloneStore::open(
                &options.state_dir,
                Arc::new(WeakBases(Arc::downgrade(&exports))) as Arc<dyn BaseOpener>,
            )
            .map_err(ServeError::Clones)?,
        );
        exports.set_clones(store.clone());
        let gauges = Arc::clone(&store);
        metrics.set_clones(Arc::new(move || {
            gauges
                .list()
                .into_iter()
                .map(|c| (c.name, c.bytes_written))
                .collect()
        }));
        let state_error = |what: &'static str| {
            move |e: &dyn std::fmt::Display| ServeError::State {
                what,
                problem: e.to_string(),
            }
        };
        let users = Arc::new(
            UserStore::open(&options.state_dir).map_err(|e| state_error("user store")(&e))?,
        );
        let audit =
            Arc::new(AuditLog::open(&options.state_dir).map_err(|e| state_error("audit log")(&e))?);
        let uploads = Arc::new(
            crate::api::uploads::Uploads::open(&options.state_dir)
                .map_err(|e| state_error("uploads folder")(&e))?,
        );

        let (shutdown, shutdown_rx) = watch::channel(false);
        let replication = options
            .replication
            .clone()
            .filter(|r| !r.peers.is_empty())
            .map(|r| crate::replicate::Replication::start(r, shutdown_rx.clone()));
        if let Some(replication) = &replication {
            metrics.set_replication(Arc::clone(replication));
        }

        let resolver: Arc<dyn ExportResolver> = exports.clone();
        let access = Arc::new(
            crate::api::access::AccessList::open(&options.state_dir)
                .map_err(|e| state_error("access rules")(&e))?,
        );
        // Restricted items on the ports without credentials: capabilities only.
        let gate = Arc::new(
            http::gate::MediaGate::open(
                &options.state_dir,
                Arc::clone(&access),
                Arc::clone(&audit),
            )
            .map_err(|e| state_error("media signing key")(&e))?,
        );
        gate.set_clones(Arc::clone(&store));
        let clones_router = crate::clones::api::gated_router(Arc::clone(&store), Arc::clone(&gate));
        let health = Arc::new(crate::health::Health::new(Arc::clone(&exports)));
        let state = Arc::new(AppState {
            exports: Arc::clone(&exports),
            observer: Arc::clone(&observer),
            metrics: Arc::clone(&metrics),
            gate: Arc::clone(&gate),
            health: Arc::clone(&health),
        });
        let app = http::router(Arc::clone(&state), Some(clones_router.clone()));
        // HTTPS: images and metrics as on HTTP, and the API (with the clone API and preload)
        // behind authentication.
        let api_state = Arc::new(ApiState {
            app: Arc::clone(&state),
            users: Arc::clone(&users),
            auth: users.clone() as Arc<dyn Authenticate>,
            audit: Arc::clone(&audit),
            tasks: Arc::new(crate::api::tasks::Tasks::default()),
            uploads,
            idempotency: Arc::new(crate::api::idempotency::Replies::default()),
            replication: replication.clone(),
            systems: options.systems.clone(),
            access,
            attachments: Arc::new(
                crate::api::attachments::Attachments::open(&options.state_dir)
                    .map_err(|e| state_error("attachments")(&e))?,
            ),
            events: Arc::default(),
            clones: Some(Arc::clone(&store)),
            netboot_files: netboot_files(options.netboot.as_deref()),
            media_base: std::sync::OnceLock::new(),
        });
        let https_app = http::public_router(state).merge(crate::api::router(
            Arc::clone(&api_state),
            Some(clones_router),
        ));
        // Redfish for the VM store's systems, checked against the daemon's users unless the
        // caller brings its own authenticator.
        let redfish = redfish.or_else(|| {
            options.systems.clone().map(|vms| {
                (
                    crate::redfish::Context { vms },
                    users.clone() as Arc<dyn Authenticate>,
                )
            })
        });
        let https_router = match redfish {
            Some((ctx, auth)) => https_app.merge(crate::redfish::router_with_media(
                ctx,
                auth,
                Some(crate::redfish::MediaAccess {
                    gate: Arc::clone(&gate),
                    api: Arc::clone(&api_state),
                }),
            )),
            None => https_app,
        };
        // The web console at `/`, and its session cookie turned into the API's bearer token.
        let https_router = https_router
            .merge(crate::console::router())
            .layer(axum::middleware::from_fn(crate::console::cookie_session));
        let mut tls_fingerprint = None;
        let tls_config = match &options.tls {
            Some((cert, key)) => Some(tls::server_config(cert, key)?),
            None if options.https_port != 0 => {
                let (cert, key, fingerprint) = tls::self_signed(&options.state_dir)?;
                tracing::info!(
                    certificate = %cert.display(),
                    sha256 = fingerprint,
                    "HTTPS uses a self-signed certificate"
                );
                tls_fingerprint = Some(fingerprint);
                Some(tls::server_config(&cert, &key)?)
            }
            None => None,
        };
        let mut tasks = Vec::new();

        let mut http_addr = None;
        if options.http_port != 0 {
            let listener = bind("HTTP", SocketAddr::new(options.listen, options.http_port)).await?;
            http_addr = listener.local_addr().ok();
            if let Some(addr) = http_addr {
                // QEMU on this machine reads attached media here; a wildcard listen address
                // is reached on loopback.
                let host = if addr.ip().is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    addr.ip()
                };
                let _ = api_state
                    .media_base
                    .set(format!("http://{}", SocketAddr::new(host, addr.port())));
            }
            let task = tokio::spawn(http::serve_http(
                listener,
                None,
                app.clone(),
                Arc::clone(&observer),
                shutdown_rx.clone(),
            ));
            if let Some(addr) = http_addr {
                health.watch_listener("http", addr, task.abort_handle());
            }
            tasks.push(task);
        }
        let mut https_addr = None;
        if let (Some(config), true) = (&tls_config, options.https_port != 0) {
            let listener =
                bind("HTTPS", SocketAddr::new(options.listen, options.https_port)).await?;
            https_addr = listener.local_addr().ok();
            let task = tokio::spawn(http::serve_http(
                listener,
                Some(tls::http_acceptor(config)),
                https_router.clone(),
                Arc::clone(&observer),
                shutdown_rx.clone(),
            ));
            if let Some(addr) = https_addr {
                health.watch_listener("https", addr, task.abort_handle());
            }
            tasks.push(task);
        }
        let mut nbd_addr = None;
        if options.nbd_port != 0 {
            let listener = bind("NBD", SocketAddr::new(options.listen, options.nbd_port)).await?;
            nbd_addr = listener.local_addr().ok();
            let ctx = NbdContext {
                resolver: Arc::new(http::gate::GatedResolver {
                    inner: Arc::clone(&resolver),
                    gate: Arc::clone(&gate),
                }),
                observer: Arc::clone(&observer),
                tls: tls_config.as_ref().map(tls::plain_acceptor),
                limits: NbdLimits::default(),
            };
            let task = tokio::spawn(serve_nbd(listener, ctx, shutdown_rx.clone()));
            if let Some(addr) = nbd_addr {
                health.watch_listener("nbd", addr, task.abort_handle());
            }
            tasks.push(task);
        }
        let netboot = match &options.netboot {
            Some(config) => Some(
                crate::netboot::start_netboot_gated(
                    config,
                    exports.library().clone(),
                    Arc::clone(exports.cache()) as Arc<dyn vmedia_library::ChunkCache>,
                    Arc::clone(&gate),
                )
                .await
                .map_err(ServeError::Netboot)?,
            ),
            None => None,
        };

        for spec in options.preload.clone() {
            let exports = Arc::clone(&exports);
            tokio::task::spawn_blocking(move || {
                let result = exports
                    .open_version(&spec)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        crate::preload::preload(&v.export, &v.digest).map_err(|e| e.to_string())
                    });
                match result {
                    Ok(report) => tracing::info!(
                        export = report.export,
                        bytes = report.size,
                        seconds = report.seconds,
                        "preloaded"
                    ),
                    Err(error) => tracing::warn!(image = spec, %error, "preload failed"),
                }
            });
        }

        Ok(ServerHandle {
            http: http_addr,
            https: https_addr,
            nbd: nbd_addr,
            exports,
            metrics,
            resolver,
            netboot,
            users,
            audit,
            tls_fingerprint,
            replication,
            shutdown,
            tasks,
            traces,
        })
    }
}

/// The clone store's view of the library exports. Weak, because the exports hold the store (for
/// `clone/NAME`): a strong pair would never be dropped, and the store's state-folder lock with it.
struct WeakBases(std::sync::Weak<LibraryExports>);

impl WeakBases {
    fn exports(&self) -> Result<Arc<LibraryExports>, crate::export::ExportError> {
        self.0
            .upgrade()
            .ok_or_else(|| crate::export::ExportError::Unavailable {
                name: "library".into(),
                reason: "the daemon is shutting down".into(),
            })
    }
}

impl BaseOpener for WeakBases {
    fn resolve_base(
        &self,
        spec: &str,
    ) -> Result<crate::clones::BaseVersion, crate::export::ExportError> {
        self.exports()?.resolve_base(spec)
    }

    fn open_base(
        &self,
        spec: &str,
    ) -> Result<Arc<dyn crate::export::Export>, crate::export::ExportError> {
        self.exports()?.open_base(spec)
    }

    fn commit(
        &self,
        name: &str,
        source: &dyn vmedia_io::ReadAt,
        size: u64,
    ) -> std::io::Result<vmedia_library::AddReport> {
        let exports = self
            .exports()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        exports.commit(name, source, size)
    }
}

impl ServerHandle {
    /// Stops accepting, lets requests in progress finish (bounded), and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some(netboot) = self.netboot {
            if let Err(error) = netboot.shutdown().await {
                tracing::warn!(%error, "network boot did not stop cleanly");
            }
        }
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(replication) = &self.replication {
            replication.finish().await;
        }
        // The clients are gone: a boot trace still recording is kept as it stands.
        let traces = self.traces;
        let _ = tokio::task::spawn_blocking(move || traces.finish_recordings()).await;
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// Waits for SIGTERM or SIGINT and names the one that came.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handling (should not happen on Unix): wait forever rather than stop.
        std::future::pending::<()>().await;
        return "none";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

//! Assembling and running the server: database, cache, actor tree, HTTP. Shutdown order:
//! stop claiming queued work and accepting connections, drain HTTP requests and streams (up
//! to `server.shutdown_timeout_s`), hand leased async work back to the queue, stop the actor
//! tree (dispatcher, then pools, which join their engine threads), flush the invocation
//! records and telemetry, close the database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use futures_util::future::BoxFuture;
use genrt_actors::engine::tool::ModelTool;
use genrt_actors::{load_backends, ActorTree, Backend, BackendsInfo, LlamaCppBackend, TreeConfig};

use crate::auth::{AuthSetupError, Authenticator};
use crate::cache::MokaResponseCache;
use crate::config::{Config, JwtAlgorithm};
use crate::error::ApiError;
use crate::invocation::{InvocationService, Parts};
use crate::queue::{JobQueue, QueueRunner};
use crate::registry::ModelRegistry;
use crate::store::{Recorder, Store};
use crate::tenancy::Tenancy;
use crate::webhooks::delivery::Deliverer;
use crate::webhooks::ssrf::{http_client, UrlGuard};
use tokio_util::sync::CancellationToken;

/// What every handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub tree: Arc<ActorTree>,
    pub cache: Arc<MokaResponseCache>,
    /// Every generation goes through here (see `invocation`).
    pub invocations: InvocationService,
    pub records: Recorder,
    pub tenancy: Arc<Tenancy>,
    pub queue: Arc<JobQueue>,
    /// Keeps callbacks away from internal addresses (`webhooks.allow_private` excepted).
    pub url_guard: Arc<UrlGuard>,
    /// The client webhooks are sent with: guarded resolver, no redirects, timeouts.
    pub http: reqwest::Client,
    /// This node's metrics (`GET /metrics`, and OTLP when configured).
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// The llama.cpp backend modules loaded at start.
    pub backends: BackendsInfo,
    /// Models registered at run time (`/v1/models`), and this node's share of them.
    pub registry: ModelRegistry,
    /// Wakes the webhook delivery loop when new deliveries were committed on this node.
    deliveries: Arc<tokio::sync::Notify>,
}

const DB_CLOSE_LIMIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for invocation records to reach the database.
const RECORD_FLUSH_LIMIT: Duration = Duration::from_secs(10);

impl AppState {
    pub fn deliveries_wake(&self) {
        self.deliveries.notify_one();
    }

    /// Refuses callback URLs the SSRF guard forbids (see
    /// [`InvocationService::check_callback_url`]).
    pub async fn check_callback_url(&self, url: &str) -> Result<(), ApiError> {
        self.invocations.check_callback_url(url).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("engine: {0}")]
    Engine(#[from] genrt_actors::EngineError),
    #[error("actors: {0}")]
    Actors(String),
    #[error("auth: {0}")]
    Auth(#[from] AuthSetupError),
    #[error("telemetry: {0}")]
    Telemetry(#[from] crate::telemetry::MetricsError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

pub struct RunningServer {
    addr: SocketAddr,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    state: web::Data<AppState>,
    record_writer: tokio::task::JoinHandle<()>,
    runner: Arc<QueueRunner>,
    queue_runner: tokio::task::JoinHandle<()>,
    deliveries_stop: CancellationToken,
    delivery_runner: tokio::task::JoinHandle<()>,
    metrics_sampler: tokio::task::JoinHandle<()>,
    cluster_stop: CancellationToken,
    cluster_sync: tokio::task::JoinHandle<()>,
    registry_stop: CancellationToken,
    registry_sync: tokio::task::JoinHandle<()>,
    /// The metrics listener, when `telemetry.metrics_listen` is set.
    metrics_listener: Option<(
        ServerHandle,
        tokio::task::JoinHandle<std::io::Result<()>>,
        SocketAddr,
    )>,
}

/// Starts everything and returns once the server is listening. With `handle_signals`,
/// SIGINT/SIGTERM begin a graceful stop; in-process tests leave it off.
///
/// The future is boxed on purpose, as are [`RunningServer::wait`] and [`RunningServer::stop`]:
/// an `async fn`'s body, and every `async fn` it awaits or spawns, is compiled in the crate
/// that first polls its future, so each binary that awaited `start` directly (the server,
/// each test and benchmark binary) compiled the whole server again, about a minute each.
/// Polling a boxed `dyn Future` compiles it once, here.
pub fn start(
    config: Config,
    handle_signals: bool,
) -> BoxFuture<'static, Result<RunningServer, StartError>> {
    Box::pin(start_server(config, handle_signals, None))
}

/// [`start`] with another inference backend than llama.cpp: tests of what lies above the
/// engine run on `genrt_actors::testing::FakeBackend`, in milliseconds and without a model.
pub fn start_with_backend(
    config: Config,
    backend: Arc<dyn Backend>,
) -> BoxFuture<'static, Result<RunningServer, StartError>> {
    Box::pin(start_server(config, false, Some(backend)))
}

async fn start_server(
    config: Config,
    handle_signals: bool,
    backend: Option<Arc<dyn Backend>>,
) -> Result<RunningServer, StartError> {
    // Config::validate refused a weak secret unless the server listens on loopback only.
    if config.auth.algorithms().contains(&JwtAlgorithm::HS256) {
        if let Some(why) = config.auth.weak_secret() {
            tracing::warn!(
                "auth.jwt_secret {why}: accepted only because the server listens on loopback; \
                 set GENRT_JWT_SECRET before listening anywhere else"
            );
        }
    }
    genrt_actors::fix_malloc_thresholds();
    // First, because an unreachable JWKS URL should stop the start before anything is opened.
    let auth = web::Data::new(Authenticator::new(&config.auth).await?);
    let config = Arc::new(config);
    let store = Store::connect(&config).await?;
    store.seed_models(&config.models).await?;
    let (records, record_writer) = Recorder::start(store.clone());
    let metrics = crate::telemetry::Metrics::new(&config.telemetry)?;
    let cache = Arc::new(MokaResponseCache::new(
        config.cache.max_entries,
        Duration::from_secs(config.cache.default_ttl_s),
        Arc::clone(&metrics),
    ));
    // Before anything else touches llama.cpp: the backend modules decide which devices exist.
    let backends = load_backends(config.engine.backends_dir.as_deref())?;
    // Registered files are loaded and quantized first in child processes of this binary (or of
    // `registry.tool_binary`): see `genrt_actors::engine::tool`.
    let tool = ModelTool::new(
        match &config.registry.tool_binary {
            Some(binary) => binary.clone(),
            None => std::env::current_exe().map_err(|e| {
                StartError::Config(format!(
                    "registry.tool_binary is unset and this executable's path is unknown: {e}"
                ))
            })?,
        },
        config.engine.backends_dir.clone(),
    );
    let backend = match backend {
        Some(backend) => backend,
        None => Arc::new(LlamaCppBackend::new()?.with_tool(tool.clone())),
    };
    let tree = ActorTree::start(
        TreeConfig {
            models: config.models.clone(),
            restart_policy: config.restart_policy(),
            memory_budget_bytes: config.memory_budget_bytes(),
            gpu_memory_margin_bytes: config.engine.gpu_memory_margin_mb * 1024 * 1024,
        },
        backend,
        cache.clone(),
    )
    .await
    .map_err(|e| StartError::Actors(e.to_string()))?;
    let url_guard = Arc::new(
        config
            .webhooks
            .url_guard()
            .map_err(|e| StartError::Actors(format!("webhooks: {e}")))?,
    );
    let tree = Arc::new(tree);
    let tenancy = Arc::new(Tenancy::new(store.clone(), config.tenancy.clone()));
    let registry = ModelRegistry::new(
        store.clone(),
        Arc::clone(&tree),
        Arc::clone(&tenancy),
        config.registry.clone(),
        config.memory_budget_bytes(),
        Arc::clone(&url_guard),
        tool,
    )
    .map_err(StartError::Config)?;
    // Before the first request: the configuration's adapters are validated. The models and
    // adapters registered earlier (here or on another node) are served, and registrations a
    // previous run left unfinished start again, by the registry's first sync, once the server
    // listens (`ModelRegistry::run_sync`; `/readyz` waits for it).
    registry.seed_adapters(&config.adapters).await?;
    let deliveries = Arc::new(tokio::sync::Notify::new());
    let queue = Arc::new(JobQueue::new(config.node_id(), config.queue.clone()));
    let invocations = InvocationService::new(Parts {
        registry: registry.clone(),
        config: Arc::clone(&config),
        store: store.clone(),
        tree: Arc::clone(&tree),
        records: records.clone(),
        tenancy: Arc::clone(&tenancy),
        queue: Arc::clone(&queue),
        metrics: Arc::clone(&metrics),
        url_guard: Arc::clone(&url_guard),
    });
    let state = web::Data::new(AppState {
        config: Arc::clone(&config),
        store: store.clone(),
        tree,
        cache,
        invocations,
        records,
        metrics,
        backends,
        registry: registry.clone(),
        tenancy,
        queue,
        deliveries: Arc::clone(&deliveries),
        url_guard: Arc::clone(&url_guard),
        http: http_client(url_guard, config.webhooks.timeout())
            .map_err(|e| StartError::Actors(format!("webhook client: {e}")))?,
    });
    if state.store.backend() == sea_orm::DatabaseBackend::Sqlite {
        // An SQLite database belongs to one process: whatever a previous run left running
        // is this node's to redo, with no lease to wait for.
        let n =
            state.store.reclaim_leases(true).await? + state.store.reclaim_deliveries(true).await?;
        if n > 0 {
            tracing::warn!(
                reclaimed = n,
                "requeued invocations and deliveries left running by a previous run"
            );
        }
    }
    // Each background loop gets its own handles (and the delivery loop its own stop token),
    // not the app's state.
    let runner = Arc::new(QueueRunner {
        store: state.store.clone(),
        queue: Arc::clone(&state.queue),
        invocations: state.invocations.clone(),
        registry: state.registry.clone(),
        deliveries: Arc::clone(&deliveries),
    });
    let queue_runner = tokio::spawn(crate::queue::run(Arc::clone(&runner)));
    let deliveries_stop = CancellationToken::new();
    let delivery_runner = tokio::spawn(crate::webhooks::delivery::run(Arc::new(Deliverer {
        config: Arc::clone(&config),
        store: state.store.clone(),
        metrics: Arc::clone(&state.metrics),
        url_guard: Arc::clone(&state.url_guard),
        http: state.http.clone(),
        node: state.queue.node.clone(),
        wake: Arc::clone(&deliveries),
        stop: deliveries_stop.clone(),
    })));
    let cluster_stop = CancellationToken::new();
    let cluster_sync = tokio::spawn(crate::tenancy::cluster::run(
        crate::tenancy::cluster::ClusterSync {
            store: state.store.clone(),
            tenancy: Arc::clone(&state.tenancy),
            node: state.queue.node.clone(),
            every: Duration::from_millis(config.tenancy.sync_interval_ms),
            stop: cluster_stop.clone(),
        },
    ));
    let registry_stop = CancellationToken::new();
    let registry_sync = tokio::spawn(registry.run_sync(registry_stop.clone()));
    let metrics_sampler = tokio::spawn(crate::telemetry::sample(
        Arc::clone(&state.metrics),
        Arc::clone(&state.tree),
        state.store.clone(),
    ));
    let body_limit = config.server.body_limit_bytes;
    let limits = crate::api::BodyLimits {
        body: body_limit,
        batch: config.queue.batch_body_limit_bytes,
        hook: config.webhooks.max_payload_bytes,
    };
    let app_state = state.clone();
    let addr = format!("{}:{}", config.server.host, config.server.port);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .app_data(auth.clone())
            // The logger wraps the request-id middleware so that it logs the id.
            .wrap(actix_web::middleware::from_fn(request_id))
            .wrap(tracing_actix_web_lite())
            // Outermost, so that the server span covers everything the request does.
            .wrap(actix_web::middleware::from_fn(crate::api::http_server_span))
            .configure(|cfg| crate::api::configure(cfg, limits))
    })
    .shutdown_timeout(config.server.shutdown_timeout_s)
    .bind(&addr)
    .map_err(|source| StartError::Bind {
        addr: addr.clone(),
        source,
    })?;
    if config.server.workers > 0 {
        server = server.workers(config.server.workers);
    }
    // Signals are handled here rather than by actix, so that the async queue stops claiming
    // at the signal, not only after the HTTP drain.
    server = server.disable_signals();
    let bound = server.addrs()[0];
    let metrics_listener = match config
        .telemetry
        .metrics_addr()
        .map_err(StartError::Config)?
    {
        Some(addr) => {
            let (server, bound) =
                crate::api::metrics::listener(state.clone(), addr).map_err(|source| {
                    StartError::Bind {
                        addr: addr.to_string(),
                        source,
                    }
                })?;
            tracing::info!(addr = %bound, "metrics listening");
            Some((server.handle(), tokio::spawn(server), bound))
        }
        None => None,
    };
    let server = server.run();
    let handle = server.handle();
    if handle_signals {
        tokio::spawn(stop_on_signal(handle.clone(), state.clone()));
    }
    let server = tokio::spawn(server);
    tracing::info!(addr = %bound, "genrt listening");
    Ok(RunningServer {
        addr: bound,
        handle,
        server,
        state,
        record_writer,
        runner,
        queue_runner,
        deliveries_stop,
        delivery_runner,
        metrics_sampler,
        metrics_listener,
        cluster_stop,
        cluster_sync,
        registry_stop,
        registry_sync,
    })
}

/// Waits for SIGTERM or SIGINT, then begins the graceful stop that [`RunningServer::wait`]
/// completes.
async fn stop_on_signal(handle: ServerHandle, state: web::Data<AppState>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!(
        drain_s = state.config.server.shutdown_timeout_s,
        "shutdown signal: no new connections or queued work; draining"
    );
    state.queue.drain();
    handle.stop(true).await;
}

/// Request logging: one line per request (method, path, status, latency, request id) at info
/// level under the target `genrt::http`, the access log; `RUST_LOG=...,genrt::http=warn`
/// silences it (the process tests do, so that a failing test's log tail shows what matters).
fn tracing_actix_web_lite() -> actix_web::middleware::Logger {
    actix_web::middleware::Logger::new("%r %s %Dms %{x-request-id}o").log_target("genrt::http")
}

const REQUEST_ID: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("x-request-id");

/// Every response carries `X-Request-Id`: the caller's own when it sent a sane one (so a
/// gateway's id follows the request through), else a new UUID. Clients report it with errors.
async fn request_id(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let given = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty()
                && b.len() <= 128
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        })
        .cloned();
    let id = given.unwrap_or_else(|| {
        actix_web::http::header::HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .expect("a UUID is a valid header value")
    });
    let mut response = next.call(req).await?;
    response.headers_mut().insert(REQUEST_ID, id);
    Ok(response)
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, _, addr)| *addr)
    }

    pub fn state(&self) -> &web::Data<AppState> {
        &self.state
    }

    /// Waits until the HTTP server stops (on a signal, or after [`Self::stop`]), then stops
    /// the actor tree and closes the database. Boxed for the reason given at [`start`].
    pub fn wait(self) -> BoxFuture<'static, std::io::Result<()>> {
        Box::pin(self.wait_stopped())
    }

    async fn wait_stopped(self) -> std::io::Result<()> {
        let result = self
            .server
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        // Registration jobs stop now: their llama.cpp children are killed (a quantization
        // would hold the stop for minutes) and their rows left for the next start.
        self.state.registry.stop_jobs();
        // Leased async work goes back to the queue before the actors stop under it.
        crate::queue::release(&self.runner).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.queue_runner).await;
        // Deliveries in flight finish or their leases expire; either way they are retried.
        self.deliveries_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.delivery_runner).await;
        // Before the database closes: the node removes its heartbeat on the way out.
        self.cluster_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.cluster_sync).await;
        self.registry_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.registry_sync).await;
        // Before the tree stops under them (a load refused then is not a failure).
        self.state.registry.jobs_ended(Duration::from_secs(5)).await;
        self.state.tree.shutdown().await;
        let unwritten = self.state.records.flush(RECORD_FLUSH_LIMIT).await;
        if unwritten > 0 {
            tracing::error!(unwritten, "invocation records not written before shutdown");
        }
        self.record_writer.abort();
        // Closing waits for connections in use; never let that hold the process.
        if tokio::time::timeout(DB_CLOSE_LIMIT, self.state.store.clone().close())
            .await
            .is_err()
        {
            tracing::warn!("database pool did not close within {DB_CLOSE_LIMIT:?}");
        }
        if let Some((handle, listener, _)) = self.metrics_listener {
            handle.stop(false).await;
            let _ = listener.await;
        }
        // Last, so that the final OTLP export includes the shutdown itself.
        self.metrics_sampler.abort();
        self.state.metrics.shutdown().await;
        result
    }

    /// Graceful stop: in-flight requests finish first. Boxed for the reason given at
    /// [`start`].
    pub fn stop(self) -> BoxFuture<'static, std::io::Result<()>> {
        Box::pin(async move {
            self.state.queue.drain();
            self.handle.stop(true).await;
            self.wait_stopped().await
        })
    }
}

//! The one configuration struct. Sources, lowest precedence first: built-in defaults, the
//! TOML file (`genrt.toml` in the working directory, or `--config`), `GENRT_*` environment
//! variables (nested keys with `__`, e.g. `GENRT_SERVER__PORT`), then command-line flags.
//! Defaults alone are a working laptop setup: SQLite under `./data`, the SmolLM2 model.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use genrt_actors::{ModelConfig, RestartPolicy};
use serde::{Deserialize, Serialize};

use crate::telemetry::TelemetryConfig;
use crate::webhooks::WebhookConfig;

pub const DEFAULT_MODEL_ID: &str = "smollm2-135m";
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Used only when no secret is configured, so that a laptop start needs no set-up. Anyone can
/// read it here, so the server refuses it (and any other weak secret) unless it listens on a
/// loopback address only; there it logs a warning.
pub const DEV_JWT_SECRET: &str = "genrt-development-secret-change-me";
/// Shortest HS256 secret accepted off loopback: 256 bits, the size of the HMAC-SHA256 key.
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Shortest secret accepted at all, even on loopback (tests and laptops).
const MIN_LOOPBACK_JWT_SECRET_BYTES: usize = 16;
/// Fragments of placeholder secrets copied from examples and manifests (compared in lower
/// case): a secret containing one was never generated.
const PLACEHOLDER_FRAGMENTS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "your-secret",
    "yoursecret",
    "placeholder",
    "example",
    "development-secret",
];
const MAX_JWT_LEEWAY_S: u64 = 300;
const MIN_JWKS_REFRESH_S: u64 = 10;

/// The top-level keys of [`Config`] that the environment may set (`GENRT_<SECTION>__<KEY>`).
const CONFIG_SECTIONS: &[&str] = &[
    "server",
    "database",
    "auth",
    "cache",
    "supervision",
    "engine",
    "tenancy",
    "queue",
    "webhooks",
    "telemetry",
    "templates",
    "registry",
    "models",
    "adapters",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub cache: CacheConfig,
    pub supervision: SupervisionConfig,
    pub engine: EngineConfig,
    pub tenancy: TenancyConfig,
    pub queue: QueueConfig,
    pub webhooks: WebhookConfig,
    pub telemetry: TelemetryConfig,
    pub templates: TemplatesConfig,
    pub registry: RegistryConfig,
    /// Models served from the start. They seed the model registry (see `registry`), where
    /// more are registered at run time.
    pub models: Vec<ModelConfig>,
    /// LoRA adapters served from the start on the models above; they seed the registry too.
    pub adapters: Vec<AdapterSeed>,
}

/// A LoRA adapter of the configuration (`[[adapters]]`): registered as `model:id` at start,
/// validated against its model before the server listens (so that functions naming it deploy
/// at once), and served like one registered through the API. The file is the operator's: its
/// sha256 is taken at each start (and checked by every node that serves it), and deleting the
/// adapter leaves the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSeed {
    /// The configured model it adapts.
    pub model: String,
    /// Its name: a function's `adapters[].id`, and `model:id` wherever a model is named.
    pub id: String,
    /// The LoRA GGUF.
    pub path: PathBuf,
}

/// The model registry (`POST /v1/models`, see `registry`): where registered files live, how
/// many registrations a node runs at once, and how nodes of one database learn of each
/// other's models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// The model store: `path` sources must lie under it, downloads and uploads are written
    /// to it (`registry/` inside). With several nodes, a volume they all mount.
    pub store_dir: PathBuf,
    /// Largest file accepted from a URL or an upload, in MiB.
    pub max_file_mb: u64,
    /// Registrations (download or hashing, validation) one node runs at once; more wait.
    pub concurrent: usize,
    /// How often each node reads the registry to start models registered elsewhere and stop
    /// deleted ones: the bound on how long another node takes to serve a new model.
    pub sync_interval_ms: u64,
    /// How long a deleted model's running and queued work may take before its replicas stop
    /// anyway.
    pub drain_timeout_s: u64,
    /// Accept `http://` model URLs (a local mirror, tests); `https://` only otherwise. The
    /// address checks of `webhooks.allow_private` apply either way.
    pub allow_http: bool,
    /// Quantizations (`quantize` on registration) one node runs at once; more wait. Each
    /// takes the CPU for seconds to minutes.
    pub concurrent_quantizations: usize,
    /// CPU threads of one quantization; 0 uses every core.
    pub quantize_threads: u32,
    /// The `genrt` executable that loads and quantizes registered files in a child process
    /// (`genrt model-tool`, see `genrt_actors::engine::tool`), so that a file that crashes
    /// llama.cpp ends that process and not the server, and deleting a model stops its
    /// quantization at once. Unset: this executable (set it when embedding the runtime in
    /// another program, as the tests do).
    pub tool_binary: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            store_dir: PathBuf::from("models"),
            max_file_mb: 64 * 1024,
            concurrent: 1,
            sync_interval_ms: 2000,
            drain_timeout_s: 300,
            allow_http: false,
            concurrent_quantizations: 1,
            quantize_threads: 0,
            tool_binary: None,
        }
    }
}

/// Limits on tenants' templates, which are compiled and rendered on a pool of their own
/// threads (see `invocation/render.rs`). A template that exceeds one is refused with 422
/// `template_limit`: at deploy when it does so whatever the input, otherwise at invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplatesConfig {
    /// minijinja instructions one render of one template may execute.
    pub fuel: u64,
    /// Bytes of text one template may render.
    pub max_output_bytes: usize,
    /// Bytes one render may hold at once, intermediate values included.
    pub max_memory_mb: usize,
    /// Wall-clock time one render may take once it has a thread.
    pub render_timeout_ms: u64,
    /// Render threads.
    pub render_threads: usize,
    /// Threads started in place of ones given up on at their deadline, at most.
    pub spare_threads: usize,
    /// Renders waiting for a thread; more are refused with 503 `overloaded`.
    pub queue_capacity: usize,
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        let limits = genrt_functions::TemplateLimits::default();
        Self {
            fuel: limits.fuel,
            max_output_bytes: limits.max_output_bytes,
            max_memory_mb: limits.max_memory_bytes / (1024 * 1024),
            render_timeout_ms: 1000,
            render_threads: 2,
            spare_threads: 8,
            queue_capacity: 4096,
        }
    }
}

impl TemplatesConfig {
    pub fn limits(&self) -> genrt_functions::TemplateLimits {
        genrt_functions::TemplateLimits {
            fuel: self.fuel,
            max_output_bytes: self.max_output_bytes,
            max_memory_bytes: self.max_memory_mb * 1024 * 1024,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.fuel == 0 || self.max_output_bytes == 0 || self.max_memory_mb == 0 {
            return Err(
                "templates: fuel, max_output_bytes and max_memory_mb must be above 0".into(),
            );
        }
        if self.render_timeout_ms == 0 || self.render_threads == 0 || self.queue_capacity == 0 {
            return Err(
                "templates: render_timeout_ms, render_threads and queue_capacity must be above 0"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Defaults for tenants whose settings leave a limit unset. A tenant's own settings (admin
/// API) take precedence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenancyConfig {
    /// Sustained requests per second per tenant; 0 disables the rate limit.
    pub rate_limit_rps: f64,
    /// Requests a tenant may send at once above the sustained rate.
    pub rate_limit_burst: u32,
    /// Synchronous and streaming invocations a tenant may have running at once; 0 is no cap.
    pub max_concurrency: u32,
    /// Streams a tenant may have open at once (each also counts against `max_concurrency`);
    /// 0 is no cap. More get 429 `concurrency_limited`.
    pub max_concurrent_streams: u32,
    /// Prompt plus completion tokens per calendar month (UTC); 0 is no budget.
    pub monthly_token_budget: u64,
    /// Prewarm requests a tenant may have running at once (each runs its inputs one at a
    /// time, in the background); more get 429 `concurrency_limited`.
    pub max_concurrent_prewarms: u32,
    /// Models a tenant may register for itself (`POST /v1/models` with `models:write`), unless
    /// its own limits say otherwise; 0: only the operator registers models.
    pub max_private_models: u32,
    /// MiB a tenant's own models may take together; 0 is no cap beyond
    /// `registry.max_file_mb` each.
    pub max_private_model_mb: u64,
    /// LoRA adapters a tenant may register for itself on the models it can use
    /// (`POST /v1/models/{id}/adapters` with `models:write`), unless its own limits say
    /// otherwise; 0: only the operator registers adapters.
    pub max_adapters: u32,
    /// MiB a tenant's own adapters may take together; 0 is no cap beyond
    /// `registry.max_file_mb` each.
    pub max_adapter_mb: u64,
    /// How long tenant settings and API keys are cached at most. Changes are seen sooner:
    /// at once on the node that made them, within `sync_interval_ms` on the others.
    pub cache_ttl_s: u64,
    /// How often each node looks in the database for API keys revoked and tenants changed
    /// on other nodes (and writes its heartbeat, every 5 s, for the node count that divides
    /// tenant limits among nodes).
    pub sync_interval_ms: u64,
}

/// The durable queue of asynchronous invocations (async mode, batches, triggers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Queued invocations this node runs at once. Keep it near the slots the models have: a
    /// claimed invocation's `timeout_s` runs while it waits in its model's queue.
    pub concurrency: usize,
    /// How long a claimed invocation stays leased without a heartbeat; another node reclaims
    /// it after that.
    pub lease_s: u64,
    /// How often idle workers look for queued work that another node enqueued.
    pub poll_ms: u64,
    /// Attempts, the first included, before a retryable failure becomes final.
    pub max_attempts: u32,
    /// Backoff before retry n is `retry_base_ms * 2^(n-1)`, capped at `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Inputs in one batch, at most.
    pub max_batch_inputs: usize,
    /// Largest batch request body.
    pub batch_body_limit_bytes: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_s: u64,
    /// This node's name in leases; empty means host name, process id and a random suffix.
    pub node_id: String,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        Self {
            rate_limit_rps: 50.0,
            rate_limit_burst: 100,
            max_concurrency: 64,
            max_concurrent_streams: 32,
            monthly_token_budget: 0,
            max_concurrent_prewarms: 1,
            max_private_models: 0,
            max_private_model_mb: 0,
            max_adapters: 8,
            max_adapter_mb: 512,
            cache_ttl_s: 5,
            sync_interval_ms: 1000,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            lease_s: 30,
            poll_ms: 500,
            max_attempts: 3,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            max_batch_inputs: 10_000,
            batch_body_limit_bytes: 32 * 1024 * 1024,
            idempotency_ttl_s: 24 * 3600,
            node_id: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// MiB of host memory that all models' weights and KV caches may hold together; a load or
    /// a replica that would exceed it is refused. 0 means 80% of the machine's memory.
    pub memory_budget_mb: u64,
    /// The folder of llama.cpp's backend modules (`libggml-cpu*.so`, `libggml-cuda.so`).
    /// Unset: the `genrt` binary's own folder when it holds any, else the build's folder.
    pub backends_dir: Option<PathBuf>,
    /// MiB each GPU keeps free beyond the weights and KV caches placed on it: llama.cpp's
    /// compute buffers are allocated on top of those, and other processes may share the card.
    pub gpu_memory_margin_mb: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            memory_budget_mb: 0,
            backends_dir: None,
            gpu_memory_margin_mb: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Largest accepted request body; larger ones get 413 `payload_too_large`.
    pub body_limit_bytes: usize,
    /// HTTP worker threads; 0 uses one per core.
    pub workers: usize,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_timeout_s: u64,
    /// Largest invocation `input` (its JSON, in bytes); larger ones get 413
    /// `payload_too_large`. 0 leaves only `body_limit_bytes`.
    pub max_input_bytes: usize,
    /// Largest `max_tokens` any invocation may ask for, whatever its model's context allows;
    /// more is refused with 422 `invalid_params`. 0 is no cap beyond the context.
    pub max_tokens: u32,
    /// Honour the `X-Genrt-Fault` header (`engine-panic`, `engine-hang`), which the fault and
    /// supervision tests use to break a replica on purpose, from loopback peers only. A
    /// setting rather than a cargo feature so that the tests and `make run` share one build;
    /// the configuration is refused unless the server listens on a loopback address. Never
    /// for production.
    pub fault_injection: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://...` or `postgres://...`; unset means `sqlite://<data_dir>/genrt.db`.
    pub url: Option<String>,
    pub max_connections: u32,
    /// Fail a request with 503 `database_unavailable` rather than wait longer than this.
    pub acquire_timeout_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret shared with whoever issues tokens; `genrt token` signs with it.
    pub jwt_secret: String,
    /// Required `iss` of every token.
    pub issuer: String,
    /// Required `aud` of every token.
    pub audience: String,
    /// Lifetime of tokens printed by `genrt token` unless `--ttl-s` says otherwise.
    pub token_ttl_s: u64,
    /// Clock skew tolerated when checking `exp` and `nbf`.
    pub leeway_s: u64,
    /// The algorithms a token may be signed with; any other, `none` included, is refused.
    /// Unset: RS256 and ES256 when public keys, a JWKS file or a JWKS URL are configured (an
    /// identity provider signs the tokens, so a shared secret would only be a second way in),
    /// otherwise HS256 alone. See [`AuthConfig::algorithms`].
    pub allowed_algorithms: Option<Vec<JwtAlgorithm>>,
    /// Public keys, in PEM files, for RS256 and ES256 tokens.
    pub public_keys: Vec<PublicKeyConfig>,
    /// A JWKS document on disk, read once at start.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document fetched at start (failure stops the start) and every
    /// `jwks_refresh_s` after (failure keeps the keys in use).
    pub jwks_url: Option<String>,
    pub jwks_refresh_s: u64,
    /// Longest lifetime of a credential: a JWT whose `exp` lies further ahead is refused, an
    /// API key's `expires_at` may lie no further ahead (a key created without one gets this
    /// one, or its creator's expiry when that is sooner), and `genrt token` prints no longer
    /// ones. A leaked credential is then worth at most this long. 0 is no limit.
    pub max_token_ttl_s: u64,
}

impl AuthConfig {
    /// The algorithms accepted, after the default of `allowed_algorithms` is decided.
    pub fn algorithms(&self) -> Vec<JwtAlgorithm> {
        if let Some(explicit) = &self.allowed_algorithms {
            return explicit.clone();
        }
        let asymmetric =
            !self.public_keys.is_empty() || self.jwks_file.is_some() || self.jwks_url.is_some();
        if asymmetric {
            vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256]
        } else {
            vec![JwtAlgorithm::HS256]
        }
    }

    /// Why the HS256 secret must not be trusted by a server that others can reach, if so.
    pub fn weak_secret(&self) -> Option<&'static str> {
        let secret = self.jwt_secret.as_str();
        let lower = secret.to_ascii_lowercase();
        let distinct = secret
            .bytes()
            .collect::<std::collections::HashSet<_>>()
            .len();
        if secret.is_empty() {
            Some("is not set")
        } else if secret == DEV_JWT_SECRET {
            Some("is the built-in development secret")
        } else if PLACEHOLDER_FRAGMENTS.iter().any(|p| lower.contains(p)) {
            Some("is a placeholder")
        } else if secret.len() < MIN_JWT_SECRET_BYTES {
            Some("is shorter than 32 bytes")
        } else if distinct < 8 {
            Some("repeats too few characters to be random")
        } else {
            None
        }
    }
}

/// The JWT signature algorithms genrt knows how to verify.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// One asymmetric public key. Tokens name it by `kid`; a token without `kid` may use it only
/// when it is the sole key of its algorithm, and a key without `kid` serves only such tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    #[serde(default)]
    pub kid: Option<String>,
    /// `RS256` or `ES256`: the only algorithm this key verifies.
    pub alg: JwtAlgorithm,
    /// SPKI (`BEGIN PUBLIC KEY`) PEM; for RS256 a PKCS#1 `BEGIN RSA PUBLIC KEY` also works.
    pub pem_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub max_entries: u64,
    pub default_ttl_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    pub max_restarts: usize,
    pub window_s: u64,
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A replica with work whose engine thread finishes no step for this long is declared
    /// hung: its invocations fail with `replica_failed` and a new replica replaces it. 0 turns
    /// the watchdog off.
    pub engine_hang_timeout_s: u64,
}

/// The checks a model's settings must pass, whether from the configuration file or
/// registered through the API.
pub fn validate_model(model: &ModelConfig) -> Result<(), String> {
    if model.id.as_str().contains(':') || model.id.as_str().is_empty() {
        return Err(format!(
            "model id `{}`: must be non-empty without `:` (`model:adapter` names a LoRA adapter)",
            model.id
        ));
    }
    if model.n_ctx < 64 {
        return Err(format!("model `{}`: n_ctx must be at least 64", model.id));
    }
    if model.slots == 0 || model.slots > 64 {
        return Err(format!(
            "model `{}`: slots must be between 1 and 64",
            model.id
        ));
    }
    if model.min_replicas > model.max_replicas {
        return Err(format!(
            "model `{}`: min_replicas exceeds max_replicas",
            model.id
        ));
    }
    if model.max_replicas == 0 || model.queue_capacity == 0 {
        return Err(format!(
            "model `{}`: max_replicas and queue_capacity must be at least 1",
            model.id
        ));
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            cache: CacheConfig::default(),
            supervision: SupervisionConfig::default(),
            engine: EngineConfig::default(),
            tenancy: TenancyConfig::default(),
            queue: QueueConfig::default(),
            webhooks: WebhookConfig::default(),
            telemetry: TelemetryConfig::default(),
            templates: TemplatesConfig::default(),
            registry: RegistryConfig::default(),
            models: vec![ModelConfig::new(DEFAULT_MODEL_ID, DEFAULT_MODEL_PATH)],
            adapters: Vec::new(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            body_limit_bytes: 1024 * 1024,
            workers: 0,
            shutdown_timeout_s: 30,
            max_input_bytes: 256 * 1024,
            max_tokens: 4096,
            fault_injection: false,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            acquire_timeout_s: 5,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: DEV_JWT_SECRET.into(),
            issuer: "genrt".into(),
            audience: "genrt".into(),
            token_ttl_s: 24 * 3600,
            leeway_s: 30,
            allowed_algorithms: None,
            public_keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_s: 300,
            max_token_ttl_s: 365 * 24 * 3600,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            default_ttl_s: 3600,
        }
    }
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        let policy = RestartPolicy::default();
        Self {
            max_restarts: policy.max_restarts,
            window_s: policy.window.as_secs(),
            base_backoff_ms: policy.base_backoff.as_millis() as u64,
            max_backoff_ms: policy.max_backoff.as_millis() as u64,
            engine_hang_timeout_s: policy.engine_hang_timeout.as_secs(),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub jwt_secret: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults < file < environment < flags, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError::Invalid(format!(
                        "{} does not exist",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file(path));
            }
            None => figment = figment.merge(Toml::file("genrt.toml")),
        }
        figment = figment.merge(
            Env::prefixed("GENRT_")
                // These are read by the command line (with their environment fallbacks).
                .ignore(&[
                    "CONFIG",
                    "DATABASE_URL",
                    "JWT_SECRET",
                    "PORT",
                    "HOST",
                    "DATA_DIR",
                ])
                // Only variables naming a configuration section are configuration: other
                // GENRT_* variables (the SDK's GENRT_TOKEN, a script's GENRT_BIN) belong to
                // other programs and must not stop the server from starting.
                // The key arrives in the variable's own case (figment lowercases later).
                .filter(|key| {
                    let section = key.as_str().split("__").next().unwrap_or_default();
                    CONFIG_SECTIONS
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(section))
                })
                .split("__"),
        );
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config
            .telemetry
            .apply_otel_env(|name| std::env::var(name).ok())
            .map_err(ConfigError::Invalid)?;
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    pub fn apply(&mut self, o: &Overrides) {
        if let Some(host) = &o.host {
            self.server.host = host.clone();
        }
        if let Some(port) = o.port {
            self.server.port = port;
        }
        if let Some(dir) = &o.data_dir {
            self.data_dir = dir.clone();
        }
        if let Some(url) = &o.database_url {
            self.database.url = Some(url.clone());
        }
        if let Some(secret) = &o.jwt_secret {
            self.auth.jwt_secret = secret.clone();
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.validate_auth()?;
        self.telemetry.validate().map_err(ConfigError::Invalid)?;
        self.templates.validate().map_err(ConfigError::Invalid)?;
        if self.models.is_empty() {
            return invalid("at least one model must be registered".into());
        }
        let mut seen = std::collections::HashSet::new();
        for model in &self.models {
            if !seen.insert(&model.id) {
                return invalid(format!("model `{}` is registered twice", model.id));
            }
            validate_model(model).map_err(ConfigError::Invalid)?;
        }
        let mut adapters = std::collections::HashSet::new();
        for a in &self.adapters {
            if !self.models.iter().any(|m| m.id.as_str() == a.model) {
                return invalid(format!(
                    "adapter `{}`: model `{}` is not among the configured models",
                    a.id, a.model
                ));
            }
            if !crate::registry::valid_model_id(&a.id) {
                return invalid(format!(
                    "adapter `{}`: lower-case letters, digits, `-`, `_` and `.` only, starting \
                     with a letter or digit",
                    a.id
                ));
            }
            if !adapters.insert((&a.model, &a.id)) {
                return invalid(format!(
                    "adapter `{}:{}` is configured twice",
                    a.model, a.id
                ));
            }
        }
        let r = &self.registry;
        if r.concurrent == 0 || r.concurrent_quantizations == 0 || r.sync_interval_ms < 100 {
            return invalid(
                "registry: concurrent and concurrent_quantizations must be at least 1, sync_interval_ms at least 100"
                    .into(),
            );
        }
        if self.server.fault_injection && !is_loopback_host(&self.server.host) {
            return invalid(format!(
                "server.fault_injection is for tests on a loopback address, not on `{}`",
                self.server.host
            ));
        }
        let q = &self.queue;
        if q.concurrency == 0 || q.lease_s < 2 || q.max_attempts == 0 || q.poll_ms == 0 {
            return invalid(
                "queue: concurrency, max_attempts and poll_ms must be at least 1, lease_s at least 2"
                    .into(),
            );
        }
        if q.max_batch_inputs == 0 || q.max_batch_inputs > 100_000 {
            return invalid("queue.max_batch_inputs must be between 1 and 100000".into());
        }
        if self.tenancy.sync_interval_ms < 100 {
            return invalid("tenancy.sync_interval_ms must be at least 100".into());
        }
        if self.tenancy.rate_limit_rps < 0.0 || !self.tenancy.rate_limit_rps.is_finite() {
            return invalid("tenancy.rate_limit_rps must be a non-negative number".into());
        }
        if let Err(err) = self.webhooks.validate() {
            return invalid(err.to_string());
        }
        if let Some(dir) = &self.engine.backends_dir {
            if !dir.is_dir() {
                return invalid(format!(
                    "engine.backends_dir {} is not a folder",
                    dir.display()
                ));
            }
        }
        if self.server.body_limit_bytes < 1024 {
            return invalid("server.body_limit_bytes must be at least 1024".into());
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let auth = &self.auth;
        let algorithms = auth.algorithms();
        if algorithms.is_empty() {
            return invalid("auth.allowed_algorithms must name at least one algorithm".into());
        }
        // A server others can reach must not accept tokens anyone could sign: the development
        // secret is in this file, placeholders are in every example. On loopback only this
        // machine's users can call it, and `make run` must work with no configuration.
        if algorithms.contains(&JwtAlgorithm::HS256) {
            if let Some(why) = auth.weak_secret() {
                if !is_loopback_host(&self.server.host) {
                    return invalid(format!(
                        "auth.jwt_secret {why}, and the server listens on `{}`, which other \
                         machines can reach: set GENRT_JWT_SECRET to at least \
                         {MIN_JWT_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`), \
                         or listen on 127.0.0.1, or take HS256 out of auth.allowed_algorithms",
                        self.server.host
                    ));
                }
            }
        }
        // Checked even when HS256 is not accepted, because `genrt token` still signs with it.
        if auth.jwt_secret.len() < MIN_LOOPBACK_JWT_SECRET_BYTES {
            return invalid(format!(
                "auth.jwt_secret must be at least {MIN_LOOPBACK_JWT_SECRET_BYTES} bytes"
            ));
        }
        if auth.issuer.is_empty() || auth.audience.is_empty() {
            return invalid("auth.issuer and auth.audience must not be empty".into());
        }
        if auth.token_ttl_s == 0 {
            return invalid("auth.token_ttl_s must be at least 1".into());
        }
        // A large leeway would keep expired tokens alive; it is for clock skew only.
        if auth.leeway_s > MAX_JWT_LEEWAY_S {
            return invalid(format!("auth.leeway_s must be at most {MAX_JWT_LEEWAY_S}"));
        }
        let mut kids = std::collections::HashSet::new();
        for key in &auth.public_keys {
            let file = key.pem_file.display();
            if key.alg == JwtAlgorithm::HS256 {
                return invalid(format!(
                    "auth.public_keys ({file}): alg must be RS256 or ES256; HS256 uses auth.jwt_secret"
                ));
            }
            if !algorithms.contains(&key.alg) {
                return invalid(format!(
                    "auth.public_keys ({file}): {:?} is not in auth.allowed_algorithms",
                    key.alg
                ));
            }
            if let Some(kid) = &key.kid {
                if !kids.insert(kid) {
                    return invalid(format!("auth.public_keys: kid `{kid}` is used twice"));
                }
            }
        }
        self.validate_auth_urls()?;
        // Parsing the key files here makes a bad file a configuration error that names it,
        // rather than every token failing later.
        crate::auth::jwt::check_key_files(auth)
            .map_err(|e| ConfigError::Invalid(format!("auth: {e}")))
    }

    fn validate_auth_urls(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let auth = &self.auth;
        let Some(url) = &auth.jwks_url else {
            return Ok(());
        };
        // Keys fetched over plain HTTP can be swapped by anyone on the path, and with them
        // every tenant's identity. Plain HTTP only to this machine (tests, a sidecar).
        let parsed = url::Url::parse(url).ok();
        let scheme = parsed.as_ref().map(|u| u.scheme());
        let loopback = parsed
            .as_ref()
            .and_then(|u| u.host_str())
            .is_some_and(is_loopback_host);
        if !(scheme == Some("https") || (scheme == Some("http") && loopback)) {
            return invalid(format!(
                "auth.jwks_url `{url}` must be an https URL (http only to a loopback address)"
            ));
        }
        // Identity providers rotate keys over hours; refreshing more often only adds load.
        if auth.jwks_refresh_s < MIN_JWKS_REFRESH_S {
            return invalid(format!(
                "auth.jwks_refresh_s must be at least {MIN_JWKS_REFRESH_S}"
            ));
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("genrt.db").display()
            )
        })
    }

    pub fn memory_budget_bytes(&self) -> u64 {
        if self.engine.memory_budget_mb > 0 {
            return self.engine.memory_budget_mb * 1024 * 1024;
        }
        // MemTotal from /proc/meminfo; elsewhere, a conservative 8 GiB.
        let total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .and_then(|v| v.parse::<u64>().ok())
                    })
            })
            .unwrap_or(8 * 1024 * 1024);
        total_kib * 1024 / 10 * 8
    }

    /// The name this node writes into the leases it takes.
    pub fn node_id(&self) -> String {
        if !self.queue.node_id.is_empty() {
            return self.queue.node_id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "genrt".into());
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        format!("{host}-{}-{suffix}", std::process::id())
    }

    pub fn restart_policy(&self) -> RestartPolicy {
        let s = &self.supervision;
        RestartPolicy {
            max_restarts: s.max_restarts,
            window: std::time::Duration::from_secs(s.window_s),
            base_backoff: std::time::Duration::from_millis(s.base_backoff_ms),
            max_backoff: std::time::Duration::from_millis(s.max_backoff_ms),
            engine_hang_timeout: std::time::Duration::from_secs(s.engine_hang_timeout_s),
        }
    }
}

/// `localhost` or a loopback IP address: only this machine can reach the server.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file_and_register_smollm2() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.models[0].id.as_str(), DEFAULT_MODEL_ID);
        assert!(c.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn file_then_flags_override_defaults() {
        let dir = std::env::temp_dir().join(format!("genrt-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("genrt.toml");
        std::fs::write(
            &file,
            "[server]\nport = 9000\nhost = \"0.0.0.0\"\n\
             [auth]\njwt_secret = \"Zq8vN2xR5tY7wK1mP4sL9cB3hJ6fD0gA\"\n[[models]]\nid = \"a\"\npath = \"a.gguf\"\nmax_replicas = 2\n",
        )
        .unwrap();
        let overrides = Overrides {
            port: Some(9100),
            ..Default::default()
        };
        let c = Config::load(Some(&file), &overrides).unwrap();
        assert_eq!(c.server.port, 9100);
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.models.len(), 1);
        assert_eq!(c.models[0].max_replicas, 2);
        assert_eq!(c.models[0].n_ctx, 2048);
    }

    #[test]
    fn environment_variables_set_nested_keys() {
        // Keys no other test reads, since the environment is the whole process's.
        std::env::set_var("GENRT_QUEUE__NODE_ID", "env-node");
        std::env::set_var("GENRT_TELEMETRY__MAX_TENANT_LABELS", "7");
        std::env::set_var("GENRT_TOKEN", "not configuration");
        let c = Config::load(None, &Overrides::default());
        std::env::remove_var("GENRT_QUEUE__NODE_ID");
        std::env::remove_var("GENRT_TELEMETRY__MAX_TENANT_LABELS");
        std::env::remove_var("GENRT_TOKEN");
        let c = c.unwrap();
        assert_eq!(c.queue.node_id, "env-node");
        assert_eq!(c.telemetry.max_tenant_labels, 7);
    }

    #[test]
    fn invalid_values_are_refused_at_start() {
        let mut c = Config::default();
        c.auth.jwt_secret = "short".into();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.models.push(c.models[0].clone());
        assert!(c.validate().is_err());
        // `:` names an adapter (`model:adapter`): no model id holds one.
        let mut m = Config::default().models[0].clone();
        m.id = genrt_functions::ModelId::new("qwen2.5:7b");
        assert!(validate_model(&m).unwrap_err().contains("adapter"));
    }

    #[test]
    fn adapters_name_a_configured_model_once_each() {
        let seed = |model: &str, id: &str| AdapterSeed {
            model: model.into(),
            id: id.into(),
            path: "fashion.gguf".into(),
        };
        let mut c = Config {
            adapters: vec![seed(DEFAULT_MODEL_ID, "fashion")],
            ..Config::default()
        };
        assert!(c.validate().is_ok());
        c.adapters.push(seed(DEFAULT_MODEL_ID, "fashion"));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
        c.adapters = vec![seed("elsewhere", "fashion")];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("not among the configured models"), "{err}");
        c.adapters = vec![seed(DEFAULT_MODEL_ID, "Fashion:1")];
        assert!(c.validate().is_err());
    }

    #[test]
    fn weak_secrets_are_refused_off_loopback_only() {
        let strong = "Zq8vN2xR5tY7wK1mP4sL9cB3hJ6fD0gA";
        for (secret, why) in [
            (DEV_JWT_SECRET, "development"),
            ("change-me-to-at-least-32-random-bytes", "placeholder"),
            ("0123456789abcdef0123", "shorter than 32"),
            ("abababababababababababababababababab", "repeats"),
        ] {
            let mut c = Config::default();
            c.auth.jwt_secret = secret.into();
            c.validate()
                .unwrap_or_else(|e| panic!("{secret} on loopback: {e}"));
            c.server.host = "0.0.0.0".into();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(why), "{secret}: {err}");
            // Without HS256 the secret verifies nothing.
            c.auth.allowed_algorithms = Some(vec![JwtAlgorithm::RS256]);
            c.validate()
                .unwrap_or_else(|e| panic!("{secret} without HS256: {e}"));
        }
        let mut c = Config::default();
        c.server.host = "0.0.0.0".into();
        c.auth.jwt_secret = strong.into();
        c.validate().unwrap();
        c.auth.jwt_secret = String::new();
        assert!(c.validate().unwrap_err().to_string().contains("not set"));
    }

    #[test]
    fn hs256_is_off_by_default_once_an_identity_provider_signs() {
        let mut auth = AuthConfig::default();
        assert_eq!(auth.algorithms(), [JwtAlgorithm::HS256]);
        auth.jwks_url = Some("https://idp.example.com/jwks.json".into());
        assert_eq!(
            auth.algorithms(),
            [JwtAlgorithm::RS256, JwtAlgorithm::ES256]
        );
        auth.allowed_algorithms = Some(vec![JwtAlgorithm::HS256, JwtAlgorithm::RS256]);
        assert_eq!(
            auth.algorithms(),
            [JwtAlgorithm::HS256, JwtAlgorithm::RS256]
        );
    }

    #[test]
    fn jwks_over_plain_http_only_to_loopback() {
        for (url, ok) in [
            ("https://idp.example.com/jwks.json", true),
            ("http://127.0.0.1:8081/jwks.json", true),
            ("http://[::1]:8081/jwks.json", true),
            ("http://localhost/jwks.json", true),
            ("http://idp.example.com/jwks.json", false),
            ("http://127.0.0.1.evil.example/jwks.json", false),
            ("ftp://idp.example.com/jwks.json", false),
        ] {
            let mut c = Config::default();
            c.auth.jwks_url = Some(url.into());
            let err = c.validate_auth_urls();
            assert_eq!(err.is_ok(), ok, "{url}: {err:?}");
        }
    }

    #[test]
    fn fault_injection_only_on_loopback() {
        let mut c = Config::default();
        c.server.fault_injection = true;
        for host in ["127.0.0.1", "::1", "[::1]", "localhost"] {
            c.server.host = host.into();
            assert!(c.validate().is_ok(), "{host}");
        }
        for host in ["0.0.0.0", "10.0.0.5", "::"] {
            c.server.host = host.into();
            assert!(c.validate().is_err(), "{host}");
        }
    }
}

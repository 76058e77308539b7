//! The model registry: models registered at run time, next to those the configuration seeds.
//!
//! A registration is a row in the `models` table (durable, shared by every node of one
//! database) and a job on the node that accepted it:
//!
//! ```text
//! POST /v1/models ──► awaiting_upload ──PUT …/file──┐
//!        │                                          ▼
//!        └──────────────────────────────────► registering ──► validating ─(quantize)─► quantizing
//!                                                   │                  └──────────────┴──────► ready
//!                                                   │                                   │
//!                                                   └──► failed (code + reason;     DELETE
//!                                                        registering the id again       ▼
//!                                                        replaces it)          deleting ──► (gone)
//! ```
//!
//! `registering` fetches the file (a URL through the webhooks' SSRF guard, streamed to the
//! store) or hashes it (a path under the store, an upload), checks its sha256, then validates
//! it before anything loads it: GGUF magic and version, the header and tensor table, every
//! tensor inside the file (`engine::gguf::inspect`), the size against the memory budget, then
//! llama.cpp loading it as a replica would (architecture known, every tensor it expects there
//! with its shape) in a child process, which a bad file may crash without harm to the server
//! (`engine::tool`). With `quantize`, an F32/F16/BF16 source is then quantized by llama.cpp's
//! own quantizer (`quantizing`, on a pool of `registry.concurrent_quantizations`, in a child
//! that a deletion kills), and the output is validated and hashed in turn and
//! served in its place. A failure removes what the registration wrote to the store and leaves
//! the row `failed` with a code naming the problem. Jobs run on a bounded pool
//! (`registry.concurrent`); progress is written to the row.
//!
//! Each registration of an id (and each seeding) writes a fresh `attempt` to the row; a job
//! changes the row only while it is still its attempt ([`Attempt`]), so that a job left over
//! from a registration deleted and made again cannot move, fail or fill in the new one.
//!
//! Every node reads the registry every `registry.sync_interval_ms` ([`ModelRegistry::sync`]):
//! a `ready` model it does not serve is started once the file's sha256 has been checked on
//! this node (the store is a shared volume); a model deleted or `deleting` is drained and
//! stopped, and a registration job of this node whose row is gone, `deleting` or another
//! attempt (deleted through another node) is cancelled. That interval (plus the hash) bounds
//! how long a model registered on one node takes to be served by the others. Polling rather
//! than LISTEN/NOTIFY: it works on SQLite too, and the registry changes rarely.
//!
//! Deleting drains: new invocations are refused with `model_draining`, running and queued work
//! finishes (up to `registry.drain_timeout_s`), the replicas stop, the row goes and, when no
//! other model names it, the file the registry wrote (URL and upload sources; a `path` source
//! is the operator's and stays).

mod adapters;
mod fetch;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use genrt_actors::engine::gguf::{self, GgufInfo, GgufProblem};
use genrt_actors::engine::quantize;
use genrt_actors::engine::tool::{ModelTool, ToolCommand, ToolError};
use genrt_actors::{ActorTree, ModelChangeError, ModelConfig};
use genrt_functions::{ModelId, TenantId};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::{validate_model, RegistryConfig};
use crate::error::{ApiError, ErrorCode};
use crate::store::{Attempt, ModelChange, ModelRow, NewModel, Store};
use crate::tenancy::{Caller, Scope, Tenancy};
use crate::webhooks::ssrf::UrlGuard;

pub use adapters::{adapter_id, AdapterRegistration};
pub use fetch::Hashed;

/// Where a registered model's file comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Relative to `registry.store_dir` (or absolute inside it).
    Path(String),
    Url(String),
    /// Sent afterwards with `PUT /v1/models/{id}/file`.
    Upload,
}

/// A registration as the API accepted it.
#[derive(Debug, Clone)]
pub struct Registration {
    pub id: ModelId,
    pub source: Source,
    pub sha256: String,
    /// The serving settings, the configuration file's keys (`n_ctx`, `slots`, ...); `id` and
    /// `path` are the registry's.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Quantize the source to this type (`Q8_0`, `Q4_K_M`, ...; see
    /// `engine::quantize::type_names`) before serving it.
    pub quantize: Option<String>,
    /// Let an already quantized source be quantized again.
    pub requantize: bool,
    /// The tenant a private model is registered for; `None` for a public one (the
    /// operator's).
    pub owner: Option<TenantId>,
}

/// A registration job that failed: the code and message the row keeps.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<GgufProblem> for Failure {
    fn from(problem: GgufProblem) -> Self {
        let code = match &problem {
            GgufProblem::NotGguf => ErrorCode::ModelNotGguf,
            GgufProblem::Version(_) => ErrorCode::ModelGgufVersion,
            GgufProblem::Truncated(_) => ErrorCode::ModelTruncated,
            GgufProblem::Io(_) => ErrorCode::InvalidModelSource,
        };
        Self::new(code, problem.to_string())
    }
}

/// The registry service: one per node, cloned into the handlers and the sync loop.
#[derive(Clone)]
pub struct ModelRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    tree: Arc<ActorTree>,
    /// Tenants' limits on their own models (`max_private_models`, `max_private_model_mb`).
    tenancy: Arc<Tenancy>,
    config: RegistryConfig,
    /// The canonical store directory.
    root: PathBuf,
    memory_budget_bytes: u64,
    guard: Arc<UrlGuard>,
    http: reqwest::Client,
    jobs: Arc<Semaphore>,
    quantizations: Arc<Semaphore>,
    /// Runs llama.cpp's quantizer in a child process (see `genrt_actors::engine::tool`).
    tool: ModelTool,
    /// Registration jobs running on this node, by job number, to cancel them when their
    /// registration is deleted (here, or on another node: seen by the sync loop).
    running: Mutex<HashMap<u64, Job>>,
    next_job: AtomicU64,
    /// Whether the first sync of this run has completed (see [`ModelRegistry::run_sync`]).
    synced: AtomicBool,
    /// The runtime the registry was made on (the server's main one): jobs run there, not on
    /// the runtime of the HTTP worker that accepted them, which ends with the HTTP server
    /// and would drop a job mid-way (its clean-up with it).
    runtime: tokio::runtime::Handle,
    /// Set when the server stops ([`ModelRegistry::stop_jobs`]): a job cancelled then leaves
    /// its row as it is, for the next start to resume or fail as interrupted.
    stopping: AtomicBool,
    /// Models this node is draining, so that the sync loop starts one drain per model.
    removing: Mutex<HashSet<String>>,
    /// Files whose sha256 this node checked: path → (size, modified, sha256).
    verified: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

/// A registration job running on this node.
struct Job {
    id: String,
    attempt: String,
    cancel: CancellationToken,
}

/// Longest accepted model id, and the characters: lower-case letters, digits, `-`, `_`, `.`.
/// `:` and `@` are kept out for adapters (`base:adapter`) and versions (`name@3`).
const MAX_ID_LEN: usize = 64;

/// Folder of the store the registry writes to.
const REGISTRY_DIR: &str = "registry";

pub fn valid_model_id(raw: &str) -> bool {
    let mut chars = raw.chars();
    raw.len() <= MAX_ID_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

impl ModelRegistry {
    pub fn new(
        store: Store,
        tree: Arc<ActorTree>,
        tenancy: Arc<Tenancy>,
        config: RegistryConfig,
        memory_budget_bytes: u64,
        guard: Arc<UrlGuard>,
        tool: ModelTool,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(config.store_dir.join(REGISTRY_DIR).join(".partial"))
            .map_err(|e| format!("registry.store_dir {}: {e}", config.store_dir.display()))?;
        let root = config
            .store_dir
            .canonicalize()
            .map_err(|e| format!("registry.store_dir {}: {e}", config.store_dir.display()))?;
        let http = fetch::client(Arc::clone(&guard)).map_err(|e| e.to_string())?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                tree,
                tenancy,
                jobs: Arc::new(Semaphore::new(config.concurrent.max(1))),
                quantizations: Arc::new(Semaphore::new(config.concurrent_quantizations.max(1))),
                tool,
                config,
                root,
                memory_budget_bytes,
                guard,
                http,
                running: Mutex::new(HashMap::new()),
                runtime: tokio::runtime::Handle::current(),
                next_job: AtomicU64::new(0),
                synced: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                removing: Mutex::new(HashSet::new()),
                verified: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn store_root(&self) -> &Path {
        &self.inner.root
    }

    /// Accepts a registration: checks what can be checked now (id, sha256, settings, source)
    /// and records it; the job that fetches and validates the file runs in the background.
    pub async fn register(&self, r: Registration) -> Result<ModelRow, ApiError> {
        let inner = &self.inner;
        if !valid_model_id(r.id.as_str()) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("model id `{}` must be 1 to {MAX_ID_LEN} lower-case letters, digits, `-`, `_` or `.`, starting with a letter or digit", r.id),
            )
            .with_field("id"));
        }
        let sha256 = check_sha256(&r.sha256)?;
        if let Some(owner) = &r.owner {
            self.check_private(owner, &r).await?;
        }
        let quantize = match &r.quantize {
            None => None,
            Some(name) => match quantize::bits_per_weight(name) {
                Some(_) => Some(name.to_ascii_uppercase()),
                None => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "quantize `{name}` is not one of {}",
                            quantize::type_names().join(", ")
                        ),
                    )
                    .with_field("quantize"))
                }
            },
        };
        let (state, kind, source, path) = self.place_source(&r.source, r.id.as_str(), &sha256)?;
        let settings = settings(&r.id, &path, r.settings)?;
        if inner.tree.model(&r.id).is_some() {
            return Err(exists(&r.id));
        }
        let inserted = inner
            .store
            .insert_model(NewModel {
                id: r.id.as_str().to_owned(),
                kind: "model",
                base: None,
                owner: r.owner.as_ref().map(|o| o.as_str().to_owned()),
                state,
                source_kind: kind,
                source,
                sha256,
                path,
                settings: Some(settings),
                quantize,
                requantize: r.requantize,
            })
            .await?;
        if !inserted {
            return Err(exists(&r.id));
        }
        // Read before the job starts: the answer is the registration as accepted, whatever
        // the job does next (a 404 URL fails within milliseconds).
        let row = self.row(r.id.as_str()).await?;
        if state == "registering" {
            self.spawn_job(&row);
        }
        Ok(row)
    }

    /// What a tenant's own registration must satisfy: an id in its namespace
    /// (`<tenant>.<name>`: tenant ids hold no `.`, so no two tenants' ids collide and a
    /// taken id tells nothing of another tenant), a URL or an upload (the store's files are
    /// the operator's), and room within `max_private_models`.
    async fn check_private(&self, owner: &TenantId, r: &Registration) -> Result<(), ApiError> {
        check_tenant_registration(owner, r.id.as_str(), &r.source, "model")?;
        let limits = self.inner.tenancy.limits_of(owner).await?;
        let held = self
            .owned(owner, "model")
            .await?
            .iter()
            .filter(|row| row.id != r.id.as_str())
            .count();
        if held >= limits.max_private_models as usize {
            return Err(ApiError::new(
                ErrorCode::ModelQuotaExceeded,
                format!(
                    "tenant `{owner}` holds {held} of its {} own models (max_private_models)",
                    limits.max_private_models
                ),
            ));
        }
        Ok(())
    }

    /// Where a registration's file is, or will be: the state it starts in, the source's
    /// kind and text, and the path.
    fn place_source(
        &self,
        source: &Source,
        id: &str,
        sha256: &str,
    ) -> Result<(&'static str, &'static str, Option<String>, String), ApiError> {
        Ok(match source {
            Source::Path(raw) => {
                let path = self.resolve_store_path(raw)?;
                (
                    "registering",
                    "path",
                    Some(raw.clone()),
                    path.display().to_string(),
                )
            }
            Source::Url(raw) => {
                self.check_url(raw)?;
                (
                    "registering",
                    "url",
                    Some(raw.clone()),
                    self.file_path(id, sha256),
                )
            }
            Source::Upload => (
                "awaiting_upload",
                "upload",
                None,
                self.file_path(id, sha256),
            ),
        })
    }

    /// A tenant's own models (`kind` `model`) or adapters (`adapter`), but failed
    /// registrations.
    async fn owned(&self, owner: &TenantId, kind: &str) -> Result<Vec<ModelRow>, sea_orm::DbErr> {
        Ok(self
            .inner
            .store
            .model_rows()
            .await?
            .into_iter()
            .filter(|row| {
                row.owner.as_deref() == Some(owner.as_str())
                    && row.state != "failed"
                    && row.kind == kind
            })
            .collect())
    }

    /// The most bytes `row`'s file may take: `registry.max_file_mb`, and for a tenant's own
    /// model (adapter) what is left of its `max_private_model_mb` (`max_adapter_mb`).
    async fn allowance(&self, row: &ModelRow) -> u64 {
        let max = self.max_file_bytes();
        let Some(owner) = row.owner.as_deref().and_then(|o| TenantId::parse(o).ok()) else {
            return max;
        };
        let Ok(limits) = self.inner.tenancy.limits_of(&owner).await else {
            return 0;
        };
        let cap_mb = match row.kind.as_str() {
            "adapter" => limits.max_adapter_mb,
            _ => limits.max_private_model_mb,
        };
        if cap_mb == 0 {
            return max;
        }
        let used: u64 = match self.owned(&owner, &row.kind).await {
            Ok(rows) => rows
                .iter()
                .filter(|other| other.id != row.id)
                .map(|other| other.size_bytes.max(0) as u64)
                .sum(),
            Err(_) => return 0,
        };
        max.min((cap_mb * 1024 * 1024).saturating_sub(used))
    }

    /// Whether `caller` sees `row`: the operator sees every model, a tenant the public ones
    /// and its own.
    pub fn visible(row: &ModelRow, caller: &Caller) -> bool {
        caller.scopes.contains(Scope::Admin)
            || row
                .owner
                .as_deref()
                .is_none_or(|owner| owner == caller.tenant.as_str())
    }

    /// The row of `id` if `caller` may change it (upload, delete): the operator any, a
    /// tenant with `models:write` its own. Another tenant's is `model_not_found`.
    pub async fn row_for_change(&self, id: &str, caller: &Caller) -> Result<ModelRow, ApiError> {
        let row = self.row(id).await?;
        if !Self::visible(&row, caller) {
            return Err(not_found(id));
        }
        if !caller.scopes.contains(Scope::Admin) && row.owner.is_none() {
            return Err(ApiError::new(
                ErrorCode::InsufficientScope,
                format!("model `{id}` is public: only the operator (`admin`) changes it"),
            ));
        }
        Ok(row)
    }

    /// Receives an upload's bytes (`PUT /v1/models/{id}/file`): streamed to the store while
    /// hashed, never held whole; a wrong sha256 or a file over `registry.max_file_mb` fails
    /// the registration at once. Validation then runs as for the other sources.
    pub async fn upload<S, E>(
        &self,
        id: &str,
        caller: &Caller,
        body: S,
    ) -> Result<ModelRow, ApiError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let inner = &self.inner;
        let row = self.row_for_change(id, caller).await?;
        if row.state != "awaiting_upload" {
            return Err(ApiError::new(
                ErrorCode::ModelNotAwaitingUpload,
                format!(
                    "model `{id}` is `{}`: only a registration with source `upload` that has not received its file takes one",
                    row.state
                ),
            ));
        }
        // Claim the row, so that two uploads cannot write the same file.
        if !inner
            .store
            .model_transition(
                Attempt::of(&row),
                &["awaiting_upload"],
                "registering",
                ModelChange::default(),
            )
            .await?
        {
            return Err(ApiError::new(
                ErrorCode::ModelNotAwaitingUpload,
                format!("model `{id}` is already receiving its file"),
            ));
        }
        let (job, cancel) = self.track(Attempt::of(&row));
        let partial = self.partial_path(id);
        let mut guard = UploadGuard {
            registry: self.clone(),
            row: Some(row.clone()),
            job,
            partial: partial.clone(),
        };
        let progress = fetch::Progress::new(inner.store.clone(), &row);
        let result = fetch::receive(
            body,
            &partial,
            Path::new(&row.path),
            row.sha256.as_deref().unwrap_or_default(),
            self.allowance(&row).await,
            &progress,
            &cancel,
        )
        .await;
        guard.row = None;
        match result {
            Ok(hashed) => {
                self.remember(Path::new(&row.path), &hashed.sha256);
                // As received, before validation moves it on.
                let received = self.row(id).await;
                self.spawn_validation(row, job, cancel);
                received
            }
            Err(failure) => {
                self.fail(&row, failure.clone()).await;
                self.untrack(job);
                Err(ApiError::new(failure.code, failure.message))
            }
        }
    }

    /// Deletes a model: `deleting` at once (every node stops giving it work), then drained,
    /// stopped and removed in the background.
    pub async fn delete(&self, id: &str, caller: &Caller) -> Result<ModelRow, ApiError> {
        let inner = &self.inner;
        let row = self.row_for_change(id, caller).await?;
        if row.state != "deleting" {
            self.mark_deleting(id).await?;
        }
        self.cancel_jobs(id);
        self.spawn_removal(row.clone(), true);
        if row.kind == "model" {
            // A model's adapters go with it: nothing could run them.
            for adapter in inner.store.model_rows().await? {
                if adapter.base.as_deref() == Some(id) && adapter.state != "deleting" {
                    self.mark_deleting(&adapter.id).await?;
                    self.spawn_removal(adapter, true);
                }
            }
        }
        // As it is now; not read back, since the removal may already have deleted the row.
        Ok(ModelRow {
            state: "deleting".into(),
            ..row
        })
    }

    async fn mark_deleting(&self, id: &str) -> Result<bool, sea_orm::DbErr> {
        self.cancel_jobs(id);
        self.inner
            .store
            .model_transition_any(
                id,
                None,
                &[
                    "awaiting_upload",
                    "registering",
                    "validating",
                    "quantizing",
                    "ready",
                    "failed",
                ],
                "deleting",
                ModelChange::default(),
            )
            .await
    }

    /// The row of `id`, or `model_not_found`.
    pub async fn row(&self, id: &str) -> Result<ModelRow, ApiError> {
        self.inner
            .store
            .model_row(id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Every model's row (not the adapters').
    pub async fn rows(&self) -> Result<Vec<ModelRow>, ApiError> {
        let rows = self.inner.store.model_rows().await?;
        Ok(rows.into_iter().filter(|r| r.kind == "model").collect())
    }

    /// Models a function may be deployed on: served here, or ready in the registry (another
    /// node registered it and this one has not synced yet). Not those being deleted.
    pub async fn deployable(&self, tenant: &TenantId) -> Result<HashSet<ModelId>, ApiError> {
        let inner = &self.inner;
        // Another tenant's own models are not there at all.
        let rows: Vec<ModelRow> = inner
            .store
            .model_rows()
            .await?
            .into_iter()
            .filter(|r| r.owner.as_deref().is_none_or(|o| o == tenant.as_str()))
            .collect();
        let deleting: HashSet<&str> = rows
            .iter()
            .filter(|r| r.state == "deleting")
            .map(|r| r.id.as_str())
            .collect();
        // Adapters as `base:name`, the way a function names one.
        let mut ids: HashSet<ModelId> = rows
            .iter()
            .filter(|r| r.state == "ready")
            .map(|r| ModelId::new(r.id.clone()))
            .collect();
        ids.extend(
            inner
                .tree
                .model_configs()
                .into_iter()
                .filter(|m| {
                    m.visible_to(tenant)
                        && !deleting.contains(m.id.as_str())
                        && !inner.tree.is_draining(&m.id)
                })
                .map(|m| m.id),
        );
        Ok(ids)
    }

    /// Brings this node in line with the registry: starts `ready` models it does not serve
    /// (after checking their files), drains those deleted, and resumes registrations left
    /// `registering` by a previous run (`resume`, at start).
    pub async fn sync(&self, resume: bool) -> Result<(), sea_orm::DbErr> {
        let inner = &self.inner;
        // Before the rows are read: a job started after this read its row before.
        let jobs: Vec<(u64, String, String)> = {
            let running = inner.running.lock().expect("running lock");
            running
                .iter()
                .map(|(n, j)| (*n, j.id.clone(), j.attempt.clone()))
                .collect()
        };
        let rows = inner.store.model_rows().await?;
        let by_id: HashMap<&str, &ModelRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
        // A job whose registration was deleted on another node (or deleted and made again)
        // stops here: nothing else would tell it.
        for (n, id, attempt) in jobs {
            let current = by_id.get(id.as_str());
            if current.is_none_or(|r| r.state == "deleting" || r.attempt != attempt) {
                let running = inner.running.lock().expect("running lock");
                if let Some(job) = running.get(&n).filter(|j| !j.cancel.is_cancelled()) {
                    tracing::info!(model = %id, "registration deleted elsewhere: its job stops");
                    job.cancel.cancel();
                }
            }
        }
        let served_adapters = inner.tree.adapters();
        for row in &rows {
            let id = ModelId::new(row.id.clone());
            match row.state.as_str() {
                "ready" if row.kind == "adapter" => self.sync_adapter(row, &served_adapters).await,
                "ready" if inner.tree.model(&id).is_none() => {
                    if let Err(err) = self.serve(row).await {
                        tracing::warn!(model = %row.id, error = %err, "registered model not served on this node");
                    }
                }
                // At start, a deletion a previous run left unfinished is this node's to finish.
                "deleting" => self.spawn_removal(row.clone(), resume),
                // A configured adapter still being checked is another node's seeding (this
                // node seeded its own before this sync): not a job left over.
                "registering" | "validating" if resume && row.source_kind == "config" => {}
                "registering" if resume => self.spawn_job(row),
                "validating" | "quantizing" if resume => self.interrupted(row).await,
                _ => {}
            }
        }
        for config in inner.tree.model_configs() {
            let stale = is_stale(by_id.get(config.id.as_str()).copied(), &config);
            if stale {
                self.spawn_removal_of(config.id.as_str().to_owned(), None, false);
            }
        }
        // Adapters whose model is gone or going (registered while it was being deleted, or
        // left by a cascade cut short) go too; the node that moves the row finishes it.
        for row in rows
            .iter()
            .filter(|r| r.kind == "adapter" && r.state != "deleting")
        {
            let base = row.base.as_deref().and_then(|b| by_id.get(b));
            if base.is_none_or(|b| b.state == "deleting") {
                // Logged, not returned: past the read above, a sync always runs to its end,
                // so that a sync with `resume` never resumes a registration twice.
                match self.mark_deleting(&row.id).await {
                    Ok(true) => self.spawn_removal(row.clone(), true),
                    Ok(false) => {}
                    Err(err) => {
                        tracing::warn!(adapter = %row.id, error = %err, "cannot mark an orphaned adapter for deletion")
                    }
                }
            }
        }
        for (model, name, adapter) in served_adapters {
            let id = adapter_id(&model, &name);
            if adapters::is_stale(by_id.get(id.as_str()).copied(), &adapter) {
                inner.tree.remove_adapter(&model, &name);
                tracing::info!(adapter = %id, "adapter no longer served");
            }
        }
        Ok(())
    }

    /// A registration a previous run left while llama.cpp was reading its file (validating
    /// or quantizing): failed, not tried again, since the run may have ended because that
    /// file crashed llama.cpp. Registering it again tries once more.
    async fn interrupted(&self, row: &ModelRow) {
        let failure = Failure::new(
            ErrorCode::ModelRegistrationInterrupted,
            format!(
                "the node stopped while {} this file (if llama.cpp crashed on it, it cannot load it); register it again to retry",
                row.state
            ),
        );
        self.fail(row, failure).await;
    }

    /// Runs [`Self::sync`] at once with `resume` (until it succeeds), then every
    /// `registry.sync_interval_ms` until `stop`.
    ///
    /// The first sync runs after the server listens, not before: it checks the sha256 of
    /// every registered model file this node serves, which for large models takes longer than
    /// an orchestrator waits for a process to answer its liveness probe. Until it completes,
    /// `/readyz` answers 503 ([`Self::is_synced`]), so that no traffic is routed here before
    /// the registered models are served.
    pub async fn run_sync(self, stop: CancellationToken) {
        let every = Duration::from_millis(self.inner.config.sync_interval_ms);
        let mut resume = true;
        loop {
            // A sync fails only when it cannot read the registry, before it did anything:
            // the first is retried with `resume` until it has run once.
            let synced = tokio::select! {
                () = stop.cancelled() => return,
                synced = self.sync(resume) => synced,
            };
            match synced {
                Ok(()) if resume => {
                    resume = false;
                    self.inner.synced.store(true, Ordering::Release);
                    tracing::info!("model registry synced: registered models are served");
                }
                Ok(()) => {}
                Err(err) => tracing::warn!(error = %err, "model registry sync failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Whether this run's first sync has completed: the models and adapters registered
    /// earlier are served, and registrations a previous run left unfinished have restarted.
    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    /// Starts serving a `ready` row on this node, once its file matches its sha256.
    async fn serve(&self, row: &ModelRow) -> Result<(), String> {
        let config = row_config(row)?;
        self.verify_file(row).await?;
        match self.inner.tree.add_model(config).await {
            Ok(()) | Err(ModelChangeError::Exists(_)) => Ok(()),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Checks that the file of `row` on this node has the registered sha256 (once per file
    /// version: the result is kept by size and modification time).
    async fn verify_file(&self, row: &ModelRow) -> Result<(), String> {
        if let Some(expected) = row.file_sha256.as_ref().or(row.sha256.as_ref()) {
            let path = PathBuf::from(&row.path);
            if !self.is_verified(&path, expected) {
                let hashed = fetch::hash_file(&path, None, &CancellationToken::new())
                    .await
                    .map_err(|f| f.message)?;
                if &hashed.sha256 != expected {
                    return Err(format!(
                        "{} has sha256 {} on this node, not the registered {expected}",
                        path.display(),
                        hashed.sha256
                    ));
                }
                self.remember(&path, expected);
            }
        }
        Ok(())
    }

    /// Runs registration `row` (fetch or hash, validate, quantize, serve) on the job pool.
    fn spawn_job(&self, row: &ModelRow) {
        let (job, cancel) = self.track(Attempt::of(row));
        let this = self.clone();
        let (id, attempt) = (row.id.clone(), row.attempt.clone());
        self.inner.runtime.spawn(async move {
            let permit = tokio::select! {
                permit = Arc::clone(&this.inner.jobs).acquire_owned() => permit,
                () = cancel.cancelled() => { this.untrack(job); return; }
            };
            let Ok(_permit) = permit else {
                return;
            };
            // As it is now (it waited for a place): still this registration, still to do.
            let row = match this.inner.store.model_row(&id).await {
                Ok(Some(row)) if row.state == "registering" && row.attempt == attempt => row,
                _ => {
                    this.untrack(job);
                    return;
                }
            };
            let acquired = this.acquire(&row, &cancel).await;
            match acquired {
                Ok(()) => this.validate_and_serve(&row, &cancel).await,
                Err(failure) => this.fail(&row, failure).await,
            }
            this.untrack(job);
        });
    }

    /// Validates an upload once received (`row` as it was claimed).
    fn spawn_validation(&self, row: ModelRow, job: u64, cancel: CancellationToken) {
        let this = self.clone();
        self.inner.runtime.spawn(async move {
            let Ok(_permit) = Arc::clone(&this.inner.jobs).acquire_owned().await else {
                return;
            };
            match this.inner.store.model_row(&row.id).await {
                Ok(Some(now)) if now.state == "registering" && now.attempt == row.attempt => {
                    this.validate_and_serve(&now, &cancel).await;
                }
                Ok(_) => this.abandon(&row).await,
                Err(err) => {
                    tracing::warn!(model = %row.id, error = %err, "cannot read a received upload's registration");
                }
            }
            this.untrack(job);
        });
    }

    /// Puts the file at `row.path` with the registered sha256: downloads it, or hashes what
    /// is there.
    async fn acquire(&self, row: &ModelRow, cancel: &CancellationToken) -> Result<(), Failure> {
        let inner = &self.inner;
        let expected = row.sha256.as_deref().unwrap_or_default();
        let progress = fetch::Progress::new(inner.store.clone(), row);
        let path = PathBuf::from(&row.path);
        let hashed = match row.source_kind.as_str() {
            "url" => {
                let url = row.source.clone().unwrap_or_default();
                let url = self
                    .check_url(&url)
                    .map_err(|e| Failure::new(ErrorCode::InvalidModelSource, e.message.clone()))?;
                fetch::download(
                    &inner.http,
                    url,
                    &self.partial_path(&row.id),
                    &path,
                    expected,
                    self.allowance(row).await,
                    &progress,
                    cancel,
                )
                .await?
            }
            _ => {
                let hashed = fetch::hash_file(&path, Some(&progress), cancel).await?;
                if hashed.sha256 != expected {
                    return Err(fetch::mismatch(expected, &hashed.sha256));
                }
                hashed
            }
        };
        self.remember(&path, &hashed.sha256);
        Ok(())
    }

    /// Validates the file (and quantizes it when asked), marks the row `ready` with what was
    /// read, and starts serving it.
    async fn validate_and_serve(&self, row: &ModelRow, cancel: &CancellationToken) {
        if row.kind == "adapter" {
            return self.validate_adapter_and_serve(row, cancel).await;
        }
        if !self.begin_validation(row).await {
            return;
        }
        let inner = &self.inner;
        let source = PathBuf::from(&row.path);
        // A source to be quantized need not fit the memory budget; its output must.
        let info = match self.validate(&source, row.quantize.is_none(), cancel).await {
            Ok(info) => info,
            Err(failure) => return self.fail(row, failure).await,
        };
        let (served, info, file_sha256) = match &row.quantize {
            None => (source.clone(), info, None),
            Some(target) => match self.quantize(row, &info, target, cancel).await {
                Ok((path, info, sha)) => (path, info, Some(sha)),
                Err(failure) => return self.fail(row, failure).await,
            },
        };
        let quantized = file_sha256.is_some();
        if cancel.is_cancelled() {
            // Deleted meanwhile: the output, and the source if the deletion's removal ran
            // before it was in place, are this job's to remove.
            if quantized {
                let _ = tokio::fs::remove_file(&served).await;
            }
            return self.abandon(row).await;
        }
        // A tenant's quantized output counts against its `max_private_model_mb` too.
        if quantized && info.file_bytes > self.allowance(row).await {
            let _ = tokio::fs::remove_file(&served).await;
            let failure = Failure::new(
                ErrorCode::ModelTooLarge,
                "the quantized model is larger than what is left of the tenant's max_private_model_mb",
            );
            return self.fail(row, failure).await;
        }
        let change = ModelChange {
            path: quantized.then(|| served.display().to_string()),
            info: serde_json::to_string(&info).ok(),
            size_bytes: Some(info.file_bytes),
            file_sha256,
            ..Default::default()
        };
        match inner
            .store
            .model_transition(
                Attempt::of(row),
                &["validating", "quantizing"],
                "ready",
                change,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Deleted (or registered again) meanwhile: as when cancelled above.
                if quantized {
                    let _ = tokio::fs::remove_file(&served).await;
                }
                return self.abandon(row).await;
            }
            Err(err) => {
                tracing::error!(model = %row.id, error = %err, "cannot record a validated model");
                return;
            }
        }
        if quantized && row.source_kind != "path" {
            // The source the registry fetched or received is not served: it goes.
            self.remove_written(row).await;
        }
        tracing::info!(model = %row.id, architecture = %info.architecture, quantization = %info.quantization, "model registered");
        let Ok(Some(ready)) = inner.store.model_row(&row.id).await else {
            return;
        };
        if ready.attempt != row.attempt || ready.state != "ready" {
            return;
        }
        if let Err(err) = self.serve(&ready).await {
            let failure = Failure::new(ErrorCode::ModelUnavailable, err);
            self.fail_state(&ready, &["ready"], failure).await;
        }
    }

    /// Moves `row` to `validating`; false if it is no longer `registering` (deleted
    /// meanwhile) or the move failed (then the row is failed). Recorded before llama.cpp
    /// reads the file: a file that crashes it (its loaders assert on some malformed
    /// vocabularies) must not be read again at every restart.
    async fn begin_validation(&self, row: &ModelRow) -> bool {
        let moved = self
            .inner
            .store
            .model_transition(
                Attempt::of(row),
                &["registering"],
                "validating",
                ModelChange::default(),
            )
            .await;
        match moved {
            Ok(true) => true,
            Ok(false) => {
                self.abandon(row).await;
                false
            }
            Err(err) => {
                let failure = Failure::new(ErrorCode::Internal, err.to_string());
                self.fail(row, failure).await;
                false
            }
        }
    }

    /// Quantizes the validated source of `row` to `target` on the quantization pool, with
    /// progress (the output grows tensor by tensor), then validates and hashes the output.
    /// A registration deleted meanwhile kills the quantizer's process and removes its output.
    async fn quantize(
        &self,
        row: &ModelRow,
        source: &GgufInfo,
        target: &str,
        cancel: &CancellationToken,
    ) -> Result<(PathBuf, GgufInfo, String), Failure> {
        let inner = &self.inner;
        if !quantize::UNQUANTIZED.contains(&source.quantization.as_str()) && !row.requantize {
            return Err(Failure::new(
                ErrorCode::ModelAlreadyQuantized,
                format!(
                    "the source is already quantized ({}); quantizing it again adds the losses of both. Set requantize to do it anyway",
                    source.quantization
                ),
            ));
        }
        let moved = inner
            .store
            .model_transition(
                Attempt::of(row),
                &["validating"],
                "quantizing",
                ModelChange::default(),
            )
            .await
            .map_err(|e| Failure::new(ErrorCode::Internal, e.to_string()))?;
        if !moved {
            // Deleted, or registered again, since validation began.
            return Err(fetch::cancelled());
        }
        let _permit = tokio::select! {
            permit = Arc::clone(&inner.quantizations).acquire_owned() => permit,
            () = cancel.cancelled() => return Err(fetch::cancelled()),
        };
        let output = PathBuf::from(format!(
            "{}-{}.gguf",
            self.file_path(&row.id, row.sha256.as_deref().unwrap_or_default())
                .trim_end_matches(".gguf"),
            target.to_ascii_lowercase()
        ));
        let expected = (source.parameters as f64 * quantize::bits_per_weight(target).unwrap_or(8.0)
            / 8.0) as u64;
        let progress = fetch::Progress::new(inner.store.clone(), row);
        let started = std::time::Instant::now();
        let command = ToolCommand::Quantize {
            input: PathBuf::from(&row.path),
            output: output.clone(),
            type_name: target.to_owned(),
            requantize: row.requantize,
            threads: inner.config.quantize_threads,
        };
        let (tool, stop) = (inner.tool.clone(), cancel.clone());
        // In a child process: a deletion kills it at once (llama.cpp's quantizer cannot be
        // interrupted), and a file that crashes the quantizer crashes only the child.
        let mut work =
            tokio::task::spawn_blocking(move || tool.quantize(&command, &|| stop.is_cancelled()));
        let result = loop {
            tokio::select! {
                done = &mut work => break done.unwrap_or_else(|e| Err(ToolError::Unavailable(e.to_string()))),
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    let written = std::fs::metadata(&output).map_or(0, |m| m.len());
                    // Never 100% before the end: the estimate of the output size is rough.
                    progress.report(written.min(expected * 99 / 100), expected, false).await;
                }
            }
        };
        let checked = async {
            result.map_err(|e| tool_failure(e, ErrorCode::ModelQuantizationFailed, |m| m))?;
            if cancel.is_cancelled() {
                return Err(fetch::cancelled());
            }
            tracing::info!(model = %row.id, target, seconds = started.elapsed().as_secs_f64(), "model quantized");
            let info = self.validate(&output, true, cancel).await?;
            let hashed = fetch::hash_file(&output, None, cancel).await?;
            self.remember(&output, &hashed.sha256);
            Ok((output.clone(), info, hashed.sha256))
        }
        .await;
        if checked.is_err() {
            let _ = tokio::fs::remove_file(&output).await;
        }
        checked
    }

    /// The checks of a file before anything loads it.
    async fn validate(
        &self,
        path: &Path,
        check_budget: bool,
        cancel: &CancellationToken,
    ) -> Result<GgufInfo, Failure> {
        let inner = &self.inner;
        let (p, tree, stop) = (path.to_owned(), Arc::clone(&inner.tree), cancel.clone());
        let budget = match check_budget {
            true => inner.memory_budget_bytes,
            false => u64::MAX,
        };
        let gpu = inner.tree.devices().iter().any(|d| d.takes_layers());
        tokio::task::spawn_blocking(move || {
            let info = gguf::inspect(&p)?;
            if info.kind == "adapter" {
                return Err(Failure::new(
                    ErrorCode::ModelUnsupportedArchitecture,
                    "the file is a LoRA adapter, not a model",
                ));
            }
            // On the CPU the weights live in host memory; with a GPU the pool's own budget
            // check decides per device at load.
            if !gpu && info.file_bytes > budget {
                return Err(Failure::new(
                    ErrorCode::ModelTooLarge,
                    format!(
                        "the weights take {} MiB and the memory budget (engine.memory_budget_mb) is {} MiB",
                        info.file_bytes >> 20,
                        budget >> 20
                    ),
                ));
            }
            tree.probe(&p, &|| stop.is_cancelled()).map_err(|e| {
                // llama.cpp's own words for an architecture it does not know; anything else
                // is the file (a tensor missing or misshapen, or a crash on it).
                let code = match &e {
                    ToolError::Refused(m) if m.contains("unknown model architecture") => {
                        ErrorCode::ModelUnsupportedArchitecture
                    }
                    _ => ErrorCode::ModelUnloadable,
                };
                tool_failure(e, code, |reason| {
                    format!(
                        "this llama.cpp cannot load this `{}` model: {reason}",
                        info.architecture
                    )
                })
            })?;
            Ok(info)
        })
        .await
        .unwrap_or_else(|e| Err(Failure::new(ErrorCode::Internal, e.to_string())))
    }

    /// Stops this node's registration jobs, the server stopping: their child processes are
    /// killed (a quantization would otherwise hold the stop for minutes) and their rows left
    /// as they are, for the next start (`sync(true)`) to resume a download or fail a
    /// registration interrupted while llama.cpp read its file.
    pub fn stop_jobs(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let running = self.inner.running.lock().expect("running lock");
        running.values().for_each(|j| j.cancel.cancel());
    }

    /// Waits, at most `limit`, for this node's registration jobs to end (after
    /// [`Self::stop_jobs`]).
    pub async fn jobs_ended(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.inner.running.lock().expect("running lock").is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Records a failure and removes what the registration wrote.
    async fn fail(&self, row: &ModelRow, failure: Failure) {
        self.fail_state(
            row,
            &["registering", "validating", "quantizing", "awaiting_upload"],
            failure,
        )
        .await
    }

    /// Records `failure` on `row` if it is still this registration in one of `from`, and
    /// removes what the registration wrote unless the id now names a newer one (which may
    /// use the same file).
    async fn fail_state(&self, row: &ModelRow, from: &[&str], failure: Failure) {
        // Stopped with the server (a load refused as the tree shuts down, a child killed):
        // the row and its files stay for the next start.
        if self.inner.stopping.load(Ordering::SeqCst) {
            tracing::info!(model = %row.id, "registration stopped with the server; the next start takes it up");
            return;
        }
        tracing::warn!(model = %row.id, code = failure.code.as_str(), reason = %failure.message, "model registration failed");
        let change = ModelChange {
            error: Some((failure.code.as_str().to_owned(), failure.message)),
            ..Default::default()
        };
        let store = &self.inner.store;
        let ours = match store
            .model_transition(Attempt::of(row), from, "failed", change)
            .await
        {
            Ok(true) => true,
            Ok(false) => self.still_ours(row).await,
            Err(err) => {
                tracing::error!(model = %row.id, error = %err, "cannot record a failed registration");
                true
            }
        };
        if ours {
            self.remove_written(row).await;
        }
    }

    /// A job that stops without recording anything (its registration was deleted, or the id
    /// registered again, while it ran) removes what it wrote, if nothing else will: the
    /// deletion's removal may have run before this job's file was in place.
    async fn abandon(&self, row: &ModelRow) {
        // Stopped with the server, not deleted: the next start takes the registration up.
        if self.inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        if self.still_ours(row).await {
            self.remove_written(row).await;
        }
    }

    /// Whether the files `row`'s registration wrote are still its own to remove: the id is
    /// gone or still this attempt, or a newer registration of it names another file. (A newer
    /// one of the same id and sha256 may be using the very file.)
    async fn still_ours(&self, row: &ModelRow) -> bool {
        match self.inner.store.model_row(&row.id).await {
            Ok(Some(now)) => now.attempt == row.attempt || now.path != row.path,
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Removes the file at `row.path` if the registry wrote it (a download, an upload, a
    /// quantized output: whatever lies in the store's `registry/`), unless another row names
    /// it. A `path` source is the operator's file and stays.
    async fn remove_written(&self, row: &ModelRow) {
        let written = match row.source_kind.as_str() {
            "url" | "upload" => true,
            // A path source is the operator's file; a quantized output of it is the registry's.
            _ => row.file_sha256.is_some(),
        };
        if !written || !Path::new(&row.path).starts_with(self.inner.root.join(REGISTRY_DIR)) {
            return;
        }
        match self.inner.store.model_path_in_use(&row.path, &row.id).await {
            Ok(false) => {
                let _ = tokio::fs::remove_file(&row.path).await;
                self.inner
                    .verified
                    .lock()
                    .expect("verified lock")
                    .remove(Path::new(&row.path));
            }
            Ok(true) => {}
            Err(err) => {
                tracing::warn!(model = %row.id, error = %err, "cannot tell whether a model file is shared; kept")
            }
        }
    }

    fn spawn_removal(&self, row: ModelRow, owner: bool) {
        self.spawn_removal_of(row.id.clone(), Some(row), owner);
    }

    /// Drains and stops `id` on this node; the node that finishes the deletion (`owner`: the
    /// one that took the DELETE, or one that restarts and finds it unfinished) then removes
    /// the file and the row. Drains seen by the sync loop run once per model; the owner's
    /// always runs (two drains of one model are harmless: the second finds it idle).
    fn spawn_removal_of(&self, id: String, row: Option<ModelRow>, owner: bool) {
        let first = self
            .inner
            .removing
            .lock()
            .expect("removing lock")
            .insert(id.clone());
        if !first && !owner {
            return;
        }
        // New work is refused before this returns, not once the task below runs: the DELETE
        // that called it answers `deleting`, and an invocation sent right after that answer
        // must be refused (it ran to the end when the task started late).
        let model = ModelId::new(id.clone());
        let adapter = match model.split_adapter() {
            (base, Some(name)) => {
                // Running sequences hold the loaded adapter; new ones are refused from now.
                self.inner.tree.remove_adapter(&base, name);
                true
            }
            (_, None) => {
                self.inner.tree.refuse_new_work(&model);
                false
            }
        };
        let this = self.clone();
        self.inner.runtime.spawn(async move {
            let inner = &this.inner;
            // `remove_model` also lifts `refuse_new_work`'s flag when the model went meanwhile.
            if !adapter {
                let limit = Duration::from_secs(inner.config.drain_timeout_s);
                match inner.tree.remove_model(&model, limit).await {
                    Ok(drained) => {
                        tracing::info!(model = %id, drained, "model stopped after deletion")
                    }
                    Err(err) => tracing::debug!(model = %id, error = %err, "model removal"),
                }
            }
            if owner {
                if let Some(row) = &row {
                    // A job still running (cancelled above) removes its partial file itself.
                    this.remove_written(row).await;
                }
                if let Err(err) = inner.store.delete_model_row(&id).await {
                    tracing::error!(model = %id, error = %err, "cannot delete a model's row");
                }
            }
            if first {
                inner.removing.lock().expect("removing lock").remove(&id);
            }
        });
    }

    /// Registers a job of registration `at`; returns its number and its cancellation.
    fn track(&self, at: Attempt<'_>) -> (u64, CancellationToken) {
        let inner = &self.inner;
        let n = inner.next_job.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let job = Job {
            id: at.id.to_owned(),
            attempt: at.attempt.to_owned(),
            cancel: cancel.clone(),
        };
        inner.running.lock().expect("running lock").insert(n, job);
        (n, cancel)
    }

    fn untrack(&self, job: u64) {
        self.inner
            .running
            .lock()
            .expect("running lock")
            .remove(&job);
    }

    /// Cancels every job of model `id` running on this node.
    fn cancel_jobs(&self, id: &str) {
        let running = self.inner.running.lock().expect("running lock");
        running
            .values()
            .filter(|j| j.id == id)
            .for_each(|j| j.cancel.cancel());
    }

    fn remember(&self, path: &Path, sha256: &str) {
        if let Ok(md) = std::fs::metadata(path) {
            if let Ok(modified) = md.modified() {
                self.inner
                    .verified
                    .lock()
                    .expect("verified lock")
                    .insert(path.to_owned(), (md.len(), modified, sha256.to_owned()));
            }
        }
    }

    fn is_verified(&self, path: &Path, sha256: &str) -> bool {
        let Ok(md) = std::fs::metadata(path) else {
            return false;
        };
        let verified = self.inner.verified.lock().expect("verified lock");
        verified.get(path).is_some_and(|(len, modified, sha)| {
            *len == md.len() && md.modified().ok() == Some(*modified) && sha == sha256
        })
    }

    fn max_file_bytes(&self) -> u64 {
        self.inner.config.max_file_mb.saturating_mul(1024 * 1024)
    }

    /// Where the registry keeps the file of a URL or upload registration: named by id and
    /// hash, so that two registrations of one file on a shared store cannot collide.
    fn file_path(&self, id: &str, sha256: &str) -> String {
        self.inner
            .root
            .join(REGISTRY_DIR)
            .join(format!("{id}-{}.gguf", sha256.get(..16).unwrap_or(sha256)))
            .display()
            .to_string()
    }

    /// Where one transfer writes before its sha256 is checked: a name of its own, so that two
    /// nodes resuming the same registration on a shared store never write one file. The
    /// transfer removes it on failure; a crash leaves it (`.partial/` may be emptied while no
    /// registration runs).
    fn partial_path(&self, id: &str) -> PathBuf {
        self.inner
            .root
            .join(REGISTRY_DIR)
            .join(".partial")
            .join(format!("{id}-{}.part", uuid::Uuid::new_v4().simple()))
    }

    /// A `path` source: an existing file inside the store, after resolving `..` and links.
    fn resolve_store_path(&self, raw: &str) -> Result<PathBuf, ApiError> {
        let root = &self.inner.root;
        let refuse = |why: String| {
            Err(ApiError::new(ErrorCode::InvalidModelSource, why).with_field("source.path"))
        };
        let joined = root.join(raw);
        let Ok(path) = joined.canonicalize() else {
            return refuse(format!(
                "`{raw}` is not a file in the model store ({})",
                root.display()
            ));
        };
        if !path.starts_with(root) {
            return refuse(format!(
                "`{raw}` is outside the model store ({})",
                root.display()
            ));
        }
        if !path.is_file() {
            return refuse(format!("`{raw}` is not a file"));
        }
        Ok(path)
    }

    fn check_url(&self, raw: &str) -> Result<Url, ApiError> {
        let refuse = |why: String| {
            Err(ApiError::new(ErrorCode::InvalidModelSource, why).with_field("source.url"))
        };
        let url = match self.inner.guard.check_url(raw) {
            Ok(url) => url,
            Err(err) => return refuse(format!("`{raw}` cannot be fetched: {err}")),
        };
        if url.scheme() != "https" && !self.inner.config.allow_http {
            return refuse(format!(
                "`{raw}` is not https (plain http only with registry.allow_http)"
            ));
        }
        Ok(url)
    }
}

/// Fails an upload's registration when the request ends before its body was received (the
/// client went away, the server is stopping: the handler's future is dropped mid-transfer),
/// which would otherwise leave the row `registering` with no job behind it, and removes the
/// partial file.
struct UploadGuard {
    registry: ModelRegistry,
    /// `None` once the transfer has ended either way.
    row: Option<ModelRow>,
    job: u64,
    partial: PathBuf,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let Some(row) = self.row.take() else { return };
        let (registry, partial, job) = (self.registry.clone(), self.partial.clone(), self.job);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::fs::remove_file(&partial).await;
                let failure = Failure::new(
                    ErrorCode::ModelTruncated,
                    "the upload ended before the whole file was received",
                );
                registry.fail(&row, failure).await;
                registry.untrack(job);
            });
        }
    }
}

/// A tenant's own model or adapter (`what`): named `<tenant>.<name>` in its namespace, and
/// fetched by URL or uploaded (the model store's files are the operator's).
fn check_tenant_registration(
    owner: &TenantId,
    name: &str,
    source: &Source,
    what: &str,
) -> Result<(), ApiError> {
    let prefix = format!("{owner}.");
    if !name.starts_with(&prefix) || name.len() == prefix.len() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("a tenant's own {what} is named `{prefix}<name>`"),
        )
        .with_field("id"));
    }
    if matches!(source, Source::Path(_)) {
        return Err(ApiError::new(
            ErrorCode::InvalidModelSource,
            format!("a tenant registers its {what}s by URL or upload; the model store's files are the operator's"),
        )
        .with_field("source.path"));
    }
    Ok(())
}

/// A registration's sha256, as 64 lower-case hexadecimal digits.
fn check_sha256(raw: &str) -> Result<String, ApiError> {
    let sha256 = raw.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "sha256 must be the file's SHA-256 as 64 hexadecimal digits",
        )
        .with_field("sha256"));
    }
    Ok(sha256)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ModelNotFound,
        format!("model `{id}` is not registered"),
    )
}

fn exists(id: &ModelId) -> ApiError {
    ApiError::new(
        ErrorCode::ModelExists,
        format!("model `{id}` is already registered (delete it first)"),
    )
    .with_field("id")
}

/// The model's serving settings: the request's `settings` read as the configuration file's
/// `[[models]]` keys, with the registry's id and path.
fn settings(
    id: &ModelId,
    path: &str,
    mut settings: serde_json::Map<String, serde_json::Value>,
) -> Result<ModelConfig, ApiError> {
    for reserved in ["id", "path"] {
        if settings.contains_key(reserved) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("settings.{reserved} is set by the registry"),
            )
            .with_field(format!("settings.{reserved}")));
        }
    }
    settings.insert("id".into(), id.as_str().into());
    settings.insert("path".into(), path.into());
    let config: ModelConfig =
        serde_json::from_value(serde_json::Value::Object(settings)).map_err(|e| {
            ApiError::new(ErrorCode::InvalidRequest, format!("settings: {e}"))
                .with_field("settings")
        })?;
    validate_model(&config)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e).with_field("settings"))?;
    Ok(config)
}

/// Whether a model this node serves as `served` is no longer what the registry says (`row`
/// being its entry now), so that the node must drain it.
fn is_stale(row: Option<&ModelRow>, served: &ModelConfig) -> bool {
    let Some(row) = row else {
        // Deleted on another node after its drain there.
        return true;
    };
    match row.state.as_str() {
        // Each node serves its own configuration's models as its file says; a registered one
        // must be the registry's current entry (deleted and registered again under its id
        // between two looks of this node, the served one is stale).
        "ready" => {
            row.source_kind != "config"
                && row_config(row).map_or(true, |current| &current != served)
        }
        // Being drained already.
        "deleting" => false,
        // Failed, or being registered again: not what this node serves.
        _ => true,
    }
}

/// The configuration a row describes, with its current path.
pub fn row_config(row: &ModelRow) -> Result<ModelConfig, String> {
    let raw = row
        .settings
        .as_deref()
        .ok_or_else(|| format!("model `{}` has no settings", row.id))?;
    let mut config: ModelConfig = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    config.path = PathBuf::from(&row.path);
    config.owner = match &row.owner {
        Some(owner) => Some(TenantId::parse(owner).map_err(|e| e.to_string())?),
        None => None,
    };
    Ok(config)
}

/// The failure of a `genrt model-tool` run: the tool's own trouble (a wrong
/// `registry.tool_binary`) is `internal`, a cancellation is the deletion's, and what the file
/// caused (llama.cpp refused it or crashed on it) is `code`, with `message` made of the reason.
pub(super) fn tool_failure(
    e: ToolError,
    code: ErrorCode,
    message: impl FnOnce(String) -> String,
) -> Failure {
    match e {
        ToolError::Unavailable(m) => Failure::new(ErrorCode::Internal, m),
        ToolError::Cancelled => fetch::cancelled(),
        ToolError::Refused(m) | ToolError::Crashed(m) => Failure::new(code, message(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_keep_adapter_and_version_separators_out() {
        for ok in ["smollm2", "qwen2.5-0.5b", "a_b", "9x"] {
            assert!(valid_model_id(ok), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "-lead",
            "base:adapter",
            "name@3",
            "a/b",
            &"x".repeat(65),
        ] {
            assert!(!valid_model_id(bad), "{bad}");
        }
    }

    fn row(state: &str, kind: &str, config: &ModelConfig) -> ModelRow {
        ModelRow {
            id: config.id.as_str().into(),
            path: config.path.display().to_string(),
            n_ctx: config.n_ctx as i32,
            registered_at: chrono::Utc::now(),
            owner: None,
            state: state.into(),
            source_kind: kind.into(),
            source: None,
            sha256: None,
            size_bytes: 0,
            bytes_done: 0,
            settings: Some(serde_json::to_string(config).unwrap()),
            info: None,
            error_code: None,
            error_message: None,
            updated_at: None,
            quantize: None,
            requantize: false,
            file_sha256: None,
            kind: "model".into(),
            base: None,
            attempt: String::new(),
        }
    }

    #[test]
    fn a_node_drains_what_the_registry_no_longer_describes() {
        let served = ModelConfig::new("m", "/store/registry/m-1.gguf");
        assert!(!is_stale(Some(&row("ready", "upload", &served)), &served));
        // An adapter is served while its entry is ready with the same file.
        let adapter = genrt_actors::Adapter {
            path: "/store/registry/m:a-1.gguf".into(),
            sha256: "aa".into(),
            owner: None,
        };
        let mut entry = row("ready", "upload", &served);
        entry.sha256 = Some("aa".into());
        assert!(!adapters::is_stale(Some(&entry), &adapter));
        entry.sha256 = Some("bb".into());
        assert!(
            adapters::is_stale(Some(&entry), &adapter),
            "registered again"
        );
        entry.state = "deleting".into();
        assert!(adapters::is_stale(Some(&entry), &adapter));
        assert!(adapters::is_stale(None, &adapter));
        assert!(!is_stale(
            Some(&row("deleting", "upload", &served)),
            &served
        ));
        assert!(is_stale(None, &served), "deleted elsewhere");
        for state in [
            "registering",
            "validating",
            "quantizing",
            "awaiting_upload",
            "failed",
        ] {
            assert!(
                is_stale(Some(&row(state, "url", &served)), &served),
                "{state}"
            );
        }
        // Deleted and registered again between two looks: other settings, or another file.
        let mut again = served.clone();
        again.n_ctx = 256;
        assert!(is_stale(Some(&row("ready", "upload", &again)), &served));
        let moved = ModelConfig::new("m", "/store/registry/m-2.gguf");
        assert!(is_stale(Some(&row("ready", "path", &moved)), &served));
        // A configured model is served as this node's configuration says.
        assert!(!is_stale(Some(&row("ready", "config", &again)), &served));
    }

    #[test]
    fn settings_are_the_configuration_keys_and_are_checked() {
        let id = ModelId::new("m");
        let ok = serde_json::json!({"n_ctx": 1024, "slots": 2});
        let config = settings(&id, "/s/m.gguf", ok.as_object().unwrap().clone()).unwrap();
        assert_eq!((config.n_ctx, config.slots), (1024, 2));
        assert_eq!(config.path, PathBuf::from("/s/m.gguf"));
        let unknown = serde_json::json!({"n_ctxx": 1024});
        let err = settings(&id, "p", unknown.as_object().unwrap().clone()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        let bad = serde_json::json!({"slots": 0});
        assert!(settings(&id, "p", bad.as_object().unwrap().clone()).is_err());
        let reserved = serde_json::json!({"path": "/etc/passwd"});
        assert!(settings(&id, "p", reserved.as_object().unwrap().clone()).is_err());
    }
}

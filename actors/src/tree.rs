//! [`ActorTree`], the handle the runtime holds: start the tree, invoke, report, shut down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use genrt_functions::{FunctionName, ModelId, TenantId};
use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, ActorStatus};
use tokio::sync::oneshot;

use crate::dispatcher::DispatcherMsg;
use crate::embeddings::EmbeddingService;
use crate::engine::{devices, Backend, Device, Embedding, Placement};
use crate::memory::{Budgets, MemoryBudget};
use crate::model_pool::PoolMsg;
use crate::root::{RootArgs, RootMsg, RootSupervisor};
use crate::supervision::RestartPolicy;
use crate::{Invocation, InvocationOutcome, InvokeError, ModelConfig, ModelStatus, ResponseCache};

/// Grace beyond a function's own timeout before the caller stops waiting, so that the engine's
/// own deadline check (which frees the replica) normally fires first.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest the whole tree may take to stop.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(45);

/// The current handles of the tree's long-lived actors. Only the root supervisor writes it,
/// when it starts or restarts a child; everyone else reads.
#[derive(Default)]
pub(crate) struct Directory {
    dispatcher: RwLock<Option<ActorRef<DispatcherMsg>>>,
    pools: RwLock<BTreeMap<ModelId, (ModelConfig, ActorRef<PoolMsg>)>>,
    /// Models being removed: the dispatcher refuses new work for them (`model_draining`)
    /// while what they already accepted finishes.
    draining: RwLock<BTreeSet<ModelId>>,
    /// The LoRA adapters each model may run with, by name.
    adapters: RwLock<BTreeMap<ModelId, BTreeMap<String, Adapter>>>,
}

/// A LoRA adapter registered for a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    pub path: std::path::PathBuf,
    pub sha256: String,
    /// The tenant a private adapter belongs to; `None` for a public one.
    pub owner: Option<TenantId>,
}

impl Adapter {
    pub fn visible_to(&self, tenant: &TenantId) -> bool {
        self.owner.as_ref().is_none_or(|owner| owner == tenant)
    }
}

impl Directory {
    /// Adapter `name` of `model`, if `tenant` may use it.
    pub(crate) fn adapter(
        &self,
        model: &ModelId,
        name: &str,
        tenant: &TenantId,
    ) -> Option<Adapter> {
        self.adapters
            .read()
            .expect("directory lock")
            .get(model)
            .and_then(|adapters| adapters.get(name))
            .filter(|a| a.visible_to(tenant))
            .cloned()
    }

    pub(crate) fn pool(&self, id: &ModelId) -> Option<(ModelConfig, ActorRef<PoolMsg>)> {
        self.pools.read().expect("directory lock").get(id).cloned()
    }

    pub(crate) fn set_pool(&self, config: ModelConfig, pool: ActorRef<PoolMsg>) {
        self.pools
            .write()
            .expect("directory lock")
            .insert(config.id.clone(), (config, pool));
    }

    pub(crate) fn remove_pool(&self, id: &ModelId) -> Option<ActorRef<PoolMsg>> {
        self.pools
            .write()
            .expect("directory lock")
            .remove(id)
            .map(|(_, pool)| pool)
    }

    pub(crate) fn is_draining(&self, id: &ModelId) -> bool {
        self.draining.read().expect("directory lock").contains(id)
    }

    fn set_draining(&self, id: &ModelId, draining: bool) {
        let mut set = self.draining.write().expect("directory lock");
        if draining {
            set.insert(id.clone());
        } else {
            set.remove(id);
        }
    }

    pub(crate) fn take_pools(&self) -> Vec<ActorRef<PoolMsg>> {
        std::mem::take(&mut *self.pools.write().expect("directory lock"))
            .into_values()
            .map(|(_, pool)| pool)
            .collect()
    }

    pub(crate) fn dispatcher(&self) -> Option<ActorRef<DispatcherMsg>> {
        self.dispatcher.read().expect("directory lock").clone()
    }

    pub(crate) fn set_dispatcher(&self, dispatcher: ActorRef<DispatcherMsg>) {
        *self.dispatcher.write().expect("directory lock") = Some(dispatcher);
    }

    pub(crate) fn take_dispatcher(&self) -> Option<ActorRef<DispatcherMsg>> {
        self.dispatcher.write().expect("directory lock").take()
    }
}

#[derive(Debug, Clone)]
pub struct TreeConfig {
    pub models: Vec<ModelConfig>,
    pub restart_policy: RestartPolicy,
    /// Bytes of weights and KV caches all models together may hold in host memory.
    pub memory_budget_bytes: u64,
    /// Bytes each GPU keeps free beyond the weights and KV caches placed on it, for llama.cpp's
    /// compute buffers and whatever else shares the card.
    pub gpu_memory_margin_bytes: u64,
}

pub struct ActorTree {
    root: ActorRef<RootMsg>,
    join: Mutex<Option<JoinHandle<()>>>,
    directory: Arc<Directory>,
    /// Served models in the order they were added (the configuration's first). Models are
    /// added and removed at run time by the runtime's registry.
    models: RwLock<Vec<ModelConfig>>,
    /// One per model configured with `embeddings = true`.
    embeddings: RwLock<BTreeMap<ModelId, Arc<EmbeddingService>>>,
    backend: Arc<dyn Backend>,
}

/// Why a model could not be added to or removed from the tree.
#[derive(Debug, thiserror::Error)]
pub enum ModelChangeError {
    #[error("model `{0}` is already served")]
    Exists(ModelId),
    #[error("model `{0}` is not served")]
    Unknown(ModelId),
    #[error("model `{model}` cannot be placed: {reason}")]
    Placement { model: ModelId, reason: String },
    #[error("the actor tree is stopping")]
    ShuttingDown,
}

/// How often a draining model's pool is asked whether its work has finished.
const DRAIN_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error("actor tree failed to start: {0}")]
pub struct StartError(String);

impl ActorTree {
    pub async fn start(
        config: TreeConfig,
        backend: Arc<dyn Backend>,
        cache: Arc<dyn ResponseCache>,
    ) -> Result<Self, StartError> {
        let directory = Arc::new(Directory::default());
        let devices = backend.devices();
        let mut placements = BTreeMap::new();
        for model in &config.models {
            let placement = Placement::decide(model, &devices).map_err(StartError)?;
            tracing::info!(model = %model.id, device = %placement.label(), "model placement");
            placements.insert(model.id.clone(), placement);
        }
        let gpus = devices::gpus(&devices)
            .into_iter()
            .map(|gpu| {
                let (probe_backend, index) = (Arc::clone(&backend), gpu.index);
                let limit = match gpu.memory_total_bytes {
                    0 => u64::MAX,
                    total => total.saturating_sub(config.gpu_memory_margin_bytes),
                };
                MemoryBudget::device(
                    format!("{} ({})", gpu.name, gpu.description),
                    limit,
                    Box::new(move || probe_backend.free_memory(index)),
                    config.gpu_memory_margin_bytes,
                )
            })
            .collect();
        let embeddings = config
            .models
            .iter()
            .filter(|m| m.embeddings)
            .map(|m| {
                let service = EmbeddingService::new(m.clone(), Arc::clone(&backend));
                (m.id.clone(), Arc::new(service))
            })
            .collect();
        let args = RootArgs {
            models: config.models.clone(),
            backend,
            cache,
            directory: Arc::clone(&directory),
            policy: config.restart_policy,
            budgets: Budgets {
                host: MemoryBudget::new(config.memory_budget_bytes),
                gpus,
            },
            placements,
        };
        let tree_backend = Arc::clone(&args.backend);
        let (root, join) = Actor::spawn(None, RootSupervisor, args)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        Ok(Self {
            root,
            join: Mutex::new(Some(join)),
            directory,
            models: RwLock::new(config.models),
            embeddings: RwLock::new(embeddings),
            backend: tree_backend,
        })
    }

    /// Starts serving `config` (a pool that scales from zero like the configured ones).
    pub async fn add_model(&self, config: ModelConfig) -> Result<(), ModelChangeError> {
        if self.model(&config.id).is_some() {
            return Err(ModelChangeError::Exists(config.id));
        }
        let placement = Placement::decide(&config, &self.backend.devices()).map_err(|reason| {
            ModelChangeError::Placement {
                model: config.id.clone(),
                reason,
            }
        })?;
        let id = config.id.clone();
        let result = self
            .root
            .call(
                |reply| RootMsg::AddPool(Box::new((config.clone(), placement)), reply),
                Some(STATUS_TIMEOUT * 5),
            )
            .await
            .ok()
            .and_then(success)
            .ok_or(ModelChangeError::ShuttingDown)?;
        let added = result.map_err(|reason| ModelChangeError::Placement {
            model: id.clone(),
            reason,
        })?;
        if !added {
            return Err(ModelChangeError::Exists(id));
        }
        if config.embeddings {
            let service = EmbeddingService::new(config.clone(), Arc::clone(&self.backend));
            self.embeddings
                .write()
                .expect("embeddings lock")
                .insert(id, Arc::new(service));
        }
        self.models.write().expect("models lock").push(config);
        Ok(())
    }

    /// Stops serving `id` without cutting off accepted work: new invocations are refused with
    /// [`InvokeError::ModelDraining`] at once; the pool stops when nothing is running or
    /// queued on it any more, or when `limit` has passed (what is left then fails as at
    /// shutdown). Returns whether the work had all finished.
    pub async fn remove_model(
        &self,
        id: &ModelId,
        limit: Duration,
    ) -> Result<bool, ModelChangeError> {
        if self.model(id).is_none() {
            // A `refuse_new_work` that lost a race with another removal's end: lift its flag,
            // so that a model registered again under this id is served.
            self.directory.set_draining(id, false);
            return Err(ModelChangeError::Unknown(id.clone()));
        }
        self.directory.set_draining(id, true);
        let started = tokio::time::Instant::now();
        // Twice idle in a row: an invocation the dispatcher passed on just before the model
        // started draining may still be on its way from the function actor to the pool.
        let mut idle_polls = 0;
        while idle_polls < 2 {
            let idle = match self.directory.pool(id) {
                Some((_, pool)) => pool
                    .call(PoolMsg::Status, Some(STATUS_TIMEOUT))
                    .await
                    .ok()
                    .and_then(success)
                    .is_none_or(|s| s.busy_slots == 0 && s.queued == 0 && s.background_queued == 0),
                None => true,
            };
            idle_polls = if idle { idle_polls + 1 } else { 0 };
            if idle_polls < 2 && started.elapsed() > limit {
                tracing::warn!(model = %id, ?limit, "model still busy at the end of its drain; stopping it");
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let drained = idle_polls >= 2;
        let _ = self
            .root
            .call(
                |reply| RootMsg::RemovePool(id.clone(), reply),
                Some(STATUS_TIMEOUT * 10),
            )
            .await;
        self.embeddings.write().expect("embeddings lock").remove(id);
        self.models
            .write()
            .expect("models lock")
            .retain(|m| &m.id != id);
        self.directory.set_draining(id, false);
        Ok(drained)
    }

    /// Whether this engine can load the model file at `path` (see [`Backend::probe`]),
    /// stopping early when `cancelled` says so. Reads the file: call it off the async threads.
    pub fn probe(
        &self,
        path: &std::path::Path,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), crate::engine::tool::ToolError> {
        self.backend.probe(path, cancelled)
    }

    /// Whether this engine can load the adapter at `adapter` onto the model at `base` (see
    /// [`Backend::probe_adapter`]), stopping early when `cancelled` says so. Blocking.
    pub fn probe_adapter(
        &self,
        base: &std::path::Path,
        adapter: &std::path::Path,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), crate::engine::tool::ToolError> {
        self.backend.probe_adapter(base, adapter, cancelled)
    }

    /// The first, synchronous step of [`Self::remove_model`]: from this call on, new
    /// invocations of `id` are refused with [`InvokeError::ModelDraining`]. For a caller that
    /// runs the drain in the background but must refuse new work before it answers (a DELETE
    /// that said `deleting`); it must call `remove_model` afterwards, which lifts the flag.
    pub fn refuse_new_work(&self, id: &ModelId) {
        if self.model(id).is_some() {
            self.directory.set_draining(id, true);
        }
    }

    /// Whether `id` is being removed (new work is refused).
    pub fn is_draining(&self, id: &ModelId) -> bool {
        self.directory.is_draining(id)
    }

    /// Lets invocations of `model` use adapter `name` (replacing one of that name). It is
    /// loaded when a sequence first uses it.
    pub fn add_adapter(&self, model: &ModelId, name: &str, adapter: Adapter) {
        self.directory
            .adapters
            .write()
            .expect("directory lock")
            .entry(model.clone())
            .or_default()
            .insert(name.to_owned(), adapter);
    }

    /// Refuses adapter `name` of `model` to new invocations; sequences running with it finish,
    /// and the model's adapter cache unloads it once idle.
    pub fn remove_adapter(&self, model: &ModelId, name: &str) -> bool {
        let mut adapters = self.directory.adapters.write().expect("directory lock");
        let removed = adapters
            .get_mut(model)
            .is_some_and(|m| m.remove(name).is_some());
        adapters.retain(|_, m| !m.is_empty());
        removed
    }

    /// Adapter `name` of `model`, if `tenant` may use it.
    pub fn adapter(&self, model: &ModelId, name: &str, tenant: &TenantId) -> Option<Adapter> {
        self.directory.adapter(model, name, tenant)
    }

    /// Whether `tenant` can run `reference`: a model it may see, or `base:adapter` with an
    /// adapter of that model it may use.
    pub fn can_run(&self, reference: &ModelId, tenant: &TenantId) -> bool {
        let (base, adapter) = reference.split_adapter();
        self.model(&base).is_some_and(|m| m.visible_to(tenant))
            && adapter.is_none_or(|name| self.adapter(&base, name, tenant).is_some())
    }

    /// Every adapter served, by model and name.
    pub fn adapters(&self) -> Vec<(ModelId, String, Adapter)> {
        let adapters = self.directory.adapters.read().expect("directory lock");
        adapters
            .iter()
            .flat_map(|(model, m)| {
                m.iter()
                    .map(|(name, a)| (model.clone(), name.clone(), a.clone()))
            })
            .collect()
    }

    /// The devices of the loaded llama.cpp backends, with their memory as of now.
    pub fn devices(&self) -> Vec<Device> {
        self.backend.devices()
    }

    /// Embeds `texts` with `model` for `tenant`; the model must be configured with
    /// `embeddings = true`, and public or `tenant`'s own.
    pub async fn embed(
        &self,
        tenant: &TenantId,
        model: &ModelId,
        texts: Vec<String>,
    ) -> Result<Vec<Embedding>, InvokeError> {
        if self.model(model).is_some_and(|m| !m.visible_to(tenant)) {
            return Err(InvokeError::UnknownModel(model.clone()));
        }
        if self.directory.is_draining(model) {
            return Err(InvokeError::ModelDraining(model.clone()));
        }
        let service = self
            .embeddings
            .read()
            .expect("embeddings lock")
            .get(model)
            .cloned()
            .ok_or_else(|| InvokeError::UnknownModel(model.clone()))?;
        service.embed(texts).await
    }

    pub fn model(&self, id: &ModelId) -> Option<ModelConfig> {
        let models = self.models.read().expect("models lock");
        models.iter().find(|m| &m.id == id).cloned()
    }

    pub fn model_configs(&self) -> Vec<ModelConfig> {
        self.models.read().expect("models lock").clone()
    }

    /// Whether the root and the dispatcher are running: what `/readyz` reports.
    pub fn is_running(&self) -> bool {
        self.root.get_status() == ActorStatus::Running
            && self
                .directory
                .dispatcher()
                .is_some_and(|d| d.get_status() == ActorStatus::Running)
    }

    pub async fn invoke(&self, invocation: Invocation) -> Result<InvocationOutcome, InvokeError> {
        let deadline = invocation.deadline() + DEADLINE_GRACE;
        let dispatcher = self
            .directory
            .dispatcher()
            .ok_or(InvokeError::ShuttingDown)?;
        let (tx, rx) = oneshot::channel();
        dispatcher
            .cast(DispatcherMsg::Invoke(invocation, tx.into()))
            .map_err(|_| InvokeError::ShuttingDown)?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(InvokeError::ReplicaFailed {
                reason: "the invocation was dropped by a failing actor".into(),
            }),
            Err(_) => Err(InvokeError::Timeout),
        }
    }

    /// Status of every registered model, in configuration order.
    pub async fn models(&self) -> Vec<ModelStatus> {
        let models = self.model_configs();
        let mut out = Vec::with_capacity(models.len());
        for config in &models {
            let status = match self.directory.pool(&config.id) {
                Some((_, pool)) => pool
                    .call(PoolMsg::Status, Some(STATUS_TIMEOUT))
                    .await
                    .ok()
                    .and_then(success),
                None => None,
            };
            out.push(status.unwrap_or_else(|| ModelStatus {
                id: config.id.clone(),
                phase: crate::ModelPhase::Failed {
                    reason: "model pool is not running".into(),
                },
                replicas: 0,
                busy_replicas: 0,
                slots_per_replica: config.slots,
                busy_slots: 0,
                queued: 0,
                background_queued: 0,
                min_replicas: config.min_replicas,
                max_replicas: config.max_replicas,
                n_ctx: config.n_ctx,
                replica_restarts: 0,
                loads: 0,
                last_load_ms: None,
                memory_bytes: 0,
                gpu_memory_bytes: 0,
                device: String::new(),
                gpu_layers: None,
                last_scaling: None,
                prefix_cache: Default::default(),
                adapters_loaded: 0,
                adapter_memory_bytes: 0,
            }));
        }
        out
    }

    pub async fn active_versions(&self, tenant: &TenantId, name: &FunctionName) -> Vec<u32> {
        let Some(dispatcher) = self.directory.dispatcher() else {
            return Vec::new();
        };
        let (tenant, name) = (tenant.clone(), name.clone());
        dispatcher
            .call(
                |reply| DispatcherMsg::ActiveVersions(tenant, name, reply),
                Some(STATUS_TIMEOUT),
            )
            .await
            .ok()
            .and_then(success)
            .unwrap_or_default()
    }

    /// Stops the dispatcher, then the pools (which join their engine threads), then the root.
    /// Each stop inside is bounded; so is the whole, so that shutdown always ends.
    pub async fn shutdown(&self) {
        self.root.stop(Some("shutdown".into()));
        let join = self.join.lock().expect("join lock").take();
        if let Some(join) = join {
            if tokio::time::timeout(SHUTDOWN_LIMIT, join).await.is_err() {
                tracing::error!("actor tree did not stop within {SHUTDOWN_LIMIT:?}");
            }
        }
    }
}

fn success<T>(result: CallResult<T>) -> Option<T> {
    match result {
        CallResult::Success(value) => Some(value),
        _ => None,
    }
}

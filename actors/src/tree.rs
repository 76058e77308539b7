//! [`ActorTree`], the handle the runtime holds: start the tree, invoke, report, shut down.

use std::collections::BTreeMap;
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
}

impl Directory {
    pub(crate) fn pool(&self, id: &ModelId) -> Option<(ModelConfig, ActorRef<PoolMsg>)> {
        self.pools.read().expect("directory lock").get(id).cloned()
    }

    pub(crate) fn set_pool(&self, config: ModelConfig, pool: ActorRef<PoolMsg>) {
        self.pools
            .write()
            .expect("directory lock")
            .insert(config.id.clone(), (config, pool));
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
    models: Vec<ModelConfig>,
    /// One per model configured with `embeddings = true`.
    embeddings: BTreeMap<ModelId, EmbeddingService>,
    backend: Arc<dyn Backend>,
}

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
                (m.id.clone(), service)
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
            models: config.models,
            embeddings,
            backend: tree_backend,
        })
    }

    /// The devices of the loaded llama.cpp backends, with their memory as of now.
    pub fn devices(&self) -> Vec<Device> {
        self.backend.devices()
    }

    /// Embeds `texts` with `model`, which must be configured with `embeddings = true`.
    pub async fn embed(
        &self,
        model: &ModelId,
        texts: Vec<String>,
    ) -> Result<Vec<Embedding>, InvokeError> {
        let service = self
            .embeddings
            .get(model)
            .ok_or_else(|| InvokeError::UnknownModel(model.clone()))?;
        service.embed(texts).await
    }

    pub fn model(&self, id: &ModelId) -> Option<&ModelConfig> {
        self.models.iter().find(|m| &m.id == id)
    }

    pub fn model_configs(&self) -> &[ModelConfig] {
        &self.models
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
        let mut out = Vec::with_capacity(self.models.len());
        for config in &self.models {
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

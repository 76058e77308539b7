//! Models, devices and health.

use chrono::{DateTime, Utc};
use genrt_actors::{ModelPhase, ModelStatus};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ScalingInfo {
    pub at: DateTime<Utc>,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// The model's prefix caches since the process started, over all its replicas.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrefixCacheInfo {
    /// Sequences that looked for a cached prompt prefix.
    pub lookups: u64,
    /// Of those, the ones that reused one.
    pub hits: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens whose KV came from the cache.
    pub cached_tokens: u64,
    /// Cached prefixes dropped to make room for another sequence.
    pub evictions: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelInfo {
    pub id: String,
    /// `unloaded`, `loading`, `ready` or `failed`.
    pub state: String,
    pub replicas: u32,
    pub busy_replicas: u32,
    pub slots_per_replica: u32,
    pub busy_slots: u32,
    pub queued: u32,
    /// Prewarming work waiting behind interactive invocations.
    pub background_queued: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Weights and KV caches held in host memory, against `engine.memory_budget_mb`.
    pub memory_bytes: u64,
    /// Weights and KV caches held on the GPU, against its free memory.
    pub gpu_memory_bytes: u64,
    /// Where the layers run: `CPU`, or a GPU such as `CUDA0 (NVIDIA H200)`.
    pub device: String,
    /// Layers offloaded to the GPU; absent until the model's file has been read once.
    pub gpu_layers: Option<u32>,
    pub last_scaling: Option<ScalingInfo>,
    pub n_ctx: u32,
    /// Times the weights were loaded since start (each scale from zero adds one).
    pub loads: u64,
    pub replica_restarts: u64,
    pub last_load_ms: Option<f64>,
    pub prefix_cache: PrefixCacheInfo,
    /// Why the model is failed.
    pub error: Option<String>,
}

impl From<ModelStatus> for ModelInfo {
    fn from(s: ModelStatus) -> Self {
        let error = match &s.phase {
            ModelPhase::Failed { reason } => Some(reason.clone()),
            _ => None,
        };
        Self {
            id: s.id.as_str().to_owned(),
            state: s.phase.as_str().to_owned(),
            replicas: s.replicas,
            busy_replicas: s.busy_replicas,
            slots_per_replica: s.slots_per_replica,
            busy_slots: s.busy_slots,
            queued: s.queued,
            background_queued: s.background_queued,
            min_replicas: s.min_replicas,
            max_replicas: s.max_replicas,
            memory_bytes: s.memory_bytes,
            gpu_memory_bytes: s.gpu_memory_bytes,
            device: s.device,
            gpu_layers: s.gpu_layers,
            last_scaling: s.last_scaling.map(|e| ScalingInfo {
                at: e.at.into(),
                from: e.from,
                to: e.to,
                reason: e.reason,
            }),
            n_ctx: s.n_ctx,
            loads: s.loads,
            replica_restarts: s.replica_restarts,
            last_load_ms: s.last_load_ms,
            prefix_cache: PrefixCacheInfo {
                lookups: s.prefix_cache.lookups,
                hits: s.prefix_cache.hits,
                prompt_tokens: s.prefix_cache.prompt_tokens,
                cached_tokens: s.prefix_cache.cached_tokens,
                evictions: s.prefix_cache.evictions,
            },
            error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
}

/// One compute device of the loaded llama.cpp backends.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceInfo {
    /// llama.cpp's device index, across all backends.
    pub index: usize,
    /// e.g. `CUDA0`, `CPU`.
    pub name: String,
    /// e.g. `NVIDIA H200`.
    pub description: String,
    /// The backend that owns it, e.g. `CUDA`, `CPU`.
    pub backend: String,
    /// `cpu`, `gpu`, `integrated_gpu` or `accelerator`.
    pub kind: String,
    /// Whether layers can be offloaded to it (GPUs, discrete or integrated).
    pub gpu: bool,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
}

/// The llama.cpp backends this process loaded, and their devices.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    /// The folder the backend modules (`libggml-*.so`) were loaded from.
    pub backends_dir: String,
    /// Registered backends, e.g. `["CUDA", "CPU"]`.
    pub backends: Vec<String>,
    /// Whether a GPU backend is loaded, so that models without `n_gpu_layers` offload.
    pub gpu_offload: bool,
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: String,
    pub database: bool,
    pub actors: bool,
}

//! Models, devices and health.

use chrono::{DateTime, Utc};
use genrt_actors::engine::gguf::GgufInfo;
use genrt_actors::{ModelPhase, ModelStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::ModelRow;

/// `POST /v1/models`: a model to register. Exactly one source.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterModel {
    /// 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`, starting with a letter or digit.
    #[schema(example = "smollm2-fashion")]
    pub id: String,
    pub source: ModelSourceSpec,
    /// The file's SHA-256 (64 hex digits); the registration fails if the bytes differ.
    pub sha256: String,
    /// Serving settings, the configuration file's `[[models]]` keys: `n_ctx`, `slots`,
    /// `min_replicas`, `max_replicas`, `idle_timeout_s`, `n_gpu_layers`, `main_gpu`,
    /// `embeddings`, `threads`, `queue_capacity`, ... Unknown keys are refused.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
    /// Quantize the source (F32, F16 or BF16) with llama.cpp's quantizer before serving it:
    /// `Q8_0`, `Q6_K`, `Q5_K_M`, `Q5_K_S`, `Q5_1`, `Q5_0`, `Q4_K_M`, `Q4_K_S`, `Q4_1`,
    /// `Q4_0`, `Q3_K_L`, `Q3_K_M`, `Q3_K_S`, `Q2_K`, `F16` or `BF16`.
    #[schema(example = "Q8_0")]
    pub quantize: Option<String>,
    /// Quantize a source that is already quantized (`model_already_quantized` otherwise):
    /// its quality losses add up.
    #[serde(default)]
    pub requantize: bool,
    /// The operator only: register a private model for this tenant. A tenant registering
    /// with `models:write` always registers its own (named `<tenant>.<name>`).
    pub owner: Option<String>,
}

/// Where the file comes from: `{"path": "..."}` (a file under the model store),
/// `{"url": "https://..."}` (fetched through the SSRF guard), or `{"upload": true}` (sent
/// next with `PUT /v1/models/{id}/file`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSourceSpec {
    pub path: Option<String>,
    pub url: Option<String>,
    pub upload: Option<bool>,
}

/// What validation read from a model's file.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelFileInfo {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// Weights, counted from the tensor table.
    pub parameters: u64,
    /// The tensor type holding most of the bytes: `q4_1`, `q8_0`, `f16`, ...
    pub quantization: String,
    /// The context the model was trained for.
    pub context_length: Option<u32>,
    /// Whether the file has a chat template (without one, chat uses a plain layout).
    pub chat_template: bool,
    pub gguf_version: u32,
    pub tensors: u64,
    pub file_bytes: u64,
}

impl From<GgufInfo> for ModelFileInfo {
    fn from(i: GgufInfo) -> Self {
        Self {
            architecture: i.architecture,
            parameters: i.parameters,
            quantization: i.quantization,
            context_length: i.context_length,
            chat_template: i.chat_template,
            gguf_version: i.version,
            tensors: i.tensors,
            file_bytes: i.file_bytes,
        }
    }
}

/// Why a registration failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationError {
    /// An error code: `model_sha256_mismatch`, `model_not_gguf`, `model_truncated`, ...
    pub code: String,
    pub message: String,
}

/// The model's entry in the registry.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationInfo {
    /// `awaiting_upload`, `registering` (fetching or hashing), `validating`, `quantizing`,
    /// `ready`, `failed` or `deleting`.
    pub state: String,
    /// `config` (seeded from the configuration file), `path`, `url` or `upload`.
    pub source_kind: String,
    pub source: Option<String>,
    /// The tenant a private model belongs to; absent for a public one.
    pub owner: Option<String>,
    /// The registered source's sha256.
    pub sha256: Option<String>,
    /// The quantization asked for, if any.
    pub quantize: Option<String>,
    /// The served file's sha256 when it is not the source (a quantized output).
    pub file_sha256: Option<String>,
    /// The file's size, once known.
    pub size_bytes: u64,
    /// Bytes fetched, received or hashed so far (while `quantizing`: written of the expected
    /// output).
    pub bytes_done: u64,
    /// `bytes_done` of `size_bytes`, once the size is known.
    pub percent: Option<f64>,
    pub file: Option<ModelFileInfo>,
    pub error: Option<RegistrationError>,
    pub registered_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<&ModelRow> for RegistrationInfo {
    fn from(r: &ModelRow) -> Self {
        let (size, done) = (r.size_bytes.max(0) as u64, r.bytes_done.max(0) as u64);
        Self {
            state: r.state.clone(),
            source_kind: r.source_kind.clone(),
            source: r.source.clone(),
            owner: r.owner.clone(),
            sha256: r.sha256.clone(),
            quantize: r.quantize.clone(),
            file_sha256: r.file_sha256.clone(),
            size_bytes: size,
            bytes_done: done,
            percent: (size > 0).then(|| (done as f64 * 100.0 / size as f64).min(100.0)),
            file: r
                .info
                .as_deref()
                .and_then(|raw| serde_json::from_str::<GgufInfo>(raw).ok())
                .map(ModelFileInfo::from),
            error: r.error_code.clone().map(|code| RegistrationError {
                code,
                message: r.error_message.clone().unwrap_or_default(),
            }),
            registered_at: r.registered_at,
            updated_at: r.updated_at,
        }
    }
}

/// `POST /v1/models/{id}/adapters`: a LoRA adapter of the model to register. Exactly one
/// source.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAdapter {
    /// The adapter's name, unique per model: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`. A
    /// tenant's own adapter is named `<tenant>.<name>`. Functions and OpenAI requests name it
    /// `model:adapter`.
    #[schema(example = "fashion")]
    pub id: String,
    pub source: ModelSourceSpec,
    /// The file's SHA-256 (64 hex digits); the registration fails if the bytes differ.
    pub sha256: String,
    /// The operator only: register a private adapter for this tenant.
    pub owner: Option<String>,
}

/// What validation read from an adapter's file.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterFileInfo {
    /// The architecture it was made for (the model's).
    pub architecture: String,
    /// Rank of its low-rank products.
    pub rank: u32,
    /// `adapter.lora.alpha`: the effective scale is `scale × alpha / rank` (0: `scale`).
    pub alpha: f32,
    /// The kinds of weights it adapts: `attn_q`, `attn_v`, `ffn_up`, ...
    pub targets: Vec<String>,
    /// Adapted weights (one `lora_a`, `lora_b` pair each).
    pub weights: u64,
    pub parameters: u64,
    pub file_bytes: u64,
}

impl From<genrt_actors::engine::gguf::AdapterFileInfo> for AdapterFileInfo {
    fn from(i: genrt_actors::engine::gguf::AdapterFileInfo) -> Self {
        Self {
            architecture: i.architecture,
            rank: i.rank,
            alpha: i.alpha,
            targets: i.targets,
            weights: i.weights,
            parameters: i.parameters,
            file_bytes: i.file_bytes,
        }
    }
}

/// A LoRA adapter of a model: its registry entry and whether this node serves it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterInfo {
    /// The adapter's name.
    pub id: String,
    /// The model it adapts.
    pub model: String,
    /// How functions and OpenAI requests name it: `model:adapter`.
    pub reference: String,
    /// Whether invocations on this node may use it now (it is loaded by a replica when a
    /// sequence first does).
    pub served: bool,
    pub file: Option<AdapterFileInfo>,
    pub registration: RegistrationInfo,
}

impl AdapterInfo {
    pub fn new(row: &ModelRow, served: bool) -> Self {
        let (model, name) = row.id.split_once(':').unwrap_or((&row.id, ""));
        let mut registration = RegistrationInfo::from(row);
        registration.file = None;
        Self {
            id: name.to_owned(),
            model: model.to_owned(),
            reference: row.id.clone(),
            served,
            file: row
                .info
                .as_deref()
                .and_then(|raw| {
                    serde_json::from_str::<genrt_actors::engine::gguf::AdapterFileInfo>(raw).ok()
                })
                .map(AdapterFileInfo::from),
            registration,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterList {
    pub adapters: Vec<AdapterInfo>,
}

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
    /// Served on this node: `unloaded`, `loading`, `ready`, `failed`, or `draining` while it
    /// is being deleted. Not served here: the registry's state (`awaiting_upload`,
    /// `registering`, `failed`, `deleting`), or `syncing` for a model ready in the registry
    /// that this node does not serve yet (it checks the file first; see
    /// `registry.sync_interval_ms`).
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
    /// LoRA adapters its replicas have loaded now, and their bytes (counted in the memory
    /// budget where the base's layers are).
    pub adapters_loaded: u32,
    pub adapter_memory_bytes: u64,
    /// Why the model is failed.
    pub error: Option<String>,
    /// The model's registry entry: source, sha256, progress, what its file holds.
    pub registration: Option<RegistrationInfo>,
}

impl ModelInfo {
    /// A served model's live state with its registry entry; `draining` while it is being
    /// removed.
    pub fn served(status: ModelStatus, row: Option<&ModelRow>, draining: bool) -> Self {
        let mut info = Self::from(status);
        if draining || row.is_some_and(|r| r.state == "deleting") {
            info.state = "draining".into();
        }
        info.registration = row.map(RegistrationInfo::from);
        info
    }

    /// A registered model this node does not serve (yet, or any more): its registry state.
    pub fn registered(row: &ModelRow, settings: Option<&genrt_actors::ModelConfig>) -> Self {
        let registration = RegistrationInfo::from(row);
        let state = match row.state.as_str() {
            "ready" => "syncing".to_owned(),
            other => other.to_owned(),
        };
        Self {
            id: row.id.clone(),
            state,
            replicas: 0,
            busy_replicas: 0,
            slots_per_replica: settings.map_or(0, |s| s.slots),
            busy_slots: 0,
            queued: 0,
            background_queued: 0,
            min_replicas: settings.map_or(0, |s| s.min_replicas),
            max_replicas: settings.map_or(0, |s| s.max_replicas),
            memory_bytes: 0,
            gpu_memory_bytes: 0,
            device: String::new(),
            gpu_layers: None,
            last_scaling: None,
            n_ctx: row.n_ctx.max(0) as u32,
            loads: 0,
            replica_restarts: 0,
            last_load_ms: None,
            prefix_cache: PrefixCacheInfo {
                lookups: 0,
                hits: 0,
                prompt_tokens: 0,
                cached_tokens: 0,
                evictions: 0,
            },
            adapters_loaded: 0,
            adapter_memory_bytes: 0,
            error: registration.error.as_ref().map(|e| e.message.clone()),
            registration: Some(registration),
        }
    }
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
            adapters_loaded: s.adapters_loaded,
            adapter_memory_bytes: s.adapter_memory_bytes,
            error,
            registration: None,
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
    /// The model registry's first sync since start has completed: models registered
    /// earlier are served.
    pub registry: bool,
}

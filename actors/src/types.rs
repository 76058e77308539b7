//! Values that travel through the tree: what is asked, what comes back, what is reported.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_functions::{
    Conversation, FunctionName, FunctionSpec, GenerationParams, ModelId, RenderedPrompt, TenantId,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Identifies one invocation from the HTTP request to its stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InvocationId(pub uuid::Uuid);

impl InvocationId {
    /// Time-ordered (UUIDv7), so that ids sort by creation in the database.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl Default for InvocationId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for InvocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One stored version of a function, as the runtime loaded it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployedFunction {
    pub tenant: TenantId,
    pub name: FunctionName,
    pub version: u32,
    pub spec: FunctionSpec,
    /// `spec.digest()`, as stored with the version. A version number alone does not name
    /// one spec: a function deleted and deployed again numbers its versions from 1 again, so
    /// whatever is kept per version (its actor, its compiled templates) is kept per digest too.
    pub digest: String,
}

/// Test-only faults; the runtime lets a request carry one only when `server.fault_injection`
/// is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The engine thread panics while serving this invocation.
    EnginePanic,
    /// The engine thread stops making progress while serving this invocation, as a step stuck
    /// inside llama.cpp would; only the watchdog ends it.
    EngineHang,
}

/// A request to run a function once.
#[derive(Debug)]
pub struct Invocation {
    pub id: InvocationId,
    pub function: Arc<DeployedFunction>,
    pub input: Value,
    pub params: GenerationParams,
    pub received_at: Instant,
    /// How it yields to other work (see [`Priority`]).
    pub priority: Priority,
    /// When set, text pieces are sent here as they are generated.
    pub stream: Option<tokio::sync::mpsc::Sender<String>>,
    pub fault: Option<Fault>,
    /// Earlier turns and a system message given by the caller (the OpenAI-compatible API).
    pub conversation: Option<Arc<Conversation>>,
    /// The function's templates already rendered with `input` (and `conversation` applied).
    /// The runtime renders on its bounded render pool, under the template limits, before
    /// anything reaches the tree; `None` renders here, which only the tree's own tests do.
    pub prompt: Option<Box<RenderedPrompt>>,
}

/// How a unit of work yields to others, in the model's queue and in the engine's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// A caller is waiting: served first.
    #[default]
    Interactive,
    /// Queued work (async, batch items, triggers) and prewarming: waits in the model's queue
    /// while interactive jobs wait, then decodes beside whatever runs.
    Background,
    /// Work whose answer nobody waits for (a shadow copy of an invocation, run to compare
    /// versions): queued like background work, and once running it decodes only in steps
    /// where no other sequence runs, so that it never lengthens anyone's step. It may run
    /// out its deadline instead, which is its caller's choice to accept.
    Idle,
}

impl Priority {
    /// Waits in the model's queue while interactive work waits.
    pub fn yields(self) -> bool {
        self != Priority::Interactive
    }
}

impl Invocation {
    pub fn tenant(&self) -> &TenantId {
        &self.function.tenant
    }

    pub fn deadline(&self) -> Instant {
        self.received_at + Duration::from_secs(u64::from(self.function.spec.timeout_s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV was reused from the replica's prefix cache.
    pub cached_prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// One of the `stop` strings appeared; it is not part of the text.
    StopSequence,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::StopSequence => "stop_sequence",
        }
    }
}

/// Milliseconds spent in each phase of one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Waiting for weights to load when the model was scaled to zero.
    pub load_ms: f64,
    /// From arrival at the dispatcher until a replica started on it.
    pub queue_ms: f64,
    /// From the start on a replica until the prompt was in the KV cache.
    pub prefill_ms: f64,
    /// From arrival until the first generated token.
    pub ttft_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InvocationOutcome {
    pub model: ModelId,
    pub text: String,
    /// For JSON output: the parsed value, valid against the function's output schema.
    pub json: Option<Value>,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    pub cache_hit: bool,
    pub timings: Timings,
}

/// How a model is served. Read from the runtime's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: ModelId,
    pub path: PathBuf,
    /// Context length of each replica, prompt and completion together.
    #[serde(default = "default_n_ctx")]
    pub n_ctx: u32,
    /// CPU threads per replica; 0 uses every core.
    #[serde(default)]
    pub threads: u32,
    /// Sequences one replica decodes together (continuous batching).
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Tokens one decode step holds: one per generating sequence first, then prompt tokens of
    /// new sequences up to this budget (at least a few per step). Bounds how long admitting
    /// prompts stalls the running streams. A step with nothing generating takes the oldest
    /// prompt whole, and a prompt a little over the budget's rest is not split (see the
    /// scheduler). (`prefill_chunk` is its former name.)
    #[serde(default = "default_step_tokens", alias = "prefill_chunk")]
    pub step_tokens: u32,
    /// Reuse the KV of earlier prompts of the same tenant that start the same way (see
    /// `engine::scheduler`). Off only to measure the cache or to rule it out.
    #[serde(default = "default_true")]
    pub prefix_cache: bool,
    /// KV streams each replica keeps beside its slots for the prefix cache, each as large as
    /// a slot's (`n_ctx` tokens) and counted in the replica's memory. Unset: half the slots,
    /// rounded up.
    #[serde(default)]
    pub cache_streams: Option<u32>,
    /// Replicas kept even when idle; 0 lets the model scale to zero.
    #[serde(default)]
    pub min_replicas: u32,
    #[serde(default = "default_max_replicas")]
    pub max_replicas: u32,
    /// Ongoing invocations (running and queued) per replica the autoscaler aims at; 0 means
    /// `slots`.
    #[serde(default)]
    pub target_ongoing: u32,
    /// Load must call for more replicas this long before one is added.
    #[serde(default = "default_upscale_delay_ms")]
    pub upscale_delay_ms: u64,
    /// Load must call for fewer (but at least one) replicas this long before one is stopped.
    #[serde(default = "default_downscale_delay_s")]
    pub downscale_delay_s: u64,
    /// Seconds without work before the replicas stop and the weights are freed.
    #[serde(default = "default_model_idle_s")]
    pub idle_timeout_s: u64,
    /// Invocations that may wait for a replica; more are refused with `overloaded`. Interactive
    /// and background (prewarm) work are bounded apart, each by this.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Invocations of one tenant that may wait in each queue; more of that tenant's are
    /// refused with `overloaded` while other tenants are still admitted up to
    /// `queue_capacity`. 0 means half of `queue_capacity` (at least 1), so that by default one
    /// tenant cannot fill the queue alone; `queue_capacity` or more leaves only the global
    /// bound.
    #[serde(default)]
    pub tenant_queue_capacity: usize,
    /// Layers offloaded to the GPU. Unset: all of them when a GPU backend is loaded, none
    /// otherwise; 0 keeps the model on the CPU; a number above the model's layer count means
    /// all. See `engine::devices`.
    #[serde(default)]
    pub n_gpu_layers: Option<u32>,
    /// Which GPU, counting the GPUs of the loaded backends from 0 (llama.cpp's `main_gpu`):
    /// the weights, KV cache and compute buffers all go to that one.
    #[serde(default)]
    pub main_gpu: u32,
    /// Also serve embeddings (mean-pooled, L2-normalised hidden states) from this model, on a
    /// context of their own; see `embeddings.rs`.
    #[serde(default)]
    pub embeddings: bool,
    /// The tenant a private model belongs to, set by the runtime's registry (not a
    /// configuration key): only that tenant's work runs on it; to everyone else it does not
    /// exist (`unknown_model`).
    #[serde(skip)]
    pub owner: Option<genrt_functions::TenantId>,
}

fn default_n_ctx() -> u32 {
    2048
}
fn default_max_replicas() -> u32 {
    1
}
fn default_slots() -> u32 {
    4
}
fn default_step_tokens() -> u32 {
    STEP_TOKENS_DEFAULT
}
/// Chosen by measurement: see benchmarks/README.md, "Streaming under load".
const STEP_TOKENS_DEFAULT: u32 = 24;
fn default_true() -> bool {
    true
}
fn default_upscale_delay_ms() -> u64 {
    250
}
fn default_downscale_delay_s() -> u64 {
    30
}
fn default_model_idle_s() -> u64 {
    300
}
fn default_queue_capacity() -> usize {
    64
}

impl ModelConfig {
    pub fn new(id: &str, path: impl Into<PathBuf>) -> Self {
        Self {
            id: ModelId::new(id),
            path: path.into(),
            n_ctx: default_n_ctx(),
            threads: 0,
            slots: default_slots(),
            step_tokens: default_step_tokens(),
            prefix_cache: true,
            cache_streams: None,
            min_replicas: 0,
            max_replicas: default_max_replicas(),
            target_ongoing: 0,
            upscale_delay_ms: default_upscale_delay_ms(),
            downscale_delay_s: default_downscale_delay_s(),
            idle_timeout_s: default_model_idle_s(),
            queue_capacity: default_queue_capacity(),
            tenant_queue_capacity: 0,
            n_gpu_layers: None,
            main_gpu: 0,
            embeddings: false,
            owner: None,
        }
    }

    /// Whether `tenant`'s work may run on this model: a public one, or the tenant's own.
    pub fn visible_to(&self, tenant: &genrt_functions::TenantId) -> bool {
        self.owner.as_ref().is_none_or(|owner| owner == tenant)
    }

    /// KV streams of one replica: one per slot, and the prefix cache's.
    pub fn kv_streams(&self) -> u32 {
        let slots = self.slots.max(1);
        let cache = match (self.prefix_cache, self.cache_streams) {
            (false, _) => 0,
            (true, Some(n)) => n,
            (true, None) => slots.div_ceil(2),
        };
        slots + cache
    }

    pub fn target_ongoing(&self) -> u32 {
        if self.target_ongoing > 0 {
            self.target_ongoing
        } else {
            self.slots.max(1)
        }
    }

    /// The per-tenant bound in effect: `tenant_queue_capacity`, or half of `queue_capacity`
    /// (at least 1) when it is 0.
    pub fn tenant_queue_capacity(&self) -> usize {
        if self.tenant_queue_capacity > 0 {
            self.tenant_queue_capacity
        } else {
            (self.queue_capacity / 2).max(1)
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    pub fn threads(&self) -> u32 {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        }
    }
}

/// Lifecycle of a model's weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPhase {
    Unloaded,
    Loading,
    Ready,
    Failed { reason: String },
}

impl ModelPhase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unloaded => "unloaded",
            Self::Loading => "loading",
            Self::Ready => "ready",
            Self::Failed { .. } => "failed",
        }
    }
}

/// A change in a pool's replica count, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingEvent {
    pub at: std::time::SystemTime,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// What `GET /v1/models` shows of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelStatus {
    pub id: ModelId,
    pub phase: ModelPhase,
    pub replicas: u32,
    pub busy_replicas: u32,
    pub slots_per_replica: u32,
    pub busy_slots: u32,
    pub queued: u32,
    pub background_queued: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub n_ctx: u32,
    pub replica_restarts: u64,
    pub loads: u64,
    pub last_load_ms: Option<f64>,
    /// Weights and KV caches held against the host memory budget.
    pub memory_bytes: u64,
    /// Weights and KV caches held against the GPU's budget.
    pub gpu_memory_bytes: u64,
    /// Where the layers run: `CPU`, or the GPU, e.g. `CUDA0 (NVIDIA H200)`.
    pub device: String,
    /// Layers offloaded to the GPU; `None` until the model's file has been read once.
    pub gpu_layers: Option<u32>,
    pub last_scaling: Option<ScalingEvent>,
    pub prefix_cache: PrefixCacheStatus,
    /// LoRA adapters loaded for the weights now, and their bytes (held against the budget
    /// where the base's layers are).
    pub adapters_loaded: u32,
    pub adapter_memory_bytes: u64,
}

/// A model's prefix-cache counters since the process started, over all its replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixCacheStatus {
    /// Sequences that looked for a cached prefix.
    pub lookups: u64,
    /// Of those, the ones that reused one.
    pub hits: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens whose KV came from the cache.
    pub cached_tokens: u64,
    /// Cached prefixes dropped to make room for another sequence.
    pub evictions: u64,
}

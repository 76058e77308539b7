//! Wire types of the HTTP API, documented for OpenAPI, and their hand-written conversions to
//! and from the domain types. Unknown fields are refused so that a typo is an error, not a
//! silently ignored setting.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use genrt_actors::{InvocationOutcome, ModelPhase, ModelStatus};
use genrt_functions::{
    default_idle_timeout_s, default_timeout_s, CachePolicy, EvaluationCase, FunctionSpec,
    GenerationParams, ModelId, ModelTarget, OutputSpec, Route, SpecError, WebhookTarget,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::{FunctionRow, InvocationRow, StoredVersion};

/// Generation parameters. Set on a function as defaults, or on an invocation to override them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// 1.0 (the default) disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Generate exactly `max_tokens`, past end-of-generation (for load tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
}

/// Constrains what the model may produce. `json` decodes only JSON that matches
/// `json_schema` (any object without one) and the response carries it parsed; `grammar` takes a
/// GBNF grammar with a `root` rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputFormat {
    Text,
    Json {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Object>)]
        json_schema: Option<Value>,
    },
    Grammar {
        grammar: String,
    },
}

impl From<&OutputFormat> for OutputSpec {
    fn from(o: &OutputFormat) -> Self {
        match o {
            OutputFormat::Text => OutputSpec::Text,
            OutputFormat::Json { json_schema } => OutputSpec::Json {
                json_schema: json_schema.clone(),
            },
            OutputFormat::Grammar { grammar } => OutputSpec::Grammar {
                grammar: grammar.clone(),
            },
        }
    }
}

impl From<&OutputSpec> for OutputFormat {
    fn from(o: &OutputSpec) -> Self {
        match o {
            OutputSpec::Text => OutputFormat::Text,
            OutputSpec::Json { json_schema } => OutputFormat::Json {
                json_schema: json_schema.clone(),
            },
            OutputSpec::Grammar { grammar } => OutputFormat::Grammar {
                grammar: grammar.clone(),
            },
        }
    }
}

/// Choose the model from a field of the input: `input[field]` is looked up in `cases`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub field: String,
    #[serde(default)]
    pub cases: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Unset: cache deterministic generations (temperature 0 or a seed) only. `true`: cache
    /// sampled ones too. `false`: never cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// A function definition: what `POST /v1/functions` takes and version listings return.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDefinition {
    /// Unique per tenant: 1-64 of a-z, 0-9, '-', '_'.
    pub name: String,
    /// A registered model id. Exactly one of `model` and `route`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSpec>,
    /// System prompt template (Jinja syntax), rendered with the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// User prompt template (Jinja syntax), rendered with the input.
    pub prompt: String,
    /// JSON Schema the input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Value>,
    #[serde(default)]
    pub params: Params,
    #[serde(default)]
    pub cache: CacheSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// Seconds without invocations before the function's actor stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u32>,
    /// Where asynchronous results are announced (signed per Standard Webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
    /// Inputs with reference outputs (at most 100), scored by
    /// `POST /v1/functions/{name}/evaluate` to compare versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evaluation: Vec<EvaluationCaseSpec>,
}

/// One case of an evaluation set: an input and the output the function should produce.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationCaseSpec {
    #[schema(value_type = Object)]
    pub input: Value,
    pub reference: String,
}

impl From<&EvaluationCaseSpec> for EvaluationCase {
    fn from(c: &EvaluationCaseSpec) -> Self {
        EvaluationCase {
            input: c.input.clone(),
            reference: c.reference.clone(),
        }
    }
}

impl From<&EvaluationCase> for EvaluationCaseSpec {
    fn from(c: &EvaluationCase) -> Self {
        EvaluationCaseSpec {
            input: c.input.clone(),
            reference: c.reference.clone(),
        }
    }
}

/// A callback for results of asynchronous invocations.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookSpec {
    /// An http(s) URL; private, loopback and metadata addresses are refused unless the
    /// operator allowlists them.
    pub url: String,
    /// `invocation.succeeded`, `invocation.failed`, `invocation.started`; empty means the
    /// first two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

impl From<&WebhookSpec> for WebhookTarget {
    fn from(w: &WebhookSpec) -> Self {
        WebhookTarget {
            url: w.url.clone(),
            events: w.events.clone(),
        }
    }
}

impl From<&WebhookTarget> for WebhookSpec {
    fn from(w: &WebhookTarget) -> Self {
        WebhookSpec {
            url: w.url.clone(),
            events: w.events.clone(),
        }
    }
}

impl From<Params> for GenerationParams {
    fn from(p: Params) -> Self {
        GenerationParams {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            seed: p.seed,
            stop: p.stop,
            ignore_eos: p.ignore_eos,
        }
    }
}

impl From<&GenerationParams> for Params {
    fn from(p: &GenerationParams) -> Self {
        Params {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            seed: p.seed,
            stop: p.stop.clone(),
            ignore_eos: p.ignore_eos,
        }
    }
}

impl FunctionDefinition {
    pub fn to_spec(&self) -> Result<FunctionSpec, SpecError> {
        let target = match (&self.model, &self.route) {
            (Some(model), None) => ModelTarget::Model(ModelId::new(model.clone())),
            (None, Some(route)) => ModelTarget::Route(Route {
                field: route.field.clone(),
                cases: route
                    .cases
                    .iter()
                    .map(|(k, v)| (k.clone(), ModelId::new(v.clone())))
                    .collect(),
                default: route.default.clone().map(ModelId::new),
            }),
            (Some(_), Some(_)) => {
                return Err(SpecError::invalid(
                    "model",
                    "give either `model` or `route`, not both",
                ))
            }
            (None, None) => {
                return Err(SpecError::invalid(
                    "model",
                    "`model` or `route` is required",
                ))
            }
        };
        Ok(FunctionSpec {
            target,
            system: self.system.clone(),
            prompt: self.prompt.clone(),
            input_schema: self.input_schema.clone(),
            params: self.params.clone().into(),
            cache: CachePolicy {
                enabled: self.cache.enabled,
                ttl_s: self.cache.ttl_s,
            },
            output: self
                .output
                .as_ref()
                .map(OutputSpec::from)
                .unwrap_or_default(),
            timeout_s: self.timeout_s.unwrap_or_else(default_timeout_s),
            idle_timeout_s: self.idle_timeout_s.unwrap_or_else(default_idle_timeout_s),
            webhook: self.webhook.as_ref().map(WebhookTarget::from),
            evaluation: self.evaluation.iter().map(EvaluationCase::from).collect(),
        })
    }

    pub fn from_spec(name: &str, spec: &FunctionSpec) -> Self {
        let (model, route) = match &spec.target {
            ModelTarget::Model(m) => (Some(m.as_str().to_owned()), None),
            ModelTarget::Route(r) => (
                None,
                Some(RouteSpec {
                    field: r.field.clone(),
                    cases: r
                        .cases
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                        .collect(),
                    default: r.default.as_ref().map(|m| m.as_str().to_owned()),
                }),
            ),
        };
        Self {
            name: name.to_owned(),
            model,
            route,
            system: spec.system.clone(),
            prompt: spec.prompt.clone(),
            input_schema: spec.input_schema.clone(),
            params: (&spec.params).into(),
            cache: CacheSpec {
                enabled: spec.cache.enabled,
                ttl_s: spec.cache.ttl_s,
            },
            output: (!spec.output.is_text()).then(|| OutputFormat::from(&spec.output)),
            timeout_s: Some(spec.timeout_s),
            idle_timeout_s: Some(spec.idle_timeout_s),
            webhook: spec.webhook.as_ref().map(WebhookSpec::from),
            evaluation: spec
                .evaluation
                .iter()
                .map(EvaluationCaseSpec::from)
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeployResponse {
    pub name: String,
    pub version: u32,
    /// False when the definition was identical to the latest version.
    pub created: bool,
    pub digest: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionSummary {
    pub name: String,
    pub latest_version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&FunctionRow> for FunctionSummary {
    fn from(f: &FunctionRow) -> Self {
        Self {
            name: f.name.clone(),
            latest_version: f.latest_version as u32,
            created_at: f.created_at,
            updated_at: f.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionDetail {
    #[serde(flatten)]
    pub summary: FunctionSummary,
    /// Versions whose function actor is running now (scale to zero leaves this empty).
    pub active_versions: Vec<u32>,
    pub definition: FunctionDefinition,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfo {
    pub version: u32,
    pub digest: String,
    pub created_at: DateTime<Utc>,
    pub definition: FunctionDefinition,
}

impl VersionInfo {
    pub fn new(name: &str, v: &StoredVersion) -> Self {
        Self {
            version: v.version,
            digest: v.digest.clone(),
            created_at: v.created_at,
            definition: FunctionDefinition::from_spec(name, &v.spec),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<VersionInfo>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// Values for the templates; checked against the function's `input_schema`.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub input: Value,
    #[serde(default)]
    pub params: Params,
    /// Answer with Server-Sent Events: `token` events with text pieces, then `done` (the same
    /// body as a synchronous response, without the text) or `error`.
    #[serde(default)]
    pub stream: bool,
    /// `sync` (the default) waits for the result; `async` answers 202 with an invocation id as
    /// soon as the invocation is committed, and runs it from the durable queue. The header
    /// `Prefer: respond-async` does the same.
    #[serde(default)]
    pub mode: InvokeMode,
    /// For async invocations: where to announce the result, overriding the function's own
    /// webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvokeMode {
    #[default]
    Sync,
    Async,
}

/// The answer to an accepted asynchronous invocation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AsyncAccepted {
    pub invocation_id: Uuid,
    /// `queued`, or the current status when an `Idempotency-Key` replayed an earlier request.
    pub status: String,
    pub function: String,
    pub version: u32,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Output {
    pub text: String,
    /// With JSON output: the parsed value, valid against the function's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub json: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageInfo {
    pub prompt_tokens: u32,
    /// Prompt tokens served from the replica's prefix cache (the function's system prompt).
    #[serde(default)]
    pub cached_prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TimingsInfo {
    /// Waiting for the model's weights to load (scale from zero).
    pub load_ms: f64,
    pub queue_ms: f64,
    #[serde(default)]
    pub prefill_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvokeResponse {
    pub invocation_id: Uuid,
    pub function: String,
    pub version: u32,
    pub model: String,
    pub output: Output,
    /// `stop`, `length` or `stop_sequence`.
    pub finish_reason: String,
    pub usage: UsageInfo,
    pub cache_hit: bool,
    pub timings: TimingsInfo,
}

impl InvokeResponse {
    pub fn new(id: Uuid, function: &str, version: u32, o: InvocationOutcome) -> Self {
        Self {
            invocation_id: id,
            function: function.to_owned(),
            version,
            model: o.model.as_str().to_owned(),
            finish_reason: o.finish_reason.as_str().to_owned(),
            output: Output {
                text: o.text,
                json: o.json,
            },
            usage: UsageInfo {
                prompt_tokens: o.usage.prompt_tokens,
                cached_prompt_tokens: o.usage.cached_prompt_tokens,
                completion_tokens: o.usage.completion_tokens,
            },
            cache_hit: o.cache_hit,
            timings: TimingsInfo {
                load_ms: o.timings.load_ms,
                queue_ms: o.timings.queue_ms,
                prefill_ms: o.timings.prefill_ms,
                ttft_ms: o.timings.ttft_ms,
                total_ms: o.timings.total_ms,
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationError {
    pub code: String,
    pub message: String,
}

/// A stored invocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationRecord {
    pub invocation_id: Uuid,
    pub function: String,
    pub version: u32,
    pub model: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// `sync`, `stream`, `async`, `batch`, `trigger` or `evaluate`.
    pub mode: String,
    /// Attempts made so far (async work is retried after retryable failures).
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u32>,
    #[schema(value_type = Object)]
    pub input: Value,
    pub output: Option<Output>,
    pub finish_reason: Option<String>,
    pub error: Option<InvocationError>,
    pub usage: UsageInfo,
    pub cache_hit: bool,
    pub timings: TimingsInfo,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<InvocationRow> for InvocationRecord {
    fn from(r: InvocationRow) -> Self {
        Self {
            invocation_id: r.id,
            function: r.function_name,
            version: r.function_version as u32,
            model: r.model,
            status: r.status,
            mode: r.mode,
            attempts: r.attempts.max(0) as u32,
            batch_id: r.batch_id,
            batch_index: r.batch_index.map(|i| i.max(0) as u32),
            input: serde_json::from_str(&r.input).unwrap_or(Value::Null),
            output: r.output_text.map(|text| Output {
                text,
                json: r.output_json.and_then(|j| serde_json::from_str(&j).ok()),
            }),
            finish_reason: r.finish_reason,
            error: r.error_code.map(|code| InvocationError {
                code,
                message: r.error_message.unwrap_or_default(),
            }),
            usage: UsageInfo {
                prompt_tokens: r.prompt_tokens as u32,
                cached_prompt_tokens: 0,
                completion_tokens: r.completion_tokens as u32,
            },
            cache_hit: r.cache_hit,
            timings: TimingsInfo {
                load_ms: r.load_ms,
                queue_ms: r.queue_ms,
                prefill_ms: 0.0,
                ttft_ms: r.ttft_ms,
                total_ms: r.total_ms,
            },
            created_at: r.created_at,
            completed_at: r.completed_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScalingInfo {
    pub at: DateTime<Utc>,
    pub from: u32,
    pub to: u32,
    pub reason: String,
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrewarmRequest {
    /// Inputs to run ahead of demand (at most 1000), at low priority, to fill the cache.
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<Value>,
    #[serde(default)]
    pub params: Params,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PrewarmResponse {
    pub accepted: usize,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// The version to score; default the latest.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub version: Option<u32>,
    /// Cases to score instead of the evaluation set of the function's latest version (at
    /// most 100).
    #[serde(default)]
    pub cases: Option<Vec<EvaluationCaseSpec>>,
    /// Overrides of the version's generation parameters, for every case.
    #[serde(default)]
    pub params: Params,
}

/// The scores of one version on an evaluation set. Scores are in [0, 1] on lowercased word
/// tokens; a case whose invocation failed scores 0 and carries its error.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluateResponse {
    pub function: String,
    pub version: u32,
    /// Mean ROUGE-L F-measure over the cases.
    pub rouge_l: f64,
    /// Corpus BLEU-4 (brevity penalty, exponential smoothing) over the cases.
    pub bleu: f64,
    pub succeeded: usize,
    pub failed: usize,
    pub cases: Vec<CaseScore>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CaseScore {
    #[schema(value_type = Object)]
    pub input: Value,
    pub reference: String,
    /// The generated text; absent when the invocation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub rouge_l: f64,
    /// Sentence BLEU of this case (effective order, so short texts can score).
    pub bleu: f64,
    /// The recorded invocation (mode `evaluate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::ErrorDetail>,
}

/// The `done` event of a streamed invocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamDone {
    pub invocation_id: Uuid,
    pub function: String,
    pub version: u32,
    pub model: String,
    pub finish_reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub json: Option<Value>,
    pub usage: UsageInfo,
    pub cache_hit: bool,
    pub timings: TimingsInfo,
}

impl From<InvokeResponse> for StreamDone {
    fn from(r: InvokeResponse) -> Self {
        Self {
            invocation_id: r.invocation_id,
            function: r.function,
            version: r.version,
            model: r.model,
            finish_reason: r.finish_reason,
            json: r.output.json,
            usage: r.usage,
            cache_hit: r.cache_hit,
            timings: r.timings,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationPage {
    pub invocations: Vec<InvocationRecord>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

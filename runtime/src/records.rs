//! The wire form of a stored invocation, shared by the HTTP API (`GET /v1/invocations`,
//! batch results) and the webhook payloads, which announce the same record.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::InvocationRow;

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
    /// Prompt tokens whose KV came from the replica's prefix cache (an earlier prompt of the
    /// same tenant that started the same way: a chat's history, a shared system prompt or
    /// document); never another tenant's.
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
    /// The alias it was admitted through, if any; `version` is what the alias chose then.
    pub alias: Option<String>,
    /// The alias split its traffic between versions.
    pub split: bool,
    /// A shadow run: the invocation whose input it mirrored (its output is compared, never
    /// returned to a caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_of: Option<Uuid>,
    pub model: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// How it was started: `sync`, `stream`, `async`, `batch`, `trigger`, `evaluate`,
    /// `prewarm`, `openai` or `openai_stream`.
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
            alias: r.alias,
            split: r.split,
            shadow_of: r.shadow_of,
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
                cached_prompt_tokens: r.cached_prompt_tokens.max(0) as u32,
                completion_tokens: r.completion_tokens as u32,
            },
            cache_hit: r.cache_hit,
            timings: TimingsInfo {
                load_ms: r.load_ms,
                queue_ms: r.queue_ms,
                prefill_ms: r.prefill_ms,
                ttft_ms: r.ttft_ms,
                total_ms: r.total_ms,
            },
            created_at: r.created_at,
            completed_at: r.completed_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationPage {
    pub invocations: Vec<InvocationRecord>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

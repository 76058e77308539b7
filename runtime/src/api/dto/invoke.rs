//! Invoking: the request, the synchronous answer, the accepted async answer, the stream's end.

use genrt_actors::InvocationOutcome;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::*;

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
    /// Run this version instead of the default (the same as `name@3` in the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub version: Option<u32>,
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
    /// The version it will run, fixed now: a later move of the alias does not change it.
    pub version: u32,
    /// The alias it was admitted through, if any.
    #[serde(default)]
    pub alias: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvokeResponse {
    pub invocation_id: Uuid,
    pub function: String,
    /// The version that ran.
    pub version: u32,
    /// The alias it came through (`name@prod`, or `default` for a bare name when the
    /// function has that alias); null for a pinned version or the latest.
    pub alias: Option<String>,
    /// The alias splits its traffic: this version was chosen by weight (sticky per
    /// `Genrt-Split-Key`).
    pub split: bool,
    pub model: String,
    pub output: Output,
    /// `stop`, `length` or `stop_sequence`.
    pub finish_reason: String,
    pub usage: UsageInfo,
    pub cache_hit: bool,
    pub timings: TimingsInfo,
}

impl From<crate::invocation::Completed> for InvokeResponse {
    fn from(done: crate::invocation::Completed) -> Self {
        Self::new(
            done.id.0,
            done.function.as_str(),
            done.version,
            &done.via,
            done.outcome,
        )
    }
}

impl InvokeResponse {
    pub fn new(
        id: Uuid,
        function: &str,
        version: u32,
        via: &crate::invocation::Via,
        o: InvocationOutcome,
    ) -> Self {
        Self {
            invocation_id: id,
            function: function.to_owned(),
            version,
            alias: via.alias().map(|a| a.as_str().to_owned()),
            split: via.split(),
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

/// The `done` event of a streamed invocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamDone {
    pub invocation_id: Uuid,
    pub function: String,
    pub version: u32,
    pub alias: Option<String>,
    pub split: bool,
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
            alias: r.alias,
            split: r.split,
            model: r.model,
            finish_reason: r.finish_reason,
            json: r.output.json,
            usage: r.usage,
            cache_hit: r.cache_hit,
            timings: r.timings,
        }
    }
}

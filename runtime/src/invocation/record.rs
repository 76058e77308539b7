//! The one place an invocation's row is built: new (queued, or run at once), then marked
//! succeeded, failed or cancelled. Status and mode are enums until they reach the row.

use chrono::Utc;
use genrt_actors::InvocationOutcome;
use genrt_functions::{FunctionName, TenantId, WebhookTarget};
use uuid::Uuid;

use super::{Mode, Via};
use crate::store::InvocationRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Who and what an invocation row is about.
pub struct RowOf<'a> {
    pub id: Uuid,
    pub tenant: &'a TenantId,
    pub function: &'a FunctionName,
    pub version: u32,
    pub input: &'a serde_json::Value,
    pub mode: Mode,
    /// How the version was chosen.
    pub via: &'a Via,
}

/// A row for work that runs now (`Running`, one attempt) or is queued (`Queued`, no attempt
/// yet, `max_attempts` from the queue's settings).
pub fn new_row(of: RowOf<'_>, status: Status) -> InvocationRow {
    let now = Utc::now();
    let queued = status == Status::Queued;
    InvocationRow {
        id: of.id,
        tenant_id: of.tenant.as_str().to_owned(),
        function_name: of.function.as_str().to_owned(),
        function_version: of.version as i32,
        model: None,
        status: status.as_str().to_owned(),
        input: of.input.to_string(),
        output_text: None,
        finish_reason: None,
        error_code: None,
        error_message: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        cache_hit: false,
        load_ms: 0.0,
        queue_ms: 0.0,
        ttft_ms: 0.0,
        total_ms: 0.0,
        created_at: now,
        completed_at: None,
        mode: of.mode.as_str().to_owned(),
        params: None,
        attempts: if queued { 0 } else { 1 },
        max_attempts: 1,
        run_after: None,
        lease_owner: None,
        lease_expires_at: None,
        cancel_requested: false,
        started_at: (!queued).then_some(now),
        batch_id: None,
        batch_index: None,
        callback_url: None,
        callback_events: None,
        output_json: None,
        traceparent: None,
        cached_prompt_tokens: 0,
        prefill_ms: 0.0,
        alias: of.via.alias().map(|a| a.as_str().to_owned()),
        split: of.via.split(),
        shadow_of: of.via.shadow_of(),
    }
}

/// Where a queued invocation's result is announced.
pub fn set_callback(row: &mut InvocationRow, webhook: Option<&WebhookTarget>) {
    row.callback_url = webhook.map(|w| w.url.clone());
    row.callback_events = webhook.map(|w| {
        if w.events.is_empty() {
            "invocation.succeeded invocation.failed".to_owned()
        } else {
            w.events.join(" ")
        }
    });
}

pub fn succeeded(row: &mut InvocationRow, o: &InvocationOutcome) {
    row.status = Status::Succeeded.as_str().to_owned();
    row.completed_at = Some(Utc::now());
    row.model = Some(o.model.as_str().to_owned());
    row.output_text = Some(o.text.clone());
    row.output_json = o.json.as_ref().map(|j| j.to_string());
    row.finish_reason = Some(o.finish_reason.as_str().to_owned());
    row.prompt_tokens = o.usage.prompt_tokens as i32;
    row.completion_tokens = o.usage.completion_tokens as i32;
    row.cached_prompt_tokens = o.usage.cached_prompt_tokens as i32;
    row.prefill_ms = o.timings.prefill_ms;
    row.cache_hit = o.cache_hit;
    row.load_ms = o.timings.load_ms;
    row.queue_ms = o.timings.queue_ms;
    row.ttft_ms = o.timings.ttft_ms;
    row.total_ms = o.timings.total_ms;
    row.error_code = None;
    row.error_message = None;
}

/// `Failed` or `Cancelled`, with the error code and message.
pub fn ended(row: &mut InvocationRow, status: Status, code: &str, message: &str) {
    debug_assert!(matches!(status, Status::Failed | Status::Cancelled));
    row.status = status.as_str().to_owned();
    row.completed_at = Some(Utc::now());
    row.error_code = Some(code.to_owned());
    row.error_message = Some(message.to_owned());
}

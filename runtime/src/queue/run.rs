//! Running one leased invocation and writing how it ended.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use genrt_actors::{DeployedFunction, Invocation, InvocationId, InvokeError};
use genrt_functions::{FunctionName, GenerationParams, TenantId};
use tokio::sync::Notify;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::events::delivery_rows;
use crate::api::dto::Params;
use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::store::{InvocationRow, JobEnd};

enum Ran {
    Finished(Result<genrt_actors::InvocationOutcome, ApiError>),
    Cancelled,
}

/// Runs one leased invocation in a trace of its own (a queued run is not part of the request
/// that enqueued it, which has long been answered), linked to the enqueuing request's span.
pub(super) async fn run_job(state: &AppState, row: InvocationRow, cancel: Arc<Notify>) {
    let span = tracing::info_span!(
        target: "genrt_runtime::queue",
        "run",
        otel.name = %format!("run {}", row.function_name),
        otel.kind = "consumer",
        genrt.tenant = %row.tenant_id,
        genrt.function = %row.function_name,
        genrt.invocation.id = %row.id,
        genrt.attempt = row.attempts,
    );
    // A root span, whatever the caller's current span is.
    let _ = span.set_parent(opentelemetry::Context::new());
    crate::telemetry::link_to_traceparent(&span, row.traceparent.as_deref());
    run_leased(state, row, cancel).instrument(span).await
}

async fn run_leased(state: &AppState, row: InvocationRow, cancel: Arc<Notify>) {
    let id = row.id;
    let ran = tokio::select! {
        result = execute(state, &row) => Ran::Finished(result),
        _ = cancel.notified() => Ran::Cancelled,
    };
    if state.queue.stopping() {
        // Shutting down: the lease goes back to the queue (see `release`), not to a result.
        return;
    }
    let mut done = row.clone();
    done.completed_at = Some(Utc::now());
    let end = match ran {
        Ran::Cancelled => {
            done.status = "cancelled".into();
            done.error_code = Some("cancelled".into());
            done.error_message = Some("cancelled while running".into());
            JobEnd::Done(Box::new(done.clone()))
        }
        Ran::Finished(Ok(o)) => {
            done.status = "succeeded".into();
            done.model = Some(o.model.as_str().to_owned());
            done.output_text = Some(o.text.clone());
            done.output_json = o.json.as_ref().map(|j| j.to_string());
            done.finish_reason = Some(o.finish_reason.as_str().to_owned());
            done.prompt_tokens = o.usage.prompt_tokens as i32;
            done.completion_tokens = o.usage.completion_tokens as i32;
            done.cache_hit = o.cache_hit;
            done.load_ms = o.timings.load_ms;
            done.queue_ms = o.timings.queue_ms;
            done.ttft_ms = o.timings.ttft_ms;
            done.total_ms = o.timings.total_ms;
            done.error_code = None;
            done.error_message = None;
            state.tenancy.record_usage(
                &TenantId::parse(&row.tenant_id).expect("stored tenant ids are valid"),
                u64::from(o.usage.prompt_tokens + o.usage.completion_tokens),
            );
            JobEnd::Done(Box::new(done.clone()))
        }
        Ran::Finished(Err(err)) => {
            let retryable = is_retryable(err.code);
            // `attempts` was counted when the lease was taken.
            if retryable && row.attempts < row.max_attempts {
                let delay = state.queue.retry_delay(row.attempts);
                JobEnd::Retry {
                    run_after: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                    error_code: err.code.as_str().to_owned(),
                    error_message: err.message.clone(),
                    count_attempt: err.code != ErrorCode::Overloaded,
                }
            } else {
                done.status = "failed".into();
                done.error_code = Some(err.code.as_str().to_owned());
                done.error_message = Some(err.message.clone());
                JobEnd::Done(Box::new(done.clone()))
            }
        }
    };
    let deliveries = match &end {
        JobEnd::Done(row) => match row.status.as_str() {
            "succeeded" => delivery_rows("invocation.succeeded", row),
            "failed" => delivery_rows("invocation.failed", row),
            _ => Vec::new(),
        },
        JobEnd::Retry { .. } => Vec::new(),
    };
    let has_deliveries = !deliveries.is_empty();
    // The result must reach the database: a lost write would run the work again after the
    // lease expires. Retry while this node still holds the lease.
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match state
            .store
            .finish_job(id, &state.queue.node, end.clone(), deliveries.clone())
            .await
        {
            Ok(true) => {
                if has_deliveries {
                    state.deliveries_wake();
                }
                return;
            }
            Ok(false) => {
                tracing::warn!(invocation = %id, "lease lost before the result was written; another node finishes it");
                return;
            }
            Err(err) => {
                tracing::warn!(invocation = %id, error = %err, "writing the result failed; retrying");
                if state.queue.stopping() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

fn is_retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Overloaded
            | ErrorCode::ReplicaFailed
            | ErrorCode::ModelUnavailable
            | ErrorCode::InsufficientMemory
            | ErrorCode::ShuttingDown
            | ErrorCode::Timeout
            | ErrorCode::DatabaseUnavailable
            | ErrorCode::Internal
    )
}

async fn execute(
    state: &AppState,
    row: &InvocationRow,
) -> Result<genrt_actors::InvocationOutcome, ApiError> {
    let received_at = Instant::now();
    let tenant = TenantId::parse(&row.tenant_id)
        .map_err(|e| ApiError::internal(format!("stored tenant id: {e}")))?;
    let name = FunctionName::parse(&row.function_name)
        .map_err(|e| ApiError::internal(format!("stored function name: {e}")))?;
    let version = state
        .store
        .version(&tenant, &name, row.function_version as u32)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::FunctionNotFound,
                format!(
                    "function `{}` version {} no longer exists",
                    name.as_str(),
                    row.function_version
                ),
            )
        })?;
    let limits = state.tenancy.limits_of(&tenant).await?;
    if limits.disabled {
        return Err(ApiError::new(
            ErrorCode::TenantDisabled,
            "the tenant was disabled before this invocation ran",
        ));
    }
    state.tenancy.check_budget(&tenant, &limits).await?;
    let input: serde_json::Value = serde_json::from_str(&row.input)
        .map_err(|e| ApiError::internal(format!("stored input: {e}")))?;
    let params: Params = row
        .params
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| ApiError::internal(format!("stored params: {e}")))?
        .unwrap_or_default();
    let params: GenerationParams = params.into();
    if row
        .callback_events
        .as_deref()
        .is_some_and(|e| e.split_whitespace().any(|e| e == "invocation.started"))
    {
        let mut started = row.clone();
        started.status = "running".into();
        let deliveries = delivery_rows("invocation.started", &started);
        if let Err(err) = state.store.insert_deliveries(deliveries).await {
            tracing::warn!(invocation = %row.id, error = %err, "recording the started event failed");
        } else {
            state.deliveries_wake();
        }
    }
    let invocation = Invocation {
        id: InvocationId(row.id),
        function: Arc::new(DeployedFunction {
            tenant,
            name,
            version: version.version,
            spec: version.spec,
        }),
        input,
        params,
        received_at,
        // Queued work is not real-time: it yields to interactive invocations.
        background: true,
        stream: None,
        fault: None,
        conversation: None,
    };
    let labels = crate::telemetry::InvocationLabels {
        tenant: row.tenant_id.clone(),
        function: row.function_name.clone(),
        version: row.function_version as u32,
        mode: "async",
    };
    let span = crate::telemetry::invocation_span(&labels, row.id);
    let opened = std::time::SystemTime::now();
    let _in_flight = state.metrics.in_flight();
    let result = state
        .tree
        .invoke(invocation)
        .instrument(span.clone())
        .await
        .map_err(|e: InvokeError| ApiError::from(e));
    crate::telemetry::record_outcome(
        &state.metrics,
        &span,
        opened,
        &labels,
        result.as_ref().map_err(|e| e.code.as_str()),
    );
    result
}

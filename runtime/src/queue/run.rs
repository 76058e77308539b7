//! Running one leased invocation and writing how it ended.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::Notify;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::events::delivery_rows;
use super::QueueRunner;
use crate::error::{ApiError, ErrorCode};
use crate::invocation::record::{self, Status};
use crate::store::{InvocationRow, JobEnd};

enum Ran {
    Finished(Result<genrt_actors::InvocationOutcome, ApiError>),
    Cancelled,
}

/// Runs one leased invocation in a trace of its own (a queued run is not part of the request
/// that enqueued it, which has long been answered), linked to the enqueuing request's span.
pub(super) async fn run_job(state: &QueueRunner, row: InvocationRow, cancel: Arc<Notify>) {
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

async fn run_leased(state: &QueueRunner, row: InvocationRow, cancel: Arc<Notify>) {
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
    let end = match ran {
        Ran::Cancelled => {
            record::ended(
                &mut done,
                Status::Cancelled,
                "cancelled",
                "cancelled while running",
            );
            JobEnd::Done(Box::new(done.clone()))
        }
        Ran::Finished(Ok(o)) => {
            record::succeeded(&mut done, &o);
            JobEnd::Done(Box::new(done.clone()))
        }
        // `attempts` was counted when the lease was taken.
        Ran::Finished(Err(err)) if err.retryable && row.attempts < row.max_attempts => {
            let delay = state.queue.retry_delay(row.attempts);
            JobEnd::Retry {
                run_after: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                error_code: err.code.as_str().to_owned(),
                error_message: err.message.clone(),
                count_attempt: err.code != ErrorCode::Overloaded,
            }
        }
        Ran::Finished(Err(err)) => {
            record::ended(&mut done, Status::Failed, err.code.as_str(), &err.message);
            JobEnd::Done(Box::new(done.clone()))
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

async fn execute(
    state: &QueueRunner,
    row: &InvocationRow,
) -> Result<genrt_actors::InvocationOutcome, ApiError> {
    // Stored as the request gave them; the domain type reads the same JSON.
    let params: genrt_functions::GenerationParams = row
        .params
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| ApiError::internal(format!("stored params: {e}")))?
        .unwrap_or_default();
    if row
        .callback_events
        .as_deref()
        .is_some_and(|e| e.split_whitespace().any(|e| e == "invocation.started"))
    {
        let mut started = row.clone();
        started.status = Status::Running.as_str().into();
        let deliveries = delivery_rows("invocation.started", &started);
        if let Err(err) = state.store.insert_deliveries(deliveries).await {
            tracing::warn!(invocation = %row.id, error = %err, "recording the started event failed");
        } else {
            state.deliveries_wake();
        }
    }
    state.invocations.run_queued(row, params).await
}

//! Invoking a function synchronously.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use genrt_actors::{DeployedFunction, Fault, Invocation, InvocationId, InvocationOutcome};
use sea_orm::Set;

use crate::api::dto::{InvokeRequest, InvokeResponse};
use crate::api::functions::{function_name, function_not_found};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::store::NewInvocation;

/// Run the latest version of a function on an input and wait for the text.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invoke", security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = InvokeRequest,
    responses(
        (status = 200, body = InvokeResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such function for this tenant", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Input fails the schema or a template, or params are out of range", body = ErrorBody),
        (status = 503, description = "Model unavailable, overloaded or its replica failed; see Retry-After", body = ErrorBody),
        (status = 504, description = "The function's timeout passed", body = ErrorBody)))]
pub async fn invoke(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    request: HttpRequest,
    body: web::Json<InvokeRequest>,
) -> Result<HttpResponse, ApiError> {
    let received_at = Instant::now();
    let name = function_name(&name)?;
    let version = state
        .store
        .latest_version(&caller.tenant, &name)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    let body = body.into_inner();
    let id = InvocationId::new();
    let input_text = body.input.to_string();
    let invocation = Invocation {
        id,
        function: Arc::new(DeployedFunction {
            tenant: caller.tenant.clone(),
            name: name.clone(),
            version: version.version,
            spec: version.spec,
        }),
        input: body.input,
        params: body.params.into(),
        received_at,
        fault: fault(&request),
    };
    let created_at = Utc::now();
    let result = state.tree.invoke(invocation).await;
    let mut record = NewInvocation {
        id: Set(id.0),
        tenant_id: Set(caller.tenant.as_str().to_owned()),
        function_name: Set(name.as_str().to_owned()),
        function_version: Set(version.version as i32),
        input: Set(input_text),
        created_at: Set(created_at),
        completed_at: Set(Some(Utc::now())),
        ..Default::default()
    };
    match result {
        Ok(outcome) => {
            fill_success(&mut record, &outcome);
            // The record is written before answering, so the id returned can be read back.
            if let Err(err) = state.store.record_invocation(record).await {
                tracing::warn!(invocation = %id, error = %err, "invocation succeeded but its record was not stored");
            }
            Ok(HttpResponse::Ok().json(InvokeResponse::new(
                id.0,
                name.as_str(),
                version.version,
                outcome,
            )))
        }
        Err(err) => {
            let api = ApiError::from(err);
            // Requests refused as invalid leave nothing behind; failures of accepted work are
            // recorded so that they can be inspected.
            if api.code.status().is_server_error() {
                record.status = Set("failed".into());
                record.error_code = Set(Some(api.code.as_str().to_owned()));
                record.error_message = Set(Some(api.message.clone()));
                if let Err(err) = state.store.record_invocation(record).await {
                    tracing::warn!(invocation = %id, error = %err, "failed invocation not recorded");
                }
            }
            Err(api)
        }
    }
}

fn fill_success(record: &mut NewInvocation, o: &InvocationOutcome) {
    record.status = Set("succeeded".into());
    record.model = Set(Some(o.model.as_str().to_owned()));
    record.output_text = Set(Some(o.text.clone()));
    record.finish_reason = Set(Some(o.finish_reason.as_str().to_owned()));
    record.prompt_tokens = Set(o.usage.prompt_tokens as i32);
    record.completion_tokens = Set(o.usage.completion_tokens as i32);
    record.cache_hit = Set(o.cache_hit);
    record.load_ms = Set(o.timings.load_ms);
    record.queue_ms = Set(o.timings.queue_ms);
    record.ttft_ms = Set(o.timings.ttft_ms);
    record.total_ms = Set(o.timings.total_ms);
}

/// Test builds honour `X-Genrt-Fault: engine-panic`; release builds compile this away.
#[cfg(feature = "fault-injection")]
fn fault(request: &HttpRequest) -> Option<Fault> {
    match request.headers().get("x-genrt-fault")?.to_str().ok()? {
        "engine-panic" => Some(Fault::EnginePanic),
        _ => None,
    }
}

#[cfg(not(feature = "fault-injection"))]
fn fault(_request: &HttpRequest) -> Option<Fault> {
    None
}

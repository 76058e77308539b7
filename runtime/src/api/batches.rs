//! Batches: up to `queue.max_batch_inputs` inputs of one function, accepted at once as
//! queued invocations and run from the durable queue. Results come back as JSONL in input
//! order.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use genrt_functions::GenerationParams;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::dto::{Params, WebhookSpec};
use crate::api::functions::runnable;
use crate::api::invoke::{callback, deployed, split_key};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::invocation::{Mode, Queued};
use crate::store::BatchRow;
use crate::tenancy::{Caller, Scope};

/// The JSON form of a batch request; a bare JSON array of inputs, or JSONL (one input per
/// line, `Content-Type: application/jsonl` or `application/x-ndjson`) also work.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<Value>,
    #[serde(default)]
    pub params: Params,
    /// Announce each item's result here (overrides the function's webhook).
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    /// Run every item on this version (the same as `name@3` in the path). Items keep the
    /// version the batch was admitted with, whatever happens to aliases later.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub version: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchInfo {
    pub batch_id: Uuid,
    pub function: String,
    pub version: u32,
    pub total: u64,
    /// `running` until every item is finished, then `completed`.
    pub status: String,
    /// Items by status: queued, running, succeeded, failed, cancelled.
    pub counts: BTreeMap<String, u64>,
    pub created_at: DateTime<Utc>,
}

/// One line of a batch's results.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResultLine {
    pub index: u32,
    pub invocation_id: Uuid,
    pub status: String,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::api::dto::InvocationError>,
}

fn batch_not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::BatchNotFound, format!("batch `{id}` not found"))
}

fn parse_body(request: &HttpRequest, body: &[u8]) -> Result<BatchRequest, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let bad = |m: String| ApiError::new(ErrorCode::InvalidJson, m);
    if content_type.starts_with("application/jsonl")
        || content_type.starts_with("application/x-ndjson")
    {
        let text = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8".into()))?;
        let inputs = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| bad(format!("line {}: {e}", i + 1))))
            .collect::<Result<_, _>>()?;
        return Ok(BatchRequest {
            inputs,
            params: Params::default(),
            webhook: None,
            version: None,
        });
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    match value {
        Value::Array(inputs) => Ok(BatchRequest {
            inputs,
            params: Params::default(),
            webhook: None,
            version: None,
        }),
        other => serde_json::from_value(other).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the request body does not match the schema: {e}"),
            )
        }),
    }
}

/// Submit a batch. Every input is checked first; one bad input refuses the whole batch (422,
/// naming it), so that nothing is half accepted.
#[utoipa::path(post, path = "/v1/functions/{name}/batches", tag = "batches", security(("bearer" = ["functions:invoke"])),
    params(("name" = String, Path)),
    request_body(content = BatchRequest, description = "Also: a JSON array of inputs, or JSONL with one input per line"),
    responses(
        (status = 202, description = "Accepted and committed", body = BatchInfo),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "No inputs, too many, or one fails the function's checks", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsInvoke)?;
    let batch = parse_body(&request, &body)?;
    let key = split_key(&request)?;
    let resolved = runnable(&state, &caller, &name, batch.version, key).await?;
    let (name, version) = (&resolved.name, &resolved.version);
    let max = state.config.queue.max_batch_inputs;
    if batch.inputs.is_empty() || batch.inputs.len() > max {
        return Err(
            ApiError::new(ErrorCode::InvalidRequest, format!("give 1 to {max} inputs"))
                .with_field("inputs"),
        );
    }
    let params: GenerationParams = batch.params.clone().into();
    let inputs: Vec<&serde_json::Value> = batch.inputs.iter().collect();
    let service = &state.invocations;
    let admitted = service
        .admit(&caller, Mode::Batch, &version.spec, &inputs, &params)
        .await?;
    let webhook = callback(batch.webhook.as_ref(), &version.spec)?;
    let params_json = serde_json::to_value(&batch.params).expect("params serialize");
    let id = Uuid::now_v7();
    let function = deployed(&caller, name, version);
    let rows = service
        .queue_rows(
            &admitted,
            Queued {
                function: &function,
                inputs: &batch.inputs,
                params: &params_json,
                webhook: webhook.as_ref(),
                batch: Some(id),
                via: &resolved.via,
            },
        )
        .await?;
    let total = rows.len() as u64;
    let row = BatchRow {
        id,
        tenant_id: caller.tenant.as_str().to_owned(),
        function_name: name.as_str().to_owned(),
        function_version: version.version as i32,
        total: total as i32,
        created_at: Utc::now(),
    };
    state.store.create_batch(row.clone(), rows).await?;
    service.wake_queue();
    let counts = BTreeMap::from([("queued".to_owned(), total)]);
    Ok(HttpResponse::Accepted()
        .insert_header(("location", format!("/v1/batches/{id}")))
        .json(info(row, counts)))
}

fn info(row: BatchRow, counts: BTreeMap<String, u64>) -> BatchInfo {
    let unfinished =
        counts.get("queued").copied().unwrap_or(0) + counts.get("running").copied().unwrap_or(0);
    BatchInfo {
        batch_id: row.id,
        function: row.function_name,
        version: row.function_version as u32,
        total: row.total as u64,
        status: if unfinished == 0 {
            "completed"
        } else {
            "running"
        }
        .into(),
        counts,
        created_at: row.created_at,
    }
}

/// A batch with its items counted by status.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches", security(("bearer" = ["invocations:read"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = BatchInfo),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::InvocationsRead)?;
    let uuid = Uuid::parse_str(&id).map_err(|_| batch_not_found(&id))?;
    let row = state
        .store
        .batch(caller.tenant.as_str(), uuid)
        .await?
        .ok_or_else(|| batch_not_found(&id))?;
    let counts = state.store.batch_counts(uuid).await?.into_iter().collect();
    Ok(HttpResponse::Ok().json(info(row, counts)))
}

/// The batch's results as JSONL, one line per input in input order (unfinished items show
/// their current status).
#[utoipa::path(get, path = "/v1/batches/{id}/results", tag = "batches", security(("bearer" = ["invocations:read"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "application/jsonl; one BatchResultLine per line", body = BatchResultLine),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn results(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::InvocationsRead)?;
    let uuid = Uuid::parse_str(&id).map_err(|_| batch_not_found(&id))?;
    state
        .store
        .batch(caller.tenant.as_str(), uuid)
        .await?
        .ok_or_else(|| batch_not_found(&id))?;
    let items = state.store.batch_items(uuid).await?;
    let mut out = String::new();
    for item in items {
        let record = crate::api::dto::InvocationRecord::from(item.clone());
        let line = BatchResultLine {
            index: item.batch_index.unwrap_or(0).max(0) as u32,
            invocation_id: item.id,
            status: record.status,
            output: record
                .output
                .map(|o| serde_json::to_value(o).expect("output serializes")),
            error: record.error,
        };
        out.push_str(&serde_json::to_string(&line).expect("line serializes"));
        out.push('\n');
    }
    Ok(HttpResponse::Ok()
        .content_type("application/jsonl")
        .body(out))
}

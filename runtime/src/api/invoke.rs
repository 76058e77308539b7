//! Invoking a function: synchronously, or streamed as Server-Sent Events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_lab::sse::{Data, Event, Sse};
use futures_util::StreamExt;
use genrt_actors::{DeployedFunction, Fault};
use genrt_functions::{FunctionName, GenerationParams};

use crate::api::dto::{
    AsyncAccepted, InvocationRecord, InvokeMode, InvokeRequest, InvokeResponse, Output, StreamDone,
};
use crate::api::functions::runnable;
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::invocation::{Admitted, Mode, Queued, Request, Status, StreamItem, Via};
use crate::store::{KeyClaim, StoredVersion};
use crate::tenancy::{Caller, Scope};

const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Run the latest version of a function on an input: wait for the text, or with
/// `"stream": true` receive it as Server-Sent Events (`token`, then `done` or `error`).
/// Closing a stream cancels its generation.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invoke", security(("bearer" = ["functions:invoke"])),
    params(("name" = String, Path)),
    request_body = InvokeRequest,
    responses(
        (status = 200, description = "The result, or with `stream` an event stream (text/event-stream) of `token` events `{\"text\"}` ending with `done` (StreamDone) or `error` (ErrorBody)", body = InvokeResponse),
        (status = 202, description = "With `\"mode\": \"async\"` (or `Prefer: respond-async`): queued", body = AsyncAccepted),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such function for this tenant", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Input fails the schema or a template, or params are out of range", body = ErrorBody),
        (status = 502, description = "The output does not satisfy the function's output format", body = ErrorBody),
        (status = 503, description = "Model unavailable, overloaded or its replica failed; see Retry-After", body = ErrorBody),
        (status = 504, description = "The function's timeout passed", body = ErrorBody)))]
pub async fn invoke(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    request: HttpRequest,
    body: web::Json<InvokeRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsInvoke)?;
    let received_at = Instant::now();
    let body = body.into_inner();
    let reference = name.into_inner();
    let resolved = runnable(
        &state,
        &caller,
        &reference,
        body.version,
        split_key(&request)?,
    )
    .await?;
    let version = &resolved.version;
    let key = idempotency_key(&request)?;
    let asynchronous = body.mode == InvokeMode::Async || prefers_async(&request);
    let mode = match (asynchronous, body.stream) {
        (true, true) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "an asynchronous invocation cannot stream; read it with GET /v1/invocations/{id} or a webhook",
            )
            .with_field("stream"))
        }
        (true, false) => Mode::Async,
        (false, true) => Mode::Stream,
        (false, false) => Mode::Sync,
    };
    if mode != Mode::Async && body.webhook.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`webhook` applies to asynchronous invocations (`\"mode\": \"async\"`)",
        )
        .with_field("webhook"));
    }
    let params: GenerationParams = body.params.clone().into();
    let service = &state.invocations;
    let admitted = service
        .admit(&caller, mode, &version.spec, &[&body.input], &params)
        .await?;
    let function = deployed(&caller, &resolved.name, version);
    if mode == Mode::Async {
        let queued = Enqueue {
            reference: &reference,
            function: &function,
            via: &resolved.via,
        };
        return enqueue(&state, &caller, &admitted, queued, body, key).await;
    }
    let mut call = Request::new(function, body.input.clone(), params);
    call.received_at = received_at;
    call.fault = fault(&request);
    call.via = resolved.via.clone();
    if let Some(key) = key {
        let hash = request_hash(&reference, &body);
        let ttl = Duration::from_secs(state.config.queue.idempotency_ttl_s);
        match state
            .store
            .claim_idempotency_key(
                caller.tenant.as_str(),
                &key,
                &hash,
                call.id.0,
                ttl,
                Vec::new(),
            )
            .await?
        {
            KeyClaim::Fresh => call.key = Some(key),
            KeyClaim::Replay(id) => return replay(&state, &caller, id).await,
            KeyClaim::Conflict => return Err(key_reused()),
        }
    }
    service.shadow(&caller, resolved.shadow.as_ref(), &call);
    if mode == Mode::Sync {
        let done = service.run(&admitted, call).await?;
        return Ok(HttpResponse::Ok().json(InvokeResponse::from(done)));
    }
    let items = service.stream(admitted, call).await?;
    let events = receiver_stream(items).flat_map(|item| {
        futures_util::stream::iter(match item {
            StreamItem::Piece(text) => vec![token_event(&text)],
            StreamItem::End(result) => {
                let last = match result {
                    Ok(done) => Data::new_json(StreamDone::from(InvokeResponse::from(done)))
                        .map(|d| d.event("done")),
                    Err(err) => Data::new_json(ErrorBody::from(err)).map(|d| d.event("error")),
                };
                last.map(Event::Data).into_iter().collect()
            }
        })
    });
    Ok(sse(events, &request))
}

/// `Genrt-Split-Key`: who the caller is serving (an end user's id), so that an alias that
/// splits traffic gives one user one version.
pub(crate) fn split_key(request: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(value) = request.headers().get("genrt-split-key") else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        Ok(key) if !key.is_empty() && key.len() <= MAX_KEY_LEN => Ok(Some(key)),
        _ => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("Genrt-Split-Key must be 1-{MAX_KEY_LEN} printable characters"),
        )
        .with_field("Genrt-Split-Key")),
    }
}

/// The function as the actor tree runs it.
pub(crate) fn deployed(
    caller: &Caller,
    name: &FunctionName,
    version: &StoredVersion,
) -> Arc<DeployedFunction> {
    Arc::new(DeployedFunction {
        tenant: caller.tenant.clone(),
        name: name.clone(),
        version: version.version,
        spec: version.spec.clone(),
        digest: version.digest.clone(),
    })
}

/// Answers with `events` as Server-Sent Events. When the client leaves, actix drops the
/// stream, and with it the service's receiver: that cancels the generation.
pub(crate) fn sse(
    events: impl futures_util::Stream<Item = Event> + 'static,
    request: &HttpRequest,
) -> HttpResponse {
    actix_web::Responder::respond_to(
        Sse::from_infallible_stream(events).with_keep_alive(SSE_KEEP_ALIVE),
        request,
    )
    .map_into_boxed_body()
}

/// A channel's receiving end as a `Stream`.
pub(crate) fn receiver_stream<T>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

fn token_event(text: &str) -> Event {
    let data = Data::new_json(serde_json::json!({ "text": text })).expect("a string serializes");
    Event::Data(data.event("token"))
}

/// `X-Genrt-Fault: engine-panic` or `engine-hang`, honoured only when
/// `server.fault_injection` is on (tests; see `ServerConfig`) and the request comes from this
/// machine, so that a proxy in front of a loopback listener cannot pass it on.
pub(crate) fn fault(request: &HttpRequest) -> Option<Fault> {
    let state = request.app_data::<web::Data<AppState>>()?;
    let local = request.peer_addr().is_some_and(|a| a.ip().is_loopback());
    if !state.config.server.fault_injection || !local {
        return None;
    }
    match request.headers().get("x-genrt-fault")?.to_str().ok()? {
        "engine-panic" => Some(Fault::EnginePanic),
        "engine-hang" => Some(Fault::EngineHang),
        _ => None,
    }
}

/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

pub(crate) fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(str::trim).unwrap_or_default();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("Idempotency-Key must be 1-{MAX_KEY_LEN} printable characters"),
        )
        .with_field("Idempotency-Key"));
    }
    Ok(Some(key.to_owned()))
}

fn prefers_async(request: &HttpRequest) -> bool {
    request.headers().get_all("prefer").any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
    })
}

/// What makes two requests "the same" for an idempotency key: the function reference as
/// given (`name`, `name@3`, `name@prod`) and the body. serde_json writes object keys sorted,
/// so equal bodies hash equally.
pub(crate) fn request_hash(reference: &str, body: &impl serde::Serialize) -> String {
    let text = serde_json::to_string(&(reference, body)).expect("request serializes");
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn key_reused() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyReused,
        "this Idempotency-Key was used with a different request",
    )
    .with_field("Idempotency-Key")
}

/// The answer an earlier request with the same key got.
async fn replay(
    state: &AppState,
    caller: &Caller,
    id: uuid::Uuid,
) -> Result<HttpResponse, ApiError> {
    let Some(row) = state.records.get(&caller.tenant, id).await? else {
        return Err(ApiError::new(
            ErrorCode::IdempotencyInProgress,
            "a request with this Idempotency-Key is still running",
        ));
    };
    match row.status.as_str() {
        "succeeded" => {
            let record = InvocationRecord::from(row);
            Ok(HttpResponse::Ok()
                .insert_header(("idempotent-replayed", "true"))
                .json(InvokeResponse {
                    invocation_id: record.invocation_id,
                    function: record.function,
                    version: record.version,
                    alias: record.alias,
                    split: record.split,
                    model: record.model.unwrap_or_default(),
                    output: record.output.unwrap_or(Output {
                        text: String::new(),
                        json: None,
                    }),
                    finish_reason: record.finish_reason.unwrap_or_default(),
                    usage: record.usage,
                    cache_hit: record.cache_hit,
                    timings: record.timings,
                }))
        }
        "queued" | "running" => Err(ApiError::new(
            ErrorCode::IdempotencyInProgress,
            "a request with this Idempotency-Key is still running",
        )),
        _ => {
            let code = row
                .error_code
                .as_deref()
                .and_then(ErrorCode::parse)
                .unwrap_or(ErrorCode::Internal);
            Err(ApiError::new(code, row.error_message.unwrap_or_default()))
        }
    }
}

/// The callback an async invocation announces its result to: its own, else its function's.
/// The URL is checked against the SSRF guard by the service, and again at each delivery.
pub(crate) fn callback(
    own: Option<&crate::api::dto::WebhookSpec>,
    spec: &genrt_functions::FunctionSpec,
) -> Result<Option<genrt_functions::WebhookTarget>, ApiError> {
    match own {
        Some(w) => {
            let t = genrt_functions::WebhookTarget::from(w);
            t.validate().map_err(ApiError::from)?;
            Ok(Some(t))
        }
        None => Ok(spec.webhook.clone()),
    }
}

/// What an async invocation queues: the function at the version admission chose.
struct Enqueue<'a> {
    reference: &'a str,
    function: &'a DeployedFunction,
    via: &'a Via,
}

/// Commits one async invocation (with its idempotency key, when given) and answers 202.
async fn enqueue(
    state: &AppState,
    caller: &Caller,
    admitted: &Admitted,
    queued: Enqueue<'_>,
    body: InvokeRequest,
    key: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let function = queued.function;
    let webhook = callback(body.webhook.as_ref(), &function.spec)?;
    let params_json = serde_json::to_value(&body.params).expect("params serialize");
    let inputs = [body.input.clone()];
    let mut rows = state
        .invocations
        .queue_rows(
            admitted,
            Queued {
                function,
                inputs: &inputs,
                params: &params_json,
                webhook: webhook.as_ref(),
                batch: None,
                via: queued.via,
            },
        )
        .await?;
    let row = rows.pop().expect("one input, one row");
    let (id, name) = (row.id, &function.name);
    let alias = row.alias.clone();
    let mut status = Status::Queued.as_str().to_owned();
    match key {
        Some(key) => {
            let hash = request_hash(queued.reference, &body);
            let ttl = Duration::from_secs(state.config.queue.idempotency_ttl_s);
            match state
                .store
                .claim_idempotency_key(caller.tenant.as_str(), &key, &hash, id, ttl, vec![row])
                .await?
            {
                KeyClaim::Fresh => {}
                KeyClaim::Replay(earlier) => {
                    let row = state
                        .records
                        .get(&caller.tenant, earlier)
                        .await?
                        .ok_or_else(|| ApiError::internal("idempotency key without invocation"))?;
                    status = row.status;
                    let version = row.function_version as u32;
                    return Ok(accepted(earlier, name, version, row.alias, &status, true));
                }
                KeyClaim::Conflict => return Err(key_reused()),
            }
        }
        None => state.store.enqueue(vec![row]).await?,
    }
    state.invocations.wake_queue();
    Ok(accepted(id, name, function.version, alias, &status, false))
}

fn accepted(
    id: uuid::Uuid,
    name: &FunctionName,
    version: u32,
    alias: Option<String>,
    status: &str,
    replayed: bool,
) -> HttpResponse {
    let mut response = HttpResponse::Accepted();
    response.insert_header(("location", format!("/v1/invocations/{id}")));
    if replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    response.json(AsyncAccepted {
        invocation_id: id,
        status: status.to_owned(),
        function: name.as_str().to_owned(),
        version,
        alias,
    })
}

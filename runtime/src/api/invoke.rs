//! Invoking a function: synchronously, or streamed as Server-Sent Events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_lab::sse::{Data, Event, Sse};
use chrono::Utc;
use genrt_actors::{
    stream_channel, DeployedFunction, Fault, Invocation, InvocationId, InvocationOutcome,
    InvokeError,
};
use genrt_functions::{FunctionName, GenerationParams, TenantId};

use crate::api::dto::{
    AsyncAccepted, InvocationRecord, InvokeMode, InvokeRequest, InvokeResponse, Output, StreamDone,
};
use crate::api::functions::runnable;
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode, ErrorDetail};
use crate::queue::NewJob;
use crate::store::{InvocationRow, KeyClaim, StoredVersion};
use crate::tenancy::{Caller, ConcurrencyPermit, Scope};

const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Run the latest version of a function on an input: wait for the text, or with
/// `"stream": true` receive it as Server-Sent Events (`token`, then `done` or `error`).
/// Closing a stream cancels its generation.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invoke", security(("bearer" = [])),
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
    let (name, version) = runnable(&state, &caller, &name).await?;
    admit(&state, &caller, &version).await?;
    let body = body.into_inner();
    check_limits(
        &state,
        &version.spec,
        &body.input,
        &body.params.clone().into(),
    )?;
    let key = idempotency_key(&request)?;
    if body.mode == InvokeMode::Async || prefers_async(&request) {
        if body.stream {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "an asynchronous invocation cannot stream; read it with GET /v1/invocations/{id} or a webhook",
            )
            .with_field("stream"));
        }
        return enqueue(&state, &caller, &name, &version, body, key).await;
    }
    if body.webhook.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`webhook` applies to asynchronous invocations (`\"mode\": \"async\"`)",
        )
        .with_field("webhook"));
    }
    let mut permit = state
        .tenancy
        .limits
        .acquire(&caller.tenant, &caller.limits)?;
    if body.stream {
        permit = permit.and(
            state
                .tenancy
                .limits
                .acquire_stream(&caller.tenant, &caller.limits)?,
        );
    }
    let params: GenerationParams = body.params.clone().into();
    let mut call = Call::new(&state, &caller.tenant, &name, version.version, &body.input);
    call.mode = if body.stream { "stream" } else { "sync" };
    call.request_params(&version.spec.params.resolve(&params));
    if let Some(key) = key {
        let hash = request_hash(&name, &body);
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
    let invocation = Invocation {
        id: call.id,
        function: Arc::new(DeployedFunction {
            tenant: caller.tenant.clone(),
            name: name.clone(),
            version: version.version,
            spec: version.spec.clone(),
        }),
        input: body.input,
        params: params.clone(),
        received_at,
        background: false,
        stream: None,
        fault: fault(&request),
        conversation: None,
    };
    if !body.stream {
        let result = state.tree.invoke(invocation).await;
        drop(permit);
        let response = call.complete(&state, result).await?;
        return Ok(HttpResponse::Ok().json(response));
    }

    let max_tokens = version.spec.params.resolve(&params).max_tokens;
    let events = stream(
        state.into_inner(),
        invocation,
        call,
        permit,
        max_tokens,
        |text| vec![token_event(text)],
        |result| {
            let last = match result {
                Ok(response) => Data::new_json(StreamDone::from(response)).map(|d| d.event("done")),
                Err(err) => Data::new_json(ErrorBody {
                    error: ErrorDetail {
                        code: err.code.as_str().to_owned(),
                        message: err.message,
                        field: err.field,
                    },
                })
                .map(|d| d.event("error")),
            };
            last.map(Event::Data).into_iter().collect()
        },
    );
    Ok(sse(events, &request))
}

/// Answers with the events of `events` as Server-Sent Events.
pub(crate) fn sse(
    events: tokio::sync::mpsc::Receiver<Event>,
    request: &HttpRequest,
) -> HttpResponse {
    actix_web::Responder::respond_to(
        Sse::from_infallible_receiver(events).with_keep_alive(SSE_KEEP_ALIVE),
        request,
    )
    .map_into_boxed_body()
}

/// Runs a streamed invocation on its own task and returns its events: those `piece` makes of
/// every text piece, then those `end` makes of the recorded outcome. When the client leaves,
/// the generation is cancelled and recorded so. Both the native and the OpenAI-compatible API
/// stream through here; they differ only in the shape of the events.
pub(crate) fn stream(
    state: Arc<AppState>,
    mut invocation: Invocation,
    call: Call,
    permit: ConcurrencyPermit,
    max_tokens: u32,
    piece: impl Fn(&str) -> Vec<Event> + Send + 'static,
    end: impl FnOnce(Result<InvokeResponse, ApiError>) -> Vec<Event> + Send + 'static,
) -> tokio::sync::mpsc::Receiver<Event> {
    let (tokens_tx, mut tokens) = stream_channel(max_tokens);
    invocation.stream = Some(tokens_tx);
    // Pieces plus the final events; the forwarder below never has more in flight.
    let (events, events_rx) = tokio::sync::mpsc::channel::<Event>(max_tokens as usize + 8);
    let tree = Arc::clone(&state.tree);
    tokio::spawn(async move {
        // The tenant's concurrency place is held until the stream ends, however it ends.
        let _permit = permit;
        let mut result = std::pin::pin!(tree.invoke(invocation));
        let outcome = loop {
            tokio::select! {
                text = tokens.recv() => match text {
                    Some(text) => {
                        for event in piece(&text) {
                            if events.send(event).await.is_err() {
                                // The client left: dropping the token receiver (on return) is
                                // what tells the engine to stop this sequence and free its slot.
                                call.cancelled(&state).await;
                                return;
                            }
                        }
                    }
                    None => break result.await,
                },
                // The client left before the first piece (still queued, loading, prefilling,
                // or an engine that stopped answering): without this, its places would be
                // held until the next piece, which may never come.
                () = events.closed() => {
                    call.cancelled(&state).await;
                    return;
                }
                outcome = &mut result => {
                    while let Ok(text) = tokens.try_recv() {
                        for event in piece(&text) {
                            let _ = events.send(event).await;
                        }
                    }
                    break outcome;
                }
            }
        };
        for event in end(call.complete(&state, outcome).await) {
            let _ = events.send(event).await;
        }
    });
    events_rx
}

fn token_event(text: &str) -> Event {
    let data = Data::new_json(serde_json::json!({ "text": text })).expect("a string serializes");
    Event::Data(data.event("token"))
}

/// What is needed to record an invocation and answer it, whichever way it ends.
pub(crate) struct Call {
    pub(crate) id: InvocationId,
    tenant: TenantId,
    name: FunctionName,
    version: u32,
    input: String,
    created_at: chrono::DateTime<Utc>,
    pub(crate) mode: &'static str,
    /// The `Idempotency-Key` this call claimed, released if the request is refused.
    key: Option<String>,
    /// The dispatch span: a child of the request's, parent of the actor tree's phases.
    span: tracing::Span,
    opened: std::time::SystemTime,
    metrics: Arc<crate::telemetry::Metrics>,
    _in_flight: crate::telemetry::InFlight,
}

impl Call {
    pub(crate) fn new(
        state: &AppState,
        tenant: &TenantId,
        name: &FunctionName,
        version: u32,
        input: &serde_json::Value,
    ) -> Self {
        let id = InvocationId::new();
        let labels = crate::telemetry::InvocationLabels {
            tenant: tenant.as_str().to_owned(),
            function: name.as_str().to_owned(),
            version,
            mode: "sync",
        };
        let span = crate::telemetry::invocation_span(&labels, id.0);
        Self {
            id,
            span,
            opened: std::time::SystemTime::now(),
            metrics: Arc::clone(&state.metrics),
            _in_flight: state.metrics.in_flight(),
            tenant: tenant.clone(),
            name: name.clone(),
            version,
            input: input.to_string(),
            created_at: Utc::now(),
            mode: "sync",
            key: None,
        }
    }

    /// The resolved sampling parameters, as the GenAI conventions' request attributes.
    pub(crate) fn request_params(&self, p: &genrt_functions::SamplingParams) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        self.span
            .set_attribute("gen_ai.request.max_tokens", i64::from(p.max_tokens));
        self.span
            .set_attribute("gen_ai.request.temperature", f64::from(p.temperature));
        self.span
            .set_attribute("gen_ai.request.top_p", f64::from(p.top_p));
        self.span
            .set_attribute("gen_ai.request.top_k", i64::from(p.top_k));
        if let Some(seed) = p.seed {
            self.span
                .set_attribute("gen_ai.request.seed", i64::from(seed));
        }
    }

    fn labels(&self) -> crate::telemetry::InvocationLabels {
        crate::telemetry::InvocationLabels {
            tenant: self.tenant.as_str().to_owned(),
            function: self.name.as_str().to_owned(),
            version: self.version,
            mode: self.mode,
        }
    }

    fn record(&self, status: &str) -> InvocationRow {
        InvocationRow {
            id: self.id.0,
            tenant_id: self.tenant.as_str().to_owned(),
            function_name: self.name.as_str().to_owned(),
            function_version: self.version as i32,
            model: None,
            status: status.to_owned(),
            input: self.input.clone(),
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
            created_at: self.created_at,
            completed_at: Some(Utc::now()),
            mode: self.mode.to_owned(),
            params: None,
            attempts: 1,
            max_attempts: 1,
            run_after: None,
            lease_owner: None,
            lease_expires_at: None,
            cancel_requested: false,
            started_at: Some(self.created_at),
            batch_id: None,
            batch_index: None,
            callback_url: None,
            callback_events: None,
            output_json: None,
            traceparent: None,
        }
    }

    /// Records the outcome and converts it. The record is handed to the write-behind recorder
    /// before answering, so the returned id can be read back at once. Requests refused as
    /// invalid leave nothing behind; failures of accepted work are recorded.
    pub(crate) async fn complete(
        &self,
        state: &AppState,
        result: Result<InvocationOutcome, InvokeError>,
    ) -> Result<InvokeResponse, ApiError> {
        let outcome = result
            .as_ref()
            .map_err(|e| ApiError::from(e.clone()).code.as_str());
        crate::telemetry::record_outcome(
            &self.metrics,
            &self.span,
            self.opened,
            &self.labels(),
            outcome,
        );
        match result {
            Ok(o) => {
                let mut row = self.record("succeeded");
                row.model = Some(o.model.as_str().to_owned());
                row.output_text = Some(o.text.clone());
                row.finish_reason = Some(o.finish_reason.as_str().to_owned());
                row.prompt_tokens = o.usage.prompt_tokens as i32;
                row.completion_tokens = o.usage.completion_tokens as i32;
                row.cache_hit = o.cache_hit;
                row.load_ms = o.timings.load_ms;
                row.queue_ms = o.timings.queue_ms;
                row.ttft_ms = o.timings.ttft_ms;
                row.total_ms = o.timings.total_ms;
                row.output_json = o.json.as_ref().map(|j| j.to_string());
                state.tenancy.record_usage(
                    &self.tenant,
                    u64::from(o.usage.prompt_tokens + o.usage.completion_tokens),
                );
                state.records.record(row).await;
                Ok(InvokeResponse::new(
                    self.id.0,
                    self.name.as_str(),
                    self.version,
                    o,
                ))
            }
            Err(err) => {
                let api = ApiError::from(err);
                if api.code.status().is_server_error() {
                    let mut row = self.record("failed");
                    row.error_code = Some(api.code.as_str().to_owned());
                    row.error_message = Some(api.message.clone());
                    state.records.record(row).await;
                } else if let Some(key) = &self.key {
                    // Refused, nothing accepted: the key may be used again for a fixed request.
                    if let Err(err) = state
                        .store
                        .release_idempotency_key(self.tenant.as_str(), key)
                        .await
                    {
                        tracing::warn!(error = %err, "releasing an idempotency key failed");
                    }
                }
                Err(api)
            }
        }
    }

    async fn cancelled(&self, state: &AppState) {
        let mut row = self.record("cancelled");
        row.error_code = Some("cancelled".into());
        row.error_message = Some("the client closed the stream".into());
        state.records.record(row).await;
    }
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

/// Checks made before any work is accepted: the tenant may use the function's models and
/// has budget left.
pub(crate) async fn admit(
    state: &AppState,
    caller: &Caller,
    version: &StoredVersion,
) -> Result<(), ApiError> {
    caller.require_models(version.spec.models().into_iter().map(|m| m.as_str()))?;
    state
        .tenancy
        .check_budget(&caller.tenant, &caller.limits)
        .await
}

/// The server-wide limits on one invocation, checked before anything is accepted: the size of
/// its input (`server.max_input_bytes`) and the `max_tokens` it would run with
/// (`server.max_tokens`). The prompt against the model's context is checked later, by the
/// function actor, once the prompt is rendered and tokenized (`prompt_too_long`,
/// `max_tokens_exceeds_context`).
pub(crate) fn check_limits(
    state: &AppState,
    spec: &genrt_functions::FunctionSpec,
    input: &serde_json::Value,
    params: &GenerationParams,
) -> Result<(), ApiError> {
    let limits = &state.config.server;
    if limits.max_input_bytes > 0 {
        let size = serde_json::to_vec(input).map_or(0, |v| v.len());
        if size > limits.max_input_bytes {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the input is {size} bytes; at most {} are accepted",
                    limits.max_input_bytes
                ),
            )
            .with_field("input"));
        }
    }
    let max_tokens = spec.params.resolve(params).max_tokens;
    if limits.max_tokens > 0 && max_tokens > limits.max_tokens {
        return Err(ApiError::new(
            ErrorCode::InvalidParams,
            format!(
                "max_tokens {max_tokens} exceeds this server's cap of {}",
                limits.max_tokens
            ),
        )
        .with_field("params.max_tokens"));
    }
    Ok(())
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

/// What makes two requests "the same" for an idempotency key: the function and the body.
/// serde_json writes object keys sorted, so equal bodies hash equally.
pub(crate) fn request_hash(name: &FunctionName, body: &impl serde::Serialize) -> String {
    let text = serde_json::to_string(&(name.as_str(), body)).expect("request serializes");
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

/// Checks that an async invocation can run before accepting it, so that bad input is refused
/// now (422) rather than failing later in the queue.
pub(crate) fn precheck(
    prepared: &genrt_functions::PreparedFunction,
    input: &serde_json::Value,
    params: &GenerationParams,
) -> Result<(), ApiError> {
    params
        .validate_override()
        .map_err(|e| ApiError::from(genrt_actors::InvokeError::Input(e)))?;
    prepared
        .render(input)
        .map_err(|e| ApiError::from(genrt_actors::InvokeError::Input(e)))?;
    Ok(())
}

/// The callback an async invocation announces its result to: its own, else its function's.
/// The URL must pass the SSRF guard now, and does again (by address) at each delivery.
pub(crate) async fn callback(
    state: &AppState,
    own: Option<&crate::api::dto::WebhookSpec>,
    version: &StoredVersion,
) -> Result<Option<genrt_functions::WebhookTarget>, ApiError> {
    let target = match own {
        Some(w) => {
            let t = genrt_functions::WebhookTarget::from(w);
            t.validate().map_err(ApiError::from)?;
            Some(t)
        }
        None => version.spec.webhook.clone(),
    };
    if let Some(t) = &target {
        state.check_callback_url(&t.url).await?;
    }
    Ok(target)
}

/// Commits one async invocation (with its idempotency key, when given) and answers 202.
async fn enqueue(
    state: &AppState,
    caller: &Caller,
    name: &FunctionName,
    version: &StoredVersion,
    body: InvokeRequest,
    key: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let params: GenerationParams = body.params.clone().into();
    let prepared = genrt_functions::PreparedFunction::new(version.spec.clone())?;
    precheck(&prepared, &body.input, &params)?;
    let webhook = callback(state, body.webhook.as_ref(), version).await?;
    let params_json = serde_json::to_value(&body.params).expect("params serialize");
    let row = state.queue.row(NewJob {
        tenant: &caller.tenant,
        function: name,
        version: version.version,
        input: &body.input,
        params: &params_json,
        mode: "async",
        webhook: webhook.as_ref(),
        batch: None,
    });
    let id = row.id;
    let mut status = "queued".to_owned();
    match key {
        Some(key) => {
            let hash = request_hash(name, &body);
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
                    return Ok(accepted(
                        earlier,
                        name,
                        row.function_version as u32,
                        &status,
                        true,
                    ));
                }
                KeyClaim::Conflict => return Err(key_reused()),
            }
        }
        None => state.store.enqueue(vec![row]).await?,
    }
    state.queue.wake();
    Ok(accepted(id, name, version.version, &status, false))
}

fn accepted(
    id: uuid::Uuid,
    name: &FunctionName,
    version: u32,
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
    })
}

//! Invoking a function: synchronously, or streamed as Server-Sent Events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_lab::sse::{Data, Event, Sse};
use chrono::Utc;
use genrt_actors::{
    stream_channel, DeployedFunction, Fault, Invocation, InvocationId, InvocationOutcome,
    InvokeError,
};
use genrt_functions::{FunctionName, GenerationParams, TenantId};

use crate::api::dto::{InvokeRequest, InvokeResponse, StreamDone};
use crate::api::functions::runnable;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::store::{InvocationRow, StoredVersion};

const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Run the latest version of a function on an input: wait for the text, or with
/// `"stream": true` receive it as Server-Sent Events (`token`, then `done` or `error`).
/// Closing a stream cancels its generation.
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invoke", security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body = InvokeRequest,
    responses(
        (status = 200, description = "The result, or with `stream` an event stream (text/event-stream) of `token` events `{\"text\"}` ending with `done` (StreamDone) or `error` (ErrorBody)", body = InvokeResponse),
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
    let received_at = Instant::now();
    let (name, version) = runnable(&state, &caller, &name).await?;
    let body = body.into_inner();
    let params: GenerationParams = body.params.into();
    let call = Call::new(&caller.tenant, &name, &version, &body.input);
    let mut invocation = Invocation {
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
    };
    if !body.stream {
        let result = state.tree.invoke(invocation).await;
        let response = call.complete(&state, result).await?;
        return Ok(HttpResponse::Ok().json(response));
    }

    let max_tokens = version.spec.params.resolve(&params).max_tokens;
    let (tokens_tx, mut tokens) = stream_channel(max_tokens);
    invocation.stream = Some(tokens_tx);
    // Pieces plus the final event; the forwarder below never has more in flight.
    let (events, events_rx) = tokio::sync::mpsc::channel::<Event>(max_tokens as usize + 4);
    let tree = Arc::clone(&state.tree);
    tokio::spawn(async move {
        let mut result = std::pin::pin!(tree.invoke(invocation));
        let outcome = loop {
            tokio::select! {
                piece = tokens.recv() => match piece {
                    Some(text) => {
                        let event = token_event(&text);
                        if events.send(event).await.is_err() {
                            // The client left: dropping the token receiver (on return) is what
                            // tells the engine to stop this sequence and free its slot.
                            call.cancelled(&state).await;
                            return;
                        }
                    }
                    None => break result.await,
                },
                outcome = &mut result => {
                    while let Ok(text) = tokens.try_recv() {
                        let _ = events.send(token_event(&text)).await;
                    }
                    break outcome;
                }
            }
        };
        let last = match call.complete(&state, outcome).await {
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
        if let Ok(data) = last {
            let _ = events.send(Event::Data(data)).await;
        }
    });
    Ok(actix_web::Responder::respond_to(
        Sse::from_infallible_receiver(events_rx).with_keep_alive(SSE_KEEP_ALIVE),
        &request,
    )
    .map_into_boxed_body())
}

fn token_event(text: &str) -> Event {
    let data = Data::new_json(serde_json::json!({ "text": text })).expect("a string serializes");
    Event::Data(data.event("token"))
}

/// What is needed to record an invocation and answer it, whichever way it ends.
struct Call {
    id: InvocationId,
    tenant: TenantId,
    name: FunctionName,
    version: u32,
    input: String,
    created_at: chrono::DateTime<Utc>,
}

impl Call {
    fn new(
        tenant: &TenantId,
        name: &FunctionName,
        version: &StoredVersion,
        input: &serde_json::Value,
    ) -> Self {
        Self {
            id: InvocationId::new(),
            tenant: tenant.clone(),
            name: name.clone(),
            version: version.version,
            input: input.to_string(),
            created_at: Utc::now(),
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
        }
    }

    /// Records the outcome and converts it. The record is handed to the write-behind recorder
    /// before answering, so the returned id can be read back at once. Requests refused as
    /// invalid leave nothing behind; failures of accepted work are recorded.
    async fn complete(
        &self,
        state: &AppState,
        result: Result<InvocationOutcome, InvokeError>,
    ) -> Result<InvokeResponse, ApiError> {
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

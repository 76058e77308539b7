//! The OpenAI-compatible API under `/openai/v1`: applications written for OpenAI's API work by
//! pointing their base URL here. `model` is a registered model id (served by a pass-through
//! function, with the caller's messages as they are) or the name of one of the caller's
//! functions (whose templates, schema and output constraint then apply). Same credentials as
//! the native API; errors in OpenAI's shape.

mod plan;
mod wire;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_lab::sse::{Data, Event};
use chrono::Utc;
use futures_util::future::join_all;
use futures_util::StreamExt;
use genrt_actors::DeployedFunction;
use genrt_functions::{
    Conversation, FunctionName, FunctionRef, GenerationParams, ModelId, OutputSpec,
};
use serde_json::Value;

use crate::api::dto::InvokeResponse;
use crate::api::functions::{runnable, READ};
use crate::api::invoke::{fault, receiver_stream, split_key, sse};
use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::invocation::{Admitted, Mode, Request, ShadowRun, StreamItem, Via};
use crate::tenancy::{Caller, Scope};

use wire::{unsupported, Prompt};
pub use wire::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChatMessage, ChunkChoice, CommonFields, CompletionRequest, CompletionUsage, Delta,
    EmbeddingList, EmbeddingObject, EmbeddingRequest, EmbeddingUsage, JsonSchemaFormat,
    ModelListObject, ModelObject, OpenAiError, OpenAiErrorBody, OpenAiErrorDetail,
    PromptTokensDetails, ResponseFormat, StreamOptions, TextChoice, TextCompletion,
};

/// When registered models came to be, as far as clients can tell: when the routes were
/// registered (the server's start).
static STARTED: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| Utc::now().timestamp());

/// Registers the routes under `/openai/v1`, with OpenAI-shaped errors for bad bodies and
/// unknown paths too.
pub fn configure(cfg: &mut web::ServiceConfig, body_limit: usize) {
    std::sync::LazyLock::force(&STARTED);
    cfg.service(
        web::scope("/openai/v1")
            .app_data(
                web::JsonConfig::default()
                    .limit(body_limit)
                    .content_type(|_| true)
                    .content_type_required(false)
                    .error_handler(|err, req| {
                        OpenAiError(crate::api::json_error_to_api(err, req)).into()
                    }),
            )
            .route("/models", web::get().to(models))
            .route("/chat/completions", web::post().to(chat_completions))
            .route("/completions", web::post().to(completions))
            .route("/embeddings", web::post().to(embeddings))
            .default_service(web::to(|req: HttpRequest| async move {
                Err::<HttpResponse, _>(OpenAiError(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no route for {} {}", req.method(), req.path()),
                )))
            })),
    );
}

/// The caller's functions and the registered models it may use.
#[utoipa::path(get, path = "/openai/v1/models", tag = "openai", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"])),
    responses(
        (status = 200, body = ModelListObject),
        (status = 401, body = OpenAiErrorBody)))]
pub async fn models(
    state: web::Data<AppState>,
    caller: Result<Caller, ApiError>,
) -> Result<HttpResponse, OpenAiError> {
    let caller = caller?;
    caller.require_any(&READ)?;
    let started = *STARTED;
    let mut data: Vec<ModelObject> = state
        .tree
        .model_configs()
        .iter()
        .filter(|m| caller.limits.allows_model(m.id.as_str()) && m.visible_to(&caller.tenant))
        .map(|m| ModelObject {
            id: m.id.as_str().to_owned(),
            object: "model",
            created: started,
            owned_by: "genrt".to_owned(),
        })
        .collect();
    // Each adapter as `base:adapter`, the name a request gives it.
    data.extend(
        state
            .tree
            .adapters()
            .into_iter()
            .filter(|(model, _, a)| {
                a.visible_to(&caller.tenant)
                    && caller.limits.allows_model(model.as_str())
                    && state
                        .tree
                        .model(model)
                        .is_some_and(|m| m.visible_to(&caller.tenant))
            })
            .map(|(model, name, _)| ModelObject {
                id: crate::registry::adapter_id(&model, &name),
                object: "model",
                created: started,
                owned_by: "genrt".to_owned(),
            }),
    );
    let functions = state
        .store
        .list_functions(&caller.tenant)
        .await
        .map_err(ApiError::from)?;
    data.extend(functions.into_iter().map(|f| ModelObject {
        id: f.name,
        object: "model",
        created: f.created_at.timestamp(),
        owned_by: caller.tenant.as_str().to_owned(),
    }));
    Ok(HttpResponse::Ok().json(ModelListObject {
        object: "list",
        data,
    }))
}

/// Chat completion, or with `stream` a stream of `chat.completion.chunk` events ending with
/// `data: [DONE]`.
#[utoipa::path(post, path = "/openai/v1/chat/completions", tag = "openai", security(("bearer" = ["functions:invoke"])),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion, or with `stream` an event stream (text/event-stream) of ChatCompletionChunk ending with `[DONE]`", body = ChatCompletion),
        (status = 400, body = OpenAiErrorBody),
        (status = 401, body = OpenAiErrorBody),
        (status = 404, description = "Neither a registered model nor one of the caller's functions", body = OpenAiErrorBody),
        (status = 429, body = OpenAiErrorBody),
        (status = 503, body = OpenAiErrorBody)))]
pub async fn chat_completions(
    state: web::Data<AppState>,
    caller: Result<Caller, ApiError>,
    request: HttpRequest,
    body: web::Json<ChatCompletionRequest>,
) -> Result<HttpResponse, OpenAiError> {
    let caller = caller?;
    caller.require(Scope::FunctionsInvoke)?;
    let body = body.into_inner();
    if body.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(unsupported("tools", "tools are not supported"));
    }
    if body.logprobs == Some(true) {
        return Err(unsupported("logprobs", "`logprobs` is not supported"));
    }
    let common = &body.common;
    let n = plan::choices(common.n, common.stream)?;
    let params = plan::params(common, body.max_completion_tokens.or(common.max_tokens))?;
    let (conversation, last) = plan::conversation(&body.messages)?;
    let output = plan::output(body.response_format.as_ref());
    let key = split_key(&request)?.or(common.user.as_deref());
    let target = resolve(&state, &caller, &body.model, output, key).await?;
    let runs = vec![(target.input(&last), conversation); n as usize];
    let chunks = Chunks::new(Kind::Chat, body.model.clone());
    if common.stream {
        return start_stream(
            &state, &caller, &request, target, runs, params, chunks, common,
        )
        .await;
    }
    let responses = run_all(&state, &caller, &request, &target, runs, params).await?;
    let (choices, usage) = choices(responses, |index, r| ChatChoice {
        index,
        message: AssistantMessage {
            role: "assistant",
            content: r.output.text,
            refusal: None,
        },
        finish_reason: plan::finish_reason(&r.finish_reason),
        logprobs: None,
    });
    Ok(HttpResponse::Ok().json(ChatCompletion {
        id: chunks.id,
        object: "chat.completion",
        created: chunks.created,
        model: chunks.model,
        choices,
        usage,
        system_fingerprint: None,
    }))
}

/// Text completion: the prompt goes to a model as it is (no chat template); with a function
/// as `model` it is the function's input. With `stream`, `text_completion` chunks and
/// `data: [DONE]`.
#[utoipa::path(post, path = "/openai/v1/completions", tag = "openai", security(("bearer" = ["functions:invoke"])),
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion, or with `stream` an event stream of TextCompletion chunks ending with `[DONE]`", body = TextCompletion),
        (status = 400, body = OpenAiErrorBody),
        (status = 401, body = OpenAiErrorBody),
        (status = 404, body = OpenAiErrorBody),
        (status = 429, body = OpenAiErrorBody),
        (status = 503, body = OpenAiErrorBody)))]
pub async fn completions(
    state: web::Data<AppState>,
    caller: Result<Caller, ApiError>,
    request: HttpRequest,
    body: web::Json<CompletionRequest>,
) -> Result<HttpResponse, OpenAiError> {
    let caller = caller?;
    caller.require(Scope::FunctionsInvoke)?;
    let body = body.into_inner();
    if body.echo == Some(true) {
        return Err(unsupported("echo", "`echo` is not supported"));
    }
    if body.suffix.is_some() {
        return Err(unsupported("suffix", "`suffix` is not supported"));
    }
    if body.logprobs.is_some() {
        return Err(unsupported("logprobs", "`logprobs` is not supported"));
    }
    if body.best_of.is_some_and(|b| b > 1) {
        return Err(unsupported("best_of", "`best_of` above 1 is not supported"));
    }
    let prompts = match body.prompt {
        Prompt::One(p) => vec![p],
        Prompt::Many(ps) if !ps.is_empty() => ps,
        Prompt::Many(_) => return Err(unsupported("prompt", "`prompt` must not be empty")),
        Prompt::Tokens(_) => {
            return Err(unsupported(
                "prompt",
                "token arrays are not supported: send the prompt as text",
            ))
        }
    };
    let common = &body.common;
    let n = plan::choices(common.n, common.stream)?;
    if common.stream && prompts.len() > 1 {
        return Err(unsupported("prompt", "streaming takes one prompt"));
    }
    if prompts.len() as u32 * n > plan::MAX_CHOICES {
        return Err(unsupported(
            "n",
            format!("prompts × n must be at most {}", plan::MAX_CHOICES),
        ));
    }
    let params = plan::params(common, common.max_tokens)?;
    let key = split_key(&request)?.or(common.user.as_deref());
    let target = resolve(&state, &caller, &body.model, OutputSpec::Text, key).await?;
    // A model gets the prompt without a chat template; a function renders its own messages.
    let conversation = Conversation {
        raw: target.passthrough,
        ..Conversation::default()
    };
    let runs: Vec<(Value, Conversation)> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p, n as usize))
        .map(|p| (target.input(p), conversation.clone()))
        .collect();
    let chunks = Chunks::new(Kind::Text, body.model.clone());
    if common.stream {
        return start_stream(
            &state, &caller, &request, target, runs, params, chunks, common,
        )
        .await;
    }
    let responses = run_all(&state, &caller, &request, &target, runs, params).await?;
    let (choices, usage) = choices(responses, |index, r| TextChoice {
        index,
        text: r.output.text,
        finish_reason: Some(plan::finish_reason(&r.finish_reason)),
        logprobs: None,
    });
    Ok(HttpResponse::Ok().json(TextCompletion {
        id: chunks.id,
        object: "text_completion",
        created: chunks.created,
        model: chunks.model,
        choices,
        usage: Some(usage),
        system_fingerprint: None,
    }))
}

/// Embeddings from a model configured with `embeddings = true`: mean-pooled, unit-length
/// hidden states. Other models answer 400 `embeddings_not_supported`.
#[utoipa::path(post, path = "/openai/v1/embeddings", tag = "openai", security(("bearer" = ["functions:invoke"])),
    request_body = EmbeddingRequest,
    responses(
        (status = 200, body = EmbeddingList),
        (status = 400, description = "Bad input, or the model does not produce embeddings", body = OpenAiErrorBody),
        (status = 401, body = OpenAiErrorBody),
        (status = 404, body = OpenAiErrorBody),
        (status = 429, body = OpenAiErrorBody),
        (status = 503, body = OpenAiErrorBody)))]
pub async fn embeddings(
    state: web::Data<AppState>,
    caller: Result<Caller, ApiError>,
    body: web::Json<EmbeddingRequest>,
) -> Result<HttpResponse, OpenAiError> {
    let caller = caller?;
    caller.require(Scope::FunctionsInvoke)?;
    let body = body.into_inner();
    let id = ModelId::new(body.model.as_str());
    let Some(model) = state
        .tree
        .model(&id)
        .filter(|m| m.visible_to(&caller.tenant))
    else {
        return Err(model_not_found(&body.model).into());
    };
    if !model.embeddings {
        return Err(OpenAiError(
            ApiError::new(
                ErrorCode::EmbeddingsNotSupported,
                format!(
                    "model `{}` does not serve embeddings (its configuration does not set `embeddings = true`)",
                    body.model
                ),
            )
            .with_field("model"),
        ));
    }
    let texts = plan::embedding_inputs(&body.input)?;
    // Checked before any work, so that a bad format costs nothing.
    plan::encode_embedding(&[], body.encoding_format.as_deref())?;
    let embeddings = state
        .invocations
        .embed(&caller, &id, texts)
        .await
        .map_err(|e| {
            if e.code == ErrorCode::ModelNotAllowed {
                e.with_field("model")
            } else {
                e
            }
        })?;
    let width = embeddings.first().map_or(0, |e| e.vector.len());
    if let Some(d) = body.dimensions.filter(|&d| d as usize != width) {
        return Err(unsupported(
            "dimensions",
            format!("model `{id}` gives {width} dimensions, not {d}"),
        ));
    }
    let tokens: u32 = embeddings.iter().map(|e| e.tokens).sum();
    let data = embeddings
        .iter()
        .zip(0..)
        .map(|(e, index)| {
            Ok(EmbeddingObject {
                object: "embedding",
                index,
                embedding: plan::encode_embedding(&e.vector, body.encoding_format.as_deref())?,
            })
        })
        .collect::<Result<_, OpenAiError>>()?;
    Ok(HttpResponse::Ok().json(EmbeddingList {
        object: "list",
        data,
        model: body.model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

/// What a request's `model` names, made runnable.
struct Target {
    function: Arc<DeployedFunction>,
    /// How a function's version was chosen (`name@3`, `name@prod`).
    via: Via,
    /// The alias mirrors this call to its shadow version.
    shadow: Option<ShadowRun>,
    /// A registered model served as it is, rather than a function of the caller's.
    passthrough: bool,
}

impl Target {
    fn input(&self, text: &str) -> Value {
        if self.passthrough {
            plan::passthrough_input(text)
        } else {
            plan::function_input(&self.function.spec, text)
        }
    }
}

fn model_not_found(model: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ModelNotFound,
        format!("the model `{model}` does not exist: it is neither a registered model nor one of your functions"),
    )
    .with_field("model")
}

/// A registered model id wins over a function of the same name: model ids are the same for
/// every tenant, so a client's meaning of `model` does not depend on what a tenant deployed.
///
/// A function may be named at a version or alias (`name@3`, `name@prod`); within an alias's
/// split, the `Genrt-Split-Key` header, else the request's `user`, keeps one user on one
/// version.
async fn resolve(
    state: &AppState,
    caller: &Caller,
    model: &str,
    output: OutputSpec,
    split_key: Option<&str>,
) -> Result<Target, OpenAiError> {
    let id = ModelId::new(model);
    // Another tenant's private model (or adapter) is no model at all here: the name may be
    // a function's. `base:adapter` runs the base with that adapter at scale 1.
    if state.tree.can_run(&id, &caller.tenant) {
        let spec = plan::passthrough_spec(&id, output, genrt_functions::default_timeout_s());
        // The output constraint is part of the spec, so each distinct one is its own
        // pass-through "version": an actor never serves a spec other than its own.
        let digest = spec.digest();
        let version = u32::from_str_radix(&digest[..8], 16).expect("a hex digest");
        return Ok(Target {
            function: Arc::new(DeployedFunction {
                tenant: caller.tenant.clone(),
                name: FunctionName::model_passthrough(&id),
                version,
                spec,
                digest,
            }),
            via: Via::Latest,
            shadow: None,
            passthrough: true,
        });
    }
    let raw = model;
    if FunctionRef::parse(raw).is_err() {
        return Err(model_not_found(raw).into());
    }
    let resolved = runnable(state, caller, raw, None, split_key)
        .await
        .map_err(|e| {
            if e.code == ErrorCode::FunctionNotFound {
                model_not_found(raw)
            } else {
                e.with_field("model")
            }
        })?;
    let (name, version) = (resolved.name, resolved.version);
    if !output.is_text() && version.spec.output != output {
        return Err(unsupported(
            "response_format",
            format!(
                "function `{name}` defines its own output; `response_format` applies to models"
            ),
        ));
    }
    Ok(Target {
        function: Arc::new(DeployedFunction {
            tenant: caller.tenant.clone(),
            name,
            version: version.version,
            spec: version.spec,
            digest: version.digest,
        }),
        via: resolved.via,
        shadow: resolved.shadow,
        passthrough: false,
    })
}

fn request(
    target: &Target,
    request: &HttpRequest,
    input: Value,
    conversation: Conversation,
    params: GenerationParams,
) -> Request {
    let mut r = Request::new(Arc::clone(&target.function), input, params);
    r.fault = fault(request);
    r.via = target.via.clone();
    r.conversation = Some(Arc::new(Conversation {
        cut_output_ok: true,
        ..conversation
    }));
    r
}

/// Admission for an OpenAI-compatible call: a pass-through model names the model at fault.
async fn admit(
    state: &AppState,
    caller: &Caller,
    mode: Mode,
    target: &Target,
    runs: &[(Value, Conversation)],
    params: &GenerationParams,
) -> Result<Admitted, ApiError> {
    let inputs: Vec<&Value> = runs.iter().map(|(input, _)| input).collect();
    state
        .invocations
        .admit(caller, mode, &target.function.spec, &inputs, params)
        .await
        .map_err(|e| {
            if target.passthrough && e.code == ErrorCode::ModelNotAllowed {
                e.with_field("model")
            } else {
                e
            }
        })
}

/// Runs every choice at once under one concurrency place; any failure fails the request.
async fn run_all(
    state: &web::Data<AppState>,
    caller: &Caller,
    http: &HttpRequest,
    target: &Target,
    runs: Vec<(Value, Conversation)>,
    params: GenerationParams,
) -> Result<Vec<InvokeResponse>, OpenAiError> {
    let admitted = admit(state, caller, Mode::OpenAi, target, &runs, &params).await?;
    let service = &state.invocations;
    let results = join_all(
        runs.into_iter()
            .enumerate()
            .map(|(i, (input, conversation))| {
                let r = request(target, http, input, conversation, params.clone());
                if i == 0 {
                    // One shadow per request, whatever its `n`.
                    service.shadow(caller, target.shadow.as_ref(), &r);
                }
                service.run(&admitted, r)
            }),
    )
    .await;
    results
        .into_iter()
        .map(|r| r.map(InvokeResponse::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(OpenAiError)
}

/// The choices of a non-streamed answer, numbered, and their usage summed.
fn choices<T>(
    responses: Vec<InvokeResponse>,
    choice: impl Fn(u32, InvokeResponse) -> T,
) -> (Vec<T>, CompletionUsage) {
    let mut usage = CompletionUsage::default();
    let choices = responses
        .into_iter()
        .zip(0..)
        .map(|(r, index)| {
            usage.add(
                r.usage.prompt_tokens,
                r.usage.cached_prompt_tokens,
                r.usage.completion_tokens,
            );
            choice(index, r)
        })
        .collect();
    (choices, usage)
}

/// Streams the one run of `runs` as OpenAI chunks: text pieces, a last chunk with the finish
/// reason, the usage when asked for, and `[DONE]`; an error after the start is a data line
/// with OpenAI's error body, as OpenAI's clients expect.
#[allow(clippy::too_many_arguments)]
async fn start_stream(
    state: &web::Data<AppState>,
    caller: &Caller,
    http: &HttpRequest,
    target: Target,
    runs: Vec<(Value, Conversation)>,
    params: GenerationParams,
    chunks: Chunks,
    common: &CommonFields,
) -> Result<HttpResponse, OpenAiError> {
    let admitted = admit(
        state,
        caller,
        Mode::OpenAiStream,
        &target,
        &runs[..1],
        &params,
    )
    .await?;
    let (input, conversation) = runs.into_iter().next().expect("one run to stream");
    let r = request(&target, http, input, conversation, params);
    state.invocations.shadow(caller, target.shadow.as_ref(), &r);
    let items = state.invocations.stream(admitted, r).await?;
    let include_usage = common.include_usage();
    let mut first = true;
    let events = receiver_stream(items).flat_map(move |item| {
        futures_util::stream::iter(match item {
            StreamItem::Piece(text) => {
                vec![chunks.piece(&text, std::mem::take(&mut first))]
            }
            StreamItem::End(Ok(done)) => {
                let response = InvokeResponse::from(done);
                let mut events = vec![chunks.last(plan::finish_reason(&response.finish_reason))];
                if include_usage {
                    let (_, usage) = choices(vec![response], |_, _| ());
                    events.push(chunks.usage(usage));
                }
                events.push(Event::Data(Data::new("[DONE]")));
                events
            }
            StreamItem::End(Err(err)) => vec![
                data(&OpenAiError(err).body()),
                Event::Data(Data::new("[DONE]")),
            ],
        })
    });
    Ok(sse(events, http))
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

/// One response's id, model and time, and the chunks of its stream.
#[derive(Clone)]
struct Chunks {
    kind: Kind,
    id: String,
    model: String,
    created: i64,
}

impl Chunks {
    fn new(kind: Kind, model: String) -> Self {
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        };
        Self {
            kind,
            id: format!("{prefix}-{}", uuid::Uuid::now_v7().simple()),
            model,
            created: Utc::now().timestamp(),
        }
    }

    /// A piece of text; the first chat chunk also names the role, as OpenAI's do.
    fn piece(&self, text: &str, first: bool) -> Event {
        self.chunk(Some(text.to_owned()), first, None, None)
    }

    fn last(&self, finish_reason: String) -> Event {
        self.chunk(None, false, Some(finish_reason), None)
    }

    /// The extra last chunk `include_usage` asks for: no choices, the usage.
    fn usage(&self, usage: CompletionUsage) -> Event {
        self.chunk(None, false, None, Some(usage))
    }

    fn chunk(
        &self,
        text: Option<String>,
        first: bool,
        finish_reason: Option<String>,
        usage: Option<CompletionUsage>,
    ) -> Event {
        let with_choice = usage.is_none();
        match self.kind {
            Kind::Chat => data(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: with_choice
                    .then(|| ChunkChoice {
                        index: 0,
                        delta: Delta {
                            role: first.then_some("assistant"),
                            content: text,
                        },
                        finish_reason,
                        logprobs: None,
                    })
                    .into_iter()
                    .collect(),
                usage,
                system_fingerprint: None,
            }),
            Kind::Text => data(&TextCompletion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: with_choice
                    .then(|| TextChoice {
                        index: 0,
                        text: text.unwrap_or_default(),
                        finish_reason,
                        logprobs: None,
                    })
                    .into_iter()
                    .collect(),
                usage,
                system_fingerprint: None,
            }),
        }
    }
}

/// OpenAI's streams are bare `data:` lines, without event names.
fn data(value: &impl serde::Serialize) -> Event {
    Event::Data(Data::new_json(value).expect("a chunk serializes"))
}

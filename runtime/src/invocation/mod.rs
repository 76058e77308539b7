//! The invocation service: the one path from "run this function on this input" to tokens and
//! a record, whatever started it (REST sync or stream, async, batches, triggers, evaluate,
//! prewarm, the OpenAI-compatible routes, the queue runner). It knows no HTTP: entry points
//! extract a request, call [`InvocationService`], and render what it answers.
//!
//! Every generation goes through [`InvocationService::admit`], one decision per [`Mode`] (see
//! `mode.rs` for the table), then renders its templates on the render pool under the
//! template limits, then reaches the actor tree from [`InvocationService::run`] or
//! [`InvocationService::stream`] (or, queued, from the queue runner through
//! [`InvocationService::run_queued`]). Every outcome is recorded by `Call`, which also counts
//! the tokens against the tenant's budget.

mod call;
mod mode;
pub mod record;
pub mod render;
mod via;

pub use mode::{Checks, Mode, Place};
pub use record::Status;
pub use render::{RenderError, Renderer};
pub use via::Via;

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use genrt_actors::{
    stream_channel, ActorTree, DeployedFunction, Fault, Invocation, InvocationId, InvocationOutcome,
};
use genrt_functions::{
    AliasName, Conversation, FunctionName, FunctionRef, FunctionSpec, GenerationParams, TenantId,
    VersionSelector, WebhookTarget,
};
use serde_json::Value;
use tracing::Instrument;

use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::queue::JobQueue;
use crate::read_ahead::{Lookup, ReadAhead, Ticket};
use crate::registry::ModelRegistry;
use crate::store::{InvocationRow, Recorder, Store, StoredAlias, StoredVersion};
use crate::telemetry::Metrics;
use crate::tenancy::{Caller, ConcurrencyPermit, Tenancy};
use crate::webhooks::ssrf::UrlGuard;

use call::Call;

/// Cheap to clone: a handle on the parts an invocation needs.
#[derive(Clone)]
pub struct InvocationService {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    /// Read for its first sync only (see [`Shared::invoke_error`]).
    registry: ModelRegistry,
    config: Arc<Config>,
    store: Store,
    tree: Arc<ActorTree>,
    records: Recorder,
    tenancy: Arc<Tenancy>,
    queue: Arc<JobQueue>,
    metrics: Arc<Metrics>,
    url_guard: Arc<UrlGuard>,
    renderer: Renderer,
    /// The latest version and the aliases of recently invoked functions, so that the hot
    /// path reads no database (reread in the background while in use). Deploys, deletes and
    /// alias changes on this node invalidate it; another node's are seen within `HEAD_TTL`.
    heads: ReadAhead<(TenantId, FunctionName), Arc<Head>>,
    /// Versions by number (pinned, or an alias's), cached the same way.
    versions: ReadAhead<(TenantId, FunctionName, u32), Arc<StoredVersion>>,
}

/// How long a node may run a function's previous latest version or alias target after
/// another node changed it (documented in the README, "Releases").
pub const HEAD_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// A function as invocations find it.
struct Head {
    latest: StoredVersion,
    aliases: Vec<StoredAlias>,
}

/// What a reference resolved to at admission.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: FunctionName,
    pub version: StoredVersion,
    pub via: Via,
    /// The alias mirrors this invocation to its shadow version: start it with
    /// [`InvocationService::shadow`] once the invocation has its id.
    pub shadow: Option<ShadowRun>,
}

/// A shadow copy to run: the function's version that the alias mirrors traffic to.
#[derive(Debug, Clone)]
pub struct ShadowRun {
    pub name: FunctionName,
    pub alias: AliasName,
    pub version: u32,
}

/// What the service needs, handed over once at assembly.
pub struct Parts {
    pub registry: ModelRegistry,
    pub config: Arc<Config>,
    pub store: Store,
    pub tree: Arc<ActorTree>,
    pub records: Recorder,
    pub tenancy: Arc<Tenancy>,
    pub queue: Arc<JobQueue>,
    pub metrics: Arc<Metrics>,
    pub url_guard: Arc<UrlGuard>,
}

/// A request admitted for one mode, holding the concurrency place admission took for it (if
/// any): dropping it, however the work ends, frees the place.
pub struct Admitted {
    mode: Mode,
    /// Held, never read: its drop frees the place.
    _place: Option<ConcurrencyPermit>,
}

/// One invocation to run now.
pub struct Request {
    pub id: InvocationId,
    pub function: Arc<DeployedFunction>,
    pub input: Value,
    pub params: GenerationParams,
    pub conversation: Option<Arc<Conversation>>,
    pub fault: Option<Fault>,
    /// An `Idempotency-Key` already claimed for `id`, released if the request is refused.
    pub key: Option<String>,
    pub received_at: Instant,
    /// How its version was chosen, kept with the record.
    pub via: Via,
}

impl Request {
    pub fn new(function: Arc<DeployedFunction>, input: Value, params: GenerationParams) -> Self {
        Self {
            id: InvocationId::new(),
            function,
            input,
            params,
            conversation: None,
            fault: None,
            key: None,
            received_at: Instant::now(),
            via: Via::Latest,
        }
    }
}

/// A finished invocation, recorded.
#[derive(Debug)]
pub struct Completed {
    pub id: InvocationId,
    pub function: genrt_functions::FunctionName,
    pub version: u32,
    /// How the version was chosen.
    pub via: Via,
    pub outcome: InvocationOutcome,
}

/// What a streamed invocation sends: its text pieces, then how it ended.
#[derive(Debug)]
pub enum StreamItem {
    Piece(String),
    End(Result<Completed, ApiError>),
}

/// A queued invocation to commit: the rows are built here, committed by the caller (with a
/// batch, a trigger message or an idempotency key, as the entry point requires).
pub struct Queued<'a> {
    pub function: &'a DeployedFunction,
    pub inputs: &'a [Value],
    /// The parameters as given, stored with each row and applied when it runs.
    pub params: &'a Value,
    pub webhook: Option<&'a WebhookTarget>,
    pub batch: Option<uuid::Uuid>,
    /// How the version was chosen at admission; the rows keep it with the version.
    pub via: &'a Via,
}

impl InvocationService {
    pub fn new(parts: Parts) -> Self {
        let renderer = Renderer::new(&parts.config.templates);
        Self {
            shared: Arc::new(Shared {
                registry: parts.registry,
                config: parts.config,
                store: parts.store,
                tree: parts.tree,
                records: parts.records,
                tenancy: parts.tenancy,
                queue: parts.queue,
                metrics: parts.metrics,
                url_guard: parts.url_guard,
                renderer,
                heads: ReadAhead::new(10_000, HEAD_TTL),
                versions: ReadAhead::new(10_000, HEAD_TTL),
            }),
        }
    }

    /// What a function is now (its latest version and its aliases), through a short-lived
    /// cache so that the hot path reads no database.
    fn head<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a FunctionName,
    ) -> BoxFuture<'a, Result<Option<Arc<Head>>, sea_orm::DbErr>> {
        Box::pin(async move {
            let key = (tenant.clone(), name.clone());
            let ticket = match self.shared.heads.get(&key) {
                Lookup::Hit(head) => return Ok(Some(head)),
                Lookup::Reread(head, ticket) => {
                    let shared = Arc::clone(&self.shared);
                    self.shared
                        .heads
                        .in_background("rereading a function head", async move {
                            shared.read_head(ticket, key).await
                        });
                    return Ok(Some(head));
                }
                Lookup::Miss(ticket) => ticket,
            };
            self.shared.read_head(ticket, key).await
        })
    }

    /// The version a reference runs and how it was chosen: `name@3` that version; `name@prod`
    /// the alias's version (within a split, sticky per `split_key`); a bare name the `default`
    /// alias when the function has one, else the latest version. Resolved once, at admission:
    /// queued work keeps the version in its row.
    pub fn resolve<'a>(
        &'a self,
        tenant: &'a TenantId,
        reference: &'a FunctionRef,
        split_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Resolved, ApiError>> {
        Box::pin(async move {
            let name = &reference.name;
            let not_found = || {
                ApiError::new(
                    ErrorCode::FunctionNotFound,
                    format!("function `{name}` not found"),
                )
            };
            let head = self.head(tenant, name).await?.ok_or_else(not_found)?;
            let aliased = |alias: &AliasName| head.aliases.iter().find(|a| &a.name == alias);
            let default = AliasName::default_alias();
            let (wanted, via, shadow) = match &reference.selector {
                VersionSelector::Version(n) => (*n, Via::Pinned, None),
                VersionSelector::Default if aliased(&default).is_none() => {
                    (head.latest.version, Via::Latest, None)
                }
                VersionSelector::Default | VersionSelector::Alias(_) => {
                    let alias = match &reference.selector {
                        VersionSelector::Alias(a) => a,
                        _ => &default,
                    };
                    let stored = aliased(alias).ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::AliasNotFound,
                            format!("function `{name}` has no alias `{alias}`"),
                        )
                    })?;
                    let choice = stored.target.choose(split_key, rand::random());
                    let shadow = stored
                        .target
                        .shadowed(split_key, rand::random())
                        .map(|version| ShadowRun {
                            name: name.clone(),
                            alias: alias.clone(),
                            version,
                        });
                    let via = Via::Alias {
                        alias: alias.clone(),
                        split: choice.split,
                    };
                    (choice.version, via, shadow)
                }
            };
            let version = if wanted == head.latest.version {
                head.latest.clone()
            } else {
                self.version(tenant, name, wanted).await?
            };
            Ok(Resolved {
                name: name.clone(),
                version,
                via,
                shadow,
            })
        })
    }

    /// One version of a function, by number, through the same short-lived cache (an
    /// alias's older version, or a pinned one, is as hot as the latest).
    pub fn version<'a>(
        &'a self,
        tenant: &'a TenantId,
        name: &'a FunctionName,
        version: u32,
    ) -> BoxFuture<'a, Result<StoredVersion, ApiError>> {
        Box::pin(async move {
            let key = (tenant.clone(), name.clone(), version);
            let ticket = match self.shared.versions.get(&key) {
                Lookup::Hit(v) => return Ok((*v).clone()),
                Lookup::Reread(v, ticket) => {
                    let shared = Arc::clone(&self.shared);
                    self.shared
                        .versions
                        .in_background("rereading a function version", async move {
                            shared.read_version(ticket, key).await
                        });
                    return Ok((*v).clone());
                }
                Lookup::Miss(ticket) => ticket,
            };
            let found = self.shared.read_version(ticket, key).await?;
            found.map(|v| (*v).clone()).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::VersionNotFound,
                    format!("function `{name}` has no version {version}"),
                )
                .with_field("version")
            })
        })
    }

    /// After a deploy, a delete or an alias change on this node: the next invocation reads
    /// the function again. Other nodes see it within `HEAD_TTL`. Its versions go too: a
    /// function deleted and deployed again numbers its versions from 1 again.
    pub fn forget_function(&self, tenant: &TenantId, name: &FunctionName) {
        self.shared
            .heads
            .invalidate(&(tenant.clone(), name.clone()));
        self.shared
            .versions
            .invalidate_if(|(t, n, _)| t == tenant && n == name);
    }

    /// The admission decision for `mode`: the checks its row of the table names, in order
    /// (allowed models, budget, input limits per input, the concurrency place). Refusals are
    /// `ApiError`s with their documented codes; nothing is recorded for them.
    pub fn admit<'a>(
        &'a self,
        caller: &'a Caller,
        mode: Mode,
        spec: &'a FunctionSpec,
        inputs: &'a [&'a Value],
        params: &'a GenerationParams,
    ) -> BoxFuture<'a, Result<Admitted, ApiError>> {
        Box::pin(async move {
            let checks = mode.checks();
            let shared = &self.shared;
            if checks.allowed_models {
                caller.require_models(spec.models().into_iter().map(|m| m.as_str()))?;
            }
            if checks.budget {
                shared
                    .tenancy
                    .check_budget(&caller.tenant, &caller.limits)
                    .await?;
            }
            if checks.input_limits {
                self.check_params(spec, params)?;
                for (i, input) in inputs.iter().enumerate() {
                    self.check_input_size(input)
                        .map_err(|e| at_input(mode, i, e))?;
                }
            }
            let limits = &shared.tenancy.limits;
            let permit = match checks.place {
                Place::Queued => None,
                Place::Invocation | Place::PerCase => {
                    Some(limits.acquire(&caller.tenant, &caller.limits)?)
                }
                Place::Stream => Some(
                    limits
                        .acquire(&caller.tenant, &caller.limits)?
                        .and(limits.acquire_stream(&caller.tenant, &caller.limits)?),
                ),
                Place::Prewarm => Some(limits.acquire_prewarm(&caller.tenant, &caller.limits)?),
            };
            Ok(Admitted {
                mode,
                _place: permit,
            })
        })
    }

    /// One more invocation place for an admitted evaluation, when the tenant has one free.
    pub fn another_place(&self, caller: &Caller, admitted: &Admitted) -> Option<Admitted> {
        let permit = self
            .shared
            .tenancy
            .limits
            .acquire(&caller.tenant, &caller.limits)
            .ok()?;
        Some(Admitted {
            mode: admitted.mode,
            _place: Some(permit),
        })
    }

    /// `server.max_input_bytes`, per input. The prompt against the model's context is
    /// checked later, by the function actor, once it is rendered and tokenized
    /// (`prompt_too_long`, `max_tokens_exceeds_context`).
    fn check_input_size(&self, input: &Value) -> Result<(), ApiError> {
        let max = self.shared.config.server.max_input_bytes;
        if max > 0 {
            let size = serde_json::to_vec(input).map_or(0, |v| v.len());
            if size > max {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the input is {size} bytes; at most {max} are accepted"),
                )
                .with_field("input"));
            }
        }
        Ok(())
    }

    /// The parameters, once per request: in range, and the `max_tokens` they would run with
    /// within `server.max_tokens`.
    fn check_params(&self, spec: &FunctionSpec, params: &GenerationParams) -> Result<(), ApiError> {
        params
            .validate_override()
            .map_err(|e| ApiError::from(genrt_actors::InvokeError::Input(e)))?;
        let cap = self.shared.config.server.max_tokens;
        let max_tokens = spec.params.resolve(params).max_tokens;
        if cap > 0 && max_tokens > cap {
            return Err(ApiError::new(
                ErrorCode::InvalidParams,
                format!("max_tokens {max_tokens} exceeds this server's cap of {cap}"),
            )
            .with_field("params.max_tokens"));
        }
        Ok(())
    }

    /// Runs one admitted invocation to its end and records it.
    pub fn run<'a>(
        &'a self,
        admitted: &'a Admitted,
        request: Request,
    ) -> BoxFuture<'a, Result<Completed, ApiError>> {
        Box::pin(async move {
            let shared = &*self.shared;
            let (call, invocation) = match self.prepare(admitted.mode, request).await {
                Ok(ready) => ready,
                Err((call, err)) => return call.complete(shared, Err(err)).await,
            };
            let span = call.span.clone();
            let result = shared.tree.invoke(invocation).instrument(span).await;
            call.complete(shared, result.map_err(|e| shared.invoke_error(e)))
                .await
        })
    }

    /// Renders the prompt and builds what the tree runs; a refusal comes back with its call,
    /// which completes it (releasing its idempotency key).
    async fn prepare(
        &self,
        mode: Mode,
        request: Request,
    ) -> Result<(Call, Invocation), (Call, ApiError)> {
        let shared = &*self.shared;
        let function = request.function;
        let call = Call::new(
            shared,
            mode,
            &function,
            request.id,
            &request.input,
            request.key,
            &request.via,
        );
        call.request_params(&function.spec.params.resolve(&request.params));
        let prompt = match shared
            .renderer
            .render(
                &function,
                request.input.clone(),
                request.conversation.clone(),
            )
            .instrument(call.span.clone())
            .await
        {
            Ok(prompt) => prompt,
            Err(err) => return Err((call, render_error(err))),
        };
        let invocation = Invocation {
            id: call.id,
            function,
            input: request.input,
            params: request.params,
            received_at: request.received_at,
            priority: mode.checks().priority,
            stream: None,
            fault: request.fault,
            conversation: request.conversation,
            prompt: Some(Box::new(prompt)),
        };
        Ok((call, invocation))
    }

    /// Starts one admitted invocation whose text is wanted as it is generated. Refusals found
    /// before generation starts (a template over its limits, say) are answered here, so that
    /// an entry point can still answer them with an error status; what follows comes as
    /// [`StreamItem`]s. When the receiver is dropped (the client left), the generation is
    /// cancelled and recorded so.
    pub fn stream(
        &self,
        admitted: Admitted,
        request: Request,
    ) -> BoxFuture<'_, Result<tokio::sync::mpsc::Receiver<StreamItem>, ApiError>> {
        Box::pin(async move {
            let max_tokens = request
                .function
                .spec
                .params
                .resolve(&request.params)
                .max_tokens;
            let (call, mut invocation) = match self.prepare(admitted.mode, request).await {
                Ok(ready) => ready,
                Err((call, err)) => {
                    return Err(call
                        .complete(&self.shared, Err(err))
                        .await
                        .expect_err("a refusal stays one"))
                }
            };
            let (tokens_tx, tokens) = stream_channel(max_tokens);
            invocation.stream = Some(tokens_tx);
            // Pieces plus the end; the forwarder below never has more in flight.
            let (items, items_rx) = tokio::sync::mpsc::channel(max_tokens as usize + 2);
            let shared = Arc::clone(&self.shared);
            tokio::spawn(forward(shared, admitted, call, invocation, tokens, items));
            Ok(items_rx)
        })
    }
}

/// Runs a streamed invocation, forwarding its pieces, then its recorded end.
async fn forward(
    shared: Arc<Shared>,
    admitted: Admitted,
    call: Call,
    invocation: Invocation,
    mut tokens: tokio::sync::mpsc::Receiver<String>,
    items: tokio::sync::mpsc::Sender<StreamItem>,
) {
    // The tenant's places are held until the stream ends, however it ends.
    let _admitted = admitted;
    let span = call.span.clone();
    let mut result = std::pin::pin!(shared.tree.invoke(invocation).instrument(span));
    let outcome = loop {
        tokio::select! {
            text = tokens.recv() => match text {
                Some(text) => {
                    if items.send(StreamItem::Piece(text)).await.is_err() {
                        // The client left: dropping the token receiver (on return) is what
                        // tells the engine to stop this sequence and free its slot.
                        call.cancelled(&shared).await;
                        return;
                    }
                }
                None => break result.await,
            },
            // The client left before the first piece (still queued, loading, prefilling, or
            // an engine that stopped answering): without this, its places would be held until
            // the next piece, which may never come.
            () = items.closed() => {
                call.cancelled(&shared).await;
                return;
            }
            outcome = &mut result => {
                while let Ok(text) = tokens.try_recv() {
                    let _ = items.send(StreamItem::Piece(text)).await;
                }
                break outcome;
            }
        }
    };
    let end = call
        .complete(&shared, outcome.map_err(|e| shared.invoke_error(e)))
        .await;
    let _ = items.send(StreamItem::End(end)).await;
}

impl Shared {
    /// Reads a function's head and caches it (unless this node changed it meanwhile); a
    /// function gone from the database leaves the cache.
    async fn read_head(
        &self,
        ticket: Ticket,
        key: (TenantId, FunctionName),
    ) -> Result<Option<Arc<Head>>, sea_orm::DbErr> {
        let (tenant, name) = &key;
        let Some(latest) = self.store.latest_version(tenant, name).await? else {
            self.heads.remove(&key);
            return Ok(None);
        };
        let aliases = self.store.aliases(tenant, name).await?.unwrap_or_default();
        let head = Arc::new(Head { latest, aliases });
        self.heads.insert(ticket, key, Arc::clone(&head));
        Ok(Some(head))
    }

    /// Reads one version and caches it likewise.
    async fn read_version(
        &self,
        ticket: Ticket,
        key: (TenantId, FunctionName, u32),
    ) -> Result<Option<Arc<StoredVersion>>, sea_orm::DbErr> {
        let (tenant, name, version) = &key;
        let Some(found) = self.store.version(tenant, name, *version).await? else {
            self.versions.remove(&key);
            return Ok(None);
        };
        let found = Arc::new(found);
        self.versions.insert(ticket, key, Arc::clone(&found));
        Ok(Some(found))
    }

    /// The answer to a failed run. Before this node's first registry sync, a model or adapter
    /// registered earlier is not served here yet: that is "not yet" (503, retry), not
    /// "unknown" (422, give up).
    fn invoke_error(&self, err: genrt_actors::InvokeError) -> ApiError {
        use genrt_actors::InvokeError::{UnknownAdapter, UnknownModel};
        if matches!(err, UnknownModel(_) | UnknownAdapter { .. }) && !self.registry.is_synced() {
            let mut e = ApiError::new(
                ErrorCode::ModelUnavailable,
                format!("{err}: this node is starting and has not yet served the models registered earlier; retry shortly"),
            );
            e.retryable = true;
            return e;
        }
        ApiError::from(err)
    }
}

/// Names the input at fault in a request that carries a list of them.
fn at_input(mode: Mode, index: usize, mut err: ApiError) -> ApiError {
    if let Some(list) = mode.inputs_field() {
        err.field = Some(match err.field.as_deref() {
            Some(field) => format!("{list}[{index}].{field}"),
            None => format!("{list}[{index}]"),
        });
    }
    err
}

fn render_error(err: RenderError) -> ApiError {
    match err {
        RenderError::Input(e) => ApiError::from(genrt_actors::InvokeError::Input(e)),
        RenderError::Spec(e) => ApiError::internal(format!("stored spec does not compile: {e}")),
        RenderError::Overloaded => {
            let mut e = ApiError::new(
                ErrorCode::Overloaded,
                "too many templates are waiting to render; retry shortly",
            );
            e.retryable = true;
            e
        }
    }
}

impl InvocationService {
    /// At deploy: compiles the spec's templates on the render pool under the template limits
    /// and renders them once with an empty input, so that a template over the limits whatever
    /// its input is refused now (422 `template_limit`), and one that does not compile is
    /// refused as an invalid spec.
    pub fn check_templates<'a>(
        &'a self,
        tenant: &'a genrt_functions::TenantId,
        name: &'a genrt_functions::FunctionName,
        spec: &'a FunctionSpec,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            self.shared
                .renderer
                .check(tenant, name.as_str(), spec)
                .await
                .map_err(|e| match e {
                    RenderError::Spec(e) => ApiError::from(e),
                    other => render_error(other),
                })
        })
    }

    /// For queued modes, at accept: renders each input on the render pool (so that one that
    /// cannot run is refused now, naming it), checks the callback URL, and builds the rows.
    pub fn queue_rows<'a>(
        &'a self,
        admitted: &'a Admitted,
        queued: Queued<'a>,
    ) -> BoxFuture<'a, Result<Vec<InvocationRow>, ApiError>> {
        Box::pin(async move {
            let shared = &*self.shared;
            let f = queued.function;
            let function = Arc::new(f.clone());
            if admitted.mode.checks().render_at_accept {
                for (i, input) in queued.inputs.iter().enumerate() {
                    shared
                        .renderer
                        .render(&function, input.clone(), None)
                        .await
                        .map_err(|e| at_input(admitted.mode, i, render_error(e)))?;
                }
            }
            if let Some(w) = queued.webhook {
                self.check_callback_url(&w.url).await?;
            }
            let traceparent = crate::telemetry::current_traceparent();
            Ok(queued
                .inputs
                .iter()
                .enumerate()
                .map(|(i, input)| {
                    let mut row = record::new_row(
                        record::RowOf {
                            id: InvocationId::new().0,
                            tenant: &f.tenant,
                            function: &f.name,
                            version: f.version,
                            input,
                            mode: admitted.mode,
                            via: queued.via,
                        },
                        Status::Queued,
                    );
                    row.params = Some(queued.params.to_string());
                    row.max_attempts = shared.config.queue.max_attempts as i32;
                    row.batch_id = queued.batch;
                    row.batch_index = queued.batch.map(|_| i as i32);
                    record::set_callback(&mut row, queued.webhook);
                    // The enqueuing request's span: the run links back to it.
                    row.traceparent.clone_from(&traceparent);
                    row
                })
                .collect())
        })
    }

    /// Refuses callback URLs the SSRF guard forbids. Host names are resolved again, and
    /// checked, at every delivery.
    pub fn check_callback_url<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let refused = |err: crate::webhooks::ssrf::SsrfError| {
                ApiError::new(
                    ErrorCode::CallbackUrlForbidden,
                    format!("the callback URL is refused: {err}"),
                )
                .with_field("webhook.url")
            };
            let guard = &self.shared.url_guard;
            let parsed = guard.check_url(url).map_err(refused)?;
            if let Some(url::Host::Domain(host)) = parsed.host() {
                let port = parsed.port_or_known_default().unwrap_or(443);
                guard.resolve(host, port).await.map_err(refused)?;
            }
            Ok(())
        })
    }

    /// Embeddings of `texts` from `model`. Not a generation, so not in the mode table, but
    /// admitted the same way: the tenant may use the model, has budget left, and holds one
    /// invocation place while it runs; the tokens read count against the budget.
    pub fn embed<'a>(
        &'a self,
        caller: &'a Caller,
        model: &'a genrt_functions::ModelId,
        texts: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<genrt_actors::Embedding>, ApiError>> {
        Box::pin(async move {
            let shared = &*self.shared;
            caller.require_models([model.as_str()])?;
            shared
                .tenancy
                .check_budget(&caller.tenant, &caller.limits)
                .await?;
            let _place = shared
                .tenancy
                .limits
                .acquire(&caller.tenant, &caller.limits)?;
            let embeddings = shared.tree.embed(&caller.tenant, model, texts).await?;
            let tokens: u32 = embeddings.iter().map(|e| e.tokens).sum();
            shared
                .tenancy
                .record_usage(&caller.tenant, u64::from(tokens));
            Ok(embeddings)
        })
    }

    /// Mirrors invocation `of` to the shadow version its alias chose, when it chose one: the
    /// same input and parameters, in the background, recorded with mode `shadow` and
    /// `shadow_of`, counted in the tenant's usage, its answer given to no one. It takes one
    /// of the tenant's background places (shared with prewarming) or does not run: shadows
    /// are best-effort, never queued. In the engine it decodes only in steps no other
    /// sequence needs (`Priority::Idle`), so the caller's latency does not pay for it.
    pub fn shadow(&self, caller: &Caller, shadow: Option<&ShadowRun>, of: &Request) {
        let Some(ShadowRun {
            name,
            alias,
            version,
        }) = shadow.cloned()
        else {
            return;
        };
        let (service, caller) = (self.clone(), caller.clone());
        let (input, params) = (of.input.clone(), of.params.clone());
        let (conversation, of) = (of.conversation.clone(), of.id);
        let span =
            tracing::info_span!("shadow", genrt.function = %name, genrt.function.version = version);
        tokio::spawn(
            async move {
                let run = async {
                    let stored = service.version(&caller.tenant, &name, version).await?;
                    let inputs = [&input];
                    let admitted = service
                        .admit(&caller, Mode::Shadow, &stored.spec, &inputs, &params)
                        .await?;
                    let function = Arc::new(DeployedFunction {
                        tenant: caller.tenant.clone(),
                        name: name.clone(),
                        version,
                        spec: stored.spec,
                        digest: stored.digest,
                    });
                    let mut request = Request::new(function, input, params);
                    request.via = Via::Shadow { of: of.0, alias };
                    request.conversation = conversation;
                    service.run(&admitted, request).await
                };
                match run.await {
                    Ok(_) => service.shared.metrics.shadow("ran"),
                    // No background place free, or no room on the model: a shadow waits for
                    // nobody.
                    Err(err)
                        if matches!(
                            err.code,
                            ErrorCode::ConcurrencyLimited | ErrorCode::Overloaded
                        ) =>
                    {
                        service.shared.metrics.shadow("skipped");
                    }
                    Err(err) => {
                        service.shared.metrics.shadow("failed");
                        tracing::debug!(error = %err.message, "shadow failed");
                    }
                }
            }
            .instrument(span),
        );
    }

    /// New queued work was committed on this node.
    pub fn wake_queue(&self) {
        self.shared.queue.wake();
    }

    /// Runs inputs ahead of demand, one at a time in the background behind interactive work,
    /// each recorded (mode `prewarm`) and counted like any other invocation. The admitted
    /// request's prewarm place is held until the last input ends.
    pub fn prewarm(
        &self,
        admitted: Admitted,
        function: Arc<DeployedFunction>,
        via: Via,
        inputs: Vec<Value>,
        params: GenerationParams,
    ) {
        let service = self.clone();
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let accepted = inputs.len();
                let mut failed = 0;
                for input in inputs {
                    let mut request = Request::new(Arc::clone(&function), input, params.clone());
                    request.via = via.clone();
                    if let Err(err) = service.run(&admitted, request).await {
                        failed += 1;
                        tracing::debug!(function = %function.name, error = %err.message, "prewarm input failed");
                    }
                }
                tracing::info!(tenant = %function.tenant, function = %function.name, accepted, failed, "prewarm done");
            }
            .instrument(span),
        );
    }

    /// Runs one leased queued invocation (async, batch item, trigger) in the current span.
    /// The tenant's state is checked again: it may have been disabled, or its budget used up,
    /// since the work was accepted.
    pub fn run_queued<'a>(
        &'a self,
        row: &'a InvocationRow,
        params: GenerationParams,
    ) -> BoxFuture<'a, Result<InvocationOutcome, ApiError>> {
        Box::pin(async move {
            let shared = &*self.shared;
            let mode = Mode::parse(&row.mode).unwrap_or(Mode::Async);
            let tenant = genrt_functions::TenantId::parse(&row.tenant_id)
                .map_err(|e| ApiError::internal(format!("stored tenant id: {e}")))?;
            let name = genrt_functions::FunctionName::parse(&row.function_name)
                .map_err(|e| ApiError::internal(format!("stored function name: {e}")))?;
            let version = shared
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
            let limits = shared.tenancy.limits_of(&tenant).await?;
            if limits.disabled {
                return Err(ApiError::new(
                    ErrorCode::TenantDisabled,
                    "the tenant was disabled before this invocation ran",
                ));
            }
            shared.tenancy.check_budget(&tenant, &limits).await?;
            let input: Value = serde_json::from_str(&row.input)
                .map_err(|e| ApiError::internal(format!("stored input: {e}")))?;
            let function = Arc::new(DeployedFunction {
                tenant,
                name,
                version: version.version,
                spec: version.spec,
                digest: version.digest,
            });
            let mut request = Request::new(function, input, params);
            request.id = InvocationId(row.id);
            request.via = Via::of_row(row);
            // The queue writes the row itself (with its lease); the call only counts, traces
            // and renders here.
            let (call, invocation) = match self.prepare(mode, request).await {
                Ok(ready) => ready,
                Err((call, err)) => {
                    call.finish_queued(shared, Err(&err));
                    return Err(err);
                }
            };
            let span = call.span.clone();
            let result = shared
                .tree
                .invoke(invocation)
                .instrument(span)
                .await
                .map_err(|e| shared.invoke_error(e));
            call.finish_queued(shared, result.as_ref());
            result
        })
    }
}

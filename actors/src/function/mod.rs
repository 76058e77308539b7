//! `FunctionActor`: one per (tenant, function version, spec digest), started on first
//! invocation and stopped after its idle timeout. It holds the compiled templates and schema,
//! answers from the response cache when it can, and otherwise queues the work on the chosen
//! model's pool.

mod messages;
mod state;

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

pub(crate) use messages::FunctionMsg;
use state::{FunctionState, Idleness, Plan};

use crate::cache::CachedCompletion;
use crate::dispatcher::{DispatcherMsg, FunctionKey};
use crate::engine::{Completion, EngineJob, EngineRequest};
use crate::model_pool::PoolMsg;
use crate::{
    DeployedFunction, Invocation, InvocationOutcome, InvokeError, ResponseCache, Timings, Usage,
};
use genrt_functions::{PreparedFunction, TenantId};

pub(crate) struct FunctionActor;

pub(crate) struct FunctionArgs {
    pub key: FunctionKey,
    pub function: DeployedFunction,
    pub cache: Arc<dyn ResponseCache>,
    pub dispatcher: ActorRef<DispatcherMsg>,
}

pub(crate) struct Function {
    key: FunctionKey,
    state: FunctionState,
    cache: Arc<dyn ResponseCache>,
    dispatcher: ActorRef<DispatcherMsg>,
}

impl Actor for FunctionActor {
    type Msg = FunctionMsg;
    type State = Function;
    type Arguments = FunctionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<FunctionMsg>,
        args: FunctionArgs,
    ) -> Result<Function, ActorProcessingErr> {
        let state = FunctionState::new(args.function, Instant::now())?;
        myself.send_after(state.idle_timeout(), || FunctionMsg::IdleCheck);
        Ok(Function {
            key: args.key,
            state,
            cache: args.cache,
            dispatcher: args.dispatcher,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<FunctionMsg>,
        msg: FunctionMsg,
        f: &mut Function,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            FunctionMsg::Invoke {
                invocation,
                model,
                adapters,
                n_ctx,
                pool,
                reply,
            } => {
                f.state.touched(now);
                match f.state.plan(&invocation, &model, &adapters, n_ctx) {
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                    Ok(plan) => f.run(&myself, invocation, model, plan, pool, reply),
                }
            }
            FunctionMsg::Finished => f.state.finished(now),
            FunctionMsg::IdleCheck => match f.state.idleness(now) {
                Idleness::Expired => {
                    // The dispatcher owns the routing table, so it decides: it removes us and
                    // drains our mailbox, so nothing it already sent us is lost.
                    let _ = f
                        .dispatcher
                        .cast(DispatcherMsg::FunctionIdle(f.key.clone(), myself.get_id()));
                }
                Idleness::CheckAgainIn(after) => {
                    myself.send_after(after, || FunctionMsg::IdleCheck);
                }
            },
        }
        Ok(())
    }
}

impl Function {
    fn run(
        &mut self,
        myself: &ActorRef<FunctionMsg>,
        invocation: Invocation,
        model: genrt_functions::ModelId,
        plan: Plan,
        pool: ActorRef<PoolMsg>,
        reply: RpcReplyPort<Result<InvocationOutcome, InvokeError>>,
    ) {
        // The outcome names what ran: `base`, or `base:adapter` (with scales when not 1).
        let model = match plan.adapters.is_empty() {
            true => model,
            false => genrt_functions::ModelId::new(format!("{model}:{}", plan.adapters.label())),
        };
        let received_at = invocation.received_at;
        let cut_output_ok = invocation
            .conversation
            .as_ref()
            .is_some_and(|c| c.cut_output_ok);
        let prepared = self.state.prepared();
        if let Some(hit) = plan.cache_key.as_ref().and_then(|k| self.cache.get(k)) {
            if let Some(stream) = &invocation.stream {
                let _ = stream.try_send(hit.text.clone());
            }
            let json = prepared.parse_output(&hit.text).ok().flatten();
            let total_ms = ms_since(received_at, Instant::now());
            let _ = reply.send(Ok(InvocationOutcome {
                model,
                text: hit.text,
                json,
                usage: hit.usage,
                finish_reason: hit.finish_reason,
                cache_hit: true,
                timings: Timings {
                    total_ms,
                    ..Timings::default()
                },
            }));
            return;
        }

        let request = EngineRequest {
            prompt: plan.prompt,
            params: plan.params,
            output: prepared.spec().output.clone(),
            adapters: plan.adapters,
            deadline: invocation.deadline(),
            fault: invocation.fault,
        };
        let submit = Submission {
            request,
            tenant: invocation.tenant().clone(),
            enqueued_at: received_at,
            priority: invocation.priority,
            stream: invocation.stream,
            pool,
        };
        self.state.started(Instant::now());
        let cache = Arc::clone(&self.cache);
        let me = myself.clone();
        let (cache_key, cache_ttl) = (plan.cache_key, plan.cache_ttl);
        // Waiting happens off the actor, so one slow generation never delays the next call.
        tokio::spawn(async move {
            let completion = tokio::select! {
                completion = submit.run(&model) => completion,
                // Nobody waits for the answer any more (a cancelled asynchronous invocation, a
                // client that hung up): dropping the submission closes the engine job's reply
                // channel, which the engine checks before every decode step, so the slot is
                // freed now instead of after generating text that nobody will read.
                () = caller_left(&reply) => {
                    let _ = me.cast(FunctionMsg::Finished);
                    return;
                }
            };
            let outcome = match completion {
                Ok(done) => {
                    finish(done, &prepared, model, received_at, cut_output_ok).inspect(|outcome| {
                        if let Some(key) = cache_key {
                            let value = CachedCompletion {
                                text: outcome.text.clone(),
                                usage: outcome.usage,
                                finish_reason: outcome.finish_reason,
                            };
                            cache.insert(key, value, cache_ttl);
                        }
                    })
                }
                Err(err) => Err(err),
            };
            let _ = reply.send(outcome);
            let _ = me.cast(FunctionMsg::Finished);
        });
    }
}

/// How often a waiting invocation looks whether its caller is still there. The engine stops a
/// sequence within one decode step of learning it; this bounds how late it learns.
const CALLER_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Resolves once the caller dropped its end of `reply`. ractor's reply port can only be asked,
/// not awaited, hence the polling.
async fn caller_left<T>(reply: &RpcReplyPort<T>) {
    let mut every = tokio::time::interval(CALLER_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if reply.is_closed() {
            return;
        }
    }
}

/// A job as the function actor hands it to a pool, kept so that it can be handed again.
struct Submission {
    request: EngineRequest,
    tenant: TenantId,
    enqueued_at: Instant,
    priority: crate::Priority,
    stream: Option<tokio::sync::mpsc::Sender<String>>,
    pool: ActorRef<PoolMsg>,
}

/// A job whose reply channel closes without an answer never started on an engine (engines
/// answer every job they take, even when they panic): it was lost with a replica that died
/// before taking it, and is safely submitted again.
const RESUBMITS: usize = 2;

impl Submission {
    async fn run(self, model: &genrt_functions::ModelId) -> Result<Completion, InvokeError> {
        for _ in 0..=RESUBMITS {
            let (tx, rx) = oneshot::channel();
            let job = EngineJob {
                request: self.request.clone(),
                tenant: self.tenant.clone(),
                enqueued_at: self.enqueued_at,
                load_wait: std::time::Duration::ZERO,
                priority: self.priority,
                stream: self.stream.clone(),
                reply: tx,
            };
            if self.pool.cast(PoolMsg::Submit(job)).is_err() {
                return Err(InvokeError::ModelUnavailable {
                    model: model.clone(),
                    reason: "model pool is restarting".into(),
                });
            }
            match rx.await {
                Ok(result) => return result.map_err(|err| InvokeError::from_engine(model, err)),
                Err(_) => {
                    tracing::debug!(%model, "job lost with a failed replica; submitting again")
                }
            }
        }
        Err(InvokeError::ReplicaFailed {
            reason: "the replica stopped before answering".into(),
        })
    }
}

/// Turns an engine completion into the invocation's outcome, checking structured output.
fn finish(
    done: Completion,
    prepared: &PreparedFunction,
    model: genrt_functions::ModelId,
    received_at: Instant,
    cut_output_ok: bool,
) -> Result<InvocationOutcome, InvokeError> {
    let cut = done.finish_reason == crate::FinishReason::Length;
    let json = match prepared.parse_output(&done.text) {
        Ok(json) => json,
        Err(_) if cut && cut_output_ok => None,
        Err(reason) => {
            let hint = if cut {
                " (generation stopped at max_tokens: raise it)"
            } else {
                ""
            };
            return Err(InvokeError::InvalidOutput(format!("{reason}{hint}")));
        }
    };
    let now = Instant::now();
    Ok(InvocationOutcome {
        model,
        text: done.text,
        json,
        usage: Usage {
            prompt_tokens: done.prompt_tokens,
            cached_prompt_tokens: done.cached_prompt_tokens,
            completion_tokens: done.completion_tokens,
        },
        finish_reason: done.finish_reason,
        cache_hit: false,
        timings: Timings {
            load_ms: done.load_wait.as_secs_f64() * 1000.0,
            queue_ms: ms_since(received_at, done.started_at),
            prefill_ms: done
                .prefill_done_at
                .map_or(0.0, |t| ms_since(done.started_at, t)),
            ttft_ms: done
                .first_token_at
                .map_or(0.0, |t| ms_since(received_at, t)),
            total_ms: ms_since(received_at, now),
        },
    })
}

fn ms_since(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

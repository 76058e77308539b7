//! `FunctionActor`: one per (tenant, function version), started on first invocation and
//! stopped after its idle timeout. It holds the compiled templates and schema, answers from
//! the response cache when it can, and otherwise queues the work on the chosen model's pool.

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
use crate::engine::{EngineJob, EngineRequest};
use crate::model_pool::PoolMsg;
use crate::{
    DeployedFunction, Invocation, InvocationOutcome, InvokeError, ResponseCache, Timings, Usage,
};

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
                n_ctx,
                pool,
                reply,
            } => {
                f.state.touched(now);
                match f.state.plan(&invocation, &model, n_ctx) {
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
        let received_at = invocation.received_at;
        if let Some(hit) = plan.cache_key.as_ref().and_then(|k| self.cache.get(k)) {
            let total_ms = ms_since(received_at, Instant::now());
            let _ = reply.send(Ok(InvocationOutcome {
                model,
                text: hit.text,
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

        let (tx, rx) = oneshot::channel();
        let job = EngineJob {
            request: EngineRequest {
                prompt: plan.prompt,
                params: plan.params,
                deadline: invocation.deadline(),
                fault: invocation.fault,
            },
            enqueued_at: received_at,
            load_wait: std::time::Duration::ZERO,
            reply: tx,
        };
        if pool.cast(PoolMsg::Submit(job)).is_err() {
            let _ = reply.send(Err(InvokeError::ModelUnavailable {
                model,
                reason: "model pool is restarting".into(),
            }));
            return;
        }
        self.state.started(Instant::now());
        let cache = Arc::clone(&self.cache);
        let me = myself.clone();
        let (cache_key, cache_ttl) = (plan.cache_key, plan.cache_ttl);
        // Waiting happens off the actor, so one slow generation never delays the next call.
        tokio::spawn(async move {
            let outcome = match rx.await {
                Ok(Ok(done)) => {
                    let usage = Usage {
                        prompt_tokens: done.prompt_tokens,
                        completion_tokens: done.completion_tokens,
                    };
                    if let Some(key) = cache_key {
                        let value = CachedCompletion {
                            text: done.text.clone(),
                            usage,
                            finish_reason: done.finish_reason,
                        };
                        cache.insert(key, value, cache_ttl);
                    }
                    let now = Instant::now();
                    Ok(InvocationOutcome {
                        model,
                        text: done.text,
                        usage,
                        finish_reason: done.finish_reason,
                        cache_hit: false,
                        timings: Timings {
                            load_ms: done.load_wait.as_secs_f64() * 1000.0,
                            queue_ms: ms_since(received_at, done.started_at),
                            ttft_ms: done
                                .first_token_at
                                .map_or(0.0, |t| ms_since(received_at, t)),
                            total_ms: ms_since(received_at, now),
                        },
                    })
                }
                Ok(Err(err)) => Err(InvokeError::from_engine(&model, err)),
                Err(_) => Err(InvokeError::ReplicaFailed {
                    reason: "the replica stopped before answering".into(),
                }),
            };
            let _ = reply.send(outcome);
            let _ = me.cast(FunctionMsg::Finished);
        });
    }
}

fn ms_since(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

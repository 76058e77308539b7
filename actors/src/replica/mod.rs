//! `ModelReplica`: one llama.cpp context on one dedicated engine thread. The actor is the
//! supervised face of that thread: if the engine dies, or hangs (the watchdog below), the
//! actor fails, and its pool decides whether to start another.

mod messages;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{oneshot, watch};

pub(crate) use messages::ReplicaMsg;

use crate::engine::{EngineError, EngineEvent, EngineThread, PrefixCacheStats, Weights};
use crate::model_pool::{PoolMsg, ReplicaKey};
use crate::ModelConfig;

pub(crate) struct ModelReplica;

pub(crate) struct ReplicaArgs {
    pub key: ReplicaKey,
    pub config: ModelConfig,
    pub weights: Arc<dyn Weights>,
    /// The model's adapters, shared by its replicas.
    pub adapters: Arc<crate::engine::AdapterCache>,
    pub pool: ActorRef<PoolMsg>,
    /// The model's prefix-cache counters, which this replica's engine adds to.
    pub cache_stats: Arc<PrefixCacheStats>,
    /// No step for this long while jobs are out: the engine is hung. Zero: no watchdog.
    pub hang_timeout: Duration,
}

pub(crate) struct Replica {
    key: ReplicaKey,
    pool: ActorRef<PoolMsg>,
    engine: EngineThread,
    hang_timeout: Duration,
    /// Jobs handed to the engine and not yet answered.
    outstanding: usize,
    /// When `outstanding` last went from 0 to 1: a thread idle until then made no progress
    /// because it had nothing to do.
    busy_since: Instant,
    /// Set once the watchdog gives up on the engine: every job's forwarder then answers its
    /// caller at once, since the hung thread holds the jobs' own reply channels.
    hung: watch::Sender<bool>,
}

impl Actor for ModelReplica {
    type Msg = ReplicaMsg;
    type State = Replica;
    type Arguments = ReplicaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ReplicaMsg>,
        args: ReplicaArgs,
    ) -> Result<Replica, ActorProcessingErr> {
        let name = format!("engine-{}-{}", args.config.id, args.key.0);
        let me = myself.clone();
        let events = Box::new(move |event| {
            let _ = me.cast(ReplicaMsg::Engine(event));
        });
        let engine = EngineThread::spawn(
            name,
            args.weights,
            Some(args.adapters),
            args.config,
            args.cache_stats,
            events,
        )
        .await?;
        if !args.hang_timeout.is_zero() {
            // A few looks per timeout, so that a hang is noticed within about 1.25 of it.
            let every =
                (args.hang_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            myself.send_interval(every, || ReplicaMsg::Watchdog);
        }
        Ok(Replica {
            key: args.key,
            pool: args.pool,
            engine,
            hang_timeout: args.hang_timeout,
            outstanding: 0,
            busy_since: Instant::now(),
            hung: watch::channel(false).0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ReplicaMsg>,
        replica: &mut Replica,
    ) -> Result<(), ActorProcessingErr> {
        replica.engine.join().await;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<ReplicaMsg>,
        msg: ReplicaMsg,
        replica: &mut Replica,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ReplicaMsg::Run(mut job) => {
                job.reply = forward_reply(job.reply, replica.hung.subscribe());
                if let Err(job) = replica.engine.submit(job) {
                    let reason = "engine thread is not accepting work";
                    let _ = job.reply.send(Err(EngineError::Crashed(reason.into())));
                    join_failed(&mut replica.engine).await;
                    return Err(reason.into());
                }
                if replica.outstanding == 0 {
                    replica.busy_since = Instant::now();
                }
                replica.outstanding += 1;
            }
            ReplicaMsg::Engine(EngineEvent::Finished) => {
                replica.outstanding = replica.outstanding.saturating_sub(1);
                let _ = replica.pool.cast(PoolMsg::SlotFreed(replica.key));
            }
            ReplicaMsg::Engine(EngineEvent::Died(reason)) => {
                // ractor skips `post_stop` for an actor whose handler fails, so the thread,
                // which is already on its way out, is joined here: by the time the pool hears
                // of the failure the context and this replica's hold on the weights are gone.
                join_failed(&mut replica.engine).await;
                // Failing hands the decision to the pool, which restarts us with backoff.
                return Err(format!("engine died: {reason}").into());
            }
            ReplicaMsg::Watchdog => {
                if replica.outstanding == 0 {
                    return Ok(());
                }
                let since = replica.engine.last_progress().max(replica.busy_since);
                if since.elapsed() < replica.hang_timeout {
                    return Ok(());
                }
                let reason = format!(
                    "engine made no progress for {:?} with {} job(s) running",
                    replica.hang_timeout, replica.outstanding
                );
                tracing::error!(replica = replica.key.0, %reason, "engine hung; replacing the replica");
                let _ = replica.hung.send(true);
                // `post_stop` must not wait for a thread that may never end.
                replica.engine.abandon();
                return Err(format!("engine hung: {reason}").into());
            }
        }
        Ok(())
    }
}

/// How long a failing replica waits for its engine thread to end before leaving it (as a hung
/// one is left): the pool must hear of the failure whatever the thread does.
const JOIN_LIMIT: Duration = Duration::from_secs(10);

async fn join_failed(engine: &mut EngineThread) {
    if tokio::time::timeout(JOIN_LIMIT, engine.join())
        .await
        .is_err()
    {
        tracing::error!("engine thread did not end within {JOIN_LIMIT:?} of failing; left running");
    }
}

/// Puts a small task between a job and its caller, so that the replica can answer the caller
/// even when the engine thread, which holds the job, never will. Answers pass through
/// unchanged; a job the engine drops unanswered stays unanswered (its submitter then knows it
/// never started and submits it again); a caller that leaves closes the engine's end too,
/// which is how the engine learns to stop the sequence.
fn forward_reply<T: Send + 'static>(
    mut caller: oneshot::Sender<Result<T, EngineError>>,
    mut hung: watch::Receiver<bool>,
) -> oneshot::Sender<Result<T, EngineError>> {
    let (engine_end, mut answer) = oneshot::channel();
    tokio::spawn(async move {
        let outcome = tokio::select! {
            answer = &mut answer => answer.ok(),
            // An `Err` means the replica is gone without declaring a hang (a normal stop, which
            // joins the thread and so answers every job): the branch is then disabled.
            Ok(_) = hung.wait_for(|hung| *hung) => Some(Err(EngineError::Crashed(
                "the engine hung and its replica was replaced".into(),
            ))),
            () = caller.closed() => None,
        };
        if let Some(outcome) = outcome {
            let _ = caller.send(outcome);
        }
    });
    engine_end
}

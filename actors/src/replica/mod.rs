//! `ModelReplica`: one llama.cpp context on one dedicated engine thread. The actor is the
//! supervised face of that thread: if the engine dies, the actor fails, and its pool decides
//! whether to start another.

mod messages;

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

pub(crate) use messages::ReplicaMsg;

use crate::engine::{EngineError, EngineEvent, EngineThread, Weights};
use crate::model_pool::{PoolMsg, ReplicaKey};
use crate::ModelConfig;

pub(crate) struct ModelReplica;

pub(crate) struct ReplicaArgs {
    pub key: ReplicaKey,
    pub config: ModelConfig,
    pub weights: Arc<dyn Weights>,
    pub pool: ActorRef<PoolMsg>,
}

pub(crate) struct Replica {
    key: ReplicaKey,
    pool: ActorRef<PoolMsg>,
    engine: EngineThread,
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
        let events = Box::new(move |event| {
            let _ = myself.cast(ReplicaMsg::Engine(event));
        });
        let engine = EngineThread::spawn(name, args.weights, args.config, events).await?;
        Ok(Replica {
            key: args.key,
            pool: args.pool,
            engine,
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
            ReplicaMsg::Run(job) => {
                if let Err(job) = replica.engine.submit(job) {
                    let reason = "engine thread is not accepting work";
                    let _ = job.reply.send(Err(EngineError::Crashed(reason.into())));
                    return Err(reason.into());
                }
            }
            ReplicaMsg::Engine(EngineEvent::Finished) => {
                let _ = replica.pool.cast(PoolMsg::SlotFreed(replica.key));
            }
            ReplicaMsg::Engine(EngineEvent::Died(reason)) => {
                // Failing hands the decision to the pool, which restarts us with backoff.
                return Err(format!("engine died: {reason}").into());
            }
        }
        Ok(())
    }
}

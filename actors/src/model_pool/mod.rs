//! One `ModelPool` per registered model. It loads the weights on first need, starts
//! `ModelReplica` children up to `max_replicas`, feeds them from a bounded queue, restarts
//! the ones that fail, and when idle stops them all and frees the weights (scale to zero).

mod messages;
mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

pub(crate) use messages::PoolMsg;
pub(crate) use state::ReplicaKey;
use state::{Action, PoolState};

use crate::engine::{Backend, EngineJob, Weights};
use crate::replica::{ModelReplica, ReplicaArgs, ReplicaMsg};
use crate::supervision::{RestartDecision, RestartPolicy};
use crate::ModelConfig;

pub(crate) struct ModelPool;

pub(crate) struct PoolArgs {
    pub config: ModelConfig,
    pub backend: Arc<dyn Backend>,
    pub policy: RestartPolicy,
}

pub(crate) struct Pool {
    state: PoolState,
    backend: Arc<dyn Backend>,
    weights: Option<Arc<dyn Weights>>,
    replicas: HashMap<ReplicaKey, ActorRef<ReplicaMsg>>,
    by_actor: HashMap<ActorId, ReplicaKey>,
}

impl Actor for ModelPool {
    type Msg = PoolMsg;
    type State = Pool;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        args: PoolArgs,
    ) -> Result<Pool, ActorProcessingErr> {
        // Check a few times per idle timeout, never busier than 10 Hz.
        let tick = (args.config.idle_timeout() / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        myself.send_interval(tick, || PoolMsg::Tick);
        Ok(Pool {
            state: PoolState::new(args.config, args.policy, Instant::now()),
            backend: args.backend,
            weights: None,
            replicas: HashMap::new(),
            by_actor: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PoolMsg>,
        pool: &mut Pool,
    ) -> Result<(), ActorProcessingErr> {
        // Replicas join their engine threads on stop, so once this returns the contexts and
        // weights are gone.
        for replica in pool.replicas.values() {
            let _ = replica
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
        }
        pool.weights = None;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        pool: &mut Pool,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            PoolMsg::Submit(job) => {
                if let Err((job, err)) = pool.state.admit(job, now) {
                    let _ = job.reply.send(Err(err));
                }
            }
            PoolMsg::Status(reply) => {
                let _ = reply.send(pool.state.status());
            }
            PoolMsg::ReplicaIdle(key) => pool.state.replica_idle(key, now),
            PoolMsg::Loaded(Ok(weights), took) => {
                tracing::info!(model = %pool.state.config.id, load_ms = took.as_millis() as u64, "model loaded");
                pool.weights = Some(weights);
                pool.state.load_finished(took);
            }
            PoolMsg::Loaded(Err(err), _) => {
                tracing::error!(model = %pool.state.config.id, error = %err, "model failed to load");
                for job in pool.state.fail(err.to_string(), now) {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
            PoolMsg::RestartReplica => {
                if pool.state.can_restart_replica() {
                    pool.start_replica(&myself).await;
                }
            }
            PoolMsg::Tick => {
                for key in pool.state.expire_idle(now) {
                    tracing::info!(model = %pool.state.config.id, replica = key.0, "stopping idle replica");
                    if let Some(replica) = pool.replicas.get(&key) {
                        replica.stop(Some("idle".into()));
                    }
                }
            }
        }
        pool.reconcile(&myself).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        pool: &mut Pool,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(key) = pool.forget(cell.get_id()) {
                    pool.state.replica_gone(key);
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(key) = pool.forget(cell.get_id()) {
                    let model = pool.state.config.id.clone();
                    tracing::warn!(%model, replica = key.0, error = %err, "replica failed");
                    match pool.state.replica_failed(key, Instant::now()) {
                        RestartDecision::RestartAfter(delay) => {
                            myself.send_after(delay, || PoolMsg::RestartReplica);
                        }
                        RestartDecision::GiveUp => {
                            let reason = format!("replicas failed repeatedly, last: {err}");
                            tracing::error!(%model, %reason, "giving up on model");
                            for job in pool.state.fail(reason.clone(), Instant::now()) {
                                let _ = job
                                    .reply
                                    .send(Err(crate::EngineError::Crashed(reason.clone())));
                            }
                            pool.stop_all_replicas();
                            pool.weights = None;
                        }
                    }
                }
            }
            _ => {}
        }
        pool.reconcile(&myself).await;
        Ok(())
    }
}

impl Pool {
    /// Brings the actors and threads in line with what the state asks for, then hands queued
    /// jobs to idle replicas.
    async fn reconcile(&mut self, myself: &ActorRef<PoolMsg>) {
        loop {
            match self.state.next_action() {
                Action::Load => self.start_load(myself),
                Action::StartReplica => {
                    if !self.start_replica(myself).await {
                        break;
                    }
                    continue;
                }
                Action::Unload => {
                    tracing::info!(model = %self.state.config.id, "model idle: weights freed");
                    self.weights = None;
                    self.state.unloaded();
                }
                Action::Nothing => {}
            }
            break;
        }
        while let Some((key, job)) = self.state.next_assignment(Instant::now()) {
            self.run_on(key, job);
        }
    }

    fn start_load(&mut self, myself: &ActorRef<PoolMsg>) {
        self.state.load_started(Instant::now());
        let backend = Arc::clone(&self.backend);
        let config = self.state.config.clone();
        let pool = myself.clone();
        tracing::info!(model = %config.id, path = %config.path.display(), "loading model");
        // Loading blocks for as long as the file takes to map: keep it off the actor's task.
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = backend.load(&config);
            let _ = pool.cast(PoolMsg::Loaded(result, started.elapsed()));
        });
    }

    /// Returns whether a replica is now running.
    async fn start_replica(&mut self, myself: &ActorRef<PoolMsg>) -> bool {
        let Some(weights) = self.weights.clone() else {
            return false;
        };
        let key = self.state.add_replica();
        let args = ReplicaArgs {
            key,
            config: self.state.config.clone(),
            weights,
            pool: myself.clone(),
        };
        match Actor::spawn_linked(None, ModelReplica, args, myself.get_cell()).await {
            Ok((replica, _)) => {
                self.by_actor.insert(replica.get_id(), key);
                self.replicas.insert(key, replica);
                true
            }
            Err(err) => {
                tracing::error!(model = %self.state.config.id, error = %err, "replica failed to start");
                let decision = self.state.replica_failed(key, Instant::now());
                if let RestartDecision::RestartAfter(delay) = decision {
                    myself.send_after(delay, || PoolMsg::RestartReplica);
                } else {
                    let reason = format!("replica cannot start: {err}");
                    for job in self.state.fail(reason.clone(), Instant::now()) {
                        let _ = job
                            .reply
                            .send(Err(crate::EngineError::Load(reason.clone())));
                    }
                    self.weights = None;
                }
                false
            }
        }
    }

    fn run_on(&mut self, key: ReplicaKey, job: EngineJob) {
        match self.replicas.get(&key) {
            Some(replica) => {
                if let Err(err) = replica.cast(ReplicaMsg::Run(job)) {
                    // The replica died between being chosen and receiving the job.
                    if let ractor::MessagingErr::SendErr(ReplicaMsg::Run(job)) = err {
                        let _ = job.reply.send(Err(crate::EngineError::Crashed(
                            "replica stopped before the job started".into(),
                        )));
                    }
                }
            }
            None => {
                let _ = job
                    .reply
                    .send(Err(crate::EngineError::Crashed("replica vanished".into())));
            }
        }
    }

    fn forget(&mut self, actor: ActorId) -> Option<ReplicaKey> {
        let key = self.by_actor.remove(&actor)?;
        self.replicas.remove(&key);
        Some(key)
    }

    fn stop_all_replicas(&mut self) {
        for replica in self.replicas.values() {
            replica.stop(Some("model failed".into()));
        }
    }
}

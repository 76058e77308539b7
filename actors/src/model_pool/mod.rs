//! One `ModelPool` per registered model. It loads the weights on first need (within the
//! memory budget), scales `ModelReplica` children between `min_replicas` and `max_replicas`
//! with the load, feeds their slots from bounded queues that serve tenants in turn, restarts
//! the ones that fail, and when idle stops them all and frees the weights (scale to zero).

mod affinity;
mod fair;
mod messages;
mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use messages::Loaded;
pub(crate) use messages::PoolMsg;
pub(crate) use state::ReplicaKey;
use state::{Action, PoolState};

use crate::engine::devices::split;
use crate::engine::{
    AdapterCache, Backend, EngineError, EngineJob, Placement, PrefixCacheStats, Weights,
};
use crate::memory::{Budgets, Held};
use crate::replica::{ModelReplica, ReplicaArgs, ReplicaMsg};
use crate::supervision::{RestartDecision, RestartPolicy};
use crate::ModelConfig;

/// How often the pool re-evaluates scaling when nothing else happens.
const TICK: Duration = Duration::from_millis(100);

pub(crate) struct ModelPool;

pub(crate) struct PoolArgs {
    pub config: ModelConfig,
    pub backend: Arc<dyn Backend>,
    pub policy: RestartPolicy,
    pub budgets: Budgets,
    pub placement: Placement,
}

struct LiveReplica {
    actor: ActorRef<ReplicaMsg>,
    memory: Held,
}

pub(crate) struct Pool {
    state: PoolState,
    backend: Arc<dyn Backend>,
    budgets: Budgets,
    placement: Placement,
    /// The model's repeating layers, known from the first load on.
    n_layer: Option<u32>,
    /// The replicas' watchdog threshold (`RestartPolicy::engine_hang_timeout`).
    hang_timeout: Duration,
    /// The loaded weights, their memory, and the adapters loaded for them.
    weights: Option<(Arc<dyn Weights>, Held, Arc<AdapterCache>)>,
    replicas: HashMap<ReplicaKey, LiveReplica>,
    by_actor: HashMap<ActorId, ReplicaKey>,
    cache_stats: Arc<PrefixCacheStats>,
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
        myself.send_interval(TICK, || PoolMsg::Tick);
        Ok(Pool {
            state: PoolState::new(args.config, args.policy, Instant::now()),
            backend: args.backend,
            budgets: args.budgets,
            placement: args.placement,
            n_layer: None,
            hang_timeout: args.policy.engine_hang_timeout,
            weights: None,
            replicas: HashMap::new(),
            by_actor: HashMap::new(),
            cache_stats: Arc::default(),
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
                .actor
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
        }
        pool.replicas.clear();
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
                let _ = reply.send(pool.status());
            }
            PoolMsg::SlotFreed(key) => pool.state.slot_freed(key, now),
            PoolMsg::Loaded(Ok(loaded), took) => {
                tracing::info!(model = %pool.state.config.id, load_ms = took.as_millis() as u64,
                    device = %pool.placement.label(), gpu_layers = pool.placement.gpu_layers(loaded.n_layer),
                    gpu_mib = loaded.memory.gpu_bytes() >> 20, "model loaded");
                pool.n_layer = Some(loaded.n_layer);
                let gpu = pool
                    .placement
                    .gpu
                    .as_ref()
                    .map(|g| (g.ordinal, pool.placement.gpu_share(loaded.n_layer)));
                let config = &pool.state.config;
                let adapters = AdapterCache::new(
                    Arc::clone(&loaded.weights),
                    pool.budgets.clone(),
                    gpu,
                    Duration::from_secs(config.idle_timeout_s),
                    config.id.to_string(),
                );
                pool.weights = Some((loaded.weights, loaded.memory, Arc::new(adapters)));
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
                    pool.start_replica(&myself, "restart after failure").await;
                }
            }
            PoolMsg::Tick => {
                if let Some((_, _, adapters)) = &pool.weights {
                    adapters.sweep();
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
                            pool.fail_model(reason);
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
    fn status(&self) -> crate::ModelStatus {
        let mut status = self.state.status();
        let held = self
            .weights
            .iter()
            .map(|(_, held, _)| held)
            .chain(self.replicas.values().map(|r| &r.memory));
        (status.memory_bytes, status.gpu_memory_bytes) =
            held.fold((0, 0), |(h, g), m| (h + m.host_bytes(), g + m.gpu_bytes()));
        status.device = self.placement.label();
        status.gpu_layers = self.n_layer.map(|n| self.placement.gpu_layers(n));
        status.prefix_cache = self.cache_stats.snapshot();
        if let Some((_, _, adapters)) = &self.weights {
            (status.adapters_loaded, status.adapter_memory_bytes) = adapters.status();
        }
        status
    }

    /// Brings actors and threads in line with what the state asks for, then hands queued jobs
    /// to replicas with free slots.
    async fn reconcile(&mut self, myself: &ActorRef<PoolMsg>) {
        for _ in 0..self.state.config.max_replicas.max(1) + 1 {
            match self.state.next_action(Instant::now()) {
                Action::Load => {
                    self.start_load(myself);
                    break;
                }
                Action::StartReplica { reason } => {
                    if !self.start_replica(myself, &reason).await {
                        break;
                    }
                }
                Action::StopReplica { key, reason } => {
                    self.state.stopping(key, &reason);
                    if let Some(replica) = self.replicas.get(&key) {
                        replica.actor.stop(Some(reason));
                    }
                    break;
                }
                Action::Unload => {
                    tracing::info!(model = %self.state.config.id, "model idle: weights freed");
                    self.weights = None;
                    self.state.unloaded();
                    release_freed_memory();
                    break;
                }
                Action::Nothing => break,
            }
        }
        while let Some((key, job)) = self.state.next_assignment(Instant::now()) {
            self.run_on(key, job);
        }
    }

    fn start_load(&mut self, myself: &ActorRef<PoolMsg>) {
        self.state.load_started(Instant::now());
        let backend = Arc::clone(&self.backend);
        let budgets = self.budgets.clone();
        let placement = self.placement.clone();
        let config = self.state.config.clone();
        let pool = myself.clone();
        tracing::info!(model = %config.id, path = %config.path.display(), device = %placement.label(), "loading model");
        // Loading blocks for as long as the file takes to map: keep it off the actor's task.
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = load(&*backend, &budgets, &placement, &config);
            let _ = pool.cast(PoolMsg::Loaded(result, started.elapsed()));
        });
    }

    /// Returns whether a replica is now running.
    async fn start_replica(&mut self, myself: &ActorRef<PoolMsg>, reason: &str) -> bool {
        let Some((weights, _, adapters)) = &self.weights else {
            return false;
        };
        let (weights, adapters) = (Arc::clone(weights), Arc::clone(adapters));
        let what = format!(
            "a replica of `{}` ({} slots of {} tokens)",
            self.state.config.id, self.state.config.slots, self.state.config.n_ctx
        );
        let share = self.placement.gpu_share(self.n_layer.unwrap_or(1));
        let (host, gpu) = split(weights.kv_bytes(&self.state.config), share);
        let gpu = self.placement.gpu.as_ref().map(|g| (g.ordinal, gpu));
        let memory = match self.budgets.reserve(host, gpu, &what) {
            Ok(memory) => memory,
            Err(refusal) => {
                tracing::warn!(model = %self.state.config.id, %refusal, "replica refused");
                let live = self.replicas.len() as u32;
                self.state
                    .record(live, live, &format!("refused: {refusal}"));
                if !self.state.has_live_replicas() {
                    // Nothing can serve the queue: answer it rather than let it wait.
                    for job in self.state.drain_queue() {
                        let _ = job
                            .reply
                            .send(Err(EngineError::MemoryBudget(refusal.clone())));
                    }
                }
                return false;
            }
        };
        let key = self.state.add_replica(reason);
        let args = ReplicaArgs {
            key,
            config: self.state.config.clone(),
            weights,
            adapters,
            pool: myself.clone(),
            cache_stats: Arc::clone(&self.cache_stats),
            hang_timeout: self.hang_timeout,
        };
        match Actor::spawn_linked(None, ModelReplica, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), key);
                self.replicas.insert(key, LiveReplica { actor, memory });
                true
            }
            Err(err) => {
                tracing::error!(model = %self.state.config.id, error = %err, "replica failed to start");
                if let RestartDecision::RestartAfter(delay) =
                    self.state.replica_failed(key, Instant::now())
                {
                    myself.send_after(delay, || PoolMsg::RestartReplica);
                } else {
                    self.fail_model(format!("replica cannot start: {err}"));
                }
                false
            }
        }
    }

    fn fail_model(&mut self, reason: String) {
        for job in self.state.fail(reason.clone(), Instant::now()) {
            let _ = job.reply.send(Err(EngineError::Crashed(reason.clone())));
        }
        for replica in self.replicas.values() {
            replica.actor.stop(Some("model failed".into()));
        }
        self.weights = None;
    }

    fn run_on(&mut self, key: ReplicaKey, job: EngineJob) {
        let Some(replica) = self.replicas.get(&key) else {
            let _ = job
                .reply
                .send(Err(EngineError::Crashed("replica vanished".into())));
            return;
        };
        if let Err(ractor::MessagingErr::SendErr(ReplicaMsg::Run(job))) =
            replica.actor.cast(ReplicaMsg::Run(job))
        {
            // The replica died between being chosen and receiving the job.
            let _ = job.reply.send(Err(EngineError::Crashed(
                "replica stopped before the job started".into(),
            )));
        }
    }

    fn forget(&mut self, actor: ActorId) -> Option<ReplicaKey> {
        let key = self.by_actor.remove(&actor)?;
        self.replicas.remove(&key);
        Some(key)
    }
}

/// Hands the heap pages freed with the weights and KV caches back to the OS. glibc keeps
/// freed memory for reuse, which would leave a scaled-to-zero process looking loaded.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) };
    });
}

/// Reserves the weights' memory where `placement` puts them (the file's size, split between
/// host and GPU by the share of layers offloaded), then loads them.
fn load(
    backend: &dyn Backend,
    budgets: &Budgets,
    placement: &Placement,
    config: &ModelConfig,
) -> Result<Loaded, EngineError> {
    let size = std::fs::metadata(&config.path)
        .map(|m| m.len())
        .unwrap_or(0);
    // The header only, so cheap. On the CPU the count only feeds the status, so a file we
    // cannot read is left for the load to judge; so is a missing file, which it names.
    let n_layer = match backend.layer_count(config) {
        Ok(n) => n,
        Err(e) if placement.gpu.is_some() && config.path.is_file() => return Err(e),
        Err(_) => 0,
    };
    let (host, gpu) = split(size, placement.gpu_share(n_layer));
    let gpu = placement.gpu.as_ref().map(|g| (g.ordinal, gpu));
    let memory = budgets
        .reserve(host, gpu, &format!("the weights of `{}`", config.id))
        .map_err(EngineError::MemoryBudget)?;
    let weights = backend.load(config, placement)?;
    Ok(Loaded {
        weights,
        memory,
        n_layer,
    })
}

//! The bookkeeping of one model pool: its phase, its bounded queue and which replica is
//! busy. Synchronous and free of IO so that scheduling decisions can be tested directly.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::engine::{EngineError, EngineJob};
use crate::supervision::{RestartBudget, RestartDecision, RestartPolicy};
use crate::{ModelConfig, ModelPhase, ModelStatus};

/// How long a model that failed to load is left alone before a new invocation retries it.
pub(crate) const FAILED_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ReplicaKey(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicaState {
    Idle,
    Busy,
    Stopping,
}

/// What the actor should do next, decided from the state alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Load,
    StartReplica,
    Unload,
    Nothing,
}

pub(crate) struct PoolState {
    pub(crate) config: ModelConfig,
    pub(crate) phase: ModelPhase,
    queue: VecDeque<EngineJob>,
    replicas: BTreeMap<ReplicaKey, ReplicaState>,
    next_key: u64,
    last_activity: Instant,
    failed_at: Option<Instant>,
    load_started: Option<Instant>,
    loads: u64,
    last_load: Option<Duration>,
    restarts: RestartBudget,
    /// Set when idleness stopped the replicas: once they are gone the weights go too.
    draining: bool,
}

impl PoolState {
    pub(crate) fn new(config: ModelConfig, policy: RestartPolicy, now: Instant) -> Self {
        Self {
            config,
            phase: ModelPhase::Unloaded,
            queue: VecDeque::new(),
            replicas: BTreeMap::new(),
            next_key: 0,
            last_activity: now,
            failed_at: None,
            load_started: None,
            loads: 0,
            last_load: None,
            restarts: RestartBudget::new(policy),
            draining: false,
        }
    }

    /// Admits a job to the bounded queue, or hands it back with the reason it was refused.
    pub(crate) fn admit(
        &mut self,
        job: EngineJob,
        now: Instant,
    ) -> Result<(), (EngineJob, EngineError)> {
        if let ModelPhase::Failed { reason } = &self.phase {
            if self
                .failed_at
                .is_some_and(|t| now.duration_since(t) < FAILED_RETRY_AFTER)
            {
                let reason = reason.clone();
                return Err((job, EngineError::Load(reason)));
            }
            self.phase = ModelPhase::Unloaded;
        }
        if self.queue.len() >= self.config.queue_capacity {
            let queued = self.queue.len();
            return Err((job, EngineError::Overloaded { queued }));
        }
        self.last_activity = now;
        self.draining = false;
        self.queue.push_back(job);
        Ok(())
    }

    /// The next thing to do to serve the queue, or to scale to zero.
    pub(crate) fn next_action(&self) -> Action {
        let live = self.live_replicas();
        match self.phase {
            ModelPhase::Unloaded if !self.queue.is_empty() => Action::Load,
            ModelPhase::Ready if !self.queue.is_empty() => {
                let idle = self.replicas.values().any(|s| *s == ReplicaState::Idle);
                if !idle && live < self.config.max_replicas as usize {
                    Action::StartReplica
                } else {
                    Action::Nothing
                }
            }
            ModelPhase::Ready if self.draining && self.replicas.is_empty() => Action::Unload,
            _ => Action::Nothing,
        }
    }

    /// Pairs the oldest waiting job with an idle replica.
    pub(crate) fn next_assignment(&mut self, now: Instant) -> Option<(ReplicaKey, EngineJob)> {
        if self.phase != ModelPhase::Ready || self.queue.is_empty() {
            return None;
        }
        let (key, state) = self
            .replicas
            .iter_mut()
            .find(|(_, s)| **s == ReplicaState::Idle)?;
        *state = ReplicaState::Busy;
        let mut job = self.queue.pop_front()?;
        if let Some(started) = self.load_started {
            // The part of this job's wait that overlapped the load.
            let from = job.enqueued_at.max(started);
            let until = started + self.last_load.unwrap_or_default();
            job.load_wait = until.saturating_duration_since(from);
        }
        self.last_activity = now;
        Some((*key, job))
    }

    pub(crate) fn load_started(&mut self, now: Instant) {
        self.phase = ModelPhase::Loading;
        self.load_started = Some(now);
        self.last_load = None;
    }

    pub(crate) fn load_finished(&mut self, took: Duration) {
        self.phase = ModelPhase::Ready;
        self.loads += 1;
        self.last_load = Some(took);
    }

    /// Loading failed: the model is failed and every waiting job is handed back.
    pub(crate) fn fail(&mut self, reason: String, now: Instant) -> Vec<EngineJob> {
        self.phase = ModelPhase::Failed { reason };
        self.failed_at = Some(now);
        self.draining = false;
        self.queue.drain(..).collect()
    }

    pub(crate) fn add_replica(&mut self) -> ReplicaKey {
        let key = ReplicaKey(self.next_key);
        self.next_key += 1;
        self.replicas.insert(key, ReplicaState::Idle);
        key
    }

    pub(crate) fn replica_idle(&mut self, key: ReplicaKey, now: Instant) {
        if let Some(state @ ReplicaState::Busy) = self.replicas.get_mut(&key) {
            *state = ReplicaState::Idle;
        }
        self.last_activity = now;
    }

    pub(crate) fn replica_gone(&mut self, key: ReplicaKey) {
        self.replicas.remove(&key);
    }

    /// A replica failed: decide whether to start another.
    pub(crate) fn replica_failed(&mut self, key: ReplicaKey, now: Instant) -> RestartDecision {
        self.replicas.remove(&key);
        self.restarts.on_failure(now)
    }

    /// If the pool has been idle for its timeout, marks every replica as stopping and returns
    /// them so that the actor can stop them.
    pub(crate) fn expire_idle(&mut self, now: Instant) -> Vec<ReplicaKey> {
        let idle = self.queue.is_empty()
            && self.replicas.values().all(|s| *s == ReplicaState::Idle)
            && now.duration_since(self.last_activity) >= self.config.idle_timeout();
        if !idle || self.phase != ModelPhase::Ready {
            return Vec::new();
        }
        self.draining = true;
        self.replicas
            .iter_mut()
            .map(|(key, state)| {
                *state = ReplicaState::Stopping;
                *key
            })
            .collect()
    }

    pub(crate) fn unloaded(&mut self) {
        self.phase = ModelPhase::Unloaded;
        self.draining = false;
    }

    pub(crate) fn can_restart_replica(&self) -> bool {
        self.phase == ModelPhase::Ready && self.live_replicas() < self.config.max_replicas as usize
    }

    fn live_replicas(&self) -> usize {
        self.replicas
            .values()
            .filter(|s| **s != ReplicaState::Stopping)
            .count()
    }

    pub(crate) fn status(&self) -> ModelStatus {
        ModelStatus {
            id: self.config.id.clone(),
            phase: self.phase.clone(),
            replicas: self.live_replicas() as u32,
            busy_replicas: self
                .replicas
                .values()
                .filter(|s| **s == ReplicaState::Busy)
                .count() as u32,
            queued: self.queue.len() as u32,
            max_replicas: self.config.max_replicas,
            n_ctx: self.config.n_ctx,
            replica_restarts: self.restarts.total(),
            loads: self.loads,
            last_load_ms: self.last_load.map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineRequest;
    use genrt_functions::{GenerationParams, RenderedPrompt};
    use tokio::sync::oneshot;

    fn job(now: Instant) -> EngineJob {
        let (reply, _rx) = oneshot::channel();
        EngineJob {
            request: EngineRequest {
                prompt: RenderedPrompt {
                    system: None,
                    user: "hi".into(),
                },
                params: GenerationParams::default().resolve(&GenerationParams::default()),
                deadline: now + Duration::from_secs(5),
                fault: None,
            },
            enqueued_at: now,
            load_wait: Duration::ZERO,
            reply,
        }
    }

    fn pool(capacity: usize, max_replicas: u32) -> (PoolState, Instant) {
        let mut config = ModelConfig::new("m", "/models/m.gguf");
        config.queue_capacity = capacity;
        config.max_replicas = max_replicas;
        config.idle_timeout_s = 10;
        let now = Instant::now();
        (PoolState::new(config, RestartPolicy::default(), now), now)
    }

    #[test]
    fn first_job_loads_then_starts_a_replica_then_runs() {
        let (mut p, now) = pool(4, 2);
        assert_eq!(p.next_action(), Action::Nothing);
        p.admit(job(now), now).unwrap();
        assert_eq!(p.next_action(), Action::Load);
        p.load_started(now);
        assert_eq!(
            p.next_action(),
            Action::Nothing,
            "no second load while loading"
        );
        p.load_finished(Duration::from_millis(30));
        assert_eq!(p.next_action(), Action::StartReplica);
        let key = p.add_replica();
        let (assigned, job) = p.next_assignment(now).unwrap();
        assert_eq!(assigned, key);
        assert_eq!(job.load_wait, Duration::from_millis(30));
        assert_eq!(p.status().busy_replicas, 1);
    }

    #[test]
    fn the_queue_is_bounded() {
        let (mut p, now) = pool(2, 1);
        p.admit(job(now), now).unwrap();
        p.admit(job(now), now).unwrap();
        let (_, err) = p.admit(job(now), now).unwrap_err();
        assert_eq!(err, EngineError::Overloaded { queued: 2 });
    }

    #[test]
    fn replicas_scale_up_only_to_the_maximum() {
        let (mut p, now) = pool(8, 2);
        p.load_started(now);
        p.load_finished(Duration::ZERO);
        for _ in 0..3 {
            p.admit(job(now), now).unwrap();
        }
        assert_eq!(p.next_action(), Action::StartReplica);
        p.add_replica();
        assert!(p.next_assignment(now).is_some());
        assert_eq!(p.next_action(), Action::StartReplica);
        p.add_replica();
        assert!(p.next_assignment(now).is_some());
        assert_eq!(
            p.next_action(),
            Action::Nothing,
            "at max_replicas the job waits"
        );
        assert!(p.next_assignment(now).is_none());
    }

    #[test]
    fn idle_pool_stops_replicas_then_unloads() {
        let (mut p, now) = pool(4, 1);
        p.admit(job(now), now).unwrap();
        p.load_started(now);
        p.load_finished(Duration::ZERO);
        let key = p.add_replica();
        let _ = p.next_assignment(now).unwrap();
        assert!(
            p.expire_idle(now + Duration::from_secs(60)).is_empty(),
            "busy replicas stay"
        );
        p.replica_idle(key, now + Duration::from_secs(1));
        assert!(
            p.expire_idle(now + Duration::from_secs(5)).is_empty(),
            "not idle long enough"
        );
        assert_eq!(p.expire_idle(now + Duration::from_secs(12)), vec![key]);
        assert_eq!(
            p.next_action(),
            Action::Nothing,
            "waits for the replica to stop"
        );
        p.replica_gone(key);
        assert_eq!(p.next_action(), Action::Unload);
        p.unloaded();
        assert_eq!(p.status().phase, ModelPhase::Unloaded);
    }

    #[test]
    fn a_failed_model_refuses_for_a_while_then_retries() {
        let (mut p, now) = pool(4, 1);
        p.admit(job(now), now).unwrap();
        p.load_started(now);
        let drained = p.fail("bad file".into(), now);
        assert_eq!(drained.len(), 1);
        assert!(matches!(
            p.admit(job(now), now),
            Err((_, EngineError::Load(_)))
        ));
        let later = now + FAILED_RETRY_AFTER;
        p.admit(job(later), later).unwrap();
        assert_eq!(p.next_action(), Action::Load);
    }
}

//! The bookkeeping of one model pool: its phase, its bounded queues, the busy slots of each
//! replica, and the autoscaling decision. Synchronous and free of IO so that scheduling and
//! scaling can be tested directly.
//!
//! Queueing policy: interactive and background (prewarm) work wait in two fair queues, one
//! FIFO per tenant served in turn (see [`FairQueue`]); background work runs only when no
//! interactive work waits. A job leaves its queue only for a free replica slot, so the fair
//! order alone decides who runs next. Admission bounds are on [`PoolState::admit`].
//!
//! Scaling policy: the desired replica count is `ceil(ongoing / target_ongoing)`, where
//! `ongoing` counts running and queued invocations, clamped to `[min_replicas, max_replicas]`.
//! From zero a replica starts at once (the caller is waiting for a cold start anyway); further
//! replicas are added once the load has called for them for `upscale_delay_ms`. Replicas are
//! removed one at a time once the load has called for fewer for `downscale_delay_s`, and the
//! last one (down to `min_replicas`) only after `idle_timeout_s` without any work; when no
//! replica is left the weights are freed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use genrt_functions::TenantId;

use super::affinity::{prompt_blocks, ReplicaIndex, SetHomes};
use super::fair::FairQueue;
use crate::engine::{EngineError, EngineJob};
use crate::supervision::{RestartBudget, RestartDecision, RestartPolicy};
use crate::{ModelConfig, ModelPhase, ModelStatus, ScalingEvent};

/// How long a model that failed to load is left alone before a new invocation retries it.
pub(crate) const FAILED_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ReplicaKey(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplicaInfo {
    busy: u32,
    stopping: bool,
}

/// What the actor should do next, decided from the state alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Load,
    StartReplica { reason: String },
    StopReplica { key: ReplicaKey, reason: String },
    Unload,
    Nothing,
}

pub(crate) struct PoolState {
    pub(crate) config: ModelConfig,
    pub(crate) phase: ModelPhase,
    queue: FairQueue<TenantId, EngineJob>,
    /// Background work (queued invocations, prewarming): served only when `queue` is empty.
    background: FairQueue<TenantId, EngineJob>,
    /// Idle work (shadow copies): admitted only while a replica serves, served only when both
    /// queues are empty, and only to a replica that keeps at least half its slots free with
    /// it (never a one-slot replica), so that it does not hold the slot an interactive call
    /// would wait for (in the engine it also yields every step, and is given up when every
    /// slot is taken). It does not count as load for scaling beyond keeping one replica.
    idle: FairQueue<TenantId, EngineJob>,
    replicas: BTreeMap<ReplicaKey, ReplicaInfo>,
    /// What each replica was sent, for cache-aware placement.
    affinity: HashMap<ReplicaKey, ReplicaIndex>,
    /// Where each adapter set's work went, for adapter-affine placement.
    homes: SetHomes,
    next_key: u64,
    last_activity: Instant,
    failed_at: Option<Instant>,
    load_started: Option<Instant>,
    loads: u64,
    last_load: Option<Duration>,
    restarts: RestartBudget,
    /// Since when the load has called for more (or fewer) replicas than are running.
    wants_more_since: Option<Instant>,
    wants_fewer_since: Option<Instant>,
    last_scaling: Option<ScalingEvent>,
    pub(crate) memory_bytes: u64,
}

impl PoolState {
    pub(crate) fn new(config: ModelConfig, policy: RestartPolicy, now: Instant) -> Self {
        Self {
            config,
            phase: ModelPhase::Unloaded,
            queue: FairQueue::new(),
            background: FairQueue::new(),
            idle: FairQueue::new(),
            replicas: BTreeMap::new(),
            affinity: HashMap::new(),
            homes: SetHomes::default(),
            next_key: 0,
            last_activity: now,
            failed_at: None,
            load_started: None,
            loads: 0,
            last_load: None,
            restarts: RestartBudget::new(policy),
            wants_more_since: None,
            wants_fewer_since: None,
            last_scaling: None,
            memory_bytes: 0,
        }
    }

    /// Admits a job to its queue, or hands it back with the reason it was refused.
    ///
    /// Overload policy, applied to the interactive and the background queue each on its own:
    /// - a queue holds at most `queue_capacity` jobs of all tenants together;
    /// - it holds at most `tenant_queue_capacity()` jobs of any one tenant (by default half of
    ///   `queue_capacity`), so a tenant flooding the model is refused at its own bound while
    ///   other tenants are still admitted;
    /// - a refused job is answered at once with `Overloaded` (503 with Retry-After at the
    ///   edge), its `queued` being the count of the bound that refused it. Nothing is parked
    ///   and nothing already admitted is pushed out to make room.
    #[expect(
        clippy::result_large_err,
        reason = "the refused job comes back whole so that the actor can answer it"
    )]
    pub(crate) fn admit(
        &mut self,
        job: EngineJob,
        now: Instant,
    ) -> Result<(), (EngineJob, EngineError)> {
        // Idle work (a shadow copy) never loads a model nor starts a replica: it runs where
        // one is serving, or is refused at once (the shadow is skipped).
        if job.priority == crate::Priority::Idle
            && !(self.phase == ModelPhase::Ready && self.live().next().is_some())
        {
            return Err((job, EngineError::Overloaded { queued: 0 }));
        }
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
        let queue = match job.priority {
            crate::Priority::Interactive => &mut self.queue,
            crate::Priority::Background => &mut self.background,
            crate::Priority::Idle => &mut self.idle,
        };
        let queued = queue.len();
        if queued >= self.config.queue_capacity {
            return Err((job, EngineError::Overloaded { queued }));
        }
        let queued = queue.len_of(&job.tenant);
        if queued >= self.config.tenant_queue_capacity() {
            return Err((job, EngineError::Overloaded { queued }));
        }
        queue.push(job.tenant.clone(), job);
        self.last_activity = now;
        Ok(())
    }

    fn live(&self) -> impl Iterator<Item = (&ReplicaKey, &ReplicaInfo)> {
        self.replicas.iter().filter(|(_, r)| !r.stopping)
    }

    fn ongoing(&self) -> u32 {
        let busy: u32 = self.replicas.values().map(|r| r.busy).sum();
        busy + (self.queue.len() + self.background.len()) as u32
    }

    /// Replicas the current load calls for, before delays.
    fn wanted(&self) -> u32 {
        let c = &self.config;
        let ongoing = self.ongoing();
        // Idle work is not load, but keeps one replica while it waits for it.
        let by_load = ongoing
            .div_ceil(c.target_ongoing())
            .max(u32::from(!self.idle.is_empty()));
        by_load.clamp(c.min_replicas, c.max_replicas.max(c.min_replicas))
    }

    /// The next thing to do to serve the queue or to follow the load, given the time.
    pub(crate) fn next_action(&mut self, now: Instant) -> Action {
        let has_work =
            !self.queue.is_empty() || !self.background.is_empty() || !self.idle.is_empty();
        match self.phase {
            ModelPhase::Unloaded if has_work || self.config.min_replicas > 0 => {
                return Action::Load
            }
            ModelPhase::Ready => {}
            _ => return Action::Nothing,
        }
        let live = self.live().count() as u32;
        let wanted = self.wanted();
        if wanted > live {
            self.wants_fewer_since = None;
            let since = *self.wants_more_since.get_or_insert(now);
            let waited =
                now.duration_since(since) >= Duration::from_millis(self.config.upscale_delay_ms);
            if live == 0 || waited {
                self.wants_more_since = None;
                return Action::StartReplica {
                    reason: format!(
                        "{} ongoing, target {} per replica",
                        self.ongoing(),
                        self.config.target_ongoing()
                    ),
                };
            }
            return Action::Nothing;
        }
        self.wants_more_since = None;
        if wanted < live {
            let idle = self.live().find(|(_, r)| r.busy == 0).map(|(k, _)| *k);
            let Some(key) = idle else {
                return Action::Nothing;
            };
            let last_one = live == 1;
            let quiet = now.duration_since(self.last_activity);
            if last_one {
                if !has_work && quiet >= self.config.idle_timeout() {
                    return Action::StopReplica {
                        key,
                        reason: format!("idle for {}s", quiet.as_secs()),
                    };
                }
                return Action::Nothing;
            }
            let since = *self.wants_fewer_since.get_or_insert(now);
            if now.duration_since(since) >= Duration::from_secs(self.config.downscale_delay_s) {
                self.wants_fewer_since = None;
                return Action::StopReplica {
                    key,
                    reason: format!(
                        "{} ongoing, {live} replicas more than needed",
                        self.ongoing()
                    ),
                };
            }
            return Action::Nothing;
        }
        self.wants_fewer_since = None;
        if live == 0 && self.replicas.is_empty() && !has_work && self.config.min_replicas == 0 {
            return Action::Unload;
        }
        Action::Nothing
    }

    /// Pairs the next waiting job (interactive before background, tenants in turn within
    /// each) with a replica that has a free slot (see [`Self::place`]). Without a free slot
    /// nothing leaves the queue: a replica is never handed a job it would have to queue
    /// itself, where the order would no longer be fair.
    pub(crate) fn next_assignment(&mut self, now: Instant) -> Option<(ReplicaKey, EngineJob)> {
        if self.phase != ModelPhase::Ready {
            return None;
        }
        let slots = self.config.slots.max(1);
        let free: Vec<(ReplicaKey, u32)> = self
            .replicas
            .iter()
            .filter(|(_, r)| !r.stopping && r.busy < slots)
            .map(|(k, r)| (*k, r.busy))
            .collect();
        if free.is_empty() {
            return None;
        }
        let (mut job, free) = match self.queue.pop().or_else(|| self.background.pop()) {
            Some(job) => (job, free),
            None => {
                // With the idle job, at least half the slots still free (never a replica's
                // only slot): whoever comes next has room, and the engine gives up a paused
                // idle sequence when the last slot is taken (see the scheduler).
                let roomy: Vec<(ReplicaKey, u32)> = free
                    .into_iter()
                    .filter(|(_, busy)| 2 * (busy + 1) <= slots)
                    .collect();
                if roomy.is_empty() {
                    return None;
                }
                (self.idle.pop()?, roomy)
            }
        };
        let key = self.place(&job, &free, now);
        if let Some(info) = self.replicas.get_mut(&key) {
            info.busy += 1;
        }
        if let Some(started) = self.load_started {
            // The part of this job's wait that overlapped the load.
            let from = job.enqueued_at.max(started);
            let until = started + self.last_load.unwrap_or_default();
            job.load_wait = until.saturating_duration_since(from);
        }
        self.last_activity = now;
        Some((key, job))
    }

    /// Which of the replicas with a free slot (`free`, with their busy slots) runs `job`,
    /// among those busier than the least busy by at most half a replica's slots (as SGLang's
    /// router bounds the imbalance), in this order:
    /// 1. the one that was sent the longest prefix of its prompt (so that a conversation keeps
    ///    landing where its history is cached);
    /// 2. where adapters run on the model, the home of the job's adapter set, else the one
    ///    with the fewest sets (see [`SetHomes`]);
    /// 3. the least busy, then the lowest key.
    fn place(&mut self, job: &EngineJob, free: &[(ReplicaKey, u32)], now: Instant) -> ReplicaKey {
        let (least, least_busy) = *free
            .iter()
            .min_by_key(|(_, busy)| *busy)
            .expect("a free replica");
        let max_imbalance = (self.config.slots / 2).max(1);
        let near: Vec<(ReplicaKey, u32)> = free
            .iter()
            .copied()
            .filter(|(_, busy)| *busy <= least_busy + max_imbalance)
            .collect();
        let set = job.request.adapters.key();
        let by_set = self.homes.applies(&set, now);
        let home = by_set
            .then(|| self.homes.home(&set, now))
            .flatten()
            .filter(|h| near.iter().any(|(k, _)| k == h));
        let mut chosen = None;
        let mut blocks = Vec::new();
        if self.config.prefix_cache {
            // Recorded with a single replica too: a second one may start before the next turn.
            blocks = prompt_blocks(&job.tenant, &set, &job.request.prompt);
            // Among equal matches the set's home wins: a set sent to a second replica once
            // (its home was full) matches its system prompt there too, and without this the
            // tie would go to the less busy and the set would spread again.
            chosen = near
                .iter()
                .map(|&(key, busy)| {
                    let matched = self.affinity.get(&key).map_or(0, |i| i.matched(&blocks));
                    (matched, Some(key) == home, Reverse(busy), Reverse(key), key)
                })
                .max()
                .filter(|(matched, ..)| *matched > 0)
                .map(|(.., key)| key);
        }
        if chosen.is_none() && by_set {
            chosen = home.or_else(|| {
                near.iter()
                    .map(|&(key, busy)| (self.homes.sets_on(key, now), busy, key))
                    .min()
                    .map(|(.., key)| key)
            });
        }
        let chosen = chosen.unwrap_or(least);
        if self.config.prefix_cache {
            self.affinity.entry(chosen).or_default().record(&blocks);
        }
        if by_set {
            self.homes.record(set, chosen, now);
        }
        chosen
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

    /// The model failed (load, memory budget, repeated crashes): every waiting job is handed
    /// back to be answered.
    pub(crate) fn fail(&mut self, reason: String, now: Instant) -> Vec<EngineJob> {
        self.phase = ModelPhase::Failed { reason };
        self.failed_at = Some(now);
        self.drain_queue()
    }

    /// Hands back every waiting job without failing the model (a replica could not start
    /// and none is running).
    pub(crate) fn drain_queue(&mut self) -> Vec<EngineJob> {
        let mut jobs = self.queue.drain();
        jobs.extend(self.background.drain());
        jobs.extend(self.idle.drain());
        jobs
    }

    pub(crate) fn add_replica(&mut self, reason: &str) -> ReplicaKey {
        let key = ReplicaKey(self.next_key);
        self.next_key += 1;
        let from = self.live().count() as u32;
        self.replicas.insert(
            key,
            ReplicaInfo {
                busy: 0,
                stopping: false,
            },
        );
        self.record(from, from + 1, reason);
        key
    }

    /// A replica finished one job.
    pub(crate) fn slot_freed(&mut self, key: ReplicaKey, now: Instant) {
        if let Some(info) = self.replicas.get_mut(&key) {
            info.busy = info.busy.saturating_sub(1);
        }
        self.last_activity = now;
    }

    pub(crate) fn stopping(&mut self, key: ReplicaKey, reason: &str) {
        let from = self.live().count() as u32;
        if let Some(info) = self.replicas.get_mut(&key) {
            info.stopping = true;
            self.record(from, from - 1, reason);
        }
    }

    pub(crate) fn replica_gone(&mut self, key: ReplicaKey) {
        self.replicas.remove(&key);
        self.affinity.remove(&key);
        self.homes.forget(key);
    }

    /// A replica failed: decide whether to start another.
    pub(crate) fn replica_failed(&mut self, key: ReplicaKey, now: Instant) -> RestartDecision {
        self.replicas.remove(&key);
        self.affinity.remove(&key);
        self.homes.forget(key);
        self.restarts.on_failure(now)
    }

    pub(crate) fn unloaded(&mut self) {
        self.phase = ModelPhase::Unloaded;
        self.memory_bytes = 0;
    }

    pub(crate) fn can_restart_replica(&self) -> bool {
        self.phase == ModelPhase::Ready && (self.live().count() as u32) < self.config.max_replicas
    }

    pub(crate) fn has_live_replicas(&self) -> bool {
        self.live().count() > 0
    }

    pub(crate) fn record(&mut self, from: u32, to: u32, reason: &str) {
        tracing::info!(model = %self.config.id, from, to, %reason, "scaling");
        self.last_scaling = Some(ScalingEvent {
            at: SystemTime::now(),
            from,
            to,
            reason: reason.to_owned(),
        });
    }

    pub(crate) fn status(&self) -> ModelStatus {
        let busy_slots = self.replicas.values().map(|r| r.busy).sum();
        ModelStatus {
            id: self.config.id.clone(),
            phase: self.phase.clone(),
            replicas: self.live().count() as u32,
            busy_replicas: self.replicas.values().filter(|r| r.busy > 0).count() as u32,
            slots_per_replica: self.config.slots,
            busy_slots,
            queued: self.queue.len() as u32,
            background_queued: (self.background.len() + self.idle.len()) as u32,
            min_replicas: self.config.min_replicas,
            max_replicas: self.config.max_replicas,
            n_ctx: self.config.n_ctx,
            replica_restarts: self.restarts.total(),
            loads: self.loads,
            last_load_ms: self.last_load.map(|d| d.as_secs_f64() * 1000.0),
            memory_bytes: self.memory_bytes,
            gpu_memory_bytes: 0,
            device: String::new(),
            gpu_layers: None,
            last_scaling: self.last_scaling.clone(),
            prefix_cache: Default::default(),
            adapters_loaded: 0,
            adapter_memory_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineRequest;
    use genrt_functions::{GenerationParams, OutputSpec, RenderedPrompt};
    use tokio::sync::oneshot;

    fn job(now: Instant) -> EngineJob {
        job_of("acme", "hi", now)
    }

    /// A job of `tenant` whose prompt is `label`, so that tests can tell jobs apart.
    fn job_of(tenant: &str, label: &str, now: Instant) -> EngineJob {
        let (reply, _rx) = oneshot::channel();
        EngineJob {
            request: EngineRequest {
                prompt: RenderedPrompt {
                    user: label.into(),
                    ..RenderedPrompt::default()
                },
                params: GenerationParams::default().resolve(&GenerationParams::default()),
                output: OutputSpec::Text,
                adapters: Default::default(),
                deadline: now + Duration::from_secs(5),
                fault: None,
            },
            tenant: TenantId::parse(tenant).unwrap(),
            enqueued_at: now,
            load_wait: Duration::ZERO,
            priority: crate::Priority::Interactive,
            stream: None,
            reply,
        }
    }

    fn pool(capacity: usize, slots: u32, max_replicas: u32) -> (PoolState, Instant) {
        let mut config = ModelConfig::new("m", "/models/m.gguf");
        config.queue_capacity = capacity;
        config.slots = slots;
        config.max_replicas = max_replicas;
        config.idle_timeout_s = 10;
        config.upscale_delay_ms = 500;
        config.downscale_delay_s = 5;
        let now = Instant::now();
        (PoolState::new(config, RestartPolicy::default(), now), now)
    }

    fn ready(p: &mut PoolState, now: Instant) {
        p.load_started(now);
        p.load_finished(Duration::from_millis(30));
    }

    #[test]
    fn a_conversation_keeps_landing_on_the_replica_holding_its_history_within_a_bound() {
        let (mut p, now) = pool(64, 4, 2);
        ready(&mut p, now);
        let (a, b) = (p.add_replica("test"), p.add_replica("test"));
        let history = "a long shared history, ".repeat(20);
        let turn = |k: usize| format!("{history} turn {k}");
        let send = |p: &mut PoolState, user: String| {
            p.admit(job_of("acme", &user, now), now).unwrap();
            p.next_assignment(now).unwrap().0
        };
        // Both idle: the first turn goes to the first, least busy replica.
        assert_eq!(send(&mut p, turn(0)), a);
        // Later turns follow it, though `b` is less busy, while the imbalance stays within
        // half a replica's slots (2).
        assert_eq!(send(&mut p, turn(1)), a);
        assert_eq!(send(&mut p, turn(2)), a);
        // `a` now has 3 busy and `b` none: beyond the bound, the least busy wins.
        assert_eq!(send(&mut p, turn(3)), b);
        // Another tenant's identical prompt does not follow the history.
        p.slot_freed(a, now);
        p.slot_freed(a, now);
        p.slot_freed(a, now);
        p.slot_freed(b, now);
        p.admit(job_of("globex", &turn(4), now), now).unwrap();
        let (key, _) = p.next_assignment(now).unwrap();
        assert_eq!(
            key, a,
            "ties go to the least busy, then the lowest key: no affinity needed"
        );
        p.admit(job_of("globex", &turn(5), now), now).unwrap();
        let (key, _) = p.next_assignment(now).unwrap();
        assert_eq!(key, a, "globex's own history is on `a` now");
        p.admit(job_of("acme", &format!("{history} turn 6"), now), now)
            .unwrap();
        let (key, _) = p.next_assignment(now).unwrap();
        assert_eq!(
            key, b,
            "acme's latest turn went to `b`, and `b` is less busy"
        );
    }

    /// A job of acme running with adapter `name` (none for "").
    fn job_with(name: &str, label: &str, now: Instant) -> EngineJob {
        let mut job = job_of("acme", label, now);
        job.request.adapters = crate::engine::AdapterSet::new((!name.is_empty()).then(|| {
            crate::engine::AdapterSpec {
                name: name.into(),
                path: format!("/adapters/{name}.gguf").into(),
                sha256: format!("sha-{name}"),
                scale: 1.0,
            }
        }));
        job
    }

    #[test]
    fn each_adapter_set_keeps_to_one_replica_and_sets_spread_over_replicas() {
        let (mut p, now) = pool(64, 8, 2);
        ready(&mut p, now);
        let (a, b) = (p.add_replica("test"), p.add_replica("test"));
        let send = |p: &mut PoolState, set: &str, i: usize| {
            p.admit(job_with(set, &format!("prompt {i}"), now), now)
                .unwrap();
            p.next_assignment(now).unwrap().0
        };
        // 16 streams over 4 adapters, arriving two by two: least-busy placement alone would
        // give each replica every set (and steps of 2 sequences).
        let mut placed: BTreeMap<&str, Vec<ReplicaKey>> = BTreeMap::new();
        for i in 0..16 {
            let set = ["w", "x", "y", "z"][(i / 2) % 4];
            placed.entry(set).or_default().push(send(&mut p, set, i));
        }
        assert_eq!(placed["w"], vec![a; 4]);
        assert_eq!(placed["x"], vec![b; 4]);
        assert_eq!(placed["y"], vec![a; 4]);
        assert_eq!(placed["z"], vec![b; 4]);
        // A set's home is left only beyond the imbalance bound (half of 8 slots): `a` is
        // full, so `w`'s next job goes to `b`, which becomes its home.
        for _ in 0..4 {
            p.slot_freed(b, now);
        }
        assert_eq!(send(&mut p, "w", 16), b);
        p.slot_freed(a, now);
        p.slot_freed(a, now);
        assert_eq!(send(&mut p, "w", 17), b);
        // With adapters running, the base is a set like the others, placed where fewer run
        // (`a` runs `y` only now, `b` runs `x`, `z` and `w`).
        assert_eq!(send(&mut p, "", 18), a);
        assert_eq!(send(&mut p, "", 19), a);
        // Once no adapter has run for a while, the base is placed by load alone again.
        let later = now + Duration::from_secs(60);
        for _ in 0..8 {
            p.slot_freed(a, later);
            p.slot_freed(b, later);
        }
        let mut by_load = Vec::new();
        for i in 0..4 {
            p.admit(job_with("", &format!("later {i}"), later), later)
                .unwrap();
            let (key, _) = p.next_assignment(later).unwrap();
            by_load.push(key);
        }
        assert_eq!(by_load, vec![a, b, a, b]);
    }

    #[test]
    fn a_sets_home_wins_a_tie_of_prefix_matches() {
        let (mut p, now) = pool(64, 8, 2);
        ready(&mut p, now);
        let (a, b) = (p.add_replica("test"), p.add_replica("test"));
        // One function's jobs: a long system prompt (several index blocks), one adapter.
        let system = "You write product copy for a fashion shop, in its house style. ".repeat(4);
        let send = |p: &mut PoolState, i: usize| {
            let mut job = job_with("w", &format!("item {i}"), now);
            job.request.prompt.system = Some(system.clone());
            p.admit(job, now).unwrap();
            p.next_assignment(now).unwrap().0
        };
        // Home `a` while it is at most 4 (the bound) busier than `b`...
        let first: Vec<ReplicaKey> = (0..5).map(|i| send(&mut p, i)).collect();
        assert_eq!(first, vec![a, a, a, a, a]);
        // ...then, `a` being 5 busier, the set goes to `b`, its new home...
        assert_eq!(send(&mut p, 5), b);
        // ...which now matches the system prompt as well as `a` does. With `a` idle again
        // and less busy than `b`, the set stays on its home rather than spreading.
        for _ in 0..5 {
            p.slot_freed(a, now);
        }
        let after: Vec<ReplicaKey> = (6..9).map(|i| send(&mut p, i)).collect();
        assert_eq!(
            after,
            vec![b, b, b],
            "ties on the prefix go to the set's home"
        );
    }

    #[test]
    fn a_replica_that_goes_is_no_sets_home() {
        let (mut p, now) = pool(64, 8, 2);
        ready(&mut p, now);
        let (a, b) = (p.add_replica("test"), p.add_replica("test"));
        p.admit(job_with("w", "one", now), now).unwrap();
        assert_eq!(p.next_assignment(now).unwrap().0, a);
        p.replica_gone(a);
        let c = p.add_replica("test");
        // `b` and `c` both idle with no set: the lowest key, not the gone home.
        p.admit(job_with("w", "two", now), now).unwrap();
        assert_eq!(p.next_assignment(now).unwrap().0, b);
        p.admit(job_with("w", "three", now), now).unwrap();
        assert_eq!(
            p.next_assignment(now).unwrap().0,
            b,
            "w's home is `b` now, not {c:?}"
        );
    }

    #[test]
    fn first_job_loads_then_starts_a_replica_at_once_then_runs() {
        let (mut p, now) = pool(4, 2, 2);
        assert_eq!(p.next_action(now), Action::Nothing);
        p.admit(job(now), now).unwrap();
        assert_eq!(p.next_action(now), Action::Load);
        p.load_started(now);
        assert_eq!(
            p.next_action(now),
            Action::Nothing,
            "no second load while loading"
        );
        p.load_finished(Duration::from_millis(30));
        assert!(
            matches!(p.next_action(now), Action::StartReplica { .. }),
            "no delay from zero"
        );
        let key = p.add_replica("test");
        let (assigned, job) = p.next_assignment(now).unwrap();
        assert_eq!(assigned, key);
        assert_eq!(job.load_wait, Duration::from_millis(30));
        assert_eq!(p.status().busy_slots, 1);
        assert_eq!(p.status().last_scaling.unwrap().to, 1);
    }

    fn background(mut job: EngineJob) -> EngineJob {
        job.priority = crate::Priority::Background;
        job
    }

    /// Hands out jobs one at a time through a single one-slot replica, freeing the slot after
    /// each, and returns their labels in the order they were dispatched.
    fn dispatch_all(p: &mut PoolState, now: Instant) -> Vec<String> {
        let mut order = Vec::new();
        while let Some((key, job)) = p.next_assignment(now) {
            assert!(p.next_assignment(now).is_none(), "one slot, one job");
            order.push(job.request.prompt.user);
            p.slot_freed(key, now);
        }
        order
    }

    #[test]
    fn the_queue_is_bounded_and_background_work_has_its_own_bound() {
        let (mut p, now) = pool(2, 1, 1);
        p.admit(job_of("a", "1", now), now).unwrap();
        p.admit(job_of("b", "2", now), now).unwrap();
        let (_, err) = p.admit(job_of("c", "3", now), now).unwrap_err();
        assert_eq!(err, EngineError::Overloaded { queued: 2 });
        p.admit(background(job_of("c", "4", now)), now).unwrap();
    }

    #[test]
    fn a_tenant_at_its_bound_is_refused_while_others_are_admitted() {
        let (mut p, now) = pool(4, 1, 1);
        assert_eq!(p.config.tenant_queue_capacity(), 2, "half by default");
        p.admit(job_of("a", "a1", now), now).unwrap();
        p.admit(job_of("a", "a2", now), now).unwrap();
        let (refused, err) = p.admit(job_of("a", "a3", now), now).unwrap_err();
        assert_eq!(err, EngineError::Overloaded { queued: 2 });
        assert_eq!(refused.request.prompt.user, "a3");
        p.admit(job_of("b", "b1", now), now).unwrap();
        p.admit(job_of("b", "b2", now), now).unwrap();
        // Both tenants at their share: the global bound now refuses a third tenant.
        let (_, err) = p.admit(job_of("c", "c1", now), now).unwrap_err();
        assert_eq!(err, EngineError::Overloaded { queued: 4 });
        // The tenant bound is per queue: a's prewarming is still admitted.
        p.admit(background(job_of("a", "a-bg", now)), now).unwrap();
        assert_eq!(p.status().queued, 4);
        assert_eq!(p.status().background_queued, 1);
        // Once one of a's jobs runs, a may queue again.
        ready(&mut p, now);
        p.add_replica("test");
        let (_, first) = p.next_assignment(now).unwrap();
        assert_eq!(first.request.prompt.user, "a1");
        p.admit(job_of("a", "a3", now), now).unwrap();
    }

    #[test]
    fn the_tenant_bound_can_be_set_and_is_at_least_one() {
        let (mut p, now) = pool(1, 1, 1);
        assert_eq!(p.config.tenant_queue_capacity(), 1);
        p.config.queue_capacity = 10;
        p.config.tenant_queue_capacity = 3;
        for i in 0..3 {
            p.admit(job_of("a", &i.to_string(), now), now).unwrap();
        }
        let (_, err) = p.admit(job_of("a", "3", now), now).unwrap_err();
        assert_eq!(err, EngineError::Overloaded { queued: 3 });
    }

    #[test]
    fn a_tenant_behind_a_long_backlog_is_among_the_next_two_dispatched() {
        let (mut p, now) = pool(256, 1, 1);
        ready(&mut p, now);
        p.add_replica("test");
        for i in 0..100 {
            p.admit(job_of("a", &format!("a{i}"), now), now).unwrap();
        }
        p.admit(job_of("b", "b", now), now).unwrap();
        let order = dispatch_all(&mut p, now);
        assert_eq!(order.len(), 101);
        let b_at = order.iter().position(|l| l == "b").unwrap();
        assert!(b_at < 2, "b dispatched at {b_at}: {:?}", &order[..3]);
    }

    #[test]
    fn each_tenant_keeps_its_own_order_while_tenants_take_turns() {
        let (mut p, now) = pool(64, 1, 1);
        ready(&mut p, now);
        p.add_replica("test");
        for (tenant, label) in [
            ("a", "a0"),
            ("a", "a1"),
            ("b", "b0"),
            ("a", "a2"),
            ("b", "b1"),
            ("a", "a3"),
        ] {
            p.admit(job_of(tenant, label, now), now).unwrap();
        }
        assert_eq!(
            dispatch_all(&mut p, now),
            ["a0", "b0", "a1", "b1", "a2", "a3"]
        );
    }

    #[test]
    fn background_runs_only_when_no_interactive_work_waits_and_is_fair_too() {
        let (mut p, now) = pool(64, 1, 1);
        ready(&mut p, now);
        for label in ["a-bg0", "a-bg1", "a-bg2"] {
            p.admit(background(job_of("a", label, now)), now).unwrap();
        }
        p.admit(background(job_of("b", "b-bg0", now)), now).unwrap();
        p.admit(job_of("c", "c0", now), now).unwrap();
        p.admit(job_of("a", "a0", now), now).unwrap();
        p.add_replica("test");
        let (key, first) = p.next_assignment(now).unwrap();
        assert_eq!(first.request.prompt.user, "c0");
        p.slot_freed(key, now);
        // Interactive work arriving while background work waits still goes first.
        p.admit(job_of("b", "b0", now), now).unwrap();
        assert_eq!(
            dispatch_all(&mut p, now),
            ["a0", "b0", "a-bg0", "b-bg0", "a-bg1", "a-bg2"]
        );
    }

    #[test]
    fn idle_work_starts_only_where_half_the_slots_are_free() {
        let (mut p, now) = pool(16, 4, 1);
        ready(&mut p, now);
        let key = p.add_replica("test");
        let mut shadow = job_of("a", "shadow", now);
        shadow.priority = crate::Priority::Idle;
        p.admit(shadow, now).unwrap();
        p.admit(background(job_of("a", "bg", now)), now).unwrap();
        p.admit(job_of("a", "i0", now), now).unwrap();
        p.admit(job_of("a", "i1", now), now).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| p.next_assignment(now))
            .map(|(_, j)| j.request.prompt.user)
            .collect();
        // Interactive, then background; the shadow would take a third of four slots.
        assert_eq!(order, ["i0", "i1", "bg"]);
        assert_eq!(p.status().background_queued, 1);
        p.slot_freed(key, now);
        assert!(
            p.next_assignment(now).is_none(),
            "two of four slots still busy"
        );
        p.slot_freed(key, now);
        let (_, started) = p.next_assignment(now).unwrap();
        assert_eq!(started.request.prompt.user, "shadow");
        // Never where it would leave less than half the slots free.
        let mut second = job_of("b", "shadow-2", now);
        second.priority = crate::Priority::Idle;
        p.admit(second, now).unwrap();
        assert!(
            p.next_assignment(now).is_none(),
            "2 of 4 busy with it would be 3"
        );
    }

    #[test]
    fn idle_work_loads_nothing_and_needs_a_serving_replica() {
        let (mut p, now) = pool(16, 4, 1);
        let mut shadow = job_of("a", "shadow", now);
        shadow.priority = crate::Priority::Idle;
        let (_, err) = p.admit(shadow, now).unwrap_err();
        assert_eq!(err, EngineError::Overloaded { queued: 0 });
        assert_eq!(p.next_action(now), Action::Nothing, "no load for a shadow");
        // A one-slot replica never takes one.
        let (mut p, now) = pool(16, 1, 1);
        ready(&mut p, now);
        p.add_replica("test");
        let mut shadow = job_of("a", "shadow", now);
        shadow.priority = crate::Priority::Idle;
        p.admit(shadow, now).unwrap();
        assert!(p.next_assignment(now).is_none());
    }

    #[test]
    fn a_failure_hands_back_every_tenants_waiting_jobs() {
        let (mut p, now) = pool(8, 1, 1);
        p.admit(job_of("a", "a0", now), now).unwrap();
        p.admit(job_of("b", "b0", now), now).unwrap();
        p.admit(background(job_of("a", "a-bg", now)), now).unwrap();
        let drained: Vec<String> = p
            .drain_queue()
            .into_iter()
            .map(|j| j.request.prompt.user)
            .collect();
        assert_eq!(drained, ["a0", "b0", "a-bg"]);
        assert_eq!((p.status().queued, p.status().background_queued), (0, 0));
        assert_eq!(
            p.next_action(now),
            Action::Nothing,
            "nothing left to load for"
        );
    }

    #[test]
    fn jobs_fill_slots_and_interactive_work_goes_first() {
        let (mut p, now) = pool(8, 2, 1);
        ready(&mut p, now);
        let mut bg = job(now);
        bg.priority = crate::Priority::Background;
        p.admit(bg, now).unwrap();
        p.admit(job(now), now).unwrap();
        p.admit(job(now), now).unwrap();
        p.add_replica("test");
        let (_, first) = p.next_assignment(now).unwrap();
        assert_eq!(first.priority, crate::Priority::Interactive);
        let (_, second) = p.next_assignment(now).unwrap();
        assert_eq!(second.priority, crate::Priority::Interactive);
        assert!(p.next_assignment(now).is_none(), "both slots busy");
        assert_eq!(p.status().background_queued, 1);
    }

    #[test]
    fn scale_up_waits_for_the_upscale_delay_and_stops_at_the_maximum() {
        let (mut p, now) = pool(16, 2, 3);
        ready(&mut p, now);
        for _ in 0..6 {
            p.admit(job(now), now).unwrap();
        }
        assert!(matches!(p.next_action(now), Action::StartReplica { .. }));
        p.add_replica("test");
        while p.next_assignment(now).is_some() {}
        assert_eq!(
            p.next_action(now),
            Action::Nothing,
            "4 waiting, but the delay has not passed"
        );
        let later = now + Duration::from_millis(600);
        assert!(matches!(p.next_action(later), Action::StartReplica { .. }));
        p.add_replica("test");
        let later = later + Duration::from_millis(10);
        assert_eq!(
            p.next_action(later),
            Action::Nothing,
            "each step up waits its own delay"
        );
        let later = later + Duration::from_millis(600);
        assert!(matches!(p.next_action(later), Action::StartReplica { .. }));
        p.add_replica("test");
        let later = later + Duration::from_secs(5);
        assert_eq!(p.next_action(later), Action::Nothing, "at max_replicas");
    }

    #[test]
    fn idle_pool_scales_down_then_to_zero_then_unloads() {
        let (mut p, now) = pool(8, 1, 2);
        ready(&mut p, now);
        let a = p.add_replica("test");
        let b = p.add_replica("test");
        p.admit(job(now), now).unwrap();
        let (busy, _) = p.next_assignment(now).unwrap();
        assert_eq!(
            p.next_action(now),
            Action::Nothing,
            "downscale waits for its delay"
        );
        let later = now + Duration::from_secs(6);
        let Action::StopReplica { key, .. } = p.next_action(later) else {
            panic!("expected a stop")
        };
        assert_ne!(key, busy, "a busy replica is never stopped");
        p.stopping(key, "test");
        p.replica_gone(key);
        p.slot_freed(busy, later);
        assert_eq!(
            p.next_action(later + Duration::from_secs(5)),
            Action::Nothing,
            "not idle long enough"
        );
        let idle = later + Duration::from_secs(11);
        let Action::StopReplica { key, .. } = p.next_action(idle) else {
            panic!("expected a stop")
        };
        p.stopping(key, "idle");
        assert_eq!(
            p.next_action(idle),
            Action::Nothing,
            "waits for the replica to stop"
        );
        p.replica_gone(key);
        assert_eq!(p.next_action(idle), Action::Unload);
        p.unloaded();
        assert_eq!(p.status().phase, ModelPhase::Unloaded);
        let _ = (a, b);
    }

    #[test]
    fn min_replicas_keeps_the_model_loaded() {
        let (mut p, now) = pool(8, 1, 2);
        p.config.min_replicas = 1;
        assert_eq!(p.next_action(now), Action::Load);
        ready(&mut p, now);
        assert!(matches!(p.next_action(now), Action::StartReplica { .. }));
        p.add_replica("test");
        assert_eq!(
            p.next_action(now + Duration::from_secs(3600)),
            Action::Nothing
        );
    }

    #[test]
    fn a_failed_model_refuses_for_a_while_then_retries() {
        let (mut p, now) = pool(4, 1, 1);
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
        assert_eq!(p.next_action(later), Action::Load);
    }
}

//! Runs the durable queue of asynchronous invocations (async mode, batch items, trigger
//! calls) on this node: claims due work in turn from each tenant with queued work, runs it
//! through the actor tree at background priority, heartbeats its leases, retries retryable
//! failures with exponential backoff, and writes each end together with the webhook
//! deliveries it causes.
//!
//! Why not a queue crate (apalis and the like): they keep jobs in tables of their own, so an
//! invocation's status would live in two places, and the API's reads, cursor pagination,
//! cancellation and idempotency all work on the `invocations` row. The queue here is that row
//! plus a lease (see `store/jobs.rs`), which is the part such crates would have provided.

mod events;
mod run;

pub use events::{delivery_rows, event_payload};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::QueueConfig;
use crate::invocation::InvocationService;
use crate::registry::ModelRegistry;
use crate::store::InvocationRow;
use crate::store::Store;

/// How often expired leases of other nodes are looked for.
const RECLAIM_EVERY: Duration = Duration::from_secs(2);

/// This node's view of the queue: what it runs now, and how to wake its loop.
pub struct JobQueue {
    pub node: String,
    config: QueueConfig,
    wake: Notify,
    stopping: std::sync::atomic::AtomicBool,
    /// Shutdown has begun: claim nothing new, but keep heartbeating what runs, which may
    /// still finish while HTTP requests drain.
    draining: std::sync::atomic::AtomicBool,
    /// Invocations running here, with the signal that cancels each.
    running: Mutex<HashMap<Uuid, Arc<Notify>>>,
}

impl JobQueue {
    pub fn new(node: String, config: QueueConfig) -> Self {
        Self {
            node,
            config,
            wake: Notify::new(),
            stopping: Default::default(),
            draining: Default::default(),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// New work was committed on this node: look for it now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops a running invocation of this node within one decode step. Returns false when it
    /// does not run here (another node will see the request at its next heartbeat).
    pub fn cancel_local(&self, id: Uuid) -> bool {
        match self.running.lock().expect("running lock").get(&id) {
            Some(signal) => {
                signal.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().expect("running lock").len()
    }

    fn running_ids(&self) -> Vec<Uuid> {
        self.running
            .lock()
            .expect("running lock")
            .keys()
            .copied()
            .collect()
    }

    /// Stops claiming; running work is handed back by [`release`](Self::release).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// The first step of shutdown: no new work is claimed from now on.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn retry_delay(&self, attempt: i32) -> Duration {
        let exp = attempt.clamp(1, 20) as u32 - 1;
        let base = self
            .config
            .retry_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.config.retry_max_ms);
        // Up to 20% jitter, so that work failed together does not retry together.
        let jitter = rand::random::<f64>() * 0.2 * base as f64;
        Duration::from_millis(base + jitter as u64)
    }
}

/// What the claim loop and the runs it starts need: its own handles, not the app's state.
pub struct QueueRunner {
    pub store: Store,
    pub queue: Arc<JobQueue>,
    pub invocations: InvocationService,
    /// Claims wait for its first sync: before it, a model or adapter registered earlier is
    /// not served here yet, and work on it would fail as `unknown_model` for good.
    pub registry: ModelRegistry,
    /// Wakes the webhook delivery loop when a run committed deliveries.
    pub deliveries: Arc<Notify>,
}

impl QueueRunner {
    pub(crate) fn deliveries_wake(&self) {
        self.deliveries.notify_one();
    }
}

/// The claim loop. Ends when [`JobQueue::stop`] is called.
pub async fn run(state: Arc<QueueRunner>) {
    let queue = &state.queue;
    while !state.registry.is_synced() {
        if queue.stopping() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lease = Duration::from_secs(queue.config.lease_s);
    let poll = Duration::from_millis(queue.config.poll_ms);
    let heartbeat_every = lease / 3;
    let mut last_heartbeat = Instant::now();
    let mut last_reclaim = Instant::now() - RECLAIM_EVERY;
    let mut turn = 0usize;
    while !queue.stopping() {
        if last_reclaim.elapsed() >= RECLAIM_EVERY {
            last_reclaim = Instant::now();
            match state.store.reclaim_leases(false).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(reclaimed = n, "took back expired leases"),
                Err(err) => tracing::warn!(error = %err, "reclaiming leases failed"),
            }
        }
        let running = queue.running_ids();
        if !running.is_empty() {
            let cancelled = if last_heartbeat.elapsed() >= heartbeat_every {
                last_heartbeat = Instant::now();
                state.store.heartbeat(&queue.node, &running, lease).await
            } else {
                state.store.cancel_requested(&queue.node, &running).await
            };
            match cancelled {
                Ok(ids) => {
                    for id in ids {
                        queue.cancel_local(id);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
            }
        }
        let free = queue
            .config
            .concurrency
            .saturating_sub(queue.running_count());
        if free > 0 && !queue.draining() {
            match claim(&state, free, &mut turn, lease).await {
                Ok(rows) => {
                    for row in rows {
                        spawn_job(state.clone(), row);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "claiming queued invocations failed"),
            }
        }
        let _ = tokio::time::timeout(poll, queue.wake.notified()).await;
    }
}

/// Takes up to `free` due invocations, a fair share from each tenant with queued work, the
/// starting tenant rotating between rounds.
async fn claim(
    state: &QueueRunner,
    free: usize,
    turn: &mut usize,
    lease: Duration,
) -> Result<Vec<InvocationRow>, sea_orm::DbErr> {
    let mut tenants = state.store.tenants_with_queued_work(Utc::now()).await?;
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    tenants.sort();
    let start = *turn % tenants.len();
    tenants.rotate_left(start);
    *turn = turn.wrapping_add(1);
    let share = free.div_ceil(tenants.len()).max(1);
    let mut claimed = Vec::new();
    for tenant in tenants {
        let left = free - claimed.len();
        if left == 0 {
            break;
        }
        let rows = state
            .store
            .claim(&tenant, &state.queue.node, share.min(left) as u64, lease)
            .await?;
        claimed.extend(rows);
    }
    Ok(claimed)
}

fn spawn_job(state: Arc<QueueRunner>, row: InvocationRow) {
    let cancel = Arc::new(Notify::new());
    state
        .queue
        .running
        .lock()
        .expect("running lock")
        .insert(row.id, Arc::clone(&cancel));
    tokio::spawn(async move {
        let id = row.id;
        run::run_job(&state, row, cancel).await;
        state
            .queue
            .running
            .lock()
            .expect("running lock")
            .remove(&id);
        state.queue.wake();
    });
}

/// At shutdown: stop claiming, stop what runs here and hand it back to the queue (without
/// using up an attempt) so that another node, or the next start, runs it.
pub async fn release(state: &QueueRunner) {
    state.queue.stop();
    for id in state.queue.running_ids() {
        state.queue.cancel_local(id);
    }
    match state.store.release_leases(&state.queue.node).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(released = n, "returned running invocations to the queue"),
        Err(err) => tracing::warn!(error = %err, "returning leases failed; they will expire"),
    }
}

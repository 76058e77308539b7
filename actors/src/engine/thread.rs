//! The dedicated OS thread of one replica. It owns the inference context for the replica's
//! whole life; jobs arrive over a channel and replies leave through each job's oneshot.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::scheduler::{Scheduler, SchedulerConfig};
use super::{AdapterCache, EngineError, EngineJob, PrefixCacheStats, Session, Weights};
use crate::ModelConfig;

/// What the engine thread tells its replica actor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EngineEvent {
    /// A job was answered: one slot is free for the next one.
    Finished,
    /// The engine panicked or failed; the thread has exited and the context is gone.
    Died(String),
}

pub(crate) struct EngineThread {
    jobs: Option<SyncSender<EngineJob>>,
    stopping: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
}

/// When the engine thread last finished a step (or took a job), for the replica's watchdog.
/// Milliseconds since `epoch` in an atomic, so that the thread reports without locking.
pub(crate) struct Progress {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The moment of the last beat.
    pub(crate) fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl EngineThread {
    /// Starts the thread and waits until its context exists, so that a context that cannot be
    /// created fails the replica's start and reaches its supervisor.
    pub(crate) async fn spawn(
        name: String,
        weights: Arc<dyn Weights>,
        adapters: Option<Arc<AdapterCache>>,
        model: ModelConfig,
        stats: Arc<PrefixCacheStats>,
        events: Box<dyn Fn(EngineEvent) + Send>,
    ) -> Result<Self, EngineError> {
        // Capacity = slots: the pool only sends a replica as many jobs as it has free slots,
        // so a full channel means a scheduling bug, reported by `submit`, never a queue.
        let (jobs, rx) = sync_channel::<EngineJob>(model.slots.max(1) as usize);
        let step_tokens = model.step_tokens.max(1) as usize;
        let prefix_cache = model.prefix_cache;
        let (ready_tx, ready_rx) = oneshot::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread_stopping = Arc::clone(&stopping);
        let progress = Arc::new(Progress::new());
        let thread_progress = Arc::clone(&progress);
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut ready = Some(ready_tx);
                let result = weights.run_session(&model, &mut |session| {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                    let config = SchedulerConfig {
                        slots: session.slots(),
                        streams: session.streams(),
                        prefix_cache,
                        step_tokens,
                    };
                    let running = Running {
                        jobs: &rx,
                        stopping: &thread_stopping,
                        progress: &thread_progress,
                        scheduler: Scheduler::new(config, Arc::clone(&stats), adapters.clone()),
                        events: &*events,
                    };
                    serve(session, running);
                });
                if let Err(err) = result {
                    match ready.take() {
                        Some(ready) => {
                            let _ = ready.send(Err(err));
                        }
                        None => events(EngineEvent::Died(err.to_string())),
                    }
                }
            })
            .map_err(|e| EngineError::Load(format!("cannot start engine thread: {e}")))?;
        let mut thread = Self {
            jobs: Some(jobs),
            stopping,
            handle: Some(handle),
            progress,
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(thread),
            Ok(Err(err)) => {
                thread.join().await;
                Err(err)
            }
            Err(_) => {
                thread.join().await;
                Err(EngineError::Crashed(
                    "engine thread exited while starting".into(),
                ))
            }
        }
    }

    #[expect(
        clippy::result_large_err,
        reason = "the refused job comes back whole so that its caller can still be answered"
    )]
    pub(crate) fn submit(&self, job: EngineJob) -> Result<(), EngineJob> {
        match self.jobs.as_ref().map(|tx| tx.try_send(job)) {
            Some(Ok(())) => Ok(()),
            Some(Err(TrySendError::Full(job) | TrySendError::Disconnected(job))) => Err(job),
            None => unreachable!("jobs sender is only taken by join"),
        }
    }

    /// Asks a running generation to stop, closes the job channel and waits for the thread, so
    /// that the context and this replica's share of the weights are freed when this returns.
    pub(crate) async fn join(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs.take();
        if let Some(handle) = self.handle.take() {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

impl EngineThread {
    pub(crate) fn last_progress(&self) -> Instant {
        self.progress.last()
    }

    /// Gives up on a thread that no longer makes progress: asks it to stop and closes its job
    /// channel, but does not wait, since a hung thread may never end. If it does come back it
    /// finds the stop flag, answers nobody (its callers were already answered) and exits; if
    /// it never does, its context stays allocated: a leak the operator sees as memory, which
    /// is better than a replica that holds its slots forever.
    pub(crate) fn abandon(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs.take();
        self.handle.take();
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        // Without `join` the thread still ends on its own once the channel is gone.
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// What the serving loop works with, besides the session.
struct Running<'a> {
    jobs: &'a Receiver<EngineJob>,
    stopping: &'a AtomicBool,
    progress: &'a Progress,
    scheduler: Scheduler,
    events: &'a dyn Fn(EngineEvent),
}

fn serve(session: &mut dyn Session, running: Running<'_>) {
    let Running {
        jobs,
        stopping,
        progress,
        mut scheduler,
        events,
    } = running;
    let finished = |n: usize| (0..n).for_each(|_| events(EngineEvent::Finished));
    let mut open = true;
    loop {
        // New jobs join between steps. With nothing running, block until one arrives.
        while open && scheduler.free_slots() > 0 {
            let job = if scheduler.active() == 0 {
                scheduler.park(session);
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            };
            progress.beat();
            match catch_unwind(AssertUnwindSafe(|| scheduler.admit(session, job))) {
                Ok(left) => finished(left),
                Err(payload) => return died(&mut scheduler, session, payload.as_ref(), events),
            }
        }
        if scheduler.active() == 0 {
            if open {
                continue;
            }
            return;
        }
        let stop = stopping.load(Ordering::Relaxed);
        let result = catch_unwind(AssertUnwindSafe(|| scheduler.step(session, stop)));
        progress.beat();
        match result {
            Ok(left) => finished(left),
            Err(payload) => return died(&mut scheduler, session, payload.as_ref(), events),
        }
    }
}

/// After a panic the context may be mid-update: answer everyone, report, and never reuse it.
fn died(
    scheduler: &mut Scheduler,
    session: &mut dyn Session,
    payload: &(dyn std::any::Any + Send),
    events: &dyn Fn(EngineEvent),
) {
    let reason = panic_message(payload);
    tracing::error!(%reason, "engine panicked");
    let _ = catch_unwind(AssertUnwindSafe(|| {
        scheduler.fail_all(session, EngineError::Crashed(reason.clone()))
    }));
    events(EngineEvent::Died(reason));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "engine panicked".to_owned())
}

//! The render pool: tenants' templates are compiled and rendered here, on a few dedicated
//! threads, never on the async workers, each job under the template limits (fuel, output
//! size, a memory budget) and a deadline.
//!
//! Why a pool of our own rather than `spawn_blocking`: a render that breaks its memory budget
//! or deadline stops its thread for good (see `genrt_functions::within_budget`), and tokio's
//! blocking pool would neither know nor replace it; its queue is also unbounded. Here the
//! queue is bounded (full: `overloaded`), a job abandoned at its deadline gets its thread
//! replaced (up to `max_threads` in all, stopped ones included), and the spec that caused it is
//! refused at once for a while (`REFUSED_FOR`) instead of stopping another thread.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genrt_actors::DeployedFunction;
use genrt_functions::{
    within_budget, Conversation, FunctionSpec, InputError, PreparedFunction, RenderedPrompt,
    SpecError, TemplateLimits, TenantId,
};
use moka::sync::Cache;
use serde_json::Value;

use crate::config::TemplatesConfig;

/// How long a spec whose render overran its deadline is refused without rendering.
const REFUSED_FOR: Duration = Duration::from_secs(600);
/// Overruns after which all of a tenant's renders are refused for `REFUSED_FOR`: each may
/// have cost a thread, and a tenant could otherwise deploy variant after variant.
const MAX_STRIKES: u32 = 2;
/// How long a job may wait in the queue for a thread before the caller is told to retry.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Why a render produced no prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum RenderError {
    /// The input or a template is at fault, limits included (`template_limit`).
    Input(InputError),
    /// The stored spec no longer compiles (it did when deployed).
    Spec(SpecError),
    /// Every render thread is busy and the queue is full, or the wait for a thread was long.
    Overloaded,
}

/// Runs one render; true when the caller gave up on it meanwhile (its thread then leaves).
type Job = Box<dyn FnOnce() -> bool + Send>;

/// A function version and its spec's digest: immutable together, so what is compiled or
/// refused for it stays true (a number alone can name another spec after a delete and a
/// new deploy).
type VersionKey = (TenantId, String, u32, String);

/// Bytes of rendered prompts kept for reuse.
const RENDERED_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Cheap to clone; every clone submits to the same threads.
#[derive(Clone)]
pub struct Renderer {
    shared: Arc<Shared>,
}

struct Shared {
    jobs: SyncSender<Job>,
    queue: Mutex<Receiver<Job>>,
    limits: TemplateLimits,
    deadline: Duration,
    max_threads: usize,
    /// Threads alive, stopped ones included.
    threads: AtomicUsize,
    prepared: Cache<VersionKey, Arc<PreparedFunction>>,
    /// Prompts rendered lately, by version and input: hot content is rendered once, and its
    /// invocations (the response cache's hits above all) skip the trip to a render thread.
    rendered: Cache<[u8; 32], Arc<RenderedPrompt>>,
    /// Versions whose render overran its deadline, with the message to answer.
    refused: Cache<VersionKey, String>,
    /// Overruns per tenant within `REFUSED_FOR`.
    strikes: Cache<TenantId, u32>,
}

/// A job's fate, decided once by whoever gets there first: the worker finishing it, or the
/// caller giving up on it.
const WAITING: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const ABANDONED: u8 = 3;

impl Renderer {
    pub fn new(config: &TemplatesConfig) -> Self {
        let (jobs, queue) = sync_channel(config.queue_capacity);
        let shared = Arc::new(Shared {
            jobs,
            queue: Mutex::new(queue),
            limits: config.limits(),
            deadline: Duration::from_millis(config.render_timeout_ms),
            max_threads: config.render_threads + config.spare_threads,
            threads: AtomicUsize::new(0),
            prepared: Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            rendered: Cache::builder()
                .weigher(|_, p: &Arc<RenderedPrompt>| {
                    let bytes = p.user.len() + p.system.as_ref().map_or(0, String::len) + 64;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .max_capacity(RENDERED_CACHE_BYTES)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            refused: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(REFUSED_FOR)
                .build(),
            strikes: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(REFUSED_FOR)
                .build(),
        });
        for _ in 0..config.render_threads {
            spawn_worker(&shared);
        }
        Self { shared }
    }

    /// The function's templates rendered with `input`, `conversation` placed around them.
    pub async fn render(
        &self,
        function: &Arc<DeployedFunction>,
        input: Value,
        conversation: Option<Arc<Conversation>>,
    ) -> Result<RenderedPrompt, RenderError> {
        let key: VersionKey = (
            function.tenant.clone(),
            function.name.as_str().to_owned(),
            function.version,
            function.digest.clone(),
        );
        let wrap = |prompt: RenderedPrompt| match &conversation {
            Some(c) => c.wrap(prompt),
            None => prompt,
        };
        let input_key = rendered_key(&key, &input);
        if let Some(prompt) = self.shared.rendered.get(&input_key) {
            return Ok(wrap((*prompt).clone()));
        }
        let shared = Arc::clone(&self.shared);
        let spec = function.spec.clone();
        let cache_key = key.clone();
        let prompt = self
            .run(&key, move || {
                let prepared = match shared.prepared.get(&cache_key) {
                    Some(p) => p,
                    None => {
                        let p = Arc::new(
                            PreparedFunction::with_limits(spec, shared.limits)
                                .map_err(RenderError::Spec)?,
                        );
                        shared.prepared.insert(cache_key, Arc::clone(&p));
                        p
                    }
                };
                prepared.render(&input).map_err(RenderError::Input)
            })
            .await?;
        self.shared
            .rendered
            .insert(input_key, Arc::new(prompt.clone()));
        Ok(wrap(prompt))
    }

    /// At deploy: compiles the spec's templates and renders them once with an empty input,
    /// under the limits, so that a template that exceeds them whatever the input is refused
    /// now. Other render errors (a variable the empty input lacks) are the input's business.
    pub async fn check(
        &self,
        tenant: &TenantId,
        name: &str,
        spec: &FunctionSpec,
    ) -> Result<(), RenderError> {
        // Not a version yet: version 0, which no stored version has, and its digest.
        let key = (tenant.clone(), format!("deploy:{name}"), 0, spec.digest());
        let limits = self.shared.limits;
        let spec = spec.clone();
        let result = self
            .run(&key, move || {
                let prepared =
                    PreparedFunction::with_limits(spec, limits).map_err(RenderError::Spec)?;
                prepared
                    .render(&serde_json::json!({}))
                    .map_err(RenderError::Input)
            })
            .await;
        match result {
            Err(RenderError::Input(InputError::TemplateLimit { template, message })) => {
                Err(RenderError::Input(InputError::TemplateLimit {
                    template,
                    message,
                }))
            }
            Err(RenderError::Input(_)) | Ok(_) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Runs `work` on a render thread under the limits and waits for it, at most the deadline
    /// once it has started.
    async fn run<T: Send + 'static>(
        &self,
        key: &VersionKey,
        work: impl FnOnce() -> Result<T, RenderError> + Send + 'static,
    ) -> Result<T, RenderError> {
        let shared = &self.shared;
        if let Some(message) = shared.refused.get(key) {
            return Err(limit(message));
        }
        if shared.strikes.get(&key.0).is_some_and(|n| n >= MAX_STRIKES) {
            return Err(limit(format!(
                "this tenant's templates overran their render deadline {MAX_STRIKES} times; its renders are refused for {} s",
                REFUSED_FOR.as_secs()
            )));
        }
        let fate = Arc::new(AtomicU8::new(WAITING));
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let (job_fate, budget, deadline) = (
            Arc::clone(&fate),
            shared.limits.max_memory_bytes,
            shared.deadline,
        );
        let job: Job = Box::new(move || {
            if job_fate
                .compare_exchange(WAITING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return false; // The caller stopped waiting before a thread was free.
            }
            let _ = started_tx.send(());
            let result = within_budget(budget, Instant::now() + deadline, work);
            let abandoned = job_fate
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err();
            let _ = done_tx.send(result);
            abandoned
        });
        match shared.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(RenderError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(RenderError::Overloaded),
        }
        if tokio::time::timeout(QUEUE_WAIT, started).await.is_err()
            && fate
                .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Err(RenderError::Overloaded);
        }
        let mut done = done;
        match tokio::time::timeout(deadline, &mut done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RenderError::Overloaded),
            Err(_) => {
                if fate
                    .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // It finished as the deadline passed: take the result after all.
                    return done.await.unwrap_or(Err(RenderError::Overloaded));
                }
                let message = format!("rendering took longer than {} ms", deadline.as_millis());
                shared.refused.insert(key.clone(), message.clone());
                let strikes = shared.strikes.get(&key.0).unwrap_or(0) + 1;
                shared.strikes.insert(key.0.clone(), strikes);
                tracing::warn!(tenant = %key.0, function = %key.1, version = key.2, "a template overran its render deadline; its thread is replaced and the spec refused for a while");
                // The thread running it is stopped or still busy: give the pool another.
                if shared.threads.load(Ordering::Acquire) < shared.max_threads {
                    spawn_worker(shared);
                }
                Err(limit(message))
            }
        }
    }
}

/// The rendered-prompt cache's key: the version and the input, hashed.
fn rendered_key(version: &VersionKey, input: &Value) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(version.0.as_str().as_bytes());
    hash.update([0]);
    hash.update(version.1.as_bytes());
    hash.update(version.2.to_le_bytes());
    hash.update(version.3.as_bytes());
    hash.update([0]);
    hash.update(input.to_string().as_bytes());
    hash.finalize().into()
}

fn limit(message: String) -> RenderError {
    RenderError::Input(InputError::TemplateLimit {
        template: "prompt".into(),
        message,
    })
}

fn spawn_worker(shared: &Arc<Shared>) {
    shared.threads.fetch_add(1, Ordering::AcqRel);
    let me = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("genrt-render".into())
        .spawn(move || {
            loop {
                let job = {
                    let queue = me.queue.lock().expect("render queue lock");
                    queue.recv()
                };
                let Ok(job) = job else { break };
                // A job that overran was given up on, and a thread started in this one's
                // place: this one leaves, so that the pool returns to its size.
                if job() {
                    break;
                }
            }
            me.threads.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(err) = spawned {
        shared.threads.fetch_sub(1, Ordering::AcqRel);
        tracing::error!(error = %err, "cannot start a render thread");
    }
}

//! Embeddings, for models configured with `embeddings = true`.
//!
//! Each such model gets one embedding thread, started on the first request and ended after the
//! model's `idle_timeout_s` without requests (scale to zero, like replicas). The thread owns
//! its weights and an embedding context (mean pooling), as an engine thread owns a generation
//! context: llama.cpp contexts are used from one thread only. Embeddings are short, one forward
//! pass per text and no decoding loop, so they do not go through the generation replicas'
//! continuous batching; a separate context also keeps generation's KV streams untouched.
//!
//! Requests wait in a bounded queue (full → `overloaded`). A panic while embedding fails that
//! request with `replica_failed`, ends the thread, and the next request starts a fresh one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::engine::{Backend, Embedding, EngineError, Placement};
use crate::{InvokeError, ModelConfig};

/// Requests that may wait for one model's embedding thread.
const QUEUE: usize = 32;

type Reply = oneshot::Sender<Result<Vec<Embedding>, InvokeError>>;

struct Request {
    texts: Vec<String>,
    reply: Reply,
}

pub(crate) struct EmbeddingService {
    config: ModelConfig,
    backend: Arc<dyn Backend>,
    /// The running thread's queue; `None` (or a closed one) means none runs.
    queue: Mutex<Option<SyncSender<Request>>>,
}

impl EmbeddingService {
    pub(crate) fn new(config: ModelConfig, backend: Arc<dyn Backend>) -> Self {
        Self {
            config,
            backend,
            queue: Mutex::new(None),
        }
    }

    pub(crate) async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>, InvokeError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Request { texts, reply: tx })?;
        rx.await.unwrap_or_else(|_| {
            Err(InvokeError::ReplicaFailed {
                reason: "the embedding thread stopped before answering".into(),
            })
        })
    }

    fn submit(&self, request: Request) -> Result<(), InvokeError> {
        let mut queue = self.queue.lock().expect("embedding queue lock");
        let request = match queue.as_ref() {
            None => request,
            Some(q) => match q.try_send(request) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(_)) => {
                    return Err(InvokeError::Overloaded {
                        model: self.config.id.clone(),
                        queued: QUEUE,
                    })
                }
                // The thread ended (idle, or after a panic): start another below.
                Err(TrySendError::Disconnected(request)) => request,
            },
        };
        let (tx, rx) = sync_channel::<Request>(QUEUE);
        let config = self.config.clone();
        let backend = Arc::clone(&self.backend);
        std::thread::Builder::new()
            .name(format!("embed-{}", config.id))
            .spawn(move || serve(config, backend, rx))
            .map_err(|e| InvokeError::Internal(format!("cannot start embedding thread: {e}")))?;
        tx.try_send(request)
            .map_err(|_| InvokeError::Internal("new embedding queue refused a request".into()))?;
        *queue = Some(tx);
        Ok(())
    }
}

fn serve(config: ModelConfig, backend: Arc<dyn Backend>, rx: std::sync::mpsc::Receiver<Request>) {
    let idle = Duration::from_secs(config.idle_timeout_s.max(1));
    let unavailable = |e: EngineError| InvokeError::ModelUnavailable {
        model: config.id.clone(),
        reason: e.to_string(),
    };
    // Where the model's own replicas run; a bad `main_gpu` already stopped the tree's start.
    let placement =
        Placement::decide(&config, &backend.devices()).unwrap_or_else(|_| Placement::cpu());
    let weights = match backend.load(&config, &placement) {
        Ok(w) => w,
        Err(e) => return fail_all(&rx, unavailable(e)),
    };
    let result = weights.run_embeddings(&config, &mut |embedder| {
        while let Ok(request) = match rx.recv_timeout(idle) {
            Err(RecvTimeoutError::Timeout) => return,
            other => other,
        } {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                request
                    .texts
                    .iter()
                    .map(|t| embedder.embed(t))
                    .collect::<Result<Vec<_>, _>>()
            }));
            match outcome {
                Ok(result) => {
                    let _ = request
                        .reply
                        .send(result.map_err(|e| InvokeError::from_engine(&config.id, e)));
                }
                Err(_) => {
                    let _ = request.reply.send(Err(InvokeError::ReplicaFailed {
                        reason: "the embedding engine panicked".into(),
                    }));
                    // The context may be inconsistent after a panic: end the thread.
                    return;
                }
            }
        }
    });
    if let Err(e) = result {
        fail_all(&rx, unavailable(e));
    }
}

/// Answers every waiting request with `err` (the queue closes when the receiver drops).
fn fail_all(rx: &std::sync::mpsc::Receiver<Request>, err: InvokeError) {
    tracing::warn!(error = %err, "embedding engine unavailable");
    while let Ok(request) = rx.try_recv() {
        let _ = request.reply.send(Err(err.clone()));
    }
}

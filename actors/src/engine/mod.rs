//! The inference engine. A backend loads weights; each replica runs one engine thread that
//! owns one inference context and runs the continuous-batching [`scheduler`] over it: up to
//! `slots` sequences share the context and one decode call per step.
//!
//! Async code never touches a context: it sends an [`EngineJob`] and awaits the job's reply
//! (and, when streaming, reads its token channel).

pub mod adapters;
mod cores;
pub mod devices;
pub mod gguf;
mod llama;
pub mod quantize;
pub(crate) mod scheduler;
mod text;
mod thread;
pub mod threadpool;
mod tokenize;
pub mod tool;

/// Compiled into every build rather than behind a feature: the runtime's in-process tests
/// need it, and a `testing` feature enabled by the test crate alone would give `cargo test`
/// and `make run` different feature sets, compiling the actor tree twice (see "Feature
/// unification" in runtime/Cargo.toml). It is a few hundred lines, and nothing starts it but
/// a test.
pub mod fake;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_functions::{OutputSpec, RenderedPrompt, SamplingParams, TenantId};
use tokio::sync::{mpsc, oneshot};

use crate::{Fault, FinishReason, ModelConfig};

pub use adapters::{ActiveSet, AdapterCache, AdapterKey, AdapterSet, AdapterSpec, LoadedAdapter};
pub use devices::{Device, DeviceKind, Placement};
pub use llama::{attach_thread_pool, llama_backend, load_backends, BackendsInfo, LlamaCppBackend};
pub use scheduler::ADAPTER_QUANTUM_STEPS;

pub(crate) use thread::{EngineEvent, EngineThread};

/// A token id of the model's vocabulary.
pub type TokenId = i32;
/// A llama.cpp sequence id: one per KV stream (the slots', then the prefix cache's).
pub type SeqId = i32;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model: {0}")]
    Load(String),
    #[error("prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the context of {n_ctx}")]
    PromptTooLong {
        prompt_tokens: u32,
        max_tokens: u32,
        n_ctx: u32,
    },
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("the output constraint cannot be used: {0}")]
    Grammar(String),
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error("cancelled")]
    Cancelled,
    #[error("engine crashed: {0}")]
    Crashed(String),
    /// The model's admission queue, or the caller's tenant's share of it, is full; `queued`
    /// counts the jobs waiting in whichever bound refused.
    #[error("{queued} invocations already waiting")]
    Overloaded { queued: usize },
    /// Loading another replica would exceed the configured memory budget.
    #[error("memory budget exceeded: {0}")]
    MemoryBudget(String),
}

/// Loads a model's weights. One per process; the weights it returns are shared by the
/// replicas of that model and freed when the last one drops them.
pub trait Backend: Send + Sync + 'static {
    /// Loads `model`'s weights with its layers where `placement` says.
    fn load(
        &self,
        model: &ModelConfig,
        placement: &Placement,
    ) -> Result<Arc<dyn Weights>, EngineError>;

    /// The devices of the loaded backends, with their memory as of now.
    fn devices(&self) -> Vec<Device> {
        vec![Device::host_cpu()]
    }

    /// Free memory of device `index` (llama.cpp's device index) now, if it can say.
    fn free_memory(&self, index: usize) -> Option<u64> {
        let _ = index;
        None
    }

    /// The model's repeating layers, read from the file without loading it, so that the
    /// memory split between host and GPU is known before the load.
    fn layer_count(&self, model: &ModelConfig) -> Result<u32, EngineError> {
        let _ = model;
        Ok(1)
    }

    /// Whether this engine can load the model at `path`: its architecture is known and its
    /// hyperparameters and vocabulary read, without the weights. The registry asks before a
    /// file is accepted, so that an unsupported model is refused at registration and not at
    /// its first invocation.
    fn probe(
        &self,
        path: &std::path::Path,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), tool::ToolError> {
        let _ = (path, cancelled);
        Ok(())
    }

    /// Whether this engine can load the LoRA adapter at `adapter` onto the model at `base`;
    /// asked after genrt's own reader checked the adapter against the base.
    fn probe_adapter(
        &self,
        base: &std::path::Path,
        adapter: &std::path::Path,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), tool::ToolError> {
        let _ = (base, adapter, cancelled);
        Ok(())
    }
}

/// Loaded weights.
pub trait Weights: Send + Sync + 'static {
    /// Bytes of KV cache one replica of `model` needs for all its slots, from the model's
    /// dimensions, so that the pool can check its memory budget before starting one.
    fn kv_bytes(&self, model: &ModelConfig) -> u64;

    /// Called on a replica's engine thread: creates an inference context, hands it to `serve`
    /// for the replica's whole life, and frees it after. A closure rather than a returned
    /// session keeps the context's borrow of the weights safe.
    fn run_session(
        &self,
        model: &ModelConfig,
        serve: &mut dyn FnMut(&mut dyn Session),
    ) -> Result<(), EngineError>;

    /// Like `run_session`, for an embedding context. Engines without one say so.
    fn run_embeddings(
        &self,
        model: &ModelConfig,
        serve: &mut dyn FnMut(&mut dyn Embedder),
    ) -> Result<(), EngineError> {
        let _ = serve;
        Err(EngineError::Load(format!(
            "model `{}` has no embedding engine",
            model.id
        )))
    }

    /// Loads the LoRA adapter at `path` for these weights. Called by the model's
    /// [`AdapterCache`] on any of its replicas' engine threads: loads of different adapters
    /// may run at once, and an engine serialises what its library needs serialised.
    /// The adapter keeps the weights alive: it must never outlive the model it belongs to.
    fn load_adapter(
        self: Arc<Self>,
        path: &std::path::Path,
    ) -> Result<Arc<dyn LoadedAdapter>, String> {
        let _ = path;
        Err("this engine has no LoRA adapters".into())
    }
}

/// One text's embedding: a unit vector, and the tokens it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub vector: Vec<f32>,
    pub tokens: u32,
}

/// An embedding context, used on its own thread.
pub trait Embedder {
    fn embed(&mut self, text: &str) -> Result<Embedding, EngineError>;
}

/// One token of a decode call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchItem {
    pub token: TokenId,
    pub pos: i32,
    pub seq: SeqId,
    pub logits: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: TokenId,
    pub end_of_generation: bool,
    pub piece: Vec<u8>,
}

/// One inference context, driven by the scheduler. Lives on, and is only touched by, its
/// engine thread. The methods are the primitives of continuous batching; the policy (which
/// sequences run, chunking, stopping) is the scheduler's.
pub trait Session {
    /// Concurrent sequences this context runs.
    fn slots(&self) -> usize;
    /// KV streams (sequence ids `0..streams`): the slots' and the prefix cache's.
    fn streams(&self) -> usize;
    /// Tokens one sequence may hold, prompt and completion together.
    fn n_ctx_per_seq(&self) -> u32;
    /// Most tokens one decode call takes.
    fn n_batch(&self) -> usize;
    fn tokenize(&self, prompt: &RenderedPrompt) -> Result<Vec<TokenId>, EngineError>;
    /// Prepares sampling for a sequence about to start in stream `seq` (whose KV is left as
    /// it is: the scheduler cuts it to the prefix it reuses).
    fn begin(
        &mut self,
        seq: SeqId,
        params: &SamplingParams,
        output: &OutputSpec,
    ) -> Result<(), EngineError>;
    fn decode(&mut self, batch: &[BatchItem]) -> Result<(), EngineError>;
    /// Samples (and accepts) the next token of `seq` from the logits at `batch_index`.
    fn sample(&mut self, seq: SeqId, batch_index: usize) -> Sampled;
    /// Drops a finished sequence's sampler; its KV stays, for the prefix cache.
    fn release(&mut self, seq: SeqId);
    /// Keeps only the first `len` positions of stream `seq`'s KV (0 empties it). Returns how
    /// many leading positions a sequence may go on from: `len`, or 0 when the stream had to
    /// be emptied (a model whose memory cannot drop part of a sequence).
    fn truncate(&mut self, seq: SeqId, len: usize) -> usize;
    /// Makes `to` hold exactly the first `len` positions of `from`'s KV as it is now (copies
    /// take effect in the order they are asked for, before the next decode). Returns what
    /// [`Session::truncate`] returns for `to`: `len`, or 0 when the copy could not be used
    /// and `to` was emptied.
    fn copy_prefix(&mut self, from: SeqId, to: SeqId, len: usize) -> usize;
    /// Applies `set`'s adapters to the next decode calls (the empty set: the base model).
    /// The session keeps the set until the next call, so that what its context points to
    /// stays loaded.
    fn set_adapters(&mut self, set: &ActiveSet) -> Result<(), EngineError> {
        match set.adapters.is_empty() {
            true => Ok(()),
            false => Err(EngineError::Load("this engine has no LoRA adapters".into())),
        }
    }
}

/// What the engine needs to produce one completion.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt: RenderedPrompt,
    pub params: SamplingParams,
    pub output: OutputSpec,
    /// LoRA adapters to run with; empty for the base model.
    pub adapters: AdapterSet,
    pub deadline: Instant,
    pub fault: Option<Fault>,
}

/// Counters of a model's prefix caches, summed over its replicas (each replica's engine
/// thread adds to them as sequences finish); shown by `GET /v1/models` and the metrics.
#[derive(Debug, Default)]
pub struct PrefixCacheStats {
    /// Sequences that looked for a cached prefix (every one, with the cache on).
    pub lookups: AtomicU64,
    /// Of those, the ones that reused one.
    pub hits: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens whose KV came from the cache.
    pub cached_tokens: AtomicU64,
    /// Cached prefixes dropped to make room for another sequence.
    pub evictions: AtomicU64,
}

impl PrefixCacheStats {
    pub fn snapshot(&self) -> crate::PrefixCacheStatus {
        crate::PrefixCacheStatus {
            lookups: self.lookups.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            cached_tokens: self.cached_tokens.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV came from the replica's prefix cache.
    pub cached_prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
    pub started_at: Instant,
    pub prefill_done_at: Option<Instant>,
    pub first_token_at: Option<Instant>,
    /// Time this job spent waiting for the model's weights to load; set by the pool.
    pub load_wait: Duration,
}

/// A request with its reply channel, as it waits in a pool's queue and runs on a replica.
#[derive(Debug)]
pub struct EngineJob {
    pub request: EngineRequest,
    /// Whose work this is: the pool queues each tenant's jobs apart and serves tenants in
    /// turn, so that one tenant's backlog cannot starve another.
    pub tenant: TenantId,
    pub enqueued_at: Instant,
    pub load_wait: Duration,
    /// Background and idle work waits behind every interactive job; idle work also yields
    /// every decode step to the others (see [`crate::Priority`]).
    pub priority: crate::Priority,
    /// Text pieces as they are generated. Bounded by construction: its capacity exceeds
    /// `max_tokens`, and the engine sends at most one piece per token.
    pub stream: Option<mpsc::Sender<String>>,
    pub reply: oneshot::Sender<Result<Completion, EngineError>>,
}

impl EngineJob {
    /// Whoever asked is no longer listening: the generation can stop.
    pub(crate) fn caller_gone(&self) -> bool {
        match &self.stream {
            Some(stream) => stream.is_closed(),
            None => self.reply.is_closed(),
        }
    }
}

/// A channel for a streamed job, sized so that the engine never finds it full.
pub fn stream_channel(max_tokens: u32) -> (mpsc::Sender<String>, mpsc::Receiver<String>) {
    mpsc::channel(max_tokens as usize + 2)
}

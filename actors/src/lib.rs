//! The genrt supervision tree and its inference engine.
//!
//! ```text
//! RootSupervisor
//! ├── Dispatcher ─── FunctionActor (one per tenant × function version, stops when idle)
//! └── ModelPool (one per registered model) ─── ModelReplica (each owns one engine thread)
//! ```
//!
//! Nothing here knows HTTP, SQL, JWT or a JSON wire format: the runtime turns requests into
//! [`Invocation`]s and [`ActorTree`] answers them.

mod cache;
mod dispatcher;
mod embeddings;
pub mod engine;
mod error;
mod function;
mod memory;
mod model_pool;
mod replica;
mod root;
mod supervision;
mod tree;
mod types;

#[cfg(test)]
mod tests;

pub use cache::{CacheKey, CachedCompletion, ResponseCache};
pub use engine::{
    llama_backend, load_backends, stream_channel, Backend, BackendsInfo, Device, DeviceKind,
    Embedding, EngineError, LlamaCppBackend, Placement,
};
pub use error::InvokeError;

/// The deterministic fake engine, for fast in-process tests of everything above the engine
/// (the runtime's admission, queue, retries and idempotency): text is `echo: <user text>`,
/// and a user text containing `PANIC` makes the replica fail.
pub mod testing {
    pub use crate::engine::fake::{FakeBackend, LoadGate};
}
pub use memory::{fix_malloc_thresholds, Budgets, Held, MemoryBudget, Reservation};
pub use supervision::RestartPolicy;
pub use tree::{ActorTree, Adapter, ModelChangeError, TreeConfig};
pub use types::{
    DeployedFunction, Fault, FinishReason, Invocation, InvocationId, InvocationOutcome,
    ModelConfig, ModelPhase, ModelStatus, PrefixCacheStatus, Priority, ScalingEvent, Timings,
    Usage,
};

//! What a model pool accepts.

use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;

use super::state::ReplicaKey;
use crate::engine::{EngineError, EngineJob, Weights};
use crate::memory::Held;
use crate::ModelStatus;

pub(crate) struct Loaded {
    pub weights: Arc<dyn Weights>,
    pub memory: Held,
    pub n_layer: u32,
}

// `Submit` is the common message and the large one; boxing it would add an allocation to every
// job on top of the one ractor makes for each message anyway.
#[allow(clippy::large_enum_variant)]
pub(crate) enum PoolMsg {
    /// Queue a job for this model; the job's own channel carries the answer.
    Submit(EngineJob),
    Status(RpcReplyPort<ModelStatus>),
    /// A replica finished one job: one of its slots is free.
    SlotFreed(ReplicaKey),
    /// Weights finished loading, off the actor's task, with their memory reservations and the
    /// model's layer count.
    Loaded(Result<Loaded, EngineError>, Duration),
    /// Start a replica in place of one that failed, after its backoff.
    RestartReplica,
    /// Periodic autoscaling check.
    Tick,
}

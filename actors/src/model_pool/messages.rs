//! What a model pool accepts.

use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;

use super::state::ReplicaKey;
use crate::engine::{EngineError, EngineJob, Weights};
use crate::ModelStatus;

pub(crate) enum PoolMsg {
    /// Queue a job for this model; the job's own channel carries the answer.
    Submit(EngineJob),
    Status(RpcReplyPort<ModelStatus>),
    /// A replica finished its job and is free.
    ReplicaIdle(ReplicaKey),
    /// Weights finished loading, off the actor's task.
    Loaded(Result<Arc<dyn Weights>, EngineError>, Duration),
    /// Start a replica in place of one that failed, after its backoff.
    RestartReplica,
    /// Periodic check for idleness (scale to zero).
    Tick,
}

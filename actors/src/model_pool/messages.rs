//! What a model pool accepts.

use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;

use super::state::ReplicaKey;
use crate::engine::{EngineError, EngineJob, Weights};
use crate::memory::Reservation;
use crate::ModelStatus;

pub(crate) enum PoolMsg {
    /// Queue a job for this model; the job's own channel carries the answer.
    Submit(EngineJob),
    Status(RpcReplyPort<ModelStatus>),
    /// A replica finished one job: one of its slots is free.
    SlotFreed(ReplicaKey),
    /// Weights finished loading, off the actor's task, with their memory reservation.
    Loaded(
        Result<(Arc<dyn Weights>, Reservation), EngineError>,
        Duration,
    ),
    /// Start a replica in place of one that failed, after its backoff.
    RestartReplica,
    /// Periodic autoscaling check.
    Tick,
}

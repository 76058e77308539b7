//! What a model replica accepts.

use crate::engine::{EngineEvent, EngineJob};

pub(crate) enum ReplicaMsg {
    /// Run one job; only sent when the pool knows this replica is idle.
    Run(EngineJob),
    /// Reported by this replica's engine thread.
    Engine(EngineEvent),
}

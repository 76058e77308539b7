//! What a model replica accepts.

use crate::engine::{EngineEvent, EngineJob};

#[expect(
    clippy::large_enum_variant,
    reason = "each job passes once as `Run` and once as an `Engine` event: boxing the job \
              would cost an allocation per job to shrink events that are no more frequent"
)]
pub(crate) enum ReplicaMsg {
    /// Run one job; only sent when the pool knows this replica has a free slot.
    Run(EngineJob),
    /// Reported by this replica's engine thread.
    Engine(EngineEvent),
    /// Time to check that the engine thread still makes progress.
    Watchdog,
}

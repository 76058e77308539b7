//! The ways a generation starts, and what admission checks for each: one table, written as
//! one exhaustive match, so that a new mode does not compile until its checks are decided.

use genrt_actors::Priority;

/// How an invocation was started. Becomes a string only in the store and in telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `POST /v1/functions/{name}/invoke`, waiting for the text.
    Sync,
    /// The same with `"stream": true`: Server-Sent Events.
    Stream,
    /// `"mode": "async"`: queued, answered later (poll or webhook).
    Async,
    /// One item of `POST /v1/functions/{name}/batches`.
    Batch,
    /// Started by a signed incoming webhook (`/v1/hooks/{id}`).
    Trigger,
    /// One case of `POST /v1/functions/{name}/evaluate`.
    Evaluate,
    /// One input of `POST /v1/functions/{name}/prewarm`, run in the background to fill the
    /// response cache.
    Prewarm,
    /// The OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`).
    OpenAi,
    /// The same, streamed.
    OpenAiStream,
    /// A copy of an interactive invocation run on its alias's shadow version, to compare the
    /// two: in the background, its answer given to no one.
    Shadow,
}

/// The concurrency place an admitted request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// None now: the work is queued, and the queue's own concurrency bounds it when it runs.
    Queued,
    /// One of the tenant's `max_concurrency` places, for as long as the invocation runs.
    Invocation,
    /// An invocation place and one of the tenant's `max_concurrent_streams`.
    Stream,
    /// One invocation place per running case; admission takes the first.
    PerCase,
    /// One of the tenant's `max_concurrent_prewarms`.
    Prewarm,
}

/// What admission checks for a mode. The tenant's rate limit is taken earlier, once per
/// authenticated request, by the HTTP layer's credential check (triggers, which carry no
/// credential, take it themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// The tenant may use every model the function can reach.
    pub allowed_models: bool,
    /// The tenant has monthly token budget left.
    pub budget: bool,
    /// `server.max_input_bytes` and the `server.max_tokens` cap, per input.
    pub input_limits: bool,
    /// Render now, so that an input that cannot run is refused (422) instead of failing in
    /// the queue.
    pub render_at_accept: bool,
    pub place: Place,
    /// How it yields to other work in the model's queue and the engine's steps.
    pub priority: Priority,
}

impl Mode {
    pub fn checks(self) -> Checks {
        let all = Checks {
            allowed_models: true,
            budget: true,
            input_limits: true,
            render_at_accept: false,
            place: Place::Invocation,
            priority: Priority::Interactive,
        };
        match self {
            Mode::Sync | Mode::OpenAi => all,
            Mode::Stream | Mode::OpenAiStream => Checks {
                place: Place::Stream,
                ..all
            },
            Mode::Async | Mode::Batch | Mode::Trigger => Checks {
                render_at_accept: true,
                place: Place::Queued,
                priority: Priority::Background,
                ..all
            },
            Mode::Evaluate => Checks {
                place: Place::PerCase,
                ..all
            },
            Mode::Prewarm => Checks {
                place: Place::Prewarm,
                priority: Priority::Background,
                ..all
            },
            // A shadow takes one of the tenant's background places (shared with prewarming)
            // or does not run: shadows are bounded, never queued.
            Mode::Shadow => Checks {
                place: Place::Prewarm,
                priority: Priority::Idle,
                ..all
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Stream => "stream",
            Mode::Async => "async",
            Mode::Batch => "batch",
            Mode::Trigger => "trigger",
            Mode::Evaluate => "evaluate",
            Mode::Prewarm => "prewarm",
            Mode::OpenAi => "openai",
            Mode::OpenAiStream => "openai_stream",
            Mode::Shadow => "shadow",
        }
    }

    /// The request field holding the list of inputs, for modes that take several.
    pub fn inputs_field(self) -> Option<&'static str> {
        match self {
            Mode::Batch | Mode::Prewarm => Some("inputs"),
            Mode::Evaluate => Some("cases"),
            Mode::Sync
            | Mode::Stream
            | Mode::Async
            | Mode::Trigger
            | Mode::OpenAi
            | Mode::OpenAiStream
            | Mode::Shadow => None,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == text)
    }

    pub const ALL: [Mode; 10] = [
        Mode::Sync,
        Mode::Stream,
        Mode::Async,
        Mode::Batch,
        Mode::Trigger,
        Mode::Evaluate,
        Mode::Prewarm,
        Mode::OpenAi,
        Mode::OpenAiStream,
        Mode::Shadow,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_checks_models_budget_and_input_limits() {
        for mode in Mode::ALL {
            let c = mode.checks();
            assert!(c.allowed_models && c.budget && c.input_limits, "{mode:?}");
            assert_eq!(Mode::parse(mode.as_str()), Some(mode));
        }
    }

    #[test]
    fn only_queued_modes_render_at_accept_and_hold_no_place() {
        for mode in Mode::ALL {
            let c = mode.checks();
            assert_eq!(c.render_at_accept, c.place == Place::Queued, "{mode:?}");
        }
        assert_eq!(Mode::Prewarm.checks().place, Place::Prewarm);
        assert_eq!(Mode::Prewarm.checks().priority, Priority::Background);
        assert_eq!(Mode::Sync.checks().priority, Priority::Interactive);
        assert_eq!(Mode::Shadow.checks().priority, Priority::Idle);
    }
}

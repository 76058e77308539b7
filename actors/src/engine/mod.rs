//! The inference engine: a backend loads weights, and each replica runs one engine thread
//! that owns one inference context and serves jobs from a channel.
//!
//! Async code never touches a context: it sends an [`EngineJob`] and awaits the reply.

mod llama;
mod thread;

#[cfg(test)]
pub(crate) mod fake;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_functions::{RenderedPrompt, SamplingParams};
use tokio::sync::oneshot;

use crate::{Fault, FinishReason, ModelConfig};

pub use llama::{llama_backend, LlamaCppBackend};
pub(crate) use thread::{EngineEvent, EngineThread};

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
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error("cancelled")]
    Cancelled,
    #[error("engine crashed: {0}")]
    Crashed(String),
    /// The model's admission queue is full.
    #[error("{queued} invocations already waiting")]
    Overloaded { queued: usize },
}

/// Loads a model's weights. One per process; the weights it returns are shared by the
/// replicas of that model and freed when the last one drops them.
pub trait Backend: Send + Sync + 'static {
    fn load(&self, model: &ModelConfig) -> Result<Arc<dyn Weights>, EngineError>;
}

/// Loaded weights. `run_session` is called on a replica's engine thread: it creates an
/// inference context, hands it to `serve` for the replica's whole life, and frees it after.
/// A closure rather than a returned session keeps the context's borrow of the weights safe.
pub trait Weights: Send + Sync + 'static {
    fn run_session(
        &self,
        model: &ModelConfig,
        serve: &mut dyn FnMut(&mut dyn Session),
    ) -> Result<(), EngineError>;
}

/// One inference context. Lives on, and is only touched by, its engine thread.
pub trait Session {
    fn generate(
        &mut self,
        request: &EngineRequest,
        control: &GenerationControl<'_>,
    ) -> Result<Completion, EngineError>;
}

/// What the engine needs to produce one completion.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt: RenderedPrompt,
    pub params: SamplingParams,
    pub deadline: Instant,
    pub fault: Option<Fault>,
}

/// Checked by the engine between decode steps, so that a generation stops within one step
/// of its deadline, its caller leaving, or its replica stopping.
pub struct GenerationControl<'a> {
    pub stopping: &'a AtomicBool,
    pub caller_gone: &'a dyn Fn() -> bool,
}

impl GenerationControl<'_> {
    pub fn should_stop(&self, deadline: Instant) -> Option<EngineError> {
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) || (self.caller_gone)() {
            Some(EngineError::Cancelled)
        } else if Instant::now() >= deadline {
            Some(EngineError::DeadlineExceeded)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
    pub started_at: Instant,
    pub first_token_at: Option<Instant>,
    /// Time this job spent waiting for the model's weights to load; set by the pool.
    pub load_wait: Duration,
}

/// A request with its reply channel, as it waits in a pool's queue and runs on a replica.
#[derive(Debug)]
pub struct EngineJob {
    pub request: EngineRequest,
    pub enqueued_at: Instant,
    pub load_wait: Duration,
    pub reply: oneshot::Sender<Result<Completion, EngineError>>,
}

/// Cuts `text` at the first stop string, if any. Returns whether one was found.
pub(crate) fn truncate_at_stop(text: &mut String, stops: &[String]) -> bool {
    let cut = stops.iter().filter_map(|s| text.find(s.as_str())).min();
    match cut {
        Some(at) => {
            text.truncate(at);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_at_the_earliest_match() {
        let mut t = "one. two\nthree".to_owned();
        assert!(truncate_at_stop(&mut t, &["\n".into(), ".".into()]));
        assert_eq!(t, "one");
        let mut t = "abc".to_owned();
        assert!(!truncate_at_stop(&mut t, &["x".into()]));
        assert_eq!(t, "abc");
    }
}

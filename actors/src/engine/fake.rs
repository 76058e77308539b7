//! A deterministic engine for fast unit tests of scheduling and supervision. The real engine
//! is exercised by the end-to-end tests; this one only echoes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Backend, Completion, EngineError, EngineRequest, GenerationControl, Session, Weights};
use crate::{FinishReason, ModelConfig};

#[derive(Default)]
pub(crate) struct FakeBackend {
    pub(crate) loads: AtomicU32,
    pub(crate) live_weights: Arc<AtomicU32>,
}

impl Backend for FakeBackend {
    fn load(&self, model: &ModelConfig) -> Result<Arc<dyn Weights>, EngineError> {
        if model.path.to_string_lossy().contains("missing") {
            return Err(EngineError::Load("no such file".into()));
        }
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.live_weights.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(FakeWeights {
            live: Arc::clone(&self.live_weights),
        }))
    }
}

struct FakeWeights {
    live: Arc<AtomicU32>,
}

impl Drop for FakeWeights {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Weights for FakeWeights {
    fn run_session(
        &self,
        _model: &ModelConfig,
        serve: &mut dyn FnMut(&mut dyn Session),
    ) -> Result<(), EngineError> {
        serve(&mut FakeSession);
        Ok(())
    }
}

struct FakeSession;

impl Session for FakeSession {
    fn generate(
        &mut self,
        request: &EngineRequest,
        _control: &GenerationControl<'_>,
    ) -> Result<Completion, EngineError> {
        let started_at = Instant::now();
        if request.prompt.user.contains("PANIC") {
            panic!("fake engine asked to panic");
        }
        let text = format!("echo: {}", request.prompt.user);
        Ok(Completion {
            completion_tokens: text.split_whitespace().count() as u32,
            prompt_tokens: request.prompt.user.split_whitespace().count() as u32,
            text,
            finish_reason: FinishReason::Stop,
            started_at,
            first_token_at: Some(Instant::now()),
            load_wait: Duration::ZERO,
        })
    }
}

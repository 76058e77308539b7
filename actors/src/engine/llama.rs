//! The llama.cpp backend through llama-cpp-2. One process-wide llama backend; weights loaded
//! per model (memory-mapped); one context per replica, on that replica's engine thread.

use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::{send_logs_to_tracing, LogOptions};

use super::{
    truncate_at_stop, Backend, Completion, EngineError, EngineRequest, GenerationControl, Session,
    Weights,
};
use crate::{FinishReason, ModelConfig};

const N_BATCH: u32 = 512;

/// llama.cpp may be initialised once per process; every backend value shares it, and so must
/// anything else in the process that calls llama.cpp directly (the benchmarks do).
pub fn llama_backend() -> Result<Arc<LlamaBackend>, EngineError> {
    static BACKEND: OnceLock<Result<Arc<LlamaBackend>, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            send_logs_to_tracing(LogOptions::default());
            LlamaBackend::init()
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(EngineError::Load)
}

#[derive(Clone)]
pub struct LlamaCppBackend {
    backend: Arc<LlamaBackend>,
}

impl LlamaCppBackend {
    pub fn new() -> Result<Self, EngineError> {
        Ok(Self {
            backend: llama_backend()?,
        })
    }
}

impl Backend for LlamaCppBackend {
    fn load(&self, model: &ModelConfig) -> Result<Arc<dyn Weights>, EngineError> {
        if !model.path.is_file() {
            return Err(EngineError::Load(format!(
                "model file {} does not exist",
                model.path.display()
            )));
        }
        let params = LlamaModelParams::default().with_n_gpu_layers(model.n_gpu_layers);
        let loaded = LlamaModel::load_from_file(&self.backend, &model.path, &params)
            .map_err(|e| EngineError::Load(format!("{}: {e}", model.path.display())))?;
        // Models without an embedded chat template get a plain layout; see `format_prompt`.
        let template = loaded.chat_template(None).ok();
        Ok(Arc::new(LlamaWeights {
            backend: Arc::clone(&self.backend),
            model: loaded,
            template,
        }))
    }
}

struct LlamaWeights {
    backend: Arc<LlamaBackend>,
    model: LlamaModel,
    template: Option<LlamaChatTemplate>,
}

impl Weights for LlamaWeights {
    fn run_session(
        &self,
        config: &ModelConfig,
        serve: &mut dyn FnMut(&mut dyn Session),
    ) -> Result<(), EngineError> {
        let threads = config.threads() as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(config.n_ctx))
            .with_n_batch(N_BATCH)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = self
            .model
            .new_context(&self.backend, params)
            .map_err(|e| EngineError::Load(format!("cannot create context: {e}")))?;
        let mut session = LlamaSession {
            weights: self,
            ctx,
            batch: LlamaBatch::new(N_BATCH as usize, 1),
        };
        serve(&mut session);
        Ok(())
    }
}

struct LlamaSession<'a> {
    weights: &'a LlamaWeights,
    ctx: LlamaContext<'a>,
    batch: LlamaBatch<'static>,
}

impl LlamaSession<'_> {
    fn format_prompt(&self, request: &EngineRequest) -> Result<String, EngineError> {
        let prompt = &request.prompt;
        let Some(template) = &self.weights.template else {
            return Ok(match &prompt.system {
                Some(system) => format!("{system}\n\n{}\n", prompt.user),
                None => format!("{}\n", prompt.user),
            });
        };
        let mut messages = Vec::with_capacity(2);
        let message = |role: &str, content: &str| {
            LlamaChatMessage::new(role.to_owned(), content.to_owned())
                .map_err(|e| EngineError::Decode(format!("invalid chat message: {e}")))
        };
        if let Some(system) = &prompt.system {
            messages.push(message("system", system)?);
        }
        messages.push(message("user", &prompt.user)?);
        self.weights
            .model
            .apply_chat_template(template, &messages, true)
            .map_err(|e| EngineError::Decode(format!("chat template failed: {e}")))
    }

    fn decode(&mut self) -> Result<(), EngineError> {
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| EngineError::Decode(e.to_string()))
    }
}

fn sampler(request: &EngineRequest) -> LlamaSampler {
    let p = &request.params;
    if p.temperature == 0.0 {
        return LlamaSampler::greedy();
    }
    // llama.cpp draws a fresh random seed for this value.
    const RANDOM_SEED: u32 = u32::MAX;
    LlamaSampler::chain_simple([
        LlamaSampler::top_k(p.top_k as i32),
        LlamaSampler::top_p(p.top_p, 1),
        LlamaSampler::temp(p.temperature),
        LlamaSampler::dist(p.seed.unwrap_or(RANDOM_SEED)),
    ])
}

impl Session for LlamaSession<'_> {
    fn generate(
        &mut self,
        request: &EngineRequest,
        control: &GenerationControl<'_>,
    ) -> Result<Completion, EngineError> {
        let started_at = Instant::now();
        let text = self.format_prompt(request)?;
        let vocab = self.weights.model.vocab();
        let tokens = vocab.tokenize(text.as_bytes(), true, true);
        let n_ctx = self.ctx.n_ctx();
        let max_tokens = request.params.max_tokens;
        if tokens.len() as u64 + u64::from(max_tokens) > u64::from(n_ctx) {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: tokens.len() as u32,
                max_tokens,
                n_ctx,
            });
        }
        self.ctx.clear_kv_cache();

        // Prefill in chunks of the batch size; only the last prompt token needs logits.
        let last = tokens.len() - 1;
        for (chunk_index, chunk) in tokens.chunks(N_BATCH as usize).enumerate() {
            self.batch.clear();
            for (offset, token) in chunk.iter().enumerate() {
                let pos = chunk_index * N_BATCH as usize + offset;
                self.batch
                    .add(*token, pos as i32, &[0], pos == last)
                    .map_err(|e| EngineError::Decode(e.to_string()))?;
            }
            self.decode()?;
            if let Some(stop) = control.should_stop(request.deadline) {
                return Err(stop);
            }
        }

        let mut sampler = sampler(request);
        let mut pos = tokens.len() as i32;
        let mut bytes = Vec::new();
        let mut completion_tokens = 0u32;
        let mut first_token_at = None;
        let mut finish_reason = FinishReason::Length;
        let mut text = String::new();
        while completion_tokens < max_tokens {
            let token = sampler.sample(&self.ctx, self.batch.n_tokens() - 1);
            first_token_at.get_or_insert_with(Instant::now);
            if vocab.is_eog(token) {
                finish_reason = FinishReason::Stop;
                break;
            }
            completion_tokens += 1;
            bytes.extend(vocab.token_to_piece(token, false, None));
            if !request.params.stop.is_empty() {
                text = String::from_utf8_lossy(&bytes).into_owned();
                if truncate_at_stop(&mut text, &request.params.stop) {
                    finish_reason = FinishReason::StopSequence;
                    break;
                }
            }
            if let Some(stop) = control.should_stop(request.deadline) {
                return Err(stop);
            }
            self.batch.clear();
            self.batch
                .add(token, pos, &[0], true)
                .map_err(|e| EngineError::Decode(e.to_string()))?;
            pos += 1;
            self.decode()?;
        }
        if finish_reason != FinishReason::StopSequence {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        Ok(Completion {
            text,
            prompt_tokens: tokens.len() as u32,
            completion_tokens,
            finish_reason,
            started_at,
            first_token_at,
            load_wait: Duration::ZERO,
        })
    }
}

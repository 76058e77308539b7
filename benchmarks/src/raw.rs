//! The baselines: llama.cpp in-process through llama-cpp-2, with the same model, threads,
//! chat template and greedy decoding as genrt's engine, and one KV stream per sequence as
//! genrt configures it.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use genrt_actors::engine::threadpool::{self, Lease};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::token::LlamaToken;

pub struct Raw {
    backend: Arc<LlamaBackend>,
    model: LlamaModel,
    threads: i32,
}

/// Timings of one raw run.
pub struct RawRun {
    /// Tokens decoded per second after the first, summed over sequences.
    pub decode_tokens_per_s: f64,
    /// From the start of the prefill until every sequence has its first token.
    pub first_tokens_ms: f64,
}

impl Raw {
    /// `n_gpu_layers` as genrt resolved it for the model (`None`: llama.cpp's default, all
    /// layers on a GPU when one is loaded), so that both put the same layers on the GPU.
    pub fn load(path: &Path, threads: u32, n_gpu_layers: Option<u32>) -> anyhow::Result<Self> {
        let backend = genrt_actors::llama_backend()?;
        let mut params = LlamaModelParams::default();
        if let Some(layers) = n_gpu_layers {
            params = params.with_n_gpu_layers(layers);
        }
        let model =
            LlamaModel::load_from_file(&backend, path, &params).context("loading the model")?;
        Ok(Self {
            backend,
            model,
            threads: threads as i32,
        })
    }

    pub fn tokens(&self, system: &str, user: &str) -> anyhow::Result<Vec<LlamaToken>> {
        let template = self.model.chat_template(None)?;
        let messages = [
            LlamaChatMessage::new("system".into(), system.into())?,
            LlamaChatMessage::new("user".into(), user.into())?,
        ];
        let text = self.model.apply_chat_template(&template, &messages, true)?;
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    /// A whole chat (role, content), templated for a reply, as tokens.
    pub fn chat_tokens(&self, turns: &[(String, String)]) -> anyhow::Result<Vec<LlamaToken>> {
        let template = self.model.chat_template(None)?;
        let messages = turns
            .iter()
            .map(|(role, content)| LlamaChatMessage::new(role.clone(), content.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let text = self.model.apply_chat_template(&template, &messages, true)?;
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    fn context(&self, n_seq: u32, n_ctx: u32) -> anyhow::Result<LlamaContext<'_>> {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx * n_seq))
            .with_n_batch(512)
            .with_n_ubatch(512)
            .with_n_seq_max(n_seq)
            .with_kv_unified(false)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        Ok(self.model.new_context(&self.backend, params)?)
    }

    /// `prompts.len()` sequences prefilled together, then decoded together for `tokens` steps
    /// (greedy, end of generation ignored, as genrt's `ignore_eos`).
    pub fn batched(&self, prompts: &[Vec<LlamaToken>], tokens: u32) -> anyhow::Result<RawRun> {
        self.batched_in(prompts.len() as u32, 1024, prompts, tokens)
    }

    /// As [`Self::batched`], in a context of `n_seq` sequences of `n_ctx` tokens.
    pub fn batched_in(
        &self,
        n_seq: u32,
        n_ctx: u32,
        prompts: &[Vec<LlamaToken>],
        tokens: u32,
    ) -> anyhow::Result<RawRun> {
        let n = prompts.len();
        // As llama.cpp's own tools run: on a thread pool of their own with its default
        // polling, created before the context so that it is dropped after it.
        let pool = Lease::take(self.threads, threadpool::LLAMA_CPP_POLL)
            .context("no thread pool from llama.cpp's CPU module")?;
        let mut ctx = self.context(n_seq, n_ctx)?;
        // SAFETY: `ctx` is declared after `pool`, so dropped before it.
        if !unsafe { genrt_actors::engine::attach_thread_pool(&ctx, &self.model, &pool) } {
            anyhow::bail!("cannot put the baseline's context on its thread pool");
        }
        let prefill_started = Instant::now();
        let mut batch = LlamaBatch::new(512, 1);
        let vocab = self.model.vocab();
        let eog: Vec<LlamaToken> = vocab.tokens().filter(|t| vocab.is_eog(*t)).collect();
        let greedy = |ctx: &LlamaContext, index: i32| -> LlamaToken {
            let logits = ctx.get_logits_ith(index);
            let mut best = 0usize;
            for (i, v) in logits.iter().enumerate() {
                if *v > logits[best] && !eog.contains(&LlamaToken(i as i32)) {
                    best = i;
                }
            }
            LlamaToken(best as i32)
        };
        let mut next = vec![LlamaToken(0); n];
        // Prefill each prompt (in batch-size chunks across sequences); a sequence's first
        // token is sampled after the call that held its last prompt token.
        let mut pending: Vec<(usize, usize)> = (0..n).map(|s| (s, 0)).collect();
        while !pending.is_empty() {
            batch.clear();
            let mut next_pending = Vec::new();
            let mut ended = Vec::new();
            for (seq, from) in pending {
                let p = &prompts[seq];
                let room = 512 - batch.n_tokens() as usize;
                let take = (p.len() - from).min(room);
                for (i, t) in p[from..from + take].iter().enumerate() {
                    let pos = from + i;
                    let last = pos == p.len() - 1;
                    if last {
                        ended.push((seq, batch.n_tokens()));
                    }
                    batch.add(*t, pos as i32, &[seq as i32], last)?;
                }
                if from + take < p.len() {
                    next_pending.push((seq, from + take));
                }
            }
            ctx.decode(&mut batch)?;
            for (seq, index) in ended {
                next[seq] = greedy(&ctx, index);
            }
            pending = next_pending;
        }
        let first_tokens_ms = prefill_started.elapsed().as_secs_f64() * 1000.0;
        let decode_started = Instant::now();
        let mut pos: Vec<i32> = prompts.iter().map(|p| p.len() as i32).collect();
        for _ in 1..tokens {
            batch.clear();
            for s in 0..n {
                let _piece = vocab.token_to_piece(next[s], false, None);
                batch.add(next[s], pos[s], &[s as i32], true)?;
                pos[s] += 1;
            }
            ctx.decode(&mut batch)?;
            for (s, token) in next.iter_mut().enumerate() {
                *token = greedy(&ctx, s as i32);
            }
        }
        let decoded = (tokens.saturating_sub(1) as usize * n) as f64;
        let run = RawRun {
            decode_tokens_per_s: decoded / decode_started.elapsed().as_secs_f64(),
            first_tokens_ms,
        };
        // The baseline's threads poll for a next graph for about a tenth of a second after
        // their last one (llama.cpp's default); kept as a spare, the pool would spin on the
        // cores while the next measurement (genrt's, in every paired phase) starts. Measured:
        // genrt's one-stream rate 0.85x raw straight after a baseline run, 0.92-0.95x after
        // the polling had ended.
        drop(ctx);
        // SAFETY: the context that used the pool is freed just above.
        unsafe { pool.discard() };
        Ok(run)
    }
}

/// Cold start in-process: load the weights, create a context of the same shape as a genrt
/// replica's (`n_seq` sequences of `n_ctx`), prefill, first token.
pub fn cold_first_token_ms(
    path: &Path,
    threads: u32,
    n_gpu_layers: Option<u32>,
    (n_seq, n_ctx): (u32, u32),
    system: &str,
    user: &str,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let raw = Raw::load(path, threads, n_gpu_layers)?;
    let prompt = raw.tokens(system, user)?;
    raw.batched_in(n_seq, n_ctx, &[prompt], 1)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

//! `genrt-bench`: the runtime against raw llama.cpp, measured in the same run, with the same
//! model, prompt, thread count and greedy decoding, so that only the ratio matters and the
//! machine's speed cancels out.
//!
//! * baseline: llama.cpp in-process through llama-cpp-2: chat template, tokenize, prefill,
//!   decode until end of generation or `--max-tokens`.
//! * genrt: one synchronous invocation at a time through the whole stack: HTTP, JWT, the
//!   database lookup and record, the dispatcher, the function actor, the model pool, the
//!   replica's engine thread. The response cache is disabled for the benchmark function.
//!
//! Runs alternate between the two so that drift (thermal, other load) hits both alike.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use genrt_actors::ModelConfig;
use genrt_runtime::Config;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use serde_json::json;

const SYSTEM: &str = "You are a helpful assistant who writes long, detailed answers.";
const PROMPT: &str = "Write a long story about a lighthouse keeper and the sea.";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// CPU threads, for both sides.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Measured runs of each side, after one warm-up run each.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    tokens: u32,
    seconds: f64,
}

impl Sample {
    fn tokens_per_s(self) -> f64 {
        f64::from(self.tokens) / self.seconds
    }
}

struct Raw {
    model: LlamaModel,
    backend: std::sync::Arc<llama_cpp_2::llama_backend::LlamaBackend>,
}

impl Raw {
    fn load(args: &Args) -> anyhow::Result<Self> {
        let backend = genrt_actors::llama_backend()?;
        let model = LlamaModel::load_from_file(&backend, &args.model, &LlamaModelParams::default())
            .context("loading the model")?;
        Ok(Self { model, backend })
    }

    /// One generation, timed from the formatted prompt to the last token, as genrt's engine
    /// does it: a fresh context state, the whole prompt prefilled, greedy decoding.
    fn generate(&self, args: &Args) -> anyhow::Result<Sample> {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(2048))
            .with_n_batch(512)
            .with_n_threads(args.threads as i32)
            .with_n_threads_batch(args.threads as i32);
        let mut ctx = self.model.new_context(&self.backend, params)?;
        let template = self.model.chat_template(None)?;
        let messages = [
            LlamaChatMessage::new("system".into(), SYSTEM.into())?,
            LlamaChatMessage::new("user".into(), PROMPT.into())?,
        ];
        let started = Instant::now();
        let text = self.model.apply_chat_template(&template, &messages, true)?;
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(text.as_bytes(), true, true);
        let mut batch = LlamaBatch::new(512, 1);
        for (i, t) in tokens.iter().enumerate() {
            batch.add(*t, i as i32, &[0], i == tokens.len() - 1)?;
        }
        ctx.decode(&mut batch)?;
        let mut sampler = LlamaSampler::greedy();
        let mut pos = tokens.len() as i32;
        let mut generated = 0;
        while generated < args.max_tokens {
            let token = sampler.sample(&ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                break;
            }
            let _piece = vocab.token_to_piece(token, false, None);
            generated += 1;
            batch.clear();
            batch.add(token, pos, &[0], true)?;
            pos += 1;
            ctx.decode(&mut batch)?;
        }
        Ok(Sample {
            tokens: generated,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

struct Genrt {
    server: genrt_runtime::RunningServer,
    client: reqwest::Client,
    token: String,
    base: String,
    _dir: PathBuf,
}

impl Genrt {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("genrt-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut config = Config::default();
        config.server.port = 0;
        config.data_dir = dir.clone();
        config.auth.jwt_secret = "benchmark-secret-0123456789".into();
        let mut model = ModelConfig::new("bench", &args.model);
        model.threads = args.threads;
        model.idle_timeout_s = 3600;
        config.models = vec![model];
        let auth = genrt_runtime::auth::Authenticator::new(&config.auth);
        let token = auth.issue(&genrt_functions::TenantId::parse("bench")?);
        let server = genrt_runtime::start(config, false).await?;
        let base = format!("http://{}", server.addr());
        let client = reqwest::Client::new();
        let deploy = client
            .post(format!("{base}/v1/functions"))
            .bearer_auth(&token)
            .json(&json!({
                "name": "bench",
                "model": "bench",
                "system": SYSTEM,
                "prompt": PROMPT,
                "params": {"max_tokens": args.max_tokens, "temperature": 0},
                "cache": {"enabled": false}
            }))
            .send()
            .await?;
        if !deploy.status().is_success() {
            bail!("deploy failed: {}", deploy.text().await?);
        }
        Ok(Self {
            server,
            client,
            token,
            base,
            _dir: dir,
        })
    }

    async fn invoke(&self) -> anyhow::Result<Sample> {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/v1/functions/bench/invoke", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"input": {}}))
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.is_success() {
            bail!("invoke failed: {body}");
        }
        Ok(Sample {
            tokens: body["usage"]["completion_tokens"].as_u64().unwrap_or(0) as u32,
            seconds,
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.model.is_file() {
        bail!("{} is missing: run `make model`", args.model.display());
    }
    let raw = Raw::load(&args)?;
    let genrt = Genrt::start(&args).await?;

    // Warm-up: page the weights in, start the replica, fill allocator caches.
    raw.generate(&args)?;
    genrt.invoke().await?;

    let (mut raw_tps, mut genrt_tps) = (Vec::new(), Vec::new());
    let (mut raw_tokens, mut genrt_tokens) = (0, 0);
    for _ in 0..args.runs {
        let r = tokio::task::block_in_place(|| raw.generate(&args))?;
        let g = genrt.invoke().await?;
        raw_tokens = r.tokens;
        genrt_tokens = g.tokens;
        raw_tps.push(r.tokens_per_s());
        genrt_tps.push(g.tokens_per_s());
    }
    if raw_tokens != genrt_tokens {
        eprintln!("note: token counts differ (raw {raw_tokens}, genrt {genrt_tokens})");
    }
    let (raw_m, genrt_m) = (median(raw_tps), median(genrt_tps));
    println!(
        "| measurement | tokens | tokens/s (median of {}) |",
        args.runs
    );
    println!("|---|---|---|");
    println!("| raw llama.cpp, in-process, 1 sequence | {raw_tokens} | {raw_m:.1} |");
    println!("| genrt, 1 invocation through HTTP | {genrt_tokens} | {genrt_m:.1} |");
    println!("| **ratio genrt / raw** | | **{:.3}** |", genrt_m / raw_m);
    println!();
    println!(
        "threads: {}, max_tokens: {}, greedy, cache off",
        args.threads, args.max_tokens
    );
    genrt.server.stop().await?;
    Ok(())
}

//! `genrt-bench-models`: the model registry ([models], #17). Writes `benchmarks/MODELS.md`.
//! Every figure is measured in this run, and each genrt figure is set against a baseline of
//! the same work done directly:
//!
//! 1. Quantization of the synthetic 1.2B model (F16, SmolLM2's tokenizer, random weights,
//!    `synth.rs`) to Q8_0: llama.cpp's quantizer called directly in this process, against
//!    genrt's registration of the F16 file with `"quantize": "Q8_0"` until it is ready (the
//!    source's sha256, the GGUF checks, the quantization, the output's checks and sha256).
//! 2. Registration to first token, cold: SmolLM2 uploaded (streamed) to a running genrt, then
//!    a function deployed on it and streamed until its first token, against the first token of
//!    a configured model from cold (scaled to zero) on the same server.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use genrt_actors::ModelConfig;
use genrt_benchmarks::harness::{prompt, token, Bench, MODEL};
use genrt_benchmarks::synth::{self, Shape, WeightType};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Write the synthetic model with this many layers instead of 16 (a quick trial run).
    #[arg(long, default_value_t = Shape::ONE_B.n_layer)]
    layers: u32,
    #[arg(long, default_value = "benchmarks")]
    out: PathBuf,
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

struct Admin<'a> {
    bench: &'a Bench,
    token: String,
}

impl Admin<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.bench.target.base)
    }

    async fn register(&self, body: Value) -> anyhow::Result<()> {
        let r = self
            .bench
            .target
            .client
            .post(self.url("/v1/models"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        if r.status() != 202 {
            bail!("registration refused: {}", r.text().await?);
        }
        Ok(())
    }

    async fn upload(&self, id: &str, path: &Path) -> anyhow::Result<()> {
        use tokio::io::AsyncReadExt;
        // Streamed in 1 MiB chunks, as a client sending a large file would.
        let file = tokio::fs::File::open(path).await?;
        let chunks = futures_util::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(buf), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        let body = reqwest::Body::wrap_stream(chunks);
        let r = self
            .bench
            .target
            .client
            .put(self.url(&format!("/v1/models/{id}/file")))
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await?;
        if r.status() != 202 {
            bail!("upload refused: {}", r.text().await?);
        }
        Ok(())
    }

    /// Waits for the registration to end; fails unless it is ready.
    async fn ready(&self, id: &str) -> anyhow::Result<Value> {
        loop {
            let entry: Value = self
                .bench
                .target
                .client
                .get(self.url(&format!("/v1/models/{id}")))
                .bearer_auth(&self.token)
                .send()
                .await?
                .json()
                .await?;
            match entry["registration"]["state"].as_str() {
                Some("ready") => return Ok(entry),
                Some("failed") => bail!("registration of {id} failed: {entry}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ModelConfig::new(MODEL, &args.model);
    config.threads = args.threads;
    config.idle_timeout_s = 1;
    let bench = Bench::start(config, None).await?;
    let admin = Admin {
        bench: &bench,
        token: token("operator", &["admin"])?,
    };
    let store = PathBuf::from(bench.server.state().registry.store_root());

    // 1. Quantization: raw, then through the registry.
    let shape = Shape {
        n_layer: args.layers,
        ..Shape::ONE_B
    };
    let f16 = store.join("synthetic-f16.gguf");
    let started = Instant::now();
    let f16_bytes = synth::write_model(&args.model, &f16, shape, WeightType::F16, 1, false)?;
    println!(
        "synthetic F16 model: {:.0} MiB written in {:.1} s",
        f16_bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    let raw_out = store.join("raw-q8_0.gguf");
    let started = Instant::now();
    genrt_actors::engine::quantize::quantize(&f16, &raw_out, "Q8_0", false, 0)
        .map_err(anyhow::Error::msg)?;
    let raw_s = started.elapsed().as_secs_f64();
    let raw_bytes = std::fs::metadata(&raw_out)?.len();
    std::fs::remove_file(&raw_out)?;
    println!("raw quantization to Q8_0: {raw_s:.1} s");
    let sha = sha256_file(&f16)?;
    let started = Instant::now();
    admin
        .register(
            json!({"id": "synthetic-q8", "source": {"path": "synthetic-f16.gguf"},
                         "sha256": sha, "quantize": "Q8_0",
                         "settings": {"n_ctx": 512, "threads": args.threads}}),
        )
        .await?;
    let entry = admin.ready("synthetic-q8").await?;
    let genrt_s = started.elapsed().as_secs_f64();
    let served_bytes = entry["registration"]["file"]["file_bytes"]
        .as_u64()
        .context("file_bytes")?;
    let parameters = entry["registration"]["file"]["parameters"]
        .as_u64()
        .context("parameters")?;
    println!("registration with quantization to Q8_0: {genrt_s:.1} s");
    std::fs::remove_file(&f16)?;

    // 2. Registration to first token, against a configured model's cold first token.
    bench.wait_unloaded().await;
    let cold_configured_ms = bench.first_token_ms(0).await?;
    let sha = sha256_file(&args.model)?;
    let started = Instant::now();
    admin
        .register(
            json!({"id": "uploaded", "source": {"upload": true}, "sha256": sha,
                         "settings": {"n_ctx": 1024, "threads": args.threads}}),
        )
        .await?;
    admin.upload("uploaded", &args.model).await?;
    admin.ready("uploaded").await?;
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    bench
        .deploy(
            json!({"name": "on-uploaded", "model": "uploaded", "prompt": "{{ prompt }}",
                       "params": {"temperature": 0}, "cache": {"enabled": false}}),
        )
        .await?;
    let sample = bench
        .target
        .stream(
            "on-uploaded",
            json!({"input": {"prompt": prompt(0)}, "params": {"max_tokens": 1}}),
        )
        .await;
    if !sample.ok {
        bail!("the uploaded model did not answer");
    }
    let first_token_ms = started.elapsed().as_secs_f64() * 1000.0;
    let model_mib = std::fs::metadata(&args.model)?.len() as f64 / 1048576.0;
    println!(
        "upload registration to first token: {first_token_ms:.0} ms (ready after {ready_ms:.0} ms)"
    );

    let mut md = String::new();
    writeln!(md, "# Model registry\n")?;
    writeln!(
        md,
        "Written by `cargo run --release -p genrt-benchmarks --bin genrt-bench-models` (`make bench` runs it) on {}, {} threads. Every ratio is between figures of this run.\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        args.threads
    )?;
    writeln!(md, "## Quantization on registration\n")?;
    writeln!(
        md,
        "The synthetic model ({:.2} B parameters, {n} layers, F16, {:.0} MiB) to Q8_0. Raw: llama.cpp's `llama_model_quantize` called in this process, every core. genrt: `POST /v1/models` with `\"quantize\": \"Q8_0\"` on the F16 file until `ready` (the source's sha256, the GGUF checks, a vocabulary-only load, the quantization on every core, the output's checks and sha256).\n",
        parameters as f64 / 1e9,
        f16_bytes as f64 / 1048576.0,
        n = args.layers,
    )?;
    writeln!(md, "| | seconds | output (MiB) | ÷ raw |")?;
    writeln!(md, "|---|---|---|---|")?;
    writeln!(
        md,
        "| raw llama.cpp quantizer | {raw_s:.1} | {:.0} | 1.00× |",
        raw_bytes as f64 / 1048576.0
    )?;
    writeln!(
        md,
        "| genrt registration with `quantize` | {genrt_s:.1} | {:.0} | {:.2}× |\n",
        served_bytes as f64 / 1048576.0,
        genrt_s / raw_s
    )?;
    writeln!(md, "## Registration to first token\n")?;
    writeln!(
        md,
        "SmolLM2 ({model_mib:.0} MiB) registered with `{{\"upload\": true}}`, its file streamed with `PUT /v1/models/{{id}}/file`, then a function deployed on it and streamed to its first token; against the first token of the configured model from cold (scaled to zero: load, context, prefill) on the same server.\n"
    )?;
    writeln!(md, "| | ms | ÷ configured cold start |")?;
    writeln!(md, "|---|---|---|")?;
    writeln!(
        md,
        "| configured model, cold first token | {cold_configured_ms:.0} | 1.00× |"
    )?;
    writeln!(
        md,
        "| registration accepted → `ready` (upload, sha256, checks) | {ready_ms:.0} | {:.2}× |",
        ready_ms / cold_configured_ms
    )?;
    writeln!(
        md,
        "| registration accepted → first token | {first_token_ms:.0} | {:.2}× |",
        first_token_ms / cold_configured_ms
    )?;
    std::fs::write(args.out.join("MODELS.md"), &md)?;
    println!("{md}");
    bench.server.stop().await?;
    Ok(())
}

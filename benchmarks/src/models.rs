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
//! 3. LoRA adapters on SmolLM2: 16 concurrent streams spread over 4 adapters against 16
//!    streams of the base alone (summed decode tokens/s, alternating rounds), for three setups
//!    of the same cores: one replica at `--threads`, one replica at one thread, and
//!    `--threads` one-thread replicas (where the pool's adapter-affine placement keeps each
//!    set on one replica); and an adapter's registration to its first token (the adapter
//!    cold, the base loaded) against the base's own first token.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use genrt_actors::ModelConfig;
use genrt_benchmarks::harness::{prompt, stream_body, token, Bench, MODEL};
use genrt_benchmarks::load::summed_decode_tokens_per_s;
use genrt_benchmarks::synth::{self, LoraSpec, Shape, WeightType};
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
    /// Rounds of each side of the adapter throughput comparison.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Tokens each of the 16 streams generates.
    #[arg(long, default_value_t = 64)]
    stream_tokens: u32,
}

/// The adapters of the throughput comparison; a stream's adapter is `ADAPTERS[i % 4]`.
const ADAPTERS: [&str; 4] = ["fashion", "sports", "legal", "travel"];
const STREAMS: usize = 16;

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
        self.post("/v1/models", body).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let r = self
            .bench
            .target
            .client
            .post(self.url(path))
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
        self.ready_at(&format!("/v1/models/{id}")).await
    }

    async fn ready_at(&self, path: &str) -> anyhow::Result<Value> {
        let id = path;
        loop {
            let entry: Value = self
                .bench
                .target
                .client
                .get(self.url(path))
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
    // The model registry's child processes run this binary (`registry.tool_binary` unset).
    genrt_actors::engine::tool::serve_if_asked();
    let args = Args::parse();
    // RUST_LOG (e.g. `llama-cpp-2=info`, for llama.cpp's "reserve took" at each adapter
    // switch) shows the engine's log on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
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

    // 3. Adapters: the base with 16 slots in all and 4 adapters, in three setups (below).
    let base_file = store.join("lora-base.gguf");
    if std::fs::hard_link(&args.model, &base_file).is_err() {
        std::fs::copy(&args.model, &base_file)?;
    }
    // The attention projections, rank 8: what PEFT's LoRA recipes for llama models adapt.
    let targets = ["attn_q", "attn_k", "attn_v", "attn_output"];
    let mut adapter_mib = 0.0;
    for (i, name) in ADAPTERS.iter().enumerate() {
        let spec = LoraSpec {
            rank: 8,
            alpha: 16.0,
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
            seed: 100 + i as u64,
            magnitude: 0.01,
        };
        let bytes = synth::write_lora(&base_file, &store.join(format!("{name}.gguf")), &spec)?;
        adapter_mib = bytes as f64 / 1048576.0;
    }
    // (replicas, engine threads each): one replica on every thread; one replica on one
    // thread; as many one-thread replicas as threads, side by side, where adapter-affine
    // placement keeps each set on one replica.
    let mut setups = vec![(1, args.threads)];
    if args.threads != 1 {
        setups.extend([(1, 1), (args.threads, 1)]);
    }
    let mut lora = Vec::new();
    for (replicas, threads) in setups {
        lora.push(adapters(&bench, &admin, &args, &sha, replicas, threads).await?);
    }
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
        "The synthetic model ({:.2} B parameters, {n} layers, F16, {:.0} MiB) to Q8_0. Raw: llama.cpp's `llama_model_quantize` called in this process, every core. genrt: `POST /v1/models` with `\"quantize\": \"Q8_0\"` on the F16 file until `ready` (the source's sha256, the GGUF checks, a llama.cpp load checking every tensor in a child process, the quantization on every core in another, the output's checks and sha256).\n",
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
    writeln!(md, "\n## LoRA adapters\n")?;
    writeln!(
        md,
        "SmolLM2 (Q4_1) registered with {STREAMS} slots, and 4 adapters written for it (rank 8, alpha 16, on `attn_q`, `attn_k`, `attn_v`, `attn_output`; {adapter_mib:.1} MiB each). {STREAMS} concurrent streams of {} tokens (greedy, end of generation ignored, no cache): all on the base, against the same streams spread over the 4 adapters (4 each, sent in a shuffled order). llama.cpp applies adapters per context, so a replica runs one adapter set per decode step (each set's sequences on consecutive slots, one pass), taking turns of {} steps between the sets that have work: 4 times the steps for the same tokens, and a graph reserve at each turn. With several replicas, the pool keeps each set's sequences on one replica (adapter-affine placement) and the replicas step side by side, each on its own thread. Summed decode tokens/s over {} alternating rounds, for each setup of the model (the same for the base and the adapters).\n",
        args.stream_tokens,
        genrt_actors::engine::ADAPTER_QUANTUM_STEPS,
        args.rounds
    )?;
    writeln!(md, "| replicas × engine threads (slots each) | {STREAMS} streams on the base, tokens/s (each round) | {STREAMS} streams over 4 adapters, tokens/s (each round) | ÷ base |")?;
    writeln!(md, "|---|---|---|---|")?;
    let rounds = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for l in &lora {
        writeln!(
            md,
            "| {} × {} ({}) | {:.1} ({}) | {:.1} ({}) | {:.2}× |",
            l.replicas,
            l.threads,
            STREAMS / l.replicas as usize,
            mean(&l.plain),
            rounds(&l.plain),
            mean(&l.adapted),
            rounds(&l.adapted),
            mean(&l.adapted) / mean(&l.plain)
        )?;
    }
    // The goal compares the best each side gets from the same cores, whatever the setup: an
    // operator sets a model up once for the traffic it serves.
    let best = |side: fn(&LoraFigures) -> &Vec<f64>| {
        lora.iter()
            .map(|l| (mean(side(l)), format!("{} × {}", l.replicas, l.threads)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .expect("a setup")
    };
    let (best_plain, plain_setup) = best(|l| &l.plain);
    let (best_adapted, adapted_setup) = best(|l| &l.adapted);
    writeln!(
        md,
        "\nBest of each side over these setups (at most {} threads): over 4 adapters {best_adapted:.1} tokens/s ({adapted_setup}) ÷ on the base {best_plain:.1} tokens/s ({plain_setup}) = **{:.2}×** (goal ≥ 0.70×). On one replica with {} threads alone: {:.2}×.",
        args.threads,
        best_adapted / best_plain,
        args.threads,
        mean(&lora[0].adapted) / mean(&lora[0].plain)
    )?;
    writeln!(
        md,
        "\nOn one replica the adapters' 4-sequence steps are 4 times as many as the base's 16-sequence steps for the same tokens, and each pays the same fixed costs: reading the weights, building the graph, sampling, waking the replica's second thread, and the barriers between graph nodes (`actors/src/engine/threadpool.rs`). One-thread replicas side by side have no barriers and pay the rest on both cores at once. Adapters loaded after the runs: {}, {:.1} MiB (counted in the memory budget).\n",
        lora[0].loaded,
        lora[0].loaded_bytes as f64 / 1048576.0
    )?;
    writeln!(md, "| | ms | ÷ the base's first token |")?;
    writeln!(md, "|---|---|---|")?;
    writeln!(
        md,
        "| the base loaded, a function's first token | {:.0} | 1.00× |",
        lora[0].base_first_token_ms
    )?;
    writeln!(
        md,
        "| adapter registration (path, sha256, checks against the base) → deploy → first token, the adapter cold | {:.0} | {:.2}× |",
        lora[0].adapter_first_token_ms,
        lora[0].adapter_first_token_ms / lora[0].base_first_token_ms
    )?;
    std::fs::write(args.out.join("MODELS.md"), &md)?;
    println!("{md}");
    bench.server.stop().await?;
    Ok(())
}

/// Which adapter each of the 16 streams of round `round` uses, in the order they are sent:
/// 4 of each, shuffled (a fixed shuffle per round), as requests of several tenants' functions
/// arrive in no particular order. (In turns, `0 1 2 3 0 1 …`, least-busy placement over two
/// replicas would keep each adapter on one replica by chance.)
fn arrival_order(round: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..STREAMS).map(|i| i % ADAPTERS.len()).collect();
    // Fisher–Yates on a xorshift64 sequence: reproducible, and no dependency for 16 numbers.
    let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ (round + 1);
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// What [`adapters`] measured for one setup of the model.
struct LoraFigures {
    replicas: u32,
    threads: u32,
    /// Summed decode tokens/s of each round.
    plain: Vec<f64>,
    adapted: Vec<f64>,
    base_first_token_ms: f64,
    adapter_first_token_ms: f64,
    loaded: u64,
    loaded_bytes: u64,
}

/// Registers the base (`lora-base.gguf` in the store) as `lora-<threads>t` with 16 slots and
/// the 4 adapters on it, timing the first adapter from registration to its first token, then
/// runs the rounds of 16 streams on the base and over the adapters.
async fn adapters(
    bench: &Bench,
    admin: &Admin<'_>,
    args: &Args,
    sha: &str,
    replicas: u32,
    threads: u32,
) -> anyhow::Result<LoraFigures> {
    let base = format!("lora-{replicas}x{threads}t");
    // Every stream has a slot, whatever the split.
    let slots = (STREAMS as u32).div_ceil(replicas);
    admin
        .register(
            json!({"id": base, "source": {"path": "lora-base.gguf"}, "sha256": sha,
                   "settings": {"n_ctx": 1024, "slots": slots, "threads": threads,
                                "min_replicas": replicas, "max_replicas": replicas}}),
        )
        .await?;
    admin.ready(&base).await?;
    let store = PathBuf::from(bench.server.state().registry.store_root());
    let plain_name = format!("{base}-plain");
    let plain = json!({"name": plain_name, "model": base, "prompt": "{{ prompt }}",
                       "params": {"temperature": 0}, "cache": {"enabled": false}});
    bench.deploy(plain.clone()).await?;
    let one_token = |name: String| async move {
        bench
            .target
            .stream(
                &name,
                json!({"input": {"prompt": prompt(3)}, "params": {"max_tokens": 1}}),
            )
            .await
    };
    // The base loaded and warm: its own first token is the baseline of the adapter's.
    one_token(plain_name.clone()).await;
    let base_first_token_ms = one_token(plain_name.clone()).await.ttft_ms;
    let mut adapter_first_token_ms = 0.0;
    for (i, name) in ADAPTERS.iter().enumerate() {
        let file = store.join(format!("{name}.gguf"));
        let file_sha = sha256_file(&file)?;
        // The first adapter is timed from its registration to its first token: the request,
        // the file's sha256 and checks against the base, the deploy, the lazy load.
        let started = Instant::now();
        admin
            .post(
                &format!("/v1/models/{base}/adapters"),
                json!({"id": name, "source": {"path": format!("{name}.gguf")}, "sha256": file_sha}),
            )
            .await?;
        admin
            .ready_at(&format!("/v1/models/{base}/adapters/{name}"))
            .await?;
        let mut f = plain.clone();
        f["name"] = json!(format!("{base}-{name}"));
        f["adapters"] = json!([{"id": name}]);
        bench.deploy(f).await?;
        if i == 0 {
            if !one_token(format!("{base}-{name}")).await.ok {
                bail!("the adapter did not answer");
            }
            adapter_first_token_ms = started.elapsed().as_secs_f64() * 1000.0;
        }
    }
    let round = |functions: Vec<String>| async move {
        let streams = functions
            .iter()
            .enumerate()
            .map(|(i, f)| bench.target.stream(f, stream_body(i, args.stream_tokens)));
        let samples = futures_util::future::join_all(streams).await;
        if samples.iter().any(|s| !s.ok) {
            bail!("a stream failed");
        }
        summed_decode_tokens_per_s(&samples).context("no tokens")
    };
    let (mut plain_tps, mut adapted_tps) = (Vec::new(), Vec::new());
    for r in 0..args.rounds {
        let plain_round = round(vec![plain_name.clone(); STREAMS]);
        let adapted_round = round(
            arrival_order(r as u64)
                .into_iter()
                .map(|a| format!("{base}-{}", ADAPTERS[a]))
                .collect(),
        );
        // Alternating which goes first, so that neither always runs on a warmer machine.
        if r % 2 == 0 {
            plain_tps.push(plain_round.await?);
            adapted_tps.push(adapted_round.await?);
        } else {
            adapted_tps.push(adapted_round.await?);
            plain_tps.push(plain_round.await?);
        }
        println!(
            "{replicas} × {threads} thread(s), round {r}: base {:.1} tokens/s, 4 adapters {:.1} tokens/s (sent in the order {:?})",
            plain_tps[r], adapted_tps[r], arrival_order(r as u64)
        );
    }
    let status: Value = bench
        .target
        .client
        .get(format!("{}/v1/models/{base}", bench.target.base))
        .bearer_auth(&admin.token)
        .send()
        .await?
        .json()
        .await?;
    Ok(LoraFigures {
        replicas,
        threads,
        plain: plain_tps,
        adapted: adapted_tps,
        base_first_token_ms,
        adapter_first_token_ms,
        loaded: status["adapters_loaded"].as_u64().unwrap_or(0),
        loaded_bytes: status["adapter_memory_bytes"].as_u64().unwrap_or(0),
    })
}

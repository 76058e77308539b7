//! `genrt-bench-gpu`: the [engine] benchmark on a GPU. genrt (in this process, over HTTP, with
//! its continuous batching) against raw llama.cpp driven in the same process through
//! llama-cpp-2, on the same GPU, model, layer placement and greedy decoding: summed decode
//! tokens/s at 1, 16 and 64 concurrent streams, TTFT p50/p99, and cold start. Writes
//! `benchmarks/RESULTS-gpu.md`. `benchmarks/gpu/run.sh` builds what it needs and runs it.
//!
//! Every figure is a ratio against the baseline measured in the same run; the paired runs
//! alternate (raw, then genrt) and the median is reported.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use genrt_actors::{Backend, LlamaCppBackend, ModelConfig};

use genrt_benchmarks::harness::{prompt, stream_body, Bench, MODEL, SYSTEM};
use genrt_benchmarks::load::summed_decode_tokens_per_s;
use genrt_benchmarks::raw;
use genrt_benchmarks::stats::{median, Latencies};

#[derive(Parser)]
struct Args {
    /// The model (`genrt-make-model` writes a ~1B one with the SmolLM2 tokenizer).
    #[arg(long)]
    model: PathBuf,
    /// Where the backend modules are (default: beside this binary).
    #[arg(long)]
    backends_dir: Option<PathBuf>,
    /// Layers on the GPU, for genrt and raw alike (default: all).
    #[arg(long)]
    n_gpu_layers: Option<u32>,
    /// CPU threads (the GPU does the arithmetic; these only feed it).
    #[arg(long, default_value_t = 4)]
    threads: u32,
    /// Tokens generated per stream.
    #[arg(long, default_value_t = 128)]
    tokens: u32,
    /// Concurrent streams to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    streams: Vec<usize>,
    /// Paired runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tokens per sequence (prompt and completion).
    #[arg(long, default_value_t = 512)]
    n_ctx: u32,
    /// Run without a GPU (to check the benchmark itself on a CPU machine).
    #[arg(long)]
    allow_cpu: bool,
    #[arg(long, default_value = "benchmarks/RESULTS-gpu.md")]
    out: PathBuf,
}

struct Row {
    streams: usize,
    genrt: f64,
    raw: f64,
    ttft: Latencies,
    raw_first_ms: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    // The model registry's child processes run this binary (`registry.tool_binary` unset).
    genrt_actors::engine::tool::serve_if_asked();
    let args = Args::parse();
    // llama.cpp's own messages (why a backend module did not load, where the layers went).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,genrt_actors=info".into()),
        ))
        .init();
    if !args.model.is_file() {
        bail!("{} is missing", args.model.display());
    }
    let loaded = genrt_actors::load_backends(args.backends_dir.as_deref())?;
    let devices = LlamaCppBackend::new()?.devices();
    let gpu = devices.iter().find(|d| d.takes_layers()).cloned();
    let device = match &gpu {
        Some(g) => format!("{} ({}, {:.0} GiB)", g.name, g.description, g.memory_total_bytes as f64 / (1u64 << 30) as f64),
        None if args.allow_cpu => "CPU (no GPU backend: a check of the benchmark, not a GPU figure)".into(),
        None => bail!(
            "no GPU backend was loaded from {} (loaded: {:?}); build one with scripts/build-cuda-backend.sh",
            loaded.dir.display(),
            loaded.backends
        ),
    };
    println!(
        "device: {device}; backends {:?} from {}",
        loaded.backends,
        loaded.dir.display()
    );
    let slots = *args.streams.iter().max().unwrap_or(&1);
    let mut model = ModelConfig::new(MODEL, &args.model);
    model.threads = args.threads;
    model.slots = slots as u32;
    model.n_ctx = args.n_ctx;
    model.idle_timeout_s = 2;
    model.queue_capacity = 1024;
    model.n_gpu_layers = args.n_gpu_layers;
    let kv_streams = model.kv_streams();
    let b = Bench::start(model, args.backends_dir.clone()).await?;
    let mut notes = String::new();

    // Cold start: unloaded → first streamed token, against an in-process load, a context of
    // the replica's shape and the prefill.
    let mut cold = Vec::new();
    for i in 0..args.runs {
        cold.push(b.first_token_ms(i).await?);
        if i == 0 {
            let state = b.model_state().await;
            let _ = writeln!(notes, "- Placement as genrt reports it: device {}, {} layers on the GPU, {:.0} MiB on the GPU and {:.0} MiB in host memory (weights and KV).",
                state["device"], state["gpu_layers"],
                state["gpu_memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                state["memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0);
        }
        b.wait_unloaded().await;
    }
    let mut raw_cold = Vec::new();
    for i in 0..args.runs {
        raw_cold.push(tokio::task::block_in_place(|| {
            raw::cold_first_token_ms(
                &args.model,
                args.threads,
                args.n_gpu_layers,
                (kv_streams, args.n_ctx),
                SYSTEM,
                &prompt(i),
            )
        })?);
    }
    let (cold, raw_cold) = (median(cold), median(raw_cold));

    let raw = tokio::task::block_in_place(|| {
        raw::Raw::load(&args.model, args.threads, args.n_gpu_layers)
    })?;
    let prompts: Vec<_> = (0..slots)
        .map(|i| raw.tokens(SYSTEM, &prompt(i)))
        .collect::<Result<_, _>>()?;
    if !b.target.stream("stream", stream_body(0, 8)).await.ok {
        bail!("warm-up failed");
    }
    let mut rows = Vec::new();
    for &n in &args.streams {
        let (mut g, mut r, mut first) = (Vec::new(), Vec::new(), Vec::new());
        let mut ttft = Latencies::new();
        for _ in 0..args.runs {
            let run = tokio::task::block_in_place(|| {
                raw.batched_in(n as u32, args.n_ctx, &prompts[..n], args.tokens)
            })?;
            r.push(run.decode_tokens_per_s);
            first.push(run.first_tokens_ms);
            let samples = futures_util::future::join_all(
                (0..n).map(|i| b.target.stream("stream", stream_body(i, args.tokens))),
            )
            .await;
            if samples.iter().any(|s| !s.ok || s.first_token_at.is_none()) {
                bail!("a stream failed at {n} streams");
            }
            g.push(summed_decode_tokens_per_s(&samples).expect("every stream has tokens"));
            samples.iter().for_each(|s| ttft.record_ms(s.ttft_ms));
        }
        let row = Row {
            streams: n,
            genrt: median(g),
            raw: median(r),
            ttft,
            raw_first_ms: median(first),
        };
        println!(
            "{n} streams: genrt {:.1} tokens/s, raw {:.1} ({:.3}×); TTFT p50/p99 {:.1}/{:.1} ms",
            row.genrt,
            row.raw,
            row.genrt / row.raw,
            row.ttft.p(0.5),
            row.ttft.p(0.99)
        );
        rows.push(row);
    }
    drop(raw);
    b.server.stop().await?;
    write_results(&args, &device, &rows, (cold, raw_cold), &notes)
}

fn write_results(
    args: &Args,
    device: &str,
    rows: &[Row],
    (cold, raw_cold): (f64, f64),
    notes: &str,
) -> anyhow::Result<()> {
    let mut md = String::new();
    let size = std::fs::metadata(&args.model).map(|m| m.len()).unwrap_or(0);
    let _ = writeln!(md, "# GPU benchmark results\n");
    let _ = writeln!(md, "Produced by `benchmarks/gpu/run.sh` (`genrt-bench-gpu`) on {}, {}. Model: `{}` ({:.0} MiB), {} tokens per stream after a ~30-token chat prompt, greedy decoding, end of generation ignored, {} CPU threads, median of {} paired runs. Baseline: raw llama.cpp in the same process through llama-cpp-2, the same model, layers and GPU, decoding all N sequences in one batch per step (the ceiling of continuous batching). Each ratio is genrt over the baseline of the same run.\n",
        device,
        chrono::Utc::now().format("%Y-%m-%d"),
        args.model.file_name().unwrap_or_default().to_string_lossy(),
        size as f64 / 1048576.0,
        args.tokens, args.threads, args.runs);
    let _ = writeln!(md, "| streams | genrt decode tokens/s (summed) | raw llama.cpp tokens/s | ratio | goal | met | genrt TTFT p50 / p99 (ms) | raw prefill to first tokens (ms) |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ratio = r.genrt / r.raw;
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.3} | ≥ 0.90× | {} | {:.1} / {:.1} | {:.1} |",
            r.streams,
            r.genrt,
            r.raw,
            ratio,
            if ratio >= 0.90 { "yes" } else { "**no**" },
            r.ttft.p(0.5),
            r.ttft.p(0.99),
            r.raw_first_ms
        );
    }
    let _ = writeln!(md, "\n| cold start to first token | genrt (ms) | in-process load, same context, prefill (ms) | ratio |");
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| unloaded → first streamed token | {cold:.0} | {raw_cold:.0} | {:.2} |",
        cold / raw_cold
    );
    let _ = writeln!(md, "\n## Details\n\n{notes}- Summed decode tokens/s counts every token after each stream's first, between the first stream's first token and the last stream's last token (genrt, over HTTP, Server-Sent Events), against the decode steps of the raw batch after its prefill.\n- TTFT is measured by the client, from sending the request to the first token event, for every stream of every run.");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &md)?;
    println!("{md}");
    Ok(())
}

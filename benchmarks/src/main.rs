//! `genrt-bench`: the [engine] benchmarks. Every figure is a ratio against a baseline measured
//! in the same run, on the same machine, with the same model and thread count; the results go
//! to `benchmarks/RESULTS.md` and `benchmarks/results.svg`.
//!
//! Phases, in this order so that the in-process baselines do not disturb the memory figures:
//! memory and cold start (genrt only, then raw), one stream, 16 streams, runtime overhead,
//! cached path against a bare actix-web echo, prefix reuse, an open-loop run.

use genrt_benchmarks::{harness, load, plot, raw, stats};

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use genrt_actors::ModelConfig;
use serde_json::json;

use harness::{prompt, stream_body, Bench, MODEL, SYSTEM};
use stats::{median, peak_rss_mib, rss_mib, Latencies};

const N_CTX: u32 = 1024;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// CPU threads, for genrt and the baselines alike.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Tokens generated per stream.
    #[arg(long, default_value_t = 128)]
    tokens: u32,
    /// Concurrent streams of the batched comparison.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Repetitions of each paired measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Where RESULTS.md and results.svg go.
    #[arg(long, default_value = "benchmarks")]
    out: PathBuf,
}

struct Row {
    name: &'static str,
    genrt: String,
    baseline: String,
    ratio: f64,
    goal: &'static str,
    met: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // The model registry's child processes run this binary (`registry.tool_binary` unset).
    genrt_actors::engine::tool::serve_if_asked();
    let args = Args::parse();
    // RUST_LOG (e.g. `genrt_actors::engine::scheduler=trace`) shows each engine step on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if !args.model.is_file() {
        bail!("{} is missing: run `make model`", args.model.display());
    }
    let (threads, tokens, streams, runs) = (args.threads, args.tokens, args.streams, args.runs);
    let model_path = args.model.clone();
    let out = args.out.clone();
    let mut model = ModelConfig::new(MODEL, &args.model);
    model.threads = args.threads;
    model.slots = args.streams as u32;
    model.n_ctx = N_CTX;
    model.idle_timeout_s = 2;
    model.queue_capacity = 256;
    let kv_streams = model.kv_streams();
    let b = Bench::start(model, None).await?;
    let mut rows = Vec::new();
    let mut notes = String::new();

    // 1. Memory and cold start: genrt only; nothing else has touched llama.cpp yet.
    let rss_before = rss_mib();
    let mappings_before = stats::rss_by_mapping();
    let mut cold = Vec::new();
    let mut rss_loaded = 0.0;
    let mut rss_after = Vec::new();
    for i in 0..runs {
        cold.push(b.first_token_ms(i).await?);
        rss_loaded = f64::max(rss_loaded, rss_mib());
        b.wait_unloaded().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        rss_after.push(rss_mib());
    }
    let _ = writeln!(notes, "- RSS by scale-to-zero cycle (MiB): {}; before the first load {rss_before:.0}; the difference is paid once, on the first load (llama.cpp's thread pool and global state), and does not grow with cycles.",
        rss_after.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "));
    let rss_after = median(rss_after);
    let profile = stats::grown(&mappings_before, &stats::rss_by_mapping());
    let _ = writeln!(notes, "- Where the memory kept after scale to zero is (RSS growth by mapping since before the first load, from /proc/self/smaps): {}.",
        profile.iter().map(|(k, d)| format!("{k} {:+.1} MiB", *d as f64 / 1024.0)).collect::<Vec<_>>().join("; "));
    let mut raw_cold = Vec::new();
    for i in 0..runs {
        raw_cold.push(tokio::task::block_in_place(|| {
            // The same context shape as a replica: a stream per slot and the prefix cache's.
            raw::cold_first_token_ms(
                &model_path,
                threads,
                None,
                (kv_streams, N_CTX),
                SYSTEM,
                &prompt(i),
            )
        })?);
    }
    let (cold, raw_cold) = (median(cold), median(raw_cold));
    rows.push(Row {
        name: "cold start to first token (ms)",
        genrt: format!("{cold:.0}"),
        baseline: format!("{raw_cold:.0} (in-process load, same context, prefill)"),
        ratio: cold / raw_cold,
        goal: "≤ 2.0×",
        met: cold <= 2.0 * raw_cold,
    });
    let growth = (rss_after - rss_before) / rss_before;
    rows.push(Row {
        name: "RSS after scale to zero (MiB)",
        genrt: format!("{rss_after:.0}"),
        baseline: format!("{rss_before:.0} before load ({rss_loaded:.0} loaded)"),
        ratio: rss_after / rss_before,
        goal: "≤ 1.10×",
        met: growth <= 0.10,
    });

    // 2. One stream: decode rate after the first token, streamed over HTTP vs in-process.
    let raw = tokio::task::block_in_place(|| raw::Raw::load(&model_path, threads, None))?;
    let prompts: Vec<_> = (0..streams)
        .map(|i| raw.tokens(SYSTEM, &prompt(i)))
        .collect::<Result<_, _>>()?;
    let warm = b.target.stream("stream", stream_body(0, 8)).await;
    if !warm.ok {
        bail!("warm-up failed");
    }
    let (mut g1, mut r1) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        r1.push(
            tokio::task::block_in_place(|| raw.batched(&prompts[..1], tokens))?.decode_tokens_per_s,
        );
        let s = b.target.stream("stream", stream_body(0, tokens)).await;
        let window = (s.last_token_at.unwrap() - s.first_token_at.unwrap()).as_secs_f64();
        g1.push((s.tokens - 1) as f64 / window);
    }
    let ratio = paired_ratio(&g1, &r1);
    let _ = writeln!(notes, "- {}", pairs_note("1 stream", &g1, &r1));
    let (g1, r1) = (median(g1), median(r1));
    rows.push(Row {
        name: "1 stream, decode tokens/s",
        genrt: format!("{g1:.1}"),
        baseline: format!("{r1:.1} (raw llama.cpp)"),
        ratio,
        goal: "≥ 0.95×",
        met: ratio >= 0.95,
    });

    // 3. N concurrent streams: summed decode rate vs raw llama.cpp decoding N sequences in
    // one batch.
    let (mut gn, mut rn, mut e2e_tps, mut raw_first) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last_report = None;
    for _ in 0..runs {
        let run = tokio::task::block_in_place(|| raw.batched(&prompts, tokens))?;
        rn.push(run.decode_tokens_per_s);
        raw_first.push(run.first_tokens_ms);
        let started = Instant::now();
        let samples = futures_util::future::join_all(
            (0..streams).map(|i| b.target.stream("stream", stream_body(i, tokens))),
        )
        .await;
        let wall = started.elapsed().as_secs_f64();
        if samples.iter().any(|s| !s.ok) {
            bail!("a concurrent stream failed");
        }
        gn.push(load::summed_decode_tokens_per_s(&samples).expect("every stream has tokens"));
        e2e_tps.push(samples.iter().map(|s| s.tokens).sum::<u64>() as f64 / wall);
        last_report = Some(samples);
    }
    let ratio = paired_ratio(&gn, &rn);
    let _ = writeln!(
        notes,
        "- {}",
        pairs_note(&format!("{streams} streams"), &gn, &rn)
    );
    let (gn, rn) = (median(gn), median(rn));
    rows.push(Row {
        name: "16 streams, summed decode tokens/s",
        genrt: format!("{gn:.1}"),
        baseline: format!("{rn:.1} (raw, one batch)"),
        ratio,
        goal: "≥ 0.90×",
        met: ratio >= 0.90,
    });
    let mut ttft16 = Latencies::new();
    let mut itl16 = Latencies::new();
    for s in last_report.iter().flatten() {
        ttft16.record_ms(s.ttft_ms);
        s.itl_ms.iter().for_each(|g| itl16.record_ms(*g));
    }
    let _ = writeln!(notes, "- {streams} concurrent streams of {tokens} tokens: end-to-end {:.1} tokens/s including prefill; TTFT p50/p90/p99 {} ms (raw llama.cpp: {:.0} ms from the start of its batched prefill to every sequence's first token); inter-token p50/p90/p99 {} ms.",
        median(e2e_tps), ttft16.summary(), median(raw_first), itl16.summary());
    drop(raw);

    // 4. Runtime overhead: client time minus the engine's own time, one short call at a time.
    let mut overhead = Latencies::new();
    b.warm_one_token(20).await?;
    for _ in 0..200 {
        overhead.record_ms(b.one_token_call().await?.overhead_ms());
    }
    rows.push(Row {
        name: "runtime overhead per invocation, p99 (ms)",
        genrt: format!("{:.2}", overhead.p(0.99)),
        baseline: "2 ms goal".into(),
        ratio: overhead.p(0.99) / 2.0,
        goal: "≤ 1.0× of 2 ms",
        met: overhead.p(0.99) <= 2.0,
    });
    let _ = writeln!(notes, "- Runtime overhead p50/p90/p99: {} ms (HTTP, JWT, the cached function lookup, dispatcher, function actor, pool, engine hand-off both ways, the record handed to the writer).", overhead.summary());

    // 5. Cached path against a bare actix-web JSON echo, 32 connections.
    let cached_body = json!({"input": {"prompt": "Cached question."}});
    b.target.invoke("cached", &cached_body).await?;
    let echo = harness::echo_server().await?;
    let (echo_rps, echo_lat) = load::request_loop(
        &b.target.client,
        &format!("http://{}/echo", echo.1),
        None,
        cached_body.clone(),
        32,
        Duration::from_secs(5),
    )
    .await;
    echo.0.stop(true).await;
    let url = format!("{}/v1/functions/cached/invoke", b.target.base);
    let (cached_rps, cached_lat) = load::request_loop(
        &b.target.client,
        &url,
        Some(&b.target.token),
        cached_body,
        32,
        Duration::from_secs(5),
    )
    .await;
    rows.push(Row {
        name: "cached invocations, requests/s (32 conns)",
        genrt: format!("{cached_rps:.0}"),
        baseline: format!("{echo_rps:.0} (bare actix-web echo)"),
        ratio: cached_rps / echo_rps,
        goal: "≥ 0.25×",
        met: cached_rps >= 0.25 * echo_rps,
    });
    rows.push(Row {
        name: "cached invocations, p99 (ms)",
        genrt: format!("{:.2}", cached_lat.p(0.99)),
        baseline: format!("{:.2} (echo)", echo_lat.p(0.99)),
        ratio: cached_lat.p(0.99) / 5.0,
        goal: "≤ 5 ms",
        met: cached_lat.p(0.99) <= 5.0,
    });

    // 6. Prefix reuse: TTFT with a ~300-token system prompt, first call (prefix prefilled)
    // against later calls (prefix copied from the replica's cache).
    let (mut miss, mut hit) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let system = format!(
            "Reference {i}. {}",
            "Answer carefully, cite the guide, keep the tone neutral and the sentences short. "
                .repeat(18)
        );
        let name = format!("prefixed-{i}");
        b.deploy(
            json!({"name": name, "model": MODEL, "system": system, "prompt": "{{ prompt }}",
            "params": {"temperature": 0, "max_tokens": 1}, "cache": {"enabled": false}}),
        )
        .await?;
        let first = b
            .target
            .invoke(&name, &json!({"input": {"prompt": "First question?"}}))
            .await?;
        let second = b
            .target
            .invoke(&name, &json!({"input": {"prompt": "Second question?"}}))
            .await?;
        miss.push(first["timings"]["ttft_ms"].as_f64().unwrap());
        hit.push(second["timings"]["ttft_ms"].as_f64().unwrap());
        if i == 0 {
            let _ = writeln!(notes, "- Prefix reuse: prompt {} tokens, of which {} came from the prefix cache on the second call.",
                second["usage"]["prompt_tokens"], second["usage"]["cached_prompt_tokens"]);
        }
    }
    let (miss, hit) = (median(miss), median(hit));
    rows.push(Row {
        name: "TTFT with a 300-token system prompt, warm prefix (ms)",
        genrt: format!("{hit:.1}"),
        baseline: format!("{miss:.1} (first call)"),
        ratio: hit / miss,
        goal: "≤ 0.50×",
        met: hit <= 0.5 * miss,
    });

    // 7. Open loop: a fixed arrival rate, whatever the server does.
    let open = load::open_loop(&b.target, "stream", 4.0, Duration::from_secs(10), |i| {
        stream_body(i, 32)
    })
    .await;
    let _ = writeln!(notes, "- Open loop, 4 requests/s for 10 s, 32 tokens each: {} requests ({} failed), {:.1} requests/s, {:.1} tokens/s; TTFT {} ms; inter-token {} ms; end-to-end {} ms (p50/p90/p99).",
        open.requests, open.failed, open.requests_per_s(), open.tokens_per_s(), open.ttft.summary(), open.itl.summary(), open.e2e.summary());
    let closed = load::closed_loop(&b.target, "stream", 8, 2, move |i| stream_body(i, 32)).await;
    let _ = writeln!(notes, "- Closed loop, 8 clients × 2 requests, 32 tokens each: {:.1} requests/s, {:.1} tokens/s; TTFT {} ms; inter-token {} ms; end-to-end {} ms (p50/p90/p99).",
        closed.requests_per_s(), closed.tokens_per_s(), closed.ttft.summary(), closed.itl.summary(), closed.e2e.summary());
    let _ = writeln!(
        notes,
        "- Peak RSS of the benchmark process (genrt and the in-process baselines): {:.0} MiB.",
        peak_rss_mib()
    );

    b.server.stop().await?;
    write_results(&out, &rows, &notes, threads, tokens, streams, runs)?;
    Ok(())
}

fn write_results(
    out: &std::path::Path,
    rows: &[Row],
    notes: &str,
    threads: u32,
    tokens: u32,
    streams: usize,
    runs: usize,
) -> anyhow::Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark results\n");
    let _ = writeln!(md, "Produced by `make bench` (`cargo run --release -p genrt-benchmarks --bin genrt-bench`) on {}; {} CPU threads for genrt and the baselines alike, SmolLM2-135M-Instruct Q4_1, greedy decoding, {tokens} tokens per stream, {streams} streams, median of {runs} paired runs. Each ratio is genrt over the baseline measured in the same run.\n",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "this machine".into()), threads);
    let _ = writeln!(
        md,
        "| measurement | genrt | baseline | ratio | goal | met |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.3} | {} | {} |",
            r.name,
            r.genrt,
            r.baseline,
            r.ratio,
            r.goal,
            if r.met { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(md, "\n![ratios](results.svg)\n\n## Details\n\n{notes}");
    // A run takes minutes: a missing `--out` folder is made rather than losing its figures.
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating the results folder {}", out.display()))?;
    // The soak section is written by `genrt-soak`, on its own schedule: keep it.
    let old = std::fs::read_to_string(out.join("RESULTS.md")).unwrap_or_default();
    if let (Some(b), Some(e)) = (
        old.find("<!-- soak:begin -->"),
        old.find("<!-- soak:end -->"),
    ) {
        let _ = writeln!(md, "\n{}", &old[b..e + "<!-- soak:end -->".len()]);
    }
    std::fs::write(out.join("RESULTS.md"), md)?;
    plot::ratios(
        &out.join("results.svg"),
        rows.iter().map(|r| (r.name, r.ratio, r.met)).collect(),
    )?;
    println!("{}", std::fs::read_to_string(out.join("RESULTS.md"))?);
    Ok(())
}

/// The median of the pairs' ratios (genrt over the baseline measured just before it): the
/// machine's speed drifts within a run (the shared 2-core machines by ±20% over a minute), and
/// a pair's two halves share their moment, so its ratio cancels the drift that a ratio of the
/// two medians would keep.
fn paired_ratio(genrt: &[f64], baseline: &[f64]) -> f64 {
    median(genrt.iter().zip(baseline).map(|(g, b)| g / b).collect())
}

/// Each pair of a paired measurement, and how far the baseline's own runs lay apart: on a
/// shared machine a single ratio hides how much the machine moved during the run, and a pair's
/// ratio moves by about as much as the baseline does.
fn pairs_note(name: &str, genrt: &[f64], baseline: &[f64]) -> String {
    let (lo, hi) = baseline
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let pairs = genrt
        .iter()
        .zip(baseline)
        .map(|(g, b)| format!("{g:.1} / {b:.1} = {:.2}", g / b))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{name}, each pair (genrt / raw tokens/s = ratio): {pairs}; raw's own runs {lo:.1}–{hi:.1} tokens/s, {:.0}% apart.",
        (hi / lo - 1.0) * 100.0
    )
}

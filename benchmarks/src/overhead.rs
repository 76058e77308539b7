//! `genrt-bench-overhead`: `genrt-bench`'s runtime-overhead loop alone, repeated in rounds and
//! split in two, for comparing builds of the request path. The host's noise moves this figure
//! by more than most changes do, so compare builds in alternating runs, never one against a
//! figure from another hour.
//!
//! Each call is a one-token streamed-function invocation, as in `genrt-bench`'s phase 4:
//! - overhead: client time minus the engine's own time (`total_ms - queue_ms`), the figure
//!   `genrt-bench` reports;
//! - before the engine: `queue_ms`, from the handler's receipt to the engine taking the job
//!   (admission, dispatcher, function actor, pool, replica, the engine thread's wake-up and
//!   tokenization);
//! - outside the server's clock: client time minus `total_ms` (the client, HTTP both ways,
//!   middleware and authentication before the receipt, and everything after the outcome);
//! - the HTTP floor: the same client posting the same body to a bare actix-web JSON echo,
//!   one echo after each invocation, so that the host's noise falls on both alike. What the
//!   outside part has above it is genrt's own work.

use genrt_benchmarks::{harness, load, stats};

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Parser;
use genrt_actors::ModelConfig;
use serde_json::json;

use harness::{Bench, MODEL};
use stats::Latencies;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// CPU threads of the model's context (as `genrt-bench`).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Rounds, each reported on its own line.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Invocations per round (`genrt-bench` makes 200).
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Then this many seconds of cached invocations over 32 connections (`genrt-bench`'s
    /// phase 5 without its echo baseline; for profiling the cached path). 0: none.
    #[arg(long, default_value_t = 0)]
    cached_s: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    genrt_actors::engine::tool::serve_if_asked();
    let args = Args::parse();
    // RUST_LOG (e.g. `sqlx::query=debug`: every statement a call makes) goes to stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if !args.model.is_file() {
        bail!("{} is missing: run `make model`", args.model.display());
    }
    // The same model configuration as `genrt-bench`.
    let mut model = ModelConfig::new(MODEL, &args.model);
    model.threads = args.threads;
    model.slots = 16;
    model.n_ctx = 1024;
    model.queue_capacity = 256;
    let b = Bench::start(model, None).await?;
    let body = harness::one_token_body();
    // Loads the model and warms every cache on the path.
    b.warm_one_token(20).await?;
    let (echo, echo_addr) = harness::echo_server().await?;
    let echo_url = format!("http://{echo_addr}/echo");
    for _ in 0..20 {
        echo_call(&b, &echo_url, &body).await?;
    }
    let mut all = Latencies::new();
    for round in 0..args.rounds {
        let (mut overhead, mut before, mut outside, mut floor) = (
            Latencies::new(),
            Latencies::new(),
            Latencies::new(),
            Latencies::new(),
        );
        for _ in 0..args.calls {
            let call = b.one_token_call().await?;
            let ms = call.overhead_ms();
            overhead.record_ms(ms);
            all.record_ms(ms);
            before.record_ms(call.queue_ms);
            outside.record_ms(call.outside_ms());
            floor.record_ms(echo_call(&b, &echo_url, &body).await?);
        }
        println!(
            "round {}: overhead {} ms (p50/p90/p99); before the engine {}; outside the server's clock {}; HTTP floor (bare echo) {}",
            round + 1,
            precise(&overhead),
            precise(&before),
            precise(&outside),
            precise(&floor)
        );
    }
    echo.stop(true).await;
    println!("all rounds: overhead {} ms", precise(&all));
    if args.cached_s > 0 {
        let cached_body = json!({"input": {"prompt": "Cached question."}});
        b.target.invoke("cached", &cached_body).await?;
        let (rps, latency) = load::request_loop(
            &b.target.client,
            &format!("{}/v1/functions/cached/invoke", b.target.base),
            Some(&b.target.token),
            cached_body,
            32,
            std::time::Duration::from_secs(args.cached_s),
        )
        .await;
        println!(
            "cached, 32 connections: {rps:.0} requests/s, {} ms",
            precise(&latency)
        );
    }
    let _ = b.server.stop().await;
    Ok(())
}

/// One post of `body` to the bare echo, in milliseconds.
async fn echo_call(b: &Bench, url: &str, body: &serde_json::Value) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = b.target.client.post(url).json(body).send().await?;
    if !r.status().is_success() {
        bail!("the echo answered {}", r.status());
    }
    // Parsed, as the invocation's answer is.
    r.json::<serde_json::Value>().await?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn precise(l: &Latencies) -> String {
    format!("{:.2} / {:.2} / {:.2}", l.p(0.5), l.p(0.9), l.p(0.99))
}

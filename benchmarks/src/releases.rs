//! Releases (issue #18): what a shadow costs the callers. An alias mirrors half its calls to
//! a shadow version; the callers' latency is measured against the same calls without the
//! shadow, in one run, in alternating rounds; the shadow's agreement figures are read from
//! `GET /v1/functions/{name}/stats`.
//!
//! SmolLM2 with 8 slots, two versions of a function (greedy, uncached, 32 tokens), `prod` →
//! version 1, warmed up. Two closed-loop clients call `capital@prod` with a think time between calls,
//! each call with its own split key (so the shadow's 50% is of keys, sticky). Rounds
//! alternate: no shadow, shadow at 50% on version 2, and again. Shadows run at idle priority:
//! they start only on a replica with half its slots free and decode only in steps no caller's
//! sequence needs. Writes RELEASES.md.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use genrt_actors::ModelConfig;
use genrt_benchmarks::harness::{Bench, MODEL, SYSTEM};
use genrt_benchmarks::stats::Latencies;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Calls each client makes per round.
    #[arg(long, default_value_t = 25)]
    calls: usize,
    /// Rounds of each side (they alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pause between a client's calls.
    #[arg(long, default_value_t = 300)]
    think_ms: u64,
    #[arg(long, default_value = "benchmarks")]
    out: PathBuf,
}

const CLIENTS: usize = 2;
const TOKENS: u32 = 32;
const COUNTRIES: [&str; 12] = [
    "France", "Italy", "Japan", "Peru", "Chile", "Kenya", "Egypt", "Spain", "Norway", "Ghana",
    "India", "Mexico",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // The model registry's child processes run this binary (`registry.tool_binary` unset).
    genrt_actors::engine::tool::serve_if_asked();
    let args = Args::parse();
    let mut model = ModelConfig::new(MODEL, &args.model);
    model.threads = args.threads;
    model.slots = 8;
    // A shadow takes one of the tenant's background places or does not run: room for one per
    // client, so that shadows are not skipped for want of places.
    let bench = Bench::start_adjusted(vec![model], None, |c| {
        c.tenancy.max_concurrent_prewarms = 8;
    })
    .await?;
    let definition = |system: &str| {
        json!({"name": "capital", "model": MODEL, "system": system,
               "prompt": "Tell me about the capital of {{ country }}.",
               "params": {"max_tokens": TOKENS, "temperature": 0, "ignore_eos": true},
               "cache": {"enabled": false}})
    };
    bench.deploy(definition(SYSTEM)).await?;
    bench
        .deploy(definition("You are a concise travel guide."))
        .await?;
    // Warm: the model loaded and both versions' prompts seen, before anything is timed.
    for version in [2, 1] {
        let target = json!({"version": version});
        put(&bench, "/v1/functions/capital/aliases/prod", target).await?;
        client(&bench, usize::MAX / 2, 4, 0, version).await?;
    }
    let mut plain = Latencies::new();
    let mut shadowed = Latencies::new();
    let mut rounds: Vec<(bool, f64, f64)> = Vec::new();
    let mut next_key = 0usize;
    for round in 0..2 * args.rounds {
        let shadow = round % 2 == 1;
        let target = if shadow {
            json!({"version": 1, "shadow": {"version": 2, "percent": 50}})
        } else {
            json!({"version": 1})
        };
        put(&bench, "/v1/functions/capital/aliases/prod", target).await?;
        // Shadows of the previous round finish before this one is timed.
        settle(&bench).await;
        let mut this = Latencies::new();
        let base = next_key;
        next_key += CLIENTS * args.calls;
        let clients = (0..CLIENTS).map(|c| {
            let first = base + c * args.calls;
            client(&bench, first, args.calls, args.think_ms, 1)
        });
        for latencies in futures_util::future::try_join_all(clients).await? {
            for ms in latencies {
                this.record_ms(ms);
                if shadow {
                    shadowed.record_ms(ms);
                } else {
                    plain.record_ms(ms);
                }
            }
        }
        eprintln!(
            "round {round} ({}): {}",
            if shadow { "shadow 50%" } else { "no shadow" },
            this.summary()
        );
        rounds.push((shadow, this.p(0.5), this.p(0.99)));
    }
    settle(&bench).await;
    let stats = get(&bench, "/v1/functions/capital/stats").await?;
    let v2 = stats["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["version"] == 2))
        .cloned()
        .unwrap_or(Value::Null);
    let agreement = &v2["shadow"];
    let spread = |side: bool| {
        let p99: Vec<f64> = rounds.iter().filter(|r| r.0 == side).map(|r| r.2).collect();
        let (lo, hi) = p99
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        (lo, hi)
    };
    let (plain_lo, plain_hi) = spread(false);
    let mut md = String::new();
    writeln!(md, "# Releases: what a shadow costs the callers\n")?;
    writeln!(
        md,
        "`target/release/genrt-bench-releases` ({CLIENTS} closed-loop clients, {} calls each per round, {} ms think time, {} rounds of each side alternating; {TOKENS} tokens per call, greedy, uncached; SmolLM2 Q4_1, 8 slots, {} engine threads). Caller latency is end to end over HTTP. The shadow mirrors 50% of the split keys to version 2 at idle priority.\n",
        args.calls, args.think_ms, args.rounds, args.threads
    )?;
    writeln!(md, "| | calls | p50 (ms) | p99 (ms) | p99 ÷ without |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    writeln!(
        md,
        "| without a shadow | {} | {:.0} | {:.0} | 1.00× |",
        plain.len(),
        plain.p(0.5),
        plain.p(0.99)
    )?;
    writeln!(
        md,
        "| shadow at 50% | {} | {:.0} | {:.0} | {:.2}× |\n",
        shadowed.len(),
        shadowed.p(0.5),
        shadowed.p(0.99),
        shadowed.p(0.99) / plain.p(0.99)
    )?;
    writeln!(
        md,
        "Noise: the rounds without a shadow alone spread from {plain_lo:.0} to {plain_hi:.0} ms at p99 ({:.2}×). By round (p50 / p99, ms): {}.\n",
        plain_hi / plain_lo,
        rounds
            .iter()
            .map(|(s, p50, p99)| format!(
                "{} {p50:.0} / {p99:.0}",
                if *s { "shadow" } else { "plain" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        md,
        "The shadow (`GET /v1/functions/capital/stats`, version 2): {} runs, {} compared with their primaries, exact match {:.2}, mean ROUGE-L {:.3}; errors {}.",
        agreement["runs"], agreement["compared"],
        agreement["exact_match"].as_f64().unwrap_or(0.0),
        agreement["rouge_l"].as_f64().unwrap_or(0.0),
        agreement["errors"]
    )?;
    std::fs::write(args.out.join("RELEASES.md"), &md)?;
    println!("{md}");
    bench.server.stop().await?;
    Ok(())
}

/// One closed-loop client: `calls` calls with split keys from `first`, a think time after
/// each, each answered by `version`; their latencies in milliseconds.
async fn client(
    bench: &Bench,
    first: usize,
    calls: usize,
    think_ms: u64,
    version: u64,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(calls);
    for i in first..first + calls {
        let started = Instant::now();
        let r = bench
            .target
            .client
            .post(format!(
                "{}/v1/functions/capital@prod/invoke",
                bench.target.base
            ))
            .bearer_auth(&bench.target.token)
            .header("Genrt-Split-Key", format!("user-{i}"))
            .json(&json!({"input": {"country": COUNTRIES[i % COUNTRIES.len()]}}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("invoke failed: {}", r.text().await?);
        }
        let body: Value = r.json().await?;
        if body["version"] != version {
            bail!("the caller got another version: {body}");
        }
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(think_ms)).await;
    }
    Ok(out)
}

/// Waits until the model has nothing running or queued (the shadows of a round are done).
async fn settle(bench: &Bench) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let m = bench.model_state().await;
        let busy = m["busy_slots"].as_u64().unwrap_or(0)
            + m["queued"].as_u64().unwrap_or(0)
            + m["background_queued"].as_u64().unwrap_or(0);
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put(bench: &Bench, path: &str, body: Value) -> anyhow::Result<()> {
    let r = bench
        .target
        .client
        .put(format!("{}{path}", bench.target.base))
        .bearer_auth(&bench.target.token)
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("PUT {path}: {}", r.text().await?);
    }
    Ok(())
}

async fn get(bench: &Bench, path: &str) -> anyhow::Result<Value> {
    let r = bench
        .target
        .client
        .get(format!("{}{path}", bench.target.base))
        .bearer_auth(&bench.target.token)
        .send()
        .await?;
    Ok(r.json().await?)
}

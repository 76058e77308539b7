//! `genrt-bench-cache`: the prefix cache and streaming under load ([engine], #16). Writes
//! `benchmarks/CACHE.md`. Every figure is a ratio measured in this run: genrt with the cache
//! against genrt without it (the same GGUF registered twice, `prefix_cache = false` on one),
//! against raw llama.cpp prefill and batched decoding in this process, and against its own
//! turn 1 or its own median.
//!
//! 1. Conversations: a chat resending its whole history each turn, as OpenAI clients do
//!    (`/openai/v1/chat/completions`, streamed, 10 turns, 48 tokens per answer, greedy): TTFT
//!    per turn, one conversation and four at once, and the prompt tokens prefilled.
//! 2. Streaming under load: 16 closed-loop clients each streaming 128 tokens from a prompt of
//!    its own (no shared prefix), new requests arriving as others end, for each step budget
//!    (`step_tokens`): inter-token latency p50/p99 and summed decode tokens/s against raw
//!    llama.cpp decoding 16 sequences in one batch.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use genrt_actors::ModelConfig;
use genrt_benchmarks::harness::{Bench, MODEL};
use genrt_benchmarks::load::{closed_loop, Target};
use genrt_benchmarks::raw::Raw;
use genrt_benchmarks::stats::median;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Turns of each conversation.
    #[arg(long, default_value_t = 10)]
    turns: usize,
    /// Step budgets to compare under load.
    #[arg(long, value_delimiter = ',', default_value = "20,24,32,48")]
    step_tokens: Vec<u32>,
    /// Requests each of the 16 clients makes under load (at least 2, so that prompts arrive
    /// while all clients stream).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..))]
    per_client: u64,
    /// Only the conversations (part 1), printed and not written to CACHE.md: for iterating on
    /// the scheduler.
    #[arg(long)]
    conversations_only: bool,
    #[arg(long, default_value = "benchmarks")]
    out: PathBuf,
}

const ON: &str = "chat-cache";
const OFF: &str = "chat-nocache";
/// System prompts. The conversations use the first; the second and third open the single
/// conversation's repetitions, so that each repetition's turn 1 finds nothing of its prompt
/// in the cache, as the first's did (they share fewer than `MIN_PREFIX_TOKENS` tokens).
const SYSTEMS: [&str; 3] = [
    "You are a friendly guide who answers in a few sentences.",
    "Answer as a patient teacher would, in a few sentences.",
    "Speak like a curious traveller, in a few sentences.",
];
const ANSWER_TOKENS: u32 = 48;
const LOAD_SLOTS: u32 = 16;
const LOAD_TOKENS: u32 = 128;
const SUBJECTS: [&str; 12] = [
    "lighthouses",
    "honeybees",
    "glaciers",
    "violins",
    "deserts",
    "comets",
    "orchards",
    "canals",
    "owls",
    "volcanoes",
    "bridges",
    "kites",
];

/// One turn as the client saw it.
struct Turn {
    ttft_ms: f64,
    answer: String,
    prompt_tokens: u64,
    cached_tokens: u64,
}

async fn chat_turn(target: &Target, model: &str, messages: &[Value]) -> anyhow::Result<Turn> {
    let started = Instant::now();
    let response = target
        .client
        .post(format!("{}/openai/v1/chat/completions", target.base))
        .bearer_auth(&target.token)
        .json(&json!({
            "model": model, "messages": messages, "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": ANSWER_TOKENS, "temperature": 0,
        }))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("{model}: {}", response.text().await?);
    }
    let mut events = response.bytes_stream().eventsource();
    let (mut ttft_ms, mut answer, mut usage) = (None, String::new(), Value::Null);
    while let Some(event) = events.next().await {
        let event = event?;
        if event.data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&event.data)?;
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            if !piece.is_empty() {
                ttft_ms.get_or_insert(started.elapsed().as_secs_f64() * 1000.0);
                answer.push_str(piece);
            }
        }
        if chunk["usage"].is_object() {
            usage = chunk["usage"].clone();
        }
    }
    Ok(Turn {
        ttft_ms: ttft_ms.context("no content streamed")?,
        answer,
        prompt_tokens: usage["prompt_tokens"].as_u64().context("no usage")?,
        cached_tokens: usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    })
}

/// One conversation of `turns` turns on `model`; returns each turn and the final history.
async fn conversation(
    target: Target,
    model: &'static str,
    (subject, system): (usize, usize),
    turns: usize,
) -> anyhow::Result<(Vec<Turn>, Vec<(String, String)>)> {
    let subject = SUBJECTS[subject];
    let mut messages = vec![json!({"role": "system", "content": SYSTEMS[system]})];
    let mut out = Vec::new();
    for k in 1..=turns {
        messages.push(json!({"role": "user", "content": format!("Question {k} about {subject}: tell me one more thing about them.")}));
        let turn = chat_turn(&target, model, &messages).await?;
        messages.push(json!({"role": "assistant", "content": turn.answer}));
        out.push(turn);
    }
    let history = messages
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    Ok((out, history))
}

/// Conversations in rounds, one round after another, each round's conversations at once (each
/// a subject and a system prompt, by index); per turn, the median TTFT over every
/// conversation; and the prompt tokens prefilled (not cached) and sent over all of them. Every
/// conversation has a subject of its own, so none finds another's history in the cache.
async fn conversations(
    target: &Target,
    model: &'static str,
    rounds: &[&[(usize, usize)]],
    turns: usize,
) -> anyhow::Result<(Vec<f64>, u64, u64, Vec<(String, String)>)> {
    let mut runs = Vec::new();
    for round in rounds {
        let done = futures_util::future::join_all(
            round
                .iter()
                .map(|&c| conversation(target.clone(), model, c, turns)),
        )
        .await;
        for run in done {
            runs.push(run?);
        }
    }
    let ttft = (0..turns)
        .map(|t| median(runs.iter().map(|(turns, _)| turns[t].ttft_ms).collect()))
        .collect();
    let all = runs.iter().flat_map(|(turns, _)| turns);
    let (sent, prefilled) = all.fold((0, 0), |(s, p), t| {
        (s + t.prompt_tokens, p + t.prompt_tokens - t.cached_tokens)
    });
    let history = runs.into_iter().next().map(|(_, h)| h).unwrap_or_default();
    Ok((ttft, sent, prefilled, history))
}

fn model(id: &str, path: &std::path::Path, threads: u32) -> ModelConfig {
    let mut m = ModelConfig::new(id, path);
    m.threads = threads;
    m.idle_timeout_s = 30;
    m.queue_capacity = 256;
    m
}

/// The body of the i-th request under load: a prompt of its own from the first token on.
fn load_body(i: usize) -> Value {
    let paragraph = "The old harbour town wakes early: fishing boats come back before dawn, \
        the market opens at six, bakers carry bread through narrow streets, and the ferry to \
        the islands leaves at seven with tourists, teachers and the post.";
    json!({
        "input": {"prompt": format!("Request {i}. {paragraph} Write a long story about {}.", SUBJECTS[i % SUBJECTS.len()])},
        "params": {"max_tokens": LOAD_TOKENS, "ignore_eos": true},
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // The model registry's child processes run this binary (`registry.tool_binary` unset).
    genrt_actors::engine::tool::serve_if_asked();
    let args = Args::parse();
    // RUST_LOG (e.g. `genrt_actors::engine::scheduler=trace`) shows each step on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if !args.model.is_file() {
        bail!("{} is missing: run `make model`", args.model.display());
    }
    let mut models = vec![model(MODEL, &args.model, args.threads)];
    for (id, cache) in [(ON, true), (OFF, false)] {
        let mut m = model(id, &args.model, args.threads);
        m.n_ctx = 2048;
        m.slots = 4;
        m.prefix_cache = cache;
        models.push(m);
    }
    for &budget in &args.step_tokens {
        let mut m = model(&format!("load-{budget}"), &args.model, args.threads);
        m.n_ctx = 1024;
        m.slots = LOAD_SLOTS;
        m.step_tokens = budget;
        m.idle_timeout_s = 2;
        models.push(m);
    }
    let b = Bench::start_models(models, None).await?;
    let t = &b.target;
    let mut report = String::new();
    let _ = writeln!(report, "# Prefix cache and streaming under load\n\nWritten by `cargo run --release -p genrt-benchmarks --bin genrt-bench-cache` (`make bench` runs it after `genrt-bench`) on {}, {} threads, SmolLM2-135M-Instruct Q4_1. Every ratio is between figures of this run.\n",
        chrono::Utc::now().format("%Y-%m-%d"), args.threads);

    // 1. Conversations. Warm both models first (load, first context) so that turn 1 is not a
    //    cold start.
    for m in [ON, OFF] {
        chat_turn(t, m, &[json!({"role": "user", "content": "Hello."})]).await?;
    }
    let turns = args.turns;
    let mut table = String::from("| | turn 1 TTFT (ms) | turn 10 TTFT (ms) | turn 10 ÷ turn 1 | goal | prompt tokens sent | prefilled | prefilled drop | goal |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut history = Vec::new();
    let mut on_turn_last = 0.0;
    // One conversation's TTFT by turn is one sample per turn, as noisy as the machine: with the
    // cache on (the goal's side) it is measured three times, one conversation after another,
    // each opening with a system prompt not seen before (as the first does), and the median
    // taken per turn; the four at once run twice, four after four, the median over the eight
    // (they share the first system prompt, cached by then). Without the cache, where the
    // figures are only reported, once.
    type Rounds<'a> = &'a [&'a [(usize, usize)]];
    let cases: [(&str, usize, [Rounds; 2]); 2] = [
        (
            "1 conversation",
            1,
            [&[&[(0, 0)], &[(5, 1)], &[(6, 2)]], &[&[(0, 0)]]],
        ),
        (
            "4 conversations at once",
            4,
            [
                &[
                    &[(1, 0), (2, 0), (3, 0), (4, 0)],
                    &[(7, 0), (8, 0), (9, 0), (10, 0)],
                ],
                &[&[(1, 0), (2, 0), (3, 0), (4, 0)]],
            ],
        ),
    ];
    for (label, n, rounds) in cases {
        for ((m, cache), rounds) in [(ON, true), (OFF, false)].into_iter().zip(rounds) {
            let (ttft, sent, prefilled, h) = conversations(t, m, rounds, turns).await?;
            let (t1, tn) = (ttft[0], ttft[turns - 1]);
            let drop = 1.0 - prefilled as f64 / sent as f64;
            let (goal_t, goal_p) = if cache {
                (
                    format!("≤ 1.5× {}", if tn <= 1.5 * t1 { "✅" } else { "❌" }),
                    format!("≥ 80% {}", if drop >= 0.8 { "✅" } else { "❌" }),
                )
            } else {
                ("reported".into(), "reported".into())
            };
            let _ = writeln!(table, "| {label}, cache {} | {t1:.0} | {tn:.0} | {:.2}× | {goal_t} | {sent} | {prefilled} | {:.0}% | {goal_p} |",
                if cache { "on" } else { "off" }, tn / t1, drop * 100.0);
            let per_turn: Vec<String> = ttft.iter().map(|v| format!("{v:.0}")).collect();
            eprintln!(
                "{label}, cache {cache}: TTFT {per_turn:?}, sent {sent}, prefilled {prefilled}"
            );
            let counted: usize = rounds.iter().map(|r| r.len()).sum();
            let _ = writeln!(
                report,
                "- {label}, cache {}: TTFT by turn (ms, median over {counted} conversation{}{}): {}",
                if cache { "on" } else { "off" },
                if counted == 1 { "" } else { "s" },
                match rounds.len() {
                    1 => String::new(),
                    n => format!(" in {n} rounds one after another"),
                },
                per_turn.join(", ")
            );
            if cache && n == 1 {
                history = h;
                on_turn_last = tn;
            }
        }
    }
    // Raw llama.cpp prefilling the last turn's whole prompt (what a server without a prefix
    // cache must do), in this process.
    let raw = tokio::task::block_in_place(|| Raw::load(&args.model, args.threads, None))?;
    let mut last_prompt = history.clone();
    last_prompt.truncate(last_prompt.len().saturating_sub(1)); // without the last answer
    let tokens = raw.chat_tokens(&last_prompt)?;
    let raw_prefill = median(
        (0..3)
            .map(|_| {
                tokio::task::block_in_place(|| {
                    raw.batched_in(1, 2048, std::slice::from_ref(&tokens), 1)
                        .map(|r| r.first_tokens_ms)
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    let _ = writeln!(report, "\n## Conversations\n\n{table}");
    let _ = writeln!(report, "Raw llama.cpp prefilling turn {turns}'s whole prompt ({} tokens) to its first token: {raw_prefill:.0} ms; genrt with the cache, turn {turns} TTFT over HTTP: {on_turn_last:.0} ms ({:.2}× raw).\n", tokens.len(), on_turn_last / raw_prefill);

    if args.conversations_only {
        println!("{report}");
        let _ = b.server.stop().await;
        return Ok(());
    }

    // 2. Streaming under load, per step budget.
    let raw_prompts: Vec<_> = (0..LOAD_SLOTS as usize)
        .map(|i| {
            raw.chat_tokens(&[
                ("system".into(), harness_system()),
                (
                    "user".into(),
                    load_body(i)["input"]["prompt"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ),
            ])
        })
        .collect::<anyhow::Result<_>>()?;
    let mut table = String::from("| `step_tokens` | ITL p50 (ms) | ITL p99 (ms) | p99 ÷ p50 | goal | summed tokens/s | ÷ raw, same work | goal | raw decoding alone (tokens/s) | ÷ raw decoding alone | TTFT p50 (ms) | whole run: ITL p99 ÷ p50 | whole run: tokens/s ÷ raw, same work |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for &budget in &args.step_tokens {
        let id = format!("load-{budget}");
        b.deploy(
            json!({"name": id, "model": id, "system": harness_system(), "prompt": "{{ prompt }}",
            "params": {"temperature": 0}, "cache": {"enabled": false}}),
        )
        .await?;
        // Raw llama.cpp doing the load's work (the 16 prompts prefilled at once, then decoded
        // together), measured right before and right after each budget's run, and averaged:
        // a shared machine's speed drifts by a tenth or more within minutes, and both sides
        // of a ratio should see it in the same state. Before the warm-up, which it would
        // otherwise outlast (the replica scales to zero after 2 idle seconds).
        let before = tokio::task::block_in_place(|| raw.batched(&raw_prompts, LOAD_TOKENS))?;
        // Warm: load the model.
        let _ = t
            .stream(
                &id,
                json!({"input": {"prompt": "Hi."}, "params": {"max_tokens": 1}}),
            )
            .await;
        let offset = budget as usize * 1000;
        let per_client = args.per_client as usize;
        let r = closed_loop(t, &id, LOAD_SLOTS as usize, per_client, move |i| {
            load_body(offset + i)
        })
        .await;
        let after = tokio::task::block_in_place(|| raw.batched(&raw_prompts, LOAD_TOKENS))?;
        let raw_decode = (before.decode_tokens_per_s + after.decode_tokens_per_s) / 2.0;
        // Raw llama.cpp's time for one prompt of the batch it prefilled.
        let raw_prefill_s =
            (before.first_tokens_ms + after.first_tokens_ms) / 2.0 / 1000.0 / f64::from(LOAD_SLOTS);
        let streamed = f64::from(LOAD_SLOTS * LOAD_TOKENS);
        let raw_same_work = streamed
            / (raw_prefill_s * f64::from(LOAD_SLOTS)
                + (streamed - f64::from(LOAD_SLOTS)) / raw_decode);
        if r.failed > 0 {
            bail!("{} of {} requests failed under load", r.failed, r.requests);
        }
        let Some(steady) = &r.steady else {
            bail!("step_tokens {budget}: no moment had all {LOAD_SLOTS} clients streaming");
        };
        let (p50, p99) = (steady.itl.p(0.5), steady.itl.p(0.99));
        let tps = steady.tokens_per_s();
        // What raw llama.cpp would take for the window's work: its prompts (one per first
        // token in it) and the other tokens decoded 16 at a time.
        let raw_s = steady.first_tokens as f64 * raw_prefill_s
            + (steady.tokens - steady.first_tokens) as f64 / raw_decode;
        let same_work = raw_s / steady.seconds;
        let whole_tps = r.tokens_per_s();
        eprintln!("step_tokens {budget}: steady {:.1} s, {} tokens, {} prompts: ITL p50 {p50:.0} p99 {p99:.0}, {tps:.1} tokens/s, {same_work:.2}× raw same work, {:.2}× raw decoding alone; whole run ITL p50 {:.0} p99 {:.0}, {whole_tps:.1} tokens/s (raw same work {raw_same_work:.1})",
            steady.seconds, steady.tokens, steady.first_tokens, tps / raw_decode, r.itl.p(0.5), r.itl.p(0.99));
        let _ = writeln!(table, "| {budget} | {p50:.0} | {p99:.0} | {:.2}× | ≤ 2× {} | {tps:.1} | {same_work:.2}× | ≥ 0.90× {} | {raw_decode:.1} | {:.2}× | {:.0} | {:.2}× | {:.2}× |",
            p99 / p50, if p99 <= 2.0 * p50 { "✅" } else { "❌" },
            if same_work >= 0.9 { "✅" } else { "❌" }, tps / raw_decode,
            r.ttft.p(0.5), r.itl.p(0.99) / r.itl.p(0.5), whole_tps / raw_same_work);
    }
    let _ = writeln!(report, "## Streaming under load\n\n{} clients in a closed loop, each streaming {LOAD_TOKENS} tokens (end of generation ignored) from a prompt of its own, {} requests each, so that each client's next prompt arrives while the others decode. The goals are judged on the steady state, while all {} clients have a request in flight: from the moment the last client got its first token to the moment the first client got its last (`load::Steady`; the ramps, every prompt arriving at once at the start and fewer and fewer clients at the end, are left out). In it, summed tokens/s is every token event received over the window's length; raw llama.cpp doing the same work in this process would take, for each request whose first token came in the window, one sixteenth of its time to prefill {} prompts at once, and for every other token one sixteenth of a step decoding {} sequences in one batch; the ratio is that time over the window's. Raw llama.cpp runs right before and right after each budget's run (the mean of the two). Beside it, the same tokens/s against raw decoding alone, with no prompt to prefill. The whole run is reported too: every streamed token over the run's wall time, against raw llama.cpp doing the same work. The decode-only comparison of 16 streams started together is `genrt-bench`'s (RESULTS.md).\n\n{table}", LOAD_SLOTS, args.per_client, LOAD_SLOTS, LOAD_SLOTS, LOAD_SLOTS);
    std::fs::write(args.out.join("CACHE.md"), &report)?;
    println!("{report}");
    let _ = b.server.stop().await;
    Ok(())
}

fn harness_system() -> String {
    genrt_benchmarks::harness::SYSTEM.to_owned()
}

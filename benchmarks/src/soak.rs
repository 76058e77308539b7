//! `genrt-soak`: the soak benchmark. It starts the real `genrt` binary (SQLite, the SmolLM2
//! model, one llama.cpp thread), deploys one function for each of two tenants, and keeps a
//! mixed load on it for `--duration-s`: per tenant a closed-loop synchronous client, a
//! closed-loop streaming client and an open-loop asynchronous submitter. It samples the
//! server's RSS throughout.
//!
//! At the end it waits for the queue to drain and reconciles what the clients saw with what
//! the server recorded, read back through `GET /v1/invocations` page by page: every accepted
//! invocation must be there exactly once, ended, under its own tenant, and the server must hold
//! no invocation the clients did not make. The figures (error rate, p99 latencies per kind,
//! RSS over time) replace the soak section of `benchmarks/RESULTS.md`; the process exits
//! non-zero when anything was lost or duplicated.
//!
//! The load is closed-loop with think times (and a slow asynchronous rate) so that it stays
//! below the capacity of a small machine: a soak measures stability, not throughput.

#[allow(dead_code)]
use genrt_benchmarks::stats;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use genrt_tests::process::base_config;
use genrt_tests::{token, Db, ServerProcess, TempDir, MODEL};
use serde_json::{json, Value};

use stats::Latencies;

const FUNCTION: &str = "soak";
const TENANTS: [&str; 2] = ["soak-tenant-a", "soak-tenant-b"];
const BEGIN: &str = "<!-- soak:begin -->";
const END: &str = "<!-- soak:end -->";

#[derive(Parser)]
struct Args {
    /// How long the load runs, in seconds (10 minutes for the recorded figures).
    #[arg(long, default_value_t = 600)]
    duration_s: u64,
    /// Tokens generated per invocation.
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// Pause of each closed-loop client between its requests.
    #[arg(long, default_value_t = 250)]
    think_ms: u64,
    /// Interval between asynchronous submissions, per tenant.
    #[arg(long, default_value_t = 1500)]
    async_interval_ms: u64,
    /// How often the server's RSS is sampled.
    #[arg(long, default_value_t = 5)]
    rss_every_s: u64,
    /// The file whose soak section is replaced with the results; none when empty.
    #[arg(long, default_value = "benchmarks/RESULTS.md")]
    results: PathBuf,
    /// A free-form note printed with the results (for example, that the machine was shared).
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Sync,
    Stream,
    Async,
}

impl Kind {
    /// The `mode` the server records for this kind.
    fn mode(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Stream => "stream",
            Kind::Async => "async",
        }
    }
}

/// One request as its client saw it.
#[derive(Debug, Clone)]
struct Sample {
    tenant: usize,
    kind: Kind,
    /// HTTP status; 0 when no response came.
    status: u16,
    /// The server accepted the work: it must have a record.
    accepted: bool,
    /// The invocation's id, when the response carried it (not in a stream's `error` event).
    id: Option<String>,
    ok: bool,
    latency_ms: f64,
    ttft_ms: Option<f64>,
    error: Option<String>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    tokens: [String; 2],
}

impl Client {
    fn invoke_url(&self) -> String {
        format!("{}/v1/functions/{FUNCTION}/invoke", self.base)
    }

    fn body(&self, tenant: usize, n: u64, max_tokens: u32) -> Value {
        json!({"input": {"n": n, "who": TENANTS[tenant]}, "params": {"max_tokens": max_tokens}})
    }

    async fn sync(&self, tenant: usize, n: u64, max_tokens: u32) -> Sample {
        let started = Instant::now();
        let response = self
            .http
            .post(self.invoke_url())
            .bearer_auth(&self.tokens[tenant])
            .json(&self.body(tenant, n, max_tokens))
            .send()
            .await;
        let mut sample = Sample::new(tenant, Kind::Sync);
        match response {
            Ok(r) => {
                sample.status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                sample.ok = sample.status == 200;
                sample.id = body["invocation_id"].as_str().map(str::to_owned);
                // Accepted work that failed is recorded too; refused requests are not.
                sample.accepted = sample.ok || sample.status >= 500;
                if !sample.ok {
                    sample.error = Some(format!("{} {}", sample.status, body["error"]["code"]));
                }
            }
            Err(e) => sample.error = Some(format!("transport: {e}")),
        }
        sample.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        sample
    }

    async fn stream(&self, tenant: usize, n: u64, max_tokens: u32) -> Sample {
        let started = Instant::now();
        let mut body = self.body(tenant, n, max_tokens);
        body["stream"] = json!(true);
        let mut sample = Sample::new(tenant, Kind::Stream);
        let response = self
            .http
            .post(self.invoke_url())
            .bearer_auth(&self.tokens[tenant])
            .json(&body)
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => {
                sample.status = r.status().as_u16();
                sample.accepted = true;
                let mut events = r.bytes_stream().eventsource();
                while let Some(event) = events.next().await {
                    let Ok(event) = event else {
                        sample.error = Some("stream broken".into());
                        break;
                    };
                    match event.event.as_str() {
                        "token" if sample.ttft_ms.is_none() => {
                            sample.ttft_ms = Some(started.elapsed().as_secs_f64() * 1000.0)
                        }
                        "done" => {
                            let done: Value = serde_json::from_str(&event.data).unwrap_or_default();
                            sample.id = done["invocation_id"].as_str().map(str::to_owned);
                            sample.ok = sample.id.is_some();
                        }
                        "error" => sample.error = Some(format!("stream error: {}", event.data)),
                        _ => {}
                    }
                }
                if !sample.ok && sample.error.is_none() {
                    sample.error = Some("stream ended without `done`".into());
                }
            }
            Ok(r) => {
                sample.status = r.status().as_u16();
                sample.error = Some(format!(
                    "{} {}",
                    sample.status,
                    r.text().await.unwrap_or_default()
                ));
            }
            Err(e) => sample.error = Some(format!("transport: {e}")),
        }
        sample.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        sample
    }

    async fn submit(&self, tenant: usize, n: u64, max_tokens: u32) -> Sample {
        let started = Instant::now();
        let mut body = self.body(tenant, n, max_tokens);
        body["mode"] = json!("async");
        let mut sample = Sample::new(tenant, Kind::Async);
        match self
            .http
            .post(self.invoke_url())
            .bearer_auth(&self.tokens[tenant])
            .json(&body)
            .send()
            .await
        {
            Ok(r) => {
                sample.status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                sample.id = body["invocation_id"].as_str().map(str::to_owned);
                sample.accepted = sample.status == 202 && sample.id.is_some();
                sample.ok = sample.accepted;
                if !sample.ok {
                    sample.error = Some(format!("{} {}", sample.status, body["error"]["code"]));
                }
            }
            Err(e) => sample.error = Some(format!("transport: {e}")),
        }
        sample.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        sample
    }

    /// Every invocation of a tenant, newest first, page by page.
    async fn all_invocations(&self, tenant: usize) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = self
                .http
                .get(format!("{}/v1/invocations", self.base))
                .bearer_auth(&self.tokens[tenant])
                .query(&[("limit", "200")]);
            if let Some(c) = &cursor {
                request = request.query(&[("cursor", c)]);
            }
            let page: Value = request.send().await?.error_for_status()?.json().await?;
            out.extend(page["invocations"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(out),
            }
        }
    }

    /// How many of a tenant's invocations are still queued or running.
    async fn unfinished(&self, tenant: usize) -> anyhow::Result<usize> {
        let mut n = 0;
        for status in ["queued", "running"] {
            let page: Value = self
                .http
                .get(format!("{}/v1/invocations", self.base))
                .bearer_auth(&self.tokens[tenant])
                .query(&[("status", status), ("limit", "200")])
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            n += page["invocations"].as_array().map_or(0, Vec::len);
        }
        Ok(n)
    }
}

impl Sample {
    fn new(tenant: usize, kind: Kind) -> Self {
        Self {
            tenant,
            kind,
            status: 0,
            accepted: false,
            id: None,
            ok: false,
            latency_ms: 0.0,
            ttft_ms: None,
            error: None,
        }
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = TempDir::new("genrt-soak");
    // No rate limit: the load is sized by the clients. A short poll so that asynchronous work
    // starts soon after it is queued.
    let config = base_config(&data.0, &Db::Sqlite)
        + "[queue]\nconcurrency = 8\npoll_ms = 200\n\n[tenancy]\nrate_limit_rps = 0\n";
    let server = ServerProcess::start(&data.0, &config).await;
    let pid = server.pid().context("the server runs")?;
    let client = Arc::new(Client {
        http: genrt_tests::client_builder()
            .timeout(Duration::from_secs(120))
            .build()?,
        base: server.base(),
        tokens: [token(TENANTS[0]), token(TENANTS[1])],
    });

    for tenant in 0..TENANTS.len() {
        let status = client
            .http
            .post(format!("{}/v1/functions", client.base))
            .bearer_auth(&client.tokens[tenant])
            .json(&json!({
                "name": FUNCTION,
                "model": MODEL,
                "system": "You are a concise assistant.",
                "prompt": "Say one thing about the number {{ n }}.",
                "params": {"temperature": 0},
                // Every invocation must really run: cached answers would not load the engine.
                "cache": {"enabled": false},
                "timeout_s": 300
            }))
            .send()
            .await?
            .status();
        ensure!(
            status.is_success(),
            "deploying for tenant {tenant}: {status}"
        );
    }
    // Warm up (loads the model) outside the measured window; it is still reconciled below.
    let warm = client.sync(0, 0, args.max_tokens).await;
    ensure!(warm.ok, "warm-up failed: {:?}", warm.error);
    let mut samples = vec![warm];

    let rss_start = rss_mib(pid);
    println!(
        "soak: {} s, {} tokens per invocation, genrt pid {pid}, RSS {rss_start:.1} MiB after warm-up",
        args.duration_s, args.max_tokens
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_s);
    let collected: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut workers = Vec::new();
    for tenant in 0..TENANTS.len() {
        for kind in [Kind::Sync, Kind::Stream, Kind::Async] {
            let (client, collected, counter) = (
                Arc::clone(&client),
                Arc::clone(&collected),
                Arc::clone(&counter),
            );
            let pause = Duration::from_millis(match kind {
                Kind::Async => args.async_interval_ms,
                _ => args.think_ms,
            });
            let max_tokens = args.max_tokens;
            workers.push(tokio::spawn(async move {
                // Start the six clients staggered, not in lock step.
                tokio::time::sleep(Duration::from_millis(
                    137 * (tenant as u64 * 3 + kind as u64),
                ))
                .await;
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let sample = match kind {
                        Kind::Sync => client.sync(tenant, n, max_tokens).await,
                        Kind::Stream => client.stream(tenant, n, max_tokens).await,
                        Kind::Async => client.submit(tenant, n, max_tokens).await,
                    };
                    collected.lock().unwrap().push(sample);
                    tokio::time::sleep(pause).await;
                }
            }));
        }
    }

    // RSS over time, sampled while the load runs.
    let mut rss = vec![(0.0, rss_start)];
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(args.rss_every_s).min(deadline - Instant::now()))
            .await;
        let at = started.elapsed().as_secs_f64();
        rss.push((at, rss_mib(pid)));
        if (at as u64) % 60 < args.rss_every_s {
            let n = collected.lock().unwrap().len();
            println!(
                "soak: {at:>5.0} s, {n} requests, RSS {:.1} MiB",
                rss.last().unwrap().1
            );
        }
    }
    for worker in workers {
        worker.await?;
    }
    let load_s = started.elapsed().as_secs_f64();
    samples.extend(collected.lock().unwrap().drain(..));

    // Drain: every accepted asynchronous invocation must end.
    let drain_started = Instant::now();
    loop {
        let mut left = 0;
        for tenant in 0..TENANTS.len() {
            left += client.unfinished(tenant).await?;
        }
        if left == 0 {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(300) {
            bail!("{left} invocations still queued or running 300 s after the load stopped");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let rss_end = rss_mib(pid);
    rss.push((started.elapsed().as_secs_f64(), rss_end));

    let report = reconcile(&client, &samples).await?;
    let md = render(&args, &samples, &report, &rss, load_s, drain_s);
    println!("{md}");
    if !args.results.as_os_str().is_empty() {
        write_section(&args.results, &md)?;
        println!("soak: results written to {}", args.results.display());
    }
    drop(server);
    ensure!(
        report.problems.is_empty(),
        "the soak found lost or duplicated invocations:\n{}",
        report.problems.join("\n")
    );
    Ok(())
}

/// What the server recorded, compared with what the clients were told.
struct Reconciliation {
    /// Records read back per tenant.
    records: [usize; 2],
    /// Records by mode and status, both tenants.
    by_status: BTreeMap<(String, String), usize>,
    /// Asynchronous invocations that needed more than one attempt.
    retried: usize,
    /// End-to-end latency of asynchronous invocations (queued to completed), in ms.
    async_total: Latencies,
    problems: Vec<String>,
}

async fn reconcile(client: &Client, samples: &[Sample]) -> anyhow::Result<Reconciliation> {
    let mut report = Reconciliation {
        records: [0; 2],
        by_status: BTreeMap::new(),
        retried: 0,
        async_total: Latencies::new(),
        problems: Vec::new(),
    };
    let mut seen_anywhere: HashMap<String, usize> = HashMap::new();
    for (tenant, name) in TENANTS.iter().enumerate() {
        let records = client.all_invocations(tenant).await?;
        report.records[tenant] = records.len();
        let mut by_id: HashMap<String, &Value> = HashMap::new();
        let mut count_by_mode: HashMap<String, usize> = HashMap::new();
        for record in &records {
            let id = record["invocation_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if by_id.insert(id.clone(), record).is_some() {
                report
                    .problems
                    .push(format!("{id} is listed twice for {}", name));
            }
            if let Some(other) = seen_anywhere.insert(id.clone(), tenant) {
                report.problems.push(format!(
                    "{id} is listed under {} and {}",
                    TENANTS[other], name
                ));
            }
            let mode = record["mode"].as_str().unwrap_or_default().to_owned();
            let status = record["status"].as_str().unwrap_or_default().to_owned();
            *count_by_mode.entry(mode.clone()).or_default() += 1;
            *report
                .by_status
                .entry((mode.clone(), status.clone()))
                .or_default() += 1;
            if !["succeeded", "failed", "cancelled"].contains(&status.as_str()) {
                report
                    .problems
                    .push(format!("{id} ({mode}) has not ended: {status}"));
            }
            if mode == "async" {
                if record["attempts"].as_u64().unwrap_or(1) > 1 {
                    report.retried += 1;
                }
                let stamp = |field: &str| {
                    record[field]
                        .as_str()
                        .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
                };
                if let (Some(created), Some(completed)) =
                    (stamp("created_at"), stamp("completed_at"))
                {
                    report.async_total.record_ms(
                        (completed - created).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                    );
                }
            }
        }
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.tenant == tenant).collect();
        let mut ids = HashSet::new();
        for sample in mine.iter().filter(|s| s.accepted) {
            if let Some(id) = &sample.id {
                if !ids.insert(id.clone()) {
                    report
                        .problems
                        .push(format!("{id} was given to two requests"));
                }
                match by_id.get(id) {
                    None => report.problems.push(format!(
                        "{id} ({:?}, {}) was accepted but is not recorded (lost)",
                        sample.kind, name
                    )),
                    Some(r) if r["mode"] != sample.kind.mode() => report.problems.push(format!(
                        "{id} is recorded as {} but was {:?}",
                        r["mode"], sample.kind
                    )),
                    Some(_) => {}
                }
            }
        }
        for kind in [Kind::Sync, Kind::Stream, Kind::Async] {
            let accepted = mine.iter().filter(|s| s.kind == kind && s.accepted).count();
            let recorded = count_by_mode.get(kind.mode()).copied().unwrap_or(0);
            if accepted != recorded {
                report.problems.push(format!(
                    "{}: {accepted} {} invocations accepted but {recorded} recorded",
                    name,
                    kind.mode()
                ));
            }
        }
    }
    Ok(report)
}

fn render(
    args: &Args,
    samples: &[Sample],
    report: &Reconciliation,
    rss: &[(f64, f64)],
    load_s: f64,
    drain_s: f64,
) -> String {
    let mut md = String::new();
    let total = samples.len();
    let failed = samples.iter().filter(|s| !s.ok).count();
    let _ = writeln!(md, "{BEGIN}\n## Soak\n");
    let _ = writeln!(
        md,
        "`make soak` (`genrt-soak --duration-s {}`): the real `genrt` binary on SQLite with the SmolLM2 model \
         (one llama.cpp thread, 8 slots), two tenants, each with a closed-loop synchronous client and a \
         closed-loop streaming client ({} ms think time) and an asynchronous submitter (one every {} ms); \
         {} tokens per invocation, caching off. Afterwards every invocation is read back through \
         `GET /v1/invocations` (all pages, both tenants) and reconciled with what the clients were told.\n",
        args.duration_s, args.think_ms, args.async_interval_ms, args.max_tokens
    );
    if !args.note.is_empty() {
        let _ = writeln!(md, "{}\n", args.note);
    }
    let lost_or_duplicated = report.problems.len();
    let _ = writeln!(
        md,
        "- Load {load_s:.0} s, then {drain_s:.1} s for the queue to drain; {total} requests, {} records read back \
         ({} + {} per tenant).",
        report.records[0] + report.records[1],
        report.records[0],
        report.records[1]
    );
    let _ = writeln!(
        md,
        "- Lost or duplicated invocations: **{}**{}.",
        lost_or_duplicated,
        if lost_or_duplicated == 0 {
            String::new()
        } else {
            format!(
                " ({})",
                report
                    .problems
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    let _ = writeln!(
        md,
        "- Error rate: {:.3}% ({failed} of {total} requests did not succeed); asynchronous invocations retried: {}.",
        100.0 * failed as f64 / total.max(1) as f64,
        report.retried
    );
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples.iter().filter(|s| !s.ok) {
        let e = s.error.clone().unwrap_or_default();
        *errors.entry(e.chars().take(80).collect()).or_default() += 1;
    }
    for (e, n) in &errors {
        let _ = writeln!(md, "  - {n} × {e}");
    }
    let statuses: Vec<String> = report
        .by_status
        .iter()
        .map(|((mode, status), n)| format!("{mode} {status} {n}"))
        .collect();
    let _ = writeln!(md, "- Records by mode and status: {}.", statuses.join(", "));
    let _ = writeln!(md, "\n| kind | requests | failed | requests/s | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|---|---|");
    let row = |md: &mut String, label: &str, picked: Vec<f64>, requests: usize, failed: usize| {
        let mut h = Latencies::new();
        for v in &picked {
            h.record_ms(*v);
        }
        let (p50, p90, p99) = if h.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (h.p(0.5), h.p(0.9), h.p(0.99))
        };
        let _ = writeln!(
            md,
            "| {label} | {requests} | {failed} | {:.2} | {p50:.1} | {p90:.1} | {p99:.1} |",
            requests as f64 / load_s
        );
    };
    for (kind, label) in [
        (Kind::Sync, "sync, end to end"),
        (Kind::Stream, "stream, end to end"),
        (Kind::Async, "async, accept (202)"),
    ] {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.kind == kind).collect();
        let ok: Vec<f64> = of.iter().filter(|s| s.ok).map(|s| s.latency_ms).collect();
        row(
            &mut md,
            label,
            ok,
            of.len(),
            of.iter().filter(|s| !s.ok).count(),
        );
        if kind == Kind::Stream {
            let ttft: Vec<f64> = of.iter().filter_map(|s| s.ttft_ms).collect();
            row(
                &mut md,
                "stream, first token",
                ttft,
                of.len(),
                of.iter().filter(|s| !s.ok).count(),
            );
        }
    }
    let a = &report.async_total;
    if !a.is_empty() {
        let _ = writeln!(
            md,
            "| async, queued to completed (server clock) | {} | – | – | {:.1} | {:.1} | {:.1} |",
            a.len(),
            a.p(0.5),
            a.p(0.9),
            a.p(0.99)
        );
    }
    let (start, end) = (rss[0].1, rss.last().map_or(0.0, |r| r.1));
    let peak = rss.iter().map(|r| r.1).fold(0.0, f64::max);
    let mid = rss
        .iter()
        .find(|r| r.0 >= load_s / 2.0)
        .map_or(start, |r| r.1);
    let _ = writeln!(
        md,
        "\n- genrt RSS (MiB): {start:.1} after warm-up, {mid:.1} at half time, {end:.1} at the end, peak {peak:.1}; \
         growth {:+.1} MiB over the run ({:+.1} MiB in the second half).",
        end - start,
        end - mid
    );
    // The first sample of each minute, and the last one (after the drain).
    let mut minutes = HashSet::new();
    let mut per_minute: Vec<String> = rss
        .iter()
        .filter(|(at, _)| minutes.insert(*at as u64 / 60))
        .map(|(at, mib)| format!("{:.0} min {mib:.1}", at / 60.0))
        .collect();
    per_minute.push(format!("end {end:.1}"));
    let _ = writeln!(md, "- RSS by minute: {}.", per_minute.join(", "));
    let _ = writeln!(md, "{END}");
    md
}

/// Replaces the soak section of the results file (or appends one), keeping everything else.
fn write_section(path: &PathBuf, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &old[..b],
            section.trim_end(),
            &old[e + END.len()..]
        ),
        _ => format!("{}\n\n{}", old.trim_end(), section),
    };
    std::fs::write(path, new)?;
    Ok(())
}

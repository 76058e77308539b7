//! The load generator: streaming clients against a running genrt, closed loop (C clients,
//! each sending its next request when the last one ends) or open loop (requests started at
//! a fixed rate whatever the server does), and a plain request loop for the cached path and
//! the echo baseline. Client-side timings: TTFT, inter-token latency, end-to-end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::stats::Latencies;

#[derive(Clone)]
pub struct Target {
    pub client: reqwest::Client,
    pub base: String,
    pub token: String,
}

/// One streamed invocation as the client saw it.
#[derive(Debug, Clone)]
pub struct StreamSample {
    pub ok: bool,
    pub ttft_ms: f64,
    pub e2e_ms: f64,
    /// Gaps between consecutive token events.
    pub itl_ms: Vec<f64>,
    pub tokens: u64,
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
    /// When each token event arrived.
    pub token_at: Vec<Instant>,
    pub done: Option<Value>,
}

/// Decode tokens/s summed over concurrent streams: every token after each stream's first,
/// between the earliest first token and the latest last token. `None` if a stream got none.
pub fn summed_decode_tokens_per_s(samples: &[StreamSample]) -> Option<f64> {
    let first = samples.iter().map(|s| s.first_token_at).min()??;
    let last = samples.iter().filter_map(|s| s.last_token_at).max()?;
    let decoded: u64 = samples.iter().map(|s| s.tokens.saturating_sub(1)).sum();
    Some(decoded as f64 / (last - first).as_secs_f64())
}

impl Target {
    pub async fn stream(&self, function: &str, body: Value) -> StreamSample {
        let mut body = body;
        body["stream"] = json!(true);
        let started = Instant::now();
        let mut sample = StreamSample {
            ok: false,
            ttft_ms: 0.0,
            e2e_ms: 0.0,
            itl_ms: Vec::new(),
            tokens: 0,
            first_token_at: None,
            last_token_at: None,
            token_at: Vec::new(),
            done: None,
        };
        let Ok(response) = self
            .client
            .post(format!("{}/v1/functions/{function}/invoke", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
        else {
            return sample;
        };
        if !response.status().is_success() {
            return sample;
        }
        let mut events = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = events.next().await {
            let now = Instant::now();
            match event.event.as_str() {
                "token" => {
                    if let Some(last) = sample.last_token_at {
                        sample.itl_ms.push((now - last).as_secs_f64() * 1000.0);
                    } else {
                        sample.ttft_ms = (now - started).as_secs_f64() * 1000.0;
                        sample.first_token_at = Some(now);
                    }
                    sample.last_token_at = Some(now);
                    sample.token_at.push(now);
                }
                "done" => {
                    let done: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                    sample.tokens = done["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                    sample.ok = true;
                    sample.done = Some(done);
                }
                _ => {}
            }
        }
        sample.e2e_ms = started.elapsed().as_secs_f64() * 1000.0;
        sample
    }

    /// A synchronous invocation; an error carries the status and the server's answer.
    pub async fn invoke(&self, function: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .client
            .post(format!("{}/v1/functions/{function}/invoke", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!(
                "{function}: {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(response.json().await?)
    }
}

/// The aggregate of a load run.
pub struct LoadReport {
    pub requests: u64,
    pub failed: u64,
    pub seconds: f64,
    pub tokens: u64,
    pub ttft: Latencies,
    pub itl: Latencies,
    pub e2e: Latencies,
    /// A closed loop's steady state, see [`Steady`].
    pub steady: Option<Steady>,
}

/// The part of a closed-loop run during which every client has a request in flight: from the
/// moment the last client got its first token to the moment the first client got the last
/// token of its last request. Requests keep arriving in it (each client's next one, prefilled
/// beside the others' decoding), but the ramps are left out: the start, where every client's
/// prompt arrives at once, and the end, where fewer and fewer clients remain, which measure
/// how the run began and ended rather than the load's level.
pub struct Steady {
    pub seconds: f64,
    /// Token events received inside the window (after its start, up to its end), over every
    /// client.
    pub tokens: u64,
    /// Of those, first tokens of a request: a prompt prefilled in the window (about).
    pub first_tokens: u64,
    /// Gaps between two consecutive tokens of one stream, both inside the window.
    pub itl: Latencies,
}

impl Steady {
    /// `None` when the window is empty (a client finished before the last one started).
    pub fn of(clients: &[Vec<StreamSample>]) -> Option<Self> {
        // One instant per client, or `None` if a client has no such token.
        let per_client = |pick: fn(&[StreamSample]) -> Option<Instant>| {
            clients.iter().map(|c| pick(c)).collect::<Option<Vec<_>>>()
        };
        let start = per_client(|c| c.first()?.first_token_at)?
            .into_iter()
            .max()?;
        let end = per_client(|c| c.last()?.last_token_at)?.into_iter().min()?;
        if end <= start {
            return None;
        }
        // Events after the window's start: the first token that defines it was prefilled
        // before it, and a window's rate counts one of its two ends, not both.
        let inside = |t: &Instant| *t > start && *t <= end;
        let spans = |t: &Instant| (start..=end).contains(t);
        let mut steady = Steady {
            seconds: (end - start).as_secs_f64(),
            tokens: 0,
            first_tokens: 0,
            itl: Latencies::new(),
        };
        for sample in clients.iter().flatten() {
            steady.tokens += sample.token_at.iter().filter(|t| inside(t)).count() as u64;
            steady.first_tokens += u64::from(sample.token_at.first().is_some_and(inside));
            for pair in sample.token_at.windows(2) {
                if spans(&pair[0]) && spans(&pair[1]) {
                    steady
                        .itl
                        .record_ms((pair[1] - pair[0]).as_secs_f64() * 1000.0);
                }
            }
        }
        Some(steady)
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }
}

impl LoadReport {
    fn new() -> Self {
        Self {
            requests: 0,
            failed: 0,
            seconds: 0.0,
            tokens: 0,
            ttft: Latencies::new(),
            itl: Latencies::new(),
            e2e: Latencies::new(),
            steady: None,
        }
    }

    fn add(&mut self, s: &StreamSample) {
        self.requests += 1;
        if !s.ok {
            self.failed += 1;
            return;
        }
        self.tokens += s.tokens;
        self.ttft.record_ms(s.ttft_ms);
        self.e2e.record_ms(s.e2e_ms);
        for gap in &s.itl_ms {
            self.itl.record_ms(*gap);
        }
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }

    pub fn requests_per_s(&self) -> f64 {
        (self.requests - self.failed) as f64 / self.seconds
    }
}

/// `clients` streaming clients, each running `per_client` invocations back to back; `body`
/// makes the body of the i-th request.
pub async fn closed_loop(
    target: &Target,
    function: &str,
    clients: usize,
    per_client: usize,
    body: impl Fn(usize) -> Value + Send + Sync + 'static,
) -> LoadReport {
    let report = Arc::new(Mutex::new(LoadReport::new()));
    let body = Arc::new(body);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (target, report, body, function) = (
                target.clone(),
                Arc::clone(&report),
                Arc::clone(&body),
                function.to_owned(),
            );
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let sample = target.stream(&function, body(c * per_client + i)).await;
                    report.lock().await.add(&sample);
                    samples.push(sample);
                }
                samples
            })
        })
        .collect();
    let (mut report, per_client_samples) = collect(tasks, report, started).await;
    if per_client_samples.len() == clients {
        report.steady = Steady::of(&per_client_samples);
    }
    report
}

/// Requests started at `rate` per second for `duration`, each streamed to its end.
pub async fn open_loop(
    target: &Target,
    function: &str,
    rate: f64,
    duration: Duration,
    body: impl Fn(usize) -> Value,
) -> LoadReport {
    let report = Arc::new(Mutex::new(LoadReport::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut i = 0;
    while started.elapsed() < duration {
        let at = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let (target, report, function, b) = (
            target.clone(),
            Arc::clone(&report),
            function.to_owned(),
            body(i),
        );
        tasks.push(tokio::spawn(async move {
            let sample = target.stream(&function, b).await;
            report.lock().await.add(&sample);
        }));
        i += 1;
    }
    collect(tasks, report, started).await.0
}

/// Waits for the clients, then closes the report with the run's duration; also returns what
/// each client that did not panic returned.
async fn collect<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
    report: Arc<Mutex<LoadReport>>,
    started: Instant,
) -> (LoadReport, Vec<T>) {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(result) = task.await {
            results.push(result);
        }
    }
    let mut report = Arc::try_unwrap(report)
        .ok()
        .expect("tasks done")
        .into_inner();
    report.seconds = started.elapsed().as_secs_f64();
    (report, results)
}

/// `connections` clients sending plain POSTs back to back for `duration`; returns
/// requests/s and latencies. Used for the cached path and for the bare echo baseline.
pub async fn request_loop(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Value,
    connections: usize,
    duration: Duration,
) -> (f64, Latencies) {
    let latencies = Arc::new(Mutex::new(Latencies::new()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url, token, body, latencies) = (
                client.clone(),
                url.to_owned(),
                token.map(str::to_owned),
                body.clone(),
                Arc::clone(&latencies),
            );
            tokio::spawn(async move {
                let mut local = Vec::new();
                while started.elapsed() < duration {
                    let t = Instant::now();
                    let mut req = client.post(&url).json(&body);
                    if let Some(token) = &token {
                        req = req.bearer_auth(token);
                    }
                    match req.send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            local.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => {}
                    }
                }
                let mut all = latencies.lock().await;
                for ms in local {
                    all.record_ms(ms);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let latencies = Arc::try_unwrap(latencies)
        .ok()
        .expect("tasks done")
        .into_inner();
    let rps = latencies.len() as f64 / started.elapsed().as_secs_f64();
    (rps, latencies)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose tokens arrived at these milliseconds after `t0`.
    fn sample(t0: Instant, ms: &[u64]) -> StreamSample {
        let token_at: Vec<_> = ms.iter().map(|m| t0 + Duration::from_millis(*m)).collect();
        StreamSample {
            ok: true,
            ttft_ms: 0.0,
            e2e_ms: 0.0,
            itl_ms: Vec::new(),
            tokens: ms.len() as u64,
            first_token_at: token_at.first().copied(),
            last_token_at: token_at.last().copied(),
            token_at,
            done: None,
        }
    }

    #[test]
    fn the_steady_window_runs_from_the_last_first_token_to_the_first_last_token() {
        let t0 = Instant::now();
        // Client A starts at 0 and ends at 500; client B starts at 100 and ends at 700.
        let a = vec![sample(t0, &[0, 50, 100, 150]), sample(t0, &[300, 400, 500])];
        let b = vec![sample(t0, &[100, 200, 300]), sample(t0, &[450, 600, 700])];
        let steady = Steady::of(&[a, b]).expect("a window");
        assert!((steady.seconds - 0.4).abs() < 1e-9, "{}", steady.seconds);
        // In (100, 500]: A's 150, 300, 400, 500 and B's 200, 300, 450.
        assert_eq!(steady.tokens, 7);
        // First tokens after the start: A's second request (300) and B's second (450); B's
        // first (100) defines the start, its prompt was prefilled before the window.
        assert_eq!(steady.first_tokens, 2);
        // Gaps with both ends in [100, 500]: A 100→150, 300→400, 400→500; B 100→200, 200→300.
        assert_eq!(steady.itl.len(), 5);
        assert!((steady.tokens_per_s() - 17.5).abs() < 1e-9);
    }

    #[test]
    fn no_window_when_a_client_finished_before_another_started() {
        let t0 = Instant::now();
        let a = vec![sample(t0, &[0, 10, 20])];
        let b = vec![sample(t0, &[30, 40])];
        assert!(Steady::of(&[a, b]).is_none());
        let never = vec![sample(t0, &[])];
        assert!(Steady::of(&[never]).is_none());
    }
}

//! The node's metrics: OpenTelemetry instruments with two readers, the Prometheus exporter
//! (rendered by `GET /metrics`) and, when configured, a periodic OTLP reader. Names follow
//! the GenAI semantic conventions where they define one (`gen_ai.server.*`,
//! `gen_ai.client.token.usage`), the HTTP and process conventions for those layers, and vLLM's
//! vocabulary (queue time, prompt and generation tokens, waiting requests) under `genrt.`
//! where the conventions have none.
//!
//! Values that belong to the actor tree or the database (replicas, busy slots, queue depth,
//! restarts, loads, memory) are observed, not pushed: instrument callbacks are synchronous, so
//! they read a [`ModelSnapshot`] that [`Metrics::refresh`] fills from `ActorTree::models()` and
//! one count query, before each scrape and every few seconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use genrt_actors::ModelStatus;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _, UpDownCounter};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};

use super::TelemetryConfig;

/// Seconds; the GenAI conventions' advice for `gen_ai.server.request.duration`.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Seconds; the conventions' advice for `gen_ai.server.time_to_first_token`.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Seconds; the conventions' advice for `gen_ai.server.time_per_output_token`.
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// Tokens; the conventions' advice for `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];
/// Seconds, for queue time, cold starts and HTTP requests.
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What the observed instruments read.
#[derive(Debug, Default, Clone)]
pub struct ModelSnapshot {
    pub models: Vec<ModelStatus>,
    /// Asynchronous invocations waiting in the database, all nodes together.
    pub async_queued: Option<u64>,
}

pub struct Metrics {
    /// Bounds the tenant and function label values (see [`Metrics::bounded_labels`]).
    labels: LabelBudget,
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    snapshot: Arc<Mutex<ModelSnapshot>>,
    pub(super) invocations: Counter<u64>,
    pub(super) request_duration: Histogram<f64>,
    pub(super) time_to_first_token: Histogram<f64>,
    pub(super) time_per_output_token: Histogram<f64>,
    pub(super) queue_time: Histogram<f64>,
    pub(super) token_usage: Histogram<u64>,
    pub(super) prompt_tokens: Counter<u64>,
    pub(super) generation_tokens: Counter<u64>,
    in_flight: UpDownCounter<i64>,
    cache_hits: Counter<u64>,
    cache_misses: Counter<u64>,
    cache_evictions: Counter<u64>,
    webhook_deliveries: Counter<u64>,
    shadows: Counter<u64>,
    cold_start_duration: Histogram<f64>,
    http_duration: Histogram<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("prometheus exporter: {0}")]
    Prometheus(String),
    #[error("OTLP metric exporter: {0}")]
    Otlp(#[from] opentelemetry_otlp::ExporterBuildError),
}

impl Metrics {
    /// A meter provider of this node's own (not the global one), so that several servers in
    /// one test process keep their counts apart.
    pub fn new(config: &TelemetryConfig) -> Result<Arc<Self>, MetricsError> {
        Self::with_gpus(config, super::gpu::nvml())
    }

    /// As [`Self::new`], with GPU samples from `gpus` (NVML, or a fixed list in tests).
    pub fn with_gpus(
        config: &TelemetryConfig,
        gpus: Option<Arc<dyn super::gpu::GpuReader>>,
    ) -> Result<Arc<Self>, MetricsError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // Labels stay what the instruments say; the scope is always genrt.
            .scope_info_enabled(false)
            .build()
            .map_err(|e| MetricsError::Prometheus(e.to_string()))?;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(super::export::resource(config))
            .with_reader(prometheus);
        if let Some(reader) = super::export::metric_reader(config)? {
            builder = builder.with_reader(reader);
        }
        let provider = builder.build();
        let meter = provider.meter("genrt");
        let snapshot = Arc::new(Mutex::new(ModelSnapshot::default()));
        observe(&meter, &snapshot);
        if let Some(gpus) = gpus {
            super::gpu::observe(&meter, gpus);
        }
        let histogram = |name: &'static str, unit: &'static str, help: &'static str, b: &[f64]| {
            meter
                .f64_histogram(name)
                .with_unit(unit)
                .with_description(help)
                .with_boundaries(b.to_vec())
                .build()
        };
        let counter = |name: &'static str, help: &'static str| {
            meter.u64_counter(name).with_description(help).build()
        };
        Ok(Arc::new(Self {
            labels: LabelBudget::new(
                config.max_tenant_labels,
                config.max_function_labels,
                config.max_version_labels,
            ),
            invocations: counter(
                "genrt.invocations",
                "Invocations that ran, by tenant, function, model, mode and status (succeeded or the error code)",
            ),
            request_duration: histogram(
                "gen_ai.server.request.duration",
                "s",
                "End-to-end duration of an invocation, from dispatch to its last token",
                DURATION_BUCKETS,
            ),
            time_to_first_token: histogram(
                "gen_ai.server.time_to_first_token",
                "s",
                "From dispatch until the first generated token",
                TTFT_BUCKETS,
            ),
            time_per_output_token: histogram(
                "gen_ai.server.time_per_output_token",
                "s",
                "Decode time per output token after the first",
                TPOT_BUCKETS,
            ),
            queue_time: histogram(
                "genrt.request.queue_time",
                "s",
                "From dispatch until a replica started on the invocation (weight loading included)",
                WAIT_BUCKETS,
            ),
            token_usage: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Tokens per invocation, by gen_ai.token.type (input or output)")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            prompt_tokens: counter(
                "genrt.prompt_tokens",
                "Prompt tokens processed by the engines (cache hits excluded)",
            ),
            generation_tokens: counter(
                "genrt.generation_tokens",
                "Tokens generated by the engines (cache hits excluded)",
            ),
            in_flight: meter
                .i64_up_down_counter("genrt.invocations.in_flight")
                .with_description("Invocations running on this node now (synchronous, streamed and queued work)")
                .build(),
            cache_hits: counter("genrt.cache.hits", "Response cache lookups that hit"),
            cache_misses: counter("genrt.cache.misses", "Response cache lookups that missed"),
            cache_evictions: counter(
                "genrt.cache.evictions",
                "Response cache entries evicted, by cause (size or expired)",
            ),
            webhook_deliveries: counter(
                "genrt.webhook.deliveries",
                "Webhook delivery attempts, by outcome (delivered, retry, failed, disabled)",
            ),
            shadows: counter(
                "genrt.shadow.invocations",
                "Shadow copies of invocations, by outcome (ran; skipped: no background place free; failed)",
            ),
            cold_start_duration: histogram(
                "genrt.model.cold_start.duration",
                "s",
                "Time to load a model's weights when it was scaled to zero",
                WAIT_BUCKETS,
            ),
            http_duration: histogram(
                "http.server.request.duration",
                "s",
                "HTTP requests, by method, route and status",
                WAIT_BUCKETS,
            ),
            provider,
            registry,
            snapshot,
        }))
    }

    /// Reads the actor tree and the database into the snapshot the observed instruments
    /// report. A load counted since the last refresh records its duration as a cold start.
    pub async fn refresh(&self, tree: &genrt_actors::ActorTree, store: &crate::store::Store) {
        let models = tree.models().await;
        let async_queued = store.count_queued().await.ok();
        let mut snapshot = self.snapshot.lock().expect("snapshot lock");
        for model in &models {
            let before = snapshot
                .models
                .iter()
                .find(|m| m.id == model.id)
                .map_or(0, |m| m.loads);
            if model.loads > before {
                if let Some(ms) = model.last_load_ms {
                    let attrs = [KeyValue::new("gen_ai.request.model", model.id.to_string())];
                    self.cold_start_duration.record(ms / 1000.0, &attrs);
                }
            }
        }
        *snapshot = ModelSnapshot {
            models,
            async_queued,
        };
    }

    /// The Prometheus text exposition of every instrument.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %err, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts an invocation as running until the guard drops, however it ends.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.add(1, &[]);
        InFlight {
            metrics: Arc::clone(self),
        }
    }

    pub fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.add(1, &[]);
        } else {
            self.cache_misses.add(1, &[]);
        }
    }

    pub fn cache_eviction(&self, cause: &'static str) {
        self.cache_evictions
            .add(1, &[KeyValue::new("genrt.cache.eviction_cause", cause)]);
    }

    pub fn webhook_delivery(&self, outcome: &'static str) {
        self.webhook_deliveries
            .add(1, &[KeyValue::new("genrt.webhook.outcome", outcome)]);
    }

    pub fn shadow(&self, outcome: &'static str) {
        self.shadows
            .add(1, &[KeyValue::new("genrt.shadow.outcome", outcome)]);
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_duration.record(
            took.as_secs_f64(),
            &[
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("http.route", route.to_owned()),
                KeyValue::new("http.response.status_code", i64::from(status)),
            ],
        );
    }

    /// Exports what the OTLP reader still holds and stops it. Blocking, so on its own thread.
    pub async fn shutdown(self: &Arc<Self>) {
        let provider = self.provider.clone();
        let done = tokio::task::spawn_blocking(move || provider.shutdown());
        if let Ok(Ok(Err(err))) = tokio::time::timeout(Duration::from_secs(11), done).await {
            tracing::warn!(error = %err, "flushing metrics failed");
        }
    }
}

pub struct InFlight {
    metrics: Arc<Metrics>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight.add(-1, &[]);
    }
}

/// Registers the instruments read from the snapshot and from the process.
fn observe(meter: &Meter, snapshot: &Arc<Mutex<ModelSnapshot>>) {
    type Field = fn(&ModelStatus) -> u64;
    let per_model: [(&'static str, &'static str, &'static str, Field); 7] = [
        (
            "genrt.model.replicas",
            "{replica}",
            "Replicas running",
            |m| u64::from(m.replicas),
        ),
        (
            "genrt.model.busy_slots",
            "{slot}",
            "Sequences being generated now",
            |m| u64::from(m.busy_slots),
        ),
        (
            "genrt.model.slots",
            "{slot}",
            "Sequences the running replicas can hold",
            |m| u64::from(m.replicas * m.slots_per_replica),
        ),
        (
            "genrt.model.queue.size",
            "{invocation}",
            "Invocations waiting for a replica (interactive and background)",
            |m| u64::from(m.queued + m.background_queued),
        ),
        (
            "genrt.model.memory.usage",
            "By",
            "Weights and KV caches held in host memory",
            |m| m.memory_bytes,
        ),
        (
            "genrt.model.gpu_memory.usage",
            "By",
            "Weights and KV caches held on the GPU",
            |m| m.gpu_memory_bytes,
        ),
        (
            "genrt.model.loaded",
            "1",
            "1 when the weights are loaded",
            |m| u64::from(m.phase == genrt_actors::ModelPhase::Ready),
        ),
    ];
    for (name, unit, help, field) in per_model {
        let snapshot = Arc::clone(snapshot);
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(help)
            .with_callback(move |observer| {
                for m in &snapshot.lock().expect("snapshot lock").models {
                    let attrs = [KeyValue::new("gen_ai.request.model", m.id.to_string())];
                    observer.observe(field(m), &attrs);
                }
            })
            .build();
    }
    let counters: [(&'static str, &'static str, Field); 7] = [
        (
            "genrt.model.cold_starts",
            "Weight loads (cold starts) since the process started",
            |m| m.loads,
        ),
        (
            "genrt.model.restarts",
            "Replica restarts by the supervisor since the process started",
            |m| m.replica_restarts,
        ),
        // The prefix cache: hit rate = hits / lookups, token hit rate = cached / prompt.
        (
            "genrt.model.prefix_cache.lookups",
            "Sequences that looked for a cached prompt prefix",
            |m| m.prefix_cache.lookups,
        ),
        (
            "genrt.model.prefix_cache.hits",
            "Sequences that reused a cached prompt prefix",
            |m| m.prefix_cache.hits,
        ),
        (
            "genrt.model.prefix_cache.prompt_tokens",
            "Prompt tokens of the sequences that looked",
            |m| m.prefix_cache.prompt_tokens,
        ),
        (
            "genrt.model.prefix_cache.cached_tokens",
            "Prompt tokens whose KV came from the prefix cache",
            |m| m.prefix_cache.cached_tokens,
        ),
        (
            "genrt.model.prefix_cache.evictions",
            "Cached prefixes dropped to make room for another sequence",
            |m| m.prefix_cache.evictions,
        ),
    ];
    for (name, help, field) in counters {
        let snapshot = Arc::clone(snapshot);
        meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |observer| {
                for m in &snapshot.lock().expect("snapshot lock").models {
                    let attrs = [KeyValue::new("gen_ai.request.model", m.id.to_string())];
                    observer.observe(field(m), &attrs);
                }
            })
            .build();
    }
    let queued = Arc::clone(snapshot);
    meter
        .u64_observable_gauge("genrt.async.queued")
        .with_unit("{invocation}")
        .with_description("Asynchronous invocations waiting in the queue (all nodes)")
        .with_callback(move |observer| {
            if let Some(n) = queued.lock().expect("snapshot lock").async_queued {
                observer.observe(n, &[]);
            }
        })
        .build();
    meter
        .f64_observable_counter("process.cpu.time")
        .with_unit("s")
        .with_description("CPU time of this process, by cpu.mode (user or system)")
        .with_callback(|observer| {
            if let Some((user, system)) = process::cpu_seconds() {
                observer.observe(user, &[KeyValue::new("cpu.mode", "user")]);
                observer.observe(system, &[KeyValue::new("cpu.mode", "system")]);
            }
        })
        .build();
    meter
        .u64_observable_gauge("process.memory.usage")
        .with_unit("By")
        .with_description("Resident set size of this process")
        .with_callback(|observer| {
            if let Some(rss) = process::resident_bytes() {
                observer.observe(rss, &[]);
            }
        })
        .build();
}

/// Two numbers about this process, read directly: a process-metrics crate (procfs, sysinfo)
/// would bring far more than these two reads.
mod process {
    pub fn cpu_seconds() -> Option<(f64, f64)> {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return None;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some((secs(usage.ru_utime), secs(usage.ru_stime)))
    }

    /// Linux only (`/proc/self/statm`: pages, the second field resident).
    pub fn resident_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf reads a constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * u64::try_from(page).ok()?)
    }
}

/// The value a label gets once its cap is reached.
pub const OTHER_LABEL: &str = "other";

/// The tenant and function names (and function versions) seen in labels so far, up to their
/// caps. A name seen before the cap keeps its own series; later names share `other`. Tenants,
/// function names and versions come from outside, and each distinct value is a new series in
/// every scrape for the life of the process.
struct LabelBudget {
    max_tenants: usize,
    max_functions: usize,
    max_versions: usize,
    seen: Mutex<SeenLabels>,
}

#[derive(Default)]
struct SeenLabels {
    tenants: std::collections::HashSet<String>,
    functions: std::collections::HashSet<(String, String)>,
    versions: std::collections::HashSet<(String, String, u32)>,
}

/// An invocation's label values, bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundedLabels {
    pub tenant: String,
    pub function: String,
    pub version: String,
}

impl LabelBudget {
    fn new(max_tenants: usize, max_functions: usize, max_versions: usize) -> Self {
        Self {
            max_tenants,
            max_functions,
            max_versions,
            seen: Mutex::default(),
        }
    }

    fn bound(&self, tenant: &str, function: &str, version: u32) -> BoundedLabels {
        let other = || BoundedLabels {
            tenant: OTHER_LABEL.into(),
            function: OTHER_LABEL.into(),
            version: OTHER_LABEL.into(),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let tenant_known = seen.tenants.contains(tenant)
            || (seen.tenants.len() < self.max_tenants && seen.tenants.insert(tenant.to_owned()));
        if !tenant_known {
            return other();
        }
        let pair = (tenant.to_owned(), function.to_owned());
        let function_known = seen.functions.contains(&pair)
            || (seen.functions.len() < self.max_functions && seen.functions.insert(pair));
        if !function_known {
            return BoundedLabels {
                tenant: tenant.to_owned(),
                ..other()
            };
        }
        let triple = (tenant.to_owned(), function.to_owned(), version);
        let version_known = seen.versions.contains(&triple)
            || (seen.versions.len() < self.max_versions && seen.versions.insert(triple));
        BoundedLabels {
            tenant: tenant.to_owned(),
            function: function.to_owned(),
            version: if version_known {
                version.to_string()
            } else {
                OTHER_LABEL.into()
            },
        }
    }
}

impl Metrics {
    /// The tenant, function and version label values for an invocation: their own until the
    /// configured caps are reached, `other` after.
    pub fn bounded_labels(&self, tenant: &str, function: &str, version: u32) -> BoundedLabels {
        self.labels.bound(tenant, function, version)
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn names_past_the_caps_share_the_other_label() {
        let budget = LabelBudget::new(2, 3, 5);
        let bound = |t: &str, f: &str, v: u32| {
            let b = budget.bound(t, f, v);
            (b.tenant, b.function, b.version)
        };
        let l = |t: &str, f: &str, v: &str| (t.to_owned(), f.to_owned(), v.to_owned());
        assert_eq!(bound("a", "f", 1), l("a", "f", "1"));
        assert_eq!(bound("b", "f", 1), l("b", "f", "1"));
        // A third tenant is past the tenant cap, whatever its function.
        assert_eq!(bound("c", "f", 1), l("other", "other", "other"));
        assert_eq!(bound("a", "g", 1), l("a", "g", "1"));
        // The fourth pair is past the function cap; known pairs keep their names.
        assert_eq!(bound("b", "h", 1), l("b", "other", "other"));
        assert_eq!(bound("a", "f", 1), l("a", "f", "1"));
        // Versions: five triples in all, then `other`; known ones keep theirs.
        assert_eq!(bound("a", "f", 2), l("a", "f", "2"));
        assert_eq!(bound("a", "f", 3), l("a", "f", "3"));
        assert_eq!(bound("a", "f", 4), l("a", "f", "other"));
        assert_eq!(bound("a", "f", 2), l("a", "f", "2"));
    }
}

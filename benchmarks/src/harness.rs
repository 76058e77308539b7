//! What both engine benchmarks share: the prompts and genrt running in-process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use genrt_actors::ModelConfig;
use genrt_runtime::Config;
use serde_json::{json, Value};

use crate::load::Target;

pub const SYSTEM: &str = "You are a helpful assistant.";
/// The id the benchmarked model is registered under.
pub const MODEL: &str = "bench";

/// The i-th benchmark prompt (16 subjects in turn).
pub fn prompt(i: usize) -> String {
    const SUBJECTS: [&str; 16] = [
        "cats",
        "the moon",
        "bread",
        "rivers",
        "chess",
        "volcanoes",
        "tea",
        "bicycles",
        "owls",
        "winter",
        "jazz",
        "glaciers",
        "honey",
        "robots",
        "deserts",
        "lanterns",
    ];
    format!("Write a long story about {}.", SUBJECTS[i % SUBJECTS.len()])
}

/// A streamed invocation of `tokens` tokens, end of generation ignored.
pub fn stream_body(i: usize, tokens: u32) -> Value {
    json!({"input": {"prompt": prompt(i)}, "params": {"max_tokens": tokens, "ignore_eos": true}})
}

const SECRET: &str = "benchmark-secret-0123456789";

/// A token for `tenant` with `scopes`, signed as the bench server expects.
pub fn token(tenant: &str, scopes: &[&str]) -> anyhow::Result<String> {
    let auth = genrt_runtime::config::AuthConfig {
        jwt_secret: SECRET.into(),
        ..Default::default()
    };
    Ok(genrt_runtime::auth::TokenIssuer::new(&auth).issue(
        &genrt_functions::TenantId::parse(tenant)?,
        scopes,
        Duration::from_secs(3600),
    ))
}

/// genrt in this process, on an ephemeral port and SQLite in a temporary folder, with `model`
/// registered as `bench` and two functions deployed: `stream` (no cache) and `cached`.
pub struct Bench {
    pub server: genrt_runtime::RunningServer,
    pub target: Target,
    _dir: PathBuf,
}

impl Bench {
    pub async fn start(model: ModelConfig, backends_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_models(vec![model], backends_dir).await
    }

    /// As [`Self::start`], with several models registered (the functions use the first).
    pub async fn start_models(
        models: Vec<ModelConfig>,
        backends_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        Self::start_adjusted(models, backends_dir, |_| {}).await
    }

    /// As [`Self::start_models`], with the configuration adjusted before the server starts.
    pub async fn start_adjusted(
        models: Vec<ModelConfig>,
        backends_dir: Option<PathBuf>,
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("genrt-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut config = Config::default();
        config.server.port = 0;
        config.data_dir = dir.clone();
        config.registry.store_dir = dir.join("store");
        config.auth.jwt_secret = SECRET.into();
        config.telemetry.metrics_listen = "127.0.0.1:0".into();
        // The per-tenant limits are policy, not cost: off, so that they do not cap what is
        // measured (the default 50 requests/s would refuse the runtime-overhead loop).
        config.tenancy.rate_limit_rps = 0.0;
        config.tenancy.max_concurrency = 0;
        config.tenancy.max_concurrent_streams = 0;
        config.engine.backends_dir = backends_dir;
        config.models = models;
        adjust(&mut config);
        let token = genrt_runtime::auth::TokenIssuer::new(&config.auth).issue(
            &genrt_functions::TenantId::parse("bench")?,
            genrt_runtime::auth::DEFAULT_TENANT_SCOPES,
            std::time::Duration::from_secs(config.auth.token_ttl_s),
        );
        let server = genrt_runtime::start(config, false).await?;
        let target = Target {
            client: genrt_tests::client_builder()
                .pool_max_idle_per_host(64)
                .build()?,
            base: format!("http://{}", server.addr()),
            token,
        };
        let bench = Self {
            server,
            target,
            _dir: dir,
        };
        bench
            .deploy(
                json!({"name": "stream", "model": MODEL, "system": SYSTEM, "prompt": "{{ prompt }}",
            "params": {"temperature": 0}, "cache": {"enabled": false}}),
            )
            .await?;
        bench
            .deploy(
                json!({"name": "cached", "model": MODEL, "system": SYSTEM, "prompt": "{{ prompt }}",
            "params": {"temperature": 0, "max_tokens": 8}, "cache": {"ttl_s": 3600}}),
            )
            .await?;
        Ok(bench)
    }

    pub async fn deploy(&self, definition: Value) -> anyhow::Result<()> {
        let r = self
            .target
            .client
            .post(format!("{}/v1/functions", self.target.base))
            .bearer_auth(&self.target.token)
            .json(&definition)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("deploy failed: {}", r.text().await?);
        }
        Ok(())
    }

    /// TTFT of a one-token streamed invocation of prompt `i`: a cold start when the model is
    /// unloaded.
    pub async fn first_token_ms(&self, i: usize) -> anyhow::Result<f64> {
        let s = self
            .target
            .stream(
                "stream",
                json!({"input": {"prompt": prompt(i)}, "params": {"max_tokens": 1}}),
            )
            .await;
        if !s.ok {
            bail!("one-token invocation failed");
        }
        Ok(s.ttft_ms)
    }

    /// One call of the runtime-overhead loop that `genrt-bench` and `genrt-bench-overhead`
    /// share: a one-token invocation, timed by the client and split by the server's timings.
    pub async fn one_token_call(&self) -> anyhow::Result<OneTokenCall> {
        let t = Instant::now();
        let r = self.target.invoke("stream", &one_token_body()).await?;
        let client_ms = t.elapsed().as_secs_f64() * 1000.0;
        let timing = |field: &str| {
            r["timings"][field]
                .as_f64()
                .ok_or_else(|| anyhow::anyhow!("the answer has no timings.{field}: {r}"))
        };
        Ok(OneTokenCall {
            client_ms,
            total_ms: timing("total_ms")?,
            queue_ms: timing("queue_ms")?,
        })
    }

    /// `calls` one-token calls left unmeasured before the loop: the first after a model load
    /// or another phase pays one-time costs (7.4 ms once after the streams phase, against
    /// 1.1–1.6 for the next 19) that a p99 would otherwise report as per-invocation.
    pub async fn warm_one_token(&self, calls: usize) -> anyhow::Result<()> {
        for _ in 0..calls {
            self.target.invoke("stream", &one_token_body()).await?;
        }
        Ok(())
    }

    pub async fn model_state(&self) -> Value {
        let r = self
            .target
            .client
            .get(format!("{}/v1/models/{MODEL}", self.target.base))
            .bearer_auth(&self.target.token)
            .send()
            .await;
        match r {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    pub async fn wait_unloaded(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.model_state().await["state"] == "unloaded" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The runtime-overhead loop's request: one token of a short prompt.
pub fn one_token_body() -> Value {
    json!({"input": {"prompt": "Hi."}, "params": {"max_tokens": 1}})
}

/// One timed call of the runtime-overhead loop (milliseconds).
pub struct OneTokenCall {
    pub client_ms: f64,
    /// The server's clock: from the handler's receipt to the outcome.
    pub total_ms: f64,
    /// Before the engine: receipt to the engine taking the job.
    pub queue_ms: f64,
}

impl OneTokenCall {
    /// Client time minus the engine's own time.
    pub fn overhead_ms(&self) -> f64 {
        (self.client_ms - (self.total_ms - self.queue_ms)).max(0.0)
    }

    /// Client time outside the server's clock: the client, HTTP both ways, middleware and
    /// authentication, and what follows the outcome.
    pub fn outside_ms(&self) -> f64 {
        (self.client_ms - self.total_ms).max(0.0)
    }
}

/// A bare actix-web JSON echo on a free port: the floor under any HTTP request's cost, the
/// baseline that genrt's own request path is compared with.
pub async fn echo_server() -> anyhow::Result<(actix_web::dev::ServerHandle, std::net::SocketAddr)> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let server = HttpServer::new(|| {
        App::new().route(
            "/echo",
            web::post().to(|body: web::Json<Value>| async move {
                HttpResponse::Ok().json(body.into_inner())
            }),
        )
    })
    .disable_signals()
    .bind("127.0.0.1:0")?;
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok((handle, addr))
}

//! End-to-end test harness: a real genrt (actix-web, the actor tree, llama.cpp with the
//! SmolLM2 GGUF) started in-process on a free port, on SQLite or on a throwaway Postgres
//! cluster, driven over real HTTP. [`process`] runs the `genrt` binary as a child instead,
//! for tests that kill and restart it; [`receiver`] stands in for a webhook endpoint.

pub mod node;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod receiver;
pub mod turns;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use genrt_actors::ModelConfig;
use genrt_runtime::{Config, RunningServer};
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{json, Value};

pub use postgres::PgCluster;
pub use process::ServerProcess;
pub use receiver::WebhookReceiver;
pub use turns::{Turn, Turns};

pub const SECRET: &str = "end-to-end-test-secret-0123456789";
pub const MODEL: &str = "smollm2-135m";
/// The same GGUF registered under a second id, standing in for a vertical model.
pub const FASHION_MODEL: &str = "smollm2-135m-fashion";
/// A second, genuinely different model (architecture `gemma3`, its own tokenizer of 262k
/// tokens, twice SmolLM2's parameters), served by the servers of [`TestServer::with_second_model`].
pub const SECOND_MODEL: &str = "gemma3-270m";

/// The model file, fetched by `make model`.
pub fn model_path() -> PathBuf {
    repo_file("models/SmolLM2-135M-Instruct.Q4_1.gguf", "make model")
}

/// Gemma 3 270M Q4_K_M, fetched by `make models`.
pub fn second_model_path() -> PathBuf {
    repo_file("models/gemma-3-270m.Q4_K_M.gguf", "make models")
}

/// The fashion LoRA adapter on SmolLM2 that genrt.toml and the product-description example
/// use, written by `make models`.
pub fn fashion_adapter_path() -> PathBuf {
    repo_file("models/smollm2-135m-fashion.lora.gguf", "make models")
}

fn repo_file(relative: &str, make: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(relative);
    assert!(
        path.is_file(),
        "{} is missing: run `{make}` (make test does it)",
        path.display()
    );
    path
}

pub enum Db {
    Sqlite,
    Postgres(String),
}

pub struct TestServer {
    server: Option<RunningServer>,
    pub base: String,
    pub client: Client,
    _data: TempDir,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestServer {
    /// Two model ids on the same GGUF, short idle timeouts so that scale to zero is quick
    /// to observe, and a small context so that context limits are easy to reach.
    pub fn config(db: &Db, data: &TempDir) -> Config {
        let mut config = Config::default();
        config.server.port = 0;
        config.server.workers = 2;
        config.server.shutdown_timeout_s = 5;
        // The fault tests break replicas on purpose through `X-Genrt-Fault`.
        config.server.fault_injection = true;
        config.server.body_limit_bytes = 64 * 1024;
        config.data_dir = data.0.clone();
        // The model registry's store, one per server unless a test shares one (a volume that
        // several nodes mount).
        config.registry.store_dir = data.0.join("store");
        // The test binary is no `genrt`: the registry's child processes run the real one.
        config.registry.tool_binary = Some(process::genrt_binary());
        config.auth.jwt_secret = SECRET.into();
        // Many servers run at once in one test binary: each gets its own metrics port.
        config.telemetry.metrics_listen = "127.0.0.1:0".into();
        config.supervision.base_backoff_ms = 10;
        if let Db::Postgres(url) = db {
            config.database.url = Some(url.clone());
        }
        config.models = [MODEL, FASHION_MODEL]
            .into_iter()
            .map(|id| {
                let mut m = ModelConfig::new(id, model_path());
                m.n_ctx = 512;
                m.threads = 2;
                m.idle_timeout_s = 2;
                m
            })
            .collect();
        config
    }

    pub async fn start(db: Db) -> Self {
        let data = TempDir::new("genrt-e2e");
        Self::start_with(Self::config(&db, &data), data).await
    }

    /// As [`Self::start`], also serving [`SECOND_MODEL`] and, as genrt.toml does, the fashion
    /// adapter `smollm2-135m:fashion` that the product-description example routes to.
    pub async fn with_second_model(db: Db) -> Self {
        Self::start_adjusted(db, |config| {
            let mut gemma = ModelConfig::new(SECOND_MODEL, second_model_path());
            gemma.n_ctx = 512;
            gemma.threads = 2;
            gemma.idle_timeout_s = 2;
            config.models.push(gemma);
            config.adapters.push(genrt_runtime::config::AdapterSeed {
                model: MODEL.into(),
                id: "fashion".into(),
                path: fashion_adapter_path(),
            });
        })
        .await
    }

    /// [`Self::config`] changed by `adjust` before the server starts.
    pub async fn start_adjusted(db: Db, adjust: impl FnOnce(&mut Config)) -> Self {
        let data = TempDir::new("genrt-e2e");
        let mut config = Self::config(&db, &data);
        adjust(&mut config);
        Self::start_with(config, data).await
    }

    pub async fn start_with(config: Config, data: TempDir) -> Self {
        Self::started(genrt_runtime::start(config, false), data).await
    }

    /// The real server (HTTP, database, actor tree, queue) on the fake engine
    /// (`genrt_actors::testing::FakeBackend`: text is `echo: <user text>`, `PANIC` in it fails
    /// the replica), for fast tests of what lies above the engine.
    /// As [`Self::start_with`], on the given engine.
    pub async fn start_with_backend(
        config: Config,
        data: TempDir,
        backend: std::sync::Arc<dyn genrt_actors::Backend>,
    ) -> Self {
        Self::started(genrt_runtime::start_with_backend(config, backend), data).await
    }

    pub async fn start_fake(db: Db, adjust: impl FnOnce(&mut Config)) -> Self {
        let data = TempDir::new("genrt-fake");
        let mut config = Self::config(&db, &data);
        adjust(&mut config);
        let backend = std::sync::Arc::new(genrt_actors::testing::FakeBackend::default());
        Self::started(genrt_runtime::start_with_backend(config, backend), data).await
    }

    async fn started(
        start: futures_util::future::BoxFuture<
            'static,
            Result<RunningServer, genrt_runtime::StartError>,
        >,
        data: TempDir,
    ) -> Self {
        // Server logs go to the test's captured output, shown when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,genrt_runtime=info,genrt_actors=info",
            ))
            .try_init();
        let server = start.await.expect("server starts");
        let base = format!("http://{}", server.addr());
        let s = Self {
            server: Some(server),
            base,
            client: client_builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            _data: data,
        };
        // As an orchestrator would: no traffic before `/readyz` says so (the model registry's
        // first sync runs once the server listens).
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.request(Method::GET, "/readyz", None, None).await.status() != 200 {
            assert!(Instant::now() < deadline, "/readyz not 200 within 60 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        s
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.expect("request sent")
    }

    /// Sends a request and returns its status and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let response = self.request(method, path, Some(token), body).await;
        read(response).await
    }

    /// `GET /metrics` on the server's metrics listener, with a bearer token when given.
    pub async fn scrape(&self, token: Option<&str>) -> Response {
        let addr = self
            .server()
            .metrics_addr()
            .expect("the metrics listener is on (telemetry.metrics_listen)");
        let mut request = self.client.get(format!("http://{addr}/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("scrape /metrics")
    }

    /// A request to send with [`reply`], for when headers matter (either way).
    pub fn build(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    pub async fn deploy(&self, token: &str, definition: Value) -> (u16, Value) {
        self.call(Method::POST, "/v1/functions", token, Some(definition))
            .await
    }

    pub async fn invoke(&self, token: &str, name: &str, body: Value) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("/v1/functions/{name}/invoke"),
            token,
            Some(body),
        )
        .await
    }

    pub async fn model(&self, token: &str, id: &str) -> Value {
        let (status, body) = self.call(Method::GET, "/v1/models", token, None).await;
        assert_eq!(status, 200, "{body}");
        body["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("model {id} not listed: {body}"))
    }

    /// Polls until `check` holds, failing after `limit`.
    pub async fn eventually<F, Fut>(&self, what: &str, limit: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("server stops cleanly");
        }
    }
}

/// An HTTP client for talking to genrt. Every test and benchmark client starts here, because
/// of the keep-alive race below.
pub fn client_builder() -> reqwest::ClientBuilder {
    Client::builder()
        // Below the server's keep-alive (actix's 5 s): a connection idle longer is not reused,
        // since the server may close it just as a request goes out on it (hyper's
        // `IncompleteMessage`; CI saw it after a 5 s wait between two requests).
        .pool_idle_timeout(Duration::from_secs(2))
}

/// [`client_builder`] as it is.
pub fn client() -> Client {
    client_builder().build().expect("an HTTP client")
}

pub async fn read(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }))
    };
    (status, body)
}

/// A response with its headers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }
}

pub async fn reply(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("request sent");
    let headers = response.headers().clone();
    let (status, body) = read(response).await;
    Reply {
        status,
        headers,
        body,
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    tenant: &'a str,
    exp: u64,
    iat: u64,
    iss: &'a str,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token as an outside issuer would make it, with every part under the test's control.
pub fn token_with(tenant: &str, secret: &str, audience: &str, expires_in: i64) -> String {
    let claims = Claims {
        tenant,
        exp: (now() as i64 + expires_in) as u64,
        iat: now(),
        iss: "genrt",
        aud: audience,
        scope: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn token(tenant: &str) -> String {
    token_with(tenant, SECRET, "genrt", 3600)
}

/// A token carrying exactly `scopes` in its `scope` claim (none at all when empty: a token that
/// names its scopes gets only those, unlike one without the claim).
pub fn token_scoped(tenant: &str, scopes: &[&str]) -> String {
    let claims = Claims {
        tenant,
        exp: now() + 3600,
        iat: now(),
        iss: "genrt",
        aud: "genrt",
        scope: Some(scopes.join(" ")),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The operator: a token with the `admin` scope (and nothing else).
pub fn admin_token() -> String {
    token_scoped("operator", &["admin"])
}

/// The JWT test keys of the runtime crate (`runtime/tests/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/tests/fixtures")
        .join(name)
}

/// Claims genrt accepts, for tokens signed by hand; change them to make bad ones.
pub fn claims(tenant: &str) -> Value {
    json!({
        "tenant": tenant,
        "iss": "genrt",
        "aud": "genrt",
        "iat": now(),
        "exp": now() + 3600,
    })
}

/// Signs `claims` with `alg` and `key`, naming `kid` in the header when given.
pub fn sign(
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    claims: &Value,
    key: &jsonwebtoken::EncodingKey,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// What a streamed invocation sent: its text pieces, then its `done` or `error` event.
#[derive(Debug, Default)]
pub struct Streamed {
    pub status: u16,
    pub pieces: Vec<String>,
    pub done: Option<Value>,
    pub error: Option<Value>,
}

impl Streamed {
    pub fn text(&self) -> String {
        self.pieces.concat()
    }
}

impl TestServer {
    /// Opens a streamed invocation; the caller reads (or drops) the events.
    pub async fn open_stream(
        &self,
        token: &str,
        name: &str,
        mut body: Value,
    ) -> (
        u16,
        impl futures_util::Stream<Item = eventsource_stream::Event> + Unpin,
    ) {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        body["stream"] = json!(true);
        let response = self
            .client
            .post(format!("{}/v1/functions/{name}/invoke", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let events = response
            .bytes_stream()
            .eventsource()
            .filter_map(|e| async move { e.ok() })
            .boxed();
        (status, events)
    }

    /// A whole streamed invocation.
    pub async fn stream(&self, token: &str, name: &str, body: Value) -> Streamed {
        use futures_util::StreamExt;
        let (status, mut events) = self.open_stream(token, name, body).await;
        let mut out = Streamed {
            status,
            ..Default::default()
        };
        while let Some(event) = events.next().await {
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            match event.event.as_str() {
                "token" => out
                    .pieces
                    .push(data["text"].as_str().unwrap_or_default().to_owned()),
                "done" => out.done = Some(data),
                "error" => out.error = Some(data),
                _ => {}
            }
        }
        out
    }
}

/// One `#[tokio::test]` per scenario and database: `mod sqlite { fn <scenario> }` and
/// `mod postgres { fn <scenario> }` (a throwaway cluster each), calling
/// `<scenario>(db: Db)` of the file that invokes it.
#[macro_export]
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::Db::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let cluster = $crate::PgCluster::start();
                    let url = cluster.create_database("genrt");
                    super::$scenario($crate::Db::Postgres(url)).await;
                    drop(cluster);
                }
            )*
        }
    };
}

/// GitHub's `X-Hub-Signature-256` hex digest of `body`, computed by openssl's HMAC rather
/// than the server's code, so that a test checks the server against an independent
/// implementation.
pub fn github_signature(secret: &str, body: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Reads an HTTP/1.1 request up to the end of its head; `None` if the connection ends first.
pub async fn read_request_head(conn: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&request).into_owned())
}

/// Serves files over plain HTTP/1.1; a file with a cut answers with its whole
/// `Content-Length` but closes the connection after `cut` bytes (a download broken off).
pub async fn file_server(
    files: std::collections::HashMap<&'static str, (std::sync::Arc<Vec<u8>>, Option<usize>)>,
) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files = std::sync::Arc::new(files);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let files = std::sync::Arc::clone(&files);
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut conn).await else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                match files.get(path.trim_start_matches('/')) {
                    Some((body, cut)) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = conn.write_all(head.as_bytes()).await;
                        let _ = conn.write_all(&body[..cut.unwrap_or(body.len())]).await;
                    }
                    None => {
                        let _ = conn
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                    }
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    base
}

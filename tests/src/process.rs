//! The real `genrt` binary as a child process, for tests that need what an in-process server
//! cannot give: a SIGKILL in the middle of work, and a restart of the same binary on the same
//! data directory and database. Its stdout and stderr go to a log file in the test's temporary
//! directory, and a failure to start shows the end of that log.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::Value;

use crate::{model_path, read, Db, SECRET};

/// How long a start may take before `/readyz` answers 200: migrations, the actor tree and,
/// on a restart, requeueing what the killed process left.
const READY_LIMIT: Duration = Duration::from_secs(120);
/// Ports found free can be taken by someone else before the child binds them; a start that
/// fails is tried again on another port this many times.
const START_TRIES: u32 = 3;

/// The workspace's root, where `cargo build` runs and `target/` usually lies.
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// `target/release/genrt`, under `CARGO_TARGET_DIR` when that was set at build time or is set
/// now. A missing binary is built, so that a test run alone works; a present one is used as
/// it is (`make test` builds every binary of the workspace before running any test, and
/// building here again with other features would rebuild the runtime for nothing).
pub fn genrt_binary() -> PathBuf {
    workspace_binary("genrt")
}

/// A binary of the workspace (`genrt`, `genrt-make-model`, ...) in `target/release`, built as
/// [`genrt_binary`] says when it is missing.
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .map(|dir| {
            if dir.is_relative() {
                root.join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("release").join(name);
    // Tests of one binary run in parallel; one of them builds, the others wait for it.
    let _building = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !binary.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("{} is missing; building it", binary.display());
        let status = Command::new(cargo)
            // The workspace's features, as `make test` builds it, so nothing else rebuilds.
            .args(["build", "--release", "--workspace", "--bins"])
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the genrt binary failed");
        assert!(binary.is_file(), "cargo built no {}", binary.display());
    }
    binary
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// The parts of a configuration every child server needs: its data directory, the test JWT
/// secret, the database, two HTTP workers and the SmolLM2 model with a small context, eight
/// slots and one thread. Tests append their own tables (`[queue]`, `[webhooks]`,
/// `[tenancy]`, ...); `[server]`, `[database]`, `[auth]` and `[[models]]` are taken.
///
/// One thread because llama.cpp's threads wait for each other at every step of a decode: on a
/// small machine shared with other work, one descheduled thread stalls the others, and 200
/// short invocations took 250 s with two threads where one thread did them in 30 s.
pub fn base_config(data_dir: &Path, db: &Db) -> String {
    let database = match db {
        Db::Sqlite => String::new(),
        Db::Postgres(url) => format!("url = {}\n", toml_string(url)),
    };
    format!(
        "data_dir = {data}\n\n\
         [server]\nhost = \"127.0.0.1\"\nworkers = 2\nshutdown_timeout_s = 5\n\n\
         [database]\n{database}\n\
         [auth]\njwt_secret = {secret}\n\n\
         [[models]]\nid = {model}\npath = {path}\nn_ctx = 512\nthreads = 1\nslots = 8\n\
         max_replicas = 1\nidle_timeout_s = 300\n\n",
        data = toml_string(&data_dir.display().to_string()),
        secret = toml_string(SECRET),
        model = toml_string(crate::MODEL),
        path = toml_string(&model_path().display().to_string()),
    )
}

/// A TOML basic string; the JSON escapes of these values are valid TOML escapes.
fn toml_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A `genrt serve --config <file>` child. Dropping it kills the process.
pub struct ServerProcess {
    binary: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    port: u16,
    /// Extra environment variables of the child (say `OTEL_*`).
    env: Vec<(String, String)>,
    pub client: Client,
}

impl ServerProcess {
    /// Writes `config` to `dir/genrt.toml`, starts the server on a free port with its output
    /// in `dir/genrt.log`, and returns once `/readyz` answers 200.
    pub async fn start(dir: &Path, config: &str) -> Self {
        Self::start_with_env(dir, config, &[]).await
    }

    /// [`Self::start`] with extra environment variables for the child.
    pub async fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let config_path = dir.join("genrt.toml");
        std::fs::write(&config_path, config).expect("write the server configuration");
        let mut server = Self {
            binary: genrt_binary(),
            config: config_path,
            dir: dir.to_owned(),
            log: dir.join("genrt.log"),
            child: None,
            port: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            client: crate::client_builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
        };
        server.launch().await;
        server
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the server's output, every start included.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the process with SIGKILL (what `Child::kill` sends on Unix): no signal handler,
    /// no graceful stop, no lease handed back. Returns once the process is reaped.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error means it already exited; `wait` reaps it either way.
            let _ = child.kill();
            let status = child.wait().expect("wait for the killed server");
            eprintln!("genrt (pid {}) killed: {status}", child.id());
        }
    }

    /// Sends SIGTERM: the graceful stop begins. [`Self::wait_exit`] waits for its end.
    pub fn sigterm(&self) {
        let pid = self.pid().expect("the server runs");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM could not be sent");
    }

    /// Waits up to `limit` for the process to exit and returns its status, or `None` when it
    /// was still running (it is then killed).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts the server again with the same configuration, data directory and database (on
    /// a fresh port), and returns once it is ready. Kills a running one first.
    pub async fn restart(&mut self) {
        self.kill_9();
        self.launch().await;
    }

    async fn launch(&mut self) {
        for attempt in 1..=START_TRIES {
            self.port = free_port();
            let mut child = self.spawn();
            match self.wait_ready(&mut child).await {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(why) if attempt < START_TRIES && why.contains("exited") => {
                    // Most likely the port was taken meanwhile; the log says if not.
                    eprintln!("genrt did not start ({why}); trying another port");
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "genrt did not become ready: {why}\n--- {} ---\n{}",
                        self.log.display(),
                        self.log_tail(60)
                    );
                }
            }
        }
    }

    fn spawn(&self) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let log_err: File = log.try_clone().expect("clone the log handle");
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--port")
            .arg(self.port.to_string())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Request lines would bury what matters in a failing test's log tail.
            .env(
                "RUST_LOG",
                "warn,genrt=info,genrt_runtime=info,genrt::http=warn",
            )
            .env("NO_COLOR", "1");
        // The configuration file must be the whole story: a developer's GENRT_* variables
        // (say GENRT_DATABASE_URL) would otherwise override it.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("GENRT_") || name_text.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        // Children run beside each other: each gets its own metrics port.
        command.env("GENRT_TELEMETRY__METRICS_LISTEN", "127.0.0.1:0");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.spawn().expect("start genrt")
    }

    async fn wait_ready(&self, child: &mut Child) -> Result<(), String> {
        let deadline = Instant::now() + READY_LIMIT;
        let url = format!("{}/readyz", self.base());
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("the process exited ({status})"));
            }
            if let Ok(response) = self.client.get(&url).send().await {
                if response.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("/readyz not 200 within {READY_LIMIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a request with a bearer token and returns its status and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base()))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => read(response).await,
            Err(err) => panic!(
                "{path}: {err}\n--- {} ---\n{}",
                self.log.display(),
                self.log_tail(30)
            ),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

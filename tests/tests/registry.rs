//! The model registry (`POST /v1/models`), on the real SmolLM2 GGUF through llama.cpp: a model
//! registered by path, by URL (a local HTTP server) and by upload serves invocations exactly
//! as the configured model on the same file does, on SQLite and on Postgres; a wrong sha256, a
//! truncated file, a text file named `.gguf`, an architecture llama.cpp does not know and a
//! path outside the store are each refused with their own code and leave nothing in the
//! store; deleting drains (running work finishes, new work gets `model_draining`); a model
//! registered on one node is served by another node of the same Postgres.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_tests::{admin_token, model_path, token, Db, PgCluster, TempDir, TestServer, MODEL};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bound on another node serving a model, set low so that the test is quick; the
/// assertion allows this plus the file's hash and some slack.
const SYNC_MS: u64 = 300;

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn configure(c: &mut genrt_runtime::Config) {
    c.registry.allow_http = true;
    c.registry.sync_interval_ms = SYNC_MS;
    c.webhooks.allow_private = vec!["127.0.0.1".into()];
}

/// Serves files over plain HTTP/1.1; a file with a cut answers with its whole
/// `Content-Length` but closes the connection after `cut` bytes (a download broken off).
async fn file_server(files: HashMap<&'static str, (Arc<Vec<u8>>, Option<usize>)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(files);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let files = Arc::clone(&files);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
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

/// A GGUF that passes every structural check but names an architecture no llama.cpp knows.
fn unknown_architecture_gguf() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0i64.to_le_bytes()); // tensors
    out.extend_from_slice(&1i64.to_le_bytes()); // key-value pairs
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    string(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes()); // GGUF_TYPE_STRING
    string(&mut out, "no-such-architecture");
    while out.len() % 32 != 0 {
        out.push(0);
    }
    out
}

async fn register(s: &TestServer, body: Value) -> (u16, Value) {
    s.call(Method::POST, "/v1/models", &admin_token(), Some(body))
        .await
}

/// Polls `GET /v1/models/{id}` until its registration is `ready` or `failed`.
async fn settled(s: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, body) = s
            .call(
                Method::GET,
                &format!("/v1/models/{id}"),
                &admin_token(),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let state = body["registration"]["state"].as_str().unwrap_or_default();
        if state == "ready" || state == "failed" {
            return body;
        }
        assert!(Instant::now() < deadline, "{id} did not settle: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers and waits: the final entry.
async fn registered(s: &TestServer, body: Value) -> Value {
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, answer) = register(s, body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["registration"]["state"], "registering", "{answer}");
    settled(s, &id).await
}

fn failed_with(entry: &Value, code: &str) {
    assert_eq!(entry["registration"]["state"], "failed", "{entry}");
    assert_eq!(entry["registration"]["error"]["code"], code, "{entry}");
}

/// What a function on `model` answers for a fixed prompt, greedily.
async fn generate(s: &TestServer, t: &str, model: &str) -> String {
    let name = format!("on-{}", model.replace('.', "-"));
    let (status, body) = s
        .deploy(
            t,
            json!({"name": name, "model": model, "prompt": "Name three colours of {{ thing }}.",
                   "params": {"max_tokens": 16, "temperature": 0}, "cache": {"enabled": false}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = s
        .invoke(t, &name, json!({"input": {"thing": "autumn leaves"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], model, "{body}");
    body["output"]["text"].as_str().unwrap().to_owned()
}

/// Files in the registry's part of the store (`registry/`, partial downloads included).
fn registry_files(store: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for dir in [store.join("registry"), store.join("registry/.partial")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                out.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

async fn sources_and_refusals(db: Db) {
    let s = TestServer::start_adjusted(db, configure).await;
    let store = PathBuf::from(s.server().state().registry.store_root());
    let admin = admin_token();
    let t = token("acme");
    let gguf = Arc::new(std::fs::read(model_path()).unwrap());
    let good_sha = sha256(&gguf);
    let baseline = generate(&s, &t, MODEL).await;

    // Refused at once, nothing recorded: a tenant's credential, a path outside the store,
    // a bad id, a malformed sha256, two sources, unknown settings.
    let path_body = |id: &str, path: &str, sha: &str| json!({"id": id, "source": {"path": path}, "sha256": sha});
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/models",
            &t,
            Some(path_body("m", "x.gguf", &good_sha)),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("insufficient_scope")),
        "{body}"
    );
    for (body, code, field) in [
        (
            path_body("outside", "../../etc/passwd", &good_sha),
            "invalid_model_source",
            "source.path",
        ),
        (
            path_body("missing", "nope.gguf", &good_sha),
            "invalid_model_source",
            "source.path",
        ),
        (
            path_body("Bad:Id", "x.gguf", &good_sha),
            "invalid_request",
            "id",
        ),
        (
            path_body("short-sha", "x.gguf", "abc"),
            "invalid_request",
            "sha256",
        ),
        (
            json!({"id": "two", "source": {"path": "a", "url": "http://127.0.0.1/a"}, "sha256": good_sha}),
            "invalid_request",
            "source",
        ),
    ] {
        let (status, answer) = register(&s, body.clone()).await;
        assert_eq!(status, 422, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} → {answer}");
        assert_eq!(answer["error"]["field"], field, "{body} → {answer}");
    }
    link_or_copy(&model_path(), &store.join("smollm2.gguf"));
    let (status, answer) = register(
        &s,
        json!({"id": "bad-settings", "source": {"path": "smollm2.gguf"}, "sha256": good_sha,
               "settings": {"n_ctxx": 512}}),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{answer}"
    );
    let (status, answer) = register(&s, path_body(MODEL, "smollm2.gguf", &good_sha)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("model_exists")),
        "{answer}"
    );
    // A function on a model nobody registered is refused at deploy.
    let (status, body) = s
        .deploy(
            &t,
            json!({"name": "nowhere", "model": "by-path", "prompt": "x"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("model")),
        "{body}"
    );

    // By path: validated, described, served; the same greedy answer as the configured model
    // on the same file.
    let entry = registered(
        &s,
        json!({"id": "by-path", "source": {"path": "smollm2.gguf"}, "sha256": good_sha,
               "settings": {"n_ctx": 512, "threads": 2, "idle_timeout_s": 5}}),
    )
    .await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    let file = &entry["registration"]["file"];
    assert_eq!(file["architecture"], "llama", "{entry}");
    assert_eq!(file["quantization"], "q4_1", "{entry}");
    assert_eq!(file["chat_template"], true, "{entry}");
    assert_eq!(file["file_bytes"], gguf.len() as u64, "{entry}");
    assert!(
        file["parameters"].as_u64().unwrap() > 100_000_000,
        "{entry}"
    );
    assert_eq!(entry["registration"]["sha256"], good_sha.as_str());
    assert_eq!(entry["registration"]["percent"], 100.0, "{entry}");
    assert_eq!(entry["n_ctx"], 512);
    assert_eq!(generate(&s, &t, "by-path").await, baseline);

    // By URL, and by upload: the same.
    let mut files = HashMap::new();
    files.insert("model.gguf", (Arc::clone(&gguf), None));
    files.insert("cut.gguf", (Arc::clone(&gguf), Some(gguf.len() / 3)));
    files.insert(
        "text.gguf",
        (Arc::new(b"not a model at all\n".to_vec()), None),
    );
    let base = file_server(files).await;
    let entry = registered(
        &s,
        json!({"id": "by-url", "source": {"url": format!("{base}/model.gguf")}, "sha256": good_sha,
               "settings": {"n_ctx": 512, "threads": 2}}),
    )
    .await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    assert_eq!(entry["registration"]["bytes_done"], gguf.len() as u64);
    assert_eq!(generate(&s, &t, "by-url").await, baseline);

    let (status, entry) = register(
        &s,
        json!({"id": "by-upload", "source": {"upload": true}, "sha256": good_sha,
               "settings": {"n_ctx": 512, "threads": 2}}),
    )
    .await;
    assert_eq!(status, 202, "{entry}");
    assert_eq!(entry["registration"]["state"], "awaiting_upload", "{entry}");
    let upload = |id: &'static str, bytes: Vec<u8>| {
        let s = &s;
        let admin = admin.clone();
        async move {
            genrt_tests::reply(
                s.build(Method::PUT, &format!("/v1/models/{id}/file"), &admin)
                    .header("content-type", "application/octet-stream")
                    .body(bytes),
            )
            .await
        }
    };
    let sent = upload("by-upload", gguf.to_vec()).await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    let entry = settled(&s, "by-upload").await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    assert_eq!(generate(&s, &t, "by-upload").await, baseline);
    // Only a registration awaiting its upload takes one.
    let again = upload("by-upload", b"GGUF".to_vec()).await;
    assert_eq!(
        (again.status, again.code()),
        (409, "model_not_awaiting_upload")
    );

    // Each bad file fails with its own code and leaves nothing in the store.
    let before = registry_files(&store);
    let url = |id: &str, file: &str, sha: &str| json!({"id": id, "source": {"url": format!("{base}/{file}")}, "sha256": sha});
    let bad_sha = "0".repeat(64);
    failed_with(
        &registered(&s, url("wrong-sha", "model.gguf", &bad_sha)).await,
        "model_sha256_mismatch",
    );
    failed_with(
        &registered(&s, path_body("wrong-sha-path", "smollm2.gguf", &bad_sha)).await,
        "model_sha256_mismatch",
    );
    failed_with(
        &registered(&s, url("broken-off", "cut.gguf", &good_sha)).await,
        "model_download_failed",
    );
    failed_with(
        &registered(&s, url("missing-url", "absent.gguf", &good_sha)).await,
        "model_download_failed",
    );
    let text = b"not a model at all\n".to_vec();
    failed_with(
        &registered(&s, url("text", "text.gguf", &sha256(&text))).await,
        "model_not_gguf",
    );
    // A file cut short whose sha256 is right for what was sent: the GGUF checks find it.
    let truncated = gguf[..gguf.len() - 4096].to_vec();
    let (status, _) = register(
        &s,
        json!({"id": "truncated", "source": {"upload": true}, "sha256": sha256(&truncated)}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(upload("truncated", truncated).await.status, 202);
    failed_with(&settled(&s, "truncated").await, "model_truncated");
    // An upload with another sha256 is refused in the answer itself.
    let (status, _) = register(
        &s,
        json!({"id": "upload-wrong", "source": {"upload": true}, "sha256": bad_sha}),
    )
    .await;
    assert_eq!(status, 202);
    let sent = upload("upload-wrong", gguf.to_vec()).await;
    assert_eq!(
        (sent.status, sent.code()),
        (422, "model_sha256_mismatch"),
        "{:?}",
        sent.body
    );
    failed_with(&settled(&s, "upload-wrong").await, "model_sha256_mismatch");
    let unknown = unknown_architecture_gguf();
    std::fs::write(store.join("unknown.gguf"), &unknown).unwrap();
    failed_with(
        &registered(
            &s,
            path_body("unknown-arch", "unknown.gguf", &sha256(&unknown)),
        )
        .await,
        "model_unsupported_architecture",
    );
    assert_eq!(
        registry_files(&store),
        before,
        "a refused registration left a file"
    );
    for id in [
        "wrong-sha",
        "broken-off",
        "text",
        "truncated",
        "unknown-arch",
    ] {
        let (status, body) = s
            .deploy(
                &t,
                json!({"name": format!("on-{id}"), "model": id, "prompt": "x"}),
            )
            .await;
        assert_eq!(
            status, 422,
            "a function was deployed on failed model {id}: {body}"
        );
    }
    // A failed registration is replaced by registering the id again.
    let entry = registered(&s, path_body("wrong-sha-path", "smollm2.gguf", &good_sha)).await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");

    // Deleting: the entry goes, with the file the registry wrote; functions on it stop
    // working and new ones are refused.
    let (status, entry) = s
        .call(Method::DELETE, "/v1/models/by-url", &admin, None)
        .await;
    assert_eq!(status, 202, "{entry}");
    let deleting =
        entry["registration"]["state"].as_str() == Some("deleting") || entry["state"] == "draining";
    assert!(deleting, "{entry}");
    s.eventually("by-url to be gone", Duration::from_secs(30), || async {
        s.call(Method::GET, "/v1/models/by-url", &admin, None)
            .await
            .0
            == 404
    })
    .await;
    assert_eq!(
        registry_files(&store).len(),
        before.len() - 1,
        "the downloaded file stays"
    );
    let (status, body) = s
        .invoke(&t, "on-by-url", json!({"input": {"thing": "x"}}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_model")),
        "{body}"
    );
    let (status, _) = s
        .deploy(
            &t,
            json!({"name": "late", "model": "by-url", "prompt": "x"}),
        )
        .await;
    assert_eq!(status, 422);
    // A path source's file is the operator's: deleting the model keeps it.
    let (status, _) = s
        .call(Method::DELETE, "/v1/models/by-path", &admin, None)
        .await;
    assert_eq!(status, 202);
    s.eventually("by-path to be gone", Duration::from_secs(30), || async {
        s.call(Method::GET, "/v1/models/by-path", &admin, None)
            .await
            .0
            == 404
    })
    .await;
    assert!(store.join("smollm2.gguf").is_file());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_and_refusals_on_sqlite() {
    sources_and_refusals(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_and_refusals_on_postgres() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("genrt");
    sources_and_refusals(Db::Postgres(url)).await;
}

/// Deleting a model with a generation running: the generation finishes whole, and work sent
/// meanwhile is refused with `model_draining`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_drains_running_work() {
    let s = TestServer::start_adjusted(Db::Sqlite, configure).await;
    let store = PathBuf::from(s.server().state().registry.store_root());
    link_or_copy(&model_path(), &store.join("smollm2.gguf"));
    let gguf_sha = sha256(&std::fs::read(model_path()).unwrap());
    let entry = registered(
        &s,
        json!({"id": "doomed", "source": {"path": "smollm2.gguf"}, "sha256": gguf_sha,
               "settings": {"n_ctx": 512, "threads": 2}}),
    )
    .await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    let t = token("acme");
    let (status, body) = s
        .deploy(
            &t,
            json!({"name": "long", "model": "doomed", "prompt": "Write a long story about {{ topic }}.",
                   "params": {"max_tokens": 96, "temperature": 0, "ignore_eos": true},
                   "cache": {"enabled": false}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let running = {
        let s = &s;
        let t = t.clone();
        async move {
            s.invoke(&t, "long", json!({"input": {"topic": "the sea"}}))
                .await
        }
    };
    let deleter = async {
        // Once the generation is under way.
        s.eventually(
            "the generation to start",
            Duration::from_secs(60),
            || async { s.model(&admin_token(), "doomed").await["busy_slots"] == 1 },
        )
        .await;
        let (status, entry) = s
            .call(Method::DELETE, "/v1/models/doomed", &admin_token(), None)
            .await;
        assert_eq!(status, 202, "{entry}");
        assert_eq!(entry["state"], "draining", "{entry}");
        let (status, body) = s
            .invoke(&t, "long", json!({"input": {"topic": "a lake"}}))
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("model_draining")),
            "{body}"
        );
    };
    let ((status, body), ()) = tokio::join!(running, deleter);
    assert_eq!(status, 200, "the running generation was cut off: {body}");
    assert_eq!(body["usage"]["completion_tokens"], 96, "{body}");
    s.eventually("doomed to be gone", Duration::from_secs(30), || async {
        s.call(Method::GET, "/v1/models/doomed", &admin_token(), None)
            .await
            .0
            == 404
    })
    .await;
    s.stop().await;
}

/// Two nodes of one Postgres sharing a model store: a model uploaded to node A is served by
/// node B within the sync interval (plus B's own sha256 check of the file), and deleting it
/// on A stops it on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_registered_on_one_node_is_served_by_another() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("genrt");
    let shared = TempDir::new("genrt-shared-store");
    let node = |url: String| {
        let store = shared.0.clone();
        TestServer::start_adjusted(Db::Postgres(url), move |c| {
            configure(c);
            c.registry.store_dir = store;
        })
    };
    let a = node(url.clone()).await;
    let b = node(url).await;
    let gguf = std::fs::read(model_path()).unwrap();
    let (status, entry) = register(
        &a,
        json!({"id": "shared", "source": {"upload": true}, "sha256": sha256(&gguf),
               "settings": {"n_ctx": 512, "threads": 2}}),
    )
    .await;
    assert_eq!(status, 202, "{entry}");
    let sent = genrt_tests::reply(
        a.build(Method::PUT, "/v1/models/shared/file", &admin_token())
            .body(gguf),
    )
    .await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    let entry = settled(&a, "shared").await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    let ready_at = Instant::now();
    // B serves it once its state is a pool's (`unloaded` until the first invocation).
    b.eventually(
        "node B to serve the model",
        Duration::from_secs(30),
        || async {
            let (_, body) = b
                .call(Method::GET, "/v1/models/shared", &admin_token(), None)
                .await;
            body["state"] == "unloaded" || body["state"] == "ready"
        },
    )
    .await;
    let took = ready_at.elapsed();
    eprintln!(
        "node B served the model {took:?} after node A had it ready (sync interval {SYNC_MS} ms)"
    );
    assert!(
        took < Duration::from_millis(SYNC_MS) + Duration::from_secs(5),
        "node B took {took:?}"
    );
    let t = token("acme");
    let on_b = generate(&b, &t, "shared").await;
    assert!(!on_b.is_empty());
    // Deleted on A: B stops serving it.
    let (status, _) = a
        .call(Method::DELETE, "/v1/models/shared", &admin_token(), None)
        .await;
    assert_eq!(status, 202);
    b.eventually(
        "node B to stop serving the model",
        Duration::from_secs(30),
        || async {
            let (status, body) = b
                .invoke(&t, "on-shared", json!({"input": {"thing": "x"}}))
                .await;
            status == 422 && body["error"]["code"] == "unknown_model"
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
}

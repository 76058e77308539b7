//! The model registry (`POST /v1/models`), on the real SmolLM2 GGUF through llama.cpp: a model
//! registered by path, by URL (a local HTTP server) and by upload serves invocations exactly
//! as the configured model on the same file does, on SQLite and on Postgres; a wrong sha256, a
//! truncated file, a text file named `.gguf`, an architecture llama.cpp does not know and a
//! path outside the store are each refused with their own code and leave nothing in the
//! store; deleting drains (running work finishes, new work gets `model_draining`); a model
//! registered on one node is served by another node of the same Postgres, and one deleted on
//! another node while its download runs stops there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_tests::{admin_token, model_path, token, Db, PgCluster, TempDir, TestServer, MODEL};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

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

/// `GET /v1/models/{id}` as the admin.
async fn model_entry(s: &TestServer, id: &str) -> (u16, Value) {
    s.call(
        Method::GET,
        &format!("/v1/models/{id}"),
        &admin_token(),
        None,
    )
    .await
}

/// Polls `GET /v1/models/{id}` until its registration is `ready` or `failed`.
async fn settled(s: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, body) = model_entry(s, id).await;
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
    // 200 when the same definition was deployed before.
    assert!(status == 201 || status == 200, "{body}");
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

/// Serves `body` at any path, 64 KiB every 50 ms (a large file on a slow link): a download
/// that is still running when the test acts on it.
async fn drip_server(body: Arc<Vec<u8>>) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = Arc::clone(&body);
            tokio::spawn(async move {
                if genrt_tests::read_request_head(&mut conn).await.is_none() {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for chunk in body.chunks(64 * 1024) {
                    if conn.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    base
}

async fn sources_and_refusals(db: Db) {
    let s = TestServer::start_adjusted(db, configure).await;
    let store = PathBuf::from(s.server().state().registry.store_root());
    let admin = admin_token();
    let t = token("acme");
    let gguf = Arc::new(std::fs::read(model_path()).unwrap());
    let good_sha = sha256(&gguf);
    let baseline = generate(&s, &t, MODEL).await;

    // Refused at once, nothing recorded: a credential with neither `admin` nor
    // `models:write`, a path outside the store, a bad id, a malformed sha256, two sources,
    // unknown settings.
    let path_body = |id: &str, path: &str, sha: &str| json!({"id": id, "source": {"path": path}, "sha256": sha});
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/models",
            &genrt_tests::token_scoped("acme", &["functions:write", "functions:invoke"]),
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
    let base = genrt_tests::file_server(files).await;
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
        // Refused from the answer on, not from whenever the background drain starts (CI once
        // saw the next invocation run to the end).
        assert!(
            s.server()
                .state()
                .tree
                .is_draining(&genrt_functions::ModelId::new("doomed")),
            "the DELETE answered before new work was refused"
        );
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
/// node B within B's sync interval (plus B's own sha256 check of the file); deleted and
/// registered again on A with other settings, B serves the new entry; deleted on A, it stops
/// on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_registered_on_one_node_is_served_by_another() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("genrt");
    let shared = TempDir::new("genrt-shared-store");
    // B looks less often than A, so that a deletion and a new registration on A usually both
    // fall between two of B's looks.
    const B_SYNC_MS: u64 = 2000;
    let node = |url: String, sync_ms: u64| {
        let store = shared.0.clone();
        TestServer::start_adjusted(Db::Postgres(url), move |c| {
            configure(c);
            c.registry.store_dir = store;
            c.registry.sync_interval_ms = sync_ms;
        })
    };
    let a = node(url.clone(), SYNC_MS).await;
    let b = node(url, B_SYNC_MS).await;
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
            .body(gguf.clone()),
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
        "node B served the model {took:?} after node A had it ready (sync interval {B_SYNC_MS} ms)"
    );
    assert!(
        took < Duration::from_millis(B_SYNC_MS) + Duration::from_secs(5),
        "node B took {took:?}"
    );
    let t = token("acme");
    let on_b = generate(&b, &t, "shared").await;
    assert!(!on_b.is_empty());
    // Deleted and registered again under the same id, with other settings, faster than B
    // looks: B must not keep serving the old entry.
    let (status, _) = a
        .call(Method::DELETE, "/v1/models/shared", &admin_token(), None)
        .await;
    assert_eq!(status, 202);
    a.eventually(
        "the first entry to be gone",
        Duration::from_secs(30),
        || async {
            a.call(Method::GET, "/v1/models/shared", &admin_token(), None)
                .await
                .0
                == 404
        },
    )
    .await;
    link_or_copy(&model_path(), &shared.0.join("again.gguf"));
    let entry = registered(
        &a,
        json!({"id": "shared", "source": {"path": "again.gguf"}, "sha256": sha256(&std::fs::read(model_path()).unwrap()),
               "settings": {"n_ctx": 256, "threads": 2}}),
    )
    .await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    b.eventually(
        "node B to serve the new entry",
        Duration::from_secs(30),
        || async {
            let (_, body) = b
                .call(Method::GET, "/v1/models/shared", &admin_token(), None)
                .await;
            body["n_ctx"] == 256 && (body["state"] == "unloaded" || body["state"] == "ready")
        },
    )
    .await;
    assert!(!generate(&b, &t, "shared").await.is_empty());
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

    // A registration whose download runs on A, deleted on B: A's job stops at A's next look
    // (not when the download would have ended, over a minute later), its partial file goes,
    // and the id registered again on B is B's registration, untouched by A's old job.
    let base = drip_server(Arc::new(gguf.clone())).await;
    let (status, entry) = register(
        &a,
        json!({"id": "dripping", "source": {"url": format!("{base}/m.gguf")}, "sha256": sha256(&gguf),
               "settings": {"n_ctx": 256, "threads": 2}}),
    )
    .await;
    assert_eq!(status, 202, "{entry}");
    a.eventually(
        "A's download to be under way",
        Duration::from_secs(30),
        || async {
            let (_, body) = a
                .call(Method::GET, "/v1/models/dripping", &admin_token(), None)
                .await;
            body["registration"]["bytes_done"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;
    let partials = || {
        registry_files(&shared.0)
            .into_iter()
            .filter(|f| f.starts_with("dripping"))
            .collect::<Vec<_>>()
    };
    assert!(!partials().is_empty(), "the download writes a partial file");
    let (status, body) = b
        .call(Method::DELETE, "/v1/models/dripping", &admin_token(), None)
        .await;
    assert_eq!(status, 202, "{body}");
    let deleted_at = Instant::now();
    a.eventually(
        "A's download to stop and its partial file to go",
        Duration::from_secs(15),
        || async { partials().is_empty() },
    )
    .await;
    eprintln!(
        "A stopped the download {:?} after B took the DELETE",
        deleted_at.elapsed()
    );
    b.eventually("the row to be gone", Duration::from_secs(30), || async {
        b.call(Method::GET, "/v1/models/dripping", &admin_token(), None)
            .await
            .0
            == 404
    })
    .await;
    let entry = registered(
        &b,
        json!({"id": "dripping", "source": {"path": "again.gguf"}, "sha256": sha256(&gguf),
               "settings": {"n_ctx": 256, "threads": 2}}),
    )
    .await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    assert_eq!(entry["registration"]["source_kind"], "path", "{entry}");
    a.stop().await;
    b.stop().await;
}

/// llama.cpp's next-token distribution after every token of `text`, read from the model at
/// `path` directly (not through genrt).
fn distributions(path: &Path, text: &str) -> Vec<Vec<f64>> {
    use llama_cpp_2::context::params::LlamaContextParams;
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::LlamaModel;
    let backend = genrt_actors::llama_backend().unwrap();
    let model = LlamaModel::load_from_file(&backend, path, &LlamaModelParams::default()).unwrap();
    let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    let params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(512))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(&backend, params).unwrap();
    let mut batch = LlamaBatch::new(512, 1);
    batch.add_sequence(&tokens, 0, true).unwrap();
    ctx.decode(&mut batch).unwrap();
    (0..tokens.len() as i32)
        .map(|i| {
            let logits = ctx.get_logits_ith(i);
            let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let exp: Vec<f64> = logits.iter().map(|l| (*l as f64 - max).exp()).collect();
            let sum: f64 = exp.iter().sum();
            exp.into_iter().map(|e| e / sum).collect()
        })
        .collect()
}

/// Mean over positions of KL(p ‖ q), in nats.
fn mean_kl(p: &[Vec<f64>], q: &[Vec<f64>]) -> f64 {
    assert_eq!(p.len(), q.len());
    let kl = |p: &[f64], q: &[f64]| -> f64 {
        p.iter()
            .zip(q)
            .filter(|(p, _)| **p > 0.0)
            .map(|(p, q)| p * (p / q.max(1e-30)).ln())
            .sum()
    };
    p.iter().zip(q).map(|(p, q)| kl(p, q)).sum::<f64>() / p.len() as f64
}

/// The served file of a registered model: the registry names it `<id>-<sha>…` in `registry/`.
fn served_file(store: &Path, id: &str) -> PathBuf {
    let prefix = format!("{id}-");
    std::fs::read_dir(store.join("registry"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .unwrap_or_else(|| panic!("no file of {id} in the store"))
}

/// Quantization on registration, on real weights: SmolLM2 is first turned into an F16 model
/// (its Q4_1 weights dequantized, `requantize`), which is then registered with `Q8_0` and with
/// `Q4_0`. Q8_0 is about half the F16 file and its next-token distributions stay within a
/// mean KL divergence of 0.01 nats of the F16 model's on a fixed text. The bound: llama.cpp's
/// own measurements put Q8_0 at a mean KLD of about 0.001 against F16 on 7–8B models
/// (`tools/perplexity/README.md`); small models lose more to quantization, so ten times that.
/// Q4_0 must lose clearly more than Q8_0, or the measure would not tell them apart. An
/// already quantized source is refused unless `requantize` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantizing_on_registration_keeps_the_next_token_distributions_close() {
    let s = TestServer::start_adjusted(Db::Sqlite, configure).await;
    let store = PathBuf::from(s.server().state().registry.store_root());
    link_or_copy(&model_path(), &store.join("smollm2.gguf"));
    let sha = sha256(&std::fs::read(model_path()).unwrap());
    let small = json!({"n_ctx": 512, "threads": 2});
    let q4_1 = json!({"id": "requant", "source": {"path": "smollm2.gguf"}, "sha256": sha,
                      "quantize": "Q8_0", "settings": small});
    failed_with(&registered(&s, q4_1).await, "model_already_quantized");
    let (status, body) = register(
        &s,
        json!({"id": "bad-type", "source": {"path": "smollm2.gguf"}, "sha256": sha, "quantize": "Q9_9"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("quantize")),
        "{body}"
    );

    let f16 = registered(
        &s,
        json!({"id": "smol-f16", "source": {"path": "smollm2.gguf"}, "sha256": sha,
               "quantize": "F16", "requantize": true, "settings": small}),
    )
    .await;
    assert_eq!(f16["registration"]["state"], "ready", "{f16}");
    assert_eq!(f16["registration"]["file"]["quantization"], "f16", "{f16}");
    let f16_path = served_file(&store, "smol-f16");
    let f16_sha = f16["registration"]["file_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(f16_sha, sha256(&std::fs::read(&f16_path).unwrap()));
    let relative = f16_path.strip_prefix(&store).unwrap().display().to_string();

    let mut files = HashMap::new();
    for target in ["Q8_0", "Q4_0"] {
        let id = format!("smol-{}", target.to_ascii_lowercase().replace('_', ""));
        let entry = registered(
            &s,
            json!({"id": id, "source": {"path": relative}, "sha256": f16_sha,
                   "quantize": target, "settings": small}),
        )
        .await;
        assert_eq!(entry["registration"]["state"], "ready", "{entry}");
        assert_eq!(
            entry["registration"]["file"]["quantization"],
            target.to_ascii_lowercase(),
            "{entry}"
        );
        assert_eq!(entry["registration"]["percent"], 100.0, "{entry}");
        files.insert(target, (id, entry));
    }
    let f16_bytes = f16["registration"]["file"]["file_bytes"].as_u64().unwrap() as f64;
    let q8_bytes = files["Q8_0"].1["registration"]["file"]["file_bytes"]
        .as_u64()
        .unwrap() as f64;
    let ratio = q8_bytes / f16_bytes;
    assert!((0.45..0.62).contains(&ratio), "Q8_0 is {ratio:.3} of F16");
    // The quantized model serves.
    let t = token("acme");
    assert!(!generate(&s, &t, &files["Q8_0"].0).await.is_empty());

    let text = "The history of the printing press begins in the fifteenth century, when \
                Johannes Gutenberg combined movable metal type, oil-based inks and a wooden \
                press. Within fifty years, printing shops had spread to more than two hundred \
                cities across Europe, and the price of books fell sharply.";
    let p = distributions(&f16_path, text);
    let q8 = distributions(&served_file(&store, &files["Q8_0"].0), text);
    let q4 = distributions(&served_file(&store, &files["Q4_0"].0), text);
    let (kl8, kl4) = (mean_kl(&p, &q8), mean_kl(&p, &q4));
    eprintln!(
        "mean KL over {} positions: Q8_0 {kl8:.5} nats, Q4_0 {kl4:.5} nats; Q8_0 is {ratio:.3} of the F16 file",
        p.len()
    );
    assert!(kl8 < 0.01, "Q8_0 moved the distributions by {kl8} nats");
    assert!(
        kl4 > 2.0 * kl8,
        "Q4_0 ({kl4}) should lose clearly more than Q8_0 ({kl8})"
    );
    s.stop().await;
}

/// A tenant's own models (`models:write`): named in its namespace, by URL or upload only,
/// within its `max_private_models` and `max_private_model_mb`; served to it through every
/// route, and to any other tenant indistinguishable from a model that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_model_is_invisible_to_other_tenants() {
    let s = TestServer::start_adjusted(Db::Sqlite, configure).await;
    let admin = admin_token();
    for (tenant, models, mb) in [("acme", 1, 0), ("tiny", 1, 50)] {
        let (status, body) = s
            .call(
                Method::POST,
                "/v1/admin/tenants",
                &admin,
                Some(
                    json!({"id": tenant, "max_private_models": models, "max_private_model_mb": mb}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (acme, globex, tiny) = (token("acme"), token("globex"), token("tiny"));
    let gguf = std::fs::read(model_path()).unwrap();
    let sha = sha256(&gguf);
    let as_tenant = |t: &str, body: Value| {
        let t = t.to_owned();
        let s = &s;
        async move { s.call(Method::POST, "/v1/models", &t, Some(body)).await }
    };
    let upload = |t: &str, id: &str| {
        let request = s
            .build(Method::PUT, &format!("/v1/models/{id}/file"), t)
            .body(gguf.clone());
        genrt_tests::reply(request)
    };
    // The rules of a tenant's own registration.
    let (status, body) = as_tenant(
        &acme,
        json!({"id": "fashion", "source": {"upload": true}, "sha256": sha}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("id")),
        "{body}"
    );
    let (status, body) = as_tenant(
        &acme,
        json!({"id": "acme.x", "source": {"path": "x.gguf"}, "sha256": sha}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_model_source")),
        "{body}"
    );
    let (status, body) = as_tenant(
        &globex,
        json!({"id": "globex.m", "source": {"upload": true}, "sha256": sha}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("model_quota_exceeded")),
        "{body}"
    );
    let (status, body) = as_tenant(
        &acme,
        json!({"id": "acme.x", "source": {"upload": true}, "sha256": sha, "owner": "globex"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("owner")),
        "{body}"
    );
    // Over the tenant's MiB: refused in the upload's answer.
    let (status, _) = as_tenant(
        &tiny,
        json!({"id": "tiny.big", "source": {"upload": true}, "sha256": sha}),
    )
    .await;
    assert_eq!(status, 202);
    let sent = upload(&tiny, "tiny.big").await;
    assert_eq!(
        (sent.status, sent.code()),
        (422, "model_too_large"),
        "{:?}",
        sent.body
    );

    let (status, body) = as_tenant(
        &acme,
        json!({"id": "acme.fashion", "source": {"upload": true}, "sha256": sha,
               "settings": {"n_ctx": 512, "threads": 2, "embeddings": true}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["registration"]["owner"], "acme");
    assert_eq!(upload(&acme, "acme.fashion").await.status, 202);
    let entry = settled(&s, "acme.fashion").await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    let (status, body) = as_tenant(
        &acme,
        json!({"id": "acme.second", "source": {"upload": true}, "sha256": sha}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("model_quota_exceeded")),
        "{body}"
    );

    // The owner uses it through every route.
    let text = generate(&s, &acme, "acme.fashion").await;
    assert!(!text.is_empty());
    let chat = json!({"model": "acme.fashion", "max_tokens": 2,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let (status, body) = s
        .call(
            Method::POST,
            "/openai/v1/chat/completions",
            &acme,
            Some(chat.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let embed = json!({"model": "acme.fashion", "input": "a red dress"});
    let (status, body) = s
        .call(
            Method::POST,
            "/openai/v1/embeddings",
            &acme,
            Some(embed.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, listed) = s.call(Method::GET, "/openai/v1/models", &acme, None).await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "acme.fashion"));

    // Another tenant: nothing, anywhere, as for a model never registered.
    let (status, listed) = s.call(Method::GET, "/v1/models", &globex, None).await;
    assert_eq!(status, 200);
    assert!(
        !listed.to_string().contains("acme.fashion"),
        "listed to another tenant: {listed}"
    );
    for (method, path) in [
        (Method::GET, "/v1/models/acme.fashion"),
        (Method::DELETE, "/v1/models/acme.fashion"),
    ] {
        let (status, body) = s.call(method.clone(), path, &globex, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("model_not_found")),
            "{method} {path}: {body}"
        );
    }
    let sent = upload(&globex, "acme.fashion").await;
    assert_eq!((sent.status, sent.code()), (404, "model_not_found"));
    let (status, body) = s
        .deploy(
            &globex,
            json!({"name": "steal", "model": "acme.fashion", "prompt": "{{ x }}"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("model")),
        "{body}"
    );
    let unknown = "model `acme.fashion` is not registered";
    assert!(body.to_string().contains(unknown), "{body}");
    for (path, request) in [
        ("/openai/v1/chat/completions", chat),
        ("/openai/v1/embeddings", embed),
    ] {
        let (status, body) = s.call(Method::POST, path, &globex, Some(request)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found", "{path}: {body}");
    }
    let (_, listed) = s
        .call(Method::GET, "/openai/v1/models", &globex, None)
        .await;
    assert!(!listed.to_string().contains("acme.fashion"), "{listed}");
    // Its namespace is not another tenant's to register in.
    let (status, body) = as_tenant(
        &globex,
        json!({"id": "acme.fashion", "source": {"upload": true}, "sha256": sha}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("id")),
        "{body}"
    );
    // A tenant changes only its own models; the public ones are the operator's.
    let (status, body) = s
        .call(Method::DELETE, &format!("/v1/models/{MODEL}"), &acme, None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("insufficient_scope")),
        "{body}"
    );
    // The operator sees it, with its owner, and the owner deletes it.
    let (status, body) = s
        .call(Method::GET, "/v1/models/acme.fashion", &admin, None)
        .await;
    assert_eq!(
        (status, body["registration"]["owner"].as_str()),
        (200, Some("acme")),
        "{body}"
    );
    let (status, _) = s
        .call(Method::DELETE, "/v1/models/acme.fashion", &acme, None)
        .await;
    assert_eq!(status, 202);
    s.stop().await;
}

/// A registration a previous run left while llama.cpp was reading its file is failed at the
/// next start, not read again: if that file crashed the process, reading it at every start
/// would crash every restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_interrupted_while_its_file_was_read_is_not_read_again() {
    let s = TestServer::start_adjusted(Db::Sqlite, configure).await;
    let state = s.server().state();
    for (id, left) in [
        ("crashed-validating", "validating"),
        ("crashed-quantizing", "quantizing"),
    ] {
        let (status, _) = register(
            &s,
            json!({"id": id, "source": {"upload": true}, "sha256": "0".repeat(64)}),
        )
        .await;
        assert_eq!(status, 202);
        // As a run that stopped in the middle of llama.cpp's reading leaves it.
        let moved = state
            .store
            .model_transition_any(id, None, &["awaiting_upload"], left, Default::default())
            .await
            .unwrap();
        assert!(moved);
    }
    // What a start's first registry sync does.
    state.registry.sync(true).await.unwrap();
    for id in ["crashed-validating", "crashed-quantizing"] {
        let (_, entry) = model_entry(&s, id).await;
        failed_with(&entry, "model_registration_interrupted");
    }
    s.stop().await;
}

/// Registers `big`, `ready`, on 1 GiB of holes in `s`'s store: instant to make, seconds for a
/// node's sync to hash (and then find it is not the registered sha256).
async fn register_slow_to_check(s: &TestServer) {
    let state = s.server().state();
    let big = state.registry.store_root().join("big.gguf");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let mut settings = genrt_actors::ModelConfig::new("big", &big);
    settings.n_ctx = 256;
    state
        .store
        .seed(&genrt_runtime::store::NewModel {
            id: "big".into(),
            kind: "model",
            base: None,
            owner: None,
            state: "ready",
            source_kind: "path",
            source: Some("big.gguf".into()),
            sha256: "0".repeat(64),
            path: big.display().to_string(),
            settings: Some(settings),
            quantize: None,
            requantize: false,
        })
        .await
        .unwrap();
}

/// A node that starts while the registry names a large model file listens and answers its
/// liveness probe at once, and says it is not ready (`registry: false`) until its first sync
/// has checked that file; then it is ready. Checking a large file before listening would keep
/// the process from answering for longer than an orchestrator's startup probe waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_listens_before_it_checks_registered_files() {
    let first = TestServer::start_adjusted(Db::Sqlite, configure).await;
    let store_dir = first.server().state().registry.store_root().to_owned();
    register_slow_to_check(&first).await;

    // A second node of the same database and store.
    let data = TempDir::new("genrt-second-node");
    let mut config = TestServer::config(&Db::Sqlite, &data);
    configure(&mut config);
    config.database.url = Some(first.server().state().config.database_url());
    config.registry.store_dir = store_dir;
    let started = Instant::now();
    let server = genrt_runtime::start(config, false)
        .await
        .expect("server starts");
    let base = format!("http://{}", server.addr());
    let client = genrt_tests::client();
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    let listened = started.elapsed();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(
        (&body["database"], &body["actors"], &body["registry"]),
        (&json!(true), &json!(true), &json!(false)),
        "{body}"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "listening after {listened:?}, ready after {:?}",
        started.elapsed()
    );
    server.stop().await.unwrap();
    first.stop().await;
}

/// Work for a model registered earlier that reaches a node before its first registry sync:
/// a synchronous call is told to retry (503 `model_unavailable`), not that the model is
/// unknown; queued work waits for the sync (the queue claims nothing before it) and then
/// runs, on its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_node_takes_work_on_registered_models_only_after_its_first_sync() {
    let first = TestServer::start_adjusted(Db::Sqlite, configure).await;
    let state = first.server().state();
    let store_dir = state.registry.store_root().to_owned();
    // Registered first, so read first by the sync.
    register_slow_to_check(&first).await;
    link_or_copy(&model_path(), &store_dir.join("small.gguf"));
    let entry = registered(
        &first,
        json!({"id": "small", "source": {"path": "small.gguf"},
               "sha256": sha256(&std::fs::read(model_path()).unwrap()),
               "settings": {"n_ctx": 256, "threads": 2}}),
    )
    .await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    let t = token("acme");
    generate(&first, &t, "small").await;
    // The first node claims no more queued work: only the second one can run it.
    state.queue.drain();

    let data = TempDir::new("genrt-starting-node");
    let mut config = TestServer::config(&Db::Sqlite, &data);
    configure(&mut config);
    config.database.url = Some(state.config.database_url());
    config.registry.store_dir = store_dir;
    let server = genrt_runtime::start(config, false)
        .await
        .expect("server starts");
    let base = format!("http://{}", server.addr());
    let client = genrt_tests::client();
    let invoke = |body: Value| {
        client
            .post(format!("{base}/v1/functions/on-small/invoke"))
            .bearer_auth(&t)
            .json(&body)
            .send()
    };
    let now = invoke(json!({"input": {"thing": "x"}})).await.unwrap();
    assert_eq!(now.status(), 503);
    assert!(now.headers().contains_key("retry-after"));
    let body: Value = now.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_unavailable", "{body}");
    let later = invoke(json!({"input": {"thing": "x"}, "mode": "async"}))
        .await
        .unwrap();
    assert_eq!(later.status(), 202);
    let id = later.json::<Value>().await.unwrap()["invocation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "the sync is still hashing");
    let deadline = Instant::now() + Duration::from_secs(120);
    let record = loop {
        let record: Value = client
            .get(format!("{base}/v1/invocations/{id}"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ["succeeded", "failed", "cancelled"].contains(&record["status"].as_str().unwrap_or("")) {
            break record;
        }
        assert!(Instant::now() < deadline, "never ran: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["attempts"], 1, "{record}");
    server.stop().await.unwrap();
    first.stop().await;
}

/// Runs `genrt-make-model` with `args`.
fn make_model(args: &[&str]) {
    let bin = genrt_tests::process::workspace_binary("genrt-make-model");
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "genrt-make-model {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Processes whose command line holds `needle` (a path unique to one test's store).
fn processes_with(needle: &str) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                n += 1;
            }
        }
    }
    n
}

/// llama.cpp reads registered files in a child process (`genrt model-tool`), never in the
/// server. The tool here is a script around the real one: it runs the real `genrt model-tool`
/// for every probe, except that it crashes (SIGSEGV) on a file named `crash.gguf`, and its
/// "quantization" never ends (a process named after the store), so that only a kill stops
/// it (the real quantizer is `quantizing_on_registration_keeps_the_next_token_distributions_close`'s).
/// A file that loads no model (a tokenizer without its tensors, which a vocabulary-only read
/// lets through) is refused with `model_unloadable` and leaves nothing; a crash fails only its
/// registration, the server generating throughout; deleting a model while it is quantized
/// kills the quantizer at once and removes what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_reads_registered_files_in_a_child_that_a_crash_or_a_deletion_ends() {
    let data = TempDir::new("genrt-model-tool");
    let store = data.0.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let quantizer = format!("{}/quantizer-that-never-ends", store.display());
    let script = data.0.join("model-tool");
    let body = r#"#!/bin/bash
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    quantize) echo partial > "${args[$((i + 2))]}"; exec -a QUANTIZER sleep 600 ;;
    */crash.gguf | */crash-lora.gguf) kill -SEGV $$ ;;
  esac
done
exec GENRT "$@"
"#;
    std::fs::write(
        &script,
        body.replace("QUANTIZER", &quantizer).replace(
            "GENRT",
            &genrt_tests::process::genrt_binary().display().to_string(),
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).unwrap();
    // The database in this test's folder, so that a second server reads what the first left.
    let database = format!("sqlite://{}?mode=rwc", data.0.join("genrt.db").display());
    let adjust = |c: &mut genrt_runtime::Config| {
        configure(c);
        c.registry.store_dir = store.clone();
        c.registry.tool_binary = Some(script.clone());
        c.database.url = Some(database.clone());
    };
    let s = TestServer::start_adjusted(Db::Sqlite, adjust).await;
    let store = PathBuf::from(s.server().state().registry.store_root());
    let tokenizer = model_path().display().to_string();
    let before = registry_files(&store);

    // A tokenizer without its tensors.
    let vocab = store.join("vocab-only.gguf");
    make_model(&[
        "--tokenizer",
        &tokenizer,
        "--out",
        vocab.to_str().unwrap(),
        "--vocab-only",
    ]);
    let entry = registered(
        &s,
        json!({"id": "no-weights", "source": {"path": "vocab-only.gguf"},
               "sha256": sha256(&std::fs::read(&vocab).unwrap())}),
    )
    .await;
    failed_with(&entry, "model_unloadable");
    let message = entry["registration"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tensor 'token_embd.weight' not found"),
        "{message}"
    );
    assert_eq!(
        registry_files(&store),
        before,
        "a refused registration left a file"
    );

    // A file the tool crashes on: its registration fails, the server answers.
    link_or_copy(&model_path(), &store.join("crash.gguf"));
    let sha = sha256(&std::fs::read(model_path()).unwrap());
    let entry = registered(
        &s,
        json!({"id": "crashes-the-tool", "source": {"path": "crash.gguf"}, "sha256": sha}),
    )
    .await;
    failed_with(&entry, "model_unloadable");
    let message = entry["registration"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("signal 11"), "{message}");
    assert!(!generate(&s, &token("acme"), MODEL).await.is_empty());

    // LoRA adapters go through the child too: one that loads onto the base (the real tool),
    // and the same file under a name the tool crashes on.
    for (name, file) in [("fine", "lora.gguf"), ("crashes", "crash-lora.gguf")] {
        make_model(&[
            "--lora-of",
            &tokenizer,
            "--seed",
            "3",
            "--out",
            store.join(file).to_str().unwrap(),
        ]);
        let sha = sha256(&std::fs::read(store.join(file)).unwrap());
        let (status, body) = s
            .call(
                Method::POST,
                &format!("/v1/models/{MODEL}/adapters"),
                &admin_token(),
                Some(json!({"id": name, "source": {"path": file}, "sha256": sha})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let entry = settled(&s, &format!("{MODEL}/adapters/{name}")).await;
        match name {
            "fine" => assert_eq!(entry["registration"]["state"], "ready", "{entry}"),
            _ => {
                failed_with(&entry, "model_unloadable");
                let message = entry["registration"]["error"]["message"].as_str().unwrap();
                assert!(message.contains("signal 11"), "{message}");
            }
        }
    }

    // A small F16 model (it passes the real probe), deleted while it is quantized.
    let f16 = store.join("small-f16.gguf");
    make_model(&[
        "--tokenizer",
        &tokenizer,
        "--out",
        f16.to_str().unwrap(),
        "--type",
        "f16",
        "--n-embd",
        "256",
        "--n-layer",
        "2",
        "--n-ff",
        "512",
        "--n-head",
        "4",
        "--n-head-kv",
        "2",
    ]);
    let f16_sha = sha256(&std::fs::read(&f16).unwrap());
    let quantizing = |id: &'static str| {
        let (s, store, quantizer, f16_sha) = (&s, &store, &quantizer, &f16_sha);
        async move {
            let (status, body) = register(
                s,
                json!({"id": id, "source": {"path": "small-f16.gguf"}, "sha256": f16_sha,
                       "quantize": "Q8_0", "settings": {"n_ctx": 256}}),
            )
            .await;
            assert_eq!(status, 202, "{body}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, entry) = model_entry(s, id).await;
                let state = entry["registration"]["state"].as_str().unwrap_or_default();
                assert!(state != "ready" && state != "failed", "{entry}");
                let output = registry_files(store)
                    .iter()
                    .any(|f| f.ends_with("q8_0.gguf"));
                if state == "quantizing" && processes_with(quantizer) > 0 && output {
                    break;
                }
                assert!(Instant::now() < deadline, "never quantizing: {entry}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    quantizing("small-q8").await;
    let deleted = Instant::now();
    let (status, body) = s
        .call(Method::DELETE, "/v1/models/small-q8", &admin_token(), None)
        .await;
    assert_eq!(status, 202, "{body}");
    loop {
        let (status, _) = s
            .call(Method::GET, "/v1/models/small-q8", &admin_token(), None)
            .await;
        let running = processes_with(&quantizer);
        let output = registry_files(&store)
            .iter()
            .any(|f| f.ends_with("q8_0.gguf"));
        if status == 404 && running == 0 && !output {
            break;
        }
        // Without the kill it would run for 10 minutes.
        assert!(
            deleted.elapsed() < Duration::from_secs(5),
            "the deleted quantization still runs after {:?} (row {status}, processes {running}, output left: {output})",
            deleted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "quantization killed {:?} after its deletion",
        deleted.elapsed()
    );

    // A server stopping kills its quantizations and leaves their rows: the next start fails
    // the registration as interrupted (llama.cpp was reading the file), rather than the stop
    // recording anything else or waiting for the quantizer.
    quantizing("small-q8-stopped").await;
    let stopping = Instant::now();
    s.stop().await;
    assert_eq!(
        processes_with(&quantizer),
        0,
        "the quantizer outlived the server"
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "the stop took {:?}",
        stopping.elapsed()
    );
    let s = TestServer::start_adjusted(Db::Sqlite, adjust).await;
    let (_, entry) = s
        .call(
            Method::GET,
            "/v1/models/small-q8-stopped",
            &admin_token(),
            None,
        )
        .await;
    failed_with(&entry, "model_registration_interrupted");
    s.stop().await;
}

//! LoRA adapters on a shared base, through real llama.cpp: a small F32 llama model with the
//! SmolLM2 tokenizer and random weights, adapters written for it, and the same adapters
//! merged into its weights offline (W + scale·alpha/rank·B·A), all by `genrt-make-model`.
//!
//! - An adapter applied at run time gives exactly the greedy output of the merged model, on
//!   functions, on routes (`base:adapter`) and on the OpenAI routes; two adapters at once
//!   match both merged; scale 0 is the base; and the adapter changes the output (so that the
//!   comparison can fail).
//! - 16 concurrent streams over 4 adapters each produce what they produce alone: the engine
//!   never mixes adapter sets in a decode step, and never reuses a prefix computed under
//!   another set.
//! - Registration by path, by URL and by upload, on SQLite and Postgres; a wrong sha256, a
//!   truncated file, a text file, a model given as an adapter, an adapter for another shape
//!   and one for another architecture are each refused with their own code and leave nothing
//!   in the store.
//! - Deleting an adapter refuses it to new work; a tenant's own adapter is invisible to
//!   others and counted against its quota; an adapter registered on one node is used on
//!   another node of the same Postgres.
//! - The configuration's `[[adapters]]` serve from the start; a bad one fails alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_tests::{admin_token, model_path, token, Db, PgCluster, TempDir, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

genrt_tests::on_both_databases!(adapters_at_run_time_match_their_merged_weights);

const SYNC_MS: u64 = 300;
/// The base model's id in these tests.
const BASE: &str = "tiny";
/// The four adapters the concurrency check spreads its streams over.
const ADAPTERS: [&str; 4] = ["fashion", "sports", "tone", "tech"];

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_of(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap())
}

/// Runs `genrt-make-model` with `args`.
fn make(args: &[&str]) {
    let bin = genrt_tests::process::workspace_binary("genrt-make-model");
    let out = Command::new(&bin).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "genrt-make-model {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The model files of these tests, in `dir`: the F32 base, one of another shape, the
/// adapters (every weight kind, rank 8, alpha 16), an adapter of the other shape, and the
/// merged references.
fn write_files(dir: &Path) {
    let tokenizer = model_path();
    let tokenizer = tokenizer.to_str().unwrap();
    let p = |name: &str| dir.join(name).display().to_string();
    let shape = |embd: &str, out: &str| {
        make(&[
            "--tokenizer",
            tokenizer,
            "--out",
            &p(out),
            "--type",
            "f32",
            "--n-embd",
            embd,
            "--n-layer",
            "3",
            "--n-ff",
            "256",
            "--n-head",
            "4",
            "--n-head-kv",
            "2",
            "--seed",
            "7",
        ])
    };
    shape("128", "base.gguf");
    shape("64", "other-shape.gguf");
    let targets = "attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down";
    for (i, name) in ADAPTERS.iter().enumerate() {
        make(&[
            "--lora-of",
            &p("base.gguf"),
            "--out",
            &p(&format!("{name}.gguf")),
            "--targets",
            targets,
            "--seed",
            &(11 + i).to_string(),
            "--magnitude",
            "0.01",
        ]);
    }
    make(&[
        "--lora-of",
        &p("other-shape.gguf"),
        "--out",
        &p("wrong-shape.gguf"),
    ]);
    make(&[
        "--merge-into",
        &p("base.gguf"),
        "--adapter",
        &p("fashion.gguf"),
        "--out",
        &p("merged.gguf"),
    ]);
    make(&[
        "--merge-into",
        &p("base.gguf"),
        "--adapter",
        &p("fashion.gguf"),
        "--adapter",
        &format!("{}:0.5", p("tone.gguf")),
        "--out",
        &p("merged-two.gguf"),
    ]);
}

/// `fashion.gguf` claiming another architecture: the same bytes with `general.architecture`
/// set to `gemma` (as long as `llama`, so that nothing else moves).
fn other_architecture(adapter: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(adapter).unwrap();
    let key = b"general.architecture";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the key is in the header");
    // key, then the value's type (u32) and length (u64), then the string.
    let value = at + key.len() + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"llama");
    bytes[value..value + 5].copy_from_slice(b"gemma");
    bytes
}

fn configure(c: &mut genrt_runtime::Config) {
    c.registry.allow_http = true;
    c.registry.sync_interval_ms = SYNC_MS;
    c.webhooks.allow_private = vec!["127.0.0.1".into()];
    c.tenancy.rate_limit_rps = 0.0;
}

/// Waits for `path` (a model or an adapter) to be `ready` or `failed`.
async fn settled(s: &TestServer, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = s.call(Method::GET, path, &admin_token(), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let state = body["registration"]["state"].as_str().unwrap_or_default();
        if state == "ready" || state == "failed" {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} did not settle: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register_model(s: &TestServer, id: &str, file: &str, store: &Path) {
    let body = json!({"id": id, "source": {"path": file}, "sha256": sha256_of(&store.join(file)),
                      "settings": {"n_ctx": 512, "slots": 16, "threads": 2}});
    let (status, got) = s
        .call(Method::POST, "/v1/models", &admin_token(), Some(body))
        .await;
    assert_eq!(status, 202, "{got}");
    let entry = settled(s, &format!("/v1/models/{id}")).await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
}

fn adapter_path(name: &str) -> String {
    format!("/v1/models/{BASE}/adapters/{name}")
}

/// Registers an adapter of the base and waits for it to settle: its entry.
async fn register_adapter(s: &TestServer, body: Value) -> Value {
    let name = body["id"].as_str().unwrap().to_owned();
    let (status, got) = s
        .call(
            Method::POST,
            &format!("/v1/models/{BASE}/adapters"),
            &admin_token(),
            Some(body),
        )
        .await;
    assert_eq!(status, 202, "{got}");
    assert_eq!(got["reference"], format!("{BASE}:{name}"), "{got}");
    settled(s, &adapter_path(&name)).await
}

fn failed_with(entry: &Value, code: &str) {
    assert_eq!(entry["registration"]["state"], "failed", "{entry}");
    assert_eq!(entry["registration"]["error"]["code"], code, "{entry}");
}

/// A greedy function of 16 tokens that always runs to its length, uncached, on `target`
/// (`{"model": ...}` or `{"route": ...}`) with `extra` keys.
fn function(name: &str, target: Value, extra: Value) -> Value {
    let mut f = json!({"name": name, "prompt": "Describe {{ thing }} in a few words.",
                       "params": {"max_tokens": 16, "temperature": 0, "ignore_eos": true},
                       "cache": {"enabled": false}});
    for (k, v) in target
        .as_object()
        .unwrap()
        .iter()
        .chain(extra.as_object().unwrap())
    {
        f[k] = v.clone();
    }
    f
}

async fn deploy(s: &TestServer, t: &str, definition: Value) {
    let (status, body) = s.deploy(t, definition).await;
    assert!(status == 201 || status == 200, "{body}");
}

/// The function's text for `thing`, and the model the answer says ran.
async fn run(s: &TestServer, t: &str, name: &str, thing: &str) -> (String, String) {
    let (status, body) = s.invoke(t, name, json!({"input": {"thing": thing}})).await;
    assert_eq!(status, 200, "{name}: {body}");
    (
        body["output"]["text"].as_str().unwrap().to_owned(),
        body["model"].as_str().unwrap().to_owned(),
    )
}

/// A chat completion's text from the OpenAI route with `model`.
async fn chat(s: &TestServer, t: &str, model: &str) -> String {
    let body = json!({"model": model, "max_tokens": 16, "temperature": 0,
                      "messages": [{"role": "user", "content": "Describe a scarf in a few words."}]});
    let (status, got) = s
        .call(Method::POST, "/openai/v1/chat/completions", t, Some(body))
        .await;
    assert_eq!(status, 200, "{model}: {got}");
    got["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Files in the registry's part of the store.
fn registry_files(store: &Path) -> Vec<String> {
    let mut out: Vec<String> = [store.join("registry"), store.join("registry/.partial")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

async fn adapters_at_run_time_match_their_merged_weights(db: Db) {
    let s = TestServer::start_adjusted(db, configure).await;
    let store = PathBuf::from(s.server().state().registry.store_root());
    write_files(&store);
    register_model(&s, BASE, "base.gguf", &store).await;
    register_model(&s, "merged", "merged.gguf", &store).await;
    register_model(&s, "merged-two", "merged-two.gguf", &store).await;

    // Sources: path, upload, URL.
    let fashion = register_adapter(
        &s,
        json!({"id": "fashion", "source": {"path": "fashion.gguf"},
               "sha256": sha256_of(&store.join("fashion.gguf"))}),
    )
    .await;
    assert_eq!(fashion["registration"]["state"], "ready", "{fashion}");
    assert_eq!(fashion["file"]["rank"], 8, "{fashion}");
    assert_eq!(fashion["file"]["alpha"], 16.0, "{fashion}");
    assert_eq!(
        fashion["file"]["weights"], 21,
        "7 kinds in 3 layers: {fashion}"
    );
    assert_eq!(fashion["file"]["architecture"], "llama");
    let sports = std::fs::read(store.join("sports.gguf")).unwrap();
    let (status, got) = s
        .call(
            Method::POST,
            &format!("/v1/models/{BASE}/adapters"),
            &admin_token(),
            Some(json!({"id": "sports", "source": {"upload": true}, "sha256": sha256(&sports)})),
        )
        .await;
    assert_eq!(status, 202, "{got}");
    assert_eq!(got["registration"]["state"], "awaiting_upload", "{got}");
    let sent = genrt_tests::reply(
        s.build(
            Method::PUT,
            &format!("{}/file", adapter_path("sports")),
            &admin_token(),
        )
        .body(sports),
    )
    .await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    let entry = settled(&s, &adapter_path("sports")).await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    let tone = Arc::new(std::fs::read(store.join("tone.gguf")).unwrap());
    let text = Arc::new(b"not a model at all".to_vec());
    let truncated = Arc::new(tone[..tone.len() - 4096].to_vec());
    let files = HashMap::from([
        ("tone.gguf", (Arc::clone(&tone), None)),
        ("text.gguf", (Arc::clone(&text), None)),
        ("truncated.gguf", (Arc::clone(&truncated), None)),
    ]);
    let server = genrt_tests::file_server(files).await;
    let entry = register_adapter(
        &s,
        json!({"id": "tone", "source": {"url": format!("{server}/tone.gguf")},
               "sha256": sha256(&tone)}),
    )
    .await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    let entry = register_adapter(
        &s,
        json!({"id": "tech", "source": {"path": "tech.gguf"},
               "sha256": sha256_of(&store.join("tech.gguf"))}),
    )
    .await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");

    // Refusals, each with its code, leaving nothing in the store.
    let before = registry_files(&store);
    std::fs::write(
        store.join("gemma.gguf"),
        other_architecture(&store.join("fashion.gguf")),
    )
    .unwrap();
    let refused = [
        (
            json!({"id": "bad-sha", "source": {"path": "fashion.gguf"}, "sha256": "0".repeat(64)}),
            "model_sha256_mismatch",
        ),
        (
            json!({"id": "text", "source": {"url": format!("{server}/text.gguf")},
                   "sha256": sha256(&text)}),
            "model_not_gguf",
        ),
        (
            json!({"id": "cut", "source": {"url": format!("{server}/truncated.gguf")},
                   "sha256": sha256(&truncated)}),
            "model_truncated",
        ),
        (
            json!({"id": "a-model", "source": {"path": "merged.gguf"},
                   "sha256": sha256_of(&store.join("merged.gguf"))}),
            "not_an_adapter",
        ),
        (
            json!({"id": "wrong-shape", "source": {"path": "wrong-shape.gguf"},
                   "sha256": sha256_of(&store.join("wrong-shape.gguf"))}),
            "adapter_mismatch",
        ),
        (
            json!({"id": "gemma", "source": {"path": "gemma.gguf"},
                   "sha256": sha256_of(&store.join("gemma.gguf"))}),
            "adapter_mismatch",
        ),
    ];
    for (body, code) in refused {
        let entry = register_adapter(&s, body).await;
        failed_with(&entry, code);
    }
    assert_eq!(
        registry_files(&store),
        before,
        "a refused adapter left a file"
    );
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/models/no-such-model/adapters",
            &admin_token(),
            Some(json!({"id": "x", "source": {"path": "fashion.gguf"}, "sha256": "0".repeat(64)})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );

    // The adapter at run time is the merged model.
    let t = token("acme");
    let on = |model: &str| json!({"model": model});
    deploy(&s, &t, function("base", on(BASE), json!({}))).await;
    deploy(
        &s,
        &t,
        function(
            "fashion",
            on(BASE),
            json!({"adapters": [{"id": "fashion"}]}),
        ),
    )
    .await;
    deploy(&s, &t, function("merged", on("merged"), json!({}))).await;
    deploy(
        &s,
        &t,
        function(
            "zero",
            on(BASE),
            json!({"adapters": [{"id": "fashion", "scale": 0}]}),
        ),
    )
    .await;
    deploy(
        &s,
        &t,
        function(
            "two",
            on(BASE),
            json!({"adapters": [{"id": "tone", "scale": 0.5}, {"id": "fashion"}]}),
        ),
    )
    .await;
    deploy(&s, &t, function("merged-two", on("merged-two"), json!({}))).await;
    let route = json!({"route": {"field": "category", "cases": {"fashion": format!("{BASE}:fashion")},
                                 "default": BASE}});
    let mut routed = function("routed", route, json!({}));
    routed["prompt"] = json!("Describe {{ thing }} in a few words.");
    deploy(&s, &t, routed).await;
    for thing in ["a wool scarf", "a leather bag"] {
        let (base, _) = run(&s, &t, "base", thing).await;
        let (adapted, model) = run(&s, &t, "fashion", thing).await;
        let (merged, _) = run(&s, &t, "merged", thing).await;
        assert_eq!(model, format!("{BASE}:fashion"));
        assert_eq!(
            adapted, merged,
            "the adapter at run time is not the merged weights"
        );
        assert_ne!(adapted, base, "the adapter changed nothing");
        let (zero, model) = run(&s, &t, "zero", thing).await;
        assert_eq!(zero, base, "scale 0 is not the base");
        assert_eq!(model, BASE);
        let (two, model) = run(&s, &t, "two", thing).await;
        let (merged_two, _) = run(&s, &t, "merged-two", thing).await;
        assert_eq!(two, merged_two, "two adapters at once are not both merged");
        assert_eq!(model, format!("{BASE}:fashion+tone*0.5"));
        for (category, expected) in [("fashion", &adapted), ("garden", &base)] {
            let (status, body) = s
                .invoke(
                    &t,
                    "routed",
                    json!({"input": {"thing": thing, "category": category}}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(&body["output"]["text"], expected.as_str(), "{category}");
        }
    }
    // The OpenAI routes name an adapter `base:adapter`, and list it.
    assert_eq!(
        chat(&s, &t, &format!("{BASE}:fashion")).await,
        chat(&s, &t, "merged").await
    );
    let (_, models) = s.call(Method::GET, "/openai/v1/models", &t, None).await;
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == format!("{BASE}:fashion")),
        "{models}"
    );

    // 16 concurrent streams over 4 adapters: each produces what it produces alone.
    for name in ADAPTERS {
        deploy(
            &s,
            &t,
            function(
                &format!("with-{name}"),
                on(BASE),
                json!({"adapters": [{"id": name}]}),
            ),
        )
        .await;
    }
    let things = ["a hat", "a coat", "a pair of boots", "a summer dress"];
    let cases: Vec<(String, &str)> = ADAPTERS
        .iter()
        .flat_map(|a| things.iter().map(move |t| (format!("with-{a}"), *t)))
        .collect();
    let mut alone = Vec::new();
    for (name, thing) in &cases {
        alone.push(run(&s, &t, name, thing).await.0);
    }
    let together =
        futures_util::future::join_all(cases.iter().map(|(name, thing)| run(&s, &t, name, thing)))
            .await;
    for ((case, alone), (together, _)) in cases.iter().zip(&alone).zip(&together) {
        assert_eq!(
            together, alone,
            "{case:?} differs when run beside the others"
        );
    }
    // Each input gets another text under each adapter: the sets really differ, so mixing
    // them up would show.
    for (i, thing) in things.iter().enumerate() {
        let per_adapter: std::collections::BTreeSet<&String> = (0..ADAPTERS.len())
            .map(|a| &alone[a * things.len() + i])
            .collect();
        assert_eq!(per_adapter.len(), ADAPTERS.len(), "{thing}: {alone:?}");
    }
    let (_, base_model) = s
        .call(
            Method::GET,
            &format!("/v1/models/{BASE}"),
            &admin_token(),
            None,
        )
        .await;
    assert!(
        base_model["adapters_loaded"].as_u64().unwrap() >= 4,
        "{base_model}"
    );

    // Deleting an adapter refuses it to new work, and to new deployments.
    let (status, _) = s
        .call(
            Method::DELETE,
            &adapter_path("sports"),
            &admin_token(),
            None,
        )
        .await;
    assert_eq!(status, 202);
    s.eventually("sports to be gone", Duration::from_secs(30), || async {
        s.call(Method::GET, &adapter_path("sports"), &admin_token(), None)
            .await
            .0
            == 404
    })
    .await;
    let (status, body) = s
        .invoke(&t, "with-sports", json!({"input": {"thing": "a hat"}}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_adapter")),
        "{body}"
    );
    let (status, body) = s
        .deploy(
            &t,
            function("late", on(BASE), json!({"adapters": [{"id": "sports"}]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "adapters[0].id", "{body}");
    assert!(!registry_files(&store)
        .iter()
        .any(|f| f.starts_with("tiny:sports")));
    // Deleting the model deletes its adapters.
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/v1/models/{BASE}"),
            &admin_token(),
            None,
        )
        .await;
    assert_eq!(status, 202);
    s.eventually(
        "the adapters to go with their model",
        Duration::from_secs(30),
        || async {
            let rows = s.server().state().store.model_rows().await.unwrap();
            !rows.iter().any(|r| r.base.as_deref() == Some(BASE))
        },
    )
    .await;
    assert!(
        !registry_files(&store)
            .iter()
            .any(|f| f.starts_with("tiny:")),
        "{:?}",
        registry_files(&store)
    );
    s.stop().await;
}

/// A tenant's own adapter: registered by upload under its name, used by its functions, and
/// nowhere to be found for another tenant (not listed, not deployable, not an OpenAI model);
/// the tenant's `max_adapters` bounds how many it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_adapter_is_its_own() {
    let s = TestServer::start_adjusted(Db::Sqlite, configure).await;
    let store = PathBuf::from(s.server().state().registry.store_root());
    write_files(&store);
    register_model(&s, BASE, "base.gguf", &store).await;
    let acme = genrt_tests::token_scoped(
        "acme",
        &["functions:write", "functions:invoke", "models:write"],
    );
    let globex = genrt_tests::token_scoped(
        "globex",
        &["functions:write", "functions:invoke", "models:write"],
    );
    let bytes = std::fs::read(store.join("fashion.gguf")).unwrap();
    let register = |t: String, id: &'static str, source: Value| {
        let s = &s;
        let body = json!({"id": id, "source": source, "sha256": sha256(&bytes)});
        async move {
            s.call(
                Method::POST,
                &format!("/v1/models/{BASE}/adapters"),
                &t,
                Some(body),
            )
            .await
        }
    };
    let (status, body) = register(acme.clone(), "style", json!({"upload": true})).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("id")),
        "{body}"
    );
    let (status, body) =
        register(acme.clone(), "acme.style", json!({"path": "fashion.gguf"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_model_source")),
        "{body}"
    );
    let (status, body) = register(acme.clone(), "acme.style", json!({"upload": true})).await;
    assert_eq!(status, 202, "{body}");
    let sent = genrt_tests::reply(
        s.build(
            Method::PUT,
            &format!("{}/file", adapter_path("acme.style")),
            &acme,
        )
        .body(bytes.clone()),
    )
    .await;
    assert_eq!(sent.status, 202, "{:?}", sent.body);
    let entry = settled(&s, &adapter_path("acme.style")).await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    assert_eq!(entry["registration"]["owner"], "acme");

    deploy(
        &s,
        &acme,
        function(
            "styled",
            json!({"model": BASE}),
            json!({"adapters": [{"id": "acme.style"}]}),
        ),
    )
    .await;
    let (text, model) = run(&s, &acme, "styled", "a scarf").await;
    assert!(!text.is_empty());
    assert_eq!(model, format!("{BASE}:acme.style"));
    assert!(!chat(&s, &acme, &format!("{BASE}:acme.style"))
        .await
        .is_empty());

    // Another tenant: not listed, not readable, not deployable, not an OpenAI model.
    let (status, list) = s
        .call(
            Method::GET,
            &format!("/v1/models/{BASE}/adapters"),
            &globex,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(!list.to_string().contains("acme"), "{list}");
    let (status, body) = s
        .call(Method::GET, &adapter_path("acme.style"), &globex, None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("adapter_not_found"))
    );
    let (status, body) = s
        .deploy(
            &globex,
            function(
                "stolen",
                json!({"model": BASE}),
                json!({"adapters": [{"id": "acme.style"}]}),
            ),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("adapters[0].id")),
        "{body}"
    );
    let (status, body) = s
        .deploy(
            &globex,
            function(
                "stolen",
                json!({"model": format!("{BASE}:acme.style")}),
                json!({}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let body = json!({"model": format!("{BASE}:acme.style"), "max_tokens": 4,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (status, got) = s
        .call(
            Method::POST,
            "/openai/v1/chat/completions",
            &globex,
            Some(body),
        )
        .await;
    assert_eq!(status, 404, "{got}");
    let (_, models) = s
        .call(Method::GET, "/openai/v1/models", &globex, None)
        .await;
    assert!(!models.to_string().contains("acme"), "{models}");
    let (status, _) = s
        .call(Method::DELETE, &adapter_path("acme.style"), &globex, None)
        .await;
    assert_eq!(status, 404);

    // The quota: one adapter for acme now, which it holds.
    let (status, body) = s
        .call(
            Method::PATCH,
            "/v1/admin/tenants/acme",
            &admin_token(),
            Some(json!({"max_adapters": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = register(acme.clone(), "acme.more", json!({"upload": true})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("adapter_quota_exceeded")),
        "{body}"
    );
    s.stop().await;
}

/// An adapter registered on node A is used by node B of the same Postgres within the
/// registry's sync interval (plus the file's hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_registered_on_one_node_is_used_on_another() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("genrt");
    let shared = TempDir::new("genrt-shared-adapters");
    const B_SYNC_MS: u64 = 1000;
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
    let store = PathBuf::from(a.server().state().registry.store_root());
    write_files(&store);
    register_model(&a, BASE, "base.gguf", &store).await;
    let t = token("acme");
    let entry = register_adapter(
        &a,
        json!({"id": "fashion", "source": {"path": "fashion.gguf"},
               "sha256": sha256_of(&store.join("fashion.gguf"))}),
    )
    .await;
    assert_eq!(entry["registration"]["state"], "ready", "{entry}");
    let ready_at = Instant::now();
    // B serves it once its sync has seen the base and the adapter (and checked their files):
    // the documented bound. Running it there then needs B to load the base (a cold start,
    // timed by the benchmarks, not here).
    b.eventually(
        "node B to serve the adapter",
        Duration::from_secs(30),
        || async {
            let (_, body) = b
                .call(Method::GET, &adapter_path("fashion"), &admin_token(), None)
                .await;
            body["served"] == true
        },
    )
    .await;
    let took = ready_at.elapsed();
    eprintln!("node B served the adapter {took:?} after node A had it ready (sync {B_SYNC_MS} ms)");
    assert!(
        took < Duration::from_millis(B_SYNC_MS) + Duration::from_secs(5),
        "{took:?}"
    );
    deploy(
        &a,
        &t,
        function(
            "fashion",
            json!({"model": BASE}),
            json!({"adapters": [{"id": "fashion"}]}),
        ),
    )
    .await;
    deploy(
        &a,
        &t,
        function(
            "merged-ref",
            json!({"model": BASE}),
            json!({"adapters": [{"id": "fashion"}]}),
        ),
    )
    .await;
    let on_a = run(&a, &t, "fashion", "a scarf").await.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_b = loop {
        let (status, body) = b
            .invoke(&t, "fashion", json!({"input": {"thing": "a scarf"}}))
            .await;
        if status == 200 {
            break body["output"]["text"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "node B never ran the adapter: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        on_a, on_b,
        "the same adapter on the same base answers the same"
    );
    a.stop().await;
    b.stop().await;
}

/// `[[adapters]]` of the configuration: validated against their model before the server
/// listens, so a function naming one deploys at once; one that fails validation is `failed`
/// with its code, and the others still serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_adapters_serve_from_the_start_and_a_bad_one_fails_alone() {
    let dir = TempDir::new("genrt-configured-adapters");
    let notes = dir.0.join("notes.gguf");
    std::fs::write(&notes, "not a GGUF at all\n").unwrap();
    let seed = |id: &str, path: PathBuf| genrt_runtime::config::AdapterSeed {
        model: genrt_tests::MODEL.into(),
        id: id.into(),
        path,
    };
    let s = TestServer::start_adjusted(Db::Sqlite, |c| {
        c.adapters = vec![
            seed("fashion", genrt_tests::fashion_adapter_path()),
            seed("notes", notes.clone()),
            seed("gone", dir.0.join("gone.gguf")),
        ];
    })
    .await;
    let path = |name: &str| format!("/v1/models/{}/adapters/{name}", genrt_tests::MODEL);
    // Settled before the first request: nothing to wait for.
    let (_, fashion) = s
        .call(Method::GET, &path("fashion"), &admin_token(), None)
        .await;
    assert_eq!(fashion["registration"]["state"], "ready", "{fashion}");
    assert_eq!(
        fashion["registration"]["source_kind"], "config",
        "{fashion}"
    );
    assert_eq!(
        fashion["registration"]["sha256"],
        sha256_of(&genrt_tests::fashion_adapter_path()),
        "{fashion}"
    );
    // Seeding again what the row already says (a restart, another node with the same file)
    // leaves it as it is: never `registering` again, so other nodes keep serving it.
    s.server()
        .state()
        .registry
        .seed_adapters(&[seed("fashion", genrt_tests::fashion_adapter_path())])
        .await
        .unwrap();
    let (_, again) = s
        .call(Method::GET, &path("fashion"), &admin_token(), None)
        .await;
    assert_eq!(again["registration"], fashion["registration"]);
    let (_, notes_entry) = s
        .call(Method::GET, &path("notes"), &admin_token(), None)
        .await;
    failed_with(&notes_entry, "model_not_gguf");
    let (_, gone) = s
        .call(Method::GET, &path("gone"), &admin_token(), None)
        .await;
    failed_with(&gone, "invalid_model_source");
    // The operator's files stay where they are, failed or not.
    assert!(notes.is_file());
    let t = token("acme");
    let reference = format!("{}:fashion", genrt_tests::MODEL);
    deploy(
        &s,
        &t,
        json!({"name": "tagline", "model": reference, "prompt": "A tagline for {{ thing }}.",
               "params": {"max_tokens": 8, "temperature": 0}}),
    )
    .await;
    let (status, out) = s
        .invoke(&t, "tagline", json!({"input": {"thing": "a linen shirt"}}))
        .await;
    assert_eq!(
        (status, out["model"].as_str()),
        (200, Some(reference.as_str())),
        "{out}"
    );
    let bad = json!({"name": "bad", "model": format!("{}:notes", genrt_tests::MODEL),
                     "prompt": "x"});
    let (status, body) = s.deploy(&t, bad).await;
    assert_eq!(status, 422, "{body}");
    s.stop().await;
}

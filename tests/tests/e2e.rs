//! The [core] acceptance suite, run once on SQLite and once on a throwaway Postgres cluster:
//! real HTTP, the real SmolLM2 model through llama.cpp, a real database.

use std::time::Duration;

use genrt_tests::{token, token_with, Db, PgCluster, TestServer, MODEL, SECOND_MODEL, SECRET};
use reqwest::Method;
use serde_json::{json, Value};

macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let server = genrt_tests::TestServer::with_second_model(super::Db::Sqlite).await;
                    super::$scenario(&server).await;
                    server.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let cluster = super::PgCluster::start();
                    let url = cluster.create_database("genrt");
                    let server = genrt_tests::TestServer::with_second_model(super::Db::Postgres(url)).await;
                    super::$scenario(&server).await;
                    server.stop().await;
                    drop(cluster);
                }
            )*
        }
    };
}

on_both_databases!(
    deploy_invoke_and_version,
    routing_picks_the_model_from_the_input,
    deterministic_repeats_come_from_the_cache,
    idle_actors_and_models_scale_to_zero_and_come_back,
    an_engine_panic_is_survived,
    bad_input_is_refused_with_its_code_and_leaves_nothing,
    openapi_and_probes,
    the_example_functions_deploy_and_run,
);

fn greeting(prompt: &str) -> Value {
    json!({
        "name": "greeting",
        "model": MODEL,
        "system": "You are a concise assistant.",
        "prompt": prompt,
        "params": {"max_tokens": 16, "temperature": 0}
    })
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

async fn deploy_invoke_and_version(s: &TestServer) {
    let t = token("acme");
    let (status, v1) = s.deploy(&t, greeting("Say hello to {{ name }}.")).await;
    assert_eq!(status, 201, "{v1}");
    assert_eq!(v1["version"], 1);
    let (status, same) = s.deploy(&t, greeting("Say hello to {{ name }}.")).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["version"], 1);
    assert_eq!(same["created"], false);

    let (status, out) = s
        .invoke(&t, "greeting", json!({"input": {"name": "Ada"}}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["version"], 1);
    assert_eq!(out["model"], MODEL);
    let text = out["output"]["text"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "the model produced no text");
    assert!(out["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(out["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(
        out["timings"]["total_ms"].as_f64().unwrap() >= out["timings"]["ttft_ms"].as_f64().unwrap()
    );

    let id = out["invocation_id"].as_str().unwrap();
    let (status, record) = s
        .call(Method::GET, &format!("/v1/invocations/{id}"), &t, None)
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["output"]["text"], text);
    assert_eq!(record["input"], json!({"name": "Ada"}));
    let (status, _) = s
        .call(
            Method::GET,
            &format!("/v1/invocations/{id}"),
            &token("globex"),
            None,
        )
        .await;
    assert_eq!(status, 404, "another tenant's invocation is invisible");

    let (status, v2) = s
        .deploy(&t, greeting("Greet {{ name }} warmly in one sentence."))
        .await;
    assert_eq!(status, 201, "{v2}");
    assert_eq!(v2["version"], 2);
    let (status, out) = s
        .invoke(&t, "greeting", json!({"input": {"name": "Ada"}}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["version"], 2, "invocations use the latest version");

    let (_, versions) = s
        .call(Method::GET, "/v1/functions/greeting/versions", &t, None)
        .await;
    let versions = versions["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(
        versions[0]["definition"]["prompt"],
        "Say hello to {{ name }}."
    );
    let (_, detail) = s
        .call(Method::GET, "/v1/functions/greeting", &t, None)
        .await;
    assert_eq!(detail["latest_version"], 2);
    assert_eq!(detail["active_versions"], json!([1, 2]));
    let (_, list) = s.call(Method::GET, "/v1/functions", &t, None).await;
    assert_eq!(list["functions"][0]["name"], "greeting");
    let (_, other) = s
        .call(Method::GET, "/v1/functions", &token("globex"), None)
        .await;
    assert_eq!(
        other["functions"],
        json!([]),
        "tenants see only their own functions"
    );

    let (status, _) = s
        .call(Method::DELETE, "/v1/functions/greeting", &t, None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = s
        .invoke(&t, "greeting", json!({"input": {"name": "Ada"}}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "function_not_found");
}

/// Routing between genuinely different models: Gemma 3 270M (its own architecture and
/// tokenizer) for garden products, the fashion LoRA adapter on SmolLM2 for fashion, SmolLM2
/// itself otherwise.
async fn routing_picks_the_model_from_the_input(s: &TestServer) {
    const FASHION: &str = "smollm2-135m:fashion";
    let t = token("acme");
    let (status, body) = s
        .deploy(
            &t,
            json!({
                "name": "product-description",
                "route": {"field": "category", "cases": {"fashion": FASHION, "garden": SECOND_MODEL}, "default": MODEL},
                "prompt": "Describe {{ product }} in one sentence.",
                "params": {"max_tokens": 12, "temperature": 0}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut answers = Vec::new();
    for category in ["fashion", "garden", "kitchen"] {
        let (status, out) = s
            .invoke(
                &t,
                "product-description",
                json!({"input": {"category": category, "product": "a linen apron"}}),
            )
            .await;
        assert_eq!(status, 200, "{category}: {out}");
        answers.push(out);
    }
    let [fashion, garden, kitchen] = &answers[..] else {
        unreachable!()
    };
    assert_eq!(fashion["model"], FASHION, "{fashion}");
    assert_eq!(garden["model"], SECOND_MODEL, "{garden}");
    assert_eq!(kitchen["model"], MODEL, "{kitchen}");
    // One prompt, three models: Gemma's tokenizer cuts it differently from SmolLM2's (which
    // the adapter shares), and each model continues it its own way.
    let prompt_tokens = |out: &Value| out["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(prompt_tokens(fashion), prompt_tokens(kitchen));
    assert_ne!(
        prompt_tokens(garden),
        prompt_tokens(kitchen),
        "{garden} {kitchen}"
    );
    let text = |out: &Value| out["output"]["text"].as_str().unwrap().to_owned();
    assert_ne!(text(garden), text(kitchen));
    assert_ne!(text(fashion), text(kitchen), "the adapter changed nothing");
    assert_eq!(s.model(&t, SECOND_MODEL).await["loads"], 1);
}

async fn deterministic_repeats_come_from_the_cache(s: &TestServer) {
    let t = token("acme");
    s.deploy(&t, greeting("Name one colour of {{ thing }}."))
        .await;
    let body = json!({"input": {"thing": "the sky"}});
    let (_, first) = s.invoke(&t, "greeting", body.clone()).await;
    let (_, second) = s.invoke(&t, "greeting", body.clone()).await;
    assert_eq!(first["cache_hit"], false, "{first}");
    assert_eq!(second["cache_hit"], true, "{second}");
    assert_eq!(first["output"]["text"], second["output"]["text"]);
    assert_ne!(first["invocation_id"], second["invocation_id"]);
    // Another tenant with the same function and input gets no cached answer.
    let g = token("globex");
    s.deploy(&g, greeting("Name one colour of {{ thing }}."))
        .await;
    let (_, theirs) = s.invoke(&g, "greeting", body).await;
    assert_eq!(theirs["cache_hit"], false, "cache entries are per tenant");
    assert_eq!(
        theirs["output"]["text"], first["output"]["text"],
        "greedy decoding is deterministic"
    );
}

async fn idle_actors_and_models_scale_to_zero_and_come_back(s: &TestServer) {
    let t = token("acme");
    let mut def = greeting("Write a word about {{ topic }}.");
    def["idle_timeout_s"] = json!(1);
    // Sampled, so that the second call cannot be answered from the cache.
    def["params"] = json!({"max_tokens": 8, "temperature": 0.7});
    s.deploy(&t, def).await;
    let (status, out) = s
        .invoke(&t, "greeting", json!({"input": {"topic": "rain"}}))
        .await;
    assert_eq!(status, 200, "{out}");
    let (_, detail) = s
        .call(Method::GET, "/v1/functions/greeting", &t, None)
        .await;
    assert_eq!(detail["active_versions"], json!([1]));
    assert_eq!(s.model(&t, MODEL).await["state"], "ready");

    s.eventually(
        "the function actor to stop",
        Duration::from_secs(15),
        || async {
            let (_, d) = s
                .call(Method::GET, "/v1/functions/greeting", &t, None)
                .await;
            d["active_versions"] == json!([])
        },
    )
    .await;
    s.eventually(
        "the model's weights to be freed",
        Duration::from_secs(15),
        || async {
            let m = s.model(&t, MODEL).await;
            m["state"] == "unloaded" && m["replicas"] == 0
        },
    )
    .await;

    let (status, again) = s
        .invoke(&t, "greeting", json!({"input": {"topic": "snow"}}))
        .await;
    assert_eq!(status, 200, "{again}");
    assert!(
        again["timings"]["load_ms"].as_f64().unwrap() > 0.0,
        "a cold start reports its load: {again}"
    );
    let model = s.model(&t, MODEL).await;
    assert_eq!(model["loads"], 2, "{model}");
    assert_eq!(model["state"], "ready");
}

async fn an_engine_panic_is_survived(s: &TestServer) {
    let t = token("acme");
    s.deploy(&t, greeting("Say hi to {{ name }}.")).await;
    let response = s
        .client
        .post(format!("{}/v1/functions/greeting/invoke", s.base))
        .bearer_auth(&t)
        .header("x-genrt-fault", "engine-panic")
        .json(&json!({"input": {"name": "Bob"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(
        response.headers().get("retry-after").is_some(),
        "retryable errors carry Retry-After"
    );
    let (_, body) = genrt_tests::read(response).await;
    assert_eq!(error_code(&body), "replica_failed");

    let (status, out) = s
        .invoke(&t, "greeting", json!({"input": {"name": "Bob"}}))
        .await;
    assert_eq!(status, 200, "later invocations succeed: {out}");
    assert!(!out["output"]["text"].as_str().unwrap().is_empty());
    s.eventually(
        "the restart to be counted",
        Duration::from_secs(10),
        || async { s.model(&t, MODEL).await["replica_restarts"] == 1 },
    )
    .await;
}

async fn bad_input_is_refused_with_its_code_and_leaves_nothing(s: &TestServer) {
    let t = token("acme");
    let (status, _) = s
        .deploy(
            &t,
            json!({
                "name": "brief",
                "model": MODEL,
                "prompt": "Summarise {{ title }} in {{ words }} words.",
                "input_schema": {
                    "type": "object",
                    "properties": {"title": {"type": "string"}, "words": {"type": "integer"}},
                    "required": ["title"]
                },
                "params": {"max_tokens": 8, "temperature": 0}
            }),
        )
        .await;
    assert_eq!(status, 201);
    let (status, ok) = s
        .invoke(&t, "brief", json!({"input": {"title": "rain", "words": 5}}))
        .await;
    assert_eq!(status, 200, "{ok}");
    let state = s.server().state();
    let acme = tenant("acme");
    assert_eq!(
        state
            .records
            .flush(std::time::Duration::from_secs(10))
            .await,
        0,
        "records written"
    );
    let rows_before = state.store.count_invocations(&acme).await.unwrap();
    assert_eq!(rows_before, 1, "the successful invocation is recorded");

    // Malformed JSON.
    let response = s
        .client
        .post(format!("{}/v1/functions/brief/invoke", s.base))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("{\"input\": ")
        .send()
        .await
        .unwrap();
    let (status, body) = genrt_tests::read(response).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_json"), "{body}");

    // Credentials.
    let body = Some(json!({"input": {"title": "x"}}));
    let path = "/v1/functions/brief/invoke";
    let cases = [
        (None, "missing_credentials"),
        (
            Some(token_with("acme", SECRET, "genrt", -3600)),
            "token_expired",
        ),
        (
            Some(token_with(
                "acme",
                "a-forged-secret-of-some-length",
                "genrt",
                3600,
            )),
            "invalid_token",
        ),
        (
            Some(token_with("acme", SECRET, "another-service", 3600)),
            "invalid_token",
        ),
        (Some("not.a.jwt".to_owned()), "invalid_token"),
    ];
    for (tok, code) in cases {
        let response = s
            .request(Method::POST, path, tok.as_deref(), body.clone())
            .await;
        let (status, got) = genrt_tests::read(response).await;
        assert_eq!((status, error_code(&got)), (401, code), "{got}");
    }

    // Another tenant's function does not exist for the caller.
    let (status, got) = s
        .invoke(&token("globex"), "brief", json!({"input": {"title": "x"}}))
        .await;
    assert_eq!((status, error_code(&got)), (404, "function_not_found"));
    let (status, _) = s
        .call(Method::GET, "/v1/functions/brief", &token("globex"), None)
        .await;
    assert_eq!(status, 404);

    // Input failing the schema names the field.
    let (status, got) = s
        .invoke(
            &t,
            "brief",
            json!({"input": {"title": "x", "words": "five"}}),
        )
        .await;
    assert_eq!((status, error_code(&got)), (422, "invalid_input"), "{got}");
    assert_eq!(got["error"]["field"], "input.words");
    let (status, got) = s.invoke(&t, "brief", json!({"input": {"words": 3}})).await;
    assert_eq!((status, error_code(&got)), (422, "invalid_input"), "{got}");
    assert!(
        got["error"]["message"].as_str().unwrap().contains("title"),
        "{got}"
    );

    // A template variable the input lacks (the schema does not require `words`).
    let (status, got) = s
        .invoke(&t, "brief", json!({"input": {"title": "x"}}))
        .await;
    assert_eq!((status, error_code(&got)), (422, "template_error"), "{got}");
    assert!(
        got["error"]["message"].as_str().unwrap().contains("words"),
        "{got}"
    );

    // max_tokens beyond the model's context (512 in tests).
    let (status, got) = s
        .invoke(
            &t,
            "brief",
            json!({"input": {"title": "x", "words": 2}, "params": {"max_tokens": 4096}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&got)),
        (422, "max_tokens_exceeds_context"),
        "{got}"
    );

    // Out-of-range params and unknown fields.
    let (status, got) = s
        .invoke(
            &t,
            "brief",
            json!({"input": {"title": "x", "words": 2}, "params": {"temperature": 9}}),
        )
        .await;
    assert_eq!((status, error_code(&got)), (422, "invalid_params"), "{got}");
    let (status, got) = s.invoke(&t, "brief", json!({"inptu": {}})).await;
    assert_eq!(
        (status, error_code(&got)),
        (422, "invalid_request"),
        "{got}"
    );

    // A body over the limit (64 KiB in tests).
    let big = "x".repeat(100 * 1024);
    let (status, got) = s
        .invoke(&t, "brief", json!({"input": {"title": big}}))
        .await;
    assert_eq!(
        (status, error_code(&got)),
        (413, "payload_too_large"),
        "{got}"
    );

    // None of the rejected invocations was recorded.
    assert_eq!(
        state
            .records
            .flush(std::time::Duration::from_secs(10))
            .await,
        0,
        "records written"
    );
    assert_eq!(
        state.store.count_invocations(&acme).await.unwrap(),
        rows_before
    );

    // Rejected deploys leave no function and no version behind.
    let (status, got) = s
        .deploy(
            &t,
            json!({"name": "broken", "model": "no-such-model", "prompt": "x"}),
        )
        .await;
    assert_eq!((status, error_code(&got)), (422, "invalid_spec"), "{got}");
    assert_eq!(got["error"]["field"], "model");
    let (status, got) = s
        .deploy(
            &t,
            json!({"name": "broken", "model": MODEL, "prompt": "{{ oops"}),
        )
        .await;
    assert_eq!((status, error_code(&got)), (422, "invalid_spec"), "{got}");
    let (status, _) = s.call(Method::GET, "/v1/functions/broken", &t, None).await;
    assert_eq!(status, 404);
    let (status, got) = s
        .deploy(&t, json!({"name": "brief", "model": MODEL, "route": {"field": "c", "default": MODEL}, "prompt": "x"}))
        .await;
    assert_eq!((status, error_code(&got)), (422, "invalid_spec"), "{got}");
    let (_, versions) = s
        .call(Method::GET, "/v1/functions/brief/versions", &t, None)
        .await;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "no version was added"
    );
}

fn tenant(id: &str) -> genrt_functions::TenantId {
    genrt_functions::TenantId::parse(id).unwrap()
}

async fn openapi_and_probes(s: &TestServer) {
    let (status, health) =
        genrt_tests::read(s.request(Method::GET, "/healthz", None, None).await).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) =
        genrt_tests::read(s.request(Method::GET, "/readyz", None, None).await).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["database"], true);
    assert_eq!(ready["actors"], true);
    assert_eq!(ready["registry"], true);

    let (status, doc) =
        genrt_tests::read(s.request(Method::GET, "/openapi.json", None, None).await).await;
    assert_eq!(status, 200);
    let routes = [
        ("/v1/functions", "post"),
        ("/v1/functions", "get"),
        ("/v1/functions/{name}", "get"),
        ("/v1/functions/{name}", "delete"),
        ("/v1/functions/{name}/versions", "get"),
        ("/v1/functions/{name}/invoke", "post"),
        ("/v1/invocations/{id}", "get"),
        ("/v1/models", "get"),
        ("/v1/models/{id}", "get"),
        ("/v1/functions/{name}/prewarm", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ];
    for (path, method) in routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "openapi.json lacks {method} {path}"
        );
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());

    let (status, body) =
        genrt_tests::read(s.request(Method::GET, "/v1/nope", None, None).await).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
}

async fn the_example_functions_deploy_and_run(s: &TestServer) {
    let t = token("demo");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/examples");
    let inputs = [
        (
            "product-description",
            json!({"product": "linen summer shirt", "category": "fashion", "features": ["breathable"]}),
        ),
        (
            "news-brief",
            json!({"topic": "a new solar farm opens near the coast"}),
        ),
        (
            "tagline",
            json!({"product": "a reusable water bottle", "tone": "playful"}),
        ),
    ];
    let mut deployed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let definition: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = definition["name"].as_str().unwrap().to_owned();
        let (status, body) = s.deploy(&t, definition).await;
        assert_eq!(status, 201, "{}: {body}", path.display());
        let (_, input) = inputs
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("add a sample input for example `{name}` to this test"));
        let (status, out) = s.invoke(&t, &name, json!({"input": input})).await;
        assert_eq!(status, 200, "{name}: {out}");
        if definition_has_json_output(&dir, &name) {
            let brief = &out["output"]["json"];
            for field in ["title", "lede", "body"] {
                assert!(brief[field].is_string(), "{name}: {out}");
            }
            assert!(
                brief["tags"]
                    .as_array()
                    .is_some_and(|t| (2..=3).contains(&t.len())),
                "{name}: {out}"
            );
        }
        assert!(
            !out["output"]["text"].as_str().unwrap().trim().is_empty(),
            "{name}: {out}"
        );
        deployed += 1;
    }
    assert_eq!(deployed, inputs.len());
}

fn definition_has_json_output(dir: &std::path::Path, name: &str) -> bool {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    let definition: Value = serde_json::from_str(&text).unwrap();
    definition["output"]["format"] == "json"
}

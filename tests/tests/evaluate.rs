//! Model quality end to end: two versions of a function scored with ROUGE-L and BLEU on an
//! evaluation set through `POST /v1/functions/{name}/evaluate`, with the real model, on SQLite
//! and on Postgres.

use genrt_functions::tokenize;
use genrt_tests::{token, Db, PgCluster, TestServer, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_versions_are_scored_and_compared() {
    let server = TestServer::start(Db::Sqlite).await;
    versions_are_scored_and_compared(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_versions_are_scored_and_compared() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("genrt");
    let server = TestServer::start(Db::Postgres(url)).await;
    versions_are_scored_and_compared(&server).await;
    server.stop().await;
    drop(cluster);
}

fn definition(prompt: &str, evaluation: Value) -> Value {
    json!({
        "name": "capital",
        "model": MODEL,
        "system": "You are a concise assistant.",
        "prompt": prompt,
        // Greedy, so that an output can be known in advance and used as a reference.
        "params": {"max_tokens": 12, "temperature": 0},
        "evaluation": evaluation
    })
}

fn evaluation_set() -> Value {
    json!([
        {"input": {"country": "France"}, "reference": "The capital of France is Paris."},
        {"input": {"country": "Italy"}, "reference": "The capital of Italy is Rome."},
        {"input": {"country": "Japan"}, "reference": "The capital of Japan is Tokyo."}
    ])
}

async fn evaluate(s: &TestServer, t: &str, name: &str, body: Value) -> (u16, Value) {
    s.call(
        Method::POST,
        &format!("/v1/functions/{name}/evaluate"),
        t,
        Some(body),
    )
    .await
}

fn assert_scores(body: &Value, version: u64, cases: usize) {
    assert_eq!(body["version"], version, "{body}");
    assert_eq!(body["cases"].as_array().unwrap().len(), cases, "{body}");
    assert_eq!(body["succeeded"], cases as u64, "{body}");
    assert_eq!(body["failed"], 0, "{body}");
    for key in ["rouge_l", "bleu"] {
        let mean = body[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&mean), "{key} {mean}");
        for case in body["cases"].as_array().unwrap() {
            let score = case[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&score), "{key} {case}");
            assert!(case["output"].is_string(), "{case}");
        }
    }
}

async fn versions_are_scored_and_compared(s: &TestServer) {
    let t = token("quality");
    let (status, v1) = s
        .deploy(
            &t,
            definition("What is the capital of {{ country }}?", evaluation_set()),
        )
        .await;
    assert_eq!(status, 201, "{v1}");
    // The evaluation set is part of the definition as stored.
    let (status, detail) = s.call(Method::GET, "/v1/functions/capital", &t, None).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["definition"]["evaluation"], evaluation_set());

    // A reference equal to the (greedy, so known) output scores exactly 1.
    let (status, out) = s
        .invoke(&t, "capital", json!({"input": {"country": "Spain"}}))
        .await;
    assert_eq!(status, 200, "{out}");
    let known = out["output"]["text"].as_str().unwrap().to_owned();
    assert!(
        tokenize(&known).len() >= 4,
        "too short to have 4-grams: {known:?}"
    );
    let (status, exact) = evaluate(
        s,
        &t,
        "capital",
        json!({"version": 1, "cases": [{"input": {"country": "Spain"}, "reference": known}]}),
    )
    .await;
    assert_eq!(status, 200, "{exact}");
    assert_scores(&exact, 1, 1);
    assert_eq!(exact["cases"][0]["output"], known.as_str(), "{exact}");
    assert_eq!(exact["rouge_l"], 1.0, "{exact}");
    assert!(
        (exact["bleu"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "{exact}"
    );
    assert!((exact["cases"][0]["bleu"].as_f64().unwrap() - 1.0).abs() < 1e-9);

    // A second version; both are scored on the latest version's evaluation set.
    let (status, v2) = s
        .deploy(
            &t,
            definition(
                "Answer with one short sentence: which city is the capital of {{ country }}?",
                evaluation_set(),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v2}");
    assert_eq!(v2["version"], 2);
    let (status, latest) = evaluate(s, &t, "capital", json!({})).await;
    assert_eq!(status, 200, "{latest}");
    assert_scores(&latest, 2, 3);
    let (status, first) = evaluate(s, &t, "capital", json!({"version": 1})).await;
    assert_eq!(status, 200, "{first}");
    assert_scores(&first, 1, 3);
    // The two versions prompt differently, so at least one case's output differs.
    let outputs = |body: &Value| -> Vec<Value> {
        body["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["output"].clone())
            .collect()
    };
    assert_ne!(outputs(&latest), outputs(&first));

    // Each case ran through the version asked for, and is recorded as an evaluation.
    let id = first["cases"][0]["invocation_id"].as_str().unwrap();
    let (status, record) = s
        .call(Method::GET, &format!("/v1/invocations/{id}"), &t, None)
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["mode"], "evaluate", "{record}");
    assert_eq!(record["version"], 1, "{record}");
    assert_eq!(record["status"], "succeeded", "{record}");

    // A case whose input fails the template scores 0 and carries its error.
    let (status, broken) = evaluate(
        s,
        &t,
        "capital",
        json!({"cases": [{"input": {"nation": "Peru"}, "reference": "Lima"}]}),
    )
    .await;
    assert_eq!(status, 200, "{broken}");
    assert_eq!(broken["failed"], 1, "{broken}");
    assert_eq!(broken["rouge_l"], 0.0, "{broken}");
    assert_eq!(
        broken["cases"][0]["error"]["code"], "template_error",
        "{broken}"
    );

    // Errors.
    let (status, body) = evaluate(s, &t, "capital", json!({"version": 9})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "version_not_found", "{body}");
    let (status, body) = evaluate(s, &t, "nope", json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "function_not_found", "{body}");
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"input": {"country": format!("c{i}")}, "reference": "x"}))
        .collect();
    let (status, body) = evaluate(s, &t, "capital", json!({"cases": many})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert_eq!(body["error"]["field"], "cases", "{body}");
    let (status, body) = s
        .deploy(&t, definition("Capital of {{ country }}?", json!(many)))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "evaluation", "{body}");
    let (status, body) = evaluate(s, &t, "capital", json!({"params": {"top_p": 0}})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_params", "{body}");
    // Without an evaluation set there is nothing to score unless cases are given.
    let mut bare = definition("Capital of {{ country }}?", json!([]));
    bare["name"] = json!("bare");
    let (status, body) = s.deploy(&t, bare).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = evaluate(s, &t, "bare", json!({})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "cases", "{body}");
    // Another tenant sees nothing.
    let (status, body) = evaluate(s, &token("someone-else"), "capital", json!({})).await;
    assert_eq!(status, 404, "{body}");
}

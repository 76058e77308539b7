//! Releases end to end (issue #18), on SQLite and on Postgres, with the real SmolLM2 model:
//! pinned versions on every entry point and the cache kept apart per version; aliases with
//! weighted splits (sticky per key, consistent when the weights change); an async invocation
//! keeping the version it was admitted with; gated promotion, rollback and the history.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use genrt_tests::{token, Db, TestServer, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

genrt_tests::on_both_databases!(
    a_pinned_version_runs_on_every_entry_point,
    an_alias_splits_by_weight_sticky_per_key_and_consistently,
    queued_work_keeps_the_version_it_was_admitted_with,
    a_gated_promotion_is_refused_or_made_and_rolled_back,
    a_shadow_mirrors_its_share_and_is_compared_with_the_primary,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// Greedy and cached (deterministic), so that each version's output is fixed.
fn definition(name: &str, system: &str, evaluation: Value) -> Value {
    json!({
        "name": name,
        "model": MODEL,
        "system": system,
        "prompt": "What is the capital of {{ country }}?",
        "params": {"max_tokens": 16, "temperature": 0},
        "evaluation": evaluation
    })
}

async fn deploy(s: &TestServer, t: &str, definition: Value) -> u64 {
    let (status, body) = s.deploy(t, definition).await;
    assert_eq!(status, 201, "{body}");
    body["version"].as_u64().unwrap()
}

/// `capital` at version 1 (brief answers) and version 2 (full sentences).
async fn two_versions(s: &TestServer, t: &str) {
    deploy(s, t, definition("capital", "Answer briefly.", json!([]))).await;
    deploy(
        s,
        t,
        definition("capital", "Answer in one full sentence.", json!([])),
    )
    .await;
}

async fn set_alias(s: &TestServer, t: &str, name: &str, alias: &str, body: Value) -> (u16, Value) {
    let path = format!("/v1/functions/{name}/aliases/{alias}");
    s.call(Method::PUT, &path, t, Some(body)).await
}

async fn rollback(s: &TestServer, t: &str, name: &str, alias: &str) -> (u16, Value) {
    let path = format!("/v1/functions/{name}/aliases/{alias}/rollback");
    s.call(Method::POST, &path, t, None).await
}

/// The version `reference` runs now.
async fn runs(s: &TestServer, t: &str, reference: &str) -> u64 {
    let (status, out) = s
        .invoke(t, reference, json!({"input": {"country": "Peru"}}))
        .await;
    assert_eq!(status, 200, "{out}");
    out["version"].as_u64().unwrap()
}

/// Polls an invocation until it has ended.
async fn ended(s: &TestServer, t: &str, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        let (status, record) = s
            .call(Method::GET, &format!("/v1/invocations/{id}"), t, None)
            .await;
        if status == 200 && !matches!(record["status"].as_str(), Some("queued" | "running")) {
            return record;
        }
        last = record;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("invocation {id} never ended: {last}");
}

/// The version each item of a batch ran, once all have ended, in item order.
async fn batch_versions(s: &TestServer, t: &str, batch: &str) -> Vec<u64> {
    let response = s
        .request(
            Method::GET,
            &format!("/v1/batches/{batch}/results"),
            Some(t),
            None,
        )
        .await;
    let text = response.text().await.unwrap();
    let mut versions = Vec::new();
    for line in text.lines() {
        let item: Value = serde_json::from_str(line).unwrap();
        let record = ended(s, t, item["invocation_id"].as_str().unwrap()).await;
        assert_eq!(record["status"], "succeeded", "{record}");
        versions.push(record["version"].as_u64().unwrap());
    }
    versions
}

async fn a_pinned_version_runs_on_every_entry_point(db: Db) {
    let s = TestServer::start(db).await;
    let t = token("pins");
    // Prompts that ask different things, so that each version's answer is its own.
    let prompts = [
        "What is the capital of {{ country }}?",
        "Name one famous dish from {{ country }}.",
        "Write a short poem about the rivers of {{ country }}.",
    ];
    for (i, prompt) in prompts.iter().enumerate() {
        let mut d = definition("capital", "You are a helpful assistant.", json!([]));
        d["prompt"] = json!(prompt);
        let v = deploy(&s, &t, d).await;
        assert_eq!(v, i as u64 + 1);
    }
    let input = json!({"input": {"country": "France"}});
    // Version 3, the latest, first: its answer is cached; version 2 must not get it.
    let (status, latest) = s.invoke(&t, "capital", input.clone()).await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["version"], 3, "{latest}");
    assert_eq!(latest["alias"], Value::Null, "{latest}");
    let (status, pinned) = s.invoke(&t, "capital@2", input.clone()).await;
    assert_eq!(status, 200, "{pinned}");
    assert_eq!(pinned["version"], 2, "{pinned}");
    assert_eq!(pinned["cache_hit"], false, "{pinned}");
    let text = pinned["output"]["text"].as_str().unwrap().to_owned();
    assert_ne!(
        latest["output"]["text"], text,
        "versions 2 and 3 prompt differently and should answer differently"
    );
    // The same version by the `version` field: the same (now cached) answer.
    let (status, field) = s
        .invoke(
            &t,
            "capital",
            json!({"input": {"country": "France"}, "version": 2}),
        )
        .await;
    assert_eq!(status, 200, "{field}");
    assert_eq!(
        (field["version"].as_u64(), field["cache_hit"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(field["output"]["text"], text.as_str());
    // And version 1, never run: its own answer, not another version's cached one.
    let (status, first) = s.invoke(&t, "capital@1", input.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["version"].as_u64(), first["cache_hit"].as_bool()),
        (Some(1), Some(false))
    );

    // Streamed.
    let streamed = s.stream(&t, "capital@2", input.clone()).await;
    assert_eq!(streamed.status, 200);
    let done = streamed.done.clone().expect("a done event");
    assert_eq!(done["version"], 2, "{done}");
    assert_eq!(streamed.text(), text);

    // Asynchronous.
    let (status, accepted) = s
        .invoke(
            &t,
            "capital@2",
            json!({"input": {"country": "France"}, "mode": "async"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["version"], 2, "{accepted}");
    let record = ended(&s, &t, accepted["invocation_id"].as_str().unwrap()).await;
    assert_eq!(
        (record["status"].as_str(), record["version"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{record}"
    );
    assert_eq!(record["output"]["text"], text.as_str(), "{record}");

    // A batch, by the `version` field.
    let (status, batch) = s
        .call(
            Method::POST,
            "/v1/functions/capital/batches",
            &t,
            Some(json!({"inputs": [{"country": "France"}, {"country": "Italy"}], "version": 2})),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!(batch["version"], 2, "{batch}");
    let id = batch["batch_id"].as_str().unwrap();
    let mut results = Value::Null;
    for _ in 0..600 {
        let (_, b) = s
            .call(Method::GET, &format!("/v1/batches/{id}"), &t, None)
            .await;
        if b["status"] == "completed" {
            results = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(results["counts"]["succeeded"], 2, "{results}");
    assert_eq!(batch_versions(&s, &t, id).await, vec![2, 2]);

    // The OpenAI-compatible route, `model: "capital@2"`.
    let (status, chat) = s
        .call(
            Method::POST,
            "/openai/v1/chat/completions",
            &t,
            // A JSON object as the message is the function's input itself.
            Some(json!({"model": "capital@1", "max_tokens": 4,
                        "messages": [{"role": "user", "content": "{\"country\": \"Peru\"}"}]})),
        )
        .await;
    assert_eq!(status, 200, "{chat}");
    s.server()
        .state()
        .records
        .flush(Duration::from_secs(10))
        .await;
    let (status, page) = s
        .call(
            Method::GET,
            "/v1/invocations?function=capital&limit=100",
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let versions: Vec<u64> = page["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["mode"] == "openai")
        .map(|r| r["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1], "{page}");

    // Refusals, each with its code.
    let (status, body) = s.invoke(&t, "capital@9", input.clone()).await;
    assert_eq!((status, code(&body)), (404, "version_not_found"), "{body}");
    let (status, body) = s.invoke(&t, "capital@canary", input.clone()).await;
    assert_eq!((status, code(&body)), (404, "alias_not_found"), "{body}");
    let (status, body) = s.invoke(&t, "capital@Canary", input.clone()).await;
    assert_eq!((status, code(&body)), (422, "invalid_request"), "{body}");
    assert_eq!(body["error"]["field"], "alias", "{body}");
    let (status, body) = s
        .invoke(
            &t,
            "capital@3",
            json!({"input": {"country": "France"}, "version": 2}),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_request"), "{body}");
    let (status, body) = s
        .call(
            Method::POST,
            "/openai/v1/chat/completions",
            &t,
            Some(json!({"model": "capital@7", "messages": [{"role": "user", "content": "x"}]})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    // Another tenant pins nothing of this one's.
    let (status, body) = s.invoke(&token("other"), "capital@2", input).await;
    assert_eq!((status, code(&body)), (404, "function_not_found"), "{body}");
    s.stop().await;
}

/// Which version each key gets, invoking `name@alias` once per key, 8 at a time.
async fn versions_by_key(
    s: &TestServer,
    t: &str,
    target: &str,
    keys: &[String],
) -> HashMap<String, u64> {
    let input = json!({"input": {"country": "France"}});
    futures_util::stream::iter(keys.iter().cloned())
        .map(|key| {
            let request = s
                .build(Method::POST, &format!("/v1/functions/{target}/invoke"), t)
                .header("Genrt-Split-Key", key.clone())
                .json(&input);
            async move {
                let response = request.send().await.expect("sent");
                let (status, body) = genrt_tests::read(response).await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["alias"], "prod", "{body}");
                assert_eq!(body["split"], true, "{body}");
                (key, body["version"].as_u64().unwrap())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

async fn an_alias_splits_by_weight_sticky_per_key_and_consistently(db: Db) {
    // 2,000 requests and more, from the cache after each version's first: not a rate test.
    let s = TestServer::start_adjusted(db, |c| c.tenancy.rate_limit_rps = 0.0).await;
    let t = token("splits");
    two_versions(&s, &t).await;
    let (status, body) = set_alias(
        &s,
        &t,
        "capital",
        "prod",
        json!({"versions": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"]["action"], "set", "{body}");

    let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
    let before = versions_by_key(&s, &t, "capital@prod", &keys).await;
    let on_2 = before.values().filter(|v| **v == 2).count() as f64 / keys.len() as f64;
    println!(
        "90/10 split over {} keys: {:.2}% on version 2",
        keys.len(),
        on_2 * 100.0
    );
    assert!(
        (on_2 - 0.10).abs() <= 0.03,
        "{:.3} of the keys on version 2",
        on_2
    );
    // The same key, the same version.
    let again = versions_by_key(&s, &t, "capital@prod", &keys[..200]).await;
    for (key, version) in &again {
        assert_eq!(
            before[key], *version,
            "{key} changed version without a change"
        );
    }

    // 20/80: only the keys that must move do, all from version 1 to 2.
    let (status, body) = set_alias(
        &s,
        &t,
        "capital",
        "prod",
        json!({"versions": [{"version": 1, "weight": 20}, {"version": 2, "weight": 80}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after = versions_by_key(&s, &t, "capital@prod", &keys).await;
    let mut moved = 0;
    for key in &keys {
        if before[key] != after[key] {
            assert_eq!(
                (before[key], after[key]),
                (1, 2),
                "{key} moved the wrong way"
            );
            moved += 1;
        }
    }
    let moved = moved as f64 / keys.len() as f64;
    // No key left version 2, so every key that moved was needed: the moved share is exactly
    // version 2's gain, the least any assignment of keys could move.
    let after_on_2 = after.values().filter(|v| **v == 2).count() as f64 / keys.len() as f64;
    let must = after_on_2 - on_2;
    assert!((moved - must).abs() < 1e-9, "{moved} moved, {must} needed");
    println!(
        "90/10 -> 20/80: {:.2}% of the keys moved, all from version 1 to 2; version 2's share grew by {:.2}%",
        moved * 100.0,
        must * 100.0
    );
    assert!((moved - 0.70).abs() <= 0.03, "{moved:.3} of the keys moved");

    // Without a key: random, about the weights (loose bounds: 200 draws).
    let input = json!({"input": {"country": "France"}});
    let mut on_2 = 0;
    for _ in 0..200 {
        let (status, body) = s.invoke(&t, "capital@prod", input.clone()).await;
        assert_eq!(status, 200, "{body}");
        on_2 += (body["version"] == 2) as u32;
    }
    assert!(
        (120..=190).contains(&on_2),
        "{on_2} of 200 on version 2 at 80%"
    );

    // A `default` alias replaces "the latest" for a bare name.
    let (status, out) = s.invoke(&t, "capital", input.clone()).await;
    assert_eq!((status, out["version"].as_u64()), (200, Some(2)), "{out}");
    let (status, body) = set_alias(&s, &t, "capital", "default", json!({"version": 1})).await;
    assert_eq!(status, 200, "{body}");
    let (status, out) = s.invoke(&t, "capital", input.clone()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        (out["version"].as_u64(), out["alias"].as_str()),
        (Some(1), Some("default")),
        "{out}"
    );

    // The record says which version ran and why.
    s.server()
        .state()
        .records
        .flush(Duration::from_secs(10))
        .await;
    let id = out["invocation_id"].as_str().unwrap();
    let (_, record) = s
        .call(Method::GET, &format!("/v1/invocations/{id}"), &t, None)
        .await;
    assert_eq!(
        (
            record["version"].as_u64(),
            record["alias"].as_str(),
            record["split"].as_bool()
        ),
        (Some(1), Some("default"), Some(false)),
        "{record}"
    );

    // Per-version statistics count every one of those invocations, by the version that ran.
    s.server()
        .state()
        .records
        .flush(Duration::from_secs(30))
        .await;
    let (status, stats) = s
        .call(Method::GET, "/v1/functions/capital/stats", &t, None)
        .await;
    assert_eq!(status, 200, "{stats}");
    let versions = stats["versions"].as_array().unwrap();
    let counted: u64 = versions
        .iter()
        .map(|v| v["invocations"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 2000 + 200 + 2000 + 200 + 2, "{stats}");
    assert_eq!(versions[0]["version"], 2, "{stats}");
    assert_eq!(versions[0]["aliases"], json!(["prod"]), "{stats}");
    assert_eq!(
        versions[1]["aliases"],
        json!(["default", "prod"]),
        "{stats}"
    );
    for v in versions {
        assert_eq!(v["invocations"], v["succeeded"], "{v}");
        let (p50, p99) = (
            v["latency_ms"]["p50"].as_f64().unwrap(),
            v["latency_ms"]["p99"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99, "{v}");
        assert!(
            v["cache_hit_rate"].as_f64().unwrap() > 0.9,
            "all but the first are cached: {v}"
        );
    }

    // Bad targets, each refused with its field, and the alias as it was.
    for (body, field) in [
        (
            json!({"versions": [{"version": 1, "weight": 60}, {"version": 2, "weight": 60}]}),
            "versions",
        ),
        (
            json!({"version": 1, "versions": [{"version": 1, "weight": 100}]}),
            "version",
        ),
        (
            json!({"versions": [{"version": 1, "weight": 50}, {"version": 1, "weight": 50}]}),
            "versions[1].version",
        ),
        (
            json!({"version": 1, "gate": {"not_worse_than": "yesterday"}}),
            "gate.not_worse_than",
        ),
    ] {
        let (status, got) = set_alias(&s, &t, "capital", "prod", body.clone()).await;
        assert_eq!(
            (status, code(&got)),
            (422, "invalid_request"),
            "{body}: {got}"
        );
        assert_eq!(got["error"]["field"], field, "{body}: {got}");
    }
    let (status, got) = set_alias(&s, &t, "capital", "prod", json!({"version": 7})).await;
    assert_eq!((status, code(&got)), (404, "version_not_found"), "{got}");
    let (status, got) = set_alias(&s, &t, "capital", "Prod", json!({"version": 1})).await;
    assert_eq!(
        (status, code(&got), got["error"]["field"].as_str()),
        (422, "invalid_request", Some("alias")),
        "{got}"
    );
    let (_, list) = s
        .call(Method::GET, "/v1/functions/capital/aliases", &t, None)
        .await;
    let prod = list["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alias"] == "prod")
        .unwrap()
        .clone();
    assert_eq!(
        prod["versions"],
        json!([{"version": 1, "weight": 20}, {"version": 2, "weight": 80}]),
        "{list}"
    );
    // Deleting the alias refuses `@prod` from then on.
    let (status, _) = s
        .call(
            Method::DELETE,
            "/v1/functions/capital/aliases/prod",
            &t,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = s.invoke(&t, "capital@prod", input).await;
    assert_eq!((status, code(&body)), (404, "alias_not_found"), "{body}");
    s.stop().await;
}

async fn queued_work_keeps_the_version_it_was_admitted_with(db: Db) {
    // One queue worker: the async invocation waits behind the batch, queued, while the alias
    // moves.
    let s = TestServer::start_adjusted(db, |c| c.queue.concurrency = 1).await;
    let t = token("queues");
    two_versions(&s, &t).await;
    let (status, body) = set_alias(&s, &t, "capital", "prod", json!({"version": 1})).await;
    assert_eq!(status, 200, "{body}");
    let countries: Vec<Value> = [
        "Peru", "Chile", "Spain", "Kenya", "Japan", "Egypt", "Chad", "Iran",
    ]
    .iter()
    .map(|c| json!({"country": c}))
    .collect();
    let (status, batch) = s
        .call(
            Method::POST,
            "/v1/functions/capital@prod/batches",
            &t,
            Some(json!({"inputs": countries, "params": {"max_tokens": 48, "ignore_eos": true}})),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let (status, accepted) = s
        .invoke(
            &t,
            "capital@prod",
            json!({"input": {"country": "Norway"}, "mode": "async"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(
        (accepted["version"].as_u64(), accepted["alias"].as_str()),
        (Some(1), Some("prod")),
        "{accepted}"
    );
    let id = accepted["invocation_id"].as_str().unwrap().to_owned();

    let (status, body) = set_alias(&s, &t, "capital", "prod", json!({"version": 2})).await;
    assert_eq!(status, 200, "{body}");
    let (_, waiting) = s
        .call(Method::GET, &format!("/v1/invocations/{id}"), &t, None)
        .await;
    assert_eq!(
        waiting["status"], "queued",
        "it must still wait when the alias moves: {waiting}"
    );
    // New work through the alias runs version 2 ...
    let (status, now) = s
        .invoke(&t, "capital@prod", json!({"input": {"country": "France"}}))
        .await;
    assert_eq!((status, now["version"].as_u64()), (200, Some(2)), "{now}");
    // ... and what was admitted before the move runs version 1.
    let record = ended(&s, &t, &id).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(
        (record["version"].as_u64(), record["alias"].as_str()),
        (Some(1), Some("prod")),
        "{record}"
    );
    let batch_id = batch["batch_id"].as_str().unwrap();
    assert_eq!(batch_versions(&s, &t, batch_id).await, vec![1; 8]);
    s.stop().await;
}

async fn a_gated_promotion_is_refused_or_made_and_rolled_back(db: Db) {
    let s = TestServer::start(db).await;
    let t = token("gates");
    let good = "You are a geography teacher. Answer in one full sentence.";
    // Version 1: the references are its own greedy answers.
    deploy(&s, &t, definition("capital", good, json!([]))).await;
    let mut cases = Vec::new();
    for country in ["France", "Italy", "Japan"] {
        let (status, out) = s
            .invoke(&t, "capital", json!({"input": {"country": country}}))
            .await;
        assert_eq!(status, 200, "{out}");
        cases.push(json!({"input": {"country": country}, "reference": out["output"]["text"]}));
    }
    let cases = Value::Array(cases);
    // Version 2, a different prompt, is prod; 3 is cut off after one token; 4 is the prompt
    // the references came from.
    let v2 = deploy(
        &s,
        &t,
        definition("capital", "Answer briefly.", cases.clone()),
    )
    .await;
    let (status, body) = set_alias(&s, &t, "capital", "prod", json!({"version": v2})).await;
    assert_eq!(status, 200, "{body}");
    // Worse by construction, not by the model's obedience: a prompt that asked for one
    // made-up word was ignored on some CPUs (greedy decoding differs between SIMD paths) and
    // scored as well as version 2. One token of a one-sentence reference scores a ROUGE-L of
    // at most 2/(1 + its words), under any answer of version 2 that names the capital.
    let mut bad = definition("capital", good, cases.clone());
    bad["params"]["max_tokens"] = json!(1);
    let v3 = deploy(&s, &t, bad).await;
    let gate = json!({"not_worse_than": "current", "max_drop": 0.02});
    let (status, refused) = set_alias(
        &s,
        &t,
        "capital",
        "prod",
        json!({"version": v3, "gate": gate}),
    )
    .await;
    assert_eq!(
        (status, code(&refused)),
        (409, "promotion_refused"),
        "{refused}"
    );
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("version {v3}")) && message.contains(&format!("version {v2}")),
        "{message}"
    );
    let (_, list) = s
        .call(Method::GET, "/v1/functions/capital/aliases", &t, None)
        .await;
    assert_eq!(
        list["aliases"][0]["versions"],
        json!([{"version": v2, "weight": 100}]),
        "{list}"
    );

    let v4 = deploy(&s, &t, definition("capital", good, cases.clone())).await;
    let (status, promoted) = set_alias(
        &s,
        &t,
        "capital",
        "prod",
        json!({"version": v4, "gate": gate}),
    )
    .await;
    assert_eq!(status, 200, "{promoted}");
    let scores = &promoted["event"]["gate"];
    assert_eq!(scores["passed"], true, "{promoted}");
    assert_eq!(
        scores["candidates"][0]["rouge_l"], 1.0,
        "the references are its own answers: {promoted}"
    );
    assert_eq!(runs(&s, &t, "capital@prod").await, v4);

    // Rollback in one call: back to version 2.
    let (status, back) = rollback(&s, &t, "capital", "prod").await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(
        back["alias"]["versions"],
        json!([{"version": v2, "weight": 100}]),
        "{back}"
    );
    assert_eq!(runs(&s, &t, "capital@prod").await, v2);

    // The history: the rollback, the promotion, the refusal (with both scores), the creation.
    let (status, history) = s
        .call(
            Method::GET,
            "/v1/functions/capital/aliases/prod/history",
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200, "{history}");
    let events = history["events"].as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rollback", "set", "refused", "set"], "{history}");
    let refusal = &events[2]["gate"];
    assert_eq!(refusal["passed"], false, "{refusal}");
    assert_eq!(refusal["current"]["version"], v2, "{refusal}");
    assert_eq!(refusal["candidates"][0]["version"], v3, "{refusal}");
    let (worse, current) = (
        refusal["candidates"][0]["rouge_l"].as_f64().unwrap(),
        refusal["current"]["rouge_l"].as_f64().unwrap(),
    );
    assert!(worse + 0.02 < current, "{refusal}");
    assert_eq!(events[0]["from"]["versions"][0]["version"], v4, "{history}");
    assert_eq!(events[0]["to"]["versions"][0]["version"], v2, "{history}");
    assert!(events.iter().all(|e| e["actor"] == "jwt"), "{history}");

    // Scores are stored with the versions.
    let (_, versions) = s
        .call(Method::GET, "/v1/functions/capital/versions", &t, None)
        .await;
    for v in [v2, v3, v4] {
        let info = &versions["versions"][(v - 1) as usize];
        assert_eq!(info["scores"].as_array().map(Vec::len), Some(1), "{info}");
    }
    assert_eq!(
        versions["versions"][(v2 - 1) as usize]["aliases"],
        json!(["prod"]),
        "{versions}"
    );
    // A second rollback undoes the first; a new alias has nothing to go back to.
    let (status, again) = rollback(&s, &t, "capital", "prod").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["alias"]["versions"][0]["version"], v4, "{again}");
    let (status, body) = set_alias(&s, &t, "capital", "staging", json!({"version": 1})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = rollback(&s, &t, "capital", "staging").await;
    assert_eq!(
        (status, code(&body)),
        (409, "nothing_to_roll_back"),
        "{body}"
    );
    // A gate needs an evaluation set.
    deploy(&s, &t, definition("bare", good, json!([]))).await;
    deploy(&s, &t, definition("bare", "Answer briefly.", json!([]))).await;
    let (status, body) = set_alias(
        &s,
        &t,
        "bare",
        "prod",
        json!({"version": 2, "gate": {"min_rouge_l": 0.5}}),
    )
    .await;
    assert_eq!(
        (status, code(&body), body["error"]["field"].as_str()),
        (422, "invalid_request", Some("gate")),
        "{body}"
    );
    s.stop().await;
}

async fn a_shadow_mirrors_its_share_and_is_compared_with_the_primary(db: Db) {
    // Room for every shadow at once: each takes one of the tenant's background places.
    let s = TestServer::start_adjusted(db, |c| {
        c.tenancy.rate_limit_rps = 0.0;
        c.tenancy.max_concurrent_prewarms = 64;
    })
    .await;
    let t = token("shadows");
    two_versions(&s, &t).await;
    let target = json!({"version": 1, "shadow": {"version": 2, "percent": 50}});
    let (status, body) = set_alias(&s, &t, "capital", "prod", target).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["alias"]["shadow"],
        json!({"version": 2, "percent": 50}),
        "{body}"
    );
    // Which keys are mirrored is the alias's sticky choice, computed here independently.
    let domain = genrt_functions::AliasTarget {
        versions: vec![genrt_functions::Weighted {
            version: 1,
            weight: 100,
        }],
        shadow: Some(genrt_functions::Shadow {
            version: 2,
            percent: 50,
        }),
    };
    let countries = ["France", "Italy", "Japan", "Peru"];
    let mut mirrored = 0;
    let mut primaries = Vec::new();
    for i in 0..40 {
        let key = format!("user-{i}");
        let input = json!({"input": {"country": countries[i % countries.len()]}});
        let response = s
            .build(Method::POST, "/v1/functions/capital@prod/invoke", &t)
            .header("Genrt-Split-Key", key.clone())
            .json(&input)
            .send()
            .await
            .unwrap();
        let (status, out) = genrt_tests::read(response).await;
        // The caller gets the primary's answer only.
        assert_eq!((status, out["version"].as_u64()), (200, Some(1)), "{out}");
        if domain.shadowed(Some(&key), 0).is_some() {
            mirrored += 1;
            primaries.push(out["invocation_id"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        (10..=30).contains(&mirrored),
        "{mirrored} of 40 keys mirrored at 50%"
    );
    // Each mirrored call's shadow runs in the background, on version 2, and is compared.
    let mut stats = Value::Null;
    for _ in 0..600 {
        s.server()
            .state()
            .records
            .flush(Duration::from_secs(10))
            .await;
        let (status, got) = s
            .call(Method::GET, "/v1/functions/capital/stats", &t, None)
            .await;
        assert_eq!(status, 200, "{got}");
        stats = got;
        let v2 = stats["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"] == 2);
        if v2.is_some_and(|v| v["shadow"]["runs"] == mirrored) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let versions = stats["versions"].as_array().unwrap();
    let v2 = versions
        .iter()
        .find(|v| v["version"] == 2)
        .expect("version 2 listed");
    let shadow = &v2["shadow"];
    assert_eq!(shadow["runs"], mirrored, "{stats}");
    // A shadow is best-effort: one may give its slot up when every slot is taken
    // (`overloaded`); the rest are compared.
    let given_up: u64 = shadow["errors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(code, n)| {
            assert_eq!(code, "overloaded", "{stats}");
            n.as_u64().unwrap()
        })
        .sum();
    let compared = shadow["compared"].as_u64().unwrap();
    assert_eq!(compared + given_up, mirrored as u64, "{stats}");
    assert!(compared * 2 >= mirrored as u64, "{stats}");
    assert_eq!(shadow["primary_versions"], json!([1]), "{stats}");
    let (exact, rouge) = (
        shadow["exact_match"].as_f64().unwrap(),
        shadow["rouge_l"].as_f64().unwrap(),
    );
    assert!(
        (0.0..=1.0).contains(&exact) && (0.0..=1.0).contains(&rouge),
        "{stats}"
    );
    assert!(rouge >= exact, "an exact match scores 1: {stats}");
    // Shadows are not traffic: version 1 counts the 40 calls, version 2 none.
    let v1 = versions.iter().find(|v| v["version"] == 1).unwrap();
    assert_eq!(v1["invocations"], 40, "{stats}");
    assert_eq!(v2["invocations"], 0, "{stats}");
    assert_eq!(v2["aliases"], json!(["prod"]), "{stats}");
    // Each shadow is recorded beside its primary, and counted in usage as a shadow.
    let (_, page) = s
        .call(
            Method::GET,
            "/v1/invocations?function=capital&limit=100",
            &t,
            None,
        )
        .await;
    let records = page["invocations"].as_array().unwrap();
    let shadows: Vec<&Value> = records.iter().filter(|r| r["mode"] == "shadow").collect();
    assert_eq!(shadows.len(), mirrored, "{page}");
    for record in &shadows {
        assert_eq!(
            (record["version"].as_u64(), record["alias"].as_str()),
            (Some(2), Some("prod")),
            "{record}"
        );
        let of = record["shadow_of"].as_str().unwrap();
        assert!(primaries.iter().any(|p| p == of), "{record}");
    }
    let (_, usage) = s
        .call(Method::GET, "/v1/usage?group_by=mode", &t, None)
        .await;
    let by_mode = usage["usage"].as_array().unwrap();
    let shadow_usage = by_mode
        .iter()
        .find(|u| u["key"] == "shadow")
        .expect("shadow usage");
    assert_eq!(shadow_usage["invocations"], mirrored, "{usage}");
    s.stop().await;
}

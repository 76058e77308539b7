//! The [engine] acceptance tests, with the real model: continuous batching without
//! cross-talk, streaming and cancellation, overload, deadlines, structured output, scaling and
//! the memory budget, prefix reuse and prewarming.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use genrt_tests::{model_path, token, Db, TempDir, TestServer, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

/// A server whose single model is configured by `tune`.
async fn server(tune: impl FnOnce(&mut genrt_actors::ModelConfig), budget_mb: u64) -> TestServer {
    let data = TempDir::new("genrt-engine");
    let mut config = TestServer::config(&Db::Sqlite, &data);
    config.models.truncate(1);
    tune(&mut config.models[0]);
    config.engine.memory_budget_mb = budget_mb;
    TestServer::start_with(config, data).await
}

async fn deploy(s: &TestServer, t: &str, definition: Value) {
    let (status, body) = s.deploy(t, definition).await;
    assert!(status == 201 || status == 200, "{body}");
}

fn writer(extra: Value) -> Value {
    let mut def = json!({
        "name": "writer",
        "model": MODEL,
        "prompt": "{{ prompt }}",
        "params": {"temperature": 0, "max_tokens": 16},
        "cache": {"enabled": false}
    });
    for (k, v) in extra.as_object().unwrap() {
        def[k] = v.clone();
    }
    def
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_streams_match_their_solo_runs() {
    let s = server(
        |m| {
            m.slots = 16;
            m.n_ctx = 256;
        },
        0,
    )
    .await;
    let t = token("acme");
    deploy(&s, &t, writer(json!({}))).await;
    let subjects = [
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
    let prompts: Vec<String> = subjects
        .iter()
        .map(|s| format!("Write a sentence about {s}."))
        .collect();

    let mut alone = Vec::new();
    for p in &prompts {
        let (status, out) = s
            .invoke(&t, "writer", json!({"input": {"prompt": p}}))
            .await;
        assert_eq!(status, 200, "{out}");
        alone.push(out["output"]["text"].as_str().unwrap().to_owned());
    }

    let started = Instant::now();
    let streams = prompts
        .iter()
        .map(|p| s.stream(&t, "writer", json!({"input": {"prompt": p}})));
    let together = futures_util::future::join_all(streams).await;
    let elapsed = started.elapsed();
    for (i, streamed) in together.iter().enumerate() {
        assert_eq!(streamed.status, 200);
        let done = streamed
            .done
            .as_ref()
            .unwrap_or_else(|| panic!("stream {i} ended without done: {streamed:?}"));
        assert_eq!(
            streamed.text(),
            alone[i],
            "stream {i} ({}) differs from its solo run: cross-talk between sequences",
            prompts[i]
        );
        assert!(done["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
    // Slots are released by messages from the engine thread, just after the answers.
    s.eventually(
        "every slot to be free again",
        Duration::from_secs(2),
        || async { s.model(&t, MODEL).await["busy_slots"] == 0 },
    )
    .await;
    eprintln!("16 streams together took {elapsed:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_frees_its_slot() {
    let s = server(
        |m| {
            m.slots = 2;
            m.n_ctx = 1024;
        },
        0,
    )
    .await;
    let t = token("acme");
    deploy(
        &s,
        &t,
        writer(json!({"params": {"temperature": 0, "max_tokens": 900, "ignore_eos": true}})),
    )
    .await;
    let (status, mut events) = s
        .open_stream(&t, "writer", json!({"input": {"prompt": "Tell a story."}}))
        .await;
    assert_eq!(status, 200);
    let first = events.next().await.expect("a first event");
    assert_eq!(first.event, "token");
    assert_eq!(s.model(&t, MODEL).await["busy_slots"], 1);
    let dropped_at = Instant::now();
    drop(events);
    // 900 tokens would take several seconds; the slot must be free long before.
    s.eventually("the slot to be freed", Duration::from_secs(3), || async {
        s.model(&t, MODEL).await["busy_slots"] == 0
    })
    .await;
    eprintln!("slot freed {:?} after the disconnect", dropped_at.elapsed());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_answered_at_once_with_503() {
    let s = server(
        |m| {
            m.slots = 1;
            m.max_replicas = 1;
            m.queue_capacity = 1;
            m.n_ctx = 256;
        },
        0,
    )
    .await;
    let t = token("acme");
    deploy(
        &s,
        &t,
        writer(json!({"params": {"temperature": 0, "max_tokens": 48, "ignore_eos": true}})),
    )
    .await;
    // Warm: the replica is running, so one call runs, one waits, the rest are refused.
    let (status, _) = s
        .invoke(
            &t,
            "writer",
            json!({"input": {"prompt": "Warm up."}, "params": {"max_tokens": 1}}),
        )
        .await;
    assert_eq!(status, 200);
    s.eventually(
        "the warm-up's slot to be free",
        Duration::from_secs(2),
        || async { s.model(&t, MODEL).await["busy_slots"] == 0 },
    )
    .await;
    let calls = (0..6).map(|i| {
        let s = &s;
        let t = &t;
        async move {
            let response = s
                .request(
                    Method::POST,
                    "/v1/functions/writer/invoke",
                    Some(t),
                    Some(json!({"input": {"prompt": format!("Count to {i}.")}})),
                )
                .await;
            let retry_after = response.headers().get("retry-after").is_some();
            let (status, body) = genrt_tests::read(response).await;
            (status, body, retry_after)
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let overloaded: Vec<_> = results.iter().filter(|(s, _, _)| *s == 503).collect();
    let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
    assert!(
        !overloaded.is_empty(),
        "some calls were refused: {results:?}"
    );
    assert!(
        ok >= 2,
        "the running and the queued call succeed: {results:?}"
    );
    for (_, body, retry_after) in overloaded {
        assert_eq!(body["error"]["code"], "overloaded");
        assert!(*retry_after);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_is_enforced_while_generating() {
    let s = server(|m| m.n_ctx = 1024, 0).await;
    let t = token("acme");
    deploy(&s, &t, writer(json!({"timeout_s": 1, "params": {"temperature": 0, "max_tokens": 900, "ignore_eos": true}}))).await;
    let started = Instant::now();
    let (status, body) = s
        .invoke(&t, "writer", json!({"input": {"prompt": "Tell a story."}}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("timeout")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    s.eventually("the slot to be freed", Duration::from_secs(2), || async {
        s.model(&t, MODEL).await["busy_slots"] == 0
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn structured_output_parses_and_validates_fifty_times_out_of_fifty() {
    let s = server(
        |m| {
            m.slots = 10;
            m.n_ctx = 1024;
        },
        0,
    )
    .await;
    let t = token("acme");
    let schema = json!({
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 32},
            "lede": {"type": "string", "maxLength": 64},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3}
        },
        "required": ["title", "lede", "tags"],
        "additionalProperties": false
    });
    deploy(
        &s,
        &t,
        json!({
            "name": "brief",
            "model": MODEL,
            "system": "You are a news editor. Answer with JSON only.",
            "prompt": "Write a news brief about {{ topic }}.",
            // Room for the worst case: every character a 6-byte \u escape of several tokens.
        "params": {"temperature": 0.7, "max_tokens": 900},
            "output": {"format": "json", "json_schema": schema},
            "cache": {"enabled": false},
            // Validity is what is tested, not speed: ten sampled briefs of up to 900 tokens at
            // once on two shared cores can outlast the default 60 s.
            "timeout_s": 300
        }),
    )
    .await;
    let topics = [
        "a storm",
        "an election",
        "a new bridge",
        "a football final",
        "a museum opening",
    ];
    let mut valid = 0;
    for round in 0..5 {
        let calls = (0..10).map(|i| {
            s.invoke(
                &t,
                "brief",
                json!({"input": {"topic": topics[(round + i) % topics.len()]}}),
            )
        });
        for (status, out) in futures_util::future::join_all(calls).await {
            assert_eq!(status, 200, "{out}");
            let parsed = &out["output"]["json"];
            let reparsed: Value =
                serde_json::from_str(out["output"]["text"].as_str().unwrap().trim()).unwrap();
            assert_eq!(&reparsed, parsed);
            assert!(
                parsed["title"].is_string() && parsed["lede"].is_string(),
                "{parsed}"
            );
            let tags = parsed["tags"].as_array().unwrap();
            assert!((1..=3).contains(&tags.len()), "{parsed}");
            assert_eq!(parsed.as_object().unwrap().len(), 3, "{parsed}");
            valid += 1;
        }
    }
    assert_eq!(valid, 50);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_scale_up_under_load_and_back_to_zero() {
    let s = server(
        |m| {
            m.slots = 2;
            m.max_replicas = 2;
            m.n_ctx = 256;
            m.upscale_delay_ms = 0;
            m.downscale_delay_s = 1;
            m.idle_timeout_s = 1;
            m.threads = 1;
        },
        0,
    )
    .await;
    let t = token("acme");
    deploy(
        &s,
        &t,
        writer(json!({"params": {"temperature": 0, "max_tokens": 96, "ignore_eos": true}})),
    )
    .await;
    let load = futures_util::future::join_all((0..6).map(|i| {
        s.invoke(
            &t,
            "writer",
            json!({"input": {"prompt": format!("List {i} animals.")}}),
        )
    }));
    let watch = async {
        let mut most = 0;
        for _ in 0..100 {
            let m = s.model(&t, MODEL).await;
            most = most.max(m["replicas"].as_u64().unwrap());
            if most >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        most
    };
    let (results, most) = tokio::join!(load, watch);
    assert!(
        results.iter().all(|(status, _)| *status == 200),
        "{results:?}"
    );
    assert_eq!(most, 2, "a second replica was started under load");
    let m = s.model(&t, MODEL).await;
    assert!(m["last_scaling"]["reason"].is_string(), "{m}");
    s.eventually("scale to zero", Duration::from_secs(15), || async {
        let m = s.model(&t, MODEL).await;
        m["replicas"] == 0 && m["state"] == "unloaded" && m["memory_bytes"] == 0
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_over_the_memory_budget_is_refused_with_its_reason() {
    // Room for the weights but not for a replica's KV cache.
    let weights_mb = std::fs::metadata(model_path()).unwrap().len() / (1024 * 1024) + 1;
    let s = server(
        |m| {
            m.slots = 16;
            m.n_ctx = 4096;
        },
        weights_mb + 2,
    )
    .await;
    let t = token("acme");
    deploy(&s, &t, writer(json!({}))).await;
    let response = s
        .request(
            Method::POST,
            "/v1/functions/writer/invoke",
            Some(&t),
            Some(json!({"input": {"prompt": "Hi."}})),
        )
        .await;
    assert!(response.headers().get("retry-after").is_some());
    let (status, body) = genrt_tests::read(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("insufficient_memory")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("MiB") && message.contains("replica"),
        "{message}"
    );
    let (_, m) = s
        .call(Method::GET, &format!("/v1/models/{MODEL}"), &t, None)
        .await;
    assert!(
        m["last_scaling"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("refused"),
        "{m}"
    );
    assert_eq!(m["replicas"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_system_prompt_is_prefilled_once_per_replica() {
    let s = server(|m| m.n_ctx = 512, 0).await;
    let t = token("acme");
    let style = "House style: short factual sentences; no opinions; no exclamation marks; \
                 name people and places precisely; prefer active voice; avoid jargon; \
                 end with the single most important fact.";
    deploy(&s, &t, writer(json!({"system": style}))).await;
    let (_, first) = s
        .invoke(
            &t,
            "writer",
            json!({"input": {"prompt": "A fire at a mill."}}),
        )
        .await;
    let (_, second) = s
        .invoke(
            &t,
            "writer",
            json!({"input": {"prompt": "A bridge reopens."}}),
        )
        .await;
    assert_eq!(first["usage"]["cached_prompt_tokens"], 0, "{first}");
    let cached = second["usage"]["cached_prompt_tokens"].as_u64().unwrap();
    assert!(
        cached >= 30,
        "the system prompt came from the prefix cache: {second}"
    );
    assert!(cached < second["usage"]["prompt_tokens"].as_u64().unwrap());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarming_fills_the_cache_in_the_background() {
    let s = server(|m| m.n_ctx = 256, 0).await;
    let t = token("acme");
    deploy(&s, &t, writer(json!({"cache": {"ttl_s": 600}}))).await;
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/functions/writer/prewarm",
            &t,
            Some(json!({"inputs": [{"prompt": "Hot topic one."}, {"prompt": "Hot topic two."}]})),
        )
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(2)),
        "{body}"
    );
    s.eventually(
        "both results to be cached",
        Duration::from_secs(20),
        || async {
            let (_, a) = s
                .invoke(&t, "writer", json!({"input": {"prompt": "Hot topic two."}}))
                .await;
            a["cache_hit"] == true
        },
    )
    .await;
    let (_, one) = s
        .invoke(&t, "writer", json!({"input": {"prompt": "Hot topic one."}}))
        .await;
    assert_eq!(one["cache_hit"], true, "{one}");
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/functions/writer/prewarm",
            &t,
            Some(json!({"inputs": []})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    s.stop().await;
}

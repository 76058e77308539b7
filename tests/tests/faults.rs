//! Supervision under injected faults and the limits on one invocation, through the real app
//! on the real model: an engine that hangs (caught by the replica watchdog), model files that
//! are missing, truncated or garbage (that model fails with its cause, the others serve), a
//! template that fails at render time (422, the function keeps serving), and the server-wide
//! limits (input size, `max_tokens` cap, prompt against the context, streams per tenant).
//! An engine panic is covered by `e2e.rs` (`an_engine_panic_is_survived`).
//!
//! Faults are injected with the `X-Genrt-Fault` header, which only a server started with
//! `server.fault_injection` honours (the test server turns it on; it is refused off loopback).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::StreamExt;
use genrt_tests::{read, token, Db, TempDir, TestServer, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

/// The watchdog's threshold in the hang test: far above one decode step of this model even on
/// a busy machine, short enough to keep the test quick.
const HANG_TIMEOUT_S: u64 = 4;

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn greeting(name: &str, model: &str) -> Value {
    json!({
        "name": name,
        "model": model,
        "prompt": "Say hi to {{ name }}.",
        "params": {"max_tokens": 8, "temperature": 0},
        "cache": {"enabled": false}
    })
}

/// One replica thread per model, as on a small shared machine.
fn one_thread(config: &mut genrt_runtime::Config) {
    for m in &mut config.models {
        m.threads = 1;
        m.idle_timeout_s = 300;
    }
}

async fn invoke_with_fault(s: &TestServer, t: &str, fault: &str, input: Value) -> (u16, Value) {
    let response = s
        .client
        .post(format!("{}/v1/functions/greeting/invoke", s.base))
        .bearer_auth(t)
        .header("x-genrt-fault", fault)
        .json(&json!({ "input": input }))
        .send()
        .await
        .expect("request sent");
    read(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_is_caught_by_the_watchdog_and_replaced() {
    let s = TestServer::start_adjusted(Db::Sqlite, |c| {
        one_thread(c);
        c.supervision.engine_hang_timeout_s = HANG_TIMEOUT_S;
    })
    .await;
    let t = token("acme");
    let (status, body) = s.deploy(&t, greeting("greeting", MODEL)).await;
    assert_eq!(status, 201, "{body}");
    // Warm the model, so that the timings below measure the hang, not a load.
    let (status, body) = s
        .invoke(&t, "greeting", json!({"input": {"name": "Ann"}}))
        .await;
    assert_eq!(status, 200, "{body}");

    // One invocation hangs its engine thread; three others share that replica. Every one of
    // them must be answered (none left waiting on a thread that will never answer), the hung
    // one with the retryable `replica_failed`, within the watchdog's time and not the
    // function's 30 s timeout.
    let started = Instant::now();
    let hung = invoke_with_fault(&s, &t, "engine-hang", json!({"name": "Hung"}));
    let others = join_all((0..3).map(|i| {
        let (s, t) = (&s, &t);
        async move {
            // Sent once the hang has started, so that they share the stuck replica.
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.invoke(t, "greeting", json!({"input": {"name": format!("P{i}")}}))
                .await
        }
    }));
    let ((hung_status, hung_body), others) = tokio::join!(hung, others);
    let took = started.elapsed();
    assert_eq!(hung_status, 503, "{hung_body}");
    assert_eq!(error_code(&hung_body), "replica_failed", "{hung_body}");
    assert!(
        hung_body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("hung")),
        "{hung_body}"
    );
    assert!(
        took >= Duration::from_secs(HANG_TIMEOUT_S) && took < Duration::from_secs(25),
        "the hang was caught after {took:?}, watchdog {HANG_TIMEOUT_S} s"
    );
    for (status, body) in &others {
        // Either served (before the hang, or by the new replica) or told to retry.
        assert!(
            *status == 200 || (*status == 503 && error_code(body) == "replica_failed"),
            "{status} {body}"
        );
    }

    // The replica was replaced: the restart is counted and the model serves again.
    s.eventually(
        "the hung replica to be replaced",
        Duration::from_secs(30),
        || async { s.model(&t, MODEL).await["replica_restarts"] == 1 },
    )
    .await;
    let (status, body) = s
        .invoke(&t, "greeting", json!({"input": {"name": "Bob"}}))
        .await;
    assert_eq!(status, 200, "the new replica serves: {body}");
    assert!(!body["output"]["text"].as_str().unwrap().is_empty());
    let model = s.model(&t, MODEL).await;
    assert_eq!(model["state"], "ready", "{model}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_corrupt_model_fails_alone_with_its_cause() {
    let files = TempDir::new("genrt-bad-models");
    let real = std::fs::read(genrt_tests::model_path()).expect("the model file");
    let truncated = files.0.join("truncated.gguf");
    std::fs::write(&truncated, &real[..real.len() / 10]).unwrap();
    let garbage = files.0.join("garbage.gguf");
    std::fs::write(&garbage, vec![0x5au8; 64 * 1024]).unwrap();
    let removed = files.0.join("removed.gguf");
    std::fs::write(&removed, &real).unwrap();
    let broken = [
        ("broken-truncated", truncated.clone()),
        ("broken-garbage", garbage.clone()),
        ("broken-removed", removed.clone()),
    ];
    let s = TestServer::start_adjusted(Db::Sqlite, |c| {
        one_thread(c);
        for (id, path) in &broken {
            let mut m = genrt_actors::ModelConfig::new(id, path);
            m.n_ctx = 512;
            m.threads = 1;
            c.models.push(m);
        }
    })
    .await;
    // Removed after the start, as an operator's mistake or a lost volume would.
    std::fs::remove_file(&removed).unwrap();
    let t = token("acme");
    for (id, _) in &broken {
        let (status, body) = s.deploy(&t, greeting(id, id)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = s.deploy(&t, greeting("good", MODEL)).await;
    assert_eq!(status, 201, "{body}");

    // The broken models and the good one are called together; only the broken ones fail.
    let calls = join_all(
        broken
            .iter()
            .map(|(id, _)| *id)
            .chain(["good"])
            .map(|name| {
                let (s, t) = (&s, &t);
                async move {
                    let r = s.invoke(t, name, json!({"input": {"name": "Ann"}})).await;
                    (name, r)
                }
            }),
    )
    .await;
    for (name, (status, body)) in calls {
        if name == "good" {
            assert_eq!(status, 200, "the good model is unaffected: {body}");
            continue;
        }
        assert_eq!(status, 503, "{name}: {body}");
        assert_eq!(error_code(&body), "model_unavailable", "{name}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(name),
            "{name}: the message names the model: {body}"
        );
    }
    for (id, path) in &broken {
        let model = s.model(&t, id).await;
        assert_eq!(model["state"], "failed", "{model}");
        let cause = model["error"].as_str().unwrap_or_default();
        assert!(
            !cause.is_empty(),
            "{id}: a failed model shows its cause: {model}"
        );
        assert!(
            cause.contains(&path.display().to_string()) || cause.contains("load"),
            "{id}: the cause says what failed: {cause}"
        );
    }
    assert_ne!(s.model(&t, MODEL).await["state"], "failed");
    // Still serving after the failures, and the failures were not recorded as successes.
    let (status, body) = s
        .invoke(&t, "good", json!({"input": {"name": "Bob"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_failing_at_render_time_is_a_422_and_the_function_keeps_serving() {
    let s = TestServer::start_adjusted(Db::Sqlite, one_thread).await;
    let t = token("acme");
    // Compiles (so the deploy passes), but fails when rendered with `fail` set: `nowhere`
    // is undefined, and the runtime renders undefined attributes strictly.
    let (status, body) = s
        .deploy(
            &t,
            json!({
                "name": "fragile",
                "model": MODEL,
                "prompt": "{% if fail %}{{ nowhere.deeper }}{% endif %}Say hi to {{ name }}.",
                "params": {"max_tokens": 8, "temperature": 0},
                "cache": {"enabled": false}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Bad and good inputs interleaved, at once, on the same function actor.
    let results = join_all((0..6).map(|i| {
        let (s, t) = (&s, &t);
        async move {
            let fail = i % 2 == 0;
            let r = s
                .invoke(
                    t,
                    "fragile",
                    json!({"input": {"name": format!("N{i}"), "fail": fail}}),
                )
                .await;
            (fail, r)
        }
    }))
    .await;
    for (fail, (status, body)) in results {
        if fail {
            assert_eq!(status, 422, "{body}");
            assert_eq!(error_code(&body), "template_error", "{body}");
            assert_eq!(body["error"]["field"], "prompt", "{body}");
        } else {
            assert_eq!(
                status, 200,
                "the function keeps serving good inputs: {body}"
            );
        }
    }
    let (status, body) = s
        .invoke(
            &t,
            "fragile",
            json!({"input": {"name": "Zed", "fail": false}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Refused invocations are not recorded; the four good ones are (written behind the
    // response, hence the wait).
    s.eventually("the four records", Duration::from_secs(10), || async {
        let (status, page) = s
            .call(Method::GET, "/v1/invocations?function=fragile", &t, None)
            .await;
        assert_eq!(status, 200, "{page}");
        let listed = page["invocations"].as_array().unwrap();
        assert!(listed.len() <= 4, "{page}");
        assert!(listed.iter().all(|r| r["status"] == "succeeded"), "{page}");
        listed.len() == 4
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_on_one_invocation_answer_with_clear_errors() {
    let s = TestServer::start_adjusted(Db::Sqlite, |c| {
        one_thread(c);
        c.server.max_input_bytes = 8 * 1024;
        c.server.max_tokens = 1000;
        c.tenancy.max_concurrent_streams = 1;
        // A hung stream below must stay open until the test closes it.
        c.supervision.engine_hang_timeout_s = 0;
    })
    .await;
    let t = token("acme");
    let (status, body) = s.deploy(&t, greeting("greeting", MODEL)).await;
    assert_eq!(status, 201, "{body}");
    let refused = [
        // Input above max_input_bytes, though the body is within body_limit_bytes (64 KiB).
        (
            json!({"input": {"name": "x".repeat(9 * 1024)}}),
            413,
            "payload_too_large",
            Some("input"),
        ),
        // max_tokens above the server's cap, for sync and async alike.
        (
            json!({"input": {"name": "A"}, "params": {"max_tokens": 2000}}),
            422,
            "invalid_params",
            Some("params.max_tokens"),
        ),
        (
            json!({"input": {"name": "A"}, "params": {"max_tokens": 2000}, "mode": "async"}),
            422,
            "invalid_params",
            Some("params.max_tokens"),
        ),
        // Under the cap but beyond the model's context (n_ctx 512).
        (
            json!({"input": {"name": "A"}, "params": {"max_tokens": 600}}),
            422,
            "max_tokens_exceeds_context",
            Some("params.max_tokens"),
        ),
        // A prompt longer than the context, though the input is under max_input_bytes.
        (
            json!({"input": {"name": "lorem ipsum dolor sit amet ".repeat(250)}}),
            422,
            "prompt_too_long",
            None,
        ),
    ];
    for (body, status, code, field) in refused {
        let (got, answer) = s.invoke(&t, "greeting", body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(error_code(&answer), code, "{answer}");
        assert!(
            !answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{answer}"
        );
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"], field, "{answer}");
        }
    }
    // Refused work leaves nothing behind.
    let (_, page) = s
        .call(Method::GET, "/v1/invocations?function=greeting", &t, None)
        .await;
    assert_eq!(page["invocations"].as_array().unwrap().len(), 0, "{page}");

    // Streams per tenant: one open (its engine held by an injected hang, so it stays open),
    // the second refused with 429 and Retry-After, another tenant unaffected; once the first
    // is closed, its place is free again.
    let open = |tenant_token: String, fault: Option<&'static str>| {
        let mut request = s
            .client
            .post(format!("{}/v1/functions/greeting/invoke", s.base))
            .bearer_auth(tenant_token)
            .json(&json!({"input": {"name": "S"}, "stream": true}));
        if let Some(fault) = fault {
            request = request.header("x-genrt-fault", fault);
        }
        request.send()
    };
    let first = open(t.clone(), Some("engine-hang")).await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let second = open(t.clone(), None).await.unwrap();
    assert_eq!(second.status().as_u16(), 429);
    assert!(second.headers().get("retry-after").is_some());
    let (_, body) = read(second).await;
    assert_eq!(error_code(&body), "concurrency_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("streams"),
        "{body}"
    );
    drop(first);
    // The hung stream's client is gone: its places are freed and its engine released.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = open(t.clone(), None).await.unwrap();
        if response.status().as_u16() == 200 {
            let mut events = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
            let mut done = false;
            while let Some(Ok(event)) = events.next().await {
                if event.event == "done" {
                    done = true;
                }
            }
            assert!(done, "the stream after the freed place completes");
            break;
        }
        assert_eq!(response.status().as_u16(), 429);
        assert!(
            Instant::now() < deadline,
            "the closed stream's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.stop().await;
}

//! Acceptance for [invocation]: every entry point goes through one admission decision, so a
//! request that breaks a check is refused with the same code whichever way it came in (one
//! table, mode × check); prewarming is admitted per tenant and counted like any invocation;
//! and a template that would hang the server is refused quickly while other tenants are
//! served. Real server, real model, SQLite.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use genrt_tests::node::node_sign;
use genrt_tests::{admin_token, token, Db, TestServer, Turns, FASHION_MODEL, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

/// The template-bomb test measures the process's RSS and the bystander's latency: it runs
/// with no other test of this binary loading a model beside it (a replica loading at the
/// same moment added 168 MiB to the process once, on CI).
static TURNS: Turns = Turns::new();

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

const MAX_INPUT_BYTES: usize = 1024;
const MAX_TOKENS_CAP: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Stream,
    Async,
    Batch,
    Trigger,
    Evaluate,
    Prewarm,
    OpenAi,
    OpenAiStream,
}

const MODES: [Mode; 9] = [
    Mode::Sync,
    Mode::Stream,
    Mode::Async,
    Mode::Batch,
    Mode::Trigger,
    Mode::Evaluate,
    Mode::Prewarm,
    Mode::OpenAi,
    Mode::OpenAiStream,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    AllowedModels,
    Budget,
    InputSize,
    MaxTokensCap,
    Concurrency,
}

/// The documented answer to a request of `mode` that breaks `check`: (status, code). The
/// OpenAI-compatible routes answer validation failures 400, as OpenAI does. Queued modes take
/// no concurrency place when accepted (the queue bounds them when they run), so they are
/// accepted.
fn expected(mode: Mode, check: Check) -> (u16, &'static str) {
    let openai = matches!(mode, Mode::OpenAi | Mode::OpenAiStream);
    match check {
        Check::AllowedModels => (403, "model_not_allowed"),
        Check::Budget => (429, "quota_exhausted"),
        Check::InputSize => (413, "payload_too_large"),
        Check::MaxTokensCap if openai => (400, "invalid_params"),
        Check::MaxTokensCap => (422, "invalid_params"),
        Check::Concurrency => match mode {
            Mode::Async | Mode::Batch | Mode::Trigger => (202, ""),
            _ => (429, "concurrency_limited"),
        },
    }
}

/// Creates a tenant with `settings`.
async fn tenant(s: &TestServer, id: &str, settings: Value) {
    let mut create = settings;
    create["id"] = json!(id);
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/admin/tenants",
            &admin_token(),
            Some(create),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn patch_tenant(s: &TestServer, id: &str, settings: Value) {
    let (status, body) = s
        .call(
            Method::PATCH,
            &format!("/v1/admin/tenants/{id}"),
            &admin_token(),
            Some(settings),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The function every row invokes, and a trigger on it per `max_tokens` (triggers carry
/// their parameters).
struct Setup {
    token: String,
    trigger: (String, String),
    greedy_trigger: (String, String),
}

async fn setup(s: &TestServer, id: &str) -> Setup {
    let t = token(id);
    let (status, body) = s
        .deploy(
            &t,
            json!({"name": "f", "model": MODEL, "prompt": "Say {{ word }}.",
                   "params": {"max_tokens": 4, "temperature": 0}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut triggers = Vec::new();
    for max_tokens in [4, MAX_TOKENS_CAP + 1] {
        let (status, trigger) = s
            .call(
                Method::POST,
                "/v1/functions/f/triggers",
                &t,
                Some(json!({"input_map": {"word": "/word"}, "params": {"max_tokens": max_tokens}})),
            )
            .await;
        assert_eq!(status, 201, "{trigger}");
        triggers.push((
            trigger["url"].as_str().unwrap().to_owned(),
            trigger["secret"].as_str().unwrap().to_owned(),
        ));
    }
    let greedy_trigger = triggers.pop().unwrap();
    Setup {
        token: t,
        trigger: triggers.pop().unwrap(),
        greedy_trigger,
    }
}

/// Sends one request of `mode` with `word` as the input and `max_tokens` as the parameter.
async fn send(
    s: &TestServer,
    setup: &Setup,
    mode: Mode,
    word: &str,
    max_tokens: u32,
) -> (u16, Value) {
    let t = &setup.token;
    let input = json!({"word": word});
    let params = json!({"max_tokens": max_tokens});
    let post = |path: &'static str, body: Value| s.call(Method::POST, path, t, Some(body));
    match mode {
        Mode::Sync => {
            post(
                "/v1/functions/f/invoke",
                json!({"input": input, "params": params}),
            )
            .await
        }
        Mode::Stream => {
            let response = s
                .build(Method::POST, "/v1/functions/f/invoke", t)
                .json(&json!({"input": input, "params": params, "stream": true}))
                .send()
                .await
                .unwrap();
            streamed_or_error(response).await
        }
        Mode::Async => {
            post(
                "/v1/functions/f/invoke",
                json!({"input": input, "params": params, "mode": "async"}),
            )
            .await
        }
        Mode::Batch => {
            post(
                "/v1/functions/f/batches",
                json!({"inputs": [input], "params": params}),
            )
            .await
        }
        Mode::Trigger => {
            let (url, secret) = if max_tokens > MAX_TOKENS_CAP {
                &setup.greedy_trigger
            } else {
                &setup.trigger
            };
            let payload = json!({"word": word}).to_string();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let msg = format!("msg_{}", uuid::Uuid::new_v4().simple());
            let mut req = s
                .client
                .post(format!("{}{url}", s.base))
                .header("content-type", "application/json");
            for (name, value) in node_sign(secret, &msg, now, &payload) {
                req = req.header(name, value);
            }
            genrt_tests::read(req.body(payload).send().await.unwrap()).await
        }
        Mode::Evaluate => {
            post(
                "/v1/functions/f/evaluate",
                json!({"cases": [{"input": input, "reference": "hello"}], "params": params}),
            )
            .await
        }
        Mode::Prewarm => {
            post(
                "/v1/functions/f/prewarm",
                json!({"inputs": [input], "params": params}),
            )
            .await
        }
        Mode::OpenAi | Mode::OpenAiStream => {
            let stream = mode == Mode::OpenAiStream;
            let response = s
                .build(Method::POST, "/openai/v1/chat/completions", t)
                .json(
                    &json!({"model": "f", "stream": stream, "max_tokens": max_tokens,
                              "messages": [{"role": "user", "content": word}]}),
                )
                .send()
                .await
                .unwrap();
            streamed_or_error(response).await
        }
    }
}

/// A refused stream answers JSON; an accepted one is read to its end and reported as 200.
async fn streamed_or_error(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    if status == 200 {
        let _ = response.bytes().await;
        return (200, json!({}));
    }
    genrt_tests::read(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_refuses_what_admission_forbids_with_the_documented_code() {
    let _turn = TURNS.shared().await;
    let s = TestServer::start_adjusted(Db::Sqlite, admission_limits).await;
    admission_table(s).await;
}

/// The same table on the fake engine: admission is above the engine, so it must not matter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_table_holds_on_the_fake_engine_too() {
    let _turn = TURNS.shared().await;
    let s = TestServer::start_fake(Db::Sqlite, admission_limits).await;
    admission_table(s).await;
}

fn admission_limits(c: &mut genrt_runtime::Config) {
    c.server.max_input_bytes = MAX_INPUT_BYTES;
    c.server.max_tokens = MAX_TOKENS_CAP;
    c.tenancy.rate_limit_rps = 0.0;
}

async fn admission_table(s: TestServer) {
    let checks = [
        Check::AllowedModels,
        Check::Budget,
        Check::InputSize,
        Check::MaxTokensCap,
        Check::Concurrency,
    ];
    for check in checks {
        let id = format!("{check:?}").to_lowercase();
        tenant(&s, &id, json!({})).await;
        let setup = setup(&s, &id).await;
        match check {
            Check::AllowedModels => {
                patch_tenant(&s, &id, json!({"allowed_models": [FASHION_MODEL]})).await;
            }
            Check::Concurrency => patch_tenant(&s, &id, json!({"max_concurrency": 1})).await,
            _ => {}
        }
        // What holds the tenant's place(s) while the row runs.
        let mut held = None;
        match check {
            Check::Budget => {
                // Spend some tokens, then make that the whole budget.
                let (status, body) = send(&s, &setup, Mode::Sync, "hello", 4).await;
                assert_eq!(status, 200, "{body}");
                let left = s
                    .server()
                    .state()
                    .records
                    .flush(Duration::from_secs(10))
                    .await;
                assert_eq!(left, 0);
                patch_tenant(&s, &id, json!({"monthly_token_budget": 1})).await;
            }
            Check::Concurrency => {
                // A stream whose engine hangs until its client leaves holds the one place.
                let response = s
                    .build(Method::POST, "/v1/functions/f/invoke", &setup.token)
                    .header("x-genrt-fault", "engine-hang")
                    .json(&json!({"input": {"word": "wait"}, "stream": true}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                held = Some(response);
            }
            _ => {}
        }
        for mode in MODES {
            let (word, max_tokens) = match check {
                Check::InputSize => ("x".repeat(MAX_INPUT_BYTES + 1), 4),
                Check::MaxTokensCap => ("hello".to_owned(), MAX_TOKENS_CAP + 1),
                _ => ("hello".to_owned(), 4),
            };
            if check == Check::Concurrency && mode == Mode::Prewarm {
                // Prewarming has a place of its own per tenant: hold it with a long prewarm.
                let inputs: Vec<Value> =
                    (0..50).map(|i| json!({"word": format!("w{i}")})).collect();
                let (status, body) = s
                    .call(
                        Method::POST,
                        "/v1/functions/f/prewarm",
                        &setup.token,
                        Some(json!({"inputs": inputs})),
                    )
                    .await;
                assert_eq!(status, 202, "{body}");
            }
            let (status, body) = send(&s, &setup, mode, &word, max_tokens).await;
            let (want_status, want_code) = expected(mode, check);
            assert_eq!(status, want_status, "{mode:?} × {check:?}: {body}");
            if !want_code.is_empty() {
                assert_eq!(error_code(&body), want_code, "{mode:?} × {check:?}: {body}");
            }
        }
        drop(held);
    }
    s.stop().await;
}

async fn prewarm(s: &TestServer, t: &str, inputs: Value) -> (u16, Value) {
    s.call(
        Method::POST,
        "/v1/functions/p/prewarm",
        t,
        Some(json!({"inputs": inputs})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_is_admitted_per_tenant_and_counted_like_any_invocation() {
    let _turn = TURNS.shared().await;
    let s = TestServer::start_adjusted(Db::Sqlite, |c| c.tenancy.rate_limit_rps = 0.0).await;
    tenant(&s, "restricted", json!({})).await;
    tenant(&s, "one", json!({})).await;
    tenant(&s, "two", json!({})).await;
    let def = json!({"name": "p", "model": MODEL, "prompt": "Say {{ word }}.",
                     "params": {"max_tokens": 4, "temperature": 0}});

    // A tenant not allowed the function's model (any more) cannot prewarm it.
    let r = token("restricted");
    assert_eq!(s.deploy(&r, def.clone()).await.0, 201);
    patch_tenant(&s, "restricted", json!({"allowed_models": [FASHION_MODEL]})).await;
    let (status, body) = prewarm(&s, &r, json!([{"word": "a"}])).await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "model_not_allowed"),
        "{body}"
    );

    // Prewarm tokens are recorded, appear in the usage, and count against the budget.
    let one = token("one");
    let two = token("two");
    for t in [&one, &two] {
        assert_eq!(s.deploy(t, def.clone()).await.0, 201);
    }
    let inputs: Vec<Value> = (0..3)
        .map(|i| json!({"word": format!("warm{i}")}))
        .collect();
    let (status, body) = prewarm(&s, &one, json!(inputs)).await;
    assert_eq!(status, 202, "{body}");
    // One tenant's prewarm does not block another's: each has its own place.
    let (status, body) = prewarm(&s, &two, json!([{"word": "x"}])).await;
    assert_eq!(status, 202, "{body}");
    // ...but a second one of the same tenant waits for its first.
    let (status, body) = prewarm(&s, &one, json!([{"word": "y"}])).await;
    assert_eq!(
        (status, error_code(&body)),
        (429, "concurrency_limited"),
        "{body}"
    );

    s.eventually(
        "prewarm usage recorded",
        Duration::from_secs(60),
        || async {
            s.server()
                .state()
                .records
                .flush(Duration::from_secs(5))
                .await;
            let (_, usage) = s.call(Method::GET, "/v1/usage", &one, None).await;
            usage["total"]["invocations"] == json!(3)
        },
    )
    .await;
    let (_, usage) = s.call(Method::GET, "/v1/usage", &one, None).await;
    let spent = usage["month_tokens"].as_u64().unwrap();
    assert!(spent > 0, "{usage}");
    let (_, list) = s
        .call(Method::GET, "/v1/invocations?limit=10", &one, None)
        .await;
    let records = list["invocations"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{list}");
    assert!(
        records
            .iter()
            .all(|r| r["mode"] == "prewarm" && r["status"] == "succeeded"),
        "{list}"
    );

    // The budget is what was spent: the next prewarm (and invocation) is refused.
    patch_tenant(&s, "one", json!({"monthly_token_budget": spent})).await;
    let (status, body) = prewarm(&s, &one, json!([{"word": "z"}])).await;
    assert_eq!(
        (status, error_code(&body)),
        (429, "quota_exhausted"),
        "{body}"
    );
    s.stop().await;
}

/// The template of the issue: nested loops of 100 MB strings.
const BOMB: &str = r#"{% for a in range(100000) %}{% for b in range(100000) %}{{ "x" * 100000000 }}{% endfor %}{% endfor %}"#;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_would_exhaust_the_server_is_refused_quickly_while_others_are_served() {
    let _turn = TURNS.alone().await;
    let s = TestServer::start_adjusted(Db::Sqlite, |c| c.tenancy.rate_limit_rps = 0.0).await;
    tenant(&s, "attacker", json!({})).await;
    tenant(&s, "bystander", json!({})).await;
    let attacker = token("attacker");
    let bystander = token("bystander");

    // Refused at deploy: it exceeds the limits whatever the input.
    let (status, body) = s
        .deploy(
            &attacker,
            json!({"name": "bomb", "model": MODEL, "prompt": BOMB}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "template_limit"),
        "{body}"
    );

    // One that exceeds them only with some inputs (`n` from the input, so nothing is folded
    // at compile time) is deployed, and refused when invoked with such an input.
    let input_bomb = r#"{% if n %}{% for a in range(100000) %}{% for b in range(100000) %}{{ "x" * n }}{% endfor %}{% endfor %}{% endif %}Say hi."#;
    let (status, body) = s
        .deploy(
            &attacker,
            json!({"name": "bomb", "model": MODEL, "prompt": input_bomb,
                                  "params": {"max_tokens": 4}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let big = json!({"n": 100_000_000});

    // The bystander's cached function, warmed.
    let (status, body) = s
        .deploy(
            &bystander,
            json!({"name": "cached", "model": MODEL, "prompt": "Say hi.",
                                   "params": {"max_tokens": 4, "temperature": 0}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = s.invoke(&bystander, "cached", json!({"input": {}})).await;
    assert_eq!(status, 200, "{body}");
    let before = rss_mib();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = {
        let (s, bystander, stop) = (&s, &bystander, stop.clone());
        async move {
            let mut latencies = Vec::new();
            let mut peak = 0f64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let (status, body) = s.invoke(bystander, "cached", json!({"input": {}})).await;
                latencies.push(started.elapsed());
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["cache_hit"], true, "{body}");
                peak = peak.max(rss_mib());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (latencies, peak)
        }
    };
    let attack = async {
        let started = Instant::now();
        let (status, body) = s.invoke(&attacker, "bomb", json!({"input": big})).await;
        let took = started.elapsed();
        assert_eq!(
            (status, error_code(&body)),
            (422, "template_limit"),
            "{body}"
        );
        assert!(took < Duration::from_secs(2), "answered in {took:?}");

        let started = Instant::now();
        let inputs: Vec<Value> = (0..100).map(|_| big.clone()).collect();
        let (status, body) = s
            .call(
                Method::POST,
                "/v1/functions/bomb/batches",
                &attacker,
                Some(json!({"inputs": inputs})),
            )
            .await;
        let took = started.elapsed();
        assert_eq!(
            (status, error_code(&body)),
            (422, "template_limit"),
            "{body}"
        );
        assert_eq!(body["error"]["field"], "inputs[0].prompt", "{body}");
        assert!(took < Duration::from_secs(2), "answered in {took:?}");
        // Several at once, from the sync route too: the version is now refused at once, so
        // that it cannot stop another render thread.
        let started = Instant::now();
        let results =
            join_all((0..4).map(|_| s.invoke(&attacker, "bomb", json!({"input": big})))).await;
        for (status, body) in results {
            assert_eq!(
                (status, error_code(&body)),
                (422, "template_limit"),
                "{body}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let ((mut latencies, peak), ()) = tokio::join!(served, attack);
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    assert!(
        latencies.len() >= 10,
        "{} cached invocations",
        latencies.len()
    );
    assert!(
        p99 < Duration::from_millis(50),
        "cached p99 {p99:?} over {} calls",
        latencies.len()
    );
    assert!(
        peak - before < 100.0,
        "RSS {before:.0} MiB before, peak {peak:.0} MiB"
    );
    s.stop().await;
}

//! What a tenant sends that runs on shared threads: stop strings are matched on the engine
//! thread of a replica every tenant shares.

use std::time::{Duration, Instant};

use genrt_tests::{reply, token, Db, TestServer, MODEL};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_stop_string_is_refused_with_422_everywhere() {
    // A body large enough to carry it, so that the refusal is the stop string's own.
    let s = TestServer::start_adjusted(Db::Sqlite, |c| c.server.body_limit_bytes = 1 << 20).await;
    let t = token("acme");
    let huge = "x".repeat(100 * 1024);
    let (status, body) = s
        .deploy(
            &t,
            json!({"name": "greet", "model": MODEL, "prompt": "Say hi to {{ name }}.",
                   "params": {"max_tokens": 4, "temperature": 0}}),
        )
        .await;
    assert!(status == 201 || status == 200, "{body}");

    let (status, body) = s
        .invoke(
            &t,
            "greet",
            json!({"input": {"name": "Ada"}, "params": {"stop": [huge]}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], json!("invalid_params"), "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("256"),
        "{body}"
    );

    let (status, body) = s
        .deploy(
            &t,
            json!({"name": "greet2", "model": MODEL, "prompt": "Hi.",
                   "params": {"max_tokens": 4, "stop": [huge]}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let got = reply(
        s.build(Method::POST, "/openai/v1/chat/completions", &t)
            .json(&json!({"model": MODEL, "max_tokens": 4,
                          "messages": [{"role": "user", "content": "Hi"}], "stop": huge})),
    )
    .await;
    // The OpenAI routes answer as OpenAI does for a bad parameter: 400, naming it.
    assert_eq!(got.status, 400, "{:?}", got.body);
    assert_eq!(got.body["error"]["param"], json!("stop"), "{:?}", got.body);

    // At the cap it runs, and promptly: the matcher's cost does not grow with the text.
    let at_cap = "y".repeat(256);
    let started = Instant::now();
    let (status, body) = s
        .invoke(
            &t,
            "greet",
            json!({"input": {"name": "Ada"},
                   "params": {"stop": [at_cap.clone(), "z".repeat(256)], "max_tokens": 4}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(30));
    s.stop().await;
}

//! The prefix cache ([engine], #16) on the real model: greedy output with a cached prefix is
//! the output without one (chats of 1 to 20 turns, a prefix shared by concurrent sequences,
//! after evictions), and no route tells one tenant about another's cached prompts.
//!
//! One server, two registered models on the same GGUF: `MODEL` with the cache, and
//! `FASHION_MODEL` with `prefix_cache = false`, the reference.

use futures_util::StreamExt;
use genrt_tests::{token, Db, TempDir, TestServer, FASHION_MODEL, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

async fn server(tune: impl Fn(&mut genrt_actors::ModelConfig)) -> TestServer {
    let data = TempDir::new("genrt-prefix");
    let mut config = TestServer::config(&Db::Sqlite, &data);
    for m in &mut config.models {
        m.n_ctx = 2048;
        m.idle_timeout_s = 60;
        tune(m);
    }
    config.models[1].prefix_cache = false;
    TestServer::start_with(config, data).await
}

/// One chat completion: the answer, prompt tokens and cached prompt tokens.
async fn chat(s: &TestServer, t: &str, model: &str, messages: &[Value]) -> (String, u64, u64) {
    let (status, body) = s
        .call(
            Method::POST,
            "/openai/v1/chat/completions",
            t,
            Some(json!({"model": model, "messages": messages, "max_tokens": 16, "temperature": 0})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let usage = &body["usage"];
    (
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned(),
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_twenty_turn_chat_answers_as_without_the_cache_and_prefills_only_each_new_turn() {
    let s = server(|_| {}).await;
    let t = token("acme");
    let topics = [
        "rivers", "bread", "owls", "glass", "tides", "maps", "bees", "salt", "clocks", "moss",
        "kites", "iron", "fog", "ink", "wool", "caves", "tea", "sand", "bells", "ice",
    ];
    let mut messages =
        vec![json!({"role": "system", "content": "You answer in one short sentence."})];
    let mut previous_prompt = 0;
    for (turn, topic) in topics.iter().enumerate() {
        messages
            .push(json!({"role": "user", "content": format!("Tell me one fact about {topic}.")}));
        let (answer, prompt, cached) = chat(&s, &t, MODEL, &messages).await;
        let (reference, ref_prompt, ref_cached) = chat(&s, &t, FASHION_MODEL, &messages).await;
        assert_eq!(
            answer,
            reference,
            "turn {}: the cached prefix changed the answer",
            turn + 1
        );
        assert_eq!((prompt, ref_cached), (ref_prompt, 0), "turn {}", turn + 1);
        if turn > 0 {
            // The whole previous exchange is reused, up to where its answer's tokens and the
            // history's re-tokenised text part (a few tokens at most).
            assert!(
                cached + 8 >= previous_prompt && cached < prompt,
                "turn {}: {cached} of {prompt} prompt tokens cached, the previous prompt had {previous_prompt}",
                turn + 1
            );
        }
        previous_prompt = prompt;
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    let m = s.model(&t, MODEL).await;
    let cache = &m["prefix_cache"];
    assert!(cache["hits"].as_u64().unwrap() >= 19, "{m}");
    assert!(
        cache["cached_tokens"].as_u64().unwrap() * 2 > cache["prompt_tokens"].as_u64().unwrap(),
        "{m}"
    );
    s.stop().await;
}

async fn invoke_text(s: &TestServer, t: &str, function: &str, prompt: &str) -> (String, Value) {
    let (status, body) = s
        .invoke(t, function, json!({"input": {"prompt": prompt}}))
        .await;
    assert_eq!(status, 200, "{body}");
    (body["output"]["text"].as_str().unwrap().to_owned(), body)
}

/// A function answering questions on `document`; `tag` starts its system prompt (so that
/// prompts of different tags share no prefix).
fn reader(name: &str, model: &str, tag: &str, document: &str) -> Value {
    json!({
        "name": name,
        "model": model,
        "system": format!("{tag}Answer questions about this report in one sentence.\n\n{document}"),
        "prompt": "{{ prompt }}",
        "params": {"temperature": 0, "max_tokens": 24},
        "cache": {"enabled": false}
    })
}

const REPORT: &str = "The harbour of Vell handled 4.2 million tonnes of cargo last year, up from \
    3.9 million. Grain made up a third of it, timber a quarter, and the rest was machinery and \
    fuel. The new eastern quay opened in March; the old ferry terminal closed in October. Two \
    cranes were replaced, and dredging deepened the main channel to eleven metres.";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_questions_on_one_document_answer_as_without_the_cache() {
    let s = server(|m| m.slots = 8).await;
    let t = token("acme");
    for (name, model) in [("cached", MODEL), ("reference", FASHION_MODEL)] {
        let (status, body) = s.deploy(&t, reader(name, model, "", REPORT)).await;
        assert!(status == 200 || status == 201, "{body}");
    }
    let questions = [
        "How much cargo?",
        "What opened in March?",
        "How deep is the channel?",
        "What closed?",
        "What share was grain?",
        "How many cranes were replaced?",
        "What was last year's figure before?",
        "Name one other cargo.",
    ];
    // All at once on the cache (they share the document: one prefills it, the others copy it),
    // one at a time on the reference.
    let cached =
        futures_util::future::join_all(questions.iter().map(|q| invoke_text(&s, &t, "cached", q)))
            .await;
    let mut shared = 0;
    for (q, (text, body)) in questions.iter().zip(&cached) {
        let (reference, _) = invoke_text(&s, &t, "reference", q).await;
        assert_eq!(text, &reference, "{q}");
        if body["usage"]["cached_prompt_tokens"].as_u64().unwrap() >= 60 {
            shared += 1;
        }
    }
    assert!(
        shared >= questions.len() - 1,
        "the document was computed once: {cached:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefixes_evicted_and_reused_leave_the_answers_unchanged() {
    // One slot and one cache stream: every third document evicts one.
    let s = server(|m| {
        m.slots = 1;
        m.cache_streams = Some(1);
    })
    .await;
    let t = token("acme");
    let documents = [
        REPORT,
        "The village choir has forty members and rehearses on Thursdays in the old school hall; \
         its winter concert raised money for a new roof on the library.",
        "Route 9 buses now run every twelve minutes at peak times; the night service was cut to \
         hourly, and two stops near the hospital moved to the main entrance.",
    ];
    for (i, document) in documents.iter().enumerate() {
        for (name, model) in [(format!("c{i}"), MODEL), (format!("r{i}"), FASHION_MODEL)] {
            let (status, body) = s.deploy(&t, reader(&name, model, "", document)).await;
            assert!(status == 200 || status == 201, "{body}");
        }
    }
    let mut cached_calls = 0;
    for (round, i) in [0, 1, 2, 0, 2, 1, 1, 0].into_iter().enumerate() {
        let question = format!("Question {round}: what is the main point?");
        let (text, body) = invoke_text(&s, &t, &format!("c{i}"), &question).await;
        let (reference, _) = invoke_text(&s, &t, &format!("r{i}"), &question).await;
        assert_eq!(text, reference, "round {round}, document {i}: {body}");
        if body["usage"]["cached_prompt_tokens"].as_u64().unwrap() > 0 {
            cached_calls += 1;
        }
    }
    let m = s.model(&t, MODEL).await;
    assert!(m["prefix_cache"]["evictions"].as_u64().unwrap() >= 3, "{m}");
    // Rounds 4 (2 after 0, evicting 1), 6 (1 after 1) reuse; others find theirs evicted.
    assert!(cached_calls >= 2, "{m}");
    s.stop().await;
}

/// What each route reports as cached prompt tokens for `prompt`: on the function named after
/// the route, or on the model with a system prompt that starts with the route's name, so that
/// each route's prompts share nothing with another's.
async fn cached_by_route(s: &TestServer, t: &str, route: &str, prompt: &str) -> u64 {
    let system = format!("{route}: answer briefly.\n\n{REPORT}");
    match route {
        "invoke" => {
            let (_, body) = invoke_text(s, t, route, prompt).await;
            body["usage"]["cached_prompt_tokens"].as_u64().unwrap()
        }
        "stream" => {
            let streamed = s
                .stream(t, route, json!({"input": {"prompt": prompt}}))
                .await;
            let done = streamed.done.expect("a done event");
            done["usage"]["cached_prompt_tokens"].as_u64().unwrap()
        }
        "async" => {
            let (status, body) = s
                .call(
                    Method::POST,
                    "/v1/functions/async/invoke",
                    t,
                    Some(json!({"input": {"prompt": prompt}, "mode": "async"})),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            let path = format!(
                "/v1/invocations/{}",
                body["invocation_id"].as_str().unwrap()
            );
            for _ in 0..600 {
                let (_, record) = s.call(Method::GET, &path, t, None).await;
                if record["status"] == "succeeded" {
                    return record["usage"]["cached_prompt_tokens"].as_u64().unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("the async invocation did not finish");
        }
        "openai" => {
            let messages = [
                json!({"role": "system", "content": system}),
                json!({"role": "user", "content": prompt}),
            ];
            chat(s, t, MODEL, &messages).await.2
        }
        "openai_stream" => {
            let response = s
                .build(Method::POST, "/openai/v1/chat/completions", t)
                .json(&json!({
                    "model": MODEL, "stream": true, "stream_options": {"include_usage": true},
                    "max_tokens": 16, "temperature": 0,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": prompt},
                    ],
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            use eventsource_stream::Eventsource;
            let mut events = response.bytes_stream().eventsource();
            let mut cached = None;
            while let Some(Ok(event)) = events.next().await {
                if event.data == "[DONE]" {
                    break;
                }
                let chunk: Value = serde_json::from_str(&event.data).unwrap();
                if let Some(n) = chunk["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() {
                    cached = Some(n);
                }
            }
            cached.expect("a usage chunk")
        }
        other => unreachable!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tenant_cannot_observe_another_tenants_cached_prefixes_through_any_route() {
    let s = server(|m| m.slots = 4).await;
    let (a, b) = (token("acme"), token("globex"));
    for t in [&a, &b] {
        for route in ["invoke", "stream", "async"] {
            let (status, body) = s
                .deploy(t, reader(route, MODEL, &format!("{route}: "), REPORT))
                .await;
            assert!(status == 200 || status == 201, "{body}");
        }
    }
    for route in ["invoke", "stream", "async", "openai", "openai_stream"] {
        let prompt = format!("Via {route}: how much cargo?");
        // Tenant A fills the cache with the document...
        let first_a = cached_by_route(&s, &a, route, &prompt).await;
        let again_a = cached_by_route(&s, &a, route, &format!("{prompt} Again.")).await;
        assert!(
            again_a >= 60,
            "{route}: the route reports A's own reuse ({first_a}, {again_a})"
        );
        // ...and tenant B, sending the very same prompt, finds nothing of it.
        let b_same = cached_by_route(&s, &b, route, &prompt).await;
        assert_eq!(b_same, 0, "{route}: tenant B saw tenant A's cached prefix");
        // B's own second call reuses B's own prefix.
        let again_b = cached_by_route(&s, &b, route, &format!("{prompt} Again.")).await;
        assert!(again_b >= 60, "{route}: {again_b}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conversation_keeps_landing_on_the_replica_that_holds_its_history() {
    let s = server(|m| {
        m.slots = 2;
        m.min_replicas = 2;
        m.max_replicas = 2;
    })
    .await;
    let t = token("acme");
    let (status, body) = s
        .deploy(
            &t,
            json!({"name": "busy", "model": MODEL, "prompt": "{{ prompt }}",
                   "params": {"max_tokens": 400, "ignore_eos": true}, "cache": {"enabled": false}}),
        )
        .await;
    assert!(status == 200 || status == 201, "{body}");
    let mut messages = vec![
        json!({"role": "system", "content": format!("Answer briefly.\n\n{REPORT}")}),
        json!({"role": "user", "content": "What opened in March?"}),
    ];
    let (answer, ..) = chat(&s, &t, MODEL, &messages).await;
    s.eventually(
        "two replicas",
        std::time::Duration::from_secs(60),
        || async { s.model(&t, MODEL).await["replicas"] == 2 },
    )
    .await;
    for (turn, question) in [
        "What closed?",
        "How deep is the channel?",
        "What share was grain?",
    ]
    .into_iter()
    .enumerate()
    {
        messages.push(json!({"role": "assistant", "content": answer.clone()}));
        messages.push(json!({"role": "user", "content": question}));
        // Keep the conversation's replica busier than the other one: an unrelated stream
        // runs there (both replicas idle, the first takes it).
        let (status, mut busy) = s
            .open_stream(
                &t,
                "busy",
                json!({"input": {"prompt": format!("Count slowly, run {turn}.")}}),
            )
            .await;
        assert_eq!(status, 200);
        let first = busy.next().await.expect("the busy stream started");
        assert_eq!(first.event, "token", "{first:?}");
        // The least busy replica is now the other one; the history is on this one, within
        // the imbalance bound (one slot), so the turn follows its history.
        let (_, prompt, cached) = chat(&s, &t, MODEL, &messages).await;
        assert!(
            cached * 2 > prompt,
            "turn {}: {cached} of {prompt} prompt tokens cached: the turn went to the replica without its history",
            turn + 2
        );
        drop(busy);
    }
    s.stop().await;
}
